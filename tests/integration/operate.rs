//! Operating a stack on the testbed: `converge down` (reverse order, volumes kept unless asked,
//! records last, idempotent, without the desired state) and `converge explain` on failures the
//! bed really produces — kwok's crash loop and image pull back-off with the log tail served over
//! 127.0.0.1, the real scheduler's Unschedulable, a claim whose class does not exist, a missing
//! Secret key — and on kubelet states a test writes into Pod status the way a kubelet would
//! (ErrImageNeverPull, OOMKilled, a failing readiness probe with its Event).

use std::io::Write;
use std::path::Path;
use std::time::Duration;

use converge::reconcile::{self, Clusters, Options, StackReport};
use converge::render::Helm;
use converge::vocabulary::{LABEL_COMPONENT, LABEL_STACK};
use k8s_openapi::api::apps::v1::{Deployment, StatefulSet};
use k8s_openapi::api::core::v1::{ConfigMap, Event, PersistentVolumeClaim, Pod, Service};
use kube::api::{Api, ListParams, Patch, PatchParams, PostParams};
use serde_json::{json, Value};

use crate::support::git::{copy_project_dir, GitRepo};
use crate::support::shell::{fill_placeholders, shell_words};
use crate::support::{current_context, testbed, TestNamespace, FAIL_LABEL};

const ALL_KEYS: &[&str] = &["postgres-password", "database-url", "jwt-secret"];

/// The shipped chart with postgres, backend and frontend as stack `ns` in namespace `ns` (a
/// name no other test uses); `backend_values`
/// and `frontend_values` are extra YAML lines under each component's `values:`.
fn stack_repo(ns: &str, backend_values: &str, frontend_values: &str) -> GitRepo {
    let repo = GitRepo::new();
    copy_project_dir(&repo, "charts/todo-chatbot", "charts/todo-chatbot");
    repo.write(
        "desired/stack.yaml",
        format!(
            "apiVersion: converge.dev/v1alpha1\nkind: Stack\nname: {ns}\nnamespace: {ns}\nrelease: todo-chatbot\nvalues:\n  frontend:\n    service: {{type: ClusterIP, port: 80}}\n"
        ),
    );
    let component = |name: &str, image: &str, secrets: &str, deps: &str, values: &str| {
        let mut doc = format!(
            "apiVersion: converge.dev/v1alpha1\nkind: Component\nname: {name}\nimage:\n  ref: {image}\nreplicas: 1\nsecretEnv:\n  {secrets}\ndependsOn: {deps}\n"
        );
        if !values.is_empty() {
            doc.push_str("values:\n");
            doc.push_str(values);
        }
        doc
    };
    repo.write(
        "desired/postgres.yaml",
        component(
            "postgres",
            "postgres:16-alpine",
            "- {name: POSTGRES_PASSWORD, secret: todo-secrets, key: postgres-password}",
            "[]",
            "",
        ),
    );
    repo.write(
        "desired/backend.yaml",
        component(
            "backend",
            "todo-backend:test",
            "- {name: DATABASE_URL, secret: todo-secrets, key: database-url}\n  - {name: JWT_SECRET, secret: todo-secrets, key: jwt-secret}",
            "[postgres]",
            backend_values,
        ),
    );
    repo.write(
        "desired/frontend.yaml",
        component(
            "frontend",
            "todo-frontend:test",
            "- {name: JWT_SECRET, secret: todo-secrets, key: jwt-secret}",
            "[]",
            frontend_values,
        ),
    );
    repo.commit("todo stack");
    repo
}

async fn create_secret(ns: &TestNamespace, keys: &[&str]) {
    crate::support::create_secret(ns, "todo-secrets", keys).await;
}

async fn reconcile(repo: &GitRepo) -> StackReport {
    let bed = testbed();
    let opts = Options {
        kubeconfig: Some(bed.kubeconfig.clone()),
        context: Some(current_context()),
        timeout: Duration::from_secs(90),
        fail_fast: Duration::from_secs(3),
        ..Options::default()
    };
    let helm = Helm::at(&bed.helm);
    let mut reports =
        reconcile::reconcile_commit(repo.path(), "HEAD", &opts, &helm, &mut Clusters::default())
            .await
            .expect("reconcile");
    reports.remove(0)
}

/// Runs the converge binary against the bed; returns (exit code, stdout, stderr).
fn converge_with(args: &[&str], path: Option<&str>) -> (i32, String, String) {
    let mut cmd = std::process::Command::new(env!("CARGO_BIN_EXE_converge"));
    cmd.args(args)
        .env("KUBECONFIG", &testbed().kubeconfig)
        .env("CONVERGE_HELM", &testbed().helm)
        .env("NO_COLOR", "1")
        .env_remove("CONVERGE_CONTEXT");
    if let Some(p) = path {
        cmd.env("PATH", p);
    }
    let out = cmd.output().unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn converge(args: &[&str]) -> (i32, String, String) {
    converge_with(args, None)
}

fn json_of(stdout: &str) -> Value {
    serde_json::from_str(stdout).unwrap_or_else(|e| panic!("not JSON ({e}): {stdout}"))
}

async fn names<K>(api: &Api<K>, selector: &str) -> Vec<String>
where
    K: kube::Resource + Clone + serde::de::DeserializeOwned + std::fmt::Debug,
{
    api.list(&ListParams::default().labels(selector))
        .await
        .unwrap()
        .items
        .iter()
        .filter_map(|o| o.meta().name.clone())
        .collect()
}

#[tokio::test]
async fn down_removes_the_stack_in_reverse_order_keeps_volumes_unless_asked_and_repeats_as_a_no_op()
{
    let ns = TestNamespace::new("down").await;
    create_secret(&ns, ALL_KEYS).await;
    let repo = stack_repo(ns.name(), "", "");
    let first = reconcile(&repo).await;
    assert!(first.ready, "{first:#?}");
    let claims: Api<PersistentVolumeClaim> = ns.api();
    assert_eq!(names(&claims, "").await.len(), 1, "postgres has its claim");

    // The desired state is gone from the repository: down finds the stack in the cluster.
    for f in ["stack", "postgres", "backend", "frontend"] {
        repo.remove(&format!("desired/{f}.yaml"));
    }
    repo.commit("remove the stack");
    let repo_path = repo.path().to_str().unwrap().to_string();
    let (code, out, err) = converge(&[
        "down",
        "--repo",
        &repo_path,
        "--stack",
        ns.name(),
        "-o",
        "json",
    ]);
    assert_eq!(code, 0, "{out}{err}");
    let report = &json_of(&out)[0];
    assert_eq!(report["namespace"], ns.name());
    assert_eq!(report["recordsRemoved"], true);
    let deleted: Vec<String> = report["deleted"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| d.as_str().unwrap().to_string())
        .collect();
    let pos = |prefix: &str| {
        deleted
            .iter()
            .position(|d| d.starts_with(prefix))
            .unwrap_or_else(|| panic!("{prefix} not deleted: {deleted:?}"))
    };
    assert!(pos("Deployment/") < pos("StatefulSet/"), "{deleted:?}");
    assert!(pos("StatefulSet/") < pos("Service/"), "{deleted:?}");
    assert!(pos("Service/") < pos("ConfigMap/"), "{deleted:?}");
    assert!(
        report["kept"]
            .as_array()
            .unwrap()
            .iter()
            .any(|k| k.as_str().unwrap().contains("PersistentVolumeClaim/data-")),
        "{report:#}"
    );
    let sel = format!("{LABEL_STACK}={}", ns.name());
    assert!(names(&ns.api::<Deployment>(), &sel).await.is_empty());
    assert!(names(&ns.api::<StatefulSet>(), &sel).await.is_empty());
    assert!(names(&ns.api::<Service>(), &sel).await.is_empty());
    assert!(
        names(&ns.api::<ConfigMap>(), &sel).await.is_empty(),
        "the inventory and status records are gone too"
    );
    assert!(
        names(&ns.api::<Pod>(), "").await.is_empty(),
        "down waits for the pods"
    );
    assert_eq!(names(&claims, "").await.len(), 1, "the volume stays");

    let (code, out, _) = converge(&["down", "--repo", &repo_path, "--stack", ns.name()]);
    assert_eq!(code, 0, "{out}");
    assert!(out.contains("nothing to take down"), "{out}");

    // Up again, then down with --volumes: the StatefulSet's claim goes too.
    repo.git(&["revert", "--no-edit", "HEAD"]);
    let again = reconcile(&repo).await;
    assert!(again.ready, "{again:#?}");
    let (code, out, err) = converge(&[
        "down",
        "--namespace",
        ns.name(),
        "--stack",
        ns.name(),
        "--volumes",
    ]);
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.contains("deleted PersistentVolumeClaim/data-"), "{out}");
    assert!(names(&claims, "").await.is_empty());
    ns.cleanup().await;
}

/// Appends a line to the file kwok serves as every container's log.
fn append_pod_log(line: &str) {
    let mut f = std::fs::OpenOptions::new()
        .append(true)
        .open(&testbed().pod_log)
        .unwrap();
    let now = chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Nanos, true);
    writeln!(f, "{now} stdout F {line}").unwrap();
}

fn diagnoses_of<'a>(all: &'a Value, component: &str) -> Vec<&'a Value> {
    all.as_array()
        .unwrap()
        .iter()
        .filter(|e| e["component"] == component)
        .flat_map(|e| e["diagnoses"].as_array().unwrap())
        .collect()
}

#[tokio::test]
async fn explain_diagnoses_a_crash_loop_with_its_log_tail_and_an_image_the_cluster_cannot_pull() {
    let ns = TestNamespace::new("explain-kwok").await;
    create_secret(&ns, ALL_KEYS).await;
    let repo = stack_repo(
        ns.name(),
        &format!("  podLabels: {{{FAIL_LABEL}: crashloop}}\n"),
        &format!("  podLabels: {{{FAIL_LABEL}: imagepull}}\n"),
    );
    let marker = format!("Traceback: KeyError 'DATABASE_URL' ({})", ns.name());
    append_pod_log(&marker);
    let report = reconcile(&repo).await;
    assert!(!report.ready);

    let repo_path = repo.path().to_str().unwrap().to_string();
    let (code, out, err) = converge(&[
        "explain",
        "--repo",
        &repo_path,
        "--context",
        &current_context(),
        "-o",
        "json",
    ]);
    assert_eq!(code, 1, "unhealthy components are findings: {out}{err}");
    let all = json_of(&out);
    let backend = diagnoses_of(&all, "backend");
    assert_eq!(backend[0]["rule"], "CrashLoopBackOff", "{backend:#?}");
    let evidence: Vec<&str> = backend[0]["evidence"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(Value::as_str)
        .collect();
    assert!(
        evidence.iter().any(|l| l.contains(&marker)),
        "the log tail came from kwok over 127.0.0.1: {evidence:#?}"
    );
    let frontend = diagnoses_of(&all, "frontend");
    assert_eq!(frontend[0]["rule"], "ImageNotPresent", "{frontend:#?}");
    assert!(frontend[0]["nextStep"]
        .as_str()
        .unwrap()
        .contains("minikube image load todo-frontend:test"));
    assert_eq!(diagnoses_of(&all, "postgres")[0]["rule"], "Healthy");

    let (code, out, _) = converge(&[
        "explain",
        "backend",
        "--namespace",
        ns.name(),
        "--stack",
        ns.name(),
    ]);
    assert_eq!(code, 1);
    assert!(
        out.starts_with(&format!(
            "stack {0} (namespace {0})\n  backend: CrashLoopBackOff",
            ns.name()
        )),
        "{out}"
    );
    assert!(out.contains("next: read the log tail"), "{out}");
    let (code, out, _) = converge(&[
        "explain",
        "postgres",
        "--namespace",
        ns.name(),
        "--stack",
        ns.name(),
    ]);
    assert_eq!(code, 0, "a healthy component is no finding: {out}");
    ns.cleanup().await;
}

#[tokio::test]
async fn explain_names_a_missing_secret_key_with_the_command_that_adds_it() {
    let ns = TestNamespace::new("explain-secret").await;
    create_secret(&ns, &["postgres-password", "database-url"]).await;
    let repo = stack_repo(ns.name(), "", "");
    let report = reconcile(&repo).await;
    assert!(!report.ready);
    let repo_path = repo.path().to_str().unwrap().to_string();
    let (code, out, err) = converge(&[
        "explain",
        "backend",
        "--repo",
        &repo_path,
        "--context",
        &current_context(),
    ]);
    assert_eq!(code, 1, "{out}{err}");
    assert!(
        out.contains("MissingSecret — Secret `todo-secrets` has no key `jwt-secret`"),
        "{out}"
    );
    assert!(out.contains(&format!(
        "kubectl patch secret todo-secrets -n {} --type merge",
        ns.name()
    )));
    assert!(!out.contains("not-a-real-value"), "never a Secret value");
    ns.cleanup().await;
}

/// A Deployment of one Pod labelled as component `component` of stack `lab`.
async fn lab_deployment(ns: &TestNamespace, component: &str, pod_labels: Value, pod_spec: Value) {
    let mut labels = json!({"app": component});
    if let (Some(l), Some(extra)) = (labels.as_object_mut(), pod_labels.as_object()) {
        l.extend(extra.clone());
    }
    let d: Deployment = serde_json::from_value(json!({
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": component, "labels": {LABEL_STACK: "lab", LABEL_COMPONENT: component}},
        "spec": {
            "replicas": 1,
            "selector": {"matchLabels": {"app": component}},
            "template": {"metadata": {"labels": labels}, "spec": pod_spec},
        }
    }))
    .unwrap();
    ns.api::<Deployment>()
        .create(&PostParams::default(), &d)
        .await
        .unwrap();
}

async fn wait_for_pod(ns: &TestNamespace, component: &str, cond: impl Fn(&Pod) -> bool) -> Pod {
    let api: Api<Pod> = ns.api();
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    loop {
        let pods = api
            .list(&ListParams::default().labels(&format!("app={component}")))
            .await
            .unwrap();
        if let Some(p) = pods.items.into_iter().find(|p| cond(p)) {
            return p;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "no pod of {component} in the expected state"
        );
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
}

fn scheduled(p: &Pod) -> bool {
    p.spec.as_ref().and_then(|s| s.node_name.clone()).is_some()
}

/// Writes a container status into the Pod, as the kubelet would.
async fn set_container_status(ns: &TestNamespace, pod: &Pod, status: Value) {
    let api: Api<Pod> = ns.api();
    let name = pod.metadata.name.clone().unwrap();
    api.patch_status(
        &name,
        &PatchParams::default(),
        &Patch::Merge(json!({"status": status})),
    )
    .await
    .unwrap();
}

#[tokio::test]
async fn explain_diagnoses_scheduling_claims_oom_never_pull_and_readiness_from_cluster_evidence() {
    let ns = TestNamespace::new("explain-lab").await;
    let container = |extra: Value| {
        let mut c = json!({"name": "app", "image": "lab/app:1"});
        if let (Some(c), Some(e)) = (c.as_object_mut(), extra.as_object()) {
            c.extend(e.clone());
        }
        c
    };
    // The real scheduler: no node has 64 CPUs.
    lab_deployment(
        &ns,
        "hungry",
        json!({}),
        json!({"containers": [container(json!({"resources": {"requests": {"cpu": "64", "memory": "128Mi"}}}))]}),
    )
    .await;
    // A claim of a class that does not exist stays Pending.
    let claim: PersistentVolumeClaim = serde_json::from_value(json!({
        "metadata": {"name": "nowhere"},
        "spec": {"accessModes": ["ReadWriteOnce"], "storageClassName": "no-such-class", "resources": {"requests": {"storage": "1Gi"}}}
    }))
    .unwrap();
    ns.api::<PersistentVolumeClaim>()
        .create(&PostParams::default(), &claim)
        .await
        .unwrap();
    lab_deployment(
        &ns,
        "claims",
        json!({}),
        json!({"containers": [container(json!({}))], "volumes": [{"name": "d", "persistentVolumeClaim": {"claimName": "nowhere"}}]}),
    )
    .await;
    // Pods no kwok stage touches (an unknown fail value): the test plays the kubelet.
    let manual = json!({FAIL_LABEL: "manual"});
    lab_deployment(
        &ns,
        "oom",
        manual.clone(),
        json!({"containers": [container(json!({"resources": {"limits": {"memory": "256Mi"}}}))]}),
    )
    .await;
    lab_deployment(
        &ns,
        "neverpull",
        manual.clone(),
        json!({"containers": [container(json!({"imagePullPolicy": "Never"}))]}),
    )
    .await;
    // kwok runs it without ever turning it Ready; the failing probe is the kubelet's Event.
    lab_deployment(
        &ns,
        "probe",
        json!({FAIL_LABEL: "unready"}),
        json!({"containers": [container(json!({"readinessProbe": {"httpGet": {"path": "/ready", "port": 8000}, "periodSeconds": 5}}))]}),
    )
    .await;

    let oom = wait_for_pod(&ns, "oom", scheduled).await;
    set_container_status(
        &ns,
        &oom,
        json!({"phase": "Running", "containerStatuses": [{"name": "app", "image": "lab/app:1", "imageID": "", "ready": false, "restartCount": 3,
            "lastState": {"terminated": {"exitCode": 137, "reason": "OOMKilled"}},
            "state": {"waiting": {"reason": "CrashLoopBackOff", "message": "back-off 40s"}}}]}),
    )
    .await;
    let never = wait_for_pod(&ns, "neverpull", scheduled).await;
    set_container_status(
        &ns,
        &never,
        json!({"phase": "Pending", "containerStatuses": [{"name": "app", "image": "lab/app:1", "imageID": "", "ready": false, "restartCount": 0,
            "state": {"waiting": {"reason": "ErrImageNeverPull", "message": "Container image \"lab/app:1\" is not present with pull policy of Never"}}}]}),
    )
    .await;
    let probe = wait_for_pod(&ns, "probe", |p| {
        p.status.as_ref().and_then(|s| s.phase.as_deref()) == Some("Running")
    })
    .await;
    let event: Event = serde_json::from_value(json!({
        "metadata": {"name": "probe-unhealthy"},
        "involvedObject": {"kind": "Pod", "name": probe.metadata.name, "namespace": ns.name(), "uid": probe.metadata.uid},
        "type": "Warning", "reason": "Unhealthy", "count": 7,
        "message": "Readiness probe failed: HTTP probe failed with statuscode: 503",
        "source": {"component": "kubelet"}
    }))
    .unwrap();
    ns.api::<Event>()
        .create(&PostParams::default(), &event)
        .await
        .unwrap();
    wait_for_pod(&ns, "hungry", |p| {
        p.status
            .as_ref()
            .and_then(|s| s.conditions.as_ref())
            .is_some_and(|c| {
                c.iter()
                    .any(|c| c.reason.as_deref() == Some("Unschedulable"))
            })
    })
    .await;

    let (code, out, err) = converge(&[
        "explain",
        "--namespace",
        ns.name(),
        "--stack",
        "lab",
        "-o",
        "json",
    ]);
    assert_eq!(code, 1, "{out}{err}");
    let all = json_of(&out);
    let first = |c: &str| diagnoses_of(&all, c)[0].clone();

    let hungry = first("hungry");
    assert_eq!(hungry["rule"], "Unschedulable", "{hungry:#}");
    assert!(hungry["summary"]
        .as_str()
        .unwrap()
        .contains("requests 64 CPU"));
    assert!(
        hungry["evidence"]
            .to_string()
            .contains("allocatable 32 CPU"),
        "the kwok node's numbers: {hungry:#}"
    );
    assert!(hungry["nextStep"]
        .as_str()
        .unwrap()
        .contains("resources.requests.cpu to at most"));

    let claims = first("claims");
    assert_eq!(claims["rule"], "ClaimPending", "{claims:#}");
    assert!(claims["summary"]
        .as_str()
        .unwrap()
        .contains("`no-such-class` does not exist"));
    assert!(claims["nextStep"]
        .as_str()
        .unwrap()
        .contains("one of: standard"));

    let oom = first("oom");
    assert_eq!(oom["rule"], "OOMKilled", "{oom:#}");
    assert!(oom["nextStep"].as_str().unwrap().contains("to 512Mi"));

    let never = first("neverpull");
    assert_eq!(never["rule"], "ImageNotPresent", "{never:#}");
    assert!(never["nextStep"]
        .as_str()
        .unwrap()
        .contains("minikube image load lab/app:1"));

    let probe = first("probe");
    assert_eq!(probe["rule"], "ReadinessProbeFailing", "{probe:#}");
    assert!(probe["summary"]
        .as_str()
        .unwrap()
        .contains("statuscode: 503"));
    assert!(probe["evidence"]
        .to_string()
        .contains("HTTP GET /ready on port 8000 every 5s"));

    // --ai: says so when kubectl-ai is missing, pipes the evidence when it is there.
    let empty = tempfile::tempdir().unwrap();
    let (_, _, err) = converge_with(
        &[
            "explain",
            "oom",
            "--namespace",
            ns.name(),
            "--stack",
            "lab",
            "--ai",
        ],
        Some(empty.path().to_str().unwrap()),
    );
    assert!(err.contains("kubectl-ai is not installed"), "{err}");
    let bin = tempfile::tempdir().unwrap();
    let seen = bin.path().join("stdin.json");
    let fake = bin.path().join("kubectl-ai");
    std::fs::write(
        &fake,
        format!(
            "#!/bin/sh\ncat > '{}'\necho \"fake kubectl-ai answer: $2\"\n",
            seen.display()
        ),
    )
    .unwrap();
    std::fs::set_permissions(&fake, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    let path = format!("{}:/usr/bin:/bin", bin.path().display());
    let (code, out, err) = converge_with(
        &[
            "explain",
            "oom",
            "--namespace",
            ns.name(),
            "--stack",
            "lab",
            "--ai",
        ],
        Some(&path),
    );
    assert_eq!(code, 1, "{out}{err}");
    assert!(out.contains("fake kubectl-ai answer: Why is oom"), "{out}");
    let piped = std::fs::read_to_string(&seen).unwrap();
    assert!(
        piped.contains("OOMKilled") && piped.contains("\"evidence\""),
        "{piped}"
    );
    ns.cleanup().await;
}

fn check<'a>(checks: &'a Value, id: &str) -> &'a Value {
    checks
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["check"] == id)
        .unwrap_or_else(|| panic!("no {id} check in {checks:#}"))
}

#[tokio::test]
async fn doctor_fails_each_broken_check_with_its_fix_and_passes_once_they_are_fixed() {
    let ns = TestNamespace::new("doctor").await;
    // A NodePort of our own, away from 30080 and from other tests.
    let port = 31000 + (ns.name().bytes().map(u32::from).sum::<u32>() % 700) as i64;
    let repo = GitRepo::new();
    copy_project_dir(&repo, "charts/todo-chatbot", "charts/todo-chatbot");
    repo.write(
        "desired/stack.yaml",
        format!(
            "apiVersion: converge.dev/v1alpha1\nkind: Stack\nname: {n}\nnamespace: {n}\nrelease: todo-chatbot\nbuilder: docker\nvalues:\n  frontend:\n    service: {{type: NodePort, port: 80, nodePort: {port}}}\n",
            n = ns.name()
        ),
    );
    repo.write(
        "desired/frontend.yaml",
        "apiVersion: converge.dev/v1alpha1\nkind: Component\nname: frontend\nimage:\n  ref: todo-frontend:test\nreplicas: 2\nresources:\n  requests: {cpu: 400m, memory: 128Mi}\nsecretEnv:\n  - {name: JWT_SECRET, secret: todo-secrets, key: jwt-secret}\n",
    );
    repo.commit("a frontend on a NodePort");
    // Break three things: the Secret, the NodePort and the quota.
    let holder: Service = serde_json::from_value(json!({
        "metadata": {"name": "holder"},
        "spec": {"type": "NodePort", "selector": {"app": "none"}, "ports": [{"port": 80, "nodePort": port}]}
    }))
    .unwrap();
    ns.api::<Service>()
        .create(&PostParams::default(), &holder)
        .await
        .unwrap();
    let quota: k8s_openapi::api::core::v1::ResourceQuota = serde_json::from_value(json!({
        "metadata": {"name": "small"},
        "spec": {"hard": {"requests.cpu": "500m"}}
    }))
    .unwrap();
    let quotas: Api<k8s_openapi::api::core::v1::ResourceQuota> = ns.api();
    quotas.create(&PostParams::default(), &quota).await.unwrap();
    // The quota controller fills in status.hard/used.
    crate::support::wait_for(
        &quotas,
        "small",
        |q: Option<&k8s_openapi::api::core::v1::ResourceQuota>| {
            q.and_then(|q| q.status.as_ref())
                .and_then(|s| s.hard.as_ref())
                .is_some()
        },
        Duration::from_secs(60),
    )
    .await;

    let repo_path = repo.path().to_str().unwrap().to_string();
    let ctx = current_context();
    let docker_host = crate::support::docker_host().to_string();
    let doctor = |extra: &[&str]| {
        let mut args = vec![
            "doctor",
            "--repo",
            &repo_path,
            "--context",
            &ctx,
            "--skip",
            "service",
        ];
        args.extend_from_slice(extra);
        let mut cmd = std::process::Command::new(env!("CARGO_BIN_EXE_converge"));
        cmd.args(&args)
            .env("KUBECONFIG", &testbed().kubeconfig)
            .env("CONVERGE_HELM", &testbed().helm)
            .env("DOCKER_HOST", &docker_host)
            .env("NO_COLOR", "1");
        let out = cmd.output().unwrap();
        (
            out.status.code().unwrap_or(-1),
            String::from_utf8_lossy(&out.stdout).into_owned(),
        )
    };
    let (code, out) = doctor(&["-o", "json"]);
    assert_eq!(code, 1, "{out}");
    let checks = json_of(&out);
    for id in ["desired", "helm", "context", "builder"] {
        assert_eq!(
            check(&checks, id)["status"],
            "pass",
            "{:#}",
            check(&checks, id)
        );
    }
    let cluster = check(&checks, "cluster");
    assert!(
        cluster["message"]
            .as_str()
            .unwrap()
            .contains("a kwok cluster"),
        "{cluster:#}"
    );
    let secrets = check(&checks, "secrets");
    assert_eq!(secrets["status"], "fail");
    assert!(secrets["fix"].as_str().unwrap().contains(&format!(
        "kubectl create secret generic todo-secrets -n {} --from-literal=jwt-secret=<value>",
        ns.name()
    )));
    let nodeport = check(&checks, "nodeport");
    assert_eq!(nodeport["status"], "fail");
    assert!(nodeport["message"]
        .as_str()
        .unwrap()
        .contains(&format!("NodePort {port}")));
    assert!(nodeport["message"]
        .as_str()
        .unwrap()
        .contains(&format!("{}/holder", ns.name())));
    let quota = check(&checks, "quota");
    assert_eq!(quota["status"], "fail", "{quota:#}");
    assert!(quota["message"]
        .as_str()
        .unwrap()
        .contains("requests.cpu 800m (others use 0) exceeds the hard limit 500m"));
    assert_eq!(check(&checks, "capacity")["status"], "pass");

    // Fix all three: exit 0, every line `ok`.
    create_secret(&ns, &["jwt-secret"]).await;
    ns.api::<Service>()
        .delete("holder", &Default::default())
        .await
        .unwrap();
    quotas.delete("small", &Default::default()).await.unwrap();
    let (code, out) = doctor(&[]);
    assert_eq!(code, 0, "{out}");
    assert!(
        out.lines()
            .filter(|l| !l.contains("checks:"))
            .all(|l| l.starts_with("ok ")),
        "{out}"
    );
    ns.cleanup().await;
}

/// The pages this module keeps honest: the README and every page under docs/, so a new page is
/// checked without being listed here.
fn pages() -> Vec<String> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let mut pages: Vec<String> = std::fs::read_dir(root.join("docs"))
        .expect("docs/")
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.ends_with(".md"))
        .map(|n| format!("docs/{n}"))
        .collect();
    pages.sort();
    pages.insert(0, "README.md".into());
    pages
}

fn doc(rel: &str) -> String {
    std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join(rel))
        .unwrap_or_else(|e| panic!("{rel}: {e}"))
}

/// What the docs show as `converge …` but is no command line, each with why. A page may show
/// such a span or line only if it is here (exactly as written); an entry no page shows any more
/// fails the test, so the list cannot outlive its reason.
const NOT_COMMANDS: &[(&str, &str)] = &[
    (
        "converge <converge@localhost>",
        "the author of the commits converge writes, as git prints it",
    ),
    (
        "converge <command> --help",
        "stands for every subcommand, each one checked in the same table",
    ),
];

/// What a page shows as code.
struct Code {
    /// Each logical line of a fenced block (continuations joined) with the block's language
    /// (`""` for a bare fence).
    blocks: Vec<(String, String)>,
    /// Each inline code span outside the fences, its line breaks as spaces and a table's `\|`
    /// as `|`.
    spans: Vec<String>,
}

/// Reads a page's code. A paragraph with an odd number of backticks fails the test: every span
/// after it would be read shifted by one, prose as code and code as prose.
fn code_of(rel: &str, text: &str) -> Code {
    let mut blocks = Vec::new();
    let mut paragraphs = vec![String::new()];
    let mut fence: Option<String> = None;
    let mut pending = String::new();
    for line in text.lines() {
        let t = line.trim();
        if let Some(lang) = t.strip_prefix("```") {
            fence = match fence {
                None => Some(lang.to_string()),
                Some(_) => None,
            };
            paragraphs.push(String::new());
            continue;
        }
        match &fence {
            None if t.is_empty() => paragraphs.push(String::new()),
            None => {
                let p = paragraphs.last_mut().expect("one paragraph at least");
                p.push_str(t);
                p.push(' ');
            }
            Some(lang) => {
                pending.push_str(t.trim_end_matches('\\'));
                pending.push(' ');
                if !t.ends_with('\\') {
                    let l = std::mem::take(&mut pending).trim().to_string();
                    blocks.push((lang.clone(), l));
                }
            }
        }
    }
    let mut spans = Vec::new();
    for p in &paragraphs {
        assert!(
            p.matches('`').count() % 2 == 0,
            "{rel}: a paragraph with an unclosed code span: {p}"
        );
        spans.extend(
            p.split('`')
                .skip(1)
                .step_by(2)
                .map(|s| s.trim().replace("\\|", "|")),
        );
    }
    Code { blocks, spans }
}

/// The `converge …` commands in one shell line, as words: each one of a pipeline or list (also
/// after `sudo` or `VAR=value`), up to its redirections, a ` # comment` dropped.
fn converge_commands(line: &str) -> Vec<Vec<String>> {
    let line = line.split(" # ").next().unwrap_or("");
    let words = shell_words(&fill_placeholders(line));
    let mut out = Vec::new();
    for part in words.split(|w| matches!(w.as_str(), "|" | "||" | "&&" | ";" | "&")) {
        let mut rest = part
            .iter()
            .skip_while(|w| *w == "sudo" || w.split_once('=').is_some_and(|(k, _)| is_env_name(k)));
        if rest.next().map(String::as_str) != Some("converge") {
            continue;
        }
        let mut cmd = vec!["converge".to_string()];
        cmd.extend(
            rest.take_while(|w| {
                !w.trim_start_matches(|c: char| c.is_ascii_digit())
                    .starts_with('>')
            })
            .cloned(),
        );
        // `converge` alone is the program's name in prose, not a command.
        if cmd.len() > 1 {
            out.push(cmd);
        }
    }
    out
}

/// `NAME` of a `NAME=value` before a command (an environment assignment, not an argument).
fn is_env_name(k: &str) -> bool {
    !k.is_empty()
        && k.chars()
            .all(|c| c.is_ascii_uppercase() || c.is_ascii_digit() || c == '_')
}

/// A command as the CLI must accept it. A synopsis (`converge validate [--rev REV] [-o
/// text|json]`) is checked with every option in and once per alternative of each `a|b`. A
/// `mention` (inline code in a sentence: `converge pause`) names a subcommand and may leave out
/// its required arguments; its subcommands, flags and values must still be the CLI's.
fn parse_each_reading(words: &[String], mention: bool) -> Result<(), String> {
    use clap::Parser;
    let words: Vec<Vec<String>> = words
        .iter()
        .map(|w| {
            w.trim_matches(|c| c == '[' || c == ']')
                .split('|')
                .map(String::from)
                .collect()
        })
        .collect();
    let first: Vec<String> = words.iter().map(|alts| alts[0].clone()).collect();
    let mut readings = vec![first.clone()];
    for (i, alts) in words.iter().enumerate() {
        for alt in &alts[1..] {
            let mut r = first.clone();
            r[i] = alt.clone();
            readings.push(r);
        }
    }
    for r in readings {
        match converge::cli::Cli::try_parse_from(&r) {
            Ok(_) => {}
            Err(e) if mention && e.kind() == clap::error::ErrorKind::MissingRequiredArgument => {}
            Err(e) => return Err(format!("`{}`: {e}", r.join(" "))),
        }
    }
    Ok(())
}

fn long_flags(cmd: &clap::Command, out: &mut std::collections::BTreeSet<String>) {
    for a in cmd.get_arguments() {
        if let Some(l) = a.get_long() {
            out.insert(format!("--{l}"));
        }
    }
    for s in cmd.get_subcommands() {
        long_flags(s, out);
    }
}

#[test]
fn every_converge_command_in_the_docs_parses_with_the_real_command_line() {
    let (mut in_blocks, mut in_spans) = (0, 0);
    let mut not_commands_seen = std::collections::BTreeSet::new();
    for rel in &pages() {
        let code = code_of(rel, &doc(rel));
        let lines = code.blocks.iter().map(|(lang, l)| (Some(lang), l));
        let spans = code.spans.iter().map(|s| (None, s));
        for (lang, shown) in lines.chain(spans) {
            if let Some((c, _)) = NOT_COMMANDS.iter().find(|(c, _)| c == shown) {
                not_commands_seen.insert(*c);
                continue;
            }
            for cmd in converge_commands(shown) {
                match lang {
                    Some(lang) if lang != "sh" => panic!(
                        "{rel}: `{shown}` is in a block fenced ```{lang}: a command goes in an ```sh block, where this test parses it"
                    ),
                    Some(_) => in_blocks += 1,
                    None => in_spans += 1,
                }
                if let Err(e) = parse_each_reading(&cmd, lang.is_none()) {
                    panic!("{rel}: `{shown}` does not parse (if it is not a command, list it in NOT_COMMANDS with why):\n{e}");
                }
            }
        }
    }
    for (shown, why) in NOT_COMMANDS {
        assert!(
            not_commands_seen.contains(*shown),
            "no page shows `{shown}` ({why}) any more: remove it from NOT_COMMANDS"
        );
    }
    assert!(
        in_blocks >= 50,
        "only {in_blocks} commands found in sh blocks"
    );
    assert!(
        in_spans >= 100,
        "only {in_spans} commands found in inline code"
    );
}

#[test]
fn every_flag_environment_variable_and_link_in_the_docs_exists() {
    use clap::CommandFactory;
    let mut flags = std::collections::BTreeSet::new();
    long_flags(&converge::cli::Cli::command(), &mut flags);
    flags.extend(["--help".to_string(), "--version".to_string()]);
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let mut sources = String::new();
    // Every source file, at any depth (modules move into directories: src/daemon/service/).
    let mut dirs = vec![root.join("src")];
    while let Some(dir) = dirs.pop() {
        for e in std::fs::read_dir(&dir).unwrap().flatten() {
            let p = e.path();
            if p.is_dir() {
                dirs.push(p);
            } else if p.extension().is_some_and(|x| x == "rs") {
                sources.push_str(&std::fs::read_to_string(&p).unwrap());
            }
        }
    }
    let bed = [
        "tests/testbed/up",
        "tests/testbed/services.sh",
        "tests/support/mod.rs",
        "tests/support/services.rs",
    ]
    .map(|f| std::fs::read_to_string(root.join(f)).unwrap())
    .concat();
    for rel in &pages() {
        let text = doc(rel);
        // Flags: every `--name` in a code span or block (on lines of kubectl, minikube, journalctl,
        // `kind load`, `docker build`, `ctr` or `git log`: theirs, not converge's).
        for line in text
            .lines()
            .filter(|l| l.contains("converge") || l.starts_with('|'))
        {
            for word in line.split(|c: char| !(c.is_ascii_alphanumeric() || c == '-')) {
                if word.starts_with("--")
                    && word.as_bytes().get(2).is_some_and(u8::is_ascii_lowercase)
                    && !line.contains("kubectl")
                    && !line.contains("minikube")
                    && !line.contains("journalctl")
                    && !line.contains("kind load")
                    && !line.contains("docker build")
                    && !line.contains("ctr --address")
                    && !line.contains("git log")
                    && !line.contains("buildctl ")
                    && !line.contains("ssh -")
                {
                    assert!(
                        flags.contains(word),
                        "{rel}: unknown flag {word} in: {line}"
                    );
                }
            }
        }
        // Environment variables of converge's own, and of its testbed.
        for word in text.split(|c: char| !(c.is_ascii_uppercase() || c == '_')) {
            if word.starts_with("CONVERGE_TESTBED_") {
                assert!(
                    bed.contains(word),
                    "{rel}: {word} is written neither by tests/testbed/up or services.sh nor read by tests/support"
                );
            } else if word.starts_with("CONVERGE_") && word.len() > 9 {
                assert!(
                    sources.contains(word),
                    "{rel}: {word} is read nowhere in src/"
                );
            }
        }
        // Relative links.
        for part in text.split("](").skip(1) {
            let target = part.split(')').next().unwrap_or("");
            if target.starts_with("http") {
                continue;
            }
            let file = target.split('#').next().unwrap_or("");
            if !file.is_empty() {
                let base = root.join(rel);
                let dir = base.parent().expect("a page is in a directory");
                assert!(dir.join(file).exists(), "{rel}: broken link {target}");
            }
        }
    }
}

#[test]
fn every_builder_of_the_desired_state_is_a_builder_choice_and_documented() {
    use clap::CommandFactory;
    let schema = schemars::schema_for!(converge::desired::schema::BuilderKind).to_value();
    // One `{"const": name}` per variant (each carries its doc comment).
    let kinds: Vec<String> = schema["oneOf"]
        .as_array()
        .unwrap_or_else(|| panic!("BuilderKind's schema is one const per variant: {schema}"))
        .iter()
        .map(|v| v["const"].as_str().expect("a builder's name").to_string())
        .collect();
    assert!(kinds.len() >= 6, "{kinds:?}");
    let cli = converge::cli::Cli::command();
    let build = cli.find_subcommand("build").expect("converge build");
    let choices: Vec<String> = build
        .get_arguments()
        .find(|a| a.get_long() == Some("builder"))
        .expect("--builder")
        .get_possible_values()
        .iter()
        .map(|v| v.get_name().to_string())
        .collect();
    assert_eq!(
        choices, kinds,
        "--builder mirrors the desired state's builders"
    );
    let row = doc("docs/desired-state.md")
        .lines()
        .find(|l| l.starts_with("| `builder` |"))
        .expect("desired-state.md has the stack's `builder` row")
        .to_string();
    let images = doc("docs/images.md");
    for k in &kinds {
        assert!(
            row.contains(&format!("`{k}`")),
            "desired-state.md's builder row lacks `{k}`: {row}"
        );
        assert!(
            images.contains(&format!("| `{k}` |")),
            "images.md's builders table lacks `{k}`"
        );
    }
}
