//! Apply order by kind, and which kinds may be deleted and re-created without losing data.

/// The rank of a kind in apply order: Namespace, ServiceAccount/RBAC, ConfigMap and Secret,
/// PVC, Service, StatefulSet, Deployment, then the rest. Teardown uses the reverse.
pub fn rank(kind: &str) -> u8 {
    match kind {
        "Namespace" => 0,
        "CustomResourceDefinition" => 1,
        "ServiceAccount" | "Role" | "ClusterRole" | "RoleBinding" | "ClusterRoleBinding" => 2,
        "ConfigMap" | "Secret" => 3,
        "PersistentVolumeClaim" => 4,
        "Service" => 5,
        "StatefulSet" => 6,
        "Deployment" | "DaemonSet" | "Job" | "CronJob" => 7,
        _ => 8,
    }
}

/// Whether the kind runs Pods, so its health gates dependents.
pub fn is_workload(kind: &str) -> bool {
    matches!(kind, "Deployment" | "StatefulSet" | "DaemonSet" | "Job")
}

/// Kinds whose deletion and re-creation loses no data (their state is elsewhere or rebuilt).
/// StatefulSets and PVCs are not here: their volumes are data.
pub fn recreatable(kind: &str) -> bool {
    matches!(
        kind,
        "Deployment"
            | "DaemonSet"
            | "ReplicaSet"
            | "Job"
            | "CronJob"
            | "Service"
            | "ConfigMap"
            | "PodDisruptionBudget"
            | "Ingress"
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dependencies_of_a_workload_come_before_it() {
        let mut kinds = [
            "Deployment",
            "Service",
            "ConfigMap",
            "Namespace",
            "StatefulSet",
            "PersistentVolumeClaim",
            "ServiceAccount",
            "Ingress",
        ];
        kinds.sort_by_key(|k| rank(k));
        assert_eq!(
            kinds,
            [
                "Namespace",
                "ServiceAccount",
                "ConfigMap",
                "PersistentVolumeClaim",
                "Service",
                "StatefulSet",
                "Deployment",
                "Ingress"
            ]
        );
    }
}
