//! The real identity provider (`idp/server.mjs`: oidc-provider under
//! Node), started on loopback for a test and stopped when dropped.

use crate::envoy::yaml;
use crate::{http, repo_root, Response};
use base64::Engine;
use serde_json::{json, Value};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};

/// A running provider.
pub struct IdProvider {
    child: Child,
    /// Its port on its bind address (127.0.0.1 unless `BIND_ADDRESS` says
    /// otherwise).
    pub port: u16,
    /// The initial access token registration needs (`INITIAL_ACCESS_TOKEN`).
    pub initial_access_token: String,
    /// The administrator's token (`ADMIN_TOKEN`): key rotation, and
    /// changing or deleting a registration.
    pub admin_token: String,
}

/// A registered agent: what `register` prints once.
#[derive(Debug, Clone)]
pub struct Registered {
    pub client_id: String,
    pub client_secret: String,
}

/// A first-party client: what signs approvers in (the approval service),
/// confidential, authorization code with PKCE.
#[derive(Debug, Clone)]
pub struct FirstParty {
    pub client_id: String,
    pub client_secret: String,
    pub redirect_uri: String,
}

impl FirstParty {
    /// A client with a fresh secret, sending approvers back to
    /// `redirect_uri`.
    pub fn new(client_id: &str, redirect_uri: &str) -> FirstParty {
        FirstParty {
            client_id: client_id.into(),
            client_secret: format!("secret-{:032x}", rand::random::<u128>()),
            redirect_uri: redirect_uri.into(),
        }
    }

    /// Its entry in `FIRST_PARTY_CLIENTS`.
    pub fn metadata(&self) -> Value {
        json!({
            "client_id": self.client_id, "client_secret": self.client_secret,
            "redirect_uris": [self.redirect_uri],
            "grant_types": ["authorization_code"], "response_types": ["code"],
            "token_endpoint_auth_method": "client_secret_basic",
        })
    }
}

/// A PKCE pair (RFC 7636, S256).
#[derive(Debug, Clone)]
pub struct Pkce {
    pub verifier: String,
    pub challenge: String,
}

impl Pkce {
    /// A fresh verifier (43 characters) and its S256 challenge.
    pub fn new() -> Pkce {
        let verifier = crate::base64url(&rand::random::<[u8; 32]>());
        let hex = agentplane_core::audit::chain::digest(verifier.as_bytes());
        let digest: Vec<u8> = (7..hex.len())
            .step_by(2)
            .map(|i| u8::from_str_radix(&hex[i..i + 2], 16).unwrap())
            .collect();
        Pkce {
            challenge: crate::base64url(&digest),
            verifier,
        }
    }
}

impl Default for Pkce {
    fn default() -> Self {
        Self::new()
    }
}

/// Where `build.sh` installs the provider's packages.
pub fn idp_dir() -> PathBuf {
    std::env::var("AGENTPLANE_IDP_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|_| repo_root().join("idp"))
}

/// `target/debug/agentplane-agent` (`./build.sh test` builds it).
pub fn agent_cli() -> Command {
    let bin = repo_root().join("target/debug/agentplane-agent");
    assert!(
        bin.exists(),
        "{} missing: ./build.sh test builds it",
        bin.display()
    );
    Command::new(bin)
}

impl IdProvider {
    /// Starts `idp/server.mjs` on a port it picks itself.
    pub fn start() -> IdProvider {
        let iat = format!("iat-{}-{}", std::process::id(), rand::random::<u64>());
        IdProvider::start_with(&iat, None)
    }

    /// Starts it with a given initial access token (and an administrator's
    /// token of its own), keeping registrations in `data_file` when given
    /// (a restart then keeps them).
    pub fn start_with(iat: &str, data_file: Option<&std::path::Path>) -> IdProvider {
        let admin = format!("admin-{}-{}", std::process::id(), rand::random::<u64>());
        let file = data_file.map(|f| f.display().to_string());
        let mut env = vec![("INITIAL_ACCESS_TOKEN", iat), ("ADMIN_TOKEN", &admin)];
        env.extend(file.as_deref().map(|f| ("DATA_FILE", f)));
        IdProvider::spawn(&env).unwrap_or_else(|e| panic!("{e}"))
    }

    /// Starts it issuing tokens for these resource URIs too (`RESOURCES`,
    /// RFC 8707), besides the gateway's audience.
    pub fn start_for_resources(resources: &[&str]) -> IdProvider {
        let iat = format!("iat-{}-{}", std::process::id(), rand::random::<u64>());
        let admin = format!("admin-{}-{}", std::process::id(), rand::random::<u64>());
        let list = Value::from(resources.to_vec()).to_string();
        IdProvider::spawn(&[
            ("INITIAL_ACCESS_TOKEN", &iat),
            ("ADMIN_TOKEN", &admin),
            ("RESOURCES", &list),
        ])
        .unwrap_or_else(|e| panic!("{e}"))
    }

    /// Starts it with approvers who sign in with these names and passwords
    /// (plain: `ALLOW_PLAIN_PASSWORDS=1`, for tests) for these first-party
    /// clients.
    pub fn start_with_approvers(approvers: &[(&str, &str)], clients: &[FirstParty]) -> IdProvider {
        IdProvider::start_with_approvers_and(approvers, clients, &[])
    }

    /// [`IdProvider::start_with_approvers`] with more variables (e.g.
    /// `CIMD_ALLOW_PRIVATE`).
    pub fn start_with_approvers_and(
        approvers: &[(&str, &str)],
        clients: &[FirstParty],
        more: &[(&str, &str)],
    ) -> IdProvider {
        let iat = format!("iat-{}-{}", std::process::id(), rand::random::<u64>());
        let admin = format!("admin-{}-{}", std::process::id(), rand::random::<u64>());
        let file = std::env::temp_dir().join(format!(
            "agentplane-approvers-{}-{:016x}.json",
            std::process::id(),
            rand::random::<u64>()
        ));
        let doc: serde_json::Map<String, Value> = approvers
            .iter()
            .map(|(name, pw)| (name.to_string(), json!({ "password": pw })))
            .collect();
        std::fs::write(&file, Value::Object(doc).to_string()).unwrap();
        let list =
            Value::from(clients.iter().map(FirstParty::metadata).collect::<Vec<_>>()).to_string();
        let path = file.display().to_string();
        let mut env = vec![
            ("INITIAL_ACCESS_TOKEN", iat.as_str()),
            ("ADMIN_TOKEN", &admin),
            ("APPROVERS_FILE", &path),
            ("ALLOW_PLAIN_PASSWORDS", "1"),
            ("FIRST_PARTY_CLIENTS", &list),
        ];
        env.extend_from_slice(more);
        let started = IdProvider::spawn(&env);
        // Read once at start: the passwords need not stay on disk.
        let _ = std::fs::remove_file(&file);
        started.unwrap_or_else(|e| panic!("{e}"))
    }

    /// Starts it with exactly these variables besides `PORT` and
    /// `AUDIENCE`; `Err` with what it printed when it does not start.
    pub fn spawn(env: &[(&str, &str)]) -> Result<IdProvider, String> {
        // A provider that stays silent (alive, no `listening` line within
        // the bound) was seen once in a full CI run and never reproduced:
        // it is started again, once, and what it was doing is printed.
        let mut silent = Vec::new();
        for _ in 0..2 {
            match IdProvider::spawn_once(env) {
                Ok(p) => return Ok(p),
                Err(Start::Exited(e)) => return Err(e),
                Err(Start::Silent(what)) => {
                    eprintln!(
                        "the identity provider said nothing in time, starting it again: {what}"
                    );
                    silent.push(what);
                }
            }
        }
        Err(format!(
            "the identity provider said nothing within {:?}, twice: {silent:?}",
            crate::START_WITHIN
        ))
    }

    fn spawn_once(env: &[(&str, &str)]) -> Result<IdProvider, Start> {
        let var = |k: &str| {
            env.iter()
                .find(|(n, _)| *n == k)
                .map(|(_, v)| v.to_string())
                .unwrap_or_default()
        };
        let dir = idp_dir();
        let log = std::env::temp_dir().join(format!(
            "agentplane-idp-{}-{:016x}.log",
            std::process::id(),
            rand::random::<u64>()
        ));
        let stderr = std::fs::File::create(&log).unwrap();
        let mut child = Command::new("node")
            .arg(dir.join("server.mjs"))
            .current_dir(&dir)
            // Only what the test says: nothing inherited from the runner.
            .env_remove("INITIAL_ACCESS_TOKEN")
            .env_remove("ADMIN_TOKEN")
            .env_remove("BIND_ADDRESS")
            .env_remove("DATA_FILE")
            .env_remove("ISSUER")
            .env_remove("RESOURCES")
            .env_remove("APPROVERS_FILE")
            .env_remove("ALLOW_PLAIN_PASSWORDS")
            .env_remove("FIRST_PARTY_CLIENTS")
            .env_remove("EXCHANGE_CLIENTS")
            .env_remove("CIMD_ALLOW_PRIVATE")
            .env_remove("TOKEN_TTL")
            .env("PORT", "0")
            .env("AUDIENCE", crate::AUDIENCE)
            .envs(env.iter().copied())
            .stdout(Stdio::piped())
            .stderr(Stdio::from(stderr))
            .spawn()
            .unwrap_or_else(|e| panic!("node {}: {e}", dir.display()));
        let out = child.stdout.take().expect("stdout");
        // EOF (an empty line) when it exits instead of listening, or says
        // nothing within the bound.
        let (line, rest) = crate::first_line(out, crate::START_WITHIN);
        // Drained to the end: a closed pipe would kill it (EPIPE) at its
        // next notice.
        if let Some(rest) = rest {
            std::thread::spawn(move || for _ in std::io::BufRead::lines(rest) {});
        }
        let Some(port) = line
            .strip_prefix("listening ")
            .and_then(|p| p.trim().parse().ok())
        else {
            let alive = matches!(child.try_wait(), Ok(None));
            let what = alive.then(|| process_state(child.id()));
            let _ = child.kill();
            let status = child.wait().map(|s| s.to_string()).unwrap_or_default();
            let printed = std::fs::read_to_string(&log).unwrap_or_default();
            let _ = std::fs::remove_file(&log);
            let tail: String = printed
                .lines()
                .filter(|l| !l.contains("WARNING"))
                .collect::<Vec<_>>()
                .join("\n");
            return Err(match what {
                Some(w) => Start::Silent(format!("{w}; stderr: {tail:?}")),
                None => Start::Exited(format!(
                    "the identity provider did not start ({status}): {line:?} {tail}"
                )),
            });
        };
        let _ = std::fs::remove_file(&log);
        Ok(IdProvider {
            child,
            port,
            initial_access_token: var("INITIAL_ACCESS_TOKEN"),
            admin_token: var("ADMIN_TOKEN"),
        })
    }

    /// Its issuer (the `iss` of its tokens).
    pub fn issuer(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// Its token endpoint.
    pub fn token_url(&self) -> String {
        format!("{}/token", self.issuer())
    }

    /// The authorization endpoint's URL for an approver's sign-in: code
    /// flow, scope `openid`, with `state`, `nonce` and the PKCE challenge
    /// (none when `pkce` is None), as the approval service builds it.
    pub fn authorize_url(
        &self,
        client: &FirstParty,
        state: &str,
        nonce: &str,
        pkce: Option<&Pkce>,
    ) -> String {
        let mut url = format!(
            "{}/auth?response_type=code&scope=openid&client_id={}&redirect_uri={}&state={}&nonce={}",
            self.issuer(),
            form_encode(&client.client_id),
            form_encode(&client.redirect_uri),
            form_encode(state),
            form_encode(nonce)
        );
        if let Some(p) = pkce {
            url.push_str(&format!(
                "&code_challenge={}&code_challenge_method=S256",
                p.challenge
            ));
        }
        url
    }

    /// Exchanges an authorization code at the token endpoint as the
    /// first-party client (`client_secret_basic`): the raw answer.
    pub fn exchange_code(&self, client: &FirstParty, code: &str, verifier: &str) -> Response {
        let basic = base64::engine::general_purpose::STANDARD
            .encode(format!("{}:{}", client.client_id, client.client_secret));
        let form = format!(
            "grant_type=authorization_code&code={}&redirect_uri={}&code_verifier={}",
            form_encode(code),
            form_encode(&client.redirect_uri),
            form_encode(verifier)
        );
        http(
            self.port,
            "POST",
            "/token",
            &[
                ("authorization", &format!("Basic {basic}")),
                ("content-type", "application/x-www-form-urlencoded"),
            ],
            &form,
        )
    }

    /// The published JWKS.
    pub fn jwks(&self) -> String {
        http(self.port, "GET", "/jwks", &[], "").body
    }

    /// Registers an agent (RFC 7591) with its attributes.
    pub fn register(
        &self,
        name: &str,
        agent_type: &str,
        team: &str,
        env: &str,
        perms: &[&str],
    ) -> Registered {
        let body = agent_metadata(name, agent_type, team, env, perms);
        let r = self.post_registration(&self.initial_access_token, &body);
        assert_eq!(r.status, 201, "registration: {}", r.body);
        let v = r.json();
        let s = |k: &str| v[k].as_str().unwrap_or_default().to_string();
        Registered {
            client_id: s("client_id"),
            client_secret: s("client_secret"),
        }
    }

    /// `POST /reg` (RFC 7591) with `bearer` as the initial access token:
    /// the provider's raw answer.
    pub fn post_registration(&self, bearer: &str, metadata: &Value) -> Response {
        http(
            self.port,
            "POST",
            "/reg",
            &[
                ("authorization", &format!("Bearer {bearer}")),
                ("content-type", "application/json"),
            ],
            &metadata.to_string(),
        )
    }

    /// A request with `authorization` set as given (a whole header value:
    /// `Bearer ..`, `Basic ..`), a JSON body when `body` is not null.
    pub fn request(&self, method: &str, path: &str, authorization: &str, body: &Value) -> Response {
        let mut headers = vec![("authorization", authorization)];
        let text = if body.is_null() {
            String::new()
        } else {
            headers.push(("content-type", "application/json"));
            body.to_string()
        };
        http(self.port, method, path, &headers, &text)
    }

    /// Deregisters an agent: `DELETE /admin/clients/<id>` with the
    /// administrator's token.
    pub fn deregister(&self, agent: &Registered) -> Response {
        let auth = format!("Bearer {}", self.admin_token);
        let path = format!("/admin/clients/{}", agent.client_id);
        self.request("DELETE", &path, &auth, &Value::Null)
    }

    /// A client-credentials token for the agent, for the gateway's
    /// audience (the raw answer).
    pub fn token_response(&self, agent: &Registered, scope: &str) -> Response {
        self.token_response_for(agent, scope, Some(crate::AUDIENCE))
    }

    /// A client-credentials token for the agent with an RFC 8707
    /// `resource` (none: the provider's default), the raw answer.
    pub fn token_response_for(
        &self,
        agent: &Registered,
        scope: &str,
        resource: Option<&str>,
    ) -> Response {
        let basic = base64::engine::general_purpose::STANDARD
            .encode(format!("{}:{}", agent.client_id, agent.client_secret));
        let mut form = format!("grant_type=client_credentials&scope={}", form_encode(scope));
        if let Some(r) = resource {
            form.push_str(&format!("&resource={}", form_encode(r)));
        }
        http(
            self.port,
            "POST",
            "/token",
            &[
                ("authorization", &format!("Basic {basic}")),
                ("content-type", "application/x-www-form-urlencoded"),
            ],
            &form,
        )
    }

    /// The claims of a fresh access token for the agent.
    pub fn token_claims(&self, agent: &Registered, scope: &str) -> Value {
        let r = self.token_response(agent, scope);
        assert_eq!(r.status, 200, "token: {}", r.body);
        let token = r.json()["access_token"]
            .as_str()
            .unwrap_or_default()
            .to_string();
        let payload = token.split('.').nth(1).unwrap_or_default();
        let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
            .decode(payload)
            .unwrap_or_default();
        serde_json::from_slice(&bytes).unwrap_or_else(|e| panic!("token payload: {e}"))
    }

    /// A key rotation step: `publish` the next key, or `sign` with it.
    /// Returns the signing key id.
    pub fn keys(&self, step: &str) -> String {
        let auth = format!("Bearer {}", self.admin_token);
        let r = self.request("POST", &format!("/admin/keys/{step}"), &auth, &Value::Null);
        assert_eq!(r.status, 200, "{}", r.body);
        r.json()["signing"].as_str().unwrap_or_default().to_string()
    }
}

/// `application/x-www-form-urlencoded`: every byte but the unreserved ones
/// percent-encoded.
pub fn form_encode(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'.' | b'_' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// An agent's registration metadata (RFC 7591 body): a confidential
/// client-credentials client with the agent's attributes.
pub fn agent_metadata(
    name: &str,
    agent_type: &str,
    team: &str,
    env: &str,
    perms: &[&str],
) -> Value {
    json!({
        "client_name": name,
        "grant_types": ["client_credentials"],
        "response_types": [],
        "token_endpoint_auth_method": "client_secret_basic",
        "agent_type": agent_type, "team": team, "environment": env,
        "permissions": perms,
    })
}

/// Why a provider did not start.
enum Start {
    /// It exited (a bad variable, say): what it said.
    Exited(String),
    /// It ran on without saying it listens: what it was doing.
    Silent(String),
}

/// A process's scheduler state, CPU time and kernel wait channel, from
/// /proc: whether a silent child spins, sleeps or waits in the kernel.
fn process_state(pid: u32) -> String {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    // Fields after the command's closing parenthesis: state is the first,
    // utime and stime the 12th and 13th.
    let after: Vec<&str> = stat
        .rsplit_once(')')
        .map(|(_, r)| r.split_whitespace().collect())
        .unwrap_or_default();
    let field = |i: usize| after.get(i).copied().unwrap_or("?");
    let wchan = std::fs::read_to_string(format!("/proc/{pid}/wchan")).unwrap_or_default();
    let threads = std::fs::read_dir(format!("/proc/{pid}/task"))
        .map(|d| d.count())
        .unwrap_or(0);
    format!(
        "pid {pid} state {} utime {} stime {} ticks, {threads} threads, wchan {wchan:?}",
        field(0),
        field(11),
        field(12)
    )
}

impl Drop for IdProvider {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Points a rendered Envoy config at the provider: its issuer, and
/// jwt_authn fetching its keys itself (remote JWKS through a cluster `idp`,
/// a 1 s cache, fetched ahead of time), as a deployment would: no key is
/// copied into the config.
pub fn use_provider(r: &mut crate::RenderedEnvoy, idp: &IdProvider) {
    r.edit(|v| {
        let agents = yaml::jwt_provider(yaml::listener(v, yaml::AGENT_LISTENER));
        agents["issuer"] = json!(idp.issuer());
        let jwks = agents.as_object_mut().and_then(|p| p.remove("local_jwks"));
        assert!(jwks.is_some(), "local_jwks in envoy.yaml");
        agents["remote_jwks"] = json!({
            "http_uri": {"uri": format!("{}/jwks", idp.issuer()), "cluster": "idp", "timeout": "2s"},
            "cache_duration": "1s",
            "async_fetch": {},
        });
    });
    r.add_cluster("idp", idp.port);
}

/// An OpenBao JWT auth mount (`mount`) trusting the provider's keys (its
/// JWKS URL, its issuer), with role `agent` (`sub` as the alias) and a
/// policy letting each agent read only `secret/data/mcp/agents/<its own
/// client id>/*`.
pub fn bao_trusts(bao: &crate::Bao, idp: &IdProvider, mount: &str) {
    bao.api(
        "POST",
        &format!("/v1/sys/auth/{mount}"),
        json!({"type": "jwt"}),
    );
    bao.api(
        "POST",
        &format!("/v1/auth/{mount}/config"),
        json!({"jwks_url": format!("{}/jwks", idp.issuer()), "bound_issuer": idp.issuer()}),
    );
    let mounts = bao.api("GET", "/v1/sys/auth", Value::Null);
    let key = format!("{mount}/");
    let accessor = mounts["data"][&key]["accessor"]
        .as_str()
        .or_else(|| mounts[&key]["accessor"].as_str())
        .expect("mount accessor")
        .to_string();
    let policy = format!(
        "path \"secret/data/mcp/agents/{{{{identity.entity.aliases.{accessor}.name}}}}/*\" {{ capabilities = [\"read\"] }}\n"
    );
    bao.api(
        "PUT",
        &format!("/v1/sys/policies/acl/{mount}-agent-kv"),
        json!({"policy": policy}),
    );
    bao.api(
        "POST",
        &format!("/v1/auth/{mount}/role/agent"),
        json!({"role_type": "jwt", "bound_audiences": [crate::AUDIENCE], "user_claim": "sub",
               "token_policies": [format!("{mount}-agent-kv")], "token_ttl": "1h"}),
    );
}
