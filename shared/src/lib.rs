//! What snigate's router and broker share.
//!
//! Layout:
//! - [`config`]: read a TOML file into typed structs; every error names the file,
//!   line and field (or the flag or environment variable it came from).
//! - [`logging`]: the tracing subscriber (text or JSON), and the fixed
//!   "listening on" line that harnesses read bound addresses from.
//! - [`shutdown`]: SIGTERM/SIGINT into cancellation tokens, SIGHUP into reload
//!   requests, and draining a set of connection tasks under a deadline.
//! - [`metrics`]: rendering a component's own prometheus registry.
//! - [`tls`]: PEM certificates and keys into rustls, errors naming the file.
//! - [`certs`]: a CA and server certificates for given host names (rcgen).
//! - [`watch`]: noticing changed files (ConfigMap symlink swaps included) by polling.
//! - [`proxy_protocol`]: reading a PROXY protocol v1/v2 header off a stream.
//! - [`admin`]: the admin HTTP server (`/metrics`, `/healthz`, `/readyz`, extras).
//! - [`status`] and [`page`]: what the status pages share (recent refusals, the
//!   last reload, counter totals, bounded lists) and their escaped HTML.
//!
//! Nothing here knows about routes or MQTT: these modules are leaves.

pub mod admin;
#[cfg(feature = "certs")]
pub mod certs;
pub mod config;
pub mod logging;
pub mod metrics;
pub mod page;
pub mod proxy_protocol;
pub mod shutdown;
pub mod status;
#[cfg(feature = "testing")]
pub mod testing;
#[cfg(feature = "tls")]
pub mod tls;
pub mod watch;
