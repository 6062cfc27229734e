"""Serve a routed request: call the tier's upstream with retries, fall back along the tier's chain, run fusion."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, TypeVar

import httpx

from router.schema import Tier, TiersConfig
from serving.proxy.fusion import merge_request
from serving.proxy.upstream import Endpoint, Stream, UpstreamFailure, Usage, complete, endpoint_for

T = TypeVar("T")


@dataclass(frozen=True)
class RetryPolicy:
    """Extra attempts on the same upstream after a timeout, 5xx, 429 or dropped connection, with doubling waits."""

    retries: int = 1
    backoff_s: float = 0.2

    def delay_s(self, attempt: int) -> float:
        return float(self.backoff_s * 2**attempt)


@dataclass
class Trail:
    """What serving one request took: the failures on the way, the usage of every answered call, the tiers that
    failed, and the fusion members left out."""

    failures: list[str] = field(default_factory=list)
    usages: list[Usage] = field(default_factory=list)
    failed_tiers: list[str] = field(default_factory=list)
    left_out: list[str] = field(default_factory=list)
    members: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)

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


@dataclass
class Served:
    """The answer of the tier that served: a JSON completion, or an opened stream."""

    tier: Tier
    body: dict[str, Any] | None = None
    stream: Stream | None = None


class Dispatcher:
    def __init__(self, client: httpx.AsyncClient, policy: RetryPolicy, environ: Mapping[str, str]):
        self.client = client
        self.policy = policy
        self.environ = environ

    async def serve(
        self,
        tiers: TiersConfig,
        first: Tier,
        body: dict[str, Any],
        stream: bool,
        trail: Trail,
        affordable: Callable[[Tier], bool] | None = None,
    ) -> Served:
        """The answer of `first`, else of its fallbacks in order; raises the last failure when none answers.

        A `client` failure (the upstream refused the request itself) is raised at once: another tier would too.
        A fallback that is not `affordable` (its expected cost over the request's max cost or what the session's cap
        leaves) is skipped and said so: falling back never spends past a cap.
        """
        last: UpstreamFailure | None = None
        for tier in [first, *tiers.fallbacks(first.name)]:
            if tier is not first and affordable is not None and not affordable(tier):
                trail.skipped.append(tier.name)
                continue
            try:
                return await self._serve_tier(tiers, tier, body, stream, trail)
            except UpstreamFailure as failure:
                if failure.kind == "client":
                    raise
                last = failure
                trail.failed_tiers.append(tier.name)
        assert last is not None
        raise last

    async def _retrying(
        self, model: str, tiers: TiersConfig, call: Callable[[Endpoint], Awaitable[T]], trail: Trail
    ) -> T:
        try:
            ep = endpoint_for(model, tiers, self.environ)
        except UpstreamFailure as failure:
            trail.failures.append(f"{model}: {failure.message}")
            raise
        for attempt in range(self.policy.retries + 1):
            try:
                return await call(ep)
            except UpstreamFailure as failure:
                trail.failures.append(f"{model} attempt {attempt + 1}: {failure.message}")
                if not failure.retryable or attempt == self.policy.retries:
                    raise
            await asyncio.sleep(self.policy.delay_s(attempt))
        raise AssertionError("unreachable")

    async def _answer(
        self, tiers: TiersConfig, tier: Tier, model: str, body: dict[str, Any], stream: bool, trail: Trail
    ) -> Served:
        """Call one model for `tier`: its opened stream, or its completion (its usage added to the trail)."""
        if stream:
            opened = await self._retrying(model, tiers, lambda ep: Stream.open(self.client, ep, body), trail)
            return Served(tier, stream=opened)
        data, usage = await self._retrying(model, tiers, lambda ep: complete(self.client, ep, body), trail)
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
            *(self._retrying(m, tiers, lambda ep: complete(self.client, ep, body), trail) for m in tier.members),
            return_exceptions=True,
        )
        answers, refused = [], []
        for member, result in zip(tier.members, results, strict=True):
            if isinstance(result, UpstreamFailure):
                trail.left_out.append(member)
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
        return await self._answer(tiers, tier, tier.judge, merge_request(body, answers), stream, trail)
