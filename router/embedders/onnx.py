"""all-MiniLM-L6-v2 on ONNX Runtime: the serving embedder, without torch.

The graph (built by training/onnx_export.py) takes input_ids and attention_mask and returns the
mean-pooled, L2-normalised sentence embedding, so encoding is tokenize -> one session run.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
from tokenizers import Tokenizer

from router.embedders.protocol import EMBEDDING_DIM, MINILM_ID

# How the int8 file is quantized; part of the int8 embedder's id, so vectors and models made with another
# recipe are never mixed with this one's (the cache misses, serving refuses the model). training/onnx_export.py
# writes it into the file's metadata, and loading checks it.
INT8_RECIPE = "ffn-out-fp32"
RECIPE_KEY = "tierwise.int8_recipe"


def load_onnxruntime() -> Any:
    """ONNX Runtime, imported with its telemetry off unless the environment says otherwise: its Linux wheels send
    usage events to Microsoft (DNS lookups of mobile.events.data.microsoft.com within seconds of a session), and
    tierwise reaches no host at run time. `ORT_DISABLE_TELEMETRY` must be set before ONNX Runtime initializes
    (onnxruntime's Privacy.md), so every import of it in tierwise goes through here."""
    os.environ.setdefault("ORT_DISABLE_TELEMETRY", "1")
    import onnxruntime as ort

    return ort


class StaleOnnxFile(RuntimeError):
    """The ONNX file on disk was built with another int8 recipe than this code's."""


class OnnxEmbedder:
    """all-MiniLM-L6-v2 exported to ONNX (fp32 or int8), loaded on first encode.

    batch_size defaults to 8 for fp32 and 1 for int8: dynamic quantization scales each MatMul input
    by the max over the whole batch, so batching int8 makes a text's vector depend on its neighbours
    (cosine down to 0.988 between batched and single runs). One sequence per run keeps
    encode(texts)[i] == encode([texts[i]]), so training and serving see the same vectors, and on
    this machine it was not slower.

    `num_threads` (default 1) is the intra-op threads of one run, which is how one text is embedded. Many texts are
    cut into length-sorted chunks of `batch_size` that run `num_threads` at a time on worker threads, each chunk on a
    session with one intra-op thread (sessions are created per thread count on first use, so bulk-only use never
    holds the `num_threads` one, ~70 MB for int8). On 2 cores (300 routerbench prompts, against one thread) two intra-op
    threads on each sequence were 1.4-1.7x faster, two sequences at once 1.75-2.0x (`python -m bench.embed_bench`,
    part "bulk", compares the two). For fp32, chunks of 8 on two workers embedded 1.28x as many routerbench prompts a
    second as chunks of 32 on two intra-op threads (70.0 vs 54.7, 88% of them at the 256-token cut) and 1.22x as many
    short ones (their last 15 words; 730 vs 600); chunks of one were as fast on the long ones (66.9) and slower
    on the short (442) (Zen 5, 2 cores, 400 prompts, 2026-11-28). On all 3,162 routerbench prompts, the quality
    tests' fp32 reference, 1.12x (62.7 vs 55.7 a second, two runs each). A text's vector does not depend on the path
    (tests/unit/test_onnx_embedder.py; bit for bit on the machine measured).
    """

    def __init__(
        self,
        model_file: Path,
        tokenizer_file: Path,
        quantized: bool,
        num_threads: int | None = None,
        max_length: int = 256,
        batch_size: int | None = None,
    ):
        self.model_file = model_file
        self.tokenizer_file = tokenizer_file
        self.quantized = quantized
        self.num_threads = num_threads
        self.max_length = max_length
        self.batch_size = batch_size
        self._sessions: dict[int, Any] = {}  # by intra-op threads, each created on first use
        self._tokenizer: Tokenizer | None = None
        self._lock = threading.Lock()

    @property
    def id(self) -> str:
        return f"{MINILM_ID}:onnx-int8+{INT8_RECIPE}" if self.quantized else f"{MINILM_ID}:onnx-fp32"

    @property
    def dim(self) -> int:
        return EMBEDDING_DIM

    def _load_tokenizer(self) -> Tokenizer:
        """Create the tokenizer once; safe to call from several threads."""
        with self._lock:
            if self._tokenizer is None:
                for path in (self.model_file, self.tokenizer_file):
                    if not path.is_file():
                        raise FileNotFoundError(f"{path} is missing; build the embedder with `make setup`")
                tokenizer = Tokenizer.from_file(str(self.tokenizer_file))
                # tokenizer.json ships with 128-token truncation and fixed padding; MiniLM reads 256.
                tokenizer.enable_truncation(max_length=self.max_length)
                tokenizer.no_padding()
                self._tokenizer = tokenizer
        return self._tokenizer

    def _session(self, intra_op_threads: int) -> Any:
        """The inference session with this many intra-op threads, created on first use and then shared (ONNX
        Runtime sessions take concurrent runs). Only the sessions a path uses exist: bulk int8 embedding on
        several worker threads uses one-thread sessions only, so it never builds the `num_threads` one."""
        session = self._sessions.get(intra_op_threads)
        if session is not None:
            return session
        self._load_tokenizer()
        with self._lock:
            if intra_op_threads not in self._sessions:
                session = self._new_session(intra_op_threads)
                recipe = session.get_modelmeta().custom_metadata_map.get(RECIPE_KEY)
                if self.quantized and recipe != INT8_RECIPE:
                    raise StaleOnnxFile(
                        f"{self.model_file} was quantized with recipe {recipe!r}, this tierwise expects "
                        f"{INT8_RECIPE!r}; rebuild it with `make setup` "
                        f"(tierwise build-embedder --out {self.model_file.parent} --force)"
                    )
                self._sessions[intra_op_threads] = session
            return self._sessions[intra_op_threads]

    def _new_session(self, intra_op_threads: int) -> Any:
        ort = load_onnxruntime()
        options = ort.SessionOptions()
        options.intra_op_num_threads = intra_op_threads
        options.inter_op_num_threads = 1
        options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        return ort.InferenceSession(str(self.model_file), sess_options=options, providers=["CPUExecutionProvider"])

    def _run_chunk(self, session: Any, encodings: list[Any]) -> np.ndarray:
        """Embed tokenized texts in one run, each padded to the chunk's longest (a chunk of one is unpadded)."""
        width = max(len(e.ids) for e in encodings)
        ids = np.zeros((len(encodings), width), dtype=np.int64)
        mask = np.zeros((len(encodings), width), dtype=np.int64)
        for row, encoding in enumerate(encodings):
            n = len(encoding.ids)
            ids[row, :n] = encoding.ids
            mask[row, :n] = 1
        out: np.ndarray = session.run(None, {"input_ids": ids, "attention_mask": mask})[0]
        return out

    def encode(self, texts: Sequence[str]) -> np.ndarray:
        """Return an (n, 384) float32 array of unit vectors, one per text, in input order."""
        tokenizer = self._tokenizer if self._tokenizer is not None else self._load_tokenizer()
        # One intra-op thread by default: serving scales with worker processes, not threads.
        threads = self.num_threads or 1
        if len(texts) == 1:
            return self._run_chunk(self._session(threads), [tokenizer.encode(texts[0])])
        result = np.zeros((len(texts), EMBEDDING_DIM), dtype=np.float32)
        if not texts:
            return result
        encodings = tokenizer.encode_batch(list(texts))
        batch_size = self.batch_size or (1 if self.quantized else 8)
        # Length-sorted chunks, each padded only to its own longest member, run `threads` at a time on worker
        # threads over the one-thread session (with threads == 1, one after another on it).
        order = sorted(range(len(texts)), key=lambda i: len(encodings[i].ids))
        chunks = [order[start : start + batch_size] for start in range(0, len(order), batch_size)]
        single = self._session(1)
        workers = min(threads, len(chunks))
        if workers == 1:
            for chunk in chunks:
                result[chunk] = self._run_chunk(single, [encodings[i] for i in chunk])
            return result
        with ThreadPoolExecutor(workers, thread_name_prefix="tierwise-embed") as pool:
            runs = pool.map(lambda chunk: self._run_chunk(single, [encodings[i] for i in chunk]), chunks)
            for chunk, vectors in zip(chunks, runs, strict=True):
                result[chunk] = vectors
        return result
