"""Fixtures: a real PostgreSQL (TEST_DATABASE_URL, or a throwaway cluster started here via
apps/scripts/pg.sh), a TestClient with the app's lifespan, and JWT helpers."""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
import time
from pathlib import Path

import jwt
import pytest

SECRET = "test-secret-" + "x" * 56  # >= 64 bytes so the HS512 negative test stays warning-free
PG_SCRIPT = Path(__file__).resolve().parents[2] / "scripts" / "pg.sh"


def _start_pg() -> tuple[str, str]:
    tmp = tempfile.mkdtemp(prefix="todo-pg-")
    os.chmod(tmp, 0o755)
    url = subprocess.run([str(PG_SCRIPT), "start", tmp], check=True, capture_output=True, text=True).stdout.strip()
    return url, tmp


_pg_dir: str | None = None
if not os.environ.get("TEST_DATABASE_URL"):
    os.environ["TEST_DATABASE_URL"], _pg_dir = _start_pg()

# Set before the app is imported: settings are read once and cached.
os.environ["DATABASE_URL"] = os.environ["TEST_DATABASE_URL"]
os.environ["JWT_SECRET"] = SECRET
os.environ.pop("OPENAI_API_KEY", None)
os.environ.setdefault("LOG_LEVEL", "warning")

from fastapi.testclient import TestClient  # noqa: E402
from sqlalchemy import text  # noqa: E402

from app.db import create_tables, get_engine  # noqa: E402
from app.main import app  # noqa: E402


def pytest_sessionfinish(session, exitstatus):
    if _pg_dir:
        from app.db import dispose_engine

        dispose_engine()
        subprocess.run([str(PG_SCRIPT), "stop", _pg_dir], check=False)
        shutil.rmtree(_pg_dir, ignore_errors=True)


def make_token(sub: str, secret: str = SECRET, **extra) -> str:
    return jwt.encode({"sub": sub, "exp": int(time.time()) + 300, **extra}, secret, algorithm="HS256")


def auth(sub: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {make_token(sub)}"}


@pytest.fixture(autouse=True)
def clean_db():
    create_tables()
    with get_engine().begin() as conn:
        conn.execute(text("TRUNCATE task, message, conversation RESTART IDENTITY CASCADE"))
    yield


@pytest.fixture
def client():
    with TestClient(app) as c:  # runs the lifespan: startup migration + shutdown dispose
        yield c


@pytest.fixture
def alice(client):
    """A client pre-authenticated as user 'alice'."""
    client.headers.update(auth("alice"))
    return client
