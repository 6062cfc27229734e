"""`python -m serving`: run the service with uvicorn (uvloop + httptools) on the configured host and port."""

from __future__ import annotations

import logging
import os
import sys
from pathlib import Path

import uvicorn

from infra.settings import Settings, get_settings, settings_error
from infra.store import Store, first_line
from router.embedders.factory import backend_of, make_embedder
from serving.metrics import reset_multiprocess_dir
from serving.model_source import fetch_embedder, source_from_settings
from serving.runtime import build_runtime

logger = logging.getLogger(__name__)


def preflight(settings: Settings) -> str | None:
    """Why the configured model can't be served with this configuration (embedder, tiers, ONNX files), or None.
    Where the cache has no files for the model's embedder, the registered model's own are put there first.

    Checked once before the workers start, so a misconfiguration ends in one line instead of a traceback per
    worker. A model that can't be loaded at all (no model yet, registry down) is left to the service, which
    starts unready and says why on /readyz.
    """
    source = source_from_settings(settings)
    try:
        loaded = source.load()
    except Exception as exc:  # any load failure is the service's to report
        logger.info("preflight: no model to check (%s)", exc)
        return None
    trained_with = backend_of(loaded.artifact.features.embedder_id)

    def fetch(onnx_dir: Path) -> None:
        """The model's own embedder files where the cache has none (a host without torch cannot build them)."""
        try:
            put = fetch_embedder(source, loaded, onnx_dir)
        except Exception as exc:  # then the embedder says what is missing and how to build it
            logger.warning("preflight: cannot fetch the embedder files of %s: %s", loaded.version, first_line(exc))
            return
        if put:
            logger.info("preflight: %s from the model %s", ", ".join(str(p) for p in put), loaded.version)

    try:
        build = fetch if settings.embedder == trained_with else None  # another embedder is refused below anyway
        embedder = make_embedder(settings.embedder, onnx_dir=settings.cache_dir / "onnx", build=build)
        build_runtime(
            loaded, settings.tiers_path, embedder, settings.intra_op_threads, tiers_path_named=settings.tiers_path_named
        )
    except Exception as exc:  # EmbedderMismatch, TiersConfigError, missing or unreadable ONNX files
        return f"{loaded.version}: {first_line(exc)}"
    return None


def migrate_before_fork(database_url: str) -> None:
    """Migrate once, before uvicorn forks its workers (concurrent first-time migrations race).

    With the store down this is one line on stderr, not an exit: the workers start unready and retry.
    """
    store = Store(database_url)
    try:
        store.migrate()
    except Exception as exc:  # any failure here is the workers' to retry
        reason = first_line(exc)
        logger.warning("tierwise: store unavailable (%s); starting unready, retrying in the background", reason)
    finally:
        store.dispose()


def main() -> None:
    try:
        settings = get_settings()
    except Exception as exc:  # a bad TIERWISE_* value: one line naming it, not pydantic's traceback
        problem = settings_error(exc)
        if problem is None:
            raise
        sys.exit(f"tierwise: cannot serve: {problem}")
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")  # no progress bars in the service's logs
    migrate_before_fork(settings.database_url)
    reason = preflight(settings)
    if reason is not None:
        sys.exit(f"tierwise: cannot serve {reason}")
    if settings.workers > 1:
        # The spawned workers inherit the environment and import prometheus_client afresh, which then keeps
        # its values in files here that every worker's /metrics sums; a previous run's files would count too.
        os.environ["PROMETHEUS_MULTIPROC_DIR"] = str(reset_multiprocess_dir(settings.metrics_dir))
    uvicorn.run(
        "serving.app:create_app",
        factory=True,
        host=settings.host,
        port=settings.port,
        workers=settings.workers,
        loop="uvloop",
        http="httptools",
        log_config=None,
        access_log=False,
    )


if __name__ == "__main__":
    main()
