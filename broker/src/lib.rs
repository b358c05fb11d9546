//! snigate-broker: an MQTT broker that is a drop-in for Mosquitto, with a
//! message core of its own over rumqttd's MQTT codecs.
//!
//! Layout:
//! - [`session`]: one client connection: MQTT framing, CONNECT and login as
//!   Mosquitto answers them, packets to and from the core, keepalive, will.
//! - [`registry`], [`index`], [`retained`], [`outbox`], [`message`]: the
//!   core: sessions by client id, the subscription index, retained
//!   messages, each session's queue, a message decoded once.
//! - [`validate`]: what a client sends, checked as MQTT requires before
//!   anything else sees it (pure).
//! - [`inbound`]: the session driven without sockets, for the fuzz target.
//! - [`auth`]: the password file (mosquitto_passwd format) and anonymous policy.
//! - [`passwd_cmd`]: the `passwd` subcommand, mosquitto_passwd's twin.
//! - [`certs_cmd`]: the `certs` subcommand: a CA and server certificates.
//! - [`page`]: the status page `/` and its JSON `/status` on the admin server.
//! - [`config`], [`metrics`]: leaves.
//!
//! [`run`] takes bound listeners and a [`Shutdown`], like the router's.

pub mod auth;
pub mod budget;
pub mod certs_cmd;
pub mod config;
pub mod inbound;
pub mod index;
pub mod message;
pub mod metrics;
pub mod outbox;
pub mod page;
pub mod passwd_cmd;
pub mod registry;
pub mod reload;
pub mod retained;
pub mod route;
pub mod session;
pub mod sys;
pub mod usage;
pub mod validate;
pub mod wills;

#[cfg(feature = "fault-injection")]
mod fault;

use std::io;
use std::sync::Arc;

use prometheus::Registry;
use snigate_shared::admin::{self, Admin, Health, Readiness};
use snigate_shared::shutdown::{self, Shutdown};
use tokio::net::TcpListener;
use tokio_rustls::TlsAcceptor;
use tokio_util::sync::CancellationToken;

use crate::auth::Auth;
use crate::auth::passwd::PasswordFile;
use crate::config::BrokerConfig;
use crate::metrics::Metrics;

pub use registry::Eviction;

/// How often persistent sessions are checked for expiry: expiries are hours or
/// days in Mosquitto's units, seconds in MQTT 5's.
const EXPIRY_SWEEP: std::time::Duration = std::time::Duration::from_secs(1);

/// The own core's `$SYS`: each snapshot's changes published into the index
/// ([`sys::publish`]), with the ACL at delivery as any message has it.
async fn publish_sys(shared: Arc<Shared>) {
    let registry = &shared.registry;
    let mut snapshots = shared.sys.clone();
    let mut previous = sys::Snapshot::default();
    loop {
        tokio::select! {
            () = shared.stop.cancelled() => return,
            changed = snapshots.changed() => if changed.is_err() {
                // The snapshot task is gone: it has failed the broker.
                return shared.stop.cancelled().await;
            },
        }
        let snapshot = snapshots.borrow_and_update().clone();
        let material = shared.material.load();
        let acl = material.auth.acl.as_ref();
        let fanout = sys::publish(
            registry,
            &shared.queue_budget,
            &previous,
            &snapshot,
            |session, topic| {
                acl.is_none_or(|acl| {
                    std::str::from_utf8(topic).is_ok_and(|topic| {
                        acl.allows(session.user(), session.client_id(), topic, auth::acl::Access::Read)
                    })
                })
            },
        );
        drop(material);
        for (refused, _) in fanout.dropped {
            shared.metrics.dropped.with_label_values(&[refused.label(), "0"]).inc();
        }
        previous = snapshot;
    }
}

/// Once a second until the broker stops: close connections whose clients
/// said nothing for 1.5 times their keepalive, and discard persistent
/// sessions whose clients stayed away past their expiry
/// (`persistent_client_expiration`, or an MQTT 5 client's session expiry
/// interval). Every [`RETAINED_SWEEPS`] sweeps, retained messages whose
/// expiry interval ran out leave the store too (they are never sent after
/// it; this gives their bytes back).
async fn expire_sessions(shared: Arc<Shared>) {
    let mut sweep = tokio::time::interval(EXPIRY_SWEEP);
    sweep.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut sweeps: u32 = 0;
    loop {
        tokio::select! {
            () = shared.stop.cancelled() => return,
            _ = sweep.tick() => {}
        }
        #[cfg(feature = "fault-injection")]
        fault::on_sweep(&shared);
        let now = std::time::Instant::now();
        shared.registry.close_silent(now);
        let expired = shared.registry.expire(now);
        for will in shared.wills.due(now) {
            wills::publish(&shared, will);
        }
        sweeps = sweeps.wrapping_add(1);
        if sweeps.is_multiple_of(RETAINED_SWEEPS) && shared.registry.expire_retained(now) > 0 {
            let figures = shared.registry.figures();
            shared.metrics.retained.set(gauge(figures.retained));
            shared.metrics.retained_bytes.set(gauge(figures.retained_bytes));
        }
        shared
            .metrics
            .subscriptions
            .set(gauge(shared.registry.figures().subscriptions));
        if expired > 0 {
            shared.metrics.sessions_expired.inc_by(expired as u64);
            tracing::info!(expired, "persistent sessions expired");
        }
    }
}

/// Sweeps between two walks of the retained store for expired messages: a
/// walk holds the store's write lock for its length, and an expired message
/// is already never sent, so a minute's delay costs only its bytes.
const RETAINED_SWEEPS: u32 = 60;

/// A count as a gauge's value.
pub(crate) fn gauge(n: usize) -> i64 {
    i64::try_from(n).unwrap_or(i64::MAX)
}

/// Password checks running at once. A check is deliberately expensive (PBKDF2
/// with Mosquitto 2.1's 210,000 iterations; Argon2id with 46 MiB of memory), so
/// checks run off the async threads and only this many at a time: a burst of
/// logins queues instead of stalling every connection or exhausting memory.
const CONCURRENT_PASSWORD_CHECKS: usize = 2;

/// Sockets read up to their CONNECT only to be answered "server busy" while
/// every connection slot is taken; beyond these, a new socket is closed at
/// accept, before any handshake. Each holds little (no session, no link), and
/// is gone by `connect_timeout`.
pub const BUSY_ANSWERS: usize = 32;

/// What every session shares.
pub struct Shared {
    /// The latest `$SYS` snapshot (empty when `$SYS` is off).
    pub sys: tokio::sync::watch::Receiver<sys::Snapshot>,
    /// Permits for password checks.
    pub password_checks: tokio::sync::Semaphore,
    /// Credentials and TLS material, swapped whole by a reload.
    pub material: arc_swap::ArcSwap<Material>,
    /// All outbound queues together.
    pub queue_budget: Arc<budget::Budget>,
    /// The message core: sessions, subscriptions, retained messages.
    pub registry: registry::Registry,
    /// One permit per open socket, from accept to close: `max_connections`.
    pub connection_slots: Arc<tokio::sync::Semaphore>,
    /// The connections' share of the budget, in KiB: a socket holds its
    /// kind's cost of it from accept to close ([`config::PLAIN_CONNECTION_MEMORY`],
    /// [`config::TLS_CONNECTION_MEMORY`]).
    pub connection_memory: Arc<tokio::sync::Semaphore>,
    /// Permits to answer a socket "busy" when no slot is left.
    pub busy_answers: Arc<tokio::sync::Semaphore>,
    /// The settings the broker started with (the files they name are
    /// reloaded; the settings themselves need a restart).
    pub settings: BrokerConfig,
    pub metrics: Metrics,
    /// Wills waiting for their Will Delay Interval.
    pub wills: wills::DelayedWills,
    /// The last connections and packets refused, for the status page.
    pub refusals: snigate_shared::status::Refusals,
    /// The last reload of the files, for the status page.
    pub reloads: snigate_shared::status::Reloads,
    /// Set by a test's fault topic: the expiry task panics ([`fault`]).
    #[cfg(feature = "fault-injection")]
    pub fault_expiry: std::sync::atomic::AtomicBool,
    pub stop: CancellationToken,
}

impl Shared {
    /// What the sessions share; metrics registered in `registry`. The `$SYS` sender is the
    /// caller's to keep (and publish on) while sessions run.
    pub fn start(
        config: BrokerConfig,
        material: Material,
        registry: &Registry,
        stop: CancellationToken,
    ) -> anyhow::Result<(Arc<Self>, tokio::sync::watch::Sender<sys::Snapshot>)> {
        let metrics = Metrics::new(registry)?;
        let limits = config.limits;
        tracing::info!(
            memory_limit_mib = limits.memory_limit >> 20,
            source = limits.memory_limit_source,
            max_connections = limits.max_connections,
            max_tls_connections = limits.connection_memory / config::TLS_CONNECTION_MEMORY,
            queued_mib = limits.queued_bytes_total >> 20,
            retained_mib = limits.max_retained_bytes >> 20,
            "memory budget"
        );
        for warning in &config.deprecated {
            tracing::warn!("{warning}");
        }
        let (sys_tx, sys_rx) = tokio::sync::watch::channel(sys::Snapshot::default());
        let queue_budget = Arc::new(budget::Budget::new(
            limits.queued_bytes_total,
            metrics.queued_bytes.clone(),
        ));
        let shared = Arc::new(Shared {
            sys: sys_rx,
            password_checks: tokio::sync::Semaphore::new(CONCURRENT_PASSWORD_CHECKS),
            material: arc_swap::ArcSwap::from_pointee(material),
            queue_budget: queue_budget.clone(),
            registry: registry::Registry::new(
                outbox::Limits {
                    max_inflight: limits.max_inflight_messages,
                    max_queued_messages: limits.max_queued_messages,
                    max_queued_bytes: limits.max_queued_bytes,
                    queue_qos0_offline: limits.queue_qos0_messages,
                },
                limits.max_retained_bytes,
                queue_budget,
            )
            .with_index_share(usize::try_from(limits.index_share).unwrap_or(usize::MAX)),
            connection_slots: Arc::new(tokio::sync::Semaphore::new(limits.max_connections)),
            connection_memory: Arc::new(tokio::sync::Semaphore::new(
                usize::try_from(limits.connection_memory >> 10)
                    .unwrap_or(usize::MAX)
                    .min(tokio::sync::Semaphore::MAX_PERMITS),
            )),
            busy_answers: Arc::new(tokio::sync::Semaphore::new(BUSY_ANSWERS)),
            settings: config,
            metrics,
            wills: wills::DelayedWills::default(),
            refusals: Default::default(),
            reloads: Default::default(),
            #[cfg(feature = "fault-injection")]
            fault_expiry: std::sync::atomic::AtomicBool::new(false),
            stop,
        });
        Ok((shared, sys_tx))
    }
    /// Check a login against the password file, on a blocking thread, at most
    /// [`CONCURRENT_PASSWORD_CHECKS`] at once.
    pub async fn check_login(
        &self,
        material: Arc<Material>,
        login: Option<(String, Vec<u8>)>,
    ) -> Result<(), auth::Refusal> {
        let Ok(_permit) = self.password_checks.acquire().await else {
            return Err(auth::Refusal::BadCredentials);
        };
        let check = tokio::task::spawn_blocking(move || {
            let login = login
                .as_ref()
                .map(|(user, password)| (user.as_str(), password.as_slice()));
            material.auth.check(login)
        });
        check.await.unwrap_or(Err(auth::Refusal::BadCredentials))
    }
}

/// What the status page shows of the sockets: the addresses bound, not those
/// configured (port 0 in tests).
fn page_fixed(listeners: &Listeners, settings: &BrokerConfig) -> page::Fixed {
    let named = |l: &TcpListener, proxied: bool| {
        let addr = l
            .local_addr()
            .map_or_else(|e| format!("unknown ({e})"), |a| a.to_string());
        if proxied {
            format!("{addr} (PROXY protocol)")
        } else {
            addr
        }
    };
    let mut proxied = settings.proxy_protocol.iter().copied();
    page::Fixed {
        version: env!("CARGO_PKG_VERSION"),
        started_at: snigate_shared::status::unix_now(),
        mqtt: listeners
            .mqtt
            .iter()
            .map(|l| named(l, proxied.next().unwrap_or(false)))
            .collect(),
        mqtts: listeners
            .tls
            .iter()
            .map(|l| named(l, proxied.next().unwrap_or(false)))
            .collect(),
        admin: listeners
            .admin
            .as_ref()
            .and_then(|l| l.local_addr().ok())
            .map(|a| a.to_string()),
    }
}

/// Sockets the broker serves on.
pub struct Listeners {
    pub mqtt: Vec<TcpListener>,
    pub tls: Vec<TcpListener>,
    pub admin: Option<TcpListener>,
}

/// Bind every configured address.
pub async fn bind(config: &BrokerConfig) -> io::Result<Listeners> {
    let mut mqtt = Vec::new();
    for &addr in &config.listen {
        mqtt.push(
            TcpListener::bind(addr)
                .await
                .map_err(|e| io::Error::new(e.kind(), format!("cannot listen on {addr}: {e}")))?,
        );
    }
    let mut tls = Vec::new();
    for &addr in &config.tls_listen {
        tls.push(
            TcpListener::bind(addr)
                .await
                .map_err(|e| io::Error::new(e.kind(), format!("cannot listen on {addr}: {e}")))?,
        );
    }
    let admin = match config.admin {
        Some(addr) => Some(
            TcpListener::bind(addr)
                .await
                .map_err(|e| io::Error::new(e.kind(), format!("cannot listen on {addr}: {e}")))?,
        ),
        None => None,
    };
    Ok(Listeners { mqtt, tls, admin })
}

/// Files the broker reads at start and on reload: credentials and TLS material.
pub struct Material {
    pub auth: Auth,
    pub tls: Option<TlsAcceptor>,
}

/// The line that marks a file as a shipped default (a comment in a password
/// file, text outside the PEM sections of a certificate or key). Nothing secret
/// is compiled into the binary: defaults are files, and they say so.
pub const DEFAULT_MARKER: &str = "snigate-default";

/// Warn, loudly, for every file in use that is a shipped default.
fn warn_about_defaults(config: &BrokerConfig) {
    let files = config
        .password_file
        .iter()
        .chain(config.tls_files.iter().flat_map(|(c, k)| [c, k]));
    for path in files {
        if std::fs::read_to_string(path).is_ok_and(|text| text.contains(DEFAULT_MARKER)) {
            tracing::warn!(
                file = %path.display(),
                "USING A BUILT-IN DEFAULT FILE: its credentials or keys are public; mount your own over it"
            );
        }
    }
}

/// Load the password file and the TLS certificate and key named in `config`.
///
/// `strict` (reloads): a password file with a line that does not parse is
/// refused whole, so a broken edit never locks users out. Otherwise (start) such
/// lines drop only their user, with a warning, as Mosquitto does.
pub fn load_material(config: &BrokerConfig, strict: bool) -> anyhow::Result<Material> {
    warn_about_defaults(config);
    let auth = load_auth(config, strict)?;
    let tls = match &config.tls_files {
        Some((cert, key)) => Some(TlsAcceptor::from(snigate_shared::tls::server_config(
            cert,
            key,
            config.client_auth.as_ref(),
        )?)),
        None => None,
    };
    Ok(Material { auth, tls })
}

fn load_auth(config: &BrokerConfig, strict: bool) -> anyhow::Result<Auth> {
    let passwords = match &config.password_file {
        Some(path) => {
            let (file, warnings) = PasswordFile::load(path)
                .map_err(|e| anyhow::anyhow!("cannot read the password file {}: {e}", path.display()))?;
            if let (true, Some(first)) = (strict, warnings.first()) {
                anyhow::bail!("{}:{}: {}", path.display(), first.line, first.message);
            }
            for warning in warnings {
                tracing::warn!(
                    file = %path.display(),
                    line = warning.line,
                    "password file: {}; that user cannot log in",
                    warning.message
                );
            }
            Some(file)
        }
        None => None,
    };
    if config.allow_anonymous {
        let local_only = config
            .listen
            .iter()
            .chain(&config.tls_listen)
            .all(|a| a.ip().is_loopback());
        if local_only && passwords.is_none() {
            tracing::warn!(
                "no password file: anonymous clients allowed, on loopback only (as Mosquitto 2.0 without configuration)"
            );
        } else {
            tracing::warn!("anonymous clients are allowed");
        }
    }
    // An ACL is all or nothing, at start as on reload: a half-understood one
    // would grant or deny what nobody meant.
    let acl = match &config.acl_file {
        Some(path) => {
            let text = std::fs::read_to_string(path)
                .map_err(|e| anyhow::anyhow!("cannot read the ACL file {}: {e}", path.display()))?;
            Some(
                auth::acl::Acl::parse(&text)
                    .map_err(|e| anyhow::anyhow!("{}:{}: {}", path.display(), e.line, e.message))?,
            )
        }
        None => None,
    };
    Ok(Auth {
        passwords,
        allow_anonymous: config.allow_anonymous,
        acl,
    })
}

/// Serve until `shutdown.stop`; then disconnect clients and stop.
pub async fn run(
    config: BrokerConfig,
    material: Material,
    listeners: Listeners,
    shutdown: Shutdown,
) -> anyhow::Result<()> {
    let registry = Registry::new();
    let (shared, sys_tx) = Shared::start(config, material, &registry, shutdown.stop.clone())?;
    let drain_timeout = shared.settings.drain_timeout;
    // The tasks the broker cannot work without. Each runs until the broker
    // stops: one that ends before (a panic, a bug) fails the broker.
    let mut components = Components::default();
    components.spawn("reload", reload::run(shared.clone(), shutdown.stop.clone()));
    components.spawn("session_expiry", expire_sessions(shared.clone()));
    if !shared.settings.sys_interval.is_zero() {
        components.spawn(
            "sys",
            sys::run(
                shared.metrics.clone(),
                shared.settings.sys_interval,
                sys_tx.clone(),
                shutdown.stop.clone(),
            ),
        );
        components.spawn("sys_publisher", publish_sys(shared.clone()));
    }
    // Each component's series exists from the start, at 0, so that an
    // alert's increase() sees the first failure.
    for component in components.names.values() {
        shared.metrics.component_failures.with_label_values(&[component]);
    }
    let readiness = Readiness::default();
    let health = Health::default();
    let admin_stop = CancellationToken::new();
    registry.register(Box::new(usage::BudgetMetrics::new(shared.clone())?))?;
    let fixed = page_fixed(&listeners, &shared.settings);
    let admin_task = listeners.admin.map(|listener| {
        let (html, json) = {
            let (shared, registry) = (shared.clone(), registry.clone());
            snigate_shared::page::handlers(move || page::status(&fixed, &shared, &registry), page::render)
        };
        let admin = Admin::new(registry.clone(), readiness.clone())
            .with_health(health.clone())
            .route("/", html)
            .route("/status", json);
        tokio::spawn(admin::serve(listener, admin, admin_stop.clone()))
    });

    let mut accept_loops = tokio::task::JoinSet::new();
    let plain = listeners.mqtt.into_iter().map(|l| (l, false));
    let secure = listeners.tls.into_iter().map(|l| (l, true));
    let proxied = shared.settings.proxy_protocol.clone();
    for ((listener, tls), proxy_protocol) in plain.chain(secure).zip(proxied) {
        if let Ok(addr) = listener.local_addr() {
            snigate_shared::logging::listening(if tls { "mqtts" } else { "mqtt" }, addr);
        }
        let shared = shared.clone();
        let shutdown = shutdown.clone();
        accept_loops.spawn(async move {
            // A tracker rather than a JoinSet: a JoinSet keeps an entry (56
            // bytes) per task, a tracker a count; the sessions end on their
            // own after the stop (last words and connect deadlines bound them).
            let sessions = tokio_util::task::TaskTracker::new();
            loop {
                let accepted = tokio::select! {
                    () = shutdown.stop.cancelled() => break,
                    accepted = listener.accept() => accepted,
                };
                match accepted {
                    Ok((stream, peer)) => {
                        shared.metrics.connections.inc();
                        let Some(admission) = admit(&shared, tls) else {
                            // Nothing is spent on it: no handshake, no CONNACK.
                            shared.metrics.refused.with_label_values(&["connections"]).inc();
                            shared
                                .metrics
                                .disconnections
                                .with_label_values(&[session::End::ServerBusy.label()])
                                .inc();
                            tracing::debug!(%peer, "closed at accept: every connection slot and busy answer is taken");
                            continue;
                        };
                        let _ = stream.set_nodelay(true);
                        // The acceptor current now: a reload may have brought a
                        // new certificate.
                        let acceptor = if tls { shared.material.load().tls.clone() } else { None };
                        sessions.spawn(session::serve(
                            stream,
                            peer,
                            shared.clone(),
                            acceptor,
                            proxy_protocol,
                            admission,
                        ));
                    }
                    Err(e) => {
                        tracing::warn!(error = %e, "accept failed; backing off");
                        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                    }
                }
            }
            drop(listener);
            let report = drain(&sessions, drain_timeout, &shutdown.force).await;
            tracing::info!(finished = report.finished, aborted = report.aborted, "drained");
        });
    }
    readiness.set(true);
    let failed = tokio::select! {
        biased;
        () = shutdown.stop.cancelled() => None,
        // The components end with the broker too: only one that ends before
        // it is told to stop has failed.
        component = components.ended() => (!shutdown.stop.is_cancelled()).then_some(component),
    };
    if let Some(component) = failed {
        // Nothing can mend this in the process: say so everywhere a
        // supervisor looks, drain, and exit non-zero so that it restarts us.
        tracing::error!(
            component,
            "a broker-wide task has ended: the broker cannot work without it; failing /healthz and exiting"
        );
        shared.metrics.component_failures.with_label_values(&[component]).inc();
        health.fail(component);
        shutdown.stop.cancel();
    }
    readiness.set(false);
    // Every connected client is told, as its session sees the stop.
    shared.registry.evict_all();
    while accept_loops.join_next().await.is_some() {}
    components.finish().await;
    // Kept until here even with `$SYS` off, so sessions' receivers never see
    // the channel closed while the broker runs.
    drop(sys_tx);
    if failed.is_some() {
        // The admin server answers 503 a little longer, so a probe or scrape
        // in that window sees why; the exit is what gets the broker restarted.
        tokio::time::sleep(FAILED_LINGER).await;
    }
    admin_stop.cancel();
    if let Some(task) = admin_task {
        let _ = task.await;
    }
    match failed {
        Some(component) => Err(anyhow::anyhow!("the broker's {component} task ended; stopped")),
        None => Ok(()),
    }
}

/// How long `/healthz` answers 503 after a broker-wide failure before the
/// process exits.
const FAILED_LINGER: std::time::Duration = std::time::Duration::from_secs(1);

/// Broker-wide tasks by name: which one ended, if one does before the broker
/// stops.
#[derive(Default)]
struct Components {
    tasks: tokio::task::JoinSet<()>,
    names: std::collections::HashMap<tokio::task::Id, &'static str>,
}

impl Components {
    fn spawn(&mut self, name: &'static str, task: impl std::future::Future<Output = ()> + Send + 'static) {
        let handle = self.tasks.spawn(task);
        self.names.insert(handle.id(), name);
    }

    /// The name of the first task to end (returned or panicked); pending
    /// forever while all run.
    async fn ended(&mut self) -> &'static str {
        let id = match self.tasks.join_next_with_id().await {
            Some(Ok((id, ()))) => id,
            Some(Err(error)) => error.id(),
            None => return std::future::pending().await,
        };
        self.names.get(&id).copied().unwrap_or("unknown")
    }

    /// Wait for every task (they stop with the broker).
    async fn finish(&mut self) {
        while self.tasks.join_next().await.is_some() {}
    }
}

/// Wait for the sessions `tracker` runs to end, at most `grace` or until
/// `force`; the report's `aborted` are those still running then, which the
/// stop has already evicted: they end within their own deadlines (last words,
/// the connect timeout), or with the runtime. A session's panic is logged and
/// counted by its drop guard (`Session`'s `Drop`), with its client id.
async fn drain(
    tracker: &tokio_util::task::TaskTracker,
    grace: std::time::Duration,
    force: &CancellationToken,
) -> shutdown::DrainReport {
    tracker.close();
    let open = tracker.len();
    tokio::select! {
        () = tracker.wait() => {}
        () = tokio::time::sleep(grace) => {}
        () = force.cancelled() => {}
    }
    let left = tracker.len();
    shutdown::DrainReport {
        finished: open - left,
        aborted: left,
    }
}

/// A connection slot for a new socket (a count and its kind's memory), or
/// else one of the few permits to tell it the server is busy; `None` when
/// neither is left.
fn admit(shared: &Shared, tls: bool) -> Option<session::Admission> {
    let cost = if tls {
        config::TLS_CONNECTION_MEMORY
    } else {
        config::PLAIN_CONNECTION_MEMORY
    };
    let units = u32::try_from(cost >> 10).unwrap_or(u32::MAX);
    let slot = shared
        .connection_slots
        .clone()
        .try_acquire_owned()
        .ok()
        .and_then(|count| {
            let memory = shared.connection_memory.clone().try_acquire_many_owned(units).ok()?;
            Some(session::Admission::Slot(count, memory))
        });
    slot.or_else(|| {
        shared
            .busy_answers
            .clone()
            .try_acquire_owned()
            .ok()
            .map(session::Admission::Busy)
    })
}
