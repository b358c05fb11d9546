//! Broker scenarios: Debian's Mosquitto 2.0 beside snigate-broker, each a
//! fresh process per run with the same listeners, TLS material and password
//! file. Load comes from this process.

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::Context;
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;

use crate::mqtt::{self, Reader};
use crate::sys::{self, Target};
use crate::tls::{self, KeyShare, Material};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Broker {
    Mosquitto,
    Snigate,
    /// An earlier snigate-broker binary (`--broker-baseline`).
    Baseline,
}

impl Broker {
    pub fn name(self) -> &'static str {
        match self {
            Broker::Mosquitto => "mosquitto",
            Broker::Snigate => "snigate-broker",
            Broker::Baseline => "snigate-broker@baseline",
        }
    }
}

pub struct Running {
    pub plain: SocketAddr,
    pub tls: SocketAddr,
    pub process: Target,
}

/// The password file both brokers read: one user, PBKDF2-SHA512 (`$7$`, which
/// Mosquitto 2.0 and snigate-broker both take) at 1,000 rounds, so that logins
/// are not what a scenario measures.
pub fn password_file(dir: &Path) -> anyhow::Result<std::path::PathBuf> {
    let salt = snigate_broker::auth::passwd::new_salt().map_err(anyhow::Error::msg)?;
    let hash = snigate_broker::auth::passwd::hash_pbkdf2(mqtt::PASSWORD.as_bytes(), &salt, 1000);
    let path = dir.join("passwd");
    std::fs::write(&path, format!("{}:{hash}\n", mqtt::USER))?;
    Ok(path)
}

/// `memory_limit`: snigate-broker's (Mosquitto has none); `None`, room for
/// the idle scenario's clients whatever the machine's cgroup says.
#[allow(clippy::too_many_arguments)]
pub fn start(
    broker: Broker,
    material: &Material,
    passwd: &Path,
    cpu: Option<usize>,
    dir: &Path,
    memory_limit: Option<&str>,
    baseline: Option<&Path>,
) -> anyhow::Result<Running> {
    let plain = SocketAddr::from(([127, 0, 0, 1], sys::free_port()?));
    let tls = SocketAddr::from(([127, 0, 0, 1], sys::free_port()?));
    let (cert, key, _) = &material.files;
    let process = match broker {
        Broker::Mosquitto => {
            let mosquitto = sys::find("mosquitto").context("mosquitto is missing: Debian's mosquitto package")?;
            let config = dir.join("mosquitto.conf");
            std::fs::write(
                &config,
                format!(
                    "per_listener_settings false\npersistence false\nallow_anonymous false\npassword_file {}\n\
                     log_dest stderr\nlog_type error\nlog_type warning\nmax_queued_messages 1000\n\
                     set_tcp_nodelay true\n\
                     listener {} {}\nlistener {} {}\ncertfile {}\nkeyfile {}\n",
                    passwd.display(),
                    plain.port(),
                    plain.ip(),
                    tls.port(),
                    tls.ip(),
                    cert.display(),
                    key.display()
                ),
            )?;
            Target::spawn(
                &mosquitto,
                &["-c".into(), config.display().to_string()],
                cpu,
                &dir.join("mosquitto.log"),
            )?
        }
        Broker::Snigate | Broker::Baseline => {
            let binary = match (broker, baseline) {
                (Broker::Baseline, Some(path)) => path.to_owned(),
                (Broker::Baseline, None) => anyhow::bail!("no --broker-baseline binary"),
                _ => sys::ours("snigate-broker")?,
            };
            let config = dir.join("broker.toml");
            std::fs::write(
                &config,
                format!(
                    "listen = [\"{plain}\"]\ntls_listen = [\"{tls}\"]\ncert_file = {:?}\nkey_file = {:?}\n\
                     password_file = {:?}\nallow_anonymous = false\nsys_interval = \"0s\"\n\
                     memory_limit = {:?}\n[log]\nlevel = \"warn\"\n",
                    cert.display().to_string(),
                    key.display().to_string(),
                    passwd.display().to_string(),
                    memory_limit.unwrap_or("1GiB")
                ),
            )?;
            Target::spawn(
                &binary,
                &["--config".into(), config.display().to_string()],
                cpu,
                &dir.join("broker.log"),
            )?
        }
    };
    sys::wait_port(plain, Duration::from_secs(10))?;
    sys::wait_port(tls, Duration::from_secs(10))?;
    Ok(Running { plain, tls, process })
}

/// A logged-in client: plaintext to `addr`, or TLS (asking for `sni`).
pub async fn client(
    addr: SocketAddr,
    tls: Option<(&Arc<rustls::ClientConfig>, &str)>,
    client_id: &str,
) -> anyhow::Result<(Box<dyn StreamBox>, Reader)> {
    let tcp = TcpStream::connect(addr).await?;
    tcp.set_nodelay(true)?;
    let mut reader = Reader::default();
    let mut stream: Box<dyn StreamBox> = match tls {
        None => Box::new(tcp),
        Some((config, sni)) => {
            let name = rustls::pki_types::ServerName::try_from(sni.to_owned())?;
            Box::new(TlsConnector::from(config.clone()).connect(name, tcp).await?)
        }
    };
    mqtt::connect(&mut stream, &mut reader, client_id).await?;
    Ok((stream, reader))
}

pub trait StreamBox: AsyncRead + AsyncWrite + Unpin + Send {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send> StreamBox for T {}

/// Idle logged-in clients in `steps`: the broker's RSS per connection (slope,
/// KiB) and its RSS at the first step (KiB), to extrapolate from.
pub async fn idle(
    run: &Running,
    tls: Option<&Arc<rustls::ClientConfig>>,
    steps: &[usize],
) -> anyhow::Result<(f64, f64)> {
    let mut held = Vec::new();
    let mut points = Vec::new();
    let addr = if tls.is_some() { run.tls } else { run.plain };
    for &step in steps {
        while held.len() < step {
            let end = step.min(held.len() + 32);
            let mut batch = Vec::new();
            for i in held.len()..end {
                let config = tls.cloned();
                batch.push(tokio::spawn(async move {
                    client(addr, config.as_ref().map(|c| (c, tls::HOST)), &format!("idle-{i}")).await
                }));
            }
            for task in batch {
                held.push(task.await??);
            }
        }
        tokio::time::sleep(Duration::from_millis(700)).await;
        points.push((step as f64, run.process.rss_kib() as f64));
    }
    let (first, last) = (points[0], points[points.len() - 1]);
    Ok(((last.1 - first.1) / (last.0 - first.0), first.1))
}

/// `publishers` QoS 0 publishers as fast as the broker takes them, one
/// subscriber: messages/s delivered.
pub async fn fan_in(addr: SocketAddr, publishers: usize, duration: Duration) -> anyhow::Result<f64> {
    let (mut sub, mut sub_reader) = client(addr, None, "fan-in-sub").await?;
    mqtt::subscribe(&mut sub, &mut sub_reader, "bench/in", 0).await?;
    let stop = Arc::new(AtomicBool::new(false));
    let mut tasks = Vec::new();
    for p in 0..publishers {
        let (mut stream, _reader) = client(addr, None, &format!("fan-in-pub-{p}")).await?;
        let stop = stop.clone();
        tasks.push(tokio::spawn(async move {
            let mut batch = Vec::new();
            for _ in 0..64 {
                mqtt::publish(&mut batch, "bench/in", &[0x61; 64], 0, 0);
            }
            while !stop.load(Ordering::Relaxed) {
                if stream.write_all(&batch).await.is_err() {
                    break;
                }
            }
        }));
    }
    let received = count_deliveries(&mut sub, &mut sub_reader, duration, false).await?;
    stop.store(true, Ordering::Relaxed);
    for task in tasks {
        task.abort();
    }
    Ok(received)
}

/// Deliveries per second to one subscriber over `duration`, after a fifth of
/// it as warm-up; QoS 1 deliveries acknowledged.
async fn count_deliveries(
    stream: &mut Box<dyn StreamBox>,
    reader: &mut Reader,
    duration: Duration,
    ack: bool,
) -> anyhow::Result<f64> {
    let warm = Instant::now() + duration / 5;
    let end = warm + duration;
    let mut counted = 0u64;
    let mut acks = Vec::new();
    while Instant::now() < end {
        let more = tokio::time::timeout(Duration::from_millis(200), reader.fill(stream)).await;
        if let Ok(more) = more
            && !more?
        {
            break;
        }
        while let Some((first, body)) = reader.frame() {
            if first >> 4 != 3 {
                continue;
            }
            if Instant::now() >= warm {
                counted += 1;
            }
            if ack && let Some((1, pkid, _)) = mqtt::parse_publish(first, &body) {
                mqtt::puback(&mut acks, pkid);
            }
        }
        if !acks.is_empty() {
            stream.write_all(&acks).await?;
            acks.clear();
        }
    }
    Ok(counted as f64 / duration.as_secs_f64())
}

/// One QoS 1 publisher (up to `window` unacknowledged), one QoS 1 subscriber:
/// messages/s delivered. Plaintext, or TLS through `tls` (asking for its SNI).
pub async fn qos1(
    addr: SocketAddr,
    tls: Option<&Arc<rustls::ClientConfig>>,
    window: usize,
    duration: Duration,
) -> anyhow::Result<f64> {
    let tls = tls.map(|c| (c, tls::HOST));
    let (mut sub, mut sub_reader) = client(addr, tls, "qos1-sub").await?;
    mqtt::subscribe(&mut sub, &mut sub_reader, "bench/q1", 1).await?;
    let (mut publisher, mut pub_reader) = client(addr, tls, "qos1-pub").await?;
    let stop = Arc::new(AtomicBool::new(false));
    let stopped = stop.clone();
    let task = tokio::spawn(async move {
        let mut pkid: u16 = 0;
        let mut inflight = 0usize;
        let mut out = Vec::new();
        while !stopped.load(Ordering::Relaxed) {
            while inflight < window {
                pkid = pkid.checked_add(1).unwrap_or(1);
                mqtt::publish(&mut out, "bench/q1", &[0x62; 64], 1, pkid);
                inflight += 1;
            }
            if publisher.write_all(&out).await.is_err() {
                break;
            }
            out.clear();
            // Wait for at least one PUBACK.
            match pub_reader.next(&mut publisher).await {
                Ok((first, _)) if first >> 4 == 4 => inflight -= 1,
                Ok(_) => {}
                Err(_) => break,
            }
            while let Some((first, _)) = pub_reader.frame() {
                if first >> 4 == 4 {
                    inflight = inflight.saturating_sub(1);
                }
            }
        }
    });
    let rate = count_deliveries(&mut sub, &mut sub_reader, duration, true).await?;
    stop.store(true, Ordering::Relaxed);
    task.abort();
    Ok(rate)
}

/// `subscribers` clients on distinct topics (`bench/t/{i}`) and `wildcards`
/// more on wildcard filters (`bench/+/{j}`, each matching one of those
/// topics), then one publisher sends `messages` QoS 0 messages round the
/// topics and a PINGREQ: the broker answers it once it has routed every
/// message before it. Returns messages routed per second and the broker's
/// RSS with the subscriptions made (KiB). The subscribers do not read: each
/// gets a few messages, which its socket's buffers hold.
pub async fn many_topics(
    run: &Running,
    subscribers: usize,
    wildcards: usize,
    messages: usize,
) -> anyhow::Result<(f64, f64)> {
    let addr = run.plain;
    let mut held = Vec::new();
    let filters: Vec<String> = (0..subscribers)
        .map(|i| format!("bench/t/{i}"))
        .chain((0..wildcards).map(|j| format!("bench/+/{j}")))
        .collect();
    for batch in filters.chunks(32) {
        let mut tasks = Vec::new();
        for filter in batch {
            let filter = filter.clone();
            tasks.push(tokio::spawn(async move {
                let id = format!("many-{}", filter.replace('/', "-").replace('+', "w"));
                let (mut stream, mut reader) = client(addr, None, &id).await?;
                mqtt::subscribe(&mut stream, &mut reader, &filter, 0).await?;
                anyhow::Ok((stream, reader))
            }));
        }
        for task in tasks {
            held.push(task.await??);
        }
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    let rss = run.process.rss_kib() as f64;
    let (mut publisher, mut reader) = client(addr, None, "many-pub").await?;
    let mut batch = Vec::new();
    let started = Instant::now();
    for n in 0..messages {
        mqtt::publish(&mut batch, &format!("bench/t/{}", n % subscribers), &[0x6d; 64], 0, 0);
        if batch.len() >= 64 << 10 {
            publisher.write_all(&batch).await?;
            batch.clear();
        }
    }
    batch.extend_from_slice(&[0xc0, 0]);
    publisher.write_all(&batch).await?;
    loop {
        let (first, _) = tokio::time::timeout(Duration::from_secs(60), reader.next(&mut publisher)).await??;
        if first == 0xd0 {
            break;
        }
    }
    let rate = messages as f64 / started.elapsed().as_secs_f64();
    // Delivered, not only taken: the first subscriber and the first
    // wildcard filter have theirs.
    for at in [0, subscribers] {
        if let Some((stream, reader)) = held.get_mut(at) {
            let (first, _) = tokio::time::timeout(Duration::from_secs(10), reader.next(stream)).await??;
            anyhow::ensure!(first >> 4 == 3, "subscriber {at} got no PUBLISH");
        }
    }
    Ok((rate, rss))
}

/// One publisher at `rate` messages/s to `subscribers` QoS 0 subscribers for
/// `duration`: delivery latency (p50, p99) in microseconds.
pub async fn fan_out(
    addr: SocketAddr,
    subscribers: usize,
    rate: u32,
    duration: Duration,
) -> anyhow::Result<(f64, f64)> {
    let base = Instant::now();
    let samples = Arc::new(std::sync::Mutex::new(Vec::new()));
    let stop = Arc::new(AtomicU64::new(0));
    let mut tasks = Vec::new();
    for s in 0..subscribers {
        let (mut stream, mut reader) = client(addr, None, &format!("fan-out-{s}")).await?;
        mqtt::subscribe(&mut stream, &mut reader, "bench/out", 0).await?;
        let (samples, stop) = (samples.clone(), stop.clone());
        tasks.push(tokio::spawn(async move {
            let mut mine = Vec::new();
            while stop.load(Ordering::Relaxed) == 0 {
                let Ok(Ok((first, body))) =
                    tokio::time::timeout(Duration::from_millis(200), reader.next(&mut stream)).await
                else {
                    continue;
                };
                if let Some((_, _, payload)) = mqtt::parse_publish(first, &body)
                    && let Some(sent) = payload.get(..8)
                {
                    let sent = u64::from_be_bytes(sent.try_into().unwrap_or_default());
                    let now = base.elapsed().as_nanos() as u64;
                    mine.push(now.saturating_sub(sent) as f64 / 1000.0);
                }
            }
            if let Ok(mut all) = samples.lock() {
                all.extend(mine);
            }
        }));
    }
    let (mut publisher, _reader) = client(addr, None, "fan-out-pub").await?;
    let interval = Duration::from_secs_f64(1.0 / f64::from(rate));
    let mut ticker = tokio::time::interval(interval);
    let end = Instant::now() + duration;
    let mut out = Vec::new();
    while Instant::now() < end {
        ticker.tick().await;
        let mut payload = (base.elapsed().as_nanos() as u64).to_be_bytes().to_vec();
        payload.resize(64, 0);
        out.clear();
        mqtt::publish(&mut out, "bench/out", &payload, 0, 0);
        publisher.write_all(&out).await?;
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    stop.store(1, Ordering::Relaxed);
    for task in tasks {
        let _ = task.await;
    }
    let mut all = samples.lock().map(|s| s.clone()).unwrap_or_default();
    anyhow::ensure!(!all.is_empty(), "no deliveries");
    all.sort_by(f64::total_cmp);
    let at = |q: f64| all[((all.len() as f64 * q) as usize).min(all.len() - 1)];
    Ok((at(0.50), at(0.99)))
}

/// The client configuration brokers are reached with over TLS.
pub fn tls_client(material: &Material) -> anyhow::Result<Arc<rustls::ClientConfig>> {
    material.client(KeyShare::PostQuantum)
}

/// snigate-router in front of a broker's TLS listener, for the "through the
/// router" scenario.
pub fn router_in_front(broker_tls: SocketAddr, cpu: Option<usize>, dir: &Path) -> anyhow::Result<(Target, SocketAddr)> {
    let port = sys::free_port()?;
    let addr = SocketAddr::from(([127, 0, 0, 1], port));
    let file = dir.join("router.toml");
    std::fs::write(
        &file,
        format!(
            "listen = [\"{addr}\"]\n[log]\nlevel = \"warn\"\n[reload]\nwatch = false\n\
             [[route]]\nname = \"broker\"\nhosts = [\"{}\"]\nendpoints = [\"{broker_tls}\"]\n",
            tls::HOST
        ),
    )?;
    let process = Target::spawn(
        &sys::ours("snigate-router")?,
        &["--config".into(), file.display().to_string()],
        cpu,
        &dir.join("router.log"),
    )?;
    sys::wait_port(addr, Duration::from_secs(10))?;
    Ok((process, addr))
}

/// Peak RSS so far (VmHWM), in MiB.
pub fn peak_mib(process: &Target) -> f64 {
    let status = std::fs::read_to_string(format!("/proc/{}/status", process.pid())).unwrap_or_default();
    status
        .lines()
        .find(|l| l.starts_with("VmHWM:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse::<f64>().ok())
        .map_or(0.0, |kib| kib / 1024.0)
}
