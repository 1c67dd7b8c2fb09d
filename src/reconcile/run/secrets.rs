//! Secrets a stack's components read: their key names (never values) are read from the
//! cluster, and a component whose reference does not resolve is held back with the command that
//! fixes it.

use std::collections::{BTreeMap, BTreeSet, HashMap};

use super::Run;
use crate::cluster::ClusterError;
use crate::desired::Stack;

/// `a`, `b` and `c` with backquotes, for messages.
fn quoted(keys: &[&str]) -> String {
    let q: Vec<String> = keys.iter().map(|k| format!("`{k}`")).collect();
    match q.len() {
        0 | 1 => q.concat(),
        n => format!("{} and {}", q[..n - 1].join(", "), q[n - 1]),
    }
}

impl Run<'_> {
    /// Reads the key names (never values) of every Secret a component needs, at once:
    /// `None` for a Secret that does not exist.
    pub(super) async fn read_secrets(
        &self,
    ) -> Result<HashMap<String, Option<BTreeSet<String>>>, ClusterError> {
        let names: BTreeSet<String> = self
            .stack
            .components
            .iter()
            .flat_map(|c| c.spec.secret_env.iter().filter(|r| !r.optional))
            .map(|r| r.secret.clone())
            .collect();
        let reads = futures::future::join_all(
            names
                .iter()
                .map(|name| self.cluster.secret_keys(self.ns(), name)),
        )
        .await;
        let mut secrets = HashMap::new();
        for (name, keys) in names.into_iter().zip(reads) {
            secrets.insert(name, keys?);
        }
        Ok(secrets)
    }
}

/// The components of `stack` whose non-optional Secret references do not resolve in `secrets`
/// (key names by Secret, `None` for a Secret that does not exist), with why. Each message carries
/// one command that creates the Secret with every missing key (or patches them into it).
pub(super) fn unresolved(
    stack: &Stack,
    secrets: &HashMap<String, Option<BTreeSet<String>>>,
) -> Vec<(String, String)> {
    let ns = stack.spec.namespace.as_str();
    // Every missing key of each Secret, across the whole stack.
    let mut missing: BTreeMap<&str, BTreeSet<&str>> = BTreeMap::new();
    for c in &stack.components {
        for r in c.spec.secret_env.iter().filter(|r| !r.optional) {
            match secrets.get(&r.secret) {
                Some(Some(keys)) if keys.contains(&r.key) => {}
                _ => {
                    missing.entry(&r.secret).or_default().insert(&r.key);
                }
            }
        }
    }
    let mut blocked = Vec::new();
    for c in &stack.components {
        let Some(r) = c.spec.secret_env.iter().filter(|r| !r.optional).find(|r| {
            missing
                .get(r.secret.as_str())
                .is_some_and(|keys| keys.contains(r.key.as_str()))
        }) else {
            continue;
        };
        let keys: Vec<&str> = missing[r.secret.as_str()].iter().copied().collect();
        let exists = matches!(secrets.get(&r.secret), Some(Some(_)));
        let fix = crate::explain::rules::secret_fix(&r.secret, ns, exists, &keys);
        let why = if exists {
            format!(
                "Secret `{}` in namespace {} has no key {}; add {}: `{fix}`",
                r.secret,
                ns,
                quoted(&keys),
                if keys.len() == 1 { "it" } else { "them" }
            )
        } else {
            format!(
                "Secret `{}` does not exist in namespace {}; create it with {}: `{fix}`",
                r.secret,
                ns,
                if keys.len() == 1 {
                    "its key"
                } else {
                    "all its keys"
                }
            )
        };
        blocked.push((c.spec.name.clone(), why));
    }
    blocked
}
