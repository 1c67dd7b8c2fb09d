"""Engine, sessions and concurrency-safe table creation."""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator

from sqlalchemy import Engine, text
from sqlalchemy.exc import OperationalError
from sqlmodel import Session, SQLModel, create_engine

from . import models  # noqa: F401  (registers the tables on SQLModel.metadata)
from .config import get_settings

log = logging.getLogger(__name__)

# Arbitrary but fixed: every replica and the migration Job contend for the same lock.
MIGRATION_LOCK_KEY = 0x70D0C4A7

_engine: Engine | None = None


def get_engine() -> Engine:
    global _engine
    if _engine is None:
        _engine = create_engine(
            get_settings().database_url,
            pool_pre_ping=True,  # survive a PostgreSQL restart without serving stale connections
            pool_size=5,
            max_overflow=5,
            connect_args={"connect_timeout": 5},
        )
    return _engine


def dispose_engine() -> None:
    global _engine
    if _engine is not None:
        _engine.dispose()
        _engine = None


def get_session() -> Iterator[Session]:
    with Session(get_engine()) as session:
        yield session


def create_tables(engine: Engine | None = None) -> None:
    """create_all under a transaction-scoped advisory lock.

    Two replicas (or a replica and the hook Job) starting at once would otherwise race on
    CREATE TABLE and one would die on a duplicate-object error. The lock serialises them;
    whoever comes second finds the tables present (checkfirst) and does nothing.
    """
    engine = engine or get_engine()
    with engine.begin() as conn:
        conn.execute(text("SELECT pg_advisory_xact_lock(:k)"), {"k": MIGRATION_LOCK_KEY})
        SQLModel.metadata.create_all(conn)


def wait_and_create_tables(timeout: float) -> None:
    """Retry until the database accepts connections (it may start after us), then migrate."""
    deadline = time.monotonic() + timeout
    delay = 0.5
    while True:
        try:
            create_tables()
            return
        except OperationalError as exc:
            if time.monotonic() >= deadline:
                raise
            log.warning("database not reachable yet (%s); retrying in %.1fs", exc.orig or exc, delay)
            time.sleep(delay)
            delay = min(delay * 2, 5.0)


def ping() -> bool:
    try:
        with get_engine().connect() as conn:
            conn.execute(text("SELECT 1"))
        return True
    except Exception:  # noqa: BLE001 - readiness must answer, never raise
        log.warning("readiness check: database unreachable", exc_info=log.isEnabledFor(logging.DEBUG))
        return False
