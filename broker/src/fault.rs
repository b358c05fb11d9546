//! Test-only faults (the `fault-injection` feature, which no release build
//! enables): a client that publishes to one of these topics makes a part of
//! the broker panic, so the tests can see that the failure stays contained
//! (a session) or is reported and ends the broker (a broker-wide task).

use std::sync::atomic::Ordering;

use crate::Shared;

/// Panic the publishing client's session.
pub const SESSION_PANIC: &[u8] = b"$snigate/fault/session-panic";
/// Panic the session-expiry task at its next sweep.
pub const EXPIRY_PANIC: &[u8] = b"$snigate/fault/expiry-panic";

/// Act on a PUBLISH to a fault topic.
pub fn on_publish(topic: &[u8], shared: &Shared) {
    if topic == SESSION_PANIC {
        panic!("a panic injected into a session for a test");
    }
    if topic == EXPIRY_PANIC {
        shared.fault_expiry.store(true, Ordering::Release);
    }
}

/// Called by the expiry task at each sweep.
pub fn on_sweep(shared: &Shared) {
    if shared.fault_expiry.load(Ordering::Acquire) {
        panic!("a panic injected into the session-expiry task for a test");
    }
}
