//! The diagnosis rules: pure functions from [`Evidence`] to [`Diagnosis`], most specific first.
//! No I/O here; every rule has a unit test on a JSON fixture.

mod containers;
mod room;
mod secrets;
mod storage;
#[cfg(test)]
mod tests;

use serde_json::Value;

use super::{Diagnosis, Evidence};
use crate::cluster::kinds;
use crate::status::{component_health, ComponentFacts, ComponentHealth};

pub use containers::{crash_loop, image_not_present, oom_killed, readiness};
pub use room::unschedulable;
pub use secrets::missing_secret;
pub use storage::claim_pending;

/// Rule name: the image is not in the cluster's runtime or registry.
pub const IMAGE_NOT_PRESENT: &str = "ImageNotPresent";
/// Rule name: a container keeps crashing.
pub const CRASH_LOOP: &str = "CrashLoopBackOff";
/// Rule name: a referenced Secret or key is missing.
pub const MISSING_SECRET: &str = "MissingSecret";
/// Rule name: the scheduler finds no node with room.
pub const UNSCHEDULABLE: &str = "Unschedulable";
/// Rule name: the container runs but its readiness probe fails.
pub const READINESS: &str = "ReadinessProbeFailing";
/// Rule name: a claim waits for a volume.
pub const CLAIM_PENDING: &str = "ClaimPending";
/// Rule name: a container was killed for exceeding its memory limit.
pub const OOM_KILLED: &str = "OOMKilled";
/// Rule name: the rollout failed for a reason no rule knows.
pub const UNKNOWN: &str = "Unknown";
/// Rule name: nothing is wrong.
pub const HEALTHY: &str = "Healthy";

type Rule = fn(&Evidence) -> Option<Diagnosis>;

/// The rules in order: a cause before its symptoms (a missing claim before the Pod it leaves
/// unschedulable, an OOM kill before the crash loop it causes).
pub const RULES: &[(&str, Rule)] = &[
    (MISSING_SECRET, missing_secret),
    (CLAIM_PENDING, claim_pending),
    (UNSCHEDULABLE, unschedulable),
    (IMAGE_NOT_PRESENT, image_not_present),
    (OOM_KILLED, oom_killed),
    (CRASH_LOOP, crash_loop),
    (READINESS, readiness),
];

/// Every diagnosis the rules find for one component; `Unknown` when it is unhealthy and no rule
/// matches, `Healthy` when it is healthy.
pub fn diagnose(ev: &Evidence) -> Vec<Diagnosis> {
    let found: Vec<Diagnosis> = RULES.iter().filter_map(|(_, rule)| rule(ev)).collect();
    if !found.is_empty() {
        return found;
    }
    vec![fallback(ev)]
}

fn s<'a>(v: &'a Value, pointer: &str) -> &'a str {
    v.pointer(pointer).and_then(Value::as_str).unwrap_or("")
}

fn pod_name(pod: &Value) -> &str {
    s(pod, "/metadata/name")
}

/// Every container status of a Pod with its container spec.
fn containers(pod: &Value) -> Vec<(&Value, Option<&Value>)> {
    let mut out = Vec::new();
    for (statuses, specs) in [
        ("/status/initContainerStatuses", "/spec/initContainers"),
        ("/status/containerStatuses", "/spec/containers"),
    ] {
        let specs = pod.pointer(specs).and_then(Value::as_array);
        for cs in pod
            .pointer(statuses)
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
        {
            let name = s(cs, "/name");
            let spec = specs.and_then(|l| l.iter().find(|c| s(c, "/name") == name));
            out.push((cs, spec));
        }
    }
    out
}

fn events_about<'a>(ev: &'a Evidence, name: &str) -> impl Iterator<Item = &'a super::EventLine> {
    let name = name.to_string();
    ev.events
        .iter()
        .filter(move |e| e.object.rsplit('/').next() == Some(name.as_str()))
}

fn component_file(ev: &Evidence) -> String {
    format!("the `{}` component's desired-state file", ev.component)
}

/// What selects exactly this stack on any command, as `--stack {stack}{ns}`: its directory when
/// known, else its name followed by ` -n <namespace>` (two stacks may share a name).
pub fn stack_selector(ev: &Evidence) -> (String, String) {
    if ev.dir.is_empty() {
        (ev.stack.clone(), format!(" -n {}", ev.namespace))
    } else {
        (ev.dir.clone(), String::new())
    }
}

/// No rule matched: healthy, or unhealthy for a reason the rules do not know.
fn fallback(ev: &Evidence) -> Diagnosis {
    // What converge recorded holds (a component held back or failed is not healthy), then what
    // its workloads show now.
    let recorded = |h: ComponentHealth| {
        ev.recorded
            .as_ref()
            .filter(|r| r.health == h)
            .map(|r| r.last_error.as_str())
    };
    let (health, _) = component_health(&ComponentFacts {
        blocked: recorded(ComponentHealth::Blocked),
        failed: recorded(ComponentHealth::Failed),
        workloads: ev.workloads.iter().map(|w| (s(w, "/kind"), w)).collect(),
        searched: true,
        ..ComponentFacts::default()
    });
    if health == ComponentHealth::Healthy {
        let ready: Vec<String> = ev
            .workloads
            .iter()
            .map(|w| {
                let kind = s(w, "/kind");
                let (ready, desired) = kinds::ready_counts(kind, w).unwrap_or((0, 1));
                format!("{kind}/{}: {ready}/{desired} ready", s(w, "/metadata/name"))
            })
            .collect();
        return Diagnosis {
            component: ev.component.clone(),
            rule: HEALTHY.into(),
            summary: "healthy".into(),
            evidence: ready,
            next_step: "nothing to do".into(),
        };
    }
    let mut evidence = Vec::new();
    if let Some(r) = &ev.recorded {
        evidence.push(format!("converge recorded: {} {}", r.health, r.last_error));
    }
    for w in &ev.workloads {
        for c in w
            .pointer("/status/conditions")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
        {
            evidence.push(format!(
                "{}/{} condition {}={} {}: {}",
                s(w, "/kind"),
                s(w, "/metadata/name"),
                s(c, "/type"),
                s(c, "/status"),
                s(c, "/reason"),
                s(c, "/message")
            ));
        }
    }
    evidence.extend(
        ev.events
            .iter()
            .filter(|e| e.kind == "Warning")
            .map(|e| format!("event {} on {}: {}", e.reason, e.object, e.message)),
    );
    let (stack, ns) = stack_selector(ev);
    let (summary, next_step) = if ev.workloads.is_empty() {
        (
            "the component has no workload in the cluster".to_string(),
            format!(
                "converge has not applied it: see `converge status --stack {stack}{ns}` for why, or run `converge apply --stack {stack}{ns}`"
            ),
        )
    } else {
        (
            "not healthy, for a reason no rule recognises".to_string(),
            format!(
                "read the evidence above, `kubectl describe -n {} {}`, or ask an assistant with `converge explain {} --ai`",
                ev.namespace,
                ev.workloads
                    .first()
                    .map(|w| format!("{}/{}", s(w, "/kind").to_lowercase(), s(w, "/metadata/name")))
                    .unwrap_or_default(),
                ev.component
            ),
        )
    };
    Diagnosis {
        component: ev.component.clone(),
        rule: UNKNOWN.into(),
        summary,
        evidence,
        next_step,
    }
}
