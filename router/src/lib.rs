//! snigate-router: routes TLS connections by the SNI of their ClientHello, without
//! terminating TLS.
//!
//! Data flows one way, each stage its own module, [`conn`] calling them in order:
//!
//! ```text
//! listener ──► conn ──► hello ─► route ─► upstream ─► splice
//!                         │        │
//!                   hello::parse   └─ reject (alert when no route matches)
//! ```
//!
//! - [`listener`]: accept loop per socket, one task and span per connection, drain.
//! - [`conn`]: one connection's pipeline and its access-log line.
//! - [`hello`]: read the ClientHello under a deadline and a size cap;
//!   [`hello::parse`] is the pure parser.
//! - [`route`]: the route table (exact, `*.suffix`, default) and its lookup.
//! - [`upstream`]: resolve and connect to a route's endpoints, failing over.
//! - [`splice`]: relay bytes both ways with half-close and an idle timeout,
//!   holding no buffer while idle.
//! - [`reject`]: the `unrecognized_name` alert.
//! - [`config`] and [`error`] are leaves: the schema and validated settings, and
//!   the per-stage error with its label.
//!
//! [`run`] takes bound listeners and a [`Shutdown`], so tests drive the same code
//! as `main` on port 0 with their own stop trigger.

pub mod config;
pub mod conn;
pub mod error;
pub mod hello;
pub mod listener;
pub mod reject;
pub mod route;
pub mod splice;
pub mod upstream;

use std::io;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;
use snigate_shared::config::ConfigError;
use snigate_shared::shutdown::Shutdown;
use tokio::net::TcpListener;

use crate::config::{Overrides, RouterConfig};
use crate::conn::{Shared, Snapshot};
use crate::hello::HelloLimits;
use crate::route::RouteTable;
use crate::upstream::Connector;

/// A validated configuration with its route table built: everything `run` needs
/// to start.
#[derive(Debug)]
pub struct Settings {
    pub config: RouterConfig,
    pub table: RouteTable,
}

impl Settings {
    /// Validate `config` and build its route table.
    pub fn new(config: RouterConfig) -> Result<Self, ConfigError> {
        let table = RouteTable::build(&config.routes)?;
        Ok(Self { config, table })
    }

    fn snapshot(self) -> Snapshot {
        Snapshot {
            table: self.table,
            hello: HelloLimits {
                timeout: self.config.hello_timeout,
                max_bytes: self.config.hello_max_bytes,
            },
        }
    }
}

/// Load the configuration file (if any), apply the command line, validate.
pub fn load(path: Option<&Path>, overrides: &Overrides) -> Result<Settings, ConfigError> {
    Settings::new(config::load(path, overrides)?)
}

/// Bind every configured listen address, announcing each.
pub fn bind(config: &RouterConfig) -> io::Result<Vec<TcpListener>> {
    config
        .listen
        .iter()
        .map(|&addr| {
            listener::bind(addr).map_err(|e| io::Error::new(e.kind(), format!("cannot listen on {addr}: {e}")))
        })
        .collect()
}

/// Serve on `listeners` until `shutdown.stop`, then drain open connections for at
/// most the configured drain timeout (or until `shutdown.force`).
pub async fn run(settings: Settings, listeners: Vec<TcpListener>, shutdown: Shutdown) {
    let drain_timeout: Duration = settings.config.drain_timeout;
    if settings.table.routes().is_empty() {
        tracing::warn!("no routes configured: every connection will be refused");
    }
    let shared = Arc::new(Shared {
        snapshot: ArcSwap::from_pointee(settings.snapshot()),
        connector: Connector::new(),
    });
    let mut servers = tokio::task::JoinSet::new();
    for listener in listeners {
        if let Ok(addr) = listener.local_addr() {
            snigate_shared::logging::listening("tls", addr);
        }
        servers.spawn(listener::serve(
            listener,
            shared.clone(),
            shutdown.clone(),
            drain_timeout,
        ));
    }
    while servers.join_next().await.is_some() {}
}
