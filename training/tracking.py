"""MLflow: log a training run, register the model, and move the champion alias only on merit."""

from __future__ import annotations

import logging
import tempfile
from dataclasses import dataclass
from importlib.metadata import version
from pathlib import Path
from typing import Any

import mlflow
import numpy as np
import pandas as pd
from mlflow import MlflowClient
from mlflow.exceptions import MlflowException
from mlflow.models import infer_signature

from router.artifact import RouterArtifact, find_artifact
from router.features import backend_of, make_embedder
from training.pipeline import TrainResult
from training.plots import calibration_figure, cost_quality_figure

logger = logging.getLogger(__name__)

CHAMPION, CHALLENGER = "champion", "challenger"
AIQ_METRIC = "router_AIQ"
PINNED = ("lightgbm", "numpy", "pandas", "scikit-learn", "pydantic", "tokenizers", "onnxruntime", "mlflow-skinny")


def pip_requirements() -> list[str]:
    """Explicit requirements for the logged model (inferring them makes logging about 10x slower)."""
    return [f"{pkg}=={version(pkg)}" for pkg in PINNED] + ["torch==2.13.0", "sentence-transformers"]


class TierwisePyfunc(mlflow.pyfunc.PythonModel):  # type: ignore[name-defined,misc]
    """pyfunc face of a RouterArtifact: a 'prompt' column in, predicted quality and cost per tier out."""

    def load_context(self, context: Any) -> None:
        self.artifact = RouterArtifact.load(find_artifact(context.artifacts["router"]))
        self.embedder = make_embedder(backend_of(self.artifact.features.embedder_id))

    def predict(  # noqa: D102 - pyfunc signature
        self,
        context: Any,  # noqa: ARG002 - required by mlflow.pyfunc
        model_input: pd.DataFrame,
        params: dict[str, Any] | None = None,  # noqa: ARG002
    ) -> pd.DataFrame:
        prompts = model_input["prompt"].astype(str).tolist()
        quality = self.artifact.predict_quality(prompts, self.embedder)
        cost = self.artifact.expected_cost(prompts)
        out = {f"quality_{n}": quality[:, j] for j, n in enumerate(self.artifact.tier_names)}
        out.update({f"expected_cost_usd_{n}": cost[:, j] for j, n in enumerate(self.artifact.tier_names)})
        return pd.DataFrame(out)


@dataclass(frozen=True)
class Registration:
    run_id: str
    version: str
    alias: str
    new_aiq: float
    champion_aiq: float | None
    message: str


def configure(tracking_uri: str, experiment: str) -> None:
    """Point MLflow at the store; called by entry points only."""
    mlflow.set_tracking_uri(tracking_uri)
    mlflow.set_registry_uri(tracking_uri)
    mlflow.set_experiment(experiment)


def champion_version(client: MlflowClient, name: str) -> Any | None:
    try:
        return client.get_model_version_by_alias(name, CHAMPION)
    except MlflowException:
        return None


def download_artifact(model_uri: str, dst: Path) -> RouterArtifact:
    """Fetch a registered model's router artifact to a local directory and load it."""
    local = mlflow.artifacts.download_artifacts(artifact_uri=model_uri, dst_path=str(dst))
    return RouterArtifact.load(find_artifact(local))


def _flat_params(params: dict[str, Any]) -> dict[str, str]:
    return {k: str(v)[:500] for k, v in params.items()}


def log_and_register(
    result: TrainResult,
    registered_model: str,
    champion_aiq_on_this_split: float | None,
    input_prompts: list[str],
) -> Registration:
    """Log params, metrics, plots, tables and the model in one run; register it; set the alias."""
    ev = result.evaluation
    with mlflow.start_run() as run, tempfile.TemporaryDirectory() as tmp:
        mlflow.log_params(_flat_params(result.params))
        mlflow.log_metrics({k: v for k, v in ev.metrics.items() if np.isfinite(v)})
        mlflow.log_figure(cost_quality_figure(ev.curves, ev.metrics["top_cost_usd"]), "plots/cost_quality.png")
        if ev.test_pred is not None and ev.test_scores is not None:
            fig = calibration_figure(ev.test_pred, ev.test_scores, result.artifact.tier_names)
            mlflow.log_figure(fig, "plots/calibration.png")
        mlflow.log_text(ev.table.round(4).to_string(), "evaluation/table.txt")
        mlflow.log_text(ev.table.to_csv(), "evaluation/table.csv")
        mlflow.log_text(ev.per_category.to_csv(index=False), "evaluation/per_category.csv")
        mlflow.log_text("\n".join(result.test_prompt_ids), "evaluation/test_prompt_ids.txt")
        artifact_dir = result.artifact.save(Path(tmp) / "router")
        example = pd.DataFrame({"prompt": input_prompts[:3]})
        quality = result.artifact.model.predict_quality(np.zeros((1, result.artifact.model.n_features_in_)))
        sig_out = pd.DataFrame(
            {
                **{f"quality_{n}": quality[:, j] for j, n in enumerate(result.artifact.tier_names)},
                **{f"expected_cost_usd_{n}": [0.0] for n in result.artifact.tier_names},
            }
        )
        info = mlflow.pyfunc.log_model(
            name="model",
            python_model=TierwisePyfunc(),
            artifacts={"router": str(artifact_dir)},
            signature=infer_signature(example, sig_out),
            input_example=example,
            pip_requirements=pip_requirements(),
            registered_model_name=registered_model,
        )
        new_aiq = ev.metrics[AIQ_METRIC]
        mv_version = str(info.registered_model_version)
        alias, message = decide_alias(new_aiq, champion_aiq_on_this_split)
        MlflowClient().set_registered_model_alias(registered_model, alias, mv_version)
        mlflow.set_tag("tierwise.alias", alias)
        mlflow.set_tag("tierwise.promotion", message)
        return Registration(run.info.run_id, mv_version, alias, new_aiq, champion_aiq_on_this_split, message)


def decide_alias(new_aiq: float, champion_aiq: float | None) -> tuple[str, str]:
    """champion when there is no comparable champion or the new AIQ is at least the champion's on the same split."""
    if champion_aiq is None:
        return CHAMPION, f"no champion comparable on this split: the new model (AIQ {new_aiq:.4f}) becomes champion"
    if new_aiq >= champion_aiq:
        return CHAMPION, f"new AIQ {new_aiq:.4f} >= champion's {champion_aiq:.4f} on this test split: promoted"
    return CHALLENGER, f"new AIQ {new_aiq:.4f} < champion's {champion_aiq:.4f} on this test split: kept as challenger"
