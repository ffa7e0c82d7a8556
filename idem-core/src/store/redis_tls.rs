//! The Redis store's TLS (feature `redis-tls`): the certificates a store trusts and presents
//! beyond what its URLs say, and the crypto provider its connections take.

use std::sync::Arc;

use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::sign::CertifiedKey;

use super::StoreError;

/// The certificates a store was given: the authorities it trusts instead of the system's,
/// and its own for a Redis that asks clients for one.
#[derive(Clone, Default)]
pub(crate) struct Certificates {
    pub(crate) roots: Option<Vec<u8>>,
    /// The certificate chain and its private key, in PEM.
    pub(crate) client: Option<(Vec<u8>, Vec<u8>)>,
}

impl std::fmt::Debug for Certificates {
    // What is set, never what it holds: the client's private key is a secret.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Certificates")
            .field("roots", &self.roots.is_some())
            .field("client", &self.client.is_some())
            .finish()
    }
}

impl Certificates {
    /// The `redis` crate's form of them, or `None` when none was given (the URL alone then
    /// says how to connect).
    pub(crate) fn to_redis(&self) -> Result<Option<redis::TlsCertificates>, StoreError> {
        if self.roots.is_none() && self.client.is_none() {
            return Ok(None);
        }
        if let Some(roots) = &self.roots {
            // An empty list would trust no server, and every connection would fail with an
            // unknown issuer, far from the setting that caused it.
            let held = CertificateDer::pem_slice_iter(roots)
                .filter(Result::is_ok)
                .count();
            if held == 0 {
                return Err(StoreError::Config(
                    "tls_root_certificates holds no PEM certificate (-----BEGIN CERTIFICATE-----); give it the certificate of the authority that signed the Redis server's".into(),
                ));
            }
        }
        if let Some((chain, key)) = &self.client {
            // A key that is not the certificate's would fail every connection, each refused
            // by rustls before it reached the server.
            let refused = |why: String| {
                StoreError::Config(format!(
                    "tls_client_certificate cannot be used ({why}); give it a PEM certificate chain and the PEM private key of its first certificate"
                ))
            };
            let chain = CertificateDer::pem_slice_iter(chain)
                .collect::<Result<Vec<_>, _>>()
                .map_err(|e| refused(e.to_string()))?;
            let key = PrivateKeyDer::from_pem_slice(key).map_err(|e| refused(e.to_string()))?;
            let provider = CryptoProvider::get_default()
                .cloned()
                .unwrap_or_else(|| Arc::new(ring_provider()));
            CertifiedKey::from_der(chain, key, &provider).map_err(|e| refused(e.to_string()))?;
        }
        Ok(Some(redis::TlsCertificates {
            client_tls: self
                .client
                .as_ref()
                .map(|(chain, key)| redis::ClientTlsConfig {
                    client_cert: chain.clone(),
                    client_key: key.clone(),
                }),
            root_cert: self.roots.clone(),
        }))
    }
}

/// Installs ring's crypto provider as the process's default, unless it has one.
///
/// The `redis` crate's rustls takes the process's default provider as it connects. rustls
/// picks one by itself only when a single provider is built in; an application whose other
/// crates build aws-lc-rs's as well (reqwest's or sqlx's rustls, for instance) would have
/// every TLS connection to Redis panic ("no process-level CryptoProvider"). An application
/// that installed its own provider before building the store keeps it. Losing the race to
/// another thread installing one is fine: there is one then. rustls deprecates ring's provider
/// (from 0.23.48) for its lack of post-quantum key exchange; it is kept for its small build.
pub(crate) fn ensure_provider() {
    if CryptoProvider::get_default().is_none() {
        let _ = ring_provider().install_default();
    }
}

/// Ring's crypto provider.
fn ring_provider() -> CryptoProvider {
    #[allow(deprecated)]
    rustls::crypto::ring::default_provider()
}

/// Whether `error` is a TLS handshake that failed on a certificate: the server's, which the
/// store does not trust (an unknown authority, another name, expired), or the store's own,
/// which the server refused (none presented, not trusted, expired). Redis is there and
/// answers, and so would it to a retry: a fault to fix, not an outage, so the store fails
/// closed even where it fails open, as for wrong credentials.
pub(crate) fn certificate_refused(error: &redis::RedisError) -> bool {
    use rustls::AlertDescription as Alert;
    matches!(
        tls_error(error),
        Some(
            rustls::Error::InvalidCertificate(_)
                | rustls::Error::NoCertificatesPresented
                | rustls::Error::AlertReceived(
                    Alert::BadCertificate
                        | Alert::UnsupportedCertificate
                        | Alert::CertificateRevoked
                        | Alert::CertificateExpired
                        | Alert::CertificateUnknown
                        | Alert::UnknownCA
                        | Alert::CertificateRequired
                        | Alert::AccessDenied
                )
        )
    )
}

/// rustls's error within `error`: the `redis` crate keeps the I/O error tokio-rustls made of
/// it behind an `Arc`, whose `source` skips it.
fn tls_error(error: &redis::RedisError) -> Option<&rustls::Error> {
    use std::error::Error;
    let mut next: Option<&(dyn Error + 'static)> = error.source();
    while let Some(error) = next {
        if let Some(tls) = error.downcast_ref::<rustls::Error>() {
            return Some(tls);
        }
        if let Some(shared) = error.downcast_ref::<Arc<dyn Error + Send + Sync>>() {
            next = Some(&**shared);
            continue;
        }
        if let Some(io) = error.downcast_ref::<std::io::Error>() {
            next = io.get_ref().map(|inner| inner as &(dyn Error + 'static));
            continue;
        }
        next = error.source();
    }
    None
}
