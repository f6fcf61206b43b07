//! Start-up and memory per VM (`AGENTPLANE_BENCH_ONLY=startup`): the
//! do-nothing filter and each agentplane build (`AGENTPLANE_BENCH_EXTRA`
//! adds older ones), each in an Envoy with one worker and with two. Per
//! arm: start to ready, RSS, and what each agentplane VM logs once
//! configured (configure time, linear memory). One worker more is one VM
//! more, so RSS(2) − RSS(1) is the cost of a worker; start to ready over
//! the do-nothing filter's is, nearly all, V8 compiling the module.

use super::*;

/// One VM's "configured" line: (configure µs, linear memory KiB).
fn configured_vms(log: &str) -> Vec<(u64, u64)> {
    log.lines()
        .filter_map(|l| {
            let rest = l.split("agentplane: VM configured in ").nth(1)?;
            let (us, rest) = rest.split_once(" us, linear memory ")?;
            let kib = rest.split_whitespace().next()?;
            Some((us.parse().ok()?, kib.parse().ok()?))
        })
        .collect()
}

#[derive(Default)]
struct Figures {
    ready_s: Vec<f64>,
    rss_kib: Vec<f64>,
    vms: usize,
    configure_us: Vec<f64>,
    memory_kib: Vec<f64>,
}

pub(crate) fn startup_arms(setup: &EnvoySetup, reps: usize) {
    let arm = |name: &str, kind: Kind, wasm: Option<String>| Arm {
        name: name.into(),
        kind,
        enforces: kind == Kind::Filter,
        wasm,
        plugin_config: None,
    };
    let mut arms = vec![
        (arm("S0W do-nothing wasm", Kind::Floor, None), noop_wasm()),
        (
            arm("S4 agentplane", Kind::Filter, None),
            agentplane_e2e::wasm_path().display().to_string(),
        ),
    ];
    for extra in std::env::var("AGENTPLANE_BENCH_EXTRA")
        .unwrap_or_default()
        .split(',')
    {
        if let Some((name, path)) = extra.split_once('=') {
            arms.push((
                arm(&format!("S4 {name}"), Kind::Filter, Some(path.to_string())),
                path.to_string(),
            ));
        }
    }
    let workers = [1u32, 2];
    let mut figures: Vec<Vec<Figures>> = arms
        .iter()
        .map(|_| workers.iter().map(|_| Figures::default()).collect())
        .collect();
    for rep in 0..reps {
        for k in 0..arms.len() {
            let i = (k + rep) % arms.len();
            for (j, &n) in workers.iter().enumerate() {
                let mut r = render(&arms[i].0, setup);
                r.workers = n;
                let t0 = Instant::now();
                let envoy = Envoy::start_yaml(&r);
                let f = &mut figures[i][j];
                f.ready_s.push(t0.elapsed().as_secs_f64());
                f.rss_kib.push(envoy.rss_kib().unwrap_or(0) as f64);
                let vms = configured_vms(&envoy.log());
                f.vms = vms.len();
                f.configure_us.extend(vms.iter().map(|v| v.0 as f64));
                f.memory_kib.extend(vms.iter().map(|v| v.1 as f64));
                eprintln!(
                    "rep {rep} {} ({n} workers): ready in {:.2} s, RSS {} KiB, VMs {vms:?}",
                    arms[i].0.name,
                    t0.elapsed().as_secs_f64(),
                    envoy.rss_kib().unwrap_or(0)
                );
            }
        }
    }
    let floor: Vec<(f64, f64)> = figures[0]
        .iter()
        .map(|f| (median(f.ready_s.clone()), median(f.rss_kib.clone())))
        .collect();
    println!(
        "\nStart-up and memory, medians of {reps} (Envoy with 1 and 2 workers; a VM per worker plus the main thread's):\n"
    );
    println!("| arm | module bytes | workers | start to ready (s) | over S0W (s) | RSS (MiB) | over S0W (MiB) | VMs configured | configure per VM (ms) | linear memory per VM (MiB) |");
    println!("|---|---|---|---|---|---|---|---|---|---|");
    for ((a, path), fs) in arms.iter().zip(&figures) {
        let bytes = std::fs::metadata(path).map(|m| m.len()).unwrap_or(0);
        for ((f, n), (floor_ready, floor_rss)) in fs.iter().zip(workers).zip(&floor) {
            let ready = median(f.ready_s.clone());
            let rss = median(f.rss_kib.clone());
            let per_vm = |v: &[f64], scale: f64| {
                if v.is_empty() {
                    "—".to_string()
                } else {
                    format!("{:.2}", median(v.to_vec()) / scale)
                }
            };
            println!(
                "| {} | {bytes} | {n} | {ready:.2} | {:+.2} | {:.1} | {:+.1} | {} | {} | {} |",
                a.name,
                ready - floor_ready,
                rss / 1024.0,
                (rss - floor_rss) / 1024.0,
                f.vms,
                per_vm(&f.configure_us, 1000.0),
                per_vm(&f.memory_kib, 1024.0),
            );
        }
        let rss = |j: usize| median(fs[j].rss_kib.clone());
        println!(
            "| {} | | one worker more | | | {:+.1} | | | | |",
            a.name,
            (rss(1) - rss(0)) / 1024.0
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_each_vm_configured_line() {
        let log = "[info] wasm log agentplane: VM configured in 812 us, linear memory 3072 KiB\n\
                   [info] other\n\
                   [info] wasm log x: agentplane: VM configured in 90 us, linear memory 2048 KiB";
        assert_eq!(configured_vms(log), [(812, 3072), (90, 2048)]);
    }
}
