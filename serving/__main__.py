"""`python -m serving`: run the service with uvicorn (uvloop + httptools) on the configured host and port."""

from __future__ import annotations

import os

import uvicorn

from router.settings import get_settings
from serving.metrics import reset_multiprocess_dir
from serving.store import Store


def main() -> None:
    settings = get_settings()
    # Migrate once here, before uvicorn forks its workers: concurrent first-time migrations race.
    store = Store(settings.database_url)
    store.migrate()
    store.dispose()
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
