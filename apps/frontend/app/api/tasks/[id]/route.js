import { badId, proxy, readJson, taskId } from "../../../../lib/backend.js";

export const dynamic = "force-dynamic";

export async function PUT(request, { params }) {
  const id = taskId((await params).id);
  if (!id) return badId();
  const { body, error } = await readJson(request);
  return error ?? proxy(`/tasks/${id}`, { method: "PUT", body });
}

export async function DELETE(_request, { params }) {
  const id = taskId((await params).id);
  return id ? proxy(`/tasks/${id}`, { method: "DELETE" }) : badId();
}
