//! The router's status page, `/`, and the same data as JSON, `/status`: its
//! listeners, routes and endpoints (busiest first), recent refusals and the
//! counters behind them, and where its configuration came from and how its
//! last reload went.
//!
//! Read from the live route table, the pools, [`Shared`]'s refusals and
//! reload state and the registry when asked: the page keeps nothing of its
//! own. Route names, hosts and endpoints come from the configuration; the
//! only values a client chose are the server names of refusals, which the
//! hello parser has already checked to be host names.

use std::sync::atomic::Ordering;

use prometheus::Registry;
use serde::Serialize;
use snigate_shared::page::{Cell, Page};
use snigate_shared::status::{Bounded, Refusal, ReloadState, Total, totals, unix_now};
use tokio::time::Instant;

use crate::conn::Shared;
use crate::status::healthy;

/// The counters whose totals the page shows as refusals.
const REFUSAL_COUNTERS: &[&str] = &[
    "snigate_router_routing_failures_total",
    "snigate_router_limit_refusals_total",
    "snigate_router_access_denials_total",
];

/// How many of a route's hosts a row names.
const HOSTS_SHOWN: usize = 5;

/// What does not change while the router runs.
#[derive(Debug, Clone, Serialize)]
pub struct Fixed {
    pub version: &'static str,
    pub started_at: u64,
    /// The configuration file, or that there is none.
    pub config: String,
    pub listen: Vec<String>,
    pub admin: Option<String>,
}

#[derive(Serialize)]
pub struct Status {
    #[serde(flatten)]
    fixed: Fixed,
    now: u64,
    connections: Connections,
    reload: ReloadState,
    reloads_applied: u64,
    reloads_refused: u64,
    routes: Bounded<RouteRow>,
    endpoints: Bounded<EndpointRow>,
    refusal_totals: Bounded<Total>,
    recent_refusals: Vec<Refusal>,
}

#[derive(Serialize)]
struct Connections {
    open: i64,
    limit: i64,
    accepted: u64,
}

#[derive(Serialize)]
struct RouteRow {
    name: String,
    hosts: Vec<String>,
    hosts_total: usize,
    alpn: Vec<String>,
    default: bool,
    healthy: bool,
    active: u64,
    connections: u64,
    endpoints: usize,
}

#[derive(Serialize)]
struct EndpointRow {
    route: String,
    endpoint: String,
    weight: u32,
    /// `healthy`, `ejected` (every address is) or `unresolved`.
    state: &'static str,
    addresses_healthy: usize,
    addresses_ejected: usize,
    active: u64,
    connections: u64,
    connect_failures: u64,
}

/// What the page shows, now.
pub fn status(fixed: &Fixed, shared: &Shared, registry: &Registry) -> Status {
    let snapshot = shared.snapshot.load();
    let now = Instant::now();
    let table = &snapshot.table;
    let mut routes = Vec::with_capacity(table.routes().len());
    let mut endpoints = Vec::new();
    for (i, route) in table.routes().iter().enumerate() {
        let (mut active, mut connections) = (0, 0);
        for endpoint in route.pool.endpoints() {
            let state = &endpoint.state;
            let addresses = state.addresses();
            let ejected = addresses.iter().filter(|a| a.status(now).ejected_for.is_some()).count();
            let row = EndpointRow {
                route: route.name.clone(),
                endpoint: endpoint.spec.endpoint.to_string(),
                weight: endpoint.spec.weight,
                state: match (addresses.len(), ejected) {
                    (0, _) => "unresolved",
                    (n, e) if n == e => "ejected",
                    _ => "healthy",
                },
                addresses_healthy: addresses.len() - ejected,
                addresses_ejected: ejected,
                active: state.active.load(Ordering::Relaxed),
                connections: state.connections.load(Ordering::Relaxed),
                connect_failures: state.connect_failures.load(Ordering::Relaxed),
            };
            active += row.active;
            connections += row.connections;
            endpoints.push(row);
        }
        routes.push(RouteRow {
            name: route.name.clone(),
            hosts: route.hosts.iter().take(HOSTS_SHOWN).cloned().collect(),
            hosts_total: route.hosts.len(),
            alpn: route.alpn.clone(),
            default: table.is_default(i),
            healthy: healthy(route, now),
            active,
            connections,
            endpoints: route.pool.endpoints().len(),
        });
    }
    let metrics = &shared.metrics;
    let reloads = |result: &str| metrics.reloads.with_label_values(&[result]).get();
    Status {
        fixed: fixed.clone(),
        now: unix_now(),
        connections: Connections {
            open: metrics.open.get(),
            limit: metrics.limit.get(),
            accepted: metrics.accepted.get(),
        },
        reload: shared.reloads.state(),
        reloads_applied: reloads("success"),
        reloads_refused: reloads("failure"),
        // Busiest by what they carry now, then by what they have carried;
        // an unhealthy one comes before a healthy one as busy.
        routes: Bounded::busiest(routes, |r| (r.active, !r.healthy, r.connections)),
        endpoints: Bounded::busiest(endpoints, |e| (e.active, e.state != "healthy", e.connections)),
        refusal_totals: totals(registry, REFUSAL_COUNTERS),
        recent_refusals: shared.refusals.recent(),
    }
}

/// The page's HTML.
pub fn render(s: &Status) -> String {
    let mut page = Page::new("snigate-router", s.fixed.version, s.fixed.started_at, s.now);
    page.section("Listeners and connections");
    page.facts(vec![
        ("TLS listeners", Cell::text(s.fixed.listen.join(", "))),
        ("Admin server", s.fixed.admin.clone().into()),
        (
            "Connections open",
            Cell::text(format!("{} of at most {}", s.connections.open, s.connections.limit)),
        ),
        ("Accepted since start", s.connections.accepted.into()),
    ]);

    page.section("Routes");
    page.table(
        "routes",
        &["Route", "Hosts", "ALPN", "Health", "Active", "Connections", "Endpoints"],
        &s.routes,
        |r| {
            let mut hosts = r.hosts.join(" ");
            if r.hosts_total > r.hosts.len() {
                hosts.push_str(&format!(" and {} more", r.hosts_total - r.hosts.len()));
            }
            if r.default {
                hosts = if hosts.is_empty() {
                    "(default)".into()
                } else {
                    format!("{hosts} (default)")
                };
            }
            vec![
                r.name.as_str().into(),
                hosts.into(),
                if r.alpn.is_empty() {
                    Cell::None
                } else {
                    r.alpn.join(", ").into()
                },
                Cell::state(r.healthy, "healthy", "no healthy endpoint"),
                r.active.into(),
                r.connections.into(),
                r.endpoints.into(),
            ]
        },
    );

    page.section("Endpoints");
    page.table(
        "endpoints",
        &[
            "Route",
            "Endpoint",
            "Weight",
            "Health",
            "Addresses",
            "Active",
            "Connections",
            "Connect failures",
        ],
        &s.endpoints,
        |e| {
            vec![
                e.route.as_str().into(),
                e.endpoint.as_str().into(),
                u64::from(e.weight).into(),
                Cell::state(e.state == "healthy", e.state, e.state),
                format!("{} healthy, {} ejected", e.addresses_healthy, e.addresses_ejected).into(),
                e.active.into(),
                e.connections.into(),
                e.connect_failures.into(),
            ]
        },
    );

    page.section("Refusals");
    page.totals("refusal counters", &s.refusal_totals);
    page.refusals(&s.recent_refusals, "Server name");

    page.section("Configuration");
    let mut facts = vec![("Source", Cell::text(s.fixed.config.as_str()))];
    facts.extend(Page::reload_facts(&s.reload, s.reloads_applied, s.reloads_refused));
    page.facts(facts);
    page.finish()
}
