"""One MCP session with the official Python SDK (`mcp`, Streamable HTTP)
through Envoy + agentplane, for tests/e2e/clients.rs. Prints one JSON line
describing what the SDK handed its caller at each step.

    .venv/bin/python py_client.py <url> <protocol version>
    MCP_TOKEN: the bearer token (environment, never the command line)

2026-07-28 is negotiated with `server/discover` (stateless: no session,
so nothing to DELETE); every earlier era with the `initialize` handshake.
The SDK offers its newest handshake version; an older one is offered by
setting the version `ClientSession.initialize` sends, so everything after
the handshake is the SDK's own behaviour for the version the server chose.
"""

import json
import os
import sys

import anyio
import httpx2
import mcp.client.session as session_mod
from mcp.client.session import ClientSession
from mcp.client.streamable_http import streamable_http_client
from mcp.shared.exceptions import MCPError
from mcp_types.version import HANDSHAKE_PROTOCOL_VERSIONS, MODERN_PROTOCOL_VERSIONS

from recorder import failure, recording_client, step


def tool_result(r) -> dict:
    return {
        "isError": bool(r.is_error),
        "content": [c.model_dump(by_alias=True, mode="json", exclude_none=True) for c in r.content],
    }


async def main(url: str, version: str, token: str) -> dict:
    out: dict = {"sdk": "python", "offered": version}
    exchanges: list[dict] = []

    http = recording_client(token, exchanges)
    modern = version in MODERN_PROTOCOL_VERSIONS
    if not modern:
        # The version initialize() offers (a module-level name it reads).
        session_mod.LATEST_HANDSHAKE_VERSION = version
    try:
        with anyio.fail_after(30):
            await session(url, http, modern, out)
    except Exception as e:  # noqa: BLE001
        out["connect"] = failure(e)
    # streamable_http_client sent its DELETE (a session-ful era) on exit.
    out["http"] = exchanges
    return out


async def session(url: str, http: httpx2.AsyncClient, modern: bool, out: dict) -> None:
    async with http, streamable_http_client(url, http_client=http) as (read, write):
        async with ClientSession(read, write) as s:
            if modern:
                await s.discover()
            else:
                out["server"] = (await s.initialize()).server_info.name
            out["negotiated"] = s.protocol_version

            async def tools():
                return sorted(t.name for t in (await s.list_tools()).tools)

            async def call(name, args):
                return tool_result(await s.call_tool(name, args))

            async def resources():
                await s.list_resources()
                return {"listed": True}

            out["tools"] = await step(tools)
            out["allowed"] = await step(lambda: call("search_docs", {"query": "vpn"}))
            # Another team's ticket: the reason must come back as a tool
            # result with isError, not as a raised error.
            out["denied"] = await step(lambda: call("lookup_ticket", {"team": "ml", "id": "T-9"}))
            out["denied_method"] = await step(resources)


if __name__ == "__main__":
    if len(sys.argv) < 3 or not os.environ.get("MCP_TOKEN"):
        print("usage: MCP_TOKEN=... py_client.py <url> <protocol version>", file=sys.stderr)
        sys.exit(2)
    version = sys.argv[2]
    if version not in (*HANDSHAKE_PROTOCOL_VERSIONS, *MODERN_PROTOCOL_VERSIONS):
        print(f"the SDK does not know {version}", file=sys.stderr)
        sys.exit(2)
    result = anyio.run(main, sys.argv[1], version, os.environ["MCP_TOKEN"])
    print(json.dumps(result))
