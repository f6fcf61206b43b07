//! `agentplane-ratelimit`: Envoy's rate limit service (RLS v3 over gRPC)
//! for fleet-wide limits, counting in Redis so that every proxy of a fleet
//! draws on one budget. See `--help` and docs/limits.md.
//!
//! This file only starts and stops: flags and the limits file (`config`),
//! the gRPC listener (`service`), the health listener (`/healthz`: the
//! process runs; `/readyz`: Redis answers; `/metrics`: counts), the first
//! stdout line (`listening on grpc=ADDR health=ADDR`), and a graceful stop
//! on SIGTERM or SIGINT (calls in progress finish). A bad flag or limits
//! file exits with status 2 and a message; other failures to start with 1.
//!
//! Memory is bounded: the limits are fixed at start, a request's
//! descriptors are capped (`config::MAX_*`), calls per connection are
//! capped, and the counters live in Redis with expiry.

mod config;
mod service;
mod store;

use axum::extract::State;
use axum::http::StatusCode;
use axum::routing::get;
use envoy_types::pb::envoy::service::ratelimit::v3::rate_limit_service_server::RateLimitServiceServer;
use std::io::Write as _;
use std::process::ExitCode;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

pub(crate) fn say(to_stderr: bool, line: &str) {
    // Not println!: a closed stdout must not panic the service.
    let _ = if to_stderr {
        writeln!(std::io::stderr().lock(), "{line}")
    } else {
        let mut out = std::io::stdout().lock();
        writeln!(out, "{line}").and_then(|_| out.flush())
    };
}

fn main() -> ExitCode {
    let flags = match config::parse(std::env::args().skip(1)) {
        Ok(config::Command::Run(f)) => f,
        Ok(config::Command::Help) => {
            say(false, config::USAGE);
            return ExitCode::SUCCESS;
        }
        Err(e) => {
            say(true, &format!("agentplane-ratelimit: {e}"));
            return ExitCode::from(2);
        }
    };
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build();
    match rt {
        Ok(rt) => rt.block_on(run(*flags)),
        Err(e) => {
            say(true, &format!("agentplane-ratelimit: runtime: {e}"));
            ExitCode::FAILURE
        }
    }
}

#[derive(Clone)]
struct Health {
    store: Arc<store::Store>,
    counts: Arc<service::Counts>,
}

async fn readyz(State(h): State<Health>) -> (StatusCode, String) {
    match h.store.ping().await {
        Ok(()) => (StatusCode::OK, "ready\n".into()),
        Err(e) => (StatusCode::SERVICE_UNAVAILABLE, format!("not ready: {e}\n")),
    }
}

async fn metrics(State(h): State<Health>) -> String {
    let c = &h.counts;
    let mut out = String::new();
    for (name, v) in [
        ("ok", &c.ok),
        ("over_limit", &c.over_limit),
        ("store_errors", &c.store_errors),
        ("invalid", &c.invalid),
    ] {
        out.push_str(&format!(
            "agentplane_ratelimit_{name}_total {}\n",
            v.load(Ordering::Relaxed)
        ));
    }
    out
}

async fn run(flags: config::Flags) -> ExitCode {
    let fail = |what: String| {
        say(true, &format!("agentplane-ratelimit: {what}"));
        ExitCode::FAILURE
    };
    let grpc = match tokio::net::TcpListener::bind(flags.listen).await {
        Ok(l) => l,
        Err(e) => return fail(format!("cannot listen on {}: {e}", flags.listen)),
    };
    let health = match tokio::net::TcpListener::bind(flags.health).await {
        Ok(l) => l,
        Err(e) => return fail(format!("cannot listen on {}: {e}", flags.health)),
    };
    let (Ok(grpc_addr), Ok(health_addr)) = (grpc.local_addr(), health.local_addr()) else {
        return fail("listener address".into());
    };
    let config = Arc::new(flags.config);
    let store = Arc::new(store::Store::new(flags.redis, config.store_timeout()));
    let counts = Arc::new(service::Counts::default());
    let rls = service::Rls {
        config,
        store: store.clone(),
        counts: counts.clone(),
    };
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let stopped = |mut rx: tokio::sync::watch::Receiver<bool>| async move {
        let _ = rx.wait_for(|s| *s).await;
    };
    let app = axum::Router::new()
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics))
        .with_state(Health { store, counts });
    let health_stop = stopped(stop_rx.clone());
    let health_task = tokio::spawn(async move {
        axum::serve(health, app)
            .with_graceful_shutdown(health_stop)
            .await
    });
    let grpc_task = tokio::spawn(
        tonic::transport::Server::builder()
            .concurrency_limit_per_connection(256)
            .timeout(Duration::from_secs(5))
            .add_service(RateLimitServiceServer::new(rls))
            .serve_with_incoming_shutdown(
                tonic::transport::server::TcpIncoming::from(grpc),
                stopped(stop_rx),
            ),
    );
    say(
        false,
        &format!("listening on grpc={grpc_addr} health={health_addr}"),
    );
    wait_for_signal().await;
    let _ = stop_tx.send(true);
    let (g, h) = tokio::join!(grpc_task, health_task);
    match (g, h) {
        (Ok(Ok(())), Ok(Ok(()))) => ExitCode::SUCCESS,
        (g, h) => fail(format!("stopped with errors: {g:?} {h:?}")),
    }
}

async fn wait_for_signal() {
    use tokio::signal::unix::{signal, SignalKind};
    match (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    ) {
        (Ok(mut term), Ok(mut int)) => {
            tokio::select! {
                _ = term.recv() => {}
                _ = int.recv() => {}
            }
        }
        // Without signal handlers, Ctrl-C still ends the process.
        _ => std::future::pending::<()>().await,
    }
}
