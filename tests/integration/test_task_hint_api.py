"""`task` on /route, /route/batch and /v1: a task the model knows blends its prior in; others are ignored, saying so."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
from fastapi.testclient import TestClient

from router.artifact import RouterArtifact
from router.features import featurize
from router.schema import parse_tiers
from router.task_hint import ROUTER_WEIGHT, TaskPrior
from serving.model_source import LocalSource
from tests.conftest import TIERS_TOML, HashingEmbedder, make_log
from tests.integration.conftest import CLIENT_KEY, bearer
from training.data import pivot_log

C = bearer(CLIENT_KEY)
PROMPT = "medium question 3: alpha beta gamma"


@pytest.fixture
def hinted(client_factory: Callable[..., TestClient], artifact_dir: Path, tmp_path: Path) -> TestClient:
    """The tests' router with the task prior of its generated log (categories easy, medium, hard)."""
    tiers = parse_tiers(TIERS_TOML)
    table = pivot_log(make_log(200), tiers)
    prior = TaskPrior.fit(table.prompts["category"].to_numpy(), table.scores, tiers.names)
    artifact = dataclasses.replace(RouterArtifact.load(artifact_dir), task_prior=prior)
    return client_factory(source=LocalSource(artifact.save(tmp_path / "hinted")))


def test_tiers_lists_the_tasks_the_model_knows(hinted: TestClient, client: TestClient) -> None:
    assert hinted.get("/tiers", headers=C).json()["tasks"] == ["easy", "hard", "medium"]
    assert client.get("/tiers", headers=C).json()["tasks"] == []  # a model without categories


def test_a_known_task_is_blended_in_and_an_unknown_one_ignored(hinted: TestClient) -> None:
    prior = hinted.app.state.runtime.router.artifact.task_prior  # type: ignore[attr-defined]
    plain = hinted.post("/route", json={"prompt": PROMPT}, headers=C).json()
    known = hinted.post("/route", json={"prompt": PROMPT, "task": "hard"}, headers=C).json()
    unknown = hinted.post("/route", json={"prompt": PROMPT, "task": "poetry"}, headers=C).json()
    names = list(plain["predicted_quality"])
    q = np.array([plain["predicted_quality"][n] for n in names])
    expected = ROUTER_WEIGHT * q + (1 - ROUTER_WEIGHT) * np.asarray(prior.means["hard"])
    assert [known["predicted_quality"][n] for n in names] == pytest.approx(expected.tolist())
    assert "task hint 'hard'" in known["reason"] and "blended in" in known["reason"]
    assert unknown["predicted_quality"] == pytest.approx(plain["predicted_quality"])
    assert "task hint 'poetry' is not a task this model knows" in unknown["reason"]
    assert "(GET /tiers lists them)" in unknown["reason"]
    assert "task hint" not in plain["reason"]
    # The decision row keeps what the policy saw (off-policy evaluation reads these).
    row = hinted.app.state.store.get_decisions([known["decision_id"]])[known["decision_id"]]  # type: ignore[attr-defined]
    assert row.reason == known["reason"]
    assert row.predicted_quality == pytest.approx(known["predicted_quality"])


def test_the_batch_applies_the_task_to_every_prompt(hinted: TestClient) -> None:
    body = {"prompts": [PROMPT, "easy question 1: beta"], "task": "easy"}
    out = hinted.post("/route/batch", json=body, headers=C).json()["decisions"]
    assert all("task hint 'easy'" in d["reason"] for d in out)


@pytest.fixture
def guessing(client_factory: Callable[..., TestClient], artifact_dir: Path, tmp_path: Path) -> TestClient:
    """The tests' router with a task prior that also guesses the task (a classifier on the router's features)."""
    tiers = parse_tiers(TIERS_TOML)
    table = pivot_log(make_log(200), tiers)
    artifact = RouterArtifact.load(artifact_dir)
    X = featurize(table.prompts["prompt"].tolist(), artifact.features, HashingEmbedder())
    prior = TaskPrior.fit(table.prompts["category"].to_numpy(), table.scores, tiers.names, features=X)
    assert prior is not None and prior.classifier is not None
    return client_factory(source=LocalSource(dataclasses.replace(artifact, task_prior=prior).save(tmp_path / "g")))


def test_without_a_known_hint_the_guessed_task_prior_is_blended_in(guessing: TestClient) -> None:
    art = guessing.app.state.runtime.router.artifact  # type: ignore[attr-defined]
    plain = guessing.post("/route", json={"prompt": PROMPT}, headers=C).json()
    unknown = guessing.post("/route", json={"prompt": PROMPT, "task": "poetry"}, headers=C).json()
    names = list(plain["predicted_quality"])
    X = featurize([PROMPT], art.features, HashingEmbedder())
    boosters, guessed = art.model.predict_quality(X)[0], art.task_prior.priors(None, X, 1)[0][0]
    expected = ROUTER_WEIGHT * boosters + (1 - ROUTER_WEIGHT) * guessed
    assert [plain["predicted_quality"][n] for n in names] == pytest.approx(expected.tolist(), abs=1e-6)
    assert not np.allclose(boosters, expected)  # the guess moved the prediction
    assert unknown["predicted_quality"] == pytest.approx(plain["predicted_quality"])
    assert "not a task this model knows" in unknown["reason"] and "own guess of the task is used" in unknown["reason"]


@pytest.mark.parametrize("task", ["", "x" * 129, 3])
def test_a_bad_task_is_a_422(hinted: TestClient, task: object) -> None:
    r = hinted.post("/route", json={"prompt": PROMPT, "task": task}, headers=C)
    assert r.status_code == 422 and "task" in r.text


def test_an_outcome_of_a_hinted_decision_exports_the_task_as_its_category(hinted: TestClient) -> None:
    """`tierwise train --from-store` then keeps a prior per task in the callers' own vocabulary."""
    ids = {}
    for task in ("summarise-email", None):
        body = {"prompt": f"{PROMPT} {task}", **({"task": task} if task else {})}
        d = hinted.post("/route", json=body, headers=C).json()
        r = hinted.post("/outcomes", json={"decision_id": d["decision_id"], "score": 0.5, "cost_usd": 0.001}, headers=C)
        assert r.status_code in (200, 201), r.text
        ids[task] = body["prompt"]
    exported = {o.prompt: o.category for o in hinted.app.state.store.export_outcomes()}  # type: ignore[attr-defined]
    assert exported[ids["summarise-email"]] == "summarise-email"
    assert exported[ids[None]] is None
