"""The registered model's pyfunc: a 'prompt' column in, predicted quality and expected cost per tier out.

Logged as code (MLflow's models-from-code): MLflow copies this file and the `router` package into the model
and runs this file when the model is loaded, so the model loads wherever its requirements are installed,
without this checkout and without pickles. That is why the file ends by handing MLflow the model
(`set_model`), the one thing tierwise lets happen on import; nothing in tierwise imports it. The router
artifact, and for an ONNX embedder its model file and tokenizer.json, are the model's artifacts.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import mlflow
import numpy as np
import pandas as pd

T = TypeVar("T")


class TierwisePyfunc(mlflow.pyfunc.PythonModel):  # type: ignore[name-defined,misc]
    """pyfunc face of a RouterArtifact, with the embedder it was trained with."""

    def load_context(self, context: Any) -> None:
        """Open the router artifact and the embedder shipped next to it (torch models use the installed one)."""
        from router.artifact import PACKAGED_EMBEDDER, PACKAGED_ROUTER, RouterArtifact, find_artifact
        from router.embedders.factory import backend_of, make_embedder

        self.artifact = RouterArtifact.load(find_artifact(context.artifacts[PACKAGED_ROUTER]))
        files = context.artifacts.get(PACKAGED_EMBEDDER)
        onnx_dir = Path(files) if files else None
        self.embedder = make_embedder(backend_of(self.artifact.features.embedder_id), onnx_dir=onnx_dir)

    def predict(
        self,
        context: Any,  # noqa: ARG002 - required by mlflow.pyfunc
        model_input: pd.DataFrame,
        params: dict[str, Any] | None = None,  # noqa: ARG002
    ) -> pd.DataFrame:
        """Quality and cost per tier for each prompt of the 'prompt' column; an optional 'task' column is each
        prompt's task hint (router/task_hint.py: a task the model knows is blended in instead of the one it
        guesses from the prompt; others change nothing), an optional 'input_tokens' column the input tokens each
        call sends, as on /route (missing: estimated from the prompt)."""
        prompts = list(model_input["prompt"])
        bad = [i for i, p in enumerate(prompts) if not isinstance(p, str) or not p.strip()]
        if bad:  # as /route and `tierwise route` refuse them: no prediction for a prompt that is not there
            first = prompts[bad[0]]
            what = "blank" if isinstance(first, str) else f"not text ({first!r})"
            raise ValueError(f"row {bad[0]} of the 'prompt' column is {what}; {len(bad)} such rows: give each a prompt")
        tasks = _column(model_input, "task", _task)
        tokens_in = _column(model_input, "input_tokens", _input_tokens)
        quality = self.artifact.predict_quality(prompts, self.embedder, tasks=tasks)
        cost = self.artifact.expected_cost(prompts, tokens_in=tokens_in)
        out = {f"quality_{n}": quality[:, j] for j, n in enumerate(self.artifact.tier_names)}
        out.update({f"expected_cost_usd_{n}": cost[:, j] for j, n in enumerate(self.artifact.tier_names)})
        return pd.DataFrame(out, index=model_input.index)  # row for row: a join on the input's index pairs them


def _column(frame: pd.DataFrame, name: str, check: Callable[[Any], T | None]) -> list[T | None] | None:
    """The optional column `name` with each value checked as /route checks its field (None where missing), or None
    without the column; a ValueError naming the column and row for a value /route would refuse."""
    if name not in frame.columns:
        return None
    values: list[T | None] = []
    for row, value in enumerate(frame[name]):
        try:
            values.append(None if _missing(value) else check(value))
        except ValueError as exc:
            raise ValueError(f"row {row} of the '{name}' column: {exc}") from None
    return values


def _missing(value: Any) -> bool:
    """A missing cell (None, NaN of any float type, NaT, pd.NA); a list or other non-scalar is a value to check."""
    return bool(pd.api.types.is_scalar(value) and pd.isna(value))


def _task(value: Any) -> str:
    from router.task_hint import MAX_TASK_CHARS

    if not isinstance(value, str) or not 1 <= len(value) <= MAX_TASK_CHARS:
        raise ValueError(f"a task is text of 1 to {MAX_TASK_CHARS} characters, not {_shown(value)}")
    return value


def _input_tokens(value: Any) -> float:
    """A count of input tokens: a whole number from 1 (an integer column with gaps holds floats: 12.0 is 12)."""
    from router.text import MAX_TOKENS

    whole = isinstance(value, int | np.integer) or (
        isinstance(value, float | np.floating) and float(value).is_integer()
    )
    if isinstance(value, bool | np.bool_) or not whole or not 1 <= value <= MAX_TOKENS:
        raise ValueError(f"input_tokens is a whole number from 1 to {MAX_TOKENS}, not {_shown(value)}")
    return float(value)


def _shown(value: Any) -> str:
    return repr(value)[:60]


mlflow.models.set_model(TierwisePyfunc())
