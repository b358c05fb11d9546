//! The README's first command as a newcomer meets it: `snigate-testbed` runs,
//! prints its instructions, and the commands it prints, pasted as printed into
//! the private-hosts shell it prints, publish through the router to broker-a
//! and receive the message, and verify the broker's certificate by its host
//! name. Ctrl-C (SIGINT) then stops it cleanly.
#![allow(clippy::unwrap_used)] // a test binary: unwrap is an assertion

use std::io::{BufRead, BufReader, Write};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use snigate_shared::testing::{TempDir, tool};

const BIN: &str = env!("CARGO_BIN_EXE_snigate-testbed");
const TOPOLOGY: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../config/testbed.toml");
/// Bound on the testbed's start and on running the printed commands.
const WITHIN: Duration = Duration::from_secs(60);

/// The testbed process, interrupted and reaped on drop.
struct Running(Child);

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[test]
fn a_newcomer_follows_the_printed_instructions() {
    let (Some(_), Some(_), Some(_), Some(timeout)) = (
        tool("mosquitto_sub", "mosquitto-clients"),
        tool("openssl", "openssl"),
        tool("unshare", "util-linux"),
        tool("timeout", "coreutils"),
    ) else {
        return;
    };
    // The shipped topology, on ports the system picks: tests run side by side.
    let dir = TempDir::new();
    let shipped = std::fs::read_to_string(TOPOLOGY).unwrap();
    let mut topology = String::new();
    for line in shipped.lines() {
        match line.split_once("\"127.0.0.1:") {
            Some((head, _)) => topology.push_str(&format!("{head}\"127.0.0.1:0\"")),
            None => topology.push_str(line),
        }
        topology.push('\n');
    }
    let config = dir.path("testbed.toml");
    std::fs::write(&config, topology).unwrap();

    let mut testbed = Running(
        Command::new(BIN)
            .arg("--config")
            .arg(&config)
            .arg("--dir")
            .arg(dir.path("bed"))
            .stdout(Stdio::piped())
            .spawn()
            .unwrap(),
    );
    let stdout = testbed.0.stdout.take().unwrap();
    let (lines, printed) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            if lines.send(line).is_err() {
                break;
            }
        }
    });
    let mut text = String::new();
    let deadline = Instant::now() + WITHIN;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        let line = printed
            .recv_timeout(left)
            .unwrap_or_else(|_| panic!("no instructions within {WITHIN:?}; so far:\n{text}"));
        text.push_str(&line);
        text.push('\n');
        if line.contains("Ctrl-C stops everything") {
            break;
        }
    }
    println!("{text}");
    assert!(text.contains("another terminal"), "{text}");
    assert!(text.contains("apt install mosquitto-clients"), "{text}");
    let command = |start: &str| {
        text.lines()
            .map(str::trim)
            .find(|l| l.starts_with(start))
            .unwrap_or_else(|| panic!("no printed command starting {start:?}:\n{text}"))
            .to_owned()
    };
    let private_shell = command("unshare ");
    let publish_and_receive = command("mosquitto_sub ");
    let handshake = command("openssl s_client ");
    assert!(!publish_and_receive.contains("--insecure"), "{publish_and_receive}");

    // The private-hosts shell as printed; the other commands typed into it.
    let mut shell = Command::new(timeout)
        .args([&WITHIN.as_secs().to_string(), "sh", "-c", &private_shell])
        .env("SHELL", "sh")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdin = shell.stdin.take().unwrap();
    writeln!(stdin, "{publish_and_receive}\n{handshake}").unwrap();
    drop(stdin);
    let out = shell.wait_with_output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stdout.lines().any(|l| l == "demo hello"),
        "the subscriber did not print the message:\n{stdout}\n{stderr}"
    );
    assert!(
        format!("{stdout}{stderr}").contains("Verification: OK"),
        "openssl did not verify the broker's certificate:\n{stdout}\n{stderr}"
    );

    // Ctrl-C: everything stops, exit 0.
    let pid = testbed.0.id().to_string();
    let status = Command::new("kill").args(["-INT", &pid]).status().unwrap();
    assert!(status.success());
    let deadline = Instant::now() + WITHIN;
    let status = loop {
        if let Some(status) = testbed.0.try_wait().unwrap() {
            break status;
        }
        assert!(Instant::now() < deadline, "still running {WITHIN:?} after Ctrl-C");
        std::thread::sleep(Duration::from_millis(100));
    };
    assert!(status.success(), "{status}");
}
