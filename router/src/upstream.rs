//! Connecting to a route's backend: resolve, connect, fail over.
//!
//! A connection starts at the route's first endpoint and moves to the next on a
//! connect error or timeout; a DNS name is resolved at connect time and every
//! address it returns is tried in turn. Nothing has been sent to a backend until
//! a connect succeeds, so failing over is always safe.
//!
//! Names are resolved by hickory-resolver from `/etc/hosts` and
//! `/etc/resolv.conf`, not by glibc: our images are static binaries `FROM
//! scratch`, where glibc's NSS modules cannot be loaded. The resolver is built on
//! first use, so a router whose endpoints are all addresses never needs one.

use std::fmt;
use std::net::SocketAddr;
use std::sync::OnceLock;
use std::time::Duration;

use hickory_resolver::TokioResolver;
use tokio::net::TcpStream;

use crate::config::Endpoint;
use crate::route::Route;

/// Connects to backends; shared by all connections.
#[derive(Default)]
pub struct Connector {
    /// Built on first use; a failure is not kept, so a resolv.conf that appears
    /// later (or a transient error) is picked up by the next connection.
    resolver: OnceLock<TokioResolver>,
}

impl fmt::Debug for Connector {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Connector").finish_non_exhaustive()
    }
}

/// One failed attempt: which endpoint (and address), and why.
#[derive(Debug)]
pub struct Attempt {
    pub endpoint: String,
    pub error: String,
}

/// Every endpoint of the route failed.
#[derive(Debug, thiserror::Error)]
#[error("all endpoints failed: {}", display_attempts(.attempts))]
pub struct ConnectError {
    pub attempts: Vec<Attempt>,
}

fn display_attempts(attempts: &[Attempt]) -> String {
    let parts: Vec<String> = attempts
        .iter()
        .map(|a| format!("{}: {}", a.endpoint, a.error))
        .collect();
    parts.join("; ")
}

impl Connector {
    pub fn new() -> Self {
        Self::default()
    }

    /// Connect to the first endpoint of `route` that accepts, returning the stream
    /// and the address connected to.
    pub async fn connect(&self, route: &Route) -> Result<(TcpStream, SocketAddr), ConnectError> {
        let mut attempts = Vec::new();
        for endpoint in &route.endpoints {
            let addrs = match endpoint {
                Endpoint::Addr(addr) => vec![*addr],
                Endpoint::Name { host, port } => match self.resolve(host, *port, route.connect_timeout).await {
                    Ok(addrs) => addrs,
                    Err(error) => {
                        attempts.push(Attempt {
                            endpoint: endpoint.to_string(),
                            error,
                        });
                        continue;
                    }
                },
            };
            for addr in addrs {
                match connect_one(addr, route.connect_timeout).await {
                    Ok(stream) => return Ok((stream, addr)),
                    Err(error) => attempts.push(Attempt {
                        endpoint: match endpoint {
                            Endpoint::Addr(_) => addr.to_string(),
                            Endpoint::Name { .. } => format!("{endpoint} ({addr})"),
                        },
                        error,
                    }),
                }
            }
        }
        Err(ConnectError { attempts })
    }

    async fn resolve(&self, host: &str, port: u16, timeout: Duration) -> Result<Vec<SocketAddr>, String> {
        let resolver = match self.resolver.get() {
            Some(resolver) => resolver,
            None => {
                let built = TokioResolver::builder_tokio()
                    .map_err(|e| format!("no DNS resolver (reading /etc/resolv.conf): {e}"))?
                    .build()
                    .map_err(|e| format!("no DNS resolver: {e}"))?;
                self.resolver.get_or_init(|| built)
            }
        };
        // Search domains and `ndots` from resolv.conf apply as they would with
        // glibc, so a short Kubernetes Service name resolves inside a cluster.
        let lookup = tokio::time::timeout(timeout, resolver.lookup_ip(host))
            .await
            .map_err(|_| format!("DNS lookup timed out after {timeout:?}"))?
            .map_err(|e| format!("DNS lookup failed: {e}"))?;
        let addrs: Vec<SocketAddr> = lookup.iter().map(|ip| SocketAddr::new(ip, port)).collect();
        if addrs.is_empty() {
            return Err("DNS lookup returned no addresses".to_owned());
        }
        Ok(addrs)
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
