"""POST /outcomes never strands or drops an acknowledged outcome (SQLite and PostgreSQL).

Client mistakes are 4xx before anything is written; only an unreachable store spools; a spooled record the
store refuses is quarantined (counted, logged, listed by GET /admin/spool) and never blocks the rest;
concurrent retries are one success, another outcome under a stored id is a 409 (or, spooled, quarantined); huge
costs cannot break a session; the spool drains on a timer.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import sqlalchemy as sa
from fastapi.testclient import TestClient

from infra.store import SPENT_CEILING_USD, OutcomeRow, Store, outcomes
from serving.security import hash_key
from serving.spool import Spool
from tests.integration.conftest import ADMIN_KEY, CLIENT_KEY, OTHER_KEY, bearer, metric
from tests.integration.pg_server import PgServer, pg_server  # noqa: F401 - the fixture

C, OTHER, A = bearer(CLIENT_KEY), bearer(OTHER_KEY), bearer(ADMIN_KEY)
HARD = "hard question 1: omega sigma alpha beta gamma"
EASY = "easy question 2: alpha beta gamma delta omega"
SECRET = "SECRET-PROMPT-TEXT"


def stored_scores(store: Store) -> dict[str, float]:
    with store.engine.connect() as conn:
        return dict(conn.execute(sa.select(outcomes.c.id, outcomes.c.score)).tuples().all())


def stored_ids(store: Store) -> set[str]:
    with store.engine.connect() as conn:
        return set(conn.execute(sa.select(outcomes.c.id)).scalars())


def refuse_prompts_starting_with_poison(store: Store) -> None:
    """A trigger that makes the store itself refuse some records, the way PostgreSQL refuses NUL or overflow."""
    with store.engine.begin() as conn:
        if conn.dialect.name == "sqlite":
            conn.execute(
                sa.text(
                    "CREATE TRIGGER poison BEFORE INSERT ON outcomes WHEN NEW.prompt LIKE 'poison%' "
                    "BEGIN SELECT RAISE(ABORT, 'refused by the test trigger'); END"
                )
            )
        else:
            conn.execute(
                sa.text(
                    "CREATE FUNCTION poison() RETURNS trigger AS $$ BEGIN IF NEW.prompt LIKE 'poison%' THEN "
                    "RAISE EXCEPTION 'refused by the test trigger' USING ERRCODE = 'data_exception'; END IF; "
                    "RETURN NEW; END $$ LANGUAGE plpgsql"
                )
            )
            conn.execute(
                sa.text("CREATE TRIGGER poison BEFORE INSERT ON outcomes FOR EACH ROW EXECUTE FUNCTION poison()")
            )


@pytest.fixture(params=["sqlite", "postgresql"])
def db_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """A store that stays up: a SQLite file, or a fresh schema in the shared PostgreSQL."""
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'serve.db'}"
    return str(request.getfixturevalue("pg_url"))


class Outage:
    """Takes the store away and brings it back: a SQLite engine pointed at nowhere, or a stopped server."""

    def __init__(self, tmp_path: Path, server: PgServer | None):
        self.server = server
        self.broken = sa.create_engine(f"sqlite:///{tmp_path}/missing/dir/db.sqlite")
        self.url = f"sqlite:///{tmp_path / 'serve.db'}"
        if server is not None:
            server.start()
            self.url = server.new_database()
        self.good: dict[int, sa.Engine] = {}

    def down(self, store: Store) -> None:
        if self.server is not None:
            self.server.stop()
        else:
            self.good[id(store)] = store.engine
            store.engine = self.broken

    def up(self, store: Store) -> None:
        if self.server is not None:
            self.server.start()
        else:
            store.engine = self.good.pop(id(store))


@pytest.fixture(params=["sqlite", "postgresql"])
def outage(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Outage]:
    server = request.getfixturevalue("pg_server") if request.param == "postgresql" else None
    yield Outage(tmp_path, server)


def test_client_mistakes_are_4xx_and_nothing_is_spooled(client_factory: Callable[..., TestClient], db_url: str) -> None:
    client = client_factory(database_url=db_url, max_prompt_chars=1000)
    base = {"prompt": EASY, "model": "small", "score": 1, "cost_usd": 0}
    bodies = [
        ({"outcome_id": "p", "prompt": "a\u0000b", "model": "small", "score": 1, "cost_usd": 0}, 422),  # the report
        ({**base, "model": "sm\u0000all"}, 422),
        ({"decision_id": "d\u0000", "score": 1, "cost_usd": 0}, 422),
        ({**base, "cost_usd": 1.7e308}, 422),
        ({**base, "cost_usd": 2e6}, 422),
        ({**base, "latency_ms": 1e300}, 422),
        ({**base, "tokens_in": 2**40}, 422),
        ({**base, "score": 1.5}, 422),
        ({**base, "prompt": "x" * 1001}, 413),
    ]
    for body, status in bodies:
        r = client.post("/outcomes", json=body, headers=C)
        assert r.status_code == status, (body, r.text)
    surrogate = '{"prompt": "a\\ud800b", "model": "small", "score": 1, "cost_usd": 0}'
    r = client.post("/outcomes", content=surrogate, headers={**C, "Content-Type": "application/json"})
    assert r.status_code == 422, r.text
    assert client.post("/outcomes", json={**base, "cost_usd": 1e6, "latency_ms": 5.0}, headers=C).status_code == 201
    store: Store = client.app.state.store
    assert len(stored_ids(store)) == 1
    assert client.app.state.recorder.spool.pending() == 0
    assert metric(client, "tierwise_outcome_store_errors_total") == 0


def test_what_the_store_refuses_is_a_422_not_a_spool(client_factory: Callable[..., TestClient], db_url: str) -> None:
    client = client_factory(database_url=db_url)
    store: Store = client.app.state.store
    refuse_prompts_starting_with_poison(store)
    body = {"outcome_id": "bad", "prompt": "poison " + SECRET, "model": "small", "score": 1, "cost_usd": 0}
    r = client.post("/outcomes", json=body, headers=C)
    assert r.status_code == 422 and "refused" in r.text and SECRET not in r.text
    assert client.app.state.recorder.spool.pending() == 0 and stored_ids(store) == set()
    ok = {**body, "outcome_id": "good", "prompt": EASY}
    assert client.post("/outcomes", json=ok, headers=C).status_code == 201


def test_a_poisoned_spooled_outcome_never_blocks_the_rest(
    client_factory: Callable[..., TestClient], outage: Outage, caplog: pytest.LogCaptureFixture
) -> None:
    client = client_factory(database_url=outage.url)
    store: Store = client.app.state.store
    spool: Spool = client.app.state.recorder.spool
    refuse_prompts_starting_with_poison(store)
    client.put("/sessions/s", json={"cap_usd": 1.0}, headers=C)
    d = client.post("/route", json={"prompt": HARD, "session_id": "s"}, headers=C).json()
    outage.down(store)
    sent = [
        {"outcome_id": "good-1", "decision_id": d["decision_id"], "score": 1, "cost_usd": 0.002},
        {"outcome_id": "poison-1", "prompt": "poison " + SECRET, "model": "small", "score": 1, "cost_usd": 0},
        {"outcome_id": "good-2", "prompt": EASY, "model": "small", "score": 1, "cost_usd": 0},
    ]
    for body in sent:
        assert client.post("/outcomes", json=body, headers=C).status_code == 202
    # What the previous version spooled without checking: a NUL that PostgreSQL refuses for ever.
    old = {**sent[2], "outcome_id": "old-nul", "prompt": "a\u0000b", "session_id": None, "decision_id": None}
    spool.append([{**old, "tokens_in": None, "tokens_out": None, "latency_ms": None, "owner": None, "admin": True}])
    outage.up(store)
    caplog.clear()
    with caplog.at_level(logging.INFO):
        body = {"outcome_id": "up-1", "prompt": HARD, "model": "large", "score": 0, "cost_usd": 0}
        assert client.post("/outcomes", json=body, headers=C).status_code == 201
    assert stored_ids(store) == {"good-1", "good-2", "up-1"}
    session = client.get("/sessions/s", headers=C).json()
    assert session["spent_usd"] == pytest.approx(0.002) and session["reserved_usd"] == pytest.approx(0)
    status = client.get("/admin/spool", headers=A).json()
    assert status["pending"] == 0 and status["rejected"] == 2
    reasons = {e["outcome_id"]: e["reason"] for e in status["last_rejected"]}
    assert "refused by the test trigger" in reasons["poison-1"] and "NUL" in reasons["old-nul"]
    assert metric(client, "tierwise_outcomes_rejected_total") == 2
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert sum("poison-1" in w or "old-nul" in w for w in warnings) == 2
    assert not any(SECRET in r.getMessage() for r in caplog.records)
    assert SECRET not in json.dumps(status)
    assert SECRET in spool.rejected_path.read_text()  # the refused record is kept for an operator


def test_a_torn_spool_line_never_swallows_the_next_outcome(
    client_factory: Callable[..., TestClient], tmp_path: Path
) -> None:
    client = client_factory()
    store: Store = client.app.state.store
    outage = Outage(tmp_path, None)
    outage.down(store)

    def post(oid: str) -> int:
        body = {"outcome_id": oid, "prompt": EASY, "model": "small", "score": 1, "cost_usd": 0}
        return client.post("/outcomes", json=body, headers=C).status_code

    assert post("X1") == 202
    with open(tmp_path / "spool.jsonl", "a") as fh:  # a crash or a full disk in the middle of an append
        fh.write('{"outcome_id": "X0", "prompt": "half')
    assert post("X2") == 202 and post("X3") == 202
    outage.up(store)
    assert post("X4") == 201
    assert stored_ids(store) == {"X1", "X2", "X3", "X4"}
    assert client.app.state.recorder.spool.pending() == 0


def test_concurrent_retries_of_one_outcome_are_one_success(
    client_factory: Callable[..., TestClient], db_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    client = client_factory(database_url=db_url)
    client.put("/sessions/s", json={"cap_usd": 1.0}, headers=C)
    decisions = [client.post("/route", json={"prompt": HARD, "session_id": "s"}, headers=C).json() for _ in range(3)]
    n = 12
    go = threading.Barrier(n)

    def retry(i: int) -> tuple[int, int]:
        d = decisions[i % len(decisions)]
        body = {"outcome_id": f"same-{i % len(decisions)}", "decision_id": d["decision_id"], "score": 1}
        go.wait()
        r = client.post("/outcomes", json={**body, "cost_usd": 0.002}, headers=C)
        return r.status_code, r.json()["recorded"]

    with caplog.at_level(logging.INFO), ThreadPoolExecutor(max_workers=n) as pool:
        answers = list(pool.map(retry, range(n)))
    assert {status for status, _ in answers} == {201}
    assert sum(recorded for _, recorded in answers) == len(decisions)
    assert client.get("/sessions/s", headers=C).json()["spent_usd"] == pytest.approx(0.002 * len(decisions))
    assert client.app.state.recorder.spool.pending() == 0
    assert metric(client, "tierwise_outcome_store_errors_total") == 0
    assert [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR] == []


def test_another_outcome_under_a_stored_id_is_refused_and_a_retry_is_not(
    client_factory: Callable[..., TestClient], db_url: str
) -> None:
    client = client_factory(database_url=db_url)
    store: Store = client.app.state.store
    client.put("/sessions/s", json={"cap_usd": 1.0}, headers=C)
    d = client.post("/route", json={"prompt": HARD, "session_id": "s"}, headers=C).json()
    first = {"outcome_id": "o-1", "decision_id": d["decision_id"], "score": 0.25, "cost_usd": 0.002}
    assert client.post("/outcomes", json=first, headers=C).json()["recorded"] == 1
    assert client.post("/outcomes", json=first, headers=C).json()["recorded"] == 0  # a retry
    for changed, field in [({"score": 1}, "score"), ({"cost_usd": 0.003}, "cost_usd")]:
        r = client.post("/outcomes", json={**first, **changed}, headers=C)
        assert r.status_code == 409, r.text
        assert "o-1" in r.json()["detail"] and field in r.json()["detail"]
    other = {"outcome_id": "o-1", "prompt": EASY, "model": "small", "score": 0.25, "cost_usd": 0.002}
    r = client.post("/outcomes", json=other, headers=C)
    assert r.status_code == 409 and "decision_id" in r.json()["detail"]
    # A list holding a conflict writes none of it, the new outcome beside it included.
    fresh = {"outcome_id": "o-2", "prompt": EASY, "model": "small", "score": 1, "cost_usd": 0}
    assert client.post("/outcomes", json=[fresh, {**first, "score": 1}], headers=C).status_code == 409
    assert stored_scores(store) == {"o-1": 0.25}
    assert client.get("/sessions/s", headers=C).json()["spent_usd"] == pytest.approx(0.002)
    # Another client's id is taken, and what its outcome holds is not said.
    r = client.post("/outcomes", json={**fresh, "outcome_id": "o-1"}, headers=OTHER)
    assert r.status_code == 409 and "taken by another client's outcome" in r.json()["detail"]
    assert not any(name in r.json()["detail"] for name in ("score", "model", "decision_id"))
    # A decision's own outcome id is reserved for that decision's outcome.
    for reserved in (f"decision:{d['decision_id']}", "decision:"):  # the bare prefix was accepted
        r = client.post("/outcomes", json={**fresh, "outcome_id": reserved}, headers=C)
        assert r.status_code == 422 and "is reserved for the outcome of decision" in r.text
    assert stored_scores(store) == {"o-1": 0.25}


def test_a_retry_after_a_restart_with_other_prompt_storage_is_still_a_retry(
    client_factory: Callable[..., TestClient], db_url: str
) -> None:
    """A decision's outcome is one outcome whatever prompt id the storage setting gives it."""
    before = client_factory(database_url=db_url)
    d = before.post("/route", json={"prompt": HARD}, headers=C).json()
    body = {"decision_id": d["decision_id"], "score": 1, "cost_usd": 0.001}
    assert before.post("/outcomes", json=body, headers=C).json()["recorded"] == 1
    after = client_factory(database_url=db_url, prompt_storage="hash", prompt_hash_key="k" * 32)
    r = after.post("/outcomes", json=body, headers=C)
    assert r.status_code == 201 and r.json()["recorded"] == 0
    assert after.post("/outcomes", json={**body, "score": 0}, headers=C).status_code == 409


def test_a_spooled_outcome_that_conflicts_with_a_stored_one_is_set_aside(
    client_factory: Callable[..., TestClient], outage: Outage
) -> None:
    client = client_factory(database_url=outage.url)
    store: Store = client.app.state.store
    stored = {"outcome_id": "twice", "prompt": EASY, "model": "small", "score": 1, "cost_usd": 0}
    retried = {**stored, "outcome_id": "retried"}
    for body in (stored, retried):
        assert client.post("/outcomes", json=body, headers=C).status_code == 201
    outage.down(store)
    for body in ({**stored, "score": 0}, retried, {**stored, "outcome_id": "new"}):
        assert client.post("/outcomes", json=body, headers=C).status_code == 202
    outage.up(store)
    client.app.state.recorder.replay(client.app.state.runtime.tiers)
    assert stored_ids(store) == {"twice", "retried", "new"}
    assert stored_scores(store)["twice"] == 1
    status = client.get("/admin/spool", headers=A).json()
    assert status["pending"] == 0 and status["rejected"] == 1
    [rejected] = status["last_rejected"]
    assert rejected["outcome_id"] == "twice" and "different score" in rejected["reason"]


def test_store_errors_never_log_prompts_or_key_hashes(
    client_factory: Callable[..., TestClient], db_url: str, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    client = client_factory(database_url=db_url)
    store: Store = client.app.state.store
    row = {"id": "dup", "prompt": SECRET, "prompt_id": "p", "model": "small", "score": 1.0, "cost_usd": 0.0}
    row["owner"] = hash_key(CLIENT_KEY)
    with store.engine.begin() as conn:
        conn.execute(outcomes.insert().values(**row, created_at=sa.func.now()))
    with pytest.raises(sa.exc.IntegrityError) as err, store.engine.begin() as conn:
        conn.execute(outcomes.insert().values(**row, created_at=sa.func.now()))
    assert SECRET not in str(err.value) and hash_key(CLIENT_KEY) not in str(err.value)
    outage = Outage(tmp_path, None)
    outage.down(store)  # SQLite's way down: an engine on a missing file, for either backend's store
    with caplog.at_level(logging.INFO):
        body = {"prompt": SECRET, "model": "small", "score": 1, "cost_usd": 0}
        assert client.post("/outcomes", json=body, headers=C).status_code == 202
    [line] = [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR]
    assert "unreachable" in line and "OperationalError" in line
    messages = " ".join(r.getMessage() for r in caplog.records)
    assert SECRET not in messages and hash_key(CLIENT_KEY) not in messages


def test_huge_costs_cannot_break_a_session(client_factory: Callable[..., TestClient], db_url: str) -> None:
    client = client_factory(database_url=db_url)
    store: Store = client.app.state.store
    d1, d2 = (client.post("/route", json={"prompt": HARD, "session_id": "s"}, headers=C).json() for _ in range(2))
    body = {"decision_id": d1["decision_id"], "score": 1, "cost_usd": 1.7e308}
    assert client.post("/outcomes", json=body, headers=C).status_code == 422
    # Below the API's bound, the settle arithmetic itself saturates instead of overflowing.
    for i, d in enumerate((d1, d2)):
        row = OutcomeRow(
            id=f"o{i}", prompt=HARD, model=d["model"], score=1, cost_usd=1.7e308, decision_id=d["decision_id"]
        )
        assert store.record_outcomes([row]) == 1
    session = client.get("/sessions/s", headers=C)
    assert session.status_code == 200 and session.json()["spent_usd"] == SPENT_CEILING_USD
    assert client.post("/route", json={"prompt": HARD, "session_id": "s"}, headers=C).status_code == 200


def test_while_down_what_can_be_checked_is_and_rejections_are_visible(
    client_factory: Callable[..., TestClient], tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    client = client_factory()
    store: Store = client.app.state.store
    d = client.post("/route", json={"prompt": HARD}, headers=C).json()
    outage = Outage(tmp_path, None)
    outage.down(store)
    unknown_model = {"prompt": EASY, "model": "gpt-99", "score": 1, "cost_usd": 0}
    assert client.post("/outcomes", json=unknown_model, headers=C).status_code == 422
    assert client.app.state.recorder.spool.pending() == 0
    theirs = {"outcome_id": "theirs", "decision_id": d["decision_id"], "score": 1, "cost_usd": 0}
    assert client.post("/outcomes", json=theirs, headers=OTHER).status_code == 202
    unknown = {"outcome_id": "unknown", "decision_id": "feedbeef", "score": 1, "cost_usd": 0}
    assert client.post("/outcomes", json=unknown, headers=C).status_code == 202
    outage.up(store)
    with caplog.at_level(logging.INFO):
        assert client.post("/outcomes", json={**unknown_model, "model": "small"}, headers=C).status_code == 201
    assert client.get("/admin/spool", headers=C).status_code == 403
    status = client.get("/admin/spool", headers=A).json()
    assert status["pending"] == 0 and status["rejected"] == 2
    reasons = {e["outcome_id"]: e["reason"] for e in status["last_rejected"]}
    assert "another client" in reasons["theirs"] and "unknown decision_id" in reasons["unknown"]
    assert HARD not in json.dumps(status)
    assert metric(client, "tierwise_outcomes_rejected_total") == 2
    warned = [r for r in caplog.records if r.levelno == logging.WARNING and "rejected" in r.getMessage()]
    assert len(warned) == 2 and not any(HARD in r.getMessage() for r in warned)
    assert "theirs" not in stored_ids(store)


def spool_one_while_down(client: TestClient, tmp_path: Path, outcome_id: str) -> None:
    """Take the app's SQLite store down, post one outcome (spooled: 202), and bring the store back."""
    store: Store = client.app.state.store
    outage = Outage(tmp_path, None)
    outage.down(store)
    body = {"outcome_id": outcome_id, "prompt": EASY, "model": "small", "score": 1, "cost_usd": 0}
    assert client.post("/outcomes", json=body, headers=C).status_code == 202
    outage.up(store)


def test_the_spool_drains_on_a_timer_without_traffic(client_factory: Callable[..., TestClient], tmp_path: Path) -> None:
    client = client_factory(spool_replay_interval_s=0.05)
    store: Store = client.app.state.store
    spool_one_while_down(client, tmp_path, "timer-1")
    deadline = time.monotonic() + 30  # a generous bound on a loaded machine, not a timing assertion
    while client.app.state.recorder.spool.has_pending() and time.monotonic() < deadline:
        time.sleep(0.05)
    assert stored_ids(store) == {"timer-1"}
    assert metric(client, "tierwise_outcomes_replayed_total") == 1


def test_startup_replay_streams_the_spool_in_bounded_batches(
    client_factory: Callable[..., TestClient], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    n = 1201
    record = {"prompt": EASY, "model": "small", "score": 1.0, "cost_usd": 0.0, "decision_id": None}
    record |= {"session_id": None, "tokens_in": None, "tokens_out": None, "latency_ms": None}
    Spool(tmp_path / "spool.jsonl").append(
        [{"outcome_id": f"boot-{i}", **record, "owner": None, "admin": True} for i in range(n)]
    )
    sizes: list[int] = []
    write = Store.record_outcomes

    def spy(self: Store, rows: list[OutcomeRow]) -> int:
        sizes.append(len(rows))
        return write(self, rows)

    monkeypatch.setattr(Store, "record_outcomes", spy)
    client = client_factory()
    assert len(stored_ids(client.app.state.store)) == n
    assert sum(sizes) == n and max(sizes) <= 500


@pytest.mark.parametrize(
    ("error", "status"),
    [
        (sa.exc.OperationalError("INSERT", {}, Exception("connection refused")), 202),
        (sa.exc.InterfaceError("INSERT", {}, Exception("connection closed")), 202),
        (sa.exc.DBAPIError("INSERT", {}, Exception("server closed"), connection_invalidated=True), 202),
        (sa.exc.TimeoutError("QueuePool limit reached"), 202),
        (sa.exc.DataError("INSERT", {}, Exception("value out of range")), 422),
        (sa.exc.IntegrityError("INSERT", {}, Exception("check constraint")), 422),
        (sa.exc.ProgrammingError("INSERT", {}, Exception("relation does not exist")), 503),
    ],
)
def test_only_an_unreachable_store_spools(
    client: TestClient, monkeypatch: pytest.MonkeyPatch, error: Exception, status: int
) -> None:
    def fail(_: list[OutcomeRow]) -> int:
        raise error

    monkeypatch.setattr(client.app.state.store, "record_outcomes", fail)
    body = {"prompt": EASY, "model": "small", "score": 1, "cost_usd": 0}
    assert client.post("/outcomes", json=body, headers=C).status_code == status
    assert client.app.state.recorder.spool.pending() == (1 if status == 202 else 0)


def test_an_outage_during_replay_quarantines_nothing_twice(client: TestClient, tmp_path: Path) -> None:
    store: Store = client.app.state.store
    recorder = client.app.state.recorder
    old = {"outcome_id": "old-nul", "prompt": "a\u0000b", "model": "small", "score": 1.0, "cost_usd": 0.0}
    old |= {"decision_id": None, "session_id": None, "tokens_in": None, "tokens_out": None, "latency_ms": None}
    recorder.spool.append([{**old, "owner": None, "admin": True}])
    outage = Outage(tmp_path, None)
    outage.down(store)
    for _ in range(3):
        assert recorder.replay(client.app.state.runtime.tiers) == 0
    assert client.get("/admin/spool", headers=A).json()["rejected"] == 0
    outage.up(store)
    assert recorder.replay(client.app.state.runtime.tiers) == 1
    assert client.get("/admin/spool", headers=A).json() | {"last_rejected": []} == {
        "pending": 0,
        "rejected": 1,
        "last_rejected": [],
    }
    assert metric(client, "tierwise_outcomes_rejected_total") == 1


def test_a_failing_inline_replay_never_turns_a_stored_outcome_into_an_error(
    client_factory: Callable[..., TestClient], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The outcome is committed before the inline replay runs: whatever the replay does, the answer is 201."""
    client = client_factory(spool_replay_interval_s=0)
    store: Store = client.app.state.store
    spool_one_while_down(client, tmp_path, "earlier")
    recorder = client.app.state.recorder

    def broken(*args: object, **kwargs: object) -> int:
        raise RuntimeError("replay bug")

    monkeypatch.setattr(recorder, "replay", broken)
    body = {"outcome_id": "now", "prompt": HARD, "model": "large", "score": 1, "cost_usd": 0}
    r = client.post("/outcomes", json=body, headers=C)
    assert r.status_code == 201, r.text
    assert "now" in stored_ids(store) and recorder.spool.has_pending()
