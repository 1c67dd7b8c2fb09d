//! The opt-in automatic rollback: a real `git revert` commit of a commit that failed its health
//! checks, made on the tracked branch by converge, which the daemon then deploys like any commit.
//!
//! The guards are one pure function ([`guard`]); [`revert`] gathers the facts and carries it
//! out. The branch moves by compare-and-swap from the failed commit, so a commit pushed
//! meanwhile always wins. When the branch is checked out (in the main or a linked worktree),
//! the paths the revert touches are updated in that worktree's index and files too, after
//! checking they hold no uncommitted change, so `git status` stays clean; converge never
//! touches any other path of a working tree.

use std::path::{Path, PathBuf};

use git2::{build::CheckoutBuilder, Commit, ErrorCode, Oid, Repository, StatusOptions};

use super::{open, short_id, signature, HistoryError};

/// The line git writes into a revert's message, which marks a commit as a revert.
const REVERTS_MARK: &str = "This reverts commit ";

/// Why converge did not revert a failed commit: one line each, with the fix.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Refusal {
    /// The branch moved on since the failed commit: the newer commit wins.
    #[error("not reverting {}: {branch} has moved on to {} (a newer commit wins)", short_id(.failed), short_id(.tip))]
    Moved {
        /// The failed commit.
        failed: String,
        /// The branch.
        branch: String,
        /// Its tip now.
        tip: String,
    },
    /// The failed commit is itself a revert.
    #[error("not reverting {}: it is itself a revert (of {}); fix forward with a new commit", short_id(.failed), short_id(.of))]
    RevertOfRevert {
        /// The failed commit.
        failed: String,
        /// The commit it reverts.
        of: String,
    },
    /// The failed commit has no parent to go back to.
    #[error("not reverting {}: it is the branch's first commit (nothing to go back to); fix forward with a new commit", short_id(.failed))]
    Root {
        /// The failed commit.
        failed: String,
    },
    /// Converge reverted this commit before.
    #[error("not reverting {} again: converge reverted it already with {}", short_id(.failed), short_id(.revert))]
    Already {
        /// The failed commit.
        failed: String,
        /// The revert made then.
        revert: String,
    },
    /// Pull mode deploys a remote's branch, which converge never writes.
    #[error("not reverting {}: in pull mode the branch is the remote's; revert it there (`git revert {}` and push)", short_id(.failed), short_id(.failed))]
    PullMode {
        /// The failed commit.
        failed: String,
    },
    /// The checked-out working tree has uncommitted changes in paths the revert touches.
    #[error("not reverting {}: uncommitted changes in {} (paths the revert touches) in {}; commit or stash them, then `converge sync` (or `git revert {}` yourself)", short_id(.failed), .paths.join(", "), .worktree.display(), short_id(.failed))]
    Dirty {
        /// The failed commit.
        failed: String,
        /// The worktree where the branch is checked out.
        worktree: PathBuf,
        /// The changed paths.
        paths: Vec<String>,
    },
    /// The revert does not apply cleanly.
    #[error("reverting {} conflicts in {}; revert it by hand: `git revert {}`, resolve, commit", short_id(.failed), .paths.join(", "), short_id(.failed))]
    Conflict {
        /// The failed commit.
        failed: String,
        /// The conflicting paths.
        paths: Vec<String>,
    },
}

/// Errors of [`revert`]: a refusal (nothing written), or a git failure.
#[derive(Debug, thiserror::Error)]
pub enum RevertError {
    /// A guard said no.
    #[error(transparent)]
    Refused(#[from] Refusal),
    /// Git failed.
    #[error(transparent)]
    Git(#[from] HistoryError),
}

/// What is known about a failed commit before reverting it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Facts {
    /// The failed commit.
    pub failed: String,
    /// The branch (`refs/heads/main`).
    pub branch: String,
    /// The branch's tip now.
    pub tip: String,
    /// The failed commit's whole message.
    pub message: String,
    /// How many parents it has.
    pub parents: usize,
    /// The revert converge made of it before, from its note.
    pub reverted_by: Option<String>,
    /// Whether the tracked ref is pull mode's copy of a remote branch.
    pub pull_mode: bool,
}

/// The commit `message` says it reverts (git's `This reverts commit <id>.` line).
pub fn reverts(message: &str) -> Option<String> {
    message.lines().find_map(|l| {
        let rest = l.trim().strip_prefix(REVERTS_MARK)?;
        let id: String = rest.chars().take_while(char::is_ascii_hexdigit).collect();
        (id.len() >= 7).then_some(id)
    })
}

/// Whether converge may revert the failed commit: the guards, in the order a person would ask.
pub fn guard(f: &Facts) -> Result<(), Refusal> {
    let failed = f.failed.clone();
    if let Some(revert) = &f.reverted_by {
        return Err(Refusal::Already {
            failed,
            revert: revert.clone(),
        });
    }
    if f.pull_mode {
        return Err(Refusal::PullMode { failed });
    }
    if f.tip != f.failed {
        return Err(Refusal::Moved {
            failed,
            branch: f.branch.trim_start_matches("refs/heads/").to_string(),
            tip: f.tip.clone(),
        });
    }
    if let Some(of) = reverts(&f.message) {
        return Err(Refusal::RevertOfRevert { failed, of });
    }
    if f.parents == 0 {
        return Err(Refusal::Root { failed });
    }
    Ok(())
}

/// The revert's message: git's own shape (so `git log` and converge's guard know it for a
/// revert), then why converge made it.
pub fn message(summary: &str, failed: &str, why: &str) -> String {
    format!(
        "Revert \"{summary}\"\n\n{REVERTS_MARK}{failed}.\n\nconverge reverted it automatically (onFailure: revert): it failed its health checks: {why}\n"
    )
}

/// A revert converge made.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reverted {
    /// The revert commit, now the branch's tip.
    pub commit: String,
    /// The worktree whose index and files were updated, when the branch is checked out.
    pub worktree: Option<PathBuf>,
}

/// Reverts `failed`, the tip of `branch` (`refs/heads/main`) in the repository containing
/// `path`, with a commit by converge whose message names `why`; `reverted_by` is the revert
/// recorded before (from the note), `pull_mode` whether the branch is a remote's.
pub fn revert(
    path: &Path,
    branch: &str,
    failed: &str,
    why: &str,
    reverted_by: Option<String>,
    pull_mode: bool,
) -> Result<Reverted, RevertError> {
    let repo = open(path)?;
    let failed_oid =
        Oid::from_str(failed).map_err(HistoryError::git(format!("reading `{failed}`")))?;
    let failed_commit = repo
        .find_commit(failed_oid)
        .map_err(HistoryError::git(format!(
            "reading commit {}",
            short_id(failed)
        )))?;
    let tip = repo
        .refname_to_id(branch)
        .map_err(HistoryError::git(format!("reading {branch}")))?;
    guard(&Facts {
        failed: failed.to_string(),
        branch: branch.to_string(),
        tip: tip.to_string(),
        message: failed_commit.message().unwrap_or("").to_string(),
        parents: failed_commit.parent_count(),
        reverted_by,
        pull_mode,
    })?;

    // A merge is reverted against its first parent, the branch it was merged into.
    let mainline = if failed_commit.parent_count() > 1 {
        1
    } else {
        0
    };
    let what = format!("reverting {}", short_id(failed));
    let mut index = repo
        .revert_commit(&failed_commit, &failed_commit, mainline, None)
        .map_err(HistoryError::git(what.clone()))?;
    if index.has_conflicts() {
        let paths = index
            .conflicts()
            .map_err(HistoryError::git(what.clone()))?
            .filter_map(Result::ok)
            .filter_map(|c| c.our.or(c.their).or(c.ancestor))
            .map(|e| String::from_utf8_lossy(&e.path).into_owned())
            .collect();
        return Err(Refusal::Conflict {
            failed: failed.to_string(),
            paths,
        }
        .into());
    }
    let tree = index
        .write_tree_to(&repo)
        .and_then(|t| repo.find_tree(t))
        .map_err(HistoryError::git(what.clone()))?;
    let touched = touched(&repo, &failed_commit, &tree).map_err(HistoryError::git(what.clone()))?;

    let checkout = checked_out(&repo, branch);
    if let Some(wt) = &checkout {
        let paths = dirty(wt, &touched).map_err(HistoryError::git(what.clone()))?;
        if !paths.is_empty() {
            return Err(Refusal::Dirty {
                failed: failed.to_string(),
                worktree: workdir(wt),
                paths,
            }
            .into());
        }
    }

    let sig = signature(&repo)?;
    let summary = failed_commit
        .summary()
        .ok()
        .flatten()
        .unwrap_or("")
        .to_string();
    let revert = repo
        .commit(
            None,
            &sig,
            &sig,
            &message(&summary, failed, why),
            &tree,
            &[&failed_commit],
        )
        .map_err(HistoryError::git(what.clone()))?;
    // The worktree first, while its HEAD is still the failed commit: a safe checkout then
    // updates exactly the touched files (clean, checked above) and refuses if one changed since.
    if let (Some(wt), false) = (&checkout, touched.is_empty()) {
        let mut co = CheckoutBuilder::new();
        co.safe().update_index(true).disable_pathspec_match(true);
        for p in &touched {
            co.path(p.as_str());
        }
        // The worktree is its own handle on the same object database: look the tree up there.
        wt.find_tree(tree.id())
            .and_then(|t| wt.checkout_tree(t.as_object(), Some(&mut co)))
            .map_err(HistoryError::git(format!(
                "{what}: updating the checked-out files in {}",
                workdir(wt).display()
            )))?;
    }
    let log = format!("converge: auto-revert of {}", short_id(failed));
    let moved = repo
        .reference_matching(branch, revert, true, failed_oid, &log)
        .map(|_| ());
    match moved {
        Ok(_) => Ok(Reverted {
            commit: revert.to_string(),
            worktree: checkout.as_ref().map(workdir),
        }),
        Err(e) if e.code() == ErrorCode::Modified => {
            let tip = repo
                .refname_to_id(branch)
                .map(|t| t.to_string())
                .unwrap_or_default();
            Err(Refusal::Moved {
                failed: failed.to_string(),
                branch: branch.trim_start_matches("refs/heads/").to_string(),
                tip,
            }
            .into())
        }
        Err(e) => Err(HistoryError::git(format!("{what}: moving {branch}"))(e).into()),
    }
}

/// The paths that differ between the failed commit's tree and the revert's.
fn touched(
    repo: &Repository,
    failed: &Commit<'_>,
    revert: &git2::Tree<'_>,
) -> Result<Vec<String>, git2::Error> {
    let diff = repo.diff_tree_to_tree(Some(&failed.tree()?), Some(revert), None)?;
    let mut paths: Vec<String> = diff
        .deltas()
        .flat_map(|d| [d.old_file().path(), d.new_file().path()])
        .flatten()
        .map(|p| p.to_string_lossy().into_owned())
        .collect();
    paths.sort();
    paths.dedup();
    Ok(paths)
}

/// The worktree (main or linked) whose HEAD is `branch`, opened; `None` when the branch is not
/// checked out anywhere (a bare repository, or another branch is).
fn checked_out(repo: &Repository, branch: &str) -> Option<Repository> {
    let mut candidates: Vec<PathBuf> = Vec::new();
    if let Some(w) = repo.workdir() {
        candidates.push(w.to_path_buf());
    }
    // The main worktree of a linked one: the parent of the common `.git` directory.
    if let Some(main) = repo.commondir().parent() {
        if repo.commondir().ends_with(".git") {
            candidates.push(main.to_path_buf());
        }
    }
    if let Ok(names) = repo.worktrees() {
        for name in names.iter().filter_map(|n| n.ok().flatten()) {
            if let Ok(wt) = repo.find_worktree(name) {
                candidates.push(wt.path().to_path_buf());
            }
        }
    }
    candidates.into_iter().find_map(|p| {
        let wt = Repository::open(&p).ok()?;
        if wt.is_bare() {
            return None;
        }
        let on_branch = wt
            .find_reference("HEAD")
            .ok()?
            .symbolic_target()
            .ok()
            .flatten()
            == Some(branch);
        on_branch.then_some(wt)
    })
}

fn workdir(wt: &Repository) -> PathBuf {
    wt.workdir().unwrap_or_else(|| wt.path()).to_path_buf()
}

/// Which of `paths` have uncommitted changes (index or files, untracked included) in `wt`.
fn dirty(wt: &Repository, paths: &[String]) -> Result<Vec<String>, git2::Error> {
    if paths.is_empty() {
        return Ok(Vec::new());
    }
    let mut opts = StatusOptions::new();
    opts.include_untracked(true)
        .include_ignored(false)
        .disable_pathspec_match(true);
    for p in paths {
        opts.pathspec(p);
    }
    Ok(wt
        .statuses(Some(&mut opts))?
        .iter()
        .filter(|e| e.status() != git2::Status::CURRENT)
        .filter_map(|e| e.path().ok().map(str::to_string))
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn facts() -> Facts {
        Facts {
            failed: "a".repeat(40),
            branch: "refs/heads/main".into(),
            tip: "a".repeat(40),
            message: "backend v2\n".into(),
            parents: 1,
            reverted_by: None,
            pull_mode: false,
        }
    }

    #[test]
    fn the_failed_tip_of_the_branch_is_reverted() {
        assert_eq!(guard(&facts()), Ok(()));
    }

    #[test]
    fn a_newer_commit_wins() {
        let f = Facts {
            tip: "b".repeat(40),
            ..facts()
        };
        let refusal = guard(&f).unwrap_err();
        assert!(matches!(refusal, Refusal::Moved { .. }));
        assert_eq!(
            refusal.to_string(),
            "not reverting aaaaaaa: main has moved on to bbbbbbb (a newer commit wins)"
        );
    }

    #[test]
    fn a_revert_is_never_reverted_and_git_s_own_message_counts() {
        let f = Facts {
            message: format!("Revert \"x\"\n\nThis reverts commit {}.\n", "c".repeat(40)),
            ..facts()
        };
        assert_eq!(
            guard(&f),
            Err(Refusal::RevertOfRevert {
                failed: "a".repeat(40),
                of: "c".repeat(40)
            })
        );
        let ours = message("backend v2", &"d".repeat(40), "HealthCheckFailed at health");
        assert_eq!(reverts(&ours), Some("d".repeat(40)));
        assert_eq!(reverts("fix: This reverts commit nothing"), None);
    }

    #[test]
    fn at_most_once_then_pull_mode_then_root() {
        let once = Facts {
            reverted_by: Some("e".repeat(40)),
            tip: "b".repeat(40),
            ..facts()
        };
        assert!(matches!(guard(&once), Err(Refusal::Already { .. })));
        let pull = Facts {
            pull_mode: true,
            ..facts()
        };
        assert!(guard(&pull)
            .unwrap_err()
            .to_string()
            .contains("in pull mode the branch is the remote's"));
        let root = Facts {
            parents: 0,
            ..facts()
        };
        assert!(matches!(guard(&root), Err(Refusal::Root { .. })));
    }

    #[test]
    fn a_dirty_refusal_names_the_paths_and_the_fix() {
        let r = Refusal::Dirty {
            failed: "a".repeat(40),
            worktree: PathBuf::from("/src/app"),
            paths: vec!["desired/backend.yaml".into()],
        };
        assert_eq!(
            r.to_string(),
            "not reverting aaaaaaa: uncommitted changes in desired/backend.yaml (paths the revert touches) in /src/app; commit or stash them, then `converge sync` (or `git revert aaaaaaa` yourself)"
        );
    }
}
