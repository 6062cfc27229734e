"""A/B (issue 10, item 3, "better views"): does a bag of words and character n-grams see task difficulty that the
router's MiniLM and text features miss?

`python -m bench.quality_tfidf [--only "routerbench 3 tiers,llmrouter_dc"] [--seeds 0,1,2]` takes the splits of
bench/quality.py and, per split, fits the router as `make train` does (per-tier boosters on the shared difficulty,
the task prior blended in where the log has categories) and, beside it, a per-tier ridge regression on TF-IDF word
(1-2) and character (2-5) n-grams of the train prompts. Methods: the router, the TF-IDF ridge alone, the router's
blend fed the average of boosters and ridge, and stacking (router/stacking.py, 3-fold out-of-fold) of the
boosters, kNN and task prior with and without the ridge. AIQ with 200 bootstrap draws over test prompts; groups
average their seeds' draws; Δ is method minus router, paired. Writes bench/results/quality_tfidf.json and .md.
"""

from __future__ import annotations

import argparse
import json
import logging
import time
from typing import Any

import numpy as np
from scipy import sparse
from sklearn.feature_extraction.text import TfidfVectorizer
from sklearn.linear_model import Ridge
from threadpoolctl import threadpool_limits

from bench import quality as bq
from bench.common import machine_info
from router import evaluate as ev
from router.stacking import StackedQuality, out_of_fold

logger = logging.getLogger("bench.quality_tfidf")
RIDGE_ALPHA = 3.0


def tfidf_ridge(fit_prompts: list[str], Y: np.ndarray, predict_prompts: list[str]) -> np.ndarray:
    """Per tier, a ridge regression of the score on TF-IDF word and character n-grams; predictions clipped to
    [0.01, 0.99] (as a probability for stacking's logits)."""
    words = TfidfVectorizer(ngram_range=(1, 2), min_df=2, sublinear_tf=True, max_features=100_000)
    chars = TfidfVectorizer(analyzer="char_wb", ngram_range=(2, 5), min_df=3, sublinear_tf=True, max_features=100_000)
    X_fit = sparse.hstack([words.fit_transform(fit_prompts), chars.fit_transform(fit_prompts)]).tocsr()
    X_pred = sparse.hstack([words.transform(predict_prompts), chars.transform(predict_prompts)]).tocsr()
    out = np.zeros((len(predict_prompts), Y.shape[1]))
    for j in range(Y.shape[1]):
        have = np.isfinite(Y[:, j])
        out[:, j] = Ridge(alpha=RIDGE_ALPHA, solver="sparse_cg").fit(X_fit[have], Y[have, j]).predict(X_pred)
    return np.clip(out, 0.01, 0.99)


def split_predictions(sp: bq.SplitData, feats: bq.Features, seed: int) -> dict[str, np.ndarray]:
    """Each method's predicted tier quality on the split's test prompts."""
    tr, te, Y = sp.train, sp.test, sp.scores
    fitted = bq.fit_shipped_router(sp, feats, seed)
    emb, boosters, oof, blended = fitted.emb, fitted.boosters, fitted.oof, fitted.blended
    train_prompts = [sp.prompts[i] for i in np.flatnonzero(tr)]
    test_prompts = [sp.prompts[i] for i in np.flatnonzero(te)]
    ridge = tfidf_ridge(train_prompts, Y[tr], test_prompts)
    oof["tfidf"] = out_of_fold(
        lambda f, h: tfidf_ridge([train_prompts[i] for i in f], Y[tr][f], [train_prompts[i] for i in h]),
        len(train_prompts),
        3,
        seed,
    )

    bases = {
        "boosters": boosters,
        "kNN": ev.knn_predictor(emb[tr], Y[tr])(emb[te]),
        "prior": bq.prior_predictor(sp.categories, Y, tr)[te],
        "tfidf": ridge,
    }
    preds = {
        "router": blended(boosters),
        "TF-IDF ridge": ridge,
        "router, boosters averaged with the ridge": blended(0.5 * boosters + 0.5 * ridge),
        "kNN (k=25)": bases["kNN"],
    }
    combos: list[tuple[str, ...]] = [("boosters", "kNN"), ("boosters", "kNN", "tfidf")]
    if len(set(sp.categories[tr])) > 1:
        preds["task prior"] = bases["prior"]
        combos += [("boosters", "kNN", "prior"), ("boosters", "kNN", "prior", "tfidf")]
    for combo in combos:
        meta = StackedQuality().fit([oof[b] for b in combo], Y[tr])
        preds["stacking " + " + ".join(combo)] = meta.predict_quality([bases[b] for b in combo])
    return preds


def to_markdown(result: dict[str, Any]) -> str:
    lines = ["# TF-IDF n-grams beside the router (bench/quality_tfidf.py)", "", str(__doc__).split("\n\n")[1], ""]
    lines.append(f"Run: `{result['command']}`, {result['runtime_s'] / 60:.1f} min.")
    for group, rows in result["groups"].items():
        n = result["splits"][group]
        lines += ["", f"## {group} ({n} split{'s' if n > 1 else ''})", "", "| method | AIQ | Δ vs router [95% CI] |"]
        lines.append("|---|---|---|")
        for name, (aiq, d, lo, hi) in sorted(rows.items(), key=lambda kv: -kv[1][0]):
            lines.append(f"| {name} | {aiq:.4f} | {d:+.4f} [{lo:+.4f}, {hi:+.4f}] |")
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=str(__doc__).splitlines()[0])
    parser.add_argument("--only", default="routerbench 3 tiers,llmrouter_dc,routellm", help="split groups (comma)")
    parser.add_argument("--seeds", default="0,1,2", help="seeds of the random splits")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    threadpool_limits(bq.N_JOBS)
    started, machine = time.perf_counter(), machine_info()
    feats = bq.Features(bq.REPO / ".cache" / "embeddings.sqlite", bq.REPO / ".cache" / "onnx")
    draws: dict[str, list[dict[str, dict[str, np.ndarray]]]] = {}
    for sp in bq.ab_splits(args.only, args.seeds):
        t0 = time.perf_counter()
        seed = sp.seed
        metrics = bq.evaluate_split(sp, split_predictions(sp, feats, seed), 200, seed)
        draws.setdefault(sp.group, []).append(metrics)
        logger.info("%s %s: %.0f s", sp.group, sp.name, time.perf_counter() - t0)
    result = {
        "machine": machine,
        "command": f'python -m bench.quality_tfidf --only "{args.only}" --seeds {args.seeds}',
        "runtime_s": round(time.perf_counter() - started, 1),
        "splits": {g: len(s) for g, s in draws.items()},
        "groups": bq.ab_summary(draws),
    }
    (bq.RESULTS / "quality_tfidf.json").write_text(json.dumps(result, indent=1) + "\n")
    (bq.RESULTS / "quality_tfidf.md").write_text(to_markdown(result))


if __name__ == "__main__":
    main()
