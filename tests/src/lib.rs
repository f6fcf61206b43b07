//! End-to-end harness: a real Envoy running the built filter, an identity
//! provider that mints RS256 tokens, and an upstream that echoes what it
//! received. Everything binds to 127.0.0.1 on ports picked at run time and
//! is stopped on drop, also when a test fails (the Envoy log is printed
//! then).
//!
//! One module per component: [`envoy`] (the process, its admin, its
//! rendered configuration), [`bao`] (OpenBao), [`postgres`], [`idp`] (the
//! in-process token minter and the real provider), [`approval`] (the
//! approval service), [`fleet`] (Redis and the rate limit service),
//! [`upstream`] (echo and MCP servers), [`client`] (the
//! one HTTP client), [`plugin`] (the plugin configuration). Their public
//! names are re-exported here.
//!
//! Nothing here skips: a missing Envoy binary or filter is a test failure
//! that says how to build it.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

pub mod approval;
pub mod bao;
pub mod client;
pub mod deploy;
pub mod envoy;
pub mod fleet;
pub mod idp;
pub mod links;
pub mod observability;
pub mod plugin;
pub mod postgres;
pub mod stack;
pub mod upstream;

pub use approval::{approval_bin, Approval};
pub use bao::{bao_bin, Bao};
pub use client::{http, send_raw, try_http, Response};
pub use envoy::render::{
    jwt_audiences, registered_services, render, render_envoy, render_envoy_inbound,
    render_envoy_routed, render_envoy_timed, service_blocks, EnvoySetup, RenderedEnvoy,
    MCP_IDLE_TIMEOUT, ROUTE_TIMEOUT,
};
pub use envoy::{envoy_bin, wasm_path, Envoy};
pub use idp::{provider, Idp, AUDIENCE, ISSUER};
pub use plugin::{
    add_mcp_service, add_tickets_mcp, api_key_secret, config_with_api_key, default_plugin_config,
    logged_plugin_config,
};
pub use postgres::{pg_bin, Postgres};
pub use stack::{Stack, StackBuilder};
pub use upstream::{serve_skill, Seen, SlowEvents, Upstream};

use std::net::TcpListener;
use std::path::{Path, PathBuf};

/// The repository root.
pub fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("..")
        .canonicalize()
        .unwrap()
}

/// A file the tests need: `$var` if set, else `default` under the repo.
/// Missing is a failure that says how to get it, never a skip.
fn artifact(var: &str, default: &str, what: &str, hint: &str) -> PathBuf {
    let p = std::env::var_os(var)
        .map(PathBuf::from)
        .unwrap_or_else(|| repo_root().join(default));
    assert!(p.exists(), "{what} not found at {} ({hint})", p.display());
    p
}

/// The first line a child prints on `out` (its "listening ..." line),
/// waiting `within` at most: an empty line on EOF or when it says nothing
/// in time (the caller then kills it and fails with what it knows, rather
/// than hanging the suite). The reader comes back for the lines after it
/// when the line came.
pub fn first_line<R: std::io::Read + Send + 'static>(
    out: R,
    within: std::time::Duration,
) -> (String, Option<std::io::BufReader<R>>) {
    use std::io::BufRead;
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let mut reader = std::io::BufReader::new(out);
        let mut line = String::new();
        let _ = reader.read_line(&mut line);
        let _ = tx.send((line, reader));
    });
    match rx.recv_timeout(within) {
        Ok((line, reader)) => (line, Some(reader)),
        Err(_) => (String::new(), None),
    }
}

/// How long a child this harness starts may take to say it listens.
pub const START_WITHIN: std::time::Duration = std::time::Duration::from_secs(30);

/// A port that was free a moment ago.
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Runs a command to its end and returns what it printed on stdout;
/// panics with its stderr unless it succeeded. (The program is named, its
/// arguments are not: they can carry tokens.)
pub fn run_ok(cmd: &mut std::process::Command) -> Vec<u8> {
    let program = cmd.get_program().to_string_lossy().into_owned();
    let out = cmd.output().unwrap_or_else(|e| panic!("{program}: {e}"));
    assert!(
        out.status.success(),
        "{program}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    out.stdout
}

/// Unpadded base64url.
pub fn base64url(bytes: &[u8]) -> String {
    use base64::Engine;
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
}
