#!/usr/bin/env python3
"""opa-envoy-plugin compatibility: a policy written for OPA's Envoy plugin
(tests/opa/envoy/*.rego, entrypoint data.envoy.authz.allow) decides the
same under the OPA engine as under agentplane with `policy.input: "envoy"`.

The example `envoy_compat` runs a grid of requests through the filter and
prints, per request, the input document it built and what it did. This
script evaluates the same policy with OPA on that input and checks the
filter's behaviour against OPA's result object: forwarded or not, the
request headers added and removed, the response headers added, the
refusal's status and body.

Usage: envoy_compat.py <opa_bindings dir> <envoy_compat binary>
"""
import json
import pathlib
import subprocess
import sys

ROOT = pathlib.Path(__file__).resolve().parents[2]
POLICY_DIR = ROOT / "tests" / "opa" / "envoy"
CAPTURED = {"x-ext-authz-check", "x-reader", "x-internal-debug"}


def main():
    sys.path.insert(0, sys.argv[1])
    from opa_bindings import OpaEngine  # noqa: E402

    eng = OpaEngine()
    for f in sorted(POLICY_DIR.glob("*.rego")):
        eng.add_policy(f.name, f.read_text())
    out = subprocess.run([sys.argv[2], str(POLICY_DIR)], check=True,
                         capture_output=True, text=True).stdout
    cases = [json.loads(l) for l in out.splitlines() if l.strip()]
    failures = []
    kinds = {"allowed": 0, "denied": 0}
    for i, c in enumerate(cases):
        if c["input"] is None:
            # Refused before any policy runs (an encoded "/" in a path
            # segment: agentplane's own rule, stricter than the plugin).
            kinds["before"] = kinds.get("before", 0) + 1
            if c["forwarded"] or not c["reply"] or c["reply"]["status"] != 400:
                failures.append(f"case {i}: no input, yet not refused with 400")
            continue
        rs = eng.eval_query("x := [v | v := data.envoy.authz.allow]", c["input"])
        vals = rs[0]["x"] if rs else []
        r = vals[0] if vals else None
        if isinstance(r, dict):
            allowed = r.get("allowed") is True
        else:
            allowed = r is True
        kinds["allowed" if allowed else "denied"] += 1
        path = c["input"]["attributes"]["request"]["http"]["path"]
        why = []
        if c["forwarded"] != allowed:
            why.append(f"OPA allowed={allowed}, the filter forwarded={c['forwarded']}")
        obj = r if isinstance(r, dict) else {}
        if allowed and c["forwarded"]:
            for k, v in obj.get("headers", {}).items():
                if k in CAPTURED and c["upstream"].get(k) != v:
                    why.append(f"upstream {k}={c['upstream'].get(k)!r}, OPA {v!r}")
            for k in obj.get("request_headers_to_remove", []):
                if k in c["upstream"]:
                    why.append(f"{k} still went upstream")
            if "request_headers_to_remove" not in obj and "x-internal-debug" not in c["upstream"]:
                why.append("x-internal-debug removed though the policy did not say so")
            for k, v in obj.get("response_headers_to_add", {}).items():
                if c["response_headers"].get(k) != v:
                    why.append(f"response {k}={c['response_headers'].get(k)!r}, OPA {v!r}")
        if not allowed and c["reply"]:
            reply = c["reply"]
            want_status = obj.get("http_status", 403)
            if reply["status"] != want_status:
                why.append(f"status {reply['status']}, OPA {want_status}")
            if "body" in obj:
                # An MCP client gets a JSON-RPC error whose message is the
                # body; anyone else the body as the policy wrote it.
                got = reply["body"]
                if c["input"].get("mcp"):
                    got = json.loads(got).get("error", {}).get("message")
                if got != obj["body"]:
                    why.append(f"body {got!r}, OPA {obj['body']!r}")
            for k, v in {**obj.get("headers", {}), **obj.get("response_headers_to_add", {})}.items():
                if reply["headers"].get(k) != v:
                    why.append(f"reply {k}={reply['headers'].get(k)!r}, OPA {v!r}")
        if why:
            failures.append(f"case {i} ({path}): " + "; ".join(why))
    for f in failures[:20]:
        print(f)
    print(f"envoy compat: {len(cases)} requests ({kinds['allowed']} allowed, "
          f"{kinds['denied']} denied, {kinds.get('before', 0)} refused before the policy), "
          f"{len(failures)} differ")
    if len(cases) < 40 or not kinds["allowed"] or not kinds["denied"] or failures:
        sys.exit(1)


main()
