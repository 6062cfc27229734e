"""The static embedder: a lookup and a mean, distilled from MiniLM; numpy and tokenizers only."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from router.embedders.factory import backend_of, make_embedder
from router.embedders.static import (
    META_FILE,
    SMALL_BATCH,
    TOKENIZER_FILE,
    VECTORS_FILE,
    StaleStaticFile,
    StaticEmbedder,
)
from training.distill_static import pca_reduce, zipf_sif_weights

REPO = Path(__file__).resolve().parents[2]
ONNX_DIR = REPO / ".cache" / "onnx"
needs_tokenizer = pytest.mark.skipif(
    not (ONNX_DIR / TOKENIZER_FILE).is_file(), reason=f"needs {ONNX_DIR / TOKENIZER_FILE} (make setup)"
)
needs_built = pytest.mark.skipif(
    not (ONNX_DIR / VECTORS_FILE).is_file(), reason=f"needs the distilled files in {ONNX_DIR} (make setup)"
)
TEXTS = ["What is 2+2?", "Prove that there are infinitely many primes.", "Bonjour, comment ça va ?", "x"]


@pytest.fixture
def small_static(tmp_path: Path) -> Path:
    """A static embedder directory with the real tokenizer and random 8-dimensional vectors."""
    shutil.copyfile(ONNX_DIR / TOKENIZER_FILE, tmp_path / TOKENIZER_FILE)
    vocab = json.loads((tmp_path / TOKENIZER_FILE).read_text())["model"]["vocab"]
    rng = np.random.default_rng(0)
    np.save(tmp_path / VECTORS_FILE, rng.normal(size=(len(vocab), 8)).astype(np.float16))
    meta = {"format_version": 1, "teacher": "test/teacher", "recipe": "test-recipe", "dim": 8}
    (tmp_path / META_FILE).write_text(json.dumps(meta))
    return tmp_path


@needs_tokenizer
def test_vectors_are_unit_and_batching_changes_nothing(small_static: Path) -> None:
    emb = StaticEmbedder(small_static)
    out = emb.encode(TEXTS)
    assert out.shape == (len(TEXTS), 8) and out.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(out, axis=1), 1.0, atol=1e-5)
    singles = np.vstack([emb.encode([t]) for t in TEXTS])
    np.testing.assert_array_equal(out, singles)
    assert emb.encode([]).shape == (0, 8)


@needs_tokenizer
def test_the_small_batch_gather_sums_exactly_like_the_sparse_product(small_static: Path) -> None:
    """One /route (a gather) and bulk routing (a sparse product) give the same bits for the same text."""
    emb = StaticEmbedder(small_static)
    rng = np.random.default_rng(2)
    words = ["alpha", "beta", "the", "question", "Prove", "ça", "2+2", "infinitely", "x"]
    texts = [" ".join(rng.choice(words, size=int(n))) for n in rng.integers(1, 400, size=40)] + TEXTS
    assert len(texts) > SMALL_BATCH
    np.testing.assert_array_equal(emb.encode(texts), np.vstack([emb.encode([t]) for t in texts]))


@needs_tokenizer
def test_the_id_names_the_teacher_and_recipe(small_static: Path) -> None:
    emb = StaticEmbedder(small_static)
    assert emb.id == "test/teacher:static+test-recipe"
    assert backend_of(emb.id) == "static"
    assert emb.dim == 8


@needs_tokenizer
def test_another_format_is_refused_with_a_rebuild_hint(small_static: Path) -> None:
    meta = json.loads((small_static / META_FILE).read_text())
    (small_static / META_FILE).write_text(json.dumps({**meta, "format_version": 99}))
    with pytest.raises(StaleStaticFile, match="make setup"):
        StaticEmbedder(small_static).encode(["hello"])


def test_missing_files_tell_how_to_build_them(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="build-embedder"):
        make_embedder("static", onnx_dir=tmp_path)


def test_zipf_sif_weights_damp_frequent_tokens_and_pca_keeps_the_top_components() -> None:
    w = zipf_sif_weights(1000)
    assert (np.diff(w) > 0).all() and 0 < w[0] < w[-1] <= 1
    rng = np.random.default_rng(1)
    X = rng.normal(size=(500, 3)) @ np.diag([10.0, 1.0, 0.1])
    Y = pca_reduce(X, 2)
    assert Y.shape == (500, 2)
    assert Y[:, 0].var() > 50 * Y[:, 1].var() / 10


@needs_built
def test_the_distilled_embedder_knows_paraphrases_from_other_topics() -> None:
    emb = make_embedder("static", onnx_dir=ONNX_DIR)
    a, b, c = emb.encode(
        ["The cat sat on the mat.", "A kitten was sitting on the rug.", "Quarterly revenue grew by five percent."]
    )
    assert a @ b > a @ c + 0.1, (a @ b, a @ c)


@needs_built
def test_encoding_imports_neither_onnxruntime_nor_torch() -> None:
    code = (
        "import sys; from pathlib import Path; from router.embedders.factory import make_embedder; "
        f"make_embedder('static', onnx_dir=Path({str(ONNX_DIR)!r})).encode(['hello world']); "
        "print(sorted(m for m in ('torch', 'onnxruntime', 'transformers') if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=REPO)
    assert out.stdout.strip() == "[]", out.stdout + out.stderr
