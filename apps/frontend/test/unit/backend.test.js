import assert from "node:assert/strict";
import { test } from "node:test";

import { config, proxy, readJson, taskId } from "../../lib/backend.js";

const cfg = { backendUrl: "http://backend:8000", jwtSecret: "s".repeat(40), userId: "demo", timeoutMs: 1000 };

function fakeFetch(response) {
  const calls = [];
  const fn = async (url, init) => {
    calls.push({ url, init });
    if (response instanceof Error) throw response;
    return response;
  };
  return { fn, calls };
}

test("config defaults to the backend Service name and a demo user", () => {
  assert.deepEqual(config({}), { backendUrl: "http://todo-chatbot-backend:8000", jwtSecret: "", userId: "demo", timeoutMs: 30000 });
  assert.equal(config({ BACKEND_URL: "http://x:1///" }).backendUrl, "http://x:1");
});

test("proxy forwards method, body and a bearer token for the demo user", async () => {
  const { fn, calls } = fakeFetch(Response.json({ id: 1 }, { status: 201 }));
  const res = await proxy("/tasks", { method: "POST", body: { title: "a" } }, { config: cfg, fetch: fn });
  assert.equal(res.status, 201);
  assert.deepEqual(await res.json(), { id: 1 });
  assert.equal(calls[0].url, "http://backend:8000/api/demo/tasks");
  assert.equal(calls[0].init.method, "POST");
  assert.equal(calls[0].init.body, '{"title":"a"}');
  const token = calls[0].init.headers.Authorization.replace(/^Bearer /, "");
  assert.equal(JSON.parse(Buffer.from(token.split(".")[1], "base64url")).sub, "demo");
});

test("proxy passes backend errors through and maps 204", async () => {
  const err = await proxy("/tasks/9", {}, { config: cfg, fetch: fakeFetch(Response.json({ error: "not_found" }, { status: 404 })).fn });
  assert.equal(err.status, 404);
  const gone = await proxy("/tasks/9", { method: "DELETE" }, { config: cfg, fetch: fakeFetch(new Response(null, { status: 204 })).fn });
  assert.equal(gone.status, 204);
});

test("an unreachable backend is a 502, a missing secret a 503", async () => {
  const down = await proxy("/tasks", {}, { config: cfg, fetch: fakeFetch(new TypeError("fetch failed")).fn });
  assert.equal(down.status, 502);
  assert.equal((await down.json()).error, "bad_gateway");
  const { fn, calls } = fakeFetch(Response.json([]));
  const unconfigured = await proxy("/tasks", {}, { config: { ...cfg, jwtSecret: "" }, fetch: fn });
  assert.equal(unconfigured.status, 503);
  assert.equal(calls.length, 0);
});

test("only plain positive integer task ids reach the backend path", () => {
  assert.equal(taskId("42"), "42");
  for (const bad of ["0", "-1", "1.5", "../chat", "1/complete", "", "abc", "12345678901"]) assert.equal(taskId(bad), null, bad);
});

test("readJson turns a malformed body into a 400", async () => {
  const ok = await readJson(new Request("http://x", { method: "POST", body: '{"a":1}' }));
  assert.deepEqual(ok.body, { a: 1 });
  const bad = await readJson(new Request("http://x", { method: "POST", body: "{nope" }));
  assert.equal(bad.error.status, 400);
});

test("route handlers validate ids before proxying", async () => {
  const route = await import("../../app/api/tasks/[id]/route.js");
  const res = await route.DELETE(new Request("http://x"), { params: Promise.resolve({ id: "../../etc" }) });
  assert.equal(res.status, 400);
});

test("health route answers ok", async () => {
  const { GET } = await import("../../app/api/health/route.js");
  assert.deepEqual(await GET().json(), { status: "ok" });
});
