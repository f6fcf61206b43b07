//! Identity providers. [`Idp`] is the in-process one: an RS256 key that
//! mints tokens with the seed's claim layout, its JWKS inlined into
//! Envoy's configuration (fast, and any claim a test wants). [`provider`]
//! runs the real one (`idp/server.mjs`, oidc-provider under Node) for the
//! tests of registration, key rotation, RFC 8707 resources and the
//! approvers' sign-in ([`browser`] signs in as a person would). They stay
//! two types: one signs what the test asks, the other issues what the
//! product would.

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use jwt_compact::alg::{Rsa, RsaPrivateKey};
use jwt_compact::prelude::*;
use rsa::traits::PublicKeyParts;
use serde_json::{json, Map, Value};

pub mod browser;
pub mod exchange;
pub mod provider;

/// Issuer used by the harness's identity provider.
pub const ISSUER: &str = "https://idp.agentplane.test/";
/// Audience the control plane expects.
pub const AUDIENCE: &str = "https://mcp.example.com/";

/// An identity provider with one RS256 key.
pub struct Idp {
    key: RsaPrivateKey,
    kid: String,
}

impl Idp {
    /// Generates a fresh 2048-bit key.
    pub fn new() -> Idp {
        let key = RsaPrivateKey::new(&mut rand::thread_rng(), 2048).unwrap();
        Idp {
            key,
            kid: "agentplane-test-1".into(),
        }
    }

    /// The JWKS document Envoy (and later Vault) verify against.
    pub fn jwks(&self) -> String {
        let pk = self.key.to_public_key();
        json!({"keys": [{
            "kty": "RSA", "alg": "RS256", "use": "sig", "kid": self.kid,
            "n": URL_SAFE_NO_PAD.encode(pk.n().to_bytes_be()),
            "e": URL_SAFE_NO_PAD.encode(pk.e().to_bytes_be()),
        }]})
        .to_string()
    }

    /// Mints a token with `claims` plus iss/aud defaults and `exp` in
    /// `ttl_secs` (negative: already expired).
    pub fn mint(&self, claims: Value, ttl_secs: i64) -> String {
        let mut custom: Map<String, Value> = claims.as_object().cloned().unwrap_or_default();
        custom.entry("iss").or_insert(json!(ISSUER));
        custom.entry("aud").or_insert(json!(AUDIENCE));
        let now = chrono_now();
        let mut c = Claims::new(custom);
        c.issued_at = Some(now - chrono::Duration::seconds(60));
        c.expiration = Some(now + chrono::Duration::seconds(ttl_secs));
        let header = Header::empty().with_key_id(&self.kid);
        Rsa::rs256().token(&header, &c, &self.key).unwrap()
    }

    /// The public key as PEM (Vault's `jwt_validation_pubkeys`).
    pub fn public_pem(&self) -> String {
        use rsa::pkcs8::EncodePublicKey;
        self.key
            .to_public_key()
            .to_public_key_pem(rsa::pkcs8::LineEnding::LF)
            .unwrap()
    }

    /// The seed's support agent: `support-triage@clients`, team
    /// customer-success, type support, production, with skills:invoke and
    /// data:read.
    pub fn triage_token(&self) -> String {
        self.triage_token_with(&["skills:invoke", "data:read"])
    }

    /// The seed's support agent with these permissions.
    pub fn triage_token_with(&self, perms: &[&str]) -> String {
        self.agent_token(
            "support-triage@clients",
            "customer-success",
            "support",
            "production",
            perms,
        )
    }

    /// A token for an agent with the seed's claim layout.
    pub fn agent_token(
        &self,
        sub: &str,
        team: &str,
        agent_type: &str,
        env: &str,
        perms: &[&str],
    ) -> String {
        self.agent_token_for(AUDIENCE, sub, team, agent_type, env, perms)
    }

    /// [`Idp::agent_token`] for one audience: what a provider issues for
    /// `resource=<audience>` (RFC 8707), e.g. a service's `resource_uri`.
    pub fn agent_token_for(
        &self,
        audience: &str,
        sub: &str,
        team: &str,
        agent_type: &str,
        env: &str,
        perms: &[&str],
    ) -> String {
        self.mint(
            json!({
                "aud": audience,
                "sub": sub, "azp": sub, "gty": "client-credentials",
                "permissions": perms,
                "https://mcp.example.com/agent_type": agent_type,
                "https://mcp.example.com/team": team,
                "https://mcp.example.com/environment": env,
            }),
            3600,
        )
    }
}

impl Default for Idp {
    fn default() -> Self {
        Self::new()
    }
}

fn chrono_now() -> chrono::DateTime<chrono::Utc> {
    chrono::Utc::now()
}
