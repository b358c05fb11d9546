//! The broker's status page, `/`, and the same data as JSON, `/status`: its
//! listeners, clients and sessions (busiest first), subscriptions, retained
//! messages, the memory budget and what of it is in use, recent refusals
//! and the counters behind them, and the last reload of its files.
//!
//! Read from the registry, the budget's parts, [`Shared`]'s refusals and
//! reload state and the metrics registry when asked: the page keeps nothing
//! of its own. Client ids and user names are the clients' own (validated as
//! MQTT strings where they came in); the page escapes them. Passwords,
//! payloads and file contents are never shown.

use prometheus::Registry;
use serde::Serialize;
use snigate_shared::page::{Cell, Page, bytes};
use snigate_shared::status::{Bounded, Refusal, ReloadState, Total, totals, unix_now};

use crate::Shared;
use crate::config::TLS_CONNECTION_MEMORY;
use crate::registry::SessionView;
use crate::usage::{self, Part};

/// The counters whose totals the page shows as refusals and drops.
const REFUSAL_COUNTERS: &[&str] = &[
    "snigate_broker_auth_failures_total",
    "snigate_broker_limit_refusals_total",
    "snigate_broker_invalid_input_total",
    "snigate_broker_acl_denials_total",
    "snigate_broker_messages_dropped_total",
];

/// What does not change while the broker runs.
#[derive(Debug, Clone, Serialize)]
pub struct Fixed {
    pub version: &'static str,
    pub started_at: u64,
    /// Bound addresses, each with whether it takes a PROXY header first.
    pub mqtt: Vec<String>,
    pub mqtts: Vec<String>,
    pub admin: Option<String>,
}

#[derive(Serialize)]
pub struct Status {
    #[serde(flatten)]
    fixed: Fixed,
    now: u64,
    clients_connected: i64,
    sessions: Bounded<SessionView>,
    subscriptions: usize,
    retained_messages: usize,
    retained_bytes: usize,
    budget: Budget,
    refusal_totals: Bounded<Total>,
    recent_refusals: Vec<Refusal>,
    reload: ReloadState,
    reloads_applied: u64,
    reloads_refused: u64,
}

/// The memory budget (docs/broker.md, "Memory budget") and its parts' use.
#[derive(Serialize)]
struct Budget {
    memory_limit: u64,
    /// Where the limit came from (the setting, the cgroup, the default).
    source: &'static str,
    parts: Vec<Part>,
}

/// What the page shows, now.
pub fn status(fixed: &Fixed, shared: &Shared, registry: &Registry) -> Status {
    let limits = &shared.settings.limits;
    let figures = shared.registry.figures();
    let reloads = |result: &str| shared.metrics.reloads.with_label_values(&[result]).get();
    Status {
        fixed: fixed.clone(),
        now: unix_now(),
        clients_connected: shared.metrics.connected.get(),
        // A session's backlog is what makes it busy; then its subscriptions.
        sessions: Bounded::busiest(shared.registry.session_views(), |s| {
            (s.queued + s.inflight, s.subscriptions, s.connected)
        }),
        subscriptions: figures.subscriptions,
        retained_messages: figures.retained,
        retained_bytes: figures.retained_bytes,
        budget: Budget {
            memory_limit: limits.memory_limit,
            source: limits.memory_limit_source,
            parts: usage::parts(shared),
        },
        refusal_totals: totals(registry, REFUSAL_COUNTERS),
        recent_refusals: shared.refusals.recent(),
        reload: shared.reloads.state(),
        reloads_applied: reloads("success"),
        reloads_refused: reloads("failure"),
    }
}

/// The page's HTML.
pub fn render(s: &Status) -> String {
    let mut page = Page::new("snigate-broker", s.fixed.version, s.fixed.started_at, s.now);
    let list = |l: &[String]| {
        if l.is_empty() {
            Cell::None
        } else {
            Cell::text(l.join(", "))
        }
    };
    page.section("Listeners and clients");
    page.facts(vec![
        ("MQTT listeners", list(&s.fixed.mqtt)),
        ("MQTT over TLS", list(&s.fixed.mqtts)),
        ("Admin server", s.fixed.admin.clone().into()),
        ("Clients connected", Cell::text(s.clients_connected.to_string())),
        ("Sessions held", s.sessions.total.into()),
        ("Subscriptions", s.subscriptions.into()),
        (
            "Retained messages",
            Cell::text(format!(
                "{} ({})",
                s.retained_messages,
                bytes(u64::try_from(s.retained_bytes).unwrap_or(u64::MAX))
            )),
        ),
    ]);

    page.section("Sessions");
    page.table(
        "sessions",
        &["Client id", "User", "State", "Subscriptions", "Queued", "In flight"],
        &s.sessions,
        |v| {
            let state = match (v.connected, v.persistent) {
                (true, true) => "connected, kept",
                (true, false) => "connected",
                (false, _) => "away, kept",
            };
            vec![
                v.client_id.as_str().into(),
                v.user.clone().into(),
                Cell::state(v.connected, state, state),
                v.subscriptions.into(),
                v.queued.into(),
                v.inflight.into(),
            ]
        },
    );

    page.section("Memory budget");
    page.note(&format!(
        "memory_limit {} ({}); a TLS connection holds {} KiB of the connection buffers.",
        bytes(s.budget.memory_limit),
        s.budget.source,
        TLS_CONNECTION_MEMORY >> 10
    ));
    let parts = Bounded {
        total: s.budget.parts.len(),
        rows: s.budget.parts.iter().collect(),
    };
    page.table("budget parts", &["Part", "In use", "Bound", "Used"], &parts, |p| {
        let shown = |n: u64| if p.unit == "bytes" { bytes(n) } else { n.to_string() };
        #[allow(clippy::cast_precision_loss)]
        let share = if p.limit == 0 {
            0.0
        } else {
            100.0 * p.used as f64 / p.limit as f64
        };
        let used = format!("{share:.1} %");
        vec![
            p.part.replace('_', " ").into(),
            shown(p.used).into(),
            shown(p.limit).into(),
            if share >= 90.0 {
                Cell::Bad(used)
            } else {
                Cell::text(used)
            },
        ]
    });

    page.section("Refusals and drops");
    page.totals("refusal and drop counters", &s.refusal_totals);
    page.refusals(&s.recent_refusals, "Client id");

    page.section("Files");
    page.note("The password file, the ACL file and the TLS certificate and key reload on SIGHUP and when they change; other settings need a restart.");
    page.facts(Page::reload_facts(&s.reload, s.reloads_applied, s.reloads_refused));
    page.finish()
}
