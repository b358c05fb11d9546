//! Names kept current and active checks, over loopback: a DNS server the test
//! runs (`[dns] servers`) whose answers change while the router runs, backends
//! on several addresses of 127.0.0.0/8 sharing a port, as pods behind a
//! headless Service do, and backends killed and revived with no client
//! traffic at all.
#![allow(clippy::unwrap_used)] // a test binary: unwrap is an assertion

mod support;

use std::collections::HashMap;
use std::net::{Ipv4Addr, SocketAddr};
use std::time::Duration;

use support::dns::DnsServer;
use support::*;
use tokio::io::AsyncReadExt;
use tokio::net::TcpListener;

const SNI: &str = "pods.test";

async fn route_json(router: &TestRouter) -> serde_json::Value {
    let (_, body) = http_get(router.admin, "/routes").await.unwrap();
    let json: serde_json::Value = serde_json::from_str(&body).unwrap();
    json["routes"][0].clone()
}

fn addresses(route: &serde_json::Value, endpoint: usize) -> Vec<String> {
    let mut addresses: Vec<String> = route["endpoints"][endpoint]["addresses"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a["address"].as_str().unwrap().to_owned())
        .collect();
    addresses.sort();
    addresses
}

/// Two "pods" on 127.0.0.2 and 127.0.0.3, on one port.
async fn pods(ca: &Ca) -> (TlsBackend, TlsBackend, u16) {
    let a = TlsBackend::start_at(ca, SNI, "pod-a", "127.0.0.2:0".parse().unwrap()).await;
    let port = a.addr.port();
    let b = TlsBackend::start_at(ca, SNI, "pod-b", SocketAddr::from(([127, 0, 0, 3], port))).await;
    (a, b, port)
}

async fn spread(ca: &Ca, router: &TestRouter, n: usize) -> HashMap<String, usize> {
    let mut counts = HashMap::new();
    for _ in 0..n {
        let name = backend_for(ca, router.addr, SNI).await.unwrap();
        *counts.entry(name).or_default() += 1;
    }
    counts
}

#[tokio::test]
async fn a_name_endpoint_follows_its_answers_without_a_reload() {
    let ca = Ca::new();
    let dns = DnsServer::start().await;
    let (_a, _b, port) = pods(&ca).await;
    let pod_a = Ipv4Addr::new(127, 0, 0, 2);
    let pod_b = Ipv4Addr::new(127, 0, 0, 3);
    dns.set(SNI, &[pod_a], 1);
    let config = format!(
        "[dns]\nservers = [\"{}\"]\nmin_ttl = \"200ms\"\nmax_ttl = \"1s\"\n\
         [[route]]\nname = \"pods\"\nhosts = [\"{SNI}\"]\nendpoints = [\"{SNI}:{port}\"]\n",
        dns.addr
    );
    let router = TestRouter::start(&config).await;
    // Looked up in the background: the address is there before any client.
    assert!(
        eventually(STEP, async || addresses(&route_json(&router).await, 0)
            == [format!("127.0.0.2:{port}")])
        .await
    );
    assert_eq!(spread(&ca, &router, 4).await["pod-a"], 4);

    // A pod joins: followed within a TTL, no reload.
    dns.set(SNI, &[pod_a, pod_b], 1);
    assert!(
        eventually(STEP, async || addresses(&route_json(&router).await, 0).len() == 2).await,
        "the second pod was not picked up"
    );
    let both = spread(&ca, &router, 10).await;
    assert_eq!((both["pod-a"], both["pod-b"]), (5, 5), "{both:?}");

    // Connections do not wait for DNS: 20 of them within one TTL ask nothing.
    let before = dns.queries();
    spread(&ca, &router, 20).await;
    assert!(dns.queries() - before <= 4, "{} queries", dns.queries() - before);

    // A pod goes; the other keeps serving.
    dns.set(SNI, &[pod_b], 3600);
    assert!(
        eventually(STEP, async || addresses(&route_json(&router).await, 0)
            == [format!("127.0.0.3:{port}")])
        .await,
        "a TTL of an hour is held to max_ttl (1 s)"
    );
    assert_eq!(spread(&ca, &router, 4).await["pod-b"], 4);

    // The name goes: no address, the route refuses connections.
    dns.set(SNI, &[], 0);
    assert!(eventually(STEP, async || addresses(&route_json(&router).await, 0).is_empty()).await);
    assert!(backend_for(&ca, router.addr, SNI).await.is_err());
    assert_eq!(
        router
            .metric("snigate_router_routing_failures_total{reason=\"all_endpoints_down\"}")
            .await,
        Some(1.0)
    );

    // A TTL of 0 is looked up again no sooner than min_ttl (200 ms).
    dns.set(SNI, &[pod_a], 0);
    tokio::time::sleep(Duration::from_millis(500)).await;
    let before = dns.queries();
    tokio::time::sleep(Duration::from_secs(2)).await;
    let asked = dns.queries() - before;
    assert!((4..=16).contains(&asked), "{asked} queries in 2 s");
    router.stop().await;
}

#[tokio::test]
async fn a_name_that_stops_answering_keeps_its_last_addresses() {
    let ca = Ca::new();
    let dns = DnsServer::start().await;
    let (_a, _b, port) = pods(&ca).await;
    dns.set(SNI, &[Ipv4Addr::new(127, 0, 0, 2)], 1);
    let config = format!(
        "[dns]\nservers = [\"{}\"]\nmin_ttl = \"100ms\"\nmax_ttl = \"300ms\"\n\
         [[route]]\nname = \"pods\"\nhosts = [\"{SNI}\"]\nendpoints = [\"{SNI}:{port}\"]\nconnect_timeout = \"2s\"\n",
        dns.addr
    );
    let router = TestRouter::start(&config).await;
    assert_eq!(backend_for(&ca, router.addr, SNI).await.unwrap(), "pod-a");
    drop(dns);
    let sample = format!("snigate_router_endpoint_lookup_failures_total{{endpoint=\"{SNI}:{port}\",route=\"pods\"}}");
    assert!(
        eventually(STEP, async || router.metric(&sample).await.unwrap_or(0.0) >= 1.0).await,
        "no failed lookup counted"
    );
    assert_eq!(backend_for(&ca, router.addr, SNI).await.unwrap(), "pod-a");
    router.stop().await;
}

#[tokio::test]
async fn active_checks_eject_a_dead_backend_before_any_client_and_restore_it() {
    let ca = Ca::new();
    let live = TlsBackend::start(&ca, SNI, "live").await;
    let dead = TcpListener::bind("127.0.0.1:0").await.unwrap().local_addr().unwrap();
    let config = format!(
        "[[route]]\nname = \"pods\"\nhosts = [\"{SNI}\"]\nendpoints = [\"{dead}\", \"{}\"]\n\
         health = {{ failures = 2, check_interval = \"100ms\", backoff = \"1h\", max_backoff = \"1h\" }}\n",
        live.addr
    );
    let router = TestRouter::start(&config).await;
    assert!(
        eventually(STEP, async || route_json(&router).await["endpoints"][0]["addresses"][0]
            ["state"]
            == "ejected")
        .await,
        "the dead backend was not ejected by its checks"
    );
    let route = route_json(&router).await;
    assert_eq!(route["endpoints"][0]["connections"], 0, "no client was involved");
    assert!(route["endpoints"][0]["checks_failed"].as_u64().unwrap() >= 2);
    assert!(route["endpoints"][1]["checks_passed"].as_u64().unwrap() >= 1);
    assert_eq!(route["health"]["check_interval_ms"], 100);
    assert_eq!(route["health"]["check_timeout_ms"], 100);
    // Clients never try it.
    assert_eq!(spread(&ca, &router, 4).await["live"], 4);
    assert_eq!(route_json(&router).await["endpoints"][0]["connect_failures"], 0);

    // Revived: its next check restores it, an hour before its back-off ends.
    let revived = TlsBackend::start_at(&ca, SNI, "revived", dead).await;
    assert!(
        eventually(STEP, async || route_json(&router).await["endpoints"][0]["addresses"][0]
            ["state"]
            == "healthy")
        .await,
        "the revived backend was not restored by its check"
    );
    let spread = spread(&ca, &router, 4).await;
    assert_eq!((spread["live"], spread["revived"]), (2, 2), "{spread:?}");
    let passed =
        format!("snigate_router_endpoint_checks_total{{endpoint=\"{dead}\",result=\"passed\",route=\"pods\"}}");
    assert!(router.metric(&passed).await.unwrap() >= 1.0);
    drop(revived);
    router.stop().await;
}

/// To a backend that expects PROXY protocol, a check says it carries no
/// client before it closes.
#[tokio::test]
async fn a_check_of_a_proxy_protocol_backend_sends_a_header_without_a_client() {
    for (version, expected) in [
        ("v2", b"\r\n\r\n\0\r\nQUIT\n\x20\x00\x00\x00".to_vec()),
        ("v1", b"PROXY UNKNOWN\r\n".to_vec()),
    ] {
        let backend = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let config = format!(
            "[[route]]\nname = \"pods\"\nhosts = [\"{SNI}\"]\nendpoints = [\"{}\"]\nproxy_protocol = \"{version}\"\n\
             health = {{ check_interval = \"1h\" }}\n",
            backend.local_addr().unwrap()
        );
        let router = TestRouter::start(&config).await;
        let (mut check, _) = tokio::time::timeout(STEP, backend.accept()).await.unwrap().unwrap();
        let mut received = Vec::new();
        tokio::time::timeout(STEP, check.read_to_end(&mut received))
            .await
            .unwrap()
            .unwrap();
        assert_eq!(received, expected, "{version}");
        if version == "v2" {
            let header = ppp::v2::Header::try_from(&received[..]).unwrap();
            assert_eq!(header.command, ppp::v2::Command::Local);
        }
        router.stop().await;
    }
}

/// With no name endpoint the lookup task sleeps (an idle router does not
/// wake for nothing); a reload that adds one wakes it.
#[tokio::test]
async fn a_reload_that_adds_a_name_wakes_the_lookups() {
    let ca = Ca::new();
    let dns = DnsServer::start().await;
    let (_a, _b, port) = pods(&ca).await;
    dns.set(SNI, &[Ipv4Addr::new(127, 0, 0, 2)], 1);
    let dir = snigate_shared::testing::TempDir::new();
    let path = dir.path("router.toml");
    let head = format!("[reload]\ninterval = \"100ms\"\n[dns]\nservers = [\"{}\"]\n", dns.addr);
    std::fs::write(
        &path,
        format!("{head}[[route]]\nname = \"pods\"\nhosts = [\"{SNI}\"]\nendpoints = [\"127.0.0.2:{port}\"]\n"),
    )
    .unwrap();
    let router = TestRouter::start_file(&path).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(dns.queries(), 0);
    std::fs::write(
        &path,
        format!("{head}[[route]]\nname = \"pods\"\nhosts = [\"{SNI}\"]\nendpoints = [\"{SNI}:{port}\"]\n"),
    )
    .unwrap();
    assert!(
        eventually(STEP, async || {
            let route = route_json(&router).await;
            route["endpoints"][0]["endpoint"] == format!("{SNI}:{port}").as_str()
                && addresses(&route, 0) == [format!("127.0.0.2:{port}")]
        })
        .await,
        "the name added by the reload was not looked up"
    );
    assert!(dns.queries() >= 1);
    router.stop().await;
}
