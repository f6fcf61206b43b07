"""Policy evaluation cost: the real OPA engine against agentplane's regorus,
same policies, data and input documents (the decision cases).

OPA runs through the Python-loadable bridge (opa-golib-python-bindings).
Its cost per evaluation is reported as (time of the decision query) minus
(time of a trivial query with the same input), so the bridge's own work
(ctypes, input JSON) is not charged to OPA. The bridge prepares the query on
every call, which opa-envoy-plugin does once: OPA's figure includes that,
so read the ratio as an upper bound.

Usage: opa_cost.py <opa_bindings dir> <release eval binary> [iterations]
"""
import json
import os
import pathlib
import subprocess
import sys
import time

ROOT = pathlib.Path(__file__).resolve().parents[2]
POLICIES = ROOT / "policies"


def main():
    bindings, eval_bin = sys.argv[1], sys.argv[2]
    n = int(sys.argv[3]) if len(sys.argv) > 3 else 2000
    sys.path.insert(0, bindings)
    from opa_bindings import OpaEngine

    eng = OpaEngine()
    for f in sorted(POLICIES.glob("*.rego")):
        if not f.name.endswith("_test.rego"):
            eng.add_policy(f.name, f.read_text())
    eng.add_data(json.loads((POLICIES / "data.json").read_text()))

    cases = sorted((POLICIES / "cases").iterdir())
    inputs = [json.loads((c / "input.json").read_text()) for c in cases]
    decision = "a := data.mcp.authz.allow; d := data.mcp.authz.deny; v := data.mcp.authz.valid_until_ns"

    def per_eval(query, inp):
        for _ in range(50):
            eng.eval_query(query, inp)
        t = time.perf_counter()
        for _ in range(n):
            eng.eval_query(query, inp)
        return (time.perf_counter() - t) * 1e6 / n

    ours = json.loads(subprocess.run(
        [eval_bin], input=json.dumps(inputs), capture_output=True, text=True, check=True,
        env={**os.environ, "AGENTPLANE_EVAL_REPEAT": str(n * 5)},
    ).stdout)
    print(f"| case | OPA µs/eval (decision - trivial) | agentplane µs/eval (the policy compiled to Rust, native) | ratio |")
    print("|---|---|---|---|")
    ratios = []
    for case, inp, mine in zip(cases, inputs, ours):
        full = per_eval(decision, inp)
        trivial = per_eval("x := 1", inp)
        opa = full - trivial
        ratios.append(opa / mine)
        print(f"| {case.name} | {opa:.1f} | {mine:.1f} | {opa / mine:.1f}x |")
    ratios.sort()
    print(f"\nagentplane is {ratios[len(ratios) // 2]:.1f}x faster than OPA per evaluation (median over {len(cases)} cases; min {ratios[0]:.1f}x)")


if __name__ == "__main__":
    main()
