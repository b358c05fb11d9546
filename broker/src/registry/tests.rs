use super::*;
use crate::message::Version;
use crate::outbox::{Outgoing, Peer};
use std::num::NonZeroU32;

/// MQTT 3.1.1's clean session on, and off.
const CLEAN: Continuity = Continuity {
    resume: false,
    keep: false,
};
const PERSISTENT: Continuity = Continuity {
    resume: true,
    keep: true,
};

fn registry() -> Registry {
    let budget = Arc::new(Budget::new(1 << 20, prometheus::IntGauge::new("b", "test").unwrap()));
    let limits = outbox::Limits {
        max_inflight: 20,
        max_queued_messages: 100,
        max_queued_bytes: 0,
        queue_qos0_offline: false,
    };
    Registry::new(limits, 1 << 20, budget)
}

fn message(registry: &Registry, topic: &str, payload: &str, qos: QoS) -> Arc<Message> {
    let publish = Publish::delivery(topic.to_owned(), payload.to_owned(), qos, 0, false, false);
    Message::new(publish, None, None, &registry.budget).unwrap()
}

fn everyone(_: &SessionState, _: &[u8]) -> bool {
    true
}

/// What the session's outbox gives now: (payload, QoS, retain, DUP).
fn written(session: &SessionState) -> Vec<(String, QoS, bool, bool)> {
    let mut outbox = session.outbox();
    std::iter::from_fn(|| outbox.next_to_write(&Peer::unbounded(Version::V5, std::time::Instant::now())))
        .filter_map(|out| match out {
            Outgoing::Publish { delivery, dup, .. } => Some((
                String::from_utf8_lossy(delivery.message.payload()).into_owned(),
                delivery.qos,
                delivery.retain,
                dup,
            )),
            Outgoing::PubRel(_) | Outgoing::Dropped { .. } => None,
        })
        .collect()
}

fn qos1() -> Options {
    Options::at(QoS::AtLeastOnce)
}

#[test]
fn delivery_qos_is_the_lower_of_the_publish_and_the_subscription() {
    // [MQTT-3.8.4-6]
    let registry = registry();
    let claim = registry.connect("sub", None, CLEAN, Arc::default()).unwrap();
    registry
        .subscribe(&claim.session, "t/+", qos1(), RetainHandling::Send, |_| true)
        .unwrap();
    for qos in [QoS::ExactlyOnce, QoS::AtMostOnce] {
        let fanout = registry.publish(&message(&registry, "t/1", "m", qos), None, everyone);
        assert_eq!(fanout.queued.iter().sum::<u64>(), 1);
    }
    let got: Vec<QoS> = written(&claim.session).into_iter().map(|(_, qos, ..)| qos).collect();
    assert_eq!(got, [QoS::AtLeastOnce, QoS::AtMostOnce]);
}

#[test]
fn a_clean_session_ends_with_its_connection() {
    let registry = registry();
    let claim = registry.connect("c", None, CLEAN, Arc::default()).unwrap();
    assert!(!claim.present, "[MQTT-3.2.2-2]");
    registry
        .subscribe(&claim.session, "a/#", qos1(), RetainHandling::Send, |_| true)
        .unwrap();
    registry.disconnect("c", claim.generation, Leave::End, Instant::now());
    assert!(registry.is_empty());
    assert_eq!(registry.figures().subscriptions, 0, "its subscriptions left the index");
    let again = registry.connect("c", None, PERSISTENT, Arc::default()).unwrap();
    assert!(!again.present, "nothing to resume");
}

#[test]
fn a_persistent_session_fills_while_away_and_resumes_in_order() {
    let registry = registry();
    let claim = registry
        .connect("p", Some("alice".into()), PERSISTENT, Arc::default())
        .unwrap();
    registry
        .subscribe(&claim.session, "a/#", qos1(), RetainHandling::Send, |_| true)
        .unwrap();
    registry.publish(
        &message(&registry, "a/1", "in flight", QoS::AtLeastOnce),
        None,
        everyone,
    );
    assert_eq!(written(&claim.session).len(), 1, "written, not acknowledged");
    registry.disconnect("p", claim.generation, Leave::Keep, Instant::now());

    let away = registry.publish(&message(&registry, "a/2", "queued", QoS::AtLeastOnce), None, everyone);
    assert_eq!(away.queued, [0, 1, 0]);
    // QoS 0 is not queued for an away client without `queue_qos0_messages`.
    let lost = registry.publish(&message(&registry, "a/3", "qos 0", QoS::AtMostOnce), None, everyone);
    assert_eq!(lost.dropped, [(Refused::Away, QoS::AtMostOnce)]);

    let back = registry
        .connect("p", Some("alice".into()), PERSISTENT, Arc::default())
        .unwrap();
    assert!(back.present, "[MQTT-3.2.2-3]");
    assert!(Arc::ptr_eq(&back.session, &claim.session), "the same session");
    // [MQTT-4.4.0-1], [MQTT-3.3.1-1]: what was in flight again, with DUP,
    // then what waited.
    assert_eq!(
        written(&back.session),
        [
            ("in flight".into(), QoS::AtLeastOnce, false, true),
            ("queued".into(), QoS::AtLeastOnce, false, false)
        ]
    );
    assert_eq!(back.session.subscriptions(), [("a/#".to_owned(), qos1())]);
}

#[test]
fn clean_start_or_another_user_discards_the_session_there_was() {
    let registry = registry();
    for (user, clean) in [(Some("alice"), true), (Some("mallory"), false)] {
        let first = registry
            .connect("id", Some("alice".into()), PERSISTENT, Arc::default())
            .unwrap();
        registry
            .subscribe(&first.session, "secret/#", qos1(), RetainHandling::Send, |_| true)
            .unwrap();
        registry.disconnect("id", first.generation, Leave::Keep, Instant::now());
        let second = registry
            .connect(
                "id",
                user.map(Into::into),
                if clean { CLEAN } else { PERSISTENT },
                Arc::default(),
            )
            .unwrap();
        assert!(!second.present, "{user:?} {clean}");
        assert!(second.session.subscriptions().is_empty());
        assert_eq!(
            registry.figures().subscriptions,
            0,
            "the old session's subscriptions are gone"
        );
        registry.disconnect("id", second.generation, Leave::End, Instant::now());
    }
}

#[test]
fn a_second_connection_takes_the_session_over() {
    // [MQTT-3.1.4-2]: the connection there was is closed; its end then
    // changes nothing.
    let registry = registry();
    let first_token: Arc<Eviction> = Arc::default();
    let first = registry.connect("id", None, PERSISTENT, first_token.clone()).unwrap();
    registry
        .subscribe(&first.session, "t", qos1(), RetainHandling::Send, |_| true)
        .unwrap();
    let second = registry.connect("id", None, PERSISTENT, Arc::default()).unwrap();
    assert!(first_token.is_evicted());
    assert!(second.present);
    registry.disconnect("id", first.generation, Leave::End, Instant::now());
    assert_eq!(registry.len(), 1, "the old connection's end is ignored");
    assert_eq!(registry.figures().subscriptions, 1);
    registry.publish(&message(&registry, "t", "m", QoS::AtLeastOnce), None, everyone);
    assert_eq!(written(&second.session).len(), 1);
}

#[test]
fn an_away_session_expires_on_time() {
    let registry = registry();
    let start = Instant::now();
    let claim = registry.connect("e", None, PERSISTENT, Arc::default()).unwrap();
    registry
        .subscribe(&claim.session, "t", qos1(), RetainHandling::Send, |_| true)
        .unwrap();
    registry.disconnect("e", claim.generation, Leave::KeepFor(Duration::from_secs(10)), start);
    assert_eq!(registry.expire(start + Duration::from_secs(9)), 0);
    assert_eq!(registry.expire(start + Duration::from_secs(10)), 1);
    assert!(registry.is_empty());
    assert_eq!(registry.figures().subscriptions, 0);
    // A subscription its connection was still making adds nothing now.
    registry
        .subscribe(&claim.session, "late", qos1(), RetainHandling::Send, |_| true)
        .unwrap();
    assert_eq!(registry.figures().subscriptions, 0);
}

#[test]
fn retained_messages_go_to_new_subscriptions_at_their_qos() {
    let registry = registry();
    let retained = |topic: &str, payload: &str, qos| {
        let publish = Publish::delivery(topic.to_owned(), payload.to_owned(), qos, 0, false, true);
        registry.retain(topic, publish, None, None)
    };
    assert_eq!(retained("r/1", "one", QoS::ExactlyOnce), retained::Outcome::Stored);
    assert_eq!(retained("r/2", "two", QoS::AtMostOnce), retained::Outcome::Stored);
    assert_eq!(retained("r/3", "three", QoS::AtLeastOnce), retained::Outcome::Stored);
    assert_eq!(
        retained("r/3", "", QoS::AtLeastOnce),
        retained::Outcome::Cleared,
        "[MQTT-3.3.1-10]"
    );
    let claim = registry.connect("s", None, CLEAN, Arc::default()).unwrap();
    // [MQTT-3.3.1-6], [MQTT-3.3.1-8]: sent on subscribe with retain set, at
    // the lower QoS; the ACL is asked for each.
    let fanout = registry
        .subscribe(&claim.session, "r/+", qos1(), RetainHandling::Send, |topic| {
            topic != b"r/2"
        })
        .unwrap();
    assert_eq!((fanout.queued, fanout.withheld), ([0, 1, 0], 1));
    assert_eq!(written(&claim.session), [("one".into(), QoS::AtLeastOnce, true, false)]);
    // A shared subscription gets none (MQTT 5 §4.8.2).
    let shared = registry
        .subscribe(&claim.session, "$share/g/r/+", qos1(), RetainHandling::Send, |_| true)
        .unwrap();
    assert_eq!(shared, Fanout::default());
    // Copies of a publish go with retain off ([MQTT-3.3.1-9]).
    registry.publish(&message(&registry, "r/1", "live", QoS::AtLeastOnce), None, everyone);
    let live = written(&claim.session);
    assert_eq!(live.len(), 2, "one per matching subscription: {live:?}");
    assert!(live.iter().all(|(_, _, retain, _)| !retain));
}

#[test]
fn the_acl_at_delivery_withholds_a_copy() {
    let registry = registry();
    let reader = registry
        .connect("reader", Some("r".into()), CLEAN, Arc::default())
        .unwrap();
    let other = registry
        .connect("other", Some("o".into()), CLEAN, Arc::default())
        .unwrap();
    registry
        .subscribe(&reader.session, "#", qos1(), RetainHandling::Send, |_| true)
        .unwrap();
    registry
        .subscribe(&other.session, "#", qos1(), RetainHandling::Send, |_| true)
        .unwrap();
    let fanout = registry.publish(&message(&registry, "x", "m", QoS::AtMostOnce), None, |session, _| {
        session.user() == Some("r")
    });
    assert_eq!((fanout.queued, fanout.withheld), ([1, 0, 0], 1));
    assert_eq!(written(&other.session), []);
}

#[test]
fn a_clean_session_taken_over_ends_and_a_persistent_one_is_resumed() {
    // §3.1.2.4: a clean session lasts as long as its connection, so the
    // connection that takes it over finds none (Session Present 0) even
    // without clean session; the one it ended learns its session is over
    // (its will is due, as Mosquitto sends it).
    let registry = registry();
    let first = registry.connect("id", None, CLEAN, Arc::default()).unwrap();
    registry
        .subscribe(&first.session, "t", qos1(), RetainHandling::Send, |_| true)
        .unwrap();
    let second = registry.connect("id", None, PERSISTENT, Arc::default()).unwrap();
    assert!(!second.present);
    assert!(first.session.is_ended());
    assert!(second.session.subscriptions().is_empty());
    assert_eq!(registry.figures().subscriptions, 0);
    // A persistent session taken over without clean start goes on.
    let third = registry.connect("id", None, PERSISTENT, Arc::default()).unwrap();
    assert!(third.present);
    assert!(!second.session.is_ended());
    assert!(Arc::ptr_eq(&second.session, &third.session));
    // With clean start it ends.
    let fourth = registry.connect("id", None, CLEAN, Arc::default()).unwrap();
    assert!(!fourth.present);
    assert!(third.session.is_ended());
}

#[test]
fn qos_2_packet_ids_received_outlive_the_connection() {
    // §4.3.3, [MQTT-4.4.0-1]: a QoS 2 PUBLISH sent again after a reconnect,
    // before its PUBREL, is not delivered again; a clean start forgets them.
    let registry = registry();
    let first = registry.connect("p", None, PERSISTENT, Arc::default()).unwrap();
    let any = usize::MAX;
    assert_eq!(first.session.receive_qos2(7, any), Received::New);
    assert_eq!(first.session.receive_qos2(7, any), Received::Again);
    registry.disconnect("p", first.generation, Leave::Keep, Instant::now());
    let back = registry.connect("p", None, PERSISTENT, Arc::default()).unwrap();
    assert_eq!(
        back.session.receive_qos2(7, any),
        Received::Again,
        "still waiting for its PUBREL"
    );
    assert!(back.session.release_qos2(7));
    assert!(!back.session.release_qos2(7));
    assert_eq!(
        back.session.receive_qos2(7, any),
        Received::New,
        "a new message with the id"
    );
    let clean = registry.connect("p", None, CLEAN, Arc::default()).unwrap();
    assert_eq!(clean.session.receive_qos2(7, any), Received::New);
    // MQTT 5 §3.3.4: past the quota a new id is refused; one sent again is
    // still recognised.
    assert_eq!(clean.session.receive_qos2(8, 2), Received::New);
    assert_eq!(clean.session.receive_qos2(9, 2), Received::OverQuota);
    assert_eq!(clean.session.receive_qos2(8, 2), Received::Again);
}

#[test]
fn a_full_index_refuses_new_filters_and_keeps_the_ones_there() {
    // The session's own cost is in the share too.
    let share = 2000 + crate::registry::SESSION_BYTES + 8;
    let registry = registry().with_index_share(share);
    let claim = registry.connect("many", None, CLEAN, Arc::default()).unwrap();
    let mut taken = 0;
    while registry
        .subscribe(
            &claim.session,
            &format!("f/{taken}"),
            qos1(),
            RetainHandling::Send,
            |_| true,
        )
        .is_ok()
    {
        taken += 1;
        assert!(taken < 1000, "never full");
    }
    assert!(taken > 0);
    assert!(registry.figures().index_bytes >= 2000);
    // A filter the session has is replaced, full or not.
    assert!(
        registry
            .subscribe(&claim.session, "f/0", qos1(), RetainHandling::Send, |_| true)
            .is_ok()
    );
    registry.unsubscribe(&claim.session, "f/0");
    registry.unsubscribe(&claim.session, "f/1");
    assert!(
        registry
            .subscribe(&claim.session, "g", qos1(), RetainHandling::Send, |_| true)
            .is_ok(),
        "room again"
    );
}

#[test]
fn a_revoked_login_ends_its_connection_and_no_other() {
    let registry = registry();
    let login = |user: &str, entry| Arc::new(Eviction::new(Some((user.into(), Some(entry))), None));
    let (alice, bob) = (login("alice", 1), login("bob", 2));
    registry
        .connect("a", Some("alice".into()), PERSISTENT, alice.clone())
        .unwrap();
    registry
        .connect("b", Some("bob".into()), PERSISTENT, bob.clone())
        .unwrap();
    // alice's password entry changed: 1 is no longer hers.
    let revoked = registry.revoke(|user, entry| user == "alice" && entry == Some(1));
    assert_eq!(revoked, 1);
    assert!(alice.is_evicted() && alice.revoked.load(std::sync::atomic::Ordering::Acquire));
    assert!(!bob.is_evicted());
}

#[test]
fn sessions_take_their_cost_from_the_index_share() {
    // Room for two sessions with short client ids, not three.
    let registry = registry().with_index_share(2 * crate::registry::SESSION_BYTES + 10);
    let first = registry.connect("a", None, PERSISTENT, Arc::default()).unwrap();
    let second = registry.connect("b", None, CLEAN, Arc::default()).unwrap();
    assert!(registry.connect("c", None, CLEAN, Arc::default()).is_err(), "no room");
    // A client id it holds is taken over, full or not.
    let again = registry.connect("a", None, PERSISTENT, Arc::default()).unwrap();
    assert!(again.present);
    // A session that ends gives its room back; one kept away holds it.
    registry.disconnect("b", second.generation, Leave::End, Instant::now());
    registry.disconnect("a", again.generation, Leave::Keep, Instant::now());
    assert!(registry.connect("c", None, CLEAN, Arc::default()).is_ok(), "room again");
    assert!(registry.connect("d", None, CLEAN, Arc::default()).is_err());
    drop(first);
}

#[test]
fn a_silent_client_is_closed_after_its_grace_and_a_talking_one_is_not() {
    let registry = registry();
    let grace = |ms| Some(Duration::from_millis(ms));
    let quiet = Arc::new(Eviction::new(None, grace(1500)));
    let patient = Arc::new(Eviction::new(None, grace(10_000)));
    let forever = Arc::new(Eviction::new(None, None));
    registry.connect("quiet", None, CLEAN, quiet.clone()).unwrap();
    registry.connect("patient", None, CLEAN, patient.clone()).unwrap();
    registry.connect("forever", None, CLEAN, forever.clone()).unwrap();
    let start = Instant::now();
    assert_eq!(registry.close_silent(start + Duration::from_millis(1400)), 0);
    let later = start + Duration::from_millis(1600);
    assert_eq!(registry.close_silent(later), 1);
    assert!(quiet.is_evicted() && quiet.was_silent());
    assert!(!patient.is_evicted() && !forever.is_evicted());
    // Once is enough.
    assert_eq!(registry.close_silent(later), 0);

    // What the client sends moves the mark.
    let talking = Arc::new(Eviction::new(None, grace(100)));
    registry.connect("talking", None, CLEAN, talking.clone()).unwrap();
    std::thread::sleep(Duration::from_millis(150));
    talking.heard();
    assert_eq!(registry.close_silent(Instant::now()), 0);
    assert!(!talking.is_evicted());
}

/// [MQTT-3.3.2-5]: a retained message whose expiry interval ran out is not
/// sent to a new subscription, and the sweep takes it out of the store.
#[test]
fn expired_retained_messages_are_not_sent_and_leave_the_store() {
    let registry = registry();
    let now = Instant::now();
    let expiring = |seconds| PublishProperties {
        message_expiry_interval: Some(seconds),
        ..PublishProperties::default()
    };
    for (topic, seconds) in [("r/old", 5), ("r/new", 60)] {
        let publish = Publish::delivery(topic.to_owned(), "x".to_owned(), QoS::AtMostOnce, 0, false, true);
        let received = now - Duration::from_secs(10);
        registry.retain(topic, publish, Some(expiring(seconds)), Some(received));
    }
    let claim = registry.connect("s", None, CLEAN, Arc::default()).unwrap();
    registry
        .subscribe(&claim.session, "r/+", qos1(), RetainHandling::Send, |_| true)
        .unwrap();
    let topics: Vec<_> =
        std::iter::from_fn(|| claim.session.outbox().next_to_write(&Peer::unbounded(Version::V5, now)))
            .filter_map(|out| match out {
                Outgoing::Publish { delivery, .. } => Some(delivery.message.topic().to_vec()),
                _ => None,
            })
            .collect();
    assert_eq!(topics, [b"r/new".to_vec()]);
    assert_eq!(registry.figures().retained, 2);
    assert_eq!(registry.expire_retained(now), 1);
    assert_eq!(registry.figures().retained, 1);
}

/// What a session's outbox gives now: (payload, retain, subscription id).
fn copies(session: &SessionState) -> Vec<(String, bool, Option<u32>)> {
    let mut outbox = session.outbox();
    std::iter::from_fn(|| outbox.next_to_write(&Peer::unbounded(Version::V5, Instant::now())))
        .filter_map(|out| match out {
            Outgoing::Publish { delivery, .. } => Some((
                String::from_utf8_lossy(delivery.message.payload()).into_owned(),
                delivery.retain,
                delivery.subscription_id.map(NonZeroU32::get),
            )),
            _ => None,
        })
        .collect()
}

/// MQTT 5 subscription options: No Local ([MQTT-3.8.3-3]), Retain As
/// Published ([MQTT-3.3.1-12], [MQTT-3.3.1-13]), Retain Handling
/// ([MQTT-3.3.1-9] to [MQTT-3.3.1-11]) and identifiers, one per copy
/// ([MQTT-3.3.4-5]).
#[test]
fn subscription_options_decide_what_each_copy_is() {
    let registry = registry();
    let me = registry.connect("me", None, CLEAN, Arc::default()).unwrap();
    let other = registry.connect("other", None, CLEAN, Arc::default()).unwrap();
    let options = |no_local, retain_as_published, id| Options {
        no_local,
        retain_as_published,
        id: NonZeroU32::new(id),
        ..qos1()
    };
    let send = RetainHandling::Send;
    registry
        .subscribe(&me.session, "o/#", options(true, true, 1), send, |_| true)
        .unwrap();
    registry
        .subscribe(&me.session, "o/+", options(false, false, 0), send, |_| true)
        .unwrap();
    registry
        .subscribe(&other.session, "o/#", options(true, false, 7), send, |_| true)
        .unwrap();
    let retained = Publish::delivery("o/t".to_owned(), "r".to_owned(), QoS::AtLeastOnce, 0, false, true);
    registry.retain("o/t", retained.clone(), None, None);
    let message = Message::new(retained, None, None, &registry.budget).unwrap();
    registry.publish(&message, Some(&me.session), everyone);
    // Its own No Local subscription gets nothing; the other one does, with
    // the retain flag off.
    assert_eq!(copies(&me.session), [("r".to_owned(), false, None)]);
    assert_eq!(copies(&other.session), [("r".to_owned(), false, Some(7))]);
    registry.publish(&message, Some(&other.session), everyone);
    assert_eq!(
        copies(&me.session),
        [("r".to_owned(), true, Some(1)), ("r".to_owned(), false, None)]
    );
    // Retain Handling, for a subscription that exists and one that does not.
    let with = |handling| {
        registry
            .subscribe(&me.session, "o/t", options(false, false, 3), handling, |_| true)
            .unwrap();
        copies(&me.session)
    };
    assert_eq!(with(RetainHandling::SendIfNew), [("r".to_owned(), true, Some(3))]);
    assert_eq!(with(RetainHandling::SendIfNew), [], "it exists now");
    assert_eq!(with(RetainHandling::Never), []);
    assert_eq!(with(RetainHandling::Send), [("r".to_owned(), true, Some(3))]);
}
