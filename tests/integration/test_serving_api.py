"""The HTTP API on a trained test router: every endpoint, auth scopes, bad input, reload, sessions."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest
import sqlalchemy as sa
from fastapi.testclient import TestClient

from infra.settings import Settings
from infra.store import OutcomeRow, Store
from serving.app import create_app
from serving.model_source import LocalSource
from tests.conftest import HashingEmbedder
from tests.integration.conftest import (
    ADMIN_KEY,
    CLIENT_KEY,
    OTHER_KEY,
    bearer,
    metric,
    write_tiers,
)

HARD = "hard question 1: omega sigma alpha beta gamma"
EASY = "easy question 2: alpha beta gamma delta omega"
C, OTHER, A = bearer(CLIENT_KEY), bearer(OTHER_KEY), bearer(ADMIN_KEY)


def test_route_answers_with_tier_reason_and_version(client: TestClient) -> None:
    r = client.post("/route", json={"prompt": HARD}, headers=C)
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["tier"] == "brain" and body["model"] == "large"
    assert set(body["predicted_quality"]) == {"main", "mid", "brain"}
    assert body["router_version"].startswith("local:")
    assert "cheapest tier" in body["reason"]
    assert r.headers["x-request-id"]
    easy = client.post("/route", json={"prompt": EASY}, headers=C).json()
    assert easy["tier"] == "main" and easy["expected_cost_usd"] < body["expected_cost_usd"]


def test_route_with_the_cost_weight_knob(client: TestClient) -> None:
    cheap = client.post("/route", json={"prompt": HARD, "cost_weight_per_usd": 1e9}, headers=C).json()
    assert cheap["tier"] == "main" and "maximises" in cheap["reason"]
    best = client.post("/route", json={"prompt": HARD, "cost_weight_per_usd": 0}, headers=C).json()
    assert best["tier"] == "brain"
    assert client.post("/route", json={"prompt": HARD, "cost_weight_per_usd": -1}, headers=C).status_code == 422


def test_route_overrides(client: TestClient) -> None:
    r = client.post("/route", json={"prompt": EASY, "min_tier": "mid"}, headers=C).json()
    assert r["tier"] == "mid" and "min_tier" in r["reason"]
    r = client.post("/route", json={"prompt": HARD, "max_cost_usd": 0.001}, headers=C).json()
    assert r["tier"] != "brain" and "max_cost_usd" in r["reason"]
    r = client.post("/route", json={"prompt": HARD, "quality_target": 0.0}, headers=C).json()
    assert r["tier"] == "main"


@pytest.mark.parametrize(
    ("body", "status"),
    [
        ({}, 422),
        ({"prompt": ""}, 422),
        ({"prompt": "   "}, 422),
        ({"prompt": "\x1c\x1f"}, 422),  # blank to Python (and so to training), not to pydantic's regex: was 200
        ({"prompt": 3}, 422),
        ({"prompt": "x", "quality_target": 2}, 422),
        ({"prompt": "x", "min_tier": "nope"}, 422),
        ({"prompt": "x", "min_tier": 9}, 422),
        ({"prompt": "x", "max_cost_usd": -1}, 422),
        ({"prompt": "x", "session_id": "bad id/"}, 422),
        ({"prompt": "x", "surprise": 1}, 422),
        ({"prompt": "x", "min_tier": "brain", "max_cost_usd": 0.0}, 422),
        ({"prompt": "x" * 2001}, 413),
    ],
)
def test_route_bad_input(client_factory: Callable[..., TestClient], body: dict, status: int) -> None:
    client = client_factory(max_prompt_chars=2000)
    r = client.post("/route", json=body, headers=C)
    assert r.status_code == status, r.text
    assert r.json()["detail"]


def test_non_finite_numbers_are_rejected(client: TestClient) -> None:
    r = client.post(
        "/route", content='{"prompt": "x", "max_cost_usd": NaN}', headers={**C, "content-type": "application/json"}
    )
    assert r.status_code == 422


def test_batch(client_factory: Callable[..., TestClient]) -> None:
    client = client_factory(max_batch=3)
    r = client.post("/route/batch", json={"prompts": [HARD, EASY]}, headers=C)
    assert r.status_code == 200
    assert [d["tier"] for d in r.json()["decisions"]] == ["brain", "main"]
    assert client.post("/route/batch", json={"prompts": [EASY] * 4}, headers=C).status_code == 413
    assert client.post("/route/batch", json={"prompts": []}, headers=C).status_code == 422


def test_tiers(client: TestClient) -> None:
    r = client.get("/tiers", headers=C).json()
    assert [t["name"] for t in r["tiers"]] == ["main", "mid", "brain"]
    assert r["tiers"][2]["input_per_1m"] == 10.0


@pytest.mark.parametrize(
    ("method", "path", "headers", "status"),
    [
        ("post", "/route", {}, 401),
        ("post", "/route", bearer("wrong"), 401),
        ("get", "/tiers", {}, 401),
        ("post", "/admin/reload", C, 403),
        ("post", "/admin/reload", A, 200),
        ("get", "/healthz", {}, 200),
        ("get", "/readyz", {}, 200),
        ("get", "/ping", {}, 200),
        ("get", "/metrics", {}, 200),
    ],
)
def test_auth_scopes(client: TestClient, method: str, path: str, headers: dict, status: int) -> None:
    kwargs = {"json": {"prompt": EASY}} if method == "post" and path == "/route" else {}
    assert getattr(client, method)(path, headers=headers, **kwargs).status_code == status


def test_no_keys_only_on_loopback(settings_factory: Callable[..., Settings], artifact_dir: Path, caplog) -> None:
    with pytest.raises(ValueError, match="keys are required"):
        create_app(settings=settings_factory(api_keys={}, host="0.0.0.0"))
    app = create_app(
        settings=settings_factory(api_keys={}), model_source=LocalSource(artifact_dir), embedder=HashingEmbedder()
    )
    assert "no API keys configured" in caplog.text
    with TestClient(app, base_url="http://testserver", client=("192.0.2.7", 4000)) as remote:  # uvicorn by hand
        far = remote.get("/admin/spool", headers={"Host": "127.0.0.1:8000"})
        assert far.status_code == 403 and "192.0.2.7 is not from this machine" in far.json()["detail"]
    with TestClient(app, base_url="http://127.0.0.1:8000", client=("127.0.0.1", 50000)) as c:
        assert c.post("/route", json={"prompt": EASY}).status_code == 200
        for host in ("localhost:8000", "[::1]:8000", "127.0.0.1"):
            assert c.get("/admin/spool", headers={"Host": host}).status_code == 200, host
        # A page of another site must not reach it: rebinding its own name to 127.0.0.1 (DNS rebinding), or a
        # cross-site POST that needs no preflight; both had admin scope (review finding).
        rebound = c.get("/admin/spool", headers={"Host": "rebind.attacker.example:8000"})
        assert rebound.status_code == 403 and "not a loopback name" in rebound.json()["detail"]
        cross = c.post("/admin/reload", headers={"Origin": "https://attacker.example", "Content-Type": "text/plain"})
        assert cross.status_code == 403 and "another origin" in cross.json()["detail"]
        door = c.post("/v1/chat/completions", json={}, headers={"Host": "attacker.example"})
        assert door.status_code == 403 and door.json()["error"]["type"] == "permission_error"
        own = {"Origin": "http://127.0.0.1:8000"}  # a page of this service
        assert c.post("/route", json={"prompt": EASY}, headers=own).status_code == 200
        # The admin page's forms send Origin: null (its Referrer-Policy is no-referrer), as a sandboxed page of
        # any site does; the browser's Sec-Fetch-Site tells them apart (the login was refused: review finding).
        form = {"Origin": "null", "Sec-Fetch-Site": "same-origin"}
        assert c.post("/route", json={"prompt": EASY}, headers=form).status_code == 200
        for site in ("cross-site", None):
            sandboxed = {"Origin": "null", **({"Sec-Fetch-Site": site} if site else {})}
            assert c.post("/admin/reload", headers=sandboxed).status_code == 403, site


def test_what_was_made_without_keys_is_the_admins_once_keys_are_on(client_factory: Callable[..., TestClient]) -> None:
    """Made while keys were off (`make serve` runs keyless on the same store), a session and its decisions had no
    owner, and any client key could then read the session, raise its cap, route into it and settle its decisions
    at no cost (review finding)."""
    keyless = client_factory(api_keys={})
    assert keyless.put("/sessions/old", json={"cap_usd": 1.0}).status_code == 200
    d = keyless.post("/route", json={"prompt": EASY, "session_id": "old"}).json()
    keyed = client_factory()  # the same store, keys on
    refused = [
        keyed.get("/sessions/old", headers=C),
        keyed.put("/sessions/old", json={"cap_usd": 1e9}, headers=C),
        keyed.post("/route", json={"prompt": EASY, "session_id": "old"}, headers=C),
        keyed.post(f"/decisions/{d['decision_id']}/usage", json={"cost_usd": 0}, headers=C),
        keyed.post(f"/decisions/{d['decision_id']}/release", headers=C),
        keyed.post("/outcomes", json={"decision_id": d["decision_id"], "score": 1, "cost_usd": 0}, headers=C),
        keyed.post(
            "/outcomes",
            json={"prompt": EASY, "model": "small", "score": 1, "cost_usd": 0, "session_id": "old"},
            headers=C,
        ),  # fmt: skip
    ]
    assert [r.status_code for r in refused] == [403] * len(refused), [r.text for r in refused]
    assert "needs an admin key" in refused[0].json()["detail"]
    view = keyed.get("/sessions/old", headers=A).json()
    assert view["cap_usd"] == 1.0 and view["spent_usd"] == 0
    assert keyed.post(f"/decisions/{d['decision_id']}/usage", json={"cost_usd": 0.001}, headers=A).status_code == 200


def test_client_cannot_touch_another_clients_session(client: TestClient) -> None:
    assert client.put("/sessions/s1", json={"cap_usd": 1.0}, headers=C).status_code == 200
    assert client.get("/sessions/s1", headers=C).status_code == 200
    assert client.get("/sessions/s1", headers=OTHER).status_code == 403
    assert client.put("/sessions/s1", json={"cap_usd": 9.0}, headers=OTHER).status_code == 403
    assert client.post("/route", json={"prompt": EASY, "session_id": "s1"}, headers=OTHER).status_code == 403
    assert client.post("/sessions/s1/confirm", json={"new_cap_usd": 2}, headers=OTHER).status_code == 403
    assert client.get("/sessions/s1", headers=A).status_code == 200
    assert client.get("/sessions/nope", headers=A).status_code == 404


def test_freeze_then_confirm(client: TestClient) -> None:
    client.put("/sessions/s", json={"cap_usd": 0.0032}, headers=C)
    first = client.post("/route", json={"prompt": HARD, "session_id": "s"}, headers=C).json()
    assert first["tier"] == "brain"
    assert first["budget_left_usd"] == pytest.approx(0.0032 - first["expected_cost_usd"])
    second = client.post("/route", json={"prompt": HARD, "session_id": "s"}, headers=C).json()
    assert second["tier"] != "brain" and "session budget" in second["reason"]
    statuses = [client.post("/route", json={"prompt": HARD, "session_id": "s"}, headers=C) for _ in range(30)]
    frozen = next(r for r in statuses if r.status_code == 402)
    body = frozen.json()
    assert body["status"] == "frozen" and body["session_id"] == "s" and body["cap_usd"] == 0.0032
    assert body["spent_usd"] + body["reserved_usd"] <= 0.0032
    # Frozen stays frozen: even an easy prompt, even after the client raises its own cap.
    client.put("/sessions/s", json={"cap_usd": 1.0}, headers=C)
    assert client.post("/route", json={"prompt": EASY, "session_id": "s"}, headers=C).status_code == 402
    view = client.get("/sessions/s", headers=C).json()
    assert view["status"] == "frozen" and len(view["recent_decisions"]) >= 2
    assert client.post("/sessions/s/confirm", json={"new_cap_usd": 1.0}, headers=C).status_code == 403
    confirmed = client.post("/sessions/s/confirm", json={"new_cap_usd": 1.0}, headers=A).json()
    assert confirmed["status"] == "open" and confirmed["cap_usd"] == 1.0
    assert client.post("/route", json={"prompt": HARD, "session_id": "s"}, headers=C).status_code == 200
    metrics = client.get("/metrics").text
    assert 'tierwise_decisions_total{model="large",tier="brain"}' in metrics


def test_outcome_settles_reservation(client: TestClient) -> None:
    client.put("/sessions/s", json={"cap_usd": 1.0}, headers=C)
    d = client.post("/route", json={"prompt": HARD, "session_id": "s"}, headers=C).json()
    before = client.get("/sessions/s", headers=C).json()
    assert before["reserved_usd"] == pytest.approx(d["expected_cost_usd"]) and before["spent_usd"] == 0
    r = client.post("/outcomes", json={"decision_id": d["decision_id"], "score": 1, "cost_usd": 0.002}, headers=C)
    assert r.status_code == 201 and r.json()["recorded"] == 1
    after = client.get("/sessions/s", headers=C).json()
    assert after["reserved_usd"] == pytest.approx(0) and after["spent_usd"] == pytest.approx(0.002)
    assert after["recent_decisions"][0]["settled"] is True
    assert r.json()["outcome_ids"] == [f"decision:{d['decision_id']}"]
    # Without outcome ids, a decision's outcome is one outcome: posted again, a retry (recorded once); posted with
    # another score, refused. With its own outcome_id, a second outcome is recorded but does not settle twice.
    retry = client.post("/outcomes", json={"decision_id": d["decision_id"], "score": 1, "cost_usd": 0.002}, headers=C)
    assert retry.status_code == 201 and retry.json()["recorded"] == 0
    other = {"decision_id": d["decision_id"], "score": 0, "cost_usd": 0.002}
    refused = client.post("/outcomes", json=other, headers=C)
    assert refused.status_code == 409
    assert f"decision {d['decision_id']} already has an outcome with a different score" in refused.json()["detail"]
    second = client.post("/outcomes", json={**other, "outcome_id": "second-judge"}, headers=C)
    assert second.status_code == 201 and second.json()["recorded"] == 1
    assert client.get("/sessions/s", headers=C).json()["spent_usd"] == pytest.approx(0.002)


def test_outcomes_idempotent_and_by_prompt(client: TestClient) -> None:
    store: Store = client.app.state.store
    one = {"outcome_id": "o-1", "prompt": EASY, "model": "small", "score": 1, "cost_usd": 1e-5}
    assert client.post("/outcomes", json=one, headers=C).json()["recorded"] == 1
    assert client.post("/outcomes", json=one, headers=C).json()["recorded"] == 0
    many = [one, {**one, "outcome_id": "o-2", "model": "large"}]
    r = client.post("/outcomes", json=many, headers=C).json()
    assert r == {"outcome_ids": ["o-1", "o-2"], "recorded": 1, "spooled": False}
    rows = store.export_outcomes()
    assert len(rows) == 2 and rows[0].prompt_id == rows[1].prompt_id


def test_prompts_differing_only_in_whitespace_export_as_one_valid_log(client: TestClient) -> None:
    """They share a prompt_id (whitespace is collapsed); the export gave them their own texts, and the training
    contract (one text per prompt_id) refused the whole store: `tierwise train --from-store` trained nothing."""
    from router.schema import outcomes_to_frame, validate_outcomes

    for i, prompt in enumerate((f"{EASY}.", f"{EASY}.\n", f" {EASY}.")):
        decision = client.post("/route", json={"prompt": prompt}, headers=C).json()["decision_id"]
        outcome = {"decision_id": decision, "score": 1, "cost_usd": 0.001}
        assert client.post("/outcomes", json=outcome, headers=C).status_code == 201
        more = {"prompt": prompt, "model": "large", "score": 0.5, "cost_usd": 0.01, "outcome_id": f"o{i}"}
        assert client.post("/outcomes", json=more, headers=C).status_code == 201
    store: Store = client.app.state.store
    store.record_outcomes(
        [OutcomeRow(id="old", prompt="\x1c", model="small", score=1.0, cost_usd=0.0)]
    )  # an older service's
    rows = store.export_outcomes()
    assert len(rows) == 6 and {r.prompt for r in rows} == {f"{EASY}."}  # the first stored text; the blank one left out
    assert len(validate_outcomes(outcomes_to_frame(rows), "the store", None)) == 6


@pytest.mark.parametrize(
    ("body", "status"),
    [
        ({"score": 1, "cost_usd": 0}, 422),
        ({"prompt": "p", "score": 1, "cost_usd": 0}, 422),
        ({"prompt": "p", "model": "small", "score": 2, "cost_usd": 0}, 422),
        ({"prompt": "p", "model": "small", "score": 1, "cost_usd": -1}, 422),
        ({"prompt": "p", "model": "gpt-99", "score": 1, "cost_usd": 0}, 422),
        ({"prompt": "\x1f\x1e", "model": "small", "score": 1, "cost_usd": 0}, 422),  # was 201, then broke training
        ({"decision_id": "nope", "score": 1, "cost_usd": 0}, 404),
    ],
)
def test_outcomes_bad_input(client: TestClient, body: dict, status: int) -> None:
    assert client.post("/outcomes", json=body, headers=C).status_code == status


def test_an_invalid_outcome_gets_one_error_at_its_own_field(client: TestClient) -> None:
    """A body may be one outcome or a list: the error is the chosen shape's, at the field, without pydantic's
    names for the union's members in `loc` and without a second "Input should be a valid list" error."""
    good = {"prompt": "p", "model": "small", "score": 1, "cost_usd": 0}
    one = client.post("/outcomes", json={**good, "score": 1.5}, headers=C)
    assert one.status_code == 422
    assert [e["loc"] for e in one.json()["detail"]] == [["body", "score"]], one.json()
    many = client.post("/outcomes", json=[good, {**good, "cost_usd": -1}], headers=C)
    assert many.status_code == 422
    assert [e["loc"] for e in many.json()["detail"]] == [["body", 1, "cost_usd"]], many.json()
    unknown = client.post("/outcomes", json={**good, "model": "gpt-99"}, headers=C)
    assert [e["loc"] for e in unknown.json()["detail"]] == [["body", "model"]], unknown.json()
    unknown = client.post("/outcomes", json=[good, {**good, "model": "gpt-99"}], headers=C)  # was ["body"]
    assert [e["loc"] for e in unknown.json()["detail"]] == [["body", 1, "model"]], unknown.json()
    neither = client.post("/outcomes", json="score", headers=C)
    assert neither.status_code == 422 and all(e["loc"][0] == "body" for e in neither.json()["detail"])


def test_outcome_for_another_clients_decision_is_forbidden(client: TestClient) -> None:
    d = client.post("/route", json={"prompt": EASY}, headers=C).json()
    r = client.post("/outcomes", json={"decision_id": d["decision_id"], "score": 1, "cost_usd": 0}, headers=OTHER)
    assert r.status_code == 403


def test_outcomes_spool_while_store_is_down_and_replay(client: TestClient, tmp_path: Path) -> None:
    store: Store = client.app.state.store
    good = store.engine
    d = client.post("/route", json={"prompt": HARD}, headers=C).json()
    store.engine = sa.create_engine(f"sqlite:///{tmp_path}/missing/dir/db.sqlite")
    sent = [
        {"outcome_id": "down-1", "decision_id": d["decision_id"], "score": 1, "cost_usd": 0.003},
        {"outcome_id": "down-2", "prompt": EASY, "model": "small", "score": 1, "cost_usd": 1e-5},
    ]
    r = client.post("/outcomes", json=sent, headers=C)
    assert r.status_code == 202 and r.json()["spooled"] is True
    assert client.post("/outcomes", json=sent[1], headers=C).status_code == 202  # a retry while down
    assert client.post("/route", json={"prompt": HARD}, headers=C).status_code == 503
    assert metric(client, "tierwise_outcome_store_errors_total") >= 3
    store.engine = good
    assert store.export_outcomes() == []
    r = client.post(
        "/outcomes", json={"outcome_id": "up-1", "prompt": HARD, "model": "large", "score": 0, "cost_usd": 0}, headers=C
    )
    assert r.status_code == 201
    ids = sorted(o.prompt for o in store.export_outcomes())
    assert len(ids) == 3 and ids.count(EASY) == 1
    assert client.app.state.recorder.spool.pending() == 0


def test_spool_replayed_at_startup(client_factory: Callable[..., TestClient], tmp_path: Path) -> None:
    first = client_factory()
    store: Store = first.app.state.store
    good = store.engine
    store.engine = sa.create_engine(f"sqlite:///{tmp_path}/missing/dir/db.sqlite")
    body = {"outcome_id": "boot-1", "prompt": EASY, "model": "small", "score": 1, "cost_usd": 0}
    assert first.post("/outcomes", json=body, headers=C).status_code == 202
    store.engine = good
    second = client_factory()  # same database and spool
    assert [o.prompt for o in second.app.state.store.export_outcomes()] == [EASY]


def test_reload_swaps_tier_model(client: TestClient, tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    before = client.post("/route", json={"prompt": EASY}, headers=C).json()
    assert before["model"] == "small"
    hard = client.post("/route", json={"prompt": HARD}, headers=C).json()
    assert hard["model"] == "large"
    write_tiers(tmp_path / "tiers.toml", {"brain": "unused"})
    assert client.post("/route", json={"prompt": HARD}, headers=C).json()["model"] == "large"
    r = client.post("/admin/reload", headers=A)
    assert r.status_code == 200 and r.json()["tiers"][2]["model"] == "unused"
    assert "puts other models behind tiers than model" in caplog.text and "(brain: large -> unused)" in caplog.text
    after = client.post("/route", json={"prompt": HARD}, headers=C).json()
    assert after["model"] == "unused" and after["expected_cost_usd"] < hard["expected_cost_usd"]
    (tmp_path / "tiers.toml").write_text(
        "[[tiers]]\nname='other'\nmodel='small'\n[models.small]\ninput_per_1m=1\noutput_per_1m=1\n"
    )
    r = client.post("/admin/reload", headers=A)
    assert r.status_code == 409 and "train a model for these tiers" in r.json()["detail"]
    assert client.post("/route", json={"prompt": HARD}, headers=C).json()["model"] == "unused"


def test_reload_keeps_in_flight_runtime(client: TestClient) -> None:
    """A request holds the Runtime it read; a reload swaps in a new one and leaves the held one untouched."""
    old = client.app.state.runtime
    version, router, (quality, cost) = old.version, old.router, old.score([EASY, HARD])
    assert client.post("/admin/reload", headers=A).status_code == 200
    new = client.app.state.runtime
    assert new is not old and new.router is not router
    assert old.version == version and old.router is router
    again_quality, again_cost = old.score([EASY, HARD])
    assert (again_quality == quality).all() and (again_cost == cost).all()


class Moving:
    """A source whose version moves on demand, like a registry alias."""

    def __init__(self, path: Path):
        self.inner, self.n = LocalSource(path), 1

    def resolve(self) -> str:
        return f"tierwise-router/{self.n}"

    def load(self):  # type: ignore[no-untyped-def]
        loaded = self.inner.load()
        return type(loaded)(loaded.artifact, self.resolve())


def test_alias_move_picked_up_by_reload(client_factory: Callable[..., TestClient], artifact_dir: Path) -> None:
    source = Moving(artifact_dir)
    client = client_factory(source=source)
    assert client.post("/route", json={"prompt": EASY}, headers=C).json()["router_version"] == "tierwise-router/1"
    source.n = 2
    assert client.post("/admin/reload", headers=A).json()["previous_version"] == "tierwise-router/1"
    assert client.post("/route", json={"prompt": EASY}, headers=C).json()["router_version"] == "tierwise-router/2"
    assert 'router_version="tierwise-router/2"' in client.get("/metrics").text


def test_alias_polling(client_factory: Callable[..., TestClient], artifact_dir: Path) -> None:
    import time

    source = Moving(artifact_dir)
    client = client_factory(source=source, reload_interval_s=0.05)
    source.n = 5
    deadline = time.monotonic() + 30  # room for a slow, busy machine; the poller runs every 0.05 s
    while client.get("/readyz").json()["router_version"] != "tierwise-router/5":
        assert time.monotonic() < deadline, "the poller never picked up the moved alias"
        time.sleep(0.05)


def test_not_ready_without_model(client_factory: Callable[..., TestClient], tmp_path: Path) -> None:
    client = client_factory(source=LocalSource(tmp_path / "nothing"))
    r = client.get("/readyz")
    assert r.status_code == 503 and "router.json" in r.json()["detail"]
    assert client.get("/healthz").status_code == 200
    assert client.post("/route", json={"prompt": EASY}, headers=C).status_code == 503


def test_embedder_mismatch_refuses_to_load(settings_factory: Callable[..., Settings], artifact_dir: Path) -> None:
    app = create_app(
        settings=settings_factory(),
        model_source=LocalSource(artifact_dir),
        embedder=HashingEmbedder(name="other/model:onnx-int8"),
    )
    match = "trained with embedder 'test/hashing:hash'.*TIERWISE_EMBEDDER=hash"
    with pytest.raises(ValueError, match=match), TestClient(app):
        pass


def test_a_model_from_an_earlier_build_of_the_same_embedder_asks_for_a_retrain(
    settings_factory: Callable[..., Settings], artifact_dir: Path
) -> None:
    """After an upgrade changes how a backend is built (the int8 recipe), the fix is a retrain, not a setting."""
    app = create_app(
        settings=settings_factory(),
        model_source=LocalSource(artifact_dir),
        embedder=HashingEmbedder(name="test/hashing:hash+v2"),
    )
    with pytest.raises(ValueError, match="builds that backend differently now; retrain"), TestClient(app):
        pass


def test_openapi_lists_every_endpoint(client: TestClient) -> None:
    paths = set(client.get("/openapi.json").json()["paths"])
    assert paths >= {
        "/route",
        "/route/batch",
        "/tiers",
        "/outcomes",
        "/sessions/{session_id}",
        "/sessions/{session_id}/confirm",
        "/admin/reload",
        "/healthz",
        "/readyz",
        "/metrics",
        "/ping",
    }


def test_a_session_view_never_shows_a_settled_decision_missing_from_spent(client: TestClient) -> None:
    """A settlement marks its decision and charges the session in one transaction; the view reads the decisions
    first, so one landing between its two reads can leave a decision unsettled-looking, never settled but unspent."""
    client.put("/sessions/view-race", json={"cap_usd": 1.0}, headers=C)
    d = client.post("/route", json={"prompt": "What is 2+2?", "session_id": "view-race"}, headers=C).json()
    store: Store = client.app.state.store  # type: ignore[attr-defined]
    read, get = store.recent_decisions, store.get_session
    calls: list[str] = []

    def settle_between(name: str, fn):  # type: ignore[no-untyped-def]
        def wrapped(*args, **kwargs):  # type: ignore[no-untyped-def]
            out = fn(*args, **kwargs)
            calls.append(name)
            if len(calls) == 1:  # the settlement lands right after the view's first read, whichever it is
                store.settle_decision(
                    d["decision_id"], cost_usd=0.25, tokens_in=1, tokens_out=1, latency_ms=1.0, served_model="m"
                )
            return out

        return wrapped

    store.recent_decisions = settle_between("decisions", read)  # type: ignore[method-assign]
    store.get_session = settle_between("session", get)  # type: ignore[method-assign]
    view = client.get("/sessions/view-race", headers=C).json()
    store.recent_decisions, store.get_session = read, get  # type: ignore[method-assign]
    shown = sum(0.25 for x in view["recent_decisions"] if x["settled"])
    assert view["spent_usd"] >= shown - 1e-12, view
