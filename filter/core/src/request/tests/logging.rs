//! Decision records, counters and timing: OPA-shaped records without
//! credentials, sampling, mandatory logging, the metrics header.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]

use super::*;
#[cfg(all(target_arch = "wasm32", target_os = "unknown"))]
use wasm_bindgen_test::wasm_bindgen_test as test;

#[test]
fn decisions_are_logged_in_opa_shape_without_credentials() {
    let mut f = logged_filter(json!({"enabled": true, "mask": ["/input/jwt/payload/email"]}));
    let canary_jwt = "Bearer canary-jwt-0a1b2c";
    let mut h = request(
        "POST",
        "/mcp://hello-skill/greet",
        Some(claims(json!({"email": "canary@x.org"}))),
    )
    .with_header("authorization", canary_jwt)
    .with_header("cookie", "session=canary-cookie");
    let (_, d) = f.on_request_headers(&mut h);
    assert!(d.allowed());
    h = h.with_property(&["response", "code"], 201u64.to_le_bytes().to_vec());
    f.on_log(&mut h, &mut d.clone());
    let all: String = h.logs.borrow().iter().map(|(_, l)| l.clone()).collect();
    assert!(!all.contains("canary"), "{all}");
    let recs = log_lines(&h);
    assert_eq!(recs.len(), 1);
    let r = &recs[0];
    assert_eq!(r["decision_id"], d.id);
    assert_eq!(r["path"], "mcp/authz");
    assert_eq!(r["result"]["allowed"], true);
    assert_eq!(r["status"], 201, "upstream's status");
    assert_eq!(r["agent"]["id"], "support-triage@clients");
    assert_eq!(r["agent"]["team"], "customer-success");
    assert_eq!(r["resource"], "hello-skill");
    assert_eq!(r["input"]["resource"]["id"], "hello-skill");
    assert_eq!(r["input"]["request"]["id"], r["decision_id"]);
    assert!(
        r["input"]["jwt"]["payload"].get("email").is_none(),
        "masked"
    );
    assert!(r["metrics"]["timer_rego_query_eval_ns"].as_u64().is_some());
    assert_eq!(r["labels"]["policy_revision"], crate::bundle::REVISION);
    assert_eq!(r["cached"], false);

    // The same request again: a cache hit, still logged with its input.
    let mut h = request(
        "POST",
        "/mcp://hello-skill/greet",
        Some(claims(json!({"email": "canary@x.org"}))),
    )
    .with_property(&["request", "id"], "req-456");
    let (_, d) = f.on_request_headers(&mut h);
    f.on_log(&mut h, &mut d.clone());
    let r = &log_lines(&h)[0];
    assert_eq!(r["cached"], true);
    assert_eq!(
        r["input"]["request"]["id"],
        d.id.as_str(),
        "this request's id"
    );
    assert!(r["metrics"].get("timer_rego_query_eval_ns").is_none());
}

#[test]
fn denies_are_always_logged_allows_sampled() {
    let mut f = logged_filter(json!({"enabled": true, "sample_allowed": 0.0}));
    let mut h = request("POST", "/mcp://hello-skill/greet", Some(claims(json!({}))));
    let (_, d) = f.on_request_headers(&mut h);
    f.on_log(&mut h, &mut d.clone());
    assert!(d.allowed() && log_lines(&h).is_empty());
    let mut h = request(
        "POST",
        "/mcp://hello-skill/greet",
        Some(claims(json!({"permissions": []}))),
    );
    let (_, d) = f.on_request_headers(&mut h);
    f.on_log(&mut h, &mut d.clone());
    let r = &log_lines(&h)[0];
    assert_eq!(r["result"]["allowed"], false);
    assert_eq!(r["status"], 403);
    assert_eq!(
        r["result"]["reasons"][0],
        "missing permission skills:invoke for action invoke_skill"
    );
    // No identity: still a record.
    let mut h = request("POST", "/mcp://hello-skill/greet", None);
    let (_, d) = f.on_request_headers(&mut h);
    f.on_log(&mut h, &mut d.clone());
    assert_eq!(log_lines(&h)[0]["status"], 401);
    // Off by default.
    let mut plain = filter();
    let mut h = request("POST", "/mcp://hello-skill/greet", None);
    let (_, d) = plain.on_request_headers(&mut h);
    plain.on_log(&mut h, &mut d.clone());
    assert!(d.record.is_none() && log_lines(&h).is_empty());
}

#[test]
fn counters_move_exactly_with_the_requests() {
    let mut f = filter();
    let mut totals = std::collections::BTreeMap::new();
    let mut run = |mut h: MockHost| {
        f.on_configured(&mut h, "test");
        f.on_request_headers(&mut h);
        for (k, v) in &h.metrics {
            *totals.entry(k.clone()).or_insert(0u64) += v;
        }
    };
    for _ in 0..3 {
        run(
            request("POST", "/mcp://hello-skill/greet", Some(claims(json!({}))))
                .with_header("x-agent-id", "forged"),
        );
    }
    run(request(
        "POST",
        "/mcp://hello-skill/greet",
        Some(claims(json!({"permissions": []}))),
    ));
    run(request("POST", "/mcp://hello-skill/greet", None));
    run(request(
        "POST",
        "/mcp://hello-skill/../x",
        Some(claims(json!({}))),
    ));
    let get = |k: &str| totals.get(k).copied().unwrap_or(0);
    assert_eq!(get("agentplane.decisions.allowed"), 3);
    assert_eq!(get("agentplane.decisions.denied"), 1);
    assert_eq!(get("agentplane.decisions.unauthorized"), 1);
    assert_eq!(get("agentplane.decisions.bad_request"), 1);
    assert_eq!(get("agentplane.headers.stripped"), 3);
    assert_eq!(get("agentplane.decision_cache.miss"), 2);
    assert_eq!(get("agentplane.decision_cache.hit"), 2);
}

#[test]
fn mandatory_logging_denies_when_records_cannot_be_handed_over() {
    let mut f = logged_filter(json!({"enabled": true, "mandatory": true,
        "collector": {"cluster": "logs", "max_batch": 1, "max_buffer": 2}}));
    assert!(f.needs_tick());
    for _ in 0..2 {
        let mut h = request("POST", "/mcp://hello-skill/greet", Some(claims(json!({}))));
        let (_, d) = f.on_request_headers(&mut h);
        assert!(d.allowed());
        f.on_log(&mut h, &mut d.clone());
    }
    // The collector never answered: the buffer is full, requests deny.
    let mut h = request("POST", "/mcp://hello-skill/greet", Some(claims(json!({}))));
    let (flow, d) = f.on_request_headers(&mut h);
    assert_eq!(flow, Flow::Replied);
    assert_eq!(
        (d.status(), body(&h)["reason"].as_str()),
        (503, Some("decision_log_unavailable"))
    );
    // The root ships a batch; once the collector accepts, requests pass.
    let mut root = MockHost::new();
    f.on_tick(&mut root);
    let t = root.dispatched[0].token;
    let batch: Value = serde_json::from_slice(root.dispatched[0].body.as_ref().unwrap()).unwrap();
    assert_eq!(batch.as_array().unwrap().len(), 1);
    f.on_callout_response(&mut root, t, Some(204), None);
    let mut h = request("POST", "/mcp://hello-skill/greet", Some(claims(json!({}))));
    assert!(f.on_request_headers(&mut h).1.allowed());

    let e = Filter::new(
        br#"{"decision_log": {"enabled": true, "mandatory": true}}"#,
        1,
    )
    .unwrap_err();
    assert!(
        e.to_string()
            .contains("needs decision_log.enabled and a collector"),
        "{e}"
    );
}

#[test]
fn metrics_header_reports_the_filters_own_timing_when_enabled() {
    let mut cfg: Value = serde_json::from_str(CONFIG).unwrap();
    cfg["headers"] = json!({"metrics_header": true});
    let mut f = Filter::new(cfg.to_string().as_bytes(), 7).unwrap();
    let mut h = request("POST", "/mcp://hello-skill/greet", Some(claims(json!({}))));
    let (_, mut d) = f.on_request_headers(&mut h);
    f.on_response_headers(&mut h, &mut d);
    let v = h
        .response_headers
        .iter()
        .find(|(k, _)| k == METRICS_HEADER)
        .unwrap()
        .1
        .clone();
    assert!(
        v.starts_with("filter_us=") && v.ends_with(";cache=miss"),
        "{v}"
    );
    let mut h = request("POST", "/mcp://hello-skill/greet", None);
    f.on_request_headers(&mut h);
    assert!(reply_header(&h, METRICS_HEADER).is_some());
    // Off by default.
    let mut h = request("POST", "/mcp://hello-skill/greet", Some(claims(json!({}))));
    let (_, mut d) = filter().on_request_headers(&mut h);
    filter().on_response_headers(&mut h, &mut d);
    assert!(!h.response_headers.iter().any(|(k, _)| k == METRICS_HEADER));
}
// --- attacks: each test is named after what it stops --------

#[test]
fn the_access_log_sink_hands_records_to_envoy_as_filter_state() {
    let mut f = logged_filter(json!({"enabled": true, "sink": "access_log",
        "mask": ["/input/jwt/payload/email"]}));
    let property = |h: &MockHost| -> Option<Value> {
        let v = h.set_properties.get(crate::audit::PROPERTY)?;
        Some(serde_json::from_slice(v).unwrap())
    };
    let req = || {
        request(
            "POST",
            "/mcp://hello-skill/greet",
            Some(claims(json!({"email": "canary@x.org"}))),
        )
        .with_header("authorization", "Bearer canary-jwt")
        .with_property(&["response", "code"], 201u64.to_le_bytes().to_vec())
    };
    let mut h = req();
    let (_, d) = f.on_request_headers(&mut h);
    assert!(property(&h).is_none(), "handed over when the stream ends");
    f.on_log(&mut h, &mut d.clone());
    assert!(log_lines(&h).is_empty(), "not in Envoy's log");
    let raw = String::from_utf8(h.set_properties[crate::audit::PROPERTY].clone()).unwrap();
    assert!(!raw.contains("canary") && !raw.contains('\n'), "{raw}");
    let r = property(&h).unwrap();
    assert_eq!(
        (r["decision_id"].as_str(), &r["status"]),
        (Some(d.id.as_str()), &json!(201))
    );
    assert_eq!(r["cached"], false);

    // A denial carries the filter's own status; Envoy refusing the
    // property sends the record to Envoy's log rather than losing it.
    let mut h = request(
        "POST",
        "/mcp://hello-skill/greet",
        Some(claims(json!({"permissions": []}))),
    );
    h.refuse_set_property = true;
    let (_, d) = f.on_request_headers(&mut h);
    f.on_log(&mut h, &mut d.clone());
    let recs = log_lines(&h);
    assert_eq!((recs.len(), &recs[0]["status"]), (1, &json!(403)));

    // A cache hit: this request's record, with the cached input.
    let mut h = req();
    let (_, d) = f.on_request_headers(&mut h);
    f.on_log(&mut h, &mut d.clone());
    let r = property(&h).unwrap();
    assert_eq!((&r["cached"], &r["status"]), (&json!(true), &json!(201)));
    assert_eq!(r["input"]["request"]["id"], d.id.as_str());

    let e = Filter::new(br#"{"decision_log": {"sink": "file"}}"#, 1).unwrap_err();
    assert!(e.to_string().contains("access_log"), "{e}");
}

#[test]
fn a_primed_cache_cannot_put_another_requests_path_in_a_hits_record() {
    // The shipped policy never reads the path below the service or the
    // query, so these two share a cached decision; each record must still
    // describe its own request, or a harmless first request would stand in
    // the log for every later one.
    let mut f = logged_filter(json!({"enabled": true}));
    for (path, query, cached) in [
        (
            "/mcp://hello-skill/harmless?q=1",
            json!({"q": ["1"]}),
            false,
        ),
        (
            "/mcp://hello-skill/export-everything?all=true",
            json!({"all": ["true"]}),
            true,
        ),
    ] {
        let mut h = request("GET", path, Some(claims(json!({}))));
        let (_, d) = f.on_request_headers(&mut h);
        assert!(d.allowed(), "{path}");
        f.on_log(&mut h, &mut d.clone());
        let r = &log_lines(&h)[0];
        assert_eq!(r["cached"], cached, "{path}");
        let (raw, _) = path.split_once('?').unwrap();
        assert_eq!(r["input"]["request"]["raw_path"], raw, "{r}");
        assert_eq!(r["input"]["request"]["query"], query, "{r}");
        assert_eq!(r["input"]["request"]["id"], d.id.as_str());
    }
}
