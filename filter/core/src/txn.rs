//! Transaction tokens (draft-ietf-oauth-transaction-tokens): a short-lived
//! JWT, signed by the gateway, that tells an upstream service what the
//! gateway decided, so a skill reachable some other way can tell a request
//! that passed the gateway from one that did not.
//!
//! - **Claims.** `iss` (the gateway), `aud` (the trust domain, as the
//!   draft has it), `svc` (the target service: its own claim, since `aud`
//!   is not the service), `sub` (the subject: a delegation's subject, or
//!   the agent acting for itself), `act` (RFC 8693 actors, outermost
//!   first), `scope` (only ever narrowed: the token's permissions, cut by
//!   every actor's and by an inbound token's), `req_wl` (the requesting
//!   workload: the peer's SPIFFE ID under mTLS, else the agent), `txn`
//!   (the transaction, kept across hops), `tool` (an MCP `tools/call`),
//!   `tctx` (agent, type, team, the decision that minted the token), `iat`
//!   and `exp`. Header `typ` `txntoken+jwt`, `alg` `EdDSA`, `kid`.
//! - **Signing.** Ed25519 through `jwt-compact` over `ed25519-dalek`
//!   (pure Rust, deterministic: no RNG on the request path; the
//!   `ed25519-compact` backend draws noise with a panicking `getrandom`).
//!   The private key is read from OpenBao/Vault (KV v2) through a callout
//!   after configure, never from the plugin configuration; requests that
//!   need it are refused with 503 until it has loaded.
//! - **Reuse.** A signature is far too slow for every request (see the
//!   figures in docs/performance.md): one token serves every request of
//!   the same identity, service, tool and inbound token for `reuse_s`,
//!   and each request's own decision id goes upstream in `x-decision-id`.
//! - **Inbound.** A `Txn-Token` from another agentplane hop is verified
//!   (signature, `typ`, `kid`, `iss`, `aud`, `exp`) and becomes
//!   `input.transaction`; the token minted for the next hop keeps its
//!   `txn`, `sub` and actors and narrows its scope. A token that does not
//!   verify refuses the request, and so does one presented by an agent it
//!   does not name ([`Inbound::presented_by`]): a leaked token is not a
//!   way to act in someone else's transaction.

use crate::config::txn_public_key as public_key;
pub use crate::config::{TrustedIssuer, TxnConfig, TXN_HEADER as HEADER};
use crate::value;
use base64ct::{Base64UrlUnpadded, Encoding};
use ed25519_dalek::{SigningKey, VerifyingKey};
use jwt_compact::{alg::Ed25519, AlgorithmExt, Claims, Header, UntrustedToken};
use regorus::Value as Rego;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value as Json};
use std::collections::HashMap;
use std::fmt;
use std::rc::Rc;

/// The JWT `typ` of a transaction token.
pub const TYP: &str = "txntoken+jwt";
/// Longest inbound token read; longer ones are refused unread.
pub const MAX_TOKEN_BYTES: usize = 8 * 1024;
/// Most actors a minted token names (as for inbound `act` chains).
const MAX_ACTORS: usize = 16;
/// Clock skew tolerated between hops.
const LEEWAY_S: i64 = 5;
/// Inbound tokens kept verified per worker (each up to
/// [`MAX_TOKEN_BYTES`]: at most 32 MiB, about 3 MiB for this gateway's own
/// tokens).
const MAX_VERIFIED: usize = 4096;

/// The gateway's signing key. Its `Debug` shows the key id only.
pub struct Key {
    /// Key id (`kid`).
    pub kid: String,
    signing: SigningKey,
}

impl Key {
    /// Signs `msg` (Ed25519, deterministic). Only for messages no verifier
    /// could take for a token: the decision log's checkpoints sign a
    /// newline-separated message, which no JWS signing input is.
    pub(crate) fn sign(&self, msg: &[u8]) -> ed25519_dalek::Signature {
        use ed25519_dalek::Signer as _;
        self.signing.sign(msg)
    }
}

impl fmt::Debug for Key {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Key({})", self.kid)
    }
}

/// The keys tokens are signed and checked with.
#[derive(Debug, Default)]
pub struct Keyring {
    /// The signing key, once loaded.
    pub current: Option<Key>,
    /// The retired key (`previous_kid`/`previous_x`), still accepted.
    previous: Option<(String, VerifyingKey)>,
    /// The served JWKS document.
    jwks: String,
}

impl Keyring {
    /// Reads a KV v2 response (`{"data":{"data":{...}}}`) into a keyring.
    /// The error names what is wrong, never a value.
    pub fn from_kv(body: &[u8]) -> Result<Keyring, String> {
        let doc: Json = serde_json::from_slice(body).map_err(|_| "not JSON".to_string())?;
        let data = doc
            .get("data")
            .and_then(|d| d.get("data"))
            .and_then(Json::as_object)
            .ok_or("no data.data object")?;
        let field = |k: &str| data.get(k).and_then(Json::as_str);
        let kid = field("kid")
            .filter(|k| !k.is_empty() && k.len() <= 128)
            .ok_or("no kid")?;
        let seed = Base64UrlUnpadded::decode_vec(field("d").ok_or("no d")?)
            .map_err(|_| "d is not base64url".to_string())?;
        let seed: [u8; 32] = seed.try_into().map_err(|_| "d is not 32 bytes")?;
        let signing = SigningKey::from_bytes(&seed);
        let previous = match (field("previous_kid"), field("previous_x")) {
            (Some(k), Some(x)) if k != kid => Some((k.to_string(), public_key(x)?)),
            _ => None,
        };
        let mut ring = Keyring {
            current: Some(Key {
                kid: kid.to_string(),
                signing,
            }),
            previous,
            jwks: String::new(),
        };
        ring.jwks = ring.render_jwks();
        Ok(ring)
    }

    fn render_jwks(&self) -> String {
        let jwk = |kid: &str, key: &VerifyingKey| {
            serde_json::json!({
                "kty": "OKP",
                "crv": "Ed25519",
                "alg": "EdDSA",
                "use": "sig",
                "kid": kid,
                "x": Base64UrlUnpadded::encode_string(key.as_bytes()),
            })
        };
        let mut keys = Vec::new();
        if let Some(k) = &self.current {
            keys.push(jwk(&k.kid, &k.signing.verifying_key()));
        }
        if let Some((kid, key)) = &self.previous {
            keys.push(jwk(kid, key));
        }
        serde_json::json!({ "keys": keys }).to_string()
    }

    /// The JWKS document (`None` until the key has loaded).
    pub fn jwks(&self) -> Option<&str> {
        self.current.as_ref().map(|_| self.jwks.as_str())
    }

    /// The key and issuer a `kid` names, if accepted.
    fn find<'a>(&'a self, kid: &str, cfg: &'a TxnConfig) -> Option<(VerifyingKey, &'a str)> {
        if let Some(k) = self.current.as_ref().filter(|k| k.kid == kid) {
            return Some((k.signing.verifying_key(), cfg.issuer.as_str()));
        }
        if let Some((_, key)) = self.previous.as_ref().filter(|(k, _)| k == kid) {
            return Some((*key, cfg.issuer.as_str()));
        }
        cfg.trusted
            .iter()
            .find(|t| t.kid == kid)
            .and_then(|t| Some((public_key(&t.x).ok()?, t.issuer.as_str())))
    }
}

/// The claims of a transaction token besides `iat` and `exp`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct TxnClaims {
    /// The gateway.
    pub iss: String,
    /// The trust domain.
    pub aud: String,
    /// The transaction, kept across hops.
    pub txn: String,
    /// On whose behalf.
    pub sub: String,
    /// Space-separated permissions, only ever narrowed.
    pub scope: String,
    /// The requesting workload.
    pub req_wl: String,
    /// The target service.
    pub svc: String,
    /// The MCP tool called, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tool: Option<String>,
    /// RFC 8693 actors, nested, outermost (acting now) first.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub act: Option<Json>,
    /// Transaction context.
    pub tctx: Tctx,
}

/// `tctx`: what the minting gateway knew.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq, Default)]
pub struct Tctx {
    /// The agent that made the call.
    pub agent: String,
    /// Its type, if the token said.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub agent_type: Option<String>,
    /// Its team, if the token said.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub team: Option<String>,
    /// The decision that minted the token (each request's own decision id
    /// is in `x-decision-id`).
    pub decision: String,
}

/// Nests actors (outermost first) into an RFC 8693 `act` claim.
pub fn nest(actors: &[String]) -> Option<Json> {
    actors.iter().rev().fold(None, |inner, sub| {
        let mut o = Map::new();
        o.insert("sub".into(), Json::String(sub.clone()));
        if let Some(i) = inner {
            o.insert("act".into(), i);
        }
        Some(Json::Object(o))
    })
}

/// Flattens an `act` claim into actors, outermost first (`None` when it
/// is malformed or too long).
pub fn flatten(act: Option<&Json>) -> Option<Vec<String>> {
    let mut out = Vec::new();
    let mut cur = act;
    while let Some(a) = cur {
        if out.len() >= MAX_ACTORS {
            return None;
        }
        let o = a.as_object()?;
        out.push(o.get("sub")?.as_str()?.to_string());
        cur = o.get("act");
    }
    Some(out)
}

/// A verified inbound token.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Inbound {
    /// Its claims.
    pub claims: TxnClaims,
    /// Its actors, outermost first.
    pub actors: Vec<String>,
    /// `exp`, seconds.
    pub exp_s: i64,
    /// `iat`, seconds.
    pub iat_s: i64,
    /// The actors as one key field.
    actors_key: String,
}

impl Inbound {
    /// `input.transaction`.
    pub fn doc(t: Option<&Inbound>) -> Rego {
        let Some(t) = t else {
            return Rego::Null;
        };
        let c = &t.claims;
        let scope: Vec<&str> = c.scope.split_ascii_whitespace().collect();
        value::object([
            ("iss", Rego::from(c.iss.as_str())),
            ("txn", Rego::from(c.txn.as_str())),
            ("sub", Rego::from(c.sub.as_str())),
            ("scope", value::strings(&scope)),
            ("req_wl", Rego::from(c.req_wl.as_str())),
            ("svc", Rego::from(c.svc.as_str())),
            ("tool", value::opt_str(c.tool.as_deref())),
            ("actors", value::strings(&t.actors)),
            ("agent", Rego::from(c.tctx.agent.as_str())),
            ("decision", Rego::from(c.tctx.decision.as_str())),
            ("iat", Rego::from(t.iat_s)),
            ("exp", Rego::from(t.exp_s)),
        ])
    }
}

impl Inbound {
    /// Checks that `agent`, the verified identity of the request carrying
    /// the token, is a party to it: its subject (acting itself, or through
    /// an actor its own token names, RFC 8693) or one of its actors. Every
    /// agent that minted a token in the chain is one of these, so a genuine
    /// next hop always is; an agent the token never named presenting it is
    /// a replay, and would otherwise get the next hop's token in the
    /// subject's name.
    pub fn presented_by(&self, agent: &str) -> Result<(), Invalid> {
        if self.claims.sub == agent || self.actors.iter().any(|a| a == agent) {
            Ok(())
        } else {
            Err(Invalid(
                "presented by an agent that is neither its subject nor one of its actors",
            ))
        }
    }

    /// The facts a decision key holds for it.
    pub fn key_fields(&self) -> [&str; 10] {
        let c = &self.claims;
        [
            c.iss.as_str(),
            c.txn.as_str(),
            c.sub.as_str(),
            c.scope.as_str(),
            c.req_wl.as_str(),
            c.svc.as_str(),
            c.tool.as_deref().unwrap_or("\u{0}"),
            c.tctx.agent.as_str(),
            c.tctx.decision.as_str(),
            self.actors_key.as_str(),
        ]
    }
}

/// Why an inbound token is refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Invalid(pub &'static str);

impl fmt::Display for Invalid {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.0)
    }
}

/// Verifies an inbound token at `now_s`.
pub fn verify(
    token: &str,
    ring: &Keyring,
    cfg: &TxnConfig,
    now_s: i64,
) -> Result<Inbound, Invalid> {
    if token.len() > MAX_TOKEN_BYTES {
        return Err(Invalid("token too long"));
    }
    let t = UntrustedToken::new(token).map_err(|_| Invalid("malformed token"))?;
    if t.algorithm() != "EdDSA" {
        return Err(Invalid("algorithm is not EdDSA"));
    }
    if t.header().token_type.as_deref() != Some(TYP) {
        return Err(Invalid("typ is not txntoken+jwt"));
    }
    let kid = t.header().key_id.as_deref().ok_or(Invalid("no kid"))?;
    let (key, issuer) = ring.find(kid, cfg).ok_or(Invalid("unknown kid"))?;
    let checked = Ed25519
        .validator::<TxnClaims>(&key)
        .validate(&t)
        .map_err(|_| Invalid("signature or claims do not verify"))?;
    let claims = checked.claims();
    let exp_s = claims
        .expiration
        .map(|e| e.timestamp())
        .ok_or(Invalid("no exp"))?;
    let iat_s = claims
        .issued_at
        .map(|e| e.timestamp())
        .ok_or(Invalid("no iat"))?;
    if exp_s.saturating_add(LEEWAY_S) <= now_s {
        return Err(Invalid("expired"));
    }
    if iat_s > now_s.saturating_add(LEEWAY_S) {
        return Err(Invalid("issued in the future"));
    }
    let c = &claims.custom;
    if c.iss != issuer {
        return Err(Invalid("issuer does not match its key"));
    }
    if c.aud != cfg.audience {
        return Err(Invalid("audience is not this trust domain"));
    }
    if c.txn.is_empty() || c.sub.is_empty() {
        return Err(Invalid("no txn or sub"));
    }
    let actors = flatten(c.act.as_ref()).ok_or(Invalid("malformed act"))?;
    Ok(Inbound {
        claims: c.clone(),
        actors_key: actors.join("\u{0}"),
        actors,
        exp_s,
        iat_s,
    })
}

/// Signs `claims` valid from `now_s` for `ttl_s`.
pub fn mint(key: &Key, claims: TxnClaims, now_s: i64, ttl_s: u64) -> Result<String, String> {
    let at = |s: i64| chrono::DateTime::from_timestamp(s, 0).ok_or("time out of range");
    let mut c = Claims::new(claims);
    c.issued_at = Some(at(now_s)?);
    c.expiration = Some(at(
        now_s.saturating_add(i64::try_from(ttl_s).unwrap_or(3_600))
    )?);
    let header = Header::empty()
        .with_key_id(key.kid.clone())
        .with_token_type(TYP);
    Ed25519
        .token(&header, &c, &key.signing)
        .map_err(|_| "cannot serialize claims".to_string())
}

/// Per-worker state: the keyring, its loading, and the tokens minted and
/// verified (bounded; cleared whole when full, and when the key changes).
#[derive(Debug, Default)]
pub struct Signer {
    /// The keys.
    pub ring: Keyring,
    /// The key read in flight (callout token).
    pub inflight: Option<u32>,
    /// When to read the key next (ns).
    pub next_read_ns: u64,
    /// Reads that failed in a row.
    pub failures: u32,
    minted: HashMap<Vec<u8>, (Rc<str>, u64)>,
    verified: HashMap<String, Rc<Inbound>>,
}

impl Signer {
    /// A reusable token for `key`, if one is still fresh at `now_ns`.
    pub fn reuse(&self, key: &[u8], now_ns: u64) -> Option<Rc<str>> {
        self.minted
            .get(key)
            .filter(|(_, until)| now_ns < *until)
            .map(|(t, _)| Rc::clone(t))
    }

    /// Keeps a minted token for reuse until `until_ns`. When full, the
    /// stale ones go, then (still full) every other one: never the whole
    /// table at once, which would make a working set just above the
    /// bound sign every request.
    pub fn keep(&mut self, key: Vec<u8>, token: Rc<str>, until_ns: u64, max: usize, now_ns: u64) {
        if self.minted.len() >= max {
            self.minted.retain(|_, (_, u)| *u > now_ns);
            if self.minted.len() >= max {
                let mut n = 0usize;
                self.minted.retain(|_, _| {
                    n += 1;
                    n % 2 == 0
                });
            }
        }
        self.minted.insert(key, (token, until_ns));
    }

    /// An inbound token verified before, still unexpired at `now_s`.
    pub fn verified(&self, token: &str, now_s: i64) -> Option<Rc<Inbound>> {
        self.verified
            .get(token)
            .filter(|t| t.exp_s.saturating_add(LEEWAY_S) > now_s)
            .cloned()
    }

    /// Remembers a verified inbound token (at most `max`, and never more
    /// than [`MAX_VERIFIED`]); when full, the expired ones go, then all.
    pub fn remember(&mut self, token: &str, t: Rc<Inbound>, max: usize, now_s: i64) {
        if self.verified.len() >= max.min(MAX_VERIFIED) {
            self.verified
                .retain(|_, v| v.exp_s.saturating_add(LEEWAY_S) > now_s);
            if self.verified.len() >= max.min(MAX_VERIFIED) {
                self.verified.clear();
            }
        }
        self.verified.insert(token.to_string(), t);
    }

    /// Installs a freshly read keyring; tokens of another key are dropped.
    pub fn install(&mut self, ring: Keyring) {
        let same = match (&self.ring.current, &ring.current) {
            (Some(a), Some(b)) => a.kid == b.kid && a.signing == b.signing,
            _ => false,
        };
        if !same {
            self.minted.clear();
            self.verified.clear();
        }
        self.ring = ring;
    }
}

#[cfg(test)]
#[path = "txn_tests.rs"]
mod tests;
