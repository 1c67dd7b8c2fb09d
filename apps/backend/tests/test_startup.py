"""Start-up cost: what every Pod start and every migration Job waits for."""

import subprocess
import sys
from pathlib import Path

BACKEND = Path(__file__).resolve().parent.parent


def loaded_after(statement: str) -> set[str]:
    """The top-level modules a fresh interpreter holds after `statement`."""
    out = subprocess.run(
        [sys.executable, "-c", f"{statement}\nimport sys\nprint(' '.join(sorted({{m.split('.')[0] for m in sys.modules}})))"],
        cwd=BACKEND,
        check=True,
        capture_output=True,
        text=True,
    ).stdout
    return set(out.split())


def test_the_api_starts_without_importing_the_chat_agents_mcp_and_openai_stacks():
    # Each costs about a second of imports; the agent imports them on the first chat request.
    modules = loaded_after("import app.main")
    assert "mcp" not in modules
    assert "openai" not in modules


def test_a_migration_imports_neither_the_agent_nor_the_web_framework():
    modules = loaded_after("import app.migrate")
    assert "mcp" not in modules
    assert "fastapi" not in modules
