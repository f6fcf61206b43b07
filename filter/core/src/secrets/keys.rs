//! Where the broker's entries live in shared data (one store for all
//! workers on a VM): the unambiguous key encoding, the token, value and
//! claim keys, an agent's cache [`principal`], and the reads of the claims
//! map and of leased entries. What is stored under the keys is decided by
//! the files that write them (login.rs, kv.rs, peers.rs).

use crate::config::VaultConfig;
use crate::host::Host;
use serde_json::Value;

/// An unambiguous key from parts: each part as `<byte length>:<bytes>`,
/// so no choice of agent id, path or role can make two different tuples
/// print alike.
fn key(parts: &[&str]) -> String {
    let mut k = String::new();
    for p in parts {
        k.push_str(&p.len().to_string());
        k.push(':');
        k.push_str(p);
    }
    k
}

/// Every cache key names the Vault cluster, auth mount and role (two
/// filter configurations on one VM id share shared data) and the agent's
/// principal (issuer and subject, see [`principal`]).
pub(super) fn token_key(cfg: &VaultConfig, agent: &str) -> String {
    format!(
        "agentplane/v2/token/{}",
        key(&[&cfg.cluster, &cfg.auth_mount, &cfg.role, agent])
    )
}

pub(super) fn value_key(cfg: &VaultConfig, agent: &str, path: &str) -> String {
    format!(
        "agentplane/v2/secret/{}",
        key(&[&cfg.cluster, &cfg.auth_mount, &cfg.role, agent, path])
    )
}

pub(super) fn claim_key(cfg: &VaultConfig, agent: &str, service: &str) -> String {
    key(&[&cfg.cluster, &cfg.auth_mount, &cfg.role, agent, service])
}

/// The cache identity of an agent: its issuer and subject together (two
/// issuers may both have a `support@clients`).
pub fn principal(issuer: Option<&str>, subject: &str) -> String {
    key(&[issuer.unwrap_or(""), subject])
}

/// Shared data key of the cross-worker claims map.
pub const CLAIMS_KEY: &str = "agentplane/v1/claims";

pub(super) fn claims<H: Host>(host: &H) -> (serde_json::Map<String, Value>, Option<u32>) {
    match host.shared_get(CLAIMS_KEY) {
        Some((bytes, cas)) => (
            serde_json::from_slice::<Value>(&bytes)
                .ok()
                .and_then(|v| v.as_object().cloned())
                .unwrap_or_default(),
            Some(cas),
        ),
        None => (serde_json::Map::new(), None),
    }
}

/// A shared entry `{"until": ns, ...}` still valid at `now`.
pub(super) fn read_shared<H: Host>(host: &H, key: &str, now: u64) -> Option<(u64, Value)> {
    let (bytes, _) = host.shared_get(key)?;
    let v: Value = serde_json::from_slice(&bytes).ok()?;
    let until = v.get("until")?.as_u64()?;
    (now < until).then_some((until, v))
}
