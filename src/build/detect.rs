//! Which builder a stack gets, decided once by one pure function ([`choose_builder`]) from the
//! flag, the stack, the kube context actually used and the build environment ([`BuildEnv`]),
//! which is read from the process once, when the options are made; and which variables decide
//! how images are built, so `converge service install` carries every one of them.

use serde::Serialize;

use crate::desired::schema::BuilderKind;
use crate::desired::Stack;

/// Environment variables that decide how images are built, by prefix: read by converge itself
/// ([`BuildEnv`]: `CONTAINERD_ADDRESS` chooses the containerd builder and, with
/// `CONTAINERD_NAMESPACE`, says where it imports; `DOCKER_HOST` aims the Docker CLI) and by the
/// tools the builders run, which inherit converge's environment: the Docker CLI (`DOCKER_*`),
/// minikube (`MINIKUBE_*`), `ctr` (`CONTAINERD_*`, e.g. `CONTAINERD_SNAPSHOTTER` for the unpack
/// of `ctr images import`), kind (`KIND_*`, e.g. `KIND_EXPERIMENTAL_PROVIDER`), buildctl
/// (`BUILDKIT_*`) and the registry builder's trust roots (`SSL_CERT_FILE`, `SSL_CERT_DIR`). A daemon
/// started elsewhere (`converge service install`) must carry them, or it builds another way.
pub const ENV_PREFIXES: &[&str] = &[
    "DOCKER_",
    "MINIKUBE_",
    "CONTAINERD_",
    "KIND_",
    "BUILDKIT_",
    "SSL_CERT_",
];

/// Environment variables that decide how images are built, by exact name: the `command`
/// builder's templates (`--command`, `--exists-command` of `build`, `apply` and `run`), the
/// registry builder's prefix (`--registry`) and BuildKit address (`--buildkit-addr`).
pub const ENV_NAMES: &[&str] = &[
    "CONVERGE_BUILD_COMMAND",
    "CONVERGE_BUILD_EXISTS_COMMAND",
    "CONVERGE_REGISTRY",
    "CONVERGE_PULL_SECRET",
    "BUILDKIT_HOST",
];

/// containerd's own default socket.
pub const DEFAULT_CONTAINERD_ADDRESS: &str = "/run/containerd/containerd.sock";

/// The variables of the environment converge itself reads to choose and aim a builder, as values
/// read once (when the build options are made), so the choice is a pure function and a
/// reconcile never reads the environment.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct BuildEnv {
    /// `CONTAINERD_ADDRESS`: the node's containerd is on this machine (as `DOCKER_HOST` after
    /// `minikube docker-env` says the node's Docker is); the containerd builder imports there.
    pub containerd_address: Option<String>,
    /// `CONTAINERD_NAMESPACE`: where the containerd builder imports (else `k8s.io`, CRI's).
    pub containerd_namespace: Option<String>,
    /// `DOCKER_HOST`: the engine the Docker CLI talks to when `--docker-host` is not given (the
    /// CLI reads it itself; converge names it in messages).
    pub docker_host: Option<String>,
    /// `DOCKER_CONFIG`: the directory of the Docker config file the registry builder reads its
    /// logins from (as `docker login` and `buildctl` do).
    pub docker_config: Option<String>,
    /// `BUILDKIT_HOST`: the registry builder's BuildKit address when `--buildkit-addr` is not
    /// given (buildctl reads it too); wins over the stack's `registry.buildkit`.
    pub buildkit_host: Option<String>,
    /// `CONVERGE_REGISTRY`: the registry builder's prefix when `--registry` is not given; wins
    /// over the stack's `registry.prefix`.
    pub registry: Option<String>,
    /// `SSL_CERT_FILE`: a PEM file of CA certificates the registry builder trusts besides the
    /// system's.
    pub ssl_cert_file: Option<String>,
}

impl BuildEnv {
    /// Read from this process's environment.
    pub fn from_process() -> Self {
        Self::from_lookup(|name| std::env::var(name).ok())
    }

    /// Read through `get` (a variable's value by name), e.g. from an environment captured for a
    /// service unit; empty values count as unset. The one place that names the variables.
    pub fn from_lookup(get: impl Fn(&str) -> Option<String>) -> Self {
        let get = |name: &str| get(name).filter(|v| !v.is_empty());
        Self {
            containerd_address: get("CONTAINERD_ADDRESS"),
            containerd_namespace: get("CONTAINERD_NAMESPACE"),
            docker_host: get("DOCKER_HOST"),
            docker_config: get("DOCKER_CONFIG"),
            buildkit_host: get("BUILDKIT_HOST"),
            registry: get("CONVERGE_REGISTRY"),
            ssl_cert_file: get("SSL_CERT_FILE"),
        }
    }

    /// The Docker config file the registry builder reads: `$DOCKER_CONFIG/config.json`, else
    /// `~/.docker/config.json` (`HOME` is the process's own: a service manager sets it for the
    /// user the daemon runs as, so it is not captured like the build variables).
    pub fn docker_config_path(&self) -> std::path::PathBuf {
        crate::build::registry::config::config_path(|name| match name {
            "DOCKER_CONFIG" => self.docker_config.clone(),
            "HOME" => std::env::var("HOME").ok(),
            _ => None,
        })
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

#[cfg(test)]
mod tests {
    use super::*;

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
            ..BuildEnv::default()
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
