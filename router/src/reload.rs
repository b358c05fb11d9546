//! Live reload: SIGHUP, or a change to the watched files, loads the
//! configuration again and swaps it in whole.
//!
//! A valid configuration replaces the snapshot that new connections take;
//! established connections keep the one they started with, untouched. An invalid
//! one is refused with its error and the old one keeps serving. Listen and admin
//! addresses cannot change without a restart: a change there is reported, not
//! applied.
//!
//! Files are watched by polling their identity every `[reload] interval` (see
//! `snigate_shared::watch` for why polling).

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use snigate_shared::config::ConfigError;
use snigate_shared::watch::Fingerprint;
use tokio_util::sync::CancellationToken;

use crate::config::{Loader, RouterConfig};
use crate::conn::Shared;
use crate::{Settings, snapshot_of};

/// Reload on SIGHUP and on file changes until `stop`.
pub async fn run(shared: Arc<Shared>, loader: Loader, mut running: RouterConfig, stop: CancellationToken) {
    let mut hangups = match snigate_shared::shutdown::hangups() {
        Ok(signal) => Some(signal),
        Err(e) => {
            tracing::warn!(error = %e, "cannot listen for SIGHUP; reload by file change only");
            None
        }
    };
    let mut seen = Fingerprint::of(&running.watched);
    loop {
        let interval = running.reload_interval.unwrap_or(Duration::from_secs(3600));
        let trigger = tokio::select! {
            () = stop.cancelled() => return,
            Some(()) = async { match hangups.as_mut() { Some(h) => h.recv().await, None => std::future::pending().await } } => "SIGHUP",
            () = tokio::time::sleep(interval), if running.reload_interval.is_some() => {
                let now = Fingerprint::of(&running.watched);
                if now == seen {
                    continue;
                }
                seen = now;
                "file change"
            }
        };
        // Reading and validating files is blocking work (tens of milliseconds
        // for 10,000 routes): off the runtime's worker threads. The blocking
        // pool's thread, reused from one reload to the next, also keeps the
        // allocations of every reload in one allocator arena instead of one
        // per worker.
        let attempt = {
            let (shared, loader, running) = (shared.clone(), loader.clone(), running.clone());
            tokio::task::spawn_blocking(move || reload(&shared, &loader, &running)).await
        };
        match attempt {
            Ok(Ok((config, routes))) => {
                shared.metrics.reloads.with_label_values(&["success"]).inc();
                shared.metrics.config_loaded.set(unix_now());
                shared.reloads.applied(trigger);
                tracing::info!(trigger, routes, "configuration reloaded");
                running = config;
                seen = Fingerprint::of(&running.watched);
            }
            Ok(Err(e)) => {
                shared.metrics.reloads.with_label_values(&["failure"]).inc();
                shared.reloads.refused(trigger, &e.to_string());
                tracing::error!(trigger, error = %e, "configuration refused; the previous one keeps serving");
            }
            Err(e) => {
                shared.metrics.reloads.with_label_values(&["failure"]).inc();
                shared.reloads.refused(trigger, &e.to_string());
                tracing::error!(trigger, error = %e, "reload failed; the previous configuration keeps serving");
            }
        }
    }
}

/// Load, validate and swap in. Returns the configuration now in use (its
/// routes are in the table swapped in) and how many routes it has.
pub fn reload(shared: &Shared, loader: &Loader, running: &RouterConfig) -> Result<(RouterConfig, usize), ConfigError> {
    // The new table takes over what the running one's endpoints have learnt.
    let mut settings = Settings::replacing(loader.load()?, &shared.snapshot.load().table)?;
    let config = &mut settings.config;
    if config.listen != running.listen {
        tracing::warn!(
            running = %list(&running.listen),
            configured = %list(&config.listen),
            "listen addresses changed: a restart is needed to apply them"
        );
        config.listen.clone_from(&running.listen);
    }
    if config.admin != running.admin {
        tracing::warn!(running = ?running.admin, configured = ?config.admin, "admin address changed: a restart is needed to apply it");
        config.admin = running.admin;
    }
    if (config.log_format, &config.log_level) != (running.log_format, &running.log_level) {
        tracing::warn!("log settings changed: a restart is needed to apply them");
        config.log_format = running.log_format;
        config.log_level.clone_from(&running.log_level);
    }
    let config = settings.config.clone();
    let routes = settings.table.routes().len();
    shared.install(snapshot_of(settings));
    Ok((config, routes))
}

fn unix_now() -> i64 {
    SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX))
}

fn list(listen: &[crate::config::Listen]) -> String {
    let entries: Vec<String> = listen.iter().map(ToString::to_string).collect();
    entries.join(", ")
}
