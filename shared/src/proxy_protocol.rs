//! PROXY protocol in (v1 and v2): the header a proxy in front (a cloud load
//! balancer before the router, snigate-router with `proxy_protocol` on a
//! route before the broker, HAProxy's `send-proxy`) writes before the
//! client's bytes, carrying the client's address. Parsing is the `ppp`
//! crate's; this module reads exactly the header's bytes off the stream, so
//! what follows (a TLS ClientHello, an MQTT CONNECT) is left for the reader.

use std::net::SocketAddr;

use tokio::io::{AsyncRead, AsyncReadExt};

/// The v2 signature (12 bytes), then version/command, family and a 2-byte length.
const V2_SIGNATURE: &[u8; 12] = b"\r\n\r\n\0\r\nQUIT\n";
/// The longest v1 header, CRLF included (the spec's figure).
const V1_MAX: usize = 107;
/// The longest v2 header accepted: addresses and a few TLVs (AWS's and
/// Azure's load balancers add an endpoint id). The spec allows 64 KiB of
/// TLVs; a proxy sending that much is not one we know.
const V2_MAX: usize = 16 + 1024;

/// Read the header; the client's address, or `None` when the header says the
/// proxy speaks for itself (v1 `UNKNOWN`, v2 `LOCAL`, or a non-IP family).
/// Errors are for the log; the caller closes the connection.
pub async fn read_header<S: AsyncRead + Unpin>(stream: &mut S) -> Result<Option<SocketAddr>, String> {
    let mut header = vec![0u8; 12];
    stream
        .read_exact(&mut header)
        .await
        .map_err(|e| format!("reading the header: {e}"))?;
    if header.as_slice() == V2_SIGNATURE {
        let mut fixed = [0u8; 4];
        stream
            .read_exact(&mut fixed)
            .await
            .map_err(|e| format!("reading the header: {e}"))?;
        header.extend_from_slice(&fixed);
        let len = usize::from(u16::from_be_bytes([fixed[2], fixed[3]]));
        if 16 + len > V2_MAX {
            return Err(format!("a v2 header of {} bytes; at most {V2_MAX} accepted", 16 + len));
        }
        let start = header.len();
        header.resize(start + len, 0);
        stream
            .read_exact(&mut header[start..])
            .await
            .map_err(|e| format!("reading the header: {e}"))?;
        let parsed = ppp::v2::Header::try_from(header.as_slice()).map_err(|e| format!("v2: {e}"))?;
        return Ok(match parsed.command {
            ppp::v2::Command::Local => None,
            ppp::v2::Command::Proxy => match parsed.addresses {
                ppp::v2::Addresses::IPv4(a) => Some(SocketAddr::from((a.source_address, a.source_port))),
                ppp::v2::Addresses::IPv6(a) => Some(SocketAddr::from((a.source_address, a.source_port))),
                _ => None,
            },
        });
    }
    if !header.starts_with(b"PROXY ") {
        return Err("not a PROXY protocol header".to_owned());
    }
    // v1 ends at CRLF; read byte by byte so nothing after it is consumed.
    while !header.ends_with(b"\r\n") {
        if header.len() >= V1_MAX {
            return Err(format!("a v1 header longer than {V1_MAX} bytes"));
        }
        let byte = stream.read_u8().await.map_err(|e| format!("reading the header: {e}"))?;
        header.push(byte);
    }
    let parsed = ppp::v1::Header::try_from(header.as_slice()).map_err(|e| format!("v1: {e}"))?;
    Ok(match parsed.addresses {
        ppp::v1::Addresses::Tcp4(a) => Some(SocketAddr::from((a.source_address, a.source_port))),
        ppp::v1::Addresses::Tcp6(a) => Some(SocketAddr::from((a.source_address, a.source_port))),
        ppp::v1::Addresses::Unknown => None,
    })
}
