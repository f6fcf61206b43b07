//! Linked accounts' real parts: a third-party SaaS's authorization server
//! (a second oidc-provider, `idp/saas.mjs`: code flow with PKCE, refresh
//! tokens rotated on use, revocation, userinfo at `/me`), and a static
//! document server (the callers' issuer's JWKS, for the link broker).

use crate::{first_line, http, Response, START_WITHIN};
use base64::Engine;
use std::io::{Read, Write};
use std::net::TcpListener;
use std::process::{Child, Command, Stdio};

/// The SaaS's authorization server, killed on drop.
pub struct Saas {
    child: Child,
    log: std::path::PathBuf,
    pub port: u16,
    pub client_id: String,
    pub client_secret: String,
}

impl Saas {
    /// Starts it with one confidential client (the broker) sending people
    /// back to `redirect_uri`, access tokens living `ttl_s`.
    pub fn start(client_id: &str, redirect_uri: &str, ttl_s: u64) -> Saas {
        // Started again, once, when it does not come up (as the identity
        // provider once stayed silent in a full run: `IdProvider::spawn`).
        match Saas::try_start(client_id, redirect_uri, ttl_s) {
            Ok(s) => s,
            Err(first) => {
                eprintln!("the SaaS did not come up, starting it again: {first}");
                Saas::try_start(client_id, redirect_uri, ttl_s)
                    .unwrap_or_else(|e| panic!("the SaaS did not start: {first}; then {e}"))
            }
        }
    }

    fn try_start(client_id: &str, redirect_uri: &str, ttl_s: u64) -> Result<Saas, String> {
        let secret = format!("saas-secret-{:032x}", rand::random::<u128>());
        let dir = crate::repo_root().join("idp");
        let log = std::env::temp_dir().join(format!(
            "agentplane-saas-{}-{:016x}.log",
            std::process::id(),
            rand::random::<u64>()
        ));
        let err = std::fs::File::create(&log).unwrap();
        let mut child = Command::new("node")
            .arg(dir.join("saas.mjs"))
            .current_dir(&dir)
            .env("PORT", "0")
            .env("CLIENT_ID", client_id)
            .env("CLIENT_SECRET", &secret)
            .env("REDIRECT_URI", redirect_uri)
            .env("TOKEN_TTL", ttl_s.to_string())
            .stdout(Stdio::piped())
            .stderr(Stdio::from(err))
            .spawn()
            .unwrap_or_else(|e| panic!("node {}: {e}", dir.display()));
        let out = child.stdout.take().expect("stdout");
        let (line, rest) = first_line(out, START_WITHIN);
        // Drained to the end: oidc-provider writes notices to stdout, and a
        // closed pipe would kill it (EPIPE) mid-test.
        if let Some(rest) = rest {
            std::thread::spawn(move || for _ in std::io::BufRead::lines(rest) {});
        }
        let Some(port) = line
            .strip_prefix("listening ")
            .and_then(|p| p.trim().parse().ok())
        else {
            let _ = child.kill();
            let _ = child.wait();
            let printed = std::fs::read_to_string(&log).unwrap_or_default();
            let _ = std::fs::remove_file(&log);
            return Err(format!("{line:?} {printed}"));
        };
        Ok(Saas {
            child,
            log,
            port,
            client_id: client_id.into(),
            client_secret: secret,
        })
    }

    /// What it wrote on stderr (oidc-provider's warnings, a crash).
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Its issuer.
    pub fn issuer(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// Its userinfo answer for an access token (who the token is for).
    pub fn me(&self, access_token: &str) -> Response {
        http(
            self.port,
            "GET",
            "/me",
            &[("authorization", &format!("Bearer {access_token}"))],
            "",
        )
    }

    /// Revokes a refresh token (RFC 7009) as the broker's client.
    pub fn revoke(&self, refresh_token: &str) -> Response {
        let basic = base64::engine::general_purpose::STANDARD
            .encode(format!("{}:{}", self.client_id, self.client_secret));
        http(
            self.port,
            "POST",
            "/token/revocation",
            &[
                ("authorization", &format!("Basic {basic}")),
                ("content-type", "application/x-www-form-urlencoded"),
            ],
            &format!(
                "token={}&token_type_hint=refresh_token",
                crate::provider::form_encode(refresh_token)
            ),
        )
    }
}

impl Drop for Saas {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        if std::thread::panicking() {
            eprintln!("SaaS stderr:\n{}", self.log());
        }
        let _ = std::fs::remove_file(&self.log);
    }
}

/// Serves one document (as JSON) at every path, on loopback, for the life
/// of the test process.
pub fn serve_document(body: String) -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(mut stream) = stream else { continue };
            let body = body.clone();
            std::thread::spawn(move || {
                let _ = stream.set_read_timeout(Some(std::time::Duration::from_secs(5)));
                let mut buf = [0u8; 4096];
                let _ = stream.read(&mut buf);
                let out = format!(
                    "HTTP/1.1 200 OK\r\nconnection: close\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n{body}",
                    body.len()
                );
                let _ = stream.write_all(out.as_bytes());
            });
        }
    });
    port
}
