//! The RLS v3 `ShouldRateLimit` call: descriptors to buckets, buckets to
//! one Redis round, the round to Envoy's answer.
//!
//! A descriptor counts against every limit whose `by` lists exactly its
//! keys, in order, and for a limit with `for_tools` names one of them
//! (Envoy's actions emit `agent`, `team`, `tool` from the headers
//! agentplane sets on allowed requests; no client can set them).
//! A descriptor `decision_id` is no limit: its value (agentplane's
//! decision id) is echoed on a refusal so that it can be found in the
//! decision log. The shipped config does not send it: agentplane adds
//! `x-decision-id` to Envoy's reply itself; it is for a rate limit filter
//! whose replies do not pass agentplane. A request counts once per bucket,
//! and takes from all of
//! them or from none.
//!
//! Refusals are `OVER_LIMIT` (Envoy answers 429) with `Retry-After`, the
//! RateLimit fields the filter's own limits send, and
//! `x-agentplane-reason`. When Redis cannot answer in time, `deny` (the
//! default) refuses the same way with the reason `fleet limits
//! unavailable`; `allow` passes the request uncounted.

use crate::config::{Config, Limit, OnStoreError, MAX_DESCRIPTORS, MAX_ENTRIES, MAX_VALUE};
use crate::store::{Store, Take};
use envoy_types::pb::envoy::config::core::v3::HeaderValue;
use envoy_types::pb::envoy::extensions::common::ratelimit::v3::RateLimitDescriptor;
use envoy_types::pb::envoy::service::ratelimit::v3::rate_limit_response::{Code, DescriptorStatus};
use envoy_types::pb::envoy::service::ratelimit::v3::rate_limit_service_server::RateLimitService;
use envoy_types::pb::envoy::service::ratelimit::v3::{RateLimitRequest, RateLimitResponse};
use sha2::{Digest, Sha256};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tonic::{Request, Response, Status};

/// The descriptor key that carries the decision id, not a limit.
pub const DECISION_KEY: &str = "decision_id";
pub const REASON_HEADER: &str = "x-agentplane-reason";

pub struct Rls {
    pub config: Arc<Config>,
    pub store: Arc<Store>,
    pub counts: Arc<Counts>,
}

/// What the service did, for `/metrics`.
#[derive(Default)]
pub struct Counts {
    pub ok: AtomicU64,
    pub over_limit: AtomicU64,
    pub store_errors: AtomicU64,
    pub invalid: AtomicU64,
}

/// A request's buckets: the take and the limit it came from.
#[derive(Debug)]
pub struct Plan<'a> {
    pub takes: Vec<Take>,
    pub limits: Vec<&'a Limit>,
    pub decision_id: Option<String>,
}

/// Maps descriptors to buckets; `Err` for a request the service refuses
/// to read (another domain, more than the bounds allow).
pub fn plan<'a>(config: &'a Config, req: &RateLimitRequest) -> Result<Plan<'a>, String> {
    if req.domain != config.domain {
        return Err(format!("unknown domain {:?}", req.domain));
    }
    if req.descriptors.len() > MAX_DESCRIPTORS {
        return Err(format!("more than {MAX_DESCRIPTORS} descriptors"));
    }
    let hits = u64::from(req.hits_addend.max(1));
    let mut plan = Plan {
        takes: Vec::new(),
        limits: Vec::new(),
        decision_id: None,
    };
    for d in &req.descriptors {
        check(d)?;
        if let [only] = d.entries.as_slice() {
            if only.key == DECISION_KEY {
                plan.decision_id = Some(only.value.clone());
                continue;
            }
        }
        for l in &config.limits {
            let same = l.by.len() == d.entries.len()
                && l.by.iter().zip(&d.entries).all(|(k, e)| *k == e.key);
            let tool_counted = |t: &Vec<String>| {
                d.entries
                    .iter()
                    .any(|e| e.key == "tool" && t.contains(&e.value))
            };
            if !same || l.for_tools.as_ref().is_some_and(|t| !tool_counted(t)) {
                continue;
            }
            let take = Take {
                key: bucket_key(&config.domain, l, d),
                cost: l.cost.saturating_mul(hits),
                interval_us: l.interval_us(),
                burst: l.burst(),
            };
            if plan.takes.iter().any(|t| t.key == take.key) {
                continue;
            }
            plan.takes.push(take);
            plan.limits.push(l);
        }
    }
    Ok(plan)
}

fn check(d: &RateLimitDescriptor) -> Result<(), String> {
    if d.entries.is_empty() || d.entries.len() > MAX_ENTRIES {
        return Err(format!("a descriptor needs 1-{MAX_ENTRIES} entries"));
    }
    if d.entries.iter().any(|e| e.value.len() > MAX_VALUE) {
        return Err(format!("a descriptor value is over {MAX_VALUE} bytes"));
    }
    Ok(())
}

/// The bucket's Redis key: the limit's name and size and the descriptor's
/// values, hashed (values are agent ids: bounded key length, no
/// separators to confuse).
fn bucket_key(domain: &str, l: &Limit, d: &RateLimitDescriptor) -> String {
    let mut h = Sha256::new();
    for part in [domain, &l.name] {
        h.update(part.as_bytes());
        h.update([0]);
    }
    h.update(l.burst().to_be_bytes());
    h.update(l.interval_us().to_be_bytes());
    h.update(l.cost.to_be_bytes());
    for e in &d.entries {
        h.update((e.value.len() as u64).to_be_bytes());
        h.update(e.value.as_bytes());
    }
    let hex: String = h.finalize().iter().map(|b| format!("{b:02x}")).collect();
    format!("agentplane:rl:{hex}")
}

fn header(key: &str, value: String) -> HeaderValue {
    HeaderValue {
        key: key.into(),
        value,
        ..Default::default()
    }
}

fn secs_up(d: Duration) -> u64 {
    d.as_micros().div_ceil(1_000_000) as u64
}

/// The refusal: 429 from Envoy with the headers below.
fn over_limit(
    n: usize,
    reason: String,
    fields: Option<(&Limit, u64, Duration)>,
    decision_id: Option<String>,
) -> RateLimitResponse {
    let mut h = vec![header(REASON_HEADER, reason)];
    let wait = fields.map(|f| f.2).unwrap_or(Duration::from_secs(1));
    h.push(header("retry-after", secs_up(wait).max(1).to_string()));
    if let Some((l, remaining, wait)) = fields {
        let window = Duration::from_micros(l.burst().saturating_mul(l.interval_us()));
        h.push(header(
            "ratelimit-policy",
            format!("\"{}\";q={};w={}", l.name, l.burst(), secs_up(window)),
        ));
        h.push(header(
            "ratelimit",
            format!("\"{}\";r={remaining};t={}", l.name, secs_up(wait)),
        ));
    }
    if let Some(id) = decision_id {
        h.push(header("x-decision-id", id));
    }
    RateLimitResponse {
        overall_code: Code::OverLimit as i32,
        statuses: vec![
            DescriptorStatus {
                code: Code::OverLimit as i32,
                ..Default::default()
            };
            n
        ],
        response_headers_to_add: h,
        ..Default::default()
    }
}

fn ok(n: usize) -> RateLimitResponse {
    RateLimitResponse {
        overall_code: Code::Ok as i32,
        statuses: vec![
            DescriptorStatus {
                code: Code::Ok as i32,
                ..Default::default()
            };
            n
        ],
        ..Default::default()
    }
}

#[tonic::async_trait]
impl RateLimitService for Rls {
    async fn should_rate_limit(
        &self,
        request: Request<RateLimitRequest>,
    ) -> Result<Response<RateLimitResponse>, Status> {
        let req = request.into_inner();
        let n = req.descriptors.len();
        let plan = match plan(&self.config, &req) {
            Ok(p) => p,
            Err(e) => {
                self.counts.invalid.fetch_add(1, Ordering::Relaxed);
                return Err(Status::invalid_argument(e));
            }
        };
        if plan.takes.is_empty() {
            self.counts.ok.fetch_add(1, Ordering::Relaxed);
            return Ok(Response::new(ok(n)));
        }
        let answer = match self.store.take(&plan.takes).await {
            Ok(v) if v.allowed => {
                self.counts.ok.fetch_add(1, Ordering::Relaxed);
                ok(n)
            }
            Ok(v) => {
                self.counts.over_limit.fetch_add(1, Ordering::Relaxed);
                let (i, wait) = v.refused.unwrap_or((0, Duration::from_secs(1)));
                match plan.limits.get(i) {
                    Some(l) => over_limit(
                        n,
                        format!("fleet limit {} exceeded", l.name),
                        Some((l, v.remaining.get(i).copied().unwrap_or(0), wait)),
                        plan.decision_id,
                    ),
                    None => over_limit(n, "fleet limit exceeded".into(), None, plan.decision_id),
                }
            }
            Err(e) => {
                self.counts.store_errors.fetch_add(1, Ordering::Relaxed);
                crate::say(true, &format!("agentplane-ratelimit: {e}"));
                match self.config.on_store_error {
                    OnStoreError::Allow => ok(n),
                    OnStoreError::Deny => {
                        over_limit(n, "fleet limits unavailable".into(), None, plan.decision_id)
                    }
                }
            }
        };
        Ok(Response::new(answer))
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::indexing_slicing)]
mod tests {
    use super::*;
    use envoy_types::pb::envoy::extensions::common::ratelimit::v3::rate_limit_descriptor::Entry;

    fn desc(entries: &[(&str, &str)]) -> RateLimitDescriptor {
        RateLimitDescriptor {
            entries: entries
                .iter()
                .map(|(k, v)| Entry {
                    key: k.to_string(),
                    value: v.to_string(),
                })
                .collect(),
            ..Default::default()
        }
    }

    fn req(ds: Vec<RateLimitDescriptor>) -> RateLimitRequest {
        RateLimitRequest {
            domain: "agentplane".into(),
            descriptors: ds,
            hits_addend: 0,
        }
    }

    fn config() -> Config {
        Config::parse(
            r#"{"domain":"agentplane","limits":[
              {"name":"a","rate":5,"burst":10},
              {"name":"a2","rate":50,"burst":100},
              {"name":"t","by":["team"],"rate":100},
              {"name":"d","by":["agent","tool"],"for_tools":["delete_ticket"],"rate":1,"period_s":60,"burst":3}]}"#,
        )
        .unwrap()
    }

    #[test]
    fn descriptors_map_to_the_limits_naming_exactly_their_keys() {
        let c = config();
        let p = plan(
            &c,
            &req(vec![
                desc(&[("agent", "x")]),
                desc(&[("team", "cs")]),
                desc(&[("agent", "x"), ("tool", "delete_ticket")]),
                desc(&[("decision_id", "d-1")]),
            ]),
        )
        .unwrap();
        let names: Vec<&str> = p.limits.iter().map(|l| l.name.as_str()).collect();
        assert_eq!(names, ["a", "a2", "t", "d"]);
        assert_eq!(p.decision_id.as_deref(), Some("d-1"));
        assert_eq!(p.takes[3].interval_us, 60_000_000);
        assert_eq!(p.takes[3].burst, 3);
    }

    #[test]
    fn keys_separate_agents_and_unlisted_tools_are_not_counted() {
        let c = config();
        let key = |ds| plan(&c, &req(ds)).unwrap().takes[0].key.clone();
        assert_ne!(
            key(vec![desc(&[("agent", "x")])]),
            key(vec![desc(&[("agent", "y")])])
        );
        let tools = |t| plan(&c, &req(vec![desc(&[("agent", "x"), ("tool", t)])])).unwrap();
        assert!(tools("made-up").takes.is_empty(), "no key minted");
        assert_eq!(tools("delete_ticket").limits[0].name, "d");
        // The same descriptor twice counts once.
        let p = plan(
            &c,
            &req(vec![desc(&[("team", "cs")]), desc(&[("team", "cs")])]),
        )
        .unwrap();
        assert_eq!(p.takes.len(), 1);
    }

    #[test]
    fn requests_past_the_bounds_or_for_another_domain_are_refused() {
        let c = config();
        let mut r = req(vec![desc(&[("agent", "x")])]);
        r.domain = "other".into();
        assert!(plan(&c, &r).unwrap_err().contains("domain"));
        let many = (0..17).map(|_| desc(&[("agent", "x")])).collect();
        assert!(plan(&c, &req(many)).is_err());
        let long = "x".repeat(MAX_VALUE + 1);
        assert!(plan(&c, &req(vec![desc(&[("agent", &long)])])).is_err());
        assert!(plan(&c, &req(vec![desc(&[])])).is_err());
    }

    #[test]
    fn a_refusal_carries_the_filters_fields() {
        let c = config();
        let r = over_limit(
            1,
            "fleet limit a exceeded".into(),
            Some((&c.limits[0], 0, Duration::from_millis(150))),
            Some("d-1".into()),
        );
        let h: Vec<(String, String)> = r
            .response_headers_to_add
            .iter()
            .map(|h| (h.key.clone(), h.value.clone()))
            .collect();
        let get = |k: &str| h.iter().find(|(n, _)| n == k).map(|(_, v)| v.as_str());
        assert_eq!(r.overall_code, Code::OverLimit as i32);
        assert_eq!(get("retry-after"), Some("1"));
        assert_eq!(get("ratelimit-policy"), Some("\"a\";q=10;w=2"));
        assert_eq!(get("ratelimit"), Some("\"a\";r=0;t=1"));
        assert_eq!(get("x-decision-id"), Some("d-1"));
        assert_eq!(get(REASON_HEADER), Some("fleet limit a exceeded"));
    }
}
