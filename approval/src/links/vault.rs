//! Where linked accounts' refresh tokens live: OpenBao's (or Vault's) KV
//! version 2 engine, one secret per (service, person) at
//! `<mount>/data/<prefix>/<service>/<sha256 of the person's name>` (the
//! name stays out of paths, which audit logs show), holding the refresh
//! token, the person's name and when it was linked. An unlink deletes
//! every version (`<mount>/metadata/...`): a dead token is not kept.
//! Errors name the operation and the status, never a token.

use serde_json::{json, Value};
use sha2::{Digest, Sha256};

/// The KV store and the broker's token for it. Not `Debug`: it holds it.
pub struct Vault {
    addr: String,
    token: String,
    mount: String,
    prefix: String,
    http: reqwest::Client,
}

/// One stored link. Not `Debug`: it holds the refresh token.
pub struct Link {
    pub refresh_token: String,
    pub user: String,
    pub linked_at: u64,
}

impl Vault {
    pub fn new(
        addr: String,
        token: String,
        mount: String,
        prefix: String,
    ) -> Result<Vault, String> {
        let http = crate::oidc::http_client(5)?;
        Ok(Vault {
            addr: addr.trim_end_matches('/').to_string(),
            token,
            mount: mount.trim_matches('/').to_string(),
            prefix: prefix.trim_matches('/').to_string(),
            http,
        })
    }

    /// The secret's path under the mount, after `data/` or `metadata/`.
    pub fn path(&self, upstream: &str, user: &str) -> String {
        let who = crate::links::hex(&Sha256::digest(user.as_bytes()));
        format!("{}/{upstream}/{who}", self.prefix)
    }

    fn url(&self, kind: &str, upstream: &str, user: &str) -> String {
        format!(
            "{}/v1/{}/{kind}/{}",
            self.addr,
            self.mount,
            self.path(upstream, user)
        )
    }

    /// The link of `user` at `upstream`, if there is one.
    pub async fn get(&self, upstream: &str, user: &str) -> Result<Option<Link>, String> {
        let r = self
            .http
            .get(self.url("data", upstream, user))
            .header("x-vault-token", &self.token)
            .send()
            .await
            .map_err(|e| format!("OpenBao read: {}", e.without_url()))?;
        match r.status().as_u16() {
            404 => return Ok(None),
            200 => {}
            s => return Err(format!("OpenBao read: status {s}")),
        }
        let v: Value = r
            .json()
            .await
            .map_err(|_| "OpenBao read: not JSON".to_string())?;
        let d = v.get("data").and_then(|d| d.get("data"));
        let field = |k: &str| d.and_then(|d| d.get(k));
        let (Some(rt), Some(u)) = (
            field("refresh_token").and_then(Value::as_str),
            field("user").and_then(Value::as_str),
        ) else {
            // Deleted (a soft-deleted version reads as data: null) or not ours.
            return Ok(None);
        };
        // The name is in the secret, so a digest collision cannot hand one
        // person's link to another.
        if u != user {
            return Ok(None);
        }
        Ok(Some(Link {
            refresh_token: rt.to_string(),
            user: u.to_string(),
            linked_at: field("linked_at").and_then(Value::as_u64).unwrap_or(0),
        }))
    }

    /// Stores (or replaces) a link.
    pub async fn put(&self, upstream: &str, link: &Link) -> Result<(), String> {
        let body = json!({"data": {
            "refresh_token": link.refresh_token, "user": link.user, "linked_at": link.linked_at,
        }});
        let r = self
            .http
            .post(self.url("data", upstream, &link.user))
            .header("x-vault-token", &self.token)
            .json(&body)
            .send()
            .await
            .map_err(|e| format!("OpenBao write: {}", e.without_url()))?;
        if !r.status().is_success() {
            return Err(format!("OpenBao write: status {}", r.status().as_u16()));
        }
        Ok(())
    }

    /// Forgets a link, every version of it.
    pub async fn delete(&self, upstream: &str, user: &str) -> Result<(), String> {
        let r = self
            .http
            .delete(self.url("metadata", upstream, user))
            .header("x-vault-token", &self.token)
            .send()
            .await
            .map_err(|e| format!("OpenBao delete: {}", e.without_url()))?;
        if !r.status().is_success() && r.status().as_u16() != 404 {
            return Err(format!("OpenBao delete: status {}", r.status().as_u16()));
        }
        Ok(())
    }
}
