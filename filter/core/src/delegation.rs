//! Delegation (RFC 8693): a token whose `act` claim names the party acting
//! for its subject, nested for chains (`act.act`...). Only the outermost
//! actor is the one acting now (§4.1); the nested ones are history, but
//! history the call rides on: every actor, with its type and permissions,
//! goes to the policy (`actors`), which holds each to what it holds the
//! current one to, so an agent that may not act for the subject cannot
//! pass its call through one that may. `may_act` (§4.4) says who may act
//! for the subject; it is passed on.

use crate::value;
use regorus::Value as Rego;
use serde_json::{Map, Value};

/// Longest chain read; a deeper one is a malformed token.
pub const MAX_CHAIN: usize = 16;

/// One actor of a chain.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Actor {
    /// Its `sub`.
    pub sub: String,
    /// Its namespaced `agent_type`, when the issuer wrote it.
    pub agent_type: Option<String>,
    /// Its own `permissions`, when the issuer wrote them.
    pub permissions: Option<Vec<String>>,
}

/// The actors of a token, outermost (acting now) first; empty without `act`.
/// A malformed chain is refused with what `act` should have been (the
/// claims reader reports it as the `act` claim's wrong type).
pub fn chain(payload: &Map<String, Value>, ns: &str) -> Result<Vec<Actor>, &'static str> {
    let bad = |expected: &'static str| expected;
    let mut out = Vec::new();
    let mut next = payload.get("act");
    while let Some(v) = next {
        if v.is_null() && out.is_empty() {
            break;
        }
        let o = v
            .as_object()
            .ok_or(bad("an object with a string sub (RFC 8693 section 4.1)"))?;
        if out.len() == MAX_CHAIN {
            return Err(bad("a chain of at most 16 actors"));
        }
        let sub = o
            .get("sub")
            .and_then(Value::as_str)
            .filter(|s| !s.is_empty())
            .ok_or(bad("an object with a string sub (RFC 8693 section 4.1)"))?;
        let agent_type = match o.get(&format!("{ns}agent_type")) {
            None | Some(Value::Null) => None,
            Some(Value::String(s)) => Some(s.clone()),
            Some(_) => return Err(bad("an actor agent_type that is a string")),
        };
        let permissions = match o.get("permissions") {
            None | Some(Value::Null) => None,
            Some(Value::Array(items)) => Some(
                items
                    .iter()
                    .map(|i| i.as_str().map(str::to_string))
                    .collect::<Option<Vec<_>>>()
                    .ok_or(bad("actor permissions that are strings"))?,
            ),
            Some(_) => return Err(bad("actor permissions that are an array")),
        };
        out.push(Actor {
            sub: sub.to_string(),
            agent_type,
            permissions,
        });
        next = o.get("act");
    }
    Ok(out)
}

/// `input.delegation`: `null` without an actor, else `subject`, `actor`
/// (the outermost: acting now), `actor_type`, `actor_permissions`,
/// `actors` (every actor's `sub`, `type` and `permissions`, outermost
/// first), `chain` (subs, outermost first), `depth` and `may_act`.
pub fn doc(subject: &str, chain: &[Actor], payload: &Map<String, Value>) -> Rego {
    let Some(first) = chain.first() else {
        return Rego::Null;
    };
    let subs: Vec<String> = chain.iter().map(|a| a.sub.clone()).collect();
    let actors = chain
        .iter()
        .map(|a| {
            value::object([
                ("sub", Rego::from(a.sub.as_str())),
                ("type", value::opt_str(a.agent_type.as_deref())),
                (
                    "permissions",
                    a.permissions.as_deref().map_or(Rego::Null, value::strings),
                ),
            ])
        })
        .collect::<Vec<_>>();
    value::object([
        ("subject", Rego::from(subject)),
        ("actor", Rego::from(first.sub.as_str())),
        ("actor_type", value::opt_str(first.agent_type.as_deref())),
        (
            "actor_permissions",
            first
                .permissions
                .as_deref()
                .map_or(Rego::Null, value::strings),
        ),
        ("actors", Rego::from(actors)),
        ("chain", value::strings(&subs)),
        ("depth", Rego::from(chain.len() as u64)),
        (
            "may_act",
            payload.get("may_act").map_or(Rego::Null, value::to_rego),
        ),
    ])
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use serde_json::json;
    #[cfg(all(target_arch = "wasm32", target_os = "unknown"))]
    use wasm_bindgen_test::wasm_bindgen_test as test;

    const NS: &str = "https://mcp.example.com/";

    fn payload(v: Value) -> Map<String, Value> {
        v.as_object().unwrap().clone()
    }

    #[test]
    fn a_nested_act_is_a_chain_with_the_current_actor_first() {
        let p = payload(json!({"sub": "user-agent", "act": {
            "sub": "orchestrator", "https://mcp.example.com/agent_type": "orchestrator",
            "permissions": ["skills:invoke"],
            "act": {"sub": "planner"}}}));
        let c = chain(&p, NS).unwrap();
        assert_eq!(c.len(), 2);
        assert_eq!(c[0].sub, "orchestrator");
        assert_eq!(c[0].agent_type.as_deref(), Some("orchestrator"));
        assert_eq!(c[1].sub, "planner");
        let d = crate::value::from_rego(&doc("user-agent", &c, &p));
        assert_eq!(d["actor"], "orchestrator");
        assert_eq!(d["chain"], json!(["orchestrator", "planner"]));
        assert_eq!(d["depth"], 2);
        assert_eq!(d["actor_permissions"], json!(["skills:invoke"]));
        assert_eq!(
            d["actors"],
            json!([
                {"sub": "orchestrator", "type": "orchestrator", "permissions": ["skills:invoke"]},
                {"sub": "planner", "type": null, "permissions": null},
            ]),
            "every actor, for the policy to check each"
        );
        assert_eq!(d["may_act"], Value::Null);
        assert_eq!(doc("x", &[], &p), Rego::Null);
    }

    /// `POST /mcp://hello-skill/go` by the seed's support agent with `act`,
    /// through the whole filter and the shipped policy: the status and
    /// the reply's reason (empty when allowed).
    fn call_with(act: Value) -> (u16, String) {
        let mut f = crate::request::Filter::new(
            br#"{"resources": {"hello-skill": {"type": "skill",
                "metadata": {"team": "platform", "environment": "production"}}}}"#,
            7,
        )
        .unwrap();
        let mut ns = Map::new();
        ns.insert(
            "jwt_payload".into(),
            json!({"sub": "support-triage@clients", "exp": 1_746_277_200,
                "permissions": ["skills:invoke", "data:read"],
                "https://mcp.example.com/agent_type": "support",
                "https://mcp.example.com/team": "customer-success",
                "https://mcp.example.com/environment": "production",
                "act": act}),
        );
        let mut h = crate::host::MockHost::new()
            .with_header(":method", "POST")
            .with_header(":path", "/mcp://hello-skill/go")
            .with_header(":authority", "localhost")
            .with_property(
                &["metadata"],
                crate::pbstruct::encode_metadata(&[("envoy.filters.http.jwt_authn", &ns)]),
            );
        f.on_request_headers(&mut h);
        match &h.reply {
            None => (200, String::new()),
            Some(r) => {
                let b: Value = serde_json::from_slice(&r.body).unwrap();
                (
                    r.status,
                    b["reason"].as_str().unwrap_or_default().to_string(),
                )
            }
        }
    }

    fn orchestrator(perms: Value, inner: Value) -> Value {
        let mut o = json!({"sub": "orchestrator-1@clients", "permissions": perms,
            "https://mcp.example.com/agent_type": "orchestrator"});
        if !inner.is_null() {
            o["act"] = inner;
        }
        o
    }

    #[test]
    fn an_agent_that_may_not_act_cannot_pass_its_call_through_an_orchestrator() {
        // An orchestrator may act for a support agent: alone, it passes.
        assert_eq!(
            call_with(orchestrator(json!(["skills:invoke"]), Value::Null)).0,
            200
        );
        // An experimental agent may not; nested behind an orchestrator it
        // used to ride on the orchestrator's standing.
        let lab = json!({"sub": "lab-1@clients", "permissions": ["skills:invoke"],
            "https://mcp.example.com/agent_type": "experimental"});
        let (status, reason) = call_with(orchestrator(json!(["skills:invoke"]), lab));
        assert_eq!(status, 403);
        assert!(
            reason.contains("an agent of type experimental may not act for a support agent"),
            "{reason}"
        );
        // A nested actor stating neither type nor permissions is held to
        // what the current actor would be: refused.
        let (status, reason) = call_with(orchestrator(
            json!(["skills:invoke"]),
            json!({"sub": "planner@clients"}),
        ));
        assert_eq!(status, 403, "{reason}");
        // A nested actor narrows the call like the current one does.
        let narrow = json!({"sub": "orchestrator-2@clients", "permissions": ["data:read"],
            "https://mcp.example.com/agent_type": "orchestrator"});
        let (status, reason) = call_with(orchestrator(json!(["skills:invoke"]), narrow));
        assert_eq!(status, 403);
        assert!(
            reason.contains("missing permission skills:invoke"),
            "{reason}"
        );
        // Two orchestrators that both hold the permission pass.
        let peer = json!({"sub": "orchestrator-2@clients", "permissions": ["skills:invoke"],
            "https://mcp.example.com/agent_type": "orchestrator"});
        assert_eq!(
            call_with(orchestrator(json!(["skills:invoke"]), peer)).0,
            200
        );
    }

    #[test]
    fn a_malformed_or_endless_act_is_refused_not_guessed() {
        for bad in [
            json!({"act": "orchestrator"}),
            json!({"act": {"client_id": "x"}}),
            json!({"act": {"sub": ""}}),
            json!({"act": {"sub": "a", "permissions": "all"}}),
            json!({"act": {"sub": "a", "act": 7}}),
        ] {
            assert!(chain(&payload(bad.clone()), NS).is_err(), "{bad}");
        }
        let mut deep = json!({"sub": "last"});
        for i in 0..20 {
            deep = json!({"sub": format!("a{i}"), "act": deep});
        }
        assert!(chain(&payload(json!({"act": deep})), NS).is_err());
        assert!(chain(&payload(json!({"act": null})), NS)
            .unwrap()
            .is_empty());
    }
}
