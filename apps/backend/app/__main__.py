"""`python -m app`: the container entry point (uvicorn with env-driven log level)."""

import logging
import os

import uvicorn

from .config import get_settings

if __name__ == "__main__":
    level = get_settings().log_level
    logging.basicConfig(level=level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    uvicorn.run(
        "app.main:app",
        host=os.environ.get("HOST", "0.0.0.0"),  # noqa: S104 - a container listens on all interfaces
        port=int(os.environ.get("PORT", "8000")),
        log_level=level,
        proxy_headers=True,
        server_header=False,
        # SIGTERM: stop accepting, let in-flight requests finish (< the pod's grace period).
        timeout_graceful_shutdown=20,
    )
