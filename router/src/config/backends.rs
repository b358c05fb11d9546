//! How a route uses its backends: the endpoints with their weights, the
//! balancing algorithm, the connect budget and passive health. The schema and
//! its validation; `pool` does the work. A leaf.

use std::fmt;
use std::time::Duration;

use serde::Deserialize;
use serde::de::{self, Deserializer, MapAccess, Visitor};

use super::names::Endpoint;

/// HAProxy's range; 0 (HAProxy's "drain") is not offered: remove the endpoint.
pub const MAX_WEIGHT: u32 = 256;
/// More retries than this only make a client wait: the deadline caps them anyway.
pub const MAX_CONNECT_RETRIES: u32 = 32;

/// How a route spreads new connections over its endpoints.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Balance {
    /// Each endpoint in turn, as often as its weight says.
    #[default]
    RoundRobin,
    /// The address with the fewest open connections for its share of weight.
    LeastConnections,
    /// Two addresses drawn at random (by weight), the less loaded one taken:
    /// HAProxy's `random(2)`, the power of two choices.
    Random,
    /// A hash of the client's address: one client keeps its backend while the
    /// set of addresses stays the same (OpenShift's default for passthrough
    /// routes).
    Source,
}

impl Balance {
    pub fn label(self) -> &'static str {
        match self {
            Balance::RoundRobin => "round-robin",
            Balance::LeastConnections => "least-connections",
            Balance::Random => "random",
            Balance::Source => "source",
        }
    }
}

/// `health` (in `[defaults]` or a route): passive health. Every key is
/// optional; a route's keys override `[defaults]`, which override the
/// built-in values.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HealthFile {
    /// Connect failures in a row that eject an address; 0 never ejects.
    pub failures: Option<u32>,
    /// How long the first ejection lasts; each further one in a row doubles it.
    #[serde(default, deserialize_with = "super::checked::some_duration")]
    pub backoff: Option<Duration>,
    /// The longest an ejection lasts.
    #[serde(default, deserialize_with = "super::checked::some_duration")]
    pub max_backoff: Option<Duration>,
    /// Active checks: a TCP connect to every address this often. Off unless set.
    #[serde(default, deserialize_with = "super::checked::some_duration")]
    pub check_interval: Option<Duration>,
    /// How long one check may take. Default: the interval, at most 5 s.
    #[serde(default, deserialize_with = "super::checked::some_duration")]
    pub check_timeout: Option<Duration>,
}

impl HealthFile {
    /// `self`'s keys, then `under`'s for those it leaves out.
    pub fn over(self, under: HealthFile) -> HealthFile {
        HealthFile {
            failures: self.failures.or(under.failures),
            backoff: self.backoff.or(under.backoff),
            max_backoff: self.max_backoff.or(under.max_backoff),
            check_interval: self.check_interval.or(under.check_interval),
            check_timeout: self.check_timeout.or(under.check_timeout),
        }
    }

    /// With the built-in values for what is left out, checked.
    pub fn resolve(self) -> Result<HealthSettings, String> {
        let health = HealthSettings {
            failures: self.failures.unwrap_or(HealthSettings::DEFAULT.failures),
            backoff: self.backoff.unwrap_or(HealthSettings::DEFAULT.backoff),
            max_backoff: self.max_backoff.unwrap_or(HealthSettings::DEFAULT.max_backoff),
            check: self.check_interval.map(|interval| ActiveCheck {
                interval,
                timeout: self.check_timeout.unwrap_or(interval.min(ActiveCheck::DEFAULT_TIMEOUT)),
            }),
        };
        if self.check_timeout.is_some() && self.check_interval.is_none() {
            return Err("check_timeout is set but check_interval is not: checks are off".to_owned());
        }
        if health.max_backoff < health.backoff {
            return Err(format!(
                "max_backoff ({}) is shorter than backoff ({})",
                humantime::format_duration(health.max_backoff),
                humantime::format_duration(health.backoff)
            ));
        }
        Ok(health)
    }
}

/// Health, validated: an address whose connects (or checks) fail `failures`
/// times in a row is skipped for `backoff`, doubled for each ejection in a row
/// up to `max_backoff`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HealthSettings {
    pub failures: u32,
    pub backoff: Duration,
    pub max_backoff: Duration,
    /// Active checks, when on.
    pub check: Option<ActiveCheck>,
}

/// Active checks: a TCP connect to each address every `interval`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ActiveCheck {
    pub interval: Duration,
    pub timeout: Duration,
}

impl ActiveCheck {
    pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(5);
}

impl HealthSettings {
    /// Three in a row, as HAProxy's `fall`; a first back-off short enough for
    /// a restarting pod, growing to Envoy's `max_ejection_time`.
    pub const DEFAULT: HealthSettings = HealthSettings {
        failures: 3,
        backoff: Duration::from_secs(10),
        max_backoff: Duration::from_secs(300),
        check: None,
    };

    /// How long the `n`th ejection in a row (from 0) lasts.
    pub fn backoff_for(&self, n: u32) -> Duration {
        self.backoff
            .checked_mul(1 << n.min(20))
            .map_or(self.max_backoff, |d| d.min(self.max_backoff))
    }
}

/// One entry of a route's `endpoints`: `"HOST:PORT"`, or
/// `{ address = "HOST:PORT", weight = N }`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WeightedEndpoint {
    pub endpoint: Endpoint,
    /// 1 to [`MAX_WEIGHT`]; an endpoint's share of new connections, split
    /// evenly over the addresses its name resolves to.
    pub weight: u32,
}

impl From<Endpoint> for WeightedEndpoint {
    fn from(endpoint: Endpoint) -> Self {
        Self { endpoint, weight: 1 }
    }
}

impl fmt::Display for WeightedEndpoint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.weight {
            1 => write!(f, "{}", self.endpoint),
            weight => write!(f, "{} (weight {weight})", self.endpoint),
        }
    }
}

impl<'de> Deserialize<'de> for WeightedEndpoint {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct Entry;

        impl<'de> Visitor<'de> for Entry {
            type Value = WeightedEndpoint;

            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("an endpoint \"HOST:PORT\", or a table { address = \"HOST:PORT\", weight = N }")
            }

            fn visit_str<E: de::Error>(self, s: &str) -> Result<Self::Value, E> {
                s.parse::<Endpoint>().map(WeightedEndpoint::from).map_err(E::custom)
            }

            fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<Self::Value, A::Error> {
                #[derive(Deserialize)]
                #[serde(deny_unknown_fields)]
                struct Table {
                    address: Endpoint,
                    weight: Option<u32>,
                }
                let table = Table::deserialize(de::value::MapAccessDeserializer::new(map))?;
                let weight = table.weight.unwrap_or(1);
                if !(1..=MAX_WEIGHT).contains(&weight) {
                    return Err(de::Error::custom(format!(
                        "weight {weight} is out of range 1..={MAX_WEIGHT}"
                    )));
                }
                Ok(WeightedEndpoint {
                    endpoint: table.address,
                    weight,
                })
            }
        }

        d.deserialize_any(Entry)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_up_to_its_cap() {
        let health = HealthSettings {
            failures: 3,
            backoff: Duration::from_secs(10),
            max_backoff: Duration::from_secs(60),
            check: None,
        };
        let seconds: Vec<u64> = (0..5).map(|n| health.backoff_for(n).as_secs()).collect();
        assert_eq!(seconds, [10, 20, 40, 60, 60]);
        assert_eq!(health.backoff_for(u32::MAX), Duration::from_secs(60));
    }

    #[test]
    fn route_health_keys_override_the_defaults_key_by_key() {
        let defaults = HealthFile {
            failures: Some(5),
            backoff: Some(Duration::from_secs(1)),
            ..HealthFile::default()
        };
        let route = HealthFile {
            failures: Some(0),
            ..HealthFile::default()
        };
        let health = route.over(defaults).resolve().unwrap();
        assert_eq!(health.failures, 0);
        assert_eq!(health.backoff, Duration::from_secs(1));
        assert_eq!(health.max_backoff, HealthSettings::DEFAULT.max_backoff);
        let shorter = HealthFile {
            max_backoff: Some(Duration::from_secs(1)),
            ..HealthFile::default()
        };
        assert!(shorter.resolve().unwrap_err().contains("shorter than backoff"));
    }
}
