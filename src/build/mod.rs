//! Images: the build-input digest that names each built image (`<repository>:<12 hex>`), and
//! making sure that tag exists on the target engine, building only what is missing. It never
//! renders manifests or touches the cluster's API.
//!
//! Two steps, so the reconciler can plan without side effects:
//!
//! 1. [`plan`] (pure, synchronous): hash every component's build inputs from the commit and
//!    return the tags. Blob hashes are cached by git blob id in a [`DigestCache`].
//! 2. [`ensure`] (async, effects): one existence check per distinct tag, then a bounded number of
//!    parallel builds for the missing ones. Because a git2 repository cannot cross threads,
//!    `ensure` takes the repository path and commit and reopens them on a blocking thread to make
//!    each context archive, only for the images it actually builds.
//!
//! [`prune_old`] removes old content tags, keeping the newest N per repository, the protected
//! tags (the last healthy commit's) and any image a running container uses.

pub mod context;
pub mod digest;
pub mod engine;
pub mod ignore;
pub mod minikube;

use std::collections::{BTreeMap, HashSet};
use std::path::Path;
use std::time::Duration;

use serde::Serialize;
use tokio::sync::{watch, Semaphore};

pub use digest::DigestCache;
pub use engine::{CallCounts, Engine, Existence};

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
            | BuildError::ToolMissing { .. } => true,
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
    /// `DOCKER_HOST` for the `docker` builder; the process environment's when `None`.
    pub docker_host: Option<String>,
    /// The `command` builder's existence check (exit 0 = the tag exists), same placeholders.
    pub command_exists_template: Option<String>,
    /// The minikube profile (`minikube -p`); minikube's current one when `None`.
    pub minikube_profile: Option<String>,
    /// The `containerd` builder's socket; `$CONTAINERD_ADDRESS`, else containerd's default.
    pub containerd_address: Option<String>,
    /// The `containerd` builder's namespace; `$CONTAINERD_NAMESPACE`, else `k8s.io` (CRI's).
    pub containerd_namespace: Option<String>,
    /// The `kind` builder's cluster (from a `kind-<name>` context).
    pub kind_cluster: Option<String>,
    /// Limit for existence checks and other short calls.
    pub check_timeout: Duration,
    /// Limit for one build (and push).
    pub build_timeout: Duration,
}

impl Default for BuildOptions {
    fn default() -> Self {
        Self {
            builder: BuilderKind::Docker,
            parallelism: 2,
            keep: KEEP_TAGS,
            command_template: None,
            docker_host: None,
            command_exists_template: None,
            minikube_profile: None,
            containerd_address: None,
            containerd_namespace: None,
            kind_cluster: None,
            check_timeout: CHECK_TIMEOUT,
            build_timeout: Duration::from_secs(30 * 60),
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
        self.containerd_address
            .clone()
            .or_else(|| env_nonempty("CONTAINERD_ADDRESS"))
            .unwrap_or_else(|| DEFAULT_CONTAINERD_ADDRESS.into())
    }

    /// The containerd namespace the `containerd` builder loads into.
    pub fn containerd_namespace(&self) -> String {
        self.containerd_namespace
            .clone()
            .or_else(|| env_nonempty("CONTAINERD_NAMESPACE"))
            .unwrap_or_else(|| "k8s.io".into())
    }

    /// These options with the builder chosen for `stack` on the kube `context` actually used.
    #[must_use]
    pub fn for_stack(&self, cli: Option<BuilderKind>, stack: &Stack, context: &str) -> Self {
        let choice = choose_builder(cli, stack, context, &BuildEnv::from_process());
        Self {
            builder: choice.builder,
            kind_cluster: choice.kind_cluster,
            // `--minikube-profile` wins over the context's name.
            minikube_profile: self.minikube_profile.clone().or(choice.minikube_profile),
            ..self.clone()
        }
    }
}

/// containerd's own default socket.
pub const DEFAULT_CONTAINERD_ADDRESS: &str = "/run/containerd/containerd.sock";

fn env_nonempty(name: &str) -> Option<String> {
    std::env::var(name).ok().filter(|v| !v.is_empty())
}

/// Environment variables that decide how images are built, by prefix: read by converge itself
/// (`CONTAINERD_ADDRESS` chooses the containerd builder in [`BuildEnv`] and, with
/// `CONTAINERD_NAMESPACE`, says where it imports; `DOCKER_HOST` aims the Docker CLI) and by the
/// tools the builders run, which inherit converge's environment: the Docker CLI (`DOCKER_*`),
/// minikube (`MINIKUBE_*`), `ctr` (`CONTAINERD_*`, e.g. `CONTAINERD_SNAPSHOTTER` for the unpack
/// of `ctr images import`) and kind (`KIND_*`, e.g. `KIND_EXPERIMENTAL_PROVIDER`). A daemon
/// started elsewhere (`converge service install`) must carry them, or it builds another way.
pub const ENV_PREFIXES: &[&str] = &["DOCKER_", "MINIKUBE_", "CONTAINERD_", "KIND_"];

/// Environment variables that decide how images are built, by exact name: the `command`
/// builder's templates (`--command`, `--exists-command` of `build`, `apply` and `run`).
pub const ENV_NAMES: &[&str] = &["CONVERGE_BUILD_COMMAND", "CONVERGE_BUILD_EXISTS_COMMAND"];

/// What of the environment decides the builder (a value, so the choice is a pure function).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct BuildEnv {
    /// `CONTAINERD_ADDRESS`: the node's containerd is on this machine (as `DOCKER_HOST` after
    /// `minikube docker-env` says the node's Docker is).
    pub containerd_address: Option<String>,
}

impl BuildEnv {
    /// Read from this process's environment.
    pub fn from_process() -> Self {
        Self::from_lookup(env_nonempty)
    }

    /// Read through `get` (a variable's value by name), e.g. from an environment captured for a
    /// service unit; empty values count as unset.
    pub fn from_lookup(get: impl Fn(&str) -> Option<String>) -> Self {
        Self {
            containerd_address: get("CONTAINERD_ADDRESS").filter(|v| !v.is_empty()),
        }
    }
}

/// The builder chosen, and why (shown by `converge doctor` and `converge build`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct BuilderChoice {
    /// The builder.
    pub builder: BuilderKind,
    /// The kind cluster, for [`BuilderKind::Kind`].
    pub kind_cluster: Option<String>,
    /// The minikube profile, for [`BuilderKind::Minikube`] chosen from a minikube context: the
    /// context's name, which minikube gives its profile's context (so `-p` follows the context
    /// converge talks to, not minikube's active profile).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub minikube_profile: Option<String>,
    /// One line: why this builder.
    pub reason: String,
}

/// Chooses how images reach the cluster converge is talking to: `--builder`, else the stack's
/// `builder`, else from the kube context actually used — minikube builds into minikube's
/// runtime, a `kind-<name>` context builds with Docker and `kind load`s, a node containerd on
/// this machine (`CONTAINERD_ADDRESS`) builds with Docker and imports, anything else builds with
/// Docker (a remote cluster also needs `image.build.push` or an explicit builder).
pub fn choose_builder(
    cli: Option<BuilderKind>,
    stack: &Stack,
    context: &str,
    env: &BuildEnv,
) -> BuilderChoice {
    let kind_cluster = context.strip_prefix("kind-").map(str::to_string);
    let minikube_profile = is_minikube_context(context).then(|| context.to_string());
    let choice = |builder: BuilderKind, reason: String| BuilderChoice {
        builder,
        kind_cluster: kind_cluster
            .clone()
            .filter(|_| builder == BuilderKind::Kind),
        minikube_profile: minikube_profile
            .clone()
            .filter(|_| builder == BuilderKind::Minikube),
        reason,
    };
    if let Some(b) = cli {
        return choice(b, "chosen with --builder".into());
    }
    if let Some(b) = stack.spec.builder {
        return choice(b, format!("the stack's `builder: {}`", b.as_str()));
    }
    if is_minikube_context(context) {
        return choice(
            BuilderKind::Minikube,
            format!("context `{context}` is a minikube cluster: build into its runtime (`minikube -p {context} docker-env`; where minikube refuses it, the local Docker engine and `minikube image load`, or `minikube image build`)"),
        );
    }
    if kind_cluster.is_some() {
        return choice(
            BuilderKind::Kind,
            format!("context `{context}` is a kind cluster: build with Docker, then `kind load docker-image`"),
        );
    }
    if let Some(address) = &env.containerd_address {
        return choice(
            BuilderKind::Containerd,
            format!("CONTAINERD_ADDRESS={address}: build with Docker, then import into the node's containerd"),
        );
    }
    choice(
        BuilderKind::Docker,
        format!("context `{context}` is not minikube or kind: build with Docker (DOCKER_HOST); a remote cluster needs `image.build.push: true`"),
    )
}

/// Whether a kube context is minikube's by its name: minikube names a profile's context after the
/// profile, `minikube` by default.
pub fn is_minikube_context(context: &str) -> bool {
    context == "minikube" || context.starts_with("minikube-")
}

/// The builder for `stack` on kube context `context` (the one actually used), with the reason:
/// what `doctor` and `build` report. See [`choose_builder`].
pub fn select_builder(
    explicit: Option<BuilderKind>,
    stack: &Stack,
    context: &str,
) -> BuilderChoice {
    choose_builder(explicit, stack, context, &BuildEnv::from_process())
}

/// The lowercase name of a builder, as flags and the desired state spell it.
pub fn builder_name(kind: BuilderKind) -> &'static str {
    kind.as_str()
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

/// Makes sure every planned image exists on the target, building the missing ones from the commit
/// (`repo_path` + `commit`) at most `opts.parallelism` at a time. Setting `cancel` to `true` kills
/// running builds and returns [`BuildError::Cancelled`].
pub async fn ensure(
    repo_path: &Path,
    commit: &str,
    plans: &[ImagePlan],
    stack: &Stack,
    opts: &BuildOptions,
    cancel: watch::Receiver<bool>,
) -> Result<Vec<BuildOutcome>, BuildError> {
    let engine = Engine::new(opts)?;
    ensure_with(&engine, repo_path, commit, plans, stack, opts, cancel).await
}

/// [`ensure`] on a given engine, so a caller can keep one (and read its call counts).
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
            ensure_one(engine, repo_path, commit, p, spec, &cancel).await
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
    cancel: &watch::Receiver<bool>,
) -> Result<Action, BuildError> {
    let existence = engine.exists(&plan.image, cancel).await?;
    match existence {
        Existence::Present => {
            tracing::debug!(component = %plan.component, image = %plan.image, "image exists; not building");
            return Ok(Action::Exists);
        }
        Existence::Unknown if engine.builder() == BuilderKind::None => {
            // Once per image and process: the daemon reconciles the same tags again and again.
            if first_time_unconfirmed(&plan.image) {
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

/// Whether `image` is reported as unconfirmed for the first time in this process.
fn first_time_unconfirmed(image: &str) -> bool {
    static SEEN: std::sync::OnceLock<std::sync::Mutex<HashSet<String>>> =
        std::sync::OnceLock::new();
    SEEN.get_or_init(Default::default)
        .lock()
        .map(|mut s| s.insert(image.to_string()))
        .unwrap_or(true)
}

/// What [`prune_old`] did.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct PruneReport {
    /// Tags removed.
    pub removed: Vec<String>,
    /// Old tags kept because they are protected.
    pub protected: Vec<String>,
    /// Old tags kept because a container uses them.
    pub in_use: Vec<String>,
    /// Old tags whose removal the engine refused, with its reason.
    pub failed: Vec<(String, String)>,
}

/// One tag of a repository, as `docker image ls` lists it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ListedImage {
    /// `repository:tag`.
    pub reference: String,
    /// The image id (short).
    pub id: String,
    /// Docker's `CreatedAt` text, e.g. `2026-11-21 23:22:59 +0000 UTC`.
    pub created: String,
}

/// Parses `docker image ls --format '{{.Repository}}:{{.Tag}}\t{{.ID}}\t{{.CreatedAt}}'` output.
pub fn parse_image_list(text: &str) -> Vec<ListedImage> {
    text.lines()
        .filter_map(|l| {
            let mut parts = l.split('\t');
            let (r, id, c) = (parts.next()?, parts.next()?, parts.next()?);
            (!r.ends_with(":<none>")).then(|| ListedImage {
                reference: r.to_string(),
                id: id.to_string(),
                created: c.to_string(),
            })
        })
        .collect()
}

fn created_key(created: &str) -> i64 {
    // `2026-11-21 23:22:59 +0000 UTC`: the trailing zone name is not parseable, the offset is.
    let head: String = created.split(' ').take(3).collect::<Vec<_>>().join(" ");
    chrono::DateTime::parse_from_str(&head, "%Y-%m-%d %H:%M:%S %z")
        .map(|t| t.timestamp())
        .unwrap_or(0)
}

/// Decides which tags to remove: all but the newest `keep` per repository, never a protected tag
/// or one a container uses (by reference or image id). Pure, for testing.
pub fn prune_decision(
    images: &[ListedImage],
    keep: usize,
    protect: &HashSet<String>,
    used: &HashSet<String>,
) -> (Vec<String>, Vec<String>, Vec<String>) {
    let mut sorted: Vec<&ListedImage> = images.iter().collect();
    sorted.sort_by(|a, b| {
        created_key(&b.created)
            .cmp(&created_key(&a.created))
            .then(a.reference.cmp(&b.reference))
    });
    let (mut remove, mut protected, mut in_use) = (Vec::new(), Vec::new(), Vec::new());
    for img in sorted.into_iter().skip(keep) {
        let short_id = img.id.trim_start_matches("sha256:");
        let used_by_container = used.contains(&img.reference)
            || used.iter().any(|u| {
                let u = u.trim_start_matches("sha256:");
                u.len() >= 12 && (u.starts_with(short_id) || short_id.starts_with(u))
            });
        if protect.contains(&img.reference) {
            protected.push(img.reference.clone());
        } else if used_by_container {
            in_use.push(img.reference.clone());
        } else {
            remove.push(img.reference.clone());
        }
    }
    (remove, protected, in_use)
}

/// Removes old content tags of `repositories` from the engine of `opts`, keeping the newest
/// `opts.keep` per repository (by image creation time), every tag in `protect` (the last healthy
/// commit's) and every image a container uses. Only untags (`docker rmi` without force). A no-op
/// for the `command` and `none` builders and for minikube runtimes other than Docker.
pub async fn prune_old(
    opts: &BuildOptions,
    repositories: &[String],
    protect: &[String],
    cancel: watch::Receiver<bool>,
) -> Result<PruneReport, BuildError> {
    let engine = Engine::new(opts)?;
    prune_old_with(&engine, opts.keep, repositories, protect, cancel).await
}

/// [`prune_old`] on a given engine.
pub async fn prune_old_with(
    engine: &Engine,
    keep: usize,
    repositories: &[String],
    protect: &[String],
    cancel: watch::Receiver<bool>,
) -> Result<PruneReport, BuildError> {
    let mut report = PruneReport::default();
    let Some(cli) = engine.docker_cli(&cancel).await? else {
        tracing::debug!(builder = ?engine.builder(), "image pruning needs a Docker engine; skipped");
        return Ok(report);
    };
    // Stopped containers count too: `docker rmi` would refuse their images anyway.
    let ps = ["ps", "-a", "-q", "--no-trunc"].map(String::from).to_vec();
    let out = engine.docker_other(&cli, &ps, &cancel).await?;
    check_status(&cli, &ps, &out)?;
    let ids: Vec<String> = out.stdout.split_whitespace().map(String::from).collect();
    let mut used: HashSet<String> = HashSet::new();
    if !ids.is_empty() {
        // The reference a container was created from, and the image id it runs.
        let mut inspect = [
            "container",
            "inspect",
            "--format",
            "{{.Config.Image}}\t{{.Image}}",
        ]
        .map(String::from)
        .to_vec();
        inspect.extend(ids);
        let out = engine.docker_other(&cli, &inspect, &cancel).await?;
        check_status(&cli, &inspect, &out)?;
        used = out
            .stdout
            .lines()
            .flat_map(|l| l.split('\t'))
            .filter(|s| !s.is_empty())
            .map(|s| {
                if s.contains(':') {
                    s.to_string()
                } else {
                    format!("{s}:latest")
                }
            })
            .collect();
    }
    let protect: HashSet<String> = protect.iter().cloned().collect();
    for repo in repositories {
        let ls = [
            "image",
            "ls",
            "--no-trunc",
            "--format",
            "{{.Repository}}:{{.Tag}}\t{{.ID}}\t{{.CreatedAt}}",
            repo.as_str(),
        ]
        .map(String::from)
        .to_vec();
        let out = engine.docker_other(&cli, &ls, &cancel).await?;
        // A listing that failed is an error, never "nothing to prune".
        check_status(&cli, &ls, &out)?;
        let images = parse_image_list(&out.stdout);
        let (remove, protected, in_use) = prune_decision(&images, keep, &protect, &used);
        report.protected.extend(protected);
        report.in_use.extend(in_use);
        for r in remove {
            let rmi = vec!["rmi".to_string(), r.clone()];
            let out = engine.docker_other(&cli, &rmi, &cancel).await?;
            if out.status.success() {
                tracing::info!(image = %r, "removed old image tag");
                report.removed.push(r);
            } else {
                let why = out.stderr.lines().last().unwrap_or("").to_string();
                tracing::warn!(image = %r, reason = %why, "could not remove old image tag");
                report.failed.push((r, why));
            }
        }
    }
    Ok(report)
}

fn check_status(
    cli: &engine::DockerCli,
    args: &[String],
    out: &crate::process::Output,
) -> Result<(), BuildError> {
    if out.status.success() {
        return Ok(());
    }
    let detail = out.stderr.lines().last().unwrap_or("").to_string();
    if engine::looks_unreachable(&out.stderr) {
        return Err(BuildError::Unreachable {
            host: cli.host().to_string(),
            detail,
            hint: engine::UNREACHABLE_HINT.into(),
        });
    }
    Err(BuildError::Engine {
        command: format!("docker {}", args.first().map(String::as_str).unwrap_or("")),
        status: out.status.to_string(),
        detail,
    })
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_none_builder_warns_about_an_image_once_per_process() {
        assert!(super::first_time_unconfirmed("warn-once:1"));
        assert!(!super::first_time_unconfirmed("warn-once:1"));
        assert!(super::first_time_unconfirmed("warn-once:2"));
    }

    use super::*;

    fn img(r: &str, id: &str, created: &str) -> ListedImage {
        ListedImage {
            reference: r.into(),
            id: id.into(),
            created: created.into(),
        }
    }

    #[test]
    fn pruning_keeps_the_newest_n_protected_and_used_tags() {
        let images = vec![
            img(
                "app:a",
                "sha256:aaaaaaaaaaaa1",
                "2026-01-01 00:00:01 +0000 UTC",
            ),
            img(
                "app:b",
                "sha256:bbbbbbbbbbbb1",
                "2026-01-01 00:00:02 +0000 UTC",
            ),
            img(
                "app:c",
                "sha256:cccccccccccc1",
                "2026-01-01 00:00:03 +0000 UTC",
            ),
            img(
                "app:d",
                "sha256:dddddddddddd1",
                "2026-01-01 00:00:04 +0000 UTC",
            ),
            img(
                "app:e",
                "sha256:eeeeeeeeeeee1",
                "2026-01-01 00:00:05 +0000 UTC",
            ),
        ];
        let protect: HashSet<String> = ["app:a".to_string()].into();
        let used: HashSet<String> = ["sha256:bbbbbbbbbbbb".to_string()].into();
        let (remove, protected, in_use) = prune_decision(&images, 2, &protect, &used);
        assert_eq!(remove, vec!["app:c"]);
        assert_eq!(protected, vec!["app:a"]);
        assert_eq!(in_use, vec!["app:b"]);
    }

    #[test]
    fn image_lists_skip_untagged_images() {
        let list = parse_image_list("app:x\tsha256:1\t2026-01-01 00:00:01 +0000 UTC\napp:<none>\tsha256:2\t2026-01-01 00:00:01 +0000 UTC\n");
        assert_eq!(list.len(), 1);
        assert_eq!(created_key(&list[0].created), 1767225601);
    }

    #[test]
    fn the_builder_is_the_clis_then_the_stacks_then_by_context() {
        let spec: crate::desired::StackSpec = serde_yaml_ng::from_str(
            "apiVersion: converge.dev/v1alpha1\nkind: Stack\nname: s\nnamespace: s\n",
        )
        .expect("stack spec");
        let mut stack = Stack {
            spec,
            file: "desired/stack.yaml".into(),
            dir: "desired".into(),
            components: Vec::new(),
        };
        let none = BuildEnv::default();
        let local = BuildEnv {
            containerd_address: Some("/run/x.sock".into()),
        };
        // The context actually used decides, not the stack's declared `context: minikube`.
        let pick = |stack: &Stack, ctx: &str, env: &BuildEnv| {
            choose_builder(None, stack, ctx, env).builder
        };
        assert_eq!(pick(&stack, "minikube", &none), BuilderKind::Minikube);
        assert_eq!(pick(&stack, "kind-dev", &none), BuilderKind::Kind);
        assert_eq!(
            choose_builder(None, &stack, "kind-dev", &none).kind_cluster,
            Some("dev".into())
        );
        // minikube names a profile's context after it: `-p` follows the context converge uses.
        let mk = choose_builder(None, &stack, "minikube-dev", &none);
        assert_eq!(mk.minikube_profile.as_deref(), Some("minikube-dev"));
        assert_eq!(
            choose_builder(None, &stack, "kind-dev", &none).minikube_profile,
            None
        );
        assert_eq!(
            pick(&stack, "converge-testbed", &local),
            BuilderKind::Containerd
        );
        assert_eq!(pick(&stack, "gke_prod", &none), BuilderKind::Docker);
        stack.spec.builder = Some(BuilderKind::Command);
        assert_eq!(pick(&stack, "minikube", &none), BuilderKind::Command);
        assert_eq!(
            choose_builder(Some(BuilderKind::None), &stack, "minikube", &none).builder,
            BuilderKind::None
        );
    }
}
