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
pub(super) fn stack_repo(ns: &str) -> GitRepo {
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

pub(super) fn write_backend(repo: &GitRepo, version: &str) {
    repo.write(
        "desired/backend.yaml",
        format!("apiVersion: converge.dev/v1alpha1\nkind: Component\nname: backend\nimage:\n  ref: todo-backend:test\nreplicas: 1\nenv:\n  VERSION: \"{version}\"\ndependsOn: [postgres]\n"),
    );
}

/// `converge` preset for the bed (kubeconfig, helm and its caches).
pub(super) fn converge() -> Command {
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
pub(super) struct Daemon {
    child: Child,
    lines: Arc<Mutex<Vec<String>>>,
}

impl Daemon {
    pub(super) fn start(repo: &Path, extra: &[&str]) -> Daemon {
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

    pub(super) fn pid(&self) -> u32 {
        self.child.id()
    }

    pub(super) fn log(&self) -> String {
        self.lines.lock().unwrap().join("\n")
    }

    /// Waits for a log line containing every part of `parts`.
    pub(super) fn wait_log(&self, parts: &[&str], timeout: Duration) -> String {
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

    pub(super) fn count_log(&self, parts: &[&str]) -> usize {
        self.lines
            .lock()
            .unwrap()
            .iter()
            .filter(|l| parts.iter().all(|p| l.contains(p)))
            .count()
    }

    pub(super) fn signal(&self, sig: &str) {
        run_ok(Command::new("kill").args([&format!("-{sig}"), &self.pid().to_string()]));
    }

    pub(super) fn wait_exit(&mut self, timeout: Duration) -> Option<ExitStatus> {
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
pub(super) async fn status(ns: &TestNamespace) -> Option<Value> {
    let cm = ns
        .api::<ConfigMap>()
        .get_opt("converge-todo-status")
        .await
        .ok()??;
    serde_json::from_str(cm.data?.get("status.json")?).ok()
}

/// Waits until the recorded status satisfies `pred`.
pub(super) async fn wait_status(
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

pub(super) fn applied_commit(s: &Value) -> &str {
    s["lastAppliedCommit"].as_str().unwrap_or("")
}

pub(super) async fn backend(ns: &TestNamespace) -> Deployment {
    ns.api::<Deployment>()
        .get("todo-todo-chatbot-backend")
        .await
        .expect("backend Deployment")
}

pub(super) fn env_version(d: &Deployment) -> String {
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

pub(super) const CONVERGED: Duration = Duration::from_secs(150);

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
async fn sigterm_mid_reconcile_records_what_was_applied_and_exits_0_within_10_seconds() {
    let ns = TestNamespace::new("daemon-sigterm").await;
    let repo = stack_repo(ns.name());
    let first = repo.head();
    let mut daemon = Daemon::start(repo.path(), &[]);
    wait_status(&ns, CONVERGED, |s| {
        applied_commit(s) == first && s["ready"] == true
    })
    .await;
    // Mid-reconcile: a commit whose backend never becomes ready keeps the reconcile in its
    // health wait (up to the 60 s timeout) when SIGTERM arrives.
    write_backend_with(&repo, "v2", NEVER_READY);
    let second = repo.commit("backend v2, never ready");
    wait_backend_unready_applied(&daemon, &ns).await;
    let sent = Instant::now();
    daemon.signal("TERM");
    let status_code = daemon
        .wait_exit(Duration::from_secs(10))
        .unwrap_or_else(|| panic!("still running 10 s after SIGTERM; log:\n{}", daemon.log()));
    assert!(
        status_code.success(),
        "exit {status_code}; log:\n{}",
        daemon.log()
    );
    eprintln!("stopped {:?} after SIGTERM", sent.elapsed());
    let stopping = daemon.wait_log(&["stopping: no new work"], Duration::from_secs(1));
    assert!(stopping.contains("\"in_flight\":true"), "{stopping}");
    // The reconcile in flight recorded what it applied before the daemon exited.
    let s = status(&ns).await.unwrap();
    assert_eq!(applied_commit(&s), second, "{s:#}");
    assert_eq!(s["reason"], "Progressing", "{s:#}");
    assert_eq!(s["history"][0]["commit"], second.as_str(), "{s:#}");
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

// ---- Fault injection: each test below fails when the fix it names is removed. ----

/// The backend Deployment's replicas.
pub(super) async fn backend_replicas(ns: &TestNamespace) -> i32 {
    backend(ns).await.spec.and_then(|s| s.replicas).unwrap_or(1)
}

/// Scales the backend by hand and waits until the daemon put it back to one replica.
async fn scale_and_expect_reverted(daemon: &Daemon, ns: &TestNamespace, within: Duration) {
    run_ok(kubectl().args([
        "-n",
        ns.name(),
        "scale",
        "deployment/todo-todo-chatbot-backend",
        "--replicas=3",
    ]));
    let deadline = Instant::now() + within;
    while backend_replicas(ns).await != 1 {
        assert!(
            Instant::now() < deadline,
            "the hand scale was not reverted within {within:?}; log:\n{}",
            daemon.log()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Writes a temporary manifest and runs `kubectl <args> -f <file>`.
fn kubectl_with_file(args: &[&str], manifest: &str) -> String {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("manifest.yaml");
    std::fs::write(&path, manifest).unwrap();
    run_ok(kubectl().args(args).arg("-f").arg(&path))
}

/// The backend's component file with `extra` appended (podLabels, secretEnv…).
pub(super) fn write_backend_with(repo: &GitRepo, version: &str, extra: &str) {
    write_backend(repo, version);
    let text = std::fs::read_to_string(repo.file("desired/backend.yaml")).unwrap();
    repo.write("desired/backend.yaml", format!("{text}{extra}"));
}

pub(super) const NEVER_READY: &str = "values:\n  podLabels: {converge.test/fail: unready}\n";

/// Waits until the backend's pod template carries the never-ready label (the apply is done and
/// the reconcile waits for health).
pub(super) async fn wait_backend_unready_applied(daemon: &Daemon, ns: &TestNamespace) {
    let deadline = Instant::now() + CONVERGED;
    loop {
        let labels = backend(ns)
            .await
            .spec
            .and_then(|s| s.template.metadata)
            .and_then(|m| m.labels)
            .unwrap_or_default();
        if labels.get("converge.test/fail").map(String::as_str) == Some("unready") {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "the never-ready backend was not applied; log:\n{}",
            daemon.log()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test]
async fn restarted_onto_a_commit_that_deletes_desired_the_daemon_still_reverts_a_hand_scale() {
    let ns = TestNamespace::new("daemon-restart-stalled").await;
    let repo = stack_repo(ns.name());
    let first = repo.head();
    let mut daemon = Daemon::start(repo.path(), &[]);
    wait_status(&ns, CONVERGED, |s| {
        applied_commit(s) == first && s["ready"] == true
    })
    .await;
    daemon.signal("TERM");
    assert!(daemon.wait_exit(Duration::from_secs(15)).is_some());

    repo.git(&["rm", "-r", "-q", "desired"]);
    repo.commit("remove desired/");
    let daemon = Daemon::start(repo.path(), &[]);
    daemon.wait_log(&["cannot deploy this commit"], Duration::from_secs(60));
    // Let the drift watches list their objects.
    tokio::time::sleep(Duration::from_secs(1)).await;
    scale_and_expect_reverted(&daemon, &ns, Duration::from_secs(20)).await;
    // The status keeps saying why the tip is not deployed, and what runs is the recorded commit.
    let s = status(&ns).await.unwrap();
    assert_eq!(s["reason"], "ValidationFailed", "{s:#}");
    assert_eq!(applied_commit(&s), first, "{s:#}");
    drop(daemon);
    ns.cleanup().await;
}

#[tokio::test]
async fn deleting_the_namespace_under_a_daemon_brings_its_lease_back_and_a_second_daemon_is_refused(
) {
    use k8s_openapi::api::coordination::v1::Lease;
    use k8s_openapi::api::core::v1::Namespace;
    let ns = TestNamespace::new("daemon-ns-deleted").await;
    let repo = stack_repo(ns.name());
    let first = repo.head();
    let mut daemon = Daemon::start(repo.path(), &[]);
    wait_status(&ns, CONVERGED, |s| {
        applied_commit(s) == first && s["ready"] == true
    })
    .await;
    let namespaces: kube::Api<Namespace> = kube::Api::all(ns.client());
    let uid = namespaces.get(ns.name()).await.unwrap().metadata.uid;
    run_ok(kubectl().args(["delete", "namespace", ns.name(), "--wait=false"]));

    // The namespace comes back (a new one) with the daemon's Lease in it.
    let leases: kube::Api<Lease> = ns.api();
    let me = format!("/{}", daemon.pid());
    let deadline = Instant::now() + Duration::from_secs(150);
    loop {
        let back = namespaces
            .get_opt(ns.name())
            .await
            .unwrap()
            .is_some_and(|n| n.metadata.uid != uid && n.metadata.deletion_timestamp.is_none());
        if back {
            let holder = leases
                .get_opt("converge-todo")
                .await
                .unwrap()
                .and_then(|l| l.spec)
                .and_then(|s| s.holder_identity)
                .unwrap_or_default();
            if holder.ends_with(&me) {
                break;
            }
        }
        assert!(
            Instant::now() < deadline,
            "the Lease was not re-created by its holder; log:\n{}",
            daemon.log()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }

    // Another checkout of the same stack is refused, and the first daemon keeps running.
    let other = GitRepo::new();
    other.git(&["pull", "-q", &repo.path().to_string_lossy(), "main"]);
    let out = converge()
        .args(["run", "--repo"])
        .arg(other.path())
        .args(["--context", &crate::support::current_context()])
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{err}");
    assert!(err.contains("Lease") && err.contains(&me), "{err}");
    assert!(
        daemon.child.try_wait().unwrap().is_none(),
        "the first daemon stopped; log:\n{}",
        daemon.log()
    );
    // And the stack is applied again into the new namespace (its status recorded there). Not
    // necessarily Ready: the Secrets went with the old namespace, as on any cluster, and the new
    // namespace (created by converge, not by the test) has no kwok placement, so its Pods meet a
    // real kubelet that wants them.
    wait_status(&ns, CONVERGED, |s| applied_commit(s) == first).await;
    drop(daemon);
    ns.cleanup().await;
}

#[tokio::test]
async fn a_kind_the_cluster_stops_serving_leaves_the_inventory_and_the_rest_still_converges() {
    let ns = TestNamespace::new("daemon-crd-gone").await;
    let group = format!("{}.converge.test", ns.name());
    let crd = format!("widgets.{group}");
    kubectl_with_file(
        &["apply"],
        &format!(
            "apiVersion: apiextensions.k8s.io/v1\nkind: CustomResourceDefinition\nmetadata: {{name: {crd}}}\nspec:\n  group: {group}\n  scope: Namespaced\n  names: {{plural: widgets, singular: widget, kind: Widget}}\n  versions:\n  - name: v1\n    served: true\n    storage: true\n    schema: {{openAPIV3Schema: {{type: object, x-kubernetes-preserve-unknown-fields: true}}}}\n"
        ),
    );
    run_ok(kubectl().args([
        "wait",
        "--for=condition=established",
        &format!("crd/{crd}"),
        "--timeout=60s",
    ]));
    let repo = stack_repo(ns.name());
    let template = "charts/todo-chatbot/templates/widget.yaml";
    repo.write(
        template,
        format!("apiVersion: {group}/v1\nkind: Widget\nmetadata:\n  name: {{{{ .Release.Name }}}}-widget\nspec:\n  size: 1\n"),
    );
    let first = repo.commit("a widget");
    let daemon = Daemon::start(repo.path(), &[]);
    wait_status(&ns, CONVERGED, |s| {
        applied_commit(s) == first && s["ready"] == true
    })
    .await;
    let widgets = run_ok(kubectl().args(["-n", ns.name(), "get", &crd, "-o", "name"]));
    assert!(widgets.contains("widget"), "{widgets}");

    run_ok(kubectl().args(["delete", "crd", &crd, "--wait=true"]));
    repo.remove(template);
    let second = repo.commit("no widget");
    let s = wait_status(&ns, Duration::from_secs(60), |s| {
        applied_commit(s) == second
    })
    .await;
    assert_eq!(s["ready"], true, "{s:#}\nlog:\n{}", daemon.log());
    daemon.wait_log(
        &["dropped from the inventory", "Widget"],
        Duration::from_secs(1),
    );
    // Drift correction works for the rest of the stack.
    tokio::time::sleep(Duration::from_millis(500)).await;
    scale_and_expect_reverted(&daemon, &ns, Duration::from_secs(20)).await;
    drop(daemon);
    ns.cleanup().await;
}

#[tokio::test]
async fn drift_during_an_image_build_never_restarts_the_build() {
    let ns = TestNamespace::new("daemon-build-drift").await;
    let repo = stack_repo(ns.name());
    let built = |version: &str| {
        format!("apiVersion: converge.dev/v1alpha1\nkind: Component\nname: backend\nimage:\n  build: {{context: app, repository: converge-test/slow}}\nreplicas: 1\nenv:\n  VERSION: \"{version}\"\ndependsOn: [postgres]\n")
    };
    repo.write("desired/backend.yaml", built("b1"));
    repo.write("app/Dockerfile", "FROM scratch\nCOPY version /version\n");
    repo.write("app/version", format!("1 {}\n", ns.name()));
    let first = repo.commit("built backend");
    // A build that takes six seconds and leaves a marker its existence check finds (kwok never
    // pulls the image it names).
    let images = tempfile::tempdir().unwrap();
    let script = images.path().join("build");
    std::fs::write(
        &script,
        "#!/bin/sh\nsleep 6\ntouch \"$(dirname \"$0\")/$1\"\n",
    )
    .unwrap();
    run_ok(Command::new("chmod").arg("755").arg(&script));
    let build = format!("{} {{tag}}", script.display());
    let exists = format!("test -e {}/{{tag}}", images.path().display());
    let daemon = Daemon::start(
        repo.path(),
        &[
            "--builder",
            "command",
            "--command",
            &build,
            "--exists-command",
            &exists,
        ],
    );
    wait_status(&ns, CONVERGED, |s| {
        applied_commit(s) == first && s["ready"] == true
    })
    .await;
    assert_eq!(daemon.count_log(&["building image"]), 1, "{}", daemon.log());

    repo.write("app/version", format!("2 {}\n", ns.name()));
    let second = repo.commit("new build input");
    let deadline = Instant::now() + Duration::from_secs(30);
    while daemon.count_log(&["building image"]) < 2 {
        assert!(
            Instant::now() < deadline,
            "no second build; log:\n{}",
            daemon.log()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // Well into the build (the old rule preempted anything older than 2 s), drift by hand.
    tokio::time::sleep(Duration::from_millis(2500)).await;
    run_ok(kubectl().args([
        "-n",
        ns.name(),
        "scale",
        "deployment/todo-todo-chatbot-backend",
        "--replicas=3",
    ]));
    let s = wait_status(&ns, CONVERGED, |s| {
        applied_commit(s) == second && s["ready"] == true
    })
    .await;
    assert_eq!(s["ready"], true);
    assert_eq!(
        daemon.count_log(&["building image"]),
        2,
        "the build was started again; log:\n{}",
        daemon.log()
    );
    let deadline = Instant::now() + Duration::from_secs(20);
    while backend_replicas(&ns).await != 1 {
        assert!(
            Instant::now() < deadline,
            "drift not corrected; log:\n{}",
            daemon.log()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    drop(daemon);
    ns.cleanup().await;
}

#[tokio::test]
async fn converge_apply_beside_a_daemon_is_refused_and_a_forced_one_is_undone_by_the_daemon() {
    let ns = TestNamespace::new("daemon-apply-beside").await;
    let repo = stack_repo(ns.name());
    let old = repo.head();
    write_backend(&repo, "v1");
    let tip = repo.commit("backend v1");
    let daemon = Daemon::start(repo.path(), &[]);
    wait_status(&ns, CONVERGED, |s| {
        applied_commit(s) == tip && s["ready"] == true
    })
    .await;
    let apply = |force: bool| {
        let mut cmd = converge();
        cmd.args(["apply", "--repo"])
            .arg(repo.path())
            .args([
                "--rev",
                &old,
                "--context",
                &crate::support::current_context(),
            ])
            .args(["--timeout", "60s"])
            .env("NO_COLOR", "1");
        if force {
            cmd.arg("--force");
        }
        cmd.output().unwrap()
    };
    let out = apply(false);
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(!out.status.success(), "{text}");
    assert!(
        text.contains("--force") && text.contains(&format!("/{}", daemon.pid())),
        "{text}"
    );
    assert_eq!(
        env_version(&backend(&ns).await),
        "v1",
        "nothing was applied"
    );

    let out = apply(true);
    assert!(
        out.status.success(),
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    // The daemon sees another commit in the record and puts the tip back.
    let s = wait_status(&ns, Duration::from_secs(60), |s| {
        applied_commit(s) == tip && s["ready"] == true && s["history"][0]["commit"] == tip
    })
    .await;
    assert_eq!(s["history"][1]["commit"], old.as_str(), "{s:#}");
    assert_eq!(env_version(&backend(&ns).await), "v1");
    daemon.wait_log(&["another commit was applied"], Duration::from_secs(1));
    drop(daemon);
    ns.cleanup().await;
}

#[tokio::test]
async fn a_revert_preempts_the_health_wait_of_a_commit_that_never_becomes_ready() {
    let ns = TestNamespace::new("daemon-revert-preempts").await;
    let repo = stack_repo(ns.name());
    let first = repo.head();
    let daemon = Daemon::start(repo.path(), &[]);
    wait_status(&ns, CONVERGED, |s| {
        applied_commit(s) == first && s["ready"] == true
    })
    .await;
    write_backend_with(&repo, "bad", NEVER_READY);
    repo.commit("a backend that never becomes ready");
    wait_backend_unready_applied(&daemon, &ns).await;
    tokio::time::sleep(Duration::from_secs(1)).await;

    repo.git(&["revert", "--no-edit", "HEAD"]);
    let revert = repo.head();
    let reverted = Instant::now();
    // The daemon's health timeout is 60 s: the revert must not wait for it.
    let s = wait_status(&ns, Duration::from_secs(30), |s| {
        applied_commit(s) == revert && s["ready"] == true
    })
    .await;
    assert_eq!(env_version(&backend(&ns).await), "v0", "{s:#}");
    eprintln!(
        "revert applied and healthy {:?} after the commit",
        reverted.elapsed()
    );
    daemon.wait_log(&["health wait preempted"], Duration::from_secs(1));
    drop(daemon);
    ns.cleanup().await;
}

#[tokio::test]
async fn a_component_pruned_by_a_commit_is_not_counted_as_drift() {
    let ns = TestNamespace::new("daemon-prune-not-drift").await;
    let repo = stack_repo(ns.name());
    repo.write(
        "desired/frontend.yaml",
        "apiVersion: converge.dev/v1alpha1\nkind: Component\nname: frontend\nimage:\n  ref: todo-frontend:test\nreplicas: 1\ndependsOn: [backend]\n",
    );
    let first = repo.commit("frontend");
    let daemon = Daemon::start(repo.path(), &[]);
    wait_status(&ns, CONVERGED, |s| {
        applied_commit(s) == first && s["ready"] == true
    })
    .await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    repo.remove("desired/frontend.yaml");
    let second = repo.commit("drop frontend");
    wait_status(&ns, CONVERGED, |s| {
        applied_commit(s) == second && s["ready"] == true
    })
    .await;
    daemon.wait_log(
        &["pruned", "todo-todo-chatbot-frontend"],
        Duration::from_secs(1),
    );
    // Give the watches time to report the deletions.
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(
        daemon.count_log(&["drift: deleted out of band"]),
        0,
        "{}",
        daemon.log()
    );
    assert_eq!(
        daemon.count_log(&["reconcile started", "\"trigger\":\"drift\""]),
        0,
        "{}",
        daemon.log()
    );
    drop(daemon);
    ns.cleanup().await;
}

#[tokio::test]
async fn a_field_manager_conflict_waits_for_a_new_commit_instead_of_retrying() {
    let ns = TestNamespace::new("daemon-conflict").await;
    let repo = stack_repo(ns.name());
    let first = repo.head();
    let daemon = Daemon::start(repo.path(), &[]);
    wait_status(&ns, CONVERGED, |s| {
        applied_commit(s) == first && s["ready"] == true
    })
    .await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    // Another tool takes spec.replicas by force.
    kubectl_with_file(
        &[
            "apply",
            "--server-side",
            "--force-conflicts",
            "--field-manager=deploy-bot",
        ],
        &format!("apiVersion: apps/v1\nkind: Deployment\nmetadata: {{name: todo-todo-chatbot-backend, namespace: {}}}\nspec: {{replicas: 3}}\n", ns.name()),
    );
    let line = daemon.wait_log(
        &["cannot deploy this commit as it is"],
        Duration::from_secs(30),
    );
    assert!(line.contains("deploy-bot"), "{line}");
    tokio::time::sleep(Duration::from_secs(10)).await;
    assert_eq!(
        daemon.count_log(&["reconcile started", "\"trigger\":\"retry\""]),
        0,
        "{}",
        daemon.log()
    );
    drop(daemon);
    ns.cleanup().await;
}

#[tokio::test]
async fn a_secret_created_for_a_blocked_component_is_picked_up_at_once() {
    let ns = TestNamespace::new("daemon-secret").await;
    let repo = stack_repo(ns.name());
    write_backend_with(
        &repo,
        "v0",
        "secretEnv:\n  - {name: API_KEY, secret: late-secret, key: api-key}\n",
    );
    let first = repo.commit("backend reads a Secret");
    let daemon = Daemon::start(repo.path(), &[]);
    wait_status(&ns, CONVERGED, |s| {
        applied_commit(s) == first && s["reason"] == "DependencyNotReady"
    })
    .await;
    // Let the back-off grow past anything the test waits for below.
    tokio::time::sleep(Duration::from_secs(8)).await;
    crate::support::create_secret(&ns, "late-secret", &["api-key"]).await;
    daemon.wait_log(
        &["reconcile started", "\"trigger\":\"secret\""],
        Duration::from_secs(5),
    );
    wait_status(&ns, Duration::from_secs(60), |s| s["ready"] == true).await;
    drop(daemon);
    ns.cleanup().await;
}

const CRASHLOOP: &str = "values:\n  podLabels: {converge.test/fail: crashloop}\n";
/// A crash loop fails the rollout this fast (not the 60 s deadline): a cheap failing commit.
const FAIL_FAST: [&str; 2] = ["--fail-fast", "3s"];

/// The note converge wrote on `commit`, as `git log --notes=converge` shows it.
fn note_of(repo: &GitRepo, commit: &str) -> String {
    repo.git(&["log", "-1", "--notes=converge", "--format=%N", commit])
}

/// Waits until the note on `commit` contains `part`.
fn wait_note(daemon: &Daemon, repo: &GitRepo, commit: &str, part: &str) -> String {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let note = note_of(repo, commit);
        if note.contains(part) {
            return note;
        }
        assert!(
            Instant::now() < deadline,
            "no `{part}` in the note on {commit}: {note:?}; log:\n{}",
            daemon.log()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Turns `onFailure: revert` on in the stack of [`stack_repo`] and commits.
fn opt_into_revert(repo: &GitRepo) -> String {
    let text = std::fs::read_to_string(repo.file("desired/stack.yaml")).unwrap();
    repo.write("desired/stack.yaml", format!("{text}onFailure: revert\n"));
    repo.commit("stack: revert commits that fail their health checks")
}

#[tokio::test]
async fn a_reconcile_notes_its_outcome_on_the_commit_and_a_drift_correction_does_not_rewrite_it() {
    let ns = TestNamespace::new("daemon-notes").await;
    let repo = stack_repo(ns.name());
    let first = repo.head();
    let daemon = Daemon::start(repo.path(), &[]);
    wait_status(&ns, CONVERGED, |s| {
        applied_commit(s) == first && s["ready"] == true
    })
    .await;
    let note = wait_note(
        &daemon,
        &repo,
        &first,
        "stack todo (desired): ReconciliationSucceeded",
    );
    assert!(
        note.contains("applied (") && note.contains("Deployment/todo-todo-chatbot-backend"),
        "{note}"
    );
    assert!(
        note.contains(&format!("namespace: {}", ns.name())),
        "{note}"
    );
    let notes_tip = repo.git(&["rev-parse", "refs/notes/converge"]);

    scale_and_expect_reverted(&daemon, &ns, Duration::from_secs(10)).await;
    daemon.wait_log(&["drift corrected"], Duration::from_secs(5));
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(
        repo.git(&["rev-parse", "refs/notes/converge"]),
        notes_tip,
        "a drift correction ending as the note says wrote it again"
    );

    write_backend(&repo, "v1");
    let second = repo.commit("backend v1");
    wait_note(&daemon, &repo, &second, "ReconciliationSucceeded");
    let history = repo.git(&["log", "--notes=converge", "--format=%h %s%n%N"]);
    assert_eq!(
        history
            .matches("stack todo (desired): ReconciliationSucceeded")
            .count(),
        2,
        "{history}"
    );
    drop(daemon);
    ns.cleanup().await;
}

#[tokio::test]
async fn a_notes_ref_that_cannot_be_written_is_logged_once_and_deploys_go_on() {
    let ns = TestNamespace::new("daemon-notes-ro").await;
    let repo = stack_repo(ns.name());
    let first = repo.head();
    // A directory where the notes ref would be: git cannot create the ref (as a read-only
    // checkout or a sandbox refuses it), whoever runs the test (root ignores file modes).
    repo.write(".git/refs/notes/converge/blocked", "");
    let daemon = Daemon::start(repo.path(), &[]);
    wait_status(&ns, CONVERGED, |s| {
        applied_commit(s) == first && s["ready"] == true
    })
    .await;
    write_backend(&repo, "v1");
    let second = repo.commit("backend v1");
    wait_status(&ns, CONVERGED, |s| {
        applied_commit(s) == second && s["ready"] == true
    })
    .await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    daemon.wait_log(&["cannot write the deploy note"], Duration::from_secs(1));
    assert_eq!(
        daemon.count_log(&["cannot write the deploy note"]),
        1,
        "{}",
        daemon.log()
    );
    assert_eq!(env_version(&backend(&ns).await), "v1");
    drop(daemon);
    ns.cleanup().await;
}

#[tokio::test]
async fn a_commit_failing_its_health_checks_with_on_failure_revert_is_reverted_once_and_the_revert_deploys(
) {
    let ns = TestNamespace::new("daemon-autorevert").await;
    let repo = stack_repo(ns.name());
    let first = opt_into_revert(&repo);
    let daemon = Daemon::start(repo.path(), &FAIL_FAST);
    wait_status(&ns, CONVERGED, |s| {
        applied_commit(s) == first && s["ready"] == true
    })
    .await;

    write_backend_with(&repo, "bad", CRASHLOOP);
    let bad = repo.commit("a backend that crash-loops");
    let committed = Instant::now();
    let s = wait_status(&ns, CONVERGED, |s| {
        s["autoRevert"]["failed"] == bad.as_str() && s["ready"] == true
    })
    .await;
    eprintln!(
        "auto-revert serving {:?} after the failing commit",
        committed.elapsed()
    );
    let revert = repo.head();
    assert_eq!(applied_commit(&s), revert, "{s:#}");
    assert_eq!(s["autoRevert"]["revert"], revert.as_str(), "{s:#}");
    assert!(
        s["message"]
            .as_str()
            .unwrap()
            .starts_with("auto-revert of "),
        "{s:#}"
    );
    assert_eq!(repo.git(&["rev-parse", "HEAD^"]), bad);
    let msg = repo.git(&["log", "-1", "--format=%an <%ae>%n%B"]);
    assert!(
        msg.starts_with("converge <converge@localhost>\nRevert \"a backend that crash-loops\""),
        "{msg}"
    );
    assert!(
        msg.contains(&format!("This reverts commit {bad}.")) && msg.contains("HealthCheckFailed"),
        "{msg}"
    );
    assert_eq!(
        repo.git(&["status", "--porcelain"]),
        "",
        "the checkout shows no inverse of the revert"
    );
    assert_eq!(env_version(&backend(&ns).await), "v0");
    let note = wait_note(
        &daemon,
        &repo,
        &bad,
        &format!("auto-revert: reverted by {revert}"),
    );
    assert!(note.contains("HealthCheckFailed at health"), "{note}");
    wait_note(&daemon, &repo, &revert, &format!("reverts: {bad}"));
    assert_eq!(daemon.count_log(&["auto-revert: committed"]), 1);
    drop(daemon);

    // Put the failed commit back as the tip and restart: the note says it was reverted once.
    repo.git(&["reset", "-q", "--hard", &bad]);
    let daemon = Daemon::start(repo.path(), &FAIL_FAST);
    wait_status(&ns, CONVERGED, |s| {
        applied_commit(s) == bad && s["reason"] == "HealthCheckFailed"
    })
    .await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(
        repo.head(),
        bad,
        "reverted a second time; log:\n{}",
        daemon.log()
    );
    assert_eq!(daemon.count_log(&["auto-revert: committed"]), 0);
    drop(daemon);
    ns.cleanup().await;
}

#[tokio::test]
async fn auto_revert_refuses_while_the_touched_paths_have_uncommitted_changes_then_reverts_once_they_are_gone(
) {
    let ns = TestNamespace::new("daemon-autorevert-dirty").await;
    let repo = stack_repo(ns.name());
    let first = opt_into_revert(&repo);
    let daemon = Daemon::start(repo.path(), &FAIL_FAST);
    wait_status(&ns, CONVERGED, |s| {
        applied_commit(s) == first && s["ready"] == true
    })
    .await;
    write_backend_with(&repo, "bad", CRASHLOOP);
    let bad = repo.commit("a backend that crash-loops");
    repo.write("desired/backend.yaml", "# a hand edit in progress\n");
    let line = daemon.wait_log(
        &[
            "auto-revert: not reverting",
            "uncommitted changes in desired/backend.yaml",
        ],
        CONVERGED,
    );
    assert!(line.contains("commit or stash them"), "{line}");
    assert_eq!(repo.head(), bad);
    wait_note(&daemon, &repo, &bad, "auto-revert: not reverted");
    assert_eq!(
        std::fs::read_to_string(repo.file("desired/backend.yaml")).unwrap(),
        "# a hand edit in progress\n"
    );

    // The fix the line names: put the edit away; the next failed retry reverts.
    repo.git(&["checkout", "--", "desired/backend.yaml"]);
    converge()
        .args(["sync", "--repo"])
        .arg(repo.path())
        .status()
        .unwrap();
    let s = wait_status(&ns, CONVERGED, |s| {
        s["autoRevert"]["failed"] == bad.as_str() && s["ready"] == true
    })
    .await;
    assert_eq!(applied_commit(&s), repo.head());
    assert_eq!(
        daemon.count_log(&["uncommitted changes in desired/backend.yaml"]),
        1
    );
    drop(daemon);
    ns.cleanup().await;
}

#[tokio::test]
async fn a_failing_commit_that_is_itself_a_revert_is_never_reverted() {
    let ns = TestNamespace::new("daemon-autorevert-revert").await;
    let repo = stack_repo(ns.name());
    opt_into_revert(&repo);
    write_backend_with(&repo, "bad", CRASHLOOP);
    repo.commit("a backend that crash-loops");
    write_backend(&repo, "fixed");
    repo.commit("fix the backend");
    repo.git(&["revert", "--no-edit", "HEAD"]);
    let revert_of_fix = repo.head();
    let daemon = Daemon::start(repo.path(), &FAIL_FAST);
    let line = daemon.wait_log(
        &["auto-revert: not reverting", "it is itself a revert"],
        CONVERGED,
    );
    assert!(line.contains("fix forward with a new commit"), "{line}");
    let s = status(&ns).await.unwrap();
    assert_eq!(applied_commit(&s), revert_of_fix, "{s:#}");
    assert_eq!(s["reason"], "HealthCheckFailed", "{s:#}");
    assert_eq!(repo.head(), revert_of_fix);
    wait_note(&daemon, &repo, &revert_of_fix, "auto-revert: not reverted");
    drop(daemon);
    ns.cleanup().await;
}

#[tokio::test]
async fn converge_apply_notes_its_outcome_on_the_commit_it_applied() {
    let ns = TestNamespace::new("apply-notes").await;
    let repo = stack_repo(ns.name());
    let first = repo.head();
    let out = converge()
        .args(["apply", "--repo"])
        .arg(repo.path())
        .args([
            "--context",
            &crate::support::current_context(),
            "--timeout",
            "60s",
        ])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let note = note_of(&repo, &first);
    assert!(
        note.starts_with("stack todo (desired): ReconciliationSucceeded"),
        "{note:?}"
    );
    assert!(
        note.contains("Deployment/todo-todo-chatbot-backend"),
        "{note}"
    );
    ns.cleanup().await;
}
