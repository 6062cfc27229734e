"""integrations/delayed_calls.py: delayed calls wait on one thread, in the order they fall due."""

from __future__ import annotations

import threading
import time

from integrations.delayed_calls import DelayedCalls


def wait_until(cond, timeout_s: float = 5.0) -> bool:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if cond():
            return True
        time.sleep(0.01)
    return bool(cond())


def test_many_delayed_calls_share_one_thread_and_run_in_order_of_their_due_time() -> None:
    calls = DelayedCalls("test-delayed")
    ran: list[int] = []
    before = threading.active_count()
    for i in range(200):
        calls.call_later(0.3 if i % 2 else 0.1, ran.append, i)
    assert threading.active_count() <= before + 1  # one worker, not a thread per call
    assert calls.pending() == 200 and ran == []
    assert wait_until(lambda: len(ran) == 200)
    assert ran == list(range(0, 200, 2)) + list(range(1, 200, 2))  # the 0.1 s calls first, each group in order
    assert calls.pending() == 0


def test_a_call_scheduled_sooner_than_the_waiting_ones_is_not_held_behind_them() -> None:
    calls = DelayedCalls("test-delayed")
    ran: list[str] = []
    calls.call_later(30, ran.append, "late")
    calls.call_later(0, ran.append, "now")
    assert wait_until(lambda: ran == ["now"], 2.0)
    assert calls.pending() == 1


def test_a_failing_call_is_logged_and_the_next_still_runs(caplog) -> None:  # type: ignore[no-untyped-def]
    calls = DelayedCalls("test-delayed")
    ran: list[int] = []

    def boom() -> None:
        raise RuntimeError("boom")

    calls.call_later(0, boom)
    calls.call_later(0.05, ran.append, 1)
    assert wait_until(lambda: ran == [1])
    assert "a delayed call failed" in caplog.text and "boom" in caplog.text
