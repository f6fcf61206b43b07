#!/usr/bin/env python3
"""What Envoy's native MCP filter (envoy.filters.http.mcp) makes of inputs
agentplane refuses: starts Envoy with only that filter in front of a direct
response, sends each case, prints the status and the dynamic metadata the
filter wrote. docs/mcp.md ("Envoy's own MCP filter, compared") quotes its
output (Envoy 1.40).

usage: python3 tests/mcp/native_probe.py [--reject] [path/to/envoy]
(--reject: the filter's traffic_mode REJECT_NO_MCP)
"""
import http.client, json, os, socket, subprocess, sys, tempfile, time

ARGS = [a for a in sys.argv[1:] if a != "--reject"]
MODE = "REJECT_NO_MCP" if "--reject" in sys.argv else "PASS_THROUGH"
ENVOY = ARGS[0] if ARGS else os.path.join(os.path.dirname(__file__), "../../.venv/bin/envoy")
H = {"content-type": "application/json", "accept": "application/json, text/event-stream"}
CALL = '{"jsonrpc":"2.0","id":1,"method":"tools/call","params":%s}'
CASES = [
    ("a plain tools/call", H, CALL % '{"name":"lookup_ticket","arguments":{"id":"T-1"}}'),
    ("duplicate params", H, '{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"lookup_ticket"},"params":{"name":"delete_ticket"}}'),
    ("duplicate name", H, CALL % '{"name":"lookup_ticket","name":"delete_ticket"}'),
    ("non-object params", H, '{"jsonrpc":"2.0","id":1,"method":"tools/call","params":"x"}'),
    ("tools/call without a name", H, CALL % '{"arguments":{}}'),
    ("mirror header disagrees", dict(H, **{"mcp-method": "tools/list", "mcp-name": "search_docs"}), CALL % '{"name":"delete_ticket"}'),
    ("no accept header", {"content-type": "application/json"}, CALL % '{"name":"delete_ticket"}'),
    ("text/plain content-type", dict(H, **{"content-type": "text/plain"}), CALL % '{"name":"delete_ticket"}'),
    ("batch", H, "[" + CALL % '{"name":"delete_ticket"}' + "]"),
    ("trailing bytes", H, CALL % '{"name":"lookup_ticket"}' + " {"),
    ("9 KB body", H, CALL % ('{"name":"lookup_ticket","arguments":{"note":"%s"}}' % ("x" * 9000))),
]

def free_port():
    s = socket.socket(); s.bind(("127.0.0.1", 0)); p = s.getsockname()[1]; s.close(); return p

def main():
    port, tmp = free_port(), tempfile.mkdtemp()
    log = os.path.join(tmp, "access.log")
    cfg = f"""
admin: {{address: {{socket_address: {{address: 127.0.0.1, port_value: 0}}}}}}
static_resources:
  listeners:
  - address: {{socket_address: {{address: 127.0.0.1, port_value: {port}}}}}
    filter_chains:
    - filters:
      - name: envoy.filters.network.http_connection_manager
        typed_config:
          "@type": type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager
          stat_prefix: probe
          access_log:
          - name: envoy.access_loggers.file
            typed_config:
              "@type": type.googleapis.com/envoy.extensions.access_loggers.file.v3.FileAccessLog
              path: {log}
              log_format: {{json_format: {{case: "%REQ(x-case)%", status: "%RESPONSE_CODE%", mcp: "%DYNAMIC_METADATA(envoy.filters.http.mcp)%"}}}}
          route_config:
            virtual_hosts:
            - {{name: all, domains: ["*"], routes: [{{match: {{prefix: "/"}}, direct_response: {{status: 200, body: {{inline_string: "passed"}}}}}}]}}
          http_filters:
          - name: envoy.filters.http.mcp
            typed_config: {{"@type": type.googleapis.com/envoy.extensions.filters.http.mcp.v3.Mcp, traffic_mode: {MODE}}}
          - name: envoy.filters.http.router
            typed_config: {{"@type": type.googleapis.com/envoy.extensions.filters.http.router.v3.Router}}
"""
    path = os.path.join(tmp, "envoy.yaml")
    open(path, "w").write(cfg)
    envoy = subprocess.Popen([ENVOY, "--use-dynamic-base-id", "-c", path, "-l", "error",
                              "--file-flush-interval-msec", "20"], stdout=subprocess.DEVNULL)
    try:
        for _ in range(200):
            try:
                socket.create_connection(("127.0.0.1", port), 0.1).close(); break
            except OSError:
                time.sleep(0.05)
        for name, headers, body in CASES:
            c = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
            c.request("POST", "/mcp", body=body, headers=dict(headers, **{"x-case": name}))
            r = c.getresponse(); r.read(); c.close()
        seen = {}
        for _ in range(100):
            if os.path.exists(log):
                seen = {e["case"]: e for e in map(json.loads, open(log).read().splitlines())}
            if len(seen) == len(CASES):
                break
            time.sleep(0.05)
        print("| input | native filter | what it wrote for the policy |\n|---|---|---|")
        for name, _, _ in CASES:
            e = seen.get(name, {})
            verdict = "passed" if e.get("status") == 200 else f"{e.get('status')}"
            mcp = e.get("mcp")
            wrote = "nothing" if mcp in (None, "-") else json.dumps({k: v for k, v in mcp.items() if k in ("method", "params")})
            print(f"| {name} | {verdict} | {wrote} |")
    finally:
        envoy.terminate(); envoy.wait()

main()
