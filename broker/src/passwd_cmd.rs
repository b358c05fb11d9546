//! `snigate-broker passwd`: manage a password file the way `mosquitto_passwd`
//! does, writing entries Debian's Mosquitto 2.0 reads too.
//!
//! ```text
//! snigate-broker passwd [-H sha512-pbkdf2|sha512|argon2id] [-c | -D] FILE USER    (prompts)
//! snigate-broker passwd [-H ...] [-c] -b FILE USER PASSWORD
//! snigate-broker passwd -U FILE                                            (hash plain-text lines)
//! ```
//!
//! Other lines (other users, comments) are kept as they are. The prompt asks
//! twice without echo on a terminal; from a pipe it reads two lines.

use std::io::{BufRead, IsTerminal};
use std::path::{Path, PathBuf};

use crate::auth::passwd::{
    PBKDF2_ITERATIONS, hash_argon2id, hash_pbkdf2, hash_sha512, is_hashed, new_salt, random_bytes,
};

/// Hash formats `-H` takes (mosquitto_passwd's names).
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum HashKind {
    /// `$7$`: PBKDF2-HMAC-SHA512, Mosquitto 2.0's default.
    #[value(name = "sha512-pbkdf2")]
    Sha512Pbkdf2,
    /// `$6$`: salted SHA-512, for old readers only.
    #[value(name = "sha512")]
    Sha512,
    /// `$argon2id$`: Mosquitto 2.1's default (m=47104 KiB, t=1, p=1). Debian's
    /// Mosquitto 2.0 cannot read it.
    #[value(name = "argon2id")]
    Argon2id,
}

/// The subcommand's arguments, as mosquitto_passwd takes them.
#[derive(Debug, clap::Args)]
pub struct PasswdArgs {
    /// Create the file, replacing one that exists.
    #[arg(short = 'c', conflicts_with_all = ["delete", "upgrade"])]
    pub create: bool,
    /// Take the password from the command line (visible to other users of the
    /// machine: prefer the prompt).
    #[arg(short = 'b', conflicts_with_all = ["delete", "upgrade"])]
    pub batch: bool,
    /// Delete the user.
    #[arg(short = 'D', conflicts_with = "upgrade")]
    pub delete: bool,
    /// Hash every plain-text `user:password` line of the file.
    #[arg(short = 'U')]
    pub upgrade: bool,
    /// Hash format for new entries.
    #[arg(short = 'H', value_enum, default_value = "sha512-pbkdf2")]
    pub hash: HashKind,
    pub file: PathBuf,
    pub user: Option<String>,
    pub password: Option<String>,
}

/// Run the subcommand; the error is the message to print.
pub fn run(args: PasswdArgs) -> Result<(), String> {
    let existing = if args.create {
        String::new()
    } else {
        std::fs::read_to_string(&args.file).map_err(|e| format!("{}: cannot read: {e}", args.file.display()))?
    };
    let updated = if args.upgrade {
        if args.user.is_some() {
            return Err("-U takes only the file".into());
        }
        upgrade(&existing, args.hash)?
    } else {
        let user = args.user.as_deref().ok_or("a user name is needed")?;
        check_user(user)?;
        if args.delete {
            let (text, found) = without_user(&existing, user);
            if !found {
                return Err(format!("user `{user}` is not in {}", args.file.display()));
            }
            text
        } else {
            let password = match (args.batch, args.password) {
                (true, Some(password)) => password,
                (true, None) => return Err("-b needs a password".into()),
                (false, Some(_)) => return Err("a password on the command line needs -b".into()),
                (false, None) => prompt()?,
            };
            with_user(&existing, user, &entry(password.as_bytes(), args.hash)?)
        }
    };
    write(&args.file, &updated)
}

fn check_user(user: &str) -> Result<(), String> {
    if user.is_empty() || user.contains(':') || user.chars().any(char::is_control) {
        return Err(format!(
            "`{user}` cannot be a user name (empty, `:` or a control character)"
        ));
    }
    Ok(())
}

fn entry(password: &[u8], kind: HashKind) -> Result<String, String> {
    Ok(match kind {
        HashKind::Sha512Pbkdf2 => hash_pbkdf2(password, &new_salt()?, PBKDF2_ITERATIONS),
        HashKind::Sha512 => hash_sha512(password, &new_salt()?),
        HashKind::Argon2id => hash_argon2id(password, &random_bytes(64)?)?,
    })
}

/// `text` with `user`'s line replaced by (or, if absent, followed by) the new one.
fn with_user(text: &str, user: &str, hash: &str) -> String {
    let line = format!("{user}:{hash}");
    let (mut out, found) = map_user(text, user, Some(&line));
    if !found {
        out.push_str(&line);
        out.push('\n');
    }
    out
}

fn without_user(text: &str, user: &str) -> (String, bool) {
    map_user(text, user, None)
}

fn map_user(text: &str, user: &str, replacement: Option<&str>) -> (String, bool) {
    let mut out = String::with_capacity(text.len() + 200);
    let mut found = false;
    for line in text.lines() {
        if line.split_once(':').is_some_and(|(u, _)| u == user) {
            found = true;
            if let Some(replacement) = replacement {
                out.push_str(replacement);
                out.push('\n');
            }
        } else {
            out.push_str(line);
            out.push('\n');
        }
    }
    (out, found)
}

fn upgrade(text: &str, kind: HashKind) -> Result<String, String> {
    let mut out = String::with_capacity(text.len() * 2);
    for line in text.lines() {
        match line.split_once(':') {
            Some((user, stored)) if !line.starts_with('#') && !is_hashed(stored) => {
                out.push_str(&format!("{user}:{}\n", entry(stored.as_bytes(), kind)?));
            }
            _ => {
                out.push_str(line);
                out.push('\n');
            }
        }
    }
    Ok(out)
}

/// The password, twice: without echo on a terminal, as two lines from a pipe.
fn prompt() -> Result<String, String> {
    let (first, second) = if std::io::stdin().is_terminal() {
        let ask = |prompt: &str| rpassword::prompt_password(prompt).map_err(|e| format!("reading the password: {e}"));
        (ask("Password: ")?, ask("Reenter password: ")?)
    } else {
        let mut lines = std::io::stdin().lock().lines();
        let mut next = || -> Result<String, String> {
            lines
                .next()
                .ok_or("no password on standard input")?
                .map_err(|e| format!("reading the password: {e}"))
        };
        (next()?, next()?)
    };
    if first != second {
        return Err("Passwords do not match.".into());
    }
    Ok(first)
}

/// Write in place: a file bind-mounted into a container cannot be replaced by
/// a rename, only rewritten.
fn write(path: &Path, text: &str) -> Result<(), String> {
    std::fs::write(path, text).map_err(|e| format!("{}: cannot write: {e}", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn users_are_replaced_added_and_removed_keeping_other_lines() {
        let text = "# a comment\nalice:$7$old\nbob:$7$b\n";
        let added = with_user(text, "carol", "$7$c");
        assert_eq!(added, "# a comment\nalice:$7$old\nbob:$7$b\ncarol:$7$c\n");
        let replaced = with_user(text, "alice", "$7$new");
        assert_eq!(replaced, "# a comment\nalice:$7$new\nbob:$7$b\n");
        let (removed, found) = without_user(text, "bob");
        assert!(found);
        assert_eq!(removed, "# a comment\nalice:$7$old\n");
        assert!(!without_user(text, "nobody").1);
    }

    #[test]
    fn upgrade_hashes_only_plain_lines() {
        let out = upgrade("# c\nplain:secret\nhashed:$7$101$x$y\n", HashKind::Sha512Pbkdf2).unwrap();
        let lines: Vec<&str> = out.lines().collect();
        assert_eq!(lines[0], "# c");
        assert!(lines[1].starts_with("plain:$7$101$"), "{out}");
        assert_eq!(lines[2], "hashed:$7$101$x$y");
        let (file, _) = crate::auth::passwd::PasswordFile::parse(&out);
        assert!(file.verify("plain", b"secret"));
    }

    #[test]
    fn user_names_are_checked() {
        assert!(check_user("a:b").is_err());
        assert!(check_user("").is_err());
        assert!(check_user("ok-user").is_ok());
    }
}
