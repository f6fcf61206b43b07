//! Configuration: a bad plugin configuration keeps the listener down.

use agentplane_e2e::{Envoy, EnvoySetup, Idp, Upstream};
use std::time::Duration;

/// An invalid plugin configuration (unknown field) makes `on_configure`
/// fail: Envoy refuses to serve, and the log says what to fix.
#[test]
fn invalid_plugin_config_keeps_listener_down() {
    let idp = Idp::new();
    let up = Upstream::start();
    let mut e = Envoy::spawn(&EnvoySetup {
        jwks: idp.jwks(),
        upstream_port: up.port,
        plugin_config: r#"{"identity": {"payload_kye": "jwt_payload"}}"#.into(),
        vault_port: agentplane_e2e::free_port(),
    });
    let ready = e.wait_ready(Duration::from_secs(20));
    assert!(ready.is_err(), "Envoy became ready with a bad config");
    assert!(
        std::net::TcpStream::connect(("127.0.0.1", e.port)).is_err(),
        "listener is serving"
    );
    let log = e.log();
    assert!(
        log.contains("agentplane: refusing configuration")
            && log.contains("unknown field `payload_kye`"),
        "log does not explain the problem:\n{log}"
    );
}
