//! `snigate-bench`: snigate beside HAProxy and Mosquitto, in one run, as
//! ratios. Every scenario runs each target in turn (A B C, A B C, ...), a fresh
//! process per run, and the table holds medians with min/max and the ratio to
//! the scenario's baseline. Every load loop is bounded in time; nothing is
//! installed: missing peers are named and the run stops.
//!
//! usage: cargo run --release -p snigate-bench -- [all|router|broker] [--quick]
//!        [--repeats N] [--seconds S] [--only TEXT] [--router-baseline BIN]
//!        [--broker-baseline BIN] [--out FILE]
//! Needs release builds of snigate-router and snigate-broker
//! (`cargo build --release`), Debian's haproxy and mosquitto (scripts/test
//! unpacks both under target/tools), and taskset and prlimit (util-linux).

mod broker;
mod mqtt;
mod router;
mod sys;
mod tls;

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use clap::Parser;

use crate::broker::Broker;
use crate::router::{Mode, Proxy};
use crate::tls::KeyShare;

#[derive(Parser)]
struct Cli {
    /// Which scenarios: all, router or broker.
    #[arg(default_value = "all")]
    which: String,
    /// A run of a few minutes that keeps the harness working; its numbers are
    /// not claims.
    #[arg(long)]
    quick: bool,
    /// Runs per target and scenario (default 3; 1 with --quick).
    #[arg(long)]
    repeats: Option<usize>,
    /// Seconds per timed window (default 2; 0.3 with --quick).
    #[arg(long)]
    seconds: Option<f64>,
    /// Only the scenarios whose name contains this text (e.g. "pinned",
    /// "fan-out"): to repeat or profile one.
    #[arg(long)]
    only: Option<String>,
    /// An earlier snigate-router binary (main's, built in a worktree), run
    /// beside the candidate in every router scenario as
    /// `snigate-router@baseline`; the report then ends with the candidate's
    /// ratio to it, scenario by scenario.
    #[arg(long)]
    router_baseline: Option<PathBuf>,
    /// An earlier snigate-broker binary (main's, built in a worktree), run
    /// beside the candidate in every broker scenario as
    /// `snigate-broker@baseline`; the report then ends with the candidate's
    /// ratio to it.
    #[arg(long)]
    broker_baseline: Option<PathBuf>,
    /// Where the markdown table goes (also printed).
    #[arg(long, default_value = "target/bench/results.md")]
    out: PathBuf,
}

/// Sizes of a run.
struct Plan {
    repeats: usize,
    window: Duration,
    round_trips: usize,
    handshake_concurrency: usize,
    router_idle_steps: Vec<usize>,
    broker_idle_steps: Vec<usize>,
    /// Idle clients held under `memory_limit = "128MiB"`: plaintext, TLS
    /// (issue 19's targets: 18,000 and 5,000, within the open-files limit).
    held_at_limit: (usize, usize),
    /// Subscribers on distinct topics, wildcard filters, messages (issue 19:
    /// 10,000 and 1,000).
    many_topics: (usize, usize, usize),
    scale_routes: usize,
    fan_in_publishers: usize,
    fan_out_subscribers: usize,
    fan_out_rate: u32,
    qos1_window: usize,
    only: Option<String>,
    router_baseline: Option<PathBuf>,
    broker_baseline: Option<PathBuf>,
}

impl Plan {
    /// The router targets of a scenario: `direct` too where the physical
    /// limit means something; the baseline router when one is given.
    fn proxies(&self, direct: bool) -> Vec<Proxy> {
        let mut proxies = Vec::new();
        if direct {
            proxies.push(Proxy::Direct);
        }
        proxies.extend([Proxy::Haproxy, Proxy::Snigate]);
        if self.router_baseline.is_some() {
            proxies.push(Proxy::Baseline);
        }
        proxies
    }

    /// The broker targets of every scenario.
    fn brokers(&self) -> Vec<Broker> {
        let mut brokers = vec![Broker::Mosquitto, Broker::Snigate];
        if self.broker_baseline.is_some() {
            brokers.push(Broker::Baseline);
        }
        brokers
    }

    /// Whether the scenario named `name` is to run.
    fn wants(&self, name: &str) -> bool {
        self.only.as_deref().is_none_or(|only| name.contains(only))
    }

    fn new(cli: &Cli) -> Self {
        let quick = cli.quick;
        Self {
            repeats: cli.repeats.unwrap_or(if quick { 1 } else { 3 }),
            window: Duration::from_secs_f64(cli.seconds.unwrap_or(if quick { 0.3 } else { 2.0 })),
            round_trips: if quick { 200 } else { 2000 },
            handshake_concurrency: 4,
            // The top step: the open-files limit (20,000 here) at two
            // descriptors per proxied connection, less room for the rest.
            router_idle_steps: if quick { vec![100, 400] } else { vec![1000, 9000] },
            broker_idle_steps: if quick { vec![50, 150] } else { vec![1000, 2000] },
            held_at_limit: if quick { (300, 100) } else { (18_000, 5_000) },
            many_topics: if quick {
                (100, 10, 2_000)
            } else {
                (10_000, 1_000, 200_000)
            },
            scale_routes: if quick { 1000 } else { 10_000 },
            fan_in_publishers: 4,
            fan_out_subscribers: if quick { 10 } else { 100 },
            fan_out_rate: if quick { 100 } else { 200 },
            qos1_window: 20,
            only: cli.only.clone(),
            router_baseline: cli.router_baseline.clone(),
            broker_baseline: cli.broker_baseline.clone(),
        }
    }

    fn describe(&self) -> String {
        format!(
            "{} runs per target, {:.1} s windows, {} round trips, {} handshake loops, router idle steps {:?}, \
             broker idle steps {:?}, {} routes for scale, fan-in {} publishers, fan-out {} subscribers at {} msg/s, \
             QoS 1 window {}",
            self.repeats,
            self.window.as_secs_f64(),
            self.round_trips,
            self.handshake_concurrency,
            self.router_idle_steps,
            self.broker_idle_steps,
            self.scale_routes,
            self.fan_in_publishers,
            self.fan_out_subscribers,
            self.fan_out_rate,
            self.qos1_window
        )
    }
}

/// One table row: a scenario's values per target.
struct Row {
    section: &'static str,
    scenario: String,
    unit: &'static str,
    baseline: &'static str,
    values: BTreeMap<&'static str, Vec<f64>>,
    order: Vec<&'static str>,
}

#[derive(Default)]
struct Results {
    rows: Vec<Row>,
}

impl Results {
    fn record(
        &mut self,
        section: &'static str,
        scenario: &str,
        unit: &'static str,
        baseline: &'static str,
        target: &'static str,
        value: f64,
    ) {
        eprintln!("  {scenario} [{target}]: {value:.2} {unit}");
        let row = match self
            .rows
            .iter_mut()
            .position(|r| r.scenario == scenario && r.section == section)
        {
            Some(i) => &mut self.rows[i],
            None => {
                self.rows.push(Row {
                    section,
                    scenario: scenario.to_owned(),
                    unit,
                    baseline,
                    values: BTreeMap::new(),
                    order: Vec::new(),
                });
                let last = self.rows.len() - 1;
                &mut self.rows[last]
            }
        };
        if !row.order.contains(&target) {
            row.order.push(target);
        }
        row.values.entry(target).or_default().push(value);
    }

    fn markdown(&self) -> String {
        let median = |v: &[f64]| {
            let mut v = v.to_vec();
            v.sort_by(f64::total_cmp);
            v[v.len() / 2]
        };
        let mut out = String::new();
        let mut section = "";
        for row in &self.rows {
            if row.section != section {
                section = row.section;
                let _ = write!(
                    out,
                    "\n### {section}\n\n| scenario | target | median | min | max | x baseline |\n|---|---|---:|---:|---:|---:|\n"
                );
            }
            let base = row.values.get(row.baseline).map(|v| median(v));
            for target in &row.order {
                let values = &row.values[target];
                let m = median(values);
                let min = values.iter().copied().fold(f64::INFINITY, f64::min);
                let max = values.iter().copied().fold(f64::NEG_INFINITY, f64::max);
                let ratio = match base {
                    Some(b) if b != 0.0 => format!("{:.2}", m / b),
                    _ => "-".to_owned(),
                };
                let _ = writeln!(
                    out,
                    "| {} ({}; baseline {}) | {target} | {m:.2} | {min:.2} | {max:.2} | {ratio} |",
                    row.scenario, row.unit, row.baseline
                );
            }
        }
        let pairs = [
            (Proxy::Snigate.name(), Proxy::Baseline.name()),
            (Broker::Snigate.name(), Broker::Baseline.name()),
        ];
        for (candidate, baseline) in pairs {
            let versus: Vec<&Row> = self
                .rows
                .iter()
                .filter(|r| r.values.contains_key(candidate) && r.values.contains_key(baseline))
                .collect();
            if versus.is_empty() {
                continue;
            }
            let _ = write!(
                out,
                "\n### {candidate} against {baseline}\n\n| scenario | {candidate} | {baseline} | x baseline |\n|---|---:|---:|---:|\n"
            );
            for row in versus {
                let (c, b) = (median(&row.values[candidate]), median(&row.values[baseline]));
                let ratio = if b == 0.0 {
                    "-".to_owned()
                } else {
                    format!("{:.3}", c / b)
                };
                let _ = writeln!(out, "| {} ({}) | {c:.2} | {b:.2} | {ratio} |", row.scenario, row.unit);
            }
        }
        out
    }
}

/// Run `f` on a fresh runtime; with `pinned`, the runtime's threads on CPU 0
/// (the proxy or broker then gets CPU 1 to itself).
fn measure<T>(
    pinned: bool,
    all_cpus: &str,
    f: impl std::future::Future<Output = anyhow::Result<T>>,
) -> anyhow::Result<T> {
    if pinned {
        sys::pin_self("0")?;
    }
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
    let result = runtime.block_on(f);
    drop(runtime);
    if pinned {
        sys::pin_self(all_cpus)?;
    }
    result
}

fn check_peers(which: &str) -> anyhow::Result<()> {
    let mut missing = Vec::new();
    if which != "broker" && sys::find("haproxy").is_none() {
        missing.push("haproxy (Debian package haproxy)");
    }
    if which != "router" && sys::find("mosquitto").is_none() {
        missing.push("mosquitto (Debian package mosquitto)");
    }
    for (tool, package) in [("taskset", "util-linux"), ("prlimit", "util-linux")] {
        if sys::find(tool).is_none() {
            missing.push(if package == "util-linux" {
                "taskset/prlimit (util-linux)"
            } else {
                tool
            });
        }
    }
    anyhow::ensure!(
        missing.is_empty(),
        "missing: {} (scripts/test unpacks haproxy and mosquitto under target/tools)",
        missing.join(", ")
    );
    sys::ours("snigate-router")?;
    sys::ours("snigate-broker")?;
    Ok(())
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match run(&cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("snigate-bench: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn run(cli: &Cli) -> anyhow::Result<()> {
    anyhow::ensure!(
        ["all", "router", "broker"].contains(&cli.which.as_str()),
        "which: all, router or broker"
    );
    check_peers(&cli.which)?;
    // The open-files soft limit up to the hard one, for us and the targets we start.
    let _ = std::process::Command::new("prlimit")
        .args(["--pid", &std::process::id().to_string(), "--nofile=20000:20000"])
        .status();
    let cpus = sys::cpus();
    anyhow::ensure!(cpus >= 2, "needs 2 CPUs (pinned scenarios put the target on CPU 1)");
    let all_cpus = format!("0-{}", cpus - 1);
    let plan = Plan::new(cli);
    let work = std::env::temp_dir().join(format!("snigate-bench-{}", std::process::id()));
    std::fs::create_dir_all(&work)?;
    let material = tls::Material::new(&work)?;
    eprintln!("snigate-bench: {}; logs in {}", plan.describe(), work.display());
    let started = Instant::now();
    let mut results = Results::default();
    if cli.which != "broker" {
        router_scenarios(&plan, &material, &all_cpus, &work, &mut results)?;
    }
    if cli.which != "router" {
        broker_scenarios(&plan, &material, &all_cpus, &work, &mut results)?;
    }
    let machine = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("model name"))
                .map(|l| l.split(':').nth(1).unwrap_or("").trim().to_owned())
        })
        .unwrap_or_default();
    let report = format!(
        "snigate-bench{} ({}), {} CPUs ({machine}), {:.0} s in all.\n{}.\n{}",
        if cli.quick {
            " --quick: numbers are not claims"
        } else {
            ""
        },
        cli.which,
        cpus,
        started.elapsed().as_secs_f64(),
        plan.describe(),
        results.markdown()
    );
    println!("{report}");
    if let Some(parent) = cli.out.parent() {
        std::fs::create_dir_all(parent)?;
    }
    std::fs::write(&cli.out, &report)?;
    eprintln!("snigate-bench: written to {}", cli.out.display());
    let _ = std::fs::remove_dir_all(&work);
    Ok(())
}

fn router_scenarios(
    plan: &Plan,
    material: &tls::Material,
    all_cpus: &str,
    work: &std::path::Path,
    results: &mut Results,
) -> anyhow::Result<()> {
    const SECTION: &str = "Router";
    let mut n = 0;
    let mut next_dir = || -> anyhow::Result<PathBuf> {
        n += 1;
        let dir = work.join(format!("router-{n}"));
        std::fs::create_dir_all(&dir)?;
        Ok(dir)
    };
    let classic = material.client(KeyShare::X25519)?;
    let hybrid = material.client(KeyShare::PostQuantum)?;
    for repeat in 0..plan.repeats {
        eprintln!("router, run {} of {}", repeat + 1, plan.repeats);
        for pinned in [false, true] {
            for conns in [1, 4] {
                for upload in [true, false] {
                    let scenario = format!(
                        "bulk, {conns} conn{}, {}{}",
                        if conns > 1 { "s" } else { "" },
                        if upload {
                            "client to backend"
                        } else {
                            "backend to client"
                        },
                        if pinned {
                            ", proxy pinned to its own core"
                        } else {
                            ", shared cores"
                        }
                    );
                    if !plan.wants(&scenario) {
                        continue;
                    }
                    for proxy in plan.proxies(true) {
                        let dir = next_dir()?;
                        let value = measure(pinned, all_cpus, async {
                            let backend =
                                router::Backend::start(material, if upload { Mode::Sink } else { Mode::Source })
                                    .await?;
                            let running = router::start(
                                proxy,
                                backend.addr,
                                3,
                                pinned.then_some(1),
                                &dir,
                                plan.router_baseline.as_deref(),
                            )?;
                            router::bulk(&running, &backend, classic.clone(), conns, upload, plan.window).await
                        })?;
                        results.record(SECTION, &scenario, "MB/s", "direct", proxy.name(), value.mb_per_s);
                        if let Some(cost) = value.cpu_ms_per_gb {
                            results.record(
                                SECTION,
                                &format!("{scenario}: proxy CPU per GB"),
                                "ms",
                                "haproxy",
                                proxy.name(),
                                cost,
                            );
                        }
                    }
                }
            }
        }
        for proxy in plan
            .proxies(true)
            .into_iter()
            .filter(|_| plan.wants("round trip, 64 bytes"))
        {
            let dir = next_dir()?;
            let (p50, p99) = measure(false, all_cpus, async {
                let backend = router::Backend::start(material, Mode::Echo).await?;
                let running = router::start(proxy, backend.addr, 3, None, &dir, plan.router_baseline.as_deref())?;
                router::round_trips(&running, classic.clone(), plan.round_trips).await
            })?;
            results.record(SECTION, "round trip p50, 64 bytes", "us", "direct", proxy.name(), p50);
            results.record(SECTION, "round trip p99, 64 bytes", "us", "direct", proxy.name(), p99);
        }
        for (config, label) in [
            (&hybrid, "post-quantum hybrid key share"),
            (&classic, "X25519 key share"),
        ] {
            if !plan.wants(&format!("TLS handshakes, {label}")) {
                continue;
            }
            for proxy in plan.proxies(true) {
                let dir = next_dir()?;
                let rate = measure(false, all_cpus, async {
                    let backend = router::Backend::start(material, Mode::Hold).await?;
                    let running = router::start(proxy, backend.addr, 3, None, &dir, plan.router_baseline.as_deref())?;
                    router::handshakes(&running, config.clone(), plan.handshake_concurrency, plan.window).await
                })?;
                results.record(
                    SECTION,
                    &format!("TLS handshakes, {label}"),
                    "per s",
                    "direct",
                    proxy.name(),
                    rate,
                );
            }
        }
        for proxy in plan
            .proxies(false)
            .into_iter()
            .filter(|_| plan.wants("idle TLS connections"))
        {
            let dir = next_dir()?;
            let (per_conn, cpu) = measure(false, all_cpus, async {
                let backend = router::Backend::start(material, Mode::Hold).await?;
                let running = router::start(proxy, backend.addr, 3, None, &dir, plan.router_baseline.as_deref())?;
                router::idle(&running, classic.clone(), &plan.router_idle_steps).await
            })?;
            let steps = format!("{:?}", plan.router_idle_steps);
            results.record(
                SECTION,
                &format!("idle TLS connections {steps}: RSS per connection"),
                "KiB",
                "haproxy",
                proxy.name(),
                per_conn,
            );
            results.record(
                SECTION,
                &format!("idle TLS connections {steps}: CPU while idle"),
                "% of a core",
                "haproxy",
                proxy.name(),
                cpu,
            );
        }
        const INGRESS: &str = "4 endpoints, least-connections, 1,000-block allow list: TLS handshakes";
        if plan.wants(INGRESS) {
            // The baseline (an earlier router) may not know these settings.
            for proxy in [Proxy::Haproxy, Proxy::Snigate] {
                let dir = next_dir()?;
                let rate = measure(false, all_cpus, async {
                    let mut backends = Vec::new();
                    for _ in 0..4 {
                        backends.push(router::Backend::start(material, Mode::Hold).await?);
                    }
                    let addrs: Vec<_> = backends.iter().map(|b| b.addr).collect();
                    let running = router::start_pool(proxy, &addrs, 1000, &dir, None)?;
                    router::handshakes(&running, hybrid.clone(), plan.handshake_concurrency, plan.window).await
                })?;
                results.record(SECTION, INGRESS, "per s", "haproxy", proxy.name(), rate);
            }
        }
        for routes in [3, plan.scale_routes] {
            if !plan.wants(&format!("{routes} routes")) {
                continue;
            }
            for proxy in plan.proxies(false) {
                let dir = next_dir()?;
                let (rate, rss, startup) = measure(false, all_cpus, async {
                    let backend = router::Backend::start(material, Mode::Hold).await?;
                    let started = std::time::Instant::now();
                    let running =
                        router::start(proxy, backend.addr, routes, None, &dir, plan.router_baseline.as_deref())?;
                    // Writing the file, loading it, listening: what a restart
                    // (or, for snigate-router, a reload) of this table costs.
                    let startup = started.elapsed().as_secs_f64() * 1000.0;
                    let rate =
                        router::handshakes(&running, hybrid.clone(), plan.handshake_concurrency, plan.window).await?;
                    let rss = running.process.as_ref().map_or(0, |p| p.rss_kib());
                    Ok((rate, rss as f64, startup))
                })?;
                results.record(
                    SECTION,
                    &format!("{routes} routes: start until listening"),
                    "ms",
                    "haproxy",
                    proxy.name(),
                    startup,
                );
                results.record(
                    SECTION,
                    &format!("{routes} routes: TLS handshakes"),
                    "per s",
                    "haproxy",
                    proxy.name(),
                    rate,
                );
                results.record(
                    SECTION,
                    &format!("{routes} routes: RSS after the handshakes"),
                    "KiB",
                    "haproxy",
                    proxy.name(),
                    rss,
                );
            }
        }
    }
    Ok(())
}

fn broker_scenarios(
    plan: &Plan,
    material: &tls::Material,
    all_cpus: &str,
    work: &std::path::Path,
    results: &mut Results,
) -> anyhow::Result<()> {
    const SECTION: &str = "Broker";
    let passwd = broker::password_file(work)?;
    let tls_client = broker::tls_client(material)?;
    let mut n = 0;
    let mut next_dir = || -> anyhow::Result<PathBuf> {
        n += 1;
        let dir = work.join(format!("broker-{n}"));
        std::fs::create_dir_all(&dir)?;
        Ok(dir)
    };
    // Every broker row has Mosquitto as its baseline.
    let row = |results: &mut Results, scenario: &str, unit: &'static str, target: Broker, value: f64| {
        results.record(SECTION, scenario, unit, "mosquitto", target.name(), value);
    };
    // A fresh broker per run: `cpu` pins it; the baseline binary when given.
    let start_with = |target: Broker, cpu: Option<usize>, dir: &std::path::Path, memory_limit: Option<&str>| {
        broker::start(
            target,
            material,
            &passwd,
            cpu,
            dir,
            memory_limit,
            plan.broker_baseline.as_deref(),
        )
    };
    let start = |target: Broker, cpu: Option<usize>, dir: &std::path::Path| start_with(target, cpu, dir, None);
    let steps = format!("{:?}", plan.broker_idle_steps);
    let budget_kib = 128.0 * 1024.0;
    for repeat in 0..plan.repeats {
        eprintln!("broker, run {} of {}", repeat + 1, plan.repeats);
        for target in plan.brokers() {
            for tls in [false, true] {
                if !plan.wants(&format!("idle {} clients", if tls { "TLS" } else { "plaintext" })) {
                    continue;
                }
                let dir = next_dir()?;
                let running = start(target, None, &dir)?;
                let (slope, first) = measure(false, all_cpus, async {
                    broker::idle(&running, tls.then_some(&tls_client), &plan.broker_idle_steps).await
                })?;
                let kind = if tls { "TLS" } else { "plaintext" };
                row(
                    results,
                    &format!("idle {kind} clients {steps}: RSS per client"),
                    "KiB",
                    target,
                    slope,
                );
                let base = first - slope * plan.broker_idle_steps[0] as f64;
                let fits = if slope > 0.0 { (budget_kib - base) / slope } else { 0.0 };
                row(
                    results,
                    &format!("idle {kind} clients in 128 MiB (extrapolated from the slope)"),
                    "clients",
                    target,
                    fits,
                );
            }
        }
        for (tls, count) in [(false, plan.held_at_limit.0), (true, plan.held_at_limit.1)] {
            let kind = if tls { "TLS" } else { "plaintext" };
            let scenario = format!("{count} idle {kind} clients held with memory_limit 128 MiB");
            // Once: the slope rows above are the repeated measurement; this
            // one shows the budget admits them and RSS stays under it.
            if repeat > 0 || !plan.wants(&scenario) {
                continue;
            }
            // A baseline from before the budget's re-derivation admits 896.
            for target in plan.brokers().into_iter().filter(|t| *t != Broker::Baseline) {
                let dir = next_dir()?;
                let running = start_with(target, None, &dir, Some("128MiB"))?;
                measure(false, all_cpus, async {
                    broker::idle(&running, tls.then_some(&tls_client), &[count / 2, count]).await
                })?;
                row(
                    results,
                    &format!("{scenario}: peak RSS"),
                    "MiB",
                    target,
                    broker::peak_mib(&running.process),
                );
            }
        }
        let (subscribers, wildcards, messages) = plan.many_topics;
        let scenario = format!("{subscribers} subscribers on distinct topics and {wildcards} wildcard filters");
        // A baseline from before the budget's re-derivation admits 896.
        let without_baseline = plan.brokers().into_iter().filter(|t| *t != Broker::Baseline);
        for target in without_baseline.filter(|_| plan.wants(&scenario)) {
            let dir = next_dir()?;
            // The article's pod limit holds them (11,000 connections).
            let running = start_with(target, Some(1), &dir, Some("128MiB"))?;
            let (rate, rss) = measure(
                true,
                all_cpus,
                broker::many_topics(&running, subscribers, wildcards, messages),
            )?;
            row(
                results,
                &format!("{scenario}: QoS 0 messages routed"),
                "msg/s",
                target,
                rate,
            );
            row(
                results,
                &format!("{scenario}: RSS with the subscriptions"),
                "MiB",
                target,
                rss / 1024.0,
            );
            row(
                results,
                &format!("{scenario}: peak RSS"),
                "MiB",
                target,
                broker::peak_mib(&running.process),
            );
        }
        for target in plan.brokers().into_iter().filter(|_| plan.wants("QoS 0 fan-in")) {
            let dir = next_dir()?;
            let running = start(target, Some(1), &dir)?;
            let rate = measure(
                true,
                all_cpus,
                broker::fan_in(running.plain, plan.fan_in_publishers, plan.window),
            )?;
            row(
                results,
                &format!("QoS 0 fan-in, {} publishers to 1 subscriber", plan.fan_in_publishers),
                "msg/s",
                target,
                rate,
            );
            row(
                results,
                "QoS 0 fan-in: peak RSS",
                "MiB",
                target,
                broker::peak_mib(&running.process),
            );
        }
        for target in plan
            .brokers()
            .into_iter()
            .filter(|_| plan.wants("QoS 1, 1 publisher to 1 subscriber"))
        {
            let dir = next_dir()?;
            let running = start(target, Some(1), &dir)?;
            let rate = measure(
                true,
                all_cpus,
                broker::qos1(running.plain, None, plan.qos1_window, plan.window),
            )?;
            row(results, "QoS 1, 1 publisher to 1 subscriber", "msg/s", target, rate);
            row(
                results,
                "QoS 1: peak RSS",
                "MiB",
                target,
                broker::peak_mib(&running.process),
            );
        }
        for target in plan.brokers().into_iter().filter(|_| plan.wants("fan-out")) {
            let dir = next_dir()?;
            let running = start(target, Some(1), &dir)?;
            let (p50, p99) = measure(
                true,
                all_cpus,
                broker::fan_out(running.plain, plan.fan_out_subscribers, plan.fan_out_rate, plan.window),
            )?;
            let scenario = format!(
                "fan-out, 1 publisher at {} msg/s to {} subscribers: delivery latency",
                plan.fan_out_rate, plan.fan_out_subscribers
            );
            row(results, &format!("{scenario} p50"), "us", target, p50);
            row(results, &format!("{scenario} p99"), "us", target, p99);
            row(
                results,
                "fan-out: peak RSS",
                "MiB",
                target,
                broker::peak_mib(&running.process),
            );
        }
        for target in plan.brokers().into_iter().filter(|_| plan.wants("QoS 1 over TLS")) {
            let dir = next_dir()?;
            let running = start(target, None, &dir)?;
            let direct = measure(
                false,
                all_cpus,
                broker::qos1(running.tls, Some(&tls_client), plan.qos1_window, plan.window),
            )?;
            let (_router, front) = broker::router_in_front(running.tls, None, &dir)?;
            let routed = measure(
                false,
                all_cpus,
                broker::qos1(front, Some(&tls_client), plan.qos1_window, plan.window),
            )?;
            row(results, "QoS 1 over TLS, direct", "msg/s", target, direct);
            row(
                results,
                "QoS 1 over TLS, through snigate-router",
                "msg/s",
                target,
                routed,
            );
            row(
                results,
                "QoS 1 over TLS: through the router / direct",
                "ratio",
                target,
                routed / direct,
            );
        }
    }
    Ok(())
}
