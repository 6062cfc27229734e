"""The proxy's upstream client: calls honour the environment's forward proxy (HTTP_PROXY / HTTPS_PROXY / ALL_PROXY,
NO_PROXY), as the httpx client it replaced did, so a team whose egress goes through a proxy keeps working; and the
door answers from any event loop, not only its lifespan's (an aiohttp session belongs to one loop)."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from router.schema import ModelPrice
from serving.proxy.upstream import Endpoint, UpstreamClient, UpstreamFailure, complete, env_proxies
from tests.integration.conftest import CLIENT_KEY, bearer
from tests.integration.fake_upstream import Reply, fake_upstream
from tests.integration.proxy_fixtures import door_client

BODY = {"messages": [{"role": "user", "content": "hi"}]}
PRICE = ModelPrice(input_per_1m=1.0, output_per_1m=2.0)
# A host that cannot resolve (RFC 2606 reserves .invalid): a call reaches it only through a proxy.
UNREACHABLE = "http://upstream.invalid:9/v1/chat/completions"


def test_the_environment_names_proxies_as_urllib_reads_them() -> None:
    env = {"HTTPS_PROXY": "http://upper:1", "https_proxy": "http://lower:2", "ALL_PROXY": "http://all:3",
           "NO_PROXY": "localhost,.internal, 10.0.0.1:8080", "PATH": "/bin", "_proxy": "x"}  # fmt: skip
    assert env_proxies(env) == {
        "https": "http://lower:2",
        "all": "http://all:3",
        "no": "localhost,.internal, 10.0.0.1:8080",
    }

    async def proxies() -> list[str | None]:
        client = UpstreamClient(5.0, 1.0, 4, env)
        try:
            return [
                client.proxy_for(url)
                for url in (
                    "https://api.example.com/v1/chat/completions",  # https_proxy
                    "http://api.example.com/v1/chat/completions",  # no http_proxy: all_proxy
                    "https://llm.internal/v1/chat/completions",  # NO_PROXY domain
                    "http://localhost:8000/v1/chat/completions",  # NO_PROXY host, any port
                    "http://10.0.0.1:8080/v1",  # NO_PROXY host:port
                    "http://10.0.0.1:9090/v1",  # another port: proxied
                )
            ]
        finally:
            await client.aclose()

    assert asyncio.run(proxies()) == [
        "http://lower:2",
        "http://all:3",
        None,
        None,
        None,
        "http://all:3",
    ]


@pytest.mark.parametrize("no_proxy", ["", "upstream.invalid"])
def test_a_call_goes_through_the_proxy_unless_no_proxy_covers_its_host(no_proxy: str) -> None:
    # The fake upstream stands in for the forward proxy: an HTTP proxy gets the absolute URL as the request target,
    # which it serves like its own path. Without the proxy the host does not resolve.
    with fake_upstream() as up:
        up.default = Reply(text="via the proxy", usage=(3, 2))
        origin = up.base_url.removesuffix("/v1")
        env = {"HTTP_PROXY": origin, "NO_PROXY": no_proxy}

        async def call() -> str:
            client = UpstreamClient(5.0, 1.0, 4, env)
            try:
                data, _ = await complete(client, Endpoint("small", UNREACHABLE, "small", None, PRICE), BODY)
                return str(data["choices"][0]["message"]["content"])
            finally:
                await client.aclose()

        if no_proxy:
            with pytest.raises(UpstreamFailure) as failed:
                asyncio.run(call())
            assert failed.value.kind in ("connection", "timeout")  # NXDOMAIN, or a resolver that never answers
            assert up.requests == []
        else:
            assert asyncio.run(call()) == "via the proxy"
            assert [model for model, _ in up.requests] == ["small"]


def test_a_proxy_that_is_not_http_is_a_config_failure_naming_it() -> None:
    async def call() -> None:
        client = UpstreamClient(5.0, 1.0, 4, {"ALL_PROXY": "socks5://127.0.0.1:1080"})
        try:
            await complete(client, Endpoint("small", UNREACHABLE, "small", None, PRICE), BODY)
        finally:
            await client.aclose()

    with pytest.raises(UpstreamFailure) as failed:
        asyncio.run(call())
    assert failed.value.kind == "config" and "socks5://127.0.0.1:1080" in failed.value.message


def test_the_door_answers_from_another_event_loop_than_its_lifespans(tmp_path: Path, artifact_dir: Path) -> None:
    # The lifespan's TestClient pools an upstream connection on its loop; a second TestClient (no lifespan) calls the
    # app on loops of its own, as schemathesis' ASGI calls do. One shared aiohttp session answered those 500
    # ("attached to a different loop").
    chat = {"model": "tierwise", "messages": [{"role": "user", "content": "easy question 2: alpha beta"}]}
    with door_client(tmp_path, artifact_dir, upstream_retries=0) as (client, up):
        assert client.post("/v1/chat/completions", json=chat, headers=bearer(CLIENT_KEY)).status_code == 200
        other = TestClient(client.app)
        answers = [other.post("/v1/chat/completions", json=chat, headers=bearer(CLIENT_KEY)) for _ in range(2)]
        assert [a.status_code for a in answers] == [200, 200], answers[0].text
        assert client.post("/v1/chat/completions", json=chat, headers=bearer(CLIENT_KEY)).status_code == 200
        assert len(up.requests) == 4
