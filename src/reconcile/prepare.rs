//! From a commit to what the cluster needs: load it, build what is missing, render each stack's
//! chart with its images. Nothing here talks to the cluster except the daemon check.

use std::collections::BTreeMap;
use std::path::Path;

use tracing::{info, warn};

use super::load::{self, Images, Planned, Selection};
use super::{context_of, Clusters, Options};
use crate::build::{
    self, BuildError, BuildOptions, BuildOutcome, BuilderChoice, CallCounts, Engine,
};
use crate::desired::schema::BuilderKind;
use crate::desired::Stack;
use crate::error::Error;
use crate::render;
use crate::source::Repo;

/// A stack read from a commit and rendered, ready for the cluster.
pub struct Prepared {
    /// The validated stack.
    pub stack: Stack,
    /// Its chart, exported.
    pub render: render::Prepared,
    /// Images by component.
    pub images: BTreeMap<String, String>,
    /// What the build step did, per built component.
    pub builds: Vec<BuildOutcome>,
    /// Components whose image could not be built: not applied, so their last healthy
    /// ReplicaSet keeps serving.
    pub build_failures: BTreeMap<String, String>,
}

/// A commit read, validated, built and rendered: all a reconcile needs from git. The daemon
/// keeps the last one, so correcting a drift does not read, validate and render again.
pub struct PreparedCommit {
    /// The full commit id.
    pub commit: String,
    /// The selected stacks, rendered.
    pub stacks: Vec<Prepared>,
}

impl PreparedCommit {
    /// Whether every image it needs was built (a failed build is worth preparing again).
    pub fn complete(&self) -> bool {
        self.stacks.iter().all(|p| p.build_failures.is_empty())
    }
}

/// The stacks `opts` selects.
pub(super) fn selection(opts: &Options) -> Selection {
    Selection {
        dir: opts.dir.clone(),
        stack: opts.stack.clone(),
        namespace: opts.namespace.clone(),
    }
}

/// Exports each stack's chart at `commit` with its content tags (sync: git).
fn render_all(
    repo_path: &Path,
    commit: &str,
    stacks: Vec<(Planned, Vec<BuildOutcome>, BTreeMap<String, String>)>,
) -> Result<Vec<Prepared>, Error> {
    let repo = Repo::open(repo_path)?;
    let snapshot = repo.snapshot(commit)?;
    let mut out = Vec::new();
    for (planned, builds, build_failures) in stacks {
        let images: BTreeMap<String, String> = planned
            .images
            .iter()
            .map(|p| (p.component.clone(), p.image.clone()))
            .collect();
        let render = render::prepare(&snapshot, &planned.stack, &images)?;
        out.push(Prepared {
            stack: planned.stack,
            render,
            images,
            builds,
            build_failures,
        });
    }
    Ok(out)
}

/// Reads, validates and renders the stacks of `rev` that `selection` names, with their content
/// tags, building nothing (what `diff` and `doctor` look at).
pub fn prepare(
    repo_path: &Path,
    rev: &str,
    selection: &Selection,
) -> Result<(String, Vec<Prepared>), Error> {
    let commit = load::load(repo_path, rev, selection, Images::Plan)?;
    // Nothing is built: the stack's own builder and registry say what its Pods would pull.
    let defaults = BuildOptions::default();
    let stacks = commit
        .stacks
        .into_iter()
        .map(|mut p| {
            let (bopts, _) = defaults.for_stack(None, &p.stack, &p.stack.spec.context);
            p.images = build::qualified(&p.images, &bopts);
            (p, Vec::new(), BTreeMap::new())
        })
        .collect();
    let prepared = render_all(repo_path, &commit.id, stacks)?;
    Ok((commit.id, prepared))
}

/// What building one stack's images did.
pub struct StackBuild {
    /// The builder chosen, and why.
    pub choice: BuilderChoice,
    /// Per component, in plan order.
    pub outcomes: Vec<BuildOutcome>,
    /// The engine calls made.
    pub calls: CallCounts,
}

/// Builds what is missing of `planned`'s images with the builder chosen for its stack
/// (`builder`: `--builder`) on the kube `context` actually used: the one build step of
/// `converge build` and of every reconcile. `Err` when no image can be built (no engine, a tool
/// missing, cancelled); a failed build is an outcome.
pub async fn build_images(
    repo_path: &Path,
    commit: &str,
    planned: &Planned,
    builder: Option<BuilderKind>,
    context: &str,
    build: &BuildOptions,
    cancel: tokio::sync::watch::Receiver<bool>,
) -> Result<StackBuild, BuildError> {
    let (bopts, choice) = build.for_stack(builder, &planned.stack, context);
    let plans = build::qualified(&planned.images, &bopts);
    let engine = Engine::new(&bopts)?;
    let outcomes = build::ensure_with(
        &engine,
        repo_path,
        commit,
        &plans,
        &planned.stack,
        &bopts,
        cancel,
    )
    .await?;
    Ok(StackBuild {
        choice,
        outcomes,
        calls: engine.calls(),
    })
}

/// Builds what is missing for one stack; a failed build, or an engine that cannot be reached,
/// holds back only the components it concerns.
async fn build_stack(
    repo_path: &Path,
    commit: &str,
    planned: &Planned,
    opts: &Options,
) -> (Vec<BuildOutcome>, BTreeMap<String, String>) {
    let mut failures = BTreeMap::new();
    if planned.images.is_empty() {
        return (Vec::new(), failures);
    }
    let cancel = opts
        .cancel
        .clone()
        .unwrap_or_else(|| tokio::sync::watch::channel(false).1);
    let context = context_of(opts, &planned.stack);
    match build_images(
        repo_path,
        commit,
        planned,
        opts.builder,
        context,
        &opts.build,
        cancel,
    )
    .await
    {
        Ok(StackBuild { outcomes, .. }) => {
            for o in &outcomes {
                if let build::Action::Failed {
                    reason: why,
                    log_tail,
                } = &o.action
                {
                    warn!(component = %o.component, image = %o.image, "build failed: {why}");
                    failures.insert(
                        o.component.clone(),
                        format!("build of {} failed: {why}\n{log_tail}", o.image),
                    );
                }
            }
            (outcomes, failures)
        }
        Err(e) => {
            warn!(error = %e, "images not built");
            for p in &planned.images {
                failures.insert(
                    p.component.clone(),
                    format!("image {} not built: {e}", p.image),
                );
            }
            (Vec::new(), failures)
        }
    }
}

/// Reads and validates `rev`, refuses when a daemon holds a stack (see
/// [`Options::defer_to_daemon`]), builds what is missing and renders every selected stack.
pub async fn prepare_commit(
    repo_path: &Path,
    rev: &str,
    opts: &Options,
    clusters: &mut Clusters,
) -> Result<PreparedCommit, Error> {
    let commit = load::load(repo_path, rev, &selection(opts), Images::Plan)?;
    if opts.defer_to_daemon {
        for stack in commit.stacks() {
            refuse_if_daemon(stack, opts, clusters).await?;
        }
    }
    let mut built = Vec::new();
    for mut p in commit.stacks {
        // What Pods pull: under the registry's prefix for the registry builder, even when the
        // build fails (the component is held back, but its name stays the one it would have).
        let (bopts, _) = opts
            .build
            .for_stack(opts.builder, &p.stack, context_of(opts, &p.stack));
        p.images = build::qualified(&p.images, &bopts);
        effective_registry(&mut p.stack, &bopts);
        let (outcomes, failures) = build_stack(repo_path, &commit.id, &p, opts).await;
        built.push((p, outcomes, failures));
    }
    let stacks = render_all(repo_path, &commit.id, built)?;
    Ok(PreparedCommit {
        commit: commit.id,
        stacks,
    })
}

/// Writes the registry settings the flags and environment chose (`--builder registry`,
/// `--registry`, `--pull-secret`…) into `stack`, so what renders its values (the pull Secret, the
/// pull policy) and what checks its Secrets see the builder that actually runs, not only what
/// the commit says: the same desired state moves from a laptop's builder to a registry by flags.
fn effective_registry(stack: &mut crate::desired::Stack, bopts: &build::BuildOptions) {
    if bopts.builder != BuilderKind::Registry {
        return;
    }
    stack.spec.builder = Some(BuilderKind::Registry);
    let r = stack.spec.registry.get_or_insert_with(Default::default);
    r.prefix.clone_from(&bopts.registry);
    r.buildkit.clone_from(&bopts.buildkit_addr);
    r.pull_secret.clone_from(&bopts.pull_secret);
}

/// [`Error::DaemonRunning`] when a daemon holds `stack`'s Lease: a one-shot apply would be
/// undone by it, or undo it.
pub(super) async fn refuse_if_daemon(
    stack: &Stack,
    opts: &Options,
    clusters: &mut Clusters,
) -> Result<(), Error> {
    let cluster = clusters
        .get(opts.kubeconfig.as_deref(), context_of(opts, stack))
        .await?;
    let (ns, name) = (&stack.spec.namespace, &stack.spec.name);
    match crate::cluster::lease::holder_of(cluster.client(), ns, name).await? {
        Some((holder, checkout)) => Err(Error::DaemonRunning {
            stack: name.clone(),
            namespace: ns.clone(),
            holder,
            checkout,
        }),
        None => Ok(()),
    }
}

/// Removes old content tags of a stack's repositories after it became healthy, keeping the newest
/// `opts.build.keep` and never the images it now runs (a revert of the next commit needs them).
/// Best effort: a failure is logged, never a failed reconcile.
pub(super) async fn collect_old_images(p: &Prepared, opts: &Options) {
    let (bopts, _) = opts
        .build
        .for_stack(opts.builder, &p.stack, context_of(opts, &p.stack));
    if p.builds.is_empty() || bopts.builder == BuilderKind::None {
        return;
    }
    let repositories: Vec<String> = p
        .stack
        .components
        .iter()
        .filter_map(|c| c.spec.image.build.as_ref().map(|b| b.repository.clone()))
        .collect();
    let protect: Vec<String> = p.images.values().cloned().collect();
    let cancel = opts
        .cancel
        .clone()
        .unwrap_or_else(|| tokio::sync::watch::channel(false).1);
    match build::prune_old(&bopts, &repositories, &protect, cancel).await {
        Ok(r) if !r.removed.is_empty() => {
            info!(removed = r.removed.len(), "old image tags removed")
        }
        Ok(_) => {}
        Err(e) => warn!(error = %e, "old image tags not collected"),
    }
}
