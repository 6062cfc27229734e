"""A model swapped in behind a tier, learned from its few outcomes without retraining (issue 10, item 2).

The trained router keeps every other tier; the swapped tier is refitted from the new model's outcomes alone on
top of the shared difficulty (DifficultyModel.refit_tier). Its task prior (the old model's per-task means) is
replaced: when the new rows carry categories, by the new model's per-task means shrunk toward its task profile
(TaskPrior.with_tier_profile: which of the other tiers' models it behaves like, task by task, fitted on its few
outcomes); without categories the tier keeps no prior. bench/results/add_model.md measures both on two split seeds.
"""

from __future__ import annotations

import logging
from dataclasses import replace

import numpy as np
import pandas as pd

from router.artifact import HeldOut, RouterArtifact, estimate_tokens_out
from router.embedders.protocol import Embedder
from router.embedding_cache import EmbeddingCache
from router.features import featurize
from router.schema import TiersConfig

logger = logging.getLogger(__name__)


class NothingToAdd(ValueError):
    """No tier's model differs from the trained one (`in_tiers_file`: the tiers file is what to change), or a
    swapped model has too few outcomes (the log is)."""

    def __init__(self, message: str, in_tiers_file: bool = False):
        super().__init__(message)
        self.in_tiers_file = in_tiers_file


def add_models(
    artifact: RouterArtifact, tiers: TiersConfig, log: pd.DataFrame, embedder: Embedder, cache: EmbeddingCache | None
) -> tuple[RouterArtifact, list[str]]:
    """The artifact with every tier whose model differs in `tiers` refitted from that model's rows of `log`.

    Returns the new artifact (routing `tiers`) and one line per refitted tier.
    """
    artifact.check_tiers(tiers)
    swapped = [j for j, t in enumerate(tiers.tiers) if t.model != artifact.tiers.tiers[j].model]
    if not swapped:
        raise NothingToAdd(
            "no tier's model differs from the one the router was trained with: swap one in the tiers file",
            in_tiers_file=True,
        )
    model, notes = artifact.model, []
    tokens_out = dict(artifact.tokens_out)
    for j in swapped:
        tier = tiers.tiers[j]
        rows = log[log["model"] == tier.model].drop_duplicates("prompt_id", keep="last")
        if len(rows) < 10:
            raise NothingToAdd(f"tier '{tier.name}': {len(rows)} outcomes of {tier.model} in the log; need at least 10")
        X = featurize(rows["prompt"].tolist(), artifact.features, embedder, cache)
        model = model.refit_tier(j, X, rows["score"].to_numpy(dtype=float))
        tokens_out[tier.name] = estimate_tokens_out(rows, tiers)[tier.name]
        how = "calibrated shared easiness" if model.boosters_[j] is None else "shared easiness and a booster"
        notes.append(f"tier {tier.name}: {tier.model} from {len(rows)} outcomes ({how})")
        logger.info(notes[-1])
    if artifact.guarantee is not None:  # calibrated on the old tier's predictions
        notes.append("the quality guarantee was dropped: it was calibrated with the old model's predictions")
    task_prior = artifact.task_prior.without_tiers(swapped) if artifact.task_prior is not None else None
    if task_prior is not None and "category" in log.columns:
        for j in swapped:
            rows = log[(log["model"] == tiers.tiers[j].model) & log["category"].notna()]
            rows = rows.drop_duplicates("prompt_id", keep="last")
            categories = rows["category"].astype(str).to_numpy()
            known = np.isin(categories, list(task_prior.means))
            if known.any():
                task_prior = task_prior.with_tier_profile(j, categories, rows["score"].to_numpy(float))
                notes.append(
                    f"tier {tiers.tiers[j].name}: task prior from {int(known.sum())} outcomes in known tasks and its "
                    "task profile"
                )
    return (
        replace(
            artifact,
            model=model,
            tiers=tiers,
            tokens_out=tokens_out,
            guarantee=None,
            task_prior=task_prior,
            held_out=_refit(artifact.held_out, [tiers.tiers[j].name for j in swapped]),
        ),
        notes,
    )


def _refit(held_out: HeldOut | None, names: list[str]) -> HeldOut | None:
    """The model's split, with the swapped tiers marked: they learned from every outcome of their new models,
    held-out prompts included (evaluate says so)."""
    if held_out is None:
        return None
    return replace(held_out, refit_tiers=tuple(dict.fromkeys((*held_out.refit_tiers, *names))))
