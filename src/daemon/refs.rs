//! Commit triggers from git: a notify watch on the checkout's refs (`HEAD`, `packed-refs`,
//! `refs/heads/**`, converge's own `refs/converge/**`), the tip of the tracked ref, and pull
//! mode's fetch into a converge-owned tracking ref.
//!
//! It never reads or writes the working tree, and never moves the user's branches: pull mode only
//! updates `refs/converge/remotes/<remote>/<branch>`, and only by fast-forward unless allowed.

use std::path::{Path, PathBuf};
use std::time::Duration;

use notify::{RecursiveMode, Watcher};
use tokio::sync::mpsc;
use tracing::{debug, info};

use crate::process;
use crate::source::remote::{telling_line, FetchFailure, Remote, SshAuth};
use crate::source::{Repo, SourceError};

/// Failures of the ref watch and of pull mode.
#[derive(Debug, thiserror::Error)]
pub enum RefsError {
    /// The filesystem watch could not be set up.
    #[error("watching {path} for ref changes")]
    Watch {
        /// The path watched.
        path: PathBuf,
        /// What notify said.
        #[source]
        source: notify::Error,
    },
    /// A git command failed, could not start or timed out.
    #[error(transparent)]
    Git(#[from] process::Error),
    /// A fetch failed: what, the remote (redacted) and the fix, on one line.
    #[error("{message}")]
    Fetch {
        /// What kind of failure.
        failure: FetchFailure,
        /// The whole line.
        message: String,
    },
    /// The remote's branch moved to a commit that does not descend from the one deployed.
    #[error("{remote}/{branch} moved from {old} to {new}, which is not a fast-forward; converge keeps deploying {old} (pass --allow-non-fast-forward to follow rewritten history)")]
    NonFastForward {
        /// The remote.
        remote: String,
        /// The branch.
        branch: String,
        /// The commit deployed so far.
        old: String,
        /// The commit fetched.
        new: String,
    },
}

/// Where the git directories of a checkout are.
#[derive(Debug, Clone)]
pub struct GitDirs {
    /// The work tree's top directory (for git commands).
    pub root: PathBuf,
    /// The git directory of this work tree (`.git`, or `.git/worktrees/<name>`).
    pub git_dir: PathBuf,
    /// The directory holding `refs/` and `packed-refs` (the same as `git_dir` but in a worktree).
    pub common_dir: PathBuf,
}

impl GitDirs {
    /// Finds the git directories of the repository containing `path`.
    pub fn discover(path: &Path) -> Result<Self, SourceError> {
        let repo = Repo::open(path)?;
        let git_dir = repo.git_dir().to_path_buf();
        let common_dir = std::fs::read_to_string(git_dir.join("commondir"))
            .ok()
            .map(|c| git_dir.join(c.trim()))
            .and_then(|p| p.canonicalize().ok())
            .unwrap_or_else(|| git_dir.clone());
        Ok(Self {
            root: repo.root().to_path_buf(),
            git_dir,
            common_dir,
        })
    }
}

/// The ref the daemon deploys: the branch itself, or pull mode's tracking ref.
pub fn tracked_ref(branch: &str, remote: Option<&str>) -> String {
    match remote {
        Some(r) => format!("refs/converge/remotes/{r}/{branch}"),
        None => format!("refs/heads/{branch}"),
    }
}

/// Resolves `refname` to its commit id.
pub fn tip(repo: &Path, refname: &str) -> Result<String, SourceError> {
    let repo = Repo::open(repo)?;
    let snapshot = repo.snapshot(refname)?;
    Ok(snapshot.commit().to_string())
}

/// Whether a changed path (relative to a git directory) can move a tracked ref.
pub fn is_ref_path(rel: &Path) -> bool {
    let s = rel.to_string_lossy();
    let s = s.trim_end_matches(".lock");
    s == "HEAD"
        || s == "packed-refs"
        || s.starts_with("refs/heads/")
        || s.starts_with("refs/converge/")
        || s == "refs/heads"
        || s == "refs/converge"
}

/// A running watch; dropping it stops the watch.
pub struct RefWatch {
    _watcher: notify::RecommendedWatcher,
}

/// Watches the refs of `dirs`; every relevant change sends `()` on `tx` (coalesced: a full
/// channel already holds a pending change).
pub fn watch(dirs: &GitDirs, tx: mpsc::Sender<()>) -> Result<RefWatch, RefsError> {
    let bases: Vec<PathBuf> = {
        let mut b = vec![dirs.common_dir.clone()];
        if dirs.git_dir != dirs.common_dir {
            b.push(dirs.git_dir.clone());
        }
        // notify reports canonical paths on some platforms.
        let canon: Vec<PathBuf> = b.iter().filter_map(|p| p.canonicalize().ok()).collect();
        b.extend(canon);
        b
    };
    let filter_bases = bases.clone();
    let mut watcher = notify::recommended_watcher(move |res: notify::Result<notify::Event>| {
        let Ok(event) = res else {
            // A failed watch read: check the tip anyway, it costs no API request.
            let _ = tx.try_send(());
            return;
        };
        if matches!(event.kind, notify::EventKind::Access(_)) {
            return;
        }
        let relevant = event.paths.iter().any(|p| {
            filter_bases
                .iter()
                .filter_map(|b| p.strip_prefix(b).ok())
                .any(is_ref_path)
        });
        if relevant {
            let _ = tx.try_send(());
        }
    })
    .map_err(|source| RefsError::Watch {
        path: dirs.common_dir.clone(),
        source,
    })?;
    let mut add = |path: &Path, mode: RecursiveMode| {
        watcher
            .watch(path, mode)
            .map_err(|source| RefsError::Watch {
                path: path.to_path_buf(),
                source,
            })
    };
    add(&dirs.common_dir, RecursiveMode::NonRecursive)?;
    if dirs.git_dir != dirs.common_dir {
        add(&dirs.git_dir, RecursiveMode::NonRecursive)?;
    }
    let refs = dirs.common_dir.join("refs");
    add(&refs, RecursiveMode::Recursive)?;
    debug!(git_dir = %dirs.common_dir.display(), "watching refs");
    Ok(RefWatch { _watcher: watcher })
}

/// Runs git with `args` in `root`, bounded by `timeout`; returns stdout, or `None` when git
/// exited 1 and `allow_one` (the "no" of `merge-base --is-ancestor`).
async fn git(
    root: &Path,
    args: &[&str],
    timeout: Duration,
    allow_one: bool,
) -> Result<Option<String>, RefsError> {
    let out = process::Command::new("git", timeout)
        .arg("-C")
        .arg(root)
        .args(args)
        .env("GIT_TERMINAL_PROMPT", "0")
        .output()
        .await?;
    if allow_one && out.status.code() == Some(1) {
        return Ok(None);
    }
    Ok(Some(out.check()?.stdout.trim().to_string()))
}

/// Pull mode's remote and how to reach it.
#[derive(Debug, Clone)]
pub struct Pull {
    /// What `--remote` names.
    pub remote: Remote,
    /// The key and known_hosts files (may be empty: the user's own ssh setup).
    pub ssh: SshAuth,
}

/// The name a URL remote is given for one `git fetch`, through git's environment
/// (`GIT_CONFIG_COUNT`): the URL stays out of argv, so out of `ps` and of the runner's debug log.
const ENV_REMOTE: &str = "converge-url";

/// The ref pull mode fetches the remote's default branch into, to learn the stacks before the
/// branch is known.
pub fn head_ref(pull: &Pull) -> String {
    format!("refs/converge/fetched/{}/HEAD", pull.remote.name())
}

/// Fetches `src` of the remote into `dst` (forced: `dst` is converge's scratch ref).
async fn fetch_into(
    root: &Path,
    pull: &Pull,
    src: &str,
    dst: &str,
    branch: &str,
    timeout: Duration,
) -> Result<(), RefsError> {
    let refspec = format!("+{src}:{dst}");
    let remote_arg = if pull.remote.is_url() {
        ENV_REMOTE
    } else {
        pull.remote.fetch_arg()
    };
    let mut cmd = process::Command::new("git", timeout)
        .arg("-C")
        .arg(root)
        .args([
            "fetch",
            "--quiet",
            "--no-tags",
            "--no-write-fetch-head",
            remote_arg,
            &refspec,
        ])
        .envs(pull.ssh.git_env());
    if pull.remote.is_url() {
        cmd = cmd.envs([
            ("GIT_CONFIG_COUNT", "1".to_string()),
            ("GIT_CONFIG_KEY_0", format!("remote.{ENV_REMOTE}.url")),
            ("GIT_CONFIG_VALUE_0", pull.remote.fetch_arg().to_string()),
        ]);
    }
    let fail = |failure: FetchFailure, detail: String| {
        let detail = if detail.is_empty() {
            String::new()
        } else {
            format!(" ({detail})")
        };
        RefsError::Fetch {
            failure,
            message: format!(
                "fetching {branch} from {}: {}{detail}; {}",
                pull.remote,
                failure.what(branch),
                failure.fix(&pull.ssh)
            ),
        }
    };
    match cmd.output().await {
        Ok(out) if out.success() => Ok(()),
        Ok(out) => {
            let stderr = out.stderr.replace(ENV_REMOTE, &pull.remote.to_string());
            Err(fail(FetchFailure::classify(&stderr), telling_line(&stderr)))
        }
        Err(process::Error::Timeout { timeout, .. }) => Err(fail(
            FetchFailure::Unreachable,
            format!("no answer within {}", humantime::format_duration(timeout)),
        )),
        Err(e) if e.is_not_found() => Err(fail(
            FetchFailure::Other,
            "git is not installed: install it (pull mode runs `git fetch`)".into(),
        )),
        // The command line is not shown: it may hold nothing secret, but stay on the safe side.
        Err(_) => Err(fail(FetchFailure::Other, "git could not be run".into())),
    }
}

/// Fetches the remote's default branch (its `HEAD`) into [`head_ref`]: what the stacks are
/// learned from when no `--branch` is given and nothing was fetched before.
pub async fn fetch_head(root: &Path, pull: &Pull, timeout: Duration) -> Result<String, RefsError> {
    let dst = head_ref(pull);
    fetch_into(root, pull, "HEAD", &dst, "HEAD", timeout).await?;
    let tip = git(
        root,
        &["rev-parse", "--verify", &dst],
        Duration::from_secs(10),
        false,
    )
    .await?
    .unwrap_or_default();
    info!(remote = %pull.remote, commit = %crate::desired::short_id(&tip), "fetched the remote's default branch");
    Ok(tip)
}

/// Whether `refname` resolves in the repository at `root`.
pub fn exists(root: &Path, refname: &str) -> bool {
    tip(root, refname).is_ok()
}

/// Pull mode: fetches the remote's `branch` and moves converge's tracking ref to it when that is
/// a fast-forward (or `allow_non_ff`). Returns the new tip when the tracking ref moved.
pub async fn fetch(
    root: &Path,
    pull: &Pull,
    branch: &str,
    allow_non_ff: bool,
    timeout: Duration,
) -> Result<Option<String>, RefsError> {
    let name = pull.remote.name();
    let fetched_ref = format!("refs/converge/fetched/{name}/{branch}");
    let tracking = tracked_ref(branch, Some(name));
    fetch_into(
        root,
        pull,
        &format!("refs/heads/{branch}"),
        &fetched_ref,
        branch,
        timeout,
    )
    .await?;
    let short = Duration::from_secs(10);
    let new = git(root, &["rev-parse", "--verify", &fetched_ref], short, false)
        .await?
        .unwrap_or_default();
    let old = git(
        root,
        &["rev-parse", "--verify", "--quiet", &tracking],
        short,
        true,
    )
    .await
    .ok()
    .flatten()
    .filter(|s| !s.is_empty());
    if old.as_deref() == Some(new.as_str()) {
        return Ok(None);
    }
    if let Some(old) = &old {
        let ff = git(
            root,
            &["merge-base", "--is-ancestor", old, &new],
            short,
            true,
        )
        .await?
        .is_some();
        if !ff && !allow_non_ff {
            return Err(RefsError::NonFastForward {
                remote: pull.remote.to_string(),
                branch: branch.into(),
                old: old.clone(),
                new,
            });
        }
    }
    let mut args = vec![
        "update-ref",
        "-m",
        "converge: fetch",
        tracking.as_str(),
        new.as_str(),
    ];
    if let Some(old) = &old {
        args.push(old);
    }
    git(root, &args, short, false).await?;
    info!(remote = %pull.remote, %branch, commit = %crate::desired::short_id(&new), "fetched");
    Ok(Some(new))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_ref_paths_wake_the_daemon() {
        for p in [
            "HEAD",
            "packed-refs",
            "refs/heads/main",
            "refs/heads/main.lock",
            "refs/heads/feat/x",
            "refs/converge/remotes/origin/main",
        ] {
            assert!(is_ref_path(Path::new(p)), "{p}");
        }
        for p in [
            "index",
            "converge.lock",
            "objects/ab/cdef",
            "logs/HEAD",
            "refs/tags/v1",
            "FETCH_HEAD",
        ] {
            assert!(!is_ref_path(Path::new(p)), "{p}");
        }
    }

    #[test]
    fn pull_mode_tracks_a_converge_owned_ref_never_the_branch() {
        assert_eq!(tracked_ref("main", None), "refs/heads/main");
        assert_eq!(
            tracked_ref("main", Some("origin")),
            "refs/converge/remotes/origin/main"
        );
    }
}
