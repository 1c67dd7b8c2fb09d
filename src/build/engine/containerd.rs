//! The `containerd` builder: Docker builds, then `docker save` and `ctr images import` into a
//! containerd the node runs on this machine (`CONTAINERD_ADDRESS`); and the names a CRI runtime
//! files images under, which `ctr` and the kubelet use.

use std::path::Path;

use tokio::sync::watch;

use super::{load_failed, BuildResult, DockerCli, Engine, Loader, Tool};
use crate::build::BuildError;

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

impl Engine {
    /// `docker save` from `cli`'s engine, then `ctr images import` into the node's containerd.
    pub(super) async fn containerd_load(
        &self,
        loader: &Loader,
        address: &str,
        namespace: &str,
        cli: &DockerCli,
        image: &str,
        cancel: &watch::Receiver<bool>,
    ) -> Result<BuildResult, BuildError> {
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
            return Ok(load_failed(loader, "docker save", out));
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
            return Ok(load_failed(loader, "ctr images import", out));
        }
        Ok(BuildResult::Built)
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
}
