//! The retained store: the last retained message of each topic, found by the
//! filters of new subscriptions (MQTT 3.1.1 §3.3.1.3, MQTT 5 §3.3.1.3).
//!
//! A tree by topic level of its own, as Mosquitto's `retain.c` keeps one: a
//! SUBSCRIBE walks only the branches its filter can match, and `#` takes a
//! whole branch. One `RwLock` guards it: a retained PUBLISH holds it to write
//! for a path's length, a SUBSCRIBE to read while it collects, and ordinary
//! publishes (not retained) never touch it.
//!
//! Generic over the message (`M`): the store keeps what it is given and the
//! size the caller says it has, and counts every byte against `max_bytes`.

use std::collections::HashMap;
use std::mem::size_of;
use std::sync::RwLock;
use std::sync::atomic::{AtomicUsize, Ordering};

/// What became of a retained publish.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// Kept; the topic had none.
    Stored,
    /// Kept in place of the topic's previous message.
    Replaced,
    /// An empty retained message removed the topic's ([MQTT-3.3.1-10]).
    Cleared,
    /// An empty retained message, for a topic that had none.
    Unchanged,
    /// Not kept: it would take the store past `max_bytes`. The topic's
    /// previous message is removed too: a new subscriber must not be told a
    /// value its publisher has replaced.
    OverBudget,
}

#[derive(Debug)]
struct Tree<M> {
    children: HashMap<Box<str>, Tree<M>>,
    /// The message and the bytes it was counted at.
    message: Option<(M, usize)>,
}

impl<M> Tree<M> {
    fn new() -> Self {
        Self {
            children: HashMap::new(),
            message: None,
        }
    }

    fn is_empty(&self) -> bool {
        self.message.is_none() && self.children.is_empty()
    }
}

/// Bytes a level of the tree costs beyond the message: its map slot and name.
fn level_bytes(name: &str) -> usize {
    size_of::<(Box<str>, Tree<()>)>() + size_of::<usize>() + name.len()
}

/// The retained store. See the module's documentation.
#[derive(Debug)]
pub struct Store<M> {
    tree: RwLock<Tree<M>>,
    max_bytes: usize,
    bytes: AtomicUsize,
    messages: AtomicUsize,
}

impl<M> Store<M> {
    pub fn new(max_bytes: usize) -> Self {
        Self {
            tree: RwLock::new(Tree::new()),
            max_bytes,
            bytes: AtomicUsize::new(0),
            messages: AtomicUsize::new(0),
        }
    }

    // Every change below completes or leaves the tree as it was before a
    // panic could strike (map operations), so a poisoned lock is taken as is.
    fn write(&self) -> std::sync::RwLockWriteGuard<'_, Tree<M>> {
        self.tree.write().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn read(&self) -> std::sync::RwLockReadGuard<'_, Tree<M>> {
        self.tree.read().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// A retained PUBLISH to `topic` (validated): `Some((message, bytes))` to
    /// keep, `None` for one with an empty payload, which clears the topic
    /// ([MQTT-3.3.1-10]) and is itself not kept ([MQTT-3.3.1-11]).
    pub fn retain(&self, topic: &str, message: Option<(M, usize)>) -> Outcome {
        let mut tree = self.write();
        let levels: Vec<&str> = topic.split('/').collect();
        let mut freed = 0;
        let previous = take(&mut tree, &levels, &mut freed);
        if let Some((_, size)) = &previous {
            freed += size;
            self.messages.fetch_sub(1, Ordering::Relaxed);
        }
        let mut held = self.bytes.load(Ordering::Relaxed) - freed;
        let outcome = match (message, previous.is_some()) {
            (None, true) => Outcome::Cleared,
            (None, false) => Outcome::Unchanged,
            (Some((message, size)), had) => {
                let needed = size.saturating_add(missing(&tree, &levels));
                if held.saturating_add(needed) > self.max_bytes {
                    Outcome::OverBudget
                } else {
                    let mut node = &mut *tree;
                    for name in &levels {
                        node = node.children.entry((*name).into()).or_insert_with(Tree::new);
                    }
                    node.message = Some((message, size));
                    held += needed;
                    self.messages.fetch_add(1, Ordering::Relaxed);
                    if had { Outcome::Replaced } else { Outcome::Stored }
                }
            }
        };
        self.bytes.store(held, Ordering::Relaxed);
        outcome
    }

    /// Call `visit` with each retained message whose topic `filter` (a plain
    /// filter, validated) matches. Topics starting with `$` are not matched by
    /// a wildcard first level ([MQTT-4.7.2-1]).
    pub fn matching(&self, filter: &str, mut visit: impl FnMut(&M)) {
        fn all<M>(node: &Tree<M>, root: bool, visit: &mut impl FnMut(&M)) {
            if let Some((message, _)) = &node.message {
                visit(message);
            }
            for (name, child) in &node.children {
                if !(root && name.starts_with('$')) {
                    all(child, false, visit);
                }
            }
        }
        fn walk<M>(node: &Tree<M>, levels: &[&str], root: bool, visit: &mut impl FnMut(&M)) {
            match levels.split_first() {
                None => {
                    if let Some((message, _)) = &node.message {
                        visit(message);
                    }
                }
                // `a/#` matches `a` too ([MQTT-4.7.1-2]).
                Some((&"#", _)) => all(node, root, visit),
                Some((&"+", rest)) => {
                    for (name, child) in &node.children {
                        if !(root && name.starts_with('$')) {
                            walk(child, rest, false, visit);
                        }
                    }
                }
                Some((name, rest)) => {
                    if let Some(child) = node.children.get(*name) {
                        walk(child, rest, false, visit);
                    }
                }
            }
        }
        let levels: Vec<&str> = filter.split('/').collect();
        walk(&self.read(), &levels, true, &mut visit);
    }

    /// Remove every message `dead` picks (those whose expiry interval ran
    /// out), and the levels they leave empty: how many went. One walk of the
    /// whole tree under the write lock, so the caller runs it seldom.
    pub fn remove_if(&self, dead: impl Fn(&M) -> bool) -> usize {
        fn sweep<M>(node: &mut Tree<M>, dead: &impl Fn(&M) -> bool, removed: &mut usize, freed: &mut usize) {
            if node.message.as_ref().is_some_and(|(message, _)| dead(message))
                && let Some((_, size)) = node.message.take()
            {
                *removed += 1;
                *freed += size;
            }
            node.children.retain(|name, child| {
                sweep(child, dead, removed, freed);
                let keep = !child.is_empty();
                if !keep {
                    *freed += level_bytes(name);
                }
                keep
            });
        }
        let mut tree = self.write();
        let (mut removed, mut freed) = (0, 0);
        sweep(&mut tree, &dead, &mut removed, &mut freed);
        self.bytes.fetch_sub(freed, Ordering::Relaxed);
        self.messages.fetch_sub(removed, Ordering::Relaxed);
        removed
    }

    /// Messages held.
    pub fn messages(&self) -> usize {
        self.messages.load(Ordering::Relaxed)
    }

    /// Bytes held: the messages as their sizes were given, and the levels.
    pub fn bytes(&self) -> usize {
        self.bytes.load(Ordering::Relaxed)
    }
}

/// The bytes of the levels of `levels` that `tree` does not have yet.
fn missing<M>(tree: &Tree<M>, levels: &[&str]) -> usize {
    let mut node = tree;
    for (depth, name) in levels.iter().enumerate() {
        match node.children.get(*name) {
            Some(child) => node = child,
            None => return levels[depth..].iter().map(|name| level_bytes(name)).sum(),
        }
    }
    0
}

/// Remove the message at `levels` and cut the levels it leaves empty, adding
/// their bytes to `freed`.
fn take<M>(node: &mut Tree<M>, levels: &[&str], freed: &mut usize) -> Option<(M, usize)> {
    let Some((name, rest)) = levels.split_first() else {
        return node.message.take();
    };
    let child = node.children.get_mut(*name)?;
    let taken = take(child, rest, freed);
    if child.is_empty() {
        node.children.remove(*name);
        *freed += level_bytes(name);
    }
    taken
}

#[cfg(test)]
#[path = "retained_tests.rs"]
mod tests;
