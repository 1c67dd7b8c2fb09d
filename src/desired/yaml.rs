//! YAML parsing that keeps a line/column for every node, so a diagnostic can point at the exact
//! key or value a person wrote.
//!
//! The YAML is turned into `serde_json::Value` documents (the schema and serde work on those) plus
//! an index from JSON pointer to source position. Scalars resolve like YAML 1.2's core schema,
//! which is what Kubernetes tooling expects (`yes` stays a string).

use std::collections::HashMap;

use serde_json::{Map, Number, Value};
use yaml_rust2::parser::{Event, MarkedEventReceiver, Parser};
use yaml_rust2::scanner::{Marker, TScalarStyle};

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

/// Where a node sits in the source: its key (for mapping values) and the value itself.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Span {
    /// The key naming this node in its parent mapping, when it has one.
    pub key: Option<Pos>,
    /// The node's own value (for a mapping or sequence, its first token).
    pub value: Pos,
}

/// One YAML document: its value and a position for every JSON pointer in it.
#[derive(Debug, Clone)]
pub struct Document {
    /// The document as JSON data.
    pub value: Value,
    /// JSON pointer (`/components/0/name`) → source span; the root is `""`.
    pub spans: HashMap<String, Span>,
    /// Where the document starts.
    pub start: Pos,
}

impl Document {
    /// The span of `pointer`, or of its nearest ancestor that has one.
    pub fn span(&self, pointer: &str) -> Span {
        let mut p = pointer;
        loop {
            if let Some(s) = self.spans.get(p) {
                return *s;
            }
            match p.rfind('/') {
                Some(i) => p = &p[..i],
                None => {
                    return Span {
                        key: None,
                        value: self.start,
                    }
                }
            }
        }
    }
}

/// A YAML problem found while parsing, with where it is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct YamlError {
    /// Where the problem is.
    pub pos: Pos,
    /// What is wrong, in lowercase words.
    pub message: String,
}

/// Parses every document of `src`; returns them, or every error found (a syntax error stops the
/// file, duplicate keys do not).
pub fn parse(src: &str) -> Result<Vec<Document>, Vec<YamlError>> {
    let mut builder = Builder::new(src);
    let mut parser = Parser::new_from_str(src);
    if let Err(e) = parser.load(&mut builder, true) {
        let pos = builder.pos(e.marker(), 1);
        return Err(vec![YamlError {
            pos,
            message: format!("invalid YAML: {}", e.info()),
        }]);
    }
    if builder.errors.is_empty() {
        Ok(builder.docs)
    } else {
        Err(builder.errors)
    }
}

enum Frame {
    Seq {
        items: Vec<Value>,
        pointer: String,
        anchor: usize,
    },
    Map {
        map: Map<String, Value>,
        pointer: String,
        anchor: usize,
        pending_key: Option<(String, Pos)>,
    },
}

struct Builder<'s> {
    src: &'s str,
    /// Byte offset of each char index, built lazily only for non-ASCII sources.
    char_offsets: Option<Vec<usize>>,
    docs: Vec<Document>,
    errors: Vec<YamlError>,
    stack: Vec<Frame>,
    spans: HashMap<String, Span>,
    anchors: HashMap<usize, Value>,
    doc_start: Pos,
}

impl<'s> Builder<'s> {
    fn new(src: &'s str) -> Self {
        let char_offsets = if src.is_ascii() {
            None
        } else {
            Some(src.char_indices().map(|(i, _)| i).collect())
        };
        Self {
            src,
            char_offsets,
            docs: Vec::new(),
            errors: Vec::new(),
            stack: Vec::new(),
            spans: HashMap::new(),
            anchors: HashMap::new(),
            doc_start: Pos::default(),
        }
    }

    fn pos(&self, m: &Marker, len: usize) -> Pos {
        let offset = match &self.char_offsets {
            None => m.index(),
            Some(offs) => offs.get(m.index()).copied().unwrap_or(self.src.len()),
        };
        Pos {
            line: m.line(),
            column: m.col() + 1,
            offset,
            len: len.max(1),
        }
    }

    /// The pointer and key position the next node gets from its parent.
    fn child_slot(&mut self) -> (String, Option<Pos>) {
        match self.stack.last_mut() {
            None => (String::new(), None),
            Some(Frame::Seq { items, pointer, .. }) => (format!("{pointer}/{}", items.len()), None),
            Some(Frame::Map {
                pointer,
                pending_key,
                ..
            }) => match pending_key {
                Some((k, kpos)) => (format!("{pointer}/{}", escape(k)), Some(*kpos)),
                // A key that is itself a mapping or sequence: reported when it completes.
                None => (format!("{pointer}/?"), None),
            },
        }
    }

    /// Hands a finished node to its parent (or ends the document).
    fn attach(&mut self, value: Value, pos: Pos, anchor: usize) {
        if anchor != 0 {
            self.anchors.insert(anchor, value.clone());
        }
        match self.stack.last_mut() {
            None => {
                self.docs.push(Document {
                    value,
                    spans: std::mem::take(&mut self.spans),
                    start: self.doc_start,
                });
            }
            Some(Frame::Seq { items, .. }) => items.push(value),
            Some(Frame::Map {
                map, pending_key, ..
            }) => match pending_key.take() {
                None => match value {
                    Value::String(k) => *pending_key = Some((k, pos)),
                    Value::Null => *pending_key = Some(("null".into(), pos)),
                    Value::Bool(b) => *pending_key = Some((b.to_string(), pos)),
                    Value::Number(n) => *pending_key = Some((n.to_string(), pos)),
                    _ => self.errors.push(YamlError {
                        pos,
                        message: "a mapping key must be a plain value, not a mapping or list"
                            .into(),
                    }),
                },
                Some((k, kpos)) => {
                    if map.contains_key(&k) {
                        self.errors.push(YamlError {
                            pos: kpos,
                            message: format!("duplicate key `{k}` in the same mapping"),
                        });
                    } else {
                        map.insert(k, value);
                    }
                }
            },
        }
    }
}

impl MarkedEventReceiver for Builder<'_> {
    fn on_event(&mut self, ev: Event, mark: Marker) {
        match ev {
            Event::DocumentStart => {
                self.doc_start = self.pos(&mark, 1);
                self.spans.clear();
            }
            Event::Scalar(text, style, anchor, tag) => {
                let quoted = !matches!(style, TScalarStyle::Plain);
                let len = if quoted { text.len() + 2 } else { text.len() };
                let pos = self.pos(&mark, len);
                let is_key = matches!(
                    self.stack.last(),
                    Some(Frame::Map {
                        pending_key: None,
                        ..
                    })
                );
                let value = if quoted || tag.is_some_and(|t| t.suffix == "str") {
                    Value::String(text)
                } else {
                    resolve_plain(text)
                };
                if !is_key {
                    let (pointer, key) = self.child_slot();
                    self.spans.insert(pointer, Span { key, value: pos });
                }
                self.attach(value, pos, anchor);
            }
            Event::Alias(id) => {
                let pos = self.pos(&mark, 1);
                let value = match self.anchors.get(&id) {
                    Some(v) => v.clone(),
                    None => {
                        self.errors.push(YamlError {
                            pos,
                            message: "alias refers to an unknown anchor".into(),
                        });
                        Value::Null
                    }
                };
                let is_key = matches!(
                    self.stack.last(),
                    Some(Frame::Map {
                        pending_key: None,
                        ..
                    })
                );
                if !is_key {
                    let (pointer, key) = self.child_slot();
                    self.spans.insert(pointer, Span { key, value: pos });
                }
                self.attach(value, pos, 0);
            }
            Event::SequenceStart(anchor, _) => {
                let pos = self.pos(&mark, 1);
                let (pointer, key) = self.child_slot();
                self.spans.insert(pointer.clone(), Span { key, value: pos });
                self.stack.push(Frame::Seq {
                    items: Vec::new(),
                    pointer,
                    anchor,
                });
            }
            Event::MappingStart(anchor, _) => {
                let pos = self.pos(&mark, 1);
                let (pointer, key) = self.child_slot();
                self.spans.insert(pointer.clone(), Span { key, value: pos });
                self.stack.push(Frame::Map {
                    map: Map::new(),
                    pointer,
                    anchor,
                    pending_key: None,
                });
            }
            Event::SequenceEnd | Event::MappingEnd => {
                let Some(frame) = self.stack.pop() else {
                    return;
                };
                let (value, pointer, anchor) = match frame {
                    Frame::Seq {
                        items,
                        pointer,
                        anchor,
                    } => (Value::Array(items), pointer, anchor),
                    Frame::Map {
                        map,
                        pointer,
                        anchor,
                        ..
                    } => (Value::Object(map), pointer, anchor),
                };
                let pos = self
                    .spans
                    .get(&pointer)
                    .map(|s| s.value)
                    .unwrap_or_default();
                self.attach(value, pos, anchor);
            }
            Event::Nothing | Event::StreamStart | Event::StreamEnd | Event::DocumentEnd => {}
        }
    }
}

/// Escapes a key for a JSON pointer segment (RFC 6901).
pub fn escape(key: &str) -> String {
    key.replace('~', "~0").replace('/', "~1")
}

/// Resolves a plain scalar by YAML 1.2's core schema.
fn resolve_plain(text: String) -> Value {
    match text.as_str() {
        "" | "~" | "null" | "Null" | "NULL" => return Value::Null,
        "true" | "True" | "TRUE" => return Value::Bool(true),
        "false" | "False" | "FALSE" => return Value::Bool(false),
        _ => {}
    }
    let digits = text.strip_prefix(['-', '+']).unwrap_or(&text);
    if !digits.is_empty() && digits.bytes().all(|b| b.is_ascii_digit()) {
        if let Ok(i) = text.parse::<i64>() {
            return Value::Number(i.into());
        }
    }
    if let Some(hex) = text.strip_prefix("0x") {
        if let Ok(i) = i64::from_str_radix(hex, 16) {
            return Value::Number(i.into());
        }
    }
    if let Some(oct) = text.strip_prefix("0o") {
        if let Ok(i) = i64::from_str_radix(oct, 8) {
            return Value::Number(i.into());
        }
    }
    let looks_float = digits
        .bytes()
        .all(|b| b.is_ascii_digit() || matches!(b, b'.' | b'e' | b'E' | b'-' | b'+'))
        && digits.bytes().any(|b| b.is_ascii_digit());
    if looks_float {
        if let Some(n) = text.parse::<f64>().ok().and_then(Number::from_f64) {
            return Value::Number(n);
        }
    }
    Value::String(text)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_node_gets_a_line_and_column() {
        let docs = parse("a: 1\nb:\n  c: [x, \"y\"]\n").unwrap();
        let d = &docs[0];
        assert_eq!(d.value, serde_json::json!({"a": 1, "b": {"c": ["x", "y"]}}));
        let b = d.spans["/b"].key.unwrap();
        assert_eq!((b.line, b.column), (2, 1));
        let c = d.spans["/b/c"];
        assert_eq!((c.key.unwrap().line, c.key.unwrap().column), (3, 3));
        let y = d.spans["/b/c/1"].value;
        assert_eq!((y.line, y.column, y.len), (3, 10, 3));
        assert_eq!(
            &"a: 1\nb:\n  c: [x, \"y\"]\n"[y.offset..y.offset + y.len],
            "\"y\""
        );
    }

    #[test]
    fn core_schema_keeps_yes_and_quantities_as_strings() {
        let docs = parse("a: yes\nb: 500m\nc: 2\nd: '2'\ne: 0.5\nf: ~\n").unwrap();
        assert_eq!(
            docs[0].value,
            serde_json::json!({"a": "yes", "b": "500m", "c": 2, "d": "2", "e": 0.5, "f": null})
        );
    }

    #[test]
    fn duplicate_keys_are_errors_with_their_position() {
        let errs = parse("a: 1\nb: 2\na: 3\n").unwrap_err();
        assert_eq!(errs.len(), 1);
        assert_eq!((errs[0].pos.line, errs[0].pos.column), (3, 1));
        assert_eq!(errs[0].message, "duplicate key `a` in the same mapping");
    }

    #[test]
    fn syntax_errors_point_at_the_line() {
        let errs = parse("a: 1\nb: [1, 2\nc: 3\n").unwrap_err();
        assert_eq!(errs.len(), 1);
        assert!(
            errs[0].message.starts_with("invalid YAML"),
            "{}",
            errs[0].message
        );
        assert!(errs[0].pos.line >= 2);
    }

    #[test]
    fn several_documents_and_aliases() {
        let docs = parse("a: &x {k: v}\nb: *x\n---\nc: 1\n").unwrap();
        assert_eq!(docs.len(), 2);
        assert_eq!(docs[0].value["b"], serde_json::json!({"k": "v"}));
        assert_eq!(docs[1].spans["/c"].key.unwrap().line, 4);
    }

    #[test]
    fn non_ascii_sources_get_byte_offsets() {
        let src = "# é\na: ü\n";
        let docs = parse(src).unwrap();
        let p = docs[0].spans["/a"].value;
        assert_eq!(&src[p.offset..p.offset + "ü".len()], "ü");
        assert_eq!((p.line, p.column), (2, 4));
    }
}
