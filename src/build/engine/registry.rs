//! The `registry` builder: BuildKit's `buildctl build` with the Dockerfile frontend, pushing
//! `<prefix>/<repository>:<tag>` to a registry the cluster pulls from; whether a tag exists is
//! asked of the registry itself (a manifest HEAD, `crate::build::registry`), so an image pushed
//! before, by any machine, is never built again. `buildctl` reads the same Docker config for its
//! push (its build command loads `config.LoadDefaultConfigFile` into the session's auth
//! provider), so both use one login.

use std::path::Path;

use tokio::sync::watch;

use super::{export, last_line, BuildRequest, BuildResult, Engine, EngineCalls, Existence, Tool};
use crate::build::registry::{ImageName, Manifest, Registry};
use crate::build::BuildError;

/// buildctl's default address when neither `--addr` nor `BUILDKIT_HOST` is given
/// (`appdefaults.Address` on Linux).
pub const BUILDKIT_DEFAULT_ADDRESS: &str = "unix:///run/buildkit/buildkitd.sock";

/// The one-line fix for a BuildKit daemon that does not answer.
pub fn buildkit_hint(address: &str) -> String {
    format!("start buildkitd listening on {address} (`buildctl --addr {address} debug workers` must answer), or point `registry.buildkit`, --buildkit-addr or BUILDKIT_HOST at a running one")
}

/// Where `buildctl` points, for messages: the address given, else buildctl's own default.
pub fn buildkit_address(addr: Option<&str>) -> String {
    match addr {
        Some(a) => format!("{a} (BuildKit)"),
        None => format!("{BUILDKIT_DEFAULT_ADDRESS} (BuildKit, buildctl's default)"),
    }
}

fn addr_args(addr: Option<&str>) -> Vec<String> {
    addr.map(|a| vec!["--addr".to_string(), a.to_string()])
        .unwrap_or_default()
}

/// Arguments of `buildctl build` with the Dockerfile frontend: the exported context and the
/// Dockerfile's directory as local sources, the options as `--opt`, and an image output pushed
/// to `req.image`; the pushed manifest's digest is written to `metadata` as JSON.
pub fn buildctl_build_args(
    addr: Option<&str>,
    req: &BuildRequest<'_>,
    context: &Path,
    dockerfile: &Path,
    metadata: &Path,
) -> Vec<String> {
    let dir = dockerfile.parent().unwrap_or(context);
    let filename = dockerfile
        .file_name()
        .map(|f| f.to_string_lossy().into_owned())
        .unwrap_or_else(|| "Dockerfile".into());
    let mut a = addr_args(addr);
    a.extend([
        "build".into(),
        "--progress".into(),
        "plain".into(),
        "--frontend".into(),
        "dockerfile.v0".into(),
        "--local".into(),
        format!("context={}", context.to_string_lossy()),
        "--local".into(),
        format!("dockerfile={}", dir.to_string_lossy()),
        "--opt".into(),
        format!("filename={filename}"),
    ]);
    if let Some(t) = req.target {
        a.extend(["--opt".into(), format!("target={t}")]);
    }
    if let Some(p) = req.platform {
        a.extend(["--opt".into(), format!("platform={p}")]);
    }
    for (k, v) in &req.args {
        a.extend(["--opt".into(), format!("build-arg:{k}={v}")]);
    }
    a.extend([
        "--output".into(),
        format!("type=image,name={},push=true", req.image),
        "--metadata-file".into(),
        metadata.to_string_lossy().into_owned(),
    ]);
    a
}

/// Arguments of `buildctl debug workers`: answers only when the daemon does.
pub fn buildctl_workers_args(addr: Option<&str>) -> Vec<String> {
    let mut a = addr_args(addr);
    a.extend(["debug".into(), "workers".into()]);
    a
}

/// Whether buildctl's stderr means no BuildKit daemon answered, rather than that the build
/// failed: the first call of a build lists the workers (client/build.go: `listing workers for
/// Build`, client/workers.go: `failed to list workers`), and it fails with gRPC's dial error
/// (`transport: Error while dialing`, shown by buildkit's grpcerrors as `Unavailable:
/// connection error: …`) when nothing listens, or with another code when something that is not
/// buildkitd answers; `failed to dial … make sure buildkitd is running` is the client's own.
/// A registry that cannot be reached while pulling a base image or pushing is the build's
/// failure: buildkitd answered (`failed to solve: …`).
pub fn buildkit_unreachable(stderr: &str) -> bool {
    stderr.lines().any(|l| {
        l.contains("make sure buildkitd is running")
            || l.contains("transport: Error while dialing")
            || l.contains("Unavailable: connection error")
            || l.contains("failed to list workers")
    })
}

/// The step a failed `buildctl build --progress plain` stopped at and why: the vertex named by
/// the `#N ERROR: …` line (`#N [stage k/n] …`), and the final `error: …` line.
pub fn buildctl_failure_reason(tail: &[String]) -> String {
    let last = tail
        .iter()
        .rev()
        .find_map(|l| l.trim().strip_prefix("error: "))
        .map(str::to_string)
        .or_else(|| {
            tail.iter()
                .rev()
                .map(|l| l.trim())
                .find(|l| !l.is_empty())
                .map(str::to_string)
        })
        .unwrap_or_else(|| "the build failed without output".into());
    let failed_vertex = tail.iter().rev().find_map(|l| {
        let rest = l.strip_prefix('#')?;
        let (n, msg) = rest.split_once(' ')?;
        msg.starts_with("ERROR:").then(|| n.to_string())
    });
    let step = failed_vertex.and_then(|n| {
        let prefix = format!("#{n} ");
        tail.iter()
            .find(|l| l.starts_with(&prefix) && l[prefix.len()..].starts_with('['))
            .map(|l| l[prefix.len()..].trim().to_string())
    });
    match step {
        Some(step) => format!("{step}: {last}"),
        None => last,
    }
}

/// buildctl's last line without the `error: ` its `handleErr` puts before it.
fn buildctl_error(stderr: &str) -> String {
    let line = last_line(stderr);
    line.strip_prefix("error: ")
        .map(str::to_string)
        .unwrap_or(line)
}

/// The manifest digest buildctl's `--metadata-file` records (`containerimage.digest`).
pub fn pushed_digest(metadata: &str) -> Option<String> {
    serde_json::from_str::<serde_json::Value>(metadata)
        .ok()?
        .get("containerimage.digest")?
        .as_str()
        .map(str::to_string)
}

impl Engine {
    /// A manifest HEAD on the registry `image` names.
    pub(super) async fn registry_exists(
        &self,
        registry: &Registry,
        image: &str,
    ) -> Result<Existence, BuildError> {
        let name = ImageName::parse(image).ok_or_else(|| BuildError::InvalidContext {
            component: String::new(),
            message: format!("`{image}` does not name a registry host and tag"),
        })?;
        EngineCalls::bump(&self.calls.checks);
        Ok(match registry.manifest(&name).await? {
            Manifest::Present(_) => Existence::Present,
            Manifest::Missing => Existence::Missing,
        })
    }

    /// `buildctl build` of the exported context, pushing `req.image`.
    #[allow(clippy::too_many_arguments)] // the build's inputs plus where buildctl points
    pub(super) async fn registry_build(
        &self,
        buildkit: Option<&str>,
        env: &[(String, String)],
        req: &BuildRequest<'_>,
        repo_path: &Path,
        commit: &str,
        spec: &crate::desired::BuildSpec,
        cancel: &watch::Receiver<bool>,
    ) -> Result<BuildResult, BuildError> {
        let ctx = export(repo_path, commit, req.component, spec).await?;
        let meta_dir = tempfile::Builder::new()
            .prefix("converge-buildctl-")
            .tempdir()
            .map_err(|source| BuildError::Io {
                what: "creating a temporary directory for buildctl's metadata".into(),
                source,
            })?;
        let metadata = meta_dir.path().join("metadata.json");
        let args = buildctl_build_args(buildkit, req, ctx.path(), &ctx.dockerfile, &metadata);
        let host = buildkit_address(buildkit);
        EngineCalls::bump(&self.calls.builds);
        EngineCalls::bump(&self.calls.pushes);
        let out = Tool {
            program: "buildctl",
            env,
            host: &host,
        }
        .run(&args, None, self.build_timeout, cancel, req.image)
        .await?;
        if !out.status.success() {
            if buildkit_unreachable(&out.stderr) {
                return Err(BuildError::Unreachable {
                    host,
                    detail: buildctl_error(&out.stderr),
                    hint: buildkit_hint(buildkit.unwrap_or(BUILDKIT_DEFAULT_ADDRESS)),
                });
            }
            let reason = buildctl_failure_reason(&out.tail);
            return Ok(BuildResult::Failed {
                tail: out.tail,
                reason,
            });
        }
        let digest = std::fs::read_to_string(&metadata)
            .ok()
            .and_then(|m| pushed_digest(&m));
        tracing::info!(image = %req.image, digest = digest.as_deref().unwrap_or("unknown"), "image pushed");
        Ok(BuildResult::Built)
    }

    /// `buildctl debug workers`: `Ok` when the daemon answers (`converge doctor`).
    pub async fn buildkit_answers(&self, cancel: &watch::Receiver<bool>) -> Result<(), BuildError> {
        let super::Kind::Registry { buildkit, env, .. } = &self.kind else {
            return Ok(());
        };
        let buildkit = buildkit.as_deref();
        let host = buildkit_address(buildkit);
        EngineCalls::bump(&self.calls.other);
        let out = Tool {
            program: "buildctl",
            env,
            host: &host,
        }
        .run(
            &buildctl_workers_args(buildkit),
            None,
            self.check_timeout,
            cancel,
            "buildctl debug workers",
        )
        .await?;
        if out.status.success() {
            return Ok(());
        }
        Err(BuildError::Unreachable {
            host,
            detail: buildctl_error(&out.stderr),
            hint: buildkit_hint(buildkit.unwrap_or(BUILDKIT_DEFAULT_ADDRESS)),
        })
    }

    /// `GET /v2/` on the prefix's registry with the login converge has for it (`converge
    /// doctor`); `Ok(None)` for another builder.
    pub async fn registry_answers(&self) -> Result<Option<String>, BuildError> {
        let super::Kind::Registry {
            registry, prefix, ..
        } = &self.kind
        else {
            return Ok(None);
        };
        let host = prefix.split('/').next().unwrap_or(prefix);
        registry.ping(host).await?;
        Ok(Some(host.to_string()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::build::engine::tests::req;

    #[test]
    fn buildctl_build_argv_uses_the_dockerfile_frontend_and_pushes_the_image() {
        let mut r = req();
        r.image = "registry.local:5000/team/shop-api:0123456789ab";
        let args = buildctl_build_args(
            Some("tcp://buildkitd:1234"),
            &r,
            Path::new("/tmp/ctx"),
            Path::new("/tmp/ctx/docker/Dockerfile"),
            Path::new("/tmp/m/metadata.json"),
        );
        assert_eq!(
            args,
            [
                "--addr",
                "tcp://buildkitd:1234",
                "build",
                "--progress",
                "plain",
                "--frontend",
                "dockerfile.v0",
                "--local",
                "context=/tmp/ctx",
                "--local",
                "dockerfile=/tmp/ctx/docker",
                "--opt",
                "filename=Dockerfile",
                "--opt",
                "target=prod",
                "--opt",
                "platform=linux/amd64",
                "--opt",
                "build-arg:A=1",
                "--opt",
                "build-arg:B=two words",
                "--output",
                "type=image,name=registry.local:5000/team/shop-api:0123456789ab,push=true",
                "--metadata-file",
                "/tmp/m/metadata.json",
            ]
        );
        assert_eq!(
            buildctl_workers_args(None),
            ["debug", "workers"],
            "without an address buildctl uses BUILDKIT_HOST or its default"
        );
        assert_eq!(
            buildctl_workers_args(Some("unix:///run/b.sock")),
            ["--addr", "unix:///run/b.sock", "debug", "workers"]
        );
    }

    #[test]
    fn a_buildkitd_that_does_not_answer_is_told_apart_from_a_failed_build() {
        // buildctl v0.34.2's stderr, as run against a closed port, a missing socket and an
        // address where an HTTP server that is not buildkitd answers (buildctl's handleErr
        // prints "error: %v"; grpcerrors shows a status as "<Code>: <message>").
        let refused = "error: listing workers for Build: failed to list workers: Unavailable: connection error: desc = \"transport: Error while dialing: dial tcp 127.0.0.1:1: connect: connection refused\"";
        assert!(buildkit_unreachable(refused));
        let workers = "error: failed to list workers: Unavailable: connection error: desc = \"transport: Error while dialing: dial tcp 127.0.0.1:1: connect: connection refused\"";
        assert!(buildkit_unreachable(workers));
        let no_socket = "error: failed to list workers: Unavailable: connection error: desc = \"transport: Error while dialing: dial unix /tmp/nonexistent.sock: connect: no such file or directory\"";
        assert!(buildkit_unreachable(no_socket));
        let not_buildkit = "error: listing workers for Build: failed to list workers: Unimplemented: unexpected HTTP status code received from server: 404 (Not Found); malformed header: missing HTTP content-type";
        assert!(buildkit_unreachable(not_buildkit));
        // client/client.go: errors.Wrapf(err, "failed to dial %q . make sure buildkitd is running", address)
        assert!(buildkit_unreachable(
            "error: failed to dial \"x:1\" . make sure buildkitd is running: context deadline exceeded"
        ));
        // buildkitd answered: a base image or the push could not be reached, the Dockerfile
        // is wrong. Those are the build's failures.
        for answered in [
            "error: failed to solve: failed to resolve source metadata for docker.io/library/alpine:3: dial tcp: lookup registry-1.docker.io: no such host",
            "error: failed to solve: failed to push registry.local:5000/app:1: failed to authorize: failed to fetch anonymous token: unexpected status from GET request to https://registry.local:5000/token: 401 Unauthorized",
            "error: failed to solve: dockerfile parse error on line 1: unknown instruction: FORM",
        ] {
            assert!(!buildkit_unreachable(answered), "{answered}");
        }
    }

    #[test]
    fn the_failure_reason_names_the_failing_step_from_plain_progress() {
        // util/progress/progressui/printer.go: "#%d %s" for a vertex, "#%d ERROR: %s" when it fails.
        let tail: Vec<String> = [
            "#5 [1/2] FROM registry.local:5000/library/alpine:3.20",
            "#5 DONE 0.1s",
            "#6 [2/2] RUN false",
            "#6 ERROR: process \"/bin/sh -c false\" did not complete successfully: exit code: 1",
            "------",
            " > [2/2] RUN false:",
            "------",
            "Dockerfile:2",
            "error: failed to solve: process \"/bin/sh -c false\" did not complete successfully: exit code: 1",
        ]
        .map(String::from)
        .to_vec();
        assert_eq!(
            buildctl_failure_reason(&tail),
            "[2/2] RUN false: failed to solve: process \"/bin/sh -c false\" did not complete successfully: exit code: 1"
        );
        assert_eq!(
            buildctl_failure_reason(&["error: failed to solve: x".to_string()]),
            "failed to solve: x"
        );
        assert_eq!(
            buildctl_failure_reason(&[]),
            "the build failed without output"
        );
    }

    #[test]
    fn the_pushed_digest_is_read_from_the_metadata_file() {
        assert_eq!(
            pushed_digest(r#"{"containerimage.digest":"sha256:abc","image.name":"r/x:1"}"#),
            Some("sha256:abc".into())
        );
        assert_eq!(pushed_digest("{}"), None);
        assert_eq!(pushed_digest("not json"), None);
    }

    #[test]
    fn the_unreachable_hint_names_the_address_and_the_fix() {
        let h = buildkit_hint("tcp://127.0.0.1:1");
        assert!(
            h.contains("tcp://127.0.0.1:1") && h.contains("BUILDKIT_HOST"),
            "{h}"
        );
        assert_eq!(
            buildkit_address(None),
            "unix:///run/buildkit/buildkitd.sock (BuildKit, buildctl's default)"
        );
    }
}
