//! The decision log's hash chain end to end: a real Envoy's records and
//! signed checkpoints verified by `agentplane-log verify`, then verified
//! again after each kind of tampering, which it must find at the line
//! where it happened; and the checkpoint a VM writes when a configuration
//! swap retires it.

use serde_json::{json, Value};
use std::collections::HashMap;

/// One real run for the tamper-evidence tests: two workers (two chains),
/// the `access_log` sink, checkpoints every second signed with the key
/// from a real OpenBao, then a clean shutdown. Gives Envoy's whole output
/// (records and checkpoints) and the JWKS the filter served.
fn chained_run() -> &'static (String, String) {
    use agentplane_e2e::{render_envoy_routed, try_http, Bao, Envoy, EnvoySetup, Idp, Upstream};
    use std::time::{Duration, Instant};
    static RUN: std::sync::OnceLock<(String, String)> = std::sync::OnceLock::new();
    RUN.get_or_init(|| {
        let idp = Idp::new();
        let bao = Bao::start();
        let (vault_token, _) = bao.setup_txn_signing("gw-log-1");
        let upstream = Upstream::start();
        let mut cfg: Value =
            serde_json::from_str(&agentplane_e2e::default_plugin_config()).unwrap();
        cfg["vault"] = json!({"cluster": "vault", "authority": "127.0.0.1", "retries": 1});
        cfg["txn_token"] = json!({"issuer": "https://gw.test", "audience": "agentplane.test"});
        cfg["decision_log"] = json!({"enabled": true, "sink": "access_log", "checkpoint_s": 1});
        let setup = EnvoySetup {
            jwks: idp.jwks(),
            upstream_port: upstream.port,
            plugin_config: cfg.to_string(),
            vault_port: bao.port,
        };
        let mut rendered = render_envoy_routed(&setup, true, &Default::default());
        rendered.workers = 2;
        rendered
            .env
            .push(("AGENTPLANE_VAULT_TOKEN".into(), vault_token));
        let mut envoy = Envoy::start_yaml(&rendered);
        let jwks_path = "/.well-known/agentplane/jwks.json";
        let t0 = Instant::now();
        let jwks = loop {
            match try_http(envoy.port, "GET", jwks_path, &[], "") {
                Ok(r) if r.status == 200 => break r.body,
                _ if t0.elapsed() < Duration::from_secs(20) => {
                    std::thread::sleep(Duration::from_millis(20))
                }
                r => panic!("the signing key never loaded: {r:?}\n{}", envoy.log()),
            }
        };
        let auth = format!("Bearer {}", idp.triage_token());
        for i in 0..12 {
            let path = if i % 3 == 0 {
                "/mcp://web-search/q"
            } else {
                "/mcp://sentiment-analysis/analyze"
            };
            let r = envoy.request("POST", path, &[("authorization", &auth)]);
            assert!(r.status == 200 || r.status == 403, "{r:?}");
        }
        // A periodic checkpoint, more records, then the shutdown one.
        std::thread::sleep(Duration::from_millis(1_500));
        for _ in 0..4 {
            envoy.request("POST", "/mcp://web-search/q", &[("authorization", &auth)]);
        }
        agentplane_e2e::http(envoy.admin_port, "POST", "/quitquitquit", &[], "");
        assert!(envoy.wait_exit(Duration::from_secs(15)).is_some());
        (envoy.log(), jwks)
    })
}

/// Runs `agentplane-log verify --closed` on `log` against the chained
/// run's JWKS: (exit code, output).
fn verify_log(log: &str, name: &str) -> (i32, String) {
    verify_log_with(log, name, &["--closed", "--jwks", "jwks.json"])
}

/// Runs `agentplane-log verify <args> envoy.log` on `log`.
fn verify_log_with(log: &str, name: &str, args: &[&str]) -> (i32, String) {
    let jwks = if args.contains(&"jwks.json") {
        chained_run().1.as_str()
    } else {
        "{}"
    };
    let dir = std::env::temp_dir().join(format!("agentplane-log-{}-{name}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join("jwks.json"), jwks).unwrap();
    std::fs::write(dir.join("envoy.log"), log).unwrap();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_agentplane-log"))
        .arg("verify")
        .args(args)
        .arg("envoy.log")
        .current_dir(&dir)
        .output()
        .unwrap();
    let _ = std::fs::remove_dir_all(&dir);
    let text = String::from_utf8_lossy(&out.stdout).to_string();
    (out.status.code().unwrap_or(-1), text)
}

/// The chain of each record line of `lines` (`None`: not a record).
fn chains_of(lines: &[String]) -> Vec<Option<String>> {
    lines
        .iter()
        .map(|l| {
            let (_, r) = l.split_once("agentplane-decision ")?;
            let v: Value = serde_json::from_str(r).ok()?;
            Some(v["log"]["chain"].as_str()?.to_string())
        })
        .collect()
}

/// The lines of the real run, and the line numbers (from 1) of the
/// records of its longest chain, in order.
fn chained_lines() -> (Vec<String>, Vec<usize>) {
    let lines: Vec<String> = chained_run().0.split('\n').map(str::to_owned).collect();
    let chains = chains_of(&lines);
    let mut by_chain: HashMap<&str, Vec<usize>> = HashMap::new();
    for (i, c) in chains.iter().enumerate() {
        if let Some(c) = c {
            by_chain.entry(c).or_default().push(i + 1);
        }
    }
    let at = by_chain.into_values().max_by_key(Vec::len).unwrap();
    assert!(at.len() >= 3, "{lines:#?}");
    (lines, at)
}

/// A real run's log verifies: every record of both chains linked and
/// under a signed checkpoint, the last written when Envoy shut down.
#[test]
fn a_real_decision_log_verifies_to_its_shutdown_checkpoint() {
    let (log, _) = chained_run();
    let records = log.matches("agentplane-decision {").count();
    assert_eq!(records, 16, "{log}");
    assert!(log.contains("agentplane-checkpoint {"), "{log}");
    let lines: Vec<String> = log.split('\n').map(str::to_owned).collect();
    let mut chains: Vec<String> = chains_of(&lines).into_iter().flatten().collect();
    chains.sort();
    chains.dedup();
    let (code, out) = verify_log(log, "clean");
    assert_eq!(code, 0, "{out}");
    let want = format!(
        "16 records, {} chains, verified to checkpoint ",
        chains.len()
    );
    assert!(out.starts_with(&want), "{out}");
}

#[test]
fn deleting_a_record_from_a_real_log_is_found() {
    let (mut lines, at) = chained_lines();
    lines.remove(at[1] - 1);
    let (code, out) = verify_log(&lines.join("\n"), "delete");
    assert_eq!(code, 1, "{out}");
    assert!(
        out.contains("removed: chain ") && out.contains(" seq 2 (between seq 1 at envoy.log:"),
        "{out}"
    );
}

#[test]
fn editing_a_record_in_a_real_log_is_found() {
    let (mut lines, at) = chained_lines();
    let l = &mut lines[at[1] - 1];
    *l = l.replacen("\"status\":", "\"status\":2", 1);
    let (code, out) = verify_log(&lines.join("\n"), "edit");
    assert_eq!(code, 1, "{out}");
    assert!(out.contains("edited: chain "), "{out}");
    assert!(
        out.contains(&format!(" seq 2 at envoy.log:{} ", at[1])),
        "{out}"
    );
}

#[test]
fn swapping_two_records_in_a_real_log_is_found() {
    let (mut lines, at) = chained_lines();
    lines.swap(at[1] - 1, at[2] - 1);
    let (code, out) = verify_log(&lines.join("\n"), "swap");
    assert_eq!(code, 1, "{out}");
    let want = format!(
        "seq 3 at envoy.log:{} comes before seq 2 at envoy.log:{}",
        at[1], at[2]
    );
    assert!(
        out.contains("reordered: chain ") && out.contains(&want),
        "{out}"
    );
}

#[test]
fn inserting_a_record_into_a_real_log_is_found() {
    let (mut lines, at) = chained_lines();
    let copy = lines[at[0] - 1].clone();
    lines.insert(at[2] - 1, copy);
    let (code, out) = verify_log(&lines.join("\n"), "insert");
    assert_eq!(code, 1, "{out}");
    let want = format!(
        "seq 1 at envoy.log:{} repeats seq 1 at envoy.log:{}",
        at[2], at[0]
    );
    assert!(
        out.contains("inserted: chain ") && out.contains(&want),
        "{out}"
    );
}

/// A VM retired by a configuration swap (ECDS, `deploy/swap.sh`) writes
/// its chain's last checkpoint as it goes: with `checkpoint_s: 0` every
/// checkpoint in the log comes from a VM going away.
#[test]
fn a_swapped_out_vm_checkpoints_its_chain() {
    use agentplane_e2e::deploy::deliver_by_ecds;
    use agentplane_e2e::{render_envoy, repo_root, Envoy, EnvoySetup, Idp, Upstream};
    let next = crate::hotswap::next_wasm();
    assert!(
        next.exists(),
        "{}: ./build.sh test builds it",
        next.display()
    );
    let (idp, upstream) = (Idp::new(), Upstream::start());
    let mut cfg: Value = serde_json::from_str(&agentplane_e2e::default_plugin_config()).unwrap();
    cfg["decision_log"] = json!({"enabled": true, "checkpoint_s": 0});
    let setup = EnvoySetup::without_vault(&idp, upstream.port, cfg.to_string());
    let mut rendered = render_envoy(&setup, true);
    let dir = deliver_by_ecds(&mut rendered, &cfg.to_string(), "agentplane-ecds-log");
    let envoy = Envoy::start_yaml(&rendered);
    let auth = format!("Bearer {}", idp.triage_token());
    for _ in 0..3 {
        let r = envoy.request(
            "GET",
            "/mcp://hello-skill/hello",
            &[("authorization", &auth)],
        );
        assert_eq!(r.status, 200, "{r:?}");
    }
    let swap = repo_root().join("deploy/swap.sh");
    agentplane_e2e::run_ok(
        std::process::Command::new("sh")
            .arg(swap)
            .arg(&dir)
            .arg(&next),
    );
    let t0 = std::time::Instant::now();
    while !envoy.log().contains("agentplane-checkpoint {") {
        assert!(
            t0.elapsed().as_secs() < 30,
            "no checkpoint:\n{}",
            envoy.log()
        );
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    let log = envoy.log();
    let (code, out) = verify_log_with(&log, "swap", &["--allow-unsigned", "--closed"]);
    assert_eq!(code, 0, "{out}\n{log}");
    assert!(
        out.starts_with("3 records, 1 chains, verified to checkpoint "),
        "{out}"
    );
    assert!(log.contains("\"unsigned\":\"no signing key configured (txn_token)\""));
    let _ = std::fs::remove_dir_all(&dir);
}
