"""Database tables and the request/response schemas of the REST API."""

from __future__ import annotations

from datetime import datetime, timezone
from typing import Annotated, Literal

from pydantic import AfterValidator, BaseModel, ConfigDict, Field as PField, StringConstraints
from sqlmodel import Field, SQLModel


def utcnow() -> datetime:
    return datetime.now(timezone.utc)


# PostgreSQL text cannot hold NUL; rejecting it here turns a would-be 500 into a 422.
def _no_nul(v: str | None) -> str | None:
    if v is not None and "\x00" in v:
        raise ValueError("must not contain NUL characters")
    return v


Title = Annotated[str, StringConstraints(strip_whitespace=True, min_length=1, max_length=200), AfterValidator(_no_nul)]
Description = Annotated[str, StringConstraints(max_length=1000), AfterValidator(_no_nul)]
StatusFilter = Literal["pending", "completed", "all"]
# SERIAL ids are int4; bounding them keeps huge ids a 422 instead of a driver overflow.
TaskId = Annotated[int, PField(ge=1, le=2_147_483_647)]


class Task(SQLModel, table=True):
    id: int | None = Field(default=None, primary_key=True)
    user_id: str = Field(index=True, max_length=64)
    title: str = Field(max_length=200)
    description: str | None = Field(default=None, max_length=1000)
    completed: bool = Field(default=False, index=True)
    created_at: datetime = Field(default_factory=utcnow)
    updated_at: datetime = Field(default_factory=utcnow)


class Conversation(SQLModel, table=True):
    id: int | None = Field(default=None, primary_key=True)
    user_id: str = Field(index=True, max_length=64)
    created_at: datetime = Field(default_factory=utcnow)
    updated_at: datetime = Field(default_factory=utcnow)


class Message(SQLModel, table=True):
    id: int | None = Field(default=None, primary_key=True)
    conversation_id: int = Field(foreign_key="conversation.id", index=True, ondelete="CASCADE")
    user_id: str = Field(index=True, max_length=64)
    role: str = Field(max_length=16)  # "user" | "assistant"
    content: str
    created_at: datetime = Field(default_factory=utcnow)


class _Strict(BaseModel):
    # Unknown fields are a client bug worth reporting, not silently dropping.
    model_config = ConfigDict(extra="forbid")


class TaskCreate(_Strict):
    title: Title
    description: Description | None = None


class TaskUpdate(_Strict):
    title: Title | None = None
    description: Description | None = None
    completed: bool | None = None


class TaskRead(BaseModel):
    id: int
    user_id: str
    title: str
    description: str | None
    completed: bool
    created_at: datetime
    updated_at: datetime


class ChatRequest(_Strict):
    conversation_id: TaskId | None = None
    message: Annotated[str, StringConstraints(strip_whitespace=True, min_length=1, max_length=4000), AfterValidator(_no_nul)]


class ToolCall(BaseModel):
    tool: str
    arguments: dict
    result: dict | list | str | None = None


class ChatResponse(BaseModel):
    conversation_id: int
    response: str
    tool_calls: list[ToolCall]
