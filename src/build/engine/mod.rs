//! Image engines, one file per builder: `docker` (the Docker CLI, which `kind`, `containerd` and
//! minikube's `docker-env` also build with), `minikube` (its image commands where `docker-env` is
//! refused), `kind` and `containerd` (the load step that hands an image the Docker engine built
//! to a node runtime without a registry), `command` (a user's template) and none. This file is
//! what they share: the [`Engine`] that dispatches to them, its call counts, and the one way a
//! tool is run. Owns every process converge starts for images, through [`crate::process`]: argv
//! vectors with a timeout, never a shell. Never reads git.

mod command;
mod containerd;
mod docker;
mod kind;
mod minikube;
mod registry;

use std::collections::HashSet;
use std::path::Path;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::{watch, OnceCell};

pub use command::command_argv;
pub use containerd::{ctr_import_args, ctr_ls_args, normalized_reference};
pub use docker::{
    docker_build_args, docker_inspect_args, failure_reason, looks_unreachable, DockerCli,
    UNREACHABLE_HINT,
};
pub use kind::{kind_load_args, kind_ls_args};
use minikube::MinikubeMode;
pub use minikube::{
    minikube_build_args, minikube_docker_env_args, minikube_load_args, minikube_ls_args,
    minikube_profile_list_args,
};
pub use registry::{
    buildctl_build_args, buildctl_failure_reason, buildctl_workers_args, buildkit_address,
    buildkit_hint, buildkit_unreachable, pushed_digest, BUILDKIT_DEFAULT_ADDRESS,
};

use super::minikube::Profile;
use super::{BuildError, BuildOptions};
use crate::desired::schema::BuilderKind;
use crate::process::{self, Output};

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

/// A load that failed at the step `what` (`Ok(Failed)`: the image was built, the node lacks it).
fn load_failed(loader: &Loader, what: &str, out: Output) -> BuildResult {
    let reason = format!(
        "built, but loading into {} failed at `{what}`: {}",
        loader.describe(),
        last_line(&out.stderr)
    );
    BuildResult::Failed {
        tail: out.tail,
        reason,
    }
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

#[derive(Debug)]
enum Kind {
    Docker(DockerCli),
    Minikube {
        profile: Profile,
        /// The Docker engine for the fallback (`--docker-host`; else `DOCKER_HOST` or the default).
        local: DockerCli,
        mode: OnceCell<MinikubeMode>,
    },
    Registry {
        registry: crate::build::registry::Registry,
        /// `host[:port]/path` images are pushed under.
        prefix: String,
        /// `buildctl --addr`; buildctl's own (`BUILDKIT_HOST`, its default) when `None`.
        buildkit: Option<String>,
        /// buildctl's environment: `DOCKER_CONFIG` naming the directory of the config file the
        /// existence check read, so the push uses the same login.
        env: Vec<(String, String)>,
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
            BuilderKind::Docker => Kind::Docker(DockerCli::new(opts)),
            BuilderKind::Containerd => {
                load = Some(Loader::Containerd {
                    address: opts.containerd_address(),
                    namespace: opts.containerd_namespace(),
                });
                Kind::Docker(DockerCli::new(opts))
            }
            BuilderKind::Kind => {
                load = Some(Loader::Kind {
                    cluster: opts
                        .kind_cluster
                        .clone()
                        .ok_or(BuildError::MissingKindCluster)?,
                });
                Kind::Docker(DockerCli::new(opts))
            }
            BuilderKind::Minikube => Kind::Minikube {
                profile: Profile(opts.minikube_profile.clone()),
                local: DockerCli::new(opts),
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
            BuilderKind::Registry => {
                let prefix = opts
                    .registry
                    .clone()
                    .filter(|p| !p.trim().is_empty())
                    .ok_or(BuildError::MissingRegistryPrefix)?;
                let path = opts.env.docker_config_path();
                let config = crate::build::registry::config::DockerConfig::read(&path)?;
                let env = path
                    .parent()
                    .map(|dir| vec![("DOCKER_CONFIG".to_string(), dir.display().to_string())])
                    .unwrap_or_default();
                Kind::Registry {
                    registry: crate::build::registry::Registry::new(
                        config,
                        opts.env.ssl_cert_file.as_deref(),
                        opts.check_timeout,
                    )?,
                    prefix,
                    buildkit: opts.buildkit_addr.clone(),
                    env,
                }
            }
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
            (Kind::Registry { .. }, None) => BuilderKind::Registry,
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
            return self.minikube_load_built(profile, image, cancel).await;
        }
        let (Some(loader), Kind::Docker(cli)) = (&self.load, &self.kind) else {
            return Ok(BuildResult::Built);
        };
        EngineCalls::bump(&self.calls.loads);
        match loader {
            Loader::Kind { cluster } => self.kind_load(loader, cluster, cli, image, cancel).await,
            Loader::Containerd { address, namespace } => {
                self.containerd_load(loader, address, namespace, cli, image, cancel)
                    .await
            }
        }
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
                self.command_exists(exists.as_deref(), built, image, cancel)
                    .await
            }
            Kind::Docker(cli) => self.docker_exists(cli, image, cancel).await,
            Kind::Registry { registry, .. } => self.registry_exists(registry, image).await,
            Kind::Minikube { profile, .. } => self.minikube_exists(profile, image, cancel).await,
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
                return self
                    .command_build(template, built, req, repo_path, commit, spec, cancel)
                    .await;
            }
            Kind::Docker(cli) => cli.clone(),
            Kind::Registry { buildkit, env, .. } => {
                return self
                    .registry_build(
                        buildkit.as_deref(),
                        env,
                        req,
                        repo_path,
                        commit,
                        spec,
                        cancel,
                    )
                    .await;
            }
            Kind::Minikube { profile, .. } => match self.minikube_mode(cancel).await? {
                MinikubeMode::Docker(cli) | MinikubeMode::Load { cli } => cli,
                MinikubeMode::Build { dialect } => {
                    return self
                        .minikube_build(profile, dialect, req, repo_path, commit, spec, cancel)
                        .await;
                }
            },
        };
        self.docker_build(&cli, req, repo_path, commit, spec, cancel)
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
        opts.env.containerd_address = Some("/run/x.sock".into());
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

    pub(super) fn req() -> BuildRequest<'static> {
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
}
