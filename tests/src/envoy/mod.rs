//! A running Envoy with the built filter: started from a rendered
//! configuration ([`render`]), ready once its admin says so and its agent
//! listener accepts (ports learned from Envoy, never picked beforehand),
//! its admin endpoints, log and decision records. Killed on drop; its log
//! is printed if a test panicked.

use crate::{artifact, http, try_http, Response};
use serde_json::Value;
use std::net::TcpStream;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

pub mod render;
pub mod yaml;
use render::{render_envoy, EnvoySetup, RenderedEnvoy};

/// The Envoy binary: `$ENVOY_BIN`, else the repo-local venv's.
pub fn envoy_bin() -> PathBuf {
    artifact(
        "ENVOY_BIN",
        ".venv/bin/envoy",
        "Envoy",
        "run ./build.sh test, which installs it",
    )
}

/// The filter: `$AGENTPLANE_WASM`, else the release build.
pub fn wasm_path() -> PathBuf {
    artifact(
        "AGENTPLANE_WASM",
        "target/agentplane.wasm",
        "filter",
        "run ./build.sh build",
    )
}

/// A running Envoy. Killed on drop; its log is printed if a test panicked.
pub struct Envoy {
    child: Child,
    /// Admin port.
    pub admin_port: u16,
    /// Agent-facing port.
    pub port: u16,
    dir: PathBuf,
}

impl Envoy {
    /// Starts Envoy with `envoy/envoy.yaml` filled in; does not wait.
    pub fn spawn(setup: &EnvoySetup) -> Envoy {
        Envoy::spawn_yaml(&render_envoy(setup, true))
    }

    /// Starts Envoy with a rendered configuration (see [`render_envoy`]).
    /// Its ports are known once [`Envoy::wait_ready`] returned.
    pub fn spawn_yaml(rendered: &RenderedEnvoy) -> Envoy {
        static SEQ: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
        let dir = std::env::temp_dir().join(format!(
            "agentplane-e2e-{}-{}",
            std::process::id(),
            SEQ.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
        ));
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("envoy.yaml"), &rendered.yaml).unwrap();
        let log = std::fs::File::create(dir.join("envoy.log")).unwrap();
        // The benchmark pins Envoy to its own core (AGENTPLANE_ENVOY_CPU).
        let mut cmd = match std::env::var("AGENTPLANE_ENVOY_CPU") {
            Ok(cpu) if !cpu.is_empty() => {
                let mut c = Command::new("taskset");
                c.arg("-c").arg(cpu).arg(envoy_bin());
                c
            }
            _ => Command::new(envoy_bin()),
        };
        let child = cmd
            .arg("-c")
            .arg(dir.join("envoy.yaml"))
            .arg("--admin-address-path")
            .arg(dir.join("admin.address"))
            .args(["--use-dynamic-base-id", "-l", "info"])
            // Access logs (decision records among them) reach the log file
            // within 200 ms instead of Envoy's default 10 s.
            .args(["--file-flush-interval-msec", "200", "--concurrency"])
            .arg(rendered.workers.to_string())
            .envs(rendered.env.iter().map(|(k, v)| (k, v)))
            .stdout(Stdio::from(log.try_clone().unwrap()))
            .stderr(Stdio::from(log))
            .spawn()
            .unwrap();
        Envoy {
            child,
            admin_port: 0,
            port: 0,
            dir,
        }
    }

    /// The port Envoy bound for a listener (admin `/listeners`).
    pub fn listener_port(&self, name: &str) -> Option<u16> {
        let r = try_http(self.admin_port, "GET", "/listeners?format=json", &[], "").ok()?;
        let v: Value = serde_json::from_str(&r.body).ok()?;
        v.get("listener_statuses")?
            .as_array()?
            .iter()
            .find(|l| l.get("name").and_then(Value::as_str) == Some(name))?
            .pointer("/local_address/socket_address/port_value")?
            .as_u64()
            .and_then(|p| u16::try_from(p).ok())
            .filter(|p| *p != 0)
    }

    /// [`Envoy::spawn_yaml`], then waits for readiness (panics with the log).
    pub fn start_yaml(rendered: &RenderedEnvoy) -> Envoy {
        let mut e = Envoy::spawn_yaml(rendered);
        if let Err(why) = e.wait_ready(Duration::from_secs(60)) {
            panic!(
                "Envoy did not become ready: {why}\n--- envoy log ---\n{}",
                e.log()
            );
        }
        e
    }

    /// Starts Envoy and waits until the admin says it is ready; panics with
    /// the log if it exits or does not get ready in 60 s.
    pub fn start(setup: &EnvoySetup) -> Envoy {
        Envoy::start_yaml(&render_envoy(setup, true))
    }

    /// Polls `/ready` until it answers 200, learning the admin port from
    /// `--admin-address-path` and the agent listener's port from `/listeners`.
    pub fn wait_ready(&mut self, limit: Duration) -> Result<(), String> {
        let t0 = Instant::now();
        while t0.elapsed() < limit {
            if let Ok(Some(status)) = self.child.try_wait() {
                return Err(format!("Envoy exited with {status}"));
            }
            if self.admin_port == 0 {
                if let Ok(a) = std::fs::read_to_string(self.dir.join("admin.address")) {
                    self.admin_port = a
                        .trim()
                        .rsplit(':')
                        .next()
                        .and_then(|p| p.parse().ok())
                        .unwrap_or(0);
                }
            }
            let ready = self.admin_port != 0
                && try_http(self.admin_port, "GET", "/ready", &[], "")
                    .is_ok_and(|r| r.status == 200);
            if ready {
                if let Some(p) = self.listener_port("agent_listener") {
                    if TcpStream::connect(("127.0.0.1", p)).is_ok() {
                        self.port = p;
                        return Ok(());
                    }
                }
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        Err(format!("not ready after {limit:?}"))
    }

    /// Waits for the process to exit; `None` if it is still running after `limit`.
    pub fn wait_exit(&mut self, limit: Duration) -> Option<std::process::ExitStatus> {
        let t0 = Instant::now();
        while t0.elapsed() < limit {
            if let Ok(Some(s)) = self.child.try_wait() {
                return Some(s);
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        None
    }

    /// Envoy's process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Envoy's resident set size in KiB (from /proc), if readable.
    pub fn rss_kib(&self) -> Option<u64> {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.child.id())).ok()?;
        status
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|v| v.split_whitespace().next())
            .and_then(|n| n.parse().ok())
    }

    /// The decision records in Envoy's log so far (the filter writes
    /// each as one line after `agentplane-decision `).
    pub fn decision_records(&self) -> Vec<Value> {
        self.log()
            .lines()
            .filter_map(|l| l.split_once("agentplane-decision ").map(|(_, r)| r))
            .filter_map(|j| serde_json::from_str(j).ok())
            .collect()
    }

    /// The decision record of `id`, once Envoy's log has it (15 s).
    pub fn decision_record(&self, id: &str) -> Value {
        let t0 = Instant::now();
        loop {
            if let Some(r) = self
                .decision_records()
                .into_iter()
                .find(|r| r["decision_id"] == id)
            {
                return r;
            }
            assert!(
                t0.elapsed() < Duration::from_secs(15),
                "no decision record for {id}"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Envoy's log so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("envoy.log")).unwrap_or_default()
    }

    /// A request to the agent-facing listener.
    pub fn request(&self, method: &str, path: &str, headers: &[(&str, &str)]) -> Response {
        http(self.port, method, path, headers, "")
    }

    /// The connections each worker accepted so far (admin stats), one
    /// number per worker: the two-worker tests check both took some.
    pub fn connections_per_worker(&self) -> Vec<u64> {
        self.admin("/stats?filter=worker_.*downstream_cx_total")
            .lines()
            .filter(|l| l.starts_with("listener.") && !l.contains("admin"))
            .filter_map(|l| l.rsplit(": ").next()?.trim().parse().ok())
            .collect()
    }

    /// An admin endpoint's body.
    pub fn admin(&self, path: &str) -> String {
        http(self.admin_port, "GET", path, &[], "").body
    }
}

impl Drop for Envoy {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        if std::thread::panicking() {
            eprintln!("--- envoy log ({}) ---\n{}", self.dir.display(), self.log());
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
