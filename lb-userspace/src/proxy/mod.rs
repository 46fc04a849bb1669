//! The embedded L7 proxy: plain HTTP and HTTPS listeners (HTTP/1.1, and
//! HTTP/2 by ALPN or prior knowledge), routing by the current `RouteTable`
//! (swapped whole with ArcSwap, so a change never fails a request in flight)
//! to the endpoints of Ingress backends, with no extra hop through a
//! ClusterIP. The listeners bind private addresses; the kernel's sk_lookup
//! program steers connections to the ingress addresses to them.
mod forward;
mod headers;
mod idle;
mod mirror;
mod pool;
mod server;
mod sni;
mod stream;
mod tls;

use std::{net::SocketAddr, sync::Arc, time::Duration};

use arc_swap::ArcSwap;
use rustls::sign::CertifiedKey;

use crate::routes::RouteTable;

pub use server::{start, Listeners};
pub use tls::server_config;

#[derive(Debug, thiserror::Error)]
pub enum ProxyError {
    #[error("binding {addr}: {source}")]
    Bind {
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error("starting the proxy runtime: {0}")]
    Runtime(std::io::Error),
    #[error("TLS configuration: {0}")]
    Tls(#[from] rustls::Error),
}

/// Timeouts of the proxy.
#[derive(Clone, Copy, Debug)]
pub struct Timeouts {
    /// A client must send a request's headers within this time.
    pub header: Duration,
    /// A client connection with no bytes in either direction for this long,
    /// and no request waiting for its response headers, is closed.
    pub idle: Duration,
    /// Connecting to one endpoint.
    pub connect: Duration,
    /// An upstream must answer with its response headers within this time (504 otherwise).
    pub upstream: Duration,
}

impl Default for Timeouts {
    fn default() -> Self {
        Self {
            header: Duration::from_secs(10),
            idle: Duration::from_secs(120),
            connect: Duration::from_secs(3),
            upstream: Duration::from_secs(60),
        }
    }
}

#[derive(Clone, Debug)]
pub struct ProxyConfig {
    /// Where the plain HTTP listener binds (the hand-off steers IPv4
    /// connections to it; IPv6 ones go to a twin on [::1], server::Listeners).
    pub http_bind: SocketAddr,
    pub https_bind: SocketAddr,
    /// Where the Gateway API's TLS and TCP listeners' socket binds.
    pub stream_bind: SocketAddr,
    /// Served to TLS clients whose server name has no certificate from a Secret.
    pub default_cert: Option<Arc<CertifiedKey>>,
    pub timeouts: Timeouts,
    /// The largest request head (request line and headers) accepted: 431 beyond it.
    pub max_header_bytes: usize,
}

impl Default for ProxyConfig {
    fn default() -> Self {
        Self {
            http_bind: SocketAddr::from(([127, 0, 0, 1], 0)),
            https_bind: SocketAddr::from(([127, 0, 0, 1], 0)),
            stream_bind: SocketAddr::from(([127, 0, 0, 1], 0)),
            default_cert: None,
            timeouts: Timeouts::default(),
            max_header_bytes: 16 * 1024,
        }
    }
}

/// The routing table the proxy reads for every request; the agent stores a new one on every change.
pub type SharedTable = Arc<ArcSwap<RouteTable>>;

pub fn shared_table() -> SharedTable {
    Arc::new(ArcSwap::from_pointee(RouteTable::default()))
}
