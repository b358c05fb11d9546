//! Raw MQTT 3.1.1 packets for tests that need exact bytes: what a client sends
//! and a reader for what comes back, over any stream (TCP or TLS).

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

use super::STEP;

/// An MQTT packet: `first` byte, remaining length, body.
pub fn packet(first: u8, body: &[u8]) -> Vec<u8> {
    let mut out = vec![first];
    let mut len = body.len();
    loop {
        let byte = (len % 128) as u8;
        len /= 128;
        out.push(if len > 0 { byte | 0x80 } else { byte });
        if len == 0 {
            break;
        }
    }
    out.extend_from_slice(body);
    out
}

fn string(out: &mut Vec<u8>, s: &[u8]) {
    out.extend_from_slice(&(s.len() as u16).to_be_bytes());
    out.extend_from_slice(s);
}

/// What a CONNECT carries beyond its client id.
#[derive(Debug, Default, Clone)]
pub struct Login<'a> {
    pub keep_alive: u16,
    pub user: Option<(&'a str, &'a str)>,
    /// Topic, message, QoS, retain.
    pub will: Option<(&'a str, &'a [u8], u8, bool)>,
    pub clean_session: bool,
}

/// An MQTT 3.1.1 CONNECT with a clean session and the given keepalive.
pub fn connect_packet(client_id: &str, keep_alive: u16) -> Vec<u8> {
    connect_with(
        client_id,
        &Login {
            keep_alive,
            clean_session: true,
            ..Login::default()
        },
    )
}

/// An MQTT 3.1.1 CONNECT with everything `login` says.
pub fn connect_with(client_id: &str, login: &Login<'_>) -> Vec<u8> {
    let mut flags = 0u8;
    if login.clean_session {
        flags |= 0x02;
    }
    if let Some((_, _, qos, retain)) = login.will {
        flags |= 0x04 | (qos << 3) | if retain { 0x20 } else { 0 };
    }
    if login.user.is_some() {
        flags |= 0xc0;
    }
    let mut body = vec![0, 4, b'M', b'Q', b'T', b'T', 4, flags];
    body.extend_from_slice(&login.keep_alive.to_be_bytes());
    string(&mut body, client_id.as_bytes());
    if let Some((topic, message, _, _)) = login.will {
        string(&mut body, topic.as_bytes());
        string(&mut body, message);
    }
    if let Some((user, password)) = login.user {
        string(&mut body, user.as_bytes());
        string(&mut body, password.as_bytes());
    }
    packet(0x10, &body)
}

/// An MQTT 3.1.1 PUBLISH.
pub fn publish_packet(topic: &str, payload: &[u8], qos: u8, pkid: u16) -> Vec<u8> {
    let mut body = Vec::new();
    string(&mut body, topic.as_bytes());
    if qos > 0 {
        body.extend_from_slice(&pkid.to_be_bytes());
    }
    body.extend_from_slice(payload);
    packet(0x30 | (qos << 1), &body)
}

/// One MQTT packet off the wire: the fixed header's first byte and the body.
pub async fn read_packet<R: AsyncRead + Unpin>(stream: &mut R) -> std::io::Result<(u8, Vec<u8>)> {
    let first = stream.read_u8().await?;
    let mut len = 0usize;
    for shift in [0, 7, 14, 21] {
        let byte = stream.read_u8().await?;
        len |= usize::from(byte & 0x7f) << shift;
        if byte & 0x80 == 0 {
            break;
        }
    }
    let mut body = vec![0; len];
    stream.read_exact(&mut body).await?;
    Ok((first, body))
}

/// CONNECT and the CONNACK's return code (0: accepted).
pub async fn connect<S: AsyncRead + AsyncWrite + Unpin>(stream: &mut S, client_id: &str, login: &Login<'_>) -> u8 {
    stream.write_all(&connect_with(client_id, login)).await.unwrap();
    let (first, body) = tokio::time::timeout(STEP, read_packet(stream))
        .await
        .expect("a CONNACK in time")
        .unwrap();
    assert_eq!(first, 0x20, "CONNACK");
    body[1]
}

/// SUBSCRIBE to one filter at `qos`; returns after the SUBACK, with its code.
pub async fn subscribe<S: AsyncRead + AsyncWrite + Unpin>(stream: &mut S, filter: &str, qos: u8) -> u8 {
    let mut body = vec![0, 1];
    string(&mut body, filter.as_bytes());
    body.push(qos);
    stream.write_all(&packet(0x82, &body)).await.unwrap();
    loop {
        let (first, body) = tokio::time::timeout(STEP, read_packet(stream))
            .await
            .expect("a SUBACK in time")
            .unwrap();
        if first >> 4 == 9 {
            return body[2];
        }
    }
}

/// A received PUBLISH.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Message {
    pub topic: String,
    pub payload: Vec<u8>,
    pub qos: u8,
    pub retain: bool,
}

/// The next PUBLISH (within [`STEP`]), acknowledged as its QoS asks (QoS 2
/// through PUBREC, PUBREL, PUBCOMP); `None` on timeout or close.
pub async fn next_message<S: AsyncRead + AsyncWrite + Unpin>(stream: &mut S) -> Option<Message> {
    loop {
        let (first, body) = tokio::time::timeout(STEP, read_packet(stream)).await.ok()?.ok()?;
        match first >> 4 {
            3 => {
                let qos = (first >> 1) & 3;
                let topic_len = usize::from(u16::from_be_bytes([body[0], body[1]]));
                let topic = String::from_utf8_lossy(&body[2..2 + topic_len]).into_owned();
                let mut at = 2 + topic_len;
                if qos > 0 {
                    let pkid = [body[at], body[at + 1]];
                    at += 2;
                    let ack = if qos == 1 { 0x40 } else { 0x50 };
                    stream.write_all(&packet(ack, &pkid)).await.ok()?;
                }
                return Some(Message {
                    topic,
                    payload: body[at..].to_vec(),
                    qos,
                    retain: first & 1 == 1,
                });
            }
            // PUBREL of a QoS 2 delivery: complete it.
            6 => stream.write_all(&packet(0x70, &body[..2])).await.ok()?,
            _ => {}
        }
    }
}

/// PUBLISH at `qos` and wait for its flow to end (PUBACK, or PUBREC then
/// PUBCOMP after our PUBREL).
pub async fn publish<S: AsyncRead + AsyncWrite + Unpin>(
    stream: &mut S,
    topic: &str,
    payload: &[u8],
    qos: u8,
    retain: bool,
) {
    let pkid = 7u16;
    let mut publish = publish_packet(topic, payload, qos, pkid);
    if retain {
        publish[0] |= 1;
    }
    stream.write_all(&publish).await.unwrap();
    if qos == 0 {
        return;
    }
    loop {
        let (first, body) = tokio::time::timeout(STEP, read_packet(stream))
            .await
            .expect("the publish acknowledged in time")
            .unwrap();
        match first >> 4 {
            4 | 7 => return,
            5 => stream.write_all(&packet(0x62, &body[..2])).await.unwrap(),
            _ => {}
        }
    }
}
