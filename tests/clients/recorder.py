"""What the Python SDK clients (py_client.py, py_listen_client.py) share:
an httpx client that records every HTTP exchange the SDK makes (method,
JSON-RPC method, protocol version header, status and the headers the tests
read), and raised errors turned into data, so each client prints one JSON
line the Rust tests assert on.
"""

import json

import httpx2


def failure(e: BaseException) -> dict:
    """A raised error as data: MCPError carries the JSON-RPC code."""
    code = getattr(getattr(e, "error", None), "code", None)
    return {"threw": type(e).__name__, "code": code, "message": str(e)}


async def step(f):
    try:
        return await f()
    except Exception as e:  # noqa: BLE001 - the test asserts on what was raised
        return failure(e)


def recording_client(token: str, exchanges: list) -> httpx2.AsyncClient:
    """An httpx client with the bearer token that appends one entry to
    `exchanges` per response."""

    async def record(response: httpx2.Response) -> None:
        # Called once the headers are in: a listen stream is recorded while
        # it is still open.
        req = response.request
        rpc = None
        if req.method == "POST":
            try:
                rpc = json.loads(req.content).get("method", "response")
            except ValueError:
                rpc = "?"
        exchanges.append(
            {
                "method": req.method,
                "rpc": rpc,
                "version": req.headers.get("mcp-protocol-version"),
                "status": response.status_code,
                "content_type": response.headers.get("content-type"),
                "www_authenticate": response.headers.get("www-authenticate"),
            }
        )

    return httpx2.AsyncClient(
        headers={"authorization": f"Bearer {token}"},
        timeout=httpx2.Timeout(20.0),
        event_hooks={"response": [record]},
    )
