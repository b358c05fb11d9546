//! Active health checks: for routes with `health.check_interval`, a TCP
//! connect to every address of every endpoint on that interval, closed at
//! once. To a backend that expects PROXY protocol the check first sends a
//! header that carries no client (v2 `LOCAL`, v1 `PROXY UNKNOWN`), so the
//! backend knows it for a check rather than a malformed client.
//!
//! A check is one more piece of evidence for the pool, counted like a
//! connect: a failed check counts toward `health.failures` (and so ejects a
//! dead backend before a client finds it), and a passed one makes its address
//! healthy at once (so a revived backend gets traffic before its back-off
//! ends). No TLS: the router holds no certificates, and a backend that
//! accepts connections is what passthrough needs.

use std::sync::Arc;
use std::time::Duration;

use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::conn::Shared;
use crate::pool::Pick;
use crate::proxy_protocol;
use crate::route::Route;

/// How often the checker looks for checks that are due.
const TICK: Duration = Duration::from_millis(100);
/// Checks in flight at once.
const IN_FLIGHT: usize = 64;

/// Check every address of the live table when due, until `stop`.
pub async fn run(shared: Arc<Shared>, stop: CancellationToken) {
    crate::background::every(TICK, stop, shared, |snapshot, now, checks| {
        let mut any = false;
        'routes: for route in snapshot.table.routes() {
            let Some(check) = route.pool.health.check else {
                continue;
            };
            any = true;
            for (endpoint, state) in route.pool.endpoints().iter().enumerate() {
                for address in state.state.addresses() {
                    if checks.len() >= IN_FLIGHT {
                        break 'routes;
                    }
                    if !address.start_check(now, check.interval) {
                        continue;
                    }
                    let route = route.clone();
                    let pick = Pick {
                        endpoint,
                        address,
                        fail_open: false,
                    };
                    checks.spawn(async move {
                        let result = probe(&route, &pick, check.timeout).await;
                        pick.address.end_check();
                        report(&route, &pick, result);
                    });
                }
            }
        }
        any
    })
    .await;
}

/// One check: connect, send the route's `LOCAL` header if it speaks PROXY
/// protocol, close.
async fn probe(route: &Route, pick: &Pick, timeout: Duration) -> Result<(), String> {
    let attempt = async {
        let mut stream = TcpStream::connect(pick.address.addr).await.map_err(|e| e.to_string())?;
        if let Some(version) = route.proxy_protocol {
            stream
                .write_all(&proxy_protocol::local_header(version))
                .await
                .map_err(|e| e.to_string())?;
        }
        let _ = stream.shutdown().await;
        Ok(())
    };
    tokio::time::timeout(timeout, attempt)
        .await
        .unwrap_or_else(|_| Err(format!("check timed out after {timeout:?}")))
}

fn report(route: &Route, pick: &Pick, result: Result<(), String>) {
    let now = Instant::now();
    let endpoint = &route.pool.endpoints()[pick.endpoint].spec.endpoint;
    match result {
        Ok(()) => {
            if route.pool.check_passed(pick, now) {
                tracing::info!(
                    route = route.name,
                    endpoint = %endpoint,
                    address = %pick.address.addr,
                    "backend address passed its check: healthy again"
                );
            }
        }
        Err(error) => {
            if let Some(backoff) = route.pool.check_failed(pick, now) {
                crate::upstream::log_ejection(route, pick, backoff, "check", &error);
            }
        }
    }
}
