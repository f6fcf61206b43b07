//! Which service a request is decided as, when the proxy in front of one
//! workload (an Istio inbound sidecar, `routing.local_service`) delivers
//! every request to that workload whatever the path says.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]

use super::*;
use serde_json::{json, Value};
#[cfg(all(target_arch = "wasm32", target_os = "unknown"))]
use wasm_bindgen_test::wasm_bindgen_test as test;

/// The default plugin configuration's two services, as the sidecar of the
/// customer-lookup pod sees them.
fn config(local: Option<&str>) -> Value {
    let mut c = json!({"resources": {
        "sentiment-analysis": {"type": "skill",
            "metadata": {"team": "ml", "environment": "production", "shared": true}},
        "customer-lookup": {"type": "data",
            "metadata": {"team": "customer-success", "environment": "production"}}
    }});
    if let Some(l) = local {
        c["routing"] = json!({ "local_service": l });
    }
    c
}

fn sidecar() -> Filter {
    Filter::new(config(Some("customer-lookup")).to_string().as_bytes(), 7).unwrap()
}

/// An ml agent: may use the shared sentiment-analysis skill, fails
/// customer-lookup's team rule.
fn ml_agent() -> Value {
    claims(json!({
        "sub": "ml-batch@clients",
        "permissions": ["skills:invoke", "data:read"],
        "https://mcp.example.com/team": "ml",
    }))
}

#[test]
fn istio_a_path_naming_another_service_cannot_reach_this_pod() {
    let mut f = sidecar();
    for path in [
        "/sentiment-analysis/customers/42",
        "/mcp://sentiment-analysis/customers/42",
        "//sentiment-analysis/customers/42?x=1",
    ] {
        let mut h = request("GET", path, Some(ml_agent()));
        let (flow, d) = f.on_request_headers(&mut h);
        assert_eq!(flow, Flow::Replied, "{path}");
        assert_eq!(h.reply.as_ref().unwrap().status, 403, "{path}");
        let b = body(&h);
        assert_eq!(b["error"], "forbidden");
        assert_eq!(b["decision_id"], d.id.as_str());
        let reason = b["reason"].as_str().unwrap();
        assert!(
            reason.contains("\"sentiment-analysis\"") && reason.contains("\"customer-lookup\""),
            "{reason}"
        );
        // Refused before anything is written: nothing goes upstream.
        assert_eq!(h.header_writes, 0, "{path}");
    }
}

#[test]
fn istio_without_local_service_the_path_picks_the_decided_service() {
    // What the sidecar did before local_service: the path's service was
    // decided (and allowed), then the request went on to this pod.
    let mut f = Filter::new(config(None).to_string().as_bytes(), 7).unwrap();
    let mut h = request("GET", "/sentiment-analysis/customers/42", Some(ml_agent()));
    assert_eq!(f.on_request_headers(&mut h).0, Flow::Continue);
    assert_eq!(h.header_values(":path"), ["/customers/42"]);
    // With it, the same agent asking this pod directly meets its team rule.
    let mut f = sidecar();
    let mut h = request("GET", "/customers/42", Some(ml_agent()));
    assert_eq!(f.on_request_headers(&mut h).0, Flow::Replied);
    assert_eq!(h.reply.as_ref().unwrap().status, 403);
    let reason = body(&h)["reason"].as_str().unwrap().to_string();
    assert!(reason.contains("team"), "{reason}");
    assert_eq!(h.header_writes, 0);
}

#[test]
fn istio_the_local_service_is_decided_and_its_path_kept() {
    let mut f = sidecar();
    // The pod's own team, with the path unchanged: no segment stripped,
    // not even one that names this service itself.
    for path in [
        "/customers/42?fields=name",
        "/customer-lookup/customers/42",
        "/",
    ] {
        let mut h = request("GET", path, Some(claims(json!({}))));
        let (flow, d) = f.on_request_headers(&mut h);
        assert_eq!(flow, Flow::Continue, "{path}: {:?}", h.reply);
        assert!(d.allowed());
        assert_eq!(h.header_values(":path"), [path]);
        assert_eq!(h.header_values(SERVICE_HEADER), ["customer-lookup"]);
    }
    // An unregistered first segment is just this pod's path.
    let mut h = request("GET", "/web-search/q", Some(claims(json!({}))));
    assert_eq!(f.on_request_headers(&mut h).0, Flow::Continue);
    assert_eq!(h.header_values(":path"), ["/web-search/q"]);
}

#[test]
fn istio_dot_segments_are_still_refused_under_local_service() {
    let mut f = sidecar();
    let mut h = request("GET", "/customers/../admin", Some(claims(json!({}))));
    assert_eq!(f.on_request_headers(&mut h).0, Flow::Replied);
    assert_eq!(h.reply.as_ref().unwrap().status, 400);
    assert_eq!(h.header_writes, 0);
}

#[test]
fn istio_an_mcp_pod_decides_its_body_as_itself() {
    let cfg = json!({"routing": {"local_service": "tickets-mcp"}, "resources": {
        "tickets-mcp": {"type": "tool", "protocol": "mcp",
            "metadata": {"team": "customer-success", "environment": "production"}}
    }});
    let mut f = Filter::new(cfg.to_string().as_bytes(), 7).unwrap();
    let mut h = request(
        "POST",
        "/mcp",
        Some(claims(json!({"permissions": ["tools:call"]}))),
    );
    // Held for the body: the local service is an MCP service.
    let (flow, mut waiting) = f.on_request_headers(&mut h);
    assert_eq!(flow, Flow::NeedBody);
    let call = br#"{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"lookup_ticket","arguments":{"team":"customer-success","id":"T-1"}}}"#;
    let (flow, d) = f.on_request_body(&mut h, &mut waiting, RequestBody::Complete(call));
    assert_eq!(flow, Flow::Continue, "{:?}", h.reply);
    assert!(d.allowed());
    assert_eq!(h.header_values(":path"), ["/mcp"]);
}

#[test]
fn istio_a_local_service_missing_from_the_registry_is_refused_at_configure() {
    for local in ["customer-lookups", ""] {
        let mut c = config(None);
        c["routing"] = json!({ "local_service": local });
        let e = Filter::new(c.to_string().as_bytes(), 1).unwrap_err();
        assert!(e.to_string().contains("routing.local_service"), "{e}");
    }
}
