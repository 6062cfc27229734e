"""POST /decisions/{id}/usage: a caller that served a routed call itself settles it with its cost, no score."""

from __future__ import annotations

import dataclasses
from typing import Any

import pytest
from fastapi.testclient import TestClient

from router.schema import TiersConfig
from tests.integration.conftest import ADMIN_KEY, CLIENT_KEY, OTHER_KEY, bearer, metric

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


def test_a_hold_release_frees_the_room_and_leaves_the_decision_open_for_its_cost(client: TestClient) -> None:
    """POST /decisions/{id}/release: for a call whose end is unknown (cancelled before it answered). The session's
    room is freed at once; the cost reported later (usage or outcome) is still booked, once."""
    d = routed(client)
    reserved = session(client)["reserved_usd"]
    r = client.post(f"/decisions/{d['decision_id']}/release", headers=C)
    assert r.status_code == 200, r.text
    assert r.json() == {"decision_id": d["decision_id"], "session_id": "s", "released_usd": reserved, "settled": False}
    released = {"tierwise_released_holds_total": 1.0, "tierwise_released_holds_usd_total": pytest.approx(reserved)}
    assert {name: metric(client, name) for name in released} == released
    after = session(client)
    assert after["reserved_usd"] == pytest.approx(0) and after["spent_usd"] == 0
    assert after["recent_decisions"][0]["settled"] is False
    again = client.post(f"/decisions/{d['decision_id']}/release", headers=C)  # idempotent: nothing more to free
    assert again.status_code == 200 and again.json()["released_usd"] == 0 and session(client)["reserved_usd"] == 0
    late = client.post(f"/decisions/{d['decision_id']}/usage", json=USAGE, headers=C)
    assert late.json()["booked"] is True
    booked = session(client)
    assert booked["spent_usd"] == pytest.approx(0.002) and booked["reserved_usd"] == pytest.approx(0)
    settled = client.post(f"/decisions/{d['decision_id']}/release", headers=C)
    assert settled.json() == {**r.json(), "released_usd": 0.0, "settled": True}
    assert session(client)["spent_usd"] == pytest.approx(0.002)
    # Counted once: the retry and the release of the settled decision freed nothing.
    assert {name: metric(client, name) for name in released} == released


def test_a_released_hold_is_booked_by_a_later_outcome(client: TestClient) -> None:
    d = routed(client)
    assert client.post(f"/decisions/{d['decision_id']}/release", headers=C).json()["settled"] is False
    o = client.post("/outcomes", json={"decision_id": d["decision_id"], "score": 1, "cost_usd": 0.003}, headers=C)
    assert o.status_code == 201, o.text
    after = session(client)
    assert after["spent_usd"] == pytest.approx(0.003) and after["reserved_usd"] == pytest.approx(0)


@pytest.mark.parametrize(
    ("decision", "key", "status"), [("mine", OTHER, 403), ("nope", C, 404), ("bad id!", C, 422), ("mine", {}, 401)]
)
def test_a_hold_release_is_refused_for_another_client_or_an_unknown_decision(
    client: TestClient, decision: str, key: dict[str, str], status: int
) -> None:
    d = routed(client)
    did = d["decision_id"] if decision == "mine" else decision
    r = client.post(f"/decisions/{did}/release", headers=key)
    assert r.status_code == status, r.text
    assert session(client)["reserved_usd"] > 0


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
        ({}, None),  # a release says so: cost_usd null, never a missing field (and no tokens to price)
        ({"tokens_in": 10}, None),  # tierwise prices only both counts
        ({"tokens_in": 10, "tokens_out": 2**31}, "tokens_out"),
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


@pytest.mark.parametrize("served", [None, "unused"])
def test_tokens_without_a_cost_are_priced_at_the_catalogue_of_the_model_that_served(
    client: TestClient, served: str | None
) -> None:
    """A caller that knows the tokens but not the price (LiteLLM for a deployment it has no price for) leaves
    `cost_usd` out: tierwise books the tokens at its tiers config's prices, once."""
    d = routed(client)
    prices = {"small": (0.2, 0.2), "medium": (1.0, 2.0), "large": (10.0, 30.0), "unused": (5.0, 5.0)}
    p_in, p_out = prices[served or d["model"]]
    cost = (1200 * p_in + 340 * p_out) / 1e6
    body: dict[str, Any] = {"tokens_in": 1200, "tokens_out": 340} | ({"served_model": served} if served else {})
    r = client.post(f"/decisions/{d['decision_id']}/usage", json=body, headers=C)
    assert r.status_code == 200, r.text
    assert r.json()["booked"] is True and r.json()["cost_usd"] == pytest.approx(cost)
    assert r.json()["tokens_in"] == 1200 and r.json()["served_model"] == served
    after = session(client)
    assert after["spent_usd"] == pytest.approx(cost) and after["reserved_usd"] == pytest.approx(0)
    again = client.post(f"/decisions/{d['decision_id']}/usage", json={**body, "tokens_out": 9999}, headers=C)
    assert again.json() == {**r.json(), "booked": False} and session(client)["spent_usd"] == pytest.approx(cost)


def test_tokens_of_a_model_the_config_cannot_price_alone_are_422(
    client: TestClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A fusion tier's tokens (or a model gone from the config) have no one price: the caller must give the cost."""
    d = routed(client)
    monkeypatch.setattr(TiersConfig, "token_price", lambda self, model: None)
    r = client.post(f"/decisions/{d['decision_id']}/usage", json={"tokens_in": 5, "tokens_out": 5}, headers=C)
    assert r.status_code == 422 and "give cost_usd" in r.text and d["model"] in r.text
    assert session(client)["reserved_usd"] > 0 and session(client)["spent_usd"] == 0


def test_an_outcome_with_tokens_and_no_cost_is_charged_at_the_catalogue_price(client: TestClient) -> None:
    """POST /outcomes for an unsettled decision with tokens but no cost (a gateway that could not price the call)
    books the tokens at the decision's model's price, as /decisions/{id}/usage would; a settled one keeps its cost."""
    d = routed(client)
    prices = {"small": (0.2, 0.2), "medium": (1.0, 2.0), "large": (10.0, 30.0)}
    cost = (1000 * prices[d["model"]][0] + 500 * prices[d["model"]][1]) / 1e6
    body = {"decision_id": d["decision_id"], "score": 0.5, "tokens_in": 1000, "tokens_out": 500}
    r = client.post("/outcomes", json=body, headers=C)
    assert r.status_code == 201 and r.json()["recorded"] == 1, r.text
    after = session(client)
    assert after["spent_usd"] == pytest.approx(cost) and after["reserved_usd"] == pytest.approx(0)
    rows = client.app.state.store.export_outcomes()  # type: ignore[attr-defined]
    assert [(x.cost_usd, x.tokens_in, x.tokens_out) for x in rows] == [(pytest.approx(cost), 1000, 500)]
    settled = routed(client, "t")
    client.post(f"/decisions/{settled['decision_id']}/usage", json=USAGE, headers=C)
    later = {**body, "decision_id": settled["decision_id"], "tokens_in": 9, "tokens_out": 9}
    assert client.post("/outcomes", json=later, headers=C).status_code == 201
    assert session(client, "t")["spent_usd"] == pytest.approx(USAGE["cost_usd"])
    rows = client.app.state.store.export_outcomes()  # type: ignore[attr-defined]
    assert sorted(x.cost_usd for x in rows) == pytest.approx(sorted([cost, USAGE["cost_usd"]]))


def test_a_retried_tokens_only_outcome_keeps_the_price_it_was_booked_at(client: TestClient) -> None:
    """A retry of an outcome whose tokens tierwise priced is the same outcome after the prices change (it was a
    409: re-priced, its cost differed from the stored one); other tokens under the same id are still a conflict."""
    d = routed(client)
    body = {"outcome_id": "o-1", "decision_id": d["decision_id"], "score": 0.5, "tokens_in": 1000, "tokens_out": 500}
    first = client.post("/outcomes", json=body, headers=C)
    assert first.status_code == 201 and first.json()["recorded"] == 1, first.text
    spent = session(client)["spent_usd"]
    assert spent > 0
    state = client.app.state  # type: ignore[attr-defined]
    tiers = state.runtime.router.tiers
    dearer = {t.name: t.model_copy(update={"input_per_1m": t.input_per_1m * 3 + 1}) for t in tiers.tiers}
    state.runtime.router.tiers = dataclasses.replace(tiers, tiers=tuple(dearer[t.name] for t in tiers.tiers), models={})
    retry = client.post("/outcomes", json=body, headers=C)
    assert retry.status_code == 201 and retry.json()["recorded"] == 0, retry.text
    other = client.post("/outcomes", json={**body, "tokens_in": 1001}, headers=C)
    assert other.status_code == 409 and "cost_usd" in other.text
    assert session(client)["spent_usd"] == pytest.approx(spent)
    rows = state.store.export_outcomes()
    assert [(x.cost_usd, x.tokens_in, x.tokens_out) for x in rows] == [(pytest.approx(spent), 1000, 500)]


def test_no_cost_and_no_tokens_names_what_to_give(client: TestClient) -> None:
    d = routed(client)
    r = client.post(f"/decisions/{d['decision_id']}/usage", json={"latency_ms": 5.0}, headers=C)
    assert r.status_code == 422 and "give cost_usd" in r.text and "tokens_in and tokens_out" in r.text
    assert session(client)["reserved_usd"] > 0 and session(client)["spent_usd"] == 0


def test_non_finite_cost_is_422(client: TestClient) -> None:
    d = routed(client)
    raw = b'{"cost_usd": NaN}'
    r = client.post(
        f"/decisions/{d['decision_id']}/usage", content=raw, headers={**C, "Content-Type": "application/json"}
    )
    assert r.status_code in (400, 422) and session(client)["spent_usd"] == 0
