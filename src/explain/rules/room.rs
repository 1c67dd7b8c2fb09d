//! The rule about room: a Pod no node has room for, with the numbers (their arithmetic and
//! formatting, which `converge doctor` shares, are `crate::capacity`'s).

use serde_json::Value;

use super::{component_file, pod_name, s, UNSCHEDULABLE};
use crate::capacity::{fmt_cpu, fmt_memory, pod_requests};
use crate::explain::{Diagnosis, Evidence, NodeRoom};

fn free(n: &NodeRoom) -> (i64, i64) {
    (
        n.allocatable_cpu_milli - n.requested_cpu_milli,
        n.allocatable_memory - n.requested_memory,
    )
}

/// The scheduler found no node with room (CPU, memory); with the numbers.
pub fn unschedulable(ev: &Evidence) -> Option<Diagnosis> {
    for pod in &ev.pods {
        let Some(cond) = pod
            .pointer("/status/conditions")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
            .find(|c| s(c, "/type") == "PodScheduled" && s(c, "/reason") == "Unschedulable")
        else {
            continue;
        };
        let message = s(cond, "/message");
        let (cpu, mem) = pod_requests(pod);
        let mut evidence = vec![format!("pod {}: {message}", pod_name(pod))];
        evidence.push(format!(
            "the pod requests {} CPU and {} memory",
            fmt_cpu(cpu),
            fmt_memory(mem)
        ));
        for n in &ev.nodes {
            let (fc, fm) = free(n);
            evidence.push(format!(
                "node {}: allocatable {} CPU / {}, already requested {} / {}, free {} / {}",
                n.name,
                fmt_cpu(n.allocatable_cpu_milli),
                fmt_memory(n.allocatable_memory),
                fmt_cpu(n.requested_cpu_milli),
                fmt_memory(n.requested_memory),
                fmt_cpu(fc.max(0)),
                fmt_memory(fm.max(0))
            ));
        }
        let best_cpu = ev.nodes.iter().map(|n| free(n).0).max().unwrap_or(0).max(0);
        let best_mem = ev.nodes.iter().map(|n| free(n).1).max().unwrap_or(0).max(0);
        let short_cpu =
            message.contains("Insufficient cpu") || (!ev.nodes.is_empty() && cpu > best_cpu);
        let short_mem =
            message.contains("Insufficient memory") || (!ev.nodes.is_empty() && mem > best_mem);
        let mut lower = Vec::new();
        if short_cpu {
            lower.push(format!(
                "resources.requests.cpu to at most {}",
                fmt_cpu(best_cpu)
            ));
        }
        if short_mem {
            lower.push(format!(
                "resources.requests.memory to at most {}",
                fmt_memory(best_mem)
            ));
        }
        let (summary, next_step) = if lower.is_empty() {
            (
                format!("pod {} cannot be scheduled", pod_name(pod)),
                "read the scheduler's message above: a taint, node selector or affinity excludes every node; change the component's values or the nodes".to_string(),
            )
        } else {
            let what: Vec<&str> = [(short_cpu, "CPU"), (short_mem, "memory")]
                .iter()
                .filter(|(b, _)| *b)
                .map(|(_, w)| *w)
                .collect();
            (
                format!(
                    "no node has enough free {} for pod {} (requests {} CPU, {})",
                    what.join(" and "),
                    pod_name(pod),
                    fmt_cpu(cpu),
                    fmt_memory(mem)
                ),
                format!(
                    "lower {} in {} (times replicas, across the stack), or give the cluster more (minikube: `minikube delete && minikube start --cpus=<n> --memory=<size>`, which discards the cluster)",
                    lower.join(" and "),
                    component_file(ev)
                ),
            )
        };
        return Some(Diagnosis {
            component: ev.component.clone(),
            rule: UNSCHEDULABLE.into(),
            summary,
            evidence,
            next_step,
        });
    }
    None
}
