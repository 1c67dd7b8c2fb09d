"""MCP server exposing the task tools (official MCP Python SDK; in mcp 2.x FastMCP is
named MCPServer).

The chat agent calls these same registered tools in-process through `call_tool`, so the
model-facing surface is exactly what an external MCP client sees. `python -m app.mcp_server`
serves them over stdio for local MCP clients. The tools take `user_id` explicitly; the
HTTP chat route fills it from the verified JWT subject, never from model output.
"""

from __future__ import annotations

from typing import Annotated, Any

from mcp.server.mcpserver import MCPServer
from mcp.server.mcpserver.exceptions import ToolError
from pydantic import Field
from sqlmodel import Session

from . import tasks
from .db import get_engine
from .models import StatusFilter

mcp = MCPServer(name="todo-tasks", instructions="Manage a user's todo list.")

UserId = Annotated[str, Field(min_length=1, max_length=64, description="Owner of the tasks")]
TaskId = Annotated[int, Field(ge=1, le=2_147_483_647, description="Task id")]
Title = Annotated[str, Field(min_length=1, max_length=200)]
Description = Annotated[str, Field(max_length=1000)]


def _session() -> Session:
    return Session(get_engine())


def _checked(text: str | None) -> str | None:
    if text is not None and "\x00" in text:
        raise ToolError("text must not contain NUL characters")
    if text is not None and not text.strip():
        raise ToolError("text must not be blank")
    return text.strip() if text is not None else None


@mcp.tool()
def add_task(user_id: UserId, title: Title, description: Description | None = None) -> dict[str, Any]:
    """Create a new pending task."""
    with _session() as s:
        task = tasks.create(s, user_id, _checked(title), _checked(description) if description else None)
        return {"task_id": task.id, "status": "created", "title": task.title}


@mcp.tool()
def list_tasks(user_id: UserId, status: StatusFilter = "all") -> dict[str, Any]:
    """List tasks; status is one of pending, completed, all."""
    with _session() as s:
        return {"tasks": [tasks.to_dict(t) for t in tasks.list_(s, user_id, status)]}


@mcp.tool()
def complete_task(user_id: UserId, task_id: TaskId) -> dict[str, Any]:
    """Mark a task as completed."""
    with _session() as s:
        try:
            task = tasks.update(s, user_id, task_id, completed=True)
        except tasks.TaskNotFound as exc:
            raise ToolError(str(exc)) from None
        return {"task_id": task.id, "status": "completed", "title": task.title}


@mcp.tool()
def delete_task(user_id: UserId, task_id: TaskId) -> dict[str, Any]:
    """Delete a task."""
    with _session() as s:
        try:
            task = tasks.delete(s, user_id, task_id)
        except tasks.TaskNotFound as exc:
            raise ToolError(str(exc)) from None
        return {"task_id": task_id, "status": "deleted", "title": task.title}


@mcp.tool()
def update_task(
    user_id: UserId, task_id: TaskId, title: Title | None = None, description: Description | None = None
) -> dict[str, Any]:
    """Change a task's title and/or description."""
    if title is None and description is None:
        raise ToolError("give a new title or description")
    with _session() as s:
        try:
            task = tasks.update(s, user_id, task_id, title=_checked(title), description=_checked(description))
        except tasks.TaskNotFound as exc:
            raise ToolError(str(exc)) from None
        return {"task_id": task.id, "status": "updated", "title": task.title}


if __name__ == "__main__":
    mcp.run("stdio")
