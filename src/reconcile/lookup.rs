//! Which stacks `down`, `explain` and `status` look for in the cluster: the commit's, when the
//! repository can be read, else the ones the flags name (a stack the repository no longer has, or
//! no repository at all), so none of them needs the repository; and `down` and `status` looking
//! there, connection included.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use super::load::{load, Images, Selection};
use crate::cluster::teardown::{self, DownReport, TeardownOptions};
use crate::cluster::{Cluster, ClusterError};
use crate::desired::{SecretRef, StackRef};
use crate::error::Error;
use crate::status::view::{self, Gathered, Pick};

/// Components the desired state names, with their Secret references.
pub type Components = BTreeMap<String, Vec<SecretRef>>;

/// One stack to look for in the cluster, and what the desired state says of it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Wanted {
    /// Which stack, where: an empty namespace means "find it in the cluster", an empty context
    /// the kubeconfig's current one.
    pub target: StackRef,
    /// Its components (empty when the repository was not read).
    pub components: Components,
}

/// `target`'s namespaces: its own, else where the cluster holds converge's records of it.
pub async fn namespaces(cluster: &Cluster, target: &StackRef) -> Result<Vec<String>, ClusterError> {
    match target.namespace() {
        Some(ns) => Ok(vec![ns.to_string()]),
        None => teardown::find_stack(cluster, &target.stack).await,
    }
}

/// `converge down` of one stack: connects to its cluster, checks it answers, and takes the stack
/// down in each namespace converge's records of it are in. An unreachable cluster is the error.
pub async fn take_down(
    kubeconfig: Option<&Path>,
    target: &StackRef,
    opts: TeardownOptions,
) -> Result<DownReport, ClusterError> {
    let cluster = Cluster::connect(kubeconfig, target.context()).await?;
    cluster.ping().await?;
    let namespaces = namespaces(&cluster, target).await?;
    teardown::down_found(&cluster, &target.stack, &namespaces, opts).await
}

/// `converge status`: connects to `context`'s cluster, checks it answers, and reads the records
/// of the stacks `selection` names (in `rev` of the repository, when it can be read) with what
/// the cluster shows of them now. An unreachable cluster is the error.
pub async fn status(
    kubeconfig: Option<&Path>,
    context: Option<&str>,
    repo: &Path,
    rev: &str,
    selection: &Selection,
) -> Result<Gathered, ClusterError> {
    let cluster = Cluster::connect(kubeconfig, context).await?;
    cluster.ping().await?;
    let pick = Pick {
        stack: selection.stack.clone(),
        namespace: selection.namespace.clone(),
        named: named(repo, rev, selection),
    };
    view::gather(&cluster, &pick).await
}

/// Why [`targets`] names no stack; each says which flag would.
#[derive(Debug, thiserror::Error)]
pub enum LookupError {
    /// `--namespace` alone cannot name a stack without the repository.
    #[error("--namespace needs --stack (the stack's name) when the repository cannot be read")]
    NamespaceWithoutStack,
    /// The repository cannot be read and no flag names a stack.
    #[error(
        "cannot read the desired state of {} ({}); name the stack with --stack (and --namespace)",
        repo.display(),
        unreadable_why(source)
    )]
    Unreadable {
        /// The repository path given.
        repo: PathBuf,
        /// Why it cannot be read.
        source: Box<Error>,
    },
    /// The desired state has no stack in the namespace asked for.
    #[error("the repository's desired state has no stack in namespace {namespace}; pass --stack (the stack's name) to find it in the cluster")]
    NoStackInNamespace {
        /// The namespace asked for.
        namespace: String,
    },
    /// The desired state has no stack at all.
    #[error("the repository's desired state names no stack; pass --stack (and --namespace)")]
    NoStacks,
}

/// Why the desired state cannot be read, in a few words: its findings are `validate`'s to print.
fn unreadable_why(e: &Error) -> String {
    match e {
        Error::Invalid { .. } => "the desired state does not validate".into(),
        other => other.to_string(),
    }
}

/// The stacks `selection` names in `rev` of the repository, each with its namespace and context
/// (`context` overrides the stack's); by `--stack` alone when the repository cannot be read or
/// no longer has it.
pub fn targets(
    repo: &Path,
    rev: &str,
    selection: &Selection,
    context: Option<&str>,
) -> Result<Vec<Wanted>, LookupError> {
    let stack = selection.stack.as_deref();
    let namespace = selection.namespace.as_deref();
    // Named by the flags alone: what the cluster's records say, when the repository does not.
    let by_name = |w: &str| Wanted {
        target: StackRef {
            stack: w.into(),
            dir: String::new(),
            namespace: namespace.unwrap_or_default().into(),
            context: context.unwrap_or_default().into(),
        },
        components: Components::new(),
    };
    // Every stack, not the selection: an unknown `--stack` is looked for in the cluster rather
    // than refused.
    let every = Selection {
        dir: selection.dir.clone(),
        stack: None,
        namespace: None,
    };
    let stacks = match (load(repo, rev, &every, Images::Skip), stack) {
        (Ok(c), _) => c.stacks.into_iter().map(|p| p.stack).collect::<Vec<_>>(),
        (Err(_), Some(w)) => return Ok(vec![by_name(w)]),
        (Err(_), None) if namespace.is_some() => return Err(LookupError::NamespaceWithoutStack),
        (Err(e), None) => {
            return Err(LookupError::Unreadable {
                repo: repo.to_path_buf(),
                source: Box::new(e),
            })
        }
    };
    let found: Vec<Wanted> = stacks
        .iter()
        .filter(|s| selection.selects(s))
        .map(|s| Wanted {
            target: StackRef::of(s, context),
            components: s
                .components
                .iter()
                .map(|c| (c.spec.name.clone(), c.spec.secret_env.clone()))
                .collect(),
        })
        .collect();
    match (found.is_empty(), stack, namespace) {
        (false, _, _) => Ok(found),
        // Gone from the repository: look for it in the cluster.
        (true, Some(w), _) => Ok(vec![by_name(w)]),
        (true, None, Some(n)) => Err(LookupError::NoStackInNamespace {
            namespace: n.to_string(),
        }),
        (true, None, None) => Err(LookupError::NoStacks),
    }
}

/// The stacks `selection` names in `rev` of the repository; empty when nothing narrows the
/// selection or the repository cannot be read (the cluster's records then answer alone).
pub fn named(repo: &Path, rev: &str, selection: &Selection) -> Vec<StackRef> {
    if !selection.narrows() {
        return Vec::new();
    }
    match load(repo, rev, selection, Images::Skip) {
        Ok(c) => c.stacks().map(|s| StackRef::of(s, None)).collect(),
        Err(_) => Vec::new(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn select(stack: Option<&str>, namespace: Option<&str>) -> Selection {
        Selection {
            dir: "desired".into(),
            stack: stack.map(str::to_string),
            namespace: namespace.map(str::to_string),
        }
    }

    const NOWHERE: &str = "/nonexistent";

    #[test]
    fn namespace_and_stack_need_no_repository() {
        let t = targets(
            Path::new(NOWHERE),
            "HEAD",
            &select(Some("todo"), Some("apps")),
            Some("ctx"),
        )
        .unwrap();
        assert_eq!(
            t,
            [Wanted {
                target: StackRef {
                    stack: "todo".into(),
                    dir: String::new(),
                    namespace: "apps".into(),
                    context: "ctx".into(),
                },
                components: Components::new(),
            }]
        );
    }

    #[test]
    fn namespace_without_stack_is_a_usage_error() {
        let e = targets(
            Path::new(NOWHERE),
            "HEAD",
            &select(None, Some("apps")),
            None,
        )
        .unwrap_err();
        assert!(matches!(e, LookupError::NamespaceWithoutStack));
        assert!(e.to_string().contains("--stack"));
    }

    #[test]
    fn without_a_repository_the_stack_is_looked_up_in_the_cluster() {
        let t = targets(
            Path::new(NOWHERE),
            "HEAD",
            &select(Some("todo"), None),
            None,
        )
        .unwrap();
        assert_eq!(t[0].target.namespace(), None);
        let e = targets(Path::new(NOWHERE), "HEAD", &select(None, None), None).unwrap_err();
        assert!(e
            .to_string()
            .starts_with("cannot read the desired state of /nonexistent ("));
    }

    #[test]
    fn the_shipped_repository_names_its_stacks_namespace_and_context() {
        let repo = Path::new(env!("CARGO_MANIFEST_DIR"));
        let t = targets(repo, "HEAD", &select(Some("dev"), None), None).unwrap();
        assert_eq!(t.len(), 1);
        assert_eq!(t[0].target.stack, "todo-chatbot");
        assert_eq!(t[0].target.namespace, "todo-chatbot");
        assert_eq!(t[0].target.context, "minikube");
        let n = named(repo, "HEAD", &select(Some("dev"), None));
        assert_eq!(
            n.iter()
                .map(|n| (n.stack.as_str(), n.namespace.as_str()))
                .collect::<Vec<_>>(),
            [("todo-chatbot", "todo-chatbot")]
        );
        assert!(named(repo, "HEAD", &select(None, None)).is_empty());
    }
}
