//! Diagnostics about a desired state: what is wrong, exactly where, and what was expected;
//! rendered like rustc for people and as JSON for machines.

use std::collections::BTreeMap;

use annotate_snippets::{Level, Renderer, Snippet};
use serde::Serialize;

/// A position in a source file: 1-based line and column, byte offset and the length to underline.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Pos {
    /// 1-based line.
    pub line: usize,
    /// 1-based column, counted in characters.
    pub column: usize,
    /// Byte offset of the start.
    pub offset: usize,
    /// Length in bytes of the text to underline (at least 1).
    pub len: usize,
}

/// A value in the source that looks like a secret: what a diagnostic must never show.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Secret {
    /// Byte range in the source (may span lines for block scalars).
    pub range: std::ops::Range<usize>,
    /// The value as parsed, for scrubbing messages that quote it.
    pub text: String,
}

/// What a suspected secret is shown as, in source lines and in every text field.
pub const MASK: &str = "********";

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
    /// The offending value as written, when there is one. A value under a credential-like key
    /// (or quoted by an alias of one) is shown as [`MASK`].
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
    /// Per file: values that look like secrets, masked in every rendering of every finding.
    secrets: BTreeMap<String, Vec<Secret>>,
}

impl Report {
    /// Keeps the text of `file` so diagnostics in it can show the source line.
    pub fn add_source(&mut self, file: &str, text: &str) {
        self.sources.insert(file.to_string(), text.to_string());
    }

    /// Marks values of `file` as secrets: source lines show them as [`MASK`], and so do the
    /// value and message of any finding (text and JSON, CLI, daemon log and status record alike).
    pub fn add_secrets(&mut self, file: &str, secrets: Vec<Secret>) {
        if secrets.is_empty() {
            return;
        }
        self.secrets
            .entry(file.to_string())
            .or_default()
            .extend(secrets);
        let mut diagnostics = std::mem::take(&mut self.diagnostics);
        for d in &mut diagnostics {
            self.mask(d);
        }
        self.diagnostics = diagnostics;
    }

    /// Adds a finding, with any secret it quotes masked.
    pub fn push(&mut self, mut d: Diagnostic) {
        self.mask(&mut d);
        self.diagnostics.push(d);
    }

    /// Masks the secrets of `d`'s file in its value and message: the whole value when `d` points
    /// into a secret, and any quote of a secret's text (four characters or more) anywhere.
    fn mask(&self, d: &mut Diagnostic) {
        let Some(secrets) = self.secrets.get(&d.file) else {
            return;
        };
        for s in secrets {
            let points_into =
                d.line > 0 && d.offset < s.range.end && s.range.start < d.offset + d.len.max(1);
            if d.value.is_some() && (points_into || d.value.as_deref() == Some(s.text.as_str())) {
                d.value = Some(MASK.to_string());
            }
            if s.text.is_empty() || (s.text.chars().count() < 4 && !points_into) {
                continue;
            }
            if let Some(m) = replace_token(&d.message, &s.text) {
                d.message = m;
            }
            if let Some(v) = d.value.as_deref().and_then(|v| replace_token(v, &s.text)) {
                d.value = Some(v);
            }
        }
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
        let mut masked: BTreeMap<&str, Masked> = BTreeMap::new();
        let mut out = String::new();
        for d in &self.diagnostics {
            let source = self.sources.get(&d.file).map(|src| {
                &*masked.entry(d.file.as_str()).or_insert_with(|| {
                    Masked::new(src, self.secrets.get(&d.file).map(Vec::as_slice))
                })
            });
            out.push_str(&render_one(&renderer, d, source));
            out.push_str("\n\n");
        }
        out
    }
}

/// Byte ranges where `needle` occurs in `hay` as a whole token (not inside a longer word).
fn token_ranges(hay: &str, needle: &str) -> Vec<std::ops::Range<usize>> {
    let word = |c: char| c.is_alphanumeric() || c == '_' || c == '-';
    let mut out = Vec::new();
    if needle.is_empty() {
        return out;
    }
    for (i, _) in hay.match_indices(needle) {
        let end = i + needle.len();
        let before = hay[..i].chars().next_back().is_some_and(word);
        let after = hay[end..].chars().next().is_some_and(word);
        if !before && !after {
            out.push(i..end);
        }
    }
    out
}

/// `hay` with every whole-token occurrence of `needle` replaced by [`MASK`]; `None` if none.
pub(super) fn replace_token(hay: &str, needle: &str) -> Option<String> {
    let ranges = token_ranges(hay, needle);
    if ranges.is_empty() {
        return None;
    }
    let mut out = String::with_capacity(hay.len());
    let mut at = 0;
    for r in ranges {
        out.push_str(&hay[at..r.start]);
        out.push_str(MASK);
        at = r.end;
    }
    out.push_str(&hay[at..]);
    Some(out)
}

/// A source with every secret replaced by [`MASK`], and the map from original byte offsets to
/// offsets in the masked text (so underlines still land on the right characters).
struct Masked {
    text: String,
    /// (original range, masked range) of every replaced segment, in order.
    replaced: Vec<(std::ops::Range<usize>, std::ops::Range<usize>)>,
}

impl Masked {
    fn new(src: &str, secrets: Option<&[Secret]>) -> Self {
        // YAML also breaks lines at a lone `\r` (old Mac files); the renderer only at `\n`.
        // Replacing one byte by one keeps every offset, and the rendered `file:line:col` then
        // agrees with the line the parser reported.
        let normalized;
        let src = if src.contains('\r') {
            let b = src.as_bytes();
            normalized = src
                .char_indices()
                .map(|(i, c)| {
                    if c == '\r' && b.get(i + 1) != Some(&b'\n') {
                        '\n'
                    } else {
                        c
                    }
                })
                .collect::<String>();
            normalized.as_str()
        } else {
            src
        };
        let secrets = secrets.unwrap_or_default();
        let mut ranges: Vec<std::ops::Range<usize>> = secrets
            .iter()
            .map(|s| s.range.start.min(src.len())..s.range.end.min(src.len()))
            .filter(|r| {
                r.start < r.end && src.is_char_boundary(r.start) && src.is_char_boundary(r.end)
            })
            .collect();
        // The same text written elsewhere (under a key that does not look secret) is masked too,
        // as messages quoting it are.
        for s in secrets.iter().filter(|s| s.text.chars().count() >= 4) {
            ranges.extend(token_ranges(src, &s.text));
        }
        if ranges.is_empty() {
            return Self {
                text: src.to_string(),
                replaced: Vec::new(),
            };
        }
        ranges.sort_by_key(|r| r.start);
        // Each line of a secret is masked on its own, keeping indentation and line breaks, so a
        // multi-line value (`|` block) still renders as the same number of lines.
        let mut segments: Vec<std::ops::Range<usize>> = Vec::new();
        for r in ranges {
            let mut start = r.start;
            for line in src[r.start..r.end].split_inclusive('\n') {
                let end = start + line.len();
                let body = line.trim_end();
                let lead = if start == r.start || !src.is_char_boundary(start) {
                    0
                } else {
                    body.len() - body.trim_start().len()
                };
                let seg = start + lead..start + body.len();
                if seg.start < seg.end {
                    match segments.last_mut() {
                        Some(last) if last.end > seg.start => last.end = last.end.max(seg.end),
                        _ => segments.push(seg),
                    }
                }
                start = end;
            }
        }
        let mut text = String::with_capacity(src.len());
        let mut replaced = Vec::new();
        let mut at = 0;
        for seg in segments {
            if seg.start < at || !src.is_char_boundary(seg.start) || !src.is_char_boundary(seg.end)
            {
                continue;
            }
            text.push_str(&src[at..seg.start]);
            let new_start = text.len();
            text.push_str(MASK);
            replaced.push((seg.clone(), new_start..text.len()));
            at = seg.end;
        }
        text.push_str(&src[at..]);
        Self { text, replaced }
    }

    /// Where original byte `offset` is in the masked text (inside a mask: the mask's start, or
    /// its end when `end` is set, so a span over a secret underlines the whole mask).
    fn map(&self, offset: usize, end: bool) -> usize {
        let mut shift: isize = 0;
        for (orig, new) in &self.replaced {
            if offset < orig.start || (end && offset == orig.start) {
                break;
            }
            if offset < orig.end || (end && offset == orig.end) {
                return if end { new.end } else { new.start };
            }
            shift += new.len() as isize - orig.len() as isize;
        }
        offset.saturating_add_signed(shift)
    }
}

/// The nearest character boundary at or before `i`.
fn floor_char_boundary(s: &str, mut i: usize) -> usize {
    i = i.min(s.len());
    while !s.is_char_boundary(i) {
        i -= 1;
    }
    i
}

/// The nearest character boundary at or after `i`.
fn ceil_char_boundary(s: &str, mut i: usize) -> usize {
    i = i.min(s.len());
    while !s.is_char_boundary(i) {
        i += 1;
    }
    i
}

fn render_one(renderer: &Renderer, d: &Diagnostic, source: Option<&Masked>) -> String {
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
        Some(masked) if d.line > 0 && masked.map(d.offset, false) <= masked.text.len() => {
            text = masked.text.as_str();
            let start = masked.map(d.offset, false);
            let end = masked
                .map(d.offset + d.len, true)
                .min(text.len())
                .max(start);
            // An empty span at the end of a file still needs a character to point at.
            let end = if end == start && end < text.len() {
                end + 1
            } else {
                end
            };
            // Positions count bytes; a one-byte underline at a multi-byte character (`ף`) must
            // widen to the whole character, or the renderer panics slicing inside it.
            let start = floor_char_boundary(text, start);
            let end = ceil_char_boundary(text, end.max(start));
            let span = start..end;
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

    #[test]
    fn a_lone_carriage_return_is_a_line_break_in_the_rendered_location_too() {
        let src = "# a\r# b\rbad: x\n";
        let mut r = Report::default();
        r.add_source("desired/web.yaml", src);
        let at = src.find("bad").unwrap();
        r.push(Diagnostic::error(
            "unknown-field",
            "desired/web.yaml",
            Pos {
                line: 3,
                column: 1,
                offset: at,
                len: 3,
            },
            "unknown field `bad`",
        ));
        let text = r.render(false);
        assert!(text.contains("--> desired/web.yaml:3:1"), "{text}");
        assert!(text.contains("3 | bad: x"), "{text}");
    }

    #[test]
    fn an_underline_inside_a_multibyte_character_widens_to_it_instead_of_panicking() {
        let src = "kind: Stack\n\u{623}p=\n";
        let mut r = Report::default();
        r.add_source("desired/stack.yaml", src);
        let at = src.find('\u{623}').unwrap();
        // One byte long: the parser's positions count bytes.
        r.push(Diagnostic::error(
            "yaml-syntax",
            "desired/stack.yaml",
            Pos {
                line: 2,
                column: 1,
                offset: at + 1,
                len: 1,
            },
            "invalid YAML",
        ));
        let text = r.render(false);
        assert!(text.contains("2 | \u{623}p="), "{text}");
    }
}
