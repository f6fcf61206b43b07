//! `agentplane-log verify`: walks the decision records of a log chain by
//! chain and checks every link and every checkpoint.
//!
//! A log is any mix of Envoy log lines (`… agentplane-decision {…}`,
//! `… agentplane-checkpoint {…}`), access-log lines of the same shape,
//! and bare JSON lines (a collector's records and checkpoints, one per
//! line); such lines as Envoy escapes them (`--log-format-escaped`) or
//! as a string member of a JSON line (Envoy's `json_format` log, a
//! container runtime's JSON log) read as the text they escape. Records
//! of one chain must come in `seq` order in the input: a VM hands its
//! records to its sink in the order it numbers them, and
//! Envoy writes them in that order to either sink. So a record whose
//! `seq` is not its predecessor's plus one was removed, reordered or
//! inserted, and one whose `prev` is not its predecessor's digest was
//! edited (or the predecessor was). Checkpoints may come anywhere (Envoy's
//! log, while records go to an access log): each must verify against the
//! JWKS and match the digest of the record it names.
//!
//! The signature and digest rules are the filter's own
//! (`agentplane_core::audit::chain`); what lives here is reading the
//! lines and walking the chains.

use agentplane_core::audit::chain::{self, Vouched, CHECKPOINT_PREFIX, CHECKPOINT_TYPE, GENESIS};
use agentplane_core::audit::PREFIX;
use serde_json::Value;
use std::collections::{BTreeMap, HashMap, HashSet};
use std::fmt;

/// How strict a verification is.
#[derive(Debug, Clone, Copy, Default)]
pub struct Options {
    /// Unsigned checkpoints vouch for their chain (a filter without a
    /// `txn_token` key writes them); by default they are a failure.
    pub allow_unsigned: bool,
    /// A chain may begin past `seq` 1 (a rotated file; its first link is
    /// taken on trust, later checkpoints still vouch for it).
    pub partial: bool,
    /// The writer has shut down: every record must be vouched for by a
    /// checkpoint (an uncovered tail is a failure, not a warning).
    pub closed: bool,
}

/// Where a line is: its input's name and its line number (from 1).
#[derive(Debug, Clone, Default, PartialEq, Eq, PartialOrd, Ord)]
pub struct Pos {
    input: usize,
    line: usize,
    name: String,
}

impl fmt::Display for Pos {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.name, self.line)
    }
}

#[derive(Debug)]
struct Rec {
    pos: Pos,
    seq: u64,
    prev: String,
    digest: String,
}

#[derive(Debug)]
struct Failure {
    at: Pos,
    what: String,
}

/// The outcome of a clean verification.
#[derive(Debug, PartialEq, Eq)]
pub struct Summary {
    /// Records read.
    pub records: usize,
    /// Chains they form.
    pub chains: usize,
    /// What each chain is verified to: (chain, seq, time).
    pub checkpoints: Vec<(String, u64, String)>,
    /// Records after their chain's last checkpoint.
    pub uncovered: usize,
    /// Inputs whose unterminated last line is a record or checkpoint cut
    /// off (a file read while Envoy writes it): where, not verified.
    pub cut: Vec<String>,
}

impl fmt::Display for Summary {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} records, {} chains, verified to checkpoint ",
            self.records, self.chains
        )?;
        for (i, (c, seq, t)) in self.checkpoints.iter().enumerate() {
            let sep = if i > 0 { ", " } else { "" };
            write!(f, "{sep}{c}#{seq} ({t})")?;
        }
        if self.uncovered > 0 {
            write!(
                f,
                "; {} records after the last checkpoints are linked but not yet vouched for",
                self.uncovered
            )?;
        }
        for at in &self.cut {
            write!(f, "; the last line, at {at}, is cut off mid-line (still being written?), not verified")?;
        }
        Ok(())
    }
}

/// What a log line holds.
enum Item {
    Record(String),
    Checkpoint(String),
}

/// The record or checkpoint a line holds, as its exact text.
fn item(line: &str) -> Option<Item> {
    let t = line.trim();
    if t.starts_with('{') {
        if let Ok(v) = serde_json::from_str::<Value>(t) {
            // A bare JSON line (a collector's): a checkpoint says so; a
            // record has a decision id. Read as a whole before looking for
            // a prefix, which a record may quote in its own text.
            if v.get("type").and_then(Value::as_str) == Some(CHECKPOINT_TYPE) {
                return Some(Item::Checkpoint(t.to_string()));
            }
            if v.get("decision_id").is_some() {
                return Some(Item::Record(t.to_string()));
            }
            // A log line as a string member of a JSON line (Envoy's
            // json_format log, a container runtime's JSON log): its
            // unescaped text is the line as written.
            let inner = v.as_object().into_iter().flat_map(|o| o.values());
            return inner.filter_map(Value::as_str).find_map(|s| {
                let s = s.strip_suffix('\n').unwrap_or(s);
                prefixed(s.strip_suffix('\r').unwrap_or(s))
            });
        }
    }
    prefixed(line)
}

/// The record or checkpoint after its prefix, C-unescaped if Envoy
/// escaped the line (`--log-format-escaped`: `{\"…`; records never begin
/// so, their first key being a plain string).
fn prefixed(line: &str) -> Option<Item> {
    let text = |s: &str| match s.starts_with("{\\\"") {
        true => c_unescape(s).unwrap_or_else(|| s.to_string()),
        false => s.to_string(),
    };
    if let Some((_, r)) = line.split_once(PREFIX) {
        return Some(Item::Record(text(r)));
    }
    if let Some((_, c)) = line.split_once(CHECKPOINT_PREFIX) {
        return Some(Item::Checkpoint(text(c)));
    }
    None
}

/// Undoes `absl::CEscape` (what `--log-format-escaped` applies to a whole
/// log line): `\n \r \t \" \' \\` and three-digit octal bytes. `None`
/// for anything else, or bytes that are not UTF-8.
fn c_unescape(s: &str) -> Option<String> {
    let mut out = Vec::with_capacity(s.len());
    let mut it = s.bytes();
    while let Some(b) = it.next() {
        if b != b'\\' {
            out.push(b);
            continue;
        }
        let e = it.next()?;
        out.push(match e {
            b'n' => b'\n',
            b'r' => b'\r',
            b't' => b'\t',
            b'"' | b'\'' | b'\\' => e,
            b'0'..=b'3' => {
                let mut v = e - b'0';
                for _ in 0..2 {
                    let d = it.next().filter(u8::is_ascii_digit).filter(|d| *d < b'8')?;
                    v = v * 8 + (d - b'0');
                }
                v
            }
            _ => return None,
        });
    }
    String::from_utf8(out).ok()
}

/// Verifies `inputs` (name, text) against `jwks`. The error is the first
/// problem by position in the input, with a count of the others.
pub fn verify(
    inputs: &[(String, String)],
    jwks: Option<&Value>,
    opts: Options,
) -> Result<Summary, String> {
    let mut chains: BTreeMap<String, Vec<Rec>> = BTreeMap::new();
    let mut checkpoints: Vec<(Pos, String)> = Vec::new();
    let mut fails: Vec<Failure> = Vec::new();
    let mut records = 0usize;
    let mut cut = Vec::new();
    for (input, (name, text)) in inputs.iter().enumerate() {
        // Lines end at `\n` only: a record may hold U+2028 and friends.
        let mut lines = text.split('\n').enumerate().peekable();
        while let Some((i, line)) = lines.next() {
            let line = line.strip_suffix('\r').unwrap_or(line);
            let pos = Pos {
                input,
                line: i + 1,
                name: name.clone(),
            };
            let item = item(line);
            // A last line without its line end that is not JSON is being
            // written (or was, when Envoy died): no more than a removed
            // tail, which its checkpoint, if any, still reports.
            let text = match &item {
                Some(Item::Record(t) | Item::Checkpoint(t)) => t.as_str(),
                None => "{}",
            };
            if lines.peek().is_none() && serde_json::from_str::<Value>(text).is_err() {
                match opts.closed {
                    false => cut.push(pos.to_string()),
                    true => fails.push(fail(
                        &pos,
                        format!("truncated: the last line, at {pos}, of a closed log is cut off mid-line"),
                    )),
                }
                continue;
            }
            match item {
                None => {}
                Some(Item::Checkpoint(c)) => checkpoints.push((pos, c)),
                Some(Item::Record(r)) => {
                    records += 1;
                    match link(&r) {
                        Ok((c, seq, prev)) => chains.entry(c).or_default().push(Rec {
                            pos,
                            seq,
                            prev,
                            digest: chain::digest(r.as_bytes()),
                        }),
                        Err(why) => fails.push(Failure {
                            at: pos,
                            what: format!("edited: {why}"),
                        }),
                    }
                }
            }
        }
    }
    for (name, recs) in &chains {
        walk(name, recs, opts, &mut fails);
    }
    let (covered, failed) = vouch(&chains, &checkpoints, jwks, opts, &mut fails);
    let mut summary = Summary {
        records,
        chains: chains.len(),
        checkpoints: Vec::new(),
        uncovered: 0,
        cut,
    };
    for (name, recs) in &chains {
        let Some((seq, time)) = covered.get(name) else {
            if failed.contains(name) {
                continue; // its checkpoints failed: reported already
            }
            let at = recs.first().map(|r| r.pos.clone()).unwrap_or_default();
            fails.push(Failure {
                at,
                what: format!(
                    "chain {name}: no checkpoint vouches for its {} records (a forged chain looks like this)",
                    recs.len()
                ),
            });
            continue;
        };
        summary.checkpoints.push((name.clone(), *seq, time.clone()));
        let tail: Vec<&Rec> = recs.iter().filter(|r| r.seq > *seq).collect();
        summary.uncovered += tail.len();
        if let (true, Some(first)) = (opts.closed, tail.first()) {
            fails.push(Failure {
                at: first.pos.clone(),
                what: format!(
                    "chain {name}: seq {} at {} and the {} records after it come after the last checkpoint (#{seq}) of a closed log",
                    first.seq,
                    first.pos,
                    tail.len() - 1
                ),
            });
        }
    }
    if records == 0 {
        return Err("no decision records in the input".into());
    }
    fails.sort_by(|a, b| a.at.cmp(&b.at));
    match fails.split_first() {
        None => Ok(summary),
        Some((first, [])) => Err(first.what.clone()),
        Some((first, rest)) => Err(format!("{} (and {} more problems)", first.what, rest.len())),
    }
}

/// A record's chain, seq and prev.
fn link(record: &str) -> Result<(String, u64, String), String> {
    let v: Value = serde_json::from_str(record).map_err(|_| "a record line is not JSON")?;
    let log = v
        .get("log")
        .ok_or("a record without its chain link (log)")?;
    let s = |k: &str| log.get(k).and_then(Value::as_str).map(str::to_owned);
    match (
        s("chain"),
        log.get("seq").and_then(Value::as_u64),
        s("prev"),
    ) {
        (Some(c), Some(seq @ 1..), Some(prev)) => Ok((c, seq, prev)),
        _ => Err("a record whose log link lacks chain, seq (from 1) or prev".into()),
    }
}

/// Walks one chain in input order: each record must be its
/// predecessor's successor, linked by its digest.
fn walk(name: &str, recs: &[Rec], opts: Options, fails: &mut Vec<Failure>) {
    let mut seen: HashMap<u64, &Pos> = HashMap::new();
    for (i, r) in recs.iter().enumerate() {
        let earlier = seen.insert(r.seq, &r.pos);
        let Some(p) = i.checked_sub(1).and_then(|j| recs.get(j)) else {
            if r.seq == 1 && r.prev != GENESIS {
                fails.push(fail(
                    &r.pos,
                    format!(
                        "edited: chain {name} seq 1 at {} does not start from the genesis link",
                        r.pos
                    ),
                ));
            } else if r.seq != 1 && !opts.partial {
                let what = match recs.iter().find(|l| l.seq < r.seq) {
                    Some(l) => format!(
                        "reordered: chain {name} seq {} at {} comes before seq {} at {}",
                        r.seq, r.pos, l.seq, l.pos
                    ),
                    None => format!(
                        "removed: chain {name} begins at seq {} at {}: seq 1 to {} are missing",
                        r.seq,
                        r.pos,
                        r.seq.saturating_sub(1)
                    ),
                };
                fails.push(fail(&r.pos, what));
            }
            continue;
        };
        let want = p.seq.saturating_add(1);
        let what = if let Some(e) = earlier {
            format!("inserted: chain {name} seq {} at {} repeats seq {} at {} (one of them was inserted)", r.seq, r.pos, r.seq, e)
        } else if r.seq < want {
            format!(
                "reordered: chain {name} seq {} at {} comes after seq {} at {}",
                r.seq, r.pos, p.seq, p.pos
            )
        } else if r.seq > want {
            match recs.iter().skip(i).find(|l| (want..r.seq).contains(&l.seq)) {
                Some(l) => format!("reordered: chain {name} seq {} at {} comes before seq {} at {}", r.seq, r.pos, l.seq, l.pos),
                None if r.seq == want + 1 => format!("removed: chain {name} seq {want} (between seq {} at {} and seq {} at {})", p.seq, p.pos, r.seq, r.pos),
                None => format!("removed: chain {name} seq {want} to {} (between seq {} at {} and seq {} at {})", r.seq - 1, p.seq, p.pos, r.seq, r.pos),
            }
        } else if r.prev != p.digest {
            // A record whose seq comes again later, linked to a text that
            // is not its predecessor's, is the one that was put in.
            if let Some(l) = recs.iter().skip(i + 1).find(|l| l.seq == r.seq) {
                fails.push(fail(
                    &r.pos,
                    format!(
                        "inserted: chain {name} seq {} at {} (its link matches no record; seq {} again at {})",
                        r.seq, r.pos, l.seq, l.pos
                    ),
                ));
                continue;
            }
            // The predecessor's text is not what its successor chained
            // to: it was edited, or this record's link was.
            fails.push(fail(
                &p.pos,
                format!(
                    "edited: chain {name} seq {} at {} (seq {} at {} chains to another text)",
                    p.seq, p.pos, r.seq, r.pos
                ),
            ));
            continue;
        } else {
            continue;
        };
        fails.push(fail(&r.pos, what));
    }
}

fn fail(at: &Pos, what: String) -> Failure {
    Failure {
        at: at.clone(),
        what,
    }
}

/// Checks every checkpoint: signature, and the digest of the record it
/// names. Returns, per chain, the highest seq a good checkpoint vouches
/// for and its time, and the chains a failed checkpoint names (a
/// checkpoint that vouches for nothing here, as one of records before a
/// rotated file, neither covers its chain nor excuses it).
fn vouch(
    chains: &BTreeMap<String, Vec<Rec>>,
    checkpoints: &[(Pos, String)],
    jwks: Option<&Value>,
    opts: Options,
    fails: &mut Vec<Failure>,
) -> (HashMap<String, (u64, String)>, HashSet<String>) {
    let mut covered: HashMap<String, (u64, String)> = HashMap::new();
    let mut failed = HashSet::new();
    for (pos, text) in checkpoints {
        let cp: Option<Value> = serde_json::from_str(text).ok();
        let before = fails.len();
        check_one(chains, &mut covered, pos, cp.as_ref(), jwks, opts, fails);
        if fails.len() > before {
            if let Some(c) = cp.as_ref().and_then(|c| c.get("chain")?.as_str()) {
                failed.insert(c.to_string());
            }
        }
    }
    (covered, failed)
}

/// One checkpoint: a failure, or its chain covered up to its seq.
fn check_one(
    chains: &BTreeMap<String, Vec<Rec>>,
    covered: &mut HashMap<String, (u64, String)>,
    pos: &Pos,
    cp: Option<&Value>,
    jwks: Option<&Value>,
    opts: Options,
    fails: &mut Vec<Failure>,
) {
    let v: Vouched = match cp
        .ok_or_else(|| "not JSON".to_string())
        .and_then(|cp| chain::verify_checkpoint(cp, jwks))
    {
        Ok(v) => v,
        Err(e) => {
            fails.push(fail(pos, format!("checkpoint at {pos}: {e}")));
            return;
        }
    };
    if let (Err(why), false) = (&v.kid, opts.allow_unsigned) {
        fails.push(fail(
            pos,
            format!("checkpoint at {pos} is unsigned ({why}); --allow-unsigned accepts it"),
        ));
        return;
    }
    let recs = chains.get(&v.chain).map(Vec::as_slice).unwrap_or_default();
    match recs.iter().find(|r| r.seq == v.seq) {
        Some(r) if r.digest != v.digest => fails.push(fail(
            &r.pos,
            format!("edited: chain {} seq {} at {} is not the record the checkpoint at {pos} vouches for", v.chain, v.seq, r.pos),
        )),
        Some(_) => {
            let c = covered.entry(v.chain.clone()).or_insert((0, String::new()));
            if v.seq >= c.0 {
                *c = (v.seq, v.time.clone());
            }
        }
        // A rotated file: the checkpoint is of records before it.
        None if opts.partial && recs.first().is_some_and(|r| r.seq > v.seq) => {}
        None => {
            let last = recs.iter().map(|r| r.seq).max().unwrap_or(0);
            // The record named is missing between others: the walk reports
            // the gap where it is, and so does this (not as a short log).
            let what = match recs.iter().find(|r| r.seq > v.seq) {
                Some(after) => fail(
                    &after.pos,
                    format!("removed: chain {} seq {}, which the checkpoint at {pos} vouches for, is missing before seq {} at {}", v.chain, v.seq, after.seq, after.pos),
                ),
                None => fail(
                    pos,
                    format!("removed: the checkpoint at {pos} vouches for chain {} up to seq {}, but the log has it only up to seq {last}", v.chain, v.seq),
                ),
            };
            fails.push(what);
        }
    }
}

#[cfg(test)]
#[path = "verify_tests.rs"]
mod tests;
