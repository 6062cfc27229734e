"""Record outcomes durably: in the store, or, while it is unreachable, in the fsynced spool replayed later.

Only an unreachable store (a connection or operational error) spools. Anything the client got wrong is a
4xx before a byte is written: the schema, the model name, and whatever the store itself refuses (a data
or integrity error). A spooled record the store later refuses is quarantined, counted and logged, never
left to block the records behind it.
"""

from __future__ import annotations

import asyncio
import logging
import uuid
from collections.abc import Callable, Mapping, Sequence
from datetime import UTC, datetime, timedelta
from typing import Any

from pydantic import ValidationError
from sqlalchemy.exc import (
    DataError,
    DBAPIError,
    IntegrityError,
    InterfaceError,
    OperationalError,
    SQLAlchemyError,
)
from sqlalchemy.exc import TimeoutError as PoolTimeout
from starlette.concurrency import run_in_threadpool

from infra.store import (
    SERVED_BY_PROXY,
    BookedOutcome,
    DecisionGone,
    DecisionRow,
    OutcomeConflict,
    OutcomeRow,
    Store,
    first_line,
)
from router.schema import TiersConfig
from router.text import MAX_TOKENS
from serving.errors import (
    Conflict,
    Invalid,
    NotFound,
    NotSettledYet,
    ServiceError,
    StoreUnavailable,
    refusal_class,
)
from serving.metrics import Metrics
from serving.pricing import priced_tokens
from serving.schemas import (
    DECISION_OUTCOME,
    MAX_LATENCY_MS,
    MAX_OUTCOME_COST_USD,
    OutcomeIn,
    OutcomesResponse,
    RejectedOutcome,
    SpoolStatus,
)
from serving.security import Principal, check_owner
from serving.spool import Record, Spool

logger = logging.getLogger(__name__)

# Batches a successful request replays on its way out; the timer and start-up replay the rest.
INLINE_REPLAY_BATCHES = 2


def is_outage(exc: BaseException) -> bool:
    """Whether the store is unreachable (spool and retry later), as opposed to refusing this request."""
    if isinstance(exc, PoolTimeout):
        return True
    return isinstance(exc, OperationalError | InterfaceError) or (
        isinstance(exc, DBAPIError) and exc.connection_invalidated
    )


def is_refusal(exc: BaseException) -> bool:
    """Whether the store refused the data itself: retrying the same record can never succeed."""
    if isinstance(exc, OutcomeConflict | DecisionGone):
        return True
    return isinstance(exc, DataError | IntegrityError | UnicodeEncodeError) and not is_outage(exc)


def describe(exc: BaseException) -> str:
    """Error class and the first line of the driver's message: never SQL parameters (prompts, key hashes)."""
    return f"{type(exc).__name__}: {first_line(getattr(exc, 'orig', None) or exc)[:200]}"


def _invalid_reason(exc: ValidationError) -> str:
    return "; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in exc.errors())


class OutcomeRecorder:
    def __init__(self, store: Store, spool: Spool, metrics: Metrics):
        self.store = store
        self.spool = spool
        self.metrics = metrics

    def record(
        self, items: Sequence[OutcomeIn], principal: Principal, tiers: TiersConfig, listed: bool = False
    ) -> OutcomesResponse:
        """Store the outcomes (or spool them when the store is unreachable); every id is durable on return.
        `listed`: the body was a list, so an error's loc names the item's index."""
        records = [
            {
                "outcome_id": outcome_id_of(item),
                **item.model_dump(exclude={"outcome_id"}),
                "owner": principal.key_hash,
                "admin": principal.is_admin,
            }
            for item in items
        ]
        for i, r in enumerate(records):  # what can be checked without the store, before acknowledging
            _check_model(r["model"], tiers, ("body", i, "model") if listed else ("body", "model"))
        ids = [r["outcome_id"] for r in records]
        try:
            rows = self._resolve(records, tiers)
            new = self.store.record_outcomes(rows)
        except OutcomeConflict as exc:
            raise Conflict(f"{conflict_detail(exc)}; nothing was written") from None
        except DecisionGone as exc:  # its session was deleted since it was resolved
            raise NotFound(f"{exc}; nothing was written") from None
        except (SQLAlchemyError, UnicodeEncodeError) as exc:
            if is_refusal(exc):
                # Only the class: a driver's message may quote the refused value.
                logger.warning("the store refused %d outcome(s): %s", len(records), refusal_class(exc))
                raise Invalid(f"the store refused the outcome(s) ({type(exc).__name__}); nothing was written") from None
            if not is_outage(exc):
                raise  # answered 503, not acknowledged: the client retries
            self._spool(records, exc)
            return OutcomesResponse(outcome_ids=ids, recorded=0, spooled=True)
        if self.spool.has_pending():
            try:
                self.replay(tiers, max_batches=INLINE_REPLAY_BATCHES)
            except Exception:  # the outcomes above are committed: answer 201 whatever the replay did; the timer retries
                logger.exception("inline spool replay failed; the replay timer will retry")
        return OutcomesResponse(outcome_ids=ids, recorded=new)

    def settle_decision(self, decision_id: str, wait: bool = True, **usage: Any) -> None:
        """The proxy's settlement of a decision it served (`Store.settle_decision`, `wait` as it takes it). With the
        store unreachable it is spooled and replayed like an outcome: an answered call's real cost is booked once
        the store is back."""
        try:
            self.store.settle_decision(decision_id, wait=wait, **usage)
        except SQLAlchemyError as exc:
            if not is_outage(exc):
                raise
            self._spool([{"kind": SETTLEMENT, "outcome_id": SETTLEMENT + decision_id, "decision_id": decision_id,
                          **usage}], exc, settlement=True)  # fmt: skip

    def _spool(self, records: list[Record], exc: BaseException, settlement: bool = False) -> None:
        self.metrics.store_errors.inc()
        what = "the proxy's settlement(s)" if settlement else "outcome(s)"
        logger.error("outcome store unreachable (%s); spooling %d %s", describe(exc), len(records), what)
        try:
            self.spool.append(records)
        except OSError as err:
            logger.error("cannot write the outcome spool %s: %s", self.spool.path, err)
            raise StoreUnavailable("the outcome store is unreachable and the spool is unwritable; retry") from None
        (self.metrics.settlements_spooled if settlement else self.metrics.spooled).inc(len(records))

    def _resolve(self, records: Sequence[Record], tiers: TiersConfig) -> list[OutcomeRow]:
        """Fill prompt, model and session from each decision; check ownership and the model name."""
        found = self.store.get_decisions([r["decision_id"] for r in records if r["decision_id"]])
        booked = self._booked(records)
        return [self._resolve_one(r, found, tiers, booked) for r in records]

    def _booked(self, records: Sequence[Record]) -> Mapping[str, BookedOutcome]:
        """The stored outcomes of the records that name tokens and no cost: a retry of one whose tokens were
        priced keeps the cost it was booked at, so a price changed since does not make it a conflict."""
        return self.store.booked_outcomes(
            [r["outcome_id"] for r in records if r["cost_usd"] is None and r["tokens_in"] is not None]
        )

    def _resolve_one(
        self, r: Record, found: Mapping[str, DecisionRow], tiers: TiersConfig, booked: Mapping[str, BookedOutcome]
    ) -> OutcomeRow:
        prompt, model, session = r["prompt"], r["model"], r["session_id"]
        cost, tokens_in, tokens_out, latency_ms = r["cost_usd"], r["tokens_in"], r["tokens_out"], r["latency_ms"]
        if r["decision_id"] is not None:
            d = found.get(r["decision_id"])
            if d is None:
                raise NotFound(f"unknown decision_id {r['decision_id']}")
            check_owner(Principal(r["owner"], "admin" if r["admin"] else "client"), d.owner, f"decision {d.id}")
            if d.served_by == SERVED_BY_PROXY and not d.settled:
                # Until the answer ends, neither the model that answered (a fallback changes it) nor the real cost
                # is known: an outcome taken now would credit the routed model, and its retry would be a conflict.
                raise NotSettledYet(
                    f"decision {d.id} is still being served by the proxy (or its settlement waits in the spool): "
                    "post its outcome again once the answer has ended; the proxy then settles the cost and the model "
                    "that answered"
                )
            # A decision the proxy served knows the model that answered (after a fallback, not the routed one),
            # and its settled cost and usage.
            prompt, model, session = prompt or d.prompt, model or d.served_model or d.model, d.session_id
            if cost is None and d.cost_usd is None and tokens_in is not None and tokens_out is not None:
                before = booked.get(r["outcome_id"])
                if before is not None and before.is_for(d.id, tokens_in, tokens_out):
                    cost = before.cost_usd  # a retry: at the price it was booked at, whatever the price is now
                else:
                    cost = priced_tokens(tiers, model, tokens_in, tokens_out)  # tokens a gateway could not price
            if cost is None:
                cost, tokens_in, tokens_out = d.cost_usd, d.tokens_in, d.tokens_out
                latency_ms = latency_ms if latency_ms is not None else d.latency_ms
            if cost is None:
                why = "no upstream answered it, nothing was charged" if d.served_by else "the proxy did not serve it"
                raise Invalid(
                    f"decision {d.id} has no settled cost ({why}): give cost_usd, or tokens_in and tokens_out"
                )
        elif session is not None:
            owner = self.store.get_session(session)
            if owner is not None:
                check_owner(Principal(r["owner"], "admin" if r["admin"] else "client"), owner.owner)
        _check_model(model, tiers)
        return OutcomeRow(
            id=r["outcome_id"],
            prompt=prompt,
            model=model,
            score=r["score"],
            cost_usd=cost,
            decision_id=r["decision_id"],
            session_id=session,
            owner=r["owner"],
            tokens_in=tokens_in,
            tokens_out=tokens_out,
            latency_ms=latency_ms,
        )

    # ------------------------------------------------------------------ replay

    def replay(self, tiers: TiersConfig, max_batches: int | None = None) -> int:
        """Write spooled outcomes to the store; ones it refuses go to the rejected file. Never raises for the store.
        How many it took, not counting outcomes put back to wait for their door decision's settlement."""
        waiting = 0

        def write(batch: list[Record]) -> None:
            nonlocal waiting
            waiting += self._write_batch(batch, tiers)

        try:
            n = self.spool.drain(write, self._quarantine, max_batches) - waiting
        except (SQLAlchemyError, OSError) as exc:
            self.metrics.store_errors.inc()
            logger.warning("spool replay stopped, will retry (%s); %s", describe(exc), self.spool.path)
            return 0
        if n:
            self.metrics.replayed.inc(n)
            logger.info("replayed %d spooled outcome(s)", n)
        return n

    async def replay_every(self, interval_s: float, tiers: Callable[[], TiersConfig | None]) -> None:
        """Replay the spool every `interval_s` seconds while a model is loaded (the app's background task)."""
        while True:
            await asyncio.sleep(interval_s)
            current = tiers()
            if current is None or not self.spool.has_pending():
                continue
            try:
                await run_in_threadpool(self.replay, current)
            except Exception as exc:  # the timer must outlive any one failed replay
                logger.error("spool replay failed: %s", describe(exc))

    def status(self, last: int = 10) -> SpoolStatus:
        rejected, newest = self.spool.rejected(last)
        return SpoolStatus(
            pending=self.spool.pending(),
            rejected=rejected,
            last_rejected=[RejectedOutcome(**e) for e in newest],
        )

    def _quarantine(self, record: Record, reason: str, logged: str | None = None) -> None:
        """Set a record aside with its reason (the admin endpoint shows it); `logged` replaces a reason that may
        quote the record's values in the log."""
        self.spool.reject(record, reason)
        self.metrics.rejected.inc()
        logger.warning(
            "spooled outcome %s rejected (kept in %s): %s",
            record.get("outcome_id"),
            self.spool.rejected_path,
            logged or reason,
        )

    def _settle_at_hold(self, r: Record, why: str) -> None:
        """A spooled settlement that cannot be read still stands for an answered call: book the decision at its
        hold (`Store.settle_decision(at_hold=True)`), so its session's room is not held until an admin releases it.
        An outage raises (the batch is retried; a decision settles once); a refusal is logged."""
        decision_id = r.get("decision_id")
        if not isinstance(decision_id, str):
            return  # no decision to settle: the set-aside record is all there is
        reason = f"the door's settlement could not be read ({why}); booked at the decision's hold"
        try:
            self.store.settle_decision(decision_id, cost_usd=None, tokens_in=None, tokens_out=None, latency_ms=None,
                                       served_model=None, reason=reason, at_hold=True)  # fmt: skip
        except (SQLAlchemyError, UnicodeEncodeError) as exc:
            if not is_refusal(exc):
                raise
            logger.error("decision %r could not be booked at its hold: %s", decision_id[:80], describe(exc))

    def _write_batch(self, records: list[Record], tiers: TiersConfig) -> int:
        """Write one batch in one transaction; on a refusal, one record per transaction, quarantining refusals.

        An outage (or any error that is not the record's fault) raises: the drain stops and keeps the batch.
        Quarantining waits until the batch is through, so a retried batch is not quarantined again. Returns how
        many outcomes it put back in the spool to wait for their door decision's settlement.
        """
        rejects: list[tuple[Record, str, str | None]] = []
        valid: list[Record] = []
        for r in [r for r in records if r.get("kind") == SETTLEMENT]:  # first: the outcomes may be for them
            try:
                self.store.settle_decision(**_settlement_of(r))  # once: a replayed batch settles nothing again
            except (ValueError, TypeError) as exc:
                rejects.append((r, f"invalid settlement: {exc}", None))
                self._settle_at_hold(r, str(exc))
            except (SQLAlchemyError, UnicodeEncodeError) as exc:
                if not is_refusal(exc):
                    raise
                rejects.append((r, describe(exc), f"the store refused it: {refusal_class(exc)}"))
        for r in [r for r in records if r.get("kind") != SETTLEMENT]:
            checked, reason = _revalidate(r)
            if checked is None:
                rejects.append((r, reason, None))
            else:
                valid.append(checked)
        found = self.store.get_decisions([r["decision_id"] for r in valid if r["decision_id"]])
        booked = self._booked(valid)
        resolved: list[tuple[Record, OutcomeRow]] = []
        later: list[Record] = []
        for r in valid:
            try:
                resolved.append((r, self._resolve_one(r, found, tiers, booked)))
            except NotSettledYet as exc:  # the door's settlement may come (an answer ending, a spooled settlement)
                age = datetime.now(UTC) - found[r["decision_id"]].created_at
                young = age < timedelta(seconds=SETTLEMENT_WAIT_S)
                if young:
                    later.append(r)
                else:
                    rejects.append((r, exc.detail, None))
            except ServiceError as exc:
                rejects.append((r, exc.detail, None))
        try:
            self.store.record_outcomes([row for _, row in resolved])
        except (SQLAlchemyError, UnicodeEncodeError, OutcomeConflict, DecisionGone) as exc:
            if not is_refusal(exc):
                raise
            for r, row in resolved:
                try:
                    self.store.record_outcomes([row])
                except OutcomeConflict as conflict:  # names the id and fields, never their values
                    rejects.append((r, conflict_detail(conflict), None))
                except DecisionGone as gone:
                    rejects.append((r, str(gone), None))
                except (SQLAlchemyError, UnicodeEncodeError) as one:
                    if not is_refusal(one):
                        raise
                    rejects.append((r, describe(one), f"the store refused it: {refusal_class(one)}"))
        for r, reason, logged in rejects:
            self._quarantine(r, reason, logged)
        if later:  # behind the rest, for the next replay (the batch is through: it is not re-read)
            self.spool.append(later)  # as revalidated: the shape `record` spools
        return len(later)


def outcome_id_of(item: OutcomeIn) -> str:
    """The client's outcome id; else, for a decision's outcome, one derived from the decision; else a new one."""
    if item.outcome_id is not None:
        return item.outcome_id
    return DECISION_OUTCOME + item.decision_id if item.decision_id is not None else uuid.uuid4().hex


def conflict_detail(exc: OutcomeConflict) -> str:
    """Why an outcome was refused as a conflict, in the terms the client used."""
    if not exc.outcome_id.startswith(DECISION_OUTCOME) or not exc.fields:
        return str(exc)
    decision = exc.outcome_id.removeprefix(DECISION_OUTCOME)
    return (
        f"decision {decision} already has an outcome with a different {', '.join(exc.fields)}; a retry must repeat "
        "it, and more than one outcome for a decision needs an outcome_id on each"
    )


SETTLEMENT = "settlement:"  # a spooled record's kind, and its id's prefix: the proxy's settlement of a decision
SETTLEMENT_WAIT_S = 3600  # a spooled outcome waits this long for its door decision's settlement, then is set aside
# Each number's type and bound: what /outcomes accepts for an outcome's (the door's own settlements stay within them).
_SETTLEMENT_NUMBERS = {
    "cost_usd": (float, MAX_OUTCOME_COST_USD),
    "tokens_in": (int, MAX_TOKENS),
    "tokens_out": (int, MAX_TOKENS),
    "latency_ms": (float, MAX_LATENCY_MS),
}
_SETTLEMENT_TEXTS = ("served_model", "reason")


def _settlement_of(r: Record) -> dict[str, Any]:
    """A spooled settlement's `Store.settle_decision` arguments, checked (ValueError or TypeError if not)."""
    if not isinstance(r.get("decision_id"), str) or not isinstance(r.get("sessionless", False), bool):
        raise ValueError("no decision_id or sessionless flag")
    out: dict[str, Any] = {"decision_id": r["decision_id"], "sessionless": r.get("sessionless", False)}
    for name, (kind, most) in _SETTLEMENT_NUMBERS.items():
        value = r.get(name)
        number = isinstance(value, int | float) and not isinstance(value, bool)
        if value is not None and not (number and 0 <= value <= most):
            raise ValueError(f"{name} is not a number from 0 to {most:g}")  # NaN fails the range too
        out[name] = None if value is None else kind(value)
    for name in _SETTLEMENT_TEXTS:
        if r.get(name) is not None and not isinstance(r[name], str):
            raise TypeError(f"{name} is not text")
        out[name] = r.get(name)
    return out


def _revalidate(r: Record) -> tuple[Record | None, str]:
    """The record checked again against today's schema (older spools hold what it now refuses), or why not."""
    try:
        item = OutcomeIn.model_validate({k: r.get(k) for k in OutcomeIn.model_fields})
    except ValidationError as exc:
        return None, f"invalid: {_invalid_reason(exc)}"
    owner = r.get("owner")
    if not isinstance(r.get("outcome_id"), str) or not isinstance(r.get("admin"), bool):
        return None, "invalid: no outcome_id or admin flag"
    if owner is not None and not isinstance(owner, str):
        return None, "invalid: owner is not a string"
    # spooled_at: a record put back or set aside keeps its age for the retention purge
    checked = {**item.model_dump(), "outcome_id": r["outcome_id"], "owner": owner, "admin": r["admin"]}
    return checked | ({"spooled_at": r["spooled_at"]} if isinstance(r.get("spooled_at"), str) else {}), ""


def _check_model(model: str | None, tiers: TiersConfig, loc: tuple[str | int, ...] = ("body", "model")) -> None:
    if model is not None and model not in tiers.known_models:
        raise Invalid(f"model '{model}' is not in the tiers config", loc)
