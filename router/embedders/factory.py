"""Build an embedder from its backend name ('torch', 'onnx-fp32', 'onnx-int8', 'static') and locate its files."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from router.embedders.protocol import Embedder
from router.embedders.static import META_FILE, VECTORS_FILE

FILE_BACKENDS = ("onnx-fp32", "onnx-int8", "static")
"""Backends that load built files from the embedder directory (the cache dir's onnx/)."""


def embedder_files(backend: str, onnx_dir: Path) -> tuple[Path, ...]:
    """The files a file backend ('onnx-fp32', 'onnx-int8', 'static') loads from `onnx_dir`, tokenizer.json last."""
    if backend == "static":
        return onnx_dir / VECTORS_FILE, onnx_dir / META_FILE, onnx_dir / "tokenizer.json"
    return onnx_dir / f"minilm-{backend.removeprefix('onnx-')}.onnx", onnx_dir / "tokenizer.json"


def make_embedder(
    backend: str,
    onnx_dir: Path | None = None,
    num_threads: int | None = None,
    build: Callable[[Path], object] | None = None,
) -> Embedder:
    """Build the embedder for a backend name ('torch', 'onnx-fp32', 'onnx-int8', 'static').

    The file backends read their files from `onnx_dir`; when they are missing, `build(onnx_dir)` makes them
    (entry points pass training's builder where torch is installed), else the error says how to build them.
    """
    if backend == "torch":
        from router.embedders.torch import SentenceTransformerEmbedder

        return SentenceTransformerEmbedder(num_threads=num_threads)
    if backend not in FILE_BACKENDS:
        raise ValueError(f"unknown embedder backend '{backend}'")
    if onnx_dir is None:
        raise ValueError(f"embedder '{backend}' needs the directory of its built files (onnx_dir)")
    files = embedder_files(backend, onnx_dir)
    if build is not None and not all(p.exists() for p in files):
        build(onnx_dir)
    missing = [str(p) for p in files if not p.exists()]
    if missing:
        raise FileNotFoundError(
            f"embedder '{backend}' needs {', '.join(missing)}; build them with `tierwise build-embedder "
            f"--out {onnx_dir}` (needs the training extra: pip install 'tierwise[train]'), or `make setup`"
        )
    if backend == "static":
        from router.embedders.static import StaticEmbedder

        return StaticEmbedder(onnx_dir)
    from router.embedders.onnx import OnnxEmbedder

    return OnnxEmbedder(files[0], files[-1], quantized=backend == "onnx-int8", num_threads=num_threads)


def backend_of(embedder_id: str) -> str:
    """The backend name inside an embedder id such as 'sentence-transformers/all-MiniLM-L6-v2:torch'.

    An int8 id also names its quantization recipe after a '+' ('...:onnx-int8+ffn-out-fp32').
    """
    return embedder_id.rsplit(":", 1)[-1].split("+", 1)[0]
