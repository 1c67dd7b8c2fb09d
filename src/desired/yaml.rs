//! YAML parsing that keeps a line/column for every node, so a diagnostic can point at the exact
//! key or value a person wrote.
//!
//! The YAML is turned into `serde_json::Value` documents (the schema and serde work on those) plus
//! an index from JSON pointer to source position. Scalars resolve like YAML 1.2's core schema,
//! which is what Kubernetes tooling expects (`yes` stays a string). Merge keys (`<<: *defaults`)
//! are applied the way YAML 1.1 loaders apply them, so a literal `<<` key never reaches a chart.
//!
//! Hostile input is bounded before it costs anything: the event stream is walked without
//! recursion, nesting deeper than [`Limits::max_depth`] and alias expansion past
//! [`Limits::max_nodes`] / [`Limits::max_copied_bytes`] are errors at the offending line and
//! column ("billion laughs"), and spans are kept in an index whose size is linear in the input.

mod limits;
mod secrets;

use std::collections::HashMap;

use serde_json::{Map, Number, Value};
use yaml_rust2::parser::{Event, Parser};
use yaml_rust2::scanner::{Marker, TScalarStyle};

use super::diagnostic::{Pos, Secret};
use limits::Tracker;
pub use limits::{Budget, LimitKind, Limits};
use secrets::SecretFinder;
pub use secrets::{looks_like_credential, mask_secrets_of};

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
    spans: SpanIndex,
    /// Where the document starts.
    pub start: Pos,
}

impl Document {
    /// The span of `pointer`, or of its nearest ancestor that has one.
    pub fn span(&self, pointer: &str) -> Span {
        self.spans.lookup(pointer).0.unwrap_or(Span {
            key: None,
            value: self.start,
        })
    }

    /// Whether `pointer` itself (not only an ancestor) has a span: the node is in the source.
    pub fn has_span(&self, pointer: &str) -> bool {
        self.spans.lookup(pointer).1
    }
}

/// Spans of one document as a tree of (parent, segment) → node, so memory grows with the number
/// of nodes and the length of their own keys, never with the length of their full pointers.
#[derive(Debug, Clone, Default)]
struct SpanIndex {
    /// Node id → span; the document's root is node 0.
    spans: Vec<Span>,
    /// (parent node, escaped pointer segment) → child node.
    children: HashMap<(u32, Box<str>), u32>,
}

impl SpanIndex {
    /// Records a node under `parent` (none for the root) and returns its id.
    fn add(&mut self, parent: Option<u32>, segment: &str, span: Span) -> u32 {
        let id = u32::try_from(self.spans.len()).unwrap_or(u32::MAX);
        self.spans.push(span);
        if let Some(p) = parent {
            self.children.entry((p, segment.into())).or_insert(id);
        }
        id
    }

    fn contains(&self, parent: u32, segment: &str) -> bool {
        self.children.contains_key(&(parent, segment.into()))
    }

    /// The span of the deepest node on `pointer`'s path, and whether that is `pointer` itself.
    fn lookup(&self, pointer: &str) -> (Option<Span>, bool) {
        let Some(root) = self.spans.first() else {
            return (None, false);
        };
        if pointer.is_empty() {
            return (Some(*root), true);
        }
        let Some(rest) = pointer.strip_prefix('/') else {
            return (Some(*root), false);
        };
        let mut cur = 0u32;
        for seg in rest.split('/') {
            match self.children.get(&(cur, seg.into())) {
                Some(&child) => cur = child,
                None => return (self.spans.get(cur as usize).copied(), false),
            }
        }
        (self.spans.get(cur as usize).copied(), true)
    }
}

/// A YAML problem found while parsing, with where it is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct YamlError {
    /// Where the problem is.
    pub pos: Pos,
    /// What is wrong, in lowercase words.
    pub message: String,
    /// Which limit was exceeded, when it is a [`Limits`] refusal rather than a syntax error.
    pub limit: Option<LimitKind>,
}

#[derive(Debug, Clone, Default)]
pub struct Scan {
    /// The first limit exceeded, if any; syntax errors are left to [`parse`].
    pub error: Option<YamlError>,
    /// Values under credential-like keys (`DB_PASSWORD: …`), and anchors they alias.
    pub secrets: Vec<Secret>,
}

/// Parses every document of `src` within [`Limits::DESIRED`]; returns them, or every error found
/// (a syntax error or an exceeded limit stops the file, duplicate keys do not).
pub fn parse(src: &str) -> Result<Vec<Document>, Vec<YamlError>> {
    parse_with(src, Limits::DESIRED, &mut Budget::default())
}

/// [`parse`] with explicit limits, counting against `budget`.
pub fn parse_with(
    src: &str,
    limits: Limits,
    budget: &mut Budget,
) -> Result<Vec<Document>, Vec<YamlError>> {
    let offsets = Offsets::new(src);
    let mut builder = Builder::new(&offsets, Tracker::new(limits, budget));
    let mut parser = Parser::new_from_str(src);
    loop {
        let (ev, mark) = match parser.next_token() {
            Ok(x) => x,
            Err(e) => {
                return Err(vec![YamlError {
                    pos: offsets.pos(e.marker(), 1),
                    message: format!("invalid YAML: {}", e.info()),
                    limit: None,
                }])
            }
        };
        let end = ev == Event::StreamEnd;
        builder.on_event(ev, mark);
        if builder.stopped {
            return Err(builder.errors);
        }
        if end {
            break;
        }
    }
    if builder.errors.is_empty() {
        Ok(builder.docs)
    } else {
        Err(builder.errors)
    }
}

/// Walks the event stream of `src` without building anything: checks `limits` (counting against
/// `budget`) and finds the values under credential-like keys. Stops at the first exceeded limit
/// or syntax error.
pub fn scan(src: &str, limits: Limits, budget: &mut Budget) -> Scan {
    let offsets = Offsets::new(src);
    let mut tracker = Tracker::new(limits, budget);
    let mut finder = SecretFinder::new(src, &offsets);
    let mut parser = Parser::new_from_str(src);
    let mut out = Scan::default();
    while let Ok((ev, mark)) = parser.next_token() {
        if let Err(e) = tracker.on(&ev, &mark, &offsets) {
            out.error = Some(e);
            break;
        }
        let end = ev == Event::StreamEnd;
        finder.on(&ev, &mark);
        if end {
            break;
        }
    }
    finder.finish(src.len());
    out.secrets = finder.secrets;
    out
}

/// Char index → byte offset, built only for non-ASCII sources.
struct Offsets {
    len: usize,
    char_offsets: Option<Vec<usize>>,
}

impl Offsets {
    fn new(src: &str) -> Self {
        let char_offsets = if src.is_ascii() {
            None
        } else {
            Some(src.char_indices().map(|(i, _)| i).collect())
        };
        Self {
            len: src.len(),
            char_offsets,
        }
    }

    fn byte(&self, m: &Marker) -> usize {
        match &self.char_offsets {
            None => m.index().min(self.len),
            Some(offs) => offs.get(m.index()).copied().unwrap_or(self.len),
        }
    }

    fn pos(&self, m: &Marker, len: usize) -> Pos {
        Pos {
            line: m.line(),
            column: m.col() + 1,
            offset: self.byte(m),
            len: len.max(1),
        }
    }
}

struct PendingKey {
    name: String,
    pos: Pos,
    /// A plain `<<`: its value is merged into the mapping, not kept as a key.
    merge: bool,
}

enum Frame {
    Seq {
        items: Vec<Value>,
        node: u32,
        anchor: usize,
    },
    Map {
        map: Map<String, Value>,
        node: u32,
        anchor: usize,
        pending_key: Option<PendingKey>,
        /// Values of `<<` keys, applied when the mapping ends (its own keys win).
        merges: Vec<(Value, Pos, Pos)>,
    },
}

struct Builder<'s, 'b> {
    offsets: &'s Offsets,
    tracker: Tracker<'b>,
    docs: Vec<Document>,
    errors: Vec<YamlError>,
    /// A limit was exceeded: nothing more is read.
    stopped: bool,
    stack: Vec<Frame>,
    spans: SpanIndex,
    anchors: HashMap<usize, Value>,
    doc_start: Pos,
}

impl<'s, 'b> Builder<'s, 'b> {
    fn new(offsets: &'s Offsets, tracker: Tracker<'b>) -> Self {
        Self {
            offsets,
            tracker,
            docs: Vec::new(),
            errors: Vec::new(),
            stopped: false,
            stack: Vec::new(),
            spans: SpanIndex::default(),
            anchors: HashMap::new(),
            doc_start: Pos::default(),
        }
    }

    fn error(&mut self, pos: Pos, message: impl Into<String>) {
        self.errors.push(YamlError {
            pos,
            message: message.into(),
            limit: None,
        });
    }

    fn is_key(&self) -> bool {
        matches!(
            self.stack.last(),
            Some(Frame::Map {
                pending_key: None,
                ..
            })
        )
    }

    /// The parent node, pointer segment and key position the next node gets from its parent.
    fn child_slot(&self) -> (Option<u32>, String, Option<Pos>) {
        match self.stack.last() {
            None => (None, String::new(), None),
            Some(Frame::Seq { items, node, .. }) => (Some(*node), items.len().to_string(), None),
            Some(Frame::Map {
                node, pending_key, ..
            }) => match pending_key {
                Some(k) => (Some(*node), escape(&k.name), Some(k.pos)),
                // A key that is itself a mapping or sequence: reported when it completes.
                None => (Some(*node), "?".into(), None),
            },
        }
    }

    /// Records the span of a value node (keys have none of their own).
    fn add_span(&mut self, pos: Pos) -> u32 {
        let (parent, seg, key) = self.child_slot();
        self.spans.add(parent, &seg, Span { key, value: pos })
    }

    /// Hands a finished node to its parent (or ends the document).
    fn attach(&mut self, value: Value, pos: Pos, anchor: usize) {
        if anchor != 0 {
            self.anchors.insert(anchor, value.clone());
        }
        let mut err: Option<(Pos, String)> = None;
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
                map,
                pending_key,
                merges,
                ..
            }) => match pending_key.take() {
                None => {
                    let name = match value {
                        Value::String(k) => Some(k),
                        Value::Null => Some("null".into()),
                        Value::Bool(b) => Some(b.to_string()),
                        Value::Number(n) => Some(n.to_string()),
                        _ => None,
                    };
                    match name {
                        Some(name) => {
                            *pending_key = Some(PendingKey {
                                name,
                                pos,
                                merge: false,
                            })
                        }
                        None => {
                            err = Some((
                                pos,
                                "a mapping key must be a plain value, not a mapping or list".into(),
                            ))
                        }
                    }
                }
                Some(k) if k.merge => {
                    let mergeable = match &value {
                        Value::Object(_) => true,
                        Value::Array(a) => a.iter().all(Value::is_object),
                        _ => false,
                    };
                    if !merges.is_empty() {
                        err = Some((k.pos, "duplicate key `<<` in the same mapping".into()));
                    } else if mergeable {
                        merges.push((value, k.pos, pos));
                    } else {
                        err = Some((
                            pos,
                            "a merge key `<<` takes a mapping or a list of mappings (`<<: *defaults`)"
                                .into(),
                        ));
                    }
                }
                Some(k) => {
                    if map.contains_key(&k.name) {
                        err = Some((
                            k.pos,
                            format!("duplicate key `{}` in the same mapping", k.name),
                        ));
                    } else {
                        map.insert(k.name, value);
                    }
                }
            },
        }
        if let Some((pos, message)) = err {
            self.error(pos, message);
        }
    }

    fn on_event(&mut self, ev: Event, mark: Marker) {
        if let Err(e) = self.tracker.on(&ev, &mark, self.offsets) {
            self.errors.push(e);
            self.stopped = true;
            return;
        }
        match ev {
            Event::DocumentStart => {
                self.doc_start = self.offsets.pos(&mark, 1);
                self.spans = SpanIndex::default();
                self.anchors.clear();
            }
            Event::Scalar(text, style, anchor, tag) => {
                let quoted = !matches!(style, TScalarStyle::Plain);
                let len = if quoted { text.len() + 2 } else { text.len() };
                let pos = self.offsets.pos(&mark, len);
                let is_key = self.is_key();
                if is_key && text == "<<" {
                    if quoted || tag.is_some() {
                        self.error(
                            pos,
                            "a key named `<<` is read as a YAML merge key by other tools; write `<<: *anchor` unquoted to merge a mapping, or rename the key",
                        );
                    } else if let Some(Frame::Map { pending_key, .. }) = self.stack.last_mut() {
                        *pending_key = Some(PendingKey {
                            name: text,
                            pos,
                            merge: true,
                        });
                        return;
                    }
                }
                let value = if quoted || tag.is_some_and(|t| t.suffix == "str") {
                    Value::String(text)
                } else {
                    resolve_plain(text)
                };
                if !is_key {
                    self.add_span(pos);
                }
                self.attach(value, pos, anchor);
            }
            Event::Alias(id) => {
                let pos = self.offsets.pos(&mark, 1);
                let value = match self.anchors.get(&id) {
                    Some(v) => v.clone(),
                    None => {
                        self.error(pos, "alias refers to an unknown anchor");
                        Value::Null
                    }
                };
                if !self.is_key() {
                    self.add_span(pos);
                }
                self.attach(value, pos, 0);
            }
            Event::SequenceStart(anchor, _) => {
                let node = self.add_span(self.offsets.pos(&mark, 1));
                self.stack.push(Frame::Seq {
                    items: Vec::new(),
                    node,
                    anchor,
                });
            }
            Event::MappingStart(anchor, _) => {
                let node = self.add_span(self.offsets.pos(&mark, 1));
                self.stack.push(Frame::Map {
                    map: Map::new(),
                    node,
                    anchor,
                    pending_key: None,
                    merges: Vec::new(),
                });
            }
            Event::SequenceEnd | Event::MappingEnd => {
                let Some(frame) = self.stack.pop() else {
                    return;
                };
                let (value, node, anchor) = match frame {
                    Frame::Seq {
                        items,
                        node,
                        anchor,
                    } => (Value::Array(items), node, anchor),
                    Frame::Map {
                        mut map,
                        node,
                        anchor,
                        merges,
                        ..
                    } => {
                        self.merge(&mut map, node, merges);
                        (Value::Object(map), node, anchor)
                    }
                };
                let pos = self
                    .spans
                    .spans
                    .get(node as usize)
                    .map(|s| s.value)
                    .unwrap_or_default();
                self.attach(value, pos, anchor);
            }
            Event::Nothing | Event::StreamStart | Event::StreamEnd | Event::DocumentEnd => {}
        }
    }

    /// Applies `<<` merges: keys the mapping sets itself win, then earlier merged mappings win
    /// over later ones (YAML 1.1's merge key). A merged key points at its `<<` in diagnostics.
    fn merge(&mut self, map: &mut Map<String, Value>, node: u32, merges: Vec<(Value, Pos, Pos)>) {
        for (source, key_pos, value_pos) in merges {
            let sources = match source {
                Value::Array(a) => a,
                other => vec![other],
            };
            for s in sources {
                let Value::Object(entries) = s else { continue };
                for (k, v) in entries {
                    if map.contains_key(&k) {
                        continue;
                    }
                    let seg = escape(&k);
                    if !self.spans.contains(node, &seg) {
                        self.spans.add(
                            Some(node),
                            &seg,
                            Span {
                                key: Some(key_pos),
                                value: value_pos,
                            },
                        );
                    }
                    map.insert(k, v);
                }
            }
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
        let b = d.span("/b").key.unwrap();
        assert_eq!((b.line, b.column), (2, 1));
        let c = d.span("/b/c");
        assert_eq!((c.key.unwrap().line, c.key.unwrap().column), (3, 3));
        let y = d.span("/b/c/1").value;
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
        assert_eq!(docs[1].span("/c").key.unwrap().line, 4);
    }

    #[test]
    fn non_ascii_sources_get_byte_offsets() {
        let src = "# é\na: ü\n";
        let docs = parse(src).unwrap();
        let p = docs[0].span("/a").value;
        assert_eq!(&src[p.offset..p.offset + "ü".len()], "ü");
        assert_eq!((p.line, p.column), (2, 4));
    }

    #[test]
    fn spans_of_deep_long_keys_cost_memory_linear_in_the_input() {
        // 60 levels of 1,000-character keys above 5,000 items: full pointers per node would be
        // 5,000 × 60 KB = 300 MB; the index stores each key once.
        let key = "k".repeat(1000);
        let mut src = String::new();
        for depth in 0..60 {
            src.push_str(&" ".repeat(depth * 2));
            src.push_str(&key);
            src.push_str(":\n");
        }
        src.push_str(&" ".repeat(120));
        src.push_str(&format!("[{}]\n", vec!["1"; 5_000].join(",")));
        let docs = parse(&src).unwrap();
        let index = &docs[0].spans;
        let stored: usize = index.children.keys().map(|(_, k)| k.len()).sum();
        assert!(
            stored < 2 * src.len(),
            "{stored} bytes of keys for {} of source",
            src.len()
        );
        let pointer = format!("{}/4999", format!("/{key}").repeat(60));
        assert!(docs[0].has_span(&pointer));
        assert_eq!(docs[0].span(&pointer).value.line, 61);
    }

    #[test]
    fn merge_keys_merge_and_own_keys_win() {
        let src =
            "defaults: &d {a: 1, b: 2}\nmore: &m {b: 20, c: 30}\nweb:\n  b: 3\n  <<: [*d, *m]\n";
        let docs = parse(src).unwrap();
        let web = &docs[0].value["web"];
        assert_eq!(web, &serde_json::json!({"a": 1, "b": 3, "c": 30}));
        assert!(web.get("<<").is_none());
        // A merged key points at its `<<` line.
        assert_eq!(docs[0].span("/web/a").key.unwrap().line, 5);
        assert_eq!(docs[0].span("/web/b").key.unwrap().line, 4);
    }

    #[test]
    fn a_merge_of_a_scalar_or_a_quoted_merge_key_is_refused() {
        let errs = parse("a: &x 1\nb:\n  <<: *x\n").unwrap_err();
        assert!(errs[0].message.contains("merge key"), "{errs:?}");
        assert_eq!(errs[0].pos.line, 3);
        let errs = parse("b:\n  \"<<\": {a: 1}\n").unwrap_err();
        assert!(errs[0].message.contains("`<<`"), "{errs:?}");
        let errs = parse("b:\n  <<: {a: 1}\n  <<: {c: 1}\n").unwrap_err();
        assert!(errs[0].message.contains("duplicate key `<<`"), "{errs:?}");
    }
}
