//! What the daemon writes into git after a reconcile: the note on the commit and, when a stack
//! asks for it (`onFailure: revert`) and every guard allows, the automatic `git revert` of a
//! commit that failed its health checks, which the ref watch then deploys like any commit.
//!
//! Neither ever fails or holds up a deploy: a note that cannot be written is logged once, a
//! revert that is refused says why once per commit. It decides nothing about the cluster.

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;
use std::time::Instant;

use tracing::{debug, error, info, warn};

use super::job::{Done, Outcome};
use super::state::{AfterDone, Finished};
use crate::desired::short_id;
use crate::history::notes::{self, Block, Written};
use crate::history::revert::{self, Refusal, RevertError};
use crate::reconcile::StackReport;
use crate::status::AutoRevert;
use crate::vocabulary::reason;

/// The longest failure detail put into a revert's message, in characters.
const WHY_MAX: usize = 200;

/// The daemon's git writes and what it remembers of them.
pub(super) struct GitHistory {
    root: PathBuf,
    /// The tracked ref (`refs/heads/main`, or pull mode's copy).
    tracked: String,
    pull_mode: bool,
    /// A note failed to be written already (it is logged once).
    note_warned: bool,
    /// Failed commits whose revert was decided already (made or refused): said once each.
    decided: BTreeSet<String>,
    /// Reverts made by this process, by failed commit: the record when notes cannot be written.
    reverted: BTreeMap<String, String>,
    /// The last revert made: the reconcile of its commit records it in the status.
    pub last_revert: Option<AutoRevert>,
}

/// The stack of `reports` whose failure asks for a revert: it failed its health checks (a Pod
/// failing past the fail-fast window or the health deadline), never became healthy with this
/// commit, and its desired state says `onFailure: revert`.
pub(super) fn revert_candidate<'a>(
    reports: &'a [StackReport],
    revert_stacks: &BTreeSet<String>,
) -> Option<&'a StackReport> {
    reports.iter().find(|r| {
        !r.ready
            && !r.preempted
            && r.reason == reason::HEALTH_FAILED
            && r.failed_step == Some("health")
            && r.status.last_healthy_commit != r.commit
            && revert_stacks.contains(&r.stack)
    })
}

/// Why a revert is made, one line: the reason, step and the first error of the stack.
fn why(r: &StackReport) -> String {
    let first = r
        .errors
        .first()
        .map(|e| e.lines().next().unwrap_or("").to_string())
        .unwrap_or_default();
    let first = match first.char_indices().nth(WHY_MAX) {
        Some((i, _)) => format!("{}…", &first[..i]),
        None => first,
    };
    format!("{} at health in stack {}: {first}", r.reason, r.stack)
}

impl GitHistory {
    /// The history of the checkout at `root`, deploying `tracked`.
    pub fn new(root: PathBuf, tracked: String, pull_mode: bool) -> Self {
        Self {
            root,
            tracked,
            pull_mode,
            note_warned: false,
            decided: BTreeSet::new(),
            reverted: BTreeMap::new(),
            last_revert: None,
        }
    }

    /// After a reconcile ended: revert its commit if asked and allowed, then note the outcome
    /// on the commit (one write, only when the outcome changed).
    pub fn after(&mut self, done: &Done, fin: &Finished, after: &AfterDone) {
        let mut blocks: Vec<Block> = Vec::new();
        match &done.outcome {
            Outcome::Reports(reports) => {
                blocks.extend(reports.iter().map(|r| Block::stack(&r.note())));
                let failed = matches!(
                    fin,
                    Finished::Reports {
                        ready: false,
                        preempted: false,
                        ..
                    }
                );
                if failed && !done.overlay {
                    if let Some(r) = revert_candidate(reports, &done.revert_stacks) {
                        if let Some(b) = self.revert(&done.commit, &why(r)) {
                            blocks.push(b);
                        }
                    }
                }
            }
            // A commit that cannot be deployed as it is: nothing was applied, which is worth
            // seeing in the history too.
            Outcome::Stalled(why, message) if after.stalled && !done.overlay => {
                blocks.push(Block::commit(why, message));
            }
            _ => {}
        }
        if !blocks.is_empty() {
            self.note(&done.commit, &blocks);
        }
    }

    fn note(&mut self, commit: &str, blocks: &[Block]) {
        let t0 = Instant::now();
        match notes::write(&self.root, commit, blocks) {
            Ok(Written::Updated) => {
                debug!(commit = %short_id(commit), took_us = t0.elapsed().as_micros() as u64, "deploy note written");
            }
            Ok(Written::Unchanged) => {
                debug!(commit = %short_id(commit), "deploy note unchanged");
            }
            Err(e) if !self.note_warned => {
                self.note_warned = true;
                warn!(error = %e, notes = crate::history::NOTES_REF, "cannot write the deploy note on the commit; deploys go on without notes (make the repository's .git writable by the daemon's user to get them; this is said once)");
            }
            Err(e) => debug!(error = %e, "deploy note not written"),
        }
    }

    /// Reverts `failed` when the guards allow, once; the block its note gains.
    fn revert(&mut self, failed: &str, why: &str) -> Option<Block> {
        let recorded = self.reverted.get(failed).cloned().or_else(|| {
            notes::read_at(&self.root, failed)
                .ok()
                .flatten()
                .and_then(|n| notes::reverted_by(&n))
        });
        let first = self.decided.insert(failed.to_string());
        match revert::revert(
            &self.root,
            &self.tracked,
            failed,
            why,
            recorded,
            self.pull_mode,
        ) {
            Ok(made) => {
                info!(failed = %short_id(failed), revert = %short_id(&made.commit), worktree = ?made.worktree.as_ref().map(|w| w.display().to_string()), %why, "auto-revert: committed a revert of the failed commit; deploying it");
                self.reverted
                    .insert(failed.to_string(), made.commit.clone());
                self.last_revert = Some(AutoRevert {
                    failed: failed.to_string(),
                    revert: made.commit.clone(),
                    why: why.to_string(),
                });
                Some(Block::reverted(&made.commit, why))
            }
            // Nothing to tell anyone: a newer commit is being deployed, or the revert exists.
            Err(RevertError::Refused(r @ (Refusal::Moved { .. } | Refusal::Already { .. }))) => {
                debug!(reason = %r, "auto-revert skipped");
                None
            }
            Err(RevertError::Refused(r)) => {
                if first {
                    error!("auto-revert: {r}");
                }
                Some(Block::not_reverted(&r.to_string()))
            }
            Err(RevertError::Git(e)) => {
                if first {
                    error!(error = %e, failed = %short_id(failed), "auto-revert failed; the failed commit stays deployed (revert it by hand: `git revert {}`)", short_id(failed));
                }
                Some(Block::not_reverted(&format!("{e}")))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::status::StackStatus;

    fn failed(stack: &str, why: &str, step: &str) -> StackReport {
        StackReport {
            stack: stack.into(),
            namespace: stack.into(),
            dir: "desired".into(),
            commit: "c".repeat(40),
            ready: false,
            reason: why.into(),
            failed_step: Some(match step {
                "health" => "health",
                _ => "apply",
            }),
            errors: vec!["backend: Deployment/b: pod b-1 is not ready\nmore".into()],
            warnings: Vec::new(),
            applied: Vec::new(),
            unchanged: 0,
            pruned: Vec::new(),
            kept: Vec::new(),
            blocked: BTreeMap::new(),
            requests: Default::default(),
            duration_ms: 0,
            status: StackStatus::default(),
            builds: Vec::new(),
            hooks: Vec::new(),
            preempted: false,
            needs_new_commit: false,
        }
    }

    fn revert_set(s: &[&str]) -> BTreeSet<String> {
        s.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn a_health_failure_of_an_opted_in_stack_asks_for_a_revert() {
        let reports = [failed("todo", reason::HEALTH_FAILED, "health")];
        let r = revert_candidate(&reports, &revert_set(&["todo"])).map(|r| r.stack.as_str());
        assert_eq!(r, Some("todo"));
        assert_eq!(
            why(&reports[0]),
            "HealthCheckFailed at health in stack todo: backend: Deployment/b: pod b-1 is not ready"
        );
    }

    #[test]
    fn off_by_default_and_never_for_other_failures() {
        let health = [failed("todo", reason::HEALTH_FAILED, "health")];
        assert!(revert_candidate(&health, &revert_set(&[])).is_none());
        let apply = [failed("todo", reason::APPLY_FAILED, "apply")];
        assert!(revert_candidate(&apply, &revert_set(&["todo"])).is_none());
        let mut preempted = failed("todo", reason::PROGRESSING, "health");
        preempted.preempted = true;
        assert!(revert_candidate(&[preempted], &revert_set(&["todo"])).is_none());
    }

    #[test]
    fn a_commit_that_was_healthy_once_is_not_reverted_when_the_cluster_fails_it_later() {
        let mut r = failed("todo", reason::HEALTH_FAILED, "health");
        r.status.last_healthy_commit = r.commit.clone();
        assert!(revert_candidate(&[r], &revert_set(&["todo"])).is_none());
    }
}
