//! The route table: which route a ClientHello's SNI (and ALPN) selects.
//!
//! Built once per configuration (at start and on reload), then shared read-only by
//! every connection. Lookup is two hash probes: the exact name, then the wildcard
//! for the name minus its first label. Exact beats wildcard; the default route
//! takes what neither matches, and hellos without SNI. The host decides first;
//! among the routes claiming the best-matching host, one listing a protocol the
//! client offers (in the client's order of preference) wins over the one that
//! lists none. Conflicts (one host, or one host and protocol, claimed by two
//! routes; two default routes) are found here, at build time, and name both
//! places. Sync and pure: no I/O.

use std::collections::HashMap;
use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use snigate_shared::config::{ConfigError, Origin};

use crate::config::{HostPattern, ProxyProtocol, RouteClients, RouteSpec};
use crate::pool::Pool;

/// A route, as connections use it.
#[derive(Debug)]
pub struct Route {
    pub name: String,
    /// The host patterns, as configured (for `check` and the logs).
    pub hosts: Vec<String>,
    /// The ALPN protocols it answers for; empty: any.
    pub alpn: Vec<String>,
    /// Its endpoints, how connections are spread over them and what is known
    /// of their health.
    pub pool: Pool,
    /// One attempt: a TCP connect, or a DNS lookup.
    pub connect_timeout: Duration,
    /// All attempts of one connection together.
    pub connect_deadline: Duration,
    /// Attempts after the first, each to an address not tried yet.
    pub connect_retries: u32,
    /// Its own `allow`, `deny` and `clients`, if any.
    pub clients: Option<Box<RouteClients>>,
    pub idle_timeout: Duration,
    /// Most connections routed here at once.
    pub max_connections: Option<usize>,
    pub proxy_protocol: Option<ProxyProtocol>,
}

/// How a route was selected.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MatchKind {
    Exact,
    Wildcard,
    /// The default route, for a hello with no SNI.
    DefaultNoSni,
    /// The default route, for an SNI no route claims.
    DefaultUnknownSni,
}

impl MatchKind {
    pub fn label(&self) -> &'static str {
        match self {
            MatchKind::Exact => "exact",
            MatchKind::Wildcard => "wildcard",
            MatchKind::DefaultNoSni => "default_no_sni",
            MatchKind::DefaultUnknownSni => "default_unknown_sni",
        }
    }
}

/// Why no route was selected.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum NoRoute {
    #[error("the ClientHello has no SNI and there is no default route")]
    NoSni,
    #[error("no route for this SNI and there is no default route")]
    UnknownSni,
    #[error("the routes for this SNI each want an ALPN protocol the client does not offer")]
    NoAlpn,
}

impl NoRoute {
    pub fn label(&self) -> &'static str {
        match self {
            NoRoute::NoSni => "no_sni",
            NoRoute::UnknownSni => "unknown_sni",
            NoRoute::NoAlpn => "no_alpn",
        }
    }
}

/// All routes, indexed by host.
#[derive(Debug, Default)]
pub struct RouteTable {
    routes: Vec<Arc<Route>>,
    exact: HashMap<String, Claim>,
    /// Keyed by the suffix after `*.`.
    wildcard: HashMap<String, Claim>,
    default: Claim,
}

/// The routes claiming one host (or the default): the one for any protocol,
/// and those for given ALPN protocols.
#[derive(Debug, Default)]
struct Claim {
    any: Option<usize>,
    by_alpn: Vec<(String, usize)>,
}

impl Claim {
    fn is_empty(&self) -> bool {
        self.any.is_none() && self.by_alpn.is_empty()
    }

    /// The route for a client offering `alpn`, in its order of preference.
    fn choose(&self, alpn: &[String]) -> Option<usize> {
        alpn.iter()
            .find_map(|offered| self.by_alpn.iter().find(|(p, _)| p == offered).map(|&(_, i)| i))
            .or(self.any)
    }

    fn add(&mut self, index: usize, alpn: &[String]) {
        if alpn.is_empty() {
            self.any = Some(index);
        }
        self.by_alpn.extend(alpn.iter().map(|p| (p.clone(), index)));
    }
}

impl RouteTable {
    /// Index `specs`, refusing any host claimed twice and a second default route.
    /// Takes them by value: their strings move into the table rather than being
    /// copied, and the origins kept for error messages go once it is built.
    pub fn build(specs: Vec<RouteSpec>) -> Result<Self, ConfigError> {
        Self::build_after(specs, None)
    }

    /// As [`RouteTable::build`], replacing `previous`: a route of the same
    /// name takes over what its endpoints that stay have learnt (health,
    /// addresses, open connections, counters).
    pub fn build_after(specs: Vec<RouteSpec>, previous: Option<&RouteTable>) -> Result<Self, ConfigError> {
        let mut table = RouteTable::default();
        table.index(&specs)?;
        let previous: HashMap<&str, &Pool> = previous
            .map(|p| p.routes.iter().map(|r| (r.name.as_str(), &r.pool)).collect())
            .unwrap_or_default();
        table.routes = specs
            .into_iter()
            .map(|spec| {
                let pool = Pool::new(
                    spec.endpoints,
                    spec.balance,
                    spec.health,
                    previous.get(spec.name.as_str()).copied(),
                );
                Arc::new(Route {
                    hosts: spec.hosts.iter().map(|(h, _)| h.to_string()).collect(),
                    alpn: spec.alpn,
                    name: spec.name,
                    pool,
                    connect_timeout: spec.connect_timeout,
                    connect_deadline: spec.connect_deadline,
                    connect_retries: spec.connect_retries,
                    clients: spec.clients,
                    idle_timeout: spec.idle_timeout,
                    max_connections: spec.max_connections,
                    proxy_protocol: spec.proxy_protocol,
                })
            })
            .collect();
        Ok(table)
    }

    /// Fill the host and default indexes from `specs`, or name the first conflict.
    fn index(&mut self, specs: &[RouteSpec]) -> Result<(), ConfigError> {
        let table = self;
        // Where each (host, protocol) and the default were claimed, to name
        // both on a conflict; `None`: any protocol.
        let mut claimed: HashMap<(&HostPattern, Option<&str>), (usize, &str, &Origin)> = HashMap::new();
        let mut default_claim: HashMap<Option<&str>, (&str, &Origin)> = HashMap::new();
        let mut names: HashMap<&str, &Origin> = HashMap::new();
        for (index, spec) in specs.iter().enumerate() {
            for (pattern, origin) in &spec.hosts {
                for protocol in protocols(spec) {
                    let Some((other_index, other, other_origin)) =
                        claimed.insert((pattern, protocol), (index, &spec.name, origin))
                    else {
                        continue;
                    };
                    let what = match protocol {
                        None => format!("host `{pattern}`"),
                        Some(p) => format!("host `{pattern}` with ALPN `{p}`"),
                    };
                    let message = if other_index == index {
                        format!("{what} appears twice in route `{other}` (also at {other_origin})")
                    } else {
                        format!(
                            "{what} is claimed by route `{}` and route `{other}` (at {other_origin})",
                            spec.name
                        )
                    };
                    return Err(ConfigError::new(origin.clone(), Some("hosts".into()), message));
                }
                let claim = match pattern {
                    HostPattern::Exact(name) => table.exact.entry(name.clone()).or_default(),
                    HostPattern::Wildcard(suffix) => table.wildcard.entry(suffix.clone()).or_default(),
                };
                claim.add(index, &spec.alpn);
            }
            // After the hosts: two flag routes for one host share a name, and the
            // host is the conflict worth reporting.
            if let Some(first) = names.insert(&spec.name, &spec.origin) {
                return Err(ConfigError::new(
                    spec.origin.clone(),
                    Some("name".into()),
                    format!("route name `{}` is already used at {first}", spec.name),
                ));
            }
            if let Some(origin) = &spec.default {
                for protocol in protocols(spec) {
                    if let Some((other, other_origin)) = default_claim.insert(protocol, (&spec.name, origin)) {
                        let what = match protocol {
                            None => String::new(),
                            Some(p) => format!(" for ALPN `{p}`"),
                        };
                        return Err(ConfigError::new(
                            origin.clone(),
                            Some("default".into()),
                            format!(
                                "route `{}` and route `{other}` (at {other_origin}) are both the default route{what}",
                                spec.name
                            ),
                        ));
                    }
                }
                table.default.add(index, &spec.alpn);
            }
        }
        Ok(())
    }

    /// The route for a ClientHello's (normalised) SNI and its ALPN offer.
    pub fn lookup(&self, sni: Option<&str>, alpn: &[String]) -> Result<(&Arc<Route>, MatchKind), NoRoute> {
        let found = match sni {
            None => None,
            Some(sni) => self.exact.get(sni).map(|c| (c, MatchKind::Exact)).or_else(|| {
                let (_, parent) = sni.split_once('.')?;
                self.wildcard.get(parent).map(|c| (c, MatchKind::Wildcard))
            }),
        };
        let has_default = !self.default.is_empty();
        let (claim, kind) = match found {
            Some(found) => found,
            None if has_default && sni.is_none() => (&self.default, MatchKind::DefaultNoSni),
            None if has_default => (&self.default, MatchKind::DefaultUnknownSni),
            None if sni.is_none() => return Err(NoRoute::NoSni),
            None => return Err(NoRoute::UnknownSni),
        };
        let index = claim.choose(alpn).ok_or(NoRoute::NoAlpn)?;
        Ok((&self.routes[index], kind))
    }

    pub fn routes(&self) -> &[Arc<Route>] {
        &self.routes
    }

    /// Whether `route` (by its index in [`RouteTable::routes`]) is a default
    /// route (for any protocol or some).
    pub fn is_default(&self, index: usize) -> bool {
        self.default.any == Some(index) || self.default.by_alpn.iter().any(|&(_, i)| i == index)
    }
}

impl fmt::Display for RouteTable {
    /// The table as `check` prints it: one route per line.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, route) in self.routes.iter().enumerate() {
            let mut hosts = route.hosts.clone();
            hosts.sort();
            if self.is_default(i) {
                hosts.push("(default)".to_owned());
            }
            if !route.alpn.is_empty() {
                hosts.push(format!("[alpn {}]", route.alpn.join(" ")));
            }
            let endpoints: Vec<String> = route.pool.endpoints().iter().map(|e| e.spec.to_string()).collect();
            writeln!(
                f,
                "route {}: {} -> {} ({}; connect timeout {}, deadline {}, {} retries; idle timeout {})",
                route.name,
                hosts.join(" "),
                endpoints.join(", "),
                route.pool.balance.label(),
                humantime::format_duration(route.connect_timeout),
                humantime::format_duration(route.connect_deadline),
                route.connect_retries,
                humantime::format_duration(route.idle_timeout),
            )?;
        }
        Ok(())
    }
}

/// What a route claims its hosts for: given protocols, or (`None`) any.
fn protocols(spec: &RouteSpec) -> Vec<Option<&str>> {
    if spec.alpn.is_empty() {
        vec![None]
    } else {
        spec.alpn.iter().map(|p| Some(p.as_str())).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(name: &str, hosts: &[&str], default: bool) -> RouteSpec {
        let origin = Origin::Flag(format!("test {name}"));
        RouteSpec {
            name: name.into(),
            hosts: hosts.iter().map(|h| (h.parse().unwrap(), origin.clone())).collect(),
            endpoints: vec![crate::config::Endpoint::Addr("127.0.0.1:1".parse().unwrap()).into()],
            default: default.then(|| origin.clone()),
            alpn: Vec::new(),
            balance: crate::config::Balance::RoundRobin,
            connect_timeout: Duration::from_secs(1),
            connect_deadline: Duration::from_secs(2),
            connect_retries: 3,
            health: crate::config::HealthSettings::DEFAULT,
            clients: None,
            idle_timeout: Duration::from_secs(1),
            max_connections: None,
            proxy_protocol: None,
            origin,
        }
    }

    fn name_of(table: &RouteTable, sni: Option<&str>) -> Result<(String, MatchKind), NoRoute> {
        table.lookup(sni, &[]).map(|(r, k)| (r.name.clone(), k))
    }

    fn with_alpn(mut spec: RouteSpec, alpn: &[&str]) -> RouteSpec {
        spec.alpn = alpn.iter().map(|p| (*p).to_owned()).collect();
        spec
    }

    #[test]
    fn the_host_decides_then_the_clients_alpn_preference() {
        let table = RouteTable::build(vec![
            with_alpn(spec("mqtt", &["broker.test"], false), &["mqtt"]),
            with_alpn(spec("web", &["broker.test"], false), &["h2", "http/1.1"]),
            spec("other", &["broker.test"], false),
            with_alpn(spec("wild", &["*.test"], false), &["mqtt"]),
        ])
        .unwrap();
        let pick = |sni: &str, alpn: &[&str]| {
            let alpn: Vec<String> = alpn.iter().map(|p| (*p).to_owned()).collect();
            table.lookup(Some(sni), &alpn).map(|(r, _)| r.name.clone())
        };
        assert_eq!(pick("broker.test", &["mqtt"]), Ok("mqtt".into()));
        assert_eq!(
            pick("broker.test", &["http/1.1", "mqtt"]),
            Ok("web".into()),
            "the client's order"
        );
        assert_eq!(
            pick("broker.test", &["imap"]),
            Ok("other".into()),
            "no list wins when none matches"
        );
        assert_eq!(pick("broker.test", &[]), Ok("other".into()));
        // The host decides first: no fall-through to the wildcard.
        assert_eq!(pick("a.test", &["mqtt"]), Ok("wild".into()));
        assert_eq!(pick("a.test", &["h2"]), Err(NoRoute::NoAlpn));
    }

    #[test]
    fn one_host_and_protocol_is_claimed_once() {
        let err = RouteTable::build(vec![
            with_alpn(spec("one", &["x.test"], false), &["mqtt", "h2"]),
            with_alpn(spec("two", &["x.test"], false), &["h2"]),
        ])
        .unwrap_err();
        assert!(
            err.to_string()
                .contains("host `x.test` with ALPN `h2` is claimed by route `two` and route `one`"),
            "{err}"
        );
        let err = RouteTable::build(vec![
            with_alpn(spec("one", &[], true), &["mqtt"]),
            with_alpn(spec("two", &[], true), &["mqtt"]),
        ])
        .unwrap_err();
        assert!(
            err.to_string().contains("both the default route for ALPN `mqtt`"),
            "{err}"
        );
        // A default for one protocol and one for any are two routes, no conflict.
        RouteTable::build(vec![
            with_alpn(spec("one", &[], true), &["mqtt"]),
            spec("two", &[], true),
        ])
        .unwrap();
    }

    #[test]
    fn exact_beats_wildcard_and_wildcard_is_one_label() {
        let table = RouteTable::build(vec![
            spec("wild", &["*.apps.test"], false),
            spec("exact", &["special.apps.test"], false),
        ])
        .unwrap();
        assert_eq!(
            name_of(&table, Some("special.apps.test")),
            Ok(("exact".into(), MatchKind::Exact))
        );
        assert_eq!(
            name_of(&table, Some("a.apps.test")),
            Ok(("wild".into(), MatchKind::Wildcard))
        );
        assert_eq!(name_of(&table, Some("a.b.apps.test")), Err(NoRoute::UnknownSni));
        assert_eq!(name_of(&table, Some("apps.test")), Err(NoRoute::UnknownSni));
        assert_eq!(name_of(&table, None), Err(NoRoute::NoSni));
    }

    #[test]
    fn default_takes_unknown_and_missing_sni() {
        let table = RouteTable::build(vec![spec("a", &["a.test"], false), spec("fallback", &[], true)]).unwrap();
        assert_eq!(
            name_of(&table, Some("zzz.test")),
            Ok(("fallback".into(), MatchKind::DefaultUnknownSni))
        );
        assert_eq!(name_of(&table, None), Ok(("fallback".into(), MatchKind::DefaultNoSni)));
        assert_eq!(name_of(&table, Some("a.test")), Ok(("a".into(), MatchKind::Exact)));
    }

    #[test]
    fn conflicts_name_both_routes() {
        let err =
            RouteTable::build(vec![spec("one", &["x.test"], false), spec("two", &["X.Test."], false)]).unwrap_err();
        let text = err.to_string();
        assert!(text.contains("route `two` and route `one`"), "{text}");
        assert!(text.contains("test one") && text.contains("test two"), "{text}");

        let err = RouteTable::build(vec![spec("one", &[], true), spec("two", &[], true)]).unwrap_err();
        assert!(err.to_string().contains("both the default route"), "{err}");

        let err = RouteTable::build(vec![spec("one", &["*.a.test", "*.a.test"], false)]).unwrap_err();
        assert!(err.to_string().contains("appears twice in route `one`"), "{err}");
    }

    #[test]
    fn display_lists_every_route() {
        let table = RouteTable::build(vec![spec("a", &["b.test", "*.a.test"], false), spec("d", &[], true)]).unwrap();
        let text = table.to_string();
        assert!(text.contains("route a: *.a.test b.test -> 127.0.0.1:1"), "{text}");
        assert!(text.contains("route d: (default) -> 127.0.0.1:1"), "{text}");
    }
}
