//! The verifier against logs the filter's own chain code wrote, then
//! tampered with: each attack is caught at the record it touched.

#![allow(clippy::unwrap_used, clippy::indexing_slicing)]

use super::*;
use agentplane_core::audit::{self, Chain, Facts, Trail};
use agentplane_core::config::DecisionLogConfig;
use agentplane_core::txn::Keyring;
use serde_json::json;

fn keyring(seed: u8) -> Keyring {
    let d = base64::Engine::encode(
        &base64::engine::general_purpose::URL_SAFE_NO_PAD,
        [seed; 32],
    );
    let kv = json!({"data": {"data": {"kid": "gw-1", "d": d}}});
    Keyring::from_kv(kv.to_string().as_bytes()).unwrap()
}

fn jwks() -> Value {
    serde_json::from_str(keyring(1).jwks().unwrap()).unwrap()
}

/// A record line as Envoy's log writes it.
fn record(chain: &mut Chain, n: usize) -> String {
    let id = format!("decision-{n}");
    let f = Facts {
        decision_id: &id,
        now_ns: 1_000 + n as u64,
        entrypoint: "data.mcp.authz",
        revision: "rev",
        allowed: !n.is_multiple_of(3),
        reason: "",
        reasons: &[],
        status: 0,
        agent: Some("a@clients"),
    };
    let trail = Trail {
        request_id: id.clone(),
        ..Trail::default()
    };
    let r = audit::record(&DecisionLogConfig::default(), &f, &trail);
    let text = audit::finish(r, Some(200), Some(chain));
    format!("[2026-12-07 16:00:00.000][12][info][wasm] wasm log: {PREFIX}{text}")
}

/// `n` records of one chain with a checkpoint after the 3rd and the last.
fn log(seed: u64, n: usize) -> Vec<String> {
    let ring = keyring(1);
    let key = ring.current.as_ref().unwrap();
    let mut c = Chain::new(seed);
    let mut out = Vec::new();
    for i in 1..=n {
        out.push(record(&mut c, i));
        if i == 3 || i == n {
            let cp = c.checkpoint(i as u64 * 1_000, Ok(key), 60).unwrap();
            out.push(format!("[info][wasm] wasm log: {CHECKPOINT_PREFIX}{cp}"));
        }
    }
    out
}

fn check(lines: &[String], opts: Options) -> Result<Summary, String> {
    verify(
        &[("envoy.log".into(), lines.join("\n") + "\n")],
        Some(&jwks()),
        opts,
    )
}

/// The line number (from 1) of the record with `seq`.
fn line_of(lines: &[String], seq: u64) -> usize {
    let needle = format!("\"seq\":{seq}}}");
    1 + lines
        .iter()
        .position(|l| l.contains(PREFIX) && l.contains(&needle))
        .unwrap()
}

#[test]
fn an_untouched_log_verifies_to_its_last_checkpoint() {
    let mut lines = log(1, 6);
    lines.extend(log(2, 2));
    lines.insert(0, "[info] envoy starting".into());
    let s = check(&lines, Options::default()).unwrap();
    assert_eq!((s.records, s.chains, s.uncovered), (8, 2, 0));
    let text = s.to_string();
    assert!(
        text.starts_with("8 records, 2 chains, verified to checkpoint "),
        "{text}"
    );
    assert!(text.contains("#6 ("), "{text}");
}

#[test]
fn deleting_a_record_is_reported_with_its_seq_and_neighbours() {
    let mut lines = log(1, 6);
    let at = line_of(&lines, 4);
    lines.remove(at - 1);
    let e = check(&lines, Options::default()).unwrap_err();
    assert!(e.starts_with("removed: chain "), "{e}");
    assert!(e.contains(" seq 4 (between seq 3 at envoy.log:"), "{e}");
    assert!(e.contains(&format!("seq 5 at envoy.log:{at})")), "{e}");
}

#[test]
fn deleting_the_first_record_is_caught() {
    let mut lines = log(1, 4);
    lines.remove(0);
    let e = check(&lines, Options::default()).unwrap_err();
    assert!(e.contains("begins at seq 2 at envoy.log:1"), "{e}");
    // A rotated file may begin mid-chain when asked.
    assert!(check(
        &lines,
        Options {
            partial: true,
            ..Options::default()
        }
    )
    .is_ok());
}

#[test]
fn truncating_records_a_checkpoint_vouched_for_is_caught() {
    let mut lines = log(1, 6);
    // Drop records 5 and 6, keep the final checkpoint.
    let cp = lines.pop().unwrap();
    lines.truncate(line_of(&lines, 5) - 1);
    lines.push(cp);
    let e = check(&lines, Options::default()).unwrap_err();
    assert!(
        e.contains("up to seq 6, but the log has it only up to seq 4"),
        "{e}"
    );
}

#[test]
fn editing_a_record_names_the_edited_line() {
    let mut lines = log(1, 6);
    let at = line_of(&lines, 2);
    lines[at - 1] = lines[at - 1].replace("\"allowed\":true", "\"allowed\":false");
    let e = check(&lines, Options::default()).unwrap_err();
    assert!(e.starts_with("edited: chain "), "{e}");
    assert!(
        e.contains(&format!("seq 2 at envoy.log:{at} (seq 3 at")),
        "{e}"
    );
}

#[test]
fn editing_the_last_record_is_caught_by_its_checkpoint() {
    let mut lines = log(1, 6);
    let at = line_of(&lines, 6);
    lines[at - 1] = lines[at - 1].replace("decision-6", "decision-X");
    let e = check(&lines, Options::default()).unwrap_err();
    assert!(
        e.contains(&format!(
            "seq 6 at envoy.log:{at} is not the record the checkpoint"
        )),
        "{e}"
    );
}

#[test]
fn swapping_two_records_is_reported_as_reordered() {
    let mut lines = log(1, 6);
    let (a, b) = (line_of(&lines, 4), line_of(&lines, 5));
    lines.swap(a - 1, b - 1);
    let e = check(&lines, Options::default()).unwrap_err();
    assert!(
        e.contains("reordered: chain ")
            && e.contains(&format!(
                "seq 5 at envoy.log:{a} comes before seq 4 at envoy.log:{b}"
            )),
        "{e}"
    );
}

#[test]
fn inserting_a_copy_of_a_record_is_caught_where_it_repeats() {
    let mut lines = log(1, 6);
    let copy = lines[line_of(&lines, 2) - 1].clone();
    let at = line_of(&lines, 5);
    lines.insert(at - 1, copy);
    let e = check(&lines, Options::default()).unwrap_err();
    assert!(
        e.contains("inserted: chain ")
            && e.contains(&format!("seq 2 at envoy.log:{at} repeats seq 2")),
        "{e}"
    );
}

#[test]
fn inserting_a_forged_record_in_the_next_place_is_caught_where_it_was_put() {
    // A record of another chain renumbered into this one: its seq is the
    // next one, its link is not.
    let mut lines = log(1, 6);
    let mut other = Chain::new(2);
    record(&mut other, 1);
    record(&mut other, 2);
    let mut forged: Value = {
        let l = record(&mut other, 3);
        serde_json::from_str(l.split_once(PREFIX).unwrap().1).unwrap()
    };
    let name = Chain::new(1).name().to_string();
    forged["log"]["chain"] = Value::from(name);
    let at = line_of(&lines, 3);
    lines.insert(at - 1, format!("{PREFIX}{forged}"));
    let e = check(&lines, Options::default()).unwrap_err();
    assert!(
        e.contains("inserted: chain ")
            && e.contains(&format!(
                "seq 3 at envoy.log:{at} (its link matches no record; seq 3 again at envoy.log:{})",
                at + 1
            )),
        "{e}"
    );
}

#[test]
fn inserting_a_forged_record_and_relinking_the_rest_fails_at_the_checkpoint() {
    // The attacker rewrites the chain from seq 4 on (a forged record,
    // then the genuine ones renumbered and relinked); only the signed
    // checkpoints can tell.
    let lines = log(1, 6);
    let mut forged = Chain::new(1);
    let mut out: Vec<String> = Vec::new();
    for (i, l) in lines.iter().enumerate() {
        if l.contains(CHECKPOINT_PREFIX) {
            out.push(l.clone());
            continue;
        }
        if i + 1 == line_of(&lines, 4) {
            out.push(record(&mut forged, 99));
        }
        let n = l
            .split("decision-")
            .nth(1)
            .unwrap()
            .split('"')
            .next()
            .unwrap();
        out.push(record(&mut forged, n.parse().unwrap()));
    }
    let e = check(&out, Options::default()).unwrap_err();
    assert!(e.contains("is not the record the checkpoint"), "{e}");
}

#[test]
fn a_forged_chain_without_a_checkpoint_is_not_vouched_for() {
    let mut lines = log(1, 3);
    let mut c = Chain::new(77);
    lines.push(record(&mut c, 1));
    let e = check(&lines, Options::default()).unwrap_err();
    assert!(
        e.contains(&format!("chain {}: no checkpoint vouches", c.name())),
        "{e}"
    );
}

#[test]
fn a_forged_checkpoint_signature_is_refused() {
    let mut lines = log(1, 3);
    let other = keyring(2);
    let mut c = Chain::new(1);
    for i in 1..=3 {
        record(&mut c, i);
    }
    let cp = c
        .checkpoint(0, Ok(other.current.as_ref().unwrap()), 60)
        .unwrap();
    lines.push(format!("{CHECKPOINT_PREFIX}{cp}"));
    let e = check(&lines, Options::default()).unwrap_err();
    assert!(
        e.contains("at envoy.log:5: the signature does not verify"),
        "{e}"
    );
}

#[test]
fn unsigned_checkpoints_pass_only_when_allowed_and_a_closed_log_needs_its_tail_covered() {
    let mut c = Chain::new(3);
    let mut lines = vec![record(&mut c, 1), record(&mut c, 2)];
    let cp = c.checkpoint(0, Err("no signing key configured (txn_token)"), 60);
    lines.push(format!("{CHECKPOINT_PREFIX}{}", cp.unwrap()));
    let e = check(&lines, Options::default()).unwrap_err();
    assert!(e.contains("is unsigned (no signing key configured"), "{e}");
    let open = Options {
        allow_unsigned: true,
        ..Options::default()
    };
    assert!(check(&lines, open).is_ok());
    lines.push(record(&mut c, 3));
    let s = check(&lines, open).unwrap();
    assert_eq!(s.uncovered, 1, "a live log's tail is only reported");
    let e = check(
        &lines,
        Options {
            closed: true,
            ..open
        },
    )
    .unwrap_err();
    assert!(
        e.contains("after the last checkpoint (#2) of a closed log"),
        "{e}"
    );
}

#[test]
fn collector_json_lines_verify_like_envoy_lines() {
    let lines: Vec<String> = log(1, 4)
        .iter()
        .map(|l| {
            let (_, j) = l
                .split_once(PREFIX)
                .or_else(|| l.split_once(CHECKPOINT_PREFIX))
                .unwrap();
            j.to_string()
        })
        .collect();
    assert_eq!(check(&lines, Options::default()).unwrap().records, 4);
}

#[test]
fn a_record_renumbered_to_seq_zero_is_an_edit_not_a_crash() {
    let mut lines = log(1, 3);
    lines[0] = lines[0].replace("\"seq\":1}", "\"seq\":0}");
    let e = check(&lines, Options::default()).unwrap_err();
    assert!(
        e.starts_with("edited: a record whose log link lacks chain, seq (from 1)"),
        "{e}"
    );
}

#[test]
fn forged_records_after_a_replayed_checkpoint_pass_as_a_rotated_log() {
    // A rotated access log (records from seq 4 on) verified with the
    // Envoy log that holds the chain's checkpoint at seq 3: records 4 to
    // 6 rewritten and relinked, the checkpoint that vouched for them
    // deleted. The checkpoint at 3 vouches for nothing in this file, so
    // the chain is vouched for by no checkpoint, as if forged.
    let honest = log(1, 6);
    let at_3 = honest.iter().find(|l| l.contains("\"seq\":3,")).unwrap();
    let mut c = Chain::new(1);
    for i in 1..=3 {
        record(&mut c, i);
    }
    let mut lines = vec![at_3.clone()];
    lines.extend((4..=6).map(|i| record(&mut c, 100 + i)));
    let partial = Options {
        partial: true,
        ..Options::default()
    };
    let e = check(&lines, partial).unwrap_err();
    assert!(
        e.starts_with(&format!(
            "chain {}: no checkpoint vouches for its 3 records",
            c.name()
        )),
        "{e}"
    );
    // The honest rotated file still verifies, its checkpoint at 6 kept.
    let rotated: Vec<String> = honest.into_iter().skip(4).collect();
    let s = check(&rotated, partial).unwrap();
    assert_eq!((s.records, s.uncovered), (3, 0));
}

/// Three records whose reason is `reason`, and their checkpoint.
fn log_with_reason(reason: &str) -> Vec<String> {
    let ring = keyring(1);
    let mut c = Chain::new(5);
    let mut out = Vec::new();
    for i in 1..=3 {
        let f = Facts {
            decision_id: "d",
            now_ns: i,
            entrypoint: "data.mcp.authz",
            revision: "rev",
            allowed: false,
            reason,
            reasons: &[],
            status: 403,
            agent: None,
        };
        let r = audit::record(&DecisionLogConfig::default(), &f, &Trail::default());
        let text = audit::finish(r, None, Some(&mut c));
        out.push(format!("[info][wasm] wasm log: {PREFIX}{text}"));
    }
    let cp = c.checkpoint(9, Ok(ring.current.as_ref().unwrap()), 60);
    out.push(format!(
        "[info][wasm] wasm log: {CHECKPOINT_PREFIX}{}",
        cp.unwrap()
    ));
    out
}

/// A reason holding a quote, a backslash and non-ASCII text (what the
/// escaping Envoy logs below write differently).
fn awkward_log() -> Vec<String> {
    log_with_reason("quoted \"x\\y\" caf\u{e9} \u{2028} \u{7f}")
}

#[test]
fn a_collector_record_quoting_the_record_prefix_verifies() {
    // A record's text may hold what a client sent, prefixes included.
    for quoted in ["agentplane-decision {\"x\":1}", "agentplane-checkpoint {}"] {
        let lines: Vec<String> = log_with_reason(quoted)
            .iter()
            .map(|l| {
                let (_, j) = l.split_once(": ").unwrap();
                j.split_once(' ').unwrap().1.to_string()
            })
            .collect();
        assert!(lines[0].starts_with("{\""), "{}", lines[0]);
        let s = check(&lines, Options::default()).unwrap();
        assert_eq!((s.records, s.uncovered), (3, 0), "{quoted}");
    }
}

#[test]
fn a_json_formatted_envoy_log_verifies_as_written() {
    // Envoy's json_format log (`%j`), or a container runtime's JSON lines:
    // each line a string inside another JSON object.
    let lines: Vec<String> = awkward_log()
        .iter()
        .map(|l| json!({"time": "t", "level": "info", "message": format!("{l}\n")}).to_string())
        .collect();
    let s = check(&lines, Options::default()).unwrap();
    assert_eq!((s.records, s.uncovered), (3, 0));
}

#[test]
fn a_log_format_escaped_envoy_log_verifies_as_written() {
    // `envoy --log-format-escaped` C-escapes each line: quotes, backslashes
    // and every byte outside printable ASCII (as octal).
    let escape = |l: &str| {
        let mut out = String::new();
        for b in l.bytes() {
            match b {
                b'"' => out.push_str("\\\""),
                b'\'' => out.push_str("\\'"),
                b'\\' => out.push_str("\\\\"),
                b'\n' => out.push_str("\\n"),
                0x20..=0x7e => out.push(char::from(b)),
                _ => out.push_str(&format!("\\{b:03o}")),
            }
        }
        out
    };
    let lines: Vec<String> = awkward_log().iter().map(|l| escape(l)).collect();
    assert!(lines[0].contains("caf\\303\\251"), "{}", lines[0]);
    let s = check(&lines, Options::default()).unwrap();
    assert_eq!((s.records, s.uncovered), (3, 0));
    // An escaped line edited is still an edit.
    let mut edited = lines.clone();
    edited[1] = edited[1].replace("caf", "CAF");
    let e = check(&edited, Options::default()).unwrap_err();
    assert!(e.starts_with("edited: chain"), "{e}");
}

#[test]
fn a_line_that_is_not_utf8_beside_the_records_does_not_make_the_log_unreadable() {
    // An access log line writes a client's header raw (obs-text bytes).
    let lines = log(1, 4);
    let mut bytes = Vec::new();
    for (i, l) in lines.iter().enumerate() {
        if i == 2 {
            bytes.extend_from_slice(b"[access] GET /mcp 200 agent=\xff\xfe\n");
        }
        bytes.extend_from_slice(l.as_bytes());
        bytes.push(b'\n');
    }
    let input = [("envoy.log".to_string(), crate::text(bytes.clone()))];
    let s = verify(&input, Some(&jwks()), Options::default()).unwrap();
    assert_eq!(s.records, 4);
    // The same bytes in a record are an edit of it.
    let at = bytes
        .windows(11)
        .position(|w| w == b"decision-2\"")
        .unwrap();
    bytes[at] = 0xff;
    let input = [("envoy.log".to_string(), crate::text(bytes))];
    let e = verify(&input, Some(&jwks()), Options::default()).unwrap_err();
    assert!(e.starts_with("edited: chain"), "{e}");
}

#[test]
fn checkpoints_of_a_key_rotated_out_verify_with_its_archived_jwks_given_too() {
    let kv = |kid: &str, seed: u8| {
        let d = base64::Engine::encode(
            &base64::engine::general_purpose::URL_SAFE_NO_PAD,
            [seed; 32],
        );
        let kv = json!({"data": {"data": {"kid": kid, "d": d}}});
        Keyring::from_kv(kv.to_string().as_bytes()).unwrap()
    };
    let (old, new) = (kv("gw-1", 1), kv("gw-2", 3));
    let mut c = Chain::new(9);
    let mut lines = vec![record(&mut c, 1)];
    let cp = c.checkpoint(1, Ok(old.current.as_ref().unwrap()), 60);
    lines.push(format!("{CHECKPOINT_PREFIX}{}", cp.unwrap()));
    lines.push(record(&mut c, 2));
    let cp = c.checkpoint(2, Ok(new.current.as_ref().unwrap()), 60);
    lines.push(format!("{CHECKPOINT_PREFIX}{}", cp.unwrap()));
    let dir = std::env::temp_dir().join(format!("agentplane-log-jwks-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let file = |name: &str, text: &str| {
        let p = dir.join(name);
        std::fs::write(&p, text).unwrap();
        p.to_str().unwrap().to_string()
    };
    let log = file("envoy.log", &(lines.join("\n") + "\n"));
    let (old, new) = (
        file("old.json", old.jwks().unwrap()),
        file("new.json", new.jwks().unwrap()),
    );
    let run = |args: &[&str]| {
        let args: Vec<String> = args.iter().map(|s| s.to_string()).collect();
        match crate::run(&args) {
            Ok(s) => Ok(s.checkpoints),
            Err(crate::Error::Tampered(e) | crate::Error::Usage(e)) => Err(e),
        }
    };
    let e = run(&["verify", "--jwks", &new, &log]).unwrap_err();
    assert!(
        e.contains("signed by gw-1, a key the JWKS does not hold"),
        "{e}"
    );
    let cps = run(&["verify", "--jwks", &new, "--jwks", &old, &log]).unwrap();
    assert_eq!(cps[0].1, 2);
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn a_log_read_while_its_last_record_is_written_verifies_up_to_it() {
    let mut lines = log(1, 4);
    let mut c = Chain::new(1);
    let fifth = (1..=5).map(|i| record(&mut c, i)).last().unwrap();
    lines.push(fifth[..fifth.len() / 2].to_string());
    let text = lines.join("\n"); // no line end after the cut line
    let input = [("envoy.log".to_string(), text.clone())];
    let s = verify(&input, Some(&jwks()), Options::default()).unwrap();
    assert_eq!((s.records, s.uncovered), (4, 0));
    assert_eq!(s.cut, vec!["envoy.log:7".to_string()]);
    assert!(s.to_string().ends_with("; the last line, at envoy.log:7, is cut off mid-line (still being written?), not verified"), "{s}");
    let closed = Options {
        closed: true,
        ..Options::default()
    };
    let e = verify(&input, Some(&jwks()), closed).unwrap_err();
    assert!(
        e.starts_with("truncated: the last line, at envoy.log:7"),
        "{e}"
    );
    // A record cut off that a checkpoint vouches for is still removed.
    let (records, cps): (Vec<String>, Vec<String>) =
        log(1, 4).into_iter().partition(|l| l.contains(PREFIX));
    let mut access = records.join("\n");
    access.truncate(access.len() - 20);
    let inputs = [
        ("access.log".to_string(), access),
        ("envoy.log".to_string(), cps.join("\n") + "\n"),
    ];
    let e = verify(&inputs, Some(&jwks()), Options::default()).unwrap_err();
    assert!(
        e.starts_with("removed: the checkpoint at envoy.log:2 vouches for chain"),
        "{e}"
    );
    assert!(
        e.contains("up to seq 4, but the log has it only up to seq 3"),
        "{e}"
    );
}

#[test]
fn deleting_the_record_a_checkpoint_names_is_reported_where_it_was() {
    let mut lines = log(1, 6);
    lines.remove(2); // seq 3, which the checkpoint after it names
    let e = check(&lines, Options::default()).unwrap_err();
    let c = Chain::new(1);
    assert!(
        e.starts_with(&format!(
            "removed: chain {} seq 3 (between seq 2 at envoy.log:2 and seq 4 at envoy.log:4)",
            c.name()
        )),
        "{e}"
    );
}
