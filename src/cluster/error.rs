//! What can go wrong talking to the cluster, classified once ([`ClusterError::from_kube`]) so
//! callers match variants, never message text.

use std::fmt;
use std::time::Duration;

use super::{client, kinds, ObjectKey, REQUEST_TIMEOUT};

/// Failures talking to the cluster.
#[derive(Debug)]
pub enum ClusterError {
    /// The kubeconfig or context is unusable.
    Config {
        /// What is wrong and how to fix it.
        message: String,
    },
    /// The kubeconfig file is missing, unreadable, empty or names no usable context.
    Kubeconfig {
        /// The file (or `$KUBECONFIG`'s list) that was read.
        path: String,
        /// What is wrong with it.
        message: String,
    },
    /// The kube context is not in the kubeconfig.
    UnknownContext {
        /// The context asked for.
        context: String,
        /// The kubeconfig read.
        path: String,
        /// The contexts it has.
        known: Vec<String>,
    },
    /// Nothing answers at the API server's address.
    Unreachable {
        /// The server URL from the kubeconfig.
        server: String,
        /// The context.
        context: String,
        /// The client error; its innermost cause is the one line shown.
        source: kube::Error,
    },
    /// The API server could not be reached or answered with an unexpected error.
    Api {
        /// What converge was doing.
        action: &'static str,
        /// The object or collection.
        object: String,
        /// The client error; its message is part of this error's, its causes are the chain.
        source: kube::Error,
    },
    /// A request took longer than [`REQUEST_TIMEOUT`] (the client's deadline layer).
    Timeout {
        /// What converge was doing.
        action: &'static str,
        /// The object or collection.
        object: String,
    },
    /// An object converge deleted was still there when its deliberate wait for the deletion ran
    /// out (a finalizer, or a controller that has not let go yet).
    NotGone {
        /// The object.
        object: String,
        /// How long converge waited.
        after: Duration,
    },
    /// The object's namespace is being deleted: nothing can be created in it until it is gone.
    NamespaceTerminating {
        /// What converge was doing.
        action: &'static str,
        /// The object.
        object: String,
        /// The API server's words (`namespace todo is being terminated`).
        message: String,
    },
    /// The kind is not served by the cluster (a missing CRD, say).
    UnknownKind {
        /// The kind.
        gvk: String,
        /// What discovery said.
        message: String,
    },
    /// Another field manager owns fields converge applies.
    Conflict {
        /// The object.
        object: String,
        /// Managers that own the conflicting fields.
        managers: Vec<String>,
        /// The conflicting field paths.
        fields: Vec<String>,
    },
    /// A change to a field the API server does not allow to change.
    Immutable {
        /// The object.
        object: String,
        /// The immutable field.
        field: String,
        /// The API server's message.
        message: String,
        /// Whether `--recreate` may delete and re-create the object.
        recreatable: bool,
    },
    /// The API server refused the object (validation, admission).
    Invalid {
        /// The object.
        object: String,
        /// The API server's message.
        message: String,
    },
}

impl fmt::Display for ClusterError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ClusterError::Config { message } | ClusterError::Kubeconfig { message, .. } => {
                f.write_str(message)
            }
            ClusterError::UnknownContext {
                context,
                path,
                known,
            } => write!(
                f,
                "kube context `{context}` is not in the kubeconfig {path} (known: {})",
                if known.is_empty() {
                    "none".to_string()
                } else {
                    known.join(", ")
                }
            ),
            ClusterError::Unreachable {
                server,
                context,
                source,
            } => write!(
                f,
                "cannot reach the API server at {server} (kube context {context}): {}",
                innermost(source)
            ),
            ClusterError::Api {
                action,
                object,
                source,
            } => {
                write!(f, "{action} {object}: {}", api_message(source))?;
                match source {
                    kube::Error::Api(st) if st.code == 403 => {
                        write!(f, "; {}", forbidden_fix(&st.message))
                    }
                    _ => Ok(()),
                }
            }
            ClusterError::Timeout { action, object } => write!(
                f,
                "{action} {object}: no answer from the API server within {}s",
                REQUEST_TIMEOUT.as_secs()
            ),
            ClusterError::NotGone { object, after } => write!(
                f,
                "{object} still exists after {}s of waiting for its deletion; a finalizer or its controller may be holding it (see the object's metadata.finalizers)",
                after.as_secs()
            ),
            ClusterError::NamespaceTerminating {
                action,
                object,
                message,
            } => write!(
                f,
                "{action} {object}: {message}; nothing can be created in it until it is gone"
            ),
            ClusterError::UnknownKind { gvk, message } => {
                write!(f, "{gvk} is not served by this cluster: {message}")
            }
            ClusterError::Conflict {
                object,
                managers,
                fields,
            } => write!(
                f,
                "{object}: conflict with field manager {} over {}; re-run with --force-conflicts to take ownership",
                managers.join(", "),
                fields.join(", ")
            ),
            ClusterError::Immutable {
                object,
                field,
                message,
                recreatable,
            } => write!(
                f,
                "{object}: `{field}` cannot be changed in place ({message}){}",
                if *recreatable {
                    "; re-run with --recreate to delete and re-create it (no data is lost for this kind)"
                } else {
                    "; this kind holds data, so converge will not re-create it: change the field back, or migrate by hand"
                }
            ),
            ClusterError::Invalid { object, message } => {
                write!(f, "{object}: the API server refused it: {message}")
            }
        }
    }
}

impl std::error::Error for ClusterError {
    /// The causes the message does not already say: none for an API server's answer (its
    /// message is the line), a transport error's own causes for [`ClusterError::Api`], and for
    /// an unreachable server the whole client error (the line shows only its innermost cause).
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            // An answer's Status is the message itself; a transport error's causes are not.
            ClusterError::Api {
                source: kube::Error::Api(_),
                ..
            } => None,
            ClusterError::Api { source, .. } => std::error::Error::source(source),
            ClusterError::Unreachable { source, .. } => Some(source),
            _ => None,
        }
    }
}

/// The fix for a 403, from the API server's message (`… User "system:serviceaccount:converge:
/// converge" cannot list resource "jobs" in API group "batch" in the namespace "dev"`): in a
/// Pod, the chart value that extends its Role; elsewhere, the kubeconfig user's RBAC.
pub fn forbidden_fix(message: &str) -> String {
    let quoted = |after: &str| {
        let rest = &message[message.find(after)? + after.len()..];
        let rest = rest.strip_prefix('"')?;
        Some(rest[..rest.find('"')?].to_string())
    };
    let resource = quoted("resource ").unwrap_or_else(|| "the kind".into());
    let group = quoted("API group ").unwrap_or_default();
    let namespace = quoted("in the namespace ");
    match quoted("User ").and_then(|u| {
        u.strip_prefix("system:serviceaccount:")
            .map(str::to_string)
    }) {
        Some(sa) => {
            let sa = sa.replacen(':', "/", 1);
            match namespace {
                Some(ns) => format!(
                    "ServiceAccount {sa} may not use {resource} (API group \"{group}\") in namespace {ns}: add {{apiGroups: [\"{group}\"], resources: [{resource}], verbs: [\"*\"]}} to the converge chart's `extraRules` and `helm upgrade`"
                ),
                None => format!(
                    "ServiceAccount {sa} may not use the cluster-scoped {resource} (API group \"{group}\"): add it to the converge chart's ClusterRole (charts/converge/templates/rbac.yaml) and `helm upgrade`"
                ),
            }
        }
        None => format!(
            "the kubeconfig's user lacks the RBAC permission for {resource}{}: ask a cluster admin for a Role granting it",
            namespace.map(|n| format!(" in namespace {n}")).unwrap_or_default()
        ),
    }
}

/// The innermost cause of an error chain, in one line: "Connection refused (os error 111)".
fn innermost(e: &kube::Error) -> String {
    let mut detail = e.to_string();
    let mut cause: Option<&dyn std::error::Error> = std::error::Error::source(e);
    while let Some(c) = cause {
        detail = c.to_string();
        cause = c.source();
    }
    detail
}

pub(super) fn or_unknown(s: &str) -> String {
    if s.is_empty() {
        "(unknown)".into()
    } else {
        s.to_string()
    }
}

impl ClusterError {
    /// A client error of `action` on `object`, classified once for every caller: a request past
    /// its deadline is [`ClusterError::Timeout`], a create refused because the namespace is
    /// being deleted is [`ClusterError::NamespaceTerminating`], anything else
    /// [`ClusterError::Api`].
    pub fn from_kube(action: &'static str, object: impl fmt::Display, source: kube::Error) -> Self {
        let object = object.to_string();
        if client::is_elapsed(&source) {
            return ClusterError::Timeout { action, object };
        }
        if let kube::Error::Api(s) = &source {
            let cause = s
                .details
                .iter()
                .flat_map(|d| &d.causes)
                .find(|c| c.reason == NAMESPACE_TERMINATING);
            if let Some(cause) = cause {
                return ClusterError::NamespaceTerminating {
                    action,
                    object,
                    message: cause.message.clone(),
                };
            }
        }
        ClusterError::Api {
            action,
            object,
            source,
        }
    }

    /// Whether the API server answered with HTTP status `code`.
    pub fn is_http(&self, code: u16) -> bool {
        matches!(self, ClusterError::Api { source: kube::Error::Api(s), .. } if s.code == code)
    }

    /// Whether nothing answered: the server is unreachable or a request ran past its deadline.
    pub fn is_unreachable(&self) -> bool {
        match self {
            ClusterError::Unreachable { .. } | ClusterError::Timeout { .. } => true,
            ClusterError::Api { source, .. } => !matches!(source, kube::Error::Api(_)),
            _ => false,
        }
    }
}

/// The cause type the API server gives a create refused in a namespace being deleted.
const NAMESPACE_TERMINATING: &str = "NamespaceTerminating";

/// The API server's own message for API errors, the client's otherwise.
fn api_message(e: &kube::Error) -> String {
    match e {
        kube::Error::Api(s) => format!("{} ({})", s.message, s.code),
        other => other.to_string(),
    }
}

/// Reads the managers and fields out of a 409 apply conflict message.
pub(super) fn parse_conflict(key: &ObjectKey, message: &str) -> ClusterError {
    let mut managers = Vec::new();
    let mut rest = message;
    while let Some(i) = rest.find("with \"") {
        rest = &rest[i + 6..];
        if let Some(end) = rest.find('"') {
            let m = rest[..end].to_string();
            if !managers.contains(&m) {
                managers.push(m);
            }
            rest = &rest[end..];
        }
    }
    let fields: Vec<String> = message
        .split(|c: char| c.is_whitespace() || c == ',')
        .filter(|t| t.starts_with('.') && t.len() > 1)
        .map(str::to_string)
        .collect();
    ClusterError::Conflict {
        object: key.to_string(),
        managers,
        fields,
    }
}

/// Names the immutable field of a 422 message (`spec.selector: Invalid value: …: field is immutable`).
pub(super) fn parse_immutable(key: &ObjectKey, message: &str) -> ClusterError {
    // StatefulSets refuse any spec change outside a short list, naming no field.
    let statefulset = message.contains("Forbidden: updates to statefulset spec");
    let field = message
        .split(": ")
        .find(|part| {
            part.starts_with("spec.") || part.starts_with("data") || part.starts_with("metadata.")
        })
        .map(|s| s.split_whitespace().next().unwrap_or(s).to_string())
        .unwrap_or_else(|| "a field".into());
    let field = if statefulset {
        "spec (selector, volumeClaimTemplates, serviceName…)".to_string()
    } else {
        field
    };
    let recreatable = kinds::recreatable(&key.kind);
    ClusterError::Immutable {
        object: key.to_string(),
        field,
        message: message.to_string(),
        recreatable,
    }
}

#[cfg(test)]
mod forbidden_tests {
    use super::*;

    #[test]
    fn a_forbidden_kind_in_a_pod_names_the_kind_namespace_service_account_and_chart_value() {
        // The API server's words (k8s.io/apiserver's forbidden message).
        let message = r#"jobs.batch is forbidden: User "system:serviceaccount:converge:converge" cannot list resource "jobs" in API group "batch" in the namespace "todo-chatbot""#;
        let st = kube::core::Status::failure(message, "Forbidden").with_code(403);
        let e = ClusterError::from_kube(
            "listing",
            "Job todo-chatbot/*",
            kube::Error::Api(st.boxed()),
        );
        let line = e.to_string();
        assert!(!line.contains('\n'), "{line}");
        assert!(
            line.contains("ServiceAccount converge/converge may not use jobs (API group \"batch\") in namespace todo-chatbot")
                && line.contains("`extraRules`"),
            "{line}"
        );
        let cluster = r#"nodes is forbidden: User "system:serviceaccount:converge:converge" cannot list resource "nodes" in API group "" at the cluster scope"#;
        assert!(forbidden_fix(cluster).contains("ClusterRole"));
        let laptop = r#"pods is forbidden: User "dev" cannot list resource "pods" in API group "" in the namespace "todo""#;
        assert!(forbidden_fix(laptop).starts_with("the kubeconfig's user lacks"));
    }
}
