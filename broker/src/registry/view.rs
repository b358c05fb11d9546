//! The sessions as the status page shows them: read from the sessions
//! themselves when asked, never kept.

use std::sync::Arc;

use serde::Serialize;

use super::{Registry, SessionState, lock};

/// One session's figures.
#[derive(Debug, Serialize)]
pub struct SessionView {
    pub client_id: String,
    pub user: Option<String>,
    /// A connection has it now.
    pub connected: bool,
    /// It outlives its connection.
    pub persistent: bool,
    pub subscriptions: usize,
    pub queued: usize,
    pub inflight: usize,
}

impl Registry {
    /// Every session's figures. The map's lock is held only to copy out the
    /// sessions, so that no connection waits while each one is read.
    pub fn session_views(&self) -> Vec<SessionView> {
        let held: Vec<(Arc<SessionState>, bool, bool)> = self
            .sessions()
            .values()
            .map(|entry| (entry.session.clone(), entry.connection.is_some(), entry.persistent))
            .collect();
        held.into_iter()
            .map(|(session, connected, persistent)| {
                let (queued, inflight) = lock(&session.out).outbox.len();
                SessionView {
                    client_id: session.client_id().to_owned(),
                    user: session.user().map(str::to_owned),
                    connected,
                    persistent,
                    subscriptions: lock(&session.subscriptions).iter().count(),
                    queued,
                    inflight,
                }
            })
            .collect()
    }
}

/// The index's share of the memory budget: what the index and the sessions
/// hold, and the most they may.
#[derive(Debug, Serialize)]
pub struct IndexShare {
    pub used: usize,
    pub limit: usize,
}

impl Registry {
    pub fn index_share(&self) -> IndexShare {
        IndexShare {
            used: self.index.bytes() + self.session_bytes.load(std::sync::atomic::Ordering::Acquire),
            limit: self.max_index_bytes,
        }
    }
}
