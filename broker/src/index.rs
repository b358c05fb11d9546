//! The subscription index: for a topic, the subscriptions whose filters match
//! it (MQTT 3.1.1 §4.7, MQTT 5 §4.7 and §4.8.2).
//!
//! A tree by topic level, as Mosquitto's `subs.c` keeps it: a node per level
//! of some filter, its literal children by name, `+` as a child of its own,
//! and at each node the subscriptions whose filter ends there, those whose
//! filter ends there with `/#` (they match this level and everything below),
//! and the shared groups (`$share/group/filter`) of both kinds.
//!
//! Publishers on every runtime thread read it at once: each node has its own
//! `RwLock`, a match takes one node's read lock at a time, and nothing is
//! locked for the whole tree. A SUBSCRIBE or UNSUBSCRIBE write-locks only the
//! nodes on its filter's path, one at a time (a parent and its child together
//! when an emptied child is cut off), so it costs about the depth of its
//! filter, whatever else the index holds.
//!
//! The index is generic over who subscribes (`K`, compared by `Eq`: a session
//! handle) and what a subscription carries (`V`: its QoS and options); it
//! knows nothing of sessions or delivery. Filters are validated before they
//! get here ([`crate::validate::topic_filter`]); topics too
//! ([`crate::validate::topic_name`]).

use std::collections::HashMap;
use std::hash::Hash;
use std::mem::size_of;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, RwLock, RwLockReadGuard, RwLockWriteGuard};

/// A filter as the index files it: its share group, if any, and its levels.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Filter<'a> {
    /// The group of a shared subscription (`$share/{group}/{filter}`).
    pub group: Option<&'a str>,
    /// The filter proper, without the `$share/{group}/` prefix.
    pub topic: &'a str,
}

impl<'a> Filter<'a> {
    /// Split a validated filter. `$share/` without a group and a filter is
    /// not a shared subscription (validation refuses it before this).
    pub fn parse(filter: &'a str) -> Self {
        if let Some(shared) = filter.strip_prefix("$share/")
            && let Some((group, topic)) = shared.split_once('/')
        {
            return Self {
                group: Some(group),
                topic,
            };
        }
        Self {
            group: None,
            topic: filter,
        }
    }
}

/// Where at a node a filter ends: on the node's own level, or with `/#`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
enum End {
    Here,
    Below,
}

/// Walk `filter`'s levels: the node path (the levels before the end) and where
/// it ends. `#` alone is the root's `Below`; `a/#` is `a`'s.
fn split(filter: &str) -> (impl Iterator<Item = &str>, End) {
    match filter.strip_suffix('#') {
        Some("") => (None.into_iter().flatten(), End::Below),
        Some(rest) => match rest.strip_suffix('/') {
            Some(path) => (Some(path.split('/')).into_iter().flatten(), End::Below),
            // `a#`: refused by validation; filed as a literal level.
            None => (Some(filter.split('/')).into_iter().flatten(), End::Here),
        },
        None => (Some(filter.split('/')).into_iter().flatten(), End::Here),
    }
}

/// Members of a shared group, served in turn.
#[derive(Debug)]
struct Group<K, V> {
    members: Vec<(K, V)>,
    /// Where each member is in `members`, so leaving costs no scan.
    position: HashMap<K, usize>,
    next: AtomicUsize,
}

impl<K: Eq + Hash + Clone, V> Group<K, V> {
    fn new() -> Self {
        Self {
            members: Vec::new(),
            position: HashMap::new(),
            next: AtomicUsize::new(0),
        }
    }

    fn insert(&mut self, key: K, value: V) -> Option<V> {
        match self.position.get(&key) {
            Some(&at) => Some(std::mem::replace(&mut self.members[at].1, value)),
            None => {
                self.position.insert(key.clone(), self.members.len());
                self.members.push((key, value));
                None
            }
        }
    }

    fn remove(&mut self, key: &K) -> Option<V> {
        let at = self.position.remove(key)?;
        let (_, value) = self.members.swap_remove(at);
        if let Some((moved, _)) = self.members.get(at) {
            self.position.insert(moved.clone(), at);
        }
        Some(value)
    }

    /// The member whose turn it is. Concurrent publishers each take a turn
    /// (the counter is atomic), so a group shares the load whoever publishes.
    fn pick(&self) -> Option<&(K, V)> {
        if self.members.is_empty() {
            return None;
        }
        let turn = self.next.fetch_add(1, Ordering::Relaxed);
        self.members.get(turn % self.members.len())
    }
}

/// The subscriptions ending at one node.
#[derive(Debug)]
struct Subscribers<K, V> {
    here: HashMap<K, V>,
    below: HashMap<K, V>,
    groups: HashMap<(End, Box<str>), Group<K, V>>,
}

impl<K, V> Subscribers<K, V> {
    fn is_empty(&self) -> bool {
        self.here.is_empty() && self.below.is_empty() && self.groups.is_empty()
    }

    fn plain(&mut self, end: End) -> &mut HashMap<K, V> {
        match end {
            End::Here => &mut self.here,
            End::Below => &mut self.below,
        }
    }
}

#[derive(Debug)]
struct Level<K, V> {
    /// Set when the node was cut from the tree (it had emptied): a writer that
    /// reached it through a handle taken before starts again from the root.
    detached: bool,
    children: HashMap<Box<str>, Arc<Node<K, V>>>,
    plus: Option<Arc<Node<K, V>>>,
    /// Boxed: most nodes are only on the way to others.
    subscribers: Option<Box<Subscribers<K, V>>>,
}

impl<K, V> Level<K, V> {
    fn is_empty(&self) -> bool {
        self.children.is_empty() && self.plus.is_none() && self.subscribers.is_none()
    }

    fn child(&self, name: &str) -> Option<&Arc<Node<K, V>>> {
        if name == "+" {
            self.plus.as_ref()
        } else {
            self.children.get(name)
        }
    }
}

#[derive(Debug)]
struct Node<K, V> {
    level: RwLock<Level<K, V>>,
}

impl<K, V> Node<K, V> {
    fn new() -> Self {
        Self {
            level: RwLock::new(Level {
                detached: false,
                children: HashMap::new(),
                plus: None,
                subscribers: None,
            }),
        }
    }

    // A panic elsewhere while a lock was held cannot leave a level half
    // changed (every change is one map operation), so a poisoned lock is
    // taken as it is.
    fn read(&self) -> RwLockReadGuard<'_, Level<K, V>> {
        self.level.read().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn write(&self) -> RwLockWriteGuard<'_, Level<K, V>> {
        self.level.write().unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

/// Approximate heap bytes, for the memory budget: what the allocator is asked
/// for, plus a word per map slot for the maps' spare capacity and control bytes.
const ARC_HEADER: usize = 2 * size_of::<usize>();
const SLOT_OVERHEAD: usize = size_of::<usize>();

/// The figures of an index, read without locking it.
#[derive(Debug, Default)]
struct Figures {
    nodes: AtomicUsize,
    subscriptions: AtomicUsize,
    bytes: AtomicUsize,
}

/// The subscription index. See the module's documentation.
#[derive(Debug)]
pub struct Index<K, V> {
    root: Arc<Node<K, V>>,
    figures: Figures,
}

impl<K: Eq + Hash + Clone, V> Default for Index<K, V> {
    fn default() -> Self {
        Self::new()
    }
}

impl<K: Eq + Hash + Clone, V> Index<K, V> {
    pub fn new() -> Self {
        Self {
            root: Arc::new(Node::new()),
            figures: Figures::default(),
        }
    }

    fn node_bytes(name: &str) -> usize {
        ARC_HEADER + size_of::<Node<K, V>>() + size_of::<(Box<str>, Arc<Node<K, V>>)>() + SLOT_OVERHEAD + name.len()
    }

    fn entry_bytes() -> usize {
        size_of::<(K, V)>() + SLOT_OVERHEAD
    }

    /// Shared members are in a list and a position map both.
    fn member_bytes() -> usize {
        size_of::<(K, V)>() + size_of::<(K, usize)>() + SLOT_OVERHEAD
    }

    fn group_bytes(group: &str) -> usize {
        size_of::<((End, Box<str>), Group<K, V>)>() + SLOT_OVERHEAD + group.len()
    }

    fn grow(&self, bytes: usize) {
        self.figures.bytes.fetch_add(bytes, Ordering::Relaxed);
    }

    fn shrink(&self, bytes: usize) {
        self.figures.bytes.fetch_sub(bytes, Ordering::Relaxed);
    }

    /// Add `key`'s subscription to `filter` (validated), or replace it: a
    /// client subscribing again to a filter it has replaces its subscription
    /// ([MQTT-3.8.4-3]). Returns the one replaced.
    pub fn subscribe(&self, filter: &str, key: K, value: V) -> Option<V> {
        let filter = Filter::parse(filter);
        'again: loop {
            let (path, end) = split(filter.topic);
            let mut node = self.root.clone();
            for name in path {
                let existing = node.read().child(name).cloned();
                node = match existing {
                    Some(child) => child,
                    None => {
                        let mut level = node.write();
                        if level.detached {
                            continue 'again;
                        }
                        if let Some(child) = level.child(name) {
                            child.clone()
                        } else {
                            self.figures.nodes.fetch_add(1, Ordering::Relaxed);
                            self.grow(Self::node_bytes(name));
                            let child = Arc::new(Node::new());
                            if name == "+" {
                                level.plus = Some(child.clone());
                            } else {
                                level.children.insert(name.into(), child.clone());
                            }
                            child
                        }
                    }
                };
            }
            let mut level = node.write();
            if level.detached {
                continue 'again;
            }
            let subscribers = level.subscribers.get_or_insert_with(|| {
                self.grow(size_of::<Subscribers<K, V>>());
                Box::new(Subscribers {
                    here: HashMap::new(),
                    below: HashMap::new(),
                    groups: HashMap::new(),
                })
            });
            let replaced = match filter.group {
                None => subscribers.plain(end).insert(key, value),
                Some(group) => {
                    let group = subscribers
                        .groups
                        .entry((end, group.into()))
                        .or_insert_with_key(|(_, name)| {
                            self.grow(Self::group_bytes(name));
                            Group::new()
                        });
                    let replaced = group.insert(key, value);
                    if replaced.is_none() {
                        self.grow(Self::member_bytes() - Self::entry_bytes());
                    }
                    replaced
                }
            };
            if replaced.is_none() {
                self.figures.subscriptions.fetch_add(1, Ordering::Relaxed);
                self.grow(Self::entry_bytes());
            }
            return replaced;
        }
    }

    /// Remove `key`'s subscription to `filter`; nodes left with nothing are
    /// cut off. Returns the subscription, or `None` if there was none.
    pub fn unsubscribe(&self, filter: &str, key: &K) -> Option<V> {
        let filter = Filter::parse(filter);
        let (names, end) = split(filter.topic);
        let mut path: Vec<(Arc<Node<K, V>>, &str)> = Vec::new();
        let mut node = self.root.clone();
        for name in names {
            let child = node.read().child(name).cloned()?;
            path.push((std::mem::replace(&mut node, child), name));
        }
        let removed = {
            let mut level = node.write();
            let subscribers = level.subscribers.as_mut()?;
            let removed = match filter.group {
                None => subscribers.plain(end).remove(key),
                Some(group) => {
                    let name = (end, Box::<str>::from(group));
                    let members = subscribers.groups.get_mut(&name)?;
                    let removed = members.remove(key);
                    if removed.is_some() {
                        self.shrink(Self::member_bytes() - Self::entry_bytes());
                    }
                    if members.members.is_empty() {
                        subscribers.groups.remove(&name);
                        self.shrink(Self::group_bytes(group));
                    }
                    removed
                }
            };
            if subscribers.is_empty() {
                level.subscribers = None;
                self.shrink(size_of::<Subscribers<K, V>>());
            }
            removed
        }?;
        self.figures.subscriptions.fetch_sub(1, Ordering::Relaxed);
        self.shrink(Self::entry_bytes());
        self.prune(path, node);
        Some(removed)
    }

    /// Cut emptied nodes off from the leaf up, each under its parent's and its
    /// own write lock (always parent first, so two prunes cannot deadlock).
    fn prune(&self, mut path: Vec<(Arc<Node<K, V>>, &str)>, mut node: Arc<Node<K, V>>) {
        while let Some((parent, name)) = path.pop() {
            let mut above = parent.write();
            let mut level = node.write();
            if !level.is_empty() || level.detached {
                return;
            }
            let attached = above.child(name).is_some_and(|child| Arc::ptr_eq(child, &node));
            if !attached {
                return;
            }
            level.detached = true;
            if name == "+" {
                above.plus = None;
            } else {
                above.children.remove(name);
            }
            self.figures.nodes.fetch_sub(1, Ordering::Relaxed);
            self.shrink(Self::node_bytes(name));
            drop(level);
            drop(above);
            node = parent;
        }
    }

    /// Call `visit` for each subscription matching `topic` (a topic name,
    /// validated): every plain subscription, and one member of each shared
    /// group, in turn. A key subscribed through several filters is visited
    /// once for each. Topics starting with `$` are not matched by filters
    /// starting with a wildcard ([MQTT-4.7.2-1]).
    ///
    /// `visit` runs under a node's read lock: it must be short and must not
    /// call back into the index.
    pub fn matches(&self, topic: &str, mut visit: impl FnMut(&K, &V)) {
        let levels: Vec<&str> = topic.split('/').collect();
        let dollar = topic.starts_with('$');
        let mut pending: Vec<(Arc<Node<K, V>>, usize)> = vec![(self.root.clone(), 0)];
        while let Some((node, depth)) = pending.pop() {
            let level = node.read();
            let wildcards = !(depth == 0 && dollar);
            if let Some(subscribers) = &level.subscribers {
                let here = depth == levels.len();
                if wildcards {
                    subscribers.below.iter().for_each(|(k, v)| visit(k, v));
                }
                if here {
                    subscribers.here.iter().for_each(|(k, v)| visit(k, v));
                }
                for ((end, _), group) in &subscribers.groups {
                    let applies = match end {
                        End::Below => wildcards,
                        End::Here => here,
                    };
                    if applies && let Some((k, v)) = group.pick() {
                        visit(k, v);
                    }
                }
            }
            let Some(name) = levels.get(depth) else { continue };
            if let Some(child) = level.children.get(*name) {
                pending.push((child.clone(), depth + 1));
            }
            if wildcards && let Some(plus) = &level.plus {
                pending.push((plus.clone(), depth + 1));
            }
        }
    }

    /// Subscriptions held, shared members included.
    pub fn subscriptions(&self) -> usize {
        self.figures.subscriptions.load(Ordering::Relaxed)
    }

    /// Nodes of the tree: levels of filters, each counted once however many
    /// filters share it.
    pub fn nodes(&self) -> usize {
        self.figures.nodes.load(Ordering::Relaxed)
    }

    /// Bytes the index holds, approximately (see [`ARC_HEADER`] and
    /// [`SLOT_OVERHEAD`]), for the memory budget.
    pub fn bytes(&self) -> usize {
        self.figures.bytes.load(Ordering::Relaxed)
    }
}

#[cfg(test)]
#[path = "index_tests.rs"]
mod tests;
