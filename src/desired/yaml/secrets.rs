//! Values that look like secrets: found on the event stream under credential-like keys, so a
//! diagnostic, a diff or a rendered line never shows them.

use std::collections::HashMap;

use yaml_rust2::parser::Event;
use yaml_rust2::scanner::{Marker, TScalarStyle};

use super::super::diagnostic::{replace_token, Secret};
use super::{scan, Budget, Limits, Offsets};

/// Whether a plain env name looks like it holds a credential.
pub fn looks_like_credential(name: &str) -> bool {
    let n = name.to_ascii_uppercase();
    n.contains("PASSWORD")
        || n.contains("PASSWD")
        || n.contains("SECRET")
        || n.ends_with("_TOKEN")
        || n == "TOKEN"
        || n.ends_with("_KEY")
        || n.ends_with("APIKEY")
}

/// Finds values under credential-like keys on the event stream, for masking in diagnostics.
pub(super) struct SecretFinder<'s> {
    src: &'s str,
    offsets: &'s Offsets,
    /// Open collections: whether each is a mapping, whether its next scalar is a key, the key of
    /// the value being read, and whether everything inside is secret.
    open: Vec<FinderFrame>,
    /// A secret scalar whose end is known only at the next event: (start, text).
    pending: Option<(usize, String)>,
    /// Anchor id → (byte range, text) of every anchored scalar and collection.
    anchors: HashMap<usize, (std::ops::Range<usize>, String)>,
    /// Anchored scalars whose end is known only at the next event: (anchor, start, text).
    pending_anchor: Option<(usize, usize, String)>,
    /// Anchored collections still open: (depth, anchor, start).
    open_anchors: Vec<(usize, usize, usize)>,
    pub(super) secrets: Vec<Secret>,
}

struct FinderFrame {
    is_map: bool,
    expect_key: bool,
    key: String,
    secret: bool,
    /// Inside `secretEnv`: references to Secrets (names and keys), never values.
    refs: bool,
}

impl<'s> SecretFinder<'s> {
    pub(super) fn new(src: &'s str, offsets: &'s Offsets) -> Self {
        Self {
            src,
            offsets,
            open: Vec::new(),
            pending: None,
            anchors: HashMap::new(),
            pending_anchor: None,
            open_anchors: Vec::new(),
            secrets: Vec::new(),
        }
    }

    /// Whether the node about to be read is secret, whether it is a mapping key, and whether
    /// it is inside `secretEnv`.
    fn slot(&self) -> (bool, bool, bool) {
        match self.open.last() {
            None => (false, false, false),
            Some(f) if f.is_map && f.expect_key => (f.secret, true, f.refs),
            Some(f) if f.is_map => {
                let refs = f.refs || f.key == "secretEnv";
                let secret = !refs && (f.secret || looks_like_credential(&f.key));
                (secret, false, refs)
            }
            Some(f) => (f.secret, false, f.refs),
        }
    }

    /// A node finished: the next scalar of a mapping is a key again.
    fn done(&mut self) {
        if let Some(f) = self.open.last_mut() {
            if f.is_map {
                f.expect_key = !f.expect_key;
            }
        }
    }

    pub(super) fn on(&mut self, ev: &Event, mark: &Marker) {
        let here = self.offsets.byte(mark);
        if let Some((start, text)) = self.pending.take() {
            self.secrets.push(Secret {
                range: start..here.max(start),
                text,
            });
        }
        if let Some((anchor, start, text)) = self.pending_anchor.take() {
            self.anchors.insert(anchor, (start..here.max(start), text));
        }
        match ev {
            Event::Scalar(text, style, anchor, _) => {
                let (secret, is_key, _) = self.slot();
                if is_key {
                    if let Some(f) = self.open.last_mut() {
                        f.key.clone_from(text);
                    }
                }
                let exact = self.exact_end(here, text, *style);
                if secret && !is_key {
                    match exact {
                        Some(end) => self.secrets.push(Secret {
                            range: here..end,
                            text: text.clone(),
                        }),
                        None => self.pending = Some((here, text.clone())),
                    }
                }
                if *anchor != 0 {
                    match exact {
                        Some(end) => {
                            self.anchors.insert(*anchor, (here..end, text.clone()));
                        }
                        None => self.pending_anchor = Some((*anchor, here, text.clone())),
                    }
                }
                self.done();
            }
            Event::Alias(id) => {
                let (secret, is_key, _) = self.slot();
                if is_key {
                    if let Some(f) = self.open.last_mut() {
                        f.key.clear();
                    }
                }
                if secret && !is_key {
                    if let Some((range, text)) = self.anchors.get(id) {
                        self.secrets.push(Secret {
                            range: range.clone(),
                            text: text.clone(),
                        });
                    }
                }
                self.done();
            }
            Event::SequenceStart(anchor, _) | Event::MappingStart(anchor, _) => {
                let (secret, _, refs) = self.slot();
                if *anchor != 0 {
                    self.open_anchors.push((self.open.len(), *anchor, here));
                }
                self.open.push(FinderFrame {
                    is_map: matches!(ev, Event::MappingStart(..)),
                    expect_key: true,
                    key: String::new(),
                    secret,
                    refs,
                });
            }
            Event::SequenceEnd | Event::MappingEnd => {
                self.open.pop();
                if let Some(&(depth, anchor, start)) = self.open_anchors.last() {
                    if depth == self.open.len() {
                        self.open_anchors.pop();
                        // A collection's text is not a value to scrub from messages.
                        self.anchors
                            .insert(anchor, (start..here.max(start), String::new()));
                    }
                }
                self.done();
            }
            Event::DocumentStart => self.anchors.clear(),
            _ => {}
        }
    }

    /// The end of a scalar that sits on one line exactly as parsed (plain, or quoted without
    /// escapes); `None` when it spans lines or was rewritten (then it ends at the next event).
    fn exact_end(&self, start: usize, text: &str, style: TScalarStyle) -> Option<usize> {
        let rest = self.src.get(start..)?;
        match style {
            TScalarStyle::Plain if rest.starts_with(text) => Some(start + text.len()),
            TScalarStyle::SingleQuoted | TScalarStyle::DoubleQuoted => {
                let q = if style == TScalarStyle::SingleQuoted {
                    '\''
                } else {
                    '"'
                };
                let inner = rest.strip_prefix(q)?;
                (inner.starts_with(text) && inner[text.len()..].starts_with(q))
                    .then_some(start + text.len() + 2)
            }
            _ => None,
        }
    }

    pub(super) fn finish(&mut self, end: usize) {
        if let Some((start, text)) = self.pending.take() {
            self.secrets.push(Secret {
                range: start..end.max(start),
                text,
            });
        }
    }
}

/// `text` with every whole-token occurrence of the credential-like values a YAML scan finds in
/// `yaml` (four characters or more) replaced by [`MASK`]: for showing text that may quote a
/// desired-state file, a diff of it say.
pub fn mask_secrets_of(yaml: &str, text: &str) -> String {
    let scan = scan(yaml, Limits::DESIRED, &mut Budget::default());
    let mut out = text.to_string();
    for s in scan.secrets.iter().filter(|s| s.text.chars().count() >= 4) {
        if let Some(m) = replace_token(&out, &s.text) {
            out = m;
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::desired::diagnostic::{Diagnostic, Pos, Report, MASK};

    fn secret_texts(src: &str) -> Vec<String> {
        scan(src, Limits::DESIRED, &mut Budget::default())
            .secrets
            .iter()
            .map(|s| src[s.range.clone()].to_string())
            .collect()
    }

    #[test]
    fn values_under_credential_like_keys_are_found_for_masking() {
        let src = "env:\n  DB_PASSWORD: hunter2\n  LOG: debug\n  API_TOKEN: 'q'\nvalues: {db: {password: {x: s3}}}\n";
        assert_eq!(secret_texts(src), ["hunter2", "'q'", "s3"]);
        let block = "env:\n  JWT_SECRET: |\n    line one\n    line two\n  LOG: x\n";
        let found = secret_texts(block);
        assert_eq!(found.len(), 1);
        assert!(
            found[0].contains("line one") && found[0].contains("line two"),
            "{found:?}"
        );
        assert!(!found[0].contains("LOG"), "{found:?}");
        let aliased = "x: &pw hunter2\nenv: {DB_PASSWORD: *pw}\n";
        assert_eq!(secret_texts(aliased), ["hunter2"]);
        let refs = "secretEnv:\n  - {name: DB_PASSWORD, secret: db-secret, key: password}\n";
        assert!(secret_texts(refs).is_empty());
    }

    #[test]
    fn credential_names_follow_the_documented_patterns() {
        for n in [
            "POSTGRES_PASSWORD",
            "JWT_SECRET",
            "GITHUB_TOKEN",
            "OPENAI_API_KEY",
            "db_password",
        ] {
            assert!(looks_like_credential(n), "{n}");
        }
        for n in ["LOG_LEVEL", "DATABASE_HOST", "TOKENIZER", "KEYBOARD"] {
            assert!(!looks_like_credential(n), "{n}");
        }
    }

    #[test]
    fn a_diff_quoting_a_credential_like_value_shows_it_masked() {
        let old = "kind: Component\nname: api\nenv:\n  DB_PASSWORD: hunter2-correct-horse\n";
        let new = "kind: Component\nname: api\nenv:\n  DB_PASSWORD: hunter3-correct-horse\n";
        let diff = "-  DB_PASSWORD: hunter2-correct-horse\n+  DB_PASSWORD: hunter3-correct-horse\n";
        let both = format!("{old}---\n{new}");
        let shown = mask_secrets_of(&both, diff);
        assert!(!shown.contains("hunter"), "{shown}");
        assert_eq!(shown.matches(MASK).count(), 2, "{shown}");
        // Nothing credential-like: the text is left as it is.
        assert_eq!(
            mask_secrets_of("replicas: 3\n", "+replicas: 3\n"),
            "+replicas: 3\n"
        );
    }

    fn report_with_secret(src: &str) -> Report {
        let mut r = Report::default();
        r.add_source("desired/web.yaml", src);
        let scan = scan(src, Limits::DESIRED, &mut Default::default());
        r.add_secrets("desired/web.yaml", scan.secrets);
        r
    }

    #[test]
    fn a_credential_value_is_masked_in_the_source_line_and_every_field() {
        let src = "env:\n  DB_PASSWORD: hunter2\n  LOG: x\nresources: {requests: {cpu: hunter2}}\n";
        let mut r = report_with_secret(src);
        let key = Pos {
            line: 2,
            column: 3,
            offset: 7,
            len: 11,
        };
        r.push(
            Diagnostic::error(
                "credential-in-env",
                "desired/web.yaml",
                key,
                "`DB_PASSWORD` looks like a credential",
            )
            .value("DB_PASSWORD"),
        );
        // A finding on the secret itself, and one quoting the same text elsewhere.
        let value = Pos {
            line: 2,
            column: 16,
            offset: 20,
            len: 7,
        };
        r.push(
            Diagnostic::error("bad-value", "desired/web.yaml", value, "`hunter2` is wrong")
                .value("hunter2"),
        );
        let cpu = Pos {
            line: 4,
            column: 31,
            offset: src.rfind("hunter2").unwrap(),
            len: 7,
        };
        r.push(
            Diagnostic::error(
                "bad-quantity",
                "desired/web.yaml",
                cpu,
                "`hunter2` is not a quantity",
            )
            .value("hunter2"),
        );
        let text = r.render(false);
        let json = serde_json::to_string(&r.diagnostics).unwrap();
        for out in [&text, &json] {
            assert!(!out.contains("hunter2"), "{out}");
        }
        assert!(text.contains("2 |   DB_PASSWORD: ********"), "{text}");
        assert!(text.contains("--> desired/web.yaml:2:3"), "{text}");
        assert!(
            text.contains("found `DB_PASSWORD`"),
            "the key name stays: {text}"
        );
        // The underline of a finding on the secret covers the mask, not the old length.
        assert!(text.contains("^^^^^^^^ found `********`"), "{text}");
        assert_eq!(r.diagnostics[1].value.as_deref(), Some(MASK));
        assert_eq!(r.diagnostics[2].message, "`********` is not a quantity");
    }

    #[test]
    fn masking_keeps_later_underlines_on_their_characters() {
        let src = "env: {API_TOKEN: a-long-token-value, replica: 2}\n";
        let mut r = report_with_secret(src);
        let at = src.find("replica").unwrap();
        r.push(Diagnostic::error(
            "unknown-field",
            "desired/web.yaml",
            Pos {
                line: 1,
                column: at + 1,
                offset: at,
                len: 7,
            },
            "unknown field `replica`",
        ));
        let text = r.render(false);
        assert!(
            text.contains("1 | env: {API_TOKEN: ********, replica: 2}"),
            "{text}"
        );
        let caret_line = text.lines().find(|l| l.contains('^')).unwrap();
        let rendered = text.lines().find(|l| l.contains("replica: 2")).unwrap();
        assert_eq!(caret_line.find('^'), rendered.find("replica"), "{text}");
    }
}
