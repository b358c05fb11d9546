//! The status pages of the router and a broker, as an operator sees them:
//! loaded in Debian's headless Chromium after traffic through the router, a
//! refused login and a refused reload, checked for their content, and
//! screenshotted under target/status-pages/ for people to look at
//! (docs/operations.md shows them).
//!
//! A client id and a refused reload's error both carry a `<script>` that
//! would retitle the page if it ran: the browser must show it as text.
//!
//! Its own test binary: the refused reload is set off by a SIGHUP to this
//! process, which every router and broker in it hears.
#![allow(clippy::unwrap_used)] // a test binary: unwrap is an assertion

use std::path::PathBuf;
use std::time::Duration;

use snigate_shared::testing::browser::Chromium;
use snigate_shared::testing::mqtt;
use snigate_shared::testing::{STEP, TempDir};
use snigate_testbed::{Testbed, Topology, http_get};
use tokio::net::TcpStream;

mod support;
use support::{login, through_router, tls_client, wrong_login};

const TOPOLOGY: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../config/testbed.toml");

/// Runs in the page if escaping failed: the title would change.
const SCRIPT: &str = "<script>document.title='pwned'</script>";

fn screenshots() -> PathBuf {
    PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/../target/status-pages"))
}

/// The body of `GET path`, which must answer 200.
async fn get(admin: std::net::SocketAddr, path: &str) -> String {
    let response = http_get(admin, path).await.unwrap();
    let (head, body) = response.split_once("\r\n\r\n").unwrap();
    assert!(
        head.starts_with("HTTP/1.1 200") || head.starts_with("HTTP/1.0 200"),
        "{path}: {head}"
    );
    body.to_owned()
}

async fn status(admin: std::net::SocketAddr) -> serde_json::Value {
    serde_json::from_str(&get(admin, "/status").await).unwrap()
}

/// The DOM of `url` and a screenshot of it as `name`.png, off the runtime
/// (the testbed serves the page from this process).
async fn load(chromium: &std::sync::Arc<Chromium>, url: String, name: &str) -> String {
    let chromium = chromium.clone();
    let shot = screenshots().join(format!("{name}.png"));
    tokio::task::spawn_blocking(move || {
        chromium.screenshot(&url, &shot, 1280, 1400);
        chromium.dom(&url)
    })
    .await
    .unwrap()
}

/// What a page whose text is `SCRIPT` must look like in the browser.
fn assert_escaped(dom: &str, title: &str) {
    assert!(
        dom.contains(&format!("<title>{title}</title>")),
        "the page's title is intact (no script ran)"
    );
    assert!(!dom.contains("<script"), "no script element in the DOM");
    assert!(
        dom.contains("&lt;script&gt;document.title='pwned'&lt;/script&gt;"),
        "the script is shown as text"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn status_pages_in_a_real_browser_after_traffic_and_a_refused_reload() {
    let Some(chromium) = Chromium::find() else {
        return;
    };
    let chromium = std::sync::Arc::new(chromium);
    let dir = TempDir::new();
    let topology = Topology::load(TOPOLOGY.as_ref()).unwrap().on_any_ports();
    let bed = Testbed::start(&topology, &dir.path("testbed")).await.unwrap();
    let (a, b) = (bed.broker("broker-a"), bed.broker("broker-b"));

    // Traffic: a subscriber with a hostile client id, a publisher, through
    // the router to broker-a.
    let login_a = login(a);
    let mut subscriber = through_router(&bed, &a.host, None).await;
    assert_eq!(mqtt::connect(&mut subscriber, SCRIPT, &login_a).await, 0);
    assert_eq!(mqtt::subscribe(&mut subscriber, "status/#", 1).await, 1);
    let mut publisher = through_router(&bed, &a.host, None).await;
    assert_eq!(mqtt::connect(&mut publisher, "publisher", &login_a).await, 0);
    mqtt::publish(&mut publisher, "status/x", b"hello", 1, true).await;
    assert!(mqtt::next_message(&mut subscriber).await.is_some());

    // Refusals: a wrong password at broker-b, a host no route has.
    let mut intruder = through_router(&bed, &b.host, None).await;
    let wrong = wrong_login("bob");
    assert_eq!(mqtt::connect(&mut intruder, "intruder", &wrong).await, 5);
    let tcp = TcpStream::connect(bed.router).await.unwrap();
    let name = tokio_rustls::rustls::pki_types::ServerName::try_from("nobody.apps.snigate.test").unwrap();
    let refused = tokio::time::timeout(STEP, tls_client(&bed).connect(name, tcp))
        .await
        .unwrap();
    assert!(refused.is_err(), "no route: the handshake fails");

    // A reload refused: a key no configuration has, which its error names.
    let config = bed.dir.join("router.toml");
    let good = std::fs::read_to_string(&config).unwrap();
    std::fs::write(&config, format!("\"{SCRIPT}\" = 1\n{good}")).unwrap();
    let hup = std::process::Command::new("kill")
        .args(["-HUP", &std::process::id().to_string()])
        .status()
        .unwrap();
    assert!(hup.success());
    let mut router = status(bed.router_admin).await;
    for _ in 0..100 {
        if router["reload"]["last"]["applied"] == false {
            break;
        }
        tokio::time::sleep(STEP / 100).await;
        router = status(bed.router_admin).await;
    }

    // The router's JSON: what the page shows.
    assert_eq!(router["reload"]["last"]["applied"], false, "{router:#}");
    let error = router["reload"]["last"]["error"].as_str().unwrap();
    assert!(error.contains(SCRIPT) && error.contains("router.toml"), "{error}");
    assert_eq!(router["routes"]["total"], 2);
    let routes = router["routes"]["rows"].as_array().unwrap();
    let route_a = routes.iter().find(|r| r["name"] == "broker-a").unwrap();
    assert_eq!(route_a["healthy"], true);
    assert_eq!(route_a["active"], 2, "the subscriber and the publisher");
    assert_eq!(router["endpoints"]["total"], 2);
    let recent = router["recent_refusals"].as_array().unwrap();
    assert!(
        recent
            .iter()
            .any(|r| r["reason"] == "unknown_sni" && r["subject"] == "nobody.apps.snigate.test"),
        "{recent:?}"
    );

    // The router's page in the browser.
    let dom = load(&chromium, format!("http://{}/", bed.router_admin), "router").await;
    assert_escaped(&dom, "snigate-router");
    for text in [
        "broker-a",
        a.host.as_str(),
        "broker-b",
        "healthy",
        "unknown_sni",
        "nobody.apps.snigate.test",
        "refused at",
        "the previous settings keep serving",
        "snigate_router_routing_failures_total",
        "All routes: 2.",
    ] {
        assert!(dom.contains(text), "the router's page shows {text:?}");
    }

    // broker-a's page: the sessions, the budget; broker-b's: the refusal.
    let broker = status(a.admin).await;
    let sessions = broker["sessions"]["rows"].as_array().unwrap();
    let hostile = sessions.iter().find(|s| s["client_id"] == SCRIPT).unwrap();
    assert_eq!(hostile["subscriptions"], 1);
    assert_eq!(hostile["connected"], true);
    assert_eq!(broker["retained_messages"], 1);
    let dom = load(&chromium, format!("http://{}/", a.admin), "broker").await;
    assert_escaped(&dom, "snigate-broker");
    for text in ["Memory budget", "connection buffers", "publisher", "alice", "connected"] {
        assert!(dom.contains(text), "broker-a's page shows {text:?}");
    }
    let broker_b = status(b.admin).await;
    let recent = broker_b["recent_refusals"].as_array().unwrap();
    assert!(
        recent
            .iter()
            .any(|r| r["reason"] == "bad_credentials" && r["subject"] == "intruder"),
        "{recent:?}"
    );
    let dom = load(&chromium, format!("http://{}/", b.admin), "broker-refused").await;
    assert!(dom.contains("intruder") && dom.contains("bad_credentials"));

    drop((subscriber, publisher, intruder));
    tokio::time::sleep(Duration::from_millis(50)).await;
    std::fs::write(&config, good).unwrap();
    bed.stop().await.unwrap();
}
