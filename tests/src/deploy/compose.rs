//! The compose stack, for the offline checks of `docker-compose.yml`:
//! its resolved form (`docker-compose config`) as JSON with helpers that
//! read services, networks, ports and mounts out of it, and OpenBao as the
//! stack runs it (`deploy/openbao/openbao.hcl`, set up by `init.sh`).

use crate::repo_root;
use serde_json::Value;
use std::collections::BTreeSet;

/// YAML as JSON, parsed by PyYAML under the Python that runs
/// `docker-compose` (Debian's 1.29 is a Python program that depends on
/// it), so checking YAML adds no parser of our own.
pub fn yaml_to_json(yaml: &str) -> Value {
    let mut child = std::process::Command::new(compose_python())
        .args([
            "-c",
            "import json, sys, yaml; json.dump(yaml.safe_load(sys.stdin), sys.stdout)",
        ])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    std::io::Write::write_all(&mut child.stdin.take().unwrap(), yaml.as_bytes()).unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "PyYAML refused the document: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

/// The interpreter on `docker-compose`'s `#!` line.
fn compose_python() -> std::path::PathBuf {
    let path = std::env::var_os("PATH").unwrap_or_default();
    let script = std::env::split_paths(&path)
        .map(|d| d.join("docker-compose"))
        .find(|p| p.is_file())
        .expect("docker-compose is not on PATH (./build.sh deps installs it)");
    let text = std::fs::read_to_string(&script).unwrap();
    let shebang = text.lines().next().unwrap_or_default();
    let mut words = shebang.trim_start_matches("#!").split_whitespace();
    let first = words.next().expect("docker-compose has no #! line");
    // `#!/usr/bin/env python3` names the interpreter second.
    let interpreter = if first.ends_with("/env") {
        words.next().expect("#!/usr/bin/env names no interpreter")
    } else {
        first
    };
    interpreter.into()
}

/// `docker-compose config` of the repository's `docker-compose.yml`, run
/// with nothing in the environment but `PATH` (no `AGENTPLANE_*` variable
/// a user might have set): whether it succeeded, and what it printed.
pub fn compose_config_text() -> (bool, String) {
    let out = std::process::Command::new("docker-compose")
        .current_dir(repo_root())
        .env_clear()
        .env("PATH", std::env::var_os("PATH").unwrap_or_default())
        .args(["-f", "docker-compose.yml", "config"])
        .output()
        .unwrap_or_else(|e| panic!("docker-compose: {e}"));
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), text)
}

/// The compose stack as `docker-compose config` resolves it, as JSON.
pub fn compose_config() -> Value {
    let (ok, text) = compose_config_text();
    assert!(
        ok,
        "docker-compose config refused docker-compose.yml:\n{text}"
    );
    yaml_to_json(&text)
}

/// The networks a compose service joins (`default`, which is not
/// internal, when it names none; none with `network_mode: none`).
pub fn networks(c: &Value, service: &str) -> BTreeSet<String> {
    let s = &c["services"][service];
    match &s["networks"] {
        Value::Object(m) => m.keys().cloned().collect(),
        Value::Array(a) => a
            .iter()
            .filter_map(Value::as_str)
            .map(String::from)
            .collect(),
        _ if s["network_mode"] == "none" => BTreeSet::new(),
        _ => BTreeSet::from(["default".to_string()]),
    }
}

/// Every service's name.
pub fn services(c: &Value) -> Vec<String> {
    c["services"]
        .as_object()
        .map(|m| m.keys().cloned().collect())
        .unwrap_or_default()
}

/// The services that share a network with `service`.
pub fn neighbours(c: &Value, service: &str) -> BTreeSet<String> {
    let mine = networks(c, service);
    services(c)
        .into_iter()
        .filter(|s| s != service && !networks(c, s).is_disjoint(&mine))
        .collect()
}

/// A published port as (host address, host port, container port), from
/// either the short (`127.0.0.1:15000:15000/tcp`) or the long form.
pub fn published(p: &Value) -> (String, String, String) {
    if let Some(s) = p.as_str() {
        let s = s.split('/').next().unwrap_or_default();
        let parts: Vec<&str> = s.split(':').collect();
        return match parts.as_slice() {
            [ip, host, target] => (ip.to_string(), host.to_string(), target.to_string()),
            [host, target] => (String::new(), host.to_string(), target.to_string()),
            _ => (String::new(), String::new(), s.to_string()),
        };
    }
    let field = |k: &str| match &p[k] {
        Value::String(s) => s.clone(),
        Value::Null => String::new(),
        v => v.to_string(),
    };
    (field("host_ip"), field("published"), field("target"))
}

/// What a service publishes on the host.
pub fn ports(c: &Value, service: &str) -> Vec<(String, String, String)> {
    c["services"][service]["ports"]
        .as_array()
        .map(|a| a.iter().map(published).collect())
        .unwrap_or_default()
}

/// A service's mounts as (source, target): a named volume's name, or a
/// bind mount's host path.
pub fn mounts(c: &Value, service: &str) -> Vec<(String, String)> {
    let Some(list) = c["services"][service]["volumes"].as_array() else {
        return Vec::new();
    };
    list.iter()
        .map(|v| match v.as_str() {
            Some(s) => {
                let mut it = s.split(':');
                let source = it.next().unwrap_or_default().to_string();
                (source, it.next().unwrap_or_default().to_string())
            }
            None => (
                v["source"].as_str().unwrap_or_default().to_string(),
                v["target"].as_str().unwrap_or_default().to_string(),
            ),
        })
        .collect()
}

/// The named volumes a service mounts (no bind mounts).
pub fn named_volumes(c: &Value, service: &str) -> BTreeSet<String> {
    mounts(c, service)
        .into_iter()
        .map(|(s, _)| s)
        .filter(|s| !s.starts_with('/') && !s.starts_with('.'))
        .collect()
}

/// OpenBao as the compose stack runs it: `deploy/openbao/openbao.hcl`, a
/// real server (integrated storage) that starts uninitialized and sealed,
/// with only its addresses moved to loopback and its storage to a
/// temporary directory. Stopped when dropped.
pub struct ComposeBao {
    child: Option<std::process::Child>,
    /// Its API port.
    pub port: u16,
    /// Storage, config and log; `init/` is the init job's volume.
    pub dir: std::path::PathBuf,
}

impl ComposeBao {
    /// Starts a fresh server and waits until it answers.
    pub fn start() -> ComposeBao {
        for _ in 0..5 {
            let port = crate::free_port();
            let dir = std::env::temp_dir().join(format!(
                "agentplane-compose-bao-{}-{port}",
                std::process::id()
            ));
            let _ = std::fs::remove_dir_all(&dir);
            std::fs::create_dir_all(dir.join("data")).unwrap();
            std::fs::create_dir_all(dir.join("init")).unwrap();
            let hcl =
                std::fs::read_to_string(repo_root().join("deploy/openbao/openbao.hcl")).unwrap();
            let mut out = hcl.clone();
            // The cluster listener is the API port + 1, as 8200/8201 in compose.
            for (from, to) in [
                (
                    "\"/openbao/file\"",
                    format!("\"{}\"", dir.join("data").display()),
                ),
                ("\"0.0.0.0:8200\"", format!("\"127.0.0.1:{port}\"")),
                (
                    "\"http://openbao:8200\"",
                    format!("\"http://127.0.0.1:{port}\""),
                ),
                (
                    "\"http://openbao:8201\"",
                    format!("\"http://127.0.0.1:{}\"", port + 1),
                ),
            ] {
                assert_eq!(hcl.matches(from).count(), 1, "openbao.hcl has {from} once");
                out = out.replace(from, &to);
            }
            std::fs::write(dir.join("openbao.hcl"), out).unwrap();
            let mut b = ComposeBao {
                child: None,
                port,
                dir,
            };
            if b.run() {
                return b;
            }
        }
        panic!("OpenBao (openbao.hcl) would not start on any of 5 ports");
    }

    /// Starts the server process on the existing storage; false if it exited.
    fn run(&mut self) -> bool {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.join("bao.log"))
            .unwrap();
        self.child = Some(
            std::process::Command::new(crate::bao_bin())
                .arg("server")
                .arg(format!(
                    "-config={}",
                    self.dir.join("openbao.hcl").display()
                ))
                .env("HOME", &self.dir)
                .stdout(log.try_clone().unwrap())
                .stderr(log)
                .spawn()
                .unwrap(),
        );
        let t0 = std::time::Instant::now();
        loop {
            if crate::try_http(self.port, "GET", "/v1/sys/seal-status", &[], "").is_ok() {
                return true;
            }
            if let Some(Ok(Some(_))) = self.child.as_mut().map(|c| c.try_wait()) {
                self.child = None;
                return false;
            }
            assert!(
                t0.elapsed() < std::time::Duration::from_secs(30),
                "OpenBao not answering:\n{}",
                self.log()
            );
            std::thread::sleep(std::time::Duration::from_millis(50));
        }
    }

    /// Stops and starts the server on the same storage: it comes back sealed.
    pub fn restart(&mut self) {
        self.stop();
        assert!(self.run(), "OpenBao did not restart:\n{}", self.log());
    }

    fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// The server's log.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("bao.log")).unwrap_or_default()
    }

    /// The init job's directory (`BAO_INIT_DIR`).
    pub fn init_dir(&self) -> std::path::PathBuf {
        self.dir.join("init")
    }

    /// Runs `deploy/openbao/init.sh` as the openbao-init job does: no
    /// token of its own (bootstrap reads the root token from the init
    /// directory), `STEPS` and `env` added. Whether it succeeded, and its
    /// output.
    pub fn init(&self, steps: &str, env: &[(&str, String)]) -> (bool, String) {
        let bin = crate::bao_bin();
        let mut path = std::env::var("PATH").unwrap_or_default();
        if let Some(d) = bin.parent().filter(|d| !d.as_os_str().is_empty()) {
            path = format!("{}:{path}", d.display());
        }
        let out = std::process::Command::new("sh")
            .arg(repo_root().join("deploy/openbao/init.sh"))
            .env_remove("BAO_TOKEN")
            .env_remove("VAULT_TOKEN")
            .env("HOME", &self.dir)
            .env("PATH", path)
            .env("BAO_ADDR", format!("http://127.0.0.1:{}", self.port))
            .env("BAO_INIT_DIR", self.init_dir())
            .env("STEPS", steps)
            .envs(env.iter().map(|(k, v)| (k, v)))
            .output()
            .unwrap();
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        (out.status.success(), text)
    }

    /// The root token `init.sh` keeps in the init directory.
    pub fn root_token(&self) -> String {
        let init: Value = serde_json::from_str(
            &std::fs::read_to_string(self.init_dir().join("init.json")).unwrap(),
        )
        .unwrap();
        init["root_token"].as_str().unwrap().to_string()
    }

    /// One API call with `token` (empty: none): (status, body as JSON or Null).
    pub fn call(&self, token: &str, method: &str, path: &str, body: &Value) -> (u16, Value) {
        let mut headers = vec![("content-type", "application/json")];
        if !token.is_empty() {
            headers.push(("x-vault-token", token));
        }
        let body = if body.is_null() {
            String::new()
        } else {
            body.to_string()
        };
        let r = crate::try_http(self.port, method, path, &headers, &body).unwrap();
        let v = serde_json::from_str(&r.body).unwrap_or(Value::Null);
        (r.status, v)
    }
}

impl Drop for ComposeBao {
    fn drop(&mut self) {
        self.stop();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
