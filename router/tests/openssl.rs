//! The router with `openssl s_client` as the client: a real peer that users will
//! point at it first. Under CI=true a missing openssl fails; elsewhere it skips.
#![allow(clippy::unwrap_used)] // a test binary: unwrap is an assertion

mod support;

use std::process::Stdio;

use snigate_shared::testing::{TempDir, tool};
use support::*;
use tokio::process::Command;

fn openssl_available() -> bool {
    tool("openssl", "openssl").is_some()
}

async fn s_client(router: std::net::SocketAddr, args: &[impl AsRef<std::ffi::OsStr>]) -> String {
    let output = Command::new("openssl")
        .arg("s_client")
        .arg("-connect")
        .arg(router.to_string())
        .args(args)
        .stdin(Stdio::null())
        .output();
    let output = tokio::time::timeout(STEP, output).await.unwrap().unwrap();
    format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    )
}

#[tokio::test]
async fn s_client_reaches_the_backend_for_its_servername() {
    if !openssl_available() {
        return;
    }
    let ca = Ca::new();
    let dir = TempDir::new();
    let ca_file = ca.write_pem(&dir.0);
    let a = TlsBackend::start(&ca, "broker-a.apps.snigate.test", "a").await;
    let b = TlsBackend::start(&ca, "broker-b.apps.snigate.test", "b").await;
    let config = [
        route("a", &["broker-a.apps.snigate.test"], &[a.addr]),
        route("b", &["broker-b.apps.snigate.test"], &[b.addr]),
    ]
    .concat();
    let router = TestRouter::start(&config).await;
    let ca_arg = ca_file.to_str().unwrap();
    for (host, version) in [
        ("broker-a.apps.snigate.test", "-tls1_3"),
        ("broker-b.apps.snigate.test", "-tls1_3"),
        ("broker-a.apps.snigate.test", "-tls1_2"),
    ] {
        let out = s_client(
            router.addr,
            &[
                "-servername",
                host,
                "-verify_hostname",
                host,
                "-verify_return_error",
                "-CAfile",
                ca_arg,
                version,
            ],
        )
        .await;
        assert!(
            out.contains(&format!("subject=CN = {host}")),
            "{host} {version}:\n{out}"
        );
        assert!(out.contains("Verify return code: 0 (ok)"), "{host} {version}:\n{out}");
    }
    router.stop().await;
}

#[tokio::test]
async fn s_client_sees_unrecognized_name_for_an_unknown_host() {
    if !openssl_available() {
        return;
    }
    let ca = Ca::new();
    let a = TlsBackend::start(&ca, "a.test", "a").await;
    let router = TestRouter::start(&route("a", &["a.test"], &[a.addr])).await;
    let out = s_client(router.addr, &["-servername", "nobody.test"]).await;
    assert!(out.contains("unrecognized name"), "{out}");
    assert!(out.contains("alert number 112"), "{out}");
    router.stop().await;
}

/// ALPN-aware routing with the protocols openssl offers: the host decides,
/// then the first protocol the client prefers that a route of that host
/// lists, then the host's route without a list.
#[tokio::test]
async fn s_client_alpn_offers_pick_the_route_of_their_protocol() {
    if !openssl_available() {
        return;
    }
    let (mqtt, web, any) = (
        tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap(),
        tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap(),
        tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap(),
    );
    let endpoint = |l: &tokio::net::TcpListener| l.local_addr().unwrap();
    let config = format!(
        "[[route]]\nname = \"mqtt\"\nhosts = [\"alpn.test\"]\nalpn = [\"mqtt\"]\nendpoints = [\"{}\"]\n\
         [[route]]\nname = \"web\"\nhosts = [\"alpn.test\"]\nalpn = [\"h2\", \"http/1.1\"]\nendpoints = [\"{}\"]\n\
         [[route]]\nname = \"any\"\nhosts = [\"alpn.test\"]\nendpoints = [\"{}\"]\n\
         [[route]]\nname = \"only-mqtt\"\nhosts = [\"mqtt-only.test\"]\nalpn = [\"mqtt\"]\nendpoints = [\"{}\"]\n",
        endpoint(&mqtt),
        endpoint(&web),
        endpoint(&any),
        endpoint(&mqtt),
    );
    let router = TestRouter::start(&config).await;
    for (offer, expected) in [
        (Some("mqtt"), "mqtt"),
        (Some("http/1.1,h2"), "web"),
        (Some("imap,mqtt"), "mqtt"),
        (Some("imap"), "any"),
        (None, "any"),
    ] {
        let mut args = vec!["-servername", "alpn.test"];
        if let Some(offer) = offer {
            args.extend(["-alpn", offer]);
        }
        let args: Vec<String> = args.iter().map(|a| (*a).to_owned()).collect();
        let addr = router.addr;
        let client = tokio::spawn(async move { s_client(addr, &args).await });
        let reached = tokio::select! {
            Ok(_) = mqtt.accept() => "mqtt",
            Ok(_) = web.accept() => "web",
            Ok(_) = any.accept() => "any",
            () = tokio::time::sleep(STEP) => "none",
        };
        assert_eq!(reached, expected, "offer {offer:?}");
        // The backend is gone with its stream: s_client ends.
        let _ = client.await;
    }
    // A host whose only route wants mqtt: an h2 client is told so.
    let out = s_client(router.addr, &["-servername", "mqtt-only.test", "-alpn", "h2"]).await;
    assert!(out.contains("no application protocol"), "{out}");
    assert!(out.contains("alert number 120"), "{out}");
    assert_eq!(
        router
            .metric("snigate_router_routing_failures_total{reason=\"no_alpn\"}")
            .await,
        Some(1.0)
    );
    router.stop().await;
}
