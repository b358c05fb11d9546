//! Wills waiting for their Will Delay Interval (MQTT 5 §3.1.3.2.2): a
//! client whose connection ended uncleanly, on a session that outlives it,
//! asked for its will to wait. It goes when the delay runs out or the
//! session expires, whichever is first, and not at all when the client
//! connects again first ([MQTT-3.1.3-9]), taking its session up or not (as
//! Mosquitto reads it: the client is back).
//!
//! Kept here by client id rather than in each session, which would hold room
//! for one in every idle client. Each will holds its bytes in the queues'
//! share of the budget ([`Charge`]) until it goes or is dropped.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Instant;

use rumqttd::protocol::{Publish, PublishProperties};

use crate::Shared;
use crate::budget::Charge;

/// A will to publish, and who it is from (for the ACL of when it goes).
#[derive(Debug)]
pub struct Will {
    pub publish: Publish,
    pub properties: Option<PublishProperties>,
    pub user: Option<Arc<str>>,
    pub client_id: Arc<str>,
    /// Its bytes in the budget, given back when it is dropped.
    pub charge: Charge,
}

/// See the module's documentation.
#[derive(Debug, Default)]
pub struct DelayedWills {
    pending: Mutex<HashMap<Arc<str>, (Instant, Will)>>,
}

impl DelayedWills {
    // A panic under the lock leaves the map whole (its operations complete
    // or leave it as it was).
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<Arc<str>, (Instant, Will)>> {
        self.pending.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Hold `will` until `due`. A client has one session and so at most one
    /// will waiting: a later one replaces it.
    pub fn delay(&self, will: Will, due: Instant) {
        self.lock().insert(will.client_id.clone(), (due, will));
    }

    /// A connection with `client_id` is accepted: its waiting will, if any,
    /// which the caller drops ([MQTT-3.1.3-9]).
    pub fn take(&self, client_id: &str) -> Option<Will> {
        self.lock().remove(client_id).map(|(_, will)| will)
    }

    /// The wills due at `now`, taken out.
    pub fn due(&self, now: Instant) -> Vec<Will> {
        let mut pending = self.lock();
        let due: Vec<Arc<str>> = pending
            .iter()
            .filter(|(_, (at, _))| *at <= now)
            .map(|(client_id, _)| client_id.clone())
            .collect();
        due.iter()
            .filter_map(|id| pending.remove(id))
            .map(|(_, will)| will)
            .collect()
    }

    /// Wills waiting.
    pub fn len(&self) -> usize {
        self.lock().len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// Publish `will` now, if the ACL of now lets its client write its topic.
pub fn publish(shared: &Shared, will: Will) {
    let Will {
        publish,
        properties,
        user,
        client_id,
        charge: _charge,
    } = will;
    if !crate::route::may_write(shared, user.as_deref(), &client_id, &publish.topic) {
        shared.metrics.acl_denials.with_label_values(&["will"]).inc();
        tracing::info!(client_id = &*client_id, "the ACL refuses the will's topic; not sent");
        return;
    }
    tracing::debug!(client_id = &*client_id, "a delayed will is published");
    crate::route::route(shared, publish, properties, None, &client_id);
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::budget::Budget;
    use std::time::Duration;

    fn will(budget: &Arc<Budget>, client_id: &str) -> Will {
        Will {
            publish: Publish::new("w", "gone", false),
            properties: None,
            user: None,
            client_id: client_id.into(),
            charge: Charge::take(budget, 10).unwrap(),
        }
    }

    #[test]
    fn a_will_waits_until_it_is_due_or_taken() {
        let budget = Arc::new(Budget::new(1 << 10, prometheus::IntGauge::new("b", "test").unwrap()));
        let wills = DelayedWills::default();
        let now = Instant::now();
        wills.delay(will(&budget, "a"), now + Duration::from_secs(5));
        wills.delay(will(&budget, "b"), now + Duration::from_secs(1));
        assert!(wills.due(now).is_empty());
        let due = wills.due(now + Duration::from_secs(2));
        assert_eq!(due.iter().map(|w| &*w.client_id).collect::<Vec<_>>(), ["b"]);
        drop(due);
        assert!(wills.take("a").is_some(), "a connection took the session up");
        assert!(wills.take("a").is_none());
        assert!(wills.is_empty());
        assert_eq!(budget.used(), 0, "every will's bytes given back");
    }
}
