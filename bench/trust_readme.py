"""The README's Trust tables, from bench/results/trust_ope.json (and the trust-drift benches' results, if present).

python -m bench.trust_readme            # print the markdown
python -m bench.trust_readme --write    # replace the tables in README.md (between the trust-table markers)
"""

from __future__ import annotations

import argparse
import importlib
import json
from typing import Any

from bench.common import REPO

BEGIN, END = "<!-- trust-table:begin -->", "<!-- trust-table:end -->"
OPE = REPO / "bench" / "results" / "trust_ope.json"
ESTIMATORS = ("naive", "dm", "ips", "snips", "dr_raw", "dr", "switch")
# Sections other trust benches contribute: a module with `readme_section() -> str | None`.
OTHER_SECTIONS = ("bench.trust_drift", "bench.trust_guarantee")


def _err(row: dict[str, Any], est: str) -> str:
    e = row.get(est)
    return "refused" if e is None else f"{e['mean_abs_err']:.3f} / {e['p90_abs_err']:.3f}"


def ope_section(report: dict[str, Any]) -> str:
    design = report["design"]
    lines = [
        f"Off-policy evaluation on replayed traffic (`{report['command']}`, {report['runtime_s']:.0f} s): "
        f"{design['logged_prompts']} logged prompts per replay, logging policy {design['logging_policy']}, "
        "only the served tier's outcome revealed. Cells: mean / 90th-percentile |estimate − truth| of mean quality "
        "over all replays (a router trained per split seed); *refused* = the log cannot support it (zero propensity). "
        "*DR raw* uses the router's own predictions as the reward model; *DR* and *SWITCH* the cross-fitted "
        "recalibrated one (router/ope.py); *SWITCH uses DM* = share of replays where SLOPE chose a finite threshold.",
        "",
    ]
    for dataset, r in report["results"].items():
        for design, rows in r["by_logging"].items():
            lines += [
                f"**{dataset}, logging {design}** (tiers {', '.join(r['tiers'])}; {rows[0]['reps']} replays)",
                "",
                "| policy | truth | differs from logging | naive replay | model only | IPS | SNIPS | DR raw | DR | SWITCH "
                "| DR / SWITCH 95% CI covers | SWITCH uses DM | ESS |",
                "|---|---|---|---|---|---|---|---|---|---|---|---|---|",
            ]
            for row in rows:
                cover = " / ".join(
                    f"{(row.get(e) or {})['ci_coverage']:.0%}" if "ci_coverage" in (row.get(e) or {}) else "–"
                    for e in ("dr", "switch")
                )
                picks = f"{row['switch_picks_dm_share']:.0%}" if "switch_picks_dm_share" in row else "–"
                ess = f"{row['ess_mean']:.0f}" if row.get("ess_mean", float("nan")) == row.get("ess_mean") else "–"
                share = row.get("disagreement_with_logging", float("nan"))
                differs = f"{share:.0%}" if share == share else "–"
                cells = [_err(row, e) for e in ESTIMATORS]
                lines.append(
                    f"| {row['policy']} | {row['truth_quality_mean']:.3f} | {differs} | "
                    + " | ".join(cells)
                    + f" | {cover} | {picks} | {ess} |"
                )
            lines.append("")
    lines.append(
        "The budget question (quality bought by going from 25% to 60% of the top tier's expected cost) and the price of"
    )
    lines.append("exploration (the served policy's true quality and cost against no exploration), mean over replays:")
    lines.append("")
    for dataset, r in report["results"].items():
        base = {row["policy"]: row for row in r["by_logging"]["ε=0"]}["logging (as served)"]
        for design, rows in r["by_logging"].items():
            by = {row["policy"]: row for row in rows}
            b = by["budget 25%->60%"]
            truth = b["truth_quality_mean"]
            est = ", ".join(
                f"{name} {truth + b[e]['bias']:+.3f}"
                for e, name in (
                    ("naive", "naive replay"),
                    ("dm", "model only"),
                    ("snips", "SNIPS"),
                    ("dr", "DR"),
                    ("switch", "SWITCH"),
                )
                if e in b
            )
            served = by["logging (as served)"]
            price = (
                f"; explores {served['disagreement_with_logging']:.1%} of decisions, costing "
                f"{base['truth_quality_mean'] - served['truth_quality_mean']:.3f} quality and "
                f"{served['truth_cost_mean_usd'] / base['truth_cost_mean_usd'] - 1:+.1%} cost"
                if design != "ε=0"
                else ""
            )
            lines.append(f"- {dataset}, {design}: truth {truth:+.3f}; {est}{price}")
    lines.append("")
    lines.append(
        "Targets (|estimate − truth| ≤ 0.01 on one 2,000-prompt log): mean / p90 |error| and the share of replays "
        "within 0.01, for DR on the raw predictions, DR and SWITCH on the recalibrated reward model:"
    )
    lines.append("")
    for name, t in report["targets"].items():
        summary = "; ".join(
            f"{label} {t[e]['mean_abs_err']} / {t[e]['p90_abs_err']}, {t[e]['within_0.01_share']:.0%} within"
            f"{' (met)' if t[e]['mean_abs_err_met'] else ''}"
            for e, label in (("dr_raw", "DR raw"), ("dr", "DR"), ("switch", "SWITCH"))
            if t[e]["mean_abs_err"] is not None
        )
        lines.append(f"- {name}: {summary}")
    return "\n".join(lines)


def markdown() -> str:
    parts = [ope_section(json.loads(OPE.read_text()))] if OPE.exists() else ["(run `make trust` for the OPE table)"]
    for module in OTHER_SECTIONS:
        try:
            section = importlib.import_module(module).readme_section()
        except (ImportError, AttributeError):
            continue
        if section:
            parts.append(section)
    return "\n\n".join(parts)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--write", action="store_true", help="replace the tables in README.md")
    args = parser.parse_args()
    table = markdown()
    if not args.write:
        print(table)
        return
    readme = REPO / "README.md"
    text = readme.read_text()
    if BEGIN not in text or END not in text:
        raise SystemExit(f"README.md has no {BEGIN} ... {END} markers")
    head, rest = text.split(BEGIN, 1)
    _, tail = rest.split(END, 1)
    readme.write_text(f"{head}{BEGIN}\n{table}\n{END}{tail}")


if __name__ == "__main__":
    main()
