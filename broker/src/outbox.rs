//! One session's way out, in the broker's own core: the messages waiting for
//! it and those in flight to it (MQTT 3.1.1 §4.3 and §4.4, MQTT 5 §4.3 and
//! §4.4). It belongs to the session, not to the connection, so a persistent
//! session's queue and window wait while its client is away and are sent
//! again, in order, when it comes back.
//!
//! Pure: no socket, no clock. The session asks [`Outbox::next_to_write`] for what to
//! write while its socket takes bytes, telling it the time and what its
//! client allows ([`Peer`]), and hands it the client's acknowledgements.
//!
//! Bounds, as Mosquitto's `database.c` keeps them: at most
//! `max_inflight_messages` QoS 1 and 2 messages in flight, or the client's
//! Receive Maximum if that is lower ([MQTT-3.3.4-9]); beyond them,
//! messages wait in the queue, at most `max_queued_messages` of them (0: no
//! limit) and `max_queued_bytes` of their wire size (0: no limit). QoS 0
//! messages are queued for an away client only with `queue_qos0_messages`.
//! Each entry's own bytes are taken from the broker's shared budget (the
//! message's are, once, by [`Message`] itself).

use std::collections::{HashSet, VecDeque};
use std::num::NonZeroU32;
use std::sync::Arc;
use std::time::Instant;

use rumqttd::protocol::QoS;

use crate::budget::{Budget, Charge};
use crate::message::{Message, Version};

/// What bounds an outbox.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// QoS 1 and 2 messages in flight at once, 1 to 65,535 (validated with
    /// the configuration: a message in flight holds one of the packet ids).
    pub max_inflight: usize,
    /// Messages waiting beyond the window; 0: no limit.
    pub max_queued_messages: usize,
    /// Their wire size together; 0: no limit.
    pub max_queued_bytes: usize,
    /// Whether QoS 0 messages wait for an away client.
    pub queue_qos0_offline: bool,
}

/// One message for this session: the QoS and retain flag of its copy, and
/// the identifier of the subscription it matched (MQTT 5).
#[derive(Debug, Clone)]
pub struct Delivery {
    pub message: Arc<Message>,
    pub qos: QoS,
    pub retain: bool,
    pub subscription_id: Option<NonZeroU32>,
}

/// Why a delivery was not queued: the label of `snigate_broker_dropped_total`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refused {
    /// `max_queued_messages` or `max_queued_bytes`.
    QueueFull,
    /// The broker's shared budget.
    MemoryBudget,
    /// A QoS 0 message for an away client, without `queue_qos0_messages`.
    Away,
    /// Its Message Expiry Interval ran out before it was sent
    /// ([MQTT-3.3.2-5]).
    Expired,
    /// Larger than the client's Maximum Packet Size: a server drops it
    /// rather than send it ([MQTT-3.1.2-25]).
    TooLarge,
}

impl Refused {
    pub fn label(self) -> &'static str {
        match self {
            Self::QueueFull => "queue_full",
            Self::MemoryBudget => "memory_budget",
            Self::Away => "client_away",
            Self::Expired => "expired",
            Self::TooLarge => "packet_too_large",
        }
    }
}

/// The client on the connection, as [`Outbox::next_to_write`] needs it:
/// asked at each write, so a session resumed by a client with other limits
/// is held to its new ones.
#[derive(Debug, Clone)]
pub struct Peer {
    /// Its Receive Maximum (MQTT 5 §3.1.2.11.3; 65,535 when it sent none,
    /// and for MQTT 3.1.1).
    pub receive_maximum: u16,
    /// Its Maximum Packet Size in bytes (MQTT 5 §3.1.2.11.4; `usize::MAX`
    /// when it sent none).
    pub max_packet_size: usize,
    pub version: Version,
    /// The time, read when first asked: only a message that expires needs
    /// it, and most never do.
    now: std::cell::OnceCell<Instant>,
}

impl Peer {
    /// A client with these limits, asked now (the clock is read when first
    /// needed).
    pub fn new(receive_maximum: u16, max_packet_size: usize, version: Version) -> Self {
        Self {
            receive_maximum,
            max_packet_size,
            version,
            now: std::cell::OnceCell::new(),
        }
    }

    /// A client that sent no limits, asked at `now`.
    pub fn unbounded(version: Version, now: Instant) -> Self {
        let peer = Self::new(u16::MAX, usize::MAX, version);
        let _ = peer.now.set(now);
        peer
    }

    /// The time of this write.
    pub fn now(&self) -> Instant {
        *self.now.get_or_init(Instant::now)
    }

    /// The time for a copy of `message`: read only when it expires.
    pub fn now_for(&self, message: &Message) -> Option<Instant> {
        message.expires().then(|| self.now())
    }

    /// Why `delivery` cannot be sent to this client now, if it cannot.
    fn refuses(&self, delivery: &Delivery) -> Option<Refused> {
        let message = &delivery.message;
        if message.expires() && message.expired(self.now()) {
            return Some(Refused::Expired);
        }
        // `wire_size` is an upper bound: most copies need no exact count.
        let large = message.wire_size() > self.max_packet_size
            && message.packet_size(
                self.version,
                delivery.qos,
                delivery.subscription_id,
                self.now_for(message),
            ) > self.max_packet_size;
        large.then_some(Refused::TooLarge)
    }
}

/// What to write next.
#[derive(Debug, Clone)]
pub enum Outgoing {
    /// A PUBLISH: the delivery with its packet id (0 for QoS 0) and DUP flag.
    Publish { delivery: Delivery, pkid: u16, dup: bool },
    /// A PUBREL, sent again after a reconnect ([MQTT-4.4.0-1]).
    PubRel(u16),
    /// A message let go unsent, at the QoS of its copy, for the drop
    /// counter. `release`: a QoS 2 message that was in flight when its
    /// client left, whose packet id the client may hold (it may have sent a
    /// PUBREC the broker never saw); a PUBREL frees it on both sides before
    /// the id is used again.
    Dropped {
        qos: QoS,
        reason: Refused,
        release: Option<u16>,
    },
}

/// An acknowledgement that names no message in flight, or the wrong kind of
/// one (a PUBACK for a QoS 2 message).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct UnknownPacketId(pub u16);

#[derive(Debug)]
enum Stage {
    /// Sent; its PUBACK (QoS 1) or PUBREC (QoS 2) is due.
    Sent(Delivery),
    /// QoS 2, PUBREC received and PUBREL sent; its PUBCOMP is due. The
    /// message itself is let go: it will never be sent again.
    Released,
}

/// Bytes an entry costs beyond its message (which it shares).
const ENTRY_BYTES: usize = std::mem::size_of::<(u16, Stage)>() + std::mem::size_of::<u16>();

/// See the module's documentation.
#[derive(Debug)]
pub struct Outbox {
    /// Shared by every outbox: the broker's settings.
    limits: Arc<Limits>,
    queue: VecDeque<Delivery>,
    /// Wire sizes of what is in `queue`, for `max_queued_bytes`.
    queued_bytes: usize,
    /// In the order sent. Acknowledgements come mostly in that order, so a
    /// search from the front finds them at once.
    inflight: VecDeque<(u16, Stage)>,
    /// Packet ids in flight, so that a new one is found without a scan.
    /// Made with the first message in flight: most outboxes of idle or QoS
    /// 0 clients never need one.
    // Boxed: 8 bytes in every session where the empty set is 48.
    #[allow(clippy::box_collection)]
    ids: Option<Box<HashSet<u16>>>,
    last_pkid: u16,
    /// How many of `inflight` are still to be sent again after a reconnect.
    resend: usize,
    /// The entries' bytes in the shared budget.
    charge: Charge,
}

impl Outbox {
    pub fn new(limits: Arc<Limits>, budget: &Arc<Budget>) -> Self {
        Self {
            limits,
            queue: VecDeque::new(),
            queued_bytes: 0,
            inflight: VecDeque::new(),
            ids: None,
            last_pkid: 0,
            resend: 0,
            charge: Charge::empty(budget),
        }
    }

    /// Queue `delivery`, within the bounds. `online`: whether the client is
    /// connected (QoS 0 waits for an away client only with
    /// `queue_qos0_messages`).
    pub fn push(&mut self, delivery: Delivery, online: bool) -> Result<(), Refused> {
        if delivery.qos == QoS::AtMostOnce && !online && !self.limits.queue_qos0_offline {
            return Err(Refused::Away);
        }
        let size = delivery.message.wire_size();
        let limits = &self.limits;
        let full = (limits.max_queued_messages > 0 && self.queue.len() >= limits.max_queued_messages)
            || (limits.max_queued_bytes > 0 && self.queued_bytes + size > limits.max_queued_bytes);
        if full {
            return Err(Refused::QueueFull);
        }
        if !self.charge.grow(ENTRY_BYTES) {
            return Err(Refused::MemoryBudget);
        }
        self.queued_bytes += size;
        self.queue.push_back(delivery);
        Ok(())
    }

    /// What to write next to `peer`, if anything may go now: first what was
    /// in flight when the client left (a PUBLISH again with DUP set,
    /// [MQTT-3.3.1-1], with its packet id, [MQTT-4.4.0-1]; or a PUBREL), then
    /// the queue in order ([MQTT-4.6.0-6]), QoS 1 and 2 only while the window
    /// has room. A message that expired or is too large for the client is
    /// let go instead ([`Outgoing::Dropped`]), as Mosquitto lets it go.
    pub fn next_to_write(&mut self, peer: &Peer) -> Option<Outgoing> {
        if self.resend > 0 {
            return self.next_again(peer);
        }
        let front = self.queue.front()?;
        let refused = peer.refuses(front);
        let window = self.limits.max_inflight.min(usize::from(peer.receive_maximum));
        if refused.is_none() && front.qos != QoS::AtMostOnce && self.inflight.len() >= window {
            return None;
        }
        let delivery = self.queue.pop_front()?;
        self.queued_bytes -= delivery.message.wire_size();
        if let Some(reason) = refused {
            self.charge.shrink(ENTRY_BYTES);
            return Some(Outgoing::Dropped {
                qos: delivery.qos,
                reason,
                release: None,
            });
        }
        if delivery.qos == QoS::AtMostOnce {
            self.charge.shrink(ENTRY_BYTES);
            return Some(Outgoing::Publish {
                delivery,
                pkid: 0,
                dup: false,
            });
        }
        let pkid = self.new_pkid();
        self.inflight.push_back((pkid, Stage::Sent(delivery.clone())));
        Some(Outgoing::Publish {
            delivery,
            pkid,
            dup: false,
        })
    }

    /// The next of what was in flight when the client left.
    fn next_again(&mut self, peer: &Peer) -> Option<Outgoing> {
        let at = self.inflight.len().checked_sub(self.resend)?;
        self.resend -= 1;
        let (pkid, stage) = self.inflight.get(at)?;
        let pkid = *pkid;
        let Stage::Sent(delivery) = stage else {
            return Some(Outgoing::PubRel(pkid));
        };
        let Some(reason) = peer.refuses(delivery) else {
            return Some(Outgoing::Publish {
                delivery: delivery.clone(),
                pkid,
                dup: true,
            });
        };
        let qos = delivery.qos;
        let release = if qos == QoS::ExactlyOnce {
            self.inflight[at].1 = Stage::Released;
            Some(pkid)
        } else {
            self.forget(at);
            None
        };
        Some(Outgoing::Dropped { qos, reason, release })
    }

    /// A packet id no message in flight has. The window is at most 65,535, so
    /// one is always free when `next_to_write` asks.
    fn new_pkid(&mut self) -> u16 {
        loop {
            self.last_pkid = self.last_pkid.checked_add(1).unwrap_or(1);
            if self.ids.get_or_insert_default().insert(self.last_pkid) {
                return self.last_pkid;
            }
        }
    }

    fn position(&self, pkid: u16) -> Option<usize> {
        self.inflight.iter().position(|(id, _)| *id == pkid)
    }

    fn forget(&mut self, at: usize) {
        // An entry not yet sent again needs no resending now.
        if at >= self.inflight.len() - self.resend {
            self.resend -= 1;
        }
        if let Some((pkid, _)) = self.inflight.remove(at) {
            if let Some(ids) = &mut self.ids {
                ids.remove(&pkid);
            }
            self.charge.shrink(ENTRY_BYTES);
        }
    }

    /// A PUBACK: the QoS 1 message is delivered.
    pub fn puback(&mut self, pkid: u16) -> Result<(), UnknownPacketId> {
        match self.position(pkid) {
            Some(at) if matches!(&self.inflight[at].1, Stage::Sent(d) if d.qos == QoS::AtLeastOnce) => {
                self.forget(at);
                Ok(())
            }
            _ => Err(UnknownPacketId(pkid)),
        }
    }

    /// A PUBREC: the client has the QoS 2 message; the caller sends PUBREL
    /// ([MQTT-4.3.3-4]), and the message is never sent again.
    pub fn pubrec(&mut self, pkid: u16) -> Result<(), UnknownPacketId> {
        let Some(at) = self.position(pkid) else {
            return Err(UnknownPacketId(pkid));
        };
        match &self.inflight[at].1 {
            Stage::Sent(d) if d.qos == QoS::ExactlyOnce => {
                self.inflight[at].1 = Stage::Released;
                Ok(())
            }
            // A PUBREC again (the client did not see our PUBREL): PUBREL again.
            Stage::Released => Ok(()),
            Stage::Sent(_) => Err(UnknownPacketId(pkid)),
        }
    }

    /// A PUBCOMP: the QoS 2 exchange is over, its packet id free again.
    pub fn pubcomp(&mut self, pkid: u16) -> Result<(), UnknownPacketId> {
        match self.position(pkid) {
            Some(at) if matches!(self.inflight[at].1, Stage::Released) => {
                self.forget(at);
                Ok(())
            }
            _ => Err(UnknownPacketId(pkid)),
        }
    }

    /// The client is back on a session that was kept: what was in flight is
    /// sent again before anything new.
    pub fn resume(&mut self) {
        self.resend = self.inflight.len();
    }

    /// Let go of everything: a slow consumer's session ends, and its queue
    /// goes back to the budget before its last words, which may wait on a
    /// client that does not read.
    pub fn clear(&mut self) {
        self.queue.clear();
        self.queued_bytes = 0;
        self.inflight.clear();
        self.ids = None;
        self.resend = 0;
        let held = self.charge.bytes();
        self.charge.shrink(held);
    }

    /// Messages waiting and in flight.
    pub fn len(&self) -> (usize, usize) {
        (self.queue.len(), self.inflight.len())
    }

    pub fn is_empty(&self) -> bool {
        self.queue.is_empty() && self.inflight.is_empty()
    }
}

#[cfg(test)]
#[path = "outbox_tests.rs"]
mod tests;
