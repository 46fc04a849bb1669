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
/// with the ring provider, and checks that they belong together. Validity
/// dates and the names in the certificate are not checked here; clients
/// judge them.
pub fn certified_key(cert_pem: &[u8], key_pem: &[u8]) -> Result<Arc<CertifiedKey>, CertError> {
    let chain = CertificateDer::pem_slice_iter(cert_pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| CertError::BadCertificate(e.to_string()))?;
    if chain.is_empty() {
        return Err(CertError::NoCertificate);
    }
    // Judge the certificate before the key, so that a Secret of garbage is
    // reported for its tls.crt (PEM framing alone says nothing of the DER).
    rustls::server::ParsedCertificate::try_from(&chain[0])
        .map_err(|e| CertError::BadCertificate(format!("not an X.509 certificate ({e})")))?;
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

#[cfg(test)]
mod tests {
    use super::*;

    fn pair(host: &str) -> (String, String) {
        let c = rcgen::generate_simple_self_signed(vec![host.to_string()]).expect("rcgen");
        (c.cert.pem(), c.signing_key.serialize_pem())
    }

    fn check(cert: &str, key: &str) -> Result<Arc<CertifiedKey>, CertError> {
        certified_key(cert.as_bytes(), key.as_bytes())
    }

    #[test]
    fn a_matching_pair_is_accepted() {
        let (cert, key) = pair("a.example");
        let k = check(&cert, &key).expect("a valid pair");
        assert_eq!(k.cert.len(), 1);
    }

    #[test]
    fn text_without_a_pem_certificate_is_no_certificate() {
        let (_, key) = pair("a.example");
        for cert in [
            "",
            "garbage",
            "-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n",
        ] {
            assert!(
                matches!(check(cert, &key), Err(CertError::NoCertificate)),
                "{cert:?}"
            );
        }
    }

    #[test]
    fn garbage_inside_certificate_markers_is_a_bad_certificate() {
        let (_, key) = pair("a.example");
        // Not base64 at all.
        let bad_base64 =
            "-----BEGIN CERTIFICATE-----\n!!!not base64!!!\n-----END CERTIFICATE-----\n";
        // Valid base64, but not a DER certificate.
        let not_der = "-----BEGIN CERTIFICATE-----\naGVsbG8gd29ybGQ=\n-----END CERTIFICATE-----\n";
        for cert in [bad_base64, not_der] {
            let e = check(cert, &key).expect_err(cert);
            assert!(matches!(e, CertError::BadCertificate(_)), "{cert:?}: {e:?}");
            assert!(e.to_string().starts_with("tls.crt: "), "{e}");
        }
    }

    #[test]
    fn a_secret_of_garbage_is_reported_for_its_certificate_first() {
        let cert =
            "-----BEGIN CERTIFICATE-----\nbm90IGEgY2VydGlmaWNhdGU=\n-----END CERTIFICATE-----\n";
        let key = "-----BEGIN PRIVATE KEY-----\nbm90IGEga2V5\n-----END PRIVATE KEY-----\n";
        let e = check(cert, key).expect_err("garbage");
        assert!(
            e.to_string()
                .starts_with("tls.crt: not an X.509 certificate"),
            "{e}"
        );
    }

    #[test]
    fn a_garbage_or_missing_key_is_a_bad_key() {
        let (cert, _) = pair("a.example");
        for key in [
            "",
            "garbage",
            "-----BEGIN PRIVATE KEY-----\naGVsbG8gd29ybGQ=\n-----END PRIVATE KEY-----\n",
        ] {
            let e = check(&cert, key).expect_err(key);
            assert!(matches!(e, CertError::BadKey(_)), "{key:?}: {e:?}");
            assert!(e.to_string().starts_with("tls.key: "), "{e}");
        }
    }

    #[test]
    fn the_key_of_another_certificate_is_a_mismatch() {
        let (cert, _) = pair("a.example");
        let (_, other_key) = pair("a.example");
        let e = check(&cert, &other_key).expect_err("mismatched pair");
        assert!(matches!(e, CertError::Mismatch), "{e:?}");
        assert_eq!(
            e.to_string(),
            "tls.key does not belong to the certificate in tls.crt"
        );
    }
}
