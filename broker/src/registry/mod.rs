//! The registry of sessions, in the broker's own core: the one truth for a
//! client id. It owns the subscription index and the retained store, and the
//! way a message goes from its publisher to its subscribers' outboxes.
//!
//! A session ([`SessionState`]) outlives its connections when it is
//! persistent: its subscriptions stay in the index and its outbox keeps
//! filling (within its bounds) while its client is away, until the client
//! comes back or the session expires. A connection is a claim on a session
//! (a generation): a new connection with the same client id takes it over,
//! and the old one's end then changes nothing.
//!
//! Pure of sockets and clocks (`now` is passed in): the connection's task
//! reads its session's outbox when [`SessionState::poll_wake`] says so.

use std::collections::{BTreeSet, HashMap};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use rumqttd::protocol::{Publish, PublishProperties, QoS};

use crate::budget::Budget;
use crate::index::{Filter, Index};
use crate::message::Message;
use crate::outbox::{self, Delivery, Outbox, Refused};
use crate::retained;

pub use eviction::Eviction;
pub use state::{Options, Received, RetainHandling, SessionState, Subscriber};
use state::{Out, Subscriptions, Waiter, lock};
pub use view::SessionView;

/// What becomes of a client's session: whether a saved one is taken up when
/// it connects, and whether its own is kept when it leaves. MQTT 3.1.1 ties
/// both to the clean session flag; MQTT 5 has clean start for the first and
/// the session expiry interval for the second.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Continuity {
    pub resume: bool,
    pub keep: bool,
}

/// A session's place in the registry.
#[derive(Debug)]
struct Entry {
    session: Arc<SessionState>,
    /// The connection that has it now: its generation and how to end it.
    connection: Option<(u64, Arc<Eviction>)>,
    /// It outlives its connection: a takeover resumes it, where a
    /// connection's own session ends with it.
    persistent: bool,
    /// When an away persistent session ends; `None` while connected or kept
    /// until a restart.
    expires: Option<Instant>,
}

/// How a connection that ends leaves its session.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Leave {
    /// Ended with the connection (MQTT 3.1.1 clean session; MQTT 5 session
    /// expiry interval 0).
    End,
    /// Kept until a restart.
    Keep,
    /// Kept for this long.
    KeepFor(Duration),
}

/// What a CONNECT got.
#[derive(Debug)]
pub struct Claim {
    pub session: Arc<SessionState>,
    /// The connection's generation, to name it when it ends.
    pub generation: u64,
    /// A session was there and is resumed: the CONNACK's Session Present
    /// ([MQTT-3.2.2-2], [MQTT-3.2.2-3]).
    pub present: bool,
}

/// What became of a published message.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Fanout {
    /// Copies queued, by the QoS they go with.
    pub queued: [u64; 3],
    /// Copies not queued, by why and QoS.
    pub dropped: Vec<(Refused, QoS)>,
    /// Copies the ACL withheld.
    pub withheld: u64,
}

/// What the registry holds, for the metrics.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Figures {
    /// Sessions, connected or away.
    pub sessions: usize,
    /// Subscriptions in the index, shared members included.
    pub subscriptions: usize,
    pub index_bytes: usize,
    pub retained: usize,
    pub retained_bytes: usize,
}

/// See the module's documentation.
#[derive(Debug)]
pub struct Registry {
    sessions: Mutex<HashMap<Arc<str>, Entry>>,
    next_generation: std::sync::atomic::AtomicU64,
    index: Index<Subscriber, Options>,
    retained: retained::Store<Arc<Message>>,
    /// The broker's own retained `$SYS` values ([`crate::sys`]): a fixed
    /// few hundred bytes, apart from what clients retain, which
    /// `max_retained_bytes` bounds (clients may not write `$SYS`).
    sys: retained::Store<Arc<Message>>,
    budget: Arc<Budget>,
    limits: Arc<outbox::Limits>,
    /// What the index and the sessions may hold before a new subscription
    /// or session is refused: their share of `memory_limit`
    /// ([`Self::with_index_share`]).
    max_index_bytes: usize,
    /// What the sessions held cost ([`session_cost`]), kept with the map
    /// under its lock and read without it.
    session_bytes: std::sync::atomic::AtomicUsize,
}

/// A session's records, budgeted: its state (368 bytes), the map's entry
/// and slot, and the allocations behind them, rounded up; client id and
/// user name on top.
pub const SESSION_BYTES: usize = 640;

/// What a session held for `client_id` by `user` costs the index's share:
/// the client id is held twice (the map's key and the session's own).
fn session_cost(client_id: &str, user: Option<&str>) -> usize {
    SESSION_BYTES + 2 * client_id.len() + user.map_or(0, str::len)
}

/// A new subscription was refused: the index holds its share of the budget.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct IndexFull;

impl Registry {
    pub fn new(limits: outbox::Limits, max_retained_bytes: usize, budget: Arc<Budget>) -> Self {
        Self {
            sessions: Mutex::new(HashMap::new()),
            next_generation: std::sync::atomic::AtomicU64::new(1),
            index: Index::new(),
            retained: retained::Store::new(max_retained_bytes),
            sys: retained::Store::new(usize::MAX),
            budget,
            limits: Arc::new(limits),
            max_index_bytes: usize::MAX,
            session_bytes: std::sync::atomic::AtomicUsize::new(0),
        }
    }

    /// Whether `more` bytes of sessions or filters would take the index's
    /// share past its bound.
    fn over_share(&self, more: usize) -> bool {
        self.index_share().used.saturating_add(more) > self.max_index_bytes
    }

    /// A session for `client_id` of `user` is no longer held.
    fn forget(&self, client_id: &str, session: &SessionState) {
        let cost = session_cost(client_id, session.user());
        let _ = self.session_bytes.fetch_update(
            std::sync::atomic::Ordering::AcqRel,
            std::sync::atomic::Ordering::Acquire,
            |held| Some(held.saturating_sub(cost)),
        );
    }

    /// Bound the subscription index and the sessions together at `bytes`:
    /// past them, a subscription to a filter the session does not have yet
    /// is refused (a filter it has is replaced, as ever), and so is a
    /// session for a client id the registry does not hold.
    pub fn with_index_share(mut self, bytes: usize) -> Self {
        self.max_index_bytes = bytes;
        self
    }

    fn sessions(&self) -> MutexGuard<'_, HashMap<Arc<str>, Entry>> {
        lock(&self.sessions)
    }

    fn new_session(&self, client_id: &str, user: Option<Arc<str>>, generation: u64) -> Arc<SessionState> {
        Arc::new(SessionState {
            client_id: client_id.into(),
            user,
            out: Mutex::new(Out {
                outbox: Outbox::new(self.limits.clone(), &self.budget),
                waiter: Some(Waiter::new(generation)),
            }),
            overflowed: std::sync::atomic::AtomicBool::new(false),
            subscriptions: Mutex::new(Subscriptions::default()),
            received: Mutex::new(BTreeSet::new()),
            ended: std::sync::atomic::AtomicBool::new(false),
        })
    }

    /// A CONNECT for `client_id`, logged in as `user`: the connection that
    /// has the session now is evicted ([MQTT-3.1.4-2]). A
    /// persistent session is resumed unless `continuity` says clean start
    /// ([MQTT-3.1.2-4]), what was in flight to be sent again
    /// ([MQTT-4.4.0-1]); any other ends, and a new one starts. A session
    /// whose connection is taken over is persistent only if that connection
    /// asked for it: one with a clean session lives only as long as its
    /// connection (§3.1.2.4), so Session Present is 0, as Mosquitto answers.
    /// `ended` is how to end this connection. A client id the registry does
    /// not hold gets a session only if the index's share has room for it.
    pub fn connect(
        &self,
        client_id: &str,
        user: Option<Arc<str>>,
        continuity: Continuity,
        ended: Arc<Eviction>,
    ) -> Result<Claim, IndexFull> {
        let mut sessions = self.sessions();
        if !sessions.contains_key(client_id) && self.over_share(session_cost(client_id, user.as_deref())) {
            return Err(IndexFull);
        }
        let generation = self.next_generation.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let previous = sessions.remove(client_id);
        if let Some(previous) = &previous {
            self.forget(client_id, &previous.session);
        }
        // A session resumed by another user would deliver to them what the
        // first was allowed to read: it is not resumed (Mosquitto resumes it).
        let resume = previous
            .as_ref()
            .is_some_and(|p| continuity.resume && p.persistent && p.session.user() == user.as_deref());
        if let Some(previous) = &previous {
            if !resume {
                // Before the eviction: the connection it ends reads this to
                // decide on its will.
                previous.session.ended.store(true, std::sync::atomic::Ordering::Release);
            }
            if let Some((_, eviction)) = &previous.connection {
                eviction.evict();
            }
        }
        let (session, present, discarded) = match previous {
            Some(entry) if resume => {
                let mut out = lock(&entry.session.out);
                out.waiter = Some(Waiter::new(generation));
                out.outbox.resume();
                drop(out);
                (entry.session, true, None)
            }
            other => (
                self.new_session(client_id, user, generation),
                false,
                other.map(|entry| entry.session),
            ),
        };
        self.session_bytes.fetch_add(
            session_cost(client_id, session.user()),
            std::sync::atomic::Ordering::AcqRel,
        );
        sessions.insert(
            session.shared_client_id(),
            Entry {
                session: session.clone(),
                connection: Some((generation, ended)),
                persistent: continuity.keep,
                expires: None,
            },
        );
        drop(sessions);
        if let Some(old) = discarded {
            self.discard(&old);
        }
        Ok(Claim {
            session,
            generation,
            present,
        })
    }

    /// The connection `generation` of `client_id` ended. Nothing changes if
    /// another connection has the session now (a takeover).
    pub fn disconnect(&self, client_id: &str, generation: u64, leave: Leave, now: Instant) {
        let mut sessions = self.sessions();
        let Some(entry) = sessions.get_mut(client_id) else {
            return;
        };
        if entry.connection.as_ref().is_none_or(|(g, _)| *g != generation) {
            return;
        }
        entry.connection = None;
        // Away from now on; and its waker holds the connection's task.
        lock(&entry.session.out).waiter = None;
        match leave {
            Leave::End => {
                if let Some(entry) = sessions.remove(client_id) {
                    self.forget(client_id, &entry.session);
                    drop(sessions);
                    self.discard(&entry.session);
                }
            }
            Leave::Keep | Leave::KeepFor(_) => {
                entry.persistent = true;
                entry.expires = match leave {
                    Leave::KeepFor(after) => Some(now + after),
                    _ => None,
                };
            }
        }
    }

    /// End the away sessions whose expiry has come. Returns how many.
    pub fn expire(&self, now: Instant) -> usize {
        let mut expired = Vec::new();
        self.sessions().retain(|client_id, entry| {
            let due = entry.connection.is_none() && entry.expires.is_some_and(|at| at <= now);
            if due {
                self.forget(client_id, &entry.session);
                expired.push(entry.session.clone());
            }
            !due
        });
        for session in &expired {
            self.discard(session);
        }
        expired.len()
    }

    /// A session's subscriptions leave the index (its outbox goes with its
    /// last handle).
    fn discard(&self, session: &Arc<SessionState>) {
        session.ended.store(true, std::sync::atomic::Ordering::Release);
        let subscriber = Subscriber(session.clone());
        let mut subscriptions = lock(&session.subscriptions);
        subscriptions.discarded = true;
        for filter in std::mem::take(&mut subscriptions.filters).iter().flat_map(|f| f.keys()) {
            self.index.unsubscribe(filter, &subscriber);
        }
    }

    /// End the connections whose login `changed` says is no longer what it
    /// was (a reload changed or removed the user's password entry), as
    /// Mosquitto does. Their sessions go on as each asked. Returns how many.
    pub fn revoke(&self, changed: impl Fn(&str, Option<u64>) -> bool) -> usize {
        let sessions = self.sessions();
        let mut revoked = 0;
        for (_, eviction) in sessions.values().filter_map(|entry| entry.connection.as_ref()) {
            let Some((user, entry)) = &eviction.login else { continue };
            if changed(user, *entry) {
                eviction.revoked.store(true, std::sync::atomic::Ordering::Release);
                eviction.evict();
                revoked += 1;
            }
        }
        revoked
    }

    /// End the connections whose clients have said nothing for 1.5 times
    /// their keepalive by `now` (MQTT §3.1.2.10: the server closes them, and
    /// the will is sent). Returns how many.
    pub fn close_silent(&self, now: Instant) -> usize {
        let sessions = self.sessions();
        let connections = sessions.values().filter_map(|entry| entry.connection.as_ref());
        connections
            .filter(|(_, eviction)| eviction.close_if_silent(now))
            .count()
    }

    /// End every connection (the broker stops: each one sees why).
    pub fn evict_all(&self) {
        for (_, eviction) in self.sessions().values().filter_map(|entry| entry.connection.as_ref()) {
            eviction.evict();
        }
    }

    /// Sessions held, connected or away.
    pub fn len(&self) -> usize {
        self.sessions().len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Subscribe `session` to `filter` (validated, and allowed by the ACL),
    /// replacing a subscription to the same filter ([MQTT-3.8.4-3]); then
    /// the retained messages it matches are queued for it as `retained`
    /// says, at the lower of their QoS and the subscription's
    /// ([MQTT-3.3.1-6]), with the retain flag set ([MQTT-3.3.1-8]) and the
    /// subscription's identifier. Shared subscriptions get none (MQTT 5
    /// §4.8.2). `may_read` is the ACL, asked for each retained message.
    pub fn subscribe(
        &self,
        session: &Arc<SessionState>,
        filter: &str,
        options: Options,
        retained: RetainHandling,
        may_read: impl Fn(&[u8]) -> bool,
    ) -> Result<Fanout, IndexFull> {
        let mut fanout = Fanout::default();
        let existed;
        {
            let mut subscriptions = lock(&session.subscriptions);
            if subscriptions.discarded {
                return Ok(fanout);
            }
            existed = subscriptions.has(filter);
            if self.over_share(0) && !existed {
                return Err(IndexFull);
            }
            self.index.subscribe(filter, Subscriber(session.clone()), options);
            subscriptions
                .filters
                .get_or_insert_default()
                .insert(filter.into(), options);
        }
        let parsed = Filter::parse(filter);
        let wanted = match retained {
            RetainHandling::Send => true,
            RetainHandling::SendIfNew => !existed,
            RetainHandling::Never => false,
        };
        if parsed.group.is_some() || !wanted {
            return Ok(fanout);
        }
        let mut found = Vec::new();
        self.retained
            .matching(parsed.topic, |message| found.push(message.clone()));
        if parsed.topic.starts_with('$') {
            self.sys.matching(parsed.topic, |message| found.push(message.clone()));
        }
        let now = Instant::now();
        for message in found {
            // Expired while retained: not sent ([MQTT-3.3.2-5]); the sweep
            // takes it out of the store.
            if message.expired(now) {
                continue;
            }
            if !may_read(message.topic()) {
                fanout.withheld += 1;
                continue;
            }
            let delivery = Delivery {
                qos: lower(message.qos(), options.qos),
                message,
                retain: true,
                subscription_id: options.id,
            };
            self.queue(session, delivery, &mut fanout);
        }
        Ok(fanout)
    }

    /// Returns whether `session` had subscribed to `filter`.
    pub fn unsubscribe(&self, session: &Arc<SessionState>, filter: &str) -> bool {
        let mut subscriptions = lock(&session.subscriptions);
        let had = subscriptions
            .filters
            .as_mut()
            .is_some_and(|filters| filters.remove(filter).is_some());
        if had {
            self.index.unsubscribe(filter, &Subscriber(session.clone()));
        }
        had
    }

    /// Deliver `message` (its topic validated, the publisher allowed to
    /// write it) to every subscription it matches, at the lower of its QoS
    /// and the subscription's ([MQTT-3.8.4-6]); a retained one is kept first
    /// ([MQTT-3.3.1-5]; the caller has stripped the flag if the store is
    /// full). Copies to subscribers go with the retain flag off (MQTT 3.1.1
    /// [MQTT-3.3.1-9]; MQTT 5 [MQTT-3.3.1-12]) unless the subscription asked
    /// for it as published ([MQTT-3.3.1-13]); a No Local subscription gets
    /// nothing `from` its own session published ([MQTT-3.8.3-3]). A session
    /// with several matching subscriptions gets a copy for each, as
    /// Mosquitto 2.0 sends them, each with its subscription's identifier
    /// ([MQTT-3.3.4-5]).
    pub fn publish(
        &self,
        message: &Arc<Message>,
        from: Option<&SessionState>,
        may_read: impl Fn(&SessionState, &[u8]) -> bool,
    ) -> Fanout {
        let mut fanout = Fanout::default();
        let Ok(topic) = std::str::from_utf8(message.topic()) else {
            // Validated where it entered: never here.
            return fanout;
        };
        let mut matched = Vec::new();
        self.index.matches(topic, |subscriber, options| {
            matched.push((subscriber.0.clone(), *options));
        });
        for (session, options) in matched {
            if options.no_local && from.is_some_and(|from| std::ptr::eq(from, &*session)) {
                continue;
            }
            if !may_read(&session, message.topic()) {
                fanout.withheld += 1;
                continue;
            }
            let delivery = Delivery {
                message: message.clone(),
                qos: lower(message.qos(), options.qos),
                retain: options.retain_as_published && message.retain(),
                subscription_id: options.id,
            };
            self.queue(&session, delivery, &mut fanout);
        }
        fanout
    }

    /// Keep `publish` as its topic's retained message ([MQTT-3.3.1-5]), or
    /// clear the topic for one with an empty payload ([MQTT-3.3.1-10]). The
    /// store counts its bytes against `max_retained_bytes`; its topic and
    /// payload are those of the copies in flight (`Bytes`), not copied.
    pub fn retain(
        &self,
        topic: &str,
        publish: Publish,
        properties: Option<PublishProperties>,
        received: Option<Instant>,
    ) -> retained::Outcome {
        if publish.payload.is_empty() {
            return self.retained.retain(topic, None);
        }
        let message = Message::retained(publish, properties, received);
        let bytes = message.size();
        self.retained.retain(topic, Some((message, bytes)))
    }

    /// Take the retained messages whose expiry interval has run out at `now`
    /// out of the store (they were not sent since, [MQTT-3.3.2-5]): how many.
    pub fn expire_retained(&self, now: Instant) -> usize {
        self.retained.remove_if(|message| message.expired(now))
    }

    /// Keep `publish` as the broker's own retained value of `topic` (a
    /// `$SYS` topic), outside `max_retained_bytes` and the retained figures.
    pub fn retain_sys(&self, topic: &str, publish: Publish) {
        let message = Message::retained(publish, None, None);
        let bytes = message.size();
        self.sys.retain(topic, Some((message, bytes)));
    }

    fn queue(&self, session: &Arc<SessionState>, delivery: Delivery, fanout: &mut Fanout) {
        let qos = delivery.qos;
        let mut out = lock(&session.out);
        let online = out.waiter.is_some();
        match out.outbox.push(delivery, online) {
            Ok(()) => {
                fanout.queued[qos as usize] += 1;
                let waker = out.woken();
                drop(out);
                if let Some(waker) = waker {
                    waker.wake();
                }
            }
            Err(refused) => {
                fanout.dropped.push((refused, qos));
                if qos != QoS::AtMostOnce && refused != Refused::Away {
                    session.overflowed.store(true, std::sync::atomic::Ordering::Release);
                    let waker = out.woken();
                    drop(out);
                    if let Some(waker) = waker {
                        waker.wake();
                    }
                }
            }
        }
    }

    /// The index's and the retained store's figures.
    pub fn figures(&self) -> Figures {
        Figures {
            sessions: self.len(),
            subscriptions: self.index.subscriptions(),
            index_bytes: self.index.bytes(),
            retained: self.retained.messages(),
            retained_bytes: self.retained.bytes(),
        }
    }
}

/// The lower of two QoS levels.
pub fn lower(a: QoS, b: QoS) -> QoS {
    if (a as u8) <= (b as u8) { a } else { b }
}

mod eviction;
mod state;
#[cfg(test)]
mod tests;
mod view;
