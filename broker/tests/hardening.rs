//! No client can crash the broker, get past its ACL or grow it past its budget
//! (docs/reliability.md, "What a client cannot do"). Where Mosquitto 2.0's
//! answer is the specification's, the same bytes go to Debian's Mosquitto and
//! to snigate-broker, and what each client sees must be the same.
#![allow(clippy::unwrap_used)] // a test binary: unwrap is an assertion

mod support;

use std::net::SocketAddr;
use std::process::Command;
use std::time::Duration;

use snigate_shared::testing::mqtt::{self as raw, Login, Message};
use snigate_shared::testing::{STEP, TempDir};
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;

use support::*;

fn string(out: &mut Vec<u8>, s: &[u8]) {
    out.extend_from_slice(&(s.len() as u16).to_be_bytes());
    out.extend_from_slice(s);
}

/// A CONNECT in MQTT `level` (4 or 5) with raw strings, so that they can be
/// anything a client may send: a client id, a will (topic, message), a user
/// name (with a password).
fn connect_raw(level: u8, client_id: &[u8], will: Option<(&[u8], &[u8])>, user: Option<&[u8]>) -> Vec<u8> {
    connect_with_password(level, client_id, will, user.map(|u| (u, &b"pw"[..])))
}

fn connect_with_password(
    level: u8,
    client_id: &[u8],
    will: Option<(&[u8], &[u8])>,
    login: Option<(&[u8], &[u8])>,
) -> Vec<u8> {
    let mut flags = 0x02u8;
    if will.is_some() {
        flags |= 0x04;
    }
    if login.is_some() {
        flags |= 0xc0;
    }
    let mut body = vec![0, 4, b'M', b'Q', b'T', b'T', level, flags, 0, 60];
    if level == 5 {
        body.push(0); // no CONNECT properties
    }
    string(&mut body, client_id);
    if let Some((topic, message)) = will {
        if level == 5 {
            body.push(0); // no will properties
        }
        string(&mut body, topic);
        string(&mut body, message);
    }
    if let Some((user, password)) = login {
        string(&mut body, user);
        string(&mut body, password);
    }
    raw::packet(0x10, &body)
}

/// A PUBLISH at QoS 0 or 1 (packet id 1) with raw topic and, on MQTT 5, raw
/// properties.
fn publish_raw(level: u8, topic: &[u8], properties: &[u8], qos: u8) -> Vec<u8> {
    let mut body = Vec::new();
    string(&mut body, topic);
    if qos > 0 {
        body.extend_from_slice(&1u16.to_be_bytes());
    }
    if level == 5 {
        body.push(properties.len() as u8);
        body.extend_from_slice(properties);
    }
    body.extend_from_slice(b"m");
    raw::packet(0x30 | (qos << 1), &body)
}

fn subscribe_raw(level: u8, filter: &[u8]) -> Vec<u8> {
    let mut body = vec![0, 1];
    if level == 5 {
        body.push(0);
    }
    string(&mut body, filter);
    body.push(0);
    raw::packet(0x82, &body)
}

fn unsubscribe_raw(level: u8, filter: &[u8]) -> Vec<u8> {
    let mut body = vec![0, 1];
    if level == 5 {
        body.push(0);
    }
    string(&mut body, filter);
    raw::packet(0xa2, &body)
}

/// A user property (MQTT 5 property 0x26).
fn user_property(key: &[u8], value: &[u8]) -> Vec<u8> {
    let mut out = vec![0x26];
    string(&mut out, key);
    string(&mut out, value);
    out
}

/// What a client sees after sending `packets` then a PINGREQ: each packet
/// the server sends ("CONNACK 0", "DISCONNECT 0x82", "SUBACK [80]",
/// "PUBACK"), then "open" (the PINGREQ was answered) or "closed". A server
/// may answer the PINGREQ before acknowledgements of earlier packets (MQTT
/// orders acknowledgements among themselves only): what comes shortly after
/// the PINGRESP counts too, before "open".
async fn outcome(addr: SocketAddr, packets: &[Vec<u8>]) -> Vec<String> {
    let mut stream = TcpStream::connect(addr).await.unwrap();
    let mut seen = Vec::new();
    for packet in packets.iter().chain(std::iter::once(&vec![0xc0, 0])) {
        // A server that closed on an earlier packet may reset this write.
        let _ = stream.write_all(packet).await;
    }
    let mut open = false;
    loop {
        let wait = if open { Duration::from_millis(300) } else { STEP };
        let Ok(read) = tokio::time::timeout(wait, raw::read_packet(&mut stream)).await else {
            seen.push(if open { "open" } else { "no answer" }.to_owned());
            return seen;
        };
        let Ok((first, body)) = read else {
            seen.push("closed".to_owned());
            return seen;
        };
        seen.push(match first >> 4 {
            2 => format!("CONNACK {}", body.get(1).copied().unwrap_or(0)),
            4 => "PUBACK".to_owned(),
            9 => format!(
                "SUBACK {:x?}",
                &body[2..].iter().filter(|&&b| b != 0).collect::<Vec<_>>()
            ),
            11 => "UNSUBACK".to_owned(),
            13 => {
                open = true;
                continue;
            }
            14 => format!("DISCONNECT {:#04x}", body.first().copied().unwrap_or(0)),
            other => format!("packet {other}"),
        });
    }
}

/// The status code of an HTTP response.
fn status(response: &str) -> &str {
    response.split_whitespace().nth(1).unwrap_or_default()
}

fn addr(port: u16) -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], port))
}

async fn metrics(broker: &Broker) -> String {
    http_get(broker.process.address("http"), "/metrics").await
}

/// Every string a client sends is validated as MQTT requires before anything
/// else sees it: the same bytes to Mosquitto and to snigate-broker, the same
/// outcome, for MQTT 3.1.1 and 5. [MQTT-1.5.3-1] [MQTT-1.5.3-2] [MQTT-1.5.4-1]
/// [MQTT-1.5.4-2] (UTF-8, no U+0000; the control characters and
/// non-characters the specifications discourage are refused as Mosquitto
/// refuses them), [MQTT-3.3.2-2] (no wildcards in a topic name), [MQTT-4.7.3-1]
/// (not empty), [MQTT-4.7.1-2] [MQTT-4.7.1-3] (wildcards in filters),
/// [MQTT-3.1.3-11] (the will topic), MQTT 5 §3.3.2.3.4 (an alias never
/// offered: 0x94).
#[tokio::test]
async fn bad_strings_get_what_mosquitto_answers() {
    let dir = TempDir::new();
    // Both offer 10 topic aliases by default; `max_topic_alias` 0 on both
    // makes any alias one never offered (broker/tests/mqtt5.rs has aliases).
    let Some(((_mosquitto, port), broker)) = side_by_side(&dir, "max_topic_alias 0\n", "max_topic_alias = 0\n") else {
        return;
    };
    // Mosquitto's limit: 200 separators.
    let most_levels = "a/".repeat(200) + "b";
    let too_many_levels = "a/".repeat(201) + "b";
    for level in [4u8, 5] {
        let good = connect_raw(level, b"c", None, None);
        let mut cases: Vec<(&str, Vec<Vec<u8>>)> = vec![
            ("accepted", vec![connect_raw(level, "é+#/x".as_bytes(), None, None)]),
            ("client id U+0000", vec![connect_raw(level, b"a\0b", None, None)]),
            ("client id U+0001", vec![connect_raw(level, b"a\x01b", None, None)]),
            ("client id U+007F", vec![connect_raw(level, b"a\x7fb", None, None)]),
            ("client id not UTF-8", vec![connect_raw(level, b"a\xffb", None, None)]),
            (
                "client id U+FFFE",
                vec![connect_raw(level, "a\u{fffe}".as_bytes(), None, None)],
            ),
            (
                "will topic +",
                vec![connect_raw(level, b"c", Some((b"w/+", b"m")), None)],
            ),
            (
                "will topic #",
                vec![connect_raw(level, b"c", Some((b"w/#", b"m")), None)],
            ),
            (
                "will topic empty",
                vec![connect_raw(level, b"c", Some((b"", b"m")), None)],
            ),
            (
                "will topic U+0000",
                vec![connect_raw(level, b"c", Some((b"w\0", b"m")), None)],
            ),
            ("user name U+0000", vec![connect_raw(level, b"c", None, Some(b"u\0"))]),
            (
                "user name U+0085",
                vec![connect_raw(level, b"c", None, Some("u\u{85}".as_bytes()))],
            ),
            (
                "publish é/x",
                vec![good.clone(), publish_raw(level, "é/x".as_bytes(), &[], 1)],
            ),
            ("publish +", vec![good.clone(), publish_raw(level, b"a/+", &[], 0)]),
            ("publish #", vec![good.clone(), publish_raw(level, b"a/#", &[], 1)]),
            ("publish U+0000", vec![good.clone(), publish_raw(level, b"a\0", &[], 0)]),
            (
                "publish U+001F",
                vec![good.clone(), publish_raw(level, b"a\x1f", &[], 0)],
            ),
            (
                "publish not UTF-8",
                vec![good.clone(), publish_raw(level, b"a\xc3", &[], 0)],
            ),
            (
                "publish 201 levels",
                vec![good.clone(), publish_raw(level, most_levels.as_bytes(), &[], 0)],
            ),
            (
                "publish 202 levels",
                vec![good.clone(), publish_raw(level, too_many_levels.as_bytes(), &[], 0)],
            ),
            ("subscribe a/#/b", vec![good.clone(), subscribe_raw(level, b"a/#/b")]),
            ("subscribe a+", vec![good.clone(), subscribe_raw(level, b"a+")]),
            ("subscribe U+0000", vec![good.clone(), subscribe_raw(level, b"a/\0")]),
            (
                "subscribe é/+",
                vec![good.clone(), subscribe_raw(level, "é/+".as_bytes())],
            ),
            ("unsubscribe a#", vec![good.clone(), unsubscribe_raw(level, b"a#")]),
        ];
        if level == 4 {
            // MQTT 5 has topic aliases: an empty topic is one that uses one.
            cases.push(("publish empty", vec![good.clone(), publish_raw(level, b"", &[], 0)]));
        } else {
            cases.push((
                "publish empty, no alias",
                vec![good.clone(), publish_raw(level, b"", &[], 0)],
            ));
            cases.push((
                "topic alias never offered",
                vec![good.clone(), publish_raw(level, b"t", &[0x23, 0, 1], 0)],
            ));
        }
        for (name, packets) in &cases {
            let mosquitto = outcome(addr(port), packets).await;
            let snigate = outcome(broker.addr, packets).await;
            assert_eq!(
                snigate, mosquitto,
                "MQTT level {level}, {name}: snigate-broker, then Mosquitto"
            );
        }
    }
    // Every refusal counted by field and problem, and the broker still serves.
    let metrics = metrics(&broker).await;
    for (labels, at_least) in [
        ("field=\"client_id\",problem=\"null_character\"", 2.0),
        ("field=\"will_topic\",problem=\"wildcard\"", 4.0),
        ("field=\"topic\",problem=\"too_many_levels\"", 2.0),
        ("field=\"filter\",problem=\"misplaced_wildcard\"", 6.0),
        ("field=\"property\",problem=\"topic_alias\"", 1.0),
    ] {
        let counted = metric_sum(&metrics, "snigate_broker_invalid_input_total", labels);
        assert!(counted >= at_least, "{labels}: {counted}\n{metrics}");
    }
    connected(broker.addr, "after", 0).await;
}

/// What the MQTT 5 strings of a PUBLISH may not hold: snigate-broker's answers
/// (Mosquitto closes without a reason for some of these; the specification
/// has the reason codes). [MQTT-3.3.2-14] (a response topic holds no
/// wildcards), [MQTT-3.3.4-6] (no subscription identifier from a client),
/// [MQTT-1.5.4-2] (no U+0000 in a user property).
#[tokio::test]
async fn mqtt_5_publish_properties_are_validated() {
    let broker = Broker::start(&[]);
    let good = connect_raw(5, b"c", None, None);
    let mut response_topic = vec![0x08];
    string(&mut response_topic, b"replies/+");
    for (name, properties, expected) in [
        ("response topic with +", response_topic, "DISCONNECT 0x82"),
        ("subscription identifier", vec![0x0b, 1], "DISCONNECT 0x82"),
        ("user property U+0000", user_property(b"k", b"v\0"), "DISCONNECT 0x81"),
    ] {
        let seen = outcome(broker.addr, &[good.clone(), publish_raw(5, b"t", &properties, 0)]).await;
        assert_eq!(seen, ["CONNACK 0", expected, "closed"], "{name}");
    }
    let fine = outcome(
        broker.addr,
        &[good, publish_raw(5, b"t", &user_property(b"k", b"v"), 1)],
    )
    .await;
    assert_eq!(fine, ["CONNACK 0", "PUBACK", "open"]);
}

/// The first crash: one MQTT 3.1.1 PUBLISH to `é/x` while any subscription
/// existed panicked rumqttd's router thread (`topic[..1]` cut inside a UTF-8
/// character), and nothing was routed for anyone after it. Mosquitto routes it
/// and everything after it; so must snigate-broker.
#[tokio::test]
async fn a_topic_starting_with_a_multibyte_character_is_routed() {
    let dir = TempDir::new();
    let Some(((_mosquitto, port), broker)) = side_by_side(&dir, "", "") else {
        return;
    };
    for server in [addr(port), broker.addr] {
        let mut subscriber = connected(server, "sub", 0).await;
        assert_eq!(raw::subscribe(&mut subscriber, "#", 0).await, 0);
        let mut publisher = connected(server, "pub", 0).await;
        raw::publish(&mut publisher, "é/x", b"1", 1, false).await;
        raw::publish(&mut publisher, "a/b", b"2", 1, false).await;
        for (topic, payload) in [("é/x", b"1"), ("a/b", b"2")] {
            let message = raw::next_message(&mut subscriber).await;
            assert_eq!(
                message.map(|m| (m.topic, m.payload)),
                Some((topic.to_owned(), payload.to_vec())),
                "{server}"
            );
        }
    }
    let health = http_get(broker.process.address("http"), "/healthz").await;
    assert_eq!(status(&health), "200", "{health}");
}

/// The second crash: an MQTT 5 PUBLISH with a user property, delivered to an
/// MQTT 3.1.1 subscriber, hit the 3.1.1 encoder's `unreachable!` and ended the
/// subscriber's connection; the message was lost. Mosquitto delivers it
/// without the properties (3.1.1 has none on the wire); so must
/// snigate-broker.
#[tokio::test]
async fn an_mqtt_5_message_with_properties_reaches_an_mqtt_3_subscriber() {
    let dir = TempDir::new();
    let Some(((_mosquitto, port), broker)) = side_by_side(&dir, "", "") else {
        return;
    };
    for server in [addr(port), broker.addr] {
        let mut subscriber = connected(server, "v4-sub", 0).await;
        assert_eq!(raw::subscribe(&mut subscriber, "props/#", 1).await, 1);
        let mut properties = user_property(b"k", b"v");
        properties.extend_from_slice(&[0x01, 1]); // payload format: UTF-8
        let seen = outcome(
            server,
            &[
                connect_raw(5, b"v5-pub", None, None),
                publish_raw(5, b"props/1", &properties, 1),
            ],
        )
        .await;
        assert_eq!(seen, ["CONNACK 0", "PUBACK", "open"], "{server}");
        let message = raw::next_message(&mut subscriber).await;
        assert_eq!(
            message,
            Some(Message {
                topic: "props/1".to_owned(),
                payload: b"m".to_vec(),
                qos: 1,
                retain: false,
            }),
            "{server}"
        );
        assert_pings(&mut subscriber).await;
    }
}

/// A will is sent only where the ACL lets its client write, checked when it
/// is sent, as Mosquitto checks it (`context__send_will`): a will may not go
/// where its client could not publish.
#[tokio::test]
async fn the_acl_applies_to_the_will() {
    let dir = TempDir::new();
    let acl = dir.path("acl");
    std::fs::write(&acl, "topic readwrite public/#\ntopic read secret/#\n").unwrap();
    let acl = acl.to_str().unwrap().to_owned();
    let Some(((_mosquitto, port), broker)) =
        side_by_side(&dir, &format!("acl_file {acl}\n"), &format!("acl_file = \"{acl}\"\n"))
    else {
        return;
    };
    for server in [addr(port), broker.addr] {
        let mut watcher = connected(server, "watcher", 0).await;
        assert_eq!(raw::subscribe(&mut watcher, "secret/#", 0).await, 0);
        assert_eq!(raw::subscribe(&mut watcher, "public/#", 0).await, 0);
        for topic in ["secret/will", "public/will"] {
            let mut vanishing = TcpStream::connect(server).await.unwrap();
            let login = Login {
                keep_alive: 60,
                will: Some((topic, b"gone", 0, false)),
                clean_session: true,
                ..Login::default()
            };
            assert_eq!(raw::connect(&mut vanishing, topic, &login).await, 0);
            // Closed without DISCONNECT: the will is due.
            drop(vanishing);
        }
        let message = raw::next_message(&mut watcher).await;
        assert_eq!(message.map(|m| m.topic), Some("public/will".to_owned()), "{server}");
    }
    let metrics = metrics(&broker).await;
    assert_eq!(
        metric_sum(&metrics, "snigate_broker_acl_denials_total", "kind=\"will\""),
        1.0
    );
}

/// `%c` and `%u` in ACL patterns: a client id or user name holding `+` or `#`
/// would widen the pattern it is put into (CVE-2017-7650). Mosquitto gives
/// such clients no pattern rule; so does snigate-broker. A victim's messages
/// do not reach a client named `+`, and what `+` publishes does not reach the
/// victim.
#[tokio::test]
async fn a_wildcard_client_id_gets_no_acl_pattern() {
    let dir = TempDir::new();
    let acl = dir.path("acl");
    std::fs::write(&acl, "pattern readwrite devices/%c/#\n").unwrap();
    let acl = acl.to_str().unwrap().to_owned();
    let Some(((_mosquitto, port), broker)) =
        side_by_side(&dir, &format!("acl_file {acl}\n"), &format!("acl_file = \"{acl}\"\n"))
    else {
        return;
    };
    for server in [addr(port), broker.addr] {
        let mut victim = connected(server, "d1", 0).await;
        assert_eq!(raw::subscribe(&mut victim, "devices/d1/#", 0).await, 0);
        let mut attacker = connected(server, "+", 0).await;
        // Mosquitto grants every SUBSCRIBE and filters at delivery;
        // snigate-broker refuses a filter nothing readable matches. Either
        // way the attacker gets nothing.
        raw::subscribe(&mut attacker, "devices/+/#", 0).await;
        raw::publish(&mut attacker, "devices/d1/cmd", b"forged", 1, false).await;
        // QoS 0: a QoS 1 flow would read (and drop) its own delivery.
        raw::publish(&mut victim, "devices/d1/state", b"mine", 0, false).await;
        let message = raw::next_message(&mut victim).await;
        assert_eq!(
            message.map(|m| m.payload),
            Some(b"mine".to_vec()),
            "{server} (Mosquitto on {port}): no forged message first"
        );
        let stolen = tokio::time::timeout(Duration::from_millis(500), raw::next_message(&mut attacker)).await;
        assert!(stolen.is_err() || stolen.is_ok_and(|m| m.is_none()), "{server}");
    }
}

/// Retained bytes are counted only for publishes that pass validation: a
/// refused publish used to be counted before rumqttd refused it, and enough
/// of them stopped retaining for everyone.
#[tokio::test]
async fn refused_publishes_take_no_retained_budget() {
    let dir = TempDir::new();
    let broker = Broker::with_config(
        &dir,
        "listen = [\"127.0.0.1:0\"]\nadmin = \"127.0.0.1:0\"\nallow_anonymous = true\nmax_retained_bytes = \"4KiB\"\n",
    );
    for n in 0..10 {
        let mut client = connected(broker.addr, "refused", 0).await;
        let mut publish = raw::publish_packet(&format!("bad/+/{n}"), &[b'x'; 1000], 0, 0);
        publish[0] |= 1;
        client.write_all(&publish).await.unwrap();
        let closed = tokio::time::timeout(STEP, raw::read_packet(&mut client)).await;
        assert!(closed.expect("closed in time").is_err(), "closed");
    }
    let mut publisher = connected(broker.addr, "good", 0).await;
    raw::publish(&mut publisher, "good", &[b'y'; 1000], 1, true).await;
    let mut subscriber = connected(broker.addr, "late", 0).await;
    assert_eq!(raw::subscribe(&mut subscriber, "good", 0).await, 0);
    let message = raw::next_message(&mut subscriber).await.expect("the retained message");
    assert!(message.retain);
    let metrics = metrics(&broker).await;
    // Topic and payload (and on the own core their record and levels): the
    // ten refused ones would be 10 KB more.
    let held = metric_sum(&metrics, "snigate_broker_retained_bytes", "");
    assert!((1004.0..2000.0).contains(&held), "retained bytes {held}");
}

/// A will is copied out of its CONNECT: the codec's topic and message were
/// slices of the buffer the CONNECT was read into, which they kept alive for
/// the connection's life (the password and whatever else it held). 300
/// clients each send a 1-byte will and a 64 KB password: kept, their CONNECTs
/// alone would be 19 MB.
#[tokio::test]
async fn a_will_does_not_keep_its_connect_alive() {
    let broker = Broker::start(&[]);
    let pid = broker.process.child.id();
    let before = rss(pid);
    let password = vec![b'p'; 64_000];
    let mut clients = Vec::new();
    for n in 0..300 {
        let id = format!("will-{n}");
        let connect = connect_with_password(4, id.as_bytes(), Some((b"w", b"x")), Some((b"u", &password)));
        let mut stream = TcpStream::connect(broker.addr).await.unwrap();
        stream.write_all(&connect).await.unwrap();
        let (first, body) = raw::read_packet(&mut stream).await.unwrap();
        assert_eq!((first, body[1]), (0x20, 0), "CONNACK accepted");
        clients.push(stream);
    }
    let grown = rss(pid).saturating_sub(before);
    // A connected client is about 10 KiB.
    assert!(
        grown < 8 << 20,
        "300 clients with wills grew the broker by {grown} bytes"
    );
}

/// Resident memory of `pid` now (VmRSS), in bytes.
fn rss(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let line = status.lines().find(|l| l.starts_with("VmRSS:")).unwrap();
    line.split_whitespace().nth(1).unwrap().parse::<u64>().unwrap() << 10
}

/// A client's `$` filters (served from `$SYS`, kept from rumqttd) are a set
/// with a bound: a repeated one is one subscription; past 64 a new one is
/// refused (0x80 on 3.1.1, 0x97 on 5), counted as a `filters` refusal.
#[tokio::test]
async fn sys_filters_are_bounded_per_client() {
    let dir = TempDir::new();
    let broker = Broker::with_config(
        &dir,
        "listen = [\"127.0.0.1:0\"]\nadmin = \"127.0.0.1:0\"\nallow_anonymous = true\n",
    );
    let mut client = connected(broker.addr, "sys", 0).await;
    for n in 0..64 {
        let code = raw::subscribe(&mut client, &format!("$SYS/broker/{n}"), 0).await;
        assert_eq!(code, 0, "filter {n}");
    }
    assert_eq!(
        raw::subscribe(&mut client, "$SYS/broker/0", 0).await,
        0,
        "one already held"
    );
    assert_eq!(raw::subscribe(&mut client, "$SYS/broker/64", 0).await, 0x80, "the 65th");
    let seen = outcome(
        broker.addr,
        &[connect_raw(5, b"sys5", None, None)]
            .into_iter()
            .chain((0..65).map(|n| subscribe_raw(5, format!("$SYS/x/{n}").as_bytes())))
            .collect::<Vec<_>>(),
    )
    .await;
    assert_eq!(seen.iter().filter(|s| *s == "SUBACK []").count(), 64, "{seen:?}");
    assert!(seen.contains(&"SUBACK [97]".to_owned()), "{seen:?}");
    assert_pings(&mut client).await;
    let metrics = metrics(&broker).await;
    assert_eq!(
        metric_sum(&metrics, "snigate_broker_limit_refusals_total", "limit=\"filters\""),
        2.0
    );
}

/// `max_inflight_messages` above 65,535 left no free packet id and made the
/// id search loop forever; it is now refused when the broker starts, naming
/// the setting, and 65,535 (Mosquitto's maximum) is accepted.
#[test]
fn max_inflight_messages_is_bounded_by_the_packet_ids() {
    let dir = TempDir::new();
    let path = dir.path("broker.toml");
    std::fs::write(&path, "listen = [\"127.0.0.1:0\"]\nmax_inflight_messages = 65536\n").unwrap();
    let out = Command::new(BIN)
        .args(["check", "--config", path.to_str().unwrap()])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{stderr}");
    assert!(
        stderr.contains("max_inflight_messages") && stderr.contains("65535"),
        "{stderr}"
    );
    std::fs::write(&path, "listen = [\"127.0.0.1:0\"]\nmax_inflight_messages = 65535\n").unwrap();
    let out = Command::new(BIN)
        .args(["check", "--config", path.to_str().unwrap()])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
}

/// A panic in a session ends only its connection, is logged with its client
/// id and counted, and its cleanup runs (a drop guard): the client id is
/// free again, the gauges are back, and everyone else goes on. The panic is
/// injected through the `fault-injection` feature, which tests turn on.
#[tokio::test]
async fn a_panicking_session_is_contained_and_cleaned_up() {
    let dir = TempDir::new();
    let broker = Broker::with_config(
        &dir,
        "listen = [\"127.0.0.1:0\"]\nadmin = \"127.0.0.1:0\"\nallow_anonymous = true\n",
    );
    let mut bystander = connected(broker.addr, "bystander", 0).await;
    assert_eq!(raw::subscribe(&mut bystander, "news/#", 0).await, 0);
    for round in 0..3 {
        let mut doomed = connected(broker.addr, "doomed", 0).await;
        assert_eq!(raw::subscribe(&mut doomed, "news/#", 0).await, 0);
        doomed
            .write_all(&raw::publish_packet("$snigate/fault/session-panic", b"", 0, 0))
            .await
            .unwrap();
        let read = tokio::time::timeout(STEP, raw::read_packet(&mut doomed)).await;
        assert!(
            read.expect("closed in time").is_err(),
            "round {round}: the connection is closed"
        );
    }
    let line = broker.process.line_async("the session panicked").await;
    assert!(
        line.contains("client_id=\"doomed\"") || line.contains("client_id=doomed"),
        "{line}"
    );
    // Everyone else goes on, and the client id is free.
    let mut again = connected(broker.addr, "doomed", 0).await;
    raw::publish(&mut again, "news/1", b"still here", 1, false).await;
    let message = raw::next_message(&mut bystander).await;
    assert_eq!(message.map(|m| m.payload), Some(b"still here".to_vec()));
    let metrics = metrics(&broker).await;
    assert_eq!(metric_sum(&metrics, "snigate_broker_session_panics_total", ""), 3.0);
    assert_eq!(
        metric_sum(&metrics, "snigate_broker_clients_connected", ""),
        2.0,
        "{metrics}"
    );
    assert_eq!(
        metric_sum(&metrics, "snigate_broker_subscriptions", ""),
        1.0,
        "{metrics}"
    );
    let health = http_get(broker.process.address("http"), "/healthz").await;
    assert_eq!(status(&health), "200", "{health}");
}

/// When a broker-wide task ends (here the session-expiry task, panicked
/// through the `fault-injection` feature), the broker says so in its log and
/// a metric, fails `/healthz` and `/readyz`, and exits non-zero, so that a
/// supervisor restarts it.
#[tokio::test]
async fn a_dead_broker_wide_task_fails_health_and_exits_non_zero() {
    let dir = TempDir::new();
    let mut broker = Broker::with_config(
        &dir,
        "listen = [\"127.0.0.1:0\"]\nadmin = \"127.0.0.1:0\"\nallow_anonymous = true\n",
    );
    let admin = broker.process.address("http");
    let mut client = connected(broker.addr, "trigger", 0).await;
    client
        .write_all(&raw::publish_packet("$snigate/fault/expiry-panic", b"", 0, 0))
        .await
        .unwrap();
    let line = broker.process.line_async("a broker-wide task has ended").await;
    assert!(line.contains("session_expiry"), "{line}");
    for path in ["/healthz", "/readyz"] {
        let answer = http_get(admin, path).await;
        assert_eq!(status(&answer), "503", "{path}: {answer}");
        assert!(answer.contains("failed: session_expiry"), "{path}: {answer}");
    }
    let metrics = http_get(admin, "/metrics").await;
    assert_eq!(
        metric_sum(
            &metrics,
            "snigate_broker_component_failures_total",
            "component=\"session_expiry\""
        ),
        1.0
    );
    let status = broker.process.wait(STEP).await;
    assert!(!status.success(), "{status:?}");
}
