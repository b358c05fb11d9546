//! Watching files for change by polling their identity.
//!
//! A file's identity is where its path resolves to, and the resolved file's
//! inode, size and modification time (for a directory, also its entry names).
//! Polling that, rather than using inotify, sees Kubernetes' atomic swap of a
//! mounted ConfigMap's or Secret's `..data` symlink like any other change, works
//! on every filesystem and sandbox (inotify on a symlink swap does not), and
//! costs a few `stat` calls per interval.

use std::path::{Path, PathBuf};
use std::time::SystemTime;

/// The identities of a set of paths; compare two to see whether any changed.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Fingerprint(Vec<Option<Identity>>);

impl Fingerprint {
    pub fn of(paths: &[PathBuf]) -> Self {
        Self(paths.iter().map(|path| identity(path)).collect())
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
struct Identity {
    resolved: PathBuf,
    inode: u64,
    len: u64,
    modified: Option<SystemTime>,
    entries: Vec<String>,
}

fn identity(path: &Path) -> Option<Identity> {
    use std::os::unix::fs::MetadataExt;
    let resolved = std::fs::canonicalize(path).ok()?;
    let meta = std::fs::metadata(&resolved).ok()?;
    // Names as well as the directory's mtime: some filesystems keep mtimes coarse.
    let mut entries = Vec::new();
    if meta.is_dir()
        && let Ok(dir) = std::fs::read_dir(&resolved)
    {
        entries = dir
            .filter_map(Result::ok)
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .collect();
        entries.sort();
    }
    Some(Identity {
        inode: meta.ino(),
        len: meta.len(),
        modified: meta.modified().ok(),
        resolved,
        entries,
    })
}

#[cfg(test)]
mod tests {
    use super::Fingerprint;

    #[test]
    fn a_symlink_swap_changes_the_fingerprint() {
        let dir = std::env::temp_dir().join(format!("snigate-watch-{}", std::process::id()));
        std::fs::create_dir_all(dir.join("..v1")).unwrap();
        std::fs::create_dir_all(dir.join("..v2")).unwrap();
        std::fs::write(dir.join("..v1/f"), "same").unwrap();
        std::fs::write(dir.join("..v2/f"), "same").unwrap();
        std::os::unix::fs::symlink("..v1", dir.join("..data")).unwrap();
        std::os::unix::fs::symlink("..data/f", dir.join("f")).unwrap();
        let watched = [dir.join("f")];
        let before = Fingerprint::of(&watched);
        assert_eq!(before, Fingerprint::of(&watched));
        std::os::unix::fs::symlink("..v2", dir.join("..tmp")).unwrap();
        std::fs::rename(dir.join("..tmp"), dir.join("..data")).unwrap();
        assert_ne!(before, Fingerprint::of(&watched), "same content, new file");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
