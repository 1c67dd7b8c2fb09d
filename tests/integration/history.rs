//! converge's git writes on real repositories made with the git CLI (no cluster): the note on a
//! commit as `git log --notes=converge` shows it, and the automatic revert with its guards and
//! its care for a checked-out working tree.

use std::time::Instant;

use converge::history::notes::{self, Block, StackNote, Written};
use converge::history::revert::{self, Refusal, RevertError};

use crate::support::git::GitRepo;

/// A repository whose `main` has two commits: `v1`, then `v2` (the one that fails).
fn two_commits() -> (GitRepo, String, String) {
    let repo = GitRepo::new();
    repo.write("desired/backend.yaml", "version: v1\n")
        .write("desired/other.yaml", "a\n");
    let good = repo.commit("backend v1");
    repo.write("desired/backend.yaml", "version: v2\n");
    let bad = repo.commit("backend v2");
    (repo, good, bad)
}

fn outcome(reason: &str, ready: bool) -> StackNote {
    StackNote {
        stack: "todo".into(),
        dir: "desired".into(),
        namespace: "todo".into(),
        reason: reason.into(),
        ready,
        failed_step: (!ready).then(|| "health".into()),
        message: "backend: not ready".into(),
        time: "2026-12-06T10:00:00Z".into(),
        duration_ms: 10,
        images: vec!["todo-backend:abc (reused)".into()],
        applied: vec!["Deployment/backend".into()],
        pruned: Vec::new(),
        reverts: None,
    }
}

#[test]
fn a_note_is_what_git_log_notes_converge_shows_and_is_written_only_when_the_outcome_changes() {
    let (repo, _, bad) = two_commits();
    let failed = [Block::stack(&outcome("HealthCheckFailed", false))];
    assert_eq!(
        notes::write(repo.path(), &bad, &failed).unwrap(),
        Written::Updated
    );
    let shown = repo.git(&["log", "-1", "--notes=converge", "--format=%N", &bad]);
    assert!(
        shown.starts_with("stack todo (desired): HealthCheckFailed at health"),
        "{shown}"
    );
    let author = repo.git(&["log", "-1", "--format=%an <%ae>", "refs/notes/converge"]);
    assert_eq!(author, "converge <converge@localhost>");
    let notes_tip = repo.git(&["rev-parse", "refs/notes/converge"]);
    assert_eq!(
        notes::write(repo.path(), &bad, &failed).unwrap(),
        Written::Unchanged
    );
    assert_eq!(repo.git(&["rev-parse", "refs/notes/converge"]), notes_tip);
    notes::write(
        repo.path(),
        &bad,
        &[Block::stack(&outcome("ReconciliationSucceeded", true))],
    )
    .unwrap();
    let shown = repo.git(&["log", "-1", "--notes=converge", "--format=%N", &bad]);
    assert!(
        shown.contains("before: HealthCheckFailed at health"),
        "{shown}"
    );

    // The repository's config names converge's identity when it wants another.
    repo.git(&["config", "converge.name", "deploy bot"]);
    repo.git(&["config", "converge.email", "bot@example.invalid"]);
    notes::write(
        repo.path(),
        &bad,
        &[Block::stack(&outcome("HealthCheckFailed", false))],
    )
    .unwrap();
    let author = repo.git(&["log", "-1", "--format=%an <%ae>", "refs/notes/converge"]);
    assert_eq!(author, "deploy bot <bot@example.invalid>");
}

#[test]
fn the_cost_of_a_note_per_reconcile() {
    let (repo, _, bad) = two_commits();
    let n = 200;
    let t0 = Instant::now();
    for i in 0..n {
        let reason = if i % 2 == 0 {
            "HealthCheckFailed"
        } else {
            "ReconciliationSucceeded"
        };
        notes::write(
            repo.path(),
            &bad,
            &[Block::stack(&outcome(reason, i % 2 == 1))],
        )
        .unwrap();
    }
    let changed = t0.elapsed() / n;
    let t1 = Instant::now();
    for _ in 0..n {
        notes::write(
            repo.path(),
            &bad,
            &[Block::stack(&outcome("ReconciliationSucceeded", true))],
        )
        .unwrap();
    }
    let unchanged = t1.elapsed() / n;
    eprintln!("note per reconcile: {changed:?} when the outcome changed (a write), {unchanged:?} when it did not (a read)");
}

#[test]
fn a_revert_of_the_checked_out_tip_moves_the_branch_and_leaves_git_status_clean() {
    let (repo, good, bad) = two_commits();
    // An uncommitted change elsewhere is none of the revert's business and stays.
    repo.write("desired/other.yaml", "local edit\n");
    let made = revert::revert(
        repo.path(),
        "refs/heads/main",
        &bad,
        "HealthCheckFailed at health",
        None,
        false,
    )
    .unwrap();
    assert_eq!(repo.head(), made.commit);
    assert_eq!(repo.git(&["rev-parse", "HEAD^"]), bad);
    assert_eq!(
        repo.git(&["rev-parse", "HEAD^{tree}"]),
        repo.git(&["rev-parse", &format!("{good}^{{tree}}")])
    );
    let msg = repo.git(&["log", "-1", "--format=%B"]);
    assert!(msg.starts_with("Revert \"backend v2\""), "{msg}");
    assert!(
        msg.contains(&format!("This reverts commit {bad}.")),
        "{msg}"
    );
    assert!(msg.contains("HealthCheckFailed at health"), "{msg}");
    assert_eq!(
        repo.git(&["log", "-1", "--format=%an <%ae>|%cn <%ce>"]),
        "converge <converge@localhost>|converge <converge@localhost>"
    );
    assert_eq!(
        std::fs::read_to_string(repo.file("desired/backend.yaml")).unwrap(),
        "version: v1\n"
    );
    assert_eq!(repo.git(&["status", "--porcelain"]), "M desired/other.yaml");
    assert_eq!(
        made.worktree.as_deref().map(|p| p.canonicalize().unwrap()),
        Some(repo.path().canonicalize().unwrap())
    );
}

#[test]
fn a_revert_of_a_branch_not_checked_out_moves_only_the_branch() {
    let (repo, good, bad) = two_commits();
    repo.git(&["checkout", "-q", "-b", "feature"]);
    repo.write("desired/backend.yaml", "version: mine\n");
    let made = revert::revert(
        repo.path(),
        "refs/heads/main",
        &bad,
        "HealthCheckFailed",
        None,
        false,
    )
    .unwrap();
    assert_eq!(repo.git(&["rev-parse", "main"]), made.commit);
    assert_eq!(
        repo.git(&["rev-parse", "main^{tree}"]),
        repo.git(&["rev-parse", &format!("{good}^{{tree}}")])
    );
    assert_eq!(made.worktree, None);
    assert_eq!(repo.head(), bad, "the checked-out branch did not move");
    assert_eq!(
        std::fs::read_to_string(repo.file("desired/backend.yaml")).unwrap(),
        "version: mine\n"
    );
}

#[test]
fn uncommitted_changes_in_the_paths_the_revert_touches_refuse_it_and_change_nothing() {
    let (repo, _, bad) = two_commits();
    repo.write("desired/backend.yaml", "version: hand edit\n");
    let err = revert::revert(
        repo.path(),
        "refs/heads/main",
        &bad,
        "HealthCheckFailed",
        None,
        false,
    )
    .unwrap_err();
    let RevertError::Refused(Refusal::Dirty { paths, .. }) = &err else {
        panic!("{err}");
    };
    assert_eq!(paths, &["desired/backend.yaml".to_string()]);
    assert!(err.to_string().contains("commit or stash them"), "{err}");
    assert_eq!(repo.head(), bad);
    assert_eq!(
        std::fs::read_to_string(repo.file("desired/backend.yaml")).unwrap(),
        "version: hand edit\n"
    );
}

#[test]
fn a_revert_is_never_reverted_a_newer_commit_wins_and_a_recorded_revert_is_not_made_again() {
    let (repo, _, bad) = two_commits();
    repo.git(&["revert", "--no-edit", "HEAD"]);
    let revert_commit = repo.head();
    let err = revert::revert(
        repo.path(),
        "refs/heads/main",
        &revert_commit,
        "x",
        None,
        false,
    )
    .unwrap_err();
    assert!(
        matches!(err, RevertError::Refused(Refusal::RevertOfRevert { .. })),
        "{err}"
    );
    let err = revert::revert(repo.path(), "refs/heads/main", &bad, "x", None, false).unwrap_err();
    assert!(
        matches!(err, RevertError::Refused(Refusal::Moved { .. })),
        "{err}"
    );
    repo.git(&["reset", "-q", "--hard", &bad]);
    let err = revert::revert(
        repo.path(),
        "refs/heads/main",
        &bad,
        "x",
        Some(revert_commit),
        false,
    )
    .unwrap_err();
    assert!(
        matches!(err, RevertError::Refused(Refusal::Already { .. })),
        "{err}"
    );
    assert_eq!(repo.head(), bad);
}

#[test]
fn a_revert_updates_the_linked_worktree_that_has_the_branch_checked_out() {
    let (repo, _, bad) = two_commits();
    repo.git(&["checkout", "-q", "--detach"]);
    let wt = tempfile::tempdir().unwrap();
    let wt_path = wt.path().join("wt");
    repo.git(&["worktree", "add", "-q", wt_path.to_str().unwrap(), "main"]);
    let made = revert::revert(
        repo.path(),
        "refs/heads/main",
        &bad,
        "HealthCheckFailed",
        None,
        false,
    )
    .unwrap();
    assert_eq!(
        made.worktree.map(|p| p.canonicalize().unwrap()),
        Some(wt_path.canonicalize().unwrap())
    );
    let status = std::process::Command::new("git")
        .arg("-C")
        .arg(&wt_path)
        .args(["status", "--porcelain"])
        .output()
        .unwrap();
    assert_eq!(String::from_utf8_lossy(&status.stdout), "");
    assert_eq!(
        std::fs::read_to_string(wt_path.join("desired/backend.yaml")).unwrap(),
        "version: v1\n"
    );
}
