//! From CONNECT to CONNACK, as Mosquitto 2.0 answers it: the busy answer,
//! the login, the client id, the will's budget, and how long the session
//! lives.

use super::*;

impl<P: Protocol, S: Stream> Session<P, S> {
    /// From CONNECT to CONNACK: the slot, the login, the client id, the will's
    /// budget and the session in the registry; or how the connection ended.
    pub(super) async fn admit(&mut self) -> Result<Connected, (End, Option<String>)> {
        // The certificate's CN, put there by `Session::new`.
        let identity = self.user.take();
        let deadline = self.deadline;
        let connect = match Box::pin(tokio::time::timeout_at(deadline, self.next_packet())).await {
            Err(_) => return Err((End::ConnectTimeout, None)),
            Ok(Err(end)) => return Err((end, None)),
            Ok(Ok(packet)) => packet,
        };
        let Packet::Connect(connect, props, will, will_props, login) = connect else {
            return Err((End::ProtocolError, None));
        };
        // Closed without a CONNACK, as Mosquitto closes it.
        if let Err(invalid) = crate::validate::connect(
            &connect.client_id,
            props.as_ref(),
            will.as_ref(),
            will_props.as_ref(),
            login.as_ref(),
        ) {
            self.invalid(invalid);
            return Err((End::InvalidInput, None));
        }
        // What the server does not offer, refused before the login as
        // Mosquitto refuses it: a will above `max_qos`, or retained without
        // `retain_available` (MQTT 5: CONNACK 0x9B, 0x9A; 3.1.1: closed).
        let settings = &self.shared.settings;
        let unsupported = will.as_ref().and_then(|will| {
            settings.unsupported(will.qos, will.retain).map(|kind| match kind {
                crate::config::Unsupported::Qos => ConnectReturnCode::QoSNotSupported,
                crate::config::Unsupported::Retain => ConnectReturnCode::RetainNotSupported,
            })
        });
        if let Some(code) = unsupported {
            tracing::info!(peer = %self.peer, client_id = connect.client_id, ?code, "the will asks for what the broker does not offer; refused");
            self.refused(
                &connect.client_id,
                "will_not_supported",
                &format!("the will asks for what the broker does not offer ({code:?})"),
            );
            if self.level == 5 {
                let _ = self.send(Packet::ConnAck(refused(code), None)).await;
            }
            return Err((End::NotSupported, Some(connect.client_id)));
        }
        // Enhanced authentication (MQTT 5 §4.12) is not offered: a method
        // is refused with 0x8C, as Mosquitto refuses one no plugin takes.
        if props.as_ref().is_some_and(|p| p.authentication_method.is_some()) {
            self.shared
                .metrics
                .auth_failures
                .with_label_values(&["authentication_method"])
                .inc();
            tracing::info!(peer = %self.peer, client_id = connect.client_id, "an authentication method, which the broker does not offer; refused");
            self.refused(
                &connect.client_id,
                "authentication_method",
                "an authentication method, which the broker does not offer",
            );
            let code = ConnectReturnCode::BadAuthenticationMethod;
            let _ = self.send(Packet::ConnAck(refused(code), None)).await;
            return Err((End::NotAuthorized, Some(connect.client_id)));
        }
        if let Some(p) = &props {
            self.receive_maximum = p.receive_maximum.unwrap_or(u16::MAX);
            self.max_packet_size = p.max_packet_size.unwrap_or(u32::MAX);
            self.topic_alias_max = p.topic_alias_max.unwrap_or(0);
            self.problem_information = p.request_problem_info != Some(0);
        }
        // Copied out: the codec's topic and message are slices of the whole
        // CONNECT (user name, password and all), which they would keep alive.
        let will = will.map(|will| {
            let last = LastWill {
                topic: Bytes::copy_from_slice(&will.topic),
                message: Bytes::copy_from_slice(&will.message),
                ..will
            };
            Box::new(Will::new(last, will_props))
        });
        // Answered before the (expensive) login: a full broker should not
        // spend a password check on a refusal.
        if self.busy {
            self.shared.metrics.refused.with_label_values(&["connections"]).inc();
            tracing::warn!(
                peer = %self.peer,
                client_id = connect.client_id,
                max_connections = self.shared.settings.limits.max_connections,
                "connection refused: the memory budget's max_connections connections (or its share of TLS ones) are open"
            );
            self.refused(
                &connect.client_id,
                "connections",
                "the memory budget's connections are open",
            );
            let busy = if self.level == 5 {
                ConnectReturnCode::ServerBusy
            } else {
                ConnectReturnCode::ServiceUnavailable
            };
            let _ = self.send(Packet::ConnAck(refused(busy), None)).await;
            return Err((End::ServerBusy, Some(connect.client_id)));
        };
        let login = login.as_ref().map(|l| (l.username.as_str(), &l.password[..]));
        let material = self.shared.material.load_full();
        // use_identity_as_username: the certificate, verified in the handshake,
        // is the credential; the CONNECT's user name and password are ignored.
        let by_certificate = self
            .shared
            .settings
            .use_identity_as_username
            .then_some(identity)
            .flatten();
        let user: Option<Arc<str>> = by_certificate.clone().or_else(|| login.map(|(user, _)| user.into()));
        let checked = match &by_certificate {
            Some(_) => Ok(()),
            None => {
                let owned = login.map(|(user, password)| (user.to_owned(), password.to_vec()));
                Box::pin(self.shared.check_login(material.clone(), owned)).await
            }
        };
        if let Err(refusal) = checked {
            self.shared
                .metrics
                .auth_failures
                .with_label_values(&[refusal.label()])
                .inc();
            tracing::warn!(peer = %self.peer, client_id = connect.client_id, user = user.as_deref(), reason = refusal.label(), "login refused");
            self.refused(
                &connect.client_id,
                refusal.label(),
                &format!("login refused as {}", user.as_deref().unwrap_or("(anonymous)")),
            );
            let _ = self
                .send(Packet::ConnAck(refused(ConnectReturnCode::NotAuthorized), None))
                .await;
            return Err((End::NotAuthorized, Some(connect.client_id)));
        }

        let assigned = connect.client_id.is_empty();
        let client_id = if assigned {
            if self.level == 3 || (!connect.clean_session && self.level == 4) {
                // MQTT 3.1.1 §3.1.3-8: a persistent session needs a client id;
                // MQTT 3.1 requires one always (Mosquitto answers 2 too).
                self.refused("", "client_id_required", "an empty client id without a clean session");
                let _ = self
                    .send(Packet::ConnAck(
                        refused(ConnectReturnCode::ClientIdentifierNotValid),
                        None,
                    ))
                    .await;
                return Err((End::ProtocolError, None));
            }
            generated_client_id()
        } else {
            connect.client_id.clone()
        };

        // The will waits as a queued message does, in the same budget.
        let will_bytes = will.as_ref().map_or(0, |w| w.bytes());
        if will_bytes > 0 && !self.shared.queue_budget.try_take(will_bytes) {
            self.shared.metrics.refused.with_label_values(&["will"]).inc();
            tracing::warn!(peer = %self.peer, client_id, will_bytes, "the will does not fit in the memory budget; refused");
            self.refused(&client_id, "will", "the will does not fit in the memory budget");
            let full = if self.level == 5 {
                ConnectReturnCode::QuotaExceeded
            } else {
                ConnectReturnCode::ServiceUnavailable
            };
            let _ = self.send(Packet::ConnAck(refused(full), None)).await;
            return Err((End::ServerBusy, Some(client_id)));
        }
        self.will_bytes = will_bytes;

        // MQTT §3.1.4-3: a second connection with this client id takes the
        // session over; the first is closed (0x8E on MQTT 5) when the
        // registry evicts it, which tells it that this, not a
        // failure, is what happened.
        let tracked_login = user.clone().map(|user| {
            let entry = material.auth.passwords.as_ref().and_then(|p| p.entry_id(&user));
            (user, entry)
        });
        drop(material);
        self.user.clone_from(&user);
        // An MQTT 5 client that asks for a longer keepalive than
        // `max_keepalive`, or for none, is given that one and told so in the
        // CONNACK (Server Keep Alive, [MQTT-3.2.2-21]), as Mosquitto does.
        // MQTT 3.1.1 has no way to say it: its keepalive stands.
        let max_keepalive = self.shared.settings.max_keepalive;
        let capped =
            self.level == 5 && max_keepalive > 0 && (connect.keep_alive == 0 || connect.keep_alive > max_keepalive);
        let keep_alive = if capped { max_keepalive } else { connect.keep_alive };
        // Closed after 1.5 x the keepalive without a packet ([MQTT-3.1.2-24]);
        // 0 is no keepalive, as Mosquitto takes it.
        let grace = (keep_alive > 0).then(|| Duration::from_millis(u64::from(keep_alive) * 1500));
        let eviction = Arc::new(crate::Eviction::new(tracked_login, grace));

        let (continuity, expiry) = self.continuity(connect.clean_session, props.as_ref());
        self.expiry = expiry;
        let shared = self.shared.clone();
        let asked = props.as_ref().and_then(|p| p.session_expiry_interval);
        match self
            .attach(
                &client_id,
                &shared.registry,
                continuity,
                &eviction,
                assigned,
                asked,
                keep_alive,
                capped,
            )
            .await
        {
            Ok(()) => Ok(Connected { eviction, will }),
            Err(end) => Err((end, Some(client_id))),
        }
    }

    /// An MQTT 5 DISCONNECT's session expiry interval replaces the CONNECT's
    /// (§3.14.2.2.2): 0 ends the session with this connection. A session that
    /// was to end with the connection cannot be kept this way: a protocol
    /// error.
    pub(super) fn expiry_on_disconnect(&mut self, asked: u32) -> Result<(), ()> {
        if !self.persistent {
            return if asked == 0 { Ok(()) } else { Err(()) };
        }
        let cap = self.shared.settings.persistent_client_expiration;
        self.expiry = session_lifetime(5, false, Some(asked), cap).1;
        Ok(())
    }

    /// Whether a saved session is taken up and this one kept, and for how long
    /// it outlives the connection (`None`: until a restart). MQTT 3.1.1: clean
    /// session off does both, for `persistent_client_expiration`. MQTT 5:
    /// clean start off takes one up; the session expiry interval (absent: 0,
    /// ended with the connection; 0xFFFFFFFF: never) keeps it, for at most
    /// `persistent_client_expiration`.
    fn continuity(&self, clean: bool, props: Option<&ConnectProperties>) -> (Continuity, Option<Duration>) {
        let asked = props.and_then(|p| p.session_expiry_interval);
        session_lifetime(
            self.level,
            clean,
            asked,
            self.shared.settings.persistent_client_expiration,
        )
    }

    /// What an MQTT 5 CONNACK tells the client about this server (§3.2.2.3):
    /// the id it was given when it sent none (a MUST), the largest packet it
    /// may send, how many QoS 2 messages may wait for their PUBREL at once
    /// (Receive Maximum: `max_inflight_messages`, as Mosquitto announces
    /// it), the session expiry when the server's cap shortened the one asked
    /// for, the Topic Alias Maximum (`max_topic_alias`; left out when 0,
    /// which means none), the Maximum QoS and Retain Available where
    /// `max_qos` and `retain_available` take them away, and the Server Keep
    /// Alive where `max_keepalive` capped the client's. Subscription
    /// identifiers, wildcards and shared subscriptions are available (the
    /// defaults, left out).
    pub(super) fn connack_properties(
        &self,
        assigned_client_identifier: Option<String>,
        asked_expiry: Option<u32>,
        expiry: Option<Duration>,
        server_keep_alive: Option<u16>,
    ) -> ConnAckProperties {
        let granted = expiry.map_or(u32::MAX, |e| u32::try_from(e.as_secs()).unwrap_or(u32::MAX));
        ConnAckProperties {
            assigned_client_identifier,
            max_packet_size: Some(u32::try_from(self.shared.settings.max_packet_size).unwrap_or(u32::MAX)),
            receive_max: Some(u16::try_from(self.shared.settings.limits.max_inflight_messages).unwrap_or(u16::MAX)),
            topic_alias_max: Some(self.shared.settings.limits.max_topic_alias).filter(|max| *max > 0),
            max_qos: (self.shared.settings.max_qos != QoS::ExactlyOnce).then_some(self.shared.settings.max_qos as u8),
            retain_available: (!self.shared.settings.retain_available).then_some(0),
            server_keep_alive,
            session_expiry_interval: (granted != asked_expiry.unwrap_or(0)).then_some(granted),
            ..ConnAckProperties::default()
        }
    }
}
fn refused(code: ConnectReturnCode) -> ConnAck {
    ConnAck {
        session_present: false,
        code,
    }
}

/// [`Session::continuity`] from the CONNECT's level, clean flag and session
/// expiry interval, with `persistent_client_expiration` as `cap`.
fn session_lifetime(
    level: u8,
    clean: bool,
    asked: Option<u32>,
    cap: Option<Duration>,
) -> (Continuity, Option<Duration>) {
    if level != 5 {
        let continuity = Continuity {
            resume: !clean,
            keep: !clean,
        };
        return (continuity, cap);
    }
    let expiry = match asked.unwrap_or(0) {
        0 => Some(Duration::ZERO),
        u32::MAX => cap,
        seconds => {
            let asked = Duration::from_secs(u64::from(seconds));
            Some(cap.map_or(asked, |cap| cap.min(asked)))
        }
    };
    let continuity = Continuity {
        resume: !clean,
        keep: expiry != Some(Duration::ZERO),
    };
    (continuity, expiry)
}

/// Mosquitto's way for an empty client id: `auto-` and a random suffix.
fn generated_client_id() -> String {
    use std::hash::{BuildHasher, Hasher};
    let mut hasher = std::collections::hash_map::RandomState::new().build_hasher();
    hasher.write_u128(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos()),
    );
    format!("auto-{:016x}", hasher.finish())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_session_lives_as_long_as_the_connect_asks_within_the_cap() {
        let day = Some(Duration::from_secs(86_400));
        let keep = |resume| Continuity { resume, keep: true };
        let end = |resume| Continuity { resume, keep: false };
        // MQTT 3.1.1: the clean flag does both; the cap is the expiry.
        assert_eq!(session_lifetime(4, false, None, day), (keep(true), day));
        assert_eq!(session_lifetime(4, false, None, None), (keep(true), None));
        assert_eq!(session_lifetime(4, true, None, day).0, end(false));
        // MQTT 5: the interval, capped; 0 (or none) ends with the connection.
        assert_eq!(
            session_lifetime(5, true, Some(60), day),
            (keep(false), Some(Duration::from_secs(60)))
        );
        assert_eq!(session_lifetime(5, false, Some(7 * 86_400), day), (keep(true), day));
        assert_eq!(session_lifetime(5, false, Some(u32::MAX), day), (keep(true), day));
        assert_eq!(session_lifetime(5, false, Some(u32::MAX), None), (keep(true), None));
        assert_eq!(session_lifetime(5, false, None, day).0, end(true));
        assert_eq!(session_lifetime(5, false, Some(0), None).0, end(true));
    }
}
