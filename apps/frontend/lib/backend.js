// Server-side proxy to the backend Service. The browser never sees the JWT secret or the
// backend address: route handlers call proxy(), which signs a token for the demo user.
import { demoToken } from "./jwt.js";

export function config(env = process.env) {
  return {
    backendUrl: (env.BACKEND_URL || "http://todo-chatbot-backend:8000").replace(/\/+$/, ""),
    jwtSecret: env.JWT_SECRET || "",
    userId: env.DEMO_USER_ID || "demo",
    timeoutMs: Number(env.BACKEND_TIMEOUT_MS || 30000),
  };
}

const json = (status, body) => Response.json(body, { status });

// Ids come from the URL: only plain positive integers may reach the backend path.
export function taskId(raw) {
  return /^[1-9][0-9]{0,9}$/.test(String(raw)) ? String(raw) : null;
}

export async function proxy(path, { method = "GET", body, search = "" } = {}, deps = {}) {
  const cfg = deps.config ?? config();
  const doFetch = deps.fetch ?? fetch;
  if (!cfg.jwtSecret) return json(503, { error: "unavailable", detail: "JWT_SECRET is not configured" });

  const url = `${cfg.backendUrl}/api/${encodeURIComponent(cfg.userId)}${path}${search}`;
  const headers = { Authorization: `Bearer ${demoToken(cfg.userId, cfg.jwtSecret)}`, Accept: "application/json" };
  if (body !== undefined) headers["Content-Type"] = "application/json";

  let res;
  try {
    res = await doFetch(url, {
      method,
      headers,
      body: body === undefined ? undefined : JSON.stringify(body),
      cache: "no-store",
      signal: AbortSignal.timeout(cfg.timeoutMs),
    });
  } catch (err) {
    return json(502, { error: "bad_gateway", detail: `backend unreachable: ${err?.name ?? "error"}` });
  }
  if (res.status === 204) return new Response(null, { status: 204 });
  const text = await res.text();
  return new Response(text, {
    status: res.status,
    headers: { "Content-Type": res.headers.get("content-type") || "application/json" },
  });
}

// Parse a JSON request body; a malformed one is the caller's 400, not our 500.
export async function readJson(request) {
  try {
    return { body: await request.json() };
  } catch {
    return { error: json(400, { error: "bad_request", detail: "body must be JSON" }) };
  }
}

export const badId = () => json(400, { error: "bad_request", detail: "task id must be a positive integer" });
