//! Writing to the cluster: the namespace, the inventory (ahead of creates, so a crash orphans
//! nothing), server-side apply of one object (with adoption from kubectl and re-creation of
//! immutable fields), and prune.

use std::time::{Duration, Instant};

use kube::api::DynamicObject;
use serde_json::{json, Value};
use tracing::{debug, info, warn};

use super::{plan, Item, Run};
use crate::cluster::inventory::{self, PrunePolicy, Record};
use crate::cluster::{order, ApplyOptions, ClusterError, ObjectKey};
use crate::reconcile::step::{ComponentFailure, Failure, PruneFailure, Step};
use crate::vocabulary::{LABEL_MANAGED_BY, LABEL_STACK, LAST_APPLIED, MANAGED_BY};

/// What the inventory records of `item` once the cluster holds it as `live`: the render's hash
/// and the live generation and version the next reconcile compares with.
fn record_of(item: &Item, live: &DynamicObject) -> Record {
    Record {
        component: item.component.clone(),
        hash: item.hash.clone(),
        generation: live.metadata.generation.unwrap_or(0),
        resource_version: live.metadata.resource_version.clone().unwrap_or_default(),
        commit: item.commit.clone(),
    }
}

impl Run<'_> {
    /// Writes the inventory when it changed.
    pub(super) async fn save_inventory(&mut self) -> Result<(), Failure> {
        if self.inventory != self.loaded_inventory {
            inventory::save(
                self.cluster.client(),
                self.ns(),
                &self.stack.spec.name,
                &self.inventory,
            )
            .await
            .map_err(Failure::cluster(Step::Inventory))?;
            self.loaded_inventory = self.inventory.clone();
        }
        Ok(())
    }

    /// Records objects about to be created in the inventory before creating them, so a crash
    /// between the create and the inventory write cannot leave an object nobody prunes. The
    /// placeholder's empty hash never matches a render, so the next reconcile applies it again.
    pub(super) async fn write_ahead(&mut self, items: &[Item]) -> Result<(), ClusterError> {
        let mut added = false;
        for item in items {
            if self.inventory.get(&item.key).is_none()
                && !self.blocked.contains_key(&item.component)
            {
                let record = Record {
                    component: item.component.clone(),
                    ..Record::default()
                };
                self.inventory.insert(item.key.clone(), record);
                added = true;
            }
        }
        if added {
            inventory::save(
                self.cluster.client(),
                self.ns(),
                &self.stack.spec.name,
                &self.inventory,
            )
            .await?;
            self.loaded_inventory = self.inventory.clone();
        }
        Ok(())
    }

    /// Creates the stack's namespace, labelled as converge's, when it does not exist.
    pub(super) async fn ensure_namespace(&self) -> Result<(), ClusterError> {
        let key = ObjectKey {
            group: String::new(),
            version: "v1".into(),
            kind: "Namespace".into(),
            namespace: String::new(),
            name: self.ns().to_string(),
        };
        if self.cluster.get(&key).await?.is_some() {
            return Ok(());
        }
        let ns: DynamicObject = serde_json::from_value(json!({
            "apiVersion": "v1",
            "kind": "Namespace",
            "metadata": {"name": self.ns(), "labels": {LABEL_MANAGED_BY: MANAGED_BY, LABEL_STACK: self.stack.spec.name}},
        }))
        .map_err(|e| ClusterError::Invalid { object: key.to_string(), message: e.to_string() })?;
        self.cluster.apply(&ns, ApplyOptions::default()).await?;
        info!(namespace = %self.ns(), "namespace created");
        Ok(())
    }

    /// Server-side applies one object unless it is unchanged, changed by a held-back component,
    /// or (on a full resync) the same as live; records it in the inventory and its component's failure.
    pub(super) async fn apply_item(&mut self, item: &Item) {
        // A held-back component keeps what is deployed: an object whose render did not change
        // and that runs no missing image is exactly that, so a hand change to it is still undone
        // while the component's image is missing.
        if self.blocked.contains_key(&item.component)
            && (item.render_changed
                || plan::images(&item.object)
                    .iter()
                    .any(|i| self.unavailable.contains_key(i)))
        {
            return;
        }
        if item.unchanged {
            self.unchanged += 1;
            if let Some(live) = self.live.get(&inventory::id(&item.key)) {
                if order::is_workload(&item.key.kind) {
                    if let Ok(v) = serde_json::to_value(live) {
                        self.health
                            .insert(inventory::id(&item.key), (item.key.clone(), v));
                    }
                }
            }
            return;
        }
        if !item.render_changed {
            if let Some(p) = self
                .pauses
                .ended_for(&item.component, self.pause_now)
                .cloned()
            {
                self.report_hand_changes(item, &p).await;
            }
        }
        if item.adopt {
            if let Err(e) = self.strip_kubectl(&item.key).await {
                warn!(object = %item.key, error = %e, "could not remove kubectl ownership");
            }
        }
        let opts = ApplyOptions {
            force: self.opts.force_conflicts,
            dry_run: false,
        };
        if self.opts.full && !item.adopt && self.same_as_live(item, opts).await {
            return;
        }
        let mut result = self.cluster.apply(&item.object, opts).await;
        if let Err(ClusterError::Immutable {
            recreatable: true, ..
        }) = &result
        {
            if self.opts.recreate {
                info!(object = %item.key, "re-creating: an immutable field changed");
                result = self.recreate(item, opts).await;
            }
        }
        match result {
            Ok(live) => {
                info!(object = %item.key, "applied");
                self.applied.push(item.key.to_string());
                self.inventory
                    .insert(item.key.clone(), record_of(item, &live));
                if order::is_workload(&item.key.kind) {
                    if let Ok(v) = serde_json::to_value(&live) {
                        self.health
                            .insert(inventory::id(&item.key), (item.key.clone(), v));
                    }
                }
                self.live.insert(inventory::id(&item.key), live);
            }
            Err(e) => {
                warn!(object = %item.key, error = %e, "apply failed");
                let component = if item.component.is_empty() {
                    item.key.short()
                } else {
                    item.component.clone()
                };
                self.failed
                    .entry(component)
                    .or_insert(ComponentFailure::Apply(std::sync::Arc::new(e)));
            }
        }
    }

    /// Reports what was changed by hand in `item`'s live object while `pause` held it: the
    /// fields a dry-run of converge's apply would change back, and the field managers that own
    /// them now (from `managedFields`). Paths and managers only, never values.
    async fn report_hand_changes(&mut self, item: &Item, pause: &crate::cluster::pause::Pause) {
        use crate::cluster::diff::{changed_fields, managers_of, normalize};
        let scope = pause.scope();
        let since = pause
            .since
            .to_rfc3339_opts(chrono::SecondsFormat::Secs, true);
        let object = item.key.short();
        let Some(live) = self.live.get(&inventory::id(&item.key)) else {
            info!(%object, fields = "(the whole object)", managers = "unknown", paused = %scope, %since, "deleted by hand while paused; re-creating it");
            self.hand_changes.push(format!("{object} deleted"));
            return;
        };
        let opts = ApplyOptions {
            force: true,
            dry_run: true,
        };
        // The real apply that follows reports an error; the report is only left out.
        let Ok(dry) = self.cluster.apply(&item.object, opts).await else {
            return;
        };
        let (Ok(dry), Ok(live_v)) = (serde_json::to_value(&dry), serde_json::to_value(live)) else {
            return;
        };
        let fields = changed_fields(&normalize(&live_v), &normalize(&dry));
        if fields.is_empty() {
            return;
        }
        let entries = live.metadata.managed_fields.as_deref().unwrap_or_default();
        let mut all_managers: Vec<String> = Vec::new();
        let described: Vec<String> = fields
            .iter()
            .map(|f| {
                let managers = managers_of(entries, f);
                all_managers.extend(managers.iter().cloned());
                let by = if managers.is_empty() {
                    "unknown".to_string()
                } else {
                    managers.join(", ")
                };
                format!("{} by {by}", f.join("."))
            })
            .collect();
        all_managers.sort();
        all_managers.dedup();
        let names: Vec<String> = fields.iter().map(|f| f.join(".")).collect();
        info!(
            %object,
            fields = %names.join(", "),
            managers = %all_managers.join(", "),
            paused = %scope,
            %since,
            "changed by hand while paused; restoring the committed state"
        );
        self.hand_changes
            .push(format!("{object} {}", described.join(", ")));
    }

    /// A full resync compares every object with the cluster: a dry-run apply that leaves the
    /// live object as it is means nothing changed, so nothing is written or reported as applied.
    async fn same_as_live(&mut self, item: &Item, opts: ApplyOptions) -> bool {
        let id = inventory::id(&item.key);
        let Some(live) = self.live.get(&id) else {
            return false;
        };
        let dry = match self
            .cluster
            .apply(
                &item.object,
                ApplyOptions {
                    dry_run: true,
                    ..opts
                },
            )
            .await
        {
            Ok(d) => d,
            // The real apply reports the error.
            Err(_) => return false,
        };
        let (Ok(dry), Ok(live_v)) = (serde_json::to_value(&dry), serde_json::to_value(live)) else {
            return false;
        };
        if crate::cluster::diff::normalize(&dry) != crate::cluster::diff::normalize(&live_v) {
            return false;
        }
        debug!(object = %item.key, "unchanged (compared with the cluster)");
        self.unchanged += 1;
        let record = record_of(item, live);
        // The record still describes this object (same render, same generation or version):
        // keep it, so the inventory is not rewritten for a status update of the live object.
        let current = self.inventory.get(&item.key).is_some_and(|r| {
            r.hash == record.hash
                && r.commit == record.commit
                && r.component == record.component
                && if r.generation > 0 && record.generation > 0 {
                    r.generation == record.generation
                } else {
                    r.resource_version == record.resource_version
                }
        });
        if !current {
            self.inventory.insert(item.key.clone(), record);
        }
        if order::is_workload(&item.key.kind) {
            self.health.insert(id, (item.key.clone(), live_v));
        }
        true
    }

    /// Deletes and re-creates an object whose immutable fields changed (`--recreate`).
    async fn recreate(
        &self,
        item: &Item,
        opts: ApplyOptions,
    ) -> Result<DynamicObject, ClusterError> {
        self.delete_own(&item.key).await?;
        self.wait_gone(&item.key).await?;
        self.cluster.apply(&item.object, opts).await
    }

    /// Waits (60 s at most) until a deleted object is gone.
    pub(super) async fn wait_gone(&self, key: &ObjectKey) -> Result<(), ClusterError> {
        // A deliberate wait, far longer than one request: finalizers and foreground deletion
        // take their time, and each read is bounded by the client's own deadline.
        const PATIENCE: Duration = Duration::from_secs(60);
        let started = Instant::now();
        let mut tick = tokio::time::interval(Duration::from_millis(250));
        while started.elapsed() < PATIENCE {
            tick.tick().await;
            if self.cluster.get(key).await?.is_none() {
                return Ok(());
            }
        }
        Err(ClusterError::NotGone {
            object: key.to_string(),
            after: started.elapsed(),
        })
    }

    /// Removes `kubectl`'s ownership and last-applied annotation from an object converge adopts,
    /// so a hand edit does not survive the next apply.
    async fn strip_kubectl(&self, key: &ObjectKey) -> Result<(), ClusterError> {
        let Some(live) = self.live.get(&inventory::id(key)) else {
            return Ok(());
        };
        let mut ops = Vec::new();
        if live
            .metadata
            .annotations
            .as_ref()
            .is_some_and(|a| a.contains_key(LAST_APPLIED))
        {
            ops.push(json!({"op": "remove", "path": "/metadata/annotations/kubectl.kubernetes.io~1last-applied-configuration"}));
        }
        let fields = live.metadata.managed_fields.clone().unwrap_or_default();
        if fields.iter().any(plan::is_kubectl) {
            let kept: Vec<Value> = fields
                .iter()
                .filter(|f| !plan::is_kubectl(f))
                .filter_map(|f| serde_json::to_value(f).ok())
                .collect();
            // An empty list means "leave as is" to the API server; one empty entry clears it.
            let kept = if kept.is_empty() {
                vec![json!({})]
            } else {
                kept
            };
            ops.push(json!({"op": "replace", "path": "/metadata/managedFields", "value": kept}));
        }
        if ops.is_empty() {
            return Ok(());
        }
        let patch: json_patch::Patch =
            serde_json::from_value(Value::Array(ops)).map_err(|e| ClusterError::Invalid {
                object: key.to_string(),
                message: e.to_string(),
            })?;
        self.cluster.json_patch(key, patch).await?;
        info!(object = %key, "adopted: removed kubectl ownership");
        Ok(())
    }

    /// Deletes what the inventory holds and the render no longer has, as [`inventory::plan_prune`]
    /// decides: never volumes or namespaces unless the stack opted in, never a mass prune.
    pub(super) async fn prune(&mut self, rendered: &[ObjectKey]) {
        let policy = PrunePolicy {
            volumes: self.stack.spec.prune.volumes,
            namespaces: self.stack.spec.prune.namespace,
            allow_mass_prune: self.opts.allow_mass_prune,
        };
        let plan = inventory::plan_prune(&self.inventory, rendered, policy);
        for (key, why) in &plan.keep {
            self.kept.push(format!("{key}: {why}"));
        }
        if let Some(refused) = plan.refused {
            warn!("{refused}");
            self.prune_errors.push(PruneFailure::Refused(refused));
            return;
        }
        for key in plan.delete.iter().rev() {
            match self.delete_own(key).await {
                Ok(_) => {
                    info!(object = %key, "pruned");
                    self.pruned.push(key.to_string());
                    self.inventory.remove(key);
                }
                // The kind is gone from the cluster, and every object of it with it.
                Err(ClusterError::UnknownKind { .. }) => {
                    warn!(object = %key, "dropped from the inventory: its kind is no longer served by the cluster, so nothing is left to delete");
                    self.inventory.remove(key);
                }
                // Kept in the inventory, so the next reconcile retries and nothing is orphaned.
                Err(e) => self.prune_errors.push(PruneFailure::Delete {
                    object: key.to_string(),
                    error: std::sync::Arc::new(e),
                }),
            }
        }
    }
}
