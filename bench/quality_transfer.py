"""Cross-log transfer of the shared difficulty's stage 2 (issue 10): does a prompt easiness learned on two logs rank
the third log's prompts? And how does each regressor order the behaviour suite's easy and hard prompts?

For each feature set (embedding + text, + structure, embedding alone, text + structure) and regressor
(LightGBM as in SharedDifficulty, a shallower LightGBM, ridge with alpha 10 and 100): per log, a 1PL IRT easiness
is fitted on up to 3,000 of its prompts (by category); the regressor is trained on the other two logs and scored
on this one by Spearman correlation (overall / inside categories). Then, trained on all three, the gap of mean
predicted easiness between tests/quality/behaviour_prompts EASY and HARD, with twice its standard error.
`python -m bench.quality_transfer` -> bench/results/shared_difficulty_transfer.log (stdout).
"""

import time

import lightgbm as lgb
import numpy as np
from scipy.stats import spearmanr
from sklearn.linear_model import Ridge
from threadpoolctl import threadpool_limits

from bench import quality as bq
from router.boosting import BoostParams
from router.irt import fit_irt
from router.prompt_structure import structure_features
from router.text import normalize_text, text_features
from tests.quality.behaviour_prompts import EASY, HARD
from training.data import stratified_sample

threadpool_limits(1)
REPO = bq.REPO
feats = bq.Features(REPO / ".cache/embeddings.sqlite", REPO / ".cache/onnx")
CAP = 3000
logs = {}
for name in bq.POOL_LOGS:
    log = bq.load_dataset(name)
    first = log.drop_duplicates("prompt_id").set_index("prompt_id")
    first = stratified_sample(first[~first["prompt"].map(normalize_text).duplicated()], CAP, 0)
    wide = log.pivot_table(index="prompt_id", columns="model", values="score", aggfunc="mean").reindex(first.index)
    e, _, c, _ = fit_irt(wide.to_numpy(float), 0, 0.05, 0.01)
    P = first["prompt"].tolist()
    emb = feats.view(P, "tail700")
    logs[name] = {
        "prompts": P,
        "e": e,
        "cat": first["category"].fillna("").astype(str).to_numpy(),
        "emb": emb,
        "tf": text_features(P),
        "st": structure_features(P),
    }
    print(name, len(P), "easiness sd", e.std().round(2), flush=True)
EP, HP = list(EASY), list(HARD)
beh = {"emb": feats.view(EP + HP, "tail700"), "tf": text_features(EP + HP), "st": structure_features(EP + HP)}


def Xof(d, kind):
    if kind == "emb+tf":
        return np.hstack([d["emb"], d["tf"]])
    if kind == "emb+tf+st":
        return np.hstack([d["emb"], d["tf"], d["st"]])
    if kind == "emb":
        return d["emb"]
    if kind == "tf+st":
        return np.hstack([d["tf"], d["st"]])


def lgbm(X, y, **kw):
    p = BoostParams(
        n_estimators=400, learning_rate=0.04, num_leaves=8, min_child_samples=20, colsample_bytree=0.3, n_jobs=1
    )
    for k, v in kw.items():
        setattr(p, k, v)
    b = lgb.train(p.lgb_params("regression"), lgb.Dataset(X, label=y), num_boost_round=p.n_estimators)
    return b.predict


def ridge(X, y, alpha=10.0):
    m = Ridge(alpha=alpha).fit(X, y)
    return m.predict


REGS = {
    "lgbm": lgbm,
    "ridge a=10": ridge,
    "ridge a=100": lambda X, y: ridge(X, y, 100.0),
    "lgbm shallow": lambda X, y: lgbm(X, y, num_leaves=4, n_estimators=300),
}


def within(pred, e, cat):
    tot, w = 0.0, 0
    for c in np.unique(cat):
        m = cat == c
        if m.sum() < 30:
            continue
        tot += spearmanr(pred[m], e[m])[0] * m.sum()
        w += m.sum()
    return tot / w


for kind in ["emb+tf", "emb+tf+st", "emb", "tf+st"]:
    for rname, reg in REGS.items():
        t = time.time()
        row = []
        for held in bq.POOL_LOGS:
            others = [n for n in bq.POOL_LOGS if n != held]
            X = np.vstack([Xof(logs[n], kind) for n in others])
            y = np.concatenate([logs[n]["e"] for n in others])
            f = reg(X, y)
            pred = f(Xof(logs[held], kind))
            row.append((spearmanr(pred, logs[held]["e"])[0], within(pred, logs[held]["e"], logs[held]["cat"])))
        # all three -> behaviour
        X = np.vstack([Xof(logs[n], kind) for n in bq.POOL_LOGS])
        y = np.concatenate([logs[n]["e"] for n in bq.POOL_LOGS])
        pb = reg(X, y)(Xof(beh, kind))
        pe, ph = pb[: len(EP)], pb[len(EP) :]
        gap = pe.mean() - ph.mean()
        se = np.sqrt(pe.var(ddof=1) / len(pe) + ph.var(ddof=1) / len(ph))
        print(
            f"{kind:10s} {rname:12s} transfer rho (all, within) "
            + " ".join(f"{h[:8]}:{a:.3f}/{w:.3f}" for h, (a, w) in zip(bq.POOL_LOGS, row, strict=True))
            + f" | mean all {np.mean([a for a, _ in row]):.3f} within {np.mean([w for _, w in row]):.3f} | behaviour gap {gap:.2f} (2se {2 * se:.2f}) [{time.time() - t:.0f}s]",
            flush=True,
        )
