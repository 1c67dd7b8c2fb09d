//! The daemon's counters and their Prometheus text rendering (pure apart from atomics).
//!
//! It never does I/O: the HTTP module serves what [`Metrics::render`] returns.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::Duration;

/// Upper bounds (seconds) of the reconcile duration histogram.
pub const DURATION_BUCKETS: [f64; 14] = [
    0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0,
];

/// Every `result` of `converge_webhook_requests_total`, shown from zero so a rate alert on
/// refusals works before the first one.
pub const WEBHOOK_RESULTS: [&str; 5] = [
    "accepted",
    "bad_signature",
    "unsigned",
    "too_large",
    "disabled",
];

/// Everything `/metrics` reports; shared between the loop and the HTTP server.
#[derive(Debug, Default)]
pub struct Metrics {
    inner: Mutex<Inner>,
    ready: AtomicBool,
    heartbeat_ms: AtomicU64,
    standing: Mutex<Option<Standing>>,
}

/// Where a daemon in standby mode stands while it does not lead: what `/readyz` says then.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Standing {
    /// Waiting for a replica of its installation to let go: ready (it is healthy and takes
    /// over), with this line.
    Standby(String),
    /// Refused (another installation leads the stack) or unable to read the Lease: not ready,
    /// with this line.
    NotLeading(String),
    /// Leading in standby mode: ready whatever its last reconcile did, so the Service keeps
    /// routing the webhook that brings the fix to the one replica that can deploy it, and a
    /// rollout of converge does not wait on the stacks' health.
    Leading,
}

#[derive(Debug, Default)]
struct Inner {
    reconciles: BTreeMap<String, u64>,
    builds: BTreeMap<String, u64>,
    buckets: [u64; DURATION_BUCKETS.len()],
    duration_sum: f64,
    duration_count: u64,
    drift_events: u64,
    drift_corrections: u64,
    resyncs_skipped: u64,
    requests: BTreeMap<&'static str, u64>,
    webhooks: BTreeMap<&'static str, u64>,
    fetches: BTreeMap<&'static str, u64>,
    last_commit: String,
    last_success_unix: f64,
}

/// A reconcile's result label.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ResultLabel {
    /// Applied and healthy.
    Success,
    /// Applied but not healthy, or an apply step failed.
    Failed,
    /// The commit's desired state is invalid.
    Invalid,
    /// The cluster, helm or the repository failed.
    Error,
    /// Abandoned at shutdown.
    Abandoned,
    /// Applied, and its health wait cut short for newer work (a new commit, a drift, shutdown).
    Preempted,
}

impl ResultLabel {
    fn as_str(self) -> &'static str {
        match self {
            ResultLabel::Success => "success",
            ResultLabel::Failed => "failed",
            ResultLabel::Invalid => "invalid",
            ResultLabel::Error => "error",
            ResultLabel::Abandoned => "abandoned",
            ResultLabel::Preempted => "preempted",
        }
    }
}

impl Metrics {
    fn with<T>(&self, f: impl FnOnce(&mut Inner) -> T) -> T {
        // A panic while holding the lock leaves plain counters behind: still worth reporting.
        let mut g = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        f(&mut g)
    }

    /// Counts one reconcile and its duration.
    pub fn reconcile(&self, result: ResultLabel, took: Duration) {
        self.with(|m| {
            *m.reconciles.entry(result.as_str().into()).or_default() += 1;
            let s = took.as_secs_f64();
            for (i, le) in DURATION_BUCKETS.iter().enumerate() {
                if s <= *le {
                    m.buckets[i] += 1;
                }
            }
            m.duration_sum += s;
            m.duration_count += 1;
        });
    }

    /// Counts one image build outcome (`built`, `exists`, `failed`, `skipped`).
    pub fn build(&self, action: &str) {
        self.with(|m| *m.builds.entry(action.into()).or_default() += 1);
    }

    /// Counts an out-of-band change seen by the drift watch.
    pub fn drift_event(&self) {
        self.with(|m| m.drift_events += 1);
    }

    /// Counts objects re-applied by a drift-triggered reconcile.
    pub fn drift_corrected(&self, objects: u64) {
        self.with(|m| m.drift_corrections += objects);
    }

    /// Counts a periodic resync answered from the watch cache with no API request.
    pub fn resync_skipped(&self) {
        self.with(|m| m.resyncs_skipped += 1);
    }

    /// Adds API requests made by a reconcile.
    pub fn requests(&self, reads: u64, writes: u64, dry_runs: u64) {
        self.with(|m| {
            *m.requests.entry("read").or_default() += reads;
            *m.requests.entry("write").or_default() += writes;
            *m.requests.entry("dry_run").or_default() += dry_runs;
        });
    }

    /// Counts one request to the webhook (`accepted`, or a [`super::webhook::Refusal`] label).
    pub fn webhook(&self, result: &'static str) {
        self.with(|m| *m.webhooks.entry(result).or_default() += 1);
    }

    /// Counts one pull-mode fetch (`updated`, `unchanged`, `non_fast_forward`, or a
    /// [`crate::source::remote::FetchFailure`] label).
    pub fn fetch(&self, result: &'static str) {
        self.with(|m| *m.fetches.entry(result).or_default() += 1);
    }

    /// Records the commit last applied successfully.
    pub fn applied(&self, commit: &str) {
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0.0, |d| d.as_secs_f64());
        self.with(|m| {
            m.last_commit = commit.to_string();
            m.last_success_unix = now;
        });
    }

    /// Marks the daemon ready (`/readyz` answers 200) or not.
    pub fn set_ready(&self, ready: bool) {
        self.ready.store(ready, Ordering::Relaxed);
    }

    /// Whether `/readyz` answers 200.
    pub fn is_ready(&self) -> bool {
        self.ready.load(Ordering::Relaxed)
    }

    /// Records where a daemon that does not lead stands; `None` once it leads.
    pub fn set_standing(&self, standing: Option<Standing>) {
        *self.standing.lock().unwrap_or_else(|p| p.into_inner()) = standing;
    }

    /// What `/readyz` answers: ready or not, and the line it says. A leader is ready once its
    /// last reconcile succeeded; a standby is ready; a refused daemon is not.
    pub fn readiness(&self) -> (bool, String) {
        let standing = self
            .standing
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone();
        match standing {
            Some(Standing::Standby(line)) => (true, line),
            Some(Standing::NotLeading(line)) => (false, line),
            Some(Standing::Leading) if self.is_ready() => {
                (true, "leading; the last reconcile succeeded".into())
            }
            Some(Standing::Leading) => (
                true,
                "leading; the last reconcile has not succeeded (see the log and converge status)"
                    .into(),
            ),
            None if self.is_ready() => (true, "ready".into()),
            None => (
                false,
                "not ready: the last reconcile has not succeeded".into(),
            ),
        }
    }

    /// Records that the main loop is alive at `now_ms` (milliseconds since start).
    pub fn heartbeat(&self, now_ms: u64) {
        self.heartbeat_ms.store(now_ms, Ordering::Relaxed);
    }

    /// The last heartbeat (milliseconds since start).
    pub fn last_heartbeat(&self) -> u64 {
        self.heartbeat_ms.load(Ordering::Relaxed)
    }

    /// The Prometheus text exposition of every metric.
    pub fn render(&self) -> String {
        self.with(|m| {
            let mut o = String::new();
            let _ = writeln!(o, "# HELP converge_reconciles_total Reconciles by result.");
            let _ = writeln!(o, "# TYPE converge_reconciles_total counter");
            for r in ["success", "failed", "invalid", "error", "abandoned"] {
                let n = m.reconciles.get(r).copied().unwrap_or(0);
                let _ = writeln!(o, "converge_reconciles_total{{result=\"{r}\"}} {n}");
            }
            let _ = writeln!(
                o,
                "# HELP converge_reconcile_duration_seconds Wall time of one reconcile."
            );
            let _ = writeln!(o, "# TYPE converge_reconcile_duration_seconds histogram");
            for (i, le) in DURATION_BUCKETS.iter().enumerate() {
                let _ = writeln!(
                    o,
                    "converge_reconcile_duration_seconds_bucket{{le=\"{le}\"}} {}",
                    m.buckets[i]
                );
            }
            let _ = writeln!(
                o,
                "converge_reconcile_duration_seconds_bucket{{le=\"+Inf\"}} {}",
                m.duration_count
            );
            let _ = writeln!(
                o,
                "converge_reconcile_duration_seconds_sum {}",
                m.duration_sum
            );
            let _ = writeln!(
                o,
                "converge_reconcile_duration_seconds_count {}",
                m.duration_count
            );
            let _ = writeln!(
                o,
                "# HELP converge_drift_events_total Out-of-band changes seen on managed objects."
            );
            let _ = writeln!(o, "# TYPE converge_drift_events_total counter");
            let _ = writeln!(o, "converge_drift_events_total {}", m.drift_events);
            let _ = writeln!(
                o,
                "# HELP converge_drift_corrections_total Objects re-applied after drift."
            );
            let _ = writeln!(o, "# TYPE converge_drift_corrections_total counter");
            let _ = writeln!(
                o,
                "converge_drift_corrections_total {}",
                m.drift_corrections
            );
            let _ = writeln!(
                o,
                "# HELP converge_resyncs_skipped_total Periodic resyncs answered from the watch cache."
            );
            let _ = writeln!(o, "# TYPE converge_resyncs_skipped_total counter");
            let _ = writeln!(o, "converge_resyncs_skipped_total {}", m.resyncs_skipped);
            let _ = writeln!(o, "# HELP converge_builds_total Image outcomes by action.");
            let _ = writeln!(o, "# TYPE converge_builds_total counter");
            for (a, n) in &m.builds {
                let _ = writeln!(o, "converge_builds_total{{action=\"{a}\"}} {n}");
            }
            let _ = writeln!(
                o,
                "# HELP converge_api_requests_total API requests made by reconciles."
            );
            let _ = writeln!(o, "# TYPE converge_api_requests_total counter");
            for (k, n) in &m.requests {
                let _ = writeln!(o, "converge_api_requests_total{{kind=\"{k}\"}} {n}");
            }
            let _ = writeln!(
                o,
                "# HELP converge_webhook_requests_total Requests to the signed webhook (POST /sync, /hooks/git) by result."
            );
            let _ = writeln!(o, "# TYPE converge_webhook_requests_total counter");
            for r in WEBHOOK_RESULTS {
                let n = m.webhooks.get(r).copied().unwrap_or(0);
                let _ = writeln!(o, "converge_webhook_requests_total{{result=\"{r}\"}} {n}");
            }
            let _ = writeln!(
                o,
                "# HELP converge_fetches_total Pull-mode fetches by result."
            );
            let _ = writeln!(o, "# TYPE converge_fetches_total counter");
            for (r, n) in &m.fetches {
                let _ = writeln!(o, "converge_fetches_total{{result=\"{r}\"}} {n}");
            }
            let _ = writeln!(
                o,
                "# HELP converge_last_applied_commit_info The commit last applied successfully."
            );
            let _ = writeln!(o, "# TYPE converge_last_applied_commit_info gauge");
            if !m.last_commit.is_empty() {
                let _ = writeln!(
                    o,
                    "converge_last_applied_commit_info{{commit=\"{}\"}} 1",
                    m.last_commit
                );
            }
            let _ = writeln!(
                o,
                "# HELP converge_last_success_timestamp_seconds When the last successful reconcile ended."
            );
            let _ = writeln!(o, "# TYPE converge_last_success_timestamp_seconds gauge");
            let _ = writeln!(
                o,
                "converge_last_success_timestamp_seconds {}",
                m.last_success_unix
            );
            let _ = writeln!(o, "# HELP converge_ready Whether the last reconcile succeeded.");
            let _ = writeln!(o, "# TYPE converge_ready gauge");
            let _ = writeln!(o, "converge_ready {}", u8::from(self.is_ready()));
            let leading = self
                .standing
                .lock()
                .map_or(true, |s| matches!(*s, None | Some(Standing::Leading)));
            let _ = writeln!(
                o,
                "# HELP converge_leader Whether this daemon leads its stacks (holds their Leases)."
            );
            let _ = writeln!(o, "# TYPE converge_leader gauge");
            let _ = writeln!(o, "converge_leader {}", u8::from(leading));
            o
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn histogram_buckets_are_cumulative_and_counts_add_up() {
        let m = Metrics::default();
        m.reconcile(ResultLabel::Success, Duration::from_millis(3));
        m.reconcile(ResultLabel::Failed, Duration::from_millis(700));
        let text = m.render();
        assert!(text.contains("converge_reconcile_duration_seconds_bucket{le=\"0.005\"} 1"));
        assert!(text.contains("converge_reconcile_duration_seconds_bucket{le=\"1\"} 2"));
        assert!(text.contains("converge_reconcile_duration_seconds_bucket{le=\"+Inf\"} 2"));
        assert!(text.contains("converge_reconciles_total{result=\"success\"} 1"));
        assert!(text.contains("converge_reconciles_total{result=\"failed\"} 1"));
    }

    #[test]
    fn last_applied_commit_is_an_info_metric() {
        let m = Metrics::default();
        assert!(!m.render().contains("converge_last_applied_commit_info{"));
        m.applied("abc123");
        assert!(m
            .render()
            .contains("converge_last_applied_commit_info{commit=\"abc123\"} 1"));
    }

    #[test]
    fn webhook_results_start_at_zero_and_count() {
        let m = Metrics::default();
        for r in WEBHOOK_RESULTS {
            assert!(m.render().contains(&format!(
                "converge_webhook_requests_total{{result=\"{r}\"}} 0"
            )));
        }
        m.webhook("bad_signature");
        m.webhook("bad_signature");
        m.fetch("host_key_changed");
        let text = m.render();
        assert!(text.contains("converge_webhook_requests_total{result=\"bad_signature\"} 2"));
        assert!(text.contains("converge_fetches_total{result=\"host_key_changed\"} 1"));
    }

    #[test]
    fn every_metric_line_is_a_comment_or_name_and_value() {
        let m = Metrics::default();
        m.build("built");
        m.requests(3, 1, 0);
        m.webhook("accepted");
        m.fetch("updated");
        for line in m.render().lines() {
            assert!(
                line.starts_with('#') || line.split(' ').count() == 2,
                "bad line: {line}"
            );
        }
    }
}
