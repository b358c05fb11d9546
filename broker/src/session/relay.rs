//! The session once its CONNECT is accepted: packets go to the session
//! registry ([`crate::registry`]), and messages come from the session's
//! outbox ([`crate::outbox`]). Everything before (TLS, framing, validation,
//! login, CONNACK's answers) and the write path are `mod.rs`'s.

use crate::message::{Header, Version};
use crate::outbox::{Outgoing, Peer};
use crate::registry::{Leave, Registry, SessionState};

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
pub(super) fn reserved(filter: &str) -> bool {
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
        self.figures();
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

    /// Move what the outbox lets go now into the write buffer, up to
    /// [`WRITE_CHUNK`]: each copy written with its own header.
    pub(super) fn refill(&mut self) {
        let Some(session) = self.attached.as_ref().map(|held| held.session.clone()) else {
            return;
        };
        let peer = Peer::new(
            self.receive_maximum,
            usize::try_from(self.max_packet_size).unwrap_or(usize::MAX),
            self.version(),
        );
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
                    let now = peer.now_for(&delivery.message);
                    let written = delivery.message.write(peer.version, header, now, &mut self.write);
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
                .packet_size(
                    peer.version,
                    delivery.qos,
                    delivery.subscription_id,
                    peer.now_for(&delivery.message),
                )
                .saturating_add(3)
                > peer.max_packet_size;
        if tight && !aliases.has_outbound(topic) {
            return None;
        }
        aliases.outbound(topic, self.topic_alias_max)
    }
}

// Without the bounds: the session's drop guard calls these.
impl<P, S> Session<P, S> {
    /// The gauges the registry's figures feed.
    pub(super) fn figures(&self) {
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
        self.figures();
    }
}
