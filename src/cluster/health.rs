//! Health of live objects, as pure functions over their JSON: rollout progress, failure reasons
//! of Pods. No I/O here, so every rule is unit-tested. Which rule judges which kind is the kind
//! table's ([`super::kinds`]).

use std::time::Duration;

use serde_json::Value;

/// The health of one object.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Health {
    /// Caught up and ready.
    Ready,
    /// Still rolling out; the message says what is missing.
    Progressing(String),
    /// Failed; the reason says why.
    Failed(String),
}

fn int(v: &Value, path: &[&str]) -> i64 {
    let mut cur = v;
    for p in path {
        match cur.get(p) {
            Some(n) => cur = n,
            None => return 0,
        }
    }
    cur.as_i64().unwrap_or(0)
}

fn text<'a>(v: &'a Value, path: &[&str]) -> Option<&'a str> {
    let mut cur = v;
    for p in path {
        cur = cur.get(p)?;
    }
    cur.as_str()
}

fn condition<'a>(obj: &'a Value, kind: &str) -> Option<&'a Value> {
    obj.get("status")?
        .get("conditions")?
        .as_array()?
        .iter()
        .find(|c| c.get("type").and_then(Value::as_str) == Some(kind))
}

fn observed(obj: &Value) -> bool {
    int(obj, &["status", "observedGeneration"]) >= int(obj, &["metadata", "generation"])
}

/// A Deployment: every replica updated and available, none old left.
pub(super) fn deployment(obj: &Value) -> Health {
    if let Some(c) = condition(obj, "Progressing") {
        if c.get("reason").and_then(Value::as_str) == Some("ProgressDeadlineExceeded") {
            let msg = c.get("message").and_then(Value::as_str).unwrap_or("");
            return Health::Failed(format!("ProgressDeadlineExceeded: {msg}"));
        }
    }
    if !observed(obj) {
        return Health::Progressing(
            "waiting for the controller to observe the new generation".into(),
        );
    }
    let want = obj
        .get("spec")
        .and_then(|s| s.get("replicas"))
        .and_then(Value::as_i64)
        .unwrap_or(1);
    let updated = int(obj, &["status", "updatedReplicas"]);
    let available = int(obj, &["status", "availableReplicas"]);
    let total = int(obj, &["status", "replicas"]);
    if updated < want {
        return Health::Progressing(format!("{updated} of {want} replicas updated"));
    }
    if total > updated {
        return Health::Progressing(format!(
            "{} old replicas pending termination",
            total - updated
        ));
    }
    if available < want {
        return Health::Progressing(format!("{available} of {want} updated replicas available"));
    }
    Health::Ready
}

/// A StatefulSet: every replica at the update revision and ready.
pub(super) fn statefulset(obj: &Value) -> Health {
    if !observed(obj) {
        return Health::Progressing(
            "waiting for the controller to observe the new generation".into(),
        );
    }
    let want = obj
        .get("spec")
        .and_then(|s| s.get("replicas"))
        .and_then(Value::as_i64)
        .unwrap_or(1);
    let ready = int(obj, &["status", "readyReplicas"]);
    let updated = int(obj, &["status", "updatedReplicas"]);
    let update = text(obj, &["status", "updateRevision"]);
    let current = text(obj, &["status", "currentRevision"]);
    let rolling = obj
        .pointer("/spec/updateStrategy/type")
        .and_then(Value::as_str)
        .unwrap_or("RollingUpdate")
        == "RollingUpdate";
    if rolling && want > 0 && (update.is_none() || update != current) && updated < want {
        return Health::Progressing(format!("{updated} of {want} replicas at the new revision"));
    }
    if ready < want {
        return Health::Progressing(format!("{ready} of {want} replicas ready"));
    }
    Health::Ready
}

/// A DaemonSet: every scheduled Pod updated and available.
pub(super) fn daemonset(obj: &Value) -> Health {
    if !observed(obj) {
        return Health::Progressing(
            "waiting for the controller to observe the new generation".into(),
        );
    }
    let want = int(obj, &["status", "desiredNumberScheduled"]);
    let updated = int(obj, &["status", "updatedNumberScheduled"]);
    let available = int(obj, &["status", "numberAvailable"]);
    if updated < want || available < want {
        return Health::Progressing(format!("{available} of {want} pods available"));
    }
    Health::Ready
}

/// A Job: complete; failed once its `Failed` condition is true.
pub(super) fn job(obj: &Value) -> Health {
    if let Some(c) = condition(obj, "Failed") {
        if c.get("status").and_then(Value::as_str) == Some("True") {
            let reason = c.get("reason").and_then(Value::as_str).unwrap_or("Failed");
            let msg = c.get("message").and_then(Value::as_str).unwrap_or("");
            return Health::Failed(format!("{reason}: {msg}"));
        }
    }
    match condition(obj, "Complete") {
        Some(c) if c.get("status").and_then(Value::as_str) == Some("True") => Health::Ready,
        _ => Health::Progressing(format!(
            "{} pods succeeded",
            int(obj, &["status", "succeeded"])
        )),
    }
}

/// A claim: bound, or waiting for its first consumer; failed once its volume is lost.
pub(super) fn pvc(obj: &Value) -> Health {
    match text(obj, &["status", "phase"]) {
        Some("Bound") => Health::Ready,
        Some("Lost") => Health::Failed("the claim lost its volume".into()),
        // A claim waiting for its first consumer must not block the Pod that will consume it.
        _ => Health::Ready,
    }
}

/// Container waiting reasons that will not fix themselves.
pub const FAIL_FAST_REASONS: &[&str] = &[
    "CrashLoopBackOff",
    "ImagePullBackOff",
    "ErrImagePull",
    "ErrImageNeverPull",
    "CreateContainerConfigError",
    "InvalidImageName",
    "CreateContainerError",
];

/// What a health wait does about a Pod problem (a reason of [`pod_problem`]) first seen
/// `seen_for` ago: the whole fail-fast policy, in one place.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// Fail the rollout now: the problem outlasted the fail-fast window.
    FailNow,
    /// It will not fix itself: the rollout fails unless it clears within this much longer.
    FailsIn(Duration),
    /// It may clear by itself: reported at the deadline, never failed fast.
    KeepWaiting,
}

/// Decides what a Pod problem means for the rollout waiting on it.
pub fn verdict(reason: &str, seen_for: Duration, fail_fast: Duration) -> Verdict {
    // Unschedulable often clears by itself (a volume being bound, a node joining); a container
    // that keeps crashing or cannot pull its image, or was killed for memory, does not.
    let fatal = FAIL_FAST_REASONS.contains(&reason) || reason == "OOMKilled";
    if !fatal {
        Verdict::KeepWaiting
    } else if seen_for >= fail_fast {
        Verdict::FailNow
    } else {
        Verdict::FailsIn(fail_fast - seen_for)
    }
}

/// Why a Pod is stuck, when it is: (reason, message).
pub fn pod_problem(pod: &Value) -> Option<(String, String)> {
    let status = pod.get("status")?;
    for list in ["initContainerStatuses", "containerStatuses"] {
        for cs in status
            .get(list)
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
        {
            let container = cs.get("name").and_then(Value::as_str).unwrap_or("");
            if let Some(w) = cs.pointer("/state/waiting") {
                let reason = w.get("reason").and_then(Value::as_str).unwrap_or("");
                if FAIL_FAST_REASONS.contains(&reason) {
                    let msg = w.get("message").and_then(Value::as_str).unwrap_or("");
                    let last = cs
                        .pointer("/lastState/terminated/reason")
                        .and_then(Value::as_str)
                        .map(|r| format!(" (last exit: {r})"))
                        .unwrap_or_default();
                    return Some((
                        reason.to_string(),
                        format!("container {container}: {msg}{last}"),
                    ));
                }
            }
            if cs
                .pointer("/lastState/terminated/reason")
                .and_then(Value::as_str)
                == Some("OOMKilled")
            {
                return Some((
                    "OOMKilled".into(),
                    format!(
                        "container {container} was killed for using more memory than its limit"
                    ),
                ));
            }
        }
    }
    if let Some(c) = condition(pod, "PodScheduled") {
        if c.get("reason").and_then(Value::as_str) == Some("Unschedulable") {
            let msg = c.get("message").and_then(Value::as_str).unwrap_or("");
            return Some(("Unschedulable".into(), msg.to_string()));
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn the_verdict_fails_fast_only_on_problems_that_do_not_clear() {
        let window = Duration::from_secs(30);
        let s = Duration::from_secs;
        assert_eq!(verdict("CrashLoopBackOff", s(31), window), Verdict::FailNow);
        assert_eq!(verdict("CrashLoopBackOff", s(30), window), Verdict::FailNow);
        assert_eq!(
            verdict("ImagePullBackOff", s(10), window),
            Verdict::FailsIn(s(20))
        );
        assert_eq!(verdict("OOMKilled", s(40), window), Verdict::FailNow);
        assert_eq!(
            verdict("Unschedulable", s(600), window),
            Verdict::KeepWaiting
        );
        assert_eq!(verdict("", s(600), window), Verdict::KeepWaiting);
    }

    #[test]
    fn a_deployment_is_ready_when_updated_available_and_observed() {
        let d = json!({"metadata": {"generation": 2}, "spec": {"replicas": 2},
            "status": {"observedGeneration": 2, "replicas": 2, "updatedReplicas": 2, "availableReplicas": 2}});
        assert_eq!(deployment(&d), Health::Ready);
        let stale = json!({"metadata": {"generation": 3}, "spec": {"replicas": 2},
            "status": {"observedGeneration": 2, "replicas": 2, "updatedReplicas": 2, "availableReplicas": 2}});
        assert!(matches!(deployment(&stale), Health::Progressing(_)));
        let rolling = json!({"metadata": {"generation": 2}, "spec": {"replicas": 2},
            "status": {"observedGeneration": 2, "replicas": 3, "updatedReplicas": 2, "availableReplicas": 2}});
        assert!(
            matches!(deployment(&rolling), Health::Progressing(m) if m.contains("old replicas"))
        );
    }

    #[test]
    fn progress_deadline_exceeded_is_a_failure() {
        let d = json!({"metadata": {"generation": 1}, "spec": {"replicas": 1},
            "status": {"observedGeneration": 1, "conditions": [{"type": "Progressing", "status": "False", "reason": "ProgressDeadlineExceeded", "message": "too slow"}]}});
        assert_eq!(
            deployment(&d),
            Health::Failed("ProgressDeadlineExceeded: too slow".into())
        );
    }

    #[test]
    fn a_statefulset_needs_its_update_revision_and_ready_replicas() {
        let s = json!({"metadata": {"generation": 1}, "spec": {"replicas": 1},
            "status": {"observedGeneration": 1, "readyReplicas": 1, "updatedReplicas": 1, "currentRevision": "a", "updateRevision": "a"}});
        assert_eq!(statefulset(&s), Health::Ready);
        let s = json!({"metadata": {"generation": 1}, "spec": {"replicas": 1},
            "status": {"observedGeneration": 1, "readyReplicas": 0, "updatedReplicas": 1, "currentRevision": "a", "updateRevision": "a"}});
        assert!(matches!(statefulset(&s), Health::Progressing(_)));
    }

    #[test]
    fn a_pending_claim_does_not_block() {
        assert_eq!(pvc(&json!({"status": {"phase": "Pending"}})), Health::Ready);
    }

    #[test]
    fn stuck_pods_name_their_reason() {
        let p = json!({"status": {"containerStatuses": [{"name": "app", "state": {"waiting": {"reason": "CrashLoopBackOff", "message": "back-off 10s"}}, "lastState": {"terminated": {"reason": "Error"}}}]}});
        assert_eq!(
            pod_problem(&p),
            Some((
                "CrashLoopBackOff".into(),
                "container app: back-off 10s (last exit: Error)".into()
            ))
        );
        let ok =
            json!({"status": {"containerStatuses": [{"name": "app", "state": {"running": {}}}]}});
        assert_eq!(pod_problem(&ok), None);
    }
}
