//! Registrations at the identity provider (`idp/server.mjs`): an agent
//! cannot change its own grants, only the administrator's token changes or
//! deletes a registration, the registration and administrator tokens each
//! do only their own job, the data file is private, and the provider
//! listens on loopback unless told otherwise.

use agentplane_e2e::provider::{agent_cli, agent_metadata, IdProvider, Registered};
use base64::Engine;
use serde_json::{json, Value};
use std::collections::BTreeSet;

const NS: &str = "https://mcp.example.com/";

/// What an escalating agent would write into its own registration.
fn escalated(client_id: &str) -> Value {
    let mut m = agent_metadata(
        "ml-helper",
        "admin",
        "billing",
        "production",
        &["skills:invoke", "tickets:delete"],
    );
    m["client_id"] = json!(client_id);
    m
}

/// Its claims still say what it was registered with.
fn assert_original_grants(idp: &IdProvider, agent: &Registered) {
    let c = idp.token_claims(agent, "skills:invoke");
    assert_eq!(c["permissions"], json!(["skills:invoke"]), "{c}");
    assert_eq!(c[format!("{NS}agent_type")], "assistant", "{c}");
    assert_eq!(c[format!("{NS}team")], "ml", "{c}");
    assert_eq!(c[format!("{NS}environment")], "staging", "{c}");
    // Asking for more gets nothing more.
    let asked = idp.token_claims(agent, "skills:invoke tickets:delete");
    assert_eq!(asked["permissions"], json!(["skills:invoke"]), "{asked}");
    assert_eq!(asked["scope"], "skills:invoke", "{asked}");
}

/// Tries every credential the agent holds, as a bearer token and as HTTP
/// Basic client authentication, against every route that could rewrite
/// its registration: RFC 7592's `PUT /reg/<id>` (at the URI the provider
/// named too, if any) and the administrator's route.
fn try_to_rewrite(idp: &IdProvider, client_id: &str, held: &Value) {
    let secret = held["client_secret"].as_str().unwrap_or_default();
    let basic = base64::engine::general_purpose::STANDARD.encode(format!("{client_id}:{secret}"));
    let mut auths = vec![format!("Basic {basic}")];
    auths.extend(
        held.as_object()
            .into_iter()
            .flatten()
            .filter_map(|(_, v)| v.as_str())
            .map(|v| format!("Bearer {v}")),
    );
    let mut paths = vec![
        format!("/reg/{client_id}"),
        format!("/admin/clients/{client_id}"),
    ];
    if let Some((_, rest)) = held["registration_client_uri"]
        .as_str()
        .and_then(|u| u.split_once("/reg"))
    {
        paths.push(format!("/reg{rest}"));
    }
    for path in &paths {
        for auth in &auths {
            let mut body = escalated(client_id);
            if path.starts_with("/reg") {
                body["client_secret"] = json!(secret);
            }
            for method in ["PUT", "PATCH", "POST"] {
                let r = idp.request(method, path, auth, &body);
                assert!(
                    r.status >= 400,
                    "{method} {path} with the agent's {} answered {}: {}",
                    auth.split(' ').next().unwrap_or_default(),
                    r.status,
                    r.body
                );
            }
        }
    }
}

/// An agent registered with `skills:invoke`, team `ml`, `staging` holds
/// what `agentplane-agent register` printed (and, registered directly,
/// whatever the provider answered). With none of it can it rewrite its
/// registration to `tickets:delete`, `admin`, `billing`, `production`:
/// its next token carries only what it was registered with.
#[test]
fn an_agent_cannot_rewrite_its_own_registration_to_gain_grants() {
    let idp = IdProvider::start();
    let out = agentplane_e2e::run_ok(
        agent_cli()
            .args(["register", "--idp", &idp.issuer(), "--initial-access-token"])
            .arg(&idp.initial_access_token)
            .args(["--name", "ml-helper", "--type", "assistant", "--team", "ml"])
            .args(["--env", "staging", "--perm", "skills:invoke"]),
    );
    let bundle: Value = serde_json::from_slice(&out).unwrap();
    let agent = Registered {
        client_id: bundle["client_id"].as_str().unwrap().into(),
        client_secret: bundle["client_secret"].as_str().unwrap().into(),
    };
    try_to_rewrite(&idp, &agent.client_id, &bundle);
    assert_original_grants(&idp, &agent);
    // The bundle is the agent's own credentials and nothing that manages
    // its registration.
    let fields: BTreeSet<&str> = bundle
        .as_object()
        .unwrap()
        .keys()
        .map(String::as_str)
        .collect();
    assert_eq!(
        fields,
        BTreeSet::from(["client_id", "client_secret"]),
        "{bundle}"
    );

    // Registered directly: the provider's own answer hands out no
    // registration access token, and nothing in it rewrites the grants.
    let metadata = agent_metadata(
        "ml-direct",
        "assistant",
        "ml",
        "staging",
        &["skills:invoke"],
    );
    let answer = idp
        .post_registration(&idp.initial_access_token, &metadata)
        .json();
    assert!(answer["registration_access_token"].is_null(), "{answer}");
    let direct = Registered {
        client_id: answer["client_id"].as_str().unwrap().into(),
        client_secret: answer["client_secret"].as_str().unwrap().into(),
    };
    try_to_rewrite(&idp, &direct.client_id, &answer);
    assert_original_grants(&idp, &direct);
}

/// Changing an agent's grants or deleting it takes the administrator's
/// token: the initial access token, the agent's secret and no token at
/// all are refused; the administrator's change reaches the next token,
/// and a change outside the agent attributes or malformed is refused.
#[test]
fn only_the_administrator_changes_or_deletes_a_registration() {
    let idp = IdProvider::start();
    let agent = idp.register(
        "ml-helper",
        "assistant",
        "ml",
        "staging",
        &["skills:invoke"],
    );
    let path = format!("/admin/clients/{}", agent.client_id);
    let change = json!({"permissions": ["skills:invoke", "data:read"], "team": "research"});
    for auth in [
        format!("Bearer {}", idp.initial_access_token),
        format!("Bearer {}", agent.client_secret),
        String::new(),
    ] {
        for method in ["PUT", "DELETE"] {
            let r = idp.request(method, &path, &auth, &change);
            assert_eq!(r.status, 401, "{method} with {auth:?}: {}", r.body);
        }
    }
    assert_original_grants(&idp, &agent);

    let admin = format!("Bearer {}", idp.admin_token);
    for refused in [
        json!({"client_secret": "chosen-by-me"}),
        json!({"grant_types": ["client_credentials", "refresh_token"]}),
        json!({"permissions": ["skills:invoke data:write"]}),
        json!({"team": ""}),
        json!({}),
        json!(["permissions"]),
    ] {
        let r = idp.request("PUT", &path, &admin, &refused);
        assert_eq!(r.status, 400, "{refused}: {}", r.body);
    }
    assert_original_grants(&idp, &agent);
    let unknown = idp.request("PUT", "/admin/clients/nobody", &admin, &change);
    assert_eq!(unknown.status, 404, "{}", unknown.body);

    let r = idp.request("PUT", &path, &admin, &change);
    assert_eq!(r.status, 200, "{}", r.body);
    let c = idp.token_claims(&agent, "skills:invoke data:read");
    assert_eq!(
        c["permissions"],
        json!(["skills:invoke", "data:read"]),
        "{c}"
    );
    assert_eq!(c[format!("{NS}team")], "research", "{c}");
    assert_eq!(c[format!("{NS}environment")], "staging", "{c}");

    assert_eq!(idp.deregister(&agent).status, 204);
    assert_eq!(idp.token_response(&agent, "skills:invoke").status, 401);
    assert_eq!(idp.deregister(&agent).status, 404);
}

/// The initial access token registers agents and does nothing else: it
/// cannot publish or switch signing keys.
#[test]
fn the_registration_token_cannot_rotate_keys() {
    let idp = IdProvider::start();
    let before = idp.jwks();
    for step in ["publish", "sign"] {
        let auth = format!("Bearer {}", idp.initial_access_token);
        let r = idp.request("POST", &format!("/admin/keys/{step}"), &auth, &Value::Null);
        assert_eq!(r.status, 401, "{step}: {}", r.body);
    }
    assert_eq!(idp.jwks(), before);
    idp.keys("publish");
    assert_ne!(idp.jwks(), before, "the administrator's token rotates");
}

/// The administrator's token rotates keys and manages registrations but
/// cannot create an agent, and the provider refuses to start with one
/// token for both jobs.
#[test]
fn the_admin_token_cannot_register_agents() {
    let idp = IdProvider::start();
    let metadata = agent_metadata("x", "assistant", "ml", "staging", &["skills:invoke"]);
    let r = idp.post_registration(&idp.admin_token, &metadata);
    assert_eq!(r.status, 401, "{}", r.body);
    assert_eq!(
        idp.post_registration(&idp.initial_access_token, &metadata)
            .status,
        201
    );
    for env in [
        vec![("INITIAL_ACCESS_TOKEN", "same"), ("ADMIN_TOKEN", "same")],
        vec![("ADMIN_TOKEN", "no-registration-token")],
    ] {
        assert!(IdProvider::spawn(&env).is_err(), "started with {env:?}");
    }
}

/// Without `ADMIN_TOKEN` nobody administers: no token, an empty one or
/// the registration token neither rotates keys nor touches an agent.
#[test]
fn without_an_admin_token_nobody_administers() {
    let idp = IdProvider::spawn(&[("INITIAL_ACCESS_TOKEN", "iat-alone")]).unwrap();
    let agent = idp.register("x", "assistant", "ml", "staging", &["skills:invoke"]);
    let client = format!("/admin/clients/{}", agent.client_id);
    let change = json!({"permissions": ["tickets:delete"]});
    for auth in ["", "Bearer", "Bearer ", "Bearer iat-alone"] {
        for (method, path) in [
            ("POST", "/admin/keys/publish"),
            ("PUT", client.as_str()),
            ("DELETE", client.as_str()),
        ] {
            let r = idp.request(method, path, auth, &change);
            assert_eq!(r.status, 401, "{method} {path} with {auth:?}: {}", r.body);
        }
    }
    assert_original_grants(&idp, &agent);
}

/// The data file holds every agent's client secret: it is the provider's
/// alone (0600), also when it existed before with a looser mode.
#[test]
fn the_idp_data_file_is_private() {
    use std::os::unix::fs::PermissionsExt;
    let file = std::env::temp_dir().join(format!(
        "agentplane-idp-private-{}.json",
        std::process::id()
    ));
    std::fs::write(&file, "{}").unwrap();
    std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o644)).unwrap();
    let idp = IdProvider::start_with("iat-private", Some(&file));
    // Octal text, so a failure reads as a mode.
    let mode = |f: &std::path::Path| {
        format!(
            "{:o}",
            std::fs::metadata(f).unwrap().permissions().mode() & 0o777
        )
    };
    assert_eq!(mode(&file), "600", "the existing file, at start");
    idp.register("kept", "assistant", "ml", "staging", &["skills:invoke"]);
    let written = mode(&file);
    let text = std::fs::read_to_string(&file).unwrap_or_default();
    std::fs::remove_file(&file).ok();
    assert!(text.contains("kept"), "the registration was not written");
    assert_eq!(written, "600", "the file as written");
}

/// Without `BIND_ADDRESS` the provider listens on 127.0.0.1 only (another
/// loopback address, as any other interface, finds nothing);
/// `BIND_ADDRESS` moves it, as compose does so that the other containers
/// reach it.
#[test]
fn the_idp_listens_on_loopback_only_unless_told_otherwise() {
    use std::net::TcpStream;
    let idp = IdProvider::start();
    assert!(TcpStream::connect(("127.0.0.1", idp.port)).is_ok());
    assert!(TcpStream::connect(("127.0.0.2", idp.port)).is_err());
    let moved = IdProvider::spawn(&[
        ("INITIAL_ACCESS_TOKEN", "iat-moved"),
        ("ADMIN_TOKEN", "admin-moved"),
        ("BIND_ADDRESS", "127.0.0.2"),
    ])
    .unwrap();
    assert!(TcpStream::connect(("127.0.0.2", moved.port)).is_ok());
}
