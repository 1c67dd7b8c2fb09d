//! The product's promise, on the testbed's real node (kubelet, containerd, CNI, kube-proxy,
//! CoreDNS, host-path volumes): the todo-chatbot committed in git is built by converge's own
//! builder from `apps/`, loaded into the node's runtime, rendered from the shipped chart and
//! `desired/dev`, and then really runs — readiness through the app's own probes, the migration
//! hook against the real PostgreSQL, the UI driven in headless Chromium through the frontend's
//! NodePort, data kept on the claim across a Pod deletion, a rebuild of exactly the image whose
//! inputs changed, `git revert` with zero builds, drift undone, a crashing commit failing fast with
//! the app's own log, and `converge down` keeping the data.
//!
//! Driven only through git commits and converge (the daemon for the main path), the way a user
//! does. One test, in phases, because its first phase builds both images (minutes, cold).

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{ConfigMap, PersistentVolumeClaim, Pod, Service};
use kube::api::{Api, DeleteParams, ListParams};
use serde_json::Value;

use crate::support::git::{copy_tracked, GitRepo};
use crate::support::{client, kubectl, run_ok, testbed, unique_name};

const STACK: &str = "todo-chatbot";
const RELEASE: &str = "todo-chatbot";
/// First converge of an empty namespace: two cold image builds (pip, npm, next build) on a
/// 2-core machine, then the rollout. Generous; a warm run takes well under a minute.
const FIRST_CONVERGE: Duration = Duration::from_secs(1500);
/// A commit whose only rebuild is the backend's last layers, then a rolling update.
const REBUILD: Duration = Duration::from_secs(600);
const ROLLOUT: Duration = Duration::from_secs(240);

/// The real node's name, or a failure saying how to get one: this test must run in CI.
fn real_node() -> String {
    testbed()
        .vars
        .get("CONVERGE_TESTBED_REAL_NODE")
        .cloned()
        .unwrap_or_else(|| {
            panic!("the testbed has no real node (CONVERGE_TESTBED_REAL_NODE missing from its env file): restart it with tests/testbed/down && tests/testbed/up")
        })
}

/// `converge` aimed at the bed, with the environment a user of the bed has after sourcing its
/// env file (DOCKER_HOST for the build engine, CONTAINERD_ADDRESS for the node's runtime).
fn converge() -> Command {
    let bed = testbed();
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_converge"));
    let helm_home = bed.dir.join("helm");
    cmd.env("KUBECONFIG", &bed.kubeconfig)
        .env("CONVERGE_HELM", &bed.helm)
        .env("HELM_CACHE_HOME", helm_home.join("cache"))
        .env("HELM_CONFIG_HOME", helm_home.join("config"))
        .env("HELM_DATA_HOME", helm_home.join("data"))
        .env_remove("CONVERGE_LOG")
        .env_remove("CONVERGE_CONTEXT")
        .env_remove("NOTIFY_SOCKET");
    for k in [
        "DOCKER_HOST",
        "DOCKER_BUILDKIT",
        "CONTAINERD_ADDRESS",
        "CONTAINERD_NAMESPACE",
        "CONTAINERD_SNAPSHOTTER",
    ] {
        match bed.vars.get(k) {
            Some(v) => cmd.env(k, v),
            None => cmd.env_remove(k),
        };
    }
    cmd
}

fn context() -> String {
    crate::support::current_context()
}

/// A running `converge run`; its stderr (JSON log lines) collected; killed when dropped.
struct Daemon {
    child: Child,
    lines: Arc<Mutex<Vec<String>>>,
}

impl Daemon {
    fn start(repo: &Path) -> Daemon {
        let mut cmd = converge();
        cmd.args(["run", "--repo"])
            .arg(repo)
            .args(["--stack", "dev", "--context", &context()])
            .args(["--log-format", "json", "--log", "info"])
            .args(["--resync", "1h"])
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        let mut child = cmd.spawn().expect("spawn converge run");
        let lines = Arc::new(Mutex::new(Vec::new()));
        let stderr = child.stderr.take().expect("piped stderr");
        let sink = lines.clone();
        std::thread::spawn(move || {
            use std::io::BufRead;
            for line in std::io::BufReader::new(stderr)
                .lines()
                .map_while(Result::ok)
            {
                sink.lock().expect("log sink").push(line);
            }
        });
        Daemon { child, lines }
    }

    fn log(&self) -> String {
        self.lines.lock().expect("log sink").join("\n")
    }

    /// Log lines from index `from` on that contain every one of `parts`.
    fn lines_with(&self, from: usize, parts: &[&str]) -> Vec<String> {
        self.lines.lock().expect("log sink")[from..]
            .iter()
            .filter(|l| parts.iter().all(|p| l.contains(p)))
            .cloned()
            .collect()
    }

    fn mark(&self) -> usize {
        self.lines.lock().expect("log sink").len()
    }

    fn stop(mut self) {
        let _ = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status();
        let deadline = Instant::now() + Duration::from_secs(30);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The status converge recorded for the stack in `ns`.
async fn status(ns: &str) -> Option<Value> {
    let cms: Api<ConfigMap> = Api::namespaced(client().await, ns);
    let cm = cms
        .get_opt(&format!("converge-{STACK}-status"))
        .await
        .ok()??;
    serde_json::from_str(cm.data?.get("status.json")?).ok()
}

/// Waits until the recorded status satisfies `pred`; on timeout fails with the status, the
/// Pods and the daemon's log, which is what a person would read.
async fn wait_status(
    ns: &str,
    daemon: Option<&Daemon>,
    timeout: Duration,
    what: &str,
    pred: impl Fn(&Value) -> bool,
) -> Value {
    let deadline = Instant::now() + timeout;
    loop {
        let s = status(ns).await;
        if let Some(s) = s.as_ref().filter(|s| pred(s)) {
            return s.clone();
        }
        if Instant::now() >= deadline {
            let pods = kubectl()
                .args(["get", "pods", "-o", "wide", "-n", ns])
                .output()
                .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
                .unwrap_or_default();
            let log = daemon.map(Daemon::log).unwrap_or_default();
            let tail: Vec<&str> = log.lines().rev().take(60).collect();
            panic!(
                "{what}: not within {timeout:?}\nstatus: {s:#}\npods:\n{pods}\ndaemon log (newest first):\n{}",
                tail.join("\n"),
                s = s.unwrap_or(Value::Null)
            );
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

fn ready_at(commit: &str) -> impl Fn(&Value) -> bool + '_ {
    move |s| s["ready"] == Value::Bool(true) && s["lastAppliedCommit"].as_str() == Some(commit)
}

/// The repository a user would have: the shipped apps, chart and `desired/dev`, with the stack in
/// a namespace of this test's own and the NodePort left to the apiserver (30080 may be taken by
/// a demo on the same bed). Nothing else differs from what is shipped.
fn user_repo(ns: &str) -> GitRepo {
    let repo = GitRepo::new();
    for dir in [
        "apps/backend",
        "apps/frontend",
        "charts/todo-chatbot",
        "desired/dev",
    ] {
        copy_tracked(&repo, dir, dir);
    }
    let stack_file = repo.file("desired/dev/stack.yaml");
    let stack = std::fs::read_to_string(&stack_file).expect("desired/dev/stack.yaml");
    let stack = stack.replace("namespace: todo-chatbot", &format!("namespace: {ns}"));
    assert!(stack.contains(&format!("namespace: {ns}")), "{stack}");
    repo.write(
        "desired/dev/stack.yaml",
        format!("{stack}values:\n  frontend:\n    service:\n      nodePort: null\n"),
    );
    repo.commit("the todo-chatbot stack");
    repo
}

/// The namespace, unannotated so its Pods land on the real node, with the stack's Secret: real
/// values a user would create by hand (never in git).
fn create_namespace_and_secret(ns: &str) {
    run_ok(kubectl().args(["create", "namespace", ns]));
    run_ok(kubectl().args(["label", "namespace", ns, "converge.test/namespace=true"]));
    let pw = unique_name("pw").replace('-', "");
    run_ok(kubectl().args([
        "-n",
        ns,
        "create",
        "secret",
        "generic",
        "todo-chatbot-secrets",
        &format!("--from-literal=postgres-password={pw}"),
        &format!(
            "--from-literal=database-url=postgresql+psycopg://todo:{pw}@{RELEASE}-postgres:5432/todo"
        ),
        &format!("--from-literal=jwt-secret={}", unique_name("jwt")),
    ]));
}

/// Every Pod of the namespace (hook Pods that finished aside) Running and Ready on `node`.
async fn assert_all_pods_ready_on(ns: &str, node: &str) -> Vec<Pod> {
    let pods: Api<Pod> = Api::namespaced(client().await, ns);
    let list = pods.list(&ListParams::default()).await.expect("list pods");
    let running: Vec<Pod> = list
        .items
        .into_iter()
        .filter(|p| {
            let phase = p.status.as_ref().and_then(|s| s.phase.as_deref());
            phase != Some("Succeeded")
        })
        .collect();
    assert!(
        running.len() >= 5,
        "expected postgres, 2 backend and 2 frontend Pods: {running:#?}"
    );
    for p in &running {
        let name = p.metadata.name.clone().unwrap_or_default();
        let spec = p.spec.as_ref().expect("pod spec");
        assert_eq!(
            spec.node_name.as_deref(),
            Some(node),
            "{name} is not on the real node"
        );
        let st = p.status.as_ref().expect("pod status");
        assert_eq!(st.phase.as_deref(), Some("Running"), "{name}: {st:#?}");
        let ready = st
            .conditions
            .as_ref()
            .and_then(|c| c.iter().find(|c| c.type_ == "Ready"))
            .map(|c| c.status == "True");
        assert_eq!(ready, Some(true), "{name} is not Ready: {st:#?}");
    }
    running
}

/// The frontend Service's NodePort.
async fn node_port(ns: &str) -> u16 {
    let svcs: Api<Service> = Api::namespaced(client().await, ns);
    let svc = svcs
        .get(&format!("{RELEASE}-frontend"))
        .await
        .expect("frontend Service");
    let spec = svc.spec.expect("service spec");
    assert_eq!(spec.type_.as_deref(), Some("NodePort"));
    spec.ports
        .unwrap_or_default()
        .iter()
        .find_map(|p| p.node_port)
        .and_then(|p| u16::try_from(p).ok())
        .expect("a node port")
}

/// Retries `GET http://127.0.0.1:<port><path>` until it answers 200 with a body containing
/// `needle`.
async fn wait_http(port: u16, path: &str, needle: &str, timeout: Duration) -> String {
    crate::support::wait_http(&format!("http://127.0.0.1:{port}{path}"), needle, timeout).await
}

/// The frontend's own end-to-end test (headless Chromium, playwright-core) against the NodePort:
/// add a task, complete it, ask the chat agent to add one, see both listed.
fn drive_the_ui(port: u16) {
    let frontend = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("apps/frontend");
    assert!(
        frontend.join("node_modules/playwright-core").exists(),
        "apps/frontend/node_modules is missing: run apps/test (or `npm ci` in apps/frontend) first; .ci/run does"
    );
    let out = Command::new("node")
        .args(["--test", "test/e2e/"])
        .current_dir(&frontend)
        .env("FRONTEND_URL", format!("http://127.0.0.1:{port}"))
        .output()
        .expect("run node --test");
    assert!(
        out.status.success(),
        "the UI test failed against the real node:\n{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

async fn deployment_image(ns: &str, component: &str) -> String {
    let d: Api<Deployment> = Api::namespaced(client().await, ns);
    let d = d
        .get(&format!("{RELEASE}-{component}"))
        .await
        .expect("deployment");
    d.spec
        .and_then(|s| s.template.spec)
        .and_then(|s| s.containers.first().and_then(|c| c.image.clone()))
        .unwrap_or_default()
}

async fn wait_replicas(ns: &str, component: &str, want: i32, timeout: Duration) {
    let api: Api<Deployment> = Api::namespaced(client().await, ns);
    let deadline = Instant::now() + timeout;
    loop {
        let d = api
            .get(&format!("{RELEASE}-{component}"))
            .await
            .expect("deployment");
        if d.spec.as_ref().and_then(|s| s.replicas) == Some(want) {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{component} replicas not {want} within {timeout:?}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Deletes the test's namespace however the test ends: a failed run must not leave a stack
/// holding the real node's CPU for the next one.
struct DropNamespace(String);

impl Drop for DropNamespace {
    fn drop(&mut self) {
        let _ = kubectl()
            .args([
                "delete",
                "namespace",
                &self.0,
                "--wait=false",
                "--ignore-not-found",
            ])
            .output();
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn the_todo_chatbot_built_from_commits_runs_serves_and_keeps_its_data_on_the_real_node() {
    let node = real_node();
    let ns = unique_name("todo-real");
    create_namespace_and_secret(&ns);
    let _cleanup = DropNamespace(ns.clone());
    let repo = user_repo(&ns);
    let first = repo.head();

    // 1. A commit → both images built by converge's builder and loaded into the node's
    //    containerd, the chart applied, every Pod Ready through the app's own probes.
    let t = Instant::now();
    let daemon = Daemon::start(repo.path());
    let s = wait_status(
        &ns,
        Some(&daemon),
        FIRST_CONVERGE,
        "first converge",
        ready_at(&first),
    )
    .await;
    eprintln!(
        "[realnode] empty namespace → every Pod Ready in {:?} (image builds included)",
        t.elapsed()
    );
    assert_eq!(s["reason"], "ReconciliationSucceeded", "{s:#}");
    // converge delivered both images: built now, loaded from the engine's kept layers, or already
    // in this node's runtime (a bed reused across runs). The Pods run them with pullPolicy Never
    // under their content tags, so Ready below proves the node has exactly those images.
    for failure in ["image build failed", "image load failed"] {
        assert!(
            daemon.lines_with(0, &[failure]).is_empty(),
            "{failure}:\n{}",
            daemon.log()
        );
    }
    for c in ["backend", "frontend"] {
        let image = deployment_image(&ns, c).await;
        let tag = image.rsplit_once(':').map(|(_, t)| t).unwrap_or("");
        assert!(
            image.starts_with(&format!("todo-{c}:"))
                && tag.len() == 12
                && tag.chars().all(|ch| ch.is_ascii_hexdigit()),
            "{c} runs {image}, not a content tag"
        );
    }
    assert_all_pods_ready_on(&ns, &node).await;
    // The migration hook (a Job running the backend image's `python -m app.migrate`) ran to
    // completion against the real PostgreSQL.
    assert!(
        !daemon
            .lines_with(0, &["hook succeeded", "migrations"])
            .is_empty(),
        "the migration hook did not succeed:\n{}",
        daemon.log()
    );

    // 2. The frontend answers on its NodePort from the host; the UI works in Chromium.
    let port = node_port(&ns).await;
    wait_http(port, "/api/health", "", Duration::from_secs(60)).await;
    drive_the_ui(port);
    wait_http(port, "/api/tasks", "walk the dog", Duration::from_secs(30)).await;

    // 3. The database Pod deleted by hand comes back, and the tasks are still there.
    let pods: Api<Pod> = Api::namespaced(client().await, &ns);
    let pg = format!("{RELEASE}-postgres-0");
    let old_uid = pods.get(&pg).await.expect("postgres pod").metadata.uid;
    pods.delete(&pg, &DeleteParams::default())
        .await
        .expect("delete the postgres pod");
    let deadline = Instant::now() + ROLLOUT;
    loop {
        if let Ok(p) = pods.get(&pg).await {
            let ready = p
                .status
                .as_ref()
                .and_then(|s| s.conditions.as_ref())
                .is_some_and(|c| c.iter().any(|c| c.type_ == "Ready" && c.status == "True"));
            if p.metadata.uid != old_uid && ready {
                break;
            }
        }
        assert!(
            Instant::now() < deadline,
            "postgres did not come back within {ROLLOUT:?}"
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    wait_http(port, "/api/tasks", "walk the dog", Duration::from_secs(90)).await;

    // 4. A commit under apps/backend → only the backend image is rebuilt; the app still serves.
    let frontend_image = deployment_image(&ns, "frontend").await;
    let backend_before = deployment_image(&ns, "backend").await;
    let mark = daemon.mark();
    // Unique per run, so the tag is new even when the bed's engine kept earlier runs' layers.
    repo.write(
        "apps/backend/app/build_note.py",
        format!(
            "\"\"\"Changed by the real-node test ({}): a new input to the backend image only.\"\"\"\n",
            unique_name("run")
        ),
    );
    let t = Instant::now();
    let changed = repo.commit("backend: a new module");
    wait_status(
        &ns,
        Some(&daemon),
        REBUILD,
        "backend rebuild",
        ready_at(&changed),
    )
    .await;
    eprintln!(
        "[realnode] commit under apps/backend → serving the new backend in {:?} (build included)",
        t.elapsed()
    );
    let rebuilt = daemon.lines_with(mark, &["image built"]);
    assert_eq!(
        rebuilt.len(),
        1,
        "exactly one image is rebuilt: {rebuilt:#?}"
    );
    assert!(rebuilt[0].contains("backend"), "{rebuilt:#?}");
    let backend_after = deployment_image(&ns, "backend").await;
    assert_ne!(backend_after, backend_before);
    assert_eq!(deployment_image(&ns, "frontend").await, frontend_image);
    assert_all_pods_ready_on(&ns, &node).await;
    wait_http(port, "/api/tasks", "walk the dog", Duration::from_secs(60)).await;

    // 5. git revert → the previous tag is back, with zero builds.
    let mark = daemon.mark();
    repo.git(&["revert", "--no-edit", "HEAD"]);
    let t = Instant::now();
    let reverted = repo.head();
    wait_status(&ns, Some(&daemon), ROLLOUT, "revert", ready_at(&reverted)).await;
    eprintln!(
        "[realnode] git revert → serving the previous backend in {:?} (no build)",
        t.elapsed()
    );
    assert!(
        daemon.lines_with(mark, &["building image"]).is_empty(),
        "a revert must not build:\n{}",
        daemon.log()
    );
    assert_eq!(deployment_image(&ns, "backend").await, backend_before);
    wait_http(port, "/api/health", "", Duration::from_secs(60)).await;

    // 6. Drift by hand is undone: a scale and a deleted Service.
    run_ok(kubectl().args([
        "-n",
        &ns,
        "scale",
        &format!("deployment/{RELEASE}-frontend"),
        "--replicas=1",
    ]));
    wait_replicas(&ns, "frontend", 2, Duration::from_secs(60)).await;
    run_ok(kubectl().args([
        "-n",
        &ns,
        "delete",
        "service",
        &format!("{RELEASE}-backend"),
    ]));
    let svcs: Api<Service> = Api::namespaced(client().await, &ns);
    let deadline = Instant::now() + Duration::from_secs(60);
    while svcs
        .get_opt(&format!("{RELEASE}-backend"))
        .await
        .ok()
        .flatten()
        .is_none()
    {
        assert!(
            Instant::now() < deadline,
            "the deleted backend Service was not re-created"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    // The re-created Service has a new ClusterIP; the frontend reaches it once DNS (CoreDNS
    // caches answers for 30 s) and kube-proxy have caught up. In 2 of 4 CI runs that took over
    // 60 s (answering 404) under the suite's load: the wait is 180 s and prints how long it took.
    let t = Instant::now();
    wait_http(port, "/api/tasks", "walk the dog", Duration::from_secs(180)).await;
    eprintln!(
        "[realnode] backend Service deleted by hand → re-created and the app answering in {:?}",
        t.elapsed()
    );

    // 7. A commit with a crashing backend fails fast with the app's own words, and
    //    `converge explain backend` says why; the running version keeps serving.
    repo.write(
        "apps/backend/app/__main__.py",
        "import sys\nprint(\"converge-test: backend refuses to start\", file=sys.stderr, flush=True)\nsys.exit(3)\n",
    );
    let crashing = repo.commit("backend: crash on start");
    // A run cut short at its health wait (drift, the record watch) is recorded as Progressing
    // and resumed; what counts is the verdict with the app's reason.
    wait_status(&ns, Some(&daemon), REBUILD, "crash reported", |s| {
        s["lastAppliedCommit"].as_str() == Some(crashing.as_str())
            && s["ready"] == Value::Bool(false)
            && s.to_string().contains("CrashLoopBackOff")
    })
    .await;
    let out = converge()
        .args(["explain", "backend", "--repo"])
        .arg(repo.path())
        .args(["--stack", "dev", "--context", &context()])
        .output()
        .expect("run converge explain");
    let explained = String::from_utf8_lossy(&out.stdout);
    assert!(
        explained.contains("converge-test: backend refuses to start"),
        "explain shows the app's own log tail:\n{explained}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    wait_http(port, "/api/tasks", "walk the dog", Duration::from_secs(30)).await;
    repo.git(&["revert", "--no-edit", "HEAD"]);
    let healed = repo.head();
    wait_status(
        &ns,
        Some(&daemon),
        ROLLOUT,
        "revert of the crash",
        ready_at(&healed),
    )
    .await;

    // 8. `converge down` keeps the claim; applying again finds the old tasks.
    daemon.stop();
    let down = converge()
        .args(["down", "--repo"])
        .arg(repo.path())
        .args(["--stack", "dev", "--context", &context()])
        .output()
        .expect("run converge down");
    assert!(
        down.status.success(),
        "{}",
        String::from_utf8_lossy(&down.stderr)
    );
    let claims: Api<PersistentVolumeClaim> = Api::namespaced(client().await, &ns);
    assert_eq!(
        claims
            .list(&ListParams::default())
            .await
            .expect("list claims")
            .items
            .len(),
        1,
        "down keeps the database claim"
    );
    let apply = converge()
        .args(["apply", "--repo"])
        .arg(repo.path())
        .args(["--stack", "dev", "--context", &context()])
        .output()
        .expect("run converge apply");
    assert!(
        apply.status.success(),
        "{}\n{}",
        String::from_utf8_lossy(&apply.stdout),
        String::from_utf8_lossy(&apply.stderr)
    );
    let port = node_port(&ns).await;
    wait_http(port, "/api/tasks", "walk the dog", Duration::from_secs(120)).await;

    // Clean up: everything, volumes included, then the namespace.
    let _ = converge()
        .args(["down", "--repo"])
        .arg(repo.path())
        .args(["--stack", "dev", "--context", &context(), "--volumes"])
        .output();
}
