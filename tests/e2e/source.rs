//! SPIFFE workload identity over mTLS: a TLS listener requiring client
//! certificates (made here with the openssl CLI, `spiffe://` URI SANs),
//! `input.source` from Envoy's connection properties, and the shipped
//! policy binding a token to the workload its registration names.

use agentplane_e2e::envoy::yaml;
use agentplane_e2e::{default_plugin_config, render_envoy, Envoy, EnvoySetup, Idp, Upstream};
use serde_json::{json, Value};
use std::path::{Path, PathBuf};
use std::process::Command;

const TRIAGE: &str = "spiffe://corp/ns/agents/sa/triage";

fn openssl(dir: &Path, args: &[&str]) {
    let out = Command::new("openssl")
        .current_dir(dir)
        .args(args)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "openssl {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A CA, a server certificate for 127.0.0.1, and one client certificate
/// per SPIFFE ID.
fn pki(dir: &Path, clients: &[(&str, &str)]) {
    let ec = [
        "-newkey",
        "ec",
        "-pkeyopt",
        "ec_paramgen_curve:P-256",
        "-nodes",
    ];
    let mut ca = vec!["req", "-x509"];
    ca.extend(ec);
    ca.extend([
        "-keyout",
        "ca.key",
        "-out",
        "ca.crt",
        "-subj",
        "/CN=agentplane-test-ca",
        "-days",
        "1",
    ]);
    openssl(dir, &ca);
    let issue = |name: &str, subject: &str, san: &str| {
        let mut req = vec!["req"];
        req.extend(ec);
        let (key, csr, crt) = (
            format!("{name}.key"),
            format!("{name}.csr"),
            format!("{name}.crt"),
        );
        let ext = format!("subjectAltName={san}");
        req.extend([
            "-keyout", &key, "-out", &csr, "-subj", subject, "-addext", &ext,
        ]);
        openssl(dir, &req);
        openssl(
            dir,
            &[
                "x509",
                "-req",
                "-in",
                &csr,
                "-CA",
                "ca.crt",
                "-CAkey",
                "ca.key",
                "-CAcreateserial",
                "-out",
                &crt,
                "-days",
                "1",
                "-copy_extensions",
                "copy",
            ],
        );
    };
    issue("server", "/CN=127.0.0.1", "IP:127.0.0.1,DNS:localhost");
    for (name, id) in clients {
        issue(name, &format!("/CN={name}"), &format!("URI:{id}"));
    }
}

/// `curl` over mTLS (`client`: a certificate name, or none); the status,
/// or `None` when the TLS handshake failed.
fn call(dir: &Path, port: u16, client: Option<&str>, token: &str) -> (Option<u16>, String) {
    let mut c = Command::new("curl");
    c.current_dir(dir)
        .args([
            "-s",
            "-o",
            "-",
            "-w",
            "\n%{http_code}",
            "--cacert",
            "ca.crt",
            "-X",
            "POST",
        ])
        .args(["-H", &format!("authorization: Bearer {token}")])
        .args([
            "-H",
            "x-forwarded-client-cert: By=spiffe://forged;URI=spiffe://forged",
        ]);
    if let Some(name) = client {
        c.args([
            "--cert",
            &format!("{name}.crt"),
            "--key",
            &format!("{name}.key"),
        ]);
    }
    let out = c
        .arg(format!(
            "https://127.0.0.1:{port}/sentiment-analysis/analyze"
        ))
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout).to_string();
    let (body, code) = text.rsplit_once('\n').unwrap_or(("", ""));
    let code: u16 = code.trim().parse().unwrap_or(0);
    (
        (out.status.success() && code != 0).then_some(code),
        body.to_string(),
    )
}

#[test]
fn a_token_bound_to_a_workload_passes_only_from_that_workload() {
    let dir: PathBuf = std::env::temp_dir().join(format!("agentplane-pki-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    pki(
        &dir,
        &[
            ("triage", TRIAGE),
            ("other", "spiffe://corp/ns/agents/sa/other"),
        ],
    );
    let idp = Idp::new();
    let upstream = Upstream::start();
    let mut cfg: Value = serde_json::from_str(&default_plugin_config()).unwrap();
    cfg["source"] = json!({"peer_certificate": true});
    let mut r = render_envoy(
        &EnvoySetup::without_vault(&idp, upstream.port, cfg.to_string()),
        true,
    );
    let f = |n: &str| dir.join(n).display().to_string();
    r.edit(|v| {
        let chain = &mut yaml::listener(v, yaml::AGENT_LISTENER)["filter_chains"][0];
        assert!(chain.get("transport_socket").is_none());
        chain["transport_socket"] = json!({
            "name": "envoy.transport_sockets.tls",
            "typed_config": {
                "@type": "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.DownstreamTlsContext",
                "require_client_certificate": true,
                "common_tls_context": {
                    "tls_certificates": [{
                        "certificate_chain": {"filename": f("server.crt")},
                        "private_key": {"filename": f("server.key")},
                    }],
                    "validation_context": {"trusted_ca": {"filename": f("ca.crt")}},
                },
            },
        });
    });
    let envoy = Envoy::start_yaml(&r);
    let token = idp.mint(
        json!({"sub": "triage@clients", "permissions": ["skills:invoke"],
               "https://mcp.example.com/agent_type": "support",
               "https://mcp.example.com/team": "ml",
               "https://mcp.example.com/environment": "production",
               "https://mcp.example.com/workload_id": TRIAGE}),
        300,
    );
    // The right workload: allowed; the forged XFCC never reaches upstream.
    let (status, body) = call(&dir, envoy.port, Some("triage"), &token);
    assert_eq!(status, Some(200), "{body}");
    let up = upstream.seen().pop().unwrap();
    assert_eq!(up.one("x-agent-id").as_deref(), Some("triage@clients"));
    assert!(!up
        .one("x-forwarded-client-cert")
        .unwrap_or_default()
        .contains("forged"));
    // Another workload with the same valid token: refused, with the reason.
    let (status, body) = call(&dir, envoy.port, Some("other"), &token);
    assert_eq!(status, Some(403), "{body}");
    assert!(
        body.contains("bound to workload spiffe://corp/ns/agents/sa/triage"),
        "{body}"
    );
    // No certificate at all: the listener requires one, so the TLS
    // handshake fails and no request exists to decide on.
    let (status, _) = call(&dir, envoy.port, None, &token);
    assert_eq!(status, None);
    // A token not bound to a workload passes from any verified peer.
    let free = idp.agent_token(
        "free@clients",
        "ml",
        "support",
        "production",
        &["skills:invoke"],
    );
    let (status, body) = call(&dir, envoy.port, Some("other"), &free);
    assert_eq!(status, Some(200), "{body}");
    std::fs::remove_dir_all(&dir).ok();
}
