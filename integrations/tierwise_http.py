"""A small HTTP client for a running tierwise: `POST /route`, `POST /outcomes` and `POST /decisions/{id}/usage`,
sync and async.

Request and response bodies stay plain JSON: tierwise validates them (its schemas are the one definition), and a
refusal comes back as `TierwiseRefused` with tierwise's own reason.
"""

from __future__ import annotations

import asyncio
import hashlib
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import quote

import httpx

# Statuses that mean "tierwise cannot route now" rather than "this request is wrong": retrying later or routing
# elsewhere is right. 413 is here because a prompt too long for tierwise is still a fine prompt for the model.
UNAVAILABLE_STATUSES = frozenset({413, 429, 500, 502, 503, 504})


class TierwiseUnavailable(Exception):
    """tierwise did not answer: connection refused, timeout, or a 5xx / 429 / 413."""


class TierwiseRefused(Exception):
    """tierwise answered with a 4xx refusal (bad options, bad key, a session over its cap)."""

    def __init__(self, status: int, detail: str, body: Mapping[str, Any]) -> None:
        super().__init__(f"tierwise refused ({status}): {detail}")
        self.status = status
        self.detail = detail
        self.body = body


def _detail(response: httpx.Response) -> tuple[str, dict[str, Any]]:
    """tierwise's reason from an error body (`detail` is a sentence, or a list of validation errors)."""
    try:
        body = response.json()
    except ValueError:
        return response.text[:200] or response.reason_phrase, {}
    if not isinstance(body, dict):
        return str(body)[:200], {}
    detail = body.get("detail", body)
    if isinstance(detail, list):
        detail = "; ".join(f"{'.'.join(map(str, e.get('loc', [])))}: {e.get('msg', e)}" for e in detail)
    return str(detail), body


def _answer(response: httpx.Response) -> dict[str, Any]:
    if response.status_code < 400:
        body: dict[str, Any] = response.json()
        return body
    detail, body = _detail(response)
    if response.status_code in UNAVAILABLE_STATUSES:
        raise TierwiseUnavailable(f"tierwise answered {response.status_code}: {detail}")
    raise TierwiseRefused(response.status_code, detail, body)


@dataclass
class TierwiseClient:
    """Pooled connections to one tierwise; `timeout_s` bounds every call (connect, read and write)."""

    base_url: str
    api_key: str | None = field(default=None, repr=False)
    timeout_s: float = 2.0
    _sync: httpx.Client | None = field(default=None, init=False, repr=False)
    _async: httpx.AsyncClient | None = field(default=None, init=False, repr=False)
    _async_loop: asyncio.AbstractEventLoop | None = field(default=None, init=False, repr=False)

    @property
    def identity(self) -> str:
        """The tierwise and the key this client calls it with, as a name that never shows the key: a decision made
        through this client is settled through it (one process may hold several keys for one tierwise)."""
        return f"{self.base_url}#{hashlib.sha256((self.api_key or '').encode()).hexdigest()[:16]}"

    def _headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.api_key}"} if self.api_key else {}

    def _client(self) -> httpx.Client:
        if self._sync is None:
            self._sync = httpx.Client(base_url=self.base_url, headers=self._headers(), timeout=self.timeout_s)
        return self._sync

    def _aclient(self) -> httpx.AsyncClient:
        """One pooled async client per event loop (an httpx connection belongs to the loop that opened it)."""
        loop = asyncio.get_running_loop()
        if self._async is None or self._async_loop is not loop:
            self._async = httpx.AsyncClient(base_url=self.base_url, headers=self._headers(), timeout=self.timeout_s)
            self._async_loop = loop
        return self._async

    def _post(self, path: str, body: Any) -> dict[str, Any]:
        try:
            return _answer(self._client().post(path, json=body))
        except httpx.HTTPError as e:
            raise TierwiseUnavailable(f"tierwise at {self.base_url} unreachable: {type(e).__name__}: {e}") from e

    async def _apost(self, path: str, body: Any) -> dict[str, Any]:
        try:
            return _answer(await self._aclient().post(path, json=body))
        except httpx.HTTPError as e:
            raise TierwiseUnavailable(f"tierwise at {self.base_url} unreachable: {type(e).__name__}: {e}") from e

    def route(self, prompt: str, options: Mapping[str, Any]) -> dict[str, Any]:
        """`POST /route`: the decision (decision_id, tier, model, reason, ...) for one prompt."""
        return self._post("/route", {**options, "prompt": prompt})

    async def aroute(self, prompt: str, options: Mapping[str, Any]) -> dict[str, Any]:
        """`POST /route` from async code."""
        return await self._apost("/route", {**options, "prompt": prompt})

    def post_outcome(self, outcome: Mapping[str, Any]) -> dict[str, Any]:
        """`POST /outcomes` with one outcome (decision_id, score, cost_usd, ...)."""
        return self._post("/outcomes", dict(outcome))

    async def apost_outcome(self, outcome: Mapping[str, Any]) -> dict[str, Any]:
        """`POST /outcomes` from async code."""
        return await self._apost("/outcomes", dict(outcome))

    def settle(self, decision_id: str, usage: Mapping[str, Any]) -> dict[str, Any]:
        """`POST /decisions/{id}/usage`: book what a routed call cost (cost_usd, tokens_in, tokens_out, latency_ms),
        once; `cost_usd` None releases a failed call's reservation."""
        return self._post(f"/decisions/{quote(decision_id, safe='')}/usage", dict(usage))

    async def asettle(self, decision_id: str, usage: Mapping[str, Any]) -> dict[str, Any]:
        """`settle` from async code."""
        return await self._apost(f"/decisions/{quote(decision_id, safe='')}/usage", dict(usage))

    def release(self, decision_id: str) -> dict[str, Any]:
        """`POST /decisions/{id}/release`: free a call's reservation and leave its decision open (a cancelled call
        whose end is unknown); a usage or outcome posted later still books its cost."""
        return self._post(f"/decisions/{quote(decision_id, safe='')}/release", {})

    def close(self) -> None:
        if self._sync is not None:
            self._sync.close()
            self._sync = None

    async def aclose(self) -> None:
        if self._async is not None:
            await self._async.aclose()
            self._async = None
