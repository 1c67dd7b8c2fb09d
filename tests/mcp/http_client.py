"""Drives a running daemon's `POST /mcp` (the Streamable HTTP transport) with the official MCP
Python SDK (tests/integration/mcp.rs).

Usage: http_client.py URL REPO
Connects as an assistant would to a URL (Client in its default "auto" mode), lists the tools,
reads the status and proposes a replicas change; prints one JSON object (step name to
{is_error, text, structured}) on stdout for the test's assertions.
"""

import asyncio
import importlib.metadata
import json
import os
import sys

from mcp import Client


def result(r):
    return {"is_error": r.is_error, "text": "".join(c.text for c in r.content if c.type == "text"),
            "structured": r.structured_content}


async def main(url, repo):
    out = {}
    with open(os.path.join(repo, "desired", "backend.yaml")) as f:
        current = f.read()
    async with Client(url, read_timeout_seconds=120) as c:
        out["initialize"] = {"protocol_version": c.protocol_version, "server": c.server_info.name,
                             "sdk": importlib.metadata.version("mcp")}
        out["tools"] = sorted(t.name for t in (await c.list_tools()).tools)
        out["status"] = result(await c.call_tool("status", {}))
        out["propose_replicas"] = result(await c.call_tool("propose", {
            "files": {"desired/backend.yaml": current.replace("replicas: 1", "replicas: 2")},
            "message": "backend: 2 replicas (over HTTP)"}))
    print(json.dumps(out))


if __name__ == "__main__":
    asyncio.run(main(*sys.argv[1:3]))
