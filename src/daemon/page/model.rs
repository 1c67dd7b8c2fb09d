//! What the page shows, as one serialisable snapshot, and the pure rules that fold the daemon's
//! events ([`super::bus::Event`]) and the cluster's view into it. Times are wall-clock
//! milliseconds since the epoch, so the browser counts elapsed time itself (no server ticks).
//! Holds no Secret value: the status record and explain's diagnoses hold none.

use std::collections::{BTreeMap, VecDeque};

use serde::Serialize;

use super::bus::Event;
use crate::status::view::StackView;
use crate::status::ComponentHealth;

/// How many activity lines are kept.
pub const ACTIVITY: usize = 30;
/// How many reconciles' builds are remembered (the status history keeps 10).
const RUNS: usize = 20;

/// The whole page.
#[derive(Debug, Clone, Default, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Snapshot {
    /// Bumped on every change.
    pub seq: u64,
    /// The daemon itself.
    pub daemon: DaemonInfo,
    /// Whether the cluster answered the last read.
    pub cluster: ClusterState,
    /// Each stack, as the cluster holds it.
    pub stacks: Vec<StackPage>,
    /// The reconcile in flight.
    pub running: Option<Running>,
    /// Drift noticed and not yet corrected.
    pub drift: Vec<Drift>,
    /// What happened lately, newest first.
    pub activity: VecDeque<Activity>,
}

/// The daemon's identity.
#[derive(Debug, Clone, Default, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct DaemonInfo {
    /// Its process id.
    pub pid: u32,
    /// converge's version.
    pub version: String,
    /// The checkout it deploys from.
    pub checkout: String,
    /// The ref it follows.
    pub tracked: String,
    /// The newest commit of that ref it has seen.
    pub tip: String,
    /// When it started.
    pub started_ms: i64,
}

/// Whether the cluster answered.
#[derive(Debug, Clone, Default, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ClusterState {
    /// The last read succeeded; `None` before the first read.
    pub reachable: Option<bool>,
    /// Why the last read failed.
    pub error: String,
    /// When it was last read (either way).
    pub checked_ms: i64,
    /// Since when it has been unreachable.
    pub since_ms: i64,
}

/// One stack.
#[derive(Debug, Clone, Default, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct StackPage {
    /// Its name.
    pub stack: String,
    /// Its namespace.
    pub namespace: String,
    /// The last applied commit.
    pub commit: String,
    /// `Ready`, `Failed` or `Progressing`.
    pub state: String,
    /// The reason constant of the last reconcile.
    pub reason: String,
    /// Its message.
    pub message: String,
    /// Each component, as the cluster shows it now.
    pub components: Vec<ComponentPage>,
    /// The last reconciles, newest first.
    pub history: Vec<HistoryLine>,
}

/// One component.
#[derive(Debug, Clone, Default, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ComponentPage {
    /// Its name.
    pub name: String,
    /// The image deployed.
    pub image: String,
    /// The image's tag (or digest).
    pub tag: String,
    /// Ready replicas now.
    pub ready: i64,
    /// Desired replicas now.
    pub desired: i64,
    /// `Healthy`, `Progressing`, `Failed` or `Missing`.
    pub health: ComponentHealth,
    /// Why not healthy, as the cluster says.
    pub reason: String,
    /// What `converge explain` finds, when not healthy.
    pub finding: Option<Finding>,
}

/// explain's diagnosis of an unhealthy component.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Finding {
    /// The rule (`CrashLoopBackOff`, …).
    pub rule: String,
    /// What is wrong.
    pub summary: String,
    /// What to do next.
    pub next_step: String,
}

/// One reconcile of the history.
#[derive(Debug, Clone, Default, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct HistoryLine {
    /// The commit.
    pub commit: String,
    /// The reason constant.
    pub result: String,
    /// Its length in milliseconds.
    pub duration_ms: u64,
    /// When it ended (RFC 3339).
    pub time: String,
    /// What its images needed, when this daemon ran it.
    pub builds: Vec<String>,
}

/// The reconcile in flight.
#[derive(Debug, Clone, Default, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Running {
    /// The commit.
    pub commit: String,
    /// Why it runs.
    pub trigger: String,
    /// When it started.
    pub started_ms: i64,
    /// Its steps so far, in order.
    pub steps: Vec<Step>,
}

/// One step of a running reconcile.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Step {
    /// What it is (`build/<image>`, `health/<stack>`, `hook/<name>`).
    pub key: String,
    /// The text shown.
    pub text: String,
    /// `running`, `done` or `failed`.
    pub state: String,
    /// When it started.
    pub started_ms: i64,
    /// How long it took, once over.
    pub elapsed_ms: Option<u64>,
}

/// A drift noticed and not corrected yet.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Drift {
    /// The stack.
    pub stack: String,
    /// `Kind/name`.
    pub object: String,
    /// Who changed it.
    pub manager: String,
    /// `changed` or `deleted`.
    pub what: String,
    /// When it was noticed.
    pub at_ms: i64,
}

/// One line of recent activity.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Activity {
    /// When.
    pub at_ms: i64,
    /// `reconcile`, `drift`, `commit`, `cluster`.
    pub kind: String,
    /// What happened.
    pub text: String,
}

/// The snapshot and what folding needs beyond it.
#[derive(Debug, Default)]
pub struct Model {
    /// What the page shows.
    pub snapshot: Snapshot,
    /// Builds per commit, from reconciles this daemon ran.
    builds: VecDeque<(String, Vec<String>)>,
}

/// The first 7 characters of a commit id.
pub fn short(commit: &str) -> &str {
    commit.get(..7).unwrap_or(commit)
}

/// The tag (or digest) of an image reference.
pub fn tag_of(image: &str) -> String {
    if let Some((_, digest)) = image.split_once('@') {
        return digest.to_string();
    }
    match image.rsplit_once(':') {
        Some((_, tag)) if !tag.contains('/') => tag.to_string(),
        _ => "latest".into(),
    }
}

impl Model {
    fn note(&mut self, now_ms: i64, kind: &str, text: String) {
        let a = &mut self.snapshot.activity;
        a.push_front(Activity {
            at_ms: now_ms,
            kind: kind.into(),
            text,
        });
        a.truncate(ACTIVITY);
    }

    /// Folds one event in at `now_ms`; true when the cluster should be read again.
    pub fn apply(&mut self, event: Event, now_ms: i64) -> bool {
        self.snapshot.seq += 1;
        match event {
            Event::Progress { step, fields } => {
                self.progress(&step, &fields, now_ms);
                false
            }
            Event::Started { trigger, commit } => {
                self.note(
                    now_ms,
                    "reconcile",
                    format!("reconcile of {} started ({trigger})", short(&commit)),
                );
                self.snapshot.running = Some(Running {
                    commit,
                    trigger,
                    started_ms: now_ms,
                    steps: Vec::new(),
                });
                false
            }
            Event::Finished {
                commit,
                outcome,
                took_ms,
                builds,
                message,
            } => {
                let started = self
                    .snapshot
                    .running
                    .take()
                    .map_or(now_ms, |r| r.started_ms);
                let mut text = format!(
                    "reconcile of {} {outcome} ({:.1}s)",
                    short(&commit),
                    took_ms as f64 / 1000.0
                );
                if !message.is_empty() {
                    text.push_str(": ");
                    text.push_str(&message);
                }
                if outcome == "succeeded" {
                    // What it started after has been put back as committed.
                    let (fixed, kept): (Vec<Drift>, Vec<Drift>) =
                        std::mem::take(&mut self.snapshot.drift)
                            .into_iter()
                            .partition(|d| d.at_ms <= started);
                    self.snapshot.drift = kept;
                    for d in fixed {
                        self.note(now_ms, "drift", format!("drift of {} corrected", d.object));
                    }
                }
                self.note(now_ms, "reconcile", text);
                if !builds.is_empty() {
                    self.builds.retain(|(c, _)| c != &commit);
                    self.builds.push_front((commit, builds));
                    self.builds.truncate(RUNS);
                }
                true
            }
            Event::Drift {
                stack,
                object,
                manager,
                deleted,
                paused,
            } => {
                let what = if deleted { "deleted" } else { "changed" };
                if paused {
                    self.note(
                        now_ms,
                        "drift",
                        format!("{object} {what} by {manager}: paused, left alone"),
                    );
                    return false;
                }
                self.note(
                    now_ms,
                    "drift",
                    format!("{object} {what} out of band by {manager}; correcting"),
                );
                self.snapshot
                    .drift
                    .retain(|d| !(d.stack == stack && d.object == object));
                self.snapshot.drift.push(Drift {
                    stack,
                    object,
                    manager,
                    what: what.into(),
                    at_ms: now_ms,
                });
                true
            }
            Event::Tip { commit } => {
                if commit != self.snapshot.daemon.tip {
                    self.note(now_ms, "commit", format!("new commit {}", short(&commit)));
                    self.snapshot.daemon.tip = commit;
                }
                false
            }
            Event::Refresh => true,
        }
    }

    fn progress(&mut self, step: &str, f: &BTreeMap<String, String>, now_ms: i64) {
        let Some(run) = self.snapshot.running.as_mut() else {
            return;
        };
        let get = |k: &str| f.get(k).map(String::as_str).unwrap_or("");
        let (family, phase) = step.split_once('.').unwrap_or((step, ""));
        let key = match family {
            "build" if phase != "summary" => format!("build/{}", get("image")),
            "health" => format!("health/{}", get("stack")),
            "hook" => format!("hook/{}", get("hook")),
            _ => format!("{step}/{}", run.steps.len()),
        };
        let text = match step {
            "build.start" => format!("building {} ({})", get("component"), get("image")),
            "build.done" if get("action") == "failed" => format!(
                "build of {} ({}) failed: {}",
                get("component"),
                get("image"),
                get("reason")
            ),
            "build.done" => format!("built {} ({})", get("component"), get("image")),
            _ => get("message").to_string(),
        };
        let over = matches!(phase, "done" | "skipped" | "summary");
        let failed = get("action") == "failed" || get("message").starts_with("not healthy");
        let elapsed = f.get("elapsed_ms").and_then(|v| v.parse().ok());
        match run.steps.iter_mut().find(|s| s.key == key) {
            Some(s) => {
                if !(step == "health.done" && text.is_empty()) {
                    s.text = text;
                }
                if over {
                    s.state = if failed { "failed" } else { "done" }.into();
                    s.elapsed_ms =
                        Some(elapsed.unwrap_or_else(|| (now_ms - s.started_ms).max(0) as u64));
                }
            }
            None => run.steps.push(Step {
                key,
                text,
                state: if !over {
                    "running"
                } else if failed {
                    "failed"
                } else {
                    "done"
                }
                .into(),
                started_ms: now_ms,
                elapsed_ms: over.then(|| elapsed.unwrap_or(0)),
            }),
        }
    }

    /// The cluster answered: these are the stacks, with explain's findings by
    /// (stack, component).
    pub fn read_ok(
        &mut self,
        views: &[StackView],
        findings: &BTreeMap<(String, String), Finding>,
        now_ms: i64,
    ) {
        self.snapshot.seq += 1;
        let c = &mut self.snapshot.cluster;
        if c.reachable == Some(false) {
            self.note(now_ms, "cluster", "the cluster answers again".into());
        }
        let c = &mut self.snapshot.cluster;
        c.reachable = Some(true);
        c.error.clear();
        c.checked_ms = now_ms;
        c.since_ms = 0;
        self.snapshot.stacks = views.iter().map(|v| self.stack_page(v, findings)).collect();
    }

    /// The cluster did not answer.
    pub fn read_failed(&mut self, error: String, now_ms: i64) {
        self.snapshot.seq += 1;
        let was = self.snapshot.cluster.reachable;
        let c = &mut self.snapshot.cluster;
        c.checked_ms = now_ms;
        if was != Some(false) {
            c.since_ms = now_ms;
        }
        c.reachable = Some(false);
        c.error = error.clone();
        if was != Some(false) {
            self.note(now_ms, "cluster", format!("cluster unreachable: {error}"));
        }
    }

    fn stack_page(
        &self,
        v: &StackView,
        findings: &BTreeMap<(String, String), Finding>,
    ) -> StackPage {
        let r = &v.recorded;
        let healthy_now = v.live.iter().all(|c| c.health == ComponentHealth::Healthy);
        let state = if r.ready && healthy_now {
            "Ready"
        } else if r.reason.contains("Progress") || (r.ready && !healthy_now) {
            "Progressing"
        } else {
            "Failed"
        };
        let components = v
            .live
            .iter()
            .map(|l| {
                let image = r
                    .components
                    .iter()
                    .find(|c| c.name == l.name)
                    .map(|c| c.image.clone())
                    .unwrap_or_default();
                ComponentPage {
                    name: l.name.clone(),
                    tag: if image.is_empty() {
                        String::new()
                    } else {
                        tag_of(&image)
                    },
                    image,
                    ready: l.ready,
                    desired: l.desired,
                    health: l.health,
                    reason: l.reason.clone(),
                    finding: findings.get(&(r.stack.clone(), l.name.clone())).cloned(),
                }
            })
            .collect();
        let history = r
            .history
            .iter()
            .map(|h| HistoryLine {
                commit: h.commit.clone(),
                result: h.result.clone(),
                duration_ms: h.duration_ms,
                time: h.time.clone(),
                builds: self
                    .builds
                    .iter()
                    .find(|(c, _)| c == &h.commit)
                    .map(|(_, b)| b.clone())
                    .unwrap_or_default(),
            })
            .collect();
        StackPage {
            stack: r.stack.clone(),
            namespace: r.namespace.clone(),
            commit: r.last_applied_commit.clone(),
            state: state.into(),
            reason: r.reason.clone(),
            message: r.message.clone(),
            components,
            history,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::status::view::{DaemonView, LiveComponent};
    use crate::status::{ComponentStatus, HistoryEntry, StackStatus};

    fn progress(step: &str, fields: &[(&str, &str)]) -> Event {
        Event::Progress {
            step: step.into(),
            fields: fields
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
        }
    }

    fn started(m: &mut Model, at: i64) {
        m.apply(
            Event::Started {
                trigger: "commit".into(),
                commit: "abcdef123456".into(),
            },
            at,
        );
    }

    #[test]
    fn a_build_step_runs_then_ends_with_its_elapsed_time() {
        let mut m = Model::default();
        started(&mut m, 1_000);
        m.apply(
            progress("build.start", &[("component", "web"), ("image", "web:1")]),
            1_100,
        );
        let s = &m.snapshot.running.as_ref().unwrap().steps[0];
        assert_eq!((s.state.as_str(), s.started_ms), ("running", 1_100));
        assert_eq!(s.text, "building web (web:1)");
        m.apply(
            progress(
                "build.done",
                &[
                    ("component", "web"),
                    ("image", "web:1"),
                    ("action", "built"),
                    ("elapsed_ms", "2500"),
                ],
            ),
            3_600,
        );
        let steps = &m.snapshot.running.as_ref().unwrap().steps;
        assert_eq!(steps.len(), 1, "the same step, ended");
        assert_eq!(steps[0].state, "done");
        assert_eq!(steps[0].elapsed_ms, Some(2_500));
    }

    #[test]
    fn a_health_wait_updates_one_line_and_a_failed_build_says_why() {
        let mut m = Model::default();
        started(&mut m, 0);
        for (at, msg) in [
            (10, "waiting for todo (59s left): backend"),
            (20, "waiting for todo (50s left): backend"),
        ] {
            m.apply(
                progress("health.wait", &[("stack", "todo"), ("message", msg)]),
                at,
            );
        }
        m.apply(
            progress(
                "build.done",
                &[
                    ("component", "api"),
                    ("image", "api:2"),
                    ("action", "failed"),
                    ("reason", "exit 1"),
                ],
            ),
            30,
        );
        let steps = &m.snapshot.running.as_ref().unwrap().steps;
        assert_eq!(steps.len(), 2);
        assert_eq!(steps[0].text, "waiting for todo (50s left): backend");
        assert_eq!(steps[0].state, "running");
        assert_eq!(steps[1].state, "failed");
        assert!(steps[1].text.contains("exit 1"), "{:?}", steps[1]);
        m.apply(
            progress(
                "health.done",
                &[("stack", "todo"), ("message", "not healthy: todo")],
            ),
            40,
        );
        assert_eq!(
            m.snapshot.running.as_ref().unwrap().steps[0].state,
            "failed"
        );
    }

    #[test]
    fn progress_outside_a_reconcile_is_ignored() {
        let mut m = Model::default();
        m.apply(progress("health.wait", &[("stack", "todo")]), 5);
        assert!(m.snapshot.running.is_none());
    }

    #[test]
    fn drift_shows_until_a_reconcile_started_after_it_succeeds() {
        let mut m = Model::default();
        let drift = |m: &mut Model, at| {
            m.apply(
                Event::Drift {
                    stack: "todo".into(),
                    object: "Deployment/web".into(),
                    manager: "kubectl".into(),
                    deleted: false,
                    paused: false,
                },
                at,
            )
        };
        assert!(drift(&mut m, 100), "drift asks for a fresh read");
        assert_eq!(m.snapshot.drift.len(), 1);
        drift(&mut m, 150);
        assert_eq!(m.snapshot.drift.len(), 1, "one line per object");
        let finish = |m: &mut Model, outcome: &str| {
            m.apply(
                Event::Finished {
                    commit: "abcdef123456".into(),
                    outcome: outcome.into(),
                    took_ms: 10,
                    builds: vec![],
                    message: String::new(),
                },
                300,
            )
        };
        started(&mut m, 200);
        finish(&mut m, "failed");
        assert_eq!(
            m.snapshot.drift.len(),
            1,
            "a failed correction leaves it shown"
        );
        started(&mut m, 200);
        finish(&mut m, "succeeded");
        assert!(m.snapshot.drift.is_empty());
        assert!(m.snapshot.activity[1]
            .text
            .contains("Deployment/web corrected"));
        // Drift noticed while a reconcile ran is corrected by the next one, not this one.
        started(&mut m, 400);
        drift(&mut m, 450);
        finish(&mut m, "succeeded");
        assert_eq!(m.snapshot.drift.len(), 1);
    }

    #[test]
    fn a_paused_drift_is_only_an_activity_line() {
        let mut m = Model::default();
        let ask = m.apply(
            Event::Drift {
                stack: "todo".into(),
                object: "Deployment/web".into(),
                manager: "kubectl".into(),
                deleted: true,
                paused: true,
            },
            1,
        );
        assert!(!ask);
        assert!(m.snapshot.drift.is_empty());
        assert!(m.snapshot.activity[0]
            .text
            .contains("deleted by kubectl: paused"));
    }

    fn view(ready: bool, health: ComponentHealth) -> StackView {
        StackView {
            recorded: StackStatus {
                stack: "todo".into(),
                namespace: "ns".into(),
                last_applied_commit: "abcdef123456".into(),
                ready,
                reason: if ready {
                    "ReconciliationSucceeded"
                } else {
                    "HealthCheckFailed"
                }
                .into(),
                components: vec![ComponentStatus {
                    name: "web".into(),
                    image: "registry:5000/web:v2".into(),
                    ..Default::default()
                }],
                history: vec![HistoryEntry {
                    commit: "abcdef123456".into(),
                    result: "ReconciliationSucceeded".into(),
                    duration_ms: 900,
                    time: "t".into(),
                }],
                ..Default::default()
            },
            live: vec![LiveComponent {
                name: "web".into(),
                ready: 1,
                desired: 1,
                health,
                reason: String::new(),
            }],
            daemon: DaemonView::default(),
            paused: vec![],
            local_urls: vec![],
        }
    }

    #[test]
    fn stacks_carry_state_tag_finding_and_builds() {
        let mut m = Model::default();
        m.apply(
            Event::Finished {
                commit: "abcdef123456".into(),
                outcome: "succeeded".into(),
                took_ms: 900,
                builds: vec!["web built".into()],
                message: String::new(),
            },
            5,
        );
        let mut findings = BTreeMap::new();
        findings.insert(
            ("todo".to_string(), "web".to_string()),
            Finding {
                rule: "CrashLoopBackOff".into(),
                summary: "web crashes".into(),
                next_step: "read its log".into(),
            },
        );
        m.read_ok(
            &[view(true, ComponentHealth::Healthy)],
            &BTreeMap::new(),
            10,
        );
        let s = &m.snapshot.stacks[0];
        assert_eq!(s.state, "Ready");
        assert_eq!(s.components[0].tag, "v2");
        assert_eq!(s.history[0].builds, vec!["web built".to_string()]);
        m.read_ok(&[view(false, ComponentHealth::Failed)], &findings, 20);
        let s = &m.snapshot.stacks[0];
        assert_eq!(s.state, "Failed");
        assert_eq!(
            s.components[0].finding.as_ref().unwrap().rule,
            "CrashLoopBackOff"
        );
        m.read_ok(
            &[view(true, ComponentHealth::Progressing)],
            &BTreeMap::new(),
            30,
        );
        assert_eq!(m.snapshot.stacks[0].state, "Progressing");
    }

    #[test]
    fn an_unreachable_cluster_is_noted_once_and_its_return_too() {
        let mut m = Model::default();
        m.read_failed("connection refused".into(), 100);
        m.read_failed("connection refused".into(), 200);
        let c = &m.snapshot.cluster;
        assert_eq!(
            (c.reachable, c.since_ms, c.checked_ms),
            (Some(false), 100, 200)
        );
        assert_eq!(m.snapshot.activity.len(), 1);
        m.read_ok(&[], &BTreeMap::new(), 300);
        assert_eq!(m.snapshot.cluster.reachable, Some(true));
        assert!(m.snapshot.cluster.error.is_empty());
        assert_eq!(m.snapshot.activity[0].text, "the cluster answers again");
    }

    #[test]
    fn image_tags() {
        assert_eq!(tag_of("postgres:16-alpine"), "16-alpine");
        assert_eq!(tag_of("localhost:5000/web"), "latest");
        assert_eq!(tag_of("web@sha256:abc"), "sha256:abc");
        assert_eq!(tag_of("localhost:5000/web:v1"), "v1");
    }
}
