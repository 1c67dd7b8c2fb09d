//! Read-only access to one git commit (a [`Snapshot`]); never reads the working tree.
//!
//! Everything downstream of the source sees the repository only through a snapshot, so an
//! uncommitted edit can never reach the cluster.

pub mod remote;

use std::path::{Path, PathBuf};

use git2::{ObjectType, Oid, Repository, TreeWalkMode, TreeWalkResult};

/// Errors reading a repository or a commit.
#[derive(Debug, thiserror::Error)]
pub enum SourceError {
    /// The path is not inside a git repository.
    #[error("{path} is not a git repository (or any parent up to the filesystem root)")]
    NotARepository {
        /// The path that was opened.
        path: PathBuf,
        /// What git2 said.
        #[source]
        source: git2::Error,
    },
    /// The revision does not name a commit.
    #[error("unknown revision `{rev}` in {repo}: {message}")]
    UnknownRevision {
        /// The revision as given.
        rev: String,
        /// The repository searched.
        repo: PathBuf,
        /// What git2 said, without its error class noise.
        message: String,
    },
    /// Reading an object of the commit failed.
    #[error("reading `{path}` at commit {commit}")]
    Read {
        /// The path inside the commit.
        path: String,
        /// The commit read.
        commit: String,
        /// What git2 said.
        #[source]
        source: git2::Error,
    },
}

/// The kind of one entry of a commit's tree.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EntryKind {
    /// A regular file.
    File,
    /// A regular file with the executable bit.
    Executable,
    /// A symbolic link; its blob holds the target path.
    Symlink,
    /// A submodule (a commit of another repository); never read.
    Submodule,
}

/// One blob of a commit's tree, found by [`Snapshot::walk`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    /// Path from the repository root, `/`-separated.
    pub path: String,
    /// The blob id; equal ids mean equal contents.
    pub oid: Oid,
    /// File, executable, symlink or submodule.
    pub kind: EntryKind,
}

/// A git repository opened for reading commits.
pub struct Repo {
    repo: Repository,
    root: PathBuf,
}

impl Repo {
    /// Opens the repository containing `path` (searching parent directories like git does).
    pub fn open(path: &Path) -> Result<Self, SourceError> {
        let repo = Repository::discover(path).map_err(|source| SourceError::NotARepository {
            // `.` says nothing in a message; the absolute path does.
            path: std::path::absolute(path).unwrap_or_else(|_| path.to_path_buf()),
            source,
        })?;
        let root = repo.workdir().unwrap_or_else(|| repo.path()).to_path_buf();
        Ok(Self { repo, root })
    }

    /// Wraps an already open repository (a fuzz target's in-memory object database, say).
    pub fn from_repository(repo: Repository) -> Self {
        let root = repo.workdir().unwrap_or_else(|| repo.path()).to_path_buf();
        Self { repo, root }
    }

    /// The top directory of the work tree (or the git directory of a bare repository).
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// The git directory (`.git`), whose refs the daemon watches.
    pub fn git_dir(&self) -> &Path {
        self.repo.path()
    }

    /// Paths under `dir` whose working-tree or index state differs from HEAD (modified, added,
    /// deleted, untracked), for a warning that they are not deployed. Nothing here is ever
    /// deployed: only the status is read, never the files' contents.
    pub fn uncommitted(&self, dir: &str) -> Result<Vec<String>, SourceError> {
        let dir = dir.trim_matches('/');
        let mut opts = git2::StatusOptions::new();
        opts.include_untracked(true)
            .recurse_untracked_dirs(true)
            .include_ignored(false)
            .pathspec(format!("{dir}/"));
        let statuses = self
            .repo
            .statuses(Some(&mut opts))
            .map_err(|source| SourceError::Read {
                path: dir.to_string(),
                commit: "the working tree".into(),
                source,
            })?;
        Ok(statuses
            .iter()
            .filter(|e| e.status() != git2::Status::CURRENT)
            .filter_map(|e| e.path().ok().map(str::to_string))
            .collect())
    }

    /// Resolves a revision (`HEAD`, a branch, a tag, a hex id, `main~2`) to a snapshot of its commit.
    pub fn snapshot(&self, rev: &str) -> Result<Snapshot<'_>, SourceError> {
        let unknown = |e: git2::Error| SourceError::UnknownRevision {
            rev: rev.to_string(),
            repo: self.root.clone(),
            message: e.message().to_string(),
        };
        let object = self.repo.revparse_single(rev).map_err(unknown)?;
        let commit = object.peel_to_commit().map_err(unknown)?;
        let tree = commit.tree().map_err(unknown)?;
        let summary = commit.summary().ok().flatten().unwrap_or("").to_string();
        Ok(Snapshot {
            repo: &self.repo,
            commit: commit.id(),
            summary,
            tree,
        })
    }
}

/// A read-only view of the tree of one commit.
pub struct Snapshot<'r> {
    repo: &'r Repository,
    commit: Oid,
    summary: String,
    tree: git2::Tree<'r>,
}

impl std::fmt::Debug for Snapshot<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Snapshot")
            .field("commit", &self.commit)
            .finish()
    }
}

impl<'r> Snapshot<'r> {
    /// The full commit id.
    pub fn commit(&self) -> Oid {
        self.commit
    }

    /// The first line of the commit message.
    pub fn summary(&self) -> &str {
        &self.summary
    }

    /// The entry at `path`, or `None` when the commit has nothing there.
    pub fn entry(&self, path: &str) -> Option<Entry> {
        let entry = self.tree.get_path(Path::new(path)).ok()?;
        let kind = match entry.kind() {
            Some(ObjectType::Blob) => kind_of_mode(entry.filemode()),
            Some(ObjectType::Commit) => EntryKind::Submodule,
            _ => return None,
        };
        Some(Entry {
            path: path.to_string(),
            oid: entry.id(),
            kind,
        })
    }

    /// Whether `path` is a directory (tree) in this commit.
    pub fn is_dir(&self, path: &str) -> bool {
        let trimmed = path.trim_end_matches('/');
        if trimmed.is_empty() || trimmed == "." {
            return true;
        }
        self.tree
            .get_path(Path::new(trimmed))
            .map(|e| e.kind() == Some(ObjectType::Tree))
            .unwrap_or(false)
    }

    /// Reads the bytes of the blob with id `oid`.
    pub fn blob(&self, path: &str, oid: Oid) -> Result<Vec<u8>, SourceError> {
        let blob = self
            .repo
            .find_blob(oid)
            .map_err(|source| SourceError::Read {
                path: path.to_string(),
                commit: self.commit.to_string(),
                source,
            })?;
        Ok(blob.content().to_vec())
    }

    /// The size in bytes of the blob with id `oid`, read from the object header only.
    pub fn blob_size(&self, path: &str, oid: Oid) -> Result<usize, SourceError> {
        let odb = self.repo.odb().map_err(|source| SourceError::Read {
            path: path.to_string(),
            commit: self.commit.to_string(),
            source,
        })?;
        let (size, _) = odb.read_header(oid).map_err(|source| SourceError::Read {
            path: path.to_string(),
            commit: self.commit.to_string(),
            source,
        })?;
        Ok(size)
    }

    /// Every blob under `dir` (`""` for the whole tree), in git's path order.
    pub fn walk(&self, dir: &str) -> Result<Vec<Entry>, SourceError> {
        let dir = dir.trim_matches('/');
        let read_err = |source| SourceError::Read {
            path: dir.to_string(),
            commit: self.commit.to_string(),
            source,
        };
        let subtree;
        let tree = if dir.is_empty() || dir == "." {
            &self.tree
        } else {
            let entry = match self.tree.get_path(Path::new(dir)) {
                Ok(e) if e.kind() == Some(ObjectType::Tree) => e,
                _ => return Ok(Vec::new()),
            };
            subtree = self.repo.find_tree(entry.id()).map_err(read_err)?;
            &subtree
        };
        let prefix = if dir.is_empty() || dir == "." {
            String::new()
        } else {
            format!("{dir}/")
        };
        let mut out = Vec::new();
        tree.walk(TreeWalkMode::PreOrder, |parent, entry| {
            let kind = match entry.kind() {
                Some(ObjectType::Blob) => kind_of_mode(entry.filemode()),
                Some(ObjectType::Commit) => EntryKind::Submodule,
                _ => return TreeWalkResult::Ok,
            };
            // Non-UTF-8 names cannot be addressed from YAML; they are skipped here and reported
            // by whoever needs them (the build digest hashes raw bytes through `walk_raw`).
            if let Ok(name) = entry.name() {
                out.push(Entry {
                    path: format!("{prefix}{parent}{name}"),
                    oid: entry.id(),
                    kind,
                });
            }
            TreeWalkResult::Ok
        })
        .map_err(read_err)?;
        Ok(out)
    }
}

fn kind_of_mode(mode: i32) -> EntryKind {
    match mode {
        0o100755 => EntryKind::Executable,
        0o120000 => EntryKind::Symlink,
        0o160000 => EntryKind::Submodule,
        _ => EntryKind::File,
    }
}

/// Resolves `target` of a symlink at `link_path` (both repository-relative) lexically; `None` when
/// it leaves the repository.
pub fn resolve_symlink(link_path: &str, target: &str) -> Option<String> {
    if target.starts_with('/') {
        return None;
    }
    let mut parts: Vec<&str> = link_path.split('/').collect();
    parts.pop();
    normalize_into(parts, target)
}

/// Joins `rel` onto `base` lexically (`..` pops); `None` when the result leaves the repository root.
pub fn join_within(base: &str, rel: &str) -> Option<String> {
    if rel.starts_with('/') {
        return None;
    }
    let parts: Vec<&str> = base
        .split('/')
        .filter(|p| !p.is_empty() && *p != ".")
        .collect();
    normalize_into(parts, rel)
}

fn normalize_into<'a>(mut parts: Vec<&'a str>, rel: &'a str) -> Option<String> {
    for part in rel.split('/') {
        match part {
            "" | "." => {}
            ".." => {
                parts.pop()?;
            }
            p => parts.push(p),
        }
    }
    Some(parts.join("/"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn join_within_stays_inside_or_says_none() {
        assert_eq!(join_within("", "apps/backend"), Some("apps/backend".into()));
        assert_eq!(
            join_within("desired/dev", "../../apps"),
            Some("apps".into())
        );
        assert_eq!(join_within("", "../outside"), None);
        assert_eq!(join_within("a", "/etc"), None);
        assert_eq!(join_within("", "."), Some(String::new()));
    }

    #[test]
    fn symlink_targets_resolve_relative_to_their_directory() {
        assert_eq!(
            resolve_symlink("desired/x.yaml", "../y.yaml"),
            Some("y.yaml".into())
        );
        assert_eq!(resolve_symlink("x.yaml", "../../etc/passwd"), None);
        assert_eq!(resolve_symlink("x.yaml", "/etc/passwd"), None);
    }
}
