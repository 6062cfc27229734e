"""The outcome log pivoted per prompt: one row per prompt text, whatever ids the log gave its copies."""

from __future__ import annotations

import logging

import numpy as np
import pandas as pd
import pytest

from router.schema import TiersConfig
from tests.conftest import make_log
from training.data import pivot_log, split_log


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
    with caplog.at_level(logging.WARNING):
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
    with caplog.at_level(logging.WARNING):
        table = pivot_log(log, tiers)
    assert "repeat the text" not in caplog.text and len(table.prompts) == 60
