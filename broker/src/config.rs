//! The broker's configuration: TOML schema, command-line overrides, validated
//! settings. A leaf. (ACLs, environment variables and reload are the next
//! slices of the broker work.)

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;
use snigate_shared::config::{ConfigError, Source};
use snigate_shared::logging::{LogFormat, LogSettings};

/// Mosquitto 2.1's default maximum packet size. rumqttd's sample 20 KiB would
/// break clients that Mosquitto accepts.
const DEFAULT_MAX_PACKET_SIZE: usize = 2_000_000;
/// The largest remaining length MQTT's variable-length encoding can express.
const MQTT_MAX_PACKET_SIZE: usize = 268_435_455;

/// The broker's TOML file.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BrokerFile {
    /// Plaintext MQTT listeners. Default `["127.0.0.1:1883"]` without a
    /// password file (Mosquitto 2.0 without configuration), else `0.0.0.0:1883`.
    pub listen: Option<Vec<SocketAddr>>,
    /// MQTT over TLS listeners (Mosquitto's usual port is 8883); need
    /// `cert_file` and `key_file`.
    pub tls_listen: Option<Vec<SocketAddr>>,
    /// The server certificate chain, PEM, leaf first (Mosquitto's `certfile`).
    pub cert_file: Option<PathBuf>,
    /// Its private key, PEM (Mosquitto's `keyfile`).
    pub key_file: Option<PathBuf>,
    /// Admin HTTP server (/metrics, /healthz, /readyz). Off unless set.
    pub admin: Option<SocketAddr>,
    /// A mosquitto_passwd file.
    pub password_file: Option<PathBuf>,
    /// Let clients without a user name in. Default: true only with no password
    /// file and no listener beyond loopback (Mosquitto 2.0's local-only mode).
    pub allow_anonymous: Option<bool>,
    /// Largest MQTT packet accepted, in bytes.
    pub max_packet_size: Option<usize>,
    /// A client must send CONNECT within this.
    #[serde(default, with = "humantime_serde")]
    pub connect_timeout: Option<Duration>,
    #[serde(default, with = "humantime_serde")]
    pub drain_timeout: Option<Duration>,
    #[serde(default)]
    pub log: LogSettings,
}

fn origin(path: Option<&Path>) -> snigate_shared::config::Origin {
    match path {
        Some(path) => snigate_shared::config::Origin::File {
            path: path.to_owned(),
            position: None,
        },
        None => snigate_shared::config::Origin::Flag("--tls-listen".to_owned()),
    }
}

/// Command-line values; they win over the file.
#[derive(Debug, Clone, Default)]
pub struct Overrides {
    pub listen: Vec<SocketAddr>,
    pub tls_listen: Vec<SocketAddr>,
    pub cert_file: Option<PathBuf>,
    pub key_file: Option<PathBuf>,
    pub admin: Option<SocketAddr>,
    pub password_file: Option<PathBuf>,
    pub allow_anonymous: bool,
    pub log_format: Option<LogFormat>,
}

/// Validated settings.
#[derive(Debug, Clone)]
pub struct BrokerConfig {
    pub listen: Vec<SocketAddr>,
    pub tls_listen: Vec<SocketAddr>,
    /// Certificate and key files, when there are TLS listeners.
    pub tls_files: Option<(PathBuf, PathBuf)>,
    pub admin: Option<SocketAddr>,
    pub password_file: Option<PathBuf>,
    pub allow_anonymous: bool,
    pub max_packet_size: usize,
    pub connect_timeout: Duration,
    pub drain_timeout: Duration,
    pub log_format: LogFormat,
    pub log_level: String,
}

impl BrokerConfig {
    /// Read `path` (if any), apply `overrides`, validate.
    pub fn load(path: Option<&Path>, overrides: &Overrides) -> Result<Self, ConfigError> {
        let file: BrokerFile = match path {
            Some(path) => Source::read(path)?.parse()?,
            None => BrokerFile::default(),
        };
        let password_file = overrides.password_file.clone().or(file.password_file);
        let listen = match (&overrides.listen[..], file.listen) {
            ([], Some(listen)) => listen,
            ([], None) if password_file.is_none() => vec![SocketAddr::from(([127, 0, 0, 1], 1883))],
            ([], None) => vec![SocketAddr::from(([0, 0, 0, 0], 1883))],
            (flags, _) => flags.to_vec(),
        };
        let tls_listen = if overrides.tls_listen.is_empty() {
            file.tls_listen.unwrap_or_default()
        } else {
            overrides.tls_listen.clone()
        };
        let cert_file = overrides.cert_file.clone().or(file.cert_file);
        let key_file = overrides.key_file.clone().or(file.key_file);
        let tls_files = match (tls_listen.is_empty(), cert_file, key_file) {
            (true, _, _) => None,
            (false, Some(cert), Some(key)) => Some((cert, key)),
            (false, _, _) => {
                return Err(ConfigError::new(
                    origin(path),
                    Some("tls_listen".into()),
                    "TLS listeners need cert_file and key_file (--cert, --key)",
                ));
            }
        };
        let local_only = listen.iter().chain(&tls_listen).all(|a| a.ip().is_loopback());
        for (field, value) in [
            ("connect_timeout", file.connect_timeout),
            ("drain_timeout", file.drain_timeout),
        ] {
            if value.is_some_and(|d| d.is_zero()) {
                return Err(ConfigError::new(
                    origin(path),
                    Some(field.into()),
                    "must be more than 0",
                ));
            }
        }
        let allow_anonymous =
            overrides.allow_anonymous || file.allow_anonymous.unwrap_or(password_file.is_none() && local_only);
        Ok(Self {
            listen,
            tls_listen,
            tls_files,
            admin: overrides.admin.or(file.admin),
            password_file,
            allow_anonymous,
            // 0 means no limit, as in Mosquitto: MQTT's own maximum.
            max_packet_size: match file.max_packet_size.unwrap_or(DEFAULT_MAX_PACKET_SIZE) {
                0 => MQTT_MAX_PACKET_SIZE,
                n => n.min(MQTT_MAX_PACKET_SIZE),
            },
            connect_timeout: file.connect_timeout.unwrap_or(Duration::from_secs(10)),
            drain_timeout: file.drain_timeout.unwrap_or(Duration::from_secs(20)),
            log_format: overrides.log_format.unwrap_or(file.log.format),
            log_level: file.log.level,
        })
    }
}
