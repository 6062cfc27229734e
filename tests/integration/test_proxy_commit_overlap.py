"""The proxy commits its decision while the upstream answers (queued once the upstream request is sent), and never
answers before the decision is stored."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import Iterator, Sequence
from pathlib import Path

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


@pytest.fixture
def proxied(tmp_path: Path, artifact_dir: Path) -> Iterator[tuple[TestClient, FakeUpstream]]:
    with fake_upstream() as up:
        up.default = Reply(text="an answer", delay_s=DELAY_S)
        app = create_app(
            proxy_settings(tmp_path, up, upstream_timeout_s=10.0), LocalSource(artifact_dir), embedder=HashingEmbedder()
        )
        with TestClient(app) as client:
            yield client, up


def test_the_answer_comes_with_its_decision_stored_and_settled(proxied: tuple[TestClient, FakeUpstream]) -> None:
    client, _ = proxied
    r = client.post("/v1/chat/completions", json=CHAT, headers=bearer(CLIENT_KEY))
    assert r.status_code == 200, r.text
    decision_id = r.headers["x-tierwise-decision-id"]
    stored = client.app.state.store.get_decisions([decision_id])[decision_id]  # type: ignore[attr-defined]
    assert stored.settled and stored.cost_usd is not None and stored.cost_usd > 0


def test_a_store_that_cannot_record_the_decision_stops_the_upstream_call(
    proxied: tuple[TestClient, FakeUpstream], monkeypatch: pytest.MonkeyPatch
) -> None:
    client, up = proxied

    def down(_: Sequence[DecisionRow]) -> None:
        raise sa_exc.OperationalError("INSERT ...", {}, Exception("connection refused"))

    monkeypatch.setattr(client.app.state.store, "record_decisions", down)  # type: ignore[attr-defined]
    start = time.perf_counter()
    r = client.post("/v1/chat/completions", json=CHAT, headers=bearer(CLIENT_KEY))
    assert r.status_code == 503, r.text
    assert r.json()["error"]["code"] == "store_unavailable"
    assert time.perf_counter() - start < DELAY_S / 2  # answered without waiting for the upstream


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
    with fake_upstream() as up:
        up.default = Reply(text="slow", delay_s=1.0)
        tiers = parse_tiers({"models": {"small": {"input_per_1m": 1.0, "output_per_1m": 2.0, "base_url": up.base_url}},
                             "tiers": [{"name": "main", "model": "small"}]})  # fmt: skip

        async def main() -> tuple[bool, bool]:
            client = UpstreamClient(5.0, 1.0, 4)
            trail = Trail()
            body = {"messages": [{"role": "user", "content": "hi"}]}
            call = asyncio.ensure_future(
                Dispatcher(client, RetryPolicy(retries=0), {}).serve(tiers, tiers.tier("main"), body, False, trail)
            )
            try:
                await asyncio.wait_for(trail.sent.wait(), 0.9)  # set by the trace, not when the call ends
                answering = not call.done()
                served = await call
            finally:
                await client.aclose()
            return answering, served.body is not None

        assert asyncio.run(main()) == (True, True)


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
