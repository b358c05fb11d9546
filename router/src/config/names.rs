//! Names in the configuration: the host patterns routes answer for and the
//! endpoints they connect to. Pure parsing and validation, a leaf.

use std::fmt;
use std::net::{IpAddr, SocketAddr};
use std::str::FromStr;

use serde::Deserialize;

/// RFC 1035 limits, applied to configured host names as to SNI.
const MAX_HOSTNAME_LEN: usize = 253;
const MAX_LABEL_LEN: usize = 63;

// === host patterns ===

/// A host a route answers for: an exact name, or `*.suffix`, which matches exactly
/// one more label (`*.apps.example.com` matches `a.apps.example.com`, not
/// `a.b.apps.example.com`: OpenShift's Subdomain wildcard policy). Stored
/// lower-cased and without a trailing dot.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Deserialize)]
#[serde(try_from = "String")]
pub enum HostPattern {
    Exact(String),
    /// The suffix after `*.`.
    Wildcard(String),
}

impl FromStr for HostPattern {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        // One trailing dot (the root) is dropped, as for SNI; more is an empty label.
        let lower = s.strip_suffix('.').unwrap_or(s).to_ascii_lowercase();
        if lower == "*" {
            return Err("`*` is not a host pattern: give the route `default = true` (or use --default-route)".into());
        }
        let (wildcard, name) = match lower.strip_prefix("*.") {
            Some(suffix) => (true, suffix),
            None => (false, lower.as_str()),
        };
        validate_hostname(name).map_err(|why| format!("`{s}` is not a valid host pattern: {why}"))?;
        Ok(if wildcard {
            Self::Wildcard(name.to_owned())
        } else {
            Self::Exact(name.to_owned())
        })
    }
}

impl TryFrom<String> for HostPattern {
    type Error = String;

    fn try_from(s: String) -> Result<Self, Self::Error> {
        s.parse()
    }
}

impl fmt::Display for HostPattern {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Exact(name) => f.write_str(name),
            Self::Wildcard(suffix) => write!(f, "*.{suffix}"),
        }
    }
}

fn validate_hostname(name: &str) -> Result<(), &'static str> {
    if name.is_empty() {
        return Err("empty name");
    }
    if name.len() > MAX_HOSTNAME_LEN {
        return Err("longer than 253 characters");
    }
    for label in name.split('.') {
        if label.is_empty() {
            return Err("empty label");
        }
        if label.len() > MAX_LABEL_LEN {
            return Err("a label is longer than 63 characters");
        }
        if label.contains('*') {
            return Err("`*` may only stand alone as the first label");
        }
        if !label
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        {
            return Err("only letters, digits, `-` and `_` may appear in a label");
        }
    }
    Ok(())
}

// === endpoints ===

/// Where a route's connections go: an address, or a DNS name resolved at each
/// connect (so a Kubernetes Service name follows its ClusterIP).
#[derive(Debug, Clone, PartialEq, Eq, Hash, Deserialize)]
#[serde(try_from = "String")]
pub enum Endpoint {
    Addr(SocketAddr),
    Name { host: String, port: u16 },
}

impl FromStr for Endpoint {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let bad =
            |why: &str| format!("`{s}` is not a valid endpoint: {why} (expected HOST:PORT, IPV4:PORT or [IPV6]:PORT)");
        if let Ok(addr) = s.parse::<SocketAddr>() {
            if addr.port() == 0 {
                return Err(bad("port 0"));
            }
            return Ok(Self::Addr(addr));
        }
        let (host, port) = s.rsplit_once(':').ok_or_else(|| bad("no port"))?;
        let port: u16 = port
            .parse()
            .map_err(|_| bad("the port is not a number from 1 to 65535"))?;
        if port == 0 {
            return Err(bad("port 0"));
        }
        if host.parse::<IpAddr>().is_ok() || host.contains(':') {
            return Err(bad("an IPv6 address needs brackets"));
        }
        let host = host.strip_suffix('.').unwrap_or(host).to_ascii_lowercase();
        validate_hostname(&host).map_err(bad)?;
        Ok(Self::Name { host, port })
    }
}

impl TryFrom<String> for Endpoint {
    type Error = String;

    fn try_from(s: String) -> Result<Self, Self::Error> {
        s.parse()
    }
}

impl fmt::Display for Endpoint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Addr(addr) => write!(f, "{addr}"),
            Self::Name { host, port } => write!(f, "{host}:{port}"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn host_patterns_normalise_and_validate() {
        assert_eq!(
            "Broker.Example.COM.".parse(),
            Ok(HostPattern::Exact("broker.example.com".into()))
        );
        assert_eq!("*.Apps.Test".parse(), Ok(HostPattern::Wildcard("apps.test".into())));
        for bad in ["", "*", "a..b", "*.*.b", "a.*.b", "x*.b", "a b", "*.", &"a".repeat(64)] {
            assert!(bad.parse::<HostPattern>().is_err(), "{bad:?} should be refused");
        }
    }

    #[test]
    fn endpoints_parse() {
        assert_eq!(
            "127.0.0.1:8883".parse(),
            Ok(Endpoint::Addr("127.0.0.1:8883".parse().unwrap()))
        );
        assert_eq!("[::1]:8883".parse(), Ok(Endpoint::Addr("[::1]:8883".parse().unwrap())));
        assert_eq!(
            "Broker.svc.cluster.local:8883".parse(),
            Ok(Endpoint::Name {
                host: "broker.svc.cluster.local".into(),
                port: 8883
            })
        );
        for bad in [
            "broker",
            "broker:",
            "broker:0",
            "127.0.0.1:0",
            "broker:70000",
            "::1:8883",
            "a b:1",
            "a..:1",
        ] {
            assert!(bad.parse::<Endpoint>().is_err(), "{bad:?} should be refused");
        }
    }
}
