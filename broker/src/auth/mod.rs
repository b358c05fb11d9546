//! Who may connect: the password file and the anonymous policy.

pub mod acl;
pub mod passwd;

use passwd::PasswordFile;

/// The credentials in force.
#[derive(Debug, Clone, Default)]
pub struct Auth {
    pub passwords: Option<PasswordFile>,
    pub allow_anonymous: bool,
    /// Access control; `None` lets every client read and write everything.
    pub acl: Option<acl::Acl>,
}

/// Why a CONNECT was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// No user name, and anonymous clients are not allowed.
    Anonymous,
    /// A user name with a wrong password, or one not in the file.
    BadCredentials,
}

impl Refusal {
    pub fn label(&self) -> &'static str {
        match self {
            Refusal::Anonymous => "anonymous",
            Refusal::BadCredentials => "bad_credentials",
        }
    }
}

impl Auth {
    /// Mosquitto 2.0's rules: a client without a user name is anonymous; one
    /// with a user name must match the password file (when there is one).
    pub fn check(&self, login: Option<(&str, &[u8])>) -> Result<(), Refusal> {
        match (login, &self.passwords) {
            (None, _) if self.allow_anonymous => Ok(()),
            (None, _) => Err(Refusal::Anonymous),
            (Some((user, password)), Some(file)) => {
                if file.verify(user, password) {
                    Ok(())
                } else {
                    Err(Refusal::BadCredentials)
                }
            }
            // A user name but no password file: Mosquitto lets it in only where
            // anonymous clients are allowed.
            (Some(_), None) if self.allow_anonymous => Ok(()),
            (Some(_), None) => Err(Refusal::BadCredentials),
        }
    }
}
