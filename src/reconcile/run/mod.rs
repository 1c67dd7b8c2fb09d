//! One stack's reconcile while it runs: the fixed skeleton of steps in [`Run::execute`] and the
//! state they share. Each step lives in its own file: reading what the cluster holds (here),
//! Secrets ([`secrets`]), applying and pruning ([`apply`]), hooks ([`hooks`]), the health wait
//! ([`wait`]) and the outcome with the status record ([`finish`]). What to do in which order is
//! decided by pure functions ([`super::waves`], [`crate::cluster::health::verdict`],
//! [`crate::cluster::inventory::plan_prune`]); this module performs it.

mod apply;
mod finish;
mod hooks;
mod secrets;
mod wait;

use std::collections::{BTreeMap, BTreeSet, HashMap};

use kube::api::DynamicObject;
use kube::core::GroupVersionKind;
use tracing::{debug, info, warn};

use super::plan::{self, Item};
use super::prepare::Prepared;
use super::report::HookReport;
use super::step::{ComponentFailure, Failure, Held, PruneFailure, Step};
use super::waves::{self, Gate};
use super::Options;
use crate::build::engine::normalized_reference;
use crate::cluster::inventory::{self, Inventory};
use crate::cluster::pause::{self, Pauses};
use crate::cluster::{kinds, Cluster, ClusterError, ObjectKey};
use crate::desired::Stack;
use crate::render::{Hook, Rendered};
use crate::status::{self, StackStatus};
use crate::vocabulary::{LABEL_COMPONENT, LABEL_STACK};

/// The target of progress events (rendered as live lines on a terminal by the CLI).
use crate::progress::TARGET as PROGRESS;

/// The state of one reconcile while it runs.
pub(super) struct Run<'a> {
    cluster: &'a Cluster,
    stack: &'a Stack,
    commit: &'a str,
    opts: &'a Options,
    inventory: Inventory,
    loaded_inventory: Inventory,
    old_status: Option<StackStatus>,
    live: HashMap<String, DynamicObject>,
    applied: Vec<String>,
    unchanged: usize,
    pruned: Vec<String>,
    kept: Vec<String>,
    /// Components held back (a missing Secret, an unbuilt image, an unhealthy dependency).
    blocked: BTreeMap<String, Held>,
    /// Components that failed to apply or to become healthy.
    failed: BTreeMap<String, ComponentFailure>,
    /// Why the last health wait failed, when it did.
    health_failure: Option<wait::HealthFailure>,
    /// Deletions that failed, or why prune was refused.
    prune_errors: Vec<PruneFailure>,
    warnings: Vec<String>,
    health: BTreeMap<String, (ObjectKey, serde_json::Value)>,
    namespace_ready: bool,
    /// The old status was read (or kept aside): only then may a new one be written over it.
    status_read: bool,
    /// A `health.wait` progress event was sent and its `health.done` is still due.
    health_reported: bool,
    /// A health wait was cut short (see [`Options::preempt`]).
    preempted: bool,
    /// Images of this commit that do not exist (their build failed), with the component and why:
    /// nothing that runs one is applied, hooks included.
    unavailable: BTreeMap<String, (String, String)>,
    /// Images converge neither built nor found (the `none` builder), with their component.
    unconfirmed: BTreeMap<String, String>,
    /// What became of each hook considered.
    hook_reports: Vec<HookReport>,
    /// The stack's pauses as this run read them, and the time it judges them at.
    pauses: Pauses,
    pause_now: chrono::DateTime<chrono::Utc>,
    /// What was changed by hand during a pause that ended, one line per object.
    hand_changes: Vec<String>,
    /// Objects whose hand changes a pause holds (inventory ids): their health is the person's
    /// while they debug, so no health wait of this run waits for them.
    held: BTreeSet<String>,
}

/// `(group, kind, name)` of rendered objects: what is still wanted.
type Wanted = BTreeSet<(String, String, String)>;

/// One kind's LIST.
type Listed = (GroupVersionKind, Result<Vec<DynamicObject>, ClusterError>);

/// The `(group, kind, name)` of every rendered object and hook, and their kinds by
/// `group/Kind`.
fn rendered_kinds(rendered: &Rendered) -> (Wanted, BTreeMap<String, GroupVersionKind>) {
    let mut wanted = BTreeSet::new();
    let mut gvks = BTreeMap::new();
    for o in rendered
        .objects
        .iter()
        .chain(rendered.hooks.iter().map(|h| &h.object))
    {
        if let Some(k) = ObjectKey::of(o) {
            gvks.insert(format!("{}/{}", k.group, k.kind), k.gvk());
            wanted.insert((k.group, k.kind, k.name));
        }
    }
    (wanted, gvks)
}

/// The component label of a rendered object (`""` for stack-wide objects).
fn component_of(obj: &DynamicObject) -> String {
    obj.metadata
        .labels
        .as_ref()
        .and_then(|l| l.get(LABEL_COMPONENT))
        .cloned()
        .unwrap_or_default()
}

impl<'a> Run<'a> {
    pub(super) fn new(
        cluster: &'a Cluster,
        prepared: &'a Prepared,
        commit: &'a str,
        opts: &'a Options,
    ) -> Self {
        let build_failures = &prepared.build_failures;
        let unavailable = build_failures
            .iter()
            .filter_map(|(component, why)| {
                let image = prepared.images.get(component)?;
                Some((image.clone(), (component.clone(), why.clone())))
            })
            .collect();
        let unconfirmed = prepared
            .builds
            .iter()
            .filter(|b| b.action == crate::build::Action::Skipped)
            .map(|b| (b.image.clone(), b.component.clone()))
            .collect();
        Self {
            cluster,
            stack: &prepared.stack,
            commit,
            opts,
            inventory: Inventory::default(),
            loaded_inventory: Inventory::default(),
            old_status: None,
            live: HashMap::new(),
            applied: Vec::new(),
            unchanged: 0,
            pruned: Vec::new(),
            kept: Vec::new(),
            blocked: build_failures
                .iter()
                .map(|(c, why)| (c.clone(), Held::ImageMissing(why.clone())))
                .collect(),
            failed: BTreeMap::new(),
            health_failure: None,
            prune_errors: Vec::new(),
            warnings: Vec::new(),
            status_read: false,
            health: BTreeMap::new(),
            namespace_ready: false,
            health_reported: false,
            preempted: false,
            unavailable,
            unconfirmed,
            hook_reports: Vec::new(),
            pauses: Pauses::default(),
            pause_now: chrono::Utc::now(),
            hand_changes: Vec::new(),
            held: BTreeSet::new(),
        }
    }

    /// Deletes an object converge itself is done with, noting it first so the daemon's drift
    /// watch does not take the deletion for drift. `true` when there was something to delete.
    pub(super) async fn delete_own(
        &self,
        key: &ObjectKey,
    ) -> Result<bool, crate::cluster::ClusterError> {
        if let Some(d) = &self.opts.own_deletions {
            d.note(&self.stack.spec.name, &key.short());
        }
        let deleted = self.cluster.delete(key).await;
        // Only a 404 proves no deletion event will come; after an error (a timeout, say) the
        // server may still have deleted it, and the note expires by itself.
        if let Some(d) = &self.opts.own_deletions {
            match &deleted {
                Ok(None) => d.forget(&self.stack.spec.name, &key.short()),
                Ok(Some(crate::cluster::Deleted { uid: Some(uid) })) => {
                    d.confirm(&self.stack.spec.name, &key.short(), uid)
                }
                _ => {}
            }
        }
        deleted.map(|d| d.is_some())
    }

    fn ns(&self) -> &str {
        &self.stack.spec.namespace
    }

    fn selector(&self) -> String {
        format!("{LABEL_STACK}={}", self.stack.spec.name)
    }

    /// Why `component` failed or was held back, when it was.
    fn problem(&self, component: &str) -> Option<String> {
        self.blocked
            .get(component)
            .map(|h| h.why().to_string())
            .or_else(|| self.failed.get(component).map(ComponentFailure::message))
    }

    /// Holds `component` back: its workloads are not applied, its old ones keep serving.
    fn hold_back(&mut self, component: &str, why: Held) {
        warn!(component = %component, reason = %why, "component not applied");
        self.blocked.insert(component.to_string(), why);
    }

    /// The skeleton: read, plan, write-ahead, pre-hooks, apply in waves, health, post-hooks,
    /// prune, inventory. The first failure that stops the stack is returned; a failed or held
    /// back component stops only itself and what depends on it.
    pub(super) async fn execute(&mut self, rendered: Rendered) -> Result<(), Failure> {
        // Every read at once: on a no-op or a drift correction these reads are most of the
        // time. A namespace created meanwhile held nothing, which is what the reads see.
        let (wanted, rendered_kinds) = rendered_kinds(&rendered);
        let (namespace, inv, old_status, secrets, lists, pauses) = tokio::join!(
            self.ensure_namespace(),
            inventory::load(self.cluster.client(), self.ns(), &self.stack.spec.name),
            status::load_for_update(self.cluster.client(), self.ns(), &self.stack.spec.name),
            self.read_secrets(),
            self.fetch_lists(rendered_kinds.values().cloned().collect()),
            pause::load(self.cluster.client(), self.ns(), &self.stack.spec.name),
        );
        namespace.map_err(Failure::cluster(Step::Read))?;
        self.namespace_ready = true;
        self.loaded_inventory = inv.map_err(Failure::cluster(Step::Inventory))?;
        self.inventory = self.loaded_inventory.clone();
        let (old_status, kept_aside) = old_status.map_err(Failure::cluster(Step::Read))?;
        self.old_status = old_status;
        self.status_read = true;
        self.warnings.extend(kept_aside);
        // Nothing applied yet: only write-ahead placeholders (a first run killed after recording
        // what it was about to create) still make this the install, with the install hooks.
        let install = self
            .loaded_inventory
            .objects
            .values()
            .all(|(_, r)| r.hash.is_empty());
        let secrets = secrets.map_err(Failure::cluster(Step::Read))?;
        for (component, why) in secrets::unresolved(self.stack, &secrets) {
            warn!(component = %component, "{why}");
            self.blocked.entry(component).or_insert(Held::Secret(why));
        }
        // Kinds only the inventory holds (no longer rendered): listed now that it is read.
        let mut extra: BTreeMap<String, GroupVersionKind> = BTreeMap::new();
        for k in self.inventory.keys() {
            let id = format!("{}/{}", k.group, k.kind);
            if !rendered_kinds.contains_key(&id) {
                extra.entry(id).or_insert_with(|| k.gvk());
            }
        }
        let mut lists = lists;
        if !extra.is_empty() {
            lists.extend(self.fetch_lists(extra.into_values().collect()).await);
        }
        self.take_lists(lists, &wanted);
        // Read at every run, so a pause written from another machine is honoured at once.
        self.pause_now = chrono::Utc::now();
        match pauses.map_err(Failure::cluster(Step::Read))? {
            Ok(p) => self.pauses = p,
            // A pause is never a reason to stop reconciling: an unreadable record holds nothing.
            Err(why) => {
                warn!(%why, "the pause record is unreadable: no pause is honoured (`converge resume` rewrites it)")
            }
        }

        let mut items = Vec::new();
        for obj in rendered.objects {
            let component = component_of(&obj);
            let name = obj.metadata.name.clone().unwrap_or_default();
            match self.plan_item(obj).await {
                Ok(mut item) => {
                    if let Some(p) = plan::hold(&mut item, &self.pauses, self.pause_now) {
                        debug!(object = %item.key, until = %p.until, "drift left alone: paused");
                        self.held.insert(inventory::id(&item.key));
                    }
                    items.push(item)
                }
                // One object the cluster cannot take (its kind is not served, say) fails its
                // component, never the whole stack.
                Err(e) => {
                    warn!(object = %name, error = %e, "cannot apply");
                    let c = if component.is_empty() {
                        name
                    } else {
                        component
                    };
                    self.failed
                        .entry(c)
                        .or_insert(ComponentFailure::Apply(std::sync::Arc::new(e)));
                }
            }
        }
        self.confirm_images(&items, &rendered.hooks).await;
        self.hold_back_unavailable(&items);
        // What runs now, for the status of what this run does not touch (a run that stops
        // before applying still shows the serving replicas).
        for item in items.iter().filter(|i| kinds::is_workload(&i.key.kind)) {
            let id = inventory::id(&item.key);
            if let Some(v) = self
                .live
                .get(&id)
                .and_then(|l| serde_json::to_value(l).ok())
            {
                self.health.entry(id).or_insert((item.key.clone(), v));
            }
        }
        // Hooks belong to a commit being deployed: once every phase of this commit ran (or was
        // skipped as unchanged) it is settled, and reconciling it again — a drift correction,
        // a resync, a retry — runs none.
        let hooks_due =
            !rendered.hooks.is_empty() && !self.settled(install, &items, &rendered.hooks);
        debug!(
            objects = items.len(),
            changed = items.iter().filter(|i| !i.unchanged).count(),
            hooks_due,
            "planned"
        );

        self.write_ahead(&items)
            .await
            .map_err(Failure::cluster(Step::WriteAhead))?;

        if hooks_due {
            let pre: Vec<&Hook> = rendered
                .hooks
                .iter()
                .filter(|h| h.runs_before(install))
                .collect();
            if let Err(f) = self.run_hooks(Step::PreHooks, &pre, install).await {
                // What the commit changes waits for its hooks; what it did not change is kept
                // as deployed, so a hand change is still undone meanwhile.
                for item in items.iter().filter(|i| !i.unchanged && !i.render_changed) {
                    self.apply_item(item).await;
                }
                self.save_inventory().await?;
                return Err(f);
            }
        }
        let post: Vec<&Hook> = rendered
            .hooks
            .iter()
            .filter(|h| h.runs_after(install))
            .collect();
        // A post hook runs only when one is due: a health wait before it is not a boundary
        // where nothing is lost, so it is never preempted.
        let post_hooks = hooks_due && self.phase_due(&post, install);
        // Everything but workloads, in kind order; then workloads in waves.
        let (mut workloads, mut others): (Vec<Item>, Vec<Item>) = items
            .into_iter()
            .partition(|i| kinds::is_workload(&i.key.kind));
        others.sort_by_key(|i| (kinds::rank(&i.key.kind), i.key.name.clone()));
        workloads.sort_by_key(|i| (kinds::rank(&i.key.kind), i.key.name.clone()));
        let mut rendered_keys: Vec<ObjectKey> = others
            .iter()
            .chain(workloads.iter())
            .map(|i| i.key.clone())
            .collect();
        for item in &others {
            self.apply_item(item).await;
        }
        self.apply_waves(&workloads, !post_hooks).await;
        // The hand changes of ended pauses are reported and undone: forget those pauses, so a
        // restart does not report them again.
        if self.pauses.forget_ended(self.pause_now) {
            if let Err(e) = pause::save(
                self.cluster.client(),
                self.ns(),
                &self.stack.spec.name,
                &self.pauses,
            )
            .await
            {
                warn!(error = %e, "could not clear the ended pauses; the next reconcile reports them again");
            }
        }
        let all: Vec<ObjectKey> = workloads
            .iter()
            .filter(|w| self.problem(&w.component).is_none())
            .filter(|w| !self.held.contains(&inventory::id(&w.key)))
            .map(|w| w.key.clone())
            .collect();
        if !self.preempted {
            match self.wait_healthy(&all, !post_hooks).await {
                Ok(()) | Err(wait::Wait::Preempted) => {}
                Err(wait::Wait::Failed(why)) => self.health_failure = Some(why),
            }
        }
        if self.preempted {
            // What was applied is recorded; health, hooks and prune are the next run's.
            self.save_inventory().await?;
            return Err(Failure::Preempted {
                commit: self.commit.to_string(),
            });
        }
        let healthy =
            self.health_failure.is_none() && self.failed.is_empty() && self.blocked.is_empty();
        if healthy {
            if hooks_due {
                self.run_hooks(Step::PostHooks, &post, install).await?;
            }
            self.settle(&rendered.hooks);
        }
        // Objects of blocked components are still wanted: never prune them.
        rendered_keys.sort();
        if self.failed.is_empty() && self.health_failure.is_none() {
            self.prune(&rendered_keys).await;
        } else {
            info!("prune skipped: an apply or health step failed");
        }
        self.save_inventory().await?;
        if let Some((component, failure)) = self.failed.iter().next() {
            return Err(Failure::Component {
                component: component.clone(),
                failure: failure.clone(),
            });
        }
        if let Some(why) = &self.health_failure {
            return Err(Failure::Health(why.clone()));
        }
        if let Some(e) = self.prune_errors.first() {
            return Err(Failure::Prune(e.clone()));
        }
        // A failed build is the reason, before what waits on it.
        if let Some((component, why)) = self
            .blocked
            .iter()
            .find(|(_, h)| matches!(h, Held::ImageMissing(_)))
        {
            return Err(Failure::Build {
                component: component.clone(),
                why: why.to_string(),
            });
        }
        if let Some((component, why)) = self.blocked.iter().next() {
            return Err(Failure::Blocked {
                component: component.clone(),
                why: why.to_string(),
            });
        }
        Ok(())
    }

    /// Applies workloads component by component ([`waves::plan`]), each once what it depends on
    /// is healthy; stops at a preempted health wait.
    async fn apply_waves(&mut self, workloads: &[Item], preemptible: bool) {
        let plan = waves::plan(
            self.stack
                .components
                .iter()
                .map(|c| (c.spec.name.as_str(), c.spec.depends_on.as_slice())),
            workloads.iter().map(|w| w.component.as_str()),
        );
        'waves: for wave in &plan {
            let deps = match waves::gate(wave, |c| self.problem(c)) {
                Gate::Skip => continue,
                Gate::Blocked(why) => {
                    self.hold_back(&wave.component, Held::Dependency(why));
                    continue;
                }
                Gate::WaitFor(deps) => deps,
            };
            for dep in &deps {
                let keys: Vec<ObjectKey> = workloads
                    .iter()
                    .filter(|w| &w.component == dep)
                    .filter(|w| !self.held.contains(&inventory::id(&w.key)))
                    .map(|w| w.key.clone())
                    .collect();
                match self.wait_healthy(&keys, preemptible).await {
                    Ok(()) => {}
                    Err(wait::Wait::Preempted) => break 'waves,
                    Err(wait::Wait::Failed(why)) => {
                        let held = waves::blocked_by(dep, &why.message);
                        self.failed
                            .insert(dep.clone(), ComponentFailure::Health(why));
                        self.hold_back(&wave.component, Held::Dependency(held));
                        continue 'waves;
                    }
                }
            }
            for item in workloads.iter().filter(|w| w.component == wave.component) {
                self.apply_item(item).await;
            }
        }
    }

    /// Lists the live objects of `gvks` in the stack's namespace (one LIST per kind, at once).
    async fn fetch_lists(&self, gvks: Vec<GroupVersionKind>) -> Vec<Listed> {
        let selector = self.selector();
        let lists = futures::future::join_all(
            gvks.iter()
                .map(|gvk| self.cluster.list(gvk, self.ns(), &selector)),
        )
        .await;
        gvks.into_iter().zip(lists).collect()
    }

    /// Keeps the listed objects as the live state. A kind the cluster no longer serves holds
    /// nothing: its inventory entries that are not rendered any more (not in `wanted`) are
    /// dropped (nothing is left to delete). Any other failed LIST leaves its objects to a plain
    /// apply, so one kind never blocks the rest.
    fn take_lists(&mut self, lists: Vec<Listed>, wanted: &Wanted) {
        for (gvk, result) in lists {
            let items = match result {
                Ok(i) => i,
                Err(ClusterError::UnknownKind { .. }) => {
                    let gone: Vec<ObjectKey> = self
                        .inventory
                        .keys()
                        .filter(|k| k.group == gvk.group && k.kind == gvk.kind)
                        .filter(|k| {
                            !wanted.contains(&(k.group.clone(), k.kind.clone(), k.name.clone()))
                        })
                        .cloned()
                        .collect();
                    for k in gone {
                        warn!(object = %k, "dropped from the inventory: its kind is no longer served by the cluster, so nothing is left to delete");
                        self.inventory.remove(&k);
                    }
                    continue;
                }
                Err(e) => {
                    warn!(kind = %gvk.kind, error = %e, "listing failed; its objects are applied without comparing");
                    continue;
                }
            };
            for o in items {
                if let Some(k) = ObjectKey::of(&o) {
                    self.live.insert(inventory::id(&k), o);
                }
            }
        }
    }

    /// Marks as unavailable each image converge could not confirm (the `none` builder) that a
    /// changed object or a hook would start, that a Pod may never pull (`imagePullPolicy:
    /// Never`) and that no node holds, so nothing is started with it. An image that live Pods
    /// already run is there; so a no-op or a drift correction asks nothing. One LIST of Nodes
    /// at most; when a node's list may be truncated, nothing is decided.
    async fn confirm_images(&mut self, items: &[Item], hooks: &[Hook]) {
        let wanted: BTreeSet<String> = items
            .iter()
            .filter(|i| i.render_changed)
            .map(|i| &i.object)
            .chain(hooks.iter().map(|h| &h.object))
            .flat_map(plan::never_pulled)
            .filter(|i| self.unconfirmed.contains_key(i))
            .collect();
        if wanted.is_empty() {
            return;
        }
        let held: BTreeSet<String> = match self.cluster.node_images().await {
            Ok(Some(held)) => held.iter().map(|n| normalized_reference(n)).collect(),
            Ok(None) => {
                debug!("a node lists as many images as the kubelet reports: cannot tell which are missing");
                return;
            }
            Err(e) => {
                info!(error = %e, "cannot read the nodes' images; applying without checking them");
                return;
            }
        };
        for image in wanted {
            if held.contains(&normalized_reference(&image)) {
                continue;
            }
            let component = self.unconfirmed.get(&image).cloned().unwrap_or_default();
            let why = format!(
                "image {image} is on no node and its Pods never pull it (imagePullPolicy: Never); the `none` builder builds nothing: load the image into the cluster's nodes, or let converge build it (another `builder`)"
            );
            warn!(component = %component, %image, "image on no node: not applied");
            self.blocked
                .entry(component.clone())
                .or_insert(Held::ImageMissing(why.clone()));
            self.unavailable.insert(image, (component, why));
        }
    }

    /// Holds back the component of every object that runs an image that does not exist (a
    /// worker on the backend's image, say, is held back with the backend).
    fn hold_back_unavailable(&mut self, items: &[Item]) {
        for item in items {
            let c = if item.component.is_empty() {
                item.key.name.clone()
            } else {
                item.component.clone()
            };
            if self.blocked.contains_key(&c) {
                continue;
            }
            if let Some((image, (owner, _))) = plan::images(&item.object)
                .into_iter()
                .find_map(|i| self.unavailable.get(&i).map(|u| (i, u.clone())))
            {
                self.hold_back(
                    &c,
                    Held::ImageMissing(format!("runs {image} of `{owner}`, which does not exist")),
                );
            }
        }
    }

    async fn plan_item(&self, obj: DynamicObject) -> Result<Item, ClusterError> {
        let mut obj = obj;
        let mut key = ObjectKey::of(&obj).ok_or_else(|| ClusterError::Invalid {
            object: obj.metadata.name.clone().unwrap_or_default(),
            message: "rendered object has no kind or name".into(),
        })?;
        if !self.cluster.is_namespaced(&key).await? {
            obj.metadata.namespace = None;
            key.namespace.clear();
        }
        let record = self.inventory.get(&key).cloned();
        let live = self.live.get(&inventory::id(&key));
        Ok(plan::item(
            obj,
            key,
            record.as_ref(),
            live,
            self.commit,
            self.opts.full,
        ))
    }
}
