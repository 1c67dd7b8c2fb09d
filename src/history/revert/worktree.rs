//! The checkout side of a revert: the worktrees that have the branch checked out, the lock and
//! the checks under it, the journal, and updating the files and index of the worktree.

use super::*;

/// One worktree of the repository (the main one or a linked one).
pub(super) struct Worktree {
    pub(super) repo: Repository,
    /// Its own git directory (`.git`, `.git/worktrees/<name>`): where its index, HEAD and
    /// in-progress operations live.
    pub(super) gitdir: PathBuf,
    pub(super) workdir: Option<PathBuf>,
}

impl Worktree {
    pub(super) fn head_is(&self, branch: &str) -> bool {
        self.repo
            .find_reference("HEAD")
            .ok()
            .and_then(|h| h.symbolic_target().ok().flatten().map(str::to_string))
            .as_deref()
            == Some(branch)
    }

    pub(super) fn display(&self) -> PathBuf {
        self.workdir.clone().unwrap_or_else(|| self.gitdir.clone())
    }
}

/// Every worktree of the repository: the main one (found through the common directory, which
/// also finds it with `--separate-git-dir` or `core.worktree`), then the linked ones.
pub(super) fn worktrees(repo: &Repository, hint: &Path) -> Vec<Worktree> {
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
pub(super) fn fix_gitlink_workdir(repo: &Repository, hint: &Path) {
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

pub(super) fn same_path(a: &Path, b: &Path) -> bool {
    match (a.canonicalize(), b.canonicalize()) {
        (Ok(a), Ok(b)) => a == b,
        _ => a == b,
    }
}

/// Refuses while any worktree is rebasing `branch` (its HEAD is detached meanwhile, so the
/// branch would move under the rebase), as `git branch -f` refuses.
pub(super) fn busy_elsewhere(
    worktrees: &[Worktree],
    branch: &str,
    failed: &str,
) -> Result<(), Refusal> {
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

pub(super) fn in_progress(wt: &Worktree, failed: &str) -> Result<(), Refusal> {
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
pub(super) struct Lock {
    pub(super) path: PathBuf,
    pub(super) file: Option<File>,
    pub(super) ino: u64,
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
pub(super) fn lock_and_check(
    wt: &Worktree,
    p: &Prepared,
    failed: &str,
) -> Result<Lock, RevertError> {
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
pub(super) fn dirty(wt: &Repository, paths: &[Vec<u8>]) -> Result<Vec<String>, git2::Error> {
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

pub(super) fn write_journal(wt: &Worktree, p: &Prepared, lock: &Lock) -> std::io::Result<()> {
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
pub(super) fn update_worktree(
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
pub(super) fn blob_of(path: &Path) -> Option<Oid> {
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

pub(super) fn write_file(path: &Path, mode: i32, content: &[u8]) -> std::io::Result<()> {
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
pub(super) fn remove_empty_parents(root: &Path, file: &Path) {
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
pub(super) fn entry_for(
    path: &[u8],
    id: Oid,
    mode: u32,
    meta: Option<&std::fs::Metadata>,
) -> IndexEntry {
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
