"""Settings come from the environment only (12-factor): the chart injects them from a
ConfigMap and a Secret, so nothing secret is ever baked into the image."""

from __future__ import annotations

import os
from dataclasses import dataclass
from functools import lru_cache


def _normalize_db_url(url: str) -> str:
    # Accept the libpq-style "postgresql://" (what most charts and operators hand out)
    # and pin the driver SQLAlchemy should use: psycopg 3.
    for prefix in ("postgresql://", "postgres://"):
        if url.startswith(prefix):
            return "postgresql+psycopg://" + url[len(prefix):]
    return url


@dataclass(frozen=True)
class Settings:
    database_url: str
    jwt_secret: str
    openai_api_key: str | None
    openai_base_url: str | None
    openai_model: str
    log_level: str
    migrate_on_startup: bool
    db_startup_timeout: float


@lru_cache
def get_settings() -> Settings:
    return Settings(
        database_url=_normalize_db_url(
            os.environ.get("DATABASE_URL", "postgresql+psycopg://todo:todo@localhost:5432/todo")
        ),
        jwt_secret=os.environ.get("JWT_SECRET", ""),
        openai_api_key=os.environ.get("OPENAI_API_KEY") or None,
        openai_base_url=os.environ.get("OPENAI_BASE_URL") or None,
        openai_model=os.environ.get("OPENAI_MODEL", "gpt-4o-mini"),
        log_level=os.environ.get("LOG_LEVEL", "info").lower(),
        migrate_on_startup=os.environ.get("MIGRATE_ON_STARTUP", "true").lower() not in ("0", "false", "no"),
        db_startup_timeout=float(os.environ.get("DB_STARTUP_TIMEOUT", "45")),
    )
