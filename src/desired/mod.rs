//! The desired state: read from one commit's `desired/` directory, checked against the schema and
//! the rules in `validate`, and handed downstream only when it has no error.
//!
//! It never touches the cluster, and an invalid, empty or half-read desired state is never
//! returned: the caller gets a [`Report`] with every finding instead.
//!
//! Imports go one way: [`diagnostic`] (positions, findings, masking) at the bottom, [`yaml`]
//! above it, `structure` and `validate` above both.

mod check;
pub mod diagnostic;
pub mod quantity;
pub mod schema;
mod stack_ref;
mod structure;
mod validate;
pub mod yaml;

use serde::Serialize;

pub use diagnostic::{Diagnostic, Report, Severity};
pub use schema::{BuildSpec, ComponentSpec, ImageSpec, SecretRef, StackSpec};
pub use stack_ref::StackRef;

use crate::source::{resolve_symlink, EntryKind, Snapshot};

/// Files larger than this are refused: a desired state is a few kilobytes, so a large file is a
/// mistake (a generated dump, a binary) and reading it would only slow every reconcile.
pub const MAX_FILE_BYTES: usize = 1024 * 1024;

/// The most bytes of YAML one desired state may hold, all files together: with
/// [`yaml::Limits::DESIRED`] this keeps validating any accepted input within a small multiple of
/// [`MAX_FILE_BYTES`] in memory.
pub const MAX_TOTAL_BYTES: usize = 4 * MAX_FILE_BYTES;

/// The default directory holding the desired state.
pub const DEFAULT_DIR: &str = "desired";

/// A validated desired state: every stack of one commit.
#[derive(Debug, Clone, Serialize)]
pub struct DesiredState {
    /// The commit it was read from.
    pub commit: String,
    /// The stacks, in path order.
    pub stacks: Vec<Stack>,
}

/// One validated stack and its components.
#[derive(Debug, Clone, Serialize)]
pub struct Stack {
    /// The stack document.
    pub spec: StackSpec,
    /// The file that defines it.
    pub file: String,
    /// The directory it owns: its components are the documents under it.
    pub dir: String,
    /// Its components, dependencies before dependents (ties by name).
    pub components: Vec<Component>,
}

impl Stack {
    /// The Helm release name.
    pub fn release(&self) -> &str {
        self.spec.release.as_deref().unwrap_or(&self.spec.name)
    }

    /// The component called `name`.
    pub fn component(&self, name: &str) -> Option<&Component> {
        self.components.iter().find(|c| c.spec.name == name)
    }
}

/// One validated component.
#[derive(Debug, Clone, Serialize)]
pub struct Component {
    /// The component document.
    pub spec: ComponentSpec,
    /// The file that defines it.
    pub file: String,
}

/// A desired state that passed validation, with its warnings.
#[derive(Debug, Clone)]
pub struct Loaded {
    /// The validated state.
    pub state: DesiredState,
    /// Warnings (never errors).
    pub report: Report,
}

/// A document that passed the schema, with where it came from.
pub(crate) struct Parsed<T> {
    pub spec: T,
    pub file: String,
    pub doc: yaml::Document,
}

/// Reads and validates the desired state under `dir` of `snapshot`.
///
/// Returns the state only when there is no error; otherwise every error and warning found.
pub fn load(snapshot: &Snapshot<'_>, dir: &str) -> Result<Loaded, Report> {
    let dir = dir.trim_matches('/');
    let mut report = Report::default();
    let commit = snapshot.commit().to_string();
    let short = short_id(&commit);
    if !snapshot.is_dir(dir) {
        report.push(
            Diagnostic::file_error(
                "missing-desired",
                dir,
                format!("commit {short} has no `{dir}/` directory"),
            )
            .help(format!(
                "create `{dir}/stack.yaml` (kind: Stack) and one file per component, then commit them; uncommitted files are never read"
            )),
        );
        return Err(report);
    }
    let entries = match snapshot.walk(dir) {
        Ok(e) => e,
        Err(e) => {
            report.push(Diagnostic::file_error("read-failed", dir, e.to_string()));
            return Err(report);
        }
    };
    let mut stacks = Vec::new();
    let mut components = Vec::new();
    let mut broken_stacks = Vec::new();
    // One budget for the whole tree: many small files multiplying aliases are bounded together.
    let mut budget = yaml::Budget::default();
    let mut total_bytes = 0usize;
    for entry in entries {
        if !(entry.path.ends_with(".yaml") || entry.path.ends_with(".yml")) {
            continue;
        }
        let Some(text) = read_text(snapshot, &entry, &mut report) else {
            continue;
        };
        total_bytes += text.len();
        if total_bytes > MAX_TOTAL_BYTES {
            report.push(
                Diagnostic::file_error(
                    "desired-too-large",
                    dir,
                    format!(
                        "`{dir}/` holds more than {MAX_TOTAL_BYTES} bytes of YAML (at {})",
                        entry.path
                    ),
                )
                .help("a desired state is a few kilobytes; move generated data out of it"),
            );
            break;
        }
        // Walk the event stream before building anything: refuses nesting and alias expansion
        // past the limits at their line and column, and finds values a diagnostic must mask.
        let scan = yaml::scan(&text, yaml::Limits::DESIRED, &mut budget);
        report.add_source(&entry.path, &text);
        report.add_secrets(&entry.path, scan.secrets);
        if let Some(e) = scan.error {
            let over_budget = e.limit == Some(yaml::LimitKind::Expansion);
            report.push(limit_diagnostic(&entry.path, e));
            // It may be the stack: its components are not orphans, just unread with it.
            broken_stacks.push(entry.path.clone());
            if over_budget {
                // The budget is shared: every later file would be refused for the same reason.
                break;
            }
            continue;
        }
        structure::parse_file(
            &entry.path,
            &text,
            &mut report,
            &mut stacks,
            &mut components,
            &mut broken_stacks,
        );
    }
    let state = validate::assemble(
        snapshot,
        dir,
        stacks,
        components,
        &broken_stacks,
        &mut report,
    );
    report.sort();
    match state {
        Some(stacks) if !report.has_errors() => Ok(Loaded {
            state: DesiredState {
                commit: snapshot.commit().to_string(),
                stacks,
            },
            report,
        }),
        _ => {
            if !report.has_errors() {
                report.push(Diagnostic::file_error(
                    "no-stack",
                    dir,
                    format!("commit {short} defines no stack under `{dir}/`"),
                ));
            }
            Err(report)
        }
    }
}

/// The diagnostic for YAML refused by [`yaml::Limits`] (too deep, or aliases expanding too far).
fn limit_diagnostic(file: &str, e: yaml::YamlError) -> Diagnostic {
    match e.limit {
        Some(yaml::LimitKind::Depth) => Diagnostic::error("yaml-too-deep", file, e.pos, e.message)
            .expected(format!("at most {} levels of nesting", yaml::Limits::DESIRED.max_depth))
            .help("a desired state nests a few levels; this looks generated, not written"),
        _ => Diagnostic::error("yaml-too-large", file, e.pos, e.message).help(
            "anchors and aliases may share a few values; write the values out, or split the desired state",
        ),
    }
}

/// Reads one file of the commit as UTF-8 text, following an in-repository symlink; reports why not.
fn read_text(
    snapshot: &Snapshot<'_>,
    entry: &crate::source::Entry,
    report: &mut Report,
) -> Option<String> {
    let path = entry.path.as_str();
    let mut target = entry.clone();
    if entry.kind == EntryKind::Symlink {
        let link = snapshot.blob(path, entry.oid).ok()?;
        let link = String::from_utf8_lossy(&link).to_string();
        let resolved = resolve_symlink(path, &link).and_then(|p| snapshot.entry(&p));
        match resolved {
            Some(t) if matches!(t.kind, EntryKind::File | EntryKind::Executable) => target = t,
            _ => {
                report.push(
                    Diagnostic::file_error(
                        "symlink-escapes",
                        path,
                        format!("symlink to `{link}` does not lead to a file of this commit"),
                    )
                    .help("desired-state files must live in the repository; copy the file instead of linking outside it"),
                );
                return None;
            }
        }
    }
    if target.kind == EntryKind::Submodule {
        return None;
    }
    match snapshot.blob_size(&target.path, target.oid) {
        Ok(size) if size > MAX_FILE_BYTES => {
            report.push(
                Diagnostic::file_error(
                    "file-too-large",
                    path,
                    format!("file is {size} bytes, over the {MAX_FILE_BYTES}-byte limit"),
                )
                .help("a desired-state file is a few kilobytes; split it or move generated data elsewhere"),
            );
            return None;
        }
        Ok(_) => {}
        Err(e) => {
            report.push(Diagnostic::file_error("read-failed", path, e.to_string()));
            return None;
        }
    }
    let bytes = match snapshot.blob(&target.path, target.oid) {
        Ok(b) => b,
        Err(e) => {
            report.push(Diagnostic::file_error("read-failed", path, e.to_string()));
            return None;
        }
    };
    match String::from_utf8(bytes) {
        Ok(text) => Some(text),
        Err(e) => {
            let valid = &e.as_bytes()[..e.utf8_error().valid_up_to()];
            let line = valid.iter().filter(|&&b| b == b'\n').count() + 1;
            let column = valid.iter().rev().take_while(|&&b| b != b'\n').count() + 1;
            let pos = diagnostic::Pos {
                line,
                column,
                offset: 0,
                len: 0,
            };
            let mut d = Diagnostic::error("not-utf8", path, pos, "file is not valid UTF-8")
                .expected("UTF-8 text")
                .help("re-save the file as UTF-8");
            // No source is kept for a non-UTF-8 file, so the renderer prints the location only.
            d.path = String::new();
            report.push(d);
            None
        }
    }
}

/// Whether a stack directory (`desired/dev`) is what `wanted` names: the directory itself or
/// its last component (`dev`).
pub fn dir_matches(dir: &str, wanted: &str) -> bool {
    let wanted = wanted.trim_end_matches('/');
    !dir.is_empty() && (dir == wanted || dir.rsplit('/').next() == Some(wanted))
}

/// The first 7 characters of a commit id, as git shows them.
pub fn short_id(id: &str) -> &str {
    &id[..id.len().min(7)]
}
