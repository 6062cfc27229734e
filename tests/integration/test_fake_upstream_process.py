"""The fake upstream in a process of its own (bench.proxy's layout): it answers, and it is gone once closed."""

from __future__ import annotations

import time

import httpx

from tests.integration.fake_upstream import Reply, fake_upstream_process


def test_it_answers_after_its_delay_and_stops_when_closed() -> None:
    with fake_upstream_process(Reply(text="from afar", delay_s=0.2)) as base_url:
        start = time.monotonic()
        r = httpx.post(f"{base_url}/chat/completions", json={"model": "small", "messages": []}, timeout=30)
        took = time.monotonic() - start
        assert r.status_code == 200, r.text
        assert r.json()["choices"][0]["message"]["content"] == "from afar"
        assert took >= 0.2
    # The child exits once its stdin closes: nothing listens at its address any more.
    try:
        httpx.post(f"{base_url}/chat/completions", json={"model": "small", "messages": []}, timeout=5)
        answered = True
    except httpx.TransportError:
        answered = False
    assert not answered
