//! Balancing and passive health over loopback: real TLS backends behind the
//! router in-process, clients from several addresses of 127.0.0.0/8,
//! backends killed and revived on their port, a connect that never completes
//! (a listener whose accept queue is full drops the SYN), and a ConfigMap
//! symlink swap that changes a route's balancing while connections stay open.
#![allow(clippy::unwrap_used)] // a test binary: unwrap is an assertion

mod support;

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::time::{Duration, Instant};

use snigate_shared::testing::TempDir;
use support::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

const SNI: &str = "pool.test";

/// A route for [`SNI`] with `endpoints` (TOML array items) and `extra` keys.
fn pool_route(endpoints: &[String], extra: &str) -> String {
    format!(
        "[[route]]\nname = \"pool\"\nhosts = [\"{SNI}\"]\nendpoints = [{}]\n{extra}",
        endpoints.join(", ")
    )
}

fn plain(addr: SocketAddr) -> String {
    format!("\"{addr}\"")
}

fn weighted(addr: SocketAddr, weight: u32) -> String {
    format!("{{ address = \"{addr}\", weight = {weight} }}")
}

/// A port that was just free: connecting to it is refused.
async fn dead_port() -> SocketAddr {
    TcpListener::bind("127.0.0.1:0").await.unwrap().local_addr().unwrap()
}

/// A listening socket whose accept queue is full: the kernel drops further
/// SYNs, so a connect to it neither succeeds nor fails until it times out.
fn black_hole() -> (socket2::Socket, TcpStream, SocketAddr) {
    let socket = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
    socket.bind(&SocketAddr::from(([127, 0, 0, 1], 0)).into()).unwrap();
    socket.listen(0).unwrap();
    let addr = socket.local_addr().unwrap().as_socket().unwrap();
    let filler = std::net::TcpStream::connect(addr).unwrap();
    filler.set_nonblocking(true).unwrap();
    (socket, TcpStream::from_std(filler).unwrap(), addr)
}

/// Which backend each of `n` connections (each closed before the next) reached.
async fn spread(ca: &Ca, router: &TestRouter, n: usize) -> HashMap<String, usize> {
    let mut counts = HashMap::new();
    for _ in 0..n {
        let name = backend_for(ca, router.addr, SNI).await.unwrap();
        *counts.entry(name).or_default() += 1;
    }
    counts
}

fn counts(pairs: &[(&str, usize)]) -> HashMap<String, usize> {
    pairs.iter().map(|(k, v)| ((*k).to_owned(), *v)).collect()
}

async fn routes(router: &TestRouter) -> serde_json::Value {
    let (status, body) = http_get(router.admin, "/routes").await.unwrap();
    assert_eq!(status, 200);
    let json: serde_json::Value = serde_json::from_str(&body).unwrap();
    json["routes"][0].clone()
}

fn endpoint_sample(name: &str, endpoint: SocketAddr) -> String {
    format!("snigate_router_endpoint_{name}{{endpoint=\"{endpoint}\",route=\"pool\"}}")
}

#[tokio::test]
async fn round_robin_follows_the_weights() {
    let ca = Ca::new();
    let (a, b, c) = (
        TlsBackend::start(&ca, SNI, "a").await,
        TlsBackend::start(&ca, SNI, "b").await,
        TlsBackend::start(&ca, SNI, "c").await,
    );
    let endpoints = [weighted(a.addr, 2), plain(b.addr), plain(c.addr)];
    let router = TestRouter::start(&pool_route(&endpoints, "")).await;
    assert_eq!(
        spread(&ca, &router, 40).await,
        counts(&[("a", 20), ("b", 10), ("c", 10)])
    );
    assert_eq!(
        router.metric(&endpoint_sample("connections_total", a.addr)).await,
        Some(20.0)
    );
    router.stop().await;
}

#[tokio::test]
async fn least_connections_sends_new_connections_where_fewest_are_open() {
    let ca = Ca::new();
    let (a, b) = (
        TlsBackend::start(&ca, SNI, "a").await,
        TlsBackend::start(&ca, SNI, "b").await,
    );
    let endpoints = [plain(a.addr), plain(b.addr)];
    let router = TestRouter::start(&pool_route(&endpoints, "balance = \"least-connections\"\n")).await;
    let local = IpAddr::from([127, 0, 0, 1]);
    let mut open = Vec::new();
    for _ in 0..4 {
        open.push(connect_from(&ca, router.addr, SNI, local).await.unwrap());
    }
    let on = |open: &[(_, String)], name: &str| open.iter().filter(|(_, n)| n == name).count();
    assert_eq!((on(&open, "a"), on(&open, "b")), (2, 2));
    // Close the two on `a`: the next two go there.
    open.retain(|(_, name)| name != "a");
    assert!(
        eventually(STEP, async || router
            .metric(&endpoint_sample("connections_active", a.addr))
            .await
            == Some(0.0))
        .await
    );
    for _ in 0..2 {
        open.push(connect_from(&ca, router.addr, SNI, local).await.unwrap());
    }
    assert_eq!((on(&open, "a"), on(&open, "b")), (2, 2));
    assert_eq!(routes(&router).await["active"], 4);
    drop(open);
    router.stop().await;
}

#[tokio::test]
async fn random_spreads_by_weight() {
    let ca = Ca::new();
    let (a, b) = (
        TlsBackend::start(&ca, SNI, "a").await,
        TlsBackend::start(&ca, SNI, "b").await,
    );
    let endpoints = [weighted(a.addr, 3), plain(b.addr)];
    let router = TestRouter::start(&pool_route(&endpoints, "balance = \"random\"\n")).await;
    let spread = spread(&ca, &router, 200).await;
    // Three to one, give or take what 200 draws give: far from one to one.
    let (on_a, on_b) = (spread["a"], spread["b"]);
    assert!(on_a > 110 && on_b > 20, "{spread:?}");
    router.stop().await;
}

#[tokio::test]
async fn source_keeps_each_client_address_on_one_backend() {
    let ca = Ca::new();
    let backends = [
        TlsBackend::start(&ca, SNI, "a").await,
        TlsBackend::start(&ca, SNI, "b").await,
        TlsBackend::start(&ca, SNI, "c").await,
    ];
    let endpoints: Vec<String> = backends.iter().map(|b| plain(b.addr)).collect();
    let router = TestRouter::start(&pool_route(&endpoints, "balance = \"source\"\n")).await;
    let mut by_client = HashMap::new();
    for client in 2..=31u8 {
        let source = IpAddr::from([127, 0, 0, client]);
        let mut seen = Vec::new();
        for _ in 0..3 {
            seen.push(connect_from(&ca, router.addr, SNI, source).await.unwrap().1);
        }
        assert!(seen.iter().all(|s| *s == seen[0]), "{source}: {seen:?}");
        by_client.insert(client, seen[0].clone());
    }
    let used: std::collections::HashSet<&String> = by_client.values().collect();
    assert_eq!(used.len(), 3, "30 clients over 3 backends: {by_client:?}");
    router.stop().await;
}

#[tokio::test]
async fn a_dead_address_is_ejected_then_tried_again_when_revived() {
    let ca = Ca::new();
    let live = TlsBackend::start(&ca, SNI, "live").await;
    let dead = dead_port().await;
    let endpoints = [plain(dead), plain(live.addr)];
    let health = "health = { failures = 2, backoff = \"500ms\" }\n";
    let router = TestRouter::start(&pool_route(&endpoints, health)).await;
    // Every connection reaches `live`: an attempt on `dead` is retried there.
    assert_eq!(spread(&ca, &router, 10).await, counts(&[("live", 10)]));
    assert_eq!(
        router.metric(&endpoint_sample("ejections_total", dead)).await,
        Some(1.0)
    );
    assert_eq!(
        router.metric(&endpoint_sample("connect_failures_total", dead)).await,
        Some(2.0)
    );
    let route = routes(&router).await;
    let address = &route["endpoints"][0]["addresses"][0];
    assert_eq!(address["state"], "ejected", "{route}");
    assert!(address["ejected_for_ms"].as_u64().unwrap() <= 500);
    assert_eq!(route["healthy"], true);
    assert_eq!(
        router
            .metric(&format!(
                "snigate_router_endpoint_addresses{{endpoint=\"{dead}\",route=\"pool\",state=\"ejected\"}}"
            ))
            .await,
        Some(1.0)
    );

    // Revived on its port: once the back-off ends it gets its share again.
    let revived = TlsBackend::start_at(&ca, SNI, "revived", dead).await;
    tokio::time::sleep(Duration::from_millis(600)).await;
    let spread = spread(&ca, &router, 10).await;
    assert_eq!(spread, counts(&[("live", 5), ("revived", 5)]));
    assert_eq!(
        routes(&router).await["endpoints"][0]["addresses"][0]["state"],
        "healthy"
    );
    drop(revived);
    router.stop().await;
}

#[tokio::test]
async fn with_every_address_ejected_the_route_fails_open() {
    let ca = Ca::new();
    let dead = dead_port().await;
    let health = "health = { failures = 1, backoff = \"1h\", max_backoff = \"1h\" }\n";
    let router = TestRouter::start(&pool_route(&[plain(dead)], health)).await;
    assert!(backend_for(&ca, router.addr, SNI).await.is_err());
    assert_eq!(
        router.metric("snigate_router_route_healthy{route=\"pool\"}").await,
        Some(0.0)
    );
    assert_eq!(routes(&router).await["healthy"], false);
    // Back well before its hour of back-off: tried anyway, and healthy again.
    let revived = TlsBackend::start_at(&ca, SNI, "revived", dead).await;
    assert_eq!(backend_for(&ca, router.addr, SNI).await.unwrap(), "revived");
    assert_eq!(
        router
            .metric("snigate_router_route_fail_open_total{route=\"pool\"}")
            .await,
        Some(1.0)
    );
    assert_eq!(
        router.metric("snigate_router_route_healthy{route=\"pool\"}").await,
        Some(1.0)
    );
    drop(revived);
    router.stop().await;
}

#[tokio::test]
async fn retries_are_counted_and_the_deadline_caps_them_all() {
    let dead: Vec<SocketAddr> = [dead_port().await, dead_port().await, dead_port().await].into();
    let endpoints: Vec<String> = dead.iter().copied().map(plain).collect();
    let router = TestRouter::start(&pool_route(
        &endpoints,
        "connect_retries = 1\nhealth = { failures = 0 }\n",
    ))
    .await;
    let ca = Ca::new();
    assert!(backend_for(&ca, router.addr, SNI).await.is_err());
    let mut failures = 0.0;
    for addr in &dead {
        failures += router
            .metric(&endpoint_sample("connect_failures_total", *addr))
            .await
            .unwrap();
    }
    assert_eq!(failures, 2.0, "one attempt and one retry");
    router.stop().await;

    // Four attempts of 400 ms each would take 1.6 s; the deadline ends them at 1 s.
    let holes = [black_hole(), black_hole(), black_hole(), black_hole()];
    let endpoints: Vec<String> = holes.iter().map(|(_, _, addr)| plain(*addr)).collect();
    let router = TestRouter::start(&pool_route(
        &endpoints,
        "connect_timeout = \"400ms\"\nconnect_deadline = \"1s\"\n",
    ))
    .await;
    let started = Instant::now();
    assert!(backend_for(&ca, router.addr, SNI).await.is_err());
    let took = started.elapsed();
    assert!(
        took >= Duration::from_millis(900) && took < Duration::from_millis(1500),
        "closed after {took:?}"
    );
    assert_eq!(
        router
            .metric("snigate_router_routing_failures_total{reason=\"connect_deadline\"}")
            .await,
        Some(1.0)
    );
    drop(holes);
    router.stop().await;
}

/// A ConfigMap update that changes the route's balancing and weights keeps
/// the connections open, the ejected address ejected and the counters.
#[tokio::test]
async fn a_configmap_swap_keeps_health_counters_and_open_connections() {
    use std::os::unix::fs::symlink;
    let ca = Ca::new();
    let live = TlsBackend::start(&ca, SNI, "live").await;
    let dead = dead_port().await;
    let config = |extra: &str| {
        format!(
            "[reload]\ninterval = \"100ms\"\n{}",
            pool_route(
                &[plain(dead), plain(live.addr)],
                &format!("health = {{ failures = 1, backoff = \"1h\", max_backoff = \"1h\" }}\n{extra}")
            )
        )
    };
    let dir = TempDir::new();
    std::fs::create_dir(dir.path("..v1")).unwrap();
    std::fs::write(dir.path("..v1/router.toml"), config("")).unwrap();
    symlink("..v1", dir.path("..data")).unwrap();
    symlink("..data/router.toml", dir.path("router.toml")).unwrap();
    let router = TestRouter::start_file(&dir.path("router.toml")).await;
    let (mut open, name) = connect_from(&ca, router.addr, SNI, IpAddr::from([127, 0, 0, 1]))
        .await
        .unwrap();
    assert_eq!(name, "live");
    assert_eq!(routes(&router).await["endpoints"][0]["ejections"], 1);

    std::fs::create_dir(dir.path("..v2")).unwrap();
    std::fs::write(
        dir.path("..v2/router.toml"),
        config("balance = \"least-connections\"\n"),
    )
    .unwrap();
    symlink("..v2", dir.path("..data_tmp")).unwrap();
    std::fs::rename(dir.path("..data_tmp"), dir.path("..data")).unwrap();
    assert!(
        eventually(STEP, async || routes(&router).await["balance"] == "least-connections").await,
        "the swap was not picked up"
    );
    let route = routes(&router).await;
    assert_eq!(route["endpoints"][0]["addresses"][0]["state"], "ejected", "{route}");
    assert_eq!(route["endpoints"][0]["ejections"], 1);
    assert_eq!(route["endpoints"][1]["connections"], 1);
    assert_eq!(route["endpoints"][1]["active"], 1);
    // The connection opened before the swap still relays.
    open.write_all(b"still there").await.unwrap();
    let mut echo = [0; 11];
    open.read_exact(&mut echo).await.unwrap();
    assert_eq!(&echo, b"still there");
    drop(open);
    assert!(eventually(STEP, async || routes(&router).await["endpoints"][1]["active"] == 0).await);
    router.stop().await;
}
