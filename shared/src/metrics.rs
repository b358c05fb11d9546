//! Prometheus metrics: one [`Registry`] per component, never the global default,
//! so a router and brokers running in one process (the testbed) keep separate
//! `/metrics`.

use prometheus::{Encoder, IntGaugeVec, Opts, Registry, TextEncoder};

/// The registry's metrics in Prometheus' text format.
pub fn render(registry: &Registry) -> String {
    let mut out = Vec::new();
    // Encoding into a Vec cannot fail for I/O; a metric family the encoder
    // refuses would be our bug, reported in the output rather than a panic.
    if let Err(e) = TextEncoder::new().encode(&registry.gather(), &mut out) {
        return format!("# error encoding metrics: {e}\n");
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// `<prefix>_build_info{version="..."} 1`, the usual way to expose a version.
pub fn register_build_info(registry: &Registry, prefix: &str, version: &str) -> prometheus::Result<()> {
    let info = IntGaugeVec::new(
        Opts::new(
            format!("{prefix}_build_info"),
            "Build information; the value is always 1.",
        ),
        &["version"],
    )?;
    info.with_label_values(&[version]).set(1);
    registry.register(Box::new(info))
}
