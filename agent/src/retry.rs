//! When trying a call again is safe, and how long to wait.
//!
//! - 429 with `Retry-After`: the request was not served; wait as told
//!   (at most [`MAX_WAIT`]).
//! - 503 from agentplane itself (its refusal, with a decision id): the
//!   request never reached the service; back off and retry.
//! - Anything else that failed (a 502/503/504 from the service, a broken
//!   connection) is retried only for idempotent methods.
//! - A 401 is not retried here: the caller refreshes its token once.

use crate::error::Denial;
use std::time::Duration;

/// Tries per call, the first included.
pub const ATTEMPTS: u32 = 3;
/// The longest wait between tries.
pub const MAX_WAIT: Duration = Duration::from_secs(30);

/// How a try ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome<'a> {
    /// Refused with this answer.
    Refused(&'a Denial),
    /// No answer (connection refused, reset, timed out).
    NoAnswer,
}

/// Idempotent HTTP methods (RFC 9110 §9.2.2).
pub fn idempotent(method: &str) -> bool {
    matches!(
        method,
        "GET" | "HEAD" | "OPTIONS" | "PUT" | "DELETE" | "TRACE"
    )
}

/// The wait before try `attempt + 1` (`attempt` counts from 1), or `None`
/// when the call must not be tried again.
pub fn next_wait(attempt: u32, method: &str, outcome: &Outcome<'_>) -> Option<Duration> {
    if attempt >= ATTEMPTS {
        return None;
    }
    let backoff = Duration::from_millis(100 * 2u64.pow(attempt.saturating_sub(1)));
    match outcome {
        Outcome::Refused(d) if d.status == 429 => d.retry_after.map(|w| w.min(MAX_WAIT)),
        Outcome::Refused(d) if d.status == 503 && d.from_agentplane() => Some(backoff),
        Outcome::Refused(d) if matches!(d.status, 502..=504) && idempotent(method) => {
            Some(d.retry_after.map_or(backoff, |w| w.min(MAX_WAIT)))
        }
        Outcome::NoAnswer if idempotent(method) => Some(backoff),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn refusal(status: u16, ours: bool, retry_after: Option<u64>) -> Denial {
        Denial {
            status,
            error: ours.then(|| "x".into()),
            reason: String::new(),
            decision_id: ours.then(|| "d".into()),
            retry_after: retry_after.map(Duration::from_secs),
        }
    }

    #[test]
    fn only_safe_retries_are_made() {
        let r = |s, ours, ra| refusal(s, ours, ra);
        let wait = |attempt, method, d: &Denial| next_wait(attempt, method, &Outcome::Refused(d));
        // 429: as the server says, for any method; never without Retry-After.
        assert_eq!(
            wait(1, "POST", &r(429, true, Some(2))),
            Some(Duration::from_secs(2))
        );
        assert_eq!(wait(1, "POST", &r(429, true, Some(3600))), Some(MAX_WAIT));
        assert_eq!(wait(1, "POST", &r(429, true, None)), None);
        // agentplane's own 503: nothing was forwarded, so even a POST.
        assert_eq!(
            wait(1, "POST", &r(503, true, None)),
            Some(Duration::from_millis(100))
        );
        assert_eq!(
            wait(2, "POST", &r(503, true, None)),
            Some(Duration::from_millis(200))
        );
        // The service's 503 (or a 502): only idempotent calls.
        assert_eq!(wait(1, "POST", &r(503, false, None)), None);
        assert_eq!(
            wait(1, "GET", &r(502, false, None)),
            Some(Duration::from_millis(100))
        );
        // Refusals are final.
        assert_eq!(wait(1, "GET", &r(403, true, None)), None);
        assert_eq!(wait(1, "GET", &r(401, true, None)), None);
        // No answer: idempotent only.
        assert_eq!(next_wait(1, "POST", &Outcome::NoAnswer), None);
        assert!(next_wait(1, "PUT", &Outcome::NoAnswer).is_some());
        // At most ATTEMPTS tries.
        assert_eq!(wait(ATTEMPTS, "GET", &r(503, true, None)), None);
    }
}
