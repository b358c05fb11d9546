//! A certificate authority of one's own and server certificates for given host
//! names: what `snigate-broker certs` writes and the testbed uses, so that a
//! client verifies the broker's name (the article's `--insecure`, needed
//! because its image's certificate names acme.com, never is).

use std::path::{Path, PathBuf};
use std::time::{SystemTime, UNIX_EPOCH};

use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair, KeyUsagePurpose,
};

#[derive(Debug, thiserror::Error)]
pub enum CertError {
    #[error("{0}")]
    Generate(#[from] rcgen::Error),
    #[error("{}: {source}", path.display())]
    Io { path: PathBuf, source: std::io::Error },
    #[error("{}: not a CA key: {message}", path.display())]
    BadCa { path: PathBuf, message: String },
}

/// A CA: its certificate and key in PEM, and what signs with them.
pub struct DevCa {
    issuer: Issuer<'static, KeyPair>,
    pub cert_pem: String,
    pub key_pem: String,
}

impl std::fmt::Debug for DevCa {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DevCa").finish_non_exhaustive()
    }
}

/// Validity from the start of this year for `years` years: a clock a little
/// behind (a laptop, a container) still accepts a certificate made today.
fn validity(params: &mut CertificateParams, years: i32) {
    let now = SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs());
    // Mean Gregorian year in seconds: exact enough to name the year.
    let year = 1970 + i32::try_from(now / 31_556_952).unwrap_or(0);
    params.not_before = rcgen::date_time_ymd(year, 1, 1);
    params.not_after = rcgen::date_time_ymd(year + years, 1, 1);
}

impl DevCa {
    /// A new CA named `name`, valid for `years`.
    pub fn generate(name: &str, years: i32) -> Result<Self, CertError> {
        let mut params = CertificateParams::new(Vec::<String>::new())?;
        params.distinguished_name.push(DnType::CommonName, name);
        params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
        params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        validity(&mut params, years);
        let key = KeyPair::generate()?;
        let cert = params.self_signed(&key)?;
        Ok(Self {
            cert_pem: cert.pem(),
            key_pem: key.serialize_pem(),
            issuer: Issuer::new(params, key),
        })
    }

    /// The CA in `dir/ca.crt` and `dir/ca.key`, if both are there.
    pub fn load(dir: &Path) -> Result<Option<Self>, CertError> {
        let (cert_path, key_path) = (dir.join("ca.crt"), dir.join("ca.key"));
        if !cert_path.exists() || !key_path.exists() {
            return Ok(None);
        }
        let read = |path: &Path| {
            std::fs::read_to_string(path).map_err(|source| CertError::Io {
                path: path.to_owned(),
                source,
            })
        };
        let (cert_pem, key_pem) = (read(&cert_path)?, read(&key_path)?);
        let bad = |path: &Path, e: rcgen::Error| CertError::BadCa {
            path: path.to_owned(),
            message: e.to_string(),
        };
        let key = KeyPair::from_pem(&key_pem).map_err(|e| bad(&key_path, e))?;
        let issuer = Issuer::from_ca_cert_pem(&cert_pem, key).map_err(|e| bad(&cert_path, e))?;
        Ok(Some(Self {
            issuer,
            cert_pem,
            key_pem,
        }))
    }

    /// A server certificate (PEM) and its key (PEM, PKCS#8) for `names`, host
    /// names or IP addresses; the first is also the subject's CN.
    pub fn issue_server(&self, names: &[String], years: i32) -> Result<(String, String), CertError> {
        let mut params = CertificateParams::new(names.to_vec())?;
        if let Some(first) = names.first() {
            params.distinguished_name.push(DnType::CommonName, first.as_str());
        }
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature, KeyUsagePurpose::KeyEncipherment];
        validity(&mut params, years);
        let key = KeyPair::generate()?;
        let cert = params.signed_by(&key, &self.issuer)?;
        Ok((cert.pem(), key.serialize_pem()))
    }
}

/// Write `contents` to `path`; keys (`secret`) readable by the owner only.
pub fn write_file(path: &Path, contents: &str, secret: bool) -> Result<(), CertError> {
    let io = |source| CertError::Io {
        path: path.to_owned(),
        source,
    };
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create(true).truncate(true);
    #[cfg(unix)]
    if secret {
        use std::os::unix::fs::OpenOptionsExt;
        options.mode(0o600);
    }
    let mut file = options.open(path).map_err(io)?;
    std::io::Write::write_all(&mut file, contents.as_bytes()).map_err(io)
}

/// What [`write_server_set`] wrote.
#[derive(Debug)]
pub struct Written {
    pub ca_cert: PathBuf,
    /// Whether the CA was made now (else it was `dir/ca.*`, reused).
    pub ca_created: bool,
    /// Per host: certificate and key files.
    pub servers: Vec<(String, PathBuf, PathBuf)>,
}

/// In `dir`: the CA (`ca.crt`, `ca.key`; reused when there, so certificates
/// for another host come from the same CA) and, per host, `HOST.crt` and
/// `HOST.key` naming it (and `extra_names`, e.g. a Service's cluster names).
pub fn write_server_set(
    dir: &Path,
    ca_name: &str,
    hosts: &[String],
    extra_names: &[String],
    years: i32,
) -> Result<Written, CertError> {
    std::fs::create_dir_all(dir).map_err(|source| CertError::Io {
        path: dir.to_owned(),
        source,
    })?;
    let (ca, ca_created) = match DevCa::load(dir)? {
        Some(ca) => (ca, false),
        None => {
            let ca = DevCa::generate(ca_name, years)?;
            write_file(&dir.join("ca.key"), &ca.key_pem, true)?;
            write_file(&dir.join("ca.crt"), &ca.cert_pem, false)?;
            (ca, true)
        }
    };
    let mut servers = Vec::new();
    for host in hosts {
        let mut names = vec![host.clone()];
        names.extend(extra_names.iter().filter(|n| *n != host).cloned());
        let (cert, key) = ca.issue_server(&names, years)?;
        let (cert_path, key_path) = (dir.join(format!("{host}.crt")), dir.join(format!("{host}.key")));
        write_file(&key_path, &key, true)?;
        write_file(&cert_path, &cert, false)?;
        servers.push((host.clone(), cert_path, key_path));
    }
    Ok(Written {
        ca_cert: dir.join("ca.crt"),
        ca_created,
        servers,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_reused_ca_signs_what_it_signed_before() {
        let dir = std::env::temp_dir().join(format!("snigate-certs-{}", std::process::id()));
        let first = write_server_set(&dir, "test CA", &["a.example.test".into()], &[], 1).unwrap();
        assert!(first.ca_created);
        let ca_before = std::fs::read_to_string(&first.ca_cert).unwrap();
        let second = write_server_set(&dir, "test CA", &["b.example.test".into()], &[], 1).unwrap();
        assert!(!second.ca_created, "the CA in the directory is reused");
        assert_eq!(std::fs::read_to_string(&second.ca_cert).unwrap(), ca_before);
        assert!(dir.join("b.example.test.key").exists());
        let _ = std::fs::remove_dir_all(&dir);
    }
}
