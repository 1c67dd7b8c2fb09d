//! What a reconcile's outcome means: its status reason and what happens next, decided once here
//! from typed failures (in the spirit of kube-runtime's `Action` and one `error_policy`), and
//! read by the CLI's exit code, the daemon's policy and the status record alike.

use std::sync::Arc;

use crate::build::BuildError;
use crate::cluster::lease::LeaseError;
use crate::cluster::ClusterError;
use crate::error::Error;
use crate::reconcile::StackReport;
use crate::render::RenderError;
pub use crate::vocabulary::Reason;

/// What follows an outcome.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Next {
    /// Applied and healthy: nothing until the next commit, drift or resync.
    Done,
    /// Applied; the health wait was cut short because newer work is waiting, which runs next.
    Superseded,
    /// A transient failure: try the same commit again, with back-off.
    Retry,
    /// A dependency is not ready yet (a namespace or an object still being deleted): try again
    /// soon, without growing the back-off, since nothing failed.
    WaitForDependency,
    /// Trying the same commit again fails the same way: wait for a new commit (or a person).
    WaitForCommit,
}

impl Next {
    /// Its name in JSON and logs (`done`, `retry`, `waitForCommit`…).
    pub fn as_str(self) -> &'static str {
        match self {
            Next::Done => "done",
            Next::Superseded => "superseded",
            Next::Retry => "retry",
            Next::WaitForDependency => "waitForDependency",
            Next::WaitForCommit => "waitForCommit",
        }
    }
}

/// In a stack's JSON report: `next`, and the two flags the report has always carried
/// (`preempted`: the health wait was cut short; `needsNewCommit`: retrying fails the same way).
impl serde::Serialize for Next {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeMap;
        let mut m = s.serialize_map(Some(3))?;
        m.serialize_entry("preempted", &(*self == Next::Superseded))?;
        m.serialize_entry("needsNewCommit", &(*self == Next::WaitForCommit))?;
        m.serialize_entry("next", self.as_str())?;
        m.end()
    }
}

/// How one reconcile of a commit ended, typed from the call that failed.
#[derive(Debug, Clone)]
pub enum Outcome {
    /// The commit was reconciled: one report per stack.
    Reconciled(Vec<StackReport>),
    /// It stopped before reconciling any stack (unreadable, invalid, a refused Lease…).
    Stopped(Arc<Error>),
    /// Builds were cancelled by shutdown.
    Cancelled,
}

/// What happens after `outcome`: the one rule.
pub fn next(outcome: &Outcome) -> Next {
    match outcome {
        Outcome::Reconciled(reports) => after_reports(reports),
        Outcome::Stopped(e) => e.next(),
        Outcome::Cancelled => Next::Done,
    }
}

/// What happens after a commit's stacks were reconciled: done when all are healthy; superseded
/// when every unhealthy one was only cut short; waiting for a commit when every failure would
/// fail the same way again; waiting for a dependency when nothing failed but one is still being
/// deleted; otherwise (any mix with a failure) a retry with back-off.
pub fn after_reports(reports: &[StackReport]) -> Next {
    if reports.iter().all(|r| r.ready) {
        return Next::Done;
    }
    let not_ready = || reports.iter().filter(|r| !r.ready);
    if not_ready().all(|r| r.next == Next::Superseded) {
        Next::Superseded
    } else if not_ready().all(|r| r.next == Next::WaitForCommit) {
        Next::WaitForCommit
    } else if not_ready().all(|r| matches!(r.next, Next::WaitForDependency | Next::Superseded)) {
        // Nothing failed: a dependency is still going away, and newer work may be waiting.
        Next::WaitForDependency
    } else {
        Next::Retry
    }
}

/// What follows a cluster failure: a refusal that fails again on every try of the same commit
/// needs a new commit, a namespace or object still being deleted is waited for, the rest is
/// retried.
pub fn after_cluster(e: &ClusterError) -> Next {
    match e {
        ClusterError::Conflict { .. }
        | ClusterError::Immutable { .. }
        | ClusterError::Invalid { .. } => Next::WaitForCommit,
        ClusterError::NamespaceTerminating { .. } | ClusterError::NotGone { .. } => {
            Next::WaitForDependency
        }
        _ => Next::Retry,
    }
}

/// The status reason of a cluster failure: nothing answering (or no usable kubeconfig) is
/// `ClusterUnreachable`; an answer refusing a request is `ReconciliationFailed`; a namespace or
/// object still being deleted is a dependency not ready.
pub fn cluster_reason(e: &ClusterError) -> Reason {
    match e {
        ClusterError::Config { .. }
        | ClusterError::Kubeconfig { .. }
        | ClusterError::UnknownContext { .. }
        | ClusterError::Unreachable { .. }
        | ClusterError::Timeout { .. } => Reason::ClusterUnreachable,
        ClusterError::Api { .. } if e.is_unreachable() => Reason::ClusterUnreachable,
        ClusterError::NamespaceTerminating { .. } | ClusterError::NotGone { .. } => {
            Reason::DependencyNotReady
        }
        ClusterError::Api { .. }
        | ClusterError::UnknownKind { .. }
        | ClusterError::Conflict { .. }
        | ClusterError::Immutable { .. }
        | ClusterError::Invalid { .. } => Reason::ApplyFailed,
    }
}

/// What follows a failure to read a commit's build inputs or to reach its builder: what is in
/// the commit (a missing context, an unusable builder choice) waits for a new commit; an engine
/// that did not answer is retried.
fn after_build(e: &BuildError) -> Next {
    match e {
        BuildError::Unreachable { .. }
        | BuildError::Engine { .. }
        | BuildError::Timeout { .. }
        | BuildError::Minikube(_)
        | BuildError::ToolMissing { .. }
        // A registry that is down or refuses the login answers again after a `docker login`
        // or a restart, without a new commit.
        | BuildError::Registry(_) => Next::Retry,
        BuildError::Cancelled => Next::Done,
        _ => Next::WaitForCommit,
    }
}

impl Error {
    /// What happens next.
    pub fn next(&self) -> Next {
        match self {
            Error::Source(_)
            | Error::Invalid { .. }
            | Error::UnknownStack { .. }
            | Error::DaemonRunning { .. } => Next::WaitForCommit,
            Error::Render(RenderError::Helm { .. }) => Next::WaitForCommit,
            Error::Render(_) => Next::Retry,
            Error::Build(b) => after_build(b),
            Error::Cluster(c) | Error::Lease(LeaseError::Cluster(c)) => after_cluster(c),
            Error::Lease(_) => Next::Retry,
        }
    }

    /// The status reason.
    pub fn reason(&self) -> Reason {
        match self {
            Error::Source(_) => Reason::SourceFailed,
            Error::Invalid { .. } | Error::UnknownStack { .. } => Reason::ValidationFailed,
            Error::Render(_) => Reason::RenderFailed,
            Error::Build(_) => Reason::BuildFailed,
            Error::Cluster(c) | Error::Lease(LeaseError::Cluster(c)) => cluster_reason(c),
            Error::DaemonRunning { .. } | Error::Lease(_) => Reason::DaemonRunning,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn answered(code: u16) -> ClusterError {
        let status = kube::core::Status::failure("refused", "Forbidden").with_code(code);
        ClusterError::Api {
            action: "applying",
            object: "Deployment/web".into(),
            source: kube::Error::Api(status.boxed()),
        }
    }

    #[test]
    fn each_cluster_failure_has_its_own_reason() {
        let timeout = ClusterError::Timeout {
            action: "reading",
            object: "x".into(),
        };
        let conflict = ClusterError::Conflict {
            object: "x".into(),
            managers: vec!["kubectl".into()],
            fields: vec![".spec.replicas".into()],
        };
        let terminating = ClusterError::NamespaceTerminating {
            action: "applying",
            object: "x".into(),
            message: "namespace todo is being terminated".into(),
        };
        let not_gone = ClusterError::NotGone {
            object: "x".into(),
            after: std::time::Duration::from_secs(60),
        };
        let reason_of = |c| Error::Cluster(c).reason();
        assert_eq!(reason_of(not_gone), Reason::DependencyNotReady);
        assert_eq!(reason_of(timeout), Reason::ClusterUnreachable);
        assert_eq!(reason_of(conflict), Reason::ApplyFailed);
        assert_eq!(reason_of(answered(403)), Reason::ApplyFailed);
        assert_eq!(reason_of(terminating), Reason::DependencyNotReady);
    }

    #[test]
    fn a_namespace_being_deleted_is_waited_for_and_a_refusal_waits_for_a_commit() {
        let terminating = ClusterError::NamespaceTerminating {
            action: "creating",
            object: "Lease todo/converge-todo".into(),
            message: "namespace todo is being terminated".into(),
        };
        assert_eq!(
            Error::Lease(LeaseError::Cluster(terminating)).next(),
            Next::WaitForDependency
        );
        let invalid = ClusterError::Invalid {
            object: "x".into(),
            message: "no".into(),
        };
        assert_eq!(Error::Cluster(invalid).next(), Next::WaitForCommit);
        assert_eq!(Error::Cluster(answered(500)).next(), Next::Retry);
        assert_eq!(Error::Cluster(answered(403)).next(), Next::Retry);
    }

    #[test]
    fn a_build_engine_that_did_not_answer_is_retried_and_a_bad_context_waits_for_a_commit() {
        let down = BuildError::Unreachable {
            host: "unix:///var/run/docker.sock".into(),
            detail: "connection refused".into(),
            hint: "start Docker".into(),
        };
        assert_eq!(Error::Build(down).next(), Next::Retry);
        let context = BuildError::InvalidContext {
            component: "web".into(),
            message: "no such directory `apps/web`".into(),
        };
        assert_eq!(Error::Build(context).next(), Next::WaitForCommit);
    }

    #[test]
    fn a_registry_or_buildkit_that_does_not_answer_or_refuses_the_login_is_retried() {
        use crate::build::registry::RegistryError;
        // What the registry builder's BuildKit check gives for buildctl's dial error.
        let buildkit = BuildError::Unreachable {
            host: "tcp://127.0.0.1:1 (BuildKit)".into(),
            detail: "listing workers for Build: failed to list workers: Unavailable: connection error: desc = \"transport: Error while dialing: dial tcp 127.0.0.1:1: connect: connection refused\"".into(),
            hint: "start buildkitd".into(),
        };
        assert_eq!(Error::Build(buildkit).next(), Next::Retry);
        let down = RegistryError::Unreachable {
            address: "https://r.example:5000/v2/".into(),
            detail: "tcp connect error: Connection refused (os error 111)".into(),
            hint: "start the registry".into(),
        };
        assert_eq!(Error::Build(BuildError::Registry(down)).next(), Next::Retry);
        // A `docker login` fixes it without a new commit.
        let refused = RegistryError::Refused {
            host: "r.example:5000".into(),
            user: "ci".into(),
            origin: "/home/me/.docker/config.json".into(),
        };
        assert_eq!(
            Error::Build(BuildError::Registry(refused)).next(),
            Next::Retry
        );
        assert_eq!(
            Error::Build(BuildError::Registry(RegistryError::Unreachable {
                address: String::new(),
                detail: String::new(),
                hint: String::new(),
            }))
            .reason(),
            Reason::BuildFailed
        );
        // `builder: registry` without a prefix is in the commit: a new one fixes it.
        assert_eq!(
            Error::Build(BuildError::MissingRegistryPrefix).next(),
            Next::WaitForCommit
        );
    }
}
