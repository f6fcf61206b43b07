#!/usr/bin/env python3
"""Differential test: agentplane's embedded policy (regorus) against the real
OPA engine, on the same modules, data and inputs.

1. Every `test_*` rule in policies/*_test.rego must be true under OPA too.
2. Every case in policies/cases/ must give the expected decision under OPA.
3. A generated corpus (agents x resources x actions x methods x clocks x
   token states) must give identical `allow` and `deny` under both engines.
4. Soundness of the policy's fast path: wherever OPA finds `fast_ok` true,
   `reasons` must be empty (`deny` skips the reasons when `fast_ok` holds),
   and wherever it is false a refusal carries at least one reason.
5. Intent: an independent statement of the rules in Python (`intended`),
   written from the docs (docs/policy.md), must agree with OPA's `allow` on every input.
   Two engines agreeing on a wrong policy is not enough; this is what
   catches a rule that lets absent or null data through.

The corpus includes, for every metadata key and claim the policy reads,
inputs where it is absent and where it is null.

Usage: differential.py <opa_bindings dir> <agentplane eval binary>
Prints 'N passed, M failed' and exits non-zero on any difference.
"""
import itertools
import json
import multiprocessing
import os
import pathlib
import subprocess
import sys
import tempfile

ROOT = pathlib.Path(__file__).resolve().parents[2]
POLICIES = ROOT / "policies"


def opa_engine(bindings_dir):
    sys.path.insert(0, str(bindings_dir))
    from opa_bindings import OpaEngine  # noqa: E402

    eng = OpaEngine()
    for f in sorted(POLICIES.glob("*.rego")):
        eng.add_policy(f.name, f.read_text())
    eng.add_data(json.loads((POLICIES / "data.json").read_text()))
    return eng


# One query per input: each rule read through a comprehension, so an
# undefined rule is an empty list rather than an empty result set. One
# query instead of five per input is what keeps the corpus inside CI's
# time (the bindings' cost is per query, not per rule).
DECISION_QUERY = ("x := [[v | v := data.mcp.authz.allow], [v | v := data.mcp.authz.deny], "
                  "[v | v := data.mcp.authz.valid_until_ns], [v | v := data.mcp.authz.limits], "
                  "[v | v := data.mcp.authz.fast_ok], [v | v := data.mcp.authz.reasons]]")


def opa_eval(eng, inp):
    """OPA's decision on one input, plus its `fast_ok` and `reasons`."""
    rs = eng.eval_query(DECISION_QUERY, inp)
    allow, deny, until, lim, fast, reasons = rs[0]["x"] if rs else ([], [], [], [], [], [])
    a = allow[0] if allow else False
    d = sorted(deny[0]) if deny else []
    u = until[0] if until else None
    # The filter reuses a decision only for a positive integer lifetime.
    u = u if isinstance(u, int) and not isinstance(u, bool) and u > 0 else None
    decision = {"allow": bool(a) and not d, "deny": d, "valid_until_ns": u,
                "limits": sorted(limit_summary(l) for l in (lim[0] if lim else []))}
    return decision, (fast[0] if fast else None), (reasons[0] if reasons else None)


def opa_chunk(job):
    """OPA's evaluations of a slice of the corpus, in a worker process."""
    bindings, inputs = job
    eng = opa_engine(bindings)
    return [opa_eval(eng, inp) for inp in inputs]


def opa_decision(eng, inp):
    return opa_eval(eng, inp)[0]


def limit_summary(l):
    """The filter's `Limit::summary` of one raw limit object (its defaults)."""
    import math
    by = ",".join(l.get("by", ["agent"]))
    if "in_flight" in l:
        size = f"in_flight={l['in_flight']}"
    else:
        size = f"burst={l.get('burst', max(1, math.ceil(l['rate'])))}"
    return f"{l['name']}|{by}|{size}"


def corpus():
    agents = []
    for team, env, typ, perms, sub in itertools.product(
        ["customer-success", "ml", "quarantine", None],
        ["production", "staging", None],
        ["support", "experimental"],
        [[], ["skills:invoke"], ["skills:invoke", "data:read", "data:write", "tools:access"],
         ["data:read", "customer:access"], ["tools:call", "mcp:connect"],
         ["tools:call", "tickets:delete"]],
        ["support-triage@clients", "revoked-agent@clients"],
    ):
        agents.append({"id": sub, "type": typ, "team": team, "environment": env, "permissions": perms})
    resources = [
        {"type": "skill", "id": "sentiment-analysis", "registered": True,
         "metadata": {"team": "ml", "environment": "production", "shared": True}},
        {"type": "skill", "id": "hello-skill", "registered": True,
         "metadata": {"team": "platform", "environment": "production"}},
        {"type": "data", "id": "customer-data", "registered": True,
         "metadata": {"team": "customer-success", "environment": "production"}},
        {"type": "tool", "id": "staging-tool", "registered": True,
         "metadata": {"team": "ml", "environment": "staging"}},
        {"type": "tool", "id": "tickets-mcp", "registered": True, "protocol": "mcp",
         "metadata": {"team": "customer-success", "environment": "production"}},
        {"type": "unknown", "id": "mystery", "registered": False,
         "metadata": {"team": "unknown", "environment": "unknown"}},
        # Edge cases for the fast path: absent, null or false metadata.
        {"type": "skill", "id": "no-metadata", "registered": True, "metadata": {}},
        {"type": "skill", "id": "null-team", "registered": True,
         "metadata": {"team": None, "environment": None, "shared": False}},
        {"type": "tool", "id": "false-team", "registered": True,
         "metadata": {"team": False, "environment": "production"}},
        {"type": "data", "id": "unflagged", "metadata": {"team": "customer-success"}},
    ]
    # MCP actions (call_tool, ...) on tool resources, beside the seed's.
    actions = {"skill": ["invoke_skill"], "tool": ["access_tool", "call_tool", "list_tools", "initialize", "end_session"],
               "data": ["read_data", "write_data"], "unknown": [None]}
    clocks = [1746273600000000000, 1746252000000000000, 1746291600000000000, 1746262800000000000]
    tokens = [{"valid": True, "exp": 1746300000}, {"valid": True, "exp": 1746200000},
              {"valid": True, "exp": None}, {"valid": False, "exp": 1746300000}]
    out = []
    for i, (agent, res, method, now) in enumerate(
        itertools.product(agents, resources, ["GET", "POST", "DELETE", "PATCH"], clocks)
    ):
        tok = tokens[i % len(tokens)]
        for action in actions[res["type"]]:
            payload = {"sub": agent["id"]}
            if tok["exp"] is not None:
                payload["exp"] = tok["exp"]
            out.append({
                "jwt": {"valid": tok["valid"], "payload": payload},
                "agent": agent,
                "request": {"id": f"r{i}", "method": method, "host": "localhost",
                            "path": [res["id"], "x"], "raw_path": f"/{res['id']}/x",
                            "query": {}, "headers": {}, "time_ns": now},
                "resource": res,
                "action": action,
            })
            if action == "call_tool":
                # The same call naming tools the tool rules treat apart.
                base = out[-1]
                for tool, args, *definition in TOOL_CALLS:
                    inp = json.loads(json.dumps(base))
                    inp["mcp"] = {"kind": "request", "method": "tools/call", "id": i,
                                  "tool": tool, "arguments": args}
                    if definition:
                        inp["mcp"]["tool_definition"] = definition[0]
                    out.append(inp)
    return out


# Tool calls for the corpus: free, denied, needing a permission, scoped to
# the agent's team (own, other, absent, not a string), and no tool at all.
TOOL_CALLS = [
    ("search_docs", {}),
    ("run_shell", {"cmd": "id"}),
    ("delete_ticket", {"id": "T-1"}),
    ("lookup_ticket", {"team": "customer-success"}),
    ("lookup_ticket", {"team": "ml"}),
    ("lookup_ticket", {}),
    ("lookup_ticket", {"team": None}),
    (None, {}),
    # Tool-definition pinning: how the called tool's definition stands
    # against its pin, and values a policy must not take for "changed".
    ("search_docs", {}, {"digest": "sha256:00", "pin": "changed"}),
    ("search_docs", {}, {"digest": "sha256:00", "pin": "matches"}),
    ("search_docs", {}, {"digest": None, "pin": "unseen"}),
    ("search_docs", {}, {"pin": ["changed"]}),
    ("search_docs", {}, "changed"),
    ("lookup_ticket", {"team": "customer-success"}, {"digest": "sha256:01", "pin": "changed"}),
]

# Delegations for the corpus: allowed, a narrower actor, too deep, a type
# not allowed to act, actor permissions absent; with every actor listed
# (as the filter gives them): a nested actor of a type not allowed, one
# narrower than the current actor, one with neither type nor permissions.
ORCH = {"sub": "orch-1", "type": "orchestrator", "permissions": ["skills:invoke", "data:read", "tools:call"]}
DELEGATIONS = [
    {"actor_type": "orchestrator", "actor_permissions": ["skills:invoke", "data:read", "tools:call"], "depth": 1},
    {"actor_type": "orchestrator", "actor_permissions": ["data:read"], "depth": 2},
    {"actor_type": "orchestrator", "actor_permissions": ["skills:invoke", "data:read"], "depth": 3},
    {"actor_type": "support", "actor_permissions": ["skills:invoke", "data:read"], "depth": 1},
    {"actor_type": None, "actor_permissions": None, "depth": 1},
    {"actor_type": "orchestrator", "actor_permissions": ORCH["permissions"], "depth": 2,
     "actors": [ORCH, {"sub": "lab-1", "type": "experimental", "permissions": ORCH["permissions"]}]},
    {"actor_type": "orchestrator", "actor_permissions": ORCH["permissions"], "depth": 2,
     "actors": [ORCH, {"sub": "orch-2", "type": "orchestrator", "permissions": ["data:read"]}]},
    {"actor_type": "orchestrator", "actor_permissions": ORCH["permissions"], "depth": 2,
     "actors": [ORCH, {"sub": "planner", "type": None, "permissions": None}]},
    {"actor_type": "orchestrator", "actor_permissions": ORCH["permissions"], "depth": 2,
     "actors": [ORCH, dict(ORCH, sub="orch-2")]},
]


def delegated_corpus(base):
    """Every 31st input of the corpus, once per delegation."""
    out = []
    for inp in base[::31]:
        for d in DELEGATIONS:
            x = json.loads(json.dumps(inp))
            x["delegation"] = {"subject": x["agent"]["id"], "actor": "orch-1",
                               "chain": [f"a{i}" for i in range(d["depth"])], "may_act": None, **d}
            out.append(x)
    return out


def transaction_corpus(base):
    """Every 31st input inside a transaction whose scope carries all, some,
    none or no list of the permissions."""
    out = []
    for inp in base[::31]:
        perms = inp["agent"].get("permissions")
        perms = perms if isinstance(perms, list) else []
        for scope in [perms, perms[:1], [], None]:
            x = json.loads(json.dumps(inp))
            x["transaction"] = {"txn": "t-1", "sub": "alice@clients", "scope": scope,
                                "actors": ["orchestrator@clients"]}
            out.append(x)
    return out


def workload_corpus(base):
    """Every 31st input with a token bound to a workload, from that
    workload, another one, and with no certificate."""
    out = []
    wid = "spiffe://corp/ns/agents/sa/triage"
    for inp in base[::31]:
        for src in [{"mtls": True, "spiffe_id": wid}, {"mtls": True, "spiffe_id": wid + "-x"}, None]:
            x = json.loads(json.dumps(inp))
            x["agent"]["workload_id"] = wid
            x["source"] = src
            out.append(x)
    return out


ABSENT = object()


def edge_corpus():
    """One thing missing at a time: every agent field, resource field,
    metadata key and token claim the policy reads, absent and null, next to
    an otherwise allowed request."""
    agent = {"id": "support-triage@clients", "type": "support", "team": "customer-success",
             "environment": "production", "permissions": ["data:read", "skills:invoke"]}
    res = {"type": "data", "id": "tickets", "registered": True,
           "metadata": {"team": "customer-success", "environment": "production", "shared": False}}
    variants = [(agent, res, {"valid": True, "payload": {"sub": agent["id"], "exp": 1746300000}}, "read_data")]
    def without(d, k, v):
        d = json.loads(json.dumps(d))
        if v is ABSENT:
            d.pop(k, None)
        else:
            d[k] = v
        return d
    for k in ["id", "type", "team", "environment", "permissions"]:
        for v in [ABSENT, None]:
            variants.append((without(agent, k, v), res, variants[0][2], "read_data"))
    for k in ["team", "environment", "shared"]:
        for v in [ABSENT, None, ""]:
            r = json.loads(json.dumps(res))
            r["metadata"] = without(r["metadata"], k, v)
            variants.append((agent, r, variants[0][2], "read_data"))
            # The same resource when shared, and when owned by a shared team.
            variants.append((agent, dict(r, metadata=dict(r["metadata"], shared=True)), variants[0][2], "read_data"))
    for k in ["metadata", "registered", "id", "type"]:
        for v in [ABSENT, None]:
            variants.append((agent, without(res, k, v), variants[0][2], "read_data"))
    for k, v in [("valid", ABSENT), ("valid", None), ("payload", ABSENT)]:
        variants.append((agent, res, without(variants[0][2], k, v), "read_data"))
    for v in [ABSENT, None]:
        variants.append((agent, res, {"valid": True, "payload": without(variants[0][2]["payload"], "exp", v)}, "read_data"))
        variants.append((agent, res, variants[0][2], None if v is None else ABSENT))
    out = []
    for i, ((a, r, jwt, action), method, now) in enumerate(itertools.product(
            variants, ["GET", "DELETE"], [1746273600000000000, 1746252000000000000])):
        inp = {"jwt": jwt, "agent": a,
               "request": {"id": f"e{i}", "method": method, "host": "localhost", "path": ["tickets"],
                           "raw_path": "/tickets", "query": {}, "headers": {}, "time_ns": now},
               "resource": r}
        if action is not ABSENT:
            inp["action"] = action
        out.append(inp)
    return out


def intended(inp, data):
    """The base policy and the layers, as docs/policy.md states them."""
    cfg = data["mcp"]["config"]
    def get(d, *path):
        for k in path:
            if not isinstance(d, dict) or k not in d:
                return None
            d = d[k]
        return d
    jwt, agent, res = inp.get("jwt") or {}, inp.get("agent") or {}, inp.get("resource") or {}
    perms = agent.get("permissions") if isinstance(agent.get("permissions"), list) else []
    # Ending one's own session (session_actions) needs only a valid,
    # unexpired token at a registered service.
    if inp.get("action") in cfg.get("session_actions", []):
        exp = get(jwt, "payload", "exp")
        return (jwt.get("valid") is True and isinstance(exp, (int, float)) and not isinstance(exp, bool)
                and inp["request"]["time_ns"] < exp * 1e9 and isinstance(res.get("id"), str)
                and res.get("registered") is True)
    # Delegation (delegation.rego): a chain within the limit, an actor type
    # allowed for the subject's type, and only permissions both hold.
    dl = inp.get("delegation")
    if dl is not None:
        dcfg = cfg.get("delegation", {})
        if not dl.get("depth", 0) <= dcfg.get("max_depth", 0):
            return False
        allowed = dcfg.get("may_act_for", {}).get(agent.get("type"), []) if isinstance(agent.get("type"), str) else []
        if dl.get("actor_type") not in allowed:
            return False
        actor = dl.get("actor_permissions") if isinstance(dl.get("actor_permissions"), list) else []
        perms = [p for p in perms if p in actor]
        # Every actor of the chain is held to what the current one is.
        for a in dl.get("actors") or []:
            if a.get("type") not in allowed:
                return False
            listed = a.get("permissions") if isinstance(a.get("permissions"), list) else []
            perms = [p for p in perms if p in listed]
    # Transactions (transaction.rego): only what the transaction's scope carries.
    txn = inp.get("transaction")
    if txn is not None:
        scope = txn.get("scope") if isinstance(txn, dict) and isinstance(txn.get("scope"), list) else []
        perms = [p for p in perms if p in scope]
    # Workload binding (workload.rego): a bound token only from its workload.
    wid = agent.get("workload_id")
    if isinstance(wid, str):
        src = inp.get("source")
        if not (isinstance(src, dict) and src.get("spiffe_id") == wid):
            return False
    exp = get(jwt, "payload", "exp")
    if jwt.get("valid") is not True:
        return False
    if not isinstance(exp, (int, float)) or isinstance(exp, bool) or not inp["request"]["time_ns"] < exp * 1e9:
        return False
    action = inp.get("action")
    if not isinstance(action, str) or action not in cfg["action_permissions"]:
        return False
    if cfg["action_permissions"][action] not in perms:
        return False
    if not isinstance(res.get("id"), str):
        return False
    if any(p not in perms for p in cfg["service_permissions"].get(res["id"], [])):
        return False
    if res.get("registered") is not True:
        return False
    env, team = get(res, "metadata", "environment"), get(res, "metadata", "team")
    if not isinstance(env, str) or not isinstance(team, str):
        return False
    if env == "production" and agent.get("environment") != "production":
        return False
    if not (team == agent.get("team") or team in cfg["shared_teams"] or get(res, "metadata", "shared") is True):
        return False
    hour = (inp["request"]["time_ns"] // 3600000000000) % 24
    off = hour < cfg["business_hours"]["start_hour_utc"] or hour >= cfg["business_hours"]["end_hour_utc"]
    # The window: high-risk HTTP methods on HTTP services, destructive tools
    # on MCP services.
    if res.get("protocol") != "mcp" and inp["request"]["method"] in cfg["high_risk_methods"] and off:
        return False
    if isinstance(get(inp, "mcp", "tool"), str) and get(inp, "mcp", "tool") in cfg.get("destructive_tools", []) and off:
        return False
    def layer(table, key):
        return data.get(table, {}).get(key, {}) if isinstance(key, str) else {}
    layers = [data.get("global", {}), layer("teams", agent.get("team")),
              layer("agent_types", agent.get("type")), layer("agents", agent.get("id"))]
    if not any(l.get("allow") is True for l in layers):
        return False
    for l in layers:
        if l.get("deny") is True or isinstance(l.get("deny"), str):
            return False
        if action in l.get("deny_actions", []):
            return False
    # MCP tool rules (tools.rego), for tools/call only.
    tool = get(inp, "mcp", "tool")
    if isinstance(tool, str):
        args = get(inp, "mcp", "arguments")
        args = args if isinstance(args, dict) else {}
        if tool in cfg.get("denied_tools", []):
            return False
        definition = get(inp, "mcp", "tool_definition")
        if isinstance(definition, dict) and definition.get("pin") == "changed":
            return False
        if any(p not in perms for p in cfg.get("tool_permissions", {}).get(tool, [])):
            return False
        scoped = cfg.get("team_scoped_tools", {}).get(tool)
        if scoped is not None:
            if not isinstance(scoped, str) or not isinstance(agent.get("team"), str):
                return False
            if args.get(scoped) != agent.get("team"):
                return False
    return True


def main():
    bindings, eval_bin = sys.argv[1], sys.argv[2]
    eng = opa_engine(bindings)
    passed = failed = 0

    tests = []
    for f in sorted(POLICIES.glob("*_test.rego")):
        src = f.read_text()
        pkg = next(l.split()[1] for l in src.splitlines() if l.startswith("package "))
        for line in src.splitlines():
            if line.startswith("test_"):
                name = line.split()[0]
                tests.append(f"data.{pkg}.{name}")
    for t in tests:
        rs = eng.eval_query(f"x := {t}")
        if rs and rs[0]["x"] is True:
            passed += 1
        else:
            failed += 1
            print(f"FAIL (OPA) {t}: {rs}")

    for case in sorted((POLICIES / "cases").iterdir()):
        inp = json.loads((case / "input.json").read_text())
        want = json.loads((case / "expected.json").read_text())
        got = opa_decision(eng, inp)
        got.pop("valid_until_ns")  # cases fix the decision, not its lifetime
        got.pop("limits")
        want = {"allow": want["allow"], "deny": sorted(want["deny"])}
        if got == want:
            passed += 1
        else:
            failed += 1
            print(f"FAIL (OPA) case {case.name}: got {got}, want {want}")

    base = corpus()
    inputs = base + edge_corpus() + delegated_corpus(base) + transaction_corpus(base) + workload_corpus(base)
    data = json.loads((POLICIES / "data.json").read_text())
    # The embedded engine evaluates the corpus in a child process while
    # OPA, the slower by far, evaluates it in one process per core (each
    # with its own engine: the bindings' Go runtime does not survive a
    # fork, so the workers are spawned).
    with tempfile.TemporaryFile("w+") as feed:
        json.dump(inputs, feed)
        feed.seek(0)
        proc = subprocess.Popen([eval_bin], stdin=feed, stdout=subprocess.PIPE, text=True)
        workers = max(1, min(4, os.cpu_count() or 1))
        step = -(-len(inputs) // workers)
        chunks = [(bindings, inputs[i:i + step]) for i in range(0, len(inputs), step)]
        with multiprocessing.get_context("spawn").Pool(len(chunks)) as pool:
            opa = [r for part in pool.map(opa_chunk, chunks) for r in part]
        out, _ = proc.communicate()
    if proc.returncode != 0:
        raise SystemExit(f"eval exited with {proc.returncode}")
    ours = json.loads(out)
    assert len(ours) == len(inputs), "eval returned a different number of results"
    allowed = 0
    for inp, mine, (theirs, _, _) in zip(inputs, ours, opa):
        mine = {"allow": mine.get("allow"), "deny": sorted(mine.get("deny", [])), "valid_until_ns": mine.get("valid_until_ns"), "limits": mine.get("limits", []), **({"error": mine["error"]} if "error" in mine else {})}
        if mine == theirs:
            passed += 1
            allowed += theirs["allow"]
        else:
            failed += 1
            if failed < 20:
                print(f"DIFF input={json.dumps(inp)}\n  regorus={mine}\n  opa    ={theirs}")
    fast = 0
    for inp, mine in zip(inputs, ours):
        want = intended(inp, data)
        if bool(mine.get("allow")) == want:
            passed += 1
        else:
            failed += 1
            if failed < 40:
                print(f"INTENT input={json.dumps(inp)}\n  policy allow={mine.get('allow')} deny={mine.get('deny')}, intended {want}")
        if not mine.get("allow") and not mine.get("deny") and "error" not in mine:
            failed += 1
            print(f"UNEXPLAINED refusal (no reason): {json.dumps(inp)}")
    for inp, (_, fast_ok, reasons) in zip(inputs, opa):
        if fast_ok is True:
            fast += 1
            if reasons:
                failed += 1
                print(f"UNSOUND fast_ok with reasons {reasons}: {json.dumps(inp)}")
            else:
                passed += 1
    limited = sum(1 for m in ours if m.get("limits"))
    print(f"differential: {len(tests)} Rego tests, {len(inputs)} corpus inputs ({allowed} allowed, {fast} on the fast path, {limited} with limits)")
    if not limited:
        failed += 1
        print("the corpus never reaches a limit: the limits comparison would be vacuous")
    print(f"{passed} passed, {failed} failed")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
