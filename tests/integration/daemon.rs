//! The daemon as a real process (`converge run`) against the testbed: a temporary git checkout
//! with the shipped chart, a stack in a fresh namespace, commits made with the git CLI, drift made
//! with kubectl, signals sent with kill. Every wait is bounded.

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::ConfigMap;
use serde_json::Value;

use crate::support::git::{copy_project_dir, GitRepo};
use crate::support::{kubectl, run_ok, testbed, TestNamespace};

/// Copies the project's chart into `repo` and writes a stack for namespace `ns`: postgres (a
/// StatefulSet) and backend (a Deployment) from prebuilt image refs, no Secrets needed.
fn stack_repo(ns: &str) -> GitRepo {
    let repo = GitRepo::new();
    copy_project_dir(&repo, "charts/todo-chatbot", "charts/todo-chatbot");
    repo.write(
        "desired/stack.yaml",
        format!(
            "apiVersion: converge.dev/v1alpha1\nkind: Stack\nname: todo\nnamespace: {ns}\nvalues:\n  frontend:\n    service: {{type: ClusterIP, port: 80}}\n  migrations:\n    enabled: false\n"
        ),
    );
    repo.write(
        "desired/postgres.yaml",
        "apiVersion: converge.dev/v1alpha1\nkind: Component\nname: postgres\nimage:\n  ref: postgres:16-alpine\nreplicas: 1\n",
    );
    write_backend(&repo, "v0");
    repo.commit("stack");
    repo
}

fn write_backend(repo: &GitRepo, version: &str) {
    repo.write(
        "desired/backend.yaml",
        format!("apiVersion: converge.dev/v1alpha1\nkind: Component\nname: backend\nimage:\n  ref: todo-backend:test\nreplicas: 1\nenv:\n  VERSION: \"{version}\"\ndependsOn: [postgres]\n"),
    );
}

/// `converge` preset for the bed (kubeconfig, helm and its caches).
fn converge() -> Command {
    let bed = testbed();
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_converge"));
    let home = bed.dir.join("helm");
    cmd.env("KUBECONFIG", &bed.kubeconfig)
        .env("CONVERGE_HELM", &bed.helm)
        .env("HELM_CACHE_HOME", home.join("cache"))
        .env("HELM_CONFIG_HOME", home.join("config"))
        .env("HELM_DATA_HOME", home.join("data"))
        .env_remove("CONVERGE_LOG")
        .env_remove("NOTIFY_SOCKET");
    cmd
}

/// A running `converge run`, its stderr collected line by line; killed when dropped.
struct Daemon {
    child: Child,
    lines: Arc<Mutex<Vec<String>>>,
}

impl Daemon {
    fn start(repo: &Path, extra: &[&str]) -> Daemon {
        let mut cmd = converge();
        cmd.args(["run", "--repo"])
            .arg(repo)
            .args([
                "--context",
                &crate::support::current_context(),
                "--log-format",
                "json",
                "--log",
                "info",
            ])
            .args(["--resync", "1h", "--timeout", "60s"])
            .args(extra)
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        let mut child = cmd.spawn().expect("spawn converge run");
        let lines = Arc::new(Mutex::new(Vec::new()));
        let stderr = child.stderr.take().unwrap();
        let sink = lines.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                sink.lock().unwrap().push(line);
            }
        });
        Daemon { child, lines }
    }

    fn pid(&self) -> u32 {
        self.child.id()
    }

    fn log(&self) -> String {
        self.lines.lock().unwrap().join("\n")
    }

    /// Waits for a log line containing every part of `parts`.
    fn wait_log(&self, parts: &[&str], timeout: Duration) -> String {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(l) = self
                .lines
                .lock()
                .unwrap()
                .iter()
                .find(|l| parts.iter().all(|p| l.contains(p)))
            {
                return l.clone();
            }
            assert!(
                Instant::now() < deadline,
                "no log line with {parts:?} within {timeout:?}; log:\n{}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    fn count_log(&self, parts: &[&str]) -> usize {
        self.lines
            .lock()
            .unwrap()
            .iter()
            .filter(|l| parts.iter().all(|p| l.contains(p)))
            .count()
    }

    fn signal(&self, sig: &str) {
        run_ok(Command::new("kill").args([&format!("-{sig}"), &self.pid().to_string()]));
    }

    fn wait_exit(&mut self, timeout: Duration) -> Option<ExitStatus> {
        let deadline = Instant::now() + timeout;
        while Instant::now() < deadline {
            if let Some(s) = self.child.try_wait().unwrap() {
                return Some(s);
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        None
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The status converge recorded for stack `todo` in `ns`.
async fn status(ns: &TestNamespace) -> Option<Value> {
    let cm = ns
        .api::<ConfigMap>()
        .get_opt("converge-todo-status")
        .await
        .ok()??;
    serde_json::from_str(cm.data?.get("status.json")?).ok()
}

/// Waits until the recorded status satisfies `pred`.
async fn wait_status(
    ns: &TestNamespace,
    timeout: Duration,
    pred: impl Fn(&Value) -> bool,
) -> Value {
    let deadline = Instant::now() + timeout;
    loop {
        let s = status(ns).await;
        if let Some(s) = s.as_ref().filter(|s| pred(s)) {
            return s.clone();
        }
        assert!(
            Instant::now() < deadline,
            "status not as expected within {timeout:?}: {s:#?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

fn applied_commit(s: &Value) -> &str {
    s["lastAppliedCommit"].as_str().unwrap_or("")
}

async fn backend(ns: &TestNamespace) -> Deployment {
    ns.api::<Deployment>()
        .get("todo-todo-chatbot-backend")
        .await
        .expect("backend Deployment")
}

fn env_version(d: &Deployment) -> String {
    d.spec
        .as_ref()
        .unwrap()
        .template
        .spec
        .as_ref()
        .unwrap()
        .containers[0]
        .env
        .as_ref()
        .and_then(|e| e.iter().find(|v| v.name == "VERSION"))
        .and_then(|v| v.value.clone())
        .unwrap_or_default()
}

const CONVERGED: Duration = Duration::from_secs(150);

#[tokio::test]
async fn a_new_commit_is_deployed_by_the_running_daemon() {
    let ns = TestNamespace::new("daemon-commit").await;
    let repo = stack_repo(ns.name());
    let first = repo.head();
    let daemon = Daemon::start(repo.path(), &[]);
    wait_status(&ns, CONVERGED, |s| {
        applied_commit(s) == first && s["ready"] == true
    })
    .await;

    write_backend(&repo, "v1");
    let second = repo.commit("backend v1");
    let s = wait_status(&ns, CONVERGED, |s| applied_commit(s) == second).await;
    assert_eq!(s["ready"], true, "{s:#}");
    assert_eq!(env_version(&backend(&ns).await), "v1");
    daemon.wait_log(
        &["reconcile started", "\"trigger\":\"commit\""],
        Duration::from_secs(1),
    );
    drop(daemon);
    ns.cleanup().await;
}

#[tokio::test]
async fn uncommitted_edits_are_never_deployed() {
    let ns = TestNamespace::new("daemon-worktree").await;
    let repo = stack_repo(ns.name());
    let first = repo.head();
    let daemon = Daemon::start(repo.path(), &[]);
    wait_status(&ns, CONVERGED, |s| {
        applied_commit(s) == first && s["ready"] == true
    })
    .await;
    // Edit and stage without committing, then make an unrelated ref event: nothing moves.
    write_backend(&repo, "dirty");
    repo.git(&["add", "-A"]);
    repo.git(&["branch", "-f", "scratch"]);
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(env_version(&backend(&ns).await), "v0");
    assert_eq!(
        daemon.count_log(&["reconcile started", "\"trigger\":\"commit\""]),
        0,
        "{}",
        daemon.log()
    );
    drop(daemon);
    ns.cleanup().await;
}

#[tokio::test]
async fn a_burst_of_twenty_commits_ends_at_the_last() {
    let ns = TestNamespace::new("daemon-burst").await;
    let repo = stack_repo(ns.name());
    let first = repo.head();
    let daemon = Daemon::start(repo.path(), &[]);
    wait_status(&ns, CONVERGED, |s| {
        applied_commit(s) == first && s["ready"] == true
    })
    .await;

    let mut last = String::new();
    for i in 1..=20 {
        write_backend(&repo, &format!("burst-{i}"));
        last = repo.commit(&format!("burst {i}"));
    }
    let s = wait_status(&ns, CONVERGED, |s| applied_commit(s) == last).await;
    assert_eq!(s["ready"], true, "{s:#}");
    assert_eq!(env_version(&backend(&ns).await), "burst-20");
    // Coalesced: far fewer reconciles than commits, and the last one is the tip.
    let commit_runs = daemon.count_log(&["reconcile started", "\"trigger\":\"commit\""]);
    assert!(
        (1..20).contains(&commit_runs),
        "{commit_runs} reconciles for 20 commits:\n{}",
        daemon.log()
    );
    drop(daemon);
    ns.cleanup().await;
}

#[tokio::test]
async fn kubectl_scale_by_hand_is_reverted_and_the_log_names_kubectl() {
    let ns = TestNamespace::new("daemon-drift").await;
    let repo = stack_repo(ns.name());
    let first = repo.head();
    let daemon = Daemon::start(repo.path(), &[]);
    wait_status(&ns, CONVERGED, |s| {
        applied_commit(s) == first && s["ready"] == true
    })
    .await;
    // Let the drift watches list their objects.
    daemon.wait_log(&["apply started"], Duration::from_secs(5));
    tokio::time::sleep(Duration::from_millis(500)).await;

    let scaled = Instant::now();
    run_ok(kubectl().args([
        "-n",
        ns.name(),
        "scale",
        "deployment/todo-todo-chatbot-backend",
        "--replicas=4",
    ]));
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let replicas = backend(&ns).await.spec.unwrap().replicas.unwrap_or(1);
        if replicas == 1 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the hand scale was not reverted within 10 s; log:\n{}",
            daemon.log()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let took = scaled.elapsed();
    let line = daemon.wait_log(
        &[
            "drift: changed out of band",
            "Deployment/todo-todo-chatbot-backend",
        ],
        Duration::from_secs(1),
    );
    assert!(line.contains("\"manager\":\"kubectl"), "{line}");
    assert!(
        took < Duration::from_secs(5),
        "drift corrected after {took:?}"
    );
    eprintln!("drift corrected {took:?} after kubectl scale");
    drop(daemon);
    ns.cleanup().await;
}

#[tokio::test]
async fn sigterm_stops_the_daemon_with_exit_0_within_10_seconds() {
    let ns = TestNamespace::new("daemon-sigterm").await;
    let repo = stack_repo(ns.name());
    let first = repo.head();
    let mut daemon = Daemon::start(repo.path(), &[]);
    wait_status(&ns, CONVERGED, |s| {
        applied_commit(s) == first && s["ready"] == true
    })
    .await;
    // Mid-reconcile: a new commit, then SIGTERM right away.
    write_backend(&repo, "v2");
    repo.commit("backend v2");
    tokio::time::sleep(Duration::from_millis(150)).await;
    let sent = Instant::now();
    daemon.signal("TERM");
    let status = daemon
        .wait_exit(Duration::from_secs(10))
        .unwrap_or_else(|| panic!("still running 10 s after SIGTERM; log:\n{}", daemon.log()));
    assert!(status.success(), "exit {status}; log:\n{}", daemon.log());
    eprintln!("stopped {:?} after SIGTERM", sent.elapsed());
    // The Lease is free for the next daemon.
    let lease = run_ok(kubectl().args([
        "-n",
        ns.name(),
        "get",
        "lease",
        "converge-todo",
        "-o",
        "jsonpath={.spec.holderIdentity}",
    ]));
    assert_eq!(lease.trim(), "");
    ns.cleanup().await;
}

#[tokio::test]
async fn an_invalid_commit_changes_nothing_and_status_shows_the_file_and_line() {
    let ns = TestNamespace::new("daemon-invalid").await;
    let repo = stack_repo(ns.name());
    let first = repo.head();
    let daemon = Daemon::start(repo.path(), &[]);
    wait_status(&ns, CONVERGED, |s| {
        applied_commit(s) == first && s["ready"] == true
    })
    .await;
    let before = backend(&ns).await.metadata.generation;

    repo.write(
        "desired/backend.yaml",
        "apiVersion: converge.dev/v1alpha1\nkind: Component\nname: backend\nimage:\n  ref: todo-backend:test\nreplicas: 1\nreplicaz: 3\n",
    );
    repo.commit("typo");
    let s = wait_status(&ns, CONVERGED, |s| s["reason"] == "ValidationFailed").await;
    let message = s["message"].as_str().unwrap_or("");
    assert!(message.contains("desired/backend.yaml:7"), "{message}");
    assert_eq!(applied_commit(&s), first, "nothing was applied");
    assert_eq!(backend(&ns).await.metadata.generation, before);

    let out = converge()
        .args(["status", "--context", &crate::support::current_context()])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains("ValidationFailed") && text.contains("desired/backend.yaml:7"),
        "{text}"
    );
    daemon.wait_log(&["cannot deploy this commit"], Duration::from_secs(1));
    drop(daemon);
    ns.cleanup().await;
}

#[tokio::test]
async fn a_second_daemon_refuses_and_names_the_first() {
    let ns = TestNamespace::new("daemon-twice").await;
    let repo = stack_repo(ns.name());
    let first = repo.head();
    let daemon = Daemon::start(repo.path(), &[]);
    wait_status(&ns, CONVERGED, |s| applied_commit(s) == first).await;

    // The same checkout: the file lock.
    let out = converge()
        .args(["run", "--repo"])
        .arg(repo.path())
        .args(["--context", &crate::support::current_context()])
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(err.contains(&format!("pid {}", daemon.pid())), "{err}");

    // Another checkout of the same stack: the Lease.
    let other = GitRepo::new();
    other.git(&["pull", "-q", &repo.path().to_string_lossy(), "main"]);
    let out = converge()
        .args(["run", "--repo"])
        .arg(other.path())
        .args(["--context", &crate::support::current_context()])
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(
        err.contains("Lease") && err.contains(&format!("/{}", daemon.pid())),
        "{err}"
    );
    drop(daemon);
    ns.cleanup().await;
}

#[tokio::test]
async fn converge_sync_reconciles_now_and_metrics_count_it() {
    let ns = TestNamespace::new("daemon-sync").await;
    let repo = stack_repo(ns.name());
    let first = repo.head();
    let daemon = Daemon::start(repo.path(), &[]);
    wait_status(&ns, CONVERGED, |s| {
        applied_commit(s) == first && s["ready"] == true
    })
    .await;
    let out = converge()
        .args(["sync", "--repo"])
        .arg(repo.path())
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    daemon.wait_log(
        &["reconcile started", "\"trigger\":\"sync\""],
        Duration::from_secs(5),
    );
    daemon.wait_log(&["ReconciliationSucceeded"], Duration::from_secs(30));

    let lock = std::fs::read_to_string(repo.path().join(".git/converge.lock")).unwrap();
    let addr = serde_json::from_str::<Value>(&lock).unwrap()["http"]
        .as_str()
        .unwrap()
        .to_string();
    let metrics = http_get(&addr, "/metrics");
    assert!(
        metrics.contains("converge_reconciles_total{result=\"success\"}"),
        "{metrics}"
    );
    assert!(
        metrics.contains(&format!(
            "converge_last_applied_commit_info{{commit=\"{first}\"}} 1"
        )),
        "{metrics}"
    );
    assert!(http_get(&addr, "/healthz").starts_with("HTTP/1.0 200"));
    assert!(http_get(&addr, "/readyz").starts_with("HTTP/1.0 200"));
    drop(daemon);
    ns.cleanup().await;
}

fn http_get(addr: &str, path: &str) -> String {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    write!(s, "GET {path} HTTP/1.0\r\n\r\n").unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).unwrap();
    out
}
