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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::desired::Component;

    fn component(name: &str, secret_env: &str) -> Component {
        Component {
            spec: serde_yaml_ng::from_str(&format!(
                "apiVersion: converge.dev/v1alpha1\nkind: Component\nname: {name}\nimage:\n  ref: {name}:1\n{secret_env}"
            ))
            .expect("a component document"),
            file: format!("desired/dev/{name}.yaml"),
        }
    }

    fn stack() -> Stack {
        Stack {
            spec: serde_yaml_ng::from_str(
                "apiVersion: converge.dev/v1alpha1\nkind: Stack\nname: todo\nnamespace: apps\n",
            )
            .expect("a stack document"),
            file: "desired/dev/stack.yaml".into(),
            dir: "desired/dev".into(),
            components: vec![
                component(
                    "api",
                    "secretEnv:\n  - {name: DB, secret: todo, key: db-url}\n  - {name: KEY, secret: ai, key: api-key, optional: true}\n",
                ),
                component("web", "secretEnv:\n  - {name: JWT, secret: todo, key: jwt}\n"),
                component("db", ""),
            ],
        }
    }

    fn keys(k: &[&str]) -> Option<BTreeSet<String>> {
        Some(k.iter().map(|s| s.to_string()).collect())
    }

    #[test]
    fn a_missing_secret_holds_back_each_reader_with_one_command_for_every_missing_key() {
        let s = stack();
        let none: HashMap<String, Option<BTreeSet<String>>> = [("todo".to_string(), None)].into();
        let blocked = unresolved(&s, &none);
        let names: Vec<&str> = blocked.iter().map(|(c, _)| c.as_str()).collect();
        assert_eq!(
            names,
            ["api", "web"],
            "an optional reference or no reference holds nothing back"
        );
        let why = &blocked[0].1;
        assert!(
            why.starts_with(
                "Secret `todo` does not exist in namespace apps; create it with all its keys:"
            ),
            "{why}"
        );
        assert!(
            why.contains("--from-literal=db-url=<value>")
                && why.contains("--from-literal=jwt=<value>"),
            "one command creates every key the stack needs: {why}"
        );
    }

    #[test]
    fn a_secret_missing_one_key_holds_back_only_its_reader() {
        let s = stack();
        let partial: HashMap<String, Option<BTreeSet<String>>> =
            [("todo".to_string(), keys(&["db-url"]))].into();
        let blocked = unresolved(&s, &partial);
        assert_eq!(blocked.len(), 1);
        assert_eq!(blocked[0].0, "web");
        assert!(
            blocked[0]
                .1
                .starts_with("Secret `todo` in namespace apps has no key `jwt`; add it:"),
            "{}",
            blocked[0].1
        );
        let complete: HashMap<String, Option<BTreeSet<String>>> =
            [("todo".to_string(), keys(&["db-url", "jwt"]))].into();
        assert!(unresolved(&s, &complete).is_empty());
    }
}
