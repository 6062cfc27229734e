"""The proxy commits its decision while the upstream answers, and never answers before the decision is stored."""

from __future__ import annotations

import time
from collections.abc import Iterator, Sequence
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import exc as sa_exc

from infra.store import DecisionRow
from serving.app import create_app
from serving.model_source import LocalSource
from tests.conftest import HashingEmbedder
from tests.integration.conftest import CLIENT_KEY, bearer
from tests.integration.fake_upstream import FakeUpstream, Reply, fake_upstream
from tests.integration.proxy_fixtures import proxy_settings

CHAT = {"model": "tierwise", "messages": [{"role": "user", "content": "easy question 2: alpha beta gamma"}]}
DELAY_S = 2.0


@pytest.fixture
def proxied(tmp_path: Path, artifact_dir: Path) -> Iterator[tuple[TestClient, FakeUpstream]]:
    with fake_upstream() as up:
        up.default = Reply(text="an answer", delay_s=DELAY_S)
        app = create_app(
            proxy_settings(tmp_path, up, upstream_timeout_s=10.0), LocalSource(artifact_dir), embedder=HashingEmbedder()
        )
        with TestClient(app) as client:
            yield client, up


def test_the_answer_comes_with_its_decision_stored_and_settled(proxied: tuple[TestClient, FakeUpstream]) -> None:
    client, _ = proxied
    r = client.post("/v1/chat/completions", json=CHAT, headers=bearer(CLIENT_KEY))
    assert r.status_code == 200, r.text
    decision_id = r.headers["x-tierwise-decision-id"]
    stored = client.app.state.store.get_decisions([decision_id])[decision_id]  # type: ignore[attr-defined]
    assert stored.settled and stored.cost_usd is not None and stored.cost_usd > 0


def test_a_store_that_cannot_record_the_decision_stops_the_upstream_call(
    proxied: tuple[TestClient, FakeUpstream], monkeypatch: pytest.MonkeyPatch
) -> None:
    client, up = proxied

    def down(_: Sequence[DecisionRow]) -> None:
        raise sa_exc.OperationalError("INSERT ...", {}, Exception("connection refused"))

    monkeypatch.setattr(client.app.state.store, "record_decisions", down)  # type: ignore[attr-defined]
    start = time.perf_counter()
    r = client.post("/v1/chat/completions", json=CHAT, headers=bearer(CLIENT_KEY))
    assert r.status_code == 503, r.text
    assert r.json()["error"]["code"] == "store_unavailable"
    assert time.perf_counter() - start < DELAY_S / 2  # answered without waiting for the upstream
