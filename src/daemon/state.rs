//! The daemon's decisions as a pure state machine: what merges into the pending reconcile, which
//! commit the next one reads (the tip, or the last applied commit while the tip is stalled), when
//! a running reconcile is asked to stop at its next step boundary, when to retry, when a resync
//! may be skipped, and which events are converge's own doing.
//!
//! It never performs I/O, never logs and never reads a clock: the loop in `mod.rs` turns I/O into
//! these calls (passing `now`) and carries out what they return.

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

use super::backoff::{Backoff, ObjectBackoff};
use crate::outcome::{self, Reason};

/// What woke the daemon; only a span field, the reconcile never branches on it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Trigger {
    /// The daemon started.
    Startup,
    /// The tracked ref moved.
    Commit,
    /// A managed object changed out of band.
    Drift,
    /// The periodic resync found a reason to look.
    Resync,
    /// The periodic full resync.
    FullResync,
    /// `converge sync` or SIGUSR1.
    Sync,
    /// SIGHUP.
    Reload,
    /// A retry after a failure.
    Retry,
    /// The cluster's status record names a commit this daemon did not apply.
    Record,
    /// A Secret the stack reads changed.
    Secret,
    /// A pause ended (by itself or `converge resume`): report the hand changes and restore.
    PauseEnd,
}

impl Trigger {
    /// Whether a reconcile it starts may reuse the commit as the daemon last prepared it
    /// (`complete`: with every image built): the commit did not change, and nobody asked to
    /// read it again. Only the back-off retry builds a failed image again: drift, a Secret or a
    /// resync re-apply what is there (the failed component held back) without paying for it.
    pub fn reuses_prepared(self, complete: bool) -> bool {
        match self {
            Trigger::Drift
            | Trigger::Record
            | Trigger::Secret
            | Trigger::Resync
            | Trigger::PauseEnd => true,
            Trigger::Retry => complete,
            Trigger::Startup
            | Trigger::Commit
            | Trigger::FullResync
            | Trigger::Sync
            | Trigger::Reload => false,
        }
    }

    /// The span field value.
    pub fn as_str(self) -> &'static str {
        match self {
            Trigger::Startup => "startup",
            Trigger::Commit => "commit",
            Trigger::Drift => "drift",
            Trigger::Resync => "resync",
            Trigger::FullResync => "full-resync",
            Trigger::Sync => "sync",
            Trigger::Reload => "reload",
            Trigger::Retry => "retry",
            Trigger::Record => "record",
            Trigger::Secret => "secret",
            Trigger::PauseEnd => "pause-end",
        }
    }
}

/// How soon after converge corrected an object a new drift of it counts as a fight.
pub const FIGHT_WINDOW: Duration = Duration::from_secs(5);

/// How soon a reconcile waiting for a dependency (a namespace or an object still being
/// deleted) runs again: a fixed, short requeue, since nothing failed.
pub const DEPENDENCY_REQUEUE: Duration = Duration::from_secs(5);

/// A reconcile waiting to start; triggers arriving meanwhile merge into it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Pending {
    /// The first trigger (a span field).
    pub trigger: Trigger,
    /// Whether any merged trigger asked for a full compare.
    pub full: bool,
    /// Whether a drift merged into it (its applies count as drift corrections).
    pub drift: bool,
}

/// Merges `trigger` into `pending`.
pub fn merge(pending: &mut Option<Pending>, trigger: Trigger, full: bool) {
    let drift = trigger == Trigger::Drift;
    match pending {
        Some(p) => {
            p.full |= full;
            p.drift |= drift;
        }
        None => {
            *pending = Some(Pending {
                trigger,
                full,
                drift,
            })
        }
    }
}

/// A tip that cannot be deployed as it is: wait for a new commit (or a person).
pub use crate::reconcile::StalledTip as Stall;

/// A reconcile to start now.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Start {
    /// The commit to reconcile.
    pub commit: String,
    /// What started it.
    pub trigger: Trigger,
    /// Compare every object.
    pub full: bool,
    /// A drift merged into it.
    pub drift: bool,
    /// While the tip is stalled: its reason, recorded again after reconciling `commit`.
    pub overlay: Option<Stall>,
}

/// What the loop does when idle.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Next {
    /// Nothing pending.
    Idle,
    /// Start this reconcile.
    Start(Start),
    /// The tip is stalled and no commit is known to have been applied: nothing to do.
    NothingApplied,
}

/// How a reconcile ended, as far as the policy cares: what happens next
/// ([`crate::outcome::next`]) and what to record when it waits for a new commit.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Finished {
    /// The reconcile ran.
    Reports {
        /// What happens next.
        next: outcome::Next,
        /// When it waits for a new commit (every failure would fail the same way again): the
        /// reason and message recorded.
        stall: Option<(Reason, String)>,
    },
    /// It stopped before reconciling (an invalid commit, a bad build context, an unreachable
    /// cluster, a Lease held elsewhere).
    Stopped {
        /// What happens next.
        next: outcome::Next,
        /// The reason recorded.
        reason: Reason,
        /// The message recorded.
        message: String,
    },
    /// Builds were cancelled by shutdown.
    Cancelled,
}

/// What the loop does after a reconcile ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AfterDone {
    /// Retry at this time (a failure).
    pub retry_at: Option<Instant>,
    /// The daemon is converged on the tip.
    pub ready: bool,
    /// The commit is stalled now (the loop logs it once).
    pub stalled: bool,
}

/// What to do about one drift event.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DriftVerdict {
    /// Correct it now; `preempt` asks the running reconcile to stop at its next health wait.
    Now {
        /// Ask the running reconcile to stop at its next step boundary.
        preempt: bool,
    },
    /// The object is being fought over: correct it at this time.
    Later(Instant),
    /// Its component (or its stack) is paused until this time: left alone until then.
    Paused(Instant),
}

/// One pause in force as the daemon keeps it: its component (`None`: the whole stack) and when
/// it ends.
pub type PauseEnd = (Option<String>, Instant);

/// What the cluster's status record says, compared with what this daemon applied.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RecordVerdict {
    /// Nothing to do.
    Agrees,
    /// The first commit known to be applied (a restart): re-apply it while the tip is stalled.
    Learned,
    /// Someone else applied another commit (`converge apply --force`): reconcile the tip.
    Foreign {
        /// What this daemon last applied.
        ours: String,
    },
}

/// The state of a running reconcile.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Running {
    commit: String,
    /// It re-applies the last applied commit while the tip is stalled.
    overlay: bool,
    /// Drift events counted when it started.
    drift_seq: u64,
    /// Whether it was already asked to stop at its next step boundary.
    preempt_requested: bool,
}

/// Everything the daemon decides from.
#[derive(Debug, Clone)]
pub struct State {
    pending: Option<Pending>,
    running: Option<Running>,
    /// The tip last seen.
    tip: Option<String>,
    stalled: Option<Stall>,
    /// The commit last applied to the cluster (by this daemon, or by what the cluster's record
    /// says after a restart): what drift corrections re-apply while the tip is stalled.
    last_applied: Option<String>,
    /// The commit this process last reconciled to healthy (resyncs are skipped on it).
    healthy: Option<String>,
    /// Whether this process has reconciled anything yet.
    applied_here: bool,
    retry: Backoff,
    retry_at: Option<Instant>,
    objects: ObjectBackoff,
    drift_at: Option<Instant>,
    drift_seq: u64,
    /// Whether nothing changed since the last healthy reconcile as far as the watches know.
    clean: bool,
    gaps: BTreeSet<(String, String)>,
    /// The Secrets each stack's components read, by stack.
    secrets: BTreeMap<String, BTreeSet<String>>,
    /// The pauses in force, by stack.
    pauses: BTreeMap<String, Vec<PauseEnd>>,
}

impl State {
    /// The state at startup: one reconcile pending, `tip` as the tip last seen.
    pub fn new(tip: Option<String>, retry_max: Duration) -> Self {
        Self {
            pending: Some(Pending {
                trigger: Trigger::Startup,
                full: false,
                drift: false,
            }),
            running: None,
            tip,
            stalled: None,
            last_applied: None,
            healthy: None,
            applied_here: false,
            retry: Backoff::new(Duration::from_secs(2), retry_max),
            retry_at: None,
            // A drift within seconds of converge's correction is another controller reverting
            // it (a fight): slow down. A person editing now and then is corrected at once.
            objects: ObjectBackoff::new(
                Duration::from_millis(500),
                Duration::from_secs(60),
                FIGHT_WINDOW,
            ),
            drift_at: None,
            drift_seq: 0,
            clean: false,
            gaps: BTreeSet::new(),
            secrets: BTreeMap::new(),
            pauses: BTreeMap::new(),
        }
    }

    /// Whether a reconcile runs.
    pub fn running(&self) -> bool {
        self.running.is_some()
    }

    /// When a failed reconcile is retried.
    pub fn retry_at(&self) -> Option<Instant> {
        self.retry_at
    }

    /// When a delayed drift correction is due.
    pub fn drift_at(&self) -> Option<Instant> {
        self.drift_at
    }

    /// The commit last applied, as far as this daemon knows.
    pub fn last_applied(&self) -> Option<&str> {
        self.last_applied.as_deref()
    }

    /// Merges a trigger into the pending reconcile.
    pub fn request(&mut self, trigger: Trigger, full: bool) {
        merge(&mut self.pending, trigger, full);
    }

    /// Seeds the last applied commit from the cluster's status record at startup (before any
    /// reconcile of this process), so a stalled tip still has something to correct drift with.
    pub fn learn_applied(&mut self, commit: String) {
        if self.last_applied.is_none() && !commit.is_empty() {
            self.last_applied = Some(commit);
        }
    }

    /// Picks the next reconcile when idle, reading `tip` (the tracked ref now).
    pub fn next(&mut self, tip: Option<&str>) -> Next {
        if self.running.is_some() {
            return Next::Idle;
        }
        let Some(p) = self.pending.take() else {
            return Next::Idle;
        };
        let user = matches!(p.trigger, Trigger::Sync | Trigger::Reload);
        if user {
            // A person asked: the stalled tip is tried again.
            self.stalled = None;
        }
        // A stalled tip is not retried until a new commit or a person asks; drift and resyncs
        // keep the last applied commit in place meanwhile.
        let (commit, overlay) = match (tip, &self.stalled) {
            (Some(t), Some(s)) if t == s.commit => (self.last_applied.clone(), Some(s.clone())),
            (Some(t), _) => (Some(t.to_string()), None),
            (None, _) => (None, None),
        };
        let Some(commit) = commit else {
            return Next::NothingApplied;
        };
        // A run that reads a tip the ref watch has not reported yet (a resync, say, just
        // before the debounced event) has seen that commit: the event must not preempt it or
        // queue it again.
        if overlay.is_none() && self.tip.as_deref() != Some(commit.as_str()) {
            self.tip = Some(commit.clone());
            self.retry.reset();
            self.retry_at = None;
            self.clean = false;
        }
        self.running = Some(Running {
            commit: commit.clone(),
            overlay: overlay.is_some(),
            drift_seq: self.drift_seq,
            preempt_requested: false,
        });
        Next::Start(Start {
            commit,
            trigger: p.trigger,
            full: p.full,
            drift: p.drift,
            overlay,
        })
    }

    /// Asks the running reconcile to stop at its next step boundary where nothing is lost;
    /// `true` the first time only (the loop signals the reconcile then).
    fn preempt(&mut self) -> bool {
        match self.running.as_mut() {
            Some(r) if !r.preempt_requested => {
                r.preempt_requested = true;
                true
            }
            _ => false,
        }
    }

    /// The tracked ref points at `tip`. `None` when it is the tip already seen; otherwise
    /// whether to ask the running reconcile to stop at its next health wait (a new commit never
    /// waits behind a bad commit's health wait).
    pub fn on_tip(&mut self, tip: &str) -> Option<bool> {
        if self.tip.as_deref() == Some(tip) {
            return None;
        }
        self.tip = Some(tip.to_string());
        self.stalled = None;
        self.retry.reset();
        self.retry_at = None;
        self.clean = false;
        merge(&mut self.pending, Trigger::Commit, false);
        Some(self.preempt())
    }

    /// A managed object of `object` (`stack/Kind/name`) changed or vanished out of band at `now`.
    pub fn on_drift(&mut self, object: &str, now: Instant) -> DriftVerdict {
        self.drift_seq += 1;
        self.clean = false;
        let at = self.objects.admit(object, now);
        if at <= now {
            merge(&mut self.pending, Trigger::Drift, false);
            DriftVerdict::Now {
                preempt: self.preempt(),
            }
        } else {
            self.drift_at = Some(self.drift_at.map_or(at, |d| d.min(at)));
            DriftVerdict::Later(at)
        }
    }

    /// A managed object of `stack` (`object` is `Kind/name`, `component` its component) changed
    /// or vanished out of band at `now`: left alone while a pause covers it, else
    /// [`State::on_drift`].
    pub fn on_drift_in(
        &mut self,
        stack: &str,
        component: &str,
        object: &str,
        now: Instant,
    ) -> DriftVerdict {
        if let Some(until) = self.paused(stack, component, now) {
            // Not `clean = false`: the reconcile at the pause's end compares everything anyway.
            return DriftVerdict::Paused(until);
        }
        self.on_drift(&format!("{stack}/{object}"), now)
    }

    /// When the pause covering `component` of `stack` ends, while one is in force at `now`.
    pub fn paused(&self, stack: &str, component: &str, now: Instant) -> Option<Instant> {
        self.pauses
            .get(stack)?
            .iter()
            .filter(|(c, at)| *at > now && c.as_deref().is_none_or(|c| c == component))
            .map(|(_, at)| *at)
            .max()
    }

    /// The stack's pause record now holds `pauses` (their ends as instants; ended ones have an
    /// end at or before `now`). A pause that ended — resumed, expired while no timer ran, or
    /// gone from the record — asks for a full reconcile, which reports the hand changes and
    /// restores; returns the components (`None`: the stack) whose pause ended.
    pub fn on_pauses(
        &mut self,
        stack: &str,
        pauses: Vec<PauseEnd>,
        now: Instant,
    ) -> Vec<Option<String>> {
        let before = self.pauses.remove(stack).unwrap_or_default();
        let (active, mut ended): (Vec<PauseEnd>, Vec<PauseEnd>) =
            pauses.into_iter().partition(|(_, at)| *at > now);
        // A pause in force before and absent now (its record deleted) ended too.
        for (c, at) in before {
            if at > now
                && !active.iter().any(|(a, _)| *a == c)
                && !ended.iter().any(|(e, _)| *e == c)
            {
                ended.push((c, now));
            }
        }
        if !active.is_empty() {
            self.pauses.insert(stack.to_string(), active);
        }
        if !ended.is_empty() {
            self.clean = false;
            merge(&mut self.pending, Trigger::PauseEnd, true);
        }
        ended.into_iter().map(|(c, _)| c).collect()
    }

    /// When the next pause in force ends by itself.
    pub fn pause_end_at(&self) -> Option<Instant> {
        self.pauses.values().flatten().map(|(_, at)| *at).min()
    }

    /// The pauses due by `now` ended by themselves: a full reconcile reports what was changed
    /// by hand and restores it. Returns `(stack, component)` of each.
    pub fn on_pause_due(&mut self, now: Instant) -> Vec<(String, Option<String>)> {
        let mut ended = Vec::new();
        for (stack, list) in self.pauses.iter_mut() {
            list.retain(|(c, at)| {
                let due = *at <= now;
                if due {
                    ended.push((stack.clone(), c.clone()));
                }
                !due
            });
        }
        self.pauses.retain(|_, l| !l.is_empty());
        if !ended.is_empty() {
            self.clean = false;
            merge(&mut self.pending, Trigger::PauseEnd, true);
        }
        ended
    }

    /// A delayed drift correction is due.
    pub fn on_drift_due(&mut self) {
        self.drift_at = None;
        merge(&mut self.pending, Trigger::Drift, false);
    }

    /// A watch of `stack`'s `kind` listed everything again.
    pub fn on_synced(&mut self, stack: String, kind: String) {
        self.gaps.remove(&(stack, kind));
    }

    /// A watch of `stack`'s `kind` failed: changes may go unseen until it lists again.
    pub fn on_gap(&mut self, stack: String, kind: String) {
        self.drift_seq += 1;
        self.clean = false;
        self.gaps.insert((stack, kind));
    }

    /// A watch of `stack`'s `kind` ended for good (the kind is no longer served).
    pub fn on_gone(&mut self, stack: String, kind: String) {
        self.gaps.remove(&(stack, kind));
    }

    /// The Secrets `stack`'s components read (from the commit last reconciled).
    pub fn set_secrets(&mut self, stack: String, names: BTreeSet<String>) {
        self.secrets.insert(stack, names);
    }

    /// Secret `name` in `stack`'s namespace was created, changed or deleted: reconcile when the
    /// stack reads it (a component blocked on it can start now). Returns whether it does.
    pub fn on_secret(&mut self, stack: &str, name: &str) -> bool {
        let read = self.secrets.get(stack).is_some_and(|s| s.contains(name));
        if read {
            self.clean = false;
            merge(&mut self.pending, Trigger::Secret, false);
        }
        read
    }

    /// The cluster's status record of a stack says `commit` was applied last.
    pub fn on_record(&mut self, commit: &str) -> RecordVerdict {
        if commit.is_empty() {
            return RecordVerdict::Agrees;
        }
        // A running reconcile writes its own record; what it finds is decided when it ends.
        if self.running.is_some() {
            return RecordVerdict::Agrees;
        }
        match &self.last_applied {
            None => {
                self.last_applied = Some(commit.to_string());
                RecordVerdict::Learned
            }
            Some(ours) if ours == commit => RecordVerdict::Agrees,
            Some(ours) => {
                let ours = ours.clone();
                // What the cluster runs now is that commit: drift corrections re-apply the tip
                // (or, while the tip is stalled, what this daemon applied).
                self.clean = false;
                self.healthy = None;
                merge(&mut self.pending, Trigger::Record, false);
                RecordVerdict::Foreign { ours }
            }
        }
    }

    /// The running reconcile of `commit` ended at `now`.
    pub fn on_done(&mut self, finished: Finished, now: Instant) -> AfterDone {
        let run = self.running.take();
        self.objects.corrected(now);
        let commit = run.as_ref().map(|r| r.commit.clone()).unwrap_or_default();
        let mut after = AfterDone {
            retry_at: None,
            ready: false,
            stalled: false,
        };
        match finished {
            Finished::Reports { next, stall } => {
                // Whatever the outcome, this commit is what the cluster runs now.
                self.last_applied = Some(commit.clone());
                self.applied_here = true;
                if next != outcome::Next::Done {
                    self.clean = false;
                }
                match next {
                    outcome::Next::Done => {
                        self.healthy = Some(commit);
                        self.retry.reset();
                        self.retry_at = None;
                        let seq = run.map_or(u64::MAX, |r| r.drift_seq);
                        self.clean =
                            seq == self.drift_seq && self.gaps.is_empty() && self.stalled.is_none();
                        after.ready = self.stalled.is_none();
                    }
                    // Newer work is pending and starts now; nothing failed.
                    outcome::Next::Superseded => {}
                    outcome::Next::WaitForCommit => {
                        if let Some((reason, message)) = stall {
                            if self.stalled.is_none()
                                && self.tip.as_deref() == Some(commit.as_str())
                            {
                                self.stalled = Some(Stall {
                                    commit,
                                    reason,
                                    message,
                                });
                                after.stalled = true;
                            }
                        }
                    }
                    outcome::Next::Retry | outcome::Next::WaitForDependency => {
                        self.retry_after(next, now, &mut after)
                    }
                }
            }
            Finished::Stopped {
                next: outcome::Next::WaitForCommit,
                reason,
                message,
            } => {
                self.clean = false;
                if run.as_ref().is_some_and(|r| r.overlay) {
                    // The commit the cluster's record names cannot be deployed from here (not
                    // in this clone, say): nothing is left to re-apply; the tip's stall stays.
                    if !self.applied_here {
                        self.last_applied = None;
                    }
                    return after;
                }
                let first_run = self.last_applied.is_some() && !self.applied_here;
                self.stalled = Some(Stall {
                    commit: commit.clone(),
                    reason,
                    message,
                });
                after.stalled = true;
                // Restarted onto a stalled tip: drift may have happened while no daemon ran, so
                // reconcile the commit the cluster's record names once now.
                if first_run && self.last_applied.as_deref() != Some(commit.as_str()) {
                    merge(&mut self.pending, Trigger::Resync, false);
                }
            }
            Finished::Stopped {
                next: next @ (outcome::Next::Retry | outcome::Next::WaitForDependency),
                ..
            } => {
                self.clean = false;
                self.retry_after(next, now, &mut after);
            }
            // Builds cancelled (shutdown) or superseded: the next run is already due.
            Finished::Stopped { .. } | Finished::Cancelled => {}
        }
        after
    }

    /// Schedules the retry of a failed reconcile: with growing back-off after a failure, soon
    /// and without growing it while a dependency is not ready (nothing failed).
    fn retry_after(&mut self, next: outcome::Next, now: Instant, after: &mut AfterDone) {
        let at = if next == outcome::Next::WaitForDependency {
            now + DEPENDENCY_REQUEUE
        } else {
            self.retry.fail(now)
        };
        self.retry_at = Some(at);
        after.retry_at = Some(at);
    }

    /// The failure retry is due.
    pub fn on_retry_due(&mut self) {
        self.retry_at = None;
        merge(&mut self.pending, Trigger::Retry, false);
    }

    /// `converge sync` or SIGUSR1.
    pub fn on_sync(&mut self) {
        merge(&mut self.pending, Trigger::Sync, true);
    }

    /// SIGHUP: forget the back-off and reconcile.
    pub fn on_reload(&mut self) {
        self.retry.reset();
        self.retry_at = None;
        merge(&mut self.pending, Trigger::Reload, true);
    }

    /// The full-resync timer.
    pub fn on_full_resync(&mut self) {
        merge(&mut self.pending, Trigger::FullResync, true);
    }

    /// The resync timer, with `tip` read now: `true` when skipped with no request (the watches
    /// have seen nothing since the last healthy reconcile of the tip).
    pub fn on_resync(&mut self, tip: Option<&str>) -> bool {
        let idle = self.pending.is_none() && self.running.is_none();
        if self.clean && idle && tip.is_some() && tip == self.healthy.as_deref() {
            return true;
        }
        if self.running.is_none() {
            merge(&mut self.pending, Trigger::Resync, true);
        }
        false
    }
}

#[cfg(test)]
mod tests;
