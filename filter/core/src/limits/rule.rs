//! A limit as the policy names it: [`parse`] reads the `limits` rule's
//! value into [`Limit`]s (failing closed on anything malformed), and
//! [`Limit::key`] turns one limit and a request's [`Facts`] into the key it
//! counts under. Counting lives in `table.rs`.

use crate::value::{from_rego, is_null, items, member, number, str_of};
use regorus::Value;
use std::hash::{Hash, Hasher};

/// Most limits one decision may carry.
pub const MAX_LIMITS: usize = 16;
/// Largest in-flight cap (leases per key).
pub const MAX_IN_FLIGHT: u64 = 64;
/// What a tool the limit does not name counts as.
pub const OTHER_TOOL: &str = "~other";

/// What a limit counts by.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Dim {
    /// One bucket for everyone.
    Global,
    /// The verified agent id.
    Agent,
    /// The agent's team (from the token).
    Team,
    /// The agent's type (from the token).
    AgentType,
    /// The registry service the request goes to.
    Service,
    /// The MCP tool called, when the limit names it in `tools`; otherwise
    /// every other tool shares one bucket ([`OTHER_TOOL`]).
    Tool,
}

impl Dim {
    fn parse(s: &str) -> Option<Dim> {
        Some(match s {
            "global" => Dim::Global,
            "agent" => Dim::Agent,
            "team" => Dim::Team,
            "agent_type" => Dim::AgentType,
            "service" => Dim::Service,
            "tool" => Dim::Tool,
            _ => return None,
        })
    }

    /// The dimension's name in a limit's `by`.
    pub fn name(self) -> &'static str {
        match self {
            Dim::Global => "global",
            Dim::Agent => "agent",
            Dim::Team => "team",
            Dim::AgentType => "agent_type",
            Dim::Service => "service",
            Dim::Tool => "tool",
        }
    }
}

/// One limit the policy applies to a request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Limit {
    /// The policy's name for it (a metric label, a header token).
    pub name: String,
    /// What it counts by.
    pub by: Vec<Dim>,
    /// Tools counted by name (with [`Dim::Tool`]).
    pub tools: Vec<String>,
    /// Its kind and size.
    pub kind: Kind,
}

/// A limit's kind.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// A token bucket: one token every `interval_ns`, at most `burst`
    /// held, `cost` taken per request.
    Rate {
        /// Nanoseconds per token.
        interval_ns: u64,
        /// Bucket size.
        burst: u64,
        /// Tokens per request.
        cost: u64,
    },
    /// At most `max` requests of a key running at once.
    InFlight {
        /// The cap.
        max: u64,
    },
}

/// Reads the `limits` rule's value as the policy returned it: a set (or
/// array) of objects `{"name", "by", "rate", "period_s", "burst", "cost",
/// "tools"}` or `{"name", "by", "in_flight", "tools"}`. Each value means
/// what it would as JSON (see [`crate::value::number`]). Anything
/// malformed is an error (the decision then fails closed).
pub fn parse(v: &Value) -> Result<Vec<Limit>, String> {
    if is_null(v) {
        return Ok(Vec::new());
    }
    let Some((len, items)) = items(v) else {
        return Err(format!("`limits` is {}, not a set", kind_of(v)));
    };
    if len > MAX_LIMITS {
        return Err(format!("`limits` has {len} entries (at most {MAX_LIMITS})"));
    }
    items.map(parse_one).collect()
}

fn kind_of(v: &Value) -> &'static str {
    match v {
        _ if is_null(v) => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) | Value::Set(_) => "an array",
        Value::Object(_) => "an object",
        Value::Null | Value::Undefined => "null",
    }
}

/// A number as JSON reads it, when it is a non-negative integer.
fn as_u64(v: &Value) -> Option<u64> {
    number(v)?.as_u64()
}

/// A number as JSON reads it, as a float.
fn as_f64(v: &Value) -> Option<f64> {
    number(v)?.as_f64()
}

fn parse_one(v: &Value) -> Result<Limit, String> {
    if !matches!(v, Value::Object(_)) {
        return Err(format!("a limit is {}, not an object", kind_of(v)));
    }
    let get = |k: &str| member(v, k);
    let name = get("name")
        .and_then(str_of)
        .filter(|n| {
            !n.is_empty()
                && n.len() <= 64
                && n.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b"._:-".contains(&b))
        })
        .ok_or("a limit needs a `name` of 1-64 characters [A-Za-z0-9._:-]")?
        .to_string();
    let by = match get("by") {
        None => vec![Dim::Agent],
        Some(by) => match items(by) {
            Some((_, dims)) => dims
                .map(|d| {
                    str_of(d).and_then(Dim::parse).ok_or_else(|| {
                        format!(
                            "limit {name}: `by` names global, agent, team, agent_type, service or tool, not {}",
                            from_rego(d)
                        )
                    })
                })
                .collect::<Result<Vec<_>, _>>()?,
            None => {
                return Err(format!(
                    "limit {name}: `by` is {}, not an array",
                    kind_of(by)
                ))
            }
        },
    };
    let tools = match get("tools") {
        None => Vec::new(),
        Some(tools) => match items(tools) {
            Some((_, t)) => t
                .map(|t| str_of(t).map(str::to_string))
                .collect::<Option<Vec<_>>>()
                .ok_or_else(|| format!("limit {name}: `tools` must be strings"))?,
            None => return Err(format!("limit {name}: `tools` must be an array")),
        },
    };
    let int = |k: &str| -> Result<Option<u64>, String> {
        match get(k) {
            None => Ok(None),
            Some(v) => as_u64(v)
                .map(Some)
                .ok_or_else(|| format!("limit {name}: `{k}` must be a non-negative integer")),
        }
    };
    let kind = if let Some(max) = int("in_flight")? {
        if get("rate").is_some() {
            return Err(format!(
                "limit {name}: `rate` and `in_flight` are separate limits"
            ));
        }
        if !(1..=MAX_IN_FLIGHT).contains(&max) {
            return Err(format!(
                "limit {name}: `in_flight` must be 1-{MAX_IN_FLIGHT}"
            ));
        }
        Kind::InFlight { max }
    } else {
        let rate = get("rate")
            .and_then(as_f64)
            .filter(|r| r.is_finite() && *r > 0.0)
            .ok_or_else(|| format!("limit {name}: needs a positive `rate` or an `in_flight`"))?;
        let period = match get("period_s") {
            None => 1.0,
            Some(p) => as_f64(p)
                .filter(|p| p.is_finite() && *p > 0.0 && *p <= 86_400.0 * 366.0)
                .ok_or_else(|| format!("limit {name}: `period_s` must be positive"))?,
        };
        let interval = (period * 1e9 / rate).round();
        if !(1.0..=1e18).contains(&interval) {
            return Err(format!("limit {name}: rate out of range"));
        }
        let burst = int("burst")?.unwrap_or_else(|| rate.ceil().max(1.0) as u64);
        if burst == 0 || burst > 1_000_000_000 {
            return Err(format!("limit {name}: `burst` must be 1-1e9"));
        }
        let cost = int("cost")?.unwrap_or(1);
        if cost > burst {
            return Err(format!(
                "limit {name}: `cost` {cost} exceeds `burst` {burst}: nothing could pass"
            ));
        }
        Kind::Rate {
            interval_ns: interval as u64,
            burst,
            cost,
        }
    };
    Ok(Limit {
        name,
        by,
        tools,
        kind,
    })
}

/// The request facts a key can hold: all from verified identity, the
/// registry, or (tools) names the limit itself lists.
#[derive(Debug, Clone, Copy, Default)]
pub struct Facts<'a> {
    pub agent: &'a str,
    pub team: Option<&'a str>,
    pub agent_type: Option<&'a str>,
    pub service: Option<&'a str>,
    pub tool: Option<&'a str>,
}

impl Limit {
    /// One line naming the limit's shape (`name|by,..|burst=N` or
    /// `name|by,..|in_flight=N`): the differential test compares these.
    pub fn summary(&self) -> String {
        let by: Vec<&str> = self.by.iter().map(|d| d.name()).collect();
        let size = match self.kind {
            Kind::Rate { burst, .. } => format!("burst={burst}"),
            Kind::InFlight { max } => format!("in_flight={max}"),
        };
        format!("{}|{}|{size}", self.name, by.join(","))
    }

    /// The key this request counts under: the limit's name, each
    /// dimension's value and the limit's shape, length-prefixed. With the
    /// shape in it, two limits of one name but different sizes are two
    /// buckets (each holds), and equal keys are the same bucket.
    pub fn key(&self, f: &Facts<'_>) -> Vec<u8> {
        let mut k = Vec::with_capacity(64);
        let mut part = |s: &str| {
            k.extend_from_slice(&(s.len() as u32).to_le_bytes());
            k.extend_from_slice(s.as_bytes());
        };
        part(&self.name);
        for d in &self.by {
            part(d.name());
            part(match d {
                Dim::Global => "",
                Dim::Agent => f.agent,
                Dim::Team => f.team.unwrap_or(""),
                Dim::AgentType => f.agent_type.unwrap_or(""),
                Dim::Service => f.service.unwrap_or(""),
                Dim::Tool => match f.tool {
                    Some(t) if self.tools.iter().any(|k| k == t) => t,
                    Some(_) => OTHER_TOOL,
                    None => "",
                },
            });
        }
        part(&match self.kind {
            Kind::Rate {
                interval_ns,
                burst,
                cost,
            } => format!("rate:{interval_ns}:{burst}:{cost}"),
            Kind::InFlight { max } => format!("in_flight:{max}"),
        });
        k
    }
}

/// A key's 64-bit fingerprint, the same in every VM of one build (SipHash
/// with fixed keys). Never 0: 0 marks a free slot.
pub fn fingerprint(key: &[u8]) -> u64 {
    #[allow(deprecated)]
    let mut h = std::hash::SipHasher::new_with_keys(0x6167_656e_7470_6c61, 0x6e65_2e6c_696d_6974);
    key.hash(&mut h);
    h.finish().max(1)
}
