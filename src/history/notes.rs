//! The outcome on the commit: one git note per commit under [`NOTES_REF`], holding what each
//! stack's latest reconcile of that commit ended with, and whether converge reverted it.
//!
//! A note is a list of blocks, one per stack (plus one for a commit that could not be read or
//! validated, and one for the auto-revert), each a header line `<id>: <outcome>` followed by
//! indented details. Later reconciles of the same commit replace their own stack's block and
//! keep the others; a note is written only when a header changes (a new outcome), so drift
//! corrections and retries that end the same way make no git write. The outcome a block
//! replaces stays as a `before:` line. It never holds Secret values: only reasons, object
//! names, image tags and the one-line message the status record already holds.

use std::path::Path;

use git2::{Oid, Repository};

use super::{open, signature, HistoryError, NOTES_REF};

/// How many objects or images a list in a note shows before `… and N more`.
const LIST_MAX: usize = 20;
/// How many earlier outcomes a block keeps as `before:` lines.
const BEFORE_MAX: usize = 5;
/// The longest message line kept, in characters.
const MESSAGE_MAX: usize = 300;
/// The id of the block saying what converge's auto-revert did about this commit.
const REVERT_ID: &str = "auto-revert";
/// The id of the block of a commit that could not be prepared (invalid, unknown stack).
const COMMIT_ID: &str = "commit";

/// One stack's reconcile of a commit, as plain data (see `StackReport::note`).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct StackNote {
    /// The stack's name.
    pub stack: String,
    /// Its directory in the repository.
    pub dir: String,
    /// Its namespace.
    pub namespace: String,
    /// The reason constant it ended with.
    pub reason: String,
    /// Whether everything applied and became healthy.
    pub ready: bool,
    /// The step it stopped at when not ready.
    pub failed_step: Option<String>,
    /// The status record's one-line message.
    pub message: String,
    /// When it ended (RFC 3339), from the status history.
    pub time: String,
    /// Wall time in milliseconds.
    pub duration_ms: u64,
    /// `image (built|reused|…)` per built component.
    pub images: Vec<String>,
    /// Objects applied.
    pub applied: Vec<String>,
    /// Objects pruned.
    pub pruned: Vec<String>,
    /// This commit is converge's auto-revert of that commit.
    pub reverts: Option<String>,
}

/// One block of a note: a header line and its details.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Block {
    id: String,
    outcome: String,
    details: Vec<String>,
    /// Written only over a block of the same id already in the note, never added.
    replace_only: bool,
}

impl Block {
    /// The block of one stack's reconcile.
    pub fn stack(n: &StackNote) -> Block {
        let mut outcome = n.reason.clone();
        if let Some(step) = n.failed_step.as_deref().filter(|_| !n.ready) {
            outcome.push_str(&format!(" at {step}"));
        }
        let mut details = vec![
            format!("namespace: {}", n.namespace),
            format!("at: {}, took {} ms", n.time, n.duration_ms),
        ];
        if !n.ready && !n.message.is_empty() {
            details.push(format!("message: {}", one_line(&n.message)));
        }
        if let Some(failed) = &n.reverts {
            details.push(format!("reverts: {failed} (converge's auto-revert)"));
        }
        details.push(list("images", &n.images));
        details.push(list("applied", &n.applied));
        details.push(list("pruned", &n.pruned));
        Block {
            id: format!("stack {} ({})", n.stack, n.dir),
            outcome,
            details,
            replace_only: false,
        }
    }

    /// The block of a commit that could not be prepared: nothing was applied.
    pub fn commit(reason: &str, message: &str) -> Block {
        Block {
            id: COMMIT_ID.into(),
            outcome: format!("{reason} (nothing applied)"),
            details: vec![format!("message: {}", one_line(message))],
            replace_only: false,
        }
    }

    /// The commit was applied after all: replaces a `commit:` block of an earlier attempt that
    /// applied nothing (a lease not taken), and adds nothing when there is none.
    pub fn commit_applied() -> Block {
        Block {
            id: COMMIT_ID.into(),
            outcome: "applied".into(),
            details: Vec::new(),
            replace_only: true,
        }
    }

    /// Converge is about to move the branch to `revert`: written before the move, so a crash
    /// right after it still leaves the revert named on the failed commit.
    pub fn reverting(revert: &str, why: &str) -> Block {
        Block {
            id: REVERT_ID.into(),
            outcome: format!("reverting with {revert}"),
            details: vec![format!("why: {}", one_line(why))],
            replace_only: false,
        }
    }

    /// Converge reverted this commit with commit `revert`.
    pub fn reverted(revert: &str, why: &str) -> Block {
        Block {
            id: REVERT_ID.into(),
            outcome: format!("reverted by {revert}"),
            details: vec![format!("why: {}", one_line(why))],
            replace_only: false,
        }
    }

    /// Converge did not revert this commit, and why (one line with the fix).
    pub fn not_reverted(why: &str) -> Block {
        Block {
            id: REVERT_ID.into(),
            outcome: "not reverted".into(),
            details: vec![format!("why: {}", one_line(why))],
            replace_only: false,
        }
    }

    fn header(&self) -> String {
        format!("{}: {}", self.id, self.outcome)
    }
}

fn one_line(s: &str) -> String {
    let line = s.lines().map(str::trim).collect::<Vec<_>>().join(" ");
    match line.char_indices().nth(MESSAGE_MAX) {
        Some((i, _)) => format!("{}…", &line[..i]),
        None => line,
    }
}

fn list(what: &str, items: &[String]) -> String {
    if items.is_empty() {
        return format!("{what} (0)");
    }
    let shown: Vec<&str> = items.iter().take(LIST_MAX).map(String::as_str).collect();
    let more = match items.len().saturating_sub(LIST_MAX) {
        0 => String::new(),
        n => format!(" … and {n} more"),
    };
    format!("{what} ({}): {}{more}", items.len(), shown.join(", "))
}

/// Parses a note's text into blocks; lines before the first header are dropped.
fn parse(text: &str) -> Vec<Block> {
    let mut blocks: Vec<Block> = Vec::new();
    for line in text.lines() {
        if let Some(detail) = line.strip_prefix("  ") {
            if let Some(b) = blocks.last_mut() {
                b.details.push(detail.to_string());
            }
        } else if let Some((id, outcome)) = line.split_once(": ") {
            blocks.push(Block {
                id: id.to_string(),
                outcome: outcome.to_string(),
                details: Vec::new(),
                replace_only: false,
            });
        }
    }
    blocks
}

fn render(blocks: &[Block]) -> String {
    let mut out = String::new();
    for b in blocks {
        out.push_str(&b.header());
        out.push('\n');
        for d in &b.details {
            out.push_str("  ");
            out.push_str(d);
            out.push('\n');
        }
    }
    out
}

/// The note after `new` blocks are merged into `existing`; `None` when every new block's
/// outcome is already what the note says (nothing to write). A replaced outcome is kept as a
/// `before:` line of its block.
pub fn merge(existing: Option<&str>, new: &[Block]) -> Option<String> {
    let mut blocks = existing.map(parse).unwrap_or_default();
    let mut changed = false;
    for n in new {
        match blocks.iter_mut().find(|b| b.id == n.id) {
            Some(old) if old.outcome == n.outcome => {}
            Some(old) => {
                let when = old
                    .details
                    .iter()
                    .find_map(|d| d.strip_prefix("at: "))
                    .map(|at| format!(" ({})", at.split(',').next().unwrap_or(at)))
                    .unwrap_or_default();
                let mut before: Vec<String> = vec![format!("before: {}{when}", old.outcome)];
                before.extend(
                    old.details
                        .iter()
                        .filter(|d| d.starts_with("before: "))
                        .cloned(),
                );
                before.truncate(BEFORE_MAX);
                let mut details = n.details.clone();
                details.extend(before);
                *old = Block {
                    details,
                    ..n.clone()
                };
                changed = true;
            }
            None if n.replace_only => {}
            None => {
                blocks.push(n.clone());
                changed = true;
            }
        }
    }
    changed.then(|| render(&blocks))
}

/// The commit that reverted `note`'s commit, if converge recorded one.
pub fn reverted_by(note: &str) -> Option<String> {
    parse(note)
        .into_iter()
        .find(|b| b.id == REVERT_ID)
        .and_then(|b| b.outcome.strip_prefix("reverted by ").map(str::to_string))
}

/// The text of the note converge wrote on `commit`, if any.
pub fn read(repo: &Repository, commit: Oid) -> Option<String> {
    repo.find_note(Some(NOTES_REF), commit)
        .ok()
        .and_then(|n| n.message().ok().map(str::to_string))
}

/// The text of the note on `commit` in the repository containing `path`.
pub fn read_at(path: &Path, commit: &str) -> Result<Option<String>, HistoryError> {
    let repo = open(path)?;
    let oid = Oid::from_str(commit).map_err(HistoryError::git(format!("reading `{commit}`")))?;
    Ok(read(&repo, oid))
}

/// What [`write`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Written {
    /// The note already said this: no git write.
    Unchanged,
    /// The note was created or updated.
    Updated,
}

/// Merges `blocks` into the note on `commit` in the repository containing `path`, writing only
/// when an outcome changed.
pub fn write(path: &Path, commit: &str, blocks: &[Block]) -> Result<Written, HistoryError> {
    let repo = open(path)?;
    let what = || format!("writing {NOTES_REF} on {}", super::short_id(commit));
    let oid = Oid::from_str(commit).map_err(HistoryError::git(what()))?;
    let existing = read(&repo, oid);
    let Some(text) = merge(existing.as_deref(), blocks) else {
        return Ok(Written::Unchanged);
    };
    let sig = signature(&repo)?;
    repo.note(&sig, &sig, Some(NOTES_REF), oid, &text, true)
        .map_err(HistoryError::git(what()))?;
    Ok(Written::Updated)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn stack(reason: &str, ready: bool) -> StackNote {
        StackNote {
            stack: "todo".into(),
            dir: "desired/dev".into(),
            namespace: "todo".into(),
            reason: reason.into(),
            ready,
            failed_step: (!ready).then(|| "health".into()),
            message: if ready {
                String::new()
            } else {
                "backend: Deployment/x: 0/1 ready\nafter 60 s".into()
            },
            time: "2026-12-06T10:00:00Z".into(),
            duration_ms: 1234,
            images: vec!["todo-backend:abc (built)".into()],
            applied: vec!["Deployment/x".into(), "Service/x".into()],
            pruned: Vec::new(),
            reverts: None,
        }
    }

    #[test]
    fn a_first_note_names_outcome_step_images_and_objects() {
        let text = merge(None, &[Block::stack(&stack("HealthCheckFailed", false))]).unwrap();
        assert_eq!(
            text,
            "stack todo (desired/dev): HealthCheckFailed at health\n  namespace: todo\n  at: 2026-12-06T10:00:00Z, took 1234 ms\n  message: backend: Deployment/x: 0/1 ready after 60 s\n  images (1): todo-backend:abc (built)\n  applied (2): Deployment/x, Service/x\n  pruned (0)\n"
        );
    }

    #[test]
    fn the_same_outcome_again_writes_nothing_even_with_other_objects_and_durations() {
        let first = merge(
            None,
            &[Block::stack(&stack("ReconciliationSucceeded", true))],
        )
        .unwrap();
        let mut drift = stack("ReconciliationSucceeded", true);
        drift.applied = vec!["Deployment/x".into()];
        drift.duration_ms = 40;
        assert_eq!(merge(Some(&first), &[Block::stack(&drift)]), None);
    }

    #[test]
    fn a_new_outcome_replaces_the_block_and_keeps_the_old_one_as_before() {
        let first = merge(None, &[Block::stack(&stack("HealthCheckFailed", false))]).unwrap();
        let second = merge(
            Some(&first),
            &[Block::stack(&stack("ReconciliationSucceeded", true))],
        )
        .unwrap();
        assert!(second.starts_with("stack todo (desired/dev): ReconciliationSucceeded\n"));
        assert!(second.ends_with("  before: HealthCheckFailed at health (2026-12-06T10:00:00Z)\n"));
        assert!(!second.contains("message:"), "{second}");
        assert_eq!(parse(&second).len(), 1);
    }

    #[test]
    fn before_lines_are_bounded() {
        let mut text = String::new();
        for i in 0..(BEFORE_MAX + 3) {
            text = merge(
                Some(&text),
                &[Block::stack(&stack(&format!("R{i}"), false))],
            )
            .unwrap();
        }
        let before = text.lines().filter(|l| l.contains("before: ")).count();
        assert_eq!(before, BEFORE_MAX, "{text}");
    }

    #[test]
    fn another_stacks_block_is_kept() {
        let mut other = stack("ReconciliationSucceeded", true);
        other.stack = "web".into();
        let first = merge(None, &[Block::stack(&other)]).unwrap();
        let both = merge(
            Some(&first),
            &[Block::stack(&stack("HealthCheckFailed", false))],
        )
        .unwrap();
        let ids: Vec<String> = parse(&both).into_iter().map(|b| b.id).collect();
        assert_eq!(ids, ["stack web (desired/dev)", "stack todo (desired/dev)"]);
    }

    #[test]
    fn the_revert_block_is_found_and_survives_a_later_outcome() {
        let text = merge(
            None,
            &[
                Block::stack(&stack("HealthCheckFailed", false)),
                Block::reverted("0123456789abcdef", "HealthCheckFailed at health"),
            ],
        )
        .unwrap();
        assert_eq!(reverted_by(&text).as_deref(), Some("0123456789abcdef"));
        let later = merge(
            Some(&text),
            &[Block::stack(&stack("ReconciliationSucceeded", true))],
        )
        .unwrap();
        assert_eq!(reverted_by(&later).as_deref(), Some("0123456789abcdef"));
        assert_eq!(
            reverted_by(&merge(None, &[Block::not_reverted("dirty")]).unwrap()),
            None
        );
    }

    #[test]
    fn an_applied_commit_replaces_a_stale_commit_block_and_adds_none_otherwise() {
        assert_eq!(merge(None, &[Block::commit_applied()]), None);
        let stale = merge(None, &[Block::commit("ApplyFailed", "lease held by x")]).unwrap();
        let now = merge(Some(&stale), &[Block::commit_applied()]).unwrap();
        assert!(now.starts_with("commit: applied\n"), "{now}");
        assert!(
            now.contains("before: ApplyFailed (nothing applied)"),
            "{now}"
        );
    }

    #[test]
    fn long_lists_and_messages_are_cut() {
        let mut n = stack("HealthCheckFailed", false);
        n.applied = (0..25).map(|i| format!("ConfigMap/c{i}")).collect();
        n.message = "x".repeat(MESSAGE_MAX + 50);
        let text = render(&[Block::stack(&n)]);
        assert!(text.contains("applied (25): ConfigMap/c0,"), "{text}");
        assert!(text.contains("ConfigMap/c19 … and 5 more"), "{text}");
        assert!(text.contains(&format!("message: {}…", "x".repeat(MESSAGE_MAX))));
    }
}
