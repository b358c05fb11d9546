//! Keeping name endpoints current. Every name a route connects to is looked
//! up again when its answer's TTL ends (held within `[dns] min_ttl` and
//! `max_ttl`) by one background task, so a connection waits for DNS only when
//! its name has never been answered, and the addresses behind a headless
//! Service follow its ready pods without a reload.
//!
//! Names are resolved by hickory-resolver from `/etc/hosts` and
//! `/etc/resolv.conf` (or the `[dns] servers`), not by glibc: our images are
//! static binaries `FROM scratch`, where glibc's NSS modules cannot be loaded.
//! The resolver is built on first use (a router whose endpoints are all
//! addresses never needs one) and again when `[dns]` changes on reload; a
//! failure to build it is not kept, so a resolv.conf that appears later is
//! picked up.

use std::fmt;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use hickory_resolver::TokioResolver;
use hickory_resolver::config::{NameServerConfig, ResolverConfig};
use hickory_resolver::net::runtime::TokioRuntimeProvider;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::config::{DnsSettings, Endpoint};
use crate::conn::Shared;
use crate::pool::EndpointState;

/// How often the refresher looks for names that are due.
const TICK: Duration = Duration::from_millis(250);
/// Lookups in flight at once, so that 10,000 routes with names do not send
/// 10,000 queries in one burst.
const IN_FLIGHT: usize = 16;
/// One background lookup, all of hickory's attempts included.
const LOOKUP_TIMEOUT: Duration = Duration::from_secs(5);

/// The resolver, built for the `[dns]` settings in force.
#[derive(Default)]
pub struct Resolver {
    built: Mutex<Option<(DnsSettings, TokioResolver)>>,
}

impl fmt::Debug for Resolver {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Resolver").finish_non_exhaustive()
    }
}

/// Why a lookup gave no addresses.
#[derive(Debug)]
pub enum LookupError {
    /// The name exists with no address, or does not exist: it has none now.
    NoRecords(String),
    /// No answer (timeout, server failure, no resolver): its last answer stands.
    Failed(String),
}

impl fmt::Display for LookupError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            LookupError::NoRecords(e) | LookupError::Failed(e) => f.write_str(e),
        }
    }
}

impl Resolver {
    fn resolver(&self, settings: &DnsSettings) -> Result<TokioResolver, String> {
        let mut built = self.built.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some((for_settings, resolver)) = built.as_ref()
            && for_settings == settings
        {
            return Ok(resolver.clone());
        }
        let mut builder = if settings.servers.is_empty() {
            TokioResolver::builder_tokio().map_err(|e| format!("no DNS resolver (reading /etc/resolv.conf): {e}"))?
        } else {
            let servers = settings
                .servers
                .iter()
                .map(|addr| {
                    let mut server = NameServerConfig::udp_and_tcp(addr.ip());
                    for connection in &mut server.connections {
                        connection.port = addr.port();
                    }
                    server
                })
                .collect();
            TokioResolver::builder_with_config(
                ResolverConfig::from_parts(None, Vec::new(), servers),
                TokioRuntimeProvider::default(),
            )
        };
        // hickory's cache keeps an answer as long as we would, no longer.
        let options = builder.options_mut();
        options.positive_min_ttl = Some(settings.min_ttl);
        options.positive_max_ttl = Some(settings.max_ttl);
        options.negative_min_ttl = Some(settings.min_ttl);
        options.negative_max_ttl = Some(settings.max_ttl);
        let resolver = builder.build().map_err(|e| format!("no DNS resolver: {e}"))?;
        *built = Some((settings.clone(), resolver.clone()));
        Ok(resolver)
    }

    /// Look `host` up; the addresses with `port`, and how long they hold.
    pub async fn lookup(
        &self,
        settings: &DnsSettings,
        host: &str,
        port: u16,
        timeout: Duration,
    ) -> Result<(Vec<SocketAddr>, Duration), LookupError> {
        let resolver = self.resolver(settings).map_err(LookupError::Failed)?;
        // Search domains and `ndots` from resolv.conf apply as they would with
        // glibc, so a short Kubernetes Service name resolves inside a cluster.
        let lookup = match tokio::time::timeout(timeout, resolver.lookup_ip(host)).await {
            Err(_) => return Err(LookupError::Failed(format!("DNS lookup timed out after {timeout:?}"))),
            Ok(Err(e)) if e.is_no_records_found() => {
                return Err(LookupError::NoRecords(format!("DNS lookup found no address: {e}")));
            }
            Ok(Err(e)) => return Err(LookupError::Failed(format!("DNS lookup failed: {e}"))),
            Ok(Ok(lookup)) => lookup,
        };
        let addrs: Vec<SocketAddr> = lookup.iter().map(|ip| SocketAddr::new(ip, port)).collect();
        if addrs.is_empty() {
            return Err(LookupError::NoRecords("DNS lookup returned no addresses".to_owned()));
        }
        let ttl = lookup
            .valid_until()
            .saturating_duration_since(std::time::Instant::now());
        Ok((addrs, ttl))
    }

    /// Look `endpoint`'s name up now and record what was learnt: its new
    /// addresses (none, when the name has none) or, on a failure, nothing but
    /// the failure. Schedules the next lookup either way.
    pub async fn refresh(
        &self,
        settings: &DnsSettings,
        state: &EndpointState,
        host: &str,
        port: u16,
        timeout: Duration,
    ) -> Result<(), LookupError> {
        let result = self.lookup(settings, host, port, timeout).await;
        let now = Instant::now();
        match &result {
            Ok((addrs, ttl)) => {
                state.resolved(addrs);
                state.refresh_at(now + (*ttl).clamp(settings.min_ttl, settings.max_ttl));
            }
            Err(LookupError::NoRecords(_)) => {
                state.resolved(&[]);
                state.refresh_at(now + settings.min_ttl);
            }
            Err(LookupError::Failed(_)) => {
                state.lookup_failed();
                state.refresh_at(now + settings.min_ttl);
            }
        }
        result.map(|_| ())
    }
}

/// Refresh every name endpoint of the live table when it is due, until `stop`.
pub async fn run(shared: Arc<Shared>, stop: CancellationToken) {
    let for_lookups = shared.clone();
    crate::background::every(TICK, stop, shared, move |snapshot, now, lookups| {
        let mut names = false;
        'routes: for route in snapshot.table.routes() {
            for endpoint in route.pool.endpoints() {
                let Endpoint::Name { host, port } = &endpoint.spec.endpoint else {
                    continue;
                };
                names = true;
                if lookups.len() >= IN_FLIGHT {
                    break 'routes;
                }
                if !endpoint.state.start_refresh(now) {
                    continue;
                }
                let (shared, dns, state) = (for_lookups.clone(), snapshot.dns.clone(), endpoint.state.clone());
                let (host, port, route) = (host.clone(), *port, route.name.clone());
                lookups.spawn(async move {
                    let result = shared
                        .connector
                        .resolver
                        .refresh(&dns, &state, &host, port, LOOKUP_TIMEOUT)
                        .await;
                    state.end_refresh();
                    if let Err(LookupError::Failed(error)) = result {
                        tracing::debug!(route, endpoint = %format_args!("{host}:{port}"), error, "DNS refresh failed; keeping the last answer");
                    }
                });
            }
        }
        names
    })
    .await;
}
