"""A 2026-07-28 client with the official Python SDK (`mcp`, Streamable HTTP)
that discovers, lists, calls and listens for changes (`subscriptions/listen`,
SEP-2575) against tests/clients/py_server.py through Envoy + agentplane,
for tests/e2e/listen.rs. Prints one JSON line of what the SDK handed back.

    .venv/bin/python py_listen_client.py <url> <discover|pinned>
    MCP_TOKEN: the bearer token (environment, never the command line)

`discover` negotiates with `server/discover` (the SDK's default); `pinned`
adopts 2026-07-28 without a probe, for a token that may not connect (so
may not discover either) but may list: its listen is what is refused.
"""

import json
import os
import sys

import anyio
from mcp.client.client import Client
from mcp.client.streamable_http import streamable_http_client

from recorder import failure, recording_client, step


async def main(url: str, how: str, token: str) -> dict:
    out: dict = {"sdk": "python", "how": how}
    exchanges: list[dict] = []

    http = recording_client(token, exchanges)
    mode = "auto" if how == "discover" else "2026-07-28"
    try:
        with anyio.fail_after(40):
            async with http:
                transport = streamable_http_client(url, http_client=http)
                async with Client(transport, mode=mode, read_timeout_seconds=20) as client:
                    await run(client, out)
    except Exception as e:  # noqa: BLE001
        out["connect"] = failure(e)
    out["http"] = exchanges
    return out


async def run(client: Client, out: dict) -> None:
    out["negotiated"] = client.protocol_version

    async def tools():
        # "refresh": what the server lists now, never the SDK's cache.
        return sorted(t.name for t in (await client.list_tools(cache_mode="refresh")).tools)

    async def call(name, args):
        r = await client.call_tool(name, args)
        return {"isError": bool(r.is_error), "text": " ".join(getattr(c, "text", "") for c in r.content)}

    out["tools"] = await step(tools)

    async def listen():
        seen: dict = {}
        async with client.listen(tools_list_changed=True) as sub:
            seen["honored"] = sub.honored.model_dump(by_alias=True, mode="json", exclude_none=True)
            # The change is made while the stream is open, by a call on
            # its own request: the stream must carry the notification.
            seen["call"] = await call("add_tool", {"name": "greet"})
            with anyio.fail_after(15):
                event = await sub.__anext__()
            seen["event"] = type(event).__name__
        return seen

    out["listen"] = await step(listen)
    out["tools_after"] = await step(tools)
    out["greet"] = await step(lambda: call("greet", {"text": "hello"}))


if __name__ == "__main__":
    if len(sys.argv) < 3 or sys.argv[2] not in ("discover", "pinned") or not os.environ.get("MCP_TOKEN"):
        print("usage: MCP_TOKEN=... py_listen_client.py <url> <discover|pinned>", file=sys.stderr)
        sys.exit(2)
    result = anyio.run(main, sys.argv[1], sys.argv[2], os.environ["MCP_TOKEN"])
    print(json.dumps(result))
