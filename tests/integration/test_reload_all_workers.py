"""One POST /admin/reload reaches every app that shares the reload generation (in-process stand-ins for workers).

The same with real worker processes is in test_serving_workers.py.
"""

from __future__ import annotations

import shutil
import time
from collections.abc import Callable
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from serving.model_source import LocalSource
from serving.reload_signal import ReloadSignal
from tests.integration.conftest import ADMIN_KEY, CLIENT_KEY, bearer, write_tiers

CHECK_S = 0.05
WAIT_S = 30  # only a guard against a hang; the loops end as soon as the condition holds
A, C = bearer(ADMIN_KEY), bearer(CLIENT_KEY)


def brain_model(client: TestClient) -> str:
    r = client.get("/tiers", headers=C)
    assert r.status_code == 200, r.text
    return str(r.json()["tiers"][2]["model"])


def wait_for(condition: Callable[[], bool], what: str) -> None:
    deadline = time.monotonic() + WAIT_S
    while not condition():
        assert time.monotonic() < deadline, what
        time.sleep(CHECK_S)


def test_a_reload_reaches_every_app_sharing_the_generation(
    client_factory: Callable[..., TestClient], tmp_path: Path
) -> None:
    apps = [client_factory(reload_check_interval_s=CHECK_S) for _ in range(3)]
    write_tiers(tmp_path / "tiers.toml", {"brain": "unused"})
    assert {brain_model(a) for a in apps} == {"large"}
    r = apps[0].post("/admin/reload", headers=A)
    assert r.status_code == 200 and r.json()["tiers"][2]["model"] == "unused"
    assert ReloadSignal(tmp_path / "reload-generation").read() == 1
    wait_for(lambda: {brain_model(a) for a in apps} == {"unused"}, "not every app followed the reload")
    versions = {a.get("/readyz").json()["router_version"] for a in apps}
    assert len(versions) == 1


def test_a_refused_reload_changes_no_app(client_factory: Callable[..., TestClient], tmp_path: Path) -> None:
    apps = [client_factory(reload_check_interval_s=CHECK_S) for _ in range(2)]
    (tmp_path / "tiers.toml").write_text("[[tiers]]\nname='other'\nmodel='small'\n[models.small]\ninput_per_1m=1\n")
    assert apps[0].post("/admin/reload", headers=A).status_code == 409
    assert ReloadSignal(tmp_path / "reload-generation").read() == 0
    # The follower only reloads on a bump; a bump by hand now makes it try the refused file, and keep its model.
    ReloadSignal(tmp_path / "reload-generation").bump()
    wait_for(lambda: apps[1].app.state.manager._seen == 1, "the follower never saw the bump")
    assert [brain_model(a) for a in apps] == ["large", "large"]


def counted_reads(signal: ReloadSignal, monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """Record every read of `signal` from now on (the watch loop reads it once per check)."""
    reads: list[int] = []
    original = signal.read

    def read() -> int:
        reads.append(original())
        return reads[-1]

    monkeypatch.setattr(signal, "read", read)
    return reads


def test_each_app_reloads_once_per_bump(
    client_factory: Callable[..., TestClient], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    leader, follower = (client_factory(reload_check_interval_s=CHECK_S) for _ in range(2))
    before = leader.app.state.runtime, follower.app.state.runtime
    assert leader.post("/admin/reload", headers=A).status_code == 200
    wait_for(lambda: follower.app.state.runtime is not before[1], "the follower did not reload")
    after = leader.app.state.runtime, follower.app.state.runtime
    # Several more checks by each app (counted, not slept: a stalled machine can't hide a second reload)
    checks = [counted_reads(c.app.state.manager.signal, monkeypatch) for c in (leader, follower)]
    wait_for(lambda: min(len(c) for c in checks) >= 5, "the apps stopped checking the generation")
    assert (leader.app.state.runtime, follower.app.state.runtime) == after
    assert after[0] is not before[0]


def test_an_app_started_without_a_model_becomes_ready_when_one_appears(
    client_factory: Callable[..., TestClient], artifact_dir: Path, tmp_path: Path
) -> None:
    later = tmp_path / "later"
    client = client_factory(source=LocalSource(later), reload_check_interval_s=CHECK_S)
    assert client.get("/readyz").status_code == 503
    shutil.copytree(artifact_dir, later)
    wait_for(lambda: client.get("/readyz").status_code == 200, "the load was never retried")
    assert client.post("/route", json={"prompt": "What is 2+2?"}, headers=C).status_code == 200


class Appearing:
    """A registry alias that names no model until `ready` (a service started before its first training)."""

    def __init__(self, path: Path):
        self.inner, self.ready = LocalSource(path), False

    def resolve(self) -> str:
        if not self.ready:
            raise LookupError("no champion yet")
        return "tierwise-router/1"

    def load(self):  # type: ignore[no-untyped-def]
        version = self.resolve()  # raises until ready
        loaded = self.inner.load()
        return type(loaded)(loaded.artifact, version)


def test_the_first_model_one_worker_polls_reaches_the_others(
    client_factory: Callable[..., TestClient], artifact_dir: Path, tmp_path: Path
) -> None:
    """Whichever worker loads the first model (its alias poll or its load retry) bumps the shared generation, and
    the other follows it; without the bump the generation stays 0. At most one bump per worker: no reload storm."""
    source = Appearing(artifact_dir)
    poller = client_factory(source=source, reload_interval_s=CHECK_S, reload_check_interval_s=CHECK_S)
    follower = client_factory(source=source, reload_check_interval_s=CHECK_S)
    assert [c.get("/readyz").status_code for c in (poller, follower)] == [503, 503]
    source.ready = True
    signal = ReloadSignal(tmp_path / "reload-generation")
    managers = [c.app.state.manager for c in (poller, follower)]

    def followed() -> bool:  # a follower marks the generation seen before its load ends: wait for the model too
        return signal.read() >= 1 and all(m._seen == signal.read() and m.state.runtime is not None for m in managers)

    wait_for(followed, "a worker never followed")
    assert 1 <= signal.read() <= 2
    assert [c.get("/readyz").status_code for c in (poller, follower)] == [200, 200]
