"""`python -m serving`: run the service with uvicorn (uvloop + httptools) on the configured host and port."""

from __future__ import annotations

import uvicorn

from router.settings import get_settings
from serving.store import Store


def main() -> None:
    settings = get_settings()
    # Migrate once here, before uvicorn forks its workers: concurrent first-time migrations race.
    store = Store(settings.database_url)
    store.migrate()
    store.dispose()
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
