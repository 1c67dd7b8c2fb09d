//! Room on the nodes: what each node can hold, what the Pods on it already request, and CPU and
//! memory in the units people write. Shared by `explain` (why a Pod is unschedulable) and
//! `doctor` (whether a stack fits), below both.

use k8s_openapi::api::core::v1::{Node, Pod};
use kube::api::ListParams;
use serde::Serialize;
use serde_json::Value;

use crate::cluster::{values, Cluster, ClusterError};
use crate::desired::quantity::Quantity;

/// Allocatable resources of a node and what Pods already request there.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct NodeRoom {
    /// The node.
    pub name: String,
    /// Allocatable CPU, in millicores.
    pub allocatable_cpu_milli: i64,
    /// Allocatable memory, in bytes.
    pub allocatable_memory: i64,
    /// CPU requested by the Pods already on it, in millicores.
    pub requested_cpu_milli: i64,
    /// Memory requested by the Pods already on it, in bytes.
    pub requested_memory: i64,
}

fn text<'a>(v: &'a Value, pointer: &str) -> &'a str {
    v.pointer(pointer).and_then(Value::as_str).unwrap_or("")
}

/// A quantity at `pointer` of `v`, written as a string or a number.
pub fn quantity(v: &Value, pointer: &str) -> Option<Quantity> {
    v.pointer(pointer)
        .and_then(Value::as_str)
        .and_then(|t| Quantity::parse(t).ok())
        .or_else(|| {
            v.pointer(pointer)
                .and_then(Value::as_i64)
                .and_then(|n| Quantity::parse(&n.to_string()).ok())
        })
}

/// Sums a Pod's container requests: (millicores, bytes).
pub fn pod_requests(pod: &Value) -> (i64, i64) {
    let mut cpu = 0;
    let mut mem = 0;
    for c in pod
        .pointer("/spec/containers")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
    {
        cpu += quantity(c, "/resources/requests/cpu")
            .map(|q| (q.as_f64() * 1000.0).round() as i64)
            .unwrap_or(0);
        mem += quantity(c, "/resources/requests/memory")
            .map(|q| q.as_f64().round() as i64)
            .unwrap_or(0);
    }
    (cpu, mem)
}

/// `1500m` or `2` CPUs.
pub fn fmt_cpu(milli: i64) -> String {
    if milli % 1000 == 0 {
        format!("{}", milli / 1000)
    } else {
        format!("{milli}m")
    }
}

/// `512Mi`, `1.5Gi`.
pub fn fmt_memory(bytes: i64) -> String {
    const MI: f64 = 1024.0 * 1024.0;
    let mi = bytes as f64 / MI;
    if mi >= 1024.0 {
        let gi = mi / 1024.0;
        if (gi * 10.0).round() % 10.0 == 0.0 {
            format!("{}Gi", gi.round() as i64)
        } else {
            format!("{:.1}Gi", gi)
        }
    } else {
        format!("{}Mi", mi.round() as i64)
    }
}

/// Every node's allocatable CPU and memory and what the Pods on it already request.
pub async fn node_room(cluster: &Cluster) -> Result<Vec<NodeRoom>, ClusterError> {
    let nodes = values(cluster.list_global::<Node>(&ListParams::default()).await?);
    let pods = values(cluster.list_global::<Pod>(&running()).await?);
    Ok(room(&nodes, &pods))
}

/// Pods that still hold their requests (neither succeeded nor failed).
pub fn running() -> ListParams {
    ListParams::default().fields("status.phase!=Succeeded,status.phase!=Failed")
}

/// Pure: nodes' allocatable minus the requests of the Pods bound to them.
pub fn room(nodes: &[Value], pods: &[Value]) -> Vec<NodeRoom> {
    let q = |v: &Value, p: &str| -> f64 {
        v.pointer(p)
            .and_then(Value::as_str)
            .and_then(|t| crate::desired::quantity::Quantity::parse(t).ok())
            .map(|q| q.as_f64())
            .unwrap_or(0.0)
    };
    nodes
        .iter()
        .map(|n| {
            let name = text(n, "/metadata/name").to_string();
            let (mut cpu, mut mem) = (0, 0);
            for p in pods.iter().filter(|p| text(p, "/spec/nodeName") == name) {
                let (c, m) = pod_requests(p);
                cpu += c;
                mem += m;
            }
            NodeRoom {
                allocatable_cpu_milli: (q(n, "/status/allocatable/cpu") * 1000.0).round() as i64,
                allocatable_memory: q(n, "/status/allocatable/memory").round() as i64,
                requested_cpu_milli: cpu,
                requested_memory: mem,
                name,
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn node_room_subtracts_the_requests_of_pods_bound_to_the_node() {
        let nodes = vec![
            json!({"metadata": {"name": "n"}, "status": {"allocatable": {"cpu": "4", "memory": "8Gi"}}}),
        ];
        let pods = vec![
            json!({"spec": {"nodeName": "n", "containers": [{"resources": {"requests": {"cpu": "250m", "memory": "256Mi"}}}, {"resources": {"requests": {"cpu": "1"}}}]}}),
            json!({"spec": {"nodeName": "other", "containers": [{"resources": {"requests": {"cpu": "2"}}}]}}),
        ];
        let r = room(&nodes, &pods);
        assert_eq!(r[0].allocatable_cpu_milli, 4000);
        assert_eq!(r[0].allocatable_memory, 8 << 30);
        assert_eq!(r[0].requested_cpu_milli, 1250);
        assert_eq!(r[0].requested_memory, 256 << 20);
    }

    #[test]
    fn memory_and_cpu_format_the_way_kubernetes_users_write_them() {
        assert_eq!(fmt_memory(512 << 20), "512Mi");
        assert_eq!(fmt_memory(1 << 30), "1Gi");
        assert_eq!(fmt_memory(3 << 29), "1.5Gi");
        assert_eq!(fmt_cpu(2000), "2");
        assert_eq!(fmt_cpu(250), "250m");
    }
}
