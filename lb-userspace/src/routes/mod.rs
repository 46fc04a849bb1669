//! The L7 routing table: Ingress objects -> hosts -> paths -> upstreams,
//! built purely from the model (`build`) and consulted by the proxy for
//! every request. A table is immutable; a change builds a new one and the
//! proxy swaps it in whole (ArcSwap), so a request sees one table from start
//! to end.
//!
//! Matching (Ingress v1):
//! - host: an exact host beats a wildcard (`*.foo.com` matches exactly one
//!   label: `bar.foo.com`, not `foo.com` or `a.bar.foo.com`), which beats
//!   rules without a host. Only the most specific matching host's rules are
//!   considered; when none of its paths match, the request goes to the default
//!   backend (or 404).
//! - path: Exact is case-sensitive and trailing-slash strict; Prefix matches
//!   whole path elements and ignores a trailing slash; ImplementationSpecific
//!   is, in Weir, a plain string prefix (`/foo` matches `/foobar` too). The
//!   longest matching path wins; at equal length Exact beats Prefix, which
//!   beats ImplementationSpecific.
//! - several Ingresses may define rules for the same host: they are merged;
//!   where two define the same host, path and type, the first in
//!   namespace/name order wins and the other is reported.
pub mod build;
pub mod matching;
pub mod rows;
pub mod tls;

use std::{
    collections::HashMap,
    net::SocketAddr,
    sync::{
        atomic::{AtomicUsize, Ordering},
        Arc,
    },
};

use rustls::sign::CertifiedKey;

pub use build::{build, RouteConfig};

use crate::model::{ObjectRef, PathType};

/// The IngressClass controller name Weir serves.
pub const CONTROLLER: &str = "weir.dev/ingress-controller";

/// A Service port the proxy forwards to, with its current endpoints.
#[derive(Debug)]
pub struct Upstream {
    pub service: ObjectRef,
    /// The Service port (not the target port).
    pub port: u16,
    /// Ready endpoints (or serving-terminating ones when none is ready).
    pub endpoints: Vec<SocketAddr>,
    next: AtomicUsize,
}

impl Upstream {
    pub fn new(service: ObjectRef, port: u16, endpoints: Vec<SocketAddr>) -> Self {
        Self {
            service,
            port,
            endpoints,
            next: AtomicUsize::new(0),
        }
    }

    /// The endpoints in the order to try them for one request: round robin
    /// over requests, then the others in turn (the retry order).
    pub fn attempt_order(&self) -> impl Iterator<Item = SocketAddr> + '_ {
        let n = self.endpoints.len();
        let start = if n == 0 {
            0
        } else {
            self.next.fetch_add(1, Ordering::Relaxed) % n
        };
        (0..n).map(move |i| self.endpoints[(start + i) % n])
    }
}

impl PartialEq for Upstream {
    fn eq(&self, other: &Self) -> bool {
        self.service == other.service
            && self.port == other.port
            && self.endpoints == other.endpoints
    }
}

/// One path rule of a host.
#[derive(Debug, Clone)]
pub struct PathRoute {
    pub path_type: PathType,
    /// Exact: the path as written; Prefix: without trailing slashes;
    /// ImplementationSpecific: as written.
    pub key: String,
    pub upstream: Arc<Upstream>,
    /// The Ingress that defined it (for `weir ingress routes` and logs).
    pub ingress: ObjectRef,
}

impl PathRoute {
    pub fn matches(&self, path: &str) -> bool {
        match self.path_type {
            PathType::Exact => self.key == path,
            PathType::Prefix => matching::prefix_matches(&self.key, path),
            PathType::ImplementationSpecific => path.starts_with(&self.key),
        }
    }

    /// Orders matches: longer paths first, then Exact, Prefix, ImplementationSpecific.
    fn rank(&self) -> (usize, u8) {
        let kind = match self.path_type {
            PathType::Exact => 2,
            PathType::Prefix => 1,
            PathType::ImplementationSpecific => 0,
        };
        (self.key.len(), kind)
    }
}

/// The path rules of one host, best first.
#[derive(Debug, Clone, Default)]
pub struct HostRoutes {
    pub paths: Vec<PathRoute>,
}

impl HostRoutes {
    pub fn route(&self, path: &str) -> Option<&PathRoute> {
        // Sorted best first, so the first match is the longest / most exact.
        self.paths.iter().find(|r| r.matches(path))
    }

    fn sort(&mut self) {
        self.paths.sort_by_key(|r| std::cmp::Reverse(r.rank()));
    }
}

/// Which rule a request matched, for tests and `weir ingress routes`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Matched {
    Path {
        host: String,
        path_type: PathType,
        path: String,
    },
    DefaultBackend,
}

/// The immutable routing table.
#[derive(Debug, Default)]
pub struct RouteTable {
    /// Exact hosts.
    pub hosts: HashMap<String, HostRoutes>,
    /// Wildcard hosts by suffix (`*.foo.com` under `foo.com`).
    pub wildcards: HashMap<String, HostRoutes>,
    /// Rules without a host.
    pub any_host: Option<HostRoutes>,
    pub default_backend: Option<(Arc<Upstream>, ObjectRef)>,
    /// Certificates by exact host or wildcard (`*.foo.com`).
    pub certs: HashMap<String, Arc<CertifiedKey>>,
    /// The Secret each of `certs` came from (for `weir ingress routes`).
    pub cert_secrets: HashMap<String, ObjectRef>,
    /// What was skipped and why, each naming its object.
    pub warnings: Vec<String>,
    /// The same, by Ingress (for Events on the object): (Ingress, what and why).
    pub problems: Vec<(ObjectRef, String)>,
}

impl RouteTable {
    /// The most specific host rules for `host` (normalised: lower case, no
    /// port), with the rule host that matched (`*.foo.com` for a wildcard,
    /// empty for rules without a host).
    pub fn host_routes(&self, host: Option<&str>) -> Option<(String, &HostRoutes)> {
        if let Some(host) = host {
            if let Some(r) = self.hosts.get(host) {
                return Some((host.to_string(), r));
            }
            if let Some(r) = matching::parent_of(host).and_then(|p| self.wildcards.get(p)) {
                let parent = matching::parent_of(host).unwrap_or_default();
                return Some((format!("*.{parent}"), r));
            }
        }
        self.any_host.as_ref().map(|r| (String::new(), r))
    }

    /// The upstream for a request, and which rule chose it.
    pub fn route(&self, host: Option<&str>, path: &str) -> Option<(&Arc<Upstream>, Matched)> {
        if let Some((host, routes)) = self.host_routes(host) {
            if let Some(r) = routes.route(path) {
                return Some((
                    &r.upstream,
                    Matched::Path {
                        host,
                        path_type: r.path_type,
                        path: r.key.clone(),
                    },
                ));
            }
        }
        self.default_backend
            .as_ref()
            .map(|(u, _)| (u, Matched::DefaultBackend))
    }

    /// The certificate for a TLS server name: exact host, then a wildcard for it.
    pub fn cert(&self, server_name: &str) -> Option<&Arc<CertifiedKey>> {
        by_server_name(&self.certs, server_name)
    }

    /// The Secret whose certificate `cert` serves for `server_name`.
    pub fn cert_secret(&self, server_name: &str) -> Option<&ObjectRef> {
        by_server_name(&self.cert_secrets, server_name)
    }
}

/// The entry for a TLS server name: exact host, then a wildcard for it.
fn by_server_name<'a, T>(map: &'a HashMap<String, T>, server_name: &str) -> Option<&'a T> {
    let name = server_name.to_ascii_lowercase();
    map.get(&name)
        .or_else(|| matching::parent_of(&name).and_then(|p| map.get(&format!("*.{p}"))))
}
