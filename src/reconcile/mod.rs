//! THE reconcile of one commit: a fixed skeleton of named steps — read, render, plan, hooks,
//! apply in order, health, prune, inventory, status — with one outcome per stack.
//!
//! It never branches on why it was triggered, and it writes nothing when nothing changed: the
//! fast path compares each rendered object's hash and the live generation with what the
//! inventory recorded after the last apply.

mod plan;

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::path::Path;
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use futures::StreamExt;
use kube::api::DynamicObject;
use kube::core::GroupVersionKind;
use serde::Serialize;
use serde_json::{json, Value};
use tracing::{debug, info, info_span, warn, Instrument};

use crate::build::{self, BuildOptions, BuildOutcome, DigestCache, ImagePlan};
use crate::cluster::health::{self, Health};
use crate::cluster::inventory::{self, Inventory, PrunePolicy, Record};
use crate::cluster::{order, ApplyOptions, Cluster, ClusterError, ObjectKey, RequestCounts};
use crate::desired::schema::BuilderKind;
use crate::desired::{self, Stack};
use crate::error::Error;
use crate::render::{self, Helm, Hook, Rendered};
use crate::source::Repo;
use crate::status::{self, ComponentStatus, HistoryEntry, StackStatus};
use crate::vocabulary::{
    reason, LABEL_COMPONENT, LABEL_MANAGED_BY, LABEL_STACK, LAST_APPLIED, MANAGED_BY,
};

pub use plan::{object_hash, Item};

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
    /// Image overrides per stack and component (the build step's content tags otherwise).
    pub images: BTreeMap<String, BTreeMap<String, String>>,
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
}

/// Objects converge is deleting itself (prune, re-create, hook clean-up), keyed
/// `stack/Kind/name`, shared between a reconcile and the daemon's drift watch.
#[derive(Debug, Clone, Default)]
pub struct OwnDeletions(std::sync::Arc<std::sync::Mutex<BTreeSet<String>>>);

impl OwnDeletions {
    /// Notes that converge deletes `Kind/name` of `stack`.
    pub fn note(&self, stack: &str, object: &str) {
        self.0
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(format!("{stack}/{object}"));
    }

    /// Whether converge deleted `Kind/name` of `stack` itself (forgetting it).
    pub fn take(&self, stack: &str, object: &str) -> bool {
        self.0
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&format!("{stack}/{object}"))
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
            images: BTreeMap::new(),
            builder: None,
            build: BuildOptions::default(),
            cancel: None,
            preempt: None,
            defer_to_daemon: false,
            own_deletions: None,
        }
    }
}

/// What one reconcile of one stack did.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct StackReport {
    /// The stack.
    pub stack: String,
    /// Its namespace.
    pub namespace: String,
    /// Its directory in the repository (`desired/dev`).
    pub dir: String,
    /// The commit reconciled.
    pub commit: String,
    /// Whether everything applied and became healthy.
    pub ready: bool,
    /// The reason constant.
    pub reason: String,
    /// Every problem, one line each.
    pub errors: Vec<String>,
    /// What went wrong but was handled (an unreadable status record kept aside), one line each.
    pub warnings: Vec<String>,
    /// Objects applied (created or changed).
    pub applied: Vec<String>,
    /// Objects left alone because nothing changed.
    pub unchanged: usize,
    /// Objects pruned.
    pub pruned: Vec<String>,
    /// Objects no longer rendered but kept, with why.
    pub kept: Vec<String>,
    /// Components blocked, with why.
    pub blocked: BTreeMap<String, String>,
    /// API requests made.
    pub requests: RequestCounts,
    /// Wall time in milliseconds.
    pub duration_ms: u64,
    /// The status recorded.
    pub status: StackStatus,
    /// What the build step did, per built component.
    pub builds: Vec<BuildOutcome>,
    /// The health wait was cut short because newer work was waiting: applied, not failed.
    pub preempted: bool,
    /// Every failure needs a new commit or a person (a field-manager conflict, an immutable
    /// field, an object the API server refuses): retrying the same commit fails the same way.
    pub needs_new_commit: bool,
}

/// A stack read from a commit and rendered, ready for the cluster.
pub struct Prepared {
    /// The validated stack.
    pub stack: Stack,
    /// Its chart, exported.
    pub render: render::Prepared,
    /// Images by component.
    pub images: BTreeMap<String, String>,
    /// What the build step did, per built component.
    pub builds: Vec<BuildOutcome>,
    /// Components whose image could not be built: not applied, so their last healthy
    /// ReplicaSet keeps serving.
    pub build_failures: BTreeMap<String, String>,
}

/// One selected stack of a commit with its content tags (nothing built yet).
struct Planned {
    stack: Stack,
    plans: Vec<ImagePlan>,
}

/// The process-wide build-input cache: keyed by git blob id, so it never goes stale.
fn digests() -> &'static DigestCache {
    static CACHE: OnceLock<DigestCache> = OnceLock::new();
    CACHE.get_or_init(DigestCache::new)
}

/// Reads and validates `rev` and hashes the build inputs of every selected stack (sync: git).
fn read(repo_path: &Path, rev: &str, opts: &Options) -> Result<(String, Vec<Planned>), Error> {
    let repo = Repo::open(repo_path)?;
    let snapshot = repo.snapshot(rev)?;
    let commit = snapshot.commit().to_string();
    let loaded = desired::load(&snapshot, &opts.dir).map_err(|report| Error::Invalid {
        commit: commit.clone(),
        report: Box::new(report),
    })?;
    let mut out = Vec::new();
    for stack in loaded.state.stacks {
        if opts
            .stack
            .as_ref()
            .is_some_and(|s| !stack_matches(&stack, s))
            || opts
                .namespace
                .as_ref()
                .is_some_and(|n| n != &stack.spec.namespace)
        {
            continue;
        }
        let plans = build::plan(&snapshot, &stack, digests())?;
        out.push(Planned { stack, plans });
    }
    if out.is_empty() && (opts.stack.is_some() || opts.namespace.is_some()) {
        let name = match (&opts.stack, &opts.namespace) {
            (Some(s), Some(n)) => format!("{s}` in namespace `{n}"),
            (Some(s), None) => s.clone(),
            (None, Some(n)) => format!("(any)` in namespace `{n}"),
            (None, None) => String::new(),
        };
        return Err(Error::UnknownStack { name, commit });
    }
    Ok((commit, out))
}

/// Exports each stack's chart at `commit` with its images (sync: git).
fn render_all(
    repo_path: &Path,
    commit: &str,
    stacks: Vec<(Planned, Vec<BuildOutcome>, BTreeMap<String, String>)>,
    opts: &Options,
) -> Result<Vec<Prepared>, Error> {
    let repo = Repo::open(repo_path)?;
    let snapshot = repo.snapshot(commit)?;
    let mut out = Vec::new();
    for (planned, builds, build_failures) in stacks {
        let mut images: BTreeMap<String, String> = planned
            .plans
            .iter()
            .map(|p| (p.component.clone(), p.image.clone()))
            .collect();
        if let Some(over) = opts.images.get(&planned.stack.spec.name) {
            images.extend(over.clone());
        }
        let render = render::prepare(&snapshot, &planned.stack, &images)?;
        out.push(Prepared {
            stack: planned.stack,
            render,
            images,
            builds,
            build_failures,
        });
    }
    Ok(out)
}

/// Reads, validates and renders every selected stack of `rev` with its content tags, building
/// nothing (what `diff` shows).
pub fn prepare(
    repo_path: &Path,
    rev: &str,
    opts: &Options,
) -> Result<(String, Vec<Prepared>), Error> {
    let (commit, planned) = read(repo_path, rev, opts)?;
    let stacks = planned
        .into_iter()
        .map(|p| (p, Vec::new(), BTreeMap::new()))
        .collect();
    let prepared = render_all(repo_path, &commit, stacks, opts)?;
    Ok((commit, prepared))
}

/// Builds what is missing for one stack; a failed build, or an engine that cannot be reached,
/// holds back only the components it concerns.
async fn build_stack(
    repo_path: &Path,
    commit: &str,
    planned: &Planned,
    opts: &Options,
) -> (Vec<BuildOutcome>, BTreeMap<String, String>) {
    let mut failures = BTreeMap::new();
    if planned.plans.is_empty() {
        return (Vec::new(), failures);
    }
    let bopts = opts.build.for_stack(
        opts.builder,
        &planned.stack,
        context_of(opts, &planned.stack),
    );
    let cancel = opts
        .cancel
        .clone()
        .unwrap_or_else(|| tokio::sync::watch::channel(false).1);
    match build::ensure(
        repo_path,
        commit,
        &planned.plans,
        &planned.stack,
        &bopts,
        cancel,
    )
    .await
    {
        Ok(outcomes) => {
            for o in &outcomes {
                if let build::Action::Failed {
                    reason: why,
                    log_tail,
                } = &o.action
                {
                    warn!(component = %o.component, image = %o.image, "build failed: {why}");
                    failures.insert(
                        o.component.clone(),
                        format!("build of {} failed: {why}\n{log_tail}", o.image),
                    );
                }
            }
            (outcomes, failures)
        }
        Err(e) => {
            warn!(error = %e, "images not built");
            for p in &planned.plans {
                failures.insert(
                    p.component.clone(),
                    format!("image {} not built: {e}", p.image),
                );
            }
            (Vec::new(), failures)
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

/// A commit read, validated, built and rendered: all a reconcile needs from git. The daemon
/// keeps the last one, so correcting a drift does not read, validate and render again.
pub struct PreparedCommit {
    /// The full commit id.
    pub commit: String,
    /// The selected stacks, rendered.
    pub stacks: Vec<Prepared>,
}

impl PreparedCommit {
    /// Whether every image it needs was built (a failed build is worth preparing again).
    pub fn complete(&self) -> bool {
        self.stacks.iter().all(|p| p.build_failures.is_empty())
    }
}

/// Reads and validates `rev`, refuses when a daemon holds a stack (see
/// [`Options::defer_to_daemon`]), builds what is missing and renders every selected stack.
pub async fn prepare_commit(
    repo_path: &Path,
    rev: &str,
    opts: &Options,
    clusters: &mut Clusters,
) -> Result<PreparedCommit, Error> {
    let (commit, planned) = read(repo_path, rev, opts)?;
    if opts.defer_to_daemon {
        for p in &planned {
            let ctx = opts
                .context
                .clone()
                .unwrap_or_else(|| p.stack.spec.context.clone());
            let cluster = clusters.get(opts.kubeconfig.as_deref(), &ctx).await?;
            let (ns, name) = (&p.stack.spec.namespace, &p.stack.spec.name);
            if let Some((holder, checkout)) =
                crate::cluster::lease::holder_of(cluster.client(), ns, name).await?
            {
                return Err(Error::DaemonRunning {
                    stack: name.clone(),
                    namespace: ns.clone(),
                    holder,
                    checkout,
                });
            }
        }
    }
    let mut built = Vec::new();
    for p in planned {
        let (outcomes, failures) = build_stack(repo_path, &commit, &p, opts).await;
        built.push((p, outcomes, failures));
    }
    let stacks = render_all(repo_path, &commit, built, opts)?;
    Ok(PreparedCommit { commit, stacks })
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
        let ctx = opts
            .context
            .clone()
            .unwrap_or_else(|| p.stack.spec.context.clone());
        let cluster = clusters.get(opts.kubeconfig.as_deref(), &ctx).await?;
        let report = reconcile_stack(&cluster, p, &prepared.commit, helm, opts).await;
        if report.ready {
            collect_old_images(p, opts).await;
        }
        reports.push(report);
    }
    Ok(reports)
}

/// Reads, validates, renders and reconciles every selected stack of `rev`: the whole pipeline,
/// as `converge apply` runs it.
pub async fn reconcile_commit(
    repo_path: &Path,
    rev: &str,
    opts: &Options,
    helm: &Helm,
    clusters: &mut Clusters,
) -> Result<Vec<StackReport>, Error> {
    let prepared = prepare_commit(repo_path, rev, opts, clusters).await?;
    reconcile_prepared(&prepared, opts, helm, clusters).await
}

/// Removes old content tags of a stack's repositories after it became healthy, keeping the newest
/// `opts.build.keep` and never the images it now runs (a revert of the next commit needs them).
/// Best effort: a failure is logged, never a failed reconcile.
async fn collect_old_images(p: &Prepared, opts: &Options) {
    let bopts = opts
        .build
        .for_stack(opts.builder, &p.stack, context_of(opts, &p.stack));
    if p.builds.is_empty() || bopts.builder == BuilderKind::None {
        return;
    }
    let repositories: Vec<String> = p
        .stack
        .components
        .iter()
        .filter_map(|c| c.spec.image.build.as_ref().map(|b| b.repository.clone()))
        .collect();
    let protect: Vec<String> = p.images.values().cloned().collect();
    let cancel = opts
        .cancel
        .clone()
        .unwrap_or_else(|| tokio::sync::watch::channel(false).1);
    match build::prune_old(&bopts, &repositories, &protect, cancel).await {
        Ok(r) if !r.removed.is_empty() => {
            info!(removed = r.removed.len(), "old image tags removed")
        }
        Ok(_) => {}
        Err(e) => warn!(error = %e, "old image tags not collected"),
    }
}

/// One object `apply` would change.
#[derive(Debug, Clone, Serialize)]
pub struct ObjectDiff {
    /// The object.
    pub object: String,
    /// `create`, `update` or `delete`.
    pub action: &'static str,
    /// A unified diff, Secret data masked.
    pub diff: String,
}

/// What `apply` would change: a server-side dry-run of every rendered object (stamped exactly as
/// apply stamps it) compared with the live object, plus what prune would delete. Writes nothing.
pub async fn diff_commit(
    repo_path: &Path,
    rev: &str,
    opts: &Options,
    helm: &Helm,
    clusters: &mut Clusters,
) -> Result<Vec<ObjectDiff>, Error> {
    let (commit, prepared) = prepare(repo_path, rev, opts)?;
    let mut out = Vec::new();
    for p in &prepared {
        let ctx = opts
            .context
            .clone()
            .unwrap_or_else(|| p.stack.spec.context.clone());
        let cluster = clusters.get(opts.kubeconfig.as_deref(), &ctx).await?;
        let version = cluster.ping().await?;
        let rendered = p.render.template(helm, Some(&version)).await?;
        let ns = &p.stack.spec.namespace;
        let ns_key = ObjectKey {
            group: String::new(),
            version: "v1".into(),
            kind: "Namespace".into(),
            namespace: String::new(),
            name: ns.clone(),
        };
        let namespace_exists = cluster.get(&ns_key).await?.is_some();
        let inv = if namespace_exists {
            inventory::load(cluster.client(), ns, &p.stack.spec.name).await?
        } else {
            Inventory::default()
        };
        let mut keys = Vec::new();
        for obj in rendered.objects {
            let Some(mut key) = ObjectKey::of(&obj) else {
                continue;
            };
            if !cluster.is_namespaced(&key).await? {
                key.namespace.clear();
            }
            let item = plan::item(obj, key.clone(), inv.get(&key), None, &commit, true);
            keys.push(key.clone());
            let live = if namespace_exists {
                cluster.get(&key).await?
            } else {
                None
            };
            let would = if namespace_exists {
                cluster
                    .apply(
                        &item.object,
                        ApplyOptions {
                            force: true,
                            dry_run: true,
                        },
                    )
                    .await?
            } else {
                // A dry-run cannot create into a namespace that does not exist yet: show the render.
                item.object.clone()
            };
            let live_v = live.as_ref().map(|l| {
                crate::cluster::diff::normalize(&serde_json::to_value(l).unwrap_or_default())
            });
            let would_v =
                crate::cluster::diff::normalize(&serde_json::to_value(&would).unwrap_or_default());
            let title = format!("{}/{}/{}", key.kind, key.namespace, key.name);
            if let Some(d) = crate::cluster::diff::unified(&title, live_v.as_ref(), Some(&would_v))
            {
                out.push(ObjectDiff {
                    object: key.to_string(),
                    action: if live.is_some() { "update" } else { "create" },
                    diff: d,
                });
            }
        }
        let policy = PrunePolicy {
            volumes: p.stack.spec.prune.volumes,
            namespaces: p.stack.spec.prune.namespace,
            allow_mass_prune: opts.allow_mass_prune,
        };
        for key in inventory::plan_prune(&inv, &keys, policy).delete {
            if let Some(live) = cluster.get(&key).await? {
                let v = crate::cluster::diff::normalize(
                    &serde_json::to_value(&live).unwrap_or_default(),
                );
                let title = format!("{}/{}/{}", key.kind, key.namespace, key.name);
                if let Some(d) = crate::cluster::diff::unified(&title, Some(&v), None) {
                    out.push(ObjectDiff {
                        object: key.to_string(),
                        action: "delete",
                        diff: d,
                    });
                }
            }
        }
    }
    Ok(out)
}

/// Whether `--stack` names this stack: its name, its directory, or the directory's last part.
pub fn stack_matches(stack: &Stack, wanted: &str) -> bool {
    stack.spec.name == wanted || dir_matches(&stack.dir, wanted)
}

/// Whether a stack directory (`desired/dev`) is what `wanted` names: the directory itself or
/// its last component (`dev`).
pub fn dir_matches(dir: &str, wanted: &str) -> bool {
    let wanted = wanted.trim_end_matches('/');
    !dir.is_empty() && (dir == wanted || dir.rsplit('/').next() == Some(wanted))
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
        let mut run = Run::new(cluster, stack, commit, opts);
        run.blocked.extend(prepared.build_failures.clone());
        let version = cluster.ping().await.ok();
        let result = match prepared.render.template(helm, version.as_deref()).await {
            Ok(rendered) => run.execute(rendered, &prepared.images).await,
            Err(e) => Err((reason::RENDER_FAILED, e.to_string())),
        };
        let mut report = run.finish(result, &prepared.images, started, before).await;
        report.builds = prepared.builds.clone();
        report
    }
    .instrument(span)
    .await
}

/// The target of progress events (rendered as live lines on a terminal by the CLI).
const PROGRESS: &str = "converge::progress";

/// Whether `message` names the object `short` (`Deployment/web`), not a longer name that starts
/// with it (`Deployment/web-worker`).
fn names_object(message: &str, short: &str) -> bool {
    message.match_indices(short).any(|(i, _)| {
        message[i + short.len()..]
            .chars()
            .next()
            .is_none_or(|c| !(c.is_ascii_alphanumeric() || c == '-' || c == '.'))
    })
}

/// `a`, `b` and `c` with backquotes, for messages.
fn quoted(keys: &[&str]) -> String {
    let q: Vec<String> = keys.iter().map(|k| format!("`{k}`")).collect();
    match q.len() {
        0 | 1 => q.concat(),
        n => format!("{} and {}", q[..n - 1].join(", "), q[n - 1]),
    }
}

/// Ready and desired replicas of a Deployment or StatefulSet, from its live JSON.
pub fn ready_counts(live: &Value) -> Option<(i64, i64)> {
    let desired = live.pointer("/spec/replicas").and_then(Value::as_i64)?;
    let ready = live
        .pointer("/status/readyReplicas")
        .and_then(Value::as_i64)
        .unwrap_or(0);
    Some((ready, desired))
}

/// The state of one reconcile while it runs.
struct Run<'a> {
    cluster: &'a Cluster,
    stack: &'a Stack,
    commit: &'a str,
    opts: &'a Options,
    inventory: Inventory,
    loaded_inventory: Inventory,
    old_status: Option<StackStatus>,
    live: HashMap<String, DynamicObject>,
    applied: Vec<String>,
    unchanged: usize,
    pruned: Vec<String>,
    kept: Vec<String>,
    blocked: BTreeMap<String, String>,
    failed: BTreeMap<String, String>,
    errors: Vec<String>,
    warnings: Vec<String>,
    health: BTreeMap<String, (ObjectKey, Value)>,
    namespace_ready: bool,
    /// The old status was read (or kept aside): only then may a new one be written over it.
    status_read: bool,
    /// A `health.wait` progress event was sent and its `health.done` is still due.
    health_reported: bool,
    /// Components whose apply failed in a way only a new commit or a person fixes.
    stall_class: BTreeSet<String>,
    /// A health wait was cut short (see [`Options::preempt`]).
    preempted: bool,
}

type StepResult = Result<(), (&'static str, String)>;

/// How often a health wait looks for Pods stuck in a failing state (changes to the awaited
/// objects themselves wake it at once).
const HEALTH_POLL: Duration = Duration::from_secs(2);
/// How long a health wait lets a burst of watch events settle before looking again.
const HEALTH_SETTLE: Duration = Duration::from_millis(20);

/// Why a health wait ended without everything healthy.
enum Wait {
    /// Not healthy: why.
    Failed(String),
    /// Newer work is waiting (see [`Options::preempt`]).
    Preempted,
}

/// `(group, kind, name)` of rendered objects: what is still wanted.
type Wanted = BTreeSet<(String, String, String)>;

/// One kind's LIST.
type Listed = (GroupVersionKind, Result<Vec<DynamicObject>, ClusterError>);

/// The `(group, kind, name)` of every rendered object and hook, and their kinds by
/// `group/Kind`.
fn rendered_kinds(rendered: &Rendered) -> (Wanted, BTreeMap<String, GroupVersionKind>) {
    let mut wanted = BTreeSet::new();
    let mut gvks = BTreeMap::new();
    for o in rendered
        .objects
        .iter()
        .chain(rendered.hooks.iter().map(|h| &h.object))
    {
        if let Some(k) = ObjectKey::of(o) {
            gvks.insert(format!("{}/{}", k.group, k.kind), k.gvk());
            wanted.insert((k.group, k.kind, k.name));
        }
    }
    (wanted, gvks)
}

/// The component label of a rendered object (`""` for stack-wide objects).
fn component_of(obj: &DynamicObject) -> String {
    obj.metadata
        .labels
        .as_ref()
        .and_then(|l| l.get(LABEL_COMPONENT))
        .cloned()
        .unwrap_or_default()
}

/// Whether an apply failure fails again on every retry of the same commit.
fn needs_new_commit(e: &ClusterError) -> bool {
    matches!(
        e,
        ClusterError::Conflict { .. }
            | ClusterError::Immutable { .. }
            | ClusterError::Invalid { .. }
    )
}

impl<'a> Run<'a> {
    fn new(cluster: &'a Cluster, stack: &'a Stack, commit: &'a str, opts: &'a Options) -> Self {
        Self {
            cluster,
            stack,
            commit,
            opts,
            inventory: Inventory::default(),
            loaded_inventory: Inventory::default(),
            old_status: None,
            live: HashMap::new(),
            applied: Vec::new(),
            unchanged: 0,
            pruned: Vec::new(),
            kept: Vec::new(),
            blocked: BTreeMap::new(),
            failed: BTreeMap::new(),
            errors: Vec::new(),
            warnings: Vec::new(),
            status_read: false,
            health: BTreeMap::new(),
            namespace_ready: false,
            health_reported: false,
            stall_class: BTreeSet::new(),
            preempted: false,
        }
    }

    /// Whether newer work asked this run to stop at its next health wait.
    fn preempt_requested(&self) -> bool {
        self.opts.preempt.as_ref().is_some_and(|p| *p.borrow())
    }

    /// Notes an object converge deletes itself, for the daemon's drift watch.
    fn note_deletion(&self, key: &ObjectKey) {
        if let Some(d) = &self.opts.own_deletions {
            d.note(&self.stack.spec.name, &key.short());
        }
    }

    fn ns(&self) -> &str {
        &self.stack.spec.namespace
    }

    fn selector(&self) -> String {
        format!("{LABEL_STACK}={}", self.stack.spec.name)
    }

    async fn execute(
        &mut self,
        rendered: Rendered,
        _images: &BTreeMap<String, String>,
    ) -> StepResult {
        let cluster_err = |e: ClusterError| (reason::CLUSTER_UNREACHABLE, e.to_string());
        // Every read at once: on a no-op or a drift correction these reads are most of the
        // time. A namespace created meanwhile held nothing, which is what the reads see.
        let (wanted, rendered_kinds) = rendered_kinds(&rendered);
        let (namespace, inv, old_status, secrets, lists) = tokio::join!(
            self.ensure_namespace(),
            inventory::load(self.cluster.client(), self.ns(), &self.stack.spec.name),
            status::load_for_update(self.cluster.client(), self.ns(), &self.stack.spec.name),
            self.read_secrets(),
            self.fetch_lists(rendered_kinds.values().cloned().collect()),
        );
        namespace.map_err(cluster_err)?;
        self.namespace_ready = true;
        self.loaded_inventory = inv.map_err(|e| (reason::APPLY_FAILED, e.to_string()))?;
        self.inventory = self.loaded_inventory.clone();
        let (old_status, kept_aside) = old_status.map_err(cluster_err)?;
        self.old_status = old_status;
        self.status_read = true;
        self.warnings.extend(kept_aside);
        let install = self.loaded_inventory.is_empty();
        self.block_on_secrets(&secrets.map_err(cluster_err)?);
        // Kinds only the inventory holds (no longer rendered): listed now that it is read.
        let mut extra: BTreeMap<String, GroupVersionKind> = BTreeMap::new();
        for k in self.inventory.keys() {
            let id = format!("{}/{}", k.group, k.kind);
            if !rendered_kinds.contains_key(&id) {
                extra.entry(id).or_insert_with(|| k.gvk());
            }
        }
        let mut lists = lists;
        if !extra.is_empty() {
            lists.extend(self.fetch_lists(extra.into_values().collect()).await);
        }
        self.take_lists(lists, &wanted);

        let mut items = Vec::new();
        for obj in rendered.objects {
            let component = component_of(&obj);
            let name = obj.metadata.name.clone().unwrap_or_default();
            match self.plan_item(obj).await {
                Ok(item) => items.push(item),
                // One object the cluster cannot take (its kind is not served, say) fails its
                // component, never the whole stack.
                Err(e) => {
                    warn!(object = %name, error = %e, "cannot apply");
                    let c = if component.is_empty() {
                        name
                    } else {
                        component
                    };
                    self.failed.entry(c).or_insert(format!("apply failed: {e}"));
                }
            }
        }
        let changed = items.iter().any(|i| !i.unchanged);
        debug!(
            objects = items.len(),
            changed = items.iter().filter(|i| !i.unchanged).count(),
            "planned"
        );

        self.write_ahead(&items)
            .await
            .map_err(|e| (reason::APPLY_FAILED, e.to_string()))?;

        if changed {
            let pre: Vec<&Hook> = rendered
                .hooks
                .iter()
                .filter(|h| h.runs_before(install))
                .collect();
            self.run_hooks(&pre).await?;
        }
        // A post hook runs only in the reconcile that changed something: a health wait before
        // one is not a boundary where nothing is lost, so it is never preempted.
        let post_hooks = changed && rendered.hooks.iter().any(|h| h.runs_after(install));
        // Everything but workloads, in kind order; then workloads, component by component,
        // each after what it depends on is healthy.
        let (mut workloads, mut others): (Vec<Item>, Vec<Item>) = items
            .into_iter()
            .partition(|i| order::is_workload(&i.key.kind));
        others.sort_by_key(|i| (order::rank(&i.key.kind), i.key.name.clone()));
        workloads.sort_by_key(|i| (order::rank(&i.key.kind), i.key.name.clone()));
        let mut rendered_keys: Vec<ObjectKey> = others
            .iter()
            .chain(workloads.iter())
            .map(|i| i.key.clone())
            .collect();
        for item in &others {
            self.apply_item(item).await;
        }
        let mut order_names: Vec<String> = self
            .stack
            .components
            .iter()
            .map(|c| c.spec.name.clone())
            .collect();
        // Workloads of components the desired state does not name (chart extras) go last.
        for w in &workloads {
            if !order_names.contains(&w.component) {
                order_names.push(w.component.clone());
            }
        }
        'components: for name in &order_names {
            if self.blocked.contains_key(name) || self.failed.contains_key(name) {
                continue;
            }
            if let Some(c) = self.stack.component(name) {
                let mut waiting = None;
                for dep in &c.spec.depends_on {
                    if let Some(why) = self.blocked.get(dep).or_else(|| self.failed.get(dep)) {
                        waiting = Some(format!("waits for `{dep}`, which is not healthy: {why}"));
                        break;
                    }
                    let dep_keys: Vec<ObjectKey> = workloads
                        .iter()
                        .filter(|w| &w.component == dep)
                        .map(|w| w.key.clone())
                        .collect();
                    match self.wait_healthy(&dep_keys, !post_hooks).await {
                        Ok(()) => {}
                        Err(Wait::Preempted) => break 'components,
                        Err(Wait::Failed(why)) => {
                            self.failed.insert(dep.clone(), why.clone());
                            waiting =
                                Some(format!("waits for `{dep}`, which is not healthy: {why}"));
                            break;
                        }
                    }
                }
                if let Some(w) = waiting {
                    warn!(component = %name, reason = %w, "component not applied");
                    self.blocked.insert(name.clone(), w);
                    continue;
                }
            }
            for item in workloads.iter().filter(|w| &w.component == name) {
                self.apply_item(item).await;
            }
        }
        let all: Vec<ObjectKey> = workloads
            .iter()
            .filter(|w| {
                !self.blocked.contains_key(&w.component) && !self.failed.contains_key(&w.component)
            })
            .map(|w| w.key.clone())
            .collect();
        let health_result = if self.preempted {
            Ok(())
        } else {
            match self.wait_healthy(&all, !post_hooks).await {
                Ok(()) => Ok(()),
                Err(Wait::Preempted) => Ok(()),
                Err(Wait::Failed(why)) => Err(why),
            }
        };
        if self.preempted {
            // What was applied is recorded; health, hooks and prune are the next run's.
            self.save_inventory().await?;
            return Err((
                reason::PROGRESSING,
                format!(
                    "applied {}; the health wait was cut short because newer work is waiting (a new commit, a drift or shutdown)",
                    desired::short_id(self.commit)
                ),
            ));
        }
        if let Err(why) = &health_result {
            self.errors.push(why.clone());
        }
        if changed && health_result.is_ok() && self.failed.is_empty() && self.blocked.is_empty() {
            let post: Vec<&Hook> = rendered
                .hooks
                .iter()
                .filter(|h| h.runs_after(install))
                .collect();
            self.run_hooks(&post).await?;
        }
        // Objects of blocked components are still wanted: never prune them.
        rendered_keys.sort();
        if self.failed.is_empty() && self.errors.is_empty() {
            self.prune(&rendered_keys).await;
        } else {
            info!("prune skipped: an apply or health step failed");
        }
        self.save_inventory().await?;
        if let Some((component, why)) = self.failed.iter().next() {
            let r = if why.starts_with("apply") {
                reason::APPLY_FAILED
            } else {
                reason::HEALTH_FAILED
            };
            return Err((r, format!("{component}: {why}")));
        }
        if let Err(why) = health_result {
            return Err((reason::HEALTH_FAILED, why));
        }
        if let Some(e) = self.errors.first() {
            return Err((reason::PRUNE_FAILED, e.clone()));
        }
        if let Some((component, why)) = self.blocked.iter().next() {
            return Err((reason::DEPENDENCY_NOT_READY, format!("{component}: {why}")));
        }
        Ok(())
    }

    /// Writes the inventory when it changed.
    async fn save_inventory(&mut self) -> StepResult {
        if self.inventory != self.loaded_inventory {
            inventory::save(
                self.cluster.client(),
                self.ns(),
                &self.stack.spec.name,
                &self.inventory,
            )
            .await
            .map_err(|e| (reason::APPLY_FAILED, e.to_string()))?;
            self.loaded_inventory = self.inventory.clone();
        }
        Ok(())
    }

    /// Records objects about to be created in the inventory before creating them, so a crash
    /// between the create and the inventory write cannot leave an object nobody prunes. The
    /// placeholder's empty hash never matches a render, so the next reconcile applies it again.
    async fn write_ahead(&mut self, items: &[Item]) -> Result<(), ClusterError> {
        let mut added = false;
        for item in items {
            if self.inventory.get(&item.key).is_none()
                && !self.blocked.contains_key(&item.component)
            {
                let record = Record {
                    component: item.component.clone(),
                    ..Record::default()
                };
                self.inventory.insert(item.key.clone(), record);
                added = true;
            }
        }
        if added {
            inventory::save(
                self.cluster.client(),
                self.ns(),
                &self.stack.spec.name,
                &self.inventory,
            )
            .await?;
            self.loaded_inventory = self.inventory.clone();
        }
        Ok(())
    }

    async fn ensure_namespace(&self) -> Result<(), ClusterError> {
        let key = ObjectKey {
            group: String::new(),
            version: "v1".into(),
            kind: "Namespace".into(),
            namespace: String::new(),
            name: self.ns().to_string(),
        };
        if self.cluster.get(&key).await?.is_some() {
            return Ok(());
        }
        let ns: DynamicObject = serde_json::from_value(json!({
            "apiVersion": "v1",
            "kind": "Namespace",
            "metadata": {"name": self.ns(), "labels": {LABEL_MANAGED_BY: MANAGED_BY, LABEL_STACK: self.stack.spec.name}},
        }))
        .map_err(|e| ClusterError::Invalid { object: key.to_string(), message: e.to_string() })?;
        self.cluster.apply(&ns, ApplyOptions::default()).await?;
        info!(namespace = %self.ns(), "namespace created");
        Ok(())
    }

    /// Reads the key names (never values) of every Secret a component needs, at once:
    /// `None` for a Secret that does not exist.
    async fn read_secrets(
        &self,
    ) -> Result<HashMap<String, Option<BTreeSet<String>>>, ClusterError> {
        let names: BTreeSet<String> = self
            .stack
            .components
            .iter()
            .flat_map(|c| c.spec.secret_env.iter().filter(|r| !r.optional))
            .map(|r| r.secret.clone())
            .collect();
        let reads = futures::future::join_all(names.iter().map(|name| {
            let key = ObjectKey {
                group: String::new(),
                version: "v1".into(),
                kind: "Secret".into(),
                namespace: self.ns().to_string(),
                name: name.clone(),
            };
            async move { self.cluster.get(&key).await }
        }))
        .await;
        let mut secrets = HashMap::new();
        for (name, read) in names.into_iter().zip(reads) {
            let keys = read?.map(|s| {
                let mut k = BTreeSet::new();
                for field in ["data", "stringData"] {
                    if let Some(o) = s.data.get(field).and_then(Value::as_object) {
                        k.extend(o.keys().cloned());
                    }
                }
                k
            });
            secrets.insert(name, keys);
        }
        Ok(secrets)
    }

    /// Blocks components whose non-optional Secret references do not resolve in `secrets`
    /// (key names read by [`Self::read_secrets`]). Each message carries one command that
    /// creates the Secret with every missing key (or patches them into the existing one).
    fn block_on_secrets(&mut self, secrets: &HashMap<String, Option<BTreeSet<String>>>) {
        // Every missing key of each Secret, across the whole stack.
        let mut missing: BTreeMap<&str, BTreeSet<&str>> = BTreeMap::new();
        for c in &self.stack.components {
            for r in c.spec.secret_env.iter().filter(|r| !r.optional) {
                match secrets.get(&r.secret) {
                    Some(Some(keys)) if keys.contains(&r.key) => {}
                    _ => {
                        missing.entry(&r.secret).or_default().insert(&r.key);
                    }
                }
            }
        }
        let mut blocked = Vec::new();
        for c in &self.stack.components {
            let Some(r) = c.spec.secret_env.iter().filter(|r| !r.optional).find(|r| {
                missing
                    .get(r.secret.as_str())
                    .is_some_and(|keys| keys.contains(r.key.as_str()))
            }) else {
                continue;
            };
            let keys: Vec<&str> = missing[r.secret.as_str()].iter().copied().collect();
            let exists = matches!(secrets.get(&r.secret), Some(Some(_)));
            let fix = crate::explain::rules::secret_fix(&r.secret, self.ns(), exists, &keys);
            let why = if exists {
                format!(
                    "Secret `{}` in namespace {} has no key {}; add {}: `{fix}`",
                    r.secret,
                    self.ns(),
                    quoted(&keys),
                    if keys.len() == 1 { "it" } else { "them" }
                )
            } else {
                format!(
                    "Secret `{}` does not exist in namespace {}; create it with {}: `{fix}`",
                    r.secret,
                    self.ns(),
                    if keys.len() == 1 {
                        "its key"
                    } else {
                        "all its keys"
                    }
                )
            };
            blocked.push((c.spec.name.clone(), why));
        }
        for (name, why) in blocked {
            warn!(component = %name, "{why}");
            self.blocked.entry(name).or_insert(why);
        }
    }

    /// Lists the live objects of `gvks` in the stack's namespace (one LIST per kind, at once).
    async fn fetch_lists(&self, gvks: Vec<GroupVersionKind>) -> Vec<Listed> {
        let selector = self.selector();
        let lists = futures::future::join_all(
            gvks.iter()
                .map(|gvk| self.cluster.list(gvk, self.ns(), &selector)),
        )
        .await;
        gvks.into_iter().zip(lists).collect()
    }

    /// Keeps the listed objects as the live state. A kind the cluster no longer serves holds
    /// nothing: its inventory entries that are not rendered any more (not in `wanted`) are
    /// dropped (nothing is left to delete). Any other failed LIST leaves its objects to a plain
    /// apply, so one kind never blocks the rest.
    fn take_lists(&mut self, lists: Vec<Listed>, wanted: &Wanted) {
        for (gvk, result) in lists {
            let items = match result {
                Ok(i) => i,
                Err(ClusterError::UnknownKind { .. }) => {
                    let gone: Vec<ObjectKey> = self
                        .inventory
                        .keys()
                        .filter(|k| k.group == gvk.group && k.kind == gvk.kind)
                        .filter(|k| {
                            !wanted.contains(&(k.group.clone(), k.kind.clone(), k.name.clone()))
                        })
                        .cloned()
                        .collect();
                    for k in gone {
                        warn!(object = %k, "dropped from the inventory: its kind is no longer served by the cluster, so nothing is left to delete");
                        self.inventory.remove(&k);
                    }
                    continue;
                }
                Err(e) => {
                    warn!(kind = %gvk.kind, error = %e, "listing failed; its objects are applied without comparing");
                    continue;
                }
            };
            for o in items {
                if let Some(k) = ObjectKey::of(&o) {
                    self.live.insert(inventory::id(&k), o);
                }
            }
        }
    }

    async fn plan_item(&self, obj: DynamicObject) -> Result<Item, ClusterError> {
        let mut obj = obj;
        let mut key = ObjectKey::of(&obj).ok_or_else(|| ClusterError::Invalid {
            object: obj.metadata.name.clone().unwrap_or_default(),
            message: "rendered object has no kind or name".into(),
        })?;
        if !self.cluster.is_namespaced(&key).await? {
            obj.metadata.namespace = None;
            key.namespace.clear();
        }
        let record = self.inventory.get(&key).cloned();
        let live = self.live.get(&inventory::id(&key));
        Ok(plan::item(
            obj,
            key,
            record.as_ref(),
            live,
            self.commit,
            self.opts.full,
        ))
    }

    async fn apply_item(&mut self, item: &Item) {
        if self.blocked.contains_key(&item.component) {
            return;
        }
        if item.unchanged {
            self.unchanged += 1;
            if let Some(live) = self.live.get(&inventory::id(&item.key)) {
                if order::is_workload(&item.key.kind) {
                    if let Ok(v) = serde_json::to_value(live) {
                        self.health
                            .insert(inventory::id(&item.key), (item.key.clone(), v));
                    }
                }
            }
            return;
        }
        if item.adopt {
            if let Err(e) = self.strip_kubectl(&item.key).await {
                warn!(object = %item.key, error = %e, "could not remove kubectl ownership");
            }
        }
        let opts = ApplyOptions {
            force: self.opts.force_conflicts,
            dry_run: false,
        };
        if self.opts.full && !item.adopt && self.same_as_live(item, opts).await {
            return;
        }
        let mut result = self.cluster.apply(&item.object, opts).await;
        if let Err(ClusterError::Immutable {
            recreatable: true, ..
        }) = &result
        {
            if self.opts.recreate {
                info!(object = %item.key, "re-creating: an immutable field changed");
                result = self.recreate(item, opts).await;
            }
        }
        match result {
            Ok(live) => {
                info!(object = %item.key, "applied");
                self.applied.push(item.key.to_string());
                let record = Record {
                    component: item.component.clone(),
                    hash: item.hash.clone(),
                    generation: live.metadata.generation.unwrap_or(0),
                    resource_version: live.metadata.resource_version.clone().unwrap_or_default(),
                    commit: item.commit.clone(),
                };
                self.inventory.insert(item.key.clone(), record);
                if order::is_workload(&item.key.kind) {
                    if let Ok(v) = serde_json::to_value(&live) {
                        self.health
                            .insert(inventory::id(&item.key), (item.key.clone(), v));
                    }
                }
                self.live.insert(inventory::id(&item.key), live);
            }
            Err(e) => {
                warn!(object = %item.key, error = %e, "apply failed");
                let component = if item.component.is_empty() {
                    item.key.short()
                } else {
                    item.component.clone()
                };
                if needs_new_commit(&e) {
                    self.stall_class.insert(component.clone());
                }
                self.failed
                    .entry(component)
                    .or_insert(format!("apply failed: {e}"));
            }
        }
    }

    /// A full resync compares every object with the cluster: a dry-run apply that leaves the
    /// live object as it is means nothing changed, so nothing is written or reported as applied.
    async fn same_as_live(&mut self, item: &Item, opts: ApplyOptions) -> bool {
        let id = inventory::id(&item.key);
        let Some(live) = self.live.get(&id) else {
            return false;
        };
        let dry = match self
            .cluster
            .apply(
                &item.object,
                ApplyOptions {
                    dry_run: true,
                    ..opts
                },
            )
            .await
        {
            Ok(d) => d,
            // The real apply reports the error.
            Err(_) => return false,
        };
        let (Ok(dry), Ok(live_v)) = (serde_json::to_value(&dry), serde_json::to_value(live)) else {
            return false;
        };
        if crate::cluster::diff::normalize(&dry) != crate::cluster::diff::normalize(&live_v) {
            return false;
        }
        debug!(object = %item.key, "unchanged (compared with the cluster)");
        self.unchanged += 1;
        let record = Record {
            component: item.component.clone(),
            hash: item.hash.clone(),
            generation: live.metadata.generation.unwrap_or(0),
            resource_version: live.metadata.resource_version.clone().unwrap_or_default(),
            commit: item.commit.clone(),
        };
        // The record still describes this object (same render, same generation or version):
        // keep it, so the inventory is not rewritten for a status update of the live object.
        let current = self.inventory.get(&item.key).is_some_and(|r| {
            r.hash == record.hash
                && r.commit == record.commit
                && r.component == record.component
                && if r.generation > 0 && record.generation > 0 {
                    r.generation == record.generation
                } else {
                    r.resource_version == record.resource_version
                }
        });
        if !current {
            self.inventory.insert(item.key.clone(), record);
        }
        if order::is_workload(&item.key.kind) {
            self.health.insert(id, (item.key.clone(), live_v));
        }
        true
    }

    async fn recreate(
        &self,
        item: &Item,
        opts: ApplyOptions,
    ) -> Result<DynamicObject, ClusterError> {
        self.note_deletion(&item.key);
        self.cluster.delete(&item.key).await?;
        self.wait_gone(&item.key).await?;
        self.cluster.apply(&item.object, opts).await
    }

    async fn wait_gone(&self, key: &ObjectKey) -> Result<(), ClusterError> {
        let deadline = Instant::now() + Duration::from_secs(60);
        let mut tick = tokio::time::interval(Duration::from_millis(250));
        while Instant::now() < deadline {
            tick.tick().await;
            if self.cluster.get(key).await?.is_none() {
                return Ok(());
            }
        }
        Err(ClusterError::Timeout {
            action: "waiting for deletion of",
            object: key.to_string(),
        })
    }

    /// Removes `kubectl`'s ownership and last-applied annotation from an object converge adopts,
    /// so a hand edit does not survive the next apply.
    async fn strip_kubectl(&self, key: &ObjectKey) -> Result<(), ClusterError> {
        let Some(live) = self.live.get(&inventory::id(key)) else {
            return Ok(());
        };
        let mut ops = Vec::new();
        if live
            .metadata
            .annotations
            .as_ref()
            .is_some_and(|a| a.contains_key(LAST_APPLIED))
        {
            ops.push(json!({"op": "remove", "path": "/metadata/annotations/kubectl.kubernetes.io~1last-applied-configuration"}));
        }
        let fields = live.metadata.managed_fields.clone().unwrap_or_default();
        if fields.iter().any(plan::is_kubectl) {
            let kept: Vec<Value> = fields
                .iter()
                .filter(|f| !plan::is_kubectl(f))
                .filter_map(|f| serde_json::to_value(f).ok())
                .collect();
            // An empty list means "leave as is" to the API server; one empty entry clears it.
            let kept = if kept.is_empty() {
                vec![json!({})]
            } else {
                kept
            };
            ops.push(json!({"op": "replace", "path": "/metadata/managedFields", "value": kept}));
        }
        if ops.is_empty() {
            return Ok(());
        }
        let patch: json_patch::Patch =
            serde_json::from_value(Value::Array(ops)).map_err(|e| ClusterError::Invalid {
                object: key.to_string(),
                message: e.to_string(),
            })?;
        self.cluster.json_patch(key, patch).await?;
        info!(object = %key, "adopted: removed kubectl ownership");
        Ok(())
    }

    /// Waits until every object in `keys` is healthy; fails fast on Pods stuck in a failing
    /// state. When `preemptible`, stops as soon as newer work asks (see [`Options::preempt`]).
    async fn wait_healthy(&mut self, keys: &[ObjectKey], preemptible: bool) -> Result<(), Wait> {
        let result = self.wait_healthy_inner(keys, preemptible).await;
        if std::mem::take(&mut self.health_reported) {
            let how = if result.is_ok() {
                "healthy"
            } else {
                "not healthy"
            };
            info!(target: PROGRESS, step = "health.done", stack = %self.stack.spec.name, "{how}: {}", self.stack.spec.name);
        }
        result
    }

    async fn wait_healthy_inner(
        &mut self,
        keys: &[ObjectKey],
        preemptible: bool,
    ) -> Result<(), Wait> {
        let deadline = Instant::now() + self.opts.timeout;
        let mut pending: Vec<ObjectKey> = keys.to_vec();
        let mut first_seen: HashMap<String, Instant> = HashMap::new();
        let mut last_problem: BTreeMap<String, String> = BTreeMap::new();
        // A controller's status write wakes the wait through a watch of the awaited objects;
        // the slow tick only looks for Pods stuck in a failing state (Pods are not watched).
        let mut changes = match self.cluster.changes(keys).await {
            Ok(c) => Some(c),
            Err(e) => {
                debug!(error = %e, "no watch for the health wait; polling");
                None
            }
        };
        let mut tick = tokio::time::interval(if changes.is_some() {
            HEALTH_POLL
        } else {
            Duration::from_millis(500)
        });
        tick.tick().await;
        // What the last progress event said, and when: a new one when it changes or every 10 s.
        let mut reported: (String, Option<Instant>) = (String::new(), None);
        loop {
            let mut waiting_on: Vec<String> = Vec::new();
            let mut still = Vec::new();
            for key in pending {
                let id = inventory::id(&key);
                // The freshest copy we hold first; the API only when it is not ready yet.
                let known = self.health.get(&id).map(|(_, v)| v.clone()).or_else(|| {
                    self.live
                        .get(&id)
                        .and_then(|o| serde_json::to_value(o).ok())
                });
                let ready_now = known
                    .as_ref()
                    .is_some_and(|v| health::of(&key.kind, v) == Health::Ready);
                if ready_now {
                    continue;
                }
                let live = match self.cluster.get(&key).await {
                    Ok(Some(o)) => serde_json::to_value(&o).unwrap_or(Value::Null),
                    Ok(None) => return Err(Wait::Failed(format!("{key} does not exist"))),
                    Err(e) => return Err(Wait::Failed(e.to_string())),
                };
                self.health.insert(id, (key.clone(), live.clone()));
                match health::of(&key.kind, &live) {
                    Health::Ready => {}
                    Health::Failed(why) => {
                        return Err(Wait::Failed(format!("{}: {why}", key.short())))
                    }
                    Health::Progressing(msg) => {
                        let counts = ready_counts(&live)
                            .map(|(r, d)| format!(" {r}/{d} ready"))
                            .unwrap_or_default();
                        let mut line = format!("{}{counts} ({msg})", key.short());
                        if let Some((pod, why, message)) = self.stuck_pod(&live).await {
                            last_problem
                                .insert(key.short(), format!("pod {pod} is {why}: {message}"));
                            let since = *first_seen
                                .entry(format!("{pod}/{why}"))
                                .or_insert_with(Instant::now);
                            // Unschedulable often clears by itself (a volume being bound, a
                            // node joining): it is reported at the deadline, never failed fast.
                            let fatal = health::FAIL_FAST_REASONS.contains(&why.as_str())
                                || why == "OOMKilled";
                            let window = self.opts.fail_fast.as_secs();
                            if fatal && since.elapsed() >= self.opts.fail_fast {
                                return Err(Wait::Failed(format!(
                                    "{}: pod {pod} is {why}: {message} (still failing after the {window}s fail-fast window)",
                                    key.short()
                                )));
                            }
                            line = if fatal {
                                let left = self.opts.fail_fast.saturating_sub(since.elapsed());
                                format!(
                                    "{}{counts}: pod {pod} is {why}; fails in {}s unless it recovers ({window}s fail-fast window)",
                                    key.short(),
                                    left.as_secs().max(1)
                                )
                            } else {
                                format!("{}{counts}: pod {pod} is {why}: {message}", key.short())
                            };
                        }
                        debug!(object = %key, progress = %msg, "waiting");
                        waiting_on.push(line);
                        still.push(key);
                    }
                }
            }
            if still.is_empty() {
                return Ok(());
            }
            let pending_text = waiting_on.join("; ");
            let stale = reported
                .1
                .is_none_or(|t| t.elapsed() >= Duration::from_secs(10));
            if pending_text != reported.0 || stale {
                let left = deadline.saturating_duration_since(Instant::now()).as_secs();
                info!(target: PROGRESS, step = "health.wait", stack = %self.stack.spec.name, "waiting for {} ({left}s left): {pending_text}", self.stack.spec.name);
                reported = (pending_text, Some(Instant::now()));
                self.health_reported = true;
            }
            if Instant::now() >= deadline {
                let names: Vec<String> = still
                    .iter()
                    .map(|k| match last_problem.get(&k.short()) {
                        Some(p) => format!("{} ({p})", k.short()),
                        None => k.short(),
                    })
                    .collect();
                return Err(Wait::Failed(format!(
                    "not healthy within {}s: {}",
                    self.opts.timeout.as_secs(),
                    names.join(", ")
                )));
            }
            pending = still;
            // Something is still not healthy: a boundary where stopping loses nothing.
            if preemptible && self.preempt_requested() {
                return Err(self.preempted_at(&pending));
            }
            let mut preempt = self.opts.preempt.clone().filter(|_| preemptible);
            tokio::select! {
                _ = tick.tick() => {}
                Some(()) = async { match changes.as_mut() { Some(c) => c.next().await, None => std::future::pending().await } } => {
                    // A burst of events (status, then the ReplicaSet's count) is one look.
                    tokio::time::sleep(HEALTH_SETTLE).await;
                }
                Ok(()) = async { match preempt.as_mut() { Some(p) => p.changed().await, None => std::future::pending().await } } => {}
            }
            if preemptible && self.preempt_requested() {
                return Err(self.preempted_at(&pending));
            }
        }
    }

    fn preempted_at(&mut self, waiting: &[ObjectKey]) -> Wait {
        let names: Vec<String> = waiting.iter().map(ObjectKey::short).collect();
        info!(waiting = %names.join(", "), "health wait preempted: newer work is waiting");
        self.preempted = true;
        Wait::Preempted
    }

    async fn stuck_pod(&self, workload: &Value) -> Option<(String, String, String)> {
        let labels = workload
            .pointer("/spec/selector/matchLabels")?
            .as_object()?;
        let selector: Vec<String> = labels
            .iter()
            .map(|(k, v)| format!("{k}={}", v.as_str().unwrap_or("")))
            .collect();
        let pods = self
            .cluster
            .list(
                &GroupVersionKind::gvk("", "v1", "Pod"),
                self.ns(),
                &selector.join(","),
            )
            .await
            .ok()?;
        pods.iter().find_map(|p| {
            let v = serde_json::to_value(p).ok()?;
            let (why, msg) = health::pod_problem(&v)?;
            Some((p.metadata.name.clone().unwrap_or_default(), why, msg))
        })
    }

    /// Runs one phase's hooks in weight order. As in Helm, `hook-succeeded` deletions wait until
    /// the whole phase succeeded: a later hook may need an earlier one (the migration Job runs as
    /// the hook ServiceAccount created just before it).
    async fn run_hooks(&mut self, hooks: &[&Hook]) -> StepResult {
        for hook in hooks {
            self.run_hook(hook).await?;
        }
        for hook in hooks {
            if !hook.delete_policies.iter().any(|d| d == "hook-succeeded") {
                continue;
            }
            if let Some(key) = ObjectKey::of(&hook.object) {
                self.cluster
                    .delete(&key)
                    .await
                    .map_err(|e| (reason::HOOK_FAILED, format!("hook {}: {e}", key.short())))?;
            }
        }
        Ok(())
    }

    async fn run_hook(&mut self, hook: &Hook) -> StepResult {
        let Some(key) = ObjectKey::of(&hook.object) else {
            return Ok(());
        };
        let fail = |why: String| (reason::HOOK_FAILED, format!("hook {}: {why}", key.short()));
        let has = |p: &str| hook.delete_policies.iter().any(|d| d == p);
        if has("before-hook-creation")
            && self
                .cluster
                .delete(&key)
                .await
                .map_err(|e| fail(e.to_string()))?
        {
            self.wait_gone(&key)
                .await
                .map_err(|e| fail(e.to_string()))?;
        }
        self.cluster
            .apply(
                &hook.object,
                ApplyOptions {
                    force: true,
                    dry_run: false,
                },
            )
            .await
            .map_err(|e| fail(e.to_string()))?;
        info!(hook = %key, "hook started");
        let result = if key.kind == "Job" {
            self.wait_healthy(std::slice::from_ref(&key), false)
                .await
                .map_err(|w| match w {
                    Wait::Failed(why) => why,
                    Wait::Preempted => "preempted".to_string(),
                })
        } else {
            Ok(())
        };
        self.health.remove(&inventory::id(&key));
        match result {
            Ok(()) => {
                info!(hook = %key, "hook succeeded");
                Ok(())
            }
            Err(why) => {
                if has("hook-failed") {
                    let _ = self.cluster.delete(&key).await;
                }
                Err(fail(why))
            }
        }
    }

    async fn prune(&mut self, rendered: &[ObjectKey]) {
        let policy = PrunePolicy {
            volumes: self.stack.spec.prune.volumes,
            namespaces: self.stack.spec.prune.namespace,
            allow_mass_prune: self.opts.allow_mass_prune,
        };
        let plan = inventory::plan_prune(&self.inventory, rendered, policy);
        for (key, why) in &plan.keep {
            self.kept.push(format!("{key}: {why}"));
        }
        if let Some(refused) = plan.refused {
            warn!("{refused}");
            self.errors.push(refused);
            return;
        }
        for key in plan.delete.iter().rev() {
            self.note_deletion(key);
            match self.cluster.delete(key).await {
                Ok(_) => {
                    info!(object = %key, "pruned");
                    self.pruned.push(key.to_string());
                    self.inventory.remove(key);
                }
                // The kind is gone from the cluster, and every object of it with it.
                Err(ClusterError::UnknownKind { .. }) => {
                    warn!(object = %key, "dropped from the inventory: its kind is no longer served by the cluster, so nothing is left to delete");
                    self.inventory.remove(key);
                }
                // Kept in the inventory, so the next reconcile retries and nothing is orphaned.
                Err(e) => self.errors.push(format!("pruning {key}: {e}")),
            }
        }
    }

    async fn finish(
        self,
        result: StepResult,
        images: &BTreeMap<String, String>,
        started: Instant,
        before: RequestCounts,
    ) -> StackReport {
        let (ready, why, message) = match &result {
            Ok(()) => (
                true,
                reason::SUCCEEDED,
                format!("applied {}", desired::short_id(self.commit)),
            ),
            Err((r, m)) => (false, *r, m.clone()),
        };
        let preempted = self.preempted && !ready;
        let needs_new_commit = why == reason::APPLY_FAILED
            && !self.failed.is_empty()
            && self.failed.keys().all(|c| self.stall_class.contains(c));
        let now = chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Secs, true);
        let components = self.component_status(images, &now);
        let old = self.old_status.clone();
        let last_healthy = if ready {
            self.commit.to_string()
        } else {
            old.as_ref()
                .map(|o| o.last_healthy_commit.clone())
                .unwrap_or_default()
        };
        let next = StackStatus {
            stack: self.stack.spec.name.clone(),
            namespace: self.ns().to_string(),
            dir: self.stack.dir.clone(),
            last_applied_commit: self.commit.to_string(),
            last_healthy_commit: last_healthy,
            ready,
            reason: why.to_string(),
            message: message.clone(),
            components,
            history: Vec::new(),
        };
        let duration = started.elapsed();
        let entry = HistoryEntry {
            commit: self.commit.to_string(),
            result: why.to_string(),
            duration_ms: duration.as_millis() as u64,
            time: now,
        };
        let write = old
            .as_ref()
            .is_none_or(|o| status::materially_changed(o, &next));
        let status = status::advance(old.as_ref(), next, entry);
        let mut errors = self.errors.clone();
        if !ready && !preempted && !errors.contains(&message) {
            errors.insert(0, message);
        }
        // An unreachable cluster leaves nothing to write to, and a record that could not be read
        // (or kept aside) is never written over: its history would be lost.
        if write && self.namespace_ready && self.status_read {
            if let Err(e) = status::save(self.cluster.client(), &status).await {
                warn!(error = %e, "status not recorded");
                errors.push(format!("recording status: {e}"));
            }
        }
        let after = self.cluster.requests();
        StackReport {
            stack: self.stack.spec.name.clone(),
            namespace: self.ns().to_string(),
            dir: self.stack.dir.clone(),
            commit: self.commit.to_string(),
            ready,
            reason: why.to_string(),
            errors,
            warnings: self.warnings.clone(),
            applied: self.applied,
            unchanged: self.unchanged,
            pruned: self.pruned,
            kept: self.kept,
            blocked: self.blocked,
            requests: RequestCounts {
                reads: after.reads - before.reads,
                writes: after.writes - before.writes,
                dry_runs: after.dry_runs - before.dry_runs,
            },
            duration_ms: started.elapsed().as_millis() as u64,
            status,
            builds: Vec::new(),
            preempted,
            needs_new_commit,
        }
    }

    fn component_status(
        &self,
        images: &BTreeMap<String, String>,
        now: &str,
    ) -> Vec<ComponentStatus> {
        self.stack
            .components
            .iter()
            .map(|c| {
                let name = &c.spec.name;
                let image = images
                    .get(name)
                    .cloned()
                    .or_else(|| c.spec.image.reference.clone())
                    .unwrap_or_default();
                let mut ready = 0;
                let mut desired_n = 0;
                let mut healthy = true;
                let mut keys = Vec::new();
                for (key, v) in self.health.values() {
                    let comp = v
                        .pointer("/metadata/labels")
                        .and_then(|l| l.get(LABEL_COMPONENT))
                        .and_then(Value::as_str);
                    if comp != Some(name.as_str())
                        || !order::is_workload(&key.kind)
                        || key.kind == "Job"
                    {
                        continue;
                    }
                    desired_n += v
                        .pointer("/spec/replicas")
                        .and_then(Value::as_i64)
                        .unwrap_or(1);
                    ready += v
                        .pointer("/status/readyReplicas")
                        .and_then(Value::as_i64)
                        .unwrap_or(0);
                    healthy &= health::of(&key.kind, v) == Health::Ready;
                    keys.push(key.short());
                }
                // The health wait failed on one of its workloads: Failed, not Progressing.
                let wait_failure = if healthy {
                    None
                } else {
                    self.errors
                        .iter()
                        .find(|e| keys.iter().any(|k| names_object(e, k)))
                };
                let (health, err) = if let Some(b) = self.blocked.get(name) {
                    ("Blocked", b.clone())
                } else if let Some(f) = self.failed.get(name) {
                    ("Failed", f.clone())
                } else if healthy {
                    ("Healthy", String::new())
                } else if let Some(e) = wait_failure {
                    ("Failed", e.clone())
                } else {
                    ("Progressing", String::new())
                };
                ComponentStatus {
                    name: name.clone(),
                    image,
                    ready,
                    desired: desired_n,
                    health: health.into(),
                    last_error: err,
                    since: now.to_string(),
                }
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn a_message_names_an_object_only_by_its_whole_name() {
        assert!(super::names_object(
            "Deployment/web: pod x is CrashLoopBackOff",
            "Deployment/web"
        ));
        assert!(super::names_object(
            "not healthy within 5s: Deployment/web",
            "Deployment/web"
        ));
        assert!(!super::names_object(
            "Deployment/web-worker: pod x",
            "Deployment/web"
        ));
    }
}
