//! Certificates for the TLS listener: PEM (as in kubernetes.io/tls Secrets)
//! -> rustls `CertifiedKey`, with the checks that catch a malformed Secret.
use std::sync::Arc;

use rustls::{
    pki_types::{pem::PemObject, CertificateDer, PrivateKeyDer},
    sign::CertifiedKey,
};

#[derive(Debug, thiserror::Error)]
pub enum CertError {
    #[error("tls.crt holds no PEM certificate")]
    NoCertificate,
    #[error("tls.crt: {0}")]
    BadCertificate(String),
    #[error("tls.key: {0}")]
    BadKey(String),
    #[error("tls.key does not belong to the certificate in tls.crt")]
    Mismatch,
}

/// Parses a certificate chain and its private key (PKCS#8, PKCS#1 or SEC1)
/// with the ring provider, and checks that they belong together.
pub fn certified_key(cert_pem: &[u8], key_pem: &[u8]) -> Result<Arc<CertifiedKey>, CertError> {
    let chain = CertificateDer::pem_slice_iter(cert_pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| CertError::BadCertificate(e.to_string()))?;
    if chain.is_empty() {
        return Err(CertError::NoCertificate);
    }
    let key =
        PrivateKeyDer::from_pem_slice(key_pem).map_err(|e| CertError::BadKey(e.to_string()))?;
    let signing = rustls::crypto::ring::sign::any_supported_type(&key)
        .map_err(|e| CertError::BadKey(e.to_string()))?;
    let certified = CertifiedKey::new(chain, signing);
    match certified.keys_match() {
        // A key that cannot name its public key cannot be checked; rustls
        // still refuses a mismatched pair in the handshake.
        Ok(()) | Err(rustls::Error::InconsistentKeys(rustls::InconsistentKeys::Unknown)) => {
            Ok(Arc::new(certified))
        }
        Err(rustls::Error::InconsistentKeys(_)) => Err(CertError::Mismatch),
        Err(e) => Err(CertError::BadCertificate(e.to_string())),
    }
}
