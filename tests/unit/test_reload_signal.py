"""The shared reload generation: concurrent bumps are never lost, and a reader never sees half a number."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from serving.reload_signal import ReloadSignal

N_THREADS, N_BUMPS = 8, 25


def test_concurrent_bumps_each_get_their_own_generation(tmp_path: Path) -> None:
    path = tmp_path / "sub" / "reload-generation"
    assert ReloadSignal(path).read() == 0

    def bump_many(_: int) -> list[int]:
        signal = ReloadSignal(path)  # one object per worker, as in the service
        return [signal.bump() for _ in range(N_BUMPS)]

    with ThreadPoolExecutor(N_THREADS) as pool:
        seen = [g for gs in pool.map(bump_many, range(N_THREADS)) for g in gs]
    assert sorted(seen) == list(range(1, N_THREADS * N_BUMPS + 1))
    assert ReloadSignal(path).read() == N_THREADS * N_BUMPS


def test_an_unreadable_generation_reads_as_zero_and_bumps_to_one(tmp_path: Path) -> None:
    path = tmp_path / "reload-generation"
    path.write_text("not a number")
    assert ReloadSignal(path).read() == 0
    assert ReloadSignal(path).bump() == 1
