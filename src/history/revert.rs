//! The opt-in automatic rollback: a real `git revert` commit of a commit that failed its health
//! checks, made on the tracked branch by converge, which the daemon then deploys like any commit.
//!
//! The guards are pure functions ([`guard`], [`in_scope`]); [`prepare`] gathers the facts and
//! makes the revert commit object (nothing points at it yet), [`finish`] moves the branch. The
//! branch moves by compare-and-swap from the failed commit, so a commit pushed meanwhile always
//! wins. When the branch is checked out (in the main or a linked worktree), converge does what
//! `git commit` does: it takes that worktree's `index.lock` (refusing if another git process
//! holds it), re-checks the tip and the touched paths under the lock, moves the branch, writes
//! the touched files, writes the new index into the lock file and renames it into place. A
//! small journal written under the lock lets [`recover`] finish or roll back a revert that a
//! crash interrupted. Converge never touches any other path of a working tree.

use std::ffi::OsStr;
use std::fs::{File, OpenOptions};
use std::io::Write;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};

use git2::{
    Commit, ErrorCode, FileMode, Index, IndexEntry, IndexTime, ObjectType, Oid, Repository,
    RepositoryState, StatusOptions, Tree,
};

use super::{open, short_id, signature, HistoryError};

mod worktree;
use worktree::*;

/// The line git writes into a revert's message, which marks a commit as a revert.
const REVERTS_MARK: &str = "This reverts commit ";
/// The line of converge's revert message that carries the reason (parsed back by
/// [`converge_revert_of`] after a restart).
const WHY_MARK: &str =
    "converge reverted it automatically (onFailure: revert): it failed its health checks: ";
/// The journal of a revert in progress, in the gitdir of the worktree whose index it holds.
const JOURNAL: &str = "converge-revert";
/// Where the new index is built before it is copied into `index.lock`.
const INDEX_SCRATCH: &str = "converge-index.tmp";

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
    /// The failed commit changed nothing of the failing stack: something else made it fail.
    #[error("not reverting {}: commit {} did not change stack {stack} (its directory or its components' build contexts), so it did not cause the failure; fix what did, then `converge sync`", short_id(.failed), short_id(.failed))]
    Unrelated {
        /// The failed commit.
        failed: String,
        /// The failing stack.
        stack: String,
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
    /// Another git process holds the worktree's index.
    #[error("not reverting {} yet: another git process is running in {} (its index.lock exists); converge will retry", short_id(.failed), .worktree.display())]
    Busy {
        /// The failed commit.
        failed: String,
        /// The worktree.
        worktree: PathBuf,
    },
    /// A rebase, merge, cherry-pick… is in progress where the revert would write.
    #[error("not reverting {}: {what} is in progress in {}; finish or abort it, then `converge sync`", short_id(.failed), .worktree.display())]
    InProgress {
        /// The failed commit.
        failed: String,
        /// The worktree.
        worktree: PathBuf,
        /// The operation (`a rebase of main`, `a merge`).
        what: String,
    },
    /// The worktree hides paths from git (sparse checkout, skip-worktree, assume-unchanged).
    #[error("not reverting {}: {} {why}; converge does not write around it: revert it by hand (`git revert {}`)", short_id(.failed), .worktree.display(), short_id(.failed))]
    Sparse {
        /// The failed commit.
        failed: String,
        /// The worktree.
        worktree: PathBuf,
        /// What hides them.
        why: String,
    },
    /// The revert would change a submodule, which converge does not check out.
    #[error("not reverting {}: it changes the submodule {path}; revert it by hand (`git revert {}`)", short_id(.failed), short_id(.failed))]
    Submodule {
        /// The failed commit.
        failed: String,
        /// The submodule's path.
        path: String,
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

/// Whether any of `changed` (repository-relative paths) lies in `scope` (the failing stack's
/// directory and its components' build contexts; `""` or `.` is the whole repository).
pub fn in_scope(changed: &[Vec<u8>], scope: &[String]) -> bool {
    scope.iter().any(|s| {
        let s = s.trim_start_matches("./").trim_end_matches('/');
        if s.is_empty() || s == "." {
            return !changed.is_empty();
        }
        changed.iter().any(|p| {
            p.as_slice() == s.as_bytes()
                || (p.starts_with(s.as_bytes()) && p.get(s.len()) == Some(&b'/'))
        })
    })
}

/// The revert's message: git's own shape (so `git log` and converge's guard know it for a
/// revert), then why converge made it. `reason` must hold only what the caller vouches is safe
/// to keep forever in a commit that is likely pushed: reason, step, stack, object names; the
/// cluster's free text goes into the note, never here.
pub fn message(summary: &str, failed: &str, reason: &str) -> String {
    format!("Revert \"{summary}\"\n\n{REVERTS_MARK}{failed}.\n\n{WHY_MARK}{reason}\n")
}

/// A revert converge made.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reverted {
    /// The revert commit, now the branch's tip.
    pub commit: String,
    /// The worktree whose index and files were updated, when the branch is checked out.
    pub worktree: Option<PathBuf>,
}

/// What the daemon asks to revert.
#[derive(Debug, Clone, Default)]
pub struct Request {
    /// The branch (`refs/heads/main`).
    pub branch: String,
    /// The failed commit, the branch's tip.
    pub failed: String,
    /// The failing stack.
    pub stack: String,
    /// Why, for the commit message: reason, step, stack, object names only (see [`message`]).
    pub reason: String,
    /// The paths the stack owns (its directory, its components' build contexts): a commit that
    /// changed none of them is not reverted.
    pub scope: Vec<String>,
    /// The revert recorded before (from the note or the reflog).
    pub reverted_by: Option<String>,
    /// Whether the branch is pull mode's copy of a remote's.
    pub pull_mode: bool,
}

/// A revert commit made but not yet on the branch: [`finish`] moves the branch to it.
#[derive(Debug, Clone)]
pub struct Prepared {
    path: PathBuf,
    branch: String,
    failed: Oid,
    /// The revert commit.
    pub revert: String,
    revert_oid: Oid,
    touched: Vec<Vec<u8>>,
}

/// Reverts `req.failed`, the tip of `req.branch`, in the repository containing `path`.
pub fn revert(path: &Path, req: &Request) -> Result<Reverted, RevertError> {
    let p = prepare(path, req)?;
    finish(&p, &req.failed)
}

/// Checks the guards and makes the revert commit object; nothing points at it yet.
pub fn prepare(path: &Path, req: &Request) -> Result<Prepared, RevertError> {
    let repo = open(path)?;
    let failed = req.failed.as_str();
    let failed_oid =
        Oid::from_str(failed).map_err(HistoryError::git(format!("reading `{failed}`")))?;
    let what = format!("reverting {}", short_id(failed));
    let failed_commit = repo
        .find_commit(failed_oid)
        .map_err(HistoryError::git(format!(
            "reading commit {}",
            short_id(failed)
        )))?;
    let tip = repo
        .refname_to_id(&req.branch)
        .map_err(HistoryError::git(format!("reading {}", req.branch)))?;
    guard(&Facts {
        failed: failed.to_string(),
        branch: req.branch.clone(),
        tip: tip.to_string(),
        message: failed_commit.message().unwrap_or("").to_string(),
        parents: failed_commit.parent_count(),
        reverted_by: req.reverted_by.clone(),
        pull_mode: req.pull_mode,
    })?;

    // A merge is reverted against its first parent, the branch it was merged into; that is
    // also what the commit changed for the branch.
    let mainline = if failed_commit.parent_count() > 1 {
        1
    } else {
        0
    };
    let parent_tree = failed_commit
        .parent(0)
        .and_then(|p| p.tree())
        .map_err(HistoryError::git(what.clone()))?;
    let changed = changed_paths(
        &repo,
        &parent_tree,
        &failed_commit
            .tree()
            .map_err(HistoryError::git(what.clone()))?,
    )
    .map_err(HistoryError::git(what.clone()))?;
    if !in_scope(&changed, &req.scope) {
        return Err(Refusal::Unrelated {
            failed: failed.to_string(),
            stack: req.stack.clone(),
        }
        .into());
    }

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
    let failed_tree = failed_commit
        .tree()
        .map_err(HistoryError::git(what.clone()))?;
    let touched =
        changed_paths(&repo, &failed_tree, &tree).map_err(HistoryError::git(what.clone()))?;
    // Converge writes plain files and symlinks; a submodule is the person's to move.
    for p in &touched {
        let path = Path::new(OsStr::from_bytes(p));
        let module = [&failed_tree, &tree].iter().any(|t| {
            t.get_path(path)
                .is_ok_and(|e| e.filemode() == i32::from(FileMode::Commit))
        });
        if module {
            return Err(Refusal::Submodule {
                failed: failed.to_string(),
                path: String::from_utf8_lossy(p).into_owned(),
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
            &message(&summary, failed, &req.reason),
            &tree,
            &[&failed_commit],
        )
        .map_err(HistoryError::git(what))?;
    Ok(Prepared {
        path: path.to_path_buf(),
        branch: req.branch.clone(),
        failed: failed_oid,
        revert: revert.to_string(),
        revert_oid: revert,
        touched,
    })
}

/// Moves the branch from `expected` to the prepared revert, and the checked-out worktree with
/// it (see the module's documentation). When the branch is no longer at `expected`, nothing is
/// written: [`Refusal::Moved`].
pub fn finish(p: &Prepared, expected: &str) -> Result<Reverted, RevertError> {
    finish_racing(p, expected, &mut || {})
}

/// [`finish`], calling `race` right before the branch's compare-and-swap: tests move the branch
/// there to prove the swap, not only the check before it, keeps a newer commit.
#[doc(hidden)]
pub fn finish_racing(
    p: &Prepared,
    expected: &str,
    race: &mut dyn FnMut(),
) -> Result<Reverted, RevertError> {
    let repo = open(&p.path)?;
    let failed = p.failed.to_string();
    let what = format!("reverting {}", short_id(&failed));
    let expected_oid =
        Oid::from_str(expected).map_err(HistoryError::git(format!("reading `{expected}`")))?;
    let moved = |repo: &Repository| -> RevertError {
        let tip = repo
            .refname_to_id(&p.branch)
            .map(|t| t.to_string())
            .unwrap_or_default();
        Refusal::Moved {
            failed: failed.clone(),
            branch: p.branch.trim_start_matches("refs/heads/").to_string(),
            tip,
        }
        .into()
    };

    let worktrees = worktrees(&repo, &p.path);
    busy_elsewhere(&worktrees, &p.branch, &failed)?;
    let checkout = worktrees
        .iter()
        .find(|w| w.head_is(&p.branch))
        .filter(|w| w.workdir.is_some());

    // Everything that writes the worktree happens under its index.lock, as `git commit` does.
    let held = match checkout {
        Some(wt) => Some(lock_and_check(wt, p, &failed)?),
        None => None,
    };
    let tip = repo
        .refname_to_id(&p.branch)
        .map_err(HistoryError::git(format!("reading {}", p.branch)))?;
    if tip != expected_oid {
        return Err(moved(&repo));
    }
    if let (Some(wt), Some(lock)) = (checkout, &held) {
        write_journal(wt, p, lock).map_err(|e| io_error(&what, e))?;
    }
    race();
    let log = format!("converge: auto-revert of {}", short_id(&failed));
    match repo.reference_matching(&p.branch, p.revert_oid, true, expected_oid, &log) {
        Ok(_) => {}
        Err(e) if e.code() == ErrorCode::Modified => {
            if let Some(wt) = checkout {
                let _ = std::fs::remove_file(wt.gitdir.join(JOURNAL));
            }
            return Err(moved(&repo));
        }
        Err(e) => {
            if let Some(wt) = checkout {
                let _ = std::fs::remove_file(wt.gitdir.join(JOURNAL));
            }
            return Err(HistoryError::git(format!("{what}: moving {}", p.branch))(e).into());
        }
    }
    if let (Some(wt), Some(lock)) = (checkout, held) {
        let revert_tree = repo
            .find_commit(p.revert_oid)
            .and_then(|c| c.tree())
            .map_err(HistoryError::git(what.clone()))?;
        let failed_tree = repo
            .find_commit(p.failed)
            .and_then(|c| c.tree())
            .map_err(HistoryError::git(what.clone()))?;
        update_worktree(wt, lock, &p.touched, &failed_tree, &revert_tree).map_err(|e| {
            HistoryError::git(format!(
                "{what}: updating the checked-out files in {}",
                wt.display().display()
            ))(e)
        })?;
        let _ = std::fs::remove_file(wt.gitdir.join(JOURNAL));
    }
    Ok(Reverted {
        commit: p.revert.clone(),
        worktree: checkout.map(Worktree::display),
    })
}

#[doc(hidden)]
/// [`finish`] as a crash would leave it: the journal written and the lock held, the branch moved
/// when `cas` (else not), no file written. Tests call [`recover`] after it.
pub fn finish_interrupted(p: &Prepared, cas: bool) -> Result<(), RevertError> {
    let repo = open(&p.path)?;
    let worktrees = worktrees(&repo, &p.path);
    let failed = p.failed.to_string();
    let Some(wt) = worktrees.iter().find(|w| w.head_is(&p.branch)) else {
        return Ok(());
    };
    let lock = lock_and_check(wt, p, &failed)?;
    write_journal(wt, p, &lock).map_err(|e| io_error("journal", e))?;
    if cas {
        repo.reference_matching(&p.branch, p.revert_oid, true, p.failed, "test")
            .map_err(HistoryError::git("test cas"))?;
    }
    // A crash releases nothing.
    std::mem::forget(lock);
    Ok(())
}

fn io_error(what: &str, e: std::io::Error) -> HistoryError {
    HistoryError::git(what.to_string())(git2::Error::from_str(&e.to_string()))
}

/// The paths that differ between two trees, as git stores them (bytes: not every path is UTF-8).
fn changed_paths(
    repo: &Repository,
    from: &Tree<'_>,
    to: &Tree<'_>,
) -> Result<Vec<Vec<u8>>, git2::Error> {
    let diff = repo.diff_tree_to_tree(Some(from), Some(to), None)?;
    let mut paths: Vec<Vec<u8>> = diff
        .deltas()
        .flat_map(|d| [d.old_file().path_bytes(), d.new_file().path_bytes()])
        .flatten()
        .map(<[u8]>::to_vec)
        .collect();
    paths.sort();
    paths.dedup();
    Ok(paths)
}

/// What [`recover`] found and did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Recovered {
    /// The branch had moved to the revert: its files and index were brought up to date.
    Finished {
        /// The revert commit.
        revert: String,
        /// The worktree.
        worktree: PathBuf,
    },
    /// The branch never moved: the lock was released, nothing else had been written.
    RolledBack {
        /// The failed commit.
        failed: String,
        /// The worktree.
        worktree: PathBuf,
    },
}

/// Finishes or rolls back a revert a crash interrupted (a journal left in a worktree's gitdir):
/// when the branch moved to the revert, the touched files and the index are brought to it;
/// otherwise converge's own index.lock is removed. A lock that is not converge's (another inode)
/// is left alone.
pub fn recover(path: &Path) -> Result<Vec<Recovered>, HistoryError> {
    let repo = open(path)?;
    let mut done = Vec::new();
    for wt in worktrees(&repo, path) {
        let journal = wt.gitdir.join(JOURNAL);
        let Ok(text) = std::fs::read_to_string(&journal) else {
            continue;
        };
        let field = |k: &str| {
            text.lines()
                .find_map(|l| l.strip_prefix(k).map(|v| v.trim().to_string()))
        };
        let (Some(failed), Some(revert), Some(branch)) =
            (field("failed "), field("revert "), field("branch "))
        else {
            let _ = std::fs::remove_file(&journal);
            continue;
        };
        let ino: u64 = field("lock-inode ")
            .and_then(|i| i.parse().ok())
            .unwrap_or(0);
        let lock_path = wt.gitdir.join("index.lock");
        let ours = lock_path
            .symlink_metadata()
            .is_ok_and(|m| m.ino() == ino && m.len() == 0);
        if ours {
            let what = format!("finishing the revert of {}", short_id(&failed));
            let lock = Lock {
                file: OpenOptions::new()
                    .write(true)
                    .open(&lock_path)
                    .map_err(|e| io_error(&what, e))
                    .ok(),
                path: lock_path,
                ino,
            };
            let tip = repo.refname_to_id(&branch).ok().map(|t| t.to_string());
            if tip.as_deref() == Some(revert.as_str()) && wt.head_is(&branch) {
                let commit = |id: &str| {
                    Oid::from_str(id)
                        .and_then(|o| repo.find_commit(o))
                        .and_then(|c| c.tree())
                };
                let failed_tree = commit(&failed).map_err(HistoryError::git(what.clone()))?;
                let revert_tree = commit(&revert).map_err(HistoryError::git(what.clone()))?;
                let touched = changed_paths(&repo, &failed_tree, &revert_tree)
                    .map_err(HistoryError::git(what.clone()))?;
                update_worktree(&wt, lock, &touched, &failed_tree, &revert_tree)
                    .map_err(HistoryError::git(what))?;
                done.push(Recovered::Finished {
                    revert,
                    worktree: wt.display(),
                });
            } else {
                drop(lock);
                done.push(Recovered::RolledBack {
                    failed,
                    worktree: wt.display(),
                });
            }
        }
        let _ = std::fs::remove_file(&journal);
    }
    Ok(done)
}

/// The revert converge made of `failed`, found from the commits themselves (the branch's tip
/// and reflog): by converge's identity, with `failed` as its parent and git's revert line. This
/// record survives a crash between the branch move and the note, and a missing notes ref.
pub fn find_revert(path: &Path, branch: &str, failed: &str) -> Option<String> {
    let repo = open(path).ok()?;
    let failed_oid = Oid::from_str(failed).ok()?;
    let mut candidates: Vec<Oid> = repo.refname_to_id(branch).into_iter().collect();
    if let Ok(log) = repo.reflog(branch) {
        candidates.extend(log.iter().map(|e| e.id_new()));
    }
    candidates.into_iter().find_map(|id| {
        let c = repo.find_commit(id).ok()?;
        let (of, _) = converge_revert_in(&repo, &c)?;
        (c.parent_id(0).ok()? == failed_oid && of == failed).then(|| id.to_string())
    })
}

/// When `commit` is a revert converge made: the commit it reverts and the reason its message
/// gives. The status record is rebuilt from this after a restart.
pub fn converge_revert_of(path: &Path, commit: &str) -> Option<(String, String)> {
    let repo = open(path).ok()?;
    let c = repo.find_commit(Oid::from_str(commit).ok()?).ok()?;
    converge_revert_in(&repo, &c)
}

fn converge_revert_in(repo: &Repository, c: &Commit<'_>) -> Option<(String, String)> {
    let sig = signature(repo).ok()?;
    let author = c.author();
    if author.name_bytes() != sig.name_bytes() || author.email_bytes() != sig.email_bytes() {
        return None;
    }
    let message = c.message().ok()?;
    let of = reverts(message)?;
    if c.parent_count() != 1 || c.parent_id(0).ok()?.to_string() != of {
        return None;
    }
    let why = message
        .lines()
        .find_map(|l| l.strip_prefix(WHY_MARK))?
        .to_string();
    Some((of, why))
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
    fn a_commit_is_in_scope_only_when_it_changed_the_stack_dir_or_a_build_context() {
        let changed = vec![b"README.md".to_vec(), b"apps/backend/main.go".to_vec()];
        let stack = ["desired/dev".to_string(), "apps/backend-v2".to_string()];
        assert!(
            !in_scope(&changed, &stack),
            "a sibling with the same prefix is not inside"
        );
        assert!(in_scope(&changed, &["apps/backend".into()]));
        assert!(in_scope(&changed, &["./apps/backend/".into()]));
        assert!(in_scope(&changed, &[".".into()]));
        assert!(!in_scope(&changed, &[]));
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
