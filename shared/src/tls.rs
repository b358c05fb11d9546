//! TLS material: PEM certificates and keys into rustls types, with errors that
//! name the file. Used by the broker's TLS listeners (the router never
//! terminates TLS).

use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustls::ServerConfig;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};

/// A problem with TLS material, naming the file.
#[derive(Debug, thiserror::Error)]
#[error("{}: {message}", path.display())]
pub struct TlsError {
    pub path: PathBuf,
    pub message: String,
}

impl TlsError {
    fn new(path: &Path, message: impl Into<String>) -> Self {
        Self {
            path: path.to_owned(),
            message: message.into(),
        }
    }
}

/// Every certificate in a PEM file, in order (leaf first for a chain).
pub fn load_certs(path: &Path) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let certs = CertificateDer::pem_file_iter(path)
        .map_err(|e| TlsError::new(path, format!("cannot read: {e}")))?
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| TlsError::new(path, format!("not a PEM certificate file: {e}")))?;
    if certs.is_empty() {
        return Err(TlsError::new(path, "no CERTIFICATE section found"));
    }
    Ok(certs)
}

/// The first private key in a PEM file (PKCS#8, PKCS#1 or SEC1).
pub fn load_key(path: &Path) -> Result<PrivateKeyDer<'static>, TlsError> {
    PrivateKeyDer::from_pem_file(path).map_err(|e| TlsError::new(path, format!("no usable private key: {e}")))
}

/// The cryptography behind the broker's TLS: ring. aws-lc-rs, rustls' default,
/// adds the post-quantum hybrid key share (X25519MLKEM768) and about 1.9 MB to
/// a static binary, which puts the broker's image over its 7 MB target
/// (docs/deploy.md); with ring a client negotiates X25519 or a NIST curve.
/// Named here rather than left to rustls' process-wide default, which panics
/// when a build (the workspace's tests) enables both providers.
pub fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// Client certificates a server asks for: the CAs that sign them, and whether a
/// client must present one.
#[derive(Debug, Clone)]
pub struct ClientAuth {
    pub ca_file: PathBuf,
    pub required: bool,
}

/// A server configuration from a certificate chain and its key, optionally
/// verifying client certificates against a CA.
pub fn server_config(cert: &Path, key: &Path, clients: Option<&ClientAuth>) -> Result<Arc<ServerConfig>, TlsError> {
    let certs = load_certs(cert)?;
    let key = load_key(key)?;
    let builder = ServerConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(|e| TlsError::new(cert, format!("no TLS version the crypto provider supports: {e}")))?;
    let builder = match clients {
        None => builder.with_no_client_auth(),
        Some(clients) => {
            let mut roots = rustls::RootCertStore::empty();
            for ca in load_certs(&clients.ca_file)? {
                roots
                    .add(ca)
                    .map_err(|e| TlsError::new(&clients.ca_file, format!("not a usable CA certificate: {e}")))?;
            }
            let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider());
            let verifier = if clients.required {
                verifier
            } else {
                verifier.allow_unauthenticated()
            };
            let verifier = verifier
                .build()
                .map_err(|e| TlsError::new(&clients.ca_file, format!("cannot verify clients with it: {e}")))?;
            builder.with_client_cert_verifier(verifier)
        }
    };
    let config = builder
        .with_single_cert(certs, key)
        .map_err(|e| TlsError::new(cert, format!("certificate and key do not fit together: {e}")))?;
    Ok(Arc::new(config))
}
