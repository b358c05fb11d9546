//! A message between its publisher and its subscribers, as the broker's own
//! core holds it: decoded once from the publisher's PUBLISH, shared (`Arc`,
//! its topic and payload `Bytes`) by every queue it is in, and written once
//! for each subscriber with that subscriber's header.

use std::num::NonZeroU32;
use std::sync::Arc;
use std::time::{Duration, Instant};

use rumqttd::protocol::{CopyProperties, Publish, PublishProperties, QoS};

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
    /// What every MQTT 5 subscriber's copy carries as its publisher sent it
    /// (payload format, content type, response topic, correlation data, user
    /// properties: [MQTT-3.3.2-4], [MQTT-3.3.2-20], [MQTT-3.3.2-15],
    /// [MQTT-3.3.2-16], [MQTT-3.3.2-17], [MQTT-3.3.2-18]); `None` when it sent
    /// none of them. Its expiry interval, alias and subscription identifiers
    /// are not kept here: each copy gets its own.
    properties: Option<PublishProperties>,
    /// When its Message Expiry Interval runs out, counted from when the
    /// broker received it (MQTT 5 §3.3.2.3.3); `None`: it does not expire.
    expires_at: Option<Instant>,
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

/// What of a publisher's properties its message keeps, and when it expires
/// if it was received at `received` (`None`: now; the clock is read only
/// for a message that expires, not for every PUBLISH).
fn kept(
    properties: Option<PublishProperties>,
    received: Option<Instant>,
) -> (Option<PublishProperties>, Option<Instant>) {
    let Some(mut p) = properties else { return (None, None) };
    let expires_at = p
        .message_expiry_interval
        .take()
        .map(|seconds| received.unwrap_or_else(Instant::now) + Duration::from_secs(u64::from(seconds)));
    p.topic_alias = None;
    p.subscription_identifiers = Vec::new();
    let forwarded = p.payload_format_indicator.is_some()
        || p.response_topic.is_some()
        || p.correlation_data.is_some()
        || !p.user_properties.is_empty()
        || p.content_type.is_some();
    (forwarded.then_some(p), expires_at)
}

impl Message {
    /// Hold `publish`, received at `received` (`None`: now), for its
    /// subscribers, within the shared budget: `None` when its bytes do not
    /// fit.
    pub fn new(
        publish: Publish,
        properties: Option<PublishProperties>,
        received: Option<Instant>,
        budget: &Arc<Budget>,
    ) -> Option<Arc<Self>> {
        let (properties, expires_at) = kept(properties, received);
        let charge = Charge::take(budget, size(&publish, properties.as_ref()))?;
        Some(Arc::new(Self {
            publish,
            properties,
            expires_at,
            charge: Some(charge),
        }))
    }

    /// A message for the retained store, which bounds its own bytes.
    pub fn retained(publish: Publish, properties: Option<PublishProperties>, received: Option<Instant>) -> Arc<Self> {
        let (properties, expires_at) = kept(properties, received);
        Arc::new(Self {
            publish,
            properties,
            expires_at,
            charge: None,
        })
    }

    /// Whether it has a Message Expiry Interval.
    pub fn expires(&self) -> bool {
        self.expires_at.is_some()
    }

    /// Whether its expiry interval has run out at `now`: it is sent to no
    /// one after that ([MQTT-3.3.2-5]).
    pub fn expired(&self, now: Instant) -> bool {
        self.expires_at.is_some_and(|at| at <= now)
    }

    /// The expiry interval a copy sent at `now` carries: what was received
    /// less the time it waited in the broker ([MQTT-3.3.2-6]), in whole
    /// seconds rounded up, so a copy that is still valid never says 0.
    fn expiry_left(&self, now: Option<Instant>) -> Option<u32> {
        self.expires_at.map(|at| {
            let left = at.saturating_duration_since(now.unwrap_or_else(Instant::now));
            let seconds = left.as_secs() + u64::from(left.subsec_nanos() > 0);
            u32::try_from(seconds).unwrap_or(u32::MAX)
        })
    }

    /// A subscriber's copy with its header.
    fn copy(&self, qos: QoS, pkid: u16, dup: bool, retain: bool) -> Publish {
        Publish::delivery(
            self.publish.topic.clone(),
            self.publish.payload.clone(),
            qos,
            pkid,
            dup,
            retain,
        )
    }

    /// The bytes of one subscriber's copy at `qos`, written at `now`: what
    /// the client's Maximum Packet Size is held against ([MQTT-3.1.2-25]).
    pub fn packet_size(
        &self,
        version: Version,
        qos: QoS,
        subscription_id: Option<NonZeroU32>,
        now: Option<Instant>,
    ) -> usize {
        // The packet id's value does not change the size; 1 is a valid one.
        let copy = self.copy(qos, 1, false, false);
        let ids = identifiers(subscription_id);
        match version {
            Version::V4 => rumqttd::protocol::v4::publish_len(&copy),
            Version::V5 => {
                let own = self.copy_properties(ids.as_ref().map_or(&[], |ids| &ids[..]), now);
                rumqttd::protocol::v5::publish_copy_len(&copy, self.properties.as_ref(), &own)
            }
        }
    }

    fn copy_properties<'a>(&self, subscription_identifiers: &'a [usize], now: Option<Instant>) -> CopyProperties<'a> {
        CopyProperties {
            message_expiry_interval: self.expiry_left(now),
            topic_alias: None,
            subscription_identifiers,
        }
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

    /// The topic as the copies share it.
    pub fn shared_topic(&self) -> &bytes::Bytes {
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
        // (at most 4), the expiry interval (5).
        5 + 2
            + self.publish.topic.len()
            + 2
            + 4
            + self.properties.as_ref().map_or(0, properties_len)
            + self.expires_at.map_or(0, |_| 5)
            + self.publish.payload.len()
    }

    /// Append one subscriber's copy, written at `now` (`None`: read the
    /// clock if the message expires), to `out`, with its
    /// header, and for MQTT 5 the properties its publisher sent, the expiry
    /// interval left and its subscription's identifier. Properties are left
    /// out for MQTT 3.1.1, which has none.
    pub fn write(
        &self,
        version: Version,
        header: Header,
        now: Option<Instant>,
        out: &mut bytes::BytesMut,
    ) -> Result<usize, rumqttd::protocol::Error> {
        let mut copy = self.copy(header.qos, header.pkid, header.dup, header.retain);
        match version {
            Version::V4 => rumqttd::protocol::v4::write_publish(&copy, out),
            Version::V5 => {
                let ids = identifiers(header.subscription_id);
                let mut own = self.copy_properties(ids.as_ref().map_or(&[], |ids| &ids[..]), now);
                if let Some((alias, with_topic)) = header.alias {
                    own.topic_alias = Some(alias);
                    if !with_topic {
                        copy.topic = bytes::Bytes::new();
                    }
                }
                rumqttd::protocol::v5::write_publish_copy(&copy, self.properties.as_ref(), &own, out)
            }
        }
    }
}

/// What one subscriber's copy of a message has of its own.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Header {
    pub qos: QoS,
    /// 0 for QoS 0.
    pub pkid: u16,
    pub dup: bool,
    pub retain: bool,
    /// The identifier of the subscription it matched (MQTT 5).
    pub subscription_id: Option<NonZeroU32>,
    /// The topic alias toward this client (MQTT 5), and whether the topic
    /// goes with it (the alias's first use) or is left empty.
    pub alias: Option<(u16, bool)>,
}

impl Header {
    /// A copy at `qos` with packet id `pkid`, nothing else set.
    pub fn new(qos: QoS, pkid: u16) -> Self {
        Self {
            qos,
            pkid,
            dup: false,
            retain: false,
            subscription_id: None,
            alias: None,
        }
    }
}

/// A copy's subscription identifiers, as the codec takes them (a slice of
/// this): at most one, since a session gets a copy for each subscription a
/// message matches.
fn identifiers(id: Option<NonZeroU32>) -> Option<[usize; 1]> {
    id.map(|id| [id.get() as usize])
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
        let now = Instant::now();
        let message = Message::new(publish, Some(properties.clone()), Some(now), &budget).unwrap();
        for (version, qos, pkid, dup, retain) in [
            (Version::V4, QoS::AtMostOnce, 0, false, false),
            (Version::V4, QoS::AtLeastOnce, 9, true, true),
            (Version::V5, QoS::ExactlyOnce, 65_535, false, true),
        ] {
            let mut out = bytes::BytesMut::new();
            let header = Header {
                dup,
                retain,
                ..Header::new(qos, pkid)
            };
            let written = message.write(version, header, Some(now), &mut out).unwrap();
            assert!(written <= message.wire_size(), "{written} > {}", message.wire_size());
            assert_eq!(written, message.packet_size(version, qos, None, Some(now)));
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
        let message = Message::new(Publish::new("t", "x", false), None, Some(Instant::now()), &budget).unwrap();
        let held = budget.used();
        assert!(held > 0);
        let copy = message.clone();
        drop(message);
        assert_eq!(budget.used(), held, "a copy still holds it");
        drop(copy);
        assert_eq!(budget.used(), 0);
        let large = Publish::new("t".to_owned(), "x".repeat(1000), false);
        assert!(
            Message::new(large, None, Some(Instant::now()), &budget).is_none(),
            "over the budget"
        );
        assert_eq!(budget.used(), 0);
    }

    /// [MQTT-3.3.2-5], [MQTT-3.3.2-6]: a copy carries the expiry interval
    /// left, rounded up; past it the message is expired. The publisher's
    /// alias and subscription identifiers are never passed on; the
    /// subscription's identifier is ([MQTT-3.3.4-5]).
    #[test]
    fn a_copy_carries_the_expiry_interval_left_and_not_the_publishers_alias() {
        let budget = budget(1 << 20);
        let received = Instant::now();
        let properties = PublishProperties {
            message_expiry_interval: Some(10),
            topic_alias: Some(4),
            subscription_identifiers: vec![3],
            ..PublishProperties::default()
        };
        let message = Message::new(
            Publish::new("a/b", "x", false),
            Some(properties),
            Some(received),
            &budget,
        )
        .unwrap();
        assert!(
            message.properties().is_none(),
            "nothing of the publisher's is forwarded"
        );
        let later = received + Duration::from_millis(3_500);
        assert!(!message.expired(later));
        let mut out = bytes::BytesMut::new();
        let header = Header {
            subscription_id: NonZeroU32::new(300),
            ..Header::new(QoS::AtLeastOnce, 1)
        };
        let written = message.write(Version::V5, header, Some(later), &mut out).unwrap();
        assert!(written <= message.wire_size());
        assert_eq!(
            written,
            message.packet_size(Version::V5, QoS::AtLeastOnce, header.subscription_id, Some(later))
        );
        use rumqttd::protocol::Protocol;
        let Ok(rumqttd::protocol::Packet::Publish(_, Some(copy))) =
            rumqttd::protocol::v5::V5.read_mut(&mut out, 1 << 10)
        else {
            panic!("no properties")
        };
        assert_eq!(copy.message_expiry_interval, Some(7));
        assert_eq!(copy.topic_alias, None);
        assert_eq!(
            copy.subscription_identifiers,
            [300],
            "the subscription's, not the publisher's"
        );
        assert!(message.expired(received + Duration::from_secs(10)));
        let lasting = Message::new(Publish::new("a/b", "x", false), None, Some(received), &budget).unwrap();
        assert!(!lasting.expired(received + Duration::from_secs(1 << 30)));
    }
}
