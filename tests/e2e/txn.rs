//! Transaction tokens end to end: the signing key comes from a real
//! OpenBao through the filter's callout, the upstream is a skill that
//! verifies the token with jose (Node, not our code) against the JWKS the
//! filter serves, and forged, edited, expired and misdirected tokens are
//! refused there.

use agentplane_e2e::provider::idp_dir;
use agentplane_e2e::{
    default_plugin_config, http, render_envoy_routed, try_http, Bao, Envoy, EnvoySetup, Idp,
    Upstream,
};
use serde_json::{json, Value};
use std::collections::HashMap;
use std::io::{BufRead, BufReader, Write};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

const ISSUER: &str = "https://gateway.agentplane.test";
const DOMAIN: &str = "agentplane.test";
const SERVICE: &str = "sentiment-analysis";
const JWKS_PATH: &str = "/.well-known/agentplane/jwks.json";

/// The jose verifier (`idp/txn_verify.mjs`), killed on drop.
struct Skill {
    child: Child,
    port: u16,
}

impl Skill {
    fn start() -> Skill {
        let dir = idp_dir();
        let mut child = Command::new("node")
            .arg(dir.join("txn_verify.mjs"))
            .args([ISSUER, DOMAIN, SERVICE])
            .current_dir(&dir)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("node");
        let mut line = String::new();
        BufReader::new(child.stdout.take().unwrap())
            .read_line(&mut line)
            .unwrap();
        let port = serde_json::from_str::<Value>(&line)
            .ok()
            .and_then(|v| v["port"].as_u64());
        let Some(port) = port else {
            let _ = child.kill();
            panic!("the verifier did not start: {line:?}");
        };
        Skill {
            child,
            port: port as u16,
        }
    }

    fn trust(&mut self, jwks_url: &str) {
        let stdin = self.child.stdin.as_mut().unwrap();
        writeln!(stdin, "{jwks_url}").unwrap();
        stdin.flush().unwrap();
    }

    /// A request straight to the skill, bypassing the gateway.
    fn direct(&self, headers: &[(&str, &str)]) -> (u16, Value) {
        let r = http(self.port, "GET", "/v1/analyze", headers, "");
        (r.status, r.json())
    }
}

impl Drop for Skill {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

struct World {
    idp: Idp,
    bao: Bao,
    skill: Skill,
    envoy: Envoy,
    seed: String,
    vault_token: String,
    _upstream: Upstream,
}

fn world() -> World {
    let idp = Idp::new();
    let bao = Bao::start();
    let (vault_token, seed) = bao.setup_txn_signing("gw-e2e-1");
    let mut skill = Skill::start();
    let upstream = Upstream::start();
    let mut cfg: Value = serde_json::from_str(&default_plugin_config()).unwrap();
    cfg["vault"] = json!({"cluster": "vault", "authority": "127.0.0.1", "retries": 1});
    cfg["txn_token"] = json!({"issuer": ISSUER, "audience": DOMAIN, "ttl_s": 60, "reuse_s": 30});
    cfg["resources"][SERVICE]["txn_token"] = json!(true);
    let setup = EnvoySetup {
        jwks: idp.jwks(),
        upstream_port: upstream.port,
        plugin_config: cfg.to_string(),
        vault_port: bao.port,
    };
    let ports = HashMap::from([(SERVICE.to_string(), skill.port)]);
    let mut rendered = render_envoy_routed(&setup, true, &ports);
    rendered
        .env
        .push(("AGENTPLANE_VAULT_TOKEN".into(), vault_token.clone()));
    let envoy = Envoy::start_yaml(&rendered);
    skill.trust(&format!("http://127.0.0.1:{}{JWKS_PATH}", envoy.port));
    // The key loads right after configure: wait for the JWKS (503 until then).
    let t0 = Instant::now();
    loop {
        let r = try_http(envoy.port, "GET", JWKS_PATH, &[], "");
        if r.as_ref().is_ok_and(|r| r.status == 200) {
            break;
        }
        assert!(
            t0.elapsed() < Duration::from_secs(20),
            "the signing key never loaded: {:?}\n{}",
            r.map(|r| r.body),
            envoy.log()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    World {
        idp,
        bao,
        skill,
        envoy,
        seed,
        vault_token,
        _upstream: upstream,
    }
}

fn bearer(w: &World, sub: &str, agent_type: &str) -> String {
    let t = w.idp.agent_token(
        sub,
        "ml",
        agent_type,
        "production",
        &["skills:invoke", "data:read"],
    );
    format!("Bearer {t}")
}

/// The orchestrator acting for the analyst (RFC 8693: the token an
/// exchange gives it for the analyst, whose grant is `perms`): how a skill
/// that received the analyst's transaction calls on within it.
fn acting_for_analyst(w: &World, perms: &[&str]) -> String {
    let t = w.idp.mint(
        json!({
            "sub": "analyst@clients",
            "permissions": perms,
            "https://mcp.example.com/agent_type": "analysis",
            "https://mcp.example.com/team": "ml",
            "https://mcp.example.com/environment": "production",
            "act": {"sub": "orchestrator@clients",
                "https://mcp.example.com/agent_type": "orchestrator",
                "permissions": ["skills:invoke", "data:read"]},
        }),
        300,
    );
    format!("Bearer {t}")
}

fn call(w: &World, auth: &str, extra: &[(&str, &str)]) -> agentplane_e2e::Response {
    let mut h = vec![("authorization", auth)];
    h.extend_from_slice(extra);
    w.envoy
        .request("GET", &format!("/mcp://{SERVICE}/v1/analyze"), &h)
}

#[test]
fn a_skill_verifies_the_gateway_token_with_jose_and_refuses_forged_and_expired_ones() {
    let w = world();
    let auth = bearer(&w, "analyst@clients", "analysis");
    let first = call(&w, &auth, &[]);
    assert_eq!(first.status, 200, "{}\n{}", first.body, w.envoy.log());
    let a = first.json();
    assert_eq!(a["ok"], true);
    let c = &a["claims"];
    assert_eq!(c["iss"], ISSUER);
    assert_eq!(c["aud"], DOMAIN);
    assert_eq!(c["svc"], SERVICE);
    assert_eq!(c["sub"], "analyst@clients");
    assert_eq!(c["scope"], "skills:invoke data:read");
    assert!(c["exp"].as_i64().unwrap() - c["iat"].as_i64().unwrap() == 60);
    // Each request's own decision id rides beside the reused token.
    assert_eq!(a["decision"].as_str(), first.header("x-decision-id"));
    let second = call(&w, &auth, &[]).json();
    assert_eq!(
        second["token_sha256"], a["token_sha256"],
        "one signature, reused"
    );
    assert_ne!(second["decision"], a["decision"]);

    // Straight to the skill: no token, a forged one, an edited one, an
    // expired replay, one for another service.
    let token = a["token"].as_str().unwrap().to_string();
    let (status, body) = w.skill.direct(&[]);
    assert_eq!((status, body["ok"].clone()), (401, json!(false)));
    let forged = forge(&token, [7u8; 32]);
    let (status, body) = w.skill.direct(&[("txn-token", &forged)]);
    assert_eq!(status, 401, "forged: {body}");
    assert_eq!(body["error"], "ERR_JWS_SIGNATURE_VERIFICATION_FAILED");
    let edited = edit(&token, "sub", "root@clients");
    let (status, body) = w.skill.direct(&[("txn-token", &edited)]);
    assert_eq!(status, 401, "edited: {body}");
    let exp = c["exp"].as_i64().unwrap();
    let later = (exp + 1).to_string();
    let (status, body) = w
        .skill
        .direct(&[("txn-token", &token), ("x-verify-at", &later)]);
    assert_eq!(
        (status, body["error"].clone()),
        (401, json!("ERR_JWT_EXPIRED"))
    );
    let (status, _) = w.skill.direct(&[("txn-token", &token)]);
    assert_eq!(status, 200, "the genuine token verifies directly too");

    // The key never shows in Envoy's config dump, log or stats; nor does
    // the Vault token that reads it.
    let dump = w.envoy.admin("/config_dump");
    let stats = w.envoy.admin("/stats");
    assert!(dump.contains("AGENTPLANE_VAULT_TOKEN"));
    for text in [&dump, &stats, &w.envoy.log(), &first.body] {
        assert!(!text.contains(&w.seed), "signing key leaked");
        assert!(!text.contains(&w.vault_token), "vault token leaked");
    }
    assert!(w
        .envoy
        .log()
        .contains("txn-token signing key gw-e2e-1 loaded"));
    assert!(stats.contains("agentplane.txn_token.minted: 1"), "{stats}");
    drop(w.bao);
}

#[test]
fn a_second_hop_keeps_the_subject_and_chain_and_a_forged_inbound_token_is_refused() {
    let w = world();
    let first = call(&w, &bearer(&w, "analyst@clients", "analysis"), &[]).json();
    let hop1 = first["token"].as_str().unwrap().to_string();
    // The skill, as the orchestrator acting for the analyst, calls on with
    // the token it got.
    let delegated = acting_for_analyst(&w, &["skills:invoke", "data:read"]);
    let second = call(&w, &delegated, &[("txn-token", &hop1)]);
    assert_eq!(second.status, 200, "{}", second.body);
    let c = &second.json()["claims"];
    assert_eq!(c["sub"], "analyst@clients", "the original subject");
    assert_eq!(c["txn"], first["claims"]["txn"], "one transaction");
    assert_eq!(c["act"], json!({"sub": "orchestrator@clients"}));
    assert_eq!(c["tctx"]["agent"], "analyst@clients");
    // A token the gateway did not sign is refused at the gateway.
    let forged = forge(&hop1, [9u8; 32]);
    let r = call(&w, &delegated, &[("txn-token", &forged)]);
    assert_eq!(r.status, 403, "{}", r.body);
    assert_eq!(
        r.json()["reason"],
        "invalid_txn_token: signature or claims do not verify"
    );
    assert!(r.json()["decision_id"].is_string());

    // Inside a transaction a call never gains permissions: the analyst,
    // holding only skills:invoke, starts it; the orchestrator acting for
    // it, which may read data outside it, may not read within it.
    let narrow = w.idp.agent_token(
        "analyst@clients",
        "ml",
        "analysis",
        "production",
        &["skills:invoke"],
    );
    let first = call(&w, &format!("Bearer {narrow}"), &[]).json();
    assert_eq!(first["claims"]["scope"], "skills:invoke");
    let hop1 = first["token"].as_str().unwrap().to_string();
    let read = |extra: &[(&str, &str)]| {
        let mut h = vec![("authorization", delegated.as_str())];
        h.extend_from_slice(extra);
        w.envoy.request("GET", "/mcp://model-registry/models", &h)
    };
    assert_eq!(read(&[]).status, 200, "it may read outside the transaction");
    let inside = read(&[("txn-token", &hop1)]);
    assert_eq!(inside.status, 403, "{}", inside.body);
    assert_eq!(
        inside.json()["reason"],
        "missing permission data:read for action read_data"
    );
}

/// The analyst's transaction token, leaked (a log line, a skill that
/// echoes headers), attached by another agent to its own calls: the next
/// hop's token would name the analyst as the subject of what that agent
/// does. Refused at the gateway; the analyst itself, and the orchestrator
/// acting for it or named in its chain, carry it on.
#[test]
fn a_leaked_txn_token_presented_by_another_agent_is_refused() {
    let w = world();
    let first = call(&w, &bearer(&w, "analyst@clients", "analysis"), &[]).json();
    let leaked = first["token"].as_str().unwrap().to_string();
    let intruder = bearer(&w, "lab-1@clients", "analysis");
    assert_eq!(
        call(&w, &intruder, &[]).status,
        200,
        "the intruder may call the skill on its own"
    );
    let refused = |r: &agentplane_e2e::Response| {
        assert_eq!(r.status, 403, "{}", r.body);
        let b = r.json();
        assert_eq!(
            b["reason"],
            "invalid_txn_token: presented by an agent that is neither its subject nor one of its actors"
        );
        assert!(b["decision_id"].is_string());
        assert_eq!(b["decision_id"].as_str(), r.header("x-decision-id"));
    };
    refused(&call(&w, &intruder, &[("txn-token", &leaked)]));
    // Its own (verified, cached) token serves the analyst as before.
    let own = call(
        &w,
        &bearer(&w, "analyst@clients", "analysis"),
        &[("txn-token", &leaked)],
    );
    assert_eq!(own.status, 200, "{}", own.body);
    // The orchestrator acting for the analyst carries the transaction on;
    // the token it gets names it, so it may present that one itself.
    let next = call(
        &w,
        &acting_for_analyst(&w, &["skills:invoke", "data:read"]),
        &[("txn-token", &leaked)],
    );
    assert_eq!(next.status, 200, "{}", next.body);
    let hop2 = next.json()["token"].as_str().unwrap().to_string();
    let orchestrator = bearer(&w, "orchestrator@clients", "orchestrator");
    let on = call(&w, &orchestrator, &[("txn-token", &hop2)]);
    assert_eq!(on.status, 200, "{}", on.body);
    assert_eq!(on.json()["claims"]["sub"], "analyst@clients");
    // The intruder fares no better with the later hop's token, nor does
    // the orchestrator with the first (it is not named there).
    refused(&call(&w, &intruder, &[("txn-token", &hop2)]));
    refused(&call(&w, &orchestrator, &[("txn-token", &leaked)]));
}

/// The same claims and header, signed by another key.
fn forge(token: &str, seed: [u8; 32]) -> String {
    let claims = part(token, 1);
    let mut kv = json!({"data": {"data": {"kid": part(token, 0)["kid"], "d": agentplane_e2e::base64url(&seed)}}});
    let ring = agentplane_core::txn::Keyring::from_kv(kv.take().to_string().as_bytes()).unwrap();
    let c: agentplane_core::txn::TxnClaims = serde_json::from_value(claims.clone()).unwrap();
    agentplane_core::txn::mint(
        ring.current.as_ref().unwrap(),
        c,
        claims["iat"].as_i64().unwrap(),
        60,
    )
    .unwrap()
}

/// The token with one claim changed and the original signature.
fn edit(token: &str, claim: &str, value: &str) -> String {
    let mut c = part(token, 1);
    c[claim] = json!(value);
    let p: Vec<&str> = token.split('.').collect();
    format!(
        "{}.{}.{}",
        p[0],
        agentplane_e2e::base64url(c.to_string().as_bytes()),
        p[2]
    )
}

fn part(token: &str, i: usize) -> Value {
    use base64::Engine;
    let p = token.split('.').nth(i).unwrap();
    let raw = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(p)
        .unwrap();
    serde_json::from_slice(&raw).unwrap()
}
