//! The router's configuration: the TOML schema, command-line overrides, and the
//! validated values the rest of the router uses.
//!
//! Two layers, as in hickory-dns and rpxy: [`RouterFile`] mirrors the file
//! (serde, `deny_unknown_fields`, defaults), and [`RouterConfig`] is what it means
//! once validated: socket addresses, durations, host patterns, endpoints, each
//! route carrying the [`Origin`] of its values so that a conflict found later
//! (two routes claiming one host, in `route::RouteTable::build`) can name both.
//! Precedence: built-in defaults < file < environment < flags.
//!
//! This module is a leaf: it imports nothing else from the router. Its parts:
//! [`names`] (host patterns, endpoints) and [`backends`] (weights, balancing,
//! the connect budget, passive health).

mod backends;
mod cidr;
mod clients;
mod listen;
mod names;

use std::net::SocketAddr;
use std::path::Path;
use std::str::FromStr;
use std::time::Duration;

use serde::Deserialize;
use snigate_shared::config::{ConfigError, Origin, Source};
use snigate_shared::logging::{LogFormat, LogSettings};
use toml::Spanned;

pub use backends::{
    ActiveCheck, Balance, HealthFile, HealthSettings, MAX_CONNECT_RETRIES, MAX_WEIGHT, WeightedEndpoint,
};
pub use cidr::{Cidr, CidrSet};
pub use clients::{AccessList, ClientLimits, ClientsFile, ClientsSettings, LimitsFile, Rate, RouteClients};
pub use listen::{Listen, ProxyIn};
pub use names::{Endpoint, HostPattern};

const DEFAULT_CONNECT_RETRIES: u32 = 3;
const DEFAULT_DRAIN_TIMEOUT: Duration = Duration::from_secs(20);

// === the file ===

/// The router's TOML file. Every table and key is optional.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RouterFile {
    /// Addresses to accept TLS connections on, each `"IP:PORT"` or a table
    /// with PROXY protocol in. Default `["0.0.0.0:443"]`.
    pub listen: Option<Vec<Listen>>,
    /// The admin HTTP server: `/metrics`, `/healthz`, `/readyz`, `/routes`.
    /// Off unless set.
    pub admin: Option<SocketAddr>,
    /// Most connections open at once; beyond it new ones are closed at accept.
    /// Default: what the open-files limit allows (two descriptors each).
    #[serde(default, deserialize_with = "checked::some_count")]
    pub max_connections: Option<usize>,
    /// A directory of `*.toml` files with more `[[route]]` tables (relative to
    /// this file). Watched and reloaded like the file.
    pub routes_dir: Option<std::path::PathBuf>,
    #[serde(default)]
    pub reload: ReloadFile,
    /// On SIGTERM/SIGINT, how long open connections may finish before they are
    /// closed. Default 20 s: under Kubernetes' 30 s termination grace period.
    #[serde(default, deserialize_with = "checked::some_duration")]
    pub drain_timeout: Option<Duration>,
    #[serde(default)]
    pub hello: HelloFile,
    #[serde(default)]
    pub dns: DnsFile,
    #[serde(default)]
    pub clients: ClientsFile,
    #[serde(default)]
    pub defaults: DefaultsFile,
    #[serde(default)]
    pub log: LogSettings,
    /// The routes, in any order: the most specific match wins, not the first.
    #[serde(default, rename = "route")]
    pub routes: Vec<RouteFile>,
}

/// `[hello]`: reading the ClientHello.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct HelloFile {
    /// Deadline for a complete ClientHello, from accept.
    #[serde(deserialize_with = "checked::duration")]
    pub timeout: Duration,
    /// Most bytes read while looking for the end of the ClientHello.
    #[serde(deserialize_with = "checked::hello_max_bytes")]
    pub max_bytes: usize,
}

impl Default for HelloFile {
    fn default() -> Self {
        Self {
            // OpenShift's router (HAProxy `tcp-request inspect-delay`) waits 5 s.
            timeout: Duration::from_secs(5),
            // One full TLS record (16 KiB + 5-byte header) and room for the headers
            // of a hello split over many records.
            max_bytes: 17 * 1024,
        }
    }
}

/// `[defaults]`: per-route settings a route may override.
#[derive(Debug, Clone, Copy, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct DefaultsFile {
    /// Deadline for one TCP connect attempt to one endpoint address.
    #[serde(deserialize_with = "checked::duration")]
    pub connect_timeout: Duration,
    /// Deadline for all of a connection's attempts together (DNS included).
    /// Default: twice `connect_timeout`.
    #[serde(deserialize_with = "checked::some_duration")]
    pub connect_deadline: Option<Duration>,
    /// Attempts after the first, each to an address not tried yet.
    #[serde(deserialize_with = "checked::connect_retries")]
    pub connect_retries: u32,
    /// Close a relayed connection after this long with no bytes either way.
    #[serde(deserialize_with = "checked::duration")]
    pub idle_timeout: Duration,
    pub balance: Balance,
    pub health: HealthFile,
}

impl Default for DefaultsFile {
    fn default() -> Self {
        Self {
            connect_timeout: Duration::from_secs(5),
            connect_deadline: None,
            // OpenShift's router: `retries 3`.
            connect_retries: DEFAULT_CONNECT_RETRIES,
            // OpenShift's passthrough routes: `timeout tunnel 1h`.
            idle_timeout: Duration::from_secs(3600),
            balance: Balance::default(),
            health: HealthFile::default(),
        }
    }
}

/// `[dns]`: how name endpoints are resolved and kept current.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct DnsFile {
    /// Name servers to ask instead of `/etc/resolv.conf`'s (then without its
    /// search domains): `IP:PORT` or `IP` (port 53).
    pub servers: Vec<NameServer>,
    /// A name is looked up again when its answer's TTL ends, but no sooner
    /// than this after the last lookup...
    #[serde(deserialize_with = "checked::duration")]
    pub min_ttl: Duration,
    /// ...and no later than this.
    #[serde(deserialize_with = "checked::duration")]
    pub max_ttl: Duration,
}

impl Default for DnsFile {
    fn default() -> Self {
        Self {
            servers: Vec::new(),
            min_ttl: Duration::from_secs(1),
            max_ttl: Duration::from_secs(30),
        }
    }
}

impl DnsFile {
    pub fn resolve(self) -> Result<DnsSettings, String> {
        if self.max_ttl < self.min_ttl {
            return Err(format!(
                "max_ttl ({}) is shorter than min_ttl ({})",
                humantime::format_duration(self.max_ttl),
                humantime::format_duration(self.min_ttl)
            ));
        }
        Ok(DnsSettings {
            servers: self.servers.into_iter().map(|s| s.0).collect(),
            min_ttl: self.min_ttl,
            max_ttl: self.max_ttl,
        })
    }
}

/// A name server address: `IP:PORT`, or `IP` for port 53.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(try_from = "String")]
pub struct NameServer(pub SocketAddr);

impl TryFrom<String> for NameServer {
    type Error = String;

    fn try_from(s: String) -> Result<Self, Self::Error> {
        if let Ok(addr) = s.parse::<SocketAddr>() {
            return Ok(Self(addr));
        }
        s.parse::<std::net::IpAddr>()
            .map(|ip| Self(SocketAddr::new(ip, 53)))
            .map_err(|_| format!("`{s}` is not a name server address (expected IP or IP:PORT, [IPV6]:PORT)"))
    }
}

/// `[dns]`, validated.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DnsSettings {
    /// Empty: the system's (`/etc/resolv.conf`).
    pub servers: Vec<SocketAddr>,
    pub min_ttl: Duration,
    pub max_ttl: Duration,
}

/// `[reload]`: picking up changed files without a signal.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ReloadFile {
    /// Check the config file and `routes_dir` for changes (SIGHUP works either way).
    pub watch: bool,
    /// How often to check.
    #[serde(deserialize_with = "checked::duration")]
    pub interval: Duration,
}

impl Default for ReloadFile {
    fn default() -> Self {
        Self {
            watch: true,
            interval: Duration::from_secs(2),
        }
    }
}

/// One `[[route]]`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RouteFile {
    pub name: Spanned<String>,
    /// Exact host names and `*.suffix` wildcards.
    #[serde(default)]
    pub hosts: Vec<Spanned<HostPattern>>,
    pub endpoints: Spanned<Vec<WeightedEndpoint>>,
    /// Receive ClientHellos with no SNI or an SNI no route matches.
    #[serde(default)]
    pub default: Option<Spanned<bool>>,
    /// ALPN protocols this route answers for among the routes of its hosts.
    #[serde(default)]
    pub alpn: Option<Spanned<Vec<String>>>,
    pub balance: Option<Balance>,
    #[serde(default, deserialize_with = "checked::some_duration")]
    pub connect_timeout: Option<Duration>,
    #[serde(default, deserialize_with = "checked::some_duration")]
    pub connect_deadline: Option<Duration>,
    #[serde(default, deserialize_with = "checked::some_connect_retries")]
    pub connect_retries: Option<u32>,
    #[serde(default)]
    pub health: Option<Spanned<HealthFile>>,
    /// Only clients in these blocks may use this route (empty: anyone).
    #[serde(default)]
    pub allow: Vec<Cidr>,
    /// Clients in these blocks may not; wins over `allow`.
    #[serde(default)]
    pub deny: Vec<Cidr>,
    /// Limits per client address on this route.
    #[serde(default)]
    pub clients: Option<Spanned<LimitsFile>>,
    #[serde(default, deserialize_with = "checked::some_duration")]
    pub idle_timeout: Option<Duration>,
    /// Most connections relayed on this route at once.
    #[serde(default, deserialize_with = "checked::some_count")]
    pub max_connections: Option<usize>,
    /// Send a PROXY protocol header (`"v1"` or `"v2"`) to the backend first, so
    /// it sees the client's address (and, in v2, the SNI).
    pub proxy_protocol: Option<ProxyProtocol>,
}

/// PROXY protocol version sent to a route's backends.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ProxyProtocol {
    V1,
    V2,
}

// === validated ===

/// The router's validated configuration.
#[derive(Debug, Clone, PartialEq)]
pub struct RouterConfig {
    pub listen: Vec<Listen>,
    pub admin: Option<SocketAddr>,
    pub drain_timeout: Duration,
    /// `None`: derived from the open-files limit when the router starts.
    pub max_connections: Option<usize>,
    pub hello_timeout: Duration,
    pub hello_max_bytes: usize,
    pub dns: DnsSettings,
    pub clients: ClientsSettings,
    pub log_format: LogFormat,
    pub log_level: String,
    /// `None` when watching is off.
    pub reload_interval: Option<Duration>,
    pub routes_dir: Option<std::path::PathBuf>,
    /// Files and directories whose change triggers a reload.
    pub watched: Vec<std::path::PathBuf>,
    pub routes: Vec<RouteSpec>,
}

/// One route as configured, before the route table is built from all of them.
#[derive(Debug, Clone, PartialEq)]
pub struct RouteSpec {
    pub name: String,
    pub hosts: Vec<(HostPattern, Origin)>,
    pub endpoints: Vec<WeightedEndpoint>,
    /// `Some` for the default route: where it was declared.
    pub default: Option<Origin>,
    /// ALPN protocols it answers for; empty: any.
    pub alpn: Vec<String>,
    pub balance: Balance,
    /// One attempt (one TCP connect, or one DNS lookup).
    pub connect_timeout: Duration,
    /// All attempts of one connection together.
    pub connect_deadline: Duration,
    pub connect_retries: u32,
    pub health: HealthSettings,
    /// Its own `allow`, `deny` and `clients`, if any.
    pub clients: Option<Box<RouteClients>>,
    pub idle_timeout: Duration,
    pub max_connections: Option<usize>,
    pub proxy_protocol: Option<ProxyProtocol>,
    /// Where the route was declared (its `name`, or the flag).
    pub origin: Origin,
}

impl RouteSpec {
    /// A route of flags or variables: `[defaults]` for everything they cannot
    /// say, no hosts, no endpoints yet.
    fn from_defaults(defaults: &DefaultsFile, origin: Origin) -> Result<Self, ConfigError> {
        let connect_deadline = defaults
            .connect_deadline
            .unwrap_or(defaults.connect_timeout.saturating_mul(2));
        let bad = |field: &str, why: String| ConfigError::new(origin.clone(), Some(format!("defaults.{field}")), why);
        if connect_deadline < defaults.connect_timeout {
            return Err(bad(
                "connect_deadline",
                "connect_deadline is shorter than connect_timeout".into(),
            ));
        }
        Ok(Self {
            name: String::new(),
            hosts: Vec::new(),
            endpoints: Vec::new(),
            default: None,
            alpn: Vec::new(),
            balance: defaults.balance,
            connect_timeout: defaults.connect_timeout,
            connect_deadline,
            connect_retries: defaults.connect_retries,
            health: defaults.health.resolve().map_err(|why| bad("health", why))?,
            clients: None,
            idle_timeout: defaults.idle_timeout,
            max_connections: None,
            proxy_protocol: None,
            origin,
        })
    }
}

/// Where an override layer comes from: the environment, or the command line
/// (which wins).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Layer {
    Env,
    #[default]
    Flags,
}

/// Values from the environment or the command line; they win over the file.
#[derive(Debug, Clone, Default)]
pub struct Overrides {
    pub layer: Layer,
    /// Replaces the file's `listen` when not empty.
    pub listen: Vec<SocketAddr>,
    pub admin: Option<SocketAddr>,
    /// Added to the file's routes.
    pub routes: Vec<FlagRoute>,
    /// A default route's endpoints.
    pub default_route: Option<Vec<Endpoint>>,
    pub log_format: Option<LogFormat>,
    pub log_level: Option<String>,
    pub drain_timeout: Option<Duration>,
    pub max_connections: Option<usize>,
}

/// The environment variables read, with what they set. Any other variable that
/// starts with `SNIGATE_ROUTER_` is an error, so a typo does not pass silently.
pub const ENV_VARS: &[(&str, &str)] = &[
    (
        "SNIGATE_ROUTER_CONFIG",
        "the configuration file, when --config is not given",
    ),
    ("SNIGATE_ROUTER_LISTEN", "listen addresses, comma-separated"),
    ("SNIGATE_ROUTER_ADMIN", "admin server address"),
    (
        "SNIGATE_ROUTER_ROUTES",
        "routes, HOST=ADDR[,ADDR...] separated by spaces or `;`",
    ),
    (
        "SNIGATE_ROUTER_DEFAULT_ROUTE",
        "default route endpoints, comma-separated",
    ),
    ("SNIGATE_ROUTER_LOG_FORMAT", "text or json"),
    ("SNIGATE_ROUTER_LOG_LEVEL", "log filter, when RUST_LOG is not set"),
    ("SNIGATE_ROUTER_DRAIN_TIMEOUT", "drain timeout, e.g. 20s"),
    ("SNIGATE_ROUTER_MAX_CONNECTIONS", "most connections open at once"),
];

impl Overrides {
    /// The environment layer, from `vars` (pass `std::env::vars()`). Pure, so
    /// tests need not touch the process environment. Returns the layer and the
    /// `SNIGATE_ROUTER_CONFIG` path, if set.
    pub fn from_env(
        vars: impl IntoIterator<Item = (String, String)>,
    ) -> Result<(Self, Option<std::path::PathBuf>), ConfigError> {
        let mut layer = Self {
            layer: Layer::Env,
            ..Self::default()
        };
        let mut config = None;
        for (name, value) in vars {
            if !name.starts_with("SNIGATE_ROUTER_") || snigate_shared::config::is_kubernetes_service_link(&name) {
                continue;
            }
            let bad = |message: String| ConfigError::env(&name, message);
            let value = value.trim();
            match name.as_str() {
                // Empty: no file, as an image's default can be unset.
                "SNIGATE_ROUTER_CONFIG" => config = (!value.is_empty()).then(|| value.into()),
                "SNIGATE_ROUTER_LISTEN" => {
                    layer.listen = value
                        .split(',')
                        .map(|a| a.trim().parse().map_err(|e| bad(format!("`{a}`: {e}"))))
                        .collect::<Result<_, _>>()?;
                }
                "SNIGATE_ROUTER_ADMIN" => {
                    layer.admin = Some(value.parse().map_err(|e| bad(format!("`{value}`: {e}")))?)
                }
                "SNIGATE_ROUTER_ROUTES" => {
                    layer.routes = value
                        .split(|c: char| c == ';' || c.is_whitespace())
                        .filter(|r| !r.is_empty())
                        .map(|r| r.parse().map_err(bad))
                        .collect::<Result<_, _>>()?;
                }
                "SNIGATE_ROUTER_DEFAULT_ROUTE" => layer.default_route = Some(parse_endpoint_list(value).map_err(bad)?),
                "SNIGATE_ROUTER_LOG_FORMAT" => layer.log_format = Some(value.parse().map_err(bad)?),
                "SNIGATE_ROUTER_LOG_LEVEL" => {
                    snigate_shared::logging::check_filter(value).map_err(bad)?;
                    layer.log_level = Some(value.to_owned());
                }
                "SNIGATE_ROUTER_DRAIN_TIMEOUT" => {
                    let d = humantime::parse_duration(value).map_err(|e| bad(format!("`{value}`: {e}")))?;
                    if d.is_zero() {
                        return Err(bad("must be more than 0".into()));
                    }
                    layer.drain_timeout = Some(d);
                }
                "SNIGATE_ROUTER_MAX_CONNECTIONS" => {
                    let n: usize = value.parse().map_err(|e| bad(format!("`{value}`: {e}")))?;
                    if n == 0 {
                        return Err(bad("must be more than 0".into()));
                    }
                    layer.max_connections = Some(n);
                }
                _ => {
                    let known: Vec<&str> = ENV_VARS.iter().map(|(n, _)| *n).collect();
                    return Err(bad(format!("unknown variable; known: {}", known.join(", "))));
                }
            }
        }
        Ok((layer, config))
    }

    fn origin(&self, what: &str) -> Origin {
        match self.layer {
            Layer::Flags => Origin::Flag(what.to_owned()),
            Layer::Env => Origin::Env(
                match what {
                    w if w.starts_with("--route") => "SNIGATE_ROUTER_ROUTES",
                    "--default-route" => "SNIGATE_ROUTER_DEFAULT_ROUTE",
                    _ => "SNIGATE_ROUTER",
                }
                .to_owned(),
            ),
        }
    }
}

/// `--route HOST=ADDR[,ADDR...]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FlagRoute {
    pub host: HostPattern,
    pub endpoints: Vec<Endpoint>,
}

impl FromStr for FlagRoute {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let (host, endpoints) = s
            .split_once('=')
            .ok_or_else(|| format!("`{s}`: expected HOST=ADDR[,ADDR...]"))?;
        Ok(Self {
            host: host.parse()?,
            endpoints: parse_endpoint_list(endpoints)?,
        })
    }
}

/// `ADDR[,ADDR...]`, as `--route` and `--default-route` take it.
pub fn parse_endpoint_list(s: &str) -> Result<Vec<Endpoint>, String> {
    s.split(',').map(|e| e.trim().parse()).collect()
}

/// Everything needed to load the configuration again: the file (if any) and the
/// override layers, in precedence order. Kept by the router for reloads.
#[derive(Debug, Clone, Default)]
pub struct Loader {
    pub path: Option<std::path::PathBuf>,
    /// Applied in order: environment, then flags.
    pub layers: Vec<Overrides>,
}

impl Loader {
    /// Read the file (and `routes_dir`), apply the layers, validate.
    pub fn load(&self) -> Result<RouterConfig, ConfigError> {
        match &self.path {
            Some(path) => RouterConfig::from_source(&Source::read(path)?, &self.layers),
            None => RouterConfig::build(RouterFile::default(), None, &self.layers),
        }
    }
}

/// Read `path` (if any), apply one layer of `overrides`, validate.
pub fn load(path: Option<&Path>, overrides: &Overrides) -> Result<RouterConfig, ConfigError> {
    Loader {
        path: path.map(Path::to_owned),
        layers: vec![overrides.clone()],
    }
    .load()
}

/// A file of `[[route]]` tables in `routes_dir`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RoutesFile {
    #[serde(default, rename = "route")]
    pub routes: Vec<RouteFile>,
}

impl RouterConfig {
    /// Parse and validate the file in `source` with the override layers
    /// applied in order, its `[[route]]` tables one at a time.
    pub fn from_source(source: &Source, layers: &[Overrides]) -> Result<Self, ConfigError> {
        let (file, routes) = parse_with_routes(source, |file: &mut RouterFile| &mut file.routes, |file| file.defaults)?;
        Self::assemble(file, routes, Some(source), layers)
    }

    /// Validate a parsed file (whose text is `source`, for error positions) with
    /// the override layers applied in order.
    pub fn build(mut file: RouterFile, source: Option<&Source>, layers: &[Overrides]) -> Result<Self, ConfigError> {
        let mut routes = Vec::new();
        if !file.routes.is_empty() {
            let source = source.ok_or_else(|| ConfigError::flag("--config", "routes without a file"))?;
            routes = route_specs(std::mem::take(&mut file.routes), source, 0, 0, &file.defaults)?;
        }
        Self::assemble(file, routes, source, layers)
    }

    /// The rest of validation, once the file's own routes are.
    fn assemble(
        file: RouterFile,
        mut routes: Vec<RouteSpec>,
        source: Option<&Source>,
        layers: &[Overrides],
    ) -> Result<Self, ConfigError> {
        let defaults = &file.defaults;
        // Checked once for every configuration, whether or not a route takes
        // them as they are.
        RouteSpec::from_defaults(defaults, origin_of(source))?;
        let mut watched = Vec::new();
        if let Some(source) = source {
            watched.push(source.path().to_owned());
        }
        let routes_dir = file.routes_dir.as_ref().map(|dir| match source {
            // Relative to the file that names it, as a mounted config expects.
            Some(source) => source.path().parent().unwrap_or(Path::new(".")).join(dir),
            None => dir.clone(),
        });
        if let Some(dir) = &routes_dir {
            for path in route_files(dir, source)? {
                let source = Source::read(&path)?;
                let (_, file_routes) =
                    parse_with_routes(&source, |file: &mut RoutesFile| &mut file.routes, |_| *defaults)?;
                routes.extend(file_routes);
                watched.push(path);
            }
            watched.push(dir.clone());
        }

        let mut config = Self {
            listen: file
                .listen
                .unwrap_or_else(|| vec![Listen::plain(SocketAddr::from(([0, 0, 0, 0], 443)))]),
            admin: file.admin,
            drain_timeout: file.drain_timeout.unwrap_or(DEFAULT_DRAIN_TIMEOUT),
            max_connections: file.max_connections,
            hello_timeout: file.hello.timeout,
            hello_max_bytes: file.hello.max_bytes,
            dns: file
                .dns
                .resolve()
                .map_err(|why| ConfigError::new(origin_of(source), Some("dns".into()), why))?,
            clients: file
                .clients
                .resolve()
                .map_err(|why| ConfigError::new(origin_of(source), Some("clients".into()), why))?,
            log_format: file.log.format,
            log_level: file.log.level,
            reload_interval: file.reload.watch.then_some(file.reload.interval),
            routes_dir,
            watched,
            routes,
        };
        if config.listen.is_empty() {
            return Err(ConfigError::new(
                origin_of(source),
                Some("listen".into()),
                "at least one address is needed",
            ));
        }

        for layer in layers {
            if !layer.listen.is_empty() {
                config.listen = layer.listen.iter().copied().map(Listen::plain).collect();
            }
            config.admin = layer.admin.or(config.admin);
            config.log_format = layer.log_format.unwrap_or(config.log_format);
            if let Some(level) = &layer.log_level {
                config.log_level.clone_from(level);
            }
            config.drain_timeout = layer.drain_timeout.unwrap_or(config.drain_timeout);
            config.max_connections = layer.max_connections.or(config.max_connections);
            for flag in &layer.routes {
                let origin = layer.origin(&format!("--route {}", flag.host));
                config.routes.push(RouteSpec {
                    name: flag.host.to_string(),
                    hosts: vec![(flag.host.clone(), origin.clone())],
                    endpoints: flag.endpoints.iter().cloned().map(WeightedEndpoint::from).collect(),
                    default: None,
                    ..RouteSpec::from_defaults(defaults, origin)?
                });
            }
            if let Some(endpoints) = &layer.default_route {
                let origin = layer.origin("--default-route");
                config.routes.push(RouteSpec {
                    name: "default".to_owned(),
                    endpoints: endpoints.iter().cloned().map(WeightedEndpoint::from).collect(),
                    default: Some(origin.clone()),
                    ..RouteSpec::from_defaults(defaults, origin)?
                });
            }
        }
        Ok(config)
    }
}

/// The `*.toml` files of a routes directory, sorted by name. Hidden entries are
/// skipped: Kubernetes mounts a ConfigMap as `..data` and `..<timestamp>`
/// entries beside the visible symlinks.
fn route_files(dir: &Path, named_in: Option<&Source>) -> Result<Vec<std::path::PathBuf>, ConfigError> {
    let entries = std::fs::read_dir(dir).map_err(|e| {
        ConfigError::new(
            origin_of(named_in),
            Some("routes_dir".into()),
            format!("cannot read {}: {e}", dir.display()),
        )
    })?;
    let mut files: Vec<std::path::PathBuf> = entries
        .filter_map(Result::ok)
        .map(|e| e.path())
        .filter(|p| {
            let name = p
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_default();
            !name.starts_with('.') && p.extension().is_some_and(|e| e == "toml") && p.is_file()
        })
        .collect();
    files.sort();
    Ok(files)
}

/// A file of settings `T` with `[[route]]` tables (the main file, or one in
/// `routes_dir`), parsed and its routes validated. The tables are deserialized
/// and validated one at a time, so that 10,000 routes never stand as one TOML
/// document beside their deserialized and validated copies (a 29 MB resident
/// peak that glibc then kept). Any error sends the file through the
/// whole-document parse instead, whose messages name the line and the field.
fn parse_with_routes<T: serde::de::DeserializeOwned>(
    source: &Source,
    routes_of: fn(&mut T) -> &mut Vec<RouteFile>,
    defaults_of: impl Fn(&T) -> DefaultsFile,
) -> Result<(T, Vec<RouteSpec>), ConfigError> {
    let streamed = || -> Option<(T, Vec<RouteSpec>)> {
        let (mut file, tables) = source.parse_split::<T>("route")?;
        let defaults = defaults_of(&file);
        // `route = [...]` inline, when the file has no `[[route]]` tables.
        let mut specs = route_specs(std::mem::take(routes_of(&mut file)), source, 0, 0, &defaults).ok()?;
        specs.reserve_exact(tables.len());
        for (index, table) in tables.into_iter().enumerate() {
            let start = table.start;
            let part: RoutesFile = source.parse_part(table)?;
            specs.extend(route_specs(part.routes, source, start, index, &defaults).ok()?);
        }
        Some((file, specs))
    };
    if let Some(parsed) = streamed() {
        return Ok(parsed);
    }
    let mut file: T = source.parse()?;
    let defaults = defaults_of(&file);
    let specs = route_specs(std::mem::take(routes_of(&mut file)), source, 0, 0, &defaults)?;
    Ok((file, specs))
}

/// Validate `[[route]]` tables of one file: `routes`, deserialized from the
/// text at `offset` (their spans are relative to it), the first being the
/// file's route number `first_index`.
fn route_specs(
    routes: Vec<RouteFile>,
    source: &Source,
    offset: usize,
    first_index: usize,
    defaults: &DefaultsFile,
) -> Result<Vec<RouteSpec>, ConfigError> {
    let at = |span: std::ops::Range<usize>| source.origin_at(offset + span.start);
    let file_error =
        |span: std::ops::Range<usize>, field: String, message: String| ConfigError::new(at(span), Some(field), message);
    let mut specs = Vec::with_capacity(routes.len());
    for (i, route) in (first_index..).zip(routes) {
        let name_span = route.name.span();
        let name = route.name.into_inner();
        if name.is_empty() || name.len() > 64 || !name.chars().all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c)) {
            return Err(file_error(
                name_span,
                format!("route[{i}].name"),
                format!(
                    "`{name}`: a route name is 1 to 64 characters of letters, digits, `-`, `_` and `.` (it becomes a metric label)"
                ),
            ));
        }
        let endpoints_span = route.endpoints.span();
        let endpoints = route.endpoints.into_inner();
        if endpoints.is_empty() {
            return Err(file_error(
                endpoints_span,
                format!("route[{i}].endpoints"),
                "a route needs at least one endpoint".into(),
            ));
        }
        for (j, entry) in endpoints.iter().enumerate() {
            if endpoints[..j].iter().any(|e| e.endpoint == entry.endpoint) {
                return Err(file_error(
                    endpoints_span,
                    format!("route[{i}].endpoints"),
                    format!("endpoint `{}` appears twice in route `{name}`", entry.endpoint),
                ));
            }
        }
        let connect_timeout = route.connect_timeout.unwrap_or(defaults.connect_timeout);
        let connect_deadline = route
            .connect_deadline
            .or(defaults.connect_deadline)
            .unwrap_or(connect_timeout.saturating_mul(2));
        if connect_deadline < connect_timeout {
            return Err(file_error(
                name_span,
                format!("route[{i}].connect_deadline"),
                format!(
                    "route `{name}`: connect_deadline ({}) is shorter than connect_timeout ({})",
                    humantime::format_duration(connect_deadline),
                    humantime::format_duration(connect_timeout)
                ),
            ));
        }
        let (health_span, health) = match route.health {
            Some(health) => (health.span(), health.into_inner()),
            None => (name_span.clone(), HealthFile::default()),
        };
        let health = health
            .over(defaults.health)
            .resolve()
            .map_err(|why| file_error(health_span, format!("route[{i}].health"), why))?;
        let client_limits = match route.clients {
            Some(limits) => {
                let span = limits.span();
                limits
                    .into_inner()
                    .resolve()
                    .map_err(|why| file_error(span, format!("route[{i}].clients"), why))?
            }
            None => ClientLimits::default(),
        };
        let alpn = match route.alpn {
            Some(alpn) => {
                let span = alpn.span();
                let alpn = alpn.into_inner();
                check_alpn(&alpn).map_err(|why| file_error(span, format!("route[{i}].alpn"), why))?;
                alpn
            }
            None => Vec::new(),
        };
        let default_span = route.default.as_ref().map_or(name_span.clone(), Spanned::span);
        let is_default = route.default.is_some_and(Spanned::into_inner);
        if route.hosts.is_empty() && !is_default {
            return Err(file_error(
                name_span,
                format!("route[{i}].hosts"),
                format!("route `{name}` has no hosts and is not the default route"),
            ));
        }
        specs.push(RouteSpec {
            origin: at(name_span),
            name,
            hosts: route
                .hosts
                .into_iter()
                .map(|h| {
                    let origin = at(h.span());
                    (h.into_inner(), origin)
                })
                .collect(),
            endpoints,
            default: is_default.then(|| at(default_span)),
            alpn,
            balance: route.balance.unwrap_or(defaults.balance),
            connect_timeout,
            connect_deadline,
            connect_retries: route.connect_retries.unwrap_or(defaults.connect_retries),
            health,
            clients: RouteClients::new(AccessList::new(route.allow, route.deny), client_limits),
            idle_timeout: route.idle_timeout.unwrap_or(defaults.idle_timeout),
            max_connections: route.max_connections,
            proxy_protocol: route.proxy_protocol,
        });
    }
    Ok(specs)
}

/// ALPN protocol ids as RFC 7301 allows them (1 to 255 bytes), written as
/// printable ASCII (every registered id is), each once.
fn check_alpn(alpn: &[String]) -> Result<(), String> {
    if alpn.is_empty() {
        return Err("an empty list: leave `alpn` out for any protocol".to_owned());
    }
    for (i, id) in alpn.iter().enumerate() {
        if id.is_empty() || id.len() > 255 || !id.bytes().all(|b| b.is_ascii_graphic()) {
            return Err(format!("`{id}`: an ALPN id is 1 to 255 printable ASCII characters"));
        }
        if alpn[..i].contains(id) {
            return Err(format!("`{id}` appears twice"));
        }
    }
    Ok(())
}

fn origin_of(source: Option<&Source>) -> Origin {
    match source {
        Some(source) => Origin::File {
            path: source.path().to_owned(),
            position: None,
        },
        None => Origin::Flag("(defaults)".to_owned()),
    }
}

/// Value checks run while deserializing, so that toml reports them with the
/// line and the field path like any type error.
mod checked {
    use std::time::Duration;

    use serde::de::{Deserializer, Error};

    pub fn duration<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
        let value: Duration = humantime_serde::deserialize(d)?;
        if value.is_zero() {
            return Err(D::Error::custom("must be more than 0"));
        }
        Ok(value)
    }

    pub fn some_duration<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Duration>, D::Error> {
        duration(d).map(Some)
    }

    pub fn connect_retries<'de, D: Deserializer<'de>>(d: D) -> Result<u32, D::Error> {
        let value: u32 = serde::Deserialize::deserialize(d)?;
        if value > super::MAX_CONNECT_RETRIES {
            return Err(D::Error::custom(format!(
                "{value} is out of range 0..={}",
                super::MAX_CONNECT_RETRIES
            )));
        }
        Ok(value)
    }

    pub fn some_connect_retries<'de, D: Deserializer<'de>>(d: D) -> Result<Option<u32>, D::Error> {
        connect_retries(d).map(Some)
    }

    pub fn at_least_one<'de, D: Deserializer<'de>>(d: D) -> Result<usize, D::Error> {
        some_count(d).map(|n| n.unwrap_or(1))
    }

    pub fn some_count<'de, D: Deserializer<'de>>(d: D) -> Result<Option<usize>, D::Error> {
        let value: usize = serde::Deserialize::deserialize(d)?;
        if value == 0 {
            return Err(D::Error::custom("must be more than 0"));
        }
        Ok(Some(value))
    }

    pub fn hello_max_bytes<'de, D: Deserializer<'de>>(d: D) -> Result<usize, D::Error> {
        let value: usize = serde::Deserialize::deserialize(d)?;
        if !(1024..=1 << 20).contains(&value) {
            return Err(D::Error::custom(format!("{value} is out of range 1024..=1048576")));
        }
        Ok(value)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Parsed a table at a time, and checked against the whole-document
    /// parse: every test here shows the two agree, values and errors alike.
    fn parse(text: &str) -> Result<RouterConfig, ConfigError> {
        let source = Source::from_text("router.toml", text);
        let streamed = RouterConfig::from_source(&source, &[]);
        let whole = source
            .parse()
            .and_then(|file| RouterConfig::build(file, Some(&source), &[]));
        assert_eq!(streamed, whole, "{text}");
        streamed
    }

    #[test]
    fn tables_parsed_one_at_a_time_agree_with_the_whole_document() {
        let route = |name: &str| {
            format!("[[route]]\nname = \"{name}\"\nhosts = [\"{name}.test\"]\nendpoints = [\"127.0.0.1:1\"]\n")
        };
        let (a, b) = (route("a"), route("b"));
        let accepted = [
            // Settings before, between and after the tables.
            format!("listen = [\"127.0.0.1:1\"]\n{a}[log]\nlevel = \"debug\"\n{b}[defaults]\nidle_timeout = \"5s\"\n"),
            // No tables; inline routes.
            "route = [{ name = \"a\", hosts = [\"a.test\"], endpoints = [\"127.0.0.1:1\"] }]\n".to_owned(),
            // A header in a comment is no header.
            format!("{a}  # [[route]] in a comment\n{b}"),
            // Quoted header keys, CRLF line ends, a route starting on the first line.
            format!("[[\"route\"]]\r\nname = \"a\"\r\nhosts = [\"a.test\"]\r\nendpoints = [\"127.0.0.1:1\"]\r\n{b}"),
        ];
        for text in &accepted {
            let config = parse(text).unwrap_or_else(|e| panic!("{e}\n{text}"));
            assert!(!config.routes.is_empty() && config.routes.len() <= 2, "{text}");
        }
        let refused = [
            // A header inside a multi-line string is text, not a table (the
            // log filter it makes is refused, at the same place either way).
            format!("{a}[log]\nlevel = \"\"\"\n[[route]]\nname = 'x'\"\"\"\n"),
            // A route's sub-table, an unknown field: named at its own line.
            format!("{a}[route.extra]\nx = 1\n{b}"),
            // The array given twice.
            format!("route = []\n{a}"),
            format!("{a}[route]\nname = \"x\"\n"),
            // Malformed TOML after the tables, and inside one.
            format!("{a}{b}listen = [\n"),
            format!("{a}name = \"dup\"\n{b}"),
            // A bad value in the second table: its line, and route[1].
            format!("{a}{}", route("b b")),
        ];
        for text in &refused {
            assert!(parse(text).is_err(), "{text}");
        }
        // Many tables: each route's position is its own line in the file.
        let many: String = (0..2000).map(|i| route(&format!("r{i}"))).collect();
        let config = parse(&format!("listen = [\"127.0.0.1:1\"]\n{many}")).unwrap();
        assert_eq!(config.routes.len(), 2000);
        assert_eq!(config.routes[1999].origin.to_string(), "router.toml:7999:8");

        let err = parse(&format!("{a}{}", route("b b"))).unwrap_err();
        assert_eq!(err.field.as_deref(), Some("route[1].hosts[0]"), "{err}");
        assert!(err.to_string().starts_with("router.toml:7:"), "{err}");
    }

    #[test]
    fn defaults_without_a_file() {
        let config = RouterConfig::build(RouterFile::default(), None, &[]).unwrap();
        assert_eq!(config.listen, vec![Listen::plain("0.0.0.0:443".parse().unwrap())]);
        assert_eq!(config.hello_timeout, Duration::from_secs(5));
        assert_eq!(config.hello_max_bytes, 17 * 1024);
        assert!(config.routes.is_empty());
    }

    #[test]
    fn flag_route_parses() {
        let route: FlagRoute = "*.apps.test=127.0.0.1:1,b.test:2".parse().unwrap();
        assert_eq!(route.host, HostPattern::Wildcard("apps.test".into()));
        assert_eq!(route.endpoints.len(), 2);
        assert!("a.test".parse::<FlagRoute>().is_err());
    }

    #[test]
    fn bad_host_error_names_line_and_field() {
        let err = parse("[[route]]\nname = \"a\"\nhosts = [\"ok.test\", \"a..b\"]\nendpoints = [\"127.0.0.1:1\"]\n")
            .unwrap_err();
        let text = err.to_string();
        assert!(text.starts_with("router.toml:3:"), "{text}");
        assert!(text.contains(": field `route[0].hosts[1]`: "), "{text}");
        assert!(text.contains("empty label"), "{text}");
    }

    #[test]
    fn empty_endpoints_and_missing_hosts_are_refused() {
        let err = parse("[[route]]\nname = \"a\"\nhosts = [\"a.test\"]\nendpoints = []\n").unwrap_err();
        assert!(
            err.to_string()
                .starts_with("router.toml:4:13: field `route[0].endpoints`"),
            "{err}"
        );
        let err = parse("[[route]]\nname = \"a\"\nendpoints = [\"127.0.0.1:1\"]\n").unwrap_err();
        assert!(
            err.to_string().contains("no hosts and is not the default route"),
            "{err}"
        );
    }

    #[test]
    fn duplicate_route_names_are_refused_by_the_table() {
        let config = parse(
            "[[route]]\nname = \"a\"\nhosts = [\"a.test\"]\nendpoints = [\"127.0.0.1:1\"]\n\
             [[route]]\nname = \"a\"\nhosts = [\"b.test\"]\nendpoints = [\"127.0.0.1:1\"]\n",
        )
        .unwrap();
        let err = crate::route::RouteTable::build(config.routes).unwrap_err();
        let text = err.to_string();
        assert!(text.starts_with("router.toml:6:8: "), "{text}");
        assert!(text.contains("already used at router.toml:2:8"), "{text}");
    }

    #[test]
    fn the_environment_layer() {
        let vars = |pairs: &[(&str, &str)]| {
            Overrides::from_env(
                pairs
                    .iter()
                    .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
                    .collect::<Vec<_>>(),
            )
        };
        let (layer, config) = vars(&[
            ("SNIGATE_ROUTER_CONFIG", "/etc/snigate/router.toml"),
            ("SNIGATE_ROUTER_LISTEN", "0.0.0.0:8443, [::]:8443"),
            (
                "SNIGATE_ROUTER_ROUTES",
                "a.test=10.0.0.1:8883,10.0.0.2:8883; *.apps.test=b:1 c.test=c:2",
            ),
            ("SNIGATE_ROUTER_DRAIN_TIMEOUT", "25s"),
            ("SNIGATE_ROUTER_MAX_CONNECTIONS", "5000"),
            // Injected by Kubernetes for a Service named snigate-router: ignored.
            ("SNIGATE_ROUTER_SERVICE_HOST", "10.96.0.10"),
            ("SNIGATE_ROUTER_SERVICE_PORT_HTTPS", "443"),
            ("SNIGATE_ROUTER_PORT", "tcp://10.96.0.10:443"),
            ("SNIGATE_ROUTER_PORT_443_TCP_ADDR", "10.96.0.10"),
            ("PATH", "/usr/bin"),
        ])
        .unwrap();
        assert_eq!(config, Some("/etc/snigate/router.toml".into()));
        assert_eq!(layer.layer, Layer::Env);
        assert_eq!(layer.listen.len(), 2);
        assert_eq!(layer.routes.len(), 3);
        assert_eq!(layer.routes[0].endpoints.len(), 2);
        assert_eq!(layer.drain_timeout, Some(Duration::from_secs(25)));
        assert_eq!(layer.max_connections, Some(5000));

        let err = vars(&[("SNIGATE_ROUTER_LISTN", "x")]).unwrap_err().to_string();
        assert!(
            err.starts_with("environment variable SNIGATE_ROUTER_LISTN: unknown variable"),
            "{err}"
        );
        let err = vars(&[("SNIGATE_ROUTER_MAX_CONNECTIONS", "0")])
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("SNIGATE_ROUTER_MAX_CONNECTIONS: must be more than 0"),
            "{err}"
        );
    }

    #[test]
    fn value_checks_name_line_and_field() {
        let err = parse("[hello]\nmax_bytes = 10\n").unwrap_err().to_string();
        assert!(
            err.starts_with("router.toml:2:13: field `hello.max_bytes`: 10 is out of range"),
            "{err}"
        );
        let err = parse("[defaults]\nidle_timeout = \"0s\"\n").unwrap_err().to_string();
        assert!(
            err.starts_with("router.toml:2:16: field `defaults.idle_timeout`: must be more than 0"),
            "{err}"
        );
        let err = parse("[[route]]\nname = \"a\"\nhosts = [\"a.test\"]\nendpoints = [\"127.0.0.1:1\"]\nconnect_timeout = \"soon\"\n")
            .unwrap_err()
            .to_string();
        assert!(
            err.starts_with("router.toml:5:19: field `route[0].connect_timeout`: "),
            "{err}"
        );
        let err = parse("[log]\nlevel = \"info,[\"\n").unwrap_err().to_string();
        assert!(
            err.starts_with("router.toml:2:9: field `log.level`: invalid log filter"),
            "{err}"
        );
    }

    #[test]
    fn durations_and_per_route_overrides() {
        let config = parse(
            "[hello]\ntimeout = \"250ms\"\n[defaults]\nidle_timeout = \"30m\"\n\
             [[route]]\nname = \"a\"\nhosts = [\"a.test\"]\nendpoints = [\"127.0.0.1:1\"]\nidle_timeout = \"10s\"\n\
             [[route]]\nname = \"b\"\nhosts = [\"b.test\"]\nendpoints = [\"127.0.0.1:1\"]\n",
        )
        .unwrap();
        assert_eq!(config.hello_timeout, Duration::from_millis(250));
        assert_eq!(config.routes[0].idle_timeout, Duration::from_secs(10));
        assert_eq!(config.routes[1].idle_timeout, Duration::from_secs(1800));
    }

    #[test]
    fn balancing_weights_and_health_per_route_over_defaults() {
        let config = parse(
            "[defaults]\nbalance = \"least-connections\"\nconnect_retries = 1\n\
             [defaults.health]\nfailures = 5\nbackoff = \"2s\"\n\
             [[route]]\nname = \"a\"\nhosts = [\"a.test\"]\n\
             endpoints = [\"127.0.0.1:1\", { address = \"pods.test:2\", weight = 9 }]\n\
             balance = \"source\"\nconnect_timeout = \"1s\"\nhealth = { failures = 0 }\n\
             [[route]]\nname = \"b\"\nhosts = [\"b.test\"]\nendpoints = [{ address = \"127.0.0.1:1\" }]\n\
             connect_deadline = \"30s\"\nconnect_retries = 0\n",
        )
        .unwrap();
        let (a, b) = (&config.routes[0], &config.routes[1]);
        assert_eq!(a.balance, Balance::Source);
        assert_eq!(
            a.endpoints
                .iter()
                .map(|e| (e.endpoint.to_string(), e.weight))
                .collect::<Vec<_>>(),
            [("127.0.0.1:1".to_owned(), 1), ("pods.test:2".to_owned(), 9)]
        );
        assert_eq!(a.connect_deadline, Duration::from_secs(2), "twice connect_timeout");
        assert_eq!(a.connect_retries, 1);
        assert_eq!(
            (a.health.failures, a.health.backoff),
            (0, Duration::from_secs(2)),
            "the route's key, then [defaults.health]'s"
        );
        assert_eq!(b.balance, Balance::LeastConnections);
        assert_eq!(b.endpoints[0].weight, 1);
        assert_eq!((b.connect_deadline, b.connect_retries), (Duration::from_secs(30), 0));
        assert_eq!(b.health.failures, 5);
        assert_eq!(b.health.max_backoff, HealthSettings::DEFAULT.max_backoff);
    }

    #[test]
    fn listeners_with_proxy_protocol_in_name_their_load_balancers() {
        let config = parse(
            "listen = [\"127.0.0.1:8443\", { address = \"[::]:8443\", proxy_protocol = true, trusted = [\"10.0.0.0/8\", \"192.0.2.7\"] }]\n",
        )
        .unwrap();
        assert_eq!(config.listen[0], Listen::plain("127.0.0.1:8443".parse().unwrap()));
        let proxy = config.listen[1].proxy.as_ref().unwrap();
        assert!(proxy.trusted.contains("10.1.2.3".parse().unwrap()));
        assert!(!proxy.trusted.contains("192.0.2.8".parse().unwrap()));
        assert_eq!(
            config.listen[1].to_string(),
            "[::]:8443 (PROXY protocol from 10.0.0.0/8 192.0.2.7/32)"
        );
        for (text, expected) in [
            (
                "listen = [{ address = \"[::]:1\", proxy_protocol = true }]\n",
                "needs `trusted`",
            ),
            (
                "listen = [{ address = \"[::]:1\", proxy_protocol = true, trusted = [] }]\n",
                "`trusted` is empty",
            ),
            (
                "listen = [{ address = \"[::]:1\", trusted = [\"10.0.0.0/8\"] }]\n",
                "is for proxy_protocol = true",
            ),
            (
                "listen = [{ address = \"[::]:1\", proxy_protocol = true, trusted = [\"10.0.0.1/8\"] }]\n",
                "host bits set",
            ),
            ("listen = [\"localhost:1\"]\n", "field `listen[0]`"),
        ] {
            let err = parse(text).unwrap_err().to_string();
            assert!(err.contains(expected), "{text}\n{err}");
        }
    }

    #[test]
    fn client_limits_and_access_lists() {
        let config = parse(
            "[clients]\nmax_connections = 10\nrate = 5\nipv6_prefix = 56\nallow = [\"10.0.0.0/8\"]\ndeny = [\"10.0.0.1\"]\n\
             [[route]]\nname = \"a\"\nhosts = [\"a.test\"]\nendpoints = [\"127.0.0.1:1\"]\n\
             allow = [\"10.1.0.0/16\"]\nclients = { rate = 2, burst = 4 }\n",
        )
        .unwrap();
        let clients = &config.clients;
        assert_eq!(clients.limits.max_connections, Some(10));
        assert_eq!(
            clients.limits.rate,
            Some(Rate {
                per_second: 5.0,
                burst: 5.0
            })
        );
        assert_eq!((clients.ipv4_prefix, clients.ipv6_prefix), (32, 56));
        assert!(clients.access.admits("10.2.3.4".parse().unwrap()));
        assert!(!clients.access.admits("10.0.0.1".parse().unwrap()));
        assert!(!clients.access.admits("192.0.2.1".parse().unwrap()));
        let route = config.routes[0].clients.as_ref().unwrap();
        assert!(!route.access.admits("10.2.3.4".parse().unwrap()));
        assert!(config.routes[0].clients.is_some());
        assert_eq!(
            route.limits.rate,
            Some(Rate {
                per_second: 2.0,
                burst: 4.0
            })
        );
        assert!(parse("").unwrap().clients.access.is_open());
        let plain = parse("[[route]]\nname = \"b\"\nhosts = [\"b.test\"]\nendpoints = [\"127.0.0.1:1\"]\n").unwrap();
        assert!(
            plain.routes[0].clients.is_none(),
            "nothing kept for a route without them"
        );
        for (text, expected) in [
            ("[clients]\nburst = 3\n", "burst is set but rate is not"),
            ("[clients]\nipv6_prefix = 129\n", "ipv6_prefix 129 is out of range"),
            ("[clients]\nrate = 0\n", "must be more than 0"),
            (
                "[clients]\ndeny = [\"10.0.0.0/33\"]\n",
                "is not an address or a CIDR block",
            ),
        ] {
            let err = parse(text).unwrap_err().to_string();
            assert!(err.contains(expected), "{text}\n{err}");
        }
    }

    #[test]
    fn dns_servers_ttls_and_active_checks() {
        let config = parse(
            "[dns]\nservers = [\"10.96.0.10\", \"[::1]:5353\"]\nmin_ttl = \"2s\"\n\
             [defaults.health]\ncheck_interval = \"30s\"\n\
             [[route]]\nname = \"a\"\nhosts = [\"a.test\"]\nendpoints = [\"127.0.0.1:1\"]\n\
             [[route]]\nname = \"b\"\nhosts = [\"b.test\"]\nendpoints = [\"127.0.0.1:1\"]\n\
             health = { check_interval = \"1s\", check_timeout = \"300ms\" }\n",
        )
        .unwrap();
        assert_eq!(
            config.dns.servers,
            [
                "10.96.0.10:53".parse::<SocketAddr>().unwrap(),
                "[::1]:5353".parse().unwrap()
            ]
        );
        assert_eq!(
            (config.dns.min_ttl, config.dns.max_ttl),
            (Duration::from_secs(2), Duration::from_secs(30))
        );
        let check = |i: usize| config.routes[i].health.check.unwrap();
        assert_eq!(
            (check(0).interval, check(0).timeout),
            (Duration::from_secs(30), Duration::from_secs(5)),
            "the timeout is the interval, at most 5 s"
        );
        assert_eq!(
            (check(1).interval, check(1).timeout),
            (Duration::from_secs(1), Duration::from_millis(300))
        );
        assert_eq!(parse("").unwrap().dns.servers, Vec::<SocketAddr>::new());

        for (text, expected) in [
            ("[dns]\nservers = [\"ns.test\"]\n", "is not a name server address"),
            (
                "[dns]\nmin_ttl = \"1m\"\nmax_ttl = \"1s\"\n",
                "max_ttl (1s) is shorter than min_ttl (1m)",
            ),
            (
                "[defaults.health]\ncheck_timeout = \"1s\"\n",
                "check_timeout is set but check_interval is not",
            ),
        ] {
            let err = parse(text).unwrap_err().to_string();
            assert!(err.contains(expected), "{text}\n{err}");
        }
    }

    #[test]
    fn bad_balancing_and_health_settings_are_refused_where_they_are() {
        let route = |extra: &str| {
            format!("[[route]]\nname = \"a\"\nhosts = [\"a.test\"]\nendpoints = [\"127.0.0.1:1\"]\n{extra}")
        };
        let refused = [
            (route("balance = \"leastconn\"\n"), "router.toml:5:11: field `route[0].balance`: unknown variant"),
            (route("connect_retries = 33\n"), "router.toml:5:19: field `route[0].connect_retries`: 33 is out of range 0..=32"),
            (route("connect_timeout = \"5s\"\nconnect_deadline = \"1s\"\n"), "connect_deadline (1s) is shorter than connect_timeout (5s)"),
            (route("health = { backoff = \"1m\", max_backoff = \"10s\" }\n"), "field `route[0].health`: max_backoff (10s) is shorter than backoff (1m)"),
            (route("health = { fails = 1 }\n"), "unknown field `fails`"),
            (
                "[[route]]\nname = \"a\"\nhosts = [\"a.test\"]\nendpoints = [{ address = \"127.0.0.1:1\", weight = 0 }]\n".to_owned(),
                "weight 0 is out of range 1..=256",
            ),
            (
                "[[route]]\nname = \"a\"\nhosts = [\"a.test\"]\nendpoints = [\"b.test:1\", { address = \"B.test:1\" }]\n".to_owned(),
                "endpoint `b.test:1` appears twice in route `a`",
            ),
            (
                "[[route]]\nname = \"a\"\nhosts = [\"a.test\"]\nendpoints = [{ weight = 2 }]\n".to_owned(),
                "missing field `address`",
            ),
            ("[defaults]\nconnect_deadline = \"1s\"\n".to_owned(), "connect_deadline is shorter than connect_timeout"),
        ];
        for (text, expected) in &refused {
            let err = parse(text).unwrap_err().to_string();
            assert!(err.contains(expected), "{text}\n{err}");
        }
    }

    #[test]
    fn flags_add_routes_and_replace_listen() {
        let overrides = Overrides {
            listen: vec!["[::1]:8443".parse().unwrap()],
            routes: vec!["b.test=127.0.0.1:2".parse().unwrap()],
            default_route: Some(vec!["127.0.0.1:3".parse().unwrap()]),
            log_format: Some(LogFormat::Json),
            ..Overrides::default()
        };
        let source = Source::from_text(
            "r.toml",
            "listen = [\"0.0.0.0:1\"]\n[[route]]\nname = \"a\"\nhosts = [\"a.test\"]\nendpoints = [\"127.0.0.1:1\"]\n",
        );
        let config = RouterConfig::build(source.parse().unwrap(), Some(&source), &[overrides]).unwrap();
        assert_eq!(config.listen, vec![Listen::plain("[::1]:8443".parse().unwrap())]);
        let names: Vec<_> = config.routes.iter().map(|r| r.name.as_str()).collect();
        assert_eq!(names, ["a", "b.test", "default"]);
        assert_eq!(config.log_format, LogFormat::Json);
    }
}
