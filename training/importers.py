"""Importers from public routing logs' native formats into the tierwise outcome log."""

from __future__ import annotations

import ast
import hashlib
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from router.schema import REQUIRED_COLUMNS, OutcomeLogError, is_utf8, numbers_of, validate_outcomes

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
    name = path.name.lower()
    if not name.endswith((".pkl", ".pickle", ".csv", ".csv.gz")):
        raise OutcomeLogError(path, "RouterBench files are .pkl or .csv(.gz)")
    if path.is_dir():
        raise OutcomeLogError(path, "is a folder, not a RouterBench file")
    if not path.exists():
        raise OutcomeLogError(path, "file not found")
    pickled = name.endswith((".pkl", ".pickle"))
    try:
        frame = pd.read_pickle(path) if pickled else pd.read_csv(path)
    except OSError:
        raise
    except Exception as exc:  # a truncated pickle, a malformed CSV: one line
        raise OutcomeLogError(path, f"cannot be read as {'a pickle' if pickled else 'CSV'}: {exc}") from None
    if not isinstance(frame, pd.DataFrame):
        raise OutcomeLogError(path, f"holds a {type(frame).__name__}, not RouterBench's table (a pandas DataFrame)")
    return frame


Flag = Callable[[pd.Series], pd.Series]


def _numbers(wide: pd.DataFrame, column: str, path: Path | str, bad: Flag, says: str) -> Any:
    """A wide column as numbers; an entry that is no number, or that `bad` flags, is refused by its row there."""
    values = numbers_of(wide[column])  # true/false is no number; an integer beyond float's range is infinite
    for mask, message in ((values.isna() & wide[column].notna(), "not a number"), (bad(values), says)):
        if mask.any():
            row = int(np.flatnonzero(mask.to_numpy())[0]) + 1
            raise OutcomeLogError(path, f"{message}: {wide[column].iloc[row - 1]!r}", row=row, column=column)
    return values.to_numpy()


def import_routerbench_frame(wide: pd.DataFrame, path: Path | str = "<routerbench>") -> pd.DataFrame:
    """Turn one RouterBench wide table (a score column and a `<model>|total_cost` column per model) into long rows."""
    missing = [c for c in ROUTERBENCH_ID_COLUMNS if c not in wide.columns]
    if missing:
        raise OutcomeLogError(path, f"not a RouterBench table: missing column(s) {missing}", column=missing[0])
    models = [
        c[: -len(COST_SUFFIX)]
        for c in wide.columns
        if isinstance(c, str) and c.endswith(COST_SUFFIX) and c[: -len(COST_SUFFIX)] in wide
    ]
    if not models:
        raise OutcomeLogError(path, "no '<model>|total_cost' columns with a matching score column")
    not_text = wide["prompt"].map(lambda v: isinstance(v, bytes) and not is_utf8(v))
    if not_text.any():
        row = int(np.flatnonzero(not_text.to_numpy())[0]) + 1
        raise OutcomeLogError(path, "not UTF-8 text", row=row, column="prompt")
    prompts = wide["prompt"].map(lambda v: v.decode() if isinstance(v, bytes) else v).astype(str).map(_prompt_text)
    # Checked by the file's row, as the scores are: the log's own check would name a row of the reshaped table.
    for mask, message in ((wide["prompt"].isna(), "value is missing"), (prompts.str.strip().eq(""), "prompt is empty")):
        if mask.any():
            raise OutcomeLogError(path, message, row=int(np.flatnonzero(mask.to_numpy())[0]) + 1, column="prompt")
    base = pd.DataFrame(
        {
            "file_row": np.arange(1, len(wide) + 1),  # errors name the row of the file, not of the long table
            "prompt_id": [
                f"{sid}@{hashlib.sha1(str(raw).encode()).hexdigest()[:8]}"
                for sid, raw in zip(wide["sample_id"], wide["prompt"], strict=True)
            ],
            "prompt": prompts,
            "category": wide["eval_name"].astype(str),
        }
    )
    frames = []
    for model in models:
        part = base.copy()
        part["model"] = model
        # Checked here, by the row and column of the file (an empty cell is a missing outcome, dropped as upstream).
        part["score"] = _numbers(wide, model, path, lambda v: (v < 0) | (v > 1), "score must be in [0, 1]")
        cost = model + COST_SUFFIX
        part["cost_usd"] = _numbers(wide, cost, path, lambda v: (v < 0) | np.isinf(v), "cost must be finite, >= 0")
        frames.append(part)
    long = pd.concat(frames, ignore_index=True)
    long = long.dropna(subset=["score", "cost_usd"]).drop_duplicates(["prompt_id", "model"], keep="first")
    rows = long["file_row"].to_numpy()
    return validate_outcomes(long[[*REQUIRED_COLUMNS, "category"]].reset_index(drop=True), path, row_numbers=rows)


def import_routerbench(paths: Sequence[Path]) -> pd.DataFrame:
    """Import and validate RouterBench files, each checked as its own file; rows with a missing score or cost are
    dropped (as upstream), and a prompt's outcome from a model in several files is the first file's."""
    frames = [import_routerbench_frame(_read(Path(p)), p) for p in paths]
    out = pd.concat(frames, ignore_index=True).drop_duplicates(["prompt_id", "model"], keep="first")
    return out.reset_index(drop=True)
