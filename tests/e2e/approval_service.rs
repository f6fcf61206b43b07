//! The approval service (`agentplane-approval`) against the real identity
//! provider, asked as the filter asks it: a first `/v1/check` opens a
//! pending approval; an approver follows its link, signs in (code flow
//! with PKCE, a password form), sees exactly the call and approves; the
//! next check gets the signed grant once, the one after finds it used.
//! Other arguments are another call; a non-approver sees 403 and cannot
//! decide; a rejection holds; the filter's key is required.

use agentplane_e2e::approval::{binding, call, canonical, OidcClient};
use agentplane_e2e::idp::browser::{Browser, Page};
use agentplane_e2e::provider::{FirstParty, IdProvider};
use agentplane_e2e::{free_port, Approval};
use base64::Engine;
use serde_json::{json, Value};
use std::time::{Duration, Instant};

struct World {
    // Field order: the service stops before the provider.
    svc: Approval,
    _idp: IdProvider,
}

/// The provider with approvers alice and bob and mallory (a person who
/// signs in fine but approves nothing here), and the service as its
/// first-party client.
fn world() -> World {
    // The provider must know the service's redirect_uri before either
    // runs, so the service's port is picked first.
    let port = free_port();
    let client = FirstParty::new(
        "approval-service",
        &format!("http://127.0.0.1:{port}/callback"),
    );
    let idp = IdProvider::start_with_approvers(
        &[
            ("alice", "alice pw"),
            ("bob", "bob pw"),
            ("mallory", "mallory pw"),
        ],
        std::slice::from_ref(&client),
    );
    let svc = Approval::start(
        port,
        &OidcClient {
            issuer: idp.issuer(),
            client_id: client.client_id,
            client_secret: client.client_secret,
        },
    );
    World { svc, _idp: idp }
}

fn ticket_call(args: Value) -> Value {
    call(
        "support-triage@clients",
        &["user-1"],
        "tickets",
        "close_ticket",
        args,
    )
}

/// A check that must answer 200: its JSON.
fn check(svc: &Approval, c: &Value, approvers: &[&str]) -> Value {
    let r = svc.check(c, approvers, 300);
    assert_eq!(r.status, 200, "{}", r.body);
    r.json()
}

/// The form on `page` whose action ends with `/<what>`.
fn form(page: &Page, what: &str) -> agentplane_e2e::idp::browser::Form {
    page.forms()
        .into_iter()
        .find(|f| f.action.ends_with(&format!("/{what}")))
        .unwrap_or_else(|| panic!("no {what} form on {}: {}", page.url, page.response.body))
}

/// The grant's claims (its payload; the signature is the unit tests' and
/// the filter's to check).
fn grant_claims(grant: &str) -> Value {
    let parts: Vec<&str> = grant.split('.').collect();
    assert_eq!(parts.len(), 3, "{grant}");
    let b = |s: &str| {
        serde_json::from_slice::<Value>(
            &base64::engine::general_purpose::URL_SAFE_NO_PAD
                .decode(s)
                .unwrap(),
        )
        .unwrap()
    };
    let header = b(parts[0]);
    assert_eq!(header["alg"], "EdDSA");
    assert_eq!(header["typ"], "agentplane-approval+jwt");
    b(parts[1])
}

/// The decision log once it holds a line for `event` on record `id` (it
/// is read from the service's stdout by another thread).
fn logged(svc: &Approval, event: &str, id: &str) -> Value {
    let t0 = Instant::now();
    loop {
        if let Some(l) = svc
            .decisions()
            .into_iter()
            .find(|l| l["event"] == event && l["id"] == id)
        {
            return l;
        }
        assert!(
            t0.elapsed() < Duration::from_secs(5),
            "no {event} for {id} in {:?}",
            svc.decisions()
        );
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// The whole flow: pending, the approver signs in through the page, sees
/// the call (hostile text shown as text), approves; the identical call
/// then gets the grant once, and the next finds it used with a new
/// pending approval. Edited arguments were never approved.
#[test]
fn an_approver_approves_through_the_page_and_the_grant_is_handed_out_once() {
    let w = world();
    let args = json!({"id": 42, "note": "<script>alert(1)</script>"});
    let c = ticket_call(args.clone());
    let p = check(&w.svc, &c, &["alice"]);
    assert_eq!(p["state"], "pending", "{p}");
    let id = p["id"].as_str().unwrap().to_string();
    let url = p["url"].as_str().unwrap().to_string();
    assert_eq!(url, format!("{}/a/{id}", w.svc.url()));

    let mut b = Browser::new();
    let page = b.sign_in(&url, "alice", "alice pw");
    assert_eq!(page.url, url, "{:?}", b.visited);
    assert_eq!(page.response.status, 200, "{}", page.response.body);
    let body = &page.response.body;
    for shown in [
        "support-triage@clients",
        "user-1",
        "tickets",
        "close_ticket",
        "&lt;script&gt;alert(1)&lt;/script&gt;",
        "pending",
    ] {
        assert!(body.contains(shown), "{shown} not on the page: {body}");
    }
    assert!(!body.contains("<script>"), "{body}");
    // The session cookie is the service's, HttpOnly.
    assert!(b.cookie("agentplane_approval_session").is_some());

    let after = b.submit(&form(&page, "approve"), &[]);
    assert_eq!(after.url, url);
    assert!(
        after.response.body.contains("approved by alice"),
        "{}",
        after.response.body
    );
    let approved = logged(&w.svc, "approval.approved", &id);
    assert_eq!(approved["approver"], "alice");

    // Another call (edited arguments) is another binding: not approved.
    let edited = check(&w.svc, &ticket_call(json!({"id": 43})), &["alice"]);
    assert_eq!(edited["state"], "pending", "{edited}");
    assert_ne!(edited["id"], id.as_str());

    let a = check(&w.svc, &c, &["alice"]);
    assert_eq!(a["state"], "approved", "{a}");
    assert_eq!(a["id"], id.as_str());
    assert_eq!(a["approver"], "alice");
    let claims = grant_claims(a["grant"].as_str().unwrap());
    assert_eq!(claims["binding"], binding(&canonical(&c)).as_str());
    assert_eq!(claims["jti"], id.as_str());
    assert_eq!(claims["approver"], "alice");
    assert_eq!(claims["aud"], "agentplane");
    let (iat, exp) = (
        claims["iat"].as_u64().unwrap(),
        claims["exp"].as_u64().unwrap(),
    );
    assert!(exp > iat && exp <= iat + 300, "{claims}");
    assert_eq!(
        w.svc.jwks()["keys"][0]["kid"],
        "approval-1",
        "the grant's key is published"
    );
    let consumed = logged(&w.svc, "approval.consumed", &id);
    assert_eq!(consumed["binding"], claims["binding"]);

    let replay = check(&w.svc, &c, &["alice"]);
    assert_eq!(replay["state"], "used", "{replay}");
    assert_eq!(replay["id"], id.as_str());
    assert_eq!(replay["pending"]["state"], "pending");
    assert_ne!(replay["pending"]["id"], id.as_str());
    // The page says so, and offers nothing to press.
    let page = b.get(&url);
    assert!(page.response.body.contains("approved by alice and used"));
    assert!(page.forms().is_empty(), "{}", page.response.body);

    // Nothing secret in the log: no key, no session.
    let log = format!("{:?}", w.svc.decisions());
    assert!(!log.contains(&w.svc.filter_key), "{log}");
    let session = b.cookie("agentplane_approval_session").unwrap();
    assert!(!log.contains(session), "{log}");
}

/// A person who is not among the call's approvers signs in and gets 403
/// without seeing the call; the approval stays pending. A named approver
/// who rejects it: the filter hears "rejected", and no one can approve it
/// afterwards.
#[test]
fn a_non_approver_gets_403_and_a_rejection_holds() {
    let w = world();
    let c = ticket_call(json!({"id": 7}));
    let p = check(&w.svc, &c, &["alice", "bob"]);
    let url = p["url"].as_str().unwrap().to_string();
    let id = p["id"].as_str().unwrap().to_string();

    let mut m = Browser::new();
    let page = m.sign_in(&url, "mallory", "mallory pw");
    assert_eq!(page.url, url);
    assert_eq!(page.response.status, 403, "{}", page.response.body);
    let body = &page.response.body;
    assert!(
        body.contains("you are not an approver of this call"),
        "{body}"
    );
    assert!(!body.contains("close_ticket"), "the call leaked: {body}");
    assert!(page.forms().is_empty());
    // Posting the form without having been shown one: refused.
    let r = m.post_form(&format!("{url}/approve"), &[("csrf", "guess")]);
    assert_eq!(r.response.status, 403);
    assert_eq!(check(&w.svc, &c, &["alice", "bob"])["state"], "pending");

    let mut b = Browser::new();
    let page = b.sign_in(&url, "bob", "bob pw");
    assert_eq!(page.response.status, 200, "{}", page.response.body);
    let after = b.submit(&form(&page, "reject"), &[]);
    assert!(
        after.response.body.contains("rejected by bob"),
        "{}",
        after.response.body
    );
    let r = check(&w.svc, &c, &["alice", "bob"]);
    assert_eq!(r, json!({"state": "rejected", "id": id, "approver": "bob"}));
    assert_eq!(logged(&w.svc, "approval.rejected", &id)["approver"], "bob");

    // Alice, too late: the call is no longer pending.
    let mut a = Browser::new();
    let page = a.sign_in(&url, "alice", "alice pw");
    assert_eq!(page.response.status, 200);
    assert!(page.forms().is_empty(), "{}", page.response.body);
    let stale = a.post_form(&format!("{url}/approve"), &[("csrf", "x")]);
    assert_eq!(stale.response.status, 403, "a forged form");
}

/// Without the filter's key nothing is recorded; a body whose binding is
/// not its call's is refused; SIGTERM stops the service cleanly. No
/// provider is needed for any of it.
#[test]
fn checks_need_the_filter_key_and_a_true_binding() {
    let mut svc = Approval::start(
        0,
        &OidcClient {
            issuer: "http://127.0.0.1:9".into(),
            client_id: "approval-service".into(),
            client_secret: "unused".into(),
        },
    );
    let c = ticket_call(json!({}));
    let text = canonical(&c);
    let body = json!({"binding": binding(&text), "call": text, "approvers": ["alice"],
                      "ttl_s": 60})
    .to_string();
    for auth in [None, Some("Bearer not-the-key-0123456789".to_string())] {
        let r = svc.check_raw(auth.as_deref(), &body);
        assert_eq!(r.status, 401, "{}", r.body);
    }
    let other = canonical(&ticket_call(json!({"id": 1})));
    let lying = json!({"binding": binding(&other), "call": text, "approvers": ["alice"],
                       "ttl_s": 60});
    let r = svc.check_raw(
        Some(&format!("Bearer {}", svc.filter_key)),
        &lying.to_string(),
    );
    assert_eq!(r.status, 400, "{}", r.body);
    assert_eq!(
        svc.check(&c, &["alice"], 60).json()["state"],
        "pending",
        "the key works"
    );
    let status = svc.terminate().expect("running");
    assert!(status.success(), "SIGTERM: {status}");
}
