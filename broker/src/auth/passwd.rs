//! Mosquitto password files: parse and verify (pure).
//!
//! One `user:hash` per line, as `mosquitto_passwd` writes them:
//! - `$7$<iterations>$<salt>$<hash>`: PBKDF2-HMAC-SHA512, 64-byte hash
//!   (Mosquitto 2.0's default, 101 iterations, 12-byte salt);
//! - `$6$<salt>$<hash>`: SHA-512 over the password then the salt (older files).
//!
//! Salts and hashes are standard base64. A malformed line drops only that user,
//! with a warning naming the line, as Mosquitto does; the rest of the file loads.
//! Comparison is constant-time.

use std::collections::HashMap;
use std::fmt;
use std::path::Path;

use base64::Engine;
use base64::engine::general_purpose::STANDARD as BASE64;
use sha2::{Digest, Sha512};
use subtle::ConstantTimeEq;

/// PBKDF2 iterations above this are refused: a hostile file must not make each
/// login cost seconds of CPU.
const MAX_ITERATIONS: u32 = 1_000_000;

/// One user's stored hash.
#[derive(Clone, PartialEq, Eq)]
enum Hash {
    Sha512 {
        salt: Vec<u8>,
        hash: Vec<u8>,
    },
    Pbkdf2Sha512 {
        iterations: u32,
        salt: Vec<u8>,
        hash: Vec<u8>,
    },
}

impl fmt::Debug for Hash {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Hashes are secrets too.
        match self {
            Hash::Sha512 { .. } => f.write_str("$6$MASKED"),
            Hash::Pbkdf2Sha512 { iterations, .. } => write!(f, "$7${iterations}$MASKED"),
        }
    }
}

/// A problem with one line; the line's user is left out.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LineWarning {
    pub line: usize,
    pub message: String,
}

/// The users of a password file.
#[derive(Debug, Clone, Default)]
pub struct PasswordFile {
    users: HashMap<String, Hash>,
}

impl PasswordFile {
    /// Parse file text. Returns the users and one warning per skipped line.
    pub fn parse(text: &str) -> (Self, Vec<LineWarning>) {
        let mut users = HashMap::new();
        let mut warnings = Vec::new();
        for (index, raw) in text.lines().enumerate() {
            let line = raw.trim_end_matches('\r');
            if line.trim().is_empty() || line.starts_with('#') {
                continue;
            }
            match parse_line(line) {
                Ok((user, hash)) => {
                    if users.insert(user.to_owned(), hash).is_some() {
                        warnings.push(LineWarning {
                            line: index + 1,
                            message: format!("user `{user}` appears again; this line wins"),
                        });
                    }
                }
                Err(message) => warnings.push(LineWarning {
                    line: index + 1,
                    message,
                }),
            }
        }
        (Self { users }, warnings)
    }

    /// Read and parse `path`, logging a warning per skipped line.
    /// Read and parse `path`. Lines that do not parse come back as warnings;
    /// the caller decides: at start they are logged and those users left out
    /// (as Mosquitto does), on reload they refuse the whole file.
    pub fn load(path: &Path) -> std::io::Result<(Self, Vec<LineWarning>)> {
        Ok(Self::parse(&std::fs::read_to_string(path)?))
    }

    /// A value that changes when `user`'s entry changes (a new password, or
    /// the user removed: `None`), for finding sessions a reload must end.
    pub fn entry_id(&self, user: &str) -> Option<u64> {
        use std::hash::{Hash as _, Hasher};
        let hash = self.users.get(user)?;
        let mut hasher = std::collections::hash_map::DefaultHasher::new();
        match hash {
            Hash::Sha512 { salt, hash } => (6u8, salt, hash, 0u32).hash(&mut hasher),
            Hash::Pbkdf2Sha512 { iterations, salt, hash } => (7u8, salt, hash, *iterations).hash(&mut hasher),
        }
        Some(hasher.finish())
    }

    pub fn len(&self) -> usize {
        self.users.len()
    }

    pub fn is_empty(&self) -> bool {
        self.users.is_empty()
    }

    /// Whether `password` is `user`'s. Unknown users cost a hash too, so timing
    /// does not tell which users exist.
    pub fn verify(&self, user: &str, password: &[u8]) -> bool {
        match self.users.get(user) {
            Some(hash) => check(hash, password),
            None => {
                let decoy = Hash::Pbkdf2Sha512 {
                    iterations: 101,
                    salt: vec![0; 12],
                    hash: vec![0; 64],
                };
                let _ = check(&decoy, password);
                false
            }
        }
    }
}

/// Mosquitto 2.0's defaults for new `$7$` entries.
pub const PBKDF2_ITERATIONS: u32 = 101;
const SALT_LEN: usize = 12;

/// A `$7$` (PBKDF2-HMAC-SHA512) hash of `password` with `salt`, as
/// mosquitto_passwd writes it.
pub fn hash_pbkdf2(password: &[u8], salt: &[u8], iterations: u32) -> String {
    let mut out = [0u8; 64];
    pbkdf2::pbkdf2_hmac::<Sha512>(password, salt, iterations, &mut out);
    format!("$7${iterations}${}${}", BASE64.encode(salt), BASE64.encode(out))
}

/// A `$6$` (salted SHA-512) hash, the format older Mosquitto wrote.
pub fn hash_sha512(password: &[u8], salt: &[u8]) -> String {
    let mut digest = Sha512::new();
    digest.update(password);
    digest.update(salt);
    format!("$6${}${}", BASE64.encode(salt), BASE64.encode(digest.finalize()))
}

/// A fresh random salt of Mosquitto's length.
pub fn new_salt() -> Result<[u8; SALT_LEN], String> {
    let mut salt = [0u8; SALT_LEN];
    getrandom::fill(&mut salt).map_err(|e| format!("no randomness for a salt: {e}"))?;
    Ok(salt)
}

/// Whether a file line's stored part is already a hash (for `-U`).
pub fn is_hashed(stored: &str) -> bool {
    stored.starts_with("$6$") || stored.starts_with("$7$") || stored.starts_with("$argon2id$")
}

fn parse_line(line: &str) -> Result<(&str, Hash), String> {
    let (user, stored) = line.split_once(':').ok_or("no `:` between user and hash")?;
    if user.is_empty() {
        return Err("empty user name".into());
    }
    let decode = |what: &str, b64: &str| BASE64.decode(b64).map_err(|e| format!("{what} is not base64: {e}"));
    let fields: Vec<&str> = stored.split('$').collect();
    let hash = match fields.as_slice() {
        ["", "6", salt, hash] => Hash::Sha512 {
            salt: decode("salt", salt)?,
            hash: decode("hash", hash)?,
        },
        ["", "7", iterations, salt, hash] => {
            let iterations: u32 = iterations
                .parse()
                .map_err(|_| format!("iterations `{iterations}` is not a number"))?;
            if iterations == 0 || iterations > MAX_ITERATIONS {
                return Err(format!("iterations {iterations} out of range 1..={MAX_ITERATIONS}"));
            }
            Hash::Pbkdf2Sha512 {
                iterations,
                salt: decode("salt", salt)?,
                hash: decode("hash", hash)?,
            }
        }
        ["", kind, ..] => return Err(format!("unsupported hash type `${kind}$`")),
        _ => return Err("not a mosquitto_passwd hash (plain-text password? run `mosquitto_passwd -U`)".into()),
    };
    match &hash {
        Hash::Sha512 { hash, .. } | Hash::Pbkdf2Sha512 { hash, .. } if hash.len() != 64 => {
            Err(format!("hash is {} bytes, not 64", hash.len()))
        }
        _ => Ok((user, hash)),
    }
}

fn check(stored: &Hash, password: &[u8]) -> bool {
    let computed: Vec<u8> = match stored {
        Hash::Sha512 { salt, .. } => {
            let mut digest = Sha512::new();
            digest.update(password);
            digest.update(salt);
            digest.finalize().to_vec()
        }
        Hash::Pbkdf2Sha512 { iterations, salt, .. } => {
            let mut out = [0u8; 64];
            pbkdf2::pbkdf2_hmac::<Sha512>(password, salt, *iterations, &mut out);
            out.to_vec()
        }
    };
    let expected = match stored {
        Hash::Sha512 { hash, .. } | Hash::Pbkdf2Sha512 { hash, .. } => hash,
    };
    computed.ct_eq(expected).into()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Written by Debian's mosquitto_passwd 2.0.11 (`-b`, default `$7$`), and a
    /// `$6$` line from an older Mosquitto: user `admin`, password `admin`; user
    /// `foo`, password `foo`.
    const FILE: &str = include_str!("testdata/passwd");

    #[test]
    fn verifies_mosquitto_hashes() {
        let (file, warnings) = PasswordFile::parse(FILE);
        assert!(warnings.is_empty(), "{warnings:?}");
        assert!(file.verify("admin", b"admin"));
        assert!(file.verify("foo", b"foo"));
        assert!(file.verify("sha", b"sha"));
        assert!(!file.verify("admin", b"Admin"));
        assert!(!file.verify("admin", b""));
        assert!(!file.verify("nobody", b"admin"));
    }

    #[test]
    fn a_bad_line_drops_only_that_user() {
        let text = format!("{FILE}broken\nplain:secret\nodd:$9$x$y\nshort:$6$c2FsdA==$aGFzaA==\n:$6$a$b\n");
        let (file, warnings) = PasswordFile::parse(&text);
        assert!(file.verify("admin", b"admin"));
        let lines: Vec<usize> = warnings.iter().map(|w| w.line).collect();
        let first = FILE.lines().count() + 1;
        assert_eq!(lines, (first..first + 5).collect::<Vec<_>>(), "{warnings:?}");
        assert!(warnings[1].message.contains("plain-text"), "{warnings:?}");
        assert!(
            warnings[2].message.contains("unsupported hash type `$9$`"),
            "{warnings:?}"
        );
    }

    #[test]
    fn written_hashes_verify() {
        let salt = [3u8; 12];
        let line = format!(
            "u:{}\nv:{}\n",
            hash_pbkdf2(b"pw", &salt, 101),
            hash_sha512(b"pw6", &salt)
        );
        let (file, warnings) = PasswordFile::parse(&line);
        assert!(warnings.is_empty(), "{warnings:?}");
        assert!(file.verify("u", b"pw") && file.verify("v", b"pw6"));
        assert!(!file.verify("u", b"pw6"));
    }

    #[test]
    fn hashes_are_masked_in_debug_output() {
        let (file, _) = PasswordFile::parse(FILE);
        let debug = format!("{file:?}");
        assert!(debug.contains("MASKED") && !debug.contains("=="), "{debug}");
    }
}
