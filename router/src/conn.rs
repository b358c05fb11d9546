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

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use arc_swap::ArcSwap;
use prometheus::IntGauge;
use snigate_shared::status::Refusal;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::time::Instant;
use tracing::Instrument;

use crate::clients::{self, ClientTable, LogBudget, Slot};
use crate::config::{AccessList, ClientLimits, ClientsSettings, DnsSettings, ProxyIn};
use crate::error::ConnError;
use crate::hello::{self, HelloLimits};
use crate::metrics::Metrics;
use crate::pool::Active;
use crate::route::{NoRoute, Route, RouteTable};
use crate::splice::{self, End, Side};
use crate::upstream::{Connected, Connector};
use crate::{proxy_protocol, reject};

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
    /// Most connections open at once, in any stage.
    pub max_connections: usize,
    pub drain_timeout: Duration,
    pub dns: Arc<DnsSettings>,
    pub clients: ClientsSettings,
}

/// What every connection shares: the current snapshot (swapped whole by a
/// reload), the backend connector, the metrics and the connection counts the
/// limits are checked against (kept here, not in the snapshot, so that a reload
/// does not reset them).
#[derive(Debug)]
pub struct Shared {
    pub snapshot: ArcSwap<Snapshot>,
    pub connector: Connector,
    pub metrics: Metrics,
    open: AtomicUsize,
    by_route: Mutex<HashMap<String, Arc<RouteState>>>,
    /// Every connection's client, against `[clients]`.
    clients: ClientTable,
    refusal_log: LogBudget,
    /// The last connections not relayed, for the status page.
    pub refusals: snigate_shared::status::Refusals,
    /// The last reload's outcome, for the status page.
    pub reloads: snigate_shared::status::Reloads,
    /// Counts the snapshots installed by reloads.
    installed: tokio::sync::watch::Sender<u64>,
}

/// What a route's connections count against, kept across reloads by name.
#[derive(Debug)]
struct RouteState {
    active: AtomicUsize,
    /// `snigate_router_connections_active{route}`, looked up once.
    gauge: IntGauge,
    clients: ClientTable,
}

impl Shared {
    pub fn new(snapshot: Snapshot, metrics: Metrics) -> Self {
        metrics
            .limit
            .set(i64::try_from(snapshot.max_connections).unwrap_or(i64::MAX));
        Self {
            snapshot: ArcSwap::from_pointee(snapshot),
            connector: Connector::new(),
            metrics,
            open: AtomicUsize::new(0),
            by_route: Mutex::new(HashMap::new()),
            clients: ClientTable::default(),
            refusal_log: LogBudget::default(),
            refusals: Default::default(),
            reloads: Default::default(),
            installed: tokio::sync::watch::Sender::new(0),
        }
    }

    /// The client tables: `[clients]`'s (route `None`), then each route's
    /// that has one, with how many prefixes each tracks and how often it was
    /// full.
    pub fn client_tables(&self) -> Vec<(Option<String>, usize, u64)> {
        let mut tables = vec![(None, self.clients.len(), self.clients.full.load(Ordering::Relaxed))];
        let by_route = self.by_route.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        for (name, state) in by_route.iter() {
            let (len, full) = (state.clients.len(), state.clients.full.load(Ordering::Relaxed));
            if len > 0 || full > 0 {
                tables.push((Some(name.clone()), len, full));
            }
        }
        tables
    }

    /// Make `snapshot` the one new connections take.
    pub fn install(&self, snapshot: Snapshot) {
        self.metrics
            .limit
            .set(i64::try_from(snapshot.max_connections).unwrap_or(i64::MAX));
        self.snapshot.store(Arc::new(snapshot));
        self.installed.send_modify(|n| *n += 1);
    }

    /// Told of every snapshot installed, for background work that sleeps
    /// while the table gives it nothing to do.
    pub fn installs(&self) -> tokio::sync::watch::Receiver<u64> {
        self.installed.subscribe()
    }

    /// Count a connection against `max`; `None` when the limit is reached.
    fn admit(&self, max: usize) -> Option<OpenGuard<'_>> {
        if self.open.fetch_add(1, Ordering::AcqRel) >= max {
            self.open.fetch_sub(1, Ordering::AcqRel);
            return None;
        }
        self.metrics.open.inc();
        Some(OpenGuard(self))
    }

    /// Count a connection on `route` against its limit.
    fn route_state(&self, route: &Route) -> Arc<RouteState> {
        let mut by_route = self.by_route.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        by_route
            .entry(route.name.clone())
            .or_insert_with(|| {
                Arc::new(RouteState {
                    active: AtomicUsize::new(0),
                    gauge: self.metrics.active.with_label_values(&[route.name.as_str()]),
                    clients: ClientTable::default(),
                })
            })
            .clone()
    }

    /// Whether `client` may connect to `scope`, and count it there: the
    /// access list first, then the limits per client.
    fn admit_client(
        &self,
        client: std::net::IpAddr,
        settings: &ClientsSettings,
        access: &AccessList,
        limits: &ClientLimits,
        table: &ClientTable,
        route: bool,
    ) -> Result<Option<Slot>, ConnError> {
        if !access.admits(client) {
            return Err(ConnError::Denied { route });
        }
        if limits.is_none() {
            return Ok(None);
        }
        table
            .admit(
                clients::key(client, settings),
                limits,
                settings.max_tracked,
                Instant::now(),
            )
            .map_err(|refusal| ConnError::ClientLimit { route, refusal })
    }

    fn admit_route(&self, route: &Route) -> Result<RouteGuard, ConnError> {
        let count = self.route_state(route);
        let before = count.active.fetch_add(1, Ordering::AcqRel);
        if let Some(max) = route.max_connections
            && before >= max
        {
            count.active.fetch_sub(1, Ordering::AcqRel);
            return Err(ConnError::RouteLimit(max));
        }
        count.gauge.inc();
        Ok(RouteGuard(count))
    }
}

/// One open connection, counted until dropped.
struct OpenGuard<'a>(&'a Shared);

impl Drop for OpenGuard<'_> {
    fn drop(&mut self) {
        self.0.open.fetch_sub(1, Ordering::AcqRel);
        self.0.metrics.open.dec();
    }
}

/// One connection on a route, counted until dropped.
struct RouteGuard(Arc<RouteState>);

impl Drop for RouteGuard {
    fn drop(&mut self) {
        self.0.active.fetch_sub(1, Ordering::AcqRel);
        self.0.gauge.dec();
    }
}

/// What the access log says of a connection, filled in stage by stage.
#[derive(Debug)]
pub struct Access {
    /// The client: the connection's peer, or the address a PROXY protocol
    /// header named.
    pub peer: SocketAddr,
    /// The load balancer the client came through (PROXY protocol in). Boxed:
    /// the record lives as long as the connection, and 8 bytes instead of 32
    /// are paid by every idle connection, PROXY protocol or not.
    pub via: Option<Box<SocketAddr>>,
    pub local: SocketAddr,
    pub sni: Option<String>,
    pub alpn: Option<String>,
    pub route: Option<Arc<Route>>,
    pub matched: Option<&'static str>,
    /// The endpoint connected to, as configured (its index in the route's).
    pub endpoint: Option<usize>,
    pub backend: Option<SocketAddr>,
}

impl Access {
    pub fn new(peer: SocketAddr, local: SocketAddr) -> Self {
        Self {
            peer,
            via: None,
            local,
            sni: None,
            alpn: None,
            route: None,
            matched: None,
            endpoint: None,
            backend: None,
        }
    }
}

/// Handle one accepted connection to its end. Never fails: every outcome is
/// logged as one access event and counted.
pub async fn handle(
    mut client: TcpStream,
    peer: SocketAddr,
    local: SocketAddr,
    proxy: Option<Arc<ProxyIn>>,
    shared: Arc<Shared>,
) {
    let started = Instant::now();
    let mut access = Access::new(peer, local);
    shared.metrics.accepted.inc();
    let max = shared.snapshot.load().max_connections;
    let result = match shared.admit(max) {
        // Refused before reading anything: the cheapest way to shed load.
        None => Err(ConnError::GlobalLimit(max)),
        Some(_open) => serve(&mut client, &shared, &mut access, proxy).await,
    };
    drop(client);
    let route = access.route.as_ref().map_or("", |r| r.name.as_str());
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
        Err(error) => {
            let label = error.label();
            match error {
                ConnError::GlobalLimit(_) => shared.metrics.limit_refusals.with_label_values(&["global", ""]).inc(),
                ConnError::RouteLimit(_) => shared.metrics.limit_refusals.with_label_values(&["route", route]).inc(),
                ConnError::ClientLimit { refusal, .. } => shared
                    .metrics
                    .limit_refusals
                    .with_label_values(&[refusal.label(), route])
                    .inc(),
                ConnError::Denied { .. } => shared.metrics.denials.with_label_values(&[route]).inc(),
                _ => shared.metrics.routing_failures.with_label_values(&[label]).inc(),
            }
            let detail = error.to_string();
            shared
                .refusals
                .record(Refusal::new(access.peer, access.sni.as_deref(), label, &detail));
            (label, 0, 0, Some(detail))
        }
    };
    shared.metrics.closed.with_label_values(&[route, outcome]).inc();
    // Refused clients come in floods: their lines are rationed, their
    // counts are not.
    let refused = matches!(
        result,
        Err(ConnError::Denied { .. } | ConnError::ClientLimit { .. } | ConnError::UntrustedProxy(_))
    );
    if refused && !shared.refusal_log.allow(Instant::now()) {
        return;
    }
    tracing::info!(
        target: "snigate_router::access",
        peer = %access.peer,
        via = access.via.as_deref().map(tracing::field::display),
        local = %access.local,
        sni = access.sni,
        alpn = access.alpn,
        route = access.route.as_ref().map(|r| r.name.as_str()),
        matched = access.matched,
        endpoint = access
            .route
            .as_ref()
            .zip(access.endpoint)
            .and_then(|(r, i)| r.pool.endpoints().get(i))
            .map(|e| tracing::field::display(&e.spec.endpoint)),
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

async fn serve(
    client: &mut TcpStream,
    shared: &Shared,
    access: &mut Access,
    proxy: Option<Arc<ProxyIn>>,
) -> Result<splice::Relayed, ConnError> {
    // A task is as large as its largest state for its whole life, and the relay
    // is the state that lasts: everything before it runs boxed, so the hello
    // buffer, the parse results, the connect (DNS included) and the span cost
    // memory only while they run.
    let span = tracing::debug_span!("conn", peer = %access.peer, local = %access.local);
    let established = Box::pin(establish(client, shared, access, proxy).instrument(span)).await?;
    let Established {
        route,
        backend,
        forwarded,
        _guard,
        _active,
        _slots,
    } = established;
    let bytes_in = shared.metrics.bytes.with_label_values(&[route.name.as_str(), "in"]);
    let bytes_out = shared.metrics.bytes.with_label_values(&[route.name.as_str(), "out"]);
    bytes_in.inc_by(forwarded);
    let mut relayed = splice::relay(client, &backend, route.idle_timeout, |to_backend, to_client| {
        bytes_in.inc_by(to_backend);
        bytes_out.inc_by(to_client);
    })
    .await;
    relayed.to_backend += forwarded;
    Ok(relayed)
}

/// A connection ready to relay.
struct Established {
    route: Arc<Route>,
    backend: TcpStream,
    /// The client's bytes already sent to the backend (the hello; a PROXY
    /// header is ours, not the client's, and not counted).
    forwarded: u64,
    _guard: RouteGuard,
    _active: Active,
    /// The client counted against `[clients]` and the route's `clients`;
    /// boxed, and only with limits, so that connections without them keep
    /// 8 bytes of the 16 for their whole life.
    _slots: Option<Box<(Option<Slot>, Option<Slot>)>>,
}

/// (PROXY header ->) hello -> route -> upstream, then forward the hello.
async fn establish(
    client: &mut TcpStream,
    shared: &Shared,
    access: &mut Access,
    proxy: Option<Arc<ProxyIn>>,
) -> Result<Established, ConnError> {
    let started = Instant::now();
    // Taken once: a reload never changes a connection half-way.
    let snapshot = shared.snapshot.load_full();
    let mut limits = snapshot.hello;
    if let Some(proxy) = proxy.as_deref() {
        // The header and the hello share the hello's deadline from accept.
        read_proxy_header(client, access, proxy, limits.timeout).await?;
        limits.timeout = limits.timeout.saturating_sub(started.elapsed());
    }
    // Before reading anything more: the cheapest point to turn a client away.
    let clients = &snapshot.clients;
    let client_ip = access.peer.ip();
    let global_slot = shared.admit_client(
        client_ip,
        clients,
        &clients.access,
        &clients.limits,
        &shared.clients,
        false,
    )?;
    let hello = hello::read(client, limits).await?;
    shared.metrics.hello_seconds.observe(started.elapsed().as_secs_f64());
    access.sni.clone_from(&hello.info.sni);
    if !hello.info.alpn.is_empty() {
        access.alpn = Some(hello.info.alpn.join(","));
    }

    let route = match snapshot.table.lookup(hello.info.sni.as_deref(), &hello.info.alpn) {
        Ok((route, kind)) => {
            access.matched = Some(kind.label());
            access.route = Some(route.clone());
            route.clone()
        }
        Err(no_route) => {
            let alert = match no_route {
                NoRoute::NoAlpn => reject::no_application_protocol(hello.info.record_version),
                NoRoute::NoSni | NoRoute::UnknownSni => reject::unrecognized_name(hello.info.record_version),
            };
            send_alert(client, alert).await;
            return Err(no_route.into());
        }
    };
    let route_slot = match &route.clients {
        None => None,
        Some(own) => {
            let table = &shared.route_state(&route).clients;
            shared.admit_client(client_ip, clients, &own.access, &own.limits, table, true)?
        }
    };
    let dns = snapshot.dns.clone();
    drop(snapshot);
    let guard = shared.admit_route(&route)?;

    let connecting = Instant::now();
    let Connected {
        stream: mut backend,
        addr,
        endpoint,
        active,
    } = shared.connector.connect(&route, access.peer.ip(), &dns).await?;
    shared
        .metrics
        .connect_seconds
        .with_label_values(&[route.name.as_str()])
        .observe(connecting.elapsed().as_secs_f64());
    access.endpoint = Some(endpoint);
    access.backend = Some(addr);
    // One write, so the header and the hello leave in one segment.
    let (first, header_len) = match route.proxy_protocol {
        Some(version) => {
            let mut first = proxy_protocol::header(version, access.peer, access.local, hello.info.sni.as_deref());
            let header_len = first.len();
            first.extend_from_slice(&hello.bytes);
            (first, header_len)
        }
        None => (hello.bytes, 0),
    };
    let forwarded = first.len() - header_len;
    backend.write_all(&first).await.map_err(ConnError::Forward)?;
    Ok(Established {
        route,
        backend,
        forwarded: forwarded as u64,
        _guard: guard,
        _active: active,
        _slots: (global_slot.is_some() || route_slot.is_some()).then(|| Box::new((global_slot, route_slot))),
    })
}

/// The PROXY protocol header of a connection from a load balancer: the client
/// it names becomes the connection's `peer` for everything after (the access
/// log, balancing, limits, PROXY out).
async fn read_proxy_header(
    client: &mut TcpStream,
    access: &mut Access,
    proxy: &ProxyIn,
    within: Duration,
) -> Result<(), ConnError> {
    let from = access.peer;
    if !proxy.trusted.contains(from.ip()) {
        return Err(ConnError::UntrustedProxy(from));
    }
    let header = tokio::time::timeout(within, snigate_shared::proxy_protocol::read_header(client))
        .await
        .map_err(|_| ConnError::Hello(hello::HelloError::Timeout(within)))?
        .map_err(ConnError::ProxyHeader)?;
    // `LOCAL` (a load balancer's own check) or `UNKNOWN`: the peer stays.
    if let Some(client) = header {
        access.via = Some(Box::new(from));
        access.peer = client;
    }
    Ok(())
}

/// Best effort: the client may already be gone.
async fn send_alert(client: &mut TcpStream, alert: [u8; 7]) {
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
        let snapshot = super::Snapshot {
            table: crate::route::RouteTable::default(),
            hello: crate::hello::HelloLimits {
                timeout: Duration::from_secs(1),
                max_bytes: 2000,
            },
            max_connections: 10,
            drain_timeout: Duration::from_secs(1),
            dns: Arc::new(crate::config::DnsFile::default().resolve().unwrap()),
            clients: crate::config::ClientsSettings::default(),
        };
        let metrics = crate::metrics::Metrics::new(&prometheus::Registry::new()).unwrap();
        let shared = Arc::new(super::Shared::new(snapshot, metrics));
        let task = super::handle(client, addr, addr, None, shared);
        let size = std::mem::size_of_val(&task);
        // 1,008 bytes before PROXY protocol in (its listener's settings and
        // the load balancer's boxed address): 24 more, 1 % of an idle
        // connection's 2.2 KiB.
        assert!(size <= 1032, "the connection future is {size} bytes");
    }
}
