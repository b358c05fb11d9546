//! End to end through the edge: clients speak TLS to snigate-router by host
//! name (SNI), the router passes the bytes to that host's broker. The topology
//! is the shipped `config/testbed.toml`, on ports the system picks.
#![allow(clippy::unwrap_used)] // a test binary: unwrap is an assertion

use std::net::IpAddr;
use std::process::Output;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use snigate_shared::testing::mqtt::{self, Login, Message};
use snigate_shared::testing::{STEP, TempDir, check_metrics_with_promtool, tool, with_hosts_file};
use snigate_testbed::{Testbed, Topology, http_get};
use tokio::net::TcpStream;
use tokio_rustls::client::TlsStream;

mod support;
use support::through_router;

const TOPOLOGY: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../config/testbed.toml");

/// The log lines of everything in this test process (the brokers and the
/// router run in it), for the tests that read them.
fn logs() -> Arc<Mutex<Vec<u8>>> {
    static LOGS: OnceLock<Arc<Mutex<Vec<u8>>>> = OnceLock::new();
    LOGS.get_or_init(|| {
        let logs = Arc::new(Mutex::new(Vec::new()));
        let sink = logs.clone();
        let _ = tracing_subscriber::fmt()
            .with_env_filter("info,rumqttd=warn")
            .with_ansi(false)
            .with_writer(move || Capture(sink.clone()))
            .try_init();
        logs
    })
    .clone()
}

struct Capture(Arc<Mutex<Vec<u8>>>);

impl std::io::Write for Capture {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// The first captured log line with every one of `needles`, within [`STEP`].
async fn log_line(needles: &[&str]) -> String {
    let logs = logs();
    for _ in 0..100 {
        let text = String::from_utf8_lossy(&logs.lock().unwrap()).into_owned();
        if let Some(line) = text.lines().find(|l| needles.iter().all(|n| l.contains(n))) {
            return line.to_owned();
        }
        tokio::time::sleep(STEP / 100).await;
    }
    panic!("no log line with {needles:?}");
}

async fn testbed(dir: &TempDir) -> Testbed {
    logs();
    let topology = Topology::load(TOPOLOGY.as_ref()).unwrap().on_any_ports();
    Testbed::start(&topology, &dir.path("testbed")).await.unwrap()
}

/// An MQTT client of `broker`, logged in as its first user, through the router.
async fn client(
    bed: &Testbed,
    broker: &str,
    client_id: &str,
    will: Option<(&str, &[u8], u8, bool)>,
) -> TlsStream<TcpStream> {
    let broker = bed.broker(broker);
    let (user, password) = broker.users.iter().next().unwrap();
    let mut stream = through_router(bed, &broker.host, None).await;
    let login = Login {
        user: Some((user, password)),
        will,
        clean_session: true,
        ..Login::default()
    };
    assert_eq!(
        mqtt::connect(&mut stream, client_id, &login).await,
        0,
        "CONNACK accepted"
    );
    stream
}

/// Nothing arrives within a moment.
async fn silent(stream: &mut TlsStream<TcpStream>) -> bool {
    tokio::time::timeout(Duration::from_millis(300), mqtt::next_message(stream))
        .await
        .is_err()
}

#[tokio::test]
async fn each_host_name_reaches_its_own_broker_and_only_it() {
    let dir = TempDir::new();
    let bed = testbed(&dir).await;
    let mut sub_a = client(&bed, "broker-a", "sub-a", None).await;
    let mut sub_b = client(&bed, "broker-b", "sub-b", None).await;
    assert_eq!(mqtt::subscribe(&mut sub_a, "e2e/#", 2).await, 2);
    assert_eq!(mqtt::subscribe(&mut sub_b, "e2e/#", 2).await, 2);
    let mut pub_a = client(&bed, "broker-a", "pub-a", None).await;
    let mut pub_b = client(&bed, "broker-b", "pub-b", None).await;

    for qos in 0..=2u8 {
        let payload = format!("via a at QoS {qos}");
        mqtt::publish(&mut pub_a, "e2e/x", payload.as_bytes(), qos, false).await;
        let got = mqtt::next_message(&mut sub_a).await.unwrap();
        assert_eq!(
            (got.topic.as_str(), got.payload.as_slice()),
            ("e2e/x", payload.as_bytes())
        );
        assert!(
            silent(&mut sub_b).await,
            "broker-b's subscriber got nothing of broker-a's"
        );

        let payload = format!("via b at QoS {qos}");
        mqtt::publish(&mut pub_b, "e2e/x", payload.as_bytes(), qos, false).await;
        let got = mqtt::next_message(&mut sub_b).await.unwrap();
        assert_eq!(got.payload, payload.as_bytes());
        assert!(
            silent(&mut sub_a).await,
            "broker-a's subscriber got nothing of broker-b's"
        );
    }
    bed.stop().await.unwrap();
}

#[tokio::test]
async fn retained_messages_and_wills_through_the_router() {
    let dir = TempDir::new();
    let bed = testbed(&dir).await;
    let mut publisher = client(&bed, "broker-a", "keeper", None).await;
    mqtt::publish(&mut publisher, "e2e/kept", b"still here", 1, true).await;

    let mut late = client(&bed, "broker-a", "late", None).await;
    assert_eq!(mqtt::subscribe(&mut late, "e2e/#", 1).await, 1);
    let kept = mqtt::next_message(&mut late).await.unwrap();
    assert_eq!(
        kept,
        Message {
            topic: "e2e/kept".into(),
            payload: b"still here".to_vec(),
            qos: 1,
            retain: true
        }
    );

    let doomed = client(
        &bed,
        "broker-a",
        "doomed",
        Some(("e2e/will", b"doomed is gone", 0, false)),
    )
    .await;
    drop(doomed); // no DISCONNECT: the will goes out
    let will = mqtt::next_message(&mut late).await.unwrap();
    assert_eq!(
        (will.topic.as_str(), will.payload.as_slice()),
        ("e2e/will", &b"doomed is gone"[..])
    );
    bed.stop().await.unwrap();
}

/// Run `program args` with the testbed's hosts file over /etc/hosts, in a
/// mount namespace of its own: the brokers' names resolve to the router for it
/// alone, as docs/testbed.md tells users to do.
async fn with_private_hosts(bed: &Testbed, program: &std::path::Path, args: &[&str]) -> Output {
    let command = tokio::process::Command::from(with_hosts_file(&bed.hosts_file, program).unwrap())
        .args(args)
        .kill_on_drop(true)
        .output();
    tokio::time::timeout(STEP * 2, command).await.unwrap().unwrap()
}

/// Debian's mosquitto_pub and mosquitto_sub, and unshare; `None` (a loud skip
/// outside CI, a failure under CI=true) when missing.
fn real_clients() -> Option<(std::path::PathBuf, std::path::PathBuf)> {
    tool("unshare", "util-linux")?;
    Some((
        tool("mosquitto_pub", "mosquitto-clients")?,
        tool("mosquitto_sub", "mosquitto-clients")?,
    ))
}

fn login_args(bed: &Testbed, broker: &str, password: Option<&str>) -> Vec<String> {
    let broker = bed.broker(broker);
    let (user, real) = broker.users.iter().next().unwrap();
    [
        "--cafile",
        bed.ca_file.to_str().unwrap(),
        "--host",
        &broker.host,
        "--port",
        &bed.router.port().to_string(),
        "-u",
        user,
        "-P",
        password.unwrap_or(real),
    ]
    .map(str::to_owned)
    .to_vec()
}

#[tokio::test]
async fn mosquitto_clients_verify_the_host_name_through_the_router() {
    let Some((pub_, sub)) = real_clients() else { return };
    let dir = TempDir::new();
    let bed = testbed(&dir).await;
    for (broker, other) in [("broker-a", "broker-b"), ("broker-b", "broker-a")] {
        let message = format!("kept on {broker}");
        let args = login_args(&bed, broker, None);
        let mut publish: Vec<&str> = args.iter().map(String::as_str).collect();
        publish.extend(["-t", "e2e/mosquitto", "-q", "1", "-r", "-m", &message]);
        let out = with_private_hosts(&bed, &pub_, &publish).await;
        assert!(out.status.success(), "{out:?}");

        let mut subscribe: Vec<&str> = args.iter().map(String::as_str).collect();
        subscribe.extend(["-t", "e2e/mosquitto", "-C", "1", "-W", "5"]);
        let out = with_private_hosts(&bed, &sub, &subscribe).await;
        assert_eq!(String::from_utf8_lossy(&out.stdout), format!("{message}\n"), "{out:?}");

        // The other broker never saw it: a subscriber there (connected: its
        // broker logs it) gets nothing.
        let other_args = login_args(&bed, other, None);
        let client_id = format!("elsewhere-than-{broker}");
        let mut elsewhere: Vec<&str> = other_args.iter().map(String::as_str).collect();
        elsewhere.extend(["-t", "e2e/mosquitto", "-C", "1", "-W", "2", "-i", &client_id]);
        let out = with_private_hosts(&bed, &sub, &elsewhere).await;
        assert!(!String::from_utf8_lossy(&out.stdout).contains(&message), "{out:?}");
        log_line(&["client connected", &client_id]).await;
    }
    bed.stop().await.unwrap();
}

/// `mosquitto_sub` through the router, with the testbed's hosts file, spawned;
/// killed if the test ends first.
fn spawn_private_hosts(bed: &Testbed, program: &std::path::Path, args: &[&str]) -> tokio::process::Child {
    tokio::process::Command::from(with_hosts_file(&bed.hosts_file, program).unwrap())
        .args(args)
        .stdout(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap()
}

#[tokio::test]
async fn mosquitto_clients_carry_every_qos_and_the_will_through_the_router() {
    let Some((pub_, sub)) = real_clients() else { return };
    let dir = TempDir::new();
    let bed = testbed(&dir).await;
    let args = login_args(&bed, "broker-a", None);
    let login: Vec<&str> = args.iter().map(String::as_str).collect();

    let subscriber = spawn_private_hosts(
        &bed,
        &sub,
        &[
            &login[..],
            &["-t", "e2e/qos", "-q", "2", "-C", "3", "-W", "10", "-i", "every-qos"],
        ]
        .concat(),
    );
    log_line(&["client connected", "every-qos"]).await;
    // Its SUBSCRIBE follows the CONNECT.
    tokio::time::sleep(Duration::from_millis(500)).await;
    for qos in ["0", "1", "2"] {
        let message = format!("at QoS {qos}");
        let out = with_private_hosts(
            &bed,
            &pub_,
            &[&login[..], &["-t", "e2e/qos", "-q", qos, "-m", &message]].concat(),
        )
        .await;
        assert!(out.status.success(), "{out:?}");
    }
    let out = tokio::time::timeout(STEP, subscriber.wait_with_output())
        .await
        .unwrap()
        .unwrap();
    let mut got: Vec<String> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(str::to_owned)
        .collect();
    got.sort();
    assert_eq!(got, ["at QoS 0", "at QoS 1", "at QoS 2"], "{out:?}");

    // The will of a client that vanishes (SIGKILL: no DISCONNECT).
    let watcher = spawn_private_hosts(
        &bed,
        &sub,
        &[
            &login[..],
            &["-t", "e2e/will", "-C", "1", "-W", "10", "-i", "will-watcher"],
        ]
        .concat(),
    );
    log_line(&["client connected", "will-watcher"]).await;
    let mut doomed = spawn_private_hosts(
        &bed,
        &sub,
        &[
            &login[..],
            &[
                "-t",
                "e2e/none",
                "-i",
                "doomed-client",
                "--will-topic",
                "e2e/will",
                "--will-payload",
                "gone",
            ],
        ]
        .concat(),
    );
    log_line(&["client connected", "doomed-client"]).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    doomed.kill().await.unwrap();
    let out = tokio::time::timeout(STEP, watcher.wait_with_output())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(String::from_utf8_lossy(&out.stdout), "gone\n", "{out:?}");
    bed.stop().await.unwrap();
}

#[tokio::test]
async fn the_articles_test_through_the_router() {
    let Some((pub_, _)) = real_clients() else { return };
    let Some(openssl) = tool("openssl", "openssl") else {
        return;
    };
    let dir = TempDir::new();
    let bed = testbed(&dir).await;

    // mosquitto_pub -t foo -m text --cafile CA -u USER -P PASS --host HOST --port PORT
    let args = login_args(&bed, "broker-a", None);
    let mut good: Vec<&str> = vec!["-t", "foo", "-m", "text"];
    good.extend(args.iter().map(String::as_str));
    let out = with_private_hosts(&bed, &pub_, &good).await;
    assert!(out.status.success(), "{out:?}");

    let args = login_args(&bed, "broker-a", Some("wrong"));
    let mut bad: Vec<&str> = vec!["-t", "foo", "-m", "text"];
    bad.extend(args.iter().map(String::as_str));
    let out = with_private_hosts(&bed, &pub_, &bad).await;
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("not authorised"),
        "the broker's CONNACK 5, as the client shows it: {stderr}"
    );

    // A name no route claims: the router's unrecognized_name alert.
    let out = tokio::process::Command::new(openssl)
        .args([
            "s_client",
            "-connect",
            &bed.router.to_string(),
            "-servername",
            "nowhere.apps.snigate.test",
        ])
        .stdin(std::process::Stdio::null())
        .kill_on_drop(true)
        .output();
    let out = tokio::time::timeout(STEP, out).await.unwrap().unwrap();
    let text = String::from_utf8_lossy(&out.stderr).into_owned() + &String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains("unrecognized name") || text.contains("alert number 112"),
        "{text}"
    );
    bed.stop().await.unwrap();
}

/// One sample's value in a `/metrics` body, e.g.
/// `snigate_router_bytes_total{direction="in",route="broker-a"}`.
fn sample(metrics: &str, name_and_labels: &str) -> f64 {
    metrics
        .lines()
        .find_map(|l| l.strip_prefix(name_and_labels)?.strip_prefix(' ')?.trim().parse().ok())
        .unwrap_or(0.0)
}

fn body(response: &str) -> &str {
    response.split_once("\r\n\r\n").map_or(response, |(_, body)| body)
}

#[tokio::test]
async fn metrics_show_the_traffic_and_pass_promtool() {
    let dir = TempDir::new();
    let bed = testbed(&dir).await;
    for broker in ["broker-a", "broker-b"] {
        let mut subscriber = client(&bed, broker, "metrics-sub", None).await;
        assert_eq!(mqtt::subscribe(&mut subscriber, "m/#", 1).await, 1);
        let mut publisher = client(&bed, broker, "metrics-pub", None).await;
        mqtt::publish(&mut publisher, "m/1", b"counted", 1, false).await;
        assert!(mqtt::next_message(&mut subscriber).await.is_some());
    }
    // The connections above ended when their streams dropped; wait until the
    // router has counted both routes' two connections (any outcome).
    let closed = |metrics: &str, route: &str| -> f64 {
        metrics
            .lines()
            .filter(|l| {
                l.starts_with("snigate_router_connections_closed_total{") && l.contains(&format!("route=\"{route}\""))
            })
            .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
            .sum()
    };
    let deadline = tokio::time::Instant::now() + STEP;
    let router = loop {
        let router = body(&http_get(bed.router_admin, "/metrics").await.unwrap()).to_owned();
        if closed(&router, "broker-a") >= 2.0 && closed(&router, "broker-b") >= 2.0 {
            break router;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the router did not count two connections per route: {router}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    for route in ["broker-a", "broker-b"] {
        for direction in ["in", "out"] {
            let bytes = sample(
                &router,
                &format!("snigate_router_bytes_total{{direction=\"{direction}\",route=\"{route}\"}}"),
            );
            assert!(bytes > 0.0, "{route} {direction}: {router}");
        }
    }
    check_metrics_with_promtool(&router);
    for broker in &bed.brokers {
        let metrics = body(&http_get(broker.admin, "/metrics").await.unwrap()).to_owned();
        assert!(
            sample(&metrics, "snigate_broker_messages_received_total{qos=\"1\"}") >= 1.0,
            "{metrics}"
        );
        assert!(
            sample(&metrics, "snigate_broker_messages_sent_total{qos=\"1\"}") >= 1.0,
            "{metrics}"
        );
        check_metrics_with_promtool(&metrics);
    }
    bed.stop().await.unwrap();
}

#[tokio::test]
async fn the_router_tells_each_broker_the_real_client_address() {
    let dir = TempDir::new();
    let bed = testbed(&dir).await;
    // broker-a takes PROXY v2 from its route, broker-b v1 (config/testbed.toml).
    for (broker, source, client_id) in [
        ("broker-a", [127, 0, 0, 2], "proxied-v2"),
        ("broker-b", [127, 0, 0, 3], "proxied-v1"),
    ] {
        let running = bed.broker(broker);
        let (user, password) = running.users.iter().next().unwrap();
        let mut stream = through_router(&bed, &running.host, Some(IpAddr::from(source))).await;
        let local = stream.get_ref().0.local_addr().unwrap();
        let login = Login {
            user: Some((user, password)),
            clean_session: true,
            ..Login::default()
        };
        assert_eq!(mqtt::connect(&mut stream, client_id, &login).await, 0);
        let line = log_line(&["client connected", client_id]).await;
        assert!(
            line.contains(&format!("peer={local}")),
            "the broker logged {local}: {line}"
        );
    }
    bed.stop().await.unwrap();
}
