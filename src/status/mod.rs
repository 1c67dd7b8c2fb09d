//! The status record of one stack, kept in a ConfigMap in its namespace so `converge status`
//! works from any machine, with or without the daemon. Holds references, never Secret values.

pub mod view;

use std::fmt;

use serde::{Deserialize, Serialize};
use serde_json::Value;
use tracing::warn;

use k8s_openapi::api::core::v1::ConfigMap;
use kube::api::ListParams;

use crate::cluster::health::Health;
use crate::cluster::kinds;
use crate::cluster::record::Place;
use crate::cluster::{Cluster, ClusterError};
use crate::vocabulary::{status_name, LABEL_MANAGED_BY, MANAGED_BY};

/// How many reconciles the history keeps.
pub const HISTORY: usize = 10;

/// The status of one stack.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct StackStatus {
    /// The stack's name.
    pub stack: String,
    /// Its namespace.
    pub namespace: String,
    /// Its directory in the repository (`desired/dev`): two stacks may share a name.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub dir: String,
    /// The commit of the last reconcile that applied.
    pub last_applied_commit: String,
    /// The commit of the last reconcile that ended healthy.
    pub last_healthy_commit: String,
    /// `True` when the last reconcile succeeded.
    pub ready: bool,
    /// A Flux-style reason constant.
    pub reason: String,
    /// A one-line message.
    pub message: String,
    /// Per component.
    pub components: Vec<ComponentStatus>,
    /// The last reconciles, newest first.
    pub history: Vec<HistoryEntry>,
    /// The applied commit is converge's automatic revert of a commit that failed its health
    /// checks (`onFailure: revert`).
    // Boxed: rare, and it keeps `Record::Status` close to the size of the other variants.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub auto_revert: Option<Box<AutoRevert>>,
}

/// An automatic revert converge made: which commit failed, why, and the revert commit.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct AutoRevert {
    /// The commit that failed its health checks.
    pub failed: String,
    /// The revert commit converge made and deployed.
    pub revert: String,
    /// Why the failed commit was reverted (its reason and step).
    pub why: String,
}

/// The status of one component.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ComponentStatus {
    /// Its name.
    pub name: String,
    /// The image deployed.
    pub image: String,
    /// Ready replicas.
    pub ready: i64,
    /// Desired replicas.
    pub desired: i64,
    /// `Healthy`, `Progressing`, `Failed` or `Blocked`.
    pub health: ComponentHealth,
    /// The last error, if any.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub last_error: String,
    /// When this component's status last changed (RFC 3339).
    pub since: String,
}

/// How a component is: in status records, `converge status`, the daemon's page and `converge
/// explain`. Serialised as today's words (`"Healthy"`…), so records stay readable both ways.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum ComponentHealth {
    /// Every workload of it is ready.
    Healthy,
    /// Still rolling out.
    Progressing,
    /// It failed to apply or to become healthy.
    Failed,
    /// Held back by the run (a missing Secret, an unbuilt image, an unhealthy dependency).
    Blocked,
    /// No workload of it in the cluster.
    #[default]
    Missing,
}

impl ComponentHealth {
    /// The word, as serialised.
    pub fn as_str(self) -> &'static str {
        match self {
            ComponentHealth::Healthy => "Healthy",
            ComponentHealth::Progressing => "Progressing",
            ComponentHealth::Failed => "Failed",
            ComponentHealth::Blocked => "Blocked",
            ComponentHealth::Missing => "Missing",
        }
    }
}

impl fmt::Display for ComponentHealth {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // `pad`, so `{:<12}` lines up tables.
        f.pad(self.as_str())
    }
}

/// What is known of one component, for [`component_health`]: each caller fills in what it has.
#[derive(Debug, Default)]
pub struct ComponentFacts<'a> {
    /// Why the run held it back, when it did.
    pub blocked: Option<&'a str>,
    /// Why it failed to apply or to become healthy, when it did.
    pub failed: Option<&'a str>,
    /// Its workloads whose replicas stand for it ([`kinds::counted`]), as last seen:
    /// (kind, object).
    pub workloads: Vec<(&'a str, &'a Value)>,
    /// Whether the cluster was searched for its workloads, so none found means none there
    /// (`Missing`). A run knows only the workloads it rendered: a component that renders none
    /// has nothing to become healthy.
    pub searched: bool,
    /// Why the health wait failed, when it failed on one of these workloads.
    pub wait_failure: Option<&'a str>,
    /// A Pod of it stuck in a failing state, in words (`CrashLoopBackOff: …`).
    pub stuck_pod: Option<&'a str>,
}

/// The one rule of a component's health, with why when it is not healthy: what the run decided
/// first (held back, failed), then its workloads' health ([`kinds::health`]), where the health
/// wait's own failure and a stuck Pod say more than a rollout's progress.
pub fn component_health(f: &ComponentFacts) -> (ComponentHealth, String) {
    if let Some(why) = f.blocked {
        return (ComponentHealth::Blocked, why.to_string());
    }
    if let Some(why) = f.failed {
        return (ComponentHealth::Failed, why.to_string());
    }
    if f.workloads.is_empty() {
        return if f.searched {
            (
                ComponentHealth::Missing,
                format!("no {} of it in the cluster", kinds::counted_names()),
            )
        } else {
            (ComponentHealth::Healthy, String::new())
        };
    }
    let mut failed = None;
    let mut progressing = None;
    for (kind, live) in &f.workloads {
        match kinds::health(kind, live) {
            Health::Ready => {}
            Health::Progressing(m) => {
                progressing.get_or_insert(m);
            }
            Health::Failed(m) => failed = Some(m),
        }
    }
    if failed.is_none() && progressing.is_none() && f.stuck_pod.is_none() {
        return (ComponentHealth::Healthy, String::new());
    }
    let pod = f.stuck_pod.map(str::to_string);
    if let Some(why) = f.wait_failure {
        (ComponentHealth::Failed, why.to_string())
    } else if let Some(m) = failed {
        (ComponentHealth::Failed, pod.unwrap_or(m))
    } else {
        (
            ComponentHealth::Progressing,
            pod.or(progressing).unwrap_or_default(),
        )
    }
}

/// One reconcile in the history.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct HistoryEntry {
    /// The commit.
    pub commit: String,
    /// The reason constant.
    pub result: String,
    /// How long it took, in milliseconds.
    pub duration_ms: u64,
    /// When it ended (RFC 3339).
    pub time: String,
}

/// The data key of the status record in its ConfigMap.
pub const DATA_KEY: &str = "status.json";

/// The prefix of the key a record that could not be read is kept under.
pub const UNREADABLE_PREFIX: &str = "status.json.unreadable-";

/// What the cluster holds as the status of a stack.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Record {
    /// Nothing recorded yet.
    Missing,
    /// A record converge can read.
    Status(StackStatus),
    /// A record that does not parse (edited by hand, truncated, a newer format): never
    /// overwritten before it is kept aside.
    Unreadable {
        /// The text as found.
        text: String,
        /// Why it does not parse.
        error: String,
    },
}

/// Parses the text of a status record; `Unreadable` keeps the text and why.
pub fn parse(text: Option<String>) -> Record {
    match text {
        None => Record::Missing,
        Some(t) => match serde_json::from_str(&t) {
            Ok(s) => Record::Status(s),
            Err(e) => Record::Unreadable {
                text: t,
                error: e.to_string(),
            },
        },
    }
}

/// Reads the status record of `stack`, readable or not.
pub async fn read(
    client: &kube::Client,
    namespace: &str,
    stack: &str,
) -> Result<Record, ClusterError> {
    let name = status_name(stack);
    Ok(parse(place(namespace, &name, stack).read(client).await?))
}

/// Reads the status of `stack` for display; `None` when converge has never recorded one. A
/// record that does not parse is reported (a warning naming it) and left as it is.
pub async fn load(
    client: &kube::Client,
    namespace: &str,
    stack: &str,
) -> Result<Option<StackStatus>, ClusterError> {
    match read(client, namespace, stack).await? {
        Record::Missing => Ok(None),
        Record::Status(s) => Ok(Some(s)),
        Record::Unreadable { error, .. } => {
            let name = status_name(stack);
            warn!(
                record = %place(namespace, &name, stack).what(),
                %error,
                "the status record is unreadable; left as it is (the next reconcile keeps a copy aside)"
            );
            Ok(None)
        }
    }
}

/// Reads the status of `stack` before a new one is written over it. A record that does not
/// parse is first copied aside, under `status.json.unreadable-<UTC time>` of the same ConfigMap,
/// and the returned message says where; if the copy fails, the error is returned and the caller
/// must not write, so a record is never lost.
pub async fn load_for_update(
    client: &kube::Client,
    namespace: &str,
    stack: &str,
) -> Result<(Option<StackStatus>, Option<String>), ClusterError> {
    match read(client, namespace, stack).await? {
        Record::Missing => Ok((None, None)),
        Record::Status(s) => Ok((Some(s), None)),
        Record::Unreadable { text, error } => {
            let name = status_name(stack);
            let place = place(namespace, &name, stack);
            let key = format!(
                "{UNREADABLE_PREFIX}{}",
                chrono::Utc::now().format("%Y%m%dT%H%M%SZ")
            );
            place.keep_aside(client, &key, &text).await?;
            let message = format!(
                "the status record in {} was unreadable ({error}); kept as key `{key}` of that ConfigMap and started anew",
                place.what()
            );
            warn!("{message}");
            Ok((None, Some(message)))
        }
    }
}

/// One status record found in the cluster by [`read_all`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Found {
    /// The namespace it lives in.
    pub namespace: String,
    /// Its ConfigMap's name.
    pub name: String,
    /// What it holds.
    pub record: Record,
}

impl Found {
    /// Whether this is the record of a stack named `stack` (all that is known of a record that
    /// does not parse is its ConfigMap's name).
    pub fn is_of(&self, stack: &str) -> bool {
        self.name == status_name(stack)
    }

    /// `ConfigMap <namespace>/<name>`, for messages.
    pub fn what(&self) -> String {
        format!("ConfigMap {}/{}", self.namespace, self.name)
    }
}

/// Whether a ConfigMap's name is a status record's (`converge-<stack>-status`).
fn is_record_name(name: &str) -> bool {
    name.starts_with("converge-") && name.ends_with("-status")
}

/// Every status record converge keeps in the cluster, in every namespace, readable or not.
pub async fn read_all(cluster: &Cluster) -> Result<Vec<Found>, ClusterError> {
    let lp = ListParams::default().labels(&format!("{LABEL_MANAGED_BY}={MANAGED_BY}"));
    let maps = cluster.list_global::<ConfigMap>(&lp).await?;
    Ok(maps
        .into_iter()
        .filter_map(|c| {
            let name = c.metadata.name.clone().filter(|n| is_record_name(n))?;
            let namespace = c.metadata.namespace.clone().unwrap_or_default();
            let text = c.data.and_then(|mut d| d.remove(DATA_KEY));
            Some(Found {
                namespace,
                name,
                record: parse(text),
            })
        })
        .collect())
}

fn place<'a>(namespace: &'a str, name: &'a str, stack: &'a str) -> Place<'a> {
    Place {
        namespace,
        name,
        stack,
        key: DATA_KEY,
    }
}

/// Writes the status of `stack`.
pub async fn save(client: &kube::Client, status: &StackStatus) -> Result<(), ClusterError> {
    let name = status_name(&status.stack);
    let text = serde_json::to_string_pretty(status).unwrap_or_default();
    place(&status.namespace, &name, &status.stack)
        .write(client, text)
        .await
}

/// Whether `new` differs from `old` in anything but timestamps and durations, so an unchanged
/// reconcile writes nothing.
pub fn materially_changed(old: &StackStatus, new: &StackStatus) -> bool {
    let strip = |s: &StackStatus| {
        let mut s = s.clone();
        s.history.clear();
        for c in &mut s.components {
            c.since.clear();
        }
        s
    };
    strip(old) != strip(new)
}

/// Builds the next status: `next` with `old`'s history plus this reconcile, and component
/// `since` times kept where nothing changed.
pub fn advance(
    old: Option<&StackStatus>,
    mut next: StackStatus,
    entry: HistoryEntry,
) -> StackStatus {
    let mut history = old.map(|o| o.history.clone()).unwrap_or_default();
    history.insert(0, entry);
    history.truncate(HISTORY);
    next.history = history;
    if let Some(old) = old {
        for c in &mut next.components {
            if let Some(prev) = old.components.iter().find(|p| p.name == c.name) {
                let mut a = prev.clone();
                a.since.clear();
                let mut b = c.clone();
                b.since.clear();
                if a == b {
                    c.since = prev.since.clone();
                }
            }
        }
    }
    next
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn history_keeps_the_last_ten_newest_first() {
        let mut s: Option<StackStatus> = None;
        for i in 0..12 {
            let e = HistoryEntry {
                commit: format!("c{i}"),
                ..Default::default()
            };
            s = Some(advance(s.as_ref(), StackStatus::default(), e));
        }
        let h = s.unwrap().history;
        assert_eq!(h.len(), HISTORY);
        assert_eq!(h[0].commit, "c11");
    }

    #[test]
    fn timestamps_alone_are_not_a_change() {
        let a = StackStatus {
            components: vec![ComponentStatus {
                name: "x".into(),
                since: "t1".into(),
                ..Default::default()
            }],
            ..Default::default()
        };
        let mut b = a.clone();
        b.components[0].since = "t2".into();
        assert!(!materially_changed(&a, &b));
        b.components[0].ready = 1;
        assert!(materially_changed(&a, &b));
    }

    #[test]
    fn component_health_is_written_as_the_words_records_always_held() {
        for h in [
            ComponentHealth::Healthy,
            ComponentHealth::Progressing,
            ComponentHealth::Failed,
            ComponentHealth::Blocked,
            ComponentHealth::Missing,
        ] {
            let word = serde_json::to_string(&h).unwrap();
            assert_eq!(word, format!("\"{}\"", h.as_str()));
            assert_eq!(serde_json::from_str::<ComponentHealth>(&word).unwrap(), h);
        }
        assert_eq!(format!("{:<9}|", ComponentHealth::Failed), "Failed   |");
    }

    #[test]
    fn what_the_run_decided_comes_before_what_the_workloads_show() {
        let ready = serde_json::json!({"metadata": {"generation": 1}, "spec": {"replicas": 1},
            "status": {"observedGeneration": 1, "replicas": 1, "updatedReplicas": 1, "availableReplicas": 1}});
        let rolling = serde_json::json!({"metadata": {"generation": 1}, "spec": {"replicas": 1},
            "status": {"observedGeneration": 1, "replicas": 1, "updatedReplicas": 0}});
        let judge = |f: ComponentFacts| component_health(&f);
        fn facts(live: &Value) -> ComponentFacts<'_> {
            ComponentFacts {
                workloads: vec![("Deployment", live)],
                ..ComponentFacts::default()
            }
        }
        let (ready, rolling) = (&ready, &rolling);
        assert_eq!(judge(facts(ready)).0, ComponentHealth::Healthy);
        assert_eq!(
            judge(ComponentFacts {
                blocked: Some("waits for `db`"),
                ..facts(ready)
            }),
            (ComponentHealth::Blocked, "waits for `db`".into())
        );
        assert_eq!(
            judge(facts(rolling)),
            (
                ComponentHealth::Progressing,
                "0 of 1 replicas updated".into()
            )
        );
        assert_eq!(
            judge(ComponentFacts {
                wait_failure: Some("not healthy within 5s: Deployment/web"),
                ..facts(rolling)
            })
            .0,
            ComponentHealth::Failed
        );
        assert_eq!(
            judge(ComponentFacts {
                stuck_pod: Some("CrashLoopBackOff: back-off"),
                ..facts(ready)
            }),
            (
                ComponentHealth::Progressing,
                "CrashLoopBackOff: back-off".into()
            )
        );
        // Nothing rendered is nothing to wait for; nothing found in the cluster is missing.
        assert_eq!(judge(ComponentFacts::default()).0, ComponentHealth::Healthy);
        let missing = judge(ComponentFacts {
            searched: true,
            ..ComponentFacts::default()
        });
        assert_eq!(missing.0, ComponentHealth::Missing);
        assert_eq!(
            missing.1,
            "no Deployment, StatefulSet or DaemonSet of it in the cluster"
        );
    }

    #[test]
    fn a_record_that_does_not_parse_is_kept_with_why() {
        assert_eq!(parse(None), Record::Missing);
        let good = serde_json::to_string(&StackStatus::default()).unwrap();
        assert!(matches!(parse(Some(good)), Record::Status(_)));
        match parse(Some("{\"stack\": 1".into())) {
            Record::Unreadable { text, error } => {
                assert_eq!(text, "{\"stack\": 1");
                assert!(!error.is_empty());
            }
            other => panic!("{other:?}"),
        }
    }
}
