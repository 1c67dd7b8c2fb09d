//! Removing old content tags: all but the newest N per repository, never a protected tag (the
//! last healthy commit's) nor one a container uses. [`prune_decision`] is the pure rule;
//! [`prune_old`] asks the engine and carries it out.

use std::collections::HashSet;

use serde::Serialize;
use tokio::sync::watch;

use super::engine::{self, Engine};
use super::{BuildError, BuildOptions};

/// What [`prune_old`] did.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct PruneReport {
    /// Tags removed.
    pub removed: Vec<String>,
    /// Old tags kept because they are protected.
    pub protected: Vec<String>,
    /// Old tags kept because a container uses them.
    pub in_use: Vec<String>,
    /// Old tags whose removal the engine refused, with its reason.
    pub failed: Vec<(String, String)>,
}

/// One tag of a repository, as `docker image ls` lists it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ListedImage {
    /// `repository:tag`.
    pub reference: String,
    /// The image id (short).
    pub id: String,
    /// Docker's `CreatedAt` text, e.g. `2026-11-21 23:22:59 +0000 UTC`.
    pub created: String,
}

/// Parses `docker image ls --format '{{.Repository}}:{{.Tag}}\t{{.ID}}\t{{.CreatedAt}}'` output.
pub fn parse_image_list(text: &str) -> Vec<ListedImage> {
    text.lines()
        .filter_map(|l| {
            let mut parts = l.split('\t');
            let (r, id, c) = (parts.next()?, parts.next()?, parts.next()?);
            (!r.ends_with(":<none>")).then(|| ListedImage {
                reference: r.to_string(),
                id: id.to_string(),
                created: c.to_string(),
            })
        })
        .collect()
}

fn created_key(created: &str) -> i64 {
    // `2026-11-21 23:22:59 +0000 UTC`: the trailing zone name is not parseable, the offset is.
    let head: String = created.split(' ').take(3).collect::<Vec<_>>().join(" ");
    chrono::DateTime::parse_from_str(&head, "%Y-%m-%d %H:%M:%S %z")
        .map(|t| t.timestamp())
        .unwrap_or(0)
}

/// Decides which tags to remove: all but the newest `keep` per repository, never a protected tag
/// or one a container uses (by reference or image id). Pure, for testing.
pub fn prune_decision(
    images: &[ListedImage],
    keep: usize,
    protect: &HashSet<String>,
    used: &HashSet<String>,
) -> (Vec<String>, Vec<String>, Vec<String>) {
    let mut sorted: Vec<&ListedImage> = images.iter().collect();
    sorted.sort_by(|a, b| {
        created_key(&b.created)
            .cmp(&created_key(&a.created))
            .then(a.reference.cmp(&b.reference))
    });
    let (mut remove, mut protected, mut in_use) = (Vec::new(), Vec::new(), Vec::new());
    for img in sorted.into_iter().skip(keep) {
        let short_id = img.id.trim_start_matches("sha256:");
        let used_by_container = used.contains(&img.reference)
            || used.iter().any(|u| {
                let u = u.trim_start_matches("sha256:");
                u.len() >= 12 && (u.starts_with(short_id) || short_id.starts_with(u))
            });
        if protect.contains(&img.reference) {
            protected.push(img.reference.clone());
        } else if used_by_container {
            in_use.push(img.reference.clone());
        } else {
            remove.push(img.reference.clone());
        }
    }
    (remove, protected, in_use)
}

/// Removes old content tags of `repositories` from the engine of `opts`, keeping the newest
/// `opts.keep` per repository (by image creation time), every tag in `protect` (the last healthy
/// commit's) and every image a container uses. Only untags (`docker rmi` without force). A no-op
/// for the `command` and `none` builders and for minikube runtimes other than Docker.
pub async fn prune_old(
    opts: &BuildOptions,
    repositories: &[String],
    protect: &[String],
    cancel: watch::Receiver<bool>,
) -> Result<PruneReport, BuildError> {
    let engine = Engine::new(opts)?;
    prune_old_with(&engine, opts.keep, repositories, protect, cancel).await
}

/// [`prune_old`] on a given engine.
pub async fn prune_old_with(
    engine: &Engine,
    keep: usize,
    repositories: &[String],
    protect: &[String],
    cancel: watch::Receiver<bool>,
) -> Result<PruneReport, BuildError> {
    let mut report = PruneReport::default();
    let Some(cli) = engine.docker_cli(&cancel).await? else {
        tracing::debug!(builder = ?engine.builder(), "image pruning needs a Docker engine; skipped");
        return Ok(report);
    };
    // Stopped containers count too: `docker rmi` would refuse their images anyway.
    let ps = ["ps", "-a", "-q", "--no-trunc"].map(String::from).to_vec();
    let out = engine.docker_other(&cli, &ps, &cancel).await?;
    check_status(&cli, &ps, &out)?;
    let ids: Vec<String> = out.stdout.split_whitespace().map(String::from).collect();
    let mut used: HashSet<String> = HashSet::new();
    if !ids.is_empty() {
        // The reference a container was created from, and the image id it runs.
        let mut inspect = [
            "container",
            "inspect",
            "--format",
            "{{.Config.Image}}\t{{.Image}}",
        ]
        .map(String::from)
        .to_vec();
        inspect.extend(ids);
        let out = engine.docker_other(&cli, &inspect, &cancel).await?;
        check_status(&cli, &inspect, &out)?;
        used = out
            .stdout
            .lines()
            .flat_map(|l| l.split('\t'))
            .filter(|s| !s.is_empty())
            .map(|s| {
                if s.contains(':') {
                    s.to_string()
                } else {
                    format!("{s}:latest")
                }
            })
            .collect();
    }
    let protect: HashSet<String> = protect.iter().cloned().collect();
    for repo in repositories {
        let ls = [
            "image",
            "ls",
            "--no-trunc",
            "--format",
            "{{.Repository}}:{{.Tag}}\t{{.ID}}\t{{.CreatedAt}}",
            repo.as_str(),
        ]
        .map(String::from)
        .to_vec();
        let out = engine.docker_other(&cli, &ls, &cancel).await?;
        // A listing that failed is an error, never "nothing to prune".
        check_status(&cli, &ls, &out)?;
        let images = parse_image_list(&out.stdout);
        let (remove, protected, in_use) = prune_decision(&images, keep, &protect, &used);
        report.protected.extend(protected);
        report.in_use.extend(in_use);
        for r in remove {
            let rmi = vec!["rmi".to_string(), r.clone()];
            let out = engine.docker_other(&cli, &rmi, &cancel).await?;
            if out.status.success() {
                tracing::info!(image = %r, "removed old image tag");
                report.removed.push(r);
            } else {
                let why = out.stderr.lines().last().unwrap_or("").to_string();
                tracing::warn!(image = %r, reason = %why, "could not remove old image tag");
                report.failed.push((r, why));
            }
        }
    }
    Ok(report)
}

fn check_status(
    cli: &engine::DockerCli,
    args: &[String],
    out: &crate::process::Output,
) -> Result<(), BuildError> {
    if out.status.success() {
        return Ok(());
    }
    let detail = out.stderr.lines().last().unwrap_or("").to_string();
    if engine::looks_unreachable(&out.stderr) {
        return Err(BuildError::Unreachable {
            host: cli.host().to_string(),
            detail,
            hint: engine::UNREACHABLE_HINT.into(),
        });
    }
    Err(BuildError::Engine {
        command: format!("docker {}", args.first().map(String::as_str).unwrap_or("")),
        status: out.status.to_string(),
        detail,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn img(r: &str, id: &str, created: &str) -> ListedImage {
        ListedImage {
            reference: r.into(),
            id: id.into(),
            created: created.into(),
        }
    }

    #[test]
    fn pruning_keeps_the_newest_n_protected_and_used_tags() {
        let images = vec![
            img(
                "app:a",
                "sha256:aaaaaaaaaaaa1",
                "2026-01-01 00:00:01 +0000 UTC",
            ),
            img(
                "app:b",
                "sha256:bbbbbbbbbbbb1",
                "2026-01-01 00:00:02 +0000 UTC",
            ),
            img(
                "app:c",
                "sha256:cccccccccccc1",
                "2026-01-01 00:00:03 +0000 UTC",
            ),
            img(
                "app:d",
                "sha256:dddddddddddd1",
                "2026-01-01 00:00:04 +0000 UTC",
            ),
            img(
                "app:e",
                "sha256:eeeeeeeeeeee1",
                "2026-01-01 00:00:05 +0000 UTC",
            ),
        ];
        let protect: HashSet<String> = ["app:a".to_string()].into();
        let used: HashSet<String> = ["sha256:bbbbbbbbbbbb".to_string()].into();
        let (remove, protected, in_use) = prune_decision(&images, 2, &protect, &used);
        assert_eq!(remove, vec!["app:c"]);
        assert_eq!(protected, vec!["app:a"]);
        assert_eq!(in_use, vec!["app:b"]);
    }

    #[test]
    fn image_lists_skip_untagged_images() {
        let list = parse_image_list("app:x\tsha256:1\t2026-01-01 00:00:01 +0000 UTC\napp:<none>\tsha256:2\t2026-01-01 00:00:01 +0000 UTC\n");
        assert_eq!(list.len(), 1);
        assert_eq!(created_key(&list[0].created), 1767225601);
    }
}
