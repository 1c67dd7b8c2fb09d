//! Evidence gathering for `converge explain`: reads (never writes) the component's workloads,
//! newest ReplicaSet, Pods, Events, log tails, claims, StorageClasses, referenced Secrets (key
//! names only) and, when a Pod is unschedulable, every node's room. Each request is bounded by
//! the client's deadline; log reads have a shorter one of their own.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use k8s_openapi::api::apps::v1::ReplicaSet;
use k8s_openapi::api::core::v1::{Event, PersistentVolumeClaim, Pod};
use k8s_openapi::api::storage::v1::StorageClass as K8sStorageClass;
use kube::api::{Api, ListParams, LogParams};
use serde_json::Value;
use tracing::debug;

use super::{EventLine, Evidence, LogTail, SecretRef, StorageClass};
use crate::capacity::node_room;
use crate::cluster::{selector_of, values, Cluster, ClusterError};
use crate::desired::StackRef;
use crate::status::{self, ComponentStatus};
use crate::vocabulary::{LABEL_COMPONENT, LABEL_STACK};

/// How many log lines of a failing container are read.
pub const LOG_LINES: i64 = 30;
/// How long one log read may take (kubelet endpoints can hang when a node is unhealthy).
pub const LOG_TIMEOUT: Duration = Duration::from_secs(10);
/// How many recent Events are kept per component.
pub const EVENTS: usize = 25;

/// Components the desired state names, with their Secret references (empty when it could not
/// be read).
pub type Desired = BTreeMap<String, Vec<crate::desired::SecretRef>>;

/// Failures gathering evidence.
#[derive(Debug, thiserror::Error)]
pub enum GatherError {
    /// The cluster failed.
    #[error(transparent)]
    Cluster(#[from] ClusterError),
    /// The component is known neither to the desired state nor to the cluster.
    #[error("stack {stack} has no component `{name}` (known: {})", if known.is_empty() { "none".to_string() } else { known.join(", ") })]
    UnknownComponent {
        /// The stack.
        stack: String,
        /// The name asked for.
        name: String,
        /// The components that exist.
        known: Vec<String>,
    },
}

fn text<'a>(v: &'a Value, pointer: &str) -> &'a str {
    v.pointer(pointer).and_then(Value::as_str).unwrap_or("")
}

/// Drops literal env values (they may be configuration a person would rather not paste);
/// names and Secret/ConfigMap references stay.
pub fn redact_env(pod: &mut Value) {
    for list in ["/spec/containers", "/spec/initContainers"] {
        if let Some(cs) = pod.pointer_mut(list).and_then(Value::as_array_mut) {
            for c in cs {
                if let Some(env) = c.get_mut("env").and_then(Value::as_array_mut) {
                    for e in env {
                        if let Some(o) = e.as_object_mut() {
                            if o.remove("value").is_some() {
                                o.insert("value".into(), Value::String("<set>".into()));
                            }
                        }
                    }
                }
            }
        }
    }
    if let Some(m) = pod.pointer_mut("/metadata").and_then(Value::as_object_mut) {
        m.remove("managedFields");
    }
}

/// Secret references of a Pod spec: `env[].valueFrom.secretKeyRef` and `envFrom[].secretRef`.
pub fn secret_refs(pod_spec: &Value) -> Vec<SecretRef> {
    let mut out = Vec::new();
    for list in ["containers", "initContainers"] {
        for c in pod_spec
            .get(list)
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
        {
            for e in c.get("env").and_then(Value::as_array).into_iter().flatten() {
                if let Some(r) = e.pointer("/valueFrom/secretKeyRef") {
                    out.push(SecretRef {
                        secret: text(r, "/name").into(),
                        key: text(r, "/key").into(),
                        optional: r.get("optional").and_then(Value::as_bool).unwrap_or(false),
                    });
                }
            }
            for e in c
                .get("envFrom")
                .and_then(Value::as_array)
                .into_iter()
                .flatten()
            {
                if let Some(r) = e.get("secretRef") {
                    out.push(SecretRef {
                        secret: text(r, "/name").into(),
                        key: String::new(),
                        optional: r.get("optional").and_then(Value::as_bool).unwrap_or(false),
                    });
                }
            }
        }
    }
    out
}

fn event_line(e: &Value) -> EventLine {
    let last = [
        "/lastTimestamp",
        "/eventTime",
        "/firstTimestamp",
        "/metadata/creationTimestamp",
    ]
    .iter()
    .map(|p| text(e, p))
    .find(|t| !t.is_empty())
    .unwrap_or("")
    .to_string();
    EventLine {
        object: format!(
            "{}/{}",
            text(e, "/involvedObject/kind"),
            text(e, "/involvedObject/name")
        ),
        kind: text(e, "/type").into(),
        reason: text(e, "/reason").into(),
        message: text(e, "/message").trim().into(),
        count: e.get("count").and_then(Value::as_i64).unwrap_or(1),
        last,
    }
}

/// Whether a container status is worth a log read: crashing, restarted or terminated.
fn failing_container(cs: &Value) -> bool {
    text(cs, "/state/waiting/reason") == "CrashLoopBackOff"
        || cs.get("restartCount").and_then(Value::as_i64).unwrap_or(0) > 0
        || cs.pointer("/state/terminated").is_some()
}

/// Gathers the evidence for every component of `target` in its namespace (or for `component`).
pub async fn gather(
    cluster: &Cluster,
    target: &StackRef,
    component: Option<&str>,
    desired: &Desired,
) -> Result<Vec<Evidence>, GatherError> {
    let client = cluster.client().clone();
    let ns = target.namespace.as_str();
    let recorded: Vec<ComponentStatus> = status::load(&client, ns, &target.stack)
        .await?
        .map(|s| s.components)
        .unwrap_or_default();
    let stack_sel = format!("{LABEL_STACK}={}", target.stack);
    let by_stack = ListParams::default().labels(&stack_sel);
    let workloads: Vec<Value> = status::view::counted_workloads(cluster, ns, &by_stack)
        .await?
        .into_iter()
        .map(|(_, w)| w)
        .collect();
    let component_of = |w: &Value| -> String {
        w.pointer("/metadata/labels")
            .and_then(|l| l.get(LABEL_COMPONENT))
            .and_then(Value::as_str)
            .unwrap_or("")
            .to_string()
    };
    let mut known: BTreeSet<String> = desired.keys().cloned().collect();
    known.extend(recorded.iter().map(|c| c.name.clone()));
    known.extend(workloads.iter().map(component_of).filter(|c| !c.is_empty()));
    let names: Vec<String> = match component {
        Some(c) if known.contains(c) => vec![c.to_string()],
        Some(c) => {
            return Err(GatherError::UnknownComponent {
                stack: target.stack.clone(),
                name: c.to_string(),
                known: known.into_iter().collect(),
            })
        }
        None => known.into_iter().collect(),
    };
    let events = values(cluster.list_in::<Event>(ns, &ListParams::default()).await?);
    let mut out = Vec::new();
    for name in names {
        let mut ev = Evidence {
            stack: target.stack.clone(),
            dir: target.dir.clone(),
            namespace: ns.into(),
            component: name.clone(),
            recorded: recorded.iter().find(|c| c.name == name).cloned(),
            ..Evidence::default()
        };
        ev.workloads = workloads
            .iter()
            .filter(|w| component_of(w) == name)
            .cloned()
            .map(|mut w| {
                redact_env_template(&mut w);
                w
            })
            .collect();
        let from_desired = desired.get(&name).into_iter().flatten();
        gather_component(cluster, from_desired, &mut ev, &events).await?;
        out.push(ev);
    }
    Ok(out)
}

fn redact_env_template(workload: &mut Value) {
    if let Some(m) = workload
        .pointer_mut("/metadata")
        .and_then(Value::as_object_mut)
    {
        m.remove("managedFields");
        if let Some(a) = m.get_mut("annotations").and_then(Value::as_object_mut) {
            a.remove(crate::vocabulary::LAST_APPLIED);
        }
    }
    if let Some(t) = workload.pointer_mut("/spec/template") {
        redact_env(t);
    }
}

async fn gather_component(
    cluster: &Cluster,
    from_desired: impl Iterator<Item = &crate::desired::SecretRef>,
    ev: &mut Evidence,
    events: &[Value],
) -> Result<(), ClusterError> {
    let client = cluster.client().clone();
    let ns = ev.namespace.clone();
    let pods_api = Api::<Pod>::namespaced(client.clone(), &ns);
    let mut claim_names: BTreeSet<String> = BTreeSet::new();
    let mut refs: BTreeSet<SecretRef> = from_desired
        .map(|r| SecretRef {
            secret: r.secret.clone(),
            key: r.key.clone(),
            optional: r.optional,
        })
        .collect();
    for w in ev.workloads.clone() {
        let Some(sel) = selector_of(&w) else {
            continue;
        };
        if let Some(spec) = w.pointer("/spec/template/spec") {
            refs.extend(secret_refs(spec));
        }
        if text(&w, "/kind") == "Deployment" {
            let rss = values(
                cluster
                    .list_in::<ReplicaSet>(&ns, &ListParams::default().labels(&sel))
                    .await?,
            );
            let rev = |r: &Value| -> i64 {
                text(
                    r,
                    "/metadata/annotations/deployment.kubernetes.io~1revision",
                )
                .parse()
                .unwrap_or(0)
            };
            if let Some(newest) = rss.into_iter().max_by_key(rev) {
                let mut newest = newest;
                redact_env_template(&mut newest);
                ev.replica_set = Some(newest);
            }
        } else {
            // A StatefulSet's claims exist before (or without) its Pods.
            let replicas = w
                .pointer("/spec/replicas")
                .and_then(Value::as_i64)
                .unwrap_or(1);
            for t in w
                .pointer("/spec/volumeClaimTemplates")
                .and_then(Value::as_array)
                .into_iter()
                .flatten()
            {
                for i in 0..replicas.max(0) {
                    claim_names.insert(format!(
                        "{}-{}-{i}",
                        text(t, "/metadata/name"),
                        text(&w, "/metadata/name")
                    ));
                }
            }
        }
        let pods = values(
            cluster
                .list_in::<Pod>(&ns, &ListParams::default().labels(&sel))
                .await?,
        );
        for mut p in pods {
            for v in p
                .pointer("/spec/volumes")
                .and_then(Value::as_array)
                .into_iter()
                .flatten()
            {
                let c = text(v, "/persistentVolumeClaim/claimName");
                if !c.is_empty() {
                    claim_names.insert(c.to_string());
                }
            }
            redact_env(&mut p);
            ev.pods.push(p);
        }
    }
    // Events about anything above, oldest first.
    let mut names: BTreeSet<String> = BTreeSet::new();
    for v in ev
        .workloads
        .iter()
        .chain(ev.replica_set.iter())
        .chain(ev.pods.iter())
    {
        names.insert(text(v, "/metadata/name").to_string());
    }
    names.extend(claim_names.iter().cloned());
    let mut lines: Vec<EventLine> = events
        .iter()
        .filter(|e| names.contains(text(e, "/involvedObject/name")))
        .map(event_line)
        .collect();
    lines.sort_by(|a, b| a.last.cmp(&b.last));
    let skip = lines.len().saturating_sub(EVENTS);
    ev.events = lines.into_iter().skip(skip).collect();

    // Log tails of failing containers.
    for p in ev.pods.clone() {
        let pod = text(&p, "/metadata/name").to_string();
        for cs in p
            .pointer("/status/containerStatuses")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
            .filter(|cs| failing_container(cs))
        {
            let container = text(cs, "/name").to_string();
            if let Some(tail) = log_tail(&pods_api, &pod, &container).await {
                ev.logs.push(tail);
            }
        }
    }

    // Claims, and the storage classes when one is pending.
    for c in &claim_names {
        if let Some(claim) = cluster.get_in::<PersistentVolumeClaim>(&ns, c).await? {
            if let Ok(mut v) = serde_json::to_value(&claim) {
                if let Some(m) = v.pointer_mut("/metadata").and_then(Value::as_object_mut) {
                    m.remove("managedFields");
                }
                ev.claims.push(v);
            }
        }
    }
    if ev
        .claims
        .iter()
        .any(|c| text(c, "/status/phase") == "Pending")
    {
        let classes = values(
            cluster
                .list_global::<K8sStorageClass>(&ListParams::default())
                .await?,
        );
        ev.storage_classes = classes
            .iter()
            .map(|c| StorageClass {
                name: text(c, "/metadata/name").into(),
                default: text(
                    c,
                    "/metadata/annotations/storageclass.kubernetes.io~1is-default-class",
                ) == "true",
                provisioner: text(c, "/provisioner").into(),
            })
            .collect();
    }

    // Secrets: key names only, never values.
    ev.secret_refs = refs.into_iter().collect();
    for name in ev
        .secret_refs
        .iter()
        .map(|r| r.secret.clone())
        .collect::<BTreeSet<_>>()
    {
        let keys = cluster.secret_keys(&ns, &name).await?;
        ev.secrets
            .insert(name, keys.map(|k| k.into_iter().collect()));
    }

    // Room on the nodes, when the scheduler found none.
    let unschedulable = ev.pods.iter().any(|p| {
        p.pointer("/status/conditions")
            .and_then(Value::as_array)
            .is_some_and(|cs| cs.iter().any(|c| text(c, "/reason") == "Unschedulable"))
    });
    if unschedulable {
        ev.nodes = node_room(cluster).await?;
    }
    Ok(())
}

async fn log_tail(api: &Api<Pod>, pod: &str, container: &str) -> Option<LogTail> {
    // A crash-looping container is caught in one of two moments: backing off (the crashed
    // instance is `previous`) or just exited (it is the current one, and the kubelet may
    // already have removed the instance before it). Both are asked; a kubelet notice in place
    // of a log means the status moved on under us, so the pair is asked again.
    for attempt in 0..LOG_ATTEMPTS {
        if attempt > 0 {
            tokio::time::sleep(LOG_RETRY_PAUSE).await;
        }
        for previous in [true, false] {
            let lp = LogParams {
                container: Some(container.to_string()),
                tail_lines: Some(LOG_LINES),
                previous,
                ..LogParams::default()
            };
            match tokio::time::timeout(LOG_TIMEOUT, api.logs(pod, &lp)).await {
                Ok(Ok(text)) if is_kubelet_notice(&text) => {
                    debug!(pod, container, previous, notice = text.trim(), "log gone")
                }
                Ok(Ok(text)) if !text.trim().is_empty() => {
                    let lines: Vec<String> = text.lines().map(str::to_string).collect();
                    let skip = lines.len().saturating_sub(LOG_LINES as usize);
                    return Some(LogTail {
                        pod: pod.into(),
                        container: container.into(),
                        previous,
                        lines: lines.into_iter().skip(skip).collect(),
                    });
                }
                Ok(Ok(_)) => continue,
                Ok(Err(e)) => debug!(pod, container, previous, error = %e, "no log"),
                Err(_) => debug!(pod, container, previous, "log read timed out"),
            }
        }
    }
    None
}

/// How many times the previous/current pair is asked when the kubelet says a log is gone.
const LOG_ATTEMPTS: u32 = 3;
/// Long enough for the kubelet to publish the next container status.
const LOG_RETRY_PAUSE: Duration = Duration::from_millis(700);

/// Whether a log body is the kubelet's notice that the container (and its log) was removed.
///
/// The kubelet has already answered 200 when it finds the container gone, so the notice
/// arrives as the body (kuberuntime_container.go, `GetContainerLogs`:
/// `unable to retrieve container logs for %v`), never as an error.
fn is_kubelet_notice(text: &str) -> bool {
    let text = text.trim();
    text.starts_with("unable to retrieve container logs for ") && !text.contains('\n')
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn the_kubelets_notice_that_a_container_is_gone_is_not_a_log() {
        // Exact text of a kubelet (v1.35.8) answering for a garbage-collected container.
        assert!(super::is_kubelet_notice(
            "unable to retrieve container logs for containerd://ad00ef9ee9dfd5bf6009c02ac4d5fbe768cc5e728c454740fd802564c13be92e\n"
        ));
        assert!(!super::is_kubelet_notice(
            "converge-test: backend refuses to start\n"
        ));
        // An app that prints the same words among its own lines is the app's log.
        assert!(!super::is_kubelet_notice(
            "starting\nunable to retrieve container logs for x\n"
        ));
    }

    #[test]
    fn secret_references_come_from_env_and_env_from() {
        let spec = json!({"containers": [{"name": "a",
            "env": [{"name": "X", "valueFrom": {"secretKeyRef": {"name": "s", "key": "k"}}},
                    {"name": "Y", "valueFrom": {"secretKeyRef": {"name": "s", "key": "o", "optional": true}}},
                    {"name": "Z", "value": "plain"}],
            "envFrom": [{"secretRef": {"name": "all"}}]}]});
        assert_eq!(
            secret_refs(&spec),
            [
                SecretRef {
                    secret: "s".into(),
                    key: "k".into(),
                    optional: false
                },
                SecretRef {
                    secret: "s".into(),
                    key: "o".into(),
                    optional: true
                },
                SecretRef {
                    secret: "all".into(),
                    key: String::new(),
                    optional: false
                },
            ]
        );
    }

    #[test]
    fn literal_env_values_are_redacted_from_the_evidence() {
        let mut pod = json!({"metadata": {"name": "p", "managedFields": []}, "spec": {"containers": [{"name": "a",
            "env": [{"name": "Z", "value": "do-not-show"}, {"name": "X", "valueFrom": {"secretKeyRef": {"name": "s", "key": "k"}}}]}]}});
        redact_env(&mut pod);
        let text = pod.to_string();
        assert!(!text.contains("do-not-show"));
        assert!(text.contains("secretKeyRef"));
        assert!(pod.pointer("/metadata/managedFields").is_none());
    }

    #[test]
    fn a_workload_selector_is_its_match_labels() {
        let w = json!({"spec": {"selector": {"matchLabels": {"a": "1", "b": "2"}}}});
        assert_eq!(selector_of(&w).as_deref(), Some("a=1,b=2"));
        assert_eq!(selector_of(&json!({})), None);
    }
}
