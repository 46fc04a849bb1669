//! The HTTPS listener's TLS: TLS 1.2 and 1.3 with the ring provider, a
//! certificate chosen per handshake by SNI from the current routing table
//! (so a rotated Secret applies to the next handshake, without a restart),
//! the default certificate otherwise, and ALPN h2 / http/1.1.
use std::sync::Arc;

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

pub fn server_config(
    table: SharedTable,
    default_cert: Option<Arc<CertifiedKey>>,
) -> Result<ServerConfig, rustls::Error> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = ServerConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])?
        .with_no_client_auth()
        .with_cert_resolver(Arc::new(SniResolver {
            table,
            default_cert,
        }));
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(config)
}
