"""Task operations shared by the REST API and the MCP tools, so both enforce the same
rules (ownership, validation) in one place."""

from __future__ import annotations

from sqlmodel import Session, select

from .models import StatusFilter, Task, utcnow


class TaskNotFound(LookupError):
    def __init__(self, task_id: int):
        super().__init__(f"task {task_id} not found")
        self.task_id = task_id


def to_dict(task: Task) -> dict:
    return {
        "id": task.id,
        "user_id": task.user_id,
        "title": task.title,
        "description": task.description,
        "completed": task.completed,
        "created_at": task.created_at.isoformat(),
        "updated_at": task.updated_at.isoformat(),
    }


def create(session: Session, user_id: str, title: str, description: str | None = None) -> Task:
    task = Task(user_id=user_id, title=title, description=description)
    session.add(task)
    session.commit()
    session.refresh(task)
    return task


def list_(session: Session, user_id: str, status: StatusFilter = "all") -> list[Task]:
    query = select(Task).where(Task.user_id == user_id)
    if status == "pending":
        query = query.where(Task.completed.is_(False))
    elif status == "completed":
        query = query.where(Task.completed.is_(True))
    return list(session.exec(query.order_by(Task.id)))


def get(session: Session, user_id: str, task_id: int) -> Task:
    task = session.get(Task, task_id)
    # Another user's task is reported exactly like a missing one: no existence oracle.
    if task is None or task.user_id != user_id:
        raise TaskNotFound(task_id)
    return task


def update(session: Session, user_id: str, task_id: int, **changes) -> Task:
    task = get(session, user_id, task_id)
    for key, value in changes.items():
        if value is not None:
            setattr(task, key, value)
    task.updated_at = utcnow()
    session.add(task)
    session.commit()
    session.refresh(task)
    return task


def delete(session: Session, user_id: str, task_id: int) -> Task:
    task = get(session, user_id, task_id)
    session.delete(task)
    session.commit()
    return task
