//! What the status pages of both components are made of, beside their own
//! figures: the recent refusals, the last reload's outcome, and the counters'
//! totals read back from the component's registry (so that a page and
//! `/metrics` never disagree: the page keeps no count of its own).
//!
//! Everything a client sent (a server name, a client id) is cut to
//! [`MAX_TEXT`] characters here, where it enters, and escaped where it is
//! written ([`crate::page`]).

use std::collections::{BTreeMap, VecDeque};
use std::net::SocketAddr;
use std::sync::{Mutex, PoisonError};
use std::time::SystemTime;

use prometheus::Registry;
use prometheus::proto::MetricType;
use serde::Serialize;

/// The most rows a page or its JSON shows of any list: the busiest, with the
/// list's total beside them.
pub const ROWS: usize = 100;

/// How many refusals are kept for the pages.
pub const RECENT: usize = 100;

/// The longest text from outside that a page shows, in characters.
pub const MAX_TEXT: usize = 200;

/// Seconds since the Unix epoch.
pub fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// `text` cut to `max` characters (never inside one), with `…` when cut.
pub fn clip(text: &str, max: usize) -> String {
    match text.char_indices().nth(max) {
        None => text.to_owned(),
        Some((end, _)) => format!("{}…", &text[..end]),
    }
}

/// One connection refused: who, what it asked for, why.
#[derive(Debug, Clone, Serialize)]
pub struct Refusal {
    /// Unix seconds.
    pub at: u64,
    pub peer: String,
    /// What the client named: a server name (router), a client id (broker).
    pub subject: Option<String>,
    /// The metric label it is counted under.
    pub reason: &'static str,
    pub detail: String,
}

impl Refusal {
    pub fn new(peer: SocketAddr, subject: Option<&str>, reason: &'static str, detail: &str) -> Self {
        Self {
            at: unix_now(),
            peer: peer.to_string(),
            subject: subject.map(|s| clip(s, MAX_TEXT)),
            reason,
            detail: clip(detail, 2 * MAX_TEXT),
        }
    }
}

/// The last [`RECENT`] refusals. A flood costs one short lock each and
/// never more memory.
#[derive(Debug, Default)]
pub struct Refusals(Mutex<VecDeque<Refusal>>);

impl Refusals {
    pub fn record(&self, refusal: Refusal) {
        let mut recent = self.0.lock().unwrap_or_else(PoisonError::into_inner);
        if recent.len() == RECENT {
            recent.pop_front();
        }
        recent.push_back(refusal);
    }

    /// Newest first.
    pub fn recent(&self) -> Vec<Refusal> {
        let recent = self.0.lock().unwrap_or_else(PoisonError::into_inner);
        recent.iter().rev().cloned().collect()
    }
}

/// A reload: when, what set it off, and whether it was applied.
#[derive(Debug, Clone, Serialize)]
pub struct Reload {
    pub at: u64,
    pub trigger: &'static str,
    pub applied: bool,
    /// Why it was refused.
    pub error: Option<String>,
}

/// When the settings in use were loaded, and the last reload attempt.
#[derive(Debug, Clone, Serialize)]
pub struct ReloadState {
    pub loaded_at: u64,
    pub last: Option<Reload>,
}

#[derive(Debug)]
pub struct Reloads(Mutex<ReloadState>);

impl Default for Reloads {
    fn default() -> Self {
        Self(Mutex::new(ReloadState {
            loaded_at: unix_now(),
            last: None,
        }))
    }
}

impl Reloads {
    pub fn applied(&self, trigger: &'static str) {
        let mut state = self.0.lock().unwrap_or_else(PoisonError::into_inner);
        let at = unix_now();
        state.loaded_at = at;
        state.last = Some(Reload {
            at,
            trigger,
            applied: true,
            error: None,
        });
    }

    pub fn refused(&self, trigger: &'static str, error: &str) {
        let mut state = self.0.lock().unwrap_or_else(PoisonError::into_inner);
        state.last = Some(Reload {
            at: unix_now(),
            trigger,
            applied: false,
            error: Some(clip(error, 10 * MAX_TEXT)),
        });
    }

    pub fn state(&self) -> ReloadState {
        self.0.lock().unwrap_or_else(PoisonError::into_inner).clone()
    }
}

/// One counter series' value.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct Total {
    pub metric: String,
    /// Its labels, `name="value"` joined by commas; empty for none.
    pub labels: String,
    pub value: u64,
}

/// The counters among `families` in `registry`: the [`ROWS`] largest series
/// that are not zero, largest first, and how many there are (a limit's
/// counter has a series per route).
pub fn totals(registry: &Registry, families: &[&str]) -> Bounded<Total> {
    let totals: Vec<Total> = registry
        .gather()
        .iter()
        .filter(|f| f.get_field_type() == MetricType::COUNTER && families.contains(&f.name()))
        .flat_map(|family| {
            family.get_metric().iter().filter_map(|m| {
                // Counters are integers here (IntCounter); the float is exact.
                #[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss)]
                let value = m.get_counter().get_value() as u64;
                let labels: BTreeMap<&str, &str> = m.get_label().iter().map(|l| (l.name(), l.value())).collect();
                let labels: Vec<String> = labels.iter().map(|(k, v)| format!("{k}=\"{v}\"")).collect();
                (value > 0).then(|| Total {
                    metric: family.name().to_owned(),
                    labels: labels.join(","),
                    value,
                })
            })
        })
        .collect();
    Bounded::busiest(totals, |t| t.value)
}

/// At most [`ROWS`] of a list, with how many there were.
#[derive(Debug, Serialize)]
pub struct Bounded<T> {
    pub total: usize,
    pub rows: Vec<T>,
}

impl<T> Bounded<T> {
    /// The [`ROWS`] largest of `items` by `key`, largest first.
    pub fn busiest<K: Ord>(mut items: Vec<T>, key: impl Fn(&T) -> K) -> Self {
        let total = items.len();
        items.sort_by_key(|item| std::cmp::Reverse(key(item)));
        items.truncate(ROWS);
        Self { total, rows: items }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn clip_cuts_between_characters() {
        assert_eq!(clip("abc", 3), "abc");
        assert_eq!(clip("ééé", 2), "éé…");
        assert_eq!(clip("", 0), "");
    }

    #[test]
    fn refusals_keep_the_newest() {
        let refusals = Refusals::default();
        let peer: SocketAddr = "127.0.0.1:1".parse().unwrap();
        for i in 0..RECENT + 5 {
            refusals.record(Refusal::new(peer, Some(&i.to_string()), "r", "d"));
        }
        let recent = refusals.recent();
        assert_eq!(recent.len(), RECENT);
        assert_eq!(recent[0].subject.as_deref(), Some("104"));
        assert_eq!(recent[RECENT - 1].subject.as_deref(), Some("5"));
    }

    #[test]
    fn totals_read_the_registry() {
        let registry = Registry::new();
        let counter = prometheus::IntCounterVec::new(prometheus::Opts::new("a_total", "a"), &["reason"]).unwrap();
        registry.register(Box::new(counter.clone())).unwrap();
        counter.with_label_values(&["x"]).inc();
        counter.with_label_values(&["y"]).inc_by(3);
        counter.with_label_values(&["z"]);
        let totals = totals(&registry, &["a_total", "b_total"]);
        assert_eq!(
            totals
                .rows
                .iter()
                .map(|t| (t.labels.as_str(), t.value))
                .collect::<Vec<_>>(),
            [("reason=\"y\"", 3), ("reason=\"x\"", 1)]
        );
    }

    #[test]
    fn busiest_bounds_and_orders() {
        let list = Bounded::busiest((0..250).collect(), |n: &i32| *n);
        assert_eq!(list.total, 250);
        assert_eq!(list.rows.len(), ROWS);
        assert_eq!(list.rows[0], 249);
    }
}
