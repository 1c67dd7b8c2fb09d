// Liveness/readiness for the frontend pod: the Next server answers. It does not call the
// backend, so a backend outage doesn't cascade into frontend restarts.
export const dynamic = "force-dynamic";

export function GET() {
  return Response.json({ status: "ok" });
}
