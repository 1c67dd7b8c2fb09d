//! `converge status`: the status converge recorded in the cluster, next to what the cluster
//! shows now (ready/desired replicas and why not), whether a daemon holds the stack, and how long
//! ago things happened; needs neither the repository nor the daemon.

use std::collections::BTreeMap;

use clap::Args;
use k8s_openapi::api::apps::v1::{Deployment, StatefulSet};
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::Pod;
use kube::api::ListParams;
use serde::Serialize;
use serde_json::Value;

use super::{Format, SourceArgs, EXIT_ERROR, EXIT_FINDINGS, EXIT_OK};
use crate::cluster::health::{self, Health};
use crate::cluster::{lease, Cluster, ClusterError};
use crate::explain::gather::values;
use crate::status::{Record, StackStatus};
use crate::vocabulary::{LABEL_COMPONENT, LABEL_STACK};

/// Arguments of `converge status`.
#[derive(Debug, Args)]
pub struct StatusArgs {
    #[command(flatten)]
    source: SourceArgs,
    #[command(flatten)]
    target: super::StackArgs,
    /// Output format.
    #[arg(short, long, value_enum, default_value_t = Format::Text)]
    output: Format,
}

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
    pub health: String,
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

pub(super) fn run(args: &StatusArgs) -> u8 {
    let rt = match super::runtime() {
        Ok(rt) => rt,
        Err(code) => return code,
    };
    rt.block_on(async {
        let views = match read(args).await {
            Ok(s) => s,
            Err(e) => return super::report_error(&crate::error::Error::Cluster(e), args.output),
        };
        if args.output.structured() {
            super::emit(&views, args.output);
        } else {
            print_text(&views, args);
        }
        if views.is_empty() {
            EXIT_ERROR
        } else if views.iter().all(StackView::healthy) {
            EXIT_OK
        } else {
            EXIT_FINDINGS
        }
    })
}

impl StackView {
    /// Ready by the record and every component healthy now.
    fn healthy(&self) -> bool {
        self.recorded.ready && self.live.iter().all(|c| c.health == "Healthy")
    }
}

/// The (name, namespace) pairs the selectors name in the repository, when it can be read.
fn from_repo(args: &StatusArgs) -> Vec<(String, String)> {
    if args.target.stack.is_none() && args.target.namespace.is_none() {
        return Vec::new();
    }
    let selection = super::selection(&args.source, &args.target);
    match crate::reconcile::load(
        &args.source.repo,
        &args.source.rev,
        &selection,
        crate::reconcile::Images::Skip,
    ) {
        Ok(c) => c
            .stacks()
            .map(|s| (s.spec.name.clone(), s.spec.namespace.clone()))
            .collect(),
        Err(_) => Vec::new(),
    }
}

async fn read(args: &StatusArgs) -> Result<Vec<StackView>, ClusterError> {
    let cluster = Cluster::connect(
        args.target.kubeconfig.as_deref(),
        args.target.context.as_deref(),
    )
    .await?;
    cluster.ping().await?;
    let found = crate::status::read_all(&cluster).await?;
    let named = from_repo(args);
    let mut records: Vec<StackStatus> = found
        .into_iter()
        .filter_map(|f| {
            // Whether an unreadable record may be one the selectors ask for (its name, from
            // the ConfigMap's, is all that is known of it).
            let maybe_selected = args
                .target
                .namespace
                .as_deref()
                .is_none_or(|n| n == f.namespace)
                && (args.target.stack.is_none()
                    || named.iter().any(|(n, _)| f.is_of(n))
                    || args.target.stack.as_deref().is_some_and(|w| f.is_of(w)));
            match f.record {
                Record::Status(s) => Some(s),
                Record::Missing => None,
                // Said, never silently skipped; left as it is (the next reconcile keeps a copy).
                Record::Unreadable { ref error, .. } if maybe_selected => {
                    errln!(
                        "warning: the status record in {} is unreadable ({error}); left as it is (the next reconcile keeps a copy aside)",
                        f.what()
                    );
                    None
                }
                Record::Unreadable { .. } => None,
            }
        })
        // What the repository names, when it names the selected stack; else the records' own
        // name and directory (a stack the repository no longer has, or no repository at all).
        .filter(|s| {
            if named.is_empty() {
                args.target.selects_record(&s.stack, &s.namespace, &s.dir)
            } else {
                named
                    .iter()
                    .any(|(n, ns)| n == &s.stack && ns == &s.namespace)
            }
        })
        .collect();
    records.sort_by(|a, b| (&a.namespace, &a.stack).cmp(&(&b.namespace, &b.stack)));
    let mut out = Vec::new();
    for recorded in records {
        let live = live_components(&cluster, &recorded).await?;
        let daemon = daemon_of(&cluster, &recorded).await;
        out.push(StackView {
            recorded,
            live,
            daemon,
        });
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
    let deployments = cluster.list_in::<Deployment>(ns, &lp).await?;
    let statefulsets = cluster.list_in::<StatefulSet>(ns, &lp).await?;
    let mut workloads: Vec<(&str, Value)> = values(deployments)
        .into_iter()
        .map(|v| ("Deployment", v))
        .collect();
    workloads.extend(values(statefulsets).into_iter().map(|v| ("StatefulSet", v)));
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
        let mine: Vec<&(&str, Value)> = workloads
            .iter()
            .filter(|(_, w)| component_of(w) == name)
            .collect();
        let mut c = LiveComponent {
            name: name.clone(),
            ..LiveComponent::default()
        };
        if mine.is_empty() {
            c.health = "Missing".into();
            c.reason = "no Deployment or StatefulSet of it in the cluster".into();
            out.push(c);
            continue;
        }
        let mut reasons: BTreeMap<u8, String> = BTreeMap::new();
        let mut pod_reason = None;
        for (kind, w) in &mine {
            // A Pod's own reason (CrashLoopBackOff, ImagePullBackOff…) says more than the
            // rollout's; Pods carry the workload's selector labels, not converge's.
            if let (None, Some(sel)) = (&pod_reason, crate::explain::gather::selector_of(w)) {
                let pods = cluster
                    .list_in::<Pod>(ns, &ListParams::default().labels(&sel))
                    .await?;
                pod_reason = values(pods)
                    .iter()
                    .find_map(health::pod_problem)
                    .map(|(why, msg)| format!("{why}: {msg}"));
            }
            if let Some((ready, desired)) = crate::reconcile::ready_counts(w) {
                c.ready += ready;
                c.desired += desired;
            }
            match health::of(kind, w) {
                Health::Ready => {}
                Health::Progressing(m) => {
                    reasons.entry(1).or_insert(m);
                }
                Health::Failed(m) => {
                    reasons.insert(0, m);
                }
            }
        }
        c.health = if reasons.contains_key(&0) {
            "Failed"
        } else if reasons.contains_key(&1) || pod_reason.is_some() {
            "Progressing"
        } else {
            "Healthy"
        }
        .into();
        c.reason = pod_reason
            .or_else(|| reasons.into_values().next())
            .unwrap_or_default();
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

/// `3m ago`-style age of an RFC 3339 time; the time itself when it does not parse.
pub fn ago(time: &str, now: chrono::DateTime<chrono::Utc>) -> String {
    match chrono::DateTime::parse_from_rfc3339(time) {
        Ok(t) => format!("{} ago", age(now.signed_duration_since(t).num_seconds())),
        Err(_) if time.is_empty() => "never".into(),
        Err(_) => time.to_string(),
    }
}

/// `45s`, `3m`, `2h`, `4d`.
pub fn age(seconds: i64) -> String {
    let s = seconds.max(0);
    match s {
        0..=59 => format!("{s}s"),
        60..=3599 => format!("{}m", s / 60),
        3600..=86_399 => format!("{}h", s / 3600),
        _ => format!("{}d", s / 86_400),
    }
}

fn print_text(views: &[StackView], args: &StatusArgs) {
    if views.is_empty() {
        let which = match (&args.target.stack, &args.target.namespace) {
            (Some(s), Some(n)) => format!("of stack {s} in namespace {n} "),
            (Some(s), None) => format!("of stack {s} "),
            (None, Some(n)) => format!("in namespace {n} "),
            (None, None) => String::new(),
        };
        let apply = match &args.target.stack {
            Some(s) => format!("converge apply --stack {s}"),
            None => "converge apply".into(),
        };
        errln!(
            "no converge status {which}in this cluster: nothing has been applied yet (run `{apply}`)"
        );
        return;
    }
    let color = super::color_stdout();
    let now = chrono::Utc::now();
    let short = |c: &str| crate::desired::short_id(c).to_string();
    for v in views {
        let s = &v.recorded;
        let verdict = if v.healthy() {
            super::paint(color, "32", "Ready")
        } else {
            super::paint(color, "31;1", "NotReady")
        };
        outln!(
            "stack {}: {verdict} — {}",
            super::stack_label(&s.stack, &s.dir, &s.namespace),
            s.reason
        );
        outln!("  message: {}", s.message);
        let applied_at = s
            .history
            .iter()
            .find(|h| h.commit == s.last_applied_commit)
            .map(|h| format!(" {}", ago(&h.time, now)))
            .unwrap_or_default();
        let healthy_at = s
            .history
            .iter()
            .find(|h| {
                h.commit == s.last_healthy_commit
                    && h.result == crate::vocabulary::reason::SUCCEEDED
            })
            .map(|h| format!(" {}", ago(&h.time, now)))
            .unwrap_or_default();
        outln!(
            "  applied {}{applied_at}; last healthy {}{healthy_at}",
            short(&s.last_applied_commit),
            if s.last_healthy_commit.is_empty() {
                "never".to_string()
            } else {
                short(&s.last_healthy_commit)
            },
        );
        let d = &v.daemon;
        let daemon = if d.held {
            format!(
                "held by {}{} (renewed {})",
                d.holder,
                if d.checkout.is_empty() {
                    String::new()
                } else {
                    format!(" for {}", d.checkout)
                },
                ago(&d.renewed, now)
            )
        } else if !d.holder.is_empty() {
            format!(
                "none running (Lease last renewed by {} {})",
                d.holder,
                ago(&d.renewed, now)
            )
        } else {
            "none (no daemon has held this stack; `converge run` starts one)".into()
        };
        outln!("  daemon: {daemon}");
        outln!(
            "  {:<12} {:<7} {:<12} {:<12} {:<8} IMAGE",
            "COMPONENT",
            "READY",
            "STATUS",
            "RECORDED",
            "SINCE"
        );
        for c in &v.live {
            let rec = s.components.iter().find(|r| r.name == c.name);
            let status_code = match c.health.as_str() {
                "Healthy" => "32",
                "Progressing" => "33",
                _ => "31;1",
            };
            outln!(
                "  {:<12} {:<7} {} {:<12} {:<8} {}",
                c.name,
                format!("{}/{}", c.ready, c.desired),
                super::paint(color, status_code, &format!("{:<12}", c.health)),
                rec.map(|r| r.health.as_str()).unwrap_or("-"),
                rec.map(|r| age_of(&r.since, now)).unwrap_or_default(),
                rec.map(|r| r.image.as_str()).unwrap_or("")
            );
            if !c.reason.is_empty() {
                outln!("    now: {}", c.reason);
            }
            if let Some(e) = rec.map(|r| &r.last_error).filter(|e| !e.is_empty()) {
                outln!("    recorded: {}", first_line(e));
            }
        }
        outln!("  history:");
        for h in &s.history {
            outln!(
                "    {:<8} {} {:<24} {} ms",
                ago(&h.time, now),
                short(&h.commit),
                h.result,
                h.duration_ms
            );
        }
    }
}

fn age_of(time: &str, now: chrono::DateTime<chrono::Utc>) -> String {
    match chrono::DateTime::parse_from_rfc3339(time) {
        Ok(t) => age(now.signed_duration_since(t).num_seconds()),
        Err(_) => String::new(),
    }
}

fn first_line(s: &str) -> &str {
    s.lines().next().unwrap_or("")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ages_read_like_kubectl() {
        assert_eq!(age(5), "5s");
        assert_eq!(age(180), "3m");
        assert_eq!(age(7200), "2h");
        assert_eq!(age(200_000), "2d");
        let now = chrono::DateTime::parse_from_rfc3339("2026-01-01T00:10:00Z")
            .unwrap()
            .with_timezone(&chrono::Utc);
        assert_eq!(ago("2026-01-01T00:07:00Z", now), "3m ago");
        assert_eq!(ago("", now), "never");
    }
}
