//! The transaction-token arms: agentplane minting a signed token per
//! request (key from OpenBao), and what a minted token costs.

use super::*;

/// Transaction tokens, side by side on one worker, each arm on
/// three workloads: the classic mix (one agent, four allowed requests to
/// three services, one denied), MIX (100 agents, every request distinct,
/// 20% denied) and MIX-hard (2,000 agents × three services: 4,800 allowed
/// (agent, service) pairs outnumber the 4,096 tokens a worker keeps, so
/// tokens are signed again and again):
///
/// - S4   the three services without tokens (the same config otherwise)
/// - S4T  a Txn-Token on each: one signature per (agent, service) per
///   30 s, reused in between, and `x-decision-id` per request
/// - S4T0 the same with reuse off (`reuse_s` 0): a signature per allowed
///   request, so (S4T0 − S4T) / allowed share is the cost of one
pub(crate) fn txn_arms(
    setup: &EnvoySetup,
    base_config: &str,
    secs: u32,
    reps: usize,
    warmup: u32,
    idp: &Idp,
    bao: &agentplane_e2e::Bao,
) {
    let (vault_token, _) = bao.setup_txn_signing("bench-1");
    let config = |txn: Option<u64>| {
        let mut c: serde_json::Value = serde_json::from_str(base_config).unwrap();
        c["vault"] = serde_json::json!({"cluster": "vault", "authority": "127.0.0.1"});
        c["txn_token"] = serde_json::json!({
            "issuer": "https://gateway.bench", "audience": "bench", "ttl_s": 60,
            "reuse_s": txn.unwrap_or(30),
        });
        if txn.is_some() {
            for svc in ["sentiment-analysis", "customer-lookup", "hello-skill"] {
                c["resources"][svc]["txn_token"] = serde_json::json!(true);
            }
        }
        c.to_string()
    };
    let arms: [(&str, String); 3] = [
        ("S4", config(None)),
        ("S4T", config(Some(30))),
        ("S4T0", config(Some(0))),
    ];
    let one = idp.triage_token();
    let many = agent_tokens(idp, 100, "support");
    let hard = agent_tokens(idp, 2000, "support");
    let workloads = ["classic", "MIX", "MIX-hard"];
    let mut rows: Vec<Vec<Samples>> = workloads
        .iter()
        .map(|_| arms.iter().map(|_| Samples::default()).collect())
        .collect();
    let mut minted = [[0f64; 3]; 3];
    let mut served = [[0f64; 3]; 3];
    let mut start = 0u64;
    for rep in 0..reps {
        for k in 0..arms.len() {
            let i = (k + rep) % arms.len();
            let (name, pc) = &arms[i];
            let a = Arm {
                name: name.to_string(),
                kind: Kind::Filter,
                enforces: true,
                wasm: None,
                plugin_config: Some(pc.clone()),
            };
            let mut rendered = render(&a, setup);
            rendered
                .env
                .push(("AGENTPLANE_VAULT_TOKEN".into(), vault_token.clone()));
            let envoy = Envoy::start_yaml(&rendered);
            // The key loads after configure: wait for the JWKS.
            let t0 = Instant::now();
            while agentplane_e2e::try_http(
                envoy.port,
                "GET",
                "/.well-known/agentplane/jwks.json",
                &[],
                "",
            )
            .map(|r| r.status)
                != Ok(200)
            {
                assert!(
                    t0.elapsed() < Duration::from_secs(20),
                    "{name}: key never loaded"
                );
                std::thread::sleep(Duration::from_millis(20));
            }
            for (w, _) in workloads.iter().enumerate() {
                start += 10_000_000;
                let script = match w {
                    0 => wrk_script(),
                    1 => many_script(&many, false, start),
                    _ => many_script(&hard, true, start),
                };
                wrk(envoy.port, &one, warmup, &script);
                let m0 = txn_minted(&envoy);
                let cpu0 = cpu_secs(envoy.pid());
                let run = wrk(envoy.port, &one, secs, &script);
                let cpu = cpu_secs(envoy.pid()) - cpu0;
                std::fs::remove_file(&script).ok();
                check_mix(&a, &run);
                rows[w][i].rps.push(run.rps);
                rows[w][i].cpu_us.push(cpu * 1e6 / run.requests as f64);
                minted[w][i] += txn_minted(&envoy) - m0;
                served[w][i] += (run.requests - run.non2xx) as f64;
                eprintln!(
                    "txn rep {rep} {name} {}: {:.0} req/s, {:.1} µs CPU/req",
                    workloads[w],
                    run.rps,
                    cpu * 1e6 / run.requests as f64
                );
            }
        }
    }
    println!("\nTransaction tokens: Envoy CPU µs per request, medians of {reps}, one worker");
    println!("| workload | S4 | S4T (reused) | added | S4T0 (signed per request) | one signature | signatures per allowed request in S4T's measured runs |");
    println!("|---|---|---|---|---|---|---|");
    for (w, name) in workloads.iter().enumerate() {
        let cpu = |i: usize| median(rows[w][i].cpu_us.clone());
        let allowed = 0.8;
        println!(
            "| {name} | {:.1} | {:.1} | {:+.1} | {:.1} | {:.1} | {:.4} |",
            cpu(0),
            cpu(1),
            cpu(1) - cpu(0),
            cpu(2),
            (cpu(2) - cpu(1)) / allowed,
            minted[w][1] / served[w][1].max(1.0)
        );
    }
    println!(
        "agentplane.wasm: {} bytes",
        std::fs::metadata(agentplane_e2e::wasm_path())
            .map(|m| m.len())
            .unwrap_or(0)
    );
}

pub(crate) fn txn_minted(envoy: &Envoy) -> f64 {
    envoy
        .admin("/stats?filter=agentplane.txn_token.minted")
        .lines()
        .find_map(|l| {
            l.split_once("agentplane.txn_token.minted: ")
                .map(|(_, v)| v)
        })
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(0.0)
}
