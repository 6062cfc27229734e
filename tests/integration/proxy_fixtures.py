"""A live tierwise whose tiers call a fake upstream: the fixture of the OpenAI-compatible proxy's tests.

    with proxied_tierwise(tmp_dir, artifact_dir, up, fusion=True) as base_url: ...

The test tiers (main -> small, mid -> medium, brain -> large) get `base_url = up.base_url`; with `fusion=True`
the brain tier is a fusion of small and medium judged by large (same tier names, so the trained router fits).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient
from openai import OpenAI

from infra.settings import Settings
from serving.app import create_app
from serving.model_source import LocalSource
from tests.conftest import TIERS_TOML, HashingEmbedder
from tests.integration.conftest import CLIENT_KEY, KEYS
from tests.integration.fake_upstream import FakeUpstream, fake_upstream
from tests.integration.live_server import live_server


def write_proxy_tiers(path: Path, base_url: str, fusion: bool = False, key_env: str | None = None) -> Path:
    """The test tiers as TOML, every model's upstream at `base_url`; brain a fusion tier when `fusion`."""
    lines = []
    for t in TIERS_TOML["tiers"]:
        lines += ["[[tiers]]", f'name = "{t["name"]}"']
        if fusion and t["name"] == "brain":
            lines += ['kind = "fusion"', 'members = ["small", "medium"]', 'judge = "large"']
        else:
            lines += [f'model = "{t["model"]}"']
        lines.append("")
    for name, price in TIERS_TOML["models"].items():
        lines += [f'[models."{name}"]', *(f"{k} = {v}" for k, v in price.items()), f'base_url = "{base_url}"']
        if key_env:
            lines.append(f'api_key_env = "{key_env}"')
        lines.append("")
    path.write_text("\n".join(lines))
    return path


def proxy_settings(tmp: Path, up: FakeUpstream | str, fusion: bool = False, **fields: Any) -> Settings:
    """The proxy tests' settings, every upstream at `up` (a fake upstream, or the base URL of one elsewhere)."""
    base: dict[str, Any] = {
        "database_url": f"sqlite:///{tmp / 'serve.db'}",
        "tiers_path": write_proxy_tiers(tmp / "tiers.toml", up if isinstance(up, str) else up.base_url, fusion),
        "spool_path": tmp / "spool.jsonl",
        "reload_signal_path": tmp / "reload-generation",
        "quality_target": 0.7,
        "api_keys": KEYS,
        # Not a test of timeouts (those set their own): room for a slow, busy machine. With 1 s, a streamed call's
        # first attempt failed before its first event once in a full run on 2 cores (2026-11-26; its retry got the
        # default reply). The test process stalls: a run of tests/integration alone (2026-11-27, a fast Xeon) saw 19
        # full garbage collections of over 0.1 s, the longest 2.0 s (gc.callbacks; 2.7 million objects tracked by
        # the end), and every thread, the service's and the fake upstream's included, waits them out. So no test
        # tells two outcomes apart by less than several seconds.
        "upstream_timeout_s": 5.0,
        "upstream_retries": 1,
        "upstream_retry_backoff_s": 0.01,
    }
    return Settings(**{**base, **fields})


@contextmanager
def proxied_tierwise(
    tmp: Path, artifact_dir: Path, up: FakeUpstream, fusion: bool = False, **fields: Any
) -> Iterator[str]:
    """A live tierwise (real uvicorn on loopback) on the trained test router, upstreams at `up`; yields its URL."""
    settings = proxy_settings(tmp, up, fusion, **fields)
    app = create_app(settings=settings, model_source=LocalSource(artifact_dir), embedder=HashingEmbedder())
    with live_server(lambda: app) as url:
        yield url


@contextmanager
def door_client(tmp: Path, artifact_dir: Path, **fields: Any) -> Iterator[tuple[TestClient, FakeUpstream]]:
    """tierwise in a TestClient (lifespan run) on the trained test router, its upstreams a fake; yields both."""
    with fake_upstream() as up:
        app = create_app(
            settings=proxy_settings(tmp, up, **fields),
            model_source=LocalSource(artifact_dir),
            embedder=HashingEmbedder(),
        )
        with TestClient(app) as client:
            yield client, up


def streamed_in_session(sdk: OpenAI, session_id: str, prompt: str) -> tuple[Iterator[Any], str]:
    """A streamed door call in `session_id` with its first chunk read: the rest of the stream, and the decision id
    that chunk carries (the decision is routed and stored by then)."""
    stream = iter(
        sdk.chat.completions.create(
            model="tierwise",
            messages=[{"role": "user", "content": prompt}],
            stream=True,
            extra_body={"tierwise": {"session_id": session_id}},
        )
    )
    return stream, next(stream).model_extra["tierwise"]["decision_id"]


def proxy_fixtures(name: str, fusion: bool = False, **fields: Any) -> tuple[Callable[..., Any], ...]:
    """A test module's fixtures, `served, up, url, sdk = proxy_fixtures("name", ...)`: one live tierwise and fake
    upstream per module (`served`), the upstream reset for each test (`up`), the service's URL (`url`) and the
    official OpenAI SDK pointed at its /v1 with a client key and no retries (`sdk`)."""

    @pytest.fixture(scope="module")
    def served(tmp_path_factory: pytest.TempPathFactory, artifact_dir: Path) -> Iterator[tuple[str, FakeUpstream]]:
        tmp = tmp_path_factory.mktemp(name)
        with fake_upstream() as up, proxied_tierwise(tmp, artifact_dir, up, fusion, **fields) as url:
            yield url, up

    @pytest.fixture
    def up(served: tuple[str, FakeUpstream]) -> FakeUpstream:
        served[1].reset()
        return served[1]

    @pytest.fixture
    def url(served: tuple[str, FakeUpstream], up: FakeUpstream) -> str:
        return served[0]

    @pytest.fixture
    def sdk(url: str) -> OpenAI:
        return OpenAI(base_url=f"{url}/v1", api_key=CLIENT_KEY, max_retries=0)

    return served, up, url, sdk
