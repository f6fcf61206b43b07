//! Secrets from OpenBao/Vault, fetched through proxy callouts, cached per
//! agent and injected into allowed requests.
//!
//! # Flow
//!
//! The policy decides first. An allowed request to a service with secrets
//! either finds every secret in the cache (injected at once, no callout) or
//! pauses and joins a *job* for its (agent, service): concurrent requests
//! for the same agent and service share one job, so N cold requests cost one
//! login and one read per secret (single-flight). Jobs run on the worker's
//! root context (its tick dispatches, its callout responses advance them),
//! never on a stream that may go away: a client that disconnects only
//! leaves its job's waiter list. When a job ends, every waiting stream is
//! resumed with its headers, or answered 503 `secrets_unavailable`.
//!
//! A job's steps: log in with the agent's own JWT (`auth/<mount>/login`)
//! unless a Vault token for the agent is cached, then read each secret that
//! is not cached. Failures: no answer, 429 or 5xx are retried
//! (`vault.retries`, exponential backoff); a 403 on a read gets one fresh
//! login (the token may have expired); anything else fails the job.
//!
//! # Safety
//!
//! Everything cached is keyed by the agent id (the verified `sub`), so a
//! secret fetched with agent A's token can only be injected for agent A.
//! Values are held in [`Secret`], whose `Debug` prints nothing; error texts
//! carry statuses and classes, never response bodies.

use crate::config::{SecretConfig, VaultConfig};
use crate::host::{Host, LogLevel};
use serde_json::Value;
use std::collections::{BTreeMap, HashMap};
use std::fmt;

/// A secret value: never printed.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    /// Wraps a value.
    pub fn new(v: impl Into<String>) -> Secret {
        Secret(v.into())
    }
    /// The value, for injection only.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret(..)")
    }
}

/// One secret a request needs: its spec and the resolved Vault path.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Need {
    /// How it is injected.
    pub spec: SecretConfig,
    /// The path with placeholders filled in.
    pub path: String,
}

/// Fills `{agent}`, `{team}`, `{type}` in every spec's path. Identity values
/// that could escape their path segment are refused.
pub fn plan(
    specs: &[SecretConfig],
    agent: &str,
    team: Option<&str>,
    kind: Option<&str>,
) -> Result<Vec<Need>, String> {
    let safe = |name: &str, v: Option<&str>| -> Result<String, String> {
        match v {
            Some(v)
                if !v.is_empty()
                    && v != "."
                    && v != ".."
                    && v.bytes()
                        .all(|b| b.is_ascii_alphanumeric() || b"-._~:@".contains(&b)) =>
            {
                Ok(v.to_string())
            }
            Some(_) => Err(format!(
                "the agent's {name} cannot be used in a secret path"
            )),
            None => Err(format!("the agent has no {name} for a secret path")),
        }
    };
    specs
        .iter()
        .map(|spec| {
            let template = spec
                .kv
                .as_deref()
                .or(spec.database.as_deref())
                .unwrap_or("");
            let mut path = template.to_string();
            if path.contains("{agent}") {
                path = path.replace("{agent}", &safe("id", Some(agent))?);
            }
            if path.contains("{team}") {
                path = path.replace("{team}", &safe("team", team)?);
            }
            if path.contains("{type}") {
                path = path.replace("{type}", &safe("type", kind)?);
            }
            Ok(Need {
                spec: spec.clone(),
                path,
            })
        })
        .collect()
}

#[derive(Debug, Clone)]
struct Lease<T> {
    value: T,
    /// Usable while now < until (the renewal margin already subtracted).
    until_ns: u64,
}

type Fields = BTreeMap<String, Secret>;

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
enum Step {
    /// Another worker claimed this fetch: watch shared data until this time.
    AwaitPeer(u64),
    Login,
    Read(usize),
}

#[derive(Debug)]
struct Job {
    agent: String,
    service: String,
    jwt: Option<Secret>,
    needs: Vec<Need>,
    waiters: Vec<Waiter>,
    step: Step,
    inflight: Option<u32>,
    due_ns: u64,
    attempts: u32,
    relogged: bool,
    token: Option<Secret>,
    fetched: HashMap<String, Fields>,
    /// This worker holds the cross-worker claim for the fetch.
    claimed: bool,
    /// The first requester's trace context, sent with every callout.
    trace: Vec<(String, String)>,
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
    cfg: VaultConfig,
    /// This worker's id in cross-worker claims.
    id: u64,
    tokens: HashMap<String, Lease<Secret>>,
    values: HashMap<(String, String), Lease<Fields>>,
    jobs: Vec<Job>,
    /// Finished waiters not yet handed to the filter.
    done: Vec<Completion>,
    /// Counters.
    pub stats: BrokerStats,
}

const SEC: u64 = 1_000_000_000;

/// Another worker's claim, as a waiting job sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum PeerClaim {
    /// Still fetching.
    Held,
    /// Ended without a result.
    Failed,
    /// Released (or lapsed) without a failure marker.
    Gone,
}

/// Why a callout result ends or repeats a step.
enum Outcome {
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

    fn cached(&self, agent: &str, path: &str, now: u64) -> Option<&Fields> {
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

    fn token<H: Host>(&mut self, host: &H, agent: &str, now: u64) -> Option<Secret> {
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

    /// A value another worker fetched, copied into this worker's cache.
    fn load_shared<H: Host>(
        &mut self,
        host: &H,
        agent: &str,
        path: &str,
        now: u64,
    ) -> Option<Fields> {
        let (until, v) = read_shared(host, &value_key(&self.cfg, agent, path), now)?;
        let fields: Fields = v
            .get("fields")?
            .as_object()?
            .iter()
            .filter_map(|(k, v)| Some((k.clone(), Secret::new(v.as_str()?))))
            .collect();
        self.values.insert(
            (agent.to_string(), path.to_string()),
            Lease {
                value: fields.clone(),
                until_ns: until,
            },
        );
        Some(fields)
    }

    /// Claims the fetch for (agent, service) across workers. `Err(until)`:
    /// another worker holds it until then. All claims live in one shared
    /// map updated with compare-and-swap, so two workers cannot both win.
    fn claim<H: Host>(
        &self,
        host: &mut H,
        agent: &str,
        service: &str,
        now: u64,
    ) -> Result<(), u64> {
        let lease = self
            .cfg
            .timeout_ms
            .saturating_mul(u64::from(self.cfg.retries) + 2)
            .saturating_mul(2_000_000);
        let until = now.saturating_add(lease);
        let key = claim_key(&self.cfg, agent, service);
        for _ in 0..8 {
            let (mut map, cas) = claims(host);
            if let Some(c) = map.get(&key) {
                let owner = c.get("owner").and_then(Value::as_u64).unwrap_or(0);
                let held = c.get("until").and_then(Value::as_u64).unwrap_or(0);
                let failed = c.get("failed").and_then(Value::as_bool) == Some(true);
                if owner != self.id && now < held && !failed {
                    return Err(held);
                }
            }
            map.retain(|_, c| c.get("until").and_then(Value::as_u64).unwrap_or(0) > now);
            map.insert(
                key.clone(),
                serde_json::json!({"owner": self.id, "until": until}),
            );
            let bytes = Value::Object(map).to_string();
            if host.shared_set(CLAIMS_KEY, bytes.as_bytes(), cas) {
                if cas.is_some() {
                    return Ok(());
                }
                // The map did not exist (the root creates it at configure;
                // a host without shared data never has it): read back.
                return match host.shared_get(CLAIMS_KEY) {
                    Some((b, _)) if b == bytes.as_bytes() => Ok(()),
                    Some(_) => Err(until),
                    None => Ok(()),
                };
            }
            if host.shared_get(CLAIMS_KEY).is_none() {
                // No shared data at all: every worker fetches for itself.
                return Ok(());
            }
        }
        Err(now.saturating_add(5_000_000))
    }

    /// Gives the claim up. After a failure the entry stays briefly as a
    /// failure marker, so that jobs on other workers waiting for this fetch
    /// fail at once instead of waiting out the claim's lease; a new request
    /// may claim over a marker at any time.
    fn release<H: Host>(&self, host: &mut H, agent: &str, service: &str, failed: bool) {
        let key = claim_key(&self.cfg, agent, service);
        let now = host.now_ns();
        for _ in 0..8 {
            let (mut map, cas) = claims(host);
            let mine = map
                .get(&key)
                .and_then(|c| c.get("owner"))
                .and_then(Value::as_u64)
                == Some(self.id);
            if !mine {
                return;
            }
            if failed {
                map.insert(
                    key.clone(),
                    serde_json::json!({"owner": self.id, "until": now.saturating_add(SEC), "failed": true}),
                );
            } else {
                map.remove(&key);
            }
            if host.shared_set(CLAIMS_KEY, Value::Object(map).to_string().as_bytes(), cas) {
                return;
            }
        }
    }

    /// What became of another worker's claim on a fetch this worker waits for.
    fn peer_claim<H: Host>(&self, host: &H, agent: &str, service: &str, now: u64) -> PeerClaim {
        let (map, _) = claims(host);
        match map.get(&claim_key(&self.cfg, agent, service)) {
            Some(c) if c.get("failed").and_then(Value::as_bool) == Some(true) => PeerClaim::Failed,
            Some(c) => {
                let until = c.get("until").and_then(Value::as_u64).unwrap_or(0);
                if now < until {
                    PeerClaim::Held
                } else {
                    PeerClaim::Gone
                }
            }
            None => PeerClaim::Gone,
        }
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

    /// Jobs waiting for another worker: done when its results appear in
    /// shared data; taken over when its claim lapses.
    fn watch_peers<H: Host>(&mut self, host: &mut H, now: u64) {
        let mut i = 0;
        while i < self.jobs.len() {
            let Some(job) = self.jobs.get(i) else { break };
            let Step::AwaitPeer(until) = job.step else {
                i += 1;
                continue;
            };
            let (agent, service, needs) =
                (job.agent.clone(), job.service.clone(), job.needs.clone());
            let mut fetched = HashMap::new();
            for n in &needs {
                let f = self
                    .cached(&agent, &n.path, now)
                    .cloned()
                    .or_else(|| self.load_shared(host, &agent, &n.path, now));
                match f {
                    Some(f) => {
                        fetched.insert(n.path.clone(), f);
                    }
                    None => break,
                }
            }
            if fetched.len() == needs.len() {
                self.stats.hits += 1;
                let result = inject(&needs, &fetched);
                self.finish(host, i, result);
                continue; // swap_remove moved another job to i
            }
            let peer = self.peer_claim(host, &agent, &service, now);
            if peer == PeerClaim::Failed {
                // The worker that fetched for us failed: so do we, now.
                self.finish(host, i, Err("vault fetch failed on another worker".into()));
                continue; // swap_remove moved another job to i
            }
            if now >= until || peer == PeerClaim::Gone {
                let claimed = self.claim(host, &agent, &service, now);
                let token = self.token(host, &agent, now);
                if let Some(job) = self.jobs.get_mut(i) {
                    match claimed {
                        Ok(()) => {
                            job.claimed = true;
                            job.fetched = fetched;
                            if job.token.is_none() {
                                job.token = token;
                            }
                            job.step = Step::Login;
                            job.due_ns = now;
                        }
                        Err(later) => job.step = Step::AwaitPeer(later),
                    }
                }
                let next = self.next_step_of(i);
                if let (Some(job), Some(step)) = (self.jobs.get_mut(i), next) {
                    if job.claimed {
                        job.step = step;
                    }
                }
            }
            i += 1;
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
        let margin = self.cfg.renew_margin_s.saturating_mul(SEC);
        let kv_ttl = self.cfg.kv_ttl_s.saturating_mul(SEC);
        let Some(job) = self.jobs.get_mut(i) else {
            return false;
        };
        job.inflight = None;
        let what = match job.step {
            Step::Login | Step::AwaitPeer(_) => "vault login".to_string(),
            Step::Read(n) => format!("secret #{n}"),
        };
        let outcome = match (status, body) {
            (None, _) => Outcome::Retry("vault unreachable".into()),
            (Some(_), None) => Outcome::Fail(format!("{what}: response too large")),
            (Some(200), Some(body)) => match serde_json::from_slice::<Value>(body) {
                Err(_) => Outcome::Fail(format!("{what}: malformed response")),
                Ok(v) => match job.step {
                    Step::AwaitPeer(_) => Outcome::Fail(format!("{what}: unexpected answer")),
                    Step::Login => match parse_login(&v) {
                        Some((tok, ttl)) => {
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
                        None => Outcome::Fail(format!("{what}: malformed response")),
                    },
                    Step::Read(n) => {
                        let need = job.needs.get(n);
                        let is_kv = need.is_some_and(|n| n.spec.kv.is_some());
                        match (need, parse_read(&v, is_kv)) {
                            (Some(need), Some((fields, lease))) => {
                                let ttl = if is_kv {
                                    kv_ttl
                                } else {
                                    lease.saturating_mul(SEC)
                                };
                                let until = now.saturating_add(ttl);
                                if until.saturating_sub(margin) > now {
                                    self.values.insert(
                                        (job.agent.clone(), need.path.clone()),
                                        Lease {
                                            value: fields.clone(),
                                            until_ns: until - margin,
                                        },
                                    );
                                    let map: serde_json::Map<String, Value> = fields
                                        .iter()
                                        .map(|(k, v)| (k.clone(), Value::from(v.expose())))
                                        .collect();
                                    let v =
                                        serde_json::json!({"until": until - margin, "fields": map});
                                    host.shared_set(
                                        &value_key(&self.cfg, &job.agent, &need.path),
                                        v.to_string().as_bytes(),
                                        None,
                                    );
                                }
                                job.fetched.insert(need.path.clone(), fields);
                                Outcome::Done
                            }
                            _ => Outcome::Fail(format!("{what}: no secret data")),
                        }
                    }
                },
            },
            (Some(s @ (429 | 500 | 502 | 503 | 504)), _) => {
                Outcome::Retry(format!("{what}: vault answered {s}"))
            }
            (Some(403), _) if matches!(job.step, Step::Read(_)) && !job.relogged => {
                Outcome::Relogin
            }
            (Some(s), _) => Outcome::Fail(format!("{what}: vault answered {s}")),
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
            Outcome::Relogin => {
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
        true
    }

    fn next_step_of(&self, i: usize) -> Option<Step> {
        self.jobs.get(i).and_then(|j| self.next_step(j))
    }

    fn finish<H: Host>(
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

/// An unambiguous key from parts: each part as `<byte length>:<bytes>`,
/// so no choice of agent id, path or role can make two different tuples
/// print alike.
fn key(parts: &[&str]) -> String {
    let mut k = String::new();
    for p in parts {
        k.push_str(&p.len().to_string());
        k.push(':');
        k.push_str(p);
    }
    k
}

/// Every cache key names the Vault cluster, auth mount and role (two
/// filter configurations on one VM id share shared data) and the agent's
/// principal (issuer and subject, see [`principal`]).
fn token_key(cfg: &VaultConfig, agent: &str) -> String {
    format!(
        "agentplane/v2/token/{}",
        key(&[&cfg.cluster, &cfg.auth_mount, &cfg.role, agent])
    )
}

fn value_key(cfg: &VaultConfig, agent: &str, path: &str) -> String {
    format!(
        "agentplane/v2/secret/{}",
        key(&[&cfg.cluster, &cfg.auth_mount, &cfg.role, agent, path])
    )
}

fn claim_key(cfg: &VaultConfig, agent: &str, service: &str) -> String {
    key(&[&cfg.cluster, &cfg.auth_mount, &cfg.role, agent, service])
}

/// The cache identity of an agent: its issuer and subject together (two
/// issuers may both have a `support@clients`).
pub fn principal(issuer: Option<&str>, subject: &str) -> String {
    key(&[issuer.unwrap_or(""), subject])
}

/// Shared data key of the cross-worker claims map.
pub const CLAIMS_KEY: &str = "agentplane/v1/claims";

fn claims<H: Host>(host: &H) -> (serde_json::Map<String, Value>, Option<u32>) {
    match host.shared_get(CLAIMS_KEY) {
        Some((bytes, cas)) => (
            serde_json::from_slice::<Value>(&bytes)
                .ok()
                .and_then(|v| v.as_object().cloned())
                .unwrap_or_default(),
            Some(cas),
        ),
        None => (serde_json::Map::new(), None),
    }
}

/// A shared entry `{"until": ns, ...}` still valid at `now`.
fn read_shared<H: Host>(host: &H, key: &str, now: u64) -> Option<(u64, Value)> {
    let (bytes, _) = host.shared_get(key)?;
    let v: Value = serde_json::from_slice(&bytes).ok()?;
    let until = v.get("until")?.as_u64()?;
    (now < until).then_some((until, v))
}

fn dispatch<H: Host>(cfg: &VaultConfig, host: &mut H, job: &Job) -> Result<u32, String> {
    match job.step {
        Step::AwaitPeer(_) => Err("waiting for another worker".into()),
        Step::Login => {
            let jwt = job.jwt.as_ref().ok_or("no JWT to log in with")?;
            let path = format!("/v1/auth/{}/login", cfg.auth_mount);
            let body = serde_json::json!({"role": cfg.role, "jwt": jwt.expose()}).to_string();
            let mut headers = vec![
                (":method", "POST"),
                (":path", path.as_str()),
                (":authority", cfg.authority.as_str()),
                ("content-type", "application/json"),
            ];
            headers.extend(job.trace.iter().map(|(k, v)| (k.as_str(), v.as_str())));
            host.dispatch_http_call(
                &cfg.cluster,
                &headers,
                Some(body.as_bytes()),
                cfg.timeout_ms,
            )
        }
        Step::Read(n) => {
            let need = job.needs.get(n).ok_or("no such secret")?;
            let token = job.token.as_ref().ok_or("no vault token")?;
            let path = format!("/v1/{}", need.path);
            let mut headers = vec![
                (":method", "GET"),
                (":path", path.as_str()),
                (":authority", cfg.authority.as_str()),
                ("x-vault-token", token.expose()),
            ];
            headers.extend(job.trace.iter().map(|(k, v)| (k.as_str(), v.as_str())));
            host.dispatch_http_call(&cfg.cluster, &headers, None, cfg.timeout_ms)
        }
    }
}

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

/// KV v2: `data.data` holds the fields; dynamic credentials: `data` and
/// `lease_duration`. Only string fields are kept; a deleted KV version
/// (`data.data: null`) has none.
fn parse_read(v: &Value, kv: bool) -> Option<(Fields, u64)> {
    let data = if kv {
        v.get("data")?.get("data")?
    } else {
        v.get("data")?
    };
    let obj = data.as_object()?;
    let fields: Fields = obj
        .iter()
        .filter_map(|(k, v)| v.as_str().map(|s| (k.clone(), Secret::new(s))))
        .collect();
    let lease = v.get("lease_duration").and_then(Value::as_u64).unwrap_or(0);
    Some((fields, lease))
}

/// The headers a request gets from its secrets.
fn inject(
    needs: &[Need],
    fetched: &HashMap<String, Fields>,
) -> Result<Vec<(String, Secret)>, String> {
    let mut out = Vec::new();
    for (i, n) in needs.iter().enumerate() {
        let fields = fetched
            .get(&n.path)
            .ok_or_else(|| format!("secret #{i} missing"))?;
        let get = |name: &str| {
            fields
                .get(name)
                .filter(|v| {
                    !v.expose().is_empty() && crate::headers::check_value(v.expose(), 8192).is_ok()
                })
                .ok_or_else(|| format!("secret #{i} has no usable field {name:?}"))
        };
        if n.spec.kv.is_some() {
            let field = n.spec.field.as_deref().unwrap_or("");
            let v = get(field)?;
            if n.spec.bearer {
                out.push((
                    "authorization".into(),
                    Secret::new(format!("Bearer {}", v.expose())),
                ));
            } else if let Some(h) = &n.spec.header {
                out.push((h.to_ascii_lowercase(), v.clone()));
            }
        } else {
            if let Some(h) = &n.spec.username_header {
                out.push((h.to_ascii_lowercase(), get("username")?.clone()));
            }
            if let Some(h) = &n.spec.password_header {
                out.push((h.to_ascii_lowercase(), get("password")?.clone()));
            }
        }
    }
    Ok(out)
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::indexing_slicing)]
mod tests {
    use super::*;
    use crate::host::MockHost;
    use serde_json::json;
    #[cfg(all(target_arch = "wasm32", target_os = "unknown"))]
    use wasm_bindgen_test::wasm_bindgen_test as test;

    const CANARY: &str = "canary-7f3a9b-do-not-leak";

    fn cfg() -> VaultConfig {
        VaultConfig {
            retries: 2,
            ..VaultConfig::default()
        }
    }

    fn kv_spec() -> SecretConfig {
        SecretConfig {
            kv: Some("secret/data/mcp/agents/{agent}/credentials".into()),
            field: Some("api_key".into()),
            header: Some("x-api-key".into()),
            bearer: false,
            database: None,
            username_header: None,
            password_header: None,
        }
    }

    fn db_spec() -> SecretConfig {
        SecretConfig {
            kv: None,
            field: None,
            header: None,
            bearer: false,
            database: Some("database/creds/readonly".into()),
            username_header: Some("x-db-username".into()),
            password_header: Some("x-db-password".into()),
        }
    }

    fn ask(
        b: &mut Broker,
        h: &mut MockHost,
        agent: &str,
        stream: u32,
        specs: &[SecretConfig],
    ) -> Lookup {
        let needs = plan(specs, agent, Some("team"), Some("support")).unwrap();
        b.request(
            h,
            agent,
            "svc",
            needs,
            Some(Secret::new(format!("jwt-of-{agent}"))),
            Waiter {
                stream,
                trace: vec![("x-request-id".into(), format!("req-{stream}"))],
            },
        )
    }

    fn login_ok(token: &str) -> Vec<u8> {
        json!({"auth": {"client_token": token, "lease_duration": 3600}})
            .to_string()
            .into_bytes()
    }

    fn kv_ok(v: &str) -> Vec<u8> {
        json!({"data": {"data": {"api_key": v}, "metadata": {"version": 1}}, "lease_duration": 0})
            .to_string()
            .into_bytes()
    }

    fn last(h: &MockHost) -> u32 {
        h.dispatched.last().unwrap().token
    }

    fn answer(b: &mut Broker, h: &mut MockHost, status: Option<u16>, body: Option<&[u8]>) -> bool {
        let t = last(h);
        respond(b, h, t, status, body)
    }

    /// Hands finished jobs to the mock as the filter would: resumes with
    /// the secrets, or a 503 rendered by [`Denial`].
    fn settle(b: &mut Broker, h: &mut MockHost) {
        for c in b.take_completions() {
            match c.result {
                Ok(set) => {
                    let set: Vec<(String, String)> = set
                        .iter()
                        .map(|(k, v)| (k.clone(), v.expose().to_string()))
                        .collect();
                    h.resume_stream(c.stream, &set);
                }
                Err(why) => {
                    let r = crate::outcome::Denial::SecretsUnavailable(why).reply(
                        &format!("d{}", c.stream),
                        &[],
                        None,
                    );
                    h.reply_stream(c.stream, r.status, &r.header_refs(), &r.body);
                }
            }
        }
    }

    fn tick(b: &mut Broker, h: &mut MockHost) {
        b.on_tick(h);
        settle(b, h);
    }

    fn respond(
        b: &mut Broker,
        h: &mut MockHost,
        token: u32,
        status: Option<u16>,
        body: Option<&[u8]>,
    ) -> bool {
        let r = b.on_response(h, token, status, body);
        settle(b, h);
        r
    }

    fn no_leak(h: &MockHost) {
        for (_, line) in h.logs.borrow().iter() {
            assert!(
                !line.contains(CANARY) && !line.contains("jwt-of-"),
                "leaked: {line}"
            );
        }
        for (_, r) in &h.stream_replies {
            let body = String::from_utf8_lossy(&r.body);
            assert!(
                !body.contains(CANARY) && !body.contains("s.tok"),
                "leaked: {body}"
            );
        }
    }

    #[test]
    fn cold_fetch_logs_in_reads_injects_then_serves_from_cache() {
        let mut b = Broker::new(cfg(), 1);
        let mut h = MockHost::new();
        assert_eq!(
            ask(&mut b, &mut h, "a@clients", 1, &[kv_spec()]),
            Lookup::Pending
        );
        tick(&mut b, &mut h);
        let login = &h.dispatched[0];
        assert_eq!(
            login.header("x-request-id"),
            Some("req-1"),
            "trace context on callouts"
        );
        assert_eq!(login.cluster, "vault");
        assert_eq!(login.header(":path"), Some("/v1/auth/jwt/login"));
        let body: Value = serde_json::from_slice(login.body.as_ref().unwrap()).unwrap();
        assert_eq!(body, json!({"role": "agent", "jwt": "jwt-of-a@clients"}));
        assert!(answer(&mut b, &mut h, Some(200), Some(&login_ok("s.tokA"))));
        tick(&mut b, &mut h);
        let read = &h.dispatched[1];
        assert_eq!(
            read.header(":path"),
            Some("/v1/secret/data/mcp/agents/a@clients/credentials")
        );
        assert_eq!(read.header("x-vault-token"), Some("s.tokA"));
        assert!(answer(&mut b, &mut h, Some(200), Some(&kv_ok(CANARY))));
        assert_eq!(
            h.resumed,
            [(1, vec![("x-api-key".to_string(), CANARY.to_string())])]
        );
        assert_eq!(b.pending_jobs(), 0);
        // Cached now: no callout.
        let again = ask(&mut b, &mut h, "a@clients", 2, &[kv_spec()]);
        assert_eq!(
            again,
            Lookup::Ready(vec![("x-api-key".into(), Secret::new(CANARY))])
        );
        assert_eq!(h.dispatched.len(), 2);
        assert_eq!(
            b.stats,
            BrokerStats {
                hits: 1,
                logins: 1,
                reads: 1,
                failures: 0
            }
        );
        no_leak(&h);
    }

    #[test]
    fn concurrent_cold_requests_share_one_login_and_read() {
        let mut b = Broker::new(cfg(), 1);
        let mut h = MockHost::new();
        for s in 1..=20 {
            assert_eq!(
                ask(&mut b, &mut h, "a@clients", s, &[kv_spec()]),
                Lookup::Pending
            );
        }
        tick(&mut b, &mut h);
        answer(&mut b, &mut h, Some(200), Some(&login_ok("s.tokA")));
        tick(&mut b, &mut h);
        answer(&mut b, &mut h, Some(200), Some(&kv_ok(CANARY)));
        assert_eq!(h.dispatched.len(), 2, "one login, one read for 20 requests");
        assert_eq!(h.resumed.len(), 20);
    }

    #[test]
    fn agents_never_get_each_others_secrets() {
        let mut b = Broker::new(cfg(), 1);
        let mut h = MockHost::new();
        ask(&mut b, &mut h, "a@clients", 1, &[kv_spec()]);
        ask(&mut b, &mut h, "b@clients", 2, &[kv_spec()]);
        ask(&mut b, &mut h, "a@clients", 3, &[kv_spec()]);
        tick(&mut b, &mut h);
        assert_eq!(h.dispatched.len(), 2, "one login per agent");
        // Answer B first, A second, with tokens and values per agent.
        let (ta, tb) = (h.dispatched[0].token, h.dispatched[1].token);
        respond(&mut b, &mut h, tb, Some(200), Some(&login_ok("s.tokB")));
        respond(&mut b, &mut h, ta, Some(200), Some(&login_ok("s.tokA")));
        tick(&mut b, &mut h);
        for d in h.dispatched.clone().iter().skip(2) {
            let who = if d.header("x-vault-token") == Some("s.tokA") {
                "A"
            } else {
                "B"
            };
            assert!(d
                .header(":path")
                .unwrap()
                .contains(&format!("{}@clients", who.to_lowercase())));
            respond(
                &mut b,
                &mut h,
                d.token,
                Some(200),
                Some(&kv_ok(&format!("secret-{who}"))),
            );
        }
        let got: BTreeMap<u32, String> = h
            .resumed
            .iter()
            .map(|(s, v)| (*s, v[0].1.clone()))
            .collect();
        assert_eq!(got[&1], "secret-A");
        assert_eq!(got[&3], "secret-A");
        assert_eq!(got[&2], "secret-B");
    }

    #[test]
    fn retryable_failures_back_off_then_fail_closed() {
        let mut b = Broker::new(cfg(), 1);
        let mut h = MockHost::new();
        ask(&mut b, &mut h, "a@clients", 1, &[kv_spec()]);
        for (i, status) in [Some(503), None, Some(429)].into_iter().enumerate() {
            tick(&mut b, &mut h);
            assert_eq!(
                h.dispatched.len(),
                i + 1,
                "attempt {i} dispatched after its backoff"
            );
            answer(&mut b, &mut h, status, Some(b"{}"));
            tick(&mut b, &mut h);
            assert_eq!(h.dispatched.len(), i + 1, "not before the backoff");
            h.now_ns += 1_000_000_000;
        }
        assert_eq!(b.pending_jobs(), 0);
        let (stream, reply) = &h.stream_replies[0];
        assert_eq!((*stream, reply.status), (1, 503));
        let body: Value = serde_json::from_slice(&reply.body).unwrap();
        assert_eq!(
            body["reason"],
            "secrets_unavailable: vault login: vault answered 429"
        );
        assert_eq!(body["decision_id"], "d1");
        assert_eq!(b.stats.failures, 1);
    }

    #[test]
    fn permanent_failures_are_not_retried() {
        type Case<'a> = (Option<u16>, Option<&'a [u8]>, &'a str);
        let cases: [Case; 5] = [
            (Some(400), Some(b"{}"), "vault login: vault answered 400"),
            (Some(403), Some(b"{}"), "vault login: vault answered 403"),
            (
                Some(200),
                Some(b"not json"),
                "vault login: malformed response",
            ),
            (
                Some(200),
                Some(b"{\"auth\": null}"),
                "vault login: malformed response",
            ),
            (Some(200), None, "vault login: response too large"),
        ];
        for (status, body, want) in cases {
            let mut b = Broker::new(cfg(), 1);
            let mut h = MockHost::new();
            ask(&mut b, &mut h, "a@clients", 1, &[kv_spec()]);
            tick(&mut b, &mut h);
            answer(&mut b, &mut h, status, body);
            tick(&mut b, &mut h);
            assert_eq!(h.dispatched.len(), 1, "{want}");
            let reply: Value = serde_json::from_slice(&h.stream_replies[0].1.body).unwrap();
            assert_eq!(reply["reason"], format!("secrets_unavailable: {want}"));
        }
    }

    #[test]
    fn deleted_kv_versions_and_missing_fields_are_never_injected() {
        for (status, body) in [
            (404, json!({"errors": []})),
            (
                200,
                json!({"data": {"data": null, "metadata": {"deletion_time": "2025-01-01T00:00:00Z"}}}),
            ),
            (200, json!({"data": {"data": {"other": "x"}}})),
            (200, json!({"data": {"data": {"api_key": 42}}})),
        ] {
            let mut b = Broker::new(cfg(), 1);
            let mut h = MockHost::new();
            ask(&mut b, &mut h, "a@clients", 1, &[kv_spec()]);
            tick(&mut b, &mut h);
            answer(&mut b, &mut h, Some(200), Some(&login_ok("s.tok")));
            tick(&mut b, &mut h);
            answer(
                &mut b,
                &mut h,
                Some(status),
                Some(body.to_string().as_bytes()),
            );
            assert!(h.resumed.is_empty(), "{body}");
            assert_eq!(h.stream_replies[0].1.status, 503, "{body}");
        }
    }

    #[test]
    fn an_expired_vault_token_gets_one_relogin() {
        let mut b = Broker::new(cfg(), 1);
        let mut h = MockHost::new();
        ask(&mut b, &mut h, "a@clients", 1, &[kv_spec()]);
        tick(&mut b, &mut h);
        answer(&mut b, &mut h, Some(200), Some(&login_ok("s.old")));
        tick(&mut b, &mut h);
        answer(
            &mut b,
            &mut h,
            Some(403),
            Some(b"{\"errors\":[\"permission denied\"]}"),
        );
        tick(&mut b, &mut h);
        assert_eq!(h.dispatched[2].header(":path"), Some("/v1/auth/jwt/login"));
        answer(&mut b, &mut h, Some(200), Some(&login_ok("s.new")));
        tick(&mut b, &mut h);
        assert_eq!(h.dispatched[3].header("x-vault-token"), Some("s.new"));
        // A second 403 is final.
        answer(&mut b, &mut h, Some(403), Some(b"{}"));
        tick(&mut b, &mut h);
        assert_eq!(h.dispatched.len(), 4);
        assert_eq!(h.stream_replies[0].1.status, 503);
    }

    #[test]
    fn leases_expire_before_their_ttl_and_are_refetched() {
        let mut b = Broker::new(cfg(), 1);
        let mut h = MockHost::new();
        ask(&mut b, &mut h, "a@clients", 1, &[db_spec()]);
        tick(&mut b, &mut h);
        answer(&mut b, &mut h, Some(200), Some(&login_ok("s.tok")));
        tick(&mut b, &mut h);
        let creds = json!({"lease_id": "database/creds/readonly/x", "lease_duration": 60,
                           "data": {"username": "v-user-1", "password": CANARY}});
        answer(
            &mut b,
            &mut h,
            Some(200),
            Some(creds.to_string().as_bytes()),
        );
        assert_eq!(
            h.resumed[0].1,
            [
                ("x-db-username".to_string(), "v-user-1".to_string()),
                ("x-db-password".to_string(), CANARY.to_string())
            ]
        );
        // 49 s later (60 s lease, 10 s margin): still cached.
        h.now_ns += 49 * SEC;
        assert!(matches!(
            ask(&mut b, &mut h, "a@clients", 2, &[db_spec()]),
            Lookup::Ready(_)
        ));
        // 50 s: refetched with the cached Vault token (no login).
        h.now_ns += SEC;
        assert_eq!(
            ask(&mut b, &mut h, "a@clients", 3, &[db_spec()]),
            Lookup::Pending
        );
        tick(&mut b, &mut h);
        assert_eq!(h.dispatched.len(), 3);
        assert_eq!(
            h.dispatched[2].header(":path"),
            Some("/v1/database/creds/readonly")
        );
        // A lease shorter than the margin is used once, never cached.
        let short =
            json!({"lease_duration": 5, "data": {"username": "v-user-2", "password": "p2"}});
        answer(
            &mut b,
            &mut h,
            Some(200),
            Some(short.to_string().as_bytes()),
        );
        assert_eq!(h.resumed[1].1[0].1, "v-user-2");
        assert_eq!(
            ask(&mut b, &mut h, "a@clients", 4, &[db_spec()]),
            Lookup::Pending
        );
        no_leak(&h);
    }

    #[test]
    fn disconnected_streams_are_skipped_and_late_answers_ignored() {
        let mut b = Broker::new(cfg(), 1);
        let mut h = MockHost::new();
        ask(&mut b, &mut h, "a@clients", 1, &[kv_spec()]);
        ask(&mut b, &mut h, "a@clients", 2, &[kv_spec()]);
        ask(&mut b, &mut h, "a@clients", 3, &[kv_spec()]);
        tick(&mut b, &mut h);
        b.forget_stream(1);
        h.gone.push(3); // gone without Envoy telling the filter yet
        answer(&mut b, &mut h, Some(200), Some(&login_ok("s.tok")));
        tick(&mut b, &mut h);
        let read = last(&h);
        respond(&mut b, &mut h, read, Some(200), Some(&kv_ok(CANARY)));
        assert_eq!(h.resumed.len(), 1);
        assert_eq!(h.resumed[0].0, 2);
        // The same token again (a duplicate or late answer): ignored.
        assert!(!respond(
            &mut b,
            &mut h,
            read,
            Some(200),
            Some(&kv_ok("other"))
        ));
        assert!(!respond(&mut b, &mut h, 999, None, None));
    }

    #[test]
    fn identity_values_cannot_escape_the_path() {
        for bad in ["../root", "a/b", "", ".."] {
            assert!(plan(&[kv_spec()], bad, None, None).is_err(), "{bad:?}");
        }
        let p = plan(&[kv_spec()], "a@clients", None, None).unwrap();
        assert_eq!(p[0].path, "secret/data/mcp/agents/a@clients/credentials");
        let team = SecretConfig {
            kv: Some("secret/data/teams/{team}/k".into()),
            ..kv_spec()
        };
        assert!(
            plan(std::slice::from_ref(&team), "a", None, None).is_err(),
            "no team claim"
        );
        assert_eq!(
            plan(&[team], "a", Some("ml"), None).unwrap()[0].path,
            "secret/data/teams/ml/k"
        );
    }

    #[test]
    fn secrets_do_not_print() {
        assert_eq!(format!("{:?}", Secret::new(CANARY)), "Secret(..)");
        let l = Lookup::Ready(vec![("x".into(), Secret::new(CANARY))]);
        assert!(!format!("{l:?}").contains(CANARY));
    }

    /// Two workers' brokers and hosts over one shared-data store.
    fn two_workers() -> ((Broker, MockHost), (Broker, MockHost)) {
        let shared = crate::host::SharedData::default();
        let worker = |id| {
            let mut h = MockHost::new();
            h.shared = shared.clone();
            (Broker::new(cfg(), id), h)
        };
        (worker(1), worker(2))
    }

    #[test]
    fn workers_share_fetches_through_shared_data() {
        let ((mut w1, mut h1), (mut w2, mut h2)) = two_workers();
        // Worker 1 claims the fetch; worker 2 waits for it instead of
        // logging in too.
        assert_eq!(
            ask(&mut w1, &mut h1, "a@clients", 1, &[kv_spec()]),
            Lookup::Pending
        );
        assert_eq!(
            ask(&mut w2, &mut h2, "a@clients", 7, &[kv_spec()]),
            Lookup::Pending
        );
        tick(&mut w1, &mut h1);
        tick(&mut w2, &mut h2);
        assert_eq!((h1.dispatched.len(), h2.dispatched.len()), (1, 0));
        answer(&mut w1, &mut h1, Some(200), Some(&login_ok("s.tok")));
        tick(&mut w1, &mut h1);
        answer(&mut w1, &mut h1, Some(200), Some(&kv_ok(CANARY)));
        tick(&mut w2, &mut h2);
        assert!(h2.dispatched.is_empty(), "worker 2 made no callout");
        assert_eq!(
            h2.resumed,
            [(7, vec![("x-api-key".to_string(), CANARY.to_string())])]
        );
        // Later requests on worker 2 hit its own cache.
        assert!(matches!(
            ask(&mut w2, &mut h2, "a@clients", 8, &[kv_spec()]),
            Lookup::Ready(_)
        ));
        // Another agent's entry is never read for this one.
        assert_eq!(
            ask(&mut w2, &mut h2, "b@clients", 9, &[kv_spec()]),
            Lookup::Pending
        );
    }

    #[test]
    fn a_lapsed_claim_is_taken_over() {
        let ((mut w1, mut h1), (mut w2, mut h2)) = two_workers();
        ask(&mut w1, &mut h1, "a@clients", 1, &[kv_spec()]);
        ask(&mut w2, &mut h2, "a@clients", 2, &[kv_spec()]);
        tick(&mut w1, &mut h1); // worker 1 then stalls forever
        h2.now_ns += 60 * SEC;
        tick(&mut w2, &mut h2);
        assert_eq!(h2.dispatched.len(), 1, "worker 2 fetches itself");
        assert_eq!(h2.dispatched[0].header(":path"), Some("/v1/auth/jwt/login"));
    }

    #[test]
    fn a_worker_waiting_on_a_failed_fetch_fails_at_once_not_after_the_claim() {
        let ((mut w1, mut h1), (mut w2, mut h2)) = two_workers();
        ask(&mut w1, &mut h1, "a@clients", 1, &[kv_spec()]);
        ask(&mut w2, &mut h2, "a@clients", 2, &[kv_spec()]);
        tick(&mut w1, &mut h1);
        tick(&mut w2, &mut h2);
        assert!(h2.dispatched.is_empty(), "worker 2 waits for worker 1");
        // Worker 1's login times out (no retries left): its job fails.
        let mut c = cfg();
        c.retries = 0;
        w1.cfg = c;
        answer(&mut w1, &mut h1, None, None);
        assert_eq!(h1.stream_replies.len(), 1);
        // Worker 2's next tick (5 ms later), not the claim's lease, ends it.
        h2.now_ns += 5_000_000;
        tick(&mut w2, &mut h2);
        assert_eq!(h2.stream_replies.len(), 1, "told at once");
        assert_eq!(h2.stream_replies[0].1.status, 503);
        assert!(
            h2.dispatched.is_empty(),
            "and it did not hammer Vault itself"
        );
        // A new request may claim over the failure marker and try again.
        ask(&mut w2, &mut h2, "a@clients", 3, &[kv_spec()]);
        tick(&mut w2, &mut h2);
        assert_eq!(h2.dispatched.len(), 1);
    }

    #[test]
    fn cache_keys_cannot_collide_across_issuers_roles_or_crafted_ids() {
        // Two issuers with the same subject are two agents.
        assert_ne!(
            principal(Some("https://a/"), "bot"),
            principal(Some("https://b/"), "bot")
        );
        // Separators inside ids cannot forge another tuple.
        assert_ne!(principal(Some("a"), "b/c"), principal(Some("a/b"), "c"));
        assert_ne!(principal(Some("1:a"), ""), principal(Some(""), "1:a"));
        let c = cfg();
        let other_role = VaultConfig {
            role: "admin".into(),
            ..cfg()
        };
        let p = principal(Some("i"), "bot");
        assert_ne!(token_key(&c, &p), token_key(&other_role, &p));
        assert_ne!(value_key(&c, &p, "x/y"), value_key(&other_role, &p, "x/y"));
        assert_ne!(
            value_key(&c, &p, "a"),
            value_key(&c, &format!("{p}1:a"), "")
        );
        assert_ne!(claim_key(&c, &p, "svc"), claim_key(&c, &p, "svc2"));
    }
}
