//! Micro-benchmarks of the request path, natively: claims decode, input
//! build, policy evaluation, whole decision through `MockHost`, a
//! decision record finished with and without its chain link.
//! `cargo bench -p agentplane-core --bench core`.

use agentplane_core::claims;
use agentplane_core::config::IdentityConfig;
use agentplane_core::input::{self, RequestFacts};
use agentplane_core::pbstruct;
use agentplane_core::policy::{EngineChoice, Policy};
use agentplane_core::{Filter, MockHost};
use criterion::{black_box, criterion_group, criterion_main, Criterion};
use serde_json::json;

const CONFIG: &str = include_str!("../../../envoy/agentplane.json");

fn payload() -> serde_json::Value {
    json!({
        "iss": "https://idp.agentplane.test/", "aud": "https://mcp.example.com/",
        "sub": "support-triage@clients", "azp": "support-triage@clients",
        "gty": "client-credentials", "iat": 1746270000, "exp": 1746277200,
        "permissions": ["skills:invoke", "data:read"],
        "https://mcp.example.com/agent_type": "support",
        "https://mcp.example.com/team": "customer-success",
        "https://mcp.example.com/environment": "production",
    })
}

fn host() -> MockHost {
    let ns = json!({ "jwt_payload": payload() });
    MockHost::new()
        .with_header(":method", "POST")
        .with_header(":path", "/mcp://sentiment-analysis/analyze")
        .with_header(":authority", "localhost:15000")
        .with_header("content-type", "application/json")
        .with_property(&["request", "id"], "d6a6db44-a797-4c31-8540-aa62826572a4")
        .with_property(
            &["metadata"],
            pbstruct::encode_metadata(&[(
                "envoy.filters.http.jwt_authn",
                ns.as_object().unwrap_or(&serde_json::Map::new()),
            )]),
        )
}

fn benches(c: &mut Criterion) {
    let h = host();
    let id_cfg = IdentityConfig::default();
    c.bench_function("claims_decode", |b| {
        b.iter(|| {
            let p = claims::trust_jwt_authn_payload(black_box(&h), &id_cfg).ok();
            p.and_then(|p| claims::identity(p, &id_cfg).ok())
        })
    });

    let filter = Filter::new(CONFIG.as_bytes(), 1).ok();
    let Some(mut filter) = filter else { return };
    let config = filter.config().clone();
    let p = claims::trust_jwt_authn_payload(&h, &id_cfg).ok();
    let Some(ident) = p.and_then(|p| claims::identity(p, &id_cfg).ok()) else {
        return;
    };
    let ident = agentplane_core::principal::Principal::new(1, ident, 256);
    let route = input::parse_route("/mcp://sentiment-analysis/analyze", &config).ok();
    let Some(route) = route else { return };
    let facts = RequestFacts {
        method: "POST",
        route: &route,
        host: "localhost:15000",
        id: "d6a6db44-a797-4c31-8540-aa62826572a4",
        action: Some("invoke_skill"),
        time_ns: h.now_ns,
        source: None,
        transaction: None,
        envoy: None,
    };
    let h2 = host();
    let Some(headers) = agentplane_core::headers::read(&h2, &config) else {
        return;
    };
    let docs = input::ResourceDocs::new(&config);
    c.bench_function("input_build", |b| {
        b.iter(|| input::build(black_box(&headers), &config, &docs, &ident, &facts, None))
    });

    let doc = input::build(&headers, &config, &docs, &ident, &facts, None);
    records(c, &config, &doc, h.now_ns);
    for (name, choice) in [
        ("policy_eval_rvm", EngineChoice::Rvm),
        ("policy_eval_interpreter", EngineChoice::Interpreter),
    ] {
        let Ok(mut policy) = Policy::embedded("data.mcp.authz", choice) else {
            return;
        };
        c.bench_function(name, |b| b.iter(|| policy.evaluate(black_box(doc.clone()))));
    }

    // The default config caches decisions: after the first iteration every
    // request is a hit. The uncached filter evaluates each time.
    c.bench_function("whole_decision_cache_hit", |b| {
        b.iter_batched(
            host,
            |mut h| filter.on_request_headers(&mut h),
            criterion::BatchSize::SmallInput,
        )
    });
    let mut uncached: serde_json::Value = serde_json::from_str(CONFIG).unwrap_or_default();
    if let Some(o) = uncached.as_object_mut() {
        o.insert("decision_cache".into(), json!({"enabled": false}));
    }
    let Ok(mut plain) = Filter::new(uncached.to_string().as_bytes(), 1) else {
        return;
    };
    c.bench_function("whole_decision_uncached", |b| {
        b.iter_batched(
            host,
            |mut h| plain.on_request_headers(&mut h),
            criterion::BatchSize::SmallInput,
        )
    });
}

/// A decision record of this request finished alone, and finished and
/// linked into a record chain: the difference is what tamper evidence
/// costs per record (the link, and SHA-256 over the record's text).
fn records(c: &mut Criterion, config: &agentplane_core::Config, doc: &regorus::Value, now: u64) {
    use agentplane_core::audit;
    let id = "d6a6db44-a797-4c31-8540-aa62826572a4";
    let trail = audit::Trail {
        input: Some(doc.clone()),
        eval_ns: Some(96_000),
        service: Some("sentiment-analysis".into()),
        request_id: id.into(),
        agent_type: Some("support".into()),
        team: Some("customer-success".into()),
        ..audit::Trail::default()
    };
    let f = audit::Facts {
        decision_id: id,
        now_ns: now,
        entrypoint: "data.mcp.authz",
        revision: "rev",
        allowed: true,
        reason: "",
        reasons: &[],
        status: 0,
        agent: Some("support-triage@clients"),
    };
    let rec = audit::record(&config.decision_log, &f, &trail);
    c.bench_function("record_finish", |b| {
        b.iter(|| audit::finish(black_box(rec.clone()), Some(200), None))
    });
    let mut chain = audit::Chain::new(1);
    c.bench_function("record_finish_chained", |b| {
        b.iter(|| audit::finish(black_box(rec.clone()), Some(200), Some(&mut chain)))
    });
    let text = audit::finish(rec, Some(200), Some(&mut chain));
    eprintln!("record_finish: a record of {} bytes", text.len());
}

/// One transaction token signed, and one verified (natively; the wasm
/// figures are the bench's S4T0 arm).
fn txn(c: &mut Criterion) {
    use agentplane_core::txn;
    let kv = json!({"data": {"data": {"kid": "k1", "d": "KioqKioqKioqKioqKioqKioqKioqKioqKioqKioqKio"}}});
    let Ok(ring) = txn::Keyring::from_kv(kv.to_string().as_bytes()) else {
        return;
    };
    let Some(key) = ring.current.as_ref() else {
        return;
    };
    let claims = txn::TxnClaims {
        iss: "https://gateway.corp.example".into(),
        aud: "corp.example".into(),
        txn: "d6a6db44-a797-4c31-8540-aa62826572a4".into(),
        sub: "alice@clients".into(),
        scope: "skills:invoke data:read".into(),
        req_wl: "support-triage@clients".into(),
        svc: "sentiment-analysis".into(),
        tool: None,
        act: txn::nest(&["support-triage@clients".into()]),
        tctx: txn::Tctx {
            agent: "support-triage@clients".into(),
            decision: "d6a6db44-a797-4c31-8540-aa62826572a4".into(),
            ..txn::Tctx::default()
        },
    };
    let now = 1_746_273_600;
    c.bench_function("txn_token_sign", |b| {
        b.iter(|| txn::mint(key, black_box(claims.clone()), now, 60))
    });
    let Ok(token) = txn::mint(key, claims.clone(), now, 60) else {
        return;
    };
    let cfg = txn::TxnConfig {
        issuer: claims.iss.clone(),
        audience: claims.aud.clone(),
        ..txn::TxnConfig::default()
    };
    c.bench_function("txn_token_verify", |b| {
        b.iter(|| txn::verify(black_box(&token), &ring, &cfg, now))
    });
}

criterion_group!(core, benches, txn);
criterion_main!(core);
