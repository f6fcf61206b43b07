//! A browser, as far as signing in needs one: a cookie jar, redirects
//! followed, forms read from the page and submitted. It drives the real
//! provider's approver sign-in (and the approval service's pages) the way
//! a person's browser would, over the harness's one HTTP client
//! ([`crate::send_raw`]). Loopback `http://` URLs only; cookies are kept
//! per host, not per port, as browsers keep them. No scripts, no
//! SameSite rules (everything is on one site here).

use crate::Response;

/// Redirects followed before giving up (a loop is a failure).
const MAX_REDIRECTS: usize = 20;

/// A response and the URL it came from.
#[derive(Debug, Clone)]
pub struct Page {
    /// The URL of the last request (after redirects).
    pub url: String,
    /// What it answered.
    pub response: Response,
}

/// A form on a page: where it goes and the fields it carries (hidden ones
/// with their values, the others as the page filled them).
#[derive(Debug, Clone)]
pub struct Form {
    /// Its `action`, resolved against the page's URL.
    pub action: String,
    /// Its `method`, upper-cased (GET when absent).
    pub method: String,
    /// Its inputs' names and values, in page order.
    pub fields: Vec<(String, String)>,
}

impl Page {
    /// The forms on the page.
    pub fn forms(&self) -> Vec<Form> {
        let body = &self.response.body;
        let mut forms = Vec::new();
        let mut rest = body.as_str();
        while let Some(start) = find_ci(rest, "<form") {
            let tail = &rest[start..];
            let end = find_ci(tail, "</form").unwrap_or(tail.len());
            let inner = &tail[..end];
            let head = tag_attrs(inner);
            let action = head
                .iter()
                .find(|(k, _)| k == "action")
                .map(|(_, v)| v.as_str());
            let method = head
                .iter()
                .find(|(k, _)| k == "method")
                .map_or("GET".to_string(), |(_, v)| v.to_ascii_uppercase());
            let mut fields = Vec::new();
            let mut scan = inner;
            while let Some(i) = find_ci(scan, "<input") {
                let attrs = tag_attrs(&scan[i..]);
                let get = |k: &str| attrs.iter().find(|(n, _)| n == k).map(|(_, v)| v.clone());
                if let Some(name) = get("name") {
                    fields.push((name, get("value").unwrap_or_default()));
                }
                scan = &scan[i + 6..];
            }
            forms.push(Form {
                action: resolve(&self.url, action.unwrap_or(&self.url)),
                method,
                fields,
            });
            rest = &tail[end.max(5)..];
        }
        forms
    }

    /// A query parameter of the page's URL.
    pub fn query(&self, name: &str) -> Option<String> {
        let (_, query) = self.url.split_once('?')?;
        query.split('&').find_map(|pair| {
            let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
            (percent_decode(k) == name).then(|| percent_decode(v))
        })
    }
}

#[derive(Debug, Clone)]
struct Cookie {
    host: String,
    path: String,
    name: String,
    value: String,
}

/// A cookie jar and the URLs visited.
#[derive(Debug, Default)]
pub struct Browser {
    jar: Vec<Cookie>,
    /// Every URL requested, in order, redirects included.
    pub visited: Vec<String>,
}

impl Browser {
    /// A browser with no cookies.
    pub fn new() -> Browser {
        Browser::default()
    }

    /// A cookie's value, if the jar holds it (any host, any path).
    pub fn cookie(&self, name: &str) -> Option<&str> {
        self.jar
            .iter()
            .find(|c| c.name == name)
            .map(|c| c.value.as_str())
    }

    /// GETs `url`, following redirects.
    pub fn get(&mut self, url: &str) -> Page {
        self.navigate("GET", url, None)
    }

    /// Submits `fields` to `url` as a form (POST,
    /// `application/x-www-form-urlencoded`), following redirects.
    pub fn post_form(&mut self, url: &str, fields: &[(&str, &str)]) -> Page {
        let body = fields
            .iter()
            .map(|(k, v)| {
                format!(
                    "{}={}",
                    super::provider::form_encode(k),
                    super::provider::form_encode(v)
                )
            })
            .collect::<Vec<_>>()
            .join("&");
        self.navigate("POST", url, Some(body))
    }

    /// Submits `form` with its fields, `set` replacing or adding values.
    pub fn submit(&mut self, form: &Form, set: &[(&str, &str)]) -> Page {
        let mut fields: Vec<(String, String)> = form.fields.clone();
        for (k, v) in set {
            match fields.iter_mut().find(|(n, _)| n == k) {
                Some(f) => f.1 = v.to_string(),
                None => fields.push((k.to_string(), v.to_string())),
            }
        }
        let pairs: Vec<(&str, &str)> = fields
            .iter()
            .map(|(k, v)| (k.as_str(), v.as_str()))
            .collect();
        if form.method == "POST" {
            self.post_form(&form.action, &pairs)
        } else {
            let query: Vec<String> = pairs
                .iter()
                .map(|(k, v)| {
                    format!(
                        "{}={}",
                        super::provider::form_encode(k),
                        super::provider::form_encode(v)
                    )
                })
                .collect();
            let base = form.action.split('?').next().unwrap_or(&form.action);
            self.get(&format!("{base}?{}", query.join("&")))
        }
    }

    /// Signs in as a person would: opens `url` (a page that sends the
    /// browser to the provider's authorization endpoint), fills the sign-in
    /// form it lands on with `username` and `password`, submits it and
    /// follows the redirects back (to the client's redirect_uri and on).
    /// Returns the last page: the form again (401) when the credentials are
    /// wrong. Panics when no sign-in form shows up, as when this browser
    /// is signed in at the provider already (its session lasts an hour):
    /// then [`Browser::get`] goes straight through.
    pub fn sign_in(&mut self, url: &str, username: &str, password: &str) -> Page {
        let page = self.get(url);
        let form = page
            .forms()
            .into_iter()
            .find(|f| f.fields.iter().any(|(n, _)| n == "password"))
            .unwrap_or_else(|| panic!("no sign-in form at {}: {:?}", page.url, page.response));
        self.submit(&form, &[("username", username), ("password", password)])
    }

    fn navigate(&mut self, method: &str, url: &str, body: Option<String>) -> Page {
        let (mut method, mut url, mut body) = (method.to_string(), url.to_string(), body);
        for _ in 0..=MAX_REDIRECTS {
            let response = self.send(&method, &url, body.as_deref());
            let location = response.header("location").map(str::to_string);
            let next = match (response.status, location) {
                (301..=303, Some(l)) => {
                    (method, body) = ("GET".into(), None);
                    l
                }
                (307 | 308, Some(l)) => l,
                _ => return Page { url, response },
            };
            url = resolve(&url, &next);
        }
        panic!("more than {MAX_REDIRECTS} redirects, last to {url}");
    }

    fn send(&mut self, method: &str, url: &str, body: Option<&str>) -> Response {
        self.visited.push(url.to_string());
        let (host, port, path) = split_url(url);
        let cookies: Vec<String> = self
            .jar
            .iter()
            .filter(|c| c.host == host && path_matches(&path, &c.path))
            .map(|c| format!("{}={}", c.name, c.value))
            .collect();
        let mut req =
            format!("{method} {path} HTTP/1.1\r\nhost: {host}:{port}\r\nconnection: close\r\n");
        if !cookies.is_empty() {
            req.push_str(&format!("cookie: {}\r\n", cookies.join("; ")));
        }
        let body = body.unwrap_or("");
        if method == "POST" {
            req.push_str("content-type: application/x-www-form-urlencoded\r\n");
        }
        req.push_str(&format!("content-length: {}\r\n\r\n{body}", body.len()));
        let response =
            crate::send_raw(port, req.as_bytes()).unwrap_or_else(|e| panic!("{method} {url}: {e}"));
        for (_, v) in response.headers.iter().filter(|(k, _)| k == "set-cookie") {
            self.store(&host, &path, v);
        }
        response
    }

    /// Keeps (or, when expired, drops) one `Set-Cookie`.
    fn store(&mut self, host: &str, request_path: &str, header: &str) {
        let mut parts = header.split(';').map(str::trim);
        let Some((name, value)) = parts.next().and_then(|p| p.split_once('=')) else {
            return;
        };
        let mut path = default_path(request_path);
        let mut expired = false;
        for attr in parts {
            let (k, v) = attr.split_once('=').unwrap_or((attr, ""));
            match k.to_ascii_lowercase().as_str() {
                "path" if v.starts_with('/') => path = v.to_string(),
                "max-age" => expired |= v.parse::<i64>().is_ok_and(|s| s <= 0),
                "expires" => {
                    expired |= chrono::DateTime::parse_from_rfc2822(v)
                        .is_ok_and(|t| t < chrono::Utc::now())
                }
                _ => {}
            }
        }
        self.jar
            .retain(|c| !(c.host == host && c.path == path && c.name == name));
        if !expired {
            self.jar.push(Cookie {
                host: host.to_string(),
                path,
                name: name.to_string(),
                value: value.to_string(),
            });
        }
    }
}

/// `(host, port, path with query)` of a loopback `http://` URL.
fn split_url(url: &str) -> (String, u16, String) {
    let rest = url
        .strip_prefix("http://")
        .unwrap_or_else(|| panic!("not an http:// URL: {url}"));
    let (authority, path) = rest.split_at(rest.find('/').unwrap_or(rest.len()));
    let (host, port) = authority
        .rsplit_once(':')
        .and_then(|(h, p)| Some((h, p.parse().ok()?)))
        .unwrap_or((authority, 80));
    assert!(
        host == "127.0.0.1" || host == "localhost",
        "the browser stays on loopback: {url}"
    );
    let path = if path.is_empty() { "/" } else { path };
    (host.to_string(), port, path.to_string())
}

/// `target` (absolute, or a path) resolved against `base`.
fn resolve(base: &str, target: &str) -> String {
    if target.starts_with("http://") || target.starts_with("https://") {
        return target.to_string();
    }
    let (host, port, path) = split_url(base);
    if target.starts_with('/') {
        return format!("http://{host}:{port}{target}");
    }
    let dir = path.split('?').next().unwrap_or("/");
    let dir = &dir[..dir.rfind('/').map_or(0, |i| i + 1)];
    format!("http://{host}:{port}{dir}{target}")
}

/// RFC 6265 §5.1.4: a cookie's path covers the request's.
fn path_matches(request: &str, cookie: &str) -> bool {
    let request = request.split('?').next().unwrap_or("/");
    request == cookie
        || (request.starts_with(cookie)
            && (cookie.ends_with('/') || request.as_bytes().get(cookie.len()) == Some(&b'/')))
}

/// RFC 6265 §5.1.4: without a Path, the request path's directory.
fn default_path(request: &str) -> String {
    let path = request.split('?').next().unwrap_or("/");
    match path.rfind('/') {
        Some(0) | None => "/".into(),
        Some(i) => path[..i].to_string(),
    }
}

fn find_ci(haystack: &str, needle: &str) -> Option<usize> {
    haystack.to_ascii_lowercase().find(needle)
}

/// The attributes of the tag `text` starts with, names lower-cased, values
/// unescaped (quoted with " or ', or bare).
fn tag_attrs(text: &str) -> Vec<(String, String)> {
    let end = text.find('>').unwrap_or(text.len());
    let tag = &text[..end];
    let mut attrs = Vec::new();
    let mut rest = tag.split_once(char::is_whitespace).map_or("", |(_, r)| r);
    loop {
        rest = rest.trim_start_matches(|c: char| c.is_whitespace() || c == '/');
        if rest.is_empty() {
            return attrs;
        }
        let name_end = rest
            .find(|c: char| c == '=' || c.is_whitespace() || c == '/')
            .unwrap_or(rest.len());
        let name = rest[..name_end].to_ascii_lowercase();
        rest = &rest[name_end..];
        let mut value = String::new();
        if let Some(after) = rest.trim_start().strip_prefix('=') {
            let after = after.trim_start();
            let (raw, tail) = match after.chars().next() {
                Some(q @ ('"' | '\'')) => {
                    let inner = &after[1..];
                    let close = inner.find(q).unwrap_or(inner.len());
                    (&inner[..close], inner.get(close + 1..).unwrap_or(""))
                }
                _ => after.split_at(after.find(char::is_whitespace).unwrap_or(after.len())),
            };
            value = unescape(raw);
            rest = tail;
        }
        attrs.push((name, value));
    }
}

/// HTML character references: the named ones markup escapes with, and
/// numeric ones.
fn unescape(text: &str) -> String {
    let mut out = String::new();
    let mut rest = text;
    while let Some(i) = rest.find('&') {
        out.push_str(&rest[..i]);
        let tail = &rest[i..];
        let Some(semi) = tail.find(';').filter(|s| *s <= 10) else {
            out.push('&');
            rest = &tail[1..];
            continue;
        };
        let entity = &tail[1..semi];
        let ch = match entity {
            "amp" => Some('&'),
            "lt" => Some('<'),
            "gt" => Some('>'),
            "quot" => Some('"'),
            "apos" => Some('\''),
            _ => entity
                .strip_prefix("#x")
                .and_then(|h| u32::from_str_radix(h, 16).ok())
                .or_else(|| entity.strip_prefix('#').and_then(|d| d.parse().ok()))
                .and_then(char::from_u32),
        };
        match ch {
            Some(c) => {
                out.push(c);
                rest = &tail[semi + 1..];
            }
            None => {
                out.push('&');
                rest = &tail[1..];
            }
        }
    }
    out.push_str(rest);
    out
}

fn percent_decode(text: &str) -> String {
    let bytes = text.as_bytes();
    let hex = |b: Option<&u8>| b.and_then(|b| char::from(*b).to_digit(16));
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while let Some(&b) = bytes.get(i) {
        match (b, hex(bytes.get(i + 1)), hex(bytes.get(i + 2))) {
            (b'+', _, _) => out.push(b' '),
            (b'%', Some(h), Some(l)) => {
                out.push((h * 16 + l) as u8);
                i += 2;
            }
            _ => out.push(b),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_cookie_with_a_path_goes_only_below_it() {
        assert!(path_matches("/interaction/abc/login", "/interaction/abc"));
        assert!(path_matches("/interaction/abc", "/interaction/abc"));
        assert!(!path_matches("/interaction/abcd", "/interaction/abc"));
        assert!(path_matches("/anything?x=1", "/"));
    }

    #[test]
    fn forms_are_read_with_their_escaped_values() {
        let page = Page {
            url: "http://127.0.0.1:9/a/x".into(),
            response: Response {
                status: 200,
                headers: vec![],
                body: r#"<p>x</p><FORM method="post" action="/a/x/approve?k=1&amp;j=2">
                  <input type="hidden" name="csrf" value="t&#34;o">
                  <input name='username' value=''></form>
                  <form action="reject"><input name="csrf" value="z"></form>"#
                    .into(),
            },
        };
        let forms = page.forms();
        assert_eq!(forms.len(), 2, "{forms:?}");
        assert_eq!(forms[0].action, "http://127.0.0.1:9/a/x/approve?k=1&j=2");
        assert_eq!(forms[0].method, "POST");
        assert_eq!(
            forms[0].fields,
            vec![
                ("csrf".into(), "t\"o".into()),
                ("username".into(), String::new())
            ]
        );
        assert_eq!(forms[1].action, "http://127.0.0.1:9/a/reject");
        assert_eq!(forms[1].method, "GET");
    }
}
