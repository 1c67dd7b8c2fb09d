//! Which stacks the daemon manages and on which branch: learned from the newest valid commit of
//! the tracked branch, so a daemon starts even when the tip is broken; and, after a restart,
//! which commit the cluster's status records say runs there; and the local URLs its stacks ask for.

use std::collections::BTreeSet;
use std::path::Path;

use tracing::warn;

use super::forward::{routes_of, Route};
use super::{Config, DaemonError};
use crate::desired;
use crate::error::Error;
use crate::reconcile::{self, Clusters, Selection, StackRef};
use crate::status;

/// How far back from HEAD the daemon looks for a valid desired state to learn its stacks.
const DISCOVER_DEPTH: usize = 50;

/// The branch and stacks to manage, from the newest of the last commits of `start` (pull
/// mode's fetched ref), or of the branch, whose desired state is valid.
pub(super) fn discover(
    cfg: &Config,
    start: Option<&str>,
) -> Result<(String, Vec<StackRef>, Vec<Route>), DaemonError> {
    let start = match (start, &cfg.branch) {
        (Some(s), _) => s.to_string(),
        (None, Some(b)) => format!("refs/heads/{b}"),
        (None, None) => "HEAD".to_string(),
    };
    let selection = Selection {
        dir: cfg.options.dir.clone(),
        stack: cfg.options.stack.clone(),
        namespace: cfg.options.namespace.clone(),
    };
    let (back, commit) =
        match reconcile::load::newest_valid(&cfg.repo, &start, &selection, DISCOVER_DEPTH) {
            Ok(Some(found)) => found,
            Ok(None) => {
                return Err(DaemonError::Config {
                    message: format!(
                        "none of the last {DISCOVER_DEPTH} commits of {start} has a valid desired state in `{}`: run `converge validate` and commit a fix",
                        cfg.options.dir
                    ),
                })
            }
            Err(e @ Error::UnknownStack { .. }) => {
                return Err(DaemonError::Config {
                    message: match &cfg.options.stack {
                        Some(_) => format!("{e} in `{}`", cfg.options.dir),
                        None => format!("{e}: it has no stack in `{}`", cfg.options.dir),
                    },
                })
            }
            Err(e) => return Err(e.into()),
        };
    let stacks: Vec<&desired::Stack> = commit.stacks().collect();
    if stacks.is_empty() {
        return Err(DaemonError::Config {
            message: format!(
                "commit {} has no stack in `{}`",
                desired::short_id(&commit.id),
                cfg.options.dir
            ),
        });
    }
    let branch = match &cfg.branch {
        Some(b) => b.clone(),
        None => {
            let branches: BTreeSet<&str> = stacks.iter().map(|s| s.spec.branch.as_str()).collect();
            if branches.len() > 1 {
                return Err(DaemonError::Config {
                    message: format!(
                        "the stacks track different branches ({}): run one daemon per branch with --stack or --branch",
                        branches.into_iter().collect::<Vec<_>>().join(", ")
                    ),
                });
            }
            branches.into_iter().next().unwrap_or("main").to_string()
        }
    };
    if back > 0 {
        warn!(rev = %format!("{start}~{back}"), "HEAD's desired state is invalid; learned the stacks from an older commit");
    }
    Ok((
        branch,
        reconcile::targets_of(stacks.iter().copied(), cfg.options.context.as_deref()),
        routes_of(stacks, cfg.options.context.as_deref()),
    ))
}

/// The commit every stack's status record names as last applied, when they agree (pure).
fn agreed_commit(records: &[String]) -> Option<String> {
    let first = records.first()?;
    records.iter().all(|c| c == first).then(|| first.clone())
}

/// The last applied commit the cluster's status records name for `targets`, when they agree and
/// this checkout holds it: what drift corrections re-apply after a restart onto a stalled tip.
pub(super) async fn recorded_commit(
    clusters: &mut Clusters,
    cfg: &Config,
    targets: &[StackRef],
    root: &Path,
) -> Option<String> {
    let mut commits = Vec::new();
    for t in targets {
        let cluster = clusters
            .get(cfg.options.kubeconfig.as_deref(), &t.context)
            .await
            .ok()?;
        match status::load(cluster.client(), &t.namespace, &t.stack).await {
            Ok(Some(s)) if !s.last_applied_commit.is_empty() => commits.push(s.last_applied_commit),
            Ok(_) => {}
            Err(e) => warn!(stack = %t.stack, error = %e, "status record not read"),
        }
    }
    let commit = agreed_commit(&commits)?;
    let readable = crate::source::Repo::open(root)
        .and_then(|r| r.snapshot(&commit).map(|_| ()))
        .is_ok();
    if !readable {
        warn!(commit = %desired::short_id(&commit), "the cluster's status record names a commit this checkout does not hold");
        return None;
    }
    Some(commit)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_recorded_commit_counts_only_when_every_stack_agrees() {
        assert_eq!(agreed_commit(&[]), None);
        assert_eq!(agreed_commit(&["a".into(), "a".into()]), Some("a".into()));
        assert_eq!(agreed_commit(&["a".into(), "b".into()]), None);
    }
}
