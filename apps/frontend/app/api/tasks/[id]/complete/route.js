import { badId, proxy, taskId } from "../../../../../lib/backend.js";

export const dynamic = "force-dynamic";

export async function PATCH(_request, { params }) {
  const id = taskId((await params).id);
  return id ? proxy(`/tasks/${id}/complete`, { method: "PATCH" }) : badId();
}
