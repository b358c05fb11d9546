//! Debian's headless Chromium, driven from its command line: a page's DOM
//! as the browser built it, and a screenshot of it.
//!
//! `--dump-dom` serializes the document after the browser parsed it (and
//! after any script ran): text a page escaped comes back escaped, and markup
//! it failed to escape comes back as elements, so the test of escaping reads
//! the browser's answer, not our bytes.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use super::{TempDir, tool};

/// How long one Chromium run may take before the test gives up on it.
const TIMEOUT: Duration = Duration::from_secs(60);

pub struct Chromium {
    program: PathBuf,
    /// A profile of its own, so runs leave nothing in `$HOME`.
    profile: TempDir,
}

impl Chromium {
    /// `None` (the test skips) when Chromium is missing outside CI; under CI a
    /// missing Chromium fails the test.
    pub fn find() -> Option<Self> {
        let program = tool("chromium", "chromium")?;
        Some(Self {
            program,
            profile: TempDir::new(),
        })
    }

    fn run(&self, args: &[&str], url: &str) -> String {
        let profile = format!("--user-data-dir={}", self.profile.0.display());
        let mut child = Command::new(&self.program)
            .args([
                "--headless",
                // Root in a container: Chromium's sandbox needs user namespaces.
                "--no-sandbox",
                "--disable-gpu",
                "--no-first-run",
                "--hide-scrollbars",
                &profile,
            ])
            .args(args)
            .arg(url)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {}: {e}", self.program.display()));
        let started = Instant::now();
        loop {
            if child.try_wait().ok().flatten().is_some() {
                break;
            }
            if started.elapsed() > TIMEOUT {
                let _ = child.kill();
                let _ = child.wait();
                panic!("chromium {args:?} {url} did not finish within {TIMEOUT:?}");
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let output = child.wait_with_output().unwrap_or_else(|e| panic!("chromium: {e}"));
        assert!(
            output.status.success(),
            "chromium {args:?} {url}: {}\n{}",
            output.status,
            String::from_utf8_lossy(&output.stderr)
        );
        String::from_utf8_lossy(&output.stdout).into_owned()
    }

    /// The document at `url` as the browser serialized it.
    pub fn dom(&self, url: &str) -> String {
        self.run(&["--dump-dom"], url)
    }

    /// A PNG of `url` at `width` x `height` into `path` (its folder made).
    pub fn screenshot(&self, url: &str, path: &Path, width: u32, height: u32) {
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir).unwrap_or_else(|e| panic!("cannot create {}: {e}", dir.display()));
        }
        let size = format!("--window-size={width},{height}");
        let out = format!("--screenshot={}", path.display());
        self.run(&[&size, &out], url);
        let written = std::fs::metadata(path).map(|m| m.len()).unwrap_or(0);
        assert!(written > 0, "chromium wrote no screenshot to {}", path.display());
    }
}
