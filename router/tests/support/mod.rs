//! Test peers for the router: a development CA, TLS backends that say who they
//! are and echo, rustls clients with SNI, and the router itself in-process on
//! port 0. Everything listens on 127.0.0.1 with ports the OS picks.
#![allow(dead_code)]

use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use rustls::pki_types::ServerName;
use snigate_router::config::{Overrides, RouterConfig};
use snigate_shared::config::Source;
use snigate_shared::shutdown::Shutdown;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinHandle;
use tokio_rustls::{TlsAcceptor, TlsConnector};

pub use snigate_shared::testing::{Ca, STEP};

pub mod dns;

/// A TLS backend for `host`: after the handshake it writes `<name>\n`, then echoes
/// everything it reads until end of stream, then closes.
pub struct TlsBackend {
    pub addr: SocketAddr,
    task: JoinHandle<()>,
}

impl Drop for TlsBackend {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl TlsBackend {
    pub async fn start(ca: &Ca, host: &str, name: &str) -> Self {
        Self::start_at(ca, host, name, "127.0.0.1:0".parse().unwrap()).await
    }

    /// As [`TlsBackend::start`], on `addr` (a backend revived where it was).
    pub async fn start_at(ca: &Ca, host: &str, name: &str, addr: SocketAddr) -> Self {
        let (certs, key) = ca.issue(host);
        let config = rustls::ServerConfig::builder_with_provider(snigate_shared::tls::provider())
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_no_client_auth()
            .with_single_cert(certs, key)
            .unwrap();
        let acceptor = TlsAcceptor::from(Arc::new(config));
        let listener = TcpListener::bind(addr).await.unwrap();
        let addr = listener.local_addr().unwrap();
        let name = format!("{name}\n");
        let task = tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    return;
                };
                let acceptor = acceptor.clone();
                let name = name.clone();
                tokio::spawn(async move {
                    let Ok(tls) = acceptor.accept(stream).await else { return };
                    let (mut reader, mut writer) = tokio::io::split(tls);
                    if writer.write_all(name.as_bytes()).await.is_err() {
                        return;
                    }
                    let _ = tokio::io::copy(&mut reader, &mut writer).await;
                    let _ = writer.shutdown().await;
                });
            }
        });
        Self { addr, task }
    }
}

/// The router, in-process, listening on 127.0.0.1 on a port the OS picked.
pub struct TestRouter {
    pub addr: SocketAddr,
    /// The admin server (/metrics, /readyz, /routes).
    pub admin: SocketAddr,
    pub shutdown: Shutdown,
    task: Option<JoinHandle<()>>,
}

impl TestRouter {
    /// Start with `toml` as the config file (its `listen` is replaced).
    pub async fn start(toml: &str) -> Self {
        Self::start_on(toml, "127.0.0.1:0".parse().unwrap()).await
    }

    /// Start from the config file at `path`, with reload on, as `main` does
    /// (listen and admin on 127.0.0.1:0 from the flags layer).
    pub async fn start_file(path: &std::path::Path) -> Self {
        let flags = Overrides {
            listen: vec!["127.0.0.1:0".parse().unwrap()],
            admin: Some("127.0.0.1:0".parse().unwrap()),
            ..Overrides::default()
        };
        let settings = snigate_router::load(snigate_router::config::Loader {
            path: Some(path.to_owned()),
            layers: vec![flags],
        })
        .unwrap_or_else(|e| panic!("{e}"));
        Self::run(settings).await
    }

    async fn run(settings: snigate_router::Settings) -> Self {
        let listeners = snigate_router::bind(&settings.config).unwrap();
        let addr = listeners.tls[0].local_addr().unwrap();
        let admin = listeners.admin.as_ref().unwrap().local_addr().unwrap();
        let shutdown = Shutdown::new();
        let for_task = shutdown.clone();
        let task = tokio::spawn(async move { snigate_router::run(settings, listeners, for_task).await.unwrap() });
        let router = Self {
            addr,
            admin,
            shutdown,
            task: Some(task),
        };
        router.wait_ready().await;
        router
    }

    /// Start listening on `listen` (port 0 for one the OS picks).
    pub async fn start_on(toml: &str, listen: SocketAddr) -> Self {
        let source = Source::from_text("test.toml", toml);
        let overrides = Overrides {
            listen: vec![listen],
            admin: Some("127.0.0.1:0".parse().unwrap()),
            ..Overrides::default()
        };
        let config = RouterConfig::from_source(&source, &[overrides]).unwrap_or_else(|e| panic!("{e}"));
        let settings = snigate_router::Settings::new(config).unwrap_or_else(|e| panic!("{e}"));
        Self::run(settings).await
    }

    /// Start with `toml` as the config file, its `listen` as written (port 0
    /// for one the OS picks): for listeners with PROXY protocol in.
    pub async fn start_with_listen(toml: &str) -> Self {
        let source = Source::from_text("test.toml", toml);
        let overrides = Overrides {
            admin: Some("127.0.0.1:0".parse().unwrap()),
            ..Overrides::default()
        };
        let config = RouterConfig::from_source(&source, &[overrides]).unwrap_or_else(|e| panic!("{e}"));
        let settings = snigate_router::Settings::new(config).unwrap_or_else(|e| panic!("{e}"));
        Self::run(settings).await
    }

    /// Wait until `/readyz` answers 200.
    pub async fn wait_ready(&self) {
        let deadline = tokio::time::Instant::now() + STEP;
        while http_get(self.admin, "/readyz").await.map(|(status, _)| status) != Some(200) {
            assert!(tokio::time::Instant::now() < deadline, "the router never became ready");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    /// The value of one sample in `/metrics`, e.g.
    /// `snigate_router_connections_closed_total{outcome="closed",route="a"}`.
    pub async fn metric(&self, sample: &str) -> Option<f64> {
        let (_, body) = http_get(self.admin, "/metrics").await?;
        body.lines()
            .find_map(|line| line.strip_prefix(sample)?.strip_prefix(' ')?.trim().parse().ok())
    }

    /// Stop accepting and wait for the drain to end.
    pub async fn stop(mut self) {
        self.shutdown.stop.cancel();
        if let Some(task) = self.task.take() {
            tokio::time::timeout(Duration::from_secs(30), task)
                .await
                .unwrap()
                .unwrap();
        }
    }
}

impl Drop for TestRouter {
    fn drop(&mut self) {
        self.shutdown.stop.cancel();
        self.shutdown.force.cancel();
    }
}

/// `GET path` over HTTP/1.1; the status and body, or `None` if the server is
/// not there.
pub async fn http_get(addr: SocketAddr, path: &str) -> Option<(u16, String)> {
    let mut stream = TcpStream::connect(addr).await.ok()?;
    let request = format!("GET {path} HTTP/1.1\r\nHost: test\r\nConnection: close\r\n\r\n");
    stream.write_all(request.as_bytes()).await.ok()?;
    let mut response = Vec::new();
    tokio::time::timeout(STEP, stream.read_to_end(&mut response))
        .await
        .ok()?
        .ok()?;
    let response = String::from_utf8_lossy(&response).into_owned();
    let status = response.split_whitespace().nth(1)?.parse().ok()?;
    let body = response
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_owned())
        .unwrap_or_default();
    Some((status, body))
}

/// A route table entry for a test config.
pub fn route(name: &str, hosts: &[&str], endpoints: &[SocketAddr]) -> String {
    let hosts: Vec<String> = hosts.iter().map(|h| format!("{h:?}")).collect();
    let endpoints: Vec<String> = endpoints.iter().map(|e| format!("\"{e}\"")).collect();
    format!(
        "[[route]]\nname = {name:?}\nhosts = [{}]\nendpoints = [{}]\n",
        hosts.join(", "),
        endpoints.join(", ")
    )
}

/// Connect through `router` with `sni`, verify the backend's certificate against
/// `ca` for that name, and return the stream and the backend's greeting.
pub async fn tls_connect<S>(
    ca: &Ca,
    stream: S,
    sni: &str,
) -> std::io::Result<(tokio_rustls::client::TlsStream<S>, String)>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let connector = TlsConnector::from(ca.client_config());
    let name = ServerName::try_from(sni.to_owned()).unwrap();
    let mut tls = connector.connect(name, stream).await?;
    let mut greeting = Vec::new();
    loop {
        let byte = tls.read_u8().await?;
        if byte == b'\n' {
            break;
        }
        greeting.push(byte);
    }
    Ok((tls, String::from_utf8(greeting).unwrap()))
}

/// Which backend answers `sni` through `router`.
pub async fn backend_for(ca: &Ca, router: SocketAddr, sni: &str) -> std::io::Result<String> {
    let tcp = TcpStream::connect(router).await?;
    let (_, greeting) = tokio::time::timeout(STEP, tls_connect(ca, tcp, sni)).await??;
    Ok(greeting)
}

/// Which backend answers `sni` through `router` for a client at `source`
/// (any of 127.0.0.0/8), and the stream, kept open.
pub async fn connect_from(
    ca: &Ca,
    router: SocketAddr,
    sni: &str,
    source: std::net::IpAddr,
) -> std::io::Result<(tokio_rustls::client::TlsStream<TcpStream>, String)> {
    let socket = tokio::net::TcpSocket::new_v4()?;
    socket.bind(SocketAddr::new(source, 0))?;
    let tcp = socket.connect(router).await?;
    tokio::time::timeout(STEP, tls_connect(ca, tcp, sni)).await?
}

/// Poll `probe` until it is true or `within` passes.
pub async fn eventually(within: Duration, mut probe: impl AsyncFnMut() -> bool) -> bool {
    let deadline = tokio::time::Instant::now() + within;
    while tokio::time::Instant::now() < deadline {
        if probe().await {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    false
}

/// Deterministic bytes that are not all alike, for transfer checks.
pub fn pattern(len: usize, seed: u64) -> Vec<u8> {
    let mut state = seed | 1;
    (0..len)
        .map(|_| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state as u8
        })
        .collect()
}

/// A stream that writes at most `chunk` bytes per write for its first `limit`
/// bytes, flushing each: a ClientHello then leaves in many small TCP segments.
pub struct Trickle<S> {
    pub inner: S,
    pub chunk: usize,
    pub limit: usize,
    pub written: usize,
}

impl<S: AsyncRead + Unpin> AsyncRead for Trickle<S> {
    fn poll_read(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Trickle<S> {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<std::io::Result<usize>> {
        let this = &mut *self;
        let len = if this.written < this.limit {
            buf.len().min(this.chunk)
        } else {
            buf.len()
        };
        let result = Pin::new(&mut this.inner).poll_write(cx, &buf[..len]);
        if let Poll::Ready(Ok(n)) = result {
            this.written += n;
        }
        result
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

/// Read until end of stream or error, with a deadline; returns what was read and
/// whether the stream ended in an error (a reset) rather than a clean close.
pub async fn read_to_close(stream: &mut TcpStream, within: Duration) -> (Vec<u8>, Option<std::io::Error>) {
    let mut data = Vec::new();
    let result = tokio::time::timeout(within, stream.read_to_end(&mut data))
        .await
        .expect("the connection should have been closed");
    (data, result.err())
}
