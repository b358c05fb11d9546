//! What of the memory budget is in use, part by part (docs/broker.md,
//! "Memory budget"): read from the parts themselves when asked, for the
//! status page and for `snigate_broker_memory_budget_used_ratio`, which the
//! "budget nearly spent" alert reads.

use std::sync::{Arc, Mutex, PoisonError};

use prometheus::core::{Collector, Desc};
use prometheus::proto::MetricFamily;
use prometheus::{GaugeVec, Opts};
use serde::Serialize;

use crate::Shared;

/// One part of the budget.
#[derive(Debug, Serialize)]
pub struct Part {
    /// The `part` label.
    pub part: &'static str,
    pub used: u64,
    pub limit: u64,
    /// `bytes`, or `connections`.
    pub unit: &'static str,
}

impl Part {
    /// `used` over `limit`; 0 for a part with no room at all.
    pub fn ratio(&self) -> f64 {
        // A ratio for display and alerting: the precision lost above 2^52 does not matter.
        #[allow(clippy::cast_precision_loss)]
        if self.limit == 0 {
            0.0
        } else {
            self.used as f64 / self.limit as f64
        }
    }
}

fn as_u64(n: usize) -> u64 {
    u64::try_from(n).unwrap_or(u64::MAX)
}

/// Every part's use now.
pub fn parts(shared: &Shared) -> Vec<Part> {
    let limits = &shared.settings.limits;
    let index = shared.registry.index_share();
    let retained = shared.registry.figures().retained_bytes;
    let slots_free = as_u64(shared.connection_slots.available_permits());
    let memory_free = as_u64(shared.connection_memory.available_permits()) << 10;
    let bytes = |part, used, limit| Part {
        part,
        used,
        limit,
        unit: "bytes",
    };
    vec![
        Part {
            part: "connections",
            used: as_u64(limits.max_connections).saturating_sub(slots_free),
            limit: as_u64(limits.max_connections),
            unit: "connections",
        },
        bytes(
            "connection_buffers",
            limits.connection_memory.saturating_sub(memory_free),
            limits.connection_memory,
        ),
        bytes(
            "queues",
            as_u64(shared.queue_budget.used()),
            as_u64(limits.queued_bytes_total),
        ),
        bytes("sessions", as_u64(index.used), as_u64(index.limit)),
        bytes("retained", as_u64(retained), as_u64(limits.max_retained_bytes)),
    ]
}

/// `snigate_broker_memory_budget_used_ratio{part}`, filled at each scrape.
pub struct BudgetMetrics {
    shared: Arc<Shared>,
    used: GaugeVec,
    /// One scrape at a time: each refills the vector.
    scraping: Mutex<()>,
}

impl BudgetMetrics {
    pub fn new(shared: Arc<Shared>) -> prometheus::Result<Self> {
        Ok(Self {
            shared,
            used: GaugeVec::new(
                Opts::new(
                    "snigate_broker_memory_budget_used_ratio",
                    "What of each part of the memory budget is in use, 0 to 1, by part (connections, \
                     connection_buffers, queues, sessions, retained).",
                ),
                &["part"],
            )?,
            scraping: Mutex::new(()),
        })
    }
}

impl Collector for BudgetMetrics {
    fn desc(&self) -> Vec<&Desc> {
        self.used.desc()
    }

    fn collect(&self) -> Vec<MetricFamily> {
        let _one = self.scraping.lock().unwrap_or_else(PoisonError::into_inner);
        for part in parts(&self.shared) {
            self.used.with_label_values(&[part.part]).set(part.ratio());
        }
        self.used.collect()
    }
}
