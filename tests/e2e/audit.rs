//! Audit and observability: decision records in Envoy's log, counters in
//! Envoy's stats, trace context on responses and upstream.

use agentplane_e2e::Stack;
use serde_json::{json, Value};

/// The tamper-evident chain: a real log verified, then tampered with.
mod chain;

fn stack() -> Stack {
    let mut cfg: Value = serde_json::from_str(&agentplane_e2e::default_plugin_config()).unwrap();
    cfg["decision_log"] = json!({"enabled": true, "mask": ["/input/request/headers/user-agent"]});
    Stack::start_with(&cfg.to_string())
}

fn records(s: &Stack) -> Vec<Value> {
    s.envoy
        .log()
        .lines()
        .filter_map(|l| l.split_once("agentplane-decision ").map(|(_, r)| r))
        .map(|r| serde_json::from_str(r).unwrap())
        .collect()
}

/// Reads a counter from `/stats/prometheus` (0 when absent).
fn counter(s: &Stack, name: &str) -> u64 {
    s.envoy
        .admin("/stats/prometheus")
        .lines()
        .filter(|l| !l.starts_with('#'))
        .find_map(|l| {
            let (k, v) = l.rsplit_once(' ')?;
            (k.split('{').next()? == name).then(|| v.parse::<f64>().ok())?
        })
        .map_or(0, |v| v as u64)
}

/// Every decision leaves one record with the agent, resource, reason and
/// the status the client got, and no credential; the counters move by
/// exactly the requests sent.
#[test]
fn decisions_leave_records_and_move_counters() {
    let s = stack();
    let tok = s.idp.triage_token();
    let auth = format!("Bearer {tok}");
    for _ in 0..3 {
        let r = s.envoy.request(
            "POST",
            "/mcp://sentiment-analysis/analyze",
            &[
                ("authorization", &auth),
                ("user-agent", "canary-agent/1.0"),
                ("x-agent-team", "forged"),
            ],
        );
        assert_eq!(r.status, 200, "{r:?}");
    }
    let r = s
        .envoy
        .request("GET", "/mcp://web-search/q", &[("authorization", &auth)]);
    assert_eq!(r.status, 403);
    let denied_id = r.json()["decision_id"].as_str().unwrap().to_string();
    let r = s.envoy.request("GET", "/mcp://web-search/q", &[]);
    assert_eq!(r.status, 401);

    // Records are written when the stream ends: wait for all five.
    let t0 = std::time::Instant::now();
    let mut recs = records(&s);
    while recs.len() < 5 && t0.elapsed() < std::time::Duration::from_secs(10) {
        std::thread::sleep(std::time::Duration::from_millis(50));
        recs = records(&s);
    }
    assert_eq!(recs.len(), 5, "{recs:?}");
    let statuses: Vec<u64> = recs.iter().map(|r| r["status"].as_u64().unwrap()).collect();
    assert_eq!(statuses, [200, 200, 200, 403, 401]);
    let denied = &recs[3];
    assert_eq!(denied["decision_id"], denied_id);
    assert_eq!(denied["agent"]["id"], "support-triage@clients");
    assert_eq!(denied["resource"], "web-search");
    assert_eq!(
        denied["reason"],
        "missing permission tools:access for action access_tool"
    );
    assert_eq!(denied["path"], "mcp/authz");
    assert_eq!(denied["input"]["action"], "access_tool");
    assert_eq!(recs[1]["cached"], true);
    let log = s.envoy.log();
    assert!(!log.contains(&tok), "the agent's JWT in Envoy's log");
    assert!(!log.contains("canary-agent"), "masked input in Envoy's log");

    let prom = s.envoy.admin("/stats/prometheus");
    let ours: Vec<&str> = prom.lines().filter(|l| l.contains("agentplane")).collect();
    assert_eq!(counter(&s, "agentplane_decisions_allowed"), 3, "{ours:#?}");
    assert_eq!(counter(&s, "agentplane_decisions_denied"), 1);
    assert_eq!(counter(&s, "agentplane_decisions_unauthorized"), 1);
    assert_eq!(counter(&s, "agentplane_headers_stripped"), 3);
    assert_eq!(counter(&s, "agentplane_decision_cache_hit"), 2);
    assert_eq!(counter(&s, "agentplane_decision_cache_miss"), 2);
}

/// The request id comes back as `x-mcp-trace-id` (with the decision id),
/// and the client's W3C trace context reaches upstream untouched.
#[test]
fn trace_context_reaches_upstream_and_the_response() {
    let s = stack();
    let tok = s.idp.triage_token_with(&["skills:invoke"]);
    let tp = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
    let r = s.envoy.request(
        "POST",
        "/mcp://sentiment-analysis/analyze",
        &[
            ("authorization", &format!("Bearer {tok}")),
            ("traceparent", tp),
        ],
    );
    assert_eq!(r.status, 200, "{r:?}");
    let up = &s.upstream.seen()[0];
    assert_eq!(up.one("traceparent").as_deref(), Some(tp));
    let rid = up.one("x-request-id").unwrap();
    assert_eq!(r.header("x-mcp-trace-id"), Some(rid.as_str()));
    assert!(r.header("x-decision-id").is_some());
    let r = s
        .envoy
        .request("POST", "/mcp://sentiment-analysis/analyze", &[]);
    assert_eq!(r.status, 401);
    assert!(r.header("x-mcp-trace-id").is_some_and(|v| !v.is_empty()));
}

/// Records also reach an HTTP collector in batches; with mandatory
/// logging, once the collector is gone and the buffer is full, requests are
/// denied with a reason and never reach upstream.
#[test]
fn collector_receives_batches_and_mandatory_logging_denies_without_it() {
    use agentplane_e2e::{render_envoy, Envoy, EnvoySetup, Idp, Upstream};
    let idp = Idp::new();
    let upstream = Upstream::start();
    let collector = Upstream::start();
    let mut cfg: Value = serde_json::from_str(&agentplane_e2e::default_plugin_config()).unwrap();
    cfg["decision_log"] = json!({"enabled": true, "mandatory": true, "collector": {
        "cluster": "decision_logs", "authority": "collector", "path": "/v1/logs",
        "max_batch": 2, "flush_ms": 100, "max_buffer": 3}});
    let mut r = render_envoy(
        &EnvoySetup::without_vault(&idp, upstream.port, cfg.to_string()),
        true,
    );
    r.add_cluster("decision_logs", collector.port);
    let envoy = Envoy::start_yaml(&r);
    let tok = idp.triage_token_with(&["skills:invoke"]);
    let auth = format!("Bearer {tok}");
    let mut ids = Vec::new();
    for _ in 0..3 {
        let r = envoy.request(
            "POST",
            "/mcp://sentiment-analysis/analyze",
            &[("authorization", &auth)],
        );
        assert_eq!(r.status, 200, "{r:?}");
        ids.push(r.header("x-decision-id").unwrap().to_string());
    }
    // Batches arrive (a full one at once, the rest within flush_ms).
    let t0 = std::time::Instant::now();
    let shipped = loop {
        let got: Vec<Value> = collector
            .seen()
            .iter()
            .flat_map(|s| {
                assert_eq!((s.method.as_str(), s.path.as_str()), ("POST", "/v1/logs"));
                serde_json::from_str::<Vec<Value>>(&s.body).unwrap()
            })
            .collect();
        if got.len() >= 3 || t0.elapsed() > std::time::Duration::from_secs(10) {
            break got;
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
    };
    let shipped_ids: Vec<&str> = shipped
        .iter()
        .map(|r| r["decision_id"].as_str().unwrap())
        .collect();
    assert_eq!(shipped_ids, ids);
    assert!(!collector.seen().iter().any(|s| s.body.contains(&tok)));

    // The collector fails: the buffer fills, then requests are denied.
    collector.set_status(503);
    upstream.clear();
    let mut statuses = Vec::new();
    let mut reasons = Vec::new();
    for _ in 0..8 {
        let r = envoy.request(
            "POST",
            "/mcp://sentiment-analysis/analyze",
            &[("authorization", &auth)],
        );
        if r.status != 200 {
            reasons.push(r.json()["reason"].as_str().unwrap_or("").to_string());
        }
        statuses.push(r.status);
    }
    assert!(statuses.iter().take(3).all(|s| *s == 200), "{statuses:?}");
    assert!(statuses.iter().skip(4).all(|s| *s == 503), "{statuses:?}");
    assert!(
        reasons.iter().all(|r| r == "decision_log_unavailable"),
        "{reasons:?}"
    );
    let allowed = statuses.iter().filter(|s| **s == 200).count();
    assert_eq!(
        upstream.seen().len(),
        allowed,
        "denied requests never went upstream"
    );
}

/// The Vault callouts a request starts carry its request id (minted by
/// the filter) and `traceparent` (here "Vault" is an echo server that records what it got;
/// its answer is not a login, so the request then fails closed).
#[test]
fn callouts_carry_the_requests_trace_context() {
    use agentplane_e2e::{Envoy, EnvoySetup, Idp, Upstream};
    let idp = Idp::new();
    let upstream = Upstream::start();
    let fake_vault = Upstream::start();
    let cfg = agentplane_e2e::config_with_api_key(
        json!({"cluster": "vault", "authority": "vault", "retries": 0}),
        &["sentiment-analysis"],
    );
    let envoy = Envoy::start(&EnvoySetup {
        jwks: idp.jwks(),
        upstream_port: upstream.port,
        plugin_config: cfg.to_string(),
        vault_port: fake_vault.port,
    });
    let tok = idp.agent_token(
        "a@clients",
        "ml",
        "support",
        "production",
        &["skills:invoke"],
    );
    let tp = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01";
    let r = envoy.request(
        "POST",
        "/mcp://sentiment-analysis/analyze",
        &[
            ("authorization", &format!("Bearer {tok}")),
            ("traceparent", tp),
            ("x-request-id", "trace-me-42"),
        ],
    );
    assert_eq!(r.status, 503, "{r:?}");
    // The request id is the filter's own (the client's is never trusted
    // by default): the one in the reply, the log and the callouts.
    let id = r.header("x-decision-id").unwrap().to_string();
    assert_eq!(r.header("x-mcp-trace-id"), Some(id.as_str()));
    let login = &fake_vault.seen()[0];
    assert_eq!(login.path, "/v1/auth/jwt/login");
    assert_eq!(login.one("traceparent").as_deref(), Some(tp));
    assert_eq!(login.one("x-request-id").as_deref(), Some(id.as_str()));
    assert!(upstream.seen().is_empty());
}

/// With `decision_log.sink` "access_log" records come through Envoy's
/// access log (the shipped `envoy.yaml`'s file logger), each one line
/// that is the prefix and a JSON object, none through Envoy's own log: an
/// allowed request forwarded with the upstream's status (it waited for
/// its secret first), the same request answered from the decision cache,
/// and a denial with its 403. Neither the injected secret nor the agent's
/// JWT is in any line.
#[test]
fn records_arrive_through_envoys_access_log_with_the_final_status() {
    use agentplane_e2e::{Bao, Idp};
    const CANARY: &str = "canary-access-log-7c1e0d-never-log";
    let idp = Idp::new();
    let bao = Bao::start();
    bao.setup_agents(&idp);
    bao.put_agent_secret("a@clients", json!({"api_key": CANARY}));
    let mut cfg = agentplane_e2e::config_with_api_key(
        json!({"cluster": "vault", "authority": "127.0.0.1", "role": "agent", "retries": 1}),
        &["sentiment-analysis"],
    );
    cfg["decision_log"] = json!({"enabled": true, "sink": "access_log"});
    let s = Stack::build(&cfg.to_string())
        .idp(idp)
        .vault(bao.port)
        .start();
    s.upstream.set_status(201);
    let tok = s.idp.agent_token(
        "a@clients",
        "ml",
        "support",
        "production",
        &["skills:invoke", "data:read"],
    );
    let auth = format!("Bearer {tok}");
    let mut ids = Vec::new();
    for (method, path, want) in [
        ("POST", "/mcp://sentiment-analysis/analyze", 201),
        ("POST", "/mcp://sentiment-analysis/analyze", 201),
        ("GET", "/mcp://web-search/q", 403),
    ] {
        let r = s.envoy.request(method, path, &[("authorization", &auth)]);
        assert_eq!(r.status, want, "{r:?}");
        ids.push(r.header("x-decision-id").unwrap().to_string());
    }
    assert_eq!(s.upstream.seen()[0].all("x-api-key"), [CANARY]);

    // The access log is flushed in the background: wait for all three.
    let lines = |log: &str| -> Vec<String> {
        log.lines()
            .filter(|l| l.contains("agentplane-decision "))
            .map(str::to_string)
            .collect()
    };
    let t0 = std::time::Instant::now();
    let mut got = lines(&s.envoy.log());
    while got.len() < 3 && t0.elapsed() < std::time::Duration::from_secs(15) {
        std::thread::sleep(std::time::Duration::from_millis(100));
        got = lines(&s.envoy.log());
    }
    assert_eq!(got.len(), 3, "{got:#?}");
    let recs: Vec<Value> = got
        .iter()
        .map(|l| {
            let json = l
                .strip_prefix("agentplane-decision ")
                .unwrap_or_else(|| panic!("not an access-log line: {l}"));
            serde_json::from_str(json).unwrap()
        })
        .collect();
    let seen: Vec<(&str, u64, bool)> = recs
        .iter()
        .map(|r| {
            (
                r["decision_id"].as_str().unwrap(),
                r["status"].as_u64().unwrap(),
                r["cached"].as_bool().unwrap(),
            )
        })
        .collect();
    assert_eq!(
        seen,
        [
            (ids[0].as_str(), 201, false),
            (ids[1].as_str(), 201, true),
            (ids[2].as_str(), 403, false),
        ]
    );
    assert_eq!(recs[0]["secrets"], json!(["x-api-key"]));
    assert_eq!(recs[1]["input"]["request"]["id"], ids[1].as_str());
    assert_eq!(
        recs[2]["reason"],
        "missing permission tools:access for action access_tool"
    );
    let log = s.envoy.log();
    assert!(!log.contains(CANARY), "the secret in Envoy's logs");
    assert!(!log.contains(&tok), "the agent's JWT in Envoy's logs");
}
