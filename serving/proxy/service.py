"""One chat completion through tierwise: route the prompt view, serve it upstream, settle the decision, answer."""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import time
from collections.abc import AsyncGenerator, Awaitable, Callable, Mapping
from contextlib import suppress
from typing import Any

import anyio
from pydantic import ValidationError
from sqlalchemy.exc import SQLAlchemyError
from starlette.concurrency import run_in_threadpool
from starlette.responses import Response, StreamingResponse
from starlette.types import Receive, Scope, Send

from infra.settings import Settings
from infra.store import SERVED_BY_PROXY, Store, StoreBusy
from router.schema import Tier
from router.text import MAX_TOKENS
from serving.errors import ServiceError
from serving.metrics import UpstreamMetrics
from serving.outcomes import OutcomeRecorder, describe
from serving.proxy.answer_bound import asked_limit, input_tokens, with_limit, worst_case
from serving.proxy.dispatch import Dispatcher, NoRoom, Prepare, RetryPolicy, Served, Trail
from serving.proxy.upstream import UpstreamClient, UpstreamFailure
from serving.proxy.wire import (
    KNOB_HEADERS,
    MODEL,
    TIER_PREFIX,
    ChatCompletionRequest,
    DoorJSONResponse,
    error_body,
    header_text,
    prompt_view,
    sse,
    upstream_body,
)
from serving.routing import RETRY_IN_FLIGHT_S, Routing, over_budget, route_request_started
from serving.runtime import Runtime
from serving.schemas import CountedRouteOptions, RouteOptions, RouteResponse, _storable

Settle = Callable[..., Awaitable[Any]]  # Store.settle_decision, or OutcomeRecorder's (spools in an outage), awaited
logger = logging.getLogger(__name__)


class ProxyError(Exception):
    """A request the proxy answers with an OpenAI-format error."""

    def __init__(
        self,
        status: int,
        message: str,
        type_: str,
        code: str | None = None,
        param: str | None = None,
        headers: dict[str, str] | None = None,
    ):
        super().__init__(message)
        self.status = status
        self.body = error_body(message, type_, code, param)
        self.headers = headers

    def naming(self, decision_id: str) -> ProxyError:
        """This error with the decision it settled (a header, and `decision_id` in the error), so the caller can
        find that decision (GET /sessions, the admin page) as it would an answered one."""
        self.headers = {**(self.headers or {}), "X-Tierwise-Decision-Id": decision_id}
        self.body["error"]["decision_id"] = decision_id
        return self


# The answer to a request no upstream answered, by the last failure's kind.
FAILURE_ANSWERS: dict[str, tuple[int, str, str]] = {
    "timeout": (504, "api_error", "upstream_timeout"),
    "rate_limited": (429, "rate_limit_error", "upstream_rate_limited"),
    "server": (502, "api_error", "upstream_error"),
    "connection": (502, "api_error", "upstream_unreachable"),
    "config": (502, "api_error", "upstream_not_configured"),
}


def failure_error(failure: UpstreamFailure, trail: Trail) -> ProxyError:
    """The caller's error when no upstream answered: the tiers tried (and fallbacks skipped), then the last failure.
    When the last upstream said when to come back (429, 503), so does the answer: `Retry-After` (whole seconds, the
    soonest any upstream tried said) and `retry-after-ms`, which the OpenAI SDKs read before retrying; an upstream's
    503 stays a 503 then."""
    if failure.kind == "client":  # the upstream refused the request itself: the caller's to fix
        return ProxyError(failure.status or 400, failure.message, "invalid_request_error", "upstream_refused")
    status, type_, code = FAILURE_ANSWERS[failure.kind]
    tried = f"tier(s) tried: {', '.join(trail.failed_tiers)}"
    if trail.skipped:
        tried += f"; skipped (over the max cost or the session's cap): {', '.join(trail.skipped)}"
    message = f"no upstream answered ({tried}); last: {failure}"
    retry_after_s = trail.retry_after_s()
    if failure.retry_after_s is None or retry_after_s is None:
        return ProxyError(status, message, type_, code)
    if failure.status == 503:
        status, code = 503, "upstream_unavailable"
    headers = {"Retry-After": str(retry_after_s), "retry-after-ms": str(retry_after_s * 1000)}
    return ProxyError(status, f"{message}; retry after {retry_after_s} s", type_, code, headers=headers)


def route_options(req: ChatCompletionRequest, headers: Mapping[str, str], tier_names: list[str]) -> RouteOptions:
    """/route's options from the `X-Tierwise-*` headers, overridden by the body's `tierwise` field; a model
    `tierwise/<tier>` sets min_tier."""
    raw: dict[str, Any] = {}
    for header, name in KNOB_HEADERS.items():
        value = headers.get(header)
        if value is None:
            continue
        value = _utf8(value)
        if name in ("session_id", "task") or (name == "min_tier" and not (value.isascii() and value.strip().isdigit())):
            raw[name] = value.strip()  # a min_tier that is not a whole number is a tier name
        elif name == "min_tier":
            raw[name] = int(value)
        else:
            try:
                raw[name] = float(value)
            except ValueError:
                raise ProxyError(400, f"header {header}: not a number", "invalid_request_error", None, header) from None
    if req.tierwise is not None:
        raw.update(req.tierwise.model_dump(exclude_unset=True))
    if req.model != MODEL:
        tier = req.model.removeprefix(TIER_PREFIX)
        if not req.model.startswith(TIER_PREFIX) or tier not in tier_names:
            names = ", ".join([MODEL, *(TIER_PREFIX + n for n in tier_names)])
            raise ProxyError(404, f"model '{req.model}' does not exist; use one of {names}", "invalid_request_error",
                             "model_not_found", "model")  # fmt: skip
        # `tierwise/<tier>` routes from that tier up: a lower min_tier (a client's default header) does not lower it
        raw["min_tier"] = _higher_floor(raw.get("min_tier"), tier, tier_names)
    try:
        return RouteOptions.model_validate(raw)
    except ValidationError as exc:
        err = exc.errors()[0]
        param = ".".join(str(p) for p in err["loc"])
        raise ProxyError(400, f"tierwise option {param}: {err['msg']}", "invalid_request_error", None, param) from None


def _utf8(value: str) -> str:
    """A header value as its sender wrote it: HTTP hands over bytes, which Starlette reads as Latin-1, so a task
    or session id sent in UTF-8 ("café") arrived garbled ("cafÃ©"); bytes that are no UTF-8 stay as read."""
    try:
        return value.encode("latin-1").decode("utf-8")
    except UnicodeError:
        return value


def _higher_floor(asked: Any, model_tier: str, tier_names: list[str]) -> Any:
    """The higher of a request's min_tier (an index or a name) and its model's tier; a min_tier naming no tier is
    kept, to be refused as on /route."""
    if asked is None:
        return model_tier
    at = asked if isinstance(asked, int) and not isinstance(asked, bool) else None
    if isinstance(asked, str) and asked in tier_names:
        at = tier_names.index(asked)
    if at is None or at >= len(tier_names):
        return asked
    return tier_names[max(at, tier_names.index(model_tier))]


@dataclasses.dataclass
class Proxy:
    """The door's state, made once in the app's lifespan: the dispatcher with its pooled client, and the outcome
    recorder whose spool keeps a settlement the store could not take (None: settle on the store, or log)."""

    dispatcher: Dispatcher
    recorder: OutcomeRecorder | None = None

    async def aclose(self) -> None:
        await self.dispatcher.client.aclose()

    def settler(self, store: Store, on_loop: bool) -> Settle:
        """The decision's settlement: on the event loop where its commit waits for neither the disk nor the network
        (a sessionless decision on SQLite with decision_commit=async: ~0.1 ms, less than the two thread hops, as the
        decision's own commit does, unless another writer holds the file), else in the threadpool."""
        book: Callable[..., Any] = self.recorder.settle_decision if self.recorder is not None else store.settle_decision

        async def settle(decision_id: str, **usage: Any) -> Any:
            if on_loop:
                try:
                    return book(decision_id, **usage, wait=False)
                except StoreBusy:  # another writer holds the file: wait for it in the threadpool, not on the loop
                    pass
            return await run_in_threadpool(book, decision_id, **usage)

        return settle

    async def chat(self, req: ChatCompletionRequest, headers: Mapping[str, str], ctx: Routing) -> Response:
        """Route the request's prompt view with `ctx` (the model, the store and its committer, the caller),
        serve it upstream, settle the decision and answer."""
        rt, store = ctx.rt, ctx.store
        opts = route_options(req, headers, rt.tiers.names)
        prompt = prompt_view(req.messages)
        if not prompt.strip():
            raise ProxyError(400, "no text to route: the messages have no system text and no user text",
                             "invalid_request_error", None, "messages")  # fmt: skip
        try:
            _storable(prompt)  # as /route refuses it: NUL (PostgreSQL) or a lone surrogate (no tokenizer, no UTF-8)
        except ValueError as exc:
            raise ProxyError(400, f"messages {exc}", "invalid_request_error", None, "messages") from None
        # The decision's commit runs while the upstream answers, and is awaited before anything is answered or
        # settled. It is queued only once the upstream request is on the wire (`trail.sent`): committing takes the
        # writer thread about a millisecond of CPU, most of it holding the GIL, and started at once it delayed
        # sending the request by about that much (bench.proxy).
        trail = Trail(upstream_words=ctx.settings.prompt_storage == "text")  # may quote the prompt: kept as it is
        # Routing prices the input the door sends (the whole conversation, tools, images), as its hold does.
        body = upstream_body(req)
        tokens_in = min(max(1, input_tokens(body)), MAX_TOKENS)  # a count past any context prices as the most
        given = {name: getattr(opts, name) for name in opts.model_fields_set}
        opts = CountedRouteOptions(**given, input_tokens=tokens_in)
        # The door settles its decisions itself (`_settle`): an outcome posted before that does not (migration 0005).
        ctx = dataclasses.replace(ctx, served_by=SERVED_BY_PROXY)
        [decision], committed = await route_request_started(ctx, [prompt], opts, after=trail.sent)
        settle = self.settler(store, on_loop=decision.session_id is None and store.decision_commit_is_local)
        started = time.perf_counter()
        try:
            served = await while_committing(
                committed,
                self.dispatcher.serve(
                    rt.tiers,
                    rt.tiers.tier(decision.tier),
                    body,
                    req.stream,
                    trail,
                    prepare_for(
                        rt,
                        prompt,
                        tokens_in,
                        decision,
                        opts.max_cost_usd,
                        lambda: _usage_info(trail)["cost_usd"],
                        store,
                        trail,
                        ctx.settings.session_answer_tokens,
                    ),
                ),
                trail.sent,
            )
        except UpstreamFailure as failure:
            await _settle(settle, decision, trail, started, None, self.dispatcher.metrics)
            raise failure_error(failure, trail).naming(decision.decision_id) from None
        except NoRoom as exc:
            await _settle(settle, decision, trail, started, None, self.dispatcher.metrics)
            raise (await _no_room(store, decision, exc)).naming(decision.decision_id) from None
        except BaseException:  # cancelled (the caller left) or a bug: release the reservation, charge nothing
            with anyio.CancelScope(shield=True):
                if await _stored(committed):  # a row never stored needs no settling
                    await _settle(settle, decision, trail, started, None, self.dispatcher.metrics)
            raise
        info = _info(decision, served, trail)
        headers_out = {
            "X-Tierwise-Decision-Id": decision.decision_id,
            "X-Tierwise-Tier": header_text(served.tier.name),
            "X-Tierwise-Model": header_text(served.tier.model),
        }
        if trail.left_out:
            headers_out["X-Tierwise-Left-Out"] = header_text(",".join(trail.left_out))
        counted = self.dispatcher.metrics
        if served.body is not None:
            await _settle(settle, decision, trail, started, served, counted)
            info.update(_usage_info(trail))
            return DoorJSONResponse({**served.body, "tierwise": info}, headers=headers_out)
        include_usage = bool((upstream_body(req).get("stream_options") or {}).get("include_usage"))
        unstarted = RelayBody(
            _relay(served, info, include_usage, settle, decision, trail, started, counted),
            lambda: _settle_unstarted(served, settle, decision, trail, started, counted),
        )
        try:
            return ClosingStreamingResponse(
                unstarted, media_type="text/event-stream", headers={**headers_out, "Cache-Control": "no-cache"}
            )
        except BaseException:  # no response to close the stream: settle it here (a bug, but no stranded reservation)
            with anyio.CancelScope(shield=True):
                await unstarted.aclose()
            raise


async def while_committing(
    committed: asyncio.Future[None], call: Awaitable[Served], done: asyncio.Event | None = None
) -> Served:
    """`call`'s result once the decision's commit is done too; the commit's failure cancels the call and is raised
    (the store is down: nothing is answered, as when /route cannot record), before any upstream failure.
    `done` is set when the call ends, however it ends (even cancelled before it started)."""
    task = asyncio.ensure_future(call)
    if done is not None:
        task.add_done_callback(lambda _: done.set())
    both: set[asyncio.Future[Any]] = {committed, task}
    try:
        await asyncio.wait(both, return_when=asyncio.FIRST_EXCEPTION)
        if not await _stored(committed):
            task.cancel()
            with suppress(BaseException):
                await task
            await committed  # raise the store's error
    except BaseException:
        task.cancel()  # the caller left: so does the upstream call
        raise
    return await task


async def _stored(committed: asyncio.Future[None]) -> bool:
    """Whether the decision's commit succeeded (waiting for it)."""
    try:
        await committed
    except asyncio.CancelledError:
        if committed.cancelled():
            return False
        raise  # this request was cancelled, not the commit
    except Exception:
        return False
    return True


def prepare_for(
    rt: Runtime,
    prompt: str,
    tokens_in: int,
    decision: RouteResponse,
    max_cost_usd: float | None,
    spent: Callable[[], float],
    store: Store,
    trail: Trail,
    answer_tokens: int,
) -> Prepare | None:
    """What each tier the request may be served by is sent, or None to skip it (None: send the body as it is).

    Expected costs are routing's (`tokens_in`: the input the door counted, as routing priced it).

    A fallback's expected cost plus what the request has spent already (calls that answered, e.g. the members of a
    fusion tier whose judge failed) must be within its max cost. On a capped session every tier, the routed one
    too, holds its worst case (answer_bound): the decision's reservation grows, on the locked session row, to what
    the request has spent plus the tier's worst case with the caller's answer limit (else `answer_tokens`), or as far
    as the cap leaves room, and the body's limit is lowered to that. A tier is skipped when the cap has no room, on
    top of what was spent, for its expected cost (at least its input and one answer token; at most its worst case):
    other requests may have reserved what was left when this one was routed."""
    capped = decision.session_id is not None and decision.budget_left_usd is not None
    if max_cost_usd is None and not capped:
        return None
    cost = dict(zip(rt.tiers.names, rt.router.expected_cost([prompt], [tokens_in])[0], strict=True))

    async def prepare(tier: Tier, body: dict[str, Any]) -> dict[str, Any] | None:
        if tier.name != decision.tier and max_cost_usd is not None and spent() + float(cost[tier.name]) > max_cost_usd:
            return None
        if not capped:
            return body
        assert decision.session_id is not None
        worst, want, paid = worst_case(rt.tiers, tier, body, tokens_in), asked_limit(body) or answer_tokens, spent()
        held = await run_in_threadpool(
            store.grow_reservation_within,
            decision.decision_id,
            decision.session_id,
            paid + min(max(float(cost[tier.name]), worst.usd(1)), worst.usd(want)),
            paid + worst.usd(want),
        )
        if held is None:
            return None
        # At least one token: `held` covers the least asked, which covers one (up to rounding in the subtraction).
        trail.answer_limit = int(max(1, min(want, worst.tokens_within(held - paid))))
        return with_limit(body, trail.answer_limit)

    return prepare


async def _no_room(store: Store, decision: RouteResponse, exc: NoRoom) -> ProxyError:
    """The 402 of a request no tier fits once its worst case is counted (its input alone, or what is left after
    a fallback's spend): the session as it is now, left open, with `Retry-After` when calls in flight hold some of
    it; nothing was charged."""
    message = f"{exc} in session {decision.session_id}: nothing was charged and the session stays open"
    assert decision.session_id is not None  # only a capped session's tiers are skipped for want of room
    row, held, holding = await run_in_threadpool(store.session_and_holding, decision.session_id)
    wait = {"Retry-After": str(RETRY_IN_FLIGHT_S)} if held > 0 else None
    error = ProxyError(402, message, "insufficient_quota", "over_budget", headers=wait)
    if row is not None:
        error.body["error"]["session"] = over_budget(row, message, held_by=holding).body
    return error


def _info(decision: RouteResponse, served: Served, trail: Trail) -> dict[str, Any]:
    """The `tierwise` field of an answer: the decision, who served it, and what was left out or failed."""
    info: dict[str, Any] = {
        "decision_id": decision.decision_id,
        "tier": served.tier.name,
        "model": served.tier.model,
        "routed_tier": decision.tier,
        "session_id": decision.session_id,
        "fallback_from": list(trail.failed_tiers),
    }
    if trail.answer_limit is not None:
        info["max_tokens"] = trail.answer_limit
    if served.tier.kind == "fusion":
        info["fusion"] = {"answered": list(trail.members), "left_out": list(trail.left_out), "judge": served.tier.judge}
    return info


def _usage_info(trail: Trail) -> dict[str, Any]:
    return {
        "cost_usd": sum(u.cost_usd for u in trail.usages),
        "tokens_in": sum(u.tokens_in for u in trail.usages),
        "tokens_out": sum(u.tokens_out for u in trail.usages),
        "usage_estimated": any(u.estimated for u in trail.usages),
    }


def _count_settled(metrics: UpstreamMetrics | None, trail: Trail) -> None:
    """Add a settled request's tokens and cost, per upstream model, to the metrics."""
    if metrics is None:
        return
    for u in trail.usages:
        metrics.tokens.labels(u.model, "in").inc(u.tokens_in)
        metrics.tokens.labels(u.model, "out").inc(u.tokens_out)
        metrics.cost.labels(u.model).inc(u.cost_usd)


async def _settle(
    settle: Settle,
    decision: RouteResponse,
    trail: Trail,
    started: float,
    served: Served | None,
    metrics: UpstreamMetrics | None,
) -> None:
    """Book the decision: the real cost of every call that answered, also when the caller got no answer (the
    members of a fusion tier whose judge failed cost what they cost); nothing when no call answered. The tokens and
    cost booked are counted in `metrics`."""
    charged = served is not None or bool(trail.usages)
    if charged:
        _count_settled(metrics, trail)
    note = trail.note()
    if served is None:
        what = (
            f"charged the {len(trail.usages)} call(s) that answered"
            if trail.usages
            else "no upstream answered, nothing charged"
        )
        note = "; ".join(p for p in (note, f"not served: {what}") if p)
    reason = f"{decision.reason}; {note}" if note else None
    usage = _usage_info(trail)
    try:
        # Shielded: a caller who leaves as the answer ends cancels the response, and a settlement cancelled there
        # left the decision's reservation (its worst case, in a capped session) held for good.
        with anyio.CancelScope(shield=True):
            await settle(
                decision.decision_id,
                cost_usd=usage["cost_usd"] if charged else None,
                tokens_in=usage["tokens_in"] if charged else None,
                tokens_out=usage["tokens_out"] if charged else None,
                latency_ms=(time.perf_counter() - started) * 1000,
                served_model=served.tier.model if served is not None else None,
                reason=reason,
                sessionless=decision.session_id is None,
            )
    except (SQLAlchemyError, ServiceError) as exc:  # the answer is the caller's either way
        # With the store unreachable the settlement is spooled (OutcomeRecorder.settle_decision); this is a store
        # that refused it, or a spool that could not be written: the reservation stays booked.
        logger.error("could not settle decision %s (%s): its reservation stays", decision.decision_id, describe(exc))
    except Exception:  # a bug, or a value no check foresaw: still the caller paid for the answer it is getting
        logger.exception("could not settle decision %s: its reservation stays", decision.decision_id)


class ClosingStreamingResponse(StreamingResponse):
    """A StreamingResponse that closes its body iterator however the response ends. Starlette's never does: a
    caller who leaves while a write to it is blocked (it stopped reading) cancels the response in `send`, with the
    iterator paused at its `yield`; its cleanup (the relay's settlement, the upstream's connection) then waited for
    the garbage collector."""

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        try:
            await super().__call__(scope, receive, send)
        finally:
            close = getattr(self.body_iterator, "aclose", None)
            if close is not None:
                with anyio.CancelScope(shield=True):
                    await close()


class RelayBody:
    """The relay's events, and its settlement when the response ends before the relay started: a caller who left
    while the upstream's first event was coming has its response cancelled before the body is first read (uvicorn's
    ASGI 2.3), and closing a generator that never started runs none of it."""

    def __init__(self, relay: AsyncGenerator[bytes, None], unstarted: Callable[[], Awaitable[None]]):
        self._relay = relay
        self._unstarted: Callable[[], Awaitable[None]] | None = unstarted

    def __aiter__(self) -> RelayBody:
        return self

    async def __anext__(self) -> bytes:
        self._unstarted = None  # the relay settles from here on, however it ends
        return await self._relay.__anext__()

    async def aclose(self) -> None:
        unstarted, self._unstarted = self._unstarted, None
        if unstarted is not None:
            await unstarted()
        await self._relay.aclose()


async def _settle_unstarted(
    served: Served,
    settle: Settle,
    decision: RouteResponse,
    trail: Trail,
    started: float,
    metrics: UpstreamMetrics | None,
) -> None:
    """A stream nobody read: its upstream connection closed, the call charged as a caller who left is (the
    upstream's usage, else an estimate of its input and the text it sent)."""
    assert served.stream is not None
    await served.stream.aclose()
    trail.usages.append(served.stream.usage())
    await _settle(settle, decision, trail, started, served, metrics)


async def _relay(
    served: Served,
    info: dict[str, Any],
    include_usage: bool,
    settle: Settle,
    decision: RouteResponse,
    trail: Trail,
    started: float,
    metrics: UpstreamMetrics | None,
) -> AsyncGenerator[bytes, None]:
    """The upstream's events as SSE, `tierwise` on the first; settled before `[DONE]`.

    Usage is asked of the upstream always; its usage-only chunk reaches the caller only if the caller asked too,
    held back until the call is settled and sent last with `tierwise` again, now with what the call cost (another
    chunk without choices, an Azure-like filter report, passes as it comes); an upstream that sent none, or sent
    its usage on a chunk with choices, gets one made of the usage booked.
    A failure mid-stream ends the stream with an OpenAI error event and charges nothing; a caller who leaves
    is charged for what was used (the upstream's usage, else an estimate of the text streamed).
    """
    assert served.stream is not None
    first = True
    usage_chunk: dict[str, Any] | None = None
    last: dict[str, Any] = {}
    try:
        async for event in served.stream.events():
            last = event
            if first:
                event, first = {**event, "tierwise": info}, False
            elif not event.get("choices"):
                if not include_usage:
                    continue
                if event.get("usage"):
                    if usage_chunk is not None:  # an earlier usage chunk: the last one carries the cost
                        yield sse(usage_chunk)
                    usage_chunk = event
                    continue
            yield sse(event)
    except UpstreamFailure as failure:
        said = trail.failed(f"{failure.model} mid-stream", failure)
        await _settle(settle, decision, trail, started, None, metrics)
        logger.warning("upstream %s failed mid-stream: %s", failure.model, said)
        yield sse(error_body(f"the upstream failed mid-stream: {failure}", "api_error", "upstream_error"))
        return
    except BaseException:
        trail.usages.append(served.stream.usage())
        with anyio.CancelScope(shield=True):
            await _settle(settle, decision, trail, started, served, metrics)
        raise
    trail.usages.append(served.stream.usage())
    await _settle(settle, decision, trail, started, served, metrics)
    if include_usage:  # the upstream's usage-only chunk, or one of the usage booked (it sent none, or with choices)
        paid = _usage_info(trail)
        yield sse({**(usage_chunk or _usage_chunk(last, paid)), "tierwise": {**info, **paid}})
    yield sse("[DONE]")


def _usage_chunk(last: Mapping[str, Any], paid: Mapping[str, Any]) -> dict[str, Any]:
    """A usage-only chunk as OpenAI sends it, of the stream whose last chunk was `last`, with the usage booked."""
    tokens_in, tokens_out = int(paid["tokens_in"]), int(paid["tokens_out"])
    usage = {"prompt_tokens": tokens_in, "completion_tokens": tokens_out, "total_tokens": tokens_in + tokens_out}
    same = {k: last[k] for k in ("id", "created", "model", "system_fingerprint") if k in last}
    return {**same, "object": "chat.completion.chunk", "choices": [], "usage": usage}


def open_proxy(
    settings: Settings,
    environ: Mapping[str, str],
    metrics: UpstreamMetrics | None = None,
    recorder: OutcomeRecorder | None = None,
) -> Proxy:
    """The proxy with the service's one pooled upstream client (close it with `aclose`); `environ` holds the
    upstreams' keys, read when a call is made (so a rotated key is picked up), and any forward proxy for them
    (HTTPS_PROXY, NO_PROXY, ...: read now). Upstream calls count in `metrics`."""
    client = UpstreamClient(
        settings.upstream_timeout_s, settings.upstream_connect_timeout_s, settings.upstream_max_connections, environ
    )
    policy = RetryPolicy(
        settings.upstream_retries,
        settings.upstream_retry_backoff_s,
        settings.upstream_max_retry_after_s,
        settings.upstream_deadline_s,
    )
    return Proxy(Dispatcher(client, policy, environ, metrics), recorder)
