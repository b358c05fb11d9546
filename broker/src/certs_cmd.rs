//! The `certs` subcommand: a CA and server certificates for the names clients
//! will use (a route's host, a Service's names), so that clients verify the
//! broker with `--cafile` and never need `--insecure`.

use std::path::PathBuf;

/// Write a CA (ca.crt, ca.key) and, per HOST, HOST.crt and HOST.key into a
/// directory. A CA already there is reused, so adding a host later keeps the
/// clients' CA file valid.
#[derive(clap::Args, Debug)]
pub struct CertsArgs {
    /// Directory to write into (created if missing).
    #[arg(long, value_name = "DIR")]
    pub out: PathBuf,
    /// Host names (or IP addresses) clients connect to; one certificate each.
    #[arg(required = true, value_name = "HOST")]
    pub hosts: Vec<String>,
    /// More names every certificate also carries, e.g. `snigate-broker` and
    /// `snigate-broker.mqtt.svc` for clients inside the cluster (repeatable).
    #[arg(long = "also", value_name = "NAME")]
    pub also: Vec<String>,
    /// The CA's common name, when a new CA is made.
    #[arg(long, default_value = "snigate CA")]
    pub ca_name: String,
    /// Validity in years, from the start of this year.
    #[arg(long, default_value_t = 5)]
    pub years: i32,
}

pub fn run(args: CertsArgs) -> Result<(), String> {
    let written =
        snigate_shared::certs::write_server_set(&args.out, &args.ca_name, &args.hosts, &args.also, args.years)
            .map_err(|e| e.to_string())?;
    let ca = written.ca_cert.display();
    if written.ca_created {
        println!("CA: {ca} (new; its key is beside it: keep ca.key private)");
    } else {
        println!("CA: {ca} (reused)");
    }
    for (host, cert, key) in &written.servers {
        println!("{host}: {} {}", cert.display(), key.display());
    }
    println!("clients: mosquitto_pub --cafile {ca} -h HOST ...; the broker: cert_file and key_file of its HOST");
    Ok(())
}
