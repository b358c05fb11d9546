//! One client connection, CONNECT to close: the front end that owns the wire.
//!
//! The session reads MQTT with rumqttd's own codecs (`protocol::v4` for MQTT
//! 3.1.1, `protocol::v5` for MQTT 5, chosen from the CONNECT's protocol level),
//! answers CONNECT itself the way Mosquitto 2.0 does (a refused login gets
//! CONNACK 5 on 3.1.1 and 0x87 on 5, never a silent close; keepalive 0 is
//! accepted), and only then attaches a local link to rumqttd's router. After
//! that it passes the client's packets to the router and the router's
//! notifications to the client, answering PINGREQ itself.
//!
//! The will is the session's: rumqttd's local links cannot report an unclean
//! end, so when a connection ends without DISCONNECT the session publishes the
//! will, then detaches.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use std::collections::VecDeque;

use bytes::{Buf, Bytes, BytesMut};
use rumqttd::Notification;
use rumqttd::local::{LinkRx, LinkTx};
use rumqttd::protocol::v4::V4;
use rumqttd::protocol::v5::V5;
use rumqttd::protocol::{
    ConnAck, ConnAckProperties, ConnectProperties, ConnectReturnCode, Disconnect, DisconnectReasonCode,
    Error as ProtocolError, Filter, LastWill, Packet, PingReq, PingResp, Protocol, PubAck, PubAckReason, PubComp,
    PubCompReason, PubRec, PubRecReason, PubRel, PubRelReason, Publish, QoS, RetainForwardRule, SubAck, Subscribe,
    SubscribeReasonCode, UnsubAck, UnsubAckReason, Unsubscribe,
};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadHalf, WriteHalf};
use tokio::net::TcpStream;
use tokio::time::Instant;
use tokio_rustls::TlsAcceptor;

use crate::Shared;
use crate::auth::acl::Access;
use crate::engine::Continuity;

mod own;

const CONNECT_PACKET: u8 = 1;
const CONNACK_PACKET: u8 = 2;
/// Clients never use packet id 0 (MQTT §2.3.1): the session's own SUBSCRIBEs
/// to rumqttd carry it.
const RESUBSCRIBE_PKID: u16 = 0;
const PUBLISH_PACKET: u8 = 3;

/// Bytes handed to the socket in one write: messages move from the queue into
/// the write buffer up to this, so the queue's bounds stay meaningful.
const WRITE_CHUNK: usize = 64 << 10;
/// Past this many unwritten bytes (replies the session owes: acks, SUBACKs,
/// PINGRESPs), the session stops reading from the client until the client
/// reads: a client that sends without reading cannot make it grow. Messages
/// from the router still come in, to its bounded queue or dropped.
const WRITE_BACKLOG_LIMIT: usize = 256 << 10;
/// Notifications from rumqttd taken in one wake-up before the session looks at
/// its socket and timers again: rumqttd hands a link at most 200 at a time.
const NOTIFICATION_BATCH: usize = 256;
/// Most bytes taken from the client in one read: what reaches rumqttd in one
/// of its turns stays small beside a filter's log (see `max_segment_size`).
const READ_CHUNK: usize = 16 << 10;
/// Packets, and bytes of messages, waiting in rumqttd's incoming buffer for
/// this link beyond which the session stops reading from the client:
/// publishers are slowed by TCP instead of growing rumqttd's unbounded buffer.
const INGRESS_BACKLOG_PACKETS: usize = 128;
const INGRESS_BACKLOG_BYTES: usize = 64 << 10;
/// `$` filters one client may hold (`mosquitto_sub -t '$SYS/#'` needs one):
/// beyond, a subscription is refused (0x97 on MQTT 5, 0x80 on 3.1.1) and
/// counted as a `filters` limit refusal. They are checked at every `$SYS`
/// tick, and rumqttd's budget never sees them.
pub const MAX_SYS_FILTERS: usize = 64;
/// How long final words (a DISCONNECT, a refused CONNACK) may take to write.
const FINAL_WRITE_TIMEOUT: Duration = Duration::from_secs(5);

/// A message waiting for the client's socket, encoded.
struct Queued {
    /// With the router's packet id; the session's replaces it when written.
    bytes: Bytes,
    qos: u8,
}

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
    /// rumqttd ended the link.
    RouterError,
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
            End::RouterError => "router_error",
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

/// What a notification from the router leaves to wait for
/// ([`Session::finish`]): a few bytes, where the notification is hundreds.
enum Then {
    Nothing,
    /// Acknowledge a QoS 1 or 2 delivery to the router.
    Ack {
        qos: u8,
        pkid: u16,
    },
    /// Complete a QoS 2 delivery the session took over.
    PubComp(u16),
    /// The router dropped the link (a takeover) or refused what the client
    /// sent: pass its DISCONNECT on to an MQTT 5 client, and end.
    RouterDisconnected(Disconnect),
    /// `queue_full = "disconnect"` ended a slow consumer.
    SlowConsumer,
    /// The router paused the link: ask for more.
    Wake,
}

impl Then {
    /// The acknowledgement a delivery at `qos` needs: none at QoS 0.
    fn ack(qos: u8, pkid: u16) -> Self {
        if qos > 0 {
            Then::Ack { qos, pkid }
        } else {
            Then::Nothing
        }
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
    /// Messages for the client not yet in `write`, and their bytes.
    queue: VecDeque<Queued>,
    queued_bytes: usize,
    /// Messages in `write` holding shared queue budget: where each ends in
    /// the stream of bytes written to the client, and its size. Given back as
    /// the socket takes them.
    budget_marks: VecDeque<(u64, usize)>,
    /// Bytes the socket has taken so far.
    written_total: u64,
    /// QoS 1 and 2 messages written to the client and not yet acknowledged,
    /// by the packet id the session gave them: `true` once PUBREC came (QoS
    /// 2, waiting for PUBCOMP).
    inflight: std::collections::HashMap<u16, bool>,
    /// The last packet id given to a message for the client.
    last_pkid: u16,
    /// `write` was written to since the last flush (TLS keeps records back
    /// until flushed).
    unflushed: bool,
    /// SUBACK answers for `$` filters kept from rumqttd, by packet id.
    held_back: std::collections::HashMap<u16, Vec<(usize, SubscribeReasonCode)>>,
    /// The filters of each SUBSCRIBE passed to rumqttd, in order, until its
    /// SUBACK says which it refused.
    awaiting_suback: std::collections::HashMap<u16, Vec<String>>,
    /// Replies the session owes the client for packets it answered itself.
    answer_now: Vec<Packet>,
    /// UNSUBSCRIBEs waiting on rumqttd: the UNSUBACK reasons so far and how
    /// many filters rumqttd has still to answer, by packet id.
    unsubscribing: std::collections::HashMap<u16, (Vec<UnsubAckReason>, usize)>,
    /// One entry per filter passed to rumqttd, in order: which UNSUBSCRIBE
    /// and which of its filters the next PINGRESP from rumqttd closes.
    unsubscribe_marks: VecDeque<(u16, usize)>,
    /// rumqttd sent an UNSUBACK since the last mark: the filter was there.
    unsubscribe_acked: bool,
    /// This client's `$` filters, served from the `$SYS` snapshots: at most
    /// [`MAX_SYS_FILTERS`].
    sys_filters: std::collections::HashSet<String>,
    sys: tokio::sync::watch::Receiver<crate::sys::Snapshot>,
    /// A `$` subscription arrived: send the current values after its SUBACK.
    sys_initial: bool,
    /// Who the client is, for ACL checks (set once CONNECT is accepted).
    user: Option<String>,
    client_id: String,
    /// QoS and packet id of the PUBLISH just decoded (rumqttd keeps them private).
    last_publish: Option<(u8, u16)>,
    /// QoS 2 publishes the ACL refused: their PUBREL is answered here.
    refused_qos2: std::collections::HashSet<u16>,
    /// QoS 2 deliveries withheld (by the ACL) or dropped (a full queue):
    /// their PUBREL from rumqttd is answered here.
    withheld_qos2: std::collections::HashSet<u16>,
    /// This connection's subscription filters, for the subscriptions gauge
    /// and UNSUBSCRIBE; a resumed persistent session starts with its own.
    subscriptions: std::collections::HashSet<String>,
    /// The session outlives the connection (MQTT 3.1.1: clean session off;
    /// MQTT 5: a session expiry interval): its filters are kept in
    /// [`crate::Sessions`].
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
    /// Attached to rumqttd: the session is left to [`crate::Sessions::left`]
    /// when it ends.
    linked: bool,
    /// Counted in the connected and subscriptions gauges.
    counted: bool,
    /// Bytes of the will, held in the shared queue budget.
    will_bytes: usize,
    /// How the session ended; `None` while it runs, and after a panic.
    finished: Option<End>,
    /// The DISCONNECT reason an MQTT 5 client is sent when the session ends
    /// on what it sent ([`Self::decode`]).
    last_words: Option<DisconnectReasonCode>,
    /// With `core = "own"`: the session in the registry ([`own`]).
    own: Option<own::Own>,
}

/// The cleanup every session gets however it ends, a panic included: its
/// client id, gauges, budget and its saved session's expiry. Only the steps
/// that wait (the will, telling rumqttd) are the normal end's
/// ([`Link`] does them without waiting after a panic).
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
        // What it still holds of the shared queue budget: its queue, what its
        // write buffer holds, its will.
        let held = self.queued_bytes + self.budget_marks.iter().map(|(_, size)| size).sum::<usize>();
        self.shared
            .queue_budget
            .give_back(held + std::mem::take(&mut self.will_bytes));
        if std::mem::take(&mut self.counted) {
            metrics.subscriptions.sub(self.subscriptions.len() as i64);
            metrics.connected.dec();
        }
        if let Some(generation) = self.claim.take() {
            self.shared.sessions.release(&self.client_id, generation);
        }
        self.leave_own();
        let replaced = matches!(self.finished, Some(End::TakenOver | End::Shutdown));
        if std::mem::take(&mut self.linked) && !replaced {
            let expiry = self.persistent.then_some(self.expiry);
            self.shared.sessions.left(&self.client_id, expiry, &self.shared.engine);
        }
    }
}

/// A session's link to rumqttd. Detached with its last words (the will) at a
/// normal end; dropped without that (a panic), it tells rumqttd without
/// waiting, so the router's connection slot is freed either way.
struct Link {
    tx: LinkTx,
    eviction: Arc<crate::Eviction>,
    detached: bool,
}

impl Link {
    async fn detach(&mut self, will: Option<LastWill>) {
        self.detached = true;
        detach(&mut self.tx, will).await;
    }

    /// rumqttd has let go of the link already (the client's DISCONNECT, a
    /// takeover, a router error).
    fn forget(&mut self) {
        self.detached = true;
    }
}

impl Drop for Link {
    fn drop(&mut self) {
        // A link taken over may have given its connection id to the client
        // that took it: nothing may be sent on it.
        if self.detached || self.eviction.token.is_cancelled() {
            return;
        }
        let disconnect = Disconnect {
            reason_code: DisconnectReasonCode::NormalDisconnection,
        };
        if self.tx.try_send(Packet::Disconnect(disconnect, None)).is_err() {
            tracing::warn!("could not tell the message router that a session ended");
        }
    }
}

/// A client let in: what the relay and the end of the session need.
struct Connected {
    eviction: Arc<crate::Eviction>,
    core: Attached,
    will: Option<LastWill>,
    keep_alive: u16,
}

/// Which core the client is attached to.
enum Attached {
    Router {
        link: Link,
        rx: LinkRx,
    },
    /// The registry: the session is in `Session::own`.
    Own,
}

impl<P: Protocol, S: Stream> Session<P, S> {
    fn new(stream: S, read: BytesMut, protocol: P, level: u8, arrival: Arrival, shared: Arc<Shared>) -> Self {
        let (reader, writer) = tokio::io::split(stream);
        Self {
            reader,
            writer,
            queue: VecDeque::new(),
            queued_bytes: 0,
            budget_marks: VecDeque::new(),
            written_total: 0,
            inflight: std::collections::HashMap::new(),
            last_pkid: 0,
            unflushed: false,
            deadline: arrival.deadline,
            busy: arrival.busy,
            claim: None,
            linked: false,
            counted: false,
            will_bytes: 0,
            finished: None,
            last_words: None,
            own: None,
            held_back: std::collections::HashMap::new(),
            awaiting_suback: std::collections::HashMap::new(),
            answer_now: Vec::new(),
            unsubscribing: std::collections::HashMap::new(),
            unsubscribe_marks: VecDeque::new(),
            unsubscribe_acked: false,
            sys_filters: std::collections::HashSet::new(),
            sys: shared.sys.clone(),
            sys_initial: false,
            user: None,
            client_id: String::new(),
            last_publish: None,
            refused_qos2: std::collections::HashSet::new(),
            withheld_qos2: std::collections::HashSet::new(),
            subscriptions: std::collections::HashSet::new(),
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
                core,
                will,
                keep_alive,
            } = match Box::pin(self.admit(identity)).await {
                Ok(connected) => connected,
                Err(ended) => return self.ended(ended),
            };
            let (mut link, mut rx) = match core {
                Attached::Router { link, rx } => (link, rx),
                Attached::Own => {
                    let end = self.relay_own(keep_alive, &eviction).await;
                    self.finished = Some(end);
                    // As with the router (below): no will after DISCONNECT, a
                    // revocation or a stop. On a takeover, Mosquitto's rule:
                    // the will goes when the session ends with the connection
                    // (it had a clean session, or the new one starts clean),
                    // not when its successor resumes it.
                    let due = match end {
                        End::Disconnected | End::Revoked | End::Shutdown => false,
                        End::TakenOver => self.own.as_ref().is_some_and(|own| own.session.is_ended()),
                        _ => true,
                    };
                    if due && let Some(will) = will {
                        self.publish_will_own(will);
                    }
                    return (end, Some(self.client_id.clone()));
                }
            };
            let end = self.relay(&mut link.tx, &mut rx, keep_alive, &eviction).await;
            self.finished = Some(end);
            match end {
                // The client's DISCONNECT already detached the link.
                End::Disconnected => link.forget(),
                // rumqttd has already dropped this link, and may have given its
                // connection id to the client that took over: nothing may be sent
                // on it now, not even the will.
                End::TakenOver | End::RouterError => link.forget(),
                // The link is still ours; the will is not sent, as Mosquitto does not.
                End::Revoked | End::Shutdown => link.detach(None).await,
                _ => {
                    let will = will.and_then(|mut will| {
                        // The ACL of now, as Mosquitto checks it when the will
                        // is sent (`context__send_will`).
                        if !self.allowed(&will.topic, Access::Write) {
                            self.shared.metrics.acl_denials.with_label_values(&["will"]).inc();
                            tracing::info!(client_id = self.client_id, "the ACL refuses the will's topic; not sent");
                            return None;
                        }
                        if will.retain && !self.shared.retained.admit(&will.topic, will.message.len()) {
                            self.shared.metrics.refused.with_label_values(&["retained"]).inc();
                            will.retain = false;
                        }
                        Some(will)
                    });
                    link.detach(will).await
                }
            }
            (end, Some(self.client_id.clone()))
        }
    }

    /// The session is over, as `ended` says (read by the drop guard).
    fn ended(&mut self, ended: (End, Option<String>)) -> (End, Option<String>) {
        self.finished = Some(ended.0);
        ended
    }

    /// From CONNECT to CONNACK: the slot, the login, the client id, the link
    /// to rumqttd and the session's subscriptions; or how the connection ended.
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
        // session over; the first is closed (0x8E on MQTT 5). rumqttd drops the
        // old link itself when the new one attaches; the token tells the old
        // session that this, not a failure, is what happened.
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
        if let Some(registry) = &shared.registry {
            let asked = props.as_ref().and_then(|p| p.session_expiry_interval);
            return match self
                .attach_own(registry, continuity, &eviction, assigned, asked, connect.keep_alive)
                .await
            {
                Ok(()) => Ok(Connected {
                    eviction,
                    core: Attached::Own,
                    will,
                    keep_alive: connect.keep_alive,
                }),
                Err(end) => Err((end, Some(client_id))),
            };
        }

        let engine = self.shared.engine.clone();
        let id = client_id.clone();
        let attached = tokio::task::spawn_blocking(move || engine.attach(&id, continuity)).await;
        let (tx, rx, ack) = match attached {
            Ok(Ok(link)) => link,
            Ok(Err(error)) => {
                tracing::error!(client_id, error, "the message router refused the client");
                let _ = self.send(Packet::ConnAck(refused(self.unavailable()), None)).await;
                return Err((End::RouterError, Some(client_id)));
            }
            Err(error) => {
                tracing::error!(client_id, %error, "attaching to the message router failed");
                let _ = self.send(Packet::ConnAck(refused(self.unavailable()), None)).await;
                return Err((End::RouterError, Some(client_id)));
            }
        };
        let mut link = Link {
            tx,
            eviction: eviction.clone(),
            detached: false,
        };
        self.linked = true;
        self.persistent = continuity.keep;
        // rumqttd does not export its ack type; its packet form says the same.
        let session_present = matches!(
            Option::<Packet>::from(ack),
            Some(Packet::ConnAck(
                ConnAck {
                    session_present: true,
                    ..
                },
                _
            ))
        );
        let connack = ConnAck {
            session_present: session_present && self.level != 3,
            code: ConnectReturnCode::Success,
        };
        let properties = (self.level == 5).then(|| {
            self.connack_properties(
                assigned.then(|| client_id.clone()),
                props.as_ref().and_then(|p| p.session_expiry_interval),
                expiry,
            )
        });
        if self.send(Packet::ConnAck(connack, properties)).await.is_err() {
            // rumqttd keeps the session as asked: it expires as any other
            // (when this session is dropped).
            link.detach(None).await;
            return Err((End::NetworkError, Some(client_id)));
        }
        self.shared.metrics.connected.inc();
        self.counted = true;
        tracing::info!(peer = %self.peer, client_id, user, mqtt = self.level, keepalive = connect.keep_alive, "client connected");
        if Box::pin(self.resume_subscriptions(continuity.keep, session_present, &mut link.tx))
            .await
            .is_err()
        {
            link.forget();
            return Err((End::RouterError, Some(client_id)));
        }

        Ok(Connected {
            eviction,
            core: Attached::Router { link, rx },
            will,
            keep_alive: connect.keep_alive,
        })
    }

    /// Pass packets both ways until the connection ends.
    ///
    /// Nothing here waits on the client's socket: what goes to the client is
    /// queued (bounded; see [`Self::push_message`]) and written as the socket
    /// takes it, so a client that stops reading costs its queue's bound and
    /// delays no one, and the router's log is drained at the pace of the
    /// broker, not of the slowest client.
    async fn relay(&mut self, tx: &mut LinkTx, rx: &mut LinkRx, keep_alive: u16, eviction: &crate::Eviction) -> End {
        let evicted = &eviction.token;
        // MQTT §3.1.2.10: one and a half keepalives of silence end the connection;
        // keepalive 0 turns the check off.
        let grace = (keep_alive > 0).then(|| Duration::from_millis(u64::from(keep_alive) * 1500));
        let mut last_heard = Instant::now();
        // Made once per connection, not per wake-up: a busy subscriber wakes
        // for every batch of messages, and re-registering a timer and two
        // cancellation waiters each time cost more than the message itself
        // (docs/performance.md). The keepalive timer is not moved on each read
        // either: when it fires, it is set again from the last read, if there
        // was one since.
        // Packets sent right behind the CONNECT, before its CONNACK (MQTT
        // §3.1.4 lets a client), are in the read buffer already.
        if !self.read.is_empty()
            && let Err(end) = self.on_readable(tx).await
        {
            return end;
        }
        self.release_read_buffer();
        let silence = tokio::time::sleep_until(last_heard + grace.unwrap_or_default());
        tokio::pin!(silence);
        let stop = self.shared.stop.clone();
        let stopped = stop.cancelled();
        tokio::pin!(stopped);
        let evicted_wait = evicted.cancelled();
        tokio::pin!(evicted_wait);
        loop {
            let backlogged = self.write.len() >= WRITE_BACKLOG_LIMIT;
            let ingress_full = ingress_backlogged(tx);
            let writing = !self.write.is_empty() || self.unflushed;
            tokio::select! {
                written = write_some(&mut self.writer, &self.write), if writing => {
                    match written {
                        Ok(0) if !self.write.is_empty() => return End::NetworkError,
                        Ok(n) => self.wrote(n),
                        Err(_) => return End::NetworkError,
                    }
                }
                read = read_some(&mut self.reader, &mut self.read), if !backlogged && !ingress_full => {
                    match read {
                        // A client may close its sending half and still read
                        // (TCP half-close): what it is owed already (replies,
                        // messages placed in the write buffer) goes out first,
                        // as Mosquitto, which writes each packet as it queues
                        // it, has sent it by then. Without this, a PINGRESP
                        // was lost whenever the end of input won the select.
                        Ok(0) => {
                            if !self.write.is_empty() {
                                let _ = Box::pin(self.write_final()).await;
                            }
                            return End::Closed;
                        }
                        Ok(_) => last_heard = Instant::now(),
                        Err(_) => return End::NetworkError,
                    }
                    if let Err(end) = self.on_readable(tx).await {
                        return end;
                    }
                }
                // rumqttd's buffer for this link is full: look again shortly.
                () = tokio::time::sleep(Duration::from_millis(1)), if ingress_full && !backlogged => {}
                // Taken even while the client's socket is backlogged: messages
                // then go to its bounded queue or are dropped, counted. Left in
                // rumqttd, up to 200 of them per link would keep their payloads
                // alive after the router's logs gave them up (up to 200 x the
                // largest packet for one stalled client). What else rumqttd
                // sends answers the client's own requests, which are not read
                // while it is backlogged.
                notification = next_notification(rx) => {
                    // Everything rumqttd has already handed this link is taken
                    // in this wake-up (up to a batch), not one message per turn
                    // of the loop.
                    let mut next = Some(notification);
                    let mut taken = 0;
                    while let Some(notification) = next {
                        let notification = match notification {
                            Ok(Some(notification)) => notification,
                            Ok(None) => break,
                            Err(_) if evicted.is_cancelled() => return self.evicted(eviction).await,
                            Err(_) => return End::RouterError,
                        };
                        let then = self.on_notification(notification);
                        if let Err(end) = self.finish(then, tx, rx, eviction).await {
                            return end;
                        }
                        taken += 1;
                        if taken == NOTIFICATION_BATCH {
                            break;
                        }
                        next = ready_now(next_notification(rx));
                    }
                    self.refill();
                }
                () = &mut silence, if grace.is_some() => {
                    let deadline = last_heard + grace.unwrap_or_default();
                    if deadline > Instant::now() {
                        silence.as_mut().reset(deadline);
                        continue;
                    }
                    return self.last_words(DisconnectReasonCode::KeepAliveTimeout, End::KeepaliveTimeout).await;
                }
                () = &mut evicted_wait => return self.evicted(eviction).await,
                changed = self.sys.changed(), if !self.sys_filters.is_empty() && !backlogged => {
                    if changed.is_err() {
                        return End::NetworkError;
                    }
                    self.queue_sys();
                    self.refill();
                }
                () = &mut stopped => {
                    return self.last_words(DisconnectReasonCode::ServerShuttingDown, End::Shutdown).await;
                }
            }
        }
    }

    /// Handle every complete packet in the read buffer: answered here, or
    /// passed to the router in one batch with one wake-up, as rumqttd's own
    /// network link does. `Err`: the session ends.
    async fn on_readable(&mut self, tx: &mut LinkTx) -> Result<(), End> {
        // Everything decoded from this read goes to the router as one
        // batch with one wake-up, as rumqttd's own network link does.
        let mut batch = Vec::new();
        let mut ended = None;
        loop {
            let packet = match self.decode() {
                Ok(Some(packet)) => packet,
                Ok(None) => break,
                Err(end) => return Err(self.refuse(end).await),
            };
            match packet {
                Packet::PingReq(_) => self.push_control(Packet::PingResp(PingResp)),
                // Passed on: it detaches the link and discards the will.
                Packet::Disconnect(_, ref props) => {
                    if let Some(asked) = props.as_ref().and_then(|p| p.session_expiry_interval)
                        && self.expiry_on_disconnect(asked).is_err()
                    {
                        return Err(End::ProtocolError);
                    }
                    batch.push(packet);
                    ended = Some(End::Disconnected);
                    break;
                }
                Packet::Connect(..)
                | Packet::ConnAck(..)
                | Packet::SubAck(..)
                | Packet::UnsubAck(..)
                | Packet::PingResp(_) => {
                    return Err(End::ProtocolError);
                }
                Packet::Publish(mut publish, props) => {
                    #[cfg(feature = "fault-injection")]
                    crate::fault::on_publish(&publish.topic, &self.shared);
                    if !self.allowed(&publish.topic, Access::Write) {
                        self.refuse_publish();
                        continue;
                    }
                    // Copies: the router may keep a message long after
                    // this read, and a slice would pin the whole read
                    // buffer it came in with.
                    publish.topic = Bytes::copy_from_slice(&publish.topic);
                    publish.payload = Bytes::copy_from_slice(&publish.payload);
                    // rumqttd clears a topic's retained message on any
                    // empty publish, retained or not: so does the count.
                    if publish.payload.is_empty() {
                        self.shared.retained.admit(&publish.topic, 0);
                    } else if publish.retain && !self.shared.retained.admit(&publish.topic, publish.payload.len()) {
                        self.shared.metrics.refused.with_label_values(&["retained"]).inc();
                        tracing::warn!(
                            client_id = self.client_id,
                            "retained messages are at max_retained_bytes; delivered, not retained"
                        );
                        publish.retain = false;
                    }
                    let packet = Packet::Publish(publish, props);
                    self.observe(&packet);
                    batch.push(packet);
                }
                Packet::PubRel(pubrel, _) if self.refused_qos2.remove(&pubrel.pkid) => {
                    let pubcomp = PubComp {
                        pkid: pubrel.pkid,
                        reason: PubCompReason::Success,
                    };
                    self.answer_now.push(Packet::PubComp(pubcomp, None));
                }
                Packet::Subscribe(subscribe, props) => {
                    let Some(subscribe) = self.hold_back(subscribe) else {
                        continue;
                    };
                    let packet = Packet::Subscribe(subscribe, props);
                    self.observe(&packet);
                    batch.push(packet);
                }
                Packet::Unsubscribe(unsubscribe, _) => self.unsubscribe(unsubscribe, &mut batch),
                packet => {
                    // The client acknowledged a delivery: room in its
                    // in-flight window.
                    // Acknowledgements of the session's deliveries end
                    // here: the router's were answered on receipt.
                    match packet {
                        Packet::PubAck(ack, _) => {
                            self.inflight.remove(&ack.pkid);
                        }
                        Packet::PubRec(rec, _) => {
                            if let Some(released) = self.inflight.get_mut(&rec.pkid) {
                                *released = true;
                                let pubrel = PubRel {
                                    pkid: rec.pkid,
                                    reason: PubRelReason::Success,
                                };
                                self.push_control(Packet::PubRel(pubrel, None));
                            }
                        }
                        Packet::PubComp(comp, _) => {
                            self.inflight.remove(&comp.pkid);
                        }
                        packet => {
                            self.observe(&packet);
                            batch.push(packet);
                        }
                    }
                }
            }
        }
        for reply in std::mem::take(&mut self.answer_now) {
            self.push_control(reply);
        }
        self.release_read_buffer();
        // A new `$SYS` subscription gets the current values right after
        // its SUBACK, as retained messages arrive; when the SUBACK is
        // rumqttd's, that happens when it is passed on.
        if self.sys_initial && self.held_back.is_empty() {
            self.sys_initial = false;
            self.queue_sys();
        }
        self.refill();
        if let Some(last) = batch.pop() {
            tx.buffer().extend(batch);
            if tx.send(last).await.is_err() {
                return Err(End::RouterError);
            }
        }
        match ended {
            Some(end) => Err(end),
            None => Ok(()),
        }
    }

    /// One notification from the router for this client: passed on,
    /// answered here, or queued for the socket; what is left to wait for is
    /// returned, for [`Self::finish`]. Not async: a match on the notification's
    /// 392-byte packet keeps it in the future through every await of its arms,
    /// and that future is part of every connection's for its life.
    fn on_notification(&mut self, notification: Notification) -> Then {
        match Option::<Packet>::from(notification) {
            // rumqttd drops a link when another connection takes its
            // client id over (MQTT §3.1.4-3), and sends DISCONNECT when it
            // refuses a client's publish or subscribe (a bad topic, a
            // protocol error): that one is passed on as it is.
            Some(Packet::Disconnect(disconnect, _)) => Then::RouterDisconnected(disconnect),
            Some(Packet::Publish(publish, _)) if !self.allowed(&publish.topic, Access::Read) => {
                self.shared.metrics.acl_denials.with_label_values(&["deliver"]).inc();
                self.withhold(publish)
            }
            Some(Packet::PubRel(pubrel, _)) => {
                // The second half of a QoS 2 delivery the session
                // took over (or withheld).
                self.withheld_qos2.remove(&pubrel.pkid);
                Then::PubComp(pubrel.pkid)
            }
            Some(Packet::SubAck(suback, _)) if suback.pkid == RESUBSCRIBE_PKID => Then::Nothing,
            Some(Packet::SubAck(mut suback, props)) => {
                self.count_refused_filters(&mut suback);
                // Put back the answers for `$` filters held back.
                if let Some(held) = self.held_back.remove(&suback.pkid) {
                    for (position, code) in held {
                        let at = position.min(suback.return_codes.len());
                        suback.return_codes.insert(at, code);
                    }
                }
                self.push_control(Packet::SubAck(suback, props));
                if self.sys_initial && self.held_back.is_empty() {
                    self.sys_initial = false;
                    self.queue_sys();
                }
                Then::Nothing
            }
            Some(publish @ Packet::Publish(..)) => self.push_message(publish),
            Some(Packet::UnsubAck(..)) => {
                self.unsubscribe_acked = true;
                Then::Nothing
            }
            Some(Packet::PingResp(_)) => {
                self.unsubscribe_marked();
                Then::Nothing
            }
            Some(packet) => {
                self.push_control(packet);
                Then::Nothing
            }
            // The router paused this link; ask for more.
            None => Then::Wake,
        }
    }

    /// What a notification left to wait for: an acknowledgement to the router,
    /// or last words before the session ends.
    async fn finish(
        &mut self,
        then: Then,
        tx: &mut LinkTx,
        rx: &LinkRx,
        eviction: &crate::Eviction,
    ) -> Result<(), End> {
        match then {
            Then::Nothing => Ok(()),
            Then::Ack { qos, pkid } => self.ack_to_router(qos, pkid, tx).await.map_err(|()| End::RouterError),
            Then::PubComp(pkid) => {
                let pubcomp = PubComp {
                    pkid,
                    reason: PubCompReason::Success,
                };
                match tx.send(Packet::PubComp(pubcomp, None)).await {
                    Ok(_) => Ok(()),
                    Err(_) => Err(End::RouterError),
                }
            }
            Then::RouterDisconnected(disconnect) => {
                if eviction.token.is_cancelled() {
                    return Err(self.evicted(eviction).await);
                }
                if self.level == 5 {
                    let _ = self.send(Packet::Disconnect(disconnect, None)).await;
                }
                Err(End::RouterError)
            }
            Then::SlowConsumer => {
                if self.level == 5 {
                    // After what the write buffer already holds: a client that
                    // catches up on its reading learns why (MQTT 5 §3.14.2.1).
                    let quota = Disconnect {
                        reason_code: DisconnectReasonCode::QuotaExceeded,
                    };
                    let _ = self.send(Packet::Disconnect(quota, None)).await;
                }
                Err(End::SlowConsumer)
            }
            Then::Wake => rx.wake().await.map_err(|_| End::RouterError),
        }
    }

    /// Queue a packet the client is owed (an ack, a SUBACK, a PINGRESP): never
    /// dropped, and small; [`WRITE_BACKLOG_LIMIT`] bounds them together.
    fn push_control(&mut self, packet: Packet) {
        if let Err(error) = self.protocol.write(packet, &mut self.write) {
            tracing::warn!(client_id = self.client_id, %error, "cannot encode a reply; skipped");
        }
    }

    /// Queue a message for the client, within its bounds: `max_queued_messages`
    /// and `max_queued_bytes` for this client, the shared queue budget for all.
    /// Beyond them a QoS 0 message is dropped; a QoS 1 or 2 message is dropped
    /// (and acknowledged to the router, so its window moves on) or ends the
    /// session, as `queue_full` says. Every drop is counted.
    fn push_message(&mut self, publish: Packet) -> Then {
        // Encoded at the end of the write buffer, where it stays when nothing
        // waits before it: a client that keeps up costs no copy per message
        // (and no allocation while messages keep coming; an emptied buffer is
        // freed). Otherwise it is copied out to the queue.
        let at = self.write.len();
        if let Err(error) = self.protocol.write(publish, &mut self.write) {
            self.write.truncate(at);
            tracing::warn!(client_id = self.client_id, %error, "cannot encode a message; skipped");
            return Then::Nothing;
        }
        let (qos, pkid) = publish_header(&self.write[at..]).unwrap_or((0, 0));
        let limits = &self.shared.settings.limits;
        let size = self.write.len() - at;
        let full = (limits.max_queued_messages > 0 && self.queue.len() >= limits.max_queued_messages)
            || self.queued_bytes + size > limits.max_queued_bytes;
        let reason = if full {
            "queue_full"
        } else if !self.shared.queue_budget.try_take(size) {
            "memory_budget"
        } else {
            let writable_now = self.queue.is_empty()
                && at < WRITE_CHUNK
                && (qos == 0 || self.inflight.len() < limits.max_inflight_messages);
            if writable_now {
                self.placed(at, qos);
            } else {
                let bytes = Bytes::copy_from_slice(&self.write[at..]);
                self.write.truncate(at);
                self.queue.push_back(Queued { bytes, qos });
                self.queued_bytes += size;
            }
            return Then::ack(qos, pkid);
        };
        self.write.truncate(at);
        self.shared
            .metrics
            .dropped
            .with_label_values(&[reason, qos_label(qos)])
            .inc();
        if qos == 0 {
            return Then::Nothing;
        }
        if limits.queue_full == crate::config::QueueFull::Disconnect {
            tracing::warn!(
                client_id = self.client_id,
                reason,
                "slow consumer: its queue is full; disconnecting"
            );
            // Given back now, not when the session ends: its last words
            // (`Then::SlowConsumer`) may wait on a client that does not read.
            self.queue.clear();
            self.shared.queue_budget.give_back(self.queued_bytes);
            self.queued_bytes = 0;
            return Then::SlowConsumer;
        }
        Then::ack(qos, pkid)
    }

    /// Move queued messages into the write buffer, up to [`WRITE_CHUNK`] and
    /// while the client's in-flight window has room, giving each QoS 1 and 2
    /// message a packet id of the session's.
    fn refill(&mut self) {
        let max_inflight = self.shared.settings.limits.max_inflight_messages;
        while self.write.len() < WRITE_CHUNK {
            let Some(front) = self.queue.front() else { break };
            if front.qos > 0 && self.inflight.len() >= max_inflight {
                break;
            }
            let Some(message) = self.queue.pop_front() else { break };
            let at = self.write.len();
            self.write.extend_from_slice(&message.bytes);
            self.queued_bytes -= message.bytes.len();
            self.placed(at, message.qos);
        }
        self.refill_own();
    }

    /// Account for a message just put at `at` in the write buffer: a packet id
    /// of the session's for QoS 1 and 2, its share of the queue budget (given
    /// back once the socket has taken its last byte), the metrics.
    fn placed(&mut self, at: usize, qos: u8) {
        if qos > 0 {
            let pkid = self.next_pkid();
            self.inflight.insert(pkid, false);
            if let Some(offset) = publish_pkid_offset(&self.write[at..]) {
                self.write[at + offset..at + offset + 2].copy_from_slice(&pkid.to_be_bytes());
            }
        }
        let size = self.write.len() - at;
        self.budget_marks
            .push_back((self.written_total + self.write.len() as u64, size));
        let metrics = &self.shared.metrics;
        metrics.messages_sent.at(qos).inc();
        metrics.bytes_sent.at(qos).inc_by(size as u64);
    }

    /// A packet id no in-flight message has (the window is far smaller than
    /// the 65,535 ids).
    fn next_pkid(&mut self) -> u16 {
        loop {
            self.last_pkid = self.last_pkid.checked_add(1).unwrap_or(1);
            if !self.inflight.contains_key(&self.last_pkid) {
                return self.last_pkid;
            }
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
        self.written_total += n as u64;
        while let Some(&(end, size)) = self.budget_marks.front() {
            if end > self.written_total {
                break;
            }
            self.budget_marks.pop_front();
            self.shared.queue_budget.give_back(size);
        }
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

    /// Queue the current `$SYS` values this client's `$` filters match (and its
    /// ACL lets it read), as retained QoS 0 messages.
    fn queue_sys(&mut self) {
        let snapshot = self.sys.borrow_and_update().clone();
        for (topic, value) in snapshot.iter() {
            let wanted = self.sys_filters.iter().any(|f| crate::auth::acl::matches(f, topic));
            if wanted && self.allowed(topic.as_bytes(), Access::Read) {
                let publish = Publish::new(topic.clone(), value.clone(), true);
                // A few hundred bytes every sys_interval: written with the
                // replies, outside the queue's budget, never dropped.
                let before = self.write.len();
                if self
                    .protocol
                    .write(Packet::Publish(publish, None), &mut self.write)
                    .is_ok()
                {
                    let metrics = &self.shared.metrics;
                    metrics.messages_sent.at(0).inc();
                    metrics.bytes_sent.at(0).inc_by((self.write.len() - before) as u64);
                }
            }
        }
    }

    /// rumqttd disconnects a client that subscribes to a filter starting with
    /// `$` (other than `$share/`), and `mosquitto_sub -t '$SYS/#'` is common.
    /// Such filters are kept from rumqttd and granted at QoS 0, as Mosquitto
    /// grants them (nothing is published there yet). Returns the SUBSCRIBE to
    /// pass on, or `None` when every filter was one of these and the SUBACK is
    /// answered here (queued in `answer_now`, sent after this read's packets).
    ///
    /// With an ACL, a filter none of whose topics the client may read is held
    /// back too, and answered with a failure (0x80 on MQTT 3.1.1, 0x87 on 5).
    fn hold_back(&mut self, mut subscribe: Subscribe) -> Option<Subscribe> {
        let reserved = |path: &str| path.starts_with('$') && !path.starts_with("$share/");
        let material = self.shared.material.load();
        let refused = |path: &str| {
            material
                .auth
                .acl
                .as_ref()
                .is_some_and(|acl| !acl.may_subscribe(self.user.as_deref(), &self.client_id, path))
        };
        let level = self.level;
        let mut acl_refused = false;
        let held: Vec<(usize, SubscribeReasonCode)> = subscribe
            .filters
            .iter()
            .enumerate()
            .filter_map(|(i, f)| {
                if refused(&f.path) {
                    acl_refused = true;
                    Some((i, refusal(level, SubscribeReasonCode::NotAuthorized, f.qos)))
                } else if reserved(&f.path) {
                    if self.sys_filters.len() >= MAX_SYS_FILTERS && !self.sys_filters.contains(&f.path) {
                        self.shared.metrics.refused.with_label_values(&["filters"]).inc();
                        return Some((i, refusal(level, SubscribeReasonCode::QuotaExceeded, f.qos)));
                    }
                    self.sys_filters.insert(f.path.clone());
                    if self.persistent {
                        // Kept with the session's other filters, to be served
                        // again when it resumes (rumqttd never sees it).
                        let mut kept = self.shared.sessions.persistent_filters();
                        kept.entry(self.client_id.clone()).or_default().insert(f.path.clone());
                    }
                    self.sys_initial = true;
                    Some((i, SubscribeReasonCode::Success(QoS::AtMostOnce)))
                } else {
                    None
                }
            })
            .collect();
        drop(material);
        if held.is_empty() {
            return Some(subscribe);
        }
        if acl_refused {
            self.shared.metrics.acl_denials.with_label_values(&["subscribe"]).inc();
        }
        let mut position = 0;
        subscribe.filters.retain(|_| {
            let keep = !held.iter().any(|(i, _)| *i == position);
            position += 1;
            keep
        });
        if subscribe.filters.is_empty() {
            let return_codes = held.into_iter().map(|(_, code)| code).collect();
            let suback = SubAck {
                pkid: subscribe.pkid,
                return_codes,
            };
            self.answer_now.push(Packet::SubAck(suback, None));
            return None;
        }
        self.held_back.insert(subscribe.pkid, held);
        Some(subscribe)
    }

    /// The router refuses a filter it has no log for once `max_filters` logs
    /// exist (a log is freed with its last subscriber), answering it 0x97
    /// (quota exceeded): counted here, and 0x80 on MQTT 3.1.1, which has no
    /// reasons.
    /// The refused filters are no subscription of the session's.
    fn count_refused_filters(&mut self, suback: &mut SubAck) {
        let paths = self.awaiting_suback.remove(&suback.pkid).unwrap_or_default();
        let mut refused = 0;
        for (position, code) in suback.return_codes.iter_mut().enumerate() {
            if *code != SubscribeReasonCode::QuotaExceeded {
                continue;
            }
            refused += 1;
            if self.level != 5 {
                *code = SubscribeReasonCode::Failure;
            }
            let Some(path) = paths.get(position) else {
                continue;
            };
            if self.subscriptions.remove(path) {
                self.shared.metrics.subscriptions.dec();
            }
            if self.persistent
                && let Some(kept) = self.shared.sessions.persistent_filters().get_mut(&self.client_id)
            {
                kept.remove(path);
            }
        }
        if refused > 0 {
            self.shared
                .metrics
                .refused
                .with_label_values(&["filters"])
                .inc_by(refused);
            tracing::warn!(
                client_id = self.client_id,
                refused,
                "subscription refused: max_filters filters have a log"
            );
        }
    }

    /// Answer an UNSUBSCRIBE for every filter in it, as MQTT requires
    /// (§3.10.4), also for filters that were never subscribed. rumqttd
    /// answers only filters it has, one UNSUBACK each, and never those the
    /// session keeps (`$SYS`); a session resumed from an earlier connection
    /// cannot tell which filters rumqttd has. So each filter goes to rumqttd
    /// alone, followed by a PINGREQ: rumqttd answers both in order, and an
    /// UNSUBACK before the PINGRESP means the filter was there.
    fn unsubscribe(&mut self, unsubscribe: Unsubscribe, batch: &mut Vec<Packet>) {
        let pkid = unsubscribe.pkid;
        let mut reasons = Vec::with_capacity(unsubscribe.filters.len());
        let mut waiting = 0;
        if self.persistent
            && let Some(kept) = self.shared.sessions.persistent_filters().get_mut(&self.client_id)
        {
            kept.retain(|f| !unsubscribe.filters.contains(f));
        }
        for (position, filter) in unsubscribe.filters.into_iter().enumerate() {
            if self.subscriptions.remove(&filter) {
                self.shared.metrics.subscriptions.dec();
            }
            if filter.starts_with('$') && !filter.starts_with("$share/") {
                reasons.push(if self.sys_filters.remove(&filter) {
                    UnsubAckReason::Success
                } else {
                    UnsubAckReason::NoSubscriptionExisted
                });
                continue;
            }
            reasons.push(UnsubAckReason::NoSubscriptionExisted);
            waiting += 1;
            self.unsubscribe_marks.push_back((pkid, position));
            batch.push(Packet::Unsubscribe(
                Unsubscribe {
                    pkid,
                    filters: vec![filter],
                },
                None,
            ));
            batch.push(Packet::PingReq(PingReq));
        }
        if waiting == 0 {
            self.answer_now.push(Packet::UnsubAck(UnsubAck { pkid, reasons }, None));
        } else {
            self.unsubscribing.insert(pkid, (reasons, waiting));
        }
    }

    /// rumqttd's PINGRESP after one filter of an UNSUBSCRIBE: that filter is
    /// settled; the UNSUBACK goes out when all of them are.
    fn unsubscribe_marked(&mut self) {
        let acked = std::mem::take(&mut self.unsubscribe_acked);
        let Some((pkid, position)) = self.unsubscribe_marks.pop_front() else {
            return;
        };
        let Some((reasons, waiting)) = self.unsubscribing.get_mut(&pkid) else {
            return;
        };
        if acked && let Some(reason) = reasons.get_mut(position) {
            *reason = UnsubAckReason::Success;
        }
        *waiting -= 1;
        if *waiting == 0
            && let Some((reasons, _)) = self.unsubscribing.remove(&pkid)
        {
            self.push_control(Packet::UnsubAck(UnsubAck { pkid, reasons }, None));
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
    fn refuse_publish(&mut self) {
        self.shared.metrics.acl_denials.with_label_values(&["publish"]).inc();
        match self.last_publish.take() {
            Some((1, pkid)) => {
                let puback = PubAck {
                    pkid,
                    reason: PubAckReason::NotAuthorized,
                };
                self.answer_now.push(Packet::PubAck(puback, None));
            }
            Some((2, pkid)) => {
                let pubrec = PubRec {
                    pkid,
                    reason: PubRecReason::NotAuthorized,
                };
                self.answer_now.push(Packet::PubRec(pubrec, None));
                // An MQTT 5 client ends the flow at a failed PUBREC; a 3.1.1
                // client sends PUBREL, answered here.
                if self.level != 5 {
                    self.refused_qos2.insert(pkid);
                }
            }
            _ => {}
        }
    }

    /// Keep a delivery the client may not read from it, acknowledging it to
    /// rumqttd so that its in-flight window moves on.
    fn withhold(&mut self, publish: Publish) -> Then {
        let mut encoded = BytesMut::new();
        if self
            .protocol
            .write(Packet::Publish(publish, None), &mut encoded)
            .is_err()
        {
            return Then::Nothing;
        }
        match publish_header(&encoded) {
            Some((qos, pkid)) => Then::ack(qos, pkid),
            None => Then::Nothing,
        }
    }

    /// Acknowledge a QoS 1 or 2 delivery to rumqttd on receipt: a PUBACK, or
    /// a PUBREC whose PUBREL is answered here. From then on the message is
    /// the session's to deliver (or drop, counted), so rumqttd never holds a
    /// window open for a slow client and never skips ahead in its log for it.
    /// rumqttd takes acknowledgements in the order it sent the messages (as
    /// MQTT §4.6 has clients send them): answering each on receipt keeps it.
    async fn ack_to_router(&mut self, qos: u8, pkid: u16, tx: &mut LinkTx) -> Result<(), ()> {
        let ack = if qos == 1 {
            Packet::PubAck(
                PubAck {
                    pkid,
                    reason: PubAckReason::Success,
                },
                None,
            )
        } else {
            self.withheld_qos2.insert(pkid);
            Packet::PubRec(
                PubRec {
                    pkid,
                    reason: PubRecReason::Success,
                },
                None,
            )
        };
        tx.send(ack).await.map(drop).map_err(drop)
    }

    /// Keep the subscription count as packets pass.
    fn observe(&mut self, packet: &Packet) {
        if let Packet::Subscribe(subscribe, _) = packet {
            for filter in &subscribe.filters {
                if self.subscriptions.insert(filter.path.clone()) {
                    self.shared.metrics.subscriptions.inc();
                }
            }
            if self.persistent {
                let mut kept = self.shared.sessions.persistent_filters();
                let filters = kept.entry(self.client_id.clone()).or_default();
                filters.extend(subscribe.filters.iter().map(|f| f.path.clone()));
            }
            self.awaiting_suback.insert(
                subscribe.pkid,
                subscribe.filters.iter().map(|f| f.path.clone()).collect(),
            );
        }
    }

    /// Take up a persistent session's subscriptions, or forget them when a
    /// clean session starts. rumqttd restores a resumed session's
    /// subscriptions without registering them for UNSUBSCRIBE: subscribing
    /// them again does (it keeps their QoS and sends no retained messages,
    /// for subscriptions it has), under packet id 0, whose SUBACK the
    /// session drops.
    async fn resume_subscriptions(&mut self, keep: bool, session_present: bool, tx: &mut LinkTx) -> Result<(), ()> {
        self.persistent = keep;
        let filters = {
            let mut kept = self.shared.sessions.persistent_filters();
            if !session_present {
                kept.remove(&self.client_id);
                return Ok(());
            }
            match kept.get(&self.client_id) {
                Some(filters) if !filters.is_empty() => filters.clone(),
                _ => return Ok(()),
            }
        };
        // `$` filters are the session's own: served again here, never sent
        // to rumqttd (which would end the link for them).
        let (sys, filters): (std::collections::HashSet<String>, std::collections::HashSet<String>) = filters
            .into_iter()
            .partition(|f| f.starts_with('$') && !f.starts_with("$share/"));
        self.sys_filters = sys.into_iter().collect();
        if filters.is_empty() {
            return Ok(());
        }
        self.shared.metrics.subscriptions.add(filters.len() as i64);
        let subscribe = Subscribe {
            pkid: RESUBSCRIBE_PKID,
            filters: filters
                .iter()
                .map(|path| Filter {
                    path: path.clone(),
                    qos: QoS::AtMostOnce,
                    nolocal: false,
                    preserve_retain: false,
                    retain_forward_rule: RetainForwardRule::OnEverySubscribe,
                })
                .collect(),
        };
        self.subscriptions = filters;
        tx.send(Packet::Subscribe(subscribe, None))
            .await
            .map(drop)
            .map_err(drop)
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

    /// CONNACK "server unavailable" in this client's MQTT version (rumqttd's
    /// 3.1.1 encoder cannot write the MQTT 5 code).
    fn unavailable(&self) -> ConnectReturnCode {
        if self.level == 5 {
            ConnectReturnCode::ServerUnavailable
        } else {
            ConnectReturnCode::ServiceUnavailable
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
        let header = publish_header(&self.read);
        match self
            .protocol
            .read_mut(&mut self.read, self.shared.settings.max_packet_size)
        {
            Ok(packet) => {
                self.last_publish = header;
                // rumqttd keeps a publish's QoS private; the fixed header has it.
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

/// Whether rumqttd has yet to take in a link's worth of this client's packets.
fn ingress_backlogged(tx: &LinkTx) -> bool {
    let buffer = tx.buffer();
    buffer.len() >= INGRESS_BACKLOG_PACKETS
        || buffer
            .iter()
            .map(|packet| match packet {
                Packet::Publish(publish, _) => publish.payload.len(),
                _ => 0,
            })
            .sum::<usize>()
            >= INGRESS_BACKLOG_BYTES
}

/// The next notification from rumqttd, or whether the link failed. rumqttd's
/// `LinkError` is 816 bytes (it can carry a whole router event), and the
/// relay's `select!` output, which holds it, stays alive in the relay's future
/// through every branch's awaits: 560 bytes more per connection, for life.
async fn next_notification(rx: &mut LinkRx) -> Result<Option<Notification>, ()> {
    rx.next().await.map_err(drop)
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

/// Publish the will (if the connection ended uncleanly), then tell the router
/// the client is gone, so it frees the connection.
fn detach(tx: &mut LinkTx, will: Option<LastWill>) -> std::pin::Pin<Box<impl std::future::Future<Output = ()> + '_>> {
    // Boxed, as the other steps before and after the relay: only the relay's
    // own state stays with a connection for its life.
    Box::pin(async move {
        if let Some(will) = will {
            // rumqttd's public constructor makes QoS 0 publishes only.
            let _ = tx
                .send(Packet::Publish(
                    Publish::new(will.topic, will.message, will.retain),
                    None,
                ))
                .await;
        }
        let disconnect = Disconnect {
            reason_code: DisconnectReasonCode::NormalDisconnection,
        };
        let _ = tx.send(Packet::Disconnect(disconnect, None)).await;
    })
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

/// QoS and packet id of the PUBLISH at the start of `buf` (0 for QoS 0), read
/// from its header: rumqttd keeps both private in its `Publish`.
fn publish_header(buf: &[u8]) -> Option<(u8, u16)> {
    let first = *buf.first()?;
    if first >> 4 != PUBLISH_PACKET {
        return None;
    }
    let qos = (first >> 1) & 3;
    if qos == 0 {
        return Some((0, 0));
    }
    let at = publish_pkid_offset(buf)?;
    Some((qos, u16::from_be_bytes([*buf.get(at)?, *buf.get(at + 1)?])))
}

/// Where the packet id of the QoS 1 or 2 PUBLISH at the start of `buf` is.
fn publish_pkid_offset(buf: &[u8]) -> Option<usize> {
    let mut at = 1;
    loop {
        let byte = *buf.get(at)?;
        at += 1;
        if byte & 0x80 == 0 {
            break;
        }
        if at > 4 {
            return None;
        }
    }
    let topic_len = usize::from(u16::from_be_bytes([*buf.get(at)?, *buf.get(at + 1)?]));
    at += 2 + topic_len;
    (buf.len() >= at + 2).then_some(at)
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

/// The future's output if it is ready without waiting, as `now_or_never` in
/// the futures crate (not a dependency of ours).
fn ready_now<F: std::future::Future>(future: F) -> Option<F::Output> {
    let future = std::pin::pin!(future);
    let mut context = std::task::Context::from_waker(std::task::Waker::noop());
    match future.poll(&mut context) {
        std::task::Poll::Ready(output) => Some(output),
        std::task::Poll::Pending => None,
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
