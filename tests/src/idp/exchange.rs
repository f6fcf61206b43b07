//! Token exchange (RFC 8693) at the real provider: the clients allowed it
//! (`EXCHANGE_CLIENTS`), starting a provider with them, an exchange as a
//! gateway sends it, and checking what comes back against the provider's
//! published keys.

use super::provider::{form_encode, IdProvider};
use crate::{http, Response};
use base64::Engine;
use jwt_compact::alg::Rsa;
use jwt_compact::prelude::*;
use serde_json::{json, Value};

/// The grant type's URN.
pub const GRANT: &str = "urn:ietf:params:oauth:grant-type:token-exchange";
/// The token type of access tokens (subject, actor and issued).
pub const ACCESS_TOKEN: &str = "urn:ietf:params:oauth:token-type:access_token";

/// A client allowed the exchange: one entry of `EXCHANGE_CLIENTS`.
#[derive(Debug, Clone)]
pub struct ExchangeClient {
    pub client_id: String,
    pub client_secret: String,
    /// Audiences a subject token must carry (one of them).
    pub accepted_audiences: Vec<String>,
    /// The upstreams it may ask tokens for.
    pub allowed_resources: Vec<String>,
    /// The scopes it may ask for.
    pub allowed_scopes: Vec<String>,
}

impl ExchangeClient {
    /// A client with a fresh secret.
    pub fn new(client_id: &str, accepted: &[&str], resources: &[&str], scopes: &[&str]) -> Self {
        let own = |l: &[&str]| l.iter().map(|s| s.to_string()).collect();
        ExchangeClient {
            client_id: client_id.into(),
            client_secret: format!("secret-{:032x}", rand::random::<u128>()),
            accepted_audiences: own(accepted),
            allowed_resources: own(resources),
            allowed_scopes: own(scopes),
        }
    }

    /// Its entry in `EXCHANGE_CLIENTS`.
    pub fn metadata(&self) -> Value {
        json!({
            "client_id": self.client_id, "client_secret": self.client_secret,
            "accepted_audiences": self.accepted_audiences,
            "allowed_resources": self.allowed_resources,
            "allowed_scopes": self.allowed_scopes,
        })
    }
}

impl IdProvider {
    /// Starts the provider with these exchange clients and more variables
    /// (e.g. `TOKEN_TTL`).
    pub fn start_with_exchange(clients: &[ExchangeClient], more: &[(&str, &str)]) -> IdProvider {
        let iat = format!("iat-{}-{}", std::process::id(), rand::random::<u64>());
        let admin = format!("admin-{}-{}", std::process::id(), rand::random::<u64>());
        let list = Value::from(
            clients
                .iter()
                .map(ExchangeClient::metadata)
                .collect::<Vec<_>>(),
        )
        .to_string();
        let mut env = vec![
            ("INITIAL_ACCESS_TOKEN", iat.as_str()),
            ("ADMIN_TOKEN", &admin),
            ("EXCHANGE_CLIENTS", &list),
        ];
        env.extend_from_slice(more);
        IdProvider::spawn(&env).unwrap_or_else(|e| panic!("{e}"))
    }

    /// A token exchange request authenticated as `client_id`:`secret`
    /// (`client_secret_basic`) with these form fields besides
    /// `grant_type`: the raw answer.
    pub fn exchange_as(&self, client_id: &str, secret: &str, form: &[(&str, &str)]) -> Response {
        let basic =
            base64::engine::general_purpose::STANDARD.encode(format!("{client_id}:{secret}"));
        let body = std::iter::once(("grant_type", GRANT))
            .chain(form.iter().copied())
            .map(|(k, v)| format!("{}={}", form_encode(k), form_encode(v)))
            .collect::<Vec<_>>()
            .join("&");
        http(
            self.port,
            "POST",
            "/token",
            &[
                ("authorization", &format!("Basic {basic}")),
                ("content-type", "application/x-www-form-urlencoded"),
            ],
            &body,
        )
    }

    /// [`IdProvider::exchange_as`] for an exchange client.
    pub fn exchange(&self, client: &ExchangeClient, form: &[(&str, &str)]) -> Response {
        self.exchange_as(&client.client_id, &client.client_secret, form)
    }

    /// A JWT's claims, its RS256 signature checked against the provider's
    /// published JWKS (the key its `kid` names). Panics when it does not
    /// verify.
    pub fn verified_claims(&self, jwt: &str) -> (Value, Value) {
        let jwks: Value = serde_json::from_str(&self.jwks()).unwrap_or_default();
        let token = UntrustedToken::new(jwt).unwrap_or_else(|e| panic!("not a JWT: {e}"));
        assert_eq!(token.algorithm(), "RS256");
        let kid = token.header().key_id.clone().unwrap_or_default();
        let jwk = jwks["keys"]
            .as_array()
            .and_then(|ks| ks.iter().find(|k| k["kid"] == kid.as_str()))
            .unwrap_or_else(|| panic!("kid {kid} not in {jwks}"));
        let b64 = |k: &str| {
            let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
                .decode(jwk[k].as_str().unwrap_or_default())
                .unwrap_or_default();
            rsa::BigUint::from_bytes_be(&bytes)
        };
        let key = rsa::RsaPublicKey::new(b64("n"), b64("e")).unwrap_or_else(|e| panic!("{e}"));
        let checked: Token<Value> = Rsa::rs256()
            .validator(&key)
            .validate(&token)
            .unwrap_or_else(|e| panic!("signature: {e}"));
        let header = jwt.split('.').next().unwrap_or_default();
        let header: Value = serde_json::from_slice(
            &base64::engine::general_purpose::URL_SAFE_NO_PAD
                .decode(header)
                .unwrap_or_default(),
        )
        .unwrap_or_default();
        let mut claims = checked.claims().custom.clone();
        // jwt_compact keeps exp and iat apart from the custom claims.
        if let Some(exp) = checked.claims().expiration {
            claims["exp"] = json!(exp.timestamp());
        }
        (header, claims)
    }
}
