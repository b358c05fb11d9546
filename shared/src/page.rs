//! The HTML of the status pages: one self-contained document (its CSS
//! inline, no script, no external asset, since a pod may have no internet)
//! that reloads itself.
//!
//! Every value goes through [`escape`] on its way out, whatever its origin:
//! a page writes what it is given as text, never as markup. The admin server
//! also sends a Content-Security-Policy that allows no script at all, so a
//! slip here could not run one.

use std::fmt::Write as _;
use std::sync::Arc;
use std::time::{Duration, UNIX_EPOCH};

use serde::Serialize;

use crate::admin::Handler;
use crate::status::{Bounded, Refusal, ReloadState, Total};

/// A status page's two handlers, `/` (HTML, written by `render`) and
/// `/status` (JSON), each request built by one call of `build`.
pub fn handlers<S, B, R>(build: B, render: R) -> (Handler, Handler)
where
    S: Serialize,
    B: Fn() -> S + Send + Sync + 'static,
    R: Fn(&S) -> String + Send + Sync + 'static,
{
    let build = Arc::new(build);
    let html: Handler = {
        let build = build.clone();
        Arc::new(move || ("text/html; charset=utf-8", render(&build())))
    };
    let json: Handler = Arc::new(move || {
        let body = serde_json::to_string_pretty(&build()).unwrap_or_else(|e| format!("{{\"error\": \"{e}\"}}"));
        ("application/json", body + "\n")
    });
    (html, json)
}

/// Seconds between the page's own reloads.
pub const REFRESH_SECONDS: u32 = 5;

const STYLE: &str = "
:root { color-scheme: light dark; --ok: #1a7f37; --bad: #cf222e; --muted: #6e7781; --line: #d0d7de; }
body { font: 14px/1.45 system-ui, -apple-system, 'Segoe UI', sans-serif; margin: 1.5rem; max-width: 90rem; }
h1 { font-size: 1.4rem; margin: 0 0 .2rem; }
h2 { font-size: 1.1rem; margin: 1.6rem 0 .4rem; border-bottom: 1px solid var(--line); padding-bottom: .2rem; }
header p, .note { color: var(--muted); margin: .2rem 0; }
table { border-collapse: collapse; width: 100%; }
th, td { text-align: left; padding: .25rem .6rem .25rem 0; border-bottom: 1px solid var(--line); vertical-align: top; }
th { font-weight: 600; white-space: nowrap; }
td.n, th.n { text-align: right; font-variant-numeric: tabular-nums; }
td { overflow-wrap: break-word; }
td.t { white-space: nowrap; }
dl { display: grid; grid-template-columns: max-content 1fr; gap: .15rem 1rem; margin: 0; }
dt { color: var(--muted); }
dd { margin: 0; overflow-wrap: break-word; }
.ok { color: var(--ok); font-weight: 600; }
.bad { color: var(--bad); font-weight: 600; }
.muted { color: var(--muted); }
pre { white-space: pre-wrap; margin: 0; font-size: 13px; }
";

/// `text` with the characters that HTML gives a meaning to replaced by
/// references; safe in text and in quoted attribute values.
pub fn escape(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

/// Unix seconds as `2026-12-08T03:20:00Z`.
pub fn time(unix: u64) -> String {
    humantime::format_rfc3339_seconds(UNIX_EPOCH + Duration::from_secs(unix)).to_string()
}

/// A size in bytes, KiB or MiB, as a person reads it.
pub fn bytes(n: u64) -> String {
    // Display only: the fraction's precision does not matter.
    #[allow(clippy::cast_precision_loss)]
    let scaled = |shift: u32| n as f64 / f64::from(1u32 << shift);
    match n {
        0..1024 => format!("{n} B"),
        1024..1_048_576 => format!("{:.1} KiB", scaled(10)),
        _ => format!("{:.1} MiB", scaled(20)),
    }
}

/// One table cell or fact.
#[derive(Debug, Clone)]
pub enum Cell {
    Text(String),
    /// Right-aligned.
    Number(u64),
    /// Unix seconds, as [`time`], kept on one line.
    Time(u64),
    /// In the "good" colour.
    Ok(String),
    /// In the "bad" colour.
    Bad(String),
    /// Kept as written, wrapped (an error message).
    Pre(String),
    /// Nothing to say.
    None,
}

impl Cell {
    pub fn text(text: impl Into<String>) -> Self {
        Self::Text(text.into())
    }

    /// `Ok(yes)` or `Bad(no)`.
    pub fn state(good: bool, yes: &str, no: &str) -> Self {
        if good {
            Self::Ok(yes.to_owned())
        } else {
            Self::Bad(no.to_owned())
        }
    }

    /// As a `tag` element (`td` or `dd`).
    fn write(&self, out: &mut String, tag: &str) {
        let (class, body) = match self {
            Cell::Text(t) => ("", escape(t)),
            Cell::Number(n) => (" class=\"n\"", n.to_string()),
            Cell::Time(t) => (" class=\"t\"", time(*t)),
            Cell::Ok(t) => (" class=\"ok\"", escape(t)),
            Cell::Bad(t) => (" class=\"bad\"", escape(t)),
            Cell::Pre(t) => ("", format!("<pre>{}</pre>", escape(t))),
            Cell::None => (" class=\"muted\"", "–".to_owned()),
        };
        let _ = write!(out, "<{tag}{class}>{body}</{tag}>");
    }
}

impl From<u64> for Cell {
    fn from(n: u64) -> Self {
        Self::Number(n)
    }
}

impl From<usize> for Cell {
    fn from(n: usize) -> Self {
        Self::Number(u64::try_from(n).unwrap_or(u64::MAX))
    }
}

impl From<&str> for Cell {
    fn from(text: &str) -> Self {
        Self::Text(text.to_owned())
    }
}

impl From<String> for Cell {
    fn from(text: String) -> Self {
        Self::Text(text)
    }
}

impl<T: Into<Cell>> From<Option<T>> for Cell {
    fn from(value: Option<T>) -> Self {
        value.map_or(Cell::None, Into::into)
    }
}

/// A page being written.
pub struct Page(String);

impl Page {
    /// The page of `component` (its version, when it started, now: Unix
    /// seconds), whose data `/status` serves as JSON.
    pub fn new(component: &str, version: &str, started_at: u64, now: u64) -> Self {
        let mut html = String::with_capacity(16 * 1024);
        let _ = write!(
            html,
            "<!doctype html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">\
             <meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\
             <meta http-equiv=\"refresh\" content=\"{REFRESH_SECONDS}\">\
             <title>{title}</title><style>{STYLE}</style></head><body>\
             <header><h1>{title}</h1><p>Version {version}, up since {started}; this page at {now}.</p>\
             <p>Refreshes every {REFRESH_SECONDS} s. The same data as JSON: \
             <a href=\"/status\">/status</a>. Lists show the busiest {rows} rows and their total.</p></header>\n",
            title = escape(component),
            version = escape(version),
            started = time(started_at),
            now = time(now),
            rows = crate::status::ROWS,
        );
        Self(html)
    }

    pub fn section(&mut self, heading: &str) {
        let _ = writeln!(self.0, "<h2>{}</h2>", escape(heading));
    }

    pub fn note(&mut self, text: &str) {
        let _ = writeln!(self.0, "<p class=\"note\">{}</p>", escape(text));
    }

    /// Label and value pairs.
    pub fn facts(&mut self, facts: Vec<(&str, Cell)>) {
        self.0.push_str("<dl>");
        for (label, value) in facts {
            let _ = write!(self.0, "<dt>{}</dt>", escape(label));
            value.write(&mut self.0, "dd");
        }
        self.0.push_str("</dl>\n");
    }

    /// A table of `list`'s rows, captioned with how many of how many it shows.
    pub fn table<T>(&mut self, what: &str, headers: &[&str], list: &Bounded<T>, row: impl Fn(&T) -> Vec<Cell>) {
        if list.total == 0 {
            self.note(&format!("No {what}."));
            return;
        }
        let caption = if list.rows.len() < list.total {
            format!("The busiest {} of {} {what}.", list.rows.len(), list.total)
        } else {
            format!("All {what}: {}.", list.total)
        };
        self.note(&caption);
        self.0.push_str("<table><thead><tr>");
        let rows: Vec<Vec<Cell>> = list.rows.iter().map(row).collect();
        for (i, header) in headers.iter().enumerate() {
            let numeric = rows.first().is_some_and(|r| matches!(r.get(i), Some(Cell::Number(_))));
            let class = if numeric { " class=\"n\"" } else { "" };
            let _ = write!(self.0, "<th{class}>{}</th>", escape(header));
        }
        self.0.push_str("</tr></thead><tbody>\n");
        for cells in rows {
            self.0.push_str("<tr>");
            for cell in cells {
                cell.write(&mut self.0, "td");
            }
            self.0.push_str("</tr>\n");
        }
        self.0.push_str("</tbody></table>\n");
    }

    /// Counter totals ([`crate::status::totals`]).
    pub fn totals(&mut self, what: &str, totals: &Bounded<Total>) {
        self.table(what, &["Counter", "Labels", "Since start"], totals, |t| {
            vec![t.metric.as_str().into(), t.labels.as_str().into(), t.value.into()]
        });
    }

    /// The recent refusals ([`crate::status::Refusals`]), newest first;
    /// `subject` names what the client asked for.
    pub fn refusals(&mut self, recent: &[Refusal], subject: &str) {
        let list = Bounded {
            total: recent.len(),
            rows: recent.iter().collect(),
        };
        self.table(
            "recent refusals",
            &["Time, newest first", "Client", subject, "Reason", "Detail"],
            &list,
            |r| {
                vec![
                    Cell::Time(r.at),
                    r.peer.as_str().into(),
                    r.subject.clone().into(),
                    Cell::Bad(r.reason.to_owned()),
                    r.detail.as_str().into(),
                ]
            },
        );
    }

    /// Facts on the last reload and when the settings in use were loaded.
    pub fn reload_facts(state: &ReloadState, succeeded: u64, failed: u64) -> Vec<(&'static str, Cell)> {
        let mut facts = vec![
            ("Loaded", Cell::text(time(state.loaded_at))),
            ("Reloads", Cell::text(format!("{succeeded} applied, {failed} refused"))),
        ];
        match &state.last {
            None => facts.push(("Last reload", Cell::text("none since start"))),
            Some(last) => {
                let outcome = if last.applied { "applied" } else { "refused" };
                facts.push((
                    "Last reload",
                    Cell::state(
                        last.applied,
                        &format!("{outcome} at {} ({})", time(last.at), last.trigger),
                        &format!(
                            "{outcome} at {} ({}); the previous settings keep serving",
                            time(last.at),
                            last.trigger
                        ),
                    ),
                ));
                if let Some(error) = &last.error {
                    facts.push(("Error", Cell::Pre(error.clone())));
                }
            }
        }
        facts
    }

    pub fn finish(mut self) -> String {
        self.0.push_str("</body></html>\n");
        self.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn escape_leaves_no_markup() {
        assert_eq!(
            escape("<script>alert('x')</script> & \"q\""),
            "&lt;script&gt;alert(&#39;x&#39;)&lt;/script&gt; &amp; &quot;q&quot;"
        );
    }

    #[test]
    fn every_value_is_escaped() {
        let mut page = Page::new("<t>", "<s>", 0, 0);
        page.section("<h>");
        page.note("<n>");
        page.facts(vec![
            ("<k>", Cell::Pre("<v>".into())),
            ("ok", Cell::state(false, "<y>", "<b>")),
        ]);
        let list = Bounded {
            total: 2,
            rows: vec!["<r1>", "<r2>"],
        };
        page.table("<w>", &["<c>"], &list, |r| vec![Cell::text(*r)]);
        let html = page.finish();
        for raw in [
            "<t>", "<s>", "<j>", "<h>", "<n>", "<k>", "<v>", "<b>", "<r1>", "<r2>", "<c>", "<w>",
        ] {
            assert!(!html.contains(raw), "{raw} written as markup");
        }
        assert!(html.contains("<dd><pre>&lt;v&gt;</pre></dd>"));
        assert!(html.contains("<dd class=\"bad\">&lt;b&gt;</dd>"));
    }

    #[test]
    fn bytes_read_as_people_read_them() {
        assert_eq!(bytes(1023), "1023 B");
        assert_eq!(bytes(1536), "1.5 KiB");
        assert_eq!(bytes(128 << 20), "128.0 MiB");
    }

    #[test]
    fn time_is_rfc3339() {
        assert_eq!(time(0), "1970-01-01T00:00:00Z");
    }
}
