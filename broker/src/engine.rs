//! The only module that knows rumqttd's router: messages go in and out of it
//! through one local link per client.
//!
//! `rumqttd::Router::spawn` returns the sender that `local::LinkBuilder` needs,
//! but rumqttd does not export that sender's item type, so it cannot be named in
//! a struct field. It lives inside the one boxed closure below, whose signature
//! names only public types. No rumqttd listener runs: the front end owns the
//! wire (sessions), and rumqttd only routes.

use std::fmt;
use std::sync::Arc;
use std::sync::atomic::Ordering;

use prometheus::core::{Collector, Desc};
use prometheus::proto::MetricFamily;
use prometheus::{IntCounter, IntGauge};
use rumqttd::local::{LinkBuilder, LinkError, LinkRx, LinkTx};
use rumqttd::{Notification, Router, RouterConfig, RouterStats};

pub use crate::registry::Continuity;

/// What a session gets when it attaches: the two halves of its link and the
/// router's CONNACK notification (which says whether a session was present).
pub type Link = (LinkTx, LinkRx, Notification);

/// rumqttd's `LinkError` carries a whole router event (800 bytes); only its
/// message is kept.
type Attach = Box<dyn Fn(&str, Continuity) -> Result<Link, String> + Send + Sync>;
type Discard = Box<dyn Fn(&str) -> Result<(), String> + Send + Sync>;

/// Limits of the router's own storage.
#[derive(Debug, Clone, Copy)]
pub struct EngineLimits {
    pub max_connections: usize,
    /// Bytes per commit-log segment, per subscription filter.
    pub max_segment_size: usize,
    /// Segments kept per filter.
    pub max_segment_count: usize,
    /// Undelivered packets queued per connection inside rumqttd.
    pub max_outgoing_packet_count: u64,
    /// Subscription filters with a log; a subscription to another is refused.
    pub max_filters: usize,
    /// Bytes of all filters' logs together; beyond, the oldest messages go.
    pub max_log_bytes: u64,
    /// Bytes of the router's topic match cache.
    pub max_match_cache_bytes: usize,
}

/// A running rumqttd router.
pub struct Engine {
    attach: Attach,
    discard: Discard,
    stats: Arc<RouterStats>,
    /// Cancelled when the router's thread ends, however it ends: nothing is
    /// routed after that, and the broker must say so and stop.
    stopped: tokio_util::sync::CancellationToken,
    #[cfg(feature = "fault-injection")]
    inject_panic: Box<dyn Fn() + Send + Sync>,
}

impl fmt::Debug for Engine {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Engine").finish_non_exhaustive()
    }
}

impl Engine {
    /// Start the router on its own thread (rumqttd runs it there).
    pub fn start(limits: EngineLimits) -> std::io::Result<Self> {
        let config = RouterConfig {
            max_connections: limits.max_connections,
            max_outgoing_packet_count: limits.max_outgoing_packet_count,
            max_segment_size: limits.max_segment_size,
            max_segment_count: limits.max_segment_count,
            custom_segment: None,
            initialized_filters: None,
            shared_subscriptions_strategy: Default::default(),
            max_filters: Some(limits.max_filters),
            max_log_bytes: Some(limits.max_log_bytes),
            max_match_cache_bytes: Some(limits.max_match_cache_bytes),
        };
        let router = Router::new(0, config);
        let stats = router.stats();
        let stopped = tokio_util::sync::CancellationToken::new();
        let on_exit = stopped.clone();
        let router_tx = router.spawn_watched(move || on_exit.cancel())?;
        let discard_tx = router_tx.clone();
        #[cfg(feature = "fault-injection")]
        let inject_panic = {
            let router_tx = router_tx.clone();
            Box::new(move || {
                let _ = rumqttd::local::inject_panic(&router_tx);
            })
        };
        let discard: Discard = Box::new(move |client_id| {
            rumqttd::local::discard_session(&discard_tx, client_id).map_err(|e: LinkError| e.to_string())
        });
        let attach: Attach = Box::new(move |client_id, continuity: Continuity| {
            LinkBuilder::new(client_id, router_tx.clone())
                .clean_session(!continuity.resume)
                .persistent(continuity.keep)
                // Off (LinkBuilder's default), rumqttd would refuse a publish
                // no filter matches with `NoMatchingFilters`; its `matches`
                // never says "none" in fact, so either way such a publish goes
                // to no log. On, in case that changes: filters are made only
                // by subscriptions, within `max_filters`.
                .dynamic_filters(true)
                .build()
                .map_err(|e: LinkError| e.to_string())
        });
        Ok(Self {
            attach,
            discard,
            stats,
            stopped,
            #[cfg(feature = "fault-injection")]
            inject_panic,
        })
    }

    /// Whether the router's thread has ended.
    pub fn is_stopped(&self) -> bool {
        self.stopped.is_cancelled()
    }

    /// Resolves when the router's thread has ended.
    pub async fn stopped(&self) {
        self.stopped.cancelled().await
    }

    /// Panic the router's thread: the test of what the broker does then.
    #[cfg(feature = "fault-injection")]
    pub fn inject_panic(&self) {
        (self.inject_panic)()
    }

    /// The router's figures as metrics (filters, log bytes, evictions), read
    /// from its counters when the registry is gathered.
    pub fn metrics(&self) -> prometheus::Result<RouterMetrics> {
        Ok(RouterMetrics {
            stats: self.stats.clone(),
            filters: IntGauge::new(
                "snigate_broker_router_filters",
                "Subscription filters the message router keeps a log for (freed with their last subscriber).",
            )?,
            log_bytes: IntGauge::new(
                "snigate_broker_router_log_bytes",
                "Bytes held in the message router's logs, all filters together (bounded by the memory budget).",
            )?,
            match_cache_bytes: IntGauge::new(
                "snigate_broker_router_match_cache_bytes",
                "Bytes of the message router's cache of which filters a topic matches.",
            )?,
            evicted: IntCounter::new(
                "snigate_broker_router_evicted_messages_total",
                "Messages the router's logs gave up early to stay within the memory budget.",
            )?,
            catching_up: std::sync::Mutex::new(()),
        })
    }

    /// Attach a client. The will is kept by the session, not given to rumqttd:
    /// a local link has no way to tell the router it died, so the session
    /// publishes the will itself when the connection ends without DISCONNECT.
    ///
    /// Blocking: rumqttd's link handshake waits on a channel. Call it from
    /// `spawn_blocking`.
    pub fn attach(&self, client_id: &str, continuity: Continuity) -> Result<Link, String> {
        (self.attach)(&router_client_id(client_id), continuity)
    }

    /// End the saved session of `client_id`, unless it is connected by the
    /// time the router reads this (the router reads in order: a client that
    /// attaches after this call starts afresh). Never blocks; fails when the
    /// router's queue is full.
    pub fn discard(&self, client_id: &str) -> Result<(), String> {
        (self.discard)(&router_client_id(client_id))
    }
}

/// The router's counters, exported when scraped: the router's thread keeps them
/// in atomics, and nothing else would copy them into the registry.
pub struct RouterMetrics {
    stats: Arc<RouterStats>,
    filters: IntGauge,
    log_bytes: IntGauge,
    match_cache_bytes: IntGauge,
    evicted: IntCounter,
    /// Two scrapes at once must not both add the same evictions.
    catching_up: std::sync::Mutex<()>,
}

impl Collector for RouterMetrics {
    fn desc(&self) -> Vec<&Desc> {
        [
            self.filters.desc(),
            self.log_bytes.desc(),
            self.match_cache_bytes.desc(),
            self.evicted.desc(),
        ]
        .concat()
    }

    fn collect(&self) -> Vec<MetricFamily> {
        let gauge = |n: u64| i64::try_from(n).unwrap_or(i64::MAX);
        let stats = &self.stats;
        self.filters.set(gauge(stats.filters.load(Ordering::Relaxed) as u64));
        self.log_bytes.set(gauge(stats.log_bytes.load(Ordering::Relaxed)));
        self.match_cache_bytes
            .set(gauge(stats.match_cache_bytes.load(Ordering::Relaxed) as u64));
        {
            let _one_at_a_time = self
                .catching_up
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            let evicted = stats.evicted_messages.load(Ordering::Relaxed);
            self.evicted.inc_by(evicted.saturating_sub(self.evicted.get()));
        }
        [
            self.filters.collect(),
            self.log_bytes.collect(),
            self.match_cache_bytes.collect(),
            self.evicted.collect(),
        ]
        .concat()
    }
}

/// The name a client has inside rumqttd. rumqttd refuses client ids with `+`,
/// `$`, `#` or `/`, which MQTT and Mosquitto allow (`devices/42` is common), so
/// those (and `%`, to keep the mapping one-to-one) are percent-encoded.
pub fn router_client_id(client_id: &str) -> std::borrow::Cow<'_, str> {
    const ESCAPED: &[char] = &['%', '+', '$', '#', '/'];
    if !client_id.contains(ESCAPED) {
        return std::borrow::Cow::Borrowed(client_id);
    }
    let mut out = String::with_capacity(client_id.len() + 8);
    for c in client_id.chars() {
        if ESCAPED.contains(&c) {
            out.push_str(&format!("%{:02X}", c as u32));
        } else {
            out.push(c);
        }
    }
    std::borrow::Cow::Owned(out)
}

#[cfg(test)]
mod tests {
    use super::router_client_id;

    #[test]
    fn client_ids_rumqttd_refuses_are_escaped_one_to_one() {
        assert_eq!(router_client_id("sensor-1"), "sensor-1");
        assert_eq!(router_client_id("devices/42"), "devices%2F42");
        assert_eq!(router_client_id("a+b#c$d%e"), "a%2Bb%23c%24d%25e");
        // `%2F` itself stays distinct from `/`.
        assert_ne!(router_client_id("a%2Fb"), router_client_id("a/b"));
    }
}
