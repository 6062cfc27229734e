"""Record outcomes durably: in the store, or, while it is down, in the fsynced spool replayed later."""

from __future__ import annotations

import json
import logging
import uuid
from collections.abc import Sequence
from typing import Any

from sqlalchemy.exc import DBAPIError

from router.schema import TiersConfig
from serving.errors import Forbidden, Invalid, NotFound, ServiceError
from serving.metrics import Metrics
from serving.schemas import OutcomeIn, OutcomesResponse
from serving.security import Principal, check_owner
from serving.spool import Spool
from serving.store import OutcomeRow, Store

logger = logging.getLogger(__name__)


class OutcomeRecorder:
    def __init__(self, store: Store, spool: Spool, metrics: Metrics):
        self.store = store
        self.spool = spool
        self.metrics = metrics

    def record(self, items: Sequence[OutcomeIn], principal: Principal, tiers: TiersConfig) -> OutcomesResponse:
        """Store the outcomes (or spool them when the store is down); every id is durable on return."""
        records = [
            {
                **item.model_dump(),
                "outcome_id": item.outcome_id or uuid.uuid4().hex,
                "owner": principal.key_hash,
                "admin": principal.is_admin,
            }
            for item in items
        ]
        ids = [r["outcome_id"] for r in records]
        try:
            rows = self._resolve(records, tiers)
            new = self.store.record_outcomes(rows)
        except DBAPIError as exc:
            self.metrics.store_errors.inc()
            logger.error("outcome store down (%s); spooling %d outcome(s) to %s", exc, len(records), self.spool.path)
            self.spool.append(records)
            self.metrics.spooled.inc(len(records))
            return OutcomesResponse(outcome_ids=ids, recorded=0, spooled=True)
        self.replay(tiers)
        return OutcomesResponse(outcome_ids=ids, recorded=new)

    def _resolve(self, records: Sequence[dict[str, Any]], tiers: TiersConfig) -> list[OutcomeRow]:
        """Fill prompt, model and session from each decision; check ownership and the model name."""
        found = self.store.get_decisions([r["decision_id"] for r in records if r["decision_id"]])
        rows = []
        for r in records:
            prompt, model, session = r["prompt"], r["model"], r["session_id"]
            if r["decision_id"] is not None:
                d = found.get(r["decision_id"])
                if d is None:
                    raise NotFound(f"unknown decision_id {r['decision_id']}")
                if not r["admin"] and d.owner is not None and d.owner != r["owner"]:
                    raise Forbidden(f"decision {d.id} belongs to another client")
                prompt, model, session = prompt or d.prompt, model or d.model, d.session_id
            elif session is not None:
                owner = self.store.get_session(session)
                if owner is not None:
                    check_owner(Principal(r["owner"], "admin" if r["admin"] else "client"), owner.owner)
            if model not in tiers.known_models:
                raise Invalid(f"model '{model}' is not in the tiers config")
            rows.append(
                OutcomeRow(
                    id=r["outcome_id"],
                    prompt=prompt,
                    model=model,
                    score=r["score"],
                    cost_usd=r["cost_usd"],
                    decision_id=r["decision_id"],
                    session_id=session,
                    owner=r["owner"],
                    tokens_in=r["tokens_in"],
                    tokens_out=r["tokens_out"],
                    latency_ms=r["latency_ms"],
                )
            )
        return rows

    def replay(self, tiers: TiersConfig) -> int:
        """Write spooled outcomes to the store; ones it can never take go to `<spool>.rejected`."""

        def write(records: list[dict[str, Any]]) -> None:
            rows = []
            for r in records:
                try:
                    rows.extend(self._resolve([r], tiers))
                except ServiceError as exc:
                    logger.error("spooled outcome %s rejected: %s", r["outcome_id"], exc.detail)
                    with open(self.spool.path.with_name(self.spool.path.name + ".rejected"), "a") as fh:
                        fh.write(json.dumps({**r, "error": exc.detail}) + "\n")
            self.store.record_outcomes(rows)

        try:
            n = self.spool.drain(write)
        except DBAPIError as exc:
            self.metrics.store_errors.inc()
            logger.warning("spool replay failed, will retry: %s", exc)
            return 0
        if n:
            logger.info("replayed %d spooled outcome(s)", n)
        return n
