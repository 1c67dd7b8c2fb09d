//! The end of a run: its outcome as a reason and message, each component's health, the status
//! record (through [`record::write`], the one writer) and the report the caller prints.

use std::collections::BTreeMap;
use std::time::Instant;

use serde_json::Value;
use tracing::warn;

use super::Run;
use crate::cluster::health::{self, Health};
use crate::cluster::{order, RequestCounts};
use crate::desired;
use crate::outcome::{Next, Reason};
use crate::reconcile::record;
use crate::reconcile::step::Failure;
use crate::reconcile::StackReport;
use crate::status::{self, ComponentStatus, HistoryEntry, StackStatus};
use crate::vocabulary::LABEL_COMPONENT;

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

impl Run<'_> {
    /// Ends the run: the outcome of `result`, the status record written (when it says something
    /// new and the old one could be read), and the report.
    pub(in crate::reconcile) async fn finish(
        self,
        result: Result<(), Failure>,
        images: &BTreeMap<String, String>,
        started: Instant,
        before: RequestCounts,
    ) -> StackReport {
        let (ready, why, message) = match &result {
            Ok(()) => (
                true,
                Reason::Succeeded,
                format!("applied {}", desired::short_id(self.commit)),
            ),
            Err(f) => (false, f.reason(), f.to_string()),
        };
        let failed_step = result.as_ref().err().map(|f| f.step().as_str());
        let then = match &result {
            Ok(()) => Next::Done,
            // A cut-short wait is a failure's only when another one stopped the run first.
            Err(_) if self.preempted => Next::Superseded,
            // Only the first failed component is the reason: the commit waits for a new one
            // only when every failed component would fail the same way again.
            Err(Failure::Component { .. })
                if self
                    .failed
                    .values()
                    .any(|f| f.next() != Next::WaitForCommit) =>
            {
                Next::Retry
            }
            Err(f) => f.next(),
        };
        let preempted = then == Next::Superseded;
        let now = record::now();
        let components = self.component_status(images, &now);
        let old = self.old_status.clone();
        let last_healthy = if ready {
            self.commit.to_string()
        } else {
            old.as_ref()
                .map(|o| o.last_healthy_commit.clone())
                .unwrap_or_default()
        };
        let mut next = StackStatus {
            stack: self.stack.spec.name.clone(),
            namespace: self.ns().to_string(),
            dir: self.stack.dir.clone(),
            last_applied_commit: self.commit.to_string(),
            last_healthy_commit: last_healthy,
            ready,
            reason: why.as_str().to_string(),
            message: message.clone(),
            components,
            history: Vec::new(),
            auto_revert: None,
        };
        // This commit is converge's automatic revert: the record says so while it is applied.
        next.auto_revert = self
            .opts
            .auto_revert
            .iter()
            .chain(old.as_ref().and_then(|o| o.auto_revert.as_deref()))
            .find(|r| r.revert == self.commit)
            .cloned()
            .map(Box::new);
        if let Some(r) = &next.auto_revert {
            next.message = format!(
                "auto-revert of {} ({}): {}",
                desired::short_id(&r.failed),
                r.why,
                next.message
            );
        }
        if !self.hand_changes.is_empty() {
            next.message = format!(
                "{}; changed by hand during a pause, restored: {}",
                next.message,
                self.hand_changes.join("; ")
            );
        }
        // The tip the cluster should run is stalled: the record keeps saying so, whatever this
        // run of the last applied commit did (its own outcome is in the history and the report).
        if let Some(tip) = &self.opts.stalled_tip {
            next.ready = false;
            next.reason = tip.reason.to_string();
            next.message = if ready {
                tip.message.clone()
            } else {
                format!(
                    "{}; meanwhile {}: {message}",
                    tip.message,
                    desired::short_id(self.commit)
                )
            };
        }
        let duration = started.elapsed();
        let entry = HistoryEntry {
            commit: self.commit.to_string(),
            result: why.as_str().to_string(),
            duration_ms: duration.as_millis() as u64,
            time: now,
        };
        let mut errors: Vec<String> = self
            .health_failure
            .iter()
            .cloned()
            .chain(self.prune_errors.iter().map(ToString::to_string))
            .collect();
        if !ready && !preempted && !errors.contains(&message) {
            errors.insert(0, message);
        }
        // An unreachable cluster leaves nothing to write to, and a record that could not be read
        // (or kept aside) is never written over: its history would be lost.
        let status = if self.namespace_ready && self.status_read {
            let (status, saved) = record::write(self.cluster, old.as_ref(), next, entry).await;
            if let Err(e) = saved {
                warn!(error = %e, "status not recorded");
                errors.push(format!("recording status: {e}"));
            }
            status
        } else {
            status::advance(old.as_ref(), next, entry)
        };
        let after = self.cluster.requests();
        StackReport {
            stack: self.stack.spec.name.clone(),
            namespace: self.ns().to_string(),
            dir: self.stack.dir.clone(),
            commit: self.commit.to_string(),
            ready,
            reason: why,
            failed_step,
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
            hooks: self.hook_reports,
            next: then,
        }
    }

    /// Each component's image, replica counts and health as this run saw them.
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
                    self.health_failure
                        .iter()
                        .find(|e| keys.iter().any(|k| names_object(e, k)))
                };
                let (health, err) = if let Some(b) = self.blocked.get(name) {
                    ("Blocked", b.to_string())
                } else if let Some(f) = self.failed.get(name) {
                    ("Failed", f.message())
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
