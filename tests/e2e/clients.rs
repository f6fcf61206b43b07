//! MCP at the edges: real MCP clients of every protocol era and the
//! official conformance suite, through Envoy + jwt_authn + agentplane.
//!
//! The clients are the official SDKs, run as their users run them:
//! `tests/clients/ts_client.mjs` (TypeScript SDK) and
//! `tests/clients/py_client.py` (Python SDK), each printing one JSON line
//! of what the SDK handed back; plus a hand-written 2025-03-26 client here
//! (plain HTTP, no `MCP-Protocol-Version` header: that era had none). The
//! conformance suite (`@modelcontextprotocol/conformance`) runs its server
//! scenarios against `@modelcontextprotocol/server-everything` directly and
//! through the filter; the two must pass the same checks. Node packages are
//! pinned in `tests/clients/package.json`, the Python SDK in build.sh
//! (`ensure_mcp_clients`). Every subprocess is time-bound and stopped on
//! drop, also when a test fails.

pub(crate) mod procs;

use agentplane_e2e::{add_mcp_service, http, serve_skill, Envoy, Idp, Stack, Upstream};
use procs::{clients_dir, node, python, run, Scratch, Service};
use serde_json::{json, Value};
use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::process::Command;
use std::time::Duration;

const HANDSHAKE_ERAS: [&str; 4] = ["2024-11-05", "2025-03-26", "2025-06-18", "2025-11-25"];
const DENIED_REASON: &str =
    "tool lookup_ticket is limited to the agent's own team: argument team must be customer-success";
/// JSON-RPC codes the filter answers with over HTTP 200 (no SDK uses -32031).
const METHOD_NOT_FOUND: i64 = -32601;

/// The tickets skill (rmcp) behind Envoy + agentplane as `tickets-mcp`.
struct Tickets {
    envoy: Envoy,
    idp: Idp,
    _upstream: Upstream,
    // Dropped last: stops the skill's server.
    _rt: tokio::runtime::Runtime,
}

impl Tickets {
    fn start() -> Tickets {
        let rt = tokio::runtime::Runtime::new().unwrap();
        let skill_port = serve_skill(&rt, agentplane_skills::serve);
        let mut cfg = agentplane_e2e::logged_plugin_config();
        agentplane_e2e::add_tickets_mcp(&mut cfg);
        let Stack {
            idp,
            upstream,
            envoy,
        } = Stack::build(&cfg.to_string())
            .route("tickets-mcp", skill_port)
            .start();
        Tickets {
            envoy,
            idp,
            _upstream: upstream,
            _rt: rt,
        }
    }

    fn token(&self, perms: &[&str]) -> String {
        self.idp.triage_token_with(perms)
    }

    /// A session's token: connect, list and call tools; no resources.
    fn session_token(&self) -> String {
        self.token(&["mcp:connect", "tools:list", "tools:call"])
    }

    fn url(&self) -> String {
        format!("http://127.0.0.1:{}/mcp://tickets-mcp/mcp", self.envoy.port)
    }

    /// Runs a client script and parses its one JSON line.
    fn client(&self, program: &Path, script: &str, era: &str) -> Value {
        let (out, err) = run(
            Command::new(program)
                .arg(clients_dir().join(script))
                .arg(self.url())
                .arg(era)
                .current_dir(clients_dir())
                .env("MCP_TOKEN", self.session_token()),
            Duration::from_secs(90),
        );
        // Shown with the test's output when it fails.
        eprintln!("{script} {era}: {}", out.trim());
        serde_json::from_str(out.trim())
            .unwrap_or_else(|e| panic!("{script} {era}: {e}: {out:?}\nstderr:\n{err}"))
    }

    /// The denied call came back as a tool result: `isError`, the
    /// policy's reason and a decision id that the decision log has.
    fn assert_denied_as_tool_error(&self, who: &str, denied: &Value) {
        assert_eq!(denied["isError"], true, "{who}: {denied}");
        let text = denied["content"][0]["text"].as_str().unwrap_or_default();
        // "<reason> (decision <id>)", the reason word for word; a lead-in
        // before it (e.g. "Refused by policy: ") is the filter's to choose.
        let id = text
            .split_once(DENIED_REASON)
            .and_then(|(_, t)| t.strip_prefix(" (decision "))
            .and_then(|t| t.strip_suffix(')'))
            .unwrap_or_else(|| panic!("{who}: {text:?} is not '<reason> (decision <id>)'"));
        assert!(!id.is_empty(), "{who}: {text:?}");
        let rec = self.envoy.decision_record(id);
        assert_eq!(rec["result"]["allowed"], false, "{who}: {rec}");
        assert_eq!(rec["input"]["mcp"]["tool"], "lookup_ticket", "{who}: {rec}");
    }
}

/// Runs `check` for every era, all of them even when one fails (each
/// failure's message is printed as it happens), then fails naming every
/// era that did.
fn each_era<'a>(eras: impl IntoIterator<Item = &'a str>, check: impl Fn(&str)) {
    let failed: Vec<&str> = eras
        .into_iter()
        .filter(|era| {
            std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| check(era))).is_err()
        })
        .collect();
    assert!(
        failed.is_empty(),
        "failed in eras {failed:?} (messages above)"
    );
}

/// The client ended its session with one DELETE, and the server did it.
fn assert_deleted(who: &str, http: &[Value]) {
    let deletes: Vec<&Value> = http.iter().filter(|x| x["method"] == "DELETE").collect();
    assert_eq!(deletes.len(), 1, "{who}: {http:?}");
    let status = deletes[0]["status"].as_u64();
    assert!(
        matches!(status, Some(200..=204)),
        "{who}: DELETE {status:?}"
    );
}

/// What every era's client must have seen of the tickets server.
fn assert_session(t: &Tickets, who: &str, r: &Value, era: &str) {
    assert!(r.get("connect").is_none(), "{who}: {r}");
    assert_eq!(r["negotiated"], era, "{who}: {r}");
    assert_eq!(
        r["tools"],
        json!(["lookup_ticket", "search_docs", "update_ticket"]),
        "{who}: {r}"
    );
    assert_ne!(r["allowed"]["isError"], true, "{who}: {r}");
    let ok = r["allowed"]["content"][0]["text"].as_str().unwrap_or("");
    assert!(ok.contains("articles match"), "{who}: {r}");
    t.assert_denied_as_tool_error(who, &r["denied"]);
    // resources/list without resources:list: a scope the client can step
    // up to, so the MCP authorization answer: 403 insufficient_scope (a
    // refusal the policy decides otherwise is a JSON-RPC answer, HTTP 200:
    // see the denied tool call above and the unmapped method).
    assert!(r["denied_method"].get("listed").is_none(), "{who}: {r}");
    let http = r["http"].as_array().unwrap();
    let scoped: Vec<&Value> = http
        .iter()
        .filter(|x| x["rpc"] == "resources/list")
        .collect();
    assert!(!scoped.is_empty(), "{who}: {r}");
    for x in &scoped {
        assert_eq!(x["status"], 403, "{who}: {x}");
    }
    for x in http
        .iter()
        .filter(|x| x["method"] == "POST" && x["rpc"] != "resources/list")
    {
        assert_eq!(
            x["status"].as_u64().map(|s| s < 300),
            Some(true),
            "{who}: {x} in {r}"
        );
    }
}

/// The TypeScript SDK, offering each handshake era: a whole session, the
/// denied call handed to the model as a tool error with the reason and a
/// decision id (callTool resolves, it does not throw), a forbidden and an
/// unmapped method as JSON-RPC errors, and DELETE ending the session.
#[test]
fn the_typescript_sdk_completes_a_session_in_every_era_and_gets_denials_as_tool_errors() {
    let t = Tickets::start();
    each_era(HANDSHAKE_ERAS, |era| {
        let who = format!("TypeScript SDK {era}");
        let r = t.client(&node(), "ts_client.mjs", era);
        assert_session(&t, &who, &r, era);
        assert_eq!(r["session"], true, "{who}: {r}");
        assert_eq!(r["unmapped"]["code"], METHOD_NOT_FOUND, "{who}: {r}");
        assert_eq!(r["terminated"], true, "{who}: {r}");
        let http = r["http"].as_array().unwrap();
        // After initialize, every request names the negotiated era.
        for x in http.iter().filter(|x| x["rpc"] != "initialize") {
            assert_eq!(x["version"], era, "{who}: {x}");
            assert_eq!(x["auth"], true, "{who}: {x}");
        }
        assert_deleted(&who, http);
        // The denied call was HTTP 200: a tool result, not a transport error.
        let call_statuses: Vec<u64> = http
            .iter()
            .filter(|x| x["rpc"] == "tools/call")
            .filter_map(|x| x["status"].as_u64())
            .collect();
        assert_eq!(call_statuses, [200, 200], "{who}: {r}");
    });
}

/// The Python SDK in every era it speaks: the four handshake eras
/// (initialize, session, DELETE on close) and 2026-07-28 (server/discover,
/// stateless, no session to end).
#[test]
fn the_python_sdk_completes_a_session_in_every_era() {
    let t = Tickets::start();
    let py = python();
    each_era(HANDSHAKE_ERAS.into_iter().chain(["2026-07-28"]), |era| {
        let who = format!("Python SDK {era}");
        let r = t.client(&py, "py_client.py", era);
        assert_session(&t, &who, &r, era);
        let http = r["http"].as_array().unwrap();
        if era == "2026-07-28" {
            // Stateless: discovered, no session, nothing to end.
            assert!(http.iter().all(|x| x["method"] != "DELETE"), "{who}: {r}");
            let discover = http.iter().any(|x| x["rpc"] == "server/discover");
            assert!(discover, "{who}: {r}");
        } else {
            assert_deleted(&who, http);
        }
        for x in http.iter().filter(|x| x["rpc"] != "initialize") {
            assert_eq!(x["version"], era, "{who}: {x}");
        }
    });
}

/// The JSON-RPC messages of a response, JSON or event stream.
fn messages(r: &agentplane_e2e::Response) -> Vec<Value> {
    if r.header("content-type")
        .is_some_and(|c| c.starts_with("text/event-stream"))
    {
        r.body
            .lines()
            .filter_map(|l| l.strip_prefix("data:"))
            .filter_map(|d| serde_json::from_str(d.trim()).ok())
            .collect()
    } else if r.body.trim().is_empty() {
        Vec::new()
    } else {
        vec![r.json()]
    }
}

/// A 2025-03-26 client as that revision's spec reads, by hand: no
/// `MCP-Protocol-Version` header (it came in 2025-06-18), the session id
/// from initialize on every later request. Its session completes, the
/// denied call is a tool result with isError over HTTP 200, and DELETE
/// ends the session even with a token that may do nothing else (the
/// shipped policy always lets an agent end a session).
#[test]
fn a_hand_written_2025_03_26_client_completes_a_session() {
    let t = Tickets::start();
    let auth = format!("Bearer {}", t.session_token());
    let path = "/mcp://tickets-mcp/mcp";
    let post = |session: Option<&str>, body: Value| {
        let mut h = vec![
            ("authorization", auth.as_str()),
            ("content-type", "application/json"),
            ("accept", "application/json, text/event-stream"),
        ];
        if let Some(s) = session {
            h.push(("mcp-session-id", s));
        }
        http(t.envoy.port, "POST", path, &h, &body.to_string())
    };
    let init = post(
        None,
        json!({"jsonrpc": "2.0", "id": 1, "method": "initialize", "params": {
            "protocolVersion": "2025-03-26", "capabilities": {},
            "clientInfo": {"name": "hand-written", "version": "1"}}}),
    );
    assert_eq!(init.status, 200, "{init:?}");
    let session = init
        .header("mcp-session-id")
        .expect("a session")
        .to_string();
    let m = messages(&init);
    assert_eq!(m[0]["result"]["protocolVersion"], "2025-03-26", "{init:?}");
    let s = Some(session.as_str());
    let note = post(
        s,
        json!({"jsonrpc": "2.0", "method": "notifications/initialized"}),
    );
    assert_eq!(note.status, 202, "{note:?}");

    let list = post(
        s,
        json!({"jsonrpc": "2.0", "id": 2, "method": "tools/list"}),
    );
    assert_eq!(list.status, 200, "{list:?}");
    let tools = messages(&list)[0]["result"]["tools"].clone();
    let mut names: Vec<&str> = tools
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|x| x["name"].as_str())
        .collect();
    names.sort_unstable();
    assert_eq!(names, ["lookup_ticket", "search_docs", "update_ticket"]);

    let call = |id: u32, name: &str, args: Value| {
        let r = post(
            s,
            json!({"jsonrpc": "2.0", "id": id, "method": "tools/call",
                   "params": {"name": name, "arguments": args}}),
        );
        assert_eq!(r.status, 200, "{name}: {r:?}");
        let m = messages(&r);
        assert_eq!(m.len(), 1, "{r:?}");
        assert_eq!(m[0]["id"], id, "{r:?}");
        m[0]["result"].clone()
    };
    let ok = call(3, "search_docs", json!({"query": "vpn"}));
    let text = ok["content"][0]["text"].as_str().unwrap_or_default();
    assert!(text.contains("articles match"), "{ok}");
    let denied = call(4, "lookup_ticket", json!({"team": "ml", "id": "T-9"}));
    t.assert_denied_as_tool_error("hand-written 2025-03-26", &denied);

    // Ending the session needs no permission of its own.
    let nothing = format!("Bearer {}", t.token(&["tools:list"]));
    let del = http(
        t.envoy.port,
        "DELETE",
        path,
        &[("authorization", &nothing), ("mcp-session-id", &session)],
        "",
    );
    assert!(matches!(del.status, 200..=204), "{del:?}");
    // The session is over: its id is known neither to the filter (the
    // DELETE freed its binding) nor to the server.
    let after = post(
        s,
        json!({"jsonrpc": "2.0", "id": 5, "method": "tools/list"}),
    );
    assert_eq!(after.status, 404, "{after:?}");
}

/// Each conformance scenario's checks: scenario → check id → (status,
/// error message). Statuses are SUCCESS, FAILURE, WARNING; INFO entries
/// are logs, left out.
type Results = BTreeMap<String, BTreeMap<String, (String, String)>>;

fn conformance(url: &str) -> Results {
    let out = Scratch::new("conformance");
    let (stdout, stderr) = run(
        Command::new(node())
            .arg(clients_dir().join("node_modules/.bin/conformance"))
            .args(["server", "--url", url, "-o"])
            .arg(&out.0)
            .current_dir(clients_dir()),
        Duration::from_secs(300),
    );
    let mut all = BTreeMap::new();
    for e in std::fs::read_dir(&out.0).unwrap().flatten() {
        let dir = e.file_name().to_string_lossy().to_string();
        // server-<scenario>-<YYYY-MM-DDTHH-MM-SS-mmmZ>
        let name = dir
            .strip_prefix("server-")
            .and_then(|d| d.get(..d.len().saturating_sub(25)))
            .unwrap_or_else(|| panic!("unexpected result dir {dir}"))
            .to_string();
        let checks: Value =
            serde_json::from_str(&std::fs::read_to_string(e.path().join("checks.json")).unwrap())
                .unwrap();
        let mut by_id = BTreeMap::new();
        for c in checks.as_array().unwrap() {
            let status = c["status"].as_str().unwrap_or("");
            if status != "INFO" {
                let why = c["errorMessage"].as_str().unwrap_or("");
                by_id.insert(
                    c["id"].as_str().unwrap_or("").to_string(),
                    (status.to_string(), why.to_string()),
                );
            }
        }
        all.insert(name, by_id);
    }
    assert!(
        all.len() >= 30,
        "only {} scenarios ran:\n{stdout}\n{stderr}",
        all.len()
    );
    all
}

fn passed(results: &Results) -> BTreeSet<String> {
    results
        .iter()
        .flat_map(|(s, checks)| {
            checks
                .iter()
                .filter(|(_, (st, _))| st.as_str() == "SUCCESS")
                .map(move |(c, _)| format!("{s}/{c}"))
        })
        .collect()
}

/// The official conformance suite's server scenarios against the
/// reference "everything" server, once directly and once through Envoy +
/// jwt_authn + agentplane (the server registered as an MCP service, a
/// token allowed every MCP action it uses, added by a forwarder since the
/// CLI sends no headers). Every check that passes directly passes through
/// the filter, and no other. Scenarios the everything server fails
/// directly (it does not implement the suite's test_* tools, prompts and
/// resources, nor DNS-rebinding checks) fail the same way through it.
#[test]
fn the_conformance_suite_passes_the_same_checks_through_agentplane_as_directly() {
    let dir = clients_dir();
    let everything = Service::start(
        "server-everything",
        Command::new(node())
            .arg(dir.join("everything.mjs"))
            .current_dir(&dir),
    );
    let direct = conformance(&format!("http://127.0.0.1:{}/mcp", everything.port));

    let mut cfg = agentplane_e2e::logged_plugin_config();
    add_mcp_service(&mut cfg, "everything");
    let Stack {
        idp,
        upstream: _upstream,
        envoy,
    } = Stack::build(&cfg.to_string())
        .route("everything", everything.port)
        .start();
    let perms =
        "mcp:connect tools:list tools:call resources:list resources:read prompts:list prompts:get";
    let perms: Vec<&str> = perms.split(' ').collect();
    let token = idp.agent_token(
        "support-triage@clients",
        "customer-success",
        "support",
        "production",
        &perms,
    );
    let forwarder = Service::start(
        "auth-forwarder",
        Command::new(node())
            .arg(dir.join("auth_forwarder.mjs"))
            .arg(envoy.port.to_string())
            .arg("/mcp://everything")
            .env("MCP_TOKEN", &token)
            .current_dir(&dir),
    );
    let through = conformance(&format!("http://127.0.0.1:{}/mcp", forwarder.port));

    let table = |r: &Results| -> String {
        let mut t = String::new();
        for (scenario, checks) in r {
            for (id, (status, why)) in checks {
                t.push_str(&format!("  {scenario}/{id}: {status} {why}\n"));
            }
        }
        t
    };
    eprintln!(
        "direct:\n{}through agentplane:\n{}",
        table(&direct),
        table(&through)
    );
    // The comparison means something only if the server passes the core
    // of the suite on its own.
    let direct_passed = passed(&direct);
    for core in [
        "server-initialize/server-initialize",
        "ping/ping",
        "tools-list/tools-list",
        "tools-call-simple-text/tools-call-simple-text",
        "resources-list/resources-list",
        "prompts-list/prompts-list",
    ] {
        assert!(
            direct_passed.contains(core),
            "{core} fails directly:\n{}",
            table(&direct)
        );
    }
    assert_eq!(
        direct.keys().collect::<Vec<_>>(),
        through.keys().collect::<Vec<_>>()
    );
    assert_eq!(
        passed(&through),
        direct_passed,
        "through agentplane vs directly"
    );
    // The suite's requests were decided on their MCP messages, and none
    // was refused along the way.
    let records = envoy.decision_records();
    let calls = records
        .iter()
        .filter(|r| r["input"]["mcp"]["method"] == "tools/call");
    assert!(calls.count() > 0, "no tools/call decided: {records:?}");
    let denied: Vec<&Value> = records
        .iter()
        .filter(|r| r["result"]["allowed"] == false)
        .collect();
    assert!(denied.is_empty(), "denied through agentplane: {denied:?}");
}
