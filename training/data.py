"""Training data: the outcome log pivoted to one row per prompt, and the train/test split by prompt text."""

from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np
import pandas as pd

from router import evaluate as ev
from router.schema import TiersConfig
from router.text import normalize_text

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class PromptTable:
    """The outcome log pivoted to one row per prompt."""

    prompts: pd.DataFrame  # prompt_id, prompt, category
    scores: np.ndarray  # (n, k) per tier, NaN where that tier has no outcome
    costs: np.ndarray  # (n, k)
    model_scores: pd.DataFrame  # (n, all models) for the best-single-model baseline
    model_costs: pd.DataFrame


def pivot_log(log: pd.DataFrame, tiers: TiersConfig) -> PromptTable:
    """One row per prompt_id with the realised score and cost of each tier (and of every model)."""
    first = log.drop_duplicates("prompt_id").set_index("prompt_id")
    prompts = pd.DataFrame(
        {
            "prompt_id": first.index,
            "prompt": first["prompt"].to_numpy(),
            "category": first["category"].fillna("").astype(str).to_numpy() if "category" in first else "",
        }
    )
    scores = log.pivot(index="prompt_id", columns="model", values="score").reindex(prompts["prompt_id"])
    costs = log.pivot(index="prompt_id", columns="model", values="cost_usd").reindex(prompts["prompt_id"])
    models = [t.model for t in tiers.tiers]
    tier_s = scores.reindex(columns=models).to_numpy(dtype=float)
    tier_c = costs.reindex(columns=models).to_numpy(dtype=float)
    keep = np.isfinite(tier_s).any(axis=1)
    return PromptTable(
        prompts=prompts[keep].reset_index(drop=True),
        scores=tier_s[keep],
        costs=tier_c[keep],
        model_scores=scores[keep],
        model_costs=costs[keep],
    )


@dataclass(frozen=True)
class Split:
    """The pivoted log and its train/test masks (split by normalised prompt text)."""

    table: PromptTable
    train: np.ndarray
    test: np.ndarray
    log: pd.DataFrame
    tiers: TiersConfig


def split_log(log: pd.DataFrame, tiers: TiersConfig, test_size: float, seed: int) -> Split:
    """Keep the models behind a tier, pivot per prompt, and split so no prompt text is on both sides."""
    used = log[log["model"].isin([t.model for t in tiers.tiers])]
    dropped = sorted(set(log["model"]) - set(used["model"]))
    if dropped:
        logger.info("models behind no tier, skipped: %s", dropped)
    table = pivot_log(used, tiers)
    groups = [normalize_text(p) for p in table.prompts["prompt"]]
    train, test = ev.split_by_group(groups, test_size, seed)
    logger.info("prompts: %d train, %d test", train.sum(), test.sum())
    return Split(table, train, test, used, tiers)
