//! Reloading the password file and TLS material: on SIGHUP, and when a watched
//! file changes (polled, so a Kubernetes Secret or ConfigMap swapped through its
//! `..data` symlink is seen too: a `FROM scratch` image has no `kill` for
//! `kubectl exec`, so in a cluster the watch is how new credentials arrive).
//!
//! New material is loaded and validated whole; only then is it swapped in. New
//! connections use it at once; clients whose user was removed or whose password
//! changed are disconnected, the others stay. A broken file is refused with its
//! error and the old material keeps serving (Mosquitto 2.1 quits instead).

use std::sync::Arc;
use std::time::Duration;

use snigate_shared::watch::Fingerprint;
use tokio_util::sync::CancellationToken;

use crate::{Shared, load_material};

/// How often watched files are checked.
const WATCH_INTERVAL: Duration = Duration::from_secs(2);

/// Reload on SIGHUP and on file changes until `stop`.
pub async fn run(shared: Arc<Shared>, stop: CancellationToken) {
    let mut hangups = match snigate_shared::shutdown::hangups() {
        Ok(signal) => Some(signal),
        Err(e) => {
            tracing::warn!(error = %e, "cannot listen for SIGHUP; reload by file change only");
            None
        }
    };
    let settings = &shared.settings;
    let watched: Vec<_> = settings
        .password_file
        .iter()
        .chain(settings.acl_file.iter())
        .chain(settings.tls_files.iter().flat_map(|(cert, key)| [cert, key]))
        .cloned()
        .collect();
    let mut seen = Fingerprint::of(&watched);
    loop {
        let trigger = tokio::select! {
            () = stop.cancelled() => return,
            Some(()) = async { match hangups.as_mut() { Some(h) => h.recv().await, None => std::future::pending().await } } => "SIGHUP",
            () = tokio::time::sleep(WATCH_INTERVAL), if !watched.is_empty() => {
                let now = Fingerprint::of(&watched);
                if now == seen {
                    continue;
                }
                seen = now;
                "file change"
            }
        };
        match load_material(settings, true) {
            Ok(material) => {
                let revoked = material.auth.passwords.as_ref().map_or(0, |passwords| {
                    shared.registry.revoke(|user, entry| passwords.entry_id(user) != entry)
                });
                shared.material.store(Arc::new(material));
                shared.metrics.reloads.with_label_values(&["success"]).inc();
                shared.reloads.applied(trigger);
                tracing::info!(trigger, revoked, "password file and TLS material reloaded");
                seen = Fingerprint::of(&watched);
            }
            Err(e) => {
                shared.metrics.reloads.with_label_values(&["failure"]).inc();
                shared.reloads.refused(trigger, &format!("{e:#}"));
                tracing::error!(
                    trigger,
                    error = format!("{e:#}"),
                    "reload refused; the previous files keep serving"
                );
            }
        }
    }
}
