"""Export the bundled all-MiniLM-L6-v2 to ONNX, pooling and normalisation inside the graph, then quantize to int8.

Both files are build artefacts (`make setup` writes them to .cache/onnx/); they are rebuilt when missing
or older than the source weights.
"""

from __future__ import annotations

import argparse
import logging
import shutil
from pathlib import Path

from router.features import minilm_path

logger = logging.getLogger(__name__)

FP32_FILE = "minilm-fp32.onnx"
INT8_FILE = "minilm-int8.onnx"
TOKENIZER_FILE = "tokenizer.json"
OPSET = 17


def _is_fresh(paths: list[Path], source: Path) -> bool:
    """True when every path exists and is newer than the source file."""
    src_mtime = source.stat().st_mtime
    return all(p.exists() and p.stat().st_mtime > src_mtime for p in paths)


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


def _quantize_int8(fp32: Path, out: Path) -> None:
    """Dynamic int8 quantization of the MatMul weights, one scale per output channel."""
    from onnxruntime.quantization import QuantType, quantize_dynamic

    quantize_dynamic(
        fp32,
        out,
        op_types_to_quantize=["MatMul"],
        per_channel=True,
        weight_type=QuantType.QInt8,
    )


def export_onnx(out_dir: Path | str, model_dir: Path | None = None, force: bool = False) -> tuple[Path, Path]:
    """Write the fp32 and int8 ONNX embedders and tokenizer.json to out_dir; skip when they are up to date."""
    out_dir = Path(out_dir)
    model_dir = Path(model_dir or minilm_path())
    fp32, int8, tok = out_dir / FP32_FILE, out_dir / INT8_FILE, out_dir / TOKENIZER_FILE
    if not force and _is_fresh([fp32, int8, tok], model_dir / "model.safetensors"):
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


def main(argv: list[str] | None = None) -> None:
    """CLI: python -m training.onnx_export --out .cache/onnx [--force]."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--out", type=Path, default=Path(".cache/onnx"))
    parser.add_argument("--force", action="store_true", help="rebuild even when the files are up to date")
    args = parser.parse_args(argv)
    # The quantizer logs every skipped tensor on the root logger at INFO: keep the root at WARNING.
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    logger.setLevel(logging.INFO)
    for path in export_onnx(args.out, force=args.force):
        logger.info("%s: %.1f MB", path, path.stat().st_size / 1e6)


if __name__ == "__main__":
    main()
