//! converge inside the cluster, end to end on the testbed, driven with `git push` only (issue 24).
//!
//! docs/in-cluster.md's `## On the testbed` block, run as written from a clone of this
//! repository, pushes the clone to the bed's git server, builds converge's image with converge
//! (BuildKit, pushed to the bed's registry) and installs `charts/converge` for the `dev` stack.
//! From then on the test only pushes commits: the in-cluster converge fetches them, BuildKit
//! builds what changed, the registry stores it, the real node pulls it and the todo-chatbot
//! answers. Then: the leader's Pod is deleted and the next push is applied by the other replica;
//! the registry is stopped and a build-needing push fails with a clear reason, deleting nothing,
//! and succeeds once it is back; a second installation for the same stack is refused by the
//! Lease. One test, in phases, because its first phase builds every image (minutes, cold).

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::{ConfigMap, Pod};
use kube::api::{Api, ListParams};
use serde_json::Value;

use crate::support::services::{self, registry_exclusive};
use crate::support::{client, kubectl, run_ok, testbed};

/// What desired/dev deploys (its `name:` and `namespace:`).
const STACK: &str = "todo-chatbot";
const NS: &str = "todo-chatbot";
/// Where the testbed block installs converge.
const CONVERGE_NS: &str = "converge";
/// The frontend's NodePort in charts/todo-chatbot/values-dev.yaml.
const NODE_PORT: u16 = 30080;
/// Building converge (release) and both app images cold, then the first rollout.
const FIRST: Duration = Duration::from_secs(2400);
const REBUILD: Duration = Duration::from_secs(600);
const ROLLOUT: Duration = Duration::from_secs(300);

/// The fenced `sh` block right under `## On the testbed` in docs/in-cluster.md.
fn testbed_block() -> String {
    let doc = std::fs::read_to_string(repo_root().join("docs/in-cluster.md"))
        .expect("docs/in-cluster.md");
    let (_, section) = doc
        .split_once("\n## On the testbed\n")
        .expect("docs/in-cluster.md has a `## On the testbed` section");
    let (_, rest) = section
        .split_once("```sh\n")
        .expect("`## On the testbed` has a fenced sh block");
    let (block, _) = rest.split_once("\n```").expect("the sh block is closed");
    block.to_string()
}

fn repo_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// `bash` in `dir` with exactly what a user of the bed has after `. /tmp/converge-testbed/env`.
fn bed_shell(script: &str, dir: &Path) -> Command {
    let bed = testbed();
    let mut cmd = Command::new("bash");
    cmd.args(["-euo", "pipefail", "-c", script])
        .current_dir(dir);
    for (k, v) in &bed.vars {
        cmd.env(k, v);
    }
    let path = std::env::var("PATH").unwrap_or_default();
    cmd.env("PATH", format!("{}:{path}", bed.bin_dir.display()));
    cmd.env_remove("NOTIFY_SOCKET");
    cmd
}

/// `git` in the clone, reaching the bed's git server with its key and known_hosts.
fn git(clone: &Path, args: &[&str]) -> String {
    run_ok(
        Command::new("git")
            .args(args)
            .current_dir(clone)
            .env("GIT_SSH_COMMAND", services::git_ssh_command()),
    )
}

/// Commits everything in the clone and pushes it to `bed`; returns the commit.
fn commit_and_push(clone: &Path, message: &str) -> (String, Instant) {
    git(clone, &["add", "-A"]);
    git(clone, &["commit", "-qm", message]);
    let commit = git(clone, &["rev-parse", "HEAD"]).trim().to_string();
    let pushed = Instant::now();
    git(clone, &["push", "-q", "bed", "HEAD:refs/heads/main"]);
    (commit, pushed)
}

/// The status converge recorded for the stack.
async fn status() -> Option<Value> {
    let cms: Api<ConfigMap> = Api::namespaced(client().await, NS);
    let cm = cms
        .get_opt(&format!("converge-{STACK}-status"))
        .await
        .ok()??;
    serde_json::from_str(cm.data?.get("status.json")?).ok()
}

/// converge's Pods, with their logs: what a person would read when a phase fails.
fn converge_pods_and_logs(ns: &str) -> String {
    let pods = kubectl()
        .args(["-n", ns, "get", "pods", "-o", "wide"])
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
        .unwrap_or_default();
    let logs = kubectl()
        .args([
            "-n",
            ns,
            "logs",
            "-l",
            "app.kubernetes.io/name=converge",
            "--tail=40",
            "--prefix",
            "--all-containers",
        ])
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
        .unwrap_or_default();
    format!("pods of {ns}:\n{pods}\nlogs:\n{logs}")
}

/// Waits until the recorded status satisfies `pred`; on timeout fails with the status, the app's
/// Pods and converge's logs.
async fn wait_status(timeout: Duration, what: &str, pred: impl Fn(&Value) -> bool) -> Value {
    let deadline = Instant::now() + timeout;
    loop {
        let s = status().await;
        if let Some(s) = s.as_ref().filter(|s| pred(s)) {
            return s.clone();
        }
        if Instant::now() >= deadline {
            let app = kubectl()
                .args(["-n", NS, "get", "pods", "-o", "wide"])
                .output()
                .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
                .unwrap_or_default();
            panic!(
                "{what}: not within {timeout:?}\nstatus: {s:#}\napp pods:\n{app}\n{}",
                converge_pods_and_logs(CONVERGE_NS),
                s = s.unwrap_or(Value::Null)
            );
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

fn ready_at(commit: &str) -> impl Fn(&Value) -> bool + '_ {
    move |s| s["ready"] == Value::Bool(true) && s["lastAppliedCommit"].as_str() == Some(commit)
}

/// Retries `GET http://<node ip>:30080<path>` until it answers 200 with `needle` in its body.
async fn wait_http(path: &str, needle: &str, timeout: Duration) -> String {
    let ip = testbed()
        .node_ip
        .clone()
        .expect("the bed names its node IP (CONVERGE_TESTBED_NODE_IP)");
    crate::support::wait_http(&format!("http://{ip}:{NODE_PORT}{path}"), needle, timeout).await
}

/// Who holds the stack's Lease.
async fn lease_holder() -> Option<String> {
    let leases: Api<Lease> = Api::namespaced(client().await, NS);
    leases
        .get_opt(&format!("converge-{STACK}"))
        .await
        .ok()??
        .spec?
        .holder_identity
        .filter(|h| !h.is_empty())
}

/// converge's Pods in `ns`, by name, with whether each is Ready.
async fn converge_pods(ns: &str) -> Vec<(String, bool)> {
    let pods: Api<Pod> = Api::namespaced(client().await, ns);
    let list = pods
        .list(&ListParams::default().labels("app.kubernetes.io/name=converge"))
        .await
        .expect("list converge's Pods");
    list.items
        .into_iter()
        .filter(|p| p.metadata.deletion_timestamp.is_none())
        .map(|p| {
            let ready = p
                .status
                .as_ref()
                .and_then(|s| s.conditions.as_ref())
                .and_then(|c| c.iter().find(|c| c.type_ == "Ready"))
                .is_some_and(|c| c.status == "True");
            (p.metadata.name.unwrap_or_default(), ready)
        })
        .collect()
}

/// The image the component's Deployment runs.
async fn deployment_image(component: &str) -> String {
    let deps: Api<Deployment> = Api::namespaced(client().await, NS);
    let d = deps
        .get(&format!("todo-chatbot-{component}"))
        .await
        .expect("the Deployment");
    d.spec
        .and_then(|s| s.template.spec)
        .and_then(|s| s.containers.first().and_then(|c| c.image.clone()))
        .unwrap_or_default()
}

/// The names of the stack's Deployments, StatefulSets, Services and PVCs: what must survive a
/// failed commit.
fn stack_objects() -> Vec<String> {
    let out = run_ok(kubectl().args([
        "-n",
        NS,
        "get",
        "deployments,statefulsets,services,persistentvolumeclaims",
        "-o",
        "name",
    ]));
    let mut v: Vec<String> = out.lines().map(str::to_string).collect();
    v.sort();
    v
}

/// Removes what the test installed, even when it fails.
struct Cleanup;

impl Drop for Cleanup {
    fn drop(&mut self) {
        for (release, ns) in [("converge-b", "converge-b"), ("converge", CONVERGE_NS)] {
            let _ = crate::support::helm()
                .args([
                    "uninstall",
                    release,
                    "-n",
                    ns,
                    "--wait",
                    "--timeout",
                    "120s",
                ])
                .output();
        }
        for ns in ["converge-b", CONVERGE_NS, NS] {
            let _ = kubectl()
                .args(["delete", "namespace", ns, "--wait=false"])
                .output();
        }
        if !services::registry_running() {
            services::registry_start();
        }
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn in_cluster_converge_follows_pushes_builds_through_the_registry_fails_over_and_refuses_a_second_installation(
) {
    let bed = testbed();
    bed.real_node
        .as_ref()
        .expect("the testbed has no real node: tests/testbed/down && tests/testbed/up");
    // The registry is stopped in one phase: no other test may use it meanwhile.
    let _registry = registry_exclusive();
    let t0 = Instant::now();

    // A clone of this repository, as the docs say, on a git server that has not seen it.
    let tmp = tempfile::tempdir().expect("tempdir");
    let clone = tmp.path().join("converge");
    run_ok(Command::new("git").args([
        "clone",
        "-q",
        &repo_root().display().to_string(),
        &clone.display().to_string(),
    ]));
    git(&clone, &["config", "user.email", "test@converge.invalid"]);
    git(&clone, &["config", "user.name", "in-cluster test"]);
    let _ = std::fs::remove_dir_all(bed.dir.join("git/repos/converge.git"));
    let _cleanup = Cleanup;
    for ns in [CONVERGE_NS, NS, "converge-b"] {
        let _ = kubectl()
            .args(["delete", "namespace", ns, "--wait=true", "--timeout=180s"])
            .output();
    }
    // 1. docs/in-cluster.md's testbed block, as written.
    let block = testbed_block();
    let out = bed_shell(&block, &clone)
        .output()
        .expect("run the testbed block");
    assert!(
        out.status.success(),
        "docs/in-cluster.md's `## On the testbed` block failed ({}):\n{block}\nstdout:\n{}\nstderr:\n{}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr),
        converge_pods_and_logs(CONVERGE_NS)
    );
    let pods = converge_pods(CONVERGE_NS).await;
    assert_eq!(
        pods.iter().filter(|(_, r)| *r).count(),
        2,
        "two Ready converge Pods (leader and standby): {pods:?}\n{}",
        converge_pods_and_logs(CONVERGE_NS)
    );
    let head = git(&clone, &["rev-parse", "HEAD"]).trim().to_string();
    wait_status(
        FIRST,
        "the pushed clone deployed and Ready",
        ready_at(&head),
    )
    .await;
    wait_http("/", "<", ROLLOUT).await;
    let backend = deployment_image("backend").await;
    assert!(
        backend.starts_with(&format!("{}/", services::registry())),
        "the backend runs the image pushed to the bed's registry: {backend}"
    );
    eprintln!("[in-cluster] installed and serving in {:?}", t0.elapsed());

    // 2. A push without a build: replicas.
    let backend_yaml = clone.join("desired/dev/backend.yaml");
    let text = std::fs::read_to_string(&backend_yaml).expect("backend.yaml");
    std::fs::write(&backend_yaml, text.replace("replicas: 2", "replicas: 1"))
        .expect("write backend.yaml");
    let (c1, pushed) = commit_and_push(&clone, "backend: one replica");
    wait_status(ROLLOUT, "a replicas push applied", ready_at(&c1)).await;
    wait_http("/", "<", ROLLOUT).await;
    eprintln!(
        "[in-cluster] push (no build) -> Ready and serving in {:?}",
        pushed.elapsed()
    );
    assert_eq!(
        deployment_image("backend").await,
        backend,
        "no rebuild for a replicas change"
    );

    // 3. A push that rebuilds the backend.
    let marker = clone.join("apps/backend/app/in_cluster_marker.py");
    std::fs::write(&marker, "# pushed by the in-cluster test\n").expect("write marker");
    let (c2, pushed) = commit_and_push(&clone, "backend: a change that rebuilds it");
    wait_status(REBUILD, "a build-needing push applied", ready_at(&c2)).await;
    wait_http("/", "<", ROLLOUT).await;
    let rebuilt = deployment_image("backend").await;
    assert_ne!(rebuilt, backend, "the backend was rebuilt and pushed");
    assert!(rebuilt.starts_with(&format!("{}/", services::registry())));
    eprintln!(
        "[in-cluster] push (backend build) -> Ready and serving in {:?}",
        pushed.elapsed()
    );

    // 4. Failover: the leader's Pod is deleted; the other replica applies the next push.
    let leader = lease_holder()
        .await
        .expect("the stack's Lease has a holder");
    let pods = converge_pods(CONVERGE_NS).await;
    assert!(
        pods.iter().any(|(p, _)| leader.contains(p.as_str())),
        "the Lease's holder names a converge Pod: {leader} vs {pods:?}"
    );
    let leader_pod = pods
        .iter()
        .map(|(p, _)| p.clone())
        .find(|p| leader.contains(p.as_str()))
        .unwrap_or_default();
    let deleted = Instant::now();
    run_ok(kubectl().args([
        "-n",
        CONVERGE_NS,
        "delete",
        "pod",
        &leader_pod,
        "--wait=false",
    ]));
    let new_leader = loop {
        if let Some(h) = lease_holder().await.filter(|h| !h.contains(&leader_pod)) {
            break h;
        }
        assert!(
            deleted.elapsed() < Duration::from_secs(60),
            "no other replica took the Lease within 60 s of the leader's Pod being deleted\n{}",
            converge_pods_and_logs(CONVERGE_NS)
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    eprintln!(
        "[in-cluster] leader Pod deleted -> Lease held by {new_leader} in {:?}",
        deleted.elapsed()
    );
    std::fs::write(&backend_yaml, &text).expect("write backend.yaml");
    let (c3, pushed) = commit_and_push(&clone, "backend: two replicas again");
    wait_status(ROLLOUT, "the push after a failover applied", ready_at(&c3)).await;
    assert_eq!(
        lease_holder().await.as_deref(),
        Some(new_leader.as_str()),
        "the replica that took over applied it"
    );
    eprintln!(
        "[in-cluster] push after failover -> Ready in {:?}",
        pushed.elapsed()
    );

    // 5. The registry down: a build-needing push fails with a clear reason, deleting nothing;
    // once it is back, the same commit succeeds.
    let before = stack_objects();
    services::registry_stop();
    std::fs::write(&marker, "# pushed by the in-cluster test, twice\n").expect("write marker");
    let (c4, _) = commit_and_push(&clone, "backend: a change built while the registry is down");
    let failed = wait_status(REBUILD, "the registry-down failure recorded", |s| {
        s["lastAppliedCommit"].as_str() == Some(c4.as_str()) && s["ready"] == Value::Bool(false)
    })
    .await;
    let said = failed.to_string();
    assert!(
        said.contains(services::registry()),
        "the failure names the registry's address: {failed:#}"
    );
    assert_eq!(
        failed["reason"], "BuildFailed",
        "a failed build is the reason: {failed:#}"
    );
    assert_eq!(stack_objects(), before, "nothing was deleted or added");
    wait_http("/", "<", ROLLOUT).await;
    services::registry_start();
    let back = Instant::now();
    wait_status(
        REBUILD,
        "the same commit applied once the registry is back",
        ready_at(&c4),
    )
    .await;
    eprintln!(
        "[in-cluster] registry back -> the held commit applied in {:?} (the daemon's back-off)",
        back.elapsed()
    );

    // 6. A second installation for the same stack is refused by the Lease.
    let holder = lease_holder().await;
    let values = run_ok(crate::support::helm().args([
        "get",
        "values",
        "converge",
        "-n",
        CONVERGE_NS,
        "-o",
        "yaml",
    ]));
    let values_file = tmp.path().join("values-b.yaml");
    std::fs::write(&values_file, values).expect("write values");
    // The same Secrets, made by the block's own lines in the second installation's namespace.
    let secrets: Vec<&str> = block
        .lines()
        .filter(|l| l.starts_with("kubectl -n converge create secret"))
        .collect();
    assert!(
        !secrets.is_empty(),
        "the block creates converge's Secrets: {block}"
    );
    let script = format!(
        "kubectl create namespace converge-b\n{}",
        secrets
            .join("\n")
            .replace("kubectl -n converge ", "kubectl -n converge-b ")
    );
    let out = bed_shell(&script, &clone).output().expect("run bash");
    assert!(
        out.status.success(),
        "{script}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    run_ok(crate::support::helm().args([
        "install",
        "converge-b",
        &repo_root().join("charts/converge").display().to_string(),
        "-n",
        "converge-b",
        "-f",
        &values_file.display().to_string(),
    ]));
    let refused_since = Instant::now();
    let refused = loop {
        let logs = kubectl()
            .args([
                "-n",
                "converge-b",
                "logs",
                "-l",
                "app.kubernetes.io/name=converge",
                "--tail=200",
            ])
            .output()
            .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
            .unwrap_or_default();
        if let Some(line) = logs.lines().find(|l| l.contains("refused")) {
            break line.to_string();
        }
        assert!(
            refused_since.elapsed() < ROLLOUT,
            "the second installation never said it was refused\n{}",
            converge_pods_and_logs("converge-b")
        );
        tokio::time::sleep(Duration::from_secs(1)).await;
    };
    assert!(
        refused.contains(STACK),
        "the refusal names the stack: {refused}"
    );
    tokio::time::sleep(Duration::from_secs(10)).await;
    let b = converge_pods("converge-b").await;
    assert!(
        !b.is_empty() && b.iter().all(|(_, ready)| !ready),
        "the second installation's Pods are not Ready: {b:?}"
    );
    assert_eq!(
        lease_holder().await,
        holder,
        "the Lease did not change hands"
    );
    eprintln!("[in-cluster] second installation refused: {refused}");
    eprintln!("[in-cluster] all phases in {:?}", t0.elapsed());
}
