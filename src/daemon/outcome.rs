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
use crate::history::revert::{self, Recovered, Refusal, Request, RevertError};
use crate::outcome::Reason;
use crate::reconcile::StackReport;
use crate::status::AutoRevert;

/// The longest failure detail put into a revert's note, in characters.
const WHY_MAX: usize = 200;
/// How many component and object names a revert's commit message lists.
const NAMES_MAX: usize = 10;

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
    last_revert: Option<AutoRevert>,
}

/// The stack of `reports` whose failure asks for a revert: it failed its health checks (a Pod
/// failing past the fail-fast window or the health deadline), never became healthy with this
/// commit, and its desired state says `onFailure: revert` (`revert_stacks` maps each such stack
/// to the paths it owns).
pub(super) fn revert_candidate<'a>(
    reports: &'a [StackReport],
    revert_stacks: &BTreeMap<String, Vec<String>>,
) -> Option<&'a StackReport> {
    reports.iter().find(|r| {
        !r.ready
            && r.next != crate::outcome::Next::Superseded
            && r.reason == Reason::HealthFailed
            && r.failed_step == Some("health")
            && r.status.last_healthy_commit != r.commit
            && revert_stacks.contains_key(&r.stack)
    })
}

/// Whether a piece of an error line is a name (a component, `Kind/name`) rather than free text.
fn is_name(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 100
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.' | '/'))
}

/// Why a revert is made, for its commit message (immutable, likely pushed): only the reason,
/// the step, the stack and the component and object names the errors start with
/// (`backend: Deployment/b: <free text>`). The cluster's free text (kubelet and webhook messages
/// may echo Secret-derived values) never goes there; see [`detail`].
fn why(r: &StackReport) -> String {
    let mut names: Vec<&str> = Vec::new();
    for e in &r.errors {
        let line = e.lines().next().unwrap_or("");
        let parts: Vec<&str> = line.split(": ").collect();
        // The last part is the free text, even when it looks like a name.
        for p in parts.iter().take(parts.len().saturating_sub(1)).take(2) {
            if !is_name(p) {
                break;
            }
            if !names.contains(p) {
                names.push(p);
            }
        }
    }
    names.truncate(NAMES_MAX);
    let mut out = format!("{} at health in stack {}", r.reason, r.stack);
    if !names.is_empty() {
        out.push_str(&format!(" ({})", names.join(", ")));
    }
    out
}

/// The first error line, for the note only: cut, with credentials in URLs removed.
fn detail(r: &StackReport) -> String {
    let first = r
        .errors
        .first()
        .map(|e| e.lines().next().unwrap_or("").to_string())
        .unwrap_or_default();
    let first = strip_userinfo(&first);
    match first.char_indices().nth(WHY_MAX) {
        Some((i, _)) => format!("{}…", &first[..i]),
        None => first,
    }
}

/// `text` with the userinfo of every URL (`https://user:token@host/…`) removed. No helper of the
/// project did this (explain's redaction drops env values of Pod specs, a different thing).
pub(super) fn strip_userinfo(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(i) = rest.find("://") {
        let (head, tail) = rest.split_at(i + 3);
        out.push_str(head);
        let end = tail
            .find(|c: char| {
                c == '/' || c == '?' || c == '#' || c.is_whitespace() || c == '"' || c == '\''
            })
            .unwrap_or(tail.len());
        let authority = &tail[..end];
        match authority.rfind('@') {
            Some(at) => out.push_str(&authority[at + 1..]),
            None => out.push_str(authority),
        }
        rest = &tail[end..];
    }
    out.push_str(rest);
    out
}

/// What [`GitHistory::after`] needs of a finished reconcile, owned: it runs on a blocking
/// thread (git status and file writes must not stall the daemon's event loop).
pub(super) struct After {
    commit: String,
    overlay: bool,
    outcome: Outcome,
    fin: Finished,
    stalled: bool,
    revert_stacks: BTreeMap<String, Vec<String>>,
}

impl After {
    /// The parts of a finished reconcile the git writes need.
    pub fn of(done: &Done, fin: &Finished, after: &AfterDone) -> Self {
        Self {
            commit: done.commit.clone(),
            overlay: done.overlay,
            outcome: done.outcome.clone(),
            fin: fin.clone(),
            stalled: after.stalled,
            revert_stacks: done.revert_stacks.clone(),
        }
    }
}

impl GitHistory {
    /// The history of the checkout at `root`, deploying `tracked`. Finishes or rolls back a
    /// revert a crash interrupted, so the person's `git status` is what they left.
    pub fn new(root: PathBuf, tracked: String, pull_mode: bool) -> Self {
        match revert::recover(&root) {
            Ok(done) => {
                for r in done {
                    match r {
                        Recovered::Finished { revert, worktree } => {
                            info!(revert = %short_id(&revert), worktree = %worktree.display(), "auto-revert: finished updating the checkout after an interrupted revert")
                        }
                        Recovered::RolledBack { failed, worktree } => {
                            info!(failed = %short_id(&failed), worktree = %worktree.display(), "auto-revert: an interrupted revert never moved the branch; released converge's index.lock")
                        }
                    }
                }
            }
            Err(e) => warn!(error = %e, "auto-revert: cannot check for an interrupted revert"),
        }
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

    /// The auto-revert record for a reconcile of `commit`: the revert made by this process, or,
    /// after a restart, the one `commit` itself says it is (authored by converge, its parent the
    /// failed commit, git's revert line).
    pub fn auto_revert_for(&self, commit: &str) -> Option<AutoRevert> {
        if let Some(r) = self.last_revert.as_ref().filter(|r| r.revert == commit) {
            return Some(r.clone());
        }
        revert::converge_revert_of(&self.root, commit).map(|(failed, why)| AutoRevert {
            failed,
            revert: commit.to_string(),
            why,
        })
    }

    /// After a reconcile ended: revert its commit if asked and allowed, then note the outcome
    /// on the commit (one write, only when the outcome changed).
    pub fn after(&mut self, done: &After) {
        let mut blocks: Vec<Block> = Vec::new();
        match &done.outcome {
            Outcome::Reconciled(reports) => {
                blocks.extend(reports.iter().map(|r| {
                    let mut n = r.note();
                    n.message = strip_userinfo(&n.message);
                    Block::stack(&n)
                }));
                // A `commit:` block from an earlier attempt that applied nothing (a lease that
                // could not be taken) is stale now that the commit was applied.
                blocks.push(Block::commit_applied());
                let failed = matches!(
                    &done.fin,
                    Finished::Reports { next, .. }
                        if !matches!(next, crate::outcome::Next::Done | crate::outcome::Next::Superseded)
                );
                if failed && !done.overlay {
                    if let Some(r) = revert_candidate(reports, &done.revert_stacks) {
                        let scope = done
                            .revert_stacks
                            .get(&r.stack)
                            .cloned()
                            .unwrap_or_default();
                        if let Some(b) = self.revert(&done.commit, r, scope) {
                            blocks.push(b);
                        }
                    }
                }
            }
            // A commit that cannot be deployed as it is: nothing was applied, which is worth
            // seeing in the history too.
            Outcome::Stopped(_) if done.stalled && !done.overlay => {
                if let Finished::Stopped {
                    reason, message, ..
                } = &done.fin
                {
                    blocks.push(Block::commit(reason.as_str(), &strip_userinfo(message)));
                }
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

    /// The revert made of `failed` before: by this process, in its note, or found from the
    /// commits themselves (a crash between the branch move and the note loses neither).
    fn recorded(&self, failed: &str) -> Option<String> {
        self.reverted
            .get(failed)
            .cloned()
            .or_else(|| {
                notes::read_at(&self.root, failed)
                    .ok()
                    .flatten()
                    .and_then(|n| notes::reverted_by(&n))
            })
            .or_else(|| revert::find_revert(&self.root, &self.tracked, failed))
    }

    /// Reverts `failed` when the guards allow, once; the block its note gains.
    fn revert(&mut self, failed: &str, r: &StackReport, scope: Vec<String>) -> Option<Block> {
        let why = why(r);
        let detail = detail(r);
        let first = self.decided.insert(failed.to_string());
        let req = Request {
            branch: self.tracked.clone(),
            failed: failed.to_string(),
            stack: r.stack.clone(),
            reason: why.clone(),
            scope,
            reverted_by: self.recorded(failed),
            pull_mode: self.pull_mode,
        };
        let made = revert::prepare(&self.root, &req).and_then(|p| {
            // The intent goes on the failed commit first: a crash after the branch moves
            // leaves a note naming the revert (and the revert commit names the failed one).
            self.note(failed, &[Block::reverting(&p.revert, &why)]);
            revert::finish(&p, failed).inspect_err(|e| {
                self.note(failed, &[Block::not_reverted(&e.to_string())]);
            })
        });
        match made {
            Ok(made) => {
                info!(failed = %short_id(failed), revert = %short_id(&made.commit), worktree = ?made.worktree.as_ref().map(|w| w.display().to_string()), %why, "auto-revert: committed a revert of the failed commit; deploying it");
                self.reverted
                    .insert(failed.to_string(), made.commit.clone());
                self.last_revert = Some(AutoRevert {
                    failed: failed.to_string(),
                    revert: made.commit.clone(),
                    why: why.clone(),
                });
                Some(Block::reverted(&made.commit, &format!("{why}: {detail}")))
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

    fn failed(stack: &str, why: Reason, step: &str) -> StackReport {
        StackReport {
            stack: stack.into(),
            namespace: stack.into(),
            dir: "desired".into(),
            commit: "c".repeat(40),
            ready: false,
            reason: why,
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
            next: if why == Reason::Progressing {
                crate::outcome::Next::Superseded
            } else {
                crate::outcome::Next::Retry
            },
        }
    }

    fn revert_set(s: &[&str]) -> BTreeMap<String, Vec<String>> {
        s.iter()
            .map(|s| (s.to_string(), vec!["desired".to_string()]))
            .collect()
    }

    #[test]
    fn a_health_failure_of_an_opted_in_stack_asks_for_a_revert() {
        let reports = [failed("todo", Reason::HealthFailed, "health")];
        let r = revert_candidate(&reports, &revert_set(&["todo"])).map(|r| r.stack.as_str());
        assert_eq!(r, Some("todo"));
        assert_eq!(
            why(&reports[0]),
            "HealthCheckFailed at health in stack todo (backend, Deployment/b)"
        );
    }

    #[test]
    fn the_commit_message_reason_holds_names_only_and_the_note_has_no_url_credentials() {
        let mut r = failed("todo", Reason::HealthFailed, "health");
        r.errors = vec![
            "backend: Deployment/b: Back-off pulling https://bot:s3cr3t@registry.example/app: password=hunter2".into(),
            "db: webhook said: token abc123 rejected".into(),
        ];
        let why = why(&r);
        assert_eq!(
            why,
            "HealthCheckFailed at health in stack todo (backend, Deployment/b, db)"
        );
        for secret in ["s3cr3t", "hunter2", "abc123", "bot", "registry"] {
            assert!(!why.contains(secret), "{why}");
        }
        let detail = detail(&r);
        assert!(
            !detail.contains("s3cr3t") && !detail.contains("bot:"),
            "{detail}"
        );
        assert!(detail.contains("https://registry.example/app"), "{detail}");
        assert_eq!(
            strip_userinfo("a git://u@h/x and http://h:80/p?x=a@b"),
            "a git://h/x and http://h:80/p?x=a@b"
        );
    }

    fn git(dir: &std::path::Path, args: &[&str]) -> String {
        let out = std::process::Command::new("git")
            .arg("-C")
            .arg(dir)
            .args(args)
            .env("GIT_CONFIG_NOSYSTEM", "1")
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).trim().to_string()
    }

    #[test]
    fn the_daemon_in_pull_mode_refuses_to_revert_and_says_so_in_the_note() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        git(root, &["init", "-q", "-b", "main"]);
        git(root, &["config", "user.email", "t@converge.invalid"]);
        git(root, &["config", "user.name", "t"]);
        std::fs::create_dir_all(root.join("desired")).unwrap();
        std::fs::write(root.join("desired/b.yaml"), "v1\n").unwrap();
        git(root, &["add", "-A"]);
        git(root, &["commit", "-q", "-m", "v1"]);
        std::fs::write(root.join("desired/b.yaml"), "v2\n").unwrap();
        git(root, &["commit", "-q", "-am", "v2"]);
        let bad = git(root, &["rev-parse", "HEAD"]);
        let mut r = failed("todo", Reason::HealthFailed, "health");
        r.commit = bad.clone();
        let mut h = GitHistory::new(root.to_path_buf(), "refs/heads/main".into(), true);
        let block = h.revert(&bad, &r, vec!["desired".into()]);
        assert!(format!("{block:?}").contains("in pull mode"), "{block:?}");
        assert_eq!(
            git(root, &["rev-parse", "HEAD"]),
            bad,
            "the branch did not move"
        );
        assert!(h.last_revert.is_none());
        // And with pull mode off the same history reverts it: the refusal was pull mode's.
        let mut h = GitHistory::new(root.to_path_buf(), "refs/heads/main".into(), false);
        let block = h.revert(&bad, &r, vec!["desired".into()]).unwrap();
        h.note(&bad, &[block]);
        assert_ne!(git(root, &["rev-parse", "HEAD"]), bad);
        let note = git(
            root,
            &["log", "-1", "--notes=converge", "--format=%N", &bad],
        );
        assert!(note.contains("auto-revert: reverted by"), "{note}");
        assert_eq!(git(root, &["status", "--porcelain"]), "");
    }

    #[test]
    fn off_by_default_and_never_for_other_failures() {
        let health = [failed("todo", Reason::HealthFailed, "health")];
        assert!(revert_candidate(&health, &revert_set(&[])).is_none());
        let apply = [failed("todo", Reason::ApplyFailed, "apply")];
        assert!(revert_candidate(&apply, &revert_set(&["todo"])).is_none());
        let preempted = failed("todo", Reason::Progressing, "health");
        assert!(revert_candidate(&[preempted], &revert_set(&["todo"])).is_none());
    }

    #[test]
    fn a_commit_that_was_healthy_once_is_not_reverted_when_the_cluster_fails_it_later() {
        let mut r = failed("todo", Reason::HealthFailed, "health");
        r.status.last_healthy_commit = r.commit.clone();
        assert!(revert_candidate(&[r], &revert_set(&["todo"])).is_none());
    }
}
