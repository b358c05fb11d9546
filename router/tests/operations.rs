//! Router operations, in-process over loopback: metrics (checked by promtool),
//! readiness during a drain, `/routes`, live reload by file watch (including a
//! Kubernetes ConfigMap symlink swap), connection limits, PROXY protocol out.
#![allow(clippy::unwrap_used)] // a test binary: unwrap is an assertion

mod support;

use std::time::{Duration, Instant};

use snigate_shared::testing::{TempDir, check_metrics_with_promtool};
use support::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

const HELLO: &[u8] = include_bytes!("../src/hello/testdata/openssl-tls13.bin");
const HELLO_SNI: &str = "broker-a.apps.example.com";

/// Send the recorded hello and wait for the backend to receive it.
async fn relayed(router: &TestRouter, backend: &TcpListener) -> (TcpStream, TcpStream) {
    let mut client = TcpStream::connect(router.addr).await.unwrap();
    client.write_all(HELLO).await.unwrap();
    let (mut server, _) = tokio::time::timeout(STEP, backend.accept()).await.unwrap().unwrap();
    let mut hello = vec![0; HELLO.len()];
    server.read_exact(&mut hello).await.unwrap();
    (client, server)
}

#[tokio::test]
async fn metrics_count_the_traffic_and_pass_promtool() {
    let backend = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let router = TestRouter::start(&route("a", &[HELLO_SNI], &[backend.local_addr().unwrap()])).await;

    let (mut client, mut server) = relayed(&router, &backend).await;
    server.write_all(b"0123456789").await.unwrap();
    let mut ten = [0; 10];
    client.read_exact(&mut ten).await.unwrap();
    drop((client, server));
    // An unknown name and a plaintext client.
    let ca = Ca::new();
    assert!(backend_for(&ca, router.addr, "nobody.test").await.is_err());
    let mut plain = TcpStream::connect(router.addr).await.unwrap();
    plain.write_all(b"GET / HTTP/1.0\r\n\r\n").await.unwrap();
    let _ = read_to_close(&mut plain, STEP).await;

    let closed = r#"snigate_router_connections_closed_total{outcome="closed",route="a"}"#;
    assert!(eventually(STEP, async || router.metric(closed).await == Some(1.0)).await);
    assert_eq!(
        router.metric("snigate_router_connections_accepted_total").await,
        Some(3.0)
    );
    assert_eq!(
        router
            .metric(r#"snigate_router_bytes_total{direction="in",route="a"}"#)
            .await,
        Some(HELLO.len() as f64)
    );
    assert_eq!(
        router
            .metric(r#"snigate_router_bytes_total{direction="out",route="a"}"#)
            .await,
        Some(10.0)
    );
    assert_eq!(
        router
            .metric(r#"snigate_router_routing_failures_total{reason="unknown_sni"}"#)
            .await,
        Some(1.0)
    );
    assert_eq!(
        router
            .metric(r#"snigate_router_routing_failures_total{reason="not_tls"}"#)
            .await,
        Some(1.0)
    );
    assert_eq!(
        router.metric("snigate_router_hello_duration_seconds_count").await,
        Some(2.0)
    );
    assert_eq!(
        router
            .metric(r#"snigate_router_backend_connect_duration_seconds_count{route="a"}"#)
            .await,
        Some(1.0)
    );
    assert_eq!(
        router.metric(r#"snigate_router_connections_active{route="a"}"#).await,
        Some(0.0)
    );
    assert_eq!(router.metric("snigate_router_connections_open").await, Some(0.0));
    assert_eq!(
        router.metric(r#"snigate_router_build_info{version="0.1.0"}"#).await,
        Some(1.0)
    );
    // The client's SNI never becomes a label.
    let (_, body) = http_get(router.admin, "/metrics").await.unwrap();
    assert!(
        !body.contains("nobody.test"),
        "a client-chosen name appeared in the metrics"
    );

    check_metrics_with_promtool(&body);
    router.stop().await;
}

#[tokio::test]
async fn readyz_turns_not_ready_while_draining() {
    let backend = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let router = TestRouter::start(&route("a", &[HELLO_SNI], &[backend.local_addr().unwrap()])).await;
    assert_eq!(http_get(router.admin, "/healthz").await.unwrap().0, 200);
    assert_eq!(http_get(router.admin, "/readyz").await.unwrap().0, 200);
    let (mut client, mut server) = relayed(&router, &backend).await;

    router.shutdown.stop.cancel();
    assert!(
        eventually(STEP, async || http_get(router.admin, "/readyz").await.map(|r| r.0)
            == Some(503))
        .await
    );
    // Still draining: the open connection works, and the process is alive.
    assert_eq!(http_get(router.admin, "/healthz").await.unwrap().0, 200);
    server.write_all(b"still").await.unwrap();
    let mut buf = [0; 5];
    client.read_exact(&mut buf).await.unwrap();
    drop((client, server));
    router.stop().await;
}

#[tokio::test]
async fn routes_lists_the_live_table() {
    // No name server listens on 127.0.0.1:9: `b.internal` stays unresolved,
    // and nothing leaves the machine.
    let config = "[dns]\nservers = [\"127.0.0.1:9\"]\n[[route]]\nname = \"a\"\nhosts = [\"a.test\", \"*.apps.test\"]\nendpoints = [\"127.0.0.1:1\", \"b.internal:8883\"]\nmax_connections = 5\nproxy_protocol = \"v2\"\n\
                  [[route]]\nname = \"d\"\ndefault = true\nendpoints = [\"127.0.0.1:2\"]\n";
    let router = TestRouter::start(config).await;
    let (status, body) = http_get(router.admin, "/routes").await.unwrap();
    assert_eq!(status, 200);
    let json: serde_json::Value = serde_json::from_str(&body).unwrap();
    let routes = json["routes"].as_array().unwrap();
    assert_eq!(routes.len(), 2);
    assert_eq!(routes[0]["name"], "a");
    assert_eq!(routes[0]["hosts"], serde_json::json!(["a.test", "*.apps.test"]));
    let endpoints: Vec<&str> = routes[0]["endpoints"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["endpoint"].as_str().unwrap())
        .collect();
    assert_eq!(endpoints, ["127.0.0.1:1", "b.internal:8883"]);
    assert_eq!(routes[0]["balance"], "round-robin");
    assert_eq!(routes[0]["endpoints"][0]["weight"], 1);
    assert_eq!(
        routes[0]["endpoints"][0]["addresses"],
        serde_json::json!([{"address": "127.0.0.1:1", "state": "healthy", "active": 0, "failures": 0, "ejected_for_ms": null}])
    );
    // A name with no answer has no address.
    assert_eq!(routes[0]["endpoints"][1]["addresses"], serde_json::json!([]));
    assert_eq!(routes[0]["connect_deadline_ms"], 10_000);
    assert_eq!(routes[0]["connect_retries"], 3);
    assert_eq!(routes[0]["health"]["failures"], 3);
    assert_eq!(routes[0]["healthy"], true);
    assert_eq!(routes[0]["max_connections"], 5);
    assert_eq!(routes[0]["proxy_protocol"], "v2");
    assert_eq!(routes[1]["default"], true);
    assert_eq!(http_get(router.admin, "/nope").await.unwrap().0, 404);
    router.stop().await;
}

#[tokio::test]
async fn the_status_page_shows_the_busiest_hundred_routes_with_their_total() {
    let backend = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let at = backend.local_addr().unwrap();
    let routes: String = (0..150)
        .map(|i| {
            let host = if i == 120 {
                HELLO_SNI.to_owned()
            } else {
                format!("h{i}.test")
            };
            route(&format!("r{i:03}"), &[&host], &[at])
        })
        .collect();
    let router = TestRouter::start(&routes).await;
    // One connection held on r120: the busiest route, listed first.
    let held = relayed(&router, &backend).await;
    assert!(
        eventually(STEP, async || router
            .metric("snigate_router_connections_active{route=\"r120\"}")
            .await
            == Some(1.0))
        .await
    );

    let (status, body) = http_get(router.admin, "/status").await.unwrap();
    assert_eq!(status, 200);
    let json: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(json["routes"]["total"], 150);
    assert_eq!(json["routes"]["rows"].as_array().unwrap().len(), 100);
    assert_eq!(json["routes"]["rows"][0]["name"], "r120");
    assert_eq!(json["routes"]["rows"][0]["active"], 1);
    assert_eq!(json["endpoints"]["total"], 150);
    assert_eq!(json["endpoints"]["rows"].as_array().unwrap().len(), 100);
    assert_eq!(
        json["listen"][0],
        router.addr.to_string(),
        "the bound address, not port 0"
    );

    let response = get_with_head(router.admin, "/").await;
    let (head, page) = response.split_once("\r\n\r\n").unwrap();
    let head = head.to_ascii_lowercase();
    assert!(head.contains("content-type: text/html; charset=utf-8"), "{head}");
    assert!(head.contains("content-security-policy: default-src 'none'"), "{head}");
    assert!(head.contains("cache-control: no-store"), "{head}");
    assert!(page.contains("The busiest 100 of 150 routes."), "{page}");
    assert!(page.contains("The busiest 100 of 150 endpoints."));
    assert_eq!(
        page.matches("<tr>").count(),
        1 + 100 + 1 + 100,
        "a header and 100 rows in each table"
    );
    drop(held);
    router.stop().await;
}

/// The whole response, head included.
async fn get_with_head(addr: std::net::SocketAddr, path: &str) -> String {
    let mut stream = TcpStream::connect(addr).await.unwrap();
    stream
        .write_all(format!("GET {path} HTTP/1.0\r\nHost: t\r\n\r\n").as_bytes())
        .await
        .unwrap();
    let mut response = String::new();
    stream.read_to_string(&mut response).await.unwrap();
    response
}

fn file_config(reload_interval: &str, routes: &str) -> String {
    format!("[reload]\ninterval = \"{reload_interval}\"\n{routes}")
}

#[tokio::test]
async fn a_reload_adds_and_removes_routes_while_a_connection_stays_open() {
    let ca = Ca::new();
    let old = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let new = TlsBackend::start(&ca, "new.test", "new").await;
    let dir = TempDir::new();
    let path = dir.path("router.toml");
    std::fs::write(
        &path,
        file_config("100ms", &route("old", &[HELLO_SNI], &[old.local_addr().unwrap()])),
    )
    .unwrap();
    let router = TestRouter::start_file(&path).await;
    let (mut client, mut server) = relayed(&router, &old).await;
    assert!(backend_for(&ca, router.addr, "new.test").await.is_err());

    // Replace the file: the old route goes, a new one comes.
    std::fs::write(&path, file_config("100ms", &route("new", &["new.test"], &[new.addr]))).unwrap();
    assert!(eventually(STEP, async || backend_for(&ca, router.addr, "new.test").await.is_ok()).await);
    assert_eq!(
        router.metric(r#"snigate_router_reloads_total{result="success"}"#).await,
        Some(1.0)
    );
    let mut refused = TcpStream::connect(router.addr).await.unwrap();
    refused.write_all(HELLO).await.unwrap();
    let (alert, _) = read_to_close(&mut refused, STEP).await;
    assert_eq!(
        alert,
        [21, 3, 1, 0, 2, 2, 112],
        "the removed route is gone for new clients"
    );

    // The connection made on the old route is untouched.
    server.write_all(b"old route, still open").await.unwrap();
    let mut buf = [0; 21];
    client.read_exact(&mut buf).await.unwrap();
    client.write_all(b"ping").await.unwrap();
    let mut ping = [0; 4];
    server.read_exact(&mut ping).await.unwrap();
    drop((client, server));
    router.stop().await;
}

#[tokio::test]
async fn an_invalid_reload_is_refused_and_the_old_config_keeps_serving() {
    let ca = Ca::new();
    let backend = TlsBackend::start(&ca, "a.test", "a").await;
    let dir = TempDir::new();
    let path = dir.path("router.toml");
    std::fs::write(&path, file_config("100ms", &route("a", &["a.test"], &[backend.addr]))).unwrap();
    let router = TestRouter::start_file(&path).await;

    std::fs::write(
        &path,
        file_config(
            "100ms",
            "[[route]]\nname = \"a\"\nhosts = [\"a..test\"]\nendpoints = [\"x\"]\n",
        ),
    )
    .unwrap();
    let failure = r#"snigate_router_reloads_total{result="failure"}"#;
    assert!(eventually(STEP, async || router.metric(failure).await == Some(1.0)).await);
    assert_eq!(backend_for(&ca, router.addr, "a.test").await.unwrap(), "a");
    // Not retried while the file stays the same.
    tokio::time::sleep(Duration::from_millis(400)).await;
    assert_eq!(router.metric(failure).await, Some(1.0));
    router.stop().await;
}

/// Kubernetes mounts a ConfigMap as `<key> -> ..data/<key>` and `..data ->
/// ..<timestamp>/`, and updates it by writing a new timestamped directory and
/// renaming a new `..data` symlink over the old one.
#[tokio::test]
async fn a_configmap_symlink_swap_is_picked_up_without_a_signal() {
    use std::os::unix::fs::symlink;
    let ca = Ca::new();
    let first = TlsBackend::start(&ca, "svc.test", "first").await;
    let second = TlsBackend::start(&ca, "svc.test", "second").await;
    let dir = TempDir::new();
    std::fs::create_dir(dir.path("..2026_11_25_01")).unwrap();
    std::fs::write(
        dir.path("..2026_11_25_01/router.toml"),
        file_config("100ms", &route("svc", &["svc.test"], &[first.addr])),
    )
    .unwrap();
    symlink("..2026_11_25_01", dir.path("..data")).unwrap();
    symlink("..data/router.toml", dir.path("router.toml")).unwrap();
    let router = TestRouter::start_file(&dir.path("router.toml")).await;
    assert_eq!(backend_for(&ca, router.addr, "svc.test").await.unwrap(), "first");

    std::fs::create_dir(dir.path("..2026_11_25_02")).unwrap();
    std::fs::write(
        dir.path("..2026_11_25_02/router.toml"),
        file_config("100ms", &route("svc", &["svc.test"], &[second.addr])),
    )
    .unwrap();
    symlink("..2026_11_25_02", dir.path("..data_tmp")).unwrap();
    std::fs::rename(dir.path("..data_tmp"), dir.path("..data")).unwrap();
    std::fs::remove_dir_all(dir.path("..2026_11_25_01")).unwrap();

    assert!(
        eventually(STEP, async || backend_for(&ca, router.addr, "svc.test")
            .await
            .ok()
            .as_deref()
            == Some("second"))
        .await,
        "the swapped ConfigMap was not picked up"
    );
    router.stop().await;
}

#[tokio::test]
async fn routes_dir_files_are_loaded_and_watched() {
    let ca = Ca::new();
    let a = TlsBackend::start(&ca, "a.test", "a").await;
    let b = TlsBackend::start(&ca, "b.test", "b").await;
    let dir = TempDir::new();
    std::fs::create_dir(dir.path("routes.d")).unwrap();
    std::fs::write(
        dir.path("router.toml"),
        "routes_dir = \"routes.d\"\n[reload]\ninterval = \"100ms\"\n",
    )
    .unwrap();
    std::fs::write(dir.path("routes.d/a.toml"), route("a", &["a.test"], &[a.addr])).unwrap();
    std::fs::write(dir.path("routes.d/.hidden.toml"), "not toml at all").unwrap();
    let router = TestRouter::start_file(&dir.path("router.toml")).await;
    assert_eq!(backend_for(&ca, router.addr, "a.test").await.unwrap(), "a");

    std::fs::write(dir.path("routes.d/b.toml"), route("b", &["b.test"], &[b.addr])).unwrap();
    assert!(eventually(STEP, async || backend_for(&ca, router.addr, "b.test").await.is_ok()).await);
    router.stop().await;
}

#[tokio::test]
async fn the_global_limit_closes_new_connections_at_once() {
    let backend = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let config = format!(
        "max_connections = 2\n{}",
        route("a", &[HELLO_SNI], &[backend.local_addr().unwrap()])
    );
    let router = TestRouter::start(&config).await;
    let (mut c1, mut s1) = relayed(&router, &backend).await;
    let (_c2, _s2) = relayed(&router, &backend).await;

    let mut third = TcpStream::connect(router.addr).await.unwrap();
    let started = Instant::now();
    let (reply, _) = read_to_close(&mut third, STEP).await;
    assert!(reply.is_empty());
    assert!(
        started.elapsed() < Duration::from_secs(1),
        "refused before any hello was read"
    );
    assert_eq!(router.metric("snigate_router_connections_limit").await, Some(2.0));
    let refusals = r#"snigate_router_limit_refusals_total{limit="global",route=""}"#;
    assert!(eventually(STEP, async || router.metric(refusals).await == Some(1.0)).await);
    // The established ones are unharmed.
    s1.write_all(b"ok").await.unwrap();
    let mut ok = [0; 2];
    c1.read_exact(&mut ok).await.unwrap();
    drop((c1, s1, _c2, _s2));
    router.stop().await;
}

#[tokio::test]
async fn a_route_limit_refuses_beyond_it() {
    let ca = Ca::new();
    let limited = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let other = TlsBackend::start(&ca, "other.test", "other").await;
    let config = format!(
        "{}max_connections = 1\n{}",
        route("limited", &[HELLO_SNI], &[limited.local_addr().unwrap()]),
        route("other", &["other.test"], &[other.addr])
    );
    let router = TestRouter::start(&config).await;
    let (_c1, _s1) = relayed(&router, &limited).await;
    let mut second = TcpStream::connect(router.addr).await.unwrap();
    second.write_all(HELLO).await.unwrap();
    let (reply, _) = read_to_close(&mut second, STEP).await;
    assert!(reply.is_empty());
    let refusals = r#"snigate_router_limit_refusals_total{limit="route",route="limited"}"#;
    assert!(eventually(STEP, async || router.metric(refusals).await == Some(1.0)).await);
    // Other routes are not affected.
    assert_eq!(backend_for(&ca, router.addr, "other.test").await.unwrap(), "other");
    drop((_c1, _s1));
    router.stop().await;
}

/// On a wildcard listener, the header names the address the client dialled.
#[tokio::test]
async fn proxy_protocol_names_the_dialled_address_on_a_wildcard_listener() {
    let backend = TcpListener::bind("[::1]:0").await.unwrap();
    let config = format!(
        "{}proxy_protocol = \"v2\"\n",
        route("pp", &[HELLO_SNI], &[backend.local_addr().unwrap()])
    );
    let router = TestRouter::start_on(&config, "[::]:0".parse().unwrap()).await;
    let dialled: std::net::SocketAddr = format!("[::1]:{}", router.addr.port()).parse().unwrap();
    let mut client = TcpStream::connect(dialled).await.unwrap();
    let client_addr = client.local_addr().unwrap();
    client.write_all(HELLO).await.unwrap();
    let (mut server, _) = tokio::time::timeout(STEP, backend.accept()).await.unwrap().unwrap();
    let mut header = vec![0; 16];
    server.read_exact(&mut header).await.unwrap();
    let len = usize::from(u16::from_be_bytes([header[14], header[15]]));
    header.resize(16 + len, 0);
    server.read_exact(&mut header[16..]).await.unwrap();
    let parsed = ppp::v2::Header::try_from(header.as_slice()).unwrap();
    assert_eq!(parsed.addresses, ppp::v2::Addresses::from((client_addr, dialled)));
    drop((client, server));
    router.stop().await;
}

#[tokio::test]
async fn proxy_protocol_v1_and_v2_carry_the_client_address_and_sni() {
    for version in ["v1", "v2"] {
        let backend = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let config = format!(
            "{}proxy_protocol = \"{version}\"\n",
            route("pp", &[HELLO_SNI], &[backend.local_addr().unwrap()])
        );
        let router = TestRouter::start(&config).await;
        let mut client = TcpStream::connect(router.addr).await.unwrap();
        let client_addr = client.local_addr().unwrap();
        client.write_all(HELLO).await.unwrap();
        let (mut server, _) = tokio::time::timeout(STEP, backend.accept()).await.unwrap().unwrap();
        let mut received = Vec::new();
        while !received.ends_with(HELLO) {
            let mut chunk = [0; 4096];
            let n = tokio::time::timeout(STEP, server.read(&mut chunk))
                .await
                .unwrap()
                .unwrap();
            assert!(n > 0, "backend saw end of stream");
            received.extend_from_slice(&chunk[..n]);
        }
        let header = &received[..received.len() - HELLO.len()];
        let expected = (client_addr, router.addr);
        if version == "v1" {
            let parsed = ppp::v1::Header::try_from(std::str::from_utf8(header).unwrap()).unwrap();
            assert_eq!(parsed.addresses, ppp::v1::Addresses::from(expected));
        } else {
            let parsed = ppp::v2::Header::try_from(header).unwrap();
            assert_eq!(parsed.addresses, ppp::v2::Addresses::from(expected));
            let authority: Vec<_> = parsed
                .tlvs()
                .filter_map(Result::ok)
                .filter(|t| t.kind == 0x02)
                .collect();
            assert_eq!(authority.len(), 1);
            assert_eq!(&*authority[0].value, b"broker-a.apps.example.com");
        }
        drop((client, server));
        router.stop().await;
    }
}
