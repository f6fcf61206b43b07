//! The MCP message parser, list filtering helpers and event splitter,
//! tested natively and under wasm-bindgen.
#![allow(clippy::unwrap_used)]

use super::events::*;
use super::message::base64_decode;
use super::*;
use serde_json::Value;
#[cfg(all(target_arch = "wasm32", target_os = "unknown"))]
use wasm_bindgen_test::wasm_bindgen_test as test;

const L: Limits = Limits { max_depth: 16 };

fn err(body: &str) -> McpError {
    parse(body.as_bytes(), L).unwrap_err()
}

#[test]
fn a_tool_call_names_its_tool_and_arguments() {
    let m = parse(
        br#"{"jsonrpc":"2.0","id":7,"method":"tools/call","params":{"name":"lookup_ticket","arguments":{"id":"T-1"}}}"#,
        L,
    )
    .unwrap();
    assert_eq!(m.kind, Kind::Request);
    assert_eq!(m.method.as_deref(), Some("tools/call"));
    assert_eq!(m.id, Some(Value::from(7)));
    assert_eq!(m.name(), Some("lookup_ticket"));
    assert_eq!(m.arguments().unwrap()["id"], "T-1");
}

#[test]
fn notifications_and_client_responses_are_told_apart() {
    let n = parse(
        br#"{"jsonrpc":"2.0","method":"notifications/initialized"}"#,
        L,
    )
    .unwrap();
    assert_eq!(n.kind, Kind::Notification);
    let r = parse(br#"{"jsonrpc":"2.0","id":"s-1","result":{}}"#, L).unwrap();
    assert_eq!(r.kind, Kind::Response);
    assert_eq!(r.method, None);
}

#[test]
fn malformed_messages_are_refused_with_their_code() {
    assert_eq!(err("{").code, code::PARSE_ERROR);
    assert_eq!(err("").code, code::PARSE_ERROR);
    assert_eq!(
        err(r#"{"jsonrpc":"2.0","method":"x"} trailing"#).code,
        code::PARSE_ERROR
    );
    assert_eq!(
        err(r#"[{"jsonrpc":"2.0","id":1,"method":"ping"}]"#).code,
        code::INVALID_REQUEST
    );
    assert_eq!(err(r#""ping""#).code, code::INVALID_REQUEST);
    assert_eq!(
        err(r#"{"jsonrpc":"1.0","id":1,"method":"ping"}"#).code,
        code::INVALID_REQUEST
    );
    assert_eq!(
        err(r#"{"id":1,"method":"ping"}"#).code,
        code::INVALID_REQUEST
    );
    assert_eq!(
        err(r#"{"jsonrpc":"2.0","id":1}"#).code,
        code::INVALID_REQUEST
    );
    assert_eq!(
        err(r#"{"jsonrpc":"2.0","id":1,"method":7}"#).code,
        code::INVALID_REQUEST
    );
    assert_eq!(
        err(r#"{"jsonrpc":"2.0","id":null,"method":"ping"}"#).code,
        code::INVALID_REQUEST
    );
    assert_eq!(
        err(r#"{"jsonrpc":"2.0","id":{},"method":"ping"}"#).code,
        code::INVALID_REQUEST
    );
    assert_eq!(
        err(r#"{"jsonrpc":"2.0","id":1,"method":"ping","params":[1]}"#).code,
        code::INVALID_REQUEST
    );
    assert_eq!(
        err(r#"{"jsonrpc":"2.0","id":1,"method":"x","result":1}"#).code,
        code::INVALID_REQUEST
    );
    assert_eq!(
        err(r#"{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{}}"#).code,
        code::INVALID_PARAMS
    );
    assert_eq!(
        err(r#"{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"t","arguments":[1]}}"#).code,
        code::INVALID_PARAMS
    );
    assert_eq!(
        err(r#"{"jsonrpc":"2.0","id":1,"method":"resources/read","params":{"uri":3}}"#).code,
        code::INVALID_PARAMS
    );
}

#[test]
fn a_duplicate_key_cannot_smuggle_a_second_tool_name() {
    let e = err(
        r#"{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"read","name":"delete_all"}}"#,
    );
    assert_eq!(e.code, code::PARSE_ERROR);
    assert!(e.message.contains("duplicate key"), "{e}");
    let e = err(r#"{"jsonrpc":"2.0","id":1,"id":2,"method":"ping"}"#);
    assert!(e.message.contains("duplicate key"), "{e}");
}

#[test]
fn deep_nesting_is_refused_not_recursed() {
    let deep = format!(
        r#"{{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{{"name":"t","arguments":{}1{}}}}}"#,
        "[".repeat(10_000),
        "]".repeat(10_000)
    );
    let e = parse(deep.as_bytes(), L).unwrap_err();
    assert_eq!(e.code, code::PARSE_ERROR);
    let ok = r#"{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"t","arguments":{"a":[[1]]}}}"#;
    assert!(parse(ok.as_bytes(), L).is_ok());
}

#[test]
fn mirror_headers_must_agree_with_the_body() {
    let m = parse(
        br#"{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"weather/\u6771\u4eac"}}"#,
        L,
    )
    .unwrap();
    let v = Some("2026-07-28");
    assert!(m
        .check_mirrors(
            Some("tools/call"),
            Some("=?base64?d2VhdGhlci/mnbHkuqw=?="),
            v
        )
        .is_ok());
    let e = m
        .check_mirrors(Some("tools/list"), Some("weather"), v)
        .unwrap_err();
    assert_eq!(e.code, code::HEADER_MISMATCH);
    let e = m
        .check_mirrors(Some("tools/call"), Some("other"), v)
        .unwrap_err();
    assert_eq!(e.code, code::HEADER_MISMATCH);
    assert_eq!(
        m.check_mirrors(Some("tools/call"), Some("=?base64?!!!?="), v)
            .unwrap_err()
            .code,
        code::HEADER_MISMATCH
    );
    // Mandatory from 2026-07-28, optional before.
    assert!(m.check_mirrors(None, None, v).is_err());
    assert!(m.check_mirrors(None, None, Some("2025-11-25")).is_ok());
    assert!(m.check_mirrors(None, None, None).is_ok());
    // A name header on a method that names nothing is a mismatch too.
    let list = parse(br#"{"jsonrpc":"2.0","id":1,"method":"tools/list"}"#, L).unwrap();
    assert!(list
        .check_mirrors(Some("tools/list"), Some("x"), v)
        .is_err());
}

#[test]
fn a_tool_list_keeps_only_the_tools_the_policy_shows() {
    let mut v: Value = serde_json::from_str(r#"{"jsonrpc":"2.0","id":3,"result":{"tools":[{"name":"a","inputSchema":{}},{"name":"b"},{"name":"c"},{"title":"nameless"}]}}"#).unwrap();
    assert_eq!(list_names(&v, "tools").unwrap(), ["a", "b", "c"]);
    assert_eq!(list_names(&v, "prompts"), None);
    retain_listed(&mut v, "tools", true, |n| n != "b");
    assert_eq!(v["id"], 3);
    assert_eq!(v["result"]["tools"].as_array().unwrap().len(), 2);
    assert_eq!(v["result"]["tools"][1]["name"], "c");
    assert_eq!(v["result"]["cacheScope"], "private");
    let n: Value =
        serde_json::from_str(r#"{"jsonrpc":"2.0","method":"notifications/progress"}"#).unwrap();
    assert_eq!(list_names(&n, "tools"), None);
}

/// Splits `stream` at every possible chunk boundary pair and checks the
/// events come out the same, byte for byte.
fn split_everywhere(stream: &[u8]) -> Vec<Vec<u8>> {
    let whole = {
        let mut s = EventSplitter::default();
        let mut e = s.push(stream);
        let rest = s.take_rest();
        if !rest.is_empty() {
            e.push(rest);
        }
        e
    };
    for i in 0..=stream.len() {
        for j in i..=stream.len() {
            let mut s = EventSplitter::default();
            let mut e = s.push(&stream[..i]);
            e.extend(s.push(&stream[i..j]));
            e.extend(s.push(&stream[j..]));
            let rest = s.take_rest();
            if !rest.is_empty() {
                e.push(rest);
            }
            assert_eq!(e, whole, "split at {i},{j}");
        }
    }
    whole
}

#[test]
fn events_split_alike_however_the_network_chunks_them() {
    let stream = b"event: message\r\nid: 1\r\ndata: {\"a\":1}\r\n\r\nid: 2\ndata: x\n\n: comment\r\rdata\ndata: y\n\npartial";
    let events = split_everywhere(stream);
    assert_eq!(events.len(), 5, "{events:?}");
    assert_eq!(events.concat(), stream, "every byte is kept");
    assert_eq!(event_data(&events[0]).unwrap(), br#"{"a":1}"#);
    assert_eq!(event_data(&events[1]).unwrap(), b"x");
    assert_eq!(event_data(&events[2]), None, "a comment has no data");
    assert_eq!(event_data(&events[3]).unwrap(), b"\ny");
    assert_eq!(events[4], b"partial");
}

#[test]
fn arbitrary_bytes_in_arbitrary_chunks_never_lose_or_invent_a_byte() {
    // A small LCG: deterministic, no dependency.
    let mut x: u64 = 0x5eed;
    let mut next = move || {
        x = x
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        (x >> 33) as usize
    };
    let alphabet = b"\r\n\r\ndata: x{}:";
    for _ in 0..300 {
        let len = next() % 200;
        let stream: Vec<u8> = (0..len)
            .map(|_| alphabet[next() % alphabet.len()])
            .collect();
        let mut s = EventSplitter::default();
        let mut out = Vec::new();
        let mut at = 0;
        while at < stream.len() {
            let n = 1 + next() % 17;
            let end = (at + n).min(stream.len());
            for e in s.push(&stream[at..end]) {
                out.extend(e);
            }
            assert!(s.pending() <= stream.len());
            at = end;
        }
        out.extend(s.take_rest());
        assert_eq!(out, stream);
    }
}

#[test]
fn a_rewritten_event_keeps_its_other_fields() {
    let raw = b"event: message\r\nid: 7\r\ndata: {\"old\":\r\ndata: 1}\r\n\r\n";
    let out = with_data(raw, r#"{"new":2}"#);
    assert_eq!(out, b"event: message\nid: 7\ndata: {\"new\":2}\n\n");
}

#[test]
fn body_forms_are_read_from_the_content_type() {
    assert_eq!(
        BodyForm::of("text/event-stream; charset=utf-8"),
        Some(BodyForm::Sse)
    );
    assert_eq!(BodyForm::of("Application/JSON"), Some(BodyForm::Json));
    assert_eq!(BodyForm::of("text/html"), None);
}

#[test]
fn base64_is_decoded_strictly() {
    assert_eq!(base64_decode("aGk=").unwrap(), b"hi");
    assert_eq!(base64_decode("aGkh").unwrap(), b"hi!");
    assert_eq!(base64_decode("").unwrap(), b"");
    assert!(base64_decode("aGk").is_none());
    assert!(base64_decode("a=Gk").is_none());
    assert!(base64_decode("aG=k").is_none());
    assert!(base64_decode("aGk=aGk=").is_none());
}

/// Keys equal under case folding: Go's `encoding/json` and .NET match
/// keys regardless of case (the last one wins), so a second spelling could
/// carry another tool, method or argument than the one authorized.
#[test]
fn case_variant_keys_cannot_smuggle_another_tool_method_or_argument() {
    for body in [
        r#"{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"lookup_ticket","Name":"delete_all_tickets"}}"#,
        r#"{"jsonrpc":"2.0","id":1,"method":"tools/list","Method":"tools/call","params":{"name":"x"}}"#,
        r#"{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"lookup_ticket","arguments":{"team":"customer-success","Team":"billing"}}}"#,
        // U+017F LATIN SMALL LETTER LONG S folds to `s`.
        "{\"jsonrpc\":\"2.0\",\"id\":1,\"method\":\"tools/call\",\"params\":{\"name\":\"a\"},\"param\u{17f}\":{\"name\":\"b\"}}",
        // U+0131 DOTLESS I upper-cases to `I`, as Go folds it.
        "{\"jsonrpc\":\"2.0\",\"id\":1,\"method\":\"tools/call\",\"params\":{\"name\":\"a\",\"arguments\":{\"id\":1,\"\u{131}d\":2}}}",
        // U+212A KELVIN SIGN lower-cases to `k`.
        "{\"jsonrpc\":\"2.0\",\"id\":1,\"method\":\"tools/call\",\"params\":{\"name\":\"a\",\"arguments\":{\"k\":1,\"\u{212a}\":2}}}",
        // Deep inside the arguments too.
        r#"{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"a","arguments":{"q":[{"x":{"role":"user","ROLE":"admin"}}]}}}"#,
    ] {
        let e = err(body);
        assert_eq!(e.code, code::PARSE_ERROR, "{body}");
        assert!(e.message.contains("letter case"), "{body}: {e}");
    }
}

/// A lone member spelled otherwise than the protocol spells it is what a
/// case-insensitive server reads and this parser would not.
#[test]
fn a_protocol_member_in_another_letter_case_is_refused() {
    for (body, code) in [
        (
            r#"{"jsonrpc":"2.0","id":1,"method":"tools/list","Params":{"name":"x"}}"#,
            code::INVALID_REQUEST,
        ),
        (
            r#"{"jsonrpc":"2.0","ID":1,"method":"ping"}"#,
            code::INVALID_REQUEST,
        ),
        (
            r#"{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"lookup_ticket","Arguments":{"team":"billing"}}}"#,
            code::INVALID_PARAMS,
        ),
        (
            "{\"jsonrpc\":\"2.0\",\"id\":1,\"method\":\"tools/call\",\"params\":{\"name\":\"a\",\"_meta\":{},\"task\u{131}d\":\"t\"}}",
            code::INVALID_PARAMS,
        ),
    ] {
        let e = err(body);
        assert_eq!(e.code, code, "{body}: {e}");
        assert!(e.message.contains("must be spelled"), "{body}: {e}");
    }
}

/// What goes upstream is the parsed message: one spelling of every key,
/// numbers and strings as read, every member kept.
#[test]
fn the_forwarded_body_is_the_message_as_parsed() {
    let m = parse(
        br#" {"params":{"arguments":{"n":1.50,"s":"caf\u00e9","z":null},"name":"t"},"method":"tools/call","id":"a","jsonrpc":"2.0","x-extra":[1]} "#,
        L,
    )
    .unwrap();
    let out = m.to_json().unwrap();
    assert_eq!(
        String::from_utf8(out.clone()).unwrap(),
        r#"{"id":"a","jsonrpc":"2.0","method":"tools/call","params":{"arguments":{"n":1.5,"s":"café","z":null},"name":"t"},"x-extra":[1]}"#
    );
    // Parsing what is forwarded gives the same message back.
    assert_eq!(parse(&out, L).unwrap(), m);
    let r = parse(br#"{"jsonrpc":"2.0","id":9,"result":{"ok":true}}"#, L).unwrap();
    assert_eq!(
        r.to_json().unwrap(),
        br#"{"id":9,"jsonrpc":"2.0","result":{"ok":true}}"#
    );
}

/// Bytes other parsers read differently are refused, not forwarded.
#[test]
fn lone_surrogates_huge_numbers_and_bad_utf8_are_refused() {
    for body in [
        br#"{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"\ud800"}}"#.to_vec(),
        br#"{"jsonrpc":"2.0","id":1e400,"method":"ping"}"#.to_vec(),
        b"{\"jsonrpc\":\"2.0\",\"id\":1,\"method\":\"tools/call\",\"params\":{\"name\":\"\xff\"}}"
            .to_vec(),
        b"\xef\xbb\xbf{\"jsonrpc\":\"2.0\",\"id\":1,\"method\":\"ping\"}".to_vec(),
    ] {
        let e = parse(&body, L).unwrap_err();
        assert_eq!(
            e.code,
            code::PARSE_ERROR,
            "{}",
            String::from_utf8_lossy(&body)
        );
    }
}
