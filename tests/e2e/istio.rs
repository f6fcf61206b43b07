//! agentplane on the inbound side of one pod's sidecar, as Istio runs it
//! (`envoy/istio/agentplane.yaml`): the listener delivers every request to
//! that pod, whatever its path says, so the filter must decide the pod's
//! own service (`routing.local_service`), never the one a path names.

use agentplane_e2e::*;
use serde_json::Value;

/// `envoy/agentplane.json` (customer-lookup and sentiment-analysis among
/// its services) as the customer-lookup pod's sidecar runs it.
fn customer_lookup_sidecar(local_service: bool) -> String {
    let mut cfg: Value = serde_json::from_str(&default_plugin_config()).unwrap();
    if local_service {
        cfg["routing"] = serde_json::json!({"local_service": "customer-lookup"});
    }
    cfg.to_string()
}

/// An ml agent: may use the shared sentiment-analysis skill, fails
/// customer-lookup's team rule (team customer-success).
fn ml_agent(idp: &Idp) -> String {
    idp.agent_token(
        "ml-batch@clients",
        "ml",
        "batch",
        "production",
        &["skills:invoke", "data:read"],
    )
}

#[test]
fn istio_a_path_naming_another_service_cannot_reach_this_pod() {
    let idp = Idp::new();
    let pod = Upstream::start();
    let bearer = format!("Bearer {}", ml_agent(&idp));
    let auth = [("authorization", bearer.as_str())];

    // The attack, on the shared plugin config the sidecar ran before
    // local_service: decided as sentiment-analysis (allowed), delivered to
    // the customer-lookup pod as /customers/42.
    let setup = EnvoySetup::without_vault(&idp, pod.port, customer_lookup_sidecar(false));
    let envoy = Envoy::start_yaml(&render_envoy_inbound(&setup));
    let r = envoy.request("GET", "/sentiment-analysis/customers/42", &auth);
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(pod.seen()[0].path, "/customers/42");
    drop(envoy);
    pod.clear();

    let setup = EnvoySetup::without_vault(&idp, pod.port, customer_lookup_sidecar(true));
    let envoy = Envoy::start_yaml(&render_envoy_inbound(&setup));
    for path in [
        "/sentiment-analysis/customers/42",
        "/mcp://sentiment-analysis/customers/42",
    ] {
        let r = envoy.request("GET", path, &auth);
        assert_eq!(r.status, 403, "{path}: {}", r.body);
        let body = r.json();
        let reason = body["reason"].as_str().unwrap_or_default();
        assert!(
            reason.contains("\"sentiment-analysis\"") && reason.contains("\"customer-lookup\""),
            "{path}: {reason}"
        );
        let id = body["decision_id"].as_str().unwrap_or_default();
        assert!(!id.is_empty(), "{path}");
        assert_eq!(r.header("x-decision-id"), Some(id), "{path}");
    }
    // Asked directly, this pod's own rule decides: the ml agent is refused.
    let r = envoy.request("GET", "/customers/42", &auth);
    assert_eq!(r.status, 403, "{}", r.body);
    assert!(r.json()["reason"]
        .as_str()
        .unwrap_or_default()
        .contains("team"));
    assert!(pod.seen().is_empty(), "reached the pod: {:?}", pod.seen());

    // The pod's own team gets through, on the path it sent.
    let bearer = format!("Bearer {}", idp.triage_token());
    let r = envoy.request(
        "GET",
        "/customers/42?fields=name",
        &[("authorization", bearer.as_str())],
    );
    assert_eq!(r.status, 200, "{}", r.body);
    let seen = pod.seen();
    assert_eq!(seen.len(), 1);
    assert_eq!(seen[0].path, "/customers/42?fields=name");
    assert_eq!(
        seen[0].one("x-agent-id").as_deref(),
        Some("support-triage@clients")
    );
}
