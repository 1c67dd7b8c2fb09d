//! The top-level error and what happens next for each kind: stalled, waiting or retry.

use crate::cluster::lease::LeaseError;
use crate::cluster::ClusterError;
use crate::desired::Report;
use crate::vocabulary::reason;

/// What the daemon does after a failed reconcile.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Disposition {
    /// Needs a person: wait for a new commit or configuration.
    Stalled,
    /// A dependency is not ready yet (the stack's namespace is still being deleted): requeue
    /// soon.
    Waiting,
    /// A transient failure: retry with back-off.
    Retry,
}

/// Any failure of a converge operation, classified for the daemon and the CLI.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The repository or revision could not be read.
    #[error(transparent)]
    Source(#[from] crate::source::SourceError),
    /// The desired state is invalid; the report holds every finding.
    #[error("the desired state at commit {commit} is invalid ({})", count(report.error_count(), "error"))]
    Invalid {
        /// The commit that was read.
        commit: String,
        /// Every finding.
        report: Box<Report>,
    },
    /// `--stack` names no stack of the commit.
    #[error("commit {commit} has no stack named `{name}`")]
    UnknownStack {
        /// The name asked for.
        name: String,
        /// The commit read.
        commit: String,
    },
    /// Hashing build inputs failed.
    #[error(transparent)]
    Build(#[from] crate::build::BuildError),
    /// Rendering the chart failed.
    #[error(transparent)]
    Render(#[from] crate::render::RenderError),
    /// The cluster failed.
    #[error(transparent)]
    Cluster(#[from] crate::cluster::ClusterError),
    /// A running daemon manages the stack: a one-shot apply would be undone by it, or undo it.
    #[error("a converge daemon manages stack `{stack}` (Lease {namespace}/converge-{stack} is held by {holder}, checkout {checkout}): it deploys the tip of its branch and this apply would silently roll the cluster to another commit. Commit and let the daemon deploy it, stop the daemon, or re-run with --force to apply anyway (the daemon then reconciles its tip again)")]
    DaemonRunning {
        /// The stack.
        stack: String,
        /// Its namespace.
        namespace: String,
        /// The daemon's identity (`host/pid`).
        holder: String,
        /// The checkout it deploys from.
        checkout: String,
    },
    /// Reading the stack's Lease failed.
    #[error(transparent)]
    Lease(#[from] crate::cluster::lease::LeaseError),
}

/// `1 error`, `2 errors`.
fn count(n: usize, word: &str) -> String {
    if n == 1 {
        format!("{n} {word}")
    } else {
        format!("{n} {word}s")
    }
}

impl Error {
    /// What should happen next.
    pub fn disposition(&self) -> Disposition {
        match self {
            Error::Source(_) | Error::Invalid { .. } | Error::UnknownStack { .. } => {
                Disposition::Stalled
            }
            Error::Render(crate::render::RenderError::Helm { .. }) => Disposition::Stalled,
            Error::Build(_) => Disposition::Retry,
            Error::Render(_) => Disposition::Retry,
            Error::Cluster(c) | Error::Lease(LeaseError::Cluster(c)) => cluster_disposition(c),
            Error::DaemonRunning { .. } => Disposition::Stalled,
            Error::Lease(_) => Disposition::Retry,
        }
    }

    /// A short CamelCase reason for status conditions.
    pub fn reason(&self) -> &'static str {
        match self {
            Error::Source(_) => "SourceFailed",
            Error::Invalid { .. } | Error::UnknownStack { .. } => reason::VALIDATION_FAILED,
            Error::Render(_) => reason::RENDER_FAILED,
            Error::Build(_) => reason::BUILD_FAILED,
            Error::Cluster(c) | Error::Lease(LeaseError::Cluster(c)) => cluster_reason(c),
            Error::DaemonRunning { .. } | Error::Lease(_) => "DaemonRunning",
        }
    }
}

/// What follows a cluster failure: a refusal that fails again on every retry of the same commit
/// needs a person, a namespace or object still being deleted is waited for, the rest is retried.
fn cluster_disposition(e: &ClusterError) -> Disposition {
    match e {
        ClusterError::Conflict { .. }
        | ClusterError::Immutable { .. }
        | ClusterError::Invalid { .. } => Disposition::Stalled,
        // A deletion still finalizing is a dependency not ready, like a namespace being deleted.
        ClusterError::NamespaceTerminating { .. } | ClusterError::NotGone { .. } => {
            Disposition::Waiting
        }
        _ => Disposition::Retry,
    }
}

/// The status reason of a cluster failure: nothing answering (or no usable kubeconfig) is
/// `ClusterUnreachable`; an answer refusing the apply is `ReconciliationFailed`; a namespace or
/// object still being deleted is a dependency not ready.
fn cluster_reason(e: &ClusterError) -> &'static str {
    match e {
        ClusterError::Config { .. }
        | ClusterError::Kubeconfig { .. }
        | ClusterError::UnknownContext { .. }
        | ClusterError::Unreachable { .. }
        | ClusterError::Timeout { .. } => reason::CLUSTER_UNREACHABLE,
        ClusterError::Api { .. } if e.is_unreachable() => reason::CLUSTER_UNREACHABLE,
        ClusterError::NamespaceTerminating { .. } | ClusterError::NotGone { .. } => {
            reason::DEPENDENCY_NOT_READY
        }
        ClusterError::Api { .. }
        | ClusterError::UnknownKind { .. }
        | ClusterError::Conflict { .. }
        | ClusterError::Immutable { .. }
        | ClusterError::Invalid { .. } => reason::APPLY_FAILED,
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
        assert_eq!(reason_of(not_gone), reason::DEPENDENCY_NOT_READY);
        assert_eq!(reason_of(timeout), reason::CLUSTER_UNREACHABLE);
        assert_eq!(reason_of(conflict), reason::APPLY_FAILED);
        assert_eq!(reason_of(answered(403)), reason::APPLY_FAILED);
        assert_eq!(reason_of(terminating), reason::DEPENDENCY_NOT_READY);
    }

    #[test]
    fn a_namespace_being_deleted_is_waited_for_and_a_refusal_stalls() {
        let terminating = ClusterError::NamespaceTerminating {
            action: "creating",
            object: "Lease todo/converge-todo".into(),
            message: "namespace todo is being terminated".into(),
        };
        assert_eq!(
            Error::Lease(LeaseError::Cluster(terminating)).disposition(),
            Disposition::Waiting
        );
        let invalid = ClusterError::Invalid {
            object: "x".into(),
            message: "no".into(),
        };
        assert_eq!(Error::Cluster(invalid).disposition(), Disposition::Stalled);
        assert_eq!(
            Error::Cluster(answered(500)).disposition(),
            Disposition::Retry
        );
    }
}
