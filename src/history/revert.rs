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

/// One worktree of the repository (the main one or a linked one).
struct Worktree {
    repo: Repository,
    /// Its own git directory (`.git`, `.git/worktrees/<name>`): where its index, HEAD and
    /// in-progress operations live.
    gitdir: PathBuf,
    workdir: Option<PathBuf>,
}

impl Worktree {
    fn head_is(&self, branch: &str) -> bool {
        self.repo
            .find_reference("HEAD")
            .ok()
            .and_then(|h| h.symbolic_target().ok().flatten().map(str::to_string))
            .as_deref()
            == Some(branch)
    }

    fn display(&self) -> PathBuf {
        self.workdir.clone().unwrap_or_else(|| self.gitdir.clone())
    }
}

/// Every worktree of the repository: the main one (found through the common directory, which
/// also finds it with `--separate-git-dir` or `core.worktree`), then the linked ones.
fn worktrees(repo: &Repository, hint: &Path) -> Vec<Worktree> {
    let mut out: Vec<Worktree> = Vec::new();
    let mut push = |r: Repository| {
        let gitdir = r.path().to_path_buf();
        if out.iter().all(|w| !same_path(&w.gitdir, &gitdir)) {
            let workdir = r.workdir().map(Path::to_path_buf);
            out.push(Worktree {
                repo: r,
                gitdir,
                workdir,
            });
        }
    };
    // The main worktree is opened from its git directory (the common one), then told where its
    // files are when a `.git` file names that directory (see [`fix_gitlink_workdir`]).
    let main = Repository::open(repo.commondir());
    if let Ok(main) = main {
        if !repo.is_worktree() {
            fix_gitlink_workdir(&main, hint);
        }
        push(main);
    }
    if let Ok(names) = repo.worktrees() {
        for name in names.iter().filter_map(|n| n.ok().flatten()) {
            if let Ok(r) = repo
                .find_worktree(name)
                .and_then(|w| Repository::open_from_worktree(&w))
            {
                push(r);
            }
        }
    }
    out
}

/// With `git init --separate-git-dir` the working tree holds a `.git` file naming the git
/// directory, and libgit2 takes the git directory's parent for the working tree: the real one is
/// the directory, at or above `hint`, whose `.git` file names this git directory.
fn fix_gitlink_workdir(repo: &Repository, hint: &Path) {
    let hint = hint.canonicalize().unwrap_or_else(|_| hint.to_path_buf());
    for dir in hint.ancestors() {
        let Ok(text) = std::fs::read_to_string(dir.join(".git")) else {
            continue;
        };
        let Some(target) = text.trim().strip_prefix("gitdir:") else {
            return;
        };
        let target = dir.join(target.trim());
        if same_path(&target, repo.path()) && repo.workdir().is_none_or(|w| !same_path(w, dir)) {
            let _ = repo.set_workdir(dir, false);
        }
        return;
    }
}

fn same_path(a: &Path, b: &Path) -> bool {
    match (a.canonicalize(), b.canonicalize()) {
        (Ok(a), Ok(b)) => a == b,
        _ => a == b,
    }
}

/// Refuses while any worktree is rebasing `branch` (its HEAD is detached meanwhile, so the
/// branch would move under the rebase), as `git branch -f` refuses.
fn busy_elsewhere(worktrees: &[Worktree], branch: &str, failed: &str) -> Result<(), Refusal> {
    for wt in worktrees {
        for dir in ["rebase-merge", "rebase-apply"] {
            let named = std::fs::read_to_string(wt.gitdir.join(dir).join("head-name"))
                .is_ok_and(|n| n.trim() == branch);
            if named {
                return Err(Refusal::InProgress {
                    failed: failed.to_string(),
                    worktree: wt.display(),
                    what: format!("a rebase of {}", branch.trim_start_matches("refs/heads/")),
                });
            }
        }
    }
    // The main worktree shares refs with every other; an operation there reads the branch too.
    let main = worktrees.first();
    for wt in main
        .into_iter()
        .chain(worktrees.iter().filter(|w| w.head_is(branch)))
    {
        if wt.workdir.is_some() {
            in_progress(wt, failed)?;
        }
    }
    Ok(())
}

fn in_progress(wt: &Worktree, failed: &str) -> Result<(), Refusal> {
    let what = match wt.repo.state() {
        RepositoryState::Clean => return Ok(()),
        RepositoryState::Merge => "a merge",
        RepositoryState::Revert | RepositoryState::RevertSequence => "a revert",
        RepositoryState::CherryPick | RepositoryState::CherryPickSequence => "a cherry-pick",
        RepositoryState::Bisect => "a bisect",
        RepositoryState::Rebase
        | RepositoryState::RebaseInteractive
        | RepositoryState::RebaseMerge => "a rebase",
        RepositoryState::ApplyMailbox | RepositoryState::ApplyMailboxOrRebase => "a `git am`",
    };
    Err(Refusal::InProgress {
        failed: failed.to_string(),
        worktree: wt.display(),
        what: what.into(),
    })
}

/// `index.lock`, created exclusively; removed when dropped unless renamed into place.
struct Lock {
    path: PathBuf,
    file: Option<File>,
    ino: u64,
}

impl Drop for Lock {
    fn drop(&mut self) {
        if self.file.take().is_some() {
            let _ = std::fs::remove_file(&self.path);
        }
    }
}

/// Takes the worktree's index.lock and, holding it, checks what the revert would write over:
/// no operation in progress, nothing hidden from git, no uncommitted change.
fn lock_and_check(wt: &Worktree, p: &Prepared, failed: &str) -> Result<Lock, RevertError> {
    let path = wt.gitdir.join("index.lock");
    let file = match OpenOptions::new().write(true).create_new(true).open(&path) {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
            return Err(Refusal::Busy {
                failed: failed.to_string(),
                worktree: wt.display(),
            }
            .into())
        }
        Err(e) => return Err(io_error(&format!("creating {}", path.display()), e).into()),
    };
    let ino = file.metadata().map(|m| m.ino()).unwrap_or(0);
    let lock = Lock {
        path,
        file: Some(file),
        ino,
    };
    in_progress(wt, failed)?;
    let what = format!("reverting {}", short_id(failed));
    let sparse = wt
        .repo
        .config()
        .and_then(|c| c.get_bool("core.sparseCheckout"))
        .unwrap_or(false);
    if sparse {
        return Err(Refusal::Sparse {
            failed: failed.to_string(),
            worktree: wt.display(),
            why: "is a sparse checkout (core.sparseCheckout)".into(),
        }
        .into());
    }
    let index = wt.repo.index().map_err(HistoryError::git(what.clone()))?;
    let hidden: Vec<String> = p
        .touched
        .iter()
        .filter(|t| {
            index
                .get_path(Path::new(OsStr::from_bytes(t)), 0)
                .is_some_and(|e| {
                    e.flags_extended & git2::IndexEntryExtendedFlag::SKIP_WORKTREE.bits() != 0
                        || e.flags & git2::IndexEntryFlag::VALID.bits() != 0
                })
        })
        .map(|t| String::from_utf8_lossy(t).into_owned())
        .collect();
    if !hidden.is_empty() {
        return Err(Refusal::Sparse {
            failed: failed.to_string(),
            worktree: wt.display(),
            why: format!(
                "marks {} skip-worktree or assume-unchanged",
                hidden.join(", ")
            ),
        }
        .into());
    }
    let mut paths = dirty(&wt.repo, &p.touched).map_err(HistoryError::git(what))?;
    // A directory where the revert writes a file is something converge would have to delete.
    if let Some(root) = &wt.workdir {
        for t in &p.touched {
            let at = root.join(OsStr::from_bytes(t));
            if at.symlink_metadata().is_ok_and(|m| m.is_dir()) {
                paths.push(String::from_utf8_lossy(t).into_owned());
            }
        }
    }
    paths.sort();
    paths.dedup();
    if !paths.is_empty() {
        return Err(Refusal::Dirty {
            failed: failed.to_string(),
            worktree: wt.display(),
            paths,
        }
        .into());
    }
    Ok(lock)
}

/// Which of `paths` have uncommitted changes (index or files, untracked and ignored included:
/// an ignored file is still the person's) in `wt`.
fn dirty(wt: &Repository, paths: &[Vec<u8>]) -> Result<Vec<String>, git2::Error> {
    if paths.is_empty() {
        return Ok(Vec::new());
    }
    let mut opts = StatusOptions::new();
    opts.include_untracked(true)
        .include_ignored(true)
        .recurse_ignored_dirs(true)
        .recurse_untracked_dirs(true)
        .disable_pathspec_match(true);
    for p in paths {
        opts.pathspec(p.as_slice());
    }
    Ok(wt
        .statuses(Some(&mut opts))?
        .iter()
        .filter(|e| e.status() != git2::Status::CURRENT)
        .map(|e| String::from_utf8_lossy(e.path_bytes()).into_owned())
        .collect())
}

fn write_journal(wt: &Worktree, p: &Prepared, lock: &Lock) -> std::io::Result<()> {
    let text = format!(
        "failed {}\nrevert {}\nbranch {}\nlock-inode {}\n",
        p.failed, p.revert, p.branch, lock.ino
    );
    let path = wt.gitdir.join(JOURNAL);
    let mut f = File::create(&path)?;
    f.write_all(text.as_bytes())?;
    f.sync_all()
}

/// Writes the revert's version of each touched path into the worktree (only where the file is
/// still the failed commit's, or already the revert's), then the index with those entries into
/// the held lock, renamed into place.
fn update_worktree(
    wt: &Worktree,
    mut lock: Lock,
    touched: &[Vec<u8>],
    failed_tree: &Tree<'_>,
    revert_tree: &Tree<'_>,
) -> Result<(), git2::Error> {
    let io = |e: std::io::Error| git2::Error::from_str(&e.to_string());
    let Some(root) = &wt.workdir else {
        return Ok(());
    };
    let scratch = wt.gitdir.join(INDEX_SCRATCH);
    let index_path = wt.gitdir.join("index");
    let _ = std::fs::remove_file(&scratch);
    if index_path.exists() {
        std::fs::copy(&index_path, &scratch).map_err(io)?;
    }
    let mut index = Index::open(&scratch)?;
    for t in touched {
        let rel = Path::new(OsStr::from_bytes(t));
        let file = root.join(rel);
        let want = revert_tree.get_path(rel).ok();
        let was = failed_tree.get_path(rel).ok();
        let on_disk = blob_of(&file);
        let ours =
            on_disk == was.as_ref().map(|e| e.id()) || on_disk == want.as_ref().map(|e| e.id());
        match want {
            Some(entry) if entry.kind() == Some(ObjectType::Blob) => {
                let blob = wt.repo.find_blob(entry.id())?;
                if ours {
                    write_file(&file, entry.filemode(), blob.content()).map_err(io)?;
                }
                let meta = file.symlink_metadata().ok();
                index.add(&entry_for(
                    t,
                    entry.id(),
                    entry.filemode() as u32,
                    meta.as_ref(),
                ))?;
            }
            Some(_) => {}
            None => {
                if ours && on_disk.is_some() {
                    std::fs::remove_file(&file).map_err(io)?;
                    remove_empty_parents(root, &file);
                }
                match index.remove(rel, 0) {
                    Ok(()) => {}
                    Err(e) if e.code() == ErrorCode::NotFound => {}
                    Err(e) => return Err(e),
                }
            }
        }
    }
    index.write()?;
    let bytes = std::fs::read(&scratch).map_err(io)?;
    let _ = std::fs::remove_file(&scratch);
    if let Some(f) = lock.file.as_mut() {
        f.write_all(&bytes).map_err(io)?;
        f.sync_all().map_err(io)?;
    }
    std::fs::rename(&lock.path, &index_path).map_err(io)?;
    // Renamed into place: nothing left for the drop to remove.
    lock.file = None;
    Ok(())
}

/// The blob id of the file (or symlink) at `path`, `None` when nothing is there.
fn blob_of(path: &Path) -> Option<Oid> {
    let meta = path.symlink_metadata().ok()?;
    if meta.file_type().is_symlink() {
        let target = std::fs::read_link(path).ok()?;
        Oid::hash_object(ObjectType::Blob, target.as_os_str().as_bytes()).ok()
    } else if meta.is_file() {
        Oid::hash_file(ObjectType::Blob, path).ok()
    } else {
        None
    }
}

fn write_file(path: &Path, mode: i32, content: &[u8]) -> std::io::Result<()> {
    if let Some(parent) = path.parent() {
        std::fs::create_dir_all(parent)?;
    }
    if path.symlink_metadata().is_ok() {
        std::fs::remove_file(path)?;
    }
    if mode == i32::from(FileMode::Link) {
        return std::os::unix::fs::symlink(OsStr::from_bytes(content), path);
    }
    std::fs::write(path, content)?;
    let exec = mode == i32::from(FileMode::BlobExecutable);
    let mut perms = std::fs::metadata(path)?.permissions();
    let m = perms.mode();
    perms.set_mode(if exec { m | 0o111 } else { m & !0o111 });
    std::fs::set_permissions(path, perms)
}

/// Git does not keep empty directories: neither does a revert that deletes a directory's last
/// file.
fn remove_empty_parents(root: &Path, file: &Path) {
    let mut dir = file.parent();
    while let Some(d) = dir {
        if d == root || !d.starts_with(root) || std::fs::remove_dir(d).is_err() {
            break;
        }
        dir = d.parent();
    }
}

/// The index entry of a file converge just wrote, with its stat data (so `git status` does not
/// need to read it again).
fn entry_for(path: &[u8], id: Oid, mode: u32, meta: Option<&std::fs::Metadata>) -> IndexEntry {
    let t = |s: i64, ns: i64| IndexTime::new(s as i32, ns as u32);
    IndexEntry {
        ctime: meta.map_or(t(0, 0), |m| t(m.ctime(), m.ctime_nsec())),
        mtime: meta.map_or(t(0, 0), |m| t(m.mtime(), m.mtime_nsec())),
        dev: meta.map_or(0, |m| m.dev() as u32),
        ino: meta.map_or(0, |m| m.ino() as u32),
        mode,
        uid: meta.map_or(0, |m| m.uid()),
        gid: meta.map_or(0, |m| m.gid()),
        file_size: meta.map_or(0, |m| m.size() as u32),
        id,
        flags: path.len().min(0xfff) as u16,
        flags_extended: 0,
        path: path.to_vec(),
    }
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
