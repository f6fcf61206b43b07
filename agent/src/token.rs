//! Access tokens: fetched from the identity provider with the client
//! credentials grant, cached, refreshed before they expire.

use crate::error::Error;
use std::fmt;
use std::future::Future;
use std::time::Duration;

/// Seconds since the Unix epoch, from a clock tests can fix.
pub trait Clock: Send + Sync {
    fn now_s(&self) -> u64;
}

/// The system's clock.
#[derive(Debug, Clone, Copy, Default)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn now_s(&self) -> u64 {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs())
    }
}

/// An access token and how long it lives. Its value never appears in
/// `Debug` output.
#[derive(Clone, PartialEq, Eq)]
pub struct Token {
    value: String,
    /// Lifetime from the provider's `expires_in`.
    pub lifetime_s: u64,
}

impl Token {
    pub fn new(value: String, lifetime_s: u64) -> Token {
        Token { value, lifetime_s }
    }

    /// The bearer value (for the `authorization` header only).
    pub fn expose(&self) -> &str {
        &self.value
    }
}

impl fmt::Debug for Token {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Token(<redacted>, {} s)", self.lifetime_s)
    }
}

/// Where tokens come from.
pub trait TokenSource: Send + Sync {
    fn fetch(&self) -> impl Future<Output = Result<Token, Error>> + Send;
}

/// A token kept until shortly before it expires: refreshed once a fifth
/// of its lifetime (at most 60 s) is left, so a call never leaves with a
/// token about to lapse in flight.
pub struct TokenCache<S, C = SystemClock> {
    source: S,
    clock: C,
    current: Option<(Token, u64)>,
}

impl<S: TokenSource, C: Clock> TokenCache<S, C> {
    pub fn new(source: S, clock: C) -> Self {
        TokenCache {
            source,
            clock,
            current: None,
        }
    }

    /// When a token fetched at `at` with this lifetime gets refreshed.
    pub fn refresh_at(at: u64, lifetime_s: u64) -> u64 {
        let margin = (lifetime_s / 5).min(60);
        at + lifetime_s.saturating_sub(margin)
    }

    /// The token to send now, fetching a new one when there is none or it
    /// is due.
    pub async fn get(&mut self) -> Result<Token, Error> {
        let now = self.clock.now_s();
        if let Some((t, due)) = &self.current {
            if now < *due {
                return Ok(t.clone());
            }
        }
        let t = self.source.fetch().await?;
        let due = Self::refresh_at(self.clock.now_s(), t.lifetime_s);
        self.current = Some((t.clone(), due));
        Ok(t)
    }

    /// Drops the cached token (the sidecar answered 401 with it): the next
    /// [`TokenCache::get`] fetches a new one.
    pub fn invalidate(&mut self) {
        self.current = None;
    }
}

/// The client credentials grant (RFC 6749 §4.4) with an RFC 8707
/// resource indicator, against the provider's token endpoint.
pub struct ClientCredentials {
    pub token_url: String,
    pub client_id: String,
    client_secret: String,
    /// The audience the token is for (`resource`).
    pub resource: Option<String>,
    /// Scopes to ask for (space-separated).
    pub scope: Option<String>,
    http: reqwest::Client,
}

impl fmt::Debug for ClientCredentials {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ClientCredentials")
            .field("token_url", &self.token_url)
            .field("client_id", &self.client_id)
            .field("client_secret", &"<redacted>")
            .finish()
    }
}

impl ClientCredentials {
    pub fn new(token_url: &str, client_id: &str, client_secret: &str) -> ClientCredentials {
        ClientCredentials {
            token_url: token_url.to_string(),
            client_id: client_id.to_string(),
            client_secret: client_secret.to_string(),
            resource: None,
            scope: None,
            http: reqwest::Client::builder()
                .timeout(Duration::from_secs(10))
                .build()
                .unwrap_or_default(),
        }
    }

    pub fn resource(mut self, resource: &str) -> Self {
        self.resource = Some(resource.to_string());
        self
    }

    pub fn scope(mut self, scope: &str) -> Self {
        self.scope = Some(scope.to_string());
        self
    }
}

impl TokenSource for ClientCredentials {
    async fn fetch(&self) -> Result<Token, Error> {
        let mut form = vec![("grant_type", "client_credentials")];
        if let Some(r) = &self.resource {
            form.push(("resource", r));
        }
        if let Some(s) = &self.scope {
            form.push(("scope", s));
        }
        let answer = self
            .http
            .post(&self.token_url)
            .basic_auth(&self.client_id, Some(&self.client_secret))
            .form(&form)
            .send()
            .await
            .map_err(|e| {
                Error::Token(format!(
                    "identity provider at {} unreachable: {e}",
                    self.token_url
                ))
            })?;
        let status = answer.status().as_u16();
        let body: serde_json::Value = answer.json().await.unwrap_or_default();
        if status != 200 {
            let why = body
                .get("error_description")
                .or_else(|| body.get("error"))
                .and_then(|v| v.as_str())
                .unwrap_or("no reason given");
            return Err(Error::Token(format!(
                "identity provider refused client {} (HTTP {status}): {why}",
                self.client_id
            )));
        }
        let value = body
            .get("access_token")
            .and_then(|v| v.as_str())
            .ok_or_else(|| Error::Token("token response without access_token".into()))?;
        let lifetime = body
            .get("expires_in")
            .and_then(|v| v.as_u64())
            .unwrap_or(300);
        Ok(Token::new(value.to_string(), lifetime))
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicU64, Ordering};
    use std::sync::Arc;

    #[derive(Clone, Default)]
    struct Fixed(Arc<AtomicU64>);
    impl Clock for Fixed {
        fn now_s(&self) -> u64 {
            self.0.load(Ordering::SeqCst)
        }
    }

    #[derive(Default)]
    struct Counting(AtomicU64);
    impl TokenSource for Counting {
        async fn fetch(&self) -> Result<Token, Error> {
            let n = self.0.fetch_add(1, Ordering::SeqCst) + 1;
            Ok(Token::new(format!("t{n}"), 300))
        }
    }

    #[tokio::test]
    async fn a_token_is_reused_until_shortly_before_it_expires() {
        let clock = Fixed::default();
        clock.0.store(1_000, Ordering::SeqCst);
        let mut cache = TokenCache::new(Counting::default(), clock.clone());
        assert_eq!(cache.get().await.unwrap().expose(), "t1");
        // 300 s lifetime: refreshed with 60 s left, at 1,240.
        clock.0.store(1_239, Ordering::SeqCst);
        assert_eq!(cache.get().await.unwrap().expose(), "t1");
        clock.0.store(1_240, Ordering::SeqCst);
        assert_eq!(cache.get().await.unwrap().expose(), "t2");
        // A 401 with it: the next call fetches anew.
        cache.invalidate();
        assert_eq!(cache.get().await.unwrap().expose(), "t3");
        assert_eq!(
            TokenCache::<Counting, Fixed>::refresh_at(0, 30),
            24,
            "a fifth of short lifetimes"
        );
    }

    #[test]
    fn a_token_and_a_secret_never_print() {
        let t = Token::new("eyJsecret".into(), 60);
        assert!(!format!("{t:?}").contains("eyJ"));
        let c = ClientCredentials::new("http://idp/token", "agent-1", "s3cret");
        assert!(!format!("{c:?}").contains("s3cret"));
    }

    #[tokio::test]
    async fn an_unreachable_provider_is_a_clear_error_not_a_hang() {
        // A port nothing listens on.
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let c = ClientCredentials::new(&format!("http://127.0.0.1:{port}/token"), "a", "b");
        let t0 = std::time::Instant::now();
        let e = c.fetch().await.unwrap_err();
        assert!(t0.elapsed() < Duration::from_secs(5));
        assert!(e.to_string().contains("unreachable"), "{e}");
    }
}
