//! Runs a policy written for opa-envoy-plugin (`tests/opa/envoy/*.rego`,
//! entrypoint `data.envoy.authz.allow`) through the filter with
//! `policy.input: "envoy"` on a grid of requests, and prints one JSON
//! line per request: the input document the filter built (from its
//! decision record) and what the filter did (forwarded with which
//! headers, or the reply's status, body and headers).
//! `tests/opa/envoy_compat.py` evaluates the same policy with the OPA
//! engine on the same inputs and checks that both decided alike.

use agentplane_core::config::Config;
use agentplane_core::host::MockHost;
use agentplane_core::policy::Policy;
use agentplane_core::request::{Filter, Flow, RequestBody};
use serde_json::{json, Map, Value};
use std::process::ExitCode;

fn main() -> ExitCode {
    let Some(dir) = std::env::args().nth(1) else {
        eprintln!("usage: envoy_compat <dir with the opa-envoy-plugin policy>");
        return ExitCode::FAILURE;
    };
    let mut modules = Vec::new();
    let Ok(entries) = std::fs::read_dir(&dir) else {
        eprintln!("envoy_compat: cannot read {dir}");
        return ExitCode::FAILURE;
    };
    for e in entries.flatten() {
        let p = e.path();
        if p.extension().is_some_and(|x| x == "rego") {
            let name = p.display().to_string();
            match std::fs::read_to_string(&p) {
                Ok(src) => modules.push((name, src)),
                Err(err) => {
                    eprintln!("envoy_compat: {name}: {err}");
                    return ExitCode::FAILURE;
                }
            }
        }
    }
    let modules: Vec<(&str, &str)> = modules
        .iter()
        .map(|(n, s)| (n.as_str(), s.as_str()))
        .collect();
    let cfg = json!({
        "policy": {"entrypoint": "data.envoy.authz.allow", "input": "envoy"},
        "resources": {
            "reports": {"type": "data", "metadata": {"team": "customer-success", "environment": "production"}},
            "tickets-mcp": {"type": "tool", "protocol": "mcp",
                "metadata": {"team": "customer-success", "environment": "production"}}
        },
        "decision_log": {"enabled": true, "sample_allowed": 1.0},
    });
    let mut n = 0;
    for sub in ["support-triage@clients", "other@clients"] {
        for (method, path) in [
            ("GET", "/reports/q3"),
            ("GET", "/reports"),
            ("GET", "/reports/q3?format=csv"),
            ("GET", "/reports/q3?format=pdf&format=csv"),
            ("GET", "/reports/a%2Fb"),
            ("GET", "/other/x"),
            ("DELETE", "/reports/q3"),
            ("POST", "/tickets-mcp/mcp"),
        ] {
            for tenant in [None, Some("acme"), Some("other")] {
                for tool in ["search_docs", "bulk_export"] {
                    if method != "POST" && tool != "search_docs" {
                        continue;
                    }
                    let (Ok(config), Ok(policy)) = (
                        Config::from_json(cfg.to_string().as_bytes()),
                        Policy::compile(&modules, "{}", "data.envoy.authz.allow"),
                    ) else {
                        eprintln!("envoy_compat: the config or the policy does not load");
                        return ExitCode::FAILURE;
                    };
                    let mut f = Filter::with_policy(config, policy, 7);
                    let mut payload = Map::new();
                    payload.insert(
                        "jwt_payload".into(),
                        json!({"sub": sub, "exp": 4_102_444_800u64, "permissions": []}),
                    );
                    let mut h = MockHost::new()
                        .at(1_746_273_600_000_000_000)
                        .with_header(":method", method)
                        .with_header(":path", path)
                        .with_header(":authority", "localhost:15000")
                        .with_header("x-internal-debug", "1")
                        .with_property(
                            &["metadata"],
                            agentplane_core::pbstruct::encode_metadata(&[(
                                "envoy.filters.http.jwt_authn",
                                &payload,
                            )]),
                        );
                    if let Some(t) = tenant {
                        h = h.with_header("x-tenant", t);
                    }
                    if method == "POST" {
                        h = h.with_header("content-type", "application/json");
                    }
                    f.on_configured(&mut h, "compat");
                    let (mut flow, mut d) = f.on_request_headers(&mut h);
                    if flow == Flow::NeedBody {
                        let body = json!({"jsonrpc": "2.0", "id": 1, "method": "tools/call",
                                          "params": {"name": tool, "arguments": {}}})
                        .to_string();
                        let mut waiting = d;
                        (flow, d) = f.on_request_body(
                            &mut h,
                            &mut waiting,
                            RequestBody::Complete(body.as_bytes()),
                        );
                    }
                    if flow == Flow::Continue {
                        f.on_response_headers(&mut h, &mut d);
                    }
                    f.on_log(&mut h, &mut d);
                    let record = h
                        .logs
                        .borrow()
                        .iter()
                        .filter_map(|(_, l)| l.strip_prefix(agentplane_core::audit::PREFIX))
                        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
                        .find(|v| v.get("decision_id").is_some());
                    let Some(record) = record else {
                        eprintln!("envoy_compat: no decision record for {method} {path}");
                        return ExitCode::FAILURE;
                    };
                    let pairs = |hs: &[(String, String)]| -> Value {
                        Value::Object(
                            hs.iter()
                                .map(|(k, v)| (k.clone(), Value::from(v.as_str())))
                                .collect(),
                        )
                    };
                    let upstream: Map<String, Value> =
                        ["x-ext-authz-check", "x-reader", "x-internal-debug"]
                            .iter()
                            .filter_map(|k| {
                                Some((
                                    k.to_string(),
                                    Value::from(h.header_values(k).first()?.as_str()),
                                ))
                            })
                            .collect();
                    let out = json!({
                        "input": record.get("input").cloned().unwrap_or(Value::Null),
                        "forwarded": flow == Flow::Continue,
                        "upstream": upstream,
                        "response_headers": pairs(&h.response_headers),
                        "reply": h.reply.as_ref().map(|r| json!({
                            "status": r.status,
                            "body": String::from_utf8_lossy(&r.body),
                            "headers": pairs(&r.headers),
                        })),
                    });
                    println!("{out}");
                    n += 1;
                }
            }
        }
    }
    eprintln!("envoy_compat: {n} requests");
    ExitCode::SUCCESS
}
