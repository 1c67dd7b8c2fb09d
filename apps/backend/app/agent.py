"""The chat agent: turns one user message (plus history) into MCP tool calls and a reply.

Two interchangeable implementations:
- OpenAIAgent: an OpenAI-compatible chat model with tool calling (when OPENAI_API_KEY is set);
- RuleAgent: a deterministic intent parser, so the stack works offline and tests are exact.
Both call tools only through `call_tool`, which goes through the MCP server's tool manager
(argument validation included) and always injects the authenticated user_id.
"""

from __future__ import annotations

import json
import logging
import re
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Any, Protocol

from mcp.server.mcpserver.exceptions import ToolError

from .config import get_settings
from .mcp_server import mcp

log = logging.getLogger(__name__)

MAX_TOOL_ROUNDS = 5


@dataclass
class AgentResult:
    response: str
    tool_calls: list[dict[str, Any]] = field(default_factory=list)


async def call_tool(user_id: str, name: str, arguments: dict[str, Any], record: list[dict[str, Any]]) -> dict[str, Any]:
    """Call an MCP tool as `user_id`; tool errors come back as {"error": ...} so an agent
    can explain them instead of failing the request."""
    args = {k: v for k, v in arguments.items() if k != "user_id"}
    try:
        result = await mcp.call_tool(name, {**args, "user_id": user_id})
        if result.is_error:
            text = " ".join(getattr(c, "text", "") for c in result.content).strip()
            out: dict[str, Any] = {"error": text or "tool failed"}
        else:
            out = result.structured_content or {}
    except ToolError as exc:
        out = {"error": str(exc)}
    record.append({"tool": name, "arguments": args, "result": out})
    return out


class Agent(Protocol):
    async def run(self, user_id: str, history: list[dict[str, str]], message: str) -> AgentResult: ...


# ---------------------------------------------------------------- built-in parser

HELP = (
    "I can manage your tasks. Try: \"add buy milk\", \"list my pending tasks\", "
    "\"complete task 3\", \"delete task 2\" or \"rename task 1 to call mom\"."
)

_NUM = r"(?:task\s*)?#?(\d{1,9})"
_RENAME = re.compile(rf"^(?:rename|update|change|edit)\s+{_NUM}\s*(?:to|into|as|:)\s*(.+)$", re.I)
_COMPLETE = re.compile(r"^(?:complete|finish|finished|done(?:\s+with)?|mark|check(?:\s+off)?|i\s+(?:finished|completed|did))\s+(.+?)(?:\s+as\s+(?:done|complete|completed))?$", re.I)
_DELETE = re.compile(r"^(?:delete|remove|cancel|drop|forget)\s+(.+)$", re.I)
_LIST = re.compile(r"\b(?:list|show|what|which|display|see|view)\b.*\b(?:tasks?|todos?|list|to-?dos?)\b|^(?:tasks|todos|my tasks)$", re.I)
_ADD = re.compile(r"^(?:add|create|new|remember(?:\s+to)?|remind\s+me\s+to|i\s+need\s+to|todo:?)\s+(?:a\s+)?(?:new\s+)?(?:task\s*(?:to|:)?\s*)?(.+)$", re.I)
_REF_ID = re.compile(rf"^{_NUM}$", re.I)


def _status_of(text: str) -> str:
    t = text.lower()
    if re.search(r"\b(pending|open|todo|remaining|incomplete|not done|unfinished)\b", t):
        return "pending"
    if re.search(r"\b(completed|complete|done|finished)\b", t):
        return "completed"
    return "all"


def _fmt(tasks: list[dict[str, Any]]) -> str:
    return "\n".join(f"{'✓' if t['completed'] else '○'} #{t['id']} {t['title']}" for t in tasks)


class RuleAgent:
    """Deterministic intent parser. Order matters: the id-bearing verbs first, so
    "complete task 3" is never read as "add"."""

    async def run(self, user_id: str, history: list[dict[str, str]], message: str) -> AgentResult:
        calls: list[dict[str, Any]] = []
        text = message.strip().rstrip(".!?").strip()
        text = re.sub(r"^(?:please|pls|can you|could you)\s+", "", text, flags=re.I)

        if m := _RENAME.match(text):
            new_title = m.group(2).strip().strip("\"'")
            out = await call_tool(user_id, "update_task", {"task_id": int(m.group(1)), "title": new_title}, calls)
            return AgentResult(self._done(out, f"Renamed task #{m.group(1)} to \"{new_title}\"."), calls)

        if m := _COMPLETE.match(text):
            task_id, err = await self._resolve(user_id, m.group(1), calls)
            if err:
                return AgentResult(err, calls)
            out = await call_tool(user_id, "complete_task", {"task_id": task_id}, calls)
            return AgentResult(self._done(out, f"Marked task #{task_id} \"{out.get('title')}\" as completed."), calls)

        if m := _DELETE.match(text):
            task_id, err = await self._resolve(user_id, m.group(1), calls)
            if err:
                return AgentResult(err, calls)
            out = await call_tool(user_id, "delete_task", {"task_id": task_id}, calls)
            return AgentResult(self._done(out, f"Deleted task #{task_id} \"{out.get('title')}\"."), calls)

        if _LIST.search(text):
            status = _status_of(text)
            out = await call_tool(user_id, "list_tasks", {"status": status}, calls)
            items = out.get("tasks", [])
            label = "" if status == "all" else f"{status} "
            if not items:
                return AgentResult(f"You have no {label}tasks.", calls)
            return AgentResult(f"Your {label}tasks:\n{_fmt(items)}", calls)

        if m := _ADD.match(text):
            title = m.group(1).strip().strip("\"'")
            title = re.sub(r"\s+(?:to|on|in)\s+my\s+(?:todo\s+)?list$", "", title, flags=re.I).strip()
            out = await call_tool(user_id, "add_task", {"title": title[:200]}, calls)
            return AgentResult(self._done(out, f"Added task #{out.get('task_id')}: \"{out.get('title')}\"."), calls)

        if re.match(r"^(?:hi|hello|hey|help|\?)\b", text, re.I):
            return AgentResult(HELP, calls)
        return AgentResult(f"Sorry, I didn't understand that. {HELP}", calls)

    @staticmethod
    def _done(out: dict[str, Any], ok: str) -> str:
        return f"Sorry, that failed: {out['error']}." if "error" in out else ok

    @staticmethod
    async def _resolve(user_id: str, ref: str, calls: list[dict[str, Any]]) -> tuple[int | None, str | None]:
        """A task reference is an id ("3", "task #3") or a unique piece of a title."""
        ref = ref.strip().strip("\"'")
        if m := _REF_ID.match(ref):
            return int(m.group(1)), None
        ref = re.sub(r"^(?:the\s+)?(?:task\s+)?", "", ref, flags=re.I).strip()
        out = await call_tool(user_id, "list_tasks", {"status": "all"}, calls)
        hits = [t for t in out.get("tasks", []) if ref.lower() in t["title"].lower()]
        if len(hits) == 1:
            return hits[0]["id"], None
        if not hits:
            return None, f"I couldn't find a task matching \"{ref}\"."
        return None, f"Several tasks match \"{ref}\"; which one?\n{_fmt(hits)}"


# ---------------------------------------------------------------- LLM agent

SYSTEM_PROMPT = (
    "You are a concise todo-list assistant. Use the tools to add, list, complete, delete "
    "and update the user's tasks; never invent task ids - list tasks first when unsure. "
    "After acting, confirm briefly what you did."
)


async def openai_tools() -> list[dict[str, Any]]:
    """The MCP tool schemas in OpenAI's format, minus user_id (which the server injects)."""
    out = []
    for tool in await mcp.list_tools():
        schema = json.loads(json.dumps(tool.input_schema))
        schema.get("properties", {}).pop("user_id", None)
        if "required" in schema:
            schema["required"] = [r for r in schema["required"] if r != "user_id"]
        out.append({"type": "function", "function": {"name": tool.name, "description": tool.description or "", "parameters": schema}})
    return out


class OpenAIAgent:
    def __init__(self, client: Any = None, model: str | None = None):
        settings = get_settings()
        if client is None:
            from openai import AsyncOpenAI  # imported lazily: the offline path never needs it

            client = AsyncOpenAI(api_key=settings.openai_api_key, base_url=settings.openai_base_url, timeout=30.0)
        self.client = client
        self.model = model or settings.openai_model

    async def run(self, user_id: str, history: list[dict[str, str]], message: str) -> AgentResult:
        calls: list[dict[str, Any]] = []
        messages: list[dict[str, Any]] = [{"role": "system", "content": SYSTEM_PROMPT}, *history, {"role": "user", "content": message}]
        tools = await openai_tools()
        known = {t["function"]["name"] for t in tools}
        for _ in range(MAX_TOOL_ROUNDS):
            completion = await self.client.chat.completions.create(model=self.model, messages=messages, tools=tools)
            choice = completion.choices[0].message
            if not choice.tool_calls:
                return AgentResult(choice.content or "", calls)
            messages.append({
                "role": "assistant",
                "content": choice.content,
                "tool_calls": [
                    {"id": tc.id, "type": "function", "function": {"name": tc.function.name, "arguments": tc.function.arguments}}
                    for tc in choice.tool_calls
                ],
            })
            for tc in choice.tool_calls:
                try:
                    args = json.loads(tc.function.arguments or "{}")
                    if not isinstance(args, dict):
                        raise ValueError("arguments must be an object")
                except ValueError as exc:
                    result: dict[str, Any] = {"error": f"bad arguments: {exc}"}
                else:
                    if tc.function.name in known:
                        result = await call_tool(user_id, tc.function.name, args, calls)
                    else:
                        result = {"error": f"unknown tool {tc.function.name}"}
                messages.append({"role": "tool", "tool_call_id": tc.id, "content": json.dumps(result)})
        return AgentResult("Sorry, I couldn't finish that request.", calls)


@lru_cache
def get_agent() -> Agent:
    # One agent per process: the OpenAI client holds a connection pool worth reusing.
    return OpenAIAgent() if get_settings().openai_api_key else RuleAgent()
