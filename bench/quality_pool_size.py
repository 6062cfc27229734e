"""Pool size and composition vs the behaviour suite and routerbench AIQ (seed-0 split, the `make train` setup).

Pools: 3,000 prompts per other log by category (the default); the same with at least 200 per category;
1,500 per log; every prompt of both logs. Prints the router's AIQ (training.evaluation) and, per tier, the
easy-minus-hard gap of mean predicted quality on tests/quality/behaviour_prompts with twice its standard error.
`python -m bench.quality_pool_size` -> bench/results/shared_difficulty_pool_size.log (stdout).
"""

import time
from pathlib import Path

import numpy as np
import pandas as pd

import training.data as td
from router.embedders.factory import make_embedder
from router.routing import Router
from router.schema import load_outcomes, load_tiers
from tests.quality.behaviour_prompts import EASY, HARD
from tests.quality.conftest import OUTCOMES, POOL, TIERS, _train

tiers = load_tiers(TIERS)
full = load_outcomes(OUTCOMES)
split = td.split_log(load_outcomes(OUTCOMES, tiers), tiers, test_size=0.3, seed=0)
others = td.load_pool_logs(POOL)
emb = make_embedder("onnx-int8", onnx_dir=Path(__file__).resolve().parents[1] / ".cache" / "onnx")
orig = td.stratified_sample


def floored(floor):
    def f(first, cap, seed):
        if len(first) <= cap:
            return first
        frac = cap / len(first)
        cats = first["category"].fillna("").astype(str)
        parts = [
            g.sample(min(len(g), max(floor, round(len(g) * frac))), random_state=seed)
            for _, g in first.groupby(cats, sort=True)
        ]
        return pd.concat(parts)

    return f


for label, cap, floor in [
    ("cap3000", 3000, 1),
    ("cap3000 floor200", 3000, 200),
    ("cap1500", 1500, 1),
    ("all", 10**6, 1),
]:
    td.stratified_sample = floored(floor)
    t = time.time()
    pool = td.pool_logs(full, split, others, cap, seed=0)
    tr = _train(split, "onnx-int8", pool)
    r = Router(tr.artifact, embedder=emb)
    (qe, ce), (qh, ch) = r.score(list(EASY)), r.score(list(HARD))
    gaps = []
    for j in range(qe.shape[1]):
        d = qe[:, j].mean() - qh[:, j].mean()
        se = np.sqrt(qe[:, j].var(ddof=1) / 15 + qh[:, j].var(ddof=1) / 15)
        gaps.append(f"{d:+.3f}/{2 * se:.3f}")
    aiq = tr.result.table.loc["router", "AIQ"]
    print(
        f"{label:18s} pool {pool.describe()} | AIQ {aiq:.4f} | easy-hard gap/2se per tier {gaps} | {time.time() - t:.0f}s",
        flush=True,
    )
