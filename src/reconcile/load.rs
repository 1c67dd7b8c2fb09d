//! The one way a commit is read: open the repository, validate the desired state of one commit,
//! select the stacks the flags name and (when asked) hash their build inputs into content tags.
//!
//! Every entry point goes through here — the daemon, `apply`, `diff`, `build`, `doctor`, `down`,
//! `explain`, `status` — so "which stacks does this commit have" and "is it valid" have one
//! answer, and build inputs are hashed with one process-wide cache (keyed by git blob id, so it
//! never goes stale).

use std::path::Path;
use std::sync::OnceLock;

use crate::build::{self, DigestCache, ImagePlan};
use crate::desired::{self, Report, Stack};
use crate::error::Error;
use crate::source::Repo;

/// Which stacks of a commit a command works on: `--dir`, `--stack`, `--namespace`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Selection {
    /// The desired-state directory.
    pub dir: String,
    /// Only this stack (by name or directory, see [`stack_matches`]).
    pub stack: Option<String>,
    /// Only the stack in this namespace.
    pub namespace: Option<String>,
}

impl Default for Selection {
    fn default() -> Self {
        Self {
            dir: desired::DEFAULT_DIR.into(),
            stack: None,
            namespace: None,
        }
    }
}

impl Selection {
    /// Whether `stack` is selected.
    pub fn selects(&self, stack: &Stack) -> bool {
        self.stack
            .as_deref()
            .is_none_or(|w| stack_matches(stack, w))
            && self
                .namespace
                .as_deref()
                .is_none_or(|n| n == stack.spec.namespace)
    }

    /// Whether the selectors narrow the stacks at all.
    pub fn narrows(&self) -> bool {
        self.stack.is_some() || self.namespace.is_some()
    }

    /// How an unmatched selection is named in [`Error::UnknownStack`].
    fn wanted(&self) -> String {
        match (&self.stack, &self.namespace) {
            (Some(s), Some(n)) => format!("{s}` in namespace `{n}"),
            (Some(s), None) => s.clone(),
            (None, Some(n)) => format!("(any)` in namespace `{n}"),
            (None, None) => String::new(),
        }
    }
}

/// Whether `--stack` names this stack: its name, its directory, or the directory's last part.
pub fn stack_matches(stack: &Stack, wanted: &str) -> bool {
    stack.spec.name == wanted || dir_matches(&stack.dir, wanted)
}

// Lives in `desired` so the status view, below `reconcile`, can match recorded directories too.
pub use crate::desired::dir_matches;

/// One selected stack of a commit, with its content tags when they were asked for.
#[derive(Debug, Clone)]
pub struct Planned {
    /// The validated stack.
    pub stack: Stack,
    /// One plan per component converge builds (empty unless loaded with [`Images::Plan`]).
    pub images: Vec<ImagePlan>,
}

/// A commit read and validated, its stacks selected.
#[derive(Debug, Clone)]
pub struct Commit {
    /// The full commit id.
    pub id: String,
    /// The selected stacks, in the desired state's order.
    pub stacks: Vec<Planned>,
    /// Warnings of the validation (never errors).
    pub warnings: Report,
}

impl Commit {
    /// The selected stacks.
    pub fn stacks(&self) -> impl Iterator<Item = &Stack> {
        self.stacks.iter().map(|p| &p.stack)
    }
}

/// Whether [`load`] hashes build inputs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Images {
    /// Compute each built component's content tag (what apply, diff and build need).
    Plan,
    /// Only the desired state (what status, down, doctor and explain need).
    Skip,
}

/// The process-wide build-input cache. A true process-wide cache, kept as a static on purpose:
/// it maps a git blob id to the sha256 of that blob's bytes, so an entry can never be stale or
/// differ between callers (any repository, any command, the daemon's every reconcile), and no
/// caller's behaviour depends on it, only how many blobs a plan reads.
fn digests() -> &'static DigestCache {
    static CACHE: OnceLock<DigestCache> = OnceLock::new();
    CACHE.get_or_init(DigestCache::new)
}

/// Reads `rev` of the repository containing `repo_path`, validates its desired state and selects
/// the stacks `selection` names; an empty selection of a narrowing selector is
/// [`Error::UnknownStack`]. Sync (git): call it from `spawn_blocking` in hot async paths.
pub fn load(
    repo_path: &Path,
    rev: &str,
    selection: &Selection,
    images: Images,
) -> Result<Commit, Error> {
    let repo = Repo::open(repo_path)?;
    let snapshot = repo.snapshot(rev)?;
    let id = snapshot.commit().to_string();
    let loaded = desired::load(&snapshot, &selection.dir).map_err(|report| Error::Invalid {
        commit: id.clone(),
        report: Box::new(report),
    })?;
    let mut stacks = Vec::new();
    for stack in loaded.state.stacks {
        if !selection.selects(&stack) {
            continue;
        }
        let images = match images {
            Images::Plan => build::plan(&snapshot, &stack, digests())?,
            Images::Skip => Vec::new(),
        };
        stacks.push(Planned { stack, images });
    }
    if stacks.is_empty() && selection.narrows() {
        return Err(Error::UnknownStack {
            name: selection.wanted(),
            commit: id,
        });
    }
    Ok(Commit {
        id,
        stacks,
        warnings: loaded.report,
    })
}

/// The newest of `start`'s last `depth` commits whose desired state is valid, with how many
/// commits back it is: a daemon learns its stacks from it even when the tip is broken, and a
/// commit that cannot be read is recorded in the status of the stacks it had. `Ok(None)` when
/// none is valid; a valid commit without the selected stack is an error (it is not "broken").
pub fn newest_valid(
    repo_path: &Path,
    start: &str,
    selection: &Selection,
    depth: usize,
) -> Result<Option<(usize, Commit)>, Error> {
    for back in 0..depth {
        let rev = format!("{start}~{back}");
        match load(repo_path, &rev, selection, Images::Skip) {
            Ok(c) => return Ok(Some((back, c))),
            Err(Error::Invalid { .. }) => continue,
            // The history ended (a root commit, a shallow clone).
            Err(Error::Source(_)) if back > 0 => return Ok(None),
            Err(e) => return Err(e),
        }
    }
    Ok(None)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_directory_is_named_whole_or_by_its_last_part() {
        assert!(dir_matches("desired/dev", "dev"));
        assert!(dir_matches("desired/dev", "desired/dev/"));
        assert!(!dir_matches("desired/dev", "de"));
        assert!(!dir_matches("", ""));
    }
}
