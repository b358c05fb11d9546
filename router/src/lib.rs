//! snigate-router: routes TLS connections by the SNI of their ClientHello, without
//! terminating TLS.
//!
//! Data flows one way, each stage its own module, [`conn`] calling them in order:
//!
//! ```text
//! listener ──► conn ──► hello ─► route ─► upstream ─► splice
//!                         │        │         │
//!                   hello::parse   │        pool (pick, health)
//!                                  └─ reject (alert when no route matches)
//! ```
//!
//! - [`listener`]: accept loop per socket, one task and span per connection, drain.
//! - [`conn`]: one connection's pipeline and its access-log line.
//! - [`hello`]: read the ClientHello under a deadline and a size cap;
//!   [`hello::parse`] is the pure parser.
//! - [`route`]: the route table (exact, `*.suffix`, default) and its lookup.
//! - [`upstream`]: connect to the address a route's pool picks, retry others
//!   under one deadline.
//! - [`resolve`]: look names up when their TTL ends, in the background, so
//!   connections do not wait for DNS.
//! - [`pool`]: a route's endpoints and their addresses, balancing and passive
//!   health; its state outlives reloads.
//! - [`clients`]: per-client limits (concurrent, rate) in bounded tables.
//! - [`check`]: active TCP checks of every address, for routes that ask.
//! - [`status`]: `/routes` and the per-endpoint metrics, read from the pools.
//! - [`page`]: the status page `/` and its JSON `/status`.
//! - [`splice`]: relay bytes both ways with half-close and an idle timeout,
//!   holding no buffer while idle.
//! - [`reject`]: the `unrecognized_name` alert.
//! - [`proxy_protocol`]: the PROXY header a route may send before the hello.
//! - [`reload`]: SIGHUP and watched files into a new snapshot, swapped whole.
//! - [`config`], [`metrics`] and [`error`] are leaves: the schema and validated
//!   settings, the metric set, and the per-stage error with its label.
//!
//! [`run`] takes bound listeners and a [`Shutdown`], so tests drive the same code
//! as `main` on port 0 with their own stop trigger.

pub mod background;
pub mod check;
pub mod clients;
pub mod config;
pub mod conn;
pub mod error;
pub mod hello;
pub mod listener;
pub mod metrics;
pub mod page;
pub mod pool;
pub mod proxy_protocol;
pub mod reject;
pub mod reload;
pub mod resolve;
pub mod route;
pub mod splice;
pub mod status;
pub mod upstream;

use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::SystemTime;

use prometheus::Registry;
use snigate_shared::admin::{self, Admin, Readiness};
use snigate_shared::config::ConfigError;
use snigate_shared::shutdown::Shutdown;
use tokio::net::TcpListener;

use crate::config::{Loader, ProxyIn, RouterConfig};
use crate::conn::{Shared, Snapshot};
use crate::hello::HelloLimits;
use crate::metrics::Metrics;
use crate::route::RouteTable;

/// Descriptors kept back from the connection limit for listeners, the admin
/// server, DNS and log files.
const RESERVED_FDS: usize = 64;

/// A validated configuration with its route table built: everything `run` needs
/// to start.
#[derive(Debug)]
pub struct Settings {
    /// The configuration, its `routes` moved into `table` (kept once, not twice:
    /// 10,000 routes are megabytes).
    pub config: RouterConfig,
    pub table: RouteTable,
    /// How to load the configuration again, for reloads; `None` turns reload off.
    pub loader: Option<Loader>,
}

impl Settings {
    /// Validate `config` and build its route table.
    pub fn new(config: RouterConfig) -> Result<Self, ConfigError> {
        Self::build(config, None)
    }

    /// As [`Settings::new`], for a table that replaces `running`: routes that
    /// stay keep what their endpoints have learnt.
    pub fn replacing(config: RouterConfig, running: &RouteTable) -> Result<Self, ConfigError> {
        Self::build(config, Some(running))
    }

    fn build(mut config: RouterConfig, running: Option<&RouteTable>) -> Result<Self, ConfigError> {
        let table = RouteTable::build_after(std::mem::take(&mut config.routes), running)?;
        Ok(Self {
            config,
            table,
            loader: None,
        })
    }
}

/// Load the configuration the way `loader` says, keeping `loader` for reloads.
pub fn load(loader: Loader) -> Result<Settings, ConfigError> {
    let mut settings = Settings::new(loader.load()?)?;
    settings.loader = Some(loader);
    Ok(settings)
}

/// What connections use, from validated settings.
pub(crate) fn snapshot_of(settings: Settings) -> Snapshot {
    Snapshot {
        max_connections: settings.config.max_connections.unwrap_or_else(default_max_connections),
        drain_timeout: settings.config.drain_timeout,
        hello: HelloLimits {
            timeout: settings.config.hello_timeout,
            max_bytes: settings.config.hello_max_bytes,
        },
        dns: Arc::new(settings.config.dns),
        clients: settings.config.clients,
        table: settings.table,
    }
}

/// As many connections as the open-files limit allows at two descriptors each
/// (client and backend), less a reserve, so the process never runs out of
/// descriptors. Read from /proc, which needs no unsafe code.
pub fn default_max_connections() -> usize {
    let soft_limit = std::fs::read_to_string("/proc/self/limits").ok().and_then(|limits| {
        limits
            .lines()
            .find(|l| l.starts_with("Max open files"))
            .and_then(|l| l.split_whitespace().nth(3))
            .and_then(|n| n.parse::<usize>().ok())
    });
    match soft_limit {
        Some(fds) => (fds.saturating_sub(RESERVED_FDS) / 2).max(1),
        // "unlimited" or unreadable: a limit that is still safe almost anywhere.
        None => 10_000,
    }
}

/// The sockets the router serves on.
#[derive(Debug)]
pub struct Listeners {
    pub tls: Vec<TlsListener>,
    pub admin: Option<TcpListener>,
}

/// A bound TLS listener and whether its connections start with a PROXY
/// protocol header.
#[derive(Debug)]
pub struct TlsListener {
    pub socket: TcpListener,
    pub proxy: Option<Arc<ProxyIn>>,
}

impl TlsListener {
    pub fn local_addr(&self) -> io::Result<SocketAddr> {
        self.socket.local_addr()
    }
}

/// Bind every configured address.
pub fn bind(config: &RouterConfig) -> io::Result<Listeners> {
    let bind_one = |addr: SocketAddr| {
        listener::bind(addr).map_err(|e| io::Error::new(e.kind(), format!("cannot listen on {addr}: {e}")))
    };
    Ok(Listeners {
        tls: config
            .listen
            .iter()
            .map(|listen| {
                Ok(TlsListener {
                    socket: bind_one(listen.addr)?,
                    proxy: listen.proxy.clone(),
                })
            })
            .collect::<io::Result<_>>()?,
        admin: config.admin.map(bind_one).transpose()?,
    })
}

/// What the status page shows of where the router listens (the addresses
/// bound, not those configured: port 0 in tests) and where its settings
/// come from.
fn page_fixed(listeners: &Listeners, loader: Option<&Loader>, running: &RouterConfig) -> page::Fixed {
    let bound = |l: &TcpListener| {
        l.local_addr()
            .map_or_else(|e| format!("unknown ({e})"), |a| a.to_string())
    };
    let config = match loader {
        Some(Loader { path: Some(path), .. }) => match running.reload_interval {
            Some(every) => format!(
                "{}; reloaded on SIGHUP, and when it changes (looked at every {})",
                path.display(),
                humantime::format_duration(every)
            ),
            None => format!("{}; reloaded on SIGHUP", path.display()),
        },
        Some(_) => "no file: defaults, the environment and flags; reloaded on SIGHUP".to_owned(),
        None => "given by the caller; not reloaded".to_owned(),
    };
    page::Fixed {
        version: env!("CARGO_PKG_VERSION"),
        started_at: snigate_shared::status::unix_now(),
        config,
        listen: listeners
            .tls
            .iter()
            .map(|l| match l.proxy {
                Some(_) => format!("{} (PROXY protocol in)", bound(&l.socket)),
                None => bound(&l.socket),
            })
            .collect(),
        admin: listeners.admin.as_ref().map(bound),
    }
}

/// Serve on `listeners` until `shutdown.stop`, then drain open connections for at
/// most the configured drain timeout (or until `shutdown.force`). Owns its
/// metrics registry, so several routers (and brokers) can run in one process.
pub async fn run(settings: Settings, listeners: Listeners, shutdown: Shutdown) -> Result<(), prometheus::Error> {
    if settings.table.routes().is_empty() {
        tracing::warn!("no routes configured: every connection will be refused");
    }
    let registry = Registry::new();
    let metrics = Metrics::new(&registry)?;
    metrics.config_loaded.set(
        SystemTime::now()
            .duration_since(SystemTime::UNIX_EPOCH)
            .map_or(0, |d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX)),
    );
    let loader = settings.loader.clone();
    let running = settings.config.clone();
    let fixed = page_fixed(&listeners, loader.as_ref(), &running);
    let shared = Arc::new(Shared::new(snapshot_of(settings), metrics));
    registry.register(Box::new(status::BackendMetrics::new(shared.clone())?))?;
    let readiness = Readiness::default();

    // The admin server outlives the drain, so /readyz can say "not ready" while
    // connections finish; it stops when everything else has.
    let admin_stop = tokio_util::sync::CancellationToken::new();
    let admin_task = listeners.admin.map(|listener| {
        let (html, json) = {
            let (shared, registry) = (shared.clone(), registry.clone());
            snigate_shared::page::handlers(move || page::status(&fixed, &shared, &registry), page::render)
        };
        let admin = Admin::new(registry.clone(), readiness.clone())
            .route("/routes", status::routes_handler(shared.clone()))
            .route("/", html)
            .route("/status", json);
        tokio::spawn(admin::serve(listener, admin, admin_stop.clone()))
    });
    let reload_task =
        loader.map(|loader| tokio::spawn(reload::run(shared.clone(), loader, running, shutdown.stop.clone())));
    let refresh_task = tokio::spawn(resolve::run(shared.clone(), shutdown.stop.clone()));
    let check_task = tokio::spawn(check::run(shared.clone(), shutdown.stop.clone()));

    let mut servers = tokio::task::JoinSet::new();
    for listener in listeners.tls {
        if let Ok(addr) = listener.local_addr() {
            snigate_shared::logging::listening("tls", addr);
        }
        servers.spawn(listener::serve(
            listener.socket,
            listener.proxy,
            shared.clone(),
            shutdown.clone(),
        ));
    }
    readiness.set(true);
    shutdown.stop.cancelled().await;
    readiness.set(false);
    while servers.join_next().await.is_some() {}
    if let Some(task) = reload_task {
        let _ = task.await;
    }
    let _ = refresh_task.await;
    let _ = check_task.await;
    admin_stop.cancel();
    if let Some(task) = admin_task {
        let _ = task.await;
    }
    Ok(())
}
