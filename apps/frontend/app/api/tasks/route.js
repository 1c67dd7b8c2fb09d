import { proxy, readJson } from "../../../lib/backend.js";

export const dynamic = "force-dynamic";

export function GET(request) {
  const status = new URL(request.url).searchParams.get("status");
  const search = status ? `?status=${encodeURIComponent(status)}` : "";
  return proxy("/tasks", { search });
}

export async function POST(request) {
  const { body, error } = await readJson(request);
  return error ?? proxy("/tasks", { method: "POST", body });
}
