//! A message into the core, from a client's PUBLISH or from a will: the
//! retained store, then every matching subscription the ACL lets read it,
//! counted as it goes. Sessions call it for what their clients publish; the
//! expiry sweep for wills whose delay ran out ([`crate::wills`]).

use std::time::Instant;

use bytes::Bytes;
use rumqttd::protocol::{Publish, PublishProperties};

use crate::Shared;
use crate::auth::acl::Access;
use crate::message::Message;
use crate::registry::SessionState;

/// Whether `user` with `client_id` may publish to `topic` by the ACL of now.
/// Whatever the ACL says, as Mosquitto (`acl__check_dollar`): `$SYS` is the
/// broker's to write, and `$share` names subscriptions only.
pub fn may_write(shared: &Shared, user: Option<&str>, client_id: &str, topic: &[u8]) -> bool {
    if topic.starts_with(b"$SYS") || topic.starts_with(b"$share") {
        return false;
    }
    let material = shared.material.load();
    let Some(acl) = &material.auth.acl else { return true };
    std::str::from_utf8(topic).is_ok_and(|topic| acl.allows(user, client_id, topic, Access::Write))
}

/// Keep a retained message, and deliver to every matching subscription
/// (`from`: the publisher's session, for No Local). The topic and payload
/// are copied out of the read buffer, which they would otherwise pin for as
/// long as a queue holds them. `client_id` names the publisher in the log.
pub fn route(
    shared: &Shared,
    publish: Publish,
    props: Option<PublishProperties>,
    from: Option<&SessionState>,
    client_id: &str,
) {
    let registry = &shared.registry;
    let qos = publish.qos();
    // Read once, only for a message that expires: the retained copy and the
    // delivered one then expire together.
    let received = props
        .as_ref()
        .is_some_and(|p| p.message_expiry_interval.is_some())
        .then(Instant::now);
    let publish = Publish::delivery(
        Bytes::copy_from_slice(&publish.topic),
        Bytes::copy_from_slice(&publish.payload),
        qos,
        0,
        false,
        publish.retain,
    );
    let metrics = &shared.metrics;
    if publish.retain
        && let Ok(topic) = std::str::from_utf8(&publish.topic)
    {
        if registry.retain(topic, publish.clone(), props.clone(), received) == crate::retained::Outcome::OverBudget {
            metrics.refused.with_label_values(&["retained"]).inc();
            tracing::warn!(
                client_id,
                "retained messages are at max_retained_bytes; delivered, not retained"
            );
        }
        figures(shared);
    }
    let Some(message) = Message::new(publish, props, received, &shared.queue_budget) else {
        metrics
            .dropped
            .with_label_values(&["memory_budget", crate::session::qos_label(qos as u8)])
            .inc();
        return;
    };
    let material = shared.material.load();
    let acl = material.auth.acl.as_ref();
    let fanout = registry.publish(&message, from, |session: &SessionState, topic: &[u8]| {
        acl.is_none_or(|acl| {
            std::str::from_utf8(topic)
                .is_ok_and(|topic| acl.allows(session.user(), session.client_id(), topic, Access::Read))
        })
    });
    for (refused, qos) in fanout.dropped {
        metrics
            .dropped
            .with_label_values(&[refused.label(), crate::session::qos_label(qos as u8)])
            .inc();
    }
    if fanout.withheld > 0 {
        metrics
            .acl_denials
            .with_label_values(&["deliver"])
            .inc_by(fanout.withheld);
    }
}

/// The gauges the registry's figures feed.
pub fn figures(shared: &Shared) {
    let figures = shared.registry.figures();
    let metrics = &shared.metrics;
    metrics.subscriptions.set(crate::gauge(figures.subscriptions));
    metrics.retained.set(crate::gauge(figures.retained));
    metrics.retained_bytes.set(crate::gauge(figures.retained_bytes));
}
