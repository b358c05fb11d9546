//! A client's PUBLISH once it is decoded: what the broker does not offer,
//! topic aliases, the ACL, exactly-once bookkeeping for QoS 2, then the core
//! ([`crate::route`]) and its acknowledgement.

use super::*;
use crate::registry::Received;

impl<P: Protocol, S: Stream> Session<P, S> {
    /// A client's PUBLISH: what the broker does not offer, its topic alias,
    /// the ACL, then exactly-once bookkeeping for QoS 2, then the core, then
    /// its acknowledgement (PUBACK or PUBREC; MQTT requires them in the order
    /// the PUBLISHes came, [MQTT-4.6.0-2] and [MQTT-4.6.0-3], which writing
    /// each at once keeps). `Err`: the session ends, its last words set: a
    /// QoS or retain flag the broker does not offer (0x9B, 0x9A), an alias
    /// never set (0x82) or over the budget (0x97), or past the broker's
    /// Receive Maximum (§3.3.4: 0x93).
    pub(super) fn publish(&mut self, publish: Publish, props: Option<PublishProperties>) -> Result<(), End> {
        #[cfg(feature = "fault-injection")]
        crate::fault::on_publish(&publish.topic, &self.shared);
        let unsupported = self
            .shared
            .settings
            .unsupported(publish.qos(), publish.retain)
            .map(|kind| match kind {
                crate::config::Unsupported::Qos => DisconnectReasonCode::QoSNotSupported,
                crate::config::Unsupported::Retain => DisconnectReasonCode::RetainNotSupported,
            });
        if let Some(reason) = unsupported {
            // As Mosquitto: MQTT 5 DISCONNECT 0x9B or 0x9A ([MQTT-3.2.2-11],
            // [MQTT-3.2.2-14]); 3.1.1 closed.
            tracing::info!(
                client_id = self.client_id(),
                ?reason,
                "a PUBLISH asks for what the broker does not offer; closing"
            );
            self.last_words = Some(reason);
            return Err(End::NotSupported);
        }
        let mut publish = publish;
        if let Some(alias) = props.as_ref().and_then(|p| p.topic_alias) {
            publish.topic = self.alias_from_client(alias, &publish.topic)?;
        }
        let (qos, pkid) = (publish.qos(), publish.pkid());
        if !self.may_write(&publish.topic) {
            self.refuse_publish(qos, pkid);
            return Ok(());
        }
        // QoS 1 is acknowledged as it arrives, so only QoS 2 messages waiting
        // for their PUBREL count against the Receive Maximum the CONNACK
        // announced. MQTT 3.1.1 has none: the packet ids bound them.
        let quota = if self.level == 5 {
            self.shared.settings.limits.max_inflight_messages
        } else {
            usize::MAX
        };
        let received = match (qos, &self.attached) {
            (QoS::ExactlyOnce, Some(held)) => held.session.receive_qos2(pkid, quota),
            _ => Received::New,
        };
        match received {
            Received::New => self.route(publish, props),
            Received::Again => {}
            Received::OverQuota => {
                tracing::info!(
                    client_id = self.client_id(),
                    receive_maximum = quota,
                    "more QoS 2 messages waiting for PUBREL than the Receive Maximum; closing"
                );
                self.last_words = Some(DisconnectReasonCode::ReceiveMaximumExceeded);
                return Err(End::ReceiveMaximumExceeded);
            }
        }
        match qos {
            QoS::AtMostOnce => {}
            QoS::AtLeastOnce => self.push_control(Packet::PubAck(
                PubAck {
                    pkid,
                    reason: PubAckReason::Success,
                },
                None,
            )),
            QoS::ExactlyOnce => self.push_control(Packet::PubRec(
                PubRec {
                    pkid,
                    reason: PubRecReason::Success,
                },
                None,
            )),
        }
        Ok(())
    }

    /// The topic a client's PUBLISH with `alias` (validated: 1 to
    /// `max_topic_alias`) is for ([`alias`]). `Err`: an alias never set
    /// (DISCONNECT 0x82), or a topic the budget has no room for (0x97).
    fn alias_from_client(&mut self, alias: u16, topic: &Bytes) -> Result<Bytes, End> {
        let budget = &self.shared.queue_budget;
        let aliases = self
            .aliases
            .get_or_insert_with(|| Box::new(alias::Aliases::new(budget)));
        match aliases.inbound(alias, topic) {
            Ok(topic) => Ok(topic),
            Err(alias::Refused::Unknown) => {
                let invalid = crate::validate::Invalid {
                    field: crate::validate::Field::Property,
                    problem: crate::validate::Problem::UnknownTopicAlias,
                };
                self.invalid(invalid);
                self.last_words = Some(invalid.reason_code());
                Err(End::InvalidInput)
            }
            Err(alias::Refused::OverBudget) => {
                self.shared.metrics.refused.with_label_values(&["aliases"]).inc();
                tracing::warn!(
                    client_id = self.client_id(),
                    "a topic alias does not fit in the memory budget; disconnecting"
                );
                self.last_words = Some(DisconnectReasonCode::QuotaExceeded);
                Err(End::QuotaExceeded)
            }
        }
    }

    /// Into the core ([`crate::route`]), from this session.
    pub(super) fn route(&mut self, publish: Publish, props: Option<PublishProperties>) {
        let shared = self.shared.clone();
        let from = self.attached.as_ref().map(|held| &*held.session);
        crate::route::route(&shared, publish, props, from, self.client_id());
    }
}
