"""The ONNX embedders: shape, norm, determinism, batch invariance, closeness to torch, no torch import."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from router.embedders.factory import backend_of, make_embedder
from router.embedders.onnx import INT8_RECIPE, OnnxEmbedder, StaleOnnxFile
from router.embedders.protocol import EMBEDDING_DIM
from router.embedders.torch import SentenceTransformerEmbedder, minilm_path

REPO = Path(__file__).resolve().parents[2]
ONNX_DIR = REPO / ".cache" / "onnx"
BACKENDS = ["onnx-fp32", "onnx-int8"]
MIN_COSINE_TO_TORCH = {"onnx-fp32": 0.999, "onnx-int8": 0.99}

LONG = " ".join(
    f"Step {i}: the train leaves the station at {i} o'clock and travels {3 * i} miles north." for i in range(40)
)
PROMPTS = [
    "What is the capital of France?",
    "Write a Python function that returns the n-th Fibonacci number using memoization.",
    "Solve for x: 3x + 7 = 22. Show your work.",
    "Translate into German: The weather is lovely today, let's go for a walk by the river.",
    "Question: Which gas do plants absorb from the atmosphere? A) Oxygen B) Nitrogen C) Carbon dioxide D) Helium",
    "def add(a, b):\n    return a + b\n# What does add(2, 3) return?",
    "Summarise the plot of Hamlet in two sentences.",
    "hi",
    LONG,
]


@pytest.fixture(scope="session")
def onnx_dir() -> Path:
    """Build the ONNX files into .cache/onnx once (export_onnx skips when they are up to date)."""
    try:
        from training.onnx_export import export_onnx

        export_onnx(ONNX_DIR)
    except ImportError as exc:
        pytest.skip(f"ONNX files not built and the exporter can't run here ({exc}); run `make setup`")
    return ONNX_DIR


@pytest.fixture(scope="session", params=BACKENDS)
def onnx_embedder(request: pytest.FixtureRequest, onnx_dir: Path) -> OnnxEmbedder:
    embedder = make_embedder(request.param, onnx_dir=onnx_dir)
    assert isinstance(embedder, OnnxEmbedder)
    return embedder


@pytest.fixture(scope="session")
def torch_vectors() -> np.ndarray:
    return SentenceTransformerEmbedder(num_threads=1).encode(PROMPTS)


def test_id_names_the_backend(onnx_embedder: OnnxEmbedder) -> None:
    suffix = f"onnx-int8+{INT8_RECIPE}" if onnx_embedder.quantized else "onnx-fp32"
    assert onnx_embedder.id == f"sentence-transformers/all-MiniLM-L6-v2:{suffix}"
    assert backend_of(onnx_embedder.id) == ("onnx-int8" if onnx_embedder.quantized else "onnx-fp32")


def test_int8_file_records_its_recipe_and_keeps_the_ffn_outputs_in_fp32(onnx_dir: Path) -> None:
    import onnx

    from training.onnx_export import ffn_output_matmuls, int8_recipe

    int8 = onnx_dir / "minilm-int8.onnx"
    assert int8_recipe(int8) == INT8_RECIPE
    nodes = onnx.load(str(int8), load_external_data=False).graph.node
    float_matmuls = {n.name for n in nodes if n.op_type == "MatMul"}
    assert set(ffn_output_matmuls(onnx_dir / "minilm-fp32.onnx")) <= float_matmuls
    assert sum(n.op_type == "MatMulInteger" for n in nodes) == 30  # 6 layers x (Q, K, V, attention out, FFN in)


def test_an_int8_file_from_another_recipe_is_refused_and_rebuilt(onnx_dir: Path, tmp_path: Path) -> None:
    """A .cache/onnx left by an older tierwise: serving refuses it, and the exporter does not take it as fresh."""
    from training.onnx_export import _is_fresh

    stale = tmp_path / "minilm-int8.onnx"
    shutil.copyfile(onnx_dir / "minilm-fp32.onnx", stale)  # a file without our recipe in its metadata
    with pytest.raises(StaleOnnxFile, match="make setup"):
        OnnxEmbedder(stale, onnx_dir / "tokenizer.json", quantized=True).encode(["x"])
    weights = minilm_path() / "model.safetensors"  # the copy is newer than these: only the recipe makes it stale
    assert not _is_fresh([stale], weights, stale)


def test_vectors_are_unit_float32(onnx_embedder: OnnxEmbedder) -> None:
    out = onnx_embedder.encode(PROMPTS)
    assert out.shape == (len(PROMPTS), EMBEDDING_DIM)
    assert out.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(out, axis=1), 1.0, atol=1e-5)
    assert onnx_embedder.encode([]).shape == (0, EMBEDDING_DIM)


def test_encoding_is_deterministic(onnx_embedder: OnnxEmbedder) -> None:
    np.testing.assert_array_equal(onnx_embedder.encode(PROMPTS), onnx_embedder.encode(PROMPTS))


@pytest.mark.parametrize(("batch_size", "num_threads"), [(None, None), (None, 2), (2, None), (2, 3), (32, 2)])
def test_batch_equals_single(onnx_dir: Path, batch_size: int | None, num_threads: int | None) -> None:
    """Padding, length-sorted chunking and worker threads don't change a text's vector or its place (fp32; int8 runs
    one text at a time)."""
    embedder = OnnxEmbedder(
        onnx_dir / "minilm-fp32.onnx", onnx_dir / "tokenizer.json", False, num_threads, batch_size=batch_size
    )
    single = np.vstack([embedder.encode([p]) for p in PROMPTS])
    np.testing.assert_allclose(embedder.encode(PROMPTS), single, atol=1e-5)
    np.testing.assert_allclose(embedder.encode(PROMPTS[::-1])[::-1], single, atol=1e-5)


@pytest.mark.parametrize("num_threads", [None, 2, 3])
def test_int8_batch_equals_single(onnx_dir: Path, num_threads: int | None) -> None:
    """With several threads the texts run on worker threads over a one-thread session; a text's vector is the same
    as when it is embedded alone (one run on the session with `num_threads` intra-op threads)."""
    embedder = make_embedder("onnx-int8", onnx_dir=onnx_dir, num_threads=num_threads)
    single = np.vstack([embedder.encode([p]) for p in PROMPTS])
    np.testing.assert_allclose(embedder.encode(PROMPTS), single, atol=1e-5)
    np.testing.assert_allclose(embedder.encode(PROMPTS[::-1])[::-1], single, atol=1e-5)  # order is kept


def test_bulk_int8_on_worker_threads_holds_only_the_one_thread_session(onnx_dir: Path) -> None:
    """Embedding many texts with num_threads=2 runs them on one-thread sessions only: the two-thread session (for
    one text at a time) is created when a single text is embedded, not before."""
    embedder = make_embedder("onnx-int8", onnx_dir=onnx_dir, num_threads=2)
    assert isinstance(embedder, OnnxEmbedder)
    embedder.encode(PROMPTS)
    assert sorted(embedder._sessions) == [1]
    embedder.encode(PROMPTS[:1])
    assert sorted(embedder._sessions) == [1, 2]


def test_long_texts_are_truncated_to_256_word_pieces(onnx_embedder: OnnxEmbedder) -> None:
    a, b = onnx_embedder.encode([LONG, LONG + " And then the train arrives in a completely different city."])
    np.testing.assert_allclose(a, b, atol=1e-6)


def test_close_to_torch(onnx_embedder: OnnxEmbedder, torch_vectors: np.ndarray) -> None:
    backend = backend_of(onnx_embedder.id)
    cosine = (onnx_embedder.encode(PROMPTS) * torch_vectors).sum(axis=1)
    assert cosine.min() >= MIN_COSINE_TO_TORCH[backend], cosine


def test_constructor_loads_nothing(tmp_path: Path) -> None:
    embedder = OnnxEmbedder(tmp_path / "absent.onnx", tmp_path / "absent.json", quantized=True)
    assert embedder.id.endswith(f":onnx-int8+{INT8_RECIPE}")
    with pytest.raises(FileNotFoundError, match="absent.onnx"):
        embedder.encode(["x"])


@pytest.mark.parametrize("backend", BACKENDS)
def test_missing_files_tell_the_user_to_run_setup(tmp_path: Path, backend: str) -> None:
    with pytest.raises(FileNotFoundError, match="make setup"):
        make_embedder(backend, onnx_dir=tmp_path)


def test_import_does_not_import_torch() -> None:
    code = "import sys, router.embedders.onnx; sys.exit(1 if 'torch' in sys.modules else 0)"
    result = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, check=False)
    assert result.returncode == 0, f"importing router.embedders.onnx imported torch\n{result.stderr}"
