"""The decision store: decisions, outcomes and sessions in SQL (SQLite by default, PostgreSQL by URL).

Schema changes go through the alembic scripts in infra/migrations; `Store.migrate()` applies them.
Reservations are atomic: the session row is locked (a write to it is the first statement of the
transaction, which takes SQLite's write lock and PostgreSQL's row lock) before it is read.
"""

from __future__ import annotations

import errno
import logging
import math
import os
import sqlite3
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field
from datetime import UTC, datetime
from functools import partial
from pathlib import Path
from typing import Any, NamedTuple, TypeVar, cast

import sqlalchemy as sa
from sqlalchemy.engine import Connection, Engine
from sqlalchemy.sql.compiler import SQLCompiler

from infra.prompt_policy import NOT_STORED, PromptPolicy, prompt_id_of
from router.schema import Outcome, OutcomeBase

logger = logging.getLogger(__name__)
T = TypeVar("T")
Execute = Callable[..., Any]
"""Runs a statement with its bind values in the current transaction: SQLAlchemy's `Connection.execute`, or a held
DBAPI connection's (`_HeldConnection.transaction`); either result has `rowcount` and `fetchone()`."""

MIGRATIONS = Path(__file__).parent / "migrations"
SPENT_CEILING_USD = 1e15

metadata = sa.MetaData()


class UtcDateTime(sa.TypeDecorator[datetime]):
    """A timezone-aware UTC datetime on every backend: SQLite keeps no zone, so its values are read back as UTC."""

    impl = sa.DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: sa.Dialect) -> datetime | None:  # noqa: ARG002
        return value.astimezone(UTC) if value is not None and value.tzinfo is not None else value

    def process_result_value(self, value: datetime | None, dialect: sa.Dialect) -> datetime | None:  # noqa: ARG002
        if value is None:
            return None
        return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


sessions = sa.Table(
    "sessions",
    metadata,
    sa.Column("id", sa.String(128), primary_key=True),
    sa.Column("owner", sa.String(64), nullable=True),
    sa.Column("cap_usd", sa.Float, nullable=True),
    sa.Column("spent_usd", sa.Float, nullable=False, server_default="0"),
    sa.Column("reserved_usd", sa.Float, nullable=False, server_default="0"),
    sa.Column("status", sa.String(16), nullable=False, server_default="open"),
    sa.Column("created_at", UtcDateTime, nullable=False),
    sa.Column("updated_at", UtcDateTime, nullable=False),
)

decisions = sa.Table(
    "decisions",
    metadata,
    sa.Column("id", sa.String(32), primary_key=True),
    sa.Column("created_at", UtcDateTime, nullable=False),
    sa.Column("session_id", sa.String(128), nullable=True, index=True),
    sa.Column("owner", sa.String(64), nullable=True),
    sa.Column("prompt", sa.Text, nullable=True),  # NULL when prompt storage is hash or none (migration 0003)
    sa.Column("tier", sa.String(128), nullable=False),
    sa.Column("model", sa.String(256), nullable=False),
    sa.Column("expected_cost_usd", sa.Float, nullable=False),
    sa.Column("reserved_usd", sa.Float, nullable=False),
    sa.Column("router_version", sa.String(256), nullable=False),
    sa.Column("reason", sa.Text, nullable=False),
    sa.Column("metadata", sa.JSON, nullable=True),
    sa.Column("settled", sa.Boolean, nullable=False, server_default=sa.false()),
    # Evidence (migration 0002): see infra/migrations/versions/0002_decision_evidence.py.
    sa.Column("propensity", sa.Float, nullable=True),
    sa.Column("explored", sa.Boolean, nullable=False, server_default=sa.false()),
    sa.Column("predicted_quality", sa.JSON, nullable=True),
    sa.Column("novelty", sa.Float, nullable=True),
    sa.Column("cost_usd", sa.Float, nullable=True),
    sa.Column("tokens_in", sa.Integer, nullable=True),
    sa.Column("tokens_out", sa.Integer, nullable=True),
    sa.Column("latency_ms", sa.Float, nullable=True),
    sa.Column("served_model", sa.String(256), nullable=True),
    sa.Column("prompt_hash", sa.String(64), nullable=True),
    # Migration 0003: the logging distribution and per-tier expected costs, for off-policy evaluation.
    sa.Column("propensities", sa.JSON, nullable=True),
    sa.Column("expected_costs", sa.JSON, nullable=True),
    # Migration 0004: the request's task hint, the category `export_outcomes` gives its outcomes.
    sa.Column("task", sa.String(128), nullable=True),
    # Migration 0005: who serves the decision; "proxy" when the OpenAI-compatible door calls the model and settles it.
    sa.Column("served_by", sa.String(16), nullable=True),
    # Migration 0006: the input tokens the caller counted (/route's input_tokens; the door's), NULL if estimated.
    sa.Column("input_tokens", sa.Integer, nullable=True),
    sa.Index("ix_decisions_created_at", "created_at"),
)

# A decision whose hold is still on its session's reservation: what the reservation expiry scans for
# (`Store.expire_holds`) and the condition of its partial index (migration 0007 writes the same out). A literal 0,
# not a parameter: PostgreSQL's generic plan of the prepared scan (psycopg prepares a query run five times) is made
# for any value of a parameter, so it could not use the index.
HOLDING = sa.and_(decisions.c.settled == sa.false(), decisions.c.reserved_usd > sa.literal_column("0"))
sa.Index(
    "ix_decisions_holding",
    decisions.c.created_at,
    sqlite_where=HOLDING,
    postgresql_where=HOLDING,
)


def held_before(before: datetime) -> sa.ColumnElement[bool]:
    """The decisions made before `before` whose hold is still on their session (ix_decisions_holding finds them)."""
    return sa.and_(HOLDING, decisions.c.created_at < before, decisions.c.session_id.is_not(None))


outcomes = sa.Table(
    "outcomes",
    metadata,
    sa.Column("id", sa.String(128), primary_key=True),
    sa.Column("decision_id", sa.String(32), nullable=True, index=True),
    sa.Column("prompt_id", sa.String(64), nullable=False),
    sa.Column("prompt", sa.Text, nullable=True),  # NULL when prompt storage is hash or none (migration 0003)
    sa.Column("model", sa.String(256), nullable=False),
    sa.Column("score", sa.Float, nullable=False),
    sa.Column("cost_usd", sa.Float, nullable=False),
    sa.Column("session_id", sa.String(128), nullable=True),
    sa.Column("owner", sa.String(64), nullable=True),
    sa.Column("tokens_in", sa.Integer, nullable=True),
    sa.Column("tokens_out", sa.Integer, nullable=True),
    sa.Column("latency_ms", sa.Float, nullable=True),
    sa.Column("created_at", UtcDateTime, nullable=False),
    sa.Index("ix_outcomes_created_at", "created_at"),
)


def _now() -> datetime:
    return datetime.now(UTC)


SERVED_BY_PROXY = "proxy"  # decisions.served_by of a decision the OpenAI-compatible door serves and settles


@dataclass(frozen=True)
class SessionRow:
    id: str
    owner: str | None
    cap_usd: float | None
    spent_usd: float
    reserved_usd: float
    status: str

    @property
    def budget_left_usd(self) -> float | None:
        if self.cap_usd is None:
            return None
        return max(self.cap_usd - self.spent_usd - self.reserved_usd, 0.0)


@dataclass(frozen=True)
class DecisionRow:
    id: str
    prompt: str
    tier: str
    model: str
    expected_cost_usd: float
    router_version: str
    reason: str
    session_id: str | None = None
    owner: str | None = None
    reserved_usd: float = 0.0
    metadata: dict[str, Any] | None = None
    settled: bool = False
    created_at: datetime = field(default_factory=_now)
    propensity: float | None = None
    explored: bool = False
    predicted_quality: dict[str, float] | None = None
    novelty: float | None = None
    cost_usd: float | None = None
    tokens_in: int | None = None
    tokens_out: int | None = None
    latency_ms: float | None = None
    served_model: str | None = None
    prompt_hash: str | None = None
    propensities: dict[str, float] | None = None
    expected_costs: dict[str, float] | None = None
    task: str | None = None
    served_by: str | None = None  # SERVED_BY_PROXY: the door settles it, an outcome does not (migration 0005)
    input_tokens: int | None = None  # the input the caller counted and routing priced (migration 0006)


def tier_values(values: Any, names: Sequence[str]) -> list[float] | None:
    """A decision's per-tier JSON (`predicted_quality`, `propensities`, `expected_costs`) as floats in the order of
    `names`, or None unless it is an object with a finite number for every tier. The service writes nothing else,
    but a row from another version, a migration or a hand edit may: its readers skip it rather than fail."""
    if not isinstance(values, dict):
        return None
    out: list[float] = []
    for n in names:
        v = values.get(n)
        if isinstance(v, bool) or not isinstance(v, int | float) or not math.isfinite(v):
            return None
        out.append(float(v))
    return out


class OutcomeRow(OutcomeBase):
    """An outcome as the store keeps it: its id, the decision it settles and the caller who sent it."""

    id: str
    decision_id: str | None = None
    owner: str | None = None


def _session(row: Any) -> SessionRow:
    return SessionRow(row.id, row.owner, row.cap_usd, row.spent_usd, row.reserved_usd, row.status)


def _decision(row: Any) -> DecisionRow:
    m = row._mapping
    values = {k: m[k] for k in DecisionRow.__dataclass_fields__}
    return DecisionRow(**{**values, "prompt": NOT_STORED if values["prompt"] is None else values["prompt"]})


SQLITE_AUTOCHECKPOINT = 1000  # SQLite's default: WAL pages


def _sqlite_pragmas(synchronous: str, autocheckpoint: int) -> Any:
    def on_connect(dbapi_connection: Any, _record: Any) -> None:
        cur = dbapi_connection.cursor()
        cur.execute("PRAGMA journal_mode=WAL")
        cur.execute(f"PRAGMA synchronous={synchronous}")
        if autocheckpoint != SQLITE_AUTOCHECKPOINT:
            cur.execute(f"PRAGMA wal_autocheckpoint={int(autocheckpoint)}")
        cur.close()

    return on_connect


def first_line(exc: BaseException) -> str:
    """An exception as one line: the drivers' (and MLflow's) messages go on with hints and links."""
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def require_existing(url: str) -> None:
    """For a command that reads or maintains the store the service writes (`evaluate`/`calibrate`/`train
    --from-store`, `purge`): a SQLite URL naming no file is a typo, not a store to create empty (a purge from cron
    would report "deleted 0" for good). FileNotFoundError naming the file; other databases are left to connect."""
    parsed = sa.make_url(url)
    path = parsed.database
    if parsed.get_backend_name() == "sqlite" and path and path != ":memory:" and not Path(path).is_file():
        raise FileNotFoundError(
            errno.ENOENT,
            "no such SQLite database: TIERWISE_DATABASE_URL names a file that does not exist (the service creates "
            "its store when it first starts)",
            path,
        )


def make_engine(
    url: str, sqlite_synchronous: str = "FULL", sqlite_autocheckpoint: int = SQLITE_AUTOCHECKPOINT
) -> Engine:
    """An engine for `url`; SQLite gets WAL, full sync (unless told otherwise), a long busy timeout, and a commit
    that leaves `sqlite_autocheckpoint` pages or more in the WAL checkpoints it (0: never).

    Parameters are hidden from error messages: they hold prompts and key hashes, and errors get logged.
    """
    parsed = sa.make_url(url)
    if parsed.get_backend_name() == "sqlite":
        if parsed.database and parsed.database != ":memory:":
            Path(parsed.database).parent.mkdir(parents=True, exist_ok=True)
            # Owner-only, as the spool and the UI secret are: it holds prompts and key hashes (SQLite gives its WAL
            # and shared-memory files the database's mode). An existing file keeps the mode it has.
            with suppress(FileExistsError):
                os.close(os.open(parsed.database, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o600))
        engine = sa.create_engine(
            url, connect_args={"timeout": LOCK_WAIT_S, "check_same_thread": False}, hide_parameters=True
        )
        sa.event.listen(engine, "connect", _sqlite_pragmas(sqlite_synchronous, sqlite_autocheckpoint))
        return engine
    # Text travels as UTF-8 whatever the database's encoding: on a SQL_ASCII database libpq would hand psycopg bytes,
    # and SQLAlchemy's first query (the server's version) fails with "cannot use a string pattern on a bytes-like
    # object" (MLflow's server failed so on such a database). On a UTF8 database this is the default anyway.
    utf8 = {"client_encoding": "utf8"} if parsed.get_driver_name() in ("psycopg", "psycopg2") else {}
    engine = sa.create_engine(
        url, connect_args=utf8, pool_size=10, max_overflow=40, pool_pre_ping=True, hide_parameters=True
    )
    if parsed.get_backend_name() == "postgresql":
        sa.event.listen(engine, "connect", _pg_lock_timeout)
    return engine


LOCK_WAIT_S = 30
"""The longest a statement waits for a lock another transaction holds: SQLite's busy timeout, PostgreSQL's
`lock_timeout`. Past it the write fails as an outage (a /route answers 503, an outcome is spooled); without it a
request on PostgreSQL waited as long as a stuck transaction held its session's row, and committed a decision after
its client had given up."""


def _pg_lock_timeout(dbapi_conn: Any, _: Any) -> None:
    """Set `lock_timeout` (LOCK_WAIT_S) for the connection's session, outside any transaction."""
    autocommit = dbapi_conn.autocommit
    dbapi_conn.autocommit = True
    cursor = dbapi_conn.cursor()
    try:
        cursor.execute(f"SET lock_timeout = {int(LOCK_WAIT_S * 1000)}")
    finally:
        cursor.close()
        dbapi_conn.autocommit = autocommit


_BEYOND_EXPECTED = decisions.c.reserved_usd - decisions.c.expected_cost_usd


def _in_flight(session_id: str) -> tuple[sa.ColumnElement[bool], ...]:
    """A session's unsettled decisions that hold more than their expected cost: the worst cases of the proxy's calls
    in flight (answers as long as their limit), released when they settle, or a reservation a crashed service left
    (the admin key releases one with POST /decisions/{id}/usage)."""
    return decisions.c.session_id == session_id, sa.not_(decisions.c.settled), _BEYOND_EXPECTED > 0


def _held_in_flight(conn: Connection, session_id: str) -> float:
    """What the decisions in flight (`_in_flight`) hold beyond their expected cost."""
    total = sa.func.coalesce(sa.func.sum(_BEYOND_EXPECTED), 0.0)
    return float(conn.execute(sa.select(total).where(*_in_flight(session_id))).scalar_one())


def _holding(conn: Connection, session_id: str, limit: int = 10) -> list[str]:
    """The oldest decisions in flight (`_in_flight`)."""
    rows = conn.execute(
        sa.select(decisions.c.id).where(*_in_flight(session_id)).order_by(decisions.c.created_at).limit(limit)
    )
    return [r.id for r in rows]


class LockedSession:
    """A session row locked for the rest of the transaction: check its owner, then set its cap, reserve
    against it, or freeze it. Raising inside the `with` rolls everything back, a session it created too."""

    def __init__(self, conn: Connection, row: SessionRow, prompts: PromptPolicy | None = None):
        self._conn = conn
        self.row = row
        self._prompts = prompts or PromptPolicy()

    def reserve(self, rows: Sequence[DecisionRow]) -> SessionRow:
        total = sum(r.reserved_usd for r in rows)
        self._conn.execute(
            sessions.update()
            .where(sessions.c.id == self.row.id)
            .values(reserved_usd=sessions.c.reserved_usd + total, updated_at=_now())
        )
        _insert_decisions(self._conn.execute, rows, self._prompts)
        self.row = SessionRow(**{**self.row.__dict__, "reserved_usd": self.row.reserved_usd + total})
        return self.row

    def held_in_flight(self) -> float:
        """What the session's unsettled decisions hold beyond their expected cost (`_held_in_flight`)."""
        return _held_in_flight(self._conn, self.row.id)

    def holding(self) -> list[str]:
        """The decisions that hold it (`_holding`)."""
        return _holding(self._conn, self.row.id)

    def freeze(self) -> None:
        self._conn.execute(
            sessions.update().where(sessions.c.id == self.row.id).values(status="frozen", updated_at=_now())
        )
        self.row = SessionRow(**{**self.row.__dict__, "status": "frozen"})

    def set_cap(self, cap_usd: float) -> SessionRow:
        """Change the cap; a frozen session stays frozen until an admin confirms."""
        self._conn.execute(
            sessions.update().where(sessions.c.id == self.row.id).values(cap_usd=cap_usd, updated_at=_now())
        )
        self.row = SessionRow(**{**self.row.__dict__, "cap_usd": cap_usd})
        return self.row


class StoreBusy(Exception):
    """A write asked not to wait (`wait=False`) found the SQLite file's write lock, or the held connection, taken by
    another writer: nothing was written; do it where waiting blocks nobody (a thread, not the event loop)."""


class DecisionGone(Exception):
    """An outcome's decision was deleted (its session's data was) after the outcome was checked against it: nothing
    of the batch was written."""

    def __init__(self, decision_id: str):
        super().__init__(f"unknown decision_id {decision_id}: it was deleted")
        self.decision_id = decision_id


class BookedOutcome(NamedTuple):
    """What a stored outcome was booked at: its decision, cost and tokens (`Store.booked_outcomes`)."""

    decision_id: str | None
    cost_usd: float
    tokens_in: int | None
    tokens_out: int | None

    def is_for(self, decision_id: str, tokens_in: int | None, tokens_out: int | None) -> bool:
        """Whether this outcome was booked for that decision and those tokens."""
        return (self.decision_id, self.tokens_in, self.tokens_out) == (decision_id, tokens_in, tokens_out)


class OutcomeConflict(Exception):
    """An outcome id already stored with other content: a second outcome under a reused id, not a retry."""

    def __init__(self, outcome_id: str, fields: Sequence[str]):
        """`fields`: what differs; empty when the stored outcome is another client's (whose values stay unsaid)."""
        super().__init__(
            f"outcome_id {outcome_id} is already recorded with a different {', '.join(fields)}; "
            "a retry must repeat the outcome it retries, and a new outcome needs a new outcome_id"
            if fields
            else f"outcome_id {outcome_id} is already taken by another client's outcome; choose another outcome_id"
        )
        self.outcome_id = outcome_id
        self.fields = tuple(fields)


# What makes two outcomes under one id the same outcome (a retry); usage and latency are extras a retry may lack.
_OUTCOME_IDENTITY = ("decision_id", "prompt_id", "model", "score", "cost_usd", "session_id")


def _conflict(
    conn: Connection, values: dict[str, Any], same_prompt: Callable[[str, bool], bool]
) -> OutcomeConflict | None:
    """Why the outcome is not a retry of the stored outcome of the same id, or None when it is one.

    A decision's outcome is not compared by prompt_id: the decision fixes the prompt, and its prompt_id depends on
    settings (prompt storage, the hash key) a restart between a post and its retry may change. An outcome without a
    decision is compared by `same_prompt(stored prompt_id, whether the stored row kept text)`, which knows the ids
    its prompt has under each setting."""
    stored = conn.execute(
        sa.select(outcomes.c.owner, *(outcomes.c[name] for name in _OUTCOME_IDENTITY), outcomes.c.prompt).where(
            outcomes.c.id == values["id"]
        )
    ).first()
    if stored is None:  # deleted between the insert and this read (retention): nothing to compare with
        return None
    if stored[0] != values["owner"]:
        return OutcomeConflict(values["id"], ())
    differ = [
        name
        for name, old in zip(_OUTCOME_IDENTITY, stored[1:-1], strict=True)
        if old != values[name]
        and not (
            name == "prompt_id" and (values["decision_id"] is not None or same_prompt(old, stored.prompt is not None))
        )
    ]
    return OutcomeConflict(values["id"], differ) if differ else None


def _insert_new_outcome(conn: Connection, values: dict[str, Any]) -> bool:
    """Insert one outcome unless its id is stored already (ON CONFLICT DO NOTHING); whether it was new."""
    if conn.dialect.name == "postgresql":
        from sqlalchemy.dialects.postgresql import insert as pg_insert

        stmt: Any = pg_insert(outcomes).values(values).on_conflict_do_nothing(index_elements=[outcomes.c.id])
    elif conn.dialect.name == "sqlite":
        from sqlalchemy.dialects.sqlite import insert as sqlite_insert

        stmt = sqlite_insert(outcomes).values(values).on_conflict_do_nothing(index_elements=[outcomes.c.id])
    else:
        if conn.execute(sa.select(outcomes.c.id).where(outcomes.c.id == values["id"])).first():
            return False
        stmt = outcomes.insert().values(values)
    # RETURNING, not rowcount: psycopg reports -1 for an INSERT ... ON CONFLICT through SQLAlchemy.
    return conn.execute(stmt.returning(outcomes.c.id)).first() is not None


_INSERT_DECISION = decisions.insert()


def _insert_decisions(execute: Execute, rows: Sequence[DecisionRow], prompts: PromptPolicy | None = None) -> None:
    """Insert decision rows (as the prompt policy stores them) in the transaction `execute` runs in."""
    if rows:
        policy = prompts or PromptPolicy()
        values = [policy.decision(dict(r.__dict__)) for r in rows]
        # One row as a plain execute: SQLAlchemy's executemany path costs about 0.1 ms more per call.
        execute(_INSERT_DECISION, values[0] if len(values) == 1 else values)


# Settling a decision: its served usage, then its reservation released and its cost booked on its session, once.
_SERVED_COLUMNS = ("cost_usd", "tokens_in", "tokens_out", "latency_ms", "served_model")
_RECORD_SERVED = (  # only on a decision not settled yet: the first settlement's usage is the one kept
    decisions.update()
    .where(decisions.c.id == sa.bindparam("d_id"), decisions.c.settled == sa.false())
    .values(
        {
            **{c: sa.bindparam(f"s_{c}", type_=decisions.c[c].type) for c in _SERVED_COLUMNS},
            "reason": sa.func.coalesce(sa.bindparam("s_reason", type_=decisions.c.reason.type), decisions.c.reason),
        }
    )
)
_MARK_SETTLED = (
    decisions.update()
    .where(decisions.c.id == sa.bindparam("d_id"), decisions.c.settled == sa.false())
    .values(settled=True)
)
# An outcome settles its decision only if the caller serves it: the proxy settles its own with the upstream's usage,
# and an outcome posted while the proxy still streams would otherwise book the caller's cost in its place.
_MARK_SETTLED_BY_OUTCOME = _MARK_SETTLED.where(decisions.c.served_by.is_(None))
_RESERVATION_OF = sa.select(decisions.c.session_id, decisions.c.reserved_usd).where(
    decisions.c.id == sa.bindparam("d_id")
)
_DECISION_EXISTS = sa.select(decisions.c.id).where(decisions.c.id == sa.bindparam("d_id"))
_HOLD_OF = sa.select(decisions.c.reserved_usd, decisions.c.expected_cost_usd).where(
    decisions.c.id == sa.bindparam("d_id")
)
_cost = sa.bindparam("b_cost", type_=sa.Float)
_left = sessions.c.reserved_usd - sa.bindparam("b_reserved", type_=sa.Float)
_BOOK_COST = (
    sessions.update()
    .where(sessions.c.id == sa.bindparam("b_session"))
    .values(
        reserved_usd=sa.case((_left < 0, 0.0), else_=_left),
        # Compared before adding, so the sum can never overflow (PostgreSQL refuses it, SQLite makes it inf).
        spent_usd=sa.case(
            (sessions.c.spent_usd > SPENT_CEILING_USD - _cost, SPENT_CEILING_USD), else_=sessions.c.spent_usd + _cost
        ),
        updated_at=sa.bindparam("b_now", type_=sessions.c.updated_at.type),
    )
)


# The session row a decision books on, locked before the decision's (as every other writer locks them: the session
# first), so a settlement and the proxy growing a reservation on the same decision cannot deadlock on PostgreSQL.
_LOCK_SESSION_OF = (
    sessions.update()
    .where(
        sessions.c.id
        == sa.select(decisions.c.session_id).where(decisions.c.id == sa.bindparam("d_id")).scalar_subquery()
    )
    .values(status=sessions.c.status)
)


def _lock_sessions(conn: Connection, session_ids: sa.Select[Any]) -> None:
    """Lock the sessions `session_ids` selects, in id order: whatever locks several sessions in one transaction
    takes them in this order first, so two such transactions cannot deadlock. On SQLite, which has no row locks and
    begins a transaction's write lock only at its first write, a write that changes nothing (as `_LOCK_SESSION_OF`
    does): what the transaction reads next no other writer can change before it commits."""
    if conn.dialect.name == "sqlite":
        conn.execute(sessions.update().where(sessions.c.id.in_(session_ids)).values(status=sessions.c.status))
        return
    conn.execute(
        sa.select(sessions.c.id).where(sessions.c.id.in_(session_ids)).order_by(sessions.c.id).with_for_update()
    ).all()


def _release_holds(conn: Connection, held: Sequence[Any]) -> None:
    """Take each (session id, USD) of `held` off its session's reservation (never below 0); sessions locked."""
    for session_id, reserved in held:
        left = sessions.c.reserved_usd - float(reserved or 0.0)
        conn.execute(
            sessions.update()
            .where(sessions.c.id == session_id)
            .values(reserved_usd=sa.case((left < 0, 0.0), else_=left), updated_at=_now())
        )


def _settle(execute: Execute, decision_id: str, cost_usd: float, by_outcome: bool = False) -> bool:
    """Release a decision's reservation and book its actual cost, once; spend saturates at a ceiling. `by_outcome`:
    settle only a decision its caller serves (not the proxy's). Whether this call settled it. The caller has
    locked the decision's session (`_LOCK_SESSION_OF`) before touching the decision."""
    if not execute(_MARK_SETTLED_BY_OUTCOME if by_outcome else _MARK_SETTLED, {"d_id": decision_id}).rowcount:
        return False
    session_id, reserved = execute(_RESERVATION_OF, {"d_id": decision_id}).fetchone()
    if session_id is None:
        return True
    cost = min(cost_usd, SPENT_CEILING_USD) if cost_usd >= 0 else 0.0  # NaN -> 0, inf -> the ceiling
    execute(_BOOK_COST, {"b_session": session_id, "b_reserved": reserved, "b_cost": cost, "b_now": _now()})
    return True


class _RawStatement:
    """A SQLAlchemy statement compiled once for a held DBAPI connection: its SQL and, per positional parameter, the
    bind name and its type's bind processor, so a value is stored as SQLAlchemy would store it."""

    def __init__(self, stmt: sa.ClauseElement, dialect: sa.Dialect):
        compiled = cast(SQLCompiler, stmt.compile(dialect=dialect))
        self.sql = str(compiled)
        self._defaults = compiled.params  # the literals the statement carries as parameters
        self._binds = [
            (k, compiled.binds[k].type.dialect_impl(dialect).bind_processor(dialect))
            for k in compiled.positiontup or ()
        ]

    def params(self, values: dict[str, Any]) -> tuple[Any, ...]:
        merged = {**self._defaults, **values}
        return tuple(merged[k] if bind is None else bind(merged[k]) for k, bind in self._binds)


class _HeldConnection:
    """One DBAPI connection of a SQLite engine, held for the hot writes (sessionless decisions, settlements): each
    call is one transaction of precompiled statements, and skips SQLAlchemy's per-call pool checkout, transaction
    and execution context, which cost more than SQLite's statements and commit themselves.
    What is stored is what the SQLAlchemy path stores (same statements, same bind processors); errors are raised as
    SQLAlchemy's DBAPIError subclasses, like every other write's."""

    def __init__(self, engine: Engine):
        self._engine = engine
        self._statements: dict[int, _RawStatement] = {}
        self._conn: Any = None
        self._busy_ms = LOCK_WAIT_S * 1000  # the connection's busy timeout (the engine connects with this one)
        self._lock = threading.Lock()

    def _compiled(self, stmt: sa.ClauseElement) -> _RawStatement:
        raw = self._statements.get(id(stmt))
        if raw is None:  # statements are module constants: their id is stable
            raw = self._statements[id(stmt)] = _RawStatement(stmt, self._engine.dialect)
        return raw

    def transaction(self, work: Callable[[Execute], T], wait: bool = True) -> T:
        """`work(execute)` in one transaction, committed; `execute(stmt, values)` returns the DBAPI cursor
        (`rowcount`, `fetchone`) or, given a list of values, runs the statement for each. With `wait` False, a
        connection or file lock another writer holds raises StoreBusy at once, with nothing written."""
        if not self._lock.acquire(blocking=wait):
            raise StoreBusy("the held connection is in use")
        try:
            return self._transaction(work, wait)
        except sa.exc.OperationalError as exc:
            code = getattr(exc.orig, "sqlite_errorcode", None)  # extended: SQLITE_BUSY_SNAPSHOT is busy too
            if not wait and code is not None and code & 0xFF in (sqlite3.SQLITE_BUSY, sqlite3.SQLITE_LOCKED):
                raise StoreBusy(first_line(exc)) from exc
            raise
        finally:
            self._lock.release()

    def _transaction(self, work: Callable[[Execute], T], wait: bool) -> T:
        dbapi_error = self._engine.dialect.loaded_dbapi.Error
        cursors: list[Any] = []
        last_sql: list[str] = []

        def execute(stmt: sa.ClauseElement, values: dict[str, Any] | Sequence[dict[str, Any]]) -> Any:
            raw = self._compiled(stmt)
            last_sql[:] = [raw.sql]
            cursor = self._conn.cursor()
            cursors.append(cursor)
            if isinstance(values, dict):
                return cursor.execute(raw.sql, raw.params(values))
            return cursor.executemany(raw.sql, [raw.params(v) for v in values])

        try:
            if self._conn is None:  # a refused connect is the same error as a refused write
                self._conn = self._engine.raw_connection()
            # SQLite's busy timeout at 0 when not waiting: a lock held elsewhere fails at once (set only on a change,
            # so the loop's commits, which never wait, pay for no pragma)
            self._set_busy_timeout(self._conn, LOCK_WAIT_S * 1000 if wait else 0)
            try:
                result = work(execute)
            finally:
                for cursor in cursors:
                    cursor.close()
            self._conn.commit()
        except dbapi_error as exc:
            self.close()  # the pool's reset rolls back what this call began
            raise sa.exc.DBAPIError.instance(
                last_sql[0] if last_sql else "",
                None,
                exc,
                dbapi_error,
                hide_parameters=True,
                dialect=self._engine.dialect,
            ) from exc
        except BaseException:
            self.close()
            raise
        return result

    def _set_busy_timeout(self, conn: Any, ms: int) -> None:
        """SQLite's busy timeout on `conn`, the held connection (a pragma only when it changes)."""
        if ms != self._busy_ms:
            cursor = conn.cursor()
            try:
                cursor.execute(f"PRAGMA busy_timeout = {int(ms)}")
            finally:
                cursor.close()
            self._busy_ms = ms

    def close(self) -> None:
        """Hand the held connection back to the engine's pool, with the engine's busy timeout."""
        conn, self._conn = self._conn, None
        if conn is None:
            return
        try:
            self._set_busy_timeout(conn, LOCK_WAIT_S * 1000)
        except Exception:  # a broken connection: not back into the pool with a busy timeout of 0
            conn.invalidate()
        finally:
            self._busy_ms = LOCK_WAIT_S * 1000  # the engine's, which the next connection starts with
        conn.close()


# PostgreSQL advisory lock of a schema's migration: (this class, a hash of the schema's name). One migration at a time
# per schema; deployments in other schemas of the database do not wait for it.
MIGRATION_LOCK = 0x74696572  # "tier"
_MIGRATION_LOCK_KEY = (sa.literal(MIGRATION_LOCK), sa.func.hashtext(sa.func.current_schema()))
MIGRATION_WAIT_S = 900.0  # how long a migration waits for another one (a concurrent index build on a large table)


def run_alembic(engine: Engine, step: str, revision: str) -> None:
    """`alembic upgrade|downgrade <revision>` on the engine's database, each revision in its own transaction (a
    revision may leave them for work PostgreSQL does only outside one: CREATE INDEX CONCURRENTLY, migration 0007).
    On PostgreSQL one migration of a schema runs at a time (a session advisory lock): a replica starting beside
    another waits for it and finds its work done, instead of skipping an index the other is still building."""
    from alembic import command
    from alembic.config import Config

    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS))
    with engine.connect() as conn:
        locked = conn.dialect.name == "postgresql"
        if locked:
            _take_migration_lock(conn)
        try:
            cfg.attributes["connection"] = conn
            getattr(command, step)(cfg, revision)
        finally:
            if locked:
                try:
                    conn.rollback()  # whatever a failed revision left open
                    conn.execute(sa.select(sa.func.pg_advisory_unlock(*_MIGRATION_LOCK_KEY)))
                    conn.commit()
                except Exception:  # a broken connection: closing it (not pooling it) ends the lock with the session
                    conn.invalidate()


def _take_migration_lock(conn: Connection, wait_s: float = MIGRATION_WAIT_S, poll_s: float = 0.2) -> None:
    """Take the migration lock for the connection's session, trying again every `poll_s` while another holds it.
    Not `pg_advisory_lock`: a session waiting in it is inside a statement, whose snapshot a CREATE INDEX
    CONCURRENTLY in the holder's session waits for (a deadlock). Between tries this session is in no transaction."""
    deadline = time.monotonic() + wait_s
    while True:
        took = conn.execute(sa.select(sa.func.pg_try_advisory_lock(*_MIGRATION_LOCK_KEY))).scalar_one()
        conn.commit()  # the lock is the session's; alembic begins its own transactions
        if took:
            return
        if time.monotonic() > deadline:
            raise TimeoutError(f"another migration of this schema has run for over {wait_s:.0f} s; try again later")
        time.sleep(poll_s)


class Store:
    """Typed access to the three tables. Every method is one short transaction."""

    def __init__(self, url: str, prompts: PromptPolicy | None = None):
        self.url = url
        self.engine = make_engine(url)
        self.prompts = prompts or PromptPolicy()
        parsed = sa.make_url(url)
        self._sqlite_file = parsed.get_backend_name() == "sqlite" and parsed.database not in (None, "", ":memory:")
        # SQLite file: a held connection per engine for the hot writes (sessionless decisions, the proxy's settlements)
        self._held: dict[int, _HeldConnection] = {}

    def migrate(self) -> None:
        """Bring the schema to the newest alembic revision."""
        run_alembic(self.engine, "upgrade", "head")

    # "durable": a sessionless decision is on disk before /route answers. "async" (TIERWISE_DECISION_COMMIT):
    # its commit does not wait for the disk (SQLite WAL synchronous=NORMAL, PostgreSQL synchronous_commit=off):
    # visible at once to every worker, kept through a crash of the service, lost only if the machine itself
    # goes down within moments of the answer. Reservations against a session always commit durably.
    decision_commit: str = "durable"
    # SQLite checkpoints its WAL inside whichever commit passes 1000 WAL pages: milliseconds, paid by one request.
    # Whoever checkpoints the async decisions' WAL off the request path (`checkpoint_decisions`: the service's
    # DecisionWriter, on its own thread) raises this (before the first decision is written) so that commits
    # rarely checkpoint, and then only the little the last checkpoint left.
    decision_autocheckpoint: int = SQLITE_AUTOCHECKPOINT
    _async_engine: Engine | None = None

    @property
    def decision_commit_is_local(self) -> bool:
        """A sessionless decision's commit waits for neither the disk nor the network (SQLite file, async)."""
        return self.decision_commit == "async" and self._sqlite_file

    def _decision_engine(self) -> Engine:
        if self.decision_commit != "async" or not self._sqlite_file:
            return self.engine
        if self._async_engine is None:
            self._async_engine = make_engine(self.url, "NORMAL", self.decision_autocheckpoint)
        return self._async_engine

    def _held_connection(self, engine: Engine) -> _HeldConnection:
        held = self._held.get(id(engine))
        if held is None:
            held = self._held[id(engine)] = _HeldConnection(engine)
        return held

    def checkpoint_decisions(self) -> None:
        """Copy the WAL the async decisions wrote into the database file, as far as no reader needs it (SQLite's
        PASSIVE checkpoint: it waits for no reader or writer). A no-op unless decisions commit locally."""
        if self.decision_commit_is_local:
            with self._decision_engine().connect() as conn:
                conn.exec_driver_sql("PRAGMA wal_checkpoint(PASSIVE)")

    def dispose(self) -> None:
        for held in self._held.values():
            held.close()
        self.engine.dispose()
        if self._async_engine is not None:
            self._async_engine.dispose()

    # ------------------------------------------------------------------ sessions

    def get_session(self, session_id: str) -> SessionRow | None:
        with self.engine.connect() as conn:
            row = conn.execute(sessions.select().where(sessions.c.id == session_id)).first()
        return _session(row) if row else None

    def session_and_holding(self, session_id: str) -> tuple[SessionRow | None, float, list[str]]:
        """A session, what calls in flight hold of it beyond their expected cost, and the decisions that hold it."""
        with self.engine.connect() as conn:
            row = conn.execute(sessions.select().where(sessions.c.id == session_id)).first()
            if row is None:
                return None, 0.0, []
            return _session(row), _held_in_flight(conn, session_id), _holding(conn, session_id)

    def grow_reservation_within(
        self, decision_id: str, session_id: str, least_usd: float, most_usd: float
    ) -> float | None:
        """Raise a decision's reservation on its session toward `most_usd`, as far as the cap leaves room, on the
        locked session row (the proxy holding a call's worst case, or falling back to a dearer tier); the
        reservation then, or None when not even `least_usd` fits. Nothing changes then: the session is frozen,
        the cap has no room, or the decision is settled or unknown. A reservation already as large stays."""
        with self.engine.begin() as conn:
            locked = conn.execute(
                sessions.update().where(sessions.c.id == session_id).values(status=sessions.c.status)
            ).rowcount
            decision = conn.execute(
                sa.select(decisions.c.reserved_usd, decisions.c.settled).where(
                    decisions.c.id == decision_id, decisions.c.session_id == session_id
                )
            ).first()
            if not locked or decision is None or decision.settled:
                return None
            row = _session(conn.execute(sessions.select().where(sessions.c.id == session_id)).one())
            held = float(decision.reserved_usd)
            if row.status != "open":
                return None
            most_usd = max(most_usd, least_usd)
            if most_usd <= held:
                return held
            left = row.budget_left_usd
            # Within a billionth of the cap counts as fitting: cap − spent − reserved rounds (1.0 − 0.8 < 0.2).
            room = math.inf if left is None else held + left + 1e-9 * (row.cap_usd or 0.0)
            if least_usd > room:
                return None
            total = max(min(most_usd, room), held)
            conn.execute(
                sessions.update()
                .where(sessions.c.id == session_id)
                .values(reserved_usd=sessions.c.reserved_usd + (total - held), updated_at=_now())
            )
            conn.execute(decisions.update().where(decisions.c.id == decision_id).values(reserved_usd=total))
            return total

    def confirm(self, session_id: str, new_cap_usd: float) -> SessionRow | None:
        """Reopen a session with a new cap."""
        with self.engine.begin() as conn:
            done = conn.execute(
                sessions.update()
                .where(sessions.c.id == session_id)
                .values(cap_usd=new_cap_usd, status="open", updated_at=_now())
            ).rowcount
            if not done:
                return None
            row = conn.execute(sessions.select().where(sessions.c.id == session_id)).one()
        return _session(row)

    def count_frozen(self) -> int:
        with self.engine.connect() as conn:
            q = sa.select(sa.func.count()).select_from(sessions).where(sessions.c.status == "frozen")
            return int(conn.execute(q).scalar_one())

    def _insert_session(self, conn: Connection, session_id: str, owner: str | None, cap_usd: float | None) -> None:
        values = {
            "id": session_id,
            "owner": owner,
            "cap_usd": cap_usd,
            "spent_usd": 0.0,
            "reserved_usd": 0.0,
            "status": "open",
            "created_at": _now(),
            "updated_at": _now(),
        }
        if conn.dialect.name == "postgresql":
            from sqlalchemy.dialects.postgresql import insert as pg_insert

            conn.execute(pg_insert(sessions).values(values).on_conflict_do_nothing())
        elif conn.dialect.name == "sqlite":
            from sqlalchemy.dialects.sqlite import insert as sqlite_insert

            conn.execute(sqlite_insert(sessions).values(values).on_conflict_do_nothing())
        else:
            conn.execute(sessions.insert().values(values))

    @contextmanager
    def lock_session(self, session_id: str, owner: str | None) -> Iterator[LockedSession]:
        """Lock the session row (creating an uncapped one owned by `owner` if missing) for one transaction.

        Check the owner on the locked row: of two clients creating the same id at once, one inserts and the
        other's insert does nothing (it waits for the first to commit), so the second sees the first's owner.
        """

        def touch(conn: Connection) -> int:
            stmt = sessions.update().where(sessions.c.id == session_id).values(status=sessions.c.status)
            return conn.execute(stmt).rowcount

        with self.engine.begin() as conn:
            if not touch(conn):
                self._insert_session(conn, session_id, owner, None)
                touch(conn)
            row = conn.execute(sessions.select().where(sessions.c.id == session_id)).one()
            yield LockedSession(conn, _session(row), self.prompts)

    # ------------------------------------------------------------------ decisions

    def _write(self, work: Callable[[Execute], T], *, sessionless: bool, wait: bool = True) -> T:
        """`work(execute)` in one committed transaction. What books nothing on a session (a sessionless decision,
        its settlement) goes to the decision engine, so under decision_commit=async its commit waits for no disk.
        On a SQLite file it runs on the engine's held connection; with `wait` False, a lock another writer holds
        raises StoreBusy at once (for the event loop, which must not wait out SQLite's busy timeout)."""
        engine = self._decision_engine() if sessionless else self.engine
        if self._sqlite_file:
            return self._held_connection(engine).transaction(work, wait)
        with engine.begin() as conn:
            if sessionless and self.decision_commit == "async" and conn.dialect.name == "postgresql":
                conn.exec_driver_sql("SET LOCAL synchronous_commit TO OFF")
            return work(conn.execute)

    def record_decisions(self, rows: Sequence[DecisionRow], wait: bool = True) -> None:
        """Insert sessionless decisions (a session's are inserted with its reservation, `LockedSession`); `wait`
        as `_write` takes it."""
        if rows:
            self._write(lambda execute: _insert_decisions(execute, rows, self.prompts), sessionless=True, wait=wait)

    def get_decisions(self, ids: Sequence[str]) -> dict[str, DecisionRow]:
        if not ids:
            return {}
        with self.engine.connect() as conn:
            rows = conn.execute(decisions.select().where(decisions.c.id.in_(list(set(ids))))).all()
        return {r.id: _decision(r) for r in rows}

    def booked_outcomes(self, ids: Sequence[str]) -> dict[str, BookedOutcome]:
        """What the stored outcomes among `ids` were booked at (their decision, cost and tokens), by id."""
        if not ids:
            return {}
        cols = (outcomes.c.id, outcomes.c.decision_id, outcomes.c.cost_usd, outcomes.c.tokens_in, outcomes.c.tokens_out)
        with self.engine.connect() as conn:
            rows = conn.execute(sa.select(*cols).where(outcomes.c.id.in_(list(set(ids))))).all()
        return {r.id: BookedOutcome(r.decision_id, r.cost_usd, r.tokens_in, r.tokens_out) for r in rows}

    def recent_decisions(self, session_id: str, limit: int = 20) -> list[DecisionRow]:
        q = (
            decisions.select()
            .where(decisions.c.session_id == session_id)
            .order_by(decisions.c.created_at.desc())
            .limit(limit)
        )
        with self.engine.connect() as conn:
            return [_decision(r) for r in conn.execute(q).all()]

    # ------------------------------------------------------------------ outcomes

    def record_outcomes(self, rows: Sequence[OutcomeRow]) -> int:
        """Insert outcomes whose id is new, settling their decisions' reservations; return how many were new.
        A decision the proxy serves is not settled by an outcome (the proxy books the upstream's real cost).

        An id already stored with the same outcome (a retry, even a concurrent one) is skipped by the insert itself.
        An id stored with another score, model, cost, decision, prompt or session, or by another owner, raises
        OutcomeConflict and writes nothing of `rows`.
        """
        new = 0
        with self.engine.begin() as conn:
            # Every lock in one order (sessions by id, then decisions and outcome ids): two requests settling the
            # same decisions listed in other orders deadlocked on PostgreSQL, and one was spooled as an outage.
            decided = sorted({r.decision_id for r in rows if r.decision_id is not None})
            if decided:
                _lock_sessions(conn, sa.select(decisions.c.session_id).where(decisions.c.id.in_(decided)))
            for r in sorted(rows, key=lambda r: (r.decision_id or "", r.id)):
                values = {**r.model_dump(), "prompt_id": prompt_id_of(r.prompt), "created_at": _now()}
                values = self.prompts.outcome(values, self._decision_hash(conn, r))
                if not _insert_new_outcome(conn, values):
                    if (conflict := _conflict(conn, values, partial(self.prompts.is_prompt_id, r))) is not None:
                        raise conflict
                    continue
                new += 1
                if r.decision_id is not None:
                    conn.execute(_LOCK_SESSION_OF, {"d_id": r.decision_id})
                    # Checked after the insert, which holds SQLite's write lock (PostgreSQL: the session's row lock,
                    # which delete_session takes first): a session deleted since the caller resolved the decision
                    # left this outcome behind with its prompt, an orphan (review finding).
                    if conn.execute(_DECISION_EXISTS, {"d_id": r.decision_id}).first() is None:
                        raise DecisionGone(r.decision_id)
                    _settle(conn.execute, r.decision_id, r.cost_usd, by_outcome=True)
        return new

    def settle_decision(
        self,
        decision_id: str,
        *,
        cost_usd: float | None,
        tokens_in: int | None,
        tokens_out: int | None,
        latency_ms: float | None,
        served_model: str | None,
        reason: str | None = None,
        sessionless: bool = False,
        at_hold: bool = False,
        wait: bool = True,
    ) -> bool:
        """Write what serving a decision took (the proxy, once the upstream answered or failed) and book its cost on
        its session once: the reservation is released and `cost_usd` spent; a later outcome charges nothing more.
        A decision already settled (by an outcome, or an earlier settlement) keeps what it has: nothing is written.
        `cost_usd` None: the call failed, nothing is charged and the decision keeps no cost. `reason` None keeps
        the decision's reason. `sessionless`: the caller knows the decision reserved nothing on a session; its
        settlement is then committed like the decision was (decision_commit). `at_hold`: the call was answered but
        what it cost is lost (a spooled settlement that could not be read); its cost is the decision's hold on its
        session, the most the call could cost, or its expected cost when it held nothing, so no cap is undercounted
        and the session's room is not held for good. `wait` as `_write` takes it. Whether this call settled it.

        On a SQLite file this runs on a held connection: the proxy settles every answer before sending it, and
        SQLAlchemy's per-transaction overhead was most of the settlement's time."""
        served = {
            "s_cost_usd": cost_usd,
            "s_tokens_in": tokens_in,
            "s_tokens_out": tokens_out,
            "s_latency_ms": latency_ms,
            "s_served_model": served_model,
            "s_reason": reason,
            "d_id": decision_id,
        }

        def work(execute: Execute) -> bool:
            if not sessionless:
                execute(_LOCK_SESSION_OF, {"d_id": decision_id})
            cost = cost_usd
            if at_hold:
                hold = execute(_HOLD_OF, {"d_id": decision_id}).fetchone()
                cost = (float(hold[0]) or float(hold[1])) if hold else None
            execute(_RECORD_SERVED, {**served, "s_cost_usd": cost})
            return _settle(execute, decision_id, cost or 0.0)

        return self._write(work, sessionless=sessionless, wait=wait)

    def _decision_hash(self, conn: Connection, r: OutcomeRow) -> str | None:
        """The stored prompt hash of an outcome's decision, when the outcome has no text of its own to hash."""
        if r.decision_id is None or r.prompt != NOT_STORED:
            return None
        return conn.execute(sa.select(decisions.c.prompt_hash).where(decisions.c.id == r.decision_id)).scalar()

    def export_outcomes(self) -> list[Outcome]:
        """Every stored outcome in the training contract, for `tierwise train --from-store`."""
        with self.engine.connect() as conn:
            # Rows kept without text (prompt storage hash or none) cannot be embedded: training skips them.
            # The settled decision's task hint, if any, is the outcome's category (migration 0004).
            query = (
                sa.select(outcomes, decisions.c.task)
                .select_from(outcomes.outerjoin(decisions, outcomes.c.decision_id == decisions.c.id))
                .where(outcomes.c.prompt.is_not(None))
                .order_by(outcomes.c.created_at)
            )
            rows = conn.execute(query).all()
        shared = [name for name in Outcome.model_fields if name in outcomes.c]
        # Texts that differ only in whitespace share a prompt_id (`prompt_id_of`), and their features are the same
        # (router.text.normalize_text); the training contract wants one text per prompt_id: the first stored.
        text_of: dict[str, str] = {}
        # Not re-validated here: training checks the exported log like any other (router.schema.validate_outcomes).
        return [
            Outcome.model_construct(
                **{name: r._mapping[name] for name in shared if name != "prompt"},
                prompt=text_of.setdefault(r.prompt_id, r.prompt),
                timestamp=r.created_at.isoformat(),
                category=r._mapping["task"],
            )
            for r in rows
            if r.prompt.strip()  # blank to Python: older services took U+001C..U+001F as text; nothing to embed
        ]

    def count_outcomes_without_text(self) -> int:
        """Stored outcomes that `export_outcomes` leaves out: kept without prompt text (prompt storage hash or none)."""
        query = sa.select(sa.func.count()).select_from(outcomes).where(outcomes.c.prompt.is_(None))
        with self.engine.connect() as conn:
            return int(conn.execute(query).scalar_one())

    # ------------------------------------------------------------------ retention

    def purge(self, before: datetime) -> tuple[int, int]:
        """Delete decisions and outcomes created before `before`; how many of each.

        An unsettled decision's reservation is released from its session first, so a purge never leaves
        money reserved for a decision that no longer exists. The sessions are locked before their reservations
        are summed, as a settlement locks its session before it settles: a settlement committed meanwhile was
        released twice (PostgreSQL), leaving the session's cap room another decision still held.
        """
        unsettled = sa.select(decisions.c.session_id).where(
            decisions.c.created_at < before, decisions.c.settled == sa.false(), decisions.c.session_id.is_not(None)
        )
        with self.engine.begin() as conn:
            _lock_sessions(conn, unsettled)
            stale = conn.execute(
                sa.select(decisions.c.session_id, sa.func.sum(decisions.c.reserved_usd))
                .where(decisions.c.created_at < before, decisions.c.settled == sa.false())
                .where(decisions.c.session_id.is_not(None))
                .group_by(decisions.c.session_id)
            ).all()
            _release_holds(conn, stale)
            n_decisions = conn.execute(decisions.delete().where(decisions.c.created_at < before)).rowcount
            n_outcomes = conn.execute(outcomes.delete().where(outcomes.c.created_at < before)).rowcount
        return int(n_decisions), int(n_outcomes)

    def expire_holds(self, before: datetime) -> dict[str, float]:
        """Release from their sessions the holds of unsettled decisions made before `before`: {session: USD}.

        A caller that routed and never settled (it crashed, or a cancellation it caught left nothing to report)
        would hold its session's room for good. The decisions stay unsettled, holding nothing: a settlement or an
        outcome that comes later still books its cost as spent. Locks as `purge` does (sessions first)."""
        return self._release_holds_of(held_before(before))

    def release_hold(self, decision_id: str) -> float:
        """Release one unsettled decision's hold from its session and keep the decision open, as `expire_holds`
        does: a settlement or an outcome that comes later still books its cost. The USD released (0: none held)."""
        held = sa.and_(HOLDING, decisions.c.id == decision_id, decisions.c.session_id.is_not(None))
        return sum(self._release_holds_of(held).values())

    def _release_holds_of(self, held: sa.ColumnElement[bool]) -> dict[str, float]:
        with self.engine.begin() as conn:
            _lock_sessions(conn, sa.select(decisions.c.session_id).where(held))
            # The rows themselves, locked (PostgreSQL): the holds released are exactly the holds zeroed, even where
            # the proxy grew one meanwhile on a session the first lock did not take.
            rows = conn.execute(
                sa.select(decisions.c.id, decisions.c.session_id, decisions.c.reserved_usd)
                .where(held)
                .with_for_update()
            ).all()
            released: dict[str, float] = {}
            for _, session_id, reserved in rows:
                released[str(session_id)] = released.get(str(session_id), 0.0) + float(reserved or 0.0)
            _release_holds(conn, sorted(released.items()))
            ids = [r.id for r in rows]
            for start in range(0, len(ids), 500):  # bound the statement's parameters
                chunk = ids[start : start + 500]
                conn.execute(decisions.update().where(decisions.c.id.in_(chunk)).values(reserved_usd=0.0))
        return released

    def delete_session(self, session_id: str) -> tuple[int, list[str], int]:
        """Delete a session with its decisions and outcomes: how many sessions (0 or 1), the decisions' ids (what
        else may hold their data, the outcome spool, can be cleared of them too) and how many outcomes."""
        with self.engine.begin() as conn:
            _lock_sessions(conn, sa.select(sa.literal(session_id)))  # as record_outcomes does, first
            ids = sa.select(decisions.c.id).where(decisions.c.session_id == session_id)
            n_outcomes = conn.execute(
                outcomes.delete().where(sa.or_(outcomes.c.session_id == session_id, outcomes.c.decision_id.in_(ids)))
            ).rowcount
            gone = decisions.delete().where(decisions.c.session_id == session_id).returning(decisions.c.id)
            decision_ids = [str(d) for d in conn.execute(gone).scalars()]
            n_sessions = conn.execute(sessions.delete().where(sessions.c.id == session_id)).rowcount
        return int(n_sessions), decision_ids, int(n_outcomes)
