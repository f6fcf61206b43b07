//! The bench's MIX workload natively, through `MockHost`: many agents,
//! every request distinct, 20% denied. Prints ns per decision with the
//! decision cache on and off, for profiling (`perf record`).
//!
//! `cargo run --release -p agentplane-core --example mix [agents] [requests] [on|off]`

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]

use agentplane_core::{pbstruct, Filter, MockHost};
use serde_json::json;
use std::time::Instant;

const CONFIG: &str = include_str!("../../../envoy/agentplane.json");

/// `AGENTPLANE_MIX_TYPE=metered` gives every agent the shipped data's
/// per-agent rate limit (the bench's S4Q arm).
fn agent_type() -> String {
    std::env::var("AGENTPLANE_MIX_TYPE").unwrap_or_else(|_| "support".into())
}

fn metadata(i: usize) -> Vec<u8> {
    let perms: Vec<&str> = if i % 5 == 4 {
        vec![]
    } else {
        vec!["skills:invoke", "data:read"]
    };
    let ns = json!({ "jwt_payload": {
        "iss": "https://idp.agentplane.test/", "aud": "https://mcp.example.com/",
        "sub": format!("agent-{i:04}@clients"), "azp": format!("agent-{i:04}@clients"),
        "gty": "client-credentials", "iat": 1746270000, "exp": 1746277200,
        "permissions": perms,
        "https://mcp.example.com/agent_type": agent_type(),
        "https://mcp.example.com/team": "customer-success",
        "https://mcp.example.com/environment": "production",
    }});
    pbstruct::encode_metadata(&[("envoy.filters.http.jwt_authn", ns.as_object().unwrap())])
}

fn main() {
    let mut args = std::env::args().skip(1);
    let agents: usize = args.next().and_then(|a| a.parse().ok()).unwrap_or(100);
    let n: usize = args.next().and_then(|a| a.parse().ok()).unwrap_or(200_000);
    let cache = args.next().unwrap_or_else(|| "on".into()) == "on";
    let mut cfg: serde_json::Value = serde_json::from_str(CONFIG).unwrap();
    cfg["decision_cache"] = json!({ "enabled": cache });
    // AGENTPLANE_MIX_ENGINE=rvm|native|interpreter (default: the config's).
    if let Ok(engine) = std::env::var("AGENTPLANE_MIX_ENGINE") {
        cfg["policy"]["engine"] = json!(engine);
    }
    let mut filter = Filter::new(cfg.to_string().as_bytes(), 1).unwrap();
    let metas: Vec<Vec<u8>> = (0..agents).map(metadata).collect();
    let paths = [
        "/mcp://sentiment-analysis/analyze?n=",
        "/mcp://customer-lookup/customers/42?n=",
        "/mcp://hello-skill/hello?name=bench&n=",
        "/mcp://sentiment-analysis/analyze?lang=en&n=",
    ];
    let hosts: Vec<MockHost> = (0..n)
        .map(|i| {
            let p = format!("{}{i}", paths[(i / 100) % paths.len()]);
            MockHost::new()
                .with_header(":method", "GET")
                .with_header(":path", &p)
                .with_header(":authority", "127.0.0.1:10000")
                .with_header("authorization", "Bearer x.y.z")
                .with_header("user-agent", "wrk")
                .with_property(&["metadata"], metas[i % agents].clone())
        })
        .collect();
    let t0 = Instant::now();
    let mut allowed = 0usize;
    for mut h in hosts {
        let (_, d) = filter.on_request_headers(&mut h);
        allowed += usize::from(d.allowed());
    }
    let el = t0.elapsed();
    println!(
        "{agents} agents, {n} requests, cache {}: {:.0} ns/decision, {allowed} allowed, cache {:?}",
        if cache { "on" } else { "off" },
        el.as_nanos() as f64 / n as f64,
        filter.cache_stats()
    );
}
