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
pub(super) struct Arrival {
    /// The client's address (from the PROXY protocol header, when there is one).
    pub(super) peer: SocketAddr,
    /// When the TLS handshake and CONNECT must be done.
    pub(super) deadline: Instant,
    /// Admitted only to be told the server is busy.
    pub(super) busy: bool,
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
