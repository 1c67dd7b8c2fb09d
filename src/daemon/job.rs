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
use crate::error::Error;
pub(super) use crate::outcome::Outcome;
use crate::outcome::{self, Next, Reason};
use crate::reconcile::{self, Clusters, OwnDeletions, PreparedCommit, StackRef, StackReport};
use crate::render::Helm;

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

/// Takes the Lease of a stack (creating its namespace first), at the daemon's start.
pub(super) async fn take_lease(
    clusters: &mut Clusters,
    cfg: &Config,
    t: &StackRef,
    holder: &Holder,
) -> Result<LeaseGuard, DaemonError> {
    lease(clusters, cfg, t, holder).await.map_err(|e| match e {
        Error::Lease(l) => LockError::from(l).into(),
        other => other.into(),
    })
}

/// Takes the Lease of a stack (creating its namespace first).
async fn lease(
    clusters: &mut Clusters,
    cfg: &Config,
    t: &StackRef,
    holder: &Holder,
) -> Result<LeaseGuard, Error> {
    let cluster = clusters
        .get(cfg.options.kubeconfig.as_deref(), &t.context)
        .await?;
    lock::ensure_namespace(cluster.client(), &t.namespace, &t.stack).await?;
    Ok(LeaseGuard::acquire(
        cluster.client(),
        &t.namespace,
        &t.stack,
        &super::leader::claimant(cfg, holder),
        cfg.lease_timing,
    )
    .await?)
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
                done.outcome = Outcome::Stopped(Arc::new(e));
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
            match lease(&mut input.clusters, &cfg, t, &input.holder).await {
                Ok(g) => done.leases.push(g),
                Err(e) => {
                    done.outcome = Outcome::Stopped(Arc::new(e));
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
            Outcome::Reconciled(reports)
        }
        Err(e) => Outcome::Stopped(Arc::new(e)),
    };
    done.clusters = input.clusters;
    done.took = started.elapsed();
    done
}

/// The policy's view of a job's outcome: what happens next ([`outcome::next`]) and, when it
/// waits for a new commit or stopped early, the reason and message it records.
pub(super) fn finished(o: &Outcome) -> Finished {
    let next = outcome::next(o);
    match o {
        Outcome::Reconciled(reports) => {
            let stall = (next == Next::WaitForCommit).then(|| {
                let stalled: Vec<&StackReport> = reports.iter().filter(|r| !r.ready).collect();
                let message = stalled
                    .iter()
                    .map(|r| format!("stack {}: {}", r.stack, r.status.message))
                    .collect::<Vec<_>>()
                    .join("; ");
                let reason = stalled.first().map_or(Reason::ApplyFailed, |r| r.reason);
                (reason, message)
            });
            Finished::Reports { next, stall }
        }
        Outcome::Stopped(e) => {
            let (reason, message) = reconcile::describe(e);
            Finished::Stopped {
                next,
                reason,
                message,
            }
        }
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
        Outcome::Reconciled(reports) => {
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
                } else if r.next == Next::Superseded {
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
                Finished::Reports {
                    next: Next::Done, ..
                } => {
                    metrics.reconcile(ResultLabel::Success, took);
                    metrics.applied(&done.commit);
                    metrics.set_ready(ready);
                    sd::status(&format!("converged at {short}"));
                }
                Finished::Reports {
                    next: Next::Superseded,
                    ..
                } => {
                    metrics.reconcile(ResultLabel::Preempted, took);
                    metrics.applied(&done.commit);
                }
                Finished::Reports {
                    stall: Some((_, message)),
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
        Outcome::Stopped(_) => {
            let message = match fin {
                Finished::Stopped { message, .. } => message.as_str(),
                _ => "",
            };
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
            } else if retry_in_s.is_some() {
                warn!(error = %message, retry_in_s, "reconcile failed; retrying with back-off");
            } else if matches!(
                fin,
                Finished::Stopped {
                    next: Next::WaitForCommit,
                    ..
                }
            ) {
                warn!(error = %message, "the commit the cluster's status record names cannot be re-applied from this checkout");
            }
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
        (Outcome::Reconciled(reports), _) => {
            let outcome = match fin {
                Finished::Reports {
                    next: Next::Done, ..
                } => "succeeded",
                Finished::Reports {
                    next: Next::Superseded,
                    ..
                } => "preempted",
                Finished::Reports { stall: Some(_), .. } => "failed (waiting for a new commit)",
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
        (
            Outcome::Stopped(_),
            Finished::Stopped {
                next: Next::WaitForCommit,
                message,
                ..
            },
        ) => ("stalled", message.clone()),
        (Outcome::Stopped(_), Finished::Stopped { message, .. }) => {
            ("failed, retrying", message.clone())
        }
        (Outcome::Stopped(e), _) => ("failed, retrying", e.to_string()),
        (Outcome::Cancelled, _) => ("cancelled", String::new()),
    };
    let builds = match &done.outcome {
        Outcome::Reconciled(reports) if !done.reused => reports
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
            reason: Reason::HealthFailed,
            failed_step: None,
            errors: Vec::new(),
            culprits: Vec::new(),
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
            next: Next::Retry,
        }
    }

    fn ready(name: &str) -> StackReport {
        StackReport {
            ready: true,
            reason: Reason::Succeeded,
            next: Next::Done,
            ..report(name, "")
        }
    }

    fn preempted(name: &str) -> StackReport {
        StackReport {
            reason: Reason::Progressing,
            next: Next::Superseded,
            ..report(name, "")
        }
    }

    fn needs_new_commit(name: &str, message: &str) -> StackReport {
        StackReport {
            reason: Reason::ApplyFailed,
            next: Next::WaitForCommit,
            ..report(name, message)
        }
    }

    fn of(reports: Vec<StackReport>) -> Finished {
        finished(&Outcome::Reconciled(reports))
    }

    const NOTHING: Finished = Finished::Reports {
        next: Next::Retry,
        stall: None,
    };

    #[test]
    fn every_stack_ready_is_ready() {
        assert_eq!(
            of(vec![ready("a"), ready("b")]),
            Finished::Reports {
                next: Next::Done,
                stall: None,
            }
        );
    }

    #[test]
    fn a_health_wait_cut_short_is_preempted_not_a_failure_while_the_other_stacks_are_ready() {
        let both = of(vec![ready("a"), preempted("b")]);
        assert_eq!(
            both,
            Finished::Reports {
                next: Next::Superseded,
                stall: None,
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
                next: Next::WaitForCommit,
                stall: Some((
                    Reason::ApplyFailed,
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
    fn a_dependency_being_deleted_is_waited_for_but_never_beside_a_stack_waiting_for_a_commit() {
        let waiting = |name: &str| StackReport {
            reason: Reason::DependencyNotReady,
            next: Next::WaitForDependency,
            ..report(name, "namespace todo is being terminated")
        };
        assert_eq!(
            of(vec![waiting("a"), preempted("b"), ready("c")]),
            Finished::Reports {
                next: Next::WaitForDependency,
                stall: None,
            }
        );
        // A stack that waits for a new commit is retried with back-off, not every few seconds.
        assert_eq!(
            of(vec![waiting("a"), needs_new_commit("b", "immutable")]),
            NOTHING
        );
        assert_eq!(
            of(vec![preempted("a"), needs_new_commit("b", "immutable")]),
            NOTHING
        );
    }

    #[test]
    fn a_commit_that_cannot_be_prepared_stalls_with_its_reason_and_message() {
        let invalid = Error::UnknownStack {
            name: "prod".into(),
            commit: "0123456".into(),
        };
        assert_eq!(
            finished(&Outcome::Stopped(Arc::new(invalid))),
            Finished::Stopped {
                next: Next::WaitForCommit,
                reason: Reason::ValidationFailed,
                message: "commit 0123456 has no stack named `prod`".into(),
            }
        );
    }

    #[test]
    fn a_transient_failure_is_a_retry_a_namespace_being_deleted_a_wait_and_a_shutdown_a_cancel() {
        let timeout = crate::cluster::ClusterError::Timeout {
            action: "reading",
            object: "Namespace todo".into(),
        };
        let f = finished(&Outcome::Stopped(Arc::new(Error::Cluster(timeout))));
        assert!(
            matches!(
                f,
                Finished::Stopped {
                    next: Next::Retry,
                    reason: Reason::ClusterUnreachable,
                    ..
                }
            ),
            "{f:?}"
        );
        let terminating = crate::cluster::ClusterError::NamespaceTerminating {
            action: "creating",
            object: "Lease todo/converge-todo".into(),
            message: "namespace todo is being terminated".into(),
        };
        let lease = Error::Lease(crate::cluster::lease::LeaseError::Cluster(terminating));
        let f = finished(&Outcome::Stopped(Arc::new(lease)));
        assert!(
            matches!(
                f,
                Finished::Stopped {
                    next: Next::WaitForDependency,
                    ..
                }
            ),
            "{f:?}"
        );
        assert_eq!(finished(&Outcome::Cancelled), Finished::Cancelled);
    }
}
