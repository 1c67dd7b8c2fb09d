//! Helm hooks: pre hooks before anything is applied, post hooks after everything is healthy,
//! in weight order, with Helm's delete policies.

use super::wait::Wait;
use super::Run;
use crate::cluster::{inventory, ApplyOptions, ObjectKey};
use crate::reconcile::step::{Failure, Step};
use crate::render::Hook;
use tracing::info;

impl Run<'_> {
    /// Runs one phase's hooks in weight order. As in Helm, `hook-succeeded` deletions wait until
    /// the whole phase succeeded: a later hook may need an earlier one (the migration Job runs as
    /// the hook ServiceAccount created just before it).
    pub(super) async fn run_hooks(&mut self, step: Step, hooks: &[&Hook]) -> Result<(), Failure> {
        for hook in hooks {
            self.run_hook(step, hook).await?;
        }
        for hook in hooks {
            if !hook.delete_policies.iter().any(|d| d == "hook-succeeded") {
                continue;
            }
            if let Some(key) = ObjectKey::of(&hook.object) {
                self.cluster.delete(&key).await.map_err(|e| Failure::Hook {
                    step,
                    hook: key.short(),
                    why: e.to_string(),
                })?;
            }
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
                .cluster
                .delete(&key)
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
        info!(hook = %key, "hook started");
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
        match result {
            Ok(()) => {
                info!(hook = %key, "hook succeeded");
                Ok(())
            }
            Err(why) => {
                if has("hook-failed") {
                    let _ = self.cluster.delete(&key).await;
                }
                Err(fail(why))
            }
        }
    }
}
