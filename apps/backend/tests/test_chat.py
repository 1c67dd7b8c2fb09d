"""The stateless chat flow with the built-in intent parser."""

from sqlmodel import Session, select

from app.db import get_engine
from app.models import Message
from conftest import auth


def say(client, message, conversation_id=None):
    body = {"message": message}
    if conversation_id is not None:
        body["conversation_id"] = conversation_id
    r = client.post("/api/alice/chat", json=body)
    assert r.status_code == 200, r.text
    return r.json()


def test_conversation_drives_the_tools(alice):
    r = say(alice, "add buy milk")
    cid = r["conversation_id"]
    assert r["tool_calls"] == [{"tool": "add_task", "arguments": {"title": "buy milk"},
                                "result": {"task_id": 1, "status": "created", "title": "buy milk"}}]
    assert "buy milk" in r["response"]

    say(alice, "Please remind me to call mom.", cid)
    say(alice, "add a task to water the plants", cid)

    r = say(alice, "complete task 1", cid)
    assert r["tool_calls"][0]["tool"] == "complete_task" and "completed" in r["response"]

    r = say(alice, "list my pending tasks", cid)
    assert r["tool_calls"][0] == {"tool": "list_tasks", "arguments": {"status": "pending"}, "result": r["tool_calls"][0]["result"]}
    assert "call mom" in r["response"] and "water the plants" in r["response"] and "buy milk" not in r["response"]

    r = say(alice, "rename task 2 to call dad", cid)
    assert r["tool_calls"][0]["arguments"] == {"task_id": 2, "title": "call dad"}

    r = say(alice, "delete task 3", cid)
    assert r["tool_calls"][0]["tool"] == "delete_task"

    r = say(alice, "show completed tasks", cid)
    assert "buy milk" in r["response"]

    # the REST view agrees with what the chat did
    tasks = alice.get("/api/alice/tasks").json()
    assert [(t["title"], t["completed"]) for t in tasks] == [("buy milk", True), ("call dad", False)]

    # both sides of every exchange are stored, in order, in the same conversation
    with Session(get_engine()) as s:
        msgs = s.exec(select(Message).where(Message.conversation_id == cid).order_by(Message.id)).all()
    assert len(msgs) == 16
    assert [m.role for m in msgs[:2]] == ["user", "assistant"] and msgs[0].content == "add buy milk"


def test_task_reference_by_title(alice):
    say(alice, "add buy milk")
    say(alice, "add buy bread")
    r = say(alice, "complete buy milk")
    assert [c["tool"] for c in r["tool_calls"]] == ["list_tasks", "complete_task"]
    r = say(alice, "delete buy")
    assert "Several tasks match" in r["response"]
    r = say(alice, "delete the laundry")
    assert "couldn't find" in r["response"]


def test_errors_and_help_are_replies_not_failures(alice):
    r = say(alice, "complete task 42")
    assert r["response"].startswith("Sorry, that failed") and "not found" in r["response"]
    assert say(alice, "list tasks")["response"] == "You have no tasks."
    assert "add buy milk" in say(alice, "hello")["response"]
    assert "didn't understand" in say(alice, "what is the meaning of life")["response"]


def test_new_conversation_each_time_without_id(alice):
    a = say(alice, "hi")["conversation_id"]
    b = say(alice, "hi")["conversation_id"]
    assert a != b
    assert say(alice, "hi", a)["conversation_id"] == a


def test_conversations_are_private(client):
    cid = client.post("/api/alice/chat", json={"message": "add x"}, headers=auth("alice")).json()["conversation_id"]
    r = client.post("/api/bob/chat", json={"message": "list tasks", "conversation_id": cid}, headers=auth("bob"))
    assert r.status_code == 404 and r.json()["error"] == "not_found"
    r = client.post("/api/alice/chat", json={"message": "hi", "conversation_id": 999}, headers=auth("alice"))
    assert r.status_code == 404
    # Bob's chat can't touch Alice's tasks either
    r = client.post("/api/bob/chat", json={"message": "delete task 1"}, headers=auth("bob"))
    assert "not found" in r.json()["response"]
    assert len(client.get("/api/alice/tasks", headers=auth("alice")).json()) == 1
