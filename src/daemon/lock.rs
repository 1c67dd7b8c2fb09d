//! One daemon per checkout and cluster: an exclusive file lock in the git directory
//! (`converge.lock`, which also records who holds it and where its HTTP endpoint listens) and a
//! coordination Lease `converge-<stack>` in the stack's namespace, renewed while the daemon runs.
//!
//! It never breaks a lock another live daemon holds: a Lease is taken over only when it expired,
//! is free, or was held by an earlier daemon of this same checkout on this host (whose file lock
//! this process now holds, so that daemon is gone).

use std::fs::{File, OpenOptions};
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

use fs2::FileExt;
use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::api::core::v1::Namespace;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::MicroTime;
use kube::api::{Api, ObjectMeta, Patch, PatchParams, PostParams};
use serde::{Deserialize, Serialize};

use crate::cluster::REQUEST_TIMEOUT;
use crate::vocabulary::{FIELD_MANAGER, LABEL_MANAGED_BY, LABEL_STACK, MANAGED_BY};

/// The lock file's name inside the git directory.
pub const LOCK_FILE: &str = "converge.lock";
/// How long a Lease holds without renewal.
pub const LEASE_SECONDS: i32 = 30;
/// The annotation naming the checkout a Lease holder deploys from.
pub const ANNOTATION_CHECKOUT: &str = "converge.dev/checkout";

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
    /// Another daemon holds the stack's Lease.
    #[error("another converge daemon manages stack `{stack}`: Lease {namespace}/{name} is held by {holder} (renewed {renewed}); stop it first, or wait {LEASE_SECONDS}s after it stopped")]
    LeaseHeld {
        /// The stack.
        stack: String,
        /// The namespace.
        namespace: String,
        /// The Lease's name.
        name: String,
        /// The holder's identity (`host/pid`) and checkout.
        holder: String,
        /// When it was last renewed.
        renewed: String,
    },
    /// The Lease was taken by someone else while this daemon held it.
    #[error("lost Lease {namespace}/{name} to {holder}")]
    LeaseLost {
        /// The namespace.
        namespace: String,
        /// The Lease's name.
        name: String,
        /// The new holder.
        holder: String,
    },
    /// The API server failed or did not answer in time.
    #[error("{action} Lease {namespace}/{name}: {message}")]
    Api {
        /// What was being done.
        action: &'static str,
        /// The namespace.
        namespace: String,
        /// The Lease's name.
        name: String,
        /// The error.
        message: String,
    },
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
    if let Ok(out) = std::process::Command::new("uname").arg("-n").output() {
        let h = String::from_utf8_lossy(&out.stdout).trim().to_string();
        if !h.is_empty() {
            return h;
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

/// The name of a stack's Lease.
pub fn lease_name(stack: &str) -> String {
    format!("converge-{stack}")
}

/// A held Lease.
#[derive(Clone)]
pub struct LeaseGuard {
    api: Api<Lease>,
    stack: String,
    namespace: String,
    name: String,
    identity: String,
    checkout: String,
}

async fn bounded<T>(
    action: &'static str,
    ns: &str,
    name: &str,
    fut: impl std::future::Future<Output = Result<T, kube::Error>>,
) -> Result<T, LockError> {
    let err = |message: String| LockError::Api {
        action,
        namespace: ns.into(),
        name: name.into(),
        message,
    };
    match tokio::time::timeout(REQUEST_TIMEOUT, fut).await {
        Err(_) => Err(err(format!(
            "no answer within {}s",
            REQUEST_TIMEOUT.as_secs()
        ))),
        Ok(Err(e)) => Err(err(e.to_string())),
        Ok(Ok(v)) => Ok(v),
    }
}

fn now() -> MicroTime {
    MicroTime(k8s_openapi::jiff::Timestamp::now())
}

/// Creates the stack's namespace when missing (labelled like the reconcile labels it), so the
/// Lease has somewhere to live before the first reconcile.
pub async fn ensure_namespace(
    client: &kube::Client,
    namespace: &str,
    stack: &str,
) -> Result<(), LockError> {
    let api: Api<Namespace> = Api::all(client.clone());
    if bounded(
        "reading namespace for",
        namespace,
        "",
        api.get_opt(namespace),
    )
    .await?
    .is_some()
    {
        return Ok(());
    }
    let ns = serde_json::json!({
        "apiVersion": "v1",
        "kind": "Namespace",
        "metadata": {"name": namespace, "labels": {LABEL_MANAGED_BY: MANAGED_BY, LABEL_STACK: stack}},
    });
    bounded(
        "creating namespace for",
        namespace,
        "",
        api.patch(
            namespace,
            &PatchParams::apply(FIELD_MANAGER),
            &Patch::Apply(&ns),
        ),
    )
    .await?;
    Ok(())
}

/// Whether a Lease may be taken by `identity` (pure): free, expired, already ours, or held by an
/// earlier daemon of the same checkout on the same host.
pub fn may_take(
    lease: &Lease,
    identity: &str,
    checkout: &str,
    now: k8s_openapi::jiff::Timestamp,
) -> bool {
    let spec = lease.spec.clone().unwrap_or_default();
    let Some(holder) = spec.holder_identity.filter(|h| !h.is_empty()) else {
        return true;
    };
    if holder == identity {
        return true;
    }
    let same_host =
        holder.rsplit_once('/').map(|(h, _)| h) == identity.rsplit_once('/').map(|(h, _)| h);
    let same_checkout = lease
        .metadata
        .annotations
        .as_ref()
        .and_then(|a| a.get(ANNOTATION_CHECKOUT))
        .is_some_and(|c| c == checkout);
    if same_host && same_checkout {
        return true;
    }
    let duration = i64::from(spec.lease_duration_seconds.unwrap_or(LEASE_SECONDS));
    match spec.renew_time.or(spec.acquire_time) {
        Some(MicroTime(t)) => now.as_second() > t.as_second() + duration,
        None => true,
    }
}

impl LeaseGuard {
    /// Takes the Lease of `stack` in `namespace`, or names its holder.
    pub async fn acquire(
        client: &kube::Client,
        namespace: &str,
        stack: &str,
        holder: &Holder,
    ) -> Result<Self, LockError> {
        let name = lease_name(stack);
        let api: Api<Lease> = Api::namespaced(client.clone(), namespace);
        let guard = Self {
            api,
            stack: stack.into(),
            namespace: namespace.into(),
            name,
            identity: holder.identity(),
            checkout: holder.checkout.clone(),
        };
        let ns = guard.namespace.clone();
        let name = guard.name.clone();
        let existing = bounded("reading", &ns, &name, guard.api.get_opt(&name)).await?;
        match existing {
            None => {
                let lease = guard.lease(None, 0);
                bounded(
                    "creating",
                    &ns,
                    &name,
                    guard.api.create(&PostParams::default(), &lease),
                )
                .await?;
            }
            Some(l) => {
                if !may_take(
                    &l,
                    &guard.identity,
                    &guard.checkout,
                    k8s_openapi::jiff::Timestamp::now(),
                ) {
                    let spec = l.spec.clone().unwrap_or_default();
                    let checkout = l
                        .metadata
                        .annotations
                        .as_ref()
                        .and_then(|a| a.get(ANNOTATION_CHECKOUT))
                        .cloned()
                        .unwrap_or_default();
                    return Err(LockError::LeaseHeld {
                        stack: stack.into(),
                        namespace: ns,
                        name,
                        holder: format!(
                            "{} (checkout {checkout})",
                            spec.holder_identity.unwrap_or_default()
                        ),
                        renewed: spec
                            .renew_time
                            .map(|t| t.0.to_string())
                            .unwrap_or_else(|| "never".into()),
                    });
                }
                let transitions = l
                    .spec
                    .as_ref()
                    .and_then(|s| s.lease_transitions)
                    .unwrap_or(0)
                    + 1;
                let lease = guard.lease(l.metadata.resource_version.clone(), transitions);
                bounded(
                    "taking",
                    &ns,
                    &name,
                    guard.api.replace(&name, &PostParams::default(), &lease),
                )
                .await?;
            }
        }
        Ok(guard)
    }

    fn lease(&self, resource_version: Option<String>, transitions: i32) -> Lease {
        Lease {
            metadata: ObjectMeta {
                name: Some(self.name.clone()),
                namespace: Some(self.namespace.clone()),
                resource_version,
                labels: Some(
                    [
                        (LABEL_MANAGED_BY.to_string(), MANAGED_BY.to_string()),
                        (LABEL_STACK.to_string(), self.stack.clone()),
                    ]
                    .into(),
                ),
                annotations: Some(
                    [(ANNOTATION_CHECKOUT.to_string(), self.checkout.clone())].into(),
                ),
                ..Default::default()
            },
            spec: Some(LeaseSpec {
                holder_identity: Some(self.identity.clone()),
                lease_duration_seconds: Some(LEASE_SECONDS),
                acquire_time: Some(now()),
                renew_time: Some(now()),
                lease_transitions: Some(transitions),
                ..Default::default()
            }),
        }
    }

    /// Renews the Lease; fails when someone else took it.
    pub async fn renew(&self) -> Result<(), LockError> {
        let (ns, name) = (&self.namespace, &self.name);
        let mut l = bounded("reading", ns, name, self.api.get(name)).await?;
        let spec = l.spec.get_or_insert_with(Default::default);
        let holder = spec.holder_identity.clone().unwrap_or_default();
        if holder != self.identity {
            return Err(LockError::LeaseLost {
                namespace: ns.clone(),
                name: name.clone(),
                holder,
            });
        }
        spec.renew_time = Some(now());
        bounded(
            "renewing",
            ns,
            name,
            self.api.replace(name, &PostParams::default(), &l),
        )
        .await?;
        Ok(())
    }

    /// Frees the Lease (best effort), so the next daemon need not wait for it to expire.
    pub async fn release(&self) {
        let (ns, name) = (&self.namespace, &self.name);
        let Ok(mut l) = bounded("reading", ns, name, self.api.get(name)).await else {
            return;
        };
        let spec = l.spec.get_or_insert_with(Default::default);
        if spec.holder_identity.as_deref() != Some(self.identity.as_str()) {
            return;
        }
        spec.holder_identity = None;
        spec.renew_time = None;
        let _ = bounded(
            "releasing",
            ns,
            name,
            self.api.replace(name, &PostParams::default(), &l),
        )
        .await;
    }

    /// The stack.
    pub fn stack(&self) -> &str {
        &self.stack
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::jiff::{SignedDuration, Timestamp};

    fn lease(holder: Option<&str>, renewed: Timestamp, checkout: &str) -> Lease {
        Lease {
            metadata: ObjectMeta {
                annotations: Some([(ANNOTATION_CHECKOUT.to_string(), checkout.to_string())].into()),
                ..Default::default()
            },
            spec: Some(LeaseSpec {
                holder_identity: holder.map(str::to_string),
                lease_duration_seconds: Some(30),
                renew_time: Some(MicroTime(renewed)),
                ..Default::default()
            }),
        }
    }

    #[test]
    fn a_live_lease_of_another_daemon_is_not_taken() {
        let now = Timestamp::now();
        let l = lease(Some("laptop/100"), now, "/src/a");
        assert!(!may_take(&l, "desktop/200", "/src/a", now));
        assert!(!may_take(&l, "laptop/200", "/src/b", now));
    }

    #[test]
    fn an_expired_free_or_own_checkout_lease_is_taken() {
        let now = Timestamp::now();
        let old = now - SignedDuration::from_secs(31);
        assert!(may_take(
            &lease(Some("laptop/100"), old, "/src/a"),
            "desktop/200",
            "/src/b",
            now
        ));
        assert!(may_take(
            &lease(None, now, "/src/a"),
            "desktop/200",
            "/src/b",
            now
        ));
        // The same checkout on the same host: the earlier daemon died (this one holds its file lock).
        assert!(may_take(
            &lease(Some("laptop/100"), now, "/src/a"),
            "laptop/200",
            "/src/a",
            now
        ));
    }

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
