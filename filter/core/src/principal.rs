//! Verified identities, decoded once per distinct token and reused.
//!
//! jwt_authn hands every request the payload it verified, as protobuf in
//! dynamic metadata. Decoding it, checking the claims and building the
//! `input.jwt` and `input.agent` documents costs more than everything else
//! a cached decision needs, and an agent sends the same token for minutes.
//! So each worker keeps the [`Principal`] built from a namespace's bytes,
//! keyed by their canonical form ([`pbstruct::canonical_struct`]: Envoy
//! serializes protobuf maps in no fixed order). Equal forms decode to equal
//! payloads and the rest is a pure function of the payload and the fixed
//! config, so reuse cannot change an outcome. Errors are never kept.
//!
//! Each principal gets a serial number unique within its worker, never
//! reused, so the decision cache can key on "this principal" with eight
//! bytes instead of the token's claims.

use crate::claims::{self, ClaimsError, Identity};
use crate::config::IdentityConfig;
use crate::headers::check_value;
use crate::pbstruct::{self, Limits};
use crate::value;
use regorus::Value as Rego;
use std::collections::HashMap;
use std::rc::Rc;

/// An agent as every later step sees it, built once per distinct token.
#[derive(Debug)]
pub struct Principal {
    /// Unique within the worker, never reused.
    pub serial: u64,
    /// The claims.
    pub identity: Identity,
    /// The `iss` claim, when it is a string.
    pub issuer: Option<String>,
    /// Issuer and subject: the key of the agent's secrets.
    pub secrets_principal: String,
    /// `input.jwt`.
    pub jwt: Rego,
    /// `input.agent`.
    pub agent: Rego,
    /// `input.delegation` (`null` when the subject acts itself).
    pub delegation: Rego,
    /// The `x-agent-*` headers, or why the identity cannot be sent as one.
    pub trusted: Result<Vec<(&'static str, String)>, String>,
    /// The token's audiences (`aud`), checked per request against the
    /// service's own (see [`crate::audience`]): one token may be sent to
    /// several services, so the check is not part of the cached principal.
    pub audiences: Vec<String>,
    /// [`crate::exchange::claims_digest`], computed on first use.
    digest: std::cell::OnceCell<String>,
}

impl Principal {
    /// Builds a principal from a verified payload.
    pub fn new(serial: u64, identity: Identity, max_header_bytes: usize) -> Principal {
        let issuer = identity
            .payload
            .get("iss")
            .and_then(serde_json::Value::as_str)
            .map(str::to_owned);
        let payload = value::object(
            identity
                .payload
                .iter()
                .map(|(k, v)| (k.as_str(), value::to_rego(v))),
        );
        let jwt = value::object([("valid", Rego::from(true)), ("payload", payload)]);
        let agent = value::object([
            ("id", Rego::from(identity.id.as_str())),
            ("type", value::opt_str(identity.agent_type.as_deref())),
            ("team", value::opt_str(identity.team.as_deref())),
            (
                "environment",
                value::opt_str(identity.environment.as_deref()),
            ),
            ("permissions", value::strings(&identity.permissions)),
            (
                "workload_id",
                value::opt_str(identity.workload_id.as_deref()),
            ),
        ]);
        let delegation = crate::delegation::doc(&identity.id, &identity.chain, &identity.payload);
        // Upstream, a delegated call names who acts now and the whole chain
        // (a JSON array, outermost first).
        let actor = identity.chain.first().map(|a| a.sub.clone());
        let chain = (!identity.chain.is_empty()).then(|| {
            serde_json::Value::from(
                identity
                    .chain
                    .iter()
                    .map(|a| a.sub.clone())
                    .collect::<Vec<_>>(),
            )
            .to_string()
        });
        let mut trusted = Ok(Vec::with_capacity(5));
        for (name, v) in [
            ("x-agent-id", Some(&identity.id)),
            ("x-agent-type", identity.agent_type.as_ref()),
            ("x-agent-team", identity.team.as_ref()),
            ("x-agent-actor", actor.as_ref()),
            ("x-agent-delegation", chain.as_ref()),
        ] {
            let Some(v) = v else { continue };
            match check_value(v, max_header_bytes) {
                Ok(()) => {
                    if let Ok(list) = &mut trusted {
                        list.push((name, v.clone()));
                    }
                }
                Err(e) => {
                    trusted = Err(format!("identity for {name} {e}"));
                    break;
                }
            }
        }
        Principal {
            serial,
            audiences: claims::audiences(&identity.payload),
            secrets_principal: crate::secrets::principal(issuer.as_deref(), &identity.id),
            issuer,
            jwt,
            agent,
            delegation,
            trusted,
            identity,
            digest: std::cell::OnceCell::new(),
        }
    }

    /// The digest of the verified claims an exchanged token is keyed on
    /// ([`crate::exchange::claims_digest`]), once per principal.
    pub fn claims_digest(&self) -> &str {
        self.digest
            .get_or_init(|| crate::exchange::claims_digest(&self.identity.payload))
    }
}

/// The principals a worker has seen, by the exact bytes of their
/// jwt_authn metadata namespace. Bounded: when full, an insert evicts one
/// entry (which only costs a decode when that agent comes back).
#[derive(Debug)]
pub struct Principals {
    max_entries: usize,
    next_serial: u64,
    map: HashMap<Vec<u8>, Rc<Principal>>,
    /// Lookups answered from the map.
    pub hits: u64,
    /// Lookups that decoded.
    pub misses: u64,
}

impl Principals {
    /// An empty set holding at most `max_entries` (0: decode every time).
    pub fn new(max_entries: usize) -> Principals {
        Principals {
            max_entries,
            next_serial: 1,
            map: HashMap::new(),
            hits: 0,
            misses: 0,
        }
    }

    /// The principal for the serialized `envoy.config.core.v3.Metadata`
    /// Envoy returned: from the map when this namespace's bytes were seen,
    /// else decoded (and kept when it is valid).
    pub fn resolve(
        &mut self,
        metadata: &[u8],
        cfg: &IdentityConfig,
        max_header_bytes: usize,
    ) -> Result<Rc<Principal>, ClaimsError> {
        let ns = pbstruct::metadata_namespace_bytes(metadata, &cfg.metadata_namespace)
            .map_err(ClaimsError::Metadata)?
            .ok_or(ClaimsError::Missing)?;
        let limits = Limits {
            max_depth: cfg.max_depth,
            max_bytes: cfg.max_payload_bytes,
        };
        // Envoy serializes protobuf maps in no fixed order: the key is the
        // canonical form. Bytes without one are decoded for their error.
        let key = pbstruct::canonical_struct(ns, limits).ok();
        if let Some(p) = key.as_ref().and_then(|k| self.map.get(k)) {
            self.hits += 1;
            return Ok(Rc::clone(p));
        }
        self.misses += 1;
        let payload = claims::payload_from_namespace(ns, cfg, limits)?;
        let identity = claims::identity(payload, cfg)?;
        let serial = self.next_serial;
        self.next_serial += 1;
        let p = Rc::new(Principal::new(serial, identity, max_header_bytes));
        if let Some(key) = key.filter(|_| self.max_entries > 0) {
            if self.map.len() >= self.max_entries {
                let victim = self.map.keys().next().cloned();
                if let Some(k) = victim {
                    self.map.remove(&k);
                }
            }
            self.map.insert(key, Rc::clone(&p));
        }
        Ok(p)
    }

    /// Principals held.
    pub fn len(&self) -> usize {
        self.map.len()
    }

    /// Whether none is held.
    pub fn is_empty(&self) -> bool {
        self.map.is_empty()
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use serde_json::json;
    #[cfg(all(target_arch = "wasm32", target_os = "unknown"))]
    use wasm_bindgen_test::wasm_bindgen_test as test;

    fn metadata(payload: serde_json::Value) -> Vec<u8> {
        let ns = json!({ "jwt_payload": payload });
        pbstruct::encode_metadata(&[("envoy.filters.http.jwt_authn", ns.as_object().unwrap())])
    }

    #[test]
    fn equal_bytes_share_one_principal_and_distinct_tokens_never_do() {
        let cfg = IdentityConfig::default();
        let mut ps = Principals::new(8);
        let a = metadata(json!({"sub": "a", "iss": "i"}));
        let b = metadata(json!({"sub": "b", "iss": "i"}));
        let p1 = ps.resolve(&a, &cfg, 256).unwrap();
        let p2 = ps.resolve(&a, &cfg, 256).unwrap();
        let p3 = ps.resolve(&b, &cfg, 256).unwrap();
        assert!(Rc::ptr_eq(&p1, &p2));
        assert_ne!(p1.serial, p3.serial);
        assert_eq!(p3.identity.id, "b");
        assert_eq!(
            p1.secrets_principal,
            crate::secrets::principal(Some("i"), "a")
        );
        assert_eq!((ps.hits, ps.misses), (1, 2));
    }

    #[test]
    fn a_full_map_evicts_and_a_returning_token_gets_a_new_serial() {
        let cfg = IdentityConfig::default();
        let mut ps = Principals::new(1);
        let a = metadata(json!({"sub": "a"}));
        let b = metadata(json!({"sub": "b"}));
        let first = ps.resolve(&a, &cfg, 256).unwrap().serial;
        ps.resolve(&b, &cfg, 256).unwrap();
        assert_eq!(ps.len(), 1);
        let again = ps.resolve(&a, &cfg, 256).unwrap().serial;
        assert_ne!(first, again, "serials are never reused");
    }

    #[test]
    fn invalid_claims_are_refused_every_time_and_never_kept() {
        let cfg = IdentityConfig::default();
        let mut ps = Principals::new(8);
        let bad = metadata(json!({"sub": ""}));
        for _ in 0..2 {
            assert_eq!(
                ps.resolve(&bad, &cfg, 256).unwrap_err(),
                ClaimsError::MissingSubject
            );
        }
        assert!(ps.is_empty());
        assert_eq!(
            ps.resolve(b"\xff", &cfg, 256).map(|_| ()).unwrap_err(),
            ClaimsError::Metadata(crate::pbstruct::DecodeError::Truncated)
        );
    }

    #[test]
    fn an_identity_unfit_for_a_header_is_kept_as_a_refusal() {
        let cfg = IdentityConfig::default();
        let mut ps = Principals::new(8);
        let m = metadata(json!({"sub": "a\nb"}));
        let p = ps.resolve(&m, &cfg, 256).unwrap();
        assert!(p.trusted.as_ref().unwrap_err().contains("x-agent-id"));
    }
}
