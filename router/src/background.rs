//! The loop the router's background work shares (`resolve` looking names up,
//! `check` probing addresses): every tick, a scan of the live route table that
//! starts what is due as tasks, bounded in number, until stop. Finished tasks
//! are reaped as they end, so the bound counts only those in flight. A table
//! that gives the work nothing to do (no name endpoints, no checks) puts the
//! loop to sleep until a reload installs another: an idle router does not
//! wake for nothing.

use std::sync::Arc;
use std::time::Duration;

use tokio::task::JoinSet;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::conn::{Shared, Snapshot};

/// Every `tick` until `stop`, `scan` the current snapshot; it spawns what is
/// due into the set it is given (stopping when the set is full) and says
/// whether the table has any of its kind of work at all.
pub async fn every(
    tick: Duration,
    stop: CancellationToken,
    shared: Arc<Shared>,
    mut scan: impl FnMut(&Arc<Snapshot>, Instant, &mut Jobs) -> bool,
) {
    let mut jobs = Jobs(JoinSet::new());
    let mut installs = shared.installs();
    let mut interval = tokio::time::interval(tick);
    interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            () = stop.cancelled() => return,
            _ = interval.tick() => {}
            Some(_) = jobs.0.join_next() => continue,
        }
        installs.mark_unchanged();
        let snapshot = shared.snapshot.load_full();
        if scan(&snapshot, Instant::now(), &mut jobs) || !jobs.is_empty() {
            continue;
        }
        drop(snapshot);
        tokio::select! {
            () = stop.cancelled() => return,
            changed = installs.changed() => if changed.is_err() { return },
        }
    }
}

/// The tasks a scan started, still running.
pub struct Jobs(JoinSet<()>);

impl Jobs {
    pub fn len(&self) -> usize {
        self.0.len()
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    pub fn spawn(&mut self, job: impl Future<Output = ()> + Send + 'static) {
        self.0.spawn(job);
    }
}
