//! Per-client accounting: how many connections each client address has open
//! and how fast it opens new ones, against `[clients]` (all connections) and
//! a route's `clients` (that route's). Refused clients are closed before any
//! backend is touched.
//!
//! Clients are counted by prefix (an IPv4 address, an IPv6 /64 by default),
//! so one host cannot dodge its limit by rotating through its own subnet.
//! What is kept per prefix is bounded by `max_tracked`: a table that is full
//! forgets the prefixes that have nothing open and a full bucket (forgetting
//! them changes nothing), and if none can go, the newcomer is let through
//! uncounted (counted in `snigate_router_client_table_full_total`) rather than
//! refused: a flood from a million addresses costs a bounded table, not the
//! clients already known.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use tokio::time::Instant;

use crate::config::{ClientLimits, ClientsSettings};

/// Counts per client prefix, for one scope (all connections, or one route).
#[derive(Debug, Default)]
pub struct ClientTable {
    entries: Mutex<HashMap<u128, Arc<Entry>>>,
    /// Newcomers let through uncounted because the table was full.
    pub full: AtomicU64,
}

#[derive(Debug)]
struct Entry {
    active: AtomicU32,
    bucket: Mutex<Bucket>,
}

#[derive(Debug, Clone, Copy)]
struct Bucket {
    tokens: f64,
    at: Instant,
}

/// One connection counted against its client, until dropped.
#[derive(Debug)]
pub struct Slot(Arc<Entry>);

impl Drop for Slot {
    fn drop(&mut self) {
        self.0.active.fetch_sub(1, Ordering::Relaxed);
    }
}

/// Why a client was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// It has this many connections open already.
    Connections(u32),
    /// It opened connections faster than its rate.
    Rate,
}

impl Refusal {
    pub fn label(self) -> &'static str {
        match self {
            Refusal::Connections(_) => "client_connections",
            Refusal::Rate => "client_rate",
        }
    }
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    // Counters and instants, whole after every write.
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

/// The prefix `ip` is counted by.
pub fn key(ip: IpAddr, settings: &ClientsSettings) -> u128 {
    let (bits, prefix) = match ip {
        IpAddr::V4(v4) => (u128::from(v4.to_ipv6_mapped()), 96 + u32::from(settings.ipv4_prefix)),
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => (u128::from(v4.to_ipv6_mapped()), 96 + u32::from(settings.ipv4_prefix)),
            None => (u128::from(v6), u32::from(settings.ipv6_prefix)),
        },
    };
    let mask = u128::MAX.checked_shl(128 - prefix).unwrap_or(0);
    bits & mask
}

impl ClientTable {
    /// Count a new connection from `key` against `limits`. `Ok(None)`: the
    /// table is full and the client goes uncounted.
    pub fn admit(
        &self,
        key: u128,
        limits: &ClientLimits,
        max_tracked: usize,
        now: Instant,
    ) -> Result<Option<Slot>, Refusal> {
        let entry = {
            let mut entries = lock(&self.entries);
            match entries.get(&key) {
                Some(entry) => entry.clone(),
                None => {
                    if entries.len() >= max_tracked {
                        entries.retain(|_, e| !forgettable(e, limits, now));
                    }
                    if entries.len() >= max_tracked {
                        self.full.fetch_add(1, Ordering::Relaxed);
                        return Ok(None);
                    }
                    let entry = Arc::new(Entry {
                        active: AtomicU32::new(0),
                        bucket: Mutex::new(Bucket {
                            tokens: limits.rate.map_or(0.0, |r| r.burst),
                            at: now,
                        }),
                    });
                    entries.insert(key, entry.clone());
                    entry
                }
            }
        };
        if let Some(max) = limits.max_connections
            && entry.active.load(Ordering::Relaxed) >= max
        {
            return Err(Refusal::Connections(max));
        }
        if let Some(rate) = limits.rate {
            let mut bucket = lock(&entry.bucket);
            let elapsed = now.saturating_duration_since(bucket.at).as_secs_f64();
            bucket.tokens = (bucket.tokens + elapsed * rate.per_second).min(rate.burst);
            bucket.at = now;
            if bucket.tokens < 1.0 {
                return Err(Refusal::Rate);
            }
            bucket.tokens -= 1.0;
        }
        entry.active.fetch_add(1, Ordering::Relaxed);
        Ok(Some(Slot(entry)))
    }

    /// Prefixes tracked now.
    pub fn len(&self) -> usize {
        lock(&self.entries).len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// An entry whose loss changes nothing: no connection holds it, and its
/// bucket has refilled.
fn forgettable(entry: &Arc<Entry>, limits: &ClientLimits, now: Instant) -> bool {
    if Arc::strong_count(entry) > 1 || entry.active.load(Ordering::Relaxed) > 0 {
        return false;
    }
    match limits.rate {
        None => true,
        Some(rate) => {
            let bucket = lock(&entry.bucket);
            let elapsed = now.saturating_duration_since(bucket.at).as_secs_f64();
            bucket.tokens + elapsed * rate.per_second >= rate.burst
        }
    }
}

/// How many refused connections are logged per second; the rest are
/// counted (they always are) and summed up in one line.
const REFUSALS_LOGGED_PER_SECOND: u32 = 10;

/// Keeps a flood of refused clients from flooding the log.
#[derive(Debug)]
pub struct LogBudget {
    window: Mutex<(Instant, u32, u64)>,
}

impl Default for LogBudget {
    fn default() -> Self {
        Self {
            window: Mutex::new((Instant::now(), 0, 0)),
        }
    }
}

impl LogBudget {
    /// Whether this refusal may be logged. When a second with suppressed
    /// lines is over, says how many.
    pub fn allow(&self, now: Instant) -> bool {
        let mut window = lock(&self.window);
        let (start, logged, suppressed) = &mut *window;
        if now.saturating_duration_since(*start) >= Duration::from_secs(1) {
            if *suppressed > 0 {
                tracing::warn!(
                    target: "snigate_router::access",
                    suppressed = *suppressed,
                    "refused connections not logged (more than {REFUSALS_LOGGED_PER_SECOND} a second); all are counted"
                );
            }
            *window = (now, 0, 0);
            let (_, logged, _) = &mut *window;
            *logged = 1;
            return true;
        }
        if *logged < REFUSALS_LOGGED_PER_SECOND {
            *logged += 1;
            return true;
        }
        *suppressed += 1;
        false
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Rate;

    fn settings() -> ClientsSettings {
        ClientsSettings::default()
    }

    #[test]
    fn clients_are_counted_by_prefix() {
        let s = settings();
        let k = |ip: &str| key(ip.parse().unwrap(), &s);
        assert_ne!(k("10.0.0.1"), k("10.0.0.2"));
        assert_eq!(k("10.0.0.1"), k("::ffff:10.0.0.1"));
        assert_eq!(k("2001:db8::1"), k("2001:db8::ffff:1"), "one /64");
        assert_ne!(k("2001:db8::1"), k("2001:db8:0:1::1"));
        let wide = ClientsSettings {
            ipv4_prefix: 24,
            ipv6_prefix: 0,
            ..settings()
        };
        assert_eq!(
            key("10.0.0.1".parse().unwrap(), &wide),
            key("10.0.0.200".parse().unwrap(), &wide)
        );
        assert_eq!(
            key("2001:db8::1".parse().unwrap(), &wide),
            key("fd00::1".parse().unwrap(), &wide)
        );
    }

    #[test]
    fn concurrent_connections_and_rate_are_limited_per_client() {
        let table = ClientTable::default();
        let limits = ClientLimits {
            max_connections: Some(2),
            rate: Some(Rate {
                per_second: 2.0,
                burst: 3.0,
            }),
        };
        let t0 = Instant::now();
        let a = table.admit(1, &limits, 10, t0).unwrap();
        let b = table.admit(1, &limits, 10, t0).unwrap();
        assert_eq!(table.admit(1, &limits, 10, t0).unwrap_err(), Refusal::Connections(2));
        assert!(
            table.admit(2, &limits, 10, t0).unwrap().is_some(),
            "another client is not affected"
        );
        drop(a);
        // The third token of the burst.
        let c = table.admit(1, &limits, 10, t0).unwrap();
        drop((b, c));
        assert_eq!(table.admit(1, &limits, 10, t0).unwrap_err(), Refusal::Rate);
        // Half a second later, one token is back.
        let t1 = t0 + Duration::from_millis(500);
        assert!(table.admit(1, &limits, 10, t1).unwrap().is_some());
        assert_eq!(table.admit(1, &limits, 10, t1).unwrap_err(), Refusal::Rate);
    }

    #[test]
    fn a_full_table_forgets_idle_clients_and_lets_newcomers_through_uncounted() {
        let table = ClientTable::default();
        let limits = ClientLimits {
            max_connections: Some(1),
            rate: None,
        };
        let now = Instant::now();
        let held: Vec<Slot> = (0..4)
            .map(|k| table.admit(k, &limits, 4, now).unwrap().unwrap())
            .collect();
        // Full of clients with connections open: a newcomer is not refused.
        assert!(table.admit(99, &limits, 4, now).unwrap().is_none());
        assert_eq!(table.full.load(Ordering::Relaxed), 1);
        drop(held);
        // Idle ones are forgotten to make room.
        for k in 100..1000 {
            drop(table.admit(k, &limits, 4, now).unwrap().unwrap());
        }
        assert!(table.len() <= 4);
    }

    #[test]
    fn refusals_are_logged_ten_a_second() {
        let budget = LogBudget::default();
        let t0 = Instant::now();
        let logged = (0..100).filter(|_| budget.allow(t0)).count();
        assert_eq!(logged, 10);
        assert!(budget.allow(t0 + Duration::from_secs(1)));
    }
}
