//! The testbed: the OpenShift edge of the article on one machine. One
//! snigate-router and brokers behind it by SNI, each broker with its own host
//! name, a certificate for it from a development CA, and users from a password
//! file, all run in this process through the components' libraries.
//!
//! [`Topology`] is `config/testbed.toml`; [`Testbed::start`] writes every file a
//! component reads (certificates, password files, each one's TOML) into a
//! directory, starts the brokers, then the router with a route per broker to
//! where the broker actually listens, and waits for each `/readyz`. The files are
//! the components' real configuration, loaded as the binaries load theirs, so a
//! testbed directory also shows how to run the same edge with the binaries.
//!
//! The workspace's end-to-end tests (`tests/tests/`) run on it; the binary
//! (`src/main.rs`) is the README's first command.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context, bail};
use serde::Deserialize;
use snigate_shared::config::{ConfigError, Source};
use snigate_shared::shutdown::Shutdown;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// `config/testbed.toml`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Topology {
    #[serde(default)]
    pub router: RouterSpec,
    #[serde(rename = "broker")]
    pub brokers: Vec<BrokerSpec>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RouterSpec {
    #[serde(default = "default_router_listen")]
    pub listen: SocketAddr,
    #[serde(default = "default_router_admin")]
    pub admin: SocketAddr,
}

fn default_router_listen() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], 8443))
}

fn default_router_admin() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], 9090))
}

impl Default for RouterSpec {
    fn default() -> Self {
        Self {
            listen: default_router_listen(),
            admin: default_router_admin(),
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BrokerSpec {
    pub name: String,
    /// The host name clients use through the router (their SNI).
    pub host: String,
    /// The broker's TLS listener. Port 0: any free port.
    #[serde(default = "any_port")]
    pub listen: SocketAddr,
    #[serde(default = "any_port")]
    pub admin: SocketAddr,
    /// `"v1"` or `"v2"`: the router sends a PROXY header, the broker reads it.
    pub proxy_protocol: Option<String>,
    /// User name to password.
    #[serde(default)]
    pub users: BTreeMap<String, String>,
}

fn any_port() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], 0))
}

impl Topology {
    /// Read and check a topology file; errors name the file, line and field.
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        let source = Source::read(path)?;
        let topology: Self = source.parse()?;
        topology.check().map_err(|(field, message)| {
            ConfigError::new(
                snigate_shared::config::Origin::File {
                    path: path.to_owned(),
                    position: None,
                },
                Some(field),
                message,
            )
        })?;
        Ok(topology)
    }

    fn check(&self) -> Result<(), (String, String)> {
        if self.brokers.is_empty() {
            return Err(("broker".into(), "at least one [[broker]] is needed".into()));
        }
        let mut seen = std::collections::HashSet::new();
        for (i, broker) in self.brokers.iter().enumerate() {
            let field = |f: &str| format!("broker[{i}].{f}");
            let plain = |c: char| c.is_ascii_alphanumeric() || c == '-' || c == '_';
            if broker.name.is_empty() || !broker.name.chars().all(plain) {
                return Err((field("name"), "letters, digits, '-' and '_' only".into()));
            }
            let label = |l: &str| {
                !l.is_empty()
                    && l.len() <= 63
                    && l.chars().all(|c| c.is_ascii_alphanumeric() || c == '-')
                    && !l.starts_with('-')
                    && !l.ends_with('-')
            };
            if broker.host.len() > 253 || !broker.host.split('.').all(label) {
                return Err((
                    field("host"),
                    format!(
                        "`{}`: not a DNS host name (labels of letters, digits and '-')",
                        broker.host
                    ),
                ));
            }
            if !seen.insert(broker.name.clone()) || !seen.insert(broker.host.to_ascii_lowercase()) {
                return Err((field("name"), "each broker needs its own name and host".into()));
            }
            if let Some(v) = &broker.proxy_protocol
                && v != "v1"
                && v != "v2"
            {
                return Err((field("proxy_protocol"), format!("`{v}`: expected \"v1\" or \"v2\"")));
            }
        }
        Ok(())
    }

    /// The same topology on ports the system picks: for tests, which run
    /// side by side.
    pub fn on_any_ports(mut self) -> Self {
        self.router.listen.set_port(0);
        self.router.admin.set_port(0);
        for broker in &mut self.brokers {
            broker.listen.set_port(0);
            broker.admin.set_port(0);
        }
        self
    }
}

/// A broker as it runs.
#[derive(Debug, Clone)]
pub struct RunningBroker {
    pub name: String,
    pub host: String,
    /// Its TLS listener, reached directly (clients go through the router).
    pub addr: SocketAddr,
    pub admin: SocketAddr,
    pub users: BTreeMap<String, String>,
    pub proxy_protocol: Option<String>,
}

/// A running testbed. [`Testbed::stop`] ends it; dropping it stops nothing by
/// itself (the process's exit does).
#[derive(Debug)]
pub struct Testbed {
    pub dir: PathBuf,
    /// The development CA's certificate: what clients verify against.
    pub ca_file: PathBuf,
    /// A hosts file naming every broker's host 127.0.0.1, for a private mount
    /// over /etc/hosts (docs/testbed.md).
    pub hosts_file: PathBuf,
    pub router: SocketAddr,
    pub router_admin: SocketAddr,
    pub brokers: Vec<RunningBroker>,
    shutdown: Shutdown,
    tasks: tokio::task::JoinSet<anyhow::Result<()>>,
}

/// How long every component gets to say it is ready.
const READY_WITHIN: Duration = Duration::from_secs(10);
/// PBKDF2 rounds for the testbed's password files: a development file, hashed
/// cheaply so that debug builds log in fast (Mosquitto 2.0 itself wrote 101).
const DEV_PBKDF2_ITERATIONS: u32 = 1000;

impl Testbed {
    /// Write `dir`'s files and start everything; returns once every
    /// component's `/readyz` answers 200.
    pub async fn start(topology: &Topology, dir: &Path) -> anyhow::Result<Self> {
        std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
        let dir = dir.canonicalize()?;
        let hosts: Vec<String> = topology.brokers.iter().map(|b| b.host.clone()).collect();
        let certs = snigate_shared::certs::write_server_set(&dir, "snigate testbed CA", &hosts, &[], 5)?;
        let shutdown = Shutdown::new();
        let mut tasks = tokio::task::JoinSet::new();

        let mut brokers = Vec::new();
        for (spec, (_, cert, key)) in topology.brokers.iter().zip(&certs.servers) {
            let running = start_broker(spec, &dir, cert, key, &shutdown, &mut tasks)
                .await
                .with_context(|| format!("broker {}", spec.name))?;
            brokers.push(running);
        }
        let (router, router_admin) = start_router(&topology.router, &brokers, &dir, &shutdown, &mut tasks)?;

        let mut hosts_text = String::from("127.0.0.1 localhost\n::1 localhost ip6-localhost ip6-loopback\n");
        // A router on every address is reached on loopback.
        let router_ip = if router.ip().is_unspecified() {
            std::net::IpAddr::from([127, 0, 0, 1])
        } else {
            router.ip()
        };
        for broker in &brokers {
            let _ = writeln!(hosts_text, "{router_ip} {}", broker.host);
        }
        let hosts_file = dir.join("hosts");
        std::fs::write(&hosts_file, hosts_text)?;

        let testbed = Self {
            ca_file: certs.ca_cert,
            hosts_file,
            dir,
            router,
            router_admin,
            brokers,
            shutdown,
            tasks,
        };
        for admin in std::iter::once(testbed.router_admin).chain(testbed.brokers.iter().map(|b| b.admin)) {
            wait_ready(admin).await?;
        }
        Ok(testbed)
    }

    pub fn broker(&self, name: &str) -> &RunningBroker {
        self.brokers
            .iter()
            .find(|b| b.name == name)
            .unwrap_or_else(|| panic!("no broker named {name} in the testbed"))
    }

    /// Stop everything: connections are told (MQTT 5 clients get DISCONNECT
    /// 0x8B) and drained, as on SIGTERM.
    pub async fn stop(mut self) -> anyhow::Result<()> {
        self.shutdown.stop.cancel();
        while let Some(done) = self.tasks.join_next().await {
            done??;
        }
        Ok(())
    }

    /// Wait for Ctrl-C or SIGTERM (a second one forces the drain), then stop.
    pub async fn run_until_signalled(self) -> anyhow::Result<()> {
        self.shutdown.listen_for_signals()?;
        self.shutdown.stop.cancelled().await;
        self.stop().await
    }
}

async fn start_broker(
    spec: &BrokerSpec,
    dir: &Path,
    cert: &Path,
    key: &Path,
    shutdown: &Shutdown,
    tasks: &mut tokio::task::JoinSet<anyhow::Result<()>>,
) -> anyhow::Result<RunningBroker> {
    let home = dir.join(&spec.name);
    std::fs::create_dir_all(&home)?;
    let mut passwd = String::from("# snigate testbed: development users, from config/testbed.toml\n");
    for (user, password) in &spec.users {
        let salt = snigate_broker::auth::passwd::new_salt().map_err(anyhow::Error::msg)?;
        let hash = snigate_broker::auth::passwd::hash_pbkdf2(password.as_bytes(), &salt, DEV_PBKDF2_ITERATIONS);
        let _ = writeln!(passwd, "{user}:{hash}");
    }
    let passwd_file = home.join("passwd");
    std::fs::write(&passwd_file, passwd)?;
    let listener = match spec.proxy_protocol {
        Some(_) => format!("{{ address = \"{}\", proxy_protocol = true }}", spec.listen),
        None => format!("\"{}\"", spec.listen),
    };
    let config_file = home.join("broker.toml");
    std::fs::write(
        &config_file,
        format!(
            "# Written by the testbed for {name} ({host}).\n\
             listen = []\n\
             tls_listen = [{listener}]\n\
             cert_file = {cert:?}\n\
             key_file = {key:?}\n\
             password_file = {passwd:?}\n\
             allow_anonymous = false\n\
             admin = \"{admin}\"\n\
             # The article's pod limit.\n\
             memory_limit = \"128MiB\"\n\
             sys_interval = \"2s\"\n",
            name = spec.name,
            host = spec.host,
            cert = cert.display().to_string(),
            key = key.display().to_string(),
            passwd = passwd_file.display().to_string(),
            admin = spec.admin,
        ),
    )?;
    let config = snigate_broker::config::BrokerConfig::load(Some(&config_file), &[])?;
    let material = snigate_broker::load_material(&config, false)?;
    let listeners = snigate_broker::bind(&config).await?;
    let addr = listeners.tls.first().context("no TLS listener")?.local_addr()?;
    let admin = listeners.admin.as_ref().context("no admin listener")?.local_addr()?;
    tasks.spawn(snigate_broker::run(config, material, listeners, shutdown.clone()));
    Ok(RunningBroker {
        name: spec.name.clone(),
        host: spec.host.clone(),
        addr,
        admin,
        users: spec.users.clone(),
        proxy_protocol: spec.proxy_protocol.clone(),
    })
}

fn start_router(
    spec: &RouterSpec,
    brokers: &[RunningBroker],
    dir: &Path,
    shutdown: &Shutdown,
    tasks: &mut tokio::task::JoinSet<anyhow::Result<()>>,
) -> anyhow::Result<(SocketAddr, SocketAddr)> {
    let mut text = format!(
        "# Written by the testbed: a route per broker, to where it listens.\n\
         listen = [\"{}\"]\n\
         admin = \"{}\"\n\
         drain_timeout = \"5s\"\n",
        spec.listen, spec.admin
    );
    for broker in brokers {
        let _ = write!(
            text,
            "\n[[route]]\nname = \"{}\"\nhosts = [\"{}\"]\nendpoints = [\"{}\"]\n",
            broker.name, broker.host, broker.addr
        );
        if let Some(version) = &broker.proxy_protocol {
            let _ = writeln!(text, "proxy_protocol = \"{version}\"");
        }
    }
    let config_file = dir.join("router.toml");
    std::fs::write(&config_file, text)?;
    let settings = snigate_router::load(snigate_router::config::Loader {
        path: Some(config_file),
        layers: Vec::new(),
    })?;
    let listeners = snigate_router::bind(&settings.config)?;
    let listen = listeners.tls.first().context("no router listener")?.local_addr()?;
    let admin = listeners.admin.as_ref().context("no router admin")?.local_addr()?;
    let shutdown = shutdown.clone();
    tasks.spawn(async move {
        snigate_router::run(settings, listeners, shutdown).await?;
        Ok(())
    });
    Ok((listen, admin))
}

/// Poll `GET /readyz` until 200, within [`READY_WITHIN`].
async fn wait_ready(admin: SocketAddr) -> anyhow::Result<()> {
    let deadline = tokio::time::Instant::now() + READY_WITHIN;
    loop {
        let status = http_get(admin, "/readyz").await.ok();
        if status.as_deref().and_then(|r| r.split_whitespace().nth(1)) == Some("200") {
            return Ok(());
        }
        if tokio::time::Instant::now() >= deadline {
            bail!("{admin}/readyz did not answer 200 within {READY_WITHIN:?}");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// A plain HTTP/1.0 GET: the response, headers and body.
pub async fn http_get(addr: SocketAddr, path: &str) -> std::io::Result<String> {
    let exchange = async {
        let mut stream = tokio::net::TcpStream::connect(addr).await?;
        stream
            .write_all(format!("GET {path} HTTP/1.0\r\nHost: testbed\r\n\r\n").as_bytes())
            .await?;
        let mut response = String::new();
        stream.read_to_string(&mut response).await?;
        Ok(response)
    };
    tokio::time::timeout(Duration::from_secs(5), exchange)
        .await
        .unwrap_or_else(|_| Err(std::io::ErrorKind::TimedOut.into()))
}
