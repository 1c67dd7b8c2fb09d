//! Proves the testbed is a real cluster and a real Docker engine: every later
//! integration test stands on what is checked here.

use std::time::Duration;

use k8s_openapi::api::apps::v1::{Deployment, StatefulSet};
use k8s_openapi::api::batch::v1::Job;
use k8s_openapi::api::core::v1::{ConfigMap, Namespace, PersistentVolumeClaim, Pod};
use kube::api::{Api, ListParams, Patch, PatchParams, PostParams};
use kube::runtime::wait::{conditions, Condition};
use serde_json::json;

use crate::support::{self, TestNamespace, DEFAULT_TIMEOUT, FAIL_LABEL};

fn deployment(name: &str, replicas: i32, pod_labels: serde_json::Value) -> Deployment {
    let mut labels = json!({ "app": name });
    if let (Some(l), Some(extra)) = (labels.as_object_mut(), pod_labels.as_object()) {
        l.extend(extra.clone());
    }
    serde_json::from_value(json!({
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": { "name": name },
        "spec": {
            "replicas": replicas,
            "selector": { "matchLabels": { "app": name } },
            "template": {
                "metadata": { "labels": labels },
                "spec": { "containers": [{ "name": "app", "image": "converge.invalid/smoke:1" }] }
            }
        }
    }))
    .expect("deployment")
}

fn deployment_available(replicas: i32) -> impl Condition<Deployment> {
    move |d: Option<&Deployment>| {
        let Some(d) = d else { return false };
        let Some(s) = &d.status else { return false };
        s.observed_generation == d.metadata.generation
            && s.available_replicas == Some(replicas)
            && s.updated_replicas == Some(replicas)
            && s.ready_replicas == Some(replicas)
    }
}

#[tokio::test]
async fn a_deployment_and_a_statefulset_with_a_volume_claim_become_ready() {
    let ns = TestNamespace::new("smoke-ready").await;

    let deployments: Api<Deployment> = ns.api();
    deployments
        .create(&PostParams::default(), &deployment("web", 2, json!({})))
        .await
        .expect("create deployment");

    let sts: StatefulSet = serde_json::from_value(json!({
        "apiVersion": "apps/v1",
        "kind": "StatefulSet",
        "metadata": { "name": "db" },
        "spec": {
            "replicas": 1,
            "serviceName": "db",
            "selector": { "matchLabels": { "app": "db" } },
            "template": {
                "metadata": { "labels": { "app": "db" } },
                "spec": { "containers": [{
                    "name": "postgres",
                    "image": "converge.invalid/postgres:16",
                    "volumeMounts": [{ "name": "data", "mountPath": "/var/lib/postgresql/data" }]
                }] }
            },
            "volumeClaimTemplates": [{
                "metadata": { "name": "data" },
                "spec": {
                    "accessModes": ["ReadWriteOnce"],
                    "resources": { "requests": { "storage": "1Gi" } }
                }
            }]
        }
    }))
    .expect("statefulset");
    let statefulsets: Api<StatefulSet> = ns.api();
    statefulsets
        .create(&PostParams::default(), &sts)
        .await
        .expect("create statefulset");

    support::wait_for(
        &deployments,
        "web",
        deployment_available(2),
        DEFAULT_TIMEOUT,
    )
    .await;
    let ready = |s: Option<&StatefulSet>| {
        s.and_then(|s| s.status.as_ref())
            .is_some_and(|st| st.ready_replicas == Some(1) && st.available_replicas == Some(1))
    };
    support::wait_for(&statefulsets, "db", ready, DEFAULT_TIMEOUT).await;

    let claims: Api<PersistentVolumeClaim> = ns.api();
    let claim = claims.get("data-db-0").await.expect("the claim of db-0");
    assert_eq!(claim.status.and_then(|s| s.phase).as_deref(), Some("Bound"));
    assert_eq!(
        claim.spec.and_then(|s| s.storage_class_name).as_deref(),
        Some("standard")
    );

    let pods: Api<Pod> = ns.api();
    let running = pods.list(&ListParams::default()).await.expect("list pods");
    assert_eq!(running.items.len(), 3, "2 web pods and 1 db pod");
    for pod in running.items {
        let spec = pod.spec.expect("pod spec");
        assert_eq!(
            spec.node_name.as_deref(),
            Some(support::testbed().node.as_str())
        );
        assert_eq!(pod.status.and_then(|s| s.phase).as_deref(), Some("Running"));
    }
    ns.cleanup().await;
}

#[tokio::test]
async fn a_server_side_apply_that_conflicts_with_another_field_manager_gets_409() {
    let ns = TestNamespace::new("smoke-ssa").await;
    let configmaps: Api<ConfigMap> = ns.api();
    let cm = |value: &str| {
        json!({
            "apiVersion": "v1",
            "kind": "ConfigMap",
            "metadata": { "name": "settings" },
            "data": { "mode": value }
        })
    };
    configmaps
        .patch(
            "settings",
            &PatchParams::apply("someone-else"),
            &Patch::Apply(cm("a")),
        )
        .await
        .expect("first apply");

    let err = configmaps
        .patch(
            "settings",
            &PatchParams::apply("converge"),
            &Patch::Apply(cm("b")),
        )
        .await
        .expect_err("a conflicting apply without force must fail");
    match err {
        kube::Error::Api(status) => {
            assert_eq!(status.code, 409, "{status:?}");
            assert!(
                status.message.contains("someone-else"),
                "{}",
                status.message
            );
        }
        other => panic!("expected a 409 from the API server, got {other}"),
    }

    let forced = configmaps
        .patch(
            "settings",
            &PatchParams::apply("converge").force(),
            &Patch::Apply(cm("b")),
        )
        .await
        .expect("forced apply takes the field over");
    assert_eq!(forced.data.unwrap()["mode"], "b");
    ns.cleanup().await;
}

#[tokio::test]
async fn a_server_side_dry_run_returns_defaulted_fields_and_stores_nothing() {
    let ns = TestNamespace::new("smoke-dry").await;
    let deployments: Api<Deployment> = ns.api();
    let params = PatchParams::apply("converge").dry_run();
    let applied = deployments
        .patch(
            "dry",
            &params,
            &Patch::Apply(deployment("dry", 1, json!({}))),
        )
        .await
        .expect("dry-run apply");

    let spec = applied.spec.expect("spec");
    assert_eq!(spec.revision_history_limit, Some(10));
    assert_eq!(spec.progress_deadline_seconds, Some(600));
    assert_eq!(
        spec.strategy.and_then(|s| s.type_).as_deref(),
        Some("RollingUpdate")
    );
    let pod = spec.template.spec.expect("pod spec");
    assert_eq!(pod.restart_policy.as_deref(), Some("Always"));
    assert_eq!(pod.dns_policy.as_deref(), Some("ClusterFirst"));
    let container = &pod.containers[0];
    assert_eq!(
        container.termination_message_path.as_deref(),
        Some("/dev/termination-log")
    );
    assert_eq!(container.image_pull_policy.as_deref(), Some("IfNotPresent"));

    assert!(
        deployments.get_opt("dry").await.expect("get").is_none(),
        "dry run stored the object"
    );
    ns.cleanup().await;
}

#[tokio::test]
async fn deleting_a_namespace_garbage_collects_its_pods() {
    let ns = TestNamespace::new("smoke-gc").await;
    let name = ns.name().to_string();
    let deployments: Api<Deployment> = ns.api();
    deployments
        .create(&PostParams::default(), &deployment("web", 2, json!({})))
        .await
        .expect("create deployment");
    support::wait_for(
        &deployments,
        "web",
        deployment_available(2),
        DEFAULT_TIMEOUT,
    )
    .await;

    let client = ns.client();
    let pods: Api<Pod> = ns.api();
    let before = pods.list(&ListParams::default()).await.expect("list pods");
    assert_eq!(before.items.len(), 2);

    ns.cleanup().await;

    let namespaces: Api<Namespace> = Api::all(client.clone());
    assert!(namespaces
        .get_opt(&name)
        .await
        .expect("get namespace")
        .is_none());
    let all_pods: Api<Pod> = Api::all(client);
    let left = all_pods
        .list(&ListParams::default().fields(&format!("metadata.namespace={name}")))
        .await
        .expect("list pods");
    assert!(left.items.is_empty(), "pods left behind: {:?}", left.items);
}

#[tokio::test]
async fn the_api_server_reports_the_pinned_kubernetes_version() {
    let client = support::client().await;
    let info = client.apiserver_version().await.expect("/version");
    let pinned = support::pinned_k8s_version();
    assert_eq!(info.git_version, pinned);
    assert_eq!(support::testbed().k8s_version, pinned);
    let minor = pinned.trim_start_matches("v1.").split('.').next().unwrap();
    assert_eq!(info.major, "1");
    assert_eq!(info.minor, minor);
    assert_eq!(info.git_tree_state, "clean");
}

#[tokio::test]
async fn a_from_scratch_image_builds_on_the_testbed_docker_engine() {
    let dir = tempfile::tempdir().expect("tempdir");
    std::fs::write(dir.path().join("hello.txt"), "hello from converge\n").unwrap();
    std::fs::write(
        dir.path().join("Dockerfile"),
        "FROM scratch\nCOPY hello.txt /hello.txt\nLABEL org.opencontainers.image.title=converge-smoke\n",
    )
    .unwrap();
    let tag = format!("{}:test", support::unique_name("converge-smoke"));

    support::run_ok(
        support::docker()
            .args(["build", "-q", "-t", &tag])
            .arg(dir.path()),
    );
    let inspected = support::run_ok(support::docker().args([
        "image",
        "inspect",
        "--format",
        "{{json .Config.Labels}} {{len .RootFS.Layers}}",
        &tag,
    ]));
    assert!(inspected.contains("converge-smoke"), "{inspected}");
    assert!(
        inspected.trim().ends_with(" 1"),
        "one layer expected: {inspected}"
    );
    support::run_ok(support::docker().args(["image", "rm", &tag]));
}

// The two tests below check the bed's kwok stages that later tests rely on:
// Job Pods complete, and a label makes a Pod fail in a chosen way.

#[tokio::test]
async fn a_job_runs_to_completion_on_the_fake_node() {
    let ns = TestNamespace::new("smoke-job").await;
    let job: Job = serde_json::from_value(json!({
        "apiVersion": "batch/v1",
        "kind": "Job",
        "metadata": { "name": "migrate" },
        "spec": {
            "backoffLimit": 0,
            "template": { "spec": {
                "restartPolicy": "Never",
                "containers": [{ "name": "migrate", "image": "converge.invalid/migrate:1" }]
            } }
        }
    }))
    .unwrap();
    let jobs: Api<Job> = ns.api();
    jobs.create(&PostParams::default(), &job)
        .await
        .expect("create job");
    support::wait_for(
        &jobs,
        "migrate",
        conditions::is_job_completed(),
        DEFAULT_TIMEOUT,
    )
    .await;
    let done = jobs.get("migrate").await.unwrap();
    assert_eq!(done.status.and_then(|s| s.succeeded), Some(1));
    ns.cleanup().await;
}

#[tokio::test]
async fn pods_labelled_to_fail_crash_loop_fail_image_pulls_or_never_become_ready() {
    let ns = TestNamespace::new("smoke-fail").await;
    let pods: Api<Pod> = ns.api();
    for mode in ["crashloop", "imagepull", "unready", "error"] {
        let pod: Pod = serde_json::from_value(json!({
            "apiVersion": "v1",
            "kind": "Pod",
            "metadata": { "name": mode, "labels": { FAIL_LABEL: mode } },
            "spec": { "containers": [{ "name": "app", "image": "converge.invalid/app:1" }] }
        }))
        .unwrap();
        pods.create(&PostParams::default(), &pod)
            .await
            .expect("create pod");
    }

    let waiting_reason = |reason: &'static str| {
        move |p: Option<&Pod>| {
            p.and_then(|p| p.status.as_ref())
                .and_then(|s| s.container_statuses.as_ref())
                .and_then(|cs| cs.first())
                .and_then(|c| c.state.as_ref())
                .and_then(|st| st.waiting.as_ref())
                .is_some_and(|w| w.reason.as_deref() == Some(reason))
        }
    };
    let timeout = Duration::from_secs(30);
    support::wait_for(
        &pods,
        "crashloop",
        waiting_reason("CrashLoopBackOff"),
        timeout,
    )
    .await;
    support::wait_for(
        &pods,
        "imagepull",
        waiting_reason("ImagePullBackOff"),
        timeout,
    )
    .await;
    let phase = |want: &'static str| {
        move |p: Option<&Pod>| {
            p.and_then(|p| p.status.as_ref())
                .and_then(|s| s.phase.as_deref())
                == Some(want)
        }
    };
    support::wait_for(&pods, "unready", phase("Running"), timeout).await;
    support::wait_for(&pods, "error", phase("Failed"), timeout).await;

    for name in ["crashloop", "imagepull", "unready", "error"] {
        let pod = pods.get(name).await.unwrap();
        let ready = pod
            .status
            .and_then(|s| s.conditions)
            .unwrap_or_default()
            .into_iter()
            .find(|c| c.type_ == "Ready")
            .map(|c| c.status);
        assert_eq!(ready.as_deref(), Some("False"), "{name} must not be Ready");
    }
    ns.cleanup().await;
}
