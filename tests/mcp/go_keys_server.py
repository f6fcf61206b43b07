#!/usr/bin/env python3
"""An MCP-ish upstream that reads JSON object keys as Go's encoding/json
does: matched regardless of letter case (each rune to upper case, so
`ſ` is `S`), the last one winning. It answers each POSTed tools/call with
the tool it would run and the arguments it would run it with, and records
every body byte for byte (GET /seen). Prints its port, then serves until
its standard input closes.

usage: python3 tests/mcp/go_keys_server.py
"""
import json, sys, threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

SEEN = []


def go_object(pairs):
    # Go folds each key to upper case; a later key overwrites an earlier one.
    out = {}
    for k, v in pairs:
        out[k.upper()] = v
    return out


class Handler(BaseHTTPRequestHandler):
    def log_message(self, *a):
        pass

    def reply(self, obj):
        body = json.dumps(obj).encode()
        self.send_response(200)
        self.send_header("content-type", "application/json")
        self.send_header("content-length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def do_GET(self):
        self.reply({"seen": SEEN})

    def do_POST(self):
        raw = self.rfile.read(int(self.headers.get("content-length", "0")))
        SEEN.append(raw.decode("utf-8", "replace"))
        try:
            msg = json.loads(raw, object_pairs_hook=go_object)
        except ValueError as e:
            return self.reply({"error": str(e)})
        params = msg.get("PARAMS") or {}
        args = params.get("ARGUMENTS") or {}
        self.reply({
            "jsonrpc": "2.0",
            "id": msg.get("ID"),
            "result": {"method": msg.get("METHOD"), "executed": params.get("NAME"),
                       "team": args.get("TEAM")},
        })


def main():
    srv = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    print(srv.server_address[1], flush=True)
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    sys.stdin.read()  # the test closes it (or dies): stop
    srv.shutdown()


if __name__ == "__main__":
    main()
