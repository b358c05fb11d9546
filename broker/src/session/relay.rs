//! The session once its CONNECT is accepted: packets go to the session
//! registry ([`crate::registry`]), and messages come from the session's
//! outbox ([`crate::outbox`]). Everything before (TLS, framing, validation,
//! login, CONNACK's answers) and the write path are `mod.rs`'s.

use crate::budget::Charge;
use crate::message::{Header, Version};
use crate::outbox::{Outgoing, Peer};
use crate::registry::{Leave, Options, Received, Registry, RetainHandling, SessionState};
use rumqttd::protocol::RetainForwardRule;
use std::num::NonZeroU32;

use super::*;

/// A connection's hold on its session in the registry.
pub(super) struct Attached {
    pub(super) session: Arc<SessionState>,
    /// Its generation in the registry: a connection taken over ends without
    /// touching the session its successor has.
    generation: u64,
}

/// A `$` filter other than a shared subscription (`$SYS/#`): an ordinary
/// subscription in the index, where the broker publishes `$SYS`
/// ([`crate::sys::publish`]), but bounded per client and granted at QoS 0,
/// as Mosquitto grants `$SYS`.
fn reserved(filter: &str) -> bool {
    filter.starts_with('$') && !filter.starts_with("$share/")
}

/// What [`Session::handle_packets`] stopped at.
enum Handled {
    /// No complete packet is left in the read buffer.
    Drained,
    /// A PUBLISH was routed.
    Published,
    /// The client sent DISCONNECT; `true`: with reason 0x04, Disconnect with
    /// Will Message.
    Disconnected(bool),
    /// The client sent what ends the session, and an MQTT 5 client is told
    /// why ([`Session::refuse`]).
    Refused(End),
    /// The client sent what ends the session without last words.
    Failed(End),
}

impl<P: Protocol, S: Stream> Session<P, S> {
    fn version(&self) -> Version {
        if self.level == 5 { Version::V5 } else { Version::V4 }
    }

    /// The CONNECT is accepted: claim the client id's session in the
    /// registry (taking it over from a connection that has it) and answer
    /// CONNACK with Session Present as the registry says.
    #[allow(clippy::too_many_arguments)]
    pub(super) async fn attach(
        &mut self,
        client_id: &str,
        registry: &Registry,
        continuity: Continuity,
        eviction: &Arc<crate::Eviction>,
        assigned: bool,
        asked_expiry: Option<u32>,
        keep_alive: u16,
        keep_alive_capped: bool,
    ) -> Result<(), End> {
        let Ok(claim) = registry.connect(client_id, self.user.clone(), continuity, eviction.clone()) else {
            // The index's share holds as many sessions as it can: answered
            // as the will's budget is (quota exceeded; 3.1.1: server
            // unavailable).
            self.shared.metrics.refused.with_label_values(&["sessions"]).inc();
            tracing::warn!(peer = %self.peer, client_id, "the sessions fill their share of the memory budget; refused");
            let full = if self.level == 5 {
                ConnectReturnCode::QuotaExceeded
            } else {
                ConnectReturnCode::ServiceUnavailable
            };
            let refusal = ConnAck {
                session_present: false,
                code: full,
            };
            let _ = self.send(Packet::ConnAck(refusal, None)).await;
            return Err(End::ServerBusy);
        };
        self.persistent = continuity.keep;
        // A will waiting for its delay is dropped when its client connects
        // again before it is due ([MQTT-3.1.3-9]), whether it takes its
        // session up or starts a new one: the client is back, as Mosquitto
        // reads it.
        if self.shared.wills.take(client_id).is_some() {
            tracing::info!(
                client_id,
                "the client is back before its will's delay; the will is not sent"
            );
        }
        // One copy of each, the session's: this connection's goes.
        self.client_id = Some(claim.session.shared_client_id());
        self.user = claim.session.shared_user();
        self.attached = Some(Attached {
            session: claim.session,
            generation: claim.generation,
        });
        let connack = ConnAck {
            // MQTT 3.1's CONNACK has no Session Present flag.
            session_present: claim.present && self.level != 3,
            code: ConnectReturnCode::Success,
        };
        let properties = (self.level == 5).then(|| {
            self.connack_properties(
                assigned.then(|| client_id.to_string()),
                asked_expiry,
                self.expiry,
                keep_alive_capped.then_some(keep_alive),
            )
        });
        if self.send(Packet::ConnAck(connack, properties)).await.is_err() {
            return Err(End::NetworkError);
        }
        self.shared.metrics.connected.inc();
        self.counted = true;
        self.figures(registry);
        tracing::info!(peer = %self.peer, client_id, user = self.user.as_deref(), mqtt = self.level, keepalive = keep_alive, present = claim.present, "client connected");
        // What was in flight when the client left goes first.
        self.refill();
        Ok(())
    }

    /// Pass packets both ways until the connection ends: what the client
    /// sends is handled at once ([`Self::on_readable`]); what its outbox
    /// gets wakes the loop and is written as the socket takes it.
    pub(super) async fn relay(&mut self, eviction: &crate::Eviction) -> End {
        // Set by `attach`, which the relay follows: never missing here.
        let Some((session, generation)) = self
            .attached
            .as_ref()
            .map(|held| (held.session.clone(), held.generation))
        else {
            return End::NetworkError;
        };
        eviction.heard();
        if !self.read.is_empty()
            && let Err(end) = self.on_readable().await
        {
            return end;
        }
        self.release_read_buffer();
        // The broker's stop reaches a connection as an eviction
        // ([`Registry::evict_all`]): one wait fewer in every connection's
        // state. One attached after that eviction sees the stop here.
        if self.shared.stop.is_cancelled() {
            return self.evicted(eviction).await;
        }
        let mut outbox_first = false;
        loop {
            let backlogged = self.write.len() >= WRITE_BACKLOG_LIMIT;
            let writing = !self.write.is_empty() || self.unflushed;
            outbox_first = !outbox_first;
            let event = wait(
                &mut self.stream,
                &self.write,
                writing,
                &mut self.read,
                !backlogged,
                (&session, generation),
                eviction,
                outbox_first,
            )
            .await;
            match event {
                Event::Wrote(written) => match written {
                    Ok(0) if !self.write.is_empty() => return End::NetworkError,
                    Ok(n) => self.wrote(n),
                    Err(_) => return End::NetworkError,
                },
                Event::Read(read) => {
                    match read {
                        // Half-closed: what the client is owed goes out
                        // first (see `relay`).
                        Ok(0) => {
                            if !self.write.is_empty() {
                                let _ = Box::pin(self.write_final()).await;
                            }
                            return End::Closed;
                        }
                        Ok(_) => eviction.heard(),
                        Err(_) => return End::NetworkError,
                    }
                    if let Err(end) = self.on_readable().await {
                        return end;
                    }
                }
                Event::Woken => {
                    let disconnect = self.shared.settings.limits.queue_full == crate::config::QueueFull::Disconnect;
                    if disconnect && session.take_overflow() {
                        return self.slow_consumer(&session).await;
                    }
                    self.refill();
                }
                Event::Evicted => return self.evicted(eviction).await,
            }
        }
    }

    /// `queue_full = "disconnect"`: the client is not keeping up. Its queue
    /// goes first; an MQTT 5 client is told why after what was written before
    /// (MQTT 5 §3.14.2.1, 0x97).
    async fn slow_consumer(&mut self, session: &SessionState) -> End {
        tracing::warn!(
            client_id = self.client_id(),
            "slow consumer: its queue is full; disconnecting"
        );
        session.outbox().clear();
        self.last_words(DisconnectReasonCode::QuotaExceeded, End::SlowConsumer)
            .await
    }

    /// Handle every complete packet in the read buffer. `Err`: the session
    /// ends.
    ///
    /// The packets are handled synchronously ([`Self::handle_packets`]): a
    /// future that held a decoded `Packet` across an await would keep room
    /// for one (hundreds of bytes) in every connection's state for its life.
    async fn on_readable(&mut self) -> Result<(), End> {
        let ended = loop {
            match self.handle_packets() {
                Handled::Drained => break None,
                // A publisher's task would otherwise route a whole burst
                // before its subscribers' tasks run: with a fast publisher on
                // loopback, readers fell behind their queue bounds and lost
                // half of it (budget.rs's floods). Every so many publishes,
                // the runtime's budget sends it to the back of the queue.
                Handled::Published => tokio::task::consume_budget().await,
                Handled::Disconnected(false) => break Some(End::Disconnected),
                Handled::Disconnected(true) => break Some(End::DisconnectedWithWill),
                Handled::Refused(end) => return Err(self.refuse(end).await),
                Handled::Failed(end) => return Err(end),
            }
        };
        self.release_read_buffer();
        // Room in the window (acknowledgements), retained messages for new
        // subscriptions: written after this read's replies.
        self.refill();
        self.account_buffers();
        match ended {
            Some(end) => Err(end),
            None => Ok(()),
        }
    }

    /// Handle complete packets from the read buffer until it has none, a
    /// PUBLISH was routed (the caller yields to the runtime's budget), or the
    /// session is to end.
    fn handle_packets(&mut self) -> Handled {
        loop {
            let packet = match self.decode() {
                Ok(Some(packet)) => packet,
                Ok(None) => return Handled::Drained,
                Err(end) => return Handled::Refused(end),
            };
            match packet {
                Packet::PingReq(_) => self.push_control(Packet::PingResp(PingResp)),
                Packet::Disconnect(disconnect, props) => {
                    if let Some(asked) = props.as_ref().and_then(|p| p.session_expiry_interval)
                        && self.expiry_on_disconnect(asked).is_err()
                    {
                        return Handled::Failed(End::ProtocolError);
                    }
                    let with_will = disconnect.reason_code == DisconnectReasonCode::DisconnectWithWillMessage;
                    return Handled::Disconnected(with_will);
                }
                Packet::Connect(..)
                | Packet::ConnAck(..)
                | Packet::SubAck(..)
                | Packet::UnsubAck(..)
                | Packet::PingResp(_) => return Handled::Failed(End::ProtocolError),
                Packet::Publish(publish, props) => {
                    if let Err(end) = self.publish(publish, props) {
                        return Handled::Refused(end);
                    }
                    return Handled::Published;
                }
                Packet::PubRel(pubrel, _) => {
                    let known = self.take_refused_qos2(pubrel.pkid)
                        || self
                            .attached
                            .as_ref()
                            .is_some_and(|held| held.session.release_qos2(pubrel.pkid));
                    let reason = if known || self.level != 5 {
                        PubCompReason::Success
                    } else {
                        PubCompReason::PacketIdentifierNotFound
                    };
                    self.push_control(Packet::PubComp(
                        PubComp {
                            pkid: pubrel.pkid,
                            reason,
                        },
                        None,
                    ));
                }
                Packet::Subscribe(subscribe, props) => self.subscribe(subscribe, props.and_then(|p| p.id)),
                Packet::Unsubscribe(unsubscribe, _) => self.unsubscribe(unsubscribe),
                Packet::PubAck(ack, _) => {
                    if let Some(held) = &self.attached {
                        // An acknowledgement for nothing in flight is ignored,
                        // as Mosquitto ignores it.
                        let _ = held.session.outbox().puback(ack.pkid);
                    }
                }
                Packet::PubRec(rec, _) => {
                    let known = self
                        .attached
                        .as_ref()
                        .is_some_and(|held| held.session.outbox().pubrec(rec.pkid).is_ok());
                    let reason = if known || self.level != 5 {
                        PubRelReason::Success
                    } else {
                        PubRelReason::PacketIdentifierNotFound
                    };
                    self.push_control(Packet::PubRel(PubRel { pkid: rec.pkid, reason }, None));
                }
                Packet::PubComp(comp, _) => {
                    if let Some(held) = &self.attached {
                        let _ = held.session.outbox().pubcomp(comp.pkid);
                    }
                }
            }
        }
    }

    /// A client's PUBLISH: the ACL, then exactly-once bookkeeping for QoS 2,
    /// then the registry, then its acknowledgement (PUBACK or PUBREC; MQTT
    /// requires them in the order the PUBLISHes came, [MQTT-4.6.0-2] and
    /// [MQTT-4.6.0-3], which writing each at once keeps). `Err`: an MQTT 5
    /// client went past the broker's Receive Maximum (§3.3.4: DISCONNECT
    /// 0x93, counted as the connection's end).
    fn publish(&mut self, publish: Publish, props: Option<PublishProperties>) -> Result<(), End> {
        #[cfg(feature = "fault-injection")]
        crate::fault::on_publish(&publish.topic, &self.shared);
        let settings = &self.shared.settings;
        let unsupported = if publish.qos() > settings.max_qos {
            Some(DisconnectReasonCode::QoSNotSupported)
        } else if publish.retain && !settings.retain_available {
            Some(DisconnectReasonCode::RetainNotSupported)
        } else {
            None
        };
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
        if !self.allowed(&publish.topic, Access::Write) {
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
    fn route(&mut self, publish: Publish, props: Option<PublishProperties>) {
        let shared = self.shared.clone();
        let from = self.attached.as_ref().map(|held| &*held.session);
        crate::route::route(&shared, publish, props, from, self.client_id());
    }

    /// Each filter is answered in the SUBACK as the ACL and the bounds say;
    /// retained messages follow the SUBACK (queued now, written after it).
    /// `id`: the MQTT 5 Subscription Identifier of all its filters
    /// (validated: not 0).
    fn subscribe(&mut self, subscribe: Subscribe, id: Option<usize>) {
        let id = id.and_then(|id| u32::try_from(id).ok()).and_then(NonZeroU32::new);
        let shared = self.shared.clone();
        let registry = &shared.registry;
        let Some(session) = self.attached.as_ref().map(|held| held.session.clone()) else {
            return;
        };
        let material = shared.material.load();
        let acl = material.auth.acl.as_ref();
        let user = self.user.clone();
        let may_read = |topic: &[u8]| {
            acl.is_none_or(|acl| {
                std::str::from_utf8(topic)
                    .is_ok_and(|topic| acl.allows(user.as_deref(), session.client_id(), topic, Access::Read))
            })
        };
        let mut return_codes = Vec::with_capacity(subscribe.filters.len());
        for filter in subscribe.filters {
            let path = filter.path;
            if acl.is_some_and(|acl| !acl.may_subscribe(self.user.as_deref(), self.client_id(), &path)) {
                shared.metrics.acl_denials.with_label_values(&["subscribe"]).inc();
                return_codes.push(self.refusal(SubscribeReasonCode::NotAuthorized, filter.qos));
                continue;
            }
            // Granted at most at `max_qos`, as Mosquitto grants it.
            let mut qos = crate::registry::lower(filter.qos, shared.settings.max_qos);
            if reserved(&path) {
                let (held, again) = session.count_subscriptions(&path, reserved);
                if held >= MAX_SYS_FILTERS && !again {
                    shared.metrics.refused.with_label_values(&["filters"]).inc();
                    return_codes.push(self.refusal(SubscribeReasonCode::QuotaExceeded, filter.qos));
                    continue;
                }
                // Granted at QoS 0, as Mosquitto grants `$SYS`.
                qos = QoS::AtMostOnce;
            }
            let options = Options {
                qos,
                no_local: filter.nolocal,
                retain_as_published: filter.preserve_retain,
                id,
            };
            let retained = match filter.retain_forward_rule {
                RetainForwardRule::OnEverySubscribe => RetainHandling::Send,
                RetainForwardRule::OnNewSubscribe => RetainHandling::SendIfNew,
                RetainForwardRule::Never => RetainHandling::Never,
            };
            let Ok(fanout) = registry.subscribe(&session, &path, options, retained, may_read) else {
                // The index holds its share of memory_limit.
                shared.metrics.refused.with_label_values(&["filters"]).inc();
                return_codes.push(self.refusal(SubscribeReasonCode::QuotaExceeded, filter.qos));
                continue;
            };
            for (refused, qos) in fanout.dropped {
                shared
                    .metrics
                    .dropped
                    .with_label_values(&[refused.label(), qos_label(qos as u8)])
                    .inc();
            }
            return_codes.push(SubscribeReasonCode::Success(qos));
        }
        self.push_control(Packet::SubAck(
            SubAck {
                pkid: subscribe.pkid,
                return_codes,
            },
            None,
        ));
        self.figures(registry);
    }

    /// Every filter is answered, subscribed or not (MQTT 5 §3.11.3).
    fn unsubscribe(&mut self, unsubscribe: Unsubscribe) {
        let shared = self.shared.clone();
        let registry = &shared.registry;
        let Some(session) = self.attached.as_ref().map(|held| held.session.clone()) else {
            return;
        };
        let reasons = unsubscribe
            .filters
            .iter()
            .map(|filter| {
                if registry.unsubscribe(&session, filter) {
                    UnsubAckReason::Success
                } else {
                    UnsubAckReason::NoSubscriptionExisted
                }
            })
            .collect();
        self.push_control(Packet::UnsubAck(
            UnsubAck {
                pkid: unsubscribe.pkid,
                reasons,
            },
            None,
        ));
        self.figures(registry);
    }

    /// Move what the outbox lets go now into the write buffer, up to
    /// [`WRITE_CHUNK`]: each copy written with its own header.
    pub(super) fn refill(&mut self) {
        let Some(session) = self.attached.as_ref().map(|held| held.session.clone()) else {
            return;
        };
        let peer = Peer {
            receive_maximum: self.receive_maximum,
            max_packet_size: usize::try_from(self.max_packet_size).unwrap_or(usize::MAX),
            version: self.version(),
            now: std::time::Instant::now(),
        };
        let mut outbox = session.outbox();
        // With the queues' share spent, one message at a time: the rest wait
        // in the outbox, counted once, rather than as copies here.
        while self.write.len() < WRITE_CHUNK && (self.write.is_empty() || !self.shared.queue_budget.is_spent()) {
            let Some(out) = outbox.next_to_write(&peer) else { break };
            match out {
                Outgoing::Publish { delivery, pkid, dup } => {
                    let header = Header {
                        qos: delivery.qos,
                        pkid,
                        dup,
                        retain: delivery.retain,
                        subscription_id: delivery.subscription_id,
                        alias: self.alias_toward_client(&delivery, &peer),
                    };
                    let written = delivery.message.write(peer.version, header, peer.now, &mut self.write);
                    match written {
                        Ok(n) => {
                            let metrics = &self.shared.metrics;
                            metrics.messages_sent.at(delivery.qos as u8).inc();
                            metrics.bytes_sent.at(delivery.qos as u8).inc_by(n as u64);
                        }
                        Err(error) => {
                            tracing::warn!(client_id = self.client_id(), %error, "cannot encode a message; skipped")
                        }
                    }
                }
                Outgoing::PubRel(pkid) => self.push_control(Packet::PubRel(
                    PubRel {
                        pkid,
                        reason: PubRelReason::Success,
                    },
                    None,
                )),
                Outgoing::Dropped { qos, reason, release } => {
                    self.shared
                        .metrics
                        .dropped
                        .with_label_values(&[reason.label(), qos_label(qos as u8)])
                        .inc();
                    if let Some(pkid) = release {
                        self.push_control(Packet::PubRel(
                            PubRel {
                                pkid,
                                reason: PubRelReason::Success,
                            },
                            None,
                        ));
                    }
                }
            }
        }
        drop(outbox);
        self.account_buffers();
    }

    /// The topic alias `delivery` goes with to an MQTT 5 client that allows
    /// aliases ([`alias`]). A first use adds 3 bytes to the copy, which the
    /// outbox held to the client's Maximum Packet Size without them: a copy
    /// too close to it goes without.
    fn alias_toward_client(&mut self, delivery: &crate::outbox::Delivery, peer: &Peer) -> Option<(u16, bool)> {
        if self.topic_alias_max == 0 || peer.version != Version::V5 {
            return None;
        }
        let topic = delivery.message.shared_topic();
        let budget = &self.shared.queue_budget;
        let aliases = self
            .aliases
            .get_or_insert_with(|| Box::new(alias::Aliases::new(budget)));
        let tight = peer.max_packet_size != usize::MAX
            && delivery
                .message
                .packet_size(peer.version, delivery.qos, delivery.subscription_id, peer.now)
                .saturating_add(3)
                > peer.max_packet_size;
        if tight && !aliases.has_outbound(topic) {
            return None;
        }
        aliases.outbound(topic, self.topic_alias_max)
    }

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
        if !self.allowed(&will.topic, Access::Write) {
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

// Without the bounds: the session's drop guard calls these.
impl<P, S> Session<P, S> {
    /// The gauges the registry's figures feed.
    fn figures(&self, _registry: &Registry) {
        crate::route::figures(&self.shared);
    }

    /// The connection is over: its session stays, expires or ends, as it
    /// asked (a drop guard calls this, however the session ended).
    pub(super) fn leave(&mut self) {
        let Some(held) = self.attached.take() else { return };
        let registry = &self.shared.registry;
        let leave = match (self.persistent, self.expiry) {
            (false, _) => Leave::End,
            (true, None) => Leave::Keep,
            (true, Some(after)) if after.is_zero() => Leave::End,
            (true, Some(after)) => Leave::KeepFor(after),
        };
        registry.disconnect(self.client_id(), held.generation, leave, std::time::Instant::now());
        self.figures(registry);
    }
}
