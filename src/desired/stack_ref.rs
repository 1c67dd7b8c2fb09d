//! Which stack, where: the one model every command and the daemon use to name a stack in the
//! cluster (the reconcile's status records, `down`, `explain`, `status`, the daemon's stacks).

use super::Stack;

/// One stack and where it lives.
#[derive(Debug, Clone, Default, PartialEq, Eq, PartialOrd, Ord)]
pub struct StackRef {
    /// The stack's name.
    pub stack: String,
    /// Its directory in the repository; empty when the repository was not read.
    pub dir: String,
    /// Its namespace; empty when only the cluster knows it (a stack named by `--stack` alone,
    /// found by converge's records of it).
    pub namespace: String,
    /// The kube context; empty for the kubeconfig's current one.
    pub context: String,
}

impl StackRef {
    /// `stack` as its desired state places it, with `context` overriding the stack's.
    pub fn of(stack: &Stack, context: Option<&str>) -> Self {
        Self {
            stack: stack.spec.name.clone(),
            dir: stack.dir.clone(),
            namespace: stack.spec.namespace.clone(),
            context: context.map_or_else(|| stack.spec.context.clone(), str::to_string),
        }
    }

    /// Its namespace, when known.
    pub fn namespace(&self) -> Option<&str> {
        Some(self.namespace.as_str()).filter(|n| !n.is_empty())
    }

    /// Its kube context; `None` for the kubeconfig's current one.
    pub fn context(&self) -> Option<&str> {
        Some(self.context.as_str()).filter(|c| !c.is_empty())
    }
}
