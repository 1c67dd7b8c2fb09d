//! The likely fix for an error, on its own line under it: what a person types next. Every
//! command printed here must run as printed (a test parses each one).

use crate::build::BuildError;
use crate::cluster::ClusterError;
use crate::render::RenderError;
use crate::source::SourceError;

/// The fix for `err`, looked up through the chain of causes; `None` when converge knows none
/// better than the message itself.
pub fn for_error(err: &(dyn std::error::Error + 'static)) -> Option<String> {
    let mut cur: Option<&(dyn std::error::Error + 'static)> = Some(err);
    while let Some(e) = cur {
        let found = if let Some(e) = e.downcast_ref::<crate::error::Error>() {
            of_error(e)
        } else if let Some(e) = e.downcast_ref::<SourceError>() {
            of_source(e)
        } else if let Some(e) = e.downcast_ref::<ClusterError>() {
            of_cluster(e)
        } else if let Some(e) = e.downcast_ref::<BuildError>() {
            of_build(e)
        } else if let Some(e) = e.downcast_ref::<RenderError>() {
            of_render(e)
        } else {
            None
        };
        if found.is_some() {
            return found;
        }
        cur = e.source();
    }
    None
}

fn of_error(e: &crate::error::Error) -> Option<String> {
    use crate::error::Error;
    match e {
        Error::Source(s) => of_source(s),
        Error::Cluster(c) => of_cluster(c),
        Error::Build(b) => of_build(b),
        Error::Render(r) => of_render(r),
        Error::Invalid { .. } => Some(
            "fix what is listed above and commit; `converge validate` checks a commit without touching the cluster".into(),
        ),
        Error::UnknownStack { .. } => Some(
            "`converge validate` lists the stacks of the commit; pass one with --stack (its directory, e.g. `dev`, or its name)".into(),
        ),
        // Its message already names the three ways out (commit, stop the daemon, --force).
        Error::DaemonRunning { .. } => None,
        Error::Lease(_) => None,
    }
}

fn of_source(e: &SourceError) -> Option<String> {
    match e {
        SourceError::NotARepository { .. } => Some(
            "run converge inside your git checkout, or pass --repo <checkout> (the directory holding desired/)".into(),
        ),
        SourceError::UnknownRevision { .. } => Some(
            "`git log --oneline` lists the commits; pass one (or a branch or tag) with --rev".into(),
        ),
        SourceError::Read { .. } => None,
    }
}

/// The fix for an unreachable cluster, by the kind of cluster the context names.
pub fn start_cluster(context: &str) -> String {
    if context == "minikube" || context.starts_with("minikube") {
        "start the cluster: `minikube start` (`minikube status` says why it stopped)".into()
    } else if let Some(name) = context.strip_prefix("kind-") {
        format!("start the cluster: `docker start {name}-control-plane` (or `kind create cluster --name {name}`)")
    } else if context == "converge-testbed" {
        "start the testbed: `tests/testbed/up` (then `. /tmp/converge-testbed/env`)".into()
    } else {
        format!(
            "start the cluster, or check its address: `kubectl cluster-info --context {context}`"
        )
    }
}

fn of_cluster(e: &ClusterError) -> Option<String> {
    match e {
        ClusterError::Unreachable { context, .. } => Some(start_cluster(context)),
        ClusterError::Kubeconfig { .. } => Some(
            "pass --kubeconfig <file> (or set KUBECONFIG) to a kubeconfig with your cluster; `minikube start` writes ~/.kube/config".into(),
        ),
        ClusterError::UnknownContext { context, .. } if context == "minikube" => Some(
            "`minikube start` creates the `minikube` context; or pass --context with one of the known contexts".into(),
        ),
        ClusterError::UnknownContext { .. } => Some(
            "pass --context with one of the known contexts (`kubectl config get-contexts` lists them), or --kubeconfig for another file".into(),
        ),
        ClusterError::Timeout { .. } => Some(
            "check the cluster answers: `kubectl get --raw /readyz`".into(),
        ),
        _ => None,
    }
}

fn of_build(e: &BuildError) -> Option<String> {
    match e {
        BuildError::Unreachable { hint, .. } => Some(hint.clone()),
        BuildError::Minikube(f) => f.fix(),
        BuildError::ToolMissing { program } if program == "docker" => Some(
            "install the Docker CLI (https://docs.docker.com/engine/install/), or pass --builder none to compute tags only".into(),
        ),
        BuildError::ToolMissing { program } if program == "minikube" => Some(
            "install minikube (https://minikube.sigs.k8s.io/docs/start/), or pass --builder docker".into(),
        ),
        BuildError::ToolMissing { program } if program == "buildctl" => Some(
            "install BuildKit's buildctl (https://github.com/moby/buildkit/releases), or choose another builder with --builder".into(),
        ),
        BuildError::ToolMissing { .. } => {
            Some("install it, or choose another builder with --builder".into())
        }
        BuildError::Registry(r) => {
            use crate::build::registry::RegistryError as R;
            match r {
                R::Unreachable { hint, .. } => Some(hint.clone()),
                R::Refused { host, .. } | R::NoCredentials { host, .. } => Some(format!(
                    "`docker login {host}` (converge and buildctl read the same Docker config: DOCKER_CONFIG, else ~/.docker/config.json)"
                )),
                _ => None,
            }
        }
        BuildError::MissingRegistryPrefix => Some(
            "add `registry: {prefix: <host>[:<port>]/<path>}` to the stack, or pass --registry (CONVERGE_REGISTRY)".into(),
        ),
        BuildError::MissingCommandTemplate => Some(
            "pass --command 'buildah bud -t {image} -f {dockerfile} {context}' (or set CONVERGE_BUILD_COMMAND)".into(),
        ),
        BuildError::Source(s) => of_source(s),
        _ => None,
    }
}

fn of_render(e: &RenderError) -> Option<String> {
    match e {
        // The same words as the error's own, so the fix is printed once, on its own line.
        RenderError::HelmMissing { .. } | RenderError::HelmTooOld { .. } => Some(format!(
            "install Helm v{}.{} or newer (https://helm.sh/docs/intro/install/) or set CONVERGE_HELM to its path",
            crate::render::helm::MIN_HELM.0,
            crate::render::helm::MIN_HELM.1
        )),
        RenderError::Source(s) => of_source(s),
        _ => None,
    }
}
