//! The dashboards and alert rules in deploy/, against a real Prometheus:
//! Debian's `prometheus` server, started here, scrapes the testbed's router
//! and brokers on loopback while traffic flows and faults are made.
//!
//! - Every Grafana panel's queries are evaluated (`/api/v1/query`, the
//!   dashboard's variables at "All") and each panel must return series: a
//!   panel that can never show data fails.
//! - Every metric an alert reads exists, every rule evaluates without error,
//!   and the faults this test can cause fire their alerts: a route's only
//!   endpoint dead, a reload refused, refusals at a route's limit, a flood at
//!   a subscriber that never reads, a scrape target gone. The others must stay
//!   quiet. The rules are loaded with each `for` set to 0 s (the test cannot
//!   wait minutes); `promtool test rules` covers the `for`s.
//!
//! Its own test binary: reloads are set off by a SIGHUP to this process.
#![allow(clippy::unwrap_used)] // a test binary: unwrap is an assertion

use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;
use snigate_shared::testing::mqtt;
use snigate_shared::testing::{STEP, TempDir, tool};
use snigate_testbed::{Testbed, Topology, http_get};
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;

mod support;
use support::{login, through_router, tls_client, wrong_login};

const ROOT: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/..");
const TOPOLOGY: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../config/testbed.toml");
/// How long Prometheus gets to see what the test did.
const WITHIN: Duration = Duration::from_secs(30);

/// A Prometheus server of the test's own, stopped (by its PID) on drop.
struct Prometheus {
    child: Child,
    addr: SocketAddr,
}

impl Prometheus {
    fn start(program: &Path, dir: &Path, jobs: &[(&str, Vec<SocketAddr>)], rules: &Path) -> Self {
        let mut config = format!(
            "global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\nrule_files:\n  - {}\nscrape_configs:\n",
            rules.display()
        );
        for (job, targets) in jobs {
            let targets: Vec<String> = targets.iter().map(|t| format!("\"{t}\"")).collect();
            config.push_str(&format!(
                "  - job_name: {job}\n    static_configs:\n      - targets: [{}]\n",
                targets.join(", ")
            ));
        }
        let config_file = dir.join("prometheus.yml");
        std::fs::write(&config_file, config).unwrap();
        let addr = free_port();
        let child = Command::new(program)
            .arg(format!("--config.file={}", config_file.display()))
            .arg(format!("--storage.tsdb.path={}", dir.join("data").display()))
            .arg(format!("--web.listen-address={addr}"))
            .arg("--log.level=warn")
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(dir.join("prometheus.log")).unwrap())
            .spawn()
            .unwrap();
        Self { child, addr }
    }

    async fn get(&self, path: &str) -> Value {
        let response = http_get(self.addr, path).await.unwrap();
        let (_, body) = response.split_once("\r\n\r\n").unwrap();
        let json: Value = serde_json::from_str(body).unwrap_or_else(|e| panic!("{path}: {e}: {body}"));
        assert_eq!(json["status"], "success", "{path}: {json}");
        json["data"].clone()
    }

    /// The series `expr` returns now.
    async fn query(&self, expr: &str) -> Vec<Value> {
        let data = self.get(&format!("/api/v1/query?query={}", encode(expr))).await;
        data["result"].as_array().unwrap().clone()
    }

    async fn ready(&self) {
        let deadline = Instant::now() + WITHIN;
        while !http_get(self.addr, "/-/ready")
            .await
            .is_ok_and(|r| r.lines().next().is_some_and(|l| l.contains(" 200 ")))
        {
            assert!(Instant::now() < deadline, "Prometheus never became ready");
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    /// The alerts firing now, as (name, labels).
    async fn firing(&self) -> Vec<(String, Value)> {
        let data = self.get("/api/v1/alerts").await;
        data["alerts"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|a| a["state"] == "firing")
            .map(|a| {
                (
                    a["labels"]["alertname"].as_str().unwrap().to_owned(),
                    a["labels"].clone(),
                )
            })
            .collect()
    }
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn free_port() -> SocketAddr {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    listener.local_addr().unwrap()
}

/// `text` percent-encoded for a query string.
fn encode(text: &str) -> String {
    text.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => (b as char).to_string(),
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// A panel's query as Grafana sends it with every variable at "All".
fn substitute(expr: &str) -> String {
    expr.replace("$__rate_interval", "1m")
        .replace("$instance", ".*")
        .replace("$route", ".*")
}

fn dashboard(name: &str) -> Value {
    let path = format!("{ROOT}/deploy/grafana/{name}.json");
    serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap_or_else(|e| panic!("{path}: {e}"))
}

/// What Grafana needs of a dashboard model to import it, and what makes it
/// work with any Prometheus: a data source variable, used by every panel.
fn check_model(name: &str, model: &Value) -> Vec<(String, Vec<String>)> {
    for field in [
        "uid",
        "title",
        "schemaVersion",
        "panels",
        "templating",
        "time",
        "refresh",
    ] {
        assert!(!model[field].is_null(), "{name}: no {field}");
    }
    assert!(model["schemaVersion"].as_u64().unwrap() >= 36, "{name}: schemaVersion");
    let variables = model["templating"]["list"].as_array().unwrap();
    assert!(
        variables
            .iter()
            .any(|v| v["type"] == "datasource" && v["name"] == "datasource" && v["query"] == "prometheus"),
        "{name}: a Prometheus data source variable"
    );
    assert!(
        model.get("__inputs").is_none(),
        "{name}: no data source bound at import"
    );
    let mut ids = BTreeSet::new();
    let mut panels = Vec::new();
    for panel in model["panels"].as_array().unwrap() {
        let title = panel["title"].as_str().unwrap().to_owned();
        assert!(
            ids.insert(panel["id"].as_u64().unwrap()),
            "{name}: panel ids are unique"
        );
        for field in ["h", "w", "x", "y"] {
            assert!(panel["gridPos"][field].is_u64(), "{name}/{title}: gridPos.{field}");
        }
        if panel["type"] == "row" {
            continue;
        }
        assert!(!panel["description"].is_null(), "{name}/{title}: a description");
        assert_eq!(
            panel["datasource"]["uid"], "${datasource}",
            "{name}/{title}: the variable's data source"
        );
        let targets = panel["targets"].as_array().unwrap();
        assert!(!targets.is_empty(), "{name}/{title}: queries");
        let exprs = targets
            .iter()
            .map(|t| {
                assert_eq!(
                    t["datasource"]["uid"], "${datasource}",
                    "{name}/{title}: target data source"
                );
                assert!(t["refId"].is_string(), "{name}/{title}: refId");
                t["expr"].as_str().unwrap().to_owned()
            })
            .collect();
        panels.push((title, exprs));
    }
    panels
}

/// The metric names an expression reads.
fn metrics_in(expr: &str) -> BTreeSet<String> {
    let mut names = BTreeSet::new();
    let mut rest = expr;
    while let Some(at) = rest.find("snigate_") {
        let name: String = rest[at..]
            .chars()
            .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
            .collect();
        rest = &rest[at + name.len()..];
        names.insert(name);
    }
    if expr.contains("up{") {
        names.insert("up".to_owned());
    }
    names
}

fn send_hup() {
    let status = Command::new("kill")
        .args(["-HUP", &std::process::id().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
}

async fn routes(bed: &Testbed) -> Value {
    let response = http_get(bed.router_admin, "/status").await.unwrap();
    serde_json::from_str(response.split_once("\r\n\r\n").unwrap().1).unwrap()
}

/// A TLS handshake through the router for `host` that the router refuses
/// or cannot relay.
async fn refused(bed: &Testbed, host: &str, source: Option<std::net::IpAddr>) {
    let tcp = match source {
        Some(ip) => {
            let socket = tokio::net::TcpSocket::new_v4().unwrap();
            socket.bind(SocketAddr::new(ip, 0)).unwrap();
            socket.connect(bed.router).await.unwrap()
        }
        None => TcpStream::connect(bed.router).await.unwrap(),
    };
    let name = tokio_rustls::rustls::pki_types::ServerName::try_from(host.to_owned()).unwrap();
    let result = tokio::time::timeout(STEP, tls_client(bed).connect(name, tcp))
        .await
        .unwrap();
    assert!(result.is_err(), "{host}: refused");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dashboards_and_alerts_against_a_real_prometheus() {
    let (Some(prometheus), Some(_)) = (tool("prometheus", "prometheus"), tool("promtool", "prometheus")) else {
        return;
    };
    let dir = TempDir::new();
    let topology = Topology::load(TOPOLOGY.as_ref()).unwrap().on_any_ports();
    let bed = Testbed::start(&topology, &dir.path("testbed")).await.unwrap();
    let (a, b) = (bed.broker("broker-a").clone(), bed.broker("broker-b").clone());

    // The rules as shipped, each `for` at 0 s.
    let rules = std::fs::read_to_string(format!("{ROOT}/deploy/prometheus/snigate.rules.yml")).unwrap();
    let fast: String = rules
        .lines()
        .map(|l| if l.trim_start().starts_with("for:") { "" } else { l })
        .collect::<Vec<_>>()
        .join("\n");
    let rules_file = dir.path("rules.yml");
    std::fs::write(&rules_file, fast).unwrap();
    let gone = free_port();
    let server = Prometheus::start(
        &prometheus,
        &dir.0,
        &[
            ("snigate-router", vec![bed.router_admin]),
            ("snigate-broker", vec![a.admin, b.admin]),
            // A broker that is not there: its target is down.
            ("snigate-broker-gone", vec![gone]),
        ],
        &rules_file,
    );
    server.ready().await;
    // Scraping starts some seconds after Prometheus is ready (it applies
    // new targets every 5 s): the faults below must come after.
    let deadline = Instant::now() + WITHIN;
    while server.query("up").await.len() < 4 {
        assert!(Instant::now() < deadline, "Prometheus never scraped its targets");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }

    // Traffic through the router: every QoS to a subscriber at broker-a.
    let login_a = login(&a);
    let mut subscriber = through_router(&bed, &a.host, None).await;
    assert_eq!(mqtt::connect(&mut subscriber, "subscriber", &login_a).await, 0);
    assert_eq!(mqtt::subscribe(&mut subscriber, "load/#", 2).await, 2);
    let mut publisher = through_router(&bed, &a.host, None).await;
    assert_eq!(mqtt::connect(&mut publisher, "publisher", &login_a).await, 0);
    for i in 0..30u8 {
        mqtt::publish(&mut publisher, "load/x", b"reading", i % 3, i == 0).await;
        assert!(mqtt::next_message(&mut subscriber).await.is_some());
    }
    // Refused at broker-b: a wrong password; closed: a wildcard in a
    // PUBLISH's topic; dropped: a PUBLISH to $SYS, which the ACL refuses.
    let mut intruder = through_router(&bed, &b.host, None).await;
    let wrong = wrong_login("bob");
    assert_eq!(mqtt::connect(&mut intruder, "intruder", &wrong).await, 5);
    let login_b = login(&b);
    let mut sloppy = through_router(&bed, &b.host, None).await;
    assert_eq!(mqtt::connect(&mut sloppy, "sloppy", &login_b).await, 0);
    mqtt::publish(&mut sloppy, "$SYS/x", b"no", 0, false).await;
    sloppy
        .write_all(&mqtt::publish_packet("a/+", b"no", 0, 0))
        .await
        .unwrap();
    refused(&bed, "nobody.apps.snigate.test", None).await;
    // Gone before broker-b's route takes one connection at most.
    drop((intruder, sloppy));
    tokio::time::sleep(Duration::from_millis(200)).await;

    // A reload that applies: broker-b's route at most one connection and
    // closed to 127.0.0.2; a route whose only endpoint is not there.
    let config = bed.dir.join("router.toml");
    let original = std::fs::read_to_string(&config).unwrap();
    let dead = free_port();
    let changed = original.replacen(
        &format!("name = \"broker-b\"\nhosts = [\"{}\"]\n", b.host),
        &format!(
            "name = \"broker-b\"\nhosts = [\"{}\"]\nmax_connections = 1\ndeny = [\"127.0.0.2/32\"]\n",
            b.host
        ),
        1,
    ) + &format!(
        "\n[[route]]\nname = \"dead\"\nhosts = [\"dead.apps.snigate.test\"]\nendpoints = [\"{dead}\"]\n\
         health = {{ backoff = \"5m\", max_backoff = \"10m\" }}\n"
    );
    assert_ne!(changed, original);
    std::fs::write(&config, &changed).unwrap();
    send_hup();
    let deadline = Instant::now() + STEP;
    while routes(&bed).await["routes"]["total"] != 3 {
        assert!(Instant::now() < deadline, "the reload was not applied");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // `held` is broker-b's one connection.
    let mut held = through_router(&bed, &b.host, None).await;
    assert_eq!(mqtt::connect(&mut held, "held", &login_b).await, 0);
    // Faults, each twice, a few scrapes apart, so that rate() sees them grow.
    for _ in 0..2 {
        refused(&bed, &b.host, None).await; // the route's limit
        refused(&bed, &b.host, Some([127, 0, 0, 2].into())).await; // denied
        for _ in 0..3 {
            refused(&bed, "dead.apps.snigate.test", None).await; // ejected
        }
        tokio::time::sleep(Duration::from_millis(2500)).await;
    }

    // A flood of QoS 0 at a subscriber that never reads, until its queue
    // drops messages, then more of it after a few scrapes. Bounded.
    let mut slow = through_router(&bed, &a.host, None).await;
    assert_eq!(mqtt::connect(&mut slow, "slow", &login_a).await, 0);
    assert_eq!(mqtt::subscribe(&mut slow, "flood/#", 0).await, 0);
    // 4 KiB: the subscriber's 1,000 queued messages stay well inside the
    // queues' share of the budget (whose alert must stay quiet).
    let payload = vec![b'x'; 4 * 1024];
    let dropped = async || {
        let response = http_get(a.admin, "/metrics").await.unwrap();
        response
            .lines()
            .filter(|l| l.starts_with("snigate_broker_messages_dropped_total{") && l.contains("reason=\"queue_full\""))
            .filter_map(|l| l.rsplit(' ').next()?.parse::<u64>().ok())
            .sum::<u64>()
    };
    let started = Instant::now();
    let mut sent = 0;
    while dropped().await == 0 {
        assert!(
            sent < 15_000 && started.elapsed() < WITHIN,
            "no drop after {sent} messages"
        );
        for _ in 0..100 {
            mqtt::publish(&mut publisher, "flood/x", &payload, 0, false).await;
        }
        sent += 100;
    }
    tokio::time::sleep(Duration::from_millis(2500)).await;
    for _ in 0..200 {
        mqtt::publish(&mut publisher, "flood/x", &payload, 0, false).await;
    }

    // A reload refused.
    std::fs::write(&config, format!("not toml at all = = =\n{changed}")).unwrap();
    send_hup();

    // The dashboards: each panel returns series.
    for name in ["snigate-router", "snigate-broker"] {
        let model = dashboard(name);
        for (title, exprs) in check_model(name, &model) {
            let deadline = Instant::now() + WITHIN;
            loop {
                let mut returned = 0;
                for expr in &exprs {
                    returned += server.query(&substitute(expr)).await.len();
                }
                if returned > 0 {
                    break;
                }
                assert!(
                    Instant::now() < deadline,
                    "{name}: panel {title:?} shows no data: {exprs:#?}"
                );
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
        }
    }

    // The rules: loaded, evaluated without error, every metric they read there.
    let groups = server.get("/api/v1/rules").await;
    let rules: Vec<Value> = groups["groups"]
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|g| g["rules"].as_array().unwrap().clone())
        .collect();
    assert_eq!(rules.len(), 10, "every rule is loaded");
    let mut names = BTreeSet::new();
    for rule in &rules {
        assert_eq!(rule["health"], "ok", "{rule}");
        for metric in metrics_in(rule["query"].as_str().unwrap()) {
            names.insert(metric);
        }
    }
    for metric in &names {
        let found = server.query(&format!("count({{__name__=\"{metric}\"}})")).await;
        assert!(!found.is_empty(), "an alert reads {metric}, which no target exposes");
    }

    // The alerts the faults cause fire; the others stay quiet.
    let expected: BTreeSet<&str> = [
        "SnigateRouterNoHealthyEndpoint",
        "SnigateRouterReloadRefused",
        "SnigateRouterRefusalsAtLimit",
        "SnigateBrokerSlowConsumerDrops",
        "SnigateBrokerDown",
    ]
    .into();
    let deadline = Instant::now() + WITHIN;
    let firing = loop {
        let firing = server.firing().await;
        let names: BTreeSet<&str> = firing.iter().map(|(n, _)| n.as_str()).collect();
        if expected.is_subset(&names) {
            break firing;
        }
        assert!(
            Instant::now() < deadline,
            "firing: {names:?}, expected: {expected:?}\n{}",
            std::fs::read_to_string(dir.path("prometheus.log")).unwrap_or_default()
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    };
    for (name, labels) in &firing {
        assert!(expected.contains(name.as_str()), "{name} fired: {labels}");
        match name.as_str() {
            "SnigateRouterNoHealthyEndpoint" => assert_eq!(labels["route"], "dead"),
            "SnigateRouterRefusalsAtLimit" => {
                assert_eq!(
                    (&labels["limit"], &labels["route"]),
                    (&"route".into(), &"broker-b".into())
                );
            }
            "SnigateBrokerSlowConsumerDrops" => {
                assert_eq!(
                    (&labels["reason"], &labels["instance"]),
                    (&"queue_full".into(), &a.admin.to_string().into())
                );
            }
            "SnigateBrokerDown" => assert_eq!(labels["instance"], gone.to_string()),
            _ => {}
        }
    }

    std::fs::write(&config, original).unwrap();
    drop((subscriber, publisher, held, slow, server));
    bed.stop().await.unwrap();
}

#[test]
fn promtool_checks_and_unit_tests_the_rules() {
    let Some(promtool) = tool("promtool", "prometheus") else {
        return;
    };
    let dir: PathBuf = format!("{ROOT}/deploy/prometheus").into();
    for args in [
        &["check", "rules", "snigate.rules.yml"][..],
        &["test", "rules", "snigate.rules.test.yml"][..],
    ] {
        let out = Command::new(&promtool).args(args).current_dir(&dir).output().unwrap();
        assert!(
            out.status.success(),
            "promtool {args:?}:\n{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    // Every alert has a unit test.
    let rules = std::fs::read_to_string(dir.join("snigate.rules.yml")).unwrap();
    let tests = std::fs::read_to_string(dir.join("snigate.rules.test.yml")).unwrap();
    for line in rules.lines().filter_map(|l| l.trim().strip_prefix("- alert: ")) {
        assert!(tests.contains(&format!("alertname: {line}")), "{line} has no unit test");
    }
}
