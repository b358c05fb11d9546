//! Pure ClientHello parsing: bytes in, one of three answers out.
//!
//! [`parse`] looks at the bytes a client has sent so far and answers
//! - `Ok(HelloInfo)`: a complete ClientHello, with its SNI and ALPN;
//! - `Err(ParseError::Incomplete)`: a valid prefix of one, read more;
//! - `Err(ParseError::Invalid(_))`: this is not a TLS ClientHello, and no amount of
//!   further bytes will make it one.
//!
//! It does no I/O and never panics; every proper prefix of a valid hello answers
//! `Incomplete` (a test checks this for every prefix of recorded hellos).
//!
//! Record framing is done here rather than by tls-parser, because a ClientHello may
//! be split across several TLS records (RFC 8446 §5.1 allows it, and large
//! post-quantum hellos make it real), and tls-parser parses one record at a time.
//! tls-parser parses the reassembled ClientHello body and the SNI and ALPN
//! extensions; the extension list is walked here so that an extension tls-parser
//! does not understand cannot hide the SNI behind it.

use std::borrow::Cow;

use tls_parser::{SNIType, TlsExtension};

const CONTENT_TYPE_HANDSHAKE: u8 = 22;
const HANDSHAKE_CLIENT_HELLO: u8 = 1;
const RECORD_HEADER_LEN: usize = 5;
const HANDSHAKE_HEADER_LEN: usize = 4;
/// RFC 8446 §5.1: a plaintext record carries at most 2^14 bytes.
const MAX_PLAINTEXT_RECORD: usize = 1 << 14;
const EXT_SERVER_NAME: u16 = 0;
const EXT_ALPN: u16 = 16;
/// RFC 1035: 253 characters in the text form of a name, without the root dot.
const MAX_HOSTNAME_LEN: usize = 253;

/// What routing needs from a ClientHello.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct HelloInfo {
    /// The `host_name` of the server_name extension, lower-cased, without a
    /// trailing dot. `None` when the client sent no SNI.
    pub sni: Option<String>,
    /// The ALPN protocol names offered, in the client's order (lossy UTF-8).
    pub alpn: Vec<String>,
    /// The record-layer version of the first record (0x0301 for TLS 1.0-framed
    /// hellos, which is what TLS 1.3 clients send); our alert replies echo it.
    pub record_version: u16,
}

/// Why bytes cannot be a ClientHello. The variant names are log and metric labels.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum Invalid {
    /// The first byte is not a TLS handshake record: plaintext HTTP or MQTT, an
    /// SSLv2-style hello, or anything else.
    #[error("not a TLS handshake record (first byte {0:#04x})")]
    NotHandshakeRecord(u8),
    #[error("record version {0:#06x} is not TLS")]
    BadRecordVersion(u16),
    #[error("record length {0} is out of range")]
    BadRecordLength(usize),
    #[error("handshake message type {0} is not a ClientHello")]
    NotClientHello(u8),
    #[error("a non-handshake record interrupted the ClientHello")]
    InterleavedRecord,
    #[error("malformed ClientHello: {0}")]
    Malformed(&'static str),
    #[error("server name is not a valid host name")]
    BadServerName,
}

impl Invalid {
    /// A stable, low-cardinality label for logs and metrics.
    pub fn label(&self) -> &'static str {
        match self {
            Invalid::NotHandshakeRecord(_) => "not_tls",
            Invalid::BadRecordVersion(_) => "bad_record_version",
            Invalid::BadRecordLength(_) => "bad_record_length",
            Invalid::NotClientHello(_) => "not_client_hello",
            Invalid::InterleavedRecord => "interleaved_record",
            Invalid::Malformed(_) => "malformed",
            Invalid::BadServerName => "bad_server_name",
        }
    }
}

/// The two ways [`parse`] can decline to answer with a hello.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum ParseError {
    /// A valid prefix: more bytes are needed.
    #[error("incomplete ClientHello")]
    Incomplete,
    #[error(transparent)]
    Invalid(#[from] Invalid),
}

/// Parse the bytes a client has sent so far.
pub fn parse(buf: &[u8]) -> Result<HelloInfo, ParseError> {
    let (message, record_version) = reassemble(buf)?;
    let info = parse_client_hello(&message)?;
    Ok(HelloInfo { record_version, ..info })
}

/// Collect the handshake message from as many records as it spans. Returns the
/// ClientHello body (without the 4-byte handshake header) and the first record's
/// version. Borrows when the message sits in one record, the common case.
fn reassemble(buf: &[u8]) -> Result<(Cow<'_, [u8]>, u16), ParseError> {
    let mut joined: Option<Vec<u8>> = None;
    let mut first_payload: &[u8] = &[];
    let mut record_version = 0;
    let mut rest = buf;
    let mut first = true;
    loop {
        check_record_prefix(rest, first)?;
        if rest.len() < RECORD_HEADER_LEN {
            return Err(ParseError::Incomplete);
        }
        let version = u16::from_be_bytes([rest[1], rest[2]]);
        let len = usize::from(u16::from_be_bytes([rest[3], rest[4]]));
        if len == 0 || len > MAX_PLAINTEXT_RECORD {
            return Err(Invalid::BadRecordLength(len).into());
        }
        let available = &rest[RECORD_HEADER_LEN..];
        let payload = &available[..len.min(available.len())];
        if first {
            record_version = version;
        }

        // What the handshake message looks like so far, including a partial record,
        // so that a wrong message type is refused without waiting for more bytes.
        let so_far: &[u8] = match &mut joined {
            None if first => payload,
            None => {
                let mut v = Vec::with_capacity(first_payload.len() + payload.len());
                v.extend_from_slice(first_payload);
                v.extend_from_slice(payload);
                joined.insert(v)
            }
            Some(v) => {
                v.extend_from_slice(payload);
                v
            }
        };
        if let Some(&kind) = so_far.first()
            && kind != HANDSHAKE_CLIENT_HELLO
        {
            return Err(Invalid::NotClientHello(kind).into());
        }
        if so_far.len() >= HANDSHAKE_HEADER_LEN {
            let body_len = usize::from(so_far[1]) << 16 | usize::from(so_far[2]) << 8 | usize::from(so_far[3]);
            let end = HANDSHAKE_HEADER_LEN + body_len;
            if so_far.len() >= end {
                let body = match joined {
                    None => Cow::Borrowed(&payload[HANDSHAKE_HEADER_LEN..end]),
                    Some(mut v) => {
                        v.truncate(end);
                        v.drain(..HANDSHAKE_HEADER_LEN);
                        Cow::Owned(v)
                    }
                };
                return Ok((body, record_version));
            }
        }
        if payload.len() < len {
            return Err(ParseError::Incomplete);
        }
        if first {
            first_payload = payload;
            first = false;
        }
        rest = &rest[RECORD_HEADER_LEN + len..];
    }
}

/// Refuse as early as the first bytes allow: a plaintext client is told apart
/// after one byte, not after a timeout.
fn check_record_prefix(rest: &[u8], first: bool) -> Result<(), Invalid> {
    if let Some(&content_type) = rest.first()
        && content_type != CONTENT_TYPE_HANDSHAKE
    {
        return Err(if first {
            Invalid::NotHandshakeRecord(content_type)
        } else {
            Invalid::InterleavedRecord
        });
    }
    // TLS records carry 3.x (SSL 3.0 through the TLS 1.3 compatibility value).
    if let Some(&major) = rest.get(1)
        && major != 3
    {
        let minor = rest.get(2).copied().unwrap_or(0);
        return Err(Invalid::BadRecordVersion(u16::from_be_bytes([major, minor])));
    }
    Ok(())
}

fn parse_client_hello(body: &[u8]) -> Result<HelloInfo, Invalid> {
    let (rest, hello) =
        tls_parser::parse_tls_handshake_client_hello(body).map_err(|_| Invalid::Malformed("ClientHello fields"))?;
    // tls-parser reads a lying extensions length as "no extensions"; bytes left over
    // then betray it.
    if !rest.is_empty() {
        return Err(Invalid::Malformed("bytes after the extensions"));
    }
    let mut info = HelloInfo::default();
    let mut seen_sni = false;
    let mut extensions = hello.ext.unwrap_or_default();
    while !extensions.is_empty() {
        let [t0, t1, l0, l1, ..] = *extensions else {
            return Err(Invalid::Malformed("extension header"));
        };
        let kind = u16::from_be_bytes([t0, t1]);
        let len = usize::from(u16::from_be_bytes([l0, l1]));
        let data = extensions
            .get(4..4 + len)
            .ok_or(Invalid::Malformed("extension length"))?;
        extensions = &extensions[4 + len..];
        match kind {
            EXT_SERVER_NAME => {
                if std::mem::replace(&mut seen_sni, true) {
                    return Err(Invalid::Malformed("two server_name extensions"));
                }
                info.sni = server_name(data)?;
            }
            EXT_ALPN => info.alpn = alpn(data)?,
            _ => {}
        }
    }
    Ok(info)
}

fn server_name(data: &[u8]) -> Result<Option<String>, Invalid> {
    let Ok((rest, TlsExtension::SNI(names))) = tls_parser::parse_tls_extension_sni_content(data) else {
        return Err(Invalid::Malformed("server_name extension"));
    };
    // tls-parser stops quietly at the first malformed entry; an SNI we only half
    // read must not route as "no SNI", so the entries must account for every byte.
    let entries_len: usize = names.iter().map(|(_, name)| 3 + name.len()).sum();
    if !rest.is_empty() || (!data.is_empty() && entries_len + 2 != data.len()) {
        return Err(Invalid::Malformed("server_name extension"));
    }
    names
        .into_iter()
        .find(|(kind, _)| *kind == SNIType::HostName)
        .map(|(_, name)| normalize_host(name))
        .transpose()
}

/// Lower-case and drop one trailing dot, so that `Broker.Example.COM.` routes like
/// `broker.example.com`. Only host-name characters are accepted: the name goes
/// into logs, and a client must not be able to write arbitrary bytes there.
fn normalize_host(name: &[u8]) -> Result<String, Invalid> {
    let name = name.strip_suffix(b".").unwrap_or(name);
    // Labels must be non-empty too: `.apps.example.com` must not match
    // `*.apps.example.com` through an empty first label.
    let valid = name.len() <= MAX_HOSTNAME_LEN
        && name.split(|&b| b == b'.').all(|label| {
            !label.is_empty()
                && label
                    .iter()
                    .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_'))
        });
    if !valid {
        return Err(Invalid::BadServerName);
    }
    Ok(name.iter().map(|b| char::from(b.to_ascii_lowercase())).collect())
}

fn alpn(data: &[u8]) -> Result<Vec<String>, Invalid> {
    match tls_parser::parse_tls_extension_alpn_content(data) {
        Ok((_, TlsExtension::ALPN(protocols))) => Ok(protocols
            .into_iter()
            .map(|p| String::from_utf8_lossy(p).into_owned())
            .collect()),
        _ => Err(Invalid::Malformed("ALPN extension")),
    }
}

/// The fuzzing entry point: any input, no panic.
#[cfg(fuzzing)]
pub fn fuzz(data: &[u8]) {
    let _ = parse(data);
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    const OPENSSL_TLS13: &[u8] = include_bytes!("testdata/openssl-tls13.bin");
    const OPENSSL_TLS12: &[u8] = include_bytes!("testdata/openssl-tls12.bin");
    const OPENSSL_NO_SNI: &[u8] = include_bytes!("testdata/openssl-no-sni.bin");

    /// A ClientHello as rustls writes it, with the post-quantum hybrid key share
    /// (rustls' default: X25519MLKEM768, about 1,460 bytes) or a classic one.
    fn rustls_hello(sni: &str, post_quantum: bool) -> Vec<u8> {
        let mut provider = rustls::crypto::aws_lc_rs::default_provider();
        if !post_quantum {
            provider.kx_groups = vec![rustls::crypto::aws_lc_rs::kx_group::X25519];
        }
        let mut config = rustls::ClientConfig::builder_with_provider(Arc::new(provider))
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_root_certificates(rustls::RootCertStore::empty())
            .with_no_client_auth();
        config.alpn_protocols = vec![b"mqtt".to_vec(), b"h2".to_vec()];
        let name = rustls::pki_types::ServerName::try_from(sni.to_owned()).unwrap();
        let mut conn = rustls::ClientConnection::new(Arc::new(config), name).unwrap();
        let mut out = Vec::new();
        while conn.wants_write() {
            conn.write_tls(&mut out).unwrap();
        }
        out
    }

    /// The handshake bytes of a one-record hello, re-framed into records of at most
    /// `chunk` bytes each.
    fn reframe(hello: &[u8], chunk: usize) -> Vec<u8> {
        let payload = &hello[RECORD_HEADER_LEN..];
        let mut out = Vec::new();
        for piece in payload.chunks(chunk) {
            out.extend_from_slice(&[22, 3, 1]);
            out.extend_from_slice(&(piece.len() as u16).to_be_bytes());
            out.extend_from_slice(piece);
        }
        out
    }

    /// A minimal ClientHello with the given extensions, in one record.
    fn synthetic_hello(extensions: &[(u16, Vec<u8>)]) -> Vec<u8> {
        let mut ext = Vec::new();
        for (kind, data) in extensions {
            ext.extend_from_slice(&kind.to_be_bytes());
            ext.extend_from_slice(&(data.len() as u16).to_be_bytes());
            ext.extend_from_slice(data);
        }
        let mut body = vec![3, 3];
        body.extend_from_slice(&[7; 32]); // random
        body.push(0); // session id
        body.extend_from_slice(&[0, 2, 0x13, 0x01]); // one cipher suite
        body.extend_from_slice(&[1, 0]); // null compression
        body.extend_from_slice(&(ext.len() as u16).to_be_bytes());
        body.extend_from_slice(&ext);
        frame(&body)
    }

    fn frame(body: &[u8]) -> Vec<u8> {
        let mut message = vec![HANDSHAKE_CLIENT_HELLO];
        message.extend_from_slice(&(body.len() as u32).to_be_bytes()[1..]);
        message.extend_from_slice(body);
        let mut record = vec![22, 3, 1];
        record.extend_from_slice(&(message.len() as u16).to_be_bytes());
        record.extend_from_slice(&message);
        record
    }

    fn sni_extension(name: &[u8]) -> (u16, Vec<u8>) {
        let mut entry = vec![0];
        entry.extend_from_slice(&(name.len() as u16).to_be_bytes());
        entry.extend_from_slice(name);
        let mut data = (entry.len() as u16).to_be_bytes().to_vec();
        data.extend_from_slice(&entry);
        (EXT_SERVER_NAME, data)
    }

    fn assert_every_prefix_incomplete(hello: &[u8]) {
        for end in 0..hello.len() {
            assert_eq!(
                parse(&hello[..end]),
                Err(ParseError::Incomplete),
                "prefix of {end} of {} bytes",
                hello.len()
            );
        }
    }

    #[test]
    fn openssl_hellos() {
        let info = parse(OPENSSL_TLS13).unwrap();
        assert_eq!(
            info.sni.as_deref(),
            Some("broker-a.apps.example.com"),
            "upper case and trailing dot normalised"
        );
        assert_eq!(info.alpn, ["mqtt", "x-amzn-mqtt-ca"]);
        assert_eq!(info.record_version, 0x0301);
        assert_eq!(
            parse(OPENSSL_TLS12).unwrap().sni.as_deref(),
            Some("broker-b.apps.example.com")
        );
        assert_eq!(parse(OPENSSL_NO_SNI).unwrap().sni, None);
        for sample in [OPENSSL_TLS13, OPENSSL_TLS12, OPENSSL_NO_SNI] {
            assert_every_prefix_incomplete(sample);
        }
    }

    #[test]
    fn rustls_hellos_with_and_without_post_quantum_key_share() {
        let pq = rustls_hello("broker-a.apps.example.com", true);
        let classic = rustls_hello("broker-a.apps.example.com", false);
        assert!(pq.len() > 1400, "post-quantum hello is {} bytes", pq.len());
        assert!(classic.len() < 600, "classic hello is {} bytes", classic.len());
        for hello in [&pq, &classic] {
            let info = parse(hello).unwrap();
            assert_eq!(info.sni.as_deref(), Some("broker-a.apps.example.com"));
            assert_eq!(info.alpn, ["mqtt", "h2"]);
            assert_every_prefix_incomplete(hello);
        }
    }

    #[test]
    fn hello_spread_over_many_records() {
        let hello = rustls_hello("multi.example.com", true);
        let payload_len = hello.len() - RECORD_HEADER_LEN;
        let in_25 = reframe(&hello, payload_len.div_ceil(25));
        assert_eq!(in_25.len(), hello.len() + 24 * RECORD_HEADER_LEN, "25 records");
        assert_eq!(parse(&in_25).unwrap().sni.as_deref(), Some("multi.example.com"));
        assert_every_prefix_incomplete(&in_25);
        // One byte per record: the handshake header itself is split.
        let bytewise = reframe(&hello, 1);
        assert_eq!(parse(&bytewise).unwrap().sni.as_deref(), Some("multi.example.com"));
    }

    #[test]
    fn bytes_after_the_hello_are_ignored() {
        let mut hello = OPENSSL_TLS13.to_vec();
        hello.extend_from_slice(&[20, 3, 3, 0, 1, 1]); // a ChangeCipherSpec record
        assert!(parse(&hello).is_ok());
    }

    #[test]
    fn not_tls_is_refused_at_the_first_byte() {
        assert_eq!(parse(b"G"), Err(Invalid::NotHandshakeRecord(b'G').into()));
        // MQTT CONNECT, as a client on a plaintext port would send it.
        assert_eq!(
            parse(&[0x10, 0x0c, 0, 4]),
            Err(Invalid::NotHandshakeRecord(0x10).into())
        );
        // SSLv2-style hello: two-byte header with the high bit set.
        assert_eq!(
            parse(&[0x80, 0x2e, 0x01, 0x03, 0x01]),
            Err(Invalid::NotHandshakeRecord(0x80).into())
        );
        assert_eq!(parse(&[22, 2, 0]), Err(Invalid::BadRecordVersion(0x0200).into()));
        assert_eq!(parse(b""), Err(ParseError::Incomplete));
    }

    #[test]
    fn bad_framing_is_refused() {
        assert_eq!(parse(&[22, 3, 1, 0, 0]), Err(Invalid::BadRecordLength(0).into()));
        assert_eq!(
            parse(&[22, 3, 1, 0x40, 1]),
            Err(Invalid::BadRecordLength(0x4001).into())
        );
        // A ServerHello where a ClientHello should be, refused at its first byte.
        assert_eq!(parse(&[22, 3, 3, 0, 40, 2]), Err(Invalid::NotClientHello(2).into()));
        // An alert record in the middle of a hello split in two.
        let split = reframe(OPENSSL_TLS13, 100);
        let mut interleaved = split[..105].to_vec();
        interleaved.extend_from_slice(&[21, 3, 3, 0, 2, 2, 40]);
        assert_eq!(parse(&interleaved), Err(Invalid::InterleavedRecord.into()));
    }

    #[test]
    fn lying_lengths_are_refused_or_wait_for_the_cap() {
        // Extensions length longer than the message: the body has bytes left over.
        let mut hello = synthetic_hello(&[sni_extension(b"a.test")]);
        let ext_len_at = RECORD_HEADER_LEN + HANDSHAKE_HEADER_LEN + 2 + 32 + 1 + 4 + 2;
        hello[ext_len_at + 1] += 1;
        assert_eq!(
            parse(&hello),
            Err(Invalid::Malformed("bytes after the extensions").into())
        );

        // An SNI entry whose length overruns its extension.
        let (kind, mut data) = sni_extension(b"a.test");
        data[4] = 200;
        assert!(matches!(
            parse(&synthetic_hello(&[(kind, data)])),
            Err(ParseError::Invalid(Invalid::Malformed(_)))
        ));

        // A handshake length of 16 MiB: a valid prefix as far as it goes; the reader's
        // byte cap ends it.
        let mut huge = synthetic_hello(&[]);
        huge[6..9].copy_from_slice(&[0xff, 0xff, 0xff]);
        assert_eq!(parse(&huge), Err(ParseError::Incomplete));
    }

    #[test]
    fn server_names_are_checked_and_normalised() {
        let parse_name = |name: &[u8]| parse(&synthetic_hello(&[sni_extension(name)])).map(|i| i.sni);
        assert_eq!(parse_name(b"MiXeD.Example.Com."), Ok(Some("mixed.example.com".into())));
        assert_eq!(parse_name(b"under_score.test"), Ok(Some("under_score.test".into())));
        for bad in [
            &b"bad name.test"[..],
            b"\x1b[31m.test",
            b"a/b",
            b".",
            b".apps.test",
            b"a..test",
            b"a.test..",
            b"",
            b"caf\xc3\xa9.test",
        ] {
            assert_eq!(parse_name(bad), Err(Invalid::BadServerName.into()), "{bad:?}");
        }
        assert_eq!(parse_name(&[b'a'; 254]), Err(Invalid::BadServerName.into()));
        let twice = synthetic_hello(&[sni_extension(b"a.test"), sni_extension(b"b.test")]);
        assert_eq!(
            parse(&twice),
            Err(Invalid::Malformed("two server_name extensions").into())
        );
        assert_eq!(
            parse(&synthetic_hello(&[])),
            Ok(HelloInfo {
                record_version: 0x0301,
                ..HelloInfo::default()
            })
        );
    }

    /// Deterministic mutations of real hellos: whatever the bytes, an answer and no
    /// panic. (The fuzz target explores far more; this keeps CI honest.)
    #[test]
    fn mutated_hellos_never_panic() {
        let samples = [
            OPENSSL_TLS13.to_vec(),
            OPENSSL_TLS12.to_vec(),
            rustls_hello("m.test", true),
            reframe(OPENSSL_TLS13, 7),
        ];
        let mut state: u64 = 0x9e37_79b9_7f4a_7c15;
        let mut next = move || {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state
        };
        for sample in &samples {
            for _ in 0..2000 {
                let mut mutated = sample.clone();
                for _ in 0..1 + next() % 4 {
                    let at = (next() as usize) % mutated.len();
                    mutated[at] = next() as u8;
                }
                let cut = (next() as usize) % (mutated.len() + 1);
                let _ = parse(&mutated[..cut]);
                let _ = parse(&mutated);
            }
        }
    }
}
