//! The shared parts of the memory budget: what every session draws on at once.
//! The numbers come from [`crate::config::Limits`]; what each bound protects is
//! in docs/broker.md ("Memory budget").

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

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

    /// Take `bytes` whether or not they fit: for memory already in use (a
    /// connection's buffers), which new messages then have to wait for.
    pub fn force_take(&self, bytes: usize) {
        self.used.fetch_add(bytes, Ordering::AcqRel);
        self.gauge.add(i64::try_from(bytes).unwrap_or(i64::MAX));
    }

    /// Whether all of it is taken (or more, by [`Self::force_take`]).
    pub fn is_spent(&self) -> bool {
        self.used() >= self.limit
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
        assert!(budget.is_spent());
        // Memory in use is counted even past the limit, and then nothing new
        // fits until it is given back.
        budget.give_back(50);
        budget.force_take(70);
        assert!(budget.is_spent() && !budget.try_take(1));
        assert_eq!(budget.used(), 120);
        budget.give_back(70);
        assert!(budget.try_take(20));
    }
}
