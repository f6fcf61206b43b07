//! Logging in to Vault as the agent: the JWT login callout
//! (`auth/<mount>/login` with the agent's own bearer token), reading its
//! answer, and the Vault token's lease (cached here and in shared data
//! until its TTL less the renewal margin; dropped when a read is refused
//! with 403, so the next step logs in again).

use super::broker::{Broker, Job, Outcome, Step};
use super::keys::{read_shared, token_key};
use super::plan::{Lease, Secret, SEC};
use crate::config::VaultConfig;
use crate::host::Host;
use serde_json::Value;

impl Job {
    /// The login callout, carrying the first requester's trace context.
    pub(super) fn call_login<H: Host>(
        &self,
        cfg: &VaultConfig,
        host: &mut H,
    ) -> Result<u32, String> {
        let jwt = self.jwt.as_ref().ok_or("no JWT to log in with")?;
        let path = format!("/v1/auth/{}/login", cfg.auth_mount);
        let body = serde_json::json!({"role": cfg.role, "jwt": jwt.expose()}).to_string();
        let mut headers = vec![
            (":method", "POST"),
            (":path", path.as_str()),
            (":authority", cfg.authority.as_str()),
            ("content-type", "application/json"),
        ];
        headers.extend(self.trace.iter().map(|(k, v)| (k.as_str(), v.as_str())));
        host.dispatch_http_call(
            &cfg.cluster,
            &headers,
            Some(body.as_bytes()),
            cfg.timeout_ms,
        )
    }
}

impl Broker {
    /// The agent's Vault token, if this worker or another still holds a
    /// lease on one.
    pub(super) fn token<H: Host>(&mut self, host: &H, agent: &str, now: u64) -> Option<Secret> {
        if let Some(l) = self.tokens.get(agent).filter(|l| now < l.until_ns) {
            return Some(l.value.clone());
        }
        let (until, v) = read_shared(host, &token_key(&self.cfg, agent), now)?;
        let t = Secret::new(v.get("token")?.as_str()?);
        self.tokens.insert(
            agent.to_string(),
            Lease {
                value: t.clone(),
                until_ns: until,
            },
        );
        Some(t)
    }

    /// Job `i`'s login answered 200 with `v`: its token, kept for the
    /// lease (unless the lease is shorter than the renewal margin: then it
    /// serves this job only).
    pub(super) fn logged_in<H: Host>(
        &mut self,
        host: &mut H,
        i: usize,
        v: &Value,
        now: u64,
        what: &str,
    ) -> Outcome {
        let Some((tok, ttl)) = parse_login(v) else {
            return Outcome::Fail(format!("{what}: malformed response"));
        };
        let margin = self.cfg.renew_margin_s.saturating_mul(SEC);
        let Some(job) = self.jobs.get_mut(i) else {
            return Outcome::Fail(format!("{what}: job lost"));
        };
        let until = now.saturating_add(ttl.saturating_mul(SEC));
        if until.saturating_sub(margin) > now {
            self.tokens.insert(
                job.agent.clone(),
                Lease {
                    value: tok.clone(),
                    until_ns: until - margin,
                },
            );
            let v = serde_json::json!({"until": until - margin, "token": tok.expose()});
            host.shared_set(
                &token_key(&self.cfg, &job.agent),
                v.to_string().as_bytes(),
                None,
            );
        }
        job.token = Some(tok);
        Outcome::Done
    }

    /// A read of job `i` was refused with 403: the token may have expired.
    /// Forgets it here and for every worker, and logs in once more, if the
    /// job has the agent's JWT to do so.
    pub(super) fn relogin<H: Host>(&mut self, host: &mut H, i: usize, now: u64) {
        let Some(job) = self.jobs.get_mut(i) else {
            return;
        };
        self.tokens.remove(&job.agent);
        host.shared_set(&token_key(&self.cfg, &job.agent), b"{}", None);
        job.token = None;
        job.relogged = true;
        if job.jwt.is_some() {
            job.step = Step::Login;
            job.due_ns = now;
        } else {
            self.finish(
                host,
                i,
                Err("vault token refused; no JWT to log in again".into()),
            );
        }
    }
}

/// The token and its lease in seconds from a login answer; an empty token
/// is none.
fn parse_login(v: &Value) -> Option<(Secret, u64)> {
    let auth = v.get("auth")?;
    let token = auth
        .get("client_token")?
        .as_str()
        .filter(|t| !t.is_empty())?;
    let ttl = auth
        .get("lease_duration")
        .and_then(Value::as_u64)
        .unwrap_or(0);
    Some((Secret::new(token), ttl))
}
