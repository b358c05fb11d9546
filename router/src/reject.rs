//! The TLS alerts sent when no route matches (pure: bytes only).
//!
//! A fatal `unrecognized_name` alert (RFC 6066 §3) for an SNI no route takes, or
//! `no_application_protocol` (RFC 7301 §3.2) when the host's routes each want an
//! ALPN protocol the client does not offer, in a plaintext record: the client
//! has not negotiated anything yet, so this is what a TLS server itself would
//! send. `openssl s_client` then prints "tlsv1 unrecognized name" (or "no
//! application protocol") instead of an unexplained reset.

const CONTENT_TYPE_ALERT: u8 = 21;
const LEVEL_FATAL: u8 = 2;
const UNRECOGNIZED_NAME: u8 = 112;
const NO_APPLICATION_PROTOCOL: u8 = 120;

/// The alert record, framed with the record version the client used.
pub fn unrecognized_name(record_version: u16) -> [u8; 7] {
    alert(record_version, UNRECOGNIZED_NAME)
}

/// The `no_application_protocol` alert record.
pub fn no_application_protocol(record_version: u16) -> [u8; 7] {
    alert(record_version, NO_APPLICATION_PROTOCOL)
}

fn alert(record_version: u16, description: u8) -> [u8; 7] {
    // A client's first record may say 0x0300..=0x0304; answer in kind but never
    // below TLS 1.0, which every TLS stack we could be talking to accepts.
    let [major, minor] = record_version.clamp(0x0301, 0x0303).to_be_bytes();
    [CONTENT_TYPE_ALERT, major, minor, 0, 2, LEVEL_FATAL, description]
}

#[cfg(test)]
mod tests {
    #[test]
    fn alert_bytes() {
        assert_eq!(super::unrecognized_name(0x0301), [21, 3, 1, 0, 2, 2, 112]);
        assert_eq!(super::unrecognized_name(0x0304), [21, 3, 3, 0, 2, 2, 112]);
        assert_eq!(super::no_application_protocol(0x0301), [21, 3, 1, 0, 2, 2, 120]);
        assert_eq!(super::unrecognized_name(0), [21, 3, 1, 0, 2, 2, 112]);
    }
}
