//! The `command` builder: a user's template (`--command`), run as an argv without a shell, with
//! an optional existence check (`--exists-command`).

use std::collections::HashSet;
use std::path::Path;
use std::sync::Mutex;

use tokio::sync::watch;

use super::{export, failed, BuildRequest, BuildResult, Engine, EngineCalls, Existence, Tool};
use crate::build::BuildError;

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

fn split_argv(argv: &[String]) -> Result<(&str, &[String]), BuildError> {
    argv.split_first()
        .map(|(p, a)| (p.as_str(), a))
        .ok_or(BuildError::MissingCommandTemplate)
}

impl Engine {
    /// The exists command's answer for `image`, or `Unknown` without one; a tag this process
    /// built is there.
    pub(super) async fn command_exists(
        &self,
        exists: Option<&str>,
        built: &Mutex<HashSet<String>>,
        image: &str,
        cancel: &watch::Receiver<bool>,
    ) -> Result<Existence, BuildError> {
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

    /// Runs the template on the exported context.
    #[allow(clippy::too_many_arguments)] // the build's inputs plus the template and its memory
    pub(super) async fn command_build(
        &self,
        template: &str,
        built: &Mutex<HashSet<String>>,
        req: &BuildRequest<'_>,
        repo_path: &Path,
        commit: &str,
        spec: &crate::desired::BuildSpec,
        cancel: &watch::Receiver<bool>,
    ) -> Result<BuildResult, BuildError> {
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
        Ok(failed(out))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::build::engine::tests::req;

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
}
