//! Timed pauses of drift correction: the record `converge pause` writes in a stack's namespace
//! (ConfigMap `converge-<stack>-pause`, key `pause.json`), read by every reconcile and watched by
//! every daemon, and the pure questions asked of it (is a component paused now, which pauses
//! ended). A pause is user intent, not an outcome, so it lives beside the status record rather
//! than in it: the status is written only by reconciles.
//!
//! It never decides what a reconcile applies; the reconcile and the daemon ask it.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use super::record::Place;
use super::ClusterError;
use crate::vocabulary::pause_name;

/// The data key of the pause record in its ConfigMap.
pub const DATA_KEY: &str = "pause.json";

/// The longest pause accepted without `--force`: a pause is for debugging, not for turning
/// self-heal off and forgetting it.
pub const MAX_WITHOUT_FORCE: std::time::Duration = std::time::Duration::from_secs(24 * 3600);

/// One pause of a stack, or of one of its components.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Pause {
    /// The component paused; `None` pauses the whole stack.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub component: Option<String>,
    /// When it started.
    pub since: DateTime<Utc>,
    /// When it ends by itself (a time, not a duration, so every daemon agrees).
    pub until: DateTime<Utc>,
    /// Who asked (`user@host`), for `converge status`.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub by: String,
}

impl Pause {
    /// Whether it covers objects of `component` (`""` for stack-wide objects).
    pub fn covers(&self, component: &str) -> bool {
        self.component.as_deref().is_none_or(|c| c == component)
    }

    /// Whether it is still in force at `now`.
    pub fn active(&self, now: DateTime<Utc>) -> bool {
        self.until > now
    }

    /// `the stack` or `component backend`, for messages.
    pub fn scope(&self) -> String {
        match &self.component {
            None => "the stack".into(),
            Some(c) => format!("component {c}"),
        }
    }
}

/// Every pause recorded for a stack: those in force, and those that ended and whose hand changes
/// a reconcile has not reported and undone yet.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Pauses {
    /// The pauses, at most one per scope.
    #[serde(default)]
    pub pauses: Vec<Pause>,
}

impl Pauses {
    /// The pause in force at `now` that covers `component`, if any.
    pub fn holding(&self, component: &str, now: DateTime<Utc>) -> Option<&Pause> {
        self.pauses
            .iter()
            .filter(|p| p.active(now) && p.covers(component))
            .max_by_key(|p| p.until)
    }

    /// The pauses that ended by `now` (expired or resumed) and are still recorded.
    pub fn ended(&self, now: DateTime<Utc>) -> impl Iterator<Item = &Pause> {
        self.pauses.iter().filter(move |p| !p.active(now))
    }

    /// The ended pause covering `component`, if any: its hand changes are due for the report.
    pub fn ended_for(&self, component: &str, now: DateTime<Utc>) -> Option<&Pause> {
        self.ended(now).find(|p| p.covers(component))
    }

    /// Sets the pause of `pause.component`, replacing an earlier one of the same scope.
    pub fn set(&mut self, pause: Pause) {
        self.pauses.retain(|p| p.component != pause.component);
        self.pauses.push(pause);
    }

    /// Ends at `now` the pauses `component` names (`None`: every pause of the stack), keeping
    /// them recorded so the next reconcile reports what changed meanwhile. How many it ended.
    pub fn end(&mut self, component: Option<&str>, now: DateTime<Utc>) -> usize {
        let mut n = 0;
        for p in &mut self.pauses {
            let named = component.is_none() || p.component.as_deref() == component;
            if named && p.active(now) {
                p.until = now;
                n += 1;
            }
        }
        n
    }

    /// Drops the pauses that had ended by `now` (their report was made).
    pub fn forget_ended(&mut self, now: DateTime<Utc>) -> bool {
        let before = self.pauses.len();
        self.pauses.retain(|p| p.active(now));
        before != self.pauses.len()
    }

    /// Parses the record's text; a record that does not parse holds no pause (a pause is never
    /// a reason to stop reconciling), and the error says why.
    pub fn parse(text: &str) -> Result<Self, String> {
        serde_json::from_str(text).map_err(|e| e.to_string())
    }
}

/// Why a pause was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PauseError {
    /// A pause of nothing.
    #[error("a pause of {0} is no pause: give a length such as `--for 15m`")]
    Empty(String),
    /// Longer than [`MAX_WITHOUT_FORCE`] without `--force`.
    #[error("a pause of {0} is longer than a day, and a forgotten pause leaves drift uncorrected; pause for at most 24h, or add --force")]
    TooLong(String),
}

/// Checks a pause's length (pure): more than zero, and at most a day unless `force`.
pub fn check_length(length: std::time::Duration, force: bool) -> Result<(), PauseError> {
    let shown = humantime::format_duration(length).to_string();
    if length.is_zero() {
        return Err(PauseError::Empty(shown));
    }
    if length > MAX_WITHOUT_FORCE && !force {
        return Err(PauseError::TooLong(shown));
    }
    Ok(())
}

fn place<'a>(namespace: &'a str, name: &'a str, stack: &'a str) -> Place<'a> {
    Place {
        namespace,
        name,
        stack,
        key: DATA_KEY,
    }
}

/// Reads the pauses of `stack`; none when nothing is recorded. A record that does not parse
/// is an error the caller reports (and treats as no pause).
pub async fn load(
    client: &kube::Client,
    namespace: &str,
    stack: &str,
) -> Result<Result<Pauses, String>, ClusterError> {
    let name = pause_name(stack);
    Ok(match place(namespace, &name, stack).read(client).await? {
        None => Ok(Pauses::default()),
        Some(text) => Pauses::parse(&text),
    })
}

/// Writes the pauses of `stack` (server-side apply of the record).
pub async fn save(
    client: &kube::Client,
    namespace: &str,
    stack: &str,
    pauses: &Pauses,
) -> Result<(), ClusterError> {
    let name = pause_name(stack);
    let text = serde_json::to_string(pauses).unwrap_or_default();
    place(namespace, &name, stack).write(client, text).await
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(s: &str) -> DateTime<Utc> {
        DateTime::parse_from_rfc3339(s).unwrap().with_timezone(&Utc)
    }

    fn pause(component: Option<&str>, until: &str) -> Pause {
        Pause {
            component: component.map(str::to_string),
            since: at("2026-12-06T10:00:00Z"),
            until: at(until),
            by: String::new(),
        }
    }

    #[test]
    fn a_component_pause_holds_only_that_component_and_a_stack_pause_holds_all() {
        let mut p = Pauses::default();
        p.set(pause(Some("backend"), "2026-12-06T10:15:00Z"));
        let now = at("2026-12-06T10:05:00Z");
        assert!(p.holding("backend", now).is_some());
        assert!(p.holding("frontend", now).is_none());
        assert!(p.holding("", now).is_none());
        p.set(pause(None, "2026-12-06T10:10:00Z"));
        assert!(p.holding("frontend", now).is_some() && p.holding("", now).is_some());
        assert_eq!(p.pauses.len(), 2, "one pause per scope");
    }

    #[test]
    fn a_pause_ends_by_itself_at_its_time_and_is_kept_until_reported() {
        let mut p = Pauses::default();
        p.set(pause(Some("backend"), "2026-12-06T10:15:00Z"));
        let after = at("2026-12-06T10:15:00Z");
        assert!(p.holding("backend", after).is_none());
        assert_eq!(p.ended_for("backend", after).map(|e| e.until), Some(after));
        assert!(p.forget_ended(after));
        assert!(p.pauses.is_empty());
    }

    #[test]
    fn resume_ends_a_pause_now_and_keeps_it_for_the_report() {
        let mut p = Pauses::default();
        p.set(pause(Some("backend"), "2026-12-06T10:15:00Z"));
        p.set(pause(Some("db"), "2026-12-06T10:15:00Z"));
        let now = at("2026-12-06T10:05:00Z");
        assert_eq!(p.end(Some("backend"), now), 1);
        assert!(p.holding("backend", now).is_none());
        assert!(p.holding("db", now).is_some());
        assert!(p.ended_for("backend", now).is_some());
        assert_eq!(p.end(Some("backend"), now), 0, "already ended");
        assert_eq!(p.end(None, now), 1);
    }

    #[test]
    fn zero_and_over_a_day_are_refused_unless_forced() {
        use std::time::Duration;
        assert!(matches!(
            check_length(Duration::ZERO, true),
            Err(PauseError::Empty(_))
        ));
        let two_days = Duration::from_secs(48 * 3600);
        let e = check_length(two_days, false).unwrap_err();
        assert!(e.to_string().contains("2days"), "{e}");
        assert!(check_length(two_days, true).is_ok());
        assert!(check_length(Duration::from_secs(24 * 3600), false).is_ok());
        assert!(check_length(Duration::from_secs(5), false).is_ok());
    }

    #[test]
    fn the_record_round_trips_and_garbage_is_an_error_not_a_pause() {
        let mut p = Pauses::default();
        p.set(pause(None, "2026-12-06T10:15:00Z"));
        let text = serde_json::to_string(&p).unwrap();
        assert_eq!(Pauses::parse(&text).unwrap(), p);
        assert!(Pauses::parse("{not json").is_err());
    }
}
