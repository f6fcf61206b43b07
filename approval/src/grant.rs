//! Grants: the compact JWS (EdDSA over Ed25519) handed to the filter with
//! an approval, and the JWKS that publishes its public key. The key is a
//! 32-byte seed read by `config`; nothing here reads files or the clock.

use crate::store::Approval;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use ed25519_dalek::{Signer as _, SigningKey};
use serde_json::{json, Value};

/// The grant's `typ`: what the filter checks before anything else.
pub const GRANT_TYP: &str = "agentplane-approval+jwt";
/// The grant's audience.
pub const GRANT_AUD: &str = "agentplane";

/// The signing key and its id.
pub struct Signer {
    key: SigningKey,
    kid: String,
}

impl Signer {
    /// A signer over this seed, published as `kid`.
    pub fn new(seed: [u8; 32], kid: String) -> Signer {
        Signer {
            key: SigningKey::from_bytes(&seed),
            kid,
        }
    }

    /// The grant for an approval handed out at `now`.
    pub fn grant(&self, a: &Approval, now: u64) -> String {
        let header = json!({"alg": "EdDSA", "typ": GRANT_TYP, "kid": self.kid});
        let claims = json!({
            "jti": a.id,
            "binding": a.binding,
            "approver": a.approver,
            "iat": now,
            "exp": a.exp,
            "aud": GRANT_AUD,
        });
        let mut out = URL_SAFE_NO_PAD.encode(header.to_string());
        out.push('.');
        out.push_str(&URL_SAFE_NO_PAD.encode(claims.to_string()));
        let sig = self.key.sign(out.as_bytes());
        out.push('.');
        out.push_str(&URL_SAFE_NO_PAD.encode(sig.to_bytes()));
        out
    }

    /// `GET /jwks.json`.
    pub fn jwks(&self) -> Value {
        json!({"keys": [{
            "kty": "OKP",
            "crv": "Ed25519",
            "x": URL_SAFE_NO_PAD.encode(self.key.verifying_key().to_bytes()),
            "kid": self.kid,
            "use": "sig",
            "alg": "EdDSA",
        }]})
    }
}

#[cfg(test)]
#[allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]
mod tests {
    use super::*;
    use ed25519_dalek::{Signature, Verifier, VerifyingKey};

    fn approval() -> Approval {
        Approval {
            id: "abc".into(),
            binding: "sha256:00ff".into(),
            approver: "alice".into(),
            approved_at: 1000,
            exp: 1300,
            decision_id: "d".into(),
        }
    }

    fn part(s: &str) -> Value {
        serde_json::from_slice(&URL_SAFE_NO_PAD.decode(s).unwrap()).unwrap()
    }

    /// The public key as a verifier reads it: from the JWKS document.
    fn published(s: &Signer) -> VerifyingKey {
        let jwks = s.jwks();
        let k = &jwks["keys"][0];
        assert_eq!(k["kty"], "OKP");
        assert_eq!(k["crv"], "Ed25519");
        assert_eq!(k["kid"], "approval-1");
        assert_eq!(k["alg"], "EdDSA");
        let x: [u8; 32] = URL_SAFE_NO_PAD
            .decode(k["x"].as_str().unwrap())
            .unwrap()
            .try_into()
            .unwrap();
        VerifyingKey::from_bytes(&x).unwrap()
    }

    #[test]
    fn a_grant_verifies_with_the_published_key_and_says_what_was_approved() {
        let s = Signer::new([7u8; 32], "approval-1".into());
        let g = s.grant(&approval(), 1200);
        let parts: Vec<&str> = g.split('.').collect();
        assert_eq!(parts.len(), 3);
        let signed = format!("{}.{}", parts[0], parts[1]);
        let sig: [u8; 64] = URL_SAFE_NO_PAD
            .decode(parts[2])
            .unwrap()
            .try_into()
            .unwrap();
        let key = published(&s);
        key.verify(signed.as_bytes(), &Signature::from_bytes(&sig))
            .unwrap();
        assert_eq!(
            part(parts[0]),
            json!({"alg": "EdDSA", "typ": "agentplane-approval+jwt", "kid": "approval-1"})
        );
        assert_eq!(
            part(parts[1]),
            json!({"jti": "abc", "binding": "sha256:00ff", "approver": "alice",
                   "iat": 1200, "exp": 1300, "aud": "agentplane"})
        );
        // An edited claim no longer verifies.
        let forged = URL_SAFE_NO_PAD.encode(
            json!({"jti": "abc", "binding": "sha256:00fe", "approver": "alice",
                   "iat": 1200, "exp": 1300, "aud": "agentplane"})
            .to_string(),
        );
        let edited = format!("{}.{forged}", parts[0]);
        assert!(key
            .verify(edited.as_bytes(), &Signature::from_bytes(&sig))
            .is_err());
        // Another seed's key does not verify it.
        let other = published(&Signer::new([8u8; 32], "approval-1".into()));
        assert!(other
            .verify(signed.as_bytes(), &Signature::from_bytes(&sig))
            .is_err());
    }
}
