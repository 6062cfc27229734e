"""A real uvicorn server, configured as `python -m serving` configures it: each request is logged once, by
our middleware, with its path and never its query string (where clients put keys); a streamed body over
the limit is refused over a real socket."""

from __future__ import annotations

import io
import json
import logging
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from infra.settings import Settings
from serving.app import create_app
from serving.logs import configure_logging
from serving.model_source import LocalSource
from tests.conftest import HashingEmbedder
from tests.integration.conftest import CLIENT_KEY, bearer
from tests.integration.live_server import live_server

SECRET = "sk-live-4f9a2c-do-not-log"
LOGGERS = ("", "uvicorn", "uvicorn.error", "uvicorn.access", "httpx")


@pytest.fixture
def restore_logging() -> Iterator[None]:
    """configure_logging rewires global loggers; put them back for the tests that follow."""
    loggers = [logging.getLogger(n) for n in LOGGERS]
    saved = [(x.handlers[:], x.propagate, x.level, x.disabled) for x in loggers]
    yield
    for x, (handlers, propagate, level, disabled) in zip(loggers, saved, strict=True):
        x.handlers[:], x.propagate, x.disabled = handlers, propagate, disabled
        x.setLevel(level)


@pytest.fixture
def served(
    settings_factory: Callable[..., Settings],
    artifact_dir: Path,
    monkeypatch: pytest.MonkeyPatch,
    restore_logging: None,
) -> Iterator[tuple[str, io.StringIO]]:
    """The service under uvicorn (httptools, access_log=False, log_config=None, as serving.__main__ runs it)."""
    stream = io.StringIO()
    monkeypatch.setattr(sys, "stderr", stream)
    logging.getLogger("httpx").setLevel(logging.WARNING)  # the test's client logs its URLs, query and all

    def factory() -> Any:
        configure_logging()  # what create_app() does when uvicorn builds it from the environment
        return create_app(
            settings=settings_factory(max_body_bytes=4096),
            model_source=LocalSource(artifact_dir),
            embedder=HashingEmbedder(),
        )

    with live_server(factory) as url:
        yield url, stream


def test_each_request_logged_once_without_its_query_string(
    served: tuple[str, io.StringIO], caplog: pytest.LogCaptureFixture
) -> None:
    url, stream = served
    r = httpx.get(f"{url}/tiers?api_key={SECRET}&x=1", headers=bearer(CLIENT_KEY))
    assert r.status_code == 200
    r = httpx.get(f"{url}/tiers?api_key={SECRET}")
    assert r.status_code == 401
    # caplog also listens on non-propagating loggers (uvicorn.access), so it sees a line uvicorn would log.
    deadline = time.monotonic() + 20  # the access line is written after the response is sent
    while len(records := [r for r in caplog.records if "/tiers" in r.getMessage()]) < 2 and time.monotonic() < deadline:
        time.sleep(0.05)
    assert [(r.name, getattr(r, "status", None)) for r in records] == [("serving.access", 200), ("serving.access", 401)]
    assert not [r for r in caplog.records if r.name == "uvicorn.access"]
    assert SECRET not in caplog.text
    # The JSON lines the service writes to stderr: the same single line per request, no secret.
    lines = [json.loads(line) for line in stream.getvalue().splitlines() if line.strip()]
    assert [x["msg"] for x in lines if "/tiers" in x["msg"]] == ["GET /tiers 200", "GET /tiers 401"]
    assert SECRET not in stream.getvalue()


def test_streamed_body_over_the_limit_is_refused(served: tuple[str, io.StringIO]) -> None:
    url, _ = served

    def chunks() -> Iterator[bytes]:
        yield b'{"prompt": "x", "metadata": {"k": "'
        for _ in range(20):
            yield b"v" * 512
        yield b'"}}'

    headers = {**bearer(CLIENT_KEY), "content-type": "application/json"}
    r = httpx.post(f"{url}/route", content=chunks(), headers=headers)
    assert r.status_code == 413 and "4096 bytes" in r.json()["detail"]
    assert httpx.post(f"{url}/route", json={"prompt": "x"}, headers=bearer(CLIENT_KEY)).status_code == 200
