//! Host and path matching rules of Ingress v1, as small pure functions.

/// The host part of a Host header or :authority, lower-cased, without a port
/// (IPv6 literals keep their brackets). None when it is empty.
pub fn normalize_host(authority: &str) -> Option<String> {
    let authority = authority.trim();
    let host = if authority.starts_with('[') {
        match authority.find(']') {
            Some(end) => &authority[..=end],
            None => authority,
        }
    } else {
        authority.split(':').next().unwrap_or(authority)
    };
    let host = host.trim_end_matches('.');
    (!host.is_empty()).then(|| host.to_ascii_lowercase())
}

/// For a wildcard host `*.foo.com`, the suffix `foo.com`; None for any other host.
pub fn wildcard_suffix(host: &str) -> Option<&str> {
    host.strip_prefix("*.").filter(|s| !s.is_empty())
}

/// The suffix a request host must have to match a wildcard rule: everything
/// after the first label (a wildcard matches exactly one label).
pub fn parent_of(host: &str) -> Option<&str> {
    let (first, rest) = host.split_once('.')?;
    (!first.is_empty() && !rest.is_empty()).then_some(rest)
}

/// Whether `host` is a valid rule host: DNS labels, optionally one leading `*.`.
pub fn valid_host(host: &str) -> bool {
    let name = wildcard_suffix(host).unwrap_or(host);
    !name.is_empty()
        && name.len() <= 253
        && name.split('.').all(|label| {
            !label.is_empty()
                && label.len() <= 63
                && label
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-')
                && !label.starts_with('-')
                && !label.ends_with('-')
        })
}

/// Whether a rule path is acceptable: absolute, without whitespace or a query.
pub fn valid_path(path: &str) -> bool {
    path.starts_with('/')
        && !path
            .bytes()
            .any(|b| b.is_ascii_whitespace() || b == b'?' || b == b'#')
}

/// A Prefix rule path in the form it is matched: without trailing slashes
/// (`/foo/` is `/foo`; `/` is the empty prefix, which matches every path).
pub fn prefix_key(path: &str) -> String {
    path.trim_end_matches('/').to_string()
}

/// Prefix matching per path element: `/foo` matches `/foo`, `/foo/` and
/// `/foo/bar`, but not `/foobar`.
pub fn prefix_matches(key: &str, path: &str) -> bool {
    match path.strip_prefix(key) {
        Some(rest) => rest.is_empty() || rest.starts_with('/') || key.is_empty(),
        None => false,
    }
}
