//! Hostile and mistaken input, and a hostile environment: alias bombs, deep nesting, credentials
//! written as plain values, YAML merge keys, readers that close the pipe, a status record that
//! does not parse. Through the real binary and real git commits; the testbed where a cluster is
//! involved.

use std::os::unix::net::UnixStream;
use std::os::unix::process::ExitStatusExt;
use std::process::{Command, ExitStatus, Output, Stdio};
use std::time::{Duration, Instant};

use converge::desired;
use converge::reconcile::{self, Clusters, Options, StackReport};
use converge::render::Helm;
use converge::source::Repo;
use k8s_openapi::api::core::v1::ConfigMap;
use kube::api::{Patch, PatchParams};

use crate::support::git::{copy_project_dir, write_minimal_stack, GitRepo};
use crate::support::{testbed, TestNamespace};

/// `converge` with the bed's kubeconfig and helm, no colour.
fn converge() -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_converge"));
    cmd.env("NO_COLOR", "1").env_remove("CONVERGE_LOG");
    cmd
}

fn on_bed(mut cmd: Command) -> Command {
    let bed = testbed();
    let home = bed.dir.join("helm");
    cmd.env("KUBECONFIG", &bed.kubeconfig)
        .env("CONVERGE_HELM", &bed.helm)
        .env("HELM_CACHE_HOME", home.join("cache"))
        .env("HELM_CONFIG_HOME", home.join("config"))
        .env("HELM_DATA_HOME", home.join("data"));
    cmd
}

/// Runs `cmd` under a 2 GB address-space limit, so input that makes converge allocate without
/// bound fails fast instead of taking the machine's memory.
fn run_bounded(cmd: &Command) -> (Output, String) {
    let mut sh = Command::new("bash");
    sh.arg("-c")
        .arg("ulimit -v 2000000; exec \"$@\"")
        .arg("bounded")
        .arg(cmd.get_program())
        .args(cmd.get_args())
        .env("NO_COLOR", "1");
    let out = sh.output().expect("run converge");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out, text)
}

fn validate(repo: &GitRepo, json: bool) -> (Output, String) {
    let mut cmd = converge();
    cmd.args(["validate", "--repo"]).arg(repo.path());
    if json {
        cmd.args(["-o", "json"]);
    }
    run_bounded(&cmd)
}

const STACK: &str = "apiVersion: converge.dev/v1alpha1\nkind: Stack\nname: shop\nnamespace: shop\nchart: charts/app\n";

#[test]
fn an_alias_bomb_under_values_is_refused_at_its_line_without_exhausting_memory() {
    let repo = GitRepo::new();
    write_minimal_stack(&repo);
    let mut values =
        String::from("values:\n  a0: &a0 [lol, lol, lol, lol, lol, lol, lol, lol, lol]\n");
    for i in 1..10 {
        let refs = vec![format!("*a{}", i - 1); 9].join(", ");
        values.push_str(&format!("  a{i}: &a{i} [{refs}]\n"));
    }
    repo.write("desired/stack.yaml", format!("{STACK}{values}"));
    repo.commit("a 1 KiB file that expands to billions of values");
    let (out, text) = validate(&repo, false);
    assert_eq!(out.status.code(), Some(1), "{text}");
    assert!(text.contains("error[yaml-too-large]"), "{text}");
    assert!(text.contains("billion laughs"), "{text}");
    // Refused at the alias that crosses the limit (one of the `aN: &aN [*aN-1, …]` lines).
    let at = text
        .lines()
        .find_map(|l| l.trim().strip_prefix("--> desired/stack.yaml:"))
        .unwrap_or_else(|| panic!("no location in {text}"));
    let line: usize = at.split(':').next().unwrap().parse().unwrap();
    assert!((8..=15).contains(&line), "line {line}: {text}");
    assert!(text.contains("nothing will be applied"), "{text}");
}

#[test]
fn nesting_forty_thousand_levels_deep_is_refused_with_its_location() {
    let repo = GitRepo::new();
    write_minimal_stack(&repo);
    repo.write(
        "desired/stack.yaml",
        format!("{STACK}values:\n  x:\n  {}1\n", "- ".repeat(40_000)),
    );
    repo.commit("40,000 levels");
    let (out, text) = validate(&repo, false);
    assert_eq!(out.status.code(), Some(1), "{text}");
    assert!(text.contains("error[yaml-too-deep]"), "{text}");
    assert!(text.contains("--> desired/stack.yaml:8:"), "{text}");
    assert!(text.contains("deeper than 64 levels"), "{text}");

    let (out, text) = validate(&repo, true);
    assert_eq!(out.status.code(), Some(1), "{text}");
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).expect("json");
    assert_eq!(v["diagnostics"][0]["code"], "yaml-too-deep");
    assert_eq!(v["diagnostics"][0]["line"], 8);
}

#[test]
fn a_refused_credential_never_shows_its_value_in_text_or_json() {
    let repo = GitRepo::new();
    write_minimal_stack(&repo);
    repo.write(
        "desired/extra.yaml",
        "apiVersion: converge.dev/v1alpha1\nkind: Component\nname: extra\nimage:\n  ref: redis:7\nenv:\n  LOG_LEVEL: debug\n  DB_PASSWORD: hunter2-value\n  API_TOKEN: |\n    multi-line-token\n",
    );
    repo.commit("credentials as plain env");
    let (out, text) = validate(&repo, false);
    assert_eq!(out.status.code(), Some(1), "{text}");
    assert!(text.contains("error[credential-in-env]"), "{text}");
    assert!(text.contains("--> desired/extra.yaml:8:3"), "{text}");
    assert!(text.contains("8 |   DB_PASSWORD: ********"), "{text}");
    let (out, json) = validate(&repo, true);
    assert_eq!(out.status.code(), Some(1), "{json}");
    assert!(
        json.contains("\"DB_PASSWORD\""),
        "the key name stays: {json}"
    );
    for shown in [&text, &json] {
        assert!(!shown.contains("hunter2"), "{shown}");
        assert!(!shown.contains("multi-line-token"), "{shown}");
    }
}

#[test]
fn merge_keys_under_values_are_merged_and_never_reach_the_chart_as_a_key() {
    let repo = GitRepo::new();
    write_minimal_stack(&repo);
    repo.write(
        "charts/app/templates/values.yaml",
        "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: values\ndata:\n  web: {{ toJson .Values.web | quote }}\n",
    );
    repo.write(
        "desired/stack.yaml",
        format!("{STACK}values:\n  defaults: &d {{replicas: 2, tier: web}}\n  web:\n    <<: *d\n    tier: front\n"),
    );
    repo.commit("values with a merge key");
    let r = Repo::open(repo.path()).unwrap();
    let snap = r.snapshot("HEAD").unwrap();
    let loaded = desired::load(&snap, "desired").unwrap_or_else(|r| panic!("{}", r.render(false)));
    let stack = &loaded.state.stacks[0];
    assert_eq!(
        serde_json::Value::Object(stack.spec.values.clone())["web"],
        serde_json::json!({"replicas": 2, "tier": "front"})
    );
    let prepared = converge::render::prepare(&snap, stack, &Default::default()).unwrap();
    let rt = tokio::runtime::Runtime::new().unwrap();
    let rendered = rt
        .block_on(prepared.template(&Helm::at(&testbed().helm), None))
        .expect("helm template");
    let cm = rendered
        .objects
        .iter()
        .find(|o| o.metadata.name.as_deref() == Some("values"))
        .expect("the values ConfigMap");
    let web: serde_json::Value =
        serde_json::from_str(cm.data["data"]["web"].as_str().unwrap()).unwrap();
    assert_eq!(web, serde_json::json!({"replicas": 2, "tier": "front"}));
}

/// A socket whose other end is already closed: a child writing to it gets EPIPE at once, as a
/// command does when the reader of its pipe has gone (`| head -1`, `| true`).
fn closed_reader() -> Stdio {
    let (ours, theirs) = UnixStream::pair().expect("socketpair");
    drop(ours);
    Stdio::from(std::os::fd::OwnedFd::from(theirs))
}

/// Runs `cmd` with stdout closed on the reader's side; returns its exit and its stderr.
fn with_closed_stdout(mut cmd: Command) -> (ExitStatus, String) {
    let out = cmd
        .stdout(closed_reader())
        .stderr(Stdio::piped())
        .output()
        .expect("run converge");
    (out.status, String::from_utf8_lossy(&out.stderr).to_string())
}

/// Ended the way `cat` ends when its reader goes away: by SIGPIPE, with nothing on stderr.
fn assert_quiet_sigpipe(what: &str, status: ExitStatus, stderr: &str) {
    assert_eq!(
        status.signal(),
        Some(13),
        "{what}: expected death by SIGPIPE, got {status}; stderr: {stderr}"
    );
    assert!(!stderr.contains("panicked"), "{what}: {stderr}");
    assert!(!stderr.contains("Broken pipe"), "{what}: {stderr}");
}

#[test]
fn validate_and_schema_end_quietly_when_the_reader_closes_the_pipe() {
    let repo = GitRepo::new();
    write_minimal_stack(&repo);
    repo.commit("valid");
    for json in [false, true] {
        let mut cmd = converge();
        cmd.args(["validate", "--repo"]).arg(repo.path());
        if json {
            cmd.args(["-o", "json"]);
        }
        let (status, stderr) = with_closed_stdout(cmd);
        assert_quiet_sigpipe("validate", status, &stderr);
    }
    let mut cmd = converge();
    cmd.arg("schema");
    let (status, stderr) = with_closed_stdout(cmd);
    assert_quiet_sigpipe("schema", status, &stderr);
}

/// The todo stack on the bed: postgres and backend from prebuilt refs, no Secrets needed.
fn todo_repo(ns: &str) -> GitRepo {
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
    write_backend(&repo, 1);
    repo.commit("stack");
    repo
}

fn write_backend(repo: &GitRepo, replicas: u32) {
    repo.write(
        "desired/backend.yaml",
        format!("apiVersion: converge.dev/v1alpha1\nkind: Component\nname: backend\nimage:\n  ref: todo-backend:test\nreplicas: {replicas}\ndependsOn: [postgres]\n"),
    );
}

fn options() -> Options {
    Options {
        kubeconfig: Some(testbed().kubeconfig.clone()),
        context: Some(crate::support::current_context()),
        timeout: Duration::from_secs(180),
        fail_fast: Duration::from_secs(3),
        ..Options::default()
    }
}

async fn reconcile(repo: &GitRepo) -> StackReport {
    let helm = Helm::at(&testbed().helm);
    let mut clusters = Clusters::default();
    let mut reports =
        reconcile::reconcile_commit(repo.path(), "HEAD", &options(), &helm, &mut clusters)
            .await
            .expect("reconcile");
    reports.remove(0)
}

#[tokio::test]
async fn status_explain_and_diff_end_quietly_when_the_reader_closes_the_pipe() {
    let ns = TestNamespace::new("hostile-pipe").await;
    let repo = todo_repo(ns.name());
    let r = reconcile(&repo).await;
    assert!(r.ready, "{r:#?}");
    // A change to diff, not applied.
    write_backend(&repo, 2);
    repo.commit("scale backend");
    let ctx = crate::support::current_context();
    let path = repo.path().to_str().unwrap().to_string();
    let runs: [(&str, Vec<&str>); 4] = [
        (
            "status",
            vec!["status", "--context", &ctx, "--stack", "todo"],
        ),
        (
            "status -o json",
            vec!["status", "--context", &ctx, "--stack", "todo", "-o", "json"],
        ),
        (
            "explain -o json",
            vec!["explain", "--repo", &path, "--context", &ctx, "-o", "json"],
        ),
        ("diff", vec!["diff", "--repo", &path, "--context", &ctx]),
    ];
    for (what, args) in runs {
        let mut cmd = on_bed(converge());
        cmd.args(&args);
        let (status, stderr) = tokio::task::spawn_blocking(move || with_closed_stdout(cmd))
            .await
            .unwrap();
        assert_quiet_sigpipe(what, status, &stderr);
    }
    ns.cleanup().await;
}

/// The recorded status of stack `todo` as (status.json, keys of the ConfigMap).
async fn status_record(ns: &TestNamespace) -> (Option<String>, Vec<String>) {
    let cm = ns
        .api::<ConfigMap>()
        .get_opt("converge-todo-status")
        .await
        .unwrap();
    let data = cm.and_then(|c| c.data).unwrap_or_default();
    (
        data.get("status.json").cloned(),
        data.keys().cloned().collect(),
    )
}

#[tokio::test]
async fn the_daemon_keeps_reconciling_after_its_stdout_and_stderr_reader_closes() {
    let ns = TestNamespace::new("hostile-daemon").await;
    let repo = todo_repo(ns.name());
    let mut cmd = on_bed(converge());
    cmd.args(["run", "--repo"])
        .arg(repo.path())
        .args(["--context", &crate::support::current_context()])
        .args(["--log", "debug", "--resync", "1h", "--timeout", "60s"])
        .stdout(closed_reader())
        .stderr(closed_reader());
    let mut child = cmd.spawn().expect("spawn converge run");
    // `converge run 2>&1 | head -1`: every log line fails to write, yet the stack is applied and
    // a new commit is deployed.
    let head = repo.head();
    let deadline = Instant::now() + Duration::from_secs(150);
    loop {
        if let Some(s) = child.try_wait().unwrap() {
            panic!("the daemon died with {s} when its log reader went away");
        }
        let applied = status_record(&ns)
            .await
            .0
            .is_some_and(|s| s.contains(&head));
        if applied {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "commit {head} not applied in time"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    write_backend(&repo, 2);
    let next = repo.commit("scale backend");
    let deadline = Instant::now() + Duration::from_secs(150);
    while !status_record(&ns)
        .await
        .0
        .is_some_and(|s| s.contains(&next))
    {
        if let Some(s) = child.try_wait().unwrap() {
            panic!("the daemon died with {s} when its log reader went away");
        }
        assert!(
            Instant::now() < deadline,
            "commit {next} not applied in time"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let _ = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status();
    let deadline = Instant::now() + Duration::from_secs(30);
    let status = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break s;
        }
        assert!(Instant::now() < deadline, "no exit after SIGTERM");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert!(status.success(), "{status}");
    ns.cleanup().await;
}

#[tokio::test]
async fn an_unreadable_status_record_is_reported_and_kept_not_overwritten() {
    let ns = TestNamespace::new("hostile-status").await;
    let repo = todo_repo(ns.name());
    let r = reconcile(&repo).await;
    assert!(r.ready, "{r:#?}");
    // Someone edits the record by hand and breaks it.
    let garbage = "{\"stack\": \"todo\", \"history\": [ truncated";
    let patch = serde_json::json!({"data": {"status.json": garbage}});
    ns.api::<ConfigMap>()
        .patch(
            "converge-todo-status",
            &PatchParams::default(),
            &Patch::Merge(&patch),
        )
        .await
        .unwrap();

    let mut cmd = on_bed(converge());
    // `-n`: other tests run stacks named `todo` in their own namespaces at the same time.
    cmd.args([
        "status",
        "--context",
        &crate::support::current_context(),
        "--stack",
        "todo",
        "-n",
        ns.name(),
    ]);
    let out = tokio::task::spawn_blocking(move || cmd.output())
        .await
        .unwrap()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_ne!(out.status.code(), Some(0), "{stderr}");
    assert!(stderr.contains("is unreadable"), "{stderr}");
    assert!(stderr.contains("converge-todo-status"), "{stderr}");
    assert_eq!(
        status_record(&ns).await.0.as_deref(),
        Some(garbage),
        "reading leaves it as it is"
    );

    write_backend(&repo, 2);
    repo.commit("scale backend");
    let r = reconcile(&repo).await;
    assert!(r.ready, "{r:#?}");
    assert!(
        r.warnings.iter().any(|w| w.contains("unreadable")),
        "the reconcile says what it did: {:?}",
        r.warnings
    );
    let (text, keys) = status_record(&ns).await;
    let aside: Vec<_> = keys
        .iter()
        .filter(|k| k.starts_with("status.json.unreadable-"))
        .collect();
    assert_eq!(aside.len(), 1, "the old record is kept aside: {keys:?}");
    let cm = ns
        .api::<ConfigMap>()
        .get("converge-todo-status")
        .await
        .unwrap();
    assert_eq!(cm.data.as_ref().unwrap()[aside[0].as_str()], garbage);
    let fresh: serde_json::Value = serde_json::from_str(&text.unwrap()).expect("a new record");
    assert_eq!(fresh["lastAppliedCommit"], repo.head());

    // A later write keeps the copy too.
    write_backend(&repo, 1);
    repo.commit("scale back");
    let r = reconcile(&repo).await;
    assert!(r.ready, "{r:#?}");
    let (_, keys) = status_record(&ns).await;
    assert!(keys.contains(aside[0]), "{keys:?}");
    ns.cleanup().await;
}

#[tokio::test]
async fn the_daemon_never_logs_or_records_a_refused_credentials_value() {
    use std::io::{BufRead, BufReader};
    use std::sync::{Arc, Mutex};

    let ns = TestNamespace::new("hostile-secret").await;
    let repo = todo_repo(ns.name());
    let mut cmd = on_bed(converge());
    cmd.args(["run", "--repo"])
        .arg(repo.path())
        .args(["--context", &crate::support::current_context()])
        .args(["--log", "debug", "--log-format", "json"])
        .args(["--resync", "1h", "--timeout", "60s"])
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    let mut child = cmd.spawn().expect("spawn converge run");
    let lines = Arc::new(Mutex::new(Vec::<String>::new()));
    let sink = lines.clone();
    let stderr = child.stderr.take().unwrap();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            sink.lock().unwrap().push(line);
        }
    });
    let head = repo.head();
    let deadline = Instant::now() + Duration::from_secs(150);
    while !status_record(&ns)
        .await
        .0
        .is_some_and(|s| s.contains(&head))
    {
        assert!(
            Instant::now() < deadline,
            "commit {head} not applied in time"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    // A credential pasted as a plain value, and by mistake into a quantity too: the quantity's
    // message would quote it.
    let secret = "hunter2-daemon-secret";
    repo.write(
        "desired/backend.yaml",
        format!("apiVersion: converge.dev/v1alpha1\nkind: Component\nname: backend\nimage:\n  ref: todo-backend:test\nreplicas: 1\nenv:\n  DB_PASSWORD: {secret}\nresources:\n  requests: {{cpu: {secret}}}\ndependsOn: [postgres]\n"),
    );
    repo.commit("a credential in plain env");
    let deadline = Instant::now() + Duration::from_secs(60);
    let record = loop {
        let s = status_record(&ns).await.0.unwrap_or_default();
        if s.contains("ValidationFailed") && s.contains("desired/backend.yaml") {
            break s;
        }
        assert!(Instant::now() < deadline, "no ValidationFailed status: {s}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    assert!(record.contains("********"), "{record}");
    assert!(!record.contains(secret), "{record}");
    let _ = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status();
    let deadline = Instant::now() + Duration::from_secs(30);
    while child.try_wait().unwrap().is_none() {
        assert!(Instant::now() < deadline, "no exit after SIGTERM");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let log = lines.lock().unwrap().join("\n");
    assert!(log.contains("desired/backend.yaml"), "{log}");
    assert!(!log.contains(secret), "{log}");
    ns.cleanup().await;
}
