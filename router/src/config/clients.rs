//! `[clients]` and a route's `allow`, `deny` and `clients`: who may connect,
//! and how much each client address may. The schema and its validation;
//! `clients` does the counting. A leaf.

use serde::Deserialize;

use super::cidr::{Cidr, CidrSet};

/// Limits per client address: `[clients]` (all connections) or a route's
/// `clients` (that route's connections).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LimitsFile {
    /// Connections open at once from one client.
    #[serde(default, deserialize_with = "super::checked::some_count")]
    pub max_connections: Option<usize>,
    /// New connections per second from one client, on average...
    #[serde(default, deserialize_with = "super::checked::some_count")]
    pub rate: Option<usize>,
    /// ...and at most this many at once. Default: `rate`.
    #[serde(default, deserialize_with = "super::checked::some_count")]
    pub burst: Option<usize>,
}

/// `[clients]`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ClientsFile {
    /// As in [`LimitsFile`] (not flattened: serde cannot deny unknown fields
    /// beside a flattened struct).
    #[serde(deserialize_with = "super::checked::some_count")]
    pub max_connections: Option<usize>,
    #[serde(deserialize_with = "super::checked::some_count")]
    pub rate: Option<usize>,
    #[serde(deserialize_with = "super::checked::some_count")]
    pub burst: Option<usize>,
    /// IPv4 clients are counted by this prefix (32: each address).
    pub ipv4_prefix: u8,
    /// IPv6 clients are counted by this prefix: a host usually has a /64.
    pub ipv6_prefix: u8,
    /// Most client addresses (prefixes) tracked at once, per table.
    #[serde(deserialize_with = "super::checked::at_least_one")]
    pub max_tracked: usize,
    /// Only these may connect at all (empty: anyone).
    pub allow: Vec<Cidr>,
    /// These may never connect; wins over `allow`.
    pub deny: Vec<Cidr>,
}

impl Default for ClientsFile {
    fn default() -> Self {
        Self {
            max_connections: None,
            rate: None,
            burst: None,
            ipv4_prefix: 32,
            ipv6_prefix: 64,
            max_tracked: 65_536,
            allow: Vec::new(),
            deny: Vec::new(),
        }
    }
}

/// Limits per client, validated.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct ClientLimits {
    pub max_connections: Option<u32>,
    pub rate: Option<Rate>,
}

/// A token bucket: `per_second` new connections on average, `burst` at once.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Rate {
    pub per_second: f64,
    pub burst: f64,
}

impl ClientLimits {
    pub fn is_none(&self) -> bool {
        self.max_connections.is_none() && self.rate.is_none()
    }
}

impl LimitsFile {
    pub fn resolve(self) -> Result<ClientLimits, String> {
        if self.burst.is_some() && self.rate.is_none() {
            return Err("burst is set but rate is not".to_owned());
        }
        let max_connections = self
            .max_connections
            .map(|n| u32::try_from(n).map_err(|_| format!("max_connections {n} is more than {}", u32::MAX)))
            .transpose()?;
        Ok(ClientLimits {
            max_connections,
            rate: self.rate.map(|rate| Rate {
                per_second: rate as f64,
                burst: self.burst.unwrap_or(rate) as f64,
            }),
        })
    }
}

/// Who may connect: everyone unless `allow` is given, never `deny`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AccessList {
    /// `None`: anyone not denied.
    pub allow: Option<CidrSet>,
    pub deny: CidrSet,
}

impl AccessList {
    pub fn new(allow: Vec<Cidr>, deny: Vec<Cidr>) -> Self {
        Self {
            allow: (!allow.is_empty()).then(|| CidrSet::new(allow)),
            deny: CidrSet::new(deny),
        }
    }

    pub fn is_open(&self) -> bool {
        self.allow.is_none() && self.deny.is_empty()
    }

    pub fn admits(&self, ip: std::net::IpAddr) -> bool {
        !self.deny.contains(ip) && self.allow.as_ref().is_none_or(|allow| allow.contains(ip))
    }
}

/// A route's own `allow`, `deny` and `clients`. Boxed in a route and absent
/// when it has none: 10,000 routes without them carry 8 bytes each, not 128.
#[derive(Debug, Clone, PartialEq)]
pub struct RouteClients {
    pub access: AccessList,
    pub limits: ClientLimits,
}

impl RouteClients {
    /// `None` when the route sets none of them.
    pub fn new(access: AccessList, limits: ClientLimits) -> Option<Box<Self>> {
        (!access.is_open() || !limits.is_none()).then(|| Box::new(Self { access, limits }))
    }
}

/// `[clients]`, validated.
#[derive(Debug, Clone, PartialEq)]
pub struct ClientsSettings {
    pub limits: ClientLimits,
    pub ipv4_prefix: u8,
    pub ipv6_prefix: u8,
    pub max_tracked: usize,
    pub access: AccessList,
}

impl Default for ClientsSettings {
    fn default() -> Self {
        ClientsFile::default().resolve().unwrap_or_else(|_| Self {
            limits: ClientLimits::default(),
            ipv4_prefix: 32,
            ipv6_prefix: 64,
            max_tracked: 65_536,
            access: AccessList::default(),
        })
    }
}

impl ClientsFile {
    pub fn resolve(self) -> Result<ClientsSettings, String> {
        if self.ipv4_prefix > 32 {
            return Err(format!("ipv4_prefix {} is out of range 0..=32", self.ipv4_prefix));
        }
        if self.ipv6_prefix > 128 {
            return Err(format!("ipv6_prefix {} is out of range 0..=128", self.ipv6_prefix));
        }
        let limits = LimitsFile {
            max_connections: self.max_connections,
            rate: self.rate,
            burst: self.burst,
        };
        Ok(ClientsSettings {
            limits: limits.resolve()?,
            ipv4_prefix: self.ipv4_prefix,
            ipv6_prefix: self.ipv6_prefix,
            max_tracked: self.max_tracked,
            access: AccessList::new(self.allow, self.deny),
        })
    }
}
