//! Linked accounts: per-person credentials at third-party services that
//! run their own OAuth (GitHub-, Slack-style), for agents acting for that
//! person (docs/acting-for-users.md#linked-accounts).
//!
//! A person links once: signed in here (at agentplane's provider), they
//! press "Link", authorize the broker at the service (code flow, PKCE,
//! `state` bound to their browser and their session), and the refresh
//! token the service returns is stored in OpenBao under (service,
//! person) ([`vault`]). The filter then asks `/token` (RFC 8693, as any
//! token service: the caller's verified token as `subject_token`, the
//! service's name as `audience`) and gets a fresh access token for the
//! person the caller acts for, refreshed here when it expires (rotated
//! refresh tokens written back); no link, or one the service revoked, is
//! `link_required` with the link page's URL, which the filter turns into
//! a 401 or a URL elicitation.
//!
//! Here: the configuration (`--links-file`), the state (pending links,
//! access tokens cached until shortly before they expire) and the three
//! operations; `routes` has the HTTP side.

pub mod routes;
pub mod upstream;
pub mod vault;

use crate::oidc::random_b64;
use serde::Deserialize;
use std::collections::HashMap;
use std::sync::Mutex;
use upstream::{RefreshError, Upstream};
use vault::{Link, Vault};

/// An access token is handed out until this long before it expires.
pub const SKEW_S: u64 = 30;
/// How long a person has to authorize at the service.
pub const PENDING_S: u64 = 600;
/// Links in progress, and cached access tokens, at most.
const MAX_ENTRIES: usize = 10_000;

/// `bytes` as lowercase hex.
pub fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct FileUpstream {
    issuer: String,
    client_id: String,
    client_secret_file: String,
    #[serde(default)]
    scopes: Vec<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct FileVault {
    addr: String,
    token_file: String,
    #[serde(default = "default_mount")]
    mount: String,
    #[serde(default = "default_prefix")]
    prefix: String,
}

fn default_mount() -> String {
    "secret".into()
}
fn default_prefix() -> String {
    "agentplane/links".into()
}
fn default_client() -> String {
    "agentplane-filter".into()
}

/// Where the callers' tokens come from, when not from `--issuer`.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct FileSubjects {
    issuer: String,
    jwks_uri: String,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct File {
    /// The filter's client id at `/token` (its secret: the filter key).
    #[serde(default = "default_client")]
    filter_client_id: String,
    openbao: FileVault,
    upstreams: HashMap<String, FileUpstream>,
    #[serde(default)]
    subject_tokens: Option<FileSubjects>,
}

/// The issuer of the tokens the filter presents, when it is not the one
/// people sign in at (agents' tokens from one provider, people's sign-in
/// at another): its `iss` and its JWKS, fetched on first use and again
/// for a key id not yet seen.
pub struct Subjects {
    pub issuer: String,
    jwks_uri: String,
    http: reqwest::Client,
    keys: tokio::sync::Mutex<Vec<crate::oidc::Key>>,
}

impl Subjects {
    /// Verifies a subject token: its `sub` and its actor.
    pub async fn verify(&self, token: &str, now: u64) -> Result<(String, Option<String>), String> {
        let kid = jwt_compact::UntrustedToken::new(token)
            .map_err(|_| "subject token: unreadable".to_string())?
            .header()
            .key_id
            .clone();
        let keys =
            crate::oidc::keys_for(&self.http, &self.jwks_uri, &self.keys, kid.as_deref()).await?;
        crate::oidc::verify_access_token(token, &keys, &self.issuer, now)
    }
}

/// A service name: what `audience` names and URLs carry.
fn good_name(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 64
        && s.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'_')
}

/// A link in progress: what the service's callback must match.
struct Pending {
    upstream: String,
    user: String,
    browser: String,
    verifier: String,
    expires_at: u64,
}

/// An access token handed out, until `until`. Not `Debug`.
struct Cached {
    token: String,
    until: u64,
}

/// What `/token` answers.
pub enum Issued {
    /// The token and the seconds it still lives.
    Token(String, u64),
    /// No link, or a dead one: the page to (re)link at.
    LinkRequired,
    /// Something failed here or at the service: try later.
    Unavailable(String),
}

/// The linked-accounts half of the service.
pub struct Links {
    pub filter_client_id: String,
    /// Another issuer of subject tokens than `--issuer`, if configured.
    pub subjects: Option<Subjects>,
    upstreams: HashMap<String, Upstream>,
    vault: Vault,
    pending: Mutex<HashMap<String, Pending>>,
    cache: Mutex<HashMap<(String, String), Cached>>,
    /// One refresh at a time: a rotated refresh token must be written
    /// back before anyone uses the old one (which the service now refuses).
    refreshing: tokio::sync::Mutex<()>,
}

fn read_secret(what: &str, path: &str) -> Result<String, String> {
    let text = std::fs::read_to_string(path).map_err(|e| format!("{what} {path}: {e}"))?;
    let line = text.trim_end_matches(['\n', '\r']);
    if line.is_empty() || line.contains('\n') {
        return Err(format!("{what} {path}: expected one non-empty line"));
    }
    Ok(line.to_string())
}

impl Links {
    /// Reads `--links-file` and the secret files it names. Errors name the
    /// field or file, never a secret.
    pub fn load(path: &str) -> Result<Links, String> {
        let text =
            std::fs::read_to_string(path).map_err(|e| format!("--links-file {path}: {e}"))?;
        let f: File =
            serde_json::from_str(&text).map_err(|e| format!("--links-file {path}: {e}"))?;
        if f.filter_client_id.is_empty() {
            return Err(format!("--links-file {path}: filter_client_id is empty"));
        }
        let token = read_secret("openbao.token_file", &f.openbao.token_file)?;
        let vault = Vault::new(f.openbao.addr, token, f.openbao.mount, f.openbao.prefix)?;
        let mut upstreams = HashMap::new();
        for (name, u) in f.upstreams {
            if !good_name(&name) {
                return Err(format!(
                    "--links-file {path}: upstream {name:?}: names are 1-64 of a-z 0-9 - _"
                ));
            }
            if url::Url::parse(&u.issuer)
                .map(|x| !matches!(x.scheme(), "http" | "https"))
                .unwrap_or(true)
            {
                return Err(format!(
                    "--links-file {path}: upstreams.{name}.issuer is not an http(s) URL"
                ));
            }
            if u.client_id.is_empty() {
                return Err(format!(
                    "--links-file {path}: upstreams.{name}.client_id is empty"
                ));
            }
            let secret = read_secret(
                &format!("upstreams.{name}.client_secret_file"),
                &u.client_secret_file,
            )?;
            let up = Upstream::new(name.clone(), u.issuer, u.client_id, secret, u.scopes)?;
            upstreams.insert(name, up);
        }
        if upstreams.is_empty() {
            return Err(format!("--links-file {path}: no upstreams"));
        }
        let subjects = match f.subject_tokens {
            None => None,
            Some(s) => {
                if url::Url::parse(&s.jwks_uri).is_err() || s.issuer.is_empty() {
                    return Err(format!(
                        "--links-file {path}: subject_tokens needs an issuer and a jwks_uri URL"
                    ));
                }
                let http = crate::oidc::http_client(5)?;
                Some(Subjects {
                    issuer: s.issuer,
                    jwks_uri: s.jwks_uri,
                    http,
                    keys: tokio::sync::Mutex::new(Vec::new()),
                })
            }
        };
        Ok(Links {
            filter_client_id: f.filter_client_id,
            subjects,
            upstreams,
            vault,
            pending: Mutex::new(HashMap::new()),
            cache: Mutex::new(HashMap::new()),
            refreshing: tokio::sync::Mutex::new(()),
        })
    }

    /// The configured service of this name.
    pub fn upstream(&self, name: &str) -> Option<&Upstream> {
        self.upstreams.get(name)
    }

    fn cached(
        &self,
        upstream: &str,
        user: &str,
        now: u64,
    ) -> Result<Option<(String, u64)>, String> {
        let cache = self
            .cache
            .lock()
            .map_err(|_| "cache lock poisoned".to_string())?;
        Ok(cache
            .get(&(upstream.to_string(), user.to_string()))
            .filter(|c| c.until > now.saturating_add(SKEW_S))
            .map(|c| (c.token.clone(), c.until - now)))
    }

    fn keep(&self, upstream: &str, user: &str, token: String, until: u64, now: u64) {
        if let Ok(mut cache) = self.cache.lock() {
            if cache.len() >= MAX_ENTRIES {
                cache.retain(|_, c| c.until > now);
                if cache.len() >= MAX_ENTRIES {
                    cache.clear();
                }
            }
            cache.insert(
                (upstream.to_string(), user.to_string()),
                Cached { token, until },
            );
        }
    }

    fn forget(&self, upstream: &str, user: &str) {
        if let Ok(mut cache) = self.cache.lock() {
            cache.remove(&(upstream.to_string(), user.to_string()));
        }
    }

    /// A fresh access token of `user` at `upstream` (a known one).
    pub async fn token(&self, up: &Upstream, user: &str, now: u64) -> Issued {
        match self.cached(&up.name, user, now) {
            Ok(Some((t, left))) => return Issued::Token(t, left),
            Ok(None) => {}
            Err(e) => return Issued::Unavailable(e),
        }
        let _one = self.refreshing.lock().await;
        // Someone may have refreshed while this waited.
        if let Ok(Some((t, left))) = self.cached(&up.name, user, now) {
            return Issued::Token(t, left);
        }
        let link = match self.vault.get(&up.name, user).await {
            Ok(Some(l)) => l,
            Ok(None) => return Issued::LinkRequired,
            Err(e) => return Issued::Unavailable(e),
        };
        match up.refresh(&link.refresh_token).await {
            Ok(t) => {
                if let Some(rotated) = t.refresh_token {
                    let kept = Link {
                        refresh_token: rotated,
                        user: user.to_string(),
                        linked_at: link.linked_at,
                    };
                    // The old token is dead at the service now: without the
                    // new one stored, the link would die with this process.
                    if let Err(e) = self.vault.put(&up.name, &kept).await {
                        return Issued::Unavailable(e);
                    }
                }
                let until = now.saturating_add(t.expires_in);
                self.keep(&up.name, user, t.access_token.clone(), until, now);
                Issued::Token(t.access_token, t.expires_in)
            }
            Err(RefreshError::Revoked) => {
                // Dead at the service: forget it, so the page says "not
                // linked" and the next call asks for a new link at once.
                if let Err(e) = self.vault.delete(&up.name, user).await {
                    return Issued::Unavailable(e);
                }
                self.forget(&up.name, user);
                Issued::LinkRequired
            }
            Err(RefreshError::Unavailable(e)) => Issued::Unavailable(e),
        }
    }

    /// Whether `user` has a link at `upstream`.
    pub async fn linked(&self, upstream: &str, user: &str) -> Result<bool, String> {
        Ok(self.vault.get(upstream, user).await?.is_some())
    }

    /// Starts a link: remembers it under a fresh `state` and returns the
    /// service's authorization URL.
    pub async fn start(
        &self,
        up: &Upstream,
        user: &str,
        browser: &str,
        redirect_uri: &str,
        now: u64,
    ) -> Result<String, String> {
        let (state, verifier) = (random_b64(32), random_b64(32));
        let url = up.authorize_url(&state, &verifier, redirect_uri).await?;
        let mut pending = self
            .pending
            .lock()
            .map_err(|_| "pending lock poisoned".to_string())?;
        if pending.len() >= MAX_ENTRIES {
            pending.retain(|_, p| p.expires_at > now);
        }
        // A person starting over and over replaces their own oldest.
        let mine: Vec<(String, u64)> = pending
            .iter()
            .filter(|(_, p)| p.user == user)
            .map(|(k, p)| (k.clone(), p.expires_at))
            .collect();
        if mine.len() >= 8 {
            if let Some((k, _)) = mine.iter().min_by_key(|(_, e)| *e) {
                pending.remove(k);
            }
        }
        if pending.len() >= MAX_ENTRIES {
            return Err("too many links in progress".into());
        }
        pending.insert(
            state,
            Pending {
                upstream: up.name.clone(),
                user: user.to_string(),
                browser: browser.to_string(),
                verifier,
                expires_at: now.saturating_add(PENDING_S),
            },
        );
        Ok(url)
    }

    /// Ends a link at the service's callback: the `state` must be one this
    /// browser (`browser`, its cookie) started for this person (`user`,
    /// its session) at this service; the code is redeemed and the refresh
    /// token stored.
    #[allow(clippy::too_many_arguments)]
    pub async fn finish(
        &self,
        up: &Upstream,
        state: &str,
        browser: &str,
        user: &str,
        code: &str,
        redirect_uri: &str,
        now: u64,
    ) -> Result<(), String> {
        let p = {
            let mut pending = self
                .pending
                .lock()
                .map_err(|_| "pending lock poisoned".to_string())?;
            pending.remove(state)
        };
        let p = p
            .filter(|p| p.expires_at > now)
            .ok_or("this link was not started here, or took too long")?;
        if !crate::pages::ct_eq(&p.browser, browser) {
            return Err("this link was started in another browser".into());
        }
        if p.user != user || p.upstream != up.name {
            return Err("this link was started for another person or service".into());
        }
        let t = up.redeem(code, &p.verifier, redirect_uri).await?;
        self.store(up, user, t, now).await
    }

    /// Stores a new link and its first access token. Under the refresh
    /// lock: a refresh of the old link in flight would otherwise write its
    /// rotated token back over the new link (the person relinked, and the
    /// old link wins), or, refused at the service (which may revoke the
    /// old grant on a new consent), delete the new link it never read.
    async fn store(
        &self,
        up: &Upstream,
        user: &str,
        t: upstream::Tokens,
        now: u64,
    ) -> Result<(), String> {
        let refresh_token = t
            .refresh_token
            .ok_or_else(|| format!("{} gave no refresh token", up.name))?;
        let link = Link {
            refresh_token,
            user: user.to_string(),
            linked_at: now,
        };
        let _one = self.refreshing.lock().await;
        self.vault.put(&up.name, &link).await?;
        self.keep(
            &up.name,
            user,
            t.access_token,
            now.saturating_add(t.expires_in),
            now,
        );
        Ok(())
    }

    /// Removes a link.
    pub async fn unlink(&self, upstream: &str, user: &str) -> Result<(), String> {
        let _one = self.refreshing.lock().await;
        self.vault.delete(upstream, user).await?;
        self.forget(upstream, user);
        Ok(())
    }
}

#[cfg(test)]
#[path = "tests.rs"]
mod tests;
