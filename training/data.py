"""Training data: the outcome log pivoted to one row per prompt, and the train/test split by prompt text."""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from router import evaluate as ev
from router.model import MIN_TIER_OUTCOMES
from router.schema import TiersConfig, deduplicate_outcomes, load_outcomes
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

    @property
    def complete(self) -> np.ndarray:
        """The prompts with every tier's score and cost: the ones tiers can be compared on."""
        return np.asarray(np.isfinite(self.scores).all(axis=1) & np.isfinite(self.costs).all(axis=1))


def pivot_log(log: pd.DataFrame, tiers: TiersConfig) -> PromptTable:
    """One row per prompt text (`deduplicate_outcomes`: a log `load_outcomes` read is so already) with the realised
    score and cost of each tier (and of every model)."""
    log = deduplicate_outcomes(log)
    first = log.drop_duplicates("prompt_id").set_index("prompt_id")
    # A prompt's category: the first of its rows that gives one (a model's rows may come without).
    category = None
    if "category" in log:
        given = log["category"].where(log["category"].astype(str).str.strip() != "")  # a blank one is none
        category = given.groupby(log["prompt_id"], sort=False).first().reindex(first.index)
    prompts = pd.DataFrame(
        {
            "prompt_id": first.index,
            "prompt": first["prompt"].to_numpy(),
            "category": category.fillna("").astype(str).to_numpy() if category is not None else "",
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


def prompt_set_digest(prompts: Iterable[str]) -> str:
    """A digest of the set of normalised prompt texts, which `split_log`'s "draw" rule draws its split from: two
    logs with the same digest (a CSV and a Parquet of one log, or one with repeated prompts under new ids) split
    alike under it."""
    joined = "\n".join(sorted({normalize_text(p) for p in prompts}))
    return hashlib.blake2b(joined.encode(), digest_size=16).hexdigest()


def split_log(log: pd.DataFrame, tiers: TiersConfig, test_size: float, seed: int, rule: str = "hash") -> Split:
    """Keep the models behind a tier, pivot per prompt, and split so no prompt text is on both sides (by `rule`,
    router.evaluate.SPLIT_RULES: "hash" keeps each prompt text on its side whatever the rest of the log holds)."""
    used = log[log["model"].isin([t.model for t in tiers.tiers])]
    dropped = sorted(set(log["model"]) - set(used["model"]))
    if dropped:
        logger.info("models behind no tier, skipped: %s", dropped)
    table = pivot_log(used, tiers)
    groups = [normalize_text(p) for p in table.prompts["prompt"]]
    train, test = ev.split_by_group(groups, test_size, seed, rule)
    logger.info("prompts: %d train, %d test", train.sum(), test.sum())
    return Split(table, train, test, used, tiers)


def too_few_outcomes(split: Split, part: str = "training", minimum: int = MIN_TIER_OUTCOMES) -> str | None:
    """Which tiers have fewer than `minimum` outcomes in the split's `part` ("training" or "test"), in words.

    None when every tier has enough. Checked before any fitting or scoring, so a log that cannot train (a booster
    needs MIN_TIER_OUTCOMES) or be evaluated (every tier needs realised scores) says so at once.
    """
    rows = split.train if part == "training" else split.test
    counts = np.isfinite(split.table.scores[rows]).sum(axis=0)
    short = [
        f"tier '{t.name}' ({t.model}) has {int(c)}"
        for t, c in zip(split.tiers.tiers, counts, strict=True)
        if c < minimum
    ]
    if not short:
        return None
    return (
        f"{'; '.join(short)} outcomes in the {part} split; each tier needs at least {minimum} "
        "(log more outcomes of its model, or leave the tier out of the tiers file)"
    )


def cannot_compare_tiers(split: Split) -> str | None:
    """Why the split's held-out prompts cannot compare its tiers, in words; None when they can.

    The evaluation (and so the champion gate) prices each tier's quality against its cost on the same prompts: it
    needs two tiers, held-out prompts with an outcome of every tier's model, and tiers that differ in cost there.
    A production log (only the served tier's outcome) has no such prompts: it trains beside a log that does."""
    if len(split.tiers.tiers) < 2:
        return "the tiers file has one tier; routing chooses between at least two"
    table = split.table
    complete = split.test & table.complete
    if not complete.any():
        return (
            "no held-out prompt has an outcome of every tier's model; the evaluation compares the tiers on the same "
            "prompts: log some prompts on every tier (a log of served traffic has only the served tier's outcome: "
            "train it beside one that has, as --from-store does with --outcomes)"
        )
    means = table.costs[complete].mean(axis=0)
    if np.ptp(means) <= 1e-12 * max(float(np.abs(means).max()), 1e-300):
        return (
            f"every tier's mean cost on the held-out prompts is ${float(means[0]):.6g}; tierwise weighs quality "
            "against cost, so the tiers' models must differ in what they cost"
        )
    return None


@dataclass(frozen=True)
class Pool:
    """Outcome logs pooled for the shared difficulty: one row per prompt, every model's score (NaN where unseen).

    The first `n_train` rows are the split's train prompts, in the split's order, with every model of the
    primary log (also models behind no tier); the rest come from the other logs.
    """

    prompts: list[str]
    scores: pd.DataFrame
    n_train: int

    def describe(self) -> str:
        return f"{len(self.prompts)} prompts ({self.n_train} from the training log) x {self.scores.shape[1]} models"


def stratified_sample(first: pd.DataFrame, cap: int, seed: int) -> pd.DataFrame:
    """At most about `cap` rows, each category keeping its share (at least one row)."""
    if len(first) <= cap:
        return first
    frac = cap / len(first)
    cats = (
        first["category"].fillna("").astype(str).str.strip()
        if "category" in first
        else pd.Series("", index=first.index)
    )
    parts = [g.sample(max(1, round(len(g) * frac)), random_state=seed) for _, g in first.groupby(cats, sort=True)]
    return pd.concat(parts)


def pool_logs(full_log: pd.DataFrame, split: Split, others: list[pd.DataFrame], max_prompts: int, seed: int) -> Pool:
    """The split's train prompts with every model of `full_log`, then up to `max_prompts` prompts of each other log.

    Other logs' prompts whose normalised text is a test prompt (or already pooled) are left out, so the
    held-out evaluation stays held out; each log is subsampled by category.
    """
    train_ids = split.table.prompts["prompt_id"][split.train]
    wide = full_log.pivot_table(index="prompt_id", columns="model", values="score", aggfunc="mean")
    blocks = [wide.reindex(train_ids).reset_index(drop=True)]
    prompts = split.table.prompts["prompt"][split.train].tolist()
    taken = {normalize_text(p) for p in split.table.prompts["prompt"]}
    for log in others:
        first = log.drop_duplicates("prompt_id").set_index("prompt_id")
        texts = first["prompt"].map(normalize_text)
        first = first[~texts.isin(taken) & ~texts.duplicated()]
        first = stratified_sample(first, max_prompts, seed)
        taken |= set(first["prompt"].map(normalize_text))
        other = log.pivot_table(index="prompt_id", columns="model", values="score", aggfunc="mean")
        blocks.append(other.reindex(first.index).reset_index(drop=True))
        prompts += first["prompt"].tolist()
    scores = pd.concat(blocks, ignore_index=True)
    return Pool(prompts=prompts, scores=scores, n_train=int(split.train.sum()))


def load_pool_logs(paths: list[Path]) -> list[pd.DataFrame]:
    """The pooled outcome logs that exist (validated, any models); a missing one is skipped with a warning."""
    logs = []
    for path in paths:
        if not Path(path).is_file():
            logger.warning(
                "pooled log %s (TIERWISE_POOL_PATHS, relative to the working directory) is missing: the shared "
                "difficulty goes without it (in a checkout, `make data` brings the shared logs; "
                "TIERWISE_POOL_PATHS='[]' trains on your log alone, without this warning)",
                path,
            )
            continue
        logs.append(load_outcomes(path))
    return logs
