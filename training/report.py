"""Plain-text tables for the terminal and the README."""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from training.evaluation import EvalResult

COLUMNS = {
    "AIQ": "AIQ [95% CI]",
    "router_minus_AIQ": "router − method, AIQ [95% CI]",
    "AIQ_range": "AIQ range",
    "APGR": "APGR",
    "CPT50_pct": "CPT(50%) %",
    "CPT80_pct": "CPT(80%) %",
    "APGR_share": "APGR share [95% CI]",
    "CPT50_share": "CPT(50%) share %",
    "CPT80_share": "CPT(80%) share %",
    "match_top_cost_pct": "cost to match top %",
    "cost_for_95pct_top_pct": "cost for 95% of top %",
    "quality_at_half_top_cost": "quality @50% cost",
    "max_quality": "max quality",
    "ECE": "ECE",
}
WITH_CI = ("AIQ", "router_minus_AIQ", "APGR_share")
HOW_TO_READ = (
    "AIQ: area under the cost–quality hull over [0, top-tier cost] ÷ that cost. AIQ range: RouterBench's "
    "definition, over [cheapest tier's cost, priciest tier's cost] ÷ that range. APGR / CPT: RouteLLM's gap "
    "metrics with cost on the x axis (CPT in % of the cheapest-to-top cost range); with two tiers, APGR share / "
    "CPT share use RouteLLM's own axis, the share of calls to the strong tier, without a hull (random = 0.5). "
    "[95% CI]: percentile bootstrap over test prompts; router − method is paired (same resampled prompts). "
    "The random mix is RouterBench's zero router (the hull of the single tiers); the oracle is the λ sweep "
    "on the true scores."
)


def _fmt(v: float) -> str:
    if v is None or (isinstance(v, float) and np.isnan(v)):
        return "–"
    if np.isinf(v):
        return "never"
    if float(v).is_integer() and abs(v) >= 10:
        return str(int(v))
    return f"{v:.1f}" if abs(v) >= 2 else f"{v:.4f}"


def _cell(row: pd.Series, col: str) -> str:
    value = float(row[col])
    text = _fmt(value)
    low, high = f"{col}_low", f"{col}_high"
    if col in WITH_CI and low in row and np.isfinite(value) and np.isfinite(float(row[low])):
        text += f" [{_fmt(float(row[low]))}, {_fmt(float(row[high]))}]"
    return text


def markdown_table(df: pd.DataFrame, columns: dict[str, str]) -> str:
    """A markdown table of selected columns (those present and not all empty), index first."""
    cols = [c for c in columns if c in df.columns and df[c].notna().any()]
    head = "| " + " | ".join([str(df.index.name or ""), *[columns[c] for c in cols]]) + " |"
    sep = "|" + "---|" * (len(cols) + 1)
    rows = ["| " + " | ".join([str(i), *[_cell(r, c) for c in cols]]) + " |" for i, r in df.iterrows()]
    return "\n".join([head, sep, *rows])


def format_table(result: EvalResult) -> str:
    """The cost–quality comparison and the per-category breakdown, as markdown."""
    m = result.metrics
    lines = [
        f"Held-out prompts: {int(m['n_test_prompts'])}; top tier quality {m['top_quality']:.4f} "
        f"at ${m['top_cost_usd']:.6f} per prompt.",
        "Costs are % of the top tier's mean cost. " + HOW_TO_READ,
        "",
        markdown_table(result.table, COLUMNS),
        "",
    ]
    cats = result.per_category
    if cats.empty:
        lines.append("Per category: the log has no categories.")
    else:
        lines += [
            "Per category, at the cheapest knob setting whose overall quality reaches 95% of the top tier's "
            f"(λ = {cats.attrs.get('lambda', float('nan')):.4g} per USD):",
            "",
            markdown_table(cats.set_index("category"), {c: c for c in cats.columns if c != "category"}),
        ]
    return "\n".join(lines)


BEGIN, END = "<!-- evaluation-table:begin -->", "<!-- evaluation-table:end -->"


def result_to_json(result: EvalResult, source: str) -> dict[str, Any]:
    """The printed tables as JSON-ready data (the README block's source), with where they came from."""
    cats = result.per_category
    return {
        "source": source,
        "metrics": result.metrics,
        # to_dict, not to_json: Python's json keeps every float exactly (and inf / NaN, which the table uses).
        "table": result.table.reset_index().to_dict(orient="records"),
        "per_category": cats.to_dict(orient="records") if not cats.empty else [],
        "per_category_lambda": cats.attrs.get("lambda"),
    }


def result_from_json(data: dict[str, Any]) -> EvalResult:
    """An EvalResult holding the tables of `result_to_json` (no curves or draws), for format_table."""
    table = pd.DataFrame(data["table"]).set_index("method").astype(float)
    cats = pd.DataFrame(data["per_category"])
    cats.attrs["lambda"] = data.get("per_category_lambda")
    return EvalResult(table=table, curves={}, per_category=cats, metrics=data["metrics"])


def readme_block(data: dict[str, Any]) -> str:
    """The README's evaluation block: the command that produced it, then the tables."""
    return "\n".join(
        [
            BEGIN,
            f"<!-- written by `python -m training.report --write` from {data['source']}; do not edit by hand -->",
            format_table(result_from_json(data)),
            END,
        ]
    )


def write_readme(readme: Path, data: dict[str, Any]) -> None:
    """Replace the README's evaluation block (between its two markers) with the one rendered from `data`."""
    text = readme.read_text()
    if BEGIN not in text or END not in text:
        raise ValueError(f"{readme}: no {BEGIN} ... {END} block")
    head, rest = text.split(BEGIN, 1)
    tail = rest.split(END, 1)[1]
    readme.write_text(head + readme_block(data) + tail)


def main() -> None:
    parser = argparse.ArgumentParser(description="Render the README's evaluation table from its JSON.")
    parser.add_argument("--json", type=Path, default=Path("bench/results/evaluation.json"))
    parser.add_argument("--readme", type=Path, default=Path("README.md"))
    parser.add_argument("--write", action="store_true", help="replace the block in the README (else print it)")
    args = parser.parse_args()
    data = json.loads(args.json.read_text())
    if args.write:
        write_readme(args.readme, data)
    else:
        print(readme_block(data))  # noqa: T201 - the entry point's output


if __name__ == "__main__":
    main()
