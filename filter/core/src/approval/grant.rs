//! The approval service's grant: a compact JWS (EdDSA, `typ`
//! `agentplane-approval+jwt`) over the approval's id, the binding it
//! approves, the approver and its lifetime. The filter lets a call through
//! only on a grant that verifies with a configured key, names this call's
//! binding, is unexpired and names an approver the policy accepts.

use super::Granted;
use ed25519_dalek::VerifyingKey;
use jwt_compact::{alg::Ed25519, AlgorithmExt, UntrustedToken};
use serde::Deserialize;

/// The grant's `typ`.
pub const TYP: &str = "agentplane-approval+jwt";
/// The grant's `aud`.
pub const AUDIENCE: &str = "agentplane";
/// Longest grant read.
const MAX_GRANT_BYTES: usize = 4096;
/// Clock skew allowed between the approval service and the proxy.
const LEEWAY_S: i64 = 30;

#[derive(Debug, Deserialize)]
struct GrantClaims {
    jti: String,
    binding: String,
    approver: String,
    aud: String,
}

/// Verifies `grant` for the call bound as `binding`, which the policy
/// lets `approvers` approve, at `now_s`. `keys`: (kid, key) pairs.
pub fn verify(
    grant: &str,
    keys: &[(String, VerifyingKey)],
    binding: &str,
    approvers: &[String],
    now_s: i64,
) -> Result<Granted, &'static str> {
    if grant.len() > MAX_GRANT_BYTES {
        return Err("grant too long");
    }
    let t = UntrustedToken::new(grant).map_err(|_| "malformed grant")?;
    if t.algorithm() != "EdDSA" {
        return Err("grant algorithm is not EdDSA");
    }
    if t.header().token_type.as_deref() != Some(TYP) {
        return Err("grant typ is not agentplane-approval+jwt");
    }
    let kid = t.header().key_id.as_deref().ok_or("grant has no kid")?;
    let key = keys
        .iter()
        .find(|(k, _)| k == kid)
        .map(|(_, v)| v)
        .ok_or("grant signed with an unknown key")?;
    let checked = Ed25519
        .validator::<GrantClaims>(key)
        .validate(&t)
        .map_err(|_| "grant signature does not verify")?;
    let claims = checked.claims();
    let exp = claims
        .expiration
        .map(|e| e.timestamp())
        .ok_or("grant has no exp")?;
    if exp.saturating_add(LEEWAY_S) <= now_s {
        return Err("grant expired");
    }
    let c = &claims.custom;
    if c.aud != AUDIENCE {
        return Err("grant is for another audience");
    }
    if c.binding != binding {
        return Err("grant is for another call");
    }
    if !approvers.contains(&c.approver) {
        return Err("grant names an approver the policy does not accept");
    }
    if c.jti.is_empty() {
        return Err("grant has no id");
    }
    Ok(Granted {
        id: c.jti.clone(),
        approver: c.approver.clone(),
        binding: c.binding.clone(),
        expires_s: exp,
    })
}
