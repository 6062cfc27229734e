"""integrations/delayed_calls.py: delayed calls wait in one heap, run when due on a few workers."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from integrations.delayed_calls import DelayedCalls


def wait_until(cond: Callable[[], bool], timeout_s: float = 5.0) -> bool:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if cond():
            return True
        time.sleep(0.01)
    return bool(cond())


def test_many_delayed_calls_wait_on_one_thread_and_run_in_order_of_their_due_time() -> None:
    calls = DelayedCalls("test-delayed", workers=2)
    ran: list[int] = []
    before = threading.active_count()
    for i in range(200):
        calls.call_later(0.4 if i % 2 else 0.1, ran.append, i)
    assert threading.active_count() <= before + 1  # one scheduler, not a thread per call
    assert calls.pending() == 200 and ran == []
    assert wait_until(lambda: len(ran) == 200)
    assert set(ran[:100]) == set(range(0, 200, 2)) and set(ran[100:]) == set(range(1, 200, 2))
    assert calls.pending() == 0 and threading.active_count() <= before + 1 + 2


def test_a_call_scheduled_sooner_than_the_waiting_ones_is_not_held_behind_them() -> None:
    calls = DelayedCalls("test-delayed")
    ran: list[str] = []
    calls.call_later(30, ran.append, "late")
    calls.call_later(0, ran.append, "now")
    assert wait_until(lambda: ran == ["now"], 2.0)
    assert calls.pending() == 1


def test_a_blocked_call_does_not_hold_up_the_others() -> None:
    """A release blocked on an unreachable tierwise held up every release behind it on the one thread (review
    finding: 10.2 s instead of 0.2 s)."""
    calls = DelayedCalls("test-delayed", workers=3)
    gate = threading.Event()
    ran: list[str] = []
    calls.call_later(0, gate.wait, 10)
    calls.call_later(0, gate.wait, 10)
    calls.call_later(0.05, ran.append, "quick")
    try:
        assert wait_until(lambda: ran == ["quick"], 2.0)
    finally:
        gate.set()


@pytest.mark.parametrize("failure", [RuntimeError("boom"), SystemExit(3)])
def test_a_failing_call_is_logged_and_the_next_still_runs(
    caplog: pytest.LogCaptureFixture, failure: BaseException
) -> None:
    calls = DelayedCalls("test-delayed", workers=1)
    ran: list[int] = []

    def boom() -> None:
        raise failure

    calls.call_later(0, boom)
    calls.call_later(0.05, ran.append, 1)
    assert wait_until(lambda: ran == [1])
    assert "a delayed call failed" in caplog.text
    calls.call_later(0, ran.append, 2)
    assert wait_until(lambda: ran == [1, 2])


def test_an_endless_delay_does_not_stop_the_scheduler() -> None:
    calls = DelayedCalls("test-delayed")
    ran: list[int] = []
    calls.call_later(float("inf"), ran.append, 0)  # OverflowError in Condition.wait killed the thread (review)
    time.sleep(0.05)
    calls.call_later(0, ran.append, 1)
    assert wait_until(lambda: ran == [1], 2.0)
    assert calls.pending() == 1


@pytest.mark.skipif(not hasattr(os, "fork"), reason="no os.fork on this platform")
def test_a_forked_child_starts_empty_and_can_schedule() -> None:
    """A child forked while the parent's scheduler held its lock blocked forever on its first call, and a child
    inherited the parent's pending calls and ran them a second time (review finding)."""
    calls = DelayedCalls("test-delayed")
    calls.call_later(30, int)  # the parent's
    stop = threading.Event()

    def busy() -> None:  # keeps the lock busy across the forks
        while not stop.is_set():
            calls.call_later(30, int)
            time.sleep(0.0001)

    t = threading.Thread(target=busy)
    t.start()
    try:
        for _ in range(10):
            r, w = os.pipe()
            pid = os.fork()
            if pid == 0:  # the child: report what it sees, run one call, exit
                os.close(r)
                status = b"x"
                try:
                    done = threading.Event()
                    status = b"%d" % calls.pending()
                    calls.call_later(0, done.set)
                    status += b" ran" if done.wait(5) else b" stuck"
                finally:
                    os.write(w, status)
                    os._exit(0)
            os.close(w)
            deadline, out = time.monotonic() + 10, b""
            while time.monotonic() < deadline and not out.endswith((b"ran", b"stuck")):
                chunk = os.read(r, 64)
                if not chunk:
                    break
                out += chunk
            os.close(r)
            os.waitpid(pid, 0)
            assert out == b"0 ran"
    finally:
        stop.set()
        t.join()


def test_calls_blocked_or_queued_at_exit_do_not_hold_up_the_process() -> None:
    """The workers were a ThreadPoolExecutor's, which Python joins at exit after running everything queued: releases
    blocked on an unreachable tierwise delayed the exit by their timeouts (review finding). They are daemons now."""
    script = (
        "from integrations.delayed_calls import DelayedCalls\n"
        "import time\n"
        "calls = DelayedCalls('exit-test', workers=2)\n"
        "for _ in range(6):\n"
        "    calls.call_later(0, time.sleep, 120)\n"
        "time.sleep(0.3)\n"  # the first two are running, the rest queued
    )
    started = time.monotonic()
    subprocess.run([sys.executable, "-c", script], check=True, timeout=60, cwd=Path(__file__).resolve().parents[2])
    assert time.monotonic() - started < 60  # joined workers would take 120 s and more
