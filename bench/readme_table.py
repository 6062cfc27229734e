"""The README's benchmark table, from one run's bench/results/summary.json.

python -m bench.readme_table            # print the markdown
python -m bench.readme_table --write    # replace the table in README.md (between its two markers)
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from bench.common import REPO, replace_between

BEGIN, END = "<!-- bench-table:begin -->", "<!-- bench-table:end -->"
ROUTE_TARGET = "c=1 p50 ≤ 5, p99 ≤ 15 ms; ≥ 450/s at c=8"


def _num(x: float) -> str:
    """Three significant digits, without exponents."""
    return f"{x:.0f}" if abs(x) >= 100 else f"{x:.3g}"


def _lat(row: dict[str, float]) -> str:
    return f"{_num(row['p50_ms'])} / {_num(row['p99_ms'])} ms"


def _load(table: dict[str, Any], endpoint: str) -> str:
    cells = []
    for c in ("c1", "c8", "c32"):
        row = table[endpoint][c]
        lat = f"{_num(row['p50_ms'])} ms" if endpoint == "ping" else _lat(row).removesuffix(" ms")
        cells.append(f"c={c[1:]} {lat}, {row['rps']:.0f}/s")
    return " · ".join(cells)


def _embedding(emb: dict[str, Any], size: str) -> str:
    return " · ".join(f"{b} {_lat(v[size]).removesuffix(' ms')}" for b, v in emb.items())


def table(s: dict[str, Any]) -> str:
    m = s["machine"]
    loads = m["load_avg_1m_during_run"]
    lines = [
        f"Run of {m['date'][:16].replace('T', ' ')} UTC, commit {m['git_commit'][:7]}"
        f"{' (uncommitted changes)' if m['git_dirty'] else ''}, {m['nproc']} cores, 1-min load "
        f"{loads['min']:.2f}–{loads['max']:.2f} (mean {loads['mean']:.2f}). Full JSON: `bench/results/summary.json`.",
        "",
        "| what | result | target |",
        "|---|---|---|",
        f"| `tierwise train`, cold / warm embedding cache | {s['train_s']['cold']:.0f} s / {s['train_s']['warm']:.0f} s "
        "| ≤ 600 s / ≤ 60 s |",
    ]
    tokens = s["embedding_tokens"]
    for size in ("short", "long"):
        lines.append(
            f"| embedding p50 / p99 ms, {tokens[size]} tokens, 1 thread | {_embedding(s['embedding_ms'], size)} | |"
        )
    inproc = s["inprocess_ms"]
    lines.append(
        f"| in-process embed + predict + decide (int8, 1 thread) p50 / p99 | {_lat(inproc['embed_predict_decide'])} "
        f"(model alone {inproc['model_predict_only']['p50_ms']:.2g} ms) | |"
    )
    for part, label in (("serve", "SQLite"), ("serve_pg", "PostgreSQL")):
        if part not in s:
            continue
        t = s[part]["table"]
        lines.append(f"| /route p50 / p99, req/s — {label} store | {_load(t, 'route')} | {ROUTE_TARGET} |")
        lines.append(f"| /ping (HTTP floor, same app) — {label} run | {_load(t, 'ping')} | |")
    ratios = s["serve"]["ratios"]
    lines.append(f"| /route c=1 p50 ÷ in-process p50 | {ratios['route_c1_p50_over_inprocess_p50']:.2f}× | ≤ 1.5× |")
    over_ping = " / ".join(f"{ratios[f'route_over_ping_p50_c{c}']:.1f}×" for c in (1, 8, 32))
    lines.append(f"| /route ÷ /ping p50 at c=1 / 8 / 32 | {over_ping} | |")
    for name, b in s["bulk_prompts_per_s"].items():
        lines.append(
            f"| bulk `tierwise route --batch`, {name}, {b['mean_tokens_embedded']:.0f} tokens | "
            f"{b['cli_prompts_per_s']:.0f} prompts/s whole command, {b['cli_minus_fixed_prompts_per_s']:.0f}/s without "
            f"start-up; routing step {b['route_prompts_1thread_prompts_per_s']:.0f}/s on 1 thread, "
            f"{b['route_prompts_2thread_prompts_per_s']:.0f}/s on 2 | ≥ 500 prompts/s |"
        )
    return "\n".join(lines)


def write(readme: Path, text: str) -> None:
    replace_between(readme, BEGIN, END, text)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--summary", type=Path, default=REPO / "bench" / "results" / "summary.json")
    parser.add_argument("--write", action="store_true", help="replace the table in README.md")
    args = parser.parse_args()
    text = table(json.loads(args.summary.read_text()))
    if args.write:
        write(REPO / "README.md", text)
    else:
        print(text)


if __name__ == "__main__":
    main()
