//! The rule about Secrets: a referenced Secret or key that does not exist.

use super::{containers, pod_name, s, MISSING_SECRET};
use crate::cluster::secrets::{lacking, secret_fix};
use crate::explain::{Diagnosis, Evidence};

/// A referenced Secret or key that does not exist (from the Secrets themselves, or the
/// kubelet's `CreateContainerConfigError`).
pub fn missing_secret(ev: &Evidence) -> Option<Diagnosis> {
    let lacks = lacking(&ev.secret_refs, &ev.secrets);
    let mut evidence = Vec::new();
    for pod in &ev.pods {
        for (cs, _) in containers(pod) {
            if s(cs, "/state/waiting/reason") == "CreateContainerConfigError" {
                evidence.push(format!(
                    "pod {} container {}: CreateContainerConfigError: {}",
                    pod_name(pod),
                    s(cs, "/name"),
                    s(cs, "/state/waiting/message")
                ));
            }
        }
    }
    if lacks.is_empty() {
        // The kubelet's word alone (Secrets not gathered): name what it names.
        let msg = evidence.first()?;
        return Some(Diagnosis {
            component: ev.component.clone(),
            rule: MISSING_SECRET.into(),
            summary: "a Secret or key the container needs is missing".into(),
            evidence: evidence.clone(),
            next_step: format!(
                "create what the message names: `kubectl create secret generic <name> -n {} --from-literal=<key>=<value>` ({msg})",
                ev.namespace
            ),
        });
    }
    let mut steps = Vec::new();
    let mut parts = Vec::new();
    // The Secrets that do not exist first, then the keys missing from those that do.
    for lack in lacks.iter().filter(|l| !l.exists) {
        let (name, keys) = (&lack.secret, lack.keys.join(", "));
        parts.push(format!("Secret `{name}` does not exist"));
        evidence.push(format!(
            "Secret {name} is referenced (keys: {}) but does not exist in namespace {}",
            if keys.is_empty() { "all" } else { &keys },
            ev.namespace
        ));
        let keys: Vec<&str> = lack.keys.iter().map(String::as_str).collect();
        steps.push(secret_fix(name, &ev.namespace, false, &keys));
    }
    // One patch per Secret with every key it lacks.
    for lack in lacks.iter().filter(|l| l.exists) {
        let name = &lack.secret;
        let quoted = lack
            .keys
            .iter()
            .map(|k| format!("`{k}`"))
            .collect::<Vec<_>>()
            .join(", ");
        parts.push(format!("Secret `{name}` has no key {quoted}"));
        let have = ev
            .secrets
            .get(name)
            .and_then(|k| k.as_ref())
            .map(|k| k.join(", "))
            .unwrap_or_default();
        evidence.push(format!(
            "Secret {name} has keys [{have}]; {quoted} {} referenced",
            if lack.keys.len() == 1 { "is" } else { "are" }
        ));
        let keys: Vec<&str> = lack.keys.iter().map(String::as_str).collect();
        steps.push(secret_fix(name, &ev.namespace, true, &keys));
    }
    Some(Diagnosis {
        component: ev.component.clone(),
        rule: MISSING_SECRET.into(),
        summary: parts.join("; "),
        evidence,
        next_step: format!(
            "{}; converge applies the component on its next reconcile",
            steps
                .iter()
                .map(|c| format!("`{c}`"))
                .collect::<Vec<_>>()
                .join(" and ")
        ),
    })
}
