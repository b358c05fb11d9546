//! Connecting to a route's backend: resolve, pick, connect, retry.
//!
//! A name endpoint without an address yet is looked up first (its answer becomes
//! its addresses in the route's pool; `resolve` keeps them current after
//! that); then the pool picks an address by the route's balancing,
//! and a failed connect moves on to another address not tried yet, up to
//! `connect_retries` times, every attempt bounded by `connect_timeout` and
//! all of them by `connect_deadline`. Nothing has been sent to a backend until
//! a connect succeeds, so trying another is always safe. Each outcome is
//! reported to the pool, which learns health from it.

use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use tokio::net::TcpStream;
use tokio::time::Instant;

use crate::config::{DnsSettings, Endpoint};
use crate::pool::{Active, Pick};
use crate::resolve::Resolver;
use crate::route::Route;

/// Connects to backends; shared by all connections.
#[derive(Debug, Default)]
pub struct Connector {
    pub resolver: Resolver,
}

/// One failed attempt: which endpoint (and address), and why.
#[derive(Debug)]
pub struct Attempt {
    pub endpoint: String,
    pub error: String,
}

/// No attempt succeeded.
#[derive(Debug, thiserror::Error)]
pub enum ConnectError {
    #[error("all endpoints failed: {}", display_attempts(.attempts))]
    Failed { attempts: Vec<Attempt> },
    #[error("connect_deadline of {} passed: {}", humantime::format_duration(*.deadline), display_attempts(.attempts))]
    Deadline { deadline: Duration, attempts: Vec<Attempt> },
}

fn display_attempts(attempts: &[Attempt]) -> String {
    if attempts.is_empty() {
        return "no attempt".to_owned();
    }
    let parts: Vec<String> = attempts
        .iter()
        .map(|a| format!("{}: {}", a.endpoint, a.error))
        .collect();
    parts.join("; ")
}

/// A connected backend.
#[derive(Debug)]
pub struct Connected {
    pub stream: TcpStream,
    pub addr: SocketAddr,
    /// Which of the route's endpoints (by index).
    pub endpoint: usize,
    /// Counts the connection on its endpoint and address while it lives.
    pub active: Active,
}

impl Connector {
    pub fn new() -> Self {
        Self::default()
    }

    /// Connect to an address of `route` for a client at `client`, as its
    /// balancing picks, trying others on failure.
    pub async fn connect(&self, route: &Route, client: IpAddr, dns: &DnsSettings) -> Result<Connected, ConnectError> {
        let started = Instant::now();
        let deadline = started + route.connect_deadline;
        let pool = &route.pool;
        let mut attempts = Vec::new();
        let past_deadline = |attempts| ConnectError::Deadline {
            deadline: route.connect_deadline,
            attempts,
        };
        for endpoint in pool.endpoints() {
            let Endpoint::Name { host, port } = &endpoint.spec.endpoint else {
                continue;
            };
            // Kept current by `resolve`; looked up here only while it has no
            // address (hickory caches a negative answer, so this is cheap).
            if endpoint.state.has_addresses() {
                continue;
            }
            let Some(left) = deadline.checked_duration_since(Instant::now()).filter(|d| !d.is_zero()) else {
                return Err(past_deadline(attempts));
            };
            let timeout = route.connect_timeout.min(left);
            if let Err(error) = self.resolver.refresh(dns, &endpoint.state, host, *port, timeout).await {
                attempts.push(Attempt {
                    endpoint: endpoint.spec.endpoint.to_string(),
                    error: error.to_string(),
                });
            }
        }
        let mut tried = Vec::new();
        let most = 1 + route.connect_retries as usize;
        while tried.len() < most {
            let now = Instant::now();
            let Some(left) = deadline.checked_duration_since(now).filter(|d| !d.is_zero()) else {
                return Err(past_deadline(attempts));
            };
            let Some(pick) = pool.pick(client, &tried, now) else {
                break;
            };
            self.note_failing_open(route, &pick);
            let timeout = route.connect_timeout.min(left);
            match connect_one(pick.address.addr, timeout).await {
                Ok(stream) => {
                    return Ok(Connected {
                        stream,
                        addr: pick.address.addr,
                        endpoint: pick.endpoint,
                        active: pool.connected(&pick),
                    });
                }
                Err(error) => {
                    self.note_failure(route, &pick, &error);
                    let endpoint = &pool.endpoints()[pick.endpoint].spec.endpoint;
                    attempts.push(Attempt {
                        endpoint: match endpoint {
                            Endpoint::Addr(_) => pick.address.addr.to_string(),
                            Endpoint::Name { .. } => format!("{endpoint} ({})", pick.address.addr),
                        },
                        error,
                    });
                    tried.push(pick.address);
                }
            }
        }
        if Instant::now() >= deadline {
            return Err(past_deadline(attempts));
        }
        Err(ConnectError::Failed { attempts })
    }

    /// One log line when a route starts failing open, one when it stops.
    fn note_failing_open(&self, route: &Route, pick: &Pick) {
        match route.pool.failing_open(pick.fail_open) {
            Some(true) => tracing::warn!(
                route = route.name,
                "no healthy address: trying ejected ones (failing open)"
            ),
            Some(false) => tracing::info!(route = route.name, "a healthy address again: no longer failing open"),
            None => {}
        }
    }

    fn note_failure(&self, route: &Route, pick: &Pick, error: &str) {
        if let Some(backoff) = route.pool.failed(pick, Instant::now()) {
            log_ejection(route, pick, backoff, "connect", error);
        }
    }
}

async fn connect_one(addr: SocketAddr, timeout: Duration) -> Result<TcpStream, String> {
    let stream = tokio::time::timeout(timeout, TcpStream::connect(addr))
        .await
        .map_err(|_| format!("connect timed out after {timeout:?}"))?
        .map_err(|e| e.to_string())?;
    // Relayed TLS records must not wait for Nagle: MQTT messages are small and
    // latency-sensitive, and we forward each read as soon as it arrives.
    stream.set_nodelay(true).map_err(|e| e.to_string())?;
    Ok(stream)
}

/// The log line of an ejection, from a failed connect or a failed check.
pub fn log_ejection(route: &Route, pick: &Pick, backoff: Duration, by: &'static str, error: &str) {
    let endpoint = &route.pool.endpoints()[pick.endpoint].spec.endpoint;
    tracing::warn!(
        route = route.name,
        endpoint = %endpoint,
        address = %pick.address.addr,
        failures = route.pool.health.failures,
        by,
        backoff_ms = u64::try_from(backoff.as_millis()).unwrap_or(u64::MAX),
        error,
        "backend address ejected"
    );
}
