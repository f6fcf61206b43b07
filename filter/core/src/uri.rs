//! Resource identifiers (RFC 9728, RFC 8707): `http(s)` URLs with a host
//! and no query or fragment. A leaf: configuration validates with it, the
//! OAuth metadata is served with it.

/// Splits an `http(s)` URL into its origin and path (`/` when empty).
pub fn split(uri: &str) -> Option<(&str, &str)> {
    let rest = uri
        .strip_prefix("https://")
        .or_else(|| uri.strip_prefix("http://"))?;
    let scheme_len = uri.len() - rest.len();
    let (host, path) = match rest.find('/') {
        Some(i) => rest.split_at(i),
        None => (rest, ""),
    };
    if host.is_empty() || uri.contains(['?', '#']) {
        return None;
    }
    let origin = uri.get(..scheme_len + host.len())?;
    Some((origin, path))
}

/// Whether a string can be a resource identifier here: an `http(s)` URL
/// with a host, no query and no fragment (RFC 9728 §1.2).
pub fn valid_resource(uri: &str) -> bool {
    split(uri).is_some() && !uri.contains(['"', '\\', ' '])
}
