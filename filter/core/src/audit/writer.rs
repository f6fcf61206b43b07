//! Renders a decision record straight into its JSON text: the policy
//! input is walked as the evaluator's value (no JSON tree is built and
//! thrown away per record), `decision_log.mask` paths are skipped while
//! writing, and a cached decision's input gets this request's id and
//! time as it is written.
//!
//! The text is the one `serde_json` gives for the record as a JSON
//! object: keys in byte order at every level, strings escaped alike,
//! numbers alike (the tests compare both byte for byte).

use super::{Chain, Facts, Trail, VERSION};
use crate::config::DecisionLogConfig;
use regorus::Value as Rego;
use std::collections::BTreeMap;
use std::fmt::Write;

/// A rendered record, but for what only comes later: the final status
/// (when the request was forwarded: the upstream's, at the end of the
/// stream) and the session its response binds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Record {
    /// The record from `{` to its last key, without `log`, `mcp_session`
    /// and `status`, which sort inside it: they go in at `front` (the
    /// first two) and `back`.
    text: String,
    /// End of `…,"labels":{…}` (where `log` and `mcp_session` go).
    front: usize,
    /// End of `…,"secrets":[…]` (where `status` goes).
    back: usize,
    /// The status the filter answered (0 when forwarded).
    status: u16,
    /// The digest of the session the request named.
    session: Option<String>,
    /// The digest of the session its response bound.
    bound: Option<String>,
    /// Tools its list answer showed changed since they were pinned.
    changed: Vec<String>,
}

impl Record {
    /// Names the session the response bound (its digest).
    pub fn bind_session(&mut self, digest_hex: String) {
        self.bound = Some(digest_hex);
    }

    /// Names the tools a list answer showed changed since they were
    /// pinned (`mcp_tools_changed`; hidden by the shipped policy).
    pub fn tools_changed(&mut self, names: impl IntoIterator<Item = String>) {
        self.changed.extend(names);
    }

    /// Whether the final status is the response's (the filter did not
    /// answer the request itself).
    pub fn needs_status(&self) -> bool {
        self.status == 0
    }

    /// The record as one line of JSON, with the final status: the
    /// filter's own reply status, else `response_status`, else 0.
    pub fn finish(self, response_status: Option<u16>) -> String {
        self.assemble(response_status, None)
    }

    /// [`Record::finish`], linked into `chain` as its next record: the
    /// `log` member names the chain, this record's `seq` and the previous
    /// record's digest, and the text returned is what the chain digests.
    pub fn finish_chained(self, response_status: Option<u16>, chain: &mut Chain) -> String {
        let out = self.assemble(response_status, Some(chain));
        chain.append(&out);
        out
    }

    fn assemble(self, response_status: Option<u16>, chain: Option<&Chain>) -> String {
        let status = match (self.status, response_status) {
            (0, Some(s)) => s,
            (s, _) => s,
        };
        let t = &self.text;
        let front = t.get(..self.front).unwrap_or(t);
        let mid = t.get(self.front..self.back).unwrap_or("");
        let tail = t.get(self.back..).unwrap_or("");
        let mut out = String::with_capacity(self.text.len() + 160);
        out.push_str(front);
        // `log` sorts between `labels` and `mcp_session`.
        if let Some(c) = chain {
            c.write_link(&mut out);
        }
        if self.session.is_some() || self.bound.is_some() {
            out.push_str(",\"mcp_session\":{");
            if let Some(b) = &self.bound {
                out.push_str("\"bound_sha256\":");
                string(&mut out, b);
            }
            if let Some(s) = &self.session {
                if self.bound.is_some() {
                    out.push(',');
                }
                out.push_str("\"id_sha256\":");
                string(&mut out, s);
            }
            out.push('}');
        }
        // `mcp_tools_changed` sorts after `mcp_session`, before `metrics`.
        if !self.changed.is_empty() {
            out.push_str(",\"mcp_tools_changed\":");
            strings(&mut out, &self.changed);
        }
        out.push_str(mid);
        let _ = write!(out, ",\"status\":{status}");
        out.push_str(tail);
        out
    }
}

/// Renders the record of a decision (see [`Record`]).
pub(super) fn render(cfg: &DecisionLogConfig, f: &Facts<'_>, trail: &Trail) -> Record {
    let mut out = String::with_capacity(2048);
    out.push_str("{\"agent\":{\"delegation\":");
    match &trail.chain {
        Some(chain) => strings(&mut out, chain),
        None => out.push_str("null"),
    }
    out.push_str(",\"id\":");
    opt_string(&mut out, f.agent);
    out.push_str(",\"team\":");
    opt_string(&mut out, trail.team.as_deref());
    out.push_str(",\"type\":");
    opt_string(&mut out, trail.agent_type.as_deref());
    out.push('}');
    // `approval` sorts between `agent` and `cached`.
    if let Some(g) = &trail.approval {
        out.push_str(",\"approval\":{\"approver\":");
        string(&mut out, &g.approver);
        out.push_str(",\"binding\":");
        string(&mut out, &g.binding);
        out.push_str(",\"id\":");
        string(&mut out, &g.id);
        out.push('}');
    }
    let _ = write!(out, ",\"cached\":{},\"decision_id\":", trail.cached);
    string(&mut out, f.decision_id);
    out.push_str(",\"input\":");
    match &trail.input {
        None => out.push_str("null"),
        Some(input) => {
            let masks = mask_paths(cfg);
            let masks: Vec<&[String]> = masks.iter().map(Vec::as_slice).collect();
            // A cached decision's record: this request's id and the
            // record's time in its `request`.
            let now = trail
                .cached
                .then_some((trail.request_id.as_str(), f.now_ns));
            object(&mut out, input, &masks, now);
        }
    }
    out.push_str(",\"labels\":{\"id\":\"agentplane\",\"policy_revision\":");
    string(&mut out, f.revision);
    out.push_str(",\"version\":");
    string(&mut out, VERSION);
    out.push('}');
    let front = out.len();
    out.push_str(",\"metrics\":{");
    if let Some(ns) = trail.eval_ns {
        let _ = write!(out, "\"timer_rego_query_eval_ns\":{ns}");
    }
    out.push_str("},\"path\":\"");
    let path = f.entrypoint.strip_prefix("data.").unwrap_or(f.entrypoint);
    escape_into(&mut out, &path.replace('.', "/"));
    out.push_str("\",\"reason\":");
    string(&mut out, f.reason);
    out.push_str(",\"request_id\":");
    string(&mut out, &trail.request_id);
    out.push_str(",\"resource\":");
    opt_string(&mut out, trail.service.as_deref());
    let _ = write!(out, ",\"result\":{{\"allowed\":{},\"reasons\":", f.allowed);
    strings(&mut out, f.reasons);
    out.push_str("},\"secrets\":");
    strings(&mut out, &trail.secrets);
    // `shadow` sorts between `secrets` and `status`.
    if let Some(s) = &trail.shadow {
        let _ = write!(out, ",\"shadow\":{{\"allowed\":{},\"disagree\":", s.allowed);
        strings(&mut out, &s.disagree);
        out.push_str(",\"reasons\":");
        strings(&mut out, &s.reasons);
        out.push_str(",\"revision\":");
        string(&mut out, s.revision);
        out.push('}');
    }
    let back = out.len();
    out.push_str(",\"timestamp\":\"");
    out.push_str(&super::rfc3339(f.now_ns));
    out.push_str("\"}");
    Record {
        text: out,
        front,
        back,
        status: f.status,
        // The session as its digest only: the id itself continues the session.
        session: trail
            .session
            .as_ref()
            .and_then(crate::session::Ticket::sent_sha256),
        bound: None,
        changed: Vec::new(),
    }
}

fn mask_paths(cfg: &DecisionLogConfig) -> Vec<Vec<String>> {
    cfg.mask.iter().filter_map(|m| mask_path(m)).collect()
}

/// The path a mask removes, below `/input`, its segments unescaped as a
/// JSON pointer's (`~1` is `/`, `~0` is `~`); `None` for a mask that
/// names no path inside the input (configuration checks refuse those).
fn mask_path(pointer: &str) -> Option<Vec<String>> {
    let rest = pointer.strip_prefix("/input/")?;
    Some(
        rest.split('/')
            .map(|s| s.replace("~1", "/").replace("~0", "~"))
            .collect(),
    )
}

/// Masks below the entry named `key` (an object key, or an array index
/// written as a key): `None` when one of them removes the entry itself.
fn below<'m>(masks: &[&'m [String]], key: &str, index: bool) -> Option<Vec<&'m [String]>> {
    let mut out = Vec::new();
    for m in masks {
        let Some((first, rest)) = m.split_first() else {
            continue;
        };
        let hit = if index {
            same_index(first, key, rest.is_empty())
        } else {
            first == key
        };
        if !hit {
            continue;
        }
        if rest.is_empty() {
            return None;
        }
        out.push(rest);
    }
    Some(out)
}

/// Whether a pointer segment names array index `key`: the last segment
/// as any number, one before it as a JSON pointer index (no sign, no
/// leading zero).
fn same_index(segment: &str, key: &str, last: bool) -> bool {
    if !last && (segment.starts_with('+') || (segment.starts_with('0') && segment.len() > 1)) {
        return false;
    }
    segment.parse::<usize>().ok() == key.parse::<usize>().ok() && !key.is_empty()
}

/// One value of the evaluator as JSON (sets as sorted arrays, undefined
/// and numbers JSON cannot hold as `null`), without the masked paths.
fn value(out: &mut String, v: &Rego, masks: &[&[String]]) {
    match v {
        Rego::Null | Rego::Undefined => out.push_str("null"),
        Rego::Bool(b) => out.push_str(if *b { "true" } else { "false" }),
        Rego::Number(_) => match crate::value::number(v) {
            Some(n) => {
                let _ = write!(out, "{n}");
            }
            None => out.push_str("null"),
        },
        Rego::String(s) => string(out, s),
        Rego::Array(a) => items(out, a.iter(), masks),
        Rego::Set(s) => items(out, s.iter_sorted(), masks),
        Rego::Object(_) => object(out, v, masks, None),
    }
}

fn items<'a>(out: &mut String, it: impl Iterator<Item = &'a Rego>, masks: &[&[String]]) {
    out.push('[');
    let mut first = true;
    for (i, v) in it.enumerate() {
        let sub = if masks.is_empty() {
            Some(Vec::new())
        } else {
            below(masks, &i.to_string(), true)
        };
        let Some(sub) = sub else {
            continue;
        };
        if !first {
            out.push(',');
        }
        first = false;
        value(out, v, &sub);
    }
    out.push(']');
}

/// What an object entry holds: a value, or a cached input's `request`
/// object, or a slot for a hit's own id or time in it.
enum Entry<'a> {
    Value(&'a Rego),
    /// The `request` object of a cached input.
    Request(&'a Rego),
    Slot(Slot),
}

/// For a cached decision's input: the id and time its `request` gets.
type Now<'a> = Option<(&'a str, u64)>;

/// A value written in place of a cached input's own.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Slot {
    Id,
    Time,
}

/// An object (anything else goes to [`value`]). `now`: for a cached
/// decision's input, the id and time its `request` gets.
fn object(out: &mut String, v: &Rego, masks: &[&[String]], now: Now<'_>) {
    let Rego::Object(o) = v else {
        return value(out, v, masks);
    };
    out.push('{');
    let mut first = true;
    if o.keys().all(|k| matches!(k, Rego::String(_))) {
        // The common case: string keys iterate in byte order already.
        for (k, v) in o.iter() {
            if let Rego::String(k) = k {
                let e = match (now, v) {
                    (Some(_), Rego::Object(_)) if k.as_ref() == "request" => Entry::Request(v),
                    _ => Entry::Value(v),
                };
                entry(out, &mut first, k, e, masks, now);
            }
        }
    } else {
        // Other keys are written as their JSON text and sorted as such (a
        // later duplicate wins, as when collected into a JSON map).
        let mut sorted: BTreeMap<String, &Rego> = BTreeMap::new();
        for (k, v) in o.iter() {
            sorted.insert(key_text(k), v);
        }
        for (k, v) in sorted {
            let e = match (now, v) {
                (Some(_), Rego::Object(_)) if k == "request" => Entry::Request(v),
                _ => Entry::Value(v),
            };
            entry(out, &mut first, &k, e, masks, now);
        }
    }
    out.push('}');
}

/// An object key as a JSON object key: a string as it is, anything else
/// as its JSON text.
fn key_text(k: &Rego) -> String {
    match k {
        Rego::String(s) => s.to_string(),
        other => {
            let mut t = String::new();
            value(&mut t, other, &[]);
            t
        }
    }
}

fn entry(
    out: &mut String,
    first: &mut bool,
    key: &str,
    e: Entry<'_>,
    masks: &[&[String]],
    now: Now<'_>,
) {
    let sub = if masks.is_empty() {
        Some(Vec::new())
    } else {
        below(masks, key, false)
    };
    let Some(sub) = sub else {
        return;
    };
    if !*first {
        out.push(',');
    }
    *first = false;
    string(out, key);
    out.push(':');
    match e {
        Entry::Value(v) => value(out, v, &sub),
        Entry::Request(v) => request(out, v, &sub, now),
        Entry::Slot(slot) => match (slot, now) {
            (Slot::Id, Some((id, _))) => string(out, id),
            (Slot::Time, Some((_, time_ns))) => {
                let _ = write!(out, "{time_ns}");
            }
            (_, None) => out.push_str("null"),
        },
    }
}

/// A cached decision's `request` object, with this request's `id` and
/// `time_ns` in place of its own (merged into the key order).
fn request(out: &mut String, v: &Rego, masks: &[&[String]], now: Now<'_>) {
    let (Rego::Object(o), Some(_)) = (v, now) else {
        return value(out, v, masks);
    };
    let mut sorted: Vec<(String, Entry<'_>)> = Vec::with_capacity(o.len() + 2);
    for (k, v) in o.iter() {
        sorted.push((key_text(k), Entry::Value(v)));
    }
    let keys_in_order = o.keys().all(|k| matches!(k, Rego::String(_)));
    if !keys_in_order {
        // Byte order of the key text; the later of equal keys wins.
        sorted.sort_by(|a, b| a.0.cmp(&b.0));
        sorted.reverse();
        sorted.dedup_by(|later, earlier| later.0 == earlier.0);
        sorted.reverse();
    }
    out.push('{');
    let mut first = true;
    let mut spliced = [
        ("id", Entry::Slot(Slot::Id)),
        ("time_ns", Entry::Slot(Slot::Time)),
    ]
    .into_iter()
    .peekable();
    for (k, e) in sorted {
        while let Some((sk, _)) = spliced.peek() {
            if *sk > k.as_str() {
                break;
            }
            let same = *sk == k.as_str();
            if let Some((sk, se)) = spliced.next() {
                entry(out, &mut first, sk, se, masks, now);
            }
            if same {
                break;
            }
        }
        if matches!(k.as_str(), "id" | "time_ns") {
            continue; // replaced
        }
        entry(out, &mut first, &k, e, masks, None);
    }
    for (sk, se) in spliced {
        entry(out, &mut first, sk, se, masks, now);
    }
    out.push('}');
}

fn strings<S: AsRef<str>>(out: &mut String, items: &[S]) {
    out.push('[');
    for (i, s) in items.iter().enumerate() {
        if i > 0 {
            out.push(',');
        }
        string(out, s.as_ref());
    }
    out.push(']');
}

fn opt_string(out: &mut String, s: Option<&str>) {
    match s {
        Some(s) => string(out, s),
        None => out.push_str("null"),
    }
}

/// A JSON string, escaped as `serde_json` escapes it.
fn string(out: &mut String, s: &str) {
    out.push('"');
    escape_into(out, s);
    out.push('"');
}

fn escape_into(out: &mut String, s: &str) {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    if !s.bytes().any(|b| b < 0x20 || b == b'"' || b == b'\\') {
        out.push_str(s);
        return;
    }
    let mut start = 0;
    for (i, b) in s.bytes().enumerate() {
        let esc: &str = match b {
            b'"' => "\\\"",
            b'\\' => "\\\\",
            b'\n' => "\\n",
            b'\r' => "\\r",
            b'\t' => "\\t",
            0x08 => "\\b",
            0x0c => "\\f",
            0..=0x1f => "",
            _ => continue,
        };
        out.push_str(s.get(start..i).unwrap_or(""));
        start = i + 1;
        if esc.is_empty() {
            out.push_str("\\u00");
            for d in [b >> 4, b & 0xf] {
                out.push(char::from(HEX.get(usize::from(d)).copied().unwrap_or(b'0')));
            }
        } else {
            out.push_str(esc);
        }
    }
    out.push_str(s.get(start..).unwrap_or(""));
}

#[cfg(test)]
mod tests;
