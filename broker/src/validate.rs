//! What a client sends, checked as MQTT requires, right after the codec has
//! framed it and before anything else (login, ACL, retained store, index)
//! sees it. Pure: a decoded packet in, the first thing wrong with it out.
//!
//! Strings (MQTT 3.1.1 §1.5.3, MQTT 5 §1.5.4): well-formed UTF-8 (the codec
//! and `str::from_utf8` refuse surrogates and overlong forms), no U+0000
//! ([MQTT-1.5.3-2], [MQTT-1.5.4-2]). The control characters U+0001..U+001F
//! and U+007F..U+009F and the non-characters, which the specifications only
//! discourage, are refused too, as Mosquitto 2.0 refuses them
//! (`mosquitto_validate_utf8`): a client that works with one broker works
//! with the other. Topic names hold no wildcards ([MQTT-3.3.2-2]) and are not
//! empty ([MQTT-4.7.3-1]); in a filter `#` stands alone and last
//! ([MQTT-4.7.1-2]) and `+` alone in its level ([MQTT-4.7.1-3]); at most
//! [`TOPIC_LEVEL_LIMIT`] separators (Mosquitto's `TOPIC_HIERARCHY_LIMIT`).
//!
//! What the client is told is [`Invalid::reason_code`]; the connection
//! closes in every case, as Mosquitto closes it.

use rumqttd::protocol::{
    ConnectProperties, DisconnectReasonCode, LastWill, LastWillProperties, Login, Packet, PublishProperties,
};

/// Most separators (`/`) a topic or filter may have: Mosquitto's limit
/// (`TOPIC_HIERARCHY_LIMIT`), so that the two brokers refuse the same topics.
pub const TOPIC_LEVEL_LIMIT: usize = 200;

/// Where in a packet the bad value was.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Field {
    ClientId,
    UserName,
    WillTopic,
    Topic,
    Filter,
    /// An MQTT 5 property: a user property, content type, reason string,
    /// response topic, authentication method.
    Property,
}

/// What was wrong with it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Problem {
    NotUtf8,
    /// U+0000.
    NullCharacter,
    /// U+0001..U+001F or U+007F..U+009F.
    ControlCharacter,
    /// U+FDD0..U+FDEF, or a code point ending in FFFE or FFFF.
    NonCharacter,
    Empty,
    /// `+` or `#` in a topic name.
    Wildcard,
    /// `#` not alone or not last, `+` not alone in its level.
    MisplacedWildcard,
    TooManyLevels,
    /// A topic alias of 0, or above the Topic Alias Maximum the CONNACK
    /// announced ([MQTT-3.3.2-9], [MQTT-3.3.2-10]).
    TopicAlias,
    /// An empty topic with an alias the client never set (MQTT 5
    /// §3.3.2.3.4: a Protocol Error).
    UnknownTopicAlias,
    /// A subscription identifier on a PUBLISH from a client ([MQTT-3.3.4-6]).
    SubscriptionIdentifier,
    /// A Receive Maximum or Maximum Packet Size of 0 in a CONNECT, or a
    /// Subscription Identifier of 0, which MQTT 5 calls a Protocol Error
    /// (§3.1.2.11.3, §3.1.2.11.4, §3.8.2.1.2).
    Zero,
    /// No Local on a shared subscription ([MQTT-3.8.3-4]).
    NoLocalShared,
}

/// The first bad value of a packet.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("{}: {}", self.field.label(), self.problem.label())]
pub struct Invalid {
    pub field: Field,
    pub problem: Problem,
}

impl Field {
    pub fn label(self) -> &'static str {
        match self {
            Field::ClientId => "client_id",
            Field::UserName => "user_name",
            Field::WillTopic => "will_topic",
            Field::Topic => "topic",
            Field::Filter => "filter",
            Field::Property => "property",
        }
    }
}

impl Problem {
    pub fn label(self) -> &'static str {
        match self {
            Problem::NotUtf8 => "not_utf8",
            Problem::NullCharacter => "null_character",
            Problem::ControlCharacter => "control_character",
            Problem::NonCharacter => "non_character",
            Problem::Empty => "empty",
            Problem::Wildcard => "wildcard",
            Problem::MisplacedWildcard => "misplaced_wildcard",
            Problem::TooManyLevels => "too_many_levels",
            Problem::TopicAlias => "topic_alias",
            Problem::UnknownTopicAlias => "unknown_topic_alias",
            Problem::SubscriptionIdentifier => "subscription_identifier",
            Problem::Zero => "zero",
            Problem::NoLocalShared => "no_local_shared",
        }
    }
}

impl Invalid {
    fn new(field: Field, problem: Problem) -> Self {
        Self { field, problem }
    }

    /// The DISCONNECT reason an MQTT 5 client gets after its CONNECT, as
    /// Mosquitto 2.0 answers: a badly encoded string or filter is a Malformed
    /// Packet (0x81); a topic name that is well encoded but not a topic name
    /// is a Protocol Error (0x82); an alias never offered is 0x94 (MQTT 5
    /// §3.3.2.3.4).
    pub fn reason_code(&self) -> DisconnectReasonCode {
        match (self.field, self.problem) {
            (_, Problem::TopicAlias) => DisconnectReasonCode::TopicAliasInvalid,
            (
                _,
                Problem::SubscriptionIdentifier | Problem::Zero | Problem::NoLocalShared | Problem::UnknownTopicAlias,
            ) => DisconnectReasonCode::ProtocolError,
            (Field::Filter, _) => DisconnectReasonCode::MalformedPacket,
            (_, Problem::NotUtf8 | Problem::NullCharacter | Problem::ControlCharacter | Problem::NonCharacter) => {
                DisconnectReasonCode::MalformedPacket
            }
            _ => DisconnectReasonCode::ProtocolError,
        }
    }
}

/// A string's code points: none the specification forbids or Mosquitto
/// refuses.
pub fn string(field: Field, s: &str) -> Result<(), Invalid> {
    for c in s.chars() {
        let problem = match u32::from(c) {
            0 => Problem::NullCharacter,
            0x01..=0x1f | 0x7f..=0x9f => Problem::ControlCharacter,
            0xfdd0..=0xfdef => Problem::NonCharacter,
            n if n & 0xfffe == 0xfffe => Problem::NonCharacter,
            _ => continue,
        };
        return Err(Invalid::new(field, problem));
    }
    Ok(())
}

/// Bytes that must be a string (topics come from the codec as bytes).
pub fn utf8(field: Field, bytes: &[u8]) -> Result<&str, Invalid> {
    let s = std::str::from_utf8(bytes).map_err(|_| Invalid::new(field, Problem::NotUtf8))?;
    string(field, s)?;
    Ok(s)
}

/// A topic name: what a PUBLISH or a will is sent to.
pub fn topic_name(field: Field, bytes: &[u8]) -> Result<(), Invalid> {
    let topic = utf8(field, bytes)?;
    if topic.is_empty() {
        return Err(Invalid::new(field, Problem::Empty));
    }
    if topic.contains(['+', '#']) {
        return Err(Invalid::new(field, Problem::Wildcard));
    }
    levels(field, topic)
}

/// A topic filter: what a SUBSCRIBE or UNSUBSCRIBE names. A shared
/// subscription's (`$share/group/filter`) group holds no wildcards and its
/// filter follows the same rules (MQTT 5 §4.8.2).
pub fn topic_filter(filter: &str) -> Result<(), Invalid> {
    let field = Field::Filter;
    string(field, filter)?;
    let filter = match filter.strip_prefix("$share/") {
        Some(shared) => {
            let (group, rest) = shared.split_once('/').unwrap_or((shared, ""));
            if group.is_empty() || rest.is_empty() {
                return Err(Invalid::new(field, Problem::Empty));
            }
            if group.contains(['+', '#']) {
                return Err(Invalid::new(field, Problem::MisplacedWildcard));
            }
            rest
        }
        None => filter,
    };
    if filter.is_empty() {
        return Err(Invalid::new(field, Problem::Empty));
    }
    let mut parts = filter.split('/').peekable();
    while let Some(level) = parts.next() {
        let last = parts.peek().is_none();
        let misplaced = match level {
            "#" => !last,
            "+" => false,
            _ => level.contains(['+', '#']),
        };
        if misplaced {
            return Err(Invalid::new(field, Problem::MisplacedWildcard));
        }
    }
    levels(field, filter)
}

fn levels(field: Field, topic: &str) -> Result<(), Invalid> {
    // Levels are separators plus one.
    if topic.bytes().filter(|&b| b == b'/').count() > TOPIC_LEVEL_LIMIT {
        return Err(Invalid::new(field, Problem::TooManyLevels));
    }
    Ok(())
}

fn user_properties(properties: &[(String, String)]) -> Result<(), Invalid> {
    for (key, value) in properties {
        string(Field::Property, key)?;
        string(Field::Property, value)?;
    }
    Ok(())
}

fn optional(value: Option<&String>) -> Result<(), Invalid> {
    value.map_or(Ok(()), |s| string(Field::Property, s))
}

/// The strings of a CONNECT: client id, user name, will topic and the MQTT 5
/// properties. The password is binary data (MQTT §3.1.3.5) and is not checked.
pub fn connect(
    client_id: &str,
    properties: Option<&ConnectProperties>,
    will: Option<&LastWill>,
    will_properties: Option<&LastWillProperties>,
    login: Option<&Login>,
) -> Result<(), Invalid> {
    string(Field::ClientId, client_id)?;
    if let Some(login) = login {
        string(Field::UserName, &login.username)?;
    }
    if let Some(will) = will {
        topic_name(Field::WillTopic, &will.topic)?;
    }
    if let Some(p) = properties {
        if p.receive_maximum == Some(0) || p.max_packet_size == Some(0) {
            return Err(Invalid::new(Field::Property, Problem::Zero));
        }
        user_properties(&p.user_properties)?;
        optional(p.authentication_method.as_ref())?;
    }
    if let Some(p) = will_properties {
        user_properties(&p.user_properties)?;
        optional(p.content_type.as_ref())?;
        response_topic(p.response_topic.as_ref())?;
    }
    Ok(())
}

/// A response topic is a topic name ([MQTT-3.3.2-14]).
fn response_topic(topic: Option<&String>) -> Result<(), Invalid> {
    let Some(topic) = topic else { return Ok(()) };
    topic_name(Field::Property, topic.as_bytes())
}

fn publish_properties(p: &PublishProperties, max_topic_alias: u16) -> Result<(), Invalid> {
    if p.topic_alias.is_some_and(|alias| alias == 0 || alias > max_topic_alias) {
        return Err(Invalid::new(Field::Property, Problem::TopicAlias));
    }
    if !p.subscription_identifiers.is_empty() {
        return Err(Invalid::new(Field::Property, Problem::SubscriptionIdentifier));
    }
    user_properties(&p.user_properties)?;
    optional(p.content_type.as_ref())?;
    response_topic(p.response_topic.as_ref())
}

/// Any packet after CONNECT, from a client that may use topic aliases 1 to
/// `max_topic_alias` (the CONNACK's Topic Alias Maximum).
pub fn packet(packet: &Packet, max_topic_alias: u16) -> Result<(), Invalid> {
    match packet {
        Packet::Publish(publish, properties) => {
            if let Some(p) = properties {
                publish_properties(p, max_topic_alias)?;
                // An alias with an empty topic stands for the one it was set
                // with, which was checked then (MQTT 5 §3.3.2.3.4).
                if p.topic_alias.is_some() && publish.topic.is_empty() {
                    return Ok(());
                }
            }
            topic_name(Field::Topic, &publish.topic)
        }
        Packet::Subscribe(subscribe, properties) => {
            if let Some(p) = properties {
                // MQTT 5 §3.8.2.1.2: 1 to 268,435,455 (the codec's variable
                // byte integer bounds it above).
                if p.id == Some(0) {
                    return Err(Invalid::new(Field::Property, Problem::Zero));
                }
                user_properties(&p.user_properties)?;
            }
            subscribe.filters.iter().try_for_each(|f| {
                topic_filter(&f.path)?;
                if f.nolocal && f.path.starts_with("$share/") {
                    return Err(Invalid::new(Field::Filter, Problem::NoLocalShared));
                }
                Ok(())
            })
        }
        Packet::Unsubscribe(unsubscribe, properties) => {
            if let Some(p) = properties {
                user_properties(&p.user_properties)?;
            }
            unsubscribe.filters.iter().try_for_each(|f| topic_filter(f))
        }
        Packet::PubAck(_, Some(p)) => reason(p.reason_string.as_ref(), &p.user_properties),
        Packet::PubRec(_, Some(p)) => reason(p.reason_string.as_ref(), &p.user_properties),
        Packet::PubRel(_, Some(p)) => reason(p.reason_string.as_ref(), &p.user_properties),
        Packet::PubComp(_, Some(p)) => reason(p.reason_string.as_ref(), &p.user_properties),
        Packet::Disconnect(_, Some(p)) => {
            optional(p.server_reference.as_ref())?;
            reason(p.reason_string.as_ref(), &p.user_properties)
        }
        _ => Ok(()),
    }
}

fn reason(reason_string: Option<&String>, properties: &[(String, String)]) -> Result<(), Invalid> {
    optional(reason_string)?;
    user_properties(properties)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn problem_of_filter(filter: &str) -> Option<Problem> {
        topic_filter(filter).err().map(|e| e.problem)
    }

    fn problem_of_topic(topic: &str) -> Option<Problem> {
        topic_name(Field::Topic, topic.as_bytes()).err().map(|e| e.problem)
    }

    #[test]
    fn topic_names_follow_mqtt_3_3_2_2_and_4_7_3_1() {
        assert_eq!(problem_of_topic("é/x"), None);
        assert_eq!(problem_of_topic("/"), None);
        assert_eq!(problem_of_topic("$SYS/broker"), None);
        assert_eq!(problem_of_topic(""), Some(Problem::Empty));
        assert_eq!(problem_of_topic("a/+"), Some(Problem::Wildcard));
        assert_eq!(problem_of_topic("a/#"), Some(Problem::Wildcard));
        assert_eq!(problem_of_topic("a\u{0}b"), Some(Problem::NullCharacter));
        assert_eq!(problem_of_topic("a\u{1}b"), Some(Problem::ControlCharacter));
        assert_eq!(problem_of_topic("a\u{85}b"), Some(Problem::ControlCharacter));
        assert_eq!(problem_of_topic("a\u{fffe}"), Some(Problem::NonCharacter));
        assert_eq!(problem_of_topic("a\u{1ffff}"), Some(Problem::NonCharacter));
        assert_eq!(problem_of_topic("a\u{fdd0}"), Some(Problem::NonCharacter));
        assert_eq!(problem_of_topic("a\u{fffd}"), None);
        assert_eq!(
            topic_name(Field::Topic, b"a\xffb").err().map(|e| e.problem),
            Some(Problem::NotUtf8)
        );
        assert_eq!(problem_of_topic(&"a/".repeat(200)), None);
        assert_eq!(problem_of_topic(&"a/".repeat(201)), Some(Problem::TooManyLevels));
    }

    #[test]
    fn filters_follow_mqtt_4_7_1() {
        for good in [
            "#",
            "+",
            "a/#",
            "+/+/#",
            "a/+/b",
            "/",
            "$SYS/#",
            "$share/g/a/#",
            "$share/g/+",
        ] {
            assert_eq!(problem_of_filter(good), None, "{good}");
        }
        for (bad, problem) in [
            ("", Problem::Empty),
            ("a/#/b", Problem::MisplacedWildcard),
            ("a#", Problem::MisplacedWildcard),
            ("a+", Problem::MisplacedWildcard),
            ("a/b+/c", Problem::MisplacedWildcard),
            ("$share/g+/a", Problem::MisplacedWildcard),
            ("$share/g", Problem::Empty),
            ("$share//a", Problem::Empty),
            ("a\u{0}", Problem::NullCharacter),
        ] {
            assert_eq!(problem_of_filter(bad), Some(problem), "{bad:?}");
        }
    }

    #[test]
    fn reason_codes_are_mosquittos() {
        let code = |field, problem| Invalid::new(field, problem).reason_code();
        assert_eq!(
            code(Field::Topic, Problem::Wildcard),
            DisconnectReasonCode::ProtocolError
        );
        assert_eq!(
            code(Field::Topic, Problem::NotUtf8),
            DisconnectReasonCode::MalformedPacket
        );
        assert_eq!(
            code(Field::Filter, Problem::MisplacedWildcard),
            DisconnectReasonCode::MalformedPacket
        );
        assert_eq!(
            code(Field::Property, Problem::TopicAlias),
            DisconnectReasonCode::TopicAliasInvalid
        );
    }

    #[test]
    fn a_receive_maximum_or_packet_size_of_zero_is_refused() {
        let props = |receive_maximum, max_packet_size| ConnectProperties {
            session_expiry_interval: None,
            receive_maximum,
            max_packet_size,
            topic_alias_max: None,
            request_response_info: None,
            request_problem_info: None,
            user_properties: Vec::new(),
            authentication_method: None,
            authentication_data: None,
        };
        for properties in [props(Some(0), None), props(None, Some(0))] {
            assert_eq!(
                connect("c", Some(&properties), None, None, None),
                Err(Invalid::new(Field::Property, Problem::Zero))
            );
        }
        let fine = props(Some(1), Some(1));
        assert_eq!(connect("c", Some(&fine), None, None, None), Ok(()));
    }

    /// MQTT 5 §3.8.2.1.2 and [MQTT-3.8.3-4]: a Subscription Identifier of 0,
    /// and No Local on a shared subscription, are Protocol Errors (0x82).
    #[test]
    fn a_subscription_id_of_zero_and_no_local_on_a_shared_filter_are_refused() {
        use rumqttd::protocol::{Filter, QoS, RetainForwardRule, Subscribe, SubscribeProperties};
        let subscribe = |path: &str, nolocal, id| {
            let filter = Filter {
                path: path.to_owned(),
                qos: QoS::AtLeastOnce,
                nolocal,
                preserve_retain: false,
                retain_forward_rule: RetainForwardRule::OnEverySubscribe,
            };
            let properties = SubscribeProperties {
                id,
                user_properties: Vec::new(),
            };
            let subscribe = Subscribe {
                pkid: 1,
                filters: vec![filter],
            };
            packet(&Packet::Subscribe(subscribe, Some(properties)), 10)
        };
        assert_eq!(subscribe("a/b", true, Some(1)), Ok(()));
        assert_eq!(subscribe("$share/g/a", false, None), Ok(()));
        let zero = subscribe("a/b", false, Some(0)).unwrap_err();
        assert_eq!(zero.reason_code(), DisconnectReasonCode::ProtocolError);
        let shared = subscribe("$share/g/a", true, None).unwrap_err();
        assert_eq!(shared, Invalid::new(Field::Filter, Problem::NoLocalShared));
        assert_eq!(shared.reason_code(), DisconnectReasonCode::ProtocolError);
    }
}
