"""Prompts at rest (text, keyed hash, nothing), the retention purge and deleting a session's data, on both stores."""

from __future__ import annotations

import dataclasses
import threading
import time
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from pydantic import SecretStr

import infra.store
from infra.prompt_policy import NOT_STORED, PromptPolicy, prompt_policy
from infra.settings import Settings
from infra.store import (
    SERVED_BY_PROXY,
    DecisionGone,
    DecisionRow,
    OutcomeConflict,
    OutcomeRow,
    Store,
    decisions,
    held_before,
    outcomes,
    run_alembic,
)

PROMPT = "What is the capital of France?"


@pytest.fixture(params=["sqlite", "postgresql"])
def url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    yield f"sqlite:///{tmp_path / 'store.db'}" if request.param == "sqlite" else request.getfixturevalue("pg_url")


def decision(i: int, session: str | None = None, reserved: float = 0.0) -> DecisionRow:
    return DecisionRow(
        id=f"d{i}",
        prompt=PROMPT,
        tier="main",
        model="small",
        expected_cost_usd=0.01,
        router_version="1",
        reason="r",
        session_id=session,
        reserved_usd=reserved,
        propensity=0.9,
        propensities={"main": 0.9, "mid": 0.05, "brain": 0.05},
        expected_costs={"main": 0.01, "mid": 0.02, "brain": 0.2},
    )


def stored(store: Store) -> tuple[list[sa.Row], list[sa.Row]]:
    with store.engine.connect() as conn:
        return conn.execute(decisions.select()).all(), conn.execute(outcomes.select()).all()


@pytest.mark.parametrize("mode", ["text", "hash", "none"])
def test_what_is_kept_of_a_prompt(url: str, mode: str) -> None:
    policy = PromptPolicy(mode, b"secret" if mode == "hash" else None)  # type: ignore[arg-type]
    store = Store(url, policy)
    store.migrate()
    store.record_decisions([decision(1), decision(2)])
    d1 = store.get_decisions(["d1"])["d1"]
    # An outcome by decision takes the decision's prompt (the placeholder when none was kept).
    store.record_outcomes(
        [OutcomeRow(id="o1", decision_id="d1", prompt=d1.prompt, model="small", score=1, cost_usd=0.01)]
    )
    store.record_outcomes([OutcomeRow(id="o2", prompt=PROMPT, model="medium", score=0, cost_usd=0.02)])
    ds, os_ = stored(store)
    everything = repr([r._mapping for r in ds]) + repr([r._mapping for r in os_])
    if mode == "text":
        assert d1.prompt == PROMPT and {r.prompt for r in os_} == {PROMPT}
        assert len(store.export_outcomes()) == 2 and store.count_outcomes_without_text() == 0
        return
    assert "capital of France" not in everything  # the text is nowhere in the database
    assert d1.prompt == NOT_STORED
    assert store.export_outcomes() == []  # nothing to train on without text
    assert store.count_outcomes_without_text() == 2  # and said so
    assert ds[0].propensities == {"main": 0.9, "mid": 0.05, "brain": 0.05}
    if mode == "hash":
        assert ds[0].prompt_hash == policy.digest(PROMPT) != PromptPolicy("hash", b"other").digest(PROMPT)
        # Both outcomes of the same prompt share one keyed prompt id, whichever way they came in.
        assert len({r.prompt_id for r in os_}) == 1
    else:
        assert ds[0].prompt_hash is None
    store.dispose()


@pytest.mark.parametrize("before", ["hash", "none"])
def test_outcomes_of_decisions_kept_without_text_have_none_after_a_switch_to_text(url: str, before: str) -> None:
    """A decision stored without text reads back as the placeholder; its outcome, recorded once the service
    stores text again, must not store the placeholder as a prompt (training would learn from it)."""
    earlier = Store(url, PromptPolicy(before, b"secret" if before == "hash" else None))  # type: ignore[arg-type]
    earlier.migrate()
    earlier.record_decisions([decision(1)])
    earlier.dispose()
    store = Store(url, PromptPolicy("text"))
    d1 = store.get_decisions(["d1"])["d1"]
    assert d1.prompt == NOT_STORED
    store.record_outcomes(
        [OutcomeRow(id="o1", decision_id="d1", prompt=d1.prompt, model="small", score=1, cost_usd=0.01)]
    )
    [row] = stored(store)[1]
    assert row.prompt is None
    expected = PromptPolicy("hash", b"secret").digest(PROMPT)[:32] if before == "hash" else "d1"
    assert row.prompt_id == expected  # joins the outcomes recorded while the decision's setting held
    assert store.export_outcomes() == []
    store.dispose()


MODES = {"text": PromptPolicy("text"), "hash": PromptPolicy("hash", b"secret"), "none": PromptPolicy("none")}


@pytest.mark.parametrize(("before", "after"), [(b, a) for b in MODES for a in MODES if a != b])
def test_a_retry_without_a_decision_is_a_retry_across_a_prompt_storage_change(
    url: str, before: str, after: str
) -> None:
    """An outcome without a decision is stored under a prompt id its storage mode derives; retried after a restart
    in another mode, it is the same outcome (it was a 409: review finding). Another prompt under its id is not."""
    outcome = OutcomeRow(id="o1", prompt=PROMPT, model="small", score=1, cost_usd=0.01)
    earlier = Store(url, MODES[before])
    earlier.migrate()
    assert earlier.record_outcomes([outcome]) == 1
    earlier.dispose()
    store = Store(url, MODES[after])
    assert store.record_outcomes([outcome]) == 0
    assert store.record_outcomes([outcome.model_copy(update={"prompt": f"  {PROMPT}\n"})]) == 0  # the same text
    other = outcome.model_copy(update={"prompt": "What is the capital of Spain?"})
    if before == "none" or (before == "hash" and after != "hash"):
        # Stored under its own id, or under a hash that nothing now holds the key to: there is no prompt to compare
        # (a key kept set in the other modes keeps the comparison: the next test).
        assert store.record_outcomes([other]) == 0
    else:
        with pytest.raises(OutcomeConflict) as refused:
            store.record_outcomes([other])
        assert refused.value.fields == ("prompt_id",)
    assert len(stored(store)[1]) == 1
    store.dispose()


@pytest.mark.parametrize("after", ["text", "none"])
def test_a_hash_key_kept_after_leaving_hash_mode_still_tells_prompts_apart(url: str, after: str) -> None:
    outcome = OutcomeRow(id="o1", prompt=PROMPT, model="small", score=1, cost_usd=0.01)
    earlier = Store(url, MODES["hash"])
    earlier.migrate()
    earlier.record_outcomes([outcome])
    earlier.dispose()
    store = Store(url, PromptPolicy(after, b"secret"))  # type: ignore[arg-type]
    assert store.record_outcomes([outcome]) == 0
    with pytest.raises(OutcomeConflict):
        store.record_outcomes([outcome.model_copy(update={"prompt": "What is the capital of Spain?"})])
    store.dispose()


@pytest.mark.parametrize("kept", [True, False])
def test_a_retry_stored_under_a_rotated_hash_key_is_a_retry_while_the_old_key_is_kept(url: str, kept: bool) -> None:
    """A rotation of TIERWISE_PROMPT_HASH_KEY made a retried outcome stored under the old key a 409 (issue 14). The
    old key kept among the retired ones recognises it; another prompt under its id is still refused."""
    outcome = OutcomeRow(id="o1", prompt=PROMPT, model="small", score=1, cost_usd=0.01)
    earlier = Store(url, PromptPolicy("hash", b"old-key"))
    earlier.migrate()
    earlier.record_outcomes([outcome])
    earlier.dispose()
    retired = prompt_policy("hash", SecretStr("new-key"), [SecretStr("old-key")] if kept else [])
    store = Store(url, retired)
    if kept:
        assert store.record_outcomes([outcome]) == 0
    else:
        with pytest.raises(OutcomeConflict):
            store.record_outcomes([outcome])
    with pytest.raises(OutcomeConflict):
        store.record_outcomes([outcome.model_copy(update={"prompt": "What is the capital of Spain?"})])
    assert len(stored(store)[1]) == 1
    new = OutcomeRow(id="o2", prompt=PROMPT, model="small", score=1, cost_usd=0.01)
    assert store.record_outcomes([new]) == 1  # stored under the new key only
    assert {r.id: r.prompt_id for r in stored(store)[1]}["o2"] == PromptPolicy("hash", b"new-key").digest(PROMPT)[:32]
    store.dispose()


def test_retired_hash_keys_are_read_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TIERWISE_PROMPT_STORAGE", "hash")
    monkeypatch.setenv("TIERWISE_PROMPT_HASH_KEY", "new-key")
    monkeypatch.setenv("TIERWISE_PROMPT_HASH_PREVIOUS_KEYS", '["old-key", "older-key"]')
    s = Settings()
    policy = prompt_policy(s.prompt_storage, s.prompt_hash_key, s.prompt_hash_previous_keys)
    assert policy.key == b"new-key" and policy.previous_keys == (b"old-key", b"older-key")
    assert "new-key" not in repr(policy) and "old-key" not in repr(policy)  # no key in a repr (review finding)
    assert "old-key" not in repr(s)


def grow(store: Store, decision_id: str, session_id: str, total_usd: float) -> float | None:
    """Grow a reservation to exactly `total_usd` (the least and the most asked are the same)."""
    return store.grow_reservation_within(decision_id, session_id, total_usd, total_usd)


def test_a_reservation_grows_only_into_the_room_the_cap_has(url: str) -> None:
    """The proxy's fallback to a dearer tier: the decision's reservation grows on the locked session, or not at all."""
    store = Store(url)
    store.migrate()
    with store.lock_session("s", None) as locked:
        locked.set_cap(1.0)
        locked.reserve([decision(1, "s", reserved=0.3), decision(2, "s", reserved=0.5)])
    assert grow(store, "d1", "s", 0.6) is None  # 0.3 more, 0.2 left
    assert store.get_session("s").reserved_usd == pytest.approx(0.8)  # type: ignore[union-attr]
    assert grow(store, "d1", "s", 0.5) is not None and grow(store, "d1", "s", 0.4) is not None  # the second: no change
    assert store.get_session("s").reserved_usd == pytest.approx(1.0)  # type: ignore[union-attr]
    assert store.get_decisions(["d1"])["d1"].reserved_usd == pytest.approx(0.5)
    assert grow(store, "d1", "other", 0.5) is None and grow(store, "d9", "s", 0.1) is None
    store.record_outcomes([OutcomeRow(id="o", decision_id="d2", prompt=PROMPT, model="small", score=1, cost_usd=0.1)])
    assert grow(store, "d2", "s", 0.6) is None  # settled
    assert store.get_session("s").reserved_usd == pytest.approx(0.5)  # type: ignore[union-attr]
    with store.lock_session("s", None) as locked:
        locked.freeze()
    assert grow(store, "d1", "s", 0.55) is None  # frozen, though the cap has room
    store.dispose()


def test_a_worst_case_is_held_as_far_as_the_cap_has_room_and_counted_as_in_flight(url: str) -> None:
    """The proxy holding a call's worst case: the reservation grows toward the most, at least the least, or not at
    all; what unsettled decisions hold beyond their expected cost is what calls in flight hold."""
    store = Store(url)
    store.migrate()
    with store.lock_session("s", None) as locked:
        locked.set_cap(1.0)
        locked.reserve([decision(1, "s", reserved=0.01), decision(2, "s", reserved=0.01)])
    assert store.grow_reservation_within("d1", "s", 0.02, 5.0) == pytest.approx(0.99)  # all the room there is
    assert store.get_session("s").reserved_usd == pytest.approx(1.0)  # type: ignore[union-attr]
    assert store.grow_reservation_within("d2", "s", 0.02, 0.5) is None  # no room for its least
    assert store.grow_reservation_within("d2", "s", 0.005, 0.01) == pytest.approx(0.01)  # holds enough already
    assert store.grow_reservation_within("d2", "s", 0.02, 0.015) is None  # a most under the least is the least
    with store.lock_session("s", None) as locked:
        assert locked.held_in_flight() == pytest.approx(0.98)  # d1's 0.99 beyond its expected 0.01
    store.record_outcomes([OutcomeRow(id="o", decision_id="d1", prompt=PROMPT, model="small", score=1, cost_usd=0.3)])
    with store.lock_session("s", None) as locked:
        assert locked.held_in_flight() == pytest.approx(0.0)  # settled: released
        assert locked.row.spent_usd == pytest.approx(0.3) and locked.row.reserved_usd == pytest.approx(0.01)
    assert store.grow_reservation_within("d2", "s", 0.02, 5.0) == pytest.approx(0.7)
    store.dispose()


def test_a_settlement_and_a_growing_reservation_of_one_decision_do_not_deadlock(url: str) -> None:
    """The proxy grows a decision's reservation (session row, then decision) while the decision is settled (an
    admin's release, a cancelled call): settling locked the decision, then the session, and PostgreSQL answered
    one of them DeadlockDetected (a review's find). Both lock the session first now."""
    store = Store(url)
    store.migrate()
    with store.lock_session("s", None) as locked:
        locked.set_cap(1.0)
        locked.reserve([decision(1, "s", reserved=0.01)])
    grower, paused = threading.current_thread(), threading.Event()

    @sa.event.listens_for(store.engine, "after_cursor_execute")
    def slow(conn, cursor, statement, params, context, executemany) -> None:  # type: ignore[no-untyped-def]
        if (
            threading.current_thread() is grower
            and statement.lstrip().upper().startswith("SELECT")
            and "settled" in statement
        ):
            paused.set()
            time.sleep(0.5)  # the grow holds the session row and has read the decision unsettled

    out: dict[str, object] = {}

    def settle() -> None:
        paused.wait(10)
        out["settled"] = store.settle_decision(
            "d1", cost_usd=0.005, tokens_in=1, tokens_out=1, latency_ms=1.0, served_model="small"
        )

    settler = threading.Thread(target=settle)
    settler.start()
    out["grown"] = store.grow_reservation_within("d1", "s", 0.02, 0.9)
    settler.join(30)
    assert out == {"grown": 0.9, "settled": True}
    session = store.get_session("s")
    assert session is not None and session.spent_usd == pytest.approx(0.005) and session.reserved_usd == 0
    store.dispose()


def test_hash_mode_needs_a_key() -> None:
    with pytest.raises(ValueError, match="needs a key"):
        PromptPolicy("hash")


def test_purge_and_delete_session(url: str) -> None:
    store = Store(url)
    store.migrate()
    with store.lock_session("s1", None) as locked:
        locked.reserve([decision(1, "s1", reserved=0.5), decision(2, "s1", reserved=0.25)])
    store.record_decisions([decision(3)])
    store.record_outcomes([OutcomeRow(id="o1", decision_id="d1", prompt=PROMPT, model="small", score=1, cost_usd=0.4)])
    old = datetime.now(UTC) - timedelta(days=40)
    with store.engine.begin() as conn:
        conn.execute(decisions.update().where(decisions.c.id.in_(["d1", "d2"])).values(created_at=old))
        conn.execute(outcomes.update().values(created_at=old))
    assert store.purge(datetime.now(UTC) - timedelta(days=30)) == (2, 1)
    session = store.get_session("s1")
    assert session is not None and session.reserved_usd == pytest.approx(0.0)  # d2's reservation released
    assert session.spent_usd == pytest.approx(0.4)
    assert set(store.get_decisions(["d1", "d2", "d3"])) == {"d3"}

    with store.lock_session("s2", None) as locked:
        locked.reserve([decision(4, "s2"), decision(5, "s2")])
    store.record_outcomes([OutcomeRow(id="o2", decision_id="d4", prompt=PROMPT, model="small", score=1, cost_usd=0.1)])
    n_sessions, decision_ids, n_outcomes = store.delete_session("s2")
    assert (n_sessions, sorted(decision_ids), n_outcomes) == (1, ["d4", "d5"], 1)
    assert store.get_session("s2") is None and store.delete_session("s2") == (0, [], 0)
    assert set(store.get_decisions(["d3", "d4"])) == {"d3"}
    store.dispose()


def test_an_outcome_whose_session_was_deleted_since_it_was_resolved_is_not_written(url: str) -> None:
    """The service resolves an outcome's decision, then records it: a session deleted in between left the outcome
    behind with its prompt and a decision that no longer exists, until a second delete (review finding)."""
    store = Store(url)
    store.migrate()
    with store.lock_session("gone", None) as locked:
        locked.reserve([decision(7, "gone", reserved=0.1)])
    store.record_decisions([decision(8)])
    assert set(store.get_decisions(["d7"])) == {"d7"}  # resolved
    assert store.delete_session("gone") == (1, ["d7"], 0)
    late = OutcomeRow(id="late", decision_id="d7", prompt=PROMPT, model="small", score=1, cost_usd=0.1)
    kept = OutcomeRow(id="kept", decision_id="d8", prompt=PROMPT, model="small", score=1, cost_usd=0.1)
    with pytest.raises(DecisionGone, match="d7"):
        store.record_outcomes([kept, late])
    with store.engine.connect() as conn:  # nothing of the batch was written
        assert conn.execute(sa.select(sa.func.count()).select_from(outcomes)).scalar_one() == 0
    assert store.record_outcomes([kept]) == 1
    store.dispose()


def test_a_purge_waits_for_a_settlement_in_flight_and_releases_nothing_twice(pg_url: str) -> None:
    """A settlement holding its session's lock commits while a purge runs: the purge must sum the reservations
    after it (it summed them before, then released the settled decision's 0.3 again once the lock came free,
    showing the session 0.3 of cap room that d2, still in flight, holds)."""
    from infra.store import _LOCK_SESSION_OF, _settle

    store = Store(pg_url)
    store.migrate()
    with store.lock_session("s", None) as locked:
        locked.reserve([decision(1, "s", reserved=0.3), decision(2, "s", reserved=0.3)])
    with store.engine.begin() as conn:
        conn.execute(
            decisions.update().where(decisions.c.id == "d1").values(created_at=datetime(2020, 1, 1, tzinfo=UTC))
        )
    settling = store.engine.connect()
    tx = settling.begin()
    settling.execute(_LOCK_SESSION_OF, {"d_id": "d1"})  # the settlement of d1 has its session's lock ...
    assert _settle(settling.execute, "d1", 0.2)
    purged: list[tuple[int, int]] = []
    purge = threading.Thread(target=lambda: purged.append(store.purge(datetime(2021, 1, 1, tzinfo=UTC))))
    purge.start()
    time.sleep(0.5)  # ... while the purge starts, and waits for it
    tx.commit()
    settling.close()
    purge.join(30)
    assert purged == [(1, 0)]
    session = store.get_session("s")
    assert session is not None
    assert session.spent_usd == pytest.approx(0.2)
    assert session.reserved_usd == pytest.approx(0.3)  # d2's, still held
    store.dispose()


def _age(store: Store, ids: list[str], days: float) -> None:
    with store.engine.begin() as conn:
        old = datetime.now(UTC) - timedelta(days=days)
        conn.execute(decisions.update().where(decisions.c.id.in_(ids)).values(created_at=old))


def test_an_old_unsettled_hold_is_released_and_its_late_cost_still_booked(url: str) -> None:
    """A caller that routed and never settled held its session's room for good. `expire_holds` releases the holds
    of unsettled decisions older than its cutoff, and only those; the decision stays open, so a settlement that
    comes later books its cost as spent, without releasing the room a second time."""
    store = Store(url)
    store.migrate()
    with store.lock_session("s", None) as locked:
        locked.reserve([decision(1, "s", reserved=0.5), decision(2, "s", reserved=0.25), decision(3, "s", 0.125)])
    with store.lock_session("t", None) as locked:
        locked.reserve([decision(4, "t", reserved=0.0625)])
    store.record_outcomes([OutcomeRow(id="o2", decision_id="d2", prompt=PROMPT, model="small", score=1, cost_usd=0.2)])
    _age(store, ["d1", "d2", "d4"], days=1)  # d2 settled already, d3 recent
    assert store.expire_holds(datetime.now(UTC) - timedelta(hours=1)) == {
        "s": pytest.approx(0.5),
        "t": pytest.approx(0.0625),
    }
    s = store.get_session("s")
    assert s is not None and s.reserved_usd == pytest.approx(0.125) and s.spent_usd == pytest.approx(0.2)
    assert store.expire_holds(datetime.now(UTC) - timedelta(hours=1)) == {}  # nothing held twice
    d1 = store.get_decisions(["d1"])["d1"]
    assert not d1.settled and d1.reserved_usd == 0
    late: dict[str, Any] = {"tokens_in": None, "tokens_out": None, "latency_ms": None, "served_model": None}
    assert store.settle_decision("d1", cost_usd=0.3, **late)  # booked, as spent
    s = store.get_session("s")
    assert s is not None and s.spent_usd == pytest.approx(0.5) and s.reserved_usd == pytest.approx(0.125)
    assert not store.settle_decision("d1", cost_usd=0.3, **late)
    store.dispose()


def test_a_hold_release_lets_no_settlement_in_between_its_look_and_its_write(
    url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`release_hold` (POST /decisions/{id}/release) reads the hold, then takes it off the session. A late answer's
    settlement of the same decision committed in between released the hold a second time on SQLite, which has no
    row locks: the session lost another decision's room (review finding). The settlement must wait for the release,
    then book its cost, releasing nothing more."""
    store = Store(url)
    store.migrate()
    with store.lock_session("s", None) as locked:
        locked.reserve([decision(1, "s", reserved=0.3), decision(2, "s", reserved=0.3)])
    late: dict[str, Any] = {"tokens_in": None, "tokens_out": None, "latency_ms": None, "served_model": None}
    settled: list[bool] = []
    settlement = threading.Thread(target=lambda: settled.append(store.settle_decision("d1", cost_usd=0.2, **late)))
    take_off = infra.store._release_holds

    def settle_between(conn: sa.Connection, held: Any) -> None:
        settlement.start()
        settlement.join(1.0)
        assert settlement.is_alive(), "the settlement did not wait for the release"
        take_off(conn, held)

    monkeypatch.setattr(infra.store, "_release_holds", settle_between)
    assert store.release_hold("d1") == pytest.approx(0.3)
    settlement.join(30)
    s = store.get_session("s")
    assert settled == [True] and s is not None
    assert s.reserved_usd == pytest.approx(0.3) and s.spent_usd == pytest.approx(0.2)  # d2's hold kept
    store.dispose()


def test_a_hold_expiry_waits_for_a_settlement_in_flight_and_releases_nothing_twice(pg_url: str) -> None:
    """As the purge: a settlement holding its session's lock commits while the expiry runs; the expiry sums the
    holds after it, so the settled decision's hold is not taken off the session a second time."""
    from infra.store import _LOCK_SESSION_OF, _settle

    store = Store(pg_url)
    store.migrate()
    with store.lock_session("s", None) as locked:
        locked.reserve([decision(1, "s", reserved=0.3), decision(2, "s", reserved=0.3), decision(3, "s", 0.3)])
    _age(store, ["d1", "d2"], days=1)
    settling = store.engine.connect()
    tx = settling.begin()
    settling.execute(_LOCK_SESSION_OF, {"d_id": "d1"})
    assert _settle(settling.execute, "d1", 0.2)
    released: list[dict[str, float]] = []
    expiry = threading.Thread(
        target=lambda: released.append(store.expire_holds(datetime.now(UTC) - timedelta(hours=1)))
    )
    expiry.start()
    time.sleep(0.5)
    tx.commit()
    settling.close()
    expiry.join(30)
    assert released == [{"s": pytest.approx(0.3)}]  # d2's alone
    session = store.get_session("s")
    assert session is not None and session.spent_usd == pytest.approx(0.2)
    assert session.reserved_usd == pytest.approx(0.3)  # d3's, recent
    store.dispose()


def test_a_hold_the_proxy_grows_during_an_expiry_is_neither_zeroed_nor_lost(
    pg_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The proxy grows an old decision's hold (a fallback) on a session the expiry did not lock, and commits while
    the expiry runs: the expiry zeroed it by a second look at the table, so the session kept 0.5 reserved that no
    decision held any more, for good (review finding). It now zeroes exactly the rows it summed and locked."""
    import infra.store as store_module

    store = Store(pg_url)
    store.migrate()
    with store.lock_session("s", None) as locked:
        locked.reserve([decision(1, "s", reserved=0.3)])
    with store.lock_session("u", None) as locked:
        locked.reserve([decision(2, "u", reserved=0.0)])
    _age(store, ["d1", "d2"], days=1)
    release = store_module._release_holds

    def grow_then_release(conn: sa.Connection, held: Any) -> None:
        with store.engine.begin() as other:  # the proxy's growth, committed between the expiry's look and its writes
            other.execute(decisions.update().where(decisions.c.id == "d2").values(reserved_usd=0.5))
            other.execute(
                sa.update(store_module.sessions).where(store_module.sessions.c.id == "u").values(reserved_usd=0.5)
            )
        release(conn, held)

    monkeypatch.setattr(store_module, "_release_holds", grow_then_release)
    assert store.expire_holds(datetime.now(UTC) - timedelta(hours=1)) == {"s": pytest.approx(0.3)}
    assert store.get_decisions(["d2"])["d2"].reserved_usd == pytest.approx(0.5)  # still held, as the session says
    u = store.get_session("u")
    assert u is not None and u.reserved_usd == pytest.approx(0.5)
    monkeypatch.setattr(store_module, "_release_holds", release)
    assert store.expire_holds(datetime.now(UTC) - timedelta(hours=1)) == {"u": pytest.approx(0.5)}  # next round
    u = store.get_session("u")
    assert u is not None and u.reserved_usd == pytest.approx(0.0)
    store.dispose()


def alembic(store: Store, step: str, revision: str) -> None:
    """`alembic upgrade|downgrade <revision>` on the store's database."""
    run_alembic(store.engine, step, revision)


def test_migration_0003_round_trip(url: str) -> None:
    store = Store(url, PromptPolicy("none"))
    store.migrate()
    store.record_decisions([decision(1)])

    alembic(store, "downgrade", "0002")
    with store.engine.connect() as conn:
        assert conn.execute(sa.text("SELECT prompt FROM decisions")).scalar_one() == ""
    alembic(store, "upgrade", "head")
    assert store.get_decisions(["d1"])["d1"].propensities is None  # dropped by the downgrade
    store.dispose()


def assert_decision_column_round_trip(url: str, column: str, value: object, before: str) -> None:
    """A decision stored with `column` = `value`; downgraded to revision `before`, the column is gone; upgraded to
    head again, it is back and empty (the downgrade dropped the value)."""
    store = Store(url)
    store.migrate()
    store.record_decisions([dataclasses.replace(decision(1), **{column: value})])
    assert getattr(store.get_decisions(["d1"])["d1"], column) == value

    alembic(store, "downgrade", before)
    with store.engine.connect() as conn:
        assert column not in {c["name"] for c in sa.inspect(conn).get_columns("decisions")}
    alembic(store, "upgrade", "head")
    assert getattr(store.get_decisions(["d1"])["d1"], column) is None
    store.dispose()


def test_migration_0004_round_trip(url: str) -> None:
    assert_decision_column_round_trip(url, "task", "code-review", "0003")


def test_an_outcome_does_not_settle_a_decision_the_proxy_serves(url: str) -> None:
    store = Store(url)
    store.migrate()
    with store.lock_session("s", None) as locked:
        locked.reserve([dataclasses.replace(decision(1, "s", 0.01), served_by=SERVED_BY_PROXY), decision(2, "s", 0.01)])
    for i in (1, 2):  # the client's own cost, posted before the proxy settled d1
        store.record_outcomes(
            [OutcomeRow(id=f"o{i}", decision_id=f"d{i}", prompt=PROMPT, model="small", score=1, cost_usd=0.0)]
        )
    got = store.get_decisions(["d1", "d2"])
    assert got["d1"].served_by == SERVED_BY_PROXY and got["d2"].served_by is None
    assert not got["d1"].settled and got["d2"].settled  # the caller-served one is settled by its outcome
    session = store.get_session("s")
    assert session is not None and session.reserved_usd == pytest.approx(0.01) and session.spent_usd == 0
    store.settle_decision(
        "d1", cost_usd=0.004, tokens_in=40, tokens_out=8, latency_ms=12.0, served_model="small", reason=None
    )
    session = store.get_session("s")
    assert session is not None and session.reserved_usd == pytest.approx(0) and session.spent_usd == 0.004
    store.dispose()


def test_migration_0005_round_trip(url: str) -> None:
    assert_decision_column_round_trip(url, "served_by", SERVED_BY_PROXY, "0004")


def test_migration_0006_round_trip(url: str) -> None:
    assert_decision_column_round_trip(url, "input_tokens", 12_345, "0005")


def expiry_scan_plan(conn: sa.Connection) -> str:
    """The plan of the reservation expiry's scan, with the created_at index and sequential scans out of the way
    (on a small table either is cheaper): whether the partial index can serve the query, not whether it is picked.
    On PostgreSQL the plan is the generic one of the statement prepared, as psycopg prepares a query it has run five
    times: made for any value of its parameters, it can use the partial index only if the query's own terms imply
    the index's condition."""
    scan = sa.select(decisions.c.id).where(held_before(datetime.now(UTC)))
    conn.exec_driver_sql("DROP INDEX ix_decisions_created_at")
    compiled = scan.compile(conn)
    if conn.dialect.name == "sqlite":
        rows = conn.exec_driver_sql(f"EXPLAIN QUERY PLAN {compiled}", tuple(compiled.params.values())).all()
        return " ".join(str(r[-1]) for r in rows)
    conn.exec_driver_sql("SET LOCAL enable_seqscan = off")
    conn.exec_driver_sql("SET LOCAL plan_cache_mode = force_generic_plan")
    sql, args = str(compiled), []
    for n, (name, value) in enumerate(compiled.params.items(), start=1):
        sql = sql.replace(f"%({name})s", f"${n}")
        args.append(f"'{value.isoformat()}'" if isinstance(value, datetime) else repr(value))
    conn.exec_driver_sql(f"PREPARE expiry_scan AS {sql}")
    return " ".join(str(r[0]) for r in conn.exec_driver_sql(f"EXPLAIN EXECUTE expiry_scan({', '.join(args)})").all())


def test_migration_0007_the_expiry_finds_holds_through_a_partial_index(url: str) -> None:
    # Through ix_decisions_created_at the scan read every decision older than the expiry: ~0.2 s per 1M decisions on
    # SQLite, every few minutes (0.002 s with this index; measured by a scratch script on Zen 5: 10% unsettled, none
    # holding room).
    store = Store(url)
    store.migrate()
    with store.engine.connect() as conn, conn.begin() as tx:
        plan = expiry_scan_plan(conn)
        tx.rollback()
    assert "ix_decisions_holding" in plan, plan
    with store.lock_session("s", None) as locked:
        locked.reserve([decision(1, "s", 0.01), decision(2, "s", 0.0)])
    with store.engine.connect() as conn:  # only the decision still holding room is in the index
        held = conn.execute(sa.select(sa.func.count()).select_from(decisions).where(held_before(datetime.now(UTC))))
        assert held.scalar_one() == 1

    alembic(store, "downgrade", "0006")
    with store.engine.connect() as conn:
        assert "ix_decisions_holding" not in {i["name"] for i in sa.inspect(conn).get_indexes("decisions")}
    alembic(store, "upgrade", "head")
    with store.engine.connect() as conn:
        assert "ix_decisions_holding" in {i["name"] for i in sa.inspect(conn).get_indexes("decisions")}
    assert store.expire_holds(datetime.now(UTC)) == {"s": pytest.approx(0.01)}
    store.dispose()


def holding_index_valid(store: Store) -> bool | None:
    """Whether PostgreSQL holds ix_decisions_holding valid (None: no such index in the store's schema)."""
    with store.engine.connect() as conn:
        return conn.execute(
            sa.text(
                "SELECT i.indisvalid FROM pg_index i JOIN pg_class c ON c.oid = i.indexrelid JOIN pg_namespace n "
                "ON n.oid = c.relnamespace WHERE c.relname = 'ix_decisions_holding' AND n.nspname = current_schema()"
            )
        ).scalar()


def test_migration_0007_builds_again_an_index_a_killed_concurrent_build_left_invalid(pg_url: str) -> None:
    # 0007 builds its index CONCURRENTLY (a plain CREATE INDEX blocks every decision write while it reads the whole
    # table); such a build killed midway leaves an invalid index of that name, which IF NOT EXISTS alone would keep.
    store = Store(pg_url)
    store.migrate()
    with store.lock_session("s", None) as locked:
        locked.reserve([decision(1, "s", 0.01), decision(2, "s", 0.02)])
    alembic(store, "downgrade", "0006")
    # A concurrent build that fails (two rows share the session: not unique) leaves its index invalid.
    with (
        store.engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn,
        pytest.raises(sa.exc.IntegrityError),
    ):
        conn.exec_driver_sql("CREATE UNIQUE INDEX CONCURRENTLY ix_decisions_holding ON decisions (session_id)")
    assert holding_index_valid(store) is False
    store.migrate()
    assert holding_index_valid(store) is True
    with store.engine.connect() as conn, conn.begin() as tx:
        plan = expiry_scan_plan(conn)
        tx.rollback()
    assert "ix_decisions_holding" in plan, plan
    store.dispose()


def test_replicas_migrating_at_once_all_succeed(pg_url: str) -> None:
    # Replicas of the service start together: each migrates. Without one migration at a time, one of them saw the
    # other's half-made schema (a table there already, the version row not yet) and failed its first try.
    stores = [Store(pg_url) for _ in range(3)]
    barrier = threading.Barrier(len(stores))
    errors: list[BaseException] = []

    def migrate(store: Store) -> None:
        barrier.wait()
        try:
            store.migrate()
        except BaseException as exc:  # the assertion below names it
            errors.append(exc)

    threads = [threading.Thread(target=migrate, args=(s,), daemon=True) for s in stores]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    assert not any(t.is_alive() for t in threads), "a migration hung"
    assert not errors, errors
    assert holding_index_valid(stores[0]) is True
    with stores[0].engine.connect() as conn:
        assert conn.execute(sa.text("SELECT version_num FROM alembic_version")).scalar_one() == "0007"
    for s in stores:
        s.dispose()


def test_only_the_settlement_that_took_effect_says_so(url: str) -> None:
    # POST /decisions/{id}/usage answers `booked` from this: of concurrent posts all four said booked (1 run in 10).
    store = Store(url)
    store.migrate()
    with store.lock_session("s", None) as locked:
        locked.reserve([decision(1, "s", 0.01)])
    usage = {"tokens_in": 1, "tokens_out": 1, "latency_ms": 1.0, "served_model": "small"}
    assert store.settle_decision("d1", cost_usd=0.1, **usage) is True
    assert store.settle_decision("d1", cost_usd=0.2, **usage) is False
    session = store.get_session("s")
    assert session is not None and session.spent_usd == pytest.approx(0.1)
    store.dispose()


def test_a_new_sqlite_store_is_readable_by_its_owner_only(tmp_path: Path) -> None:
    """It holds prompts and key hashes; it was created 0644, world-readable (review finding)."""
    path = tmp_path / "private.db"
    store = Store(f"sqlite:///{path}")
    store.migrate()
    store.record_decisions([decision(1)])
    for name in ("private.db", "private.db-wal", "private.db-shm"):
        if (tmp_path / name).exists():
            assert (tmp_path / name).stat().st_mode & 0o077 == 0, name
    store.dispose()


def test_a_schema_whose_name_needs_quoting_migrates(pg_url: str) -> None:
    # 0007 looked its index up by current_schema()::regnamespace, which reads the name as an identifier (lowercased):
    # a schema "Tw_…" failed the migration on every try (review finding).
    schema = f"Tw_{uuid.uuid4().hex[:8]}"
    admin = sa.create_engine(pg_url)
    with admin.begin() as conn:
        conn.execute(sa.text(f'CREATE SCHEMA "{schema}"'))
    try:
        store = Store(pg_url.rsplit("?", 1)[0] + f"?options=-csearch_path%3D%22{schema}%22")
        store.migrate()
        assert holding_index_valid(store) is True
        store.dispose()
    finally:
        with admin.begin() as conn:
            conn.execute(sa.text(f'DROP SCHEMA "{schema}" CASCADE'))
        admin.dispose()


def test_0007_waits_for_an_old_snapshot_past_the_stores_lock_timeout(
    pg_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A concurrent index build waits for every older snapshot in the database (a backup, a long report): under the
    # store's lock_timeout it was cancelled, leaving an invalid index and a store never ready (review finding).
    monkeypatch.setattr(infra.store, "LOCK_WAIT_S", 0.5)
    store = Store(pg_url)
    alembic(store, "upgrade", "0006")
    store.record_decisions([decision(1)])  # a store with decisions: built concurrently (a new one is not)
    other = sa.create_engine(pg_url)
    snapshot_held = threading.Event()

    def backup() -> None:  # a repeatable-read transaction reading no tierwise table, open for 3 s
        with other.connect().execution_options(isolation_level="REPEATABLE READ") as conn, conn.begin():
            conn.execute(sa.text("SELECT count(*) FROM pg_class"))
            snapshot_held.set()
            time.sleep(3)

    t = threading.Thread(target=backup, daemon=True)
    t.start()
    assert snapshot_held.wait(10)
    store.migrate()
    t.join(10)
    assert holding_index_valid(store) is True
    with store.engine.connect() as conn:  # the session's own lock_timeout is back
        assert conn.execute(sa.text("SHOW lock_timeout")).scalar_one() == "500ms"
    store.dispose()
    other.dispose()


def test_a_new_store_migrates_without_waiting_for_other_transactions(pg_url: str) -> None:
    # A concurrent build waits for every older snapshot in the database; a new store's empty table needs none.
    other = sa.create_engine(pg_url)
    with other.connect().execution_options(isolation_level="REPEATABLE READ") as conn, conn.begin():
        conn.execute(sa.text("SELECT count(*) FROM pg_class"))  # a snapshot older than the migration, held
        started = time.monotonic()
        store = Store(pg_url)
        done = threading.Event()
        t = threading.Thread(target=lambda: (store.migrate(), done.set()), daemon=True)
        t.start()
        finished = done.wait(10)
        elapsed = time.monotonic() - started
    t.join(30)
    assert finished and elapsed < 10, f"the migration waited for an unrelated transaction ({elapsed:.1f} s)"
    assert holding_index_valid(store) is True
    store.dispose()
    other.dispose()


def test_0007_on_an_empty_store_keeps_an_index_a_killed_run_finished(pg_url: str) -> None:
    # A concurrent build that finished before its version was stamped (the process killed) leaves a valid index; on a
    # store emptied since (a retention purge) the plain build failed every retry: "already exists" (review finding).
    store = Store(pg_url)
    alembic(store, "upgrade", "0006")
    with store.engine.begin() as conn:
        conn.exec_driver_sql("CREATE INDEX ix_decisions_holding ON decisions (created_at)")
    store.migrate()
    assert holding_index_valid(store) is True
    store.dispose()


def test_a_migration_in_another_schema_does_not_wait(pg_url: str) -> None:
    # The migration lock was one key for the whole database: a deployment in another schema waited behind it.
    store = Store(pg_url)
    with store.engine.connect() as conn:
        conn.execute(sa.text("CREATE SCHEMA IF NOT EXISTS tw_other_lock_holder"))
        conn.execute(sa.text("SET search_path = tw_other_lock_holder"))
        conn.execute(sa.select(sa.func.pg_advisory_lock(*infra.store._MIGRATION_LOCK_KEY)))
        conn.commit()
        try:
            done = threading.Event()
            t = threading.Thread(target=lambda: (store.migrate(), done.set()), daemon=True)
            t.start()
            assert done.wait(10), "the migration waited for another schema's lock"
        finally:
            conn.execute(sa.select(sa.func.pg_advisory_unlock(*infra.store._MIGRATION_LOCK_KEY)))
            conn.execute(sa.text("SET search_path = public"))
            conn.execute(sa.text("DROP SCHEMA tw_other_lock_holder"))
            conn.commit()
    store.dispose()
