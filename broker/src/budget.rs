//! The shared parts of the memory budget: what every session draws on at once.
//! The numbers come from [`crate::config::Limits`]; what each bound protects is
//! in docs/broker.md ("Memory budget").

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use prometheus::IntGauge;

/// Bytes that all sessions' outbound queues may hold together. A session takes
/// from it for each message it queues and gives back as the message is written.
#[derive(Debug)]
pub struct Budget {
    limit: usize,
    used: AtomicUsize,
    gauge: IntGauge,
}

impl Budget {
    pub fn new(limit: usize, gauge: IntGauge) -> Self {
        Self {
            limit,
            used: AtomicUsize::new(0),
            gauge,
        }
    }

    /// Take `bytes` if they fit.
    pub fn try_take(&self, bytes: usize) -> bool {
        let taken = self
            .used
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |used| {
                used.checked_add(bytes).filter(|&total| total <= self.limit)
            })
            .is_ok();
        if taken {
            self.gauge.add(i64::try_from(bytes).unwrap_or(i64::MAX));
        }
        taken
    }

    /// Bytes taken now.
    pub fn used(&self) -> usize {
        self.used.load(Ordering::Acquire)
    }

    pub fn give_back(&self, bytes: usize) {
        let _ = self.used.fetch_update(Ordering::AcqRel, Ordering::Acquire, |used| {
            Some(used.saturating_sub(bytes))
        });
        self.gauge.sub(i64::try_from(bytes).unwrap_or(i64::MAX));
    }
}

/// Bytes taken from a [`Budget`], given back when dropped, whatever the path.
#[derive(Debug)]
pub struct Charge {
    budget: Arc<Budget>,
    bytes: usize,
}

impl Charge {
    /// Take `bytes` from `budget` if they fit.
    pub fn take(budget: &Arc<Budget>, bytes: usize) -> Option<Self> {
        budget.try_take(bytes).then(|| Self {
            budget: budget.clone(),
            bytes,
        })
    }

    /// Nothing yet, to grow.
    pub fn empty(budget: &Arc<Budget>) -> Self {
        Self {
            budget: budget.clone(),
            bytes: 0,
        }
    }

    /// Take `bytes` more, if they fit.
    pub fn grow(&mut self, bytes: usize) -> bool {
        let taken = self.budget.try_take(bytes);
        if taken {
            self.bytes += bytes;
        }
        taken
    }

    /// Give `bytes` back early (at most what is held).
    pub fn shrink(&mut self, bytes: usize) {
        let bytes = bytes.min(self.bytes);
        self.budget.give_back(bytes);
        self.bytes -= bytes;
    }

    pub fn bytes(&self) -> usize {
        self.bytes
    }
}

impl Drop for Charge {
    fn drop(&mut self) {
        self.budget.give_back(self.bytes);
    }
}

/// The retained messages, by topic and size, as publishes pass: rumqttd keeps
/// the messages, this keeps their bytes within `max_bytes` by letting a
/// publish keep its retain flag only while it fits.
#[derive(Debug)]
pub struct Retained {
    topics: Mutex<HashMap<Bytes, usize>>,
    bytes: AtomicUsize,
    max_bytes: usize,
    count_gauge: IntGauge,
    bytes_gauge: IntGauge,
}

impl Retained {
    pub fn new(max_bytes: usize, count_gauge: IntGauge, bytes_gauge: IntGauge) -> Self {
        Self {
            topics: Mutex::new(HashMap::new()),
            bytes: AtomicUsize::new(0),
            max_bytes,
            count_gauge,
            bytes_gauge,
        }
    }

    /// A retained publish of `payload_len` bytes to `topic`; an empty payload
    /// clears it (MQTT §3.3.1.3). Returns whether it may be retained: false
    /// when it would take retained messages over the budget; the caller then
    /// passes it on unretained, and the topic keeps its previous message, as
    /// the router does.
    pub fn admit(&self, topic: &Bytes, payload_len: usize) -> bool {
        let mut topics = self.topics.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        let previous = topics.get(topic).copied().unwrap_or(0);
        let mut bytes = self.bytes.load(Ordering::Acquire);
        let size = topic.len() + payload_len;
        let admitted = payload_len == 0 || bytes - previous + size <= self.max_bytes;
        if admitted {
            bytes -= previous;
            topics.remove(topic);
            if payload_len > 0 {
                topics.insert(topic.clone(), size);
                bytes += size;
            }
        }
        self.bytes.store(bytes, Ordering::Release);
        self.count_gauge.set(i64::try_from(topics.len()).unwrap_or(i64::MAX));
        self.bytes_gauge.set(i64::try_from(bytes).unwrap_or(i64::MAX));
        admitted
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn gauge(name: &str) -> IntGauge {
        IntGauge::new(name, "test").unwrap()
    }

    #[test]
    fn the_queue_budget_is_shared_and_given_back() {
        let budget = Budget::new(100, gauge("q"));
        assert!(budget.try_take(60));
        assert!(!budget.try_take(50), "over the limit");
        assert!(budget.try_take(40));
        budget.give_back(60);
        assert!(budget.try_take(60));
        assert_eq!(budget.gauge.get(), 100);
    }

    #[test]
    fn retained_bytes_stay_within_the_budget() {
        let retained = Retained::new(20, gauge("c"), gauge("b"));
        let topic = Bytes::from_static(b"t/1");
        assert!(retained.admit(&topic, 10));
        assert!(!retained.admit(&Bytes::from_static(b"t/2"), 10), "3 + 10 + 3 + 10 > 20");
        assert!(retained.admit(&topic, 15), "a replacement frees its predecessor");
        assert!(retained.admit(&topic, 0), "clearing is always allowed");
        assert_eq!(retained.count_gauge.get(), 0);
        assert!(retained.admit(&Bytes::from_static(b"t/2"), 10));
    }
}
