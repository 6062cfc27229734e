"""The proxy commits its decision while the upstream answers (queued once the upstream request is sent), and never
answers before the decision is stored."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import Iterator, Sequence
from contextlib import contextmanager, suppress
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import exc as sa_exc

from infra.store import DecisionRow, Store
from router.schema import parse_tiers
from serving.app import create_app
from serving.decision_writer import DecisionWriter
from serving.model_source import LocalSource
from serving.proxy.dispatch import Dispatcher, RetryPolicy, Trail
from serving.proxy.service import while_committing
from serving.proxy.upstream import UpstreamClient
from tests.conftest import HashingEmbedder
from tests.integration.conftest import CLIENT_KEY, bearer
from tests.integration.fake_upstream import FakeUpstream, Reply, fake_upstream
from tests.integration.proxy_fixtures import proxy_settings

CHAT = {"model": "tierwise", "messages": [{"role": "user", "content": "easy question 2: alpha beta gamma"}]}
DELAY_S = 2.0


@contextmanager
def proxy_over(
    tmp_path: Path, artifact_dir: Path, delay_s: float, **fields: Any
) -> Iterator[tuple[TestClient, FakeUpstream]]:
    """The proxy in front of a fake upstream that answers after `delay_s` (and waits for it: no upstream timeout
    cuts it short); `fields` are more settings."""
    with fake_upstream() as up:
        up.default = Reply(text="an answer", delay_s=delay_s)
        settings = proxy_settings(tmp_path, up, upstream_timeout_s=max(4 * delay_s, 5.0), **fields)
        app = create_app(settings, LocalSource(artifact_dir), embedder=HashingEmbedder())
        with TestClient(app) as client:
            yield client, up


@pytest.fixture
def proxied(tmp_path: Path, artifact_dir: Path) -> Iterator[tuple[TestClient, FakeUpstream]]:
    with proxy_over(tmp_path, artifact_dir, DELAY_S) as both:
        yield both


def test_the_answer_comes_with_its_decision_stored_and_settled(proxied: tuple[TestClient, FakeUpstream]) -> None:
    client, _ = proxied
    r = client.post("/v1/chat/completions", json=CHAT, headers=bearer(CLIENT_KEY))
    assert r.status_code == 200, r.text
    decision_id = r.headers["x-tierwise-decision-id"]
    stored = client.app.state.store.get_decisions([decision_id])[decision_id]  # type: ignore[attr-defined]
    assert stored.settled and stored.cost_usd is not None and stored.cost_usd > 0


@pytest.mark.parametrize("stream", [False, True])
@pytest.mark.parametrize("decision_commit", ["durable", "async"])
def test_every_answer_comes_settled_whichever_commit(
    tmp_path: Path, artifact_dir: Path, decision_commit: str, stream: bool
) -> None:
    """Under decision_commit=async on SQLite a sessionless settlement commits on the event loop (it waits for no
    disk), in the threadpool otherwise: either way the decision is settled, with the upstream's cost, by the time
    the answer (or the stream's [DONE]) reaches the caller, and the caller's outcome is taken at once."""
    with proxy_over(tmp_path, artifact_dir, 0.01, decision_commit=decision_commit) as (client, _):
        store = client.app.state.store  # type: ignore[attr-defined]
        assert store.decision_commit_is_local is (decision_commit == "async")
        r = client.post("/v1/chat/completions", json={**CHAT, "stream": stream}, headers=bearer(CLIENT_KEY))
        assert r.status_code == 200, r.text
        if stream:
            assert r.text.rstrip().endswith("data: [DONE]")
        decision_id = r.headers["x-tierwise-decision-id"]
        stored = store.get_decisions([decision_id])[decision_id]
        assert stored.settled and stored.cost_usd is not None and stored.cost_usd > 0
        posted = client.post("/outcomes", json={"decision_id": decision_id, "score": 1.0}, headers=bearer(CLIENT_KEY))
        assert posted.status_code == 201, posted.text  # 409 while the door has not settled it


def test_a_store_that_cannot_record_the_decision_stops_the_upstream_call(
    tmp_path: Path, artifact_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The failed commit cancels the upstream call: the upstream sees its caller hang up long before it would have
    answered (a proxy that waited for the answer would leave only after it, and the count would stay 0). No clock
    bound: how fast a machine routes does not matter against an upstream that takes a minute."""

    def down(_: Sequence[DecisionRow]) -> None:
        raise sa_exc.OperationalError("INSERT ...", {}, Exception("connection refused"))

    with proxy_over(tmp_path, artifact_dir, delay_s=60.0) as (client, up):
        monkeypatch.setattr(client.app.state.store, "record_decisions", down)  # type: ignore[attr-defined]
        r = client.post("/v1/chat/completions", json=CHAT, headers=bearer(CLIENT_KEY))
        assert r.status_code == 503, r.text
        assert r.json()["error"]["code"] == "store_unavailable"
        deadline = time.monotonic() + 20.0  # the fake upstream's thread notices the hang-up within 50 ms
        while up.left_early == 0 and time.monotonic() < deadline:
            time.sleep(0.05)
        assert len(up.requests) == 1  # the call was made (the commit waits for it to be sent) ...
        assert up.left_early == 1  # ... and abandoned, not waited for


def _decision_row() -> DecisionRow:
    return DecisionRow(id=uuid.uuid4().hex, prompt="p", tier="main", model="small", expected_cost_usd=0.0,
                       router_version="v", reason="r")  # fmt: skip


def test_a_proxied_decision_is_queued_only_once_its_request_is_sent(tmp_path: Path) -> None:
    store = Store(f"sqlite:///{tmp_path / 'held.db'}")
    store.migrate()
    writer = DecisionWriter(store)
    row = _decision_row()

    async def main() -> tuple[bool, bool]:
        sent = asyncio.Event()
        write = asyncio.ensure_future(writer.write([row], after=sent))
        await asyncio.sleep(0.05)
        held = not write.done() and writer._thread is None  # nothing queued: the writer thread never started
        sent.set()
        await asyncio.wait_for(write, 10)
        return held, writer._thread is not None

    try:
        held, queued = asyncio.run(main())
    finally:
        writer.close()
    assert held and queued
    assert row.id in store.get_decisions([row.id])
    store.dispose()


def test_the_trace_tells_when_the_upstream_request_is_on_the_wire(tmp_path: Path) -> None:
    """`sent` is set while the upstream is still working on its answer (a minute; the wait for `sent` gives up after
    20 s, so only a `sent` set when the call ends fails it, not a slow machine)."""
    with fake_upstream() as up:
        up.default = Reply(text="slow", delay_s=60.0)
        tiers = parse_tiers({"models": {"small": {"input_per_1m": 1.0, "output_per_1m": 2.0, "base_url": up.base_url}},
                             "tiers": [{"name": "main", "model": "small"}]})  # fmt: skip

        async def main() -> bool:
            client = UpstreamClient(120.0, 5.0, 4)
            trail = Trail()
            body = {"messages": [{"role": "user", "content": "hi"}]}
            call = asyncio.ensure_future(
                Dispatcher(client, RetryPolicy(retries=0), {}).serve(tiers, tiers.tier("main"), body, False, trail)
            )
            try:
                await asyncio.wait_for(trail.sent.wait(), 20.0)  # set by the trace, not when the call ends
                return not call.done()
            finally:
                call.cancel()
                with suppress(asyncio.CancelledError):
                    await call
                await client.aclose()

        assert asyncio.run(main())
        deadline = time.monotonic() + 20.0  # the fake upstream's thread reads the request in its own time
        while not up.requests and time.monotonic() < deadline:
            time.sleep(0.05)
        assert len(up.requests) == 1


def test_the_call_ending_releases_the_commit_even_when_the_caller_leaves() -> None:
    async def main() -> tuple[bool, bool]:
        done = asyncio.Event()
        committed: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        waiting = asyncio.ensure_future(while_committing(committed, asyncio.sleep(10), done))  # type: ignore[arg-type]
        await asyncio.sleep(0.01)
        released_early = done.is_set()
        waiting.cancel()  # the caller left: the call is cancelled, and a commit held for it must not wait forever
        with pytest.raises(asyncio.CancelledError):
            await waiting
        await asyncio.sleep(0)
        return released_early, done.is_set()

    assert asyncio.run(main()) == (False, True)
