//! The `minikube` builder: into minikube's runtime through `minikube docker-env`; where minikube
//! refuses it, the local Docker engine and `minikube image load`, or `minikube image build`, each
//! verified with `minikube image ls`. What minikube's answers mean is `crate::build::minikube`.

use std::path::Path;

use tokio::sync::watch;

use super::{
    export, failed, failure_reason, BuildRequest, BuildResult, DockerCli, Engine, EngineCalls,
    Existence, Kind, Tool,
};
use crate::build::minikube::{self, Answer, BuildDialect, DockerEnv, Fallback, Profile, Refusal};
use crate::build::BuildError;

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

/// How a minikube engine reaches the cluster's runtime, decided once from `minikube docker-env`.
#[derive(Debug, Clone)]
pub(super) enum MinikubeMode {
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

impl Engine {
    /// How images reach minikube, decided once: `minikube docker-env` by its exit code (0 →
    /// its Docker; 51/81/14 refused → the fallback; 85, 83, … → a failure naming the fix), then
    /// for the fallback whether a Docker engine answers here, then (for `minikube image build`)
    /// the node's runtime from `minikube profile list`.
    pub(super) async fn minikube_mode(
        &self,
        cancel: &watch::Receiver<bool>,
    ) -> Result<MinikubeMode, BuildError> {
        let Kind::Minikube {
            profile,
            local,
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
            let local = local.clone();
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
    pub(super) async fn minikube_build(
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

    /// After a build on the local engine: `minikube image load` when minikube refused
    /// `docker-env` and a Docker engine here built; nothing to do otherwise.
    pub(super) async fn minikube_load_built(
        &self,
        profile: &Profile,
        image: &str,
        cancel: &watch::Receiver<bool>,
    ) -> Result<BuildResult, BuildError> {
        match self.minikube_mode(cancel).await? {
            MinikubeMode::Load { cli } => self.minikube_load(profile, &cli, image, cancel).await,
            MinikubeMode::Docker(_) | MinikubeMode::Build { .. } => Ok(BuildResult::Built),
        }
    }

    /// Whether minikube's runtime (or, for the fallback, the local engine) has `image`.
    pub(super) async fn minikube_exists(
        &self,
        profile: &Profile,
        image: &str,
        cancel: &watch::Receiver<bool>,
    ) -> Result<Existence, BuildError> {
        match self.minikube_mode(cancel).await? {
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
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::build::engine::tests::req;

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
}
