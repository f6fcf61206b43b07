//! Policy changes as rebuilds: a filter built with the next policy
//! revision is swapped into a running Envoy (file-based extension config
//! discovery, `deploy/swap.sh`: copy, then one atomic rename) while
//! requests keep coming, and none of them fails.

use agentplane_e2e::deploy::deliver_by_ecds;
use agentplane_e2e::{
    default_plugin_config, render_envoy, repo_root, try_http, Envoy, EnvoySetup, Idp, Upstream,
};
use serde_json::{json, Value};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// The filter built from the policies with one comment added (a new
/// revision, the same decisions): `./build.sh test` builds it.
pub(crate) fn next_wasm() -> std::path::PathBuf {
    std::env::var("AGENTPLANE_NEXT_WASM")
        .map(std::path::PathBuf::from)
        .unwrap_or_else(|_| repo_root().join("target/agentplane-next.wasm"))
}

/// Policy revisions from the configure lines of Envoy's log, in order.
pub(crate) fn configured(log: &str) -> Vec<String> {
    log.lines()
        .filter_map(|l| l.split("configured: policy revision ").nth(1))
        .filter_map(|r| r.split(',').next())
        .map(str::to_string)
        .collect()
}

#[test]
fn swapping_the_filter_under_load_fails_no_request() {
    let next = next_wasm();
    assert!(
        next.exists(),
        "{} is missing: ./build.sh test builds it",
        next.display()
    );
    let idp = Idp::new();
    let upstream = Upstream::start_unrecorded();
    let mut cfg: Value = serde_json::from_str(&default_plugin_config()).unwrap();
    cfg["decision_log"] = json!({"enabled": true, "sample_allowed": 1.0});
    let mut rendered = render_envoy(
        &EnvoySetup::without_vault(&idp, upstream.port, cfg.to_string()),
        true,
    );
    let dir = deliver_by_ecds(&mut rendered, &cfg.to_string(), "agentplane-ecds");
    rendered.workers = 2;
    let envoy = Envoy::start_yaml(&rendered);
    let token = idp.triage_token();
    let auth = format!("Bearer {token}");
    let port = envoy.port;
    let hello = || {
        try_http(
            port,
            "GET",
            "/mcp://hello-skill/hello",
            &[("authorization", &auth)],
            "",
        )
        .unwrap()
    };
    let first = hello();
    assert_eq!(first.status, 200, "{}\n{}", first.body, envoy.log());
    let before = configured(&envoy.log());
    assert!(!before.is_empty(), "{}", envoy.log());

    // Load: four clients, each request checked.
    let stop = Arc::new(AtomicBool::new(false));
    let sent = Arc::new(AtomicU64::new(0));
    let failed = Arc::new(std::sync::Mutex::new(Vec::<String>::new()));
    let clients: Vec<_> = (0..4)
        .map(|i| {
            let (stop, sent, failed, auth) =
                (stop.clone(), sent.clone(), failed.clone(), auth.clone());
            std::thread::spawn(move || {
                let path = format!("/mcp://hello-skill/hello?client={i}");
                while !stop.load(Ordering::Relaxed) {
                    let r = try_http(port, "GET", &path, &[("authorization", &auth)], "");
                    sent.fetch_add(1, Ordering::Relaxed);
                    match r {
                        Ok(r) if r.status == 200 => {}
                        Ok(r) => failed
                            .lock()
                            .unwrap()
                            .push(format!("{} {}", r.status, r.body)),
                        Err(e) => failed.lock().unwrap().push(e),
                    }
                }
            })
        })
        .collect();
    // One slow request in flight across the swap.
    let slow_auth = auth.clone();
    let slow = std::thread::spawn(move || {
        try_http(
            port,
            "GET",
            "/mcp://hello-skill/slow",
            &[("authorization", &slow_auth), ("x-test-delay-ms", "1500")],
            "",
        )
    });
    while sent.load(Ordering::Relaxed) < 200 {
        std::thread::sleep(Duration::from_millis(10));
    }
    let t_swap = Instant::now();
    agentplane_e2e::run_ok(
        std::process::Command::new("sh")
            .arg(repo_root().join("deploy/swap.sh"))
            .arg(&dir)
            .arg(&next),
    );
    // Until both workers run the new revision, then a little longer.
    let deadline = Instant::now() + Duration::from_secs(30);
    let new_rev = loop {
        let revs = configured(&envoy.log());
        let fresh: Vec<&String> = revs.iter().filter(|r| !before.contains(r)).collect();
        if fresh.len() >= 2 {
            break fresh[0].clone();
        }
        assert!(
            Instant::now() < deadline,
            "no new revision configured:\n{}",
            envoy.log()
        );
        std::thread::sleep(Duration::from_millis(20));
    };
    let swapped_in = t_swap.elapsed();
    let mark = sent.load(Ordering::Relaxed);
    while sent.load(Ordering::Relaxed) < mark + 300 {
        std::thread::sleep(Duration::from_millis(10));
    }
    stop.store(true, Ordering::Relaxed);
    for c in clients {
        c.join().unwrap();
    }
    let slow = slow.join().unwrap().unwrap();
    let failed = failed.lock().unwrap().clone();
    let total = sent.load(Ordering::Relaxed);
    eprintln!(
        "hot swap: {total} requests, {} failed; new revision {new_rev} on both workers after {swapped_in:?}",
        failed.len()
    );
    assert!(
        failed.is_empty(),
        "{} of {total} failed: {:?}",
        failed.len(),
        &failed[..failed.len().min(5)]
    );
    assert_ne!(before[0], new_rev);

    // The slow request started on the old filter and finished there.
    assert_eq!(slow.status, 200, "{}", slow.body);
    let slow_id = slow.header("x-decision-id").unwrap().to_string();
    let slow_rec = envoy.decision_record(&slow_id);
    assert_eq!(slow_rec["labels"]["policy_revision"], before[0].as_str());
    // The decision log shows the new revision after the swap.
    let last = hello();
    let rec = envoy.decision_record(last.header("x-decision-id").unwrap());
    assert_eq!(rec["labels"]["policy_revision"], new_rev.as_str());
    let _ = std::fs::remove_dir_all(&dir);
}
