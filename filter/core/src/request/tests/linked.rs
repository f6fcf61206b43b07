//! Linked accounts on the request path: a service reached `via:
//! linked_accounts` exchanges at the link broker (not the security token
//! service), the upstream gets the person's token from it, and "no link"
//! answers with the page to link at: a 401 for HTTP, a URL elicitation
//! for MCP, never a token in the answer, the log or the record.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]

use super::*;

const AGENT_JWT: &str = "agent.jwt.CANARY-SUBJECT";
const PERSONS: &str = "saas-access.CANARY-PERSON";
const BROKER_KEY: &str = "CANARY-BROKER-KEY";

fn linked_filter() -> Filter {
    let cfg = json!({
        "token_exchange": {"cluster": "sts", "authority": "sts.local", "client_id": "gateway"},
        "linked_accounts": {"cluster": "links", "authority": "links.local",
                            "client_id": "agentplane-filter", "client_secret_env": "AGENTPLANE_LINKS_KEY"},
        "decision_log": {"enabled": true},
        "resources": {
            "saas": {"type": "tool", "metadata": {"team": "customer-success", "environment": "production"},
                "token_exchange": {"audience": "saas", "via": "linked_accounts"}},
        }
    });
    Filter::new(cfg.to_string().as_bytes(), 7).unwrap()
}

fn call(f: &mut Filter, stream: u32) -> (Flow, Decision, MockHost) {
    let mut h = request(
        "GET",
        "/mcp://saas/repos",
        Some(claims(json!({"permissions": ["tools:access"]}))),
    )
    .with_header("authorization", &format!("Bearer {AGENT_JWT}"));
    h.stream = stream;
    h.env
        .insert("AGENTPLANE_LINKS_KEY".into(), BROKER_KEY.into());
    f.on_configured(&mut h, "test");
    let (flow, d) = f.on_request_headers(&mut h);
    (flow, d, h)
}

fn leaked(all: &str) {
    for canary in [AGENT_JWT, PERSONS, BROKER_KEY, "CANARY"] {
        assert!(!all.contains(canary), "{canary} leaked: {all}");
    }
}

#[test]
fn a_linked_service_gets_the_persons_token_from_the_broker_not_the_sts() {
    let mut f = linked_filter();
    let (flow, d, h) = call(&mut f, 42);
    assert_eq!(flow, Flow::Paused, "{:?}", h.reply);
    assert!(d.allowed());
    assert!(h.header_values("authorization").is_empty());
    let c = &h.dispatched[0];
    assert_eq!(c.cluster, "links", "the broker, not the token service");
    assert_eq!(c.header(":authority"), Some("links.local"));
    let body = String::from_utf8(c.body.clone().unwrap()).unwrap();
    assert!(body.contains("audience=saas"), "{body}");
    assert!(
        body.contains(&format!("subject_token={AGENT_JWT}")),
        "{body}"
    );
    let mut root = MockHost::new();
    f.on_configured(&mut root, "test");
    let answer = json!({"access_token": PERSONS, "token_type": "Bearer", "expires_in": 600,
                        "issued_token_type": "urn:ietf:params:oauth:token-type:access_token"});
    f.on_callout_response(
        &mut root,
        c.token,
        Some(200),
        Some(answer.to_string().as_bytes()),
    );
    assert_eq!(
        root.resumed,
        [(
            42,
            vec![("authorization".to_string(), format!("Bearer {PERSONS}"))]
        )]
    );
}

#[test]
fn no_linked_account_answers_401_with_the_page_to_link_at() {
    let mut f = linked_filter();
    let (_, mut d, mut h) = call(&mut f, 7);
    let mut root = MockHost::new();
    f.on_configured(&mut root, "test");
    let page = "https://links.example/link/saas";
    let refusal = json!({"error": "link_required", "error_description": "no link",
                         "link_uri": page});
    f.on_callout_response(
        &mut root,
        h.dispatched[0].token,
        Some(400),
        Some(refusal.to_string().as_bytes()),
    );
    assert!(root.resumed.is_empty());
    let (stream, reply) = &root.stream_replies[0];
    assert_eq!(*stream, 7);
    assert_eq!(reply.status, 401);
    let body: Value = serde_json::from_slice(&reply.body).unwrap();
    assert_eq!(body["error"], "link_required");
    assert_eq!(body["link"], page);
    let www: Vec<_> = reply
        .headers
        .iter()
        .filter(|(k, _)| k == "www-authenticate")
        .map(|(_, v)| v.clone())
        .collect();
    assert_eq!(www, [format!(r#"AccountLink url="{page}""#)]);
    assert_eq!(root.metrics["agentplane.decisions.link_required"], 1);
    f.on_log(&mut h, &mut d);
    let all = format!(
        "{} {:?} {:?} {:?}",
        String::from_utf8_lossy(&reply.body),
        log_lines(&h),
        root.logs.borrow(),
        h.logs.borrow()
    );
    leaked(&all);
}

#[test]
fn a_link_page_that_could_break_out_of_its_header_or_page_is_a_plain_refusal() {
    for bad in [
        json!("javascript:alert(1)"),
        json!("https://links.example/\" onclick=\"x"),
        json!("https://links.example/<script>"),
        json!("https://links.example/a b"),
        json!(format!("https://links.example/{}", "a".repeat(3000))),
        json!(7),
        Value::Null,
    ] {
        let mut f = linked_filter();
        let (_, _, h) = call(&mut f, 9);
        let mut root = MockHost::new();
        f.on_configured(&mut root, "test");
        let refusal = json!({"error": "link_required", "link_uri": bad});
        f.on_callout_response(
            &mut root,
            h.dispatched[0].token,
            Some(400),
            Some(refusal.to_string().as_bytes()),
        );
        let (_, reply) = &root.stream_replies[0];
        assert_eq!(reply.status, 403, "{bad}");
        let text = String::from_utf8_lossy(&reply.body).to_string();
        assert!(text.contains("token_exchange_refused"), "{text}");
        assert!(
            !text.contains("script") && !text.contains("onclick"),
            "{text}"
        );
    }
}

#[test]
fn a_linked_service_without_the_linked_accounts_block_is_a_config_error() {
    let cfg = json!({
        "token_exchange": {"cluster": "sts", "authority": "sts.local", "client_id": "gateway"},
        "resources": {"saas": {"type": "tool",
            "token_exchange": {"audience": "saas", "via": "linked_accounts"}}}
    });
    let e = Filter::new(cfg.to_string().as_bytes(), 7).err().unwrap();
    assert!(
        e.to_string().contains("needs the linked_accounts block"),
        "{e}"
    );
    let cfg = json!({
        "linked_accounts": {"cluster": "links", "authority": "", "client_id": "f"},
    });
    let e = Filter::new(cfg.to_string().as_bytes(), 7).err().unwrap();
    assert!(e.to_string().contains("linked_accounts"), "{e}");
}

#[test]
fn an_mcp_call_without_a_link_gets_a_url_elicitation() {
    let d = crate::outcome::Denial::LinkRequired("https://links.example/link/saas".into());
    let r = d.answer("dec-1", &[], Some(&json!(5)), true, None);
    assert_eq!(r.status, 200, "a JSON-RPC answer, not a transport failure");
    let v: Value = serde_json::from_slice(&r.body).unwrap();
    assert_eq!(v["id"], 5);
    assert_eq!(
        v["error"]["code"],
        crate::mcp::code::URL_ELICITATION_REQUIRED
    );
    let e = &v["error"]["data"]["elicitations"][0];
    assert_eq!(e["mode"], "url");
    assert_eq!(e["url"], "https://links.example/link/saas");
    assert_eq!(e["elicitationId"], "dec-1");
    assert!(v["error"]["message"]
        .as_str()
        .unwrap()
        .contains("https://links.example/link/saas"));
    assert!(!r.headers.iter().any(|(k, _)| k == "www-authenticate"));
}
