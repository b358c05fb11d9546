//! Which MQTT versions the broker speaks, beside Debian's Mosquitto 2.0 with
//! the same clients: MQTT 3.1 (`MQIsdp`, level 3) as Mosquitto serves it, and
//! the CONNACK a level it does not speak gets ([MQTT-3.1.2-2]).
#![allow(clippy::unwrap_used)] // a test binary: unwrap is an assertion

mod support;

use snigate_shared::testing::mqtt as raw;
use snigate_shared::testing::{STEP, TempDir};
use support::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// A CONNECT with another protocol name and level than 3.1.1's: the rest of
/// the packet is the same in MQTT 3.1.
fn connect_as(name: &[u8], level: u8, client_id: &str, clean_session: bool) -> Vec<u8> {
    let mut body = vec![0, name.len() as u8];
    body.extend_from_slice(name);
    body.extend_from_slice(&[level, if clean_session { 0x02 } else { 0 }, 0, 60]);
    body.extend_from_slice(&(client_id.len() as u16).to_be_bytes());
    body.extend_from_slice(client_id.as_bytes());
    raw::packet(0x10, &body)
}

/// The CONNACK's two bytes (flags, return code) to `connect`.
async fn connack(port: u16, connect: &[u8]) -> (TcpStream, [u8; 2]) {
    let mut stream = TcpStream::connect(("127.0.0.1", port)).await.unwrap();
    stream.write_all(connect).await.unwrap();
    let (first, body) = tokio::time::timeout(STEP, raw::read_packet(&mut stream))
        .await
        .expect("a CONNACK in time")
        .unwrap();
    assert_eq!((first, body.len()), (0x20, 2), "CONNACK");
    (stream, [body[0], body[1]])
}

/// Whether the server has closed `stream` (nothing more to read).
async fn closed(stream: &mut TcpStream) -> bool {
    let mut byte = [0u8; 1];
    matches!(
        tokio::time::timeout(STEP, stream.read(&mut byte)).await,
        Ok(Ok(0) | Err(_))
    )
}

/// mosquitto_sub and mosquitto_pub with `-V mqttv31` get a QoS 1 message
/// through, as through Mosquitto.
#[tokio::test]
async fn mqtt_3_1_clients_publish_and_subscribe() {
    let dir = TempDir::new();
    let (Some(((_mosquitto, mosquitto_port), broker)), Some((pub_, sub))) =
        (side_by_side(&dir, "", ""), mosquitto_clients())
    else {
        return;
    };
    for port in [broker.port(), mosquitto_port.to_string()] {
        let target = ["-h", "127.0.0.1", "-p", &port, "-V", "mqttv31", "-q", "1"];
        let subscriber = tokio::process::Command::new(&sub)
            .args(target)
            .args(["-i", "old-sub", "-t", "legacy/#", "-C", "1", "-W", "5", "-v"])
            .output();
        let subscriber = tokio::spawn(subscriber);
        // Until the subscription is in place, publish again (bounded: the
        // subscriber gives up after 5 s).
        for _ in 0..20 {
            let publish = [&target[..], &["-i", "old-pub", "-t", "legacy/1", "-m", "3.1"]].concat();
            let out = run(&pub_, &publish).await;
            assert!(out.status.success(), "{port}: {out:?}");
            if subscriber.is_finished() {
                break;
            }
            tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        }
        let out = subscriber.await.unwrap().unwrap();
        assert_eq!(
            String::from_utf8_lossy(&out.stdout),
            "legacy/1 3.1\n",
            "{port}: {out:?}"
        );
    }
}

/// MQTT 3.1's CONNACK has no Session Present flag, even for a persistent
/// session that is resumed (its messages still come); a client id is
/// required, whatever the clean session flag (return code 2, identifier
/// rejected). Mosquitto answers the same.
#[tokio::test]
async fn mqtt_3_1_connack_and_client_ids() {
    let dir = TempDir::new();
    let Some(((_mosquitto, mosquitto_port), broker)) = side_by_side(&dir, "", "") else {
        return;
    };
    for port in [broker.addr.port(), mosquitto_port] {
        let (mut first, answer) = connack(port, &connect_as(b"MQIsdp", 3, "legacy", false)).await;
        assert_eq!(answer, [0, 0], "{port}");
        assert_eq!(raw::subscribe(&mut first, "legacy/inbox", 1).await, 1, "{port}");
        first.write_all(&[0xe0, 0]).await.unwrap();
        assert!(closed(&mut first).await, "{port}: DISCONNECT");
        let (mut publisher, _) = connack(port, &connect_as(b"MQIsdp", 3, "legacy-pub", true)).await;
        raw::publish(&mut publisher, "legacy/inbox", b"kept", 1, false).await;
        let (mut back, answer) = connack(port, &connect_as(b"MQIsdp", 3, "legacy", false)).await;
        assert_eq!(answer, [0, 0], "{port}: no Session Present in MQTT 3.1");
        let message = raw::next_message(&mut back).await.expect("the message kept while away");
        assert_eq!(message.payload, b"kept", "{port}");
        for clean in [true, false] {
            let (mut refused, answer) = connack(port, &connect_as(b"MQIsdp", 3, "", clean)).await;
            assert_eq!(answer, [0, 2], "{port}: empty client id, clean {clean}");
            assert!(closed(&mut refused).await, "{port}");
        }
    }
}

/// [MQTT-3.1.2-2]: a protocol level the server does not speak is answered
/// CONNACK 0x01 (unacceptable protocol version), and the connection closed;
/// so is MQTT 3.1's name with another level. Another protocol name is closed
/// without an answer ([MQTT-3.1.2-1] allows either).
#[tokio::test]
async fn an_unsupported_protocol_level_is_answered_connack_1() {
    let dir = TempDir::new();
    let Some(((_mosquitto, mosquitto_port), broker)) = side_by_side(&dir, "", "") else {
        return;
    };
    for port in [broker.addr.port(), mosquitto_port] {
        for (name, level) in [(&b"MQTT"[..], 6), (b"MQTT", 3), (b"MQIsdp", 4)] {
            let (mut stream, answer) = connack(port, &connect_as(name, level, "c", true)).await;
            assert_eq!(answer, [0, 1], "{port}: level {level}");
            assert!(closed(&mut stream).await, "{port}: level {level}");
        }
        let mut stream = TcpStream::connect(("127.0.0.1", port)).await.unwrap();
        stream.write_all(&connect_as(b"MQTX", 4, "c", true)).await.unwrap();
        assert!(closed(&mut stream).await, "{port}: another name");
    }
    // Mosquitto accepts its bridges; snigate-broker has none, and its answer
    // sends a Mosquitto bridge back to plain MQTT 3.1.1.
    let (mut stream, answer) = connack(broker.addr.port(), &connect_as(b"MQTT", 0x84, "c", true)).await;
    assert_eq!(answer, [0, 1], "a bridge's level");
    assert!(closed(&mut stream).await);
}

/// An MQTT 3.1 SUBSCRIBE to a filter the ACL lets the client write but not
/// read: 3.1 has no failure code, so the SUBACK grants the QoS asked for and
/// nothing is delivered on it. Mosquitto answers the same (its acl_file
/// refuses no SUBSCRIBE and withholds the messages; snigate-broker makes no
/// subscription, and answers an MQTT 3.1.1 client 0x80, docs/broker.md).
#[tokio::test]
async fn a_refused_mqtt_3_1_subscription_is_granted_and_delivers_nothing() {
    let dir = TempDir::new();
    let acl = dir.path("acl");
    std::fs::write(&acl, "topic readwrite open/#\ntopic write closed/#\n").unwrap();
    let acl = acl.to_str().unwrap();
    let Some(((_mosquitto, mosquitto_port), broker)) =
        side_by_side(&dir, &format!("acl_file {acl}\n"), &format!("acl_file = \"{acl}\"\n"))
    else {
        return;
    };
    for port in [broker.addr.port(), mosquitto_port] {
        let (mut old, _) = connack(port, &connect_as(b"MQIsdp", 3, "old", true)).await;
        assert_eq!(raw::subscribe(&mut old, "closed/x", 1).await, 1, "{port}: 3.1");
        assert_eq!(raw::subscribe(&mut old, "open/x", 1).await, 1, "{port}: 3.1");
        let (mut publisher, _) = connack(port, &raw::connect_packet("pub", 0)).await;
        // closed/x may be written, not read: open/x comes through, and
        // nothing before it.
        raw::publish(&mut publisher, "closed/x", b"no", 1, false).await;
        raw::publish(&mut publisher, "open/x", b"yes", 1, false).await;
        let message = raw::next_message(&mut old).await.expect("the open message");
        assert_eq!(
            (message.topic.as_str(), &message.payload[..]),
            ("open/x", &b"yes"[..]),
            "{port}"
        );
    }
}
