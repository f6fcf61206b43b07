//! Human approval bound to the exact call.
//!
//! A policy's `approval` rule names who may approve a `tools/call` and how
//! long an approval lives ([`Required`]). The filter then binds the call:
//! the canonical JSON of (agent, delegation chain, service, endpoint,
//! tool, arguments) and its SHA-256 ([`Binding`]). It asks the approval service,
//! through an Envoy callout, where that binding stands ([`ask_body`],
//! [`read`]): the first time the service opens a pending approval and
//! returns its page; an approver signs in, sees exactly that call and
//! approves or rejects it; the agent's identical retry then gets a signed,
//! single-use grant for that binding ([`grant::verify`]). Any other
//! arguments, agent, chain, service, endpoint or tool is another binding, so it
//! never passes on this approval; a replay finds the grant used, a late
//! retry finds it expired.
//!
//! How the agent is told depends on its MCP revision ([`Form`], rendered
//! in `answer.rs`): an input-required result whose sealed `requestState`
//! names the pending call (2026-07-28), a URL elicitation error −32042
//! (2025-11-25), or a tool error carrying the link (earlier revisions).

mod answer;
pub mod grant;
#[cfg(test)]
pub(crate) mod tests;
pub mod used;

pub use answer::{Asked, AskedState, Form};

use crate::ids::hex;
use crate::value::{is_null, items, member, number, str_of};
use serde_json::{Map, Value};
use sha2::{Digest, Sha256};

/// The name of the input request the filter adds to a 2026-07-28
/// input-required result (and reads back from `inputResponses`).
pub const INPUT_KEY: &str = "io.agentplane/approval";

/// What the policy's `approval` rule asks for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Required {
    /// Who may approve (the approvers' subjects at the identity provider).
    pub approvers: Vec<String>,
    /// How long an approval lives once given, and a pending one waits.
    pub ttl_s: u64,
}

/// Longest approval lifetime a policy may ask for: a day.
pub const MAX_TTL_S: u64 = 86_400;

/// Reads the policy's `approval` value: undefined or null is "none
/// needed"; an object `{"approvers": [..], "ttl_s": n}` asks for one. Any
/// other shape is an error (the request is then refused as a policy
/// error, never let through).
pub fn parse(v: &regorus::Value) -> Result<Option<Required>, String> {
    if is_null(v) {
        return Ok(None);
    }
    if !matches!(v, regorus::Value::Object(_)) {
        return Err("`approval` must be an object with approvers and ttl_s".into());
    }
    let approvers: Vec<String> = match member(v, "approvers").and_then(items) {
        Some((_, it)) => it
            .map(|a| str_of(a).filter(|s| !s.is_empty()).map(str::to_owned))
            .collect::<Option<Vec<_>>>()
            .ok_or("`approval.approvers` must hold non-empty strings")?,
        None => return Err("`approval.approvers` must be a set or array of names".into()),
    };
    if approvers.is_empty() {
        return Err("`approval.approvers` names nobody: no one could approve".into());
    }
    let ttl_s = member(v, "ttl_s")
        .and_then(|n| number(n)?.as_u64())
        .filter(|t| (1..=MAX_TTL_S).contains(t))
        .ok_or("`approval.ttl_s` must be a whole number of seconds, 1 to 86400")?;
    Ok(Some(Required { approvers, ttl_s }))
}

/// One call, bound: the canonical text the approver is shown and its
/// digest, which is what an approval is for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Binding {
    /// Canonical JSON (sorted keys, no whitespace) of agent, chain,
    /// service, endpoint, tool and arguments.
    pub call: String,
    /// `sha256:<hex>` of `call`.
    pub digest: String,
}

/// Binds a call. `chain` is the delegation chain, the actor acting now
/// first; `endpoint` the path and query the call goes to upstream (a
/// server can read them: a toolset, an account); absent arguments bind as
/// `{}` (as a server reads them).
pub fn bind(
    agent: &str,
    chain: &[String],
    service: &str,
    endpoint: &str,
    tool: &str,
    arguments: Option<&Map<String, Value>>,
) -> Result<Binding, String> {
    let mut doc = Map::new();
    doc.insert("agent".into(), agent.into());
    doc.insert(
        "arguments".into(),
        Value::Object(arguments.cloned().unwrap_or_default()),
    );
    doc.insert(
        "chain".into(),
        Value::Array(chain.iter().map(|s| Value::from(s.as_str())).collect()),
    );
    doc.insert("endpoint".into(), endpoint.into());
    doc.insert("service".into(), service.into());
    doc.insert("tool".into(), tool.into());
    // serde_json's maps are sorted by key (no `preserve_order` in this
    // build) and print without whitespace: the text is canonical.
    let call = serde_json::to_string(&Value::Object(doc)).map_err(|e| e.to_string())?;
    let digest = sha256_hex(call.as_bytes());
    Ok(Binding { call, digest })
}

/// The `params` members a call needing approval may carry: the bound
/// `name` and `arguments`, and the protocol's own `_meta` (its keys
/// checked by [`unbound`]) and `task` (which asks for the result later and
/// changes nothing the tool does).
const CALL_PARAMS: [&str; 4] = ["name", "arguments", "_meta", "task"];

/// The first member of a call that would go upstream but is neither in
/// its binding nor the protocol's own, as a path (`params.dryRun`,
/// `params._meta.<key>`): the approver never sees it, so a call carrying
/// one is refused rather than passed on an approval for less than it
/// says. In `_meta` only `progressToken` and the
/// `io.modelcontextprotocol/` keys are the protocol's. The gateway's own
/// `requestState` and input response are taken out before this runs; a
/// server's are refused here (the answers it asked for change the call).
pub fn unbound(m: &crate::mcp::Message) -> Option<String> {
    // The client names the member: its first characters say which it is,
    // and the answer and the record stay short.
    let short = |k: &str| match k.char_indices().nth(64) {
        Some((i, _)) => format!("{}…", k.get(..i).unwrap_or_default()),
        None => k.to_string(),
    };
    if let Some(k) = m.rest.keys().find(|k| k.as_str() != "jsonrpc") {
        return Some(short(k));
    }
    let params = m.params.as_ref()?;
    if let Some(k) = params.keys().find(|k| !CALL_PARAMS.contains(&k.as_str())) {
        return Some(format!("params.{}", short(k)));
    }
    match params.get("_meta") {
        None => None,
        Some(Value::Object(meta)) => meta
            .keys()
            .find(|k| k.as_str() != "progressToken" && !k.starts_with("io.modelcontextprotocol/"))
            .map(|k| format!("params._meta.{}", short(k))),
        Some(_) => Some("params._meta".into()),
    }
}

/// `sha256:<hex>` of `bytes`.
pub fn sha256_hex(bytes: &[u8]) -> String {
    let sum: [u8; 32] = Sha256::digest(bytes).into();
    let mut out = String::with_capacity(71);
    out.push_str("sha256:");
    out.push_str(&hex(&sum));
    out
}

/// The body of the callout asking the approval service about `b`.
pub fn ask_body(b: &Binding, req: &Required, decision_id: &str) -> Vec<u8> {
    serde_json::json!({
        "binding": b.digest,
        "call": b.call,
        "approvers": req.approvers,
        "ttl_s": req.ttl_s,
        "decision_id": decision_id,
    })
    .to_string()
    .into_bytes()
}

/// A pending approval: its id, its page, until when it waits.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Pending {
    /// The service's id of the approval.
    pub id: String,
    /// The page an approver opens.
    pub url: String,
    /// When it stops waiting (seconds since the epoch).
    pub expires_at: u64,
}

/// What the approval service said about a binding.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Answer {
    /// Not yet approved: an approver must open the page.
    Pending(Pending),
    /// Approved; the grant (a compact JWS) is handed out this once.
    Approved {
        /// The approval's id.
        id: String,
        /// The signed grant.
        grant: String,
    },
    /// An approver said no.
    Rejected {
        /// The approval's id.
        id: String,
        /// Who rejected it.
        approver: String,
    },
    /// The approval of this call was used already; a new one is pending.
    Used(Pending),
    /// The approval (or the wait for it) ran out; a new one is pending.
    Expired(Pending),
}

/// The longest answer read from the approval service.
pub const MAX_ANSWER_BYTES: usize = 16 * 1024;

/// Reads the approval service's answer. Anything unexpected is an error,
/// which refuses the call (503): never an allow.
pub fn read(body: &[u8]) -> Result<Answer, String> {
    if body.len() > MAX_ANSWER_BYTES {
        return Err("answer too long".into());
    }
    let v: Value = serde_json::from_slice(body).map_err(|_| "answer is not JSON".to_string())?;
    let s = |o: &Value, k: &str| -> Result<String, String> {
        o.get(k)
            .and_then(Value::as_str)
            .filter(|s| !s.is_empty() && s.len() <= 4096)
            .map(str::to_owned)
            .ok_or_else(|| format!("answer has no {k}"))
    };
    let pending = |o: &Value| -> Result<Pending, String> {
        let url = s(o, "url")?;
        if !(url.starts_with("https://") || url.starts_with("http://")) {
            return Err("the approval page is not an http(s) URL".into());
        }
        Ok(Pending {
            id: s(o, "id")?,
            url,
            expires_at: o
                .get("expires_at")
                .and_then(Value::as_u64)
                .ok_or("answer has no expires_at")?,
        })
    };
    let next = |o: &Value| pending(o.get("pending").ok_or("answer has no new pending")?);
    match v.get("state").and_then(Value::as_str) {
        Some("pending") => Ok(Answer::Pending(pending(&v)?)),
        Some("approved") => Ok(Answer::Approved {
            id: s(&v, "id")?,
            grant: s(&v, "grant")?,
        }),
        Some("rejected") => Ok(Answer::Rejected {
            id: s(&v, "id")?,
            approver: s(&v, "approver")?,
        }),
        Some("used") => Ok(Answer::Used(next(&v)?)),
        Some("expired") => Ok(Answer::Expired(next(&v)?)),
        _ => Err("answer has no known state".into()),
    }
}

/// An approved call, as the decision log names it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Granted {
    /// The approval's id.
    pub id: String,
    /// Who approved.
    pub approver: String,
    /// The binding approved.
    pub binding: String,
    /// When the grant expires (seconds since the epoch).
    pub expires_s: i64,
}

/// HMAC-SHA-256 (RFC 2104), for the sealed `requestState`.
fn hmac(key: &[u8], msg: &[u8]) -> [u8; 32] {
    let mut k = [0u8; 64];
    let hashed: [u8; 32];
    let key = if key.len() > 64 {
        hashed = Sha256::digest(key).into();
        &hashed[..]
    } else {
        key
    };
    for (d, s) in k.iter_mut().zip(key) {
        *d = *s;
    }
    let mut inner = Sha256::new();
    inner.update(k.map(|b| b ^ 0x36));
    inner.update(msg);
    let inner: [u8; 32] = inner.finalize().into();
    let mut outer = Sha256::new();
    outer.update(k.map(|b| b ^ 0x5c));
    outer.update(inner);
    outer.finalize().into()
}

/// Prefix of the filter's own `requestState` values.
const STATE_PREFIX: &str = "agentplane.approval.v1.";

/// The sealed `requestState` naming pending approval `id` of `binding`:
/// the client hands it back unchanged with its retry, and the filter
/// checks that the retry is the call that awaits approval.
pub fn seal(key: &[u8], id: &str, binding: &str) -> String {
    let body = format!("{}.{}", id, binding.trim_start_matches("sha256:"));
    let mac = hmac(key, body.as_bytes());
    format!("{STATE_PREFIX}{body}.{}", hex(&mac))
}

/// Whether `state` is one of the filter's own (else it is the server's,
/// and goes upstream untouched).
pub fn is_ours(state: &str) -> bool {
    state.starts_with(STATE_PREFIX)
}

/// Opens a sealed `requestState`: the binding it names, or why not.
pub fn open(key: &[u8], state: &str) -> Result<String, &'static str> {
    let rest = state
        .strip_prefix(STATE_PREFIX)
        .ok_or("not an approval state")?;
    let (body, mac) = rest.rsplit_once('.').ok_or("malformed approval state")?;
    let want = hex(&hmac(key, body.as_bytes()));
    // Constant time: the MAC is compared whole.
    let same = want.len() == mac.len()
        && want
            .bytes()
            .zip(mac.bytes())
            .fold(0u8, |acc, (a, b)| acc | (a ^ b))
            == 0;
    if !same {
        return Err("the approval state was not sealed by this gateway");
    }
    let (_, binding) = body.rsplit_once('.').ok_or("malformed approval state")?;
    Ok(format!("sha256:{binding}"))
}

/// Takes the filter's own `requestState` (and its input response) out of
/// a message's params: they are for the gateway, not the server. Returns
/// the state when it was the filter's.
pub fn take_state(params: &mut Map<String, Value>) -> Option<String> {
    let ours = params
        .get("requestState")
        .and_then(Value::as_str)
        .filter(|s| is_ours(s))?
        .to_owned();
    params.remove("requestState");
    if let Some(Value::Object(responses)) = params.get_mut("inputResponses") {
        responses.remove(INPUT_KEY);
        if responses.is_empty() {
            params.remove("inputResponses");
        }
    }
    Some(ours)
}
