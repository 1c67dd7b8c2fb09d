//! The gather steps of doctor's checks: each reads what one check decides on (cluster objects,
//! a command's answer, the rendered stack) and returns it as data; none decides or writes.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use k8s_openapi::api::core::v1::{LimitRange, Node, Pod, ResourceQuota, Service};
use kube::api::ListParams;
use serde_json::Value;

use super::rules::Totals;
use crate::build::minikube::{self, Profile};
use crate::build::BuildEnv;
use crate::capacity::{pod_requests, running};
use crate::cluster::secrets::SecretRef;
use crate::cluster::values;
use crate::cluster::{Cluster, ClusterError};
use crate::desired::schema::BuilderKind;
use crate::desired::Stack;
use crate::render::Helm;

/// How long an external version or status command may take.
pub const COMMAND_TIMEOUT: Duration = Duration::from_secs(15);

/// A short command's answer: (success, stdout, stderr), or why it could not run.
pub type Answer = Result<(bool, String, String), String>;

/// Runs a short external command with a timeout.
pub async fn command(program: &str, args: &[&str]) -> Answer {
    let cmd = crate::process::Command::new(program, COMMAND_TIMEOUT)
        .args(args)
        .log_lines(program);
    match cmd.output().await {
        Ok(o) => Ok((o.success(), o.stdout, o.stderr)),
        // The program alone: "cannot run `docker`" is what the fix is about, not its arguments.
        Err(crate::process::Error::Spawn { source, .. }) => {
            Err(format!("cannot run `{program}`: {source}"))
        }
        Err(crate::process::Error::Timeout { command, .. }) => Err(format!(
            "`{command}` gave no answer within {}s",
            COMMAND_TIMEOUT.as_secs()
        )),
        Err(e) => Err(e.to_string()),
    }
}

/// The API server's version and the nodes (empty when they cannot be listed: the cluster check
/// is about the server answering).
pub async fn cluster(cluster: &Cluster) -> Result<(String, Vec<Value>), ClusterError> {
    let version = cluster.ping().await?;
    let nodes = cluster
        .list_global::<Node>(&ListParams::default())
        .await
        .map(values)
        .unwrap_or_default();
    Ok((version, nodes))
}

/// What a builder's tools answered.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BuilderFacts {
    /// `docker version`, and the engine address it used.
    Docker {
        /// `DOCKER_HOST`, or "the default socket".
        host: String,
        /// Its answer.
        version: Answer,
    },
    /// `minikube status` (read by its exit code), and `minikube version` when it runs.
    Minikube {
        /// The profile asked about.
        profile: Profile,
        /// Its answer, classified; `Err` when minikube could not be run.
        status: Result<minikube::Status, String>,
        /// The version, asked only of a running minikube.
        version: Option<String>,
    },
    /// The registry builder: `buildctl debug workers` and `GET /v2/` with the login converge has.
    Registry {
        /// The BuildKit address asked.
        buildkit: String,
        /// Whether BuildKit answered, or why not (with the fix).
        workers: Result<(), (String, String)>,
        /// The registry host that answered and took the login, or why not (with the fix).
        registry: Result<String, (String, String)>,
    },
    /// A builder doctor does not check.
    Unchecked(BuilderKind),
}

/// Asks the registry builder's two services for `stack`: BuildKit (`buildctl debug workers`)
/// and the registry (`GET /v2/` with the Docker config's login), as a build would reach them.
pub async fn registry(
    stack: &crate::desired::Stack,
    context: &str,
    env: &BuildEnv,
) -> BuilderFacts {
    let base = crate::build::BuildOptions {
        env: env.clone(),
        ..crate::build::BuildOptions::new(BuilderKind::Registry)
    };
    let (opts, _) = base.for_stack(Some(BuilderKind::Registry), stack, context);
    let buildkit = opts
        .buildkit_addr
        .clone()
        .unwrap_or_else(|| crate::build::engine::BUILDKIT_DEFAULT_ADDRESS.into());
    let why = |e: &crate::build::BuildError| {
        if let crate::build::BuildError::Unreachable { host, detail, hint } = e {
            return (format!("{host}: {detail}"), hint.clone());
        }
        (
            e.to_string(),
            crate::hints::for_error(e).unwrap_or_else(|| {
                "fix what the message names, then run `converge doctor` again".into()
            }),
        )
    };
    let engine = match crate::build::Engine::new(&opts) {
        Ok(e) => e,
        Err(e) => {
            let w = why(&e);
            return BuilderFacts::Registry {
                buildkit,
                workers: Err(w.clone()),
                registry: Err(w),
            };
        }
    };
    let (_tx, cancel) = tokio::sync::watch::channel(false);
    let workers = engine.buildkit_answers(&cancel).await.map_err(|e| why(&e));
    let registry = match engine.registry_answers().await {
        Ok(host) => Ok(host.unwrap_or_default()),
        Err(e) => Err(why(&e)),
    };
    BuilderFacts::Registry {
        buildkit,
        workers,
        registry,
    }
}

/// Runs a short external command with a timeout; its exit code and output.
pub async fn command_answer(program: &str, args: &[String]) -> Result<minikube::Answer, String> {
    let cmd = crate::process::Command::new(program, COMMAND_TIMEOUT)
        .args(args)
        .log_lines(program);
    match cmd.output().await {
        Ok(o) => Ok(minikube::Answer::of(&o)),
        Err(crate::process::Error::Spawn { source, .. }) => {
            Err(format!("cannot run `{program}`: {source}"))
        }
        Err(crate::process::Error::Timeout { command, .. }) => Err(format!(
            "`{command}` gave no answer within {}s",
            COMMAND_TIMEOUT.as_secs()
        )),
        Err(e) => Err(e.to_string()),
    }
}

/// Asks the builder's tools whether they work (`profile`: the minikube profile to ask about;
/// `env`: the build environment the builder was chosen with).
pub async fn builder(kind: BuilderKind, profile: Option<&str>, env: &BuildEnv) -> BuilderFacts {
    match kind {
        BuilderKind::Docker | BuilderKind::Kind | BuilderKind::Containerd => {
            let host = env
                .docker_host
                .clone()
                .unwrap_or_else(|| "the default socket".into());
            let version = command(
                "docker",
                &[
                    "version",
                    "--format",
                    "{{.Client.Version}} {{.Server.Version}}",
                ],
            )
            .await;
            BuilderFacts::Docker { host, version }
        }
        BuilderKind::Minikube => {
            let profile = Profile(profile.map(String::from));
            let mut args = profile.args();
            args.extend(["status", "--format", "{{.Host}}"].map(String::from));
            let status = command_answer("minikube", &args)
                .await
                .map(|a| minikube::status(&profile, &a));
            let version = match &status {
                Ok(minikube::Status::Running) => Some(
                    command("minikube", &["version", "--short"])
                        .await
                        .map(|(_, v, _)| v.trim().to_string())
                        .unwrap_or_default(),
                ),
                _ => None,
            };
            BuilderFacts::Minikube {
                profile,
                status,
                version,
            }
        }
        other => BuilderFacts::Unchecked(other),
    }
}

/// The key names (never values) of each Secret `refs` name, `None` for a missing Secret.
pub async fn secret_keys(
    cluster: &Cluster,
    namespace: &str,
    refs: &[SecretRef],
) -> Result<BTreeMap<String, Option<Vec<String>>>, ClusterError> {
    let mut names: Vec<&str> = refs.iter().map(|r| r.secret.as_str()).collect();
    names.sort();
    names.dedup();
    let mut out = BTreeMap::new();
    for name in names {
        let keys = cluster.secret_keys(namespace, name).await?;
        out.insert(name.to_string(), keys.map(|k| k.into_iter().collect()));
    }
    Ok(out)
}

/// The stack rendered as the cluster would get it, as JSON.
pub async fn render(
    repo: &Path,
    rev: &str,
    dir: &str,
    stack: &Stack,
    helm: &Helm,
    cluster: &Cluster,
) -> Result<Vec<Value>, crate::error::Error> {
    let selection = crate::reconcile::Selection {
        dir: dir.to_string(),
        // By directory: two stacks may share a name (dev and staging of one app).
        stack: Some(stack.dir.clone()),
        namespace: None,
    };
    let (_, prepared) = crate::reconcile::prepare(repo, rev, &selection)?;
    let version = cluster.ping().await.ok();
    let mut out = Vec::new();
    for p in prepared {
        let rendered = p.render.template(helm, version.as_deref()).await?;
        out.extend(
            rendered
                .objects
                .iter()
                .filter_map(|o| serde_json::to_value(o).ok()),
        );
    }
    Ok(out)
}

/// Every Service in the cluster (NodePorts are cluster-wide).
pub async fn services(cluster: &Cluster) -> Result<Vec<Value>, ClusterError> {
    Ok(values(
        cluster
            .list_global::<Service>(&ListParams::default())
            .await?,
    ))
}

/// A namespace's ResourceQuotas and LimitRanges, and what its Pods request now.
#[derive(Debug, Clone, Default)]
pub struct QuotaFacts {
    /// ResourceQuotas.
    pub quotas: Vec<Value>,
    /// LimitRanges.
    pub ranges: Vec<Value>,
    /// Requests of the Pods running in the namespace now (the stack replaces them); read only
    /// when a quota or range exists.
    pub own: Totals,
}

/// Reads what the quota check decides on.
pub async fn quota(cluster: &Cluster, ns: &str) -> Result<QuotaFacts, ClusterError> {
    let all = ListParams::default();
    let quotas = values(cluster.list_in::<ResourceQuota>(ns, &all).await?);
    let ranges = values(cluster.list_in::<LimitRange>(ns, &all).await?);
    let mut own = Totals::default();
    if !(quotas.is_empty() && ranges.is_empty()) {
        // Best effort, as before: unreadable Pods count as none.
        let pods = cluster
            .list_in::<Pod>(ns, &running())
            .await
            .map(values)
            .unwrap_or_default();
        for p in &pods {
            let (cpu, mem) = pod_requests(p);
            own.pods += 1;
            own.cpu_milli += cpu;
            own.memory += mem;
        }
    }
    Ok(QuotaFacts {
        quotas,
        ranges,
        own,
    })
}

/// Every node, and every Pod holding requests: (nodes, pods).
pub async fn capacity(cluster: &Cluster) -> Result<(Vec<Value>, Vec<Value>), ClusterError> {
    let nodes = values(cluster.list_global::<Node>(&ListParams::default()).await?);
    let pods = values(cluster.list_global::<Pod>(&running()).await?);
    Ok((nodes, pods))
}

/// Whether a daemon service is installed for the checkout, and whether it runs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ServiceFacts {
    /// `repo` is not a checkout.
    NoCheckout(String),
    /// Where services are installed is unknown (no HOME).
    NoPlaces(String),
    /// A launchd agent is installed (its state is not asked).
    Launchd {
        /// The plist.
        file: PathBuf,
    },
    /// A systemd unit is installed.
    Systemd {
        /// `<name>.service`.
        unit: String,
        /// The unit file.
        file: PathBuf,
        /// A user unit (`systemctl --user`).
        user: bool,
        /// `systemctl is-active`'s answer.
        active: Answer,
    },
    /// None is installed for the checkout.
    Missing {
        /// The checkout's top directory.
        root: PathBuf,
    },
}

/// Looks for the checkout's daemon service, and asks systemd whether it runs.
pub async fn service(repo: &Path) -> ServiceFacts {
    use crate::daemon::service::{self, Manager};
    let dirs = match crate::daemon::refs::GitDirs::discover(repo) {
        Ok(d) => d,
        Err(e) => return ServiceFacts::NoCheckout(e.to_string()),
    };
    let places = match service::Places::from_env() {
        Ok(p) => p,
        Err(e) => return ServiceFacts::NoPlaces(e.to_string()),
    };
    let name = service::name_for(&dirs.root);
    let managers: &[Manager] = if cfg!(target_os = "macos") {
        &[Manager::Launchd]
    } else {
        &[Manager::SystemdUser, Manager::SystemdSystem]
    };
    for &m in managers {
        let file = places.file(m, &name);
        if !file.exists() {
            continue;
        }
        let unit = format!("{name}.service");
        let user = m == Manager::SystemdUser;
        let active = match m {
            Manager::Launchd => return ServiceFacts::Launchd { file },
            Manager::SystemdUser => command("systemctl", &["--user", "is-active", &unit]).await,
            Manager::SystemdSystem => command("systemctl", &["is-active", &unit]).await,
        };
        return ServiceFacts::Systemd {
            unit,
            file,
            user,
            active,
        };
    }
    ServiceFacts::Missing { root: dirs.root }
}
