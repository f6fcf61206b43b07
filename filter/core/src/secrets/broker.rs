//! The per-worker job runner: [`Broker`] serves requests from its cache or
//! parks them on a job for their (agent, service), advances jobs on the
//! root's tick and on callout answers, and hands finished waiters back as
//! [`Completion`]s. The steps' Vault specifics live beside it: logging in
//! (login.rs), reading a secret (kv.rs, database.rs), and sharing fetches
//! with other workers (peers.rs); each adds its methods to `Broker`.

use super::plan::{Fields, Lease, Need, Secret};
use crate::config::VaultConfig;
use crate::host::{Host, LogLevel};
use serde_json::Value;
use std::collections::HashMap;

/// A stream waiting for a job.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Waiter {
    /// Its context id.
    pub stream: u32,
    /// Trace context (`x-request-id`, `traceparent`, `tracestate`) that the
    /// callouts made for it carry.
    pub trace: Vec<(String, String)>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Step {
    /// Another worker claimed this fetch: watch shared data until this time.
    AwaitPeer(u64),
    Login,
    Read(usize),
}

#[derive(Debug)]
pub(super) struct Job {
    pub(super) agent: String,
    pub(super) service: String,
    pub(super) jwt: Option<Secret>,
    pub(super) needs: Vec<Need>,
    pub(super) waiters: Vec<Waiter>,
    pub(super) step: Step,
    pub(super) inflight: Option<u32>,
    pub(super) due_ns: u64,
    pub(super) attempts: u32,
    pub(super) relogged: bool,
    pub(super) token: Option<Secret>,
    pub(super) fetched: HashMap<String, Fields>,
    /// This worker holds the cross-worker claim for the fetch.
    pub(super) claimed: bool,
    /// The first requester's trace context, sent with every callout.
    pub(super) trace: Vec<(String, String)>,
}

/// What happened to a request that needs secrets.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Lookup {
    /// Everything was cached: set these headers and continue.
    Ready(Vec<(String, Secret)>),
    /// The stream waits for a job.
    Pending,
    /// Cannot be served (reason for the 503).
    Failed(String),
}

/// Counters for metrics and tests.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct BrokerStats {
    /// Requests served from the cache.
    pub hits: u64,
    /// Logins sent.
    pub logins: u64,
    /// Secret reads sent.
    pub reads: u64,
    /// Jobs that failed.
    pub failures: u64,
}

/// The per-worker secrets cache and job runner.
#[derive(Debug)]
pub struct Broker {
    pub(super) cfg: VaultConfig,
    /// This worker's id in cross-worker claims.
    pub(super) id: u64,
    pub(super) tokens: HashMap<String, Lease<Secret>>,
    pub(super) values: HashMap<(String, String), Lease<Fields>>,
    pub(super) jobs: Vec<Job>,
    /// Finished waiters not yet handed to the filter.
    done: Vec<Completion>,
    /// Counters.
    pub stats: BrokerStats,
}

/// Why a callout result ends or repeats a step.
pub(super) enum Outcome {
    Done,
    Retry(String),
    Relogin,
    Fail(String),
}

impl Broker {
    /// An empty broker. `id` tells this worker's claims from others'.
    pub fn new(cfg: VaultConfig, id: u64) -> Broker {
        Broker {
            cfg,
            id,
            tokens: HashMap::new(),
            values: HashMap::new(),
            jobs: Vec::new(),
            done: Vec::new(),
            stats: BrokerStats::default(),
        }
    }

    /// Jobs not finished yet.
    pub fn pending_jobs(&self) -> usize {
        self.jobs.len()
    }

    pub(super) fn cached(&self, agent: &str, path: &str, now: u64) -> Option<&Fields> {
        self.values
            .get(&(agent.to_string(), path.to_string()))
            .filter(|l| now < l.until_ns)
            .map(|l| &l.value)
    }

    /// Serves a request from the cache (this worker's, then the one all
    /// workers share), or makes it wait for a job (starting one unless one
    /// for this agent and service is running).
    pub fn request<H: Host>(
        &mut self,
        host: &mut H,
        agent: &str,
        service: &str,
        needs: Vec<Need>,
        jwt: Option<Secret>,
        waiter: Waiter,
    ) -> Lookup {
        let now = host.now_ns();
        let mut fields: HashMap<String, Fields> = HashMap::new();
        for n in &needs {
            let found = match self.cached(agent, &n.path, now) {
                Some(f) => Some(f.clone()),
                None => self.load_shared(host, agent, &n.path, now),
            };
            match found {
                Some(f) => {
                    fields.insert(n.path.clone(), f);
                }
                None => break,
            }
        }
        if fields.len() == needs.len() {
            return match inject(&needs, &fields) {
                Ok(h) => {
                    self.stats.hits += 1;
                    Lookup::Ready(h)
                }
                Err(e) => Lookup::Failed(e),
            };
        }
        if let Some(job) = self
            .jobs
            .iter_mut()
            .find(|j| j.agent == agent && j.service == service)
        {
            job.waiters.push(waiter);
            return Lookup::Pending;
        }
        let token = self.token(host, agent, now);
        if token.is_none() && jwt.is_none() {
            return Lookup::Failed("no bearer token to log in to Vault with".into());
        }
        let mut job = Job {
            agent: agent.to_string(),
            service: service.to_string(),
            jwt,
            needs,
            trace: waiter.trace.clone(),
            waiters: vec![waiter],
            step: Step::Login,
            inflight: None,
            due_ns: now,
            attempts: 0,
            relogged: false,
            token,
            fetched: fields,
            claimed: false,
        };
        job.step = match self.claim(host, &job.agent, &job.service, now) {
            Ok(()) => {
                job.claimed = true;
                self.next_step(&job).unwrap_or(Step::Login)
            }
            Err(until) => Step::AwaitPeer(until),
        };
        self.jobs.push(job);
        Lookup::Pending
    }

    fn next_step(&self, job: &Job) -> Option<Step> {
        let missing = job
            .needs
            .iter()
            .position(|n| !job.fetched.contains_key(&n.path))?;
        Some(if job.token.is_none() {
            Step::Login
        } else {
            Step::Read(missing)
        })
    }

    /// A stream went away: it no longer waits for anything.
    pub fn forget_stream(&mut self, stream: u32) {
        for j in &mut self.jobs {
            j.waiters.retain(|w| w.stream != stream);
        }
    }

    /// Dispatches every job step that is due (called from the root's tick).
    pub fn on_tick<H: Host>(&mut self, host: &mut H) {
        let now = host.now_ns();
        self.watch_peers(host, now);
        let mut failed = Vec::new();
        for (i, job) in self.jobs.iter_mut().enumerate() {
            if job.inflight.is_some() || job.due_ns > now || matches!(job.step, Step::AwaitPeer(_))
            {
                continue;
            }
            match dispatch(&self.cfg, host, job) {
                Ok(token) => {
                    job.inflight = Some(token);
                    match job.step {
                        Step::Login => self.stats.logins += 1,
                        Step::Read(_) => self.stats.reads += 1,
                        Step::AwaitPeer(_) => {}
                    }
                }
                Err(e) => {
                    host.log(
                        LogLevel::Warn,
                        &format!(
                            "agentplane: secrets for {}: cannot call Vault: {e}",
                            job.agent
                        ),
                    );
                    failed.push(i);
                }
            }
        }
        for i in failed.into_iter().rev() {
            self.finish(host, i, Err("vault unreachable".into()));
        }
    }

    /// Whether the tick has work now or soon.
    pub fn wants_tick(&self) -> bool {
        self.jobs.iter().any(|j| j.inflight.is_none())
    }

    /// Handles a callout's answer. `status` is `None` when the call failed
    /// (timeout, connection refused, reset); `body` is `None` when it was
    /// larger than `max_response_bytes`. Returns false for unknown tokens.
    pub fn on_response<H: Host>(
        &mut self,
        host: &mut H,
        token: u32,
        status: Option<u16>,
        body: Option<&[u8]>,
    ) -> bool {
        let Some(i) = self.jobs.iter().position(|j| j.inflight == Some(token)) else {
            return false;
        };
        let now = host.now_ns();
        let Some(job) = self.jobs.get_mut(i) else {
            return false;
        };
        job.inflight = None;
        let (step, relogged) = (job.step, job.relogged);
        let what = match step {
            Step::Login | Step::AwaitPeer(_) => "vault login".to_string(),
            Step::Read(n) => format!("secret #{n}"),
        };
        let outcome = match (status, body) {
            (None, _) => Outcome::Retry("vault unreachable".into()),
            (Some(_), None) => Outcome::Fail(format!("{what}: response too large")),
            (Some(200), Some(body)) => match serde_json::from_slice::<Value>(body) {
                Err(_) => Outcome::Fail(format!("{what}: malformed response")),
                Ok(v) => match step {
                    Step::AwaitPeer(_) => Outcome::Fail(format!("{what}: unexpected answer")),
                    Step::Login => self.logged_in(host, i, &v, now, &what),
                    Step::Read(n) => self.read(host, i, n, &v, now, &what),
                },
            },
            (Some(s @ (429 | 500 | 502 | 503 | 504)), _) => {
                Outcome::Retry(format!("{what}: vault answered {s}"))
            }
            (Some(403), _) if matches!(step, Step::Read(_)) && !relogged => Outcome::Relogin,
            (Some(s), _) => Outcome::Fail(format!("{what}: vault answered {s}")),
        };
        self.advance(host, i, outcome, now);
        true
    }

    /// Moves job `i` on after a callout's outcome: its next step, a retry
    /// after backoff, a fresh login, or its end.
    fn advance<H: Host>(&mut self, host: &mut H, i: usize, outcome: Outcome, now: u64) {
        let Some(job) = self.jobs.get_mut(i) else {
            return;
        };
        match outcome {
            Outcome::Done => {
                job.attempts = 0;
                match self.next_step_of(i) {
                    Some(step) => {
                        if let Some(job) = self.jobs.get_mut(i) {
                            job.step = step;
                            job.due_ns = now;
                        }
                    }
                    None => {
                        let result = self
                            .jobs
                            .get(i)
                            .map(|j| inject(&j.needs, &j.fetched))
                            .unwrap_or_else(|| Err("job lost".into()));
                        self.finish(host, i, result);
                    }
                }
            }
            Outcome::Relogin => self.relogin(host, i, now),
            Outcome::Retry(why) if job.attempts < self.cfg.retries => {
                job.attempts += 1;
                let backoff = self
                    .cfg
                    .backoff_ms
                    .saturating_mul(1 << (job.attempts - 1).min(10))
                    .saturating_mul(1_000_000);
                job.due_ns = now.saturating_add(backoff);
                host.log(
                    LogLevel::Info,
                    &format!(
                        "agentplane: secrets for {}: {why}; retry {}",
                        job.agent, job.attempts
                    ),
                );
            }
            Outcome::Retry(why) | Outcome::Fail(why) => {
                if matches!(job.step, Step::Login) {
                    self.tokens.remove(&job.agent);
                }
                self.finish(host, i, Err(why));
            }
        }
    }

    pub(super) fn next_step_of(&self, i: usize) -> Option<Step> {
        self.jobs.get(i).and_then(|j| self.next_step(j))
    }

    pub(super) fn finish<H: Host>(
        &mut self,
        host: &mut H,
        i: usize,
        result: Result<Vec<(String, Secret)>, String>,
    ) {
        if i >= self.jobs.len() {
            return;
        }
        let job = self.jobs.swap_remove(i);
        if job.claimed {
            self.release(host, &job.agent, &job.service, result.is_err());
        }
        if let Err(why) = &result {
            self.stats.failures += 1;
            host.log(
                LogLevel::Warn,
                &format!(
                    "agentplane: secrets for agent {} (service {}) unavailable: {why}",
                    job.agent, job.service
                ),
            );
        }
        for w in job.waiters {
            self.done.push(Completion {
                stream: w.stream,
                result: result.clone(),
            });
        }
    }

    /// Streams whose job ended since the last call: the filter resumes or
    /// refuses each (the broker never replies itself).
    pub fn take_completions(&mut self) -> Vec<Completion> {
        std::mem::take(&mut self.done)
    }
}

/// A waiting stream's job ended: its secret headers, or why not.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Completion {
    /// The stream's context id.
    pub stream: u32,
    /// Header name and value for each secret, or the failure class.
    pub result: Result<Vec<(String, Secret)>, String>,
}

/// Sends a job's current step: the login (login.rs) or a read (kv.rs).
fn dispatch<H: Host>(cfg: &VaultConfig, host: &mut H, job: &Job) -> Result<u32, String> {
    match job.step {
        Step::AwaitPeer(_) => Err("waiting for another worker".into()),
        Step::Login => job.call_login(cfg, host),
        Step::Read(n) => job.call_read(cfg, host, n),
    }
}

/// The headers a request gets from its secrets: each KV secret's field
/// (kv.rs) or a database credential's username and password (database.rs).
pub(super) fn inject(
    needs: &[Need],
    fetched: &HashMap<String, Fields>,
) -> Result<Vec<(String, Secret)>, String> {
    let mut out = Vec::new();
    for (i, n) in needs.iter().enumerate() {
        let fields = fetched
            .get(&n.path)
            .ok_or_else(|| format!("secret #{i} missing"))?;
        if n.spec.is_kv() {
            n.kv_headers(i, fields, &mut out)?;
        } else {
            n.database_headers(i, fields, &mut out)?;
        }
    }
    Ok(out)
}
