//! The shadow revision on the request path: it decides a sample of the
//! same inputs without enforcing, and where it disagrees the entry point
//! is counted and the record carries its answer.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]

use super::*;
use crate::policy::Policy;

const ENFORCED: &str = r#"package t
import rego.v1
allow if input.request.method == "GET"
deny contains "writes are closed" if input.request.method != "GET"
"#;

const STRICTER: &str = r#"package t
import rego.v1
allow if {
    input.request.method == "GET"
    input.request.path[1] == "public"
}
deny contains "only public reads" if not allow
"#;

fn shadowed(sample: f64) -> Filter {
    let cfg = json!({
        "policy": {"entrypoint": "data.t", "shadow_sample": sample},
        "decision_log": {"enabled": true, "sample_allowed": 1.0},
    });
    let config = crate::config::Config::from_json(cfg.to_string().as_bytes()).unwrap();
    let policy = Policy::compile(&[("t.rego", ENFORCED)], "{}", "data.t").unwrap();
    let mut f = Filter::with_policy(config, policy, 7);
    if sample > 0.0 {
        f.worker.shadow = Some(Policy::compile(&[("s.rego", STRICTER)], "{}", "data.t").unwrap());
    }
    f
}

fn send(f: &mut Filter, method: &str, path: &str) -> (Flow, MockHost) {
    let mut h = request(method, path, Some(claims(json!({}))));
    f.on_configured(&mut h, "test");
    let (flow, mut d) = f.on_request_headers(&mut h);
    f.on_log(&mut h, &mut d);
    (flow, h)
}

#[test]
fn the_shadow_decides_without_enforcing_and_its_disagreement_is_counted_and_recorded() {
    let mut f = shadowed(1.0);
    // The enforced policy allows; the shadow would not: still forwarded.
    let (flow, h) = send(&mut f, "GET", "/mcp://svc/private");
    assert_eq!(flow, Flow::Continue);
    assert_eq!(h.metrics["agentplane.shadow.evaluated"], 1);
    assert_eq!(h.metrics["agentplane.shadow.disagreed.allow"], 1);
    let rec = log_lines(&h).pop().unwrap();
    assert_eq!(rec["result"]["allowed"], true);
    assert_eq!(rec["shadow"]["allowed"], false);
    assert_eq!(rec["shadow"]["disagree"], json!(["allow"]));
    assert_eq!(rec["shadow"]["reasons"], json!(["only public reads"]));
    // Both allow: no disagreement.
    let (_, h) = send(&mut f, "GET", "/mcp://svc/public");
    assert_eq!(h.metrics["agentplane.shadow.disagreed.allow"], 0);
    assert_eq!(
        log_lines(&h).pop().unwrap()["shadow"]["disagree"],
        json!([])
    );
    // Both refuse, for other reasons: the deny entry point disagrees.
    let (flow, h) = send(&mut f, "POST", "/mcp://svc/public");
    assert_eq!(flow, Flow::Replied);
    assert_eq!(h.reply.as_ref().unwrap().status, 403);
    assert_eq!(h.metrics["agentplane.shadow.disagreed.deny"], 1);
}

#[test]
fn with_the_sample_off_the_shadow_costs_nothing() {
    let mut f = shadowed(0.0);
    let (flow, h) = send(&mut f, "GET", "/mcp://svc/private");
    assert_eq!(flow, Flow::Continue);
    assert_eq!(h.metrics["agentplane.shadow.evaluated"], 0);
    assert!(log_lines(&h).pop().unwrap().get("shadow").is_none());
}

#[test]
fn a_shadow_sample_without_a_shadow_revision_is_a_configuration_error() {
    // The shipped build carries no shadow revision.
    let cfg = json!({"policy": {"shadow_sample": 0.5}});
    let e = Filter::new(cfg.to_string().as_bytes(), 7).unwrap_err();
    assert!(e.to_string().contains("no shadow revision"), "{e}");
    let cfg = json!({"policy": {"shadow_sample": 1.5}});
    assert!(Filter::new(cfg.to_string().as_bytes(), 7).is_err());
}
