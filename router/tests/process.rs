//! The real `snigate-router` binary: exit codes, `check`, flags alone, signals,
//! and the shipped example configs.
#![allow(clippy::unwrap_used)] // a test binary: unwrap is an assertion

mod support;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use snigate_shared::testing::{Process, TempDir, address_prefix, tool};
use support::*;

const BIN: &str = env!("CARGO_BIN_EXE_snigate-router");

fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap().to_owned()
}

/// The router binary, running, with the address it listens on.
struct RouterProcess {
    process: Process,
    addr: SocketAddr,
}

impl std::ops::Deref for RouterProcess {
    type Target = Process;

    fn deref(&self) -> &Process {
        &self.process
    }
}

impl std::ops::DerefMut for RouterProcess {
    fn deref_mut(&mut self) -> &mut Process {
        &mut self.process
    }
}

impl RouterProcess {
    /// Start with `args` and wait for its "listening on tls ADDR" line.
    fn start(args: &[&str]) -> Self {
        Self::start_with_env(args, &[])
    }

    fn start_with_env(args: &[&str], env: &[(&str, &str)]) -> Self {
        let mut command = Command::new(BIN);
        command.args(args).envs(env.iter().copied());
        Self::spawn(command)
    }

    /// Start under `ulimit -n nofile`.
    fn start_limited(nofile: u32, args: &[&str], env: &[(&str, &str)]) -> Self {
        let mut command = Command::new("sh");
        command
            .arg("-c")
            .arg(format!("ulimit -n {nofile} && exec \"$0\" \"$@\""))
            .arg(BIN)
            .args(args)
            .envs(env.iter().copied());
        Self::spawn(command)
    }

    fn spawn(command: Command) -> Self {
        let process = Process::spawn("router", command);
        let addr = process.address("tls");
        Self { process, addr }
    }
}

#[test]
fn a_config_error_exits_78_naming_file_line_and_field() {
    let dir = std::env::temp_dir().join(format!("snigate-process-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("bad.toml");
    std::fs::write(
        &path,
        "listen = [\"127.0.0.1:0\"]\n\n[[route]]\nname = \"a\"\nhosts = [\"a.test\"]\nendpoints = [\"nope\"]\n",
    )
    .unwrap();
    let output = Command::new(BIN).arg("--config").arg(&path).output().unwrap();
    assert_eq!(output.status.code(), Some(78));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains(&format!("{}:6:", path.display())), "{stderr}");
    assert!(stderr.contains("field `route[0].endpoints"), "{stderr}");
    assert!(stderr.contains("`nope` is not a valid endpoint"), "{stderr}");

    let output = Command::new(BIN)
        .args(["--route", "a.test=127.0.0.1:1", "--route", "A.TEST=127.0.0.1:2"])
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(78));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("claimed by route"), "{stderr}");
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn check_prints_the_route_table() {
    let config = repo_root().join("config/router.toml");
    let output = Command::new(BIN)
        .arg("check")
        .arg("--config")
        .arg(&config)
        .output()
        .unwrap();
    assert!(output.status.success(), "{output:?}");
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(stdout.contains("configuration OK"), "{stdout}");
    assert!(
        stdout.contains("route broker-a: broker-a.apps.snigate.test -> 127.0.0.1:18883"),
        "{stdout}"
    );
    assert!(
        stdout.contains("route apps: *.apps.snigate.test -> localhost:48883"),
        "{stdout}"
    );
}

#[tokio::test]
async fn flags_alone_route_and_sigterm_exits_cleanly() {
    let ca = Ca::new();
    let a = TlsBackend::start(&ca, "a.test", "a").await;
    let apps = TlsBackend::start(&ca, "x.apps.test", "apps").await;
    let fallback = TlsBackend::start(&ca, "elsewhere.test", "fallback").await;
    let dead = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let mut router = RouterProcess::start(&[
        "--listen",
        "127.0.0.1:0",
        "--route",
        &format!("a.test={}", a.addr),
        "--route",
        &format!("*.apps.test={}", apps.addr),
        "--default-route",
        &format!("{dead},{}", fallback.addr),
    ]);
    assert_eq!(backend_for(&ca, router.addr, "a.test").await.unwrap(), "a");
    assert_eq!(backend_for(&ca, router.addr, "x.apps.test").await.unwrap(), "apps");
    assert_eq!(
        backend_for(&ca, router.addr, "elsewhere.test").await.unwrap(),
        "fallback"
    );

    router.signal("TERM");
    let status = router.wait(Duration::from_secs(10)).await;
    assert!(status.success(), "{status:?}");
}

#[tokio::test]
async fn a_second_signal_ends_the_drain_at_once() {
    let backend = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let hello: &[u8] = include_bytes!("../src/hello/testdata/openssl-tls13.bin");
    let mut router = RouterProcess::start(&[
        "--listen",
        "127.0.0.1:0",
        "--route",
        &format!("broker-a.apps.example.com={}", backend.local_addr().unwrap()),
    ]);
    let mut client = tokio::net::TcpStream::connect(router.addr).await.unwrap();
    tokio::io::AsyncWriteExt::write_all(&mut client, hello).await.unwrap();
    let (_server, _) = tokio::time::timeout(STEP, backend.accept()).await.unwrap().unwrap();

    // The open connection holds the drain (default 20 s)...
    router.signal("TERM");
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(router.child.try_wait().unwrap().is_none(), "still draining");
    // ...until a second signal.
    router.signal("INT");
    let status = router.wait(Duration::from_secs(5)).await;
    assert!(status.success(), "{status:?}");
}

#[test]
fn a_listen_address_in_use_exits_1() {
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = taken.local_addr().unwrap().to_string();
    let output = Command::new(BIN).args(["--listen", &addr]).output().unwrap();
    assert_eq!(output.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&output.stderr).contains(&format!("cannot listen on {addr}")));
}

/// Every shipped example parses; adding an unknown key to any of its tables is
/// refused with the key's name and line.
#[test]
fn example_configs_parse_and_refuse_unknown_keys() {
    let mut examples: Vec<PathBuf> = std::fs::read_dir(repo_root().join("config"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| {
            p.file_name().is_some_and(|n| n.to_string_lossy().starts_with("router"))
                && p.extension().is_some_and(|e| e == "toml")
        })
        .collect();
    examples.sort();
    assert!(!examples.is_empty());
    for path in examples {
        snigate_router::load(snigate_router::config::Loader {
            path: Some(path.clone()),
            layers: Vec::new(),
        })
        .unwrap_or_else(|e| panic!("{e}"));
        let text = std::fs::read_to_string(&path).unwrap();
        let lines: Vec<&str> = text.lines().collect();
        // The top level, then after every table header.
        let mut insert_after = vec![None];
        insert_after.extend(
            lines
                .iter()
                .enumerate()
                .filter(|(_, l)| l.starts_with('['))
                .map(|(i, _)| Some(i)),
        );
        for after in insert_after {
            let mut mutated: Vec<&str> = lines.clone();
            let at = after.map_or(0, |i| i + 1);
            mutated.insert(at, "bogus_key = 1");
            let source = snigate_shared::config::Source::from_text(&path, mutated.join("\n"));
            let err = source
                .parse::<snigate_router::config::RouterFile>()
                .unwrap_err()
                .to_string();
            assert!(err.contains("unknown field `bogus_key`"), "{err}");
            assert!(err.contains(&format!(":{}:", at + 1)), "line {} in {err}", at + 1);
        }
    }
}

/// Out of file descriptors, the accept loop backs off instead of spinning, and
/// serves again once connections close.
#[tokio::test]
async fn running_out_of_descriptors_backs_off_and_recovers() {
    let ca = Ca::new();
    let backend = TlsBackend::start(&ca, "fd.test", "fd").await;
    // A limit above what 48 descriptors allow, so that accept itself runs out.
    let router = RouterProcess::start_limited(
        48,
        &[
            "--listen",
            "127.0.0.1:0",
            "--route",
            &format!("fd.test={}", backend.addr),
        ],
        &[("SNIGATE_ROUTER_MAX_CONNECTIONS", "1000")],
    );
    let addr = router.addr;

    // More idle connections than descriptors: the kernel completes them, the
    // router cannot accept them all.
    let mut hogs = Vec::new();
    for _ in 0..80 {
        hogs.push(tokio::net::TcpStream::connect(addr).await.unwrap());
    }
    let cpu_before = cpu_ticks(router.child.id());
    tokio::time::sleep(Duration::from_secs(1)).await;
    let cpu_used = cpu_ticks(router.child.id()) - cpu_before;
    assert!(
        cpu_used < 50,
        "the accept loop spun: {cpu_used} ticks of CPU in one second"
    );
    router.line_async("accept failed; backing off").await;

    // Close the idle clients: they time out of their hello or close; then serve.
    drop(hogs);
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        match backend_for(&ca, addr, "fd.test").await {
            Ok(greeting) => {
                assert_eq!(greeting, "fd");
                break;
            }
            Err(e) => assert!(Instant::now() < deadline, "not serving again: {e}"),
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Without `max_connections`, the limit follows the open-files limit: two
/// descriptors per connection, less a reserve of 64.
#[tokio::test]
async fn the_default_limit_follows_the_open_files_limit() {
    let backend = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let route = format!("broker-a.apps.example.com={}", backend.local_addr().unwrap());
    let router = RouterProcess::start_limited(84, &["--listen", "127.0.0.1:0", "--route", &route], &[]);
    // (84 - 64) / 2 = 10 connections.
    let mut held = Vec::new();
    for _ in 0..10 {
        held.push(relay_through(router.addr, &backend).await);
    }
    let mut eleventh = tokio::net::TcpStream::connect(router.addr).await.unwrap();
    let mut buf = [0; 1];
    let n = tokio::time::timeout(STEP, tokio::io::AsyncReadExt::read(&mut eleventh, &mut buf))
        .await
        .unwrap();
    assert!(matches!(n, Ok(0) | Err(_)), "the eleventh connection is closed at once");
    router.line_async("global_limit").await;
}

/// User plus system CPU time of a process, in clock ticks.
fn cpu_ticks(pid: u32) -> u64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
    // Fields after the parenthesised command name; utime and stime are 14 and 15.
    let after = &stat[stat.rfind(')').unwrap() + 2..];
    let fields: Vec<&str> = after.split_whitespace().collect();
    fields[11].parse::<u64>().unwrap() + fields[12].parse::<u64>().unwrap()
}

/// One access event per connection, with every field, in text and in JSON.
#[tokio::test]
async fn the_access_log_has_one_line_per_connection_with_every_field() {
    let ca = Ca::new();
    let a = TlsBackend::start(&ca, "a.test", "a").await;
    for format in ["text", "json"] {
        let mut router = RouterProcess::start(&[
            "--listen",
            "127.0.0.1:0",
            "--log-format",
            format,
            "--route",
            &format!("a.test={}", a.addr),
        ]);
        assert_eq!(backend_for(&ca, router.addr, "a.test").await.unwrap(), "a");
        let line = router.line_async("connection closed").await;
        let backend = a.addr.to_string();
        let expected: &[(&str, &str)] = &[
            ("sni", "a.test"),
            ("route", "a.test"),
            ("matched", "exact"),
            ("backend", &backend),
            ("outcome", "closed"),
        ];
        for (key, value) in expected {
            let text = format!("{key}={value:?}");
            let text_unquoted = format!("{key}={value}");
            let json = format!("\"{key}\":\"{value}\"");
            assert!(
                line.contains(&text) || line.contains(&text_unquoted) || line.contains(&json),
                "{format}: {key} missing in {line}"
            );
        }
        for key in ["peer", "bytes_in", "bytes_out", "duration_ms"] {
            assert!(
                line.contains(&format!("{key}=")) || line.contains(&format!("\"{key}\":")),
                "{format}: {key} missing in {line}"
            );
        }
        // An unknown name: one line too, with its outcome.
        assert!(backend_for(&ca, router.addr, "nobody.test").await.is_err());
        let refused = router.line_async("unknown_sni").await;
        assert!(refused.contains("connection not relayed"), "{refused}");
        router.signal("TERM");
        assert!(router.wait(Duration::from_secs(10)).await.success());
    }
}

/// Send `hello` through the router at `addr` and wait for `backend` to get it.
async fn relay_through(
    addr: SocketAddr,
    backend: &tokio::net::TcpListener,
) -> (tokio::net::TcpStream, tokio::net::TcpStream) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let hello: &[u8] = include_bytes!("../src/hello/testdata/openssl-tls13.bin");
    let mut client = tokio::net::TcpStream::connect(addr).await.unwrap();
    client.write_all(hello).await.unwrap();
    let (mut server, _) = tokio::time::timeout(STEP, backend.accept()).await.unwrap().unwrap();
    let mut got = vec![0; hello.len()];
    server.read_exact(&mut got).await.unwrap();
    (client, server)
}

/// SIGTERM with a connection in flight: it finishes, then the process exits 0,
/// well within the drain timeout.
#[tokio::test]
async fn sigterm_lets_a_connection_in_flight_finish() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let backend = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let mut router = RouterProcess::start(&[
        "--listen",
        "127.0.0.1:0",
        "--route",
        &format!("broker-a.apps.example.com={}", backend.local_addr().unwrap()),
    ]);
    let (mut client, mut server) = relay_through(router.addr, &backend).await;
    router.signal("TERM");
    router.line_async("stopped accepting; draining").await;
    // The connection still works both ways during the drain...
    server.write_all(b"late reply").await.unwrap();
    let mut reply = [0; 10];
    client.read_exact(&mut reply).await.unwrap();
    assert_eq!(&reply, b"late reply");
    assert!(
        router.child.try_wait().unwrap().is_none(),
        "exited with a connection open"
    );
    // ...and when it ends, so does the process (drain timeout is 20 s).
    drop((client, server));
    let started = Instant::now();
    assert!(router.wait(Duration::from_secs(10)).await.success());
    assert!(started.elapsed() < Duration::from_secs(5));
    assert!(
        router
            .log
            .lock()
            .unwrap()
            .iter()
            .any(|l| l.contains("drained") && l.contains("aborted=0"))
    );
}

/// SIGHUP re-reads the file: a route is added and another removed while a
/// connection on the removed one stays open. A broken file is refused.
#[tokio::test]
async fn sighup_reloads_the_file() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let ca = Ca::new();
    let old = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let new = TlsBackend::start(&ca, "new.test", "new").await;
    let dir = TempDir::new();
    let path = dir.path("router.toml");
    // Watching off: only the signal may reload.
    let config = |routes: String| format!("listen = [\"127.0.0.1:0\"]\n[reload]\nwatch = false\n{routes}");
    std::fs::write(
        &path,
        config(route(
            "old",
            &["broker-a.apps.example.com"],
            &[old.local_addr().unwrap()],
        )),
    )
    .unwrap();
    let router = RouterProcess::start(&["--config", path.to_str().unwrap()]);
    let (mut client, mut server) = relay_through(router.addr, &old).await;

    std::fs::write(&path, config(route("new", &["new.test"], &[new.addr]))).unwrap();
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(
        backend_for(&ca, router.addr, "new.test").await.is_err(),
        "reloaded without a signal"
    );
    router.signal("HUP");
    router.line_async("configuration reloaded").await;
    assert_eq!(backend_for(&ca, router.addr, "new.test").await.unwrap(), "new");
    server.write_all(b"kept").await.unwrap();
    let mut kept = [0; 4];
    client.read_exact(&mut kept).await.unwrap();

    // A new listen address needs a restart: reported, not applied.
    std::fs::write(
        &path,
        format!(
            "listen = [\"127.0.0.1:1\"]\n{}",
            route("new", &["new.test"], &[new.addr])
        ),
    )
    .unwrap();
    router.signal("HUP");
    router.line_async("a restart is needed").await;
    assert_eq!(backend_for(&ca, router.addr, "new.test").await.unwrap(), "new");

    std::fs::write(&path, "listen = [\"127.0.0.1:0\"]\n[[route]]\nbogus = 1\n").unwrap();
    router.signal("HUP");
    let refused = router.line_async("configuration refused").await;
    assert!(refused.contains("bogus"), "{refused}");
    assert_eq!(backend_for(&ca, router.addr, "new.test").await.unwrap(), "new");
}

/// A container configured by environment alone; and the precedence
/// defaults < file < environment < flags.
#[tokio::test]
async fn environment_variables_configure_the_router() {
    let ca = Ca::new();
    let from_env = TlsBackend::start(&ca, "env.test", "env").await;
    let from_file = TlsBackend::start(&ca, "file.test", "file").await;
    let router = RouterProcess::start_with_env(
        &[],
        &[
            ("SNIGATE_ROUTER_LISTEN", "127.0.0.1:0"),
            ("SNIGATE_ROUTER_ROUTES", &format!("env.test={}", from_env.addr)),
            ("SNIGATE_ROUTER_LOG_FORMAT", "json"),
        ],
    );
    assert_eq!(backend_for(&ca, router.addr, "env.test").await.unwrap(), "env");
    assert!(
        router.line_async("connection closed").await.starts_with('{'),
        "JSON from the environment"
    );
    drop(router);

    // File sets listen to a taken port; the environment overrides it; a flag
    // overrides the environment's log format.
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let dir = TempDir::new();
    let path = dir.path("router.toml");
    std::fs::write(
        &path,
        format!(
            "listen = [\"{}\"]\n{}",
            taken.local_addr().unwrap(),
            route("file", &["file.test"], &[from_file.addr])
        ),
    )
    .unwrap();
    let router = RouterProcess::start_with_env(
        &["--log-format", "text"],
        &[
            ("SNIGATE_ROUTER_CONFIG", path.to_str().unwrap()),
            ("SNIGATE_ROUTER_LISTEN", "127.0.0.1:0"),
            ("SNIGATE_ROUTER_LOG_FORMAT", "json"),
        ],
    );
    assert_ne!(router.addr, taken.local_addr().unwrap());
    assert_eq!(backend_for(&ca, router.addr, "file.test").await.unwrap(), "file");
    assert!(
        !router.line_async("connection closed").await.starts_with('{'),
        "the flag wins over the environment"
    );

    // Errors name the variable.
    for (var, value, expected) in [
        (
            "SNIGATE_ROUTER_LISTEN",
            "nowhere",
            "environment variable SNIGATE_ROUTER_LISTEN",
        ),
        (
            "SNIGATE_ROUTER_LISTN",
            "127.0.0.1:0",
            "environment variable SNIGATE_ROUTER_LISTN: unknown variable",
        ),
        (
            "SNIGATE_ROUTER_ROUTES",
            "a.test",
            "environment variable SNIGATE_ROUTER_ROUTES",
        ),
    ] {
        let output = Command::new(BIN).arg("check").env(var, value).output().unwrap();
        assert_eq!(output.status.code(), Some(78), "{var}={value}");
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(stderr.contains(expected), "{stderr}");
    }
}

/// The admin server as probes and scrapers reach it: curl, a real HTTP client.
#[tokio::test]
async fn the_admin_server_answers_curl() {
    let Some(curl) = tool("curl", "curl") else { return };
    let mut router = RouterProcess::start(&[
        "--listen",
        "127.0.0.1:0",
        "--admin",
        "[::1]:0",
        "--route",
        "a.test=127.0.0.1:9",
    ]);
    let line = router.line_async("listening on http").await;
    let admin = address_prefix(line.split("listening on http ").nth(1).unwrap());
    assert!(admin.starts_with("[::1]:"), "admin on IPv6: {admin}");
    for (path, status, body) in [
        ("/healthz", "200", "ok"),
        ("/readyz", "200", "ready"),
        ("/metrics", "200", "snigate_router_connections_accepted_total 0"),
        ("/routes", "200", "\"name\": \"a.test\""),
        ("/missing", "404", "not found"),
    ] {
        let output = Command::new(&curl)
            .args(["-sS", "-w", "\n%{http_code}", &format!("http://{admin}{path}")])
            .output()
            .unwrap();
        let out = String::from_utf8_lossy(&output.stdout);
        assert!(out.trim_end().ends_with(status), "{path}: {out}");
        assert!(out.contains(body), "{path}: {out}");
    }
    router.signal("TERM");
    assert!(router.wait(Duration::from_secs(10)).await.success());
}
