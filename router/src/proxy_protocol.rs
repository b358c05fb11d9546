//! PROXY protocol headers sent to a backend before the client's bytes (pure).
//!
//! A route with `proxy_protocol = "v1"` or `"v2"` makes the backend see the
//! client's address instead of the router's, as HAProxy's `send-proxy` does. In
//! v2 the SNI also goes in the `PP2_TYPE_AUTHORITY` TLV, so a backend serving
//! several names knows which one was asked for before it reads the hello.
//! Encoding is the `ppp` crate's; this module only picks what to encode.

use std::net::SocketAddr;

use ppp::v2::{Builder, Command, Protocol, Type, Version};

use crate::config::ProxyProtocol;

/// The header for a connection from `client` to the router's `local` address.
pub fn header(version: ProxyProtocol, client: SocketAddr, local: SocketAddr, sni: Option<&str>) -> Vec<u8> {
    match version {
        // v1 has no way to say "IPv4 client, IPv6 listener"; ppp writes UNKNOWN
        // for mixed families, which the spec allows.
        ProxyProtocol::V1 => ppp::v1::Addresses::from((client, local)).to_string().into_bytes(),
        ProxyProtocol::V2 => {
            let builder = Builder::with_addresses(Version::Two | Command::Proxy, Protocol::Stream, (client, local));
            let builder = match sni {
                Some(sni) => builder.write_tlv(Type::Authority, sni.as_bytes()),
                None => Ok(builder),
            };
            // Writing into the builder's own Vec cannot fail; if ppp ever did, a
            // header without the TLV is still correct PROXY protocol.
            builder
                .and_then(Builder::build)
                .or_else(|_| {
                    Builder::with_addresses(Version::Two | Command::Proxy, Protocol::Stream, (client, local)).build()
                })
                .unwrap_or_default()
        }
    }
}

/// The header of a connection that carries no client (a health check):
/// v2 `LOCAL` with no addresses, v1 `PROXY UNKNOWN`. A backend that expects
/// PROXY protocol takes it as its own check, not as a malformed client.
pub fn local_header(version: ProxyProtocol) -> Vec<u8> {
    match version {
        ProxyProtocol::V1 => b"PROXY UNKNOWN\r\n".to_vec(),
        ProxyProtocol::V2 => Builder::with_addresses(
            Version::Two | Command::Local,
            Protocol::Unspecified,
            ppp::v2::Addresses::Unspecified,
        )
        .build()
        // Without addresses or TLVs there is nothing to fail; the fixed
        // 16 bytes are the same.
        .unwrap_or_else(|_| {
            let mut header = b"\r\n\r\n\0\r\nQUIT\n".to_vec();
            header.extend_from_slice(&[0x20, 0x00, 0x00, 0x00]);
            header
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_check_sends_a_local_header() {
        let v2 = local_header(ProxyProtocol::V2);
        assert_eq!(v2.len(), 16);
        assert_eq!(&v2[12..], &[0x20, 0x00, 0x00, 0x00]);
        let parsed = ppp::v2::Header::try_from(&v2[..]).unwrap();
        assert_eq!(parsed.command, Command::Local);
        assert_eq!(local_header(ProxyProtocol::V1), b"PROXY UNKNOWN\r\n");
    }

    #[test]
    fn v1_names_both_addresses() {
        let header = header(
            ProxyProtocol::V1,
            "192.0.2.7:50000".parse().unwrap(),
            "10.0.0.1:443".parse().unwrap(),
            None,
        );
        assert_eq!(header, b"PROXY TCP4 192.0.2.7 10.0.0.1 50000 443\r\n");
    }

    #[test]
    fn v2_carries_addresses_and_the_sni() {
        let bytes = header(
            ProxyProtocol::V2,
            "[2001:db8::7]:50000".parse().unwrap(),
            "[2001:db8::1]:443".parse().unwrap(),
            Some("broker-a.apps.test"),
        );
        let parsed = ppp::v2::Header::try_from(bytes.as_slice()).unwrap();
        assert_eq!(
            parsed.addresses,
            ppp::v2::Addresses::from((
                "[2001:db8::7]:50000".parse::<SocketAddr>().unwrap(),
                "[2001:db8::1]:443".parse::<SocketAddr>().unwrap()
            ))
        );
        let authority: Vec<_> = parsed
            .tlvs()
            .filter_map(Result::ok)
            .filter(|t| t.kind == u8::from(Type::Authority))
            .collect();
        assert_eq!(authority.len(), 1);
        assert_eq!(&*authority[0].value, b"broker-a.apps.test");
    }
}
