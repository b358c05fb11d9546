//! Mosquitto's `acl_file`: parse and evaluate (pure).
//!
//! ```text
//! # lines before the first `user` line apply to anonymous clients
//! topic read public/#
//! user alice
//! topic readwrite devices/alice/#
//! topic deny devices/alice/secret
//! pattern write devices/%c/state      # %c: client id, %u: user name, for everyone
//! ```
//!
//! Semantics follow Mosquitto 2.0's `security_default.c`: `topic` without an
//! access word means `readwrite`; nothing matched means denied; a `deny` that
//! matches wins; a topic starting with `$` is matched only by entries starting
//! with `$`; `pattern` entries apply to every client, a `%u` one only to clients
//! with a user name, and none to a client whose id or user name holds `+` or
//! `#` (CVE-2017-7650). Read access is checked when each message is delivered.
//! Better than Mosquitto, whose acl_file never refuses a SUBSCRIBE: a filter
//! none of whose topics could be readable is refused ([`Acl::may_subscribe`]).

use std::collections::HashMap;

/// What a client wants to do with a topic.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Access {
    Read,
    Write,
}

#[derive(Debug, Clone, PartialEq, Eq)]
struct Rule {
    filter: String,
    read: bool,
    write: bool,
    deny: bool,
}

/// A parsed ACL file.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Acl {
    anonymous: Vec<Rule>,
    users: HashMap<String, Vec<Rule>>,
    patterns: Vec<Rule>,
}

/// A line that does not parse: its number and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AclError {
    pub line: usize,
    pub message: String,
}

impl Acl {
    /// Parse the text of an ACL file. Any bad line is an error: an ACL that is
    /// half understood would grant or deny what nobody meant.
    pub fn parse(text: &str) -> Result<Self, AclError> {
        let mut acl = Acl::default();
        let mut user: Option<String> = None;
        for (index, raw) in text.lines().enumerate() {
            let line = raw.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let error = |message: &str| AclError {
                line: index + 1,
                message: message.to_owned(),
            };
            let (keyword, rest) = line.split_once(char::is_whitespace).unwrap_or((line, ""));
            let rest = rest.trim();
            match keyword {
                "user" if !rest.is_empty() => {
                    user = Some(rest.to_owned());
                    acl.users.entry(rest.to_owned()).or_default();
                }
                "topic" | "pattern" => {
                    let (first, after) = rest.split_once(char::is_whitespace).unwrap_or((rest, ""));
                    let (read, write, deny, filter) = match first {
                        "read" => (true, false, false, after.trim()),
                        "write" => (false, true, false, after.trim()),
                        "readwrite" => (true, true, false, after.trim()),
                        "deny" => (false, false, true, after.trim()),
                        _ => (true, true, false, rest),
                    };
                    if filter.is_empty() {
                        return Err(error("a topic is needed"));
                    }
                    if !valid_filter(filter) {
                        return Err(error(
                            "`#` may only be the last level, and `+` and `#` must be whole levels",
                        ));
                    }
                    let rule = Rule {
                        filter: filter.to_owned(),
                        read,
                        write,
                        deny,
                    };
                    match (keyword, &user) {
                        ("pattern", _) => acl.patterns.push(rule),
                        (_, Some(user)) => acl.users.entry(user.clone()).or_default().push(rule),
                        (_, None) => acl.anonymous.push(rule),
                    }
                }
                "user" => return Err(error("`user` needs a name")),
                other => {
                    return Err(error(&format!(
                        "unknown keyword `{other}` (expected user, topic or pattern)"
                    )));
                }
            }
        }
        Ok(acl)
    }

    /// The rules that apply to a client, patterns resolved for it.
    fn rules<'a>(&'a self, user: Option<&str>, client_id: &str) -> impl Iterator<Item = Rule> + 'a {
        let own = match user {
            Some(user) => self.users.get(user).map_or(&[][..], Vec::as_slice),
            None => &self.anonymous[..],
        };
        // A client id or user name holding a wildcard would widen every
        // pattern it is put into (`devices/%c/#` for the client `+`: every
        // device's topics). Such a client gets no pattern rule at all, as
        // with Mosquitto since CVE-2017-7650: only its own rules apply.
        let wild = |s: &str| s.contains(['+', '#']);
        let patterns = if wild(client_id) || user.is_some_and(wild) {
            &[][..]
        } else {
            &self.patterns[..]
        };
        let user = user.map(str::to_owned);
        let client_id = client_id.to_owned();
        own.iter().cloned().chain(patterns.iter().filter_map(move |rule| {
            if rule.filter.contains("%u") && user.is_none() {
                return None;
            }
            let filter = rule
                .filter
                .replace("%u", user.as_deref().unwrap_or_default())
                .replace("%c", &client_id);
            Some(Rule { filter, ..rule.clone() })
        }))
    }

    /// Whether `user` (`None`: anonymous) as `client_id` may `access` `topic`.
    pub fn allows(&self, user: Option<&str>, client_id: &str, topic: &str, access: Access) -> bool {
        let mut granted = false;
        for rule in self.rules(user, client_id) {
            if topic.starts_with('$') != rule.filter.starts_with('$') || !matches(&rule.filter, topic) {
                continue;
            }
            if rule.deny {
                return false;
            }
            granted |= match access {
                Access::Read => rule.read,
                Access::Write => rule.write,
            };
        }
        granted
    }

    /// Whether subscribing to `filter` could ever deliver anything: some rule
    /// granting read covers topics the filter covers. A wildcard that covers
    /// readable and unreadable topics is granted and filtered at delivery.
    pub fn may_subscribe(&self, user: Option<&str>, client_id: &str, filter: &str) -> bool {
        let rules: Vec<Rule> = self.rules(user, client_id).collect();
        // A deny covering the whole filter refuses it outright.
        if rules.iter().any(|r| r.deny && covers(&r.filter, filter)) {
            return false;
        }
        rules
            .iter()
            .any(|r| r.read && filter.starts_with('$') == r.filter.starts_with('$') && intersects(&r.filter, filter))
    }
}

fn valid_filter(filter: &str) -> bool {
    let levels: Vec<&str> = filter.split('/').collect();
    levels.iter().enumerate().all(|(i, level)| match *level {
        "#" => i == levels.len() - 1,
        "+" => true,
        other => !other.contains(['+', '#']),
    })
}

/// Whether `filter` matches the concrete `topic`.
pub fn matches(filter: &str, topic: &str) -> bool {
    let mut topic_levels = topic.split('/');
    for level in filter.split('/') {
        match (level, topic_levels.next()) {
            ("#", _) => return true,
            ("+", Some(_)) => {}
            (literal, Some(t)) if literal == t => {}
            _ => return false,
        }
    }
    topic_levels.next().is_none()
}

/// Whether some topic matches both filters.
fn intersects(a: &str, b: &str) -> bool {
    let (mut a, mut b) = (a.split('/'), b.split('/'));
    loop {
        match (a.next(), b.next()) {
            (Some("#"), _) | (_, Some("#")) => return true,
            (None, None) => return true,
            (Some(x), Some(y)) if x == "+" || y == "+" || x == y => {}
            _ => return false,
        }
    }
}

/// Whether every topic `inner` matches, `outer` matches too.
fn covers(outer: &str, inner: &str) -> bool {
    let (mut o, mut i) = (outer.split('/'), inner.split('/'));
    loop {
        match (o.next(), i.next()) {
            (Some("#"), _) => return true,
            (None, None) => return true,
            (Some("+"), Some(x)) if x != "#" => {}
            (Some(x), Some(y)) if x == y && x != "+" && x != "#" => {}
            _ => return false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const ACL: &str = "# anonymous clients\n\
        topic read public/#\n\
        \n\
        user alice\n\
        topic readwrite devices/alice/#\n\
        topic deny devices/alice/secret\n\
        topic read $SYS/#\n\
        user bob\n\
        topic write inbox/+\n\
        pattern write devices/%c/state\n\
        pattern read users/%u/#\n";

    fn acl() -> Acl {
        Acl::parse(ACL).unwrap()
    }

    #[test]
    fn anonymous_rules_come_before_the_first_user() {
        let acl = acl();
        assert!(acl.allows(None, "c", "public/news", Access::Read));
        assert!(!acl.allows(None, "c", "public/news", Access::Write));
        assert!(
            !acl.allows(Some("alice"), "c", "public/news", Access::Read),
            "alice's rules do not include it"
        );
    }

    #[test]
    fn users_deny_and_nothing_matched() {
        let acl = acl();
        assert!(acl.allows(Some("alice"), "c", "devices/alice/temp", Access::Write));
        assert!(
            !acl.allows(Some("alice"), "c", "devices/alice/secret", Access::Read),
            "deny wins"
        );
        assert!(
            !acl.allows(Some("alice"), "c", "devices/bob/temp", Access::Read),
            "nothing matched: denied"
        );
        assert!(acl.allows(Some("bob"), "c", "inbox/7", Access::Write));
        assert!(!acl.allows(Some("bob"), "c", "inbox/7/x", Access::Write));
        assert!(
            !acl.allows(Some("carol"), "c", "inbox/7", Access::Write),
            "unknown user: nothing"
        );
    }

    #[test]
    fn patterns_substitute_user_and_client_id() {
        let acl = acl();
        assert!(acl.allows(Some("bob"), "sensor-9", "devices/sensor-9/state", Access::Write));
        assert!(!acl.allows(Some("bob"), "sensor-9", "devices/sensor-8/state", Access::Write));
        assert!(
            acl.allows(None, "sensor-9", "devices/sensor-9/state", Access::Write),
            "%c applies to anonymous"
        );
        assert!(acl.allows(Some("carol"), "c", "users/carol/inbox", Access::Read));
        assert!(!acl.allows(None, "c", "users//inbox", Access::Read), "%u needs a user");
    }

    #[test]
    fn dollar_topics_match_only_dollar_entries() {
        let mut text = ACL.to_owned();
        text.push_str("user root\ntopic readwrite #\n");
        let acl = Acl::parse(&text).unwrap();
        assert!(
            !acl.allows(Some("root"), "c", "$SYS/broker/uptime", Access::Read),
            "`#` does not cover `$SYS`"
        );
        assert!(acl.allows(Some("alice"), "c", "$SYS/broker/uptime", Access::Read));
    }

    #[test]
    fn subscriptions_are_refused_only_when_nothing_could_be_read() {
        let acl = acl();
        assert!(
            acl.may_subscribe(Some("alice"), "c", "devices/#"),
            "covers readable and unreadable: granted"
        );
        assert!(acl.may_subscribe(Some("alice"), "c", "devices/+/temp"));
        assert!(!acl.may_subscribe(Some("alice"), "c", "other/#"));
        assert!(
            !acl.may_subscribe(Some("alice"), "c", "devices/alice/secret"),
            "wholly denied"
        );
        assert!(!acl.may_subscribe(Some("bob"), "c", "inbox/+"), "write-only");
        assert!(acl.may_subscribe(None, "c", "public/+/x"));
    }

    #[test]
    fn bad_lines_are_errors_with_their_number() {
        let err = Acl::parse("user alice\ntopic read a/#/b\n").unwrap_err();
        assert_eq!(err.line, 2);
        let err = Acl::parse("topic read a\nallow everything\n").unwrap_err();
        assert_eq!((err.line, err.message.contains("unknown keyword `allow`")), (2, true));
        assert_eq!(Acl::parse("user\n").unwrap_err().line, 1);
    }

    #[test]
    fn filter_matching() {
        assert!(matches("a/+/c", "a/b/c"));
        assert!(matches("a/#", "a"));
        assert!(matches("a/#", "a/b/c"));
        assert!(!matches("a/+", "a/b/c"));
        assert!(intersects("a/+/c", "a/b/#"));
        assert!(!intersects("a/b", "a/c"));
        assert!(covers("a/#", "a/+/c"));
        assert!(!covers("a/+", "a/#"));
    }

    #[test]
    fn wildcards_in_a_client_id_or_user_name_get_no_pattern_rules() {
        let acl = Acl::parse(
            "topic read public/#\n\
             user eve+\n\
             topic readwrite eve/#\n\
             pattern readwrite devices/%c/#\n\
             pattern readwrite users/%u/#\n\
             pattern read everyone/#\n",
        )
        .unwrap();
        assert!(acl.allows(None, "d1", "devices/d1/x", Access::Write));
        assert!(!acl.allows(None, "+", "devices/d1/x", Access::Write), "%c = + widens");
        assert!(!acl.allows(None, "#", "devices/d1/x", Access::Read), "%c = # widens");
        assert!(!acl.may_subscribe(None, "+", "devices/+/#"));
        assert!(!acl.allows(None, "+", "everyone/x", Access::Read), "no pattern at all");
        assert!(
            acl.allows(None, "+", "public/x", Access::Read),
            "its own rules still apply"
        );
        assert!(!acl.allows(Some("eve+"), "c", "users/bob/x", Access::Read), "%u = eve+");
        assert!(
            acl.allows(Some("eve+"), "c", "eve/x", Access::Write),
            "the user's own rules apply"
        );
    }
}
