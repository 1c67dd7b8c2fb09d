//! Secrets a stack's components read: their key names (never values) are read from the
//! cluster, and a component whose reference does not resolve is held back with the command that
//! fixes it.

use std::collections::BTreeSet;

use super::Run;
use crate::cluster::secrets::{lacking, secret_fix, SecretKeys, SecretRef, DOCKERCONFIGJSON_KEY};
use crate::cluster::ClusterError;
use crate::desired::{Component, Stack};

/// `a`, `b` and `c` with backquotes, for messages.
fn quoted(keys: &[&str]) -> String {
    let q: Vec<String> = keys.iter().map(|k| format!("`{k}`")).collect();
    match q.len() {
        0 | 1 => q.concat(),
        n => format!("{} and {}", q[..n - 1].join(", "), q[n - 1]),
    }
}

/// The Secret references of `c`'s environment.
fn refs_of(c: &Component) -> impl Iterator<Item = SecretRef> + '_ {
    c.spec.secret_env.iter().map(|r| SecretRef {
        secret: r.secret.clone(),
        key: r.key.clone(),
        optional: r.optional,
    })
}

impl Run<'_> {
    /// Reads the key names (never values) of every Secret a component needs, at once:
    /// `None` for a Secret that does not exist.
    pub(super) async fn read_secrets(&self) -> Result<SecretKeys, ClusterError> {
        let names: BTreeSet<String> = self
            .stack
            .components
            .iter()
            .flat_map(|c| c.spec.secret_env.iter().filter(|r| !r.optional))
            .map(|r| r.secret.clone())
            .chain(pull_secret(self.stack).map(|(name, _)| name.to_string()))
            .collect();
        let reads = futures::future::join_all(
            names
                .iter()
                .map(|name| self.cluster.secret_keys(self.ns(), name)),
        )
        .await;
        let mut secrets = SecretKeys::new();
        for (name, keys) in names.into_iter().zip(reads) {
            secrets.insert(name, keys?.map(|k| k.into_iter().collect()));
        }
        Ok(secrets)
    }
}

/// The stack's image pull Secret (`registry.pullSecret`) and the registry host it is for, when
/// a component pulls an image converge builds.
fn pull_secret(stack: &Stack) -> Option<(&str, &str)> {
    let registry = stack.spec.registry.as_ref()?;
    let name = registry.pull_secret.as_deref()?;
    let host = registry
        .prefix
        .as_deref()
        .and_then(|p| p.split('/').next())
        .unwrap_or("<registry host>");
    stack
        .components
        .iter()
        .any(|c| c.spec.image.build.is_some())
        .then_some((name, host))
}

/// Why the pull Secret does not do, with the command that creates it; `None` when it does.
fn pull_secret_lack(stack: &Stack, secrets: &SecretKeys) -> Option<String> {
    let (name, host) = pull_secret(stack)?;
    let ns = stack.spec.namespace.as_str();
    let fix = format!("kubectl create secret docker-registry {name} -n {ns} --docker-server={host} --docker-username=<user> --docker-password=<password>");
    match secrets.get(name)? {
        None => Some(format!(
            "image pull Secret `{name}` (`registry.pullSecret` or `--pull-secret`) does not exist in namespace {ns}; create it: `{fix}`"
        )),
        Some(keys) if !keys.iter().any(|k| k == DOCKERCONFIGJSON_KEY) => Some(format!(
            "image pull Secret `{name}` in namespace {ns} has no `{DOCKERCONFIGJSON_KEY}` key, so it is not a kubernetes.io/dockerconfigjson Secret; delete it and create it with `{fix}`"
        )),
        Some(_) => None,
    }
}

/// The components of `stack` whose required Secret references do not resolve in `secrets`
/// (as [`lacking`] decides), with why. Each message carries one command that creates the
/// Secret with every key the stack misses in it (or patches them into it).
pub(super) fn unresolved(stack: &Stack, secrets: &SecretKeys) -> Vec<(String, String)> {
    let ns = stack.spec.namespace.as_str();
    let refs: Vec<(&str, SecretRef)> = stack
        .components
        .iter()
        .flat_map(|c| refs_of(c).map(move |r| (c.spec.name.as_str(), r)))
        .collect();
    let lacks = lacking(refs.iter().map(|(_, r)| r), secrets);
    let mut blocked = Vec::new();
    for c in &stack.components {
        let Some(lack) = refs
            .iter()
            .filter(|(name, _)| *name == c.spec.name)
            .find_map(|(_, r)| lacks.iter().find(|l| l.breaks(r)))
        else {
            continue;
        };
        // Sorted: the message reads the same whichever component referenced a key first.
        let mut keys: Vec<&str> = lack.keys.iter().map(String::as_str).collect();
        keys.sort_unstable();
        let fix = secret_fix(&lack.secret, ns, lack.exists, &keys);
        let why = if lack.exists {
            format!(
                "Secret `{}` in namespace {} has no key {}; add {}: `{fix}`",
                lack.secret,
                ns,
                quoted(&keys),
                if keys.len() == 1 { "it" } else { "them" }
            )
        } else {
            format!(
                "Secret `{}` does not exist in namespace {}; create it with {}: `{fix}`",
                lack.secret,
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
    // Pods of built images pull them from the registry with the pull Secret: without it they
    // would sit in ImagePullBackOff, so they are held back like a missing `secretEnv`.
    if let Some(why) = pull_secret_lack(stack, secrets) {
        for c in &stack.components {
            if c.spec.image.build.is_some() && !blocked.iter().any(|(n, _)| *n == c.spec.name) {
                blocked.push((c.spec.name.clone(), why.clone()));
            }
        }
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

    fn keys(k: &[&str]) -> Option<Vec<String>> {
        Some(k.iter().map(|s| s.to_string()).collect())
    }

    #[test]
    fn a_missing_secret_holds_back_each_reader_with_one_command_for_every_missing_key() {
        let s = stack();
        let none: SecretKeys = [("todo".to_string(), None)].into();
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
    fn a_missing_or_wrong_pull_secret_holds_back_the_built_components_with_the_command() {
        let mut s = stack();
        s.spec.registry = Some(
            serde_yaml_ng::from_str("{prefix: r.example:5000/team, pullSecret: regcred}")
                .expect("registry settings"),
        );
        s.components.push(Component {
            spec: serde_yaml_ng::from_str(
                "apiVersion: converge.dev/v1alpha1\nkind: Component\nname: app\nimage:\n  build: {context: app, repository: app}\n",
            )
            .expect("a component document"),
            file: "desired/dev/app.yaml".into(),
        });
        let todo = ("todo".to_string(), keys(&["db-url", "jwt"]));
        let missing: SecretKeys = [todo.clone(), ("regcred".to_string(), None)].into();
        let blocked = unresolved(&s, &missing);
        assert_eq!(
            blocked.len(),
            1,
            "only the component that pulls a built image: {blocked:?}"
        );
        assert_eq!(blocked[0].0, "app");
        assert_eq!(
            blocked[0].1,
            "image pull Secret `regcred` (`registry.pullSecret` or `--pull-secret`) does not exist in namespace apps; create it: \
             `kubectl create secret docker-registry regcred -n apps --docker-server=r.example:5000 --docker-username=<user> --docker-password=<password>`"
        );
        let opaque: SecretKeys =
            [todo.clone(), ("regcred".to_string(), keys(&["password"]))].into();
        let why = &unresolved(&s, &opaque)[0].1;
        assert!(
            why.contains("not a kubernetes.io/dockerconfigjson Secret"),
            "{why}"
        );
        let good: SecretKeys =
            [todo, ("regcred".to_string(), keys(&[DOCKERCONFIGJSON_KEY]))].into();
        assert!(unresolved(&s, &good).is_empty());
    }

    #[test]
    fn a_secret_missing_one_key_holds_back_only_its_reader() {
        let s = stack();
        let partial: SecretKeys = [("todo".to_string(), keys(&["db-url"]))].into();
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
        let complete: SecretKeys = [("todo".to_string(), keys(&["db-url", "jwt"]))].into();
        assert!(unresolved(&s, &complete).is_empty());
    }

    #[test]
    fn the_command_names_the_missing_keys_in_order_whoever_referenced_them_first() {
        let mut s = stack();
        s.components = vec![
            component(
                "web",
                "secretEnv:\n  - {name: B, secret: keys, key: b-key}\n  - {name: T, secret: todo, key: jwt}\n",
            ),
            component("api", "secretEnv:\n  - {name: A, secret: keys, key: a-key}\n"),
        ];
        let secrets: SecretKeys = [
            ("keys".to_string(), keys(&["other"])),
            ("todo".to_string(), None),
        ]
        .into();
        let blocked = unresolved(&s, &secrets);
        assert_eq!(
            blocked,
            [
                (
                    "web".to_string(),
                    "Secret `keys` in namespace apps has no key `a-key` and `b-key`; add them: \
                     `kubectl patch secret keys -n apps --type merge -p '{\"stringData\":{\"a-key\":\"<value>\",\"b-key\":\"<value>\"}}'`"
                        .to_string()
                ),
                (
                    "api".to_string(),
                    "Secret `keys` in namespace apps has no key `a-key` and `b-key`; add them: \
                     `kubectl patch secret keys -n apps --type merge -p '{\"stringData\":{\"a-key\":\"<value>\",\"b-key\":\"<value>\"}}'`"
                        .to_string()
                ),
            ],
            "a component is held back once, by the first reference that does not resolve"
        );
    }

    #[test]
    fn nothing_is_held_back_when_every_required_reference_resolves() {
        let s = stack();
        // `ai` is optional and absent; `todo` has every key the stack reads, and more.
        let secrets: SecretKeys = [
            ("todo".to_string(), keys(&["db-url", "jwt", "unused"])),
            ("ai".to_string(), None),
        ]
        .into();
        assert!(unresolved(&s, &secrets).is_empty());
        assert!(unresolved(&stack_without_secrets(), &SecretKeys::new()).is_empty());
    }

    fn stack_without_secrets() -> Stack {
        let mut s = stack();
        s.components.retain(|c| c.spec.secret_env.is_empty());
        s
    }
}
