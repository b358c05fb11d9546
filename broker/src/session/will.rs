//! A client's will at the session's end: published now, or handed to the
//! delayed wills ([`crate::wills`]).

use super::*;
use crate::budget::Charge;

/// A client's will as the session keeps it until its end: the message, and
/// its MQTT 5 properties as a PUBLISH's (MQTT 5 §3.1.3.2: payload format,
/// message expiry, content type, response topic, correlation data and user
/// properties go out with it, [MQTT-3.1.3-10] for the user properties).
pub(super) struct Will {
    pub(super) last: LastWill,
    pub(super) properties: Option<PublishProperties>,
    /// Its Will Delay Interval (MQTT 5 §3.1.3.2.2), when it asked for one.
    pub(super) delay: Option<Duration>,
}

impl Will {
    /// Its properties copied out of the CONNECT (its correlation data is a
    /// slice of the whole packet).
    pub(super) fn new(last: LastWill, properties: Option<LastWillProperties>) -> Self {
        let delay = properties
            .as_ref()
            .and_then(|p| p.delay_interval)
            .filter(|seconds| *seconds > 0)
            .map(|seconds| Duration::from_secs(u64::from(seconds)));
        let properties = properties.map(|p| PublishProperties {
            payload_format_indicator: p.payload_format_indicator,
            message_expiry_interval: p.message_expiry_interval,
            topic_alias: None,
            response_topic: p.response_topic,
            correlation_data: p.correlation_data.map(|d| Bytes::copy_from_slice(&d)),
            user_properties: p.user_properties,
            subscription_identifiers: Vec::new(),
            content_type: p.content_type,
        });
        Self {
            last,
            properties,
            delay,
        }
    }

    /// What it holds, as the queues' share of the budget counts it.
    pub(super) fn bytes(&self) -> usize {
        let publish = Publish::new("", "", false);
        crate::message::size(&publish, self.properties.as_ref()) + self.last.topic.len() + self.last.message.len()
    }
}

impl<P: Protocol, S: Stream> Session<P, S> {
    /// The will, at an unclean end: published now, or, when it asked for a
    /// delay and its session outlives the connection, handed to the delayed
    /// wills to go when the delay or the session runs out, whichever is
    /// first (MQTT 5 §3.1.3.2.2). A will that does not fit the budget a
    /// second time goes now.
    pub(super) fn will_at_end(&mut self, will: Will) {
        // A session that ends with the connection, or was ended by a
        // takeover that started clean, takes its will's delay with it.
        let ended = self.attached.as_ref().is_some_and(|held| held.session.is_ended());
        let lifetime = match (self.persistent && !ended, self.expiry) {
            (false, _) => Some(Duration::ZERO),
            (true, expiry) => expiry,
        };
        let Some(delay) = will.delay.map(|delay| lifetime.map_or(delay, |lasts| delay.min(lasts))) else {
            return self.publish_will(will);
        };
        if delay.is_zero() {
            return self.publish_will(will);
        }
        let Some(charge) = Charge::take(&self.shared.queue_budget, will.bytes()) else {
            return self.publish_will(will);
        };
        let Will { last, properties, .. } = will;
        let client_id = self.client_id.clone().unwrap_or_else(|| Arc::from(""));
        let delayed = crate::wills::Will {
            publish: Publish::delivery(last.topic, last.message, last.qos, 0, false, last.retain),
            properties,
            user: self.user.clone(),
            client_id,
            charge,
        };
        tracing::info!(
            client_id = self.client_id(),
            delay_s = delay.as_secs(),
            "the will waits for its delay"
        );
        self.shared.wills.delay(delayed, std::time::Instant::now() + delay);
    }

    /// The will, at an unclean end: the ACL of now, then delivered as any
    /// message, with its own QoS and retain flag ([MQTT-3.1.2-14],
    /// [MQTT-3.1.2-15]).
    pub(super) fn publish_will(&mut self, will: Will) {
        let Will {
            last: will, properties, ..
        } = will;
        if !self.may_write(&will.topic) {
            self.shared.metrics.acl_denials.with_label_values(&["will"]).inc();
            tracing::info!(
                client_id = self.client_id(),
                "the ACL refuses the will's topic; not sent"
            );
            return;
        }
        let publish = Publish::delivery(will.topic, will.message, will.qos, 0, false, will.retain);
        self.route(publish, properties);
    }
}
