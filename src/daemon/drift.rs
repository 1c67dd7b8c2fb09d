//! Drift: a metadata watch per managed kind in each stack's namespace (label
//! `converge.dev/stack=<name>`), turning out-of-band changes into events that name the field
//! manager who made them.
//!
//! Beside the managed kinds it watches each stack's status record (one small ConfigMap, read in
//! full: another `converge apply` shows there) and the metadata of the Secrets in its namespace
//! (a Secret a blocked component waits for may appear at any time; values are never read).
//!
//! It never applies anything and never reads the bodies of managed objects (only metadata):
//! deciding what to do about a drift is the daemon loop's job, and the reconcile's fast path
//! does the re-apply.

use std::collections::{BTreeMap, BTreeSet, HashMap};

use k8s_openapi::api::core::v1::{ConfigMap, Secret};

use futures::StreamExt;
use kube::api::{Api, DynamicObject, ObjectMeta, PartialObjectMeta};
use kube::core::GroupVersionKind;
use kube::runtime::watcher::{self, Event};
use kube::runtime::WatchStreamExt;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tracing::{debug, warn};

use crate::cluster::Cluster;
use crate::vocabulary::{
    inventory_name, pause_name, status_name, FIELD_MANAGER, LABEL_COMPONENT, LABEL_STACK,
};

/// Kinds watched for every stack, whatever its inventory holds.
pub const BASE_KINDS: [(&str, &str, &str); 4] = [
    ("apps", "v1", "Deployment"),
    ("apps", "v1", "StatefulSet"),
    ("", "v1", "Service"),
    ("", "v1", "ConfigMap"),
];

/// What a watch reports to the loop.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Note {
    /// A managed object changed or disappeared out of band.
    Drift(DriftEvent),
    /// A watch (re)listed its objects: from now on it sees every change.
    Synced {
        /// The stack.
        stack: String,
        /// The kind.
        kind: String,
    },
    /// A watch failed and will retry: changes may be missed until it is `Synced` again.
    Gap {
        /// The stack.
        stack: String,
        /// The kind.
        kind: String,
    },
    /// A watch ended for good: the cluster no longer serves its kind.
    Gone {
        /// The stack.
        stack: String,
        /// The kind.
        kind: String,
    },
    /// The stack's status record names this commit as the last applied.
    Record {
        /// The stack.
        stack: String,
        /// `lastAppliedCommit`.
        commit: String,
    },
    /// The stack's pause record was written (or deleted: no pause).
    Pause {
        /// The stack.
        stack: String,
        /// Every pause it records, ended ones included.
        pauses: crate::cluster::pause::Pauses,
    },
    /// A Secret in the stack's namespace was created, changed or deleted.
    Secret {
        /// The stack.
        stack: String,
        /// The Secret's name.
        name: String,
    },
}

/// One out-of-band change.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DriftEvent {
    /// The stack.
    pub stack: String,
    /// `Kind/name`.
    pub object: String,
    /// Its component label (`""` for stack-wide objects): a pause holds by component.
    pub component: String,
    /// The field manager that made the change (`unknown` when none is recorded).
    pub manager: String,
    /// Whether the object was deleted.
    pub deleted: bool,
    /// The object's uid, when known: tells converge's own deletion from a re-created object's.
    pub uid: Option<String>,
}

/// What the watch remembers of one object.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Seen {
    generation: Option<i64>,
    resource_version: String,
    /// Managers of spec/metadata fields other than converge.
    others: BTreeSet<String>,
    /// When converge's own entry last changed.
    ours: Option<k8s_openapi::jiff::Timestamp>,
}

impl Seen {
    /// From an object's metadata.
    pub fn of(meta: &ObjectMeta) -> Self {
        let fields = meta.managed_fields.as_deref().unwrap_or_default();
        let spec = || {
            fields
                .iter()
                .filter(|f| f.subresource.as_deref() != Some("status"))
        };
        Self {
            generation: meta.generation.filter(|g| *g > 0),
            resource_version: meta.resource_version.clone().unwrap_or_default(),
            others: spec()
                .filter_map(|f| f.manager.clone())
                .filter(|m| m != FIELD_MANAGER)
                .collect(),
            ours: spec()
                .find(|f| f.manager.as_deref() == Some(FIELD_MANAGER))
                .and_then(|f| f.time.as_ref().map(|t| t.0)),
        }
    }
}

/// The newest field manager of a spec/metadata change (status writes are skipped); on a tie,
/// someone other than converge wins, so a same-second hand edit is never mistaken for ours.
/// Entries without a time (`kubectl scale` writes one) count as newest.
pub fn newest_manager(meta: &ObjectMeta) -> Option<String> {
    meta.managed_fields
        .as_ref()?
        .iter()
        .filter(|f| f.subresource.as_deref() != Some("status"))
        .filter_map(|f| {
            let m = f.manager.clone()?;
            // The scale subresource records no time: count an entry without one as newest.
            let t = f
                .time
                .as_ref()
                .map_or(k8s_openapi::jiff::Timestamp::MAX, |t| t.0);
            Some((t, m != FIELD_MANAGER, m))
        })
        .max_by(|a, b| (a.0, a.1).cmp(&(b.0, b.1)))
        .map(|(_, _, m)| m)
}

/// Whether an update of an object last seen as `prev` is drift, and by whom (pure).
/// Kinds with a generation drift when it moves (status updates never move it); others when the
/// resourceVersion moves. A change whose newest manager is converge is converge's own apply —
/// unless converge's entry did not move and another manager's entry vanished: that manager
/// released its fields, and the values it alone owned went with them.
pub fn classify(prev: Option<&Seen>, meta: &ObjectMeta) -> Option<String> {
    let prev = prev?;
    // A deletion in progress (finalizers hold it; setting deletionTimestamp bumps the
    // generation) is reported once, by its DELETE event, where converge's own is recognised.
    if meta.deletion_timestamp.is_some() {
        return None;
    }
    let now = Seen::of(meta);
    let changed = match (prev.generation, now.generation) {
        (Some(a), Some(b)) => a != b,
        _ => prev.resource_version != now.resource_version,
    };
    if !changed {
        return None;
    }
    match newest_manager(meta) {
        Some(m) if m == FIELD_MANAGER => {
            if now.ours != prev.ours {
                return None;
            }
            // converge strips kubectl's entries itself when it adopts an object.
            prev.others
                .difference(&now.others)
                .find(|m| !m.starts_with("kubectl"))
                .map(|m| format!("{m} (released its fields)"))
        }
        Some(m) => Some(m),
        None => Some("unknown".into()),
    }
}

/// The running watches, by stack and kind.
#[derive(Default)]
pub struct DriftWatch {
    tasks: BTreeMap<(String, String), JoinHandle<()>>,
}

impl DriftWatch {
    /// Makes sure `stack` in `namespace` is watched for every kind in `kinds` (plus
    /// [`BASE_KINDS`]), and its status record and Secrets; kinds the cluster does not serve are
    /// skipped.
    pub async fn ensure(
        &mut self,
        cluster: &Cluster,
        stack: &str,
        namespace: &str,
        kinds: &BTreeSet<(String, String, String)>,
        tx: &mpsc::Sender<Note>,
    ) {
        let mut all: BTreeSet<(String, String, String)> = BASE_KINDS
            .iter()
            .map(|(g, v, k)| (g.to_string(), v.to_string(), k.to_string()))
            .collect();
        all.extend(kinds.iter().cloned());
        let record = (stack.to_string(), "record".to_string());
        if self.tasks.get(&record).is_none_or(|t| t.is_finished()) {
            let api: Api<ConfigMap> = Api::namespaced(cluster.client().clone(), namespace);
            let task = tokio::spawn(watch_record(api, stack.to_string(), tx.clone()));
            self.tasks.insert(record, task);
        }
        let pause = (stack.to_string(), "pause".to_string());
        if self.tasks.get(&pause).is_none_or(|t| t.is_finished()) {
            let api: Api<ConfigMap> = Api::namespaced(cluster.client().clone(), namespace);
            let task = tokio::spawn(watch_pause(api, stack.to_string(), tx.clone()));
            self.tasks.insert(pause, task);
        }
        let secrets = (stack.to_string(), "secrets".to_string());
        if self.tasks.get(&secrets).is_none_or(|t| t.is_finished()) {
            let api: Api<PartialObjectMeta<Secret>> =
                Api::namespaced(cluster.client().clone(), namespace);
            let task = tokio::spawn(watch_secrets(api, stack.to_string(), tx.clone()));
            self.tasks.insert(secrets, task);
        }
        for (group, version, kind) in all {
            if kind == "Namespace" {
                continue;
            }
            let id = (stack.to_string(), format!("{group}/{kind}"));
            if self.tasks.get(&id).is_some_and(|t| !t.is_finished()) {
                continue;
            }
            let gvk = GroupVersionKind::gvk(&group, &version, &kind);
            // A watch that ended found its kind gone: ask discovery again before restarting it.
            if self.tasks.contains_key(&id) {
                cluster.forget(&gvk).await;
            }
            let (ar, caps) = match cluster.resolve(&gvk).await {
                Ok(r) => r,
                Err(e) => {
                    debug!(%kind, error = %e, "not watching a kind the cluster does not serve");
                    continue;
                }
            };
            if !matches!(caps.scope, kube::discovery::Scope::Namespaced) {
                continue;
            }
            let api: Api<PartialObjectMeta<DynamicObject>> =
                Api::namespaced_with(cluster.client().clone(), namespace, &ar);
            debug!(%stack, %namespace, %kind, "drift watch started");
            let task = tokio::spawn(watch_kind(api, stack.to_string(), kind.clone(), tx.clone()));
            self.tasks.insert(id, task);
        }
    }

    /// Stops watching stacks not in `keep`.
    pub fn retain(&mut self, keep: &BTreeSet<String>) {
        self.tasks.retain(|(stack, _), t| {
            let k = keep.contains(stack);
            if !k {
                t.abort();
            }
            k
        });
    }

    /// How many watches run.
    pub fn len(&self) -> usize {
        self.tasks.len()
    }

    /// Whether no watch runs.
    pub fn is_empty(&self) -> bool {
        self.tasks.is_empty()
    }

    /// Stops every watch.
    pub fn stop(&mut self) {
        for t in self.tasks.values() {
            t.abort();
        }
        self.tasks.clear();
    }
}

impl Drop for DriftWatch {
    fn drop(&mut self) {
        self.stop();
    }
}

async fn watch_kind(
    api: Api<PartialObjectMeta<DynamicObject>>,
    stack: String,
    kind: String,
    tx: mpsc::Sender<Note>,
) {
    let ignored = [
        status_name(&stack),
        inventory_name(&stack),
        pause_name(&stack),
    ];
    let config = watcher::Config::default().labels(&format!("{LABEL_STACK}={stack}"));
    let stream = watcher::watcher(api, config).default_backoff();
    futures::pin_mut!(stream);
    let mut seen: HashMap<String, Seen> = HashMap::new();
    let mut listing: Option<HashMap<String, Seen>> = None;
    let mut synced = false;
    let drift = |meta: &ObjectMeta, name: &str, manager: String, deleted: bool| {
        Note::Drift(DriftEvent {
            stack: stack.clone(),
            object: format!("{kind}/{name}"),
            component: component_of(meta),
            manager,
            deleted,
            uid: meta.uid.clone(),
        })
    };
    // The component and uid of an object seen before, for a deletion noticed at a relist.
    let mut components: HashMap<String, (String, Option<String>)> = HashMap::new();
    while let Some(event) = stream.next().await {
        let note = match event {
            Ok(Event::Init) => {
                listing = Some(HashMap::new());
                None
            }
            Ok(Event::InitApply(o)) => {
                let name = o.metadata.name.clone().unwrap_or_default();
                if ignored.contains(&name) {
                    continue;
                }
                components.insert(
                    name.clone(),
                    (component_of(&o.metadata), o.metadata.uid.clone()),
                );
                let found = if synced {
                    classify(seen.get(&name), &o.metadata)
                        .map(|m| drift(&o.metadata, &name, m, false))
                } else {
                    None
                };
                if let Some(l) = listing.as_mut() {
                    l.insert(name, Seen::of(&o.metadata));
                }
                found
            }
            Ok(Event::InitDone) => {
                let listed = listing.take().unwrap_or_default();
                if synced {
                    // Gone while the watch was down.
                    for name in seen.keys().filter(|n| !listed.contains_key(*n)) {
                        let known = components.get(name);
                        let meta = ObjectMeta {
                            labels: known
                                .map(|(c, _)| [(LABEL_COMPONENT.to_string(), c.clone())].into()),
                            uid: known.and_then(|(_, u)| u.clone()),
                            ..ObjectMeta::default()
                        };
                        let _ = tx.send(drift(&meta, name, "unknown".into(), true)).await;
                    }
                }
                debug!(%stack, %kind, objects = listed.len(), "drift watch synced");
                seen = listed;
                synced = true;
                Some(Note::Synced {
                    stack: stack.clone(),
                    kind: kind.clone(),
                })
            }
            Ok(Event::Apply(o)) => {
                let name = o.metadata.name.clone().unwrap_or_default();
                if ignored.contains(&name) {
                    continue;
                }
                let found = classify(seen.get(&name), &o.metadata)
                    .map(|m| drift(&o.metadata, &name, m, false));
                components.insert(
                    name.clone(),
                    (component_of(&o.metadata), o.metadata.uid.clone()),
                );
                seen.insert(name, Seen::of(&o.metadata));
                found
            }
            Ok(Event::Delete(o)) => {
                let name = o.metadata.name.clone().unwrap_or_default();
                if ignored.contains(&name) {
                    continue;
                }
                seen.remove(&name);
                let by = newest_manager(&o.metadata)
                    .filter(|m| m != FIELD_MANAGER)
                    .unwrap_or_else(|| "unknown".into());
                Some(drift(&o.metadata, &name, by, true))
            }
            Err(e) if kind_gone(&e) => {
                warn!(%stack, %kind, "the cluster no longer serves this kind: drift watch stopped");
                let _ = tx
                    .send(Note::Gone {
                        stack: stack.clone(),
                        kind: kind.clone(),
                    })
                    .await;
                return;
            }
            Err(e) => {
                warn!(%stack, %kind, error = %e, "drift watch failed; retrying with back-off");
                Some(Note::Gap {
                    stack: stack.clone(),
                    kind: kind.clone(),
                })
            }
        };
        if let Some(n) = note {
            if tx.send(n).await.is_err() {
                return;
            }
        }
    }
}

/// Whether a watch error says the kind is not served (a 404 on the collection).
fn kind_gone(e: &watcher::Error) -> bool {
    match e {
        watcher::Error::InitialListFailed(kube::Error::Api(s))
        | watcher::Error::WatchStartFailed(kube::Error::Api(s))
        | watcher::Error::WatchFailed(kube::Error::Api(s)) => s.code == 404,
        watcher::Error::WatchError(s) => s.code == 404,
        _ => false,
    }
}

/// Follows `stack`'s status record: reports its `lastAppliedCommit` whenever it is written.
async fn watch_record(api: Api<ConfigMap>, stack: String, tx: mpsc::Sender<Note>) {
    let name = status_name(&stack);
    let config = watcher::Config::default().fields(&format!("metadata.name={name}"));
    let stream = watcher::watcher(api, config).default_backoff();
    futures::pin_mut!(stream);
    while let Some(event) = stream.next().await {
        let cm = match event {
            Ok(Event::Apply(cm) | Event::InitApply(cm)) => cm,
            Ok(_) => continue,
            Err(e) => {
                debug!(%stack, error = %e, "status record watch failed; retrying with back-off");
                continue;
            }
        };
        let commit = cm
            .data
            .as_ref()
            .and_then(|d| d.get("status.json"))
            .and_then(|t| serde_json::from_str::<crate::status::StackStatus>(t).ok())
            .map(|s| s.last_applied_commit)
            .unwrap_or_default();
        let note = Note::Record {
            stack: stack.clone(),
            commit,
        };
        if tx.send(note).await.is_err() {
            return;
        }
    }
}

/// The component label of an object (`""` for stack-wide objects).
fn component_of(meta: &ObjectMeta) -> String {
    meta.labels
        .as_ref()
        .and_then(|l| l.get(LABEL_COMPONENT))
        .cloned()
        .unwrap_or_default()
}

/// Follows `stack`'s pause record: reports every pause it holds whenever it is written, and no
/// pause when it is deleted, so a pause made from any machine is honoured.
async fn watch_pause(api: Api<ConfigMap>, stack: String, tx: mpsc::Sender<Note>) {
    let name = pause_name(&stack);
    let config = watcher::Config::default().fields(&format!("metadata.name={name}"));
    let stream = watcher::watcher(api, config).default_backoff();
    futures::pin_mut!(stream);
    while let Some(event) = stream.next().await {
        let pauses = match event {
            Ok(Event::Apply(cm) | Event::InitApply(cm)) => {
                let text = cm
                    .data
                    .as_ref()
                    .and_then(|d| d.get(crate::cluster::pause::DATA_KEY));
                match text.map(|t| crate::cluster::pause::Pauses::parse(t)) {
                    Some(Ok(p)) => p,
                    Some(Err(why)) => {
                        warn!(%stack, %why, "the pause record is unreadable: no pause is honoured (`converge resume` rewrites it)");
                        Default::default()
                    }
                    None => Default::default(),
                }
            }
            Ok(Event::Delete(_)) => Default::default(),
            Ok(_) => continue,
            Err(e) => {
                debug!(%stack, error = %e, "pause record watch failed; retrying with back-off");
                continue;
            }
        };
        let note = Note::Pause {
            stack: stack.clone(),
            pauses,
        };
        if tx.send(note).await.is_err() {
            return;
        }
    }
}

/// Follows the Secrets of `stack`'s namespace by metadata (never values): reports each change
/// after the first listing.
async fn watch_secrets(api: Api<PartialObjectMeta<Secret>>, stack: String, tx: mpsc::Sender<Note>) {
    let stream = watcher::watcher(api, watcher::Config::default()).default_backoff();
    futures::pin_mut!(stream);
    let mut seen: HashMap<String, String> = HashMap::new();
    let mut listing: Option<HashMap<String, String>> = None;
    let mut synced = false;
    while let Some(event) = stream.next().await {
        let mut changed = Vec::new();
        match event {
            Ok(Event::Init) => listing = Some(HashMap::new()),
            Ok(Event::InitApply(o)) => {
                let name = o.metadata.name.clone().unwrap_or_default();
                let rv = o.metadata.resource_version.clone().unwrap_or_default();
                if synced && seen.get(&name) != Some(&rv) {
                    changed.push(name.clone());
                }
                if let Some(l) = listing.as_mut() {
                    l.insert(name, rv);
                }
            }
            Ok(Event::InitDone) => {
                let listed = listing.take().unwrap_or_default();
                if synced {
                    changed.extend(seen.keys().filter(|n| !listed.contains_key(*n)).cloned());
                }
                seen = listed;
                synced = true;
            }
            Ok(Event::Apply(o)) => {
                let name = o.metadata.name.clone().unwrap_or_default();
                let rv = o.metadata.resource_version.clone().unwrap_or_default();
                if seen.insert(name.clone(), rv.clone()).as_ref() != Some(&rv) {
                    changed.push(name);
                }
            }
            Ok(Event::Delete(o)) => {
                let name = o.metadata.name.clone().unwrap_or_default();
                seen.remove(&name);
                changed.push(name);
            }
            Err(e) => debug!(%stack, error = %e, "Secret watch failed; retrying with back-off"),
        }
        for name in changed {
            let note = Note::Secret {
                stack: stack.clone(),
                name,
            };
            if tx.send(note).await.is_err() {
                return;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ManagedFieldsEntry, Time};
    use k8s_openapi::jiff::{SignedDuration, Timestamp};

    fn meta(generation: i64, rv: &str, fields: &[(&str, Option<&str>, i64)]) -> ObjectMeta {
        let t0 = Timestamp::from_second(1_700_000_000).unwrap();
        ObjectMeta {
            generation: Some(generation),
            resource_version: Some(rv.into()),
            managed_fields: Some(
                fields
                    .iter()
                    .map(|(m, sub, secs)| ManagedFieldsEntry {
                        manager: Some(m.to_string()),
                        subresource: sub.map(str::to_string),
                        time: Some(Time(t0 + SignedDuration::from_secs(*secs))),
                        ..Default::default()
                    })
                    .collect(),
            ),
            ..Default::default()
        }
    }

    #[test]
    fn kubectl_scale_is_drift_named_after_kubectl() {
        let prev = Seen::of(&meta(1, "10", &[("converge", None, 0)]));
        let now = meta(
            2,
            "11",
            &[("converge", None, 0), ("kubectl", Some("scale"), 5)],
        );
        assert_eq!(classify(Some(&prev), &now), Some("kubectl".into()));
    }

    #[test]
    fn a_scale_entry_without_a_time_counts_as_newest() {
        let prev = Seen::of(&meta(1, "10", &[("converge", None, 0)]));
        let mut now = meta(
            2,
            "11",
            &[("converge", None, 9), ("kubectl", Some("scale"), 0)],
        );
        now.managed_fields.as_mut().unwrap()[1].time = None;
        assert_eq!(classify(Some(&prev), &now), Some("kubectl".into()));
    }

    #[test]
    fn status_updates_by_controllers_are_not_drift() {
        let prev = Seen::of(&meta(2, "11", &[("converge", None, 0)]));
        let now = meta(
            2,
            "12",
            &[
                ("converge", None, 0),
                ("kube-controller-manager", Some("status"), 9),
            ],
        );
        assert_eq!(classify(Some(&prev), &now), None);
    }

    #[test]
    fn converges_own_apply_is_not_drift() {
        let prev = Seen::of(&meta(2, "11", &[("kubectl", Some("scale"), 5)]));
        let now = meta(3, "13", &[("converge", None, 7)]);
        assert_eq!(classify(Some(&prev), &now), None);
    }

    #[test]
    fn a_same_second_tie_is_blamed_on_the_other_manager() {
        let prev = Seen::of(&meta(1, "1", &[]));
        let now = meta(2, "2", &[("converge", None, 3), ("kubectl-edit", None, 3)]);
        assert_eq!(classify(Some(&prev), &now), Some("kubectl-edit".into()));
    }

    #[test]
    fn kinds_without_generation_drift_on_resource_version() {
        let mut m = meta(0, "5", &[("converge", None, 0)]);
        m.generation = None;
        let prev = Seen::of(&m);
        let mut now = meta(0, "6", &[("converge", None, 0), ("kubectl-edit", None, 4)]);
        now.generation = None;
        assert_eq!(classify(Some(&prev), &now), Some("kubectl-edit".into()));
    }

    #[test]
    fn a_manager_releasing_its_fields_is_drift_although_converge_is_newest() {
        let prev = Seen::of(&meta(
            4,
            "20",
            &[("converge", None, 0), ("deploy-bot", None, 5)],
        ));
        // deploy-bot re-applied without the fields it alone owned: its entry is gone and the
        // values with it, while converge's entry did not move.
        let now = meta(5, "21", &[("converge", None, 0)]);
        assert_eq!(
            classify(Some(&prev), &now),
            Some("deploy-bot (released its fields)".into())
        );
        // converge's own apply moves its entry: not drift.
        let own = meta(5, "21", &[("converge", None, 9)]);
        assert_eq!(classify(Some(&prev), &own), None);
        // converge stripping kubectl's ownership when adopting is not drift either.
        let prev = Seen::of(&meta(
            4,
            "20",
            &[("converge", None, 0), ("kubectl", None, 5)],
        ));
        assert_eq!(
            classify(Some(&prev), &meta(5, "21", &[("converge", None, 0)])),
            None
        );
    }

    #[test]
    fn a_deletion_in_progress_is_left_to_its_delete_event() {
        let prev = Seen::of(&meta(1, "10", &[("converge", None, 0)]));
        let mut now = meta(
            2,
            "11",
            &[("converge", None, 0), ("kube-controller-manager", None, 5)],
        );
        now.deletion_timestamp = Some(Time(Timestamp::from_second(1_700_000_100).unwrap()));
        assert_eq!(classify(Some(&prev), &now), None);
    }

    #[test]
    fn an_object_seen_for_the_first_time_is_not_drift() {
        assert_eq!(classify(None, &meta(1, "1", &[("kubectl", None, 0)])), None);
    }
}
