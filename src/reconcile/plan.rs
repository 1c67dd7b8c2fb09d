//! The per-object decision (pure): what to apply, what is unchanged since the last apply, and
//! which objects converge must adopt from kubectl.

use std::collections::BTreeSet;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::ManagedFieldsEntry;
use kube::api::DynamicObject;
use sha2::{Digest, Sha256};

use crate::cluster::inventory::Record;
use crate::cluster::ObjectKey;
use crate::vocabulary::{ANNOTATION_COMMIT, FIELD_MANAGER, LABEL_COMPONENT, LAST_APPLIED};

/// One rendered object and what to do with it.
#[derive(Debug, Clone)]
pub struct Item {
    /// Its key.
    pub key: ObjectKey,
    /// The object to apply, with the commit annotation.
    pub object: DynamicObject,
    /// Its component (`""` for stack-wide objects).
    pub component: String,
    /// Hash of the rendered object (before the commit annotation).
    pub hash: String,
    /// The commit recorded as having last changed it.
    pub commit: String,
    /// Nothing to do: same render as last applied and no change to the live spec since.
    pub unchanged: bool,
    /// The render differs from the one last applied: a commit changed it (not only the live
    /// object, which is drift). Only such a change is a deploy that runs hooks.
    pub render_changed: bool,
    /// kubectl owns fields or left its last-applied annotation: strip before applying.
    pub adopt: bool,
}

/// sha256 of the object's canonical JSON.
pub fn object_hash(obj: &DynamicObject) -> String {
    let bytes = serde_json::to_vec(obj).unwrap_or_default();
    hex::encode(Sha256::digest(&bytes))
}

/// Whether a managed-fields entry belongs to a kubectl command (apply, edit, scale…).
pub fn is_kubectl(f: &ManagedFieldsEntry) -> bool {
    f.manager
        .as_deref()
        .is_some_and(|m| m.starts_with("kubectl") && m != FIELD_MANAGER)
}

/// Decides what to do with one rendered object.
pub fn item(
    mut obj: DynamicObject,
    key: ObjectKey,
    record: Option<&Record>,
    live: Option<&DynamicObject>,
    commit: &str,
    full: bool,
) -> Item {
    let hash = object_hash(&obj);
    let component = obj
        .metadata
        .labels
        .as_ref()
        .and_then(|l| l.get(LABEL_COMPONENT))
        .cloned()
        .unwrap_or_default();
    let same_render = record.is_some_and(|r| r.hash == hash);
    let last_commit = match record {
        Some(r) if same_render && !r.commit.is_empty() => r.commit.clone(),
        _ => commit.to_string(),
    };
    obj.metadata
        .annotations
        .get_or_insert_with(Default::default)
        .insert(ANNOTATION_COMMIT.into(), last_commit.clone());
    let adopt = live.is_some_and(|l| {
        l.metadata
            .annotations
            .as_ref()
            .is_some_and(|a| a.contains_key(LAST_APPLIED))
            || l.metadata
                .managed_fields
                .as_ref()
                .is_some_and(|m| m.iter().any(is_kubectl))
    });
    let live_untouched = match (record, live) {
        (Some(r), Some(l)) => match l.metadata.generation {
            Some(g) if g > 0 && r.generation > 0 => g == r.generation,
            _ => l.metadata.resource_version.as_deref() == Some(r.resource_version.as_str()),
        },
        _ => false,
    };
    Item {
        key,
        object: obj,
        component,
        hash,
        commit: last_commit,
        unchanged: !full && same_render && live_untouched && !adopt,
        render_changed: !same_render,
        adopt,
    }
}

/// Leaves a paused component's drift alone (pure): an object whose render did not change but
/// whose live state moved is marked unchanged while a pause covers its component. A commit that
/// changes the object is still applied whole: a pause is about hand changes, not deploys.
pub fn hold<'p>(
    item: &mut Item,
    pauses: &'p crate::cluster::pause::Pauses,
    now: chrono::DateTime<chrono::Utc>,
) -> Option<&'p crate::cluster::pause::Pause> {
    if item.unchanged || item.render_changed {
        return None;
    }
    let p = pauses.holding(&item.component, now)?;
    item.unchanged = true;
    Some(p)
}

/// Every container image an object's Pods run (Pods, workload templates, CronJob templates;
/// init and ephemeral containers included).
pub fn images(obj: &DynamicObject) -> BTreeSet<String> {
    containers(obj)
        .filter_map(|c| c.get("image").and_then(serde_json::Value::as_str))
        .map(str::to_string)
        .collect()
}

/// The images of containers with `imagePullPolicy: Never`: they run only if a node holds them.
pub fn never_pulled(obj: &DynamicObject) -> BTreeSet<String> {
    containers(obj)
        .filter(|c| c.get("imagePullPolicy").and_then(serde_json::Value::as_str) == Some("Never"))
        .filter_map(|c| c.get("image").and_then(serde_json::Value::as_str))
        .map(str::to_string)
        .collect()
}

/// Every container of every Pod shape an object can hold.
fn containers(obj: &DynamicObject) -> impl Iterator<Item = &serde_json::Value> {
    let data = &obj.data;
    [
        data.pointer("/spec"),
        data.pointer("/spec/template/spec"),
        data.pointer("/spec/jobTemplate/spec/template/spec"),
    ]
    .into_iter()
    .flatten()
    .flat_map(|spec| {
        ["containers", "initContainers", "ephemeralContainers"]
            .into_iter()
            .filter_map(move |list| spec.get(list).and_then(serde_json::Value::as_array))
            .flatten()
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn obj(replicas: i64) -> DynamicObject {
        serde_json::from_value(json!({"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "web", "namespace": "ns", "labels": {LABEL_COMPONENT: "web"}}, "spec": {"replicas": replicas}})).unwrap()
    }

    fn live(generation: i64, manager: &str) -> DynamicObject {
        serde_json::from_value(json!({"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "web", "namespace": "ns", "generation": generation, "resourceVersion": "9", "managedFields": [{"manager": manager, "operation": "Apply"}]}})).unwrap()
    }

    fn key() -> ObjectKey {
        ObjectKey::of(&obj(1)).unwrap()
    }

    #[test]
    fn same_render_and_untouched_live_object_is_unchanged() {
        let o = obj(2);
        let rec = Record {
            hash: object_hash(&o),
            generation: 3,
            commit: "old".into(),
            ..Default::default()
        };
        let it = item(
            o,
            key(),
            Some(&rec),
            Some(&live(3, "converge")),
            "new",
            false,
        );
        assert!(it.unchanged);
        assert_eq!(
            it.commit, "old",
            "an unchanged object keeps the commit that last changed it"
        );
        assert_eq!(it.component, "web");
    }

    #[test]
    fn a_hand_scaled_object_is_reapplied_and_adopted() {
        let o = obj(2);
        let rec = Record {
            hash: object_hash(&o),
            generation: 3,
            ..Default::default()
        };
        let it = item(
            o.clone(),
            key(),
            Some(&rec),
            Some(&live(4, "converge")),
            "c",
            false,
        );
        assert!(!it.unchanged, "generation moved: someone changed the spec");
        let it = item(
            o,
            key(),
            Some(&rec),
            Some(&live(3, "kubectl-edit")),
            "c",
            false,
        );
        assert!(it.adopt && !it.unchanged);
    }

    #[test]
    fn a_new_render_or_a_full_resync_applies() {
        let rec = Record {
            hash: object_hash(&obj(2)),
            generation: 3,
            ..Default::default()
        };
        assert!(
            !item(
                obj(3),
                key(),
                Some(&rec),
                Some(&live(3, "converge")),
                "c",
                false
            )
            .unchanged
        );
        assert!(
            !item(
                obj(2),
                key(),
                Some(&rec),
                Some(&live(3, "converge")),
                "c",
                true
            )
            .unchanged
        );
        assert!(!item(obj(2), key(), None, None, "c", false).unchanged);
    }

    #[test]
    fn a_live_change_alone_is_drift_not_a_new_render() {
        let o = obj(2);
        let rec = Record {
            hash: object_hash(&o),
            generation: 3,
            ..Default::default()
        };
        let hand_scaled = item(o, key(), Some(&rec), Some(&live(4, "converge")), "c", false);
        assert!(!hand_scaled.unchanged && !hand_scaled.render_changed);
        let committed = item(
            obj(3),
            key(),
            Some(&rec),
            Some(&live(3, "converge")),
            "c",
            false,
        );
        assert!(committed.render_changed);
        assert!(item(obj(2), key(), None, None, "c", false).render_changed);
    }

    #[test]
    fn a_paused_components_drift_is_held_but_a_commits_change_to_it_is_applied() {
        use crate::cluster::pause::{Pause, Pauses};
        let at = |s: &str| {
            chrono::DateTime::parse_from_rfc3339(s)
                .unwrap()
                .with_timezone(&chrono::Utc)
        };
        let mut pauses = Pauses::default();
        pauses.set(Pause {
            component: Some("web".into()),
            since: at("2026-12-06T10:00:00Z"),
            until: at("2026-12-06T10:15:00Z"),
            by: String::new(),
        });
        let during = at("2026-12-06T10:05:00Z");
        let rec = Record {
            hash: object_hash(&obj(2)),
            generation: 3,
            ..Default::default()
        };
        let hand_scaled = || {
            item(
                obj(2),
                key(),
                Some(&rec),
                Some(&live(4, "kubectl")),
                "c",
                false,
            )
        };
        let mut it = hand_scaled();
        assert!(hold(&mut it, &pauses, during).is_some());
        assert!(
            it.unchanged,
            "a hand change to a paused component is left alone"
        );
        let mut it = hand_scaled();
        assert!(hold(&mut it, &pauses, at("2026-12-06T10:15:00Z")).is_none());
        assert!(!it.unchanged, "once the pause ends, the drift is undone");
        let mut it = item(
            obj(3),
            key(),
            Some(&rec),
            Some(&live(4, "kubectl")),
            "c",
            false,
        );
        assert!(hold(&mut it, &pauses, during).is_none());
        assert!(!it.unchanged, "a new commit is applied during a pause");
        let mut other = hand_scaled();
        other.component = "db".into();
        assert!(hold(&mut other, &pauses, during).is_none() && !other.unchanged);
    }

    #[test]
    fn images_are_read_from_every_pod_template_shape() {
        let job: DynamicObject = serde_json::from_value(json!({"apiVersion": "batch/v1", "kind": "Job", "metadata": {"name": "m"},
            "spec": {"template": {"spec": {"initContainers": [{"name": "i", "image": "init:1"}], "containers": [{"name": "c", "image": "app:2"}]}}}})).unwrap();
        assert_eq!(
            images(&job).into_iter().collect::<Vec<_>>(),
            ["app:2", "init:1"]
        );
        let cron: DynamicObject = serde_json::from_value(json!({"apiVersion": "batch/v1", "kind": "CronJob", "metadata": {"name": "c"},
            "spec": {"jobTemplate": {"spec": {"template": {"spec": {"containers": [{"name": "c", "image": "cron:3"}]}}}}}})).unwrap();
        assert!(images(&cron).contains("cron:3"));
        let pod: DynamicObject = serde_json::from_value(
            json!({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "p"},
            "spec": {"containers": [{"name": "c", "image": "pod:4"}]}}),
        )
        .unwrap();
        assert!(images(&pod).contains("pod:4"));
        assert!(images(&obj(1)).is_empty());
        let never: DynamicObject = serde_json::from_value(json!({"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "d"},
            "spec": {"template": {"spec": {"containers": [{"name": "a", "image": "local:1", "imagePullPolicy": "Never"}, {"name": "b", "image": "pulled:2"}]}}}})).unwrap();
        assert_eq!(
            never_pulled(&never).into_iter().collect::<Vec<_>>(),
            ["local:1"]
        );
    }
}
