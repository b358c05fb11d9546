//! End to end through the router, in-process, over loopback: real rustls and
//! openssl clients, real TLS backends with their own certificates, raw TCP peers
//! where the test needs to see exact bytes or control resets.
#![allow(clippy::unwrap_used)] // a test binary: unwrap is an assertion

mod support;

use std::time::{Duration, Instant};

use support::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// An openssl ClientHello for `broker-a.apps.example.com`, recorded.
const OPENSSL_HELLO: &[u8] = include_bytes!("../src/hello/testdata/openssl-tls13.bin");
const OPENSSL_HELLO_SNI: &str = "broker-a.apps.example.com";

#[tokio::test]
async fn each_sni_reaches_its_own_backend() {
    let ca = Ca::new();
    let a = TlsBackend::start(&ca, "a.test", "backend-a").await;
    let b = TlsBackend::start(&ca, "b.test", "backend-b").await;
    let c = TlsBackend::start(&ca, "x.apps.test", "backend-c").await;
    let special = TlsBackend::start(&ca, "special.apps.test", "backend-special").await;
    let config = [
        route("a", &["a.test"], &[a.addr]),
        route("b", &["b.test"], &[b.addr]),
        route("apps", &["*.apps.test"], &[c.addr]),
        route("special", &["special.apps.test"], &[special.addr]),
    ]
    .concat();
    let router = TestRouter::start(&config).await;

    assert_eq!(backend_for(&ca, router.addr, "a.test").await.unwrap(), "backend-a");
    assert_eq!(backend_for(&ca, router.addr, "b.test").await.unwrap(), "backend-b");
    assert_eq!(backend_for(&ca, router.addr, "x.apps.test").await.unwrap(), "backend-c");
    // Exact beats wildcard, whatever the order of the routes.
    assert_eq!(
        backend_for(&ca, router.addr, "special.apps.test").await.unwrap(),
        "backend-special"
    );
    // A wildcard matches one label only: no route, so the handshake fails.
    assert!(backend_for(&ca, router.addr, "deep.x.apps.test").await.is_err());
    router.stop().await;
}

#[tokio::test]
async fn multi_megabyte_transfers_arrive_intact_both_ways() {
    let ca = Ca::new();
    let backend = TlsBackend::start(&ca, "bulk.test", "bulk").await;
    let router = TestRouter::start(&route("bulk", &["bulk.test"], &[backend.addr])).await;

    let tcp = TcpStream::connect(router.addr).await.unwrap();
    let (tls, greeting) = tls_connect(&ca, tcp, "bulk.test").await.unwrap();
    assert_eq!(greeting, "bulk");
    let sent = pattern(8 << 20, 42);
    let (mut reader, mut writer) = tokio::io::split(tls);
    let upload = {
        let sent = sent.clone();
        tokio::spawn(async move {
            writer.write_all(&sent).await.unwrap();
            writer.shutdown().await.unwrap();
        })
    };
    let mut echoed = Vec::with_capacity(sent.len());
    tokio::time::timeout(Duration::from_secs(60), reader.read_to_end(&mut echoed))
        .await
        .unwrap()
        .unwrap();
    upload.await.unwrap();
    assert_eq!(echoed.len(), sent.len());
    assert!(echoed == sent, "the echoed bytes differ from those sent");
    router.stop().await;
}

#[tokio::test]
async fn post_quantum_hello_in_small_segments_and_byte_by_byte() {
    let ca = Ca::new();
    let backend = TlsBackend::start(&ca, "pq.test", "pq").await;
    let router = TestRouter::start(&route("pq", &["pq.test"], &[backend.addr])).await;
    for chunk in [100, 7, 1] {
        let tcp = TcpStream::connect(router.addr).await.unwrap();
        tcp.set_nodelay(true).unwrap();
        let trickle = Trickle {
            inner: tcp,
            chunk,
            limit: 4096,
            written: 0,
        };
        let (mut tls, greeting) = tokio::time::timeout(STEP, tls_connect(&ca, trickle, "pq.test"))
            .await
            .unwrap()
            .unwrap();
        assert_eq!(greeting, "pq", "chunks of {chunk}");
        tls.write_all(b"ping").await.unwrap();
        let mut pong = [0; 4];
        tls.read_exact(&mut pong).await.unwrap();
        assert_eq!(&pong, b"ping");
    }
    router.stop().await;
}

#[tokio::test]
async fn sni_case_and_trailing_dot_do_not_matter() {
    // rustls refuses to send a trailing dot or upper case, so this uses a recorded
    // openssl hello whose SNI is `Broker-A.Apps.Example.COM.` and a raw backend.
    let backend = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let router = TestRouter::start(&route(
        "a",
        &["BROKER-A.apps.example.com."],
        &[backend.local_addr().unwrap()],
    ))
    .await;
    let mut client = TcpStream::connect(router.addr).await.unwrap();
    client.write_all(OPENSSL_HELLO).await.unwrap();
    let (mut server, _) = tokio::time::timeout(STEP, backend.accept()).await.unwrap().unwrap();
    let mut received = vec![0; OPENSSL_HELLO.len()];
    server.read_exact(&mut received).await.unwrap();
    assert_eq!(received, OPENSSL_HELLO, "forwarded unchanged");
    drop((client, server));
    router.stop().await;
}

#[tokio::test]
async fn half_close_passes_both_ways() {
    let backend = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let router = TestRouter::start(&route("a", &[OPENSSL_HELLO_SNI], &[backend.local_addr().unwrap()])).await;

    let mut client = TcpStream::connect(router.addr).await.unwrap();
    client.write_all(OPENSSL_HELLO).await.unwrap();
    client.write_all(b"request").await.unwrap();
    client.shutdown().await.unwrap();

    let (mut server, _) = tokio::time::timeout(STEP, backend.accept()).await.unwrap().unwrap();
    let mut received = Vec::new();
    // The backend sees end of stream after the client's half-close...
    tokio::time::timeout(STEP, server.read_to_end(&mut received))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(received, [OPENSSL_HELLO, b"request"].concat());
    // ...and can still answer, which the client reads before its own end of stream.
    server.write_all(b"response").await.unwrap();
    server.shutdown().await.unwrap();
    let (reply, error) = read_to_close(&mut client, STEP).await;
    assert!(error.is_none(), "{error:?}");
    assert_eq!(reply, b"response");
    router.stop().await;
}

#[tokio::test]
async fn unknown_sni_gets_an_unrecognized_name_alert() {
    let backend = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let router = TestRouter::start(&route("other", &["other.test"], &[backend.local_addr().unwrap()])).await;
    let mut client = TcpStream::connect(router.addr).await.unwrap();
    client.write_all(OPENSSL_HELLO).await.unwrap();
    let (reply, _) = read_to_close(&mut client, STEP).await;
    assert_eq!(reply, [21, 3, 1, 0, 2, 2, 112], "fatal unrecognized_name alert");
    router.stop().await;
}

#[tokio::test]
async fn default_route_takes_unknown_and_missing_sni() {
    let ca = Ca::new();
    let known = TlsBackend::start(&ca, "known.test", "known").await;
    let fallback = TlsBackend::start(&ca, "fallback.test", "fallback").await;
    let config = format!(
        "{}[[route]]\nname = \"fallback\"\ndefault = true\nendpoints = [\"{}\"]\n",
        route("known", &["known.test"], &[known.addr]),
        fallback.addr
    );
    let router = TestRouter::start(&config).await;
    assert_eq!(backend_for(&ca, router.addr, "known.test").await.unwrap(), "known");
    // rustls verifies the certificate against the name it sent, so ask for the
    // fallback's own name: it is unknown to the router.
    assert_eq!(
        backend_for(&ca, router.addr, "fallback.test").await.unwrap(),
        "fallback"
    );

    // No SNI at all: a recorded openssl hello sent with -noservername.
    let no_sni: &[u8] = include_bytes!("../src/hello/testdata/openssl-no-sni.bin");
    let raw_fallback = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let config = format!(
        "[[route]]\nname = \"fallback\"\ndefault = true\nendpoints = [\"{}\"]\n",
        raw_fallback.local_addr().unwrap()
    );
    let router2 = TestRouter::start(&config).await;
    let mut client = TcpStream::connect(router2.addr).await.unwrap();
    client.write_all(no_sni).await.unwrap();
    let (mut server, _) = tokio::time::timeout(STEP, raw_fallback.accept())
        .await
        .unwrap()
        .unwrap();
    let mut received = vec![0; no_sni.len()];
    server.read_exact(&mut received).await.unwrap();
    assert_eq!(received, no_sni);
    drop((client, server));
    router.stop().await;
    router2.stop().await;
}

#[tokio::test]
async fn non_tls_is_closed_and_never_forwarded() {
    let backend = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let config = format!(
        "[[route]]\nname = \"fallback\"\ndefault = true\nendpoints = [\"{}\"]\n",
        backend.local_addr().unwrap()
    );
    let router = TestRouter::start(&config).await;
    let mqtt_connect: &[u8] = &[
        0x10, 0x10, 0, 4, b'M', b'Q', b'T', b'T', 4, 2, 0, 60, 0, 4, b't', b'e', b's', b't',
    ];
    let sslv2_hello: &[u8] = &[0x80, 0x2e, 0x01, 0x03, 0x01, 0x00, 0x15];
    for garbage in [&b"GET / HTTP/1.1\r\nHost: x\r\n\r\n"[..], mqtt_connect, sslv2_hello] {
        let mut client = TcpStream::connect(router.addr).await.unwrap();
        client.write_all(garbage).await.unwrap();
        let started = Instant::now();
        let (reply, _) = read_to_close(&mut client, STEP).await;
        assert!(reply.is_empty(), "nothing is answered to {garbage:?}");
        assert!(
            started.elapsed() < Duration::from_secs(2),
            "closed at once, not at the hello timeout"
        );
    }
    assert!(
        tokio::time::timeout(Duration::from_millis(300), backend.accept())
            .await
            .is_err(),
        "the backend was never contacted"
    );
    router.stop().await;
}

#[tokio::test]
async fn a_hello_that_never_completes_is_cut_at_the_deadline() {
    let backend = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let config = format!(
        "[hello]\ntimeout = \"300ms\"\n{}",
        route("a", &[OPENSSL_HELLO_SNI], &[backend.local_addr().unwrap()])
    );
    let router = TestRouter::start(&config).await;

    // Half a hello, then nothing; and a client that sends nothing at all.
    let partial_since = Instant::now();
    let mut partial = TcpStream::connect(router.addr).await.unwrap();
    partial
        .write_all(&OPENSSL_HELLO[..OPENSSL_HELLO.len() / 2])
        .await
        .unwrap();
    let silent_since = Instant::now();
    let mut silent = TcpStream::connect(router.addr).await.unwrap();
    for (client, started) in [(&mut partial, partial_since), (&mut silent, silent_since)] {
        let (reply, _) = read_to_close(client, Duration::from_secs(5)).await;
        assert!(reply.is_empty());
        let waited = started.elapsed();
        assert!(
            waited >= Duration::from_millis(200) && waited < Duration::from_secs(3),
            "closed after {waited:?}"
        );
    }
    router.stop().await;
}

#[tokio::test]
async fn an_oversized_hello_is_refused() {
    let backend = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let config = format!(
        "[hello]\nmax_bytes = 1024\n{}",
        route("a", &["a.test"], &[backend.local_addr().unwrap()])
    );
    let router = TestRouter::start(&config).await;
    // A record that announces a 64 KiB ClientHello and keeps sending it.
    let mut client = TcpStream::connect(router.addr).await.unwrap();
    let mut oversized = vec![22, 3, 1, 0x40, 0x00, 1, 0x01, 0x00, 0x00];
    oversized.resize(4096, 0xaa);
    let _ = client.write_all(&oversized).await;
    let (reply, _) = read_to_close(&mut client, STEP).await;
    assert!(reply.is_empty());
    router.stop().await;
}

#[tokio::test]
async fn a_dead_endpoint_is_skipped() {
    let ca = Ca::new();
    let live = TlsBackend::start(&ca, "ha.test", "live").await;
    // A port that was just free: connecting to it is refused.
    let dead = TcpListener::bind("127.0.0.1:0").await.unwrap().local_addr().unwrap();
    let router = TestRouter::start(&route("ha", &["ha.test"], &[dead, live.addr])).await;
    assert_eq!(backend_for(&ca, router.addr, "ha.test").await.unwrap(), "live");
    router.stop().await;
}

#[tokio::test]
async fn all_endpoints_down_closes_the_client_promptly() {
    let dead1 = TcpListener::bind("127.0.0.1:0").await.unwrap().local_addr().unwrap();
    let dead2 = TcpListener::bind("127.0.0.1:0").await.unwrap().local_addr().unwrap();
    let router = TestRouter::start(&route("down", &[OPENSSL_HELLO_SNI], &[dead1, dead2])).await;
    let mut client = TcpStream::connect(router.addr).await.unwrap();
    client.write_all(OPENSSL_HELLO).await.unwrap();
    let started = Instant::now();
    let (reply, _) = read_to_close(&mut client, STEP).await;
    assert!(reply.is_empty());
    assert!(started.elapsed() < Duration::from_secs(2));
    router.stop().await;
}

#[tokio::test]
async fn a_backend_reset_mid_transfer_closes_the_client() {
    let backend = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let router = TestRouter::start(&route("a", &[OPENSSL_HELLO_SNI], &[backend.local_addr().unwrap()])).await;
    let mut client = TcpStream::connect(router.addr).await.unwrap();
    client.write_all(OPENSSL_HELLO).await.unwrap();
    let (mut server, _) = tokio::time::timeout(STEP, backend.accept()).await.unwrap().unwrap();
    let mut hello = vec![0; OPENSSL_HELLO.len()];
    server.read_exact(&mut hello).await.unwrap();
    server.write_all(&pattern(64 * 1024, 7)).await.unwrap();
    // Reset: close with linger 0.
    socket2::SockRef::from(&server)
        .set_linger(Some(Duration::ZERO))
        .unwrap();
    drop(server);

    let started = Instant::now();
    let (received, error) = read_to_close(&mut client, STEP).await;
    assert!(started.elapsed() < Duration::from_secs(2));
    assert!(received.len() <= 64 * 1024);
    let error = error.expect("the reset is passed on as a reset");
    assert_eq!(error.kind(), std::io::ErrorKind::ConnectionReset, "{error}");
    router.stop().await;
}

#[tokio::test]
async fn an_idle_relay_is_closed_at_the_route_idle_timeout() {
    let backend = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let config = format!(
        "{}idle_timeout = \"400ms\"\n",
        route("a", &[OPENSSL_HELLO_SNI], &[backend.local_addr().unwrap()])
    );
    let router = TestRouter::start(&config).await;
    let mut client = TcpStream::connect(router.addr).await.unwrap();
    client.write_all(OPENSSL_HELLO).await.unwrap();
    let (mut server, _) = tokio::time::timeout(STEP, backend.accept()).await.unwrap().unwrap();
    let mut hello = vec![0; OPENSSL_HELLO.len()];
    server.read_exact(&mut hello).await.unwrap();
    // Traffic keeps it open past the timeout...
    for _ in 0..4 {
        tokio::time::sleep(Duration::from_millis(200)).await;
        server.write_all(b"tick").await.unwrap();
    }
    let mut ticks = [0; 16];
    client.read_exact(&mut ticks).await.unwrap();
    // ...silence closes it.
    let started = Instant::now();
    let (rest, _) = read_to_close(&mut client, Duration::from_secs(5)).await;
    assert!(rest.is_empty());
    assert!(
        started.elapsed() >= Duration::from_millis(300),
        "closed after {:?}",
        started.elapsed()
    );
    router.stop().await;
}

#[tokio::test]
async fn stopping_drains_open_connections() {
    let backend = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let router = TestRouter::start(&route("a", &[OPENSSL_HELLO_SNI], &[backend.local_addr().unwrap()])).await;
    let addr = router.addr;
    let mut client = TcpStream::connect(addr).await.unwrap();
    client.write_all(OPENSSL_HELLO).await.unwrap();
    let (mut server, _) = tokio::time::timeout(STEP, backend.accept()).await.unwrap().unwrap();
    let mut hello = vec![0; OPENSSL_HELLO.len()];
    server.read_exact(&mut hello).await.unwrap();

    router.shutdown.stop.cancel();
    // New connections are refused once the listener has closed...
    let deadline = Instant::now() + STEP;
    while TcpStream::connect(addr).await.is_ok() {
        assert!(Instant::now() < deadline, "still accepting");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // ...while the open one keeps working until it ends.
    server.write_all(b"still here").await.unwrap();
    let mut buf = [0; 10];
    client.read_exact(&mut buf).await.unwrap();
    assert_eq!(&buf, b"still here");
    drop(server);
    drop(client);
    router.stop().await;
}

#[tokio::test]
async fn ipv6_listener_and_endpoint() {
    let ca = Ca::new();
    let (certs, key) = ca.issue("v6.test");
    let config = rustls::ServerConfig::builder_with_provider(snigate_shared::tls::provider())
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .unwrap();
    let acceptor = tokio_rustls::TlsAcceptor::from(std::sync::Arc::new(config));
    let backend = TcpListener::bind("[::1]:0").await.unwrap();
    let backend_addr = backend.local_addr().unwrap();
    tokio::spawn(async move {
        let (stream, _) = backend.accept().await.unwrap();
        let mut tls = acceptor.accept(stream).await.unwrap();
        tls.write_all(b"v6\n").await.unwrap();
        tls.shutdown().await.unwrap();
    });
    let router = TestRouter::start_on(&route("v6", &["v6.test"], &[backend_addr]), "[::1]:0".parse().unwrap()).await;
    assert!(router.addr.is_ipv6());
    assert_eq!(backend_for(&ca, router.addr, "v6.test").await.unwrap(), "v6");
    router.stop().await;
}

#[tokio::test]
async fn a_name_endpoint_is_resolved_and_every_address_tried() {
    // `localhost` comes from /etc/hosts (hickory reads it, not glibc); the backend
    // listens on 127.0.0.1 only, so when the name also yields ::1, that address is
    // refused and the next one is tried.
    let ca = Ca::new();
    let backend = TlsBackend::start(&ca, "named.test", "named").await;
    let config = format!(
        "[[route]]\nname = \"named\"\nhosts = [\"named.test\"]\nendpoints = [\"localhost:{}\"]\n",
        backend.addr.port()
    );
    let router = TestRouter::start(&config).await;
    assert_eq!(backend_for(&ca, router.addr, "named.test").await.unwrap(), "named");

    // A name that does not resolve fails over to the next endpoint. (Asked of
    // a port on loopback where no name server listens: nothing leaves the
    // machine.)
    let config = format!(
        "[dns]\nservers = [\"127.0.0.1:9\"]\n[[route]]\nname = \"named\"\nhosts = [\"named.test\"]\nendpoints = [\"no-such-host.invalid:1\", \"{}\"]\nconnect_timeout = \"2s\"\n",
        backend.addr
    );
    let router2 = TestRouter::start(&config).await;
    assert_eq!(backend_for(&ca, router2.addr, "named.test").await.unwrap(), "named");
    router.stop().await;
    router2.stop().await;
}
