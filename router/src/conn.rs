//! One connection, start to end: hello -> route -> upstream -> splice.
//!
//! This is the only module that calls the stages, in that order; none of them
//! knows about the others. The connection's span (opened by the listener with the
//! peer address) gets `sni`, `alpn`, `route` and `backend` as they become known,
//! and one access-log event at the end carries the outcome, bytes and duration.

use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::time::Instant;
use tracing::Span;

use crate::error::ConnError;
use crate::hello::{self, HelloLimits};
use crate::reject;
use crate::route::RouteTable;
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

/// Handle one accepted connection to its end. Never fails: every outcome is
/// logged in the connection's span.
pub async fn handle(mut client: TcpStream, shared: Arc<Shared>) {
    let snapshot = shared.snapshot.load_full();
    let connector = &shared.connector;
    let started = Instant::now();
    let span = Span::current();
    match serve(&mut client, &snapshot, connector, &span).await {
        Ok(relayed) => {
            let (outcome, error) = match &relayed.end {
                End::Closed => ("closed", None),
                End::IdleTimeout => ("idle_timeout", None),
                End::Error(Side::Client, e) => ("client_error", Some(e)),
                End::Error(Side::Backend, e) => ("backend_error", Some(e)),
            };
            tracing::info!(
                outcome,
                bytes_in = relayed.to_backend,
                bytes_out = relayed.to_client,
                duration_ms = millis(started),
                error = error.map(tracing::field::display),
                "connection closed"
            );
        }
        Err(error) => {
            tracing::info!(
                outcome = error.label(),
                duration_ms = millis(started),
                %error,
                "connection not relayed"
            );
        }
    }
}

async fn serve(
    client: &mut TcpStream,
    snapshot: &Snapshot,
    connector: &Connector,
    span: &Span,
) -> Result<splice::Relayed, ConnError> {
    let hello = hello::read(client, snapshot.hello).await?;
    if let Some(sni) = &hello.info.sni {
        span.record("sni", sni.as_str());
    }
    if !hello.info.alpn.is_empty() {
        span.record("alpn", hello.info.alpn.join(",").as_str());
    }

    let route = match snapshot.table.lookup(hello.info.sni.as_deref()) {
        Ok((route, kind)) => {
            span.record("matched", kind.label());
            route
        }
        Err(no_route) => {
            send_alert(client, hello.info.record_version).await;
            return Err(no_route.into());
        }
    };
    span.record("route", route.name.as_str());

    let (mut backend, addr) = connector.connect(route).await?;
    span.record("backend", tracing::field::display(addr));
    backend.write_all(&hello.bytes).await.map_err(ConnError::Forward)?;
    let hello_len = hello.bytes.len() as u64;
    // The hello's buffer is not needed any more: free it before a relay that may
    // last for hours.
    drop(hello);

    let mut relayed = splice::relay(client, &backend, route.idle_timeout).await;
    relayed.to_backend += hello_len;
    Ok(relayed)
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
