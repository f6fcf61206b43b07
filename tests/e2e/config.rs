//! Configuration: a bad plugin configuration keeps the listener down.

use agentplane_e2e::envoy::yaml;
use agentplane_e2e::{Envoy, EnvoySetup, Idp, Upstream};
use std::time::Duration;

/// An invalid plugin configuration (unknown field) makes `on_configure`
/// fail: Envoy refuses to serve, and the log says what to fix.
#[test]
fn invalid_plugin_config_keeps_listener_down() {
    let idp = Idp::new();
    let up = Upstream::start();
    let mut e = Envoy::spawn(&EnvoySetup::without_vault(
        &idp,
        up.port,
        r#"{"identity": {"payload_kye": "jwt_payload"}}"#.into(),
    ));
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

/// Two builds side by side in one Envoy, each on its own listener with
/// its own VM and limits table (docs/deploying.md, "Two filters side by
/// side"): each
/// decides, with its own policy revision in its decision records.
#[test]
fn a_canary_filter_runs_beside_the_current_one_on_its_own_listener() {
    let next = std::env::var("AGENTPLANE_NEXT_WASM")
        .map(std::path::PathBuf::from)
        .unwrap_or_else(|_| agentplane_e2e::repo_root().join("target/agentplane-next.wasm"));
    assert!(
        next.exists(),
        "{}: ./build.sh test builds it",
        next.display()
    );
    let idp = Idp::new();
    let up = Upstream::start();
    let cfg = agentplane_e2e::logged_plugin_config();
    let mut r = agentplane_e2e::render_envoy(
        &EnvoySetup::without_vault(&idp, up.port, cfg.to_string()),
        true,
    );
    // The listener, copied: another name, the canary build, its own VM
    // and limits table.
    r.edit(|v| {
        let mut canary = yaml::listener(v, yaml::AGENT_LISTENER).clone();
        canary["name"] = "canary_listener".into();
        yaml::set_wasm(&mut canary, &next.display().to_string());
        yaml::wasm_config(&mut canary)["vm_config"]["vm_id"] = "agentplane-canary".into();
        yaml::edit_plugin_config(&mut canary, |cfg| {
            cfg["limits"] = serde_json::json!({"table": "agentplane.canary"});
        });
        yaml::listeners(v).push(canary);
    });
    assert!(r.yaml.contains("agentplane.canary") && r.yaml.contains("agentplane-canary"));
    let e = Envoy::start_yaml(&r);
    let canary_port = e.listener_port("canary_listener").expect("canary port");
    assert_ne!(canary_port, e.port);
    let token = idp.triage_token();
    let auth = format!("Bearer {token}");
    let mut revision = Vec::new();
    for port in [e.port, canary_port] {
        let ok = agentplane_e2e::http(
            port,
            "GET",
            "/mcp://hello-skill/hello",
            &[("authorization", &auth)],
            "",
        );
        assert_eq!(ok.status, 200, "{}", ok.body);
        let no = agentplane_e2e::http(
            port,
            "GET",
            "/mcp://web-search/search",
            &[("authorization", &auth)],
            "",
        );
        assert_eq!(no.status, 403, "{}", no.body);
        let rec = e.decision_record(ok.header("x-decision-id").unwrap());
        let rev = rec["labels"]["policy_revision"]
            .as_str()
            .unwrap()
            .to_string();
        revision.push(rev);
    }
    assert_ne!(revision[0], revision[1], "each listener runs its own build");
}

/// The shipped filter carries its policy compiled at build time and no
/// Rego compiler: a configuration that would need Rego compiled when the
/// VM starts (here another entrypoint) is refused, and the log says how to
/// build a filter that has it. Nothing is served meanwhile.
#[test]
fn the_shipped_filter_refuses_an_entrypoint_it_was_not_built_for() {
    let idp = Idp::new();
    let up = Upstream::start();
    let mut e = Envoy::spawn(&EnvoySetup::without_vault(
        &idp,
        up.port,
        r#"{"policy": {"entrypoint": "data.mcp.authz.allow"}}"#.into(),
    ));
    let t0 = std::time::Instant::now();
    while !e.log().contains("agentplane: refusing configuration") {
        assert!(
            t0.elapsed() < Duration::from_secs(20),
            "no refusal in the log:\n{}",
            e.log()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    let log = e.log();
    assert!(
        log.contains("compiles no Rego at configure time")
            && log.contains("AGENTPLANE_ENTRYPOINT=data.mcp.authz.allow"),
        "log does not explain the problem:\n{log}"
    );
    // Refused at configure time, before the listener could serve: it
    // never comes up.
    assert!(
        e.wait_ready(Duration::from_secs(3)).is_err(),
        "the listener came up"
    );
}

/// The shipped filter evaluates the policy compiled to Rust and carries
/// no RVM: it says which engine runs when it is configured, and a
/// configuration asking for the RVM is refused with what to rebuild,
/// instead of silently running another engine.
#[test]
fn the_shipped_filter_runs_the_rust_policy_and_refuses_the_rvm_it_does_not_carry() {
    let idp = Idp::new();
    let up = Upstream::start();
    let wait_for = |e: &mut Envoy, what: &str| {
        let t0 = std::time::Instant::now();
        while !e.log().contains(what) {
            assert!(
                t0.elapsed() < Duration::from_secs(20),
                "no {what:?} in the log:\n{}",
                e.log()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    };
    let mut shipped = Envoy::spawn(&EnvoySetup::without_vault(&idp, up.port, "{}".into()));
    wait_for(&mut shipped, "engine native");
    drop(shipped);
    let mut e = Envoy::spawn(&EnvoySetup::without_vault(
        &idp,
        up.port,
        r#"{"policy": {"engine": "rvm"}}"#.into(),
    ));
    wait_for(&mut e, "agentplane: refusing configuration");
    let log = e.log();
    assert!(
        log.contains("no RVM") && log.contains("rvm feature"),
        "log does not explain the problem:\n{log}"
    );
    assert!(
        e.wait_ready(Duration::from_secs(3)).is_err(),
        "the listener came up"
    );
}
