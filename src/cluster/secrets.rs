//! References to Secrets and the one decision of what they lack: a reconcile holds back the
//! components whose references do not resolve, and `converge explain` and `converge doctor` say
//! why, from the same decision and with the same command that fixes it. Key names only: values
//! are never read.

use std::collections::BTreeMap;

use serde::Serialize;

/// The key a `kubernetes.io/dockerconfigjson` Secret (an image pull Secret) holds its logins under.
pub const DOCKERCONFIGJSON_KEY: &str = ".dockerconfigjson";

/// A reference from an environment variable to a Secret's key.
#[derive(Debug, Clone, Default, PartialEq, Eq, PartialOrd, Ord, Serialize)]
pub struct SecretRef {
    /// The Secret.
    pub secret: String,
    /// The key; empty for `envFrom` (the whole Secret).
    pub key: String,
    /// Whether the Pod starts without it.
    pub optional: bool,
}

/// The key names of the Secrets read, by name: `None` for a Secret that does not exist.
pub type SecretKeys = BTreeMap<String, Option<Vec<String>>>;

/// What one referenced Secret lacks.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Lack {
    /// The Secret.
    pub secret: String,
    /// Whether it exists (then only keys are missing).
    pub exists: bool,
    /// The keys referenced and missing, in the order first referenced (all the keys referenced
    /// when it does not exist; none for a Secret only `envFrom` reads).
    pub keys: Vec<String>,
}

impl Lack {
    /// Whether `r` is one of the references this lack leaves unresolved.
    pub fn breaks(&self, r: &SecretRef) -> bool {
        !r.optional && r.secret == self.secret && (!self.exists || self.keys.contains(&r.key))
    }
}

/// What `lacks` (of Secrets in `namespace`) say to a person: the summary (the Secrets that do
/// not exist first, then the keys missing from those that do) and the fix (one command per
/// Secret, then that converge applies the component on its next reconcile). `converge explain`
/// and `converge doctor` both say it this way.
pub fn in_words(lacks: &[Lack], namespace: &str) -> (String, String) {
    let mut parts = Vec::new();
    let mut steps = Vec::new();
    let ordered = lacks
        .iter()
        .filter(|l| !l.exists)
        .chain(lacks.iter().filter(|l| l.exists));
    for lack in ordered {
        let name = &lack.secret;
        if lack.exists {
            let quoted = lack
                .keys
                .iter()
                .map(|k| format!("`{k}`"))
                .collect::<Vec<_>>()
                .join(", ");
            parts.push(format!("Secret `{name}` has no key {quoted}"));
        } else {
            parts.push(format!("Secret `{name}` does not exist"));
        }
        let keys: Vec<&str> = lack.keys.iter().map(String::as_str).collect();
        steps.push(secret_fix(name, namespace, lack.exists, &keys));
    }
    let fix = format!(
        "{}; converge applies the component on its next reconcile",
        steps
            .iter()
            .map(|c| format!("`{c}`"))
            .collect::<Vec<_>>()
            .join(" and ")
    );
    (parts.join("; "), fix)
}

/// What the required references `refs` lack in `secrets`, one entry per Secret in the order
/// first referenced. A Secret that was not read is not judged.
pub fn lacking<'a>(
    refs: impl IntoIterator<Item = &'a SecretRef>,
    secrets: &SecretKeys,
) -> Vec<Lack> {
    let mut out: Vec<Lack> = Vec::new();
    for r in refs.into_iter().filter(|r| !r.optional) {
        let exists = match secrets.get(&r.secret) {
            None => continue,
            // `envFrom` needs the Secret only; a key needs to be in it.
            Some(Some(keys)) if r.key.is_empty() || keys.contains(&r.key) => continue,
            Some(found) => found.is_some(),
        };
        let at = match out.iter().position(|l| l.secret == r.secret) {
            Some(at) => at,
            None => {
                out.push(Lack {
                    secret: r.secret.clone(),
                    exists,
                    keys: Vec::new(),
                });
                out.len() - 1
            }
        };
        let keys = &mut out[at].keys;
        if !r.key.is_empty() && !keys.contains(&r.key) {
            keys.push(r.key.clone());
        }
    }
    out
}

/// The one command that makes Secret `name` in `namespace` hold every key in `keys`: `kubectl
/// create secret generic` when it does not exist, `kubectl patch` when it does. Values are
/// placeholders (`<value>`), never read from anywhere.
pub fn secret_fix(name: &str, namespace: &str, exists: bool, keys: &[&str]) -> String {
    // An image pull Secret: only its own type (`kubernetes.io/dockerconfigjson`) is read by the
    // kubelet, so it is made by `kubectl create secret docker-registry`, and one of another
    // type is replaced, not patched.
    if keys == [DOCKERCONFIGJSON_KEY] {
        let create = format!("kubectl create secret docker-registry {name} -n {namespace} --docker-server=<registry> --docker-username=<user> --docker-password=<password>");
        return if exists {
            format!("{create} --dry-run=client -o yaml | kubectl replace --force -f -")
        } else {
            create
        };
    }
    let keys: Vec<&str> = if keys.iter().all(|k| k.is_empty()) {
        vec!["<key>"]
    } else {
        keys.iter().copied().filter(|k| !k.is_empty()).collect()
    };
    if exists {
        let data: Vec<String> = keys
            .iter()
            .map(|k| format!("\"{k}\":\"<value>\""))
            .collect();
        format!(
            "kubectl patch secret {name} -n {namespace} --type merge -p '{{\"stringData\":{{{}}}}}'",
            data.join(",")
        )
    } else {
        let literals: Vec<String> = keys
            .iter()
            .map(|k| format!("--from-literal={k}=<value>"))
            .collect();
        format!(
            "kubectl create secret generic {name} -n {namespace} {}",
            literals.join(" ")
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn r(secret: &str, key: &str, optional: bool) -> SecretRef {
        SecretRef {
            secret: secret.into(),
            key: key.into(),
            optional,
        }
    }

    #[test]
    fn a_missing_secret_lacks_every_key_referenced_and_a_present_one_only_its_missing_keys() {
        let refs = [
            r("b", "y", false),
            r("a", "x", false),
            r("b", "x", false),
            r("b", "y", false),
            r("a", "", false),
            r("c", "z", true),
            r("d", "", false),
            r("e", "k", false),
        ];
        let secrets: SecretKeys = [
            ("a".to_string(), Some(vec!["w".to_string()])),
            ("b".to_string(), None),
            ("c".to_string(), None),
            ("d".to_string(), Some(vec![])),
        ]
        .into();
        let lacks = lacking(&refs, &secrets);
        assert_eq!(
            lacks,
            [
                Lack {
                    secret: "b".into(),
                    exists: false,
                    keys: vec!["y".into(), "x".into()],
                },
                Lack {
                    secret: "a".into(),
                    exists: true,
                    keys: vec!["x".into()],
                },
            ],
            "optional references, envFrom of a Secret that exists and Secrets not read lack nothing"
        );
        assert!(lacks[1].breaks(&refs[1]) && !lacks[1].breaks(&refs[4]));
        assert!(lacks[0].breaks(&refs[2]) && !lacks[0].breaks(&r("b", "y", true)));
    }

    #[test]
    fn an_image_pull_secret_is_created_as_docker_registry_and_replaced_when_of_another_type() {
        assert_eq!(
            secret_fix("regcred", "apps", false, &[DOCKERCONFIGJSON_KEY]),
            "kubectl create secret docker-registry regcred -n apps --docker-server=<registry> --docker-username=<user> --docker-password=<password>"
        );
        assert_eq!(
            secret_fix("regcred", "apps", true, &[DOCKERCONFIGJSON_KEY]),
            "kubectl create secret docker-registry regcred -n apps --docker-server=<registry> --docker-username=<user> --docker-password=<password> --dry-run=client -o yaml | kubectl replace --force -f -"
        );
    }

    #[test]
    fn the_fix_creates_a_missing_secret_and_patches_a_present_one() {
        assert_eq!(
            secret_fix("s", "apps", false, &["a", "b"]),
            "kubectl create secret generic s -n apps --from-literal=a=<value> --from-literal=b=<value>"
        );
        assert_eq!(
            secret_fix("s", "apps", true, &["a"]),
            "kubectl patch secret s -n apps --type merge -p '{\"stringData\":{\"a\":\"<value>\"}}'"
        );
        assert_eq!(
            secret_fix("s", "apps", false, &[]),
            "kubectl create secret generic s -n apps --from-literal=<key>=<value>"
        );
    }
}
