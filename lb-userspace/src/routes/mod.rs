//! The L7 routing table: listeners -> hosts -> rules (matches, filters,
//! weighted upstreams), built purely from the model (`build` for Ingress,
//! `gateway` for the Gateway API) and consulted by the proxy for every
//! request; the proxy knows neither API. A table is immutable; a change builds a new one and the
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
pub mod gateway;
pub mod gateway_status;
pub mod hosts;
pub mod matching;
pub mod rows;
pub mod rule;
pub mod streams;
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
pub use hosts::{HostRules, HostTable, ListenerRoutes, PortRoutes, Routed};
pub use rule::RequestView;

use crate::model::ObjectRef;

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
    /// Speak HTTP/2 in clear (prior knowledge) to it, not HTTP/1.1.
    pub h2c: bool,
    next: AtomicUsize,
}

impl Upstream {
    pub fn new(service: ObjectRef, port: u16, endpoints: Vec<SocketAddr>) -> Self {
        Self {
            service,
            port,
            endpoints,
            h2c: false,
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

/// The immutable routing table: the Ingress rules and each Gateway API
/// HTTP listener port's rules, in the same model.
#[derive(Debug, Default)]
pub struct RouteTable {
    /// Rules of the Ingresses Weir serves (on the ingress ports).
    pub ingress: HostTable,
    /// Rules of Gateway API HTTP listeners, by the address and port they listen on.
    pub gateways: HashMap<SocketAddr, PortRoutes>,
    /// Gateway API TLS and TCP listeners, by address and port.
    pub streams: HashMap<SocketAddr, streams::StreamPort>,
    /// Certificates by exact host or wildcard (`*.foo.com`).
    pub certs: HashMap<String, Arc<CertifiedKey>>,
    /// The Secret each of `certs` came from (for `weir ingress routes`).
    pub cert_secrets: HashMap<String, ObjectRef>,
    /// What was skipped and why, each naming its object.
    pub warnings: Vec<String>,
    /// The same, by Ingress (for Events on the object): (Ingress, what and why).
    pub problems: Vec<(ObjectRef, String)>,
    /// The Gateway API objects' status, as computed with this table.
    pub gateway_status: gateway_status::GatewayStatuses,
}

impl RouteTable {
    /// The Gateway listeners on a connection's local address, if any (the
    /// Ingress rules serve the others).
    pub fn gateway_at(&self, local: SocketAddr) -> Option<&PortRoutes> {
        self.gateways.get(&local)
    }

    /// The Ingress rule for a request (host normalised: lower case, no port).
    pub fn route<'a>(&'a self, host: Option<&str>, req: &RequestView<'_>) -> Option<Routed<'a>> {
        self.ingress.route(host, req)
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
