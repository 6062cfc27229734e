"""Bulk routing for `tierwise route --batch`: the Router's decisions as JSON-ready records."""

from __future__ import annotations

from typing import Any

from router.routing import Router


def decisions_json(
    router: Router, rows: list[dict[str, str]], target: float, chunk: int, cost_weight: float | None = None
) -> list[dict[str, Any]]:
    """Decide a tier for each {"prompt_id", "prompt"} row, embedding in length-sorted chunks."""
    quality, cost, decisions = router.route([r["prompt"] for r in rows], target, chunk, cost_weight)
    out = []
    for i, (row, d) in enumerate(zip(rows, decisions, strict=True)):
        tier = router.tiers.tiers[d.tier_index]
        out.append(
            {
                "prompt_id": row["prompt_id"],
                "tier": tier.name,
                "model": tier.model,
                "predicted_quality": {n: round(float(q), 4) for n, q in zip(router.names, quality[i], strict=True)},
                "expected_cost_usd": float(cost[i, d.tier_index]),
                "reason": d.reason,
            }
        )
    return out
