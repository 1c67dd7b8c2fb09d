//! Helm hooks: pre hooks before anything is applied, post hooks after everything is healthy,
//! in weight order, with Helm's delete policies. Unlike Helm, a phase whose hooks all render
//! exactly as at their last successful run is skipped (unless a hook asks to run always), and a
//! hook is never started with an image of this commit that was not built.

use std::collections::BTreeMap;

use kube::api::DynamicObject;
use tracing::{info, warn};

use super::wait::Wait;
use super::Run;
use crate::cluster::{inventory, ApplyOptions, ObjectKey};
use crate::desired;
use crate::reconcile::plan;
use crate::reconcile::report::{HookAction, HookReport};
use crate::reconcile::step::{Failure, Step};
use crate::render::Hook;
use crate::status::HookRun;
use crate::vocabulary::{ANNOTATION_COMMIT, ANNOTATION_HOOK_RERUN};

/// The target of progress events (rendered as live lines on a terminal by the CLI).
const PROGRESS: &str = "converge::progress";

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

impl Run<'_> {
    /// The commit of the hook's last successful run, when its render is the same now.
    fn unchanged_since(&self, hook: &Hook) -> Option<String> {
        let name = short(hook)?;
        let last = self.old_status.as_ref()?.hook_run(&name)?;
        (!always(hook) && last.digest == digest(&hook.object)).then(|| last.commit.clone())
    }

    /// Whether a hook that ran before renders differently now (a commit that changes only a
    /// hook is still a deploy). A hook never recorded does not count: only a deploy runs it.
    pub(super) fn a_hook_changed(&self, hooks: &[Hook]) -> bool {
        let Some(old) = self.old_status.as_ref() else {
            return false;
        };
        hooks.iter().any(|h| {
            short(h)
                .and_then(|n| old.hook_run(&n))
                .is_some_and(|last| last.digest != digest(&h.object))
        })
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

    /// Runs one phase's hooks in weight order. As in Helm, `hook-succeeded` deletions wait until
    /// the whole phase succeeded: a later hook may need an earlier one (the migration Job runs as
    /// the hook ServiceAccount created just before it). So the phase runs or is skipped as a
    /// whole: skipped when every hook renders as at its last successful run.
    pub(super) async fn run_hooks(
        &mut self,
        step: Step,
        event: &str,
        hooks: &[&Hook],
    ) -> Result<(), Failure> {
        if hooks.is_empty() {
            return Ok(());
        }
        // An image of this commit that was not built: starting the hook would leave a Pod that
        // can never pull it. Nothing of the commit is applied, as when a Helm hook fails.
        let missing = hooks.iter().find_map(|h| {
            plan::images(&h.object).into_iter().find_map(|image| {
                self.unavailable
                    .get(&image)
                    .map(|(c, why)| (short(h).unwrap_or_default(), image, c.clone(), why.clone()))
            })
        });
        if let Some((hook_name, image, component, why)) = missing {
            for h in hooks {
                let detail = format!("needs {image}, which was not built");
                self.report_hook(h, event, HookAction::Held, detail);
            }
            warn!(hook = %hook_name, %image, "hook not started: its image was not built");
            self.blocked.entry(component.clone()).or_insert(why.clone());
            return Err(Failure::Build {
                component,
                why: format!(
                    "{why}\nthe {event} hook {hook_name} runs {image}, so it was not started and nothing of this commit was applied; the previous version keeps serving"
                ),
            });
        }
        let since: Vec<Option<String>> = hooks.iter().map(|h| self.unchanged_since(h)).collect();
        if since.iter().all(Option::is_some) {
            for (h, c) in hooks.iter().zip(since) {
                let c = desired::short_id(c.as_deref().unwrap_or_default()).to_string();
                let name = short(h).unwrap_or_default();
                info!(hook = %name, since = %c, "hook skipped: unchanged since {c}");
                info!(target: PROGRESS, step = "hook.skipped", hook = %name, "{name} skipped: unchanged since {c}");
                self.report_hook(
                    h,
                    event,
                    HookAction::Skipped,
                    format!("unchanged since {c}"),
                );
            }
            return Ok(());
        }
        let mut ran = Vec::new();
        for hook in hooks {
            match self.run_hook(step, hook).await {
                Ok(()) => ran.push(*hook),
                Err(f) => {
                    self.report_hook(hook, event, HookAction::Failed, f.to_string());
                    return Err(f);
                }
            }
        }
        for hook in hooks {
            if !hook.delete_policies.iter().any(|d| d == "hook-succeeded") {
                continue;
            }
            if let Some(key) = ObjectKey::of(&hook.object) {
                self.delete_own(&key).await.map_err(|e| Failure::Hook {
                    step,
                    hook: key.short(),
                    why: e.to_string(),
                })?;
            }
        }
        let now = crate::reconcile::record::now();
        for hook in ran {
            if let Some(name) = short(hook) {
                self.hook_runs.push(HookRun {
                    hook: name,
                    digest: digest(&hook.object),
                    commit: self.commit.to_string(),
                    time: now.clone(),
                });
            }
            self.report_hook(hook, event, HookAction::Ran, String::new());
        }
        Ok(())
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

/// The hooks of `old` with this run's successes in place of their earlier runs.
pub(super) fn merge_runs(old: &[HookRun], new: Vec<HookRun>) -> Vec<HookRun> {
    let mut by: BTreeMap<String, HookRun> =
        old.iter().map(|h| (h.hook.clone(), h.clone())).collect();
    for h in new {
        by.insert(h.hook.clone(), h);
    }
    by.into_values().collect()
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
    fn this_runs_successes_replace_the_earlier_ones_and_others_stay() {
        let run = |hook: &str, commit: &str| HookRun {
            hook: hook.into(),
            digest: format!("d-{commit}"),
            commit: commit.into(),
            time: String::new(),
        };
        let merged = merge_runs(
            &[run("Job/migrate", "c1"), run("Job/seed", "c1")],
            vec![run("Job/migrate", "c2")],
        );
        assert_eq!(
            merged,
            vec![run("Job/migrate", "c2"), run("Job/seed", "c1")]
        );
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
        o.metadata
            .annotations
            .get_or_insert_with(Default::default)
            .insert(ANNOTATION_HOOK_RERUN.into(), "Always".into());
        assert!(always(&hook(o)));
    }
}
