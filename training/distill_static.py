"""Distil the bundled MiniLM into a static embedder (Model2Vec's recipe), from the fp32 ONNX file `make setup` builds.

Every vocabulary token goes through the teacher as `[CLS] token [SEP]`; its pooled output is that token's vector.
PCA keeps `dims` components and Zipf-SIF weights (a / (a + p(rank))) damp the frequent tokens, as Model2Vec does.
Hand-written rather than `model2vec.distill`: that needs transformers < 5.4 beside torch, i.e. a second
environment, while this runs on the ONNX Runtime session the project already has (about a minute on 2 cores).
`tierwise build-embedder` runs it (`build_static`), beside the ONNX files in the cache dir's onnx/.
"""

from __future__ import annotations

import json
import logging
import shutil
from pathlib import Path

import numpy as np
from tokenizers import Tokenizer

from router.embedders.onnx import load_onnxruntime
from router.embedders.protocol import MINILM_ID
from router.embedders.static import FORMAT_VERSION, META_FILE, TOKENIZER_FILE, VECTORS_FILE

logger = logging.getLogger(__name__)

SIF_COEFFICIENT = 1e-4


FITTED_RECIPE_PREFIX = "m2v-zipf-fit-"
"""Recipes of builds fitted to the teacher on a corpus (training/fit_static.py); `make setup` keeps them."""


def recipe_name(dims: int) -> str:
    """The recipe, named in the embedder id so vectors of different builds never mix."""
    return f"m2v-pca{dims}-zipf"


def teacher_token_vectors(onnx_file: Path, tokenizer: Tokenizer, batch_size: int = 2048) -> np.ndarray:
    """(vocab, 384) pooled teacher outputs, one per vocabulary token."""
    ort = load_onnxruntime()
    options = ort.SessionOptions()
    options.intra_op_num_threads = 0
    session = ort.InferenceSession(str(onnx_file), sess_options=options, providers=["CPUExecutionProvider"])
    cls, sep = tokenizer.token_to_id("[CLS]"), tokenizer.token_to_id("[SEP]")
    vocab = tokenizer.get_vocab_size()
    out = []
    for start in range(0, vocab, batch_size):
        ids = np.arange(start, min(start + batch_size, vocab), dtype=np.int64)
        batch = np.stack([np.full_like(ids, cls), ids, np.full_like(ids, sep)], axis=1)
        out.append(session.run(None, {"input_ids": batch, "attention_mask": np.ones_like(batch)})[0])
    return np.asarray(np.concatenate(out), dtype=np.float32)


def pca_reduce(X: np.ndarray, dims: int) -> np.ndarray:
    """Project onto the top `dims` principal components (centred)."""
    Xc = np.asarray(X - X.mean(axis=0), dtype=np.float32)
    if dims >= X.shape[1]:
        return Xc
    eigvals, eigvecs = np.linalg.eigh(Xc.T @ Xc / (len(Xc) - 1))
    top = eigvecs[:, np.argsort(eigvals)[::-1][:dims]]
    return np.asarray(Xc @ top, dtype=np.float32)


def zipf_sif_weights(n: int, coefficient: float = SIF_COEFFICIENT) -> np.ndarray:
    """Model2Vec's token weights: token rank stands in for frequency (Zipf), then SIF."""
    inv_rank = 1.0 / np.arange(2, n + 2)
    proba = inv_rank / inv_rank.sum()
    return np.asarray(coefficient / (coefficient + proba), dtype=np.float32)


def distill(onnx_dir: Path, out: Path, dims: int = 256) -> Path:
    """Build the static embedder's files under `out`; returns `out`."""
    tokenizer_file = onnx_dir / TOKENIZER_FILE
    tokenizer = Tokenizer.from_file(str(tokenizer_file))
    logger.info("distilling %d vocabulary tokens through the fp32 teacher", tokenizer.get_vocab_size())
    vectors = pca_reduce(teacher_token_vectors(onnx_dir / "minilm-fp32.onnx", tokenizer), dims)
    vectors *= zipf_sif_weights(len(vectors))[:, None]
    out.mkdir(parents=True, exist_ok=True)
    np.save(out / VECTORS_FILE, vectors.astype(np.float16))
    if (out / TOKENIZER_FILE).resolve() != tokenizer_file.resolve():
        shutil.copyfile(tokenizer_file, out / TOKENIZER_FILE)
    meta = {"format_version": FORMAT_VERSION, "teacher": MINILM_ID, "recipe": recipe_name(dims), "dim": dims}
    (out / META_FILE).write_text(json.dumps(meta, indent=1))
    logger.info("static embedder: %s (%.1f MB)", out, (out / VECTORS_FILE).stat().st_size / 1e6)
    return out


def build_static(onnx_dir: Path, dims: int = 256, force: bool = False) -> Path:
    """Distil into `onnx_dir` beside the ONNX files, unless a build of this recipe newer than the teacher is there.

    A build fitted to the teacher on a corpus (`tierwise build-embedder --fit-on`) counts as up to date too: only
    `force` replaces it with the plain distillation.
    """
    vectors, meta_file = onnx_dir / VECTORS_FILE, onnx_dir / META_FILE
    teacher = onnx_dir / "minilm-fp32.onnx"
    meta = json.loads(meta_file.read_text()) if vectors.exists() and meta_file.exists() else {}
    recipe = str(meta.get("recipe", ""))
    fresh = (
        bool(meta)
        and vectors.stat().st_mtime > teacher.stat().st_mtime
        and (recipe == recipe_name(dims) or recipe.startswith(FITTED_RECIPE_PREFIX))
        and meta.get("format_version") == FORMAT_VERSION
    )
    if fresh and not force:
        kind = "fitted to the teacher on a corpus" if recipe.startswith(FITTED_RECIPE_PREFIX) else "distilled"
        logger.info("static embedder in %s is up to date (%s)", onnx_dir, kind)
        return vectors
    distill(onnx_dir, onnx_dir, dims)
    return vectors
