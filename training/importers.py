"""Importers from public routing logs' native formats into the tierwise outcome log."""

from __future__ import annotations

import ast
import hashlib
from collections.abc import Sequence
from pathlib import Path

import pandas as pd

from router.schema import REQUIRED_COLUMNS, OutcomeLogError, validate_outcomes

ROUTERBENCH_ID_COLUMNS = ("sample_id", "prompt", "eval_name")
COST_SUFFIX = "|total_cost"
RESPONSE_SUFFIX = "|model_response"


def _prompt_text(raw: str) -> str:
    """RouterBench stores a prompt as the repr of a list of parts; identical repeated parts collapse to one."""
    try:
        parts = ast.literal_eval(raw)
    except (ValueError, SyntaxError):
        return raw
    if not isinstance(parts, list | tuple):
        return str(parts)
    unique = list(dict.fromkeys(str(p) for p in parts))
    return "\n\n".join(unique)


def _read(path: Path) -> pd.DataFrame:
    name = path.name
    if name.endswith((".pkl", ".pickle")):
        frame: pd.DataFrame = pd.read_pickle(path)
        return frame
    if name.endswith((".csv", ".csv.gz")):
        return pd.read_csv(path)
    raise OutcomeLogError(path, "RouterBench files are .pkl or .csv(.gz)")


def import_routerbench_frame(wide: pd.DataFrame, path: Path | str = "<routerbench>") -> pd.DataFrame:
    """Turn one RouterBench wide table (a score column and a `<model>|total_cost` column per model) into long rows."""
    missing = [c for c in ROUTERBENCH_ID_COLUMNS if c not in wide.columns]
    if missing:
        raise OutcomeLogError(path, f"not a RouterBench table: missing column(s) {missing}", column=missing[0])
    models = [
        c[: -len(COST_SUFFIX)] for c in wide.columns if c.endswith(COST_SUFFIX) and c[: -len(COST_SUFFIX)] in wide
    ]
    if not models:
        raise OutcomeLogError(path, "no '<model>|total_cost' columns with a matching score column")
    base = pd.DataFrame(
        {
            "prompt_id": [
                f"{sid}@{hashlib.sha1(str(raw).encode()).hexdigest()[:8]}"
                for sid, raw in zip(wide["sample_id"], wide["prompt"], strict=True)
            ],
            "prompt": wide["prompt"].astype(str).map(_prompt_text),
            "category": wide["eval_name"].astype(str),
        }
    )
    frames = []
    for model in models:
        part = base.copy()
        part["model"] = model
        part["score"] = pd.to_numeric(wide[model], errors="coerce").to_numpy()
        part["cost_usd"] = pd.to_numeric(wide[model + COST_SUFFIX], errors="coerce").to_numpy()
        frames.append(part)
    long = pd.concat(frames, ignore_index=True)
    long = long.dropna(subset=["score", "cost_usd"]).reset_index(drop=True)
    return long[[*REQUIRED_COLUMNS, "category"]]


def import_routerbench(paths: Sequence[Path]) -> pd.DataFrame:
    """Import and validate RouterBench files; rows with a missing score or cost are dropped (as upstream)."""
    frames = [import_routerbench_frame(_read(Path(p)), p) for p in paths]
    out = pd.concat(frames, ignore_index=True).drop_duplicates(["prompt_id", "model"], keep="first")
    return validate_outcomes(out.reset_index(drop=True), paths[0] if len(paths) == 1 else "<routerbench import>")
