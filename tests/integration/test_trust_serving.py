"""Trust in the service: propensities and exploration (opt-outs, caps, live cost), deleting a session, retention."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from functools import partial
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from fastapi.testclient import TestClient
from pydantic import ValidationError

import serving.api.admin as admin_api
from infra.settings import Settings
from infra.store import DecisionRow, Store, decisions, outcomes
from router.schema import parse_tiers
from serving.metrics import Metrics
from serving.outcomes import OutcomeRecorder
from serving.security import hash_key
from serving.spool import Spool
from tests.conftest import TIERS_TOML
from tests.integration.conftest import ADMIN_KEY, CLIENT_KEY, OTHER_KEY, bearer, metric
from tests.integration.test_trust_drift import KNOWN, UNSEEN, trusted, trusted_dir  # noqa: F401 (fixtures)

C, OTHER = bearer(CLIENT_KEY), bearer(OTHER_KEY)
PROMPTS = [f"{kind} question {i}: alpha beta gamma" for i in range(40) for kind in ("easy", "hard")]


def stored(client: TestClient) -> list[sa.Row]:
    with client.app.state.store.engine.connect() as conn:  # type: ignore[attr-defined]
        return conn.execute(decisions.select()).all()


def test_decisions_keep_their_evidence_without_exploration(client: TestClient) -> None:
    r = client.post("/route", json={"prompt": PROMPTS[1]}, headers=C).json()
    [row] = stored(client)
    assert (row.propensity, row.explored) == (1.0, False)
    assert row.propensities[r["tier"]] == 1.0 and sum(row.propensities.values()) == 1.0
    assert row.predicted_quality == r["predicted_quality"]
    assert row.expected_costs[r["tier"]] == r["expected_cost_usd"]


def test_exploration_records_true_propensities_and_its_cost(client_factory: Callable[..., TestClient]) -> None:
    client = client_factory(exploration_rate=0.5)
    out = client.post("/route/batch", json={"prompts": PROMPTS}, headers=C).json()["decisions"]
    rows = {r.id: r for r in stored(client)}
    explored = [d for d in out if rows[d["decision_id"]].explored]
    assert 10 <= len(explored) <= 45  # 80 prompts, rate 0.5 over 3 tiers: about 27 expected
    for d in out:
        row = rows[d["decision_id"]]
        assert abs(sum(row.propensities.values()) - 1) < 1e-9
        assert row.propensity == row.propensities[d["tier"]]
        assert (row.propensity < 0.5) == row.explored  # the policy's own tier keeps at least 1 - ε
        assert d["reason"].startswith("explored:") == row.explored
    extra = sum(rows[d["decision_id"]].expected_costs[d["tier"]] for d in explored)
    assert metric(client, "tierwise_explored_decisions_total") == len(explored)
    assert abs(metric(client, "tierwise_exploration_served_cost_usd_total") - extra) < 1e-9


def test_opt_outs(client_factory: Callable[..., TestClient]) -> None:
    client = client_factory(exploration_rate=0.5, exploration_opt_out_keys=[hash_key(OTHER_KEY)])
    by_request = client.post("/route/batch", json={"prompts": PROMPTS, "explore": False}, headers=C).json()
    by_key = client.post("/route/batch", json={"prompts": PROMPTS}, headers=OTHER).json()
    assert not any(r.explored for r in stored(client))
    assert len(by_request["decisions"]) + len(by_key["decisions"]) == 2 * len(PROMPTS)
    assert client.post("/route", json={"prompt": "x", "explore": "no"}, headers=C).status_code == 422


def test_exploration_never_passes_a_cap_min_tier_or_max_cost(client_factory: Callable[..., TestClient]) -> None:
    client = client_factory(exploration_rate=0.5)
    r = client.post("/route/batch", json={"prompts": PROMPTS, "min_tier": "mid"}, headers=C).json()["decisions"]
    assert {d["tier"] for d in r} <= {"mid", "brain"}
    cheap = client.post("/route/batch", json={"prompts": PROMPTS, "max_cost_usd": 1e-3}, headers=C).json()
    assert all(d["expected_cost_usd"] <= 1e-3 and d["tier"] != "brain" for d in cheap["decisions"])
    # A session whose cap leaves a little room above the policy's choices: exploration may use only that room.
    policy = client.post("/route/batch", json={"prompts": PROMPTS[:10], "explore": False}, headers=C).json()
    cap = sum(d["expected_cost_usd"] for d in policy["decisions"]) * 2.5
    assert client.put("/sessions/s", json={"cap_usd": cap}, headers=C).status_code == 200
    codes = [
        client.post("/route/batch", json={"prompts": PROMPTS[:10], "session_id": "s"}, headers=C).status_code
        for _ in range(4)
    ]
    session = client.get("/sessions/s", headers=C).json()
    assert codes[0] == 200 and session["reserved_usd"] > 0
    assert session["reserved_usd"] + session["spent_usd"] <= cap + 1e-12


def test_admin_deletes_a_sessions_data(client: TestClient) -> None:
    admin = bearer(ADMIN_KEY)
    d = client.post("/route", json={"prompt": PROMPTS[0], "session_id": "gone"}, headers=C).json()
    client.post("/route", json={"prompt": PROMPTS[1]}, headers=C)
    assert client.post("/outcomes", json={"decision_id": d["decision_id"], "score": 1, "cost_usd": 0.001}, headers=C)
    assert client.delete("/admin/sessions/gone", headers=C).status_code == 403
    r = client.delete("/admin/sessions/gone", headers=admin)
    assert r.status_code == 200, r.text
    assert r.json() == {"session_id": "gone", "sessions": 1, "decisions": 1, "outcomes": 1, "spooled": 0}
    assert len(stored(client)) == 1  # the other decision stays
    assert client.get("/sessions/gone", headers=admin).status_code == 404
    assert client.delete("/admin/sessions/gone", headers=admin).status_code == 404


def test_deleting_a_session_clears_its_outcomes_from_the_spool(client: TestClient) -> None:
    """Outcomes spooled in a store outage were written back (or quarantined, text and all) after the delete, and a
    second delete found nothing to delete (review finding)."""
    admin = bearer(ADMIN_KEY)
    d = client.post("/route", json={"prompt": PROMPTS[0], "session_id": "mine"}, headers=C).json()
    spool = client.app.state.recorder.spool  # type: ignore[attr-defined]
    waiting = {"decision_id": d["decision_id"], "prompt": "SECRET prompt", "score": 1.0, "session_id": None}
    spool.append([{"outcome_id": "o-mine", **waiting}, {"outcome_id": "o-other", "session_id": "other"}])
    spool.reject({"outcome_id": "o-old", "session_id": "mine", "prompt": "SECRET too"}, "refused")
    r = client.delete("/admin/sessions/mine", headers=admin)
    assert r.status_code == 200 and r.json()["spooled"] == 2 and r.json()["decisions"] == 1, r.text
    files = [p for p in spool.path.parent.iterdir() if p.name.startswith(spool.path.name)]
    assert files and not any(b"SECRET" in p.read_bytes() for p in files)
    assert b"o-other" in spool.path.read_bytes()  # another session's outcome waits on


def test_a_replay_mid_batch_does_not_write_a_deleted_sessions_outcome_back(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """DELETE /admin/sessions/{id} while a spool replay writes a batch holding an outcome of the session, spooled
    before the delete began: the delete took the store's rows, the replay then wrote that outcome, and the spool's
    clean-up found it replayed; the outcome stayed, prompt and all (review finding). The delete now waits for the
    replay's batch and takes the outcome with the rest."""
    store = Store(f"sqlite:///{tmp_path / 'store.db'}")
    store.migrate()
    recorder = OutcomeRecorder(store, Spool(tmp_path / "spool.jsonl"), Metrics())
    with store.lock_session("S", None) as locked:
        locked.reserve([DecisionRow(id="d1", prompt="p", tier="main", model="small", expected_cost_usd=0.01,
                                    router_version="1", reason="r", session_id="S", reserved_usd=0.01)])  # fmt: skip
    outcome = {"prompt": "SECRET", "model": "small", "score": 1.0, "cost_usd": 0.1, "session_id": "S"}
    recorder.spool.append([{"outcome_id": "o1", **outcome, "decision_id": None, "owner": None, "admin": True}])
    deleting: dict[str, Any] = {}
    write = store.record_outcomes

    def mid_batch(rows: Any) -> int:  # the replay holds its batch: the delete starts now
        if "thread" not in deleting:
            delete = partial(admin_api.delete_session, "S", None, store, recorder)  # type: ignore[arg-type]
            deleting["thread"] = threading.Thread(target=lambda: deleting.update(answer=delete()))
            deleting["thread"].start()
            until = time.monotonic() + 2.0  # the delete is through the store (before the fix), or waits for this
            while store.get_session("S") is not None and time.monotonic() < until:
                time.sleep(0.01)
        return write(rows)

    monkeypatch.setattr(store, "record_outcomes", mid_batch)
    assert recorder.replay(parse_tiers(TIERS_TOML)) == 1
    deleting["thread"].join(30)
    assert deleting["answer"].outcomes == 1 and deleting["answer"].decisions == 1
    with store.engine.connect() as conn:
        assert conn.execute(sa.select(outcomes.c.id)).all() == []
    store.dispose()


def test_no_exploration_where_the_policy_must_be_conservative(request: pytest.FixtureRequest) -> None:
    client = request.getfixturevalue("trusted")(exploration_rate=0.5)  # the artifact with a novelty reference
    ood = client.post("/route/batch", json={"prompts": UNSEEN[:60]}, headers=C).json()["decisions"]
    assert all(d["reason"].startswith("out of distribution") and d["tier"] == "brain" for d in ood)
    guaranteed = {"prompts": KNOWN[:60], "quality_guarantee": {"epsilon": 0.05}}
    assert client.post("/route/batch", json=guaranteed, headers=C).status_code == 200
    assert not any(r.explored for r in stored(client))
    free = client.post("/route/batch", json={"prompts": KNOWN[:60]}, headers=C).json()["decisions"]
    assert any(d["reason"].startswith("explored:") for d in free)  # the same service explores elsewhere


def test_the_service_purges_past_the_retention_period(client_factory: Callable[..., TestClient]) -> None:
    client = client_factory(retention_days=7, purge_interval_s=0.05)
    old = client.post("/route", json={"prompt": PROMPTS[0]}, headers=C).json()["decision_id"]
    new = client.post("/route", json={"prompt": PROMPTS[1]}, headers=C).json()["decision_id"]
    with client.app.state.store.engine.begin() as conn:  # type: ignore[attr-defined]
        conn.execute(
            decisions.update().where(decisions.c.id == old).values(created_at=datetime.now(UTC) - timedelta(days=8))
        )
    spool = client.app.state.recorder.spool  # type: ignore[attr-defined]
    aged = (datetime.now(UTC) - timedelta(days=8)).isoformat()
    item = {"outcome_id": "o-old", "prompt": "OLD SECRET", "model": "small", "score": 1.0, "cost_usd": 0.0}
    spool.reject({**item, "spooled_at": aged}, "score out of range")  # set aside in an outage 8 days ago
    spool.reject({**item, "outcome_id": "o-new", "prompt": "young"}, "score out of range")
    for _ in range(200):  # the job runs every 0.05 s; give it up to 10 s on a busy machine
        if old not in {r.id for r in stored(client)} and spool.rejected()[0] == 1:
            break
        time.sleep(0.05)
    assert {r.id for r in stored(client)} == {new}
    assert spool.rejected()[1][0]["outcome_id"] == "o-new" and b"OLD" not in spool.rejected_path.read_bytes()


def test_the_service_releases_holds_no_caller_settled(client_factory: Callable[..., TestClient]) -> None:
    """A session's room held by a decision its caller never settled comes back after reservation_expiry_s (the
    job looks every quarter of it), counted on /metrics; the decision's late outcome still books its cost."""
    client = client_factory(reservation_expiry_s=0.2)
    client.put("/sessions/held", json={"cap_usd": 1.0}, headers=C)
    d = client.post("/route", json={"prompt": PROMPTS[1], "session_id": "held"}, headers=C).json()
    assert d["expected_cost_usd"] > 0
    for _ in range(200):  # give the job up to 10 s on a busy machine
        view = client.get("/sessions/held", headers=C).json()
        if view["reserved_usd"] == 0:
            break
        time.sleep(0.05)
    assert view["reserved_usd"] == 0 and view["spent_usd"] == 0
    assert metric(client, "tierwise_expired_holds_usd_total") == pytest.approx(d["expected_cost_usd"])
    late = {"decision_id": d["decision_id"], "score": 1.0, "cost_usd": 0.003}
    assert client.post("/outcomes", json=late, headers=C).status_code == 201
    view = client.get("/sessions/held", headers=C).json()
    assert view["spent_usd"] == pytest.approx(0.003) and view["reserved_usd"] == 0


def test_holds_are_kept_without_an_expiry(
    client_factory: Callable[..., TestClient], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("TIERWISE_RESERVATION_EXPIRY_S", "0")
    assert Settings().reservation_expiry_s == 0
    client = client_factory(reservation_expiry_s=0)
    client.put("/sessions/kept", json={"cap_usd": 1.0}, headers=C)
    d = client.post("/route", json={"prompt": PROMPTS[1], "session_id": "kept"}, headers=C).json()
    time.sleep(0.3)
    assert client.get("/sessions/kept", headers=C).json()["reserved_usd"] == pytest.approx(d["expected_cost_usd"])


def test_boundary_exploration_serves_what_a_neighbouring_operating_point_would(
    client_factory: Callable[..., TestClient],
) -> None:
    client = client_factory(exploration_boundary_rate=0.5, exploration_boundary_factor=4.0)
    prompts = [f"{kind} question {i}: alpha beta" for i in range(60) for kind in ("easy", "medium", "hard")]

    def batch(lam: float, explore: bool) -> list[dict]:
        body = {"prompts": prompts, "cost_weight_per_usd": lam, "explore": explore}
        return client.post("/route/batch", json=body, headers=C).json()["decisions"]

    out, policy = batch(100.0, True), batch(100.0, False)
    neighbours = [{a["tier"], b["tier"]} for a, b in zip(batch(400.0, False), batch(25.0, False), strict=True)]
    rows = {r.id: r for r in stored(client)}
    explored = disagreeing = 0
    for d, p, near in zip(out, policy, neighbours, strict=True):
        row = rows[d["decision_id"]]
        others = {t: q for t, q in row.propensities.items() if t != p["tier"] and q > 0}
        if near - {p["tier"]}:  # a neighbour disagrees: half the probability goes to its tier(s)
            disagreeing += 1
            assert set(others) == near - {p["tier"]} and abs(sum(others.values()) - 0.5) < 1e-9
        else:
            assert not others and not row.explored
        explored += row.explored
    assert 0 < disagreeing < len(prompts) and explored > 0


def test_boundary_exploration_aimed_at_configured_operating_points(client_factory: Callable[..., TestClient]) -> None:
    """With TIERWISE_EXPLORATION_BOUNDARY_COST_WEIGHTS, exploration serves what those operating points (the budgets an
    operator will compare) would choose, whatever knob the request used: their estimates need far less of it."""
    aimed = [3.0, 2000.0]
    client = client_factory(exploration_boundary_rate=0.5, exploration_boundary_cost_weights=aimed)
    prompts = [f"{kind} question {i}: alpha beta" for i in range(60) for kind in ("easy", "medium", "hard")]

    def batch(knob: dict[str, float], explore: bool) -> list[dict]:
        body = {"prompts": prompts, **knob, "explore": explore}
        return client.post("/route/batch", json=body, headers=C).json()["decisions"]

    for knob in ({"cost_weight_per_usd": 100.0}, {"quality_target": 0.6}):
        out, policy = batch(knob, True), batch(knob, False)
        lo, hi = (batch({"cost_weight_per_usd": w}, False) for w in aimed)
        rows = {r.id: r for r in stored(client)}
        disagreeing = 0
        for d, p, a, b in zip(out, policy, lo, hi, strict=True):
            near = {a["tier"], b["tier"]} - {p["tier"]}
            others = {t: q for t, q in rows[d["decision_id"]].propensities.items() if t != p["tier"] and q > 0}
            assert set(others) == near and (not near or abs(sum(others.values()) - 0.5) < 1e-9)
            disagreeing += bool(near)
        assert 0 < disagreeing < len(prompts)


def test_boundary_cost_weights_must_be_positive_numbers(monkeypatch: pytest.MonkeyPatch) -> None:
    for bad in ("[0]", "[-1]", '["x"]', "[Infinity]"):
        monkeypatch.setenv("TIERWISE_EXPLORATION_BOUNDARY_COST_WEIGHTS", bad)
        with pytest.raises(ValidationError, match="exploration_boundary_cost_weights"):
            Settings()
    monkeypatch.setenv("TIERWISE_EXPLORATION_BOUNDARY_COST_WEIGHTS", "[12.5, 40]")
    assert Settings().exploration_boundary_cost_weights == [12.5, 40.0]
