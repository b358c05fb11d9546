//! What the end-to-end tests share.
#![allow(clippy::unwrap_used, dead_code)] // test support: unwrap is an assertion

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;

use snigate_shared::testing::STEP;
use snigate_shared::testing::mqtt::Login;
use snigate_testbed::{RunningBroker, Testbed};
use tokio::net::{TcpSocket, TcpStream};
use tokio_rustls::TlsConnector;
use tokio_rustls::client::TlsStream;
use tokio_rustls::rustls;

/// A TLS client that verifies against the testbed's CA.
pub fn tls_client(bed: &Testbed) -> TlsConnector {
    let mut roots = rustls::RootCertStore::empty();
    for cert in snigate_shared::tls::load_certs(&bed.ca_file).unwrap() {
        roots.add(cert).unwrap();
    }
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    TlsConnector::from(Arc::new(config))
}

/// TLS to the router, asking for `host`, verified against the testbed's CA;
/// from `source` when given (any 127.x address is this machine).
pub async fn through_router(bed: &Testbed, host: &str, source: Option<IpAddr>) -> TlsStream<TcpStream> {
    let tcp = match source {
        Some(ip) => {
            let socket = TcpSocket::new_v4().unwrap();
            socket.bind(SocketAddr::new(ip, 0)).unwrap();
            socket.connect(bed.router).await.unwrap()
        }
        None => TcpStream::connect(bed.router).await.unwrap(),
    };
    let name = rustls::pki_types::ServerName::try_from(host.to_owned()).unwrap();
    tokio::time::timeout(STEP, tls_client(bed).connect(name, tcp))
        .await
        .unwrap()
        .unwrap()
}

/// A clean-session login as `broker`'s first user.
pub fn login(broker: &RunningBroker) -> Login<'_> {
    let (user, password) = broker.users.iter().next().unwrap();
    Login {
        user: Some((user, password)),
        clean_session: true,
        ..Login::default()
    }
}

/// A clean-session login as `user`, with a password that is not theirs.
pub fn wrong_login(user: &str) -> Login<'_> {
    Login {
        user: Some((user, "not-the-password")),
        clean_session: true,
        ..Login::default()
    }
}
