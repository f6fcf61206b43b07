//! OpenBao: a dev server (`bao server -dev`) of the test's own on a
//! loopback port, its HTTP API with the root token, and the setup steps
//! of `deploy/openbao/init.sh` (JWT auth for agents, the database secrets
//! engine, the transaction-token signing key). Killed on drop; its log is
//! printed if a test panicked.

use crate::{artifact, base64url, free_port, repo_root, try_http, Idp, Postgres, AUDIENCE, ISSUER};
use serde_json::{json, Value};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// A running OpenBao dev server (`bao server -dev`) on a loopback port,
/// killed on drop. Configured over its HTTP API by [`Bao::setup_agents`].
pub struct Bao {
    child: Option<Child>,
    /// Its port.
    pub port: u16,
    /// The root token.
    pub root: String,
    dir: PathBuf,
}

/// OpenBao's CLI: `$BAO_BIN`, else `.venv/bin/bao` (./build.sh installs it).
pub fn bao_bin() -> PathBuf {
    artifact("BAO_BIN", ".venv/bin/bao", "OpenBao", "run ./build.sh deps")
}

impl Bao {
    /// Starts a dev server on a fresh port and waits until it is unsealed.
    pub fn start() -> Bao {
        // A port picked free can be taken before bao binds it: bao then
        // exits, and we try another.
        for _ in 0..5 {
            if let Some(b) = Bao::try_start_on(free_port()) {
                return b;
            }
        }
        panic!("bao would not start on any of 5 ports");
    }

    /// Starts a dev server on `port` (a restart keeps nothing: dev servers
    /// are in memory).
    pub fn start_on(port: u16) -> Bao {
        Bao::try_start_on(port).unwrap_or_else(|| panic!("bao did not start on port {port}"))
    }

    fn try_start_on(port: u16) -> Option<Bao> {
        let root = format!("root-{}-{port}", std::process::id());
        let dir =
            std::env::temp_dir().join(format!("agentplane-bao-{}-{port}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let log = std::fs::File::create(dir.join("bao.log")).unwrap();
        let child = Command::new(bao_bin())
            .args(["server", "-dev", "-dev-no-store-token"])
            .arg(format!("-dev-listen-address=127.0.0.1:{port}"))
            .arg(format!("-dev-root-token-id={root}"))
            .env("HOME", &dir)
            .stdout(Stdio::from(log.try_clone().unwrap()))
            .stderr(Stdio::from(log))
            .spawn()
            .unwrap();
        let root_check = root.clone();
        let mut b = Bao {
            child: Some(child),
            port,
            root,
            dir,
        };
        let t0 = Instant::now();
        loop {
            // Our root token, not just any server on this port.
            let me = [("x-vault-token", root_check.as_str())];
            if let Ok(r) = try_http(port, "GET", "/v1/auth/token/lookup-self", &me, "") {
                if r.status == 200 {
                    break;
                }
            }
            if let Some(c) = b.child.as_mut() {
                if let Ok(Some(st)) = c.try_wait() {
                    eprintln!("bao exited with {st}:\n{}", b.log());
                    return None;
                }
            }
            assert!(
                t0.elapsed() < Duration::from_secs(30),
                "bao not ready:\n{}",
                b.log()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        Some(b)
    }

    /// Stops the server (tests of an unavailable Vault).
    pub fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// The server's log.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("bao.log")).unwrap_or_default()
    }

    /// An API call with the root token; panics unless it succeeds.
    pub fn api(&self, method: &str, path: &str, body: Value) -> Value {
        let body = if body.is_null() {
            String::new()
        } else {
            body.to_string()
        };
        let r = try_http(
            self.port,
            method,
            path,
            &[
                ("x-vault-token", &self.root),
                ("content-type", "application/json"),
            ],
            &body,
        )
        .unwrap();
        assert!(
            (200..300).contains(&r.status),
            "bao {method} {path}: {} {}",
            r.status,
            r.body
        );
        if r.body.trim().is_empty() {
            Value::Null
        } else {
            r.json()
        }
    }

    /// Runs `deploy/openbao/init.sh` (the compose stack's setup steps)
    /// against this server with `env`.
    pub fn run_init(&self, env: &[(&str, String)]) {
        let script = repo_root().join("deploy/openbao/init.sh");
        let bin = bao_bin();
        let mut path = std::env::var("PATH").unwrap_or_default();
        if let Some(dir) = bin.parent().filter(|d| !d.as_os_str().is_empty()) {
            path = format!("{}:{path}", dir.display());
        }
        let out = Command::new("sh")
            .arg(&script)
            .env("BAO_ADDR", format!("http://127.0.0.1:{}", self.port))
            .env("BAO_TOKEN", &self.root)
            .env("PATH", path)
            .envs(env.iter().map(|(k, v)| (k, v)))
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "deploy/openbao/init.sh failed:\n{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }

    /// JWT auth trusting `idp`'s key for its issuer; role `agent` bound to
    /// the audience, `sub` as the alias; policy `agent-kv` lets each agent
    /// read only `secret/data/mcp/agents/<its own sub>/*` (entity alias
    /// templating), and its database role. The steps are
    /// `deploy/openbao/init.sh`'s, as in the compose stack.
    pub fn setup_agents(&self, idp: &Idp) {
        self.run_init(&[
            ("STEPS", "agents".into()),
            ("ISSUER", ISSUER.into()),
            ("AUDIENCE", AUDIENCE.into()),
            ("JWT_PUBKEY", idp.public_pem()),
        ]);
    }

    /// A counter from OpenBao's Prometheus metrics (0 when absent).
    pub fn metric(&self, name: &str) -> u64 {
        let r = try_http(
            self.port,
            "GET",
            "/v1/sys/metrics?format=prometheus",
            &[("x-vault-token", &self.root)],
            "",
        )
        .unwrap();
        r.body
            .lines()
            .find_map(|l| l.strip_prefix(name)?.strip_prefix(' '))
            .and_then(|v| v.trim().parse::<f64>().ok())
            .map_or(0, |v| v as u64)
    }

    /// The database secrets engine against `pg`: connection `pg`, role
    /// `readonly` issuing login roles that live `ttl` (`init.sh`'s steps).
    pub fn setup_database(&self, pg: &Postgres, ttl: &str) {
        self.run_init(&[
            ("STEPS", "database".into()),
            ("PG_HOST", "127.0.0.1".into()),
            ("PG_PORT", pg.port.to_string()),
            ("PG_PASSWORD", pg.password.clone()),
            ("DB_TTL", ttl.into()),
        ]);
    }

    /// The gateway's transaction-token signing key: a fresh Ed25519 seed
    /// at `secret/data/agentplane/txn-signing` (`kid`, `d`), and a token
    /// whose only policy reads it (what Envoy's VM gets in
    /// `AGENTPLANE_VAULT_TOKEN`). Returns (vault token, seed base64url).
    pub fn setup_txn_signing(&self, kid: &str) -> (String, String) {
        let mut seed = [0u8; 32];
        let mut f = std::fs::File::open("/dev/urandom").unwrap();
        std::io::Read::read_exact(&mut f, &mut seed).unwrap();
        let d = base64url(&seed);
        self.api(
            "POST",
            "/v1/secret/data/agentplane/txn-signing",
            json!({"data": {"kid": kid, "d": d}}),
        );
        self.api(
            "PUT",
            "/v1/sys/policies/acl/agentplane-gateway",
            json!({"policy": "path \"secret/data/agentplane/txn-signing\" { capabilities = [\"read\"] }\n"}),
        );
        let t = self.api(
            "POST",
            "/v1/auth/token/create",
            json!({"policies": ["agentplane-gateway"], "no_default_policy": true, "ttl": "1h"}),
        );
        let token = t["auth"]["client_token"].as_str().unwrap().to_string();
        (token, d)
    }

    /// Writes a KV v2 secret for an agent.
    pub fn put_agent_secret(&self, agent: &str, data: Value) {
        self.api(
            "POST",
            &format!("/v1/secret/data/mcp/agents/{agent}/credentials"),
            json!({ "data": data }),
        );
    }
}

impl Drop for Bao {
    fn drop(&mut self) {
        self.stop();
        if std::thread::panicking() {
            eprintln!("--- bao log ---\n{}", self.log());
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
