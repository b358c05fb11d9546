//! The real `snigate-broker` binary with real MQTT peers over loopback: Debian's
//! `mosquitto_pub`, `mosquitto_sub` and `mosquitto_passwd`, and raw sockets
//! where a test needs exact bytes.
#![allow(clippy::unwrap_used)] // a test binary: unwrap is an assertion

use std::process::Command;
use std::time::Duration;

use snigate_shared::testing::{Ca, Process, STEP, TempDir, check_metrics_with_promtool, tool};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

mod support;
use support::*;

#[tokio::test]
async fn mosquitto_clients_publish_and_subscribe_through_a_mosquitto_passwd_file() {
    let dir = TempDir::new();
    let (Some(passwd), Some(pub_), Some(sub)) = (
        mosquitto_passwd_file(&dir),
        tool("mosquitto_pub", "mosquitto-clients"),
        tool("mosquitto_sub", "mosquitto-clients"),
    ) else {
        return;
    };
    let broker = Broker::start(&["--password-file", &passwd]);
    let port = broker.port();
    let subscriber = tokio::process::Command::new(&sub)
        .args([
            "-h",
            "127.0.0.1",
            "-p",
            &port,
            "-u",
            "admin",
            "-P",
            "admin",
            "-t",
            "sensors/#",
            "-q",
            "1",
            "-v",
            "-C",
            "2",
        ])
        .output();
    let subscriber = tokio::spawn(subscriber);
    broker.process.line_async("client connected").await;
    for (qos, message) in [("0", "at most once"), ("1", "at least once")] {
        let out = run(
            &pub_,
            &[
                "-h",
                "127.0.0.1",
                "-p",
                &port,
                "-u",
                "foo",
                "-P",
                "foo",
                "-t",
                "sensors/t1",
                "-q",
                qos,
                "-m",
                message,
            ],
        )
        .await;
        assert!(out.status.success(), "{out:?}");
    }
    let received = tokio::time::timeout(STEP, subscriber).await.unwrap().unwrap().unwrap();
    assert!(received.status.success(), "{received:?}");
    assert_eq!(
        String::from_utf8_lossy(&received.stdout),
        "sensors/t1 at most once\nsensors/t1 at least once\n"
    );
}

/// Mosquitto 2.0 answers a wrong password, an unknown user and an anonymous
/// client (when anonymous is off) with CONNACK 5 on MQTT 3.1.1 and 0x87 on 5;
/// mosquitto_pub then exits with that code and says why.
#[tokio::test]
async fn refused_logins_get_mosquittos_connack_codes() {
    let dir = TempDir::new();
    let (Some(passwd), Some(pub_)) = (mosquitto_passwd_file(&dir), tool("mosquitto_pub", "mosquitto-clients")) else {
        return;
    };
    let broker = Broker::start(&["--password-file", &passwd]);
    let port = broker.port();
    let base = ["-h", "127.0.0.1", "-p", &port, "-t", "t", "-m", "x"];
    for (extra, code, says) in [
        (&["-u", "admin", "-P", "wrong"][..], 5, "not authorised"),
        (&["-u", "nobody", "-P", "admin"][..], 5, "not authorised"),
        (&[][..], 5, "not authorised"),
        (
            &["-V", "mqttv5", "-u", "admin", "-P", "wrong"][..],
            135,
            "Not authorized",
        ),
    ] {
        let args: Vec<&str> = base.iter().chain(extra).copied().collect();
        let out = run(&pub_, &args).await;
        assert_eq!(out.status.code(), Some(code), "{extra:?}: {out:?}");
        assert!(
            String::from_utf8_lossy(&out.stderr).contains(says),
            "{extra:?}: {out:?}"
        );
    }
    // Failed logins are logged with their reason.
    broker.process.line_async("reason=\"bad_credentials\"").await;
}

/// PINGREQ gets PINGRESP: the connection is alive and served.
#[tokio::test]
async fn keepalive_zero_is_accepted_and_pings_are_answered() {
    let broker = Broker::start(&["--allow-anonymous"]);
    let mut stream = connected(broker.addr, "k0", 0).await;
    // rumqttd alone refuses keepalive 0; the spec and Mosquitto accept it.
    assert_pings(&mut stream).await;
}

#[tokio::test]
async fn a_malformed_packet_closes_only_that_connection() {
    let broker = Broker::start(&["--allow-anonymous"]);
    let mut good = connected(broker.addr, "good", 30).await;
    let mut bad = connected(broker.addr, "bad", 30).await;
    // Packet type 0 is reserved.
    bad.write_all(&[0x00, 0x00]).await.unwrap();
    // End of stream or a reset: either way the broker closed it (the timeout's
    // unwrap is the assertion).
    let mut rest = Vec::new();
    let _ = tokio::time::timeout(STEP, bad.read_to_end(&mut rest)).await.unwrap();
    // Not MQTT at all, before CONNECT.
    let mut http = TcpStream::connect(broker.addr).await.unwrap();
    http.write_all(b"GET / HTTP/1.1\r\n\r\n").await.unwrap();
    let _ = tokio::time::timeout(STEP, http.read_to_end(&mut rest)).await.unwrap();
    // The other client is unaffected.
    assert_pings(&mut good).await;
    broker.process.line_async("malformed or oversized packet").await;
}

#[tokio::test]
async fn an_oversized_packet_closes_the_connection() {
    let dir = TempDir::new();
    let config = dir.path("broker.toml");
    std::fs::write(&config, "allow_anonymous = true\nmax_packet_size = 1024\n").unwrap();
    let broker = Broker::start(&["--config", config.to_str().unwrap()]);
    let mut stream = connected(broker.addr, "big", 30).await;
    // PUBLISH QoS 0, topic "t", 2,000 bytes of payload: remaining length 2,003.
    let mut publish = vec![0x30, 0xd3, 0x0f, 0, 1, b't'];
    publish.extend_from_slice(&[b'x'; 2000]);
    let _ = stream.write_all(&publish).await;
    let mut rest = Vec::new();
    let _ = tokio::time::timeout(STEP, stream.read_to_end(&mut rest)).await.unwrap();
    broker.process.line_async("malformed or oversized packet").await;
}

#[tokio::test]
async fn no_configuration_behaves_like_mosquitto_without_one() {
    let output = Command::new(BIN).arg("check").output().unwrap();
    assert!(output.status.success(), "{output:?}");
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(stdout.contains("listen: 127.0.0.1:1883\n"), "{stdout}");
    assert!(stdout.contains("anonymous: true"), "{stdout}");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("anonymous clients allowed, on loopback only"),
        "{stderr}"
    );
}

#[tokio::test]
async fn sigterm_stops_the_broker_cleanly() {
    let mut broker = Broker::start(&["--allow-anonymous"]);
    let mut client = connected(broker.addr, "stays", 0).await;
    broker.process.signal("TERM");
    let mut rest = Vec::new();
    let _ = tokio::time::timeout(STEP, client.read_to_end(&mut rest)).await.unwrap();
    let status = broker.process.wait(Duration::from_secs(10)).await;
    assert!(status.success(), "{status:?}");
}

/// TLS material for `localhost` and 127.0.0.1, signed by a fresh CA: the CA's
/// path, and the broker's certificate and key paths.
fn tls_files(dir: &TempDir) -> (String, String, String) {
    let ca = Ca::new();
    let (cert, key) = ca.issue_pem(&["localhost", "127.0.0.1"]);
    let write = |name: &str, text: &str| {
        let path = dir.path(name);
        std::fs::write(&path, text).unwrap();
        path.to_str().unwrap().to_owned()
    };
    (
        write("ca.crt", &ca.cert_pem),
        write("server.crt", &cert),
        write("server.key", &key),
    )
}

/// A broker with a plaintext and a TLS listener (certificate for `localhost`
/// and 127.0.0.1) and `extra` arguments; returns the CA file and the process.
fn tls_broker(dir: &TempDir, extra: &[&str]) -> (String, Process) {
    let (ca, cert, key) = tls_files(dir);
    let mut command = Command::new(BIN);
    command
        .args([
            "--listen",
            "127.0.0.1:0",
            "--tls-listen",
            "127.0.0.1:0",
            "--cert",
            &cert,
            "--key",
            &key,
        ])
        .args(extra);
    (ca, Process::spawn("broker", command))
}

/// The article's test: mosquitto_pub over TLS with --cafile and -u/-P, here
/// with hostname verification on (no --insecure).
#[tokio::test]
async fn mosquitto_clients_over_tls_with_a_cafile() {
    let dir = TempDir::new();
    let (Some(passwd), Some(pub_), Some(sub)) = (
        mosquitto_passwd_file(&dir),
        tool("mosquitto_pub", "mosquitto-clients"),
        tool("mosquitto_sub", "mosquitto-clients"),
    ) else {
        return;
    };
    let (ca, process) = tls_broker(&dir, &["--password-file", &passwd]);
    let port = process.address("mqtts").port().to_string();
    let tls_args = ["-h", "localhost", "-p", &port, "--cafile", &ca];
    let subscriber = tokio::process::Command::new(&sub)
        .args(tls_args)
        .args(["-u", "admin", "-P", "admin", "-t", "foo", "-C", "1"])
        .output();
    let subscriber = tokio::spawn(subscriber);
    process.line_async("client connected").await;
    let out = run(
        &pub_,
        &[&tls_args[..], &["-u", "foo", "-P", "foo", "-t", "foo", "-m", "text"]].concat(),
    )
    .await;
    assert!(out.status.success(), "{out:?}");
    let received = tokio::time::timeout(STEP, subscriber).await.unwrap().unwrap().unwrap();
    assert_eq!(String::from_utf8_lossy(&received.stdout), "text\n", "{received:?}");
    // A wrong password over TLS gets the same CONNACK as in the clear.
    let out = run(
        &pub_,
        &[&tls_args[..], &["-u", "foo", "-P", "bar", "-t", "foo", "-m", "x"]].concat(),
    )
    .await;
    assert_eq!(out.status.code(), Some(5), "{out:?}");
}

/// A client that opens a TLS connection and never finishes its handshake must
/// not delay another client's connect (rumqttd's own listener would).
#[tokio::test]
async fn a_stalled_tls_handshake_does_not_delay_other_clients() {
    let dir = TempDir::new();
    let Some(pub_) = tool("mosquitto_pub", "mosquitto-clients") else {
        return;
    };
    let (ca, process) = tls_broker(&dir, &["--allow-anonymous"]);
    let addr = process.address("mqtts");
    let mut stalled = Vec::new();
    for _ in 0..5 {
        let mut stream = TcpStream::connect(addr).await.unwrap();
        stream.write_all(&[0x16, 0x03, 0x01, 0x02, 0x00, 0x01]).await.unwrap();
        stalled.push(stream);
    }
    let port = addr.port().to_string();
    let started = std::time::Instant::now();
    let out = run(
        &pub_,
        &["-h", "localhost", "-p", &port, "--cafile", &ca, "-t", "t", "-m", "m"],
    )
    .await;
    assert!(out.status.success(), "{out:?}");
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "took {:?}",
        started.elapsed()
    );
}

/// The broker's TLS runs on ring, which has no post-quantum key exchange
/// (docs/deploy.md): a client that offers the hybrid first, as rustls, Chrome
/// and OpenSSL 3.5 do, settles on X25519 and speaks MQTT as usual.
#[tokio::test]
async fn a_client_preferring_the_post_quantum_key_share_settles_on_x25519() {
    use std::sync::Arc;
    use tokio_rustls::rustls::{self, NamedGroup};

    let dir = TempDir::new();
    let (ca, process) = tls_broker(&dir, &["--allow-anonymous"]);
    let mut roots = rustls::RootCertStore::empty();
    for cert in snigate_shared::tls::load_certs(std::path::Path::new(&ca)).unwrap() {
        roots.add(cert).unwrap();
    }
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    assert_eq!(provider.kx_groups[0].name(), NamedGroup::X25519MLKEM768);
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    let tcp = TcpStream::connect(process.address("mqtts")).await.unwrap();
    let name = rustls::pki_types::ServerName::try_from("localhost").unwrap();
    let mut tls = tokio::time::timeout(
        STEP,
        tokio_rustls::TlsConnector::from(Arc::new(config)).connect(name, tcp),
    )
    .await
    .unwrap()
    .unwrap();
    let group = tls.get_ref().1.negotiated_key_exchange_group().map(|g| g.name());
    assert_eq!(group, Some(NamedGroup::X25519));
    tls.write_all(&connect_packet("hybrid", 0)).await.unwrap();
    assert_eq!(read_connack(&mut tls).await, [0x20, 2, 0, 0]);
}

#[test]
fn a_bad_certificate_file_is_a_configuration_error_naming_it() {
    let dir = TempDir::new();
    let cert = dir.path("server.crt");
    std::fs::write(&cert, "not a certificate").unwrap();
    let output = Command::new(BIN)
        .args([
            "--tls-listen",
            "127.0.0.1:0",
            "--cert",
            cert.to_str().unwrap(),
            "--key",
            cert.to_str().unwrap(),
            "check",
        ])
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(78));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains(&format!("{}: no CERTIFICATE section found", cert.display())),
        "{stderr}"
    );
}

/// An MQTT 3.1.1 CONNECT with a will.
fn connect_with_will(client_id: &str, topic: &str, message: &str) -> Vec<u8> {
    let mut body = vec![0, 4, b'M', b'Q', b'T', b'T', 4, 0x02 | 0x04, 0, 30];
    for field in [client_id, topic, message] {
        body.extend_from_slice(&(field.len() as u16).to_be_bytes());
        body.extend_from_slice(field.as_bytes());
    }
    let mut packet = vec![0x10, body.len() as u8];
    packet.extend_from_slice(&body);
    packet
}

#[tokio::test]
async fn the_will_is_published_when_a_client_vanishes_not_when_it_disconnects() {
    let Some(sub) = tool("mosquitto_sub", "mosquitto-clients") else {
        return;
    };
    let broker = Broker::start(&["--allow-anonymous"]);
    let port = broker.port();
    let subscriber = tokio::spawn(
        tokio::process::Command::new(&sub)
            .args([
                "-h",
                "127.0.0.1",
                "-p",
                &port,
                "-t",
                "wills/#",
                "-v",
                "-C",
                "1",
                "-W",
                "8",
            ])
            .output(),
    );
    broker.process.line_async("client connected").await;

    // A client that says goodbye: no will.
    let mut polite = TcpStream::connect(broker.addr).await.unwrap();
    polite
        .write_all(&connect_with_will("polite", "wills/polite", "gone"))
        .await
        .unwrap();
    read_connack(&mut polite).await;
    polite.write_all(&[0xe0, 0]).await.unwrap();
    drop(polite);
    // A client that vanishes: its will goes out.
    let mut rude = TcpStream::connect(broker.addr).await.unwrap();
    rude.write_all(&connect_with_will("rude", "wills/rude", "gone"))
        .await
        .unwrap();
    assert_eq!(read_connack(&mut rude).await, [0x20, 2, 0, 0]);
    drop(rude);

    let received = tokio::time::timeout(STEP, subscriber).await.unwrap().unwrap().unwrap();
    assert_eq!(
        String::from_utf8_lossy(&received.stdout),
        "wills/rude gone\n",
        "{received:?}"
    );
}

#[tokio::test]
async fn a_second_connection_with_the_same_client_id_takes_the_session_over() {
    let broker = Broker::start(&["--allow-anonymous"]);
    let mut first = connected(broker.addr, "same", 30).await;
    let mut second = connected(broker.addr, "same", 30).await;
    let mut rest = Vec::new();
    let _ = tokio::time::timeout(STEP, first.read_to_end(&mut rest)).await.unwrap();
    broker.process.line_async("end=\"taken_over\"").await;
    assert_pings(&mut second).await;
}

#[tokio::test]
async fn a_silent_client_is_closed_after_one_and_a_half_keepalives() {
    let broker = Broker::start(&["--allow-anonymous"]);
    let mut client = connected(broker.addr, "quiet", 1).await;
    let started = std::time::Instant::now();
    let mut rest = Vec::new();
    let _ = tokio::time::timeout(STEP, client.read_to_end(&mut rest)).await.unwrap();
    let waited = started.elapsed();
    assert!(
        waited >= Duration::from_millis(1300) && waited < Duration::from_secs(4),
        "closed after {waited:?}"
    );
    broker.process.line_async("end=\"keepalive_timeout\"").await;
}

#[tokio::test]
async fn retained_messages_and_qos_2_with_mosquitto_clients() {
    let Some((pub_, sub)) = mosquitto_clients() else {
        return;
    };
    let broker = Broker::start(&["--allow-anonymous"]);
    let port = broker.port();
    let out = run(
        &pub_,
        &[
            "-h",
            "127.0.0.1",
            "-p",
            &port,
            "-t",
            "state/door",
            "-m",
            "open",
            "-r",
            "-q",
            "1",
        ],
    )
    .await;
    assert!(out.status.success(), "{out:?}");
    // A subscriber that arrives later gets the retained message.
    let out = run(
        &sub,
        &[
            "-h",
            "127.0.0.1",
            "-p",
            &port,
            "-t",
            "state/#",
            "-v",
            "-C",
            "1",
            "-W",
            "5",
        ],
    )
    .await;
    assert_eq!(String::from_utf8_lossy(&out.stdout), "state/door open\n", "{out:?}");

    let subscriber = tokio::spawn(
        tokio::process::Command::new(&sub)
            .args([
                "-h",
                "127.0.0.1",
                "-p",
                &port,
                "-t",
                "exact/once",
                "-q",
                "2",
                "-C",
                "1",
                "-W",
                "8",
            ])
            .output(),
    );
    broker.process.line_async("client connected").await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let out = run(
        &pub_,
        &[
            "-h",
            "127.0.0.1",
            "-p",
            &port,
            "-t",
            "exact/once",
            "-m",
            "two",
            "-q",
            "2",
        ],
    )
    .await;
    assert!(out.status.success(), "{out:?}");
    let received = tokio::time::timeout(STEP, subscriber).await.unwrap().unwrap().unwrap();
    assert_eq!(String::from_utf8_lossy(&received.stdout), "two\n", "{received:?}");
}

/// Debian's Mosquitto on a free loopback port, with `config` lines added.
/// The same refused logins against Debian's Mosquitto 2.0 and snigate-broker,
/// side by side: the client must see the same thing.
#[tokio::test]
async fn refused_logins_look_the_same_as_with_mosquitto() {
    let dir = TempDir::new();
    let (Some(passwd), Some(pub_)) = (mosquitto_passwd_file(&dir), tool("mosquitto_pub", "mosquitto-clients")) else {
        return;
    };
    let Some((_mosquitto, mosquitto_port)) =
        start_mosquitto(&dir, &format!("allow_anonymous false\npassword_file {passwd}\n"))
    else {
        return;
    };
    let broker = Broker::start(&["--password-file", &passwd]);
    for extra in [
        &["-u", "admin", "-P", "wrong"][..],
        &["-u", "nobody", "-P", "admin"][..],
        &[][..],
        &["-V", "mqttv5", "-u", "admin", "-P", "wrong"][..],
        &["-V", "mqttv5"][..],
        &["-u", "admin", "-P", "admin"][..],
        &["-V", "mqttv5", "-u", "foo", "-P", "foo"][..],
    ] {
        let mut seen = Vec::new();
        for port in [mosquitto_port.to_string(), broker.port()] {
            let args: Vec<&str> = ["-h", "127.0.0.1", "-p", port.as_str(), "-t", "t", "-m", "x"]
                .iter()
                .chain(extra)
                .copied()
                .collect();
            let out = run(&pub_, &args).await;
            seen.push((out.status.code(), String::from_utf8_lossy(&out.stderr).into_owned()));
        }
        assert_eq!(seen[0], seen[1], "{extra:?}: Mosquitto, then snigate-broker");
    }
}

/// MQTT 5 with the Eclipse Paho Python client (paho-mqtt 2.x, in the virtualenv
/// scripts/test makes under target/tools/venv: this machine's python cannot
/// import Debian's python3-paho-mqtt).
#[tokio::test]
async fn paho_mqtt_5_clients() {
    let Some(python) = paho_python() else {
        return;
    };
    let dir = TempDir::new();
    let Some(passwd) = mosquitto_passwd_file(&dir) else {
        return;
    };
    let broker = Broker::start(&["--password-file", &passwd]);
    let script = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/paho_v5.py");
    let out = run(&python, &[script.to_str().unwrap(), &broker.port(), "admin", "admin"]).await;
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{stdout}{}", String::from_utf8_lossy(&out.stderr));
    assert!(stdout.contains("refused login: 0x87"), "{stdout}");
    assert!(stdout.contains("unsubscribed: [0, 17]"), "{stdout}");
    assert!(stdout.ends_with("ok\n"), "{stdout}");
}

/// `/metrics` after real traffic: the counters moved, and promtool accepts it.
#[tokio::test]
async fn metrics_after_traffic_pass_promtool() {
    let dir = TempDir::new();
    let (Some(passwd), Some(pub_), Some(sub), Some(curl)) = (
        mosquitto_passwd_file(&dir),
        tool("mosquitto_pub", "mosquitto-clients"),
        tool("mosquitto_sub", "mosquitto-clients"),
        tool("curl", "curl"),
    ) else {
        return;
    };
    let mut command = Command::new(BIN);
    command.args([
        "--listen",
        "127.0.0.1:0",
        "--admin",
        "127.0.0.1:0",
        "--password-file",
        &passwd,
    ]);
    let process = Process::spawn("broker", command);
    let port = process.address("mqtt").port().to_string();
    let admin = process.address("http");
    let login = ["-h", "127.0.0.1", "-p", &port, "-u", "admin", "-P", "admin"];
    let subscriber = tokio::spawn(
        tokio::process::Command::new(&sub)
            .args(login)
            .args(["-t", "m/#", "-q", "1", "-C", "2", "-W", "8"])
            .output(),
    );
    process.line_async("client connected").await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    for qos in ["0", "1"] {
        assert!(
            run(&pub_, &[&login[..], &["-t", "m/x", "-q", qos, "-m", "12345"]].concat())
                .await
                .status
                .success()
        );
    }
    assert!(
        run(&pub_, &[&login[..], &["-t", "keep", "-r", "-m", "v"]].concat())
            .await
            .status
            .success()
    );
    let _ = run(
        &pub_,
        &[
            "-h",
            "127.0.0.1",
            "-p",
            &port,
            "-u",
            "admin",
            "-P",
            "no",
            "-t",
            "t",
            "-m",
            "x",
        ],
    )
    .await;
    let received = tokio::time::timeout(STEP, subscriber).await.unwrap().unwrap().unwrap();
    assert!(received.status.success(), "{received:?}");

    let out = run(&curl, &["-sS", &format!("http://{admin}/metrics")]).await;
    let body = String::from_utf8_lossy(&out.stdout).into_owned();
    let value = |sample: &str| -> f64 {
        body.lines()
            .find_map(|l| l.strip_prefix(sample)?.strip_prefix(' ')?.trim().parse().ok())
            .unwrap_or_else(|| panic!("{sample} not in\n{body}"))
    };
    assert_eq!(
        value(r#"snigate_broker_messages_received_total{qos="0"}"#),
        2.0,
        "one to m/x, one retained"
    );
    assert_eq!(value(r#"snigate_broker_messages_received_total{qos="1"}"#), 1.0);
    // rumqttd 0.20 forwards at the subscription's QoS, not the lower of the two
    // (docs/broker.md lists this): both went out at QoS 1 here.
    let sent: f64 = ["0", "1", "2"]
        .iter()
        .map(|q| value(&format!("snigate_broker_messages_sent_total{{qos=\"{q}\"}}")))
        .sum();
    assert_eq!(sent, 2.0);
    assert!(value(r#"snigate_broker_publish_bytes_received_total{qos="1"}"#) > 5.0);
    assert_eq!(
        value(r#"snigate_broker_auth_failures_total{reason="bad_credentials"}"#),
        1.0
    );
    assert_eq!(value("snigate_broker_retained_messages"), 1.0);
    assert_eq!(value("snigate_broker_subscriptions"), 0.0, "the subscriber has gone");
    assert_eq!(value("snigate_broker_clients_connected"), 0.0);

    check_metrics_with_promtool(&body);
}

/// MQTT 5 clients are told why on shutdown: DISCONNECT 0x8B, server shutting down.
#[tokio::test]
async fn sigterm_tells_mqtt_5_clients_the_server_is_shutting_down() {
    let mut broker = Broker::start(&["--allow-anonymous"]);
    let mut client = TcpStream::connect(broker.addr).await.unwrap();
    // MQTT 5 CONNECT: clean start, keepalive 0, no properties, client id "v5".
    client
        .write_all(&[
            0x10, 15, 0, 4, b'M', b'Q', b'T', b'T', 5, 0x02, 0, 0, 0, 0, 2, b'v', b'5',
        ])
        .await
        .unwrap();
    let mut header = [0; 2];
    client.read_exact(&mut header).await.unwrap();
    let mut connack = vec![0; usize::from(header[1])];
    client.read_exact(&mut connack).await.unwrap();
    assert_eq!((header[0], connack[1]), (0x20, 0), "CONNACK success");
    broker.process.signal("TERM");
    let mut disconnect = Vec::new();
    let _ = tokio::time::timeout(STEP, client.read_to_end(&mut disconnect))
        .await
        .unwrap();
    assert_eq!(disconnect.first(), Some(&0xe0), "a DISCONNECT: {disconnect:?}");
    assert_eq!(disconnect.get(2), Some(&0x8b), "reason 0x8B: {disconnect:?}");
    assert!(broker.process.wait(Duration::from_secs(10)).await.success());
}

/// Subscribe to `inbox/#` at QoS 1 with `session` (mosquitto_sub's client
/// options), leave once subscribed, wait `away_for`, publish one QoS 1 message
/// to `inbox/1` (mosquitto_pub with `version`), come back with the same
/// options: what `mosquitto_sub -v` then prints within 3 s.
async fn published_while_away(broker: &Broker, session: &[&str], version: &[&str], away_for: Duration) -> String {
    let Some((pub_, sub)) = mosquitto_clients() else {
        return String::new();
    };
    let port = broker.port();
    let target = ["-h", "127.0.0.1", "-p", &port, "-q", "1"];
    let subscriber = [&target[..], session, &["-t", "inbox/#", "-v"]].concat();
    let out = run(&sub, &[&subscriber[..], &["-E"]].concat()).await;
    assert!(out.status.success(), "{out:?}");
    tokio::time::sleep(away_for).await;
    let publish = [&target[..], version, &["-t", "inbox/1", "-m", "while you were out"]].concat();
    let out = run(&pub_, &publish).await;
    assert!(out.status.success(), "{out:?}");
    let out = run(&sub, &[&subscriber[..], &["-C", "1", "-W", "3"]].concat()).await;
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// A persistent session (clean session off) keeps its subscription while the
/// client is away, and QoS 1 messages published meanwhile wait for it (in
/// memory: a broker restart loses them, as docs/broker.md says).
#[tokio::test]
async fn a_persistent_session_gets_what_was_published_while_away() {
    if mosquitto_clients().is_none() {
        return;
    }
    let broker = Broker::start(&["--allow-anonymous"]);
    let received = published_while_away(&broker, &["-c", "-i", "away"], &[], Duration::ZERO).await;
    assert_eq!(received, "inbox/1 while you were out\n");
}

/// MQTT 5 separates taking a session up (clean start off) from keeping it (the
/// session expiry interval), with Debian's clients: a session kept for 60 s
/// gets what was published while away; one kept for 1 s is gone 3 s later.
#[tokio::test]
async fn mqtt_5_clients_get_the_session_expiry_they_ask_for() {
    if mosquitto_clients().is_none() {
        return;
    }
    let broker = Broker::start(&["--allow-anonymous"]);
    let v5 = ["-V", "mqttv5"];
    let kept = ["-V", "mqttv5", "-c", "-x", "60", "-i", "away-60"];
    let received = published_while_away(&broker, &kept, &v5, Duration::ZERO).await;
    assert_eq!(received, "inbox/1 while you were out\n", "kept for 60 s");
    let brief = ["-V", "mqttv5", "-c", "-x", "1", "-i", "away-1"];
    let received = published_while_away(&broker, &brief, &v5, Duration::from_secs(3)).await;
    assert_eq!(received, "", "expired after 1 s");
    broker.process.line_async("persistent sessions expired").await;
}

/// An MQTT 5 CONNECT with clean start as given and, when given, a session
/// expiry interval.
fn connect_v5_expiring(client_id: &str, clean_start: bool, expiry: Option<u32>) -> Vec<u8> {
    let mut body = vec![
        0,
        4,
        b'M',
        b'Q',
        b'T',
        b'T',
        5,
        if clean_start { 0x02 } else { 0 },
        0,
        0,
    ];
    match expiry {
        Some(seconds) => {
            body.extend_from_slice(&[5, 0x11]);
            body.extend_from_slice(&seconds.to_be_bytes());
        }
        None => body.push(0),
    }
    body.extend_from_slice(&(client_id.len() as u16).to_be_bytes());
    body.extend_from_slice(client_id.as_bytes());
    snigate_shared::testing::mqtt::packet(0x10, &body)
}

/// Connect, say whether a session was present, and leave with DISCONNECT.
async fn session_present_v5(
    addr: std::net::SocketAddr,
    client_id: &str,
    clean_start: bool,
    expiry: Option<u32>,
) -> bool {
    session_present_v5_leaving(addr, client_id, clean_start, expiry, &[0xe0, 0]).await
}

/// An MQTT 5 CONNECT (as [`connect_v5_expiring`] makes it) to `addr`, and the
/// body of its CONNACK, which must accept it.
async fn accepted_v5(addr: &str, client_id: &str, clean_start: bool, expiry: Option<u32>) -> (TcpStream, Vec<u8>) {
    let mut stream = TcpStream::connect(addr).await.unwrap();
    stream
        .write_all(&connect_v5_expiring(client_id, clean_start, expiry))
        .await
        .unwrap();
    let (first, connack) = tokio::time::timeout(STEP, snigate_shared::testing::mqtt::read_packet(&mut stream))
        .await
        .expect("a CONNACK in time")
        .unwrap();
    assert_eq!((first, connack[1]), (0x20, 0), "{addr}: accepted");
    (stream, connack)
}

/// The same, leaving with the DISCONNECT given.
async fn session_present_v5_leaving(
    addr: std::net::SocketAddr,
    client_id: &str,
    clean_start: bool,
    expiry: Option<u32>,
    disconnect: &[u8],
) -> bool {
    let (mut stream, connack) = accepted_v5(&addr.to_string(), client_id, clean_start, expiry).await;
    stream.write_all(disconnect).await.unwrap();
    let mut rest = Vec::new();
    let _ = tokio::time::timeout(STEP, stream.read_to_end(&mut rest)).await;
    connack[0] & 1 == 1
}

#[tokio::test]
async fn mqtt_5_clean_start_and_session_expiry_are_separate() {
    let broker = Broker::start(&["--allow-anonymous"]);
    let addr = broker.addr;
    // No expiry interval: the session ends with the connection, clean start or not.
    assert!(!session_present_v5(addr, "gone", false, None).await);
    assert!(!session_present_v5(addr, "gone", false, None).await);
    // Clean start with an expiry: a fresh session, kept after the connection.
    assert!(!session_present_v5(addr, "kept", true, Some(60)).await);
    assert!(session_present_v5(addr, "kept", false, Some(60)).await);
    // ... until a connection without an expiry ends it.
    assert!(session_present_v5(addr, "kept", false, None).await);
    assert!(!session_present_v5(addr, "kept", false, Some(60)).await);
    // 0xFFFFFFFF: never expires (no persistent_client_expiration is set).
    assert!(!session_present_v5(addr, "forever", true, Some(u32::MAX)).await);
    assert!(session_present_v5(addr, "forever", false, Some(u32::MAX)).await);
    // A DISCONNECT's interval replaces the CONNECT's: 0 ends it there.
    let ending = [0xe0, 7, 0x00, 5, 0x11, 0, 0, 0, 0];
    assert!(session_present_v5_leaving(addr, "forever", false, Some(u32::MAX), &ending).await);
    assert!(!session_present_v5(addr, "forever", false, Some(60)).await);
}

/// A persistent session's `$SYS` subscription is the broker's own (rumqttd never
/// sees it), and it comes back with the session like the others.
#[tokio::test]
async fn a_persistent_session_keeps_its_sys_subscription() {
    let dir = TempDir::new();
    let broker = Broker::with_config(&dir, "allow_anonymous = true\nsys_interval = \"1s\"\n");
    let login = snigate_shared::testing::mqtt::Login {
        clean_session: false,
        ..Default::default()
    };
    let connect = snigate_shared::testing::mqtt::connect_with("sys-watcher", &login);
    let mut away = TcpStream::connect(broker.addr).await.unwrap();
    away.write_all(&connect).await.unwrap();
    expect_bytes(&mut away, &[0x20, 2, 0, 0], "CONNACK").await;
    assert_eq!(
        snigate_shared::testing::mqtt::subscribe(&mut away, "$SYS/broker/uptime", 0).await,
        0
    );
    away.write_all(&[0xe0, 0]).await.unwrap();
    drop(away);

    let mut back = TcpStream::connect(broker.addr).await.unwrap();
    back.write_all(&connect).await.unwrap();
    expect_bytes(&mut back, &[0x20, 2, 1, 0], "CONNACK, session present").await;
    // No SUBSCRIBE this time: the next $SYS round (every second) reaches it.
    let (first, body) = tokio::time::timeout(STEP, snigate_shared::testing::mqtt::read_packet(&mut back))
        .await
        .expect("a $SYS message within sys_interval")
        .unwrap();
    assert_eq!(first >> 4, 3, "a PUBLISH");
    let topic_len = usize::from(u16::from_be_bytes([body[0], body[1]]));
    assert_eq!(&body[2..2 + topic_len], b"$SYS/broker/uptime");
}

/// A shipped default file says so on a comment line; the broker warns whenever
/// it loads one.
#[test]
fn a_default_file_is_warned_about() {
    let dir = TempDir::new();
    let passwd = dir.path("passwd");
    let text = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/src/auth/testdata/passwd")).unwrap();
    std::fs::write(
        &passwd,
        format!("# snigate-default: replace this file before production\n{text}"),
    )
    .unwrap();
    let output = Command::new(BIN)
        .args(["check", "--password-file", passwd.to_str().unwrap()])
        .output()
        .unwrap();
    assert!(output.status.success(), "{output:?}");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("USING A BUILT-IN DEFAULT FILE"), "{stderr}");
    assert!(
        String::from_utf8_lossy(&output.stdout).contains("(3 users)"),
        "the comment line is not a user"
    );
}

/// Client ids with `/`, `+`, `#` or `$` are valid MQTT (Mosquitto takes them;
/// rumqttd alone refuses them).
#[tokio::test]
async fn client_ids_with_slashes_and_wildcards_connect() {
    let broker = Broker::start(&["--allow-anonymous"]);
    for id in ["devices/42", "a+b", "x#", "$weird"] {
        let mut client = connected(broker.addr, id, 0).await;
        assert_pings(&mut client).await;
    }
}

/// A file written by `snigate-broker passwd` logs in to Debian's Mosquitto 2.0
/// (and to snigate-broker): the other interop direction.
#[tokio::test]
async fn a_file_written_by_snigate_passwd_works_with_mosquitto() {
    let dir = TempDir::new();
    let Some(pub_) = tool("mosquitto_pub", "mosquitto-clients") else {
        return;
    };
    let passwd = dir.path("passwd");
    let passwd = passwd.to_str().unwrap();
    let status = Command::new(BIN)
        .args(["passwd", "-c", "-b", passwd, "alice", "s3cret"])
        .status()
        .unwrap();
    assert!(status.success());
    // A plain-text line converted with -U, and a user added from a pipe.
    std::fs::write(dir.path("plain"), "carol:plain-pw\n").unwrap();
    let status = Command::new(BIN)
        .args(["passwd", "-U", dir.path("plain").to_str().unwrap()])
        .status()
        .unwrap();
    assert!(status.success());
    let carol = std::fs::read_to_string(dir.path("plain")).unwrap();
    assert!(carol.starts_with("carol:$7$101$"), "{carol}");
    std::fs::write(passwd, format!("{}{carol}", std::fs::read_to_string(passwd).unwrap())).unwrap();
    let mut add = Command::new(BIN)
        .args(["passwd", passwd, "bob"])
        .stdin(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    std::io::Write::write_all(&mut add.stdin.take().unwrap(), b"from-a-pipe\nfrom-a-pipe\n").unwrap();
    assert!(add.wait().unwrap().success());

    let Some((_mosquitto, mosquitto_port)) =
        start_mosquitto(&dir, &format!("allow_anonymous false\npassword_file {passwd}\n"))
    else {
        return;
    };
    let broker = Broker::start(&["--password-file", passwd]);
    for port in [mosquitto_port.to_string(), broker.port()] {
        for (user, password, code) in [
            ("alice", "s3cret", 0),
            ("bob", "from-a-pipe", 0),
            ("carol", "plain-pw", 0),
            ("alice", "wrong", 5),
        ] {
            let out = run(
                &pub_,
                &[
                    "-h",
                    "127.0.0.1",
                    "-p",
                    &port,
                    "-u",
                    user,
                    "-P",
                    password,
                    "-t",
                    "t",
                    "-m",
                    "x",
                ],
            )
            .await;
            assert_eq!(out.status.code(), Some(code), "{user} on port {port}: {out:?}");
        }
    }
    // -D removes a user.
    let status = Command::new(BIN)
        .args(["passwd", "-D", passwd, "bob"])
        .status()
        .unwrap();
    assert!(status.success());
    assert!(!std::fs::read_to_string(passwd).unwrap().contains("bob:"));
}

/// A container configured by environment variables alone (the article's third
/// way), and a flag winning over the environment.
#[tokio::test]
async fn environment_variables_configure_the_broker() {
    let dir = TempDir::new();
    let (Some(passwd), Some(pub_)) = (mosquitto_passwd_file(&dir), tool("mosquitto_pub", "mosquitto-clients")) else {
        return;
    };
    let mut command = Command::new(BIN);
    command
        .env("SNIGATE_BROKER_LISTEN", "127.0.0.1:0")
        .env("SNIGATE_BROKER_PASSWORD_FILE", &passwd)
        .env("SNIGATE_BROKER_ALLOW_ANONYMOUS", "true")
        .env("SNIGATE_BROKER_SERVICE_HOST", "10.96.0.11")
        .arg("--log-format")
        .arg("json");
    let process = Process::spawn("broker", command);
    let port = process.address("mqtt").port().to_string();
    let login = run(
        &pub_,
        &[
            "-h",
            "127.0.0.1",
            "-p",
            &port,
            "-u",
            "foo",
            "-P",
            "foo",
            "-t",
            "t",
            "-m",
            "x",
        ],
    )
    .await;
    assert!(login.status.success(), "{login:?}");
    let anonymous = run(&pub_, &["-h", "127.0.0.1", "-p", &port, "-t", "t", "-m", "x"]).await;
    assert!(
        anonymous.status.success(),
        "anonymous allowed by the environment: {anonymous:?}"
    );
    assert!(
        process.line_async("client connected").await.starts_with('{'),
        "the flag's JSON format"
    );

    let output = Command::new(BIN)
        .arg("check")
        .env("SNIGATE_BROKER_PASWORD_FILE", &passwd)
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(78));
    assert!(String::from_utf8_lossy(&output.stderr).contains("SNIGATE_BROKER_PASWORD_FILE: unknown variable"));
}

/// An MQTT 3.1.1 CONNECT with a user name and password, keepalive 0.
fn connect_with_login(client_id: &str, user: &str, password: &str) -> Vec<u8> {
    let mut body = vec![0, 4, b'M', b'Q', b'T', b'T', 4, 0x02 | 0x80 | 0x40, 0, 0];
    for field in [client_id, user, password] {
        body.extend_from_slice(&(field.len() as u16).to_be_bytes());
        body.extend_from_slice(field.as_bytes());
    }
    let mut packet = vec![0x10, body.len() as u8];
    packet.extend_from_slice(&body);
    packet
}

async fn logged_in(addr: std::net::SocketAddr, client_id: &str, user: &str, password: &str) -> TcpStream {
    let mut stream = TcpStream::connect(addr).await.unwrap();
    stream
        .write_all(&connect_with_login(client_id, user, password))
        .await
        .unwrap();
    assert_eq!(read_connack(&mut stream).await, [0x20, 2, 0, 0], "{user} logged in");
    stream
}

/// Reload by file watch, with the password file behind a Kubernetes-style
/// `..data` symlink: a removed user is disconnected, the others stay; a broken
/// file is refused and the old one keeps serving; SIGHUP reloads too.
#[tokio::test]
async fn the_password_file_reloads_without_a_restart() {
    use std::os::unix::fs::symlink;
    let dir = TempDir::new();
    let Some(first) = mosquitto_passwd_file(&dir) else {
        return;
    };
    let text = std::fs::read_to_string(&first).unwrap();
    std::fs::create_dir(dir.path("..v1")).unwrap();
    std::fs::write(dir.path("..v1/passwd"), &text).unwrap();
    symlink("..v1", dir.path("..data")).unwrap();
    symlink("..data/passwd", dir.path("mounted")).unwrap();
    let mounted = dir.path("mounted");
    let broker = Broker::start(&["--password-file", mounted.to_str().unwrap()]);
    let mut admin = logged_in(broker.addr, "admin-client", "admin", "admin").await;
    let mut foo = logged_in(broker.addr, "foo-client", "foo", "foo").await;

    // The Secret is updated: foo is gone.
    let without_foo: String = text
        .lines()
        .filter(|l| !l.starts_with("foo:"))
        .map(|l| format!("{l}\n"))
        .collect();
    std::fs::create_dir(dir.path("..v2")).unwrap();
    std::fs::write(dir.path("..v2/passwd"), &without_foo).unwrap();
    symlink("..v2", dir.path("..tmp")).unwrap();
    std::fs::rename(dir.path("..tmp"), dir.path("..data")).unwrap();
    let mut rest = Vec::new();
    let _ = tokio::time::timeout(STEP, foo.read_to_end(&mut rest)).await.unwrap();
    broker.process.line_async("end=\"credentials_revoked\"").await;
    assert_pings(&mut admin).await;
    let mut refused = TcpStream::connect(broker.addr).await.unwrap();
    refused
        .write_all(&connect_with_login("again", "foo", "foo"))
        .await
        .unwrap();
    assert_eq!(read_connack(&mut refused).await, [0x20, 2, 0, 5], "foo is refused now");

    // A broken file is refused; admin still logs in.
    std::fs::write(dir.path("..v2/passwd"), "admin:$7$101$not-base64$!\n").unwrap();
    broker.process.line_async("reload refused").await;
    let _second_admin = logged_in(broker.addr, "admin-2", "admin", "admin").await;
    assert_pings(&mut admin).await;

    // SIGHUP reloads whatever the file says now.
    std::fs::write(dir.path("..v2/passwd"), &without_foo).unwrap();
    broker.process.signal("HUP");
    broker.process.line_async("trigger=\"SIGHUP\"").await;
    assert_pings(&mut admin).await;
}

/// Client certificates: verified against a CA, required when configured so,
/// and, with use_identity_as_username, the certificate's CN is the user.
#[tokio::test]
async fn client_certificates_are_verified_and_can_name_the_user() {
    let dir = TempDir::new();
    let (Some(passwd), Some(pub_)) = (mosquitto_passwd_file(&dir), tool("mosquitto_pub", "mosquitto-clients")) else {
        return;
    };
    let ca = Ca::new();
    let write = |name: &str, text: &str| {
        let path = dir.path(name);
        std::fs::write(&path, text).unwrap();
        path.to_str().unwrap().to_owned()
    };
    let (cert, key) = ca.issue_pem(&["localhost", "127.0.0.1"]);
    let (client_cert, client_key) = ca.issue_client_pem("foo");
    let (ca_file, cert, key) = (
        write("ca.crt", &ca.cert_pem),
        write("server.crt", &cert),
        write("server.key", &key),
    );
    let (client_cert, client_key) = (write("client.crt", &client_cert), write("client.key", &client_key));

    for identity in [false, true] {
        let mut command = Command::new(BIN);
        command.args([
            "--listen",
            "127.0.0.1:0",
            "--tls-listen",
            "127.0.0.1:0",
            "--cert",
            &cert,
            "--key",
            &key,
            "--password-file",
            &passwd,
            "--cafile",
            &ca_file,
            "--require-certificate",
        ]);
        if identity {
            command.arg("--use-identity-as-username");
        }
        let process = Process::spawn("broker", command);
        let port = process.address("mqtts").port().to_string();
        let tls = [
            "-h",
            "localhost",
            "-p",
            &port,
            "--cafile",
            &ca_file,
            "-t",
            "t",
            "-m",
            "x",
        ];
        let with_cert = ["--cert", &client_cert, "--key", &client_key];
        // No client certificate: the handshake fails.
        let out = run(&pub_, &[&tls[..], &["-u", "foo", "-P", "foo"]].concat()).await;
        assert!(!out.status.success(), "identity={identity}: {out:?}");
        if identity {
            // The certificate says who: no user name or password needed.
            let out = run(&pub_, &[&tls[..], &with_cert[..]].concat()).await;
            assert!(out.status.success(), "{out:?}");
            process.line_async("user=\"foo\"").await;
        } else {
            // A certificate and the password: in.
            let out = run(&pub_, &[&tls[..], &with_cert[..], &["-u", "foo", "-P", "foo"]].concat()).await;
            assert!(out.status.success(), "{out:?}");
            // A certificate but a wrong password: refused, CONNACK 5.
            let out = run(&pub_, &[&tls[..], &with_cert[..], &["-u", "foo", "-P", "no"]].concat()).await;
            assert_eq!(out.status.code(), Some(5), "{out:?}");
        }
    }
}

/// `-H argon2id` writes Mosquitto 2.1's format, and the broker reads it.
#[tokio::test]
async fn argon2id_entries_log_in() {
    let dir = TempDir::new();
    let Some(pub_) = tool("mosquitto_pub", "mosquitto-clients") else {
        return;
    };
    let passwd = dir.path("passwd");
    let passwd = passwd.to_str().unwrap();
    let status = Command::new(BIN)
        .args(["passwd", "-c", "-H", "argon2id", "-b", passwd, "dana", "pw"])
        .status()
        .unwrap();
    assert!(status.success());
    assert!(
        std::fs::read_to_string(passwd)
            .unwrap()
            .starts_with("dana:$argon2id$v=19$m=47104,t=1,p=1$")
    );
    let broker = Broker::start(&["--password-file", passwd]);
    let port = broker.port();
    for (password, code) in [("pw", 0), ("nope", 5)] {
        let out = run(
            &pub_,
            &[
                "-h",
                "127.0.0.1",
                "-p",
                &port,
                "-u",
                "dana",
                "-P",
                password,
                "-t",
                "t",
                "-m",
                "x",
            ],
        )
        .await;
        assert_eq!(out.status.code(), Some(code), "{out:?}");
    }
}

/// An empty client id, as Mosquitto 2.0 answers it (side by side): accepted
/// with an assigned id under a clean session, CONNACK 2 (identifier rejected)
/// for MQTT 3.1.1 with clean session off.
#[tokio::test]
async fn empty_client_ids_are_answered_as_mosquitto_answers_them() {
    let dir = TempDir::new();
    let Some((_mosquitto, mosquitto_port)) = start_mosquitto(&dir, "allow_anonymous true\n") else {
        return;
    };
    let broker = Broker::start(&["--allow-anonymous"]);
    // CONNECT, MQTT 3.1.1, empty client id, keepalive 30; clean session on, then off.
    let connect = |flags: u8| vec![0x10, 12, 0, 4, b'M', b'Q', b'T', b'T', 4, flags, 0, 30, 0, 0];
    for flags in [0x02, 0x00] {
        let mut answers = Vec::new();
        for addr in [format!("127.0.0.1:{mosquitto_port}"), broker.addr.to_string()] {
            let mut stream = TcpStream::connect(&addr).await.unwrap();
            stream.write_all(&connect(flags)).await.unwrap();
            answers.push(read_connack(&mut stream).await);
        }
        assert_eq!(
            answers[0], answers[1],
            "clean session flags {flags:#x}: Mosquitto, then snigate-broker"
        );
    }
    broker.process.line_async("client_id=\"auto-").await;
}

/// The properties of an MQTT 5 CONNACK's body (after the flags and reason),
/// as (identifier, raw value) pairs.
fn connack_properties(body: &[u8]) -> Vec<(u8, Vec<u8>)> {
    let (mut len, mut at) = (0usize, 2);
    for shift in [0, 7, 14, 21] {
        let byte = body[at];
        at += 1;
        len |= usize::from(byte & 0x7f) << shift;
        if byte & 0x80 == 0 {
            break;
        }
    }
    let end = at + len;
    let mut properties = Vec::new();
    while at < end {
        let id = body[at];
        at += 1;
        let size = match id {
            0x24 | 0x25 | 0x28 | 0x29 | 0x2a => 1,
            0x13 | 0x21 | 0x22 => 2,
            0x11 | 0x27 => 4,
            // A string or binary value, then (user properties) a second one.
            _ => {
                let first = 2 + usize::from(u16::from_be_bytes([body[at], body[at + 1]]));
                if id == 0x26 {
                    first + 2 + usize::from(u16::from_be_bytes([body[at + first], body[at + first + 1]]))
                } else {
                    first
                }
            }
        };
        properties.push((id, body[at..at + size].to_vec()));
        at += size;
    }
    properties
}

/// MQTT 5 §3.2.2.3.7: a client that sent no id is told in the CONNACK the one
/// it was given, as Mosquitto tells it (side by side). The CONNACK also gives
/// the largest packet the broker takes and its Receive Maximum, and gives the
/// session expiry when the broker's cap shortened it.
#[tokio::test]
async fn an_mqtt_5_connack_tells_the_client_what_the_server_decided() {
    let dir = TempDir::new();
    let Some((_mosquitto, mosquitto_port)) = start_mosquitto(&dir, "allow_anonymous true\n") else {
        return;
    };
    let broker = Broker::with_config(
        &dir,
        "allow_anonymous = true\nmax_packet_size = 4096\npersistent_client_expiration = \"1h\"\n",
    );
    let connack = |addr: String, client_id: &'static str, expiry: Option<u32>| async move {
        connack_properties(&accepted_v5(&addr, client_id, true, expiry).await.1)
    };
    let assigned = |properties: &[(u8, Vec<u8>)]| {
        let (_, value) = properties.iter().find(|(id, _)| *id == 0x12)?;
        Some(String::from_utf8_lossy(&value[2..]).into_owned())
    };

    let theirs = connack(format!("127.0.0.1:{mosquitto_port}"), "", None).await;
    let ours = connack(broker.addr.to_string(), "", None).await;
    for (who, properties) in [("Mosquitto", &theirs), ("snigate-broker", &ours)] {
        let id = assigned(properties).unwrap_or_else(|| panic!("{who}: no assigned client id in {properties:?}"));
        assert!(id.starts_with("auto-"), "{who}: {id}");
    }
    broker
        .process
        .line_async(&format!("client_id=\"{}\"", assigned(&ours).unwrap()))
        .await;
    assert!(ours.contains(&(0x27, 4096u32.to_be_bytes().to_vec())), "{ours:?}");
    // Subscription identifiers are available: the property is left out
    // (1, MQTT 5 §3.2.2.3.12), as Mosquitto leaves it out.
    for (who, properties) in [("Mosquitto", &theirs), ("snigate-broker", &ours)] {
        assert!(!properties.iter().any(|(id, _)| *id == 0x29), "{who}: {properties:?}");
    }
    // Receive Maximum: max_inflight_messages, 20 by default on both.
    for (who, properties) in [("Mosquitto", &theirs), ("snigate-broker", &ours)] {
        assert!(
            properties.contains(&(0x21, 20u16.to_be_bytes().to_vec())),
            "{who}: {properties:?}"
        );
    }
    assert!(
        !ours.iter().any(|(id, _)| *id == 0x11),
        "no expiry asked, none changed: {ours:?}"
    );

    // A client that names itself is not told a name; one that asks for a
    // session longer than the cap is told the cap (one hour).
    let named = connack(broker.addr.to_string(), "named", Some(7200)).await;
    assert_eq!(assigned(&named), None, "{named:?}");
    assert!(named.contains(&(0x11, 3600u32.to_be_bytes().to_vec())), "{named:?}");
    let within = connack(broker.addr.to_string(), "within", Some(60)).await;
    assert!(!within.iter().any(|(id, _)| *id == 0x11), "{within:?}");
}

/// `mosquitto_sub -t '$SYS/#'` is common; rumqttd alone disconnects a client
/// for a `$` filter. The broker grants it itself and the client's other
/// filters work as usual.
#[tokio::test]
async fn a_sys_subscription_does_not_cost_the_client_its_connection() {
    let Some((pub_, sub)) = mosquitto_clients() else {
        return;
    };
    let broker = Broker::start(&["--allow-anonymous"]);
    let port = broker.port();
    let subscriber = tokio::spawn(
        tokio::process::Command::new(&sub)
            .args([
                "-h",
                "127.0.0.1",
                "-p",
                &port,
                "-t",
                "$SYS/nothing-here/#",
                "-t",
                "x/#",
                "-v",
                "-C",
                "1",
                "-W",
                "8",
            ])
            .output(),
    );
    broker.process.line_async("client connected").await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let out = run(
        &pub_,
        &["-h", "127.0.0.1", "-p", &port, "-t", "x/1", "-m", "still here"],
    )
    .await;
    assert!(out.status.success(), "{out:?}");
    let received = tokio::time::timeout(STEP, subscriber).await.unwrap().unwrap().unwrap();
    assert_eq!(
        String::from_utf8_lossy(&received.stdout),
        "x/1 still here\n",
        "{received:?}"
    );

    // Only `$` filters: answered by the broker itself, the connection stays
    // (`$SYS` off here, so that nothing but the SUBACK and PINGRESP comes back).
    let dir = TempDir::new();
    let quiet = Broker::with_config(&dir, "allow_anonymous = true\nsys_interval = \"0s\"\n");
    let mut client = connected(quiet.addr, "sys-only", 0).await;
    // SUBSCRIBE pkid 7, "$SYS/#" QoS 0.
    client
        .write_all(&[0x82, 11, 0, 7, 0, 6, b'$', b'S', b'Y', b'S', b'/', b'#', 0])
        .await
        .unwrap();
    let mut suback = [0; 5];
    tokio::time::timeout(STEP, client.read_exact(&mut suback))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(suback, [0x90, 3, 0, 7, 0], "granted at QoS 0");
    assert_pings(&mut client).await;
}

/// Every UNSUBSCRIBE gets exactly one UNSUBACK (MQTT §3.10.4): for `$SYS`
/// filters the session keeps, for filters never subscribed, and for a
/// subscription a persistent session brought from an earlier connection,
/// which must really end.
#[tokio::test]
async fn every_unsubscribe_is_answered_once_and_ends_the_subscription() {
    let dir = TempDir::new();
    let broker = Broker::with_config(&dir, "allow_anonymous = true\nsys_interval = \"0s\"\n");
    let mut client = connected(broker.addr, "unsubscriber", 0).await;
    // SUBSCRIBE pkid 7: "$SYS/#" and "a/b", QoS 0.
    let mut subscribe = vec![0x82, 17, 0, 7];
    subscribe.extend_from_slice(b"\0\x06$SYS/#\0\0\x03a/b\0");
    client.write_all(&subscribe).await.unwrap();
    expect_bytes(&mut client, &[0x90, 4, 0, 7, 0, 0], "SUBACK").await;
    // UNSUBSCRIBE pkid 8: "$SYS/#", "a/b" and "never", subscribed or not.
    let mut unsubscribe = vec![0xa2, 22, 0, 8];
    unsubscribe.extend_from_slice(b"\0\x06$SYS/#\0\x03a/b\0\x05never");
    client.write_all(&unsubscribe).await.unwrap();
    expect_bytes(&mut client, &[0xb0, 2, 0, 8], "UNSUBACK").await;
    // A second UNSUBACK would come before the PINGRESP.
    assert_pings(&mut client).await;
    // Only a filter never subscribed.
    client
        .write_all(&[0xa2, 9, 0, 9, 0, 5, b'n', b'e', b'v', b'e', b'r'])
        .await
        .unwrap();
    expect_bytes(&mut client, &[0xb0, 2, 0, 9], "UNSUBACK").await;
    assert_pings(&mut client).await;

    // A persistent session subscribes to "a/b" and leaves; back, it
    // unsubscribes, and a message published to "a/b" no longer reaches it.
    let login = snigate_shared::testing::mqtt::Login {
        clean_session: false,
        ..Default::default()
    };
    let connect = snigate_shared::testing::mqtt::connect_with("persistent", &login);
    let mut away = TcpStream::connect(broker.addr).await.unwrap();
    away.write_all(&connect).await.unwrap();
    expect_bytes(&mut away, &[0x20, 2, 0, 0], "CONNACK").await;
    away.write_all(&[0x82, 8, 0, 1, 0, 3, b'a', b'/', b'b', 0])
        .await
        .unwrap();
    expect_bytes(&mut away, &[0x90, 3, 0, 1, 0], "SUBACK").await;
    away.write_all(&[0xe0, 0]).await.unwrap();
    drop(away);
    let mut back = TcpStream::connect(broker.addr).await.unwrap();
    back.write_all(&connect).await.unwrap();
    expect_bytes(&mut back, &[0x20, 2, 1, 0], "CONNACK, session present").await;
    back.write_all(&[0xa2, 7, 0, 2, 0, 3, b'a', b'/', b'b']).await.unwrap();
    expect_bytes(&mut back, &[0xb0, 2, 0, 2], "UNSUBACK").await;
    // PUBLISH QoS 0 "a/b" "x", then a ping to flush it through the broker.
    client
        .write_all(&[0x30, 6, 0, 3, b'a', b'/', b'b', b'x'])
        .await
        .unwrap();
    assert_pings(&mut client).await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_pings(&mut back).await;
}

/// Debian's mosquitto_pub and mosquitto_sub, and a broker with a
/// mosquitto_passwd file (admin/admin, foo/foo), the ACL `acl` and `extra`
/// arguments.
fn acl_broker(dir: &TempDir, acl: &str, extra: &[&str]) -> Option<(Broker, std::path::PathBuf, std::path::PathBuf)> {
    let passwd = mosquitto_passwd_file(dir)?;
    let pub_ = tool("mosquitto_pub", "mosquitto-clients")?;
    let sub = tool("mosquitto_sub", "mosquitto-clients")?;
    let path = dir.path("acl");
    std::fs::write(&path, acl).unwrap();
    let args = [
        &["--password-file", passwd.as_str(), "--acl-file", path.to_str().unwrap()][..],
        extra,
    ]
    .concat();
    Some((Broker::start(&args), pub_, sub))
}

/// Mosquitto's acl_file: writes refused (and still acknowledged), subscriptions
/// that could never deliver refused, wildcards filtered at delivery.
#[tokio::test]
async fn the_acl_file_governs_publish_subscribe_and_delivery() {
    let dir = TempDir::new();
    let Some((broker, pub_, sub)) = acl_broker(
        &dir,
        "topic read public/#\n\
        user admin\n\
        topic readwrite #\n\
        user foo\n\
        topic write sensors/foo/#\n\
        topic read commands/foo/#\n\
        pattern read clients/%c/#\n",
        &["--allow-anonymous"],
    ) else {
        return;
    };
    let port = broker.port();
    let host = ["-h", "127.0.0.1", "-p", port.as_str()];
    let as_admin = [&host[..], &["-u", "admin", "-P", "admin"]].concat();
    let as_foo = [&host[..], &["-u", "foo", "-P", "foo", "-i", "foo-1"]].concat();

    // admin watches sensors/#; foo may write only its own sensors.
    let watcher = tokio::spawn(
        tokio::process::Command::new(&sub)
            .args(&as_admin)
            .args(["-t", "sensors/#", "-v", "-C", "1", "-W", "8"])
            .output(),
    );
    broker.process.line_async("client connected").await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let refused = run(
        &pub_,
        &[&as_foo[..], &["-t", "sensors/bar/t", "-q", "1", "-m", "not mine"]].concat(),
    )
    .await;
    assert!(
        refused.status.success(),
        "a refused QoS 1 publish is still acknowledged: {refused:?}"
    );
    let allowed = run(
        &pub_,
        &[&as_foo[..], &["-t", "sensors/foo/t", "-q", "1", "-m", "mine"]].concat(),
    )
    .await;
    assert!(allowed.status.success(), "{allowed:?}");
    let seen = tokio::time::timeout(STEP, watcher).await.unwrap().unwrap().unwrap();
    assert_eq!(
        String::from_utf8_lossy(&seen.stdout),
        "sensors/foo/t mine\n",
        "{seen:?}"
    );

    // foo subscribes to everything: granted (some of it is readable) and
    // filtered at delivery; its own clients/<id>/ topics come through the pattern.
    let reader = tokio::spawn(
        tokio::process::Command::new(&sub)
            .args(&as_foo)
            .args(["-t", "#", "-v", "-C", "2", "-W", "8"])
            .output(),
    );
    tokio::time::sleep(Duration::from_millis(500)).await;
    for topic in [
        "secret/x",
        "commands/foo/reboot",
        "clients/foo-2/x",
        "clients/foo-1/hello",
    ] {
        let out = run(&pub_, &[&as_admin[..], &["-t", topic, "-m", "m"]].concat()).await;
        assert!(out.status.success(), "{out:?}");
    }
    let got = tokio::time::timeout(STEP, reader).await.unwrap().unwrap().unwrap();
    assert_eq!(
        String::from_utf8_lossy(&got.stdout),
        "commands/foo/reboot m\nclients/foo-1/hello m\n",
        "{got:?}"
    );

    // A subscription that could never deliver is refused (SUBACK 0x80).
    let mut anonymous = connected(broker.addr, "anon", 0).await;
    // SUBSCRIBE pkid 9: "private/#" QoS 0, then "public/#" QoS 0.
    let mut subscribe = vec![0x82, 0, 0, 9];
    for filter in ["private/#", "public/#"] {
        subscribe.extend_from_slice(&(filter.len() as u16).to_be_bytes());
        subscribe.extend_from_slice(filter.as_bytes());
        subscribe.push(0);
    }
    subscribe[1] = (subscribe.len() - 2) as u8;
    anonymous.write_all(&subscribe).await.unwrap();
    let mut suback = [0; 6];
    tokio::time::timeout(STEP, anonymous.read_exact(&mut suback))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(suback, [0x90, 4, 0, 9, 0x80, 0], "private refused, public granted");
    broker.process.line_async("client connected").await;
}

/// QoS 2 through the ACL: a refused publish still completes its handshake; a
/// withheld delivery is completed with rumqttd, and later ones flow.
#[tokio::test]
async fn the_acl_keeps_qos_2_flows_whole() {
    let dir = TempDir::new();
    let Some((broker, pub_, sub)) = acl_broker(
        &dir,
        "user admin\ntopic readwrite #\nuser foo\ntopic read allowed/#\n",
        &[],
    ) else {
        return;
    };
    let port = broker.port();
    let host = ["-h", "127.0.0.1", "-p", port.as_str()];
    let as_admin = [&host[..], &["-u", "admin", "-P", "admin"]].concat();
    let as_foo = [&host[..], &["-u", "foo", "-P", "foo"]].concat();

    let refused = run(
        &pub_,
        &[&as_foo[..], &["-t", "allowed/x", "-q", "2", "-m", "no write"]].concat(),
    )
    .await;
    assert!(refused.status.success(), "the QoS 2 handshake completes: {refused:?}");

    let reader = tokio::spawn(
        tokio::process::Command::new(&sub)
            .args(&as_foo)
            .args(["-t", "#", "-q", "2", "-v", "-C", "1", "-W", "8"])
            .output(),
    );
    tokio::time::sleep(Duration::from_millis(500)).await;
    for (topic, message) in [("hidden/1", "a"), ("hidden/2", "b"), ("allowed/1", "c")] {
        let out = run(
            &pub_,
            &[&as_admin[..], &["-t", topic, "-q", "2", "-m", message]].concat(),
        )
        .await;
        assert!(out.status.success(), "{out:?}");
    }
    let got = tokio::time::timeout(STEP, reader).await.unwrap().unwrap().unwrap();
    assert_eq!(String::from_utf8_lossy(&got.stdout), "allowed/1 c\n", "{got:?}");
}

/// A reloaded ACL applies to clients already connected.
#[tokio::test]
async fn a_reloaded_acl_applies_to_connected_clients() {
    let dir = TempDir::new();
    let Some((broker, pub_, sub)) = acl_broker(
        &dir,
        "user admin\ntopic readwrite #\nuser foo\ntopic read before/#\n",
        &[],
    ) else {
        return;
    };
    let acl = dir.path("acl");
    let port = broker.port();
    let host = ["-h", "127.0.0.1", "-p", port.as_str()];
    let as_admin = [&host[..], &["-u", "admin", "-P", "admin"]].concat();
    let reader = tokio::spawn(
        tokio::process::Command::new(&sub)
            .args(host)
            .args(["-u", "foo", "-P", "foo", "-t", "#", "-v", "-C", "1", "-W", "10"])
            .output(),
    );
    broker.process.line_async("client connected").await;
    std::fs::write(&acl, "user admin\ntopic readwrite #\nuser foo\ntopic read after/#\n").unwrap();
    broker
        .process
        .line_async("password file and TLS material reloaded")
        .await;
    for topic in ["before/x", "after/x"] {
        let out = run(&pub_, &[&as_admin[..], &["-t", topic, "-m", "m"]].concat()).await;
        assert!(out.status.success(), "{out:?}");
    }
    let got = tokio::time::timeout(STEP, reader).await.unwrap().unwrap().unwrap();
    assert_eq!(String::from_utf8_lossy(&got.stdout), "after/x m\n", "{got:?}");
}

/// `$SYS/broker/...` as Mosquitto publishes them: the current values at once on
/// subscribing (retained), then every `sys_interval`.
#[tokio::test]
async fn sys_topics_are_published() {
    let Some(sub) = tool("mosquitto_sub", "mosquitto-clients") else {
        return;
    };
    let dir = TempDir::new();
    let broker = Broker::with_config(&dir, "allow_anonymous = true\nsys_interval = \"1s\"\n");
    let port = broker.port();
    let out = run(
        &sub,
        &[
            "-h",
            "127.0.0.1",
            "-p",
            &port,
            "-t",
            "$SYS/broker/version",
            "-C",
            "1",
            "-W",
            "5",
        ],
    )
    .await;
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        format!("snigate-broker version {}\n", env!("CARGO_PKG_VERSION"))
    );
    // Two snapshots of the connected count: the one at subscription, and the next.
    let out = run(
        &sub,
        &[
            "-h",
            "127.0.0.1",
            "-p",
            &port,
            "-t",
            "$SYS/broker/clients/connected",
            "-v",
            "-C",
            "2",
            "-W",
            "5",
        ],
    )
    .await;
    assert!(out.status.success(), "{out:?}");
    let lines: Vec<String> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(str::to_owned)
        .collect();
    assert_eq!(lines.len(), 2, "{lines:?}");
    assert!(
        lines.iter().all(|l| l.starts_with("$SYS/broker/clients/connected ")),
        "{lines:?}"
    );
    assert!(lines[1].ends_with(" 1"), "this subscriber is connected: {lines:?}");

    // The dashboard's subscription: everything under $SYS.
    let out = run(
        &sub,
        &[
            "-h",
            "127.0.0.1",
            "-p",
            &port,
            "-t",
            "$SYS/#",
            "-v",
            "-C",
            "14",
            "-W",
            "5",
        ],
    )
    .await;
    assert!(out.status.success(), "{out:?}");
    let text = String::from_utf8_lossy(&out.stdout);
    for topic in [
        "version",
        "uptime",
        "clients/connected",
        "clients/maximum",
        "clients/total",
        "messages/received",
        "messages/sent",
        "bytes/received",
        "bytes/sent",
        "subscriptions/count",
        "retained messages/count",
    ] {
        assert!(
            text.lines().any(|l| l.starts_with(&format!("$SYS/broker/{topic} "))),
            "{topic} in {text}"
        );
    }
}

#[test]
fn certs_writes_a_ca_and_certificates_that_verify_for_their_host_names() {
    let Some(openssl) = tool("openssl", "openssl") else {
        return;
    };
    let dir = TempDir::new();
    let out = dir.path("certs");
    let certs = |hosts: &[&str]| {
        let status = Command::new(BIN)
            .arg("certs")
            .arg("--out")
            .arg(&out)
            .args(["--also", "snigate-broker.mqtt.svc"])
            .args(hosts)
            .output()
            .unwrap();
        assert!(status.status.success(), "{status:?}");
        String::from_utf8_lossy(&status.stdout).into_owned()
    };
    assert!(certs(&["mqtt.example.test"]).contains("(new;"));
    let ca = std::fs::read_to_string(out.join("ca.crt")).unwrap();
    // A second host later: the same CA signs it.
    assert!(certs(&["other.example.test"]).contains("(reused)"));
    assert_eq!(std::fs::read_to_string(out.join("ca.crt")).unwrap(), ca);
    for (cert, name) in [
        ("mqtt.example.test.crt", "mqtt.example.test"),
        ("other.example.test.crt", "other.example.test"),
        ("mqtt.example.test.crt", "snigate-broker.mqtt.svc"),
    ] {
        let verify = Command::new(&openssl)
            .args(["verify", "-CAfile"])
            .arg(out.join("ca.crt"))
            .args(["-purpose", "sslserver", "-verify_hostname", name])
            .arg(out.join(cert))
            .output()
            .unwrap();
        assert!(verify.status.success(), "{name}: {verify:?}");
    }
    let wrong = Command::new(&openssl)
        .args(["verify", "-CAfile"])
        .arg(out.join("ca.crt"))
        .args(["-verify_hostname", "acme.com"])
        .arg(out.join("mqtt.example.test.crt"))
        .output()
        .unwrap();
    assert!(!wrong.status.success(), "a certificate names its hosts only");
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(out.join("ca.key")).unwrap().permissions().mode();
        assert_eq!(mode & 0o077, 0, "keys are the owner's alone");
    }
}

/// A raw CONNECT at MQTT `level` (4 or 5) with a user name and `password`
/// as bytes: the CONNACK's code.
async fn connect_with_password(port: u16, level: u8, user: &str, password: &[u8]) -> u8 {
    let field = |bytes: &[u8]| {
        let mut out = (bytes.len() as u16).to_be_bytes().to_vec();
        out.extend_from_slice(bytes);
        out
    };
    let mut body = field(b"MQTT");
    body.extend_from_slice(&[level, 0xc2, 0, 60]);
    if level == 5 {
        body.push(0);
    }
    body.extend(field(b"binary-password"));
    body.extend(field(user.as_bytes()));
    body.extend(field(password));
    let mut packet = vec![0x10, body.len() as u8];
    packet.extend(body);
    let mut stream = TcpStream::connect(("127.0.0.1", port)).await.unwrap();
    stream.write_all(&packet).await.unwrap();
    read_connack(&mut stream).await[3]
}

/// MQTT 3.1.1 §3.1.3.5, MQTT 5 §3.1.3.6: a password is binary data. One
/// that is not UTF-8, set with Debian's mosquitto_passwd, logs in to both
/// brokers at both levels; a wrong one is refused by both (5, and 0x87, not
/// authorized, on MQTT 5).
#[tokio::test]
async fn a_password_is_binary_data() {
    use std::os::unix::ffi::OsStrExt;
    let dir = TempDir::new();
    let Some(mosquitto_passwd) = tool("mosquitto_passwd", "mosquitto") else {
        return;
    };
    let path = dir.path("passwd");
    std::fs::write(&path, "").unwrap();
    let secret: &[u8] = b"\xff\xfe binary";
    let status = std::process::Command::new(mosquitto_passwd)
        .arg("-b")
        .arg(&path)
        .arg("bin")
        .arg(std::ffi::OsStr::from_bytes(secret))
        .status()
        .unwrap();
    assert!(status.success());
    let path = path.to_str().unwrap();
    let Some((_mosquitto, mosquitto_port)) = start_mosquitto(&dir, &format!("password_file {path}\n")) else {
        return;
    };
    let broker = Broker::with_config(&dir, &format!("password_file = \"{path}\"\n"));
    for port in [broker.addr.port(), mosquitto_port] {
        for level in [4, 5] {
            assert_eq!(
                connect_with_password(port, level, "bin", secret).await,
                0,
                "port {port}, level {level}"
            );
            let wrong = if level == 5 { 0x87 } else { 5 };
            let code = connect_with_password(port, level, "bin", b"\xff\xfe other").await;
            assert_eq!(code, wrong, "port {port}, level {level}");
        }
    }
}
