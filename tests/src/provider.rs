//! The real identity provider (`idp/server.mjs`: oidc-provider under
//! Node), started on loopback for a test and stopped when dropped.

use crate::{http, repo_root, Response};
use base64::Engine;
use serde_json::{json, Value};
use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};

/// A running provider.
pub struct IdProvider {
    child: Child,
    /// Its port on 127.0.0.1.
    pub port: u16,
    /// The initial access token registration needs.
    pub initial_access_token: String,
}

/// A registered agent: what `register` prints once.
#[derive(Debug, Clone)]
pub struct Registered {
    pub client_id: String,
    pub client_secret: String,
    /// RFC 7592: the management URI and its token (deregistration).
    pub registration_client_uri: String,
    pub registration_access_token: String,
}

/// Where `build.sh` installs the provider's packages.
pub fn idp_dir() -> PathBuf {
    std::env::var("AGENTPLANE_IDP_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|_| repo_root().join("idp"))
}

impl IdProvider {
    /// Starts `idp/server.mjs` on a port it picks itself.
    pub fn start() -> IdProvider {
        let iat = format!("iat-{}-{}", std::process::id(), rand::random::<u64>());
        IdProvider::start_with(&iat, None)
    }

    /// Starts it with a given initial access token, keeping registrations
    /// in `data_file` when given (a restart then keeps them).
    pub fn start_with(iat: &str, data_file: Option<&std::path::Path>) -> IdProvider {
        let iat = iat.to_string();
        let dir = idp_dir();
        let mut child = Command::new("node")
            .arg(dir.join("server.mjs"))
            .current_dir(&dir)
            .env("PORT", "0")
            .env("INITIAL_ACCESS_TOKEN", &iat)
            .env("AUDIENCE", crate::AUDIENCE)
            .envs(data_file.map(|f| ("DATA_FILE", f.as_os_str())))
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| panic!("node {}: {e}", dir.display()));
        let out = child.stdout.take().expect("stdout");
        let mut line = String::new();
        BufReader::new(out)
            .read_line(&mut line)
            .expect("provider output");
        let port = line
            .strip_prefix("listening ")
            .and_then(|p| p.trim().parse().ok())
            .unwrap_or_else(|| {
                let _ = child.kill();
                panic!("the identity provider did not start: {line:?}")
            });
        IdProvider {
            child,
            port,
            initial_access_token: iat,
        }
    }

    /// Its issuer (the `iss` of its tokens).
    pub fn issuer(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// Its token endpoint.
    pub fn token_url(&self) -> String {
        format!("{}/token", self.issuer())
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
        let body = json!({
            "client_name": name,
            "grant_types": ["client_credentials"],
            "response_types": [],
            "token_endpoint_auth_method": "client_secret_basic",
            "agent_type": agent_type, "team": team, "environment": env,
            "permissions": perms,
        });
        let auth = format!("Bearer {}", self.initial_access_token);
        let r = http(
            self.port,
            "POST",
            "/reg",
            &[
                ("authorization", &auth),
                ("content-type", "application/json"),
            ],
            &body.to_string(),
        );
        assert_eq!(r.status, 201, "registration: {}", r.body);
        let v: Value = serde_json::from_str(&r.body).unwrap();
        let s = |k: &str| v[k].as_str().unwrap_or_default().to_string();
        Registered {
            client_id: s("client_id"),
            client_secret: s("client_secret"),
            registration_client_uri: s("registration_client_uri"),
            registration_access_token: s("registration_access_token"),
        }
    }

    /// Deregisters an agent (RFC 7592 DELETE).
    pub fn deregister(&self, agent: &Registered) -> Response {
        let path = agent
            .registration_client_uri
            .split_once("/reg")
            .map(|(_, rest)| format!("/reg{rest}"))
            .unwrap_or_default();
        let auth = format!("Bearer {}", agent.registration_access_token);
        http(self.port, "DELETE", &path, &[("authorization", &auth)], "")
    }

    /// A client-credentials token for the agent (the raw answer).
    pub fn token_response(&self, agent: &Registered, scope: &str) -> Response {
        let basic = base64::engine::general_purpose::STANDARD
            .encode(format!("{}:{}", agent.client_id, agent.client_secret));
        let form = format!(
            "grant_type=client_credentials&resource={}&scope={}",
            crate::AUDIENCE.replace(':', "%3A").replace('/', "%2F"),
            scope.replace(' ', "+").replace(':', "%3A")
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

    /// A key rotation step: `publish` the next key, or `sign` with it.
    /// Returns the signing key id.
    pub fn keys(&self, step: &str) -> String {
        let auth = format!("Bearer {}", self.initial_access_token);
        let r = http(
            self.port,
            "POST",
            &format!("/admin/keys/{step}"),
            &[("authorization", &auth)],
            "",
        );
        assert_eq!(r.status, 200, "{}", r.body);
        let v: Value = serde_json::from_str(&r.body).unwrap();
        v["signing"].as_str().unwrap_or_default().to_string()
    }
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
    let y = &mut r.yaml;
    *y = y.replace(crate::ISSUER, &idp.issuer());
    let a = y
        .find("                  local_jwks:")
        .expect("local_jwks in envoy.yaml");
    let b = a + y[a..]
        .find("                  from_headers:")
        .expect("from_headers");
    y.replace_range(
        a..b,
        &format!(
            "                  remote_jwks:\n                    http_uri: {{ uri: \"{}/jwks\", cluster: idp, timeout: 2s }}\n                    cache_duration: 1s\n                    async_fetch: {{}}\n",
            idp.issuer()
        ),
    );
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
