//! MCP-aware traces end to end: Envoy traced as `envoy/tracing.yaml`
//! ships it, the filter with `tracing.attributes` on, rmcp's client
//! calling the tickets skill (an rmcp server) through them, and an OTLP/HTTP
//! receiver here decoding what Envoy's OpenTelemetry tracer exports
//! (`ExportTraceServiceRequest`, with prost). The spans of an allowed and
//! a refused `tools/call` carry the MCP and GenAI attributes, the decision
//! and, on the refusal, its error class.

use agentplane_e2e::{
    default_plugin_config, render_envoy_routed, Envoy, EnvoySetup, Idp, Upstream,
};
use rmcp::model::CallToolRequestParams;
use rmcp::transport::streamable_http_client::StreamableHttpClientTransportConfig;
use rmcp::transport::StreamableHttpClientTransport;
use rmcp::ServiceExt;
use serde_json::{json, Value};
use std::collections::{BTreeMap, HashMap};
use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpListener;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// The OTLP trace messages, as much of them as this test reads (field
/// numbers from opentelemetry-proto's `trace.proto` and `common.proto`;
/// prost skips the fields left out).
mod otlp {
    #[derive(Clone, PartialEq, prost::Message)]
    pub struct ExportTraceServiceRequest {
        #[prost(message, repeated, tag = "1")]
        pub resource_spans: Vec<ResourceSpans>,
    }
    #[derive(Clone, PartialEq, prost::Message)]
    pub struct ResourceSpans {
        #[prost(message, optional, tag = "1")]
        pub resource: Option<Resource>,
        #[prost(message, repeated, tag = "2")]
        pub scope_spans: Vec<ScopeSpans>,
    }
    #[derive(Clone, PartialEq, prost::Message)]
    pub struct Resource {
        #[prost(message, repeated, tag = "1")]
        pub attributes: Vec<KeyValue>,
    }
    #[derive(Clone, PartialEq, prost::Message)]
    pub struct ScopeSpans {
        #[prost(message, repeated, tag = "2")]
        pub spans: Vec<Span>,
    }
    #[derive(Clone, PartialEq, prost::Message)]
    pub struct Span {
        #[prost(bytes = "vec", tag = "1")]
        pub trace_id: Vec<u8>,
        #[prost(string, tag = "5")]
        pub name: String,
        #[prost(message, repeated, tag = "9")]
        pub attributes: Vec<KeyValue>,
    }
    #[derive(Clone, PartialEq, prost::Message)]
    pub struct KeyValue {
        #[prost(string, tag = "1")]
        pub key: String,
        #[prost(message, optional, tag = "2")]
        pub value: Option<AnyValue>,
    }
    #[derive(Clone, PartialEq, prost::Message)]
    pub struct AnyValue {
        #[prost(string, tag = "1")]
        pub string_value: String,
    }
}

/// A span as this test reads it: its attributes (string values).
type Attrs = BTreeMap<String, String>;

/// An OTLP/HTTP receiver on loopback: every POST body it gets, decoded.
struct Receiver {
    port: u16,
    spans: Arc<Mutex<Vec<(String, Attrs)>>>,
    service_names: Arc<Mutex<Vec<String>>>,
}

impl Receiver {
    fn start() -> Receiver {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let spans = Arc::new(Mutex::new(Vec::new()));
        let service_names = Arc::new(Mutex::new(Vec::new()));
        let (s, n) = (Arc::clone(&spans), Arc::clone(&service_names));
        std::thread::spawn(move || {
            for conn in listener.incoming().flatten() {
                let (s, n) = (Arc::clone(&s), Arc::clone(&n));
                std::thread::spawn(move || serve(conn, &s, &n));
            }
        });
        Receiver {
            port,
            spans,
            service_names,
        }
    }

    /// Waits until a span matches `want`, and returns it.
    fn span(&self, what: &str, want: impl Fn(&Attrs) -> bool) -> Attrs {
        let t0 = Instant::now();
        loop {
            let got = self.spans.lock().unwrap();
            if let Some((_, a)) = got.iter().find(|(_, a)| want(a)) {
                return a.clone();
            }
            assert!(
                t0.elapsed() < Duration::from_secs(20),
                "no span for {what} among {got:#?}"
            );
            drop(got);
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

/// One connection: HTTP/1.1 requests (chunked or with a length), each answered
/// 200 with an empty `ExportTraceServiceResponse`.
fn serve(
    conn: std::net::TcpStream,
    spans: &Mutex<Vec<(String, Attrs)>>,
    names: &Mutex<Vec<String>>,
) {
    use prost::Message;
    let mut w = conn.try_clone().unwrap();
    let mut r = BufReader::new(conn);
    loop {
        let mut head = Vec::new();
        loop {
            let mut line = String::new();
            if r.read_line(&mut line).unwrap_or(0) == 0 {
                return;
            }
            if line == "\r\n" {
                break;
            }
            head.push(line.trim_end().to_ascii_lowercase());
        }
        assert!(head[0].starts_with("post /v1/traces "), "{head:?}");
        assert!(
            head.iter()
                .any(|h| h == "content-type: application/x-protobuf"),
            "{head:?}"
        );
        let body = if head.iter().any(|h| h == "transfer-encoding: chunked") {
            chunked(&mut r)
        } else {
            let len: usize = head
                .iter()
                .find_map(|h| h.strip_prefix("content-length: "))
                .unwrap_or_else(|| panic!("no length in {head:?}"))
                .parse()
                .unwrap();
            let mut body = vec![0; len];
            r.read_exact(&mut body).unwrap();
            body
        };
        let req = otlp::ExportTraceServiceRequest::decode(body.as_slice())
            .expect("an OTLP ExportTraceServiceRequest");
        for rs in req.resource_spans {
            for kv in rs.resource.map(|r| r.attributes).unwrap_or_default() {
                if kv.key == "service.name" {
                    names.lock().unwrap().push(value(&kv));
                }
            }
            for span in rs.scope_spans.into_iter().flat_map(|s| s.spans) {
                let attrs = span.attributes.iter().map(|kv| (kv.key.clone(), value(kv)));
                spans.lock().unwrap().push((span.name, attrs.collect()));
            }
        }
        w.write_all(
            b"HTTP/1.1 200 OK\r\ncontent-type: application/x-protobuf\r\ncontent-length: 0\r\n\r\n",
        )
        .unwrap();
    }
}

/// A chunked body (how Envoy's exporter sends it).
fn chunked(r: &mut impl BufRead) -> Vec<u8> {
    let mut body = Vec::new();
    loop {
        let mut size = String::new();
        r.read_line(&mut size).unwrap();
        let size = size.trim_end().split(';').next().unwrap_or("");
        let n = usize::from_str_radix(size, 16).unwrap_or_else(|e| panic!("{size:?}: {e}"));
        let mut chunk = vec![0; n + 2];
        r.read_exact(&mut chunk).unwrap();
        if n == 0 {
            // The last chunk; no trailers are sent.
            return body;
        }
        body.extend_from_slice(&chunk[..n]);
    }
}

fn value(kv: &otlp::KeyValue) -> String {
    kv.value
        .as_ref()
        .map(|v| v.string_value.clone())
        .unwrap_or_default()
}

/// Two tool calls in one rmcp session: the first allowed, the second
/// refused by the policy (another team's ticket). What each call answered.
async fn calls(uri: &str, token: &str) -> (String, String) {
    let transport = StreamableHttpClientTransport::from_config(
        StreamableHttpClientTransportConfig::with_uri(uri.to_string()).auth_header(token),
    );
    let client = ().serve(transport).await.expect("MCP session through Envoy");
    let mut out = Vec::new();
    for team in ["customer-success", "ml"] {
        let args = json!({"team": team, "id": "T-1"});
        let r = client
            .peer()
            .call_tool(
                CallToolRequestParams::new("lookup_ticket")
                    .with_arguments(args.as_object().cloned().unwrap()),
            )
            .await;
        out.push(match r {
            Ok(r) => serde_json::to_string(&r).unwrap(),
            Err(e) => format!("{e:?}"),
        });
    }
    let _ = client.cancel().await;
    (out.remove(0), out.remove(0))
}

#[test]
fn tool_call_spans_carry_the_mcp_attributes_and_the_decision() {
    let rt = tokio::runtime::Runtime::new().unwrap();
    let skill = agentplane_e2e::serve_skill(&rt, agentplane_skills::serve);
    let receiver = Receiver::start();
    let idp = Idp::new();
    let upstream = Upstream::start_unrecorded();
    let mut cfg: Value = serde_json::from_str(&default_plugin_config()).unwrap();
    agentplane_e2e::add_tickets_mcp(&mut cfg);
    cfg["tracing"] = json!({"attributes": true});
    let ports = HashMap::from([("tickets-mcp".to_string(), skill)]);
    let mut rendered = render_envoy_routed(
        &EnvoySetup::without_vault(&idp, upstream.port, cfg.to_string()),
        true,
        &ports,
    );
    rendered.with_tracing(receiver.port);
    let envoy = Envoy::start_yaml(&rendered);

    let token = idp.triage_token_with(&["mcp:connect", "tools:list", "tools:call"]);
    let uri = format!("http://127.0.0.1:{}/mcp://tickets-mcp/mcp", envoy.port);
    let (allowed, refused) = rt.block_on(calls(&uri, &token));
    assert!(allowed.contains("T-1"), "{allowed}");
    assert!(
        refused.contains("limited to the agent's own team"),
        "{refused}"
    );

    let is_call = |a: &Attrs, outcome: &str| {
        a.get("gen_ai.tool.name").map(String::as_str) == Some("lookup_ticket")
            && a.get("agentplane.decision.outcome").map(String::as_str) == Some(outcome)
    };
    let ok = receiver.span("the allowed call", |a| is_call(a, "allowed"));
    let no = receiver.span("the refused call", |a| is_call(a, "denied"));
    for a in [&ok, &no] {
        assert_eq!(a["mcp.method.name"], "tools/call", "{a:#?}");
        assert_eq!(a["gen_ai.operation.name"], "execute_tool", "{a:#?}");
        assert_eq!(a["gen_ai.agent.id"], "support-triage@clients", "{a:#?}");
        assert!(!a["jsonrpc.request.id"].is_empty(), "{a:#?}");
        assert!(
            agentplane_core::mcp::SUPPORTED_VERSIONS.contains(&a["mcp.protocol.version"].as_str()),
            "{a:#?}"
        );
        // The session as its SHA-256, the same in both calls of the session.
        let s = &a["mcp.session.id"];
        assert!(
            s.len() == 64 && s.bytes().all(|b| b.is_ascii_hexdigit()),
            "{a:#?}"
        );
        assert!(!a["agentplane.decision.id"].is_empty(), "{a:#?}");
    }
    assert_eq!(ok["mcp.session.id"], no["mcp.session.id"]);
    assert_ne!(ok["agentplane.decision.id"], no["agentplane.decision.id"]);
    assert_ne!(ok["jsonrpc.request.id"], no["jsonrpc.request.id"]);
    assert!(!ok.contains_key("error.type"), "{ok:#?}");
    assert_eq!(no["error.type"], "forbidden", "{no:#?}");
    // The refusal the client read names the decision the span carries.
    assert!(refused.contains(&no["agentplane.decision.id"]), "{refused}");
    // A request that is not an MCP message carries the decision only: no
    // MCP attribute at all, not even an empty one.
    let auth = format!("Bearer {}", idp.triage_token_with(&["skills:invoke"]));
    let r = envoy.request(
        "POST",
        "/mcp://sentiment-analysis/analyze",
        &[("authorization", &auth)],
    );
    assert_eq!(r.status, 200, "{r:?}");
    let id = r.header("x-decision-id").unwrap().to_string();
    let plain = receiver.span("the plain request", |a| {
        a.get("agentplane.decision.id") == Some(&id)
    });
    assert_eq!(
        plain["agentplane.decision.outcome"], "allowed",
        "{plain:#?}"
    );
    for absent in [
        "mcp.method.name",
        "gen_ai.tool.name",
        "mcp.session.id",
        "error.type",
    ] {
        assert!(!plain.contains_key(absent), "{absent}: {plain:#?}");
    }
    assert!(receiver
        .service_names
        .lock()
        .unwrap()
        .iter()
        .all(|n| n == "agentplane"));
}

/// `envoy/tracing.yaml` tags a span with every attribute the filter sets,
/// each read from the filter state the filter sets it as.
#[test]
fn the_shipped_tags_are_the_filters_attributes() {
    let snippet = agentplane_e2e::envoy::yaml::tracing_snippet();
    let tags: Vec<(String, String)> = snippet["tracing"]["custom_tags"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| {
            (
                t["tag"].as_str().unwrap().to_string(),
                t["value"].as_str().unwrap().to_string(),
            )
        })
        .collect();
    let want: Vec<(String, String)> = agentplane_core::trace::ATTRIBUTES
        .iter()
        .map(|(tag, prop)| {
            (
                tag.to_string(),
                format!("%FILTER_STATE(wasm.{prop}:PLAIN)%"),
            )
        })
        .collect();
    assert_eq!(tags, want);
}
