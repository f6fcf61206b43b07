//! Envoy's route timeouts, as the rendered configs set them: a plain
//! service's route ends a response that takes too long, an MCP service's
//! route lets an event stream stay open while it delivers (Envoy's route
//! `timeout` bounds the whole response, so a listen stream under it would
//! be reset however alive it is).

use agentplane_e2e::{add_mcp_service, try_http, SlowEvents, Stack};
use std::time::{Duration, Instant};

const SERVICE: &str = "listen-mcp";
const FIRST: &str = r#"{"jsonrpc":"2.0","method":"notifications/tools/list_changed"}"#;
const LATER: &str = r#"{"jsonrpc":"2.0","method":"notifications/prompts/list_changed"}"#;

/// Plain services' route timeout lowered to 2 s (the shipped 30 s, in a
/// test that need not wait for it). A plain service's slow answer is cut
/// at 2 s (504); an MCP listen stream whose second event comes 3.5 s in
/// delivers both events, though no byte flows for longer than that
/// timeout and the stream lasts longer than it.
#[test]
fn an_mcp_listen_stream_outlives_the_route_timeout_of_plain_services() {
    let gap = Duration::from_millis(3500);
    let server = SlowEvents::start(FIRST, gap, LATER);
    let mut cfg = agentplane_e2e::logged_plugin_config();
    add_mcp_service(&mut cfg, SERVICE);
    let s = Stack::build(&cfg.to_string())
        .route(SERVICE, server.port)
        .route_timeout("2s")
        .start();

    let plain = format!("Bearer {}", s.idp.triage_token_with(&["skills:invoke"]));
    let t0 = Instant::now();
    let r = try_http(
        s.envoy.port,
        "POST",
        "/mcp://sentiment-analysis/slow",
        &[("authorization", &plain), ("x-test-delay-ms", "5000")],
        "",
    )
    .unwrap();
    let took = t0.elapsed();
    assert_eq!(r.status, 504, "the plain route's timeout: {r:?}");
    assert!(
        took >= Duration::from_millis(1800) && took < Duration::from_millis(4000),
        "cut at the route timeout (2 s): {took:?}"
    );

    let mcp = format!("Bearer {}", s.idp.triage_token_with(&["mcp:connect"]));
    let t0 = Instant::now();
    let r = try_http(
        s.envoy.port,
        "GET",
        &format!("/mcp://{SERVICE}/mcp"),
        &[("authorization", &mcp), ("accept", "text/event-stream")],
        "",
    )
    .unwrap_or_else(|e| panic!("the listen stream was cut: {e}"));
    let took = t0.elapsed();
    assert_eq!(r.status, 200, "{r:?}");
    assert!(
        r.body.contains("tools/list_changed") && r.body.contains("prompts/list_changed"),
        "both events, the second {gap:?} in: {:?}",
        r.body
    );
    assert!(took >= gap, "the stream stayed open: {took:?}");
}
