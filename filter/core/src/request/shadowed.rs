//! The shadow revision: a second policy built into the same filter
//! (`AGENTPLANE_SHADOW_POLICY_DIR`) that decides a sample of requests
//! (`policy.shadow_sample`, chosen by decision id) on the very input the
//! enforced policy decided, and never enforces. Where the two disagree,
//! the entry point is counted (`agentplane.shadow.disagreed.<entry>`) and
//! the decision record carries the shadow's answer beside the enforced
//! one, so a policy change can be watched on real traffic before it ships.
//! With the sample at 0 (the default) nothing here runs.

use super::{Configured, Outcome, Worker};
use crate::audit::{Shadowed, Trail};
use crate::config::{Config, ConfigError};
use crate::host::{Host, LogLevel};
use crate::metrics::M;
use crate::outcome::Denial;
use crate::policy::{Policy, Verdict};

/// The shadow revision, when the configuration samples it.
pub(super) fn load(config: &Config) -> Result<Option<Policy>, ConfigError> {
    if config.policy.shadow_sample <= 0.0 {
        return Ok(None);
    }
    match Policy::shadow(&config.policy.entrypoint) {
        Some(Ok(p)) => Ok(Some(p)),
        Some(Err(e)) => Err(ConfigError::Policy(e.to_string())),
        None => Err(ConfigError::Policy(
            "policy.shadow_sample is on, but this filter carries no shadow revision: build it with AGENTPLANE_SHADOW_POLICY_DIR".into(),
        )),
    }
}

/// Whether decision `id` is in the shadow's sample (salted so that it is
/// not the decision log's sample).
fn sampled(rate: f64, id: &str) -> bool {
    crate::ids::in_sample(rate, 0x6c62_272e_07bb_0142, id)
}

/// The entry points where `shadow` disagrees with the enforced `outcome`.
fn disagreements(outcome: &Outcome, shadow: &Verdict) -> Vec<&'static str> {
    let mut out = Vec::new();
    match &outcome.result {
        Ok(a) if shadow.allowed => {
            let names = |l: &[crate::limits::Limit]| {
                let mut n: Vec<String> = l.iter().map(|x| x.summary()).collect();
                n.sort();
                n
            };
            if names(&a.limits) != names(&shadow.limits) {
                out.push("limits");
            }
            if a.approval != shadow.approval {
                out.push("approval");
            }
            if a.exchange != shadow.exchange {
                out.push("exchange");
            }
        }
        Err(Denial::Policy { reasons, .. }) if !shadow.allowed => {
            let mut mine = reasons.clone();
            let mut theirs = shadow.reasons.clone();
            mine.sort();
            theirs.sort();
            if mine != theirs {
                out.push("deny");
            }
        }
        // A refusal that is not the policy's (an unsafe identity, a policy
        // error) against a shadow refusal: both refused.
        Err(_) if !shadow.allowed => {}
        _ => out.push("allow"),
    }
    out
}

impl Configured {
    /// Whether this decision is one the shadow revision also decides.
    pub(super) fn shadowing(&self, w: &Worker, decision_id: &str) -> bool {
        w.shadow.is_some() && sampled(self.config.policy.shadow_sample, decision_id)
    }

    /// The shadow revision decides `doc` (the enforced decision's input);
    /// its answer is compared with `outcome`, counted and recorded.
    pub(super) fn shadow<H: Host>(
        &self,
        w: &mut Worker,
        host: &mut H,
        doc: regorus::Value,
        outcome: &Outcome,
        trail: &mut Trail,
    ) {
        let Some(policy) = w.shadow.as_mut() else {
            return;
        };
        let verdict = match policy.evaluate(doc) {
            Ok(v) => v,
            Err(e) => {
                host.log(LogLevel::Debug, &format!("agentplane: shadow: {e}"));
                Verdict {
                    allowed: false,
                    reasons: vec!["policy_error".into()],
                    ..Verdict::default()
                }
            }
        };
        let disagree = disagreements(outcome, &verdict);
        w.metrics.add(host, M::ShadowEvaluated, 1);
        for d in &disagree {
            let m = match *d {
                "allow" => M::ShadowAllow,
                "deny" => M::ShadowDeny,
                "limits" => M::ShadowLimits,
                "approval" => M::ShadowApproval,
                _ => M::ShadowExchange,
            };
            w.metrics.add(host, m, 1);
        }
        trail.shadow = Some(Shadowed {
            revision: crate::bundle::SHADOW_REVISION,
            allowed: verdict.allowed,
            reasons: verdict.reasons,
            disagree,
        });
    }
}

#[cfg(test)]
mod tests {
    use super::sampled;

    #[test]
    fn the_sample_is_by_decision_id_and_its_rate() {
        assert!(sampled(1.0, "any"));
        assert!(!sampled(0.0, "any"));
        let ids: Vec<String> = (0..10_000).map(|i| format!("id-{i}")).collect();
        let n = ids.iter().filter(|i| sampled(0.1, i)).count();
        assert!((800..1_200).contains(&n), "{n}");
        assert_eq!(sampled(0.5, "id-7"), sampled(0.5, "id-7"));
    }
}
