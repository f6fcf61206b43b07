//! The writer against the record as a `serde_json` tree (the way records
//! were made before): the same text, byte for byte.

#![allow(clippy::unwrap_used, clippy::indexing_slicing)]

use super::*;
use serde_json::{json, Map, Value};
#[cfg(all(target_arch = "wasm32", target_os = "unknown"))]
use wasm_bindgen_test::wasm_bindgen_test as test;

/// The record as a JSON tree: the input converted, the cached input
/// given this request's id and time, the masks removed one by one.
fn reference(cfg: &DecisionLogConfig, f: &Facts<'_>, trail: &Trail) -> Value {
    let mut input = trail
        .input
        .as_ref()
        .map_or(Value::Null, crate::value::from_rego);
    if trail.cached {
        if let Some(req) = input.get_mut("request").and_then(Value::as_object_mut) {
            req.insert("id".into(), Value::from(trail.request_id.as_str()));
            req.insert("time_ns".into(), Value::from(f.now_ns));
        }
    }
    let mut doc = json!({ "input": input });
    for pointer in &cfg.mask {
        let (parent, last) = pointer.rsplit_once('/').unwrap();
        let key = last.replace("~1", "/").replace("~0", "~");
        match doc.pointer_mut(parent) {
            Some(Value::Object(m)) => {
                m.remove(&key);
            }
            Some(Value::Array(a)) => {
                if let Ok(i) = key.parse::<usize>() {
                    if i < a.len() {
                        a.remove(i);
                    }
                }
            }
            _ => {}
        }
    }
    let mut metrics = Map::new();
    if let Some(ns) = trail.eval_ns {
        metrics.insert("timer_rego_query_eval_ns".into(), Value::from(ns));
    }
    let mut out = json!({
        "decision_id": f.decision_id,
        "timestamp": crate::audit::rfc3339(f.now_ns),
        "path": f.entrypoint.strip_prefix("data.").unwrap_or(f.entrypoint).replace('.', "/"),
        "input": doc["input"].take(),
        "result": {"allowed": f.allowed, "reasons": f.reasons},
        "labels": {"id": "agentplane", "version": VERSION, "policy_revision": f.revision},
        "metrics": metrics,
        "agent": {"id": f.agent, "type": trail.agent_type, "team": trail.team,
                  "delegation": trail.chain},
        "resource": trail.service,
        "reason": f.reason,
        "status": f.status,
        "cached": trail.cached,
        "secrets": trail.secrets,
        "request_id": trail.request_id,
    });
    if let Some(g) = &trail.approval {
        out["approval"] = json!({"id": g.id, "approver": g.approver, "binding": g.binding});
    }
    if let Some(s) = &trail.shadow {
        out["shadow"] = json!({"allowed": s.allowed, "disagree": s.disagree,
                               "reasons": s.reasons, "revision": s.revision});
    }
    out
}

fn facts<'a>(reasons: &'a [String], status: u16) -> Facts<'a> {
    Facts {
        decision_id: "d-\"1\"",
        now_ns: 1_746_273_600_000_000_123,
        entrypoint: "data.mcp.authz",
        revision: "rev\u{1}",
        allowed: reasons.is_empty(),
        reason: "tab\there; \u{7f} \u{e9} \u{1F600}",
        reasons,
        status,
        agent: Some("support-triage@clients"),
    }
}

fn input() -> Rego {
    let mut v = crate::value::to_rego(&json!({
        "action": "access_tool",
        "jwt": {"payload": {"sub": "a", "email": "canary@example.com", "scope": ["x", "y"],
                            "f": 0.25, "big": 1e300, "neg": -7, "u": 18446744073709551615u64}},
        "request": {"id": "r1", "time_ns": 1, "method": "POST",
                    "headers": {"user-agent": "canary-ua", "content-type": "x", "z\n": "\u{0}\u{1f}\\"}},
        "list": [{"secret": "canary-1", "k": 1}, {"secret": "canary-2"}, 3],
        "empty": {}, "none": null, "": "empty key", "a/b~c": true,
    }));
    let set: std::collections::BTreeSet<Rego> = ["b", "a"].iter().map(|s| Rego::from(*s)).collect();
    let mut odd = BTreeMap::new();
    odd.insert(Rego::from(2u64), Rego::from("two"));
    odd.insert(Rego::from("k"), Rego::Undefined);
    odd.insert(Rego::from(true), Rego::from(set.clone()));
    if let Ok(m) = v.as_object_mut() {
        m.insert(Rego::from("set"), Rego::from(set));
        m.insert(Rego::from("odd"), Rego::from(odd));
    }
    v
}

fn trail(cached: bool) -> Trail {
    Trail {
        input: Some(input()),
        eval_ns: (!cached).then_some(31_415),
        cached,
        service: Some("web-search".into()),
        secrets: vec!["x-api-key".into()],
        request_id: "r2".into(),
        agent_type: Some("triage".into()),
        team: None,
        chain: Some(vec!["orchestrator@clients".into(), "\"q\"".into()]),
        tool: None,
        body_len: None,
        session: None,
        // Approved calls are cached too: the approval member then stands
        // beside `cached: true`.
        approval: cached.then(|| crate::approval::Granted {
            id: "ap-\"1\"".into(),
            approver: "alice \u{1F600}".into(),
            binding: "sha256:00".into(),
            expires_s: 1,
        }),
        shadow: cached.then(|| crate::audit::Shadowed {
            revision: "rev\"2",
            allowed: false,
            reasons: vec!["no \u{1F600}".into()],
            disagree: vec!["allow"],
        }),
    }
}

fn same(cfg: &DecisionLogConfig, f: &Facts<'_>, t: &Trail, status: Option<u16>) {
    let mut want = reference(cfg, f, t);
    if f.status == 0 {
        if let Some(s) = status {
            want["status"] = s.into();
        }
    }
    let got = render(cfg, f, t).finish(status);
    assert_eq!(got, want.to_string());
    if t.cached {
        // A later hit: its own id and time in the same input.
        let later = Trail {
            request_id: "r3 \"later\"".into(),
            ..t.clone()
        };
        let f2 = Facts {
            now_ns: f.now_ns + 7,
            ..*f
        };
        let mut want = reference(cfg, &f2, &later);
        if f.status == 0 {
            if let Some(s) = status {
                want["status"] = s.into();
            }
        }
        assert_eq!(render(cfg, &f2, &later).finish(status), want.to_string());
    }
}

#[test]
fn records_are_the_text_serde_json_gives_byte_for_byte() {
    let none: [String; 0] = [];
    let deny = ["a".to_string(), "b\"".to_string()];
    let masks = |m: &[&str]| DecisionLogConfig {
        enabled: true,
        mask: m.iter().map(|s| s.to_string()).collect(),
        ..DecisionLogConfig::default()
    };
    let all = [
        masks(&[]),
        masks(&[
            "/input/jwt/payload/email",
            "/input/request/headers/user-agent",
            "/input/list/0/secret",
            "/input/list/1",
            "/input/odd/2",
            "/input/a~1b~0c",
            "/input/missing/x",
            "/input/request/id",
        ]),
        masks(&["/input/jwt", "/input/set/0", "/input/request/time_ns"]),
    ];
    for cfg in &all {
        for cached in [false, true] {
            same(cfg, &facts(&none, 0), &trail(cached), Some(201));
            same(cfg, &facts(&none, 0), &trail(cached), None);
            same(cfg, &facts(&deny, 403), &trail(cached), Some(200));
        }
    }
    let bare = Trail {
        request_id: "r".into(),
        ..Trail::default()
    };
    same(&all[1], &facts(&none, 0), &bare, Some(204));
    // A cached input without a request object is written as it is.
    let odd = Trail {
        input: Some(Rego::from("not an object")),
        cached: true,
        ..bare.clone()
    };
    same(&all[0], &facts(&deny, 401), &odd, None);
    let odd = Trail {
        input: Some(crate::value::to_rego(&json!({"request": 5}))),
        cached: true,
        ..bare
    };
    same(&all[0], &facts(&deny, 401), &odd, None);
}

#[test]
fn masked_values_never_reach_the_text() {
    let cfg = DecisionLogConfig {
        enabled: true,
        mask: vec![
            "/input/jwt/payload/email".into(),
            "/input/request/headers/user-agent".into(),
            "/input/list/0/secret".into(),
            "/input/list/1".into(),
        ],
        ..DecisionLogConfig::default()
    };
    let line = render(&cfg, &facts(&[], 0), &trail(true)).finish(Some(200));
    assert!(!line.contains("canary"), "{line}");
    let v: Value = serde_json::from_str(&line).unwrap();
    assert_eq!(v["input"]["list"], json!([{"k": 1}, 3]));
    assert_eq!(v["input"]["request"]["id"], "r2");
}

#[test]
fn sessions_and_the_final_status_go_in_at_the_end() {
    let none: [String; 0] = [];
    let f = facts(&none, 0);
    let t = trail(false);
    let mut want = reference(&DecisionLogConfig::default(), &f, &t);
    want["mcp_session"] = json!({"id_sha256": "ab", "bound_sha256": "cd"});
    want["status"] = 200.into();
    let mut r = render(&DecisionLogConfig::default(), &f, &t);
    r.session = Some("ab".into());
    r.bind_session("cd".into());
    assert_eq!(r.clone().finish(Some(200)), want.to_string());
    r.session = None;
    want["mcp_session"] = json!({"bound_sha256": "cd"});
    assert_eq!(r.finish(Some(200)), want.to_string());
    // The filter's own reply status stands; without any, 0.
    let deny = ["x".to_string()];
    let line = render(&DecisionLogConfig::default(), &facts(&deny, 429), &t).finish(Some(200));
    assert!(line.contains(",\"status\":429,"), "{line}");
    let line = render(&DecisionLogConfig::default(), &f, &t).finish(None);
    assert!(line.contains(",\"status\":0,"), "{line}");
}
