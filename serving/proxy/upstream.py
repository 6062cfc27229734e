"""Calls to OpenAI-compatible upstreams through the service's one pooled client (aiohttp), and how they fail.

aiohttp, not httpx: its HTTP/1.1 client is C-accelerated, and a call over a kept-alive loopback connection took
0.63-0.65 ms against httpx.AsyncClient's 1.3-1.7 ms on a Zen 3 core (2026-11-26, the tests' fake upstream, no delay),
about a third of what the door added to an upstream's latency (bench/proxy.py).
"""

from __future__ import annotations

import asyncio
import json
import math
import os
import time
import weakref
from collections.abc import AsyncIterator, Callable, Iterator, Mapping
from contextlib import suppress
from dataclasses import dataclass
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime
from types import SimpleNamespace
from typing import Any, Literal
from urllib.parse import urlsplit

import aiohttp
import anyio

from router.schema import ModelPrice, TiersConfig
from router.text import MAX_TOKENS, token_estimate
from serving.proxy.answer_bound import answer_tokens_at_most, choices, in_field, input_tokens
from serving.schemas import storable_text

FailureKind = Literal["timeout", "rate_limited", "server", "connection", "config", "client"]
RETRYABLE: frozenset[str] = frozenset({"timeout", "rate_limited", "server", "connection"})
DRAIN_S = 0.05  # how long a stream's body is read past `[DONE]` for its end, to keep the connection
AFTER_FINISH_S = 2.0  # how long a whole answer's stream waits for its usage chunk or `[DONE]`
MAX_RETRY_AFTER_S = 86_400.0  # an upstream's Retry-After is read up to a day (a longer one is a day)
MAX_JSON_DEPTH = 64  # an upstream's JSON nested deeper is no chat completion (one is ~6 deep, with logprobs ~8)
OnSent = Callable[[], None]
"""Called once a call's request body is handed to the connection (its first chunk: a JSON body is one)."""
HTTP_ERRORS = (aiohttp.ClientError, TimeoutError)
"""What a call can raise for the network's or the upstream's sake (aiohttp's read timeouts are TimeoutErrors)."""


class UpstreamFailure(Exception):
    """One upstream call that gave no answer.

    `timeout`, `rate_limited` (429), `server` (5xx or an unreadable answer) and `connection` are retried and then
    fall back; `config` (no upstream, no key, or the upstream refusing our key or model name) falls back at once;
    `client` (the upstream refused the request itself, e.g. a bad tool schema) goes back to the caller as it is.
    `retry_after_s` is the upstream's Retry-After (429, 503), counted from `at` (monotonic seconds).
    `quotes_upstream`: `message` carries the upstream's own words (its error message or error event), which may
    quote the prompt; kept out of the store and the log unless prompts are stored as text (`at_rest`).
    """

    def __init__(
        self,
        model: str,
        kind: FailureKind,
        message: str,
        status: int | None = None,
        retry_after_s: float | None = None,
        quotes_upstream: bool = False,
    ):
        message = storable_text(message)  # the upstream's words go into the caller's error and the stored reason
        super().__init__(f"{model}: {message}")
        self.model = model
        self.kind = kind
        self.message = message
        self.status = status
        self.retry_after_s = retry_after_s
        self.quotes_upstream = quotes_upstream
        self.at = time.monotonic()

    def at_rest(self, upstream_words: bool) -> str:
        """What the stored reason and the log say of the failure: its message, or, when it quotes the upstream and
        `upstream_words` is False (prompts are not stored as text), only its kind and HTTP status."""
        if upstream_words or not self.quotes_upstream:
            return self.message
        status = f" HTTP {self.status}" if self.status is not None else ""
        return f"{self.kind}{status} (the upstream's message is not stored: TIERWISE_PROMPT_STORAGE is not text)"

    @property
    def retryable(self) -> bool:
        return self.kind in RETRYABLE

    def retry_in_s(self, now: float) -> float | None:
        """Seconds from `now` (monotonic) until the upstream said to come back; None when it did not say."""
        return None if self.retry_after_s is None else max(0.0, self.at + self.retry_after_s - now)


@dataclass(frozen=True)
class Endpoint:
    """Where one catalogue model is called, and its price."""

    model: str
    url: str
    upstream_model: str
    api_key: str | None
    price: ModelPrice

    def headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.api_key}"} if self.api_key else {}


def endpoint_for(model: str, tiers: TiersConfig, environ: Mapping[str, str]) -> Endpoint:
    """The upstream of a catalogue model; a model without one is a `config` failure naming what is missing."""
    price = tiers.models.get(model)
    if price is None or price.base_url is None:
        raise UpstreamFailure(model, "config", "no upstream configured (give it a base_url under [models])")
    key = None
    if price.api_key_env is not None:
        key = environ.get(price.api_key_env)
        if not key:
            raise UpstreamFailure(model, "config", f"its api_key_env {price.api_key_env} is not set")
    return Endpoint(model, price.base_url.rstrip("/") + "/chat/completions", price.upstream_model or model, key, price)


@dataclass(frozen=True)
class Usage:
    """Tokens one call used and what they cost at the catalogue price; `estimated` when the upstream sent no usage."""

    model: str
    tokens_in: int
    tokens_out: int
    cost_usd: float
    estimated: bool = False


def usage_of(ep: Endpoint, usage: Any, body: Mapping[str, Any], answer_tokens: float) -> Usage:
    """Cost one call from its `usage` and the catalogue price; without usage, from the estimates of its input
    (answer_bound.input_tokens) and of its answer (`answer_tokens`, the sum of `answer_token_estimate`)."""
    try:
        tokens_in, tokens_out = int(usage["prompt_tokens"]), int(usage["completion_tokens"])
        if tokens_in < 0 or tokens_out < 0:
            raise ValueError("a negative token count is no usage")  # it would make an answered call free
        estimated = False
    except (TypeError, KeyError, ValueError, OverflowError):  # OverflowError: an infinite count
        tokens_in, tokens_out = input_tokens(body), math.ceil(answer_tokens)
        most = answer_tokens_at_most(body)  # an upstream that honours the limit sent no more than that
        tokens_out = tokens_out if most is None else min(tokens_out, most)
        estimated = True
    # Within the store's integer columns: a count past MAX_TOKENS is no real usage, and its settlement was refused.
    tokens_in, tokens_out = min(max(tokens_in, 0), MAX_TOKENS), min(max(tokens_out, 0), MAX_TOKENS)
    cost = (tokens_in * ep.price.input_per_1m + tokens_out * ep.price.output_per_1m) / 1e6
    return Usage(ep.model, tokens_in, tokens_out, cost, estimated)


def answer_token_estimate(body: Mapping[str, Any]) -> float:
    """The answer's message contents in tokens (router.text.token_estimate; for a usage estimate). Unrounded, so
    that the estimates of a stream's chunks add up to the whole answer's."""
    total = 0.0
    choices = body.get("choices")
    for choice in choices if isinstance(choices, list) else []:
        if not isinstance(choice, dict):
            continue
        msg = choice.get("message") or choice.get("delta")
        total += sum(token_estimate(text) for text in _answer_texts(msg)) if isinstance(msg, dict) else 0.0
    return total


def _answer_texts(msg: Mapping[str, Any]) -> Iterator[str]:
    """What a message (or a stream's delta) answers in text: its content, a refusal, and the names and arguments of
    its tool calls (or legacy function call), which an upstream bills as answer tokens too."""
    for key in ("content", "refusal"):
        if isinstance(msg.get(key), str):
            yield msg[key]
    calls = msg.get("tool_calls")
    functions = [c.get("function") for c in calls if isinstance(c, dict)] if isinstance(calls, list) else []
    for function in [*functions, msg.get("function_call")]:
        if isinstance(function, dict):
            yield from (function[k] for k in ("name", "arguments") if isinstance(function.get(k), str))


def retry_after_of(headers: Mapping[str, str]) -> float | None:
    """An answer's wait hint in seconds: OpenAI's `retry-after-ms`, else `Retry-After` as seconds or an HTTP date.

    None when absent or unreadable (the retry policy's own backoff applies then); at most MAX_RETRY_AFTER_S.
    """
    for name, per_s in (("retry-after-ms", 1000.0), ("retry-after", 1.0)):
        value = headers.get(name)
        if value is None:
            continue
        try:
            seconds = float(value) / per_s
        except ValueError:
            continue
        if math.isfinite(seconds):
            return min(max(0.0, seconds), MAX_RETRY_AFTER_S)
    try:
        when = parsedate_to_datetime(headers.get("retry-after", ""))
    except (TypeError, ValueError, IndexError, OverflowError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return min(max(0.0, (when - datetime.now(UTC)).total_seconds()), MAX_RETRY_AFTER_S)


# The most of an upstream's error message passed on and stored in the decision's reason (a 100 KB one was, whole).
MAX_UPSTREAM_MESSAGE = 1000


def _failure_for_status(model: str, status: int, text: str, headers: Mapping[str, str]) -> UpstreamFailure:
    try:
        message = str(strict_json(text)["error"]["message"])[:MAX_UPSTREAM_MESSAGE]
    except (ValueError, KeyError, TypeError):
        message = text.strip()[:300] or f"HTTP {status}"
    detail = f"HTTP {status}: {message}"
    if status == 429:
        return UpstreamFailure(model, "rate_limited", detail, status, retry_after_of(headers), quotes_upstream=True)
    if status == 503:
        return UpstreamFailure(model, "server", detail, status, retry_after_of(headers), quotes_upstream=True)
    if status == 408 or status >= 500:
        return UpstreamFailure(model, "server" if status != 408 else "timeout", detail, status, quotes_upstream=True)
    if status in (401, 402, 403, 404):  # 402: the provider's account is out of credit, the operator's to fix
        return UpstreamFailure(model, "config", detail, status, quotes_upstream=True)
    return UpstreamFailure(model, "client", message, status, quotes_upstream=True)


def _failure_for_exception(model: str, exc: BaseException) -> UpstreamFailure:
    if isinstance(exc, TimeoutError):
        return UpstreamFailure(model, "timeout", f"timed out ({type(exc).__name__})")
    return UpstreamFailure(model, "connection", f"{type(exc).__name__}: {str(exc)[:200] or 'connection failed'}")


def _payload(ep: Endpoint, body: Mapping[str, Any], stream: bool) -> dict[str, Any]:
    out = {**in_field(body, ep.price.answer_limit_field), "model": ep.upstream_model, "stream": stream}
    if stream:
        out["stream_options"] = {**(body.get("stream_options") or {}), "include_usage": True}
    else:
        out.pop("stream_options", None)
    return out


def env_proxies(environ: Mapping[str, str]) -> dict[str, str]:
    """The proxies an environment names, by scheme (`http`, `https`, `all`, and `no` for NO_PROXY), as urllib reads
    them: from `<scheme>_proxy` variables, the lowercase name over the uppercase one."""
    out: dict[str, str] = {}
    for name, value in environ.items():
        if value and len(name) > 6 and name.lower().endswith("_proxy"):
            scheme = name[:-6].lower()
            if name.islower() or scheme not in out:
                out[scheme] = value
    return out


def _no_proxy_covers(host: str, port: int | None, no_proxy: str) -> bool:
    """Whether NO_PROXY (comma-separated hosts, domains with or without a leading dot, `host:port`, or `*`) covers
    the host."""
    names = [n.strip().lower().lstrip(".") for n in no_proxy.split(",") if n.strip()]
    candidates = [host.lower()] + ([f"{host.lower()}:{port}"] if port is not None else [])
    return any(n == "*" or c == n or c.endswith("." + n) for n in names for c in candidates)


async def _on_chunk_sent(
    _session: aiohttp.ClientSession, ctx: SimpleNamespace, _params: aiohttp.TraceRequestChunkSentParams
) -> None:
    on_sent = ctx.trace_request_ctx
    if on_sent is not None:
        on_sent()


class UpstreamClient:
    """The service's one pooled upstream client (made in the app's lifespan, closed at shutdown).

    Timeouts: `timeout_s` for each read (a whole non-streaming answer, or each read of a stream) and for waiting for
    a pooled connection, `connect_timeout_s` for opening one; a call's `limit_s` (what the request's deadline leaves)
    caps them all.
    """

    def __init__(
        self,
        timeout_s: float,
        connect_timeout_s: float,
        max_connections: int,
        environ: Mapping[str, str] | None = None,
    ):
        self.timeout_s = timeout_s
        self.connect_timeout_s = connect_timeout_s
        self._proxies = env_proxies(os.environ if environ is None else environ)
        self._proxy_of: dict[str, str | None] = {}
        self.max_connections = max_connections
        self._trace = aiohttp.TraceConfig()
        self._trace.on_request_chunk_sent.append(_on_chunk_sent)
        self._sessions: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, aiohttp.ClientSession] = (
            weakref.WeakKeyDictionary()
        )

    def session(self) -> aiohttp.ClientSession:
        """The pooled session of the running event loop, made on first use. An aiohttp session and its connections
        belong to one loop: the service has one, but a harness may call the app from another loop than the one its
        lifespan ran on (a second TestClient, schemathesis' ASGI calls); that loop gets a session of its own."""
        loop = asyncio.get_running_loop()
        session = self._sessions.get(loop)
        if session is None or session.closed:
            session = aiohttp.ClientSession(
                connector=aiohttp.TCPConnector(limit=self.max_connections, limit_per_host=0),
                timeout=self.timeout(None),
                trace_configs=[self._trace],
            )
            self._sessions[loop] = session
        return session

    def timeout(self, limit_s: float | None) -> aiohttp.ClientTimeout:
        """The client's timeouts, none longer than `limit_s`, if given."""

        def cap(value: float) -> float:
            return value if limit_s is None else min(value, limit_s)

        return aiohttp.ClientTimeout(
            total=None,
            connect=cap(self.timeout_s),
            sock_connect=cap(self.connect_timeout_s),
            sock_read=cap(self.timeout_s),
        )

    def proxy_for(self, url: str) -> str | None:
        """The forward proxy the environment names for `url`: `<scheme>_proxy` or `all_proxy`, unless `no_proxy`
        covers its host; as httpx (trust_env) and urllib read them, once, when the client is made."""
        if url not in self._proxy_of:
            parts = urlsplit(url)
            bypass = _no_proxy_covers(parts.hostname or "", parts.port, self._proxies.get("no", ""))
            self._proxy_of[url] = None if bypass else self._proxies.get(parts.scheme) or self._proxies.get("all")
        return self._proxy_of[url]

    async def post(
        self, ep: Endpoint, payload: Mapping[str, Any], limit_s: float | None, on_sent: OnSent | None
    ) -> aiohttp.ClientResponse:
        """POST `payload` to the endpoint (through the environment's proxy for it, if any): the response with its
        headers read, its body not yet; a call that gives no response is an UpstreamFailure."""
        proxy = self.proxy_for(ep.url)
        if proxy is not None and urlsplit(proxy).scheme not in ("http", "https"):
            raise UpstreamFailure(
                ep.model, "config", f"the environment's proxy for it, {proxy!r}, is not an http(s) forward proxy"
            )
        try:
            return await self.session().post(
                ep.url,
                json=payload,
                headers=ep.headers(),
                timeout=self.timeout(limit_s),
                proxy=proxy,
                trace_request_ctx=on_sent,
            )
        except HTTP_ERRORS as exc:
            raise _failure_for_exception(ep.model, exc) from None

    async def aclose(self) -> None:
        """Close the running loop's session; another loop's is closed on that loop if it still runs."""
        here = asyncio.get_running_loop()
        sessions = list(self._sessions.items())
        self._sessions.clear()
        for loop, session in sessions:
            if loop is here:
                await session.close()
            elif loop.is_running():
                asyncio.run_coroutine_threadsafe(session.close(), loop)


async def _error_text(resp: aiohttp.ClientResponse) -> str:
    """An error answer's body as text ("" when it can't be read); the response is released."""
    try:
        return (await resp.read()).decode(errors="replace")
    except HTTP_ERRORS:
        return ""
    finally:
        resp.release()


async def complete(
    client: UpstreamClient,
    ep: Endpoint,
    body: Mapping[str, Any],
    limit_s: float | None = None,
    on_sent: OnSent | None = None,
) -> tuple[dict[str, Any], Usage]:
    """One non-streaming call (no timeout past `limit_s`; `on_sent` told once the request is on the wire): the
    upstream's JSON answer and its usage."""
    resp = await client.post(ep, _payload(ep, body, stream=False), limit_s, on_sent)
    if resp.status >= 400:
        raise _failure_for_status(ep.model, resp.status, await _error_text(resp), resp.headers)
    try:
        raw = await resp.read()
    except HTTP_ERRORS as exc:
        raise _failure_for_exception(ep.model, exc) from None
    finally:
        resp.release()
    try:
        data = strict_json(raw)
    except ValueError:
        raise UpstreamFailure(ep.model, "server", "answered with something that is not JSON") from None
    if not isinstance(data, dict) or not isinstance(data.get("choices"), list):
        raise UpstreamFailure(ep.model, "server", "answered JSON that is not a chat completion")
    return data, usage_of(ep, data.get("usage"), body, answer_token_estimate(data))


def _no_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


def _finite(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):
        raise ValueError(f"{text} is past a float's range")
    return value


def strict_json(text: str | bytes) -> Any:
    """JSON as the standard has it: Python's NaN, Infinity and -Infinity are refused, and so is a number past a
    float's range (-1e400 would be read as -inf): an answer holding them could not be passed on as JSON. So is JSON
    nested deeper than MAX_JSON_DEPTH (ValueError for all): deeper, Python's parser or the answer's rendering
    exhausts the stack (RecursionError, a 500 after the call was charged)."""
    try:
        value = json.loads(text, parse_constant=_no_constant, parse_float=_finite)
    except RecursionError:
        raise ValueError("JSON nested too deep to read") from None
    if _depth_over(value, MAX_JSON_DEPTH):
        raise ValueError(f"JSON nested deeper than {MAX_JSON_DEPTH} levels")
    return value


def _depth_over(value: Any, limit: int) -> bool:
    """Whether lists and objects nest in `value` deeper than `limit` (iteratively: no recursion to exhaust)."""
    stack: list[tuple[Any, int]] = [(value, 1)]
    while stack:
        node, depth = stack.pop()
        children = node.values() if isinstance(node, dict) else node if isinstance(node, list) else None
        if children is None:
            continue
        if depth > limit:
            return True
        stack.extend((child, depth + 1) for child in children if isinstance(child, (dict, list)))
    return False


async def _lines(resp: aiohttp.ClientResponse) -> AsyncIterator[str]:
    """The body's lines as they arrive (split at \\n, a trailing \\r dropped), with no limit on a line's length."""
    pending = bytearray()
    async for chunk in resp.content.iter_any():
        pending += chunk
        if b"\n" not in chunk:  # a long line arriving in pieces is appended, not split and copied again each time
            continue
        *lines, rest = pending.split(b"\n")
        pending = bytearray(rest)
        for line in lines:
            yield line.removesuffix(b"\r").decode(errors="replace")
    if pending:
        yield pending.removesuffix(b"\r").decode(errors="replace")


class Stream:
    """An upstream's SSE answer, opened up to its first event so that a failure before it can still fall back.

    Iterate `events()` for the JSON payloads (the first one included); `usage` is set once the upstream sends it.
    """

    def __init__(self, ep: Endpoint, body: Mapping[str, Any], response: aiohttp.ClientResponse):
        self.ep = ep
        self.body = body
        self._response = response
        self._lines = _lines(response)
        self._first: dict[str, Any] | None = None
        self.answer_tokens = 0.0
        self.raw_usage: Any = None
        self.finished = False  # every asked choice's finish_reason, or [DONE], came: the answer is whole
        self._choices = choices(body)
        self._finished_choices: set[Any] = set()

    @classmethod
    async def open(
        cls,
        client: UpstreamClient,
        ep: Endpoint,
        body: Mapping[str, Any],
        limit_s: float | None = None,
        on_sent: OnSent | None = None,
    ) -> Stream:
        """Open the stream up to its first event. No timeout is past `limit_s`, each later read's neither;
        `on_sent` is told once the request is on the wire."""
        response = await client.post(ep, _payload(ep, body, stream=True), limit_s, on_sent)
        if response.status >= 400:
            raise _failure_for_status(ep.model, response.status, await _error_text(response), response.headers)
        stream = cls(ep, body, response)
        try:
            stream._first = await stream._next()
        except BaseException:
            await stream.aclose()
            raise
        if stream._first is None:
            await stream.aclose()
            raise UpstreamFailure(ep.model, "server", "the stream ended before its first event")
        return stream

    async def _line(self) -> str | None:
        """The body's next line, None at its end. Once the answer is whole only its usage chunk and `[DONE]` are
        still due: an upstream that sends nothing more for AFTER_FINISH_S is taken to have ended (it held the
        body open, and the caller, who has the whole answer, waited for the read timeout)."""
        if not self.finished:
            return await anext(self._lines, None)
        with anyio.move_on_after(AFTER_FINISH_S):
            return await anext(self._lines, None)
        return None

    async def _next(self) -> dict[str, Any] | None:
        """The next JSON event, or None at `[DONE]` or the end of the stream."""
        try:
            while (line := await self._line()) is not None:
                if not line.startswith("data:"):
                    continue
                data = line[5:].strip()
                if data == "[DONE]":
                    self.finished = True
                    await self._drain()
                    return None
                try:
                    event = strict_json(data)
                except ValueError:
                    raise UpstreamFailure(self.ep.model, "server", "sent an event that is not JSON") from None
                if not isinstance(event, dict):
                    raise UpstreamFailure(self.ep.model, "server", "sent an event that is not a JSON object")
                if event.get("error"):  # as OpenAI's SDK reads a stream: `"error": null` is no error
                    said = str(event["error"])[:MAX_UPSTREAM_MESSAGE]
                    raise UpstreamFailure(self.ep.model, "server", f"sent an error event: {said}", quotes_upstream=True)
                if event.get("usage"):
                    self.raw_usage = event["usage"]
                listed = event.get("choices")
                if listed is not None and not isinstance(listed, list):
                    raise UpstreamFailure(self.ep.model, "server", "sent an event whose choices are not a list")
                for c in listed or []:
                    if isinstance(c, dict) and c.get("finish_reason"):
                        index = c.get("index")
                        index = 0 if index is None else index  # absent or null: the one choice there is
                        if not isinstance(index, int) or isinstance(index, bool):
                            raise UpstreamFailure(self.ep.model, "server", "sent a choice whose index is no number")
                        self._finished_choices.add(index)
                self.finished = self.finished or len(self._finished_choices) >= self._choices
                self.answer_tokens += answer_token_estimate(event)
                return event
        except HTTP_ERRORS as exc:
            if self.finished:  # the answer was whole: a connection lost after it takes nothing from it
                return None
            raise _failure_for_exception(self.ep.model, exc) from None
        if not self.finished:  # cut short cleanly (an upstream or a proxy before it gave up): not an answer
            raise UpstreamFailure(self.ep.model, "server", "the stream ended before its answer did (no [DONE])")
        return None

    async def _drain(self) -> None:
        """Read what follows `[DONE]` (normally only the end of the body), so that the connection goes back to the
        pool: a response released before its end closes its connection, and the next call to this upstream would
        pay a new TCP (and TLS) handshake. An upstream that keeps sending or holds the body open after `[DONE]` is
        not waited for past DRAIN_S (its connection is closed then, as it would have been); a failure here is none
        of the answer's."""
        with anyio.move_on_after(DRAIN_S), suppress(*HTTP_ERRORS):
            async for _ in self._lines:
                pass

    async def events(self) -> AsyncIterator[dict[str, Any]]:
        try:
            if self._first is not None:
                first, self._first = self._first, None
                yield first
            while (event := await self._next()) is not None:
                yield event
        finally:
            await self.aclose()

    def usage(self) -> Usage:
        return usage_of(self.ep, self.raw_usage, self.body, self.answer_tokens)

    async def aclose(self) -> None:
        """Release the response: its connection goes back to the pool if its body was read to the end, else it is
        closed."""
        self._response.release()
