from conftest import auth


def test_health_and_ready(client):
    assert client.get("/health").json()["status"] == "ok"
    r = client.get("/ready")
    assert r.status_code == 200 and r.json() == {"status": "ready"}


def test_task_lifecycle(alice):
    r = alice.post("/api/alice/tasks", json={"title": "  buy milk ", "description": "2 litres"})
    assert r.status_code == 201, r.text
    task = r.json()
    assert task["title"] == "buy milk" and task["completed"] is False and task["user_id"] == "alice"
    tid = task["id"]

    assert alice.get(f"/api/alice/tasks/{tid}").json()["description"] == "2 litres"

    r = alice.put(f"/api/alice/tasks/{tid}", json={"title": "buy oat milk"})
    assert r.status_code == 200 and r.json()["title"] == "buy oat milk"
    assert r.json()["description"] == "2 litres"  # untouched fields are kept

    r = alice.patch(f"/api/alice/tasks/{tid}/complete")
    assert r.status_code == 200 and r.json()["completed"] is True
    assert alice.patch(f"/api/alice/tasks/{tid}/complete").json()["completed"] is True  # idempotent

    r = alice.put(f"/api/alice/tasks/{tid}", json={"completed": False})
    assert r.json()["completed"] is False

    assert alice.delete(f"/api/alice/tasks/{tid}").status_code == 204
    r = alice.get(f"/api/alice/tasks/{tid}")
    assert r.status_code == 404 and r.json()["error"] == "not_found"
    assert alice.delete(f"/api/alice/tasks/{tid}").status_code == 404


def test_status_filter(alice):
    ids = [alice.post("/api/alice/tasks", json={"title": t}).json()["id"] for t in ("a", "b", "c")]
    alice.patch(f"/api/alice/tasks/{ids[1]}/complete")

    def titles(status):
        r = alice.get("/api/alice/tasks", params={"status": status} if status else None)
        assert r.status_code == 200
        return [t["title"] for t in r.json()]

    assert titles(None) == ["a", "b", "c"]
    assert titles("all") == ["a", "b", "c"]
    assert titles("pending") == ["a", "c"]
    assert titles("completed") == ["b"]


def test_users_are_isolated(client):
    tid = client.post("/api/alice/tasks", json={"title": "secret"}, headers=auth("alice")).json()["id"]
    bob = auth("bob")
    assert client.get("/api/bob/tasks", headers=bob).json() == []
    # Bob addressing Alice's task through his own path sees a plain 404, not a 403.
    assert client.get(f"/api/bob/tasks/{tid}", headers=bob).status_code == 404
    assert client.put(f"/api/bob/tasks/{tid}", json={"title": "x"}, headers=bob).status_code == 404
    assert client.patch(f"/api/bob/tasks/{tid}/complete", headers=bob).status_code == 404
    assert client.delete(f"/api/bob/tasks/{tid}", headers=bob).status_code == 404
    assert client.get(f"/api/alice/tasks/{tid}", headers=auth("alice")).json()["title"] == "secret"
