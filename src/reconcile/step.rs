//! The named steps of a reconcile and why one ended without everything healthy. The status
//! reason and what happens next come from the failure's variant and the error it keeps — never
//! from its text.

use std::sync::Arc;

use crate::cluster::ClusterError;
use crate::desired;
use crate::outcome::{self, Next, Reason};
use crate::render::RenderError;

/// The steps of one stack's reconcile, in the order they run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Step {
    /// Build the images whose inputs changed (before the run; a failure shows at its end).
    Build,
    /// Template the chart with the commit's values.
    Render,
    /// Read what the cluster holds: namespace, inventory, status, Secrets, live objects.
    Read,
    /// Record new objects in the inventory before creating them.
    WriteAhead,
    /// Run the pre-install/pre-upgrade hooks.
    PreHooks,
    /// Server-side apply, in dependency order.
    Apply,
    /// Wait for rollouts.
    Health,
    /// Run the post-install/post-upgrade hooks.
    PostHooks,
    /// Delete what is no longer rendered.
    Prune,
    /// Write the inventory.
    Inventory,
}

impl Step {
    /// The step's name in messages.
    pub fn as_str(self) -> &'static str {
        match self {
            Step::Build => "build",
            Step::Render => "render",
            Step::Read => "read",
            Step::WriteAhead => "write-ahead",
            Step::PreHooks => "pre-hooks",
            Step::Apply => "apply",
            Step::Health => "health",
            Step::PostHooks => "post-hooks",
            Step::Prune => "prune",
            Step::Inventory => "inventory",
        }
    }
}

/// Why a health wait failed: the objects it failed on, and why in words. The objects are
/// carried beside the words, so what failed is never read back out of them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HealthFailure {
    /// The objects not healthy: the one that failed, or every one still pending at the deadline.
    pub objects: Vec<crate::cluster::ObjectKey>,
    /// Why, one line naming them.
    pub message: String,
}

/// Why one component was not applied or is not healthy.
#[derive(Debug, Clone)]
pub enum ComponentFailure {
    /// The API server refused one of its objects (or the cluster cannot take its kind).
    Apply(Arc<ClusterError>),
    /// It did not become healthy.
    Health(HealthFailure),
}

impl ComponentFailure {
    /// The one-line explanation recorded in the component's status.
    pub fn message(&self) -> String {
        match self {
            ComponentFailure::Apply(e) => format!("apply failed: {e}"),
            ComponentFailure::Health(h) => h.message.clone(),
        }
    }

    /// What happens next: a refusal that fails again on every try waits for a new commit.
    pub fn next(&self) -> Next {
        match self {
            ComponentFailure::Apply(e) => outcome::after_cluster(e),
            ComponentFailure::Health(_) => Next::Retry,
        }
    }
}

/// Why a component was held back: not applied, so the version deployed keeps serving.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Held {
    /// An image it runs does not exist: its build failed, or the `none` builder left it on no
    /// node. A new build (the daemon's retry, `converge apply`) fixes it.
    ImageMissing(String),
    /// A Secret (or a key of one) it reads is missing.
    Secret(String),
    /// A component it depends on failed or was held back.
    Dependency(String),
}

impl Held {
    /// Why, one line (or more for a build's output), as recorded and printed.
    pub fn why(&self) -> &str {
        match self {
            Held::ImageMissing(why) | Held::Secret(why) | Held::Dependency(why) => why,
        }
    }
}

impl std::fmt::Display for Held {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.why())
    }
}

/// In a stack's JSON report, a held-back component's why.
impl serde::Serialize for Held {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(self.why())
    }
}

/// Why prune did not delete everything no longer rendered.
#[derive(Debug, Clone)]
pub enum PruneFailure {
    /// The prune plan refused (a mass prune, say): nothing was deleted.
    Refused(String),
    /// Deleting one object failed; it stays in the inventory, so the next reconcile retries.
    Delete {
        /// `Kind/name` of the object.
        object: String,
        /// Why.
        error: Arc<ClusterError>,
    },
}

impl std::fmt::Display for PruneFailure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            PruneFailure::Refused(why) => f.write_str(why),
            PruneFailure::Delete { object, error } => write!(f, "pruning {object}: {error}"),
        }
    }
}

/// Why a stack's reconcile ended without everything applied and healthy.
#[derive(Debug, thiserror::Error)]
pub enum Failure {
    /// Templating the chart failed.
    #[error(transparent)]
    Render(#[from] RenderError),
    /// The cluster did not answer a read or write the reconcile cannot go on without.
    #[error("{source}")]
    Cluster {
        /// The step that needed it.
        step: Step,
        /// The cause.
        #[source]
        source: ClusterError,
    },
    /// A hook failed; nothing after it ran.
    #[error("hook {hook}: {why}")]
    Hook {
        /// [`Step::PreHooks`] or [`Step::PostHooks`].
        step: Step,
        /// `Job/migrate`.
        hook: String,
        /// Why.
        why: String,
    },
    /// A component failed to apply or to become healthy.
    #[error("{component}: {}", failure.message())]
    Component {
        /// The component (or the object's short name for stack-wide objects).
        component: String,
        /// How.
        failure: ComponentFailure,
    },
    /// The health wait ran out or failed on an object no component names.
    #[error("{}", .0.message)]
    Health(HealthFailure),
    /// Prune was refused or a deletion failed.
    #[error("{0}")]
    Prune(PruneFailure),
    /// An image of this commit was not built: what uses it was not applied (hooks included)
    /// and the previous version keeps serving.
    #[error("{component}: {why}")]
    Build {
        /// The component whose image failed.
        component: String,
        /// The build failure, and what was held back because of it.
        why: String,
    },
    /// A component was held back; everything else is healthy.
    #[error("{component}: {why}")]
    Blocked {
        /// The component.
        component: String,
        /// Why.
        why: String,
    },
    /// Applied; the health wait was cut short because newer work is waiting.
    #[error("applied {}; the health wait was cut short because newer work is waiting (a new commit, a drift or shutdown)", desired::short_id(.commit))]
    Preempted {
        /// The commit applied.
        commit: String,
    },
}

impl Failure {
    /// The status reason, from the failure's variant and the error it keeps.
    pub fn reason(&self) -> Reason {
        match self {
            Failure::Render(_) => Reason::RenderFailed,
            // A read that was answered with a refusal (a 403, say) is not an unreachable cluster.
            Failure::Cluster { source, .. } => outcome::cluster_reason(source),
            Failure::Hook { .. } => Reason::HookFailed,
            Failure::Component {
                failure: ComponentFailure::Apply(_),
                ..
            } => Reason::ApplyFailed,
            Failure::Component {
                failure: ComponentFailure::Health(_),
                ..
            }
            | Failure::Health(_) => Reason::HealthFailed,
            Failure::Blocked { .. } => Reason::DependencyNotReady,
            Failure::Build { .. } => Reason::BuildFailed,
            Failure::Prune(_) => Reason::PruneFailed,
            Failure::Preempted { .. } => Reason::Progressing,
        }
    }

    /// What happens next, for this failure alone (the run's other components may change it:
    /// see [`crate::reconcile`]'s finish).
    pub fn next(&self) -> Next {
        match self {
            Failure::Render(RenderError::Helm { .. }) => Next::WaitForCommit,
            Failure::Cluster { source, .. } => outcome::after_cluster(source),
            Failure::Component { failure, .. } => failure.next(),
            Failure::Preempted { .. } => Next::Superseded,
            // An object still finalizing is waited for like a namespace being deleted.
            Failure::Prune(PruneFailure::Delete { error, .. }) => {
                match outcome::after_cluster(error) {
                    Next::WaitForDependency => Next::WaitForDependency,
                    _ => Next::Retry,
                }
            }
            Failure::Render(_)
            | Failure::Hook { .. }
            | Failure::Health(_)
            | Failure::Prune(_)
            | Failure::Build { .. }
            | Failure::Blocked { .. } => Next::Retry,
        }
    }

    /// The step it failed at (a held-back component stops at apply; a cut-short wait at health).
    pub fn step(&self) -> Step {
        match self {
            Failure::Render(_) => Step::Render,
            Failure::Build { .. } => Step::Build,
            Failure::Cluster { step, .. } | Failure::Hook { step, .. } => *step,
            Failure::Component {
                failure: ComponentFailure::Apply(_),
                ..
            }
            | Failure::Blocked { .. } => Step::Apply,
            Failure::Component {
                failure: ComponentFailure::Health(_),
                ..
            }
            | Failure::Health(_)
            | Failure::Preempted { .. } => Step::Health,
            Failure::Prune(_) => Step::Prune,
        }
    }

    /// A failure reading from the cluster at `step`.
    pub fn cluster(step: Step) -> impl FnOnce(ClusterError) -> Failure {
        move |source| Failure::Cluster { step, source }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_reason_comes_from_where_it_failed() {
        let conflict = ClusterError::Conflict {
            object: "Deployment/web".into(),
            managers: vec!["kubectl".into()],
            fields: vec![".spec.replicas".into()],
        };
        let message = conflict.to_string();
        let apply = Failure::Component {
            component: "web".into(),
            failure: ComponentFailure::Apply(Arc::new(conflict)),
        };
        assert_eq!(apply.reason(), Reason::ApplyFailed);
        assert_eq!(apply.step(), Step::Apply);
        assert_eq!(apply.next(), Next::WaitForCommit);
        assert_eq!(apply.to_string(), format!("web: apply failed: {message}"));
        let health = Failure::Component {
            component: "web".into(),
            failure: ComponentFailure::Health(HealthFailure {
                objects: Vec::new(),
                message: "Deployment/web: pod x is CrashLoopBackOff".into(),
            }),
        };
        assert_eq!(health.reason(), Reason::HealthFailed);
        assert_eq!(health.step().as_str(), "health");
        let hook = Failure::Hook {
            step: Step::PostHooks,
            hook: "Job/seed".into(),
            why: "BackoffLimitExceeded".into(),
        };
        assert_eq!(hook.reason(), Reason::HookFailed);
        assert_eq!(hook.step().as_str(), "post-hooks");
        assert_eq!(
            Failure::Blocked {
                component: "api".into(),
                why: "waits for `db`".into()
            }
            .reason(),
            Reason::DependencyNotReady
        );
        let preempted = Failure::Preempted {
            commit: "0123456789".into(),
        };
        assert_eq!(preempted.reason(), Reason::Progressing);
        assert!(preempted.to_string().starts_with("applied 0123456; "));
        assert_eq!(preempted.next(), Next::Superseded);
    }

    #[test]
    fn a_read_refused_by_the_api_server_is_not_an_unreachable_cluster() {
        let status = kube::core::Status::failure("forbidden", "Forbidden").with_code(403);
        let forbidden = Failure::Cluster {
            step: Step::Read,
            source: ClusterError::Api {
                action: "reading",
                object: "Secret todo/db".into(),
                source: kube::Error::Api(status.boxed()),
            },
        };
        assert_eq!(forbidden.reason(), Reason::ApplyFailed);
        let timeout = Failure::Cluster {
            step: Step::Read,
            source: ClusterError::Timeout {
                action: "reading",
                object: "Secret todo/db".into(),
            },
        };
        assert_eq!(timeout.reason(), Reason::ClusterUnreachable);
        assert_eq!(timeout.next(), Next::Retry);
    }
}
