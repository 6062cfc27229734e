"""The outcome log pivoted per prompt: one row per prompt text, whatever ids the log gave its copies."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from router.schema import TiersConfig, load_outcomes
from tests.conftest import make_log
from training.data import pivot_log, pool_logs, split_log


def with_copies(log: pd.DataFrame, copies: int) -> pd.DataFrame:
    """The log logged `copies` times, each copy under new prompt ids (an id per run), its layout changed."""
    return pd.concat(
        [log.assign(prompt_id=log["prompt_id"] + f"_run{k}", prompt=log["prompt"].str.replace(" ", " " * (k + 1)))
         for k in range(copies)],
        ignore_index=True,
    )  # fmt: skip


def test_copies_of_a_text_under_other_ids_are_one_prompt(tiers: TiersConfig, caplog: pytest.LogCaptureFixture) -> None:
    """Kept apart, copies counted as held-out prompts of their own (the gate's size floor passed on 43 texts logged
    twice), narrowed the bootstrap intervals and broke the novelty reference (review finding)."""
    log = make_log(120, seed=4)
    once = pivot_log(log, tiers)
    with caplog.at_level(logging.INFO):
        twice = pivot_log(with_copies(log, 2), tiers)
    assert len(twice.prompts) == len(once.prompts) == 120
    assert "120 prompt_id(s) repeat the text of an earlier prompt_id" in caplog.text
    # each text's outcome of a model is the mean of its copies': here the same, so the table is unchanged
    np.testing.assert_allclose(twice.scores, once.scores)
    np.testing.assert_allclose(twice.costs, once.costs)
    assert list(twice.prompts["category"]) == list(once.prompts["category"])
    split = split_log(with_copies(log, 3), tiers, 0.3, seed=0)
    assert split.test.sum() == split_log(log, tiers, 0.3, seed=0).test.sum()


def test_copies_with_other_outcomes_average_them(tiers: TiersConfig) -> None:
    log = make_log(30, seed=5)
    other = log.assign(prompt_id=log["prompt_id"] + "_b", score=1.0 - log["score"], cost_usd=3 * log["cost_usd"])
    table = pivot_log(pd.concat([log, other], ignore_index=True), tiers)
    assert len(table.prompts) == 30 and list(table.prompts["prompt_id"]) == list(log["prompt_id"].unique())
    np.testing.assert_allclose(table.scores, 0.5)
    np.testing.assert_allclose(table.costs, 2 * pivot_log(log, tiers).costs)


def test_a_log_without_copies_is_left_as_it_is(tiers: TiersConfig, caplog: pytest.LogCaptureFixture) -> None:
    log = make_log(60, seed=6)
    with caplog.at_level(logging.INFO):
        table = pivot_log(log, tiers)
    assert "repeat the text" not in caplog.text and len(table.prompts) == 60


def test_a_loaded_logs_copies_are_averaged_row_by_row_and_the_pool_sees_the_splits_ids(
    tiers: TiersConfig, tmp_path: Path
) -> None:
    """The merge ran on the tiers' outcomes only, after re-runs were averaged: an id run 3 times and a copy run once
    weighed the same (a mean of means), and the pool, built from the whole log, found the merged text's first id
    holding only its own outcomes, a model logged under the copy's id missing (review finding)."""
    log = make_log(40, seed=8)
    first = log[log["prompt_id"] == "p0"]
    reruns = pd.concat([first.assign(score=1.0)] * 3)  # p0 run three times, all 1
    copy = first.assign(prompt_id="p0-copy", score=0.0)  # its text once more under another id, 0
    unused = first.head(1).assign(prompt_id="p0-copy", model="unused", score=1.0)  # a model behind no tier
    path = tmp_path / "log.parquet"
    pd.concat([log[log["prompt_id"] != "p0"], reruns, copy, unused], ignore_index=True).to_parquet(path)
    loaded = load_outcomes(path)
    p0 = loaded[loaded["prompt_id"] == "p0"].set_index("model")["score"]
    assert loaded["prompt_id"].nunique() == 40 and p0["small"] == pytest.approx(0.75) and p0["unused"] == 1.0
    split = split_log(loaded, tiers, 0.3, seed=0)
    pool = pool_logs(loaded, split, [], max_prompts=0, seed=0)
    assert len(pool.prompts) == split.train.sum() and not pool.scores[["small", "medium", "large"]].isna().any().any()
    assert "p0" in set(split.table.prompts["prompt_id"][split.train])  # seed 0 trains on it
    row = pool.prompts.index(first["prompt"].iloc[0])
    assert pool.scores["unused"].iloc[row] == 1.0 and pool.scores["small"].iloc[row] == pytest.approx(0.75)
