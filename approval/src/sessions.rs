//! Who is signed in: approver sessions (a random id in a cookie, the
//! subject the ID token named, a CSRF token for the forms; bounded) and
//! logins in progress. A login is kept by the browser that started it, in
//! a cookie sealed with this process's key (HMAC-SHA256), and its
//! callback must carry the same `state`: a callback in another browser is
//! refused, and none is kept here. Kept here, the logins of a page anyone
//! may open (a link page) would be pushed out by anyone opening it in a
//! loop. Time comes in as an argument.

use crate::oidc::{random_b64, Login};
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use rand::RngCore as _;
use sha2::{Digest, Sha256};
use std::collections::HashMap;

/// How long a session lasts: an hour, as the provider's own.
pub const SESSION_S: u64 = 3600;
/// How long a login may take at the provider.
pub const LOGIN_S: u64 = 600;
/// At most this many sessions.
pub const MAX_ENTRIES: usize = 10_000;

/// A signed-in approver.
#[derive(Debug, Clone)]
pub struct Session {
    /// The ID token's `sub`.
    pub subject: String,
    /// Carried by the approve/reject forms.
    pub csrf: String,
    pub expires_at: u64,
}

/// A login started by a browser.
#[derive(Debug, Clone)]
pub struct PendingLogin {
    pub login: Login,
    /// The path (on this service) the person wanted: an approval's page
    /// or a link page.
    pub return_to: String,
    pub expires_at: u64,
}

/// Sessions, and the key sealing logins in progress.
#[derive(Default)]
pub struct Sessions {
    sessions: HashMap<String, Session>,
    key: LoginKey,
}

/// A random key of this process. Not `Debug`.
struct LoginKey([u8; 32]);

impl Default for LoginKey {
    fn default() -> LoginKey {
        let mut k = [0u8; 32];
        rand::rngs::OsRng.fill_bytes(&mut k);
        LoginKey(k)
    }
}

/// RFC 2104 HMAC-SHA256.
fn hmac(key: &[u8; 32], msg: &[u8]) -> [u8; 32] {
    let pad = |b: u8| {
        let mut p = [b; 64];
        for (p, k) in p.iter_mut().zip(key) {
            *p ^= k;
        }
        p
    };
    let inner = Sha256::new()
        .chain_update(pad(0x36))
        .chain_update(msg)
        .finalize();
    Sha256::new()
        .chain_update(pad(0x5c))
        .chain_update(inner)
        .finalize()
        .into()
}

/// Makes room for one more entry: the lapsed go, then the soonest to
/// lapse.
fn make_room<V>(map: &mut HashMap<String, V>, now: u64, expires: impl Fn(&V) -> u64) {
    if map.len() < MAX_ENTRIES {
        return;
    }
    map.retain(|_, v| expires(v) > now);
    while map.len() >= MAX_ENTRIES {
        let first = map
            .iter()
            .min_by_key(|(_, v)| expires(v))
            .map(|(k, _)| k.clone());
        match first {
            Some(k) => map.remove(&k),
            None => break,
        };
    }
}

impl Sessions {
    /// A new session for `subject`; returns its id (the cookie's value).
    pub fn create(&mut self, subject: String, now: u64) -> String {
        make_room(&mut self.sessions, now, |s| s.expires_at);
        let id = random_b64(32);
        self.sessions.insert(
            id.clone(),
            Session {
                subject,
                csrf: random_b64(32),
                expires_at: now.saturating_add(SESSION_S),
            },
        );
        id
    }

    /// The unexpired session with this id.
    pub fn get(&self, id: &str, now: u64) -> Option<Session> {
        self.sessions
            .get(id)
            .filter(|s| s.expires_at > now)
            .cloned()
    }

    /// A login, sealed for the browser's cookie until [`LOGIN_S`] from
    /// `now` (its values are secrets of that browser, as the session id).
    pub fn seal_login(&self, login: &Login, return_to: &str, now: u64) -> String {
        let fields = serde_json::json!([
            login.state,
            login.nonce,
            login.verifier,
            return_to,
            now.saturating_add(LOGIN_S),
        ]);
        let body = URL_SAFE_NO_PAD.encode(fields.to_string());
        let mac = URL_SAFE_NO_PAD.encode(hmac(&self.key.0, body.as_bytes()));
        format!("{body}.{mac}")
    }

    /// The login a browser's cookie holds, if this process sealed it, it
    /// is fresh and it is the one the callback's `state` names.
    pub fn open_login(&self, cookie: &str, state: &str, now: u64) -> Option<PendingLogin> {
        let (body, mac) = cookie.split_once('.')?;
        let want = URL_SAFE_NO_PAD.encode(hmac(&self.key.0, body.as_bytes()));
        if !crate::pages::ct_eq(mac, &want) {
            return None;
        }
        let v: serde_json::Value =
            serde_json::from_slice(&URL_SAFE_NO_PAD.decode(body).ok()?).ok()?;
        let text = |i: usize| v.get(i)?.as_str().map(str::to_string);
        let l = PendingLogin {
            login: Login {
                state: text(0)?,
                nonce: text(1)?,
                verifier: text(2)?,
            },
            return_to: text(3)?,
            expires_at: v.get(4)?.as_u64()?,
        };
        (l.expires_at > now && crate::pages::ct_eq(&l.login.state, state)).then_some(l)
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
mod tests {
    use super::*;

    #[test]
    fn sessions_lapse_and_ids_are_random() {
        let mut s = Sessions::default();
        let a = s.create("alice".into(), 100);
        let b = s.create("alice".into(), 100);
        assert_ne!(a, b);
        // 32 bytes: 43 base64url characters.
        assert_eq!(a.len(), 43);
        let got = s.get(&a, 100 + SESSION_S - 1).unwrap();
        assert_eq!(got.subject, "alice");
        assert_ne!(got.csrf, s.get(&b, 100).unwrap().csrf);
        assert!(s.get(&a, 100 + SESSION_S).is_none());
        assert!(s.get("forged", 100).is_none());
    }

    #[test]
    fn a_login_opens_only_with_its_state_its_seal_and_in_time() {
        let s = Sessions::default();
        let l = Login::new();
        let c = s.seal_login(&l, "/link/saas", 100);
        let got = s.open_login(&c, &l.state, 101).unwrap();
        assert_eq!(got.return_to, "/link/saas");
        assert_eq!(
            (got.login.nonce, got.login.verifier),
            (l.nonce.clone(), l.verifier.clone())
        );
        // Another login's state (a callback handed to this browser).
        assert!(s.open_login(&c, &Login::new().state, 101).is_none());
        assert!(s.open_login(&c, &l.state, 100 + LOGIN_S).is_none());
        // Sealed by another process, or altered (another return_to).
        assert!(Sessions::default().open_login(&c, &l.state, 101).is_none());
        let (body, mac) = c.split_once('.').unwrap();
        let forged = serde_json::json!([l.state, l.nonce, l.verifier, "@evil.test", 10_000]);
        let forged = URL_SAFE_NO_PAD.encode(forged.to_string());
        assert!(s
            .open_login(&format!("{forged}.{mac}"), &l.state, 101)
            .is_none());
        assert!(s.open_login(body, &l.state, 101).is_none());
        assert!(s.open_login("", &l.state, 101).is_none());
    }

    #[test]
    fn sessions_are_bounded_and_the_lapsed_go_first() {
        let mut s = Sessions::default();
        let first = s.create("u0".into(), 0);
        for n in 1..MAX_ENTRIES + 5 {
            s.create(format!("u{n}"), 1);
        }
        assert_eq!(s.sessions.len(), MAX_ENTRIES);
        // The soonest to lapse made room.
        assert!(s.get(&first, 1).is_none());
        // Once they have lapsed, they all go at once.
        s.create("late".into(), 1 + SESSION_S);
        assert_eq!(s.sessions.len(), 1);
    }

    #[test]
    fn opening_a_link_page_in_a_loop_cannot_push_out_a_persons_login() {
        // Anyone may open a link page, and each visit starts a login:
        // kept here, a flood pushed out a person's login in progress.
        let s = Sessions::default();
        let mine = Login::new();
        let c = s.seal_login(&mine, "/link/saas", 0);
        let flood: Vec<String> = (0..MAX_ENTRIES + 5)
            .map(|_| s.seal_login(&Login::new(), "/link/saas", 1))
            .collect();
        assert_eq!(flood.len(), MAX_ENTRIES + 5);
        assert_eq!(
            s.open_login(&c, &mine.state, 2).unwrap().return_to,
            "/link/saas"
        );
    }

    #[test]
    fn hmac_is_rfc_4231() {
        // RFC 4231 test case 2 needs a 4-byte key; case 1's 20 bytes of
        // 0x0b, zero-padded to 32, is the same HMAC (keys are padded).
        let mut key = [0u8; 32];
        key[..20].copy_from_slice(&[0x0b; 20]);
        let mac = hmac(&key, b"Hi There");
        let hex: String = mac.iter().map(|b| format!("{b:02x}")).collect();
        assert_eq!(
            hex,
            "b0344c61d8db38535ca8afceaf0bf12b881dc200c9833da726e9376c2e32cff7"
        );
    }
}
