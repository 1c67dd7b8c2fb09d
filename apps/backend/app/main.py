"""FastAPI application: health, tasks REST API and the stateless chat endpoint."""

from __future__ import annotations

import logging
from contextlib import asynccontextmanager
from typing import Annotated, Any

from fastapi import Depends, FastAPI, HTTPException, Query, Request, status
from fastapi.encoders import jsonable_encoder
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from sqlmodel import Session, select
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException as StarletteHTTPException

from . import __version__, tasks
from .auth import CurrentUser
from .config import get_settings
from .db import dispose_engine, get_session, ping, wait_and_create_tables
from .models import (
    ChatRequest,
    ChatResponse,
    Conversation,
    Message,
    StatusFilter,
    TaskCreate,
    TaskId,
    TaskRead,
    TaskUpdate,
    utcnow,
)


def get_agent() -> Any:
    """The chat agent, imported on first use: the MCP server it drives costs about a second of
    imports, which every Pod start (and readiness) would otherwise wait for."""
    from .agent import get_agent as agent

    return agent()


log = logging.getLogger("app")

HISTORY_LIMIT = 50  # messages of context handed to the agent; the DB keeps them all


@asynccontextmanager
async def lifespan(app: FastAPI):
    settings = get_settings()
    if not settings.jwt_secret:
        log.warning("JWT_SECRET is not set: every user route will answer 503")
    if settings.migrate_on_startup:
        await run_in_threadpool(wait_and_create_tables, settings.db_startup_timeout)
    log.info("backend %s ready (agent: %s)", __version__, "openai" if settings.openai_api_key else "built-in parser")
    yield
    # uvicorn has stopped accepting and drained requests (SIGTERM); release DB connections.
    dispose_engine()


app = FastAPI(title="todo-chatbot backend", version=__version__, lifespan=lifespan)


# ---------------------------------------------------------------- uniform JSON errors

@app.exception_handler(RequestValidationError)
async def _validation_error(request: Request, exc: RequestValidationError) -> JSONResponse:
    errors = [
        {"loc": list(e.get("loc", ())), "msg": e.get("msg", ""), "type": e.get("type", "")}
        for e in exc.errors()
    ]
    return JSONResponse(
        status_code=422,
        content=jsonable_encoder({"error": "validation_error", "detail": errors}),
    )


@app.exception_handler(StarletteHTTPException)
async def _http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
    return JSONResponse(
        status_code=exc.status_code,
        content={"error": _ERROR_CODES.get(exc.status_code, "error"), "detail": exc.detail},
        headers=exc.headers,
    )


@app.exception_handler(tasks.TaskNotFound)
async def _not_found(request: Request, exc: tasks.TaskNotFound) -> JSONResponse:
    return JSONResponse(status_code=404, content={"error": "not_found", "detail": str(exc)})


_ERROR_CODES = {400: "bad_request", 401: "unauthorized", 403: "forbidden", 404: "not_found",
                405: "method_not_allowed", 503: "unavailable"}


# ---------------------------------------------------------------- probes

@app.get("/health", tags=["probes"])
def health() -> dict:
    """Liveness: the process serves requests. Deliberately ignores the database so a DB
    outage doesn't make Kubernetes restart every backend pod."""
    return {"status": "ok", "version": __version__}


@app.get("/ready", tags=["probes"])
def ready() -> JSONResponse:
    if ping():
        return JSONResponse({"status": "ready"})
    return JSONResponse({"status": "unavailable", "detail": "database unreachable"}, status_code=503)


# ---------------------------------------------------------------- tasks

DB = Annotated[Session, Depends(get_session)]


@app.post("/api/{user_id}/tasks", response_model=TaskRead, status_code=201, tags=["tasks"])
def create_task(user_id: CurrentUser, body: TaskCreate, db: DB):
    return tasks.create(db, user_id, body.title, body.description)


@app.get("/api/{user_id}/tasks", response_model=list[TaskRead], tags=["tasks"])
def list_tasks(user_id: CurrentUser, db: DB, status: Annotated[StatusFilter, Query()] = "all"):
    return tasks.list_(db, user_id, status)


@app.get("/api/{user_id}/tasks/{task_id}", response_model=TaskRead, tags=["tasks"])
def get_task(user_id: CurrentUser, task_id: TaskId, db: DB):
    return tasks.get(db, user_id, task_id)


@app.put("/api/{user_id}/tasks/{task_id}", response_model=TaskRead, tags=["tasks"])
def update_task(user_id: CurrentUser, task_id: TaskId, body: TaskUpdate, db: DB):
    changes = body.model_dump(exclude_unset=True)
    if not changes or all(v is None for v in changes.values()):
        raise HTTPException(400, "nothing to update: give title, description or completed")
    return tasks.update(db, user_id, task_id, **changes)


@app.patch("/api/{user_id}/tasks/{task_id}/complete", response_model=TaskRead, tags=["tasks"])
def complete_task(user_id: CurrentUser, task_id: TaskId, db: DB):
    # Idempotent "mark done"; reopening a task is PUT {"completed": false}.
    return tasks.update(db, user_id, task_id, completed=True)


@app.delete("/api/{user_id}/tasks/{task_id}", status_code=204, tags=["tasks"])
def delete_task(user_id: CurrentUser, task_id: TaskId, db: DB) -> None:
    tasks.delete(db, user_id, task_id)


# ---------------------------------------------------------------- chat

def _load_conversation(db: Session, user_id: str, conversation_id: int | None) -> tuple[Conversation, list[dict]]:
    if conversation_id is None:
        conv = Conversation(user_id=user_id)
        db.add(conv)
        db.commit()
        db.refresh(conv)
        return conv, []
    conv = db.get(Conversation, conversation_id)
    if conv is None or conv.user_id != user_id:
        raise HTTPException(404, f"conversation {conversation_id} not found")
    rows = db.exec(
        select(Message).where(Message.conversation_id == conv.id).order_by(Message.id.desc()).limit(HISTORY_LIMIT)
    ).all()
    return conv, [{"role": m.role, "content": m.content} for m in reversed(rows)]


def _store(db: Session, conv: Conversation, user_id: str, message: str, reply: str) -> None:
    db.add(Message(conversation_id=conv.id, user_id=user_id, role="user", content=message))
    db.add(Message(conversation_id=conv.id, user_id=user_id, role="assistant", content=reply))
    conv.updated_at = utcnow()
    db.add(conv)
    db.commit()


@app.post("/api/{user_id}/chat", response_model=ChatResponse, tags=["chat"])
async def chat(user_id: CurrentUser, body: ChatRequest, db: DB):
    """Stateless: all conversation state lives in PostgreSQL, so any replica can answer."""
    conv, history = await run_in_threadpool(_load_conversation, db, user_id, body.conversation_id)
    try:
        result = await get_agent().run(user_id, history, body.message)
    except Exception:  # noqa: BLE001 - an upstream model outage is a 502, not our 500
        log.exception("agent failed")
        raise HTTPException(502, "the assistant is unavailable, try again later") from None
    await run_in_threadpool(_store, db, conv, user_id, body.message, result.response)
    return ChatResponse(conversation_id=conv.id, response=result.response, tool_calls=result.tool_calls)
