//! Any bytes into the ClientHello parser: it must answer, never panic or hang.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    snigate_router::hello::parse::fuzz(data);
});
