//! The health wait: until every awaited workload is ready, woken by a watch of those objects,
//! failing fast on Pods stuck in a state that does not clear ([`health::verdict`]), and stopped
//! at once when newer work asks (the one boundary where stopping loses nothing).

use std::collections::{BTreeMap, HashMap};
use std::time::{Duration, Instant};

use futures::StreamExt;
use kube::core::GroupVersionKind;
use serde_json::Value;
use tracing::{debug, info};

use super::{Run, PROGRESS};
use crate::cluster::health::{self, Health, Verdict};
use crate::cluster::{inventory, kinds, ObjectKey};

/// How often a health wait looks for Pods stuck in a failing state (changes to the awaited
/// objects themselves wake it at once).
const HEALTH_POLL: Duration = Duration::from_secs(2);
/// How long a health wait lets a burst of watch events settle before looking again.
const HEALTH_SETTLE: Duration = Duration::from_millis(20);

pub use crate::reconcile::step::HealthFailure;

impl HealthFailure {
    fn of(key: &ObjectKey, message: String) -> Self {
        HealthFailure {
            objects: vec![key.clone()],
            message,
        }
    }

    /// Whether it failed on `key`.
    pub fn names(&self, key: &ObjectKey) -> bool {
        self.objects
            .iter()
            .any(|o| inventory::id(o) == inventory::id(key))
    }
}

/// Why a health wait ended without everything healthy.
pub(super) enum Wait {
    /// Not healthy: on what, and why.
    Failed(HealthFailure),
    /// Newer work is waiting (see [`crate::reconcile::Options::preempt`]).
    Preempted,
}

impl Run<'_> {
    /// Whether newer work asked this run to stop at its next health wait.
    fn preempt_requested(&self) -> bool {
        self.opts.preempt.as_ref().is_some_and(|p| *p.borrow())
    }

    /// Waits until every object in `keys` is healthy; fails fast on Pods stuck in a failing
    /// state. When `preemptible`, stops as soon as newer work asks (see [`Options::preempt`]).
    pub(super) async fn wait_healthy(
        &mut self,
        keys: &[ObjectKey],
        preemptible: bool,
    ) -> Result<(), Wait> {
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
                    .is_some_and(|v| kinds::health(&key.kind, v) == Health::Ready);
                if ready_now {
                    continue;
                }
                let live = match self.cluster.get(&key).await {
                    Ok(Some(o)) => serde_json::to_value(&o).unwrap_or(Value::Null),
                    Ok(None) => {
                        return Err(Wait::Failed(HealthFailure::of(
                            &key,
                            format!("{key} does not exist"),
                        )))
                    }
                    Err(e) => return Err(Wait::Failed(HealthFailure::of(&key, e.to_string()))),
                };
                self.health.insert(id, (key.clone(), live.clone()));
                match kinds::health(&key.kind, &live) {
                    Health::Ready => {}
                    Health::Failed(why) => {
                        let message = format!("{}: {why}", key.short());
                        return Err(Wait::Failed(HealthFailure::of(&key, message)));
                    }
                    Health::Progressing(msg) => {
                        let counts = kinds::ready_counts(&key.kind, &live)
                            .map(|(r, d)| format!(" {r}/{d} ready"))
                            .unwrap_or_default();
                        let mut line = format!("{}{counts} ({msg})", key.short());
                        if let Some((pod, why, message)) = self.stuck_pod(&live).await {
                            last_problem
                                .insert(key.short(), format!("pod {pod} is {why}: {message}"));
                            let since = *first_seen
                                .entry(format!("{pod}/{why}"))
                                .or_insert_with(Instant::now);
                            let window = self.opts.fail_fast.as_secs();
                            line = match health::verdict(&why, since.elapsed(), self.opts.fail_fast) {
                                Verdict::FailNow => {
                                    let message = format!(
                                        "{}: pod {pod} is {why}: {message} (still failing after the {window}s fail-fast window)",
                                        key.short()
                                    );
                                    return Err(Wait::Failed(HealthFailure::of(&key, message)));
                                }
                                Verdict::FailsIn(left) => format!(
                                    "{}{counts}: pod {pod} is {why}; fails in {}s unless it recovers ({window}s fail-fast window)",
                                    key.short(),
                                    left.as_secs().max(1)
                                ),
                                Verdict::KeepWaiting => {
                                    format!("{}{counts}: pod {pod} is {why}: {message}", key.short())
                                }
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
                return Err(Wait::Failed(HealthFailure {
                    message: format!(
                        "not healthy within {}s: {}",
                        self.opts.timeout.as_secs(),
                        names.join(", ")
                    ),
                    objects: still,
                }));
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

    /// Notes that the wait stopped for newer work.
    fn preempted_at(&mut self, waiting: &[ObjectKey]) -> Wait {
        let names: Vec<String> = waiting.iter().map(ObjectKey::short).collect();
        info!(waiting = %names.join(", "), "health wait preempted: newer work is waiting");
        self.preempted = true;
        Wait::Preempted
    }

    /// The first Pod of `workload` stuck in a failing state: (pod, reason, message).
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
}
