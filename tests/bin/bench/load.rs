//! Load and measurement: wrk at saturation (and its Lua script for the
//! mix), an open-loop generator for latency at a fixed rate, Envoy's CPU
//! time from /proc, percentiles, medians and ranges.

use super::*;

pub(crate) fn wrk_script() -> std::path::PathBuf {
    let path = std::env::temp_dir().join(format!("agentplane-bench-{}.lua", std::process::id()));
    let paths: Vec<String> = mix().iter().map(|(p, _)| format!("{p:?}")).collect();
    let script = format!(
        "local paths = {{{}}}\nlocal i = 0\nrequest = function()\n  i = i + 1\n  return wrk.format(\"GET\", paths[(i % #paths) + 1])\nend\n",
        paths.join(", ")
    );
    std::fs::write(&path, script).unwrap();
    path
}

pub(crate) fn wrk(port: u16, token: &str, secs: u32, script: &std::path::Path) -> WrkRun {
    let out = Command::new("wrk")
        .args(["-t1", "-c16", &format!("-d{secs}s")])
        .args(["-H", &format!("authorization: Bearer {token}")])
        .arg("-s")
        .arg(script)
        .arg(format!("http://127.0.0.1:{port}"))
        .output()
        .expect("wrk (./build.sh bench installs it)");
    let text = String::from_utf8_lossy(&out.stdout);
    let field = |prefix: &str| -> Option<f64> {
        text.lines()
            .find_map(|l| l.trim().strip_prefix(prefix))
            .and_then(|v| v.split_whitespace().next())
            .and_then(|v| v.parse().ok())
    };
    let rps = field("Requests/sec:").unwrap_or_else(|| panic!("no Requests/sec in:\n{text}"));
    let requests = text
        .lines()
        .find(|l| l.contains(" requests in "))
        .and_then(|l| l.split_whitespace().next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no request count in:\n{text}"));
    assert!(
        !text.contains("Socket errors"),
        "connection errors during the run:\n{text}"
    );
    let non2xx = field("Non-2xx or 3xx responses:").unwrap_or(0.0) as u64;
    WrkRun {
        rps,
        requests,
        non2xx,
    }
}

/// The share of denied requests must match the mix: a misconfigured arm
/// that allows or denies everything would otherwise look fast.
pub(crate) fn check_mix(arm: &Arm, run: &WrkRun) {
    let share = run.non2xx as f64 / run.requests.max(1) as f64;
    let denied = mix().iter().filter(|(_, ok)| !ok).count() as f64 / mix().len() as f64;
    if arm.enforces {
        assert!(
            (share - denied).abs() < 0.02,
            "{}: {:.1}% of responses were non-2xx, expected {:.0}%",
            arm.name,
            share * 100.0,
            denied * 100.0
        );
    } else {
        assert_eq!(run.non2xx, 0, "{}: non-2xx responses", arm.name);
    }
}

/// utime + stime of a process, in seconds.
pub(crate) fn cpu_secs(pid: u32) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    // Fields after the parenthesised command name; utime and stime are 14 and 15.
    let rest = stat.rsplit_once(')').map(|(_, r)| r).unwrap_or("");
    let f: Vec<&str> = rest.split_whitespace().collect();
    let ticks: f64 = f.get(11).and_then(|v| v.parse().ok()).unwrap_or(0.0)
        + f.get(12).and_then(|v| v.parse().ok()).unwrap_or(0.0);
    ticks / clk_tck()
}

pub(crate) fn clk_tck() -> f64 {
    Command::new("getconf")
        .arg("CLK_TCK")
        .output()
        .ok()
        .and_then(|o| String::from_utf8_lossy(&o.stdout).trim().parse().ok())
        .unwrap_or(100.0)
}

/// One keep-alive request; returns the status.
pub(crate) fn roundtrip(
    reader: &mut BufReader<TcpStream>,
    path: &str,
    token: &str,
) -> std::io::Result<u16> {
    let req =
        format!("GET {path} HTTP/1.1\r\nhost: localhost\r\nauthorization: Bearer {token}\r\n\r\n");
    reader.get_mut().write_all(req.as_bytes())?;
    let mut line = String::new();
    reader.read_line(&mut line)?;
    let status = line
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| std::io::Error::other(format!("bad status line {line:?}")))?;
    let mut len = 0usize;
    loop {
        line.clear();
        if reader.read_line(&mut line)? == 0 {
            return Err(std::io::Error::other("closed"));
        }
        let l = line.trim_end();
        if l.is_empty() {
            break;
        }
        if let Some((k, v)) = l.split_once(':') {
            if k.eq_ignore_ascii_case("content-length") {
                len = v.trim().parse().unwrap_or(0);
            }
        }
    }
    let mut body = vec![0u8; len];
    reader.read_exact(&mut body)?;
    Ok(status)
}

/// Open loop: `conns` connections, each sending on a fixed schedule so the
/// total is `rate` requests/s; a request's latency counts from when it was
/// due, not from when it was sent. Returns sorted latencies in µs.
pub(crate) fn open_loop(port: u16, token: &str, rate: f64, secs: f64, conns: usize) -> Vec<u64> {
    let interval = Duration::from_secs_f64(conns as f64 / rate);
    let start = Instant::now() + Duration::from_millis(50);
    let end = start + Duration::from_secs_f64(secs);
    let threads: Vec<_> = (0..conns)
        .map(|c| {
            let token = token.to_string();
            std::thread::spawn(move || {
                let stream = TcpStream::connect(("127.0.0.1", port)).unwrap();
                stream.set_nodelay(true).unwrap();
                let mut reader = BufReader::new(stream);
                let mut lats = Vec::new();
                let offset = interval.mul_f64(c as f64 / conns as f64);
                for k in 0u32.. {
                    let due = start + offset + interval * k;
                    if due >= end {
                        break;
                    }
                    let now = Instant::now();
                    if due > now {
                        std::thread::sleep(due - now);
                    }
                    let (path, ok) = mix()[(k as usize + c) % mix().len()];
                    let status = roundtrip(&mut reader, path, &token).unwrap();
                    assert!(status < 500, "{path}: status {status}");
                    let _ = ok;
                    lats.push(due.elapsed().as_micros() as u64);
                }
                lats
            })
        })
        .collect();
    let mut all: Vec<u64> = threads
        .into_iter()
        .flat_map(|t| t.join().unwrap())
        .collect();
    all.sort_unstable();
    all
}

pub(crate) fn pct(sorted: &[u64], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i] as f64 / 1000.0
}

pub(crate) fn median(mut v: Vec<f64>) -> f64 {
    if v.is_empty() {
        return 0.0;
    }
    v.sort_by(|a, b| a.partial_cmp(b).unwrap());
    v[v.len() / 2]
}

pub(crate) fn range(v: &[f64]) -> (f64, f64) {
    (
        v.iter().cloned().fold(f64::MAX, f64::min),
        v.iter().cloned().fold(0.0, f64::max),
    )
}

/// Checks that an arm answers the mix as it should before measuring it.
pub(crate) fn probe(arm: &Arm, envoy: &Envoy, token: &str) {
    for &(path, ok) in mix() {
        let r = envoy.request(
            "GET",
            path,
            &[("authorization", &format!("Bearer {token}"))],
        );
        let want_ok = ok || !arm.enforces;
        if ok && arm.name.starts_with("S4S") {
            assert!(
                r.body.contains("bench-key"),
                "{path}: no secret upstream: {}",
                r.body
            );
        }
        assert_eq!(
            r.status == 200,
            want_ok,
            "{} {path}: status {} ({})",
            arm.name,
            r.status,
            r.body
        );
    }
}
