"""Bad input is always a 4xx with a JSON error body, never a 500."""

import pytest

from conftest import auth


@pytest.fixture
def task_id(alice):
    return alice.post("/api/alice/tasks", json={"title": "t"}).json()["id"]


@pytest.mark.parametrize(
    "body",
    [
        {},
        {"title": ""},
        {"title": "   "},
        {"title": "x" * 201},
        {"title": 123},
        {"title": None},
        {"title": "nul\x00byte"},
        {"title": "ok", "description": "d" * 1001},
        {"title": "ok", "owner": "bob"},  # unknown field
        [],
        "just a string",
    ],
)
def test_bad_task_bodies(alice, body):
    r = alice.post("/api/alice/tasks", json=body)
    assert r.status_code == 422, r.text
    assert r.json()["error"] == "validation_error" and r.json()["detail"]


def test_malformed_json(alice):
    r = alice.post("/api/alice/tasks", content=b"{not json", headers={"Content-Type": "application/json"})
    assert r.status_code == 422 and r.json()["error"] == "validation_error"


@pytest.mark.parametrize("bad", ["abc", "0", "-1", "99999999999999999999", "2147483648", "1.5"])
def test_bad_task_ids(alice, bad):
    for method in ("get", "delete"):
        r = alice.request(method, f"/api/alice/tasks/{bad}")
        assert r.status_code == 422, (method, bad, r.text)
    assert alice.patch(f"/api/alice/tasks/{bad}/complete").status_code == 422


def test_bad_status_filter(alice):
    r = alice.get("/api/alice/tasks", params={"status": "done"})
    assert r.status_code == 422 and "status" in r.text


def test_empty_update_is_rejected(alice, task_id):
    r = alice.put(f"/api/alice/tasks/{task_id}", json={})
    assert r.status_code == 400 and r.json()["error"] == "bad_request"
    assert alice.put(f"/api/alice/tasks/{task_id}", json={"completed": "maybe"}).status_code == 422


def test_bad_user_id_in_path(client):
    r = client.get("/api/" + "u" * 65 + "/tasks", headers=auth("u" * 65))
    assert r.status_code == 422
    r = client.get("/api/al%20ice/tasks", headers=auth("al ice"))
    assert r.status_code == 422


@pytest.mark.parametrize(
    "body",
    [{}, {"message": ""}, {"message": "  "}, {"message": "x" * 4001}, {"message": "a\x00b"},
     {"message": "hi", "conversation_id": 0}, {"message": "hi", "conversation_id": "abc"},
     {"message": "hi", "extra": 1}],
)
def test_bad_chat_bodies(alice, body):
    r = alice.post("/api/alice/chat", json=body)
    assert r.status_code == 422, r.text


def test_unknown_route_and_method(alice):
    assert alice.get("/nope").json()["error"] == "not_found"
    r = alice.post("/health")
    assert r.status_code == 405 and r.json()["error"] == "method_not_allowed"
