"""Request and response bodies of the HTTP API."""

from __future__ import annotations

import json
import re
from datetime import datetime
from typing import Annotated, Any, Literal

from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    StrictBool,
    StrictFloat,
    StrictInt,
    StringConstraints,
    model_validator,
)

from router.schema import OutcomeBase
from router.task_hint import MAX_TASK_CHARS
from router.text import MAX_TOKENS

UNSTORABLE = re.compile("[\x00\ud800-\udfff]")
"""The characters no store can keep: NUL (PostgreSQL refuses it) and lone surrogates (not UTF-8)."""


def _storable(value: str) -> str:
    """Refuse text no store can keep (UNSTORABLE)."""
    if (found := UNSTORABLE.search(value)) is not None:
        if found.group() == "\x00":
            raise ValueError("must not contain NUL characters")
        raise ValueError("must be valid Unicode (no lone surrogates)")
    return value


def storable_text(text: str) -> str:
    """`text` with each character no store can keep (UNSTORABLE) replaced by U+FFFD: for text the service passes
    on rather than judges (an upstream's error message)."""
    return UNSTORABLE.sub("\ufffd", text)


Text = Annotated[str, AfterValidator(_storable)]
# A session id: 1-128 of these characters, not only dots (a path holding `.` or `..` is rewritten by clients and
# browsers, so such a session could be made by /route and never reached by /sessions/{id} or the admin page).
SESSION_ID_PATTERN = r"^[A-Za-z0-9._:\-]*[A-Za-z0-9_:\-][A-Za-z0-9._:\-]*$"
SESSION_ID_MAX = 128
SessionId = Annotated[str, StringConstraints(max_length=SESSION_ID_MAX, pattern=SESSION_ID_PATTERN)]
# Strict numbers: a JSON int is a float, but `false` is not 0 and `true` is not 1.
Usd = Annotated[StrictFloat, Field(ge=0, allow_inf_nan=False)]
Share = Annotated[StrictFloat, Field(ge=0, le=1, allow_inf_nan=False)]
MAX_METADATA_BYTES = 16 * 1024


def _json_metadata(value: dict[str, Any]) -> dict[str, Any]:
    """Metadata is stored as JSON: finite numbers, no NUL characters, at most MAX_METADATA_BYTES serialized."""

    def walk(v: Any, depth: int) -> None:
        if depth > 32:
            raise ValueError("must nest at most 32 levels deep")
        if isinstance(v, str):
            _storable(v)
        elif isinstance(v, dict):
            for k, x in v.items():
                _storable(k)
                walk(x, depth + 1)
        elif isinstance(v, list):
            for x in v:
                walk(x, depth + 1)

    walk(value, 0)
    try:
        size = len(json.dumps(value, allow_nan=False, ensure_ascii=False, separators=(",", ":")).encode())
    except ValueError:
        raise ValueError("must hold finite numbers only (no NaN or Infinity)") from None
    if size > MAX_METADATA_BYTES:
        raise ValueError(f"is {size} bytes as JSON, over the limit of {MAX_METADATA_BYTES}")
    return value


Metadata = Annotated[
    dict[str, Any],
    AfterValidator(_json_metadata),
    Field(
        description=f"free-form JSON kept with the decision: at most {MAX_METADATA_BYTES} bytes serialized, "
        "finite numbers, no NUL characters, at most 32 levels deep"
    ),
]


def _not_blank(value: str) -> str:
    """Refuse a prompt that is only whitespace by Python's reckoning, as training does (`router.schema`): the
    pattern below is checked by pydantic's regex engine, whose whitespace leaves out U+001C to U+001F."""
    if not value.strip():
        raise ValueError("must not be blank (only whitespace)")
    return value


Prompt = Annotated[
    str, StringConstraints(min_length=1, pattern=r"\S"), AfterValidator(_not_blank), AfterValidator(_storable)
]

MAX_OUTCOME_COST_USD = 1e6
MAX_LATENCY_MS = 86_400_000.0


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class GuaranteeRequest(Strict):
    epsilon: Annotated[StrictFloat, Field(gt=0, lt=1, allow_inf_nan=False)] = Field(
        description="the most mean quality (score units, 0.05 = five points) to lose against the top tier"
    )
    delta: Annotated[StrictFloat, Field(gt=0, lt=1, allow_inf_nan=False)] = Field(
        0.1, description="the chance the guarantee fails: it holds with confidence 1 - delta"
    )


class RouteOptions(Strict):
    session_id: SessionId | None = None
    quality_target: Share | None = Field(
        None, description="predicted quality the chosen tier must reach; the service default when absent"
    )
    cost_weight_per_usd: Annotated[StrictFloat, Field(ge=0, allow_inf_nan=False)] | None = Field(
        None,
        description="the cost–quality knob λ: pick the tier maximising predicted quality − λ·expected cost "
        "instead of the cheapest tier that reaches quality_target",
    )
    min_tier: (
        Annotated[StrictInt, Field(ge=0)]
        | Annotated[str, StringConstraints(max_length=128), AfterValidator(_storable)]
        | None
    ) = Field(None, description="tier name or index")
    max_cost_usd: Usd | None = None
    metadata: Metadata | None = None
    explore: StrictBool = Field(
        True, description="false: never explore on this request (only matters when the service's exploration rate > 0)"
    )
    quality_guarantee: GuaranteeRequest | None = Field(
        None,
        description="route at the model's operating point calibrated (Learn then Test) to lose at most epsilon of "
        "the top tier's mean quality with confidence 1 - delta; excludes quality_target and cost_weight_per_usd",
    )
    # constraints before the check, so a long one is "at most 128 characters" (after it pydantic says "items")
    task: (
        Annotated[str, StringConstraints(min_length=1, max_length=MAX_TASK_CHARS), AfterValidator(_storable)] | None
    ) = Field(
        None,
        description="the prompt's task, if the caller knows it, as named in the training log's category column "
        "(GET /tiers lists the ones this model knows): its per-tier mean score is blended into the prediction. "
        "A task the model does not know is ignored, and the reason says so",
    )


class CountedRouteOptions(RouteOptions):
    """/route's options with the count of one call's input (a batch's prompts would need one each)."""

    input_tokens: Annotated[StrictInt, Field(ge=1, le=MAX_TOKENS)] | None = Field(
        None,
        description="input tokens the call will send, when the caller counted them and they are more than the prompt's "
        "(a whole conversation, tool definitions, images): every tier's expected cost, and so the policy's cost and "
        "a session's reservation, prices this input instead of the prompt's estimate (ASCII at 4 characters a token, "
        "any other character a token). The OpenAI-compatible door counts its messages itself",
    )


class RouteRequest(CountedRouteOptions):
    prompt: Prompt


class RouteBatchRequest(RouteOptions):
    prompts: list[Prompt] = Field(min_length=1)


class RouteResponse(BaseModel):
    decision_id: str
    tier: str
    model: str
    predicted_quality: dict[str, float]
    expected_cost_usd: float
    router_version: str
    reason: str
    session_id: str | None = None
    budget_left_usd: float | None = None


class RouteBatchResponse(BaseModel):
    decisions: list[RouteResponse]


class TierInfo(BaseModel):
    name: str
    kind: str
    model: str
    parts: list[str]
    input_per_1m: float
    output_per_1m: float


class TiersResponse(BaseModel):
    tiers: list[TierInfo]
    router_version: str
    tasks: list[str] = Field(
        default_factory=list, description="the task hints this model knows (`task` on /route), with enough prompts"
    )


DECISION_OUTCOME = "decision:"
"""The outcome id of an outcome posted for a decision without one (`decision:<decision_id>`): a retry of it is
recorded once. Reserved: no other outcome may take such an id."""


class OutcomeIn(OutcomeBase):
    """One realised outcome: by `decision_id`, or by `prompt` and `model`.

    The fields are OutcomeBase's (the log's and the store's); the API adds the id and decision it may name and
    tightens the rest for the edge: strict finite numbers with upper bounds, storable text, and a prompt and
    model that default to the decision's.
    """

    model_config = ConfigDict(frozen=False)
    outcome_id: Annotated[str, StringConstraints(pattern=r"^[A-Za-z0-9._:\-]{1,128}$")] | None = Field(
        None,
        description="client-chosen id (1-128 of A-Z a-z 0-9 . _ : -); a retry with the same id is recorded once, "
        "another outcome under a stored id is refused (409). Default: `decision:<decision_id>` for a decision's "
        "outcome (so it too is recorded once), else a new id",
    )
    decision_id: Annotated[str, StringConstraints(pattern=r"^[A-Za-z0-9._:\-]{1,32}$")] | None = Field(
        None, description="the decision_id /route answered"
    )
    # Optional here only: the service fills both from the decision before an outcome is stored.
    prompt: Prompt | None = Field(None, description="the prompt, without NUL characters; defaults to the decision's")  # type: ignore[assignment]
    model: Annotated[str, StringConstraints(min_length=1, max_length=256), AfterValidator(_storable)] | None = Field(  # type: ignore[assignment]
        None, description="a model of the tiers config; defaults to the decision's"
    )
    score: Share = Field(description="realised quality, 0 to 1")
    cost_usd: Annotated[Usd, Field(le=MAX_OUTCOME_COST_USD)] | None = Field(  # type: ignore[assignment]
        None,
        description=f"what the call cost, 0 to {MAX_OUTCOME_COST_USD:.0e} USD; may be left out for a settled "
        "decision (the proxy's or POST /decisions/{id}/usage's cost, tokens and latency are used), or for a decision "
        "with tokens_in and tokens_out, which are priced at the tiers config's prices",
    )
    session_id: SessionId | None = None
    tokens_in: Annotated[StrictInt, Field(ge=0, le=MAX_TOKENS)] | None = Field(None, description=f"0 to {MAX_TOKENS}")
    tokens_out: Annotated[StrictInt, Field(ge=0, le=MAX_TOKENS)] | None = Field(None, description=f"0 to {MAX_TOKENS}")
    latency_ms: Annotated[Usd, Field(le=MAX_LATENCY_MS)] | None = Field(
        None, description=f"0 to {MAX_LATENCY_MS:.0f} ms (a day)"
    )

    @model_validator(mode="after")
    def _by_decision_or_prompt(self) -> OutcomeIn:
        oid = self.outcome_id
        if (
            oid is not None
            and oid.startswith(DECISION_OUTCOME)
            and (self.decision_id is None or oid != DECISION_OUTCOME + self.decision_id)  # "decision:" alone too
        ):
            raise ValueError(
                f"outcome_id {oid} is reserved for the outcome of decision {oid.removeprefix(DECISION_OUTCOME)}: "
                "post it with that decision_id, or choose another outcome_id"
            )
        if self.decision_id is None and (self.prompt is None or self.model is None):
            raise ValueError("give decision_id, or both prompt and model")
        if self.decision_id is None and self.cost_usd is None:
            raise ValueError("give cost_usd (only a decision the proxy served has its cost settled)")
        return self


class OutcomesResponse(BaseModel):
    outcome_ids: list[str]
    recorded: int = Field(description="new outcomes written to the store (retries count 0)")
    spooled: bool = Field(
        default=False, description="the store was down: outcomes are in the local spool, replayed later"
    )


class RejectedOutcome(BaseModel):
    outcome_id: str
    reason: str
    rejected_at: str


class SpoolStatus(BaseModel):
    pending: int = Field(description="acknowledged outcomes (and proxy settlements) waiting in the spool for the store")
    rejected: int = Field(description="spooled outcomes the store refused, kept in the rejected file")
    last_rejected: list[RejectedOutcome] = Field(description="the newest rejections (no prompt text)")


MAX_CAP_USD = 1e9  # a session's cap: past any bill, and short enough for the admin page's forms


class CapRequest(Strict):
    cap_usd: Annotated[Usd, Field(le=MAX_CAP_USD)]


class ConfirmRequest(Strict):
    new_cap_usd: Annotated[Usd, Field(le=MAX_CAP_USD)]


class DecisionInfo(BaseModel):
    decision_id: str
    created_at: datetime
    tier: str
    model: str
    expected_cost_usd: float
    reserved_usd: float
    settled: bool
    reason: str


class SessionResponse(BaseModel):
    session_id: str
    cap_usd: float | None
    spent_usd: float
    reserved_usd: float
    status: Literal["open", "frozen"]
    recent_decisions: list[DecisionInfo] = []


class OverBudgetResponse(BaseModel):
    """402: the session's cap leaves no room for the request. `frozen` sessions wait for an admin's confirm."""

    detail: str
    session_id: str
    spent_usd: float
    reserved_usd: float
    cap_usd: float | None
    status: Literal["open", "frozen"] = Field(
        description="frozen: every /route in the session answers 402 until an admin confirms a new cap; "
        "open: only this request was refused (nothing reserved); a smaller batch or a single /route may fit, or, "
        "with Retry-After, the room the door's calls in flight hold comes back when they end"
    )
    needed_usd: float | None = Field(
        None, description="the least this request would cost at the cheapest allowed tiers"
    )
    held_by: list[str] | None = Field(
        None,
        description="with Retry-After: the oldest decisions (up to 10) whose calls in flight hold the room; one a "
        "crashed service left is released by the admin key with POST /decisions/{id}/usage",
    )


class DeletedSession(BaseModel):
    """What DELETE /admin/sessions/{id} removed from the store."""

    session_id: str
    sessions: int = Field(description="1 if the session row existed, else 0")
    decisions: int
    outcomes: int
    spooled: int = Field(0, description="records of the session removed from the outcome spool and its quarantine")


class ErrorResponse(BaseModel):
    """Every refusal but 402 and 422: what went wrong, in one sentence."""

    detail: str


class ReloadResponse(BaseModel):
    router_version: str
    previous_version: str | None
    tiers: list[TierInfo]


class Health(BaseModel):
    status: str
    router_version: str | None = None
    detail: str | None = None
