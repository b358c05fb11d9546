//! The broker's own core (issue 19) on the real binary, beside Debian's
//! Mosquitto 2.0 with the same raw MQTT 3.1.1 clients: what rumqttd's router,
//! the broker's former core, got wrong and the own core does as the
//! specification says (each failed on the rumqttd core unless it says
//! otherwise).
#![allow(clippy::unwrap_used)] // a test binary: unwrap is an assertion

mod support;

use snigate_shared::testing::mqtt::{self as raw, Login};
use snigate_shared::testing::{STEP, TempDir};
use support::*;
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;

/// snigate-broker on the own core and Mosquitto, as (name, port) pairs with
/// the processes that keep them running; `None` where Mosquitto is missing
/// outside CI.
fn brokers(dir: &TempDir) -> Option<(Vec<(&'static str, u16)>, impl Sized)> {
    brokers_with(dir, "", "")
}

/// The same, with more of each one's configuration.
fn brokers_with(dir: &TempDir, mosquitto: &str, snigate: &str) -> Option<(Vec<(&'static str, u16)>, impl Sized)> {
    let (mosquitto, port) = start_mosquitto(dir, &format!("allow_anonymous true\n{mosquitto}"))?;
    let broker = Broker::with_config(dir, &format!("allow_anonymous = true\n{snigate}"));
    let servers = vec![("snigate", broker.addr.port()), ("mosquitto", port)];
    Some((servers, (mosquitto, broker)))
}

async fn client(port: u16, client_id: &str, login: &Login<'_>) -> (TcpStream, u8) {
    let mut stream = TcpStream::connect(("127.0.0.1", port)).await.unwrap();
    let code = raw::connect(&mut stream, client_id, login).await;
    (stream, code)
}

fn clean() -> Login<'static> {
    Login {
        clean_session: true,
        ..Login::default()
    }
}

fn persistent() -> Login<'static> {
    Login {
        clean_session: false,
        ..Login::default()
    }
}

/// A client subscribed to `wills/#` at `qos`.
async fn watching_wills(port: u16, qos: u8) -> TcpStream {
    let (mut watcher, _) = client(port, "watcher", &clean()).await;
    assert_eq!(raw::subscribe(&mut watcher, "wills/#", qos).await, qos);
    watcher
}

/// A login with a QoS 1 will, not retained.
fn with_will<'a>(clean_session: bool, topic: &'a str, message: &'a [u8]) -> Login<'a> {
    Login {
        clean_session,
        will: Some((topic, message, 1, false)),
        ..Login::default()
    }
}

/// A PUBLISH off the wire, unacknowledged: (DUP, QoS, packet id, payload).
async fn raw_publish(stream: &mut TcpStream) -> (bool, u8, u16, Vec<u8>) {
    loop {
        let (first, body) = tokio::time::timeout(STEP, raw::read_packet(stream))
            .await
            .expect("a PUBLISH in time")
            .unwrap();
        if first >> 4 != 3 {
            continue;
        }
        let qos = (first >> 1) & 3;
        let topic_len = usize::from(u16::from_be_bytes([body[0], body[1]]));
        let mut at = 2 + topic_len;
        let mut pkid = 0;
        if qos > 0 {
            pkid = u16::from_be_bytes([body[at], body[at + 1]]);
            at += 2;
        }
        return (first & 0x08 != 0, qos, pkid, body[at..].to_vec());
    }
}

/// [MQTT-3.8.4-6]: a message goes to a subscriber at the lower of its
/// published QoS and the subscription's. rumqttd delivered at the
/// subscription's.
#[tokio::test]
async fn delivery_qos_is_the_lower_of_the_publish_and_the_subscription() {
    let dir = TempDir::new();
    let Some((servers, _running)) = brokers(&dir) else {
        return;
    };
    for (server, port) in servers {
        let (mut low, _) = client(port, "low", &clean()).await;
        let (mut high, _) = client(port, "high", &clean()).await;
        assert_eq!(raw::subscribe(&mut low, "q/t", 1).await, 1, "{server}");
        assert_eq!(raw::subscribe(&mut high, "q/t", 2).await, 2, "{server}");
        let (mut publisher, _) = client(port, "pub", &clean()).await;
        for (published, to_low, to_high) in [(2, 1, 2), (1, 1, 1), (0, 0, 0)] {
            raw::publish(&mut publisher, "q/t", b"m", published, false).await;
            let got_low = raw::next_message(&mut low).await.expect("low").qos;
            let got_high = raw::next_message(&mut high).await.expect("high").qos;
            assert_eq!(
                (got_low, got_high),
                (to_low, to_high),
                "{server}: published at {published}"
            );
        }
    }
}

/// [MQTT-3.1.2-5], [MQTT-3.2.2-3]: a persistent session keeps its
/// subscriptions and the QoS 1 and 2 messages that arrive while its client is
/// away, and says so in CONNACK.
#[tokio::test]
async fn a_persistent_session_gets_what_came_while_its_client_was_away() {
    let dir = TempDir::new();
    let Some((servers, _running)) = brokers(&dir) else {
        return;
    };
    for (server, port) in servers {
        let (mut away, code) = client(port, "away", &persistent()).await;
        assert_eq!(code, 0);
        assert_eq!(raw::subscribe(&mut away, "away/#", 1).await, 1);
        away.write_all(&raw::packet(0xE0, &[])).await.unwrap();
        drop(away);
        let (mut publisher, _) = client(port, "pub", &clean()).await;
        raw::publish(&mut publisher, "away/1", b"while away", 1, false).await;
        raw::publish(&mut publisher, "away/2", b"qos 0, not kept", 0, false).await;
        raw::publish(&mut publisher, "away/3", b"and this", 1, false).await;
        let mut back = TcpStream::connect(("127.0.0.1", port)).await.unwrap();
        back.write_all(&raw::connect_with("away", &persistent())).await.unwrap();
        let (first, body) = raw::read_packet(&mut back).await.unwrap();
        assert_eq!(
            (first, body[0], body[1]),
            (0x20, 1, 0),
            "{server}: CONNACK, session present"
        );
        let first = raw::next_message(&mut back).await.expect("queued");
        let second = raw::next_message(&mut back).await.expect("queued");
        assert_eq!(
            (first.payload.as_slice(), second.payload.as_slice(), first.qos),
            (&b"while away"[..], &b"and this"[..], 1),
            "{server}: in order, QoS 0 not queued for an away client"
        );
    }
}

/// With `queue_qos0_messages` (Mosquitto's setting, off by default), QoS 0
/// messages wait for an away persistent session too, in order with the rest.
#[tokio::test]
async fn queue_qos0_messages_keeps_qos_0_for_an_away_client() {
    let dir = TempDir::new();
    let setting = ("queue_qos0_messages true\n", "queue_qos0_messages = true\n");
    let Some((servers, _running)) = brokers_with(&dir, setting.0, setting.1) else {
        return;
    };
    for (server, port) in servers {
        let (mut away, _) = client(port, "away0", &persistent()).await;
        assert_eq!(raw::subscribe(&mut away, "away0/#", 1).await, 1);
        away.write_all(&raw::packet(0xE0, &[])).await.unwrap();
        drop(away);
        let (mut publisher, _) = client(port, "pub", &clean()).await;
        raw::publish(&mut publisher, "away0/1", b"qos 0, kept", 0, false).await;
        raw::publish(&mut publisher, "away0/2", b"qos 1", 1, false).await;
        let (mut back, present, _) = connack(port, "away0", &persistent()).await;
        assert!(present, "{server}");
        let first = raw::next_message(&mut back).await.expect("queued");
        let second = raw::next_message(&mut back).await.expect("queued");
        assert_eq!(
            (first.payload.as_slice(), first.qos, second.payload.as_slice()),
            (&b"qos 0, kept"[..], 0, &b"qos 1"[..]),
            "{server}"
        );
    }
}

/// [MQTT-4.4.0-1], [MQTT-3.3.1-1]: a QoS 1 message not acknowledged when the
/// connection dropped is sent again on resume, with its packet id and DUP
/// set. rumqttd did not send it again.
#[tokio::test]
async fn an_unacknowledged_message_is_sent_again_with_dup_when_the_session_resumes() {
    let dir = TempDir::new();
    let Some((servers, _running)) = brokers(&dir) else {
        return;
    };
    for (server, port) in servers {
        let (mut subscriber, _) = client(port, "resume1", &persistent()).await;
        assert_eq!(raw::subscribe(&mut subscriber, "r/1", 1).await, 1);
        let (mut publisher, _) = client(port, "pub", &clean()).await;
        raw::publish(&mut publisher, "r/1", b"once", 1, false).await;
        let (dup, qos, pkid, payload) = raw_publish(&mut subscriber).await;
        assert_eq!((dup, qos, payload.as_slice()), (false, 1, &b"once"[..]), "{server}");
        // Gone without PUBACK (and without DISCONNECT).
        drop(subscriber);
        let (mut back, _) = client(port, "resume1", &persistent()).await;
        let again = raw_publish(&mut back).await;
        assert_eq!(
            again,
            (true, 1, pkid, b"once".to_vec()),
            "{server}: sent again, DUP set"
        );
    }
}

/// MQTT 3.1.1 §4.3.3, [MQTT-4.4.0-1]: a QoS 2 message whose PUBREC the broker
/// had is never sent again; after a reconnect the broker sends its PUBREL
/// again, and the client completes with PUBCOMP: delivered exactly once.
#[tokio::test]
async fn qos_2_is_delivered_exactly_once_across_a_reconnect() {
    let dir = TempDir::new();
    let Some((servers, _running)) = brokers(&dir) else {
        return;
    };
    for (server, port) in servers {
        let (mut subscriber, _) = client(port, "exactly", &persistent()).await;
        assert_eq!(raw::subscribe(&mut subscriber, "x/1", 2).await, 2);
        let (mut publisher, _) = client(port, "pub", &clean()).await;
        raw::publish(&mut publisher, "x/1", b"exactly once", 2, false).await;
        let (_, qos, pkid, _) = raw_publish(&mut subscriber).await;
        assert_eq!(qos, 2, "{server}");
        subscriber
            .write_all(&raw::packet(0x50, &pkid.to_be_bytes()))
            .await
            .unwrap();
        let (first, body) = raw::read_packet(&mut subscriber).await.unwrap();
        assert_eq!((first, &body[..2]), (0x62, &pkid.to_be_bytes()[..]), "{server}: PUBREL");
        // Gone before PUBCOMP.
        drop(subscriber);
        let (mut back, _) = client(port, "exactly", &persistent()).await;
        let (first, body) = tokio::time::timeout(STEP, raw::read_packet(&mut back))
            .await
            .expect("the PUBREL again")
            .unwrap();
        assert_eq!(
            (first, &body[..2]),
            (0x62, &pkid.to_be_bytes()[..]),
            "{server}: PUBREL again, no PUBLISH"
        );
        back.write_all(&raw::packet(0x70, &pkid.to_be_bytes())).await.unwrap();
        raw::publish(&mut publisher, "x/1", b"next", 2, false).await;
        let next = raw::next_message(&mut back).await.expect("the next message");
        assert_eq!(next.payload, b"next", "{server}: the first was not delivered twice");
    }
}

/// [MQTT-3.1.2-8], [MQTT-3.1.2-14]: the will of a connection that ends
/// without DISCONNECT is published with its own QoS (then the lower of that
/// and the subscription's). rumqttd published it at QoS 0.
#[tokio::test]
async fn a_will_is_published_with_its_own_qos() {
    let dir = TempDir::new();
    let Some((servers, _running)) = brokers(&dir) else {
        return;
    };
    for (server, port) in servers {
        let mut watcher = watching_wills(port, 2).await;
        let will = with_will(true, "wills/dev", b"gone");
        let (dying, _) = client(port, "dev", &will).await;
        drop(dying);
        let message = raw::next_message(&mut watcher).await.expect("the will");
        assert_eq!((message.payload.as_slice(), message.qos), (&b"gone"[..], 1), "{server}");
    }
}

/// CONNECT, and the CONNACK's Session Present flag and return code.
async fn connack(port: u16, client_id: &str, login: &Login<'_>) -> (TcpStream, bool, u8) {
    let mut stream = TcpStream::connect(("127.0.0.1", port)).await.unwrap();
    stream.write_all(&raw::connect_with(client_id, login)).await.unwrap();
    let (first, body) = tokio::time::timeout(STEP, raw::read_packet(&mut stream))
        .await
        .expect("a CONNACK in time")
        .unwrap();
    assert_eq!(first, 0x20, "CONNACK");
    (stream, body[0] & 1 == 1, body[1])
}

/// Whether the server closes `stream` in time (reading past what it sent).
async fn closed(stream: &mut TcpStream) -> bool {
    let deadline = tokio::time::Instant::now() + STEP;
    while let Ok(read) = tokio::time::timeout_at(deadline, raw::read_packet(stream)).await {
        if read.is_err() {
            return true;
        }
    }
    false
}

/// [MQTT-3.1.4-2]: a second connection with a client id takes it over and
/// the first is closed. Its session had clean session set, so it lasted
/// only as long as that connection (§3.1.2.4): the second finds none
/// ([MQTT-3.2.2-3], Session Present 0) and the first's will is published,
/// its connection having ended without DISCONNECT ([MQTT-3.1.2-8]), as
/// Mosquitto publishes it. rumqttd resumed the session and sent no will.
#[tokio::test]
async fn a_clean_session_taken_over_ends_and_its_will_is_published() {
    let dir = TempDir::new();
    let Some((servers, _running)) = brokers(&dir) else {
        return;
    };
    for (server, port) in servers {
        let mut watcher = watching_wills(port, 1).await;
        let will = with_will(true, "wills/dev", b"taken over");
        let (mut first, _, code) = connack(port, "dev", &will).await;
        assert_eq!(code, 0);
        assert_eq!(raw::subscribe(&mut first, "dev/commands", 1).await, 1);
        let (_second, present, code) = connack(port, "dev", &persistent()).await;
        assert_eq!((present, code), (false, 0), "{server}: no session to resume");
        assert!(closed(&mut first).await, "{server}: the first connection is closed");
        let message = raw::next_message(&mut watcher).await.expect("the will");
        assert_eq!(message.payload, b"taken over", "{server}");
    }
}

/// [MQTT-3.1.4-2], [MQTT-3.2.2-2]: a persistent session taken over by a
/// connection without clean session is resumed (Session Present 1), and the
/// first connection's will is not published, as Mosquitto decides
/// (`connect__on_authorised`: the session goes on, so the will is cleared).
/// The rumqttd core does the same.
#[tokio::test]
async fn a_persistent_session_taken_over_is_resumed_without_its_will() {
    let dir = TempDir::new();
    let Some((servers, _running)) = brokers(&dir) else {
        return;
    };
    for (server, port) in servers {
        let mut watcher = watching_wills(port, 1).await;
        let will = with_will(false, "wills/kept", b"should not come");
        let (mut first, _, _) = connack(port, "kept", &will).await;
        assert_eq!(raw::subscribe(&mut first, "kept/commands", 1).await, 1);
        let (mut second, present, code) = connack(port, "kept", &persistent()).await;
        assert_eq!((present, code), (true, 0), "{server}: the session is resumed");
        assert!(closed(&mut first).await, "{server}: the first connection is closed");
        assert_eq!(drain(&mut watcher).await, 0, "{server}: no will");
        // The subscription came with the session.
        let (mut publisher, _) = client(port, "pub", &clean()).await;
        raw::publish(&mut publisher, "kept/commands", b"still here", 1, false).await;
        let message = raw::next_message(&mut second)
            .await
            .expect("a message on the resumed subscription");
        assert_eq!(message.payload, b"still here", "{server}");
    }
}

/// §4.3.3, [MQTT-4.4.0-1]: a client whose QoS 2 PUBLISH got no PUBREC before
/// its connection broke sends it again (DUP set) after reconnecting to its
/// persistent session; the broker, which had it, does not deliver it twice.
/// The rumqttd core does the same; the own core keeps the ids in the session.
#[tokio::test]
async fn a_qos_2_publish_sent_again_after_a_reconnect_is_delivered_once() {
    let dir = TempDir::new();
    let Some((servers, _running)) = brokers(&dir) else {
        return;
    };
    for (server, port) in servers {
        let (mut subscriber, _) = client(port, "reader", &clean()).await;
        assert_eq!(raw::subscribe(&mut subscriber, "in/once", 0).await, 0);
        let pkid = 7u16;
        let (mut publisher, _) = client(port, "sender", &persistent()).await;
        publisher
            .write_all(&raw::publish_packet("in/once", b"once", 2, pkid))
            .await
            .unwrap();
        let (first, body) = tokio::time::timeout(STEP, raw::read_packet(&mut publisher))
            .await
            .expect("a PUBREC")
            .unwrap();
        assert_eq!((first, &body[..]), (0x50, &pkid.to_be_bytes()[..]), "{server}: PUBREC");
        // Gone as if the PUBREC had been lost.
        drop(publisher);
        let (mut back, present, _) = connack(port, "sender", &persistent()).await;
        assert!(present, "{server}");
        let mut again = raw::publish_packet("in/once", b"once", 2, pkid);
        again[0] |= 0x08;
        back.write_all(&again).await.unwrap();
        back.write_all(&raw::packet(0x62, &pkid.to_be_bytes())).await.unwrap();
        loop {
            let (first, body) = tokio::time::timeout(STEP, raw::read_packet(&mut back))
                .await
                .expect("PUBREC, then PUBCOMP")
                .unwrap();
            assert_eq!(body, pkid.to_be_bytes(), "{server}");
            match first {
                0x50 => continue,
                0x70 => break,
                other => panic!("{server}: unexpected packet {other:#x}"),
            }
        }
        assert_eq!(drain(&mut subscriber).await, 1, "{server}: delivered once");
    }
}

/// `$SYS` topics are retained messages the broker publishes: a new
/// subscription gets the current value with the retain flag set
/// ([MQTT-3.3.1-8]), a change after that comes without it ([MQTT-3.3.1-9]),
/// as Mosquitto sends them; a client cannot publish there (Mosquitto's
/// `acl__check_dollar`), and `#` does not reach them ([MQTT-4.7.2-1]). The
/// rumqttd core sent every snapshot as retained.
#[tokio::test]
async fn sys_topics_are_retained_messages_the_broker_publishes() {
    let dir = TempDir::new();
    let Some((mosquitto, port)) = start_mosquitto(&dir, "allow_anonymous true\nsys_interval 1\n") else {
        return;
    };
    let broker = Broker::with_config(&dir, "allow_anonymous = true\nsys_interval = \"1s\"\n");
    let _running = (mosquitto, &broker);
    for (server, port) in [("snigate", broker.addr.port()), ("mosquitto", port)] {
        let (mut everything, _) = client(port, "everything", &clean()).await;
        assert_eq!(raw::subscribe(&mut everything, "#", 0).await, 0);
        let (mut dashboard, _) = client(port, "dashboard", &clean()).await;
        raw::subscribe(&mut dashboard, "$SYS/broker/uptime", 0).await;
        let first = raw::next_message(&mut dashboard).await.expect("the retained value");
        assert!(first.retain, "{server}: {first:?}");
        let (mut spoofer, _) = client(port, "spoofer", &clean()).await;
        raw::publish(&mut spoofer, "$SYS/broker/uptime", b"forged", 1, false).await;
        let next = tokio::time::timeout(std::time::Duration::from_secs(3), raw::next_message(&mut dashboard))
            .await
            .expect("the next value in time")
            .expect("the next value");
        assert!(!next.retain, "{server}: {next:?}");
        assert_ne!(next.payload, b"forged", "{server}");
        assert_ne!(next.payload, first.payload, "{server}");
        assert_eq!(drain(&mut everything).await, 0, "{server}: `#` gets no `$SYS`");
    }
}

/// MQTT 5 §4.8.2 (Mosquitto offers it to MQTT 3.1.1 clients too): each
/// message on a shared subscription goes to one member of the group, in
/// turn; a plain subscriber to the same filter gets every one.
#[tokio::test]
async fn a_shared_subscription_gives_each_message_to_one_member() {
    let dir = TempDir::new();
    let Some((servers, _running)) = brokers(&dir) else {
        return;
    };
    for (server, port) in servers {
        let (mut first, _) = client(port, "worker1", &clean()).await;
        let (mut second, _) = client(port, "worker2", &clean()).await;
        let (mut everything, _) = client(port, "all", &clean()).await;
        assert_eq!(raw::subscribe(&mut first, "$share/workers/jobs/+", 1).await, 1);
        assert_eq!(raw::subscribe(&mut second, "$share/workers/jobs/+", 1).await, 1);
        assert_eq!(raw::subscribe(&mut everything, "jobs/+", 1).await, 1);
        let (mut publisher, _) = client(port, "pub", &clean()).await;
        for n in 0..4 {
            raw::publish(&mut publisher, &format!("jobs/{n}"), b"job", 1, false).await;
        }
        let (a, b, all) = (
            drain(&mut first).await,
            drain(&mut second).await,
            drain(&mut everything).await,
        );
        assert_eq!((a, b, all), (2, 2, 4), "{server}: one member per message, in turn");
    }
}

/// How many messages come within a short wait each.
async fn drain(stream: &mut TcpStream) -> usize {
    let mut n = 0;
    while tokio::time::timeout(std::time::Duration::from_millis(300), raw::next_message(stream))
        .await
        .is_ok_and(|m| m.is_some())
    {
        n += 1;
    }
    n
}
