//! Back-off arithmetic (pure): the capped exponential retry delay after a failed reconcile, and
//! the per-object delay that keeps a fight with another controller from looping hot.
//!
//! It never sleeps or reads a clock of its own: callers pass `Instant`s in, so tests are exact.

use std::collections::HashMap;
use std::time::{Duration, Instant};

/// Capped exponential back-off: `base`, `2·base`, `4·base`… up to `cap`.
#[derive(Debug, Clone)]
pub struct Backoff {
    base: Duration,
    cap: Duration,
    failures: u32,
    /// The retry scheduled by the last counted failure.
    next: Option<Instant>,
}

impl Backoff {
    /// A back-off starting at `base` and never longer than `cap`.
    pub fn new(base: Duration, cap: Duration) -> Self {
        Self {
            base,
            cap: cap.max(base),
            failures: 0,
            next: None,
        }
    }

    /// A failed attempt at `now`; returns when to retry. The delay grows per attempt in time,
    /// not per event: a failure before the scheduled retry (a run that drift or a sync started
    /// meanwhile) keeps that schedule instead of doubling it again.
    pub fn fail(&mut self, now: Instant) -> Instant {
        if let Some(at) = self.next.filter(|at| now < *at) {
            return at;
        }
        let at = now + self.next_delay();
        self.next = Some(at);
        at
    }

    /// The delay before the next attempt, counting one more failure.
    pub fn next_delay(&mut self) -> Duration {
        let shift = self.failures.min(20);
        self.failures = self.failures.saturating_add(1);
        self.base
            .checked_mul(1u32 << shift)
            .unwrap_or(self.cap)
            .min(self.cap)
    }

    /// Failures counted since the last reset.
    pub fn failures(&self) -> u32 {
        self.failures
    }

    /// Forgets the failures (after a success or a new commit).
    pub fn reset(&mut self) {
        self.failures = 0;
        self.next = None;
    }
}

/// Per-object back-off for drift corrections: the first correction of an object is immediate;
/// each further one within `window` of the previous waits twice as long (from `base`, capped).
#[derive(Debug, Clone)]
pub struct ObjectBackoff {
    base: Duration,
    cap: Duration,
    window: Duration,
    objects: HashMap<String, Entry>,
}

#[derive(Debug, Clone, Copy)]
struct Entry {
    corrections: u32,
    last: Instant,
}

impl ObjectBackoff {
    /// Delays start at `base`, never exceed `cap`, and reset after `window` of quiet.
    pub fn new(base: Duration, cap: Duration, window: Duration) -> Self {
        Self {
            base,
            cap,
            window,
            objects: HashMap::new(),
        }
    }

    /// Records a drift of `object` at `now` and returns when its correction may start.
    pub fn admit(&mut self, object: &str, now: Instant) -> Instant {
        // Forget objects that have been quiet for a window, so the map stays small.
        let window = self.window;
        self.objects
            .retain(|_, e| now.saturating_duration_since(e.last) < window);
        let entry = self.objects.entry(object.to_string()).or_insert(Entry {
            corrections: 0,
            last: now,
        });
        let delay = if entry.corrections == 0 {
            Duration::ZERO
        } else {
            let shift = (entry.corrections - 1).min(20);
            self.base
                .checked_mul(1u32 << shift)
                .unwrap_or(self.cap)
                .min(self.cap)
        };
        entry.corrections = entry.corrections.saturating_add(1);
        let at = now + delay;
        entry.last = at;
        at
    }

    /// A reconcile ended at `now`: corrections admitted before it are done now, so a fight is
    /// measured from when converge's write landed, not from when it was scheduled.
    pub fn corrected(&mut self, now: Instant) {
        for e in self.objects.values_mut() {
            e.last = e.last.max(now);
        }
    }

    /// How many corrections of `object` are counted now.
    pub fn corrections(&self, object: &str) -> u32 {
        self.objects.get(object).map_or(0, |e| e.corrections)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retry_delay_doubles_up_to_the_cap_and_resets() {
        let mut b = Backoff::new(Duration::from_secs(2), Duration::from_secs(10));
        let d: Vec<u64> = (0..5).map(|_| b.next_delay().as_secs()).collect();
        assert_eq!(d, vec![2, 4, 8, 10, 10]);
        b.reset();
        assert_eq!(b.next_delay(), Duration::from_secs(2));
    }

    #[test]
    fn failures_before_the_scheduled_retry_do_not_grow_the_delay() {
        let mut b = Backoff::new(Duration::from_secs(2), Duration::from_secs(300));
        let t0 = Instant::now();
        let first = b.fail(t0);
        assert_eq!(first, t0 + Duration::from_secs(2));
        // A burst of drift-triggered runs failing within the same second.
        for i in 1..30 {
            assert_eq!(b.fail(t0 + Duration::from_millis(30 * i)), first);
        }
        // The retry itself fails: now the delay doubles, once.
        assert_eq!(b.fail(first), first + Duration::from_secs(4));
        b.reset();
        let t1 = first + Duration::from_secs(1);
        assert_eq!(b.fail(t1), t1 + Duration::from_secs(2));
    }

    #[test]
    fn retry_delay_never_overflows_after_many_failures() {
        let mut b = Backoff::new(Duration::from_secs(1), Duration::from_secs(300));
        for _ in 0..100 {
            assert!(b.next_delay() <= Duration::from_secs(300));
        }
    }

    #[test]
    fn first_drift_of_an_object_is_corrected_at_once_and_a_fight_slows_down() {
        let mut b = ObjectBackoff::new(
            Duration::from_millis(500),
            Duration::from_secs(60),
            Duration::from_secs(300),
        );
        let t0 = Instant::now();
        assert_eq!(b.admit("Deployment/web", t0), t0);
        let t1 = t0 + Duration::from_millis(100);
        assert_eq!(
            b.admit("Deployment/web", t1),
            t1 + Duration::from_millis(500)
        );
        let t2 = t1 + Duration::from_secs(1);
        assert_eq!(b.admit("Deployment/web", t2), t2 + Duration::from_secs(1));
        // Another object is not slowed by the first one's fight.
        assert_eq!(b.admit("Service/web", t2), t2);
        assert_eq!(b.corrections("Deployment/web"), 3);
    }

    #[test]
    fn a_person_changing_an_object_now_and_then_is_corrected_at_once_each_time() {
        let mut b = ObjectBackoff::new(
            Duration::from_millis(500),
            Duration::from_secs(60),
            Duration::from_secs(5),
        );
        let t0 = Instant::now();
        for i in 0..5 {
            let t = t0 + Duration::from_secs(6 * i);
            assert_eq!(b.admit("Deployment/web", t), t);
            b.corrected(t + Duration::from_millis(300));
        }
        // Another controller reverting each correction within a second is a fight.
        let t = t0 + Duration::from_secs(60);
        b.admit("Deployment/web", t);
        b.corrected(t + Duration::from_millis(300));
        let again = t + Duration::from_millis(400);
        assert!(b.admit("Deployment/web", again) > again);
    }

    #[test]
    fn object_back_off_resets_after_a_quiet_window() {
        let mut b = ObjectBackoff::new(
            Duration::from_millis(500),
            Duration::from_secs(60),
            Duration::from_secs(300),
        );
        let t0 = Instant::now();
        b.admit("x", t0);
        b.admit("x", t0);
        let later = t0 + Duration::from_secs(400);
        assert_eq!(b.admit("x", later), later);
    }
}
