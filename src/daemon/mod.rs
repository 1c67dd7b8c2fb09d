//! The long-running daemon (`converge run`): one `select! { biased; … }` loop that turns triggers
//! — git ref changes, drift on managed objects, the resync timer, `converge sync`/SIGUSR1, SIGHUP —
//! into one reconcile at a time, coalesced, with back-off on failure and two-phase shutdown.
//!
//! It never reads the working tree (it reconciles commit ids of the tracked ref), never runs two
//! reconciles at once, never prints (tracing only), never writes status and never decides per
//! object what to apply: that is the reconcile's job, which the daemon calls as the CLI does.
//!
//! Files: the policy is a pure state machine ([`state`]); this file only turns I/O into its
//! events and carries out what it returns. One reconcile off the loop is [`job`], the stacks and
//! branch to manage come from [`targets`], Leases are kept by [`lock`] (and waited for by
//! standby replicas in [`leader`]), drift is watched by
//! [`drift`], `/metrics`, `converge sync` and the live page go through [`http`] (the page's
//! model and event stream are [`page`]), local URLs are served by [`forward`].

pub mod backoff;
pub mod drift;
mod error;
pub mod forward;
pub mod http;
mod job;
mod leader;
pub mod lock;
pub mod metrics;
mod outcome;
pub mod page;
mod pull;
pub mod refs;
pub mod sd;
pub mod service;
pub mod state;
mod targets;
pub mod webhook;

use std::collections::BTreeSet;
use std::future::Future;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use signal_hook::consts::signal::{SIGHUP, SIGINT, SIGTERM, SIGUSR1};
use tokio::sync::{mpsc, watch};
use tokio::time::Instant;
use tracing::{debug, error, info, info_span, warn, Instrument};

use crate::desired;
use crate::reconcile::{self, Clusters, Options, OwnDeletions, PreparedCommit};
use crate::render::Helm;

use drift::{DriftWatch, Note};
use job::{job, take_lease, JobInput};
use lock::spawn_renewer;
use lock::{FileLock, Holder, LeaseGuard, LeaseTiming, Loss};
use metrics::{Metrics, ResultLabel};
use state::{DriftVerdict, Next, RecordVerdict, State};
use targets::{discover, recorded_commit};

/// The loop's heartbeat when systemd asks for no watchdog.
const HEARTBEAT: Duration = Duration::from_secs(5);

/// The daemon's settings, resolved once from the command line.
#[derive(Debug, Clone)]
pub struct Config {
    /// Any directory inside the checkout.
    pub repo: PathBuf,
    /// The branch to deploy, instead of the stacks' `branch`.
    pub branch: Option<String>,
    /// Pull mode: fetch this remote.
    pub remote: Option<String>,
    /// Pull mode: how often to fetch.
    pub poll: Duration,
    /// Pull mode: follow a rewritten remote history.
    pub allow_non_fast_forward: bool,
    /// Pull mode: the SSH private key git uses (`-i`, nothing else offered).
    pub ssh_key: Option<PathBuf>,
    /// Pull mode: the only known_hosts file ssh trusts (strict checking).
    pub known_hosts: Option<PathBuf>,
    /// Pull mode: the file holding the secret signed webhooks on `POST /sync` are checked with.
    pub webhook_secret: Option<PathBuf>,
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
    /// The loopback address of the live page, `/metrics`, `/healthz`, `/readyz` and `/sync`.
    pub listen: SocketAddr,
    /// Whether to hold a coordination Lease per stack.
    pub lease: bool,
    /// Standby mode: the installation (`<namespace>/<release>`) this replica belongs to. A
    /// daemon that cannot take a Lease waits for it (ready, as a standby) when a replica of the
    /// same installation holds it, and is refused (not ready, writing nothing) otherwise.
    /// `None`: the laptop daemon, which exits when another daemon holds a Lease.
    pub standby: Option<String>,
    /// The Leases' duration, renew period, renew deadline and retry period.
    pub lease_timing: LeaseTiming,
    /// How each reconcile behaves, and what it selects: the desired-state directory, the stack,
    /// the kubeconfig, the context and the builder are read from here, not copied.
    pub options: Options,
    /// The MCP server answered on `POST /mcp` of the listen address, when one is given.
    pub mcp: Option<http::McpEndpoint>,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            repo: PathBuf::from("."),
            branch: None,
            remote: None,
            poll: Duration::from_secs(30),
            allow_non_fast_forward: false,
            ssh_key: None,
            known_hosts: None,
            webhook_secret: None,
            resync: Duration::from_secs(300),
            full_resync: Duration::from_secs(3600),
            debounce: Duration::from_millis(100),
            retry_max: Duration::from_secs(300),
            shutdown_grace: Duration::from_secs(10),
            listen: SocketAddr::from(([127, 0, 0, 1], 0)),
            lease: true,
            standby: None,
            lease_timing: LeaseTiming::default(),
            options: Options::default(),
            mcp: None,
        }
    }
}

type Job = Pin<Box<dyn Future<Output = job::Done>>>;

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

/// The stacks' local URLs this daemon serves: none in standby mode, whose replicas run in Pods
/// where a loopback URL reaches nobody.
fn local_routes(cfg: &Config, routes: Vec<forward::Route>) -> Vec<forward::Route> {
    if cfg.standby.is_some() {
        Vec::new()
    } else {
        routes
    }
}

/// Records the served local URLs in the lock file when they changed, for `converge status`.
fn record_urls(forwards: &forward::Forwards, holder: &mut Holder, file_lock: &mut FileLock) {
    let urls: Vec<String> = forwards.serving().map(forward::Route::url).collect();
    if urls != holder.urls {
        holder.urls = urls;
        if let Err(e) = file_lock.record(holder) {
            warn!(error = %e, "the lock file does not say which local URLs are served");
        }
    }
}

pub use error::DaemonError;
pub use http::request_sync;
pub use reconcile::StackRef;
pub use state::Trigger;

/// Runs the daemon until SIGTERM/SIGINT (then `Ok`) or a fatal error.
pub async fn run(cfg: Config) -> Result<(), DaemonError> {
    let started = Instant::now();
    if cfg.lease {
        cfg.lease_timing
            .check()
            .map_err(|message| DaemonError::Config {
                message: format!("{message} (--lease-duration, --lease-renew, --lease-renew-deadline, --lease-retry)"),
            })?;
    }
    let cfg = Arc::new(cfg);
    let pull = pull::prepare(&cfg)?;
    let webhook_secret = pull::webhook_secret(&cfg)?;
    let dirs = refs::GitDirs::discover(&cfg.repo)?;
    let mut file_lock = FileLock::acquire(&dirs.git_dir)?;
    let metrics = Arc::new(Metrics::default());
    let mut signals = signal_hook_tokio::Signals::new([SIGTERM, SIGINT, SIGUSR1, SIGHUP])
        .map_err(DaemonError::Signals)?;
    // Pull mode learns the stacks from what it fetched, so it fetches first (and waits for
    // the remote, serving the probes, when it has nothing yet).
    let start = match &pull {
        Some(p) => match pull::first_fetch(
            &cfg,
            p,
            &dirs.root,
            &metrics,
            started.into_std(),
            &mut signals,
        )
        .await?
        {
            Some(start) => Some(start),
            None => return Ok(()),
        },
        None => None,
    };
    let (branch, mut targets, routes) = discover(&cfg, start.as_deref())?;
    let mut routes = local_routes(&cfg, routes);
    let tracked = refs::tracked_ref(&branch, pull.as_ref().map(|p| p.remote.name()));
    let mut holder = Holder::me(&dirs.root);

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
    if cfg.lease && cfg.standby.is_none() {
        for t in &targets {
            leases.push(take_lease(&mut clusters, &cfg, t, &holder).await?);
        }
    }

    let (sync_tx, mut sync_rx) = mpsc::channel::<()>(1);
    let (fetch_tx, mut fetch_rx) = mpsc::channel::<()>(1);
    let page = page::Page::start(
        page::DaemonInfo {
            pid: std::process::id(),
            version: env!("CARGO_PKG_VERSION").into(),
            checkout: dirs.root.display().to_string(),
            tracked: tracked.clone(),
            tip: refs::tip(&dirs.root, &tracked).unwrap_or_default(),
            started_ms: chrono::Utc::now().timestamp_millis(),
        },
        cfg.options.kubeconfig.clone(),
        targets.clone(),
    );
    let server = tokio::spawn(http::serve(
        listener,
        metrics.clone(),
        started.into_std(),
        sync_tx,
        page.shared.clone(),
        cfg.mcp.clone(),
        http::Webhook {
            secret: webhook_secret,
            fetch: fetch_tx,
        },
    ));
    // Standby mode: serve /readyz (standby, or refused) while waiting to lead.
    if cfg.lease && cfg.standby.is_some() {
        match leader::wait_to_lead(
            &mut clusters,
            &cfg,
            &targets,
            &holder,
            &metrics,
            cfg.lease_timing,
            &mut signals,
        )
        .await
        {
            leader::Waited::Leading(taken) => leases = taken,
            leader::Waited::Stopped => {
                server.abort();
                page.stop();
                info!("stopped");
                return Ok(());
            }
        }
    }
    let (refs_tx, mut refs_rx) = mpsc::channel::<()>(1);
    let _ref_watch = refs::watch(&dirs, refs_tx)?;
    let (drift_tx, mut drift_rx) = mpsc::channel::<Note>(256);
    let mut drift_watch = DriftWatch::default();
    // Watch from the start, so drift during the first (possibly long) reconcile is not missed.
    for t in &targets {
        if let Ok(c) = clusters
            .get(cfg.options.kubeconfig.as_deref(), &t.context)
            .await
        {
            drift_watch
                .ensure(&c, &t.stack, &t.namespace, &BTreeSet::new(), &drift_tx)
                .await;
        }
    }
    let (lost_tx, mut lost_rx) = mpsc::channel::<Loss>(4);
    let mut renewers = Vec::new();
    for g in &leases {
        renewers.push(spawn_renewer(g.clone(), lost_tx.clone()));
    }
    let (cancel_tx, cancel_rx) = watch::channel(false);
    let helm = Helm::from_env();
    let mut prepared_cache: Option<Arc<PreparedCommit>> = None;
    let own_deletions = OwnDeletions::default();
    let mut history =
        outcome::GitHistory::new(dirs.root.clone(), tracked.clone(), cfg.remote.is_some());

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

    // Local URLs from the start (the Pods of the last deploy already answer); a port in use is
    // logged and skipped, never fatal.
    let mut forwards = forward::Forwards::default();
    forwards
        .ensure(&routes, &mut clusters, cfg.options.kubeconfig.as_deref())
        .await;
    record_urls(&forwards, &mut holder, &mut file_lock);

    info!(
        repo = %dirs.root.display(),
        %tracked,
        stacks = %targets.iter().map(|t| format!("{}@{}/{}", t.stack, t.context, t.namespace)).collect::<Vec<_>>().join(","),
        http = %addr,
        urls = %forwards.serving().map(|r| format!("{}->{}/{}", r.url(), r.stack, r.reaches())).collect::<Vec<_>>().join(","),
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
    let mut poll_at = pull.as_ref().map(|_| Instant::now());
    let mut fetch_backoff = pull::backoff(&cfg);
    // A fetch was asked for while one ran (which may have started before the push).
    let mut fetch_again = false;
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
                    let reuse = prepared_cache.clone().filter(|p| {
                        p.commit == st.commit && st.trigger.reuses_prepared(p.complete())
                    });
                    // After a restart the record is rebuilt from the revert commit itself.
                    let auto_revert = history.auto_revert_for(&st.commit);
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
                        auto_revert,
                    };
                    page.bus.send(page::Event::Started {
                        trigger: input.trigger.as_str().into(),
                        commit: input.commit.clone(),
                    });
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
                    match discover(&cfg, pull.as_ref().map(|_| tracked.as_str())) {
                        Ok((b, t, r)) => {
                            if b != branch {
                                warn!(old = %branch, new = %b, "the tracked branch changed: restart the daemon to follow it");
                            }
                            targets = t;
                            page.targets.send_replace(targets.clone());
                            routes = local_routes(&cfg, r);
                            forwards.ensure(&routes, &mut clusters, cfg.options.kubeconfig.as_deref()).await;
                            record_urls(&forwards, &mut holder, &mut file_lock);
                        }
                        Err(e) => warn!(error = %e, "reload: keeping the previous configuration"),
                    }
                    state.on_reload();
                    sd::ready(&format!("watching {tracked}"));
                }
                _ => {}
            },
            Some(loss) = lost_rx.recv() => {
                // Stop writing before anything else: builds are killed, and the reconcile in
                // flight is dropped here, at its current await (it writes nothing after), with no
                // grace period; nothing re-applies drift after this point. Then exit rather than
                // step down in-process: a fresh process (the Pod's container restarted) waits as a
                // standby with no state left from leading, as kube-controller-manager exits when
                // it stops leading.
                let _ = cancel_tx.send(true);
                if let Some(p) = &preempt_tx {
                    let _ = p.send(true);
                }
                let cancelled = inflight.take().is_some();
                error!(%loss, reconcile_cancelled = cancelled, "stopped leading: writing nothing more; exiting");
                exit = Err(DaemonError::LeaseLost { loss });
                break;
            }
            mut done = async { inflight.as_mut().expect("guarded by the branch condition").await }, if inflight.is_some() => {
                inflight = None;
                preempt_tx = None;
                if let Some(t) = done.targets.clone() {
                    targets = t;
                    page.targets.send_if_modified(|old| {
                        let changed = *old != targets;
                        old.clone_from(&targets);
                        changed
                    });
                }
                for (stack, names) in std::mem::take(&mut done.secrets) {
                    state.set_secrets(stack, names);
                }
                for g in std::mem::take(&mut done.leases) {
                    renewers.push(spawn_renewer(g.clone(), lost_tx.clone()));
                    leases.push(g);
                }
                clusters = std::mem::take(&mut done.clusters);
                if let Some(p) = done.prepared.clone() {
                    // The commit's own local URLs: served from now on, as its Pods are.
                    routes = local_routes(&cfg, forward::routes_of(p.stacks.iter().map(|s| &s.stack), cfg.options.context.as_deref()));
                    prepared_cache = Some(p);
                }
                // Also retries a port that was in use at the last try.
                forwards.ensure(&routes, &mut clusters, cfg.options.kubeconfig.as_deref()).await;
                record_urls(&forwards, &mut holder, &mut file_lock);
                let span = info_span!("reconcile", trigger = done.trigger.as_str(), commit = %desired::short_id(&done.commit));
                let _enter = span.enter();
                let fin = job::finished(&done.outcome);
                let after = state.on_done(fin.clone(), Instant::now().into_std());
                job::report(&done, &fin, &after, &metrics);
                page.bus.send(job::page_event(&done, &fin));
                // The note on the commit and, if asked and allowed, its revert (a new tip the
                // ref watch picks up). Neither can fail the deploy.
                // On a blocking thread: git status, file writes and fsyncs must not stall the loop.
                let input = outcome::After::of(&done, &fin, &after);
                let mut h = history;
                history = match tokio::task::spawn_blocking(move || {
                    h.after(&input);
                    h
                })
                .await
                {
                    Ok(h) => h,
                    Err(e) => {
                        error!(error = %e, "writing the deploy note failed unexpectedly; notes and auto-revert start afresh");
                        outcome::GitHistory::new(dirs.root.clone(), tracked.clone(), cfg.remote.is_some())
                    }
                };
                if let job::Outcome::Reconciled(_) = done.outcome {
                    // Watch what converge now manages.
                    for t in &targets {
                        let kinds = done.kinds.get(&t.stack).cloned().unwrap_or_default();
                        if let Ok(c) = clusters.get(cfg.options.kubeconfig.as_deref(), &t.context).await {
                            drift_watch.ensure(&c, &t.stack, &t.namespace, &kinds, &drift_tx).await;
                        }
                    }
                    drift_watch.retain(&targets.iter().map(|t| t.stack.clone()).collect());
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
                            page.bus.send(page::Event::Tip { commit: tip.clone() });
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
            Some(note) = drift_rx.recv() => {
                if matches!(note, Note::Record { .. }) {
                    // The status record moved: the page reads it again.
                    page.bus.send(page::Event::Refresh);
                }
                match note {
                    Note::Drift(ev) if ev.deleted && own_deletions.take(&ev.stack, &ev.object, ev.uid.as_deref()) => {
                        debug!(stack = %ev.stack, object = %ev.object, "deleted by converge's prune: not drift");
                    }
                    Note::Drift(ev) => {
                        metrics.drift_event();
                        let what = if ev.deleted { "deleted" } else { "changed" };
                        let now = Instant::now();
                        let verdict = state.on_drift_in(&ev.stack, &ev.component, &ev.object, now.into_std());
                        page.bus.send(page::Event::Drift {
                            stack: ev.stack.clone(),
                            object: ev.object.clone(),
                            manager: ev.manager.clone(),
                            deleted: ev.deleted,
                            paused: matches!(verdict, DriftVerdict::Paused(_)),
                        });
                        if let DriftVerdict::Paused(until) = verdict {
                            let left = until.saturating_duration_since(now.into_std()).as_secs();
                            info!(stack = %ev.stack, object = %ev.object, manager = %ev.manager, paused_s = left, "drift: {what} out of band; paused, left alone until the pause ends");
                        } else {
                            info!(stack = %ev.stack, object = %ev.object, manager = %ev.manager, "drift: {what} out of band");
                        }
                        match verdict {
                            DriftVerdict::Paused(_) => {}
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
                    Note::Pause { stack, pauses } => {
                        let (now, wall) = (Instant::now(), chrono::Utc::now());
                        let ends = pauses
                            .pauses
                            .iter()
                            .map(|p| {
                                let left = (p.until - wall).to_std().unwrap_or_default();
                                (p.component.clone(), (now + left).into_std())
                            })
                            .collect();
                        for p in pauses.pauses.iter().filter(|p| p.active(wall)) {
                            info!(%stack, paused = %p.scope(), until = %p.until.to_rfc3339_opts(chrono::SecondsFormat::Secs, true), by = %p.by, "paused: drift is left alone until then (new commits are still applied)");
                        }
                        for c in state.on_pauses(&stack, ends, now.into_std()) {
                            let scope = c.map_or("the stack".to_string(), |c| format!("component {c}"));
                            info!(%stack, paused = %scope, "pause ended (resumed, or before this daemon saw it end); reporting what was changed by hand and restoring");
                        }
                    }
                    Note::Secret { stack, name } => {
                        if state.on_secret(&stack, &name) {
                            info!(%stack, secret = %name, "a Secret the stack reads changed; reconciling");
                        }
                    }
                }
            }
            _ = until(tokio_at(state.drift_at())), if state.drift_at().is_some() => {
                state.on_drift_due();
            }
            _ = until(tokio_at(state.pause_end_at())), if state.pause_end_at().is_some() => {
                for (stack, c) in state.on_pause_due(Instant::now().into_std()) {
                    let scope = c.map_or("the stack".to_string(), |c| format!("component {c}"));
                    info!(%stack, paused = %scope, "pause ended by itself; reporting what was changed by hand and restoring");
                }
            }
            _ = until(tokio_at(state.retry_at())), if state.retry_at().is_some() => {
                state.on_retry_due();
            }
            Some(()) = sync_rx.recv() => {
                info!("sync requested (converge sync)");
                state.on_sync();
                if pull.is_some() {
                    // In pull mode a sync reconciles what the remote holds now.
                    fetch_again |= fetching.is_some();
                    poll_at = Some(Instant::now());
                }
            }
            Some(()) = fetch_rx.recv() => {
                info!("fetch requested (signed webhook)");
                fetch_again |= fetching.is_some();
                poll_at = Some(Instant::now());
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
                if let Some(p) = pull.clone() {
                    let (root, b, allow) = (dirs.root.clone(), branch.clone(), cfg.allow_non_fast_forward);
                    fetching = Some(tokio::spawn(async move {
                        refs::fetch(&root, &p, &b, allow, pull::FETCH_TIMEOUT).await
                    }));
                }
            }
            res = async { fetching.as_mut().expect("guarded by the branch condition").await }, if fetching.is_some() => {
                fetching = None;
                let now = Instant::now();
                poll_at = Some(now + cfg.poll);
                match res {
                    Ok(Ok(moved)) => {
                        fetch_backoff.reset();
                        metrics.fetch(if moved.is_some() { "updated" } else { "unchanged" });
                    }
                    Ok(Err(e)) => {
                        metrics.fetch(pull::fetch_label(&e));
                        // Nothing moved: the deployed commit stays, nothing is deleted.
                        let at = Instant::from_std(fetch_backoff.fail(now.into_std()));
                        poll_at = Some(at);
                        let retry_in_s = at.saturating_duration_since(now).as_secs();
                        match e {
                            refs::RefsError::NonFastForward { .. } => error!(error = %e, retry_in_s, "pull refused"),
                            e => error!(error = %e, retry_in_s, "fetch failed; the deployed commit stays"),
                        }
                    }
                    Err(e) => warn!(error = %e, "fetch task failed"),
                }
                if std::mem::take(&mut fetch_again) {
                    poll_at = Some(now);
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
    forwards.stop();
    server.abort();
    page.stop();
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
