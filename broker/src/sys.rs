//! `$SYS/broker/...` topics, served by snigate (rumqttd refuses `$` filters).
//!
//! Every `sys_interval` a snapshot of Mosquitto's common `$SYS` topics is taken
//! from the broker's metrics and published on a watch channel. Sessions that
//! hold a `$` subscription deliver the matching topics from it, as retained
//! QoS 0 messages: at once when they subscribe, then at each new snapshot. So
//! dashboards that subscribe to `$SYS/#` keep working.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::metrics::Metrics;

/// One snapshot: `(topic, payload)` pairs.
pub type Snapshot = Arc<Vec<(String, String)>>;

/// Take a snapshot every `interval` until `stop`.
pub async fn run(metrics: Metrics, interval: Duration, tx: watch::Sender<Snapshot>, stop: CancellationToken) {
    let started = Instant::now();
    let mut maximum = 0;
    loop {
        let connected = metrics.connected.get();
        maximum = maximum.max(connected);
        let _ = tx.send(Arc::new(snapshot(&metrics, started.elapsed(), connected, maximum)));
        tokio::select! {
            () = stop.cancelled() => return,
            () = tokio::time::sleep(interval) => {}
        }
    }
}

fn snapshot(metrics: &Metrics, uptime: Duration, connected: i64, maximum: i64) -> Vec<(String, String)> {
    let received = metrics.messages_received.sum();
    let sent = metrics.messages_sent.sum();
    [
        (
            "version",
            format!("snigate-broker version {}", env!("CARGO_PKG_VERSION")),
        ),
        ("uptime", format!("{} seconds", uptime.as_secs())),
        ("clients/connected", connected.to_string()),
        ("clients/active", connected.to_string()),
        ("clients/maximum", maximum.to_string()),
        ("clients/total", metrics.connections.get().to_string()),
        ("messages/received", received.to_string()),
        ("messages/sent", sent.to_string()),
        ("publish/messages/received", received.to_string()),
        ("publish/messages/sent", sent.to_string()),
        ("bytes/received", metrics.bytes_received.sum().to_string()),
        ("bytes/sent", metrics.bytes_sent.sum().to_string()),
        ("subscriptions/count", metrics.subscriptions.get().to_string()),
        ("retained messages/count", metrics.retained.get().to_string()),
    ]
    .into_iter()
    .map(|(topic, value)| (format!("$SYS/broker/{topic}"), value))
    .collect()
}
