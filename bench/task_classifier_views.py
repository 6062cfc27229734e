"""Would a better task classifier close the router's gap to the task-label prior? (issue 10, llmrouter_dc)

    python -m bench.task_classifier_views      # ~2 min with the int8 embeddings cached

The router guesses each prompt's task (router/task_classifier.py: logistic regression on its own features, MiniLM
int8 tail-700 + text features) where the task-label prior reads the true one; given the true task as a hint the
router is within 0.003 AIQ of the prior. This measures whether the guess can get better from the text itself:
the shipped classifier against TF-IDF word (1-2) and character (2-5) n-grams, and both together, on
llmrouter_dc's own split (train minus the texts that occur in test) and routellm_evals' random splits (MMLU's
57 subjects, GSM8K, MT-Bench). Reports accuracy and the most frequent confusions.
Writes bench/results/task_classifier_views.json.
"""

from __future__ import annotations

import logging
from collections import Counter
from typing import Any

import numpy as np
import scipy.sparse as sp
from sklearn.feature_extraction.text import TfidfVectorizer
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import make_union

from bench.common import ONNX_DIR, REPO, machine_info, write_json
from bench.quality import Features, SplitData, build_splits
from router.task_classifier import TaskClassifier
from router.task_hint import MIN_PROMPTS as MIN_CATEGORY_PROMPTS
from router.text import text_features

logger = logging.getLogger("bench.task_classifier_views")
GROUPS = ("llmrouter_dc official", "routellm random")


def _tfidf() -> Any:
    words = TfidfVectorizer(ngram_range=(1, 2), min_df=2, sublinear_tf=True)
    chars = TfidfVectorizer(analyzer="char_wb", ngram_range=(2, 5), min_df=2, sublinear_tf=True, max_features=200_000)
    return make_union(words, chars)


def guesses(sp_: SplitData, feats: Features) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """The test prompts' true tasks and each classifier's guesses (tasks with enough train prompts only)."""
    cats = sp_.categories
    counts = Counter(cats[sp_.train])
    known = np.array([counts[c] >= MIN_CATEGORY_PROMPTS for c in cats])
    tr, te = sp_.train & known, sp_.test & known
    X = np.hstack([feats.view(sp_.prompts, "tail700"), text_features(sp_.prompts)])
    shipped = TaskClassifier.fit(X[tr], cats[tr])
    out = {"shipped (MiniLM int8 + text features)": np.asarray(shipped.labels)[shipped.proba(X[te]).argmax(1)]}
    vec = _tfidf()
    T_tr = vec.fit_transform([p for p, t in zip(sp_.prompts, tr, strict=True) if t])
    T_te = vec.transform([p for p, t in zip(sp_.prompts, te, strict=True) if t])
    out["TF-IDF word 1-2 + char 2-5 n-grams"] = (
        LogisticRegression(C=10, max_iter=1000).fit(T_tr, cats[tr]).predict(T_te)
    )
    mean, scale = X[tr].mean(0), X[tr].std(0) + 1e-12
    both_tr = sp.hstack([T_tr, sp.csr_matrix((X[tr] - mean) / scale * 0.1)]).tocsr()
    both_te = sp.hstack([T_te, sp.csr_matrix((X[te] - mean) / scale * 0.1)]).tocsr()
    out["both"] = LogisticRegression(C=10, max_iter=1000).fit(both_tr, cats[tr]).predict(both_te)
    return cats[te], out


def main() -> None:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    feats = Features(REPO / ".cache" / "embeddings.sqlite", ONNX_DIR)
    report: dict[str, Any] = {"machine": machine_info(), "splits": []}
    for sp_ in build_splits(False):
        if not any(g in sp_.group for g in GROUPS):
            continue
        truth, by = guesses(sp_, feats)
        rec: dict[str, Any] = {"group": sp_.group, "split": sp_.name, "n_test": len(truth), "tasks": len(set(truth))}
        for name, guess in by.items():
            wrong = Counter((t, g) for t, g in zip(truth, guess, strict=True) if t != g)
            rec[name] = {
                "accuracy": round(float((guess == truth).mean()), 3),
                "top_confusions": [f"{t} -> {g}: {n}" for (t, g), n in wrong.most_common(6)],
            }
            logger.info("%s %s %-40s accuracy %.3f", sp_.group, sp_.name, name, rec[name]["accuracy"])
        report["splits"].append(rec)
    write_json(REPO / "bench" / "results" / "task_classifier_views.json", report)


if __name__ == "__main__":
    main()
