//! One reconcile as the daemon runs it, off the loop: prepare the commit (or reuse it), take the
//! Leases of stacks it newly names, reconcile, learn what to watch; then what its outcome means
//! for the policy ([`finished`]) and for people (logs, metrics, the systemd status line).

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;
use tokio::time::Instant;
use tracing::{debug, error, info, warn};

use super::lock::{self, Holder, LeaseGuard, LockError};
use super::metrics::{Metrics, ResultLabel};
use super::state::{AfterDone, Finished, Stall};
use super::{sd, Config, DaemonError, Trigger};
use crate::cluster::inventory;
use crate::desired;
use crate::error::{Disposition, Error};
use crate::reconcile::{self, Clusters, OwnDeletions, PreparedCommit, StackRef, StackReport};
use crate::render::Helm;
use crate::vocabulary::reason;

/// How one reconcile ended.
#[derive(Clone)]
pub(super) enum Outcome {
    /// The commit was reconciled: one report per stack.
    Reports(Vec<StackReport>),
    /// The commit cannot be deployed as it is (invalid, unknown stack, bad chart): wait for a
    /// new commit.
    Stalled(&'static str, String),
    /// A transient failure: retry with back-off.
    Retry(String),
    /// Builds were cancelled by shutdown.
    Cancelled,
}

/// What a finished job hands back to the loop.
pub(super) struct Done {
    pub commit: String,
    pub trigger: Trigger,
    pub drift: bool,
    pub outcome: Outcome,
    pub took: Duration,
    pub clusters: Clusters,
    pub targets: Option<Vec<StackRef>>,
    /// The kinds of every object each stack now manages: what to watch.
    pub kinds: BTreeMap<String, BTreeSet<(String, String, String)>>,
    /// The Secrets each stack's components read.
    pub secrets: BTreeMap<String, BTreeSet<String>>,
    pub leases: Vec<LeaseGuard>,
    pub invalid: bool,
    /// The commit as prepared (reused by drift corrections; a retry only when every build
    /// succeeded).
    pub prepared: Option<Arc<PreparedCommit>>,
    /// It reused a prepared commit: its build outcomes were counted already.
    pub reused: bool,
    /// It re-applied the last applied commit while the tip is stalled.
    pub overlay: bool,
    /// The stacks whose desired state says `onFailure: revert`.
    pub revert_stacks: BTreeMap<String, Vec<String>>,
}

/// Everything a job needs, owned, so the loop stays free while it runs.
pub(super) struct JobInput {
    pub cfg: Arc<Config>,
    pub root: PathBuf,
    pub commit: String,
    pub trigger: Trigger,
    pub drift: bool,
    pub full: bool,
    pub clusters: Clusters,
    pub helm: Helm,
    pub cancel: watch::Receiver<bool>,
    pub preempt: watch::Receiver<bool>,
    pub own_deletions: OwnDeletions,
    pub known: Vec<StackRef>,
    pub leased: BTreeSet<String>,
    pub holder: Holder,
    /// While the tip is stalled, the reason recorded again after reconciling the last good commit.
    pub overlay: Option<Stall>,
    /// This commit as the daemon prepared it before, if it may be reused.
    pub prepared: Option<Arc<PreparedCommit>>,
    /// The last automatic revert the daemon made (recorded in the status of its commit).
    pub auto_revert: Option<crate::status::AutoRevert>,
}

/// Takes the Lease of a stack (creating its namespace first).
pub(super) async fn take_lease(
    clusters: &mut Clusters,
    cfg: &Config,
    t: &StackRef,
    holder: &Holder,
) -> Result<LeaseGuard, DaemonError> {
    let cluster = clusters
        .get(cfg.options.kubeconfig.as_deref(), &t.context)
        .await?;
    lock::ensure_namespace(cluster.client(), &t.namespace, &t.stack)
        .await
        .map_err(LockError::from)?;
    LeaseGuard::acquire(
        cluster.client(),
        &t.namespace,
        &t.stack,
        &holder.identity(),
        &holder.checkout,
    )
    .await
    .map_err(|e| LockError::from(e).into())
}

/// One reconcile. A commit that cannot be prepared is recorded in each known stack's status by
/// the reconcile itself.
pub(super) async fn job(mut input: JobInput) -> Done {
    let started = Instant::now();
    let cfg = input.cfg.clone();
    let mut done = Done {
        commit: input.commit.clone(),
        trigger: input.trigger,
        drift: input.drift,
        outcome: Outcome::Cancelled,
        took: Duration::ZERO,
        clusters: Clusters::default(),
        targets: None,
        kinds: BTreeMap::new(),
        secrets: BTreeMap::new(),
        leases: Vec::new(),
        invalid: false,
        prepared: None,
        reused: false,
        overlay: input.overlay.is_some(),
        revert_stacks: BTreeMap::new(),
    };
    // Builds are cancelled by shutdown; the reconcile stops at its next health wait for newer
    // work.
    let mut opts = cfg.options.clone();
    opts.full = input.full;
    opts.cancel = Some(input.cancel.clone());
    opts.preempt = Some(input.preempt.clone());
    opts.own_deletions = Some(input.own_deletions.clone());
    opts.stalled_tip = input.overlay.clone();
    opts.auto_revert = input.auto_revert.clone();

    let prepared = match input.prepared.take() {
        Some(p) => {
            done.reused = true;
            debug!("reusing the prepared commit (read, validated, built and rendered already)");
            p
        }
        None => match reconcile::prepare_or_record(
            &input.root,
            &input.commit,
            &opts,
            &mut input.clusters,
            &input.known,
        )
        .await
        {
            Ok(p) => Arc::new(p),
            Err(e) => {
                done.invalid = matches!(e, Error::Invalid { .. } | Error::UnknownStack { .. });
                let (why, message) = reconcile::describe(&e);
                // A missing build context is in the commit: only a new commit fixes it.
                done.outcome = match (e.disposition(), &e) {
                    (Disposition::Stalled, _) | (_, Error::Build(_)) => {
                        Outcome::Stalled(why, message)
                    }
                    _ => Outcome::Retry(message),
                };
                done.clusters = input.clusters;
                done.took = started.elapsed();
                return done;
            }
        },
    };
    let targets = reconcile::targets_of(
        prepared.stacks.iter().map(|p| &p.stack),
        cfg.options.context.as_deref(),
    );
    done.targets = Some(targets.clone());
    for p in &prepared.stacks {
        let names = p
            .stack
            .components
            .iter()
            .flat_map(|c| c.spec.secret_env.iter().map(|r| r.secret.clone()))
            .collect();
        done.secrets.insert(p.stack.spec.name.clone(), names);
        if p.stack.spec.on_failure == desired::schema::OnFailure::Revert {
            done.revert_stacks
                .insert(p.stack.spec.name.clone(), revert_scope(&p.stack));
        }
    }
    // Kept even with a failed build: drift corrections re-apply it without building again.
    done.prepared = Some(prepared.clone());

    // A commit may name a stack this daemon does not lease yet.
    if cfg.lease {
        for t in targets.iter().filter(|t| !input.leased.contains(&t.stack)) {
            match take_lease(&mut input.clusters, &cfg, t, &input.holder).await {
                Ok(g) => done.leases.push(g),
                Err(e) => {
                    done.outcome = Outcome::Stalled(reason::APPLY_FAILED, e.to_string());
                    done.clusters = input.clusters;
                    done.took = started.elapsed();
                    return done;
                }
            }
        }
    }

    info!(stacks = targets.len(), "apply started");
    let result =
        reconcile::reconcile_prepared(&prepared, &opts, &input.helm, &mut input.clusters).await;
    done.outcome = match result {
        Ok(reports) => {
            // Learn what to watch: the kinds of every object converge now manages.
            for t in &targets {
                if let Ok(cluster) = input
                    .clusters
                    .get(cfg.options.kubeconfig.as_deref(), &t.context)
                    .await
                {
                    if let Ok(inv) = inventory::load(cluster.client(), &t.namespace, &t.stack).await
                    {
                        let kinds = inv
                            .keys()
                            .map(|k| (k.group.clone(), k.version.clone(), k.kind.clone()))
                            .collect();
                        done.kinds.insert(t.stack.clone(), kinds);
                    }
                }
            }
            Outcome::Reports(reports)
        }
        Err(e) => {
            let (why, message) = reconcile::describe(&e);
            match e.disposition() {
                Disposition::Stalled => Outcome::Stalled(why, message),
                Disposition::Waiting | Disposition::Retry => Outcome::Retry(message),
            }
        }
    };
    done.clusters = input.clusters;
    done.took = started.elapsed();
    done
}

/// The policy's view of a job's outcome.
pub(super) fn finished(outcome: &Outcome) -> Finished {
    match outcome {
        Outcome::Reports(reports) => {
            let ready = reports.iter().all(|r| r.ready);
            let preempted =
                !ready && reports.iter().all(|r| r.ready || r.preempted) && !reports.is_empty();
            let stalled: Vec<&StackReport> = reports
                .iter()
                .filter(|r| !r.ready && r.needs_new_commit)
                .collect();
            let needs_new_commit =
                (!ready && !preempted && reports.iter().all(|r| r.ready || r.needs_new_commit))
                    .then(|| {
                        let message = stalled
                            .iter()
                            .map(|r| format!("stack {}: {}", r.stack, r.status.message))
                            .collect::<Vec<_>>()
                            .join("; ");
                        (reason::APPLY_FAILED, message)
                    });
            Finished::Reports {
                ready,
                preempted,
                needs_new_commit,
            }
        }
        Outcome::Stalled(why, message) => Finished::Stalled {
            reason: why,
            message: message.clone(),
        },
        Outcome::Retry(_) => Finished::Retry,
        Outcome::Cancelled => Finished::Cancelled,
    }
}

/// Tells people how a job ended: a log line per stack, the metrics, the systemd status line,
/// given the policy's verdict after it ([`super::state::State::on_done`]).
pub(super) fn report(done: &Done, fin: &Finished, after: &AfterDone, metrics: &Metrics) {
    let (ready, stalled) = (after.ready, after.stalled);
    let retry_in_s = after.retry_at.map(|at| {
        at.saturating_duration_since(std::time::Instant::now())
            .as_secs()
    });
    let took = done.took;
    let short = desired::short_id(&done.commit);
    match &done.outcome {
        Outcome::Reports(reports) => {
            let mut applied_n = 0u64;
            for r in reports {
                metrics.requests(r.requests.reads, r.requests.writes, r.requests.dry_runs);
                for b in r.builds.iter().filter(|_| !done.reused) {
                    metrics.build(match b.action {
                        crate::build::Action::Exists => "exists",
                        crate::build::Action::Built => "built",
                        crate::build::Action::Loaded => "loaded",
                        crate::build::Action::Skipped => "skipped",
                        crate::build::Action::Failed { .. } => "failed",
                    });
                }
                applied_n += r.applied.len() as u64 + r.pruned.len() as u64;
                let line = format!(
                    "{} applied, {} unchanged, {} pruned",
                    r.applied.len(),
                    r.unchanged,
                    r.pruned.len()
                );
                if r.ready {
                    info!(stack = %r.stack, reason = %r.reason, reads = r.requests.reads, writes = r.requests.writes, ms = r.duration_ms, "{line}");
                } else if r.preempted {
                    info!(stack = %r.stack, reason = %r.reason, ms = r.duration_ms, "{line}; health wait preempted");
                } else {
                    warn!(stack = %r.stack, reason = %r.reason, step = r.failed_step.unwrap_or(""), errors = %r.errors.join("; "), "{line}; not ready");
                }
            }
            if done.drift && applied_n > 0 {
                metrics.drift_corrected(applied_n);
                info!(objects = applied_n, "drift corrected");
            }
            match fin {
                Finished::Reports { ready: true, .. } => {
                    metrics.reconcile(ResultLabel::Success, took);
                    metrics.applied(&done.commit);
                    metrics.set_ready(ready);
                    sd::status(&format!("converged at {short}"));
                }
                Finished::Reports {
                    preempted: true, ..
                } => {
                    metrics.reconcile(ResultLabel::Preempted, took);
                    metrics.applied(&done.commit);
                }
                Finished::Reports {
                    needs_new_commit: Some((_, message)),
                    ..
                } => {
                    metrics.reconcile(ResultLabel::Failed, took);
                    metrics.set_ready(false);
                    error!(%message, "cannot deploy this commit as it is; waiting for a new commit (retrying would fail the same way; `converge sync` tries again)");
                    sd::status(&format!("stalled at {short}"));
                }
                _ => {
                    metrics.reconcile(ResultLabel::Failed, took);
                    metrics.set_ready(false);
                    warn!(retry_in_s, "reconcile failed; retrying with back-off");
                    sd::status(&format!("failed at {short}; retrying"));
                }
            }
        }
        Outcome::Stalled(_, message) => {
            metrics.reconcile(
                if done.invalid {
                    ResultLabel::Invalid
                } else {
                    ResultLabel::Error
                },
                took,
            );
            metrics.set_ready(false);
            if stalled {
                error!(error = %message, "cannot deploy this commit; waiting for a new commit (the cluster keeps the last applied state)");
                sd::status(&format!("stalled at {short}"));
            } else {
                warn!(error = %message, "the commit the cluster's status record names cannot be re-applied from this checkout");
            }
        }
        Outcome::Retry(message) => {
            metrics.reconcile(ResultLabel::Error, took);
            metrics.set_ready(false);
            warn!(error = %message, retry_in_s, "reconcile failed; retrying with back-off");
        }
        Outcome::Cancelled => metrics.reconcile(ResultLabel::Abandoned, took),
    }
}

/// The paths a stack owns, repository-relative: its file, its directory, and each built
/// component's build context and Dockerfile. Only a commit that changed one of them is
/// auto-reverted when the stack fails.
fn revert_scope(stack: &desired::Stack) -> Vec<String> {
    let mut scope = vec![stack.file.clone(), stack.dir.clone()];
    for c in &stack.components {
        scope.push(c.file.clone());
        if let Some(b) = &c.spec.image.build {
            scope.push(b.context.clone());
            let context = b.context.trim_end_matches('/');
            scope.push(if context.is_empty() || context == "." {
                b.dockerfile.clone()
            } else {
                format!("{context}/{}", b.dockerfile)
            });
        }
    }
    scope.sort();
    scope.dedup();
    scope
}

/// How a job ended, as the live page shows it.
pub(super) fn page_event(done: &Done, fin: &Finished) -> super::page::Event {
    let (outcome, message) = match (&done.outcome, fin) {
        (Outcome::Reports(reports), _) => {
            let outcome = match fin {
                Finished::Reports { ready: true, .. } => "succeeded",
                Finished::Reports {
                    preempted: true, ..
                } => "preempted",
                Finished::Reports {
                    needs_new_commit: Some(_),
                    ..
                } => "failed (waiting for a new commit)",
                _ => "failed",
            };
            let message = reports
                .iter()
                .map(|r| {
                    if r.ready || r.status.message.is_empty() {
                        format!("{}: {}", r.stack, r.reason)
                    } else {
                        format!("{}: {}: {}", r.stack, r.reason, r.status.message)
                    }
                })
                .collect::<Vec<_>>()
                .join("; ");
            (outcome, message)
        }
        (Outcome::Stalled(_, m), _) => ("stalled", m.clone()),
        (Outcome::Retry(m), _) => ("failed, retrying", m.clone()),
        (Outcome::Cancelled, _) => ("cancelled", String::new()),
    };
    let builds = match &done.outcome {
        Outcome::Reports(reports) if !done.reused => reports
            .iter()
            .flat_map(|r| &r.builds)
            .map(|b| {
                let action = match b.action {
                    crate::build::Action::Exists => "exists",
                    crate::build::Action::Built => "built",
                    crate::build::Action::Loaded => "loaded",
                    crate::build::Action::Skipped => "not built (builder none)",
                    crate::build::Action::Failed { .. } => "build failed",
                };
                format!("{} {action}", b.component)
            })
            .collect(),
        _ => Vec::new(),
    };
    super::page::Event::Finished {
        commit: done.commit.clone(),
        outcome: outcome.into(),
        took_ms: done.took.as_millis() as u64,
        builds,
        message,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::status::StackStatus;

    /// A report of stack `name`; `message` is what its status record says.
    fn report(name: &str, message: &str) -> StackReport {
        StackReport {
            stack: name.into(),
            namespace: name.into(),
            dir: format!("desired/{name}"),
            commit: "0123456789ab".into(),
            ready: false,
            reason: String::new(),
            failed_step: None,
            errors: Vec::new(),
            warnings: Vec::new(),
            applied: Vec::new(),
            unchanged: 0,
            pruned: Vec::new(),
            kept: Vec::new(),
            blocked: BTreeMap::new(),
            requests: Default::default(),
            duration_ms: 0,
            status: StackStatus {
                message: message.into(),
                ..StackStatus::default()
            },
            builds: Vec::new(),
            hooks: Vec::new(),
            preempted: false,
            needs_new_commit: false,
        }
    }

    fn ready(name: &str) -> StackReport {
        StackReport {
            ready: true,
            ..report(name, "")
        }
    }

    fn preempted(name: &str) -> StackReport {
        StackReport {
            preempted: true,
            ..report(name, "")
        }
    }

    fn needs_new_commit(name: &str, message: &str) -> StackReport {
        StackReport {
            needs_new_commit: true,
            ..report(name, message)
        }
    }

    fn of(reports: Vec<StackReport>) -> Finished {
        finished(&Outcome::Reports(reports))
    }

    const NOTHING: Finished = Finished::Reports {
        ready: false,
        preempted: false,
        needs_new_commit: None,
    };

    #[test]
    fn every_stack_ready_is_ready() {
        assert_eq!(
            of(vec![ready("a"), ready("b")]),
            Finished::Reports {
                ready: true,
                preempted: false,
                needs_new_commit: None,
            }
        );
    }

    #[test]
    fn a_health_wait_cut_short_is_preempted_not_a_failure_while_the_other_stacks_are_ready() {
        let both = of(vec![ready("a"), preempted("b")]);
        assert_eq!(
            both,
            Finished::Reports {
                ready: false,
                preempted: true,
                needs_new_commit: None,
            }
        );
        assert_eq!(of(vec![preempted("a"), preempted("b")]), both);
    }

    #[test]
    fn a_failure_beside_a_preempted_stack_is_retried() {
        // The failed stack was not cut short: it failed, and a failure is retried with back-off.
        assert_eq!(of(vec![preempted("a"), report("b", "timed out")]), NOTHING);
    }

    #[test]
    fn failures_that_all_need_a_new_commit_wait_for_one_naming_each_stack() {
        assert_eq!(
            of(vec![
                needs_new_commit("a", "Deployment/api: field is immutable"),
                ready("b"),
                needs_new_commit("c", "conflict with manager kubectl"),
            ]),
            Finished::Reports {
                ready: false,
                preempted: false,
                needs_new_commit: Some((
                    reason::APPLY_FAILED,
                    "stack a: Deployment/api: field is immutable; stack c: conflict with manager kubectl"
                        .into()
                )),
            }
        );
    }

    #[test]
    fn one_failure_a_retry_could_fix_makes_the_whole_commit_a_retry() {
        // Waiting for a new commit would leave stack b broken although retrying may fix it.
        assert_eq!(
            of(vec![
                needs_new_commit("a", "field is immutable"),
                report("b", "the API server did not answer"),
            ]),
            NOTHING
        );
        assert_eq!(of(vec![report("a", "timed out")]), NOTHING);
    }

    #[test]
    fn a_commit_that_cannot_be_prepared_stalls_with_its_reason_and_message() {
        assert_eq!(
            finished(&Outcome::Stalled(
                reason::VALIDATION_FAILED,
                "desired/dev/app.yaml:3:1: unknown field".into()
            )),
            Finished::Stalled {
                reason: reason::VALIDATION_FAILED,
                message: "desired/dev/app.yaml:3:1: unknown field".into(),
            }
        );
    }

    #[test]
    fn a_transient_failure_is_a_retry_and_a_shutdown_a_cancel() {
        assert_eq!(
            finished(&Outcome::Retry("connection refused".into())),
            Finished::Retry
        );
        assert_eq!(finished(&Outcome::Cancelled), Finished::Cancelled);
    }
}
