//! Just enough MQTT 3.1.1 to load a broker: CONNECT with a login, SUBSCRIBE,
//! PUBLISH at QoS 0 and 1, PUBACK, and a frame reader.

use anyhow::{Context, bail};
use bytes::{Buf, BytesMut};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

pub const USER: &str = "bench";
pub const PASSWORD: &str = "bench-password";

fn header(out: &mut Vec<u8>, first: u8, mut len: usize) {
    out.push(first);
    loop {
        let byte = (len % 128) as u8;
        len /= 128;
        out.push(if len > 0 { byte | 0x80 } else { byte });
        if len == 0 {
            break;
        }
    }
}

fn string(out: &mut Vec<u8>, s: &[u8]) {
    out.extend_from_slice(&(s.len() as u16).to_be_bytes());
    out.extend_from_slice(s);
}

pub fn publish(out: &mut Vec<u8>, topic: &str, payload: &[u8], qos: u8, pkid: u16) {
    let len = 2 + topic.len() + if qos > 0 { 2 } else { 0 } + payload.len();
    header(out, 0x30 | (qos << 1), len);
    string(out, topic.as_bytes());
    if qos > 0 {
        out.extend_from_slice(&pkid.to_be_bytes());
    }
    out.extend_from_slice(payload);
}

pub fn puback(out: &mut Vec<u8>, pkid: u16) {
    out.extend_from_slice(&[0x40, 2]);
    out.extend_from_slice(&pkid.to_be_bytes());
}

/// Frames read off a stream: (first byte, body).
pub struct Reader {
    buf: BytesMut,
}

impl Default for Reader {
    fn default() -> Self {
        Self {
            buf: BytesMut::with_capacity(64 << 10),
        }
    }
}

impl Reader {
    /// The next complete frame already read, if any.
    pub fn frame(&mut self) -> Option<(u8, BytesMut)> {
        let mut len = 0usize;
        let mut at = 1;
        loop {
            let byte = *self.buf.get(at)?;
            len |= usize::from(byte & 0x7f) << (7 * (at - 1));
            at += 1;
            if byte & 0x80 == 0 {
                break;
            }
            if at > 4 {
                return None;
            }
        }
        if self.buf.len() < at + len {
            return None;
        }
        let first = self.buf[0];
        self.buf.advance(at);
        Some((first, self.buf.split_to(len)))
    }

    /// Read more; false at end of stream.
    pub async fn fill<R: AsyncRead + Unpin>(&mut self, stream: &mut R) -> anyhow::Result<bool> {
        self.buf.reserve(16 << 10);
        Ok(stream.read_buf(&mut self.buf).await? > 0)
    }

    pub async fn next<R: AsyncRead + Unpin>(&mut self, stream: &mut R) -> anyhow::Result<(u8, BytesMut)> {
        loop {
            if let Some(frame) = self.frame() {
                return Ok(frame);
            }
            if !self.fill(stream).await? {
                bail!("the broker closed the connection");
            }
        }
    }
}

/// CONNECT (clean session, keepalive 0, the bench user) and its CONNACK.
pub async fn connect<S: AsyncRead + AsyncWrite + Unpin>(
    stream: &mut S,
    reader: &mut Reader,
    client_id: &str,
) -> anyhow::Result<()> {
    let mut body = vec![0, 4, b'M', b'Q', b'T', b'T', 4, 0xc2, 0, 0];
    string(&mut body, client_id.as_bytes());
    string(&mut body, USER.as_bytes());
    string(&mut body, PASSWORD.as_bytes());
    let mut out = Vec::new();
    header(&mut out, 0x10, body.len());
    out.extend_from_slice(&body);
    stream.write_all(&out).await?;
    let (first, body) = reader.next(stream).await.context("waiting for CONNACK")?;
    if first != 0x20 || body.get(1) != Some(&0) {
        bail!("CONNACK refused: {first:#x} {body:?}");
    }
    Ok(())
}

pub async fn subscribe<S: AsyncRead + AsyncWrite + Unpin>(
    stream: &mut S,
    reader: &mut Reader,
    filter: &str,
    qos: u8,
) -> anyhow::Result<()> {
    let mut body = vec![0, 1];
    string(&mut body, filter.as_bytes());
    body.push(qos);
    let mut out = Vec::new();
    header(&mut out, 0x82, body.len());
    out.extend_from_slice(&body);
    stream.write_all(&out).await?;
    loop {
        let (first, _) = reader.next(stream).await?;
        if first >> 4 == 9 {
            return Ok(());
        }
    }
}

/// A PUBLISH body: (QoS, packet id, payload).
pub fn parse_publish(first: u8, body: &[u8]) -> Option<(u8, u16, &[u8])> {
    let qos = (first >> 1) & 3;
    let topic_len = usize::from(u16::from_be_bytes([*body.first()?, *body.get(1)?]));
    let mut at = 2 + topic_len;
    let mut pkid = 0;
    if qos > 0 {
        pkid = u16::from_be_bytes([*body.get(at)?, *body.get(at + 1)?]);
        at += 2;
    }
    Some((qos, pkid, body.get(at..)?))
}
