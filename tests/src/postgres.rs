//! PostgreSQL: a server of the test's own (initdb in a temp dir,
//! 127.0.0.1 on a fresh port, password authentication for TCP) for
//! OpenBao's database secrets engine, and logins over `psql`. Stopped on
//! drop; its log is printed if a test panicked.

use crate::free_port;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// A PostgreSQL server of its own (initdb in a temp dir, 127.0.0.1 on a
/// fresh port, password authentication for TCP), stopped on drop.
pub struct Postgres {
    child: Option<Child>,
    /// Its port.
    pub port: u16,
    /// The superuser (`postgres`) password.
    pub password: String,
    dir: PathBuf,
}

/// A PostgreSQL program: `$PG_BIN_DIR/<name>`, else the newest
/// `/usr/lib/postgresql/*/bin/<name>` (Debian's `postgresql` package).
pub fn pg_bin(name: &str) -> PathBuf {
    if let Some(dir) = std::env::var_os("PG_BIN_DIR") {
        return PathBuf::from(dir).join(name);
    }
    let mut found: Vec<PathBuf> = std::fs::read_dir("/usr/lib/postgresql")
        .map(|d| {
            d.flatten()
                .map(|e| e.path().join("bin").join(name))
                .collect()
        })
        .unwrap_or_default();
    found.retain(|p| p.exists());
    found.sort();
    found
        .pop()
        .unwrap_or_else(|| panic!("PostgreSQL's {name} not found (run ./build.sh deps)"))
}

fn is_root() -> bool {
    Command::new("id")
        .arg("-u")
        .output()
        .is_ok_and(|o| String::from_utf8_lossy(&o.stdout).trim() == "0")
}

/// Runs a PostgreSQL program, as the `postgres` user when we are root
/// (the server refuses to run as root).
fn pg_command(name: &str) -> Command {
    if is_root() {
        let mut c = Command::new("setpriv");
        c.args(["--reuid=postgres", "--regid=postgres", "--init-groups"])
            .arg(pg_bin(name));
        c
    } else {
        Command::new(pg_bin(name))
    }
}

impl Postgres {
    /// initdb + start; waits until it accepts password logins.
    pub fn start() -> Postgres {
        // A port picked free can be taken before the server binds it: the
        // server then exits, and we try another.
        for _ in 0..5 {
            if let Some(pg) = Postgres::try_start(free_port()) {
                return pg;
            }
        }
        panic!("postgres would not start on any of 5 ports");
    }

    fn try_start(port: u16) -> Option<Postgres> {
        let dir = std::env::temp_dir().join(format!("agentplane-pg-{}-{port}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let password = format!("pg-{}-{port}", std::process::id());
        std::fs::write(dir.join("pw"), &password).unwrap();
        if is_root() {
            let st = Command::new("chown")
                .args(["-R", "postgres:postgres"])
                .arg(&dir)
                .status()
                .unwrap();
            assert!(st.success(), "chown {}", dir.display());
        }
        let out = pg_command("initdb")
            .arg("-D")
            .arg(dir.join("data"))
            .args([
                "-U",
                "postgres",
                "--auth-local=trust",
                "--auth-host=scram-sha-256",
            ])
            .arg(format!("--pwfile={}", dir.join("pw").display()))
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "initdb: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let log = std::fs::File::create(dir.join("pg.log")).unwrap();
        let child = pg_command("postgres")
            .arg("-D")
            .arg(dir.join("data"))
            .args(["-h", "127.0.0.1", "-p", &port.to_string(), "-k"])
            .arg(&dir)
            .stdout(Stdio::from(log.try_clone().unwrap()))
            .stderr(Stdio::from(log))
            .spawn()
            .unwrap();
        let mut pg = Postgres {
            child: Some(child),
            port,
            password,
            dir,
        };
        let t0 = Instant::now();
        loop {
            if pg
                .login("postgres", &pg.password.clone(), "select 1")
                .is_ok()
            {
                return Some(pg);
            }
            if let Some(c) = pg.child.as_mut() {
                if let Ok(Some(st)) = c.try_wait() {
                    eprintln!("postgres exited with {st}; retrying:\n{}", pg.log());
                    return None;
                }
            }
            assert!(
                t0.elapsed() < Duration::from_secs(30),
                "postgres not ready:\n{}",
                pg.log()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Logs in over TCP with a password and runs one statement; the
    /// result's first column, or psql's error.
    pub fn login(&self, user: &str, password: &str, sql: &str) -> Result<String, String> {
        let out = Command::new("psql")
            .args(["-h", "127.0.0.1", "-p", &self.port.to_string(), "-U", user])
            .args(["-d", "postgres", "-tAc", sql])
            .env("PGPASSWORD", password)
            .env("PGCONNECT_TIMEOUT", "5")
            .output()
            .map_err(|e| e.to_string())?;
        if out.status.success() {
            Ok(String::from_utf8_lossy(&out.stdout).trim().to_string())
        } else {
            Err(String::from_utf8_lossy(&out.stderr).to_string())
        }
    }

    /// The server's log.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("pg.log")).unwrap_or_default()
    }
}

impl Drop for Postgres {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            // SIGINT: fast shutdown, backends included.
            let _ = Command::new("kill")
                .args(["-INT", &c.id().to_string()])
                .status();
            let t0 = Instant::now();
            while t0.elapsed() < Duration::from_secs(10) {
                if let Ok(Some(_)) = c.try_wait() {
                    break;
                }
                std::thread::sleep(Duration::from_millis(50));
            }
            let _ = c.kill();
            let _ = c.wait();
        }
        if std::thread::panicking() {
            eprintln!("--- postgres log ---\n{}", self.log());
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
