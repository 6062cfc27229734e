"""How many boosting rounds the router's per-tier boosters need (issue 10): a fixed count against one chosen per tier
by cross-validation on the training rows.

`python -m bench.quality_rounds [--quick] [--only GROUPS]` fits, on every split of the quality suite (3 seeds per
random split), the default router (boosters on the shared difficulty, then the task prior blended in with its
out-of-fold weights) with each variant of the boosters' round count, and reports AIQ and the paired difference to
the default (800 rounds) with 95% bootstrap CIs, per split group. Variants: fixed 200 / 800 / 2,400 rounds, and
"cv": per tier, 3-fold `lightgbm.cv` on the training rows (same init score: the calibrated shared easiness) with early
stopping on cross-entropy (patience 100, at most 3,000 rounds), then a refit on all rows with the chosen count.
Output: bench/results/quality_rounds.{json,md}.
"""

from __future__ import annotations

import argparse
import json
import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import lightgbm as lgb
import numpy as np
from threadpoolctl import threadpool_limits

from bench import quality as bq
from bench.common import REPO, machine_info
from router.model import DifficultyModel
from router.text import text_features
from training.fit import fit_task_prior, out_of_fold_boosters

logger = logging.getLogger("bench.quality_rounds")
MAX_ROUNDS = 3000
PATIENCE = 100
DEFAULT = "fixed 800"


@dataclass(eq=False, kw_only=True)
class CVRounds(DifficultyModel):
    """DifficultyModel whose per-tier round count is chosen by 3-fold cross-validation (module docstring); the counts
    it chose, in fitting order, are in `chosen_`."""

    def _train_one(self, X: np.ndarray, y: np.ndarray, init: np.ndarray | None = None) -> lgb.Booster:
        params = {**self.lgb_params(), "metric": "cross_entropy"}
        data = lgb.Dataset(X, label=y, init_score=init, free_raw_data=False)
        res = lgb.cv(
            params,
            data,
            num_boost_round=MAX_ROUNDS,
            nfold=3,
            stratified=False,
            seed=self.random_state,
            callbacks=[lgb.early_stopping(PATIENCE, verbose=False)],
        )
        rounds = len(res["valid cross_entropy-mean"])  # type: ignore[arg-type]  # a list without return_cvbooster
        self.chosen_: list[int] = [*getattr(self, "chosen_", []), rounds]
        return lgb.train(self.lgb_params(), lgb.Dataset(X, label=y, init_score=init), num_boost_round=rounds)


def variants(seed: int) -> dict[str, DifficultyModel]:
    fixed = {
        f"fixed {n}": DifficultyModel(n_jobs=bq.N_JOBS, random_state=seed, n_estimators=n) for n in (200, 800, 2400)
    }
    return {**fixed, "cv": CVRounds(n_jobs=bq.N_JOBS, random_state=seed)}


def router_predictions(sp: bq.SplitData, feats: bq.Features, seed: int) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
    """Each variant's router predictions on the test prompts, and the rounds cv chose."""
    tr, te = sp.train, sp.test
    Y = sp.scores
    X = np.hstack([feats.view(sp.prompts, "tail700"), text_features(sp.prompts)])
    shared = bq.shared_difficulty_for(sp, X, feats, seed)
    e_tr = shared.oof_easiness_[: int(tr.sum())]
    names = [str(j) for j in range(Y.shape[1])]
    preds: dict[str, np.ndarray] = {}
    info: dict[str, Any] = {}
    has_cats = len(set(sp.categories[tr])) > 1
    for label, model in variants(seed).items():
        t0 = time.perf_counter()
        boosters = model.fit(X[tr], Y[tr], names, shared=shared, train_easiness=e_tr).predict_quality(X[te])
        if isinstance(model, CVRounds):
            info["cv rounds"] = model.chosen_
        if has_cats:
            oof = out_of_fold_boosters(X[tr], Y[tr], names, model, shared, e_tr)
            prior = fit_task_prior(X[tr], Y[tr], sp.categories[tr], names, model, shared, e_tr, boosters_oof=oof)
            preds[label] = boosters if prior is None else prior.blend(boosters, None, X[te])[0]
        else:
            preds[label] = boosters
        info[f"{label} s"] = round(time.perf_counter() - t0, 1)
        logger.info("  %-12s %.1f s", label, time.perf_counter() - t0)
    return preds, info


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="one seed per random split")
    parser.add_argument("--only", help="split groups whose name contains this text (comma: any of)")
    parser.add_argument("--bootstrap", type=int, default=200)
    parser.add_argument("--out", default=str(bq.RESULTS / "quality_rounds"))
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    threadpool_limits(bq.N_JOBS)
    t_start = time.perf_counter()
    machine = machine_info()
    feats = bq.Features(REPO / ".cache" / "embeddings.sqlite", REPO / ".cache" / "onnx")
    wanted = [w.strip() for w in args.only.split(",")] if args.only else []
    splits = [s for s in bq.build_splits(args.quick) if not wanted or any(w in s.group for w in wanted)]
    draws: dict[str, list[dict[str, dict[str, np.ndarray]]]] = {}
    per_split: list[dict[str, Any]] = []
    for i, sp in enumerate(splits):
        logger.info("[%d/%d] %s %s", i + 1, len(splits), sp.group, sp.name)
        seed = sp.seed
        preds, info = router_predictions(sp, feats, seed)
        metrics = bq.evaluate_split(sp, preds, args.bootstrap, seed)
        draws.setdefault(sp.group, []).append(metrics)
        per_split.append({"group": sp.group, "split": sp.name, **info,
                          "AIQ": {k: round(float(v["AIQ"][0]), 4) for k, v in metrics.items() if k in preds}})  # fmt: skip
    groups: dict[str, Any] = {}
    for group, runs in draws.items():
        mean = {m: {"AIQ": np.mean([r[m]["AIQ"] for r in runs], axis=0)} for m in runs[0] if m in variants(0)}
        groups[group] = {m: bq.summarise(a, mean[DEFAULT])["d_AIQ" if m != DEFAULT else "AIQ"] if m != DEFAULT
                         else bq.summarise(a, None)["AIQ"] for m, a in mean.items()}  # fmt: skip
    result = {
        "machine": machine,
        "command": "python -m bench.quality_rounds" + (" --quick" if args.quick else ""),
        "design": __doc__,
        "runtime_s": round(time.perf_counter() - t_start, 1),
        "groups": groups,
        "splits": per_split,
    }
    out = Path(args.out)
    out.with_suffix(".json").write_text(json.dumps(result, indent=1) + "\n")
    lines = ["| group | AIQ, 800 rounds | 200 − 800 | 2,400 − 800 | cv − 800 |", "|---|---|---|---|---|"]
    for group, g in groups.items():
        cells = [f"{g[m][0]:+.4f} [{g[m][1]:+.4f}, {g[m][2]:+.4f}]" for m in ("fixed 200", "fixed 2400", "cv")]
        lines.append(
            f"| {group} | {g[DEFAULT][0]:.4f} [{g[DEFAULT][1]:.4f}, {g[DEFAULT][2]:.4f}] | " + " | ".join(cells) + " |"
        )
    out.with_suffix(".md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
