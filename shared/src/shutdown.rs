//! Stopping: signals into cancellation tokens, and draining connection tasks.
//!
//! Kubernetes sends SIGTERM, waits the pod's termination grace period (30 s by
//! default), then sends SIGKILL. So the first SIGTERM or SIGINT cancels
//! [`Shutdown::stop`]: listeners stop accepting and the component drains its
//! connections under a deadline shorter than the grace period. A second signal
//! cancels [`Shutdown::force`] and the drain ends at once.

use std::time::Duration;

use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

/// The two stages of stopping a component.
#[derive(Debug, Clone, Default)]
pub struct Shutdown {
    /// Stop accepting and start draining.
    pub stop: CancellationToken,
    /// Give up on draining: close what is left now.
    pub force: CancellationToken,
}

impl Shutdown {
    pub fn new() -> Self {
        Self::default()
    }

    /// Cancel `stop` on the first SIGTERM/SIGINT and `force` on the second.
    /// Must be called inside a tokio runtime.
    pub fn listen_for_signals(&self) -> std::io::Result<()> {
        use tokio::signal::unix::{SignalKind, signal};
        let mut term = signal(SignalKind::terminate())?;
        let mut int = signal(SignalKind::interrupt())?;
        // Installing a SIGHUP handler now (tokio keeps it for the process's life)
        // means a SIGHUP that arrives before the reload task listens is ignored
        // instead of killing the process, SIGHUP's default.
        drop(hangups()?);
        let this = self.clone();
        tokio::spawn(async move {
            for stage in [&this.stop, &this.force] {
                let name = tokio::select! {
                    _ = term.recv() => "SIGTERM",
                    _ = int.recv() => "SIGINT",
                };
                if stage.is_cancelled() {
                    continue;
                }
                if std::ptr::eq(stage, &this.stop) {
                    tracing::info!(signal = name, "stopping: no new connections, draining");
                } else {
                    tracing::warn!(signal = name, "second signal: closing remaining connections now");
                }
                stage.cancel();
            }
        });
        Ok(())
    }
}

/// SIGHUP, the conventional "reload your configuration" signal, as a stream.
/// Must be called inside a tokio runtime.
pub fn hangups() -> std::io::Result<tokio::signal::unix::Signal> {
    tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup())
}

/// How a drain ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct DrainReport {
    /// Tasks that ended on their own during the drain.
    pub finished: usize,
    /// Tasks still running at the deadline (or the forced stop), aborted.
    pub aborted: usize,
}

/// Wait for every task in `tasks` to finish, at most `grace`, or until `force` is
/// cancelled; abort whatever is left.
pub async fn drain(tasks: &mut JoinSet<()>, grace: Duration, force: &CancellationToken) -> DrainReport {
    let mut report = DrainReport::default();
    let deadline = tokio::time::sleep(grace);
    tokio::pin!(deadline);
    loop {
        tokio::select! {
            next = tasks.join_next() => match next {
                Some(_) => report.finished += 1,
                None => return report,
            },
            () = &mut deadline => break,
            () = force.cancelled() => break,
        }
    }
    report.aborted = tasks.len();
    tasks.abort_all();
    while tasks.join_next().await.is_some() {}
    report
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn drain_waits_for_tasks_then_aborts_the_rest() {
        let mut tasks = JoinSet::new();
        tasks.spawn(tokio::time::sleep(Duration::from_secs(1)));
        tasks.spawn(tokio::time::sleep(Duration::from_secs(60)));
        let report = drain(&mut tasks, Duration::from_secs(5), &CancellationToken::new()).await;
        assert_eq!(
            report,
            DrainReport {
                finished: 1,
                aborted: 1
            }
        );
        assert!(tasks.is_empty());
    }

    #[tokio::test(start_paused = true)]
    async fn force_ends_the_drain_at_once() {
        let mut tasks = JoinSet::new();
        tasks.spawn(tokio::time::sleep(Duration::from_secs(60)));
        let force = CancellationToken::new();
        force.cancel();
        let started = tokio::time::Instant::now();
        let report = drain(&mut tasks, Duration::from_secs(20), &force).await;
        assert_eq!(report.aborted, 1);
        assert!(started.elapsed() < Duration::from_secs(1));
    }
}
