//! Configuration loading: TOML text into typed structs, errors that point at the source.
//!
//! A config error is only useful if the operator can find what to fix, so every
//! [`ConfigError`] carries an [`Origin`]: a file with line and column, a command-line
//! flag, or an environment variable, plus the dotted path of the field
//! (`route[1].endpoints[0]`). Schemas live with their component; this module knows
//! none of them.

use std::fmt;
use std::ops::Range;
use std::path::{Path, PathBuf};

use serde::de::DeserializeOwned;

/// The exit status for a configuration error: sysexits' `EX_CONFIG`, which
/// tells a supervisor that restarting will not help.
pub const EXIT_CONFIG: u8 = 78;

/// Where a configuration value came from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Origin {
    /// A file, with a 1-based line and column when the position is known.
    File {
        path: PathBuf,
        position: Option<(usize, usize)>,
    },
    /// A command-line flag, e.g. `--route`.
    Flag(String),
    /// An environment variable, e.g. `SNIGATE_ROUTER_LISTEN`.
    Env(String),
}

impl fmt::Display for Origin {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Origin::File {
                path,
                position: Some((line, column)),
            } => write!(f, "{}:{line}:{column}", path.display()),
            Origin::File { path, position: None } => write!(f, "{}", path.display()),
            Origin::Flag(flag) => write!(f, "flag {flag}"),
            Origin::Env(var) => write!(f, "environment variable {var}"),
        }
    }
}

/// A configuration error: where, which field, and what is wrong.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub struct ConfigError {
    pub origin: Origin,
    /// Dotted path of the offending field, when known (`route[0].hosts[2]`).
    pub field: Option<String>,
    pub message: String,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: ", self.origin)?;
        if let Some(field) = &self.field {
            write!(f, "field `{field}`: ")?;
        }
        f.write_str(&self.message)
    }
}

impl ConfigError {
    pub fn new(origin: Origin, field: Option<String>, message: impl Into<String>) -> Self {
        Self {
            origin,
            field,
            message: message.into(),
        }
    }

    pub fn flag(flag: &str, message: impl Into<String>) -> Self {
        Self::new(Origin::Flag(flag.to_owned()), None, message)
    }

    pub fn env(var: &str, message: impl Into<String>) -> Self {
        Self::new(Origin::Env(var.to_owned()), None, message)
    }
}

/// Whether an environment variable is one Kubernetes injects for a Service
/// (`<NAME>_SERVICE_HOST`, `<NAME>_PORT_443_TCP_ADDR`, ...): a Service named like
/// a component's prefix must not make the component refuse to start.
pub fn is_kubernetes_service_link(name: &str) -> bool {
    name.contains("_SERVICE_") || name.ends_with("_PORT") || name.contains("_PORT_")
}

/// The text of a configuration file, kept so that later validation steps can turn
/// a byte span (from `toml::Spanned`) into a line and column.
#[derive(Debug, Clone)]
pub struct Source {
    path: PathBuf,
    text: String,
}

impl Source {
    pub fn read(path: &Path) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|e| {
            ConfigError::new(
                Origin::File {
                    path: path.to_owned(),
                    position: None,
                },
                None,
                format!("cannot read: {e}"),
            )
        })?;
        Ok(Self::from_text(path, text))
    }

    pub fn from_text(path: impl Into<PathBuf>, text: impl Into<String>) -> Self {
        Self {
            path: path.into(),
            text: text.into(),
        }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The origin of the byte at `offset`, as a 1-based line and column.
    pub fn origin_at(&self, offset: usize) -> Origin {
        let offset = offset.min(self.text.len());
        let before = &self.text.as_bytes()[..offset];
        let line = before.iter().filter(|&&b| b == b'\n').count() + 1;
        let line_start = before.iter().rposition(|&b| b == b'\n').map_or(0, |i| i + 1);
        let column = self.text[line_start..]
            .char_indices()
            .take_while(|(i, _)| line_start + i < offset)
            .count()
            + 1;
        Origin::File {
            path: self.path.clone(),
            position: Some((line, column)),
        }
    }

    /// An error located at `span` in this file.
    pub fn error_at(&self, span: Range<usize>, field: impl Into<String>, message: impl Into<String>) -> ConfigError {
        ConfigError::new(self.origin_at(span.start), Some(field.into()), message)
    }

    /// Deserialize the whole file. Errors carry the file, line, column and the
    /// field path that serde was in when it failed.
    pub fn parse<T: DeserializeOwned>(&self) -> Result<T, ConfigError> {
        let deserializer = toml::Deserializer::parse(&self.text).map_err(|e| self.toml_error(e, None))?;
        serde_path_to_error::deserialize(deserializer).map_err(|e| {
            // toml's `Spanned` shows up as a private path segment: not a field.
            let path = e.path().to_string().replace(".$__serde_spanned_private_value", "");
            // serde_path_to_error renders the root as ".": no field to name then.
            let field = (path != ".").then_some(path);
            self.toml_error(e.into_inner(), field)
        })
    }

    fn toml_error(&self, error: toml::de::Error, field: Option<String>) -> ConfigError {
        let origin = match error.span() {
            Some(span) => self.origin_at(span.start),
            None => Origin::File {
                path: self.path.clone(),
                position: None,
            },
        };
        ConfigError::new(origin, field, error.message().trim_end().to_owned())
    }
}

/// Read and deserialize a TOML file.
pub fn load_toml<T: DeserializeOwned>(path: &Path) -> Result<(T, Source), ConfigError> {
    let source = Source::read(path)?;
    let value = source.parse()?;
    Ok((value, source))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde::Deserialize;

    #[derive(Debug, Deserialize)]
    #[serde(deny_unknown_fields)]
    struct Top {
        #[allow(dead_code)]
        name: String,
        #[serde(default)]
        #[allow(dead_code)]
        item: Vec<Item>,
    }

    #[derive(Debug, Deserialize)]
    #[serde(deny_unknown_fields)]
    struct Item {
        #[allow(dead_code)]
        port: u16,
    }

    fn parse(text: &str) -> Result<Top, ConfigError> {
        Source::from_text("test.toml", text).parse()
    }

    #[test]
    fn unknown_field_names_file_line_and_field() {
        let err = parse("name = \"x\"\n\n[[item]]\nport = 1\n\n[[item]]\nprot = 2\n").unwrap_err();
        let text = err.to_string();
        assert!(text.starts_with("test.toml:7:1: "), "{text}");
        assert!(text.contains("unknown field `prot`"), "{text}");
        assert_eq!(err.field.as_deref(), Some("item[1].prot"), "{text}");
    }

    #[test]
    fn wrong_type_names_the_field() {
        let err = parse("name = \"x\"\n[[item]]\nport = \"eighty\"\n").unwrap_err();
        let text = err.to_string();
        assert!(text.starts_with("test.toml:3:8: field `item[0].port`: "), "{text}");
    }

    #[test]
    fn syntax_error_has_a_position() {
        let err = parse("name = \n").unwrap_err();
        assert!(
            matches!(
                err.origin,
                Origin::File {
                    position: Some((1, _)),
                    ..
                }
            ),
            "{err}"
        );
    }

    #[test]
    fn column_counts_characters_not_bytes() {
        let source = Source::from_text("f", "é = 1\nabc");
        assert_eq!(
            source.origin_at(8),
            Origin::File {
                path: "f".into(),
                position: Some((2, 2))
            }
        );
        assert_eq!(
            source.origin_at(3),
            Origin::File {
                path: "f".into(),
                position: Some((1, 3))
            }
        );
    }
}
