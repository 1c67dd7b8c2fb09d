//! The one writer of a stack's status record. A reconcile records every outcome through here:
//! healthy or not (at the end of its run), and a commit that could not be read, validated, built
//! or rendered (before any run), for the stacks the last valid commit had.

use std::path::Path;

use tracing::warn;

use super::load::{self, Selection};
use super::Clusters;
use crate::cluster::{Cluster, ClusterError};
use crate::desired::{self, StackRef};
use crate::error::Error;
use crate::status::{self, HistoryEntry, StackStatus};

/// How far back a commit that cannot be read looks for the stacks to record it in.
pub const LOOK_BACK: usize = 50;

/// The stacks of `stacks` as targets, with `context` overriding each stack's.
pub fn targets_of<'a>(
    stacks: impl IntoIterator<Item = &'a desired::Stack>,
    context: Option<&str>,
) -> Vec<StackRef> {
    stacks
        .into_iter()
        .map(|s| StackRef::of(s, context))
        .collect()
}

/// A commit that cannot be deployed as it is: wait for a new commit (or a person).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StalledTip {
    /// The stalled commit.
    pub commit: String,
    /// The reason recorded.
    pub reason: crate::outcome::Reason,
    /// The message recorded.
    pub message: String,
}

/// The time of a history entry.
pub(super) fn now() -> String {
    chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
}

/// Writes `next` (with `entry` in its history) over `old` when it says something new, and returns
/// the record as it now stands. A status update of a healthy stack that changed nothing is not
/// written, so a no-op reconcile makes no write.
pub(super) async fn write(
    cluster: &Cluster,
    old: Option<&StackStatus>,
    next: StackStatus,
    entry: HistoryEntry,
) -> (StackStatus, Result<(), ClusterError>) {
    let changed = old.is_none_or(|o| status::materially_changed(o, &next));
    let advanced = status::advance(old, next, entry);
    let saved = if changed {
        status::save(cluster.client(), &advanced).await
    } else {
        Ok(())
    };
    (advanced, saved)
}

/// A reason and a one-line message for an error that stopped a commit before its reconcile;
/// validation findings as `file:line:col: message`, at most five.
pub fn describe(e: &Error) -> (crate::outcome::Reason, String) {
    match e {
        Error::Invalid { commit, report } => {
            let errors: Vec<String> = report
                .diagnostics
                .iter()
                .filter(|d| d.is_error())
                .take(5)
                .map(|d| format!("{}: {}", d.location(), d.message))
                .collect();
            let more = report.error_count().saturating_sub(errors.len());
            let mut message = format!(
                "commit {} is invalid: {}",
                desired::short_id(commit),
                errors.join("; ")
            );
            if more > 0 {
                message.push_str(&format!(" (and {more} more)"));
            }
            (crate::outcome::Reason::ValidationFailed, message)
        }
        other => (other.reason(), other.to_string()),
    }
}

/// Records in each target's status that `commit` did not get to its reconcile: not ready, the
/// reason and message, a history entry. The last applied and healthy commits stay as they were,
/// since nothing was applied. Best effort: a record that cannot be written is logged.
pub(super) async fn record_stalled(
    clusters: &mut Clusters,
    kubeconfig: Option<&Path>,
    targets: &[StackRef],
    commit: &str,
    why: crate::outcome::Reason,
    message: &str,
) {
    for t in targets {
        let cluster = match clusters.get(kubeconfig, &t.context).await {
            Ok(c) => c,
            Err(e) => {
                warn!(stack = %t.stack, error = %e, "status not recorded");
                continue;
            }
        };
        // An unreadable record is kept aside (and logged) before this one replaces it.
        let old = match status::load_for_update(cluster.client(), &t.namespace, &t.stack).await {
            Ok((o, _kept_aside)) => o,
            Err(e) => {
                warn!(stack = %t.stack, error = %e, "status not recorded");
                continue;
            }
        };
        let mut next = old.clone().unwrap_or_else(|| StackStatus {
            stack: t.stack.clone(),
            namespace: t.namespace.clone(),
            ..Default::default()
        });
        next.ready = false;
        next.reason = why.to_string();
        next.message = message.to_string();
        let entry = HistoryEntry {
            commit: commit.to_string(),
            result: why.to_string(),
            duration_ms: 0,
            time: now(),
        };
        if let (_, Err(e)) = write(&cluster, old.as_ref(), next, entry).await {
            warn!(stack = %t.stack, error = %e, "status not recorded");
        }
    }
}

/// The stacks to record a failed `rev` in when the caller knows none: those of the newest valid
/// commit from `rev` back, as `selection` narrows them.
pub(super) fn last_known_targets(
    repo_path: &Path,
    rev: &str,
    selection: &Selection,
    context: Option<&str>,
) -> Vec<StackRef> {
    match load::newest_valid(repo_path, rev, selection, LOOK_BACK) {
        Ok(Some((_, commit))) => targets_of(commit.stacks(), context),
        Ok(None) | Err(_) => Vec::new(),
    }
}

/// Whether a commit failing with `e` is worth a status record: it was read but cannot be
/// deployed as it is. A missing repository, an unreachable cluster, a refused apply or an
/// unknown `--stack` leave the records as they are.
pub(super) fn recorded(e: &Error) -> bool {
    matches!(
        e,
        Error::Invalid { .. } | Error::Build(_) | Error::Render(_)
    )
}
