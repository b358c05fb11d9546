//! The broker's metrics, in the component's own registry. A leaf.

use prometheus::{IntCounter, IntCounterVec, IntGauge, Opts, Registry};

#[derive(Debug, Clone)]
pub struct Metrics {
    pub connections: IntCounter,
    pub connected: IntGauge,
    pub disconnections: IntCounterVec,
    pub auth_failures: IntCounterVec,
    pub messages_received: IntCounterVec,
    pub messages_sent: IntCounter,
}

impl Metrics {
    pub fn new(registry: &Registry) -> prometheus::Result<Self> {
        let metrics = Self {
            connections: IntCounter::new("snigate_broker_connections_total", "TCP connections accepted.")?,
            connected: IntGauge::new(
                "snigate_broker_clients_connected",
                "Clients connected (CONNECT accepted).",
            )?,
            disconnections: IntCounterVec::new(
                Opts::new("snigate_broker_disconnections_total", "Connections ended, by reason."),
                &["reason"],
            )?,
            auth_failures: IntCounterVec::new(
                Opts::new("snigate_broker_auth_failures_total", "CONNECTs refused, by reason."),
                &["reason"],
            )?,
            messages_received: IntCounterVec::new(
                Opts::new(
                    "snigate_broker_messages_received_total",
                    "PUBLISH packets received from clients, by QoS.",
                ),
                &["qos"],
            )?,
            messages_sent: IntCounter::new("snigate_broker_messages_sent_total", "PUBLISH packets sent to clients.")?,
        };
        registry.register(Box::new(metrics.connections.clone()))?;
        registry.register(Box::new(metrics.connected.clone()))?;
        registry.register(Box::new(metrics.disconnections.clone()))?;
        registry.register(Box::new(metrics.auth_failures.clone()))?;
        registry.register(Box::new(metrics.messages_received.clone()))?;
        registry.register(Box::new(metrics.messages_sent.clone()))?;
        snigate_shared::metrics::register_build_info(registry, "snigate_broker", env!("CARGO_PKG_VERSION"))?;
        Ok(metrics)
    }
}
