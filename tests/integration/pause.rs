//! `converge pause` and `converge resume` against a running daemon on the testbed (kwok node):
//! a paused component keeps its hand changes, the pause ends by itself and the daemon reports
//! the change (field and manager) and restores it, `resume` restores at once, a commit during a
//! pause is applied, and bad pauses are refused with a fix that runs as printed.

use std::process::Output;
use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::ConfigMap;
use serde_json::Value;

use super::daemon::{
    applied_commit, backend, backend_replicas, converge, env_version, stack_repo, wait_status,
    write_backend, Daemon, CONVERGED,
};
use crate::support::git::GitRepo;
use crate::support::{kubectl, run_ok, TestNamespace};

/// `converge <args> --repo <repo> --stack todo -n <ns> --context <bed>`.
fn cli(repo: &GitRepo, ns: &TestNamespace, args: &[&str]) -> Output {
    converge()
        .args(args)
        .arg("--repo")
        .arg(repo.path())
        .args(["--stack", "todo", "-n", ns.name()])
        .args(["--context", &crate::support::current_context()])
        .output()
        .expect("run converge")
}

fn text(o: &Output) -> (String, String) {
    (
        String::from_utf8_lossy(&o.stdout).into_owned(),
        String::from_utf8_lossy(&o.stderr).into_owned(),
    )
}

/// The pauses recorded for stack `todo` (none when there is no record).
async fn pauses(ns: &TestNamespace) -> Vec<Value> {
    let Some(cm) = ns
        .api::<ConfigMap>()
        .get_opt("converge-todo-pause")
        .await
        .unwrap()
    else {
        return Vec::new();
    };
    let text = cm
        .data
        .and_then(|d| d.get("pause.json").cloned())
        .unwrap_or_default();
    let v: Value = serde_json::from_str(&text).unwrap();
    v["pauses"].as_array().cloned().unwrap_or_default()
}

fn scale_backend(ns: &TestNamespace, replicas: u32) {
    run_ok(kubectl().args([
        "-n",
        ns.name(),
        "scale",
        "deployment/todo-todo-chatbot-backend",
        &format!("--replicas={replicas}"),
    ]));
}

/// Converges the stack under a fresh daemon, its drift watches listed.
async fn converged_daemon(ns: &TestNamespace, repo: &GitRepo) -> Daemon {
    let first = repo.head();
    let daemon = Daemon::start(repo.path(), &[]);
    wait_status(ns, CONVERGED, |s| {
        applied_commit(s) == first && s["ready"] == true
    })
    .await;
    daemon.wait_log(&["apply started"], Duration::from_secs(5));
    // Let the drift watches (and the pause watch) list.
    tokio::time::sleep(Duration::from_millis(500)).await;
    daemon
}

/// Waits until the backend runs `replicas`, returning when.
async fn wait_replicas(daemon: &Daemon, ns: &TestNamespace, replicas: i32, within: Duration) {
    let deadline = Instant::now() + within;
    while backend_replicas(ns).await != replicas {
        assert!(
            Instant::now() < deadline,
            "the backend did not reach {replicas} replicas within {within:?}; log:\n{}",
            daemon.log()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn patch_postgres(ns: &TestNamespace, patch: &str) {
    run_ok(kubectl().args([
        "-n",
        ns.name(),
        "patch",
        "statefulset/todo-todo-chatbot-postgres",
        "--type",
        "merge",
        "-p",
        patch,
    ]));
}

async fn postgres_replicas(ns: &TestNamespace) -> i32 {
    ns.api::<k8s_openapi::api::apps::v1::StatefulSet>()
        .get("todo-todo-chatbot-postgres")
        .await
        .expect("postgres StatefulSet")
        .spec
        .and_then(|s| s.replicas)
        .unwrap_or(1)
}

/// Holds for `dur` and fails if the backend leaves `replicas` meanwhile.
async fn stays(daemon: &Daemon, ns: &TestNamespace, replicas: i32, dur: Duration) {
    let end = Instant::now() + dur;
    while Instant::now() < end {
        assert_eq!(
            backend_replicas(ns).await,
            replicas,
            "a paused component's hand change was undone; log:\n{}",
            daemon.log()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test]
async fn a_paused_component_keeps_its_hand_scale_and_the_pause_ends_by_itself_reporting_and_restoring_it(
) {
    let ns = TestNamespace::new("pause-expiry").await;
    let repo = stack_repo(ns.name());
    let daemon = converged_daemon(&ns, &repo).await;

    let o = cli(&repo, &ns, &["pause", "backend", "--for", "6s"]);
    let (out, err) = text(&o);
    assert!(o.status.success(), "pause failed:\n{out}{err}");
    assert!(
        out.contains("paused component backend of stack todo")
            && out.contains("new commits are still applied"),
        "{out}"
    );
    let until = pauses(&ns).await[0]["until"].as_str().unwrap().to_string();
    let until = chrono::DateTime::parse_from_rfc3339(&until).unwrap();
    let o = cli(&repo, &ns, &["status"]);
    let (out, _) = text(&o);
    assert!(
        out.contains("paused: component backend until")
            && out.contains("`converge resume backend --stack todo -n"),
        "status does not show the pause:\n{out}"
    );

    scale_backend(&ns, 3);
    daemon.wait_log(
        &["Deployment/todo-todo-chatbot-backend", "paused, left alone"],
        Duration::from_secs(5),
    );
    // Held while the pause lasts (a daemon that ignored it reverts within ~0.2 s).
    let left = (until.with_timezone(&chrono::Utc) - chrono::Utc::now())
        .to_std()
        .unwrap_or_default();
    stays(
        &daemon,
        &ns,
        3,
        left.saturating_sub(Duration::from_millis(500)),
    )
    .await;

    wait_replicas(&daemon, &ns, 1, Duration::from_secs(10)).await;
    let restored_after = chrono::Utc::now() - until.with_timezone(&chrono::Utc);
    let line = daemon.wait_log(
        &[
            "changed by hand while paused",
            "Deployment/todo-todo-chatbot-backend",
        ],
        Duration::from_secs(2),
    );
    assert!(line.contains("\"fields\":\"spec.replicas\""), "{line}");
    assert!(line.contains("\"managers\":\"kubectl"), "{line}");
    daemon.wait_log(
        &["pause ended by itself", "component backend"],
        Duration::from_secs(1),
    );
    let s = wait_status(&ns, Duration::from_secs(10), |s| {
        s["message"]
            .as_str()
            .is_some_and(|m| m.contains("changed by hand during a pause"))
    })
    .await;
    assert!(
        s["message"]
            .as_str()
            .unwrap()
            .contains("spec.replicas by kubectl"),
        "{s:#?}"
    );
    // Reported once: the ended pause is forgotten.
    let deadline = Instant::now() + Duration::from_secs(5);
    while !pauses(&ns).await.is_empty() {
        assert!(Instant::now() < deadline, "the ended pause was not cleared");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    eprintln!(
        "pause expiry → restored: {} ms",
        restored_after.num_milliseconds()
    );
    // Drift correction is back.
    scale_backend(&ns, 2);
    wait_replicas(&daemon, &ns, 1, Duration::from_secs(10)).await;
    drop(daemon);
    ns.cleanup().await;
}

#[tokio::test]
async fn a_commit_during_a_stack_pause_is_applied_and_resume_restores_the_hand_change_at_once() {
    let ns = TestNamespace::new("pause-resume").await;
    let repo = stack_repo(ns.name());
    let daemon = converged_daemon(&ns, &repo).await;

    let o = cli(&repo, &ns, &["pause", "--for", "10m", "-o", "json"]);
    assert!(o.status.success(), "{:?}", text(&o));
    let paused: serde_json::Value = serde_json::from_slice(&o.stdout)
        .unwrap_or_else(|e| panic!("pause -o json printed no JSON ({e}): {:?}", text(&o)));
    assert_eq!(paused["namespace"], ns.name(), "{paused:#}");
    assert!(paused["pause"]["until"].is_string(), "{paused:#}");
    assert!(
        paused["resume"]
            .as_str()
            .is_some_and(|r| r.starts_with("converge resume")),
        "{paused:#}"
    );
    let (out, _) = text(&cli(&repo, &ns, &["status"]));
    assert!(out.contains("paused: the stack until"), "{out}");
    scale_backend(&ns, 3);
    daemon.wait_log(&["paused, left alone"], Duration::from_secs(5));
    stays(&daemon, &ns, 3, Duration::from_secs(2)).await;

    // A hand change to an object the commit does not touch stays through the commit's
    // reconcile (the reconcile itself honours the pause, not only the drift watch).
    run_ok(kubectl().args([
        "-n",
        ns.name(),
        "scale",
        "statefulset/todo-todo-chatbot-postgres",
        "--replicas=2",
    ]));
    // … and one that makes it unready (kwok reads the label): the backend depends on
    // postgres, yet the commit does not wait for a component held in the state a person made.
    patch_postgres(
        &ns,
        r#"{"spec":{"template":{"metadata":{"labels":{"converge.test/fail":"unready"}}}}}"#,
    );
    // A commit is a deploy, not a hand change: applied during the pause; the object it
    // changes is applied whole, which re-asserts converge's replicas.
    write_backend(&repo, "v1");
    repo.commit("v1");
    let second = repo.head();
    wait_status(&ns, Duration::from_secs(40), |s| {
        applied_commit(s) == second && s["ready"] == true
    })
    .await;
    assert_eq!(env_version(&backend(&ns).await), "v1");
    assert_eq!(backend_replicas(&ns).await, 1);
    assert_eq!(postgres_replicas(&ns).await, 2, "log:\n{}", daemon.log());

    patch_postgres(
        &ns,
        r#"{"spec":{"template":{"metadata":{"labels":{"converge.test/fail":null}}}}}"#,
    );

    // Still paused for hand changes.
    scale_backend(&ns, 4);
    daemon.wait_log(&["paused, left alone"], Duration::from_secs(5));
    stays(&daemon, &ns, 4, Duration::from_secs(2)).await;
    // `converge diff` shows the held drift at any time.
    let o = cli(&repo, &ns, &["diff"]);
    let (out, err) = text(&o);
    assert_eq!(o.status.code(), Some(1), "{out}{err}");
    assert!(
        out.contains("-  replicas: 4") && out.contains("+  replicas: 1"),
        "{out}"
    );

    let resumed = Instant::now();
    let o = cli(&repo, &ns, &["resume"]);
    let (out, err) = text(&o);
    assert!(o.status.success(), "{out}{err}");
    assert!(out.contains("resumed stack todo"), "{out}");
    wait_replicas(&daemon, &ns, 1, Duration::from_secs(5)).await;
    eprintln!("resume → restored: {:?}", resumed.elapsed());
    let deadline = Instant::now() + Duration::from_secs(5);
    while postgres_replicas(&ns).await != 1 {
        assert!(
            Instant::now() < deadline,
            "postgres not restored; log:\n{}",
            daemon.log()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let line = daemon.wait_log(&["changed by hand while paused"], Duration::from_secs(2));
    assert!(
        line.contains("spec.replicas") && line.contains("kubectl"),
        "{line}"
    );
    let (out, _) = text(&cli(&repo, &ns, &["status"]));
    assert!(!out.contains("paused:"), "{out}");
    let (out, _) = text(&cli(&repo, &ns, &["resume"]));
    assert!(out.contains("nothing to resume"), "{out}");
    drop(daemon);
    ns.cleanup().await;
}

/// The command a hint line gives, as printed.
fn hinted(err: &str) -> Vec<String> {
    let hint = err
        .lines()
        .find(|l| l.starts_with("hint:"))
        .unwrap_or_else(|| panic!("no hint: {err}"));
    let start = hint.find("`converge ").expect("a command in the hint") + 1;
    let cmd = &hint[start..];
    let cmd = &cmd[..cmd.find('`').unwrap()];
    cmd.split_whitespace().map(str::to_string).collect()
}

#[tokio::test]
async fn a_pause_of_a_missing_component_or_longer_than_a_day_is_refused_with_a_fix_that_runs() {
    let ns = TestNamespace::new("pause-refused").await;
    let repo = stack_repo(ns.name());
    let daemon = converged_daemon(&ns, &repo).await;

    let o = cli(&repo, &ns, &["pause", "nosuch", "--for", "15m"]);
    let (_, err) = text(&o);
    assert_eq!(o.status.code(), Some(2), "{err}");
    assert!(err.contains("has no component `nosuch`"), "{err}");
    let fix = hinted(&err);
    assert_eq!(fix[..2], ["converge", "pause"], "{err}");
    assert!(["backend", "postgres"].contains(&fix[2].as_str()), "{err}");

    let o = cli(&repo, &ns, &["pause", "backend", "--for", "25h"]);
    let (_, err) = text(&o);
    assert_eq!(o.status.code(), Some(2), "{err}");
    assert!(err.contains("longer than a day"), "{err}");
    let fix = hinted(&err);
    assert!(fix.contains(&"--force".to_string()), "{err}");
    assert!(
        pauses(&ns).await.is_empty(),
        "a refused pause wrote nothing"
    );

    let o = cli(&repo, &ns, &["pause", "backend", "--for", "0s"]);
    assert_eq!(o.status.code(), Some(2), "{:?}", text(&o));

    // For scripts: `-o json` refuses as JSON on stdout, with the same fix.
    let o = cli(
        &repo,
        &ns,
        &["pause", "nosuch", "--for", "15m", "-o", "json"],
    );
    assert_eq!(o.status.code(), Some(2), "{:?}", text(&o));
    let refused: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap_or_else(|e| {
        panic!(
            "pause -o json refused in something else than JSON ({e}): {:?}",
            text(&o)
        )
    });
    assert!(
        refused["error"]
            .as_str()
            .is_some_and(|e| e.contains("has no component `nosuch`"))
            && refused["hint"]
                .as_str()
                .is_some_and(|h| h.contains("converge pause")),
        "{refused:#}"
    );
    assert!(
        pauses(&ns).await.is_empty(),
        "a refused pause wrote nothing"
    );

    // The fix runs as printed.
    let o = converge()
        .args(&fix[1..])
        .arg("--repo")
        .arg(repo.path())
        .output()
        .unwrap();
    assert!(
        o.status.success(),
        "`{}` failed: {:?}",
        fix.join(" "),
        text(&o)
    );
    let p = pauses(&ns).await;
    let until = chrono::DateTime::parse_from_rfc3339(p[0]["until"].as_str().unwrap()).unwrap();
    let hours = (until.with_timezone(&chrono::Utc) - chrono::Utc::now()).num_minutes() / 60;
    assert_eq!(hours, 24, "a forced 25h pause: {p:?}");

    // None of it stopped the daemon: the pause is honoured, and after resume drift is undone.
    scale_backend(&ns, 3);
    daemon.wait_log(&["paused, left alone"], Duration::from_secs(5));
    let o = cli(&repo, &ns, &["resume", "backend", "-o", "json"]);
    assert!(o.status.success(), "{:?}", text(&o));
    let resumed: serde_json::Value = serde_json::from_slice(&o.stdout)
        .unwrap_or_else(|e| panic!("resume -o json printed no JSON ({e}): {:?}", text(&o)));
    assert_eq!(resumed["resumed"], 1, "{resumed:#}");
    assert_eq!(resumed["component"], "backend", "{resumed:#}");
    assert_eq!(resumed["daemon"], true, "{resumed:#}");
    wait_replicas(&daemon, &ns, 1, Duration::from_secs(5)).await;
    drop(daemon);
    ns.cleanup().await;
}
