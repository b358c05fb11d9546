//! `snigate-testbed`: the README's first command. Brings up the topology of
//! `config/testbed.toml` and prints how to reach it. See `lib.rs`.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::Parser;
use snigate_shared::logging::{self, LogFormat};
use snigate_testbed::{Testbed, Topology};

/// The OpenShift edge on one machine: snigate-router on 127.0.0.1:8443 and
/// brokers behind it by SNI, each with its own host name, certificate and
/// users. Runs until Ctrl-C.
#[derive(Parser)]
#[command(version)]
struct Cli {
    /// The topology.
    #[arg(long, short, default_value = "config/testbed.toml")]
    config: PathBuf,
    /// Where the CA, certificates, password files and each component's
    /// configuration are written (the CA is reused from here on later runs).
    #[arg(long, default_value = "target/testbed")]
    dir: PathBuf,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    // rumqttd logs every client's connect and disconnect at info: only its
    // warnings here, ours at info.
    if let Err(e) = logging::init(LogFormat::Text, "info,rumqttd=warn") {
        eprintln!("snigate-testbed: {e}");
        return ExitCode::FAILURE;
    }
    let topology = match Topology::load(&cli.config) {
        Ok(topology) => topology,
        Err(e) => {
            eprintln!("snigate-testbed: {e}");
            return ExitCode::from(snigate_shared::config::EXIT_CONFIG);
        }
    };
    let runtime = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(runtime) => runtime,
        Err(e) => {
            eprintln!("snigate-testbed: {e}");
            return ExitCode::FAILURE;
        }
    };
    let result = runtime.block_on(async {
        let testbed = Testbed::start(&topology, &cli.dir).await?;
        println!("{}", instructions(&testbed));
        testbed.run_until_signalled().await
    });
    match result {
        Ok(()) => {
            eprintln!("snigate-testbed: stopped");
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("snigate-testbed: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// What a newcomer needs: where things are, how names resolve, and commands to
/// copy.
fn instructions(testbed: &Testbed) -> String {
    let ca = testbed.ca_file.display();
    let hosts = testbed.hosts_file.display();
    let port = testbed.router.port();
    let mut out = String::new();
    let mut line = |s: String| {
        out.push_str(&s);
        out.push('\n');
    };
    line(String::new());
    line("snigate testbed is up.".into());
    line(format!(
        "  router     {}  (TLS passed through by SNI)   metrics http://{}/metrics",
        testbed.router, testbed.router_admin
    ));
    for broker in &testbed.brokers {
        let users: Vec<String> = broker.users.iter().map(|(u, p)| format!("{u}/{p}")).collect();
        line(format!(
            "  {:<10} {} -> {}   metrics http://{}/metrics   users: {}",
            broker.name,
            broker.host,
            broker.addr,
            broker.admin,
            users.join(", ")
        ));
    }
    line(String::new());
    line(format!("CA certificate (clients verify the brokers with it): {ca}"));
    line(String::new());
    line("Host names: the .test names resolve nowhere until you say so. Either add".into());
    line(format!(
        "the lines of {hosts} to /etc/hosts, or (no change to the machine)"
    ));
    line("open a shell with a private /etc/hosts, and run the commands below in it:".into());
    line(format!(
        "  unshare --mount --map-root-user sh -c 'mount --bind {hosts} /etc/hosts && exec \"${{SHELL:-sh}}\"'"
    ));
    line(String::new());
    if let Some(broker) = testbed.brokers.first() {
        let (user, password) = broker
            .users
            .iter()
            .next()
            .map_or(("USER", "PASSWORD"), |(u, p)| (u.as_str(), p.as_str()));
        let host = &broker.host;
        line(format!("Subscribe and publish through the router to {}:", broker.name));
        line(format!(
            "  mosquitto_sub --cafile {ca} -h {host} -p {port} -u {user} -P {password} -t demo -v &"
        ));
        line(format!(
            "  mosquitto_pub --cafile {ca} -h {host} -p {port} -u {user} -P {password} -t demo -m hello"
        ));
        line("The TLS handshake, as the router passes it through:".into());
        line(format!(
            "  openssl s_client -connect {} -servername {host} -CAfile {ca} -verify_hostname {host} -brief </dev/null",
            testbed.router
        ));
        line(String::new());
    }
    line("Ctrl-C stops everything. docs/testbed.md has more.".into());
    out
}
