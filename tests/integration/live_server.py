"""Run an app under a real uvicorn server in a thread, configured as `python -m serving` runs it."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import uvicorn

from bench.process import free_port


@contextmanager
def live_server(factory: Callable[[], Any]) -> Iterator[str]:
    """Serve `factory()` (httptools, access_log=False, log_config=None) on a free port; yield its base URL."""
    port = free_port()
    config = uvicorn.Config(
        factory, factory=True, host="127.0.0.1", port=port, http="httptools", log_config=None, access_log=False
    )
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 60
    while not server.started:
        assert thread.is_alive() and time.monotonic() < deadline, "uvicorn did not start"
        time.sleep(0.05)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(30)
