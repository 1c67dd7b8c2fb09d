//! Diagnostics about a desired state: what is wrong, exactly where, and what was expected;
//! rendered like rustc for people and as JSON for machines.

use std::collections::BTreeMap;

use annotate_snippets::{Level, Renderer, Snippet};
use serde::Serialize;

use super::yaml::Pos;

/// How bad a diagnostic is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Severity {
    /// The desired state is refused.
    Error,
    /// Allowed, but probably not what the user wants.
    Warning,
}

/// One finding, anchored to a file, line and column of the commit.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Diagnostic {
    /// Error or warning.
    pub severity: Severity,
    /// A stable kebab-case identifier (`unknown-field`, `bad-quantity`…), for scripts and docs.
    pub code: &'static str,
    /// Path of the file in the repository.
    pub file: String,
    /// 1-based line (0 when the finding is about a whole file or directory).
    pub line: usize,
    /// 1-based column (0 when the finding is about a whole file or directory).
    pub column: usize,
    /// JSON pointer of the offending node inside its YAML document.
    pub path: String,
    /// The offending value as written, when there is one. Never a secret: secret values cannot
    /// be written in the desired state at all.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub value: Option<String>,
    /// What is wrong.
    pub message: String,
    /// What would have been accepted.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub expected: Option<String>,
    /// How to fix it, when there is more to say than `expected`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub help: Option<String>,
    #[serde(skip)]
    offset: usize,
    #[serde(skip)]
    len: usize,
}

impl Diagnostic {
    /// An error at `pos` of `file`.
    pub fn error(code: &'static str, file: &str, pos: Pos, message: impl Into<String>) -> Self {
        Self::new(Severity::Error, code, file, pos, message)
    }

    /// A warning at `pos` of `file`.
    pub fn warning(code: &'static str, file: &str, pos: Pos, message: impl Into<String>) -> Self {
        Self::new(Severity::Warning, code, file, pos, message)
    }

    /// An error about a whole file or directory, with no position inside it.
    pub fn file_error(code: &'static str, file: &str, message: impl Into<String>) -> Self {
        let mut d = Self::new(Severity::Error, code, file, Pos::default(), message);
        d.len = 0;
        d
    }

    fn new(
        severity: Severity,
        code: &'static str,
        file: &str,
        pos: Pos,
        message: impl Into<String>,
    ) -> Self {
        Self {
            severity,
            code,
            file: file.to_string(),
            line: pos.line,
            column: pos.column,
            path: String::new(),
            value: None,
            message: message.into(),
            expected: None,
            help: None,
            offset: pos.offset,
            len: pos.len,
        }
    }

    /// Sets the JSON pointer of the node.
    #[must_use]
    pub fn at_path(mut self, path: &str) -> Self {
        self.path = path.to_string();
        self
    }

    /// Sets the offending value.
    #[must_use]
    pub fn value(mut self, value: impl Into<String>) -> Self {
        self.value = Some(value.into());
        self
    }

    /// Sets what was expected.
    #[must_use]
    pub fn expected(mut self, expected: impl Into<String>) -> Self {
        self.expected = Some(expected.into());
        self
    }

    /// Sets the help line.
    #[must_use]
    pub fn help(mut self, help: impl Into<String>) -> Self {
        self.help = Some(help.into());
        self
    }

    /// Whether this is an error (not a warning).
    pub fn is_error(&self) -> bool {
        self.severity == Severity::Error
    }

    /// `file:line:column` (or just `file`).
    pub fn location(&self) -> String {
        if self.line == 0 {
            self.file.clone()
        } else {
            format!("{}:{}:{}", self.file, self.line, self.column)
        }
    }
}

/// Diagnostics of one validation, with the sources they point into so they can be rendered.
#[derive(Debug, Clone, Default)]
pub struct Report {
    /// Every finding, errors first, then in file and line order.
    pub diagnostics: Vec<Diagnostic>,
    sources: BTreeMap<String, String>,
}

impl Report {
    /// Keeps the text of `file` so diagnostics in it can show the source line.
    pub fn add_source(&mut self, file: &str, text: &str) {
        self.sources.insert(file.to_string(), text.to_string());
    }

    /// Adds a finding.
    pub fn push(&mut self, d: Diagnostic) {
        self.diagnostics.push(d);
    }

    /// Whether any finding is an error.
    pub fn has_errors(&self) -> bool {
        self.diagnostics.iter().any(Diagnostic::is_error)
    }

    /// The number of errors.
    pub fn error_count(&self) -> usize {
        self.diagnostics.iter().filter(|d| d.is_error()).count()
    }

    /// The number of warnings.
    pub fn warning_count(&self) -> usize {
        self.diagnostics.len() - self.error_count()
    }

    /// Sorts errors first, then by file, line and column, and drops exact repeats.
    pub fn sort(&mut self) {
        self.diagnostics.sort_by(|a, b| {
            (a.severity, &a.file, a.line, a.column, &a.message)
                .cmp(&(b.severity, &b.file, b.line, b.column, &b.message))
        });
        self.diagnostics.dedup();
    }

    /// Renders every finding like rustc: header, `--> file:line:col`, the source line and a caret.
    pub fn render(&self, color: bool) -> String {
        let renderer = if color {
            Renderer::styled()
        } else {
            Renderer::plain()
        };
        let mut out = String::new();
        for d in &self.diagnostics {
            out.push_str(&render_one(&renderer, d, self.sources.get(&d.file)));
            out.push_str("\n\n");
        }
        out
    }
}

fn render_one(renderer: &Renderer, d: &Diagnostic, source: Option<&String>) -> String {
    let level = match d.severity {
        Severity::Error => Level::Error,
        Severity::Warning => Level::Warning,
    };
    let label = match (&d.value, &d.expected) {
        (Some(v), Some(e)) => format!("found `{v}`, expected {e}"),
        (None, Some(e)) => format!("expected {e}"),
        (Some(v), None) => format!("found `{v}`"),
        (None, None) => String::new(),
    };
    let location_note = format!("in {}", d.location());
    let help_text = d.help.clone().unwrap_or_default();
    let text;
    let mut message = level.title(&d.message).id(d.code);
    match source {
        Some(src) if d.line > 0 && d.offset <= src.len() => {
            text = src.as_str();
            let end = (d.offset + d.len).min(src.len()).max(d.offset);
            // An empty span at the end of a file still needs a character to point at.
            let span = if end == d.offset && end < src.len() {
                d.offset..end + 1
            } else {
                d.offset..end
            };
            message = message.snippet(
                Snippet::source(text)
                    .origin(&d.file)
                    .fold(true)
                    .annotation(level.span(span).label(&label)),
            );
        }
        _ => {
            if !label.is_empty() {
                message = message.footer(Level::Note.title(&label));
            }
            message = message.footer(Level::Note.title(&location_note));
        }
    }
    if d.help.is_some() {
        message = message.footer(Level::Help.title(&help_text));
    }
    let out = renderer.render(message).to_string();
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_like_rustc_with_source_line_and_caret() {
        let src = "kind: Component\nreplica: 2\n";
        let mut r = Report::default();
        r.add_source("desired/backend.yaml", src);
        let pos = Pos {
            line: 2,
            column: 1,
            offset: 16,
            len: 7,
        };
        r.push(
            Diagnostic::error(
                "unknown-field",
                "desired/backend.yaml",
                pos,
                "unknown field `replica`",
            )
            .value("replica")
            .expected("one of `replicas`, `image`")
            .help("did you mean `replicas`?"),
        );
        let text = r.render(false);
        assert!(
            text.contains("error[unknown-field]: unknown field `replica`"),
            "{text}"
        );
        assert!(text.contains("--> desired/backend.yaml:2:1"), "{text}");
        assert!(text.contains("2 | replica: 2"), "{text}");
        assert!(
            text.contains("^^^^^^^ found `replica`, expected one of `replicas`, `image`"),
            "{text}"
        );
        assert!(text.contains("= help: did you mean `replicas`?"), "{text}");
    }
}
