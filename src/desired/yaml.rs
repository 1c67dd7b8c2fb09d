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

use std::collections::HashMap;

use serde_json::{Map, Number, Value};
use yaml_rust2::parser::{Event, Parser};
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

/// The [`Limits`] bound an input exceeded.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LimitKind {
    /// Nesting deeper than `max_depth`.
    Depth,
    /// More nodes than `max_nodes`, or aliases copying more than `max_copied_*`.
    Expansion,
}

/// Bounds on the work one YAML input may cause; checked on the event stream before any tree is
/// built, so an input over them costs a few kilobytes, not gigabytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// The deepest nesting of mappings and sequences.
    pub max_depth: usize,
    /// The most nodes (scalars, mappings, sequences) materialized, counting every copy an alias
    /// or an anchor makes.
    pub max_nodes: usize,
    /// The most nodes that aliases and anchors may copy.
    pub max_copied_nodes: usize,
    /// The most scalar bytes that aliases and anchors may copy.
    pub max_copied_bytes: usize,
}

impl Limits {
    /// For a desired state: a few hundred nodes is typical, a 500-component tree ~20,000; at
    /// about 200 bytes a node, the limit keeps any accepted tree near 10 MB.
    pub const DESIRED: Limits = Limits {
        max_depth: 64,
        max_nodes: 50_000,
        max_copied_nodes: 50_000,
        max_copied_bytes: 4 << 20,
    };

    /// For Helm's rendered output, which is as large as the chart makes it: only copies are bounded.
    pub const MANIFESTS: Limits = Limits {
        max_depth: 128,
        max_nodes: usize::MAX,
        max_copied_nodes: 1_000_000,
        max_copied_bytes: 64 << 20,
    };
}

/// Work counted against [`Limits`]; one budget can span several files (a whole desired state).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Budget {
    /// Nodes materialized so far, copies included.
    pub nodes: usize,
    /// Nodes copied by aliases and anchors so far.
    pub copied_nodes: usize,
    /// Scalar bytes copied by aliases and anchors so far.
    pub copied_bytes: usize,
}

/// A value in the source that looks like a secret: what a diagnostic must never show.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Secret {
    /// Byte range in the source (may span lines for block scalars).
    pub range: std::ops::Range<usize>,
    /// The value as parsed, for scrubbing messages that quote it.
    pub text: String,
}

/// What [`scan`] found without building a tree.
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

/// Counts depth, nodes and copies on the event stream and refuses past the limits.
struct Tracker<'b> {
    limits: Limits,
    budget: &'b mut Budget,
    /// Per open collection: (nodes, scalar bytes, anchor id) so far.
    open: Vec<(usize, usize, usize)>,
    /// Anchor id → (nodes, scalar bytes) of the anchored node, copies included.
    anchors: HashMap<usize, (usize, usize)>,
}

impl<'b> Tracker<'b> {
    fn new(limits: Limits, budget: &'b mut Budget) -> Self {
        Self {
            limits,
            budget,
            open: Vec::new(),
            anchors: HashMap::new(),
        }
    }

    fn on(&mut self, ev: &Event, mark: &Marker, offsets: &Offsets) -> Result<(), YamlError> {
        let at = |message: String, limit| YamlError {
            pos: offsets.pos(mark, 1),
            message,
            limit: Some(limit),
        };
        let (nodes, bytes) = match ev {
            Event::DocumentStart => {
                // Aliases never cross documents.
                self.anchors.clear();
                return Ok(());
            }
            Event::Scalar(text, _, anchor, _) => {
                let n = (1, text.len());
                if *anchor != 0 {
                    self.anchors.insert(*anchor, n);
                    // The builder keeps a copy of every anchored node.
                    self.copy(n).map_err(|m| at(m, LimitKind::Expansion))?;
                }
                (1, text.len())
            }
            Event::Alias(id) => {
                let (n, b) = self.anchors.get(id).copied().unwrap_or((1, 0));
                self.copy((n, b)).map_err(|m| at(m, LimitKind::Expansion))?;
                (n, b)
            }
            Event::SequenceStart(anchor, _) | Event::MappingStart(anchor, _) => {
                if self.open.len() >= self.limits.max_depth {
                    return Err(at(
                        format!(
                            "nesting is deeper than {} levels; flatten the structure",
                            self.limits.max_depth
                        ),
                        LimitKind::Depth,
                    ));
                }
                self.open.push((1, 0, *anchor));
                self.count(1).map_err(|m| at(m, LimitKind::Expansion))?;
                return Ok(());
            }
            Event::SequenceEnd | Event::MappingEnd => {
                let Some((n, b, anchor)) = self.open.pop() else {
                    return Ok(());
                };
                if let Some(parent) = self.open.last_mut() {
                    parent.0 = parent.0.saturating_add(n);
                    parent.1 = parent.1.saturating_add(b);
                }
                if anchor != 0 {
                    self.anchors.insert(anchor, (n, b));
                    self.copy((n, b)).map_err(|m| at(m, LimitKind::Expansion))?;
                }
                return Ok(());
            }
            Event::Nothing | Event::StreamStart | Event::StreamEnd | Event::DocumentEnd => {
                return Ok(())
            }
        };
        if let Some(parent) = self.open.last_mut() {
            parent.0 = parent.0.saturating_add(nodes);
            parent.1 = parent.1.saturating_add(bytes);
        }
        self.count(nodes).map_err(|m| at(m, LimitKind::Expansion))
    }

    fn count(&mut self, nodes: usize) -> Result<(), String> {
        self.budget.nodes = self.budget.nodes.saturating_add(nodes);
        if self.budget.nodes > self.limits.max_nodes {
            return Err(format!(
                "the YAML expands to more than {} values (every use of an alias counts); a desired state needs far fewer",
                self.limits.max_nodes
            ));
        }
        Ok(())
    }

    fn copy(&mut self, (nodes, bytes): (usize, usize)) -> Result<(), String> {
        self.budget.copied_nodes = self.budget.copied_nodes.saturating_add(nodes);
        self.budget.copied_bytes = self.budget.copied_bytes.saturating_add(bytes);
        if self.budget.copied_nodes > self.limits.max_copied_nodes
            || self.budget.copied_bytes > self.limits.max_copied_bytes
        {
            return Err(format!(
                "aliases expand to more than {} values or {} bytes (a \"billion laughs\"); refusing to expand them",
                self.limits.max_copied_nodes, self.limits.max_copied_bytes
            ));
        }
        Ok(())
    }
}

/// Finds values under credential-like keys on the event stream, for masking in diagnostics.
struct SecretFinder<'s> {
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
    secrets: Vec<Secret>,
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
    fn new(src: &'s str, offsets: &'s Offsets) -> Self {
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
                let secret = !refs && (f.secret || super::validate::looks_like_credential(&f.key));
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

    fn on(&mut self, ev: &Event, mark: &Marker) {
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

    fn finish(&mut self, end: usize) {
        if let Some((start, text)) = self.pending.take() {
            self.secrets.push(Secret {
                range: start..end.max(start),
                text,
            });
        }
    }
}

/// A mapping key waiting for its value.
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

    /// The classic "billion laughs": nine levels of nine aliases, 1 KiB of text.
    fn laughs() -> String {
        let mut s = String::from("a0: &a0 [lol, lol, lol, lol, lol, lol, lol, lol, lol]\n");
        for i in 1..10 {
            let refs = vec![format!("*a{}", i - 1); 9].join(", ");
            s.push_str(&format!("a{i}: &a{i} [{refs}]\n"));
        }
        s
    }

    #[test]
    fn an_alias_bomb_is_refused_at_the_alias_that_crosses_the_limit() {
        let src = laughs();
        let errs = parse(&src).unwrap_err();
        assert_eq!(errs.len(), 1, "{errs:?}");
        assert_eq!(errs[0].limit, Some(LimitKind::Expansion));
        assert!(
            errs[0].message.contains("billion laughs"),
            "{}",
            errs[0].message
        );
        // Level 5 already copies 9^5 = 59,049 values: the limit is crossed around its line.
        assert!((5..=7).contains(&errs[0].pos.line), "{:?}", errs[0].pos);
        assert!(src.lines().nth(errs[0].pos.line - 1).unwrap().contains('*'));
        let scanned = scan(&src, Limits::DESIRED, &mut Budget::default());
        assert_eq!(scanned.error.map(|e| e.pos), Some(errs[0].pos));
    }

    #[test]
    fn a_long_scalar_repeated_by_aliases_is_refused_by_its_bytes() {
        let mut src = format!("a: &big {}\nb: [", "x".repeat(100_000));
        src.push_str(&vec!["*big"; 100].join(", "));
        src.push_str("]\n");
        let errs = parse(&src).unwrap_err();
        assert_eq!(errs[0].limit, Some(LimitKind::Expansion), "{errs:?}");
        assert_eq!(errs[0].pos.line, 2);
    }

    #[test]
    fn modest_anchors_and_aliases_still_work() {
        let src =
            "base: &b {cpu: 100m, memory: 128Mi}\nweb: {resources: *b}\napi: {resources: *b}\n";
        let docs = parse(src).unwrap();
        assert_eq!(docs[0].value["api"]["resources"]["memory"], "128Mi");
    }

    #[test]
    fn the_budget_is_shared_across_files() {
        let mut budget = Budget::default();
        let half = format!("a: [{}]\n", vec!["1"; 30_000].join(","));
        assert!(scan(&half, Limits::DESIRED, &mut budget).error.is_none());
        let second = scan(&half, Limits::DESIRED, &mut budget);
        assert_eq!(second.error.unwrap().limit, Some(LimitKind::Expansion));
    }

    #[test]
    fn deep_nesting_is_refused_at_its_line_before_anything_recurses() {
        // 40,000 levels overflowed the stack of a recursive loader; the test thread's stack is
        // smaller than main's, so a recursive parser would abort this test.
        let src = format!("x:\n{}1\n", "- ".repeat(40_000));
        let errs = parse(&src).unwrap_err();
        assert_eq!(errs.len(), 1);
        assert_eq!(errs[0].limit, Some(LimitKind::Depth));
        assert_eq!((errs[0].pos.line, errs[0].pos.column), (2, 127));
        assert!(
            errs[0].message.contains("deeper than 64"),
            "{}",
            errs[0].message
        );
        let flow = format!("x: {}{}\n", "{a: ".repeat(200), "}".repeat(200));
        assert_eq!(parse(&flow).unwrap_err()[0].limit, Some(LimitKind::Depth));
        let ok = format!("x:\n{}1\n", "- ".repeat(60));
        assert!(parse(&ok).is_ok());
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
}
