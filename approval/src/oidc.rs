//! Signing approvers in at the identity provider: discovery (fetched on
//! first use and kept), the authorization request (code flow, PKCE S256,
//! state, nonce), the code exchange (client_secret_basic) and the ID
//! token's verification (RS256 against the provider's JWKS; iss, aud, exp,
//! nonce). Sessions and cookies are `sessions`' and `routes`' business.
//! Errors say what failed, never a code, a token or the secret.

use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use base64::Engine as _;
use jwt_compact::alg::Rsa;
use jwt_compact::{AlgorithmExt as _, UntrustedToken};
use rand::RngCore as _;
use rsa::{BigUint, RsaPublicKey};
use serde::Deserialize;
use serde_json::Value;
use sha2::{Digest, Sha256};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::Mutex;

/// The provider's endpoints, from its discovery document.
#[derive(Debug, Clone, Deserialize)]
struct Discovery {
    issuer: String,
    authorization_endpoint: String,
    token_endpoint: String,
    jwks_uri: String,
}

/// An RS256 key from the JWKS, with its id.
#[derive(Debug, Clone)]
pub struct Key {
    pub kid: Option<String>,
    pub key: RsaPublicKey,
}

/// One login in progress: what the callback must see again.
#[derive(Debug, Clone)]
pub struct Login {
    pub state: String,
    pub nonce: String,
    pub verifier: String,
}

impl Login {
    /// Fresh random values (256 bits each).
    pub fn new() -> Login {
        Login {
            state: random_b64(32),
            nonce: random_b64(32),
            verifier: random_b64(32),
        }
    }
}

/// `bytes` random bytes from the OS, base64url without padding: the
/// values of a login (state, nonce, verifier) and of sessions, links and
/// CSRF tokens.
pub fn random_b64(bytes: usize) -> String {
    let mut buf = vec![0u8; bytes];
    rand::rngs::OsRng.fill_bytes(&mut buf);
    URL_SAFE_NO_PAD.encode(buf)
}

/// The PKCE S256 challenge of a verifier.
pub fn challenge(verifier: &str) -> String {
    URL_SAFE_NO_PAD.encode(Sha256::digest(verifier.as_bytes()))
}

/// The service's client at the provider.
pub struct Oidc {
    issuer: String,
    client_id: String,
    client_secret: String,
    redirect_uri: String,
    http: reqwest::Client,
    discovery: Mutex<Option<Arc<Discovery>>>,
    keys: Mutex<Vec<Key>>,
}

#[derive(Deserialize)]
struct TokenAnswer {
    id_token: String,
}

#[derive(Deserialize)]
#[serde(untagged)]
enum Audience {
    One(String),
    Many(Vec<String>),
}

#[derive(Deserialize)]
struct IdClaims {
    iss: String,
    sub: String,
    aud: Audience,
    nonce: Option<String>,
    azp: Option<String>,
}

/// The service's HTTP client for one peer: answers within `timeout_s`,
/// redirects never followed (a provider, a service or OpenBao answers
/// directly; a redirect would be a request to somewhere not configured).
pub fn http_client(timeout_s: u64) -> Result<reqwest::Client, String> {
    reqwest::Client::builder()
        .timeout(Duration::from_secs(timeout_s))
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .map_err(|e| format!("HTTP client: {e}"))
}

/// `cache`, fetched again from `jwks_uri` with `http` when `kid` is not
/// among the keys it holds (a rotation, or the first use).
pub async fn keys_for(
    http: &reqwest::Client,
    jwks_uri: &str,
    cache: &Mutex<Vec<Key>>,
    kid: Option<&str>,
) -> Result<Vec<Key>, String> {
    let mut keys = cache.lock().await;
    let known = keys
        .iter()
        .any(|k| kid.is_none() || k.kid.as_deref() == kid);
    if !known {
        *keys = parse_jwks(&get_json(http, jwks_uri).await?);
    }
    Ok(keys.clone())
}

/// GETs a JSON document. Errors name the URL without its query (a query
/// may carry a secret) and the status or failure.
async fn get_json(http: &reqwest::Client, url: &str) -> Result<Value, String> {
    let shown = url.split(['?', '#']).next().unwrap_or_default();
    let r = http
        .get(url)
        .send()
        .await
        .map_err(|e| format!("GET {shown}: {}", e.without_url()))?;
    if !r.status().is_success() {
        return Err(format!("GET {shown}: status {}", r.status()));
    }
    r.json()
        .await
        .map_err(|e| format!("GET {shown}: {}", e.without_url()))
}

/// The key `untrusted` names by its `kid` (or the only key when it names
/// none), once its algorithm is RS256: `what` names the token in errors.
fn signing_key<'k, T>(
    untrusted: &UntrustedToken<'_, T>,
    keys: &'k [Key],
    what: &str,
) -> Result<&'k Key, String> {
    if untrusted.algorithm() != "RS256" {
        return Err(format!(
            "{what}: algorithm {:?}, not RS256",
            untrusted.algorithm()
        ));
    }
    match untrusted.header().key_id.as_deref() {
        Some(kid) => keys.iter().find(|k| k.kid.as_deref() == Some(kid)),
        None if keys.len() == 1 => keys.first(),
        None => None,
    }
    .ok_or_else(|| format!("{what}: signed by a key the provider does not publish"))
}

impl Oidc {
    /// A client for `issuer` (exactly as the ID tokens' `iss`) that comes
    /// back to `redirect_uri`.
    pub fn new(
        issuer: String,
        client_id: String,
        client_secret: String,
        redirect_uri: String,
    ) -> Result<Oidc, String> {
        let http = http_client(10)?;
        Ok(Oidc {
            issuer,
            client_id,
            client_secret,
            redirect_uri,
            http,
            discovery: Mutex::new(None),
            keys: Mutex::new(Vec::new()),
        })
    }

    /// The discovery document, fetched once (a failure is retried on the
    /// next login).
    async fn discovery(&self) -> Result<Arc<Discovery>, String> {
        let mut slot = self.discovery.lock().await;
        if let Some(d) = slot.as_ref() {
            return Ok(d.clone());
        }
        let url = format!(
            "{}/.well-known/openid-configuration",
            self.issuer.trim_end_matches('/')
        );
        let d: Discovery = serde_json::from_value(get_json(&self.http, &url).await?)
            .map_err(|e| format!("discovery document: {e}"))?;
        // OIDC Discovery 1.0 §4.3: the document names the issuer it is for.
        if d.issuer != self.issuer {
            return Err(format!(
                "discovery names issuer {:?}, configured {:?}",
                d.issuer, self.issuer
            ));
        }
        let d = Arc::new(d);
        *slot = Some(d.clone());
        Ok(d)
    }

    /// Where to send the browser for `login`.
    pub async fn authorize_url(&self, login: &Login) -> Result<String, String> {
        let d = self.discovery().await?;
        let mut u = url::Url::parse(&d.authorization_endpoint)
            .map_err(|e| format!("authorization_endpoint: {e}"))?;
        u.query_pairs_mut()
            .append_pair("response_type", "code")
            .append_pair("client_id", &self.client_id)
            .append_pair("redirect_uri", &self.redirect_uri)
            .append_pair("scope", "openid")
            .append_pair("state", &login.state)
            .append_pair("nonce", &login.nonce)
            .append_pair("code_challenge", &challenge(&login.verifier))
            .append_pair("code_challenge_method", "S256");
        Ok(u.into())
    }

    /// Exchanges `code` and returns the verified ID token's subject.
    pub async fn sign_in(&self, code: &str, login: &Login, now: u64) -> Result<String, String> {
        let d = self.discovery().await?;
        // RFC 6749 §2.3.1: id and secret are form-encoded before Basic.
        let enc = |s: &str| url::form_urlencoded::byte_serialize(s.as_bytes()).collect::<String>();
        let basic = STANDARD.encode(format!(
            "{}:{}",
            enc(&self.client_id),
            enc(&self.client_secret)
        ));
        let r = self
            .http
            .post(&d.token_endpoint)
            .header("authorization", format!("Basic {basic}"))
            .form(&[
                ("grant_type", "authorization_code"),
                ("code", code),
                ("redirect_uri", &self.redirect_uri),
                ("code_verifier", &login.verifier),
            ])
            .send()
            .await
            .map_err(|e| format!("token endpoint: {e}"))?;
        if !r.status().is_success() {
            return Err(format!("token endpoint: status {}", r.status()));
        }
        let t: TokenAnswer = r
            .json()
            .await
            .map_err(|_| "token endpoint: no id_token in the answer".to_string())?;
        let kid = UntrustedToken::new(&t.id_token)
            .map_err(|_| "id token: unreadable".to_string())?
            .header()
            .key_id
            .clone();
        let keys = keys_for(&self.http, &d.jwks_uri, &self.keys, kid.as_deref()).await?;
        verify_id_token(
            &t.id_token,
            &keys,
            &self.issuer,
            &self.client_id,
            &login.nonce,
            now,
        )
    }

    /// Verifies an access token the provider issued (the filter's
    /// `subject_token` at `/token`) and returns its `sub` and its actor
    /// (`act.sub`), if it acts for someone: RS256 by a published key,
    /// `iss` exactly the issuer, unexpired at `now`. Its audience is the
    /// gateway's, which the filter checked; it is not this service's.
    pub async fn verify_access_token(
        &self,
        token: &str,
        now: u64,
    ) -> Result<(String, Option<String>), String> {
        let d = self.discovery().await?;
        let kid = UntrustedToken::new(token)
            .map_err(|_| "subject token: unreadable".to_string())?
            .header()
            .key_id
            .clone();
        let keys = keys_for(&self.http, &d.jwks_uri, &self.keys, kid.as_deref()).await?;
        verify_access_token(token, &keys, &self.issuer, now)
    }
}

/// The RSA signing keys of a JWKS document; others are skipped.
pub fn parse_jwks(doc: &Value) -> Vec<Key> {
    let empty = Vec::new();
    let keys = doc["keys"].as_array().unwrap_or(&empty);
    keys.iter()
        .filter(|k| k["kty"] == "RSA" && (k["use"].is_null() || k["use"] == "sig"))
        .filter_map(|k| {
            let b = |f: &str| URL_SAFE_NO_PAD.decode(k[f].as_str()?).ok();
            let key = RsaPublicKey::new(
                BigUint::from_bytes_be(&b("n")?),
                BigUint::from_bytes_be(&b("e")?),
            )
            .ok()?;
            Some(Key {
                kid: k["kid"].as_str().map(str::to_string),
                key,
            })
        })
        .collect()
}

#[derive(Deserialize)]
struct AccessClaims {
    iss: String,
    sub: String,
    act: Option<Actor>,
}

#[derive(Deserialize)]
struct Actor {
    sub: Option<String>,
}

/// Verifies an access token: RS256 by the key its `kid` names (or the only
/// key), `iss` exactly `issuer`, an `exp` after `now`, an `nbf` (if any)
/// not after it, a non-empty `sub`.
/// Returns `sub` and `act.sub`.
pub fn verify_access_token(
    token: &str,
    keys: &[Key],
    issuer: &str,
    now: u64,
) -> Result<(String, Option<String>), String> {
    let untrusted =
        UntrustedToken::new(token).map_err(|_| "subject token: unreadable".to_string())?;
    let key = signing_key(&untrusted, keys, "subject token")?;
    let token = Rsa::rs256()
        .validator::<AccessClaims>(&key.key)
        .validate(&untrusted)
        .map_err(|_| "subject token: bad signature or claims".to_string())?;
    let claims = token.claims();
    if claims.custom.iss != issuer {
        return Err("subject token: another issuer".into());
    }
    let exp = claims
        .expiration
        .map(|e| e.timestamp())
        .ok_or_else(|| "subject token: no exp".to_string())?;
    let now_i = i64::try_from(now).unwrap_or(i64::MAX);
    if now_i >= exp {
        return Err("subject token: expired".into());
    }
    // jwt-compact's validator checks the signature only. A token minted
    // to be used later is not a token now.
    if claims.not_before.is_some_and(|n| n.timestamp() > now_i) {
        return Err("subject token: not valid yet".into());
    }
    if claims.custom.sub.is_empty() {
        return Err("subject token: empty sub".into());
    }
    let actor = claims.custom.act.as_ref().and_then(|a| a.sub.clone());
    Ok((claims.custom.sub.clone(), actor))
}

/// Verifies an ID token and returns its `sub`: RS256 by the key its `kid`
/// names (or the only key when it names none), `iss` exactly the issuer,
/// `aud` this client (and `azp` this client when there are several),
/// unexpired at `now`, the login's nonce.
pub fn verify_id_token(
    token: &str,
    keys: &[Key],
    issuer: &str,
    client_id: &str,
    nonce: &str,
    now: u64,
) -> Result<String, String> {
    let untrusted = UntrustedToken::new(token).map_err(|_| "id token: unreadable".to_string())?;
    let key = signing_key(&untrusted, keys, "id token")?;
    let token = Rsa::rs256()
        .validator::<IdClaims>(&key.key)
        .validate(&untrusted)
        .map_err(|e| format!("id token: {e}"))?;
    let claims = token.claims();
    let c = &claims.custom;
    if c.iss != issuer {
        return Err(format!("id token: issuer {:?}", c.iss));
    }
    let for_us = match &c.aud {
        Audience::One(a) => a == client_id,
        Audience::Many(list) => {
            list.iter().any(|a| a == client_id)
                && (list.len() == 1 || c.azp.as_deref() == Some(client_id))
        }
    };
    if !for_us {
        return Err("id token: not for this client".into());
    }
    let exp = claims
        .expiration
        .map(|e| e.timestamp())
        .ok_or_else(|| "id token: no exp".to_string())?;
    if i64::try_from(now).unwrap_or(i64::MAX) >= exp {
        return Err("id token: expired".into());
    }
    let ok_nonce = c
        .nonce
        .as_deref()
        .is_some_and(|n| crate::pages::ct_eq(n, nonce));
    if !ok_nonce {
        return Err("id token: nonce does not match the login".into());
    }
    if c.sub.is_empty() {
        return Err("id token: empty sub".into());
    }
    Ok(c.sub.clone())
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
    use jwt_compact::{Claims, Header};
    use rsa::traits::PublicKeyParts;
    use rsa::RsaPrivateKey;
    use serde_json::json;
    use std::sync::OnceLock;

    /// One key for all tests: generating it is the slow part.
    fn key() -> &'static RsaPrivateKey {
        static KEY: OnceLock<RsaPrivateKey> = OnceLock::new();
        KEY.get_or_init(|| RsaPrivateKey::new(&mut rand::thread_rng(), 2048).unwrap())
    }

    fn jwks() -> Value {
        let pk = key().to_public_key();
        json!({"keys": [
            {"kty": "EC", "kid": "ec"},
            {"kty": "RSA", "kid": "k1", "use": "sig",
             "n": URL_SAFE_NO_PAD.encode(pk.n().to_bytes_be()),
             "e": URL_SAFE_NO_PAD.encode(pk.e().to_bytes_be())}]})
    }

    fn token(claims: Value, kid: Option<&str>) -> String {
        let mut h = Header::empty();
        if let Some(k) = kid {
            h = h.with_key_id(k);
        }
        Rsa::rs256().token(&h, &Claims::new(claims), key()).unwrap()
    }

    fn good() -> Value {
        json!({"iss": "http://idp.test", "sub": "alice", "aud": "approval",
               "exp": 2000, "nonce": "n1"})
    }

    fn verify(t: &str) -> Result<String, String> {
        verify_id_token(
            t,
            &parse_jwks(&jwks()),
            "http://idp.test",
            "approval",
            "n1",
            1000,
        )
    }

    #[test]
    fn a_good_id_token_names_its_subject() {
        assert_eq!(parse_jwks(&jwks()).len(), 1);
        assert_eq!(verify(&token(good(), Some("k1"))).unwrap(), "alice");
        let mut many = good();
        many["aud"] = json!(["approval", "other"]);
        many["azp"] = json!("approval");
        assert_eq!(verify(&token(many, Some("k1"))).unwrap(), "alice");
        // No kid, one key: that key.
        assert_eq!(verify(&token(good(), None)).unwrap(), "alice");
    }

    #[test]
    fn every_wrong_claim_is_refused() {
        for (k, v, want) in [
            ("iss", json!("http://evil.test"), "issuer"),
            ("aud", json!("other"), "not for this client"),
            ("aud", json!(["approval", "other"]), "not for this client"),
            ("exp", json!(1000), "expired"),
            ("nonce", json!("n2"), "nonce"),
            ("nonce", Value::Null, "nonce"),
            ("sub", json!(""), "empty sub"),
        ] {
            let mut c = good();
            c[k] = v;
            let e = verify(&token(c, Some("k1"))).unwrap_err();
            assert!(e.contains(want), "{k}: {e}");
        }
        let e = verify(&token(good(), Some("k2"))).unwrap_err();
        assert!(e.contains("does not publish"), "{e}");
        // A token signed by another key, and a tampered payload.
        let t = token(good(), Some("k1"));
        let mut parts: Vec<String> = t.split('.').map(str::to_string).collect();
        let mut c = good();
        c["sub"] = json!("mallory");
        parts[1] = URL_SAFE_NO_PAD.encode(c.to_string());
        assert!(verify(&parts.join(".")).is_err());
        // alg none.
        let none = format!(
            "{}.{}.",
            URL_SAFE_NO_PAD.encode(r#"{"alg":"none","kid":"k1"}"#),
            URL_SAFE_NO_PAD.encode(good().to_string())
        );
        assert!(verify(&none).unwrap_err().contains("algorithm") || verify(&none).is_err());
    }

    #[test]
    fn an_access_token_names_its_subject_and_actor_and_nothing_else_passes() {
        let keys = parse_jwks(&jwks());
        let v =
            |c: Value| verify_access_token(&token(c, Some("k1")), &keys, "http://idp.test", 1000);
        let good = json!({"iss": "http://idp.test", "sub": "alice", "aud": "https://gw",
                          "exp": 2000, "act": {"sub": "agent-1"}});
        assert_eq!(
            v(good.clone()).unwrap(),
            ("alice".into(), Some("agent-1".into()))
        );
        let mut own = good.clone();
        own.as_object_mut().unwrap().remove("act");
        assert_eq!(v(own).unwrap().1, None);
        for (k, bad) in [
            ("iss", json!("http://evil.test")),
            ("exp", json!(1000)),
            ("sub", json!("")),
            ("sub", json!(7)),
            ("nbf", json!(1001)),
        ] {
            let mut c = good.clone();
            c[k] = bad;
            assert!(v(c).is_err(), "{k}");
        }
        let t = token(good, Some("k2"));
        assert!(verify_access_token(&t, &keys, "http://idp.test", 1000).is_err());
    }

    #[test]
    fn a_subject_token_not_valid_yet_or_of_another_alg_is_refused() {
        let keys = parse_jwks(&jwks());
        let v = |t: &str| verify_access_token(t, &keys, "http://idp.test", 1000);
        let good = json!({"iss": "http://idp.test", "sub": "alice", "exp": 5000});
        let mut later = good.clone();
        later["nbf"] = json!(1500);
        assert!(v(&token(later, Some("k1")))
            .unwrap_err()
            .contains("not valid yet"));
        let mut now = good.clone();
        now["nbf"] = json!(1000);
        assert_eq!(v(&token(now, Some("k1"))).unwrap().0, "alice");
        // HS256 keyed with anything (the public key's bytes, say), and none.
        for alg in ["HS256", "none", "PS256"] {
            let t = format!(
                "{}.{}.c2ln",
                URL_SAFE_NO_PAD.encode(format!(r#"{{"alg":"{alg}","kid":"k1"}}"#)),
                URL_SAFE_NO_PAD.encode(good.to_string())
            );
            assert!(v(&t).unwrap_err().contains("not RS256"), "{alg}");
        }
    }

    #[test]
    fn pkce_challenge_is_rfc7636_s256() {
        // RFC 7636 appendix B.
        assert_eq!(
            challenge("dBjftJeZ4CVP-mB92K27uhbUJU1p1r_wW1gFWFOEjXk"),
            "E9Melhoa2OwvFrEMTJguCHaoeK1t8URWbuGJSstw-cM"
        );
    }
}
