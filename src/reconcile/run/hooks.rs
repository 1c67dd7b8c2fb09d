//! Helm hooks: pre hooks before anything is applied, post hooks after everything is healthy,
//! in weight order, with Helm's delete policies. Unlike Helm, hooks run only for a commit being
//! deployed (never for a drift correction, a resync or a retry of a settled commit), a hook
//! whose render is unchanged since its last successful run is skipped (unless it asks to run
//! always), and a hook is never started with an image of this commit that does not exist.
//! What the hooks did is kept in the inventory's ConfigMap ([`inventory::Hooks`]).

use std::collections::BTreeSet;

use kube::api::DynamicObject;
use tracing::{info, warn};

use super::wait::Wait;
use super::Run;
use crate::cluster::inventory::{self, HookRun};
use crate::cluster::{ApplyOptions, ObjectKey};
use crate::desired;
use crate::reconcile::plan::{self, Item};
use crate::reconcile::report::{HookAction, HookReport};
use crate::reconcile::step::{Failure, Step};
use crate::render::Hook;
use crate::vocabulary::{ANNOTATION_COMMIT, ANNOTATION_HOOK_RERUN};

/// The target of progress events (rendered as live lines on a terminal by the CLI).
use crate::progress::TARGET as PROGRESS;

/// sha256 of a hook's manifest without what changes from one render or apply to the next
/// (server-set metadata, status, converge's commit annotation): equal digests run the same
/// thing.
pub(in crate::reconcile) fn digest(obj: &DynamicObject) -> String {
    let mut o = obj.clone();
    let m = &mut o.metadata;
    m.resource_version = None;
    m.uid = None;
    m.creation_timestamp = None;
    m.deletion_timestamp = None;
    m.generation = None;
    m.managed_fields = None;
    if let Some(a) = m.annotations.as_mut() {
        a.remove(ANNOTATION_COMMIT);
    }
    if let Some(d) = o.data.as_object_mut() {
        d.remove("status");
    }
    plan::object_hash(&o)
}

/// Whether the hook asks to run on every deploy, as Helm runs hooks.
fn always(hook: &Hook) -> bool {
    hook.object
        .metadata
        .annotations
        .as_ref()
        .and_then(|a| a.get(ANNOTATION_HOOK_RERUN))
        .is_some_and(|v| v.trim().eq_ignore_ascii_case("always"))
}

/// `Kind/name` of a hook.
fn short(hook: &Hook) -> Option<String> {
    ObjectKey::of(&hook.object).map(|k| k.short())
}

/// Whether a hook does the work (a Job or a Pod) rather than support it (the ServiceAccount,
/// ConfigMap or Secret a Job of its phase uses).
fn does_work(hook: &Hook) -> bool {
    ObjectKey::of(&hook.object).is_some_and(|k| k.kind == "Job" || k.kind == "Pod")
}

impl Run<'_> {
    /// Whether this commit's hooks are settled: all ran (or were skipped) for it already. A
    /// stack an older converge managed (no record of hooks) is adopted as settled when the
    /// commit changes nothing, so upgrading converge runs no hook.
    pub(super) fn settled(&mut self, install: bool, items: &[Item], hooks: &[Hook]) -> bool {
        if install {
            return false;
        }
        let known = &self.loaded_inventory.hooks;
        if known.settled == self.commit {
            return true;
        }
        if !known.tracked && !items.iter().any(|i| i.render_changed) {
            for h in hooks {
                self.record_run(h);
            }
            self.settle(hooks);
            return true;
        }
        false
    }

    /// Marks this commit's hooks settled, keeping only the records of hooks it renders.
    pub(super) fn settle(&mut self, rendered: &[Hook]) {
        let names: BTreeSet<String> = rendered.iter().filter_map(short).collect();
        let h = &mut self.inventory.hooks;
        h.settled = self.commit.to_string();
        h.runs.retain(|r| names.contains(&r.hook));
    }

    /// The commit of the hook's last successful run, when it need not run again: its render is
    /// unchanged, it does not ask to run always, and this is not a first install.
    fn unchanged_since(&self, hook: &Hook, install: bool) -> Option<String> {
        if install || always(hook) {
            return None;
        }
        let last = self.inventory.hooks.run_of(&short(hook)?)?;
        (last.digest == digest(&hook.object)).then(|| last.commit.clone())
    }

    /// Which hooks of a phase run: each one that changed (or runs always), and the supporting
    /// objects of a phase in which any work runs (the Job needs its ServiceAccount).
    fn due(&self, hooks: &[&Hook], install: bool) -> Vec<bool> {
        let changed: Vec<bool> = hooks
            .iter()
            .map(|h| self.unchanged_since(h, install).is_none())
            .collect();
        let work = hooks.iter().zip(&changed).any(|(h, c)| *c && does_work(h));
        hooks
            .iter()
            .zip(changed)
            .map(|(h, c)| c || (work && !does_work(h)))
            .collect()
    }

    /// Whether any hook of a phase will run.
    pub(super) fn phase_due(&self, hooks: &[&Hook], install: bool) -> bool {
        self.due(hooks, install).into_iter().any(|d| d)
    }

    fn report_hook(&mut self, hook: &Hook, event: &str, action: HookAction, detail: String) {
        if let Some(hook) = short(hook) {
            self.hook_reports.push(HookReport {
                hook,
                phase: event.to_string(),
                action,
                detail,
            });
        }
    }

    /// Runs one phase's due hooks in weight order, skipping the rest. As in Helm,
    /// `hook-succeeded` deletions wait until the whole phase succeeded: a later hook may need an
    /// earlier one (the migration Job runs as the hook ServiceAccount created just before it).
    /// Each success is recorded (and saved) at once, so a crash never runs it again.
    pub(super) async fn run_hooks(
        &mut self,
        step: Step,
        hooks: &[&Hook],
        install: bool,
    ) -> Result<(), Failure> {
        if hooks.is_empty() {
            return Ok(());
        }
        let event = match (step, install) {
            (Step::PreHooks, true) => "pre-install",
            (Step::PreHooks, false) => "pre-upgrade",
            (_, true) => "post-install",
            (_, false) => "post-upgrade",
        };
        let due = self.due(hooks, install);
        // An image of this commit that does not exist: starting the hook would leave a Pod that
        // can never pull it. What the commit changes is not applied, as when a Helm hook fails.
        let missing = hooks
            .iter()
            .zip(&due)
            .filter(|(_, d)| **d)
            .find_map(|(h, _)| {
                plan::images(&h.object).into_iter().find_map(|image| {
                    self.unavailable.get(&image).map(|(c, why)| {
                        (short(h).unwrap_or_default(), image, c.clone(), why.clone())
                    })
                })
            });
        if let Some((hook_name, image, component, why)) = missing {
            for h in hooks {
                let detail = format!("needs {image}, which does not exist");
                self.report_hook(h, event, HookAction::Held, detail);
            }
            warn!(hook = %hook_name, %image, "hook not started: its image does not exist");
            self.blocked
                .entry(component.clone())
                .or_insert(super::Held::ImageMissing(why.clone()));
            return Err(Failure::Build {
                component,
                why: format!(
                    "{why}\nthe {event} hook {hook_name} runs {image}, so it was not started and nothing this commit changes was applied; the previous version keeps serving. Fix what stopped the build (above); the next reconcile (the daemon's retry, `converge apply`, or a new commit) applies it"
                ),
            });
        }
        let mut ran = Vec::new();
        for (hook, due) in hooks.iter().zip(due) {
            if !due {
                let c = self.unchanged_since(hook, install).unwrap_or_default();
                let c = desired::short_id(&c).to_string();
                let name = short(hook).unwrap_or_default();
                info!(hook = %name, since = %c, "hook skipped: unchanged since {c}");
                info!(target: PROGRESS, step = "hook.skipped", hook = %name, "{name} skipped: unchanged since {c}");
                self.report_hook(
                    hook,
                    event,
                    HookAction::Skipped,
                    format!("unchanged since {c}"),
                );
                continue;
            }
            match self.run_hook(step, hook).await {
                Ok(()) => {
                    ran.push(*hook);
                    self.record_run(hook);
                    self.report_hook(hook, event, HookAction::Ran, String::new());
                }
                Err(f) => {
                    self.report_hook(hook, event, HookAction::Failed, f.to_string());
                    // The hooks that succeeded before it are recorded.
                    let _ = self.save_inventory().await;
                    return Err(f);
                }
            }
        }
        self.save_inventory().await?;
        // Clean-up after success is best effort: the work is done and recorded.
        for hook in ran {
            if !hook.delete_policies.iter().any(|d| d == "hook-succeeded") {
                continue;
            }
            if let Some(key) = ObjectKey::of(&hook.object) {
                if let Err(e) = self.delete_own(&key).await {
                    warn!(hook = %key.short(), error = %e, "hook succeeded but was not deleted (hook-succeeded); it is deleted before its next run");
                }
            }
        }
        Ok(())
    }

    /// Records a hook's successful run in the inventory's hook record.
    fn record_run(&mut self, hook: &Hook) {
        let Some(name) = short(hook) else {
            return;
        };
        let run = HookRun {
            hook: name.clone(),
            digest: digest(&hook.object),
            commit: self.commit.to_string(),
            time: crate::reconcile::record::now(),
        };
        let runs = &mut self.inventory.hooks.runs;
        runs.retain(|r| r.hook != name);
        runs.push(run);
    }

    /// Runs one hook: deletes the previous one when asked, applies it, waits for a Job to finish.
    async fn run_hook(&mut self, step: Step, hook: &Hook) -> Result<(), Failure> {
        let Some(key) = ObjectKey::of(&hook.object) else {
            return Ok(());
        };
        let fail = |why: String| Failure::Hook {
            step,
            hook: key.short(),
            why,
        };
        let has = |p: &str| hook.delete_policies.iter().any(|d| d == p);
        if has("before-hook-creation")
            && self
                .delete_own(&key)
                .await
                .map_err(|e| fail(e.to_string()))?
        {
            self.wait_gone(&key)
                .await
                .map_err(|e| fail(e.to_string()))?;
        }
        self.cluster
            .apply(
                &hook.object,
                ApplyOptions {
                    force: true,
                    dry_run: false,
                },
            )
            .await
            .map_err(|e| fail(e.to_string()))?;
        info!(hook = %key.short(), "hook started");
        info!(target: PROGRESS, step = "hook.start", hook = %key.short(), "{} started", key.short());
        let started = std::time::Instant::now();
        let result = if key.kind == "Job" {
            self.wait_healthy(std::slice::from_ref(&key), false)
                .await
                .map_err(|w| match w {
                    Wait::Failed(why) => why,
                    Wait::Preempted => "preempted".to_string(),
                })
        } else {
            Ok(())
        };
        self.health.remove(&inventory::id(&key));
        let elapsed_ms = started.elapsed().as_millis() as u64;
        match result {
            Ok(()) => {
                info!(hook = %key.short(), elapsed_ms, "hook succeeded");
                info!(target: PROGRESS, step = "hook.done", hook = %key.short(), elapsed_ms, "{} succeeded in {:.1}s", key.short(), elapsed_ms as f64 / 1000.0);
                Ok(())
            }
            Err(why) => {
                if has("hook-failed") {
                    let _ = self.delete_own(&key).await;
                }
                Err(fail(why))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn job(image: &str) -> DynamicObject {
        serde_json::from_value(json!({"apiVersion": "batch/v1", "kind": "Job",
            "metadata": {"name": "migrate", "namespace": "todo", "annotations": {"helm.sh/hook": "pre-upgrade"}},
            "spec": {"template": {"spec": {"restartPolicy": "Never", "containers": [{"name": "m", "image": image}]}}}}))
        .unwrap()
    }

    #[test]
    fn a_hook_digest_ignores_what_the_server_and_converge_add_but_not_its_image() {
        let a = job("todo-backend:aaaa");
        let mut b = a.clone();
        b.metadata.resource_version = Some("123".into());
        b.metadata.uid = Some("u".into());
        b.metadata.generation = Some(2);
        b.metadata
            .annotations
            .get_or_insert_with(Default::default)
            .insert(ANNOTATION_COMMIT.into(), "c0ffee".into());
        b.data["status"] = json!({"succeeded": 1});
        assert_eq!(digest(&a), digest(&b));
        assert_ne!(digest(&a), digest(&job("todo-backend:bbbb")));
    }

    #[test]
    fn the_rerun_annotation_asks_for_helms_behaviour() {
        let mut o = job("x:1");
        let hook = |o: DynamicObject| Hook {
            object: o,
            events: vec!["pre-upgrade".into()],
            weight: 0,
            delete_policies: vec![],
        };
        assert!(!always(&hook(o.clone())));
        assert!(does_work(&hook(o.clone())));
        o.metadata
            .annotations
            .get_or_insert_with(Default::default)
            .insert(ANNOTATION_HOOK_RERUN.into(), "Always".into());
        assert!(always(&hook(o)));
    }
}
