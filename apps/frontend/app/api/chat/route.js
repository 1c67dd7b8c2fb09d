import { proxy, readJson } from "../../../lib/backend.js";

export const dynamic = "force-dynamic";

export async function POST(request) {
  const { body, error } = await readJson(request);
  return error ?? proxy("/chat", { method: "POST", body });
}
