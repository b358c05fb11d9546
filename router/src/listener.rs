//! Accepting connections on one bound socket, until told to stop; then draining.
//!
//! The loop only accepts and spawns: it never reads from a client, so one slow
//! client cannot delay the next. Each connection gets its own task. When accepting fails for lack of resources (EMFILE,
//! ENFILE, ENOBUFS, ENOMEM), the loop backs off briefly instead of spinning on
//! an error that only a closing connection can clear.

use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use snigate_shared::shutdown::{self, DrainReport, Shutdown};
use tokio::net::{TcpListener, TcpSocket};
use tokio::task::JoinSet;

use crate::config::ProxyIn;
use crate::conn::{self, Shared};

const ACCEPT_BACKOFF: Duration = Duration::from_millis(50);
/// The kernel caps this at net.core.somaxconn; asking for more is harmless.
const LISTEN_BACKLOG: u32 = 4096;

/// Bind a listening socket with a deep backlog, so bursts of connections (a
/// fleet of MQTT clients reconnecting at once) queue instead of being refused.
pub fn bind(addr: SocketAddr) -> io::Result<TcpListener> {
    let socket = if addr.is_ipv4() {
        TcpSocket::new_v4()?
    } else {
        TcpSocket::new_v6()?
    };
    socket.set_reuseaddr(true)?;
    if addr.is_ipv6() {
        // As nginx does: `[::]:443` is IPv6 only, so that `0.0.0.0:443` can be
        // listed beside it (dual stack) instead of failing with "address in use",
        // and client addresses are never IPv4-mapped IPv6 ones.
        socket2::SockRef::from(&socket).set_only_v6(true)?;
    }
    socket.bind(addr)?;
    socket.listen(LISTEN_BACKLOG)
}

/// Accept on `listener` until `shutdown.stop`, then drain this listener's
/// connections for at most the current drain timeout (or until `shutdown.force`).
pub async fn serve(
    listener: TcpListener,
    proxy: Option<Arc<ProxyIn>>,
    shared: Arc<Shared>,
    shutdown: Shutdown,
) -> DrainReport {
    let local = match listener.local_addr() {
        Ok(addr) => addr,
        Err(e) => {
            tracing::error!(error = %e, "listener has no local address; not serving it");
            return DrainReport::default();
        }
    };
    let mut tasks = JoinSet::new();
    loop {
        let accepted = tokio::select! {
            biased;
            () = shutdown.stop.cancelled() => break,
            accepted = listener.accept() => accepted,
        };
        reap(&mut tasks);
        match accepted {
            Ok((stream, peer)) => {
                // Relayed TLS records must not wait for Nagle (see upstream).
                let _ = stream.set_nodelay(true);
                // The connection's own local address, not the listener's: on a
                // wildcard listener that is the address the client dialled, which
                // the access log and PROXY headers report.
                let dialled = stream.local_addr().unwrap_or(local);
                tasks.spawn(conn::handle(stream, peer, dialled, proxy.clone(), shared.clone()));
            }
            // The client gave up between SYN and accept: nothing to do.
            Err(e) if is_per_connection(&e) => {}
            Err(e) => {
                tracing::warn!(%local, error = %e, "accept failed; backing off");
                tokio::select! {
                    () = shutdown.stop.cancelled() => break,
                    () = tokio::time::sleep(ACCEPT_BACKOFF) => {}
                }
            }
        }
    }
    // Close the socket first, so that new clients are refused rather than queued
    // behind a listener that will never accept them.
    drop(listener);
    let drain_timeout = shared.snapshot.load().drain_timeout;
    reap(&mut tasks);
    let open = tasks.len();
    tracing::info!(%local, open, ?drain_timeout, "stopped accepting; draining");
    let report = shutdown::drain(&mut tasks, drain_timeout, &shutdown.force).await;
    tracing::info!(%local, finished = report.finished, aborted = report.aborted, "drained");
    report
}

fn is_per_connection(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::ConnectionAborted | io::ErrorKind::ConnectionReset | io::ErrorKind::Interrupted
    )
}

/// Collect finished connection tasks so the set does not grow without bound.
fn reap(tasks: &mut JoinSet<()>) {
    while let Some(result) = tasks.try_join_next() {
        if let Err(e) = result
            && e.is_panic()
        {
            tracing::error!("a connection task panicked: this is a bug; other connections are unaffected");
        }
    }
}

#[cfg(test)]
mod tests {
    /// IPv6 listeners are v6-only, so both wildcards can share a port.
    #[tokio::test]
    async fn ipv4_and_ipv6_wildcards_share_a_port() {
        let v4 = super::bind("0.0.0.0:0".parse().unwrap()).unwrap();
        let port = v4.local_addr().unwrap().port();
        let v6 = super::bind(std::net::SocketAddr::from((std::net::Ipv6Addr::UNSPECIFIED, port)));
        assert!(v6.is_ok(), "{v6:?}");
    }
}
