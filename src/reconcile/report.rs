//! What one reconcile of one stack did, as the CLI prints it and the daemon logs it.

use std::collections::BTreeMap;

use serde::Serialize;

use crate::build::BuildOutcome;
use crate::cluster::RequestCounts;
use crate::status::StackStatus;

/// What one reconcile of one stack did.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct StackReport {
    /// The stack.
    pub stack: String,
    /// Its namespace.
    pub namespace: String,
    /// Its directory in the repository (`desired/dev`).
    pub dir: String,
    /// The commit reconciled.
    pub commit: String,
    /// Whether everything applied and became healthy.
    pub ready: bool,
    /// Why it ended as it did.
    pub reason: crate::outcome::Reason,
    /// The step the reconcile stopped at when it did not end healthy (`apply`, `health`,
    /// `pre-hooks`…), from [`crate::reconcile::Step`].
    #[serde(skip_serializing_if = "Option::is_none")]
    pub failed_step: Option<&'static str>,
    /// Every problem, one line each.
    pub errors: Vec<String>,
    /// What went wrong but was handled (an unreadable status record kept aside), one line each.
    pub warnings: Vec<String>,
    /// Objects applied (created or changed).
    pub applied: Vec<String>,
    /// Objects left alone because nothing changed.
    pub unchanged: usize,
    /// Objects pruned.
    pub pruned: Vec<String>,
    /// Objects no longer rendered but kept, with why.
    pub kept: Vec<String>,
    /// Components blocked, with why.
    pub blocked: BTreeMap<String, crate::reconcile::step::Held>,
    /// API requests made.
    pub requests: RequestCounts,
    /// Wall time in milliseconds.
    pub duration_ms: u64,
    /// The status recorded.
    pub status: StackStatus,
    /// What the build step did, per built component.
    pub builds: Vec<BuildOutcome>,
    /// Each hook this reconcile considered: run, skipped or held back.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub hooks: Vec<HookReport>,
    /// What happens next, from the failure's type ([`crate::outcome`]); in JSON, `next` and
    /// the `preempted` and `needsNewCommit` flags.
    #[serde(flatten)]
    pub next: crate::outcome::Next,
}

/// What became of one hook in a reconcile.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct HookReport {
    /// `Kind/name`.
    pub hook: String,
    /// The event it ran for (`pre-upgrade`, `post-install`…).
    pub phase: String,
    /// What converge did with it.
    pub action: HookAction,
    /// Why, in a few words (`unchanged since 0123abc`, the image that was not built…).
    #[serde(skip_serializing_if = "String::is_empty")]
    pub detail: String,
}

/// What converge did with one hook.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum HookAction {
    /// It ran and succeeded.
    Ran,
    /// It ran and failed.
    Failed,
    /// Not run: its render is identical to its last successful run.
    Skipped,
    /// Not run: an image it needs was not built.
    Held,
}

impl StackReport {
    /// What the git note on the commit says of this reconcile (no Secret values: reasons,
    /// object names, image tags and the status record's message).
    pub fn note(&self) -> crate::history::notes::StackNote {
        use crate::build::Action;
        let images = self
            .builds
            .iter()
            .map(|b| {
                let action = match b.action {
                    Action::Exists => "reused",
                    Action::Built => "built",
                    Action::Loaded => "loaded",
                    Action::Skipped => "not built here",
                    Action::Failed { .. } => "build failed",
                };
                format!("{} ({action})", b.image)
            })
            .collect();
        crate::history::notes::StackNote {
            stack: self.stack.clone(),
            dir: self.dir.clone(),
            namespace: self.namespace.clone(),
            reason: self.reason.as_str().to_string(),
            ready: self.ready,
            failed_step: self.failed_step.map(str::to_string),
            message: self
                .errors
                .first()
                .cloned()
                .unwrap_or_else(|| self.status.message.clone()),
            time: self
                .status
                .history
                .first()
                .map(|h| h.time.clone())
                .unwrap_or_default(),
            duration_ms: self.duration_ms,
            images,
            applied: self.applied.clone(),
            pruned: self.pruned.clone(),
            reverts: self
                .status
                .auto_revert
                .as_ref()
                .filter(|r| r.revert == self.commit)
                .map(|r| r.failed.clone()),
        }
    }
}
