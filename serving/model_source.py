"""Where the router artifact comes from: the MLflow registry alias, or a local directory.

`resolve()` is cheap (it names the version the source would load now) so that polling can
notice a moved alias; `load()` fetches and opens the artifact. The hot path calls neither.
"""

from __future__ import annotations

import logging
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from router.artifact import RouterArtifact, find_artifact
from router.settings import Settings

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class LoadedModel:
    """A router artifact and the version string shown as `router_version`."""

    artifact: RouterArtifact
    version: str


class ModelSource(Protocol):
    def resolve(self) -> str:
        """The version `load()` would return now."""
        ...

    def load(self) -> LoadedModel: ...


@dataclass(frozen=True)
class LocalSource:
    """A saved RouterArtifact directory (or any directory holding one)."""

    path: Path

    def resolve(self) -> str:
        return f"local:{self.path}"

    def load(self) -> LoadedModel:
        return LoadedModel(RouterArtifact.load(find_artifact(self.path)), self.resolve())


@dataclass(frozen=True)
class RegistrySource:
    """`models:/<name>@<alias>` in an MLflow tracking store."""

    tracking_uri: str
    name: str
    alias: str

    def _client(self) -> Any:
        import mlflow
        from mlflow import MlflowClient

        mlflow.set_tracking_uri(self.tracking_uri)
        return MlflowClient(tracking_uri=self.tracking_uri)

    def resolve(self) -> str:
        version = self._client().get_model_version_by_alias(self.name, self.alias).version
        return f"{self.name}/{version}"

    def load(self) -> LoadedModel:
        import mlflow

        version = self.resolve()
        number = version.rsplit("/", 1)[-1]
        # Download the pinned version, not the alias: the alias may move between the two calls.
        # The artifact is read into memory, so the download is removed once loaded (reloads leave nothing).
        with tempfile.TemporaryDirectory(prefix="tierwise-model-") as target:
            uri = f"models:/{self.name}/{number}"
            local = mlflow.artifacts.download_artifacts(artifact_uri=uri, dst_path=target)
            return LoadedModel(RouterArtifact.load(find_artifact(local)), version)


@dataclass(frozen=True)
class FallbackSource:
    """The registry first; the local path when the registry has no such model or is unreachable."""

    primary: ModelSource
    fallback: ModelSource

    def resolve(self) -> str:
        try:
            return self.primary.resolve()
        except Exception as exc:  # noqa: BLE001 - any registry failure means: use the fallback
            logger.warning("registry unavailable (%s); using the local model", exc)
            return self.fallback.resolve()

    def load(self) -> LoadedModel:
        try:
            return self.primary.load()
        except Exception as exc:  # noqa: BLE001
            logger.warning("cannot load from the registry (%s); using the local model", exc)
            return self.fallback.load()


def source_from_settings(settings: Settings) -> ModelSource:
    """The registry alias, with the local path (when set) as fallback."""
    registry = RegistrySource(settings.mlflow_tracking_uri, settings.registered_model, settings.model_alias)
    if settings.local_model_path is None:
        return registry
    return FallbackSource(registry, LocalSource(settings.local_model_path))
