//! `$SYS/broker/...` topics, as Mosquitto publishes them.
//!
//! Every `sys_interval` a snapshot of Mosquitto's common `$SYS` topics is taken
//! from the broker's metrics and published on a watch channel; [`publish`]
//! puts the values that changed into the index as retained QoS 0 messages the
//! broker publishes, as Mosquitto does: a `$SYS` subscription is then an
//! ordinary one. So dashboards that subscribe to `$SYS/#` keep working.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use bytes::Bytes;
use rumqttd::protocol::{Publish, QoS};

use crate::budget::Budget;
use crate::message::Message;
use crate::metrics::Metrics;
use crate::registry::{Fanout, Registry, SessionState};

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

/// The own core: publish, retained, each value of `snapshot` that differs
/// from `previous` (Mosquitto too publishes a `$SYS` topic when its value
/// changes), to every subscription `may_read` allows. Copies go at QoS 0 with
/// the retain flag off ([MQTT-3.3.1-9]); a new subscription gets the retained
/// values with it on.
pub fn publish(
    registry: &Registry,
    budget: &Arc<Budget>,
    previous: &[(String, String)],
    snapshot: &[(String, String)],
    may_read: impl Fn(&SessionState, &[u8]) -> bool,
) -> Fanout {
    let mut all = Fanout::default();
    for (topic, value) in snapshot {
        if previous.iter().any(|(t, v)| t == topic && v == value) {
            continue;
        }
        let publish = Publish::delivery(
            Bytes::from(topic.clone()),
            Bytes::from(value.clone()),
            QoS::AtMostOnce,
            0,
            false,
            true,
        );
        registry.retain_sys(topic, publish.clone());
        let Some(message) = Message::new(publish, None, None, budget) else {
            all.dropped
                .push((crate::outbox::Refused::MemoryBudget, QoS::AtMostOnce));
            continue;
        };
        let fanout = registry.publish(&message, None, &may_read);
        all.queued[0] += fanout.queued[0];
        all.dropped.extend(fanout.dropped);
        all.withheld += fanout.withheld;
    }
    all
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::message::Version;
    use crate::outbox::{Limits, Outgoing, Peer};
    use crate::registry::{Continuity, Options, RetainHandling};

    #[test]
    fn changed_values_are_published_and_retained() {
        let budget = Arc::new(Budget::new(1 << 20, prometheus::IntGauge::new("b", "test").unwrap()));
        let limits = Limits {
            max_inflight: 20,
            max_queued_messages: 100,
            max_queued_bytes: 0,
            queue_qos0_offline: false,
        };
        let registry = Registry::new(limits, 1 << 20, budget.clone());
        let values = |uptime: &str| {
            vec![
                ("$SYS/broker/version".to_owned(), "v".to_owned()),
                ("$SYS/broker/uptime".to_owned(), uptime.to_owned()),
            ]
        };
        let everyone = |_: &SessionState, _: &[u8]| true;
        publish(&registry, &budget, &[], &values("1 seconds"), everyone);
        let clean = Continuity {
            resume: false,
            keep: false,
        };
        let claim = registry.connect("dash", None, clean, Arc::default()).unwrap();
        let qos0 = Options::at(QoS::AtMostOnce);
        registry
            .subscribe(&claim.session, "$SYS/#", qos0, RetainHandling::Send, |_| true)
            .unwrap();
        let fanout = publish(&registry, &budget, &values("1 seconds"), &values("2 seconds"), everyone);
        assert_eq!(fanout.queued, [1, 0, 0], "only the value that changed");
        let any = Peer::unbounded(Version::V5, std::time::Instant::now());
        let mut outbox = claim.session.outbox();
        let mut seen = Vec::new();
        while let Some(Outgoing::Publish { delivery, .. }) = outbox.next_to_write(&any) {
            seen.push((delivery.message.topic().to_vec(), delivery.retain));
        }
        let last = seen.pop();
        assert_eq!(last, Some((b"$SYS/broker/uptime".to_vec(), false)), "then the change");
        seen.sort();
        assert_eq!(
            seen,
            [
                (b"$SYS/broker/uptime".to_vec(), true),
                (b"$SYS/broker/version".to_vec(), true)
            ],
            "the retained values on subscribe"
        );
        // `#` alone does not reach `$` topics ([MQTT-4.7.2-1]).
        let other = registry.connect("all", None, clean, Arc::default()).unwrap();
        registry
            .subscribe(&other.session, "#", qos0, RetainHandling::Send, |_| true)
            .unwrap();
        assert!(other.session.outbox().next_to_write(&any).is_none());
    }
}
