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
use toml_parser::lexer::TokenKind as Kind;

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
    /// The byte offset where each line starts: a span's line is a binary
    /// search, not a scan from the top (a route file validates one span per
    /// route and host, and 10,000 routes made the scans quadratic: seconds).
    line_starts: Vec<usize>,
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
        let text = text.into();
        let line_starts = std::iter::once(0)
            .chain(
                text.bytes()
                    .enumerate()
                    .filter(|&(_, b)| b == b'\n')
                    .map(|(i, _)| i + 1),
            )
            .collect();
        Self {
            path: path.into(),
            text,
            line_starts,
        }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The origin of the byte at `offset`, as a 1-based line and column.
    pub fn origin_at(&self, offset: usize) -> Origin {
        let offset = offset.min(self.text.len());
        // The number of lines starting at or before `offset`: its 1-based line.
        let line = self.line_starts.partition_point(|&start| start <= offset);
        let line_start = self.line_starts.get(line.saturating_sub(1)).copied().unwrap_or(0);
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

impl Source {
    /// The file split for deserializing its top-level `[[name]]` tables one at
    /// a time: the rest of the file, deserialized, and where each of those
    /// tables lies (from its header to the next header that is not one of its
    /// own sub-tables), for [`Source::parse_part`]. A whole-document parse of
    /// 10,000 routes peaks at tens of megabytes that the allocator then keeps;
    /// this way only one table's document is alive at a time.
    ///
    /// `None` when the text is not well-formed TOML, or the rest does not
    /// deserialize, or it names `name` too: [`Source::parse`] of the whole file
    /// then reports the error with its line and field, as it always has.
    pub fn parse_split<T: DeserializeOwned>(&self, name: &str) -> Option<(T, Vec<Range<usize>>)> {
        let tables = self.array_tables(name)?;
        if tables.is_empty() {
            return Some((toml::from_str(&self.text).ok()?, tables));
        }
        // The tables cut out. Spans in the rest are then not the file's, which
        // matters to no one: its errors are reported by the whole-document
        // parse, and a `T` that keeps spans is not split (the router's are
        // in its route tables only). Blanking them in place instead would keep
        // the text's length, and toml sizes its token buffer by length.
        let cut: usize = tables.iter().map(ExactSizeIterator::len).sum();
        let mut rest = String::with_capacity(self.text.len().saturating_sub(cut) + tables.len());
        let mut at = 0;
        for table in &tables {
            rest.push_str(self.text.get(at..table.start)?);
            rest.push('\n');
            at = table.end;
        }
        rest.push_str(self.text.get(at..)?);
        // `name` given both ways is an error that only the whole document shows.
        let keys: toml::Table = toml::from_str(&rest).ok()?;
        if keys.contains_key(name) {
            return None;
        }
        Some((toml::from_str(&rest).ok()?, tables))
    }

    /// Deserialize the text in `range` (one of [`Source::parse_split`]'s
    /// tables) as a document of its own. Spans in what it returns are relative
    /// to `range.start`. `None` on any error: the whole file's parse reports it.
    pub fn parse_part<T: DeserializeOwned>(&self, range: Range<usize>) -> Option<T> {
        toml::from_str(self.text.get(range)?).ok()
    }

    /// Where the top-level `[[name]]` tables lie, from toml's lexer: strings
    /// and comments are single tokens, so a `[` seen here is syntax, and one
    /// first on its line outside any value opens a table header. Streamed
    /// token by token: toml's parser would first collect a token vector, 6 MB
    /// for a 1 MB file.
    fn array_tables(&self, name: &str) -> Option<Vec<Range<usize>>> {
        let mut tokens = toml_parser::Source::new(&self.text).lex();
        let mut tables = Vec::new();
        // Where the `[[name]]` table being collected starts.
        let mut open: Option<usize> = None;
        // `[` and `{` of values not yet closed.
        let mut depth = 0usize;
        let mut line_start = true;
        while let Some(token) = tokens.next() {
            match token.kind() {
                Kind::Newline if depth == 0 => line_start = true,
                Kind::Newline | Kind::Whitespace | Kind::Comment => {}
                Kind::LeftSquareBracket if line_start => {
                    let start = token.span().start();
                    let header = self.table_header(&mut tokens, name)?;
                    if header.named && header.array && header.keys == 1 {
                        if let Some(previous) = open.replace(start) {
                            tables.push(previous..start);
                        }
                    } else if !header.named
                        && let Some(previous) = open.take()
                    {
                        tables.push(previous..start);
                    }
                    // Else `[name.sub]` or `[[name.sub]]`: part of the table
                    // being collected (or, before any, of the rest).
                    line_start = false;
                }
                Kind::LeftSquareBracket | Kind::LeftCurlyBracket => {
                    depth += 1;
                    line_start = false;
                }
                Kind::RightSquareBracket | Kind::RightCurlyBracket => depth = depth.checked_sub(1)?,
                Kind::Eof => break,
                _ => line_start = false,
            }
        }
        if depth != 0 {
            return None;
        }
        if let Some(start) = open {
            tables.push(start..self.text.len());
        }
        Some(tables)
    }

    /// The rest of a table header whose first `[` was just read. `None` when
    /// it is not a well-formed header.
    fn table_header(&self, tokens: &mut toml_parser::lexer::Lexer<'_>, name: &str) -> Option<Header> {
        let mut next = tokens.next()?;
        // `[[` only when adjacent.
        let array = next.kind() == Kind::LeftSquareBracket;
        if array {
            next = tokens.next()?;
        }
        let mut header = Header {
            array,
            named: false,
            keys: 0,
        };
        let mut want_key = true;
        loop {
            match next.kind() {
                Kind::Whitespace => {}
                Kind::Atom | Kind::BasicString | Kind::LiteralString if want_key => {
                    if header.keys == 0 {
                        // Compared raw: a key spelt with escapes counts as
                        // another table, which leaves `name` in the rest and
                        // so the whole-document parse.
                        let span = next.span();
                        let raw = self.text.get(span.start()..span.end())?;
                        let unquoted = ['"', '\'']
                            .iter()
                            .find_map(|&q| raw.strip_prefix(q).and_then(|r| r.strip_suffix(q)))
                            .unwrap_or(raw);
                        header.named = unquoted == name;
                    }
                    header.keys += 1;
                    want_key = false;
                }
                Kind::Dot if !want_key => want_key = true,
                Kind::RightSquareBracket if !want_key => {
                    if array && tokens.next()?.kind() != Kind::RightSquareBracket {
                        return None;
                    }
                    return Some(header);
                }
                _ => return None,
            }
            next = tokens.next()?;
        }
    }
}

/// A table header, as far as splitting needs it.
struct Header {
    /// `[[...]]` rather than `[...]`.
    array: bool,
    /// Whether its first key is the name sought: `[[name]]`, `[name.sub]`.
    named: bool,
    keys: usize,
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
    fn array_tables_split_out_one_at_a_time() {
        #[derive(Debug, Deserialize, PartialEq)]
        struct Rest {
            name: String,
            log: toml::Table,
        }
        #[derive(Debug, Deserialize)]
        struct Part {
            item: Vec<toml::Table>,
        }
        let text = "name = \"x\"\n[[item]]\nport = 1\n[item.sub]\nk = '''\n[[item]]'''\n[log]\nlevel = 1\n [[ \"item\" ]] # two\nport = 2\n";
        let source = Source::from_text("t.toml", text);
        let (rest, tables) = source.parse_split::<Rest>("item").unwrap();
        assert_eq!(rest.name, "x");
        assert_eq!(rest.log.get("level").and_then(toml::Value::as_integer), Some(1));
        let parts: Vec<&str> = tables.iter().map(|t| &text[t.clone()]).collect();
        assert_eq!(
            parts,
            [
                "[[item]]\nport = 1\n[item.sub]\nk = '''\n[[item]]'''\n",
                "[[ \"item\" ]] # two\nport = 2\n"
            ]
        );
        let first: Part = source.parse_part(tables[0].clone()).unwrap();
        let sub = first.item[0].get("sub").and_then(|s| s.get("k"));
        assert_eq!(sub.and_then(toml::Value::as_str), Some("[[item]]"));

        // Without tables: the whole document.
        let plain = Source::from_text("t.toml", "name = \"y\"\n[log]\n");
        let (rest, tables) = plain.parse_split::<Rest>("item").unwrap();
        assert_eq!((rest.name.as_str(), tables.len()), ("y", 0));

        // A value error inside a table: found by its own parse.
        let bad_value = Source::from_text("t.toml", "name = \"x\"\n[log]\n[[item]]\nport = \n");
        let (_, tables) = bad_value.parse_split::<Rest>("item").unwrap();
        assert!(bad_value.parse_part::<Part>(tables[0].clone()).is_none());

        // Left to the whole-document parse: malformed text, the array given
        // twice, a rest that does not deserialize.
        for text in [
            "name = \"x\"\n[log]\n[[item]]\nport = 1\n[[item]\n",
            "item = []\nname = \"x\"\n[log]\n[[item]]\n",
            "[log]\n[[item]]\nport = 1\n",
        ] {
            assert!(
                Source::from_text("t.toml", text).parse_split::<Rest>("item").is_none(),
                "{text}"
            );
        }
    }

    #[test]
    fn offsets_become_lines_and_columns() {
        let source = Source::from_text("t.toml", "ab\n\nxé z\n");
        let at = |offset| match source.origin_at(offset) {
            Origin::File { position, .. } => position,
            other => panic!("{other:?}"),
        };
        assert_eq!(at(0), Some((1, 1)));
        assert_eq!(at(2), Some((1, 3)), "the newline ends its own line");
        assert_eq!(at(3), Some((2, 1)), "an empty line");
        assert_eq!(at(4), Some((3, 1)));
        assert_eq!(at(7), Some((3, 3)), "columns count characters, not bytes");
        assert_eq!(at(10), Some((4, 1)), "the end of the text");
        assert_eq!(at(99), Some((4, 1)), "past the end: the end");
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
