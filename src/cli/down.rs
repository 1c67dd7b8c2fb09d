//! `converge down`: take a stack out of the cluster from its in-cluster inventory; the
//! repository is only consulted to learn the stack's namespace and context, never required.

use std::collections::BTreeMap;
use std::time::Duration;

use clap::Args;

use super::{Format, SourceArgs, EXIT_ERROR, EXIT_FINDINGS, EXIT_OK};
use crate::cluster::teardown::{self, DownReport, TeardownOptions};
use crate::cluster::{Cluster, ClusterError};

/// Arguments of `converge down`.
#[derive(Debug, Args)]
pub struct DownArgs {
    #[command(flatten)]
    source: SourceArgs,
    #[command(flatten)]
    target: super::StackArgs,
    /// Also delete PersistentVolumeClaims (the data in them is lost).
    #[arg(long)]
    volumes: bool,
    /// How long to wait for everything to be gone.
    #[arg(long, default_value = "5m", value_parser = humantime::parse_duration)]
    timeout: Duration,
    /// Output format.
    #[arg(short, long, value_enum, default_value_t = Format::Text)]
    output: Format,
}

/// One stack to take down.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Target {
    /// The stack's name.
    pub stack: String,
    /// Its directory in the repository (empty when it was not read).
    pub dir: String,
    /// Its namespace; `None` means "find it in the cluster".
    pub namespace: Option<String>,
    /// The kube context; `None` is the kubeconfig's current one.
    pub context: Option<String>,
    /// Components the desired state names, with their Secret references (empty without one).
    pub components: BTreeMap<String, Vec<crate::explain::SecretRef>>,
}

/// Which stacks `down` is about: from the flags alone, else from the repository's desired state,
/// else (a repository without the stack, or none) by `--stack` in the cluster.
/// [`targets`] for a command's `StackArgs`, printing why it failed (exit code 2).
pub(crate) fn resolve_targets(
    source: &SourceArgs,
    target: &super::StackArgs,
) -> Result<Vec<Target>, u8> {
    targets(
        source,
        target.stack.as_deref(),
        target.namespace.as_deref(),
        target.context.as_deref(),
    )
    .map_err(|why| {
        errln!("error: {why}");
        EXIT_ERROR
    })
}

pub(crate) fn targets(
    source: &SourceArgs,
    stack: Option<&str>,
    namespace: Option<&str>,
    context: Option<&str>,
) -> Result<Vec<Target>, String> {
    // Named by the flags alone: what the cluster's records say, when the repository does not.
    let by_name = |w: &str| Target {
        stack: w.into(),
        dir: String::new(),
        namespace: namespace.map(str::to_string),
        context: context.map(str::to_string),
        components: BTreeMap::new(),
    };
    let every = crate::reconcile::Selection {
        dir: source.dir.clone(),
        stack: None,
        namespace: None,
    };
    let from_repo = crate::reconcile::load(
        &source.repo,
        &source.rev,
        &every,
        crate::reconcile::Images::Skip,
    )
    .map(|c| c.stacks.into_iter().map(|p| p.stack).collect::<Vec<_>>())
    .map_err(|e| match e {
        crate::error::Error::Invalid { .. } => "the desired state does not validate".to_string(),
        other => other.to_string(),
    });
    let stacks = match (from_repo, stack) {
        (Ok(stacks), _) => stacks,
        (Err(_), Some(w)) => return Ok(vec![by_name(w)]),
        (Err(_), None) if namespace.is_some() => {
            return Err("--namespace needs --stack (the stack's name) when the repository cannot be read".into())
        }
        (Err(why), None) => {
            return Err(format!(
                "cannot read the desired state of {} ({why}); name the stack with --stack (and --namespace)",
                source.repo.display()
            ))
        }
    };
    let found: Vec<Target> = stacks
        .iter()
        .filter(|s| stack.is_none_or(|w| crate::reconcile::stack_matches(s, w)))
        .filter(|s| namespace.is_none_or(|n| n == s.spec.namespace))
        .map(|s| Target {
            stack: s.spec.name.clone(),
            dir: s.dir.clone(),
            namespace: Some(s.spec.namespace.clone()),
            context: context
                .map(str::to_string)
                .or_else(|| Some(s.spec.context.clone())),
            components: s
                .components
                .iter()
                .map(|c| {
                    let refs = c
                        .spec
                        .secret_env
                        .iter()
                        .map(|r| crate::explain::SecretRef {
                            secret: r.secret.clone(),
                            key: r.key.clone(),
                            optional: r.optional,
                        })
                        .collect();
                    (c.spec.name.clone(), refs)
                })
                .collect(),
        })
        .collect();
    match (found.is_empty(), stack, namespace) {
        (false, _, _) => Ok(found),
        // Gone from the repository: look for it in the cluster.
        (true, Some(w), _) => Ok(vec![by_name(w)]),
        (true, None, Some(n)) => Err(format!(
            "the repository's desired state has no stack in namespace {n}; pass --stack (the stack's name) to find it in the cluster"
        )),
        (true, None, None) => {
            Err("the repository's desired state names no stack; pass --stack (and --namespace)".into())
        }
    }
}

pub(super) fn run(args: &DownArgs) -> u8 {
    let targets = match resolve_targets(&args.source, &args.target) {
        Ok(t) => t,
        Err(code) => return code,
    };
    let rt = match super::runtime() {
        Ok(rt) => rt,
        Err(code) => return code,
    };
    let opts = TeardownOptions {
        volumes: args.volumes,
        timeout: args.timeout,
    };
    rt.block_on(async {
        let mut reports = Vec::new();
        for t in &targets {
            match take_down(args.target.kubeconfig.as_deref(), t, opts).await {
                Ok(mut r) => reports.append(&mut r),
                Err(e) => {
                    return super::report_error(&crate::error::Error::Cluster(e), args.output)
                }
            }
        }
        print(&reports, &targets, args.output);
        if reports.iter().all(DownReport::complete) {
            EXIT_OK
        } else {
            EXIT_FINDINGS
        }
    })
}

/// The namespaces of `target`: its own, else where the cluster holds converge's records of it.
pub(crate) async fn namespaces(
    cluster: &Cluster,
    target: &Target,
) -> Result<Vec<String>, ClusterError> {
    match &target.namespace {
        Some(ns) => Ok(vec![ns.clone()]),
        None => teardown::find_stack(cluster, &target.stack).await,
    }
}

async fn take_down(
    kubeconfig: Option<&std::path::Path>,
    target: &Target,
    opts: TeardownOptions,
) -> Result<Vec<DownReport>, ClusterError> {
    let cluster = Cluster::connect(kubeconfig, target.context.as_deref()).await?;
    cluster.ping().await?;
    let namespaces = namespaces(&cluster, target).await?;
    if namespaces.len() > 1 {
        return Err(ClusterError::Config {
            message: format!(
                "stack {} is recorded in several namespaces ({}); pass -n <namespace> to say which one to take down",
                target.stack,
                namespaces.join(", ")
            ),
        });
    }
    if namespaces.is_empty() {
        return Ok(vec![DownReport {
            stack: target.stack.clone(),
            nothing_to_do: true,
            ..DownReport::default()
        }]);
    }
    let mut out = Vec::new();
    for ns in namespaces {
        out.push(teardown::down(&cluster, &ns, &target.stack, opts).await);
    }
    Ok(out)
}

fn print(reports: &[DownReport], targets: &[Target], format: Format) {
    if format.structured() {
        super::emit(reports, format);
        return;
    }
    for r in reports {
        let dir = targets
            .iter()
            .find(|t| t.stack == r.stack && t.namespace.as_deref().is_none_or(|n| n == r.namespace))
            .map(|t| t.dir.as_str())
            .unwrap_or("");
        let label = if r.namespace.is_empty() {
            format!("{} (no namespace)", r.stack)
        } else {
            super::stack_label(&r.stack, dir, &r.namespace)
        };
        if r.nothing_to_do {
            outln!("stack {label}: nothing to take down (converge has no record of it here)");
            for d in &r.deleted {
                outln!("  deleted {d} (left behind earlier)");
            }
            continue;
        }
        let verdict = if r.complete() { "down" } else { "NOT down" };
        outln!(
            "stack {label}: {verdict}; {} deleted, {} already gone, {} kept in {} ms",
            r.deleted.len(),
            r.already_gone.len(),
            r.kept.len(),
            r.duration_ms
        );
        for d in &r.deleted {
            outln!("  deleted {d}");
        }
        for k in &r.kept {
            outln!("  kept {k}");
        }
        if r.records_removed {
            outln!("  removed converge's inventory and status record");
        }
        for e in &r.errors {
            outln!("  error: {e}");
        }
        if !r.complete() {
            outln!("  what is left stays in the inventory: re-run `converge down` to retry");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn source(repo: &str) -> SourceArgs {
        SourceArgs {
            repo: repo.into(),
            rev: "HEAD".into(),
            dir: "desired".into(),
        }
    }

    #[test]
    fn namespace_and_stack_need_no_repository() {
        let t = targets(
            &source("/nonexistent"),
            Some("todo"),
            Some("apps"),
            Some("ctx"),
        )
        .unwrap();
        assert_eq!(
            t,
            [Target {
                stack: "todo".into(),
                dir: String::new(),
                namespace: Some("apps".into()),
                context: Some("ctx".into()),
                components: BTreeMap::new(),
            }]
        );
    }

    #[test]
    fn namespace_without_stack_is_a_usage_error() {
        assert!(targets(&source("/nonexistent"), None, Some("apps"), None)
            .unwrap_err()
            .contains("--stack"));
    }

    #[test]
    fn without_a_repository_the_stack_is_looked_up_in_the_cluster() {
        let t = targets(&source("/nonexistent"), Some("todo"), None, None).unwrap();
        assert_eq!(t[0].namespace, None);
        assert!(targets(&source("/nonexistent"), None, None, None).is_err());
    }

    #[test]
    fn the_shipped_repository_names_its_stacks_namespace_and_context() {
        let t = targets(&source(env!("CARGO_MANIFEST_DIR")), Some("dev"), None, None).unwrap();
        assert_eq!(t.len(), 1);
        assert_eq!(t[0].stack, "todo-chatbot");
        assert_eq!(t[0].namespace.as_deref(), Some("todo-chatbot"));
        assert_eq!(t[0].context.as_deref(), Some("minikube"));
    }
}
