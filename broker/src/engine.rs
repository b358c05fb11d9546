//! The only module that knows rumqttd's router: messages go in and out of it
//! through one local link per client.
//!
//! `rumqttd::Router::spawn` returns the sender that `local::LinkBuilder` needs,
//! but rumqttd does not export that sender's item type, so it cannot be named in
//! a struct field. It lives inside the one boxed closure below, whose signature
//! names only public types. No rumqttd listener runs: the front end owns the
//! wire (sessions), and rumqttd only routes.

use std::fmt;

use rumqttd::local::{LinkBuilder, LinkError, LinkRx, LinkTx};
use rumqttd::{Notification, Router, RouterConfig};

/// What a session gets when it attaches: the two halves of its link and the
/// router's CONNACK notification (which says whether a session was present).
pub type Link = (LinkTx, LinkRx, Notification);

/// rumqttd's `LinkError` carries a whole router event (800 bytes); only its
/// message is kept.
type Attach = Box<dyn Fn(&str, bool) -> Result<Link, String> + Send + Sync>;

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
}

/// A running rumqttd router.
pub struct Engine {
    attach: Attach,
}

impl fmt::Debug for Engine {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Engine").finish_non_exhaustive()
    }
}

impl Engine {
    /// Start the router on its own thread (rumqttd runs it there).
    pub fn start(limits: EngineLimits) -> Self {
        let config = RouterConfig {
            max_connections: limits.max_connections,
            max_outgoing_packet_count: limits.max_outgoing_packet_count,
            max_segment_size: limits.max_segment_size,
            max_segment_count: limits.max_segment_count,
            custom_segment: None,
            initialized_filters: None,
            shared_subscriptions_strategy: Default::default(),
        };
        let router_tx = Router::new(0, config).spawn();
        let attach: Attach = Box::new(move |client_id, clean_session| {
            LinkBuilder::new(client_id, router_tx.clone())
                .clean_session(clean_session)
                // Off (LinkBuilder's default), rumqttd 0.20 would refuse a
                // publish no filter matches with `NoMatchingFilters`; its
                // `matches` never says "none" in fact, so either way such a
                // publish goes to no log. On, to be safe with later versions:
                // the filters that exist are the budget's (see budget.rs).
                .dynamic_filters(true)
                .build()
                .map_err(|e: LinkError| e.to_string())
        });
        Self { attach }
    }

    /// Attach a client. The will is kept by the session, not given to rumqttd:
    /// a local link has no way to tell the router it died, so the session
    /// publishes the will itself when the connection ends without DISCONNECT.
    ///
    /// Blocking: rumqttd's link handshake waits on a channel. Call it from
    /// `spawn_blocking`.
    pub fn attach(&self, client_id: &str, clean_session: bool) -> Result<Link, String> {
        (self.attach)(&router_client_id(client_id), clean_session)
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
