//! Tokens exchanged for the caller's (OAuth 2.0 Token Exchange, RFC
//! 8693): for a service whose upstream takes its own token, the filter
//! sends the caller's verified token as the `subject_token` to the
//! security token service (`token_exchange`), gets a token for the
//! service's audience and scopes, and sends that upstream as
//! `Authorization: Bearer`. The caller's own token never goes upstream,
//! and the exchanged one never back to the caller.
//!
//! One exchange serves every request of the same (subject, the subject
//! token's claims, delegation chain, audience, scopes) until shortly
//! before it expires: per worker a
//! cache, between workers shared data, and per worker one exchange in
//! flight per key whatever the number of requests waiting for it
//! (single-flight). Requests wait the way secret fetches do: the stream
//! pauses, the root context resumes it with the header set, or answers
//! 503 `token_exchange_unavailable` with a reason that never carries a
//! token (the service's error code at most).

use crate::config::TokenExchangeConfig;
use crate::host::Host;
use crate::secrets::{Completion, Lookup, Secret};
use base64ct::{Base64, Encoding};
use serde_json::Value;
use sha2::{Digest, Sha256};
use std::collections::HashMap;

#[cfg(test)]
mod tests;

const SEC: u64 = 1_000_000_000;
/// The longest answer read from the token service.
pub const MAX_ANSWER_BYTES: usize = 16 * 1024;
/// The longest exchanged token sent upstream.
const MAX_TOKEN_BYTES: usize = 8 * 1024;
/// The longest an exchanged token is reused, whatever `expires_in` says:
/// a token service answering a huge value (or milliseconds for seconds)
/// would otherwise pin a dead token here and in shared data, with every
/// call sent upstream with it until Envoy restarts.
pub const MAX_LIFE_S: u64 = 3_600;
/// The grant type of RFC 8693.
pub const GRANT_TYPE: &str = "urn:ietf:params:oauth:grant-type:token-exchange";

pub use crate::config::scope_token;

/// What the policy's `exchange` rule chose for a request: the audience
/// and scopes of the token its upstream gets, in place of the service's
/// configured ones.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Choice {
    /// The audience, if the policy names one.
    pub audience: Option<String>,
    /// The scopes, if the policy names them (may be fewer than
    /// configured: the policy narrows).
    pub scopes: Option<Vec<String>>,
}

/// Reads the policy's `exchange` value: undefined or null is "as
/// configured"; an object may name `audience` (a string) and `scopes`
/// (strings that are scope tokens). Anything else is an error, which
/// refuses the request.
pub fn parse(v: &regorus::Value) -> Result<Option<Choice>, String> {
    use crate::value::{is_null, items, member, str_of};
    if is_null(v) {
        return Ok(None);
    }
    if !matches!(v, regorus::Value::Object(_)) {
        return Err("`exchange` must be an object with audience and/or scopes".into());
    }
    let audience = match member(v, "audience") {
        None => None,
        Some(a) => Some(
            str_of(a)
                .filter(|s| !s.is_empty() && s.len() <= 512)
                .ok_or("`exchange.audience` must be a non-empty string")?
                .to_owned(),
        ),
    };
    let scopes = match member(v, "scopes") {
        None => None,
        Some(s) => {
            let (_, it) = items(s).ok_or("`exchange.scopes` must be a set or array")?;
            let mut all: Vec<String> = it
                .map(|x| str_of(x).filter(|t| scope_token(t)).map(str::to_owned))
                .collect::<Option<Vec<_>>>()
                .ok_or("`exchange.scopes` must hold OAuth scope tokens")?;
            all.sort();
            all.dedup();
            Some(all)
        }
    };
    Ok(Some(Choice { audience, scopes }))
}

/// What one request needs exchanged.
#[derive(Debug, Clone)]
pub struct Ask {
    /// The caller's token (the subject token).
    pub subject: Secret,
    /// Who the caller is: issuer and subject, and the delegation chain.
    pub principal: String,
    /// A digest of the subject token's claims ([`claims_digest`]): what
    /// the service grants depends on them (the scopes it holds, the
    /// client holding it, its audience, its `may_act`), not only on who
    /// it names.
    pub claims: String,
    /// The delegation chain, outermost first.
    pub chain: Vec<String>,
    /// The token's audience.
    pub audience: String,
    /// The scopes asked for, sorted and unique.
    pub scopes: Vec<String>,
}

impl Ask {
    /// The cache key: every fact the exchanged token depends on.
    pub fn key(&self) -> String {
        let mut h = Sha256::new();
        for part in [
            self.principal.as_str(),
            self.claims.as_str(),
            self.audience.as_str(),
        ]
        .into_iter()
        .chain(self.chain.iter().map(String::as_str))
        .chain(std::iter::once("\u{0}scopes"))
        .chain(self.scopes.iter().map(String::as_str))
        {
            h.update((part.len() as u64).to_le_bytes());
            h.update(part.as_bytes());
        }
        hex(h.finalize().into())
    }
}

fn hex(sum: [u8; 32]) -> String {
    crate::ids::hex(&sum)
}

/// Claims that describe one token rather than what it grants: a refreshed
/// token that differs only in them reuses the exchange.
const INSTANCE_CLAIMS: [&str; 4] = ["exp", "iat", "nbf", "jti"];

/// A digest of a verified token's claims but [`INSTANCE_CLAIMS`]. Keyed
/// on the issuer and subject alone, a token of the same subject held by
/// another client, or holding fewer scopes, was served the exchange made
/// for a broader one.
pub fn claims_digest(payload: &serde_json::Map<String, Value>) -> String {
    let mut h = Sha256::new();
    for (k, v) in payload
        .iter()
        .filter(|(k, _)| !INSTANCE_CLAIMS.contains(&k.as_str()))
    {
        let v = v.to_string();
        for part in [k.as_str(), v.as_str()] {
            h.update((part.len() as u64).to_le_bytes());
            h.update(part.as_bytes());
        }
    }
    hex(h.finalize().into())
}

#[derive(Debug)]
struct Job {
    key: String,
    waiters: Vec<u32>,
    inflight: u32,
}

#[derive(Debug, Clone)]
struct Lease {
    token: Secret,
    until_ns: u64,
}

/// Counters for metrics and tests.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ExchangeStats {
    /// Requests served from a cache (this worker's or another's).
    pub hits: u64,
    /// Exchanges sent.
    pub exchanges: u64,
    /// Exchanges that failed.
    pub failures: u64,
}

/// The per-worker cache and exchanges in flight.
#[derive(Debug)]
pub struct Exchanger {
    cfg: TokenExchangeConfig,
    cache: HashMap<String, Lease>,
    /// [`service_tag`], in every shared-data key.
    tag: String,
    jobs: Vec<Job>,
    done: Vec<Completion>,
    /// Counters.
    pub stats: ExchangeStats,
}

/// Names the token service and the filter's client there: shared data
/// outlives a configuration and is shared by every filter of the VM, so
/// a token is published under the service that issued it, never served
/// by a filter configured for another.
fn service_tag(cfg: &TokenExchangeConfig) -> String {
    let mut h = Sha256::new();
    for part in [
        cfg.cluster.as_str(),
        cfg.authority.as_str(),
        cfg.token_path.as_str(),
        cfg.client_id.as_str(),
        cfg.subject_token_type.as_str(),
    ] {
        h.update((part.len() as u64).to_le_bytes());
        h.update(part.as_bytes());
    }
    let mut tag = hex(h.finalize().into());
    tag.truncate(16);
    tag
}

/// `application/x-www-form-urlencoded` of one value.
fn form(v: &str) -> String {
    let mut out = String::with_capacity(v.len());
    for b in v.bytes() {
        if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
            out.push(char::from(b));
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// The token service's error codes that refuse the caller (its token may
/// not be exchanged for this audience or these scopes, or not by this
/// actor), answered 403; any other failure is the gateway's (503).
const CALLER_REFUSALS: [&str; 3] = ["invalid_grant", "invalid_scope", "invalid_target"];

/// How [`read`] marks a refusal of the caller in its error.
pub const REFUSED: &str = "refused: ";

/// How [`read`] marks a link broker's `link_required` (the person the
/// caller acts for has no usable linked account): the error is this and
/// the page to link at.
pub const LINK: &str = "link: ";

/// The longest link page URL passed on to the client.
const MAX_LINK_BYTES: usize = 2048;

/// A link broker's `link_uri`: an http(s) URL of printable ASCII with
/// nothing that could end a header value, a JSON string or an HTML
/// attribute early.
fn link_uri(v: Option<&Value>) -> Option<&str> {
    v?.get("link_uri")?
        .as_str()
        .filter(|u| u.len() <= MAX_LINK_BYTES)
        .filter(|u| u.starts_with("https://") || u.starts_with("http://"))
        .filter(|u| {
            u.bytes()
                .all(|b| b.is_ascii_graphic() && !b"\"<>\\`{}|^".contains(&b))
        })
}

/// What the token service answered, read strictly: the token and how
/// many seconds it lives, or a reason that never holds a token.
pub fn read(status: Option<u16>, body: Option<&[u8]>) -> Result<(Secret, u64), String> {
    let status = status.ok_or("the token service did not answer in time")?;
    let body = body.filter(|b| b.len() <= MAX_ANSWER_BYTES);
    let v: Option<Value> = body.and_then(|b| serde_json::from_slice(b).ok());
    if status != 200 {
        // RFC 6749 §5.2 error codes are short ASCII tokens: only such a
        // code is repeated, never a description.
        let code = v
            .as_ref()
            .and_then(|v| v.get("error")?.as_str())
            .filter(|c| c.len() <= 64 && c.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_'));
        return Err(match code {
            // A link broker: the person has not linked an account there
            // (or the service revoked it). Without a usable page to link
            // at, it is a plain refusal.
            Some("link_required") if status == 400 => match link_uri(v.as_ref()) {
                Some(u) => format!("{LINK}{u}"),
                None => {
                    format!("{REFUSED}the token service refused the exchange (400 link_required)")
                }
            },
            // The caller may not have this token (RFC 8693 §2.2.2): a
            // refusal of the request, not an outage.
            Some(c) if status == 400 && CALLER_REFUSALS.contains(&c) => {
                format!("{REFUSED}the token service refused the exchange ({status} {c})")
            }
            Some(c) => format!("the token service refused the exchange ({status} {c})"),
            None => format!("the token service answered HTTP {status}"),
        });
    }
    let v = v.ok_or("the token service's answer is not JSON")?;
    let token = v
        .get("access_token")
        .and_then(Value::as_str)
        .filter(|t| {
            !t.is_empty() && t.len() <= MAX_TOKEN_BYTES && t.bytes().all(|b| b.is_ascii_graphic())
        })
        .ok_or("the token service's answer has no usable access_token")?;
    let kind = v.get("token_type").and_then(Value::as_str).unwrap_or("");
    if !kind.eq_ignore_ascii_case("bearer") {
        return Err("the exchanged token is not a bearer token".into());
    }
    // Without expires_in the token is used for this request only.
    let ttl = v.get("expires_in").and_then(Value::as_u64).unwrap_or(0);
    Ok((Secret::new(token), ttl))
}

impl Exchanger {
    /// An empty exchanger.
    pub fn new(cfg: TokenExchangeConfig) -> Exchanger {
        Exchanger {
            tag: service_tag(&cfg),
            cfg,
            cache: HashMap::new(),
            jobs: Vec::new(),
            done: Vec::new(),
            stats: ExchangeStats::default(),
        }
    }

    /// The shared-data slot of an exchanged token: one of `max_entries`.
    /// Envoy never deletes a shared-data key, so a key per token would
    /// grow for the life of the process; a slot holds one token at a time
    /// and names its key ([`Exchanger::shared`] reads another's as a miss).
    fn shared_key(&self, key: &str) -> String {
        let n = key
            .get(..12)
            .and_then(|h| u64::from_str_radix(h, 16).ok())
            .unwrap_or(0);
        let slots = u64::try_from(self.cfg.max_entries).unwrap_or(1).max(1);
        format!("agentplane.exchange.v2.{}.{}", self.tag, n % slots)
    }

    fn header(token: &Secret) -> Vec<(String, Secret)> {
        vec![(
            "authorization".to_string(),
            Secret::new(format!("Bearer {}", token.expose())),
        )]
    }

    /// The exchanged token for `ask`: cached (this worker's, or one
    /// another worker published), or the stream waits for an exchange
    /// (joining one in flight for the same key).
    pub fn request<H: Host>(&mut self, host: &mut H, ask: &Ask, stream: u32) -> Lookup {
        let now = host.now_ns();
        let key = ask.key();
        if let Some(l) = self.cache.get(&key).filter(|l| l.until_ns > now) {
            self.stats.hits += 1;
            return Lookup::Ready(Self::header(&l.token));
        }
        if let Some(l) = self.shared(host, &key, now) {
            self.stats.hits += 1;
            let header = Self::header(&l.token);
            self.keep(key, l, now);
            return Lookup::Ready(header);
        }
        if let Some(j) = self.jobs.iter_mut().find(|j| j.key == key) {
            j.waiters.push(stream);
            return Lookup::Pending;
        }
        let Some(secret) = host
            .env_var(&self.cfg.client_secret_env)
            .filter(|s| !s.is_empty())
        else {
            return Lookup::Failed("the exchange client's secret is not set".into());
        };
        let basic = Base64::encode_string(
            format!("{}:{}", form(&self.cfg.client_id), form(&secret)).as_bytes(),
        );
        let mut body = format!(
            "grant_type={}&subject_token={}&subject_token_type={}&audience={}",
            form(GRANT_TYPE),
            form(ask.subject.expose()),
            form(&self.cfg.subject_token_type),
            form(&ask.audience),
        );
        if ask.audience.starts_with("https://") || ask.audience.starts_with("http://") {
            body.push_str(&format!("&resource={}", form(&ask.audience)));
        }
        if !ask.scopes.is_empty() {
            body.push_str(&format!("&scope={}", form(&ask.scopes.join(" "))));
        }
        let authorization = format!("Basic {basic}");
        let sent = host.dispatch_http_call(
            &self.cfg.cluster,
            &[
                (":method", "POST"),
                (":path", &self.cfg.token_path),
                (":authority", &self.cfg.authority),
                ("content-type", "application/x-www-form-urlencoded"),
                ("accept", "application/json"),
                ("authorization", &authorization),
            ],
            Some(body.as_bytes()),
            self.cfg.timeout_ms,
        );
        match sent {
            Ok(token) => {
                self.stats.exchanges += 1;
                self.jobs.push(Job {
                    key,
                    waiters: vec![stream],
                    inflight: token,
                });
                Lookup::Pending
            }
            Err(_) => {
                self.stats.failures += 1;
                Lookup::Failed("the token service cannot be called".into())
            }
        }
    }

    fn shared<H: Host>(&self, host: &H, key: &str, now: u64) -> Option<Lease> {
        let (bytes, _) = host.shared_get(&self.shared_key(key))?;
        let v: Value = serde_json::from_slice(&bytes).ok()?;
        if v.get("key")?.as_str()? != key {
            return None; // the slot holds another caller's token
        }
        let until_ns = v.get("until_ns")?.as_u64().filter(|u| *u > now)?;
        let token = v.get("token")?.as_str()?;
        Some(Lease {
            token: Secret::new(token),
            until_ns,
        })
    }

    fn keep(&mut self, key: String, lease: Lease, now: u64) {
        if self.cache.len() >= self.cfg.max_entries {
            // Bounded: expired entries go first, then everything.
            self.cache.retain(|_, l| l.until_ns > now);
            if self.cache.len() >= self.cfg.max_entries {
                self.cache.clear();
            }
        }
        self.cache.insert(key, lease);
    }

    /// A callout answered. `false`: not one of this exchanger's.
    pub fn on_response<H: Host>(
        &mut self,
        host: &mut H,
        token: u32,
        status: Option<u16>,
        body: Option<&[u8]>,
    ) -> bool {
        let Some(i) = self.jobs.iter().position(|j| j.inflight == token) else {
            return false;
        };
        let job = self.jobs.swap_remove(i);
        let now = host.now_ns();
        let result = match read(status, body) {
            Ok((token, ttl_s)) => {
                let life = ttl_s.saturating_sub(self.cfg.skew_s).min(MAX_LIFE_S);
                if life > 0 {
                    let lease = Lease {
                        token: token.clone(),
                        until_ns: now.saturating_add(life.saturating_mul(SEC)),
                    };
                    let shared = serde_json::json!({
                        "key": job.key,
                        "token": lease.token.expose(),
                        "until_ns": lease.until_ns,
                    })
                    .to_string();
                    // Best effort: another worker exchanges for itself
                    // when this write is lost.
                    let _ = host.shared_set(&self.shared_key(&job.key), shared.as_bytes(), None);
                    self.keep(job.key.clone(), lease, now);
                }
                Ok(Self::header(&token))
            }
            Err(why) => {
                self.stats.failures += 1;
                Err(why)
            }
        };
        for stream in job.waiters {
            self.done.push(Completion {
                stream,
                result: result.clone(),
            });
        }
        true
    }

    /// A stream ended: it no longer waits (its exchange goes on for the
    /// others, and the cache).
    pub fn forget_stream(&mut self, stream: u32) {
        for j in &mut self.jobs {
            j.waiters.retain(|w| *w != stream);
        }
    }

    /// Waiters whose exchange ended.
    pub fn take_completions(&mut self) -> Vec<Completion> {
        std::mem::take(&mut self.done)
    }
}
