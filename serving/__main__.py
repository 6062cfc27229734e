"""`python -m serving`: run the service with uvicorn (uvloop + httptools) on the configured host and port."""

from __future__ import annotations

import uvicorn

from router.settings import get_settings


def main() -> None:
    settings = get_settings()
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
