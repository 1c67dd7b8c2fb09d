"""The MCP tools, called through the SDK's in-process client session (the real protocol
handlers: tool listing, argument validation, structured results, error results)."""

import pytest
from mcp import Client

from app.mcp_server import mcp

pytestmark = pytest.mark.anyio

TOOLS = {"add_task", "list_tasks", "complete_task", "delete_task", "update_task"}


@pytest.fixture
def anyio_backend():
    return "asyncio"


async def test_lists_the_five_tools():
    async with Client(mcp) as c:
        tools = {t.name: t for t in (await c.list_tools()).tools}
    assert set(tools) == TOOLS
    assert tools["add_task"].input_schema["required"] == ["user_id", "title"]
    assert set(tools["list_tasks"].input_schema["properties"]["status"]["enum"]) == {"pending", "completed", "all"}


async def test_tool_round_trip():
    async with Client(mcp) as c:
        r = await c.call_tool("add_task", {"user_id": "u1", "title": "buy milk"})
        assert not r.is_error and r.structured_content == {"task_id": 1, "status": "created", "title": "buy milk"}
        await c.call_tool("add_task", {"user_id": "u1", "title": "walk dog", "description": "30 min"})
        await c.call_tool("add_task", {"user_id": "u2", "title": "not yours"})

        r = await c.call_tool("complete_task", {"user_id": "u1", "task_id": 1})
        assert r.structured_content["status"] == "completed"

        r = await c.call_tool("list_tasks", {"user_id": "u1", "status": "pending"})
        assert [t["title"] for t in r.structured_content["tasks"]] == ["walk dog"]
        r = await c.call_tool("list_tasks", {"user_id": "u1"})
        assert [(t["id"], t["completed"]) for t in r.structured_content["tasks"]] == [(1, True), (2, False)]

        r = await c.call_tool("update_task", {"user_id": "u1", "task_id": 2, "title": "walk the dog"})
        assert r.structured_content == {"task_id": 2, "status": "updated", "title": "walk the dog"}

        r = await c.call_tool("delete_task", {"user_id": "u1", "task_id": 2})
        assert r.structured_content == {"task_id": 2, "status": "deleted", "title": "walk the dog"}
        r = await c.call_tool("list_tasks", {"user_id": "u1", "status": "all"})
        assert len(r.structured_content["tasks"]) == 1


@pytest.mark.parametrize(
    "name,args",
    [
        ("complete_task", {"user_id": "u1", "task_id": 99}),  # missing
        ("delete_task", {"user_id": "u2", "task_id": 1}),  # someone else's
        ("update_task", {"user_id": "u1", "task_id": 1}),  # nothing to change
        ("add_task", {"user_id": "u1", "title": ""}),  # schema violation
        ("add_task", {"user_id": "u1", "title": "   "}),  # blank
        ("add_task", {"user_id": "u1", "title": "a\x00b"}),  # NUL
        ("add_task", {"title": "no owner"}),  # missing user_id
        ("list_tasks", {"user_id": "u1", "status": "bogus"}),
        ("complete_task", {"user_id": "u1", "task_id": 0}),
        ("no_such_tool", {}),
    ],
)
async def test_bad_calls_are_tool_errors(name, args):
    async with Client(mcp) as c:
        await c.call_tool("add_task", {"user_id": "u1", "title": "first"})
        r = await c.call_tool(name, args)
    assert r.is_error, r
    assert r.content and r.content[0].text
