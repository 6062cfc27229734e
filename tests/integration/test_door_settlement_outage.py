"""The door's settlement of an answered call survives a store outage: it is spooled like an outcome and booked on
the session when the store is back (it was logged and lost: the real cost never booked, the reservation stuck)."""

from __future__ import annotations

import threading
import uuid
from pathlib import Path

import httpx
import pytest
import sqlalchemy as sa
from openai import OpenAI

from serving.app import create_app
from serving.model_source import LocalSource
from tests.conftest import HashingEmbedder
from tests.integration.conftest import CLIENT_KEY, bearer
from tests.integration.fake_upstream import Reply, fake_upstream
from tests.integration.live_server import live_server
from tests.integration.proxy_fixtures import proxy_settings, streamed_in_session

EASY = "easy question 2: alpha beta gamma delta omega"
SMALL = (0.2, 0.2)  # the test tiers' price of model small, USD per 1M tokens in and out


def test_a_settlement_the_store_cannot_take_is_spooled_and_booked_later(tmp_path: Path, artifact_dir: Path) -> None:
    with fake_upstream() as up:
        app = create_app(proxy_settings(tmp_path, up), LocalSource(artifact_dir), embedder=HashingEmbedder())
        with live_server(lambda: app) as url:
            sid = f"s-{uuid.uuid4().hex[:8]}"
            assert httpx.put(f"{url}/sessions/{sid}", json={"cap_usd": 1.0}, headers=bearer(CLIENT_KEY)).is_success
            hold = threading.Event()
            up.script("small", Reply(text="one two three", usage=(400, 80), hold=hold))
            sdk = OpenAI(base_url=f"{url}/v1", api_key=CLIENT_KEY, max_retries=0)
            stream, decision_id = streamed_in_session(sdk, sid, EASY)  # routed and stored; upstream held
            store = app.state.store
            good = store.engine
            store.engine = sa.create_engine(f"sqlite:///{tmp_path}/missing/dir/db.sqlite")  # the store goes away
            try:
                hold.set()
                assert "".join(c.choices[0].delta.content or "" for c in stream if c.choices) == "one two three"
                assert app.state.recorder.spool.pending() == 1  # the settlement, kept
                metrics = app.state.recorder.metrics
                assert metrics.settlements_spooled._value.get() == 1 and metrics.spooled._value.get() == 0
            finally:
                store.engine = good
            session = store.get_session(sid)
            assert session is not None and session.spent_usd == 0 and session.reserved_usd > 0
            assert app.state.recorder.replay(app.state.runtime.tiers) == 1
            real = (400 * SMALL[0] + 80 * SMALL[1]) / 1e6
            session = store.get_session(sid)
            assert session is not None and session.spent_usd == pytest.approx(real)
            assert session.reserved_usd == pytest.approx(0)
            settled = store.get_decisions([decision_id])[decision_id]
            assert settled.settled and settled.served_model == "small" and settled.tokens_out == 80
            assert app.state.recorder.replay(app.state.runtime.tiers) == 0  # nothing left, nothing booked twice
            assert store.get_session(sid).spent_usd == pytest.approx(real)  # type: ignore[union-attr]


def test_a_spooled_settlement_that_is_no_settlement_is_set_aside(tmp_path: Path) -> None:
    from infra.store import Store
    from router.schema import parse_tiers
    from serving.metrics import Metrics
    from serving.outcomes import SETTLEMENT, OutcomeRecorder
    from serving.spool import Spool
    from tests.conftest import TIERS_TOML

    store = Store(f"sqlite:///{tmp_path / 'db.sqlite'}")
    store.migrate()
    recorder = OutcomeRecorder(store, Spool(tmp_path / "spool.jsonl"), Metrics())
    bad = {"kind": SETTLEMENT, "outcome_id": SETTLEMENT + "d1", "decision_id": "d1", "cost_usd": "lots"}
    unknown = {"kind": SETTLEMENT, "outcome_id": SETTLEMENT + "d2", "decision_id": "d2", "cost_usd": 0.1}
    recorder.spool.append([bad, unknown])
    assert recorder.replay(parse_tiers(TIERS_TOML)) == 2  # both taken: one set aside, one settling nothing
    count, last = recorder.spool.rejected()
    assert count == 1 and last[0]["outcome_id"] == SETTLEMENT + "d1" and "cost_usd" in last[0]["reason"]
    assert not recorder.spool.has_pending()


def test_a_spooled_settlement_out_of_range_is_set_aside_and_the_rest_replays(tmp_path: Path) -> None:
    """A settlement whose number no column takes (10**19 tokens, 1e400 USD, NaN) is set aside, as one that is no
    number is: it raised OverflowError at every replay, and the acknowledged outcomes spooled behind it were never
    written."""
    from infra.store import Store
    from router.schema import parse_tiers
    from serving.metrics import Metrics
    from serving.outcomes import SETTLEMENT, OutcomeRecorder
    from serving.schemas import OutcomeIn
    from serving.spool import Spool
    from tests.conftest import TIERS_TOML

    store = Store(f"sqlite:///{tmp_path / 'db.sqlite'}")
    store.migrate()
    recorder = OutcomeRecorder(store, Spool(tmp_path / "spool.jsonl"), Metrics())
    bad = [
        {"kind": SETTLEMENT, "outcome_id": f"{SETTLEMENT}d{i}", "decision_id": f"d{i}", field: value}
        for i, (field, value) in enumerate((("tokens_in", 10**19), ("cost_usd", 10**400), ("latency_ms", float("nan"))))
    ]
    acked = {**OutcomeIn(prompt=EASY, model="small", score=0.5, cost_usd=0.001).model_dump(), "outcome_id": "acked"}
    recorder.spool.append([*bad, {**acked, "owner": None, "admin": True}])
    assert recorder.replay(parse_tiers(TIERS_TOML)) == 4
    count, last = recorder.spool.rejected()
    assert count == 3 and {r["outcome_id"] for r in last} == {b["outcome_id"] for b in bad}
    assert not recorder.spool.has_pending()
    assert [(o.model, o.score) for o in store.export_outcomes()] == [("small", 0.5)]  # the acknowledged one


def test_a_set_aside_settlement_books_its_decision_at_the_hold(tmp_path: Path) -> None:
    """A spooled settlement that cannot be read still stands for a call that was answered. It used to leave its
    decision's reservation held on the session until an admin released it; now the decision is booked at its hold
    (the most the call could cost; a sessionless one at its expected cost), once."""
    from infra.store import SERVED_BY_PROXY, DecisionRow, Store
    from router.schema import parse_tiers
    from serving.metrics import Metrics
    from serving.outcomes import SETTLEMENT, OutcomeRecorder
    from serving.spool import Spool
    from tests.conftest import TIERS_TOML

    store = Store(f"sqlite:///{tmp_path / 'db.sqlite'}")
    store.migrate()

    def decision(name: str, **kw: object) -> DecisionRow:
        return DecisionRow(id=name, prompt=EASY, tier="main", model="small", expected_cost_usd=0.01,
                           router_version="1", reason="routed", served_by=SERVED_BY_PROXY, **kw)  # fmt: skip

    with store.lock_session("s", owner=None) as locked:
        locked.reserve([decision("held", session_id="s", reserved_usd=0.05)])
    store.record_decisions([decision("loose")])
    session = store.get_session("s")
    assert session is not None and session.reserved_usd == pytest.approx(0.05)
    recorder = OutcomeRecorder(store, Spool(tmp_path / "spool.jsonl"), Metrics())
    corrupt = [{"kind": SETTLEMENT, "outcome_id": f"{SETTLEMENT}{d}", "decision_id": d, "tokens_in": 10**19}
               for d in ("held", "loose", "held")]  # fmt: skip
    recorder.spool.append([*corrupt, {"kind": SETTLEMENT, "outcome_id": "x", "decision_id": 7}])
    recorder.replay(parse_tiers(TIERS_TOML))
    assert recorder.spool.rejected()[0] == 3  # each is still set aside with its reason (the twin counted once)
    session = store.get_session("s")
    assert session is not None
    assert session.reserved_usd == pytest.approx(0) and session.spent_usd == pytest.approx(0.05)  # booked once
    found = store.get_decisions(["held", "loose"])
    assert found["held"].cost_usd == pytest.approx(0.05) and found["loose"].cost_usd == pytest.approx(0.01)
    assert all("booked at the decision's hold" in (d.reason or "") for d in found.values())


def test_a_spooled_outcome_waits_for_its_door_decisions_settlement(tmp_path: Path) -> None:
    # Spooled (202) while the store was down and the answer still streaming: at replay the decision may not be
    # settled yet (its settlement spooled behind it, or the answer still going). It was set aside for good.
    from datetime import UTC, datetime, timedelta

    from infra.store import SERVED_BY_PROXY, DecisionRow, Store
    from router.schema import parse_tiers
    from serving.metrics import Metrics
    from serving.outcomes import SETTLEMENT_WAIT_S, OutcomeRecorder
    from serving.schemas import OutcomeIn
    from serving.spool import Spool
    from tests.conftest import TIERS_TOML

    store = Store(f"sqlite:///{tmp_path / 'db.sqlite'}")
    store.migrate()
    old = datetime.now(UTC) - timedelta(seconds=SETTLEMENT_WAIT_S + 60)
    for name, created in (("fresh", datetime.now(UTC)), ("stale", old)):
        row = DecisionRow(id=name, prompt=EASY, tier="main", model="small", expected_cost_usd=0.01,
                          router_version="1", reason="r", served_by=SERVED_BY_PROXY, created_at=created)  # fmt: skip
        store.record_decisions([row])
    recorder = OutcomeRecorder(store, Spool(tmp_path / "spool.jsonl"), Metrics())
    tiers = parse_tiers(TIERS_TOML)

    def spooled(decision: str) -> dict:
        item = OutcomeIn(decision_id=decision, score=0.5).model_dump()
        return {**item, "outcome_id": f"decision:{decision}", "owner": None, "admin": True}

    recorder.spool.append([spooled("fresh"), spooled("stale")])
    assert recorder.replay(tiers) == 1  # taken: the stale one (set aside); the fresh one is back in the spool
    count, last = recorder.spool.rejected()
    assert count == 1 and last[0]["outcome_id"] == "decision:stale"  # an hour without a settlement: set aside
    assert recorder.spool.pending() == 1 and store.export_outcomes() == []  # the fresh one waits
    usage = {"tokens_in": 40, "tokens_out": 8, "latency_ms": 5.0, "served_model": "medium"}
    store.settle_decision("fresh", cost_usd=0.002, **usage)  # the door's settlement arrives
    assert recorder.replay(tiers) == 1
    assert not recorder.spool.has_pending()
    assert [(o.model, o.cost_usd, o.score) for o in store.export_outcomes()] == [("medium", 0.002, 0.5)]
