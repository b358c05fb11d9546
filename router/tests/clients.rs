//! Allow and deny lists and per-client limits, over loopback: clients from
//! several addresses of 127.0.0.0/8, and, behind a PROXY protocol listener,
//! a flood from thousands of addresses the headers make up.
#![allow(clippy::unwrap_used)] // a test binary: unwrap is an assertion

mod support;

use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use support::*;
use tokio::io::AsyncWriteExt;
use tokio::net::{TcpListener, TcpSocket};

const SNI: &str = "clients.test";

fn from(last: u8) -> IpAddr {
    IpAddr::from([127, 0, 0, last])
}

async fn served(ca: &Ca, router: &TestRouter, client: u8) -> bool {
    connect_from(ca, router.addr, SNI, from(client)).await.is_ok()
}

fn route(backend: SocketAddr, extra: &str) -> String {
    format!("[[route]]\nname = \"c\"\nhosts = [\"{SNI}\"]\nendpoints = [\"{backend}\"]\n{extra}")
}

#[tokio::test]
async fn allow_and_deny_lists_globally_and_per_route() {
    let ca = Ca::new();
    let backend = TlsBackend::start(&ca, SNI, "b").await;
    let config = format!(
        "[clients]\nallow = [\"127.0.0.0/29\"]\ndeny = [\"127.0.0.3\"]\n{}",
        route(backend.addr, "allow = [\"127.0.0.2\", \"127.0.0.4/31\"]\n")
    );
    let router = TestRouter::start(&config).await;
    // Allowed everywhere.
    assert!(served(&ca, &router, 2).await);
    assert!(served(&ca, &router, 5).await);
    // Denied by [clients] (deny wins over allow; outside allow).
    assert!(!served(&ca, &router, 3).await);
    assert!(!served(&ca, &router, 9).await);
    // Allowed by [clients], not by the route.
    assert!(!served(&ca, &router, 6).await);
    let denied = |route: &str| format!("snigate_router_access_denials_total{{route=\"{route}\"}}");
    assert_eq!(router.metric(&denied("")).await, Some(2.0));
    assert_eq!(router.metric(&denied("c")).await, Some(1.0));
    router.stop().await;
}

#[tokio::test]
async fn each_client_has_its_own_connection_limit_and_rate() {
    let ca = Ca::new();
    let backend = TlsBackend::start(&ca, SNI, "b").await;
    let config = format!(
        "[clients]\nmax_connections = 2\n{}",
        route(backend.addr, "clients = { rate = 5, burst = 5 }\n")
    );
    let router = TestRouter::start(&config).await;
    let a = connect_from(&ca, router.addr, SNI, from(2)).await.unwrap();
    let b = connect_from(&ca, router.addr, SNI, from(2)).await.unwrap();
    assert!(!served(&ca, &router, 2).await, "a third at once from 127.0.0.2");
    assert!(served(&ca, &router, 3).await, "another client is not affected");
    drop(a);
    assert!(
        eventually(STEP, async || served(&ca, &router, 2).await).await,
        "a slot freed is a slot again"
    );
    drop(b);
    let limit = |limit: &str| {
        format!(
            "snigate_router_limit_refusals_total{{limit=\"{limit}\",route=\"{}\"}}",
            ""
        )
    };
    // One, and any tries before the router saw `a` close.
    assert!(router.metric(&limit("client_connections")).await.unwrap() >= 1.0);

    // The route's rate: 5 at once from 127.0.0.4, then about 5 a second.
    let mut ok = 0;
    for _ in 0..12 {
        if served(&ca, &router, 4).await {
            ok += 1;
        }
    }
    assert!((5..=8).contains(&ok), "{ok} of 12 served");
    assert!(served(&ca, &router, 5).await, "another client has its own bucket");
    let refused = router
        .metric("snigate_router_limit_refusals_total{limit=\"client_rate\",route=\"c\"}")
        .await
        .unwrap();
    assert!(refused >= 4.0, "{refused}");
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(served(&ca, &router, 4).await, "tokens come back");
    router.stop().await;
}

/// A flood from 3,000 client addresses, each under its own PROXY header:
/// every one is limited, the table stays at `max_tracked`, and the clients
/// beyond it go uncounted rather than refused.
#[tokio::test]
async fn a_flood_from_many_addresses_keeps_the_client_table_bounded() {
    let backend = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let config = format!(
        "listen = [{{ address = \"127.0.0.1:0\", proxy_protocol = true, trusted = [\"127.0.0.1\"] }}]\n\
         [clients]\nrate = 1\nmax_tracked = 500\nipv6_prefix = 64\n\
         [[route]]\nname = \"c\"\nhosts = [\"broker-a.apps.example.com\"]\nendpoints = [\"{}\"]\n",
        backend.local_addr().unwrap()
    );
    let router = TestRouter::start_with_listen(&config).await;
    // The backend takes and drops what reaches it.
    let sink = tokio::spawn(async move {
        while let Ok((stream, _)) = backend.accept().await {
            drop(stream);
        }
    });
    let hello = include_bytes!("../src/hello/testdata/openssl-tls13.bin");
    for i in 0..3000u32 {
        let client = SocketAddr::from(([0x2001, 0xdb8, (i >> 16) as u16, i as u16, 0, 0, 0, 1], 40000));
        let mut first = ppp::v2::Builder::with_addresses(
            ppp::v2::Version::Two | ppp::v2::Command::Proxy,
            ppp::v2::Protocol::Stream,
            (client, "[2001:db8::443]:443".parse::<SocketAddr>().unwrap()),
        )
        .build()
        .unwrap();
        first.extend_from_slice(hello);
        let socket = TcpSocket::new_v4().unwrap();
        let mut stream = socket.connect(router.addr).await.unwrap();
        let _ = stream.write_all(&first).await;
        drop(stream);
    }
    assert!(
        eventually(STEP, async || router.metric("snigate_router_connections_open").await
            == Some(0.0))
        .await
    );
    assert!(
        router
            .metric("snigate_router_clients_tracked{route=\"\"}")
            .await
            .unwrap()
            <= 500.0
    );
    let full = router
        .metric("snigate_router_client_table_full_total{route=\"\"}")
        .await
        .unwrap();
    // How many depends on how fast the flood came (a bucket refills in 1 s,
    // and then its client may be forgotten); some, on any machine.
    assert!(full >= 1.0, "{full} let through uncounted");
    sink.abort();
    router.stop().await;
}
