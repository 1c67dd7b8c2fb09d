//! What `converge status` shows of each stack: its record, what the cluster shows now (ready and
//! desired replicas, and why not healthy) and whether a daemon holds it. Only reads the cluster.

use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::Pod;
use kube::api::{Api, ApiResource, DynamicObject, ListParams};
use kube::core::GroupVersionKind;
use serde::Serialize;
use serde_json::Value;

use super::{component_health, ComponentFacts, ComponentHealth, Found, Record, StackStatus};
use crate::cluster::{health, kinds, lease, selector_of, values, Cluster, ClusterError};
use crate::desired::StackRef;
use crate::vocabulary::{LABEL_COMPONENT, LABEL_STACK};

/// One stack: the record, the live view and the daemon.
#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct StackView {
    /// What converge recorded.
    #[serde(flatten)]
    pub recorded: StackStatus,
    /// What the cluster shows now, per component.
    pub live: Vec<LiveComponent>,
    /// The daemon holding the stack's Lease, if one does.
    pub daemon: DaemonView,
    /// The pauses of drift correction in force (`converge pause`).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub paused: Vec<crate::cluster::pause::Pause>,
    /// The local URLs the desired state asks for, and whether this machine serves them (filled
    /// by the CLI: they are this machine's, not the cluster's).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub local_urls: Vec<LocalUrl>,
}

/// One local URL of a stack, as `converge status` shows it.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct LocalUrl {
    /// `http://127.0.0.1:<port>`.
    pub url: String,
    /// `component` or `component:port`.
    pub reaches: String,
    /// Whether it is served here, and by which daemon, in words.
    pub served: String,
}

impl StackView {
    /// Ready by the record and every component healthy now.
    pub fn healthy(&self) -> bool {
        self.recorded.ready
            && self
                .live
                .iter()
                .all(|c| c.health == ComponentHealth::Healthy)
    }
}

/// A component as the cluster shows it now.
#[derive(Debug, Default, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct LiveComponent {
    /// The component.
    pub name: String,
    /// Ready replicas now.
    pub ready: i64,
    /// Desired replicas now.
    pub desired: i64,
    /// `Healthy`, `Progressing`, `Failed` or `Missing` (no workload in the cluster).
    pub health: ComponentHealth,
    /// Why it is not healthy (rollout message, a Pod's waiting reason), when it is not.
    #[serde(skip_serializing_if = "String::is_empty")]
    pub reason: String,
}

/// Whether a daemon holds a stack.
#[derive(Debug, Default, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct DaemonView {
    /// Whether a live daemon holds the Lease.
    pub held: bool,
    /// The holder (`host/pid`), current or last.
    #[serde(skip_serializing_if = "String::is_empty")]
    pub holder: String,
    /// The checkout it deploys from.
    #[serde(skip_serializing_if = "String::is_empty")]
    pub checkout: String,
    /// When it last renewed the Lease (RFC 3339).
    #[serde(skip_serializing_if = "String::is_empty")]
    pub renewed: String,
}

/// Which records to show: the `--stack`/`--namespace` selectors and what the repository names.
#[derive(Debug, Clone, Default)]
pub struct Pick {
    /// `--stack`: a name or a directory.
    pub stack: Option<String>,
    /// `--namespace`.
    pub namespace: Option<String>,
    /// The stacks the repository names for the selectors; empty when it was not read, names
    /// none, or nothing narrows the selection.
    pub named: Vec<StackRef>,
}

impl Pick {
    /// Whether a readable record is shown: what the repository names, when it names the
    /// selected stack; else the record's own name and directory (a stack the repository no
    /// longer has, or no repository at all).
    fn shows(&self, s: &StackStatus) -> bool {
        if self.named.is_empty() {
            self.stack.as_deref().is_none_or(|w| {
                s.stack == w || (!s.dir.is_empty() && crate::desired::dir_matches(&s.dir, w))
            }) && self.namespace.as_deref().is_none_or(|n| n == s.namespace)
        } else {
            self.named
                .iter()
                .any(|n| n.stack == s.stack && n.namespace == s.namespace)
        }
    }

    /// Whether an unreadable record may be one the selectors ask for (its name, from the
    /// ConfigMap's, is all that is known of it).
    fn may_show(&self, f: &Found) -> bool {
        self.namespace.as_deref().is_none_or(|n| n == f.namespace)
            && (self.stack.is_none()
                || self.named.iter().any(|n| f.is_of(&n.stack))
                || self.stack.as_deref().is_some_and(|w| f.is_of(w)))
    }
}

/// What [`gather`] found.
#[derive(Debug, Default)]
pub struct Gathered {
    /// The picked stacks, by namespace then name.
    pub stacks: Vec<StackView>,
    /// Records that may be picked but do not parse: the caller says so, they are never
    /// silently skipped; left as they are (the next reconcile keeps a copy aside).
    pub unreadable: Vec<Unreadable>,
}

/// A status record that does not parse.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Unreadable {
    /// `ConfigMap <namespace>/<name>`.
    pub what: String,
    /// Why it does not parse.
    pub error: String,
}

/// The records `pick` names, each with its live components and daemon.
pub async fn gather(cluster: &Cluster, pick: &Pick) -> Result<Gathered, ClusterError> {
    let mut unreadable = Vec::new();
    let mut records = Vec::new();
    for f in super::read_all(cluster).await? {
        let may_show = pick.may_show(&f);
        match f.record {
            Record::Status(s) if pick.shows(&s) => records.push(s),
            Record::Unreadable { ref error, .. } if may_show => unreadable.push(Unreadable {
                what: f.what(),
                error: error.clone(),
            }),
            _ => {}
        }
    }
    records.sort_by(|a, b| (&a.namespace, &a.stack).cmp(&(&b.namespace, &b.stack)));
    let mut stacks = Vec::new();
    for recorded in records {
        let live = live_components(cluster, &recorded).await?;
        let daemon = daemon_of(cluster, &recorded).await;
        // A pause record that cannot be read holds no pause (the reconcile says the same).
        let now = chrono::Utc::now();
        let paused =
            crate::cluster::pause::load(cluster.client(), &recorded.namespace, &recorded.stack)
                .await?
                .map(|p| p.pauses.into_iter().filter(|p| p.active(now)).collect())
                .unwrap_or_default();
        stacks.push(StackView {
            recorded,
            live,
            daemon,
            paused,
            local_urls: Vec::new(),
        });
    }
    Ok(Gathered { stacks, unreadable })
}

/// The workloads `lp` selects whose replicas stand for their component ([`kinds::counted`]),
/// as (kind, object), kind by kind in the table's order; each object carries its `kind` and
/// `apiVersion`, which a list leaves out of its items. `converge status` and `explain` both
/// look through this, so they see the same workloads.
pub async fn counted_workloads(
    cluster: &Cluster,
    ns: &str,
    lp: &ListParams,
) -> Result<Vec<(&'static str, Value)>, ClusterError> {
    let mut out = Vec::new();
    for rule in kinds::counted() {
        // Built from the table, not discovered: these kinds are served by every cluster.
        let gvk = GroupVersionKind::gvk(rule.group, rule.version, rule.kind);
        let ar = ApiResource::from_gvk_with_plural(&gvk, rule.plural);
        let api: Api<DynamicObject> = Api::namespaced_with(cluster.client().clone(), ns, &ar);
        let list = api.list(lp).await.map_err(|e| {
            ClusterError::from_kube("listing", format!("{} in {ns}", rule.plural), e)
        })?;
        let api_version = gvk.api_version();
        out.extend(values(list.items).into_iter().map(|mut v| {
            if let Some(o) = v.as_object_mut() {
                o.insert("kind".into(), rule.kind.into());
                o.insert("apiVersion".into(), api_version.clone().into());
            }
            (rule.kind, v)
        }));
    }
    Ok(out)
}

/// Ready/desired replicas and health of each component's workloads, as the cluster has them now.
async fn live_components(
    cluster: &Cluster,
    s: &StackStatus,
) -> Result<Vec<LiveComponent>, ClusterError> {
    let ns = s.namespace.as_str();
    let lp = ListParams::default().labels(&format!("{LABEL_STACK}={}", s.stack));
    let workloads = counted_workloads(cluster, ns, &lp).await?;
    let component_of = |v: &Value| -> String {
        v.pointer("/metadata/labels")
            .and_then(|l| l.get(LABEL_COMPONENT))
            .and_then(Value::as_str)
            .unwrap_or("")
            .to_string()
    };
    // Components in the record's order, then any the cluster has that it does not name.
    let mut names: Vec<String> = s.components.iter().map(|c| c.name.clone()).collect();
    for (_, w) in &workloads {
        let c = component_of(w);
        if !c.is_empty() && !names.contains(&c) {
            names.push(c);
        }
    }
    let mut out = Vec::new();
    for name in names {
        let mine: Vec<(&str, &Value)> = workloads
            .iter()
            .filter(|(_, w)| component_of(w) == name)
            .map(|(kind, w)| (*kind, w))
            .collect();
        let mut c = LiveComponent {
            name: name.clone(),
            ..LiveComponent::default()
        };
        let mut stuck_pod = None;
        for (kind, w) in &mine {
            // A Pod's own reason (CrashLoopBackOff, ImagePullBackOff…) says more than the
            // rollout's; Pods carry the workload's selector labels, not converge's.
            if let (None, Some(sel)) = (&stuck_pod, selector_of(w)) {
                let pods = cluster
                    .list_in::<Pod>(ns, &ListParams::default().labels(&sel))
                    .await?;
                stuck_pod = values(pods)
                    .iter()
                    .find_map(health::pod_problem)
                    .map(|(why, msg)| format!("{why}: {msg}"));
            }
            if let Some((ready, desired)) = kinds::ready_counts(kind, w) {
                c.ready += ready;
                c.desired += desired;
            }
        }
        (c.health, c.reason) = component_health(&ComponentFacts {
            workloads: mine,
            searched: true,
            stuck_pod: stuck_pod.as_deref(),
            ..ComponentFacts::default()
        });
        out.push(c);
    }
    Ok(out)
}

/// The stack's Lease: held when a holder renewed it within its duration. A Lease that cannot be
/// read shows as no daemon (status is about the stack, not the Lease).
async fn daemon_of(cluster: &Cluster, s: &StackStatus) -> DaemonView {
    let name = crate::vocabulary::lease_name(&s.stack);
    let Ok(Some(l)) = cluster.get_in::<Lease>(&s.namespace, &name).await else {
        return DaemonView::default();
    };
    let spec = l.spec.clone().unwrap_or_default();
    let renewed = spec.renew_time.clone().or(spec.acquire_time.clone());
    DaemonView {
        held: lease::live_holder(&l, k8s_openapi::jiff::Timestamp::now()).is_some(),
        holder: spec.holder_identity.clone().unwrap_or_default(),
        checkout: lease::checkout_of(&l).unwrap_or_default().to_string(),
        renewed: renewed.map(|t| t.0.to_string()).unwrap_or_default(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(stack: &str, namespace: &str, dir: &str) -> StackStatus {
        StackStatus {
            stack: stack.into(),
            namespace: namespace.into(),
            dir: dir.into(),
            ..StackStatus::default()
        }
    }

    fn named(stack: &str, namespace: &str) -> StackRef {
        StackRef {
            stack: stack.into(),
            namespace: namespace.into(),
            ..StackRef::default()
        }
    }

    fn unreadable(stack: &str, namespace: &str) -> Found {
        Found {
            namespace: namespace.into(),
            name: crate::vocabulary::status_name(stack),
            record: Record::Unreadable {
                text: String::new(),
                error: "bad".into(),
            },
        }
    }

    #[test]
    fn without_the_repository_records_are_picked_by_name_directory_and_namespace() {
        let pick = Pick {
            stack: Some("dev".into()),
            namespace: None,
            named: Vec::new(),
        };
        assert!(pick.shows(&record("todo", "apps", "desired/dev")));
        assert!(pick.shows(&record("dev", "apps", "")));
        assert!(!pick.shows(&record("todo", "apps", "")));
        let everything = Pick::default();
        assert!(everything.shows(&record("todo", "apps", "")));
        let in_ns = Pick {
            namespace: Some("apps".into()),
            ..Pick::default()
        };
        assert!(!in_ns.shows(&record("todo", "other", "")));
    }

    #[test]
    fn what_the_repository_names_is_matched_by_name_and_namespace() {
        let pick = Pick {
            stack: Some("dev".into()),
            namespace: None,
            named: vec![named("todo", "apps")],
        };
        assert!(pick.shows(&record("todo", "apps", "")));
        // The directory alone is not enough once the repository named the stack.
        assert!(!pick.shows(&record("todo", "staging", "desired/dev")));
    }

    #[test]
    fn an_unreadable_record_is_reported_when_it_may_be_the_one_asked_for() {
        let pick = Pick {
            stack: Some("dev".into()),
            namespace: Some("apps".into()),
            named: vec![named("todo", "apps")],
        };
        assert!(pick.may_show(&unreadable("todo", "apps")));
        assert!(pick.may_show(&unreadable("dev", "apps")));
        assert!(!pick.may_show(&unreadable("other", "apps")));
        assert!(!pick.may_show(&unreadable("todo", "elsewhere")));
        assert!(Pick::default().may_show(&unreadable("any", "where")));
    }
}
