//! PROXY protocol in, over loopback: the router on a listener behind a "load
//! balancer" (this test, writing v1 and v2 headers with the `ppp` crate) that
//! names clients the router has never seen, with PROXY protocol out to a raw
//! backend that shows what the router passed on.
#![allow(clippy::unwrap_used)] // a test binary: unwrap is an assertion

mod support;

use std::net::SocketAddr;

use support::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpSocket, TcpStream};

const HELLO: &[u8] = include_bytes!("../src/hello/testdata/openssl-tls13.bin");
const HELLO_SNI: &str = "broker-a.apps.example.com";

fn config(trusted: &str, out: &str, backend: SocketAddr) -> String {
    format!(
        "listen = [{{ address = \"127.0.0.1:0\", proxy_protocol = true, trusted = [{trusted}] }}]\n\
         [[route]]\nname = \"a\"\nhosts = [\"{HELLO_SNI}\"]\nendpoints = [\"{backend}\"]\nproxy_protocol = \"{out}\"\n"
    )
}

fn v2_header(client: SocketAddr, to: SocketAddr) -> Vec<u8> {
    ppp::v2::Builder::with_addresses(
        ppp::v2::Version::Two | ppp::v2::Command::Proxy,
        ppp::v2::Protocol::Stream,
        (client, to),
    )
    .build()
    .unwrap()
}

fn v1_header(client: SocketAddr, to: SocketAddr) -> Vec<u8> {
    ppp::v1::Addresses::from((client, to)).to_string().into_bytes()
}

/// Connect from `source`, send `first` then the hello; what the backend
/// received before the hello, and the client stream.
async fn through(router: &TestRouter, backend: &TcpListener, source: &str, first: &[u8]) -> (Vec<u8>, TcpStream) {
    let socket = TcpSocket::new_v4().unwrap();
    socket.bind(format!("{source}:0").parse().unwrap()).unwrap();
    let mut client = socket.connect(router.addr).await.unwrap();
    client.write_all(first).await.unwrap();
    client.write_all(HELLO).await.unwrap();
    let (mut server, _) = tokio::time::timeout(STEP, backend.accept()).await.unwrap().unwrap();
    let mut received = Vec::new();
    while !received.ends_with(HELLO) {
        let mut buf = [0; 4096];
        let n = tokio::time::timeout(STEP, server.read(&mut buf))
            .await
            .unwrap()
            .unwrap();
        assert!(n > 0, "the backend got {received:x?}");
        received.extend_from_slice(&buf[..n]);
    }
    received.truncate(received.len() - HELLO.len());
    (received, client)
}

#[tokio::test]
async fn the_client_a_header_names_is_the_one_passed_on() {
    let backend = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let client: SocketAddr = "203.0.113.7:40000".parse().unwrap();
    let vip: SocketAddr = "198.51.100.1:443".parse().unwrap();
    // v2 in, v1 out.
    let router = TestRouter::start_with_listen(&config("\"127.0.0.0/8\"", "v1", backend.local_addr().unwrap())).await;
    let (out, _) = through(&router, &backend, "127.0.0.1", &v2_header(client, vip)).await;
    let local = router.addr;
    assert_eq!(
        String::from_utf8(out).unwrap(),
        format!("PROXY TCP4 203.0.113.7 {} 40000 {}\r\n", local.ip(), local.port())
    );
    router.stop().await;

    // v1 in, v2 out.
    let router = TestRouter::start_with_listen(&config("\"127.0.0.1\"", "v2", backend.local_addr().unwrap())).await;
    let (out, _) = through(&router, &backend, "127.0.0.1", &v1_header(client, vip)).await;
    let header = ppp::v2::Header::try_from(&out[..]).unwrap();
    match header.addresses {
        ppp::v2::Addresses::IPv4(a) => {
            assert_eq!(SocketAddr::from((a.source_address, a.source_port)), client);
        }
        other => panic!("{other:?}"),
    }
    // A load balancer's own check (LOCAL) keeps its address.
    let local_header = ppp::v2::Builder::new(
        ppp::v2::Version::Two | ppp::v2::Command::Local,
        ppp::v2::AddressFamily::Unspecified | ppp::v2::Protocol::Unspecified,
    )
    .build()
    .unwrap();
    let (out, _) = through(&router, &backend, "127.0.0.1", &local_header).await;
    let header = ppp::v2::Header::try_from(&out[..]).unwrap();
    match header.addresses {
        ppp::v2::Addresses::IPv4(a) => assert_eq!(a.source_address, std::net::Ipv4Addr::LOCALHOST),
        other => panic!("{other:?}"),
    }
    router.stop().await;
}

#[tokio::test]
async fn a_header_from_an_untrusted_peer_or_no_header_is_refused() {
    let backend = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let router = TestRouter::start_with_listen(&config("\"127.0.0.2\"", "v1", backend.local_addr().unwrap())).await;
    let client: SocketAddr = "203.0.113.7:40000".parse().unwrap();
    for (source, first) in [
        // Not a trusted load balancer, whatever it sends.
        ("127.0.0.1", v2_header(client, router.addr)),
        // Trusted, but the connection starts with the hello itself.
        ("127.0.0.2", Vec::new()),
        // Trusted, with a header that is not one.
        ("127.0.0.2", b"PROXY TCP4 nonsense\r\n".to_vec()),
    ] {
        let socket = TcpSocket::new_v4().unwrap();
        socket.bind(format!("{source}:0").parse().unwrap()).unwrap();
        let mut stream = socket.connect(router.addr).await.unwrap();
        stream.write_all(&first).await.unwrap();
        let _ = stream.write_all(HELLO).await;
        let (rest, _) = read_to_close(&mut stream, STEP).await;
        assert!(rest.is_empty());
    }
    assert!(
        tokio::time::timeout(std::time::Duration::from_millis(300), backend.accept())
            .await
            .is_err(),
        "nothing reached the backend"
    );
    let refused = |reason: &str| format!("snigate_router_routing_failures_total{{reason=\"{reason}\"}}");
    assert_eq!(router.metric(&refused("untrusted_proxy")).await, Some(1.0));
    assert_eq!(router.metric(&refused("bad_proxy_header")).await, Some(2.0));
    router.stop().await;
}
