#![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]

use super::*;
use ed25519_dalek::SigningKey;
use jwt_compact::{alg::Ed25519, AlgorithmExt, Claims, Header};
use serde_json::json;

fn rego(v: serde_json::Value) -> regorus::Value {
    crate::value::to_rego(&v)
}

#[test]
fn the_policy_asks_for_approvers_and_a_lifetime_or_nothing() {
    assert_eq!(parse(&regorus::Value::Undefined).unwrap(), None);
    assert_eq!(parse(&regorus::Value::Null).unwrap(), None);
    let r = parse(&rego(json!({"approvers": ["alice", "bob"], "ttl_s": 300})))
        .unwrap()
        .unwrap();
    assert_eq!(r.approvers, ["alice", "bob"]);
    assert_eq!(r.ttl_s, 300);
    for bad in [
        json!(true),
        json!({"approvers": [], "ttl_s": 300}),
        json!({"approvers": ["alice", ""], "ttl_s": 300}),
        json!({"approvers": ["alice", 7], "ttl_s": 300}),
        json!({"approvers": "alice", "ttl_s": 300}),
        json!({"approvers": ["alice"]}),
        json!({"approvers": ["alice"], "ttl_s": 0}),
        json!({"approvers": ["alice"], "ttl_s": 86_401}),
        json!({"approvers": ["alice"], "ttl_s": 1.5}),
    ] {
        assert!(parse(&rego(bad.clone())).is_err(), "{bad}");
    }
}

#[test]
fn a_binding_is_the_digest_of_the_canonical_call() {
    let args = json!({"z": 1, "a": {"y": [1, 2], "b": "é"}});
    let b = bind(
        "support@clients",
        &["orchestrator".into()],
        "tickets-mcp",
        "/mcp",
        "update_ticket",
        args.as_object(),
    )
    .unwrap();
    assert_eq!(
        b.call,
        r#"{"agent":"support@clients","arguments":{"a":{"b":"é","y":[1,2]},"z":1},"chain":["orchestrator"],"endpoint":"/mcp","service":"tickets-mcp","tool":"update_ticket"}"#
    );
    assert_eq!(b.digest, sha256_hex(b.call.as_bytes()));
    assert!(crate::mcp::pins::is_digest(&b.digest));
    // Absent arguments bind as {}.
    let none = bind("a", &[], "s", "/mcp", "t", None).unwrap();
    assert!(none.call.contains(r#""arguments":{}"#));
}

#[test]
fn edited_arguments_another_agent_chain_service_or_tool_is_another_binding() {
    let args = json!({"id": "T-1", "status": "closed"});
    let base = bind("a", &["u".into()], "s", "/mcp", "t", args.as_object()).unwrap();
    let edited = json!({"id": "T-1", "status": "deleted"});
    for other in [
        bind("a", &["u".into()], "s", "/mcp", "t", edited.as_object()),
        bind("b", &["u".into()], "s", "/mcp", "t", args.as_object()),
        bind("a", &[], "s", "/mcp", "t", args.as_object()),
        bind("a", &["v".into()], "s", "/mcp", "t", args.as_object()),
        bind("a", &["u".into()], "s2", "/mcp", "t", args.as_object()),
        bind("a", &["u".into()], "s", "/mcp", "t2", args.as_object()),
        bind("a", &["u".into()], "s", "/mcp?x=1", "t", args.as_object()),
    ] {
        assert_ne!(other.unwrap().digest, base.digest);
    }
}

#[test]
fn a_forged_or_edited_request_state_does_not_open() {
    let key = b"k3y";
    let s = seal(key, "ap1", "sha256:abcd");
    assert!(is_ours(&s));
    assert_eq!(open(key, &s).unwrap(), "sha256:abcd");
    assert!(open(b"other", &s).is_err(), "another key");
    let edited = s.replace("abcd", "abce");
    assert!(open(key, &edited).is_err(), "binding edited");
    assert!(open(key, "agentplane.approval.v1.ap1.abcd.00").is_err());
    assert!(open(key, "theirs").is_err());
    assert!(!is_ours("theirs"));
}

#[test]
fn only_the_gateways_own_request_state_is_taken_out_of_a_message() {
    let mut params = json!({
        "name": "t",
        "requestState": seal(b"k", "ap1", "sha256:00"),
        "inputResponses": {INPUT_KEY: {"result": {"action": "accept"}}, "theirs": {}},
    })
    .as_object()
    .cloned()
    .unwrap();
    assert!(take_state(&mut params).is_some());
    assert!(params.get("requestState").is_none());
    assert_eq!(params["inputResponses"], json!({"theirs": {}}));
    let mut server = json!({"requestState": "the-servers", "inputResponses": {"x": {}}})
        .as_object()
        .cloned()
        .unwrap();
    let before = server.clone();
    assert_eq!(take_state(&mut server), None);
    assert_eq!(
        server, before,
        "a server's own state goes upstream untouched"
    );
}

#[test]
fn the_services_answers_are_read_strictly() {
    let pending =
        json!({"state": "pending", "id": "ap1", "url": "http://a/a/ap1", "expires_at": 9});
    assert!(matches!(
        read(pending.to_string().as_bytes()).unwrap(),
        Answer::Pending(p) if p.id == "ap1" && p.expires_at == 9
    ));
    let used = json!({"state": "used", "id": "ap1", "pending": pending});
    assert!(matches!(
        read(used.to_string().as_bytes()).unwrap(),
        Answer::Used(_)
    ));
    for bad in [
        json!({"state": "approved", "id": "ap1"}),
        json!({"state": "pending", "id": "ap1", "url": "javascript:alert(1)", "expires_at": 9}),
        json!({"state": "used", "id": "ap1"}),
        json!({"state": "allow"}),
        json!("approved"),
    ] {
        assert!(read(bad.to_string().as_bytes()).is_err(), "{bad}");
    }
    assert!(read(b"not json").is_err());
    assert!(read(&vec![b' '; MAX_ANSWER_BYTES + 1]).is_err());
}

pub(crate) fn signing() -> SigningKey {
    SigningKey::from_bytes(&[7u8; 32])
}

pub(crate) fn grant_for(
    key: &SigningKey,
    kid: &str,
    binding: &str,
    approver: &str,
    exp: i64,
    typ: &str,
) -> String {
    let at = |s| chrono::DateTime::from_timestamp(s, 0).unwrap();
    let mut c = Claims::new(json!({
        "jti": "ap1", "binding": binding, "approver": approver, "aud": "agentplane"
    }));
    c.issued_at = Some(at(exp - 60));
    c.expiration = Some(at(exp));
    let header = Header::empty().with_key_id(kid).with_token_type(typ);
    Ed25519.token(&header, &c, key).unwrap()
}

#[test]
fn a_grant_passes_only_for_its_call_its_approvers_and_its_time() {
    let key = signing();
    let keys = vec![("k1".to_string(), key.verifying_key())];
    let approvers = vec!["alice".to_string()];
    let ok = grant_for(&key, "k1", "sha256:aa", "alice", 1_000, grant::TYP);
    let g = grant::verify(&ok, &keys, "sha256:aa", &approvers, 900).unwrap();
    assert_eq!((g.id.as_str(), g.approver.as_str()), ("ap1", "alice"));
    // Another call, another approver, too late, another key, another typ.
    assert!(grant::verify(&ok, &keys, "sha256:ab", &approvers, 900).is_err());
    let mallory = grant_for(&key, "k1", "sha256:aa", "mallory", 1_000, grant::TYP);
    assert!(grant::verify(&mallory, &keys, "sha256:aa", &approvers, 900).is_err());
    assert!(grant::verify(&ok, &keys, "sha256:aa", &approvers, 1_100).is_err());
    let forged = grant_for(
        &SigningKey::from_bytes(&[8u8; 32]),
        "k1",
        "sha256:aa",
        "alice",
        1_000,
        grant::TYP,
    );
    assert!(grant::verify(&forged, &keys, "sha256:aa", &approvers, 900).is_err());
    let unknown = grant_for(&key, "k2", "sha256:aa", "alice", 1_000, grant::TYP);
    assert!(grant::verify(&unknown, &keys, "sha256:aa", &approvers, 900).is_err());
    let txn = grant_for(&key, "k1", "sha256:aa", "alice", 1_000, "txntoken+jwt");
    assert!(grant::verify(&txn, &keys, "sha256:aa", &approvers, 900).is_err());
    assert!(grant::verify("a.b.c", &keys, "sha256:aa", &approvers, 900).is_err());
}

#[test]
fn each_revision_is_told_in_its_own_terms() {
    assert_eq!(Form::for_version(Some("2026-07-28")), Form::InputRequired);
    assert_eq!(Form::for_version(Some("2025-11-25")), Form::UrlElicitation);
    assert_eq!(Form::for_version(Some("2025-06-18")), Form::ToolResult);
    assert_eq!(Form::for_version(None), Form::ToolResult);
    let pending = Some(Pending {
        id: "ap1".into(),
        url: "http://approve/a/ap1".into(),
        expires_at: 9,
    });
    let asked = |form, request_state| Asked {
        state: AskedState::Required,
        pending: pending.clone(),
        form,
        request_state,
    };
    let id = json!(4);
    let b = asked(Form::InputRequired, Some("st".into())).body(&id, "d1");
    assert_eq!(b["id"], 4);
    assert_eq!(b["result"]["resultType"], "input_required");
    assert_eq!(b["result"]["requestState"], "st");
    let e = &b["result"]["inputRequests"][INPUT_KEY];
    assert_eq!(e["method"], "elicitation/create");
    assert_eq!(e["params"]["mode"], "url");
    assert_eq!(e["params"]["url"], "http://approve/a/ap1");
    let b = asked(Form::UrlElicitation, None).body(&id, "d1");
    assert_eq!(b["error"]["code"], -32042);
    assert_eq!(
        b["error"]["data"]["elicitations"][0]["elicitationId"],
        "ap1"
    );
    assert_eq!(b["error"]["data"]["decision_id"], "d1");
    let b = asked(Form::ToolResult, None).body(&id, "d1");
    assert_eq!(b["result"]["isError"], true);
    assert!(b["result"]["content"][0]["text"]
        .as_str()
        .unwrap()
        .contains("http://approve/a/ap1"));
    let rejected = Asked {
        state: AskedState::Rejected {
            approver: "bob".into(),
        },
        pending: None,
        form: Form::UrlElicitation,
        request_state: None,
    };
    let b = rejected.body(&id, "d1");
    assert_eq!(b["result"]["isError"], true);
    assert!(b["result"]["content"][0]["text"]
        .as_str()
        .unwrap()
        .contains("approval rejected by bob"));
}
