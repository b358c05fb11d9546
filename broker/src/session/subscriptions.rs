//! A client's SUBSCRIBE and UNSUBSCRIBE: the ACL, the bounds, the options,
//! then the subscription index ([`crate::registry`]).

use std::num::NonZeroU32;

use rumqttd::protocol::RetainForwardRule;

use super::relay::reserved;
use super::*;
use crate::registry::{Options, RetainHandling};

impl<P: Protocol, S: Stream> Session<P, S> {
    /// Each filter is answered in the SUBACK as the ACL and the bounds say;
    /// retained messages follow the SUBACK (queued now, written after it).
    /// `id`: the MQTT 5 Subscription Identifier of all its filters
    /// (validated: not 0).
    pub(super) fn subscribe(&mut self, subscribe: Subscribe, id: Option<usize>) {
        let id = id.and_then(|id| u32::try_from(id).ok()).and_then(NonZeroU32::new);
        let shared = self.shared.clone();
        let registry = &shared.registry;
        let Some(session) = self.attached.as_ref().map(|held| held.session.clone()) else {
            return;
        };
        let material = shared.material.load();
        let acl = material.auth.acl.as_ref();
        let user = self.user.clone();
        let may_read = |topic: &[u8]| {
            acl.is_none_or(|acl| {
                std::str::from_utf8(topic)
                    .is_ok_and(|topic| acl.allows(user.as_deref(), session.client_id(), topic, Access::Read))
            })
        };
        let mut return_codes = Vec::with_capacity(subscribe.filters.len());
        for filter in subscribe.filters {
            let path = filter.path;
            if acl.is_some_and(|acl| !acl.may_subscribe(self.user.as_deref(), self.client_id(), &path)) {
                shared.metrics.acl_denials.with_label_values(&["subscribe"]).inc();
                self.refused(
                    self.client_id(),
                    "acl_subscribe",
                    &format!("a SUBSCRIBE to {path} the ACL does not allow"),
                );
                return_codes.push(self.refusal(SubscribeReasonCode::NotAuthorized, filter.qos));
                continue;
            }
            // Granted at most at `max_qos`, as Mosquitto grants it.
            let mut qos = crate::registry::lower(filter.qos, shared.settings.max_qos);
            if reserved(&path) {
                let (held, again) = session.count_subscriptions(&path, reserved);
                if held >= MAX_SYS_FILTERS && !again {
                    shared.metrics.refused.with_label_values(&["filters"]).inc();
                    return_codes.push(self.refusal(SubscribeReasonCode::QuotaExceeded, filter.qos));
                    continue;
                }
                // Granted at QoS 0, as Mosquitto grants `$SYS`.
                qos = QoS::AtMostOnce;
            }
            let options = Options {
                qos,
                no_local: filter.nolocal,
                retain_as_published: filter.preserve_retain,
                id,
            };
            let retained = match filter.retain_forward_rule {
                RetainForwardRule::OnEverySubscribe => RetainHandling::Send,
                RetainForwardRule::OnNewSubscribe => RetainHandling::SendIfNew,
                RetainForwardRule::Never => RetainHandling::Never,
            };
            let Ok(fanout) = registry.subscribe(&session, &path, options, retained, may_read) else {
                // The index holds its share of memory_limit.
                shared.metrics.refused.with_label_values(&["filters"]).inc();
                return_codes.push(self.refusal(SubscribeReasonCode::QuotaExceeded, filter.qos));
                continue;
            };
            for (refused, qos) in fanout.dropped {
                shared
                    .metrics
                    .dropped
                    .with_label_values(&[refused.label(), qos_label(qos as u8)])
                    .inc();
            }
            return_codes.push(SubscribeReasonCode::Success(qos));
        }
        self.push_control(Packet::SubAck(
            SubAck {
                pkid: subscribe.pkid,
                return_codes,
            },
            None,
        ));
        self.figures();
    }

    /// Every filter is answered, subscribed or not (MQTT 5 §3.11.3).
    pub(super) fn unsubscribe(&mut self, unsubscribe: Unsubscribe) {
        let shared = self.shared.clone();
        let registry = &shared.registry;
        let Some(session) = self.attached.as_ref().map(|held| held.session.clone()) else {
            return;
        };
        let reasons = unsubscribe
            .filters
            .iter()
            .map(|filter| {
                if registry.unsubscribe(&session, filter) {
                    UnsubAckReason::Success
                } else {
                    UnsubAckReason::NoSubscriptionExisted
                }
            })
            .collect();
        self.push_control(Packet::UnsubAck(
            UnsubAck {
                pkid: unsubscribe.pkid,
                reasons,
            },
            None,
        ));
        self.figures();
    }
}
