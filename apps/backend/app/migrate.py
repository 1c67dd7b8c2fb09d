"""`python -m app.migrate`: what the chart's pre-install/pre-upgrade hook Job runs."""

from __future__ import annotations

import logging
import sys

from .config import get_settings
from .db import dispose_engine, wait_and_create_tables


def main() -> int:
    settings = get_settings()
    logging.basicConfig(level=settings.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        wait_and_create_tables(settings.db_startup_timeout)
    except Exception as exc:  # noqa: BLE001 - a Job reports failure by exit code
        logging.getLogger("app.migrate").error("migration failed: %s", exc)
        return 1
    finally:
        dispose_engine()
    logging.getLogger("app.migrate").info("schema is up to date")
    return 0


if __name__ == "__main__":
    sys.exit(main())
