//! The top-level error of a converge operation; what it means (its reason and what happens
//! next) is decided in [`crate::outcome`].

use crate::desired::Report;

/// Any failure of a converge operation.
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
