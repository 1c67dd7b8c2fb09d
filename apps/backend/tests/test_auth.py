import time

import jwt
import pytest

from conftest import SECRET, make_token

ROUTES = [
    ("get", "/api/alice/tasks", None),
    ("post", "/api/alice/tasks", {"title": "x"}),
    ("get", "/api/alice/tasks/1", None),
    ("put", "/api/alice/tasks/1", {"title": "x"}),
    ("patch", "/api/alice/tasks/1/complete", None),
    ("delete", "/api/alice/tasks/1", None),
    ("post", "/api/alice/chat", {"message": "hi"}),
]


@pytest.mark.parametrize("method,path,body", ROUTES)
def test_every_user_route_needs_a_token(client, method, path, body):
    r = client.request(method, path, json=body)
    assert r.status_code == 401
    assert r.json()["error"] == "unauthorized"
    assert r.headers["www-authenticate"] == "Bearer"


@pytest.mark.parametrize("method,path,body", ROUTES)
def test_token_for_another_user_is_forbidden(client, method, path, body):
    r = client.request(method, path, json=body, headers={"Authorization": f"Bearer {make_token('mallory')}"})
    assert r.status_code == 403 and r.json()["error"] == "forbidden"


@pytest.mark.parametrize(
    "token",
    [
        make_token("alice", secret="wrong-secret-wrong-secret-wrong-secret"),
        jwt.encode({"sub": "alice", "exp": int(time.time()) - 3600}, SECRET, algorithm="HS256"),  # expired
        jwt.encode({"exp": int(time.time()) + 60}, SECRET, algorithm="HS256"),  # no sub
        jwt.encode({"sub": "alice"}, SECRET, algorithm="HS512"),  # algorithm not allowed
        jwt.encode({"sub": "alice"}, None, algorithm="none"),  # unsigned
        "not-a-jwt",
    ],
    ids=["bad-signature", "expired", "no-sub", "hs512", "alg-none", "garbage"],
)
def test_invalid_tokens_are_rejected(client, token):
    r = client.get("/api/alice/tasks", headers={"Authorization": f"Bearer {token}"})
    assert r.status_code == 401, r.text


def test_wrong_scheme_is_rejected(client):
    r = client.get("/api/alice/tasks", headers={"Authorization": f"Basic {make_token('alice')}"})
    assert r.status_code == 401


def test_probes_need_no_token(client):
    assert client.get("/health").status_code == 200
    assert client.get("/ready").status_code == 200
