//! The daemon's look at a commit before `reconcile_commit`: read and validate its desired state
//! (which stacks, namespaces and contexts to lease and watch) and hash each built component's
//! inputs (`build::plan`), so a bad build context stalls the commit before anything is applied.
//! Building the missing images is `reconcile_commit`'s step (`build::ensure`).
//!
//! It never builds, and never touches the cluster.

use std::collections::BTreeMap;
use std::path::Path;

use crate::build::{self, DigestCache, ImagePlan};
use crate::desired::{self, Stack};
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
