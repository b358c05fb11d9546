use super::*;
use rumqttd::protocol::Publish;

fn budget() -> Arc<Budget> {
    Arc::new(Budget::new(1 << 20, prometheus::IntGauge::new("b", "test").unwrap()))
}

fn limits(max_inflight: usize) -> Arc<Limits> {
    Arc::new(Limits {
        max_inflight,
        max_queued_messages: 100,
        max_queued_bytes: 0,
        queue_qos0_offline: false,
    })
}

fn delivery(budget: &Arc<Budget>, payload: &str, qos: QoS) -> Delivery {
    let message = Message::new(
        Publish::new("t".to_owned(), payload.to_owned(), false),
        None,
        None,
        budget,
    )
    .unwrap();
    Delivery {
        message,
        qos,
        retain: false,
        subscription_id: None,
    }
}

fn any() -> Peer {
    Peer::unbounded(Version::V5, Instant::now())
}

/// What `next_to_write` gives until it gives nothing: (payload or "PUBREL", pkid, dup).
fn drain(outbox: &mut Outbox) -> Vec<(String, u16, bool)> {
    drain_to(outbox, &any())
}

/// The same, for `peer`; a message let go shows as "dropped" with its reason.
fn drain_to(outbox: &mut Outbox, peer: &Peer) -> Vec<(String, u16, bool)> {
    std::iter::from_fn(|| outbox.next_to_write(peer))
        .map(|out| match out {
            Outgoing::Publish { delivery, pkid, dup } => (
                String::from_utf8_lossy(delivery.message.payload()).into_owned(),
                pkid,
                dup,
            ),
            Outgoing::PubRel(pkid) => ("PUBREL".to_owned(), pkid, false),
            Outgoing::Dropped { reason, release, .. } => {
                (format!("dropped {}", reason.label()), release.unwrap_or(0), false)
            }
        })
        .collect()
}

#[test]
fn qos_1_and_2_wait_for_room_in_the_window_in_order() {
    let budget = budget();
    let mut outbox = Outbox::new(limits(2), &budget);
    for (payload, qos) in [
        ("a", QoS::AtLeastOnce),
        ("b", QoS::ExactlyOnce),
        ("c", QoS::AtLeastOnce),
        ("d", QoS::AtMostOnce),
    ] {
        outbox.push(delivery(&budget, payload, qos), true).unwrap();
    }
    let sent = drain(&mut outbox);
    assert_eq!(sent, [("a".into(), 1, false), ("b".into(), 2, false)]);
    // [MQTT-4.6.0-6]: in order; `d` (QoS 0) does not pass `c`.
    assert_eq!(outbox.len(), (2, 2));
    assert_eq!(
        outbox.puback(2),
        Err(UnknownPacketId(2)),
        "a PUBACK for the QoS 2 message"
    );
    outbox.puback(1).unwrap();
    assert_eq!(outbox.puback(1), Err(UnknownPacketId(1)), "acknowledged already");
    assert_eq!(drain(&mut outbox), [("c".into(), 3, false), ("d".into(), 0, false)]);
    // QoS 2: PUBREC, then PUBCOMP frees the id ([MQTT-4.3.3-4], [MQTT-4.3.3-5]).
    assert_eq!(outbox.pubcomp(2), Err(UnknownPacketId(2)), "PUBCOMP before PUBREC");
    outbox.pubrec(2).unwrap();
    outbox.pubrec(2).unwrap();
    outbox.pubcomp(2).unwrap();
    outbox.puback(3).unwrap();
    assert!(outbox.is_empty());
}

#[test]
fn a_resumed_session_gets_what_was_in_flight_again_first() {
    // [MQTT-4.4.0-1]: unacknowledged PUBLISH and PUBREL packets sent again
    // with their packet ids; [MQTT-3.3.1-1]: DUP set on a PUBLISH sent again.
    let budget = budget();
    let mut outbox = Outbox::new(limits(10), &budget);
    for (payload, qos) in [
        ("one", QoS::AtLeastOnce),
        ("two", QoS::ExactlyOnce),
        ("three", QoS::ExactlyOnce),
    ] {
        outbox.push(delivery(&budget, payload, qos), true).unwrap();
    }
    drain(&mut outbox);
    outbox.pubrec(2).unwrap();
    // The client goes away; more arrives for it meanwhile.
    outbox.push(delivery(&budget, "four", QoS::AtLeastOnce), false).unwrap();
    assert_eq!(
        outbox.push(delivery(&budget, "lost", QoS::AtMostOnce), false),
        Err(Refused::Away)
    );
    outbox.resume();
    assert_eq!(
        drain(&mut outbox),
        [
            ("one".into(), 1, true),
            ("PUBREL".into(), 2, false),
            ("three".into(), 3, true),
            ("four".into(), 4, false),
        ]
    );
    // Acknowledged while being sent again: not sent a third time.
    outbox.resume();
    outbox.puback(1).unwrap();
    outbox.pubrec(3).unwrap();
    assert_eq!(
        drain(&mut outbox),
        [
            ("PUBREL".into(), 2, false),
            ("PUBREL".into(), 3, false),
            ("four".into(), 4, true)
        ]
    );
}

#[test]
fn an_acknowledgement_during_the_resend_skips_only_that_message() {
    let budget = budget();
    let mut outbox = Outbox::new(limits(10), &budget);
    for payload in ["a", "b", "c", "d"] {
        outbox.push(delivery(&budget, payload, QoS::AtLeastOnce), true).unwrap();
    }
    drain(&mut outbox);
    outbox.resume();
    let first_two: Vec<_> = std::iter::from_fn(|| outbox.next_to_write(&any())).take(2).collect();
    assert_eq!(first_two.len(), 2);
    outbox.puback(1).unwrap(); // sent again already
    outbox.puback(3).unwrap(); // not yet
    assert_eq!(drain(&mut outbox), [("d".into(), 4, true)]);
}

#[test]
fn the_queue_is_bounded_by_count_bytes_and_the_budget() {
    let budget = budget();
    let mut outbox = Outbox::new(
        Arc::new(Limits {
            max_queued_messages: 2,
            ..*limits(1)
        }),
        &budget,
    );
    for payload in ["a", "b"] {
        outbox.push(delivery(&budget, payload, QoS::AtLeastOnce), true).unwrap();
    }
    assert_eq!(
        outbox.push(delivery(&budget, "c", QoS::AtLeastOnce), true),
        Err(Refused::QueueFull)
    );
    // What is in flight does not count against the queue.
    drain(&mut outbox);
    outbox.push(delivery(&budget, "c", QoS::AtLeastOnce), true).unwrap();

    let one = delivery(&budget, "x", QoS::AtMostOnce);
    let mut by_bytes = Outbox::new(
        Arc::new(Limits {
            max_queued_bytes: 2 * one.message.wire_size(),
            ..*limits(1)
        }),
        &budget,
    );
    by_bytes.push(one.clone(), true).unwrap();
    by_bytes.push(one.clone(), true).unwrap();
    assert_eq!(by_bytes.push(one.clone(), true), Err(Refused::QueueFull));

    // QoS 0 waits for an away client with `queue_qos0_messages`.
    let mut keeps_qos0 = Outbox::new(
        Arc::new(Limits {
            queue_qos0_offline: true,
            ..*limits(1)
        }),
        &budget,
    );
    keeps_qos0.push(one.clone(), false).unwrap();

    let tiny = Arc::new(Budget::new(
        ENTRY_BYTES,
        prometheus::IntGauge::new("t", "test").unwrap(),
    ));
    let mut short = Outbox::new(limits(1), &tiny);
    short.push(one.clone(), true).unwrap();
    assert_eq!(short.push(one, true), Err(Refused::MemoryBudget));
}

#[test]
fn every_byte_taken_is_given_back() {
    let budget = budget();
    let mut outbox = Outbox::new(limits(1), &budget);
    let message_bytes = {
        let d = delivery(&budget, "m", QoS::AtLeastOnce);
        let held = budget.used();
        outbox.push(d.clone(), true).unwrap();
        outbox.push(d, true).unwrap();
        assert_eq!(
            budget.used(),
            held + 2 * ENTRY_BYTES,
            "the message once, an entry per copy"
        );
        held
    };
    drain(&mut outbox);
    outbox.puback(1).unwrap();
    assert_eq!(budget.used(), message_bytes + ENTRY_BYTES);
    drop(outbox);
    assert_eq!(budget.used(), 0, "the last copy gone, the message's bytes too");
}

#[test]
fn packet_ids_wrap_past_those_in_flight() {
    let budget = budget();
    let mut outbox = Outbox::new(limits(3), &budget);
    outbox.last_pkid = 65_533;
    for _ in 0..3 {
        outbox.push(delivery(&budget, "m", QoS::AtLeastOnce), true).unwrap();
    }
    let ids: Vec<u16> = drain(&mut outbox).into_iter().map(|(_, id, _)| id).collect();
    assert_eq!(ids, [65_534, 65_535, 1], "0 is never a packet id ([MQTT-2.3.1-1])");
    outbox.puback(65_535).unwrap();
    outbox.push(delivery(&budget, "m", QoS::AtLeastOnce), true).unwrap();
    outbox.last_pkid = 65_533;
    assert!(
        matches!(
            outbox.next_to_write(&any()),
            Some(Outgoing::Publish { pkid: 65_535, .. })
        ),
        "65,534 is in flight"
    );
}

fn expiring(budget: &Arc<Budget>, payload: &str, qos: QoS, seconds: u32, received: Instant) -> Delivery {
    let properties = rumqttd::protocol::PublishProperties {
        message_expiry_interval: Some(seconds),
        ..Default::default()
    };
    let publish = Publish::new("t".to_owned(), payload.to_owned(), false);
    Delivery {
        message: Message::new(publish, Some(properties), Some(received), budget).unwrap(),
        qos,
        retain: false,
        subscription_id: None,
    }
}

/// [MQTT-3.3.2-5]: a message whose expiry interval ran out while it waited
/// is not sent; those behind it are, in order. What was in flight when the
/// client left and has expired since is let go too (QoS 1), or released
/// with a PUBREL so that its packet id is free on both sides (QoS 2).
#[test]
fn expired_messages_are_not_sent() {
    let budget = budget();
    let mut outbox = Outbox::new(limits(10), &budget);
    let t0 = Instant::now();
    let at = |seconds| Peer::unbounded(Version::V5, t0 + std::time::Duration::from_secs(seconds));
    outbox
        .push(expiring(&budget, "short", QoS::AtLeastOnce, 5, t0), false)
        .unwrap();
    outbox
        .push(delivery(&budget, "lasting", QoS::AtLeastOnce), false)
        .unwrap();
    outbox
        .push(expiring(&budget, "long", QoS::AtLeastOnce, 60, t0), false)
        .unwrap();
    assert_eq!(
        drain_to(&mut outbox, &at(10)),
        [
            ("dropped expired".to_owned(), 0, false),
            ("lasting".to_owned(), 1, false),
            ("long".to_owned(), 2, false)
        ]
    );
    outbox.puback(1).unwrap();
    outbox.puback(2).unwrap();
    // In flight when the client left, expired when it came back.
    outbox
        .push(expiring(&budget, "q1", QoS::AtLeastOnce, 5, t0), true)
        .unwrap();
    outbox
        .push(expiring(&budget, "q2", QoS::ExactlyOnce, 5, t0), true)
        .unwrap();
    assert_eq!(drain_to(&mut outbox, &at(1)).len(), 2);
    outbox.resume();
    assert_eq!(
        drain_to(&mut outbox, &at(6)),
        [
            ("dropped expired".to_owned(), 0, false),
            ("dropped expired".to_owned(), 4, false)
        ]
    );
    assert_eq!(outbox.len(), (0, 1), "the QoS 2 one waits for its PUBCOMP");
    outbox.pubcomp(4).unwrap();
    assert!(outbox.is_empty());
    assert_eq!(budget.used(), 0);
}

/// [MQTT-3.3.4-9]: the window is the client's Receive Maximum where that is
/// below `max_inflight_messages`. [MQTT-3.1.2-25]: a copy larger than its
/// Maximum Packet Size is let go, and what follows is sent.
#[test]
fn the_clients_receive_maximum_and_packet_size_bound_what_is_sent() {
    let budget = budget();
    let mut outbox = Outbox::new(limits(10), &budget);
    for payload in ["a", "b", "c"] {
        outbox.push(delivery(&budget, payload, QoS::AtLeastOnce), true).unwrap();
    }
    let two = Peer {
        receive_maximum: 2,
        ..any()
    };
    assert_eq!(drain_to(&mut outbox, &two).len(), 2, "two in flight");
    outbox.puback(1).unwrap();
    assert_eq!(drain_to(&mut outbox, &two), [("c".to_owned(), 3, false)]);
    let large = "x".repeat(100);
    outbox.push(delivery(&budget, &large, QoS::AtMostOnce), true).unwrap();
    outbox.push(delivery(&budget, "small", QoS::AtMostOnce), true).unwrap();
    let size = |payload: &str| {
        let message = delivery(&budget, payload, QoS::AtMostOnce).message;
        message.packet_size(Version::V5, QoS::AtMostOnce, None, None)
    };
    let small = Peer {
        max_packet_size: size("small"),
        ..any()
    };
    assert_eq!(
        drain_to(&mut outbox, &small),
        [
            ("dropped packet_too_large".to_owned(), 0, false),
            ("small".to_owned(), 0, false)
        ]
    );
}
