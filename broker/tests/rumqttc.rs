//! The broker with rumqttc, a Rust MQTT client: QoS 1 and 2, retained messages
//! and the last will, through the real binary over loopback.
#![allow(clippy::unwrap_used)] // a test binary: unwrap is an assertion

use std::process::Command;
use std::time::Duration;

use rumqttc::{AsyncClient, Event, EventLoop, LastWill, MqttOptions, Packet, Publish, QoS};
use snigate_shared::testing::{Process, STEP};
use tokio::sync::mpsc;

const BIN: &str = env!("CARGO_BIN_EXE_snigate-broker");

fn broker() -> (Process, u16) {
    let mut command = Command::new(BIN);
    command.args(["--listen", "127.0.0.1:0", "--allow-anonymous"]);
    let process = Process::spawn("broker", command);
    let port = process.address("mqtt").port();
    (process, port)
}

/// A connected client whose incoming publishes arrive on the returned channel.
/// The event loop runs in a task; aborting it drops the connection without
/// DISCONNECT.
async fn client(
    port: u16,
    id: &str,
    will: Option<LastWill>,
) -> (
    AsyncClient,
    mpsc::UnboundedReceiver<Publish>,
    tokio::task::JoinHandle<()>,
) {
    let mut options = MqttOptions::new(id, "127.0.0.1", port);
    options.set_keep_alive(Duration::from_secs(5));
    if let Some(will) = will {
        options.set_last_will(will);
    }
    let (client, eventloop) = AsyncClient::new(options, 16);
    let (tx, rx) = mpsc::unbounded_channel();
    let (connected_tx, connected_rx) = tokio::sync::oneshot::channel();
    let task = tokio::spawn(drive(eventloop, tx, connected_tx));
    tokio::time::timeout(STEP, connected_rx).await.unwrap().unwrap();
    (client, rx, task)
}

async fn drive(
    mut eventloop: EventLoop,
    tx: mpsc::UnboundedSender<Publish>,
    connected: tokio::sync::oneshot::Sender<()>,
) {
    let mut connected = Some(connected);
    loop {
        match eventloop.poll().await {
            Ok(Event::Incoming(Packet::ConnAck(_))) => {
                if let Some(connected) = connected.take() {
                    let _ = connected.send(());
                }
            }
            Ok(Event::Incoming(Packet::Publish(publish))) => {
                let _ = tx.send(publish);
            }
            Ok(_) => {}
            Err(_) => return,
        }
    }
}

async fn subscribed(client: &AsyncClient, filter: &str, qos: QoS) {
    client.subscribe(filter, qos).await.unwrap();
    // The SUBACK is handled by the event loop; give the router a moment to add
    // the filter before anything is published to it.
    tokio::time::sleep(Duration::from_millis(200)).await;
}

async fn next(rx: &mut mpsc::UnboundedReceiver<Publish>) -> Publish {
    tokio::time::timeout(STEP, rx.recv())
        .await
        .expect("a message arrived")
        .unwrap()
}

#[tokio::test]
async fn qos_1_and_2_arrive_once_each() {
    let (_broker, port) = broker();
    let (subscriber, mut inbox, _s) = client(port, "sub", None).await;
    subscribed(&subscriber, "q/#", QoS::ExactlyOnce).await;
    let (publisher, _, _p) = client(port, "pub", None).await;
    publisher.publish("q/1", QoS::AtLeastOnce, false, "one").await.unwrap();
    publisher.publish("q/2", QoS::ExactlyOnce, false, "two").await.unwrap();
    let (first, second) = (next(&mut inbox).await, next(&mut inbox).await);
    assert_eq!((&*first.topic, &first.payload[..]), ("q/1", &b"one"[..]));
    assert_eq!((&*second.topic, &second.payload[..]), ("q/2", &b"two"[..]));
    assert!(
        tokio::time::timeout(Duration::from_millis(500), inbox.recv())
            .await
            .is_err(),
        "no duplicates"
    );
}

#[tokio::test]
async fn a_retained_message_reaches_a_later_subscriber() {
    let (_broker, port) = broker();
    let (publisher, _, _p) = client(port, "pub", None).await;
    publisher
        .publish("r/door", QoS::AtLeastOnce, true, "closed")
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(300)).await;
    let (late, mut inbox, _l) = client(port, "late", None).await;
    late.subscribe("r/#", QoS::AtLeastOnce).await.unwrap();
    let retained = next(&mut inbox).await;
    assert_eq!(
        (&*retained.topic, &retained.payload[..], retained.retain),
        ("r/door", &b"closed"[..], true)
    );
}

#[tokio::test]
async fn the_will_goes_out_when_the_client_dies() {
    let (_broker, port) = broker();
    let (watcher, mut inbox, _w) = client(port, "watcher", None).await;
    subscribed(&watcher, "status/#", QoS::AtLeastOnce).await;
    let will = LastWill::new("status/sensor-7", "offline", QoS::AtLeastOnce, false);
    let (_dying, _, task) = client(port, "sensor-7", Some(will)).await;
    task.abort();
    let will = next(&mut inbox).await;
    assert_eq!((&*will.topic, &will.payload[..]), ("status/sensor-7", &b"offline"[..]));
}
