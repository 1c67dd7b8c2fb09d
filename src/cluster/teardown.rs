//! Teardown (`converge down`): delete everything a stack's in-cluster inventory names, in reverse
//! apply order, wait until each group is gone, then the inventory and — last — the status record.
//!
//! It needs only the namespace and the stack's name, never the desired state, so a stack whose
//! directory was deleted from the repository can still be taken down. It never deletes
//! PersistentVolumeClaims (nor a Namespace, which would take its claims with it) unless asked to,
//! and never touches objects outside the inventory except the stack's own leftover hook Jobs and,
//! with volumes, the claims a StatefulSet of the inventory created from its templates.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::{ConfigMap, PersistentVolumeClaim};
use kube::api::{Api, DeleteParams, ListParams};
use kube::core::GroupVersionKind;
use kube::runtime::wait::{await_condition, conditions};
use serde::Serialize;
use serde_json::Value;
use tracing::{info, warn};

use super::inventory::{self, Inventory};
use super::kinds::{self, Data};
use super::{call, Cluster, ClusterError, ObjectKey};
use crate::vocabulary::{inventory_name, lease_name, pause_name, status_name, LABEL_STACK};

/// How a teardown behaves.
#[derive(Debug, Clone, Copy)]
pub struct TeardownOptions {
    /// Also delete PersistentVolumeClaims (those in the inventory and those a StatefulSet made
    /// from its volumeClaimTemplates) and a Namespace the inventory names.
    pub volumes: bool,
    /// How long the whole teardown may wait for objects to be gone.
    pub timeout: Duration,
}

impl Default for TeardownOptions {
    fn default() -> Self {
        Self {
            volumes: false,
            timeout: Duration::from_secs(300),
        }
    }
}

/// The pure teardown decision: groups of objects to delete, in order, and what stays.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TeardownPlan {
    /// Groups of one apply rank each, the highest rank (applied last) first.
    pub groups: Vec<Vec<ObjectKey>>,
    /// Objects that stay, with why.
    pub keep: Vec<(ObjectKey, String)>,
    /// A Namespace to delete after the status record (only with volumes).
    pub namespaces: Vec<ObjectKey>,
}

/// Why a volume stays.
pub const KEEP_VOLUME: &str = "volumes hold data; re-run with --volumes to delete them";
/// Why a namespace stays.
pub const KEEP_NAMESPACE: &str =
    "deleting a namespace deletes its volumes; re-run with --volumes to delete it";

/// Orders the inventory for deletion: reverse apply order (workloads before the Services,
/// claims, ConfigMaps and accounts they use), claims and namespaces only with `volumes`.
pub fn plan(inv: &Inventory, volumes: bool) -> TeardownPlan {
    let mut by_rank: BTreeMap<u8, Vec<ObjectKey>> = BTreeMap::new();
    let mut out = TeardownPlan::default();
    for key in inv.keys() {
        match kinds::data(&key.kind) {
            Data::Volume if !volumes => {
                out.keep.push((key.clone(), KEEP_VOLUME.into()));
            }
            Data::Namespace if !volumes => out.keep.push((key.clone(), KEEP_NAMESPACE.into())),
            Data::Namespace => out.namespaces.push(key.clone()),
            _ => by_rank
                .entry(kinds::rank(&key.kind))
                .or_default()
                .push(key.clone()),
        }
    }
    out.groups = by_rank.into_values().rev().collect();
    out
}

/// The claims a StatefulSet made from its volumeClaimTemplates: `<template>-<statefulset>-<n>`,
/// picked from `claims` (names of the claims in its namespace).
pub fn statefulset_claims(statefulset: &Value, claims: &[String]) -> Vec<String> {
    let Some(name) = statefulset
        .pointer("/metadata/name")
        .and_then(Value::as_str)
    else {
        return Vec::new();
    };
    let templates: Vec<&str> = statefulset
        .pointer("/spec/volumeClaimTemplates")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .filter_map(|t| t.pointer("/metadata/name").and_then(Value::as_str))
        .collect();
    let mut out: Vec<String> = claims
        .iter()
        .filter(|c| {
            templates.iter().any(|t| {
                c.strip_prefix(&format!("{t}-{name}-"))
                    .is_some_and(|n| !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit()))
            })
        })
        .cloned()
        .collect();
    out.sort();
    out
}

/// What one teardown did.
#[derive(Debug, Clone, Default, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct DownReport {
    /// The stack.
    pub stack: String,
    /// Its namespace.
    pub namespace: String,
    /// Nothing of the stack was in the cluster (a second `down`).
    pub nothing_to_do: bool,
    /// Objects deleted, in order.
    pub deleted: Vec<String>,
    /// Objects the inventory named that were already gone.
    pub already_gone: Vec<String>,
    /// Objects kept, with why.
    pub kept: Vec<String>,
    /// Whether the inventory and status record were removed.
    pub records_removed: bool,
    /// Every problem; when not empty, the inventory keeps what is left so `down` can be re-run.
    pub errors: Vec<String>,
    /// A running daemon (`host/pid`) holds the stack's Lease: nothing was deleted, since it
    /// would apply everything again at once.
    pub held_by: Option<String>,
    /// Wall time in milliseconds.
    pub duration_ms: u64,
}

impl DownReport {
    /// Whether everything asked for is gone.
    pub fn complete(&self) -> bool {
        self.errors.is_empty()
    }
}

fn configmap_key(namespace: &str, name: String) -> ObjectKey {
    ObjectKey {
        group: String::new(),
        version: "v1".into(),
        kind: "ConfigMap".into(),
        namespace: namespace.into(),
        name,
    }
}

/// Takes `stack` down where it was found: nowhere is nothing to do (a second `down`), several
/// namespaces is refused (which one goes is the person's call, never a guess).
pub async fn down_found(
    cluster: &Cluster,
    stack: &str,
    namespaces: &[String],
    opts: TeardownOptions,
) -> Result<DownReport, ClusterError> {
    match namespaces {
        [] => Ok(DownReport {
            stack: stack.into(),
            nothing_to_do: true,
            ..DownReport::default()
        }),
        [ns] => Ok(down(cluster, ns, stack, opts).await),
        several => Err(ClusterError::Config {
            message: format!(
                "stack {stack} is recorded in several namespaces ({}); pass -n <namespace> to say which one to take down",
                several.join(", ")
            ),
        }),
    }
}

/// Takes `stack` in `namespace` down: see the module documentation.
pub async fn down(
    cluster: &Cluster,
    namespace: &str,
    stack: &str,
    opts: TeardownOptions,
) -> DownReport {
    let started = Instant::now();
    let deadline = started + opts.timeout;
    let mut report = DownReport {
        stack: stack.into(),
        namespace: namespace.into(),
        ..DownReport::default()
    };
    let result = run(cluster, namespace, stack, opts, deadline, &mut report).await;
    if let Err(e) = result {
        report.errors.push(e.to_string());
    }
    report.duration_ms = started.elapsed().as_millis() as u64;
    report
}

async fn run(
    cluster: &Cluster,
    namespace: &str,
    stack: &str,
    opts: TeardownOptions,
    deadline: Instant,
    report: &mut DownReport,
) -> Result<(), ClusterError> {
    // A running daemon would re-create at once whatever this deletes: refuse before touching
    // anything, rather than leave a half-deleted stack it then fights back.
    if let Some(holder) = live_daemon(cluster, namespace, stack).await? {
        report.errors.push(format!(
            "a converge daemon ({holder}) manages this stack and would apply it again at once: stop that daemon, then take the stack down; nothing was deleted"
        ));
        report.held_by = Some(holder);
        return Ok(());
    }
    let inv_key = configmap_key(namespace, inventory_name(stack));
    let status_key = configmap_key(namespace, status_name(stack));
    let mut inv = inventory::load(cluster.client(), namespace, stack).await?;
    let has_inventory = cluster.get(&inv_key).await?.is_some();
    let has_status = cluster.get(&status_key).await?.is_some();
    let hooks = leftover_jobs(cluster, namespace, stack, &inv).await?;
    if !has_inventory && !has_status && inv.is_empty() && hooks.is_empty() {
        report.nothing_to_do = true;
        // A Lease an earlier `down` left behind goes too.
        remove_lease(cluster, namespace, stack, report).await?;
        return Ok(());
    }
    let mut plan = plan(&inv, opts.volumes);
    if !hooks.is_empty() {
        let job_rank = kinds::rank("Job");
        let at = plan
            .groups
            .iter()
            .position(|g| g.first().is_some_and(|k| kinds::rank(&k.kind) <= job_rank));
        match at {
            Some(i) if plan.groups[i].first().map(|k| kinds::rank(&k.kind)) == Some(job_rank) => {
                plan.groups[i].extend(hooks)
            }
            Some(i) => plan.groups.insert(i, hooks),
            None => plan.groups.push(hooks),
        }
    }
    for (key, why) in &plan.keep {
        report.kept.push(format!("{key}: {why}"));
    }
    let mut claims: Vec<ObjectKey> = Vec::new();
    for group in &plan.groups {
        let is_claims = group
            .first()
            .is_some_and(|k| kinds::data(&k.kind) == Data::Volume);
        let mut group = group.clone();
        if is_claims {
            group.append(&mut claims);
        }
        let mut waiting = Vec::new();
        for key in &group {
            if kinds::data(&key.kind) == Data::ClaimTemplates {
                let found = statefulset_claims_live(cluster, key).await?;
                if opts.volumes {
                    claims.extend(found);
                } else {
                    for c in found {
                        report.kept.push(format!("{c}: {KEEP_VOLUME}"));
                    }
                }
            }
            match delete(cluster, key).await {
                Ok(Some(uid)) => {
                    info!(object = %key, "deleted");
                    waiting.push((key.clone(), uid));
                }
                Ok(None) => {
                    report.already_gone.push(key.to_string());
                    inv.remove(key);
                }
                Err(e) => {
                    warn!(object = %key, error = %e, "delete failed");
                    report.errors.push(format!("deleting {key}: {e}"));
                }
            }
        }
        for (key, uid) in waiting {
            match wait_gone(cluster, &key, &uid, deadline).await {
                Ok(()) => {
                    report.deleted.push(key.to_string());
                    inv.remove(&key);
                }
                Err(e) => report.errors.push(e.to_string()),
            }
        }
        if !report.errors.is_empty() {
            break;
        }
    }
    // Claims of a StatefulSet when the inventory had no claim group of its own.
    if opts.volumes && !claims.is_empty() && report.errors.is_empty() {
        for key in std::mem::take(&mut claims) {
            match delete(cluster, &key).await {
                Ok(Some(uid)) => match wait_gone(cluster, &key, &uid, deadline).await {
                    Ok(()) => report.deleted.push(key.to_string()),
                    Err(e) => report.errors.push(e.to_string()),
                },
                Ok(None) => report.already_gone.push(key.to_string()),
                Err(e) => report.errors.push(format!("deleting {key}: {e}")),
            }
        }
    }
    if !report.errors.is_empty() {
        // Keep what is left recorded, so a second `down` (or the next apply) finds it.
        if has_inventory {
            inventory::save(cluster.client(), namespace, stack, &inv).await?;
        }
        return Ok(());
    }
    // The records last: the inventory, then the status record (and a pause: nothing is left
    // to pause, and a stack applied again later starts unpaused).
    let pause_key = configmap_key(namespace, pause_name(stack));
    for key in [&inv_key, &status_key, &pause_key] {
        if let Some(uid) = delete(cluster, key).await? {
            wait_gone(cluster, key, &uid, deadline).await?;
        }
    }
    report.records_removed = true;
    remove_lease(cluster, namespace, stack, report).await?;
    for key in &plan.namespaces {
        if let Some(uid) = delete(cluster, key).await? {
            wait_gone(cluster, key, &uid, deadline).await?;
            report.deleted.push(key.to_string());
        } else {
            report.already_gone.push(key.to_string());
        }
    }
    Ok(())
}

/// The daemon renewing the stack's Lease, when one does.
async fn live_daemon(
    cluster: &Cluster,
    namespace: &str,
    stack: &str,
) -> Result<Option<String>, ClusterError> {
    let lease = cluster
        .get_in::<Lease>(namespace, &lease_name(stack))
        .await?;
    Ok(lease.and_then(|l| super::lease::live_holder(&l, k8s_openapi::jiff::Timestamp::now())))
}

/// Deletes the stack's daemon Lease unless a running daemon renews it (that daemon would apply
/// the stack again: `down` says so instead of pulling the Lease from under it).
async fn remove_lease(
    cluster: &Cluster,
    namespace: &str,
    stack: &str,
    report: &mut DownReport,
) -> Result<(), ClusterError> {
    let name = lease_name(stack);
    if cluster.get_in::<Lease>(namespace, &name).await?.is_none() {
        return Ok(());
    }
    // Checked before anything was deleted; a daemon that started since keeps its Lease.
    if let Some(holder) = live_daemon(cluster, namespace, stack).await? {
        report.kept.push(format!(
            "Lease/{name} (namespace {namespace}): the daemon {holder} holds it and will apply the stack again; stop that daemon first"
        ));
        return Ok(());
    }
    let what = format!("Lease/{name} (namespace {namespace})");
    let api: Api<Lease> = Api::namespaced(cluster.client().clone(), namespace);
    match call(
        "deleting",
        &what,
        api.delete(&name, &DeleteParams::default()),
    )
    .await
    {
        Ok(_) => {
            info!(lease = %name, "deleted");
            report.deleted.push(what);
            Ok(())
        }
        Err(e) if e.is_http(404) => Ok(()),
        Err(e) => Err(e),
    }
}

/// Jobs of the stack that the inventory does not name (Helm hooks converge ran).
async fn leftover_jobs(
    cluster: &Cluster,
    namespace: &str,
    stack: &str,
    inv: &Inventory,
) -> Result<Vec<ObjectKey>, ClusterError> {
    let gvk = GroupVersionKind::gvk("batch", "v1", "Job");
    let jobs = match cluster
        .list(&gvk, namespace, &format!("{LABEL_STACK}={stack}"))
        .await
    {
        Ok(j) => j,
        Err(ClusterError::UnknownKind { .. }) => return Ok(Vec::new()),
        Err(e) => return Err(e),
    };
    Ok(jobs
        .iter()
        .filter_map(ObjectKey::of)
        .filter(|k| inv.get(k).is_none())
        .collect())
}

async fn statefulset_claims_live(
    cluster: &Cluster,
    key: &ObjectKey,
) -> Result<Vec<ObjectKey>, ClusterError> {
    let Some(sts) = cluster.get(key).await? else {
        return Ok(Vec::new());
    };
    let sts = serde_json::to_value(&sts).unwrap_or(Value::Null);
    let list = cluster
        .list_in::<PersistentVolumeClaim>(&key.namespace, &ListParams::default())
        .await?;
    let names: Vec<String> = list
        .iter()
        .filter_map(|c| c.metadata.name.clone())
        .collect();
    Ok(statefulset_claims(&sts, &names)
        .into_iter()
        .map(|name| ObjectKey {
            group: String::new(),
            version: "v1".into(),
            kind: "PersistentVolumeClaim".into(),
            namespace: key.namespace.clone(),
            name,
        })
        .collect())
}

/// Deletes one object with foreground propagation (so it is gone only once what it owns is);
/// returns its uid, or `None` when it was already gone (or its kind no longer exists).
async fn delete(cluster: &Cluster, key: &ObjectKey) -> Result<Option<String>, ClusterError> {
    let api = match cluster.api_for(key).await {
        Ok(a) => a,
        Err(ClusterError::UnknownKind { .. }) => return Ok(None),
        Err(e) => return Err(e),
    };
    match call(
        "deleting",
        key,
        api.delete(&key.name, &DeleteParams::foreground()),
    )
    .await
    {
        // The object (still finalizing) or a Status (already gone): an empty uid means "check".
        Ok(answer) => Ok(Some(
            answer
                .left()
                .and_then(|o| o.metadata.uid)
                .unwrap_or_default(),
        )),
        Err(e) if e.is_http(404) => Ok(None),
        Err(e) => Err(e),
    }
}

/// Waits (a watch, bounded by the teardown's `deadline`, not by one request's) until the object
/// with `uid` is gone.
async fn wait_gone(
    cluster: &Cluster,
    key: &ObjectKey,
    uid: &str,
    deadline: Instant,
) -> Result<(), ClusterError> {
    let started = Instant::now();
    let uid = if uid.is_empty() {
        // Deleted at once (a Status answer): check it is gone.
        match cluster.get(key).await? {
            None => return Ok(()),
            Some(o) => o.metadata.uid.unwrap_or_default(),
        }
    } else {
        uid.to_string()
    };
    let api = cluster.api_for(key).await?;
    let left = deadline.saturating_duration_since(started);
    match tokio::time::timeout(
        left,
        await_condition(api, &key.name, conditions::is_deleted(&uid)),
    )
    .await
    {
        Ok(Ok(_)) => Ok(()),
        Ok(Err(e)) => Err(ClusterError::Invalid {
            object: key.to_string(),
            message: format!("watching for its deletion failed: {e}"),
        }),
        Err(_) => Err(ClusterError::NotGone {
            object: key.to_string(),
            after: started.elapsed(),
        }),
    }
}

/// Finds the namespaces holding converge's records of `stack` (for `down` without a repository).
pub async fn find_stack(cluster: &Cluster, stack: &str) -> Result<Vec<String>, ClusterError> {
    let lp = ListParams::default().labels(&format!("{LABEL_STACK}={stack}"));
    let list = cluster.list_global::<ConfigMap>(&lp).await?;
    let wanted = [inventory_name(stack), status_name(stack)];
    let mut out: Vec<String> = list
        .into_iter()
        .filter(|c| c.metadata.name.as_ref().is_some_and(|n| wanted.contains(n)))
        .filter_map(|c| c.metadata.namespace)
        .collect();
    out.sort();
    out.dedup();
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cluster::inventory::fixtures::{inv, k};
    use serde_json::json;

    #[test]
    fn teardown_deletes_workloads_before_what_they_use_and_keeps_volumes() {
        let all = [
            k("ConfigMap", "config"),
            k("Service", "web"),
            k("Deployment", "web"),
            k("PersistentVolumeClaim", "data"),
            k("StatefulSet", "db"),
            k("ServiceAccount", "web"),
            k("Ingress", "web"),
        ];
        let p = plan(&inv(&all), false);
        let kinds: Vec<Vec<&str>> = p
            .groups
            .iter()
            .map(|g| g.iter().map(|k| k.kind.as_str()).collect())
            .collect();
        assert_eq!(
            kinds,
            [
                vec!["Ingress"],
                vec!["Deployment"],
                vec!["StatefulSet"],
                vec!["Service"],
                vec!["ConfigMap"],
                vec!["ServiceAccount"]
            ]
        );
        assert_eq!(p.keep.len(), 1);
        assert_eq!(p.keep[0].0, k("PersistentVolumeClaim", "data"));
    }

    #[test]
    fn with_volumes_claims_go_after_the_statefulset_and_the_namespace_after_everything() {
        let all = [
            k("PersistentVolumeClaim", "data"),
            k("StatefulSet", "db"),
            k("Namespace", "ns"),
        ];
        let p = plan(&inv(&all), true);
        assert!(p.keep.is_empty());
        assert_eq!(
            p.groups,
            vec![
                vec![k("StatefulSet", "db")],
                vec![k("PersistentVolumeClaim", "data")]
            ]
        );
        assert_eq!(p.namespaces, vec![k("Namespace", "ns")]);
    }

    #[test]
    fn without_volumes_a_namespace_in_the_inventory_stays() {
        let p = plan(&inv(&[k("Namespace", "ns")]), false);
        assert!(p.groups.is_empty() && p.namespaces.is_empty());
        assert_eq!(p.keep[0].1, KEEP_NAMESPACE);
    }

    #[test]
    fn an_empty_inventory_plans_nothing() {
        assert_eq!(plan(&Inventory::default(), true), TeardownPlan::default());
    }

    #[test]
    fn statefulset_claims_are_the_templates_ordinals_only() {
        let sts = json!({"metadata": {"name": "todo-postgres"},
            "spec": {"volumeClaimTemplates": [{"metadata": {"name": "data"}}]}});
        let claims: Vec<String> = [
            "data-todo-postgres-0",
            "data-todo-postgres-1",
            "data-todo-postgres-x",
            "data-other-0",
            "logs-todo-postgres-0",
            "data-todo-postgres-",
        ]
        .map(String::from)
        .to_vec();
        assert_eq!(
            statefulset_claims(&sts, &claims),
            ["data-todo-postgres-0", "data-todo-postgres-1"]
        );
        assert!(statefulset_claims(&json!({}), &claims).is_empty());
    }
}
