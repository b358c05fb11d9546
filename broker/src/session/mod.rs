//! One client connection, CONNECT to close.
//!
//! The session reads MQTT with rumqttd's codecs (`protocol::v4` for MQTT 3.1
//! and 3.1.1, `protocol::v5` for MQTT 5, chosen from the CONNECT's protocol
//! level), answers CONNECT the way Mosquitto 2.0 does (a refused login gets
//! CONNACK 5 on 3.1.1 and 0x87 on 5, never a silent close; keepalive 0 is
//! accepted), then claims its session in the registry ([`relay`]): what the
//! client sends goes to the core at once, and what its outbox holds is
//! written as the socket takes it. When a connection ends without DISCONNECT
//! the session publishes the will.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::{Buf, Bytes, BytesMut};
use rumqttd::protocol::v4::V4;
use rumqttd::protocol::v5::V5;
use rumqttd::protocol::{
    ConnAck, ConnAckProperties, ConnectProperties, ConnectReturnCode, Disconnect, DisconnectProperties,
    DisconnectReasonCode, Error as ProtocolError, LastWill, LastWillProperties, Packet, PingResp, Protocol, PubAck,
    PubAckReason, PubComp, PubCompReason, PubRec, PubRecReason, PubRel, PubRelReason, Publish, PublishProperties, QoS,
    SubAck, Subscribe, SubscribeReasonCode, UnsubAck, UnsubAckReason, Unsubscribe,
};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::time::Instant;
use tokio_rustls::TlsAcceptor;

use crate::Shared;
use crate::auth::acl::Access;
use crate::registry::Continuity;

mod accept;
mod alias;
mod connect;
mod end;
mod publish;
mod relay;
mod subscriptions;
mod will;

pub use end::End;
use end::reason_string;
use will::Will;

use accept::Arrival;
pub use accept::{Admission, Connection, serve, serve_stream};

const CONNECT_PACKET: u8 = 1;
const CONNACK_PACKET: u8 = 2;
const PUBLISH_PACKET: u8 = 3;

/// Bytes handed to the socket in one write: messages move from the outbox into
/// the write buffer up to this, so the outbox's bounds stay meaningful.
const WRITE_CHUNK: usize = 64 << 10;
/// Past this many unwritten bytes (replies the session owes: acks, SUBACKs,
/// PINGRESPs), the session stops reading from the client until the client
/// reads: a client that sends without reading cannot make it grow. Messages
/// for it still come in, to its bounded outbox or dropped.
const WRITE_BACKLOG_LIMIT: usize = 256 << 10;
/// Bytes of a connection's buffers that its reserve covers
/// ([`crate::config::PLAIN_CONNECTION_MEMORY`]): what it reads first (a
/// CONNECT, most often smaller) and small replies. Beyond, its buffers are
/// counted in the queues' share ([`Session::account_buffers`]).
pub(crate) const BUFFER_FLOOR: usize = 256;
/// Most bytes taken from the client in one read: a buffer on the stack of the
/// read's poll ([`read_some`]).
const READ_CHUNK: usize = 16 << 10;
/// `$` filters one client may hold (`mosquitto_sub -t '$SYS/#'` needs one):
/// beyond, a subscription is refused (0x97 on MQTT 5, 0x80 on 3.1.1) and
/// counted as a `filters` limit refusal.
pub const MAX_SYS_FILTERS: usize = 64;
/// How long final words (a DISCONNECT, a refused CONNACK) may take to write.
const FINAL_WRITE_TIMEOUT: Duration = Duration::from_secs(5);

/// A client's byte stream: plain TCP or TLS over it.
pub trait Stream: AsyncRead + AsyncWrite + Unpin + Send {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send> Stream for T {}

struct Session<P, S> {
    /// Not split into halves: the relay waits on reading and writing in one
    /// poll ([`io`]), and a split is an allocation of its own.
    stream: S,
    /// `write` was written to since the last flush (TLS keeps records back
    /// until flushed).
    unflushed: bool,
    /// Who the client is, for ACL checks (set once CONNECT is accepted).
    /// Shared with its session in the registry once attached.
    user: Option<Arc<str>>,
    /// Its session's in the registry, once attached (none before: no copy
    /// of its own).
    client_id: Option<Arc<str>>,
    /// QoS 2 publishes the ACL refused: their PUBREL is answered here.
    /// Rare, and few: a list rather than a set.
    refused_qos2: Vec<u16>,
    /// The session outlives the connection (MQTT 3.1.1: clean session off;
    /// MQTT 5: a session expiry interval).
    persistent: bool,
    /// How long a persistent session outlives the connection; `None`: until
    /// a restart.
    expiry: Option<Duration>,
    read: BytesMut,
    write: BytesMut,
    /// What `read` and `write` hold (their capacity), counted in the
    /// queues' share of the budget ([`Self::account_buffers`]).
    buffers: usize,
    protocol: P,
    level: u8,
    /// The client's Receive Maximum and Maximum Packet Size (MQTT 5
    /// §3.1.2.11; the largest values when it sent none, and for 3.1.1):
    /// what its outbox may send it ([`crate::outbox::Peer`]).
    receive_maximum: u16,
    max_packet_size: u32,
    /// The client's Topic Alias Maximum: how many aliases the broker may
    /// give topics toward it (0: none; MQTT 5 §3.1.2.11.5).
    topic_alias_max: u16,
    /// The client's Request Problem Information (MQTT 5 §3.1.2.11.7; on when
    /// absent): whether the broker's DISCONNECTs carry a Reason String.
    problem_information: bool,
    /// Topic aliases both ways, made with the first ([`alias`]): most
    /// connections never use one.
    aliases: Option<Box<alias::Aliases>>,
    peer: SocketAddr,
    shared: Arc<Shared>,
    /// When CONNECT must have arrived.
    deadline: Instant,
    /// Let in only to be told the server is busy ([`Admission::Busy`]).
    busy: bool,
    /// Counted in the connected gauge.
    counted: bool,
    /// Bytes of the will, held in the shared queue budget.
    will_bytes: usize,
    /// How the session ended; `None` while it runs, and after a panic.
    finished: Option<End>,
    /// The DISCONNECT reason an MQTT 5 client is sent when the session ends
    /// on what it sent ([`Self::decode`]).
    last_words: Option<DisconnectReasonCode>,
    /// The session in the registry, once CONNECT is accepted ([`relay`]).
    attached: Option<relay::Attached>,
}

impl<P, S> Session<P, S> {
    /// The client id, once the session is attached; empty before.
    fn client_id(&self) -> &str {
        self.client_id.as_deref().unwrap_or_default()
    }
}

/// The cleanup every session gets however it ends, a panic included: its
/// client id, gauges, budget and its session in the registry (kept, to
/// expire, or ended). Only the will is the normal end's.
impl<P, S> Drop for Session<P, S> {
    fn drop(&mut self) {
        let metrics = &self.shared.metrics;
        if self.finished.is_none() && !self.shared.stop.is_cancelled() {
            metrics.session_panics.inc();
            tracing::error!(
                peer = %self.peer,
                client_id = self.client_id(),
                "the session panicked: only its connection is closed, and its state is released"
            );
        }
        self.shared.queue_budget.give_back(std::mem::take(&mut self.will_bytes));
        self.shared.queue_budget.give_back(std::mem::take(&mut self.buffers));
        if std::mem::take(&mut self.counted) {
            metrics.connected.dec();
        }
        self.leave();
    }
}

/// A client let in: what the relay and the end of the session need.
struct Connected {
    eviction: Arc<crate::Eviction>,
    /// Boxed: most clients have none, and every connection would keep room
    /// for one for its life.
    will: Option<Box<Will>>,
}

impl<P: Protocol, S: Stream> Session<P, S> {
    fn new(
        stream: S,
        read: BytesMut,
        protocol: P,
        level: u8,
        arrival: Arrival,
        shared: Arc<Shared>,
        identity: Option<String>,
    ) -> Self {
        Self {
            stream,
            unflushed: false,
            deadline: arrival.deadline,
            busy: arrival.busy,
            counted: false,
            will_bytes: 0,
            finished: None,
            last_words: None,
            attached: None,
            user: identity.map(Arc::from),
            client_id: None,
            refused_qos2: Vec::new(),
            receive_maximum: u16::MAX,
            max_packet_size: u32::MAX,
            topic_alias_max: 0,
            problem_information: true,
            aliases: None,
            persistent: false,
            expiry: None,
            read,
            buffers: 0,
            // Sized by what is written first (the CONNACK), and freed once
            // that is written (`wrote`).
            write: BytesMut::new(),
            protocol,
            level,
            peer: arrival.peer,
            shared,
        }
    }

    /// The verified client certificate's subject CN, on TLS, is in `user`
    /// until [`Self::admit`] takes it: a field the session has anyway,
    /// where an argument would keep room of its own in this future.
    // Not an `async fn`: those move their arguments into locals of their
    // future and keep both copies' storage, 728 bytes more per connection for
    // its life. An async block uses what it captures in place.
    #[allow(clippy::manual_async_fn)]
    fn run(mut self) -> impl std::future::Future<Output = (End, Option<String>)> {
        async move {
            // Boxed: the CONNECT's handling is over once the client is in, and only
            // the relay's state should stay with a connection for its life.
            let Connected { eviction, will } = match Box::pin(self.admit()).await {
                Ok(connected) => connected,
                Err(ended) => return self.ended(ended),
            };
            let end = self.relay(&eviction).await;
            self.finished = Some(end);
            // No will after DISCONNECT, a revocation or a stop (as Mosquitto).
            // On a takeover, Mosquitto's rule: the will goes when the session
            // ends with the connection (it had a clean session, or the new one
            // starts clean), not when its successor resumes it.
            let due = match end {
                End::Disconnected | End::Revoked | End::Shutdown => false,
                // MQTT 5 DISCONNECT 0x04 asks for it ([MQTT-3.14.4-3]).
                End::DisconnectedWithWill => true,
                End::TakenOver => self.attached.as_ref().is_some_and(|held| held.session.is_ended()),
                _ => true,
            };
            if due && let Some(will) = will {
                self.will_at_end(*will);
            }
            (end, Some(self.client_id().to_owned()))
        }
    }

    /// The session is over, as `ended` says (read by the drop guard).
    fn ended(&mut self, ended: (End, Option<String>)) -> (End, Option<String>) {
        self.finished = Some(ended.0);
        ended
    }

    /// Queue a packet the client is owed (an ack, a SUBACK, a PINGRESP): never
    /// dropped, and small; [`WRITE_BACKLOG_LIMIT`] bounds them together.
    fn push_control(&mut self, packet: Packet) {
        if let Err(error) = self.protocol.write(packet, &mut self.write) {
            tracing::warn!(client_id = self.client_id(), %error, "cannot encode a reply; skipped");
        }
    }

    /// `n` bytes of `write` reached the socket (0 with an empty buffer: a flush).
    fn wrote(&mut self, n: usize) {
        if n == 0 {
            self.unflushed = false;
            return;
        }
        self.write.advance(n);
        self.unflushed = true;
        self.refill();
        if self.write.is_empty() {
            // All written and nothing queued: a client between messages holds
            // no write buffer (one that a burst grew, or the CONNACK's). The
            // next message allocates one again, as big as it needs.
            self.write = BytesMut::new();
        }
        self.account_buffers();
    }

    /// Count what the read and write buffers hold in the queues' share of the
    /// budget: a connection's reserve covers it idle, and what passes
    /// through it (a packet being read, messages being written) is memory
    /// that new messages wait for when the share is spent. Forced: the bytes
    /// are in use already; each buffer is bounded (one packet being read,
    /// [`WRITE_CHUNK`] and one message, [`WRITE_BACKLOG_LIMIT`] of replies).
    fn account_buffers(&mut self) {
        // The first bytes are the connection's reserve's (a CONNECT's worth).
        let held = (self.read.capacity() + self.write.capacity()).saturating_sub(BUFFER_FLOOR);
        let budget = &self.shared.queue_budget;
        match held.cmp(&self.buffers) {
            std::cmp::Ordering::Greater => budget.force_take(held - self.buffers),
            std::cmp::Ordering::Less => budget.give_back(self.buffers - held),
            std::cmp::Ordering::Equal => return,
        }
        self.buffers = held;
    }

    /// Between packets the read buffer is freed: decoded packets copy what they
    /// keep, and `read_some` reads through the stack, so a quiet client holds
    /// no read buffer while it waits.
    fn release_read_buffer(&mut self) {
        if self.read.is_empty() {
            self.read = BytesMut::new();
        }
        self.account_buffers();
    }

    /// Whether this client may publish to `topic` ([`crate::route::may_write`]).
    fn may_write(&self, topic: &[u8]) -> bool {
        crate::route::may_write(&self.shared, self.user.as_deref(), self.client_id(), topic)
    }

    /// A PUBREL for `pkid`: whether it ends a QoS 2 flow the ACL refused.
    fn take_refused_qos2(&mut self, pkid: u16) -> bool {
        let at = self.refused_qos2.iter().position(|&p| p == pkid);
        at.map(|at| self.refused_qos2.swap_remove(at)).is_some()
    }

    /// Drop a PUBLISH the ACL refuses, acknowledging it as Mosquitto does
    /// (QoS 1 and 2 are still acknowledged; MQTT 5 carries reason 0x87).
    /// Written at once, so acknowledgements keep the order of the PUBLISHes
    /// ([MQTT-4.6.0-2]).
    fn refuse_publish(&mut self, qos: QoS, pkid: u16) {
        self.shared.metrics.acl_denials.with_label_values(&["publish"]).inc();
        self.refused(self.client_id(), "acl_publish", "a PUBLISH the ACL does not allow");
        match qos {
            QoS::AtMostOnce => {}
            QoS::AtLeastOnce => {
                let puback = PubAck {
                    pkid,
                    reason: PubAckReason::NotAuthorized,
                };
                self.push_control(Packet::PubAck(puback, None));
            }
            QoS::ExactlyOnce => {
                let pubrec = PubRec {
                    pkid,
                    reason: PubRecReason::NotAuthorized,
                };
                self.push_control(Packet::PubRec(pubrec, None));
                // An MQTT 5 client ends the flow at a failed PUBREC; a 3.1.1
                // client sends PUBREL, answered here.
                if self.level != 5 && !self.refused_qos2.contains(&pkid) {
                    self.refused_qos2.push(pkid);
                }
            }
        }
    }

    /// Ended from outside: the broker's stop (0x8B on MQTT 5), the client's
    /// silence past its keepalive (0x8D), a takeover (0x8E) or credentials a
    /// reload revoked (0x87, not authorized).
    async fn evicted(&mut self, eviction: &crate::Eviction) -> End {
        if self.shared.stop.is_cancelled() {
            return self
                .last_words(DisconnectReasonCode::ServerShuttingDown, End::Shutdown)
                .await;
        }
        if eviction.was_silent() {
            return self
                .last_words(DisconnectReasonCode::KeepAliveTimeout, End::KeepaliveTimeout)
                .await;
        }
        let revoked = eviction.revoked.load(std::sync::atomic::Ordering::Acquire);
        if self.level == 5 {
            let reason = if revoked {
                DisconnectReasonCode::NotAuthorized
            } else {
                DisconnectReasonCode::SessionTakenOver
            };
            let _ = self.send(self.disconnect(reason)).await;
        }
        if revoked { End::Revoked } else { End::TakenOver }
    }

    /// The next complete packet from the read buffer, if there is one.
    fn decode(&mut self) -> Result<Option<Packet>, End> {
        let first = self.read.first().copied();
        let before = self.read.len();
        match self
            .protocol
            .read_mut(&mut self.read, self.shared.settings.max_packet_size)
        {
            Ok(packet) => {
                // Counted from the fixed header, before validation refuses
                // anything.
                if let Some(first) = first.filter(|b| b >> 4 == PUBLISH_PACKET) {
                    let qos = (first >> 1) & 3;
                    let metrics = &self.shared.metrics;
                    metrics.messages_received.at(qos).inc();
                    metrics.bytes_received.at(qos).inc_by((before - self.read.len()) as u64);
                }
                if let Err(invalid) = crate::validate::packet(&packet, self.shared.settings.limits.max_topic_alias) {
                    self.invalid(invalid);
                    self.last_words = Some(invalid.reason_code());
                    return Err(End::InvalidInput);
                }
                Ok(Some(packet))
            }
            Err(ProtocolError::InsufficientBytes(_)) => Ok(None),
            Err(e) => {
                tracing::info!(peer = %self.peer, error = %e, "malformed or oversized packet; closing");
                self.last_words = Some(match e {
                    ProtocolError::PayloadSizeLimitExceeded(_) => DisconnectReasonCode::PacketTooLarge,
                    _ => DisconnectReasonCode::MalformedPacket,
                });
                Err(End::ProtocolError)
            }
        }
    }

    /// Count and log a packet [`crate::validate`] refused.
    fn invalid(&self, invalid: crate::validate::Invalid) {
        self.shared
            .metrics
            .invalid_input
            .with_label_values(&[invalid.field.label(), invalid.problem.label()])
            .inc();
        tracing::info!(peer = %self.peer, client_id = self.client_id(), %invalid, "invalid input; closing");
        self.refused(self.client_id(), invalid.problem.label(), &invalid.to_string());
    }

    /// Note a refusal for the status page (its counter is the caller's).
    fn refused(&self, client_id: &str, reason: &'static str, detail: &str) {
        let client_id = (!client_id.is_empty()).then_some(client_id);
        self.shared.refusals.record(snigate_shared::status::Refusal::new(
            self.peer, client_id, reason, detail,
        ));
    }

    /// See [`refusal`].
    fn refusal(&self, reason: SubscribeReasonCode, asked: QoS) -> SubscribeReasonCode {
        refusal(self.level, reason, asked)
    }

    /// End the session as `end` says, an MQTT 5 client told why first.
    async fn last_words(&mut self, reason_code: DisconnectReasonCode, end: End) -> End {
        if self.level == 5 {
            let _ = self.send(self.disconnect(reason_code)).await;
        }
        end
    }

    /// An MQTT 5 DISCONNECT with `reason_code`, and its Reason String unless
    /// the client's CONNECT asked for none (Request Problem Information 0:
    /// a server MAY still send one on DISCONNECT, [MQTT-3.1.2-29], but a
    /// client that says it does not want them is not sent them).
    fn disconnect(&self, reason_code: DisconnectReasonCode) -> Packet {
        let properties = self.problem_information.then(|| DisconnectProperties {
            session_expiry_interval: None,
            reason_string: Some(reason_string(reason_code).to_owned()),
            user_properties: Vec::new(),
            server_reference: None,
        });
        Packet::Disconnect(Disconnect { reason_code }, properties)
    }

    /// End the session on what the client sent: an MQTT 5 client is told why
    /// (MQTT 5 §4.13), a 3.1.1 client's connection is closed.
    async fn refuse(&mut self, end: End) -> End {
        if let (5, Some(reason_code)) = (self.level, self.last_words.take()) {
            let _ = self.send(self.disconnect(reason_code)).await;
        }
        end
    }

    /// Read until one packet is complete (used for CONNECT).
    async fn next_packet(&mut self) -> Result<Packet, End> {
        loop {
            if let Some(packet) = self.decode()? {
                return Ok(packet);
            }
            match self.stream.read_buf(&mut self.read).await {
                Ok(0) => return Err(End::Closed),
                Ok(_) => self.account_buffers(),
                Err(_) => return Err(End::NetworkError),
            }
        }
    }

    /// Write `packet` after whatever is owed before it, and wait until it is
    /// written (at most [`FINAL_WRITE_TIMEOUT`]): for the CONNACK and for last
    /// words, where nothing else is going on.
    ///
    /// Not an `async fn`: the packet is encoded before the future is made,
    /// so no caller's future holds a `Packet` (hundreds of bytes) across the
    /// write; and the write is boxed, since its timer and write would
    /// otherwise be part of every connection's state for its whole life
    /// (docs/performance.md, "The broker's idle clients").
    fn send(&mut self, packet: Packet) -> impl std::future::Future<Output = std::io::Result<()>> + '_ {
        let encoded = self
            .protocol
            .write(packet, &mut self.write)
            .map(drop)
            .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidData, e.to_string()));
        async move {
            encoded?;
            Box::pin(self.write_final()).await
        }
    }

    /// Write out the whole write buffer, within [`FINAL_WRITE_TIMEOUT`].
    async fn write_final(&mut self) -> std::io::Result<()> {
        let write = async {
            self.stream.write_all(&self.write).await?;
            self.stream.flush().await
        };
        let written = tokio::time::timeout(FINAL_WRITE_TIMEOUT, write)
            .await
            .unwrap_or_else(|_| Err(std::io::ErrorKind::TimedOut.into()));
        let n = self.write.len();
        self.wrote(n);
        written
    }
}

/// What the relay's wait ended with ([`wait`]).
pub(super) enum Event {
    /// Bytes of the write buffer written, or 0 for a flush.
    Wrote(std::io::Result<usize>),
    /// Bytes read and appended to the read buffer; 0: the client closed.
    Read(std::io::Result<usize>),
    /// The session's outbox got something (or refused a message).
    Woken,
    /// The connection is to end ([`crate::Eviction`]).
    Evicted,
}

/// What the relay waits for, in one poll: its eviction; its socket, to
/// write `pending` (or flush when nothing is pending, since TLS holds
/// records back until flushed) when `write`, and to read into `buf` when
/// `read`; and its session's outbox. A `poll_fn` over references, so that
/// the relay's wait keeps no futures of its own (a read's, a write's, two
/// `Notified`s and a `select!`'s) in every connection's state.
/// `outbox_first` alternates with the caller, so that a client that keeps
/// sending does not starve what it is owed, nor the other way round.
///
/// Reads go through a buffer on the stack of the poll, at most
/// [`READ_CHUNK`] bytes, then copied into `buf`, rather than into `buf`'s
/// spare capacity (`read_buf`): that would reserve a buffer as soon as the
/// read is polled and keep it for as long as the client is quiet, for every
/// idle client. The copy is of what arrived, once.
#[allow(clippy::too_many_arguments)]
pub(super) fn wait<'a, S: AsyncRead + AsyncWrite + Unpin>(
    stream: &'a mut S,
    pending: &'a [u8],
    write: bool,
    buf: &'a mut BytesMut,
    read: bool,
    outbox: (&'a crate::registry::SessionState, u64),
    eviction: &'a crate::Eviction,
    outbox_first: bool,
) -> impl std::future::Future<Output = Event> + 'a {
    use std::task::Poll;
    std::future::poll_fn(move |cx| {
        if eviction.poll_evicted(cx).is_ready() {
            return Poll::Ready(Event::Evicted);
        }
        let (session, generation) = outbox;
        if outbox_first && session.poll_wake(generation, cx).is_ready() {
            return Poll::Ready(Event::Woken);
        }
        if write {
            let mut stream = std::pin::Pin::new(&mut *stream);
            let written = if pending.is_empty() {
                stream.as_mut().poll_flush(cx).map_ok(|()| 0)
            } else {
                stream.as_mut().poll_write(cx, pending)
            };
            if let Poll::Ready(written) = written {
                return Poll::Ready(Event::Wrote(written));
            }
        }
        if read {
            let mut chunk = [std::mem::MaybeUninit::<u8>::uninit(); READ_CHUNK];
            let mut arrived = tokio::io::ReadBuf::uninit(&mut chunk);
            if let Poll::Ready(polled) = std::pin::Pin::new(&mut *stream).poll_read(cx, &mut arrived) {
                let n = arrived.filled().len();
                buf.extend_from_slice(arrived.filled());
                return Poll::Ready(Event::Read(polled.map(|()| n)));
            }
        }
        if !outbox_first && session.poll_wake(generation, cx).is_ready() {
            return Poll::Ready(Event::Woken);
        }
        Poll::Pending
    })
}

pub(crate) fn qos_label(qos: u8) -> &'static str {
    match qos {
        0 => "0",
        1 => "1",
        _ => "2",
    }
}

/// How a SUBSCRIBE's filter that is refused is answered at MQTT `level`:
/// MQTT 5's `reason`, MQTT 3.1.1's 0x80; MQTT 3.1 has no failure code, so as
/// Mosquitto answers it, the QoS asked for, with no subscription made.
fn refusal(level: u8, reason: SubscribeReasonCode, asked: QoS) -> SubscribeReasonCode {
    match level {
        5 => reason,
        3 => SubscribeReasonCode::Success(asked),
        _ => SubscribeReasonCode::Failure,
    }
}
