"""Route prompts: score them, apply the policy and the session's budget, explore if enabled, record the decisions.

Each decision keeps its evidence for off-policy evaluation: the tier served, the probability it had
(`propensity`, 1.0 without exploration), the whole logging distribution, and the per-tier predictions and
expected costs.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
from starlette.concurrency import run_in_threadpool

from infra.settings import Settings
from infra.store import DecisionRow, SessionRow, Store
from router.exploration import explore
from router.novelty import OOD_NOVELTY
from router.policy import Decision
from serving.decision_writer import DecisionWriter
from serving.errors import Invalid, OverBudget, TooLarge
from serving.guarantee import guarantee_point, with_default_guarantee
from serving.metrics import Metrics
from serving.runtime import Runtime
from serving.schemas import CountedRouteOptions, RouteOptions, RouteResponse
from serving.security import Principal, check_owner

# With a cheap embedder (Runtime.inline_scoring: the static one), a sessionless request of at most this many prompts
# and characters is routed on the event loop (about 0.3 ms for a short prompt); a bigger one, or any request with a
# transformer embedder (milliseconds per prompt, GIL released), in the threadpool, so it never holds the loop long.
INLINE_PROMPTS = 8
INLINE_CHARS = 16_384


def check_sizes(prompts: Sequence[str], max_chars: int, max_batch: int) -> None:
    if len(prompts) > max_batch:
        raise TooLarge(f"{len(prompts)} prompts is over the batch limit of {max_batch}")
    for i, p in enumerate(prompts):
        if len(p) > max_chars:
            raise TooLarge(f"prompt {i} has {len(p)} characters, over the limit of {max_chars}")


# Retry-After of a request the door's calls in flight leave no room for: a chat answer takes seconds.
RETRY_IN_FLIGHT_S = 2


def over_budget(
    row: SessionRow,
    detail: str,
    needed_usd: float | None = None,
    retry_after_s: int | None = None,
    held_by: list[str] | None = None,
) -> OverBudget:
    body = {
        "session_id": row.id,
        "spent_usd": row.spent_usd,
        "reserved_usd": row.reserved_usd,
        "cap_usd": row.cap_usd,
        "status": row.status,
        "needed_usd": needed_usd,
    }
    return OverBudget(detail, body={**body, "held_by": held_by} if held_by else body, retry_after_s=retry_after_s)


def frozen_error(row: SessionRow) -> OverBudget:
    return over_budget(row, f"session {row.id} is frozen at its spend cap; an admin must confirm a new cap")


@dataclass(frozen=True)
class Exploration:
    """How a request explores: uniform rate ε, boundary rate ε_b and where the neighbouring operating points are."""

    rate: float = 0.0
    boundary_rate: float = 0.0
    boundary_factor: float = 2.0
    boundary_target_step: float = 0.1
    boundary_cost_weights: tuple[float, ...] = ()  # fixed neighbouring operating points (λ), instead of the above

    @property
    def on(self) -> bool:
        return self.rate > 0 or self.boundary_rate > 0


def exploration_rate(settings: Settings, principal: Principal, opts: RouteOptions) -> Exploration:
    """How this request explores: the service's settings, nothing when the request or its key opts out."""
    if not opts.explore or (principal.key_hash is not None and principal.key_hash in settings.exploration_opt_out_keys):
        return Exploration()
    return Exploration(
        settings.exploration_rate,
        settings.exploration_boundary_rate,
        settings.exploration_boundary_factor,
        settings.exploration_boundary_target_step,
        tuple(settings.exploration_boundary_cost_weights),
    )


def boundary_tiers(
    rt: Runtime,
    quality: np.ndarray,
    cost: np.ndarray,
    knob: tuple[float, float | None],
    opts: RouteOptions,
    min_tier: int,
    how: Exploration,
) -> np.ndarray:
    """(n, k): the tiers the policy's neighbouring operating points choose: the configured λ values when there are
    any (aimed at the budgets an operator will compare), else around the (target, λ) the request is decided with,
    λ times and over the factor, or the quality target plus and minus the step."""
    target, lam = knob
    if how.boundary_cost_weights:
        knobs: list[tuple[float, float | None]] = [(target, w) for w in how.boundary_cost_weights]
    elif lam is not None:
        knobs = [(target, lam * how.boundary_factor), (target, lam / how.boundary_factor)]
    else:
        knobs = [
            (min(target + how.boundary_target_step, 1.0), None),
            (max(target - how.boundary_target_step, 0.0), None),
        ]
    near = np.zeros(quality.shape, dtype=bool)
    for t, w in knobs:
        for i, d in enumerate(rt.router.decide(quality, cost, t, min_tier, opts.max_cost_usd, w)):
            near[i, d.tier_index] = True
    return near


def route(
    rt: Runtime,
    store: Store,
    principal: Principal,
    prompts: Sequence[str],
    opts: RouteOptions,
    default_target: float,
    epsilon: float | Exploration = 0.0,
    metrics: Metrics | None = None,
    rng: np.random.Generator | None = None,
    novelty_limit: float | None = OOD_NOVELTY,
    record: Callable[[Sequence[DecisionRow]], None] | None = None,
    served_by: str | None = None,
) -> list[RouteResponse]:
    """Decide a tier for each prompt; with a session, reserve the expected cost atomically or freeze.

    With `epsilon` > 0 a decision may serve another tier the request allows; in a session with a cap,
    exploration spends only the slack the policy's decisions leave under it, so it never passes the cap.
    Requests with a quality guarantee and out-of-distribution prompts never explore. `epsilon` is ε, or the whole
    `Exploration` (uniform and boundary) that `exploration_rate` gives for the request. Sessionless decisions go
    to `record` when given (the caller then writes them before answering), else to the store at once. `served_by`
    is stored on each decision (infra.store.SERVED_BY_PROXY: the door serves and settles it).
    """
    try:
        min_tier = rt.tier_index(opts.min_tier)
    except (KeyError, IndexError) as exc:
        raise Invalid(str(exc.args[0]), ("body", "min_tier")) from None
    target, cost_weight = rt.router.knob(opts.quality_target, opts.cost_weight_per_usd, default_target)
    point = guarantee_point(rt.router, opts)
    counted = opts.input_tokens if isinstance(opts, CountedRouteOptions) else None
    quality, cost, novelty = rt.router.assess(
        prompts,
        None if opts.task is None else [opts.task] * len(prompts),
        None if counted is None else [counted] * len(prompts),
    )
    # The prompts' own expected cost, where the caller counted a larger (or smaller) input: with the counted cost,
    # what says whether a session is spent (a large counted input makes a request wait or shrink, never freezes it).
    bare = cost if counted is None else rt.router.expected_cost(prompts)
    # A guarantee's λ trades quality against the cost scale it was calibrated on: the training prices and the
    # prompts' own estimate, whatever the live prices (a price change moved its choices off the certified ones).
    certified_cost = None if point is None else rt.router.calibration_cost(prompts)
    hint = rt.router.task_hint_note(opts.task, listed_by="GET /tiers")

    names = rt.tiers.names
    how = epsilon if isinstance(epsilon, Exploration) else Exploration(rate=epsilon)
    draws = rng or (np.random.default_rng() if how.on else None)
    near = boundary_tiers(rt, quality, cost, (target, cost_weight), opts, min_tier, how) if how.boundary_rate else None

    def rows_for(decisions: list[Decision], session: str | None, budget_left: float | None = None) -> list[DecisionRow]:
        rows = []
        # What the cap leaves after the policy's choices: the most exploration may add, over the whole batch.
        slack = (
            None
            if budget_left is None
            else budget_left - sum(float(cost[i, d.tier_index]) for i, d in enumerate(decisions))
        )
        for i, d in enumerate(decisions):
            choice, served, reason = d.tier_index, d.tier_index, d.reason + hint
            probs = np.zeros(len(names))
            probs[choice] = 1.0
            # Never where the policy must be conservative: an out-of-distribution prompt, or a quality guarantee.
            ood = novelty is not None and novelty_limit is not None and novelty[i] >= novelty_limit
            if how.on and draws is not None and point is None and not ood:
                budget = None if slack is None else float(cost[i, choice]) + max(slack, 0.0)
                draw = explore(
                    choice,
                    cost[i],
                    how.rate,
                    draws,
                    min_tier,
                    opts.max_cost_usd,
                    budget,
                    None if near is None else near[i],
                    how.boundary_rate,
                )
                served, probs = draw.tier_index, draw.probs
                if draw.explored:
                    extra = float(cost[i, served] - cost[i, choice])
                    slack = None if slack is None else slack - extra
                    reason = (
                        f"explored: served {names[served]} (probability {draw.propensity:.3g}) instead of the "
                        f"policy's choice, so off-policy evaluation can learn about it; the policy: {d.reason}{hint}"
                    )
                    if metrics is not None:
                        metrics.explored.inc()
                        metrics.exploration_served_cost.inc(float(cost[i, served]))
                        metrics.exploration_policy_cost.inc(float(cost[i, choice]))
            tier = rt.tiers.tiers[served]
            expected = float(cost[i, served])
            rows.append(
                DecisionRow(
                    id=uuid.uuid4().hex,
                    prompt=prompts[i],
                    tier=tier.name,
                    model=tier.model,
                    expected_cost_usd=expected,
                    router_version=rt.version,
                    reason=reason,
                    session_id=session,
                    owner=principal.key_hash,
                    reserved_usd=expected if session else 0.0,
                    metadata=opts.metadata,
                    propensity=float(probs[served]),
                    explored=served != choice,
                    predicted_quality={n: float(q) for n, q in zip(names, quality[i], strict=True)},
                    propensities={n: float(p) for n, p in zip(names, probs, strict=True)},
                    expected_costs={n: float(c) for n, c in zip(names, cost[i], strict=True)},
                    novelty=None if novelty is None else float(novelty[i]),
                    task=opts.task,
                    served_by=served_by,
                    input_tokens=counted,
                )
            )
        return rows

    def decide(budget_usd: float | None) -> list[Decision]:
        return rt.router.decide(
            quality,
            cost,
            target,
            min_tier,
            opts.max_cost_usd,
            cost_weight,
            budget_usd,
            novelty,
            novelty_limit,
            point,
            guarantee_cost=certified_cost,
        )

    session: SessionRow | None = None
    if opts.session_id is None:
        decided = decide(None)
        rows = rows_for(decided, None)
        (record or store.record_decisions)(rows)
    else:
        refusal: OverBudget | None = None
        with store.lock_session(opts.session_id, principal.key_hash) as locked:
            check_owner(principal, locked.row.owner)
            if locked.row.status == "frozen":
                raise frozen_error(locked.row)
            floor = rt.router.cheapest_allowed(cost, min_tier, opts.max_cost_usd)
            left = locked.row.budget_left_usd
            if left is not None and float(floor.sum()) > left:
                # The worst cases the door holds for its calls in flight come back when they end: what they hold
                # makes a request wait (402, session open), never freeze the session.
                held = locked.held_in_flight()
                # Whether the session is spent is judged on what it can still buy at all: a prompt at the cheapest
                # tier, its input as estimated or as counted. A request that asks for more (a min_tier, a large
                # counted input) gets an open 402 and may ask again for less; it never freezes the session.
                if left + held < min(float(rt.router.cheapest_allowed(c).min()) for c in (cost, bare)):
                    # Not even one of these prompts fits: the session is spent, as a single /route finds it.
                    locked.freeze()
                    refusal = frozen_error(locked.row)
                elif left + held < float(floor.min()):
                    asks = [f"min_tier {rt.tiers.names[min_tier]}"] * (min_tier > 0)
                    asks += [f"an input of {counted} tokens as counted"] * (counted is not None)
                    refusal = over_budget(
                        locked.row,
                        f"this request needs at least ${float(floor.min()):.6g} at its cheapest allowed tier"
                        + (f" ({' and '.join(asks)})" if asks else "")
                        + f", but session {locked.row.id} has ${left:.6g} left"
                        + (f" (and ${held:.6g} held by calls in flight)" if held > 0 else "")
                        + "; nothing was reserved and the session stays open: ask for less (a lower min_tier, a "
                        "shorter input)",
                        float(floor.min()),
                    )
                elif left < float(floor.min()):
                    refusal = over_budget(
                        locked.row,
                        f"session {locked.row.id} has ${left:.6g} left now: calls in flight hold ${held:.6g} of "
                        "its cap until they end (the proxy's worst case of each answer); nothing was reserved and "
                        "the session stays open: retry when they end",
                        float(floor.min()),
                        retry_after_s=RETRY_IN_FLIGHT_S,
                        held_by=locked.holding(),
                    )
                else:
                    waiting = f" (calls in flight hold ${held:.6g} more until they end)" if held > 0 else ""
                    refusal = over_budget(
                        locked.row,
                        f"these {len(prompts)} prompts need at least ${float(floor.sum()):.6g} at their cheapest "
                        f"allowed tiers, but session {locked.row.id} has ${left:.6g} left{waiting}; nothing was "
                        "reserved and the session stays open: send fewer prompts",
                        float(floor.sum()),
                        retry_after_s=RETRY_IN_FLIGHT_S if held > 0 else None,
                        held_by=locked.holding() if held > 0 else None,
                    )
            else:
                decided = decide(left)
                rows = rows_for(decided, opts.session_id, left)
                locked.reserve(rows)
            session = locked.row
        if refusal is not None:
            raise refusal  # after the transaction: a freeze is committed
    return [
        RouteResponse(
            decision_id=r.id,
            tier=r.tier,
            model=r.model,
            predicted_quality=r.predicted_quality or {},
            expected_cost_usd=r.expected_cost_usd,
            router_version=r.router_version,
            reason=r.reason,
            session_id=r.session_id,
            budget_left_usd=session.budget_left_usd if session else None,
        )
        for i, r in enumerate(rows)
    ]


def route_request(
    rt: Runtime,
    store: Store,
    principal: Principal,
    prompts: Sequence[str],
    opts: RouteOptions,
    settings: Settings,
    metrics: Metrics | None = None,
    record: Callable[[Sequence[DecisionRow]], None] | None = None,
    served_by: str | None = None,
) -> list[RouteResponse]:
    """The service's one way to route a request, for /route, /route/batch and the OpenAI-compatible door alike:
    size limits, the request's exploration, the service's default quality guarantee and novelty limit, then `route`,
    counting each decision on /metrics once it is written (by the caller, who writes them, when given `record`)."""
    check_sizes(prompts, settings.max_prompt_chars, settings.max_batch)
    epsilon = exploration_rate(settings, principal, opts)
    opts = with_default_guarantee(opts, settings, rt.router, rt.version)
    out = route(
        rt,
        store,
        principal,
        prompts,
        opts,
        settings.quality_target,
        epsilon,
        metrics,
        None,
        settings.novelty_limit,
        record,
        served_by,
    )
    if record is None:
        count_decisions(metrics, out)
    return out


def count_decisions(metrics: Metrics | None, decisions: Sequence[RouteResponse]) -> None:
    if metrics is not None:
        for d in decisions:
            metrics.decisions.labels(d.tier, d.model).inc()


@dataclass(frozen=True)
class Routing:
    """What routing a request on the event loop needs: the model, the store and its group committer, the service's
    settings and metrics, and the caller."""

    rt: Runtime
    store: Store
    writer: DecisionWriter | None
    settings: Settings
    metrics: Metrics | None
    caller: Principal
    served_by: str | None = None  # stored on the decisions (infra.store.SERVED_BY_PROXY for the door's)


async def route_request_async(ctx: Routing, prompts: Sequence[str], opts: RouteOptions) -> list[RouteResponse]:
    """`route_request` from the event loop: with a cheap embedder (Runtime.inline_scoring) a small sessionless request
    is scored and decided right here (under a millisecond of CPU; the threadpool hops of a sync handler cost about
    0.25 ms), else in the threadpool; its decisions are group-committed by the writer before it answers. A session's
    reservation is a locking transaction: that one goes to the threadpool whole."""
    out, pending = await _decide(ctx, prompts, opts)
    await _commit(ctx, out, pending)
    return out


async def route_request_started(
    ctx: Routing, prompts: Sequence[str], opts: RouteOptions, after: asyncio.Event | None = None
) -> tuple[list[RouteResponse], asyncio.Future[None]]:
    """`route_request_async` with the commit of its decisions started, not awaited: whoever acknowledges anything of
    them must await the returned future first (the proxy overlaps it with the upstream call). With `after`, the
    commit is queued only once that event is set (DecisionWriter.write)."""
    out, pending = await _decide(ctx, prompts, opts)
    if ctx.writer is None or pending is None:
        done: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        done.set_result(None)
        return out, done
    return out, asyncio.ensure_future(_commit(ctx, out, pending, after))


async def _commit(
    ctx: Routing, out: list[RouteResponse], pending: list[DecisionRow] | None, after: asyncio.Event | None = None
) -> None:
    """Group-commit the decisions `_decide` left to the writer (None: written already), then count them."""
    if ctx.writer is not None and pending is not None:
        await ctx.writer.write(pending, after)
        count_decisions(ctx.metrics, out)


async def _decide(
    ctx: Routing, prompts: Sequence[str], opts: RouteOptions
) -> tuple[list[RouteResponse], list[DecisionRow] | None]:
    """The responses, and the decisions left for the writer to write (None: written already, in the threadpool)."""
    args = (ctx.rt, ctx.store, ctx.caller, prompts, opts, ctx.settings, ctx.metrics)
    if ctx.writer is None or opts.session_id is not None:
        return await run_in_threadpool(route_request, *args, None, ctx.served_by), None
    pending: list[DecisionRow] = []
    inline = ctx.rt.inline_scoring and len(prompts) <= INLINE_PROMPTS and sum(len(p) for p in prompts) <= INLINE_CHARS
    out = (
        route_request(*args, pending.extend, ctx.served_by)
        if inline
        else await run_in_threadpool(route_request, *args, pending.extend, ctx.served_by)
    )
    return out, pending
