//! Topic aliases of one MQTT 5 connection, both ways (MQTT 5 §3.3.2.3.4).
//! They belong to the connection, not the session ([MQTT-3.3.2-7]): a client
//! that comes back starts with none.
//!
//! Inbound, the client names a topic once with an alias (1 to the Topic
//! Alias Maximum the CONNACK announced, `max_topic_alias`) and then sends the
//! alias with an empty topic. Outbound, the broker gives each new topic an
//! alias while the client's own Topic Alias Maximum leaves room, sends the
//! topic with it the first time and the alias alone after; past that room,
//! topics go in full (no alias is taken back: a client that allows ten
//! aliases mostly reads ten topics).
//!
//! Every topic held here is counted in the queues' share of the memory
//! budget (what `max_topic_alias` costs a connection is its topics' lengths),
//! and given back when the connection ends ([`Charge`] is the guard).

use std::collections::HashMap;
use std::sync::Arc;

use bytes::Bytes;

use crate::budget::{Budget, Charge};

/// Bytes an alias costs beyond its topic: its slot, or its map entry.
const ENTRY_BYTES: usize = 48;

/// Why an inbound alias could not be used.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Refused {
    /// An empty topic with an alias the client never set: a Protocol Error
    /// (MQTT 5 §3.3.2.3.4).
    Unknown,
    /// The topic does not fit the memory budget.
    OverBudget,
}

/// See the module's documentation.
pub(super) struct Aliases {
    /// The client's, by alias - 1; grown as the client uses higher ones.
    inbound: Vec<Option<Bytes>>,
    /// The broker's toward the client.
    outbound: HashMap<Bytes, u16>,
    charge: Charge,
}

impl Aliases {
    pub(super) fn new(budget: &Arc<Budget>) -> Self {
        Self {
            inbound: Vec::new(),
            outbound: HashMap::new(),
            charge: Charge::empty(budget),
        }
    }

    /// A PUBLISH with `alias` (validated: 1 to `max_topic_alias`) and
    /// `topic` (validated, or empty): the topic it stands for. A topic sets
    /// the alias, replacing what it stood for; an empty one uses it.
    pub(super) fn inbound(&mut self, alias: u16, topic: &Bytes) -> Result<Bytes, Refused> {
        let at = usize::from(alias).checked_sub(1).ok_or(Refused::Unknown)?;
        if topic.is_empty() {
            return self.inbound.get(at).and_then(Option::clone).ok_or(Refused::Unknown);
        }
        // Copied: the codec's topic is a slice of the read buffer, which it
        // would keep alive.
        let topic = Bytes::copy_from_slice(topic);
        if self.inbound.len() <= at {
            let slots = (at + 1 - self.inbound.len()) * std::mem::size_of::<Option<Bytes>>();
            if !self.charge.grow(slots) {
                return Err(Refused::OverBudget);
            }
            self.inbound.resize(at + 1, None);
        }
        let before = self.inbound[at].as_ref().map_or(0, Bytes::len);
        if !self.charge.grow(topic.len()) {
            return Err(Refused::OverBudget);
        }
        self.charge.shrink(before);
        self.inbound[at] = Some(topic.clone());
        Ok(topic)
    }

    /// The alias to send `topic` with to a client that allows `maximum`, and
    /// whether the topic goes with it (its first use); `None`: in full, with
    /// no alias (the client allows no more, or the budget has no room).
    pub(super) fn outbound(&mut self, topic: &Bytes, maximum: u16) -> Option<(u16, bool)> {
        if let Some(alias) = self.outbound.get(topic) {
            return Some((*alias, false));
        }
        let next = u16::try_from(self.outbound.len() + 1).ok()?;
        if next > maximum || !self.charge.grow(ENTRY_BYTES + topic.len()) {
            return None;
        }
        // The message's topic is shared with its other copies: no copy here.
        self.outbound.insert(topic.clone(), next);
        Some((next, true))
    }

    /// Whether `topic` has an alias toward the client already.
    pub(super) fn has_outbound(&self, topic: &Bytes) -> bool {
        self.outbound.contains_key(topic)
    }

    /// The bytes held in the budget.
    #[cfg(test)]
    fn held(&self) -> usize {
        self.charge.bytes()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn budget(limit: usize) -> Arc<Budget> {
        Arc::new(Budget::new(limit, prometheus::IntGauge::new("b", "test").unwrap()))
    }

    #[test]
    fn a_clients_alias_stands_for_the_topic_it_last_set() {
        let budget = budget(1 << 20);
        let mut aliases = Aliases::new(&budget);
        let empty = Bytes::new();
        assert_eq!(aliases.inbound(3, &empty), Err(Refused::Unknown));
        assert_eq!(aliases.inbound(3, &Bytes::from("a/b")).unwrap(), "a/b");
        assert_eq!(aliases.inbound(3, &empty).unwrap(), "a/b");
        assert_eq!(aliases.inbound(3, &Bytes::from("c")).unwrap(), "c");
        assert_eq!(aliases.inbound(3, &empty).unwrap(), "c");
        assert_eq!(aliases.inbound(1, &empty), Err(Refused::Unknown));
        assert_eq!(aliases.inbound(0, &empty), Err(Refused::Unknown));
        let held = aliases.held();
        assert!(held >= 1, "{held}");
        drop(aliases);
        assert_eq!(budget.used(), 0, "given back with the connection");
    }

    #[test]
    fn the_broker_gives_new_topics_aliases_while_the_client_allows() {
        let budget = budget(1 << 20);
        let mut aliases = Aliases::new(&budget);
        let (a, b, c) = (Bytes::from("a"), Bytes::from("b"), Bytes::from("c"));
        assert_eq!(aliases.outbound(&a, 2), Some((1, true)));
        assert_eq!(aliases.outbound(&a, 2), Some((1, false)));
        assert_eq!(aliases.outbound(&b, 2), Some((2, true)));
        assert_eq!(aliases.outbound(&c, 2), None, "two allowed");
        assert_eq!(aliases.outbound(&b, 2), Some((2, false)));
    }

    #[test]
    fn aliases_stay_within_the_budget() {
        let budget = budget(100);
        let mut aliases = Aliases::new(&budget);
        let long = Bytes::from("x".repeat(200));
        assert_eq!(aliases.inbound(1, &long), Err(Refused::OverBudget));
        assert_eq!(aliases.outbound(&long, 10), None);
        assert!(budget.used() <= 100);
    }
}
