"""Drives `converge mcp` over stdio with the official MCP Python SDK (tests/integration/mcp.rs).

Usage: client.py CONVERGE_BIN REPO CONTEXT STACK
Connects the way an assistant would (Client in its default "auto" mode: a server/discover probe,
then the initialize handshake), calls each tool and prints one JSON object, step name to
{is_error, text, structured} (or {rpc_error: code, message} for a protocol error), on stdout.
The test makes its assertions on that object.
"""

import asyncio
import importlib.metadata
import json
import os
import sys

from mcp import Client, MCPError, StdioServerParameters


def result(r):
    return {"is_error": r.is_error, "text": "".join(c.text for c in r.content if c.type == "text"),
            "structured": r.structured_content}


async def main(converge, repo, context, stack):
    server = StdioServerParameters(
        command=converge,
        args=["mcp", "--repo", repo, "--context", context, "--stack", stack],
        env={k: os.environ[k] for k in ("KUBECONFIG", "CONVERGE_HELM", "NO_COLOR") if k in os.environ},
    )
    out = {}
    backend = os.path.join(repo, "desired", "backend.yaml")
    with open(backend) as f:
        current = f.read()
    async with Client(server, read_timeout_seconds=120) as c:
        out["initialize"] = {"protocol_version": c.protocol_version, "server": c.server_info.name,
                             "sdk": importlib.metadata.version("mcp")}
        tools = (await c.list_tools()).tools
        out["tools"] = {t.name: {"read_only": bool(t.annotations and t.annotations.read_only_hint),
                                 "schema": t.input_schema} for t in tools}

        async def call(step, name, args):
            try:
                out[step] = result(await c.call_tool(name, args))
            except MCPError as e:
                out[step] = {"rpc_error": e.code, "message": e.error.message}

        await call("status", "status", {})
        await call("explain", "explain", {"component": "backend"})
        await call("logs", "logs", {"component": "backend", "lines": 5})
        await call("history", "history", {})
        await call("diff", "diff", {})
        await call("validate", "validate", {})
        await call("validate_overlay", "validate",
                   {"files": {"desired/backend.yaml": current.replace("replicas: 1", "replicas: lots")}})
        await call("propose_replicas", "propose",
                   {"files": {"desired/backend.yaml": current.replace("replicas: 1", "replicas: 3")},
                    "message": "backend: 3 replicas"})
        await call("propose_invalid", "propose",
                   {"files": {"desired/backend.yaml": current.replace("replicas: 1", "replicas: many")},
                    "message": "backend: many replicas"})
        await call("propose_outside", "propose",
                   {"files": {"desired/../Cargo.toml": "[package]\n"}, "message": "escape"})
        await call("propose_git", "propose",
                   {"files": {"apps/.git/hooks/post-checkout": "#!/bin/sh\n"}, "message": "hook"})
        await call("propose_oversized", "propose",
                   {"files": {"desired/big.yaml": "# " + "x" * (1024 * 1024 + 1) + "\n"}, "message": "big"})
        await call("sync", "sync", {})
        await call("unknown_tool", "kubectl_delete_everything", {})
        await call("bad_arguments", "logs", {"component": "backend", "lines": "all"})
    print(json.dumps(out))


if __name__ == "__main__":
    asyncio.run(main(*sys.argv[1:5]))
