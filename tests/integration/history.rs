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

/// What the daemon asks for: revert `failed` on `main`, the stack owning `desired/`.
fn request(failed: &str, reason: &str, reverted_by: Option<String>) -> revert::Request {
    revert::Request {
        branch: "refs/heads/main".into(),
        failed: failed.into(),
        stack: "todo".into(),
        reason: reason.into(),
        scope: vec!["desired".into()],
        reverted_by,
        pull_mode: false,
    }
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
        &request(&bad, "HealthCheckFailed at health", None),
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
    let made = revert::revert(repo.path(), &request(&bad, "HealthCheckFailed", None)).unwrap();
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
    let err = revert::revert(repo.path(), &request(&bad, "HealthCheckFailed", None)).unwrap_err();
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
    let err = revert::revert(repo.path(), &request(&revert_commit, "x", None)).unwrap_err();
    assert!(
        matches!(err, RevertError::Refused(Refusal::RevertOfRevert { .. })),
        "{err}"
    );
    let err = revert::revert(repo.path(), &request(&bad, "x", None)).unwrap_err();
    assert!(
        matches!(err, RevertError::Refused(Refusal::Moved { .. })),
        "{err}"
    );
    repo.git(&["reset", "-q", "--hard", &bad]);
    let err = revert::revert(repo.path(), &request(&bad, "x", Some(revert_commit))).unwrap_err();
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
    let made = revert::revert(repo.path(), &request(&bad, "HealthCheckFailed", None)).unwrap();
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

fn git_in(dir: &std::path::Path, args: &[&str]) -> String {
    let out = std::process::Command::new("git")
        .arg("-C")
        .arg(dir)
        .args(args)
        .env("GIT_CONFIG_NOSYSTEM", "1")
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "git {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

fn read(repo: &GitRepo, rel: &str) -> String {
    std::fs::read_to_string(repo.file(rel)).unwrap()
}

#[test]
fn a_commit_landing_between_the_check_and_the_branch_swap_wins_and_the_worktree_is_untouched() {
    let (repo, _, bad) = two_commits();
    let p = revert::prepare(repo.path(), &request(&bad, "HealthCheckFailed", None)).unwrap();
    // A push (or `git update-ref`) needs no index lock: it can land after converge's check.
    let newer = repo.git(&[
        "commit-tree",
        &format!("{bad}^{{tree}}"),
        "-p",
        &bad,
        "-m",
        "newer",
    ]);
    let err = revert::finish_racing(&p, &bad, &mut || {
        repo.git(&["update-ref", "refs/heads/main", &newer]);
    })
    .unwrap_err();
    assert!(
        matches!(err, RevertError::Refused(Refusal::Moved { .. })),
        "{err}"
    );
    assert_eq!(repo.head(), newer, "the newer commit stays the tip");
    assert_eq!(read(&repo, "desired/backend.yaml"), "version: v2\n");
    assert_eq!(repo.git(&["status", "--porcelain"]), "");
    assert!(!repo.file(".git/index.lock").exists());
    assert!(!repo.file(".git/converge-revert").exists());
}

#[test]
fn a_commit_made_after_prepare_wins_and_nothing_is_staged_on_it() {
    let (repo, _, bad) = two_commits();
    let p = revert::prepare(repo.path(), &request(&bad, "HealthCheckFailed", None)).unwrap();
    repo.write("desired/other.yaml", "b\n");
    let mine = repo.commit("my commit");
    let err = revert::finish(&p, &bad).unwrap_err();
    assert!(
        matches!(err, RevertError::Refused(Refusal::Moved { .. })),
        "{err}"
    );
    assert_eq!(repo.head(), mine);
    assert_eq!(repo.git(&["status", "--porcelain"]), "");
    assert_eq!(read(&repo, "desired/backend.yaml"), "version: v2\n");
}

#[test]
fn an_index_lock_held_by_another_git_process_refuses_and_is_left_alone() {
    let (repo, _, bad) = two_commits();
    repo.write(".git/index.lock", "");
    let err = revert::revert(repo.path(), &request(&bad, "HealthCheckFailed", None)).unwrap_err();
    assert!(
        matches!(err, RevertError::Refused(Refusal::Busy { .. })),
        "{err}"
    );
    assert!(
        err.to_string().contains("another git process is running"),
        "{err}"
    );
    assert!(repo.file(".git/index.lock").exists());
    assert_eq!(repo.head(), bad);
    std::fs::remove_file(repo.file(".git/index.lock")).unwrap();
    assert_eq!(repo.git(&["status", "--porcelain"]), "");
}

#[test]
fn an_ignored_file_where_the_revert_puts_a_file_back_refuses() {
    let repo = GitRepo::new();
    repo.write(".gitignore", "desired/local.yaml\n")
        .write("desired/backend.yaml", "v1\n");
    repo.git(&["add", "-A"]);
    repo.write("desired/local.yaml", "committed\n");
    repo.git(&["add", "-f", "desired/local.yaml"]);
    repo.git(&["commit", "-q", "-m", "v1"]);
    repo.git(&["rm", "-q", "--cached", "desired/local.yaml"]);
    repo.git(&["commit", "-q", "-m", "stop tracking local.yaml"]);
    let bad = repo.head();
    repo.write("desired/local.yaml", "my own, ignored\n");
    let err = revert::revert(repo.path(), &request(&bad, "HealthCheckFailed", None)).unwrap_err();
    let RevertError::Refused(Refusal::Dirty { paths, .. }) = &err else {
        panic!("{err}");
    };
    assert_eq!(paths, &["desired/local.yaml".to_string()]);
    assert_eq!(read(&repo, "desired/local.yaml"), "my own, ignored\n");
    assert_eq!(repo.head(), bad);
}

#[test]
fn a_merge_in_progress_refuses() {
    let (repo, _, bad) = two_commits();
    repo.git(&["checkout", "-q", "-b", "side", &format!("{bad}^")]);
    repo.write("desired/backend.yaml", "version: side\n");
    repo.commit("side");
    repo.git(&["checkout", "-q", "main"]);
    let out = std::process::Command::new("git")
        .current_dir(repo.path())
        .args(["merge", "-q", "side"])
        .output()
        .unwrap();
    assert!(!out.status.success(), "the merge conflicts");
    let err = revert::revert(repo.path(), &request(&bad, "HealthCheckFailed", None)).unwrap_err();
    assert!(err.to_string().contains("a merge is in progress"), "{err}");
    assert_eq!(repo.head(), bad);
    assert!(repo.file(".git/MERGE_HEAD").exists());
}

#[test]
fn a_rebase_of_the_branch_in_a_linked_worktree_refuses() {
    let (repo, _, bad) = two_commits();
    repo.git(&["checkout", "-q", "--detach"]);
    let wt = tempfile::tempdir().unwrap();
    let wt_path = wt.path().join("wt");
    repo.git(&["worktree", "add", "-q", wt_path.to_str().unwrap(), "main"]);
    let out = std::process::Command::new("git")
        .arg("-C")
        .arg(&wt_path)
        .env("GIT_SEQUENCE_EDITOR", "sed -i 1ibreak")
        .args(["rebase", "-q", "-i", "HEAD~1"])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // The rebase detached the worktree's HEAD: main is checked out nowhere, yet it is busy.
    let err = revert::revert(repo.path(), &request(&bad, "HealthCheckFailed", None)).unwrap_err();
    assert!(
        err.to_string().contains("a rebase of main is in progress"),
        "{err}"
    );
    assert_eq!(repo.git(&["rev-parse", "main"]), bad);
}

#[test]
fn skip_worktree_and_sparse_checkout_refuse_with_one_line() {
    let (repo, _, bad) = two_commits();
    repo.git(&["update-index", "--skip-worktree", "desired/backend.yaml"]);
    let err = revert::revert(repo.path(), &request(&bad, "HealthCheckFailed", None)).unwrap_err();
    assert!(
        matches!(err, RevertError::Refused(Refusal::Sparse { .. })),
        "{err}"
    );
    assert!(err.to_string().contains("skip-worktree"), "{err}");
    repo.git(&["update-index", "--no-skip-worktree", "desired/backend.yaml"]);
    repo.git(&["config", "core.sparseCheckout", "true"]);
    let err = revert::revert(repo.path(), &request(&bad, "HealthCheckFailed", None)).unwrap_err();
    assert!(err.to_string().contains("sparse checkout"), "{err}");
    assert_eq!(repo.head(), bad);
}

#[test]
fn files_the_revert_adds_and_deletes_are_written_and_git_status_stays_clean() {
    let repo = GitRepo::new();
    repo.write("desired/backend.yaml", "v1\n")
        .write("desired/old.yaml", "old\n");
    let good = repo.commit("v1");
    repo.remove("desired/old.yaml")
        .write("desired/sub/new.yaml", "new\n");
    let bad = repo.commit("swap files");
    let made = revert::revert(repo.path(), &request(&bad, "HealthCheckFailed", None)).unwrap();
    assert_eq!(repo.head(), made.commit);
    assert_eq!(read(&repo, "desired/old.yaml"), "old\n");
    assert!(
        !repo.file("desired/sub").exists(),
        "the emptied directory goes too"
    );
    assert_eq!(repo.git(&["status", "--porcelain", "--ignored"]), "");
    assert_eq!(
        repo.git(&["rev-parse", "HEAD^{tree}"]),
        repo.git(&["rev-parse", &format!("{good}^{{tree}}")])
    );
    assert_eq!(repo.git(&["diff", "--cached", "--stat"]), "");
}

#[test]
fn a_merge_commit_is_reverted_against_its_first_parent() {
    let (repo, good, _) = two_commits();
    repo.git(&["checkout", "-q", "-b", "feature", &good]);
    repo.write("desired/feature.yaml", "f\n");
    repo.commit("feature");
    repo.git(&["checkout", "-q", "main"]);
    let before = repo.head();
    repo.git(&["merge", "-q", "--no-ff", "-m", "merge feature", "feature"]);
    let merge = repo.head();
    let made = revert::revert(repo.path(), &request(&merge, "HealthCheckFailed", None)).unwrap();
    assert_eq!(repo.head(), made.commit);
    assert_eq!(
        repo.git(&["rev-parse", "HEAD^{tree}"]),
        repo.git(&["rev-parse", &format!("{before}^{{tree}}")])
    );
    assert!(!repo.file("desired/feature.yaml").exists());
    assert_eq!(repo.git(&["status", "--porcelain"]), "");
}

#[test]
fn a_detached_head_and_a_bare_repository_move_only_the_branch() {
    let (repo, good, bad) = two_commits();
    repo.git(&["checkout", "-q", "--detach"]);
    let made = revert::revert(repo.path(), &request(&bad, "HealthCheckFailed", None)).unwrap();
    assert_eq!(made.worktree, None);
    assert_eq!(repo.head(), bad, "the detached HEAD did not move");
    assert_eq!(repo.git(&["rev-parse", "main"]), made.commit);
    assert_eq!(repo.git(&["status", "--porcelain"]), "");

    let (repo, _, bad) = two_commits();
    let bare = tempfile::tempdir().unwrap();
    let bare_path = bare.path().join("bare.git");
    repo.git(&["clone", "-q", "--bare", ".", bare_path.to_str().unwrap()]);
    let made = revert::revert(&bare_path, &request(&bad, "HealthCheckFailed", None)).unwrap();
    assert_eq!(made.worktree, None);
    assert_eq!(git_in(&bare_path, &["rev-parse", "main^"]), bad);
    let _ = good;
}

#[test]
fn the_main_worktree_of_a_separate_git_dir_is_found() {
    let base = tempfile::tempdir().unwrap();
    let wt = base.path().join("wt");
    let gd = base.path().join("gitdir");
    git_in(
        base.path(),
        &[
            "init",
            "-q",
            "-b",
            "main",
            "--separate-git-dir",
            gd.to_str().unwrap(),
            wt.to_str().unwrap(),
        ],
    );
    for (k, v) in [
        ("user.email", "t@converge.invalid"),
        ("user.name", "t"),
        ("commit.gpgsign", "false"),
    ] {
        git_in(&wt, &["config", k, v]);
    }
    std::fs::create_dir_all(wt.join("desired")).unwrap();
    std::fs::write(wt.join("desired/backend.yaml"), "v1\n").unwrap();
    git_in(&wt, &["add", "-A"]);
    git_in(&wt, &["commit", "-q", "-m", "v1"]);
    std::fs::write(wt.join("desired/backend.yaml"), "v2\n").unwrap();
    git_in(&wt, &["commit", "-q", "-am", "v2"]);
    let bad = git_in(&wt, &["rev-parse", "HEAD"]);
    let made = revert::revert(&wt, &request(&bad, "HealthCheckFailed", None)).unwrap();
    assert!(made.worktree.is_some());
    assert_eq!(
        std::fs::read_to_string(wt.join("desired/backend.yaml")).unwrap(),
        "v1\n"
    );
    assert_eq!(git_in(&wt, &["status", "--porcelain"]), "");
}

#[test]
fn a_commit_that_did_not_change_the_stack_is_not_reverted() {
    let (repo, _, _) = two_commits();
    repo.write("README.md", "docs\n");
    let readme = repo.commit("docs only");
    let err =
        revert::revert(repo.path(), &request(&readme, "HealthCheckFailed", None)).unwrap_err();
    assert!(
        matches!(err, RevertError::Refused(Refusal::Unrelated { .. })),
        "{err}"
    );
    assert!(
        err.to_string().contains("did not change stack todo"),
        "{err}"
    );
    assert_eq!(repo.head(), readme);
}

#[test]
fn a_revert_interrupted_after_the_branch_moved_is_finished_by_recover() {
    let (repo, _, bad) = two_commits();
    let p = revert::prepare(repo.path(), &request(&bad, "HealthCheckFailed", None)).unwrap();
    revert::finish_interrupted(&p, true).unwrap();
    assert!(repo.file(".git/index.lock").exists());
    let done = revert::recover(repo.path()).unwrap();
    assert!(
        matches!(done.as_slice(), [revert::Recovered::Finished { .. }]),
        "{done:?}"
    );
    assert_eq!(repo.head(), p.revert);
    assert_eq!(read(&repo, "desired/backend.yaml"), "version: v1\n");
    assert_eq!(repo.git(&["status", "--porcelain"]), "");
    assert!(!repo.file(".git/index.lock").exists());
    assert!(!repo.file(".git/converge-revert").exists());
}

#[test]
fn a_revert_interrupted_before_the_branch_moved_is_rolled_back_and_a_foreign_lock_is_kept() {
    let (repo, _, bad) = two_commits();
    let p = revert::prepare(repo.path(), &request(&bad, "HealthCheckFailed", None)).unwrap();
    revert::finish_interrupted(&p, false).unwrap();
    let done = revert::recover(repo.path()).unwrap();
    assert!(
        matches!(done.as_slice(), [revert::Recovered::RolledBack { .. }]),
        "{done:?}"
    );
    assert_eq!(repo.head(), bad);
    assert!(!repo.file(".git/index.lock").exists());
    assert_eq!(repo.git(&["status", "--porcelain"]), "");

    // The lock of another git process, taken after converge's was gone, is not converge's.
    revert::finish_interrupted(&p, false).unwrap();
    std::fs::remove_file(repo.file(".git/index.lock")).unwrap();
    repo.write(".git/index.lock", "someone else's");
    assert_eq!(revert::recover(repo.path()).unwrap(), Vec::new());
    assert!(repo.file(".git/index.lock").exists());
}

#[test]
fn the_record_of_a_revert_is_rebuilt_from_the_commits_without_a_note() {
    let (repo, _, bad) = two_commits();
    let made = revert::revert(
        repo.path(),
        &request(&bad, "HealthCheckFailed at health in stack todo", None),
    )
    .unwrap();
    assert_eq!(
        revert::converge_revert_of(repo.path(), &made.commit),
        Some((
            bad.clone(),
            "HealthCheckFailed at health in stack todo".to_string()
        ))
    );
    repo.git(&["reset", "-q", "--hard", &bad]);
    assert_eq!(
        revert::find_revert(repo.path(), "refs/heads/main", &bad),
        Some(made.commit.clone())
    );
    // A revert by a person is not converge's.
    repo.git(&["revert", "--no-edit", "HEAD"]);
    assert_eq!(revert::converge_revert_of(repo.path(), &repo.head()), None);
}
