//! One routing rule of the shared model: what a request must match, and the
//! action (filters, then weighted backends) taken for it. Ingress paths and
//! Gateway API route rules both compile into these; the proxy executes them
//! without knowing which API a rule came from (only `origin` says, for
//! `weir routes`, logs and metrics).
use std::{
    fmt,
    sync::{
        atomic::{AtomicUsize, Ordering},
        Arc,
    },
    time::Duration,
};

use http::{HeaderMap, HeaderName, HeaderValue, Method};

use super::{matching, Upstream};
use crate::model::ObjectRef;

/// How a rule's path is matched.
#[derive(Clone, Debug)]
pub enum PathMatch {
    /// The whole path, case-sensitive.
    Exact(String),
    /// Whole path segments; the key has no trailing slash ("" matches all).
    Prefix(String),
    /// A plain string prefix (Ingress ImplementationSpecific).
    StringPrefix(String),
    /// A regular expression that must match the whole path: the pattern as
    /// written, and compiled anchored at both ends.
    Regex(String, regex::Regex),
}

impl PathMatch {
    pub fn matches(&self, path: &str) -> bool {
        match self {
            PathMatch::Exact(p) => p == path,
            PathMatch::Prefix(key) => matching::prefix_matches(key, path),
            PathMatch::StringPrefix(p) => path.starts_with(p.as_str()),
            PathMatch::Regex(_, r) => r.is_match(path),
        }
    }

    /// The path as configured, for `weir routes` and metrics labels ("/" for the empty prefix).
    pub fn text(&self) -> String {
        match self {
            PathMatch::Exact(p) | PathMatch::StringPrefix(p) => p.clone(),
            PathMatch::Prefix(key) if key.is_empty() => "/".into(),
            PathMatch::Prefix(key) => key.clone(),
            PathMatch::Regex(pattern, _) => pattern.clone(),
        }
    }

    pub fn kind(&self) -> &'static str {
        match self {
            PathMatch::Exact(_) => "Exact",
            PathMatch::Prefix(_) => "Prefix",
            PathMatch::StringPrefix(_) => "ImplementationSpecific",
            PathMatch::Regex(..) => "RegularExpression",
        }
    }
}

/// A header or query parameter value match.
#[derive(Clone, Debug)]
pub enum ValueMatch {
    Exact(String),
    Regex(regex::Regex),
}

impl ValueMatch {
    fn matches(&self, value: &str) -> bool {
        match self {
            ValueMatch::Exact(v) => v == value,
            ValueMatch::Regex(r) => r.is_match(value),
        }
    }
}

/// The parts of a request a rule looks at.
pub struct RequestView<'a> {
    pub method: &'a Method,
    pub path: &'a str,
    pub query: Option<&'a str>,
    pub headers: &'a HeaderMap,
}

/// Everything a request must match (all of it).
#[derive(Clone, Debug)]
pub struct RequestMatch {
    pub path: PathMatch,
    /// Header names are case-insensitive (HeaderName is lower case).
    pub headers: Vec<(HeaderName, ValueMatch)>,
    /// Query parameter names are case-sensitive.
    pub query: Vec<(String, ValueMatch)>,
    pub method: Option<Method>,
}

impl RequestMatch {
    pub fn path_only(path: PathMatch) -> Self {
        Self {
            path,
            headers: Vec::new(),
            query: Vec::new(),
            method: None,
        }
    }

    pub fn matches(&self, req: &RequestView<'_>) -> bool {
        self.path.matches(req.path)
            && self.method.as_ref().is_none_or(|m| m == req.method)
            && self.headers.iter().all(|(name, want)| {
                // Several values of one header count as one, joined by ",".
                let values: Vec<&str> = req
                    .headers
                    .get_all(name)
                    .iter()
                    .filter_map(|v| v.to_str().ok())
                    .collect();
                !values.is_empty() && want.matches(&values.join(","))
            })
            && self.query.iter().all(|(name, want)| {
                // The first occurrence of a parameter is the one matched.
                query_param(req.query, name).is_some_and(|v| want.matches(&v))
            })
    }
}

/// The first value of query parameter `name`, percent-decoded.
pub fn query_param(query: Option<&str>, name: &str) -> Option<String> {
    query?.split('&').find_map(|pair| {
        let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
        (percent_decode(k) == name).then(|| percent_decode(v))
    })
}

fn percent_decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'%' if i + 2 < bytes.len() => {
                let hex = |b: u8| (b as char).to_digit(16);
                match (hex(bytes[i + 1]), hex(bytes[i + 2])) {
                    (Some(h), Some(l)) => {
                        out.push((h * 16 + l) as u8);
                        i += 3;
                        continue;
                    }
                    _ => out.push(b'%'),
                }
            }
            b => out.push(b),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Header edits: set replaces, add appends (a second value of the header),
/// remove deletes; names are case-insensitive.
#[derive(Clone, Debug, Default)]
pub struct HeaderEdit {
    pub set: Vec<(HeaderName, HeaderValue)>,
    pub add: Vec<(HeaderName, HeaderValue)>,
    pub remove: Vec<HeaderName>,
}

impl HeaderEdit {
    pub fn apply(&self, headers: &mut HeaderMap) {
        for (name, value) in &self.set {
            headers.insert(name.clone(), value.clone());
        }
        for (name, value) in &self.add {
            headers.append(name.clone(), value.clone());
        }
        for name in &self.remove {
            headers.remove(name);
        }
    }
}

/// How a redirect or rewrite changes the path.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum PathRewrite {
    Full(String),
    /// Replaces the matched prefix (the rule's Prefix path).
    Prefix(String),
}

impl PathRewrite {
    /// The new path for `path`, which matched `matched` (the rule's path match).
    pub fn apply(&self, matched: &PathMatch, path: &str) -> String {
        match self {
            PathRewrite::Full(p) => p.clone(),
            PathRewrite::Prefix(replacement) => {
                let prefix = match matched {
                    PathMatch::Prefix(key) => key.as_str(),
                    _ => "",
                };
                let rest = path.strip_prefix(prefix).unwrap_or(path);
                let head = replacement.trim_end_matches('/');
                let out = if rest.is_empty() || rest.starts_with('/') {
                    format!("{head}{rest}")
                } else {
                    format!("{head}/{rest}")
                };
                if out.is_empty() {
                    "/".into()
                } else {
                    out
                }
            }
        }
    }
}

/// A redirect answered by the proxy itself.
#[derive(Clone, Debug, Default)]
pub struct RedirectTo {
    pub scheme: Option<String>,
    pub hostname: Option<String>,
    pub port: Option<u16>,
    pub path: Option<PathRewrite>,
    pub status: u16,
}

/// A copy of each request sent to another backend (RequestMirror); its
/// answers are dropped. `percent` of requests (0-100) are mirrored, spread
/// evenly over the requests.
#[derive(Debug)]
pub struct Mirror {
    pub upstream: Arc<Upstream>,
    pub percent: u32,
    seen: AtomicUsize,
}

impl Mirror {
    pub fn new(upstream: Arc<Upstream>, percent: u32) -> Self {
        Self {
            upstream,
            percent: percent.min(100),
            seen: AtomicUsize::new(0),
        }
    }

    /// Whether the next request is mirrored: request k is when
    /// floor((k+1)·p/100) passes floor(k·p/100).
    pub fn sample(&self) -> bool {
        let k = self.seen.fetch_add(1, Ordering::Relaxed) as u64;
        let p = u64::from(self.percent);
        (k + 1) * p / 100 > k * p / 100
    }
}

/// What is done to a request (and its response) before and after forwarding.
#[derive(Clone, Debug, Default)]
pub struct Filters {
    pub mirrors: Vec<Arc<Mirror>>,
    pub request_headers: Option<HeaderEdit>,
    pub response_headers: Option<HeaderEdit>,
    pub redirect: Option<RedirectTo>,
    pub rewrite_host: Option<String>,
    pub rewrite_path: Option<PathRewrite>,
}

/// Where a share of a rule's traffic goes.
#[derive(Debug)]
pub enum Target {
    Upstream(Arc<Upstream>),
    /// A backend that does not resolve: its share is answered 500, as the
    /// Gateway API requires.
    Invalid(String),
}

#[derive(Debug)]
pub struct WeightedBackend {
    pub target: Target,
    pub weight: u32,
    /// Header edits of this backend only (Gateway API backendRef filters).
    pub filters: Filters,
}

/// The backends of a rule, chosen by weight: a smooth, deterministic
/// rotation over the weights (70/30 gives exactly 7 and 3 in every 10).
#[derive(Debug, Default)]
pub struct Backends {
    pub entries: Vec<WeightedBackend>,
    total: u64,
    next: AtomicUsize,
}

impl Backends {
    pub fn new(entries: Vec<WeightedBackend>) -> Self {
        let total = entries.iter().map(|e| u64::from(e.weight)).sum();
        Self {
            entries,
            total,
            next: AtomicUsize::new(0),
        }
    }

    pub fn single(upstream: Arc<Upstream>) -> Self {
        Self::new(vec![WeightedBackend {
            target: Target::Upstream(upstream),
            weight: 1,
            filters: Filters::default(),
        }])
    }

    /// The backend for the next request; None when every weight is 0 (or there is none).
    pub fn pick(&self) -> Option<&WeightedBackend> {
        if self.total == 0 {
            return None;
        }
        let n = self.next.fetch_add(1, Ordering::Relaxed) as u64;
        // Spread each backend's turns across the cycle: slot i of the cycle
        // goes to the backend whose cumulative share first exceeds i, after
        // scrambling i with a stride coprime to the cycle length.
        let slot = (n.wrapping_mul(stride(self.total))) % self.total;
        let mut acc = 0u64;
        self.entries.iter().find(|e| {
            acc += u64::from(e.weight);
            slot < acc
        })
    }

    /// The first upstream (for metrics labels when nothing was chosen yet).
    pub fn first_upstream(&self) -> Option<&Arc<Upstream>> {
        self.entries.iter().find_map(|e| match &e.target {
            Target::Upstream(u) => Some(u),
            Target::Invalid(_) => None,
        })
    }
}

/// A stride coprime to `total`, so that `n * stride % total` visits every slot once per cycle.
fn stride(total: u64) -> u64 {
    let gcd = |mut a: u64, mut b: u64| {
        while b != 0 {
            (a, b) = (b, a % b);
        }
        a
    };
    let mut s = (total * 61 / 100).max(1);
    while gcd(s, total) != 1 {
        s += 1;
    }
    s
}

/// Which object defined a rule.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Origin {
    /// "Ingress" or "HTTPRoute".
    pub kind: &'static str,
    pub object: ObjectRef,
    /// The rule's index in the object (`spec.rules[i]`), where it has one.
    pub rule: Option<usize>,
}

impl fmt::Display for Origin {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} {}", self.kind, self.object)?;
        if let Some(i) = self.rule {
            write!(f, " spec.rules[{i}]")?;
        }
        Ok(())
    }
}

/// What a matched rule does.
#[derive(Debug)]
pub struct Action {
    pub filters: Filters,
    pub backends: Backends,
    pub origin: Origin,
    /// The whole request, and each attempt at a backend (504 beyond).
    pub request_timeout: Option<Duration>,
    pub backend_timeout: Option<Duration>,
    /// Retries on listed status codes (connection failures are always tried
    /// on the next endpoint).
    pub retry: Option<Retry>,
}

#[derive(Clone, Debug, Default)]
pub struct Retry {
    pub codes: Vec<u16>,
    /// Attempts after the first.
    pub attempts: u32,
    pub backoff: Duration,
}

impl Action {
    pub fn forward(upstream: Arc<Upstream>, origin: Origin) -> Self {
        Self {
            filters: Filters::default(),
            backends: Backends::single(upstream),
            origin,
            request_timeout: None,
            backend_timeout: None,
            retry: None,
        }
    }
}

/// A match and its action (shared by the matches of one route rule).
#[derive(Clone, Debug)]
pub struct Rule {
    pub matcher: RequestMatch,
    pub action: Arc<Action>,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn upstream(name: &str) -> Arc<Upstream> {
        Arc::new(Upstream::new(ObjectRef::new("ns", name), 80, Vec::new()))
    }

    fn weighted(weights: &[u32]) -> Backends {
        Backends::new(
            weights
                .iter()
                .enumerate()
                .map(|(i, w)| WeightedBackend {
                    target: Target::Upstream(upstream(&format!("b{i}"))),
                    weight: *w,
                    filters: Filters::default(),
                })
                .collect(),
        )
    }

    fn counts(b: &Backends, n: usize) -> Vec<usize> {
        let mut c = vec![0; b.entries.len()];
        for _ in 0..n {
            let chosen = b.pick().unwrap() as *const WeightedBackend;
            let i = b
                .entries
                .iter()
                .position(|e| std::ptr::eq(e, chosen))
                .unwrap();
            c[i] += 1;
        }
        c
    }

    #[test]
    fn weights_split_traffic_exactly_per_cycle_and_zero_gets_nothing() {
        assert_eq!(counts(&weighted(&[70, 30]), 500), [350, 150]);
        assert_eq!(counts(&weighted(&[1, 0, 1]), 10), [5, 0, 5]);
        assert_eq!(counts(&weighted(&[80, 20, 0]), 100), [80, 20, 0]);
        assert!(weighted(&[0, 0]).pick().is_none());
        assert!(weighted(&[]).pick().is_none());
    }

    #[test]
    fn weighted_turns_are_interleaved_not_in_runs() {
        let b = weighted(&[50, 50]);
        let first: Vec<usize> = (0..10)
            .map(|_| {
                let chosen = b.pick().unwrap() as *const WeightedBackend;
                b.entries
                    .iter()
                    .position(|e| std::ptr::eq(e, chosen))
                    .unwrap()
            })
            .collect();
        assert!(first.contains(&0) && first.contains(&1), "{first:?}");
    }

    #[test]
    fn mirrors_sample_their_percentage_evenly() {
        let m = Mirror::new(upstream("m"), 30);
        let picks: Vec<bool> = (0..100).map(|_| m.sample()).collect();
        assert_eq!(picks.iter().filter(|p| **p).count(), 30);
        assert!(
            picks[..10].iter().any(|p| *p),
            "spread, not bunched at the end"
        );
        let all = Mirror::new(upstream("m"), 100);
        assert!((0..10).all(|_| all.sample()));
        let none = Mirror::new(upstream("m"), 0);
        assert!((0..10).all(|_| !none.sample()));
    }

    #[test]
    fn prefix_rewrites_replace_whole_segments() {
        let m = PathMatch::Prefix("/prefix/one".into());
        let r = PathRewrite::Prefix("/one".into());
        assert_eq!(r.apply(&m, "/prefix/one/two"), "/one/two");
        assert_eq!(r.apply(&m, "/prefix/one"), "/one");
        let strip = PathMatch::Prefix("/strip-prefix".into());
        let to_root = PathRewrite::Prefix("/".into());
        assert_eq!(to_root.apply(&strip, "/strip-prefix/three"), "/three");
        assert_eq!(to_root.apply(&strip, "/strip-prefix"), "/");
        assert_eq!(to_root.apply(&strip, "/strip-prefix/"), "/");
        assert_eq!(
            PathRewrite::Full("/one".into()).apply(&strip, "/strip-prefix/x"),
            "/one"
        );
    }

    #[test]
    fn requests_match_headers_case_insensitively_and_query_and_method() {
        let mut headers = HeaderMap::new();
        headers.insert("version", HeaderValue::from_static("two"));
        let m = RequestMatch {
            path: PathMatch::Prefix(String::new()),
            headers: vec![(
                HeaderName::from_static("version"),
                ValueMatch::Exact("two".into()),
            )],
            query: vec![("animal".into(), ValueMatch::Exact("whale".into()))],
            method: Some(Method::POST),
        };
        let view = |method: &'static Method, query: Option<&'static str>, h: &'static HeaderMap| {
            RequestView {
                method,
                path: "/x",
                query,
                headers: h,
            }
        };
        let h: &'static HeaderMap = Box::leak(Box::new(headers));
        let empty: &'static HeaderMap = Box::leak(Box::new(HeaderMap::new()));
        assert!(m.matches(&view(&Method::POST, Some("animal=whale&x=1"), h)));
        assert!(!m.matches(&view(&Method::GET, Some("animal=whale"), h)));
        assert!(!m.matches(&view(&Method::POST, Some("animal=dolphin"), h)));
        assert!(!m.matches(&view(&Method::POST, None, h)));
        assert!(!m.matches(&view(&Method::POST, Some("animal=whale"), empty)));
        assert_eq!(
            query_param(Some("a=b%20c&a=d"), "a").as_deref(),
            Some("b c")
        );
        assert_eq!(
            query_param(Some("a=%e2%82%ac%"), "a").as_deref(),
            Some("\u{20ac}%")
        );
    }
}
