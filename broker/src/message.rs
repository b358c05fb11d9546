//! A message between its publisher and its subscribers, as the broker's own
//! core holds it: decoded once from the publisher's PUBLISH, shared (`Arc`,
//! its topic and payload `Bytes`) by every queue it is in, and written once
//! for each subscriber with that subscriber's header.

use std::sync::Arc;

use rumqttd::protocol::{Publish, PublishProperties, QoS};

use crate::budget::{Budget, Charge};

/// The protocol a subscriber speaks, which decides how its copy is written.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Version {
    /// MQTT 3.1.1 (and 3.1): properties are left out.
    V4,
    V5,
}

/// A published message.
#[derive(Debug)]
pub struct Message {
    /// Topic, payload, and the QoS and retain flag it was published with.
    publish: Publish,
    properties: Option<PublishProperties>,
    /// Its bytes in the broker's shared budget, given back when the last
    /// queue lets go of it; `None` for the retained store's, which counts
    /// its own.
    charge: Option<Charge>,
}

/// A message's bytes as the budget counts them, before it exists: its record
/// and what its fields point to.
pub fn size(publish: &Publish, properties: Option<&PublishProperties>) -> usize {
    let properties = properties.map_or(0, |p| {
        std::mem::size_of::<PublishProperties>()
            + p.response_topic.as_ref().map_or(0, String::len)
            + p.correlation_data.as_ref().map_or(0, |d| d.len())
            + p.content_type.as_ref().map_or(0, String::len)
            + p.user_properties
                .iter()
                .map(|(k, v)| k.len() + v.len() + std::mem::size_of::<(String, String)>())
                .sum::<usize>()
    });
    std::mem::size_of::<Message>()
        + 2 * std::mem::size_of::<usize>()
        + publish.topic.len()
        + publish.payload.len()
        + properties
}

impl Message {
    /// Hold `publish` for its subscribers, within the shared budget: `None`
    /// when its bytes do not fit.
    pub fn new(publish: Publish, properties: Option<PublishProperties>, budget: &Arc<Budget>) -> Option<Arc<Self>> {
        let charge = Charge::take(budget, size(&publish, properties.as_ref()))?;
        Some(Arc::new(Self {
            publish,
            properties,
            charge: Some(charge),
        }))
    }

    /// A message for the retained store, which bounds its own bytes.
    pub fn retained(publish: Publish, properties: Option<PublishProperties>) -> Arc<Self> {
        Arc::new(Self {
            publish,
            properties,
            charge: None,
        })
    }

    /// Its bytes, as the budget counts them.
    pub fn size(&self) -> usize {
        self.charge
            .as_ref()
            .map_or_else(|| size(&self.publish, self.properties.as_ref()), Charge::bytes)
    }

    pub fn topic(&self) -> &[u8] {
        &self.publish.topic
    }

    pub fn payload(&self) -> &[u8] {
        &self.publish.payload
    }

    /// The QoS it was published with.
    pub fn qos(&self) -> QoS {
        self.publish.qos()
    }

    /// Its retain flag as published.
    pub fn retain(&self) -> bool {
        self.publish.retain
    }

    pub fn properties(&self) -> Option<&PublishProperties> {
        self.properties.as_ref()
    }

    /// Bytes one subscriber's copy takes on the wire at most (an MQTT 5 copy
    /// with a packet id): what `max_queued_bytes` counts, as Mosquitto counts
    /// a message against each client's queue.
    pub fn wire_size(&self) -> usize {
        // Fixed header (at most 5), topic length, packet id, property length
        // (at most 4).
        5 + 2
            + self.publish.topic.len()
            + 2
            + 4
            + self.properties.as_ref().map_or(0, properties_len)
            + self.publish.payload.len()
    }

    /// Append one subscriber's copy to `out`, with its QoS, packet id (0 for
    /// QoS 0), DUP flag and retain flag. Properties are left out for
    /// MQTT 3.1.1, which has none.
    pub fn write(
        &self,
        version: Version,
        qos: QoS,
        pkid: u16,
        dup: bool,
        retain: bool,
        out: &mut bytes::BytesMut,
    ) -> Result<usize, rumqttd::protocol::Error> {
        let copy = Publish::delivery(
            self.publish.topic.clone(),
            self.publish.payload.clone(),
            qos,
            pkid,
            dup,
            retain,
        );
        match version {
            Version::V4 => rumqttd::protocol::v4::write_publish(&copy, out),
            Version::V5 => rumqttd::protocol::v5::write_publish(&copy, &self.properties, out),
        }
    }
}

/// The encoded length of a PUBLISH's properties (MQTT 5 §3.3.2.3): an
/// identifier byte each, and their values.
fn properties_len(p: &PublishProperties) -> usize {
    let string = |s: &Option<String>| s.as_ref().map_or(0, |s| 1 + 2 + s.len());
    p.payload_format_indicator.map_or(0, |_| 2)
        + p.message_expiry_interval.map_or(0, |_| 5)
        + p.topic_alias.map_or(0, |_| 3)
        + string(&p.response_topic)
        + p.correlation_data.as_ref().map_or(0, |d| 1 + 2 + d.len())
        + p.user_properties
            .iter()
            .map(|(k, v)| 1 + 2 + k.len() + 2 + v.len())
            .sum::<usize>()
        + p.subscription_identifiers.len() * 5
        + string(&p.content_type)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn budget(limit: usize) -> Arc<Budget> {
        Arc::new(Budget::new(limit, prometheus::IntGauge::new("b", "test").unwrap()))
    }

    #[test]
    fn each_copy_gets_its_own_header_and_the_same_bytes() {
        let budget = budget(1 << 20);
        let properties = PublishProperties {
            user_properties: vec![("k".into(), "v".into())],
            content_type: Some("text/plain".into()),
            ..PublishProperties::default()
        };
        let publish = Publish::new("a/b", "hello", true);
        let message = Message::new(publish, Some(properties.clone()), &budget).unwrap();
        for (version, qos, pkid, dup, retain) in [
            (Version::V4, QoS::AtMostOnce, 0, false, false),
            (Version::V4, QoS::AtLeastOnce, 9, true, true),
            (Version::V5, QoS::ExactlyOnce, 65_535, false, true),
        ] {
            let mut out = bytes::BytesMut::new();
            let written = message.write(version, qos, pkid, dup, retain, &mut out).unwrap();
            assert!(written <= message.wire_size(), "{written} > {}", message.wire_size());
            // Read back with the codec, as the client will.
            use rumqttd::protocol::Protocol;
            let packet = match version {
                Version::V4 => rumqttd::protocol::v4::V4.read_mut(&mut out, 1 << 10),
                Version::V5 => rumqttd::protocol::v5::V5.read_mut(&mut out, 1 << 10),
            }
            .unwrap();
            let rumqttd::protocol::Packet::Publish(copy, copy_properties) = packet else {
                panic!("{packet:?}")
            };
            assert_eq!(
                (copy.qos(), copy.pkid(), copy.dup(), copy.retain),
                (qos, pkid, dup, retain)
            );
            assert_eq!((&copy.topic[..], &copy.payload[..]), (&b"a/b"[..], &b"hello"[..]));
            assert_eq!(copy_properties, (version == Version::V5).then(|| properties.clone()));
        }
    }

    #[test]
    fn a_message_holds_its_bytes_in_the_budget_until_the_last_copy_goes() {
        let budget = budget(1000);
        let message = Message::new(Publish::new("t", "x", false), None, &budget).unwrap();
        let held = budget.used();
        assert!(held > 0);
        let copy = message.clone();
        drop(message);
        assert_eq!(budget.used(), held, "a copy still holds it");
        drop(copy);
        assert_eq!(budget.used(), 0);
        let large = Publish::new("t".to_owned(), "x".repeat(1000), false);
        assert!(Message::new(large, None, &budget).is_none(), "over the budget");
        assert_eq!(budget.used(), 0);
    }
}
