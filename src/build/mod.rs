//! Images: the build-input digest that names each built image (`<repository>:<12 hex>`), and
//! making sure that tag exists on the target engine, building only what is missing. It never
//! renders manifests or touches the cluster's API.
//!
//! Two steps, so the reconciler can plan without side effects:
//!
//! 1. [`plan`] (pure, synchronous): hash every component's build inputs from the commit and
//!    return the tags. Blob hashes are cached by git blob id in a [`DigestCache`].
//! 2. [`ensure_with`] (async, effects): one existence check per distinct tag, then a bounded
//!    number of parallel builds for the missing ones. Because a git2 repository cannot cross
//!    threads, it takes the repository path and commit and reopens them on a blocking thread to make
//!    each context archive, only for the images it actually builds.
//!
//! [`prune_old`] removes old content tags, keeping the newest N per repository, the protected
//! tags (the last healthy commit's) and any image a running container uses.

pub mod context;
pub mod detect;
pub mod digest;
pub mod engine;
pub mod ignore;
pub mod minikube;
pub mod prune;
pub mod registry;

use std::collections::{BTreeMap, HashSet};
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde::Serialize;
use tokio::sync::{watch, Semaphore};

pub use detect::{
    choose_builder, is_minikube_context, BuildEnv, BuilderChoice, DEFAULT_CONTAINERD_ADDRESS,
    ENV_NAMES, ENV_PREFIXES,
};
pub use digest::DigestCache;
pub use engine::{CallCounts, Engine, Existence};
pub use prune::{
    parse_image_list, prune_decision, prune_old, prune_old_with, ListedImage, PruneReport,
};

use crate::desired::schema::BuilderKind;
use crate::desired::{BuildSpec, Stack};
use crate::source::Snapshot;

/// Errors of planning or ensuring images.
#[derive(Debug, thiserror::Error)]
pub enum BuildError {
    /// Reading the commit failed.
    #[error(transparent)]
    Source(#[from] crate::source::SourceError),
    /// The build spec does not describe a usable context in this commit.
    #[error("component `{component}`: {message}")]
    InvalidContext {
        /// The component.
        component: String,
        /// What is wrong.
        message: String,
    },
    /// The engine cannot be reached.
    #[error("cannot reach the image engine at {host}: {detail}; {hint}")]
    Unreachable {
        /// The socket, `DOCKER_HOST` or minikube profile tried.
        host: String,
        /// What the CLI said.
        detail: String,
        /// How to fix it.
        hint: String,
    },
    /// The engine answered with an error that is not about the image.
    #[error("`{command}` failed ({status}): {detail}")]
    Engine {
        /// The command, without its environment.
        command: String,
        /// Its exit status.
        status: String,
        /// The last line it printed.
        detail: String,
    },
    /// A command ran past its timeout and was killed.
    #[error("`{command}` timed out (engine {host})")]
    Timeout {
        /// The command.
        command: String,
        /// Where it pointed.
        host: String,
    },
    /// minikube answered that it cannot serve the build: no such profile, stopped, or another
    /// failure (its message names the command that fixes it).
    #[error(transparent)]
    Minikube(#[from] minikube::MinikubeFailure),
    /// The CLI tool is not installed.
    #[error(
        "`{program}` was not found on PATH; install it or choose another builder with `--builder`"
    )]
    ToolMissing {
        /// The program.
        program: String,
    },
    /// `builder: command` without a template.
    #[error("the command builder needs a template, e.g. `buildah bud -t {{image}} -f {{dockerfile}} {{context}}`")]
    MissingCommandTemplate,
    /// A build was asked of the `none` builder.
    #[error("the `none` builder builds nothing")]
    NoBuilder,
    /// The registry was not there, refused the login, or the login could not be read.
    #[error(transparent)]
    Registry(#[from] registry::RegistryError),
    /// `builder: registry` with no prefix to push under.
    #[error("the registry builder needs a registry to push to: set `registry.prefix` in the stack (e.g. `registry: {{prefix: registry.example.com:5000/team}}`) or pass --registry (CONVERGE_REGISTRY)")]
    MissingRegistryPrefix,
    /// `builder: kind` on a context that names no kind cluster.
    #[error("the kind builder needs a `kind-<cluster>` kube context (or choose another builder with `--builder`)")]
    MissingKindCluster,
    /// Shutdown was requested; running builds were killed.
    #[error("image builds were cancelled")]
    Cancelled,
    /// Local I/O (archive, temporary directory).
    #[error("{what}")]
    Io {
        /// What was being done.
        what: String,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
}

impl BuildError {
    /// Whether no other image can be built either (the engine or minikube is not there, or the
    /// run was cancelled): the whole `ensure` fails with it rather than one image.
    pub fn stops_every_build(&self) -> bool {
        match self {
            BuildError::Unreachable { .. }
            | BuildError::Cancelled
            | BuildError::ToolMissing { .. }
            | BuildError::MissingRegistryPrefix
            | BuildError::Registry(_) => true,
            BuildError::Minikube(f) => f.fix().is_some(),
            _ => false,
        }
    }
}

/// Content tags kept per repository by [`prune_old`] unless told otherwise.
pub const KEEP_TAGS: usize = 5;

/// Limit for existence checks and other short engine calls.
pub const CHECK_TIMEOUT: Duration = Duration::from_secs(30);

/// How images are built; the daemon and the CLI fill it once.
#[derive(Debug, Clone)]
pub struct BuildOptions {
    /// Which engine.
    pub builder: BuilderKind,
    /// Builds at once (at least 1).
    pub parallelism: usize,
    /// Content tags kept per repository by [`prune_old`].
    pub keep: usize,
    /// The `command` builder's template: placeholders `{image}`, `{repository}`, `{tag}`,
    /// `{dockerfile}`, `{context}`, `{target}`, `{platform}`, and `{build_args}` (expands to
    /// `--build-arg K=V` pairs).
    pub command_template: Option<String>,
    /// `DOCKER_HOST` for the Docker CLI (`--docker-host`); the environment's when `None`.
    pub docker_host: Option<String>,
    /// The `command` builder's existence check (exit 0 = the tag exists), same placeholders.
    pub command_exists_template: Option<String>,
    /// The minikube profile (`minikube -p`); minikube's current one when `None`.
    pub minikube_profile: Option<String>,
    /// The registry builder's prefix (`host[:port]/path`): `--registry` (`CONVERGE_REGISTRY`),
    /// else the stack's `registry.prefix` ([`BuildOptions::for_stack`] fills it).
    pub registry: Option<String>,
    /// The registry builder's BuildKit address: `--buildkit-addr` (`BUILDKIT_HOST`), else the
    /// stack's `registry.buildkit`; buildctl's default when `None`.
    pub buildkit_addr: Option<String>,
    /// The registry builder's pull Secret: `--pull-secret` (`CONVERGE_PULL_SECRET`), else the
    /// stack's `registry.pullSecret`.
    pub pull_secret: Option<String>,
    /// The environment's say in choosing and aiming the builder, read once when these options
    /// are made (the daemon's at its start).
    pub env: BuildEnv,
    /// The `kind` builder's cluster (from a `kind-<name>` context).
    pub kind_cluster: Option<String>,
    /// Limit for existence checks and other short calls.
    pub check_timeout: Duration,
    /// Limit for one build (and push).
    pub build_timeout: Duration,
    /// Images the `none` builder already warned about, shared by every clone of these options.
    pub unconfirmed: Unconfirmed,
}

/// Images reported as unconfirmed (the `none` builder): the warning is once per image for as
/// long as the options live (the daemon keeps its options for its lifetime), not per reconcile.
#[derive(Debug, Clone, Default)]
pub struct Unconfirmed(Arc<Mutex<HashSet<String>>>);

impl Unconfirmed {
    /// Whether `image` is reported for the first time.
    pub fn first_time(&self, image: &str) -> bool {
        self.0
            .lock()
            .map(|mut s| s.insert(image.to_string()))
            .unwrap_or(true)
    }
}

impl Default for BuildOptions {
    /// Docker, with the build environment read from this process (once, here).
    fn default() -> Self {
        Self {
            builder: BuilderKind::Docker,
            parallelism: 2,
            keep: KEEP_TAGS,
            command_template: None,
            docker_host: None,
            command_exists_template: None,
            minikube_profile: None,
            registry: None,
            buildkit_addr: None,
            pull_secret: None,
            env: BuildEnv::from_process(),
            kind_cluster: None,
            check_timeout: CHECK_TIMEOUT,
            build_timeout: Duration::from_secs(30 * 60),
            unconfirmed: Unconfirmed::default(),
        }
    }
}

impl BuildOptions {
    /// Defaults with `builder`.
    #[must_use]
    pub fn new(builder: BuilderKind) -> Self {
        Self {
            builder,
            ..Self::default()
        }
    }
}

impl BuildOptions {
    /// The socket the `containerd` builder loads into.
    pub fn containerd_address(&self) -> String {
        self.env
            .containerd_address
            .clone()
            .unwrap_or_else(|| DEFAULT_CONTAINERD_ADDRESS.into())
    }

    /// The containerd namespace the `containerd` builder loads into.
    pub fn containerd_namespace(&self) -> String {
        self.env
            .containerd_namespace
            .clone()
            .unwrap_or_else(|| "k8s.io".into())
    }

    /// These options with the builder chosen for `stack` on the kube `context` actually used
    /// (`cli`: `--builder`), and the choice with its reason.
    #[must_use]
    pub fn for_stack(
        &self,
        cli: Option<BuilderKind>,
        stack: &Stack,
        context: &str,
    ) -> (Self, BuilderChoice) {
        let choice = choose_builder(cli, stack, context, &self.env);
        let opts = Self {
            builder: choice.builder,
            kind_cluster: choice.kind_cluster.clone(),
            // `--minikube-profile` wins over the context's name.
            minikube_profile: self
                .minikube_profile
                .clone()
                .or(choice.minikube_profile.clone()),
            // The flag, else its variable, wins over the stack, as `--builder` does.
            registry: self
                .registry
                .clone()
                .or_else(|| self.env.registry.clone())
                .or_else(|| stack.spec.registry.as_ref()?.prefix.clone()),
            buildkit_addr: self
                .buildkit_addr
                .clone()
                .or_else(|| self.env.buildkit_host.clone())
                .or_else(|| stack.spec.registry.as_ref()?.buildkit.clone()),
            pull_secret: self
                .pull_secret
                .clone()
                .or_else(|| stack.spec.registry.as_ref()?.pull_secret.clone()),
            ..self.clone()
        };
        (opts, choice)
    }
}

/// The image a component will run, named by its build-input digest.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ImagePlan {
    /// The component's name.
    pub component: String,
    /// `<repository>:<first 12 hex of digest>`: what manifests reference.
    pub image: String,
    /// The full sha256 (hex) of the build inputs.
    pub digest: String,
}

/// What happened to one component's image.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(
    tag = "action",
    rename_all = "lowercase",
    rename_all_fields = "camelCase"
)]
pub enum Action {
    /// The tag was already there; nothing was built.
    Exists,
    /// The tag was built now.
    Built,
    /// The build engine had the tag; it was loaded into the node's runtime, not rebuilt.
    Loaded,
    /// Not built and not confirmed to exist: the `none` builder computes tags only.
    Skipped,
    /// The build failed; the component keeps its previous image.
    Failed {
        /// The last 40 lines of build output.
        log_tail: String,
        /// The failing step and error.
        reason: String,
    },
}

/// The outcome for one component.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct BuildOutcome {
    /// The component.
    pub component: String,
    /// The content tag.
    pub image: String,
    /// What was done.
    pub action: Action,
}

/// Hashes the build inputs of every component of `stack` that has `image.build`, read from the
/// commit of `snapshot`; pure apart from filling `cache`.
pub fn plan(
    snapshot: &Snapshot<'_>,
    stack: &Stack,
    cache: &DigestCache,
) -> Result<Vec<ImagePlan>, BuildError> {
    let mut out = Vec::new();
    for c in &stack.components {
        let Some(spec) = &c.spec.image.build else {
            continue;
        };
        out.push(plan_one(snapshot, &c.spec.name, spec, cache)?);
    }
    Ok(out)
}

/// Hashes one build spec.
pub fn plan_one(
    snapshot: &Snapshot<'_>,
    component: &str,
    spec: &BuildSpec,
    cache: &DigestCache,
) -> Result<ImagePlan, BuildError> {
    let ctx = digest::resolve_context(snapshot, component, spec)?;
    if !ctx.skipped_submodules.is_empty() {
        tracing::warn!(component, submodules = ?ctx.skipped_submodules, "submodules in a build context are not sent (their files are not in the commit)");
    }
    let d = digest::digest(snapshot, &ctx, spec, cache)?;
    Ok(ImagePlan {
        component: component.to_string(),
        image: format!("{}:{}", spec.repository, digest::short(&d)),
        digest: d,
    })
}

/// The images as the registry builder pushes them, `<prefix>/<repository>:<tag>`, which is what
/// Pods must pull; the plans unchanged for every other builder (and for a plan already under the
/// prefix, so qualifying twice is harmless).
pub fn qualified(plans: &[ImagePlan], opts: &BuildOptions) -> Vec<ImagePlan> {
    let prefix = match (&opts.builder, &opts.registry) {
        (BuilderKind::Registry, Some(p)) if !p.trim().is_empty() => p.trim_end_matches('/'),
        _ => return plans.to_vec(),
    };
    plans
        .iter()
        .map(|p| {
            let mut q = p.clone();
            if !p.image.starts_with(&format!("{prefix}/")) {
                q.image = format!("{prefix}/{}", p.image);
            }
            q
        })
        .collect()
}

/// Makes sure every planned image exists on `engine`'s target, building the missing ones from the
/// commit (`repo_path` + `commit`) at most `opts.parallelism` at a time; the caller keeps the
/// engine (and reads its call counts). Setting `cancel` to `true` kills running builds and
/// returns [`BuildError::Cancelled`].
pub async fn ensure_with(
    engine: &Engine,
    repo_path: &Path,
    commit: &str,
    plans: &[ImagePlan],
    stack: &Stack,
    opts: &BuildOptions,
    cancel: watch::Receiver<bool>,
) -> Result<Vec<BuildOutcome>, BuildError> {
    let semaphore = Semaphore::new(opts.parallelism.max(1));
    // Two components with the same image (same repository and inputs) share one check and build.
    let mut first_for: BTreeMap<&str, usize> = BTreeMap::new();
    let mut unique = Vec::new();
    for (i, p) in plans.iter().enumerate() {
        if !first_for.contains_key(p.image.as_str()) {
            first_for.insert(&p.image, i);
            unique.push(p);
        }
    }
    let tasks = unique.iter().map(|p| {
        let semaphore = &semaphore;
        let cancel = cancel.clone();
        async move {
            let spec = stack
                .component(&p.component)
                .and_then(|c| c.spec.image.build.as_ref())
                .ok_or_else(|| BuildError::InvalidContext {
                    component: p.component.clone(),
                    message: "the plan names a component without `image.build` in this stack"
                        .into(),
                })?;
            let _permit = semaphore
                .acquire()
                .await
                .map_err(|_| BuildError::Cancelled)?;
            ensure_one(
                engine,
                repo_path,
                commit,
                p,
                spec,
                &opts.unconfirmed,
                &cancel,
            )
            .await
        }
    });
    let started = std::time::Instant::now();
    let results = futures::future::join_all(tasks).await;
    let mut by_image: BTreeMap<String, Action> = BTreeMap::new();
    for (p, r) in unique.iter().zip(results) {
        let action = match r {
            Ok(a) => a,
            Err(e) if e.stops_every_build() => return Err(e),
            Err(e) => {
                tracing::warn!(component = %p.component, image = %p.image, error = %e, "image not ensured");
                Action::Failed {
                    log_tail: String::new(),
                    reason: e.to_string(),
                }
            }
        };
        by_image.insert(p.image.clone(), action);
    }
    if *cancel.borrow() {
        return Err(BuildError::Cancelled);
    }
    let count = |f: fn(&Action) -> bool| by_image.values().filter(|a| f(a)).count();
    let built = count(|a| matches!(a, Action::Built));
    let failed = count(|a| matches!(a, Action::Failed { .. }));
    if built + failed > 0 {
        let elapsed_ms = started.elapsed().as_millis() as u64;
        let exists = count(|a| matches!(a, Action::Exists));
        tracing::info!(target: PROGRESS, step = "build.summary", stack = %stack.spec.name,
            "images of stack {}: {built} built, {failed} failed, {exists} already there, in {:.1}s",
            stack.spec.name, elapsed_ms as f64 / 1000.0);
    }
    Ok(plans
        .iter()
        .map(|p| BuildOutcome {
            component: p.component.clone(),
            image: p.image.clone(),
            action: by_image.get(&p.image).cloned().unwrap_or(Action::Skipped),
        })
        .collect())
}

async fn ensure_one(
    engine: &Engine,
    repo_path: &Path,
    commit: &str,
    plan: &ImagePlan,
    spec: &BuildSpec,
    unconfirmed: &Unconfirmed,
    cancel: &watch::Receiver<bool>,
) -> Result<Action, BuildError> {
    let existence = engine.exists(&plan.image, cancel).await?;
    match existence {
        Existence::Present => {
            tracing::debug!(component = %plan.component, image = %plan.image, "image exists; not building");
            return Ok(Action::Exists);
        }
        Existence::Unknown if engine.builder() == BuilderKind::None => {
            // Once per image: the daemon reconciles the same tags again and again.
            if unconfirmed.first_time(&plan.image) {
                tracing::warn!(component = %plan.component, image = %plan.image, "builder `none`: cannot confirm that this image exists; it must be built elsewhere");
            } else {
                tracing::debug!(component = %plan.component, image = %plan.image, "builder `none`: image not confirmed");
            }
            return Ok(Action::Skipped);
        }
        Existence::NotLoaded => {
            tracing::info!(component = %plan.component, image = %plan.image, "image built before; loading it into the node");
            return match engine.load(&plan.image, cancel).await? {
                engine::BuildResult::Built => Ok(Action::Loaded),
                engine::BuildResult::Failed { tail, reason } => {
                    tracing::error!(component = %plan.component, image = %plan.image, %reason, "image load failed");
                    Ok(Action::Failed {
                        log_tail: tail.join("\n"),
                        reason,
                    })
                }
            };
        }
        Existence::Missing | Existence::Unknown => {}
    }
    let req = engine::BuildRequest {
        component: &plan.component,
        image: &plan.image,
        dockerfile: &spec.dockerfile,
        args: spec
            .args
            .iter()
            .map(|(k, v)| (k.as_str(), v.0.as_str()))
            .collect(),
        target: spec.target.as_deref(),
        platform: spec.platform.as_deref(),
        push: spec.push,
    };
    tracing::info!(component = %plan.component, image = %plan.image, "building image");
    let started = std::time::Instant::now();
    tracing::info!(target: PROGRESS, step = "build.start", component = %plan.component, image = %plan.image, "building");
    let result = engine.build(&req, repo_path, commit, spec, cancel).await;
    let elapsed_ms = started.elapsed().as_millis() as u64;
    let (action, reason) = match &result {
        Ok(engine::BuildResult::Built) => ("built", String::new()),
        Ok(engine::BuildResult::Failed { reason, .. }) => ("failed", reason.clone()),
        Err(e) => ("failed", e.to_string()),
    };
    tracing::info!(target: PROGRESS, step = "build.done", component = %plan.component, image = %plan.image, action, elapsed_ms, reason = %reason, "{action} in {:.1}s", elapsed_ms as f64 / 1000.0);
    match result? {
        engine::BuildResult::Built => {
            tracing::info!(component = %plan.component, image = %plan.image, "image built");
            Ok(Action::Built)
        }
        engine::BuildResult::Failed { tail, reason } => {
            tracing::error!(component = %plan.component, image = %plan.image, %reason, "image build failed");
            Ok(Action::Failed {
                log_tail: tail.join("\n"),
                reason,
            })
        }
    }
}

/// The target of progress events (rendered as live lines on a terminal by the CLI).
use crate::progress::TARGET as PROGRESS;

#[cfg(test)]
mod tests {
    #[test]
    fn the_registry_builder_names_images_under_its_prefix_once() {
        use super::{qualified, BuildOptions, BuilderKind, ImagePlan};
        let plans = vec![ImagePlan {
            component: "api".into(),
            image: "todo-backend:0123456789ab".into(),
            digest: "0123456789ab".repeat(5),
        }];
        let mut opts = BuildOptions::new(BuilderKind::Registry);
        opts.registry = Some("registry.local:5000/team/".into());
        let q = qualified(&plans, &opts);
        assert_eq!(
            q[0].image,
            "registry.local:5000/team/todo-backend:0123456789ab"
        );
        assert_eq!(qualified(&q, &opts), q, "qualifying twice changes nothing");
        opts.builder = BuilderKind::Docker;
        assert_eq!(
            qualified(&plans, &opts),
            plans,
            "other builders keep the plain tag"
        );
    }

    #[test]
    fn the_none_builder_warns_about_an_image_once_per_options() {
        let opts = super::BuildOptions::default();
        let clone = opts.clone();
        assert!(opts.unconfirmed.first_time("warn-once:1"));
        assert!(!clone.unconfirmed.first_time("warn-once:1"));
        assert!(opts.unconfirmed.first_time("warn-once:2"));
    }
}
