//! The HTML an approver sees: the call's page (agent, who it acts for,
//! service and endpoint, tool, arguments, state, expiry, and the
//! approve/reject forms with the session's CSRF token) and short message
//! pages. Everything a caller supplied is HTML-escaped, and characters
//! that would hide or reorder text (bidirectional overrides, zero-width
//! characters, controls) are shown as `\u{..}` so the approver reads the
//! call as it is.
//! Also the constant-time comparison used for the filter key, the CSRF
//! token and the nonce.

use crate::store::{Record, Shown};
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq as _;

/// Whether two secrets are equal, in time independent of where they
/// differ and of their lengths (their digests are compared).
pub fn ct_eq(a: &str, b: &str) -> bool {
    let (da, db) = (Sha256::digest(a.as_bytes()), Sha256::digest(b.as_bytes()));
    bool::from(da.as_slice().ct_eq(db.as_slice()))
}

/// Characters that can make text read other than it is.
fn hidden(c: char) -> bool {
    (c.is_control() && c != '\n')
        || matches!(c,
            '\u{00ad}' | '\u{061c}' | '\u{180e}' | '\u{200b}'..='\u{200f}'
            | '\u{2028}'..='\u{202e}' | '\u{2060}'..='\u{206f}' | '\u{feff}'
            | '\u{fff9}'..='\u{fffb}')
}

/// `s` as HTML text or attribute value.
pub fn escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 16);
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c if hidden(c) => out.push_str(&format!("\\u{{{:04x}}}", u32::from(c))),
            c => out.push(c),
        }
    }
    out
}

/// A whole page around `body` (already HTML).
pub fn page(title: &str, body: &str) -> String {
    format!(
        "<!doctype html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">\
         <meta name=\"viewport\" content=\"width=device-width\">\
         <title>{t}</title><style>\
         body{{font-family:sans-serif;max-width:50rem;margin:2rem auto;padding:0 1rem}}\
         dt{{font-weight:bold;margin-top:.6rem}}pre{{background:#f4f4f4;padding:.6rem;\
         white-space:pre-wrap;word-break:break-all}}form{{display:inline-block;margin-right:1rem}}\
         button{{font-size:1.1rem;padding:.4rem 1.2rem}}</style></head>\
         <body><h1>{t}</h1>\n{body}</body></html>\n",
        t = escape(title)
    )
}

/// A page with one sentence.
pub fn message(title: &str, text: &str) -> String {
    page(title, &format!("<p>{}</p>\n", escape(text)))
}

/// `unix` seconds as `YYYY-MM-DD HH:MM:SS UTC`.
pub fn utc(unix: u64) -> String {
    let days = unix / 86_400;
    let secs = unix % 86_400;
    // Howard Hinnant's civil_from_days, for days since 1970-01-01.
    let z = days + 719_468;
    let era = z / 146_097;
    let doe = z % 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + u64::from(m <= 2);
    format!(
        "{y:04}-{m:02}-{d:02} {:02}:{:02}:{:02} UTC",
        secs / 3600,
        secs / 60 % 60,
        secs % 60
    )
}

/// The state as a sentence.
fn state_text(s: &Shown) -> String {
    match s {
        Shown::Pending => "pending: waiting for an approver".into(),
        Shown::Approved(a) => format!("approved by {a}; the agent may retry the call once"),
        Shown::Rejected(a) => format!("rejected by {a}"),
        Shown::Used(a) => format!("approved by {a} and used"),
        Shown::Expired => "expired".into(),
    }
}

/// The call's page for an approver. `csrf` is the session's token; the
/// forms are there only while the record is pending.
pub fn record_page(r: &Record, now: u64, subject: &str, csrf: &str, public_url: &str) -> String {
    let shown = r.shown(now);
    let c = &r.call;
    let chain = if c.chain.is_empty() {
        "<em>no one: the agent acts on its own</em>".to_string()
    } else {
        c.chain
            .iter()
            .map(|s| format!("<code>{}</code>", escape(s)))
            .collect::<Vec<_>>()
            .join(" &rarr; ")
    };
    let args = serde_json::to_string_pretty(&c.arguments).unwrap_or_default();
    let mut body = format!(
        "<p>Signed in as <b>{who}</b>. An agent asks to make exactly this call.</p>\n<dl>\
         <dt>Agent</dt><dd><code>{agent}</code></dd>\
         <dt>Acting for</dt><dd>{chain}</dd>\
         <dt>Service</dt><dd><code>{service}</code>{endpoint}</dd>\
         <dt>Tool</dt><dd><code>{tool}</code></dd>\
         <dt>Arguments</dt><dd><pre>{args}</pre></dd>\
         <dt>State</dt><dd id=\"state\">{state}</dd>\
         <dt>Expires</dt><dd>{expires}</dd>\
         <dt>Binding</dt><dd><code>{binding}</code></dd></dl>\n",
        who = escape(subject),
        agent = escape(&c.agent),
        service = escape(&c.service),
        endpoint = c
            .endpoint
            .as_deref()
            .map(|e| format!(", at <code>{}</code>", escape(e)))
            .unwrap_or_default(),
        tool = escape(&c.tool),
        args = escape(&args),
        state = escape(&state_text(&shown)),
        expires = escape(&utc(r.expires_at)),
        binding = escape(&r.binding),
    );
    if shown == Shown::Pending {
        for (action, label) in [("approve", "Approve"), ("reject", "Reject")] {
            body.push_str(&format!(
                "<form method=\"post\" action=\"{url}/a/{id}/{action}\">\
                 <input type=\"hidden\" name=\"csrf\" value=\"{csrf}\">\
                 <button type=\"submit\" name=\"decision\" value=\"{action}\">{label}</button></form>\n",
                url = escape(public_url),
                id = escape(&r.id),
                csrf = escape(csrf),
            ));
        }
    }
    page("Approve this tool call?", &body)
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
mod tests {
    use super::*;
    use crate::check::{binding_of, parse};
    use crate::store::{Limits, Store};
    use serde_json::json;

    fn record(args: serde_json::Value, agent: &str) -> (Store, String) {
        let call = json!({"agent": agent, "arguments": args, "chain": ["<b>u1</b>"],
                          "endpoint": "/mcp?x=<i>", "service": "tickets", "tool": "close"})
        .to_string();
        let body = json!({"binding": binding_of(&call), "call": call,
                          "approvers": ["alice"], "ttl_s": 60});
        let i = parse(body.to_string().as_bytes()).unwrap();
        let mut s = Store::new(Limits::default());
        s.check(&i, 0, "r1".into()).unwrap();
        (s, "r1".into())
    }

    #[test]
    fn hostile_arguments_show_as_text() {
        let (s, id) = record(
            json!({"note": "<script>alert(1)</script>", "q": "\"><img src=x onerror=alert(1)>"}),
            "agent<svg onload=alert(1)>",
        );
        let html = record_page(s.get(&id).unwrap(), 1, "alice", "tok", "http://x");
        assert!(!html.contains("<script>"), "{html}");
        assert!(!html.contains("<img"), "{html}");
        assert!(!html.contains("<svg"), "{html}");
        assert!(!html.contains("<b>u1"), "{html}");
        assert!(
            html.contains("&lt;script&gt;alert(1)&lt;/script&gt;"),
            "{html}"
        );
        assert!(
            html.contains("&lt;img src=x onerror=alert(1)&gt;"),
            "{html}"
        );
        assert!(html.contains("agent&lt;svg onload=alert(1)&gt;"), "{html}");
        assert!(html.contains("&lt;b&gt;u1&lt;/b&gt;"), "{html}");
        // Where the call goes, shown with the service.
        assert!(html.contains("at <code>/mcp?x=&lt;i&gt;</code>"), "{html}");
        // Pretty JSON, so the approver reads each argument on its line.
        assert!(html.contains("\n  &quot;note&quot;: "), "{html}");
    }

    #[test]
    fn text_that_hides_itself_is_made_visible() {
        // A right-to-left override would make "exe.txt" read "txt.exe".
        assert_eq!(
            escape("a\u{202e}b\u{200b}c\u{0007}"),
            "a\\u{202e}b\\u{200b}c\\u{0007}"
        );
        assert_eq!(escape("'&'"), "&#39;&amp;&#39;");
    }

    #[test]
    fn forms_only_while_pending_and_with_the_token() {
        let (mut s, id) = record(json!({}), "a1");
        let html = record_page(s.get(&id).unwrap(), 1, "alice", "tok-1", "http://x");
        assert!(html.contains("action=\"http://x/a/r1/approve\""), "{html}");
        assert!(html.contains("action=\"http://x/a/r1/reject\""), "{html}");
        assert_eq!(html.matches("name=\"csrf\" value=\"tok-1\"").count(), 2);
        s.decide(&id, "alice", true, 2).unwrap();
        let html = record_page(s.get(&id).unwrap(), 3, "alice", "tok-1", "http://x");
        assert!(!html.contains("<form"), "{html}");
        assert!(html.contains("approved by alice"), "{html}");
        let html = record_page(s.get(&id).unwrap(), 1000, "alice", "tok-1", "http://x");
        assert!(html.contains(">expired<"), "{html}");
    }

    #[test]
    fn times_and_comparisons() {
        assert_eq!(utc(0), "1970-01-01 00:00:00 UTC");
        assert_eq!(utc(1_700_000_000), "2023-11-14 22:13:20 UTC");
        assert_eq!(utc(951_825_600), "2000-02-29 12:00:00 UTC");
        assert!(ct_eq("abc", "abc"));
        assert!(!ct_eq("abc", "abd"));
        assert!(!ct_eq("abc", "abcd"));
        assert!(!ct_eq("", "a"));
    }
}
