//! The broker's metrics, in the component's own registry. A leaf.

use prometheus::{IntCounter, IntCounterVec, IntGauge, Opts, Registry};

#[derive(Debug, Clone)]
pub struct Metrics {
    pub connections: IntCounter,
    pub connected: IntGauge,
    pub disconnections: IntCounterVec,
    pub auth_failures: IntCounterVec,
    pub messages_received: ByQos,
    pub messages_sent: ByQos,
    pub bytes_received: ByQos,
    pub bytes_sent: ByQos,
    pub subscriptions: IntGauge,
    pub retained: IntGauge,
    pub reloads: IntCounterVec,
    pub acl_denials: IntCounterVec,
    pub dropped: IntCounterVec,
    pub refused: IntCounterVec,
    pub queued_bytes: IntGauge,
    pub retained_bytes: IntGauge,
    pub sessions_expired: IntCounter,
    pub invalid_input: IntCounterVec,
    pub session_panics: IntCounter,
    pub component_failures: IntCounterVec,
}

/// A counter by QoS, its three series made at start (so a dashboard's
/// `rate()` has one for each) and kept at hand: these count every message, and
/// a label lookup each time would cost as much as the counting.
#[derive(Debug, Clone)]
pub struct ByQos {
    pub all: IntCounterVec,
    series: [IntCounter; 3],
}

impl ByQos {
    /// The series for `qos` (0, 1 or 2).
    pub fn at(&self, qos: u8) -> &IntCounter {
        &self.series[usize::from(qos.min(2))]
    }

    /// All QoS together.
    pub fn sum(&self) -> u64 {
        self.series.iter().map(IntCounter::get).sum()
    }
}

fn by_qos(name: &str, help: &str) -> prometheus::Result<ByQos> {
    let all = IntCounterVec::new(Opts::new(name, help), &["qos"])?;
    let series = ["0", "1", "2"].map(|qos| all.with_label_values(&[qos]));
    Ok(ByQos { all, series })
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
            messages_received: by_qos(
                "snigate_broker_messages_received_total",
                "PUBLISH packets received from clients, by QoS.",
            )?,
            messages_sent: by_qos(
                "snigate_broker_messages_sent_total",
                "PUBLISH packets sent to clients, by QoS.",
            )?,
            bytes_received: by_qos(
                "snigate_broker_publish_bytes_received_total",
                "Bytes of PUBLISH packets received from clients, by QoS.",
            )?,
            bytes_sent: by_qos(
                "snigate_broker_publish_bytes_sent_total",
                "Bytes of PUBLISH packets sent to clients, by QoS.",
            )?,
            subscriptions: IntGauge::new(
                "snigate_broker_subscriptions",
                "Subscription filters of the clients connected now.",
            )?,
            retained: IntGauge::new(
                "snigate_broker_retained_messages",
                "Topics holding a retained message (set since the broker started).",
            )?,
            acl_denials: IntCounterVec::new(
                Opts::new(
                    "snigate_broker_acl_denials_total",
                    "Operations the ACL refused, by kind (publish, subscribe, deliver).",
                ),
                &["kind"],
            )?,
            reloads: IntCounterVec::new(
                Opts::new(
                    "snigate_broker_reloads_total",
                    "Reloads of the password file and TLS material, by result.",
                ),
                &["result"],
            )?,
            dropped: IntCounterVec::new(
                Opts::new(
                    "snigate_broker_messages_dropped_total",
                    "Messages not delivered to a client, by reason (queue_full: its outbound queue; \
                     memory_budget: all queues together; client_away: QoS 0 for an away client; \
                     expired: its message expiry interval ran out first; packet_too_large: over the \
                     client's Maximum Packet Size) and QoS.",
                ),
                &["reason", "qos"],
            )?,
            refused: IntCounterVec::new(
                Opts::new(
                    "snigate_broker_limit_refusals_total",
                    "What a memory limit refused, by limit: connections (CONNACK server unavailable/busy, or closed at accept), \
                     filters (a subscription), sessions (a new session: CONNACK quota exceeded/server unavailable), \
                     retained (a message kept, but not as retained).",
                ),
                &["limit"],
            )?,
            queued_bytes: IntGauge::new(
                "snigate_broker_queued_bytes",
                "Bytes taken from the queues' share of the memory budget: messages in outboxes (each once), wills, and what connections' read and write buffers hold.",
            )?,
            retained_bytes: IntGauge::new("snigate_broker_retained_bytes", "Bytes of retained messages held.")?,
            sessions_expired: IntCounter::new(
                "snigate_broker_sessions_expired_total",
                "Persistent sessions discarded because their client stayed away past their expiry.",
            )?,
            invalid_input: IntCounterVec::new(
                Opts::new(
                    "snigate_broker_invalid_input_total",
                    "Packets refused for a value MQTT does not allow (docs/broker.md, Validation), by field and problem; \
                     the connection was closed.",
                ),
                &["field", "problem"],
            )?,
            session_panics: IntCounter::new(
                "snigate_broker_session_panics_total",
                "Connections ended by a bug in their session (a panic): contained to that connection, and cleaned up.",
            )?,
            component_failures: IntCounterVec::new(
                Opts::new(
                    "snigate_broker_component_failures_total",
                    "Broker-wide tasks that ended while the broker ran, by component: the broker then fails its health \
                     checks and exits non-zero.",
                ),
                &["component"],
            )?,
        };
        registry.register(Box::new(metrics.invalid_input.clone()))?;
        registry.register(Box::new(metrics.session_panics.clone()))?;
        registry.register(Box::new(metrics.component_failures.clone()))?;
        for metric in [&metrics.queued_bytes, &metrics.retained_bytes] {
            registry.register(Box::new(metric.clone()))?;
        }
        registry.register(Box::new(metrics.dropped.clone()))?;
        registry.register(Box::new(metrics.refused.clone()))?;
        for reason in ["queue_full", "memory_budget", "expired", "packet_too_large"] {
            for qos in ["0", "1", "2"] {
                metrics.dropped.with_label_values(&[reason, qos]);
            }
        }
        for limit in ["connections", "filters", "retained", "will"] {
            metrics.refused.with_label_values(&[limit]);
        }
        registry.register(Box::new(metrics.reloads.clone()))?;
        registry.register(Box::new(metrics.sessions_expired.clone()))?;
        registry.register(Box::new(metrics.acl_denials.clone()))?;
        for result in ["success", "failure"] {
            metrics.reloads.with_label_values(&[result]);
        }
        registry.register(Box::new(metrics.connections.clone()))?;
        registry.register(Box::new(metrics.connected.clone()))?;
        registry.register(Box::new(metrics.disconnections.clone()))?;
        registry.register(Box::new(metrics.auth_failures.clone()))?;
        registry.register(Box::new(metrics.messages_received.all.clone()))?;
        registry.register(Box::new(metrics.messages_sent.all.clone()))?;
        registry.register(Box::new(metrics.bytes_received.all.clone()))?;
        registry.register(Box::new(metrics.bytes_sent.all.clone()))?;
        registry.register(Box::new(metrics.subscriptions.clone()))?;
        registry.register(Box::new(metrics.retained.clone()))?;
        snigate_shared::metrics::register_build_info(registry, "snigate_broker", env!("CARGO_PKG_VERSION"))?;
        Ok(metrics)
    }
}
