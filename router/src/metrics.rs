//! The router's metrics, registered into the component's own registry.
//!
//! Labels carry route names (from the configuration), outcome and reason labels
//! (from the code), never anything a client sends: a client must not be able to
//! create series. Connections not yet routed (or never routed) carry
//! `route=""`. A leaf: it knows prometheus, not the router.

use prometheus::{
    Histogram, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge, IntGaugeVec, Opts, Registry,
};

/// Buckets for the stages before the relay: from a loopback connect (~50 µs) to
/// the 5 s hello timeout.
const STAGE_BUCKETS: &[f64] = &[
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0,
];

#[derive(Debug, Clone)]
pub struct Metrics {
    pub accepted: IntCounter,
    /// Open connections, in any stage.
    pub open: IntGauge,
    /// Connections being relayed, by route.
    pub active: IntGaugeVec,
    /// Ended connections by route and outcome.
    pub closed: IntCounterVec,
    /// Bytes relayed by route and direction (`in`: client to backend).
    pub bytes: IntCounterVec,
    pub hello_seconds: Histogram,
    pub connect_seconds: HistogramVec,
    /// Connections that could not be routed to a backend, by reason.
    pub routing_failures: IntCounterVec,
    /// Connections closed at a limit, by limit (`global`, `route`,
    /// `client_connections`, `client_rate`) and route.
    pub limit_refusals: IntCounterVec,
    /// Connections refused by an allow or deny list, by route (`""`: `[clients]`).
    pub denials: IntCounterVec,
    /// Reloads by result (`success`, `failure`).
    pub reloads: IntCounterVec,
    /// When the configuration in use was loaded (Unix seconds).
    pub config_loaded: IntGauge,
    /// The global connection limit in force (configured or derived).
    pub limit: IntGauge,
}

impl Metrics {
    pub fn new(registry: &Registry) -> prometheus::Result<Self> {
        let metrics = Self {
            accepted: IntCounter::new("snigate_router_connections_accepted_total", "Connections accepted.")?,
            open: IntGauge::new("snigate_router_connections_open", "Connections open, in any stage.")?,
            active: IntGaugeVec::new(
                Opts::new(
                    "snigate_router_connections_active",
                    "Connections being relayed, by route.",
                ),
                &["route"],
            )?,
            closed: IntCounterVec::new(
                Opts::new(
                    "snigate_router_connections_closed_total",
                    "Connections ended, by route and outcome.",
                ),
                &["route", "outcome"],
            )?,
            bytes: IntCounterVec::new(
                Opts::new(
                    "snigate_router_bytes_total",
                    "Bytes relayed, by route and direction (in: client to backend, out: backend to client).",
                ),
                &["route", "direction"],
            )?,
            hello_seconds: Histogram::with_opts(
                HistogramOpts::new(
                    "snigate_router_hello_duration_seconds",
                    "Time from accept to a complete ClientHello.",
                )
                .buckets(STAGE_BUCKETS.to_vec()),
            )?,
            connect_seconds: HistogramVec::new(
                HistogramOpts::new(
                    "snigate_router_backend_connect_duration_seconds",
                    "Time to connect to a backend (failover and DNS included), by route.",
                )
                .buckets(STAGE_BUCKETS.to_vec()),
                &["route"],
            )?,
            routing_failures: IntCounterVec::new(
                Opts::new(
                    "snigate_router_routing_failures_total",
                    "Connections not relayed to a backend, by reason.",
                ),
                &["reason"],
            )?,
            limit_refusals: IntCounterVec::new(
                Opts::new(
                    "snigate_router_limit_refusals_total",
                    "Connections closed because a connection limit was reached, by limit and route.",
                ),
                &["limit", "route"],
            )?,
            denials: IntCounterVec::new(
                Opts::new(
                    "snigate_router_access_denials_total",
                    "Connections refused by an allow or deny list, by route (empty: the [clients] lists).",
                ),
                &["route"],
            )?,
            reloads: IntCounterVec::new(
                Opts::new("snigate_router_reloads_total", "Configuration reloads, by result."),
                &["result"],
            )?,
            config_loaded: IntGauge::new(
                "snigate_router_config_loaded_timestamp_seconds",
                "When the configuration in use was loaded, in Unix seconds.",
            )?,
            limit: IntGauge::new(
                "snigate_router_connections_limit",
                "The most connections open at once before new ones are refused (configured or derived).",
            )?,
        };
        registry.register(Box::new(metrics.accepted.clone()))?;
        registry.register(Box::new(metrics.open.clone()))?;
        registry.register(Box::new(metrics.active.clone()))?;
        registry.register(Box::new(metrics.closed.clone()))?;
        registry.register(Box::new(metrics.bytes.clone()))?;
        registry.register(Box::new(metrics.hello_seconds.clone()))?;
        registry.register(Box::new(metrics.connect_seconds.clone()))?;
        registry.register(Box::new(metrics.routing_failures.clone()))?;
        registry.register(Box::new(metrics.limit_refusals.clone()))?;
        registry.register(Box::new(metrics.denials.clone()))?;
        registry.register(Box::new(metrics.reloads.clone()))?;
        registry.register(Box::new(metrics.config_loaded.clone()))?;
        registry.register(Box::new(metrics.limit.clone()))?;
        // Both results exist from the start, so a dashboard's rate() has a series.
        for result in ["success", "failure"] {
            metrics.reloads.with_label_values(&[result]);
        }
        snigate_shared::metrics::register_build_info(registry, "snigate_router", env!("CARGO_PKG_VERSION"))?;
        Ok(metrics)
    }
}
