//! The resource arithmetic of `converge doctor`: check results, and decisions over data its
//! gather steps read (the `doctor` module's table) — which kind of cluster this is, NodePort
//! collisions, what the rendered workloads request, and whether a ResourceQuota, a LimitRange
//! or the nodes' room admits it. No I/O here.

use serde::Serialize;
use serde_json::Value;

use crate::capacity::{fmt_cpu, fmt_memory, NodeRoom};
use crate::desired::quantity::Quantity;

/// The outcome of one check.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Status {
    /// All good.
    Pass,
    /// Not fatal to an `apply`, but not what a working setup looks like (e.g. no daemon service).
    Warn,
    /// Will make converge fail.
    Fail,
}

/// A check's id: what `--skip` names and the JSON output's `check`, in the order they run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum CheckId {
    /// The desired state reads and validates.
    Desired,
    /// helm runs.
    Helm,
    /// The kube context exists.
    Context,
    /// The cluster answers.
    Cluster,
    /// The builder each stack would use works.
    Builder,
    /// Every required Secret key exists.
    Secrets,
    /// The stack's fixed NodePorts are free.
    Nodeport,
    /// A ResourceQuota or LimitRange admits the stack.
    Quota,
    /// The nodes have room for the stack.
    Capacity,
    /// A daemon service is installed for the checkout, and runs.
    Service,
}

impl CheckId {
    /// Every check, in the order they run.
    pub const ALL: [CheckId; 10] = [
        CheckId::Desired,
        CheckId::Helm,
        CheckId::Context,
        CheckId::Cluster,
        CheckId::Builder,
        CheckId::Secrets,
        CheckId::Nodeport,
        CheckId::Quota,
        CheckId::Capacity,
        CheckId::Service,
    ];

    /// Its name (`nodeport`).
    pub fn as_str(self) -> &'static str {
        match self {
            CheckId::Desired => "desired",
            CheckId::Helm => "helm",
            CheckId::Context => "context",
            CheckId::Cluster => "cluster",
            CheckId::Builder => "builder",
            CheckId::Secrets => "secrets",
            CheckId::Nodeport => "nodeport",
            CheckId::Quota => "quota",
            CheckId::Capacity => "capacity",
            CheckId::Service => "service",
        }
    }

    /// Whether it needs the stack rendered.
    pub fn needs_render(self) -> bool {
        matches!(self, CheckId::Nodeport | CheckId::Quota | CheckId::Capacity)
    }

    /// Whether it needs a cluster connection.
    pub fn needs_cluster(self) -> bool {
        self.needs_render()
            || matches!(self, CheckId::Context | CheckId::Cluster | CheckId::Secrets)
    }
}

/// `--skip`'s values: the names alone, as `converge doctor --help` has always listed them.
impl clap::ValueEnum for CheckId {
    fn value_variants<'a>() -> &'a [Self] {
        &CheckId::ALL
    }

    fn to_possible_value(&self) -> Option<clap::builder::PossibleValue> {
        Some(clap::builder::PossibleValue::new(self.as_str()))
    }
}

impl std::fmt::Display for CheckId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One line of `converge doctor`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Check {
    /// The check's id.
    pub check: CheckId,
    /// Its outcome.
    pub status: Status,
    /// What was found.
    pub message: String,
    /// The exact fix, when it did not pass.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub fix: Option<String>,
}

impl Check {
    /// A passing check.
    pub fn pass(check: CheckId, message: impl Into<String>) -> Self {
        Self {
            check,
            status: Status::Pass,
            message: message.into(),
            fix: None,
        }
    }

    /// A failing check with its fix.
    pub fn fail(check: CheckId, message: impl Into<String>, fix: impl Into<String>) -> Self {
        Self {
            check,
            status: Status::Fail,
            message: message.into(),
            fix: Some(fix.into()),
        }
    }

    /// A warning with its fix.
    pub fn warn(check: CheckId, message: impl Into<String>, fix: impl Into<String>) -> Self {
        Self {
            check,
            status: Status::Warn,
            message: message.into(),
            fix: Some(fix.into()),
        }
    }
}

fn s<'a>(v: &'a Value, pointer: &str) -> &'a str {
    v.pointer(pointer).and_then(Value::as_str).unwrap_or("")
}

/// Which kind of cluster the nodes (and context name) say this is: `minikube`, `kind`, `kwok`,
/// `docker-desktop`, `k3d` or `other`.
pub fn cluster_flavor(nodes: &[Value], context: &str) -> &'static str {
    let label = |n: &Value, k: &str| {
        n.pointer("/metadata/labels")
            .and_then(|l| l.get(k))
            .is_some()
    };
    let annotation = |n: &Value, k: &str| {
        n.pointer("/metadata/annotations")
            .and_then(|l| l.get(k))
            .is_some()
    };
    for n in nodes {
        let name = s(n, "/metadata/name");
        let provider = s(n, "/spec/providerID");
        if label(n, "minikube.k8s.io/name") || name == "minikube" {
            return "minikube";
        }
        if provider.starts_with("kind://") {
            return "kind";
        }
        if annotation(n, "kwok.x-k8s.io/node")
            || s(n, "/status/nodeInfo/kubeletVersion").starts_with("kwok")
        {
            return "kwok";
        }
        if name == "docker-desktop" {
            return "docker-desktop";
        }
        if provider.starts_with("k3s://") && name.starts_with("k3d-") {
            return "k3d";
        }
    }
    match context {
        "minikube" => "minikube",
        c if c.starts_with("kind-") => "kind",
        "docker-desktop" => "docker-desktop",
        _ => "other",
    }
}

/// A NodePort the stack wants that another Service already holds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PortClash {
    /// The port.
    pub port: i64,
    /// The stack's Service (`namespace/name`).
    pub ours: String,
    /// The Service holding it (`namespace/name`).
    pub theirs: String,
}

fn node_ports(svc: &Value) -> Vec<i64> {
    svc.pointer("/spec/ports")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .filter_map(|p| p.get("nodePort").and_then(Value::as_i64))
        .collect()
}

fn ns_name(svc: &Value) -> String {
    format!(
        "{}/{}",
        s(svc, "/metadata/namespace"),
        s(svc, "/metadata/name")
    )
}

/// The explicit NodePorts of the rendered Services, and the live Services (any namespace, other
/// than the same Service itself) that already hold them.
pub fn nodeport_clashes(rendered: &[Value], live: &[Value]) -> (Vec<i64>, Vec<PortClash>) {
    let mut wanted = Vec::new();
    let mut clashes = Vec::new();
    for svc in rendered.iter().filter(|o| s(o, "/kind") == "Service") {
        for port in node_ports(svc) {
            wanted.push(port);
            for other in live {
                if ns_name(other) != ns_name(svc) && node_ports(other).contains(&port) {
                    clashes.push(PortClash {
                        port,
                        ours: ns_name(svc),
                        theirs: ns_name(other),
                    });
                }
            }
        }
    }
    (wanted, clashes)
}

/// What the rendered workloads ask for, summed over replicas.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Totals {
    /// Pods.
    pub pods: i64,
    /// Requested CPU, millicores.
    pub cpu_milli: i64,
    /// Requested memory, bytes.
    pub memory: i64,
    /// CPU limits, millicores.
    pub limit_cpu_milli: i64,
    /// Memory limits, bytes.
    pub limit_memory: i64,
    /// The largest single Pod's CPU request, millicores.
    pub largest_pod_cpu_milli: i64,
    /// The largest single Pod's memory request, bytes.
    pub largest_pod_memory: i64,
}

fn q(v: &Value, pointer: &str) -> f64 {
    v.pointer(pointer)
        .and_then(Value::as_str)
        .and_then(|t| Quantity::parse(t).ok())
        .map(|q| q.as_f64())
        .unwrap_or(0.0)
}

/// Containers of a workload's Pod template: (name, container JSON).
fn template_containers(w: &Value) -> impl Iterator<Item = &Value> {
    w.pointer("/spec/template/spec/containers")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
}

/// Sums requests and limits of Deployments and StatefulSets over their replicas (Jobs, which
/// run and finish, are left out).
pub fn totals(objects: &[Value]) -> Totals {
    let mut t = Totals::default();
    for w in objects
        .iter()
        .filter(|o| matches!(s(o, "/kind"), "Deployment" | "StatefulSet"))
    {
        let replicas = w
            .pointer("/spec/replicas")
            .and_then(Value::as_i64)
            .unwrap_or(1);
        let (mut cpu, mut mem, mut lcpu, mut lmem) = (0i64, 0i64, 0i64, 0i64);
        for c in template_containers(w) {
            cpu += (q(c, "/resources/requests/cpu") * 1000.0).round() as i64;
            mem += q(c, "/resources/requests/memory").round() as i64;
            lcpu += (q(c, "/resources/limits/cpu") * 1000.0).round() as i64;
            lmem += q(c, "/resources/limits/memory").round() as i64;
        }
        t.pods += replicas;
        t.cpu_milli += cpu * replicas;
        t.memory += mem * replicas;
        t.limit_cpu_milli += lcpu * replicas;
        t.limit_memory += lmem * replicas;
        if replicas > 0 {
            t.largest_pod_cpu_milli = t.largest_pod_cpu_milli.max(cpu);
            t.largest_pod_memory = t.largest_pod_memory.max(mem);
        }
    }
    t
}

/// One quota resource: (name, the stack's want, its current use, formatter, scale of a quantity
/// to the same unit).
type QuotaLine = (&'static str, i64, i64, fn(i64) -> String, fn(f64) -> i64);

/// What a ResourceQuota refuses: for each limited resource, whether `used` (what already runs,
/// minus what the stack itself runs now) plus the stack's totals exceed `hard`.
pub fn quota_findings(quota: &Value, t: &Totals, own: &Totals) -> Vec<String> {
    let name = s(quota, "/metadata/name");
    let mut out = Vec::new();
    let checks: [QuotaLine; 7] = [
        ("requests.cpu", t.cpu_milli, own.cpu_milli, fmt_cpu, |v| {
            (v * 1000.0).round() as i64
        }),
        ("cpu", t.cpu_milli, own.cpu_milli, fmt_cpu, |v| {
            (v * 1000.0).round() as i64
        }),
        ("requests.memory", t.memory, own.memory, fmt_memory, |v| {
            v.round() as i64
        }),
        ("memory", t.memory, own.memory, fmt_memory, |v| {
            v.round() as i64
        }),
        (
            "limits.cpu",
            t.limit_cpu_milli,
            own.limit_cpu_milli,
            fmt_cpu,
            |v| (v * 1000.0).round() as i64,
        ),
        (
            "limits.memory",
            t.limit_memory,
            own.limit_memory,
            fmt_memory,
            |v| v.round() as i64,
        ),
        (
            "pods",
            t.pods * 1000,
            own.pods * 1000,
            |n| (n / 1000).to_string(),
            |v| (v * 1000.0).round() as i64,
        ),
    ];
    for (res, want, own_now, fmt, scale) in checks {
        let pointer = format!("/status/hard/{}", res.replace('/', "~1"));
        let Some(hard) = quota.pointer(&pointer).and_then(Value::as_str) else {
            continue;
        };
        let Ok(hard) = Quantity::parse(hard) else {
            continue;
        };
        let used = quota
            .pointer(&format!("/status/used/{}", res.replace('/', "~1")))
            .and_then(Value::as_str)
            .and_then(|u| Quantity::parse(u).ok())
            .map(|u| scale(u.as_f64()))
            .unwrap_or(0);
        let hard = scale(hard.as_f64());
        let others = (used - own_now).max(0);
        if others + want > hard {
            out.push(format!(
                "ResourceQuota {name}: {res} {} (others use {}) exceeds the hard limit {}",
                fmt(want),
                fmt(others),
                fmt(hard)
            ));
        }
    }
    out
}

/// What a LimitRange refuses: containers above its `max` or below its `min`.
pub fn limitrange_findings(lr: &Value, objects: &[Value]) -> Vec<String> {
    let name = s(lr, "/metadata/name");
    let mut out = Vec::new();
    for limit in lr
        .pointer("/spec/limits")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .filter(|l| s(l, "/type") == "Container")
    {
        for w in objects
            .iter()
            .filter(|o| matches!(s(o, "/kind"), "Deployment" | "StatefulSet"))
        {
            for c in template_containers(w) {
                for res in ["cpu", "memory"] {
                    let fmt = |v: f64| {
                        if res == "cpu" {
                            fmt_cpu((v * 1000.0).round() as i64)
                        } else {
                            fmt_memory(v.round() as i64)
                        }
                    };
                    let max = q(limit, &format!("/max/{res}"));
                    let min = q(limit, &format!("/min/{res}"));
                    let lim = q(c, &format!("/resources/limits/{res}"));
                    let req = q(c, &format!("/resources/requests/{res}"));
                    let who = format!(
                        "{}/{} container {}",
                        s(w, "/kind"),
                        s(w, "/metadata/name"),
                        s(c, "/name")
                    );
                    if max > 0.0 && lim > max {
                        out.push(format!(
                            "LimitRange {name}: {who} limits {res} to {}, above the max {}",
                            fmt(lim),
                            fmt(max)
                        ));
                    }
                    if min > 0.0 && req > 0.0 && req < min {
                        out.push(format!(
                            "LimitRange {name}: {who} requests {res} {}, below the min {}",
                            fmt(req),
                            fmt(min)
                        ));
                    }
                }
            }
        }
    }
    out
}

/// Whether the nodes have room for the stack: the total against the free room of all nodes, and
/// the largest Pod against the roomiest node. `room` should leave out what the stack already
/// requests (it replaces itself).
pub fn capacity_findings(room: &[NodeRoom], t: &Totals) -> Vec<String> {
    let free = |n: &NodeRoom| {
        (
            (n.allocatable_cpu_milli - n.requested_cpu_milli).max(0),
            (n.allocatable_memory - n.requested_memory).max(0),
        )
    };
    let total_cpu: i64 = room.iter().map(|n| free(n).0).sum();
    let total_mem: i64 = room.iter().map(|n| free(n).1).sum();
    let mut out = Vec::new();
    if t.cpu_milli > total_cpu {
        out.push(format!(
            "the stack requests {} CPU; the nodes have {} free",
            fmt_cpu(t.cpu_milli),
            fmt_cpu(total_cpu)
        ));
    }
    if t.memory > total_mem {
        out.push(format!(
            "the stack requests {} memory; the nodes have {} free",
            fmt_memory(t.memory),
            fmt_memory(total_mem)
        ));
    }
    let fits = room.iter().any(|n| {
        let (c, m) = free(n);
        c >= t.largest_pod_cpu_milli && m >= t.largest_pod_memory
    });
    if !fits && (t.largest_pod_cpu_milli > 0 || t.largest_pod_memory > 0) {
        out.push(format!(
            "its largest Pod requests {} CPU and {}; no single node has that free",
            fmt_cpu(t.largest_pod_cpu_milli),
            fmt_memory(t.largest_pod_memory)
        ));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn the_cluster_flavor_comes_from_node_labels_provider_ids_and_names() {
        let minikube = json!({"metadata": {"name": "minikube", "labels": {"minikube.k8s.io/name": "minikube"}}});
        let kind = json!({"metadata": {"name": "dev-control-plane"}, "spec": {"providerID": "kind://docker/dev/dev-control-plane"}});
        let kwok = json!({"metadata": {"name": "kwok-node-0", "annotations": {"kwok.x-k8s.io/node": "fake"}}});
        let other = json!({"metadata": {"name": "ip-10-0-0-1"}});
        assert_eq!(cluster_flavor(&[minikube], "x"), "minikube");
        assert_eq!(cluster_flavor(&[kind], "x"), "kind");
        assert_eq!(cluster_flavor(&[kwok], "x"), "kwok");
        assert_eq!(cluster_flavor(std::slice::from_ref(&other), "x"), "other");
        assert_eq!(cluster_flavor(&[other], "kind-dev"), "kind");
    }

    #[test]
    fn a_nodeport_held_by_another_service_is_a_clash_but_our_own_is_not() {
        let ours = json!({"kind": "Service", "metadata": {"namespace": "todo", "name": "web"}, "spec": {"ports": [{"port": 80, "nodePort": 30080}]}});
        let same = json!({"metadata": {"namespace": "todo", "name": "web"}, "spec": {"ports": [{"nodePort": 30080}]}});
        let other = json!({"metadata": {"namespace": "demo", "name": "shop"}, "spec": {"ports": [{"nodePort": 30080}]}});
        let (wanted, clashes) =
            nodeport_clashes(std::slice::from_ref(&ours), std::slice::from_ref(&same));
        assert_eq!(wanted, [30080]);
        assert!(clashes.is_empty());
        let (_, clashes) = nodeport_clashes(&[ours], &[same, other]);
        assert_eq!(
            clashes,
            [PortClash {
                port: 30080,
                ours: "todo/web".into(),
                theirs: "demo/shop".into()
            }]
        );
    }

    fn deployment(replicas: i64, cpu: &str, mem: &str) -> Value {
        json!({"kind": "Deployment", "metadata": {"name": "web"}, "spec": {"replicas": replicas, "template": {"spec": {"containers": [
            {"name": "app", "resources": {"requests": {"cpu": cpu, "memory": mem}, "limits": {"cpu": "1", "memory": "1Gi"}}}]}}}})
    }

    #[test]
    fn totals_multiply_requests_by_replicas_and_remember_the_largest_pod() {
        let t = totals(&[
            deployment(2, "200m", "256Mi"),
            deployment(1, "500m", "128Mi"),
        ]);
        assert_eq!(t.pods, 3);
        assert_eq!(t.cpu_milli, 900);
        assert_eq!(t.memory, 640 << 20);
        assert_eq!(t.limit_cpu_milli, 3000);
        assert_eq!(t.largest_pod_cpu_milli, 500);
        assert_eq!(t.largest_pod_memory, 256 << 20);
    }

    #[test]
    fn a_quota_refuses_what_others_use_plus_the_stack_beyond_hard() {
        let quota = json!({"metadata": {"name": "small"}, "status": {
            "hard": {"requests.cpu": "1", "requests.memory": "1Gi", "pods": "10"},
            "used": {"requests.cpu": "500m", "requests.memory": "0", "pods": "1"}}});
        let t = totals(&[deployment(2, "400m", "256Mi")]);
        let found = quota_findings(&quota, &t, &Totals::default());
        assert_eq!(
            found,
            ["ResourceQuota small: requests.cpu 800m (others use 500m) exceeds the hard limit 1"]
        );
        // When the stack itself is what uses it, it fits.
        let own = Totals {
            cpu_milli: 500,
            ..Totals::default()
        };
        assert!(quota_findings(&quota, &t, &own).is_empty());
    }

    #[test]
    fn a_limit_range_refuses_limits_above_its_max() {
        let lr = json!({"metadata": {"name": "caps"}, "spec": {"limits": [{"type": "Container", "max": {"memory": "512Mi"}, "min": {"cpu": "50m"}}]}});
        let found = limitrange_findings(&lr, &[deployment(1, "10m", "64Mi")]);
        assert_eq!(found.len(), 2, "{found:?}");
        assert!(
            found[0].contains("limits memory to 1Gi, above the max 512Mi")
                || found[1].contains("above the max 512Mi")
        );
        assert!(found
            .iter()
            .any(|f| f.contains("requests cpu 10m, below the min 50m")));
    }

    #[test]
    fn capacity_compares_totals_with_free_room_and_the_largest_pod_with_one_node() {
        let room = vec![
            NodeRoom {
                name: "a".into(),
                allocatable_cpu_milli: 2000,
                allocatable_memory: 4 << 30,
                requested_cpu_milli: 1500,
                requested_memory: 0,
            },
            NodeRoom {
                name: "b".into(),
                allocatable_cpu_milli: 2000,
                allocatable_memory: 4 << 30,
                requested_cpu_milli: 1500,
                requested_memory: 0,
            },
        ];
        let fits = totals(&[deployment(2, "400m", "256Mi")]);
        assert!(capacity_findings(&room, &fits).is_empty());
        let big = totals(&[deployment(1, "800m", "256Mi")]);
        let found = capacity_findings(&room, &big);
        assert_eq!(
            found,
            ["its largest Pod requests 800m CPU and 256Mi; no single node has that free"]
        );
        let huge = totals(&[deployment(4, "400m", "256Mi")]);
        assert!(capacity_findings(&room, &huge)[0]
            .contains("requests 1600m CPU; the nodes have 1 free"));
    }
}
