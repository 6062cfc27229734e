"""POST /decisions/{id}/usage: a caller that served a routed call itself settles it with its cost, no score."""

from __future__ import annotations

from typing import Any

import pytest
from fastapi.testclient import TestClient

from tests.integration.conftest import ADMIN_KEY, CLIENT_KEY, OTHER_KEY, bearer

HARD = "hard question 1: omega sigma alpha beta gamma"
C, OTHER, A = bearer(CLIENT_KEY), bearer(OTHER_KEY), bearer(ADMIN_KEY)
USAGE = {"cost_usd": 0.002, "tokens_in": 120, "tokens_out": 340, "latency_ms": 812.5}


def routed(client: TestClient, session: str = "s", cap_usd: float = 1.0) -> dict[str, Any]:
    assert client.put(f"/sessions/{session}", json={"cap_usd": cap_usd}, headers=C).status_code == 200
    d = client.post("/route", json={"prompt": HARD, "session_id": session}, headers=C).json()
    view = client.get(f"/sessions/{session}", headers=C).json()
    assert view["reserved_usd"] == pytest.approx(d["expected_cost_usd"]) and view["reserved_usd"] > 0
    assert view["spent_usd"] == 0
    return dict(d)


def session(client: TestClient, name: str = "s") -> dict[str, Any]:
    return dict(client.get(f"/sessions/{name}", headers=C).json())


def test_usage_books_the_real_cost_once(client: TestClient) -> None:
    d = routed(client)
    r = client.post(f"/decisions/{d['decision_id']}/usage", json=USAGE, headers=C)
    assert r.status_code == 200, r.text
    assert r.json() == {
        "decision_id": d["decision_id"],
        "session_id": "s",
        "booked": True,
        **USAGE,
        "served_model": None,
    }
    after = session(client)
    assert after["spent_usd"] == pytest.approx(0.002) and after["reserved_usd"] == pytest.approx(0)
    assert after["recent_decisions"][0]["settled"] is True
    # A retry (even with other numbers, even a release) changes nothing and says so.
    for retry in (USAGE, {**USAGE, "cost_usd": 0.5}, {"cost_usd": None}):
        again = client.post(f"/decisions/{d['decision_id']}/usage", json=retry, headers=C)
        assert again.status_code == 200 and again.json() == {**r.json(), "booked": False}
    assert session(client)["spent_usd"] == pytest.approx(0.002)
    # A later outcome needs only the score, takes the settled cost, and charges nothing more.
    o = client.post("/outcomes", json={"decision_id": d["decision_id"], "score": 0.8}, headers=C)
    assert o.status_code == 201 and o.json()["recorded"] == 1
    assert session(client)["spent_usd"] == pytest.approx(0.002)
    rows = client.app.state.store.export_outcomes()  # type: ignore[attr-defined]
    assert [(x.cost_usd, x.tokens_in, x.tokens_out) for x in rows] == [(0.002, 120, 340)]


def test_release_frees_the_reservation_and_charges_nothing(client: TestClient) -> None:
    d = routed(client)
    r = client.post(f"/decisions/{d['decision_id']}/usage", json={"cost_usd": None, "latency_ms": 30.0}, headers=C)
    assert r.status_code == 200 and r.json()["booked"] is True and r.json()["cost_usd"] is None
    after = session(client)
    assert after["spent_usd"] == 0 and after["reserved_usd"] == pytest.approx(0)
    # A settlement after the release charges nothing either: the decision is settled.
    late = client.post(f"/decisions/{d['decision_id']}/usage", json=USAGE, headers=C)
    assert late.json()["booked"] is False and session(client)["spent_usd"] == 0
    # An outcome for a released decision must bring its own cost, and still charges nothing.
    no_cost = client.post("/outcomes", json={"decision_id": d["decision_id"], "score": 0}, headers=C)
    assert no_cost.status_code == 422 and "no settled cost" in no_cost.text


def test_an_outcome_settled_decision_is_not_charged_again(client: TestClient) -> None:
    d = routed(client)
    client.post("/outcomes", json={"decision_id": d["decision_id"], "score": 1, "cost_usd": 0.001}, headers=C)
    r = client.post(f"/decisions/{d['decision_id']}/usage", json=USAGE, headers=C)
    assert r.status_code == 200 and r.json()["booked"] is False
    assert session(client)["spent_usd"] == pytest.approx(0.001)


def test_a_settlement_racing_an_outcome_changes_nothing_once_the_outcome_settled(client: TestClient) -> None:
    """POST /decisions/{id}/usage checks `settled`, then writes: an outcome may settle the decision in between. The
    late settlement must not rewrite the decision, or a retry of that outcome would resolve another model."""
    d = routed(client)
    outcome = {"decision_id": d["decision_id"], "score": 1, "cost_usd": 0.001}
    assert client.post("/outcomes", json=outcome, headers=C).json()["recorded"] == 1
    other = next(m for m in ("small", "large") if m != d["model"])
    store = client.app.state.store  # type: ignore[attr-defined]
    store.settle_decision(
        d["decision_id"], cost_usd=0.5, tokens_in=1, tokens_out=1, latency_ms=1.0, served_model=other
    )  # what the racing usage call writes after its check
    [row] = store.get_decisions([d["decision_id"]]).values()
    assert row.served_model is None and row.cost_usd is None
    assert session(client)["spent_usd"] == pytest.approx(0.001)
    retry = client.post("/outcomes", json=outcome, headers=C)
    assert retry.status_code == 201 and retry.json()["recorded"] == 0


def test_served_model_is_kept_and_used_by_a_later_outcome(client: TestClient) -> None:
    d = routed(client)
    served = next(m for m in ("small", "large") if m != d["model"])
    r = client.post(f"/decisions/{d['decision_id']}/usage", json={**USAGE, "served_model": served}, headers=C)
    assert r.json()["served_model"] == served
    client.post("/outcomes", json={"decision_id": d["decision_id"], "score": 1}, headers=C)
    assert [x.model for x in client.app.state.store.export_outcomes()] == [served]  # type: ignore[attr-defined]


def test_only_the_decisions_owner_or_admin_may_settle(client: TestClient) -> None:
    d = routed(client)
    url = f"/decisions/{d['decision_id']}/usage"
    r = client.post(url, json=USAGE, headers=OTHER)
    assert r.status_code == 403 and r.json() == {"detail": f"decision {d['decision_id']} belongs to another client"}
    assert session(client)["reserved_usd"] > 0, "a refused settlement must leave the reservation"
    assert client.post(url, json=USAGE).status_code == 401
    assert client.post(url, json=USAGE, headers=A).json()["booked"] is True
    assert session(client)["spent_usd"] == pytest.approx(0.002)


def test_unknown_decision_is_404(client: TestClient) -> None:
    r = client.post("/decisions/0123456789abcdef/usage", json=USAGE, headers=C)
    assert r.status_code == 404 and r.json() == {"detail": "unknown decision_id 0123456789abcdef"}


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({}, "cost_usd"),  # a release says so: cost_usd null, never a missing field
        ({"cost_usd": -0.01}, "cost_usd"),
        ({"cost_usd": 2e6}, "cost_usd"),
        ({"cost_usd": "0.1"}, "cost_usd"),
        ({"cost_usd": 0.1, "tokens_in": -1}, "tokens_in"),
        ({"cost_usd": 0.1, "tokens_out": 1.5}, "tokens_out"),
        ({"cost_usd": 0.1, "latency_ms": -1.0}, "latency_ms"),
        ({"cost_usd": 0.1, "score": 1}, "score"),
        ({"cost_usd": 0.1, "served_model": "gpt-nope"}, None),
        ([USAGE], None),
    ],
)
def test_bad_usage_is_422_with_a_reason_and_settles_nothing(client: TestClient, body: Any, field: str | None) -> None:
    d = routed(client)
    r = client.post(f"/decisions/{d['decision_id']}/usage", json=body, headers=C)
    assert r.status_code == 422, r.text
    detail = r.json()["detail"]
    assert detail and (field is None or any(field in map(str, e["loc"]) for e in detail)), detail
    assert session(client)["reserved_usd"] > 0 and session(client)["spent_usd"] == 0
    assert client.post("/decisions/bad id!/usage", json=USAGE, headers=C).status_code == 422


def test_non_finite_cost_is_422(client: TestClient) -> None:
    d = routed(client)
    raw = b'{"cost_usd": NaN}'
    r = client.post(
        f"/decisions/{d['decision_id']}/usage", content=raw, headers={**C, "Content-Type": "application/json"}
    )
    assert r.status_code in (400, 422) and session(client)["spent_usd"] == 0
