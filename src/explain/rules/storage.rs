//! The rule about storage: a claim that waits for a volume no class will provision.

use serde_json::Value;

use super::{component_file, events_about, s, CLAIM_PENDING};
use crate::explain::{Diagnosis, Evidence};

/// A claim stuck in `Pending`: no default StorageClass, or a class that does not exist.
pub fn claim_pending(ev: &Evidence) -> Option<Diagnosis> {
    for claim in &ev.claims {
        if s(claim, "/status/phase") != "Pending" {
            continue;
        }
        let name = s(claim, "/metadata/name");
        let class = claim
            .pointer("/spec/storageClassName")
            .and_then(Value::as_str);
        let default = ev.storage_classes.iter().find(|c| c.default);
        let known: Vec<&str> = ev.storage_classes.iter().map(|c| c.name.as_str()).collect();
        let events: Vec<String> = events_about(ev, name)
            .map(|e| format!("event {}: {}", e.reason, e.message))
            .collect();
        let problem = match class {
            None if default.is_none() => Some(
                "it names no storage class and the cluster has no default StorageClass".to_string(),
            ),
            Some("") => Some("its storage class is \"\" (no dynamic provisioning) and no PersistentVolume matches it".to_string()),
            Some(c) if !known.contains(&c) => Some(format!("its storage class `{c}` does not exist")),
            // A class that waits for the first consumer binds once a Pod is scheduled.
            _ => None,
        };
        let Some(problem) = problem else {
            continue;
        };
        let mut evidence = vec![format!(
            "claim {name}: Pending, storage class {}, requests {}",
            class
                .map(|c| format!("`{c}`"))
                .unwrap_or_else(|| "(none)".into()),
            s(claim, "/spec/resources/requests/storage")
        )];
        evidence.push(format!(
            "storage classes in the cluster: {}",
            if known.is_empty() {
                "none".to_string()
            } else {
                known.join(", ")
            }
        ));
        evidence.extend(events);
        let pick = if known.is_empty() {
            "minikube: `minikube addons enable storage-provisioner` and `minikube addons enable default-storageclass`; elsewhere install a provisioner and mark its class default".to_string()
        } else {
            format!(
                "set storage.storageClass in {} to one of: {}, or mark one default: `kubectl patch storageclass {} -p '{{\"metadata\":{{\"annotations\":{{\"storageclass.kubernetes.io/is-default-class\":\"true\"}}}}}}'`",
                component_file(ev),
                known.join(", "),
                known[0]
            )
        };
        return Some(Diagnosis {
            component: ev.component.clone(),
            rule: CLAIM_PENDING.into(),
            summary: format!("claim {name} is Pending: {problem}"),
            evidence,
            next_step: pick,
        });
    }
    None
}
