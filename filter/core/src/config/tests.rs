//! The configuration's parse and checks: defaults, the error each bad
//! section gives (field path, problem, fix), and the lookups on a parsed
//! [`Config`].
#![allow(clippy::unwrap_used, clippy::panic)]

use super::*;
#[cfg(all(target_arch = "wasm32", target_os = "unknown"))]
use wasm_bindgen_test::wasm_bindgen_test as test;

fn err(json: &str) -> String {
    match Config::from_json(json.as_bytes()) {
        Ok(_) => panic!("accepted {json}"),
        Err(e) => e.to_string(),
    }
}

#[test]
fn empty_means_defaults() {
    let c = Config::from_json(b"").unwrap();
    assert_eq!(c.identity.payload_key, "jwt_payload");
    assert_eq!(c.policy.entrypoint, "data.mcp.authz");
    assert!(c.must_strip(b"x-agent-id"));
    assert!(c.must_strip(b"x-mcp-anything"));
    assert!(!c.must_strip(b"content-type"));
    let c2 = Config::from_json(b"{}").unwrap();
    assert_eq!(c2.headers.input, c.headers.input);
}

#[test]
fn bad_configs_say_what_to_fix() {
    let cases: &[(&str, &str)] = &[
        ("{", "not valid"),
        (r#"{"bogus": 1}"#, "unknown field `bogus`"),
        (
            r#"{"identity": {"payload_kye": "x"}}"#,
            "unknown field `payload_kye`",
        ),
        (
            r#"{"identity": {"payload_key": ""}}"#,
            "`identity.payload_key`",
        ),
        (
            r#"{"policy": {"entrypoint": "mcp.authz"}}"#,
            "not a Rego data path",
        ),
        (
            r#"{"policy": {"entrypoint": "data.mcp..x"}}"#,
            "not a Rego data path",
        ),
        (
            r#"{"routing": {"mcp_scheme": false, "first_segment": false}}"#,
            "at least one",
        ),
        (
            r#"{"resources": {"a/b": {"type": "skill"}}}"#,
            "`resources.a/b`",
        ),
        (
            r#"{"resources": {"a": {"kind": "skill"}}}"#,
            "unknown field `kind`",
        ),
        (
            r#"{"resources": {"a": {"type": ""}}}"#,
            "`resources.a.type`",
        ),
        (
            r#"{"headers": {"input": ["Authorization"]}}"#,
            "never enters the input",
        ),
        (
            r#"{"headers": {"input": ["cookie"]}}"#,
            "never enters the input",
        ),
        (
            r#"{"headers": {"strip": ["bad header"]}}"#,
            "is not a header name",
        ),
        (
            r#"{"headers": {"strip_prefixes": [""]}}"#,
            "`headers.strip_prefixes[0]`",
        ),
        (
            r#"{"headers": {"max_value_bytes": 1}}"#,
            "between 16 and 8192",
        ),
        (r#"{"identity": {"max_depth": 1000}}"#, "between 2 and 64"),
        (
            r#"{"identity": {"cache_entries": 1000001}}"#,
            "at most 1000000",
        ),
        (
            r#"{"actions": {"data": {"bad method": "x"}}}"#,
            "HTTP methods",
        ),
        (r#"{"policy": {"entrypoint": 5}}"#, "invalid type"),
        (
            r#"{"policy": {"engine": "wasm"}}"#,
            "unknown variant `wasm`",
        ),
        (
            r#"{"vault": {"cluster": "vault", "auth_mount": "jwt", "role": "agent"},
                "default_resource": {"type": "skill", "secrets": [{"kv": "secret/data/{agent}", "field": "k", "header": "x-key"}]}}"#,
            "unregistered services never get secrets",
        ),
    ];
    for (json, want) in cases {
        let e = err(json);
        assert!(e.contains(want), "{json}: {e:?} lacks {want:?}");
    }
}

#[test]
fn trusted_headers_are_always_stripped() {
    let c = Config::from_json(br#"{"headers": {"strip_prefixes": ["x-other-"]}}"#).unwrap();
    for t in TRUSTED_HEADERS {
        assert!(c.must_strip(t.as_bytes()), "{t}");
    }
    assert!(!c.must_strip(b"x-mcp-foo"));
}

#[test]
fn actions_follow_type_and_method() {
    let c = Config::from_json(
        br#"{"resources": {
            "s": {"type": "skill"}, "d": {"type": "data"},
            "fixed": {"type": "data", "action": "access_tool"}}}"#,
    )
    .unwrap();
    let a = |svc: &str, m: &str| c.action_for(c.resource(svc), m).map(str::to_owned);
    assert_eq!(a("s", "POST").as_deref(), Some("invoke_skill"));
    assert_eq!(a("d", "GET").as_deref(), Some("read_data"));
    assert_eq!(a("d", "DELETE").as_deref(), Some("write_data"));
    assert_eq!(a("fixed", "GET").as_deref(), Some("access_tool"));
    assert_eq!(a("unregistered", "GET"), None);
    assert_eq!(c.resource("nope").metadata["team"], "unknown");
}
