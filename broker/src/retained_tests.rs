use std::collections::BTreeSet;

use super::*;

/// Messages here are their topics, counted at their length.
fn keep(store: &Store<String>, topic: &str) -> Outcome {
    store.retain(topic, Some((topic.to_owned(), topic.len())))
}

fn found(store: &Store<String>, filter: &str) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    store.matching(filter, |m| {
        out.insert(m.clone());
    });
    out
}

#[test]
fn a_retained_message_is_kept_replaced_and_cleared() {
    let store = Store::new(1 << 20);
    // [MQTT-3.3.1-5]: kept, and replaces the topic's previous one.
    assert_eq!(keep(&store, "a/b"), Outcome::Stored);
    assert_eq!(store.retain("a/b", Some(("second".to_owned(), 6))), Outcome::Replaced);
    assert_eq!(found(&store, "a/b"), BTreeSet::from(["second".to_owned()]));
    assert_eq!(store.messages(), 1);
    // [MQTT-3.3.1-10], [MQTT-3.3.1-11]: an empty one clears the topic and is
    // not kept itself.
    assert_eq!(store.retain("a/b", None), Outcome::Cleared);
    assert_eq!(store.retain("a/b", None), Outcome::Unchanged);
    assert!(found(&store, "#").is_empty());
    assert_eq!((store.messages(), store.bytes()), (0, 0), "levels are cut off with it");
    assert!(store.read().is_empty());
}

#[test]
fn filters_find_what_todays_matching_would() {
    let topics = [
        "a",
        "a/b",
        "a/b/c",
        "a/c",
        "b/b",
        "/",
        "/a",
        "a/",
        "$SYS/broker/uptime",
        "$SYS",
        "é/x",
        "a/b/c/d/e",
    ];
    let filters = [
        "#",
        "+",
        "a/#",
        "a/+",
        "+/b",
        "+/+",
        "/+",
        "a/b/#",
        "$SYS/#",
        "$SYS/+/uptime",
        "+/broker/uptime",
        "a/+/c",
        "é/#",
        "a",
        "x/#",
        "+/#",
        "/#",
        "a/b/c/d/e",
    ];
    let store = Store::new(1 << 20);
    for topic in topics {
        keep(&store, topic);
    }
    for filter in filters {
        let expected: BTreeSet<String> = topics
            .iter()
            .filter(|t| {
                // As the index's tests: rumqttd's matching, `$` apart.
                if t.starts_with('$') {
                    !filter.starts_with(['+', '#']) && crate::auth::acl::matches(filter, t)
                } else {
                    rumqttd::protocol::matches(t, filter)
                }
            })
            .map(|t| (*t).to_owned())
            .collect();
        assert_eq!(found(&store, filter), expected, "{filter}");
    }
}

#[test]
fn the_store_stays_within_its_bytes() {
    let levels = level_bytes("t") + level_bytes("1");
    let store = Store::new(levels + 150);
    assert_eq!(store.retain("t/1", Some(("x".to_owned(), 100))), Outcome::Stored);
    let one = store.bytes();
    assert_eq!(one, levels + 100, "levels count too");
    assert_eq!(store.retain("t/2", Some(("y".to_owned(), 100))), Outcome::OverBudget);
    assert_eq!(store.bytes(), one, "nothing of the refused one is left");
    assert_eq!(
        store.retain("t/1", Some(("z".to_owned(), 100))),
        Outcome::Replaced,
        "a replacement frees its predecessor"
    );
    // One that does not fit takes the value it replaces with it: a new
    // subscriber must not be told what the publisher replaced.
    assert_eq!(store.retain("t/1", Some(("big".to_owned(), 300))), Outcome::OverBudget);
    assert!(found(&store, "t/1").is_empty());
    assert_eq!((store.messages(), store.bytes()), (0, 0));
    assert_eq!(
        store.retain("t/1", None),
        Outcome::Unchanged,
        "clearing is always allowed"
    );
}

#[test]
fn removed_messages_take_their_empty_levels_and_bytes_with_them() {
    let store = Store::new(1 << 20);
    keep(&store, "a/b/c");
    keep(&store, "a/x");
    let before = store.bytes();
    keep(&store, "d/e");
    assert_eq!(store.remove_if(|m| m.starts_with("d/") || m == "a/b/c"), 2);
    assert_eq!(found(&store, "#"), BTreeSet::from(["a/x".to_owned()]));
    assert_eq!(store.messages(), 1);
    // What is left costs what "a/x" alone costs.
    let alone = Store::new(1 << 20);
    keep(&alone, "a/x");
    assert_eq!(store.bytes(), alone.bytes());
    assert!(store.bytes() < before);
    assert_eq!(store.remove_if(|_| true), 1);
    assert_eq!(store.bytes(), 0);
}
