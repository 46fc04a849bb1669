//! The HTTPS listener's TLS: TLS 1.2 and 1.3 with the ring provider, a
//! certificate chosen per handshake by SNI from the current routing table
//! (so a rotated Secret applies to the next handshake, without a restart),
//! the default certificate otherwise, and ALPN h2 / http/1.1.
use std::{net::SocketAddr, sync::Arc};

use rustls::{
    server::{ClientHello, ResolvesServerCert},
    sign::CertifiedKey,
    ServerConfig,
};

use super::SharedTable;

#[derive(Debug)]
struct SniResolver {
    table: SharedTable,
    default_cert: Option<Arc<CertifiedKey>>,
}

impl ResolvesServerCert for SniResolver {
    fn resolve(&self, hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        hello
            .server_name()
            .and_then(|name| self.table.load().cert(name).cloned())
            .or_else(|| self.default_cert.clone())
    }
}

/// A Gateway HTTPS listener's certificate: the listener on the connection's
/// address and port whose hostname matches the server name. No default: a
/// name no listener accepts is refused.
#[derive(Debug)]
struct ListenerResolver {
    table: SharedTable,
    local: SocketAddr,
}

impl ResolvesServerCert for ListenerResolver {
    fn resolve(&self, hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        self.table
            .load()
            .gateway_at(self.local)?
            .cert(hello.server_name())
            .cloned()
    }
}

fn with_resolver(resolver: Arc<dyn ResolvesServerCert>) -> Result<ServerConfig, rustls::Error> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = ServerConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])?
        .with_no_client_auth()
        .with_cert_resolver(resolver);
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(config)
}

/// The Ingress TLS configuration: certificates by SNI from the table's Secrets.
pub fn server_config(
    table: SharedTable,
    default_cert: Option<Arc<CertifiedKey>>,
) -> Result<ServerConfig, rustls::Error> {
    with_resolver(Arc::new(SniResolver {
        table,
        default_cert,
    }))
}

/// The TLS configuration of a connection to a Gateway HTTPS listener at `local`.
pub fn listener_config(
    table: SharedTable,
    local: SocketAddr,
) -> Result<ServerConfig, rustls::Error> {
    with_resolver(Arc::new(ListenerResolver { table, local }))
}

/// A Gateway TLS listener (mode Terminate) at `local`: its certificate by server name.
#[derive(Debug)]
struct StreamResolver {
    table: SharedTable,
    local: SocketAddr,
}

impl ResolvesServerCert for StreamResolver {
    fn resolve(&self, hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        let name = hello.server_name().map(str::to_ascii_lowercase);
        self.table
            .load()
            .streams
            .get(&self.local)?
            .listener(name.as_deref())?
            .cert
            .clone()
    }
}

/// The TLS configuration of a connection to a terminating TLS listener (no ALPN: bytes, not HTTP).
pub fn stream_config(table: SharedTable, local: SocketAddr) -> Result<ServerConfig, rustls::Error> {
    let mut config = with_resolver(Arc::new(StreamResolver { table, local }))?;
    config.alpn_protocols.clear();
    Ok(config)
}
