//! From accept to a session: the PROXY header, the TLS handshake and the
//! CONNECT's protocol level, each under the connect deadline, in the
//! connection's own task.

use super::*;

/// Serve one accepted connection to its end. With `tls`, the handshake runs
/// here, in the connection's own task under the connect timeout, so a client
/// that stalls its handshake delays nobody else.
///
/// With `proxy_protocol`, the connection starts with a PROXY header (v1 or v2)
/// whose client address stands for the peer's from then on.
pub fn serve(
    stream: TcpStream,
    peer: SocketAddr,
    shared: Arc<Shared>,
    tls: Option<TlsAcceptor>,
    proxy_protocol: bool,
    admission: Admission,
) -> Connection {
    let started = Instant::now();
    // One deadline for PROXY header, handshake, protocol level and CONNECT.
    let deadline = started + shared.settings.connect_timeout;
    Connection {
        stage: Stage::Arriving(Box::pin(arrive(stream, peer, tls, proxy_protocol, deadline))),
        shared,
        admission,
        started,
    }
}

/// One connection's task, from accept to close. Written by hand rather than
/// as an async block: a task keeps room for its future's largest state for
/// the connection's life, and an async block keeps what it captured (the
/// socket, the acceptor, the peer) beside what it holds later, where this
/// lays the stages over each other. Both stages are boxed, since what comes
/// before the session is over once it starts: the task's cell is 256 bytes
/// rather than 384 for every connection.
pub struct Connection {
    stage: Stage,
    shared: Arc<Shared>,
    /// Held to the end: the connection's slot and its share of the budget.
    admission: Admission,
    started: Instant,
}

enum Stage {
    /// Everything before the session ([`arrive`]), with the client's address.
    Arriving(BoxedArrival),
    Running(BoxedSession, SocketAddr),
    Ended,
}

impl std::future::Future for Connection {
    type Output = ();

    fn poll(mut self: std::pin::Pin<&mut Self>, cx: &mut std::task::Context<'_>) -> std::task::Poll<()> {
        use std::task::Poll;
        let this = &mut *self;
        loop {
            match &mut this.stage {
                Stage::Arriving(arriving) => {
                    let Poll::Ready((arrived, peer)) = arriving.as_mut().poll(cx) else {
                        return Poll::Pending;
                    };
                    let deadline = this.started + this.shared.settings.connect_timeout;
                    let busy = matches!(this.admission, Admission::Busy(_));
                    match open(arrived, peer, deadline, busy, &this.shared) {
                        Ok(session) => this.stage = Stage::Running(session, peer),
                        Err(end) => return this.ended(end, None, peer),
                    }
                }
                Stage::Running(session, peer) => {
                    let Poll::Ready((end, client_id)) = session.as_mut().poll(cx) else {
                        return Poll::Pending;
                    };
                    let peer = *peer;
                    return this.ended(end, client_id, peer);
                }
                Stage::Ended => return Poll::Ready(()),
            }
        }
    }
}

impl Connection {
    fn ended(&mut self, end: End, client_id: Option<String>, peer: SocketAddr) -> std::task::Poll<()> {
        // The session's socket and buffers go before the log line.
        self.stage = Stage::Ended;
        self.shared
            .metrics
            .disconnections
            .with_label_values(&[end.label()])
            .inc();
        tracing::info!(
            %peer,
            client_id,
            end = end.label(),
            duration_ms = u64::try_from(self.started.elapsed().as_millis()).unwrap_or(u64::MAX),
            "client disconnected"
        );
        std::task::Poll::Ready(())
    }
}

/// A session future (boxed) is all that a connection's task keeps from its
/// arrival: a function, so that the connection's future holds no `Arrived`.
fn open(
    arrived: Result<Arrived, End>,
    peer: SocketAddr,
    deadline: Instant,
    busy: bool,
    shared: &Arc<Shared>,
) -> Result<BoxedSession, End> {
    let arrival = Arrival { peer, deadline, busy };
    Ok(match arrived? {
        Arrived::Plain(stream, read, level) => start(stream, read, level, arrival, shared.clone(), None),
        Arrived::Tls(stream, read, level, identity) => start(stream, read, level, arrival, shared.clone(), identity),
    })
}

type BoxedArrival = std::pin::Pin<Box<dyn std::future::Future<Output = (Result<Arrived, End>, SocketAddr)> + Send>>;

type BoxedSession = std::pin::Pin<Box<dyn std::future::Future<Output = (End, Option<String>)> + Send>>;

/// Serve a connection over any byte stream (no listener, no PROXY header, no
/// connection slot): how [`crate::inbound`] drives a session without sockets.
pub async fn serve_stream<S: Stream + 'static>(mut stream: S, peer: SocketAddr, shared: Arc<Shared>) -> End {
    let deadline = Instant::now() + shared.settings.connect_timeout;
    let mut read = BytesMut::with_capacity(BUFFER_FLOOR);
    let level = match tokio::time::timeout_at(deadline, protocol_level(&mut stream, &mut read)).await {
        Err(_) => return End::ConnectTimeout,
        Ok(Err(end)) => return end,
        Ok(Ok(level)) => level,
    };
    let arrival = Arrival {
        peer,
        deadline,
        busy: false,
    };
    start(stream, read, level, arrival, shared, None).await.0
}

/// What a socket is let in with, from accept to close.
pub enum Admission {
    /// One of the `max_connections` slots and its kind's share of the
    /// connections' memory: held from accept, so a socket that never sends
    /// CONNECT (or never finishes its TLS handshake) costs one as a connected
    /// client does, and a flood of them stays within the budget.
    Slot(tokio::sync::OwnedSemaphorePermit, tokio::sync::OwnedSemaphorePermit),
    /// Every slot was taken: the socket is read up to its CONNECT only to be
    /// answered "busy". A few at a time (`crate::BUSY_ANSWERS`).
    Busy(tokio::sync::OwnedSemaphorePermit),
}

/// A socket, as the session starts on it.
pub(super) struct Arrival {
    /// The client's address (from the PROXY protocol header, when there is one).
    pub(super) peer: SocketAddr,
    /// When the TLS handshake and CONNECT must be done.
    pub(super) deadline: Instant,
    /// Admitted only to be told the server is busy.
    pub(super) busy: bool,
}

/// A connection ready for its session: the bytes read so far (the CONNECT's
/// start) and its protocol level.
enum Arrived {
    Plain(TcpStream, BytesMut, u8),
    /// Boxed: a 1.2 KB value that this future's caller would otherwise keep
    /// room for in every connection's task, plain or not. With the verified
    /// client certificate's subject CN.
    Tls(
        Box<tokio_rustls::server::TlsStream<TcpStream>>,
        BytesMut,
        u8,
        Option<String>,
    ),
}

/// Everything before the session, under the connect deadline: the PROXY
/// header (whose client address stands for `peer` from then on), the TLS
/// handshake, and the CONNECT's protocol level.
async fn arrive(
    stream: TcpStream,
    mut peer: SocketAddr,
    tls: Option<TlsAcceptor>,
    proxy_protocol: bool,
    deadline: Instant,
) -> (Result<Arrived, End>, SocketAddr) {
    let arrived = arrive_at(stream, &mut peer, tls, proxy_protocol, deadline).await;
    (arrived, peer)
}

async fn arrive_at(
    mut stream: TcpStream,
    peer: &mut SocketAddr,
    tls: Option<TlsAcceptor>,
    proxy_protocol: bool,
    deadline: Instant,
) -> Result<Arrived, End> {
    if proxy_protocol {
        match tokio::time::timeout_at(deadline, snigate_shared::proxy_protocol::read_header(&mut stream)).await {
            Ok(Ok(Some(client))) => *peer = client,
            // A health check or LOCAL command: the proxy speaks for itself.
            Ok(Ok(None)) => {}
            Ok(Err(error)) => {
                tracing::info!(%peer, %error, "bad PROXY protocol header; closing");
                return Err(End::BadProxyHeader);
            }
            Err(_) => {
                tracing::info!(%peer, "no PROXY protocol header in time; closing");
                return Err(End::ConnectTimeout);
            }
        }
    }
    let mut read = BytesMut::with_capacity(BUFFER_FLOOR);
    let Some(acceptor) = tls else {
        let level = read_level(&mut stream, &mut read, deadline).await?;
        return Ok(Arrived::Plain(stream, read, level));
    };
    let mut stream = match tokio::time::timeout_at(deadline, acceptor.accept(stream)).await {
        Ok(Ok(stream)) => Box::new(stream),
        Ok(Err(error)) => {
            tracing::info!(%peer, %error, "TLS handshake failed");
            return Err(End::TlsError);
        }
        Err(_) => return Err(End::ConnectTimeout),
    };
    let identity = stream
        .get_ref()
        .1
        .peer_certificates()
        .and_then(|chain| chain.first())
        .and_then(common_name);
    let level = read_level(&mut stream, &mut read, deadline).await?;
    Ok(Arrived::Tls(stream, read, level, identity))
}

async fn read_level<S: Stream>(stream: &mut S, read: &mut BytesMut, deadline: Instant) -> Result<u8, End> {
    match tokio::time::timeout_at(deadline, protocol_level(stream, read)).await {
        Err(_) => Err(End::ConnectTimeout),
        Ok(result) => result,
    }
}

/// The session, boxed whole: its state is most of a connection's memory in
/// user space, and the two protocols' sessions are not laid over each other
/// in one future's state.
fn start<S: Stream + 'static>(
    stream: S,
    read: BytesMut,
    level: u8,
    arrival: Arrival,
    shared: Arc<Shared>,
    identity: Option<String>,
) -> BoxedSession {
    if level == 5 {
        Box::pin(Session::new(stream, read, V5, 5, arrival, shared, identity).run())
    } else {
        Box::pin(Session::new(stream, read, V4, level, arrival, shared, identity).run())
    }
}

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

/// The subject's common name of a DER certificate, as Mosquitto's
/// `use_identity_as_username` takes it.
fn common_name(cert: &tokio_rustls::rustls::pki_types::CertificateDer<'_>) -> Option<String> {
    let (_, parsed) = x509_parser::parse_x509_certificate(cert.as_ref()).ok()?;
    let cn = parsed.subject().iter_common_name().next()?.as_str().ok()?.to_owned();
    Some(cn)
}

#[cfg(test)]
mod tests {
    use super::*;

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
