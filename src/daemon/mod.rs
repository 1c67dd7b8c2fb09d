//! The long-running daemon (`converge run`): one `select! { biased; … }` loop that turns triggers
//! — git ref changes, drift on managed objects, the resync timer, `converge sync`/SIGUSR1, SIGHUP —
//! into one reconcile at a time, coalesced, with back-off on failure and two-phase shutdown.
//!
//! It never reads the working tree (it reconciles commit ids of the tracked ref), never runs two
//! reconciles at once, never prints (tracing only), and never decides per object what to apply:
//! that is `reconcile::reconcile_commit`'s job, which the daemon calls as the CLI does.

pub mod backoff;
pub mod drift;
pub mod http;
pub mod lock;
pub mod metrics;
pub mod refs;
pub mod sd;
pub mod service;
pub mod state;

use std::collections::{BTreeMap, BTreeSet};
use std::future::Future;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use signal_hook::consts::signal::{SIGHUP, SIGINT, SIGTERM, SIGUSR1};
use tokio::sync::{mpsc, watch};
use tokio::time::Instant;
use tracing::{debug, error, info, info_span, warn, Instrument};

use crate::cluster::inventory;
use crate::cluster::lease::{LeaseError, Renewal};
use crate::desired::{self, schema::BuilderKind};
use crate::error::{Disposition, Error};
use crate::reconcile::{self, Clusters, Options, OwnDeletions, PreparedCommit, StackReport};
use crate::render::Helm;
use crate::status::{self, HistoryEntry, StackStatus};
use crate::vocabulary::reason;
use kube::runtime::WatchStreamExt;

use drift::{DriftWatch, Note};
use lock::{FileLock, Holder, LeaseGuard, LockError};
use metrics::{Metrics, ResultLabel};
use state::{DriftVerdict, Finished, Next, RecordVerdict, Stall, State};

/// How far back from HEAD the daemon looks for a valid desired state to learn its stacks.
const DISCOVER_DEPTH: usize = 50;
/// How often the Lease is renewed.
const LEASE_RENEW: Duration = Duration::from_secs(10);
/// How soon a failed Lease renewal is tried again.
const LEASE_RETRY: Duration = Duration::from_secs(1);
/// The loop's heartbeat when systemd asks for no watchdog.
const HEARTBEAT: Duration = Duration::from_secs(5);

/// The daemon's settings, resolved once from the command line.
#[derive(Debug, Clone)]
pub struct Config {
    /// Any directory inside the checkout.
    pub repo: PathBuf,
    /// The desired-state directory.
    pub dir: String,
    /// Only this stack.
    pub stack: Option<String>,
    /// The kubeconfig file (`$KUBECONFIG` when absent).
    pub kubeconfig: Option<PathBuf>,
    /// The kube context, instead of each stack's.
    pub context: Option<String>,
    /// The branch to deploy, instead of the stacks' `branch`.
    pub branch: Option<String>,
    /// Pull mode: fetch this remote.
    pub remote: Option<String>,
    /// Pull mode: how often to fetch.
    pub poll: Duration,
    /// Pull mode: follow a rewritten remote history.
    pub allow_non_fast_forward: bool,
    /// How often to check that nothing drifted unseen (free when the watch cache proves it).
    pub resync: Duration,
    /// How often to compare every object with the cluster regardless.
    pub full_resync: Duration,
    /// Quiet time after a ref change before reading the new tip.
    pub debounce: Duration,
    /// The longest retry delay after a failed reconcile.
    pub retry_max: Duration,
    /// How long shutdown waits for the reconcile in flight.
    pub shutdown_grace: Duration,
    /// The loopback address of `/metrics`, `/healthz`, `/readyz` and `/sync`.
    pub listen: SocketAddr,
    /// Whether to hold a coordination Lease per stack.
    pub lease: bool,
    /// The image builder, instead of each stack's.
    pub builder: Option<BuilderKind>,
    /// Reconcile options (timeouts, conflicts, recreate).
    pub options: Options,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            repo: PathBuf::from("."),
            dir: desired::DEFAULT_DIR.into(),
            stack: None,
            kubeconfig: None,
            context: None,
            branch: None,
            remote: None,
            poll: Duration::from_secs(30),
            allow_non_fast_forward: false,
            resync: Duration::from_secs(300),
            full_resync: Duration::from_secs(3600),
            debounce: Duration::from_millis(100),
            retry_max: Duration::from_secs(300),
            shutdown_grace: Duration::from_secs(10),
            listen: SocketAddr::from(([127, 0, 0, 1], 0)),
            lease: true,
            builder: None,
            options: Options::default(),
        }
    }
}

/// Why the daemon could not start or stopped with an error.
#[derive(Debug, thiserror::Error)]
pub enum DaemonError {
    /// Another daemon holds the checkout or the stack.
    #[error(transparent)]
    Lock(#[from] lock::LockError),
    /// The ref watch or pull mode failed.
    #[error(transparent)]
    Refs(#[from] refs::RefsError),
    /// The repository could not be read.
    #[error(transparent)]
    Source(#[from] crate::source::SourceError),
    /// The cluster or the desired state failed at startup.
    #[error(transparent)]
    Converge(#[from] Error),
    /// What to deploy could not be decided.
    #[error("{message}")]
    Config {
        /// What is wrong and how to fix it.
        message: String,
    },
    /// The HTTP endpoint could not listen.
    #[error("listening on {addr}")]
    Listen {
        /// The address.
        addr: SocketAddr,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// Signal handlers could not be installed.
    #[error("installing signal handlers")]
    Signals(#[source] std::io::Error),
    /// A second SIGTERM/SIGINT arrived during shutdown.
    #[error("aborted by a second signal during shutdown")]
    Aborted,
}

/// What woke the daemon; only a span field, the reconcile never branches on it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Trigger {
    /// The daemon started.
    Startup,
    /// The tracked ref moved.
    Commit,
    /// A managed object changed out of band.
    Drift,
    /// The periodic resync found a reason to look.
    Resync,
    /// The periodic full resync.
    FullResync,
    /// `converge sync` or SIGUSR1.
    Sync,
    /// SIGHUP.
    Reload,
    /// A retry after a failure.
    Retry,
    /// The cluster's status record names a commit this daemon did not apply.
    Record,
    /// A Secret the stack reads changed.
    Secret,
}

impl Trigger {
    /// Whether a reconcile it starts may reuse the commit as the daemon last prepared it:
    /// the commit did not change, and nobody asked to read it again.
    pub fn reuses_prepared(self) -> bool {
        matches!(
            self,
            Trigger::Drift | Trigger::Record | Trigger::Secret | Trigger::Resync | Trigger::Retry
        )
    }

    /// The span field value.
    pub fn as_str(self) -> &'static str {
        match self {
            Trigger::Startup => "startup",
            Trigger::Commit => "commit",
            Trigger::Drift => "drift",
            Trigger::Resync => "resync",
            Trigger::FullResync => "full-resync",
            Trigger::Sync => "sync",
            Trigger::Reload => "reload",
            Trigger::Retry => "retry",
            Trigger::Record => "record",
            Trigger::Secret => "secret",
        }
    }
}

/// A stack the daemon manages.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct Target {
    /// The stack's name.
    pub stack: String,
    /// Its namespace.
    pub namespace: String,
    /// The kube context it is applied to.
    pub context: String,
}

/// The stacks of `stacks` as targets, with `context` overriding each stack's.
fn targets_of(stacks: &[desired::Stack], context: Option<&str>) -> Vec<Target> {
    stacks
        .iter()
        .map(|s| Target {
            stack: s.spec.name.clone(),
            namespace: s.spec.namespace.clone(),
            context: context.map_or_else(|| s.spec.context.clone(), str::to_string),
        })
        .collect()
}

/// The branch and stacks to manage, from the newest of HEAD's last commits whose desired state is
/// valid (so a daemon starts even when HEAD itself is broken).
fn discover(cfg: &Config) -> Result<(String, Vec<Target>), DaemonError> {
    let repo = crate::source::Repo::open(&cfg.repo)?;
    let start = match &cfg.branch {
        Some(b) => format!("refs/heads/{b}"),
        None => "HEAD".to_string(),
    };
    for depth in 0..DISCOVER_DEPTH {
        let rev = format!("{start}~{depth}");
        let Ok(snapshot) = repo.snapshot(&rev) else {
            break;
        };
        let Ok(loaded) = desired::load(&snapshot, &cfg.dir) else {
            continue;
        };
        let stacks: Vec<desired::Stack> = loaded
            .state
            .stacks
            .into_iter()
            .filter(|s| {
                cfg.stack
                    .as_deref()
                    .is_none_or(|w| reconcile::stack_matches(s, w))
                    && cfg
                        .options
                        .namespace
                        .as_deref()
                        .is_none_or(|n| n == s.spec.namespace)
            })
            .collect();
        if stacks.is_empty() {
            return Err(DaemonError::Config {
                message: match &cfg.stack {
                    Some(s) => format!("commit {rev} has no stack `{s}` in `{}`", cfg.dir),
                    None => format!("commit {rev} has no stack in `{}`", cfg.dir),
                },
            });
        }
        let branch = match &cfg.branch {
            Some(b) => b.clone(),
            None => {
                let branches: BTreeSet<&str> =
                    stacks.iter().map(|s| s.spec.branch.as_str()).collect();
                if branches.len() > 1 {
                    return Err(DaemonError::Config {
                        message: format!(
                            "the stacks track different branches ({}): run one daemon per branch with --stack or --branch",
                            branches.into_iter().collect::<Vec<_>>().join(", ")
                        ),
                    });
                }
                branches.into_iter().next().unwrap_or("main").to_string()
            }
        };
        if depth > 0 {
            warn!(%rev, "HEAD's desired state is invalid; learned the stacks from an older commit");
        }
        return Ok((branch, targets_of(&stacks, cfg.context.as_deref())));
    }
    Err(DaemonError::Config {
        message: format!(
            "none of the last {DISCOVER_DEPTH} commits of {start} has a valid desired state in `{}`: run `converge validate` and commit a fix",
            cfg.dir
        ),
    })
}

/// How one reconcile ended.
enum Outcome {
    /// `reconcile_commit` ran: one report per stack.
    Reports(Vec<StackReport>),
    /// The commit cannot be deployed as it is (invalid, unknown stack, bad chart): wait for a
    /// new commit.
    Stalled(&'static str, String),
    /// A transient failure: retry with back-off.
    Retry(String),
    /// Builds were cancelled by shutdown.
    Cancelled,
}

/// What a finished job hands back to the loop.
struct Done {
    commit: String,
    trigger: Trigger,
    drift: bool,
    outcome: Outcome,
    took: Duration,
    clusters: Clusters,
    targets: Option<Vec<Target>>,
    kinds: BTreeMap<String, BTreeSet<(String, String, String)>>,
    /// The Secrets each stack's components read.
    secrets: BTreeMap<String, BTreeSet<String>>,
    leases: Vec<LeaseGuard>,
    invalid: bool,
    /// The commit as prepared, when every build succeeded (reused by drift corrections).
    prepared: Option<Arc<PreparedCommit>>,
    /// It reused a prepared commit: its build outcomes were counted already.
    reused: bool,
}

/// Everything a job needs, owned, so the loop stays free while it runs.
struct JobInput {
    cfg: Arc<Config>,
    root: PathBuf,
    commit: String,
    trigger: Trigger,
    drift: bool,
    full: bool,
    clusters: Clusters,
    helm: Helm,
    cancel: watch::Receiver<bool>,
    preempt: watch::Receiver<bool>,
    own_deletions: OwnDeletions,
    known: Vec<Target>,
    leased: BTreeSet<String>,
    holder: Holder,
    /// While the tip is stalled, the reason recorded again after reconciling the last good commit.
    overlay: Option<Stall>,
    /// This commit as the daemon prepared it before, if it may be reused.
    prepared: Option<Arc<PreparedCommit>>,
}

/// One reconcile: read, validate, build and render the commit (or reuse it when the daemon
/// already prepared it), take Leases of new stacks, reconcile, learn the kinds to watch.
/// Invalid commits and failed builds are recorded in each stack's status.
async fn job(mut input: JobInput) -> Done {
    let started = Instant::now();
    let cfg = input.cfg.clone();
    let mut done = Done {
        commit: input.commit.clone(),
        trigger: input.trigger,
        drift: input.drift,
        outcome: Outcome::Cancelled,
        took: Duration::ZERO,
        clusters: Clusters::default(),
        targets: None,
        kinds: BTreeMap::new(),
        secrets: BTreeMap::new(),
        leases: Vec::new(),
        invalid: false,
        prepared: None,
        reused: false,
    };
    // reconcile_commit's steps: builds (cancelled by shutdown), then the reconcile (stopped at
    // its next health wait by newer work).
    let mut opts = cfg.options.clone();
    opts.full = input.full;
    opts.builder = cfg.builder;
    opts.cancel = Some(input.cancel.clone());
    opts.preempt = Some(input.preempt.clone());
    opts.own_deletions = Some(input.own_deletions.clone());

    let prepared = match input.prepared.take() {
        Some(p) => {
            done.reused = true;
            debug!("reusing the prepared commit (read, validated, built and rendered already)");
            p
        }
        None => {
            match reconcile::prepare_commit(&input.root, &input.commit, &opts, &mut input.clusters)
                .await
            {
                Ok(p) => Arc::new(p),
                Err(e) => {
                    let invalid = matches!(e, Error::Invalid { .. } | Error::UnknownStack { .. });
                    let (why, message) = describe(&e);
                    let known = input.known.clone();
                    record(&mut input, &known, why, &message).await;
                    done.invalid = invalid;
                    // A missing build context is in the commit: only a new commit fixes it.
                    done.outcome = match (e.disposition(), &e) {
                        (Disposition::Stalled, _) | (_, Error::Build(_)) => {
                            Outcome::Stalled(why, message)
                        }
                        _ => Outcome::Retry(message),
                    };
                    done.clusters = input.clusters;
                    done.took = started.elapsed();
                    return done;
                }
            }
        }
    };
    let stacks: Vec<desired::Stack> = prepared.stacks.iter().map(|p| p.stack.clone()).collect();
    let targets = targets_of(&stacks, cfg.context.as_deref());
    done.targets = Some(targets.clone());
    for s in &stacks {
        let names = s
            .components
            .iter()
            .flat_map(|c| c.spec.secret_env.iter().map(|r| r.secret.clone()))
            .collect();
        done.secrets.insert(s.spec.name.clone(), names);
    }
    if prepared.complete() {
        done.prepared = Some(prepared.clone());
    }

    // A commit may name a stack this daemon does not lease yet.
    if cfg.lease {
        for t in targets.iter().filter(|t| !input.leased.contains(&t.stack)) {
            match take_lease(&mut input.clusters, &cfg, t, &input.holder).await {
                Ok(g) => done.leases.push(g),
                Err(e) => {
                    done.outcome = Outcome::Stalled(reason::APPLY_FAILED, e.to_string());
                    done.clusters = input.clusters;
                    done.took = started.elapsed();
                    return done;
                }
            }
        }
    }

    info!(stacks = targets.len(), "apply started");
    let result =
        reconcile::reconcile_prepared(&prepared, &opts, &input.helm, &mut input.clusters).await;
    done.outcome = match result {
        Ok(reports) => {
            // Learn what to watch: the kinds of every object converge now manages.
            for t in &targets {
                if let Ok(cluster) = input
                    .clusters
                    .get(cfg.kubeconfig.as_deref(), &t.context)
                    .await
                {
                    if let Ok(inv) = inventory::load(cluster.client(), &t.namespace, &t.stack).await
                    {
                        let kinds = inv
                            .keys()
                            .map(|k| (k.group.clone(), k.version.clone(), k.kind.clone()))
                            .collect();
                        done.kinds.insert(t.stack.clone(), kinds);
                    }
                }
            }
            if let Some(stall) = input.overlay.clone() {
                record_at(
                    &mut input,
                    &targets,
                    &stall.commit,
                    stall.reason,
                    &stall.message,
                )
                .await;
            }
            Outcome::Reports(reports)
        }
        Err(e) => {
            let (why, message) = describe(&e);
            record(&mut input, &targets, why, &message).await;
            match e.disposition() {
                Disposition::Stalled => Outcome::Stalled(why, message),
                Disposition::Waiting | Disposition::Retry => Outcome::Retry(message),
            }
        }
    };
    done.clusters = input.clusters;
    done.took = started.elapsed();
    done
}

/// The policy's view of a job's outcome.
fn finished(outcome: &Outcome) -> Finished {
    match outcome {
        Outcome::Reports(reports) => {
            let ready = reports.iter().all(|r| r.ready);
            let preempted =
                !ready && reports.iter().all(|r| r.ready || r.preempted) && !reports.is_empty();
            let stalled: Vec<&StackReport> = reports
                .iter()
                .filter(|r| !r.ready && r.needs_new_commit)
                .collect();
            let needs_new_commit =
                (!ready && !preempted && reports.iter().all(|r| r.ready || r.needs_new_commit))
                    .then(|| {
                        let message = stalled
                            .iter()
                            .map(|r| format!("stack {}: {}", r.stack, r.status.message))
                            .collect::<Vec<_>>()
                            .join("; ");
                        (reason::APPLY_FAILED, message)
                    });
            Finished::Reports {
                ready,
                preempted,
                needs_new_commit,
            }
        }
        Outcome::Stalled(why, message) => Finished::Stalled {
            reason: why,
            message: message.clone(),
        },
        Outcome::Retry(_) => Finished::Retry,
        Outcome::Cancelled => Finished::Cancelled,
    }
}

/// A reason and a one-line message for an error; diagnostics as `file:line:col: message`.
fn describe(e: &Error) -> (&'static str, String) {
    match e {
        Error::Invalid { commit, report } => {
            let errors: Vec<String> = report
                .diagnostics
                .iter()
                .filter(|d| d.is_error())
                .take(5)
                .map(|d| format!("{}: {}", d.location(), d.message))
                .collect();
            let more = report.error_count().saturating_sub(errors.len());
            let mut message = format!(
                "commit {} is invalid: {}",
                desired::short_id(commit),
                errors.join("; ")
            );
            if more > 0 {
                message.push_str(&format!(" (and {more} more)"));
            }
            (reason::VALIDATION_FAILED, message)
        }
        other => (other.reason(), other.to_string()),
    }
}

async fn take_lease(
    clusters: &mut Clusters,
    cfg: &Config,
    t: &Target,
    holder: &Holder,
) -> Result<LeaseGuard, DaemonError> {
    let cluster = clusters.get(cfg.kubeconfig.as_deref(), &t.context).await?;
    lock::ensure_namespace(cluster.client(), &t.namespace, &t.stack)
        .await
        .map_err(LockError::from)?;
    LeaseGuard::acquire(
        cluster.client(),
        &t.namespace,
        &t.stack,
        &holder.identity(),
        &holder.checkout,
    )
    .await
    .map_err(|e| LockError::from(e).into())
}

async fn record(input: &mut JobInput, targets: &[Target], why: &'static str, message: &str) {
    let commit = input.commit.clone();
    record_at(input, targets, &commit, why, message).await;
}

/// Records a failure that stopped a commit before (or instead of) its reconcile in each stack's
/// status: not ready, the reason and message, a history entry; the last applied and healthy
/// commits stay as they were, since nothing was applied.
async fn record_at(
    input: &mut JobInput,
    targets: &[Target],
    commit: &str,
    why: &'static str,
    message: &str,
) {
    for t in targets {
        let cluster = match input
            .clusters
            .get(input.cfg.kubeconfig.as_deref(), &t.context)
            .await
        {
            Ok(c) => c,
            Err(e) => {
                warn!(stack = %t.stack, error = %e, "status not recorded");
                continue;
            }
        };
        // An unreadable record is kept aside (and logged) before this one replaces it.
        let old = match status::load_for_update(cluster.client(), &t.namespace, &t.stack).await {
            Ok((o, _kept_aside)) => o,
            Err(e) => {
                warn!(stack = %t.stack, error = %e, "status not recorded");
                continue;
            }
        };
        let mut next = old.clone().unwrap_or_else(|| StackStatus {
            stack: t.stack.clone(),
            namespace: t.namespace.clone(),
            ..Default::default()
        });
        next.ready = false;
        next.reason = why.to_string();
        next.message = message.to_string();
        if old
            .as_ref()
            .is_some_and(|o| !status::materially_changed(o, &next))
        {
            continue;
        }
        let entry = HistoryEntry {
            commit: commit.to_string(),
            result: why.to_string(),
            duration_ms: 0,
            time: chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
        };
        let next = status::advance(old.as_ref(), next, entry);
        if let Err(e) = status::save(cluster.client(), &next).await {
            warn!(stack = %t.stack, error = %e, "status not recorded");
        }
    }
}

type Job = Pin<Box<dyn Future<Output = Done>>>;

/// `tokio::time::sleep_until` on an optional deadline (never fires when `None`).
async fn until(at: Option<Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

/// An optional std deadline as a tokio one.
fn tokio_at(at: Option<std::time::Instant>) -> Option<Instant> {
    at.map(Instant::from_std)
}

/// The commit every stack's status record names as last applied, when they agree (pure).
fn agreed_commit(records: &[String]) -> Option<String> {
    let first = records.first()?;
    records.iter().all(|c| c == first).then(|| first.clone())
}

/// The last applied commit the cluster's status records name for `targets`, when they agree and
/// this checkout holds it: what drift corrections re-apply after a restart onto a stalled tip.
async fn recorded_commit(
    clusters: &mut Clusters,
    cfg: &Config,
    targets: &[Target],
    root: &Path,
) -> Option<String> {
    let mut commits = Vec::new();
    for t in targets {
        let cluster = clusters
            .get(cfg.kubeconfig.as_deref(), &t.context)
            .await
            .ok()?;
        match status::load(cluster.client(), &t.namespace, &t.stack).await {
            Ok(Some(s)) if !s.last_applied_commit.is_empty() => commits.push(s.last_applied_commit),
            Ok(_) => {}
            Err(e) => warn!(stack = %t.stack, error = %e, "status record not read"),
        }
    }
    let commit = agreed_commit(&commits)?;
    let readable = crate::source::Repo::open(root)
        .and_then(|r| r.snapshot(&commit).map(|_| ()))
        .is_ok();
    if !readable {
        warn!(commit = %desired::short_id(&commit), "the cluster's status record names a commit this checkout does not hold");
        return None;
    }
    Some(commit)
}

/// Runs the daemon until SIGTERM/SIGINT (then `Ok`) or a fatal error.
pub async fn run(cfg: Config) -> Result<(), DaemonError> {
    let started = Instant::now();
    let cfg = Arc::new(cfg);
    let dirs = refs::GitDirs::discover(&cfg.repo)?;
    let mut file_lock = FileLock::acquire(&dirs.git_dir)?;
    let (branch, mut targets) = discover(&cfg)?;
    let tracked = refs::tracked_ref(&branch, cfg.remote.as_deref());
    let mut holder = Holder::me(&dirs.root);
    let metrics = Arc::new(Metrics::default());

    let listener = http::bind(cfg.listen)
        .await
        .map_err(|source| DaemonError::Listen {
            addr: cfg.listen,
            source,
        })?;
    let addr = listener
        .local_addr()
        .map_err(|source| DaemonError::Listen {
            addr: cfg.listen,
            source,
        })?;
    holder.http = Some(addr.to_string());
    file_lock.record(&holder)?;

    let mut clusters = Clusters::default();
    let mut leases: Vec<LeaseGuard> = Vec::new();
    if cfg.lease {
        for t in &targets {
            leases.push(take_lease(&mut clusters, &cfg, t, &holder).await?);
        }
    }

    let mut signals = signal_hook_tokio::Signals::new([SIGTERM, SIGINT, SIGUSR1, SIGHUP])
        .map_err(DaemonError::Signals)?;
    let (sync_tx, mut sync_rx) = mpsc::channel::<()>(1);
    let server = tokio::spawn(http::serve(
        listener,
        metrics.clone(),
        started.into_std(),
        sync_tx,
    ));
    let (refs_tx, mut refs_rx) = mpsc::channel::<()>(1);
    let _ref_watch = refs::watch(&dirs, refs_tx)?;
    let (drift_tx, mut drift_rx) = mpsc::channel::<Note>(256);
    let mut drift_watch = DriftWatch::default();
    // Watch from the start, so drift during the first (possibly long) reconcile is not missed.
    for t in &targets {
        if let Ok(c) = clusters.get(cfg.kubeconfig.as_deref(), &t.context).await {
            drift_watch
                .ensure(&c, &t.stack, &t.namespace, &BTreeSet::new(), &drift_tx)
                .await;
        }
    }
    let (lost_tx, mut lost_rx) = mpsc::channel::<String>(4);
    let mut renewers = Vec::new();
    for g in &leases {
        renewers.push(spawn_renewer(g.clone(), lost_tx.clone()));
    }
    let (cancel_tx, cancel_rx) = watch::channel(false);
    let helm = Helm::from_env();
    let mut prepared_cache: Option<Arc<PreparedCommit>> = None;
    let own_deletions = OwnDeletions::default();

    let watchdog = sd::watchdog_interval();
    let mut tick = tokio::time::interval(watchdog.map_or(HEARTBEAT, |w| (w / 2).min(HEARTBEAT)));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);

    let mut state = State::new(refs::tip(&dirs.root, &tracked).ok(), cfg.retry_max);
    // After a restart the cluster's record says what runs there: if the tip turns out stalled,
    // drift is corrected with that commit.
    if let Some(c) = recorded_commit(&mut clusters, &cfg, &targets, &dirs.root).await {
        debug!(commit = %desired::short_id(&c), "last applied commit, from the cluster's status record");
        state.learn_applied(c);
    }

    info!(
        repo = %dirs.root.display(),
        %tracked,
        stacks = %targets.iter().map(|t| format!("{}@{}/{}", t.stack, t.context, t.namespace)).collect::<Vec<_>>().join(","),
        http = %addr,
        pid = std::process::id(),
        "daemon started"
    );
    sd::ready(&format!("watching {tracked}"));

    // Loop state (the policy's is in `state`; this is the I/O's).
    let mut inflight: Option<Job> = None;
    let mut preempt_tx: Option<watch::Sender<bool>> = None;
    let mut inflight_since = Instant::now();
    let mut refs_deadline: Option<Instant> = None;
    let mut first_ref_event: Option<Instant> = None;
    let mut resync_at = Instant::now() + cfg.resync;
    let mut full_resync_at = Instant::now() + cfg.full_resync;
    let mut poll_at = cfg.remote.as_ref().map(|_| Instant::now());
    let mut fetching: Option<tokio::task::JoinHandle<Result<Option<String>, refs::RefsError>>> =
        None;
    let mut shutdown_at: Option<Instant> = None;
    let mut exit: Result<(), DaemonError> = Ok(());

    loop {
        // Start the next reconcile when idle.
        if inflight.is_none() && shutdown_at.is_none() {
            let tip = match refs::tip(&dirs.root, &tracked) {
                Ok(t) => Some(t),
                Err(e) => {
                    warn!(error = %e, %tracked, "cannot read the tracked ref");
                    None
                }
            };
            match state.next(tip.as_deref()) {
                Next::Idle => {}
                Next::NothingApplied => {
                    debug!("nothing to reconcile: the tip is stalled and no commit is known to be applied");
                }
                Next::Start(st) => {
                    let since = first_ref_event.take();
                    let span = info_span!("reconcile", trigger = st.trigger.as_str(), commit = %desired::short_id(&st.commit), full = st.full);
                    span.in_scope(|| match since {
                        Some(t) => info!(
                            latency_ms = t.elapsed().as_millis() as u64,
                            "reconcile started"
                        ),
                        None => info!("reconcile started"),
                    });
                    let (ptx, prx) = watch::channel(false);
                    preempt_tx = Some(ptx);
                    let reuse = prepared_cache
                        .clone()
                        .filter(|p| p.commit == st.commit && st.trigger.reuses_prepared());
                    let input = JobInput {
                        cfg: cfg.clone(),
                        root: dirs.root.clone(),
                        commit: st.commit,
                        trigger: st.trigger,
                        drift: st.drift,
                        full: st.full,
                        clusters: clusters.clone(),
                        helm: helm.clone(),
                        // Correcting drift (or retrying) re-applies what is prepared already;
                        // a new commit, a sync or a full resync reads the commit again.
                        prepared: reuse,
                        cancel: cancel_rx.clone(),
                        preempt: prx,
                        own_deletions: own_deletions.clone(),
                        known: targets.clone(),
                        leased: leases.iter().map(|g| g.stack().to_string()).collect(),
                        holder: holder.clone(),
                        overlay: st.overlay,
                    };
                    inflight = Some(Box::pin(job(input).instrument(span)));
                    inflight_since = Instant::now();
                    sd::status("reconciling");
                }
            }
        }
        if shutdown_at.is_some() && inflight.is_none() {
            break;
        }
        let preempt = |why: &str| {
            if let Some(p) = &preempt_tx {
                let _ = p.send(true);
                info!(
                    running_s = inflight_since.elapsed().as_secs(),
                    "the reconcile in flight stops at its next health wait: {why}"
                );
            }
        };

        tokio::select! {
            biased;
            Some(sig) = signals.next() => match sig {
                SIGTERM | SIGINT => {
                    if shutdown_at.is_some() {
                        error!("second signal: aborting the reconcile in flight");
                        exit = Err(DaemonError::Aborted);
                        break;
                    }
                    info!(in_flight = inflight.is_some(), grace_s = cfg.shutdown_grace.as_secs(), "stopping: no new work; waiting for the reconcile in flight");
                    sd::stopping();
                    let _ = cancel_tx.send(true);
                    // A health wait ends at once, so the reconcile records its status and exits.
                    if inflight.is_some() {
                        preempt("shutdown");
                    }
                    shutdown_at = Some(Instant::now() + cfg.shutdown_grace);
                }
                SIGUSR1 => {
                    info!("sync requested (SIGUSR1)");
                    state.on_sync();
                }
                SIGHUP => {
                    info!("reloading (SIGHUP)");
                    sd::reloading();
                    match discover(&cfg) {
                        Ok((b, t)) => {
                            if b != branch {
                                warn!(old = %branch, new = %b, "the tracked branch changed: restart the daemon to follow it");
                            }
                            targets = t;
                        }
                        Err(e) => warn!(error = %e, "reload: keeping the previous configuration"),
                    }
                    state.on_reload();
                    sd::ready(&format!("watching {tracked}"));
                }
                _ => {}
            },
            Some(who) = lost_rx.recv() => {
                error!(holder = %who, "lost the stack's Lease to another daemon; stopping");
                exit = Err(DaemonError::Config { message: format!("lost the Lease to {who}") });
                break;
            }
            done = async { inflight.as_mut().expect("guarded by the branch condition").await }, if inflight.is_some() => {
                inflight = None;
                preempt_tx = None;
                let took = done.took;
                if let Some(t) = done.targets.clone() {
                    targets = t;
                }
                for (stack, names) in done.secrets {
                    state.set_secrets(stack, names);
                }
                for g in done.leases {
                    renewers.push(spawn_renewer(g.clone(), lost_tx.clone()));
                    leases.push(g);
                }
                clusters = done.clusters;
                if let Some(p) = done.prepared.clone() {
                    prepared_cache = Some(p);
                }
                let span = info_span!("reconcile", trigger = done.trigger.as_str(), commit = %desired::short_id(&done.commit));
                let _enter = span.enter();
                let fin = finished(&done.outcome);
                let after = state.on_done(fin.clone(), Instant::now().into_std());
                let retry_in_s = after.retry_at.map(|at| at.saturating_duration_since(std::time::Instant::now()).as_secs());
                match done.outcome {
                    Outcome::Reports(reports) => {
                        let mut applied_n = 0u64;
                        for r in &reports {
                            metrics.requests(r.requests.reads, r.requests.writes, r.requests.dry_runs);
                            for b in r.builds.iter().filter(|_| !done.reused) {
                                metrics.build(match b.action {
                                    crate::build::Action::Exists => "exists",
                                    crate::build::Action::Built => "built",
                                    crate::build::Action::Loaded => "loaded",
                                    crate::build::Action::Skipped => "skipped",
                                    crate::build::Action::Failed { .. } => "failed",
                                });
                            }
                            applied_n += r.applied.len() as u64 + r.pruned.len() as u64;
                            let line = format!("{} applied, {} unchanged, {} pruned", r.applied.len(), r.unchanged, r.pruned.len());
                            if r.ready {
                                info!(stack = %r.stack, reason = %r.reason, reads = r.requests.reads, writes = r.requests.writes, ms = r.duration_ms, "{line}");
                            } else if r.preempted {
                                info!(stack = %r.stack, reason = %r.reason, ms = r.duration_ms, "{line}; health wait preempted");
                            } else {
                                warn!(stack = %r.stack, reason = %r.reason, errors = %r.errors.join("; "), "{line}; not ready");
                            }
                        }
                        if done.drift && applied_n > 0 {
                            metrics.drift_corrected(applied_n);
                            info!(objects = applied_n, "drift corrected");
                        }
                        match fin {
                            Finished::Reports { ready: true, .. } => {
                                metrics.reconcile(ResultLabel::Success, took);
                                metrics.applied(&done.commit);
                                metrics.set_ready(after.ready);
                                sd::status(&format!("converged at {}", desired::short_id(&done.commit)));
                            }
                            Finished::Reports { preempted: true, .. } => {
                                metrics.reconcile(ResultLabel::Preempted, took);
                                metrics.applied(&done.commit);
                            }
                            Finished::Reports { needs_new_commit: Some((_, message)), .. } => {
                                metrics.reconcile(ResultLabel::Failed, took);
                                metrics.set_ready(false);
                                error!(%message, "cannot deploy this commit as it is; waiting for a new commit (retrying would fail the same way; `converge sync` tries again)");
                                sd::status(&format!("stalled at {}", desired::short_id(&done.commit)));
                            }
                            _ => {
                                metrics.reconcile(ResultLabel::Failed, took);
                                metrics.set_ready(false);
                                warn!(retry_in_s, "reconcile failed; retrying with back-off");
                                sd::status(&format!("failed at {}; retrying", desired::short_id(&done.commit)));
                            }
                        }
                        // Watch what converge now manages.
                        for t in &targets {
                            let kinds = done.kinds.get(&t.stack).cloned().unwrap_or_default();
                            if let Ok(c) = clusters.get(cfg.kubeconfig.as_deref(), &t.context).await {
                                drift_watch.ensure(&c, &t.stack, &t.namespace, &kinds, &drift_tx).await;
                            }
                        }
                        drift_watch.retain(&targets.iter().map(|t| t.stack.clone()).collect());
                    }
                    Outcome::Stalled(_, message) => {
                        metrics.reconcile(if done.invalid { ResultLabel::Invalid } else { ResultLabel::Error }, took);
                        metrics.set_ready(false);
                        if after.stalled {
                            error!(error = %message, "cannot deploy this commit; waiting for a new commit (the cluster keeps the last applied state)");
                            sd::status(&format!("stalled at {}", desired::short_id(&done.commit)));
                        } else {
                            warn!(error = %message, "the commit the cluster's status record names cannot be re-applied from this checkout");
                        }
                    }
                    Outcome::Retry(message) => {
                        metrics.reconcile(ResultLabel::Error, took);
                        metrics.set_ready(false);
                        warn!(error = %message, retry_in_s, "reconcile failed; retrying with back-off");
                    }
                    Outcome::Cancelled => {
                        metrics.reconcile(ResultLabel::Abandoned, took);
                    }
                }
            }
            _ = until(shutdown_at), if shutdown_at.is_some() => {
                if inflight.take().is_some() {
                    warn!("the reconcile in flight did not finish within the grace period: abandoned (objects are applied one at a time; the next start re-applies)");
                    metrics.reconcile(ResultLabel::Abandoned, cfg.shutdown_grace);
                }
                break;
            }
            Some(()) = refs_rx.recv() => {
                first_ref_event.get_or_insert_with(Instant::now);
                refs_deadline = Some(Instant::now() + cfg.debounce);
            }
            _ = until(refs_deadline), if refs_deadline.is_some() => {
                refs_deadline = None;
                match refs::tip(&dirs.root, &tracked) {
                    Ok(tip) => match state.on_tip(&tip) {
                        None => first_ref_event = None,
                        Some(ask) => {
                            info!(commit = %desired::short_id(&tip), %tracked, "new commit");
                            if ask {
                                preempt("a new commit is waiting");
                            }
                        }
                    },
                    Err(e) => {
                        first_ref_event = None;
                        debug!(error = %e, %tracked, "tracked ref unreadable");
                    }
                }
            }
            Some(note) = drift_rx.recv() => match note {
                Note::Drift(ev) if ev.deleted && own_deletions.take(&ev.stack, &ev.object) => {
                    debug!(stack = %ev.stack, object = %ev.object, "deleted by converge's prune: not drift");
                }
                Note::Drift(ev) => {
                    metrics.drift_event();
                    let what = if ev.deleted { "deleted" } else { "changed" };
                    info!(stack = %ev.stack, object = %ev.object, manager = %ev.manager, "drift: {what} out of band");
                    let now = Instant::now();
                    match state.on_drift(&format!("{}/{}", ev.stack, ev.object), now.into_std()) {
                        DriftVerdict::Now { preempt: true } => preempt("drift is corrected next"),
                        DriftVerdict::Now { preempt: false } => {}
                        DriftVerdict::Later(at) => {
                            debug!(object = %ev.object, delay_ms = at.saturating_duration_since(now.into_std()).as_millis() as u64, "drift correction delayed (per-object back-off)");
                        }
                    }
                }
                Note::Synced { stack, kind } => state.on_synced(stack, kind),
                Note::Gap { stack, kind } => state.on_gap(stack, kind),
                Note::Gone { stack, kind } => state.on_gone(stack, kind),
                Note::Record { stack, commit } => match state.on_record(&commit) {
                    RecordVerdict::Agrees => {}
                    RecordVerdict::Learned => {
                        debug!(%stack, commit = %desired::short_id(&commit), "last applied commit, from the cluster's status record");
                    }
                    RecordVerdict::Foreign { ours } => {
                        warn!(%stack, recorded = %desired::short_id(&commit), ours = %desired::short_id(&ours), "the cluster's status record says another commit was applied (a one-shot `converge apply --force`?); reconciling the tip again");
                    }
                },
                Note::Secret { stack, name } => {
                    if state.on_secret(&stack, &name) {
                        info!(%stack, secret = %name, "a Secret the stack reads changed; reconciling");
                    }
                }
            },
            _ = until(tokio_at(state.drift_at())), if state.drift_at().is_some() => {
                state.on_drift_due();
            }
            _ = until(tokio_at(state.retry_at())), if state.retry_at().is_some() => {
                state.on_retry_due();
            }
            Some(()) = sync_rx.recv() => {
                info!("sync requested (converge sync)");
                state.on_sync();
            }
            _ = tokio::time::sleep_until(full_resync_at) => {
                full_resync_at = Instant::now() + cfg.full_resync;
                resync_at = Instant::now() + cfg.resync;
                state.on_full_resync();
            }
            _ = tokio::time::sleep_until(resync_at) => {
                let t0 = std::time::Instant::now();
                resync_at = Instant::now() + cfg.resync;
                let tip = refs::tip(&dirs.root, &tracked).ok();
                if state.on_resync(tip.as_deref()) {
                    metrics.resync_skipped();
                    debug!(took_us = t0.elapsed().as_micros() as u64, "resync: nothing changed since the last apply (watch cache); no request sent");
                }
            }
            _ = until(poll_at), if poll_at.is_some() && fetching.is_none() => {
                poll_at = None;
                if let Some(remote) = cfg.remote.clone() {
                    let (root, b, allow) = (dirs.root.clone(), branch.clone(), cfg.allow_non_fast_forward);
                    fetching = Some(tokio::spawn(async move {
                        refs::fetch(&root, &remote, &b, allow, Duration::from_secs(120)).await
                    }));
                }
            }
            res = async { fetching.as_mut().expect("guarded by the branch condition").await }, if fetching.is_some() => {
                fetching = None;
                poll_at = Some(Instant::now() + cfg.poll);
                match res {
                    Ok(Ok(_)) => {}
                    Ok(Err(e @ refs::RefsError::NonFastForward { .. })) => error!(error = %e, "pull refused"),
                    Ok(Err(e)) => warn!(error = %e, "fetch failed; retrying at the next poll"),
                    Err(e) => warn!(error = %e, "fetch task failed"),
                }
            }
            _ = tick.tick() => {
                metrics.heartbeat(started.elapsed().as_millis() as u64);
                if watchdog.is_some() {
                    sd::watchdog();
                }
            }
        }
    }

    // Shutdown: stop watching and serving, free the Leases, then the file lock (on drop).
    drop(inflight);
    drift_watch.stop();
    server.abort();
    for r in &renewers {
        r.abort();
    }
    for g in &leases {
        let _ = tokio::time::timeout(Duration::from_secs(3), g.release()).await;
    }
    match &exit {
        Ok(()) => info!("stopped"),
        Err(e) => error!(error = %e, "stopped"),
    }
    drop(file_lock);
    exit
}

/// Keeps a Lease: renews it every [`LEASE_RENEW`], re-creates it at once when it is deleted
/// (by hand, or with its namespace), retries every second while that fails, and reports a
/// Lease another daemon took on `lost`.
fn spawn_renewer(g: LeaseGuard, lost: mpsc::Sender<String>) -> tokio::task::JoinHandle<()> {
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

/// `converge sync`: asks the daemon of the checkout containing `repo` to reconcile now, through
/// its loopback endpoint (recorded in the lock file), or SIGUSR1 when it serves none.
pub async fn request_sync(repo: &Path) -> Result<String, DaemonError> {
    let dirs = refs::GitDirs::discover(repo)?;
    if !lock::is_held(&dirs.git_dir) {
        return Err(DaemonError::Config {
            message: format!(
                "no converge daemon runs for {} (start one with `converge run`)",
                dirs.root.display()
            ),
        });
    }
    let holder = lock::read_holder(&dirs.git_dir).ok_or_else(|| DaemonError::Config {
        message: "the daemon's lock file names no holder yet; retry in a moment".into(),
    })?;
    if let Some(addr) = holder.http.as_deref().and_then(|a| a.parse().ok()) {
        let status = http::post_sync(addr)
            .await
            .map_err(|source| DaemonError::Listen { addr, source })?;
        if status.contains(" 202 ") {
            return Ok(format!("sync queued (daemon pid {} at {addr})", holder.pid));
        }
        return Err(DaemonError::Config {
            message: format!("the daemon at {addr} answered `{status}`"),
        });
    }
    let out = tokio::time::timeout(
        Duration::from_secs(5),
        tokio::process::Command::new("kill")
            .args(["-USR1", &holder.pid.to_string()])
            .output(),
    )
    .await;
    match out {
        Ok(Ok(o)) if o.status.success() => Ok(format!("sent SIGUSR1 to pid {}", holder.pid)),
        _ => Err(DaemonError::Config {
            message: format!("could not signal pid {}", holder.pid),
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_recorded_commit_counts_only_when_every_stack_agrees() {
        assert_eq!(agreed_commit(&[]), None);
        assert_eq!(agreed_commit(&["a".into(), "a".into()]), Some("a".into()));
        assert_eq!(agreed_commit(&["a".into(), "b".into()]), None);
    }
}
