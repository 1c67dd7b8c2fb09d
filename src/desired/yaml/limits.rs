//! Bounds on the work one YAML input may cause, counted on the event stream: nesting depth,
//! nodes, and what aliases and anchors copy ("billion laughs").

use std::collections::HashMap;

use yaml_rust2::parser::Event;
use yaml_rust2::scanner::Marker;

use super::{Offsets, YamlError};

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

/// Counts depth, nodes and copies on the event stream and refuses past the limits.
pub(super) struct Tracker<'b> {
    limits: Limits,
    budget: &'b mut Budget,
    /// Per open collection: (nodes, scalar bytes, anchor id) so far.
    open: Vec<(usize, usize, usize)>,
    /// Anchor id → (nodes, scalar bytes) of the anchored node, copies included.
    anchors: HashMap<usize, (usize, usize)>,
}

impl<'b> Tracker<'b> {
    pub(super) fn new(limits: Limits, budget: &'b mut Budget) -> Self {
        Self {
            limits,
            budget,
            open: Vec::new(),
            anchors: HashMap::new(),
        }
    }

    pub(super) fn on(
        &mut self,
        ev: &Event,
        mark: &Marker,
        offsets: &Offsets,
    ) -> Result<(), YamlError> {
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

#[cfg(test)]
mod tests {
    use super::super::*;

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
}
