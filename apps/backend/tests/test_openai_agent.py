"""The LLM agent's tool loop, driven by a scripted fake of the OpenAI client (no network)."""

import json
from types import SimpleNamespace as NS

import pytest

from app import agent as agent_mod
from app.agent import OpenAIAgent, openai_tools

pytestmark = pytest.mark.anyio


@pytest.fixture
def anyio_backend():
    return "asyncio"


def _tool_call(i, name, args):
    return NS(id=f"call_{i}", type="function", function=NS(name=name, arguments=args if isinstance(args, str) else json.dumps(args)))


class FakeClient:
    def __init__(self, script):
        self.script = list(script)
        self.requests = []
        self.chat = NS(completions=NS(create=self._create))

    async def _create(self, **kwargs):
        self.requests.append(json.loads(json.dumps(kwargs["messages"])))
        msg = self.script.pop(0)
        return NS(choices=[NS(message=msg)])


async def test_tool_schemas_hide_user_id():
    tools = await openai_tools()
    assert {t["function"]["name"] for t in tools} == {"add_task", "list_tasks", "complete_task", "delete_task", "update_task"}
    for t in tools:
        assert "user_id" not in t["function"]["parameters"]["properties"]
        assert "user_id" not in t["function"]["parameters"].get("required", [])


async def test_tool_loop_injects_the_authenticated_user():
    fake = FakeClient([
        # the model even tries to act as someone else: the server overrides user_id
        NS(content=None, tool_calls=[_tool_call(1, "add_task", {"title": "buy milk", "user_id": "mallory"}),
                                     _tool_call(2, "bogus_tool", {}),
                                     _tool_call(3, "list_tasks", "{not json")]),
        NS(content=None, tool_calls=[_tool_call(4, "list_tasks", {"status": "pending"})]),
        NS(content="Added buy milk.", tool_calls=None),
    ])
    result = await OpenAIAgent(client=fake, model="m").run("alice", [{"role": "user", "content": "earlier"}], "add buy milk")
    assert result.response == "Added buy milk."
    assert [c["tool"] for c in result.tool_calls] == ["add_task", "list_tasks"]
    assert result.tool_calls[1]["result"]["tasks"][0]["user_id"] == "alice"
    # the model saw the history and got every tool result back, errors included
    first, last = fake.requests[0], fake.requests[-1]
    assert [m["role"] for m in first] == ["system", "user", "user"]
    tool_msgs = [json.loads(m["content"]) for m in last if m["role"] == "tool"]
    assert tool_msgs[0]["task_id"] == 1 and "unknown tool" in tool_msgs[1]["error"] and "bad arguments" in tool_msgs[2]["error"]


async def test_gives_up_after_max_rounds(monkeypatch):
    monkeypatch.setattr(agent_mod, "MAX_TOOL_ROUNDS", 2)
    loop = NS(content=None, tool_calls=[_tool_call(1, "list_tasks", {})])
    result = await OpenAIAgent(client=FakeClient([loop, loop]), model="m").run("alice", [], "loop")
    assert "couldn't finish" in result.response and len(result.tool_calls) == 2


def test_chat_reports_model_outage_as_502(alice, monkeypatch):
    class Broken:
        async def run(self, *a):
            raise ConnectionError("model down")

    monkeypatch.setattr("app.main.get_agent", lambda: Broken())
    r = alice.post("/api/alice/chat", json={"message": "hi"})
    assert r.status_code == 502 and r.json()["error"] == "error"
