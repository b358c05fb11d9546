//! The broker's configuration: TOML schema, environment and command-line
//! overrides, validated settings, and the memory budget derived from them. A
//! leaf.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;
use snigate_shared::config::{ConfigError, Source};
use snigate_shared::logging::{LogFormat, LogSettings};

mod limits;

use limits::read_cgroup_memory_limit;
pub use limits::{Limits, MAX_INFLIGHT, PLAIN_CONNECTION_MEMORY, TLS_CONNECTION_MEMORY};

/// Mosquitto 2.1's default maximum packet size. rumqttd's sample 20 KiB would
/// break clients that Mosquitto accepts.
const DEFAULT_MAX_PACKET_SIZE: usize = 2_000_000;
/// The largest remaining length MQTT's variable-length encoding can express.
const MQTT_MAX_PACKET_SIZE: usize = 268_435_455;

/// One listener in the file: an address, or a table when it takes a PROXY
/// protocol header (from snigate-router or HAProxy in front).
#[derive(Debug, Clone, Copy, Deserialize)]
#[serde(untagged)]
pub enum ListenerEntry {
    Address(SocketAddr),
    Table(ListenerTable),
}

#[derive(Debug, Clone, Copy, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ListenerTable {
    pub address: SocketAddr,
    /// Every connection starts with a PROXY protocol v1 or v2 header, whose
    /// client address is the one logged and used. Off by default: on a
    /// listener clients reach directly, it would let them claim any address.
    #[serde(default)]
    pub proxy_protocol: bool,
}

impl ListenerEntry {
    fn split(self) -> (SocketAddr, bool) {
        match self {
            Self::Address(address) => (address, false),
            Self::Table(table) => (table.address, table.proxy_protocol),
        }
    }
}

/// A byte count: a number, or a string with a unit (`"128MiB"`, `"64k"`,
/// Kubernetes' `"128Mi"`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(try_from = "SizeInput")]
pub struct Size(pub u64);

#[derive(Deserialize)]
#[serde(untagged)]
enum SizeInput {
    Number(u64),
    Text(String),
}

impl TryFrom<SizeInput> for Size {
    type Error = String;
    fn try_from(input: SizeInput) -> Result<Self, String> {
        match input {
            SizeInput::Number(n) => Ok(Size(n)),
            SizeInput::Text(text) => text.parse(),
        }
    }
}

impl std::str::FromStr for Size {
    type Err = String;
    fn from_str(text: &str) -> Result<Self, String> {
        let text = text.trim();
        let split = text.find(|c: char| !c.is_ascii_digit()).unwrap_or(text.len());
        let (digits, unit) = text.split_at(split);
        let number: u64 = digits
            .parse()
            .map_err(|_| format!("`{text}`: expected a byte count such as 1048576, \"512KiB\" or \"128MiB\""))?;
        let scale: u64 = match unit.trim().to_ascii_lowercase().as_str() {
            "" | "b" => 1,
            "k" | "kb" | "kib" | "ki" => 1 << 10,
            "m" | "mb" | "mib" | "mi" => 1 << 20,
            "g" | "gb" | "gib" | "gi" => 1 << 30,
            _ => return Err(format!("`{text}`: unknown unit `{unit}` (use KiB, MiB or GiB)")),
        };
        number
            .checked_mul(scale)
            .map(Size)
            .ok_or_else(|| format!("`{text}`: too large"))
    }
}

/// How long a persistent session whose client is away is kept, in Mosquitto's
/// `persistent_client_expiration` form: a number and `h`, `d`, `w`, `m`
/// (30 days) or `y` (365 days).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(try_from = "String")]
pub struct Expiration(pub Duration);

impl TryFrom<String> for Expiration {
    type Error = String;
    fn try_from(text: String) -> Result<Self, String> {
        text.parse()
    }
}

impl std::str::FromStr for Expiration {
    type Err = String;
    fn from_str(text: &str) -> Result<Self, String> {
        let text = text.trim();
        let usage =
            || format!("`{text}`: expected a number and h, d, w, m (30 days) or y (365 days), as Mosquitto's: \"14d\"");
        let split = text.find(|c: char| !c.is_ascii_digit()).ok_or_else(usage)?;
        let (digits, unit) = text.split_at(split);
        let number: u64 = digits.parse().map_err(|_| usage())?;
        let hours: u64 = match unit {
            "h" => 1,
            "d" => 24,
            "w" => 24 * 7,
            "m" => 24 * 30,
            "y" => 24 * 365,
            _ => return Err(usage()),
        };
        if number == 0 {
            return Err(format!(
                "`{text}`: must be more than 0 (leave it out to keep sessions until a restart)"
            ));
        }
        number
            .checked_mul(hours * 3600)
            .map(|seconds| Expiration(Duration::from_secs(seconds)))
            .ok_or_else(|| format!("`{text}`: too large"))
    }
}

/// What happens to a QoS 1 or 2 message for a client whose outbound queue is
/// full. QoS 0 messages are always dropped then, as Mosquitto drops them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum QueueFull {
    /// Drop it (counted), as Mosquitto does beyond `max_queued_messages`.
    #[default]
    Drop,
    /// Disconnect the client: it is not keeping up, and a persistent session
    /// then keeps what follows in its outbox, within the same bounds.
    Disconnect,
}

/// The `core` setting, from when rumqttd's router was a second message core
/// beside the broker's own: accepted (either value) with a deprecation
/// warning, since the own core is the only one.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Core {
    Rumqttd,
    #[default]
    Own,
}

impl std::str::FromStr for Core {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "rumqttd" => Ok(Self::Rumqttd),
            "own" => Ok(Self::Own),
            _ => Err(format!("`{s}`: expected rumqttd or own")),
        }
    }
}

/// The broker's TOML file.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BrokerFile {
    /// Plaintext MQTT listeners. Default `["127.0.0.1:1883"]` without a
    /// password file (Mosquitto 2.0 without configuration), else `0.0.0.0:1883`.
    pub listen: Option<Vec<ListenerEntry>>,
    /// MQTT over TLS listeners (Mosquitto's usual port is 8883); need
    /// `cert_file` and `key_file`.
    pub tls_listen: Option<Vec<ListenerEntry>>,
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
    /// Persistent sessions whose client stays away this long are discarded
    /// (Mosquitto's name and units). Default: kept until a restart.
    pub persistent_client_expiration: Option<Expiration>,
    /// How often `$SYS/broker/...` topics are refreshed; `"0s"` turns them off.
    #[serde(default, with = "humantime_serde")]
    pub sys_interval: Option<Duration>,
    #[serde(default, with = "humantime_serde")]
    pub drain_timeout: Option<Duration>,
    /// The memory the broker must live within. Default: the cgroup's limit
    /// (a container's `--memory`, a pod's limit), else 1 GiB.
    pub memory_limit: Option<Size>,
    /// Most clients connected at once. Default: what `memory_limit` allows.
    pub max_connections: Option<usize>,
    /// Messages queued per client beyond what its socket takes (Mosquitto's
    /// name). 0: no count limit (bytes still bound the queue).
    pub max_queued_messages: Option<usize>,
    /// Bytes queued per client (Mosquitto's name; its 0, no limit, is not
    /// offered: the budget needs a bound).
    pub max_queued_bytes: Option<Size>,
    /// Queue QoS 0 messages for a persistent session whose client is away
    /// (Mosquitto's name and default: off).
    pub queue_qos0_messages: Option<bool>,
    /// QoS 1 and 2 messages sent to a client and not yet acknowledged
    /// (Mosquitto's name).
    pub max_inflight_messages: Option<usize>,
    /// Topic aliases an MQTT 5 client may set (Mosquitto's name and
    /// default, 10; 0: none).
    pub max_topic_alias: Option<u16>,
    /// The longest keepalive an MQTT 5 client is given, in seconds: one that
    /// asks for more, or for none, is told this one in the CONNACK
    /// (Mosquitto's name and default, 65535; 0: no cap).
    pub max_keepalive: Option<u16>,
    /// The highest QoS clients may publish and subscribe with, 0 to 2
    /// (Mosquitto's name and default, 2).
    pub max_qos: Option<u8>,
    /// Whether retained messages are kept (Mosquitto's name and default,
    /// true); off, a retained PUBLISH or will ends the connection.
    pub retain_available: Option<bool>,
    /// QoS 1 and 2 messages for a client whose queue is full: `"drop"` or
    /// `"disconnect"`.
    pub queue_full: Option<QueueFull>,
    /// Bytes of retained messages held. Default: an eighth of the budget.
    pub max_retained_bytes: Option<Size>,
    /// Deprecated: settings of rumqttd's router, which the broker no longer
    /// has. Accepted, with a warning that says what bounds the same now.
    pub max_filters: Option<usize>,
    pub max_segment_size: Option<Size>,
    pub max_segment_count: Option<usize>,
    pub core: Option<Core>,
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
    pub memory_limit: Option<Size>,
    pub max_connections: Option<usize>,
    pub log_format: Option<LogFormat>,
    pub log_level: Option<String>,
    pub core: Option<Core>,
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
    ("SNIGATE_BROKER_MEMORY_LIMIT", "memory budget, e.g. 128MiB"),
    ("SNIGATE_BROKER_MAX_CONNECTIONS", "most clients connected at once"),
    ("SNIGATE_BROKER_LOG_FORMAT", "text or json"),
    ("SNIGATE_BROKER_LOG_LEVEL", "log filter, when RUST_LOG is not set"),
    ("SNIGATE_BROKER_CORE", "deprecated and ignored: the message core"),
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
                // Empty: no file, as an image's default can be unset.
                "SNIGATE_BROKER_CONFIG" => config = (!value.is_empty()).then(|| value.into()),
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
                "SNIGATE_BROKER_MEMORY_LIMIT" => layer.memory_limit = Some(value.parse().map_err(bad)?),
                "SNIGATE_BROKER_MAX_CONNECTIONS" => {
                    layer.max_connections = Some(value.parse().map_err(|e| bad(format!("`{value}`: {e}")))?);
                }
                "SNIGATE_BROKER_LOG_FORMAT" => layer.log_format = Some(value.parse().map_err(bad)?),
                "SNIGATE_BROKER_CORE" => layer.core = Some(value.parse().map_err(bad)?),
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
            file.listen = Some(self.listen.iter().copied().map(ListenerEntry::Address).collect());
        }
        if !self.tls_listen.is_empty() {
            file.tls_listen = Some(self.tls_listen.iter().copied().map(ListenerEntry::Address).collect());
        }
        file.memory_limit = self.memory_limit.or(file.memory_limit);
        file.max_connections = self.max_connections.or(file.max_connections);
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
        file.core = self.core.or(file.core);
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
    /// Whether each of `listen`, then each of `tls_listen`, reads a PROXY
    /// protocol header first.
    pub proxy_protocol: Vec<bool>,
    pub limits: Limits,
    /// Certificate and key files, when there are TLS listeners.
    pub tls_files: Option<(PathBuf, PathBuf)>,
    pub admin: Option<SocketAddr>,
    pub password_file: Option<PathBuf>,
    pub allow_anonymous: bool,
    pub max_packet_size: usize,
    pub connect_timeout: Duration,
    /// The longest keepalive an MQTT 5 client is given (0: no cap).
    pub max_keepalive: u16,
    /// The highest QoS clients may publish and subscribe with.
    pub max_qos: rumqttd::protocol::QoS,
    pub retain_available: bool,
    /// How long a persistent session outlives its client's connection, at
    /// most; `None`: until a restart (an MQTT 5 client may ask for less).
    pub persistent_client_expiration: Option<Duration>,
    pub drain_timeout: Duration,
    pub log_format: LogFormat,
    pub log_level: String,
    /// Deprecated settings that were set, each with what replaces it: logged
    /// at start and printed by `check`.
    pub deprecated: Vec<&'static str>,
}

/// What the broker does not offer a message: `max_qos` and
/// `retain_available`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Unsupported {
    Qos,
    Retain,
}

impl BrokerConfig {
    /// Why a PUBLISH or will at `qos`, retained or not, is refused, if it is.
    pub fn unsupported(&self, qos: rumqttd::protocol::QoS, retain: bool) -> Option<Unsupported> {
        if qos > self.max_qos {
            Some(Unsupported::Qos)
        } else if retain && !self.retain_available {
            Some(Unsupported::Retain)
        } else {
            None
        }
    }
}

/// What a deprecated setting said, and what bounds the same now.
const DEPRECATED: &[(&str, &str)] = &[
    (
        "max_filters",
        "max_filters is deprecated and ignored: it bounded rumqttd's router, which is gone; the subscription index takes what subscriptions need, within memory_limit",
    ),
    (
        "max_segment_size",
        "max_segment_size is deprecated and ignored: rumqttd's commit logs are gone; each client's queue is bounded by max_queued_messages and max_queued_bytes",
    ),
    (
        "max_segment_count",
        "max_segment_count is deprecated and ignored: rumqttd's commit logs are gone; each client's queue is bounded by max_queued_messages and max_queued_bytes",
    ),
    (
        "core",
        "core is deprecated and ignored: rumqttd's router is gone, and the broker's own core is the only one",
    ),
];

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
        let password_file = file.password_file.take();
        let (listen, mut proxy_protocol): (Vec<_>, Vec<_>) = match file.listen.take() {
            Some(listen) => listen.into_iter().map(ListenerEntry::split).unzip(),
            None if password_file.is_none() => (vec![SocketAddr::from(([127, 0, 0, 1], 1883))], vec![false]),
            None => (vec![SocketAddr::from(([0, 0, 0, 0], 1883))], vec![false]),
        };
        let (tls_listen, tls_proxy): (Vec<_>, Vec<_>) = file
            .tls_listen
            .take()
            .unwrap_or_default()
            .into_iter()
            .map(ListenerEntry::split)
            .unzip();
        proxy_protocol.extend(tls_proxy);
        let cert_file = file.cert_file.take();
        let key_file = file.key_file.take();
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
        let client_auth = file.cafile.take().map(|ca_file| snigate_shared::tls::ClientAuth {
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
        let max_qos = match file.max_qos.unwrap_or(2) {
            0 => rumqttd::protocol::QoS::AtMostOnce,
            1 => rumqttd::protocol::QoS::AtLeastOnce,
            2 => rumqttd::protocol::QoS::ExactlyOnce,
            _ => {
                return Err(ConfigError::new(
                    origin(path),
                    Some("max_qos".into()),
                    "must be 0, 1 or 2",
                ));
            }
        };
        // 0 means no limit, as in Mosquitto: MQTT's own maximum.
        let max_packet_size = match file.max_packet_size.unwrap_or(DEFAULT_MAX_PACKET_SIZE) {
            0 => MQTT_MAX_PACKET_SIZE,
            n => n.min(MQTT_MAX_PACKET_SIZE),
        };
        let limits =
            Limits::derive(&file, max_packet_size, read_cgroup_memory_limit()).map_err(|(field, message)| {
                // Without a file, the two budget settings that are not file-only
                // come from the environment.
                let origin = match path {
                    Some(_) => origin(path),
                    None => {
                        snigate_shared::config::Origin::Env(format!("SNIGATE_BROKER_{}", field.to_ascii_uppercase()))
                    }
                };
                ConfigError::new(origin, Some(field.into()), message)
            })?;
        Ok(Self {
            proxy_protocol,
            max_packet_size: max_packet_size.min(limits.max_packet_size),
            limits,
            acl_file: file.acl_file,
            client_auth,
            use_identity_as_username: file.use_identity_as_username,
            listen,
            tls_listen,
            tls_files,
            admin: file.admin,
            password_file,
            allow_anonymous,
            connect_timeout: file.connect_timeout.unwrap_or(Duration::from_secs(10)),
            persistent_client_expiration: file.persistent_client_expiration.map(|e| e.0),
            max_keepalive: file.max_keepalive.unwrap_or(u16::MAX),
            max_qos,
            retain_available: file.retain_available.unwrap_or(true),
            // Mosquitto's default.
            sys_interval: file.sys_interval.unwrap_or(Duration::from_secs(10)),
            drain_timeout: file.drain_timeout.unwrap_or(Duration::from_secs(20)),
            log_format: file.log.format,
            log_level: file.log.level,
            deprecated: DEPRECATED
                .iter()
                .filter(|(name, _)| match *name {
                    "max_filters" => file.max_filters.is_some(),
                    "max_segment_size" => file.max_segment_size.is_some(),
                    "max_segment_count" => file.max_segment_count.is_some(),
                    _ => file.core.is_some(),
                })
                .map(|(_, warning)| *warning)
                .collect(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse_file(text: &str) -> Result<BrokerFile, ConfigError> {
        Source::from_text("broker.toml", text).parse()
    }

    fn env(pairs: &[(&str, &str)]) -> Result<(Overrides, Option<PathBuf>), ConfigError> {
        Overrides::from_env(
            pairs
                .iter()
                .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
                .collect::<Vec<_>>(),
        )
    }

    #[test]
    fn persistent_client_expiration_takes_mosquittos_units() {
        let hours = |text: &str| text.parse::<Expiration>().map(|e| e.0.as_secs() / 3600);
        assert_eq!(hours("2h"), Ok(2));
        assert_eq!(hours("14d"), Ok(14 * 24));
        assert_eq!(hours("1w"), Ok(7 * 24));
        assert_eq!(hours("2m"), Ok(60 * 24), "m is a month, as in Mosquitto");
        assert_eq!(hours("1y"), Ok(365 * 24));
        for bad in ["14", "14s", "d", "0d", "1.5d"] {
            assert!(bad.parse::<Expiration>().is_err(), "{bad}");
        }
        let error = parse_file("allow_anonymous = true\npersistent_client_expiration = \"14x\"")
            .unwrap_err()
            .to_string();
        assert!(
            error.contains("broker.toml:2:") && error.contains("field `persistent_client_expiration`"),
            "{error}"
        );
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
        // 0 is Mosquitto's "no limit": MQTT's own, within what the budget allows.
        assert_eq!(merged.max_packet_size, merged.limits.max_packet_size);
        assert!(merged.max_packet_size > DEFAULT_MAX_PACKET_SIZE);
    }

    #[test]
    fn the_budget_bounds_connections_and_packets() {
        let file: BrokerFile = parse_file("memory_limit = \"128MiB\"").unwrap();
        let limits = Limits::derive(&file, DEFAULT_MAX_PACKET_SIZE, Some(1 << 40)).unwrap();
        assert_eq!(limits.memory_limit_source, "configured");
        // 128 - 10 base - 16 queues - 8 retained - 32 index = 62 MiB: 3 KiB
        // a plaintext connection, 12 KiB a TLS one.
        assert_eq!(limits.connection_memory, 62 << 20);
        assert_eq!(limits.max_connections, 21_162);
        assert_eq!(limits.connection_memory / TLS_CONNECTION_MEMORY, 5_290);
        assert_eq!(limits.index_share, 32 << 20);
        assert_eq!(limits.max_packet_size, 1 << 20);
        let from_cgroup = Limits::derive(&BrokerFile::default(), 1000, Some(256 << 20)).unwrap();
        assert_eq!(
            (from_cgroup.memory_limit, from_cgroup.memory_limit_source),
            (256 << 20, "cgroup")
        );

        let greedy: BrokerFile = parse_file("memory_limit = \"128Mi\"\nmax_connections = 50000").unwrap();
        let (field, message) = Limits::derive(&greedy, 1000, None).unwrap_err();
        assert_eq!(field, "max_connections");
        assert!(message.contains("allows 21162 plaintext or 5290 TLS"), "{message}");
        let tiny: BrokerFile = parse_file("memory_limit = 1000").unwrap();
        assert_eq!(Limits::derive(&tiny, 1000, None).unwrap_err().0, "memory_limit");
    }

    #[test]
    fn the_router_s_settings_are_accepted_with_a_warning() {
        let file = "max_filters = 10\nmax_segment_size = \"64KiB\"\nmax_segment_count = 4\ncore = \"rumqttd\"\n";
        let path = std::env::temp_dir().join(format!("snigate-deprecated-{}.toml", std::process::id()));
        std::fs::write(&path, file).unwrap();
        let config = BrokerConfig::load(Some(&path), &[]).unwrap();
        std::fs::remove_file(&path).unwrap();
        assert_eq!(config.deprecated.len(), 4, "{:?}", config.deprecated);
        assert!(config.deprecated[0].starts_with("max_filters is deprecated"));
        assert!(BrokerConfig::load(None, &[]).unwrap().deprecated.is_empty());
    }

    #[test]
    fn sizes_take_units() {
        assert_eq!("128MiB".parse::<Size>(), Ok(Size(128 << 20)));
        assert_eq!("64k".parse::<Size>(), Ok(Size(64 << 10)));
        assert_eq!("128Mi".parse::<Size>(), Ok(Size(128 << 20)));
        assert_eq!("1000".parse::<Size>(), Ok(Size(1000)));
        assert!("12 parsecs".parse::<Size>().unwrap_err().contains("unknown unit"));
    }

    #[test]
    fn listeners_may_take_a_proxy_protocol_header() {
        let dir = std::env::temp_dir();
        let path = dir.join(format!("snigate-broker-proxy-{}.toml", std::process::id()));
        std::fs::write(
            &path,
            "listen = [\"127.0.0.1:1883\", { address = \"127.0.0.1:1884\", proxy_protocol = true }]\n",
        )
        .unwrap();
        let config = BrokerConfig::load(Some(&path), &[]).unwrap();
        let _ = std::fs::remove_file(&path);
        assert_eq!(config.listen.len(), 2);
        assert_eq!(config.proxy_protocol, vec![false, true]);
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
