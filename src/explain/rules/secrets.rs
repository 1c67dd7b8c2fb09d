//! The rule about Secrets: a referenced Secret or key that does not exist.

use super::{containers, pod_name, s, MISSING_SECRET};
use crate::cluster::secrets::{in_words, lacking};
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
    // The evidence in the order of the summary: the Secrets that do not exist first.
    for lack in lacks.iter().filter(|l| !l.exists) {
        let keys = lack.keys.join(", ");
        evidence.push(format!(
            "Secret {} is referenced (keys: {}) but does not exist in namespace {}",
            lack.secret,
            if keys.is_empty() { "all" } else { &keys },
            ev.namespace
        ));
    }
    for lack in lacks.iter().filter(|l| l.exists) {
        let name = &lack.secret;
        let quoted = lack
            .keys
            .iter()
            .map(|k| format!("`{k}`"))
            .collect::<Vec<_>>()
            .join(", ");
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
    }
    let (summary, next_step) = in_words(&lacks, &ev.namespace);
    Some(Diagnosis {
        component: ev.component.clone(),
        rule: MISSING_SECRET.into(),
        summary,
        evidence,
        next_step,
    })
}
