//! The link flow's bindings (a callback must come back to the browser and
//! the person that started it, for the service it was started at, in
//! time) and the links file's checks. Nothing here reaches a network: a
//! refused callback is refused before the code is redeemed.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use super::*;

fn dir() -> std::path::PathBuf {
    let d = std::env::temp_dir().join(format!(
        "agentplane-links-test-{}-{}",
        std::process::id(),
        rand::random::<u64>()
    ));
    std::fs::create_dir_all(&d).unwrap();
    d
}

/// Links over files in a fresh directory: `upstreams` as given.
fn load(upstreams: serde_json::Value) -> Result<Links, String> {
    let d = dir();
    std::fs::write(d.join("bao"), "root-token\n").unwrap();
    std::fs::write(d.join("secret"), "CANARY-SAAS-SECRET\n").unwrap();
    let mut ups = upstreams;
    if let Some(o) = ups.as_object_mut() {
        for u in o.values_mut() {
            if let Some(u) = u.as_object_mut() {
                u.entry("client_secret_file")
                    .or_insert(d.join("secret").display().to_string().into());
            }
        }
    }
    let file = serde_json::json!({
        "openbao": {"addr": "http://127.0.0.1:9", "token_file": d.join("bao")},
        "upstreams": ups,
    });
    std::fs::write(d.join("links.json"), file.to_string()).unwrap();
    let links = Links::load(&d.join("links.json").display().to_string());
    // Everything is read at load: the directory (a canary secret in it)
    // goes now, not left behind in /tmp.
    let _ = std::fs::remove_dir_all(&d);
    links
}

pub(crate) fn links() -> Links {
    load(
        serde_json::json!({"saas": {"issuer": "http://127.0.0.1:9", "client_id": "broker",
                                     "scopes": ["openid"]}}),
    )
    .unwrap_or_else(|e| panic!("{e}"))
}

fn pending(l: &Links, state: &str, user: &str, browser: &str, expires_at: u64) {
    l.pending.lock().unwrap().insert(
        state.into(),
        Pending {
            upstream: "saas".into(),
            user: user.into(),
            browser: browser.into(),
            verifier: "v".into(),
            expires_at,
        },
    );
}

async fn finish(l: &Links, state: &str, browser: &str, user: &str, now: u64) -> String {
    let up = l.upstream("saas").unwrap();
    l.finish(up, state, browser, user, "code", "http://x/cb", now)
        .await
        .unwrap_err()
}

#[tokio::test]
async fn a_callback_in_another_browser_for_another_person_or_too_late_is_refused() {
    let l = links();
    pending(&l, "s1", "alice", "alices-browser", 100);
    let e = finish(&l, "s1", "mallorys-browser", "alice", 50).await;
    assert!(e.contains("another browser"), "{e}");
    // The state was used up by that attempt: alice's own callback must
    // start over, and a replay finds nothing.
    let e = finish(&l, "s1", "alices-browser", "alice", 50).await;
    assert!(e.contains("not started here"), "{e}");

    pending(&l, "s2", "alice", "shared-browser", 100);
    let e = finish(&l, "s2", "shared-browser", "mallory", 50).await;
    assert!(e.contains("another person"), "{e}");

    pending(&l, "s3", "alice", "b", 100);
    let e = finish(&l, "s3", "b", "alice", 100).await;
    assert!(e.contains("took too long"), "{e}");

    let e = finish(&l, "made-up", "b", "alice", 1).await;
    assert!(e.contains("not started here"), "{e}");
}

#[test]
fn a_bad_links_file_says_which_field_and_never_a_secret() {
    for (ups, want) in [
        (serde_json::json!({}), "no upstreams"),
        (
            serde_json::json!({"Bad Name": {"issuer": "http://x", "client_id": "c"}}),
            "names are",
        ),
        (
            serde_json::json!({"saas": {"issuer": "ftp://x", "client_id": "c"}}),
            "upstreams.saas.issuer",
        ),
        (
            serde_json::json!({"saas": {"issuer": "http://x", "client_id": ""}}),
            "upstreams.saas.client_id",
        ),
        (
            serde_json::json!({"saas": {"issuer": "http://x", "client_id": "c",
                                        "client_secret_file": "/nonexistent/secret"}}),
            "client_secret_file",
        ),
        (
            serde_json::json!({"saas": {"issuer": "http://x", "client_id": "c", "extra": 1}}),
            "unknown field",
        ),
    ] {
        let e = match load(ups) {
            Err(e) => e,
            Ok(_) => panic!("accepted: {want}"),
        };
        assert!(e.contains(want), "{want}: {e}");
        assert!(!e.contains("CANARY") && !e.contains("root-token"), "{e}");
    }
}

#[test]
fn a_persons_link_is_stored_under_a_digest_of_their_name() {
    let l = links();
    let p = l.vault.path("saas", "alice");
    assert!(p.starts_with("agentplane/links/saas/"), "{p}");
    assert!(!p.contains("alice"), "{p}");
    assert_ne!(p, l.vault.path("saas", "bob"));
}

#[tokio::test]
async fn relinking_while_a_refresh_is_in_flight_waits_so_the_refresh_cannot_overwrite_or_delete_the_new_link(
) {
    let l = links();
    let up = l.upstream("saas").unwrap();
    let tokens = || upstream::Tokens {
        access_token: "new-access".into(),
        refresh_token: Some("new-refresh".into()),
        expires_in: 600,
    };
    // A refresh of the old link holds the lock (read, refreshed, about to
    // write its rotated token back, or to delete the link as revoked).
    let refresh = l.refreshing.lock().await;
    let waited = tokio::time::timeout(
        std::time::Duration::from_millis(300),
        l.store(up, "alice", tokens(), 1),
    )
    .await;
    assert!(
        waited.is_err(),
        "the new link was written under a refresh in flight"
    );
    assert!(l.cached("saas", "alice", 1).unwrap().is_none());
    drop(refresh);
    // Then it goes on (to an OpenBao that is not there here).
    let e = l.store(up, "alice", tokens(), 1).await.unwrap_err();
    assert!(e.contains("OpenBao write"), "{e}");
}
