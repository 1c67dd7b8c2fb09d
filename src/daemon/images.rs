//! The daemon's build step, the seam between a commit and `reconcile_commit`: read the commit's
//! desired state, hash each built component's inputs (`build::plan`), and make sure the images
//! exist (`build::ensure`), giving `Options::images`.
//!
//! It never applies anything to the cluster, and builds nothing for components with a fixed
//! `image.ref` (a stack of prebuilt images never touches an engine).

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;

use tokio::sync::watch;
use tracing::{info, warn};

use super::metrics::Metrics;
use crate::build::{self, Action, BuildOptions, DigestCache, ImagePlan};
use crate::desired::{self, schema::BuilderKind, Stack};
use crate::error::Error;
use crate::reconcile::stack_matches;
use crate::source::Repo;

/// One commit read for the daemon: its validated stacks and the images to make sure of.
#[derive(Debug, Clone)]
pub struct CommitPlan {
    /// The full commit id.
    pub commit: String,
    /// The selected stacks.
    pub stacks: Vec<Stack>,
    /// Planned images per stack name (empty for stacks without `image.build`).
    pub images: BTreeMap<String, Vec<ImagePlan>>,
}

/// A failed build step.
#[derive(Debug, thiserror::Error)]
pub enum ImagesError {
    /// Hashing a build context failed (a missing directory or Dockerfile at this commit).
    #[error("stack {stack}: {source}")]
    Plan {
        /// The stack.
        stack: String,
        /// The cause.
        #[source]
        source: build::BuildError,
    },
    /// The engine failed, or a component's build failed.
    #[error("stack {stack}: {message}")]
    Build {
        /// The stack.
        stack: String,
        /// What failed, per component.
        message: String,
    },
    /// Shutdown cancelled the builds.
    #[error("builds cancelled by shutdown")]
    Cancelled,
}

/// Reads and validates `commit` and plans its images (sync: git handles are not `Send`).
pub fn read_commit(
    repo_path: &Path,
    commit: &str,
    dir: &str,
    stack: Option<&str>,
    cache: &DigestCache,
) -> Result<Result<CommitPlan, ImagesError>, Error> {
    let repo = Repo::open(repo_path)?;
    let snapshot = repo.snapshot(commit)?;
    let id = snapshot.commit().to_string();
    let loaded = desired::load(&snapshot, dir).map_err(|report| Error::Invalid {
        commit: id.clone(),
        report: Box::new(report),
    })?;
    let stacks: Vec<Stack> = loaded
        .state
        .stacks
        .into_iter()
        .filter(|s| stack.is_none_or(|w| stack_matches(s, w)))
        .collect();
    if stacks.is_empty() {
        if let Some(name) = stack {
            return Err(Error::UnknownStack {
                name: name.into(),
                commit: id,
            });
        }
    }
    let mut images = BTreeMap::new();
    for s in &stacks {
        match build::plan(&snapshot, s, cache) {
            Ok(p) => {
                images.insert(s.spec.name.clone(), p);
            }
            Err(source) => {
                return Ok(Err(ImagesError::Plan {
                    stack: s.spec.name.clone(),
                    source,
                }))
            }
        }
    }
    Ok(Ok(CommitPlan {
        commit: id,
        stacks,
        images,
    }))
}

/// Makes sure every planned image exists, building what is missing; returns the images by stack
/// and component for `Options::images`.
pub async fn ensure(
    repo_root: &Path,
    plan: &CommitPlan,
    builder: Option<BuilderKind>,
    cancel: watch::Receiver<bool>,
    metrics: &Arc<Metrics>,
) -> Result<BTreeMap<String, BTreeMap<String, String>>, ImagesError> {
    let mut out = BTreeMap::new();
    for stack in &plan.stacks {
        let plans = plan
            .images
            .get(&stack.spec.name)
            .cloned()
            .unwrap_or_default();
        if plans.is_empty() {
            continue;
        }
        let opts = BuildOptions::new(build::resolve_builder(builder, stack));
        let outcomes = build::ensure(
            repo_root,
            &plan.commit,
            &plans,
            stack,
            &opts,
            cancel.clone(),
        )
        .await
        .map_err(|e| match e {
            build::BuildError::Cancelled => ImagesError::Cancelled,
            other => ImagesError::Build {
                stack: stack.spec.name.clone(),
                message: other.to_string(),
            },
        })?;
        let mut failed = Vec::new();
        let mut images = BTreeMap::new();
        for o in outcomes {
            let word = match &o.action {
                Action::Exists => "exists",
                Action::Built => {
                    info!(component = %o.component, image = %o.image, "image built");
                    "built"
                }
                Action::Skipped => "skipped",
                Action::Failed { reason, .. } => {
                    warn!(component = %o.component, image = %o.image, %reason, "image build failed");
                    failed.push(format!("{}: {reason}", o.component));
                    "failed"
                }
            };
            metrics.build(word);
            images.insert(o.component, o.image);
        }
        if !failed.is_empty() {
            return Err(ImagesError::Build {
                stack: stack.spec.name.clone(),
                message: format!("image build failed: {}", failed.join("; ")),
            });
        }
        out.insert(stack.spec.name.clone(), images);
    }
    Ok(out)
}
