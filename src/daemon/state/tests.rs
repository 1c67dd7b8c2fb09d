//! The daemon's policy, tested without I/O.
use super::*;

fn idle_at(tip: &str) -> State {
    let mut s = State::new(Some(tip.into()), Duration::from_secs(300));
    let Next::Start(st) = s.next(Some(tip)) else {
        panic!("startup reconcile")
    };
    assert_eq!(st.commit, tip);
    s.on_done(ready(), Instant::now());
    s
}

fn ready() -> Finished {
    Finished::Reports {
        next: outcome::Next::Done,
        stall: None,
    }
}

fn failed() -> Finished {
    Finished::Reports {
        next: outcome::Next::Retry,
        stall: None,
    }
}

fn invalid() -> Finished {
    Finished::Stopped {
        next: outcome::Next::WaitForCommit,
        reason: Reason::ValidationFailed,
        message: "desired/x.yaml:1:1: bad".into(),
    }
}

fn start(s: &mut State, tip: &str) -> Start {
    match s.next(Some(tip)) {
        Next::Start(st) => st,
        other => panic!("expected a start, got {other:?}"),
    }
}

#[test]
fn triggers_arriving_while_one_is_pending_merge_into_it() {
    let mut p = None;
    merge(&mut p, Trigger::Commit, false);
    merge(&mut p, Trigger::Drift, false);
    merge(&mut p, Trigger::Sync, true);
    let p = p.unwrap();
    assert_eq!(p.trigger, Trigger::Commit);
    assert!(p.full && p.drift);
}

#[test]
fn after_a_restart_onto_a_stalled_tip_drift_re_applies_the_commit_the_record_names() {
    let mut s = State::new(Some("bad".into()), Duration::from_secs(300));
    s.learn_applied("good".into());
    let st = start(&mut s, "bad");
    assert_eq!(st.commit, "bad");
    let after = s.on_done(invalid(), Instant::now());
    assert!(after.stalled);
    // Once at once (drift may have happened while no daemon ran)…
    let st = start(&mut s, "bad");
    assert_eq!(st.commit, "good");
    assert_eq!(st.overlay.as_ref().map(|o| o.commit.as_str()), Some("bad"));
    s.on_done(ready(), Instant::now());
    // …and on every drift after that.
    s.on_drift("todo/Deployment/web", Instant::now());
    let st = start(&mut s, "bad");
    assert_eq!(st.commit, "good");
    assert_eq!(st.trigger, Trigger::Drift);
}

#[test]
fn a_recorded_commit_that_cannot_be_read_here_is_tried_once_not_in_a_loop() {
    let mut s = State::new(Some("bad".into()), Duration::from_secs(300));
    assert_eq!(s.on_record("elsewhere"), RecordVerdict::Learned);
    start(&mut s, "bad");
    s.on_done(invalid(), Instant::now());
    let st = start(&mut s, "bad");
    assert_eq!(st.commit, "elsewhere");
    s.on_done(invalid(), Instant::now());
    assert_eq!(s.next(Some("bad")), Next::Idle);
    s.on_drift("todo/Deployment/web", Instant::now());
    assert_eq!(s.next(Some("bad")), Next::NothingApplied);
}

#[test]
fn without_any_record_a_stalled_tip_has_nothing_to_re_apply() {
    let mut s = State::new(Some("bad".into()), Duration::from_secs(300));
    start(&mut s, "bad");
    s.on_done(invalid(), Instant::now());
    s.on_drift("todo/Deployment/web", Instant::now());
    assert_eq!(s.next(Some("bad")), Next::NothingApplied);
}

#[test]
fn the_record_seen_by_the_watch_also_teaches_the_last_applied_commit() {
    let mut s = State::new(Some("bad".into()), Duration::from_secs(300));
    start(&mut s, "bad");
    s.on_done(invalid(), Instant::now());
    assert_eq!(s.on_record("good"), RecordVerdict::Learned);
    s.on_drift("todo/Deployment/web", Instant::now());
    assert_eq!(start(&mut s, "bad").commit, "good");
}

#[test]
fn a_new_commit_preempts_a_running_reconcile_once() {
    let mut s = idle_at("a");
    s.on_tip("b");
    start(&mut s, "b");
    assert_eq!(s.on_tip("c"), Some(true));
    assert_eq!(s.on_tip("d"), Some(false), "already asked");
    assert_eq!(s.on_tip("d"), None, "same tip");
}

#[test]
fn a_preempted_reconcile_is_no_failure_and_the_pending_one_reads_the_new_tip() {
    let mut s = idle_at("a");
    s.on_tip("b");
    start(&mut s, "b");
    s.on_tip("c");
    let after = s.on_done(
        Finished::Reports {
            next: outcome::Next::Superseded,
            stall: None,
        },
        Instant::now(),
    );
    assert_eq!(after.retry_at, None);
    let st = start(&mut s, "c");
    assert_eq!((st.commit.as_str(), st.trigger), ("c", Trigger::Commit));
}

#[test]
fn a_run_that_already_read_the_new_tip_is_not_preempted_by_its_ref_event() {
    let mut s = idle_at("a");
    assert!(!s.on_resync(Some("b")));
    // The resync reads the tip before the debounced ref event arrives.
    assert_eq!(start(&mut s, "b").trigger, Trigger::Resync);
    assert_eq!(s.on_tip("b"), None);
    s.on_done(ready(), Instant::now());
    assert_eq!(s.next(Some("b")), Next::Idle);
}

#[test]
fn drift_preempts_a_running_reconcile_and_a_fight_is_delayed() {
    let mut s = idle_at("a");
    let t0 = Instant::now();
    assert_eq!(
        s.on_drift("todo/Deployment/web", t0),
        DriftVerdict::Now { preempt: false }
    );
    start(&mut s, "a");
    assert_eq!(
        s.on_drift("todo/Service/web", t0),
        DriftVerdict::Now { preempt: true }
    );
    assert!(matches!(
        s.on_drift("todo/Deployment/web", t0),
        DriftVerdict::Later(_)
    ));
}

#[test]
fn failures_of_runs_started_by_drift_do_not_push_the_retry_out() {
    let mut s = idle_at("a");
    let t0 = Instant::now();
    let mut first = None;
    for i in 0..20 {
        s.on_drift(&format!("todo/ConfigMap/c{i}"), t0);
        start(&mut s, "a");
        let at = s
            .on_done(failed(), t0 + Duration::from_millis(10 * i))
            .retry_at
            .unwrap();
        assert_eq!(*first.get_or_insert(at), at);
    }
    assert_eq!(first, Some(t0 + Duration::from_secs(2)));
}

#[test]
fn a_namespace_being_deleted_is_waited_for_soon_without_growing_the_back_off() {
    let mut s = idle_at("a");
    s.on_tip("b");
    let waiting = || Finished::Stopped {
        next: outcome::Next::WaitForDependency,
        reason: Reason::DependencyNotReady,
        message: "namespace todo is being terminated".into(),
    };
    for _ in 0..4 {
        start(&mut s, "b");
        let now = Instant::now();
        let after = s.on_done(waiting(), now);
        assert_eq!(after.retry_at, Some(now + DEPENDENCY_REQUEUE));
        assert!(!after.stalled);
        s.on_retry_due();
    }
    // A real failure afterwards starts the back-off at its base: nothing had failed.
    start(&mut s, "b");
    let now = Instant::now();
    let after = s.on_done(failed(), now);
    assert_eq!(after.retry_at, Some(now + Duration::from_secs(2)));
}

#[test]
fn a_conflict_waits_for_a_new_commit_instead_of_retrying() {
    let mut s = idle_at("a");
    s.on_tip("b");
    start(&mut s, "b");
    let after = s.on_done(
        Finished::Reports {
            next: outcome::Next::WaitForCommit,
            stall: Some((Reason::ApplyFailed, "conflict".into())),
        },
        Instant::now(),
    );
    assert!(after.stalled && after.retry_at.is_none());
    // Drift re-applies the commit (its other objects are corrected) with the stall shown.
    s.on_drift("todo/Deployment/web", Instant::now());
    let st = start(&mut s, "b");
    assert_eq!(st.commit, "b");
    assert!(st.overlay.is_some());
}

#[test]
fn a_commit_applied_by_someone_else_is_noticed_and_the_tip_reconciled() {
    let mut s = idle_at("tip");
    assert_eq!(s.on_record("tip"), RecordVerdict::Agrees);
    assert_eq!(
        s.on_record("old"),
        RecordVerdict::Foreign { ours: "tip".into() }
    );
    let st = start(&mut s, "tip");
    assert_eq!((st.commit.as_str(), st.trigger), ("tip", Trigger::Record));
    // And the resync is no longer skipped until the tip is healthy again.
    assert!(!s.on_resync(Some("tip")));
}

#[test]
fn a_record_written_while_a_reconcile_runs_is_its_own() {
    let mut s = idle_at("a");
    s.on_tip("b");
    start(&mut s, "b");
    assert_eq!(s.on_record("b"), RecordVerdict::Agrees);
    s.on_done(ready(), Instant::now());
    assert_eq!(s.on_record("b"), RecordVerdict::Agrees);
    assert_eq!(s.next(Some("b")), Next::Idle);
}

#[test]
fn a_changed_secret_reconciles_only_when_the_stack_reads_it() {
    let mut s = idle_at("a");
    s.set_secrets("todo".into(), ["todo-secrets".to_string()].into());
    assert!(!s.on_secret("todo", "unrelated"));
    assert_eq!(s.next(Some("a")), Next::Idle);
    assert!(s.on_secret("todo", "todo-secrets"));
    assert_eq!(start(&mut s, "a").trigger, Trigger::Secret);
}

#[test]
fn a_resync_is_skipped_only_when_nothing_moved_since_a_healthy_tip() {
    let mut s = idle_at("a");
    assert!(s.on_resync(Some("a")));
    s.on_gap("todo".into(), "Deployment".into());
    assert!(!s.on_resync(Some("a")));
    start(&mut s, "a");
    s.on_synced("todo".into(), "Deployment".into());
    s.on_done(ready(), Instant::now());
    assert!(s.on_resync(Some("a")));
    assert!(!s.on_resync(Some("b")));
}

#[test]
fn a_paused_components_drift_is_ignored_until_the_pause_ends_by_itself() {
    let mut s = idle_at("c1");
    let now = Instant::now();
    let end = now + Duration::from_secs(300);
    assert!(s
        .on_pauses("todo", vec![(Some("backend".into()), end)], now)
        .is_empty());
    assert_eq!(s.pause_end_at(), Some(end));
    assert_eq!(
        s.on_drift_in("todo", "backend", "Deployment/b", now),
        DriftVerdict::Paused(end)
    );
    assert_eq!(
        s.next(Some("c1")),
        Next::Idle,
        "paused drift starts nothing"
    );
    assert!(
        matches!(
            s.on_drift_in("todo", "frontend", "Deployment/f", now),
            DriftVerdict::Now { .. }
        ),
        "another component is corrected as ever"
    );
    let Next::Start(st) = s.next(Some("c1")) else {
        panic!("the frontend's drift reconciles");
    };
    assert_eq!(st.trigger, Trigger::Drift);
    s.on_done(ready(), now);
    assert!(s.on_pause_due(end - Duration::from_secs(1)).is_empty());
    assert_eq!(
        s.on_pause_due(end),
        [("todo".to_string(), Some("backend".to_string()))]
    );
    assert_eq!(s.pause_end_at(), None);
    let Next::Start(st) = s.next(Some("c1")) else {
        panic!("the pause's end schedules a restore");
    };
    assert_eq!(st.trigger, Trigger::PauseEnd);
    assert!(
        st.full,
        "the restore compares every object, so every hand change is reported"
    );
    assert!(matches!(
        s.on_drift_in("todo", "backend", "Deployment/b", end),
        DriftVerdict::Now { .. }
    ));
}

#[test]
fn a_stack_pause_holds_every_component_and_resume_ends_it_at_once() {
    let mut s = idle_at("c1");
    let now = Instant::now();
    let end = now + Duration::from_secs(900);
    s.on_pauses("todo", vec![(None, end)], now);
    assert!(matches!(
        s.on_drift_in("todo", "", "ConfigMap/x", now),
        DriftVerdict::Paused(_)
    ));
    assert!(
        matches!(
            s.on_drift_in("other", "db", "Deployment/d", now),
            DriftVerdict::Now { .. }
        ),
        "a pause holds its own stack only"
    );
    s.next(Some("c1"));
    s.on_done(ready(), now);
    // `converge resume` rewrites the pause with an end of now.
    assert_eq!(s.on_pauses("todo", vec![(None, now)], now), [None]);
    assert_eq!(s.pause_end_at(), None);
    let Next::Start(st) = s.next(Some("c1")) else {
        panic!("resume restores at once");
    };
    assert_eq!(st.trigger, Trigger::PauseEnd);
    s.on_done(ready(), now);
    // A record deleted by hand ends its pauses too.
    s.on_pauses("todo", vec![(Some("db".into()), end)], now);
    assert_eq!(s.on_pauses("todo", vec![], now), [Some("db".to_string())]);
}

#[test]
fn a_sync_retries_a_stalled_tip() {
    let mut s = idle_at("a");
    s.on_tip("bad");
    start(&mut s, "bad");
    s.on_done(invalid(), Instant::now());
    s.on_sync();
    let st = start(&mut s, "bad");
    assert_eq!(st.commit, "bad");
    assert!(st.overlay.is_none() && st.full);
}
