"""The README's routing-quality table, from one run's bench/results/quality.json (`make quality`).

python -m bench.quality_readme            # print the markdown
python -m bench.quality_readme --write    # replace the table in README.md (between its two markers)
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from bench.common import REPO, replace_between

BEGIN, END = "<!-- quality-table:begin -->", "<!-- quality-table:end -->"
# Method-minus-router columns: the baselines issue 10 names, the router without its guessed task prior, the
# service's task hint, then the gain / stacking / averaging candidates (built on the boosters).
COLUMNS = (
    ("kNN (k=25)", "kNN"),
    ("task prior", "task prior"),
    ("boosters alone (no task prior)", "boosters alone"),
    ("task hint (the service's)", "task hint"),
    ("(f) gain over the cheapest tier", "(f) gain"),
    ("(g) stacking boosters + kNN + prior", "(g) stack b+kNN+prior"),
    ("(h) average boosters + kNN + prior", "(h) avg b+kNN+prior"),
)


def _ci(v: list[float] | None, sign: bool = False) -> str:
    if v is None:
        return "–"
    f = "+.3f" if sign else ".3f"
    return f"{v[0]:{f}} [{v[1]:{f}}, {v[2]:{f}}]"


def table(result: dict[str, Any]) -> str:
    """One row per split group: the router's AIQ, each other method's AIQ difference, the two-tier APGR share."""
    m = result["machine"]
    lines = [
        f"Run of {m['date'][:16].replace('T', ' ')} UTC, commit {m['git_commit'][:7]}"
        f"{' (uncommitted changes)' if m['git_dirty'] else ''}, {result['total_seconds'] / 60:.0f} min"
        f"{' (quick mode)' if result['quick'] else ''}. Every method: `bench/results/quality.md`.",
        "",
        "AIQ of the router (the shipped default) and each method's AIQ minus the router's, paired, "
        "[95% bootstrap CI over test prompts; seeds averaged]; last column: RouteLLM's APGR on the "
        "share-of-strong-calls axis (random 0.5) for the two-model set.",
        "",
        "| split group | router AIQ | "
        + " | ".join(f"{short} − router" for _, short in COLUMNS)
        + " | router APGR share |",
        "|---" * (len(COLUMNS) + 3) + "|",
    ]
    for group, g in result["groups"].items():
        ms = g["methods"]
        cells = [_ci(ms[name].get("d_AIQ"), sign=True) if name in ms else "–" for name, _ in COLUMNS]
        apgr = _ci(ms["router"].get("APGR_share"))
        lines.append(f"| {group} | {_ci(ms['router']['AIQ'])} | " + " | ".join(cells) + f" | {apgr} |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--results", type=Path, default=REPO / "bench" / "results" / "quality.json")
    parser.add_argument("--write", action="store_true", help="replace the table in README.md")
    args = parser.parse_args()
    text = table(json.loads(args.results.read_text()))
    if not args.write:
        print(text)
        return
    replace_between(REPO / "README.md", BEGIN, END, text)


if __name__ == "__main__":
    main()
