"""Where the router artifact comes from: the MLflow registry alias, or a local directory.

`resolve()` is cheap (it names the version the source would load now) so that polling can
notice a moved alias; `load()` fetches and opens the artifact. The hot path calls neither.
"""

from __future__ import annotations

import logging
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from infra.settings import Settings
from infra.store import first_line
from router.artifact import PACKAGED_EMBEDDER, PACKAGED_ROUTER, RouterArtifact, find_artifact
from router.embedders.install import install_from_repository

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
    # The last version loaded: a reload that finds the alias where it was (a tiers edit) downloads nothing.
    _last: dict[str, LoadedModel] = field(default_factory=dict, compare=False, repr=False)
    _clients: dict[str, Any] = field(default_factory=dict, compare=False, repr=False)

    def _client(self) -> Any:
        """One client per source, made once the tracking store answers."""
        import mlflow
        from mlflow import MlflowClient

        if "client" not in self._clients:
            check_reachable(self.tracking_uri)
            self._clients["client"] = MlflowClient(tracking_uri=self.tracking_uri, registry_uri=self.tracking_uri)
        # A models:/ download looks the version up through MLflow's global URIs, whatever else set them.
        mlflow.set_tracking_uri(self.tracking_uri)
        mlflow.set_registry_uri(self.tracking_uri)
        return self._clients["client"]

    def resolve(self) -> str:
        version = self._client().get_model_version_by_alias(self.name, self.alias).version
        return f"{self.name}/{version}"

    def load(self) -> LoadedModel:
        version = self.resolve()
        if version in self._last:
            return self._last[version]
        number = version.rsplit("/", 1)[-1]
        # Download the pinned version, not the alias: the alias may move between the two calls.
        # The artifact is read into memory, so the download is removed once loaded (reloads leave nothing).
        with tempfile.TemporaryDirectory(prefix="tierwise-model-") as target:
            local = _download(f"models:/{self.name}/{number}", target, self.tracking_uri)
            loaded = LoadedModel(RouterArtifact.load(find_artifact(local)), version)
        self._last.clear()
        self._last[version] = loaded
        return loaded


def check_reachable(tracking_uri: str, timeout_s: int = 5) -> None:
    """Fail at once when a database tracking store does not answer.

    MLflow retries a database it cannot reach for about 100 s before it raises, which held the
    preflight and every worker's start-up that long.
    """
    import sqlalchemy as sa
    from sqlalchemy.pool import NullPool

    try:
        url = sa.make_url(tracking_uri)
    except sa.exc.ArgumentError:
        return
    if url.get_backend_name() not in {"postgresql", "mysql", "mssql"}:
        return  # SQLite, a file store, an HTTP server: nothing MLflow would retry for long
    args = {"connect_timeout": timeout_s} if url.get_backend_name() == "postgresql" else {}
    engine = sa.create_engine(url, poolclass=NullPool, connect_args=args)
    try:
        with engine.connect():
            pass
    except sa.exc.DBAPIError as exc:
        raise ConnectionError(f"tracking store unreachable: {first_line(exc)}") from None
    finally:
        engine.dispose()


@contextmanager
def _repository(uri: str, tracking_uri: str) -> Iterator[Any]:
    """The artifact repository of model `uri`; its download threads are joined after.

    MLflow gives every artifact repository its own thread pool and never shuts it down; the repository
    sits in a reference cycle, so its threads lived until a garbage collection: the service gained
    threads with every reload.
    """
    from mlflow.store.artifact.artifact_repository_registry import get_artifact_repository

    repo = get_artifact_repository(uri, tracking_uri=tracking_uri, registry_uri=tracking_uri)
    try:
        yield repo
    finally:
        layer: Any = repo
        while layer is not None:  # a models:/ repository wraps the repository holding the files
            pool = getattr(layer, "thread_pool", None)
            if pool is not None:
                pool.shutdown(wait=True)
            layer = getattr(layer, "repo", None)


def _download(uri: str, target: str, tracking_uri: str) -> str:
    """Download the router artifact of model `uri` into `target` (not the embedder files the model also
    carries: the service has its own, `fetch_embedder` where it has none)."""
    with _repository(uri, tracking_uri) as repo:
        # A pyfunc logged by tierwise keeps the router artifact under artifacts/router; anything else (a bare
        # artifact directory registered by hand) is downloaded whole and searched for router.json.
        packaged = f"artifacts/{PACKAGED_ROUTER}"
        listed = {f.path for f in repo.list_artifacts("artifacts")}
        if not listed and not repo.list_artifacts(""):  # MLflow downloads nothing from an empty place, no error
            where = getattr(getattr(repo, "repo", repo), "artifact_uri", uri)
            raise FileNotFoundError(
                f"model {uri} has no files at its artifact location {where}: they were moved or deleted (a local "
                "MLflow store records the absolute path of its artifacts: put them back there, or train and "
                "register the model again)"
            )
        path = packaged if packaged in listed else ""
        return str(repo.download_artifacts(path, dst_path=target))


def fetch_embedder(source: ModelSource, loaded: LoadedModel, onnx_dir: Path) -> list[Path]:
    """Put the embedder files the registered model `loaded` carries into `onnx_dir` (the service's cache), where
    they are missing: a host without torch cannot build them (`make setup`), and these are the very files the model
    was trained with. Files already there are kept. The files put there; none when the model carries none (a local
    artifact folder, a torch model) or came from no registry."""
    registry = source.primary if isinstance(source, FallbackSource) else source
    if not isinstance(registry, RegistrySource) or not loaded.version.startswith(f"{registry.name}/"):
        return []
    uri = f"models:/{registry.name}/{loaded.version.rsplit('/', 1)[-1]}"
    with _repository(uri, registry.tracking_uri) as repo:
        # Downloaded beside the files, then renamed into place: a worker never sees half a file.
        return install_from_repository(repo, f"artifacts/{PACKAGED_EMBEDDER}", onnx_dir)


@dataclass(frozen=True)
class FallbackSource:
    """The registry first; the local path when the registry has no such model or is unreachable."""

    primary: ModelSource
    fallback: ModelSource

    def resolve(self) -> str:
        try:
            return self.primary.resolve()
        except Exception as exc:  # any registry failure means: use the fallback
            logger.warning("registry unavailable (%s); using the local model", exc)
            return self.fallback.resolve()

    def load(self) -> LoadedModel:
        try:
            return self.primary.load()
        except Exception as exc:
            logger.warning("cannot load from the registry (%s); using the local model", exc)
            return self.fallback.load()


def source_from_settings(settings: Settings) -> ModelSource:
    """The registry alias, with the local path (when set) as fallback."""
    registry = RegistrySource(settings.mlflow_tracking_uri, settings.registered_model, settings.model_alias)
    if settings.local_model_path is None:
        return registry
    return FallbackSource(registry, LocalSource(settings.local_model_path))
