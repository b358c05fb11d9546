//! TLS for the benchmarks: one CA, a backend certificate for `*.bench.test`
//! and `bench.test`, and client configurations with the post-quantum hybrid
//! key share (rustls' default: a ClientHello of about 1,460 bytes) or X25519
//! alone (about 250 bytes).

use std::path::Path;
use std::sync::Arc;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use snigate_shared::certs::DevCa;

/// The name clients ask for, and what the router and HAProxy route on.
pub const HOST: &str = "bench.test";

pub struct Material {
    pub ca: DevCa,
    pub server: Arc<rustls::ServerConfig>,
    /// PEM files for the brokers: (cert, key, ca).
    pub files: (std::path::PathBuf, std::path::PathBuf, std::path::PathBuf),
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum KeyShare {
    /// X25519MLKEM768 first, as rustls and current browsers send.
    PostQuantum,
    X25519,
}

impl Material {
    pub fn new(dir: &Path) -> anyhow::Result<Self> {
        let ca = DevCa::generate("snigate bench CA", 1)?;
        let names = vec![HOST.to_owned(), format!("*.{HOST}"), "localhost".to_owned()];
        let (cert_pem, key_pem) = ca.issue_server(&names, 1)?;
        let certs = CertificateDer::pem_slice_iter(cert_pem.as_bytes()).collect::<Result<Vec<_>, _>>()?;
        let key = PrivateKeyDer::from_pem_slice(key_pem.as_bytes())?;
        let server =
            rustls::ServerConfig::builder_with_provider(Arc::new(rustls::crypto::aws_lc_rs::default_provider()))
                .with_safe_default_protocol_versions()?
                .with_no_client_auth()
                .with_single_cert(certs, key)?;
        let files = (dir.join("server.crt"), dir.join("server.key"), dir.join("ca.crt"));
        std::fs::write(&files.0, &cert_pem)?;
        std::fs::write(&files.1, &key_pem)?;
        std::fs::write(&files.2, &ca.cert_pem)?;
        Ok(Self {
            ca,
            server: Arc::new(server),
            files,
        })
    }

    pub fn client(&self, share: KeyShare) -> anyhow::Result<Arc<rustls::ClientConfig>> {
        let mut roots = rustls::RootCertStore::empty();
        for cert in CertificateDer::pem_slice_iter(self.ca.cert_pem.as_bytes()) {
            roots.add(cert?)?;
        }
        let mut provider = rustls::crypto::aws_lc_rs::default_provider();
        if share == KeyShare::X25519 {
            provider.kx_groups = vec![rustls::crypto::aws_lc_rs::kx_group::X25519];
        }
        let config = rustls::ClientConfig::builder_with_provider(Arc::new(provider))
            .with_safe_default_protocol_versions()?
            .with_root_certificates(roots)
            .with_no_client_auth();
        Ok(Arc::new(config))
    }
}
