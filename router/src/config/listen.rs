//! `listen` entries: an address, or an address that takes PROXY protocol in
//! from trusted load balancers. A leaf.

use std::fmt;
use std::net::SocketAddr;
use std::sync::Arc;

use serde::Deserialize;
use serde::de::{self, Deserializer, MapAccess, Visitor};

use super::cidr::{Cidr, CidrSet};

/// One address to accept TLS on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Listen {
    pub addr: SocketAddr,
    /// PROXY protocol in, when this listener sits behind a load balancer.
    pub proxy: Option<Arc<ProxyIn>>,
}

/// PROXY protocol in: every connection starts with a v1 or v2 header naming
/// the client, from a peer in `trusted`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProxyIn {
    pub trusted: CidrSet,
}

impl Listen {
    pub fn plain(addr: SocketAddr) -> Self {
        Self { addr, proxy: None }
    }
}

impl fmt::Display for Listen {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.proxy {
            None => write!(f, "{}", self.addr),
            Some(proxy) => {
                let trusted: Vec<String> = proxy.trusted.blocks().iter().map(ToString::to_string).collect();
                write!(f, "{} (PROXY protocol from {})", self.addr, trusted.join(" "))
            }
        }
    }
}

impl<'de> Deserialize<'de> for Listen {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct Entry;

        impl<'de> Visitor<'de> for Entry {
            type Value = Listen;

            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(
                    "an address \"IP:PORT\", or a table { address = \"IP:PORT\", proxy_protocol = true, trusted = [\"CIDR\", ...] }",
                )
            }

            fn visit_str<E: de::Error>(self, s: &str) -> Result<Self::Value, E> {
                s.parse::<SocketAddr>()
                    .map(Listen::plain)
                    .map_err(|e| E::custom(format!("`{s}`: {e}")))
            }

            fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<Self::Value, A::Error> {
                #[derive(Deserialize)]
                #[serde(deny_unknown_fields)]
                struct Table {
                    address: SocketAddr,
                    #[serde(default)]
                    proxy_protocol: bool,
                    trusted: Option<Vec<Cidr>>,
                }
                let table = Table::deserialize(de::value::MapAccessDeserializer::new(map))?;
                let proxy = match (table.proxy_protocol, table.trusted) {
                    (false, None) => None,
                    (false, Some(_)) => {
                        return Err(de::Error::custom("`trusted` is for proxy_protocol = true"));
                    }
                    (true, None) => {
                        return Err(de::Error::custom(
                            "proxy_protocol = true needs `trusted`: the load balancers' addresses (\"0.0.0.0/0\" and \"::/0\" trust any)",
                        ));
                    }
                    (true, Some(blocks)) if blocks.is_empty() => {
                        return Err(de::Error::custom("`trusted` is empty: no load balancer could connect"));
                    }
                    (true, Some(blocks)) => Some(Arc::new(ProxyIn {
                        trusted: CidrSet::new(blocks),
                    })),
                };
                Ok(Listen {
                    addr: table.address,
                    proxy,
                })
            }
        }

        d.deserialize_any(Entry)
    }
}
