//! The `docker` builder: the Docker CLI with a fixed environment (also what `kind`, `containerd`
//! and minikube's `docker-env` build with), its argv, and how its output is read (an unreachable
//! engine, a failed build's step).

use std::path::Path;

use tokio::sync::watch;

use super::{
    failed, last_line, BuildRequest, BuildResult, Engine, EngineCalls, Existence, Kind, Tool,
};
use crate::build::{BuildError, BuildOptions};
use crate::process::Output;

/// The hint printed with every unreachable-engine error.
pub const UNREACHABLE_HINT: &str = "start the engine, point DOCKER_HOST at it, or for minikube run `eval $(minikube docker-env)` (or use `--builder minikube`)";

/// The Docker CLI with a fixed environment (the host it talks to).
#[derive(Debug, Clone)]
pub struct DockerCli {
    pub(super) program: String,
    pub(super) env: Vec<(String, String)>,
    /// What is shown in errors: the `DOCKER_HOST` tried, or the default socket.
    pub(super) host: String,
}

impl DockerCli {
    /// The CLI aimed at `opts.docker_host` (`--docker-host`), else at the environment's
    /// `DOCKER_HOST` (which the CLI inherits), else at the default socket.
    pub fn new(opts: &BuildOptions) -> Self {
        let mut env = Vec::new();
        let host = match &opts.docker_host {
            Some(h) => {
                env.push(("DOCKER_HOST".to_string(), h.to_string()));
                h.to_string()
            }
            None => opts
                .env
                .docker_host
                .as_ref()
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

    pub(super) fn with_env(env: Vec<(String, String)>, origin: &str) -> Self {
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

    pub(super) fn tool(&self) -> Tool<'_> {
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

impl Engine {
    /// `docker image inspect` on `cli`'s engine.
    pub(super) async fn docker_exists(
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

    /// Builds `req` on `cli`'s engine from the context archive, then pushes (`image.build.push`,
    /// the docker builder only) or loads it into the node (a loader, or minikube's fallback).
    pub(super) async fn docker_build(
        &self,
        cli: &DockerCli,
        req: &BuildRequest<'_>,
        repo_path: &Path,
        commit: &str,
        spec: &crate::desired::BuildSpec,
        cancel: &watch::Receiver<bool>,
    ) -> Result<BuildResult, BuildError> {
        let (repo, commit_s, component) = (
            repo_path.to_path_buf(),
            commit.to_string(),
            req.component.to_string(),
        );
        let spec_c = spec.clone();
        let (tar, dockerfile) = tokio::task::spawn_blocking(move || {
            crate::build::context::tar_context(&repo, &commit_s, &component, &spec_c)
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::build::engine::tests::req;

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
