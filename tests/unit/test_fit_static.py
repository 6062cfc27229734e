"""Fitting the static embedder to its teacher on a corpus (`tierwise build-embedder --fit-on`)."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import numpy as np
import pytest
import scipy.sparse as sp
from scipy.stats import spearmanr
from typer.testing import CliRunner

from router.embedders.factory import make_embedder
from router.embedders.static import META_FILE, TOKENIZER_FILE, VECTORS_FILE, StaticEmbedder
from training import distill_static
from training.cli import app
from training.fit_static import (
    MIN_PROMPTS,
    bag_of_pieces,
    corpus_digest,
    corpus_texts,
    fitted_recipe,
    ridge_to_teacher,
    static_tokenizer,
)

REPO = Path(__file__).resolve().parents[2]
ONNX_DIR = REPO / ".cache" / "onnx"
needs_built = pytest.mark.skipif(
    not all((ONNX_DIR / f).is_file() for f in ("minilm-fp32.onnx", "minilm-int8.onnx", VECTORS_FILE, TOKENIZER_FILE)),
    reason=f"needs the built embedders in {ONNX_DIR} (make setup)",
)


def _synthetic(seed: int = 0) -> tuple[sp.csr_matrix, np.ndarray, np.ndarray, np.ndarray]:
    """100 texts over a 60-piece vocabulary whose last 10 pieces never occur; teacher = B @ W_true."""
    rng = np.random.default_rng(seed)
    counts = rng.poisson(1.0, size=(100, 60)).astype(float)
    counts[:, 50:] = 0
    counts[counts.sum(1) == 0, 0] = 1
    B = sp.csr_matrix(counts / counts.sum(1, keepdims=True))
    W_true, W0 = rng.normal(size=(60, 4)), rng.normal(size=(60, 4))
    return B, np.asarray(B @ W_true), W_true, W0


def test_the_ridge_fits_the_teacher_and_leaves_unseen_pieces_at_their_distilled_vector() -> None:
    B, T, _, W0 = _synthetic()
    W = ridge_to_teacher(B, T, W0, alpha=1e-6, iterations=200)
    BW0 = B @ W0
    scale = float((BW0 * T).sum() / (BW0**2).sum())
    before = np.linalg.norm(BW0 * scale - T)
    after = np.linalg.norm(B @ W - T)
    assert after < 0.05 * before, (after, before)
    # Pieces the corpus never shows get no gradient: they stay the (rescaled) distilled vectors.
    np.testing.assert_allclose(W[50:], W0[50:] * scale, rtol=1e-5)


def test_a_strong_ridge_stays_at_the_distilled_vectors() -> None:
    B, T, _, W0 = _synthetic(1)
    W = ridge_to_teacher(B, T, W0, alpha=1e6, iterations=60)
    BW0 = B @ W0
    scale = float((BW0 * T).sum() / (BW0**2).sum())
    np.testing.assert_allclose(W, W0 * scale, atol=1e-3)


@pytest.mark.skipif(not (ONNX_DIR / TOKENIZER_FILE).is_file(), reason=f"needs {ONNX_DIR / TOKENIZER_FILE} (make setup)")
def test_a_bag_of_pieces_is_each_texts_mean_over_at_most_512_pieces() -> None:
    tok = static_tokenizer(ONNX_DIR)
    alpha, omega = tok.token_to_id("alpha"), tok.token_to_id("omega")
    long = " ".join(["alpha"] * 512 + ["omega"] * 100)  # the 100 pieces past 512 are cut, as StaticEmbedder cuts them
    B = bag_of_pieces(tok, ["alpha omega omega omega", long, ""])
    np.testing.assert_allclose(np.asarray(B.sum(axis=1)).ravel(), [1.0, 1.0, 0.0])
    assert B[0, alpha] == pytest.approx(0.25) and B[0, omega] == pytest.approx(0.75)
    assert B[1, alpha] == pytest.approx(1.0) and B[1, omega] == 0


def test_the_corpus_is_named_by_its_distinct_texts_and_must_be_large_enough() -> None:
    a = [f"prompt {i}" for i in range(MIN_PROMPTS)]
    assert corpus_digest(a) == corpus_digest(list(reversed(a)) + a[:3])
    assert corpus_digest(a) != corpus_digest([*a[:-1], "another prompt"])
    assert fitted_recipe(corpus_digest(a)).startswith(distill_static.FITTED_RECIPE_PREFIX)
    with pytest.raises(ValueError, match=f"at least {MIN_PROMPTS} distinct prompts, got 3"):
        corpus_texts(["a", "b", "c", "a", "  "])
    assert corpus_texts(a) == sorted(a)
    windowed = corpus_texts(["x" * 900 + "tail"] * 2 + a, tail_chars=700)  # as the features embed it, once
    assert len(windowed) == len(a) + 1 and "x" * 696 + "tail" in windowed


def test_a_large_corpus_is_sampled_the_same_whatever_its_order() -> None:
    texts = [f"prompt number {i}" for i in range(3 * MIN_PROMPTS)]
    rng = np.random.default_rng(0)
    shuffled = [texts[i] for i in rng.permutation(len(texts))] + texts[:10]  # and some repeats
    a = corpus_texts(iter(texts), max_prompts=MIN_PROMPTS)
    b = corpus_texts(iter(shuffled), max_prompts=MIN_PROMPTS)
    assert a == b and len(a) == MIN_PROMPTS and set(a) <= set(texts)
    assert corpus_texts(iter(texts), max_prompts=10 * MIN_PROMPTS) == sorted(texts)


def _fake_build(tmp_path: Path, recipe: str) -> Path:
    """A directory whose static build (of `recipe`) is newer than its (fake) teacher."""
    (tmp_path / "minilm-fp32.onnx").write_bytes(b"not a model")
    old = (tmp_path / "minilm-fp32.onnx").stat().st_mtime - 60
    os.utime(tmp_path / "minilm-fp32.onnx", (old, old))
    np.save(tmp_path / VECTORS_FILE, np.zeros((3, 2), dtype=np.float16))
    meta = {"format_version": 1, "teacher": "t", "recipe": recipe, "dim": 2}
    (tmp_path / META_FILE).write_text(json.dumps(meta))
    return tmp_path


def test_setup_keeps_a_fitted_build_and_force_replaces_it(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[Path] = []
    monkeypatch.setattr(distill_static, "distill", lambda onnx_dir, out, dims=256: calls.append(out) or out)
    d = _fake_build(tmp_path, fitted_recipe("0123456789ab"))
    distill_static.build_static(d)
    assert calls == []
    distill_static.build_static(d, force=True)
    assert calls == [d]
    # An unknown recipe (another build's) is rebuilt without force.
    calls.clear()
    distill_static.build_static(_fake_build(tmp_path, "m2v-pca64-zipf"))
    assert calls == [d]


def _corpus(n: int, seed: int) -> list[str]:
    """Prompts of a few everyday kinds with varied fillers (the teacher tells the kinds apart)."""
    rng = np.random.default_rng(seed)
    things = ["apples", "train tickets", "invoices", "bicycles", "coffee beans", "hotel rooms", "shares", "books"]
    langs = ["French", "German", "Spanish", "Italian", "Japanese"]
    code = ["reverse a linked list", "parse a CSV file", "merge two sorted arrays", "validate an email address"]
    topics = ["the French revolution", "photosynthesis", "black holes", "the stock market", "vaccines"]
    kinds = [
        lambda: f"If I buy {rng.integers(2, 50)} {rng.choice(things)} at ${rng.integers(1, 90)} each, what do I pay?",
        lambda: f"Translate into {rng.choice(langs)}: 'Where is the {rng.choice(['station', 'museum', 'bank'])}?'",
        lambda: f"Write a Python function to {rng.choice(code)} and explain its complexity.",
        lambda: f"Summarise in one sentence what we know about {rng.choice(topics)}.",
        lambda: f"Prove that the sum of the first {rng.integers(3, 99)} odd numbers is a perfect square.",
    ]
    return [kinds[i % len(kinds)]() + f" (request {seed}-{i})" for i in range(n)]


def _agreement(E: np.ndarray, T: np.ndarray) -> float:
    """Spearman correlation of the pairwise cosines of two embeddings of the same texts."""
    iu = np.triu_indices(len(E), 1)
    return float(spearmanr((E @ E.T)[iu], (T @ T.T)[iu]).statistic)


@needs_built
def test_build_embedder_fit_on_brings_the_static_embedder_closer_to_the_teacher(tmp_path: Path) -> None:
    out = tmp_path / "onnx"
    out.mkdir()
    for name in ("minilm-fp32.onnx", "minilm-int8.onnx"):
        (out / name).symlink_to(ONNX_DIR / name)
    for name in (TOKENIZER_FILE, VECTORS_FILE, META_FILE):
        shutil.copyfile(ONNX_DIR / name, out / name)
    plain = StaticEmbedder(out)
    plain_id = plain.id
    held = _corpus(60, seed=2)  # prompts the fit never sees
    plain_held = plain.encode(held)
    corpus = tmp_path / "corpus.jsonl"
    corpus.write_text("".join(json.dumps({"prompt": p}) + "\n" for p in _corpus(400, seed=1)))
    env = {"TIERWISE_CACHE_DIR": str(tmp_path / "cache")}
    res = CliRunner().invoke(app, ["build-embedder", "--out", str(out), "--fit-on", str(corpus)], env=env)
    assert res.exit_code == 0, res.output
    assert "fitted on 400 prompts" in res.output
    fitted = StaticEmbedder(out)
    assert fitted.id != plain_id and fitted.dim == 384
    # On the held-out prompts the fitted embedder's similarities follow the teacher's more closely.
    teacher = make_embedder("onnx-int8", onnx_dir=out).encode(held)
    before = _agreement(plain_held, teacher)
    after = _agreement(fitted.encode(held), teacher)
    assert after > before + 0.15, (before, after)  # measured +0.30 to +0.39 over 4 corpus seeds
    # make setup (build-embedder without --fit-on) keeps the fitted build.
    assert CliRunner().invoke(app, ["build-embedder", "--out", str(out)], env=env).exit_code == 0
    assert StaticEmbedder(out).id == fitted.id


@needs_built
def test_a_bad_corpus_fails_with_one_line_naming_it(tmp_path: Path) -> None:
    missing = tmp_path / "nope.jsonl"
    res = CliRunner().invoke(app, ["build-embedder", "--out", str(tmp_path), "--fit-on", str(missing)])
    assert res.exit_code == 2 and "--fit-on" in res.output and "nope.jsonl" in res.output, res.output
    small = tmp_path / "small.jsonl"
    small.write_text('{"prompt": "a"}\n{"prompt": "b"}\n')
    res = CliRunner().invoke(app, ["build-embedder", "--out", str(tmp_path), "--fit-on", str(small)])
    assert res.exit_code == 2 and f"at least {MIN_PROMPTS} distinct prompts, got 2" in res.output, res.output
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"prompt": "fine"}\n{"text": "no prompt"}\n')
    res = CliRunner().invoke(app, ["build-embedder", "--out", str(tmp_path), "--fit-on", str(bad)])
    assert res.exit_code == 2 and "bad.jsonl" in res.output and "row 2" in res.output, res.output
    assert not (tmp_path / "minilm-fp32.onnx").exists()  # failed before building anything
