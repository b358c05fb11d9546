//! One client connection, CONNECT to close.
//!
//! The session reads MQTT with rumqttd's codecs (`protocol::v4` for MQTT 3.1
//! and 3.1.1, `protocol::v5` for MQTT 5, chosen from the CONNECT's protocol
//! level), answers CONNECT the way Mosquitto 2.0 does (a refused login gets
//! CONNACK 5 on 3.1.1 and 0x87 on 5, never a silent close; keepalive 0 is
//! accepted), then claims its session in the registry ([`own`]): what the
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
    ConnAck, ConnAckProperties, ConnectProperties, ConnectReturnCode, Disconnect, DisconnectReasonCode,
    Error as ProtocolError, LastWill, Packet, PingResp, Protocol, PubAck, PubAckReason, PubComp, PubCompReason, PubRec,
    PubRecReason, PubRel, PubRelReason, Publish, QoS, SubAck, Subscribe, SubscribeReasonCode, UnsubAck, UnsubAckReason,
    Unsubscribe,
};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadHalf, WriteHalf};
use tokio::net::TcpStream;
use tokio::time::Instant;
use tokio_rustls::TlsAcceptor;

use crate::Shared;
use crate::auth::acl::Access;
use crate::registry::Continuity;

mod own;

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
/// Most bytes taken from the client in one read: a buffer on the stack of the
/// read's poll ([`read_some`]).
const READ_CHUNK: usize = 16 << 10;
/// `$` filters one client may hold (`mosquitto_sub -t '$SYS/#'` needs one):
/// beyond, a subscription is refused (0x97 on MQTT 5, 0x80 on 3.1.1) and
/// counted as a `filters` limit refusal.
pub const MAX_SYS_FILTERS: usize = 64;
/// How long final words (a DISCONNECT, a refused CONNACK) may take to write.
const FINAL_WRITE_TIMEOUT: Duration = Duration::from_secs(5);

/// How a session ended, for the log and the metrics.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum End {
    /// The client sent DISCONNECT.
    Disconnected,
    /// The client closed the connection without DISCONNECT.
    Closed,
    /// Nothing from the client for 1.5 x its keepalive.
    KeepaliveTimeout,
    /// No CONNECT in time.
    ConnectTimeout,
    /// Not MQTT, a malformed packet, or one over the size limit.
    ProtocolError,
    /// The login was refused.
    NotAuthorized,
    /// The broker is stopping.
    Shutdown,
    /// The socket failed.
    NetworkError,
    /// The TLS handshake failed.
    TlsError,
    /// Another connection with the same client id took the session over.
    TakenOver,
    /// A reload removed the user or changed their password.
    Revoked,
    /// The client's queue was full with `queue_full = "disconnect"`.
    SlowConsumer,
    /// `max_connections` clients were connected already.
    ServerBusy,
    /// A PROXY protocol header was expected and not received.
    BadProxyHeader,
    /// A value MQTT does not allow ([`crate::validate`]).
    InvalidInput,
}

impl End {
    pub fn label(&self) -> &'static str {
        match self {
            End::Disconnected => "disconnect",
            End::Closed => "closed",
            End::KeepaliveTimeout => "keepalive_timeout",
            End::ConnectTimeout => "connect_timeout",
            End::ProtocolError => "protocol_error",
            End::NotAuthorized => "not_authorized",
            End::Shutdown => "shutdown",
            End::NetworkError => "network_error",
            End::TlsError => "tls_error",
            End::TakenOver => "taken_over",
            End::Revoked => "credentials_revoked",
            End::SlowConsumer => "slow_consumer",
            End::ServerBusy => "server_busy",
            End::BadProxyHeader => "bad_proxy_header",
            End::InvalidInput => "invalid_input",
        }
    }
}

/// Serve one accepted connection to its end. With `tls`, the handshake runs
/// here, in the connection's own task under the connect timeout, so a client
/// that stalls its handshake delays nobody else.
///
/// With `proxy_protocol`, the connection starts with a PROXY header (v1 or v2)
/// whose client address stands for the peer's from then on.
pub async fn serve(
    mut stream: TcpStream,
    mut peer: SocketAddr,
    shared: Arc<Shared>,
    tls: Option<TlsAcceptor>,
    proxy_protocol: bool,
    admission: Admission,
) {
    let started = Instant::now();
    // One deadline for PROXY header, handshake, protocol level and CONNECT.
    let deadline = started + shared.settings.connect_timeout;
    if proxy_protocol {
        match tokio::time::timeout_at(deadline, snigate_shared::proxy_protocol::read_header(&mut stream)).await {
            Ok(Ok(Some(client))) => peer = client,
            // A health check or LOCAL command: the proxy speaks for itself.
            Ok(Ok(None)) => {}
            Ok(Err(error)) => {
                tracing::info!(%peer, %error, "bad PROXY protocol header; closing");
                shared
                    .metrics
                    .disconnections
                    .with_label_values(&[End::BadProxyHeader.label()])
                    .inc();
                return;
            }
            Err(_) => {
                tracing::info!(%peer, "no PROXY protocol header in time; closing");
                shared
                    .metrics
                    .disconnections
                    .with_label_values(&[End::ConnectTimeout.label()])
                    .inc();
                return;
            }
        }
    }
    let busy = matches!(admission, Admission::Busy(_));
    let arrival = Arrival { peer, deadline, busy };
    let (end, client_id) = match tls {
        // Boxed: a plain and a TLS session are two futures that this one's
        // state would otherwise hold side by side.
        None => Box::pin(session(stream, arrival, shared.clone(), None)).await,
        // Boxed whole, handshake included: this task would otherwise keep the
        // TLS stream's storage (1.2 KB) for the connection's life, even after
        // moving it into the session, and every connection, plain or not,
        // would pay for it (the task's size is its largest state's).
        Some(acceptor) => Box::pin(over_tls(stream, acceptor, arrival, shared.clone())).await,
    };
    drop(admission);
    shared.metrics.disconnections.with_label_values(&[end.label()]).inc();
    tracing::info!(
        %peer,
        client_id,
        end = end.label(),
        duration_ms = u64::try_from(started.elapsed().as_millis()).unwrap_or(u64::MAX),
        "client disconnected"
    );
}

/// Serve a connection over any byte stream (no listener, no PROXY header, no
/// connection slot): how [`crate::inbound`] drives a session without sockets.
pub async fn serve_stream<S: Stream>(stream: S, peer: SocketAddr, shared: Arc<Shared>) -> End {
    let arrival = Arrival {
        peer,
        deadline: Instant::now() + shared.settings.connect_timeout,
        busy: false,
    };
    Box::pin(session(stream, arrival, shared, None)).await.0
}

/// What a socket is let in with, from accept to close.
pub enum Admission {
    /// One of the `max_connections` slots: held from accept, so a socket that
    /// never sends CONNECT (or never finishes its TLS handshake) costs one as a
    /// connected client does, and a flood of them stays within the budget.
    Slot(tokio::sync::OwnedSemaphorePermit),
    /// Every slot was taken: the socket is read up to its CONNECT only to be
    /// answered "busy". A few at a time (`crate::BUSY_ANSWERS`).
    Busy(tokio::sync::OwnedSemaphorePermit),
}

/// A socket, as the session starts on it.
struct Arrival {
    /// The client's address (from the PROXY protocol header, when there is one).
    peer: SocketAddr,
    /// When the TLS handshake and CONNECT must be done.
    deadline: Instant,
    /// Admitted only to be told the server is busy.
    busy: bool,
}

async fn session<S: Stream>(
    mut stream: S,
    arrival: Arrival,
    shared: Arc<Shared>,
    identity: Option<String>,
) -> (End, Option<String>) {
    let mut read = BytesMut::with_capacity(1024);
    let level = tokio::time::timeout_at(arrival.deadline, protocol_level(&mut stream, &mut read)).await;
    match level {
        Err(_) => (End::ConnectTimeout, None),
        Ok(Err(end)) => (end, None),
        // Boxed: the two arms' futures are not laid over each other in this
        // one's state, and each is most of a connection's memory in user space.
        Ok(Ok(5)) => Box::pin(Session::new(stream, read, V5, 5, arrival, shared).run(identity)).await,
        Ok(Ok(level)) => Box::pin(Session::new(stream, read, V4, level, arrival, shared).run(identity)).await,
    }
}

/// The TLS handshake, then the session over it.
async fn over_tls(
    stream: TcpStream,
    acceptor: TlsAcceptor,
    arrival: Arrival,
    shared: Arc<Shared>,
) -> (End, Option<String>) {
    // Boxed, as the CONNECT's handling: the handshake's state is gone once it
    // is done.
    let stream = match Box::pin(handshake(stream, acceptor, arrival.deadline)).await {
        Ok(stream) => stream,
        Err(Some(error)) => {
            tracing::info!(peer = %arrival.peer, %error, "TLS handshake failed");
            return (End::TlsError, None);
        }
        Err(None) => return (End::ConnectTimeout, None),
    };
    let identity = stream
        .get_ref()
        .1
        .peer_certificates()
        .and_then(|chain| chain.first())
        .and_then(common_name);
    session(stream, arrival, shared, identity).await
}

/// The server side of a TLS handshake, by `deadline`; `Err(None)` when it ran
/// out. The stream comes boxed: a 1.2 KB value held by this future's caller
/// would keep its storage there after being moved on, for the connection's
/// life, beside the session that owns it.
async fn handshake(
    stream: TcpStream,
    acceptor: TlsAcceptor,
    deadline: Instant,
) -> Result<Box<tokio_rustls::server::TlsStream<TcpStream>>, Option<std::io::Error>> {
    match tokio::time::timeout_at(deadline, acceptor.accept(stream)).await {
        Ok(Ok(stream)) => Ok(Box::new(stream)),
        Ok(Err(error)) => Err(Some(error)),
        Err(_) => Err(None),
    }
}

/// A client's byte stream: plain TCP or TLS over it.
pub trait Stream: AsyncRead + AsyncWrite + Unpin + Send {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send> Stream for T {}

/// Read until the CONNECT's protocol level is known: 3 (MQTT 3.1), 4 (MQTT
/// 3.1.1) or 5. A level we do not speak under MQTT's name is answered CONNACK
/// 0x01 (unacceptable protocol version, [MQTT-3.1.2-2]) before the close, as
/// Mosquitto answers it; a Mosquitto bridge (level | 0x80) then retries as a
/// plain client.
async fn protocol_level<S: Stream>(stream: &mut S, read: &mut BytesMut) -> Result<u8, End> {
    loop {
        match peek_level(read) {
            Peek::Level(level) => return Ok(level),
            Peek::More => {}
            Peek::Unsupported => {
                let _ = stream.write_all(&[CONNACK_PACKET << 4, 2, 0, 1]).await;
                let _ = stream.flush().await;
                return Err(End::ProtocolError);
            }
            Peek::NotMqtt => return Err(End::ProtocolError),
        }
        if read.len() > 64 {
            return Err(End::ProtocolError);
        }
        match stream.read_buf(read).await {
            Ok(0) => return Err(End::Closed),
            Ok(_) => {}
            Err(_) => return Err(End::NetworkError),
        }
    }
}

/// What the first bytes of a connection say.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Peek {
    /// Not enough bytes yet.
    More,
    /// A CONNECT of MQTT 3.1 (`MQIsdp`, 3), 3.1.1 (`MQTT`, 4) or 5 (`MQTT`, 5).
    Level(u8),
    /// A CONNECT under one of those names with another level.
    Unsupported,
    /// Not an MQTT CONNECT.
    NotMqtt,
}

fn peek_level(buf: &[u8]) -> Peek {
    let Some(&first) = buf.first() else { return Peek::More };
    if first >> 4 != CONNECT_PACKET {
        return Peek::NotMqtt;
    }
    // Remaining length: 1 to 4 bytes, 7 bits each.
    let mut at = 1;
    loop {
        let Some(&byte) = buf.get(at) else { return Peek::More };
        at += 1;
        if byte & 0x80 == 0 {
            break;
        }
        if at > 4 {
            return Peek::NotMqtt;
        }
    }
    // Protocol name, then the level.
    let Some(name_len) = buf.get(at..at + 2) else {
        return Peek::More;
    };
    let name_len = usize::from(u16::from_be_bytes([name_len[0], name_len[1]]));
    let Some(name) = buf.get(at + 2..at + 2 + name_len) else {
        return Peek::More;
    };
    let Some(&level) = buf.get(at + 2 + name_len) else {
        return Peek::More;
    };
    match (name, level) {
        (b"MQTT", 4 | 5) | (b"MQIsdp", 3) => Peek::Level(level),
        (b"MQTT" | b"MQIsdp", _) => Peek::Unsupported,
        _ => Peek::NotMqtt,
    }
}

struct Session<P, S> {
    reader: ReadHalf<S>,
    writer: WriteHalf<S>,
    /// `write` was written to since the last flush (TLS keeps records back
    /// until flushed).
    unflushed: bool,
    /// Replies the session owes the client for packets it answered itself.
    answer_now: Vec<Packet>,
    /// Who the client is, for ACL checks (set once CONNECT is accepted).
    user: Option<String>,
    client_id: String,
    /// QoS 2 publishes the ACL refused: their PUBREL is answered here.
    refused_qos2: std::collections::HashSet<u16>,
    /// The session outlives the connection (MQTT 3.1.1: clean session off;
    /// MQTT 5: a session expiry interval).
    persistent: bool,
    /// How long a persistent session outlives the connection; `None`: until
    /// a restart.
    expiry: Option<Duration>,
    read: BytesMut,
    write: BytesMut,
    protocol: P,
    level: u8,
    peer: SocketAddr,
    shared: Arc<Shared>,
    /// When CONNECT must have arrived.
    deadline: Instant,
    /// Let in only to be told the server is busy ([`Admission::Busy`]).
    busy: bool,
    /// This connection's claim on its client id (its generation in
    /// [`crate::Sessions`]), given up when the session is dropped.
    claim: Option<u64>,
    /// Counted in the connected gauge.
    counted: bool,
    /// Bytes of the will, held in the shared queue budget.
    will_bytes: usize,
    /// How the session ended; `None` while it runs, and after a panic.
    finished: Option<End>,
    /// The DISCONNECT reason an MQTT 5 client is sent when the session ends
    /// on what it sent ([`Self::decode`]).
    last_words: Option<DisconnectReasonCode>,
    /// The session in the registry, once CONNECT is accepted ([`own`]).
    own: Option<own::Own>,
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
                client_id = self.client_id,
                "the session panicked: only its connection is closed, and its state is released"
            );
        }
        self.shared.queue_budget.give_back(std::mem::take(&mut self.will_bytes));
        if std::mem::take(&mut self.counted) {
            metrics.connected.dec();
        }
        if let Some(generation) = self.claim.take() {
            self.shared.sessions.release(&self.client_id, generation);
        }
        self.leave_own();
    }
}

/// A client let in: what the relay and the end of the session need.
struct Connected {
    eviction: Arc<crate::Eviction>,
    will: Option<LastWill>,
    keep_alive: u16,
}

impl<P: Protocol, S: Stream> Session<P, S> {
    fn new(stream: S, read: BytesMut, protocol: P, level: u8, arrival: Arrival, shared: Arc<Shared>) -> Self {
        let (reader, writer) = tokio::io::split(stream);
        Self {
            reader,
            writer,
            unflushed: false,
            deadline: arrival.deadline,
            busy: arrival.busy,
            claim: None,
            counted: false,
            will_bytes: 0,
            finished: None,
            last_words: None,
            own: None,
            answer_now: Vec::new(),
            user: None,
            client_id: String::new(),
            refused_qos2: std::collections::HashSet::new(),
            persistent: false,
            expiry: None,
            read,
            // Sized by what is written first (the CONNACK), and freed once
            // that is written (`wrote`).
            write: BytesMut::new(),
            protocol,
            level,
            peer: arrival.peer,
            shared,
        }
    }

    /// `identity`: the verified client certificate's subject CN, on TLS.
    // Not an `async fn`: those move their arguments into locals of their
    // future and keep both copies' storage, 728 bytes more per connection for
    // its life. An async block uses what it captures in place.
    #[allow(clippy::manual_async_fn)]
    fn run(mut self, identity: Option<String>) -> impl std::future::Future<Output = (End, Option<String>)> {
        async move {
            // Boxed: the CONNECT's handling is over once the client is in, and only
            // the relay's state should stay with a connection for its life.
            let Connected {
                eviction,
                will,
                keep_alive,
            } = match Box::pin(self.admit(identity)).await {
                Ok(connected) => connected,
                Err(ended) => return self.ended(ended),
            };
            let end = self.relay_own(keep_alive, &eviction).await;
            self.finished = Some(end);
            // No will after DISCONNECT, a revocation or a stop (as Mosquitto).
            // On a takeover, Mosquitto's rule: the will goes when the session
            // ends with the connection (it had a clean session, or the new one
            // starts clean), not when its successor resumes it.
            let due = match end {
                End::Disconnected | End::Revoked | End::Shutdown => false,
                End::TakenOver => self.own.as_ref().is_some_and(|own| own.session.is_ended()),
                _ => true,
            };
            if due && let Some(will) = will {
                self.publish_will_own(will);
            }
            (end, Some(self.client_id.clone()))
        }
    }

    /// The session is over, as `ended` says (read by the drop guard).
    fn ended(&mut self, ended: (End, Option<String>)) -> (End, Option<String>) {
        self.finished = Some(ended.0);
        ended
    }

    /// From CONNECT to CONNACK: the slot, the login, the client id, the will's
    /// budget and the session in the registry; or how the connection ended.
    async fn admit(&mut self, identity: Option<String>) -> Result<Connected, (End, Option<String>)> {
        let deadline = self.deadline;
        let connect = match Box::pin(tokio::time::timeout_at(deadline, self.next_packet())).await {
            Err(_) => return Err((End::ConnectTimeout, None)),
            Ok(Err(end)) => return Err((end, None)),
            Ok(Ok(packet)) => packet,
        };
        let Packet::Connect(connect, props, will, will_props, login) = connect else {
            return Err((End::ProtocolError, None));
        };
        // Closed without a CONNACK, as Mosquitto closes it.
        if let Err(invalid) = crate::validate::connect(
            &connect.client_id,
            props.as_ref(),
            will.as_ref(),
            will_props.as_ref(),
            login.as_ref(),
        ) {
            self.invalid(invalid);
            return Err((End::InvalidInput, None));
        }
        // Copied out: the codec's topic and message are slices of the whole
        // CONNECT (user name, password and all), which they would keep alive.
        let will = will.map(|will| LastWill {
            topic: Bytes::copy_from_slice(&will.topic),
            message: Bytes::copy_from_slice(&will.message),
            ..will
        });
        // Answered before the (expensive) login: a full broker should not
        // spend a password check on a refusal.
        if self.busy {
            self.shared.metrics.refused.with_label_values(&["connections"]).inc();
            tracing::warn!(
                peer = %self.peer,
                client_id = connect.client_id,
                max_connections = self.shared.settings.limits.max_connections,
                "connection refused: the memory budget's max_connections connections are open"
            );
            let busy = if self.level == 5 {
                ConnectReturnCode::ServerBusy
            } else {
                ConnectReturnCode::ServiceUnavailable
            };
            let _ = self.send(Packet::ConnAck(refused(busy), None)).await;
            return Err((End::ServerBusy, Some(connect.client_id)));
        };
        let login = login.as_ref().map(|l| (l.username.as_str(), l.password.as_bytes()));
        let material = self.shared.material.load_full();
        // use_identity_as_username: the certificate, verified in the handshake,
        // is the credential; the CONNECT's user name and password are ignored.
        let by_certificate = self
            .shared
            .settings
            .use_identity_as_username
            .then_some(identity)
            .flatten();
        let user = by_certificate
            .clone()
            .or_else(|| login.map(|(user, _)| user.to_owned()));
        let checked = match &by_certificate {
            Some(_) => Ok(()),
            None => {
                let owned = login.map(|(user, password)| (user.to_owned(), password.to_vec()));
                Box::pin(self.shared.check_login(material.clone(), owned)).await
            }
        };
        if let Err(refusal) = checked {
            self.shared
                .metrics
                .auth_failures
                .with_label_values(&[refusal.label()])
                .inc();
            tracing::warn!(peer = %self.peer, client_id = connect.client_id, user, reason = refusal.label(), "login refused");
            let _ = self
                .send(Packet::ConnAck(refused(ConnectReturnCode::NotAuthorized), None))
                .await;
            return Err((End::NotAuthorized, Some(connect.client_id)));
        }

        let assigned = connect.client_id.is_empty();
        let client_id = if assigned {
            if self.level == 3 || (!connect.clean_session && self.level == 4) {
                // MQTT 3.1.1 §3.1.3-8: a persistent session needs a client id;
                // MQTT 3.1 requires one always (Mosquitto answers 2 too).
                let _ = self
                    .send(Packet::ConnAck(
                        refused(ConnectReturnCode::ClientIdentifierNotValid),
                        None,
                    ))
                    .await;
                return Err((End::ProtocolError, None));
            }
            generated_client_id()
        } else {
            connect.client_id.clone()
        };

        // The will waits as a queued message does, in the same budget.
        let will_bytes = will.as_ref().map_or(0, |w| w.topic.len() + w.message.len());
        if !self.shared.queue_budget.try_take(will_bytes) {
            self.shared.metrics.refused.with_label_values(&["will"]).inc();
            tracing::warn!(peer = %self.peer, client_id, will_bytes, "the will does not fit in the memory budget; refused");
            let full = if self.level == 5 {
                ConnectReturnCode::QuotaExceeded
            } else {
                ConnectReturnCode::ServiceUnavailable
            };
            let _ = self.send(Packet::ConnAck(refused(full), None)).await;
            return Err((End::ServerBusy, Some(client_id)));
        }
        self.will_bytes = will_bytes;

        // MQTT §3.1.4-3: a second connection with this client id takes the
        // session over; the first is closed (0x8E on MQTT 5): the token tells
        // the old session that this, not a failure, is what happened.
        let tracked_login = user.clone().map(|user| {
            let entry = material.auth.passwords.as_ref().and_then(|p| p.entry_id(&user));
            (user, entry)
        });
        drop(material);
        self.user.clone_from(&user);
        self.client_id.clone_from(&client_id);
        let (generation, eviction) = self.shared.sessions.claim(&client_id, tracked_login);
        self.claim = Some(generation);

        let (continuity, expiry) = self.continuity(connect.clean_session, props.as_ref());
        self.expiry = expiry;
        let shared = self.shared.clone();
        let asked = props.as_ref().and_then(|p| p.session_expiry_interval);
        match self
            .attach_own(
                &shared.registry,
                continuity,
                &eviction,
                assigned,
                asked,
                connect.keep_alive,
            )
            .await
        {
            Ok(()) => Ok(Connected {
                eviction,
                will,
                keep_alive: connect.keep_alive,
            }),
            Err(end) => Err((end, Some(client_id))),
        }
    }

    /// Queue a packet the client is owed (an ack, a SUBACK, a PINGRESP): never
    /// dropped, and small; [`WRITE_BACKLOG_LIMIT`] bounds them together.
    fn push_control(&mut self, packet: Packet) {
        if let Err(error) = self.protocol.write(packet, &mut self.write) {
            tracing::warn!(client_id = self.client_id, %error, "cannot encode a reply; skipped");
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
    }

    /// Between packets the read buffer is freed: decoded packets copy what they
    /// keep, and `read_some` reads through the stack, so a quiet client holds
    /// no read buffer while it waits.
    fn release_read_buffer(&mut self) {
        if self.read.is_empty() {
            self.read = BytesMut::new();
        }
    }

    /// Whether this client may `access` `topic`; always, without an ACL.
    fn allowed(&self, topic: &[u8], access: Access) -> bool {
        // Whatever the ACL says, as Mosquitto (`acl__check_dollar`): `$SYS`
        // is the broker's to write, and `$share` names subscriptions only.
        if access == Access::Write && (topic.starts_with(b"$SYS") || topic.starts_with(b"$share")) {
            return false;
        }
        let material = self.shared.material.load();
        let Some(acl) = &material.auth.acl else { return true };
        let Ok(topic) = std::str::from_utf8(topic) else {
            return false;
        };
        acl.allows(self.user.as_deref(), &self.client_id, topic, access)
    }

    /// Drop a PUBLISH the ACL refuses, acknowledging it as Mosquitto does
    /// (QoS 1 and 2 are still acknowledged; MQTT 5 carries reason 0x87).
    /// Written at once, so acknowledgements keep the order of the PUBLISHes
    /// ([MQTT-4.6.0-2]).
    fn refuse_publish(&mut self, qos: QoS, pkid: u16) {
        self.shared.metrics.acl_denials.with_label_values(&["publish"]).inc();
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
                if self.level != 5 {
                    self.refused_qos2.insert(pkid);
                }
            }
        }
    }

    /// An MQTT 5 DISCONNECT's session expiry interval replaces the CONNECT's
    /// (§3.14.2.2.2): 0 ends the session with this connection. A session that
    /// was to end with the connection cannot be kept this way: a protocol
    /// error.
    fn expiry_on_disconnect(&mut self, asked: u32) -> Result<(), ()> {
        if !self.persistent {
            return if asked == 0 { Ok(()) } else { Err(()) };
        }
        let cap = self.shared.settings.persistent_client_expiration;
        self.expiry = session_lifetime(5, false, Some(asked), cap).1;
        Ok(())
    }

    /// Whether a saved session is taken up and this one kept, and for how long
    /// it outlives the connection (`None`: until a restart). MQTT 3.1.1: clean
    /// session off does both, for `persistent_client_expiration`. MQTT 5:
    /// clean start off takes one up; the session expiry interval (absent: 0,
    /// ended with the connection; 0xFFFFFFFF: never) keeps it, for at most
    /// `persistent_client_expiration`.
    fn continuity(&self, clean: bool, props: Option<&ConnectProperties>) -> (Continuity, Option<Duration>) {
        let asked = props.and_then(|p| p.session_expiry_interval);
        session_lifetime(
            self.level,
            clean,
            asked,
            self.shared.settings.persistent_client_expiration,
        )
    }

    /// What an MQTT 5 CONNACK tells the client about this server (§3.2.2.3):
    /// the id it was given when it sent none (a MUST), the largest packet it
    /// may send, the session expiry when the server's cap shortened the one
    /// asked for, and that subscription identifiers are not supported (the
    /// broker does not echo them). Topic aliases are left at the default 0:
    /// none.
    fn connack_properties(
        &self,
        assigned_client_identifier: Option<String>,
        asked_expiry: Option<u32>,
        expiry: Option<Duration>,
    ) -> ConnAckProperties {
        let granted = expiry.map_or(u32::MAX, |e| u32::try_from(e.as_secs()).unwrap_or(u32::MAX));
        ConnAckProperties {
            assigned_client_identifier,
            max_packet_size: Some(u32::try_from(self.shared.settings.max_packet_size).unwrap_or(u32::MAX)),
            session_expiry_interval: (granted != asked_expiry.unwrap_or(0)).then_some(granted),
            subscription_identifiers_available: Some(0),
            ..ConnAckProperties::default()
        }
    }

    /// Ended from outside: a takeover (0x8E on MQTT 5) or credentials a reload
    /// revoked (0x87, not authorized).
    async fn evicted(&mut self, eviction: &crate::Eviction) -> End {
        let revoked = eviction.revoked.load(std::sync::atomic::Ordering::Acquire);
        if self.level == 5 {
            let reason = if revoked {
                DisconnectReasonCode::NotAuthorized
            } else {
                DisconnectReasonCode::SessionTakenOver
            };
            let _ = self
                .send(Packet::Disconnect(Disconnect { reason_code: reason }, None))
                .await;
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
                if let Err(invalid) = crate::validate::packet(&packet) {
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
        tracing::info!(peer = %self.peer, client_id = self.client_id, %invalid, "invalid input; closing");
    }

    /// See [`refusal`].
    fn refusal(&self, reason: SubscribeReasonCode, asked: QoS) -> SubscribeReasonCode {
        refusal(self.level, reason, asked)
    }

    /// End the session as `end` says, an MQTT 5 client told why first.
    async fn last_words(&mut self, reason_code: DisconnectReasonCode, end: End) -> End {
        if self.level == 5 {
            let _ = self.send(Packet::Disconnect(Disconnect { reason_code }, None)).await;
        }
        end
    }

    /// End the session on what the client sent: an MQTT 5 client is told why
    /// (MQTT 5 §4.13), a 3.1.1 client's connection is closed.
    async fn refuse(&mut self, end: End) -> End {
        if let (5, Some(reason_code)) = (self.level, self.last_words.take()) {
            let _ = self.send(Packet::Disconnect(Disconnect { reason_code }, None)).await;
        }
        end
    }

    /// Read until one packet is complete (used for CONNECT).
    async fn next_packet(&mut self) -> Result<Packet, End> {
        loop {
            if let Some(packet) = self.decode()? {
                return Ok(packet);
            }
            match self.reader.read_buf(&mut self.read).await {
                Ok(0) => return Err(End::Closed),
                Ok(_) => {}
                Err(_) => return Err(End::NetworkError),
            }
        }
    }

    /// Write `packet` after whatever is owed before it, and wait until it is
    /// written (at most [`FINAL_WRITE_TIMEOUT`]): for the CONNACK and for last
    /// words, where nothing else is going on.
    async fn send(&mut self, packet: Packet) -> std::io::Result<()> {
        // Boxed: a send is rare (a CONNACK, last words), and its timer and
        // write would otherwise be part of every connection's state for its
        // whole life (docs/performance.md, "The broker's idle clients").
        Box::pin(self.write_out(packet)).await
    }

    async fn write_out(&mut self, packet: Packet) -> std::io::Result<()> {
        self.protocol
            .write(packet, &mut self.write)
            .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidData, e.to_string()))?;
        self.write_final().await
    }

    /// Write out the whole write buffer, within [`FINAL_WRITE_TIMEOUT`].
    async fn write_final(&mut self) -> std::io::Result<()> {
        let write = async {
            self.writer.write_all(&self.write).await?;
            self.writer.flush().await
        };
        let written = tokio::time::timeout(FINAL_WRITE_TIMEOUT, write)
            .await
            .unwrap_or_else(|_| Err(std::io::ErrorKind::TimedOut.into()));
        let n = self.write.len();
        self.wrote(n);
        written
    }
}

/// Read what the client sent, at most [`READ_CHUNK`] bytes, appended to `buf`.
///
/// Read through a buffer on the stack of the poll, then copied, rather than
/// into `buf`'s spare capacity (`read_buf`): that would reserve a buffer as
/// soon as the read is polled and keep it for as long as the client is quiet,
/// for every idle client. The copy is of what arrived, once.
fn read_some<'a, R: AsyncRead + Unpin>(
    reader: &'a mut R,
    buf: &'a mut BytesMut,
) -> impl std::future::Future<Output = std::io::Result<usize>> + 'a {
    std::future::poll_fn(move |cx| {
        let mut chunk = [std::mem::MaybeUninit::<u8>::uninit(); READ_CHUNK];
        let mut arrived = tokio::io::ReadBuf::uninit(&mut chunk);
        std::task::ready!(std::pin::Pin::new(&mut *reader).poll_read(cx, &mut arrived))?;
        buf.extend_from_slice(arrived.filled());
        std::task::Poll::Ready(Ok(arrived.filled().len()))
    })
}

/// Write what the socket takes of `pending`, or flush when nothing is pending
/// (Ok(0)): TLS holds records back until flushed.
async fn write_some<W: AsyncWrite + Unpin>(writer: &mut W, pending: &[u8]) -> std::io::Result<usize> {
    if pending.is_empty() {
        writer.flush().await.map(|()| 0)
    } else {
        writer.write(pending).await
    }
}

fn refused(code: ConnectReturnCode) -> ConnAck {
    ConnAck {
        session_present: false,
        code,
    }
}

fn qos_label(qos: u8) -> &'static str {
    match qos {
        0 => "0",
        1 => "1",
        _ => "2",
    }
}

/// [`Session::continuity`] from the CONNECT's level, clean flag and session
/// expiry interval, with `persistent_client_expiration` as `cap`.
fn session_lifetime(
    level: u8,
    clean: bool,
    asked: Option<u32>,
    cap: Option<Duration>,
) -> (Continuity, Option<Duration>) {
    if level != 5 {
        let continuity = Continuity {
            resume: !clean,
            keep: !clean,
        };
        return (continuity, cap);
    }
    let expiry = match asked.unwrap_or(0) {
        0 => Some(Duration::ZERO),
        u32::MAX => cap,
        seconds => {
            let asked = Duration::from_secs(u64::from(seconds));
            Some(cap.map_or(asked, |cap| cap.min(asked)))
        }
    };
    let continuity = Continuity {
        resume: !clean,
        keep: expiry != Some(Duration::ZERO),
    };
    (continuity, expiry)
}

/// The subject's common name of a DER certificate, as Mosquitto's
/// `use_identity_as_username` takes it.
fn common_name(cert: &tokio_rustls::rustls::pki_types::CertificateDer<'_>) -> Option<String> {
    let (_, parsed) = x509_parser::parse_x509_certificate(cert.as_ref()).ok()?;
    let cn = parsed.subject().iter_common_name().next()?.as_str().ok()?.to_owned();
    Some(cn)
}

/// Mosquitto's way for an empty client id: `auto-` and a random suffix.
fn generated_client_id() -> String {
    use std::hash::{BuildHasher, Hasher};
    let mut hasher = std::collections::hash_map::RandomState::new().build_hasher();
    hasher.write_u128(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos()),
    );
    format!("auto-{:016x}", hasher.finish())
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

#[cfg(test)]
mod tests {
    use super::{Continuity, Duration, Peek, peek_level, session_lifetime};

    #[test]
    fn a_session_lives_as_long_as_the_connect_asks_within_the_cap() {
        let day = Some(Duration::from_secs(86_400));
        let keep = |resume| Continuity { resume, keep: true };
        let end = |resume| Continuity { resume, keep: false };
        // MQTT 3.1.1: the clean flag does both; the cap is the expiry.
        assert_eq!(session_lifetime(4, false, None, day), (keep(true), day));
        assert_eq!(session_lifetime(4, false, None, None), (keep(true), None));
        assert_eq!(session_lifetime(4, true, None, day).0, end(false));
        // MQTT 5: the interval, capped; 0 (or none) ends with the connection.
        assert_eq!(
            session_lifetime(5, true, Some(60), day),
            (keep(false), Some(Duration::from_secs(60)))
        );
        assert_eq!(session_lifetime(5, false, Some(7 * 86_400), day), (keep(true), day));
        assert_eq!(session_lifetime(5, false, Some(u32::MAX), day), (keep(true), day));
        assert_eq!(session_lifetime(5, false, Some(u32::MAX), None), (keep(true), None));
        assert_eq!(session_lifetime(5, false, None, day).0, end(true));
        assert_eq!(session_lifetime(5, false, Some(0), None).0, end(true));
    }

    #[test]
    fn protocol_level_from_the_connect() {
        // MQTT 3.1.1 CONNECT, as mosquitto_pub sends it.
        let v4 = [0x10, 0x16, 0, 4, b'M', b'Q', b'T', b'T', 4, 2, 0, 60];
        assert_eq!(peek_level(&v4), Peek::Level(4));
        for end in 0..9 {
            assert_eq!(peek_level(&v4[..end]), Peek::More, "prefix {end}");
        }
        let mut v5 = v4;
        v5[8] = 5;
        assert_eq!(peek_level(&v5), Peek::Level(5));
        let v3 = [0x10, 0x0e, 0, 6, b'M', b'Q', b'I', b's', b'd', b'p', 3];
        assert_eq!(peek_level(&v3), Peek::Level(3));
        // Another level under a known name is answered; anything else is not.
        for level in [0, 3, 6, 0x84] {
            v5[8] = level;
            assert_eq!(peek_level(&v5), Peek::Unsupported, "{level}");
        }
        assert_eq!(
            peek_level(&[0x10, 0x0e, 0, 6, b'M', b'Q', b'I', b's', b'd', b'p', 4]),
            Peek::Unsupported
        );
        assert_eq!(peek_level(b"GET / HTTP/1.1"), Peek::NotMqtt);
        assert_eq!(peek_level(&[0x10, 0xff, 0xff, 0xff, 0xff, 0x01]), Peek::NotMqtt);
    }
}
