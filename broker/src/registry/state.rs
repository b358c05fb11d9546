//! A session's state in the registry: what outlives its connections (its
//! subscriptions, its outbox, the QoS 2 packet ids its client has not
//! released) and how its connection is woken, with the options and answers
//! the registry's operations take and give.

use std::collections::{BTreeSet, HashMap};
use std::hash::{Hash, Hasher};
use std::num::NonZeroU32;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::task::{Context, Poll, Waker};

use rumqttd::protocol::QoS;

use crate::outbox::Outbox;

/// What a subscription asks for (MQTT 5 §3.8.3.1; an MQTT 3.1.1
/// subscription has only its QoS).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Options {
    /// The most a message is delivered with: a message published with less
    /// is delivered with what it was published with ([MQTT-3.8.4-6]).
    pub qos: QoS,
    /// No Local: nothing its own session publishes ([MQTT-3.8.3-3]).
    pub no_local: bool,
    /// Retain As Published: a message is delivered with the retain flag it
    /// was published with, not 0 ([MQTT-3.3.1-12], [MQTT-3.3.1-13]).
    pub retain_as_published: bool,
    /// Its Subscription Identifier, carried by every message it delivers
    /// ([MQTT-3.3.4-5]).
    pub id: Option<NonZeroU32>,
}

impl Options {
    /// A subscription at `qos` with no MQTT 5 options.
    pub fn at(qos: QoS) -> Self {
        Self {
            qos,
            no_local: false,
            retain_as_published: false,
            id: None,
        }
    }
}

/// Which retained messages a new subscription gets (MQTT 5 Retain
/// Handling; MQTT 3.1.1 always sends them).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RetainHandling {
    /// Those its filter matches ([MQTT-3.3.1-9]).
    Send,
    /// Those, unless the subscription existed already ([MQTT-3.3.1-10]).
    SendIfNew,
    /// None ([MQTT-3.3.1-11]).
    Never,
}

/// A QoS 2 PUBLISH, as the session's exactly-once record sees it
/// ([`SessionState::receive_qos2`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Received {
    /// Its packet id was free: deliver it.
    New,
    /// Its packet id waits for a PUBREL: sent again, not delivered again
    /// ([MQTT-4.3.3-10]).
    Again,
    /// As many wait for their PUBREL as the quota allows.
    OverQuota,
}

/// One client's session.
#[derive(Debug)]
pub struct SessionState {
    /// Shared with the registry's key and the connection that has it.
    pub(super) client_id: Arc<str>,
    /// The user it logged in as, for the ACL at delivery; shared with the
    /// connection.
    pub(super) user: Option<Arc<str>>,
    pub(super) out: Mutex<Out>,
    /// A QoS 1 or 2 message did not fit in the outbox since the connection
    /// last looked: with `queue_full = "disconnect"`, it ends.
    pub(super) overflowed: std::sync::atomic::AtomicBool,
    /// Its filters, so that a session that ends leaves the index clean.
    pub(super) subscriptions: Mutex<Subscriptions>,
    /// QoS 2 packet ids its client has sent and not yet released: a PUBLISH
    /// with one of them again, on this connection or after a reconnect, is
    /// acknowledged and not delivered twice (§4.3.3, [MQTT-4.4.0-1]). At most
    /// the 65,535 packet ids; empty, it holds no memory.
    pub(super) received: Mutex<BTreeSet<u16>>,
    /// The session is over (ended, expired, or not resumed by the connection
    /// that took it over): set before that connection is told to go, so that
    /// it knows whether its will is due.
    pub(super) ended: std::sync::atomic::AtomicBool,
}

#[derive(Debug, Default)]
pub(super) struct Subscriptions {
    /// Made with the first subscription: a client that only publishes holds
    /// 8 bytes here where an empty map is 48.
    // Boxed: see above.
    #[allow(clippy::box_collection)]
    pub(super) filters: Option<Box<HashMap<Box<str>, Options>>>,
    /// The session was discarded: a SUBSCRIBE its connection was still
    /// handling adds nothing to the index. Set under this lock, which every
    /// change to the session's subscriptions holds, index included.
    pub(super) discarded: bool,
}

impl Subscriptions {
    pub(super) fn iter(&self) -> impl Iterator<Item = (&Box<str>, &Options)> {
        self.filters.iter().flat_map(|filters| filters.iter())
    }

    pub(super) fn has(&self, filter: &str) -> bool {
        self.filters
            .as_ref()
            .is_some_and(|filters| filters.contains_key(filter))
    }
}

#[derive(Debug)]
pub(super) struct Out {
    pub(super) outbox: Outbox,
    /// The connection that has the session, to be woken when the outbox has
    /// something new for it or has refused a message; `None` while away.
    pub(super) waiter: Option<Waiter>,
}

/// The connection a session's outbox wakes. Under the outbox's lock, which
/// a message takes anyway, rather than a `Notify` of its own: the
/// connection's wait then holds no `Notified` in its state. Its generation
/// keeps a connection taken over, still ending, from taking the wake its
/// successor waits on.
#[derive(Debug)]
pub(super) struct Waiter {
    pub(super) generation: u64,
    pub(super) waker: Option<Waker>,
    /// Something came since the connection last looked.
    pub(super) woken: bool,
}

impl Waiter {
    pub(super) fn new(generation: u64) -> Self {
        Self {
            generation,
            waker: None,
            woken: false,
        }
    }
}

impl Out {
    /// Note that something came, and what to wake (outside the lock).
    pub(super) fn woken(&mut self) -> Option<Waker> {
        let waiter = self.waiter.as_mut()?;
        waiter.woken = true;
        waiter.waker.take()
    }
}

pub(super) fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    // Every change under these locks is one call that completes or leaves the
    // data as it was: a panic elsewhere does not leave them half changed.
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

impl SessionState {
    pub fn client_id(&self) -> &str {
        &self.client_id
    }

    pub fn user(&self) -> Option<&str> {
        self.user.as_deref()
    }

    /// The client id, to share rather than copy.
    pub fn shared_client_id(&self) -> Arc<str> {
        self.client_id.clone()
    }

    /// The user, to share rather than copy.
    pub fn shared_user(&self) -> Option<Arc<str>> {
        self.user.clone()
    }

    /// The outbox, to take what to write and to hand it acknowledgements.
    pub fn outbox(&self) -> impl std::ops::DerefMut<Target = Outbox> + '_ {
        OutboxGuard(lock(&self.out))
    }

    /// Ready when the outbox got something, or refused a message, since
    /// connection `generation` last looked; until then, the task polling it
    /// is woken when it does. A connection the session has passed to another
    /// is never ready here (its eviction ends it).
    pub fn poll_wake(&self, generation: u64, cx: &mut Context<'_>) -> Poll<()> {
        let mut out = lock(&self.out);
        let Some(waiter) = out.waiter.as_mut().filter(|w| w.generation == generation) else {
            return Poll::Pending;
        };
        if std::mem::take(&mut waiter.woken) {
            return Poll::Ready(());
        }
        if !waiter.waker.as_ref().is_some_and(|w| w.will_wake(cx.waker())) {
            waiter.waker = Some(cx.waker().clone());
        }
        Poll::Pending
    }

    /// Whether a QoS 1 or 2 message was refused since the last call.
    pub fn take_overflow(&self) -> bool {
        self.overflowed.swap(false, std::sync::atomic::Ordering::AcqRel)
    }

    /// A QoS 2 PUBLISH with `pkid` came: whether it is new (to be delivered),
    /// one sent again before its PUBREL, or one more than `quota` waiting
    /// for theirs.
    pub fn receive_qos2(&self, pkid: u16, quota: usize) -> Received {
        let mut received = lock(&self.received);
        if received.contains(&pkid) {
            Received::Again
        } else if received.len() >= quota {
            Received::OverQuota
        } else {
            received.insert(pkid);
            Received::New
        }
    }

    /// A PUBREL for `pkid`: whether the id was waiting for it.
    pub fn release_qos2(&self, pkid: u16) -> bool {
        lock(&self.received).remove(&pkid)
    }

    /// Whether the session is over: a connection taken over learns here if
    /// its successor resumed it.
    pub fn is_ended(&self) -> bool {
        self.ended.load(std::sync::atomic::Ordering::Acquire)
    }

    /// How many of its filters `which` picks, and whether `filter` is one of
    /// them: for a bound on some kind of filter.
    pub fn count_subscriptions(&self, filter: &str, which: impl Fn(&str) -> bool) -> (usize, bool) {
        let subscriptions = lock(&self.subscriptions);
        let count = subscriptions.iter().filter(|(f, _)| which(f)).count();
        (count, subscriptions.has(filter))
    }

    /// Filters subscribed to, and their options.
    pub fn subscriptions(&self) -> Vec<(String, Options)> {
        lock(&self.subscriptions)
            .iter()
            .map(|(filter, options)| (filter.to_string(), *options))
            .collect()
    }
}

pub(super) struct OutboxGuard<'a>(MutexGuard<'a, Out>);

impl std::ops::Deref for OutboxGuard<'_> {
    type Target = Outbox;
    fn deref(&self) -> &Outbox {
        &self.0.outbox
    }
}

impl std::ops::DerefMut for OutboxGuard<'_> {
    fn deref_mut(&mut self) -> &mut Outbox {
        &mut self.0.outbox
    }
}

/// A session as the index files it: compared by identity, not by client id,
/// so a session replaced by a clean one is never mistaken for it.
#[derive(Debug, Clone)]
pub struct Subscriber(pub Arc<SessionState>);

impl PartialEq for Subscriber {
    fn eq(&self, other: &Self) -> bool {
        Arc::ptr_eq(&self.0, &other.0)
    }
}

impl Eq for Subscriber {}

impl Hash for Subscriber {
    fn hash<H: Hasher>(&self, state: &mut H) {
        std::ptr::hash(Arc::as_ptr(&self.0), state)
    }
}
