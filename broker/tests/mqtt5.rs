//! MQTT 5 (issue 20) with Eclipse Paho's Python client (broker/tests/mqtt5.py),
//! each check run against snigate-broker and Debian's Mosquitto 2.0 side by
//! side with the same client, named after the normative statements it checks.
//! Where the two differ, the test says how and why.
#![allow(clippy::unwrap_used)] // a test binary: unwrap is an assertion

mod support;

use snigate_shared::testing::TempDir;
use support::*;

/// Run `check` against the broker on `port`: its output, which ends with
/// `ok CHECK` when the script's own assertions held.
async fn check(python: &std::path::Path, port: u16, check: &str) -> String {
    let script = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/mqtt5.py");
    let out = run(python, &[script.to_str().unwrap(), &port.to_string(), check]).await;
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "{check} on port {port}:\n{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.ends_with(&format!("ok {check}\n")), "{stdout}");
    stdout
}

/// Both brokers with `max_inflight_messages` 3 (Mosquitto's name; the
/// Receive Maximum both announce) and `max_keepalive` 100, and the check's
/// output from each.
async fn both(name: &str) -> Option<(String, String, Broker)> {
    both_with(
        name,
        "max_inflight_messages 3\nmax_keepalive 100\n",
        "max_inflight_messages = 3\nmax_keepalive = 100\n",
    )
    .await
}

/// The same with each broker's own settings.
async fn both_with(name: &str, mosquitto: &str, snigate: &str) -> Option<(String, String, Broker)> {
    let python = paho_python()?;
    let dir = TempDir::new();
    let ((mosquitto, port), broker) = side_by_side(&dir, mosquitto, snigate)?;
    let ours = check(&python, broker.addr.port(), name).await;
    let theirs = check(&python, port, name).await;
    drop(mosquitto);
    Some((ours, theirs, broker))
}

/// [MQTT-3.3.2-4], [MQTT-3.3.2-15], [MQTT-3.3.2-16], [MQTT-3.3.2-17],
/// [MQTT-3.3.2-18], [MQTT-3.3.2-20]: payload format, response topic,
/// correlation data, user properties (in order) and content type reach an
/// MQTT 5 subscriber unchanged; a 3.1.1 subscriber gets the message alone.
#[tokio::test]
async fn publish_properties_are_forwarded_unchanged() {
    same("properties", "forwarded:").await;
}

/// [MQTT-3.3.2-5], [MQTT-3.3.2-6]: queued for an away client or retained,
/// an expired message is not sent; the rest carry their interval less the
/// wait (the script accepts 1 to 58 of 60 after 2.5 s: Mosquitto rounds the
/// wait down, snigate the interval left up, so that a live copy never says
/// 0).
#[tokio::test]
async fn expired_messages_are_not_sent() {
    let Some((ours, theirs, _broker)) = both("expiry").await else {
        return;
    };
    for out in [&ours, &theirs] {
        assert!(out.contains("queued while away: [('exp/long', "), "{out}");
    }
}

/// [MQTT-3.3.4-9]: no more QoS 1 messages in flight than the client's
/// Receive Maximum, the rest as it acknowledges. Mosquitto 2.0.11 holds the
/// first window and then lets more through than the client allows (fixed in
/// 2.0.13: "Various fixes around inflight quota management"): only snigate
/// is held to every window.
#[tokio::test]
async fn the_clients_receive_maximum_bounds_what_is_in_flight() {
    let Some((ours, theirs, _broker)) = both("receive-maximum").await else {
        return;
    };
    assert!(
        ours.contains("windows: [[0, 1], [0, 1, 2, 3], [0, 1, 2, 3, 4]]"),
        "{ours}"
    );
    assert!(theirs.contains("windows: [[0, 1], "), "{theirs}");
}

/// [MQTT-3.1.2-25]: a message larger than the client's Maximum Packet Size
/// is dropped for it (and counted), never its connection.
#[tokio::test]
async fn a_message_over_the_clients_packet_size_is_dropped_not_the_client() {
    let Some((_, _, broker)) = both("packet-size").await else {
        return;
    };
    let admin = broker.process.address("http");
    let metrics = http_get(admin, "/metrics").await;
    let dropped = metric_sum(
        &metrics,
        "snigate_broker_messages_dropped_total",
        "reason=\"packet_too_large\"",
    );
    assert_eq!(dropped, 2.0, "{metrics}");
}

/// MQTT 5 §3.3.4: both announce `max_inflight_messages` as their Receive
/// Maximum. One QoS 2 message more than that waiting for its PUBREL is a
/// Receive Maximum exceeded: snigate ends the connection with DISCONNECT
/// 0x93 as the specification says; Mosquitto 2.0 answers PUBREC 0x97
/// (quota exceeded) and keeps it (eclipse-mosquitto/mosquitto#3611).
#[tokio::test]
async fn one_qos_2_message_past_the_brokers_receive_maximum() {
    let Some((ours, theirs, broker)) = both("server-receive-maximum").await else {
        return;
    };
    for out in [&ours, &theirs] {
        assert!(out.contains("receive maximum: 3\n"), "{out}");
    }
    assert!(
        ours.contains("answers: ['pubrec 0x00', 'pubrec 0x00', 'pubrec 0x00', 'disconnect 0x93']"),
        "{ours}"
    );
    assert!(
        theirs.contains("answers: ['pubrec 0x00', 'pubrec 0x00', 'pubrec 0x00', 'pubrec 0x97']"),
        "{theirs}"
    );
    let metrics = http_get(broker.process.address("http"), "/metrics").await;
    assert_eq!(
        metric_sum(
            &metrics,
            "snigate_broker_disconnections_total",
            "reason=\"receive_maximum_exceeded\""
        ),
        1.0,
        "{metrics}"
    );
}

/// The line of `out` that starts with `label`.
fn line<'a>(out: &'a str, label: &str) -> Option<&'a str> {
    out.lines().find(|l| l.starts_with(label))
}

/// Both brokers ran `name` and printed the same `label` line (each script
/// also holds them to the expected values).
async fn same(name: &str, label: &str) {
    let Some((ours, theirs, _broker)) = both(name).await else {
        return;
    };
    assert!(line(&ours, label).is_some(), "{ours}");
    assert_eq!(line(&ours, label), line(&theirs, label), "{ours}\n{theirs}");
}

/// [MQTT-3.3.4-5]: one copy per matching subscription, each with its own
/// Subscription Identifier (the largest, 268,435,455, included), none for a
/// subscription without one.
#[tokio::test]
async fn each_copy_carries_its_subscriptions_identifier() {
    same("subscription-ids", "identifiers:").await;
}

/// [MQTT-3.8.3-3]: No Local.
#[tokio::test]
async fn a_no_local_subscription_gets_nothing_of_its_own() {
    same("no-local", "no local:").await;
}

/// [MQTT-3.3.1-12], [MQTT-3.3.1-13]: Retain As Published.
#[tokio::test]
async fn retain_as_published_keeps_the_flag() {
    same("retain-as-published", "retain flags:").await;
}

/// [MQTT-3.3.1-9], [MQTT-3.3.1-10], [MQTT-3.3.1-11]: Retain Handling 0, 1
/// (for a new subscription, then for the same one again) and 2.
#[tokio::test]
async fn retain_handling_decides_which_retained_messages_a_subscription_gets() {
    same("retain-handling", "retain handling:").await;
}

/// MQTT 5 §3.3.2.3.4, [MQTT-3.3.2-9]: both announce a Topic Alias Maximum of
/// 10 (`max_topic_alias`, Mosquitto's default); a client's alias stands for
/// the topic it was last set with; an empty topic with an alias never set is
/// 0x82, an alias above the maximum 0x94.
#[tokio::test]
async fn a_clients_topic_aliases_are_honoured_and_bounded() {
    let Some((ours, theirs, _broker)) = both("topic-alias").await else {
        return;
    };
    for label in [
        "topic alias maximum:",
        "aliased:",
        "unknown alias:",
        "over the maximum:",
    ] {
        assert_eq!(line(&ours, label), line(&theirs, label), "{ours}\n{theirs}");
    }
    assert_eq!(line(&ours, "unknown alias:"), Some("unknown alias: disconnect 0x82"));
    assert_eq!(
        line(&ours, "over the maximum:"),
        Some("over the maximum: disconnect 0x94")
    );
}

/// MQTT 5 §3.3.2.3.4: toward a client that allows aliases, snigate gives
/// each new topic one, sending the topic with it once and the alias alone
/// after. Mosquitto 2.0 sends no aliases (the specification leaves it to
/// the server).
#[tokio::test]
async fn the_broker_sends_aliases_to_a_client_that_allows_them() {
    let Some((ours, theirs, _broker)) = both("topic-alias-out").await else {
        return;
    };
    assert_eq!(
        line(&ours, "read:"),
        Some("read: [('tao/a', 1), ('', 1), ('tao/b', 2), ('', 1)]"),
        "{ours}"
    );
    assert_eq!(
        line(&theirs, "read:"),
        Some("read: [('tao/a', None), ('tao/a', None), ('tao/b', None), ('tao/a', None)]"),
        "{theirs}"
    );
}

/// [MQTT-3.14.4-3]: DISCONNECT 0x04 publishes the will, 0x00 does not
/// ([MQTT-3.1.2-10]); the will's properties go out with it (MQTT 5
/// §3.1.3.2, [MQTT-3.1.3-10]).
#[tokio::test]
async fn disconnect_with_will_message_sends_the_will_and_its_properties() {
    same("will", "wills:").await;
}

/// [MQTT-3.2.2-21]: `max_keepalive` (Mosquitto's name) caps an MQTT 5
/// client's keepalive, and a client that asked for none is given it, as
/// Mosquitto gives it; the CONNACK's Server Keep Alive says so.
#[tokio::test]
async fn a_capped_keepalive_is_announced_as_server_keep_alive() {
    same("keepalive", "server keep alive:").await;
}

/// `max_qos` 1: the CONNACK's Maximum QoS, SUBSCRIBE granted at most 1, a
/// QoS 2 PUBLISH ended with DISCONNECT 0x9B ([MQTT-3.2.2-11]), a QoS 2 will
/// refused with CONNACK 0x9B ([MQTT-3.2.2-12]).
#[tokio::test]
async fn max_qos_is_announced_and_held() {
    let Some((ours, theirs, _broker)) = both_with("max-qos", "max_qos 1\n", "max_qos = 1\n").await else {
        return;
    };
    let expected = "max qos: 1; granted: [1]; qos 2 publish: disconnect 0x9b; qos 2 will: 0x9b";
    assert_eq!(line(&ours, "max qos:"), Some(expected), "{ours}");
    assert_eq!(line(&theirs, "max qos:"), Some(expected), "{theirs}");
}

/// `retain_available` false: the CONNACK's Retain Available 0, a retained
/// PUBLISH ended with DISCONNECT 0x9A ([MQTT-3.2.2-14]), a retained will
/// refused with CONNACK 0x9A ([MQTT-3.2.2-13]).
#[tokio::test]
async fn retain_unavailable_is_announced_and_held() {
    let Some((ours, theirs, _broker)) = both_with(
        "retain-unavailable",
        "retain_available false\n",
        "retain_available = false\n",
    )
    .await
    else {
        return;
    };
    let expected = "retain available: 0; retained publish: disconnect 0x9a; retained will: 0x9a";
    assert_eq!(line(&ours, "retain available:"), Some(expected), "{ours}");
    assert_eq!(line(&theirs, "retain available:"), Some(expected), "{theirs}");
}

/// MQTT 5 §4.12: an Authentication Method the broker does not offer (it
/// offers none) is CONNACK 0x8C, as Mosquitto answers without a plugin.
#[tokio::test]
async fn an_authentication_method_is_refused_with_0x8c() {
    let Some((ours, theirs, _broker)) = both("auth-method").await else {
        return;
    };
    for out in [&ours, &theirs] {
        assert_eq!(
            line(out, "authentication method:"),
            Some("authentication method: 0x8c"),
            "{out}"
        );
    }
}

/// MQTT 5 §3.14.2.2.3, [MQTT-3.1.2-29]: snigate's DISCONNECTs carry a Reason
/// String, and none for a client whose Request Problem Information is 0.
/// (Mosquitto 2.0 sends none; on a topic alias of 0 it answers 0x81 where
/// the specification's answer is 0x94.)
#[tokio::test]
async fn disconnects_carry_a_reason_string_for_clients_that_want_one() {
    let Some((ours, _theirs, _broker)) = both("reason-string").await else {
        return;
    };
    assert_eq!(
        line(&ours, "asked:"),
        Some("asked: 0x94 \"topic alias invalid: 0, or above the CONNACK's Topic Alias Maximum\""),
        "{ours}"
    );
    assert_eq!(line(&ours, "not asked:"), Some("not asked: 0x94 None"), "{ours}");
}

/// MQTT 5 §3.1.3.2.2, [MQTT-3.1.3-9]: a will waits for its delay (a) or its
/// session's expiry (c), whichever is first, and is not sent when its client
/// connects again first, resuming (b) or starting clean (d), as Mosquitto
/// does. A session that is not kept ends with the connection, so its will
/// goes at once (e): Mosquitto 2.0.11 waits for the delay there.
#[tokio::test]
async fn a_will_waits_for_its_delay_or_its_sessions_end() {
    let Some((ours, theirs, _broker)) = both("will-delay").await else {
        return;
    };
    assert_eq!(
        line(&ours, "will delays:"),
        Some("will delays: {'a': 'late', 'b': 'none', 'c': 'late', 'd': 'none', 'e': 'soon'}"),
        "{ours}"
    );
    assert_eq!(
        line(&theirs, "will delays:"),
        Some("will delays: {'a': 'late', 'b': 'none', 'c': 'late', 'd': 'none', 'e': 'late'}"),
        "{theirs}"
    );
}
