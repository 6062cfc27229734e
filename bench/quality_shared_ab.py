"""A/B of the shared difficulty designs (issue 10, item 1), as run for the report of 2026-11-25.

`python -m bench.quality_shared_ab rb` (routerbench 3 tiers, seeds 0-2, plus the behaviour prompts' easiness),
`python -m bench.quality_shared_ab dco,rl,rlx` (llmrouter_dc official split minus leaks, routellm random seed 0,
routellm cross-benchmark splits). Methods on the same features (MiniLM int8 tail-700 + text features):
router (DifficultyModel), "B prior" (DifficultyModel on the shared difficulty, easiness="prior", the default),
"A feat" (easiness="feature"), "I shared" (the calibrated easiness alone), task prior, kNN; AIQ with 200
bootstrap draws via bench/quality.py. The pool: the split's train prompts with every model of their log, plus up
to 3,000 prompts of each other shared log (by category, leak-free against the split). Output in
bench/results/shared_difficulty_ab.log. A research script: bench/quality.py holds the same methods as "(e)" rows.
"""

import logging
import sys
import time

import numpy as np
import pandas as pd
from sklearn.linear_model import LogisticRegression
from threadpoolctl import threadpool_limits

from bench import quality as bq
from router.model import DifficultyModel
from router.prompt_structure import structure_features
from router.shared_difficulty import SharedDifficulty
from router.text import normalize_text, text_features
from tests.quality.behaviour_prompts import EASY, HARD

logging.basicConfig(level=logging.WARNING)
threadpool_limits(1)
REPO = bq.REPO
feats = bq.Features(REPO / ".cache/embeddings.sqlite", REPO / ".cache/onnx")
CAP = int(sys.argv[2]) if len(sys.argv) > 2 else 3000
USE_STRUCT = "struct" in sys.argv


def X_of(prompts):
    parts = [feats.view(prompts, "tail700"), text_features(prompts)]
    if USE_STRUCT:
        parts.append(structure_features(prompts))
    return np.hstack(parts)


def stratified(df_prompts, cap, seed=0):
    if len(df_prompts) <= cap:
        return df_prompts
    frac = cap / len(df_prompts)
    return df_prompts.groupby("category", group_keys=False).apply(
        lambda g: g.sample(max(1, round(len(g) * frac)), random_state=seed)
    )


def pool_block(name, exclude_texts, cap):
    log = bq.load_dataset(name)
    wide = log.pivot(index="prompt_id", columns="model", values="score")
    first = log.drop_duplicates("prompt_id").set_index("prompt_id")
    ok = [normalize_text(p) not in exclude_texts for p in first["prompt"]]
    first = first[ok]
    first = stratified(first.reset_index(), cap).set_index("prompt_id")
    return first["prompt"].tolist(), wide.reindex(first.index)


def fit_shared(sp, ds_name, seed):
    """Pool: this split's train prompts with every model of its log + the other datasets (capped, leak-free)."""
    te_texts = {normalize_text(p) for p, t in zip(sp.prompts, sp.test, strict=True) if t}
    tr_idx = np.flatnonzero(sp.train)
    prompts = [sp.prompts[i] for i in tr_idx]
    blocks = [pd.DataFrame(sp.all_scores[tr_idx], columns=[f"{ds_name}:{j}" for j in range(sp.all_scores.shape[1])])]
    # name columns by real model names so shared models link
    blocks[0].columns = sp_models[ds_name]
    for other in ["routerbench_subset", "llmrouter_dc", "routellm_evals"]:
        if other == ds_name or CAP == 0:
            continue
        ps, wide = pool_block(other, te_texts, CAP)
        prompts += ps
        blocks.append(wide.reset_index(drop=True))
    Y = pd.concat(blocks, ignore_index=True)
    Xp = X_of(prompts)
    t = time.time()
    sd = SharedDifficulty(n_jobs=1, random_state=seed).fit(Xp, Y.to_numpy(float), list(Y.columns))
    print(f"   shared fit {len(prompts)} prompts x {Y.shape[1]} models: {time.time() - t:.0f}s", flush=True)
    return sd, len(tr_idx)


def calib(e_tr, Y_tr):
    """per tier logistic y ~ a + b e on train rows"""
    out = []
    for j in range(Y_tr.shape[1]):
        y = Y_tr[:, j]
        lr = LogisticRegression(C=1.0).fit(e_tr[:, None], (y >= 0.5).astype(int), sample_weight=None)
        out.append((lr.intercept_[0], lr.coef_[0, 0]))
    return np.array(out)


def sig(z):
    return 1 / (1 + np.exp(-z))


sp_models = {}


def run(group_filter, ds_name, seeds_limit=3, behaviour=False):
    splits = [s for s in bq.build_splits(quick=False) if s.group == group_filter][:seeds_limit]
    log = bq.load_dataset(ds_name)
    sp_models[ds_name] = list(log.pivot(index="prompt_id", columns="model", values="score").columns)
    draws = {}
    for sp in splits:
        seed = sp.seed
        t0 = time.time()
        X = X_of(sp.prompts)
        Y = sp.scores
        tr, te = sp.train, sp.test
        names = [str(j) for j in range(Y.shape[1])]
        sd, ntr = fit_shared(sp, ds_name, seed)
        e_oof = sd.oof_easiness_[:ntr]
        e_all = sd.predict_easiness(X)
        e_tr_feat = np.zeros(len(X))
        e_tr_feat[tr] = e_oof
        e_tr_feat[te] = e_all[te]
        preds = {}
        m_r = DifficultyModel(n_jobs=1, random_state=seed).fit(X[tr], Y[tr], names)
        preds["router"] = m_r.predict_quality(X[te])
        m_b = DifficultyModel(n_jobs=1, random_state=seed, easiness="prior").fit(
            X[tr], Y[tr], names, shared=sd, train_easiness=e_oof
        )
        preds["B prior"] = m_b.predict_quality(X[te])
        m_a = DifficultyModel(n_jobs=1, random_state=seed, easiness="feature").fit(
            X[tr], Y[tr], names, shared=sd, train_easiness=e_oof
        )
        preds["A feat"] = m_a.predict_quality(X[te])
        ab = np.array(m_b.easiness_calibration_)
        preds["I shared"] = sig(ab[:, 0][None] + ab[:, 1][None] * e_all[te][:, None])
        if len(set(sp.categories[tr])) > 1:
            preds["task prior"] = bq.prior_predictor(sp.categories, Y, tr)[te]
        preds["kNN"] = bq.ev.knn_predictor(X[tr, :384], Y[tr])(X[te, :384])
        m = bq.evaluate_split(sp, preds, 200, seed)
        for k, v in m.items():
            draws.setdefault(k, []).append(v)
        line = {k: round(float(v["AIQ"][0]), 4) for k, v in m.items()}
        rho = {k: round(float(v["within_category_rho"][0]), 3) for k, v in m.items() if "within_category_rho" in v}
        print(f"  {sp.group} {sp.name}: AIQ {line} rho {rho} ({time.time() - t0:.0f}s)", flush=True)
        if behaviour:
            XE, XH = X_of(list(EASY)), X_of(list(HARD))
            eE, eH = sd.predict_easiness(XE), sd.predict_easiness(XH)
            print("   easiness easy", eE.round(2), "\n   easiness hard", eH.round(2))
            cal = np.array(m_b.easiness_calibration_)
            for nm, qe, qh in [
                ("router", m_r.predict_quality(XE), m_r.predict_quality(XH)),
                ("A feat", m_a.predict_quality(XE), m_a.predict_quality(XH)),
                ("B prior", m_b.predict_quality(XE), m_b.predict_quality(XH)),
                ("I shared", sig(cal[:, 0] + cal[:, 1] * eE[:, None]), sig(cal[:, 0] + cal[:, 1] * eH[:, None])),
            ]:
                print(f"   {nm:9s} easy {qe.mean(0).round(3)} hard {qh.mean(0).round(3)}")
    # group summary
    mean = {
        k: {mm: np.mean([r[mm] for r in v], axis=0) for mm in v[0]} for k, v in draws.items() if len(v) == len(splits)
    }
    for k, a in mean.items():
        s = bq.summarise(a, mean["router"] if k != "router" else None)
        print(
            f"  == {group_filter} {k:12s} AIQ {s['AIQ']} dAIQ {s.get('d_AIQ')}"
            + (f" APGR {s.get('APGR_share')}" if "APGR_share" in s else ""),
            flush=True,
        )


for which in sys.argv[1].split(","):
    if which == "rb":
        run("routerbench 3 tiers", "routerbench_subset", behaviour=True)
    if which == "dc":
        run("llmrouter_dc random", "llmrouter_dc", seeds_limit=1)
    if which == "dco":
        run("llmrouter_dc official", "llmrouter_dc")
    if which == "rl":
        run("routellm random", "routellm_evals", seeds_limit=1)
    if which == "rlx":
        for g in ["routellm cross -> mt_bench", "routellm cross -> gsm8k", "routellm cross -> mmlu"]:
            run(g, "routellm_evals")
