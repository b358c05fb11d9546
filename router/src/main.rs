//! `snigate-router`: the command line over the library. See `lib.rs`.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use snigate_router::config::{Endpoint, FlagRoute, Overrides};
use snigate_shared::logging::{self, LogFormat};
use snigate_shared::shutdown::Shutdown;

/// sysexits' EX_CONFIG: the configuration is wrong, restarting will not help.
const EXIT_CONFIG: u8 = 78;

/// SNI passthrough router: routes TLS connections by the server name in their
/// ClientHello, without terminating TLS.
#[derive(Parser)]
#[command(version, about)]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
    /// TOML configuration file.
    #[arg(long, short, global = true)]
    config: Option<PathBuf>,
    /// Address to accept TLS on (repeatable); replaces the file's `listen`.
    #[arg(long, global = true, value_name = "ADDR")]
    listen: Vec<SocketAddr>,
    /// Route a host (or `*.suffix`) to endpoints, added to the file's routes.
    #[arg(long, global = true, value_name = "HOST=ADDR[,ADDR...]")]
    route: Vec<FlagRoute>,
    /// Endpoints for ClientHellos with no SNI or an unknown one.
    #[arg(long, global = true, value_name = "ADDR[,ADDR...]", value_delimiter = ',')]
    default_route: Vec<Endpoint>,
    /// Log format: text or json.
    #[arg(long, global = true)]
    log_format: Option<LogFormat>,
}

#[derive(Subcommand)]
enum Command {
    /// Validate the configuration, print the route table, and exit.
    Check,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let overrides = Overrides {
        listen: cli.listen,
        routes: cli.route,
        default_route: (!cli.default_route.is_empty()).then_some(cli.default_route),
        log_format: cli.log_format,
    };
    let settings = match snigate_router::load(cli.config.as_deref(), &overrides) {
        Ok(settings) => settings,
        Err(e) => {
            eprintln!("snigate-router: configuration error: {e}");
            return ExitCode::from(EXIT_CONFIG);
        }
    };
    if let Some(Command::Check) = cli.command {
        let listen: Vec<String> = settings.config.listen.iter().map(ToString::to_string).collect();
        println!("configuration OK\nlisten: {}", listen.join(", "));
        print!("{}", settings.table);
        return ExitCode::SUCCESS;
    }
    if let Err(e) = logging::init(settings.config.log_format, &settings.config.log_level) {
        eprintln!("snigate-router: {e}");
        return ExitCode::from(EXIT_CONFIG);
    }
    match serve(settings) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!("{e:#}");
            ExitCode::FAILURE
        }
    }
}

fn serve(settings: snigate_router::Settings) -> anyhow::Result<()> {
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
    runtime.block_on(async {
        let listeners = snigate_router::bind(&settings.config)?;
        let shutdown = Shutdown::new();
        shutdown.listen_for_signals()?;
        snigate_router::run(settings, listeners, shutdown).await;
        tracing::info!("stopped");
        Ok(())
    })
}
