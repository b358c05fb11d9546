//! Test support for process-level tests (feature `testing`): run one of our
//! binaries, capture its log, find the addresses it announced, signal it.
//!
//! Also a development CA for TLS peers. Test code: a failed step panics, as an
//! assertion does.
//!
//! Both binaries announce bound sockets with the fixed line `listening on
//! <proto> <addr>` (see [`crate::logging::listening`]); this is its reader.
#![allow(clippy::unwrap_used)] // test support: a failed step is a failed assertion

pub mod browser;
pub mod mqtt;

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::Arc as StdArc;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyPair};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};

/// How long to wait for a line, an address or an exit before failing the test.
pub const STEP: Duration = Duration::from_secs(10);

/// A child process of ours, killed on drop if a test fails half-way.
#[derive(Debug)]
pub struct Process {
    pub child: Child,
    /// Every line logged so far (stderr and stdout).
    pub log: Arc<Mutex<Vec<String>>>,
    name: String,
}

impl Process {
    /// Spawn `command` with `RUST_LOG=info` unless set, capturing its output.
    pub fn spawn(name: &str, mut command: Command) -> Self {
        if command.get_envs().all(|(k, _)| k != "RUST_LOG") {
            command.env("RUST_LOG", "info");
        }
        let mut child = command
            .stderr(Stdio::piped())
            .stdout(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {name}: {e}"));
        let log = Arc::new(Mutex::new(Vec::new()));
        if let Some(stderr) = child.stderr.take() {
            let lines = log.clone();
            let prefix = name.to_owned();
            std::thread::spawn(move || {
                for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                    eprintln!("[{prefix}] {line}");
                    if let Ok(mut lines) = lines.lock() {
                        lines.push(line);
                    }
                }
            });
        }
        Self {
            child,
            log,
            name: name.to_owned(),
        }
    }

    /// The first logged line containing `needle`, waiting up to [`STEP`].
    pub fn line(&self, needle: &str) -> String {
        let deadline = Instant::now() + STEP;
        loop {
            if let Some(line) = self.lines().into_iter().find(|l| l.contains(needle)) {
                return line;
            }
            assert!(Instant::now() < deadline, "{}: no log line with {needle:?}", self.name);
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Like [`Process::line`], without blocking an async test's runtime.
    pub async fn line_async(&self, needle: &str) -> String {
        let deadline = Instant::now() + STEP;
        loop {
            if let Some(line) = self.lines().into_iter().find(|l| l.contains(needle)) {
                return line;
            }
            assert!(Instant::now() < deadline, "{}: no log line with {needle:?}", self.name);
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    pub fn lines(&self) -> Vec<String> {
        self.log.lock().map(|l| l.clone()).unwrap_or_default()
    }

    /// The address announced as `listening on <proto> <addr>`.
    pub fn address(&self, proto: &str) -> SocketAddr {
        let marker = format!("listening on {proto} ");
        let line = self.line(&marker);
        let rest = line.split(&marker).nth(1).unwrap_or_default();
        address_prefix(rest)
            .parse()
            .unwrap_or_else(|e| panic!("{}: bad address in {line:?}: {e}", self.name))
    }

    /// Send a signal by name (`TERM`, `HUP`, ...) to this process only.
    pub fn signal(&self, name: &str) {
        let status = Command::new("kill")
            .arg(format!("-{name}"))
            .arg(self.child.id().to_string())
            .status();
        assert!(status.is_ok_and(|s| s.success()), "{}: kill -{name} failed", self.name);
    }

    /// Wait for the exit, up to `within`, without blocking an async runtime.
    pub async fn wait(&mut self, within: Duration) -> ExitStatus {
        let deadline = Instant::now() + within;
        loop {
            if let Ok(Some(status)) = self.child.try_wait() {
                return status;
            }
            assert!(
                Instant::now() < deadline,
                "{} did not exit within {within:?}",
                self.name
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

impl Drop for Process {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The socket address at the start of `text` (in a text log line it is followed
/// by a space, in a JSON one by a quote).
pub fn address_prefix(text: &str) -> String {
    text.chars()
        .take_while(|c| c.is_ascii_hexdigit() || matches!(c, '.' | ':' | '[' | ']'))
        .collect()
}

/// A real peer the tests need, found on PATH. Under CI=true a missing tool is a
/// failure that says how to get it; elsewhere the test is skipped, loudly.
pub fn tool(name: &str, package: &str) -> Option<std::path::PathBuf> {
    let found = std::env::var_os("PATH")
        .iter()
        .flat_map(std::env::split_paths)
        .map(|dir| dir.join(name))
        .find(|path| path.is_file());
    if found.is_none() {
        let ci = std::env::var("CI").is_ok_and(|v| !v.is_empty());
        assert!(
            !ci,
            "{name} is required under CI (Debian package `{package}`; scripts/test installs it)"
        );
        eprintln!("\n*** SKIPPED: {name} not found; install Debian's `{package}` or run scripts/test ***\n");
    }
    found
}

/// `promtool check metrics` on a `/metrics` body: fails the test with
/// promtool's complaint (skips, loudly, where promtool is missing outside CI).
pub fn check_metrics_with_promtool(body: &str) {
    use std::io::Write;
    let Some(promtool) = tool("promtool", "prometheus") else {
        return;
    };
    let mut child = Command::new(promtool)
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child.stdin.take().unwrap().write_all(body.as_bytes()).unwrap();
    let output = child.wait_with_output().unwrap();
    assert!(
        output.status.success(),
        "promtool check metrics failed:\n{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
}

/// A fresh directory under the system temp dir, removed on drop.
#[derive(Debug)]
pub struct TempDir(pub std::path::PathBuf);

impl TempDir {
    pub fn new() -> Self {
        static NEXT: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
        let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.subsec_nanos());
        let dir = std::env::temp_dir().join(format!("snigate-test-{}-{n}-{nanos}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap_or_else(|e| panic!("cannot create {}: {e}", dir.display()));
        Self(dir)
    }

    pub fn path(&self, name: &str) -> std::path::PathBuf {
        self.0.join(name)
    }
}

impl Default for TempDir {
    fn default() -> Self {
        Self::new()
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// A development CA that issues server certificates.
pub struct Ca {
    issuer: Issuer<'static, KeyPair>,
    pub cert_der: CertificateDer<'static>,
    pub cert_pem: String,
}

impl Ca {
    #[allow(clippy::new_without_default)]
    pub fn new() -> Self {
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params.distinguished_name.push(DnType::CommonName, "snigate test CA");
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        let key = KeyPair::generate().unwrap();
        let cert = params.self_signed(&key).unwrap();
        Self {
            cert_der: cert.der().clone(),
            cert_pem: cert.pem(),
            issuer: Issuer::new(params, key),
        }
    }

    /// A certificate and key for `host`, signed by this CA.
    pub fn issue(&self, host: &str) -> (Vec<CertificateDer<'static>>, PrivateKeyDer<'static>) {
        let mut params = CertificateParams::new(vec![host.to_owned()]).unwrap();
        params.distinguished_name.push(DnType::CommonName, host);
        let key = KeyPair::generate().unwrap();
        let cert = params.signed_by(&key, &self.issuer).unwrap();
        let key = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.serialize_der()));
        (vec![cert.der().clone()], key)
    }

    /// A certificate (PEM) and key (PEM) for `names` (host names or IP
    /// addresses), signed by this CA.
    pub fn issue_pem(&self, names: &[&str]) -> (String, String) {
        let names: Vec<String> = names.iter().map(|n| (*n).to_owned()).collect();
        let mut params = CertificateParams::new(names.clone()).unwrap();
        params.distinguished_name.push(DnType::CommonName, names[0].as_str());
        let key = KeyPair::generate().unwrap();
        let cert = params.signed_by(&key, &self.issuer).unwrap();
        (cert.pem(), key.serialize_pem())
    }

    /// A client certificate (PEM) and key (PEM) with subject CN `name`, for
    /// TLS client authentication, signed by this CA.
    pub fn issue_client_pem(&self, name: &str) -> (String, String) {
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params.distinguished_name.push(DnType::CommonName, name);
        params.extended_key_usages = vec![rcgen::ExtendedKeyUsagePurpose::ClientAuth];
        let key = KeyPair::generate().unwrap();
        let cert = params.signed_by(&key, &self.issuer).unwrap();
        (cert.pem(), key.serialize_pem())
    }

    pub fn write_pem(&self, dir: &std::path::Path) -> std::path::PathBuf {
        let path = dir.join("ca.crt");
        std::fs::write(&path, &self.cert_pem).unwrap();
        path
    }

    pub fn client_config(&self) -> StdArc<rustls::ClientConfig> {
        let mut roots = rustls::RootCertStore::empty();
        roots.add(self.cert_der.clone()).unwrap();
        StdArc::new(
            rustls::ClientConfig::builder_with_provider(StdArc::new(rustls::crypto::aws_lc_rs::default_provider()))
                .with_safe_default_protocol_versions()
                .unwrap()
                .with_root_certificates(roots)
                .with_no_client_auth(),
        )
    }
}

/// `program`, to be run with `hosts` mounted over /etc/hosts in a mount
/// namespace of its own (`unshare`): host names resolve as the file says for
/// that process alone, the machine's /etc/hosts untouched (docs/testbed.md).
/// `None` when unshare is missing (a failure under CI=true).
pub fn with_hosts_file(hosts: &std::path::Path, program: &std::path::Path) -> Option<Command> {
    let mut command = Command::new(tool("unshare", "util-linux")?);
    command
        .args([
            "--mount",
            "--map-root-user",
            "sh",
            "-c",
            "mount --bind \"$0\" /etc/hosts && exec \"$@\"",
        ])
        .arg(hosts)
        .arg(program);
    Some(command)
}
