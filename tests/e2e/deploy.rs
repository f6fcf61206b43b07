//! The ways users deploy agentplane, checked offline: the mountable Envoy
//! configurations (fresh renders of the template, accepted by Envoy
//! 1.40), the compose stack (`docker-compose config`, one source of
//! truth with the demo), the Istio manifests (Istio's CRD schemas, and
//! agentplane's own config parser for the plugin configurations inside),
//! and the OpenBao setup script. The `compose_*` tests attack the compose
//! stack on paper: who can reach whom, which ports and addresses are
//! open, and which service holds which secret ([`compose`]).

use agentplane_e2e::deploy::{demo_plugin_config, render_profile, Profile, COMPOSE, EXAMPLE};
use agentplane_e2e::envoy::yaml;
use agentplane_e2e::{envoy_bin, repo_root, wasm_path, Bao, Idp};
use serde_json::Value;
use std::process::Command;

mod compose;
/// The compose stack's Prometheus, Grafana, Loki, Jaeger and collector.
mod observability;

fn run(cmd: &mut Command) -> (bool, String) {
    let out = cmd.output().unwrap_or_else(|e| panic!("{cmd:?}: {e}"));
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), text)
}

fn temp(name: &str) -> std::path::PathBuf {
    let d = std::env::temp_dir().join(format!("agentplane-deploy-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

#[test]
fn the_mountable_envoy_configs_are_fresh_renders_of_the_template_and_plugin_config() {
    for p in [COMPOSE, EXAMPLE] {
        // The demo's plugin configuration (tests/bin/demo.rs uses the
        // same function), line for line.
        let authority = if p.vault.0 == "127.0.0.1" {
            "127.0.0.1".to_string()
        } else {
            format!("{}:{}", p.vault.0, p.vault.1)
        };
        let plugin = serde_json::to_string_pretty(&demo_plugin_config(&authority)).unwrap();
        let checked_in = std::fs::read_to_string(repo_root().join(p.out)).unwrap();
        assert!(
            checked_in == render_profile(&p),
            "{} is stale: run ./build.sh render",
            p.out
        );
        assert!(
            !checked_in.contains("${"),
            "{}: a placeholder is left",
            p.out
        );
        assert!(
            checked_in.contains("remote_jwks:"),
            "{}: keys fetched, not copied",
            p.out
        );
        // The plugin configuration is the demo's, line for line.
        for line in plugin.lines().filter(|l| !l.trim().is_empty()) {
            assert!(checked_in.contains(line.trim()), "{}: {line}", p.out);
        }
    }
}

/// A profile's configuration running the built filter, its agentplane
/// filter's `config` changed by `f`.
fn with_built_wasm(p: &Profile, f: impl FnOnce(&mut Value)) -> String {
    let mut v = yaml::parse(&render_profile(p));
    let listener = yaml::listener(&mut v, yaml::AGENT_LISTENER);
    yaml::set_wasm(listener, &wasm_path().display().to_string());
    f(yaml::wasm_config(listener));
    yaml::to_yaml(&v)
}

#[test]
fn envoy_accepts_the_mountable_configs() {
    let dir = temp("validate");
    for p in [COMPOSE, EXAMPLE] {
        let file = dir.join(p.out.replace('/', "_"));
        std::fs::write(&file, with_built_wasm(&p, |_| ())).unwrap();
        let (ok, text) = run(Command::new(envoy_bin())
            .args(["--mode", "validate", "--use-dynamic-base-id", "-c"])
            .arg(&file));
        assert!(ok, "envoy --mode validate refused {}:\n{text}", p.out);
    }
    // And one that is wrong is refused (the check can fail).
    let broken = with_built_wasm(&EXAMPLE, |wasm| {
        assert_eq!(wasm["failure_policy"], "FAIL_RELOAD");
        wasm["failure_policy"] = "FAIL_SOMETIMES".into();
    });
    let file = dir.join("broken.yaml");
    std::fs::write(&file, broken).unwrap();
    let (ok, _) = run(Command::new(envoy_bin())
        .args(["--mode", "validate", "--use-dynamic-base-id", "-c"])
        .arg(&file));
    assert!(!ok, "a broken config validated");
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn the_istio_manifests_validate_and_carry_plugin_configs_agentplane_accepts() {
    let out = temp("istio");
    let script = repo_root().join("deploy/istio-check/validate.mjs");
    let digest = format!("sha256:{}", "ab".repeat(32));
    let manifests: Vec<_> = std::fs::read_dir(repo_root().join("envoy/istio"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|x| x == "yaml"))
        .collect();
    assert!(manifests.len() >= 2);
    let (ok, text) = run(Command::new("node")
        .arg(&script)
        .args(["--digest", &digest, "--out"])
        .arg(&out)
        .args(&manifests));
    assert!(ok, "{text}");
    assert!(text.contains("6 manifests valid"), "{text}");
    let rendered = std::fs::read_to_string(out.join("agentplane.yaml")).unwrap();
    assert!(
        rendered.contains(&"ab".repeat(32)),
        "the image digest is filled in"
    );
    let configs: Vec<_> = std::fs::read_dir(out.join("plugin-configs"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    assert_eq!(configs.len(), 3, "{configs:?}");
    for c in configs {
        let json = std::fs::read(&c).unwrap();
        if let Err(e) = agentplane_core::Filter::new(&json, 1) {
            panic!("{}: agentplane refuses it: {e}", c.display());
        }
        // A sidecar delivers to its own pod: each plugin decides that
        // pod's service, never the one a path names (one per workload).
        let cfg: serde_json::Value = serde_json::from_slice(&json).unwrap();
        assert!(
            cfg["routing"]["local_service"].is_string(),
            "{}: no routing.local_service",
            c.display()
        );
    }
    // A manifest the schema refuses fails the check.
    let bad = out.join("bad.yaml");
    let text = std::fs::read_to_string(repo_root().join("envoy/istio/agentplane.yaml")).unwrap();
    let broken = text.replace("failStrategy: FAIL_RELOAD", "failStrategy: FAIL_SOMETIMES");
    assert_ne!(broken, text);
    std::fs::write(&bad, broken).unwrap();
    let (ok, text) = run(Command::new("node")
        .arg(&script)
        .args(["--digest", &digest, "--out"])
        .arg(out.join("bad-out"))
        .arg(&bad));
    assert!(!ok, "a broken manifest validated: {text}");
    // A misspelt field: the schemas accept unknown fields, the check does not.
    let typo = std::fs::read_to_string(repo_root().join("envoy/istio/agentplane.yaml"))
        .unwrap()
        .replace("  priority: 10", "  priority: 10\n  failStratgy: FAIL_OPEN");
    std::fs::write(&bad, typo).unwrap();
    let (ok, text) = run(Command::new("node")
        .arg(&script)
        .args(["--digest", &digest, "--out"])
        .arg(out.join("typo-out"))
        .arg(&bad));
    assert!(!ok, "a misspelt field validated: {text}");
    assert!(
        text.contains("does not declare: spec.failStratgy"),
        "{text}"
    );
    let _ = std::fs::remove_dir_all(&out);
}

#[test]
fn the_openbao_setup_script_is_idempotent() {
    let idp = Idp::new();
    let bao = Bao::start();
    bao.setup_agents(&idp);
    bao.setup_agents(&idp);
    let policy = bao.api(
        "GET",
        "/v1/sys/policies/acl/agent-kv",
        serde_json::Value::Null,
    );
    let text = policy["data"]["policy"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    assert!(text.contains("identity.entity.aliases.auth_jwt_"), "{text}");
}

// ---- The compose stack, attacked on paper: what `docker-compose config`
// resolves, and the OpenBao setup run against the server it configures.
