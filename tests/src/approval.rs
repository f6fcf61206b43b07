//! The approval service (`agentplane-approval`): started on loopback with
//! key files of its own in a temp dir (the filter's bearer key, the
//! Ed25519 seed of its grants, its OIDC client secret), ready when
//! `/healthz` answers, stopped on drop. Its decision log (one JSON line on
//! stdout per approval, rejection and consumed grant) is collected for
//! tests to read; its stderr is printed if a test panicked.

use crate::{artifact, base64url, http, try_http, Response};
use serde_json::{json, Value};
use std::io::BufRead;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// The service's binary: `$AGENTPLANE_APPROVAL_BIN`, else
/// `target/debug/agentplane-approval`.
pub fn approval_bin() -> PathBuf {
    artifact(
        "AGENTPLANE_APPROVAL_BIN",
        "target/debug/agentplane-approval",
        "the approval service",
        "cargo build -p agentplane-approval",
    )
}

/// The service's OIDC client at the identity provider.
#[derive(Debug, Clone)]
pub struct OidcClient {
    /// The provider's issuer URL.
    pub issuer: String,
    pub client_id: String,
    pub client_secret: String,
}

/// A running approval service, stopped on drop.
pub struct Approval {
    child: Option<Child>,
    /// Its port on 127.0.0.1.
    pub port: u16,
    /// What the filter presents on `/v1/check`.
    pub filter_key: String,
    /// The grant key's seed.
    pub seed: [u8; 32],
    dir: PathBuf,
    lines: Arc<Mutex<Vec<String>>>,
}

/// The canonical text of a call, as the filter writes it: sorted keys,
/// no whitespace (serde_json's map is ordered).
pub fn canonical(call: &Value) -> String {
    call.to_string()
}

/// `sha256:<hex>` of a call's canonical text.
pub fn binding(call_text: &str) -> String {
    agentplane_core::audit::chain::digest(call_text.as_bytes())
}

/// The call object the filter binds.
pub fn call(agent: &str, chain: &[&str], service: &str, tool: &str, arguments: Value) -> Value {
    json!({"agent": agent, "chain": chain, "service": service, "tool": tool,
           "arguments": arguments})
}

impl Approval {
    /// Starts it on `port` (0: any) with `client`; `Err` with its stderr
    /// when it does not start (a flag refused, the port taken).
    pub fn try_start(port: u16, client: &OidcClient) -> Result<Approval, String> {
        Approval::try_start_with(port, client, &[])
    }

    /// [`Approval::start`] with more flags (e.g. `--links-file`).
    pub fn start_with(port: u16, client: &OidcClient, extra: &[String]) -> Approval {
        Approval::try_start_with(port, client, extra).unwrap_or_else(|e| panic!("{e}"))
    }

    /// [`Approval::try_start`] with more flags.
    pub fn try_start_with(
        port: u16,
        client: &OidcClient,
        extra: &[String],
    ) -> Result<Approval, String> {
        let dir = std::env::temp_dir().join(format!(
            "agentplane-approval-{}-{:016x}",
            std::process::id(),
            rand::random::<u64>()
        ));
        std::fs::create_dir_all(&dir).unwrap();
        let filter_key = format!("filter-{:032x}", rand::random::<u128>());
        let seed: [u8; 32] = rand::random();
        std::fs::write(dir.join("filter.key"), &filter_key).unwrap();
        std::fs::write(dir.join("grant.seed"), format!("{}\n", base64url(&seed))).unwrap();
        std::fs::write(dir.join("client.secret"), &client.client_secret).unwrap();
        let stderr = std::fs::File::create(dir.join("stderr.log")).unwrap();
        let mut child = Command::new(approval_bin())
            .arg("--listen")
            .arg(format!("127.0.0.1:{port}"))
            .args(["--issuer", &client.issuer, "--client-id", &client.client_id])
            .arg("--client-secret-file")
            .arg(dir.join("client.secret"))
            .arg("--filter-key-file")
            .arg(dir.join("filter.key"))
            .arg("--signing-key-file")
            .arg(dir.join("grant.seed"))
            .args(extra)
            .stdout(Stdio::piped())
            .stderr(Stdio::from(stderr))
            .spawn()
            .unwrap_or_else(|e| panic!("{}: {e}", approval_bin().display()));
        // EOF (an empty line) when it exits instead of listening, or says
        // nothing within the bound.
        let (first, out) = crate::first_line(child.stdout.take().unwrap(), crate::START_WITHIN);
        let bound = first
            .trim()
            .strip_prefix("listening on http://127.0.0.1:")
            .and_then(|p| p.parse::<u16>().ok());
        let (Some(bound), Some(out)) = (bound, out) else {
            let _ = child.kill();
            let status = child.wait().map(|s| s.to_string()).unwrap_or_default();
            let err = std::fs::read_to_string(dir.join("stderr.log")).unwrap_or_default();
            let _ = std::fs::remove_dir_all(&dir);
            return Err(format!(
                "the approval service did not start ({status}): {first:?} {err}"
            ));
        };
        let lines = Arc::new(Mutex::new(Vec::new()));
        let sink = lines.clone();
        std::thread::spawn(move || {
            for line in out.lines().map_while(Result::ok) {
                sink.lock().unwrap().push(line);
            }
        });
        let a = Approval {
            child: Some(child),
            port: bound,
            filter_key,
            seed,
            dir,
            lines,
        };
        a.wait_healthy()?;
        Ok(a)
    }

    /// [`Approval::try_start`], panicking when it does not start.
    pub fn start(port: u16, client: &OidcClient) -> Approval {
        Approval::try_start(port, client).unwrap_or_else(|e| panic!("{e}"))
    }

    /// Polls `/healthz` until it answers 200 (10 s at most).
    fn wait_healthy(&self) -> Result<(), String> {
        let t0 = Instant::now();
        let mut pause = Duration::from_millis(5);
        loop {
            if let Ok(r) = try_http(self.port, "GET", "/healthz", &[], "") {
                if r.status == 200 && r.body == "ok" {
                    return Ok(());
                }
            }
            if t0.elapsed() > Duration::from_secs(10) {
                return Err(format!("approval service not healthy:\n{}", self.stderr()));
            }
            std::thread::sleep(pause);
            pause = (pause * 2).min(Duration::from_millis(100));
        }
    }

    /// Its base URL (the default public URL).
    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// What it wrote on stderr.
    pub fn stderr(&self) -> String {
        std::fs::read_to_string(self.dir.join("stderr.log")).unwrap_or_default()
    }

    /// `POST /v1/check` with this body and `authorization` as given.
    pub fn check_raw(&self, authorization: Option<&str>, body: &str) -> Response {
        let mut headers = vec![("content-type", "application/json")];
        headers.extend(authorization.map(|a| ("authorization", a)));
        http(self.port, "POST", "/v1/check", &headers, body)
    }

    /// `POST /v1/check` as the filter asks about `call`: its canonical
    /// text and binding, these approvers and lifetime.
    pub fn check(&self, call: &Value, approvers: &[&str], ttl_s: u64) -> Response {
        let text = canonical(call);
        let body = json!({"binding": binding(&text), "call": text, "approvers": approvers,
                          "ttl_s": ttl_s, "decision_id": format!("e2e-{:x}", rand::random::<u32>())});
        let auth = format!("Bearer {}", self.filter_key);
        self.check_raw(Some(&auth), &body.to_string())
    }

    /// `GET /jwks.json`.
    pub fn jwks(&self) -> Value {
        let r = http(self.port, "GET", "/jwks.json", &[], "");
        assert_eq!(r.status, 200, "{}", r.body);
        r.json()
    }

    /// The decision log so far: one JSON value per line.
    pub fn decisions(&self) -> Vec<Value> {
        self.lines
            .lock()
            .unwrap()
            .iter()
            .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("log line {l:?}: {e}")))
            .collect()
    }

    /// Stops it with SIGTERM and returns its exit status (a graceful stop
    /// is a success).
    pub fn terminate(&mut self) -> Option<std::process::ExitStatus> {
        let mut c = self.child.take()?;
        let _ = Command::new("kill")
            .args(["-TERM", &c.id().to_string()])
            .status();
        c.wait().ok()
    }
}

impl Drop for Approval {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
        if std::thread::panicking() {
            eprintln!("approval service stderr:\n{}", self.stderr());
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
