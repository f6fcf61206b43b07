//! The compose stack, checked offline: it runs the demo's Envoy config and
//! OpenBao steps, and, attacked on paper, who can reach whom, which ports
//! and addresses are open, which service holds which secret, and that no
//! secret is well known.

use super::{run, temp};
use agentplane_e2e::deploy::compose::{
    compose_config, compose_config_text, mounts, named_volumes, neighbours, networks, ports,
    services, yaml_to_json, ComposeBao,
};
use agentplane_e2e::deploy::{render_profile, COMPOSE, EXAMPLE};
use agentplane_e2e::{repo_root, Idp, AUDIENCE, ISSUER};
use serde_json::{json, Value};
use std::collections::BTreeSet;
use std::process::Command;

#[test]
fn the_compose_stack_runs_the_demos_envoy_config_and_openbao_steps() {
    let (ok, text) = compose_config_text();
    assert!(
        ok,
        "docker-compose config refused docker-compose.yml:\n{text}"
    );
    let root = repo_root().display().to_string();
    for mount in [
        format!("{root}/deploy/compose/envoy.yaml:/etc/envoy/envoy.yaml:ro"),
        format!("{root}/target/agentplane.wasm:{}:ro", COMPOSE.wasm),
        format!("{root}/deploy/openbao/init.sh:/agentplane/init.sh:ro"),
        format!("{root}/deploy/openbao/openbao.hcl:/agentplane/openbao.hcl:ro"),
        format!("{root}/deploy/compose/secrets.sh:/agentplane/secrets.sh:ro"),
    ] {
        assert!(text.contains(&mount), "compose lacks {mount}:\n{text}");
    }
    for service in [
        "secrets:",
        "demo-register:",
        "postgres:",
        "openbao:",
        "openbao-init:",
        "idp:",
        "skills:",
        "tickets:",
        "envoy:",
        "demo-agent:",
    ] {
        assert!(
            text.contains(&format!("\n  {service}")),
            "no service {service}"
        );
    }
    // Every image is pinned by version, never `latest`.
    for line in text
        .lines()
        .filter(|l| l.trim_start().starts_with("image:"))
    {
        let image = line.trim_start().trim_start_matches("image:").trim();
        assert!(
            image.contains(':') && !image.ends_with(":latest"),
            "unpinned image {image}"
        );
    }
    // The compose Envoy names the compose services, the demo's loopback.
    let y = std::fs::read_to_string(repo_root().join(COMPOSE.out)).unwrap();
    assert!(y.contains("address: openbao, port_value: 8200"));
    assert!(y.contains("uri: \"http://idp:3000/jwks\""));
}

#[test]
fn compose_skills_are_unreachable_except_through_envoy() {
    let c = compose_config();
    for skill in ["skills", "tickets"] {
        // A published port would let the host call the skill directly,
        // with any x-agent-* header it likes.
        assert!(
            ports(&c, skill).is_empty(),
            "{skill} publishes {:?}",
            ports(&c, skill)
        );
        let nets = networks(&c, skill);
        assert!(!nets.is_empty(), "{skill} joins no network");
        for net in &nets {
            assert_eq!(
                c["networks"][net]["internal"],
                json!(true),
                "{skill} is on {net}, which is not internal"
            );
        }
        // Only Envoy (and the other skill) share its networks: nothing
        // else in the stack can skip the filter.
        let others: BTreeSet<_> = neighbours(&c, skill)
            .into_iter()
            .filter(|s| s != "skills" && s != "tickets")
            .collect();
        assert_eq!(
            others,
            BTreeSet::from(["envoy".to_string()]),
            "{skill} is reachable from {others:?}"
        );
    }
    // The same holds for the agents: they reach Envoy and the identity
    // provider, never a skill, OpenBao or PostgreSQL directly.
    let agent = neighbours(&c, "demo-agent");
    assert_eq!(
        agent,
        BTreeSet::from([
            "envoy".to_string(),
            "idp".to_string(),
            "demo-register".to_string()
        ]),
        "the demo agent reaches {agent:?}"
    );
    assert!(networks(&c, "demo-agent")
        .iter()
        .all(|n| c["networks"][n]["internal"] == json!(true)));
    // PostgreSQL: OpenBao alone (it issues the logins).
    let pg = neighbours(&c, "postgres");
    assert_eq!(pg, BTreeSet::from(["openbao".to_string()]), "{pg:?}");
    // Three services publish one port each, on the host's loopback only:
    // Envoy's agent listener, Grafana, and the collector's log intake
    // (the Docker daemon's logging driver connects to it from the host).
    let published = [
        ("envoy", "15000"),
        ("grafana", "3000"),
        ("otel-collector", "24224"),
    ];
    for service in services(&c) {
        let p = ports(&c, &service);
        match published.iter().find(|(s, _)| *s == service) {
            Some((_, port)) => assert_eq!(
                p,
                vec![("127.0.0.1".to_string(), port.to_string(), port.to_string())],
                "{service} publishes {p:?}"
            ),
            None => assert!(p.is_empty(), "{service} publishes {p:?}"),
        }
    }
    // The observability services reach Envoy, and none of the skills,
    // OpenBao, PostgreSQL, the provider or an agent.
    for service in ["prometheus", "grafana", "loki", "jaeger", "otel-collector"] {
        let reach = neighbours(&c, service);
        for forbidden in [
            "skills",
            "tickets",
            "openbao",
            "postgres",
            "idp",
            "demo-agent",
        ] {
            assert!(!reach.contains(forbidden), "{service} reaches {forbidden}");
        }
    }
}

#[test]
fn compose_envoy_admin_listens_on_loopback_only() {
    // The admin interface can quit Envoy, drain its listeners and dump its
    // configuration: no address but loopback may reach it.
    for (what, yaml) in [
        (
            COMPOSE.out.to_string(),
            std::fs::read_to_string(repo_root().join(COMPOSE.out)).unwrap(),
        ),
        ("a fresh compose render".into(), render_profile(&COMPOSE)),
        ("a fresh example render".into(), render_profile(&EXAMPLE)),
    ] {
        let v = yaml_to_json(&yaml);
        let admin = &v["admin"]["address"]["socket_address"];
        assert_eq!(
            admin["address"],
            json!("127.0.0.1"),
            "{what}: admin {admin}"
        );
        assert_eq!(admin["port_value"], json!(COMPOSE.admin), "{what}");
    }
    // The compose listener still binds every interface of its container
    // (Envoy's clients are other containers); only admin is pinned.
    let v = yaml_to_json(&render_profile(&COMPOSE));
    let listener = &v["static_resources"]["listeners"][0]["address"]["socket_address"];
    assert_eq!(listener["address"], json!("0.0.0.0"), "{listener}");
    // And the compose file does not publish it to the host either.
    let c = compose_config();
    let admin_port = COMPOSE.admin.to_string();
    assert!(
        ports(&c, "envoy")
            .iter()
            .all(|(_, _, target)| *target != admin_port),
        "envoy publishes its admin port: {:?}",
        ports(&c, "envoy")
    );
}

#[test]
fn compose_no_well_known_root_token_reaches_agents() {
    let raw = std::fs::read_to_string(repo_root().join("docker-compose.yml")).unwrap();
    // No value is fixed through a default either (`${VAR:-value}`): a
    // default in a public file is a well-known value.
    for (i, _) in raw.match_indices("${") {
        let inner = &raw[i + 2..i + 2 + raw[i + 2..].find('}').unwrap_or(0)];
        assert!(
            !inner.contains('-'),
            "docker-compose.yml: ${{{inner}}} has a default"
        );
    }
    let c = compose_config();
    for service in services(&c) {
        let s = &c["services"][service.as_str()];
        // No dev-mode OpenBao: its root token is whatever the file says.
        let argv = format!("{} {}", s["command"], s["entrypoint"]);
        assert!(!argv.contains("-dev"), "{service} runs {argv}");
        // No secret is a value in the file: secrets come from files in
        // volumes (`*_FILE`), which the next checks confine.
        if let Some(env) = s["environment"].as_object() {
            for key in env.keys() {
                let k = key.to_ascii_uppercase();
                let secret = ["TOKEN", "PASSWORD", "SECRET"]
                    .iter()
                    .any(|w| k.contains(w));
                let allowed = k.ends_with("_FILE") || k == "DEMO_TOKEN_OWNER";
                assert!(
                    !secret || allowed,
                    "{service} is given {key}={} by the compose file",
                    env[key]
                );
            }
        }
    }
    // The root token lives in the init job's directory, a volume no other
    // service mounts.
    let init_dir = c["services"]["openbao-init"]["environment"]["BAO_INIT_DIR"]
        .as_str()
        .expect("openbao-init has BAO_INIT_DIR")
        .to_string();
    let root_volume = mounts(&c, "openbao-init")
        .into_iter()
        .find(|(_, target)| *target == init_dir)
        .map(|(source, _)| source)
        .expect("BAO_INIT_DIR is a volume");
    for service in services(&c).into_iter().filter(|s| s != "openbao-init") {
        assert!(
            !named_volumes(&c, &service).contains(&root_volume),
            "{service} mounts the root token's volume {root_volume}"
        );
    }
    // The demo agent mounts nothing the setup jobs write (root token, its
    // registration's OpenBao token, the provider's initial access token,
    // PostgreSQL's password): only its own client credentials.
    let setup: BTreeSet<String> = ["openbao-init", "secrets"]
        .iter()
        .flat_map(|s| named_volumes(&c, s))
        .collect();
    let agent = named_volumes(&c, "demo-agent");
    assert!(
        agent.is_disjoint(&setup),
        "the demo agent mounts {:?}",
        agent.intersection(&setup).collect::<Vec<_>>()
    );
    assert_eq!(agent.len(), 1, "the demo agent mounts {agent:?}");
}

fn agents_env(idp: &Idp, demo_token: &std::path::Path) -> Vec<(&'static str, String)> {
    vec![
        ("ISSUER", ISSUER.into()),
        ("AUDIENCE", AUDIENCE.into()),
        ("JWT_PUBKEY", idp.public_pem()),
        ("DEMO_TOKEN_FILE", demo_token.display().to_string()),
    ]
}

#[test]
fn compose_openbao_root_token_is_drawn_at_init_kept_from_logs_and_setup_is_idempotent() {
    let idp = Idp::new();
    let mut bao = ComposeBao::start();
    let demo_token = bao.init_dir().join("demo-token");
    let env = agents_env(&idp, &demo_token);
    // A fresh server has no root token anyone could know.
    let (status, seal) = bao.call("", "GET", "/v1/sys/seal-status", &Value::Null);
    assert_eq!(
        (status, &seal["initialized"]),
        (200, &json!(false)),
        "{seal}"
    );
    let (ok, first) = bao.init("bootstrap agents demo", &env);
    assert!(ok, "init.sh:\n{first}\n{}", bao.log());
    let root = bao.root_token();
    let init_json = std::fs::read(bao.init_dir().join("init.json")).unwrap();
    let init: Value = serde_json::from_slice(&init_json).unwrap();
    let unseal_key = init["unseal_keys_b64"][0].as_str().unwrap().to_string();
    let demo = std::fs::read_to_string(&demo_token).unwrap();
    // Nothing secret reaches the job's output (the container's log).
    for (what, secret) in [
        ("root token", &root),
        ("unseal key", &unseal_key),
        ("demo token", &demo),
    ] {
        assert!(
            !first.contains(secret.trim()),
            "init.sh printed the {what}:\n{first}"
        );
    }
    use std::os::unix::fs::PermissionsExt;
    for f in ["init.json", "demo-token"] {
        let mode = std::fs::metadata(bao.init_dir().join(f))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o077, 0, "{f} is readable by others: {mode:o}");
    }
    let (status, me) = bao.call(&root, "GET", "/v1/auth/token/lookup-self", &Value::Null);
    assert_eq!(status, 200, "{me}");
    assert_eq!(me["data"]["policies"], json!(["root"]));
    let (_, mounts) = bao.call(&root, "GET", "/v1/sys/mounts/secret", &Value::Null);
    assert_eq!(mounts["options"]["version"], json!("2"), "{mounts}");
    // Again: the same server, the same keys (not initialized twice).
    let (ok, second) = bao.init("bootstrap agents demo", &env);
    assert!(ok, "second run:\n{second}");
    assert_eq!(
        std::fs::read(bao.init_dir().join("init.json")).unwrap(),
        init_json
    );
    // A restarted server is sealed; the job unseals it with the kept key.
    bao.restart();
    let (_, seal) = bao.call("", "GET", "/v1/sys/seal-status", &Value::Null);
    assert_eq!(seal["sealed"], json!(true), "{seal}");
    let (ok, third) = bao.init("bootstrap agents", &env);
    assert!(ok, "after a restart:\n{third}\n{}", bao.log());
    let (_, seal) = bao.call("", "GET", "/v1/sys/seal-status", &Value::Null);
    assert_eq!(seal["sealed"], json!(false), "{seal}");
    assert!(
        !third.contains(&unseal_key),
        "init.sh printed the unseal key"
    );
    assert_eq!(
        std::fs::read(bao.init_dir().join("init.json")).unwrap(),
        init_json
    );
    let (status, policy) = bao.call(&root, "GET", "/v1/sys/policies/acl/agent-kv", &Value::Null);
    assert_eq!(status, 200, "{policy}");
}

#[test]
fn compose_demo_registration_token_cannot_read_or_overwrite_agent_secrets() {
    let idp = Idp::new();
    let bao = ComposeBao::start();
    let demo_token = bao.init_dir().join("demo-token");
    let env = agents_env(&idp, &demo_token);
    let (ok, out) = bao.init("bootstrap agents demo", &env);
    assert!(ok, "init.sh:\n{out}");
    let root = bao.root_token();
    let victim = "/v1/secret/data/mcp/agents/victim/credentials";
    let (status, _) = bao.call(
        &root,
        "POST",
        victim,
        &json!({"data": {"api_key": "victim-key"}}),
    );
    assert_eq!(status, 200);
    // Each probe with a fresh token (the job makes one per run).
    let fresh = || {
        let (ok, out) = bao.init("bootstrap demo", &env);
        assert!(ok, "init.sh:\n{out}");
        std::fs::read_to_string(&demo_token)
            .unwrap()
            .trim()
            .to_string()
    };
    let t = fresh();
    let (_, me) = bao.call(&root, "POST", "/v1/auth/token/lookup", &json!({"token": t}));
    assert_eq!(me["data"]["policies"], json!(["demo-register"]), "{me}");
    assert_eq!(me["data"]["num_uses"], json!(1), "{me}");
    assert!(
        me["data"]["ttl"].as_u64().is_some_and(|ttl| ttl <= 900),
        "{me}"
    );
    let denied = [
        ("GET", victim, Value::Null, "read another agent's secret"),
        (
            "POST",
            victim,
            json!({"data": {"api_key": "planted"}}),
            "overwrite another agent's key",
        ),
        (
            "POST",
            "/v1/secret/data/agentplane/txn-signing",
            json!({"data": {"d": "x"}}),
            "write outside the agents' secrets",
        ),
        (
            "GET",
            "/v1/sys/policies/acl/agent-kv",
            Value::Null,
            "read the policies",
        ),
        (
            "POST",
            "/v1/auth/token/create",
            json!({}),
            "mint another token",
        ),
    ];
    for (method, path, body, what) in denied {
        let (status, answer) = bao.call(&fresh(), method, path, &body);
        assert_eq!(status, 403, "the demo token could {what}: {answer}");
    }
    let (_, kept) = bao.call(&root, "GET", victim, &Value::Null);
    assert_eq!(kept["data"]["data"]["api_key"], json!("victim-key"));
    // What it is for: a new agent's first secret, once.
    let t = fresh();
    let newcomer = "/v1/secret/data/mcp/agents/newcomer/credentials";
    let (status, answer) = bao.call(&t, "POST", newcomer, &json!({"data": {"api_key": "k"}}));
    assert_eq!(status, 200, "{answer}");
    let again = "/v1/secret/data/mcp/agents/second/credentials";
    let (status, _) = bao.call(&t, "POST", again, &json!({"data": {"api_key": "k"}}));
    assert_eq!(status, 403, "the demo token served a second write");
}

#[test]
fn compose_secrets_are_random_per_stack_not_well_known() {
    let draw = |name: &str| {
        let dir = temp(name);
        for sub in ["idp", "postgres", "grafana"] {
            std::fs::create_dir_all(dir.join(sub)).unwrap();
        }
        let run_once = || {
            let (ok, text) = run(Command::new("sh")
                .arg(repo_root().join("deploy/compose/secrets.sh"))
                .env("SECRETS_DIR", &dir));
            assert!(ok, "secrets.sh:\n{text}");
            let values: Vec<String> = [
                "idp/initial-access-token",
                "postgres/password",
                "grafana/admin-password",
            ]
            .iter()
            .map(|f| std::fs::read_to_string(dir.join(f)).unwrap())
            .collect();
            for v in &values {
                assert!(!text.contains(v.as_str()), "secrets.sh printed a secret");
                assert!(
                    v.len() == 64 && v.bytes().all(|b| b.is_ascii_hexdigit()),
                    "not 32 random bytes: {v:?}"
                );
            }
            values
        };
        let first = run_once();
        // A restart keeps them (PostgreSQL's data was made with this password).
        assert_eq!(run_once(), first);
        let _ = std::fs::remove_dir_all(&dir);
        first
    };
    let (a, b) = (draw("secrets-a"), draw("secrets-b"));
    let distinct: BTreeSet<&String> = a.iter().collect();
    assert_eq!(distinct.len(), a.len(), "one value for two secrets");
    assert!(
        a.iter().zip(&b).all(|(x, y)| x != y),
        "two stacks drew the same secrets"
    );
}
