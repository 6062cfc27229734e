"""`make bench`: every benchmark in one run, each part's JSON under bench/results/ plus summary.json.

    python -m bench.run_all                 # full run, about 10 minutes on 2 cores
    python -m bench.run_all --quick         # smoke run: a few seconds per part
    python -m bench.run_all --parts serve bulk --seconds 5

A full run (every part, not --quick, none failed) also rewrites the README's benchmark table.

Parts: train (cold/warm `tierwise train`), embed (bench/embed_bench.py), inprocess (embed + predict + decide,
and the decision write), serve (/route and /ping under load; again on PostgreSQL with --pg-url), bulk
(`tierwise route --batch`), fastpath (bench/fastpath.py: the static embedder's request path part by part, the
issue-12 ratios, bulk on long prompts and Dask 1 vs 2 workers). Run it from anywhere; it works in the repo root.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import threading
import time
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any

from bench import bulk, embed_bench, fastpath, inprocess, proxy, readme_table, service, train_timing
from bench.common import REPO, load_avg, machine_info, scratch_database, write_json
from infra.settings import Settings

logger = logging.getLogger("bench")

PARTS = ("train", "embed", "inprocess", "serve", "bulk", "fastpath", "proxy")
DEFAULT_PG_URL = "postgresql+psycopg://postgres@127.0.0.1:5432/test"
ROUTE_OVER_INPROC_TARGET = 1.5


class LoadSampler:
    """The 1-minute load average every few seconds while the benchmark runs."""

    def __init__(self, every_s: float = 5.0):
        self.every_s = every_s
        self.samples: list[float] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, daemon=True)

    def _loop(self) -> None:
        while not self._stop.wait(self.every_s):
            self.samples.append(os.getloadavg()[0])

    def __enter__(self) -> LoadSampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()

    def summary(self) -> dict[str, float]:
        s = self.samples or [os.getloadavg()[0]]
        return {"min": round(min(s), 2), "mean": round(sum(s) / len(s), 2), "max": round(max(s), 2), "samples": len(s)}


def _table(serve: dict[str, Any]) -> dict[str, dict[str, dict[str, float]]]:
    return {
        endpoint: {f"c{r['concurrency']}": {k: r[k] for k in ("p50_ms", "p99_ms", "rps", "errors")} for r in rows}
        for endpoint, rows in serve["endpoints"].items()
    }


def _serve_summary(serve: dict[str, Any], inproc_p50: float | None, handler_p50: float | None) -> dict[str, Any]:
    table = _table(serve)
    route, ping = table["route"], table["ping"]
    ratios: dict[str, float] = {
        f"route_over_ping_p50_{c}": round(route[c]["p50_ms"] / ping[c]["p50_ms"], 2) for c in route if c in ping
    }
    if inproc_p50 and "c1" in route:
        ratios["route_c1_p50_over_inprocess_p50"] = round(route["c1"]["p50_ms"] / inproc_p50, 2)
    if handler_p50 and "c1" in route:
        ratios["route_c1_p50_over_handler_fn_p50"] = round(route["c1"]["p50_ms"] / handler_p50, 2)
    return {
        "database": serve["database"],
        "workers": serve["workers"],
        "decisions_written": serve["decisions_written"],
        "table": table,
        "cpu_cores": {
            f"{e}_c{r['concurrency']}": {"server": r["server_cpu_cores"], "loadgen": r["loadgen_cpu_cores"]}
            for e, rows in serve["endpoints"].items()
            for r in rows
        },
        "ratios": ratios,
    }


def summarize(results: dict[str, Any], machine: dict[str, Any]) -> dict[str, Any]:
    """The key numbers, ratios and targets of one run."""
    out: dict[str, Any] = {
        "machine": machine,
        "parts_failed": {k: v["error"] for k, v in results.items() if "error" in v},
    }
    targets: list[dict[str, Any]] = []
    if "train" in results and "error" not in results["train"]:
        ph = results["train"]["phases"]
        out["train_s"] = {p: ph[p]["wall_s"] for p in ph}
        out["train_embedded_texts"] = {p: ph[p]["embedded_texts"] for p in ph}
        for p in ph:
            targets.append(
                {"name": f"train {p} ≤ {ph[p]['target_s']:.0f} s", "value": ph[p]["wall_s"], "met": ph[p]["met"]}
            )
    if "embed" in results and "error" not in results["embed"]:
        e = results["embed"]
        out["embedding_ms"] = {
            b: {length: {k: v[k] for k in ("p50_ms", "p99_ms")} for length, v in by_len.items()}
            for b, by_len in e["latency"].items()
        }
        out["embedding_tokens"] = {length: v["tokens"] for length, v in e["prompts"].items()}
        out["embedding_p50_speedup_vs_torch"] = e.get("p50_speedup_vs_torch")
    inproc_p50 = handler_p50 = None
    if "inprocess" in results and "error" not in results["inprocess"]:
        lat = results["inprocess"]["latency"]
        inproc_p50 = lat["embed_predict_decide"]["p50_ms"]
        handler_p50 = lat["serving_route_fn_sqlite"]["p50_ms"]
        out["inprocess_ms"] = {k: {s: v[s] for s in ("p50_ms", "p99_ms")} for k, v in lat.items()}
        out["store_write_ms"] = {
            k: {s: v[s] for s in ("p50_ms", "p99_ms")}
            for k, v in results["inprocess"]["store_writes"]["latency"].items()
        }
    for key in ("serve", "serve_pg"):
        if key in results and "error" not in results[key]:
            out[key] = _serve_summary(results[key], inproc_p50, handler_p50)
            ratio = out[key]["ratios"].get("route_c1_p50_over_inprocess_p50")
            if ratio is not None:
                targets.append(
                    {
                        "name": f"{key}: /route p50 c=1 ≤ {ROUTE_OVER_INPROC_TARGET}× in-process p50",
                        "value": ratio,
                        "met": ratio <= ROUTE_OVER_INPROC_TARGET,
                    }
                )
    if "bulk" in results and "error" not in results["bulk"]:
        b = results["bulk"]
        out["bulk_prompts_per_s"] = {
            label: {k: v for k, v in entry.items() if k.endswith("prompts_per_s") or k.startswith("mean_tokens")}
            for label, entry in b["sets"].items()
        }
        out["bulk_cli_fixed_s"] = b["cli_fixed_s"]
        for label, entry in b["sets"].items():
            value = entry["cli_minus_fixed_prompts_per_s"]
            targets.append(
                {
                    "name": f"bulk {label}: ≥ {b['target_prompts_per_s']:.0f} prompts/s (CLI minus fixed cost)",
                    "value": value,
                    "met": value >= b["target_prompts_per_s"],
                }
            )
    if "fastpath" in results and "error" not in results["fastpath"]:
        out["fastpath_inprocess_ms"] = {
            k: v["p50_ms"] for k, v in results["fastpath"].get("inprocess", {}).get("latency", {}).items()
        }
        out["fastpath_serve_ratios"] = {c: r["ratios"] for c, r in results["fastpath"].get("serve", {}).items()}
        out["fastpath_dask"] = results["fastpath"].get("dask")
        for t in results["fastpath"]["summary"]["targets"]:
            targets.append({"name": f"fastpath {t['from']}: {t['target']}", "value": t["value"], "met": t["met"]})
    if "proxy" in results and "error" not in results["proxy"]:
        px = results["proxy"]
        keys = ("routing_ms", "overhead_p50_ms", "first_byte_delay_beyond_routing_p50_ms")
        out["proxy_ms"] = {k: px[k] for k in keys}
        targets += [{"name": f"proxy {t['name']}", "value": t["value"], "met": t["met"]} for t in px["targets"]]
        targets += [
            {"name": f"proxy (decision_commit=async) {t['name']}", "value": t["value"], "met": t["met"]}
            for t in px["async_commit"]["targets"]
        ]
    out["targets"] = targets
    return out


def main(argv: list[str] | None = None) -> int:
    """Run the chosen parts, write one JSON per part and summary.json; non-zero exit if a part failed."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out-dir", type=Path, default=REPO / "bench" / "results")
    parser.add_argument("--quick", action="store_true", help="smoke run: tiny training log, few reps, 2 s load levels")
    parser.add_argument("--parts", nargs="+", choices=PARTS, default=list(PARTS))
    parser.add_argument("--seconds", type=float, default=None, help="seconds per load level (default 15, quick 2)")
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 8, 32])
    parser.add_argument(
        "--bulk-prompts", type=int, default=None, help="distinct prompts to route (default 1000, quick 100)"
    )
    parser.add_argument(
        "--pg-url", default=DEFAULT_PG_URL, help="PostgreSQL server for a second serve run and store writes; '' to skip"
    )
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    for noisy in ("httpx", "alembic", "mlflow", "sentence_transformers"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    os.chdir(REPO)  # the service, the CLI and Settings' relative paths all assume the repo root

    seconds = args.seconds if args.seconds is not None else (2.0 if args.quick else 15.0)
    reps, warmup = (50, 5) if args.quick else (1000, 50)
    bulk_n = args.bulk_prompts or (100 if args.quick else 1000)
    settings = Settings()
    machine = machine_info() | {"load_avg_start": load_avg(), "quick": args.quick, "argv": argv}
    results: dict[str, Any] = {}
    champion: list[Any] = []

    def champion_model() -> Any:
        if not champion:
            champion.append(inprocess.load_champion(settings))
        return champion[0]

    def embed_part() -> dict[str, Any]:
        out = args.out_dir / "embed.json"
        quick = ["--reps", "30", "--warmup", "3"] if args.quick else []
        embed_bench.main(["--out", str(out), "--onnx-dir", str(REPO / ".cache" / "onnx"), *quick])
        report: dict[str, Any] = json.loads(out.read_text())
        return report

    def inprocess_part() -> dict[str, Any]:
        report = inprocess.run(champion_model(), reps, warmup)
        report["store_writes"] = inprocess.store_writes(args.pg_url or None, reps // 2, warmup)
        return report

    def serve_part() -> dict[str, Any]:
        db = Path(os.environ.get("TMPDIR", "/tmp")) / f"tierwise-bench-{os.getpid()}.db"
        try:
            return service.run(f"sqlite:///{db}", seconds, args.concurrency, "sqlite")
        finally:
            for suffix in ("", "-wal", "-shm"):
                Path(f"{db}{suffix}").unlink(missing_ok=True)

    def serve_pg_part() -> dict[str, Any]:
        with scratch_database(args.pg_url) as url:
            return service.run(url, seconds, args.concurrency, "postgresql")

    plan: list[tuple[str, str, Callable[[], dict[str, Any]]]] = [
        ("train", "train", lambda: train_timing.run(args.quick)),
        ("embed", "embed", embed_part),
        ("inprocess", "inprocess", inprocess_part),
        ("serve", "serve", serve_part),
        ("serve", "serve_pg", serve_pg_part),
        ("bulk", "bulk", lambda: bulk.run(champion_model(), bulk_n)),
        ("proxy", "proxy", lambda: proxy.both_commits(30 if args.quick else 200, 5 if args.quick else 20)),
        ("fastpath", "fastpath", lambda: fastpath.run(args.quick, args.seconds)),
    ]
    with LoadSampler() as sampler:
        for part, name, fn in plan:
            if part not in args.parts or (name == "serve_pg" and not args.pg_url):
                continue
            logger.info("== %s", name)
            t0, load0 = time.perf_counter(), load_avg()
            try:
                report = fn()
            except Exception as exc:  # one broken part must not lose the others' numbers
                logger.error("part %s failed: %s", name, exc)
                report = {"error": f"{type(exc).__name__}: {exc}", "traceback": traceback.format_exc()[-4000:]}
            report["part_wall_s"] = round(time.perf_counter() - t0, 1)
            report["part_load_avg"] = {"start": load0, "end": load_avg()}
            results[name] = report
            write_json(args.out_dir / f"{name}.json", report)
    machine |= {"load_avg_end": load_avg(), "load_avg_1m_during_run": sampler.summary()}
    summary = summarize(results, machine)
    write_json(args.out_dir / "summary.json", summary)
    logger.info("wrote %s", args.out_dir / "summary.json")
    if not args.quick and set(args.parts) == set(PARTS) and not summary["parts_failed"]:
        readme_table.write(REPO / "README.md", readme_table.table(summary))
        logger.info("README.md benchmark table updated from this run")
    print(json.dumps({k: summary[k] for k in summary if k != "machine"}, indent=1))
    return 1 if summary["parts_failed"] else 0


if __name__ == "__main__":
    raise SystemExit(main())
