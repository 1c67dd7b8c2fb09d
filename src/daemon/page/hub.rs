//! The page's one task: folds the bus's events into the [`Model`], reads the cluster (the
//! status records with what the cluster shows now, and explain's finding for each unhealthy
//! component) when something happened, and publishes each new snapshot as JSON on a `watch`
//! channel, which never blocks and lets a slow reader skip to the newest.
//!
//! It reads the cluster only while someone looks: when a page opens or `/api/state` is asked
//! (unless the view is younger than 5 s), and while a page is open, after a reconcile ends, a
//! drift, a move of the status record, every 30 s otherwise (to see a Pod that starts
//! crashing), and while the cluster is unreachable every 2 s doubling to 30 s. A daemon whose
//! page nobody opens makes no request and holds no client for it. explain runs only for a
//! component that is not healthy, once per change of what the cluster says about it.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{mpsc, oneshot, watch};
use tokio::task::JoinHandle;
use tokio::time::Instant;
use tracing::debug;

use super::bus::Inbox;
use super::model::{Finding, Model};
use crate::cluster::Cluster;
use crate::reconcile::StackRef;
use crate::status::view::{self, Pick, StackView};
use crate::status::ComponentHealth;

/// Quiet time after an event before the cluster is read (a burst reads once).
/// The most askers waiting for one read of the cluster (more get the view as it is).
const MAX_WAITING: usize = 64;
const SETTLE: Duration = Duration::from_millis(150);
/// How often an open page has the cluster read when nothing happens.
const OPEN_PAGE: Duration = Duration::from_secs(30);
/// The first and the longest retry delay while the cluster does not answer.
const RETRY: (Duration, Duration) = (Duration::from_secs(2), Duration::from_secs(30));

/// A view of the cluster younger than this answers a page that opens without a new read.
const FRESH: Duration = Duration::from_secs(5);

/// What the HTTP side shares with the hub.
#[derive(Debug, Clone)]
pub struct Shared {
    /// The newest snapshot, as JSON.
    pub snapshot: watch::Receiver<Arc<str>>,
    /// Open event streams.
    pub open: Arc<AtomicUsize>,
    /// Asks for a current view: answered at once when it is, else after the next read.
    pub ask: mpsc::Sender<oneshot::Sender<()>>,
}

/// Where the hub reads from.
#[derive(Debug, Clone)]
pub struct Source {
    /// The kubeconfig file (`$KUBECONFIG` when absent).
    pub kubeconfig: Option<PathBuf>,
    /// The stacks the daemon manages (updated on reload and after reconciles).
    pub targets: watch::Receiver<Vec<StackRef>>,
}

/// explain's finding, kept while what the cluster says about the component stays the same.
type Explained = BTreeMap<(String, String), (String, Option<Finding>)>;

/// What one read of the cluster hands back.
struct Read {
    clusters: BTreeMap<String, Cluster>,
    explained: Explained,
    result: Result<Vec<StackView>, String>,
}

fn now_ms() -> i64 {
    chrono::Utc::now().timestamp_millis()
}

/// Runs the hub until every bus sender is gone.
pub async fn run(
    mut model: Model,
    mut inbox: Inbox,
    mut source: Source,
    tx: watch::Sender<Arc<str>>,
    shared: Shared,
    mut asks: mpsc::Receiver<oneshot::Sender<()>>,
) {
    let publish = |model: &Model| {
        let json = serde_json::to_string(&model.snapshot).unwrap_or_else(|_| "{}".into());
        tx.send_replace(Arc::from(json));
    };
    let looking = || shared.open.load(Ordering::Relaxed) > 0;
    let mut clusters = BTreeMap::new();
    let mut explained = Explained::new();
    let mut reading: Option<JoinHandle<Read>> = None;
    // Nobody has looked yet: nothing is read (no client, no request) until someone does.
    let mut due: Option<Instant> = None;
    let mut dirty = true;
    let mut waiting: Vec<oneshot::Sender<()>> = Vec::new();
    let mut retry = RETRY.0;
    let mut read_at: Option<Instant> = None;
    loop {
        if due.is_some_and(|d| d <= Instant::now()) && reading.is_none() {
            due = None;
            dirty = false;
            read_at = Some(Instant::now());
            let targets = source.targets.borrow().clone();
            let kubeconfig = source.kubeconfig.clone();
            let (c, e) = (
                std::mem::take(&mut clusters),
                std::mem::take(&mut explained),
            );
            reading = Some(tokio::spawn(read(kubeconfig, targets, c, e)));
        }
        tokio::select! {
            ev = inbox.recv() => {
                let Some(ev) = ev else { break };
                let mut again = model.apply(ev, now_ms());
                again |= inbox.take_lost();
                if again {
                    dirty = true;
                    if looking() {
                        let soon = Instant::now() + SETTLE;
                        due = Some(due.map_or(soon, |d| d.min(soon)));
                    }
                }
                publish(&model);
            }
            r = async { reading.as_mut().expect("guarded").await }, if reading.is_some() => {
                reading = None;
                let next = match r {
                    Ok(Read { clusters: c, explained: e, result }) => {
                        clusters = c;
                        explained = e;
                        match result {
                            Ok(views) => {
                                let findings = explained
                                    .iter()
                                    .filter_map(|(k, (_, f))| Some((k.clone(), f.clone()?)))
                                    .collect();
                                model.read_ok(&views, &findings, now_ms());
                                retry = RETRY.0;
                                OPEN_PAGE
                            }
                            Err(e) => {
                                debug!(error = %e, "page: the cluster did not answer");
                                model.read_failed(e, now_ms());
                                let wait = retry;
                                retry = (retry * 2).min(RETRY.1);
                                wait
                            }
                        }
                    }
                    Err(e) => {
                        debug!(error = %e, "page: reading the cluster failed unexpectedly");
                        RETRY.1
                    }
                };
                if looking() {
                    let at = Instant::now() + if dirty { SETTLE } else { next };
                    due = Some(due.map_or(at, |d| d.min(at)));
                }
                publish(&model);
                for w in waiting.drain(..) {
                    let _ = w.send(());
                }
            }
            Ok(()) = source.targets.changed() => {
                dirty = true;
                if looking() {
                    due = Some(Instant::now());
                }
            }
            Some(ask) = asks.recv() => {
                // A page opened or a program asked for the state: answer from a view that is
                // current, else read now and answer after.
                let fresh = !dirty && read_at.is_some_and(|t| t.elapsed() < FRESH);
                if fresh {
                    let _ = ask.send(());
                    if let Some(t) = read_at {
                        let at = t + OPEN_PAGE;
                        due = Some(due.map_or(at, |d| d.min(at)));
                    }
                } else {
                    // Askers that gave up (a `/api/state` past its wait, a closed page) are
                    // dropped, and the rest bounded: each asker is answered by the same read.
                    waiting.retain(|w| !w.is_closed());
                    if waiting.len() < MAX_WAITING {
                        waiting.push(ask);
                    }
                    due = Some(Instant::now());
                }
            }
            () = until(due), if reading.is_none() => {}
        }
    }
    if let Some(r) = reading {
        r.abort();
    }
}

async fn until(at: Option<Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

/// One read of every target's status record and live components, with explain's finding for
/// each unhealthy component (reused while its key is unchanged).
async fn read(
    kubeconfig: Option<PathBuf>,
    targets: Vec<StackRef>,
    mut clusters: BTreeMap<String, Cluster>,
    old: Explained,
) -> Read {
    let mut explained = Explained::new();
    let mut views = Vec::new();
    let mut failure = None;
    for t in &targets {
        let cluster = match clusters.get(&t.context) {
            Some(c) => c.clone(),
            None => match Cluster::connect(kubeconfig.as_deref(), Some(&t.context)).await {
                Ok(c) => {
                    clusters.insert(t.context.clone(), c.clone());
                    c
                }
                Err(e) => {
                    failure = Some(e.to_string());
                    continue;
                }
            },
        };
        let pick = Pick {
            stack: None,
            namespace: None,
            named: vec![t.clone()],
        };
        match view::gather(&cluster, &pick).await {
            Ok(g) => {
                for v in &g.stacks {
                    for c in v
                        .live
                        .iter()
                        .filter(|c| c.health != ComponentHealth::Healthy)
                    {
                        let id = (v.recorded.stack.clone(), c.name.clone());
                        let recorded_error = v
                            .recorded
                            .components
                            .iter()
                            .find(|r| r.name == c.name)
                            .map(|r| r.last_error.as_str())
                            .unwrap_or("");
                        let key = format!(
                            "{}|{}|{}|{}|{}|{}",
                            c.health,
                            c.reason,
                            c.ready,
                            c.desired,
                            recorded_error,
                            v.recorded.last_applied_commit
                        );
                        let finding = match old.get(&id) {
                            Some((k, f)) if *k == key => f.clone(),
                            _ => {
                                explain(&cluster, &v.recorded.stack, &v.recorded.namespace, &c.name)
                                    .await
                            }
                        };
                        explained.insert(id, (key, finding));
                    }
                }
                views.extend(g.stacks);
            }
            Err(e) => {
                // A connection that failed is made anew next time.
                clusters.remove(&t.context);
                failure = Some(e.to_string());
            }
        }
    }
    Read {
        clusters,
        explained,
        result: match failure {
            Some(e) => Err(e),
            None => Ok(views),
        },
    }
}

/// explain's most specific finding for one component; `None` when it finds nothing wrong or
/// cannot gather (the page then shows the cluster's own reason).
async fn explain(
    cluster: &Cluster,
    stack: &str,
    namespace: &str,
    component: &str,
) -> Option<Finding> {
    let target = StackRef {
        stack: stack.into(),
        namespace: namespace.into(),
        ..StackRef::default()
    };
    let evidence =
        match crate::explain::gather(cluster, &target, Some(component), &BTreeMap::new()).await {
            Ok(e) => e,
            Err(e) => {
                debug!(%stack, %component, error = %e, "page: explain could not gather");
                return None;
            }
        };
    evidence
        .iter()
        .flat_map(crate::explain::diagnose)
        .find(crate::explain::Diagnosis::is_problem)
        .map(|d| Finding {
            rule: d.rule,
            summary: d.summary,
            next_step: d.next_step,
        })
}
