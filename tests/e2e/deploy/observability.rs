//! The compose stack's observability services, checked offline:
//! Prometheus scrapes every Envoy through the rendered `stats` listener,
//! Grafana is provisioned with the dashboard and its datasources, and
//! Envoy's output reaches the collector that ships decision records to
//! Loki and traces to Jaeger (docs/operations.md).

use agentplane_e2e::deploy::compose::{compose_config, mounts, neighbours, yaml_to_json};
use agentplane_e2e::deploy::COMPOSE;
use agentplane_e2e::repo_root;
use serde_json::{json, Value};

/// The observability stack: Prometheus scrapes every Envoy through the
/// `stats` listener (admin's /stats/prometheus and nothing else) with the
/// checked rules; Grafana gets the dashboard and datasources; Envoy's
/// output reaches the collector, which ships decision records to Loki and
/// traces to Jaeger.
#[test]
fn compose_observability_stack_is_wired_to_every_envoy() {
    let c = compose_config();
    let root = repo_root().display().to_string();
    let obs = format!("{root}/deploy/observability");
    let has = |service: &str, source: &str, target: &str| {
        assert!(
            mounts(&c, service)
                .iter()
                .any(|(s, t)| s == source && t == target),
            "{service} lacks {source}:{target}: {:?}",
            mounts(&c, service)
        );
    };
    has(
        "prometheus",
        &format!("{obs}/prometheus.yml"),
        "/etc/prometheus/prometheus.yml",
    );
    has(
        "prometheus",
        &format!("{obs}/rules.yml"),
        "/etc/prometheus/rules.yml",
    );
    has(
        "grafana",
        &format!("{obs}/grafana/provisioning"),
        "/etc/grafana/provisioning",
    );
    has(
        "grafana",
        &format!("{obs}/grafana/dashboards"),
        "/var/lib/grafana/dashboards",
    );
    has(
        "otel-collector",
        &format!("{obs}/otel-collector.yml"),
        "/etc/otelcol/config.yaml",
    );

    // Prometheus scrapes /stats/prometheus at the port the rendered
    // compose Envoy serves it on, by the service's name (every replica).
    let prom = yaml_to_json(&std::fs::read_to_string(format!("{obs}/prometheus.yml")).unwrap());
    let job = &prom["scrape_configs"][0];
    assert_eq!(job["job_name"], "agentplane-envoy", "the rules' job");
    assert_eq!(job["metrics_path"], "/stats/prometheus");
    let sd = &job["dns_sd_configs"][0];
    assert_eq!(sd["names"], json!(["envoy"]));
    let port = COMPOSE
        .stats
        .expect("the compose Envoy has a stats listener");
    assert_eq!(sd["port"], json!(port));
    assert!(neighbours(&c, "prometheus").contains("envoy"));

    // The stats listener serves GET /stats/prometheus from the admin
    // interface on loopback, and a 404 for anything else.
    let v = yaml_to_json(&std::fs::read_to_string(repo_root().join(COMPOSE.out)).unwrap());
    let listeners = v["static_resources"]["listeners"].as_array().unwrap();
    let stats = listeners
        .iter()
        .find(|l| l["name"] == "stats")
        .expect("a stats listener");
    assert_eq!(
        stats["address"]["socket_address"]["port_value"],
        json!(port)
    );
    let hcm = &stats["filter_chains"][0]["filters"][0]["typed_config"];
    let routes = hcm["route_config"]["virtual_hosts"][0]["routes"]
        .as_array()
        .unwrap();
    assert_eq!(routes.len(), 2, "{routes:?}");
    assert_eq!(routes[0]["match"]["path"], "/stats/prometheus");
    assert_eq!(
        routes[0]["match"]["headers"][0]["string_match"]["exact"],
        "GET"
    );
    assert_eq!(routes[1]["direct_response"]["status"], json!(404));
    let cluster = v["static_resources"]["clusters"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["name"] == routes[0]["route"]["cluster"])
        .expect("the stats route's cluster");
    let addr = &cluster["load_assignment"]["endpoints"][0]["lb_endpoints"][0]["endpoint"]
        ["address"]["socket_address"];
    assert_eq!(addr["address"], "127.0.0.1");
    assert_eq!(addr["port_value"], json!(COMPOSE.admin));

    // Envoy's output goes to the collector's published log intake.
    let logging = &c["services"]["envoy"]["logging"];
    assert_eq!(logging["driver"], "fluentd");
    assert_eq!(logging["options"]["fluentd-address"], "127.0.0.1:24224");
    let col = yaml_to_json(&std::fs::read_to_string(format!("{obs}/otel-collector.yml")).unwrap());
    assert_eq!(
        col["receivers"]["fluentforward"]["endpoint"],
        "0.0.0.0:24224"
    );
    let pipes = &col["service"]["pipelines"];
    assert_eq!(pipes["logs"]["exporters"], json!(["otlphttp/loki"]));
    assert_eq!(pipes["traces"]["exporters"], json!(["otlp/jaeger"]));
    assert_eq!(
        col["exporters"]["otlphttp/loki"]["endpoint"],
        "http://loki:3100/otlp"
    );

    // Grafana's datasources carry the uids the dashboard names, at the
    // compose services' addresses.
    let ds = yaml_to_json(
        &std::fs::read_to_string(format!(
            "{obs}/grafana/provisioning/datasources/datasources.yml"
        ))
        .unwrap(),
    );
    let url_of = |uid: &str| {
        ds["datasources"]
            .as_array()
            .unwrap()
            .iter()
            .find(|d| d["uid"] == uid)
            .map(|d| d["url"].as_str().unwrap().to_string())
            .unwrap_or_else(|| panic!("no datasource {uid}"))
    };
    assert_eq!(url_of("prometheus"), "http://prometheus:9090");
    assert_eq!(url_of("loki"), "http://loki:3100");
    assert_eq!(url_of("jaeger"), "http://jaeger:16686");
    let dash: Value = serde_json::from_str(
        &std::fs::read_to_string(format!("{obs}/grafana/dashboards/agentplane.json")).unwrap(),
    )
    .unwrap();
    for p in dash["panels"].as_array().unwrap() {
        for t in p["targets"].as_array().into_iter().flatten() {
            let uid = t["datasource"]["uid"].as_str().unwrap();
            url_of(uid);
            if uid == "loki" {
                assert!(
                    t["expr"]
                        .as_str()
                        .unwrap()
                        .contains(r#"service_name="agentplane-decisions""#),
                    "{t}"
                );
            }
        }
    }
    assert_eq!(
        col["processors"]["transform/decisions"]["log_statements"][1]["statements"][0],
        r#"set(attributes["service.name"], "agentplane-decisions")"#
    );
}
