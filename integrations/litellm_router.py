"""tierwise as a LiteLLM routing strategy: each request to the Router's `tierwise` group asks tierwise `POST /route`
and is served by a deployment of the tier it chose.

A deployment serves a tier when its `model_info` carries `tierwise_tier: "<tier>"` (and it sits in the `tierwise`
group), or when the tier is mapped to a model group with `tier_groups={"<tier>": "<group>"}`. Requests to other
groups are served by a random deployment of that group, as LiteLLM's default shuffle would.

Per request, `metadata={"tierwise": {...}}` carries /route's options (session_id, quality_target,
cost_weight_per_usd, min_tier, max_cost_usd, task, metadata); after the pick, `metadata["tierwise_decision"]` holds what
was chosen and why (a `Decision`), and `metadata["tierwise_decisions"]` the decisions of calls still in flight by
LiteLLM trace id, so calls sharing one metadata dict are each settled and scored as their own.

tierwise being down never blocks a call: a timeout, a refused connection, a
5xx, 429 or 413 serves the configured fallback deployment and logs a warning. A refusal that is the caller's to
fix is raised instead: 402 (the session's spend cap, which a fallback must not bypass) as LiteLLM's
BudgetExceededError, any other 4xx as BadRequestError with tierwise's reason.

Every routed call is settled on tierwise automatically (`TierwiseSettler`, a LiteLLM callback the strategy
registers): a success books LiteLLM's `response_cost`, tokens and latency with `POST /decisions/{id}/usage`, and a
call that failed for good (its last retry, or an error LiteLLM does not retry) releases its reservation. A score
posted later (`post_score`, `TierwiseOutcomeLogger`) needs nothing else and charges nothing more.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import os
import random
import threading
import time
import weakref
from collections import OrderedDict
from collections.abc import Callable, Mapping, Sequence
from typing import Any, TypedDict, cast

import litellm
from litellm.exceptions import BadRequestError, BudgetExceededError
from litellm.integrations.custom_logger import CustomLogger
from litellm.router import Router
from litellm.types.router import CustomRoutingStrategyBase

from integrations.delayed_calls import DelayedCalls
from integrations.tierwise_http import TierwiseClient, TierwiseRefused, TierwiseUnavailable

logger = logging.getLogger(__name__)

TIER_FIELD = "tierwise_tier"
OPTIONS_KEY = "tierwise"
DECISION_KEY = "tierwise_decision"
DECISIONS_KEY = "tierwise_decisions"  # LiteLLM trace id -> Decision, for each call in flight with this metadata
SIGNALS_KEY = "routing_plugin_signals"  # where LiteLLM puts a routing plugin's signals (integrations/litellm_plugin)
IN_FLIGHT_KEPT = 1024  # decisions kept per metadata dict (a dict reused forever by unsettled calls stays bounded)
_IN_FLIGHT_LOCK = threading.Lock()  # calls on several threads may share one metadata dict


def _new_in_flight_lock() -> None:
    """A forked child's own lock: another thread of the parent may have held it at the fork, for good in the child."""
    global _IN_FLIGHT_LOCK
    _IN_FLIGHT_LOCK = threading.Lock()


os.register_at_fork(after_in_child=_new_in_flight_lock)
AMBIGUOUS: Mapping[str, Any] = {}  # TierwiseSettler.answered's value for a response id seen with several decisions


def _seconds_from_env(name: str, default: float) -> float:
    raw = os.environ.get(name, "").strip()
    if not raw:
        return default
    try:
        value = float(raw)
    except ValueError:
        value = float("nan")
    if not 0 <= value <= 86_400:
        raise ValueError(f"{name}={raw!r}: expected seconds, a number from 0 to 86400")
    return value


# A cancelled async call's reservation is released this long after its task ended, unless LiteLLM reported the call's
# end meanwhile (an answer that came in as the task was cancelled is booked at its cost; one reported after the release
# is booked too, as the release leaves the decision open). The environment's TIERWISE_RELEASE_AFTER_CANCEL_S sets it.
RELEASE_AFTER_CANCEL_S = _seconds_from_env("TIERWISE_RELEASE_AFTER_CANCEL_S", 5.0)
RELEASES = DelayedCalls("tierwise-release")  # every cancelled call's release in this process: one scheduler, 4 workers
WATCHED_PER_TASK = 64  # decisions watched per task: those whose calls ended go first, then the oldest


class Decision(TypedDict):
    """What the strategy chose for one request; `decision_id` is None when tierwise did not decide."""

    decision_id: str | None
    tier: str | None
    deployment_id: str
    reason: str
    session_id: str | None
    trace_id: str | None
    tierwise_url: str
    tierwise_client: str  # TierwiseClient.identity of the client that made it: the settler settles through that one
    prompt_digest: str  # of the text routed on: a retry (same trace id) routes the same text


def prompt_digest(prompt: str) -> str:
    """A short digest of the text a call was routed on (a retry sends the same text; another call may not)."""
    return hashlib.sha256(prompt.encode("utf-8", "surrogatepass")).hexdigest()[:16]


def _text(content: Any) -> str:
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return "\n".join(
            p["text"] for p in content if isinstance(p, dict) and p.get("type") == "text" and p.get("text")
        )
    return ""


def _parts_named(content: Any) -> str:
    """Content with no text but other parts (an image alone) as their types, e.g. `[image_url]`."""
    if not isinstance(content, list):
        return ""
    return " ".join(f"[{p.get('type')}]" for p in content if isinstance(p, dict) and p.get("type") != "text")


def prompt_view(messages: Sequence[Mapping[str, Any]]) -> str:
    """The text tierwise routes on: the system messages and the last user turn, text parts only; a last user turn
    with no text (an image alone) as its parts' types.

    The same view as the proxy's (serving/proxy/wire.py), so a prompt is scored alike through either door. The
    proxy also prices the whole conversation it sends (its `input_tokens` count); here the prompt is priced on its
    own unless the caller passes `input_tokens` among the /route options (metadata["tierwise"]).
    """
    system = [_text(m.get("content")) for m in messages if m.get("role") in ("system", "developer")]
    last = next((m.get("content") for m in reversed(messages) if m.get("role") == "user"), None)
    user = _text(last)
    if not user.strip():
        user = _parts_named(last)
    return "\n\n".join(t for t in [*system, user] if t.strip())


def _metadata(request_kwargs: dict[str, Any] | None) -> dict[str, Any]:
    """The request's metadata dict (LiteLLM hands the caller's own dict along, so what is written here shows)."""
    if request_kwargs is None:
        return {}
    md = request_kwargs.get("metadata")
    if not isinstance(md, dict):
        md = request_kwargs["metadata"] = {}
    return md


def remember(md: dict[str, Any], decision: Decision) -> None:
    """Write the call's decision into its metadata: the latest under DECISION_KEY, and under its trace id among
    the calls in flight, which concurrent calls sharing the dict don't overwrite."""
    with _IN_FLIGHT_LOCK:
        md[DECISION_KEY] = decision
        if decision["trace_id"] is None:
            return
        calls = md.get(DECISIONS_KEY)
        if not isinstance(calls, dict):
            calls = md[DECISIONS_KEY] = {}
        calls[decision["trace_id"]] = decision
        while len(calls) > IN_FLIGHT_KEPT:
            calls.pop(next(iter(calls)))


def forget(md: Any, decision: Any) -> None:
    """Drop a settled or scored call from its metadata's calls in flight."""
    calls = md.get(DECISIONS_KEY) if isinstance(md, dict) else None
    if isinstance(calls, dict) and isinstance(decision, Mapping):
        with _IN_FLIGHT_LOCK:
            trace = decision.get("trace_id")
            if calls.get(trace) is decision:
                del calls[trace]


def refusal(e: TierwiseRefused, model: str, options: Mapping[str, Any]) -> Exception:
    """tierwise's 4xx as the LiteLLM exception a caller of the Router expects (neither is retried by LiteLLM)."""
    if e.status == 402:
        spent = float(e.body.get("spent_usd") or 0) + float(e.body.get("reserved_usd") or 0)
        return BudgetExceededError(
            current_cost=spent,
            max_budget=float(e.body.get("cap_usd") or 0),
            message=f"tierwise: {e.detail}",
            llm_provider="tierwise",
            entity_type="tierwise_session",
            entity_id=e.body.get("session_id") or options.get("session_id"),
        )
    return BadRequestError(message=str(e), model=model, llm_provider="tierwise")


class TierwiseRoutingStrategy(CustomRoutingStrategyBase):
    """Serve the `group` model group with the deployment of the tier tierwise chooses per prompt.

    Register with `router.register_plugin(strategy)`. `fallback_deployment_id` is a deployment's `model_info.id`,
    served when tierwise cannot decide. A retry of the same request (same LiteLLM trace id) keeps its tier and
    skips deployments in cooldown, without asking tierwise again. With `settle` (the default) each routed call is
    settled on tierwise when it ends (see `TierwiseSettler`, added to LiteLLM's callbacks).
    """

    def __init__(
        self,
        router: Router,
        client: TierwiseClient,
        *,
        fallback_deployment_id: str,
        group: str = "tierwise",
        tier_groups: Mapping[str, str] | None = None,
        tier_field: str = TIER_FIELD,
        seed: int | None = None,
        settle: bool = True,
    ) -> None:
        if not router.registry().has_deployment(fallback_deployment_id):
            raise ValueError(f"fallback_deployment_id {fallback_deployment_id!r} is no deployment's model_info.id")
        self.router = router
        self.client = client
        self.fallback_deployment_id = fallback_deployment_id
        self.group = group
        self.tier_groups = dict(tier_groups or {})
        self.tier_field = tier_field
        self._rng = random.Random(seed)
        # Settles every routed call on tierwise (cost on success, release on a final failure); settle=False leaves
        # it to the caller (post_score, or its own POST /decisions/{id}/usage).
        self.settler: TierwiseSettler | None = shared_settler(client) if settle else None

    # -- LiteLLM's entry points ----------------------------------------------------------------------------------

    def get_available_deployment(  # type: ignore[override]  # LiteLLM's base annotates the pick as None
        self,
        model: str,
        messages: list[dict[str, str]] | None = None,
        input: str | list[object] | None = None,
        specific_deployment: bool | None = False,  # noqa: ARG002 (LiteLLM passes it; a tier pick ignores it)
        request_kwargs: dict[str, Any] | None = None,
    ) -> dict[str, Any]:
        if model != self.group:
            return self._any_of(model)
        prompt = self._prompt(messages, input)
        md, options, trace_id, decision = self._request(request_kwargs, prompt)
        if decision is None:
            try:
                answer: Mapping[str, Any] | Exception | None = self.client.route(prompt, options) if prompt else None
            except (TierwiseUnavailable, TierwiseRefused) as e:
                answer = e
            decision = self._decide(model, answer, options, trace_id, prompt)
            remember(md, decision)
        return self._serve(decision)

    async def async_get_available_deployment(  # type: ignore[override]  # as above
        self,
        model: str,
        messages: list[dict[str, str]] | None = None,
        input: str | list[object] | None = None,
        specific_deployment: bool | None = False,  # noqa: ARG002 (LiteLLM passes it; a tier pick ignores it)
        request_kwargs: dict[str, Any] | None = None,
    ) -> dict[str, Any]:
        if model != self.group:
            return self._any_of(model)
        prompt = self._prompt(messages, input)
        md, options, trace_id, decision = self._request(request_kwargs, prompt)
        if decision is not None and self.settler is not None and self.settler.settled(decision):
            decision = None  # released after its task was cancelled: a retry of that call is routed as a new one
        if decision is None:
            try:
                answer: Mapping[str, Any] | Exception | None = (
                    await self.client.aroute(prompt, options) if prompt else None
                )
            except (TierwiseUnavailable, TierwiseRefused) as e:
                answer = e
            decision = self._decide(model, answer, options, trace_id, prompt)
            remember(md, decision)
        if self.settler is not None:
            self.settler.watch(decision)  # a retry in another task too: its decision is not released under it
        return self._serve(decision)

    # -- the choice ------------------------------------------------------------------------------------------------

    @staticmethod
    def _request(
        request_kwargs: dict[str, Any] | None, prompt: str
    ) -> tuple[dict[str, Any], Mapping[str, Any], str | None, Decision | None]:
        """The request's metadata, its /route options, its trace id, and the decision of an earlier try of the same
        call, if any: one in flight with this trace id and this prompt."""
        md = _metadata(request_kwargs)
        trace_id = (request_kwargs or {}).get("litellm_trace_id")
        options = md.get(OPTIONS_KEY) or {}
        if not isinstance(options, Mapping):
            raise BadRequestError(
                message=f"metadata[{OPTIONS_KEY!r}] must be a dict of /route options", model="", llm_provider="tierwise"
            )
        # Only a call still in flight is retried, with the same text: a caller may give separate calls one trace id
        # (a conversation's), and LiteLLM ends a call (its callbacks, which take it out of flight) after it returned.
        calls = md.get(DECISIONS_KEY)
        earlier = calls.get(trace_id) if isinstance(calls, dict) and trace_id is not None else None
        same_request = (
            isinstance(earlier, dict)
            and earlier.get("trace_id") == trace_id
            and earlier.get("prompt_digest") == prompt_digest(prompt)
        )
        return md, options, trace_id, cast(Decision, earlier) if same_request else None

    @staticmethod
    def _prompt(messages: Sequence[Mapping[str, Any]] | None, text: Any) -> str:
        if messages:
            return prompt_view(messages)
        return text if isinstance(text, str) and text.strip() else ""

    def _decide(
        self,
        model: str,
        answer: Mapping[str, Any] | Exception | None,
        options: Mapping[str, Any],
        trace_id: str | None,
        prompt: str,
    ) -> Decision:
        """The decision for tierwise's answer; the fallback deployment when tierwise gave none."""
        if isinstance(answer, TierwiseRefused):
            raise refusal(answer, model, options) from answer
        session_id = options.get("session_id")
        if not isinstance(answer, Mapping):
            why = "no text to route on" if answer is None else str(answer)
            logger.warning(
                "tierwise did not route (%s); serving fallback deployment %s", why, self.fallback_deployment_id
            )
            return Decision(
                decision_id=None,
                tier=None,
                deployment_id=self.fallback_deployment_id,
                reason=f"fallback: {why}",
                session_id=session_id,
                trace_id=trace_id,
                tierwise_url=self.client.base_url,
                tierwise_client=self.client.identity,
                prompt_digest=prompt_digest(prompt),
            )
        tier = str(answer["tier"])
        candidates = self._tier_deployments(tier)
        if not candidates:
            logger.warning(
                "no LiteLLM deployment serves tierwise tier %r; serving fallback deployment %s",
                tier,
                self.fallback_deployment_id,
            )
        return Decision(
            decision_id=answer["decision_id"],
            tier=tier,
            deployment_id=self._pick(candidates)["model_info"]["id"] if candidates else self.fallback_deployment_id,
            reason=str(answer.get("reason", "")) if candidates else f"fallback: no deployment serves tier {tier!r}",
            session_id=answer.get("session_id") or session_id,
            trace_id=trace_id,
            tierwise_url=self.client.base_url,
            tierwise_client=self.client.identity,
            prompt_digest=prompt_digest(prompt),
        )

    def _serve(self, decision: Decision) -> dict[str, Any]:
        """The decision's deployment; on a retry, another deployment of its tier when the first is cooling down."""
        candidates = self._tier_deployments(decision["tier"]) if decision["tier"] is not None else []
        ids = [d["model_info"]["id"] for d in candidates]
        if decision["deployment_id"] in ids and self._cooling(ids) & {decision["deployment_id"]}:
            decision["deployment_id"] = self._pick(candidates)["model_info"]["id"]
        deployment = self.router.registry().deployment_dict(decision["deployment_id"])
        if deployment is None:
            raise ValueError(f"deployment {decision['deployment_id']!r} is gone from the LiteLLM Router")
        return deployment

    def _tier_deployments(self, tier: str) -> list[dict[str, Any]]:
        if tier in self.tier_groups:
            return self._group(self.tier_groups[tier])
        return [d for d in self._group(self.group) if (d.get("model_info") or {}).get(self.tier_field) == tier]

    def _group(self, group: str) -> list[dict[str, Any]]:
        return cast(list[dict[str, Any]], self.router.registry().deployments(group, source="all") or [])

    def _cooling(self, ids: Sequence[str]) -> set[str]:
        return {i for i, _ in self.router.health().cooldowns.get_active_cooldowns(ids, None)}

    def _pick(self, deployments: Sequence[dict[str, Any]]) -> dict[str, Any]:
        """A random deployment not in cooldown (any of them when all are)."""
        cooling = self._cooling([d["model_info"]["id"] for d in deployments])
        ready = [d for d in deployments if d["model_info"]["id"] not in cooling] or list(deployments)
        return ready[self._rng.randrange(len(ready))]

    def _any_of(self, group: str) -> dict[str, Any]:
        deployments = self._group(group)
        if not deployments:
            raise BadRequestError(message=f"no deployment in model group {group!r}", model=group, llm_provider="")
        return self._pick(deployments)

    # -- the outcome -----------------------------------------------------------------------------------------------

    def post_score(
        self, metadata: Mapping[str, Any], response: Any, score: float, outcome_id: str | None = None
    ) -> dict[str, Any] | None:
        """Post the call's outcome to tierwise: the caller's score with LiteLLM's cost and usage of `response`.

        Without `outcome_id` the call has one outcome: posting it again is a retry (recorded once), and another
        score for the same call is refused (409). To record more than one (two judges), give each its own id.
        Returns tierwise's answer, or None when there is nothing to post (tierwise did not decide the call).
        With one metadata dict shared by calls in flight, the response names its call (through the settler, which
        saw it answer, or the deployment that served it); a ValueError says when it cannot.
        """
        decision = self._answered_by(metadata, response)
        outcome = outcome_of({DECISION_KEY: decision}, response, score, outcome_id)
        answer = self.client.post_outcome(outcome) if outcome else None
        forget(metadata, decision)
        return answer

    async def apost_score(
        self, metadata: Mapping[str, Any], response: Any, score: float, outcome_id: str | None = None
    ) -> dict[str, Any] | None:
        """`post_score` from async code."""
        decision = self._answered_by(metadata, response)
        outcome = outcome_of({DECISION_KEY: decision}, response, score, outcome_id)
        answer = await self.client.apost_outcome(outcome) if outcome else None
        forget(metadata, decision)
        return answer

    def _answered_by(self, metadata: Mapping[str, Any], response: Any) -> Any:
        """The decision of the call that answered `response`: the settler's record of that call, else the one
        call in flight with `metadata` (with none, its latest), else the one among them its deployment serves.
        None when another deployment than the decision's answered (a LiteLLM fallback to another model group)."""
        hidden = getattr(response, "_hidden_params", None) or {}
        settler = self.settler or _SETTLER  # the process's settler sees every call, settle=False or not
        # A response names its call by LiteLLM's call id; a streamed one (its chunks, or stream_chunk_builder's
        # answer) only by the upstream's response id, which the settler recorded too.
        for key in (hidden.get("litellm_call_id"), getattr(response, "id", None)):
            known = settler.answered.get(key) if settler and isinstance(key, str) else None
            if known is not None and known is not AMBIGUOUS:
                return known
        calls = metadata.get(DECISIONS_KEY)
        in_flight = list(calls.values()) if isinstance(calls, Mapping) else []
        if len(in_flight) <= 1:
            decision = in_flight[0] if in_flight else decision_of(metadata)
            return decision if _served_by(decision, hidden.get("model_id")) else None
        served = [d for d in in_flight if d.get("deployment_id") == hidden.get("model_id")]
        if len(served) == 1:
            return served[0]
        raise ValueError(
            f"{len(in_flight)} calls in flight share this metadata dict and {len(served)} of them were served by "
            f"deployment {hidden.get('model_id')!r}: which one answered this response is unknown; give each call "
            "its own metadata dict (or let the settler see the call: settle=True)"
        )


def decision_of(metadata: Mapping[str, Any], trace_id: str | None = None) -> Any:
    """The tierwise decision a request's metadata carries: the strategy's (for `trace_id`'s call, when given), or
    the routing plugin's signal."""
    if trace_id is not None:
        calls = metadata.get(DECISIONS_KEY)
        mine = calls.get(trace_id) if isinstance(calls, Mapping) else None
        if isinstance(mine, Mapping):
            return mine
    signals = metadata.get(SIGNALS_KEY)
    plugin = signals.get(DECISION_KEY) if isinstance(signals, Mapping) else None
    latest = metadata.get(DECISION_KEY)
    if trace_id is not None and isinstance(latest, Mapping) and latest.get("trace_id") not in (None, trace_id):
        latest = None  # another call's decision (one metadata dict shared by concurrent calls)
    return latest or plugin


def _served_by(decision: Any, deployment_id: Any) -> bool:
    """Whether `deployment_id` (None: unknown) may have answered for `decision`: its deployment, when it names one
    (the routing plugin's decisions name only a tier). A LiteLLM fallback to another model group answers for none."""
    if not isinstance(decision, Mapping) or not deployment_id or not decision.get("deployment_id"):
        return True
    return bool(decision["deployment_id"] == deployment_id)


def _answering_deployment(kwargs: Mapping[str, Any]) -> Any:
    """The deployment (model_info id) of the try a LiteLLM callback reports on."""
    return ((kwargs.get("litellm_params") or {}).get("model_info") or {}).get("id")


def _trace_id(kwargs: Mapping[str, Any]) -> str | None:
    """The LiteLLM trace id of the call a callback reports on (one per call, kept by its retries)."""
    trace = kwargs.get("litellm_trace_id") or (kwargs.get("litellm_params") or {}).get("litellm_trace_id")
    return trace if isinstance(trace, str) else None


def _call_decision(kwargs: Mapping[str, Any], ok: bool = False) -> Any:
    """The decision of the call a LiteLLM callback reports on; for an answer (`ok`), None when another deployment
    than the decision's answered (a LiteLLM fallback to another model group: that answer is none of its tier's)."""
    decision = decision_of((kwargs.get("litellm_params") or {}).get("metadata") or {}, _trace_id(kwargs))
    return decision if not ok or _served_by(decision, _answering_deployment(kwargs)) else None


def _token_count(usage: Any, name: str) -> int | None:
    n = getattr(usage, name, None)
    return n if isinstance(n, int) and not isinstance(n, bool) and n >= 0 else None


def _litellm_priced(cost: Any, cache_hit: Any, tokens: int) -> bool:
    """Whether LiteLLM's `response_cost` is a price. It reports None, or 0.0 (this version, for a model its price
    map lacks and the deployment does not price), for a call it could not price; 0.0 is a price only for a cache
    hit or a call that used no tokens."""
    return isinstance(cost, int | float) and (cost != 0 or cache_hit is True or tokens == 0)


def _billed(cost: Any, cache_hit: Any, usage: Any) -> dict[str, Any] | None:
    """What a body says of a call's cost: `cost_usd` where LiteLLM priced it (`_litellm_priced`), else only the
    tokens, for tierwise to price at its tiers config's catalogue prices; None when it knows neither."""
    tokens_in, tokens_out = _token_count(usage, "prompt_tokens"), _token_count(usage, "completion_tokens")
    billed = {"tokens_in": tokens_in, "tokens_out": tokens_out}
    if _litellm_priced(cost, cache_hit, (tokens_in or 0) + (tokens_out or 0)):
        return {"cost_usd": float(cost), **billed}
    return None if tokens_in is None or tokens_out is None else billed


def _outcome(
    decision: Any, score: float, cost_usd: Any, usage: Any, latency_ms: float | None, cache_hit: Any = None
) -> dict[str, Any] | None:
    """The /outcomes body: None when tierwise did not decide the call, or LiteLLM knows neither its cost nor its
    tokens. Where LiteLLM could not price the call (`_litellm_priced`), the cost is left out: tierwise takes the
    decision's settled cost, or prices the tokens at its tiers config's prices."""
    if not isinstance(decision, Mapping) or not decision.get("decision_id"):
        return None
    billed = _billed(cost_usd, cache_hit, usage)
    if billed is None:
        logger.warning(
            "neither cost nor tokens for deployment %s (give it input_cost_per_token and output_cost_per_token): "
            "outcome of decision %s not posted",
            decision.get("deployment_id"),
            decision["decision_id"],
        )
        return None
    body: dict[str, Any] = {
        "decision_id": decision["decision_id"],
        "score": float(score),
        **billed,
        "session_id": decision.get("session_id") or None,
        "latency_ms": None if latency_ms is None else max(0.0, float(latency_ms)),
    }
    return {k: v for k, v in body.items() if v is not None}


def outcome_of(
    metadata: Mapping[str, Any], response: Any, score: float, outcome_id: str | None = None
) -> dict[str, Any] | None:
    """The /outcomes body for a routed call, from its metadata, its LiteLLM response and the caller's score
    (under `outcome_id` when given)."""
    hidden = getattr(response, "_hidden_params", None) or {}
    body = _outcome(
        decision_of(metadata),
        score,
        hidden.get("response_cost"),
        getattr(response, "usage", None),
        hidden.get("_response_ms"),
        hidden.get("cache_hit"),
    )
    return body if body is None or outcome_id is None else {**body, "outcome_id": outcome_id}


ScoreFn = Callable[[list[dict[str, Any]], Any], float | None]


class TierwiseOutcomeLogger(CustomLogger):
    """A LiteLLM callback that posts each routed call's outcome when `score_fn(messages, response)` gives a score.

    tierwise's /outcomes needs a score, so without one nothing is posted: a call whose score comes later is posted
    with `TierwiseRoutingStrategy.post_score`. Failed calls post nothing. Posting never raises into LiteLLM: a
    failure is logged.
    """

    def __init__(self, client: TierwiseClient, score_fn: ScoreFn) -> None:
        super().__init__()
        self.client = client
        self.score_fn = score_fn

    def _outcome(self, kwargs: Mapping[str, Any], response: Any, start: Any, end: Any) -> dict[str, Any] | None:
        decision = _call_decision(kwargs, ok=True)
        if not isinstance(decision, Mapping) or not decision.get("decision_id"):
            return None
        score = self.score_fn(list(kwargs.get("messages") or []), response)
        if score is None:
            return None
        latency_ms = (end - start).total_seconds() * 1000 if start is not None and end is not None else None
        cost, usage = kwargs.get("response_cost"), getattr(response, "usage", None)
        return _outcome(decision, score, cost, usage, latency_ms, kwargs.get("cache_hit"))

    def log_success_event(self, kwargs: Any, response_obj: Any, start_time: Any, end_time: Any) -> None:
        try:
            outcome = self._outcome(kwargs, response_obj, start_time, end_time)
            if outcome:
                self.client.post_outcome(outcome)
        except Exception as e:  # a callback must not break the call it reports on
            logger.warning("tierwise outcome not posted: %s: %s", type(e).__name__, e)

    async def async_log_success_event(self, kwargs: Any, response_obj: Any, start_time: Any, end_time: Any) -> None:
        try:
            outcome = self._outcome(kwargs, response_obj, start_time, end_time)
            if outcome:
                await self.client.apost_outcome(outcome)
        except Exception as e:  # a callback must not break the call it reports on
            logger.warning("tierwise outcome not posted: %s: %s", type(e).__name__, e)


def _final_failure(kwargs: Mapping[str, Any]) -> bool:
    """Whether a failed try is the call's last: its last retry, or an error LiteLLM does not retry (a 4xx other
    than 408, 409 and 429). Releasing after a try that LiteLLM then retries would leave that retry unpaid."""
    md = (kwargs.get("litellm_params") or {}).get("metadata") or {}
    attempted, most = md.get("attempted_retries"), md.get("max_retries")
    if isinstance(attempted, int) and isinstance(most, int) and attempted >= most:
        return True
    status = getattr(kwargs.get("exception"), "status_code", None)
    return isinstance(status, int) and 400 <= status < 500 and status not in (408, 409, 429)


def usage_of(kwargs: Mapping[str, Any], response: Any, start: Any, end: Any) -> dict[str, Any] | None:
    """The /decisions/{id}/usage body of a call LiteLLM answered: its cost, tokens and latency. Where LiteLLM could
    not price the call (`_litellm_priced`), the body leaves the cost out and tierwise prices the tokens at its
    tiers config's catalogue prices, as its door settles its own calls; None when there are no token counts either."""
    billed = _billed(kwargs.get("response_cost"), kwargs.get("cache_hit"), getattr(response, "usage", None))
    if billed is None:
        return None
    latency_ms = max(0.0, (end - start).total_seconds() * 1000) if start is not None and end is not None else None
    return {k: v for k, v in {**billed, "latency_ms": latency_ms}.items() if v is not None}


def _booked(reply: Any) -> bool | None:
    """Whether a settlement's reply says this post booked the decision (None: the reply does not say)."""
    booked = reply.get("booked") if isinstance(reply, Mapping) else None
    return booked if isinstance(booked, bool) else None


class TierwiseSettler(CustomLogger):
    """A LiteLLM callback that settles each call `TierwiseRoutingStrategy` routed through `client`'s tierwise.

    Success: `POST /decisions/{id}/usage` with LiteLLM's `response_cost`, tokens and latency (a call LiteLLM
    could not price, reported as None or 0.0, posts its tokens, which tierwise prices at its tiers config's prices;
    one without token counts either keeps its reservation, with a warning). Failure of the call's last try:
    `cost_usd: null`, which releases the reservation and charges nothing. tierwise books each decision once, so
    a repeated event changes nothing. Settling never raises into LiteLLM: a failure is logged.

    LiteLLM reports nothing of an async call cancelled before it ends (`asyncio.wait_for`'s timeout, a request task
    cancelled because its client left): the strategy `watch`es each async call's task, and a task cancelled before
    LiteLLM reported its call's end releases the call's reservation `RELEASE_AFTER_CANCEL_S` later (on `RELEASES`'
    threads: the task's event loop may be closing), unless the end was reported meanwhile. The release
    (`POST /decisions/{id}/release`) leaves the decision open: an answer LiteLLM reports after it is still booked.
    """

    def __init__(self, client: TierwiseClient, remember: int = 10_000) -> None:
        super().__init__()
        # Each decision is settled through the client that made it: its tierwise, with its key (a process may route
        # through several tierwises, or one with several keys, and a decision belongs to the key that made it).
        self.clients: dict[str, TierwiseClient] = {client.identity: client}
        self._done: OrderedDict[str, None] = OrderedDict()  # decisions settled here (bounded): no second post
        # LiteLLM call id and upstream response id of each answered try -> its decision (bounded), for a score
        # posted later (post_score)
        self.answered: OrderedDict[str, Mapping[str, Any]] = OrderedDict()
        self._remember = remember
        self._ended: OrderedDict[str, None] = OrderedDict()  # decisions whose call LiteLLM reported ended (bounded)
        # decisions released because their task was cancelled -> when (bounded); open: an answer reported later is
        # still booked
        self._released_on_cancel: OrderedDict[str, float] = OrderedDict()
        # the decisions of each task's async calls, until the task ends
        self._watched: weakref.WeakKeyDictionary[asyncio.Task[Any], dict[str, Mapping[str, Any]]] = (
            weakref.WeakKeyDictionary()
        )
        self._lock = threading.Lock()
        # A process forked while a release worker (RELEASES) held the lock: the child's copy stayed held, and its
        # every settlement waited for it forever. The child gets a lock of its own (its parent runs the releases).
        me = weakref.ref(self)

        def new_lock_in_child() -> None:
            settler = me()
            if settler is not None:
                settler._lock = threading.Lock()

        os.register_at_fork(after_in_child=new_lock_in_child)

    def watch(self, decision: Mapping[str, Any]) -> None:
        """Watch the running task making `decision`'s call: if it is cancelled before LiteLLM reports the call's end,
        the decision is released (see the class)."""
        task = asyncio.current_task()
        if task is None or self._to_settle(decision) is None:
            return
        with self._lock:
            pending = self._watched.get(task)
            if pending is None:
                pending = self._watched[task] = {}
                task.add_done_callback(self._task_done)
            elif len(pending) >= WATCHED_PER_TASK:
                for did in [did for did in pending if did in self._ended or did in self._done]:
                    del pending[did]
                while len(pending) >= WATCHED_PER_TASK:  # calls cancelled inside a task that goes on: the oldest go
                    del pending[next(iter(pending))]
            pending[str(decision["decision_id"])] = decision

    def settled(self, decision: Mapping[str, Any]) -> bool:
        """Whether this settler settled the decision, or released it after its task was cancelled (a retry of that
        call is routed anew)."""
        did = str(decision.get("decision_id"))
        return did in self._done or did in self._released_on_cancel

    def _task_done(self, task: asyncio.Task[Any]) -> None:
        with self._lock:
            pending = self._watched.pop(task, None) or {}
        if not task.cancelled():
            return  # its calls ended (LiteLLM reported them), or a cancellation was caught inside it (not seen here)
        left = [d for did, d in pending.items() if did not in self._ended]
        if left:
            RELEASES.call_later(RELEASE_AFTER_CANCEL_S, self._release_cancelled, left, time.monotonic())

    def _release_cancelled(self, decisions: list[Mapping[str, Any]], cancelled_at: float) -> None:
        for decision in decisions:
            did = str(decision["decision_id"])
            # Under the lock _note_end takes: an answer reported now either stops this release or finds it marked.
            with self._lock:  # a retry of the call in another task, still running, may yet answer for it
                # (a release in flight or done: another cancelled task watched the same decision); the scan of the
                # tasks still running last, as it is the dear one
                if did in self._ended or did in self._released_on_cancel or not self._to_settle(decision):
                    continue
                if any(did in pending for pending in self._watched.values()):
                    continue
                self._released_on_cancel[did] = cancelled_at
                while len(self._released_on_cancel) > self._remember:
                    self._released_on_cancel.popitem(last=False)
            try:
                # The reservation is freed and the decision left open: an answer LiteLLM reports later still books
                # its cost (the decision is not marked settled here).
                reply = self.clients[decision["tierwise_client"]].release(did)
                if isinstance(reply, Mapping) and reply.get("settled") is True:  # its answer was booked first
                    self._mark(did)
                    with self._lock:
                        self._released_on_cancel.pop(did, None)
                    logger.info("decision %s of a cancelled call was settled by its answer before its release", did)
                else:
                    logger.info("decision %s released: its call was cancelled before it ended", did)
            except Exception as e:  # a release worker: log, never raise
                with self._lock:
                    self._released_on_cancel.pop(did, None)
                logger.warning("decision %s of a cancelled call not released: %s: %s", did, type(e).__name__, e)

    def _note_end(self, kwargs: Mapping[str, Any], ok: bool) -> str | None:
        """Remember that LiteLLM reported the end of a call (its answer, or its last failed try); its decision id."""
        if not (ok or _final_failure(kwargs)):
            return None
        decision = decision_of((kwargs.get("litellm_params") or {}).get("metadata") or {}, _trace_id(kwargs))
        if not (isinstance(decision, Mapping) and decision.get("decision_id")):
            return None
        did = str(decision["decision_id"])
        with self._lock:
            self._ended[did] = None
            while len(self._ended) > self._remember:
                self._ended.popitem(last=False)
        return did

    def _late_answer(self, did: str | None, kwargs: Mapping[str, Any], ok: bool, booked: bool | None) -> None:
        """Log an answer LiteLLM reported after its cancelled task's decision was released: its settlement books
        the cost on the session (the release left the decision open)."""
        if not ok or did is None:
            return
        with self._lock:
            cancelled_at = self._released_on_cancel.get(did)
        if cancelled_at is not None and booked is True:
            logger.info(
                "decision %s: LiteLLM reported the answer of its cancelled call %.1f s after the cancellation, after "
                "its reservation was released; its cost (%s) is booked on the session",
                did,
                time.monotonic() - cancelled_at,
                kwargs.get("response_cost"),
            )

    def _to_settle(self, decision: Any) -> Mapping[str, Any] | None:
        """The call's decision, if it is one to settle here: made by a tierwise this settler knows, not settled yet."""
        if not isinstance(decision, Mapping) or not decision.get("decision_id"):
            return None
        if decision.get("tierwise_client") not in self.clients:
            return None  # a tierwise (or key) no strategy of this process settles
        return None if str(decision["decision_id"]) in self._done else decision

    def _answered(self, decision: Any, kwargs: Mapping[str, Any], response: Any, ok: bool) -> None:
        """Record which decision an answered try belongs to (by LiteLLM's call id and the upstream's response id);
        drop a call that ended from its metadata's calls in flight (a success, or a failure LiteLLM won't retry)."""
        if not isinstance(decision, Mapping) or not (ok or _final_failure(kwargs)):
            return
        keys = [k for k in (kwargs.get("litellm_call_id"), getattr(response, "id", None)) if isinstance(k, str) and k]
        if ok and keys:
            with _IN_FLIGHT_LOCK:
                for key in keys:  # an upstream that reuses one response id names no call by it
                    earlier = self.answered.get(key)
                    self.answered[key] = decision if earlier is None or earlier is decision else AMBIGUOUS
                while len(self.answered) > 2 * self._remember:
                    self.answered.popitem(last=False)
        forget((kwargs.get("litellm_params") or {}).get("metadata"), decision)

    def _body(
        self, call_decision: Any, kwargs: Mapping[str, Any], response: Any, start: Any, end: Any, ok: bool
    ) -> tuple[TierwiseClient, str, dict[str, Any]] | None:
        decision = self._to_settle(call_decision)
        if decision is None:
            return None
        did, client = str(decision["decision_id"]), self.clients[decision["tierwise_client"]]
        if not ok:
            return (client, did, {"cost_usd": None}) if _final_failure(kwargs) else None
        body = usage_of(kwargs, response, start, end)
        if body is None:
            logger.warning("neither cost nor tokens for decision %s (give the deployment its prices): not settled", did)
            return None
        return client, did, body

    def _mark(self, did: str) -> None:
        with self._lock:
            self._done[did] = None
            while len(self._done) > self._remember:
                self._done.popitem(last=False)

    def _post(self, kwargs: Any, response: Any, start: Any, end: Any, ok: bool) -> None:
        try:
            did = self._note_end(kwargs, ok)
            decision = _call_decision(kwargs, ok)  # looked up once per callback
            todo = self._body(decision, kwargs, response, start, end, ok)
            self._answered(decision, kwargs, response, ok)
            booked = None
            if todo:
                reply = todo[0].settle(todo[1], todo[2])
                self._mark(todo[1])
                booked = _booked(reply)
            self._late_answer(did, kwargs, ok, booked)
        except Exception as e:  # a callback must not break the call it reports on
            logger.warning("tierwise decision not settled: %s: %s", type(e).__name__, e)

    async def _apost(self, kwargs: Any, response: Any, start: Any, end: Any, ok: bool) -> None:
        try:
            did = self._note_end(kwargs, ok)
            decision = _call_decision(kwargs, ok)  # looked up once per callback
            todo = self._body(decision, kwargs, response, start, end, ok)
            self._answered(decision, kwargs, response, ok)
            booked = None
            if todo:
                reply = await todo[0].asettle(todo[1], todo[2])
                self._mark(todo[1])
                booked = _booked(reply)
            self._late_answer(did, kwargs, ok, booked)
        except Exception as e:  # a callback must not break the call it reports on
            logger.warning("tierwise decision not settled: %s: %s", type(e).__name__, e)

    def log_success_event(self, kwargs: Any, response_obj: Any, start_time: Any, end_time: Any) -> None:
        self._post(kwargs, response_obj, start_time, end_time, ok=True)

    def log_failure_event(self, kwargs: Any, response_obj: Any, start_time: Any, end_time: Any) -> None:
        self._post(kwargs, response_obj, start_time, end_time, ok=False)

    async def async_log_success_event(self, kwargs: Any, response_obj: Any, start_time: Any, end_time: Any) -> None:
        await self._apost(kwargs, response_obj, start_time, end_time, ok=True)

    async def async_log_failure_event(self, kwargs: Any, response_obj: Any, start_time: Any, end_time: Any) -> None:
        await self._apost(kwargs, response_obj, start_time, end_time, ok=False)


_SETTLER: TierwiseSettler | None = None


def shared_settler(client: TierwiseClient) -> TierwiseSettler:
    """The process's one settler (LiteLLM keeps one callback of a class), now also settling on `client`'s
    tierwise; added to LiteLLM's callbacks the first time."""
    global _SETTLER
    if _SETTLER is None:
        _SETTLER = TierwiseSettler(client)
    _SETTLER.clients[client.identity] = client
    if _SETTLER not in litellm.callbacks:
        litellm.logging_callback_manager.add_litellm_callback(_SETTLER)
    return _SETTLER
