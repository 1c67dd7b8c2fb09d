//! What converge knows of each kind, in one table (in the spirit of kstatus): where it comes in
//! apply order, whether it runs Pods, what deleting it would lose, how its health is judged and
//! how its ready replicas are counted. A new kind is one row of [`KINDS`]; kinds without a row
//! get [`OTHER`].

use serde_json::Value;

use super::health::{self, Health};

/// What deleting an object of a kind would lose.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Data {
    /// Nothing of its own.
    None,
    /// A volume: kept unless volumes may be deleted.
    Volume,
    /// Everything in it, volumes included: kept unless that is asked for.
    Namespace,
    /// The claims it made from its volumeClaimTemplates, which outlive it.
    ClaimTemplates,
}

/// How a kind's health is judged from its live JSON.
pub type HealthRule = fn(&Value) -> Health;
/// How a kind's (ready, desired) replicas are read from its live JSON.
pub type CountRule = fn(&Value) -> (i64, i64);

/// The rules of one kind.
#[derive(Debug)]
pub struct KindRule {
    /// The kind (`Deployment`).
    pub kind: &'static str,
    /// Its API group (`apps`; empty for the core group).
    pub group: &'static str,
    /// Its API version.
    pub version: &'static str,
    /// Its resource name (`deployments`).
    pub plural: &'static str,
    /// Its rank in apply order (teardown uses the reverse): what a workload needs comes first.
    pub rank: u8,
    /// Whether it runs Pods, so its health gates what depends on its component.
    pub workload: bool,
    /// What deleting it loses.
    pub data: Data,
    /// Whether it may be deleted and re-created (an immutable field changed) without losing
    /// anything: its state is elsewhere or rebuilt.
    pub recreatable: bool,
    /// How its health is judged; ready once it exists when `None`.
    pub health: Option<HealthRule>,
    /// Its (ready, desired) replicas, for the kinds that stand for their component in status
    /// (a Job completes rather than stays ready, so it has none).
    pub counts: Option<CountRule>,
}

impl KindRule {
    const fn of(kind: &'static str, rank: u8) -> Self {
        KindRule {
            kind,
            group: "",
            version: "v1",
            plural: "",
            rank,
            workload: false,
            data: Data::None,
            recreatable: false,
            health: None,
            counts: None,
        }
    }

    const fn api(self, group: &'static str, version: &'static str, plural: &'static str) -> Self {
        KindRule {
            group,
            version,
            plural,
            ..self
        }
    }

    const fn recreatable(self) -> Self {
        KindRule {
            recreatable: true,
            ..self
        }
    }

    const fn data(self, data: Data) -> Self {
        KindRule { data, ..self }
    }

    const fn judged(self, health: HealthRule) -> Self {
        KindRule {
            health: Some(health),
            ..self
        }
    }

    const fn workload(self, health: HealthRule) -> Self {
        KindRule {
            workload: true,
            ..self.judged(health)
        }
    }

    const fn counts(self, counts: CountRule) -> Self {
        KindRule {
            counts: Some(counts),
            ..self
        }
    }
}

/// Any kind without a row: applied last, nothing gates on it, never re-created.
pub const OTHER: KindRule = KindRule::of("", 8);

/// The table: one row per kind converge treats specially.
pub static KINDS: &[KindRule] = &[
    KindRule::of("Namespace", 0)
        .api("", "v1", "namespaces")
        .data(Data::Namespace),
    KindRule::of("CustomResourceDefinition", 1).api(
        "apiextensions.k8s.io",
        "v1",
        "customresourcedefinitions",
    ),
    KindRule::of("ServiceAccount", 2).api("", "v1", "serviceaccounts"),
    KindRule::of("Role", 2).api("rbac.authorization.k8s.io", "v1", "roles"),
    KindRule::of("ClusterRole", 2).api("rbac.authorization.k8s.io", "v1", "clusterroles"),
    KindRule::of("RoleBinding", 2).api("rbac.authorization.k8s.io", "v1", "rolebindings"),
    KindRule::of("ClusterRoleBinding", 2).api(
        "rbac.authorization.k8s.io",
        "v1",
        "clusterrolebindings",
    ),
    KindRule::of("ConfigMap", 3)
        .api("", "v1", "configmaps")
        .recreatable(),
    KindRule::of("Secret", 3).api("", "v1", "secrets"),
    // A claim waiting for its first consumer is ready: it must not block the Pod that binds it.
    KindRule::of("PersistentVolumeClaim", 4)
        .api("", "v1", "persistentvolumeclaims")
        .data(Data::Volume)
        .judged(health::pvc),
    KindRule::of("Service", 5)
        .api("", "v1", "services")
        .recreatable(),
    KindRule::of("Deployment", 7)
        .api("apps", "v1", "deployments")
        .workload(health::deployment)
        .counts(replicas)
        .recreatable(),
    KindRule::of("StatefulSet", 6)
        .api("apps", "v1", "statefulsets")
        .workload(health::statefulset)
        .counts(replicas)
        .data(Data::ClaimTemplates),
    KindRule::of("DaemonSet", 7)
        .api("apps", "v1", "daemonsets")
        .workload(health::daemonset)
        .counts(scheduled)
        .recreatable(),
    KindRule::of("Job", 7)
        .api("batch", "v1", "jobs")
        .workload(health::job)
        .recreatable(),
    KindRule::of("CronJob", 7)
        .api("batch", "v1", "cronjobs")
        .recreatable(),
    KindRule::of("ReplicaSet", 8)
        .api("apps", "v1", "replicasets")
        .recreatable(),
    KindRule::of("PodDisruptionBudget", 8)
        .api("policy", "v1", "poddisruptionbudgets")
        .recreatable(),
    KindRule::of("Ingress", 8)
        .api("networking.k8s.io", "v1", "ingresses")
        .recreatable(),
];

/// The row of `kind` ([`OTHER`] when it has none).
pub fn rule(kind: &str) -> &'static KindRule {
    KINDS.iter().find(|r| r.kind == kind).unwrap_or(&OTHER)
}

/// The rank of `kind` in apply order: Namespace, CRDs, ServiceAccount/RBAC, ConfigMap and
/// Secret, PVC, Service, StatefulSet, the other workloads, then the rest.
pub fn rank(kind: &str) -> u8 {
    rule(kind).rank
}

/// Whether `kind` runs Pods, so its health gates dependents.
pub fn is_workload(kind: &str) -> bool {
    rule(kind).workload
}

/// Whether `kind` may be deleted and re-created without losing data.
pub fn recreatable(kind: &str) -> bool {
    rule(kind).recreatable
}

/// What deleting an object of `kind` would lose.
pub fn data(kind: &str) -> Data {
    rule(kind).data
}

/// The health of an object of `kind`.
pub fn health(kind: &str, live: &Value) -> Health {
    rule(kind).health.map_or(Health::Ready, |judge| judge(live))
}

/// (ready, desired) replicas of an object of `kind`, from its live JSON, when the kind counts
/// them: one rule for the health wait's progress lines, `converge status`, the status record and
/// `converge explain`, so they never count differently.
pub fn ready_counts(kind: &str, live: &Value) -> Option<(i64, i64)> {
    rule(kind).counts.map(|count| count(live))
}

/// The kinds whose replicas stand for their component in status (see [`KindRule::counts`]).
pub fn counted() -> impl Iterator<Item = &'static KindRule> {
    KINDS.iter().filter(|r| r.counts.is_some())
}

/// `A, B or C`: the counted kinds, for messages.
pub fn counted_names() -> String {
    let names: Vec<&str> = counted().map(|r| r.kind).collect();
    match names.split_last() {
        Some((last, rest)) if !rest.is_empty() => format!("{} or {last}", rest.join(", ")),
        _ => names.concat(),
    }
}

fn int(live: &Value, pointer: &str) -> Option<i64> {
    live.pointer(pointer).and_then(Value::as_i64)
}

/// Deployments and StatefulSets: `readyReplicas` of `spec.replicas` (1 when unset, as the API
/// server defaults it).
fn replicas(live: &Value) -> (i64, i64) {
    (
        int(live, "/status/readyReplicas").unwrap_or(0),
        int(live, "/spec/replicas").unwrap_or(1),
    )
}

/// DaemonSets: one Pod per node it is scheduled on.
fn scheduled(live: &Value) -> (i64, i64) {
    (
        int(live, "/status/numberReady").unwrap_or(0),
        int(live, "/status/desiredNumberScheduled").unwrap_or(0),
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

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
        assert_eq!(rank("Widget"), 8);
    }

    #[test]
    fn every_kind_has_one_row_and_an_api() {
        for (i, r) in KINDS.iter().enumerate() {
            assert!(!r.plural.is_empty(), "{} has no resource name", r.kind);
            assert!(
                KINDS[i + 1..].iter().all(|o| o.kind != r.kind),
                "{} has two rows",
                r.kind
            );
        }
    }

    #[test]
    fn volumes_are_data_and_only_stateless_kinds_are_recreated() {
        assert_eq!(data("PersistentVolumeClaim"), Data::Volume);
        assert_eq!(data("Namespace"), Data::Namespace);
        assert_eq!(data("StatefulSet"), Data::ClaimTemplates);
        assert!(recreatable("Deployment") && recreatable("ConfigMap"));
        assert!(!recreatable("StatefulSet") && !recreatable("PersistentVolumeClaim"));
        assert!(!recreatable("Secret") && !recreatable("Widget"));
        assert!(is_workload("Job") && !is_workload("CronJob"));
    }

    #[test]
    fn ready_replicas_are_counted_by_kind() {
        let d = json!({"spec": {"replicas": 3}, "status": {"readyReplicas": 2}});
        assert_eq!(ready_counts("Deployment", &d), Some((2, 3)));
        assert_eq!(ready_counts("StatefulSet", &json!({})), Some((0, 1)));
        let ds = json!({"status": {"numberReady": 1, "desiredNumberScheduled": 2}});
        assert_eq!(ready_counts("DaemonSet", &ds), Some((1, 2)));
        assert_eq!(ready_counts("Job", &d), None);
        assert_eq!(counted_names(), "Deployment, StatefulSet or DaemonSet");
    }
}
