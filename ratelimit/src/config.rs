//! Flags and the limits file. The limits use the policy's names, windows
//! and bursts (`docs/limits.md`): a token bucket of `burst` tokens refilled
//! with `rate` tokens per `period_s` seconds, `cost` tokens a request, so
//! one budget means the same thing in the filter and here. Everything is
//! checked before the service listens; a bad file is an error that says
//! what is wrong (exit 2), never a panic.

use serde::Deserialize;
use std::net::SocketAddr;
use std::time::Duration;

pub const USAGE: &str =
    "agentplane-ratelimit: Envoy's rate limit service (RLS v3, gRPC), counting in Redis

usage: agentplane-ratelimit --config FILE [--listen ADDR] [--health ADDR] [--redis URL]

  --config FILE   the limits (JSON, see docs/limits.md)
  --listen ADDR   gRPC address (default 127.0.0.1:8081)
  --health ADDR   HTTP /healthz and /readyz (default 127.0.0.1:8082)
  --redis URL     Redis (default redis://127.0.0.1:6379; redis+unix:///path)

The first stdout line is `listening on grpc=ADDR health=ADDR`. SIGTERM or
SIGINT stops it after the calls in progress. A bad flag or config file
exits with status 2.";

/// The descriptor keys a limit may count by: the values agentplane sets
/// on an allowed request (`x-agent-id`, `x-agent-team`, `x-agent-tool`).
pub const KEYS: [&str; 3] = ["agent", "team", "tool"];
/// Most limits in one file, descriptors in one request, entries in one
/// descriptor, bytes in one value: the bounds of the service's memory.
pub const MAX_LIMITS: usize = 256;
pub const MAX_DESCRIPTORS: usize = 16;
pub const MAX_ENTRIES: usize = 4;
pub const MAX_VALUE: usize = 512;

#[derive(Debug)]
pub enum Command {
    Run(Box<Flags>),
    Help,
}

#[derive(Debug)]
pub struct Flags {
    pub config: Config,
    pub listen: SocketAddr,
    pub health: SocketAddr,
    pub redis: String,
}

/// What to answer when Redis cannot: refuse (the default: fail closed) or
/// let the request pass uncounted.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum OnStoreError {
    Deny,
    Allow,
}

/// The limits file.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// The RLS domain Envoy's filter names (`agentplane`).
    pub domain: String,
    #[serde(default = "deny")]
    pub on_store_error: OnStoreError,
    /// How long one Redis round may take before the store counts as down.
    #[serde(default = "store_timeout_ms")]
    pub store_timeout_ms: u64,
    pub limits: Vec<Limit>,
}

fn deny() -> OnStoreError {
    OnStoreError::Deny
}
fn store_timeout_ms() -> u64 {
    20
}

/// One limit, as the policy writes it.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Limit {
    pub name: String,
    /// The descriptor's keys, in the order Envoy's actions emit them.
    #[serde(default = "by_agent")]
    pub by: Vec<String>,
    pub rate: f64,
    #[serde(default = "one")]
    pub period_s: f64,
    pub burst: Option<u64>,
    #[serde(default = "cost_one")]
    pub cost: u64,
    /// With `tool` in `by` (and only then): the tools the limit applies
    /// to, each its own bucket; a call of any other tool is not counted
    /// by this limit. Required there, so that a tool name (chosen by the
    /// client) never mints a key. The policy's `tools` field is the
    /// filter's answer to the same problem; here no policy rule picks the
    /// tools, so the file does.
    pub for_tools: Option<Vec<String>>,
}

fn by_agent() -> Vec<String> {
    vec!["agent".into()]
}
fn one() -> f64 {
    1.0
}
fn cost_one() -> u64 {
    1
}

impl Limit {
    /// The bucket's size.
    pub fn burst(&self) -> u64 {
        self.burst.unwrap_or(self.rate.ceil() as u64)
    }
    /// Microseconds per token (GCRA's emission interval), at least 1.
    pub fn interval_us(&self) -> u64 {
        ((self.period_s * 1e6 / self.rate).round() as u64).max(1)
    }
}

impl Config {
    /// Parses and checks a limits file's text.
    pub fn parse(text: &str) -> Result<Config, String> {
        let c: Config = serde_json::from_str(text).map_err(|e| format!("config: {e}"))?;
        if c.domain.is_empty() {
            return Err("config: domain is empty".into());
        }
        if !(1..=10_000).contains(&c.store_timeout_ms) {
            return Err("config: store_timeout_ms must be 1-10000".into());
        }
        if c.limits.is_empty() || c.limits.len() > MAX_LIMITS {
            return Err(format!("config: limits must list 1-{MAX_LIMITS} limits"));
        }
        for l in &c.limits {
            check(l).map_err(|e| format!("config: limit {:?}: {e}", l.name))?;
        }
        Ok(c)
    }

    pub fn store_timeout(&self) -> Duration {
        Duration::from_millis(self.store_timeout_ms)
    }
}

fn check(l: &Limit) -> Result<(), String> {
    let name_ok = (1..=64).contains(&l.name.len())
        && l.name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"._:-".contains(&b));
    if !name_ok {
        return Err("name must be 1-64 characters [A-Za-z0-9._:-]".into());
    }
    if l.by.is_empty() || l.by.len() > MAX_ENTRIES {
        return Err(format!("by must list 1-{MAX_ENTRIES} keys"));
    }
    for (i, k) in l.by.iter().enumerate() {
        if !KEYS.contains(&k.as_str()) {
            return Err(format!("by: {k:?} is not one of {KEYS:?}"));
        }
        if l.by.iter().skip(i + 1).any(|o| o == k) {
            return Err(format!("by: {k:?} twice"));
        }
    }
    if !(l.rate.is_finite() && l.rate > 0.0 && l.rate <= 1e9) {
        return Err("rate must be above 0 and at most 1e9".into());
    }
    if !(l.period_s.is_finite() && l.period_s > 0.0 && l.period_s <= 86_400.0 * 366.0) {
        return Err("period_s must be above 0 and at most a year".into());
    }
    let burst = l.burst();
    if !(1..=1_000_000_000).contains(&burst) {
        return Err("burst must be 1-1000000000".into());
    }
    if l.cost > burst {
        return Err("cost is more than burst: no request could ever pass".into());
    }
    let by_tool = l.by.iter().any(|k| k == "tool");
    match &l.for_tools {
        Some(_) if !by_tool => return Err("for_tools needs \"tool\" in by".into()),
        None if by_tool => return Err("by \"tool\" needs for_tools (the tools it counts)".into()),
        Some(t) if t.is_empty() || t.len() > 64 => {
            return Err("for_tools must list 1-64 tools".into())
        }
        _ => {}
    }
    Ok(())
}

/// Reads the command line.
pub fn parse(mut args: impl Iterator<Item = String>) -> Result<Command, String> {
    let mut config = None;
    let mut listen = "127.0.0.1:8081".to_string();
    let mut health = "127.0.0.1:8082".to_string();
    let mut redis = "redis://127.0.0.1:6379".to_string();
    while let Some(flag) = args.next() {
        if flag == "--help" || flag == "-h" {
            return Ok(Command::Help);
        }
        let value = args
            .next()
            .ok_or_else(|| format!("{flag} needs a value (--help)"))?;
        match flag.as_str() {
            "--config" => config = Some(value),
            "--listen" => listen = value,
            "--health" => health = value,
            "--redis" => redis = value,
            _ => return Err(format!("unknown flag {flag} (--help)")),
        }
    }
    let path = config.ok_or("--config FILE is required (--help)")?;
    let text = std::fs::read_to_string(&path).map_err(|e| format!("{path}: {e}"))?;
    let config = Config::parse(&text).map_err(|e| format!("{path}: {e}"))?;
    let addr = |s: &str, f: &str| {
        s.parse::<SocketAddr>()
            .map_err(|e| format!("{f} {s:?}: {e}"))
    };
    if !["redis://", "redis+unix://", "unix://"]
        .iter()
        .any(|p| redis.starts_with(p))
    {
        return Err("--redis must be a redis:// or redis+unix:// URL".into());
    }
    Ok(Command::Run(Box::new(Flags {
        config,
        listen: addr(&listen, "--listen")?,
        health: addr(&health, "--health")?,
        redis,
    })))
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::indexing_slicing)]
mod tests {
    use super::*;

    #[test]
    fn a_policy_shaped_file_parses_with_the_policy_defaults() {
        let c = Config::parse(
            r#"{"domain":"agentplane","limits":[
              {"name":"fleet","rate":5,"burst":10},
              {"name":"team","by":["team"],"rate":2.5},
              {"name":"del","by":["agent","tool"],"for_tools":["delete_ticket"],"rate":1,"period_s":60,"burst":3}]}"#,
        )
        .unwrap();
        assert_eq!(c.on_store_error, OnStoreError::Deny);
        assert_eq!(c.limits[0].by, ["agent"]);
        assert_eq!(c.limits[0].interval_us(), 200_000);
        assert_eq!(c.limits[1].burst(), 3);
        assert_eq!(c.limits[2].interval_us(), 60_000_000);
    }

    #[test]
    fn bad_files_say_what_is_wrong() {
        let bad = [
            (r#"{"domain":"a","limits":[]}"#, "1-256 limits"),
            (
                r#"{"domain":"a","limits":[{"name":"x y","rate":1}]}"#,
                "name must",
            ),
            (
                r#"{"domain":"a","limits":[{"name":"x","by":["ip"],"rate":1}]}"#,
                "not one of",
            ),
            (
                r#"{"domain":"a","limits":[{"name":"x","rate":0}]}"#,
                "rate must",
            ),
            (
                r#"{"domain":"a","limits":[{"name":"x","rate":1,"cost":3,"burst":2}]}"#,
                "cost is more",
            ),
            (
                r#"{"domain":"a","limits":[{"name":"x","rate":1,"for_tools":["t"]}]}"#,
                "for_tools needs",
            ),
            (
                r#"{"domain":"a","limits":[{"name":"x","by":["tool"],"rate":1}]}"#,
                "needs for_tools",
            ),
            (
                r#"{"domain":"a","limits":[{"name":"x","rate":1,"extra":1}]}"#,
                "unknown field",
            ),
            (
                r#"{"domain":"","limits":[{"name":"x","rate":1}]}"#,
                "domain is empty",
            ),
            ("not json", "config:"),
        ];
        for (text, want) in bad {
            let e = Config::parse(text).unwrap_err();
            assert!(e.contains(want), "{text}: {e}");
        }
    }

    #[test]
    fn flags_are_checked() {
        let args = |a: &[&str]| a.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        assert!(parse(args(&[]).into_iter())
            .unwrap_err()
            .contains("--config"));
        assert!(parse(args(&["--bogus", "1"]).into_iter())
            .unwrap_err()
            .contains("unknown flag"));
        assert!(
            parse(args(&["--config", "/nonexistent/x.json"]).into_iter())
                .unwrap_err()
                .contains("/nonexistent/x.json")
        );
    }
}
