//! One connection, start to end: hello -> route -> upstream -> splice.
//!
//! This is the only module that calls the stages, in that order; none of them
//! knows about the others. What is learnt along the way (SNI, ALPN, route, how it
//! matched, backend) goes into an [`Access`] record, and one access-log event at
//! the end carries all of it with the outcome, bytes and duration.
//!
//! The `conn` span covers only the stages before the relay. A span lives in the
//! subscriber's registry with its formatted fields (about 0.9 KiB here); held for
//! the life of every idle MQTT connection it would cost more than the rest of the
//! connection together, so the relay runs without one and the access event
//! carries every field itself.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::time::Instant;
use tracing::Instrument;

use crate::error::ConnError;
use crate::hello::{self, HelloLimits};
use crate::reject;
use crate::route::{Route, RouteTable};
use crate::splice::{self, End, Side};
use crate::upstream::Connector;

/// After sending an alert, how long to wait for the client to close before we do:
/// closing with unread bytes would turn our FIN into a reset that can overtake
/// the alert.
const ALERT_LINGER: Duration = Duration::from_secs(1);
const ALERT_LINGER_BYTES: u64 = 64 * 1024;

/// Everything a connection needs that a reload may change, taken once at accept:
/// a reload never changes a connection half-way.
#[derive(Debug)]
pub struct Snapshot {
    pub table: RouteTable,
    pub hello: HelloLimits,
}

/// What every connection shares: the current snapshot (swapped whole by a
/// reload) and the backend connector.
#[derive(Debug)]
pub struct Shared {
    pub snapshot: arc_swap::ArcSwap<Snapshot>,
    pub connector: Connector,
}

/// What the access log says of a connection, filled in stage by stage.
#[derive(Debug)]
pub struct Access {
    pub peer: SocketAddr,
    pub local: SocketAddr,
    pub sni: Option<String>,
    pub alpn: Option<String>,
    pub route: Option<Arc<Route>>,
    pub matched: Option<&'static str>,
    pub backend: Option<SocketAddr>,
}

impl Access {
    pub fn new(peer: SocketAddr, local: SocketAddr) -> Self {
        Self {
            peer,
            local,
            sni: None,
            alpn: None,
            route: None,
            matched: None,
            backend: None,
        }
    }
}

/// Handle one accepted connection to its end. Never fails: every outcome is
/// logged as one access event.
pub async fn handle(mut client: TcpStream, peer: SocketAddr, local: SocketAddr, shared: Arc<Shared>) {
    let started = Instant::now();
    let mut access = Access::new(peer, local);
    let result = serve(&mut client, &shared, &mut access).await;
    let (outcome, bytes_in, bytes_out, error) = match &result {
        Ok(relayed) => {
            let (outcome, error) = match &relayed.end {
                End::Closed => ("closed", None),
                End::IdleTimeout => ("idle_timeout", None),
                End::Error(Side::Client, e) => ("client_error", Some(e.to_string())),
                End::Error(Side::Backend, e) => ("backend_error", Some(e.to_string())),
            };
            (outcome, relayed.to_backend, relayed.to_client, error)
        }
        Err(error) => (error.label(), 0, 0, Some(error.to_string())),
    };
    tracing::info!(
        target: "snigate_router::access",
        peer = %access.peer,
        local = %access.local,
        sni = access.sni,
        alpn = access.alpn,
        route = access.route.as_ref().map(|r| r.name.as_str()),
        matched = access.matched,
        backend = access.backend.map(tracing::field::display),
        outcome,
        bytes_in,
        bytes_out,
        duration_ms = millis(started),
        error,
        "{}",
        if result.is_ok() { "connection closed" } else { "connection not relayed" },
    );
}

async fn serve(client: &mut TcpStream, shared: &Shared, access: &mut Access) -> Result<splice::Relayed, ConnError> {
    // A task is as large as its largest state for its whole life, and the relay
    // is the state that lasts: everything before it runs boxed, so the hello
    // buffer, the parse results, the connect (DNS included) and the span cost
    // memory only while they run.
    let span = tracing::debug_span!("conn", peer = %access.peer, local = %access.local);
    let (route, backend, forwarded) = Box::pin(establish(client, shared, access).instrument(span)).await?;
    let mut relayed = splice::relay(client, &backend, route.idle_timeout).await;
    relayed.to_backend += forwarded;
    Ok(relayed)
}

/// hello -> route -> upstream, then forward the hello. Returns the route, the
/// backend stream and how many bytes were forwarded.
async fn establish(
    client: &mut TcpStream,
    shared: &Shared,
    access: &mut Access,
) -> Result<(Arc<Route>, TcpStream, u64), ConnError> {
    // Taken once: a reload never changes a connection half-way.
    let snapshot = shared.snapshot.load_full();
    let hello = hello::read(client, snapshot.hello).await?;
    access.sni.clone_from(&hello.info.sni);
    if !hello.info.alpn.is_empty() {
        access.alpn = Some(hello.info.alpn.join(","));
    }

    let route = match snapshot.table.lookup(hello.info.sni.as_deref()) {
        Ok((route, kind)) => {
            access.matched = Some(kind.label());
            access.route = Some(route.clone());
            route.clone()
        }
        Err(no_route) => {
            send_alert(client, hello.info.record_version).await;
            return Err(no_route.into());
        }
    };
    drop(snapshot);

    let (mut backend, addr) = shared.connector.connect(&route).await?;
    access.backend = Some(addr);
    backend.write_all(&hello.bytes).await.map_err(ConnError::Forward)?;
    Ok((route, backend, hello.bytes.len() as u64))
}

/// Best effort: the client may already be gone.
async fn send_alert(client: &mut TcpStream, record_version: u16) {
    let alert = reject::unrecognized_name(record_version);
    let _ = tokio::time::timeout(ALERT_LINGER, async {
        client.write_all(&alert).await?;
        client.shutdown().await?;
        let mut sink = tokio::io::sink();
        tokio::io::copy(&mut (&mut *client).take(ALERT_LINGER_BYTES), &mut sink).await
    })
    .await;
}

fn millis(since: Instant) -> u64 {
    u64::try_from(since.elapsed().as_millis()).unwrap_or(u64::MAX)
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::time::Duration;

    /// The connection task's size is paid by every idle connection for its whole
    /// life (see `serve`): keep it from creeping back up.
    #[tokio::test]
    async fn an_idle_connection_task_stays_small() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let client = tokio::net::TcpStream::connect(addr).await.unwrap();
        let shared = Arc::new(super::Shared {
            snapshot: arc_swap::ArcSwap::from_pointee(super::Snapshot {
                table: crate::route::RouteTable::default(),
                hello: crate::hello::HelloLimits {
                    timeout: Duration::from_secs(1),
                    max_bytes: 2000,
                },
            }),
            connector: crate::upstream::Connector::new(),
        });
        let task = super::handle(client, addr, addr, shared);
        let size = std::mem::size_of_val(&task);
        assert!(size <= 1024, "the connection future is {size} bytes");
    }
}
