"""Route prompts: score them, apply the policy and the session's budget, record the decisions."""

from __future__ import annotations

import uuid
from collections.abc import Sequence

from infra.store import DecisionRow, SessionRow, Store
from router.policy import Decision
from serving.errors import Invalid, OverBudget, TooLarge
from serving.runtime import Runtime
from serving.schemas import RouteOptions, RouteResponse
from serving.security import Principal, check_owner


def check_sizes(prompts: Sequence[str], max_chars: int, max_batch: int) -> None:
    if len(prompts) > max_batch:
        raise TooLarge(f"{len(prompts)} prompts is over the batch limit of {max_batch}")
    for i, p in enumerate(prompts):
        if len(p) > max_chars:
            raise TooLarge(f"prompt {i} has {len(p)} characters, over the limit of {max_chars}")


def over_budget(row: SessionRow, detail: str, needed_usd: float | None = None) -> OverBudget:
    return OverBudget(
        detail,
        body={
            "session_id": row.id,
            "spent_usd": row.spent_usd,
            "reserved_usd": row.reserved_usd,
            "cap_usd": row.cap_usd,
            "status": row.status,
            "needed_usd": needed_usd,
        },
    )


def frozen_error(row: SessionRow) -> OverBudget:
    return over_budget(row, f"session {row.id} is frozen at its spend cap; an admin must confirm a new cap")


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
        raise Invalid(str(exc.args[0]), ("body", "min_tier")) from None
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
        decided = rt.router.decide(quality, cost, target, min_tier, opts.max_cost_usd, opts.cost_weight_per_usd)
        rows = rows_for(decided, None)
        store.record_decisions(rows)
    else:
        refusal: OverBudget | None = None
        with store.lock_session(opts.session_id, principal.key_hash) as locked:
            check_owner(principal, locked.row.owner)
            if locked.row.status == "frozen":
                raise frozen_error(locked.row)
            floor = rt.router.cheapest_allowed(cost, min_tier, opts.max_cost_usd)
            left = locked.row.budget_left_usd
            if left is not None and float(floor.sum()) > left:
                if left < float(floor.min()):
                    # Not even one of these prompts fits: the session is spent, as a single /route finds it.
                    locked.freeze()
                    refusal = frozen_error(locked.row)
                else:
                    refusal = over_budget(
                        locked.row,
                        f"these {len(prompts)} prompts need at least ${float(floor.sum()):.6g} at their cheapest "
                        f"allowed tiers, but session {locked.row.id} has ${left:.6g} left; nothing was reserved "
                        "and the session stays open: send fewer prompts",
                        float(floor.sum()),
                    )
            else:
                decided = rt.router.decide(
                    quality, cost, target, min_tier, opts.max_cost_usd, opts.cost_weight_per_usd, left
                )
                rows = rows_for(decided, opts.session_id)
                locked.reserve(rows)
            session = locked.row
        if refusal is not None:
            raise refusal  # after the transaction: a freeze is committed
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
