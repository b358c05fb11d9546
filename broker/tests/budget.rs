//! The memory budget, on the real binary: floods at subscribers that stop
//! reading, the connection cap, and PROXY protocol headers on a listener.
#![allow(clippy::unwrap_used)] // a test binary: unwrap is an assertion

use std::net::SocketAddr;
use std::process::Command;
use std::time::Duration;

use snigate_shared::testing::mqtt::{connect_packet, packet, publish_packet, read_packet, subscribe};
use snigate_shared::testing::{Process, STEP, TempDir};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::tcp::OwnedWriteHalf;
use tokio::net::{TcpSocket, TcpStream};

mod support;
use support::*;

/// The budget the flood tests give the broker. Its peak RSS must stay below.
const MEMORY_LIMIT_MIB: u64 = 64;
/// What each flood sends: 1,280 messages of 64 KiB, 80 MiB in all, more than
/// the whole budget, so that a broker keeping it all would exceed it (bounded
/// in count; the publisher is also bounded in time by the test's timeouts).
const FLOOD_MESSAGES: usize = 1280;
const FLOOD_PAYLOAD: usize = 64 << 10;

fn budget_broker(dir: &TempDir, extra: &str) -> (Process, SocketAddr, SocketAddr) {
    let config = dir.path("broker.toml");
    std::fs::write(
        &config,
        format!(
            "listen = [\"127.0.0.1:0\"]\nadmin = \"127.0.0.1:0\"\nallow_anonymous = true\nmemory_limit = \"{MEMORY_LIMIT_MIB}MiB\"\n{extra}"
        ),
    )
    .unwrap();
    let mut command = Command::new(BIN);
    command.arg("--config").arg(&config);
    let process = Process::spawn("broker", command);
    let mqtt = process.address("mqtt");
    let admin = process.address("http");
    (process, mqtt, admin)
}

/// Peak resident memory of `pid` so far (VmHWM), in bytes.
fn peak_rss(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let line = status.lines().find(|l| l.starts_with("VmHWM:")).unwrap();
    let kib: u64 = line.split_whitespace().nth(1).unwrap().parse().unwrap();
    kib << 10
}

/// A subscriber that stops reading after its SUBACK, with a small receive
/// buffer so that the kernel does not absorb the flood for it.
async fn stalled_subscriber(addr: SocketAddr, filter: &str, qos: u8) -> TcpStream {
    let socket = TcpSocket::new_v4().unwrap();
    socket.set_recv_buffer_size(4096).unwrap();
    let mut stream = socket.connect(addr).await.unwrap();
    stream.write_all(&connect_packet("stalled", 0)).await.unwrap();
    assert_eq!(read_connack(&mut stream).await, [0x20, 2, 0, 0]);
    assert_eq!(subscribe(&mut stream, filter, qos).await, qos);
    stream
}

/// A subscriber that reads everything, acknowledging QoS 1, and counts the
/// messages whose topic is `flood/data` until one on `flood/done` arrives.
async fn reading_subscriber(addr: SocketAddr, qos: u8) -> tokio::task::JoinHandle<usize> {
    let mut stream = connected(addr, "reader", 0).await;
    assert_eq!(subscribe(&mut stream, "flood/#", qos).await, qos);
    tokio::spawn(async move {
        let mut received = 0;
        loop {
            let (first, body) = tokio::time::timeout(Duration::from_secs(60), read_packet(&mut stream))
                .await
                .expect("the reader kept receiving")
                .unwrap();
            if first >> 4 != 3 {
                continue;
            }
            let topic_len = usize::from(u16::from_be_bytes([body[0], body[1]]));
            let topic = &body[2..2 + topic_len];
            if (first >> 1) & 3 == 1 {
                let pkid = &body[2 + topic_len..4 + topic_len];
                stream.write_all(&packet(0x40, pkid)).await.unwrap();
            }
            match topic {
                b"flood/data" => received += 1,
                b"flood/done" => return received,
                _ => {}
            }
        }
    })
}

/// Publish the flood at `qos` as fast as the broker takes it, reading its
/// PUBACKs on the side; returns the connection, still open.
async fn publish_flood(addr: SocketAddr, qos: u8) -> (OwnedWriteHalf, tokio::task::JoinHandle<()>) {
    let stream = connected(addr, "flooder", 0).await;
    let (mut acks, mut writer) = stream.into_split();
    let drain = tokio::spawn(async move { while read_packet(&mut acks).await.is_ok() {} });
    let payload = vec![b'x'; FLOOD_PAYLOAD];
    for i in 0..FLOOD_MESSAGES {
        let pkid = (i % 60_000 + 1) as u16;
        let publish = publish_packet("flood/data", &payload, qos, pkid);
        tokio::time::timeout(Duration::from_secs(30), writer.write_all(&publish))
            .await
            .expect("the broker kept taking the flood")
            .unwrap();
    }
    (writer, drain)
}

/// The flood, then `flood/done` until the reader has seen it.
async fn flood(addr: SocketAddr, qos: u8, reader: tokio::task::JoinHandle<usize>) -> usize {
    let (mut writer, drain) = publish_flood(addr, qos).await;
    let mut reader = reader;
    for _ in 0..100 {
        writer
            .write_all(&publish_packet("flood/done", b"", 0, 0))
            .await
            .unwrap();
        if let Ok(received) = tokio::time::timeout(Duration::from_millis(200), &mut reader).await {
            drain.abort();
            return received.unwrap();
        }
    }
    panic!("the reading subscriber never saw the end of the flood");
}

async fn a_stalled_subscriber_costs_its_queue_not_the_brokers_memory(qos: u8) {
    let dir = TempDir::new();
    let (process, mqtt, admin) = budget_broker(&dir, "");
    let _stalled = stalled_subscriber(mqtt, "flood/#", qos).await;
    let reader = reading_subscriber(mqtt, qos).await;
    let received = flood(mqtt, qos, reader).await;

    let peak = peak_rss(process.child.id());
    assert!(
        peak < MEMORY_LIMIT_MIB << 20,
        "peak RSS {} MiB over the {MEMORY_LIMIT_MIB} MiB budget",
        peak >> 20
    );
    // A reader starved by the stalled subscriber's queue would get next to
    // nothing once the budget is spent. How much of the rest it gets is a
    // race between its reads and the flood: 60 % alone on two cores, 49 % with
    // other work on them (seen in CI). A quarter is
    // the bound that tells the two apart without depending on the machine.
    assert!(
        received >= FLOOD_MESSAGES / 4,
        "the reading subscriber kept receiving: {received} of {FLOOD_MESSAGES}"
    );
    let metrics = http_get(admin, "/metrics").await;
    let qos_label = format!("qos=\"{qos}\"");
    let dropped = metric_sum(&metrics, "snigate_broker_messages_dropped_total", &qos_label);
    assert!(
        dropped >= (FLOOD_MESSAGES / 2) as f64,
        "the stalled subscriber's messages were dropped and counted: {dropped}"
    );
    eprintln!(
        "QoS {qos}: peak RSS {} MiB, reader got {received}/{FLOOD_MESSAGES}, {dropped} dropped",
        peak >> 20
    );
}

#[tokio::test]
async fn a_qos_0_flood_at_a_subscriber_that_never_reads_stays_within_the_budget() {
    a_stalled_subscriber_costs_its_queue_not_the_brokers_memory(0).await;
}

#[tokio::test]
async fn a_qos_1_flood_at_a_subscriber_that_never_reads_stays_within_the_budget() {
    a_stalled_subscriber_costs_its_queue_not_the_brokers_memory(1).await;
}

/// Large messages on many filters at a subscriber that never reads: with
/// rumqttd's router (the broker's former core) every filter's log held
/// `max_segment_count` of them (here 40 filters x 4 x 480 KiB = 75 MiB, over
/// the whole budget). Each message is held once, shared by the queues it is
/// in, and the stalled subscriber's queue stops at `max_queued_bytes`: the
/// rest is dropped, counted, and RSS stays within the budget.
#[tokio::test]
async fn large_messages_on_many_filters_stay_within_the_budget() {
    const FILTERS: usize = 40;
    const PAYLOAD: usize = 480 << 10;
    let dir = TempDir::new();
    let (process, mqtt, admin) = budget_broker(&dir, "");
    let filters: Vec<String> = (0..FILTERS).map(|i| format!("big/{i}")).collect();
    let mut holder = stalled_subscriber(mqtt, &filters[0], 0).await;
    for filter in &filters[1..] {
        assert_eq!(subscribe(&mut holder, filter, 0).await, 0);
    }
    let mut publisher = connected(mqtt, "big-publisher", 0).await;
    let payload = vec![b'x'; PAYLOAD];
    for round in 0..4 {
        for filter in &filters {
            tokio::time::timeout(
                Duration::from_secs(30),
                publisher.write_all(&publish_packet(filter, &payload, 0, 0)),
            )
            .await
            .unwrap_or_else(|_| panic!("the broker kept taking round {round}"))
            .unwrap();
        }
    }
    assert_pings(&mut publisher).await;
    let metrics = http_get(admin, "/metrics").await;
    let dropped = metric_sum(&metrics, "snigate_broker_messages_dropped_total", "");
    let peak = peak_rss(process.child.id());
    eprintln!("{dropped} messages dropped, peak RSS {} MiB", peak >> 20);
    assert!(dropped > 0.0, "what did not fit was dropped, counted:\n{metrics}");
    assert!(
        peak < MEMORY_LIMIT_MIB << 20,
        "peak RSS {} MiB over the {MEMORY_LIMIT_MIB} MiB budget",
        peak >> 20
    );
}

/// A publisher inventing topics under a subscribed wildcard (20,000 x 1 KiB
/// topics, about 21 MiB): rumqttd's router cached each topic's matching
/// filters, within a bound the fork added. The own core keeps nothing per
/// topic published: RSS stays far below the budget.
#[tokio::test]
async fn invented_topics_leave_nothing_behind() {
    const TOPICS: usize = 20_000;
    let dir = TempDir::new();
    let (process, mqtt, _admin) = budget_broker(&dir, "");
    let _subscriber = stalled_subscriber(mqtt, "invented/#", 0).await;
    let mut publisher = connected(mqtt, "inventor", 0).await;
    let padding = "p".repeat(1000);
    let mut batch = Vec::new();
    for i in 0..TOPICS {
        batch.extend_from_slice(&publish_packet(&format!("invented/{padding}/{i}"), b"1", 0, 0));
        if batch.len() > 64 << 10 || i == TOPICS - 1 {
            tokio::time::timeout(Duration::from_secs(30), publisher.write_all(&batch))
                .await
                .expect("the broker kept taking topics")
                .unwrap();
            batch.clear();
        }
    }
    assert_pings(&mut publisher).await;
    let peak = peak_rss(process.child.id());
    eprintln!("peak RSS {} MiB after {TOPICS} topics", peak >> 20);
    assert!(
        peak < (MEMORY_LIMIT_MIB << 20) / 2,
        "peak RSS {} MiB: the topics were kept",
        peak >> 20
    );
}

#[tokio::test]
async fn queue_full_disconnect_ends_a_stalled_qos_1_subscriber() {
    let dir = TempDir::new();
    let (process, mqtt, admin) = budget_broker(
        &dir,
        "queue_full = \"disconnect\"\nmax_queued_bytes = \"2MiB\"\nmax_inflight_messages = 100\n",
    );
    let mut stalled = stalled_subscriber(mqtt, "flood/#", 1).await;
    // No reading subscriber here: at this speed a reader may fall its own
    // 2 MiB behind and be disconnected by the same policy.
    let _flooder = publish_flood(mqtt, 1).await;
    process.line_async("end=\"slow_consumer\"").await;
    // The stalled client finds its connection closed once it reads again.
    let mut sink = vec![0; 1 << 20];
    let closed = tokio::time::timeout(STEP, async {
        loop {
            match stalled.read(&mut sink).await {
                Ok(0) | Err(_) => return,
                Ok(_) => {}
            }
        }
    })
    .await;
    assert!(closed.is_ok(), "the slow consumer was disconnected");
    // What its queue held went back to the shared budget with it.
    let mut queued = f64::NAN;
    for _ in 0..50 {
        let metrics = http_get(admin, "/metrics").await;
        queued = metric_sum(&metrics, "snigate_broker_queued_bytes", "");
        if queued == 0.0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(queued, 0.0, "queued bytes once every queue is gone");
}

/// With `queue_full = "disconnect"`, an MQTT 5 client is told why: DISCONNECT
/// 0x97 (quota exceeded) after what was written before it, which it finds once
/// it reads again.
#[tokio::test]
async fn an_mqtt_5_slow_consumer_is_told_its_quota_was_exceeded() {
    let dir = TempDir::new();
    let (process, mqtt, _admin) = budget_broker(
        &dir,
        "queue_full = \"disconnect\"\nmax_queued_bytes = \"2MiB\"\nmax_inflight_messages = 100\n",
    );
    let socket = TcpSocket::new_v4().unwrap();
    socket.set_recv_buffer_size(4096).unwrap();
    let mut stalled = socket.connect(mqtt).await.unwrap();
    stalled.write_all(&connect_v5("stalled5")).await.unwrap();
    let (first, body) = read_packet(&mut stalled).await.unwrap();
    assert_eq!((first, body[1]), (0x20, 0), "CONNACK {body:?}");
    // SUBSCRIBE at MQTT 5: packet id 1, no properties, flood/# at QoS 1.
    let mut subscribe_v5 = vec![0, 1, 0, 0, 7];
    subscribe_v5.extend_from_slice(b"flood/#");
    subscribe_v5.push(1);
    stalled.write_all(&packet(0x82, &subscribe_v5)).await.unwrap();
    let (first, body) = read_packet(&mut stalled).await.unwrap();
    assert_eq!((first, body[3]), (0x90, 1), "SUBACK {body:?}");

    let flooding = tokio::spawn(publish_flood(mqtt, 1));
    process
        .line_async("slow consumer: its queue is full; disconnecting")
        .await;
    let mut last = None;
    while let Ok(packet) = tokio::time::timeout(STEP, read_packet(&mut stalled))
        .await
        .expect("the slow consumer's connection ends")
    {
        last = Some(packet);
    }
    let (first, body) = last.expect("packets before the end");
    assert_eq!((first, body.first().copied()), (0xE0, Some(0x97)), "the last packet");
    process.line_async("end=\"slow_consumer\"").await;
    let _flooder = flooding.await.unwrap();
}

/// A socket holds a connection slot from accept: sockets that never send
/// CONNECT fill `max_connections` as clients do. Beyond it a few sockets are
/// told "busy", and beyond those a socket is closed at once.
#[tokio::test]
async fn sockets_that_never_send_connect_count_against_the_connection_cap() {
    let dir = TempDir::new();
    let (_process, mqtt, admin) = budget_broker(&dir, "max_connections = 2\n");
    let mut silent = Vec::new();
    for _ in 0..2 {
        silent.push(TcpStream::connect(mqtt).await.unwrap());
    }
    let mut late = TcpStream::connect(mqtt).await.unwrap();
    late.write_all(&connect_packet("late", 0)).await.unwrap();
    assert_eq!(read_connack(&mut late).await, [0x20, 2, 0, 3], "server unavailable");

    for _ in 0..snigate_broker::BUSY_ANSWERS {
        silent.push(TcpStream::connect(mqtt).await.unwrap());
    }
    let mut beyond = TcpStream::connect(mqtt).await.unwrap();
    let mut byte = [0; 1];
    let read = tokio::time::timeout(STEP, beyond.read(&mut byte))
        .await
        .expect("closed at once, not left waiting");
    assert!(matches!(read, Ok(0) | Err(_)), "{read:?}");

    // The silent ones leave; their slots come back.
    drop(silent);
    let admitted = admitted_soon(mqtt, "after").await;
    assert!(admitted, "a client got a slot the silent sockets freed");
    let metrics = http_get(admin, "/metrics").await;
    assert!(metric_sum(&metrics, "snigate_broker_limit_refusals_total", "limit=\"connections\"") >= 2.0);
}

/// Whether a client gets in (CONNACK 0) within about five seconds of tries:
/// a slot comes back only once the session that held it has ended, and until
/// then a try is answered busy or closed at accept.
async fn admitted_soon(addr: SocketAddr, client_id: &str) -> bool {
    for _ in 0..50 {
        let mut client = TcpStream::connect(addr).await.unwrap();
        client.write_all(&connect_packet(client_id, 0)).await.unwrap();
        let mut connack = [0; 4];
        // Closed at accept (busy answers all taken while the slots come
        // back) is one more "not yet".
        let answered = tokio::time::timeout(STEP, client.read_exact(&mut connack))
            .await
            .expect("an answer or a close in time");
        if answered.is_ok() && connack == [0x20, 2, 0, 0] {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    false
}

/// CONNECT at MQTT 5 with the given client id.
fn connect_v5(client_id: &str) -> Vec<u8> {
    let mut body = vec![0, 4, b'M', b'Q', b'T', b'T', 5, 0x02, 0, 0, 0];
    body.extend_from_slice(&(client_id.len() as u16).to_be_bytes());
    body.extend_from_slice(client_id.as_bytes());
    packet(0x10, &body)
}

#[tokio::test]
async fn clients_beyond_the_connection_cap_are_told_the_server_is_busy() {
    let dir = TempDir::new();
    let (process, mqtt, admin) = budget_broker(&dir, "max_connections = 2\n");
    let _first = connected(mqtt, "one", 0).await;
    let second = connected(mqtt, "two", 0).await;

    // MQTT 3.1.1: CONNACK 3, server unavailable.
    let mut third = TcpStream::connect(mqtt).await.unwrap();
    third.write_all(&connect_packet("three", 0)).await.unwrap();
    assert_eq!(read_connack(&mut third).await, [0x20, 2, 0, 3]);

    // MQTT 5: 0x89, server busy.
    let mut fourth = TcpStream::connect(mqtt).await.unwrap();
    fourth.write_all(&connect_v5("four")).await.unwrap();
    let (first, body) = tokio::time::timeout(STEP, read_packet(&mut fourth))
        .await
        .unwrap()
        .unwrap();
    assert_eq!((first, body[1]), (0x20, 0x89), "{body:?}");
    process
        .line_async("connection refused: the memory budget's max_connections")
        .await;

    // A slot frees when a client leaves.
    drop(second);
    let freed = admitted_soon(mqtt, "five").await;
    assert!(freed, "a client got the slot a leaving one freed");
    let metrics = http_get(admin, "/metrics").await;
    assert!(metric_sum(&metrics, "snigate_broker_limit_refusals_total", "limit=\"connections\"") >= 2.0);
}

#[test]
fn the_connection_cap_follows_the_memory_limit() {
    let dir = TempDir::new();
    let config = dir.path("broker.toml");
    std::fs::write(&config, "memory_limit = \"128MiB\"\n").unwrap();
    let out = Command::new(BIN)
        .arg("check")
        .arg("--config")
        .arg(&config)
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("memory limit: 128 MiB (configured)"), "{text}");
    // Issue 19's figures: at the article's 128 MiB, 20,000 plaintext or
    // 5,000 TLS clients at least.
    assert!(
        text.contains("max connections: 21162 (connections' share 62 MiB: 3 KiB a plaintext one, 12 KiB a TLS one, so at most 5290 TLS)"),
        "{text}"
    );

    std::fs::write(&config, "memory_limit = \"128MiB\"\nmax_connections = 50000\n").unwrap();
    let out = Command::new(BIN)
        .arg("check")
        .arg("--config")
        .arg(&config)
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(78), "{text}");
    assert!(
        text.contains("broker.toml")
            && text.contains("max_connections")
            && text.contains("allows 21162 plaintext or 5290 TLS"),
        "{text}"
    );
}

/// The settings of rumqttd's router, the broker's former core, still load:
/// `check` says each is deprecated and what bounds the same now, and the
/// broker starts and logs the same at `warn`.
#[tokio::test]
async fn the_router_s_settings_are_accepted_with_a_deprecation_warning() {
    let dir = TempDir::new();
    let config = dir.path("broker.toml");
    std::fs::write(
        &config,
        "listen = [\"127.0.0.1:0\"]\nallow_anonymous = true\nmax_filters = 100\nmax_segment_size = \"64KiB\"\n",
    )
    .unwrap();
    let out = Command::new(BIN)
        .arg("check")
        .arg("--config")
        .arg(&config)
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{text}");
    assert!(
        text.contains("warning: max_filters is deprecated and ignored"),
        "{text}"
    );
    assert!(
        text.contains("warning: max_segment_size is deprecated and ignored"),
        "{text}"
    );
    assert!(!text.contains("max_segment_count"), "only what was set: {text}");
    let mut command = Command::new(BIN);
    command.arg("--config").arg(&config);
    let process = Process::spawn("broker", command);
    process.line("max_filters is deprecated");
    let mut client = connected(process.address("mqtt"), "c", 0).await;
    assert_eq!(subscribe(&mut client, "a/b", 1).await, 1, "and works");
}

/// The subscription index holds at most its share of `memory_limit` (a
/// quarter): past it a new filter is refused, 0x97 (quota exceeded) to an
/// MQTT 5 client and 0x80 to an MQTT 3.1.1 one, counted, and so is a new
/// session (whose records share it); the filters there keep working, and an
/// UNSUBSCRIBE makes room. (rumqttd's router refused at `max_filters` logs;
/// that setting is deprecated.)
#[tokio::test]
async fn a_full_subscription_index_refuses_new_filters_with_quota_exceeded() {
    let dir = TempDir::new();
    // The smallest budget: 32 MiB, 8 MiB for the index.
    let broker = Broker::with_config(
        &dir,
        "admin = \"127.0.0.1:0\"\nallow_anonymous = true\nmemory_limit = \"32MiB\"\n",
    );
    let (mqtt, admin) = (broker.addr, broker.process.address("http"));
    let mut client = TcpStream::connect(mqtt).await.unwrap();
    client.write_all(&connect_v5("v5")).await.unwrap();
    let (first_byte, connack) = read_packet(&mut client).await.unwrap();
    assert_eq!((first_byte, connack[1]), (0x20, 0), "accepted");
    assert_eq!(subscribe_v5(&mut client, 1, &["kept/1".to_owned()]).await, [0]);
    // Their sessions are in the share too: in before it fills.
    let mut other = connected(mqtt, "other", 0).await;
    let mut publisher = connected(mqtt, "pub", 0).await;
    // SUBSCRIBEs of 1,000 new filters each until one is refused (bounded).
    let mut refused_at = None;
    for round in 0..200u16 {
        let filters: Vec<String> = (0..1000).map(|n| format!("many/{round}/{n}")).collect();
        let codes = subscribe_v5(&mut client, round + 2, &filters).await;
        if let Some(at) = codes.iter().position(|&c| c != 0) {
            assert_eq!(codes[at], 0x97, "quota exceeded");
            assert!(codes[at..].iter().all(|&c| c == 0x97), "and every filter after it");
            refused_at = Some((round, at));
            break;
        }
    }
    let (round, at) = refused_at.expect("the index filled within 200,000 filters");
    eprintln!("the index was full after {} filters", usize::from(round) * 1000 + at);
    // A 3.1.1 client is refused too, with 0x80.
    assert_eq!(subscribe(&mut other, "new/filter", 0).await, 0x80);
    // A new session does not fit either: CONNACK 3, server unavailable.
    let mut late = TcpStream::connect(mqtt).await.unwrap();
    late.write_all(&connect_packet("late", 0)).await.unwrap();
    assert_eq!(
        read_connack(&mut late).await,
        [0x20, 2, 0, 3],
        "no room for its session"
    );
    // The filters there still deliver.
    publisher
        .write_all(&publish_packet("kept/1", b"still", 0, 0))
        .await
        .unwrap();
    let (first_byte, body) = read_packet(&mut client).await.unwrap();
    assert_eq!(first_byte >> 4, 3, "a PUBLISH");
    assert!(body.ends_with(b"still"));
    // An UNSUBSCRIBE of what the last round took makes room again.
    let taken: Vec<String> = (0..at).map(|n| format!("many/{round}/{n}")).collect();
    for chunk in taken.chunks(500) {
        let mut body = vec![0, 9, 0];
        for filter in chunk {
            body.extend_from_slice(&(filter.len() as u16).to_be_bytes());
            body.extend_from_slice(filter.as_bytes());
        }
        client.write_all(&packet(0xa2, &body)).await.unwrap();
        let (first_byte, _) = read_packet(&mut client).await.unwrap();
        assert_eq!(first_byte, 0xb0, "UNSUBACK");
    }
    assert_eq!(subscribe(&mut other, "new/filter", 0).await, 0, "room again");
    let metrics = http_get(admin, "/metrics").await;
    assert!(metric_sum(&metrics, "snigate_broker_limit_refusals_total", "limit=\"filters\"") >= 2.0);
    assert!(metric_sum(&metrics, "snigate_broker_limit_refusals_total", "limit=\"sessions\"") >= 1.0);
}

/// An MQTT 5 SUBSCRIBE of `filters` at QoS 0 with packet id `pkid`; its
/// SUBACK's reason codes.
async fn subscribe_v5(stream: &mut TcpStream, pkid: u16, filters: &[String]) -> Vec<u8> {
    let mut body = pkid.to_be_bytes().to_vec();
    body.push(0); // no properties
    for filter in filters {
        body.extend_from_slice(&(filter.len() as u16).to_be_bytes());
        body.extend_from_slice(filter.as_bytes());
        body.push(0);
    }
    stream.write_all(&packet(0x82, &body)).await.unwrap();
    loop {
        let (first_byte, suback) = tokio::time::timeout(STEP, read_packet(stream))
            .await
            .expect("a SUBACK in time")
            .unwrap();
        if first_byte == 0x90 {
            assert_eq!(suback[..2], pkid.to_be_bytes());
            // Packet id, properties length (0), then the codes.
            return suback[3..].to_vec();
        }
    }
}

#[tokio::test]
async fn retained_messages_beyond_their_budget_are_delivered_not_retained() {
    let dir = TempDir::new();
    let (_process, mqtt, admin) = budget_broker(&dir, "max_retained_bytes = 1000\n");
    let mut publisher = connected(mqtt, "publisher", 0).await;
    let retained = |topic: &str, payload: &[u8]| {
        let mut p = publish_packet(topic, payload, 0, 0);
        p[0] |= 1;
        p
    };
    publisher
        .write_all(&retained("keep/small", &[b's'; 500]))
        .await
        .unwrap();
    publisher
        .write_all(&retained("keep/large", &[b'l'; 800]))
        .await
        .unwrap();
    assert_pings(&mut publisher).await;

    let mut late = connected(mqtt, "late", 0).await;
    assert_eq!(subscribe(&mut late, "keep/#", 0).await, 0);
    let (first, body) = tokio::time::timeout(STEP, read_packet(&mut late))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(first, 0x31, "a retained message");
    assert_eq!(&body[2..12], b"keep/small");
    assert!(
        tokio::time::timeout(Duration::from_millis(500), read_packet(&mut late))
            .await
            .is_err(),
        "the one over the budget was not retained"
    );
    let metrics = http_get(admin, "/metrics").await;
    assert_eq!(
        metric_sum(&metrics, "snigate_broker_limit_refusals_total", "limit=\"retained\""),
        1.0
    );
    // The message's topic and payload, and on the own core what holds them
    // too (its record, the levels of its topic): within the bound either way.
    let held = metric_sum(&metrics, "snigate_broker_retained_bytes", "");
    assert!((510.0..=1000.0).contains(&held), "retained bytes {held}");
}

/// A broker whose plaintext and TLS-less second listener take PROXY headers.
fn proxied_broker(dir: &TempDir) -> (Process, SocketAddr) {
    let config = dir.path("broker.toml");
    std::fs::write(
        &config,
        "listen = [{ address = \"127.0.0.1:0\", proxy_protocol = true }]\nallow_anonymous = true\n",
    )
    .unwrap();
    let mut command = Command::new(BIN);
    command.arg("--config").arg(&config);
    let process = Process::spawn("broker", command);
    let addr = process.address("mqtt");
    (process, addr)
}

async fn connect_behind(addr: SocketAddr, header: &[u8], client_id: &str) -> TcpStream {
    let mut stream = TcpStream::connect(addr).await.unwrap();
    let mut bytes = header.to_vec();
    bytes.extend_from_slice(&connect_packet(client_id, 0));
    stream.write_all(&bytes).await.unwrap();
    assert_eq!(read_connack(&mut stream).await, [0x20, 2, 0, 0]);
    stream
}

#[tokio::test]
async fn a_proxy_protocol_listener_logs_the_client_address_it_carries() {
    let dir = TempDir::new();
    let (process, addr) = proxied_broker(&dir);

    let _v1 = connect_behind(addr, b"PROXY TCP4 192.0.2.7 10.0.0.1 50000 1883\r\n", "via-v1").await;
    let line = process.line_async("peer=192.0.2.7:50000").await;
    assert!(line.contains("client connected") && line.contains("via-v1"), "{line}");

    let v2 = ppp::v2::Builder::with_addresses(
        ppp::v2::Version::Two | ppp::v2::Command::Proxy,
        ppp::v2::Protocol::Stream,
        (
            "[2001:db8::7]:50001".parse::<SocketAddr>().unwrap(),
            "[2001:db8::1]:1883".parse::<SocketAddr>().unwrap(),
        ),
    )
    .write_tlv(ppp::v2::Type::Authority, b"broker-a.apps.snigate.test")
    .unwrap()
    .build()
    .unwrap();
    let _v2 = connect_behind(addr, &v2, "via-v2").await;
    let line = process.line_async("peer=[2001:db8::7]:50001").await;
    assert!(line.contains("client connected") && line.contains("via-v2"), "{line}");

    // Without a header the connection is closed, and others are unaffected.
    let mut bare = TcpStream::connect(addr).await.unwrap();
    bare.write_all(&connect_packet("bare", 0)).await.unwrap();
    let mut sink = [0; 16];
    let n = tokio::time::timeout(STEP, bare.read(&mut sink))
        .await
        .unwrap()
        .unwrap_or(0);
    assert_eq!(n, 0, "closed without a CONNACK");
    process.line_async("bad PROXY protocol header").await;
}
