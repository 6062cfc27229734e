"""Serve a routed request: call the tier's upstream with retries, fall back along the tier's chain, run fusion."""

from __future__ import annotations

import asyncio
import math
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, TypeVar

from router.schema import Tier, TiersConfig
from serving.metrics import UpstreamMetrics
from serving.proxy.answer_bound import asked_limit
from serving.proxy.fusion import merge_request
from serving.proxy.upstream import Endpoint, Stream, UpstreamClient, UpstreamFailure, Usage, complete, endpoint_for

T = TypeVar("T")


@dataclass(frozen=True)
class RetryPolicy:
    """Extra attempts on the same upstream after a timeout, 5xx, 429 or dropped connection, with doubling waits.

    An upstream's Retry-After (429, 503) is honoured: the next attempt waits at least that long, unless it is over
    `max_retry_after_s` (then the tier falls back at once). `deadline_s` bounds the whole request until its answer
    starts; an attempt that would start past it is not made.
    """

    retries: int = 1
    backoff_s: float = 0.2
    max_retry_after_s: float = 10.0
    deadline_s: float = 300.0

    def delay_s(self, attempt: int) -> float:
        return float(self.backoff_s * 2**attempt)

    def wait_s(self, attempt: int, failure: UpstreamFailure) -> float | None:
        """The wait before retrying after `failure` on attempt `attempt` (0-based); None: do not retry it."""
        hint = failure.retry_in_s(time.monotonic())
        if hint is not None and hint > self.max_retry_after_s:
            return None
        return max(self.delay_s(attempt), hint or 0.0)


@dataclass
class Trail:
    """What serving one request took: the failures on the way, the usage of every answered call, the tiers that
    failed, and the fusion members left out; `sent` is set once a request to an upstream is on the wire."""

    failures: list[str] = field(default_factory=list)
    usages: list[Usage] = field(default_factory=list)
    failed_tiers: list[str] = field(default_factory=list)
    left_out: list[str] = field(default_factory=list)
    members: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)
    hinted: list[UpstreamFailure] = field(default_factory=list)
    answer_limit: int | None = None  # the answer-length limit the last tier tried was sent with (a capped session)
    deadline: float = math.inf
    upstream_words: bool = True  # failures keep the upstream's words (False unless prompts are stored as text)
    sent: asyncio.Event = field(default_factory=asyncio.Event)

    def failed(self, where: str, failure: UpstreamFailure) -> str:
        """Note a failure for the decision's reason (the upstream's words only if `upstream_words`); returns it."""
        said = failure.at_rest(self.upstream_words)
        self.failures.append(f"{where}: {said}")
        return said

    def mark_sent(self) -> None:
        """Told by every call made for the request once its body is on the wire: sets `sent`."""
        self.sent.set()

    def left_s(self) -> float:
        """Seconds left before the request's deadline (monotonic)."""
        return self.deadline - time.monotonic()

    def retry_after_s(self) -> int | None:
        """When to come back, for a caller no upstream answered: the soonest an upstream that failed with a
        Retry-After said it would answer again, in whole seconds rounded up; None when none said."""
        now = time.monotonic()
        waits = [w for f in self.hinted if (w := f.retry_in_s(now)) is not None]
        return math.ceil(min(waits)) if waits else None

    def note(self) -> str:
        """The decision reason's addendum: what failed and was left out (empty when all went as routed)."""
        parts = []
        if self.failed_tiers:
            parts.append(f"fell back from tier(s) {', '.join(self.failed_tiers)}")
        if self.skipped:
            parts.append(
                f"fallback skipped (over the request's max cost or the session's cap): {', '.join(self.skipped)}"
            )
        if self.left_out:
            parts.append(f"fusion member(s) left out: {', '.join(self.left_out)}")
        if self.failures:
            parts.append("upstream failures: " + "; ".join(self.failures))
        return "; ".join(parts)


class NoRoom(Exception):
    """No tier the request may be served by fits what it may spend (the session's cap, its max cost)."""


Prepare = Callable[[Tier, dict[str, Any]], Awaitable[dict[str, Any] | None]]
"""The body to send a tier (its answer's length limited to what the request may spend), or None: skip the tier."""


@dataclass
class Served:
    """The answer of the tier that served: a JSON completion, or an opened stream."""

    tier: Tier
    body: dict[str, Any] | None = None
    stream: Stream | None = None


class Dispatcher:
    def __init__(
        self,
        client: UpstreamClient,
        policy: RetryPolicy,
        environ: Mapping[str, str],
        metrics: UpstreamMetrics | None = None,
    ):
        self.client = client
        self.policy = policy
        self.environ = environ
        self.metrics = metrics

    async def serve(
        self,
        tiers: TiersConfig,
        first: Tier,
        body: dict[str, Any],
        stream: bool,
        trail: Trail,
        prepare: Prepare | None = None,
    ) -> Served:
        """The answer of `first`, else of its fallbacks in order; raises the last failure when none answers.

        A `client` failure (the upstream refused the request itself) is raised at once: another tier would too.
        Each tier gets the body `prepare` gives it; one `prepare` skips (over the request's max cost or what the
        session's cap leaves) is said so: no tier spends past a cap. NoRoom when every tier was skipped. The
        policy's deadline starts now.
        """
        trail.deadline = min(trail.deadline, time.monotonic() + self.policy.deadline_s)
        last: UpstreamFailure | None = None
        for tier in [first, *tiers.fallbacks(first.name)]:
            sent = body if prepare is None else await prepare(tier, body)
            if sent is None:
                trail.skipped.append(tier.name)
                continue
            if last is not None and self.metrics is not None:
                self.metrics.fallbacks.labels(trail.failed_tiers[-1], tier.name).inc()
            try:
                return await self._serve_tier(tiers, tier, sent, stream, trail)
            except UpstreamFailure as failure:
                if failure.kind == "client":
                    raise
                last = failure
                trail.failed_tiers.append(tier.name)
        if last is None:
            raise NoRoom(f"tier(s) {', '.join(trail.skipped)} cost more than the request may spend")
        raise last

    async def _attempt(self, ep: Endpoint, call: Callable[[Endpoint, float], Awaitable[T]], trail: Trail) -> T:
        """One call within what the deadline leaves, counted and timed by outcome."""
        left = trail.left_s()
        if left <= 0:
            raise UpstreamFailure(ep.model, "timeout", "the request's deadline passed before this attempt")
        started = time.perf_counter()
        outcome = "ok"
        try:
            return await call(ep, left)
        except UpstreamFailure as failure:
            outcome = failure.kind
            raise
        finally:
            if self.metrics is not None:
                self.metrics.calls.labels(ep.model, outcome).inc()
                self.metrics.seconds.labels(ep.model, outcome).observe(time.perf_counter() - started)

    async def _retrying(
        self, model: str, tiers: TiersConfig, call: Callable[[Endpoint, float], Awaitable[T]], trail: Trail
    ) -> T:
        """`call` on `model`'s upstream, retried per the policy; raises its last failure."""
        try:
            ep = endpoint_for(model, tiers, self.environ)
        except UpstreamFailure as failure:
            trail.failed(model, failure)
            if self.metrics is not None:
                self.metrics.calls.labels(model, failure.kind).inc()
            raise
        for attempt in range(self.policy.retries + 1):
            try:
                return await self._attempt(ep, call, trail)
            except UpstreamFailure as failure:
                trail.failed(f"{model} attempt {attempt + 1}", failure)
                if failure.retry_after_s is not None:
                    trail.hinted.append(failure)
                if not failure.retryable or attempt == self.policy.retries:
                    raise
                wait = self.policy.wait_s(attempt, failure)
                if wait is None:
                    cap = self.policy.max_retry_after_s
                    trail.failures.append(f"{model}: Retry-After over the {cap:g} s tierwise waits; not retried")
                    raise
                if wait >= trail.left_s():
                    trail.failures.append(f"{model}: a retry in {wait:g} s would pass the request's deadline")
                    raise
            if self.metrics is not None:
                self.metrics.retries.labels(model).inc()
            await asyncio.sleep(wait)
        raise AssertionError("unreachable")

    async def _answer(
        self, tiers: TiersConfig, tier: Tier, model: str, body: dict[str, Any], stream: bool, trail: Trail
    ) -> Served:
        """Call one model for `tier`: its opened stream, or its completion (its usage added to the trail)."""
        if stream:
            opened = await self._retrying(
                model, tiers, lambda ep, s: Stream.open(self.client, ep, body, s, trail.mark_sent), trail
            )
            return Served(tier, stream=opened)
        data, usage = await self._retrying(
            model, tiers, lambda ep, s: complete(self.client, ep, body, s, trail.mark_sent), trail
        )
        trail.usages.append(usage)
        return Served(tier, body=data)

    async def _serve_tier(
        self, tiers: TiersConfig, tier: Tier, body: dict[str, Any], stream: bool, trail: Trail
    ) -> Served:
        if tier.kind == "single":
            return await self._answer(tiers, tier, tier.model, body, stream, trail)
        return await self._fuse(tiers, tier, body, stream, trail)

    async def _fuse(self, tiers: TiersConfig, tier: Tier, body: dict[str, Any], stream: bool, trail: Trail) -> Served:
        """Members in parallel (not streamed), then the judge on their answers; a failed member is left out."""
        if tier.judge is None:
            raise UpstreamFailure(tier.model, "config", f"fusion tier '{tier.name}' has no judge to merge its answers")
        results = await asyncio.gather(
            *(
                self._retrying(m, tiers, lambda ep, s: complete(self.client, ep, body, s, trail.mark_sent), trail)
                for m in tier.members
            ),
            return_exceptions=True,
        )
        answers, refused = [], []
        for member, result in zip(tier.members, results, strict=True):
            if isinstance(result, UpstreamFailure):
                trail.left_out.append(member)
                if self.metrics is not None:
                    self.metrics.member_failures.labels(tier.name, member).inc()
                refused += [result] if result.kind == "client" else []
            elif isinstance(result, BaseException):
                raise result
            else:
                data, usage = result
                trail.usages.append(usage)
                trail.members.append(member)
                answers.append(data)
        if not answers:
            if refused:
                raise refused[0]
            raise UpstreamFailure(tier.model, "server", f"every member of fusion tier '{tier.name}' failed")
        judged = merge_request(body, answers, asked_limit(body))
        return await self._answer(tiers, tier, tier.judge, judged, stream, trail)
