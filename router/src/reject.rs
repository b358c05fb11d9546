//! The TLS alert sent when no route matches (pure: bytes only).
//!
//! A fatal `unrecognized_name` alert (RFC 6066 §3) in a plaintext record: the
//! client has not negotiated anything yet, so this is what a TLS server itself
//! would send. `openssl s_client` then prints "tlsv1 unrecognized name" instead of
//! an unexplained reset.

const CONTENT_TYPE_ALERT: u8 = 21;
const LEVEL_FATAL: u8 = 2;
const UNRECOGNIZED_NAME: u8 = 112;

/// The alert record, framed with the record version the client used.
pub fn unrecognized_name(record_version: u16) -> [u8; 7] {
    // A client's first record may say 0x0300..=0x0304; answer in kind but never
    // below TLS 1.0, which every TLS stack we could be talking to accepts.
    let [major, minor] = record_version.clamp(0x0301, 0x0303).to_be_bytes();
    [CONTENT_TYPE_ALERT, major, minor, 0, 2, LEVEL_FATAL, UNRECOGNIZED_NAME]
}

#[cfg(test)]
mod tests {
    #[test]
    fn alert_bytes() {
        assert_eq!(super::unrecognized_name(0x0301), [21, 3, 1, 0, 2, 2, 112]);
        assert_eq!(super::unrecognized_name(0x0304), [21, 3, 3, 0, 2, 2, 112]);
        assert_eq!(super::unrecognized_name(0), [21, 3, 1, 0, 2, 2, 112]);
    }
}
