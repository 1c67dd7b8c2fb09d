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
    /// The reason constant.
    pub reason: String,
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
    pub blocked: BTreeMap<String, String>,
    /// API requests made.
    pub requests: RequestCounts,
    /// Wall time in milliseconds.
    pub duration_ms: u64,
    /// The status recorded.
    pub status: StackStatus,
    /// What the build step did, per built component.
    pub builds: Vec<BuildOutcome>,
    /// The health wait was cut short because newer work was waiting: applied, not failed.
    pub preempted: bool,
    /// Every failure needs a new commit or a person (a field-manager conflict, an immutable
    /// field, an object the API server refuses): retrying the same commit fails the same way.
    pub needs_new_commit: bool,
}
