//! This run's figures against the performance targets.

use super::*;

/// The performance targets against this run's figures.
pub(crate) fn targets(rows: &[Row], soak: Option<(f64, f64)>, wasm_bytes: u64) {
    let get = |w: &str, a: &str| rows.iter().find(|r| r.workload == w && r.arm == a);
    let mut lines: Vec<(String, String, String, Option<bool>)> = Vec::new();
    for w in ["MIX", "MIX-hard"] {
        if let (Some(q), Some(s4)) = (get(w, "S4Q"), get(w, "S4")) {
            let d = q.cpu - s4.cpu;
            lines.push((
                format!("{w}: one rate limit per agent, S4Q CPU over S4"),
                "≤ 5 µs".into(),
                format!("{d:.1} µs"),
                Some(d <= 5.0),
            ));
        }
    }
    let mut ratio = |name: &str, w: &str, a: &str, b: &str, min: f64| {
        if let (Some(x), Some(y)) = (get(w, a), get(w, b)) {
            let v = x.rps / y.rps;
            let hit = x
                .hit
                .map(|h| format!(", hit ratio {:.1}%", h * 100.0))
                .unwrap_or_default();
            lines.push((
                name.into(),
                format!("≥ {min:.2}"),
                format!("{v:.2}{hit}"),
                Some(v >= min),
            ));
        }
    };
    ratio("MIX, cache on: S4 × S2", "MIX", "S4", "S2", 0.85);
    ratio(
        "one token (classic mix): S4 × S2",
        "classic",
        "S4",
        "S2",
        0.90,
    );
    // The engine itself: no decision cache answers these.
    ratio("MIX-hard, cache on: S4 × S3L", "MIX-hard", "S4", "S3L", 1.2);
    ratio("MIX, cache off: S4U × S3L", "MIX", "S4U", "S3L", 1.2);
    ratio(
        "MIX-hard, cache off: S4U × S3L",
        "MIX-hard",
        "S4U",
        "S3L",
        1.2,
    );
    let mut over = |name: &str, w: &str, a: &str, b: &str, max: f64| {
        if let (Some(x), Some(y)) = (get(w, a), get(w, b)) {
            let v = x.cpu - y.cpu;
            lines.push((
                name.into(),
                format!("≤ {max:.0} µs/req"),
                format!("{v:.1} µs/req"),
                Some(v <= max),
            ));
        }
    };
    over(
        "MIX: S4 CPU over the do-nothing filter",
        "MIX",
        "S4",
        "S0W",
        10.0,
    );
    over(
        "MIX: every decision logged, S4L CPU over S4",
        "MIX",
        "S4L",
        "S4",
        5.0,
    );
    over(
        "one token: every decision logged, S4L CPU over S4",
        "classic",
        "S4L",
        "S4",
        5.0,
    );
    if let (Some(x), Some(y)) = (get("MIX", "S4"), get("MIX", "S0W")) {
        let v = x.rss_mib - y.rss_mib;
        lines.push((
            "memory: S4 RSS over S0W (one worker; per added worker: AGENTPLANE_BENCH_ONLY=startup)"
                .into(),
            "≤ 25 MiB".into(),
            format!("{v:.1} MiB"),
            Some(v <= 25.0),
        ));
        lines.push((
            "start to ready (one pinned core)".into(),
            "≤ 0.5 s".into(),
            format!("{:.2} s", x.start_s),
            Some(x.start_s <= 0.5),
        ));
    }
    if let Some((a, b)) = soak {
        let v = (b / a.max(1.0) - 1.0) * 100.0;
        lines.push((
            "flat RSS over the soak (100k → end)".into(),
            "≤ +5%".into(),
            format!("{v:+.1}%"),
            Some(v <= 5.0),
        ));
    }
    let mib = wasm_bytes as f64 / 1_000_000.0;
    lines.push((
        "filter size".into(),
        "≤ 2.5 MB".into(),
        format!("{mib:.2} MB"),
        Some(mib <= 2.5),
    ));
    println!("\nTargets, this run:");
    println!("| target | wanted | measured | met |");
    println!("|---|---|---|---|");
    for (name, want, got, met) in lines {
        let met = match met {
            Some(true) => "yes",
            Some(false) => "**no**",
            None => "—",
        };
        println!("| {name} | {want} | {got} | {met} |");
    }
    println!("(100k agents vs 10 and regorus vs OPA per evaluation: the native runs printed after this.)");
}
