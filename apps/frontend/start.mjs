// Container entry point for the standalone server. Kubernetes sets HOSTNAME to the pod
// name, and Next's standalone server.js binds to $HOSTNAME - that would listen on the pod
// IP only and break loopback health checks. Bind to LISTEN_HOST (default all interfaces).
process.env.HOSTNAME = process.env.LISTEN_HOST || "0.0.0.0";
await import("./server.js");
