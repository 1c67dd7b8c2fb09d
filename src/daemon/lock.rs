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
    claim, ensure_namespace, lease_name, may_take, Acquired, Claim, Claimant, LeaseError,
    LeaseGuard, LeaseTiming, ANNOTATION_CHECKOUT, ANNOTATION_INSTANCE, LEASE_SECONDS,
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
    /// This process. In a Pod the host is the Pod's name (`POD_NAME`, from the downward API),
    /// so the Lease holder names the Pod.
    pub fn me(checkout: &Path) -> Self {
        Self {
            pid: std::process::id(),
            host: host_or_pod(std::env::var("POD_NAME").ok()),
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

/// The Pod's name when one is given (not blank), else the host's.
fn host_or_pod(pod: Option<String>) -> String {
    pod.map(|p| p.trim().to_string())
        .filter(|p| !p.is_empty())
        .unwrap_or_else(hostname)
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

/// Why a leader stopped leading a stack.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Loss {
    /// Another daemon holds the Lease now.
    Taken {
        /// The stack.
        stack: String,
        /// The new holder.
        holder: String,
    },
    /// No renewal succeeded within the renew deadline: a standby may take the Lease soon.
    NotRenewed {
        /// The stack.
        stack: String,
        /// The deadline.
        after: Duration,
        /// The last renewal error.
        error: String,
    },
}

impl std::fmt::Display for Loss {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Loss::Taken { stack, holder } => {
                write!(f, "stack `{stack}`: its Lease is held by {holder} now")
            }
            Loss::NotRenewed {
                stack,
                after,
                error,
            } => write!(
                f,
                "stack `{stack}`: the Lease could not be renewed for {}s (renew deadline; last error: {error})",
                after.as_secs()
            ),
        }
    }
}

/// What the renewer does after one renewal (pure): `Ok(wait)` before the next one, or the loss
/// to report. `failing_since` is when the first of the failures in a row happened.
pub fn after_renewal(
    timing: &LeaseTiming,
    failing_since: Option<std::time::Instant>,
    now: std::time::Instant,
) -> Result<Duration, Duration> {
    match failing_since {
        None => Ok(timing.renew),
        Some(since) => match timing.renew_deadline {
            Some(d) if now.duration_since(since) + timing.retry.min(d) > d => Err(d),
            _ => Ok(timing.retry),
        },
    }
}

/// Keeps a Lease: renews it every `renew` period, re-creates it at once when it is deleted (by
/// hand, or with its namespace), retries every `retry` period while that fails, and reports on
/// `lost` a Lease another daemon took, or (with a renew deadline) one it could not renew in time.
pub(super) fn spawn_renewer(
    g: LeaseGuard,
    lost: mpsc::Sender<Loss>,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let timing = g.timing();
        let config = kube::runtime::watcher::Config::default()
            .fields(&format!("metadata.name={}", g.name()));
        let deleted = kube::runtime::watcher::watcher(g.api().clone(), config)
            .default_backoff()
            .filter_map(|e| async move {
                matches!(e, Ok(kube::runtime::watcher::Event::Delete(_))).then_some(())
            });
        futures::pin_mut!(deleted);
        let mut wait = timing.renew;
        let mut failing_since: Option<std::time::Instant> = None;
        loop {
            tokio::select! {
                _ = tokio::time::sleep(wait) => {}
                Some(()) = deleted.next() => {
                    warn!(stack = %g.stack(), "the stack's Lease was deleted; re-creating it");
                }
            }
            // A renewal may not outlast the deadline: an API server that does not answer counts
            // as a failure then, not as a wait.
            let attempt = match timing.renew_deadline {
                Some(d) => tokio::time::timeout(d, g.keep()).await.unwrap_or_else(|_| {
                    Err(LeaseError::Cluster(crate::cluster::ClusterError::Timeout {
                        action: "renewing",
                        object: format!("Lease {}/{}", g.namespace(), g.name()),
                    }))
                }),
                None => g.keep().await,
            };
            let error = match attempt {
                Ok(r) => {
                    if r == Renewal::Recreate {
                        info!(stack = %g.stack(), "Lease re-created: this daemon still manages the stack");
                    }
                    failing_since = None;
                    wait = timing.renew;
                    continue;
                }
                Err(LeaseError::Lost { holder, .. }) => {
                    let _ = lost
                        .send(Loss::Taken {
                            stack: g.stack().to_string(),
                            holder,
                        })
                        .await;
                    return;
                }
                Err(e) => e,
            };
            // While a namespace terminates nothing can be created in it: retry soon, so the
            // Lease is back the moment it is gone, before anyone else can take it.
            if failing_since.is_none() {
                warn!(stack = %g.stack(), error = %error, retry_ms = timing.retry.as_millis() as u64, "Lease renewal failed; retrying");
            } else {
                debug!(stack = %g.stack(), error = %error, "Lease renewal failed");
            }
            let since = *failing_since.get_or_insert_with(std::time::Instant::now);
            match after_renewal(&timing, Some(since), std::time::Instant::now()) {
                Ok(w) => wait = w,
                Err(after) => {
                    let _ = lost
                        .send(Loss::NotRenewed {
                            stack: g.stack().to_string(),
                            after,
                            error: error.to_string(),
                        })
                        .await;
                    return;
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

    #[test]
    fn a_leader_that_cannot_renew_stops_at_the_renew_deadline_and_a_laptop_keeps_trying() {
        let t0 = std::time::Instant::now();
        let cluster = LeaseTiming::in_cluster();
        assert_eq!(after_renewal(&cluster, None, t0), Ok(cluster.renew));
        // Failing for 4 s of a 10 s deadline: retry in 2 s.
        let later = t0 + Duration::from_secs(4);
        assert_eq!(after_renewal(&cluster, Some(t0), later), Ok(cluster.retry));
        // The next try would come after the deadline: stop leading now.
        let late = t0 + Duration::from_secs(9);
        assert_eq!(
            after_renewal(&cluster, Some(t0), late),
            Err(Duration::from_secs(10))
        );
        let laptop = LeaseTiming::default();
        let hour = t0 + Duration::from_secs(3600);
        assert_eq!(after_renewal(&laptop, Some(t0), hour), Ok(laptop.retry));
    }

    #[test]
    fn lease_timings_that_let_two_leaders_write_are_refused() {
        assert!(LeaseTiming::default().check().is_ok());
        assert!(LeaseTiming::in_cluster().check().is_ok());
        let deadline_past_expiry = LeaseTiming {
            renew_deadline: Some(Duration::from_secs(15)),
            ..LeaseTiming::in_cluster()
        };
        let err = deadline_past_expiry.check().unwrap_err();
        assert!(err.contains("shorter than the Lease duration"), "{err}");
        let retry_too_long = LeaseTiming {
            retry: Duration::from_secs(9),
            ..LeaseTiming::in_cluster()
        };
        assert!(retry_too_long.check().is_err());
    }

    #[test]
    fn in_a_pod_the_holder_names_the_pod() {
        let h = Holder {
            pid: 1,
            host: host_or_pod(Some("converge-7c9d-x2".into())),
            ..Default::default()
        };
        assert_eq!(h.identity(), "converge-7c9d-x2/1");
        assert_eq!(host_or_pod(Some(" ".into())), hostname());
        assert_eq!(host_or_pod(None), hostname());
    }
}
