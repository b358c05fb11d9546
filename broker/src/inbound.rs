//! The broker's inbound path without sockets, for the fuzz target
//! (`broker/fuzz`) and the deterministic mutation test below: the bytes of
//! one connection go through a real session exactly as a client's would (the
//! codec, validation, CONNECT and login, the ACL, the message core) over an
//! in-memory stream, and what the broker answered comes back. A panic
//! anywhere on that path becomes a panic of [`Harness::connection`], for the
//! fuzzer to report.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use prometheus::Registry;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio_util::sync::CancellationToken;

use crate::auth::Auth;
use crate::auth::acl::Acl;
use crate::config::BrokerConfig;
use crate::{Material, Shared, sys};

/// The harness's ACL: enough rules that every access decision is exercised
/// (user rules, patterns with `%c`, denials).
const ACL: &str = "topic readwrite #\n\
                   topic deny secret/#\n\
                   pattern read devices/%c/#\n\
                   pattern write devices/%c/state\n";

/// How long one connection may take: the session ends when its input does,
/// so only a bug holds it this long.
const CONNECTION_DEADLINE: Duration = Duration::from_secs(5);

/// How long a saved session would be kept; the harness ends them all after
/// each connection instead.
const SAVED_SESSIONS: Duration = Duration::from_secs(3600);

/// A broker without listeners: the sessions' shared state and the message
/// core, on a runtime of its own.
pub struct Harness {
    runtime: tokio::runtime::Runtime,
    shared: Arc<Shared>,
    /// Kept so that sessions never see the `$SYS` channel closed.
    _sys: tokio::sync::watch::Sender<sys::Snapshot>,
}

impl Harness {
    /// A broker with its default settings, anonymous clients and [`ACL`].
    pub fn new() -> anyhow::Result<Self> {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()?;
        let mut config = BrokerConfig::load(None, &[])?;
        // Every saved session expires, so that [`Harness::connection`] can
        // end them all: millions of fuzzed connections must not pile up
        // sessions kept until a restart.
        config.persistent_client_expiration = Some(SAVED_SESSIONS);
        let acl = Acl::parse(ACL).map_err(|e| anyhow::anyhow!("line {}: {}", e.line, e.message))?;
        let material = Material {
            auth: Auth {
                passwords: None,
                allow_anonymous: true,
                acl: Some(acl),
            },
            tls: None,
        };
        let (shared, sys) =
            runtime.block_on(async { Shared::start(config, material, &Registry::new(), CancellationToken::new()) })?;
        Ok(Self {
            runtime,
            shared,
            _sys: sys,
        })
    }

    /// Serve `bytes` as everything one client sends, then its end of the
    /// stream; returns what the broker wrote back. Panics where the broker
    /// panicked, or when the session outlives [`CONNECTION_DEADLINE`].
    pub fn connection(&self, bytes: &[u8]) -> Vec<u8> {
        self.runtime.block_on(async {
            let (client, server) = tokio::io::duplex(64 << 10);
            let peer = SocketAddr::from(([127, 0, 0, 1], 1));
            let session = tokio::spawn(crate::session::serve_stream(server, peer, self.shared.clone()));
            let (mut from_broker, mut to_broker) = tokio::io::split(client);
            let send = async {
                let _ = to_broker.write_all(bytes).await;
                let _ = to_broker.shutdown().await;
            };
            let mut answer = Vec::new();
            let receive = from_broker.read_to_end(&mut answer);
            let both = async { tokio::join!(send, receive) };
            let finished = tokio::time::timeout(CONNECTION_DEADLINE, both).await.is_ok();
            match tokio::time::timeout(CONNECTION_DEADLINE, session).await {
                Ok(Err(error)) if error.is_panic() => std::panic::resume_unwind(error.into_panic()),
                Ok(_) if finished => {}
                _ => panic!("a session outlived its input by {CONNECTION_DEADLINE:?}"),
            }
            // Connections are independent inputs: what one left saved is
            // discarded, as its expiry would.
            let later = std::time::Instant::now() + SAVED_SESSIONS * 2;
            self.shared.registry.expire(later);
            answer
        })
    }
}

/// Connections to start from: MQTT 3.1.1 and 5, each a CONNECT (with a will,
/// a user name, properties) and the packets a session handles after it.
pub fn seeds() -> Vec<Vec<u8>> {
    seed_packets().iter().map(|packets| packets.concat()).collect()
}

/// [`seeds`], packet by packet.
fn seed_packets() -> Vec<Vec<Vec<u8>>> {
    let v4 = [
        // Clean session, will `w` at QoS 1, user `u`, password `p`.
        packet(
            0x10,
            &[
                b"\0\x04MQTT\x04\xce\0\x3c",
                &s(b"c"),
                &s(b"w"),
                &s(b"gone"),
                &s(b"u"),
                &s(b"p"),
            ],
        ),
        packet(0x82, &[b"\0\x01", &s(b"a/+/#"), b"\x01"]),
        packet(0x82, &[b"\0\x02", &s(b"$SYS/broker/#"), b"\0"]),
        packet(0x30, &[&s(b"a/b"), b"hi"]),
        packet(0x32, &[&s(b"a/b"), b"\0\x05", b"hi"]),
        packet(0x34, &[&s(b"a/b"), b"\0\x06", b"hi"]),
        packet(0x62, &[b"\0\x06"]),
        // Retained, and denied by the ACL.
        packet(0x33, &[&s(b"secret/x/y"), b"\0\x07", b"x"]),
        packet(0xa2, &[b"\0\x08", &s(b"a/+")]),
        packet(0xc0, &[]),
        packet(0xe0, &[]),
    ];
    let user_property = [&b"\x26"[..], &s(b"k"), &s(b"v")].concat();
    let v5 = [
        // Clean start, session expiry 10 s, will `w` at QoS 1 with a user
        // property.
        packet(
            0x10,
            &[
                b"\0\x04MQTT\x05\x0e\0\x3c\x05\x11\0\0\0\x0a",
                &s(b"c5"),
                &[user_property.len() as u8],
                &user_property,
                &s(b"w"),
                &s(b"gone"),
            ],
        ),
        packet(0x82, &[b"\0\x01\0", &s(b"a/+/#"), b"\x01"]),
        packet(
            0x32,
            &[
                &s(b"a/b"),
                b"\0\x05",
                &[user_property.len() as u8],
                &user_property,
                b"hi",
            ],
        ),
        packet(0x34, &[&s(b"a/b"), b"\0\x06\0", b"hi"]),
        packet(0x62, &[b"\0\x06"]),
        packet(0xa2, &[b"\0\x08\0", &s(b"a/+")]),
        packet(0xc0, &[]),
        // Normal disconnection, session expiry 0.
        packet(0xe0, &[b"\0\x05\x11\0\0\0\0"]),
    ];
    // A topic alias above the Topic Alias Maximum (10): DISCONNECT 0x94.
    let alias = vec![v5[0].clone(), packet(0x30, &[&s(b""), b"\x03\x23\0\x0b", b"hi"])];
    // Alias 1 set with a topic, then used alone, then PINGREQ.
    let aliased = vec![
        v5[0].clone(),
        packet(0x30, &[&s(b"a/b"), b"\x03\x23\0\x01", b"set"]),
        packet(0x30, &[&s(b""), b"\x03\x23\0\x01", b"used"]),
        packet(0xc0, &[]),
    ];
    vec![v4.to_vec(), v5.to_vec(), alias, aliased]
}

/// An MQTT packet: its first byte, then the remaining length and `parts`.
fn packet(first: u8, parts: &[&[u8]]) -> Vec<u8> {
    let body = parts.concat();
    let mut out = vec![first];
    let mut len = body.len();
    loop {
        let byte = (len % 128) as u8;
        len /= 128;
        out.push(if len > 0 { byte | 0x80 } else { byte });
        if len == 0 {
            break;
        }
    }
    out.extend_from_slice(&body);
    out
}

/// A string or binary field: its length, then its bytes.
fn s(bytes: &[u8]) -> Vec<u8> {
    let mut out = (bytes.len() as u16).to_be_bytes().to_vec();
    out.extend_from_slice(bytes);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_seeds_are_served_as_a_client_would_be() {
        let harness = Harness::new().unwrap();
        let seeds = seed_packets();
        for packets in &seeds {
            // CONNACK accepted.
            let answer = harness.connection(&packets.concat());
            assert_eq!(answer.first(), Some(&0x20), "{answer:x?}");
            assert_eq!(answer.get(3), Some(&0), "accepted: {answer:x?}");
        }
        // Without the DISCONNECT (which ends the session before its replies
        // are written), the PINGREQ is answered.
        for packets in &seeds[..2] {
            let answer = harness.connection(&packets[..packets.len() - 1].concat());
            assert!(answer.windows(2).any(|w| w == [0xd0, 0]), "{answer:x?}");
        }
        let refused = harness.connection(&seeds[2].concat());
        assert!(refused.windows(3).any(|w| w[0] == 0xe0 && w[2] == 0x94), "{refused:x?}");
        let aliased = harness.connection(&seeds[3].concat());
        assert!(aliased.windows(2).any(|w| w == [0xd0, 0]), "{aliased:x?}");
        assert!(!aliased.contains(&0xe0), "no DISCONNECT: {aliased:x?}");
    }

    /// Deterministic mutations of the seeds, through the whole inbound path:
    /// whatever a client sends, no panic, no stuck session.
    /// (The fuzz target explores far more; this keeps CI honest.)
    #[test]
    fn mutated_connections_never_panic() {
        let harness = Harness::new().unwrap();
        let mut state: u64 = 0x2545_f491_4f6c_dd1d;
        let mut next = move || {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state
        };
        for seed in seeds() {
            for _ in 0..1500 {
                let mut mutated = seed.clone();
                for _ in 0..1 + next() % 4 {
                    let at = (next() as usize) % mutated.len();
                    mutated[at] = next() as u8;
                }
                let cut = (next() as usize) % (mutated.len() + 1);
                harness.connection(&mutated[..cut]);
                harness.connection(&mutated);
            }
        }
    }

    /// Crashes the fuzz target found, replayed: `testdata/fuzz-router-wake-after-drop.bin`
    /// (two MQTT 5 CONNECTs and what follows) once panicked rumqttd's router
    /// thread, the broker's former core. Kept as an input: a takeover between
    /// two MQTT 5 connections with what follows.
    #[test]
    fn crashes_the_fuzzer_found_stay_fixed() {
        let harness = Harness::new().unwrap();
        let crash = include_bytes!("testdata/fuzz-router-wake-after-drop.bin");
        for _ in 0..300 {
            harness.connection(crash);
        }
    }

    /// Writes the seeds as the fuzz target's starting corpus:
    /// `cargo test -p snigate-broker --lib write_fuzz_corpus -- --ignored`.
    #[test]
    #[ignore = "writes broker/fuzz/corpus/inbound; run by hand"]
    fn write_fuzz_corpus() {
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz/corpus/inbound");
        std::fs::create_dir_all(&dir).unwrap();
        for (n, seed) in seeds().iter().enumerate() {
            std::fs::write(dir.join(format!("seed-{n}")), seed).unwrap();
        }
    }
}
