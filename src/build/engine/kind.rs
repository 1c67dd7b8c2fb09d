//! The `kind` builder: Docker builds, then `kind load docker-image` into the kind cluster of the
//! context; the node is asked with `ctr` inside its control-plane container.

use tokio::sync::watch;

use super::containerd::normalized_reference;
use super::{load_failed, BuildResult, DockerCli, Engine, Loader, Tool};
use crate::build::BuildError;

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

impl Engine {
    /// `kind load docker-image` from `cli`'s engine into the kind cluster `cluster`.
    pub(super) async fn kind_load(
        &self,
        loader: &Loader,
        cluster: &str,
        cli: &DockerCli,
        image: &str,
        cancel: &watch::Receiver<bool>,
    ) -> Result<BuildResult, BuildError> {
        let args = kind_load_args(cluster, image);
        let out = Tool {
            program: "kind",
            env: &cli.env,
            host: &loader.describe(),
        }
        .run(&args, None, self.build_timeout, cancel, image)
        .await?;
        if !out.status.success() {
            return Ok(load_failed(loader, "kind load docker-image", out));
        }
        Ok(BuildResult::Built)
    }
}
