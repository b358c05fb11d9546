//! `snigate-testbed`: the README's first command. Brings up the topology of
//! `config/testbed.toml` and prints how to reach it. See `lib.rs`.

use std::path::{Path, PathBuf};
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
    /// The topology [default: the workspace's config/testbed.toml, from
    /// whichever directory this runs].
    #[arg(long, short)]
    config: Option<PathBuf>,
    /// Where the CA, certificates, password files and each component's
    /// configuration are written (the CA is reused from here on later runs)
    /// [default: the workspace's target/testbed].
    #[arg(long)]
    dir: Option<PathBuf>,
}

/// The workspace this binary was built in: `cargo run` may start it from any
/// directory below it.
fn workspace() -> &'static Path {
    Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/.."))
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    // rumqttd logs every client's connect and disconnect at info: only its
    // warnings here, ours at info.
    if let Err(e) = logging::init(LogFormat::Text, "info,rumqttd=warn") {
        eprintln!("snigate-testbed: {e}");
        return ExitCode::FAILURE;
    }
    let config = cli.config.unwrap_or_else(|| workspace().join("config/testbed.toml"));
    let dir = cli.dir.unwrap_or_else(|| workspace().join("target/testbed"));
    let topology = match Topology::load(&config) {
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
        let testbed = Testbed::start(&topology, &dir).await?;
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
/// copy, each on one line (tests/tests/testbed_cli.rs runs them as printed).
fn instructions(testbed: &Testbed) -> String {
    let ca = quoted(&testbed.ca_file);
    let hosts = quoted(&testbed.hosts_file);
    let port = testbed.router.port();
    let mut out = String::new();
    let mut line = |s: String| {
        out.push_str(&s);
        out.push('\n');
    };
    line(String::new());
    line("snigate testbed is up.".into());
    line(format!(
        "  router     {}  (TLS passed through by SNI)   status http://{}/",
        testbed.router, testbed.router_admin
    ));
    for broker in &testbed.brokers {
        let users: Vec<String> = broker.users.iter().map(|(u, p)| format!("{u}/{p}")).collect();
        line(format!(
            "  {:<10} {} -> {}   status http://{}/   users: {}",
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
    line("Try it in another terminal: this one runs the testbed until Ctrl-C. The clients".into());
    line("are mosquitto-clients (Debian/Ubuntu: sudo apt install mosquitto-clients).".into());
    line(String::new());
    line("1. The .test host names resolve nowhere until you say so. Open a shell with a".into());
    line("   private /etc/hosts (the machine's stays as it is) and run the rest in it:".into());
    line(format!(
        "     unshare --mount --map-root-user sh -c 'mount --bind \"$0\" /etc/hosts && exec \"${{SHELL:-sh}}\"' {hosts}"
    ));
    line(format!(
        "   (Or add the lines of {hosts} to /etc/hosts; docs/testbed.md.)"
    ));
    if let Some(broker) = testbed.brokers.first() {
        let (user, password) = broker
            .users
            .iter()
            .next()
            .map_or(("USER", "PASSWORD"), |(u, p)| (u.as_str(), p.as_str()));
        let host = &broker.host;
        let login = format!("--cafile {ca} -h {host} -p {port} -u {user} -P {password}");
        line(format!(
            "2. Subscribe and publish through the router to {} (the subscriber prints the",
            broker.name
        ));
        line("   message and exits):".into());
        line(format!(
            "     mosquitto_sub {login} -t demo -v -C 1 & sleep 1; mosquitto_pub {login} -t demo -m hello; wait"
        ));
        line("3. The TLS handshake, as the router passes it through (look for \"Verification: OK\"):".into());
        line(format!(
            "     openssl s_client -connect {} -servername {host} -CAfile {ca} -verify_hostname {host} -brief </dev/null",
            testbed.router
        ));
    }
    line(String::new());
    line("Ctrl-C stops everything. docs/testbed.md has more.".into());
    out
}

/// `path` as one shell word.
fn quoted(path: &Path) -> String {
    let text = path.display().to_string();
    let plain = |c: char| c.is_ascii_alphanumeric() || "/._-+,:@%".contains(c);
    if !text.is_empty() && text.chars().all(plain) {
        text
    } else {
        format!("'{}'", text.replace('\'', r"'\''"))
    }
}
