//! What the broker's integration tests share: the broker under test, raw MQTT
//! packets, and Debian's clients.
#![allow(dead_code)]

use std::net::SocketAddr;
use std::process::{Command, Output};

use snigate_shared::testing::{Process, STEP, TempDir, tool};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

pub const BIN: &str = env!("CARGO_BIN_EXE_snigate-broker");

/// The broker, running, with its MQTT address.
pub struct Broker {
    pub process: Process,
    pub addr: SocketAddr,
}

impl Broker {
    pub fn start(args: &[&str]) -> Self {
        let mut command = Command::new(BIN);
        command.args(["--listen", "127.0.0.1:0"]).args(args);
        let process = Process::spawn("broker", command);
        let addr = process.address("mqtt");
        Self { process, addr }
    }

    pub fn port(&self) -> String {
        self.addr.port().to_string()
    }
}

/// Debian's mosquitto_pub and mosquitto_sub.
pub fn mosquitto_clients() -> Option<(std::path::PathBuf, std::path::PathBuf)> {
    Some((
        tool("mosquitto_pub", "mosquitto-clients")?,
        tool("mosquitto_sub", "mosquitto-clients")?,
    ))
}

/// A password file written by Debian's mosquitto_passwd: admin/admin, foo/foo.
pub fn mosquitto_passwd_file(dir: &TempDir) -> Option<String> {
    let passwd = tool("mosquitto_passwd", "mosquitto")?;
    let path = dir.path("passwd");
    std::fs::write(&path, "").unwrap();
    for (user, password) in [("admin", "admin"), ("foo", "foo")] {
        let status = Command::new(&passwd)
            .arg("-b")
            .arg(&path)
            .args([user, password])
            .status()
            .unwrap();
        assert!(status.success());
    }
    Some(path.to_str().unwrap().to_owned())
}

pub async fn run(program: &std::path::Path, args: &[&str]) -> Output {
    let output = tokio::process::Command::new(program).args(args).output();
    tokio::time::timeout(STEP, output)
        .await
        .expect("the client finished")
        .unwrap()
}

pub async fn assert_pings(stream: &mut TcpStream) {
    stream.write_all(&[0xc0, 0]).await.unwrap();
    let mut pingresp = [0; 2];
    tokio::time::timeout(STEP, stream.read_exact(&mut pingresp))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(pingresp, [0xd0, 0]);
}

/// An MQTT 3.1.1 CONNECT with the given keepalive and client id.
pub fn connect_packet(client_id: &str, keep_alive: u16) -> Vec<u8> {
    let mut body = vec![0, 4, b'M', b'Q', b'T', b'T', 4, 0x02];
    body.extend_from_slice(&keep_alive.to_be_bytes());
    body.extend_from_slice(&(client_id.len() as u16).to_be_bytes());
    body.extend_from_slice(client_id.as_bytes());
    let mut packet = vec![0x10, body.len() as u8];
    packet.extend_from_slice(&body);
    packet
}

pub async fn connected(addr: SocketAddr, client_id: &str, keep_alive: u16) -> TcpStream {
    let mut stream = TcpStream::connect(addr).await.unwrap();
    stream.write_all(&connect_packet(client_id, keep_alive)).await.unwrap();
    let mut connack = [0; 4];
    tokio::time::timeout(STEP, stream.read_exact(&mut connack))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(connack, [0x20, 2, 0, 0], "CONNACK accepted");
    stream
}

/// One MQTT packet off the wire: the fixed header's first byte and the body.
pub async fn read_packet<R: AsyncReadExt + Unpin>(stream: &mut R) -> std::io::Result<(u8, Vec<u8>)> {
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

/// An MQTT 3.1.1 PUBLISH.
pub fn publish_packet(topic: &str, payload: &[u8], qos: u8, pkid: u16) -> Vec<u8> {
    let mut body = (topic.len() as u16).to_be_bytes().to_vec();
    body.extend_from_slice(topic.as_bytes());
    if qos > 0 {
        body.extend_from_slice(&pkid.to_be_bytes());
    }
    body.extend_from_slice(payload);
    packet(0x30 | (qos << 1), &body)
}

/// SUBSCRIBE to one filter at `qos`; returns after the SUBACK, with its code.
pub async fn subscribe(stream: &mut TcpStream, filter: &str, qos: u8) -> u8 {
    let mut body = vec![0, 1];
    body.extend_from_slice(&(filter.len() as u16).to_be_bytes());
    body.extend_from_slice(filter.as_bytes());
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

/// A metric's value summed over all its series whose labels contain `labels`.
pub fn metric_sum(metrics: &str, name: &str, labels: &str) -> f64 {
    metrics
        .lines()
        .filter(|l| l.starts_with(name) && l[name.len()..].starts_with(['{', ' ']) && l.contains(labels))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

/// GET an admin path over plain HTTP/1.0.
pub async fn http_get(addr: SocketAddr, path: &str) -> String {
    let mut stream = TcpStream::connect(addr).await.unwrap();
    stream
        .write_all(format!("GET {path} HTTP/1.0\r\nHost: test\r\n\r\n").as_bytes())
        .await
        .unwrap();
    let mut response = String::new();
    tokio::time::timeout(STEP, stream.read_to_string(&mut response))
        .await
        .unwrap()
        .unwrap();
    response
}
