//! `snigate-broker`: the command line over the library. See `lib.rs`.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use snigate_broker::config::{BrokerConfig, Overrides};
use snigate_shared::config::EXIT_CONFIG;
use snigate_shared::logging::{self, LogFormat};
use snigate_shared::shutdown::Shutdown;

/// MQTT broker, a drop-in for Mosquitto: mosquitto_passwd files,
/// Mosquitto's answers to CONNECT. With no configuration it listens on
/// 127.0.0.1:1883 and lets anonymous clients in, as Mosquitto 2.0 does.
#[derive(Parser)]
#[command(version)]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
    #[command(flatten)]
    serve: ServeArgs,
}

/// How to serve; also what `check` checks.
#[derive(clap::Args, Default)]
struct ServeArgs {
    /// TOML configuration file.
    #[arg(long, short)]
    config: Option<PathBuf>,
    /// Plaintext MQTT listener (repeatable); replaces the file's `listen`.
    #[arg(long, value_name = "ADDR")]
    listen: Vec<SocketAddr>,
    /// MQTT over TLS listener (repeatable); needs --cert and --key.
    #[arg(long, value_name = "ADDR")]
    tls_listen: Vec<SocketAddr>,
    /// Server certificate chain, PEM.
    #[arg(long, value_name = "FILE")]
    cert: Option<PathBuf>,
    /// Server private key, PEM.
    #[arg(long, value_name = "FILE")]
    key: Option<PathBuf>,
    /// A password file written by mosquitto_passwd.
    #[arg(long, value_name = "FILE")]
    password_file: Option<PathBuf>,
    /// A Mosquitto acl_file.
    #[arg(long, value_name = "FILE")]
    acl_file: Option<PathBuf>,
    /// CA certificates (PEM) to verify client certificates against.
    #[arg(long, value_name = "FILE")]
    cafile: Option<PathBuf>,
    /// Refuse TLS clients without a valid certificate.
    #[arg(long)]
    require_certificate: bool,
    /// The client certificate's CN is the user name (needs --require-certificate).
    #[arg(long)]
    use_identity_as_username: bool,
    /// Let clients without a user name in.
    #[arg(long)]
    allow_anonymous: bool,
    /// Address of the admin server (/metrics, /healthz, /readyz).
    #[arg(long, value_name = "ADDR")]
    admin: Option<SocketAddr>,
    /// Log format: text or json.
    #[arg(long)]
    log_format: Option<LogFormat>,
}

impl ServeArgs {
    /// `self`'s values where given, else `other`'s: flags may come before or
    /// after `check`.
    fn or(self, other: ServeArgs) -> ServeArgs {
        let pick = |a: Vec<SocketAddr>, b: Vec<SocketAddr>| if a.is_empty() { b } else { a };
        ServeArgs {
            config: self.config.or(other.config),
            listen: pick(self.listen, other.listen),
            tls_listen: pick(self.tls_listen, other.tls_listen),
            cert: self.cert.or(other.cert),
            key: self.key.or(other.key),
            password_file: self.password_file.or(other.password_file),
            cafile: self.cafile.or(other.cafile),
            acl_file: self.acl_file.or(other.acl_file),
            require_certificate: self.require_certificate || other.require_certificate,
            use_identity_as_username: self.use_identity_as_username || other.use_identity_as_username,
            allow_anonymous: self.allow_anonymous || other.allow_anonymous,
            admin: self.admin.or(other.admin),
            log_format: self.log_format.or(other.log_format),
        }
    }
}

#[derive(Subcommand)]
enum Command {
    /// Validate the configuration and the password file, print them, and exit.
    Check(ServeArgs),
    /// Manage a password file, as mosquitto_passwd does.
    Passwd(snigate_broker::passwd_cmd::PasswdArgs),
    /// Write a CA and server certificates for given host names.
    Certs(snigate_broker::certs_cmd::CertsArgs),
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let (args, check) = match cli.command {
        Some(Command::Passwd(args)) => {
            return match snigate_broker::passwd_cmd::run(args) {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    eprintln!("Error: {e}");
                    ExitCode::FAILURE
                }
            };
        }
        Some(Command::Certs(args)) => {
            return match snigate_broker::certs_cmd::run(args) {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    eprintln!("Error: {e}");
                    ExitCode::FAILURE
                }
            };
        }
        Some(Command::Check(args)) => (args.or(cli.serve), true),
        None => (cli.serve, false),
    };
    let flags = Overrides {
        listen: args.listen,
        tls_listen: args.tls_listen,
        cert_file: args.cert,
        key_file: args.key,
        admin: args.admin,
        password_file: args.password_file,
        allow_anonymous: args.allow_anonymous.then_some(true),
        cafile: args.cafile,
        acl_file: args.acl_file,
        require_certificate: args.require_certificate.then_some(true),
        use_identity_as_username: args.use_identity_as_username.then_some(true),
        log_format: args.log_format,
        ..Overrides::default()
    };
    // defaults < file < environment < flags.
    let loaded = Overrides::from_env(std::env::vars()).and_then(|(env, env_config)| {
        BrokerConfig::load(args.config.as_deref().or(env_config.as_deref()), &[env, flags])
    });
    let config = match loaded {
        Ok(config) => config,
        Err(e) => {
            eprintln!("snigate-broker: configuration error: {e}");
            return ExitCode::from(EXIT_CONFIG);
        }
    };
    if let Err(e) = logging::init(config.log_format, &config.log_level) {
        eprintln!("snigate-broker: {e}");
        return ExitCode::from(EXIT_CONFIG);
    }
    let material = match snigate_broker::load_material(&config, false) {
        Ok(material) => material,
        Err(e) => {
            eprintln!("snigate-broker: configuration error: {e:#}");
            return ExitCode::from(EXIT_CONFIG);
        }
    };
    if check {
        let report = effective_settings(&config, &material);
        // Written, not println!'d: `check | head` closes the pipe early.
        let _ = std::io::Write::write_all(&mut std::io::stdout(), report.as_bytes());
        return ExitCode::SUCCESS;
    }
    match serve(config, material) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!("{e:#}");
            ExitCode::FAILURE
        }
    }
}

/// What `check` prints: every effective setting. Nothing secret is in it: a
/// password file is shown by its path and user count, never its hashes.
fn effective_settings(config: &BrokerConfig, material: &snigate_broker::Material) -> String {
    let mut proxied = config.proxy_protocol.iter();
    let mut addrs = |list: &[SocketAddr]| {
        if list.is_empty() {
            "none".to_owned()
        } else {
            list.iter()
                .map(|a| match proxied.next() {
                    Some(true) => format!("{a} (PROXY protocol)"),
                    _ => a.to_string(),
                })
                .collect::<Vec<_>>()
                .join(", ")
        }
    };
    let path = |p: Option<&PathBuf>| p.map_or("none".to_owned(), |p| p.display().to_string());
    let users = material.auth.passwords.as_ref().map_or(0, |p| p.len());
    let (cert, key) = match &config.tls_files {
        Some((cert, key)) => (Some(cert), Some(key)),
        None => (None, None),
    };
    let limits = &config.limits;
    let lines = [
        "configuration OK".to_owned(),
        format!("listen: {}", addrs(&config.listen)),
        format!("tls listen: {}", addrs(&config.tls_listen)),
        format!("cert file: {}", path(cert)),
        format!("key file: {}", path(key)),
        format!("cafile: {}", path(config.client_auth.as_ref().map(|c| &c.ca_file))),
        format!(
            "require certificate: {}",
            config.client_auth.as_ref().is_some_and(|c| c.required)
        ),
        format!("use identity as username: {}", config.use_identity_as_username),
        format!("password file: {} ({users} users)", path(config.password_file.as_ref())),
        format!("anonymous: {}", config.allow_anonymous),
        format!("acl file: {}", path(config.acl_file.as_ref())),
        format!("admin: {}", config.admin.map_or("off".to_owned(), |a| a.to_string())),
        format!("max packet size: {}", config.max_packet_size),
        format!(
            "memory limit: {} MiB ({})",
            limits.memory_limit >> 20,
            limits.memory_limit_source
        ),
        format!(
            "max connections: {} (connections' share {} MiB: {} KiB a plaintext one, {} KiB a TLS one, so at most {} TLS)",
            limits.max_connections,
            limits.connection_memory >> 20,
            snigate_broker::config::PLAIN_CONNECTION_MEMORY >> 10,
            snigate_broker::config::TLS_CONNECTION_MEMORY >> 10,
            limits.connection_memory / snigate_broker::config::TLS_CONNECTION_MEMORY
        ),
        format!(
            "queues: {} messages, {} bytes per client; {} MiB in all; {} in flight; when full: {:?}; QoS 0 for away clients: {}",
            limits.max_queued_messages,
            limits.max_queued_bytes,
            limits.queued_bytes_total >> 20,
            limits.max_inflight_messages,
            limits.queue_full,
            if limits.queue_qos0_messages {
                "queued"
            } else {
                "dropped"
            }
        ),
        format!("retained: {} MiB", limits.max_retained_bytes >> 20),
        format!("subscriptions and sessions: {} MiB", limits.index_share >> 20),
        format!(
            "persistent sessions: {}",
            config
                .persistent_client_expiration
                .map_or("kept until a restart".to_owned(), |after| format!(
                    "discarded {} h after their client leaves",
                    after.as_secs() / 3600
                ))
        ),
        format!("connect timeout: {:?}", config.connect_timeout),
        format!("drain timeout: {:?}", config.drain_timeout),
        format!("log: {:?} {}", config.log_format, config.log_level),
    ];
    let warnings = config.deprecated.iter().map(|w| format!("warning: {w}"));
    lines.into_iter().chain(warnings).collect::<Vec<_>>().join("\n") + "\n"
}

fn serve(config: BrokerConfig, material: snigate_broker::Material) -> anyhow::Result<()> {
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
    runtime.block_on(async {
        let listeners = snigate_broker::bind(&config).await?;
        let shutdown = Shutdown::new();
        shutdown.listen_for_signals()?;
        snigate_broker::run(config, material, listeners, shutdown).await?;
        tracing::info!("stopped");
        Ok(())
    })
}
