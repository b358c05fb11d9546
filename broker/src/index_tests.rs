use std::collections::BTreeSet;
use std::sync::Arc;

use super::*;

/// The subscriptions of `index` matching `topic`, as (key, value) pairs.
fn matched(index: &Index<u32, u8>, topic: &str) -> BTreeSet<(u32, u8)> {
    let mut out = BTreeSet::new();
    index.matches(topic, |k, v| {
        out.insert((*k, *v));
    });
    out
}

/// Today's matching, the reference the index is checked against: rumqttd's
/// `matches` for ordinary topics (what its router matches with), and the
/// ACL's for `$` topics (what the session matches its `$SYS` filters with,
/// rumqttd matching none), with no wildcard first ([MQTT-4.7.2-1]).
fn reference(filter: &str, topic: &str) -> bool {
    let filter = Filter::parse(filter).topic;
    if topic.starts_with('$') {
        !filter.starts_with(['+', '#']) && crate::auth::acl::matches(filter, topic)
    } else {
        let ours = rumqttd::protocol::matches(topic, filter);
        assert_eq!(ours, crate::auth::acl::matches(filter, topic), "{filter} {topic}");
        ours
    }
}

#[test]
fn the_specifications_examples_match() {
    // MQTT 3.1.1 §4.7.1.2, §4.7.1.3 and §4.7.2; MQTT 5 §4.7.1 and §4.7.2.
    let cases: &[(&str, &str, bool)] = &[
        ("sport/tennis/player1/#", "sport/tennis/player1", true),
        ("sport/tennis/player1/#", "sport/tennis/player1/ranking", true),
        ("sport/tennis/player1/#", "sport/tennis/player1/score/wimbledon", true),
        ("sport/#", "sport", true), // [MQTT-4.7.1-2]: `#` matches the parent level too
        ("#", "sport/tennis", true),
        ("sport/tennis/+", "sport/tennis/player1", true),
        ("sport/tennis/+", "sport/tennis/player1/ranking", false),
        ("sport/+", "sport", false),
        ("sport/+", "sport/", true),
        ("+/+", "/finance", true),
        ("/+", "/finance", true),
        ("+", "/finance", false),
        ("+/tennis/#", "sport/tennis/player1", true),
        ("sport/+/player1", "sport/tennis/player1", true),
        ("sport", "Sport", false), // [MQTT-4.7.3-4]: case matters
        ("sport/tennis", "sport/tennis/", false),
        ("#", "$SYS/broker/uptime", false), // [MQTT-4.7.2-1]
        ("+/monitor/Clients", "$SYS/monitor/Clients", false),
        ("$SYS/#", "$SYS/monitor/Clients", true),
        ("$SYS/monitor/+", "$SYS/monitor/Clients", true),
        ("$SYS/#", "$SYS", true),
        ("$share/g/sport/#", "sport/tennis", true),
        ("$share/g/#", "$SYS/x", false),
    ];
    for &(filter, topic, expected) in cases {
        let index = Index::new();
        index.subscribe(filter, 1, 0);
        assert_eq!(!matched(&index, topic).is_empty(), expected, "{filter} against {topic}");
        assert_eq!(
            reference(filter, topic),
            expected,
            "the reference: {filter} against {topic}"
        );
    }
}

/// A small deterministic generator: the tests need no seed file and no crate.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }

    fn pick<'a>(&mut self, of: &[&'a str]) -> &'a str {
        of[(self.next() % of.len() as u64) as usize]
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

fn random_topic(rng: &mut Rng) -> String {
    let first = ["a", "b", "$SYS", "", "é"];
    let rest = ["a", "b", "c", ""];
    let mut levels = vec![rng.pick(&first)];
    for _ in 0..rng.below(4) {
        levels.push(rng.pick(&rest));
    }
    let topic = levels.join("/");
    if topic.is_empty() { "/".to_owned() } else { topic }
}

fn random_filter(rng: &mut Rng) -> String {
    let first = ["a", "b", "$SYS", "", "é", "+", "#"];
    let rest = ["a", "b", "c", "", "+", "#"];
    let mut levels = vec![rng.pick(&first)];
    while levels.last() != Some(&"#") && rng.below(3) != 0 {
        levels.push(rng.pick(&rest));
    }
    let mut filter = levels.join("/");
    if filter.is_empty() {
        filter.push('/');
    }
    match rng.below(6) {
        0 => format!("$share/g{}/{filter}", rng.below(2)),
        _ => filter,
    }
}

#[test]
fn random_filters_match_as_todays_matching_does() {
    let mut rng = Rng(0x5eed_1234_abcd_0001);
    for round in 0..200 {
        let index = Index::new();
        let mut filters = Vec::new();
        for key in 0..rng.below(30) as u32 {
            let filter = random_filter(&mut rng);
            crate::validate::topic_filter(&filter).expect("the generator makes valid filters");
            index.subscribe(&filter, key, 0);
            filters.push((key, filter));
        }
        for _ in 0..50 {
            let topic = random_topic(&mut rng);
            let plain: BTreeSet<(u32, u8)> = filters
                .iter()
                .filter(|(_, f)| Filter::parse(f).group.is_none() && reference(f, &topic))
                .map(|(k, _)| (*k, 0))
                .collect();
            let shared_filters: BTreeSet<&str> = filters
                .iter()
                .filter(|(_, f)| Filter::parse(f).group.is_some() && reference(f, &topic))
                .map(|(_, f)| f.as_str())
                .collect();
            let got = matched(&index, &topic);
            let got_plain: BTreeSet<(u32, u8)> = got
                .iter()
                .filter(|(k, _)| Filter::parse(&filters[*k as usize].1).group.is_none())
                .copied()
                .collect();
            assert_eq!(got_plain, plain, "round {round}, topic {topic:?}, filters {filters:?}");
            // Each matching group (distinct filter strings here: one member
            // each) gives exactly one delivery.
            assert_eq!(
                got.len() - got_plain.len(),
                shared_filters.len(),
                "round {round}, topic {topic:?}"
            );
        }
    }
}

#[test]
fn a_subscription_again_replaces_it_and_unsubscribing_empties_the_index() {
    // [MQTT-3.8.4-3]: the same filter again replaces the subscription.
    let index = Index::new();
    assert_eq!(index.subscribe("a/+/c", 1, 0), None);
    assert_eq!(index.subscribe("a/+/c", 1, 2), Some(0));
    assert_eq!(index.subscriptions(), 1);
    assert_eq!(matched(&index, "a/b/c"), BTreeSet::from([(1, 2)]));

    let filters = [
        "a/+/c",
        "a/#",
        "#",
        "+",
        "/#",
        "$share/g/a/#",
        "$share/h/a/b/c",
        "a/b/c",
        "$SYS/#",
    ];
    for (key, filter) in filters.iter().enumerate() {
        index.subscribe(filter, key as u32 + 10, 1);
    }
    assert!(index.bytes() > 0);
    assert!(index.nodes() > 0);
    assert_eq!(index.unsubscribe("a/+/c", &7), None, "not this key's");
    assert_eq!(index.unsubscribe("a/x", &1), None, "no such filter");
    assert_eq!(index.unsubscribe("$share/g/a/#", &10), None, "not a member");
    for (key, filter) in filters.iter().enumerate() {
        assert_eq!(index.unsubscribe(filter, &(key as u32 + 10)), Some(1), "{filter}");
    }
    assert_eq!(index.unsubscribe("a/+/c", &1), Some(2));
    assert_eq!(index.subscriptions(), 0);
    assert_eq!(index.nodes(), 0, "every emptied node is cut off");
    assert_eq!(index.bytes(), 0, "and its bytes given back");
    assert!(index.root.read().is_empty());
}

#[test]
fn a_shared_group_gives_each_message_to_one_member_in_turn() {
    // MQTT 5 §4.8.2: each message to one session of the group; two groups on
    // the same filter each get it; a plain subscriber gets it too.
    let index = Index::new();
    for member in 1..=3 {
        index.subscribe("$share/workers/jobs/+", member, 1);
    }
    index.subscribe("$share/audit/jobs/#", 9, 1);
    index.subscribe("jobs/+", 20, 0);
    let mut turns = Vec::new();
    for _ in 0..6 {
        let got = matched(&index, "jobs/1");
        let workers: Vec<u32> = got.iter().map(|(k, _)| *k).filter(|k| (1..=3).contains(k)).collect();
        assert_eq!(workers.len(), 1, "one worker per message: {got:?}");
        assert!(got.contains(&(9, 1)) && got.contains(&(20, 0)), "{got:?}");
        turns.push(workers[0]);
    }
    assert_eq!(
        turns[..3].iter().collect::<BTreeSet<_>>().len(),
        3,
        "in turn: {turns:?}"
    );
    assert_eq!(turns[..3], turns[3..], "round robin: {turns:?}");

    // A member that leaves is no longer served; the rest share.
    index.unsubscribe("$share/workers/jobs/+", &2);
    for _ in 0..4 {
        assert!(!matched(&index, "jobs/1").contains(&(2, 1)));
    }
    index.unsubscribe("$share/workers/jobs/+", &1);
    index.unsubscribe("$share/workers/jobs/+", &3);
    assert_eq!(matched(&index, "jobs/1"), BTreeSet::from([(9, 1), (20, 0)]));
}

#[test]
fn a_key_with_overlapping_filters_is_visited_once_for_each() {
    let index = Index::new();
    index.subscribe("a/#", 1, 0);
    index.subscribe("a/+", 1, 1);
    index.subscribe("a/b", 1, 2);
    let mut visits = Vec::new();
    index.matches("a/b", |k, v| visits.push((*k, *v)));
    visits.sort();
    assert_eq!(visits, [(1, 0), (1, 1), (1, 2)]);
}

#[test]
fn publishers_see_every_standing_subscription_while_others_come_and_go() {
    // The index read from several threads while others subscribe and
    // unsubscribe on the same paths: a subscription that stands all along is
    // matched by every publish, and the churn leaves nothing behind.
    let index: Arc<Index<u32, u8>> = Arc::new(Index::new());
    index.subscribe("site/+/temp", 0, 1);
    index.subscribe("site/#", 1, 1);
    let filters = [
        "site/x/temp",
        "site/+/temp",
        "site/x/#",
        "site/x/temp/#",
        "$share/g/site/x/temp",
        "+/x/temp",
    ];
    std::thread::scope(|scope| {
        for writer in 0..2u32 {
            let index = &index;
            scope.spawn(move || {
                let mut rng = Rng(0x9e37_79b9_7f4a_7c15 + u64::from(writer));
                for _ in 0..20_000 {
                    let filter = rng.pick(&filters);
                    let key = 100 + writer * 10 + rng.below(4) as u32;
                    if rng.below(2) == 0 {
                        index.subscribe(filter, key, 0);
                    } else {
                        index.unsubscribe(filter, &key);
                    }
                }
                for filter in filters {
                    for key in 0..4 {
                        index.unsubscribe(filter, &(100 + writer * 10 + key));
                    }
                }
            });
        }
        for _ in 0..2 {
            let index = &index;
            scope.spawn(move || {
                for _ in 0..20_000 {
                    let got = matched(index, "site/x/temp");
                    assert!(got.contains(&(0, 1)) && got.contains(&(1, 1)), "{got:?}");
                }
            });
        }
    });
    assert_eq!(index.subscriptions(), 2);
    for filter in ["site/+/temp", "site/#"] {
        assert!(
            index
                .unsubscribe(filter, &0)
                .or(index.unsubscribe(filter, &1))
                .is_some()
        );
    }
    assert_eq!((index.nodes(), index.bytes()), (0, 0));
}

#[test]
fn bytes_grow_with_what_is_held() {
    let index: Index<u32, u8> = Index::new();
    index.subscribe("a/b/c", 1, 0);
    let one = index.bytes();
    index.subscribe("a/b/c", 2, 0);
    let two = index.bytes();
    assert!(
        two > one && two - one < one,
        "a second subscriber costs an entry, not a path"
    );
    index.subscribe(&format!("a/{}", "x".repeat(1000)), 1, 0);
    assert!(index.bytes() > two + 1000, "level names are counted");
}
