"""Table creation is safe when several replicas (and the hook Job) start at once."""

import os
import subprocess
import sys
import threading
from pathlib import Path

from sqlalchemy import create_engine, inspect
from sqlmodel import SQLModel

from app.config import get_settings
from app.db import create_tables, get_engine


def _drop_all():
    SQLModel.metadata.drop_all(get_engine())


def test_concurrent_create_tables():
    _drop_all()
    errors = []
    barrier = threading.Barrier(4)

    def replica():
        engine = create_engine(get_settings().database_url)  # one engine per "pod"
        try:
            barrier.wait()
            create_tables(engine)
        except Exception as exc:  # noqa: BLE001
            errors.append(exc)
        finally:
            engine.dispose()

    threads = [threading.Thread(target=replica) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    assert {"task", "conversation", "message"} <= set(inspect(get_engine()).get_table_names())


def test_migrate_entry_point():
    _drop_all()
    backend = Path(__file__).resolve().parents[1]
    r = subprocess.run([sys.executable, "-m", "app.migrate"], cwd=backend, env={**os.environ, "LOG_LEVEL": "info"},
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    assert "schema is up to date" in r.stderr
    assert "task" in inspect(get_engine()).get_table_names()


def test_migrate_fails_cleanly_without_database():
    backend = Path(__file__).resolve().parents[1]
    env = {**os.environ, "DATABASE_URL": "postgresql://nobody@127.0.0.1:1/none", "DB_STARTUP_TIMEOUT": "1"}
    r = subprocess.run([sys.executable, "-m", "app.migrate"], cwd=backend, env=env, capture_output=True, text=True, timeout=60)
    assert r.returncode == 1 and "migration failed" in r.stderr
