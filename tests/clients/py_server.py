"""A 2026-07-28 MCP server with the official Python SDK (`mcp`, Streamable
HTTP, stateless) that serves `subscriptions/listen` (SEP-2575), for
tests/e2e/listen.rs. Prints `{"port": N}` once it accepts connections on
127.0.0.1 (a port the OS chose).

    .venv/bin/python py_server.py

Tools: `echo` returns its text; `add_tool` registers another echoing tool
under the name it is given and publishes a tools list change, which the
SDK's listen handler sends on every open listen stream that asked for it.
The change comes from a tool call rather than a timer so the test knows
which event to wait for and when.
"""

import json
import socket

import anyio
import uvicorn
from mcp.server.mcpserver import Context, MCPServer

server = MCPServer("listen-server", version="1")


@server.tool()
def echo(text: str) -> str:
    """Returns the text."""
    return text


@server.tool()
async def add_tool(name: str, ctx: Context) -> str:
    """Adds a tool named `name` that echoes, and tells listeners the list changed."""
    server.add_tool(echo, name=name)
    await ctx.notify_tools_changed()
    return f"added {name}"


async def main() -> None:
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", 0))
    app = server.streamable_http_app(stateless_http=True)
    web = uvicorn.Server(uvicorn.Config(app, log_level="warning"))
    async with anyio.create_task_group() as tg:
        tg.start_soon(lambda: web.serve(sockets=[sock]))
        # The port is announced only once uvicorn has started (the app's
        # lifespan ran), so the test's first request finds it ready.
        with anyio.fail_after(30):
            while not web.started:
                await anyio.sleep(0.02)
        print(json.dumps({"port": sock.getsockname()[1]}), flush=True)


if __name__ == "__main__":
    anyio.run(main)
