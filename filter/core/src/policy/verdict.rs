//! What the policy decided, read from what it returned: a package's
//! generated decision object ([`decision`]) or a rule entrypoint's boolean
//! or response object ([`response_object`]). Anything undefined, mistyped
//! or malformed is a [`PolicyError::BadResult`] or a deny, never an allow.
//!
//! The answer is read where the evaluator left it, as a `regorus::Value`,
//! with each value meaning what it would as JSON (a set is an array in
//! sorted order, undefined is null: see [`crate::value::from_rego`]), so
//! no JSON copy of the answer is built per request.

use crate::value::{from_rego, is_null, items, member, number, str_of};
use regorus::Value;
use std::collections::BTreeMap;
use std::fmt;

/// Why the policy could not produce a decision.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum PolicyError {
    /// A module or the data failed to load or compile.
    Compile(String),
    /// The entrypoint does not exist or has no `allow` rule.
    Entrypoint(String),
    /// Evaluation failed at run time.
    Eval(String),
    /// The result is not a shape the filter understands.
    BadResult(String),
}

impl fmt::Display for PolicyError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            PolicyError::Compile(m) => write!(f, "policy does not compile: {m}"),
            PolicyError::Entrypoint(m) => write!(f, "policy entrypoint: {m}"),
            PolicyError::Eval(m) => write!(f, "policy evaluation failed: {m}"),
            PolicyError::BadResult(m) => write!(f, "policy result not understood: {m}"),
        }
    }
}

impl std::error::Error for PolicyError {}

/// What the policy decided.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Verdict {
    /// True only if the policy allowed and nothing denied.
    pub allowed: bool,
    /// Deny reasons, in the policy's order (sets are sorted).
    pub reasons: Vec<String>,
    /// Status chosen by a response-object policy.
    pub status: Option<u16>,
    /// Headers chosen by a response-object policy: added upstream on allow,
    /// to the reply on deny.
    pub headers: Vec<(String, String)>,
    /// A response object's `response_headers_to_add`: set on the response
    /// the client gets, allowed or refused.
    pub response_headers: Vec<(String, String)>,
    /// A response object's `request_headers_to_remove` (lower-cased):
    /// taken off an allowed request before it goes upstream.
    pub remove_headers: Vec<String>,
    /// A response object's `body`: the refusal's body, as is.
    pub body: Option<String>,
    /// Until when (ns since the epoch, exclusive) the same input, at a later
    /// `input.request.time_ns`, gets the same decision: the package's
    /// `valid_until_ns` rule. `None` when the policy does not say; the
    /// decision cache then never reuses the decision.
    pub valid_until_ns: Option<u64>,
    /// On a refusal, the OAuth scope whose absence caused it: the
    /// package's `missing_scope` rule (a string). The 403 then says
    /// `error="insufficient_scope", scope="…"` so a client can step up.
    pub scope: Option<String>,
    /// For a list response: the names the agent may see (the package's
    /// `visible` rule, a set of strings). `None` when the policy has no
    /// such rule.
    pub visible: Option<Vec<String>>,
    /// The limits that apply to the request: the package's `limits` rule
    /// (see [`crate::limits::parse`]); empty without one.
    pub limits: Vec<crate::limits::Limit>,
    /// A human approval the request needs before it goes on: the
    /// package's `approval` rule (see [`crate::approval::parse`]).
    pub approval: Option<crate::approval::Required>,
    /// The audience and scopes of an exchanged token, when the policy
    /// chooses them: the package's `exchange` rule (see
    /// [`crate::exchange::parse`]).
    pub exchange: Option<crate::exchange::Choice>,
}

/// Reads a package's decision object (`allow`, `deny`, `valid_until_ns`,
/// `scope`, `visible`, `limits`, as the generated entry rule gathers them).
pub(super) fn decision(v: Value) -> Result<Verdict, PolicyError> {
    if !matches!(v, Value::Object(_)) {
        return Err(PolicyError::BadResult(format!(
            "package decision is {}",
            kind(&v)
        )));
    }
    let get = |k: &str| member(&v, k);
    let allowed = match get("allow") {
        Some(Value::Bool(b)) => *b,
        Some(other) => {
            return Err(PolicyError::BadResult(format!(
                "`allow` is {}, not a boolean",
                kind(other)
            )))
        }
        None => false,
    };
    let reasons = deny_reasons(get("deny").unwrap_or(&Value::Null))?;
    // Anything but a positive integer means "do not reuse".
    let valid_until_ns = get("valid_until_ns")
        .and_then(|v| number(v)?.as_u64())
        .filter(|&t| t > 0);
    // Only token-safe scopes are kept (RFC 6749 §3.3: tokens of NQCHAR
    // apart by single spaces): they go into a header. A set or array of
    // scopes is joined the same way.
    let token = |s: &str| {
        !s.is_empty()
            && s.bytes()
                .all(|b| b == 0x21 || (0x23..=0x5b).contains(&b) || (0x5d..=0x7e).contains(&b))
    };
    let scope = match get("scope") {
        Some(Value::String(s)) if s.split(' ').all(token) => Some(s.to_string()),
        Some(v) => match items(v) {
            Some((len, items)) if len > 0 => {
                let all: Option<Vec<&str>> = items.map(str_of).collect();
                all.filter(|v| v.iter().all(|s| token(s)))
                    .map(|v| v.join(" "))
            }
            _ => None,
        },
        None => None,
    };
    let visible = match get("visible") {
        None => None,
        Some(v) if is_null(v) => None,
        Some(v) => match items(v) {
            Some((_, items)) => Some(items.filter_map(str_of).map(str::to_owned).collect()),
            None => Some(Vec::new()),
        },
    };
    let limits = crate::limits::parse(get("limits").unwrap_or(&Value::Null))
        .map_err(PolicyError::BadResult)?;
    let approval = crate::approval::parse(get("approval").unwrap_or(&Value::Null))
        .map_err(PolicyError::BadResult)?;
    let exchange = crate::exchange::parse(get("exchange").unwrap_or(&Value::Null))
        .map_err(PolicyError::BadResult)?;
    Ok(Verdict {
        allowed: allowed && reasons.is_empty(),
        reasons,
        valid_until_ns,
        scope,
        visible,
        limits,
        approval,
        exchange,
        ..Verdict::default()
    })
}

/// What a value is, in the words of an error (JSON's kinds: undefined and
/// null are both "undefined", a set is an array).
fn kind(v: &Value) -> &'static str {
    match v {
        _ if is_null(v) => "undefined",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) | Value::Set(_) => "an array",
        Value::Object(_) => "an object",
        Value::Null | Value::Undefined => "undefined",
    }
}

fn deny_reasons(v: &Value) -> Result<Vec<String>, PolicyError> {
    if is_null(v) {
        return Ok(Vec::new());
    }
    if let Some((_, items)) = items(v) {
        // A reason that is not a string is kept as its JSON text.
        return Ok(items
            .map(|i| match i {
                Value::String(s) => s.to_string(),
                other => from_rego(other).to_string(),
            })
            .collect());
    }
    Ok(match v {
        Value::Bool(false) => Vec::new(),
        Value::Bool(true) => vec!["denied by policy".into()],
        Value::String(s) if s.is_empty() => Vec::new(),
        Value::String(s) => vec![s.to_string()],
        other => {
            return Err(PolicyError::BadResult(format!(
                "`deny` is {}; use a set of reason strings",
                kind(other)
            )))
        }
    })
}

pub(super) fn response_object(v: Value) -> Result<Verdict, PolicyError> {
    match &v {
        Value::Bool(allowed) => {
            return Ok(Verdict {
                allowed: *allowed,
                ..Verdict::default()
            })
        }
        _ if is_null(&v) => {
            return Ok(Verdict {
                allowed: false,
                reasons: vec!["policy result undefined".into()],
                ..Verdict::default()
            })
        }
        Value::Object(_) => {}
        other => {
            return Err(PolicyError::BadResult(format!(
                "entrypoint is {}, not a boolean or response object",
                kind(other)
            )))
        }
    }
    let get = |k: &str| member(&v, k);
    let allowed = match get("allowed") {
        Some(Value::Bool(b)) => *b,
        _ => {
            return Err(PolicyError::BadResult(
                "response object needs a boolean `allowed`".into(),
            ))
        }
    };
    // `http_status` is opa-envoy-plugin's name for it.
    let status = match get("status").or_else(|| get("http_status")) {
        None => None,
        Some(s) if is_null(s) => None,
        Some(s) => match number(s) {
            Some(n) => match n.as_u64().and_then(|s| u16::try_from(s).ok()) {
                Some(s) if (200..=599).contains(&s) => Some(s),
                _ => return Err(PolicyError::BadResult(format!("status {n} is not 200-599"))),
            },
            None => return Err(PolicyError::BadResult(format!("`status` is {}", kind(s)))),
        },
    };
    let headers = header_map(get("headers"), "headers")?;
    // opa-envoy-plugin's result members: the reply's body, headers added
    // to the response, headers taken off the upstream request.
    let response_headers = header_map(get("response_headers_to_add"), "response_headers_to_add")?;
    let body = match get("body") {
        None => None,
        Some(b) if is_null(b) => None,
        Some(Value::String(s)) => Some(s.to_string()),
        Some(other) => return Err(PolicyError::BadResult(format!("`body` is {}", kind(other)))),
    };
    let remove_headers = match get("request_headers_to_remove") {
        None => Vec::new(),
        Some(r) if is_null(r) => Vec::new(),
        Some(r) => match items(r) {
            Some((_, it)) => it
                .map(|x| str_of(x).map(str::to_ascii_lowercase))
                .collect::<Option<Vec<_>>>()
                .ok_or_else(|| {
                    PolicyError::BadResult("`request_headers_to_remove` holds a non-string".into())
                })?,
            None => {
                return Err(PolicyError::BadResult(format!(
                    "`request_headers_to_remove` is {}",
                    kind(r)
                )))
            }
        },
    };
    let reasons = match get("reason") {
        None => Vec::new(),
        Some(r) if is_null(r) => Vec::new(),
        Some(Value::String(s)) => vec![s.to_string()],
        Some(other) => deny_reasons(other)?,
    };
    // A rule entrypoint cannot say how long its answer holds: never reused.
    Ok(Verdict {
        allowed,
        reasons,
        status,
        headers,
        response_headers,
        remove_headers,
        body,
        ..Verdict::default()
    })
}

/// A response object's header map: names lower-cased, in the order JSON
/// sorts them (a key that is not a string by its JSON text, the last of
/// two equal names winning); a value a string, or an array of strings
/// (opa-envoy-plugin's form), joined with ", ".
fn header_map(v: Option<&Value>, what: &str) -> Result<Vec<(String, String)>, PolicyError> {
    let h = match v {
        None => return Ok(Vec::new()),
        Some(h) if is_null(h) => return Ok(Vec::new()),
        Some(Value::Object(h)) => h,
        Some(other) => {
            return Err(PolicyError::BadResult(format!(
                "`{what}` is {}",
                kind(other)
            )))
        }
    };
    let named: BTreeMap<String, &Value> = h
        .iter()
        .map(|(k, v)| match k {
            Value::String(s) => (s.to_string(), v),
            other => (from_rego(other).to_string(), v),
        })
        .collect();
    let mut out = Vec::with_capacity(named.len());
    for (k, v) in named {
        let value = match v {
            Value::String(s) => Some(s.to_string()),
            other => items(other).and_then(|(_, it)| {
                it.map(|x| str_of(x).map(str::to_owned))
                    .collect::<Option<Vec<_>>>()
                    .map(|all| all.join(", "))
            }),
        };
        match value {
            Some(value) => out.push((k.to_ascii_lowercase(), value)),
            None => {
                return Err(PolicyError::BadResult(format!(
                    "{what} {k:?} is {}",
                    kind(v)
                )))
            }
        }
    }
    Ok(out)
}
