//! The helm CLI: version check and `helm template`, run with an argv vector and a timeout.

use std::path::{Path, PathBuf};
use std::time::Duration;

use super::RenderError;
use crate::process;

/// How long `helm template` may take.
pub const HELM_TIMEOUT: Duration = Duration::from_secs(120);

/// The most `helm template` may print: far beyond any chart, so only a runaway is stopped.
const HELM_MAX_OUTPUT: usize = 256 << 20;

/// The oldest helm converge supports (server-side-apply friendly output, `--kube-version`).
pub const MIN_HELM: (u64, u64) = (3, 8);

/// A located helm binary.
#[derive(Debug, Clone)]
pub struct Helm {
    binary: PathBuf,
    /// The version, once checked: helm does not change under a running process.
    checked: std::sync::Arc<tokio::sync::OnceCell<String>>,
}

impl Helm {
    /// `$CONVERGE_HELM`, or `helm` on the PATH.
    pub fn from_env() -> Self {
        let binary = std::env::var_os("CONVERGE_HELM")
            .map(PathBuf::from)
            .unwrap_or_else(|| PathBuf::from("helm"));
        Self {
            binary,
            checked: Default::default(),
        }
    }

    /// A specific binary.
    pub fn at(binary: impl Into<PathBuf>) -> Self {
        Self {
            binary: binary.into(),
            checked: Default::default(),
        }
    }

    /// Identifies the binary for caches: its path, size and modification time.
    pub fn identity(&self) -> String {
        let meta = which(&self.binary).and_then(|p| std::fs::metadata(p).ok());
        match meta {
            Some(m) => format!(
                "{}:{}:{:?}",
                self.binary.display(),
                m.len(),
                m.modified().ok()
            ),
            None => self.binary.display().to_string(),
        }
    }

    /// Checks helm runs and is new enough; returns its version (`v3.22.0`).
    pub async fn check(&self) -> Result<String, RenderError> {
        let v = self
            .checked
            .get_or_try_init(|| self.check_uncached())
            .await?;
        Ok(v.clone())
    }

    async fn check_uncached(&self) -> Result<String, RenderError> {
        let out = run(
            &self.binary,
            &["version", "--template", "{{.Version}}"],
            None,
        )
        .await?;
        let version = out.trim().to_string();
        let parsed = parse_version(&version);
        match parsed {
            Some((major, minor)) if (major, minor) >= MIN_HELM => Ok(version),
            _ => Err(RenderError::HelmTooOld {
                found: version,
                binary: self.binary.clone(),
            }),
        }
    }

    /// Renders `chart` as `release` into `namespace` with the values files in order.
    pub async fn template(
        &self,
        release: &str,
        chart: &Path,
        namespace: &str,
        values: &[PathBuf],
        kube_version: Option<&str>,
    ) -> Result<String, RenderError> {
        let mut args: Vec<String> = vec![
            "template".into(),
            release.into(),
            chart.display().to_string(),
            "--namespace".into(),
            namespace.into(),
            "--include-crds".into(),
        ];
        if let Some(v) = kube_version {
            args.push("--kube-version".into());
            args.push(v.into());
        }
        for v in values {
            args.push("--values".into());
            args.push(v.display().to_string());
        }
        let argv: Vec<&str> = args.iter().map(String::as_str).collect();
        run(&self.binary, &argv, Some(chart)).await
    }
}

/// Finds `binary` on the PATH when it is a bare name.
fn which(binary: &Path) -> Option<PathBuf> {
    if binary.components().count() > 1 {
        return Some(binary.to_path_buf());
    }
    std::env::var_os("PATH").and_then(|paths| {
        std::env::split_paths(&paths)
            .map(|d| d.join(binary))
            .find(|p| p.is_file())
    })
}

fn parse_version(v: &str) -> Option<(u64, u64)> {
    let mut parts = v.trim_start_matches('v').split('.');
    let major = parts.next()?.parse().ok()?;
    let minor = parts.next()?.parse().ok()?;
    Some((major, minor))
}

async fn run(binary: &Path, args: &[&str], cwd: Option<&Path>) -> Result<String, RenderError> {
    let mut cmd = process::Command::new(binary, HELM_TIMEOUT)
        .args(args)
        // helm must not reach a cluster or the network while rendering.
        .env("HELM_NO_PLUGINS", "1")
        .capture_limit(HELM_MAX_OUTPUT);
    if let Some(dir) = cwd.and_then(Path::parent) {
        cmd = cmd.current_dir(dir);
    }
    let helm = |command: &str, status: Option<i32>, stderr: String| RenderError::Helm {
        command: command.to_string(),
        status,
        stderr,
    };
    let out = cmd.run().await.map_err(|e| match e {
        e if e.is_not_found() => RenderError::HelmMissing {
            binary: binary.to_path_buf(),
        },
        process::Error::Failed {
            command,
            status,
            stderr,
        } => helm(&command, status.code(), stderr),
        process::Error::Timeout { command, timeout } => helm(
            &command,
            None,
            format!("no result within {}s", timeout.as_secs()),
        ),
        process::Error::Spawn {
            command, source, ..
        }
        | process::Error::Io { command, source } => helm(&command, None, source.to_string()),
        e @ process::Error::Cancelled { .. } => helm(e.command(), None, e.to_string()),
    })?;
    if out.truncated {
        // A cut manifest stream must never be applied as if it were whole.
        return Err(helm(
            &out.command,
            None,
            format!("printed more than {} MiB", HELM_MAX_OUTPUT >> 20),
        ));
    }
    Ok(out.stdout)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn versions_parse_with_or_without_v() {
        assert_eq!(parse_version("v3.22.0"), Some((3, 22)));
        assert_eq!(parse_version("3.8.1+g1"), Some((3, 8)));
        assert!(parse_version("v3.7.0").unwrap() < MIN_HELM);
        assert_eq!(parse_version("garbage"), None);
    }
}
