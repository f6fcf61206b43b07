//! Fleet-wide limits: Redis (Debian's `redis-server`, on a Unix socket in
//! a temp dir, so no port is picked) and the rate limit service
//! (`agentplane-ratelimit`, which binds port 0 and prints what it bound),
//! each stopped on drop; [`Fleet`], both with two Envoys asking them;
//! and [`with_fleet_limits`], which puts
//! `envoy/ratelimit/` (Envoy's rate limit filter after agentplane, its
//! descriptors, the service's cluster) into a rendered Envoy config.

use crate::envoy::yaml;
use crate::{artifact, repo_root, try_http, RenderedEnvoy};
use crate::{default_plugin_config, render_envoy, Envoy, EnvoySetup, Idp, Response, Upstream};
use serde_json::Value;
use std::io::BufRead;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// Polls `ready` every few ms until it holds or `limit` passes.
pub fn poll(limit: Duration, what: &str, mut ready: impl FnMut() -> bool) {
    let t0 = Instant::now();
    let mut pause = Duration::from_millis(2);
    while !ready() {
        assert!(t0.elapsed() < limit, "{what}: not within {limit:?}");
        std::thread::sleep(pause);
        pause = (pause * 2).min(Duration::from_millis(50));
    }
}

fn temp_dir(what: &str) -> PathBuf {
    static SEQ: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
    let dir = std::env::temp_dir().join(format!(
        "agentplane-{what}-{}-{}",
        std::process::id(),
        SEQ.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
    ));
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

fn signal(pid: u32, sig: &str) {
    let ok = Command::new("kill")
        .args([sig, &pid.to_string()])
        .status()
        .unwrap()
        .success();
    assert!(ok, "kill {sig} {pid}");
}

/// `redis-server`: `$REDIS_BIN`, else Debian's.
pub fn redis_bin() -> PathBuf {
    artifact(
        "REDIS_BIN",
        "/usr/bin/redis-server",
        "redis-server",
        "apt-get install redis-server (./build.sh does)",
    )
}

/// A Redis without persistence, on a Unix socket.
pub struct Redis {
    child: Child,
    dir: PathBuf,
    /// Its socket.
    pub socket: PathBuf,
}

impl Redis {
    /// Starts it and waits until it answers PING.
    pub fn start() -> Redis {
        let dir = temp_dir("redis");
        let socket = dir.join("redis.sock");
        let child = Command::new(redis_bin())
            .args(["--port", "0", "--save", "", "--appendonly", "no"])
            .arg("--unixsocket")
            .arg(&socket)
            .arg("--dir")
            .arg(&dir)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| panic!("{}: {e}", redis_bin().display()));
        let r = Redis { child, dir, socket };
        poll(Duration::from_secs(10), "redis-server PING", || {
            r.cli(&["PING"]).is_some_and(|o| o == "PONG")
        });
        r
    }

    /// The service's `--redis` URL.
    pub fn url(&self) -> String {
        format!("redis+unix://{}", self.socket.display())
    }

    /// `redis-cli` against it; `None` if it did not answer.
    pub fn cli(&self, args: &[&str]) -> Option<String> {
        let out = Command::new("redis-cli")
            .arg("-s")
            .arg(&self.socket)
            .args(args)
            .output()
            .ok()?;
        out.status
            .success()
            .then(|| String::from_utf8_lossy(&out.stdout).trim().to_string())
    }

    /// Its process id (the benchmark reads its CPU time).
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// SIGSTOP: Redis takes connections and answers nothing.
    pub fn pause(&self) {
        signal(self.child.id(), "-STOP");
    }

    /// SIGCONT.
    pub fn resume(&self) {
        signal(self.child.id(), "-CONT");
    }
}

impl Drop for Redis {
    fn drop(&mut self) {
        // A stopped process ignores SIGKILL's effects until continued.
        let _ = Command::new("kill")
            .args(["-CONT", &self.child.id().to_string()])
            .status();
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// The service's binary: `$AGENTPLANE_RATELIMIT_BIN`, else
/// `target/debug/agentplane-ratelimit`.
pub fn ratelimit_bin() -> PathBuf {
    artifact(
        "AGENTPLANE_RATELIMIT_BIN",
        "target/debug/agentplane-ratelimit",
        "the rate limit service",
        "cargo build -p agentplane-ratelimit",
    )
}

/// A running rate limit service, stopped on drop.
pub struct Ratelimit {
    child: Option<Child>,
    dir: PathBuf,
    redis: String,
    /// Its gRPC port on 127.0.0.1.
    pub port: u16,
    /// Its health port.
    pub health: u16,
}

impl Ratelimit {
    /// Starts it on ports of its choosing with this limits file (JSON).
    pub fn start(config: &Value, redis: &Redis) -> Ratelimit {
        let dir = temp_dir("ratelimit");
        std::fs::write(dir.join("limits.json"), config.to_string()).unwrap();
        let mut r = Ratelimit {
            child: None,
            dir,
            redis: redis.url(),
            port: 0,
            health: 0,
        };
        r.spawn(0, 0).unwrap_or_else(|e| panic!("{e}"));
        r
    }

    /// Runs it with the limits file as it is; `Err` with its stderr and
    /// exit status when it does not start.
    pub fn try_run(config_text: &str) -> Result<(), String> {
        let dir = temp_dir("ratelimit-bad");
        std::fs::write(dir.join("limits.json"), config_text).unwrap();
        let mut r = Ratelimit {
            child: None,
            dir,
            redis: "redis://127.0.0.1:1".into(),
            port: 0,
            health: 0,
        };
        r.spawn(0, 0)
    }

    fn spawn(&mut self, port: u16, health: u16) -> Result<(), String> {
        // Appended to: a restart keeps what the run before it said.
        let stderr = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.join("stderr.log"))
            .unwrap();
        let mut child = Command::new(ratelimit_bin())
            .arg("--config")
            .arg(self.dir.join("limits.json"))
            .args(["--listen", &format!("127.0.0.1:{port}")])
            .args(["--health", &format!("127.0.0.1:{health}")])
            .args(["--redis", &self.redis])
            .stdout(Stdio::piped())
            .stderr(Stdio::from(stderr))
            .spawn()
            .unwrap_or_else(|e| panic!("{}: {e}", ratelimit_bin().display()));
        let (first, out) = crate::first_line(child.stdout.take().unwrap(), crate::START_WITHIN);
        let port_of = |k: &str| {
            first
                .split_whitespace()
                .find_map(|w| w.strip_prefix(k))
                .and_then(|a| a.strip_prefix("127.0.0.1:"))
                .and_then(|p| p.parse::<u16>().ok())
        };
        let (Some(p), Some(h), Some(out)) = (port_of("grpc="), port_of("health="), out) else {
            let _ = child.kill();
            let status = child.wait().map(|s| s.to_string()).unwrap_or_default();
            return Err(format!("{status}: {}", self.stderr()));
        };
        // Keep stdout drained (it prints nothing else today).
        std::thread::spawn(move || for _ in out.lines() {});
        self.child = Some(child);
        self.port = p;
        self.health = h;
        poll(Duration::from_secs(10), "ratelimit /healthz", || {
            try_http(h, "GET", "/healthz", &[], "").is_ok_and(|r| r.status == 200)
        });
        Ok(())
    }

    /// Its process id, while it runs (0 otherwise).
    pub fn pid(&self) -> u32 {
        self.child.as_ref().map_or(0, Child::id)
    }

    /// `/readyz`'s status (200 once Redis answers).
    pub fn ready(&self) -> u16 {
        try_http(self.health, "GET", "/readyz", &[], "").map_or(0, |r| r.status)
    }

    /// `/metrics`.
    pub fn metrics(&self) -> String {
        try_http(self.health, "GET", "/metrics", &[], "").map_or_else(|e| e, |r| r.body)
    }

    /// What it wrote on stderr.
    pub fn stderr(&self) -> String {
        std::fs::read_to_string(self.dir.join("stderr.log")).unwrap_or_default()
    }

    /// SIGKILL: gone at once, mid-call.
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// SIGTERM, and how it exited.
    pub fn terminate(&mut self) -> Option<std::process::ExitStatus> {
        let mut c = self.child.take()?;
        signal(c.id(), "-TERM");
        c.wait().ok()
    }

    /// Starts it again on the same ports (Envoy's cluster names them).
    pub fn restart(&mut self) {
        self.kill();
        let (p, h) = (self.port, self.health);
        self.spawn(p, h).unwrap_or_else(|e| panic!("{e}"));
    }
}

impl Drop for Ratelimit {
    fn drop(&mut self) {
        self.kill();
        if std::thread::panicking() {
            eprintln!("--- ratelimit stderr ---\n{}", self.stderr());
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// `envoy/ratelimit/` put into a rendered config: the rate limit filter
/// right before the router, the descriptors on the agent-facing virtual
/// host, the `ratelimit` cluster at 127.0.0.1:`port`; Envoy waits
/// `timeout` (an Envoy duration) for the service's answer instead of the
/// shipped 50 ms when given (a shared CI machine's scheduling is no
/// failure of the service).
pub fn with_fleet_limits(r: &mut RenderedEnvoy, port: u16, timeout: Option<&str>) {
    let root = repo_root().join("envoy/ratelimit");
    let parse = |f: &str| yaml::parse(&std::fs::read_to_string(root.join(f)).unwrap());
    r.edit(|v| {
        let listener = yaml::listener(v, yaml::AGENT_LISTENER);
        let filters = yaml::http_filters(listener);
        let router = filters.len() - 1;
        assert_eq!(filters[router]["name"], yaml::ROUTER_FILTER);
        let mut limit = parse("filter.yaml");
        if let Some(t) = timeout {
            limit[0]["typed_config"]["timeout"] = Value::from(t);
        }
        filters.splice(router..router, limit.as_array().unwrap().iter().cloned());
        let host = &mut yaml::hcm(listener)["route_config"]["virtual_hosts"][0];
        for (k, x) in parse("virtual-host.yaml").as_object().unwrap() {
            host[k] = x.clone();
        }
        let mut cluster = parse("cluster.yaml").as_array().unwrap()[0].clone();
        let at = yaml::loopback_cluster("ratelimit", port);
        cluster["type"] = at["type"].clone();
        cluster["load_assignment"] = at["load_assignment"].clone();
        yaml::clusters(v).insert(0, cluster);
    });
}

/// [`with_fleet_limits`] as text, for the mountable configs (which keep
/// the template's comments): the files of `envoy/ratelimit/` as they are,
/// indented into place, the cluster pointed at `at` (host, port).
pub fn with_fleet_limits_text(y: &str, at: (&str, u16)) -> String {
    let root = repo_root().join("envoy/ratelimit");
    let read = |f: &str| std::fs::read_to_string(root.join(f)).unwrap();
    let indent = |text: &str, by: &str| -> String {
        text.lines()
            .map(|l| {
                if l.is_empty() {
                    "\n".to_string()
                } else {
                    format!("{by}{l}\n")
                }
            })
            .collect()
    };
    let mut y = y.to_string();
    let router = "          - name: envoy.filters.http.router\n";
    assert_eq!(y.matches(router).count(), 1, "the template's router once");
    y = y.replace(
        router,
        &format!("{}{router}", indent(&read("filter.yaml"), "          ")),
    );
    let host = "            - name: agents\n              domains: [\"*\"]\n";
    assert_eq!(
        y.matches(host).count(),
        1,
        "the template's virtual host once"
    );
    y = y.replace(
        host,
        &format!(
            "{host}{}",
            indent(&read("virtual-host.yaml"), "              ")
        ),
    );
    let shipped = "socket_address: { address: ratelimit, port_value: 8081 }";
    let cluster = read("cluster.yaml");
    assert!(cluster.contains(shipped), "{cluster}");
    let cluster = cluster.replace(
        shipped,
        &format!(
            "socket_address: {{ address: {}, port_value: {} }}",
            at.0, at.1
        ),
    );
    let clusters = "\n  clusters:\n";
    assert_eq!(
        y.matches(clusters).count(),
        1,
        "the template's clusters once"
    );
    y.replacen(
        clusters,
        &format!("{clusters}{}", indent(&cluster, "  ")),
        1,
    )
}

/// Redis, the rate limit service and two Envoys asking it.
pub struct Fleet {
    pub idp: Idp,
    pub upstream: Upstream,
    pub redis: Redis,
    pub rls: Ratelimit,
    pub envoys: Vec<Envoy>,
}

/// Redis, the service with these limits, and two Envoys (two workers
/// each) asking it with `timeout`, started together (the Envoys in
/// parallel).
pub fn fleet(limits: Value, timeout: &str) -> Fleet {
    let idp = Idp::new();
    let upstream = Upstream::start();
    let redis = Redis::start();
    let rls = Ratelimit::start(&limits, &redis);
    poll(Duration::from_secs(10), "ratelimit /readyz", || {
        rls.ready() == 200
    });
    let mut envoys: Vec<Envoy> = (0..2)
        .map(|_| {
            let setup = EnvoySetup::without_vault(&idp, upstream.port, default_plugin_config());
            let mut r = render_envoy(&setup, true);
            with_fleet_limits(&mut r, rls.port, Some(timeout));
            r.workers = 2;
            Envoy::spawn_yaml(&r)
        })
        .collect();
    for e in &mut envoys {
        if let Err(why) = e.wait_ready(Duration::from_secs(60)) {
            panic!("Envoy did not become ready: {why}\n{}", e.log());
        }
    }
    Fleet {
        idp,
        upstream,
        redis,
        rls,
        envoys,
    }
}

impl Fleet {
    /// A bearer token for agent `sub` of team customer-success.
    pub fn bearer(&self, sub: &str, kind: &str) -> String {
        let t = self.idp.agent_token(
            sub,
            "customer-success",
            kind,
            "production",
            &["skills:invoke"],
        );
        format!("Bearer {t}")
    }

    /// One call through proxy `i`.
    pub fn call(&self, i: usize, auth: &str) -> Response {
        self.envoys[i].request(
            "POST",
            "/mcp://sentiment-analysis/x",
            &[("authorization", auth)],
        )
    }

    /// `clients` threads per proxy calling as `auth` for `run`; every
    /// response with the proxy it came from, and the seconds it took.
    pub fn burst(
        &self,
        auth: &str,
        clients: usize,
        run: Duration,
    ) -> (Vec<(usize, Response)>, f64) {
        let start = Instant::now();
        let threads: Vec<_> = (0..clients * self.envoys.len())
            .map(|c| {
                let i = c % self.envoys.len();
                let port = self.envoys[i].port;
                let auth = auth.to_string();
                std::thread::spawn(move || {
                    let mut seen = Vec::new();
                    while start.elapsed() < run {
                        let r = crate::http(
                            port,
                            "POST",
                            "/mcp://sentiment-analysis/x",
                            &[("authorization", &auth)],
                            "",
                        );
                        seen.push((i, r));
                    }
                    seen
                })
            })
            .collect();
        let all = threads
            .into_iter()
            .flat_map(|t| t.join().unwrap())
            .collect();
        (all, start.elapsed().as_secs_f64())
    }
}
