//! One daemon per checkout: an exclusive file lock in the git directory (`converge.lock`, which
//! also records who holds it and where its HTTP endpoint listens). One daemon per stack and
//! cluster is the Lease's job (`cluster::lease`).
//!
//! It never breaks a lock another live process holds: `flock` dies with its holder.

use std::fs::{File, OpenOptions};
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

use fs2::FileExt;
use serde::{Deserialize, Serialize};
use std::time::Duration;

use futures::StreamExt;
use kube::runtime::WatchStreamExt;
use tokio::sync::mpsc;
use tracing::{debug, info, warn};

use crate::cluster::lease::Renewal;

pub use crate::cluster::lease::{
    ensure_namespace, lease_name, may_take, LeaseError, LeaseGuard, ANNOTATION_CHECKOUT,
    LEASE_SECONDS,
};

/// The lock file's name inside the git directory.
pub const LOCK_FILE: &str = "converge.lock";

/// Failures taking or keeping a lock.
#[derive(Debug, thiserror::Error)]
pub enum LockError {
    /// Another daemon holds the checkout's file lock.
    #[error("another converge daemon runs for this checkout: {holder} holds {}", path.display())]
    FileHeld {
        /// The lock file.
        path: PathBuf,
        /// Who holds it, as recorded in the file.
        holder: String,
    },
    /// The lock file could not be opened or written.
    #[error("lock file {}", path.display())]
    File {
        /// The lock file.
        path: PathBuf,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// The stack's Lease could not be taken or kept.
    #[error(transparent)]
    Lease(#[from] LeaseError),
}

/// Who holds a lock: recorded in the lock file and named in refusals.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Holder {
    /// Process id.
    pub pid: u32,
    /// Host name.
    pub host: String,
    /// The checkout's top directory.
    pub checkout: String,
    /// The loopback HTTP address (`127.0.0.1:port`), if serving.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub http: Option<String>,
    /// When the daemon started (RFC 3339).
    pub since: String,
    /// The local URLs it serves now (`converge status` reads them here).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub urls: Vec<String>,
}

impl Holder {
    /// This process.
    pub fn me(checkout: &Path) -> Self {
        Self {
            pid: std::process::id(),
            host: hostname(),
            checkout: checkout.display().to_string(),
            http: None,
            since: chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
            urls: Vec::new(),
        }
    }

    /// `host/pid`, the Lease holder identity.
    pub fn identity(&self) -> String {
        format!("{}/{}", self.host, self.pid)
    }
}

impl std::fmt::Display for Holder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "pid {} on {} (since {})",
            self.pid, self.host, self.since
        )
    }
}

/// The host's name, without a network call.
pub fn hostname() -> String {
    if let Ok(h) = std::fs::read_to_string("/proc/sys/kernel/hostname") {
        let h = h.trim();
        if !h.is_empty() {
            return h.to_string();
        }
    }
    // No /proc (macOS): `uname -n`, since `gethostname(3)` would need `unsafe`, which the crate
    // forbids.
    let uname = crate::process::Command::new("uname", std::time::Duration::from_secs(2))
        .arg("-n")
        .run_blocking();
    if let Ok(out) = uname {
        let h = out.stdout.trim();
        if !h.is_empty() {
            return h.to_string();
        }
    }
    std::env::var("HOSTNAME").unwrap_or_else(|_| "localhost".into())
}

/// The exclusive lock on a checkout; released when dropped (or when the process dies).
#[derive(Debug)]
pub struct FileLock {
    file: File,
    path: PathBuf,
}

impl FileLock {
    /// Takes the lock in `git_dir`, or names the daemon holding it.
    pub fn acquire(git_dir: &Path) -> Result<Self, LockError> {
        let path = git_dir.join(LOCK_FILE);
        let io = |source| LockError::File {
            path: path.clone(),
            source,
        };
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(&path)
            .map_err(io)?;
        if FileExt::try_lock_exclusive(&file).is_err() {
            let holder = read_holder(git_dir)
                .map(|h| h.to_string())
                .unwrap_or_else(|| "an unknown process".into());
            return Err(LockError::FileHeld { path, holder });
        }
        Ok(Self { file, path })
    }

    /// Records `holder` in the lock file, for `converge sync` and for refusals.
    pub fn record(&mut self, holder: &Holder) -> Result<(), LockError> {
        let io = |source| LockError::File {
            path: self.path.clone(),
            source,
        };
        let text = serde_json::to_string(holder).unwrap_or_default();
        self.file.set_len(0).map_err(io)?;
        self.file.seek(SeekFrom::Start(0)).map_err(io)?;
        self.file.write_all(text.as_bytes()).map_err(io)?;
        self.file.flush().map_err(io)
    }
}

impl Drop for FileLock {
    fn drop(&mut self) {
        let _ = self.file.set_len(0);
        let _ = FileExt::unlock(&self.file);
    }
}

/// The holder recorded in `git_dir`'s lock file, if a daemon holds it.
pub fn read_holder(git_dir: &Path) -> Option<Holder> {
    let mut text = String::new();
    File::open(git_dir.join(LOCK_FILE))
        .ok()?
        .read_to_string(&mut text)
        .ok()?;
    serde_json::from_str(&text).ok()
}

/// Whether a daemon holds `git_dir`'s lock now.
pub fn is_held(git_dir: &Path) -> bool {
    let Ok(file) = File::open(git_dir.join(LOCK_FILE)) else {
        return false;
    };
    match FileExt::try_lock_shared(&file) {
        Ok(()) => {
            let _ = FileExt::unlock(&file);
            false
        }
        Err(_) => true,
    }
}

/// How often the Lease is renewed.
const LEASE_RENEW: Duration = Duration::from_secs(10);
/// How soon a failed Lease renewal is tried again.
const LEASE_RETRY: Duration = Duration::from_secs(1);

/// Keeps a Lease: renews it every [`LEASE_RENEW`], re-creates it at once when it is deleted
/// (by hand, or with its namespace), retries every second while that fails, and reports a
/// Lease another daemon took on `lost`.
pub(super) fn spawn_renewer(
    g: LeaseGuard,
    lost: mpsc::Sender<String>,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let config = kube::runtime::watcher::Config::default()
            .fields(&format!("metadata.name={}", g.name()));
        let deleted = kube::runtime::watcher::watcher(g.api().clone(), config)
            .default_backoff()
            .filter_map(|e| async move {
                matches!(e, Ok(kube::runtime::watcher::Event::Delete(_))).then_some(())
            });
        futures::pin_mut!(deleted);
        let mut wait = LEASE_RENEW;
        let mut failing = false;
        loop {
            tokio::select! {
                _ = tokio::time::sleep(wait) => {}
                Some(()) = deleted.next() => {
                    warn!(stack = %g.stack(), "the stack's Lease was deleted; re-creating it");
                }
            }
            match g.keep().await {
                Ok(r) => {
                    if r == Renewal::Recreate {
                        info!(stack = %g.stack(), "Lease re-created: this daemon still manages the stack");
                    }
                    failing = false;
                    wait = LEASE_RENEW;
                }
                Err(LeaseError::Lost { holder, .. }) => {
                    let _ = lost.send(holder).await;
                    return;
                }
                Err(e) => {
                    // While a namespace terminates nothing can be created in it: retry soon, so
                    // the Lease is back the moment it is gone, before anyone else can take it.
                    if !failing {
                        warn!(stack = %g.stack(), error = %e, "Lease renewal failed; retrying every second");
                    } else {
                        debug!(stack = %g.stack(), error = %e, "Lease renewal failed");
                    }
                    failing = true;
                    wait = LEASE_RETRY;
                }
            }
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    #[test]
    fn a_second_file_lock_on_one_checkout_names_the_holder() {
        let dir = tempfile::tempdir().unwrap();
        let mut first = FileLock::acquire(dir.path()).unwrap();
        first
            .record(&Holder {
                pid: 4242,
                host: "laptop".into(),
                ..Default::default()
            })
            .unwrap();
        assert!(is_held(dir.path()));
        let err = FileLock::acquire(dir.path()).unwrap_err().to_string();
        assert!(err.contains("pid 4242 on laptop"), "{err}");
        drop(first);
        assert!(!is_held(dir.path()));
        assert!(FileLock::acquire(dir.path()).is_ok());
    }
}
