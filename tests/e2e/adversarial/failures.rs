//! Attacks through failure: a collector that rejects batches, a Vault
//! that stalls or fails while a request (and its body) waits, a VM that
//! traps (fail-reload and fail-closed). None may hold, leak or pass other
//! requests.

use super::Routed;
use agentplane_e2e::{default_plugin_config, Envoy, EnvoySetup, Idp, Stack, Upstream};
use serde_json::{json, Value};
use std::time::{Duration, Instant};

/// A decision-log collector that rejects a batch (4xx) was retried forever
/// and blocked every record behind it. Now the batch is dropped and
/// counted, and later records still ship.
#[test]
fn a_collector_rejecting_a_batch_cannot_block_the_audit_trail() {
    let collector = Upstream::start();
    collector.set_status(400);
    let mut cfg: Value = serde_json::from_str(&default_plugin_config()).unwrap();
    cfg["decision_log"] = json!({"enabled": true, "collector": {
        "cluster": "decision_logs", "authority": "collector", "path": "/v1/logs",
        "max_batch": 1, "flush_ms": 10}});
    let idp = Idp::new();
    let upstream = Upstream::start();
    let mut r = agentplane_e2e::render_envoy(
        &EnvoySetup::without_vault(&idp, upstream.port, cfg.to_string()),
        true,
    );
    r.add_cluster("decision_logs", collector.port);
    let envoy = Envoy::start_yaml(&r);
    let auth = agent_a(&idp);
    let wait_for = |what: &dyn Fn() -> bool| {
        let t0 = Instant::now();
        while !what() && t0.elapsed() < Duration::from_secs(10) {
            std::thread::sleep(Duration::from_millis(20));
        }
        what()
    };
    let denied = envoy.request("POST", "/mcp://sentiment-analysis/x", &[]);
    assert_eq!(denied.status, 401);
    assert!(
        wait_for(&|| !collector.seen().is_empty()),
        "first batch sent"
    );
    assert!(
        wait_for(&|| envoy
            .admin("/stats?filter=agentplane.decision_log.dropped")
            .contains("agentplane.decision_log.dropped: 1")),
        "{}",
        envoy.admin("/stats?filter=agentplane")
    );
    // The collector recovers: the next record ships; the rejected one is
    // never resent.
    collector.set_status(200);
    collector.clear();
    let second = envoy.request(
        "POST",
        "/mcp://sentiment-analysis/x",
        &[("authorization", &auth)],
    );
    assert_eq!(second.status, 200);
    let id = second.header("x-decision-id").unwrap().to_string();
    assert!(wait_for(&|| collector
        .seen()
        .iter()
        .any(|s| s.body.contains(&id))));
    let denied_id = denied.header("x-decision-id").unwrap();
    assert!(!collector.seen().iter().any(|s| s.body.contains(denied_id)));
}

/// With two workers and Vault stalled, a request whose fetch another worker
/// had claimed waited out that worker's whole claim (11 s seen; about 22 s
/// with default timeouts) after the fetch had already failed. Now waiting
/// workers learn of the failure at once: every request gets its 503 within
/// about one Vault timeout.
#[test]
fn a_stalled_vault_cannot_hold_other_workers_requests_past_the_failure() {
    // "Vault" accepts connections and never answers.
    let stall = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let vault_port = stall.local_addr().unwrap().port();
    let held = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    let h2 = held.clone();
    std::thread::spawn(move || {
        for c in stall.incoming().flatten() {
            h2.lock().unwrap().push(c);
        }
    });
    let cfg = agentplane_e2e::config_with_api_key(
        json!({"cluster": "vault", "authority": "vault", "timeout_ms": 1000, "retries": 0}),
        &["sentiment-analysis"],
    );
    let Stack {
        idp,
        upstream,
        envoy,
    } = Stack::build(&cfg.to_string())
        .vault(vault_port)
        .workers(2)
        .start();
    let auth = agent_a(&idp);
    // Separate connections, so both workers take some.
    let t0 = Instant::now();
    let handles: Vec<_> = (0..8)
        .map(|_| {
            let auth = auth.clone();
            let port = envoy.port;
            std::thread::spawn(move || {
                let r = agentplane_e2e::http(
                    port,
                    "POST",
                    "/mcp://sentiment-analysis/x",
                    &[("authorization", &auth)],
                    "",
                );
                (r.status, t0.elapsed())
            })
        })
        .collect();
    for h in handles {
        let (status, took) = h.join().unwrap();
        assert_eq!(status, 503);
        // One Vault timeout (1 s) plus scheduling; the old claim lease was
        // timeout × (retries + 2) × 2 = 4 s.
        assert!(
            took < Duration::from_millis(2500),
            "answered after {took:?}"
        );
    }
    assert!(upstream.seen().is_empty());
}

/// A trap is what the filter is built never to hit; if one happens anyway
/// (here: a test-only build that aborts on a marker header), the shipped
/// FAIL_RELOAD fails that request closed and reloads the VM: the proxy
/// serves again. (With FAIL_CLOSED the worker would answer 503 to every
/// later request until a config change.)
#[test]
fn a_trapped_vm_fails_closed_then_serves_again() {
    let trap = std::env::var("AGENTPLANE_TRAP_WASM").unwrap_or_else(|_| {
        agentplane_e2e::repo_root()
            .join("target/agentplane-trap.wasm")
            .display()
            .to_string()
    });
    assert!(
        std::path::Path::new(&trap).exists(),
        "{trap} missing: ./build.sh test builds it"
    );
    let s = Routed::start_with(&default_plugin_config(), Some(&trap), false);
    let auth = s.token("ml", &["skills:invoke"]);
    let ok = || {
        s.envoy.request(
            "POST",
            "/mcp://sentiment-analysis/x",
            &[("authorization", &auth)],
        )
    };
    assert_eq!(ok().status, 200);
    let r = agentplane_e2e::try_http(
        s.envoy.port,
        "POST",
        "/mcp://sentiment-analysis/x",
        &[("authorization", &auth), ("x-agentplane-test-trap", "1")],
        "",
    );
    assert!(r.as_ref().map_or(true, |r| r.status >= 500), "{r:?}");
    s.clear();
    // The VM is reloaded (1 s default backoff); the proxy serves again and
    // never forwarded anything unchecked meanwhile.
    let t0 = Instant::now();
    let mut statuses = Vec::new();
    loop {
        let st = ok().status;
        statuses.push(st);
        if st == 200 || t0.elapsed() > Duration::from_secs(15) {
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    assert_eq!(
        statuses.last(),
        Some(&200),
        "{statuses:?}\n{}",
        s.envoy.log()
    );
    assert!(
        statuses.iter().all(|st| *st == 200 || *st == 503),
        "{statuses:?}"
    );
    let served = s.seen("sentiment-analysis");
    assert_eq!(served.len(), 1, "only the allowed request after recovery");
    assert_eq!(
        served[0].one("x-agent-id").as_deref(),
        Some("support-triage@clients")
    );
    eprintln!(
        "trap recovery: served again after {:?} ({} requests refused meanwhile)",
        t0.elapsed(),
        statuses.len() - 1
    );
}

/// A minimal Vault on loopback: answers a JWT login and any KV read after
/// `delay`, so requests are paused while their bodies arrive.
fn fake_vault(delay: Duration, ok: bool) -> u16 {
    use std::io::{Read, Write};
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = l.local_addr().unwrap().port();
    std::thread::spawn(move || {
        for mut c in l.incoming().flatten() {
            std::thread::spawn(move || {
                let mut buf = [0u8; 8192];
                let n = c.read(&mut buf).unwrap_or(0);
                let head = String::from_utf8_lossy(&buf[..n]).to_string();
                std::thread::sleep(delay);
                let body = if !ok {
                    "{}".to_string()
                } else if head.contains("/auth/") {
                    r#"{"auth":{"client_token":"s.fake","lease_duration":600}}"#.to_string()
                } else {
                    r#"{"data":{"data":{"api_key":"k-fake"}}}"#.to_string()
                };
                let status = if ok { "200 OK" } else { "500 Oops" };
                let resp = format!(
                    "HTTP/1.1 {status}\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
                    body.len()
                );
                let _ = c.write_all(resp.as_bytes());
            });
        }
    });
    port
}

/// A bearer token for agent `a@clients` (team ml) with skills:invoke.
fn agent_a(idp: &Idp) -> String {
    let token = idp.agent_token(
        "a@clients",
        "ml",
        "support",
        "production",
        &["skills:invoke"],
    );
    format!("Bearer {token}")
}

fn secrets_stack(vault_port: u16) -> (Idp, Upstream, Envoy, String) {
    let cfg = agentplane_e2e::config_with_api_key(
        json!({"cluster": "vault", "authority": "vault", "retries": 0, "timeout_ms": 2000}),
        &["sentiment-analysis"],
    );
    let Stack {
        idp,
        upstream,
        envoy,
    } = Stack::build(&cfg.to_string()).vault(vault_port).start();
    let auth = agent_a(&idp);
    (idp, upstream, envoy, auth)
}

/// The three ways a body can arrive while its request waits for secrets.
fn send_with_body(port: u16, auth: &str, how: &str) -> agentplane_e2e::Response {
    use std::io::{Read, Write};
    let body = r#"{"text":"refund please"}"#;
    let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
    let head = format!(
        "POST /mcp://sentiment-analysis/analyze HTTP/1.1\r\nhost: localhost\r\nconnection: close\r\nauthorization: {auth}\r\ncontent-type: application/json\r\n"
    );
    match how {
        "content-length" => {
            let req = format!("{head}content-length: {}\r\n\r\n{body}", body.len());
            s.write_all(req.as_bytes()).unwrap();
        }
        "delayed" => {
            s.write_all(format!("{head}content-length: {}\r\n\r\n", body.len()).as_bytes())
                .unwrap();
            std::thread::sleep(Duration::from_millis(300));
            s.write_all(body.as_bytes()).unwrap();
        }
        _ => {
            s.write_all(format!("{head}transfer-encoding: chunked\r\n\r\n").as_bytes())
                .unwrap();
            for part in [&body[..8], &body[8..]] {
                s.write_all(format!("{:x}\r\n{part}\r\n", part.len()).as_bytes())
                    .unwrap();
                std::thread::sleep(Duration::from_millis(150));
            }
            s.write_all(b"0\r\n\r\n").unwrap();
        }
    }
    let mut raw = Vec::new();
    let _ = s.read_to_end(&mut raw);
    let text = String::from_utf8_lossy(&raw);
    let status = text
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    agentplane_e2e::Response {
        status,
        headers: Vec::new(),
        body: text
            .split_once("\r\n\r\n")
            .map(|(_, b)| b.to_string())
            .unwrap_or_default(),
    }
}

/// A request with a body (Content-Length at once, delayed, chunked) that
/// waits for its secrets never reaches upstream when they fail: the body
/// cannot push the paused request through.
#[test]
fn a_body_cannot_push_a_request_waiting_for_secrets_past_a_failure() {
    let vault = fake_vault(Duration::from_millis(400), false);
    let (_idp, upstream, envoy, auth) = secrets_stack(vault);
    for how in ["content-length", "delayed", "chunked"] {
        let r = send_with_body(envoy.port, &auth, how);
        assert_eq!(r.status, 503, "{how}: {r:?}");
        assert!(r.body.contains("secrets_unavailable"), "{how}: {r:?}");
    }
    assert!(upstream.seen().is_empty(), "{:?}", upstream.seen());
}

/// The same bodies reach upstream intact, with the secret, when the
/// secrets arrive: holding the body while paused loses nothing.
#[test]
fn a_body_held_while_secrets_are_fetched_arrives_intact() {
    let vault = fake_vault(Duration::from_millis(400), true);
    let (_idp, upstream, envoy, auth) = secrets_stack(vault);
    for how in ["content-length", "delayed", "chunked"] {
        upstream.clear();
        let r = send_with_body(envoy.port, &auth, how);
        assert_eq!(r.status, 200, "{how}: {r:?}");
        let seen = upstream.seen();
        assert_eq!(seen.len(), 1, "{how}");
        assert_eq!(seen[0].one("x-api-key").as_deref(), Some("k-fake"), "{how}");
        assert_eq!(seen[0].body, r#"{"text":"refund please"}"#, "{how}");
    }
}

/// What a trap costs under `FAIL_CLOSED`, for comparison with the shipped
/// `FAIL_RELOAD`: the worker's VM stays dead, and every later request is
/// refused (fail closed, but down) until the configuration changes.
#[test]
fn under_fail_closed_a_trapped_vm_refuses_everything_after_it() {
    let trap = agentplane_e2e::repo_root()
        .join("target/agentplane-trap.wasm")
        .display()
        .to_string();
    let trap = std::env::var("AGENTPLANE_TRAP_WASM").unwrap_or(trap);
    assert!(std::path::Path::new(&trap).exists(), "{trap} missing");
    let s = Routed::start_with(&default_plugin_config(), Some(&trap), true);
    let auth = s.token("ml", &["skills:invoke"]);
    let ok = || {
        s.envoy
            .request(
                "POST",
                "/mcp://sentiment-analysis/x",
                &[("authorization", &auth)],
            )
            .status
    };
    assert_eq!(ok(), 200);
    let _ = agentplane_e2e::try_http(
        s.envoy.port,
        "POST",
        "/mcp://sentiment-analysis/x",
        &[("authorization", &auth), ("x-agentplane-test-trap", "1")],
        "",
    );
    s.clear();
    // Three seconds is well past FAIL_RELOAD's 1 s recovery.
    let t0 = Instant::now();
    let mut statuses = Vec::new();
    while t0.elapsed() < Duration::from_secs(3) {
        statuses.push(ok());
        std::thread::sleep(Duration::from_millis(200));
    }
    assert!(statuses.iter().all(|st| *st == 503), "{statuses:?}");
    assert_eq!(s.total_seen(), 0, "nothing forwarded unchecked");
}
