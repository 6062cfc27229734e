"""A/B (issue 10): does fine-tuning MiniLM on the outcome log learn the within-task difficulty that the router's
frozen, mean-pooled embedding misses?

`python -m bench.quality_finetune [--only "routerbench 3 tiers,llmrouter_dc,routellm random"] [--seeds 0,1,2]`
takes the splits of bench/quality.py and, per split, fits the router as `make train` does (per-tier boosters on
the shared difficulty, the task prior blended in where the log has categories) and, beside it, two heads trained
on the split's train prompts with every model of the log as a target (bench/finetune_encoder.py): MiniLM's top
layer fine-tuned with mean pooling and a linear head, and an attention pooling + MLP over the frozen last layer.
Both read the router's view of the prompt (its last 700 characters). Methods: the router, the boosters alone, kNN,
the task prior, each head alone, and the router with its boosters averaged with each head (then blended with the
task prior as the router is). AIQ with 200 bootstrap draws over test prompts; groups average their seeds' draws;
Δ is method minus router, paired; within-category ρ as in bench/quality.py (the difficulty part of the signal).
Writes bench/results/quality_finetune.json and .md.
"""

from __future__ import annotations

import argparse
import json
import logging
import time
from typing import Any

import numpy as np
import torch
from threadpoolctl import threadpool_limits

from bench import quality as bq
from bench.common import machine_info
from bench.finetune_encoder import Encoder, FinetunedQuality, TokenStates, subset
from router import evaluate as ev
from router.text import text_window

logger = logging.getLogger("bench.quality_finetune")
HEADS = {"fine-tuned top layer": "top", "attention pooling (frozen)": "attention"}


def split_predictions(
    sp: bq.SplitData, feats: bq.Features, states: TokenStates, encoder: Encoder, seed: int
) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
    """Each method's predicted tier quality on the split's test prompts, and the heads' fit reports."""
    tr, te, Y = sp.train, sp.test, sp.scores
    fitted = bq.fit_shipped_router(sp, feats, seed)
    emb, boosters, blended = fitted.emb, fitted.boosters, fitted.blended

    preds: dict[str, np.ndarray] = {
        "router": blended(boosters),
        bq.BOOSTERS: boosters,
        "kNN (k=25)": ev.knn_predictor(emb[tr], Y[tr])(emb[te]),
    }
    if len(set(sp.categories[tr])) > 1:
        preds["task prior"] = bq.prior_predictor(sp.categories, Y, tr)[te]
    reports: dict[str, Any] = {}
    train_states, test_states = subset(states, np.flatnonzero(tr)), subset(states, np.flatnonzero(te))
    for label, kind in HEADS.items():
        t0 = time.perf_counter()
        head = FinetunedQuality(kind, encoder, seed=seed).fit(train_states, sp.all_scores[tr])  # type: ignore[arg-type]
        quality = head.predict(test_states)[:, sp.tier_cols]
        assert head.report is not None
        reports[label] = {
            "best_epoch": head.report.best_epoch,
            "val_loss": head.report.val_loss,
            "seconds": round(time.perf_counter() - t0, 1),
        }
        logger.info("  %s: %s", label, reports[label])
        preds[label] = quality
        preds[f"router, boosters averaged with the {label}"] = blended(0.5 * boosters + 0.5 * quality)
    return preds, reports


def to_markdown(result: dict[str, Any]) -> str:
    lines = ["# Fine-tuned MiniLM beside the router (bench/quality_finetune.py)", "", str(__doc__).split("\n\n")[1]]
    lines += ["", f"Run: `{result['command']}`, {result['runtime_s'] / 60:.1f} min."]
    for group, rows in result["groups"].items():
        n = result["splits"][group]
        lines += ["", f"## {group} ({n} split{'s' if n > 1 else ''})", ""]
        lines += ["| method | AIQ | Δ vs router [95% CI] | within-category ρ |", "|---|---|---|---|"]
        for name, (aiq, d, lo, hi, rho) in sorted(rows.items(), key=lambda kv: -kv[1][0]):
            shown = "–" if np.isnan(rho) else f"{rho:.3f}"
            lines.append(f"| {name} | {aiq:.4f} | {d:+.4f} [{lo:+.4f}, {hi:+.4f}] | {shown} |")
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=str(__doc__).splitlines()[0])
    parser.add_argument("--only", default="routerbench 3 tiers,llmrouter_dc,routellm random", help="groups (comma)")
    parser.add_argument("--seeds", default="0,1,2", help="seeds of the random splits")
    parser.add_argument("--out", default="quality_finetune", help="file stem under bench/results/")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    threadpool_limits(bq.N_JOBS)
    torch.set_num_threads(2)
    started, machine = time.perf_counter(), machine_info()
    feats = bq.Features(bq.REPO / ".cache" / "embeddings.sqlite", bq.REPO / ".cache" / "onnx")
    encoder = Encoder()
    draws: dict[str, list[dict[str, dict[str, np.ndarray]]]] = {}
    reports: dict[str, Any] = {}
    states_of: dict[int, TokenStates] = {}
    for sp in bq.ab_splits(args.only, args.seeds):
        t0 = time.perf_counter()
        key = hash(tuple(sp.prompts))
        if key not in states_of:
            states_of.clear()  # one dataset's token states in memory at a time
            states_of[key] = encoder.token_states([text_window(p, 700) for p in sp.prompts], layers=1)
            logger.info("%s: token states of %d prompts in %.0f s", sp.group, len(sp.prompts), time.perf_counter() - t0)
        seed = sp.seed
        preds, reports[f"{sp.group} {sp.name}"] = split_predictions(sp, feats, states_of[key], encoder, seed)
        draws.setdefault(sp.group, []).append(bq.evaluate_split(sp, preds, 200, seed))
        for name, row in bq.ab_summary({sp.group: draws[sp.group][-1:]}, with_rho=True)[sp.group].items():
            logger.info("  %-60s AIQ %.4f  Δ %+.4f [%+.4f, %+.4f]  ρ %.3f", name, *row)
        logger.info("%s %s: %.0f s", sp.group, sp.name, time.perf_counter() - t0)
    result = {
        "machine": machine,
        "command": f'python -m bench.quality_finetune --only "{args.only}" --seeds {args.seeds}',
        "runtime_s": round(time.perf_counter() - started, 1),
        "splits": {g: len(s) for g, s in draws.items()},
        "groups": bq.ab_summary(draws, with_rho=True),
        "fits": reports,
    }
    (bq.RESULTS / f"{args.out}.json").write_text(json.dumps(result, indent=1) + "\n")
    (bq.RESULTS / f"{args.out}.md").write_text(to_markdown(result))


if __name__ == "__main__":
    main()
