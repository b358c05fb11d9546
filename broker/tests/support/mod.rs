//! What the broker's integration tests share: the broker under test, raw MQTT
//! packets, and Debian's clients.
#![allow(dead_code)]

use std::net::SocketAddr;
use std::process::{Command, Output};

use snigate_shared::testing::{Process, STEP, TempDir, tool};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

pub use snigate_shared::testing::mqtt::connect_packet;

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

    /// The broker with `config` as its `broker.toml`, written in `dir`.
    pub fn with_config(dir: &TempDir, config: &str) -> Self {
        let path = dir.path("broker.toml");
        std::fs::write(&path, config).unwrap();
        Self::start(&["--config", path.to_str().unwrap()])
    }

    pub fn port(&self) -> String {
        self.addr.port().to_string()
    }
}

/// Mosquitto beside snigate-broker, both anonymous on loopback; `None` (the
/// test returns) where Mosquitto is missing outside CI.
pub fn side_by_side(dir: &TempDir, mosquitto_config: &str, broker_config: &str) -> Option<((Process, u16), Broker)> {
    let mosquitto = start_mosquitto(dir, &format!("allow_anonymous true\n{mosquitto_config}"))?;
    let broker = Broker::with_config(
        dir,
        &format!("listen = [\"127.0.0.1:0\"]\nadmin = \"127.0.0.1:0\"\nallow_anonymous = true\n{broker_config}"),
    );
    Some((mosquitto, broker))
}

/// Debian's Mosquitto 2.0 on a free loopback port, with `config` after its
/// `listener` line (so listener options apply to it).
pub fn start_mosquitto(dir: &TempDir, config: &str) -> Option<(Process, u16)> {
    let mosquitto = tool("mosquitto", "mosquitto")?;
    // Mosquitto cannot listen on port 0; take a free port and hand it over.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let path = dir.path("mosquitto.conf");
    std::fs::write(&path, format!("listener {port} 127.0.0.1\nlog_dest stderr\n{config}")).unwrap();
    let mut command = Command::new(mosquitto);
    command.arg("-c").arg(&path);
    let process = Process::spawn("mosquitto", command);
    process.line(" running");
    Some((process, port))
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

/// The four bytes of a CONNACK of MQTT 3.1.1, within [`STEP`].
pub async fn read_connack<S: tokio::io::AsyncRead + Unpin>(stream: &mut S) -> [u8; 4] {
    let mut connack = [0; 4];
    tokio::time::timeout(STEP, stream.read_exact(&mut connack))
        .await
        .expect("a CONNACK in time")
        .expect("a CONNACK");
    connack
}

pub async fn connected(addr: SocketAddr, client_id: &str, keep_alive: u16) -> TcpStream {
    let mut stream = TcpStream::connect(addr).await.unwrap();
    stream.write_all(&connect_packet(client_id, keep_alive)).await.unwrap();
    assert_eq!(read_connack(&mut stream).await, [0x20, 2, 0, 0], "CONNACK accepted");
    stream
}

/// The next `expected.len()` bytes from `stream`, asserted to be `expected`
/// (`what` names them in the failure).
pub async fn expect_bytes(stream: &mut TcpStream, expected: &[u8], what: &str) {
    let mut got = vec![0; expected.len()];
    tokio::time::timeout(STEP, stream.read_exact(&mut got))
        .await
        .unwrap_or_else(|_| panic!("no {what}"))
        .unwrap();
    assert_eq!(got, expected, "{what}");
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

/// The python of the virtualenv scripts/test makes under target/tools/venv,
/// with paho-mqtt 2.x (this machine's python cannot import Debian's
/// python3-paho-mqtt); `None`, loudly, outside CI without it, and a failure
/// under CI.
pub fn paho_python() -> Option<std::path::PathBuf> {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).parent()?;
    let python = root.join("target/tools/venv/bin/python");
    if python.is_file() {
        return Some(python);
    }
    let ci = std::env::var("CI").is_ok_and(|v| !v.is_empty());
    assert!(
        !ci,
        "paho-mqtt is required under CI: scripts/test makes target/tools/venv with it"
    );
    eprintln!("\n*** SKIPPED: no target/tools/venv with paho-mqtt; run scripts/test ***\n");
    None
}
