//! What the router shows of its routes and their backends: the `/routes`
//! page and the per-endpoint metrics, both read from the live route table
//! when asked, so neither keeps a copy that could disagree with it.
//!
//! Endpoint series are labelled by the endpoint as configured, never by a
//! resolved address: pods that come and go behind a name change the values,
//! not the set of series.

use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex, PoisonError};

use prometheus::core::{Collector, Desc};
use prometheus::proto::MetricFamily;
use prometheus::{IntCounterVec, IntGaugeVec, Opts};
use serde::Serialize;
use snigate_shared::admin;
use tokio::time::Instant;

use crate::config::ProxyProtocol;
use crate::conn::Shared;
use crate::route::Route;

fn millis(d: std::time::Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

#[derive(Serialize)]
struct RouteView<'a> {
    name: &'a str,
    hosts: &'a [String],
    /// ALPN protocols it answers for; empty: any.
    alpn: &'a [String],
    default: bool,
    balance: &'static str,
    /// Some address is not ejected (or none is known yet).
    healthy: bool,
    active: u64,
    fail_opens: u64,
    endpoints: Vec<EndpointView>,
    connect_timeout_ms: u64,
    connect_deadline_ms: u64,
    connect_retries: u32,
    health: HealthView,
    idle_timeout_ms: u64,
    max_connections: Option<usize>,
    proxy_protocol: Option<&'static str>,
}

#[derive(Serialize)]
struct HealthView {
    failures: u32,
    backoff_ms: u64,
    max_backoff_ms: u64,
    /// Active checks; `null` when off.
    check_interval_ms: Option<u64>,
    check_timeout_ms: Option<u64>,
}

#[derive(Serialize)]
struct EndpointView {
    endpoint: String,
    weight: u32,
    active: u64,
    connections: u64,
    connect_failures: u64,
    ejections: u64,
    lookup_failures: u64,
    checks_passed: u64,
    checks_failed: u64,
    addresses: Vec<AddressView>,
}

#[derive(Serialize)]
struct AddressView {
    address: String,
    state: &'static str,
    active: u64,
    /// Connect failures in a row.
    failures: u32,
    ejected_for_ms: Option<u64>,
}

/// Whether `route` has an address to send a connection to without failing
/// open: one not ejected, or no address known yet (a name not yet resolved).
pub(crate) fn healthy(route: &Route, now: Instant) -> bool {
    let known = route.pool.endpoints().iter().any(|e| e.state.has_addresses());
    !known || route.pool.healthy(now)
}

fn route_view<'a>(route: &'a Route, default: bool, now: Instant) -> RouteView<'a> {
    let endpoints: Vec<EndpointView> = route
        .pool
        .endpoints()
        .iter()
        .map(|e| EndpointView {
            endpoint: e.spec.endpoint.to_string(),
            weight: e.spec.weight,
            active: e.state.active.load(Ordering::Relaxed),
            connections: e.state.connections.load(Ordering::Relaxed),
            connect_failures: e.state.connect_failures.load(Ordering::Relaxed),
            ejections: e.state.ejections.load(Ordering::Relaxed),
            lookup_failures: e.state.lookup_failures.load(Ordering::Relaxed),
            checks_passed: e.state.checks_passed.load(Ordering::Relaxed),
            checks_failed: e.state.checks_failed.load(Ordering::Relaxed),
            addresses: e
                .state
                .addresses()
                .iter()
                .map(|a| {
                    let status = a.status(now);
                    AddressView {
                        address: a.addr.to_string(),
                        state: if status.ejected_for.is_some() {
                            "ejected"
                        } else {
                            "healthy"
                        },
                        active: status.active,
                        failures: status.failures,
                        ejected_for_ms: status.ejected_for.map(millis),
                    }
                })
                .collect(),
        })
        .collect();
    RouteView {
        name: &route.name,
        hosts: &route.hosts,
        alpn: &route.alpn,
        default,
        balance: route.pool.balance.label(),
        healthy: healthy(route, now),
        active: endpoints.iter().map(|e| e.active).sum(),
        fail_opens: route.pool.fail_opens(),
        endpoints,
        connect_timeout_ms: millis(route.connect_timeout),
        connect_deadline_ms: millis(route.connect_deadline),
        connect_retries: route.connect_retries,
        health: HealthView {
            failures: route.pool.health.failures,
            backoff_ms: millis(route.pool.health.backoff),
            max_backoff_ms: millis(route.pool.health.max_backoff),
            check_interval_ms: route.pool.health.check.map(|c| millis(c.interval)),
            check_timeout_ms: route.pool.health.check.map(|c| millis(c.timeout)),
        },
        idle_timeout_ms: millis(route.idle_timeout),
        max_connections: route.max_connections,
        proxy_protocol: route.proxy_protocol.map(|v| match v {
            ProxyProtocol::V1 => "v1",
            ProxyProtocol::V2 => "v2",
        }),
    }
}

/// `/routes`: the live route table as JSON.
pub fn routes_handler(shared: Arc<Shared>) -> admin::Handler {
    Arc::new(move || {
        let snapshot = shared.snapshot.load();
        let now = Instant::now();
        let routes: Vec<RouteView<'_>> = snapshot
            .table
            .routes()
            .iter()
            .enumerate()
            .map(|(i, r)| route_view(r, snapshot.table.is_default(i), now))
            .collect();
        #[derive(Serialize)]
        struct Body<'a> {
            routes: Vec<RouteView<'a>>,
        }
        // Serialized straight from the views: a `serde_json::Value` of 10,000
        // routes would be megabytes that the allocator then keeps.
        let body = serde_json::to_string_pretty(&Body { routes }).unwrap_or_else(|e| format!("{{\"error\": \"{e}\"}}"));
        ("application/json", body + "\n")
    })
}

/// The per-endpoint and per-route health series, filled from the live table
/// at each scrape.
pub struct BackendMetrics {
    shared: Arc<Shared>,
    active: IntGaugeVec,
    connections: IntCounterVec,
    connect_failures: IntCounterVec,
    ejections: IntCounterVec,
    addresses: IntGaugeVec,
    healthy: IntGaugeVec,
    fail_opens: IntCounterVec,
    lookup_failures: IntCounterVec,
    checks: IntCounterVec,
    clients_tracked: IntGaugeVec,
    client_table_full: IntCounterVec,
    /// One scrape at a time: each resets and refills the vectors.
    scraping: Mutex<()>,
}

impl BackendMetrics {
    pub fn new(shared: Arc<Shared>) -> prometheus::Result<Self> {
        let endpoint = &["route", "endpoint"];
        Ok(Self {
            shared,
            active: IntGaugeVec::new(
                Opts::new(
                    "snigate_router_endpoint_connections_active",
                    "Connections being relayed, by route and endpoint (as configured).",
                ),
                endpoint,
            )?,
            connections: IntCounterVec::new(
                Opts::new(
                    "snigate_router_endpoint_connections_total",
                    "Connections relayed, by route and endpoint.",
                ),
                endpoint,
            )?,
            connect_failures: IntCounterVec::new(
                Opts::new(
                    "snigate_router_endpoint_connect_failures_total",
                    "Failed connect attempts, by route and endpoint.",
                ),
                endpoint,
            )?,
            ejections: IntCounterVec::new(
                Opts::new(
                    "snigate_router_endpoint_ejections_total",
                    "Addresses ejected by passive health, by route and endpoint.",
                ),
                endpoint,
            )?,
            addresses: IntGaugeVec::new(
                Opts::new(
                    "snigate_router_endpoint_addresses",
                    "Addresses of an endpoint, by route, endpoint and state (healthy, ejected).",
                ),
                &["route", "endpoint", "state"],
            )?,
            healthy: IntGaugeVec::new(
                Opts::new(
                    "snigate_router_route_healthy",
                    "1 when the route has an address that is not ejected (or none known yet), else 0.",
                ),
                &["route"],
            )?,
            fail_opens: IntCounterVec::new(
                Opts::new(
                    "snigate_router_route_fail_open_total",
                    "Connections that found no healthy address and tried ejected ones, by route.",
                ),
                &["route"],
            )?,
            lookup_failures: IntCounterVec::new(
                Opts::new(
                    "snigate_router_endpoint_lookup_failures_total",
                    "DNS lookups of a name endpoint that got no answer (its last answer was kept), by route and endpoint.",
                ),
                endpoint,
            )?,
            checks: IntCounterVec::new(
                Opts::new(
                    "snigate_router_endpoint_checks_total",
                    "Active checks of an endpoint's addresses, by route, endpoint and result (passed, failed).",
                ),
                &["route", "endpoint", "result"],
            )?,
            clients_tracked: IntGaugeVec::new(
                Opts::new(
                    "snigate_router_clients_tracked",
                    "Client addresses (prefixes) counted now for per-client limits, by route (empty: [clients]).",
                ),
                &["route"],
            )?,
            client_table_full: IntCounterVec::new(
                Opts::new(
                    "snigate_router_client_table_full_total",
                    "New clients let through uncounted because max_tracked prefixes were held, by route (empty: [clients]).",
                ),
                &["route"],
            )?,
            scraping: Mutex::new(()),
        })
    }

    fn vectors(&self) -> [&dyn Collector; 11] {
        [
            &self.clients_tracked,
            &self.client_table_full,
            &self.lookup_failures,
            &self.checks,
            &self.active,
            &self.connections,
            &self.connect_failures,
            &self.ejections,
            &self.addresses,
            &self.healthy,
            &self.fail_opens,
        ]
    }
}

impl Collector for BackendMetrics {
    fn desc(&self) -> Vec<&Desc> {
        self.vectors().into_iter().flat_map(Collector::desc).collect()
    }

    fn collect(&self) -> Vec<MetricFamily> {
        let _one = self.scraping.lock().unwrap_or_else(PoisonError::into_inner);
        let (gauges, counters) = (
            [&self.active, &self.addresses, &self.healthy, &self.clients_tracked],
            [
                &self.connections,
                &self.connect_failures,
                &self.ejections,
                &self.fail_opens,
                &self.lookup_failures,
                &self.checks,
                &self.client_table_full,
            ],
        );
        gauges.iter().for_each(|v| v.reset());
        counters.iter().for_each(|v| v.reset());
        for (route, tracked, full) in self.shared.client_tables() {
            let route = route.unwrap_or_default();
            self.clients_tracked
                .with_label_values(&[route.as_str()])
                .set(i64::try_from(tracked).unwrap_or(i64::MAX));
            self.client_table_full.with_label_values(&[route.as_str()]).inc_by(full);
        }
        let snapshot = self.shared.snapshot.load();
        let now = Instant::now();
        for route in snapshot.table.routes() {
            let name = route.name.as_str();
            self.healthy
                .with_label_values(&[name])
                .set(i64::from(healthy(route, now)));
            self.fail_opens
                .with_label_values(&[name])
                .inc_by(route.pool.fail_opens());
            for endpoint in route.pool.endpoints() {
                let label = endpoint.spec.endpoint.to_string();
                let labels = [name, label.as_str()];
                let state = &endpoint.state;
                let count = |n: &std::sync::atomic::AtomicU64| n.load(Ordering::Relaxed);
                self.active
                    .with_label_values(&labels)
                    .set(i64::try_from(count(&state.active)).unwrap_or(i64::MAX));
                self.connections
                    .with_label_values(&labels)
                    .inc_by(count(&state.connections));
                self.connect_failures
                    .with_label_values(&labels)
                    .inc_by(count(&state.connect_failures));
                self.ejections
                    .with_label_values(&labels)
                    .inc_by(count(&state.ejections));
                if matches!(endpoint.spec.endpoint, crate::config::Endpoint::Name { .. }) {
                    self.lookup_failures
                        .with_label_values(&labels)
                        .inc_by(count(&state.lookup_failures));
                }
                if route.pool.health.check.is_some() {
                    for (result, n) in [("passed", &state.checks_passed), ("failed", &state.checks_failed)] {
                        self.checks
                            .with_label_values(&[name, label.as_str(), result])
                            .inc_by(count(n));
                    }
                }
                let addresses = state.addresses();
                let ejected = addresses.iter().filter(|a| a.status(now).ejected_for.is_some()).count();
                let as_gauge = |n: usize| i64::try_from(n).unwrap_or(i64::MAX);
                self.addresses
                    .with_label_values(&[name, label.as_str(), "healthy"])
                    .set(as_gauge(addresses.len() - ejected));
                self.addresses
                    .with_label_values(&[name, label.as_str(), "ejected"])
                    .set(as_gauge(ejected));
            }
        }
        self.vectors().into_iter().flat_map(Collector::collect).collect()
    }
}
