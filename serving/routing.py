"""Route prompts: score them, apply the policy and the session's budget, record the decisions."""

from __future__ import annotations

import uuid
from collections.abc import Sequence

import numpy as np

from router.policy import Decision, NoTierFits, decide
from serving.errors import Invalid, SessionFrozen, TooLarge
from serving.runtime import Runtime
from serving.schemas import RouteOptions, RouteResponse
from serving.security import Principal, check_owner
from serving.store import DecisionRow, SessionRow, Store


def check_sizes(prompts: Sequence[str], max_chars: int, max_batch: int) -> None:
    if len(prompts) > max_batch:
        raise TooLarge(f"{len(prompts)} prompts is over the batch limit of {max_batch}")
    for i, p in enumerate(prompts):
        if len(p) > max_chars:
            raise TooLarge(f"prompt {i} has {len(p)} characters, over the limit of {max_chars}")


def frozen_error(row: SessionRow) -> SessionFrozen:
    return SessionFrozen(
        f"session {row.id} is frozen at its spend cap; an admin must confirm a new cap",
        body={
            "session_id": row.id,
            "spent_usd": row.spent_usd,
            "reserved_usd": row.reserved_usd,
            "cap_usd": row.cap_usd,
            "status": "frozen",
        },
    )


def _decide_all(
    rt: Runtime,
    quality: np.ndarray,
    cost: np.ndarray,
    target: float,
    min_tier: int,
    max_cost_usd: float | None,
    budget_usd: float | None,
    cost_weight: float | None = None,
) -> list[Decision] | None:
    """One decision per prompt, spending down `budget_usd`; None when the budget covers no allowed tier."""
    names = rt.tiers.names
    out = []
    for q, c in zip(quality, cost, strict=True):
        try:
            d = decide(q, c, names, target, min_tier, max_cost_usd, budget_usd, cost_weight)
        except NoTierFits:
            # Raises NoTierFits (a 422) when the request's own constraints exclude every tier.
            decide(q, c, names, target, min_tier, max_cost_usd, cost_weight=cost_weight)
            return None
        out.append(d)
        if budget_usd is not None:
            budget_usd = max(budget_usd - float(c[d.tier_index]), 0.0)
    return out


def route(
    rt: Runtime,
    store: Store,
    principal: Principal,
    prompts: Sequence[str],
    opts: RouteOptions,
    default_target: float,
) -> list[RouteResponse]:
    """Decide a tier for each prompt; with a session, reserve the expected cost atomically or freeze."""
    try:
        min_tier = rt.tier_index(opts.min_tier)
    except (KeyError, IndexError) as exc:
        raise Invalid(str(exc.args[0])) from None
    target = default_target if opts.quality_target is None else opts.quality_target
    quality, cost = rt.score(prompts)

    def rows_for(decisions: list[Decision], session: str | None) -> list[DecisionRow]:
        rows = []
        for i, d in enumerate(decisions):
            tier = rt.tiers.tiers[d.tier_index]
            expected = float(cost[i, d.tier_index])
            rows.append(
                DecisionRow(
                    id=uuid.uuid4().hex,
                    prompt=prompts[i],
                    tier=tier.name,
                    model=tier.model,
                    expected_cost_usd=expected,
                    router_version=rt.version,
                    reason=d.reason,
                    session_id=session,
                    owner=principal.key_hash,
                    reserved_usd=expected if session else 0.0,
                    metadata=opts.metadata,
                )
            )
        return rows

    session: SessionRow | None = None
    if opts.session_id is None:
        decided = _decide_all(rt, quality, cost, target, min_tier, opts.max_cost_usd, None, opts.cost_weight_per_usd)
        assert decided is not None
        rows = rows_for(decided, None)
        store.record_decisions(rows)
    else:
        with store.lock_session(opts.session_id, principal.key_hash) as locked:
            check_owner(principal, locked.row.owner)
            if locked.row.status == "frozen":
                decided = None
            else:
                decided = _decide_all(
                    rt,
                    quality,
                    cost,
                    target,
                    min_tier,
                    opts.max_cost_usd,
                    locked.row.budget_left_usd,
                    opts.cost_weight_per_usd,
                )
                if decided is None:
                    locked.freeze()
            if decided is not None:
                rows = rows_for(decided, opts.session_id)
                locked.reserve(rows)
            session = locked.row
        if decided is None:
            raise frozen_error(session)
    return [
        RouteResponse(
            decision_id=r.id,
            tier=r.tier,
            model=r.model,
            predicted_quality={n: float(q) for n, q in zip(rt.tiers.names, quality[i], strict=True)},
            expected_cost_usd=r.expected_cost_usd,
            router_version=r.router_version,
            reason=r.reason,
            session_id=r.session_id,
            budget_left_usd=session.budget_left_usd if session else None,
        )
        for i, r in enumerate(rows)
    ]
