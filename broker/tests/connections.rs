//! The connections' share of the memory budget, on the real binary: each
//! socket holds its kind's cost from accept. Apart from budget.rs, whose
//! floods are timed against a reader and would share the machine with the
//! hundreds of sockets here.
#![allow(clippy::unwrap_used)] // a test binary: unwrap is an assertion

use snigate_shared::testing::mqtt::connect_packet;
use snigate_shared::testing::{STEP, TempDir};
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;

mod support;
use support::*;

/// A TLS connection costs more than a plaintext one (rustls' state), and
/// takes that much of the connections' share from accept: at 32 MiB the
/// share (8 MiB) holds 682 TLS sockets, and then the next TLS client is told
/// "busy" while the 8 KiB left still let plaintext clients in.
#[tokio::test]
async fn a_tls_connection_takes_its_own_cost_from_the_connections_share() {
    let dir = TempDir::new();
    let ca = snigate_shared::testing::Ca::new();
    let (cert, key) = ca.issue_pem(&["localhost"]);
    std::fs::write(dir.path("server.crt"), cert).unwrap();
    std::fs::write(dir.path("server.key"), key).unwrap();
    let config = format!(
        "tls_listen = [\"127.0.0.1:0\"]\ncert_file = {:?}\nkey_file = {:?}\nallow_anonymous = true\nmemory_limit = \"32MiB\"\n",
        dir.path("server.crt"),
        dir.path("server.key")
    );
    let broker = Broker::with_config(&dir, &config);
    let (mqtt, mqtts) = (broker.addr, broker.process.address("mqtts"));
    broker.process.line_async("max_tls_connections=682").await;

    // Sockets hold their share from accept, handshake or not.
    let mut held = Vec::new();
    for _ in 0..682 {
        held.push(TcpStream::connect(mqtts).await.unwrap());
    }
    let connector = tokio_rustls::TlsConnector::from(ca.client_config());
    let name = tokio_rustls::rustls::pki_types::ServerName::try_from("localhost").unwrap();
    let tcp = TcpStream::connect(mqtts).await.unwrap();
    let mut late = tokio::time::timeout(STEP, connector.connect(name, tcp))
        .await
        .expect("a busy answer is a TLS session too")
        .unwrap();
    late.write_all(&connect_packet("late-tls", 0)).await.unwrap();
    assert_eq!(read_connack(&mut late).await, [0x20, 2, 0, 3], "server unavailable");

    // What is left is less than a TLS connection and more than a plaintext one.
    let _plain = connected(mqtt, "plain", 0).await;
    drop(held);
}

/// What a connection's buffers hold while a packet passes is counted in the
/// queues' share (`snigate_broker_queued_bytes`), and given back when the
/// connection ends: half of a 256 KiB PUBLISH, sent and then left there.
/// Idle connections hold nothing of it.
#[tokio::test]
async fn a_packet_being_read_is_counted_in_the_budget_until_it_goes() {
    let dir = TempDir::new();
    let broker = Broker::with_config(
        &dir,
        "admin = \"127.0.0.1:0\"\nallow_anonymous = true\nmemory_limit = \"64MiB\"\n",
    );
    let (mqtt, admin) = (broker.addr, broker.process.address("http"));
    let queued = |metrics: &str| metric_sum(metrics, "snigate_broker_queued_bytes", "");

    // Idle clients hold nothing there: their reserve covers them.
    let mut idle = Vec::new();
    for n in 0..20 {
        idle.push(connected(mqtt, &format!("idle-{n}"), 0).await);
    }
    assert_eq!(queued(&http_get(admin, "/metrics").await), 0.0, "idle clients");
    let mut client = connected(mqtt, "half", 0).await;
    let publish = snigate_shared::testing::mqtt::publish_packet("big", &vec![b'x'; 256 << 10], 0, 0);
    client.write_all(&publish[..publish.len() / 2]).await.unwrap();
    let mut held = 0.0;
    for _ in 0..50 {
        held = queued(&http_get(admin, "/metrics").await);
        if held >= f64::from(128 << 10) {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    assert!(held >= f64::from(128 << 10), "the half packet is counted: {held}");

    drop(client);
    let mut left = held;
    for _ in 0..50 {
        left = queued(&http_get(admin, "/metrics").await);
        if left == 0.0 {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    assert_eq!(left, 0.0, "given back when the connection ends");
}
