"""POST /decisions/{id}/usage: settle a decision the caller served itself, with its real cost and no score.

A caller that dispatched a routed call on its own (the LiteLLM routing strategy, any gateway) books what the call
cost here, as the OpenAI-compatible door does in process: the decision's reservation is released and its cost
spent on the session, once. `cost_usd: null` releases a failed call's reservation and charges nothing; `cost_usd`
left out with `tokens_in` and `tokens_out` given books the tokens at the tiers config's prices of the model that
served (a caller, like LiteLLM for a deployment it has no price for, that knows the tokens but not the cost). A later
`POST /outcomes` for the decision needs only the score and never charges again.

POST /decisions/{id}/release frees a decision's reservation and leaves it open, for a call whose end the caller
cannot see (cancelled before it answered): a usage or outcome reported later still books its cost.
"""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Path
from pydantic import AfterValidator, BaseModel, ConfigDict, Field, StrictInt, StringConstraints, model_validator
from starlette.concurrency import run_in_threadpool

from infra.store import SERVED_BY_PROXY, DecisionRow
from router.text import MAX_TOKENS
from serving.deps import Caller, MetricsDep, RuntimeDep, StoreDep
from serving.errors import BODY_ERRORS, CALLER_ERRORS, Conflict, Invalid, NotFound, error
from serving.pricing import priced_tokens
from serving.schemas import MAX_LATENCY_MS, MAX_OUTCOME_COST_USD, Usd, _storable
from serving.security import check_owner

router = APIRouter(prefix="/decisions", tags=["decisions"], responses=CALLER_ERRORS)
DecisionPath = Annotated[str, Path(pattern=r"^[A-Za-z0-9._:\-]{1,32}$", description="the decision_id /route answered")]
Tokens = Annotated[StrictInt, Field(ge=0, le=MAX_TOKENS)]


class UsageIn(BaseModel):
    """What serving a routed call took. `cost_usd` null: the call failed; its reservation is released, nothing paid.
    `cost_usd` left out: tierwise prices `tokens_in` and `tokens_out` (both needed) at the tiers config's prices."""

    model_config = ConfigDict(extra="forbid")
    cost_usd: Annotated[Usd, Field(le=MAX_OUTCOME_COST_USD)] | None = Field(
        None,
        description=f"what the call cost, 0 to {MAX_OUTCOME_COST_USD:.0e} USD; null releases a failed call's "
        "reservation and charges nothing; left out, tierwise prices tokens_in and tokens_out at the tiers config's "
        "prices of the model that served (served_model, else the routed one)",
    )
    tokens_in: Tokens | None = Field(None, description=f"0 to {MAX_TOKENS}")
    tokens_out: Tokens | None = Field(None, description=f"0 to {MAX_TOKENS}")
    latency_ms: Annotated[Usd, Field(le=MAX_LATENCY_MS)] | None = Field(
        None, description=f"0 to {MAX_LATENCY_MS:.0f} ms (a day)"
    )
    served_model: Annotated[str, StringConstraints(min_length=1, max_length=256), AfterValidator(_storable)] | None = (
        Field(None, description="the tiers-config model that answered, when not the routed one (after a fallback)")
    )

    @model_validator(mode="after")
    def _cost_or_tokens(self) -> UsageIn:
        if "cost_usd" not in self.model_fields_set and (self.tokens_in is None or self.tokens_out is None):
            raise ValueError(
                "give cost_usd (null releases a failed call), or tokens_in and tokens_out for tierwise to price at "
                "the tiers config's prices"
            )
        return self

    @property
    def priced_by_caller(self) -> bool:
        return "cost_usd" in self.model_fields_set


class UsageSettled(BaseModel):
    """The decision's settlement as stored. `booked` is False when it was settled before (a retry, an outcome)."""

    decision_id: str
    session_id: str | None
    booked: bool = Field(description="this request settled the decision; False: it was settled already, unchanged")
    cost_usd: float | None = Field(description="the cost settled on the decision; null: released, nothing charged")
    tokens_in: int | None
    tokens_out: int | None
    latency_ms: float | None
    served_model: str | None


class HoldReleased(BaseModel):
    """A decision's reservation released, the decision left open (`POST /decisions/{id}/release`)."""

    decision_id: str
    session_id: str | None
    released_usd: float = Field(description="what this request took off the session's reservation (0: none held)")
    settled: bool = Field(
        description="the decision is settled (its cost booked, or released as failed): a later usage or outcome "
        "books nothing more; False: it is open, and a later usage or outcome books its cost as spent"
    )


async def _callers_decision(store: StoreDep, caller: Caller, decision_id: str) -> DecisionRow:
    """The decision, if the caller may settle it: 404 unknown, 403 another client's."""
    d = (await run_in_threadpool(store.get_decisions, [decision_id])).get(decision_id)
    if d is None:
        raise NotFound(f"unknown decision_id {decision_id}")
    check_owner(caller, d.owner, f"decision {decision_id}")
    return d


def _not_the_proxys(d: DecisionRow, caller: Caller) -> None:
    """409 for an open decision the proxy serves: it settles it with the upstream's usage (an admin may settle or
    release one a crash left reserved)."""
    if d.served_by == SERVED_BY_PROXY and not caller.is_admin:
        raise Conflict(f"decision {d.id} is served by the proxy, which settles it with the upstream's usage")


def _view(d: DecisionRow, booked: bool) -> UsageSettled:
    return UsageSettled(
        decision_id=d.id,
        session_id=d.session_id,
        booked=booked,
        cost_usd=d.cost_usd,
        tokens_in=d.tokens_in,
        tokens_out=d.tokens_out,
        latency_ms=d.latency_ms,
        served_model=d.served_model,
    )


@router.post(
    "/{decision_id}/usage",
    responses={
        **BODY_ERRORS,
        **error(403, "another client's decision"),
        **error(404, "unknown decision_id"),
        **error(409, "a decision the proxy serves: it settles it with the upstream's usage"),
        422: {
            "description": "invalid usage (a negative, non-finite or too large number, an unknown field or model, "
            "neither a cost nor both token counts, tokens of a model the config cannot price alone)"
        },
    },
)
async def post_usage(
    decision_id: DecisionPath, usage: UsageIn, rt: RuntimeDep, store: StoreDep, caller: Caller
) -> UsageSettled:
    """Settle a decision with what the call really cost (or release it: `cost_usd` null); idempotent.

    The first settlement books `cost_usd` (left out: `tokens_in` and `tokens_out` at the tiers config's prices of
    the model that served) on the decision's session and releases its reservation; any later one
    (a retry, a release after a settlement, a decision an outcome or the proxy already settled) changes nothing
    and answers `booked: false` with what is stored. A decision the proxy is still serving is refused (409): the
    proxy settles it with the upstream's usage; only the admin key may settle it (a reservation a crashed
    service left behind).
    """
    if usage.served_model is not None and usage.served_model not in rt.tiers.known_models:
        raise Invalid(f"served_model '{usage.served_model}' is not in the tiers config")
    d = await _callers_decision(store, caller, decision_id)
    if d.settled:
        return _view(d, booked=False)
    _not_the_proxys(d, caller)
    if usage.priced_by_caller:
        cost_usd = usage.cost_usd
    else:  # both counts: UsageIn checked
        cost_usd = priced_tokens(rt.tiers, usage.served_model or d.model, usage.tokens_in or 0, usage.tokens_out or 0)
    booked = await run_in_threadpool(
        store.settle_decision,
        decision_id,
        cost_usd=cost_usd,
        tokens_in=usage.tokens_in,
        tokens_out=usage.tokens_out,
        latency_ms=usage.latency_ms,
        served_model=usage.served_model,
        sessionless=d.session_id is None,
    )
    # `booked` only for the request whose settlement took effect: of concurrent posts, one books, the rest see it.
    return _view((await run_in_threadpool(store.get_decisions, [decision_id]))[decision_id], booked=booked)


@router.post(
    "/{decision_id}/release",
    responses={
        **error(403, "another client's decision"),
        **error(404, "unknown decision_id"),
        **error(409, "a decision the proxy serves: it settles it with the upstream's usage"),
    },
)
async def release_hold(decision_id: DecisionPath, store: StoreDep, caller: Caller, metrics: MetricsDep) -> HoldReleased:
    """Release a decision's reservation and leave the decision open; idempotent.

    For a call whose end the caller cannot see (cancelled before it answered: its cost is unknown, maybe nothing,
    maybe an answer that is still reported later). The session's room is freed now; a `POST
    /decisions/{id}/usage` or an outcome that comes later still books the call's cost as spent (it may take the
    session past its cap: the cost was real). A settled decision is left as it is (`settled: true`). The
    reservation expiry (`TIERWISE_RESERVATION_EXPIRY_S`) does the same for decisions nobody released. Counted on
    /metrics (`tierwise_released_holds_total`, `tierwise_released_holds_usd_total`).
    """
    d = await _callers_decision(store, caller, decision_id)
    released = 0.0
    if not d.settled:
        _not_the_proxys(d, caller)
        released = await run_in_threadpool(store.release_hold, decision_id)
        if released > 0:  # counted once: a retry, or a release that lost the race to a settlement, frees nothing
            metrics.released_holds.inc()
            metrics.released_holds_usd.inc(released)
        d = (await run_in_threadpool(store.get_decisions, [decision_id]))[decision_id]  # settled meanwhile?
    return HoldReleased(decision_id=d.id, session_id=d.session_id, released_usd=released, settled=d.settled)
