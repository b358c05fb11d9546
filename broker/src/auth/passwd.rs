//! Mosquitto password files: parse and verify (pure).
//!
//! One `user:hash` per line, as `mosquitto_passwd` writes them:
//! - `$7$<iterations>$<salt>$<hash>`: PBKDF2-HMAC-SHA512, 64-byte hash
//!   (Mosquitto 2.0's default, 101 iterations, 12-byte salt);
//! - `$6$<salt>$<hash>`: SHA-512 over the password then the salt (older files);
//! - `$argon2id$v=19$m=<KiB>,t=<passes>,p=<lanes>$<salt>$<hash>`: Argon2id in
//!   libargon2's encoded form (Mosquitto 2.1's default: m=47104, t=1, p=1,
//!   64-byte salt and hash; salt and hash in base64 without padding).
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
    Argon2id {
        params: Argon2Params,
        salt: Vec<u8>,
        hash: Vec<u8>,
    },
}

/// Argon2id costs, as the encoded form gives them.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug)]
struct Argon2Params {
    memory_kib: u32,
    passes: u32,
    lanes: u32,
}

/// Costs above these are refused: a hostile file must not make one login take
/// gigabytes or minutes (Mosquitto 2.1's own are m=47104, t=1, p=1).
const MAX_ARGON2_MEMORY_KIB: u32 = 1 << 20;
const MAX_ARGON2_PASSES: u32 = 16;
const MAX_ARGON2_LANES: u32 = 8;

impl fmt::Debug for Hash {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Hashes are secrets too.
        match self {
            Hash::Sha512 { .. } => f.write_str("$6$MASKED"),
            Hash::Pbkdf2Sha512 { iterations, .. } => write!(f, "$7${iterations}$MASKED"),
            Hash::Argon2id { params, .. } => {
                write!(
                    f,
                    "$argon2id$m={},t={},p={}$MASKED",
                    params.memory_kib, params.passes, params.lanes
                )
            }
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
            Hash::Argon2id { params, salt, hash } => (8u8, salt, hash, *params).hash(&mut hasher),
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

/// A fresh random salt of Mosquitto's length for `$7$` and `$6$` (12 bytes).
pub fn new_salt() -> Result<Vec<u8>, String> {
    random_bytes(SALT_LEN)
}

/// `len` random bytes (Mosquitto 2.1's argon2id salts are 64).
pub fn random_bytes(len: usize) -> Result<Vec<u8>, String> {
    let mut salt = vec![0u8; len];
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
    if let Some(encoded) = stored.strip_prefix("$argon2id$") {
        return parse_argon2id(encoded).map(|hash| (user, hash));
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

/// `v=19$m=..,t=..,p=..$salt$hash`, after the `$argon2id$` prefix.
fn parse_argon2id(encoded: &str) -> Result<Hash, String> {
    use base64::engine::general_purpose::STANDARD_NO_PAD;
    let fields: Vec<&str> = encoded.split('$').collect();
    let ["v=19", costs, salt, hash] = fields.as_slice() else {
        return Err("argon2id entry is not `$argon2id$v=19$m=..,t=..,p=..$salt$hash`".into());
    };
    let mut params = Argon2Params {
        memory_kib: 0,
        passes: 0,
        lanes: 0,
    };
    for cost in costs.split(',') {
        let (name, value) = cost.split_once('=').ok_or_else(|| format!("argon2id cost `{cost}`"))?;
        let value: u32 = value
            .parse()
            .map_err(|_| format!("argon2id cost `{cost}` is not a number"))?;
        match name {
            "m" => params.memory_kib = value,
            "t" => params.passes = value,
            "p" => params.lanes = value,
            _ => return Err(format!("argon2id cost `{name}` is unknown")),
        }
    }
    let in_range = (8..=MAX_ARGON2_MEMORY_KIB).contains(&params.memory_kib)
        && (1..=MAX_ARGON2_PASSES).contains(&params.passes)
        && (1..=MAX_ARGON2_LANES).contains(&params.lanes);
    if !in_range {
        return Err(format!(
            "argon2id costs m={},t={},p={} out of range (m <= {MAX_ARGON2_MEMORY_KIB}, t <= {MAX_ARGON2_PASSES}, p <= {MAX_ARGON2_LANES})",
            params.memory_kib, params.passes, params.lanes
        ));
    }
    let decode = |what: &str, b64: &str| {
        STANDARD_NO_PAD
            .decode(b64)
            .map_err(|e| format!("argon2id {what} is not base64: {e}"))
    };
    let (salt, hash) = (decode("salt", salt)?, decode("hash", hash)?);
    if salt.len() < 8 || !(4..=64).contains(&hash.len()) {
        return Err("argon2id salt or hash has a length out of range".into());
    }
    Ok(Hash::Argon2id { params, salt, hash })
}

/// An `$argon2id$` entry with Mosquitto 2.1's costs (m=47104 KiB, t=1, p=1,
/// 64-byte hash) and the given salt (Mosquitto uses 64 random bytes).
pub fn hash_argon2id(password: &[u8], salt: &[u8]) -> Result<String, String> {
    use base64::engine::general_purpose::STANDARD_NO_PAD;
    let params = Argon2Params {
        memory_kib: 47104,
        passes: 1,
        lanes: 1,
    };
    let hash = argon2id(password, salt, params, 64).ok_or("argon2id failed")?;
    Ok(format!(
        "$argon2id$v=19$m={},t={},p={}${}${}",
        params.memory_kib,
        params.passes,
        params.lanes,
        STANDARD_NO_PAD.encode(salt),
        STANDARD_NO_PAD.encode(hash)
    ))
}

fn argon2id(password: &[u8], salt: &[u8], params: Argon2Params, len: usize) -> Option<Vec<u8>> {
    let params = argon2::Params::new(params.memory_kib, params.passes, params.lanes, Some(len)).ok()?;
    let argon2 = argon2::Argon2::new(argon2::Algorithm::Argon2id, argon2::Version::V0x13, params);
    let mut out = vec![0u8; len];
    argon2.hash_password_into(password, salt, &mut out).ok()?;
    Some(out)
}

fn check(stored: &Hash, password: &[u8]) -> bool {
    let computed: Vec<u8> = match stored {
        Hash::Argon2id { params, salt, hash } => match argon2id(password, salt, *params, hash.len()) {
            Some(out) => out,
            None => return false,
        },
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
        Hash::Sha512 { hash, .. } | Hash::Pbkdf2Sha512 { hash, .. } | Hash::Argon2id { hash, .. } => hash,
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

    /// Vectors from the reference Argon2 implementation (Debian's `argon2`
    /// 0~20171227, the libargon2 Mosquitto 2.1 links):
    /// `echo -n password | argon2 somesalt12345678 -id -t 1 -m 15 -p 1 -l 64 -e`
    /// and the same with `-k 47104` (Mosquitto 2.1's costs).
    const ARGON2_M32768: &str = "$argon2id$v=19$m=32768,t=1,p=1$c29tZXNhbHQxMjM0NTY3OA$RpPO16zv6npgwZNSt4bbOrmdlNEs+fumfSIlqhyNZZUWqU9rk2yWIH5BmgKTBPU1hZss6hPizyJ6hEvhY76QMQ";
    const ARGON2_MOSQUITTO: &str = "$argon2id$v=19$m=47104,t=1,p=1$c29tZXNhbHQxMjM0NTY3OA$ns/n3yd+zGmzC/SQ7lum+pXtgpqEQaaKYY2/4Xu6yFK6i5vTf7mAqpaxGYnIs+nMhqapdDAsUDgtYcv5MRF6cQ";

    #[test]
    fn argon2id_entries_verify_against_reference_vectors() {
        let (file, warnings) = PasswordFile::parse(&format!("a:{ARGON2_M32768}\nb:{ARGON2_MOSQUITTO}\n"));
        assert!(warnings.is_empty(), "{warnings:?}");
        assert!(file.verify("a", b"password"));
        assert!(file.verify("b", b"password"));
        assert!(!file.verify("a", b"Password"));
        assert_eq!(
            hash_argon2id(b"password", b"somesalt12345678").unwrap(),
            ARGON2_MOSQUITTO
        );
    }

    #[test]
    fn hostile_argon2id_costs_are_refused() {
        let (_, warnings) = PasswordFile::parse("x:$argon2id$v=19$m=99999999,t=1,p=1$c29tZXNhbHQxMjM0NTY3OA$AAAA\n");
        assert!(warnings[0].message.contains("out of range"), "{warnings:?}");
        let (_, warnings) = PasswordFile::parse("x:$argon2id$v=16$m=8,t=1,p=1$a$b\n");
        assert!(warnings[0].message.contains("is not"), "{warnings:?}");
    }

    #[test]
    fn hashes_are_masked_in_debug_output() {
        let (file, _) = PasswordFile::parse(FILE);
        let debug = format!("{file:?}");
        assert!(debug.contains("MASKED") && !debug.contains("=="), "{debug}");
    }
}
