//! The broker's OAuth client at one third-party service (a GitHub- or
//! Slack-style authorization server): its discovery document (RFC 8414,
//! or OIDC discovery), the authorization request (code flow, PKCE S256,
//! `state`), the code's redemption and the refresh grant, both with
//! client_secret_basic. Errors say what failed, never a code, a token or
//! the secret.

use base64::engine::general_purpose::STANDARD;
use base64::Engine as _;
use serde::Deserialize;
use serde_json::Value;
use std::sync::Arc;
use tokio::sync::Mutex;

/// The service's endpoints.
#[derive(Debug, Clone, Deserialize)]
struct Discovery {
    issuer: String,
    authorization_endpoint: String,
    token_endpoint: String,
    /// RFC 9207 §3: the service puts `iss` in every authorization answer.
    #[serde(default)]
    authorization_response_iss_parameter_supported: bool,
}

/// What a token endpoint handed out. Not `Debug`: it holds tokens.
pub struct Tokens {
    pub access_token: String,
    /// A rotated or first refresh token, when the service sent one.
    pub refresh_token: Option<String>,
    /// Seconds the access token lives (an hour when the service is silent).
    pub expires_in: u64,
}

/// Why a refresh failed.
#[derive(Debug, PartialEq, Eq)]
pub enum RefreshError {
    /// The service no longer honours the refresh token (`invalid_grant`:
    /// revoked, expired, the person removed the app): the link is dead.
    Revoked,
    /// Anything else: unreachable, slow, 5xx, garbage. The link stands.
    Unavailable(String),
}

/// One third-party service, as configured.
pub struct Upstream {
    pub name: String,
    pub issuer: String,
    client_id: String,
    client_secret: String,
    pub scopes: Vec<String>,
    http: reqwest::Client,
    discovery: Mutex<Option<Arc<Discovery>>>,
}

/// The longest an access token is handed out for, whatever the service says.
const MAX_LIFE_S: u64 = 86_400;

/// The longest token endpoint answer read.
const MAX_ANSWER: usize = 64 * 1024;

/// The longest access token passed on (the filter takes 8 KiB at most).
const MAX_TOKEN: usize = 8 * 1024;

impl Upstream {
    pub fn new(
        name: String,
        issuer: String,
        client_id: String,
        client_secret: String,
        scopes: Vec<String>,
    ) -> Result<Upstream, String> {
        let http = crate::oidc::http_client(10)?;
        Ok(Upstream {
            name,
            issuer,
            client_id,
            client_secret,
            scopes,
            http,
            discovery: Mutex::new(None),
        })
    }

    /// The discovery document, fetched once (RFC 8414 first, then OIDC's).
    async fn discovery(&self) -> Result<Arc<Discovery>, String> {
        let mut slot = self.discovery.lock().await;
        if let Some(d) = slot.as_ref() {
            return Ok(d.clone());
        }
        let base = self.issuer.trim_end_matches('/');
        let mut last = String::new();
        for doc in [
            "/.well-known/oauth-authorization-server",
            "/.well-known/openid-configuration",
        ] {
            let url = format!("{base}{doc}");
            let got = match self.http.get(&url).send().await {
                Ok(r) if r.status().is_success() => r.json::<Discovery>().await.ok(),
                Ok(r) => {
                    last = format!("GET {url}: status {}", r.status());
                    continue;
                }
                Err(e) => {
                    last = format!("GET {url}: {}", causes(&e.without_url()));
                    continue;
                }
            };
            let Some(d) = got else {
                last = format!("GET {url}: not a metadata document");
                continue;
            };
            // RFC 8414 §3.3: the document names the issuer it is for.
            if d.issuer != self.issuer {
                return Err(format!(
                    "{}: metadata names issuer {:?}",
                    self.name, d.issuer
                ));
            }
            let d = Arc::new(d);
            *slot = Some(d.clone());
            return Ok(d);
        }
        Err(format!("{}: {last}", self.name))
    }

    /// RFC 9207: whether an authorization answer's `iss` is this
    /// service's. One without is taken only from a service that does not
    /// promise to send it: from one that does, it is an answer of another
    /// server (a mix-up attack) with the parameter stripped.
    pub async fn iss_ok(&self, iss: Option<&str>) -> Result<bool, String> {
        match iss {
            Some(i) => Ok(i == self.issuer),
            None => Ok(!self
                .discovery()
                .await?
                .authorization_response_iss_parameter_supported),
        }
    }

    /// Where to send the person's browser.
    pub async fn authorize_url(
        &self,
        state: &str,
        verifier: &str,
        redirect_uri: &str,
    ) -> Result<String, String> {
        let d = self.discovery().await?;
        let mut u = url::Url::parse(&d.authorization_endpoint)
            .map_err(|e| format!("{}: authorization_endpoint: {e}", self.name))?;
        u.query_pairs_mut()
            .append_pair("response_type", "code")
            .append_pair("client_id", &self.client_id)
            .append_pair("redirect_uri", redirect_uri)
            .append_pair("scope", &self.scopes.join(" "))
            .append_pair("state", state)
            .append_pair("code_challenge", &crate::oidc::challenge(verifier))
            .append_pair("code_challenge_method", "S256")
            // The person sees what the broker asks for, every time.
            .append_pair("prompt", "consent");
        Ok(u.into())
    }

    fn basic(&self) -> String {
        // RFC 6749 §2.3.1: id and secret are form-encoded before Basic.
        let enc = |s: &str| url::form_urlencoded::byte_serialize(s.as_bytes()).collect::<String>();
        let pair = format!("{}:{}", enc(&self.client_id), enc(&self.client_secret));
        format!("Basic {}", STANDARD.encode(pair))
    }

    /// POSTs `form` to the token endpoint: the answer's status and JSON.
    async fn token(&self, form: &[(&str, &str)]) -> Result<(u16, Value), String> {
        let d = self.discovery().await?;
        let r = self
            .http
            .post(&d.token_endpoint)
            .header("authorization", self.basic())
            .form(form)
            .send()
            .await
            .map_err(|e| {
                format!(
                    "{}: token endpoint: {}",
                    self.name,
                    causes(&e.without_url())
                )
            })?;
        let status = r.status().as_u16();
        // Read up to the bound, not all then measured: an endless answer
        // would fill memory for the whole timeout.
        let mut r = r;
        let mut body = Vec::new();
        loop {
            let chunk = r.chunk().await.map_err(|e| {
                format!(
                    "{}: token endpoint: {}",
                    self.name,
                    causes(&e.without_url())
                )
            })?;
            let Some(c) = chunk else { break };
            if body.len().saturating_add(c.len()) > MAX_ANSWER {
                return Err(format!("{}: token endpoint answer too large", self.name));
            }
            body.extend_from_slice(&c);
        }
        Ok((status, serde_json::from_slice(&body).unwrap_or(Value::Null)))
    }

    /// Redeems an authorization code.
    pub async fn redeem(
        &self,
        code: &str,
        verifier: &str,
        redirect_uri: &str,
    ) -> Result<Tokens, String> {
        let (status, v) = self
            .token(&[
                ("grant_type", "authorization_code"),
                ("code", code),
                ("redirect_uri", redirect_uri),
                ("code_verifier", verifier),
            ])
            .await?;
        if status != 200 {
            return Err(format!(
                "{}: code refused ({status} {})",
                self.name,
                code_of(&v)
            ));
        }
        tokens(&v).ok_or_else(|| format!("{}: the token answer is unusable", self.name))
    }

    /// A fresh access token for a refresh token.
    pub async fn refresh(&self, refresh_token: &str) -> Result<Tokens, RefreshError> {
        let (status, v) = self
            .token(&[
                ("grant_type", "refresh_token"),
                ("refresh_token", refresh_token),
            ])
            .await
            .map_err(RefreshError::Unavailable)?;
        if status == 400 && code_of(&v) == "invalid_grant" {
            return Err(RefreshError::Revoked);
        }
        if status != 200 {
            return Err(RefreshError::Unavailable(format!(
                "{}: refresh refused ({status} {})",
                self.name,
                code_of(&v)
            )));
        }
        tokens(&v).ok_or_else(|| {
            RefreshError::Unavailable(format!("{}: the refresh answer is unusable", self.name))
        })
    }
}

/// An error and its causes, one line. Callers pass it `without_url()`:
/// the URL (it may carry a query) is in reqwest's own text.
fn causes(e: &reqwest::Error) -> String {
    let mut out = e.to_string();
    let mut next = std::error::Error::source(e);
    while let Some(c) = next {
        out.push_str(&format!(": {c}"));
        next = c.source();
    }
    out
}

/// An RFC 6749 §5.2 error code, if it is a short token (never a
/// description: those may echo anything).
fn code_of(v: &Value) -> &str {
    v.get("error")
        .and_then(Value::as_str)
        .filter(|c| c.len() <= 64 && c.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_'))
        .unwrap_or("no error code")
}

/// A bearer access token answer, read strictly.
fn tokens(v: &Value) -> Option<Tokens> {
    let usable =
        |t: &str| !t.is_empty() && t.len() <= MAX_TOKEN && t.bytes().all(|b| b.is_ascii_graphic());
    let access_token = v.get("access_token")?.as_str().filter(|t| usable(t))?;
    let kind = v.get("token_type").and_then(Value::as_str).unwrap_or("");
    if !kind.eq_ignore_ascii_case("bearer") {
        return None;
    }
    let refresh_token = v
        .get("refresh_token")
        .and_then(Value::as_str)
        .filter(|t| usable(t))
        .map(str::to_string);
    Some(Tokens {
        access_token: access_token.to_string(),
        refresh_token,
        // A service's word for how long its token lives is believed up to a
        // day: the broker hands the token out until then, a revocation at
        // the service unseen.
        expires_in: v
            .get("expires_in")
            .and_then(Value::as_u64)
            .unwrap_or(3600)
            .min(MAX_LIFE_S),
    })
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::panic)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn only_a_bearer_token_answer_is_usable() {
        let t = tokens(
            &json!({"access_token": "a", "token_type": "Bearer", "expires_in": 60,
                               "refresh_token": "r2"}),
        )
        .unwrap();
        assert_eq!((t.access_token.as_str(), t.expires_in), ("a", 60));
        assert_eq!(t.refresh_token.as_deref(), Some("r2"));
        for bad in [
            json!({"access_token": "a", "token_type": "mac"}),
            json!({"access_token": "", "token_type": "bearer"}),
            json!({"access_token": "a b", "token_type": "bearer"}),
            json!({"access_token": 7, "token_type": "bearer"}),
            json!({"token_type": "bearer"}),
        ] {
            assert!(tokens(&bad).is_none(), "{bad}");
        }
    }

    /// A service whose metadata is `iss_supported` and whose token
    /// endpoint is `token_endpoint`, without fetching it.
    async fn known(iss_supported: bool, token_endpoint: &str) -> Upstream {
        let up = Upstream::new(
            "saas".into(),
            "https://saas.test".into(),
            "broker".into(),
            "CANARY-CLIENT-SECRET".into(),
            vec![],
        )
        .unwrap();
        *up.discovery.lock().await = Some(Arc::new(Discovery {
            issuer: "https://saas.test".into(),
            authorization_endpoint: "https://saas.test/authorize".into(),
            token_endpoint: token_endpoint.into(),
            authorization_response_iss_parameter_supported: iss_supported,
        }));
        up
    }

    #[tokio::test]
    async fn a_mix_up_answer_with_iss_stripped_is_refused_when_the_service_promises_iss() {
        let promises = known(true, "https://saas.test/token").await;
        assert!(promises.iss_ok(Some("https://saas.test")).await.unwrap());
        assert!(!promises.iss_ok(None).await.unwrap());
        assert!(!promises.iss_ok(Some("https://evil.test")).await.unwrap());
        let silent = known(false, "https://saas.test/token").await;
        assert!(silent.iss_ok(None).await.unwrap());
        assert!(!silent.iss_ok(Some("https://saas.test/")).await.unwrap());
    }

    #[tokio::test]
    async fn a_token_endpoint_url_with_a_secret_in_its_query_stays_out_of_errors() {
        // Nothing listens on port 9: the request fails, and reqwest's text
        // names the URL.
        let up = known(false, "http://127.0.0.1:9/token?key=CANARY-IN-URL").await;
        let Err(RefreshError::Unavailable(e)) = up.refresh("CANARY-REFRESH").await else {
            panic!("refreshed against nothing");
        };
        assert!(e.contains("token endpoint"), "{e}");
        assert!(!e.contains("CANARY"), "{e}");
        let Err(e) = up.redeem("CANARY-CODE", "v", "http://x/cb").await else {
            panic!("redeemed against nothing");
        };
        assert!(!e.contains("CANARY"), "{e}");
    }

    #[tokio::test]
    async fn an_endless_token_answer_is_cut_at_the_bound_not_read_whole() {
        use std::io::{Read as _, Write as _};
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        std::thread::spawn(move || {
            let (mut s, _) = listener.accept().unwrap();
            let mut buf = [0u8; 4096];
            let _ = s.read(&mut buf);
            let head = "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\n\
                        transfer-encoding: chunked\r\n\r\n";
            if s.write_all(head.as_bytes()).is_err() {
                return;
            }
            let chunk = format!("4000\r\n{}\r\n", " ".repeat(0x4000));
            // 16 KiB at a time until the client hangs up.
            while s.write_all(chunk.as_bytes()).is_ok() {}
        });
        let up = known(false, &format!("http://127.0.0.1:{port}/token")).await;
        let started = std::time::Instant::now();
        let Err(RefreshError::Unavailable(e)) = up.refresh("r").await else {
            panic!("an endless answer was usable");
        };
        assert!(e.contains("too large"), "{e}");
        assert!(
            started.elapsed() < std::time::Duration::from_secs(5),
            "{:?}",
            started.elapsed()
        );
    }

    #[test]
    fn a_service_saying_its_token_lives_for_ever_is_believed_for_a_day() {
        let t = tokens(&json!({"access_token": "a", "token_type": "bearer",
                               "expires_in": u64::MAX}))
        .unwrap();
        assert_eq!(t.expires_in, 86_400);
    }

    #[test]
    fn error_codes_are_repeated_only_when_they_are_codes() {
        assert_eq!(code_of(&json!({"error": "invalid_grant"})), "invalid_grant");
        assert_eq!(code_of(&json!({"error": "<script>"})), "no error code");
        assert_eq!(code_of(&json!({})), "no error code");
    }
}
