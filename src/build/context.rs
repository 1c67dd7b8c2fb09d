//! Build contexts made from a commit: a tar archive for `docker build -`, or a directory exported
//! into a temporary folder for command builders. Never reads the working tree.
//!
//! Both are produced on a blocking thread: the repository is reopened by path and commit there,
//! because a git2 repository (and so a `Snapshot`) cannot cross threads.

use std::path::{Path, PathBuf};

use super::digest::{resolve_context, Context};
use super::BuildError;
use crate::desired::BuildSpec;
use crate::source::{EntryKind, Repo, Snapshot};

/// Files in the archive get this owner, and the commit's time as their mtime, so the same commit
/// always produces the same archive.
const OWNER: u64 = 0;

fn io_err(what: &str, e: std::io::Error) -> BuildError {
    BuildError::Io {
        what: what.to_string(),
        source: e,
    }
}

/// Reopens `repo_path` at `commit` and runs `f` on the snapshot.
fn with_snapshot<T>(
    repo_path: &Path,
    commit: &str,
    f: impl FnOnce(&Snapshot<'_>) -> Result<T, BuildError>,
) -> Result<T, BuildError> {
    let repo = Repo::open(repo_path)?;
    let snapshot = repo.snapshot(commit)?;
    f(&snapshot)
}

fn commit_time(repo_path: &Path, commit: &str) -> u64 {
    git2::Repository::discover(repo_path)
        .ok()
        .and_then(|r| {
            r.revparse_single(commit)
                .ok()?
                .peel_to_commit()
                .ok()
                .map(|c| c.time().seconds())
        })
        .map(|s| u64::try_from(s).unwrap_or(0))
        .unwrap_or(0)
}

/// The context archive of `spec` at `commit` and the Dockerfile path to pass to `-f`.
pub fn tar_context(
    repo_path: &Path,
    commit: &str,
    component: &str,
    spec: &BuildSpec,
) -> Result<(Vec<u8>, String), BuildError> {
    let mtime = commit_time(repo_path, commit);
    with_snapshot(repo_path, commit, |snapshot| {
        let ctx = resolve_context(snapshot, component, spec)?;
        let bytes = write_tar(snapshot, &ctx, mtime)?;
        Ok((bytes, ctx.dockerfile_rel))
    })
}

fn write_tar(snapshot: &Snapshot<'_>, ctx: &Context, mtime: u64) -> Result<Vec<u8>, BuildError> {
    let mut builder = tar::Builder::new(Vec::new());
    for f in &ctx.files {
        let data = snapshot.blob(&f.repo_path, f.oid)?;
        let mut header = tar::Header::new_gnu();
        header.set_uid(OWNER);
        header.set_gid(OWNER);
        header.set_mtime(mtime);
        let res = match f.kind {
            EntryKind::Symlink => {
                header.set_entry_type(tar::EntryType::Symlink);
                header.set_mode(0o777);
                header.set_size(0);
                let target = String::from_utf8_lossy(&data).into_owned();
                builder.append_link(&mut header, &f.rel, target)
            }
            kind => {
                header.set_entry_type(tar::EntryType::Regular);
                header.set_mode(if kind == EntryKind::Executable {
                    0o755
                } else {
                    0o644
                });
                header.set_size(data.len() as u64);
                builder.append_data(&mut header, &f.rel, data.as_slice())
            }
        };
        res.map_err(|e| io_err(&format!("adding {} to the context archive", f.rel), e))?;
    }
    builder
        .into_inner()
        .map_err(|e| io_err("finishing the context archive", e))
}

/// A context exported into a temporary directory (removed on drop).
#[derive(Debug)]
pub struct ExportedContext {
    dir: tempfile::TempDir,
    /// The Dockerfile's path inside the directory.
    pub dockerfile: PathBuf,
}

impl ExportedContext {
    /// The context directory.
    pub fn path(&self) -> &Path {
        self.dir.path()
    }
}

/// Exports the context of `spec` at `commit` into a fresh temporary directory.
pub fn export_context(
    repo_path: &Path,
    commit: &str,
    component: &str,
    spec: &BuildSpec,
) -> Result<ExportedContext, BuildError> {
    with_snapshot(repo_path, commit, |snapshot| {
        let ctx = resolve_context(snapshot, component, spec)?;
        let dir = tempfile::Builder::new()
            .prefix("converge-context-")
            .tempdir()
            .map_err(|e| io_err("creating a temporary context directory", e))?;
        for f in &ctx.files {
            let data = snapshot.blob(&f.repo_path, f.oid)?;
            let path = safe_join(dir.path(), &f.rel).ok_or_else(|| BuildError::InvalidContext {
                component: component.to_string(),
                message: format!("unsafe path `{}` in the context", f.rel),
            })?;
            if let Some(parent) = path.parent() {
                std::fs::create_dir_all(parent)
                    .map_err(|e| io_err("creating a context directory", e))?;
            }
            match f.kind {
                EntryKind::Symlink => {
                    let target = String::from_utf8_lossy(&data).into_owned();
                    std::os::unix::fs::symlink(&target, &path)
                        .map_err(|e| io_err(&format!("linking {}", f.rel), e))?;
                }
                kind => {
                    std::fs::write(&path, &data)
                        .map_err(|e| io_err(&format!("writing {}", f.rel), e))?;
                    use std::os::unix::fs::PermissionsExt;
                    let mode = if kind == EntryKind::Executable {
                        0o755
                    } else {
                        0o644
                    };
                    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(mode))
                        .map_err(|e| io_err(&format!("setting the mode of {}", f.rel), e))?;
                }
            }
        }
        let dockerfile = dir.path().join(&ctx.dockerfile_rel);
        Ok(ExportedContext { dir, dockerfile })
    })
}

/// Joins a relative context path under `root`, refusing anything that could leave it.
fn safe_join(root: &Path, rel: &str) -> Option<PathBuf> {
    let mut out = root.to_path_buf();
    for part in rel.split('/') {
        match part {
            "" | "." | ".." => return None,
            p => out.push(p),
        }
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn safe_join_refuses_parent_and_empty_segments() {
        let root = Path::new("/tmp/x");
        assert_eq!(safe_join(root, "a/b"), Some(PathBuf::from("/tmp/x/a/b")));
        assert_eq!(safe_join(root, "../a"), None);
        assert_eq!(safe_join(root, "a//b"), None);
    }
}
