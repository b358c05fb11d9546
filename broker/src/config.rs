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
    /// CA certificates, PEM, that client certificates are verified against
    /// (Mosquitto's `cafile`). Without it no client certificate is asked for.
    pub cafile: Option<PathBuf>,
    /// Refuse TLS clients without a valid certificate (Mosquitto's name).
    #[serde(default)]
    pub require_certificate: bool,
    /// The client certificate's subject CN is the user name; no password is
    /// checked (Mosquitto's name). Needs `require_certificate`.
    #[serde(default)]
    pub use_identity_as_username: bool,
    /// Admin HTTP server (/metrics, /healthz, /readyz). Off unless set.
    pub admin: Option<SocketAddr>,
    /// A mosquitto_passwd file.
    pub password_file: Option<PathBuf>,
    /// A Mosquitto `acl_file`: who may read and write which topics.
    pub acl_file: Option<PathBuf>,
    /// Let clients without a user name in. Default: true only with no password
    /// file and no listener beyond loopback (Mosquitto 2.0's local-only mode).
    pub allow_anonymous: Option<bool>,
    /// Largest MQTT packet accepted, in bytes.
    pub max_packet_size: Option<usize>,
    /// A client must send CONNECT within this.
    #[serde(default, with = "humantime_serde")]
    pub connect_timeout: Option<Duration>,
    /// How often `$SYS/broker/...` topics are refreshed; `"0s"` turns them off.
    #[serde(default, with = "humantime_serde")]
    pub sys_interval: Option<Duration>,
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

/// Values from the environment or the command line, applied over the file in
/// that order: defaults < file < environment < flags.
#[derive(Debug, Clone, Default)]
pub struct Overrides {
    pub listen: Vec<SocketAddr>,
    pub tls_listen: Vec<SocketAddr>,
    pub cert_file: Option<PathBuf>,
    pub key_file: Option<PathBuf>,
    pub admin: Option<SocketAddr>,
    pub password_file: Option<PathBuf>,
    pub acl_file: Option<PathBuf>,
    pub allow_anonymous: Option<bool>,
    pub cafile: Option<PathBuf>,
    pub require_certificate: Option<bool>,
    pub use_identity_as_username: Option<bool>,
    pub max_packet_size: Option<usize>,
    pub log_format: Option<LogFormat>,
    pub log_level: Option<String>,
}

/// The environment variables read. Any other `SNIGATE_BROKER_*` is an error,
/// so a typo does not pass silently, except the ones Kubernetes injects for a
/// Service named `snigate-broker` (`..._SERVICE_HOST`, `..._PORT...`).
pub const ENV_VARS: &[(&str, &str)] = &[
    (
        "SNIGATE_BROKER_CONFIG",
        "the configuration file, when --config is not given",
    ),
    ("SNIGATE_BROKER_LISTEN", "plaintext listeners, comma-separated"),
    ("SNIGATE_BROKER_TLS_LISTEN", "TLS listeners, comma-separated"),
    ("SNIGATE_BROKER_CERT_FILE", "server certificate chain, PEM"),
    ("SNIGATE_BROKER_KEY_FILE", "server private key, PEM"),
    ("SNIGATE_BROKER_PASSWORD_FILE", "a mosquitto_passwd file"),
    ("SNIGATE_BROKER_ACL_FILE", "a Mosquitto acl_file"),
    ("SNIGATE_BROKER_ALLOW_ANONYMOUS", "true or false"),
    ("SNIGATE_BROKER_ADMIN", "admin server address"),
    ("SNIGATE_BROKER_MAX_PACKET_SIZE", "largest packet, bytes (0: no limit)"),
    ("SNIGATE_BROKER_LOG_FORMAT", "text or json"),
    ("SNIGATE_BROKER_LOG_LEVEL", "log filter, when RUST_LOG is not set"),
];

impl Overrides {
    /// The environment layer from `vars` (pass `std::env::vars()`); pure, so
    /// tests need not touch the process environment. Also returns
    /// `SNIGATE_BROKER_CONFIG`.
    pub fn from_env(vars: impl IntoIterator<Item = (String, String)>) -> Result<(Self, Option<PathBuf>), ConfigError> {
        let mut layer = Self::default();
        let mut config = None;
        for (name, value) in vars {
            if !name.starts_with("SNIGATE_BROKER_") || snigate_shared::config::is_kubernetes_service_link(&name) {
                continue;
            }
            let bad = |message: String| ConfigError::env(&name, message);
            let value = value.trim();
            let addresses = |value: &str| -> Result<Vec<SocketAddr>, ConfigError> {
                value
                    .split(',')
                    .map(|a| a.trim().parse().map_err(|e| bad(format!("`{a}`: {e}"))))
                    .collect()
            };
            match name.as_str() {
                "SNIGATE_BROKER_CONFIG" => config = Some(value.into()),
                "SNIGATE_BROKER_LISTEN" => layer.listen = addresses(value)?,
                "SNIGATE_BROKER_TLS_LISTEN" => layer.tls_listen = addresses(value)?,
                "SNIGATE_BROKER_CERT_FILE" => layer.cert_file = Some(value.into()),
                "SNIGATE_BROKER_KEY_FILE" => layer.key_file = Some(value.into()),
                "SNIGATE_BROKER_PASSWORD_FILE" => layer.password_file = Some(value.into()),
                "SNIGATE_BROKER_ACL_FILE" => layer.acl_file = Some(value.into()),
                "SNIGATE_BROKER_ALLOW_ANONYMOUS" => {
                    layer.allow_anonymous = Some(match value.to_ascii_lowercase().as_str() {
                        "true" | "1" | "yes" => true,
                        "false" | "0" | "no" => false,
                        _ => return Err(bad(format!("`{value}`: expected true or false"))),
                    });
                }
                "SNIGATE_BROKER_ADMIN" => {
                    layer.admin = Some(value.parse().map_err(|e| bad(format!("`{value}`: {e}")))?)
                }
                "SNIGATE_BROKER_MAX_PACKET_SIZE" => {
                    layer.max_packet_size = Some(value.parse().map_err(|e| bad(format!("`{value}`: {e}")))?);
                }
                "SNIGATE_BROKER_LOG_FORMAT" => layer.log_format = Some(value.parse().map_err(bad)?),
                "SNIGATE_BROKER_LOG_LEVEL" => {
                    snigate_shared::logging::check_filter(value).map_err(bad)?;
                    layer.log_level = Some(value.to_owned());
                }
                _ => {
                    let known: Vec<&str> = ENV_VARS.iter().map(|(n, _)| *n).collect();
                    return Err(bad(format!("unknown variable; known: {}", known.join(", "))));
                }
            }
        }
        Ok((layer, config))
    }

    /// Apply this layer over `file`'s values.
    fn apply(&self, file: &mut BrokerFile) {
        if !self.listen.is_empty() {
            file.listen = Some(self.listen.clone());
        }
        if !self.tls_listen.is_empty() {
            file.tls_listen = Some(self.tls_listen.clone());
        }
        let set = |target: &mut Option<PathBuf>, value: &Option<PathBuf>| {
            if value.is_some() {
                target.clone_from(value);
            }
        };
        set(&mut file.cert_file, &self.cert_file);
        set(&mut file.key_file, &self.key_file);
        set(&mut file.password_file, &self.password_file);
        set(&mut file.acl_file, &self.acl_file);
        file.admin = self.admin.or(file.admin);
        file.allow_anonymous = self.allow_anonymous.or(file.allow_anonymous);
        set(&mut file.cafile, &self.cafile);
        file.require_certificate = self.require_certificate.unwrap_or(file.require_certificate);
        file.use_identity_as_username = self.use_identity_as_username.unwrap_or(file.use_identity_as_username);
        file.max_packet_size = self.max_packet_size.or(file.max_packet_size);
        file.log.format = self.log_format.unwrap_or(file.log.format);
        if let Some(level) = &self.log_level {
            file.log.level.clone_from(level);
        }
    }
}

/// Validated settings.
#[derive(Debug, Clone)]
pub struct BrokerConfig {
    pub acl_file: Option<PathBuf>,
    /// Zero: no `$SYS` topics.
    pub sys_interval: Duration,
    /// Client certificates on TLS listeners: the CA and whether required.
    pub client_auth: Option<snigate_shared::tls::ClientAuth>,
    pub use_identity_as_username: bool,
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
    pub fn load(path: Option<&Path>, layers: &[Overrides]) -> Result<Self, ConfigError> {
        let mut file: BrokerFile = match path {
            Some(path) => Source::read(path)?.parse()?,
            None => BrokerFile::default(),
        };
        for layer in layers {
            layer.apply(&mut file);
        }
        let password_file = file.password_file;
        let listen = match file.listen {
            Some(listen) => listen,
            None if password_file.is_none() => vec![SocketAddr::from(([127, 0, 0, 1], 1883))],
            None => vec![SocketAddr::from(([0, 0, 0, 0], 1883))],
        };
        let tls_listen = file.tls_listen.unwrap_or_default();
        let cert_file = file.cert_file;
        let key_file = file.key_file;
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
        let client_auth = file.cafile.map(|ca_file| snigate_shared::tls::ClientAuth {
            ca_file,
            required: file.require_certificate,
        });
        if file.use_identity_as_username && !client_auth.as_ref().is_some_and(|c| c.required) {
            return Err(ConfigError::new(
                origin(path),
                Some("use_identity_as_username".into()),
                "needs cafile and require_certificate = true: the user name comes from the client's certificate",
            ));
        }
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
        let allow_anonymous = file.allow_anonymous.unwrap_or(password_file.is_none() && local_only);
        Ok(Self {
            acl_file: file.acl_file,
            client_auth,
            use_identity_as_username: file.use_identity_as_username,
            listen,
            tls_listen,
            tls_files,
            admin: file.admin,
            password_file,
            allow_anonymous,
            // 0 means no limit, as in Mosquitto: MQTT's own maximum.
            max_packet_size: match file.max_packet_size.unwrap_or(DEFAULT_MAX_PACKET_SIZE) {
                0 => MQTT_MAX_PACKET_SIZE,
                n => n.min(MQTT_MAX_PACKET_SIZE),
            },
            connect_timeout: file.connect_timeout.unwrap_or(Duration::from_secs(10)),
            // Mosquitto's default.
            sys_interval: file.sys_interval.unwrap_or(Duration::from_secs(10)),
            drain_timeout: file.drain_timeout.unwrap_or(Duration::from_secs(20)),
            log_format: file.log.format,
            log_level: file.log.level,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(pairs: &[(&str, &str)]) -> Result<(Overrides, Option<PathBuf>), ConfigError> {
        Overrides::from_env(
            pairs
                .iter()
                .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
                .collect::<Vec<_>>(),
        )
    }

    #[test]
    fn no_configuration_is_mosquitto_without_one() {
        let config = BrokerConfig::load(None, &[]).unwrap();
        assert_eq!(config.listen, vec![SocketAddr::from(([127, 0, 0, 1], 1883))]);
        assert!(config.allow_anonymous);
        assert_eq!(config.max_packet_size, DEFAULT_MAX_PACKET_SIZE);
    }

    #[test]
    fn layers_apply_in_order_over_the_defaults() {
        let (layer, config) = env(&[
            ("SNIGATE_BROKER_CONFIG", "/etc/snigate/broker.toml"),
            ("SNIGATE_BROKER_LISTEN", "0.0.0.0:1883"),
            ("SNIGATE_BROKER_PASSWORD_FILE", "/etc/snigate/passwd"),
            ("SNIGATE_BROKER_ALLOW_ANONYMOUS", "false"),
            ("SNIGATE_BROKER_MAX_PACKET_SIZE", "0"),
            ("SNIGATE_BROKER_SERVICE_HOST", "10.96.0.11"),
            ("SNIGATE_BROKER_PORT_1883_TCP", "tcp://10.96.0.11:1883"),
        ])
        .unwrap();
        assert_eq!(config, Some("/etc/snigate/broker.toml".into()));
        let flags = Overrides {
            listen: vec!["127.0.0.1:11883".parse().unwrap()],
            ..Overrides::default()
        };
        let merged = BrokerConfig::load(None, &[layer, flags]).unwrap();
        assert_eq!(merged.listen, vec!["127.0.0.1:11883".parse().unwrap()], "flags win");
        assert_eq!(merged.password_file, Some("/etc/snigate/passwd".into()));
        assert!(!merged.allow_anonymous);
        assert_eq!(merged.max_packet_size, MQTT_MAX_PACKET_SIZE, "0 is no limit");
    }

    #[test]
    fn environment_errors_name_the_variable() {
        for (var, value, expected) in [
            (
                "SNIGATE_BROKER_LISTN",
                "x",
                "environment variable SNIGATE_BROKER_LISTN: unknown variable",
            ),
            ("SNIGATE_BROKER_ALLOW_ANONYMOUS", "maybe", "expected true or false"),
            (
                "SNIGATE_BROKER_LISTEN",
                "nowhere",
                "environment variable SNIGATE_BROKER_LISTEN: `nowhere`",
            ),
        ] {
            let err = env(&[(var, value)]).unwrap_err().to_string();
            assert!(err.contains(expected), "{err}");
        }
    }
}
