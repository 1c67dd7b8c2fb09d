//! Image engines: the Docker CLI (for `docker` and for minikube's Docker through `minikube
//! docker-env`), minikube's image commands where `docker-env` is refused (the local Docker engine
//! and `minikube image load`, or `minikube image build`, each verified with `minikube image ls`),
//! a user command template, or none; and the load step that
//! hands an image the Docker engine built to a node runtime without a registry (`kind load
//! docker-image`, or `ctr images import` into a node's containerd). Owns every process converge
//! starts for images, through [`crate::process`]: argv vectors with a timeout, never a shell.
//! Never reads git.

use std::collections::HashSet;
use std::path::Path;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::{watch, OnceCell};

use super::minikube::{self, Answer, BuildDialect, DockerEnv, Fallback, Profile, Refusal};
use super::{BuildError, BuildOptions};
use crate::desired::schema::BuilderKind;
use crate::process::{self, Output};

/// The hint printed with every unreachable-engine error.
pub const UNREACHABLE_HINT: &str = "start the engine, point DOCKER_HOST at it, or for minikube run `eval $(minikube docker-env)` (or use `--builder minikube`)";

/// What the engine said about a tag.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Existence {
    /// The tag is present.
    Present,
    /// The tag is absent: build it.
    Missing,
    /// The engine cannot tell (the `none` builder, or a command builder without a check).
    Unknown,
    /// The build engine has the tag but the node's runtime does not: load it, don't rebuild.
    NotLoaded,
}

/// How many engine calls were made, by kind: the figure a no-change reconcile is judged by.
#[derive(Debug, Default)]
pub struct EngineCalls {
    checks: AtomicUsize,
    builds: AtomicUsize,
    pushes: AtomicUsize,
    loads: AtomicUsize,
    other: AtomicUsize,
}

/// A copy of [`EngineCalls`] at one moment.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize)]
pub struct CallCounts {
    /// Existence checks (`docker image inspect`, `minikube image ls`, the exists command).
    pub checks: usize,
    /// Builds started.
    pub builds: usize,
    /// Pushes.
    pub pushes: usize,
    /// Loads into a node's runtime (`ctr images import`, `kind load docker-image`).
    pub loads: usize,
    /// Anything else (`minikube docker-env`, listing and removing for pruning).
    pub other: usize,
}

impl EngineCalls {
    fn bump(counter: &AtomicUsize) {
        counter.fetch_add(1, Ordering::Relaxed);
    }

    /// The counts so far.
    pub fn counts(&self) -> CallCounts {
        CallCounts {
            checks: self.checks.load(Ordering::Relaxed),
            builds: self.builds.load(Ordering::Relaxed),
            pushes: self.pushes.load(Ordering::Relaxed),
            loads: self.loads.load(Ordering::Relaxed),
            other: self.other.load(Ordering::Relaxed),
        }
    }
}

/// The Docker CLI with a fixed environment (the host it talks to).
#[derive(Debug, Clone)]
pub struct DockerCli {
    program: String,
    env: Vec<(String, String)>,
    /// What is shown in errors: the `DOCKER_HOST` tried, or the default socket.
    host: String,
}

impl DockerCli {
    /// The CLI aimed at `docker_host`, else at `$DOCKER_HOST`, else at the default socket.
    pub fn new(docker_host: Option<&str>) -> Self {
        let mut env = Vec::new();
        let host = match docker_host {
            Some(h) => {
                env.push(("DOCKER_HOST".to_string(), h.to_string()));
                h.to_string()
            }
            None => std::env::var("DOCKER_HOST")
                .ok()
                .filter(|h| !h.is_empty())
                .map(|h| format!("{h} (from DOCKER_HOST)"))
                .unwrap_or_else(|| {
                    "unix:///var/run/docker.sock (the default; DOCKER_HOST is not set)".into()
                }),
        };
        Self {
            program: "docker".into(),
            env,
            host,
        }
    }

    fn with_env(env: Vec<(String, String)>, origin: &str) -> Self {
        let host = env
            .iter()
            .find(|(k, _)| k == "DOCKER_HOST")
            .map(|(_, v)| format!("{v} ({origin})"))
            .unwrap_or_else(|| origin.to_string());
        Self {
            program: "docker".into(),
            env,
            host,
        }
    }

    /// Where this CLI points, for messages.
    pub fn host(&self) -> &str {
        &self.host
    }

    fn tool(&self) -> Tool<'_> {
        Tool {
            program: &self.program,
            env: &self.env,
            host: &self.host,
        }
    }
}

/// Arguments of `docker image inspect` for one tag.
pub fn docker_inspect_args(image: &str) -> Vec<String> {
    ["image", "inspect", "--format", "{{.Id}}", image]
        .map(String::from)
        .to_vec()
}

/// Where a built image is handed to the cluster's node runtime when there is no registry: the
/// `kind load docker-image` pattern. The Docker engine builds; the loader copies the image into
/// the runtime the kubelet pulls from, so the Pod runs exactly the image converge built.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Loader {
    /// `docker save` then `ctr images import` into a containerd the node runs on this machine
    /// (the project's testbed, k3s, a kubeadm node on a laptop).
    Containerd {
        /// containerd's socket (`CONTAINERD_ADDRESS`).
        address: String,
        /// containerd namespace the CRI plugin uses (`k8s.io`).
        namespace: String,
    },
    /// `kind load docker-image --name <cluster>`.
    Kind {
        /// The kind cluster's name (the kube context without its `kind-` prefix).
        cluster: String,
    },
}

impl Loader {
    /// Where images go, for messages.
    pub fn describe(&self) -> String {
        match self {
            Loader::Containerd { address, namespace } => {
                format!("containerd at {address} (namespace {namespace})")
            }
            Loader::Kind { cluster } => format!("kind cluster {cluster}"),
        }
    }
}

/// The name a CRI runtime files an image under, as `ctr images import` and the kubelet's Node
/// status give it: Docker's short names are expanded (`todo-backend:1` →
/// `docker.io/library/todo-backend:1`, `docker.io/app:1` → `docker.io/library/app:1`) and a
/// reference without tag or digest means `:latest`.
pub fn normalized_reference(image: &str) -> String {
    let first = image.split('/').next().unwrap_or(image);
    let has_registry =
        image.contains('/') && (first.contains('.') || first.contains(':') || first == "localhost");
    let full = match image.strip_prefix("docker.io/") {
        Some(rest) if !rest.contains('/') => format!("docker.io/library/{rest}"),
        _ if has_registry => image.to_string(),
        _ if image.contains('/') => format!("docker.io/{image}"),
        _ => format!("docker.io/library/{image}"),
    };
    let last = full.rsplit('/').next().unwrap_or_default();
    if full.contains('@') || last.contains(':') {
        full
    } else {
        format!("{full}:latest")
    }
}

/// Arguments of `ctr images ls` filtered to one reference: prints its name when present.
pub fn ctr_ls_args(address: &str, namespace: &str, image: &str) -> Vec<String> {
    vec![
        "--address".into(),
        address.into(),
        "--namespace".into(),
        namespace.into(),
        "images".into(),
        "ls".into(),
        "-q".into(),
        format!("name=={}", normalized_reference(image)),
    ]
}

/// Arguments of `ctr images import` for a `docker save` archive.
pub fn ctr_import_args(address: &str, namespace: &str, archive: &Path) -> Vec<String> {
    vec![
        "--address".into(),
        address.into(),
        "--namespace".into(),
        namespace.into(),
        "images".into(),
        "import".into(),
        archive.to_string_lossy().into_owned(),
    ]
}

/// Arguments of `kind load docker-image`.
pub fn kind_load_args(cluster: &str, image: &str) -> Vec<String> {
    ["load", "docker-image", image, "--name", cluster]
        .map(String::from)
        .to_vec()
}

/// Arguments of a `docker exec` into kind's control-plane node listing one image.
pub fn kind_ls_args(cluster: &str, image: &str) -> Vec<String> {
    vec![
        "exec".into(),
        format!("{cluster}-control-plane"),
        "ctr".into(),
        "--namespace".into(),
        "k8s.io".into(),
        "images".into(),
        "ls".into(),
        "-q".into(),
        format!("name=={}", normalized_reference(image)),
    ]
}

/// What to build: everything but the context itself.
#[derive(Debug, Clone)]
pub struct BuildRequest<'a> {
    /// The component, for logs.
    pub component: &'a str,
    /// `<repository>:<tag>`.
    pub image: &'a str,
    /// The Dockerfile path inside the context.
    pub dockerfile: &'a str,
    /// Build args, in name order.
    pub args: Vec<(&'a str, &'a str)>,
    /// The stage to build.
    pub target: Option<&'a str>,
    /// The platform.
    pub platform: Option<&'a str>,
    /// Push after building (docker only).
    pub push: bool,
}

/// Arguments of `docker build` reading the context archive from stdin.
pub fn docker_build_args(req: &BuildRequest<'_>) -> Vec<String> {
    let mut a: Vec<String> = vec![
        "build".into(),
        "-t".into(),
        req.image.into(),
        "-f".into(),
        req.dockerfile.into(),
    ];
    if let Some(t) = req.target {
        a.extend(["--target".into(), t.into()]);
    }
    if let Some(p) = req.platform {
        a.extend(["--platform".into(), p.into()]);
    }
    for (k, v) in &req.args {
        a.extend(["--build-arg".into(), format!("{k}={v}")]);
    }
    a.push("-".into());
    a
}

/// Arguments of `minikube image build` for an exported context directory; build args, target and
/// platform in the dialect of the node's builder (`docker build` or `buildctl build`).
pub fn minikube_build_args(
    profile: &Profile,
    dialect: BuildDialect,
    req: &BuildRequest<'_>,
    dir: &Path,
) -> Vec<String> {
    let mut a = profile.args();
    a.extend([
        "image".into(),
        "build".into(),
        "-t".into(),
        req.image.into(),
        "-f".into(),
        req.dockerfile.into(),
    ]);
    a.extend(dialect.opts(&req.args, req.target, req.platform));
    a.push(dir.to_string_lossy().into_owned());
    a
}

/// Arguments of `minikube image ls` (one reference a line).
pub fn minikube_ls_args(profile: &Profile) -> Vec<String> {
    let mut a = profile.args();
    a.extend(["image", "ls", "--format", "short"].map(String::from));
    a
}

/// Arguments of `minikube image load --daemon`: copy `image` from the Docker engine the
/// environment names into the node's runtime.
pub fn minikube_load_args(profile: &Profile, image: &str) -> Vec<String> {
    let mut a = profile.args();
    a.extend(["image", "load", "--daemon", image].map(String::from));
    a
}

/// Arguments of `minikube docker-env` in plain `KEY=VALUE` form.
pub fn minikube_docker_env_args(profile: &Profile) -> Vec<String> {
    let mut a = profile.args();
    a.extend(["docker-env", "--shell", "none"].map(String::from));
    a
}

/// Arguments of `minikube profile list` as JSON, without asking each machine's status.
pub fn minikube_profile_list_args() -> Vec<String> {
    ["profile", "list", "--output", "json", "--light"]
        .map(String::from)
        .to_vec()
}

/// Splits a command template on whitespace and fills placeholders per argument, so a value with
/// spaces stays one argument and nothing is ever interpreted by a shell. `{build_args}` expands to
/// `--build-arg K=V` pairs.
pub fn command_argv(
    template: &str,
    req: &BuildRequest<'_>,
    context: &Path,
    dockerfile: &Path,
) -> Vec<String> {
    let (repository, tag) = req.image.rsplit_once(':').unwrap_or((req.image, ""));
    let mut out = Vec::new();
    for word in template.split_whitespace() {
        if word == "{build_args}" {
            for (k, v) in &req.args {
                out.push("--build-arg".into());
                out.push(format!("{k}={v}"));
            }
            continue;
        }
        out.push(
            word.replace("{image}", req.image)
                .replace("{repository}", repository)
                .replace("{tag}", tag)
                .replace("{dockerfile}", &dockerfile.to_string_lossy())
                .replace("{context}", &context.to_string_lossy())
                .replace("{target}", req.target.unwrap_or(""))
                .replace("{platform}", req.platform.unwrap_or("")),
        );
    }
    out
}

/// Whether Docker CLI stderr means "the engine is not there" rather than "the image is not".
/// A registry that cannot be reached while pulling a base image is the build's failure, not the
/// engine's: the engine answered ("Error response from daemon", a build step, BuildKit's solver).
pub fn looks_unreachable(stderr: &str) -> bool {
    let s = stderr.to_ascii_lowercase();
    let engine_answered = [
        "error response from daemon",
        "step ",
        "failed to solve",
        "failed to resolve",
        "pull access denied",
        "manifest unknown",
        "error: failed to build",
    ]
    .iter()
    .any(|m| s.contains(m));
    if engine_answered {
        return false;
    }
    let about_engine = [
        "cannot connect to the docker daemon",
        "error during connect",
        "is the docker daemon running",
        "permission denied while trying to connect",
    ]
    .iter()
    .any(|m| s.contains(m));
    // Refused or unresolvable addresses count only when they are the engine's own.
    let engine_address = (s.contains("connection refused") || s.contains("no such host"))
        && (s.contains("docker.sock") || s.contains("docker daemon") || s.contains("docker_host"));
    about_engine || engine_address
}

/// The step a failed build stopped at and why, from its output's last lines: the classic
/// builder's `Step N/M : …`, BuildKit's `ERROR [stage n/m] …`, and the last error line.
pub fn failure_reason(tail: &[String]) -> String {
    let meaningful = |l: &&String| {
        let t = l.trim();
        !t.is_empty() && !t.starts_with("DEPRECATED:") && !l.starts_with(' ')
    };
    let last = tail
        .iter()
        .rev()
        .find(meaningful)
        .map(|l| l.trim().to_string())
        .unwrap_or_default();
    let step = tail
        .iter()
        .rev()
        .find(|l| l.starts_with("Step ") && l.contains(" : "))
        .or_else(|| tail.iter().rev().find(|l| l.contains("ERROR [")))
        .map(|l| l.trim().to_string());
    match step {
        Some(step) if step != last => format!("{step}: {last}"),
        Some(step) => step,
        None if last.is_empty() => "the build failed without output".into(),
        None => last,
    }
}

/// How a minikube engine reaches the cluster's runtime, decided once from `minikube docker-env`.
#[derive(Debug, Clone)]
enum MinikubeMode {
    /// `docker-env` answered: the Docker CLI with its environment builds in the node.
    Docker(DockerCli),
    /// `docker-env` refused; a Docker engine answers here: build there, then `minikube image load
    /// --daemon`, verified with `minikube image ls`.
    Load {
        /// The local engine.
        cli: DockerCli,
    },
    /// `docker-env` refused and no Docker engine here: `minikube image build` in the node,
    /// verified with `minikube image ls`.
    Build {
        /// How build args reach the node's builder.
        dialect: BuildDialect,
    },
}

#[derive(Debug)]
enum Kind {
    Docker(DockerCli),
    Minikube {
        profile: Profile,
        /// The Docker engine for the fallback (`--docker-host`; else `DOCKER_HOST` or the default).
        docker_host: Option<String>,
        mode: OnceCell<MinikubeMode>,
    },
    Command {
        template: String,
        exists: Option<String>,
        /// Tags built by this process, remembered because a command builder has no generic
        /// existence check.
        built: Mutex<HashSet<String>>,
    },
    None,
}

/// Where images are built and asked for; counts every call it makes.
#[derive(Debug)]
pub struct Engine {
    kind: Kind,
    /// Where a Docker build is loaded afterwards (only with the Docker CLI).
    load: Option<Loader>,
    calls: Arc<EngineCalls>,
    check_timeout: Duration,
    build_timeout: Duration,
}

/// The result of one build.
#[derive(Debug)]
pub enum BuildResult {
    /// The tag now exists.
    Built,
    /// The engine ran the build and it failed.
    Failed {
        /// The last lines of output.
        tail: Vec<String>,
        /// The failing step and error.
        reason: String,
    },
}

impl Engine {
    /// The engine for `opts.builder`.
    pub fn new(opts: &BuildOptions) -> Result<Self, BuildError> {
        let mut load = None;
        let kind = match opts.builder {
            BuilderKind::Docker => Kind::Docker(DockerCli::new(opts.docker_host.as_deref())),
            BuilderKind::Containerd => {
                load = Some(Loader::Containerd {
                    address: opts.containerd_address(),
                    namespace: opts.containerd_namespace(),
                });
                Kind::Docker(DockerCli::new(opts.docker_host.as_deref()))
            }
            BuilderKind::Kind => {
                load = Some(Loader::Kind {
                    cluster: opts
                        .kind_cluster
                        .clone()
                        .ok_or(BuildError::MissingKindCluster)?,
                });
                Kind::Docker(DockerCli::new(opts.docker_host.as_deref()))
            }
            BuilderKind::Minikube => Kind::Minikube {
                profile: Profile(opts.minikube_profile.clone()),
                docker_host: opts.docker_host.clone(),
                mode: OnceCell::new(),
            },
            BuilderKind::Command => Kind::Command {
                template: opts
                    .command_template
                    .clone()
                    .filter(|t| !t.trim().is_empty())
                    .ok_or(BuildError::MissingCommandTemplate)?,
                exists: opts.command_exists_template.clone(),
                built: Mutex::new(HashSet::new()),
            },
            BuilderKind::None => Kind::None,
        };
        Ok(Self {
            kind,
            load,
            calls: Arc::new(EngineCalls::default()),
            check_timeout: opts.check_timeout,
            build_timeout: opts.build_timeout,
        })
    }

    /// The builder kind.
    pub fn builder(&self) -> BuilderKind {
        match (&self.kind, &self.load) {
            (_, Some(Loader::Containerd { .. })) => BuilderKind::Containerd,
            (_, Some(Loader::Kind { .. })) => BuilderKind::Kind,
            (Kind::Docker(_), None) => BuilderKind::Docker,
            (Kind::Minikube { .. }, None) => BuilderKind::Minikube,
            (Kind::Command { .. }, None) => BuilderKind::Command,
            (Kind::None, None) => BuilderKind::None,
        }
    }

    /// Where built images are loaded, if anywhere.
    pub fn loader(&self) -> Option<&Loader> {
        self.load.as_ref()
    }

    /// The calls made so far.
    pub fn calls(&self) -> CallCounts {
        self.calls.counts()
    }

    /// The Docker CLI this engine uses, if it uses one (resolving minikube's environment once).
    pub async fn docker_cli(
        &self,
        cancel: &watch::Receiver<bool>,
    ) -> Result<Option<DockerCli>, BuildError> {
        match &self.kind {
            Kind::Docker(cli) => Ok(Some(cli.clone())),
            // The fallback's local engine is not minikube's: nothing of it is pruned.
            Kind::Minikube { .. } => match self.minikube_mode(cancel).await? {
                MinikubeMode::Docker(cli) => Ok(Some(cli)),
                MinikubeMode::Load { .. } | MinikubeMode::Build { .. } => Ok(None),
            },
            _ => Ok(None),
        }
    }

    /// How images reach minikube, decided once: `minikube docker-env` by its exit code (0 →
    /// its Docker; 51/81/14 refused → the fallback; 85, 83, … → a failure naming the fix), then
    /// for the fallback whether a Docker engine answers here, then (for `minikube image build`)
    /// the node's runtime from `minikube profile list`.
    async fn minikube_mode(
        &self,
        cancel: &watch::Receiver<bool>,
    ) -> Result<MinikubeMode, BuildError> {
        let Kind::Minikube {
            profile,
            docker_host,
            mode,
        } = &self.kind
        else {
            return Ok(MinikubeMode::Build {
                dialect: BuildDialect::Docker,
            });
        };
        mode.get_or_try_init(|| async {
            EngineCalls::bump(&self.calls.other);
            let args = minikube_docker_env_args(profile);
            let out = Tool::bare("minikube")
                .run(&args, None, self.check_timeout, cancel, "minikube docker-env")
                .await?;
            let refusal = match minikube::docker_env(profile, &Answer::of(&out))? {
                DockerEnv::Env(env) => {
                    return Ok(MinikubeMode::Docker(DockerCli::with_env(
                        env,
                        "from `minikube docker-env`",
                    )))
                }
                DockerEnv::Refused(r) => r,
            };
            let local = DockerCli::new(docker_host.as_deref());
            EngineCalls::bump(&self.calls.other);
            let version = ["version", "--format", "{{.Server.Version}}"].map(String::from);
            let answers = match local
                .tool()
                .run(&version, None, self.check_timeout, cancel, "docker version")
                .await
            {
                Ok(out) => out.status.success(),
                Err(BuildError::Cancelled) => return Err(BuildError::Cancelled),
                Err(_) => false,
            };
            match minikube::fallback(answers) {
                Fallback::LoadFromDocker => {
                    tracing::info!(%profile, refusal = %refusal, engine = %local.host(), "minikube docker-env refused: building with the local Docker engine, then `minikube image load`");
                    Ok(MinikubeMode::Load { cli: local })
                }
                Fallback::ImageBuild => {
                    let dialect = self.minikube_dialect(profile, &refusal, cancel).await?;
                    tracing::info!(%profile, refusal = %refusal, ?dialect, "minikube docker-env refused and no Docker engine answers here: `minikube image build`");
                    Ok(MinikubeMode::Build { dialect })
                }
            }
        })
        .await
        .cloned()
    }

    /// The build-opt dialect of the node's runtime, from `minikube profile list`; when that says
    /// nothing, from the refusal (docker-env refuses containerd off the docker driver).
    async fn minikube_dialect(
        &self,
        profile: &Profile,
        refusal: &Refusal,
        cancel: &watch::Receiver<bool>,
    ) -> Result<BuildDialect, BuildError> {
        EngineCalls::bump(&self.calls.other);
        let out = Tool::bare("minikube")
            .run(
                &minikube_profile_list_args(),
                None,
                self.check_timeout,
                cancel,
                "minikube profile list",
            )
            .await?;
        let facts = out
            .status
            .success()
            .then(|| minikube::profile_facts(profile, &out.stdout))
            .flatten();
        Ok(match facts {
            Some(f) => BuildDialect::of_runtime(&f.runtime),
            None => match refusal {
                Refusal::Runtime { message }
                    if message == minikube::CONTAINERD_NEEDS_DOCKER_DRIVER =>
                {
                    BuildDialect::Buildctl
                }
                _ => BuildDialect::Docker,
            },
        })
    }

    /// One `minikube image ls`, believed only when it lists something.
    async fn minikube_lists(
        &self,
        profile: &Profile,
        image: &str,
        cancel: &watch::Receiver<bool>,
    ) -> Result<bool, BuildError> {
        EngineCalls::bump(&self.calls.checks);
        let out = Tool::bare("minikube")
            .run(
                &minikube_ls_args(profile),
                None,
                self.check_timeout,
                cancel,
                image,
            )
            .await?;
        let images = minikube::image_list(profile, &Answer::of(&out))?;
        Ok(minikube::lists(&images, image))
    }

    /// `minikube image load --daemon` from the local engine, then `minikube image ls` to believe
    /// it (the load exits 0 when it loaded nothing).
    async fn minikube_load(
        &self,
        profile: &Profile,
        cli: &DockerCli,
        image: &str,
        cancel: &watch::Receiver<bool>,
    ) -> Result<BuildResult, BuildError> {
        EngineCalls::bump(&self.calls.loads);
        let args = minikube_load_args(profile, image);
        let out = Tool {
            program: "minikube",
            env: &cli.env,
            host: "minikube",
        }
        .run(&args, None, self.build_timeout, cancel, image)
        .await?;
        let command = profile.invocation(&format!("image load --daemon {image}"));
        if !out.status.success() {
            return match minikube::failure(&command, profile, &Answer::of(&out)) {
                f @ (minikube::MinikubeFailure::NotFound { .. }
                | minikube::MinikubeFailure::NotRunning { .. }) => Err(f.into()),
                f => Ok(BuildResult::Failed {
                    tail: out.tail,
                    reason: format!("built, but the load failed: {f}"),
                }),
            };
        }
        if self.minikube_lists(profile, image, cancel).await? {
            return Ok(BuildResult::Built);
        }
        Ok(BuildResult::Failed {
            reason: format!(
                "built, but {}",
                minikube::not_listed(&command, image, profile)
            ),
            tail: out.tail,
        })
    }

    /// `minikube image build` in the node, then `minikube image ls` to believe it (the build
    /// exits 0 when it failed).
    #[allow(clippy::too_many_arguments)] // the build's inputs plus the minikube mode's two facts
    async fn minikube_build(
        &self,
        profile: &Profile,
        dialect: BuildDialect,
        req: &BuildRequest<'_>,
        repo_path: &Path,
        commit: &str,
        spec: &crate::desired::BuildSpec,
        cancel: &watch::Receiver<bool>,
    ) -> Result<BuildResult, BuildError> {
        let ctx = export(repo_path, commit, req.component, spec).await?;
        let rel = ctx
            .dockerfile
            .strip_prefix(ctx.path())
            .map(|p| p.to_string_lossy().into_owned())
            .unwrap_or_else(|_| req.dockerfile.to_string());
        let req = BuildRequest {
            dockerfile: &rel,
            ..req.clone()
        };
        let args = minikube_build_args(profile, dialect, &req, ctx.path());
        EngineCalls::bump(&self.calls.builds);
        let out = Tool::bare("minikube")
            .run(&args, None, self.build_timeout, cancel, req.image)
            .await?;
        let command = profile.invocation("image build");
        if !out.status.success() {
            return match minikube::failure(&command, profile, &Answer::of(&out)) {
                f @ (minikube::MinikubeFailure::NotFound { .. }
                | minikube::MinikubeFailure::NotRunning { .. }) => Err(f.into()),
                _ => Ok(failed(out)),
            };
        }
        if self.minikube_lists(profile, req.image, cancel).await? {
            return Ok(BuildResult::Built);
        }
        let said = failure_reason(&out.tail);
        let mut reason = minikube::not_listed(&command, req.image, profile);
        if said != "the build failed without output" {
            reason = format!("{reason}; its output ended: {said}");
        }
        Ok(BuildResult::Failed {
            tail: out.tail,
            reason,
        })
    }

    /// Asks the target whether `image` exists: the node's runtime when images are loaded (and
    /// then the build engine, so an image built before is loaded, not rebuilt), else the engine.
    pub async fn exists(
        &self,
        image: &str,
        cancel: &watch::Receiver<bool>,
    ) -> Result<Existence, BuildError> {
        let Some(loader) = &self.load else {
            return self.engine_exists(image, cancel).await;
        };
        if self.node_has(loader, image, cancel).await? {
            return Ok(Existence::Present);
        }
        Ok(match self.engine_exists(image, cancel).await? {
            Existence::Present => Existence::NotLoaded,
            other => other,
        })
    }

    /// One call asking the node's runtime for `image`.
    async fn node_has(
        &self,
        loader: &Loader,
        image: &str,
        cancel: &watch::Receiver<bool>,
    ) -> Result<bool, BuildError> {
        EngineCalls::bump(&self.calls.checks);
        let (program, args, env, host) = match loader {
            Loader::Containerd { address, namespace } => (
                "ctr".to_string(),
                ctr_ls_args(address, namespace, image),
                Vec::new(),
                loader.describe(),
            ),
            Loader::Kind { cluster } => {
                let Kind::Docker(cli) = &self.kind else {
                    return Ok(false);
                };
                (
                    cli.program.clone(),
                    kind_ls_args(cluster, image),
                    cli.env.clone(),
                    loader.describe(),
                )
            }
        };
        let out = Tool {
            program: &program,
            env: &env,
            host: &host,
        }
        .run(&args, None, self.check_timeout, cancel, image)
        .await?;
        if !out.status.success() {
            return Err(BuildError::Unreachable {
                host,
                detail: last_line(&out.stderr),
                hint: match loader {
                    Loader::Containerd { .. } => "start the node's containerd, or point CONTAINERD_ADDRESS at its socket (the testbed's env file sets it)".into(),
                    Loader::Kind { cluster } => format!("start the cluster with `kind create cluster --name {cluster}`, or choose another builder with `--builder`"),
                },
            });
        }
        Ok(!out.stdout.trim().is_empty())
    }

    /// Copies `image` from the build engine into the node's runtime. `Ok(Failed)` when the
    /// engine or the runtime refuses; `Err` when a tool is missing or the call was cancelled.
    pub async fn load(
        &self,
        image: &str,
        cancel: &watch::Receiver<bool>,
    ) -> Result<BuildResult, BuildError> {
        if let Kind::Minikube { profile, .. } = &self.kind {
            return match self.minikube_mode(cancel).await? {
                MinikubeMode::Load { cli } => {
                    self.minikube_load(profile, &cli, image, cancel).await
                }
                MinikubeMode::Docker(_) | MinikubeMode::Build { .. } => Ok(BuildResult::Built),
            };
        }
        let (Some(loader), Kind::Docker(cli)) = (&self.load, &self.kind) else {
            return Ok(BuildResult::Built);
        };
        EngineCalls::bump(&self.calls.loads);
        let step = |what: &str, out: Output| {
            let reason = format!(
                "built, but loading into {} failed at `{what}`: {}",
                loader.describe(),
                last_line(&out.stderr)
            );
            BuildResult::Failed {
                tail: out.tail,
                reason,
            }
        };
        match loader {
            Loader::Kind { cluster } => {
                let args = kind_load_args(cluster, image);
                let out = Tool {
                    program: "kind",
                    env: &cli.env,
                    host: &loader.describe(),
                }
                .run(&args, None, self.build_timeout, cancel, image)
                .await?;
                if !out.status.success() {
                    return Ok(step("kind load docker-image", out));
                }
            }
            Loader::Containerd { address, namespace } => {
                // `docker save` to a file rather than a pipe between two children: both stay
                // argv-only processes with their own timeout and exit status.
                let dir = tempfile::Builder::new()
                    .prefix("converge-load-")
                    .tempdir()
                    .map_err(|source| BuildError::Io {
                        what: "creating a temporary directory for `docker save`".into(),
                        source,
                    })?;
                let archive = dir.path().join("image.tar");
                let args: Vec<String> = vec![
                    "save".into(),
                    "-o".into(),
                    archive.to_string_lossy().into_owned(),
                    image.into(),
                ];
                let out = cli
                    .tool()
                    .run(&args, None, self.build_timeout, cancel, image)
                    .await?;
                if !out.status.success() {
                    return Ok(step("docker save", out));
                }
                let args = ctr_import_args(address, namespace, &archive);
                let out = Tool {
                    program: "ctr",
                    env: &[],
                    host: &loader.describe(),
                }
                .run(&args, None, self.build_timeout, cancel, image)
                .await?;
                if !out.status.success() {
                    return Ok(step("ctr images import", out));
                }
            }
        }
        Ok(BuildResult::Built)
    }

    /// Asks the build engine itself whether `image` exists (one call, none for `none`).
    async fn engine_exists(
        &self,
        image: &str,
        cancel: &watch::Receiver<bool>,
    ) -> Result<Existence, BuildError> {
        match &self.kind {
            Kind::None => Ok(Existence::Unknown),
            Kind::Command { exists, built, .. } => {
                if built.lock().map(|b| b.contains(image)).unwrap_or(false) {
                    return Ok(Existence::Present);
                }
                let Some(template) = exists else {
                    return Ok(Existence::Unknown);
                };
                EngineCalls::bump(&self.calls.checks);
                let argv = command_argv(
                    template,
                    &BuildRequest::bare(image),
                    Path::new("."),
                    Path::new("Dockerfile"),
                );
                let (program, args) = split_argv(&argv)?;
                let out = Tool::bare(program)
                    .run(args, None, self.check_timeout, cancel, image)
                    .await?;
                Ok(if out.status.success() {
                    Existence::Present
                } else {
                    Existence::Missing
                })
            }
            Kind::Docker(cli) => self.docker_exists(cli, image, cancel).await,
            Kind::Minikube { profile, .. } => match self.minikube_mode(cancel).await? {
                MinikubeMode::Docker(cli) => self.docker_exists(&cli, image, cancel).await,
                MinikubeMode::Load { cli } => {
                    if self.minikube_lists(profile, image, cancel).await? {
                        return Ok(Existence::Present);
                    }
                    // Built here before but not in minikube: load it, don't rebuild.
                    Ok(match self.docker_exists(&cli, image, cancel).await? {
                        Existence::Present => Existence::NotLoaded,
                        other => other,
                    })
                }
                MinikubeMode::Build { .. } => {
                    Ok(if self.minikube_lists(profile, image, cancel).await? {
                        Existence::Present
                    } else {
                        Existence::Missing
                    })
                }
            },
        }
    }

    /// `docker image inspect` on `cli`'s engine.
    async fn docker_exists(
        &self,
        cli: &DockerCli,
        image: &str,
        cancel: &watch::Receiver<bool>,
    ) -> Result<Existence, BuildError> {
        EngineCalls::bump(&self.calls.checks);
        let args = docker_inspect_args(image);
        let out = cli
            .tool()
            .run(&args, None, self.check_timeout, cancel, image)
            .await?;
        if out.status.success() {
            Ok(Existence::Present)
        } else if out.stderr.to_ascii_lowercase().contains("no such image") {
            Ok(Existence::Missing)
        } else if looks_unreachable(&out.stderr) {
            Err(BuildError::Unreachable {
                host: cli.host.clone(),
                detail: last_line(&out.stderr),
                hint: UNREACHABLE_HINT.into(),
            })
        } else {
            Err(BuildError::Engine {
                command: format!("docker {}", args.join(" ")),
                status: out.status.to_string(),
                detail: last_line(&out.stderr),
            })
        }
    }

    /// Builds `req`; the context is produced only now, from the commit. `Err` only when the engine
    /// itself is unusable (unreachable, cancelled); a failing build is `Ok(Failed)`.
    pub async fn build(
        &self,
        req: &BuildRequest<'_>,
        repo_path: &Path,
        commit: &str,
        spec: &crate::desired::BuildSpec,
        cancel: &watch::Receiver<bool>,
    ) -> Result<BuildResult, BuildError> {
        let cli = match &self.kind {
            Kind::None => return Err(BuildError::NoBuilder),
            Kind::Command {
                template, built, ..
            } => {
                let ctx = export(repo_path, commit, req.component, spec).await?;
                let argv = command_argv(template, req, ctx.path(), &ctx.dockerfile);
                let (program, args) = split_argv(&argv)?;
                EngineCalls::bump(&self.calls.builds);
                let out = Tool::bare(program)
                    .run(args, None, self.build_timeout, cancel, req.image)
                    .await?;
                if out.status.success() {
                    if let Ok(mut b) = built.lock() {
                        b.insert(req.image.to_string());
                    }
                    return Ok(BuildResult::Built);
                }
                return Ok(failed(out));
            }
            Kind::Docker(cli) => cli.clone(),
            Kind::Minikube { profile, .. } => match self.minikube_mode(cancel).await? {
                MinikubeMode::Docker(cli) | MinikubeMode::Load { cli } => cli,
                MinikubeMode::Build { dialect } => {
                    return self
                        .minikube_build(profile, dialect, req, repo_path, commit, spec, cancel)
                        .await;
                }
            },
        };
        let (repo, commit_s, component) = (
            repo_path.to_path_buf(),
            commit.to_string(),
            req.component.to_string(),
        );
        let spec_c = spec.clone();
        let (tar, dockerfile) = tokio::task::spawn_blocking(move || {
            super::context::tar_context(&repo, &commit_s, &component, &spec_c)
        })
        .await
        .map_err(|e| BuildError::Io {
            what: "building the context archive".into(),
            source: std::io::Error::other(e.to_string()),
        })??;
        let req = BuildRequest {
            dockerfile: &dockerfile,
            ..req.clone()
        };
        let args = docker_build_args(&req);
        EngineCalls::bump(&self.calls.builds);
        let out = cli
            .tool()
            .run(&args, Some(tar), self.build_timeout, cancel, req.image)
            .await?;
        if !out.status.success() {
            if looks_unreachable(&out.stderr) {
                return Err(BuildError::Unreachable {
                    host: cli.host.clone(),
                    detail: last_line(&out.stderr),
                    hint: UNREACHABLE_HINT.into(),
                });
            }
            return Ok(failed(out));
        }
        if req.push && matches!(self.kind, Kind::Docker(_)) {
            EngineCalls::bump(&self.calls.pushes);
            let args = vec!["push".to_string(), req.image.to_string()];
            let out = cli
                .tool()
                .run(&args, None, self.build_timeout, cancel, req.image)
                .await?;
            if !out.status.success() {
                let mut f = failed(out);
                if let BuildResult::Failed { reason, .. } = &mut f {
                    *reason = format!("built, but the push failed: {reason}");
                }
                return Ok(f);
            }
        }
        // A loader, or minikube's fallback (`minikube image load`); `load` knows which.
        if self.load.is_some() || matches!(self.kind, Kind::Minikube { .. }) {
            return self.load(req.image, cancel).await;
        }
        Ok(BuildResult::Built)
    }

    /// Runs a Docker CLI command for pruning (counted as "other").
    pub(crate) async fn docker_other(
        &self,
        cli: &DockerCli,
        args: &[String],
        cancel: &watch::Receiver<bool>,
    ) -> Result<Output, BuildError> {
        EngineCalls::bump(&self.calls.other);
        cli.tool()
            .run(args, None, self.check_timeout, cancel, "prune")
            .await
    }
}

impl<'a> BuildRequest<'a> {
    fn bare(image: &'a str) -> Self {
        Self {
            component: "",
            image,
            dockerfile: "Dockerfile",
            args: Vec::new(),
            target: None,
            platform: None,
            push: false,
        }
    }
}

async fn export(
    repo_path: &Path,
    commit: &str,
    component: &str,
    spec: &crate::desired::BuildSpec,
) -> Result<super::context::ExportedContext, BuildError> {
    let (repo, commit, component, spec) = (
        repo_path.to_path_buf(),
        commit.to_string(),
        component.to_string(),
        spec.clone(),
    );
    tokio::task::spawn_blocking(move || {
        super::context::export_context(&repo, &commit, &component, &spec)
    })
    .await
    .map_err(|e| BuildError::Io {
        what: "exporting the build context".into(),
        source: std::io::Error::other(e.to_string()),
    })?
}

fn split_argv(argv: &[String]) -> Result<(&str, &[String]), BuildError> {
    argv.split_first()
        .map(|(p, a)| (p.as_str(), a))
        .ok_or(BuildError::MissingCommandTemplate)
}

fn failed(out: Output) -> BuildResult {
    let reason = failure_reason(&out.tail);
    BuildResult::Failed {
        tail: out.tail,
        reason,
    }
}

fn last_line(text: &str) -> String {
    text.lines()
        .rev()
        .map(str::trim)
        .find(|l| !l.is_empty())
        .unwrap_or("")
        .to_string()
}

/// A program the engine calls: with the environment it needs, and what it reaches (for messages).
#[derive(Clone, Copy)]
struct Tool<'a> {
    program: &'a str,
    env: &'a [(String, String)],
    host: &'a str,
}

impl<'a> Tool<'a> {
    /// `program` with no extra environment, named by itself in messages.
    fn bare(program: &'a str) -> Self {
        Self {
            program,
            env: &[],
            host: program,
        }
    }

    /// Runs it with `args` (and `stdin`), its output logged under `label`; `Ok` whatever its exit
    /// status, `Err` when it could not run to the end.
    async fn run(
        self,
        args: &[String],
        stdin: Option<Vec<u8>>,
        timeout: Duration,
        cancel: &watch::Receiver<bool>,
        label: &str,
    ) -> Result<Output, BuildError> {
        let mut cmd = process::Command::new(self.program, timeout)
            .args(args)
            .envs(self.env.iter().map(|(k, v)| (k, v)))
            .cancel(cancel.clone())
            .log_lines(label);
        if let Some(bytes) = stdin {
            cmd = cmd.stdin(bytes);
        }
        cmd.output().await.map_err(|e| self.error(args, e))
    }

    fn error(self, args: &[String], e: process::Error) -> BuildError {
        // The program and its subcommand: enough to say which call, without build args' values.
        let command = format!(
            "{} {}",
            self.program,
            args.first().map(String::as_str).unwrap_or("")
        );
        match e {
            e if e.is_not_found() => BuildError::ToolMissing {
                program: self.program.to_string(),
            },
            process::Error::Spawn { source, .. } | process::Error::Io { source, .. } => {
                BuildError::Io {
                    what: command,
                    source,
                }
            }
            process::Error::Timeout { .. } => BuildError::Timeout {
                command,
                host: self.host.to_string(),
            },
            process::Error::Cancelled { .. } => BuildError::Cancelled,
            process::Error::Failed { status, stderr, .. } => BuildError::Engine {
                command,
                status: status.to_string(),
                detail: last_line(&stderr),
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_short_docker_name_is_filed_under_docker_io_library_as_cri_runtimes_do() {
        assert_eq!(
            normalized_reference("todo-backend:0123456789ab"),
            "docker.io/library/todo-backend:0123456789ab"
        );
        assert_eq!(normalized_reference("me/app:1"), "docker.io/me/app:1");
        assert_eq!(
            normalized_reference("localhost:5000/app:1"),
            "localhost:5000/app:1"
        );
        assert_eq!(normalized_reference("ghcr.io/o/app:1"), "ghcr.io/o/app:1");
        // As the kubelet reports them in a Node's status.
        assert_eq!(
            normalized_reference("docker.io/app:1"),
            "docker.io/library/app:1"
        );
        assert_eq!(normalized_reference("app"), "docker.io/library/app:latest");
        assert_eq!(
            normalized_reference("library/app:1"),
            "docker.io/library/app:1"
        );
        assert_eq!(
            normalized_reference("ghcr.io/o/app@sha256:00"),
            "ghcr.io/o/app@sha256:00"
        );
    }

    #[test]
    fn loads_are_argv_vectors_naming_the_node_runtime() {
        assert_eq!(
            ctr_ls_args("/run/c.sock", "k8s.io", "app:1").join(" "),
            "--address /run/c.sock --namespace k8s.io images ls -q name==docker.io/library/app:1"
        );
        assert_eq!(
            ctr_import_args("/run/c.sock", "k8s.io", Path::new("/tmp/x/image.tar")).join(" "),
            "--address /run/c.sock --namespace k8s.io images import /tmp/x/image.tar"
        );
        assert_eq!(
            kind_load_args("dev", "app:1").join(" "),
            "load docker-image app:1 --name dev"
        );
        assert_eq!(
            kind_ls_args("dev", "app:1")[..2].join(" "),
            "exec dev-control-plane"
        );
    }

    #[test]
    fn the_loading_builders_report_their_own_kind() {
        let mut opts = BuildOptions::new(BuilderKind::Containerd);
        opts.containerd_address = Some("/run/x.sock".into());
        let e = Engine::new(&opts).expect("containerd engine");
        assert_eq!(e.builder(), BuilderKind::Containerd);
        assert_eq!(
            e.loader(),
            Some(&Loader::Containerd {
                address: "/run/x.sock".into(),
                namespace: opts.containerd_namespace()
            })
        );
        assert!(matches!(
            Engine::new(&BuildOptions::new(BuilderKind::Kind)),
            Err(BuildError::MissingKindCluster)
        ));
        let mut kind = BuildOptions::new(BuilderKind::Kind);
        kind.kind_cluster = Some("dev".into());
        assert_eq!(
            Engine::new(&kind).expect("kind engine").builder(),
            BuilderKind::Kind
        );
    }

    fn req() -> BuildRequest<'static> {
        BuildRequest {
            component: "api",
            image: "shop-api:0123456789ab",
            dockerfile: "docker/Dockerfile",
            args: vec![("A", "1"), ("B", "two words")],
            target: Some("prod"),
            platform: Some("linux/amd64"),
            push: false,
        }
    }

    #[test]
    fn docker_build_argv_streams_the_context_on_stdin() {
        assert_eq!(
            docker_build_args(&req()),
            [
                "build",
                "-t",
                "shop-api:0123456789ab",
                "-f",
                "docker/Dockerfile",
                "--target",
                "prod",
                "--platform",
                "linux/amd64",
                "--build-arg",
                "A=1",
                "--build-arg",
                "B=two words",
                "-"
            ]
        );
        assert_eq!(
            docker_inspect_args("x:1"),
            ["image", "inspect", "--format", "{{.Id}}", "x:1"]
        );
    }

    #[test]
    fn minikube_argv_uses_the_profile_and_build_opts() {
        assert_eq!(
            minikube_build_args(
                &Profile(Some("dev".into())),
                BuildDialect::Docker,
                &req(),
                Path::new("/tmp/ctx")
            ),
            [
                "-p",
                "dev",
                "image",
                "build",
                "-t",
                "shop-api:0123456789ab",
                "-f",
                "docker/Dockerfile",
                "--build-opt=target=prod",
                "--build-opt=platform=linux/amd64",
                "--build-opt=build-arg=A=1",
                "--build-opt=build-arg=B=two words",
                "/tmp/ctx"
            ]
        );
        assert_eq!(
            minikube_ls_args(&Profile(None)),
            ["image", "ls", "--format", "short"]
        );
        assert_eq!(
            minikube_docker_env_args(&Profile(Some("p".into()))),
            ["-p", "p", "docker-env", "--shell", "none"]
        );
        assert_eq!(
            minikube_load_args(&Profile(Some("p".into())), "app:1"),
            ["-p", "p", "image", "load", "--daemon", "app:1"]
        );
        assert_eq!(
            minikube_profile_list_args(),
            ["profile", "list", "--output", "json", "--light"]
        );
    }

    #[test]
    fn minikube_image_build_on_containerd_speaks_buildctl() {
        let args = minikube_build_args(
            &Profile(None),
            BuildDialect::Buildctl,
            &req(),
            Path::new("/tmp/ctx"),
        );
        assert!(args.contains(&"--build-opt=opt=build-arg:A=1".to_string()));
        assert!(args.contains(&"--build-opt=opt=target=prod".to_string()));
    }

    #[test]
    fn minikube_docker_env_output_becomes_an_environment() {
        let env = minikube::parse_env_lines("DOCKER_TLS_VERIFY=\"1\"\nDOCKER_HOST=\"tcp://192.168.49.2:2376\"\nDOCKER_CERT_PATH=\"/root/.minikube/certs\"\nMINIKUBE_ACTIVE_DOCKERD=\"minikube\"\n");
        assert!(env.contains(&("DOCKER_HOST".into(), "tcp://192.168.49.2:2376".into())));
        assert_eq!(env.len(), 4);
        let cli = DockerCli::with_env(env, "from `minikube docker-env`");
        assert!(cli.host().contains("tcp://192.168.49.2:2376"));
    }

    #[test]
    fn command_templates_fill_placeholders_per_argument_without_a_shell() {
        let argv = command_argv(
            "buildah bud -t {image} -f {dockerfile} {build_args} --layers {context}",
            &req(),
            Path::new("/tmp/my ctx"),
            Path::new("/tmp/my ctx/docker/Dockerfile"),
        );
        assert_eq!(
            argv,
            [
                "buildah",
                "bud",
                "-t",
                "shop-api:0123456789ab",
                "-f",
                "/tmp/my ctx/docker/Dockerfile",
                "--build-arg",
                "A=1",
                "--build-arg",
                "B=two words",
                "--layers",
                "/tmp/my ctx"
            ]
        );
        let argv = command_argv(
            "x {repository} {tag}",
            &req(),
            Path::new("."),
            Path::new("D"),
        );
        assert_eq!(argv, ["x", "shop-api", "0123456789ab"]);
    }

    #[test]
    fn failure_reason_names_the_classic_builders_failing_step() {
        let tail: Vec<String> = [
            "DEPRECATED: The legacy builder is deprecated and will be removed in a future release.",
            "            Install the buildx component to build images with BuildKit:",
            "Step 1/2 : FROM scratch",
            " ---> ",
            "Step 2/2 : COPY missing /x",
            "COPY failed: file not found in build context or excluded by .dockerignore: stat missing: file does not exist",
        ]
        .map(String::from)
        .to_vec();
        let reason = failure_reason(&tail);
        assert!(
            reason.starts_with("Step 2/2 : COPY missing /x: COPY failed"),
            "{reason}"
        );
    }

    #[test]
    fn unreachable_engines_are_told_apart_from_missing_images() {
        assert!(looks_unreachable(
            "Cannot connect to the Docker daemon at unix:///x.sock. Is the docker daemon running?"
        ));
        assert!(!looks_unreachable(
            "Error response from daemon: No such image: a:b"
        ));
    }

    #[test]
    fn a_base_image_that_cannot_be_pulled_is_a_failed_build_not_an_unreachable_engine() {
        let classic = "Error response from daemon: Get \"https://registry-1.docker.io/v2/\": dial tcp: lookup registry-1.docker.io on 127.0.0.53:53: no such host";
        assert!(!looks_unreachable(classic));
        let buildkit = "ERROR: failed to solve: debian:bookworm: failed to resolve source metadata for docker.io/library/debian:bookworm: dial tcp: connect: connection refused";
        assert!(!looks_unreachable(buildkit));
        let tail: Vec<String> = [
            "Sending build context to Docker daemon  2.048kB",
            "Step 1/2 : FROM nonexistent.invalid/base:1",
            classic,
        ]
        .iter()
        .map(|l| l.to_string())
        .collect();
        let reason = failure_reason(&tail);
        assert!(
            reason.starts_with(
                "Step 1/2 : FROM nonexistent.invalid/base:1: Error response from daemon"
            ),
            "{reason}"
        );
    }
}
