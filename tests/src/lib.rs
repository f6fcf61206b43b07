//! End-to-end harness: a real Envoy running the built filter, an identity
//! provider that mints RS256 tokens, and an upstream that echoes what it
//! received. Everything binds to 127.0.0.1 on ports picked at run time and
//! is stopped on drop, also when a test fails (the Envoy log is printed
//! then).
//!
//! Nothing here skips: a missing Envoy binary or filter is a test failure
//! that says how to build it.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

pub mod deploy;
pub mod provider;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use jwt_compact::alg::{Rsa, RsaPrivateKey};
use jwt_compact::prelude::*;
use rsa::traits::PublicKeyParts;
use serde_json::{json, Map, Value};
use std::collections::HashMap;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// The repository root.
pub fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("..")
        .canonicalize()
        .unwrap()
}

/// A file the tests need: `$var` if set, else `default` under the repo.
/// Missing is a failure that says how to get it, never a skip.
fn artifact(var: &str, default: &str, what: &str, hint: &str) -> PathBuf {
    let p = std::env::var_os(var)
        .map(PathBuf::from)
        .unwrap_or_else(|| repo_root().join(default));
    assert!(p.exists(), "{what} not found at {} ({hint})", p.display());
    p
}

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

/// A port that was free a moment ago.
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Fills `${NAME}` placeholders. A placeholder alone on its line is replaced
/// by the value's lines, each indented like the placeholder.
pub fn render(template: &str, vars: &HashMap<&str, String>) -> String {
    let mut out = String::new();
    for line in template.lines() {
        let trimmed = line.trim_start();
        let indent = &line[..line.len() - trimmed.len()];
        let whole = vars
            .iter()
            .find(|(k, _)| trimmed.trim_end() == format!("${{{k}}}"));
        if let Some((_, v)) = whole {
            for l in v.lines() {
                out.push_str(indent);
                out.push_str(l);
                out.push('\n');
            }
            continue;
        }
        let mut l = line.to_string();
        for (k, v) in vars {
            l = l.replace(&format!("${{{k}}}"), v);
        }
        out.push_str(&l);
        out.push('\n');
    }
    assert!(!out.contains("${"), "unfilled placeholder in:\n{out}");
    out
}

/// Issuer used by the harness's identity provider.
pub const ISSUER: &str = "https://idp.agentplane.test/";
/// Audience the control plane expects.
pub const AUDIENCE: &str = "https://mcp.example.com/";

/// An identity provider with one RS256 key.
pub struct Idp {
    key: RsaPrivateKey,
    kid: String,
}

impl Idp {
    /// Generates a fresh 2048-bit key.
    pub fn new() -> Idp {
        let key = RsaPrivateKey::new(&mut rand::thread_rng(), 2048).unwrap();
        Idp {
            key,
            kid: "agentplane-test-1".into(),
        }
    }

    /// The JWKS document Envoy (and later Vault) verify against.
    pub fn jwks(&self) -> String {
        let pk = self.key.to_public_key();
        json!({"keys": [{
            "kty": "RSA", "alg": "RS256", "use": "sig", "kid": self.kid,
            "n": URL_SAFE_NO_PAD.encode(pk.n().to_bytes_be()),
            "e": URL_SAFE_NO_PAD.encode(pk.e().to_bytes_be()),
        }]})
        .to_string()
    }

    /// Mints a token with `claims` plus iss/aud defaults and `exp` in
    /// `ttl_secs` (negative: already expired).
    pub fn mint(&self, claims: Value, ttl_secs: i64) -> String {
        let mut custom: Map<String, Value> = claims.as_object().cloned().unwrap_or_default();
        custom.entry("iss").or_insert(json!(ISSUER));
        custom.entry("aud").or_insert(json!(AUDIENCE));
        let now = chrono_now();
        let mut c = Claims::new(custom);
        c.issued_at = Some(now - chrono::Duration::seconds(60));
        c.expiration = Some(now + chrono::Duration::seconds(ttl_secs));
        let header = Header::empty().with_key_id(&self.kid);
        Rsa::rs256().token(&header, &c, &self.key).unwrap()
    }

    /// The public key as PEM (Vault's `jwt_validation_pubkeys`).
    pub fn public_pem(&self) -> String {
        use rsa::pkcs8::EncodePublicKey;
        self.key
            .to_public_key()
            .to_public_key_pem(rsa::pkcs8::LineEnding::LF)
            .unwrap()
    }

    /// The seed's support agent: `support-triage@clients`, team
    /// customer-success, type support, production, with skills:invoke and
    /// data:read.
    pub fn triage_token(&self) -> String {
        self.agent_token(
            "support-triage@clients",
            "customer-success",
            "support",
            "production",
            &["skills:invoke", "data:read"],
        )
    }

    /// A token for an agent with the seed's claim layout.
    pub fn agent_token(
        &self,
        sub: &str,
        team: &str,
        agent_type: &str,
        env: &str,
        perms: &[&str],
    ) -> String {
        self.agent_token_for(AUDIENCE, sub, team, agent_type, env, perms)
    }

    /// [`Idp::agent_token`] for one audience: what a provider issues for
    /// `resource=<audience>` (RFC 8707), e.g. a service's `resource_uri`.
    pub fn agent_token_for(
        &self,
        audience: &str,
        sub: &str,
        team: &str,
        agent_type: &str,
        env: &str,
        perms: &[&str],
    ) -> String {
        self.mint(
            json!({
                "aud": audience,
                "sub": sub, "azp": sub, "gty": "client-credentials",
                "permissions": perms,
                "https://mcp.example.com/agent_type": agent_type,
                "https://mcp.example.com/team": team,
                "https://mcp.example.com/environment": env,
            }),
            3600,
        )
    }
}

impl Default for Idp {
    fn default() -> Self {
        Self::new()
    }
}

fn chrono_now() -> chrono::DateTime<chrono::Utc> {
    chrono::Utc::now()
}

/// One request as the upstream saw it.
#[derive(Debug, Clone)]
pub struct Seen {
    /// Body, as text.
    pub body: String,
    /// Method.
    pub method: String,
    /// Path as forwarded.
    pub path: String,
    /// Headers in order, names lower-cased.
    pub headers: Vec<(String, String)>,
}

impl Seen {
    /// Every value of a header.
    pub fn all(&self, name: &str) -> Vec<String> {
        self.headers
            .iter()
            .filter(|(k, _)| k == name)
            .map(|(_, v)| v.clone())
            .collect()
    }
    /// The single value of a header; fails if it appears more than once.
    pub fn one(&self, name: &str) -> Option<String> {
        let all = self.all(name);
        assert!(
            all.len() <= 1,
            "{name} appears {} times: {all:?}",
            all.len()
        );
        all.into_iter().next()
    }
}

/// An HTTP/1.1 echo server that records every request.
pub struct Upstream {
    /// Its port.
    pub port: u16,
    seen: Arc<Mutex<Vec<Seen>>>,
    stop: Arc<AtomicBool>,
    status: Arc<std::sync::atomic::AtomicU16>,
}

impl Upstream {
    /// Starts the server on a free loopback port.
    pub fn start() -> Upstream {
        Upstream::start_with(true)
    }

    /// An echo server that keeps no record (the benchmark: millions of
    /// requests).
    pub fn start_unrecorded() -> Upstream {
        Upstream::start_with(false)
    }

    fn start_with(record: bool) -> Upstream {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let seen = Arc::new(Mutex::new(Vec::new()));
        let stop = Arc::new(AtomicBool::new(false));
        let (s2, st2) = (seen.clone(), stop.clone());
        let status = Arc::new(std::sync::atomic::AtomicU16::new(200));
        let code2 = status.clone();
        std::thread::spawn(move || {
            for conn in listener.incoming() {
                if st2.load(Ordering::SeqCst) {
                    break;
                }
                let Ok(conn) = conn else { continue };
                let s3 = s2.clone();
                let code3 = code2.clone();
                std::thread::spawn(move || serve(conn, s3, record, code3));
            }
        });
        Upstream {
            port,
            seen,
            stop,
            status,
        }
    }

    /// Answers every later request with this status (an upstream or a
    /// collector that fails).
    pub fn set_status(&self, code: u16) {
        self.status.store(code, Ordering::SeqCst);
    }

    /// Everything received so far.
    pub fn seen(&self) -> Vec<Seen> {
        self.seen.lock().unwrap().clone()
    }

    /// Forgets what was received.
    pub fn clear(&self) {
        self.seen.lock().unwrap().clear();
    }
}

impl Drop for Upstream {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        let _ = TcpStream::connect(("127.0.0.1", self.port));
    }
}

fn serve(
    conn: TcpStream,
    seen: Arc<Mutex<Vec<Seen>>>,
    record: bool,
    status: Arc<std::sync::atomic::AtomicU16>,
) {
    let mut reader = BufReader::new(conn.try_clone().unwrap());
    let mut conn = conn;
    // Lines as bytes: header values need not be UTF-8 (recorded lossily).
    let read_line = |reader: &mut BufReader<TcpStream>| -> Option<String> {
        let mut raw = Vec::new();
        match reader.read_until(b'\n', &mut raw) {
            Ok(0) | Err(_) => None,
            Ok(_) => Some(String::from_utf8_lossy(&raw).into_owned()),
        }
    };
    loop {
        let Some(line) = read_line(&mut reader) else {
            return;
        };
        let mut parts = line.split_whitespace();
        let method = parts.next().unwrap_or("").to_string();
        let path = parts.next().unwrap_or("").to_string();
        let mut headers = Vec::new();
        let mut len = 0usize;
        loop {
            let Some(h) = read_line(&mut reader) else {
                return;
            };
            let h = h.trim_end();
            if h.is_empty() {
                break;
            }
            if let Some((k, v)) = h.split_once(':') {
                let k = k.trim().to_ascii_lowercase();
                if k == "content-length" {
                    len = v.trim().parse().unwrap_or(0);
                }
                headers.push((k, v.trim().to_string()));
            }
        }
        let chunked = headers
            .iter()
            .any(|(k, v)| k == "transfer-encoding" && v.eq_ignore_ascii_case("chunked"));
        let mut body = vec![0u8; len];
        if chunked {
            body.clear();
            loop {
                let Some(size) = read_line(&mut reader) else {
                    return;
                };
                let n = usize::from_str_radix(size.trim(), 16).unwrap_or(0);
                let mut chunk = vec![0u8; n + 2];
                if reader.read_exact(&mut chunk).is_err() {
                    return;
                }
                if n == 0 {
                    break;
                }
                body.extend_from_slice(&chunk[..n]);
            }
        } else if reader.read_exact(&mut body).is_err() {
            return;
        }
        let rec = Seen {
            body: String::from_utf8_lossy(&body).to_string(),
            method: method.clone(),
            path: path.clone(),
            headers: headers.clone(),
        };
        if record {
            seen.lock().unwrap().push(rec);
        }
        let hdrs: Vec<Value> = headers.iter().map(|(k, v)| json!([k, v])).collect();
        let header = |name: &str| {
            headers
                .iter()
                .find(|(k, _)| k == name)
                .map(|(_, v)| v.clone())
        };
        // A slow upstream, when a test asks for one.
        if let Some(ms) = header("x-test-delay-ms").and_then(|v| v.parse::<u64>().ok()) {
            std::thread::sleep(std::time::Duration::from_millis(ms.min(10_000)));
        }
        // Tests that need a server's answer (an MCP list result) name it:
        // `x-test-reply` as JSON, `x-test-reply-sse` as one SSE event.
        let (content_type, out) = if let Some(r) = header("x-test-reply") {
            ("application/json", r)
        } else if let Some(r) = header("x-test-reply-sse") {
            (
                "text/event-stream",
                format!("event: message\nid: 1\ndata: {r}\n\n"),
            )
        } else {
            (
                "application/json",
                json!({"method": method, "path": path, "headers": hdrs}).to_string(),
            )
        };
        // `x-test-reply-header: name: value` adds that header to the answer
        // (a server's `mcp-session-id`).
        let extra = header("x-test-reply-header")
            .map(|h| format!("{h}\r\n"))
            .unwrap_or_default();
        let resp = format!(
            "HTTP/1.1 {} X\r\ncontent-type: {content_type}\r\ncontent-length: {}\r\n{extra}\r\n{}",
            status.load(Ordering::SeqCst),
            out.len(),
            out
        );
        if conn.write_all(resp.as_bytes()).is_err() {
            return;
        }
    }
}

/// A response as the client saw it.
#[derive(Debug, Clone)]
pub struct Response {
    /// Status code.
    pub status: u16,
    /// Headers, names lower-cased.
    pub headers: Vec<(String, String)>,
    /// Body.
    pub body: String,
}

impl Response {
    /// A header's first value.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }
    /// The body as JSON.
    pub fn json(&self) -> Value {
        serde_json::from_str(&self.body)
            .unwrap_or_else(|e| panic!("body {:?} is not JSON: {e}", self.body))
    }
}

/// Sends one HTTP/1.1 request with exactly the given headers (duplicates and
/// odd casing preserved) and reads the whole response; panics on I/O errors.
pub fn http(port: u16, method: &str, path: &str, headers: &[(&str, &str)], body: &str) -> Response {
    try_http(port, method, path, headers, body).unwrap_or_else(|e| panic!("{method} {path}: {e}"))
}

/// [`http`], returning I/O and parse errors instead of panicking.
pub fn try_http(
    port: u16,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &str,
) -> Result<Response, String> {
    let mut req = format!("{method} {path} HTTP/1.1\r\nhost: localhost\r\nconnection: close\r\n");
    for (k, v) in headers {
        req.push_str(&format!("{k}: {v}\r\n"));
    }
    req.push_str(&format!("content-length: {}\r\n\r\n{body}", body.len()));
    send_raw(port, req.as_bytes())
}

/// Sends bytes exactly as given (header names and values need not be
/// UTF-8, nor even valid HTTP) and reads one response. The one HTTP/1.1
/// client of the harness: every other request helper goes through it.
pub fn send_raw(port: u16, request: &[u8]) -> Result<Response, String> {
    let mut s = TcpStream::connect(("127.0.0.1", port)).map_err(|e| e.to_string())?;
    s.set_read_timeout(Some(Duration::from_secs(20)))
        .map_err(|e| e.to_string())?;
    s.write_all(request).map_err(|e| e.to_string())?;
    let raw = read_response(&mut s)?;
    let text = String::from_utf8_lossy(&raw).to_string();
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    let mut lines = head.lines();
    let status = lines
        .next()
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|c| c.parse().ok())
        .ok_or_else(|| format!("no status line in {text:?}"))?;
    let headers: Vec<(String, String)> = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_string()))
        .collect();
    let chunked = headers
        .iter()
        .any(|(k, v)| k == "transfer-encoding" && v.eq_ignore_ascii_case("chunked"));
    let body = if chunked {
        dechunk(body)
    } else {
        body.to_string()
    };
    Ok(Response {
        status,
        headers,
        body,
    })
}

/// One response's bytes: up to its `content-length` when it has one (a
/// local reply's connection can stay open for Envoy's delayed close, up to
/// a second), else to the end of the stream.
fn read_response(s: &mut TcpStream) -> Result<Vec<u8>, String> {
    let mut raw = Vec::new();
    let mut buf = [0u8; 16 * 1024];
    loop {
        let n = s.read(&mut buf).map_err(|e| e.to_string())?;
        if n == 0 {
            return Ok(raw);
        }
        raw.extend_from_slice(&buf[..n]);
        let Some(end) = raw.windows(4).position(|w| w == b"\r\n\r\n") else {
            continue;
        };
        let head = String::from_utf8_lossy(&raw[..end]).to_ascii_lowercase();
        if head.contains("transfer-encoding:") {
            continue; // read to the end
        }
        let len = head.lines().find_map(|l| {
            l.strip_prefix("content-length:")
                .and_then(|v| v.trim().parse::<usize>().ok())
        });
        if let Some(len) = len {
            if raw.len() >= end + 4 + len {
                raw.truncate(end + 4 + len);
                return Ok(raw);
            }
        }
    }
}

fn dechunk(mut rest: &str) -> String {
    let mut out = String::new();
    while let Some((size, after)) = rest.split_once("\r\n") {
        let n = usize::from_str_radix(size.split(';').next().unwrap_or("").trim(), 16).unwrap_or(0);
        if n == 0 || after.len() < n {
            break;
        }
        out.push_str(&after[..n]);
        rest = after[n..].trim_start_matches("\r\n");
    }
    out
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

/// A filled-in Envoy configuration. Envoy binds its listener and admin
/// ports itself (port 0) and the harness reads them back, so no port is
/// picked in one place and bound in another.
pub struct RenderedEnvoy {
    /// The YAML.
    pub yaml: String,
    /// Worker threads (`--concurrency`), 1 unless a test wants more.
    pub workers: u32,
    /// Environment of the Envoy process (the VM sees the names listed in
    /// `vm_config.environment_variables.host_env_keys`).
    pub env: Vec<(String, String)>,
}

/// The registered service names of a plugin configuration.
pub fn registered_services(plugin_config: &str) -> Vec<String> {
    let v: Value = serde_json::from_str(plugin_config).unwrap_or(Value::Null);
    v.get("resources")
        .and_then(Value::as_object)
        .map(|m| m.keys().cloned().collect())
        .unwrap_or_default()
}

/// jwt_authn's `audiences` for a plugin configuration, as a YAML flow
/// list: the gateway's [`AUDIENCE`], then each registered service's own
/// (its `audience`, else its `resource_uri`), unless
/// `identity.audience_mode` is `"gateway"`. The filter then tells them
/// apart per service.
pub fn jwt_audiences(plugin_config: &str) -> String {
    let v: Value = serde_json::from_str(plugin_config).unwrap_or(Value::Null);
    let mut all = vec![AUDIENCE.to_string()];
    let gateway = v["identity"]["audience_mode"].as_str() == Some("gateway");
    for r in v["resources"]
        .as_object()
        .into_iter()
        .flat_map(|m| m.values())
    {
        let own = match (&r["audience"], &r["resource_uri"]) {
            (Value::String(a), _) => vec![a.clone()],
            (Value::Array(a), _) => a
                .iter()
                .filter_map(|x| x.as_str().map(str::to_owned))
                .collect(),
            (_, Value::String(u)) => vec![u.clone()],
            _ => Vec::new(),
        };
        for a in own.into_iter().filter(|_| !gateway) {
            if !all.contains(&a) {
                all.push(a);
            }
        }
    }
    Value::from(all).to_string()
}

/// The route and cluster blocks for each service: routes match the
/// service agentplane authorized (`x-agentplane-service`), clusters point
/// at `port_of(service)`.
pub fn service_blocks(services: &[String], port_of: impl Fn(&str) -> u16) -> (String, String) {
    let mut routes = String::new();
    let mut clusters = String::new();
    for s in services {
        routes.push_str(&format!(
            "- match:\n    prefix: \"/\"\n    headers:\n    - name: x-agentplane-service\n      string_match: {{ exact: \"{s}\" }}\n  route: {{ cluster: \"service.{s}\", timeout: 30s }}\n"
        ));
        clusters.push_str(&format!(
            "- name: \"service.{s}\"\n  type: STATIC\n  connect_timeout: 2s\n  load_assignment:\n    cluster_name: \"service.{s}\"\n    endpoints:\n    - lb_endpoints:\n      - endpoint:\n          address:\n            socket_address: {{ address: 127.0.0.1, port_value: {} }}\n",
            port_of(s)
        ));
    }
    (routes, clusters)
}

/// Fills `envoy/envoy.yaml`: every registered service reaches
/// `setup.upstream_port`. Without `with_filter` the agentplane wasm filter
/// is cut out (the benchmark's jwt_authn-only arm).
pub fn render_envoy(setup: &EnvoySetup, with_filter: bool) -> RenderedEnvoy {
    render_envoy_routed(setup, with_filter, &HashMap::new())
}

/// [`render_envoy`] with some services on their own upstream ports.
pub fn render_envoy_routed(
    setup: &EnvoySetup,
    with_filter: bool,
    ports: &HashMap<String, u16>,
) -> RenderedEnvoy {
    let mut vars = HashMap::new();
    vars.insert("LISTEN_PORT", "0".to_string());
    vars.insert("ADMIN_PORT", "0".to_string());
    vars.insert("VAULT_PORT", setup.vault_port.to_string());
    vars.insert("ISSUER", ISSUER.to_string());
    vars.insert("AUDIENCES", jwt_audiences(&setup.plugin_config));
    vars.insert("JWKS", setup.jwks.clone());
    let services = registered_services(&setup.plugin_config);
    let (routes, clusters) = service_blocks(&services, |s| {
        ports.get(s).copied().unwrap_or(setup.upstream_port)
    });
    vars.insert("SERVICE_ROUTES", routes);
    vars.insert("SERVICE_CLUSTERS", clusters);
    let mut template = std::fs::read_to_string(repo_root().join("envoy/envoy.yaml")).unwrap();
    if with_filter {
        vars.insert("WASM", wasm_path().display().to_string());
        vars.insert("PLUGIN_CONFIG", setup.plugin_config.clone());
    } else {
        let start = template
            .find("          - name: envoy.filters.http.wasm")
            .expect("wasm filter in template");
        let end = template
            .find("          - name: envoy.filters.http.router")
            .expect("router in template");
        template.replace_range(start..end, "");
    }
    RenderedEnvoy {
        workers: 1,
        yaml: render(&template, &vars),
        env: Vec::new(),
    }
}

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

/// A PostgreSQL server of its own (initdb in a temp dir, 127.0.0.1 on a
/// fresh port, password authentication for TCP), stopped on drop.
pub struct Postgres {
    child: Option<Child>,
    /// Its port.
    pub port: u16,
    /// The superuser (`postgres`) password.
    pub password: String,
    dir: PathBuf,
}

/// A PostgreSQL program: `$PG_BIN_DIR/<name>`, else the newest
/// `/usr/lib/postgresql/*/bin/<name>` (Debian's `postgresql` package).
pub fn pg_bin(name: &str) -> PathBuf {
    if let Some(dir) = std::env::var_os("PG_BIN_DIR") {
        return PathBuf::from(dir).join(name);
    }
    let mut found: Vec<PathBuf> = std::fs::read_dir("/usr/lib/postgresql")
        .map(|d| {
            d.flatten()
                .map(|e| e.path().join("bin").join(name))
                .collect()
        })
        .unwrap_or_default();
    found.retain(|p| p.exists());
    found.sort();
    found
        .pop()
        .unwrap_or_else(|| panic!("PostgreSQL's {name} not found (run ./build.sh deps)"))
}

fn is_root() -> bool {
    Command::new("id")
        .arg("-u")
        .output()
        .is_ok_and(|o| String::from_utf8_lossy(&o.stdout).trim() == "0")
}

/// Runs a PostgreSQL program, as the `postgres` user when we are root
/// (the server refuses to run as root).
fn pg_command(name: &str) -> Command {
    if is_root() {
        let mut c = Command::new("setpriv");
        c.args(["--reuid=postgres", "--regid=postgres", "--init-groups"])
            .arg(pg_bin(name));
        c
    } else {
        Command::new(pg_bin(name))
    }
}

impl Postgres {
    /// initdb + start; waits until it accepts password logins.
    pub fn start() -> Postgres {
        // A port picked free can be taken before the server binds it: the
        // server then exits, and we try another.
        for _ in 0..5 {
            if let Some(pg) = Postgres::try_start(free_port()) {
                return pg;
            }
        }
        panic!("postgres would not start on any of 5 ports");
    }

    fn try_start(port: u16) -> Option<Postgres> {
        let dir = std::env::temp_dir().join(format!("agentplane-pg-{}-{port}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let password = format!("pg-{}-{port}", std::process::id());
        std::fs::write(dir.join("pw"), &password).unwrap();
        if is_root() {
            let st = Command::new("chown")
                .args(["-R", "postgres:postgres"])
                .arg(&dir)
                .status()
                .unwrap();
            assert!(st.success(), "chown {}", dir.display());
        }
        let out = pg_command("initdb")
            .arg("-D")
            .arg(dir.join("data"))
            .args([
                "-U",
                "postgres",
                "--auth-local=trust",
                "--auth-host=scram-sha-256",
            ])
            .arg(format!("--pwfile={}", dir.join("pw").display()))
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "initdb: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let log = std::fs::File::create(dir.join("pg.log")).unwrap();
        let child = pg_command("postgres")
            .arg("-D")
            .arg(dir.join("data"))
            .args(["-h", "127.0.0.1", "-p", &port.to_string(), "-k"])
            .arg(&dir)
            .stdout(Stdio::from(log.try_clone().unwrap()))
            .stderr(Stdio::from(log))
            .spawn()
            .unwrap();
        let mut pg = Postgres {
            child: Some(child),
            port,
            password,
            dir,
        };
        let t0 = Instant::now();
        loop {
            if pg
                .login("postgres", &pg.password.clone(), "select 1")
                .is_ok()
            {
                return Some(pg);
            }
            if let Some(c) = pg.child.as_mut() {
                if let Ok(Some(st)) = c.try_wait() {
                    eprintln!("postgres exited with {st}; retrying:\n{}", pg.log());
                    return None;
                }
            }
            assert!(
                t0.elapsed() < Duration::from_secs(30),
                "postgres not ready:\n{}",
                pg.log()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Logs in over TCP with a password and runs one statement; the
    /// result's first column, or psql's error.
    pub fn login(&self, user: &str, password: &str, sql: &str) -> Result<String, String> {
        let out = Command::new("psql")
            .args(["-h", "127.0.0.1", "-p", &self.port.to_string(), "-U", user])
            .args(["-d", "postgres", "-tAc", sql])
            .env("PGPASSWORD", password)
            .env("PGCONNECT_TIMEOUT", "5")
            .output()
            .map_err(|e| e.to_string())?;
        if out.status.success() {
            Ok(String::from_utf8_lossy(&out.stdout).trim().to_string())
        } else {
            Err(String::from_utf8_lossy(&out.stderr).to_string())
        }
    }

    /// The server's log.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("pg.log")).unwrap_or_default()
    }
}

impl Drop for Postgres {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            // SIGINT: fast shutdown, backends included.
            let _ = Command::new("kill")
                .args(["-INT", &c.id().to_string()])
                .status();
            let t0 = Instant::now();
            while t0.elapsed() < Duration::from_secs(10) {
                if let Ok(Some(_)) = c.try_wait() {
                    break;
                }
                std::thread::sleep(Duration::from_millis(50));
            }
            let _ = c.kill();
            let _ = c.wait();
        }
        if std::thread::panicking() {
            eprintln!("--- postgres log ---\n{}", self.log());
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// Values for `envoy/envoy.yaml`'s placeholders.
pub struct EnvoySetup {
    /// JWKS JSON.
    pub jwks: String,
    /// Upstream port.
    pub upstream_port: u16,
    /// agentplane's JSON configuration.
    pub plugin_config: String,
    /// OpenBao's port (the `vault` cluster); any closed port when unused.
    pub vault_port: u16,
}

impl EnvoySetup {
    /// A setup without OpenBao (its cluster points at a closed port): the
    /// identity provider's keys, one upstream, a plugin configuration.
    pub fn without_vault(idp: &Idp, upstream_port: u16, plugin_config: String) -> EnvoySetup {
        EnvoySetup {
            jwks: idp.jwks(),
            upstream_port,
            plugin_config,
            vault_port: free_port(),
        }
    }
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
            .args(["--use-dynamic-base-id", "-l", "info", "--concurrency"])
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

    /// Envoy's log so far.
    /// The decision records in Envoy's log so far (the filter writes
    /// each as one line after `agentplane-decision `).
    pub fn decision_records(&self) -> Vec<Value> {
        self.log()
            .lines()
            .filter_map(|l| l.split("agentplane-decision ").nth(1))
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

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("envoy.log")).unwrap_or_default()
    }

    /// A request to the agent-facing listener.
    pub fn request(&self, method: &str, path: &str, headers: &[(&str, &str)]) -> Response {
        http(self.port, method, path, headers, "")
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

/// The KV secret every test and demo agent has in OpenBao, injected as
/// `x-api-key` (see [`Bao::put_agent_secret`]).
pub fn api_key_secret() -> Value {
    json!({"kv": "secret/data/mcp/agents/{agent}/credentials", "field": "api_key", "header": "x-api-key"})
}

/// `envoy/agentplane.json` with this `vault` section and the agents' API
/// key injected into requests to each of `services`.
pub fn config_with_api_key(vault: Value, services: &[&str]) -> Value {
    let mut cfg: Value = serde_json::from_str(&default_plugin_config()).unwrap();
    cfg["vault"] = vault;
    for s in services {
        cfg["resources"][*s]["secrets"] = json!([api_key_secret()]);
    }
    cfg
}

impl RenderedEnvoy {
    /// Adds a static loopback cluster (a collector, a fake Vault).
    pub fn add_cluster(&mut self, name: &str, port: u16) {
        let cluster = format!(
            "  - name: {name}\n    type: STATIC\n    connect_timeout: 1s\n    load_assignment:\n      cluster_name: {name}\n      endpoints:\n      - lb_endpoints:\n        - endpoint:\n            address:\n              socket_address: {{ address: 127.0.0.1, port_value: {port} }}\n"
        );
        self.yaml = self
            .yaml
            .replace("  - name: vault\n", &format!("{cluster}  - name: vault\n"));
    }
}

/// Registers the tickets skill (an MCP server, `agentplane_skills::serve`)
/// in a plugin configuration as the MCP service `tickets-mcp`.
pub fn add_tickets_mcp(cfg: &mut Value) {
    cfg["resources"]["tickets-mcp"] = json!({
        "type": "tool", "protocol": "mcp",
        "metadata": {"team": "customer-success", "environment": "production"}
    });
}

/// Unpadded base64url.
pub fn base64url(bytes: &[u8]) -> String {
    use base64::Engine;
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
}

/// The demo/test plugin configuration (`envoy/agentplane.json`).
pub fn default_plugin_config() -> String {
    std::fs::read_to_string(repo_root().join("envoy/agentplane.json")).unwrap()
}

/// Envoy + upstream + identity provider, ready to take requests.
pub struct Stack {
    /// The identity provider.
    pub idp: Idp,
    /// The echo upstream.
    pub upstream: Upstream,
    /// Envoy.
    pub envoy: Envoy,
}

impl Stack {
    /// Starts everything with the given plugin configuration.
    pub fn start_with(plugin_config: &str) -> Stack {
        let idp = Idp::new();
        let upstream = Upstream::start();
        let envoy = Envoy::start(&EnvoySetup {
            jwks: idp.jwks(),
            upstream_port: upstream.port,
            plugin_config: plugin_config.to_string(),
            vault_port: free_port(),
        });
        Stack {
            idp,
            upstream,
            envoy,
        }
    }

    /// Starts everything with `envoy/agentplane.json`.
    pub fn start() -> Stack {
        Stack::start_with(&default_plugin_config())
    }
}

/// `envoy/envoy.yaml` routed as an Istio sidecar's inbound listener is:
/// one route delivers every request to the pod (`setup.upstream_port`,
/// cluster `inbound`), whatever its path or `x-agentplane-service` says.
pub fn render_envoy_inbound(setup: &EnvoySetup) -> RenderedEnvoy {
    let mut r = render_envoy(setup, true);
    let open = "One route and cluster per service.\n";
    let from = r.yaml.find(open).expect("the service routes' comment") + open.len();
    let to = r
        .yaml
        .find("              # Anything else never reaches an upstream.")
        .expect("the last route's comment");
    r.yaml.replace_range(
        from..to,
        "              - match: { prefix: \"/\" }\n                route: { cluster: inbound, timeout: 30s }\n",
    );
    assert!(!r.yaml.contains("name: x-agentplane-service"));
    r.add_cluster("inbound", setup.upstream_port);
    r
}
