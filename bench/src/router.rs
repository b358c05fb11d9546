//! Router scenarios: TLS clients through a proxy to a TLS backend chosen by
//! SNI, against three targets: no proxy (`direct`, the physical limit),
//! HAProxy in TCP mode on `req.ssl_sni`, and snigate-router (and, with
//! `--router-baseline`, an earlier snigate-router binary beside it). Clients
//! and the backend run in this process; the proxy is a fresh process per run.

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::Context;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio_rustls::{TlsAcceptor, TlsConnector};

use crate::sys::{self, Target};
use crate::tls::{self, Material};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Proxy {
    Direct,
    Haproxy,
    Snigate,
    /// An earlier snigate-router binary (`--router-baseline`).
    Baseline,
}

impl Proxy {
    pub fn name(self) -> &'static str {
        match self {
            Proxy::Direct => "direct",
            Proxy::Haproxy => "haproxy",
            Proxy::Snigate => "snigate-router",
            Proxy::Baseline => "snigate-router@baseline",
        }
    }
}

/// What the backend does with each connection after the handshake.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mode {
    /// Echo what it reads (round trips).
    Echo,
    /// Read and count (uploads).
    Sink,
    /// Write until the client leaves (downloads).
    Source,
    /// Nothing: idle connections, handshakes.
    Hold,
}

pub struct Backend {
    pub addr: SocketAddr,
    pub received: Arc<AtomicU64>,
    stop: Arc<AtomicBool>,
}

impl Backend {
    pub async fn start(material: &Material, mode: Mode) -> anyhow::Result<Self> {
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let acceptor = TlsAcceptor::from(material.server.clone());
        let received = Arc::new(AtomicU64::new(0));
        let stop = Arc::new(AtomicBool::new(false));
        let (counter, stopped) = (received.clone(), stop.clone());
        tokio::spawn(async move {
            while let Ok((tcp, _)) = listener.accept().await {
                if stopped.load(Ordering::Relaxed) {
                    break;
                }
                let _ = tcp.set_nodelay(true);
                let acceptor = acceptor.clone();
                let counter = counter.clone();
                tokio::spawn(async move {
                    let Ok(mut tls) = acceptor.accept(tcp).await else {
                        return;
                    };
                    let mut buf = vec![0u8; 64 << 10];
                    match mode {
                        Mode::Echo => {
                            while let Ok(n) = tls.read(&mut buf).await {
                                if n == 0 || tls.write_all(&buf[..n]).await.is_err() {
                                    break;
                                }
                            }
                        }
                        Mode::Sink => {
                            while let Ok(n) = tls.read(&mut buf).await {
                                if n == 0 {
                                    break;
                                }
                                counter.fetch_add(n as u64, Ordering::Relaxed);
                            }
                        }
                        Mode::Source => while tls.write_all(&buf).await.is_ok() {},
                        Mode::Hold => {
                            let _ = tls.read(&mut buf).await;
                        }
                    }
                });
            }
        });
        Ok(Self { addr, received, stop })
    }
}

impl Drop for Backend {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

/// A proxy in front of `backend`, with `routes` routes (the one clients use
/// among them), on `cpu` when given.
pub struct Running {
    pub addr: SocketAddr,
    pub sni: String,
    pub process: Option<Target>,
}

pub fn start(
    proxy: Proxy,
    backend: SocketAddr,
    routes: usize,
    cpu: Option<usize>,
    dir: &Path,
    baseline: Option<&Path>,
) -> anyhow::Result<Running> {
    start_with(proxy, &[backend], routes, None, cpu, dir, baseline)
}

/// The ingress row's setting: a route over several backends, balanced by
/// least connections, behind an allow list of `cidrs` blocks (the client's
/// 127.0.0.0/8 among them, the others spread out so that they do not merge).
pub fn start_pool(
    proxy: Proxy,
    backends: &[SocketAddr],
    cidrs: usize,
    dir: &Path,
    baseline: Option<&Path>,
) -> anyhow::Result<Running> {
    start_with(proxy, backends, 3, Some(cidrs), None, dir, baseline)
}

fn allow_list(cidrs: usize) -> Vec<String> {
    let mut list: Vec<String> = (1..cidrs)
        .map(|i| format!("10.{}.{}.0/24", i / 128, (i % 128) * 2))
        .collect();
    list.push("127.0.0.0/8".to_owned());
    list
}

fn start_with(
    proxy: Proxy,
    backends: &[SocketAddr],
    routes: usize,
    allow: Option<usize>,
    cpu: Option<usize>,
    dir: &Path,
    baseline: Option<&Path>,
) -> anyhow::Result<Running> {
    let backend = backends[0];
    let sni = if routes > 3 {
        format!("h{}.{}", routes / 2, tls::HOST)
    } else {
        tls::HOST.to_owned()
    };
    if proxy == Proxy::Direct {
        return Ok(Running {
            addr: backend,
            sni,
            process: None,
        });
    }
    let port = sys::free_port()?;
    let addr = SocketAddr::from(([127, 0, 0, 1], port));
    let process = match proxy {
        Proxy::Haproxy => {
            let haproxy = sys::find("haproxy").context("haproxy is missing: install Debian's haproxy package")?;
            let map = dir.join("routes.map");
            let rule = if routes > 3 {
                let lines: String = (0..routes).map(|i| format!("h{i}.{} be\n", tls::HOST)).collect();
                std::fs::write(&map, lines)?;
                format!("    use_backend %[req.ssl_sni,lower,map({})]\n", map.display())
            } else {
                format!(
                    "    use_backend be if {{ req.ssl_sni -i {} }}\n    use_backend be if {{ req.ssl_sni -i other1.test }}\n    use_backend be if {{ req.ssl_sni -i other2.test }}\n",
                    tls::HOST
                )
            };
            let acl = match allow {
                Some(cidrs) => {
                    let file = dir.join("allow.lst");
                    std::fs::write(&file, allow_list(cidrs).join("\n") + "\n")?;
                    format!(
                        "    tcp-request connection reject unless {{ src -f {} }}\n",
                        file.display()
                    )
                }
                None => String::new(),
            };
            let balance = if allow.is_some() { "    balance leastconn\n" } else { "" };
            let servers: String = backends
                .iter()
                .enumerate()
                .map(|(i, b)| format!("    server s{} {b}\n", i + 1))
                .collect();
            let config = dir.join("haproxy.cfg");
            std::fs::write(
                &config,
                format!(
                    "global\n    maxconn 9800\n    nbthread {threads}\n\
                     defaults\n    mode tcp\n    timeout connect 5s\n    timeout client 1h\n    timeout server 1h\n\
                     frontend fe\n    bind {addr}\n{acl}    tcp-request inspect-delay 5s\n    tcp-request content accept if {{ req.ssl_hello_type 1 }}\n\
                     {rule}\
                     backend be\n{balance}{servers}",
                    threads = if cpu.is_some() { 1 } else { sys::cpus() },
                ),
            )?;
            Target::spawn(
                &haproxy,
                &["-f".into(), config.display().to_string(), "-db".into()],
                cpu,
                &dir.join("haproxy.log"),
            )?
        }
        Proxy::Snigate | Proxy::Baseline => {
            let router = match (proxy, baseline) {
                (Proxy::Baseline, Some(path)) => path.to_owned(),
                (Proxy::Baseline, None) => anyhow::bail!("no --router-baseline binary given"),
                _ => sys::ours("snigate-router")?,
            };
            let mut config = format!(
                "listen = [\"{addr}\"]\n\
                 # As HAProxy here: no access log (errors still logged).\n\
                 [log]\nlevel = \"warn\"\n[reload]\nwatch = false\n"
            );
            if routes > 3 {
                for i in 0..routes {
                    config.push_str(&format!(
                        "[[route]]\nname = \"r{i}\"\nhosts = [\"h{i}.{}\"]\nendpoints = [\"{backend}\"]\n",
                        tls::HOST
                    ));
                }
            } else if let Some(cidrs) = allow {
                let endpoints: Vec<String> = backends.iter().map(|b| format!("\"{b}\"")).collect();
                let allow: Vec<String> = allow_list(cidrs).iter().map(|c| format!("\"{c}\"")).collect();
                config.push_str(&format!(
                    "[[route]]\nname = \"bench\"\nhosts = [\"{}\"]\nendpoints = [{}]\nbalance = \"least-connections\"\nallow = [{}]\n",
                    tls::HOST,
                    endpoints.join(", "),
                    allow.join(", ")
                ));
            } else {
                config.push_str(&format!(
                    "[[route]]\nname = \"bench\"\nhosts = [\"{}\"]\nendpoints = [\"{backend}\"]\n\
                     [[route]]\nname = \"other1\"\nhosts = [\"other1.test\"]\nendpoints = [\"{backend}\"]\n\
                     [[route]]\nname = \"other2\"\nhosts = [\"other2.test\"]\nendpoints = [\"{backend}\"]\n",
                    tls::HOST
                ));
            }
            let file = dir.join("router.toml");
            std::fs::write(&file, config)?;
            Target::spawn(
                &router,
                &["--config".into(), file.display().to_string()],
                cpu,
                &dir.join("router.log"),
            )?
        }
        Proxy::Direct => unreachable!("handled above"),
    };
    sys::wait_port(addr, Duration::from_secs(10))?;
    Ok(Running {
        addr,
        sni,
        process: Some(process),
    })
}

async fn connect(
    addr: SocketAddr,
    sni: &str,
    config: &Arc<rustls::ClientConfig>,
) -> anyhow::Result<tokio_rustls::client::TlsStream<TcpStream>> {
    let tcp = TcpStream::connect(addr).await?;
    tcp.set_nodelay(true)?;
    let name = rustls::pki_types::ServerName::try_from(sni.to_owned())?;
    Ok(TlsConnector::from(config.clone()).connect(name, tcp).await?)
}

/// Full handshakes per second: `concurrency` loops of connect, handshake,
/// close, for `duration`.
pub async fn handshakes(
    run: &Running,
    config: Arc<rustls::ClientConfig>,
    concurrency: usize,
    duration: Duration,
) -> anyhow::Result<f64> {
    let done = Arc::new(AtomicU64::new(0));
    let deadline = Instant::now() + duration;
    let mut tasks = Vec::new();
    for _ in 0..concurrency {
        let (config, done, sni, addr) = (config.clone(), done.clone(), run.sni.clone(), run.addr);
        tasks.push(tokio::spawn(async move {
            while Instant::now() < deadline {
                if let Ok(mut tls) = connect(addr, &sni, &config).await {
                    done.fetch_add(1, Ordering::Relaxed);
                    let _ = tls.shutdown().await;
                }
            }
        }));
    }
    for task in tasks {
        let _ = task.await;
    }
    Ok(done.load(Ordering::Relaxed) as f64 / duration.as_secs_f64())
}

/// What a bulk window measured.
pub struct Bulk {
    pub mb_per_s: f64,
    /// CPU time the proxy spent per GB relayed (user and system): what the
    /// relay costs, whether or not the proxy was the bottleneck. `None`
    /// without a proxy.
    pub cpu_ms_per_gb: Option<f64>,
}

/// MB/s over `conns` connections for `duration`, uploading (the backend
/// counts) or downloading (the clients count), and the proxy's CPU per GB.
pub async fn bulk(
    run: &Running,
    backend: &Backend,
    config: Arc<rustls::ClientConfig>,
    conns: usize,
    upload: bool,
    duration: Duration,
) -> anyhow::Result<Bulk> {
    let received = Arc::new(AtomicU64::new(0));
    let stop = Arc::new(AtomicBool::new(false));
    let mut tasks = Vec::new();
    for _ in 0..conns {
        let mut tls = connect(run.addr, &run.sni, &config).await?;
        let (received, stop) = (received.clone(), stop.clone());
        tasks.push(tokio::spawn(async move {
            let mut buf = vec![0x5au8; 64 << 10];
            while !stop.load(Ordering::Relaxed) {
                if upload {
                    if tls.write_all(&buf).await.is_err() {
                        break;
                    }
                } else {
                    match tls.read(&mut buf).await {
                        Ok(0) | Err(_) => break,
                        Ok(n) => {
                            received.fetch_add(n as u64, Ordering::Relaxed);
                        }
                    }
                }
            }
        }));
    }
    // A short warm-up, then the window.
    tokio::time::sleep(duration / 5).await;
    let counter = if upload {
        backend.received.clone()
    } else {
        received.clone()
    };
    let cpu = || run.process.as_ref().map(|p| p.cpu());
    let start = (counter.load(Ordering::Relaxed), Instant::now(), cpu());
    tokio::time::sleep(duration).await;
    let bytes = counter.load(Ordering::Relaxed) - start.0;
    let elapsed = start.1.elapsed();
    let cpu_ms_per_gb = match (start.2, cpu()) {
        (Some(before), Some(after)) if bytes > 0 => Some((after - before).as_secs_f64() * 1e3 / (bytes as f64 / 1e9)),
        _ => None,
    };
    stop.store(true, Ordering::Relaxed);
    for task in tasks {
        task.abort();
    }
    Ok(Bulk {
        mb_per_s: bytes as f64 / elapsed.as_secs_f64() / 1e6,
        cpu_ms_per_gb,
    })
}

/// Round trips of 64 bytes over one connection: (p50, p99) in microseconds.
pub async fn round_trips(run: &Running, config: Arc<rustls::ClientConfig>, count: usize) -> anyhow::Result<(f64, f64)> {
    let mut tls = connect(run.addr, &run.sni, &config).await?;
    let request = [0x42u8; 64];
    let mut reply = [0u8; 64];
    let mut samples = Vec::with_capacity(count);
    for i in 0..count + count / 10 {
        let started = Instant::now();
        tls.write_all(&request).await?;
        tls.read_exact(&mut reply).await?;
        if i >= count / 10 {
            samples.push(started.elapsed().as_secs_f64() * 1e6);
        }
    }
    samples.sort_by(f64::total_cmp);
    let at = |q: f64| samples[((samples.len() as f64 * q) as usize).min(samples.len() - 1)];
    Ok((at(0.50), at(0.99)))
}

/// Idle TLS connections held through the proxy, in `steps`: the proxy's RSS
/// per connection (slope, KiB) and its CPU while idle (percent of one core).
pub async fn idle(run: &Running, config: Arc<rustls::ClientConfig>, steps: &[usize]) -> anyhow::Result<(f64, f64)> {
    let process = run.process.as_ref().context("idle needs a proxy")?;
    let mut held = Vec::new();
    let mut points = Vec::new();
    for &step in steps {
        while held.len() < step {
            // 64 at a time: a burst the proxy's accept loop takes in stride.
            let batch: Vec<_> = (held.len()..step.min(held.len() + 64))
                .map(|_| {
                    let (addr, sni, config) = (run.addr, run.sni.clone(), config.clone());
                    async move { connect(addr, &sni, &config).await }
                })
                .collect();
            for tls in futures_join(batch).await {
                held.push(tls?);
            }
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
        points.push((step as f64, process.rss_kib() as f64));
    }
    let cpu_before = process.cpu();
    let window = Duration::from_secs(3);
    tokio::time::sleep(window).await;
    let idle_cpu = (process.cpu() - cpu_before).as_secs_f64() / window.as_secs_f64() * 100.0;
    let (first, last) = (points[0], points[points.len() - 1]);
    drop(held);
    Ok(((last.1 - first.1) / (last.0 - first.0), idle_cpu))
}

async fn futures_join<T: Send + 'static>(
    futures: Vec<impl std::future::Future<Output = T> + Send + 'static>,
) -> Vec<T> {
    let handles: Vec<_> = futures.into_iter().map(tokio::spawn).collect();
    let mut out = Vec::with_capacity(handles.len());
    for handle in handles {
        if let Ok(value) = handle.await {
            out.push(value);
        }
    }
    out
}
