//! `snigate-router`: the command line over the library. See `lib.rs`.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use snigate_router::config::{Endpoint, FlagRoute, Layer, Loader, Overrides};
use snigate_shared::config::EXIT_CONFIG;
use snigate_shared::logging::{self, LogFormat};
use snigate_shared::shutdown::Shutdown;

/// SNI passthrough router: routes TLS connections by the server name in their
/// ClientHello, without terminating TLS. Settings come from defaults, then the
/// file, then SNIGATE_ROUTER_* environment variables, then these flags.
#[derive(Parser)]
#[command(version)]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
    /// TOML configuration file (or SNIGATE_ROUTER_CONFIG).
    #[arg(long, short, global = true)]
    config: Option<PathBuf>,
    /// Address to accept TLS on (repeatable); replaces the file's `listen`.
    #[arg(long, global = true, value_name = "ADDR")]
    listen: Vec<SocketAddr>,
    /// Address of the admin server (/metrics, /healthz, /readyz, /routes).
    #[arg(long, global = true, value_name = "ADDR")]
    admin: Option<SocketAddr>,
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
    let settings = match load(
        cli.config,
        Overrides {
            layer: Layer::Flags,
            listen: cli.listen,
            admin: cli.admin,
            routes: cli.route,
            default_route: (!cli.default_route.is_empty()).then_some(cli.default_route),
            log_format: cli.log_format,
            ..Overrides::default()
        },
    ) {
        Ok(settings) => settings,
        Err(e) => {
            eprintln!("snigate-router: configuration error: {e}");
            return ExitCode::from(EXIT_CONFIG);
        }
    };
    if let Some(Command::Check) = cli.command {
        let config = &settings.config;
        let listen: Vec<String> = config.listen.iter().map(ToString::to_string).collect();
        let admin = config.admin.map_or("off".to_owned(), |a| a.to_string());
        let report = format!(
            "configuration OK\nlisten: {}\nadmin: {admin}\n{}",
            listen.join(", "),
            settings.table
        );
        // Written, not println!'d: `check | head -1` closes the pipe early, and
        // that is not an error worth a panic.
        let _ = std::io::Write::write_all(&mut std::io::stdout(), report.as_bytes());
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

/// defaults < file < environment < flags.
fn load(
    config: Option<PathBuf>,
    flags: Overrides,
) -> Result<snigate_router::Settings, snigate_shared::config::ConfigError> {
    let (env, env_config) = Overrides::from_env(std::env::vars())?;
    snigate_router::load(Loader {
        path: config.or(env_config),
        layers: vec![env, flags],
    })
}

fn serve(settings: snigate_router::Settings) -> anyhow::Result<()> {
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
    runtime.block_on(async {
        let listeners = snigate_router::bind(&settings.config)?;
        let shutdown = Shutdown::new();
        shutdown.listen_for_signals()?;
        snigate_router::run(settings, listeners, shutdown).await?;
        tracing::info!("stopped");
        Ok(())
    })
}
