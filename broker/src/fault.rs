//! Test-only faults (the `fault-injection` feature, which no release build
//! enables): a client that publishes to one of these topics makes a part of
//! the broker panic, so the tests can see that the failure stays contained
//! (a session) or is reported and ends the broker (the message router).

use crate::Shared;

/// Panic the publishing client's session.
pub const SESSION_PANIC: &[u8] = b"$snigate/fault/session-panic";
/// Panic rumqttd's router thread.
pub const ROUTER_PANIC: &[u8] = b"$snigate/fault/router-panic";

/// Act on a PUBLISH to a fault topic.
pub fn on_publish(topic: &[u8], shared: &Shared) {
    if topic == SESSION_PANIC {
        panic!("a panic injected into a session for a test");
    }
    if topic == ROUTER_PANIC {
        shared.engine.inject_panic();
    }
}
