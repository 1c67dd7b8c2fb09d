//! The inventory: what converge applied for one stack, kept in a ConfigMap in the stack's
//! namespace so another machine or a restarted daemon knows it. Also the pure prune decision.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use super::kinds::{self, Data};
use super::record::Place;
use super::{ClusterError, ObjectKey};
use crate::vocabulary::inventory_name;

/// What converge knows of one object it applied.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "camelCase")]
pub struct Record {
    /// The component it belongs to (`""` for stack-wide objects).
    #[serde(default)]
    pub component: String,
    /// Hash of the rendered object last applied.
    pub hash: String,
    /// The live generation right after that apply (spec changes bump it).
    #[serde(default)]
    pub generation: i64,
    /// The live resourceVersion right after that apply (for kinds without a generation).
    #[serde(default)]
    pub resource_version: String,
    /// The commit whose render last changed the object.
    #[serde(default)]
    pub commit: String,
}

/// Every object applied for one stack, by key, and what its Helm hooks did.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct Inventory {
    /// Records by object key.
    pub objects: BTreeMap<String, (ObjectKey, Record)>,
    /// The stack's hooks: kept beside the objects (one ConfigMap, written in one apply, deleted
    /// with them by `down`), so the two never disagree.
    #[serde(default)]
    pub hooks: Hooks,
}

/// What converge knows of a stack's Helm hooks.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Hooks {
    /// Written by a converge that keeps this record; an inventory without it was made by an
    /// older one, whose hooks ran on every change.
    #[serde(default)]
    pub tracked: bool,
    /// The commit whose hooks all ran (or were skipped as unchanged): reconciling it again — a
    /// drift correction, a resync, a retry — runs none.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub settled: String,
    /// The last successful run of each hook.
    #[serde(default)]
    pub runs: Vec<HookRun>,
}

impl Hooks {
    /// The last successful run of `hook` (`Kind/name`).
    pub fn run_of(&self, hook: &str) -> Option<&HookRun> {
        self.runs.iter().find(|h| h.hook == hook)
    }
}

/// The last successful run of one hook.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct HookRun {
    /// `Kind/name`.
    pub hook: String,
    /// sha256 of the hook's rendered manifest (without what the server adds).
    pub digest: String,
    /// The commit whose reconcile ran it.
    pub commit: String,
    /// When it succeeded (RFC 3339).
    pub time: String,
}

impl Inventory {
    /// The record of `key`.
    pub fn get(&self, key: &ObjectKey) -> Option<&Record> {
        self.objects.get(&id(key)).map(|(_, r)| r)
    }

    /// Records `key`.
    pub fn insert(&mut self, key: ObjectKey, record: Record) {
        self.objects.insert(id(&key), (key, record));
    }

    /// Forgets `key`.
    pub fn remove(&mut self, key: &ObjectKey) {
        self.objects.remove(&id(key));
    }

    /// Every key.
    pub fn keys(&self) -> impl Iterator<Item = &ObjectKey> {
        self.objects.values().map(|(k, _)| k)
    }

    /// Number of objects.
    pub fn len(&self) -> usize {
        self.objects.len()
    }

    /// Whether it is empty.
    pub fn is_empty(&self) -> bool {
        self.objects.is_empty()
    }
}

/// A stable string id of a key (`group/Kind/namespace/name`; version is not identity).
pub fn id(key: &ObjectKey) -> String {
    format!("{}/{}/{}/{}", key.group, key.kind, key.namespace, key.name)
}

const DATA_KEY: &str = "inventory.json";
/// The key of the hooks' record ([`Hooks`]) in the same ConfigMap.
const HOOKS_KEY: &str = "hooks.json";

/// Reads the inventory of `stack` in `namespace`; empty when there is none yet.
pub async fn load(
    client: &kube::Client,
    namespace: &str,
    stack: &str,
) -> Result<Inventory, ClusterError> {
    let name = inventory_name(stack);
    let place = place(namespace, &name, stack);
    let Some(mut data) = place.read_all(client).await? else {
        return Ok(Inventory::default());
    };
    // A record of hooks that does not parse is dropped: the hooks then run again, which is
    // what Helm does on every upgrade anyway.
    let hooks = data
        .remove(HOOKS_KEY)
        .and_then(|t| serde_json::from_str(&t).ok())
        .unwrap_or_default();
    let entries: Vec<(ObjectKey, Record)> = match data.remove(DATA_KEY) {
        None => Vec::new(),
        Some(text) => serde_json::from_str(&text).map_err(|e| ClusterError::Invalid {
            object: format!("ConfigMap/{name} (namespace {namespace})"),
            message: format!("the inventory is not readable ({e}); converge will not prune until it is repaired or deleted"),
        })?,
    };
    let mut inv = Inventory {
        hooks,
        ..Inventory::default()
    };
    for (k, r) in entries {
        inv.insert(k, r);
    }
    Ok(inv)
}

fn place<'a>(namespace: &'a str, name: &'a str, stack: &'a str) -> Place<'a> {
    Place {
        namespace,
        name,
        stack,
        key: DATA_KEY,
    }
}

/// Writes the inventory (server-side apply of the whole ConfigMap).
pub async fn save(
    client: &kube::Client,
    namespace: &str,
    stack: &str,
    inv: &Inventory,
) -> Result<(), ClusterError> {
    let name = inventory_name(stack);
    let entries: Vec<&(ObjectKey, Record)> = inv.objects.values().collect();
    let text = serde_json::to_string_pretty(&entries).unwrap_or_else(|_| "[]".into());
    let hooks = Hooks {
        tracked: true,
        ..inv.hooks.clone()
    };
    let mut more = BTreeMap::new();
    more.insert(
        HOOKS_KEY,
        serde_json::to_string_pretty(&hooks).unwrap_or_default(),
    );
    place(namespace, &name, stack)
        .write_with(client, text, more)
        .await
}

/// What pruning may delete.
#[derive(Debug, Clone, Copy, Default)]
pub struct PrunePolicy {
    /// Allow deleting PersistentVolumeClaims.
    pub volumes: bool,
    /// Allow deleting Namespaces.
    pub namespaces: bool,
    /// Allow deleting more than half of the inventory at once.
    pub allow_mass_prune: bool,
}

/// The prune decision for one reconcile.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PrunePlan {
    /// Objects to delete.
    pub delete: Vec<ObjectKey>,
    /// Objects no longer rendered but kept, with why.
    pub keep: Vec<(ObjectKey, &'static str)>,
    /// Why nothing at all is pruned, when the guard refused.
    pub refused: Option<String>,
}

/// Decides what to prune: inventory members no longer rendered, never PVCs or Namespaces unless
/// opted in, and never more than half of the inventory unless allowed.
pub fn plan_prune(inv: &Inventory, rendered: &[ObjectKey], policy: PrunePolicy) -> PrunePlan {
    let rendered: std::collections::HashSet<String> = rendered.iter().map(id).collect();
    let mut plan = PrunePlan::default();
    for key in inv.keys() {
        if rendered.contains(&id(key)) {
            continue;
        }
        match kinds::data(&key.kind) {
            Data::Volume if !policy.volumes => plan.keep.push((
                key.clone(),
                "a volume holds data; set prune.volumes: true to allow",
            )),
            Data::Namespace if !policy.namespaces => plan.keep.push((
                key.clone(),
                "namespaces are never pruned unless prune.namespace: true",
            )),
            _ => plan.delete.push(key.clone()),
        }
    }
    if !policy.allow_mass_prune && !plan.delete.is_empty() && plan.delete.len() * 2 > inv.len() {
        plan.refused = Some(format!(
            "refusing to prune {} of {} objects (more than half of what converge manages) in one reconcile; re-run with --allow-mass-prune if that is intended",
            plan.delete.len(),
            inv.len()
        ));
        plan.delete.clear();
    }
    plan
}

/// Keys and inventories for unit tests of the modules that plan over an inventory.
#[cfg(test)]
pub(crate) mod fixtures {
    use super::{Inventory, ObjectKey, Record};

    /// A core-group key in namespace `ns`.
    pub fn k(kind: &str, name: &str) -> ObjectKey {
        ObjectKey {
            group: String::new(),
            version: "v1".into(),
            kind: kind.into(),
            namespace: "ns".into(),
            name: name.into(),
        }
    }

    /// An inventory holding `keys` with empty records.
    pub fn inv(keys: &[ObjectKey]) -> Inventory {
        let mut i = Inventory::default();
        for key in keys {
            i.insert(key.clone(), Record::default());
        }
        i
    }
}

#[cfg(test)]
mod tests {
    use super::fixtures::{inv, k};
    use super::*;

    #[test]
    fn only_objects_no_longer_rendered_are_pruned_and_never_volumes() {
        let all = [
            k("ConfigMap", "a"),
            k("Service", "b"),
            k("PersistentVolumeClaim", "data"),
            k("ConfigMap", "c"),
            k("Service", "d"),
        ];
        let plan = plan_prune(&inv(&all), &all[..2], PrunePolicy::default());
        assert_eq!(plan.delete, vec![k("ConfigMap", "c"), k("Service", "d")]);
        assert_eq!(plan.keep.len(), 1);
        assert_eq!(plan.keep[0].0, k("PersistentVolumeClaim", "data"));
    }

    #[test]
    fn pruning_more_than_half_is_refused_unless_allowed() {
        let all = [
            k("ConfigMap", "a"),
            k("ConfigMap", "b"),
            k("ConfigMap", "c"),
        ];
        let plan = plan_prune(&inv(&all), &all[..1], PrunePolicy::default());
        assert!(plan.delete.is_empty());
        assert!(plan
            .refused
            .as_deref()
            .unwrap()
            .contains("--allow-mass-prune"));
        let plan = plan_prune(
            &inv(&all),
            &all[..1],
            PrunePolicy {
                allow_mass_prune: true,
                ..Default::default()
            },
        );
        assert_eq!(plan.delete.len(), 2);
    }

    #[test]
    fn an_empty_render_never_prunes_everything() {
        let all = [k("ConfigMap", "a"), k("ConfigMap", "b")];
        let plan = plan_prune(&inv(&all), &[], PrunePolicy::default());
        assert!(plan.delete.is_empty() && plan.refused.is_some());
    }
}
