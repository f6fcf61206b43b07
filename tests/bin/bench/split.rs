//! Where a miss goes under V8 (`AGENTPLANE_BENCH_ONLY=split`): the
//! filter's own clock, read from `x-mcp-metrics` (`headers.metrics_header`)
//! on requests that the decision cache cannot answer (cache off, 2,000
//! agents, every request distinct, 20% denied). `policy_us` is the
//! evaluation; `filter_us` the whole headers phase (identity, input,
//! evaluation, headers written or the refusal rendered), so their
//! difference is everything around the policy. Each agentplane build
//! (`AGENTPLANE_BENCH_EXTRA` adds older ones) in its own Envoy, one worker.

use super::*;

/// `filter_us=..;policy_us=..;cache=..` → (filter, policy) µs.
fn timing(value: &str) -> Option<(f64, f64)> {
    let mut filter = None;
    let mut policy = None;
    for part in value.split(';') {
        match part.split_once('=') {
            Some(("filter_us", v)) => filter = v.parse().ok(),
            Some(("policy_us", v)) => policy = v.parse().ok(),
            _ => {}
        }
    }
    Some((filter?, policy?))
}

pub(crate) fn split_arms(setup: &EnvoySetup, base_config: &str, reps: usize, idp: &Idp) {
    let mut config: serde_json::Value = serde_json::from_str(base_config).unwrap();
    config["decision_cache"] = serde_json::json!({ "enabled": false });
    config["headers"]["metrics_header"] = serde_json::json!(true);
    let config = config.to_string();
    let tokens: Vec<String> = agent_tokens(idp, 2000, "support")
        .into_iter()
        .map(|t| format!("Bearer {t}"))
        .collect();
    let mut arms = vec![("S4U".to_string(), None)];
    for extra in std::env::var("AGENTPLANE_BENCH_EXTRA")
        .unwrap_or_default()
        .split(',')
    {
        if let Some((name, path)) = extra.split_once('=') {
            arms.push((format!("S4U {name}"), Some(path.to_string())));
        }
    }
    let n = 2000 * reps.max(1);
    println!("\nA miss under V8, the filter's own clock (medians over {n} requests after 2,000 to warm up; cache off, 2,000 agents, every request distinct):\n");
    println!("| arm | filter µs (p50 / p90) | policy µs (p50 / p90) | around the policy µs (p50) | denied |");
    println!("|---|---|---|---|---|");
    for (name, wasm) in arms {
        let arm = Arm {
            name: name.clone(),
            kind: Kind::Filter,
            enforces: true,
            wasm,
            plugin_config: Some(config.clone()),
        };
        let envoy = Envoy::start_yaml(&render(&arm, setup));
        let (mut filter, mut policy, mut around, mut denied) = (vec![], vec![], vec![], 0);
        for i in 0..2000 + n {
            let (path, _) = FULL_MIX[i % 4];
            let sep = if path.contains('?') { '&' } else { '?' };
            let url = format!("{path}{sep}n={i}");
            let r = agentplane_e2e::http(
                envoy.port,
                "GET",
                &url,
                &[("authorization", &tokens[i % tokens.len()])],
                "",
            );
            if i < 2000 {
                continue;
            }
            denied += usize::from(r.status == 403);
            let t = r
                .headers
                .iter()
                .find(|(k, _)| k == "x-mcp-metrics")
                .and_then(|(_, v)| timing(v))
                .unwrap_or_else(|| panic!("{name}: no x-mcp-metrics on {url}: {}", r.status));
            filter.push(t.0);
            policy.push(t.1);
            around.push(t.0 - t.1);
        }
        let p = |v: &[f64], q: f64| {
            let mut s = v.to_vec();
            s.sort_by(f64::total_cmp);
            s.get(((s.len() as f64 - 1.0) * q).round() as usize)
                .copied()
                .unwrap_or(0.0)
        };
        println!(
            "| {name} | {:.0} / {:.0} | {:.0} / {:.0} | {:.0} | {:.0}% |",
            p(&filter, 0.5),
            p(&filter, 0.9),
            p(&policy, 0.5),
            p(&policy, 0.9),
            median(around),
            denied as f64 * 100.0 / n as f64
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_the_timing_header() {
        assert_eq!(
            timing("filter_us=41;policy_us=30;cache=miss"),
            Some((41.0, 30.0))
        );
        assert_eq!(timing("cache=miss"), None);
    }
}
