//! How the broker ends a connection from outside it ([`Eviction`]).

use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

/// Why the broker ends a connection from outside it: a takeover, a reload
/// that revoked its login, the broker's stop, or the client's silence past
/// its keepalive ([`Registry::close_silent`]).
///
/// One waker rather than a `Notify` or a cancellation token: the connection
/// is its one waiter, and polls it ([`Self::poll_evicted`]) in the same
/// poll as its socket and its outbox, so that its wait keeps no `Notified`
/// (64 bytes) in every connection's state; a token is a node of its own in
/// a tree. The keepalive is kept here, checked by the broker's once-a-second
/// sweep, rather than as a timer in every connection's state.
#[derive(Debug)]
pub struct Eviction {
    pub(super) waker: atomic_waker::AtomicWaker,
    /// Set once the connection is to end, before it is told.
    pub(super) evicted: std::sync::atomic::AtomicBool,
    /// Set before the connection is told when the user's credentials changed
    /// (a reload); otherwise an eviction is a takeover.
    pub revoked: std::sync::atomic::AtomicBool,
    /// Set before the connection is told when its client said nothing for
    /// its grace.
    pub(super) silent: std::sync::atomic::AtomicBool,
    /// When the client last sent anything: milliseconds after `since`.
    pub(super) heard: std::sync::atomic::AtomicU64,
    pub(super) since: Instant,
    /// How long the client may be silent (1.5 x its keepalive,
    /// [MQTT-3.1.2-24]), in milliseconds; 0: for ever (keepalive 0).
    pub(super) grace_ms: u64,
    /// The user and the identity of their password entry at login, for
    /// [`Registry::revoke`].
    pub login: Option<(Arc<str>, Option<u64>)>,
}

impl Default for Eviction {
    fn default() -> Self {
        Self::new(None, None)
    }
}

impl Eviction {
    /// `grace`: how long the client may be silent; `None`, for ever.
    pub fn new(login: Option<(Arc<str>, Option<u64>)>, grace: Option<Duration>) -> Self {
        Self {
            waker: atomic_waker::AtomicWaker::new(),
            evicted: std::sync::atomic::AtomicBool::new(false),
            revoked: std::sync::atomic::AtomicBool::new(false),
            silent: std::sync::atomic::AtomicBool::new(false),
            heard: std::sync::atomic::AtomicU64::new(0),
            since: Instant::now(),
            grace_ms: grace.map_or(0, |g| u64::try_from(g.as_millis()).unwrap_or(u64::MAX).max(1)),
            login,
        }
    }

    /// End the connection.
    pub fn evict(&self) {
        self.evicted.store(true, std::sync::atomic::Ordering::Release);
        self.waker.wake();
    }

    /// Whether [`Self::evict`] was called.
    pub fn is_evicted(&self) -> bool {
        self.evicted.load(std::sync::atomic::Ordering::Acquire)
    }

    /// Ready once [`Self::evict`] is called; until then, the task polling it
    /// is woken by that call.
    pub fn poll_evicted(&self, cx: &mut Context<'_>) -> Poll<()> {
        if self.is_evicted() {
            return Poll::Ready(());
        }
        self.waker.register(cx.waker());
        // An eviction between the check and the registration woke nobody.
        if self.is_evicted() {
            Poll::Ready(())
        } else {
            Poll::Pending
        }
    }

    /// The client sent something.
    pub fn heard(&self) {
        let at = u64::try_from(self.since.elapsed().as_millis()).unwrap_or(u64::MAX);
        self.heard.store(at, std::sync::atomic::Ordering::Relaxed);
    }

    /// Whether the connection was ended for its client's silence.
    pub fn was_silent(&self) -> bool {
        self.silent.load(std::sync::atomic::Ordering::Acquire)
    }

    /// End the connection if its client has said nothing for its grace by
    /// `now`; whether it did.
    pub(super) fn close_if_silent(&self, now: Instant) -> bool {
        if self.grace_ms == 0 || self.is_evicted() {
            return false;
        }
        let now_ms = u64::try_from(now.saturating_duration_since(self.since).as_millis()).unwrap_or(u64::MAX);
        let heard = self.heard.load(std::sync::atomic::Ordering::Relaxed);
        if now_ms.saturating_sub(heard) <= self.grace_ms {
            return false;
        }
        self.silent.store(true, std::sync::atomic::Ordering::Release);
        self.evict();
        true
    }
}
