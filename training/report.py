"""Plain-text tables for the terminal and the README."""

from __future__ import annotations

import numpy as np
import pandas as pd

from training.evaluation import EvalResult

COLUMNS = {
    "AIQ": "AIQ",
    "APGR": "APGR",
    "CPT50_pct": "CPT(50%) %",
    "CPT80_pct": "CPT(80%) %",
    "match_top_cost_pct": "cost to match top %",
    "cost_for_95pct_top_pct": "cost for 95% of top %",
    "quality_at_half_top_cost": "quality @50% cost",
    "max_quality": "max quality",
    "ECE": "ECE",
}


def _fmt(v: float) -> str:
    if float(v).is_integer() and abs(v) >= 10:
        return str(int(v))
    if v is None or (isinstance(v, float) and np.isnan(v)):
        return "–"
    if np.isinf(v):
        return "never"
    return f"{v:.1f}" if abs(v) >= 2 else f"{v:.4f}"


def markdown_table(df: pd.DataFrame, columns: dict[str, str]) -> str:
    """A markdown table of selected columns, index first."""
    cols = [c for c in columns if c in df.columns]
    head = "| " + " | ".join([str(df.index.name or ""), *[columns[c] for c in cols]]) + " |"
    sep = "|" + "---|" * (len(cols) + 1)
    rows = ["| " + " | ".join([str(i), *[_fmt(float(r[c])) for c in cols]]) + " |" for i, r in df.iterrows()]
    return "\n".join([head, sep, *rows])


def format_table(result: EvalResult) -> str:
    """The cost–quality comparison and the per-category breakdown, as markdown."""
    m = result.metrics
    lines = [
        f"Held-out prompts: {int(m['n_test_prompts'])}; top tier quality {m['top_quality']:.4f} "
        f"at ${m['top_cost_usd']:.6f} per prompt.",
        "Costs are % of the top tier's mean cost; CPT is % of the cheapest-to-top cost range.",
        "",
        markdown_table(result.table, COLUMNS),
        "",
        "Per category, at the cheapest knob setting whose overall quality reaches 95% of the top tier's "
        f"(λ = {result.per_category.attrs.get('lambda', float('nan')):.4g} per USD):",
        "",
        markdown_table(
            result.per_category.set_index("category"), {c: c for c in result.per_category.columns if c != "category"}
        ),
    ]
    return "\n".join(lines)
