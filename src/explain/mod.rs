//! Diagnosis (`converge explain`): what a person would look at for an unhealthy component — the
//! rollout's conditions, the newest ReplicaSet, each failing Pod's state and last termination,
//! recent Events, the failing container's log tail, its claims, Secrets and the nodes' room — and
//! pure rules that turn that evidence into a short diagnosis with a concrete next step.
//!
//! Gathering ([`gather`]) only reads the cluster; the rules ([`rules`]) are pure functions over
//! [`Evidence`], unit-tested on JSON fixtures. Secret values are never read into the evidence:
//! only Secret names and key names are. Like `reconcile`, this module sits above `cluster` and
//! `desired` and may use both; nothing below it imports it.

pub mod gather;
pub mod rules;

use std::collections::BTreeMap;
use std::path::Path;

use serde::Serialize;
use serde_json::Value;

use crate::cluster::Cluster;
use crate::desired::StackRef;
use crate::reconcile::lookup::{self, Wanted};

pub use crate::capacity::NodeRoom;
pub use gather::{gather, Desired, GatherError};
pub use rules::diagnose;

/// One component's diagnoses and the evidence behind them.
#[derive(Debug, Serialize)]
pub struct Explained {
    /// The stack's name.
    pub stack: String,
    /// Its directory in the repository (empty when it was not read).
    pub dir: String,
    /// Its namespace.
    pub namespace: String,
    /// The component.
    pub component: String,
    /// What is wrong, most specific first (one `Healthy` entry when nothing is).
    pub diagnoses: Vec<Diagnosis>,
    /// What was gathered.
    pub evidence: Evidence,
}

/// What `converge explain` found for one stack.
#[derive(Debug, Default)]
pub struct Explanation {
    /// Every component explained, namespace by namespace.
    pub explained: Vec<Explained>,
    /// Namespaces where converge has neither records nor workloads of the stack: never applied
    /// there, so nothing to diagnose (not a failure of it).
    pub never_applied: Vec<String>,
}

/// Explains each stack of `wanted` on its cluster (or only `component`): connects to it, checks
/// it answers, finds the stack's namespaces there and explains it in each; one explanation per
/// stack, in order. An unreachable cluster is [`GatherError::Cluster`].
pub async fn explain_wanted(
    kubeconfig: Option<&Path>,
    wanted: &[Wanted],
    component: Option<&str>,
) -> Result<Vec<Explanation>, GatherError> {
    let mut out = Vec::new();
    for w in wanted {
        let cluster = Cluster::connect(kubeconfig, w.target.context()).await?;
        cluster.ping().await?;
        let namespaces = lookup::namespaces(&cluster, &w.target).await?;
        out.push(explain_stack(&cluster, &w.target, component, &w.components, &namespaces).await?);
    }
    Ok(out)
}

/// Gathers and diagnoses `target`'s components (or `component`) in each of `namespaces` (its
/// own `namespace` is not read).
pub async fn explain_stack(
    cluster: &Cluster,
    target: &StackRef,
    component: Option<&str>,
    desired: &Desired,
    namespaces: &[String],
) -> Result<Explanation, GatherError> {
    let mut out = Explanation::default();
    for ns in namespaces {
        let client = cluster.client();
        let recorded = crate::status::load(client, ns, &target.stack)
            .await?
            .is_some()
            || !crate::cluster::inventory::load(client, ns, &target.stack)
                .await?
                .is_empty();
        let here = StackRef {
            namespace: ns.clone(),
            ..target.clone()
        };
        let gathered = gather(cluster, &here, component, desired).await?;
        if !recorded
            && gathered
                .iter()
                .all(|e| e.workloads.is_empty() && e.pods.is_empty())
        {
            out.never_applied.push(ns.clone());
            continue;
        }
        for evidence in gathered {
            out.explained.push(Explained {
                stack: target.stack.clone(),
                dir: target.dir.clone(),
                namespace: ns.clone(),
                component: evidence.component.clone(),
                diagnoses: diagnose(&evidence),
                evidence,
            });
        }
    }
    Ok(out)
}

/// Everything gathered about one component, as plain data (serialised for `-o json` and `--ai`).
#[derive(Debug, Clone, Default, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Evidence {
    /// The stack.
    pub stack: String,
    /// Its directory in the repository, when the repository was read (`desired/dev`).
    #[serde(skip_serializing_if = "String::is_empty")]
    pub dir: String,
    /// Its namespace.
    pub namespace: String,
    /// The component.
    pub component: String,
    /// What converge recorded for the component (health, last error), when it has.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub recorded: Option<crate::status::ComponentStatus>,
    /// The component's Deployments and StatefulSets (metadata, spec summary, status).
    pub workloads: Vec<Value>,
    /// The newest ReplicaSet of a Deployment.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub replica_set: Option<Value>,
    /// The component's Pods (env values removed; names and references kept).
    pub pods: Vec<Value>,
    /// Recent Events about the workloads, ReplicaSet, Pods and claims, oldest first.
    pub events: Vec<EventLine>,
    /// Log tails of failing containers.
    pub logs: Vec<LogTail>,
    /// The claims the Pods use.
    pub claims: Vec<Value>,
    /// The cluster's StorageClasses.
    pub storage_classes: Vec<StorageClass>,
    /// Secret references the component needs (from its Pod template and the desired state).
    pub secret_refs: Vec<SecretRef>,
    /// The referenced Secrets: key names when the Secret exists, `None` when it does not.
    pub secrets: BTreeMap<String, Option<Vec<String>>>,
    /// Room on each node (gathered only when a Pod is unschedulable).
    pub nodes: Vec<NodeRoom>,
}

/// One Event, trimmed to what a person reads.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct EventLine {
    /// `Kind/name` of the object it is about.
    pub object: String,
    /// `Normal` or `Warning`.
    #[serde(rename = "type")]
    pub kind: String,
    /// The reason (`FailedScheduling`, `Unhealthy`…).
    pub reason: String,
    /// The message.
    pub message: String,
    /// How many times it happened.
    pub count: i64,
    /// When it last happened (RFC 3339), when known.
    pub last: String,
}

/// The last lines a container wrote.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct LogTail {
    /// The Pod.
    pub pod: String,
    /// The container.
    pub container: String,
    /// Whether these are the previous (crashed) instance's lines.
    pub previous: bool,
    /// The lines, oldest first (at most [`gather::LOG_LINES`]).
    pub lines: Vec<String>,
}

/// A StorageClass, for claims that wait for one.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct StorageClass {
    /// Its name.
    pub name: String,
    /// Whether it is the cluster's default.
    pub default: bool,
    /// Its provisioner.
    pub provisioner: String,
}

pub use crate::cluster::secrets::SecretRef;

/// A short diagnosis with the evidence it rests on and what to do next.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Diagnosis {
    /// The component.
    pub component: String,
    /// Which rule matched (`ImageNotPresent`, `CrashLoopBackOff`, `MissingSecret`,
    /// `Unschedulable`, `ReadinessProbeFailing`, `ClaimPending`, `OOMKilled`, `Healthy`,
    /// `Unknown`).
    pub rule: String,
    /// One line: what is wrong.
    pub summary: String,
    /// The facts it rests on, one per line.
    pub evidence: Vec<String>,
    /// The concrete next step.
    pub next_step: String,
}

impl Diagnosis {
    /// Whether this diagnosis is a problem (anything but `Healthy`).
    pub fn is_problem(&self) -> bool {
        self.rule != rules::HEALTHY
    }
}
