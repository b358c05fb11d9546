//! Any bytes as what one client sends: through the codec, validation, CONNECT
//! and login, the ACL and the message core, over an in-memory stream
//! (`snigate_broker::inbound`). The broker must answer and go on: no panic,
//! no session outliving its input.
#![no_main]

use std::sync::LazyLock;

use snigate_broker::inbound::Harness;

static HARNESS: LazyLock<Harness> = LazyLock::new(|| Harness::new().expect("a broker to fuzz"));

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    HARNESS.connection(data);
});
