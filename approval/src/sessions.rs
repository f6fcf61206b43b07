//! Who is signed in: approver sessions (a random id in a cookie, the
//! subject the ID token named, a CSRF token for the forms) and logins in
//! progress (keyed by the OAuth `state`, bound to a random cookie of the
//! browser that started them, so a callback from another browser is
//! refused). Both are bounded; time comes in as an argument.

use crate::oidc::Login;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use rand::RngCore as _;
use std::collections::HashMap;

/// How long a session lasts: an hour, as the provider's own.
pub const SESSION_S: u64 = 3600;
/// How long a login may take at the provider.
pub const LOGIN_S: u64 = 600;
/// At most this many of each.
pub const MAX_ENTRIES: usize = 10_000;
/// At most this many logins in progress return to one page: a page
/// opened again and again (anyone may open one whose id it knows) then
/// replaces its own oldest login, never another page's.
pub const MAX_PER_PAGE: usize = 16;

/// `bytes` random bytes from the OS, base64url without padding.
pub fn random_b64(bytes: usize) -> String {
    let mut buf = vec![0u8; bytes];
    rand::rngs::OsRng.fill_bytes(&mut buf);
    URL_SAFE_NO_PAD.encode(buf)
}

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
    /// The value of the browser's login cookie.
    pub browser: String,
    pub login: Login,
    /// The path (on this service) the person wanted: an approval's page
    /// or a link page.
    pub return_to: String,
    pub expires_at: u64,
}

/// Sessions and logins in progress.
#[derive(Debug, Default)]
pub struct Sessions {
    sessions: HashMap<String, Session>,
    logins: HashMap<String, PendingLogin>,
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

    /// Remembers a login until its callback (or [`LOGIN_S`]).
    pub fn start_login(&mut self, login: Login, browser: String, return_to: String, now: u64) {
        let same: Vec<(&String, u64)> = self
            .logins
            .iter()
            .filter(|(_, l)| l.return_to == return_to)
            .map(|(k, l)| (k, l.expires_at))
            .collect();
        if same.len() >= MAX_PER_PAGE {
            let oldest = same
                .iter()
                .min_by_key(|(_, e)| *e)
                .map(|(k, _)| (*k).clone());
            if let Some(k) = oldest {
                self.logins.remove(&k);
            }
        }
        make_room(&mut self.logins, now, |l| l.expires_at);
        self.logins.insert(
            login.state.clone(),
            PendingLogin {
                browser,
                login,
                return_to,
                expires_at: now.saturating_add(LOGIN_S),
            },
        );
    }

    /// How many logins are in progress.
    #[cfg(test)]
    pub fn logins(&self) -> usize {
        self.logins.len()
    }

    /// The login for `state`, once, while it is fresh.
    pub fn take_login(&mut self, state: &str, now: u64) -> Option<PendingLogin> {
        self.logins.remove(state).filter(|l| l.expires_at > now)
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
    fn a_login_is_taken_once_and_lapses() {
        let mut s = Sessions::default();
        let l = Login::new();
        let state = l.state.clone();
        s.start_login(l.clone(), "b1".into(), "r1".into(), 100);
        let got = s.take_login(&state, 101).unwrap();
        assert_eq!(got.return_to, "r1");
        assert_eq!(got.login.nonce, l.nonce);
        assert!(s.take_login(&state, 101).is_none());
        s.start_login(l, "b1".into(), "r1".into(), 100);
        assert!(s.take_login(&state, 100 + LOGIN_S).is_none());
    }

    #[test]
    fn both_are_bounded_and_the_lapsed_go_first() {
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
        for n in 0..MAX_ENTRIES + 5 {
            s.start_login(Login::new(), "b".into(), format!("r{n}"), 0);
        }
        assert_eq!(s.logins.len(), MAX_ENTRIES);
    }

    #[test]
    fn reloading_one_approvals_page_cannot_push_out_other_approvers_logins() {
        // Anyone may open a page it knows the id of (an agent knows its
        // own call's) and each visit starts a login: a flood of them must
        // not push out an approver's login in progress on another page.
        let mut s = Sessions::default();
        let mine = Login::new();
        let state = mine.state.clone();
        s.start_login(mine, "b1".into(), "r-legit".into(), 0);
        for _ in 0..MAX_ENTRIES + 5 {
            s.start_login(Login::new(), "b2".into(), "r-flood".into(), 1);
        }
        assert!(s.logins.len() <= MAX_PER_PAGE + 1, "{}", s.logins.len());
        assert_eq!(s.take_login(&state, 2).unwrap().return_to, "r-legit");
    }
}
