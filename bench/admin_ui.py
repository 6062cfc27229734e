"""How long the admin page takes to gather and render with a large store (1M decisions by default).

    python -m bench.admin_ui                       # SQLite, 1,000,000 decisions over 7 days, 20,000 sessions
    python -m bench.admin_ui --url postgresql+psycopg://postgres@127.0.0.1:5432/test   # a scratch database there
    python -m bench.admin_ui --decisions 100000 --repeats 3

Decisions are spread evenly over the last `--days` days (so the hour window holds about 1/(24*days) of them and the
day window 1/days), with generated prompts of 40-400 characters; 1% of the sessions are frozen. Each part of the page
is timed on its own (median of --repeats), then the whole page (gather + render). JSON to bench/results/admin_ui.json
(admin_ui_pg.json with --url).
"""

from __future__ import annotations

import argparse
import statistics
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager, nullcontext
from datetime import UTC, datetime, timedelta
from pathlib import Path
from tempfile import TemporaryDirectory
from typing import Any

import numpy as np

from bench.common import REPO, machine_info, scratch_database, write_json
from infra import admin_queries as q
from infra.settings import Settings
from infra.store import Store, decisions, sessions
from router.artifact import RouterArtifact
from router.features import FeatureSpec
from router.model import DifficultyModel
from router.routing import Router
from router.schema import load_tiers
from serving.runtime import Runtime
from serving.ui.render import templates
from serving.ui.view import build_dashboard, drift_panel, savings

WORDS = [
    "route",
    "the",
    "prompt",
    "to",
    "a",
    "cheaper",
    "model",
    "when",
    "it",
    "is",
    "easy",
    "and",
    "to",
    "the",
    "best",
    "one",
    "when",
    "it",
    "is",
    "hard",
    "please",
]


def bench_runtime() -> Runtime:
    """A Router that can price prompts (expected_cost) without a trained model: the page's savings need only that."""
    tiers = load_tiers(REPO / "config" / "tiers.toml")
    rng = np.random.default_rng(0)
    model = DifficultyModel(n_estimators=2, n_jobs=1).fit(
        rng.normal(size=(64, 4)), rng.random((64, len(tiers.names))), tiers.names
    )  # a stand-in: the page never scores, it only prices prompts
    artifact = RouterArtifact(
        model, FeatureSpec(embedder_id="bench"), tiers, tokens_out=dict.fromkeys(tiers.names, 300.0)
    )
    return Runtime(Router(artifact, tiers), "bench")


def fill(store: Store, n_decisions: int, n_sessions: int, days: float, seed: int = 0) -> None:
    rng = np.random.default_rng(seed)
    tiers = load_tiers(REPO / "config" / "tiers.toml")
    names = tiers.names
    now = datetime.now(UTC)
    with store.engine.begin() as conn:
        rows = [
            {
                "id": f"s{i:06d}",
                "owner": None,
                "cap_usd": 10.0,
                "spent_usd": float(rng.uniform(0, 10)),
                "reserved_usd": 0.0,
                "status": "frozen" if i % 100 == 0 else "open",
                "created_at": now,
                "updated_at": now - timedelta(seconds=float(rng.uniform(0, days * 86400))),
            }
            for i in range(n_sessions)
        ]
        conn.execute(sessions.insert(), rows)
    chunk = 50_000
    for start in range(0, n_decisions, chunk):
        n = min(chunk, n_decisions - start)
        ages = rng.uniform(0, days * 86400, n)
        tier_idx = rng.choice(len(names), n, p=np.linspace(2, 1, len(names)) / np.linspace(2, 1, len(names)).sum())
        lengths = rng.integers(8, 80, n)
        costs = rng.uniform(1e-5, 1e-2, n)
        settled = rng.random(n) < 0.5
        batch = [
            {
                "id": uuid.uuid4().hex,
                "created_at": now - timedelta(seconds=float(ages[i])),
                "session_id": f"s{int(rng.integers(n_sessions)):06d}",
                "owner": None,
                "prompt": " ".join(WORDS[(i + j) % len(WORDS)] for j in range(int(lengths[i]))),
                "tier": names[int(tier_idx[i])],
                "model": tiers.tiers[int(tier_idx[i])].model,
                "expected_cost_usd": float(costs[i]),
                "reserved_usd": 0.0,
                "router_version": "bench",
                "reason": f"{names[int(tier_idx[i])]} is the cheapest tier predicted to reach the target",
                "settled": bool(settled[i]),
                "cost_usd": float(costs[i] * 0.9) if settled[i] else None,
                "explored": False,
            }
            for i in range(n)
        ]
        with store.engine.begin() as conn:
            conn.execute(decisions.insert(), batch)


def timed(fn: Callable[[], Any], repeats: int) -> tuple[float, Any]:
    """Median wall time in ms over `repeats` calls, and the last result."""
    times, out = [], None
    for _ in range(repeats):
        t0 = time.perf_counter()
        out = fn()
        times.append((time.perf_counter() - t0) * 1000)
    return round(statistics.median(times), 2), out


@contextmanager
def store_at(url: str | None, tmp: Path) -> Iterator[Store]:
    ctx = scratch_database(url) if url else nullcontext(f"sqlite:///{tmp / 'admin_ui.db'}")
    with ctx as db_url:
        store = Store(db_url)
        try:
            yield store
        finally:
            store.dispose()


def run(url: str | None, n_decisions: int, n_sessions: int, days: float, repeats: int, sample: int) -> dict[str, Any]:
    runtime = bench_runtime()
    with TemporaryDirectory() as tmp, store_at(url, Path(tmp)) as store:
        store.migrate()
        t0 = time.perf_counter()
        fill(store, n_decisions, n_sessions, days)
        with store.engine.begin() as conn:  # fresh planner statistics, as autovacuum / a steady state would have
            conn.exec_driver_sql("ANALYZE")
        fill_s = time.perf_counter() - t0
        settings = Settings(ui_savings_sample=sample, database_url=store.url)
        now = datetime.now(UTC)
        hour, day = now - timedelta(hours=1), now - timedelta(days=1)
        parts: dict[str, float] = {}
        parts["tier_usage_hour_ms"], usage_h = timed(lambda: q.tier_usage(store.engine, hour), repeats)
        parts["tier_usage_day_ms"], usage_d = timed(lambda: q.tier_usage(store.engine, day), repeats)
        parts["cost_sample_day_ms"], sampled = timed(lambda: q.cost_sample(store.engine, day, sample), repeats)
        total_d = sum(u.decisions for u in usage_d)
        parts["savings_compute_ms"], _ = timed(lambda: savings(runtime, sampled, total_d), repeats)
        parts["frozen_sessions_ms"], _ = timed(lambda: q.list_sessions(store.engine, status="frozen"), repeats)
        parts["sessions_page_ms"], _ = timed(lambda: q.list_sessions(store.engine, offset=10_000), repeats)
        parts["recent_decisions_ms"], _ = timed(lambda: q.recent_decisions(store.engine, 50), repeats)
        parts["drift_panel_ms"], _ = timed(lambda: drift_panel(store, runtime, settings), repeats)
        gather_ms, view = timed(lambda: build_dashboard(store, runtime, settings), repeats)
        template = templates().get_template("dashboard.html")
        render_ms, html = timed(lambda: template.render(d=view, csrf="x", confirmed=None), repeats)
        backend = store.engine.dialect.name
    return {
        "command": "python -m bench.admin_ui"
        + (f" --url {url}" if url else "")
        + f" --decisions {n_decisions} --sessions {n_sessions} --days {days} --repeats {repeats} --sample {sample}",
        "backend": backend,
        "decisions": n_decisions,
        "sessions": n_sessions,
        "days": days,
        "decisions_last_hour": sum(u.decisions for u in usage_h),
        "decisions_last_day": total_d,
        "savings_sample": sample,
        "fill_s": round(fill_s, 1),
        "repeats": repeats,
        "parts_median_ms": parts,
        "page_gather_median_ms": gather_ms,
        "page_render_median_ms": render_ms,
        "page_total_median_ms": round(gather_ms + render_ms, 2),
        "page_html_bytes": len(html.encode()),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--url", default=None, help="a PostgreSQL server URL (a scratch database is made there)")
    parser.add_argument("--decisions", type=int, default=1_000_000)
    parser.add_argument("--sessions", type=int, default=20_000)
    parser.add_argument("--days", type=float, default=7.0)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--sample", type=int, default=Settings.model_fields["ui_savings_sample"].default)
    parser.add_argument("--out", type=Path, default=None, help="default: bench/results/admin_ui.json (_pg with --url)")
    args = parser.parse_args()
    result = run(args.url, args.decisions, args.sessions, args.days, args.repeats, args.sample)
    out = {"machine": machine_info(), **result}
    default = f"admin_ui{'_pg' if args.url else ''}.json"
    write_json(args.out or REPO / "bench" / "results" / default, out)
    print(out)


if __name__ == "__main__":
    main()
