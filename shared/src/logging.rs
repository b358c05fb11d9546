//! Logging: one tracing subscriber per process, text for people or JSON for machines.
//!
//! The filter comes from `RUST_LOG` when set (the usual tracing syntax), else from
//! the component's configured level. Harnesses (our process-level tests, scripts)
//! find a component's bound addresses by the [`listening`] event, whose message is
//! fixed: `listening on <proto> <addr>`.

use std::io::IsTerminal;
use std::net::SocketAddr;
use std::str::FromStr;

use serde::Deserialize;
use tracing_subscriber::EnvFilter;

/// Output format of the log.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    /// Human-readable lines.
    #[default]
    Text,
    /// One JSON object per line, for log pipelines.
    Json,
}

impl FromStr for LogFormat {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.to_ascii_lowercase().as_str() {
            "text" => Ok(Self::Text),
            "json" => Ok(Self::Json),
            other => Err(format!("unknown log format `{other}`: expected `text` or `json`")),
        }
    }
}

/// The `[log]` table both components' files have.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LogSettings {
    pub format: LogFormat,
    /// Used when `RUST_LOG` is not set; tracing filter syntax. Checked while the
    /// file is read, so an error names its line.
    #[serde(deserialize_with = "checked_filter")]
    pub level: String,
}

impl Default for LogSettings {
    fn default() -> Self {
        Self {
            format: LogFormat::Text,
            level: "info".to_owned(),
        }
    }
}

fn checked_filter<'de, D: serde::Deserializer<'de>>(d: D) -> Result<String, D::Error> {
    let value = String::deserialize(d)?;
    check_filter(&value).map_err(serde::de::Error::custom)?;
    Ok(value)
}

/// Check a filter (`info`, `warn,snigate_router=debug`) without installing it.
pub fn check_filter(directives: &str) -> Result<(), String> {
    EnvFilter::try_new(directives)
        .map(drop)
        .map_err(|e| format!("invalid log filter `{directives}`: {e}"))
}

/// Install the process-wide subscriber. `default_level` applies when `RUST_LOG` is
/// unset. Call once, from `main`; tests use [`test_guard`] instead.
pub fn init(format: LogFormat, default_level: &str) -> Result<(), String> {
    let filter = match std::env::var("RUST_LOG") {
        Ok(directives) if !directives.is_empty() => {
            EnvFilter::try_new(&directives).map_err(|e| format!("RUST_LOG: invalid filter `{directives}`: {e}"))?
        }
        _ => EnvFilter::try_new(default_level).map_err(|e| format!("invalid log level `{default_level}`: {e}"))?,
    };
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::stderr().is_terminal())
        .with_writer(std::io::stderr);
    let result = match format {
        LogFormat::Text => builder.try_init(),
        LogFormat::Json => builder.json().flatten_event(true).with_current_span(true).try_init(),
    };
    result.map_err(|e| format!("cannot install the log subscriber: {e}"))
}

/// A subscriber for the current thread only, dropped with the guard: lets a test
/// see logs without a global init that would collide with other tests.
pub fn test_guard() -> tracing::subscriber::DefaultGuard {
    let subscriber = tracing_subscriber::fmt()
        .with_env_filter(EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("debug")))
        .with_test_writer()
        .finish();
    tracing::subscriber::set_default(subscriber)
}

/// Announce a bound listener. The message text is an interface: process-level
/// tests and scripts parse `listening on <proto> <addr>` from the log.
pub fn listening(proto: &str, addr: SocketAddr) {
    tracing::info!(%proto, %addr, "listening on {proto} {addr}");
}
