//! THE reconcile of one commit: a fixed skeleton of named steps — load, build, render, read,
//! plan, hooks, apply in waves, health, prune, inventory, status — with one outcome per stack.
//!
//! It never branches on why it was triggered, and it writes nothing when nothing changed: the
//! fast path compares each rendered object's hash and the live generation with what the
//! inventory recorded after the last apply. Every outcome is recorded in the stack's status
//! through [`record`], the one writer: healthy or not, and a commit that could not be read,
//! validated, built or rendered.
//!
//! Where things are: [`load`] reads a commit (every entry point), [`lookup`]
//! names the stacks `down`, `explain` and `status` look for in the cluster, [`prepare`] builds and renders,
//! [`run`] performs one stack's steps, [`waves`] decides the apply order and who is held back,
//! [`step`] names the steps and why one failed, [`diff`] is `converge diff`, [`report`] is what
//! a run hands back.

mod diff;
pub mod load;
pub mod lookup;
mod plan;
mod prepare;
mod record;
mod report;
mod run;
pub mod step;
pub mod waves;

use std::collections::BTreeMap;
use std::path::Path;
use std::time::{Duration, Instant};

use tracing::{info_span, Instrument};

use crate::build::BuildOptions;
use crate::cluster::Cluster;
use crate::desired::schema::BuilderKind;
use crate::desired::{self, Stack};
use crate::error::Error;
use crate::render::Helm;

pub use crate::desired::StackRef;
pub use diff::{diff_commit, ObjectDiff};
pub use load::{dir_matches, load, stack_matches, Commit, Images, Selection};
pub use plan::{object_hash, Item};
pub use prepare::{build_images, prepare, prepare_commit, Prepared, PreparedCommit, StackBuild};
pub use record::{describe, targets_of, StalledTip};
pub use report::{HookAction, HookReport, StackReport};
pub use step::{Failure, Step};

/// How a reconcile behaves.
#[derive(Debug, Clone)]
pub struct Options {
    /// The kubeconfig file; `$KUBECONFIG` or `~/.kube/config` when absent.
    pub kubeconfig: Option<std::path::PathBuf>,
    /// The kube context; the stack's `context` when absent.
    pub context: Option<String>,
    /// Only this stack (by name or directory, see [`stack_matches`]).
    pub stack: Option<String>,
    /// Only the stack in this namespace.
    pub namespace: Option<String>,
    /// The desired-state directory.
    pub dir: String,
    /// Take ownership of fields another manager owns.
    pub force_conflicts: bool,
    /// Delete and re-create objects whose immutable fields changed, when that loses no data.
    pub recreate: bool,
    /// Allow pruning more than half of the inventory.
    pub allow_mass_prune: bool,
    /// Dry-run every object instead of trusting the inventory's record (a full resync).
    pub full: bool,
    /// How long one reconcile may wait for health.
    pub timeout: Duration,
    /// How long a Pod may sit in a failing state before its rollout counts as failed.
    pub fail_fast: Duration,
    /// The builder, instead of the stack's (`--builder`).
    pub builder: Option<BuilderKind>,
    /// How images are built (the builder is resolved per stack).
    pub build: BuildOptions,
    /// Set to `true` to cancel builds in flight (the daemon's shutdown).
    pub cancel: Option<tokio::sync::watch::Receiver<bool>>,
    /// Set to `true` to stop at the next health wait, where nothing is lost (a new commit,
    /// a drift or shutdown is waiting). Builds, applies and hooks always run to their end.
    pub preempt: Option<tokio::sync::watch::Receiver<bool>>,
    /// Refuse when a running daemon holds a stack's Lease (`converge apply` without `--force`).
    pub defer_to_daemon: bool,
    /// Where converge notes the objects it deletes itself, so the daemon's drift watch does
    /// not take them for drift.
    pub own_deletions: Option<OwnDeletions>,
    /// A newer commit that cannot be deployed, while this reconcile keeps the last applied one
    /// (the daemon's drift correction): the status record it writes says why the tip is not
    /// running, in the same write, so no reader ever sees the stall forgotten.
    pub stalled_tip: Option<StalledTip>,
    /// The last automatic revert the daemon made: a reconcile of its revert commit records it
    /// in the status (and keeps it while that commit stays applied).
    pub auto_revert: Option<crate::status::AutoRevert>,
}

/// Objects converge is deleting itself (prune, re-create, hook clean-up), keyed
/// `stack/Kind/name`, shared between a reconcile and the daemon's drift watch. An entry is
/// noted before the DELETE is sent (the watch event may arrive before its answer), gets the
/// deleted object's uid from that answer, and is taken by the event of that uid; one that no
/// event took (the object was already gone, the watch missed it) is forgotten, or expires.
/// Until then a hand deletion of a *re-created* object of the same name is still drift: its
/// uid is not the one converge deleted. The bound is long enough for a deletion held by
/// finalizers (a volume claim while its Pod stops).
#[derive(Debug, Clone, Default)]
pub struct OwnDeletions(std::sync::Arc<std::sync::Mutex<BTreeMap<String, OwnDeletion>>>);

/// One deletion converge made: when, and (once the server answered) the uid it removed.
#[derive(Debug, Clone)]
struct OwnDeletion {
    at: std::time::Instant,
    uid: Option<String>,
}

impl OwnDeletions {
    /// How long a noted deletion waits for its watch event.
    pub const TTL: Duration = Duration::from_secs(300);

    fn map(&self) -> std::sync::MutexGuard<'_, BTreeMap<String, OwnDeletion>> {
        self.0.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Notes that converge deletes `Kind/name` of `stack`.
    pub fn note(&self, stack: &str, object: &str) {
        self.note_at(stack, object, std::time::Instant::now());
    }

    fn note_at(&self, stack: &str, object: &str, at: std::time::Instant) {
        let mut m = self.map();
        m.retain(|_, d| at.saturating_duration_since(d.at) < Self::TTL);
        m.insert(format!("{stack}/{object}"), OwnDeletion { at, uid: None });
    }

    /// Records the uid the server says it deleted (unless the event took the note already).
    pub fn confirm(&self, stack: &str, object: &str, uid: &str) {
        if let Some(d) = self.map().get_mut(&format!("{stack}/{object}")) {
            d.uid = Some(uid.to_string());
        }
    }

    /// Forgets a noted deletion that did not happen (the object was already gone).
    pub fn forget(&self, stack: &str, object: &str) {
        self.map().remove(&format!("{stack}/{object}"));
    }

    /// Whether the deletion of `Kind/name` (of `uid`, when the event carries one) of `stack`
    /// is one converge made within [`Self::TTL`]; taking it forgets the note.
    pub fn take(&self, stack: &str, object: &str, uid: Option<&str>) -> bool {
        self.take_at(stack, object, uid, std::time::Instant::now())
    }

    fn take_at(
        &self,
        stack: &str,
        object: &str,
        uid: Option<&str>,
        now: std::time::Instant,
    ) -> bool {
        let key = format!("{stack}/{object}");
        let mut m = self.map();
        let Some(d) = m.get(&key) else {
            return false;
        };
        if now.saturating_duration_since(d.at) >= Self::TTL {
            m.remove(&key);
            return false;
        }
        // Another object of that name (re-created since): someone else deleted it, and the
        // event of converge's own deletion may still come.
        if let (Some(ours), Some(theirs)) = (d.uid.as_deref(), uid) {
            if ours != theirs {
                return false;
            }
        }
        m.remove(&key);
        true
    }
}

impl Default for Options {
    fn default() -> Self {
        Self {
            kubeconfig: None,
            context: None,
            stack: None,
            namespace: None,
            dir: desired::DEFAULT_DIR.into(),
            force_conflicts: false,
            recreate: false,
            allow_mass_prune: false,
            full: false,
            timeout: Duration::from_secs(300),
            fail_fast: Duration::from_secs(30),
            builder: None,
            build: BuildOptions::default(),
            cancel: None,
            preempt: None,
            defer_to_daemon: false,
            own_deletions: None,
            stalled_tip: None,
            auto_revert: None,
        }
    }
}

/// The kube context a stack is reconciled on: `--context`, else the stack's.
pub fn context_of<'a>(opts: &'a Options, stack: &'a Stack) -> &'a str {
    opts.context.as_deref().unwrap_or(&stack.spec.context)
}

/// Connections by kube context, kept across reconciles (the daemon holds one for its lifetime).
#[derive(Default, Clone)]
pub struct Clusters(BTreeMap<String, Cluster>);

impl Clusters {
    /// The connection for `context`, connecting (and checking the API server answers) on first use.
    pub async fn get(
        &mut self,
        kubeconfig: Option<&Path>,
        context: &str,
    ) -> Result<Cluster, Error> {
        if let Some(c) = self.0.get(context) {
            return Ok(c.clone());
        }
        let c = Cluster::connect(kubeconfig, Some(context)).await?;
        c.ping().await?;
        self.0.insert(context.to_string(), c.clone());
        Ok(c)
    }
}

/// [`prepare_commit`], recording a commit that cannot be deployed as it is (invalid, a build
/// input missing, a chart that does not render) in each stack's status: those of `known` (the
/// daemon's stacks), else those of the newest valid commit from `rev` back. A refused apply
/// (a daemon holds the stack), an unknown `--stack` or an unreachable cluster record nothing.
pub async fn prepare_or_record(
    repo_path: &Path,
    rev: &str,
    opts: &Options,
    clusters: &mut Clusters,
    known: &[StackRef],
) -> Result<PreparedCommit, Error> {
    let error = match prepare_commit(repo_path, rev, opts, clusters).await {
        Ok(p) => return Ok(p),
        Err(e) => e,
    };
    let worth_it = record::recorded(&error)
        || (!known.is_empty() && matches!(error, Error::UnknownStack { .. }));
    if !worth_it {
        return Err(error);
    }
    let commit = match &error {
        Error::Invalid { commit, .. } | Error::UnknownStack { commit, .. } => commit.clone(),
        _ => crate::source::Repo::open(repo_path)
            .and_then(|r| r.snapshot(rev).map(|s| s.commit().to_string()))
            .unwrap_or_else(|_| rev.to_string()),
    };
    let mut targets = known.to_vec();
    if targets.is_empty() {
        targets = record::last_known_targets(
            repo_path,
            rev,
            &prepare::selection(opts),
            opts.context.as_deref(),
        );
        if opts.defer_to_daemon {
            // A daemon's stack is the daemon's to record.
            let mut free = Vec::new();
            for t in targets {
                let c = clusters.get(opts.kubeconfig.as_deref(), &t.context).await;
                let held = match c {
                    Ok(c) => crate::cluster::lease::holder_of(c.client(), &t.namespace, &t.stack)
                        .await
                        .map_or(true, |h| h.is_some()),
                    Err(_) => true,
                };
                if !held {
                    free.push(t);
                }
            }
            targets = free;
        }
    }
    let (why, message) = describe(&error);
    record::record_stalled(
        clusters,
        opts.kubeconfig.as_deref(),
        &targets,
        &commit,
        why,
        &message,
    )
    .await;
    Err(error)
}

/// Reconciles every stack of a prepared commit against its cluster.
pub async fn reconcile_prepared(
    prepared: &PreparedCommit,
    opts: &Options,
    helm: &Helm,
    clusters: &mut Clusters,
) -> Result<Vec<StackReport>, Error> {
    let mut reports = Vec::new();
    for p in &prepared.stacks {
        let cluster = clusters
            .get(opts.kubeconfig.as_deref(), context_of(opts, &p.stack))
            .await?;
        let report = reconcile_stack(&cluster, p, &prepared.commit, helm, opts).await;
        if report.ready {
            prepare::collect_old_images(p, opts).await;
        }
        reports.push(report);
    }
    Ok(reports)
}

/// Reads, validates, builds, renders and reconciles every selected stack of `rev`: the whole
/// pipeline, as `converge apply` runs it.
pub async fn reconcile_commit(
    repo_path: &Path,
    rev: &str,
    opts: &Options,
    helm: &Helm,
    clusters: &mut Clusters,
) -> Result<Vec<StackReport>, Error> {
    let prepared = prepare_or_record(repo_path, rev, opts, clusters, &[]).await?;
    reconcile_prepared(&prepared, opts, helm, clusters).await
}

/// Reconciles one prepared stack against `cluster`.
pub async fn reconcile_stack(
    cluster: &Cluster,
    prepared: &Prepared,
    commit: &str,
    helm: &Helm,
    opts: &Options,
) -> StackReport {
    let stack = &prepared.stack;
    let span =
        info_span!("reconcile", commit = %desired::short_id(commit), stack = %stack.spec.name);
    async {
        let started = Instant::now();
        let before = cluster.requests();
        let mut run = run::Run::new(cluster, prepared, commit, opts);
        let version = cluster.ping().await.ok();
        let result = match prepared.render.template(helm, version.as_deref()).await {
            Ok(rendered) => run.execute(rendered).await,
            Err(e) => Err(Failure::Render(e)),
        };
        let mut report = run.finish(result, &prepared.images, started, before).await;
        report.builds = prepared.builds.clone();
        report
    }
    .instrument(span)
    .await
}

#[cfg(test)]
mod tests {
    use super::OwnDeletions;
    use std::time::Instant;

    #[test]
    fn an_own_deletion_is_taken_once_and_a_stale_one_expires() {
        let d = OwnDeletions::default();
        let t0 = Instant::now();
        d.note_at("todo", "ServiceAccount/migrations", t0);
        assert!(d.take_at("todo", "ServiceAccount/migrations", Some("u1"), t0));
        assert!(
            !d.take_at("todo", "ServiceAccount/migrations", Some("u1"), t0),
            "a second deletion of the same object is someone else's"
        );
        // Noted, but no event took it (a watch gap): a hand deletion after the bound is drift.
        d.note_at("todo", "Service/web", t0);
        assert!(!d.take_at("todo", "Service/web", None, t0 + OwnDeletions::TTL));
        d.note_at("todo", "Service/web", t0);
        d.forget("todo", "Service/web");
        assert!(!d.take_at("todo", "Service/web", None, t0));
    }

    #[test]
    fn a_hand_deletion_of_a_re_created_object_is_not_taken_for_converges_own() {
        let d = OwnDeletions::default();
        let t0 = Instant::now();
        d.note_at("todo", "ServiceAccount/migrations", t0);
        d.confirm("todo", "ServiceAccount/migrations", "old-uid");
        // The watch missed converge's deletion; the object was re-created and is now deleted
        // by hand, within the bound: another uid, so drift.
        assert!(!d.take_at("todo", "ServiceAccount/migrations", Some("new-uid"), t0));
        // converge's own event, when it comes, is still recognised.
        assert!(d.take_at("todo", "ServiceAccount/migrations", Some("old-uid"), t0));
    }

    #[test]
    fn an_event_that_beats_the_servers_answer_is_taken_by_name() {
        let d = OwnDeletions::default();
        let t0 = Instant::now();
        d.note_at("todo", "Job/migrate", t0);
        assert!(d.take_at("todo", "Job/migrate", Some("u9"), t0));
        // The answer arrives after: nothing is left to confirm, nothing is noted again.
        d.confirm("todo", "Job/migrate", "u9");
        assert!(!d.take_at("todo", "Job/migrate", Some("u9"), t0));
    }
}
