//! `agentplane-approval`: the approval service. The filter asks it, per
//! call that policy holds for a human, where that exact call stands
//! (`/v1/check`); approvers sign in at the identity provider and approve
//! or reject it on its page; the next identical call gets a signed,
//! single-use grant. See `--help` for the flags.
//!
//! This file only starts and stops: flags (`config`), the listener, the
//! first stdout line (`listening on http://<address>`), the routes
//! (`routes`), and a graceful stop on SIGTERM or SIGINT. Bad flags or key
//! files exit with status 2 and a message; other failures to start with 1.

mod check;
mod config;
mod grant;
mod links;
mod oidc;
mod pages;
mod routes;
mod sessions;
mod store;

use std::io::Write as _;
use std::process::ExitCode;
use std::sync::{Arc, Mutex};

fn say(to_stderr: bool, line: &str) {
    // Not println!: a closed stdout must not panic the service.
    let _ = if to_stderr {
        writeln!(std::io::stderr().lock(), "{line}")
    } else {
        let mut out = std::io::stdout().lock();
        writeln!(out, "{line}").and_then(|_| out.flush())
    };
}

fn main() -> ExitCode {
    let cfg = match config::parse(std::env::args().skip(1)) {
        Ok(config::Command::Run(c)) => c,
        Ok(config::Command::Help) => {
            say(false, config::USAGE);
            return ExitCode::SUCCESS;
        }
        Err(e) => {
            say(true, &format!("agentplane-approval: {e}"));
            return ExitCode::from(2);
        }
    };
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build();
    match rt {
        Ok(rt) => rt.block_on(run(*cfg)),
        Err(e) => {
            say(true, &format!("agentplane-approval: runtime: {e}"));
            ExitCode::FAILURE
        }
    }
}

async fn run(cfg: config::Config) -> ExitCode {
    let fail = |what: String| {
        say(true, &format!("agentplane-approval: {what}"));
        ExitCode::FAILURE
    };
    let listener = match tokio::net::TcpListener::bind(cfg.listen).await {
        Ok(l) => l,
        Err(e) => return fail(format!("cannot listen on {}: {e}", cfg.listen)),
    };
    let addr = match listener.local_addr() {
        Ok(a) => a,
        Err(e) => return fail(format!("listener address: {e}")),
    };
    let public_url = cfg.public_url.unwrap_or_else(|| format!("http://{addr}"));
    let oidc = match oidc::Oidc::new(
        cfg.issuer,
        cfg.client_id,
        cfg.client_secret,
        format!("{public_url}/callback"),
    ) {
        Ok(o) => o,
        Err(e) => return fail(e),
    };
    let links = match cfg
        .links_file
        .as_deref()
        .map(links::Links::load)
        .transpose()
    {
        Ok(l) => l,
        Err(e) => {
            say(true, &format!("agentplane-approval: {e}"));
            return ExitCode::from(2);
        }
    };
    let app = Arc::new(routes::App {
        store: Mutex::new(store::Store::new(store::Limits::default())),
        sessions: Mutex::new(sessions::Sessions::default()),
        signer: grant::Signer::new(cfg.seed, cfg.kid),
        oidc,
        filter_key: cfg.filter_key,
        secure: public_url.starts_with("https:"),
        public_url,
        clock: routes::system_now,
        links,
    });
    say(false, &format!("listening on http://{addr}"));
    let served = axum::serve(listener, router(app))
        .with_graceful_shutdown(stopped())
        .await;
    match served {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => fail(format!("serving: {e}")),
    }
}

/// Every route over `app`: the approvals' and the link broker's (404s
/// when no `--links-file` turned it on).
pub fn router(app: Arc<routes::App>) -> axum::Router {
    routes::routes()
        .merge(links::routes::router())
        .with_state(app)
}

/// Resolves on SIGTERM or SIGINT.
async fn stopped() {
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            // Without a SIGTERM handler, wait for SIGINT alone.
            Err(_) => std::future::pending::<()>().await,
        }
    };
    tokio::select! {
        _ = term => {}
        _ = tokio::signal::ctrl_c() => {}
    }
}
