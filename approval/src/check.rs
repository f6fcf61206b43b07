//! The filter's question, `POST /v1/check`: its body checked into a
//! [`CheckInput`] (the binding recomputed from the call, the call read into
//! its five parts) and the store's answer rendered as the JSON the filter
//! reads. The state machine itself lives in `store`; signing in `grant`.

use crate::grant::Signer;
use crate::store::{Answer, Call, CheckInput, Pending};
use serde::Deserialize;
use serde_json::{json, Map, Value};
use sha2::{Digest, Sha256};

/// The largest body `/v1/check` reads.
pub const MAX_BODY: usize = 64 * 1024;
/// The longest an approval may live (a day).
pub const MAX_TTL_S: u64 = 86_400;

#[derive(Deserialize)]
struct Body {
    binding: String,
    call: String,
    approvers: Vec<String>,
    ttl_s: u64,
    #[serde(default)]
    decision_id: String,
}

/// `sha256:` and the lowercase hex SHA-256 of `text`.
pub fn binding_of(text: &str) -> String {
    let digest = Sha256::digest(text.as_bytes());
    let mut out = String::with_capacity(7 + 64);
    out.push_str("sha256:");
    for b in digest {
        out.push_str(&format!("{b:02x}"));
    }
    out
}

/// Reads and checks a body; `Err` says what is wrong (the 400's text).
pub fn parse(body: &[u8]) -> Result<CheckInput, String> {
    if body.len() > MAX_BODY {
        return Err(format!("body over {MAX_BODY} bytes"));
    }
    let b: Body = serde_json::from_slice(body).map_err(|e| format!("body: {e}"))?;
    // The binding is what the filter enforces; the call is what the
    // approver is shown. They must be the same thing.
    if binding_of(&b.call) != b.binding {
        return Err("binding is not sha256 of call".into());
    }
    let call = parse_call(&b.call)?;
    let mut approvers: Vec<String> = Vec::with_capacity(b.approvers.len());
    for a in b.approvers {
        if a.is_empty() {
            return Err("approvers: an empty name".into());
        }
        if !approvers.contains(&a) {
            approvers.push(a);
        }
    }
    if approvers.is_empty() {
        return Err("approvers is empty".into());
    }
    if !(1..=MAX_TTL_S).contains(&b.ttl_s) {
        return Err(format!("ttl_s must be within 1..={MAX_TTL_S}"));
    }
    Ok(CheckInput {
        binding: b.binding,
        size: b.call.len(),
        call,
        approvers,
        ttl_s: b.ttl_s,
        decision_id: b.decision_id,
    })
}

/// The call's text read into its parts. Every part must be there and no
/// other: a key the page would not show is a call the approver would not
/// see whole.
fn parse_call(text: &str) -> Result<Call, String> {
    let v: Value = serde_json::from_str(text).map_err(|e| format!("call: {e}"))?;
    let Value::Object(mut m) = v else {
        return Err("call is not a JSON object".into());
    };
    let string = |m: &mut Map<String, Value>, k: &str| match m.remove(k) {
        Some(Value::String(s)) => Ok(s),
        _ => Err(format!("call.{k} must be a string")),
    };
    let agent = string(&mut m, "agent")?;
    let service = string(&mut m, "service")?;
    let tool = string(&mut m, "tool")?;
    let chain = match m.remove("chain") {
        Some(Value::Array(items)) => items
            .into_iter()
            .map(|i| match i {
                Value::String(s) => Ok(s),
                _ => Err("call.chain must hold strings".to_string()),
            })
            .collect::<Result<Vec<_>, _>>()?,
        _ => return Err("call.chain must be an array".into()),
    };
    let endpoint = match m.remove("endpoint") {
        None => None,
        Some(Value::String(s)) => Some(s),
        Some(_) => return Err("call.endpoint must be a string".into()),
    };
    let arguments = m
        .remove("arguments")
        .ok_or_else(|| "call.arguments is missing".to_string())?;
    if let Some(k) = m.keys().next() {
        return Err(format!("call has an unexpected key {k:?}"));
    }
    Ok(Call {
        agent,
        chain,
        service,
        endpoint,
        tool,
        arguments,
    })
}

/// A pending record as the filter sees it.
fn pending_json(p: &Pending, public_url: &str) -> Value {
    json!({
        "state": "pending",
        "id": p.id,
        "url": format!("{public_url}/a/{}", p.id),
        "expires_at": p.expires_at,
    })
}

/// The store's answer as the JSON body of a 200.
pub fn answer_json(answer: &Answer, public_url: &str, signer: &Signer, now: u64) -> Value {
    match answer {
        Answer::Pending(p) => pending_json(p, public_url),
        Answer::Approved(a) => json!({
            "state": "approved",
            "id": a.id,
            "approver": a.approver,
            "grant": signer.grant(a, now),
        }),
        Answer::Rejected { id, approver } => json!({
            "state": "rejected", "id": id, "approver": approver,
        }),
        Answer::Used { id, pending } => json!({
            "state": "used", "id": id, "pending": pending_json(pending, public_url),
        }),
        Answer::Expired { id, pending } => json!({
            "state": "expired", "id": id, "pending": pending_json(pending, public_url),
        }),
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
mod tests {
    use super::*;

    fn call_text() -> String {
        r#"{"agent":"a1","arguments":{"id":7},"chain":["u1"],"service":"tickets","tool":"close"}"#
            .into()
    }

    fn body(call: &str, binding: &str, approvers: Value, ttl: Value) -> Vec<u8> {
        json!({"binding": binding, "call": call, "approvers": approvers, "ttl_s": ttl,
               "decision_id": "d1"})
        .to_string()
        .into_bytes()
    }

    #[test]
    fn a_good_body_is_read_whole() {
        let c = call_text();
        let i = parse(&body(
            &c,
            &binding_of(&c),
            json!(["alice", "alice", "bob"]),
            json!(300),
        ))
        .unwrap();
        assert_eq!(i.call.agent, "a1");
        assert_eq!(i.call.chain, vec!["u1".to_string()]);
        assert_eq!(i.call.tool, "close");
        assert_eq!(i.call.endpoint, None);
        let c2 = c.replace(r#""service""#, r#""endpoint":"/mcp?a=1","service""#);
        let i2 = parse(&body(&c2, &binding_of(&c2), json!(["alice"]), json!(300))).unwrap();
        assert_eq!(i2.call.endpoint.as_deref(), Some("/mcp?a=1"));
        assert_eq!(i.call.arguments, json!({"id": 7}));
        assert_eq!(i.approvers, vec!["alice".to_string(), "bob".to_string()]);
        assert_eq!(i.decision_id, "d1");
        assert!(i.binding.starts_with("sha256:") && i.binding.len() == 71);
    }

    #[test]
    fn a_binding_of_another_call_is_refused() {
        let c = call_text();
        let other = c.replace("\"id\":7", "\"id\":8");
        let e = parse(&body(&other, &binding_of(&c), json!(["alice"]), json!(300))).unwrap_err();
        assert!(e.contains("binding"), "{e}");
        // The hex must be lowercase, as the filter writes it.
        let upper = binding_of(&c).to_uppercase().replace("SHA256:", "sha256:");
        assert!(parse(&body(&c, &upper, json!(["alice"]), json!(300))).is_err());
    }

    #[test]
    fn bad_fields_are_refused_with_a_reason() {
        let c = call_text();
        let b = binding_of(&c);
        for (approvers, ttl, want) in [
            (json!([]), json!(300), "approvers"),
            (json!([""]), json!(300), "approvers"),
            (json!(["alice"]), json!(0), "ttl_s"),
            (json!(["alice"]), json!(86_401), "ttl_s"),
            (json!(["alice"]), json!(-1), "body"),
        ] {
            let e = parse(&body(&c, &b, approvers, ttl)).unwrap_err();
            assert!(e.contains(want), "{e} (wanted {want})");
        }
        for call in [
            "[1]",
            "\"x\"",
            r#"{"agent":"a","chain":[],"service":"s","tool":"t"}"#,
            r#"{"agent":"a","arguments":{},"chain":[1],"service":"s","tool":"t"}"#,
            r#"{"agent":"a","arguments":{},"chain":[],"extra":1,"service":"s","tool":"t"}"#,
            r#"{"agent":1,"arguments":{},"chain":[],"service":"s","tool":"t"}"#,
            r#"{"agent":"a","arguments":{},"chain":[],"endpoint":1,"service":"s","tool":"t"}"#,
        ] {
            let e = parse(&body(call, &binding_of(call), json!(["alice"]), json!(5)));
            assert!(e.is_err(), "{call} passed");
        }
        let big = "x".repeat(MAX_BODY + 1);
        assert!(parse(big.as_bytes()).unwrap_err().contains("body over"));
    }
}
