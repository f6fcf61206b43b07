//! Processes for tests/e2e/clients.rs: where the pinned clients live, a
//! time-bound run of a client to its end, and a background service that
//! reports its own port. Everything started here is killed on drop.

use agentplane_e2e::repo_root;
use serde_json::Value;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// tests/clients, with its npm packages installed.
pub fn clients_dir() -> PathBuf {
    let d = repo_root().join("tests/clients");
    assert!(
        d.join("node_modules/@modelcontextprotocol/sdk/package.json")
            .exists(),
        "tests/clients/node_modules is missing: ./build.sh test installs it (ensure_mcp_clients), \
         or run npm ci --prefix tests/clients"
    );
    d
}

/// The pinned Node (the conformance CLI needs >= 22), else the machine's.
pub fn node() -> PathBuf {
    let pinned = repo_root().join("tests/clients/node_modules/.bin/node");
    if pinned.exists() {
        pinned
    } else {
        PathBuf::from("node")
    }
}

/// The repo venv's Python, with the MCP SDK installed.
pub fn python() -> PathBuf {
    let p = repo_root().join(".venv/bin/python");
    let ok = Command::new(&p)
        .args(["-c", "import mcp.client.streamable_http"])
        .status()
        .is_ok_and(|s| s.success());
    assert!(ok, "the Python MCP SDK is missing from .venv: ./build.sh test installs it (ensure_mcp_clients)");
    p
}

/// A scratch directory, removed on drop.
pub struct Scratch(pub PathBuf);

impl Scratch {
    pub fn new(tag: &str) -> Scratch {
        static SEQ: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
        let n = SEQ.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let d = std::env::temp_dir().join(format!(
            "agentplane-clients-{tag}-{}-{n}",
            std::process::id()
        ));
        let _ = std::fs::remove_dir_all(&d);
        std::fs::create_dir_all(&d).unwrap();
        Scratch(d)
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Runs a command to its end within `limit` (killed then, and the test
/// fails with its stderr); returns (stdout, stderr). The command is named
/// by its program only: its environment holds a token.
pub fn run(cmd: &mut Command, limit: Duration) -> (String, String) {
    let name = cmd.get_program().to_string_lossy().to_string();
    let scratch = Scratch::new("run");
    let (out, err) = (scratch.0.join("out"), scratch.0.join("err"));
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(std::fs::File::create(&out).unwrap())
        .stderr(std::fs::File::create(&err).unwrap())
        .spawn()
        .unwrap_or_else(|e| panic!("{name}: {e}"));
    let t0 = Instant::now();
    while child.try_wait().unwrap().is_none() {
        if t0.elapsed() > limit {
            let _ = child.kill();
            let _ = child.wait();
            panic!(
                "{name} still running after {limit:?}; stderr:\n{}",
                std::fs::read_to_string(&err).unwrap_or_default()
            );
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let read = |p: &Path| std::fs::read_to_string(p).unwrap_or_default();
    (read(&out), read(&err))
}

/// A background process that prints `{"port": N}` once it listens; killed
/// on drop, its stderr shown if the test failed.
pub struct Service {
    child: Child,
    name: String,
    log: PathBuf,
    _scratch: Scratch,
    pub port: u16,
}

impl Service {
    pub fn start(name: &str, cmd: &mut Command) -> Service {
        let scratch = Scratch::new(name);
        let log = scratch.0.join("stderr");
        let mut child = cmd
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .unwrap_or_else(|e| panic!("{name}: {e}"));
        let stdout = child.stdout.take().unwrap();
        let (tx, rx) = std::sync::mpsc::channel();
        // Reads the port line, then drains stdout until the process ends.
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if let Some(p) = serde_json::from_str::<Value>(&line)
                    .ok()
                    .and_then(|v| v["port"].as_u64())
                {
                    let _ = tx.send(p);
                }
            }
        });
        let port = rx.recv_timeout(Duration::from_secs(30)).ok();
        let s = Service {
            child,
            name: name.to_string(),
            log,
            _scratch: scratch,
            port: port.and_then(|p| u16::try_from(p).ok()).unwrap_or(0),
        };
        // Dropping `s` kills the process and shows its stderr.
        assert_ne!(s.port, 0, "{name} did not report its port in 30 s");
        s
    }
}

impl Drop for Service {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        if std::thread::panicking() {
            eprintln!(
                "--- {} stderr ---\n{}",
                self.name,
                std::fs::read_to_string(&self.log).unwrap_or_default()
            );
        }
    }
}
