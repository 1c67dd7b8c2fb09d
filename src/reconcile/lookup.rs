//! Which stacks `down`, `explain` and `status` look for in the cluster: the commit's, when the
//! repository can be read, else the ones the flags name (a stack the repository no longer has, or
//! no repository at all), so none of them needs the repository.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use super::load::{load, Images, Selection};
use crate::cluster::{teardown, Cluster, ClusterError};
use crate::error::Error;
use crate::explain::SecretRef;

/// One stack to look for in the cluster.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Target {
    /// The stack's name.
    pub stack: String,
    /// Its directory in the repository (empty when it was not read).
    pub dir: String,
    /// Its namespace; `None` means "find it in the cluster".
    pub namespace: Option<String>,
    /// The kube context; `None` is the kubeconfig's current one.
    pub context: Option<String>,
    /// Components the desired state names, with their Secret references (empty without one).
    pub components: BTreeMap<String, Vec<SecretRef>>,
}

impl Target {
    /// Its namespaces: its own, else where the cluster holds converge's records of it.
    pub async fn namespaces(&self, cluster: &Cluster) -> Result<Vec<String>, ClusterError> {
        match &self.namespace {
            Some(ns) => Ok(vec![ns.clone()]),
            None => teardown::find_stack(cluster, &self.stack).await,
        }
    }
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
) -> Result<Vec<Target>, LookupError> {
    let stack = selection.stack.as_deref();
    let namespace = selection.namespace.as_deref();
    // Named by the flags alone: what the cluster's records say, when the repository does not.
    let by_name = |w: &str| Target {
        stack: w.into(),
        dir: String::new(),
        namespace: namespace.map(str::to_string),
        context: context.map(str::to_string),
        components: BTreeMap::new(),
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
    let found: Vec<Target> = stacks
        .iter()
        .filter(|s| selection.selects(s))
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
                        .map(|r| SecretRef {
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
        (true, None, Some(n)) => Err(LookupError::NoStackInNamespace {
            namespace: n.to_string(),
        }),
        (true, None, None) => Err(LookupError::NoStacks),
    }
}

/// The (name, namespace) of the stacks `selection` names in `rev` of the repository; empty when
/// nothing narrows the selection or the repository cannot be read (the cluster's records then
/// answer alone).
pub fn named(repo: &Path, rev: &str, selection: &Selection) -> Vec<(String, String)> {
    if !selection.narrows() {
        return Vec::new();
    }
    match load(repo, rev, selection, Images::Skip) {
        Ok(c) => c
            .stacks()
            .map(|s| (s.spec.name.clone(), s.spec.namespace.clone()))
            .collect(),
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
        assert_eq!(t[0].namespace, None);
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
        assert_eq!(t[0].stack, "todo-chatbot");
        assert_eq!(t[0].namespace.as_deref(), Some("todo-chatbot"));
        assert_eq!(t[0].context.as_deref(), Some("minikube"));
        assert_eq!(
            named(repo, "HEAD", &select(Some("dev"), None)),
            [("todo-chatbot".to_string(), "todo-chatbot".to_string())]
        );
        assert!(named(repo, "HEAD", &select(None, None)).is_empty());
    }
}
