//! Unit tests of the diagnosis rules, on JSON fixtures.

use super::*;
use crate::explain::{EventLine, LogTail, NodeRoom, SecretRef, StorageClass};
use serde_json::json;

fn ev(pods: Vec<Value>) -> Evidence {
    Evidence {
        stack: "todo".into(),
        namespace: "apps".into(),
        component: "backend".into(),
        pods,
        ..Evidence::default()
    }
}

fn waiting_pod(reason: &str, message: &str, image: &str) -> Value {
    json!({"metadata": {"name": "backend-1"},
        "spec": {"containers": [{"name": "backend", "image": image}]},
        "status": {"phase": "Pending", "containerStatuses": [{"name": "backend", "image": image, "ready": false, "restartCount": 0,
            "state": {"waiting": {"reason": reason, "message": message}}}]}})
}

#[test]
fn an_image_missing_from_the_runtime_suggests_build_or_minikube_image_load() {
    let e = ev(vec![waiting_pod(
        "ErrImageNeverPull",
        "Container image \"todo-backend:3f2a\" is not present with pull policy of Never",
        "todo-backend:3f2a",
    )]);
    let d = &diagnose(&e)[0];
    assert_eq!(d.rule, IMAGE_NOT_PRESENT);
    assert!(d.summary.contains("todo-backend:3f2a"), "{d:?}");
    assert!(d.next_step.contains("converge build --stack todo"));
    assert!(d
        .next_step
        .contains("minikube image load todo-backend:3f2a"));
}

#[test]
fn an_image_pull_back_off_from_a_registry_says_to_check_the_registry() {
    let e = ev(vec![waiting_pod(
        "ImagePullBackOff",
        "Back-off pulling image",
        "ghcr.io/acme/backend:1",
    )]);
    let d = &diagnose(&e)[0];
    assert_eq!(d.rule, IMAGE_NOT_PRESENT);
    assert!(
        d.next_step.contains("docker pull ghcr.io/acme/backend:1"),
        "{d:?}"
    );
}

#[test]
fn a_crash_loop_shows_the_exit_code_and_the_log_tail() {
    let mut e = ev(vec![json!({"metadata": {"name": "backend-1"},
        "spec": {"containers": [{"name": "backend"}]},
        "status": {"phase": "Running", "containerStatuses": [{"name": "backend", "ready": false, "restartCount": 5,
            "lastState": {"terminated": {"exitCode": 3, "reason": "Error", "finishedAt": "2026-01-01T00:00:00Z"}},
            "state": {"waiting": {"reason": "CrashLoopBackOff", "message": "back-off 5m0s"}}}]}})]);
    e.logs.push(LogTail {
        pod: "backend-1".into(),
        container: "backend".into(),
        previous: true,
        lines: vec!["KeyError: 'DATABASE_URL'".into()],
    });
    let d = &diagnose(&e)[0];
    assert_eq!(d.rule, CRASH_LOOP);
    assert!(d.summary.contains("exit code 3"), "{d:?}");
    assert!(d
        .evidence
        .iter()
        .any(|l| l.contains("KeyError: 'DATABASE_URL'")));
    assert!(d
        .next_step
        .contains("kubectl logs -n apps backend-1 -c backend --previous"));
}

#[test]
fn a_missing_secret_gives_the_create_command_with_every_missing_key() {
    let mut e = ev(vec![]);
    e.secret_refs = vec![
        SecretRef {
            secret: "todo-secrets".into(),
            key: "database-url".into(),
            optional: false,
        },
        SecretRef {
            secret: "todo-secrets".into(),
            key: "jwt-secret".into(),
            optional: false,
        },
        SecretRef {
            secret: "extra".into(),
            key: "token".into(),
            optional: true,
        },
    ];
    e.secrets.insert("todo-secrets".into(), None);
    e.secrets.insert("extra".into(), None);
    let d = &diagnose(&e)[0];
    assert_eq!(d.rule, MISSING_SECRET);
    assert!(d.next_step.contains(
        "kubectl create secret generic todo-secrets -n apps --from-literal=database-url=<value> --from-literal=jwt-secret=<value>"
    ), "{d:?}");
    assert!(
        !d.summary.contains("extra"),
        "optional references are not required"
    );
}

#[test]
fn a_missing_key_gives_the_patch_command_and_lists_key_names_only() {
    let mut e = ev(vec![]);
    e.secret_refs = vec![SecretRef {
        secret: "s".into(),
        key: "jwt-secret".into(),
        optional: false,
    }];
    e.secrets
        .insert("s".into(), Some(vec!["database-url".into()]));
    let d = &diagnose(&e)[0];
    assert_eq!(d.rule, MISSING_SECRET);
    assert!(d.summary.contains("has no key `jwt-secret`"));
    assert!(d
        .next_step
        .contains("kubectl patch secret s -n apps --type merge"));
    assert!(d.evidence.iter().any(|l| l.contains("[database-url]")));
}

#[test]
fn create_container_config_error_alone_is_a_missing_secret() {
    let e = ev(vec![waiting_pod(
        "CreateContainerConfigError",
        "secret \"todo-secrets\" not found",
        "x:1",
    )]);
    let d = &diagnose(&e)[0];
    assert_eq!(d.rule, MISSING_SECRET);
    assert!(
        d.next_step
            .contains("secret \\\"todo-secrets\\\" not found")
            || d.next_step.contains("todo-secrets")
    );
}

#[test]
fn unschedulable_for_cpu_names_requested_and_free_numbers() {
    let mut e = ev(vec![json!({"metadata": {"name": "backend-1"},
        "spec": {"containers": [{"name": "backend", "resources": {"requests": {"cpu": "64", "memory": "256Mi"}}}]},
        "status": {"phase": "Pending", "conditions": [{"type": "PodScheduled", "status": "False", "reason": "Unschedulable",
            "message": "0/1 nodes are available: 1 Insufficient cpu."}]}})]);
    e.nodes.push(NodeRoom {
        name: "minikube".into(),
        allocatable_cpu_milli: 4000,
        allocatable_memory: 8 << 30,
        requested_cpu_milli: 1250,
        requested_memory: 1 << 30,
    });
    let d = &diagnose(&e)[0];
    assert_eq!(d.rule, UNSCHEDULABLE);
    assert!(d.summary.contains("requests 64 CPU, 256Mi"), "{d:?}");
    assert!(
        d.evidence
            .iter()
            .any(|l| l.contains("allocatable 4 CPU / 8Gi") && l.contains("free 2750m / 7Gi")),
        "{d:?}"
    );
    assert!(d
        .next_step
        .contains("resources.requests.cpu to at most 2750m"));
    assert!(!d.next_step.contains("requests.memory"));
}

#[test]
fn a_failing_readiness_probe_shows_the_probe_and_the_response() {
    let mut e = ev(vec![json!({"metadata": {"name": "backend-1"},
        "spec": {"containers": [{"name": "backend", "readinessProbe": {"httpGet": {"path": "/healthz", "port": 8000}, "periodSeconds": 5}}]},
        "status": {"phase": "Running", "containerStatuses": [{"name": "backend", "ready": false, "restartCount": 0, "state": {"running": {}}}]}})]);
    e.events.push(EventLine {
        object: "Pod/backend-1".into(),
        kind: "Warning".into(),
        reason: "Unhealthy".into(),
        message: "Readiness probe failed: HTTP probe failed with statuscode: 503".into(),
        count: 12,
        last: String::new(),
    });
    let d = &diagnose(&e)[0];
    assert_eq!(d.rule, READINESS);
    assert!(d.summary.contains("statuscode: 503"), "{d:?}");
    assert!(
        d.evidence
            .iter()
            .any(|l| l.contains("HTTP GET /healthz on port 8000 every 5s")),
        "{d:?}"
    );
    assert!(d.next_step.contains("curl -i localhost:8080/healthz"));
}

#[test]
fn a_pending_claim_without_any_storage_class_suggests_the_minikube_addons() {
    let mut e = ev(vec![]);
    e.claims.push(json!({"metadata": {"name": "data-postgres-0"}, "spec": {"resources": {"requests": {"storage": "1Gi"}}}, "status": {"phase": "Pending"}}));
    e.events.push(EventLine {
        object: "PersistentVolumeClaim/data-postgres-0".into(),
        kind: "Normal".into(),
        reason: "FailedBinding".into(),
        message: "no persistent volumes available for this claim and no storage class is set"
            .into(),
        count: 3,
        last: String::new(),
    });
    let d = &diagnose(&e)[0];
    assert_eq!(d.rule, CLAIM_PENDING);
    assert!(d.summary.contains("no default StorageClass"), "{d:?}");
    assert!(d
        .next_step
        .contains("minikube addons enable default-storageclass"));
    assert!(d
        .evidence
        .iter()
        .any(|l| l.contains("no storage class is set")));
}

#[test]
fn a_claim_naming_an_unknown_class_lists_the_known_ones() {
    let mut e = ev(vec![]);
    e.claims.push(json!({"metadata": {"name": "c"}, "spec": {"storageClassName": "fast"}, "status": {"phase": "Pending"}}));
    e.storage_classes.push(StorageClass {
        name: "standard".into(),
        default: true,
        provisioner: "x".into(),
    });
    let d = &diagnose(&e)[0];
    assert_eq!(d.rule, CLAIM_PENDING);
    assert!(d.summary.contains("`fast` does not exist"));
    assert!(d.next_step.contains("one of: standard"));
}

#[test]
fn a_claim_waiting_for_its_first_consumer_is_not_a_problem() {
    let mut e = ev(vec![]);
    e.claims.push(json!({"metadata": {"name": "c"}, "spec": {"storageClassName": "standard"}, "status": {"phase": "Pending"}}));
    e.storage_classes.push(StorageClass {
        name: "standard".into(),
        default: true,
        provisioner: "x".into(),
    });
    assert!(claim_pending(&e).is_none());
}

#[test]
fn an_oom_kill_suggests_twice_the_memory_limit_before_the_crash_loop() {
    let e = ev(vec![json!({"metadata": {"name": "backend-1"},
        "spec": {"containers": [{"name": "backend", "resources": {"limits": {"memory": "512Mi"}}}]},
        "status": {"phase": "Running", "containerStatuses": [{"name": "backend", "ready": false, "restartCount": 4,
            "lastState": {"terminated": {"exitCode": 137, "reason": "OOMKilled"}},
            "state": {"waiting": {"reason": "CrashLoopBackOff", "message": "back-off"}}}]}})]);
    let all = diagnose(&e);
    assert_eq!(all[0].rule, OOM_KILLED);
    assert!(all[0].summary.contains("(512Mi)"));
    assert!(all[0].next_step.contains("resources.limits.memory"));
    assert!(all[0].next_step.contains("to 1Gi"), "{:?}", all[0]);
    assert_eq!(
        all[1].rule, CRASH_LOOP,
        "the crash loop is reported after its cause"
    );
}

#[test]
fn a_ready_component_is_healthy_and_an_unready_one_without_a_known_cause_is_unknown() {
    let mut e = ev(vec![]);
    e.workloads.push(json!({"kind": "Deployment", "metadata": {"name": "backend", "generation": 1}, "spec": {"replicas": 1},
        "status": {"observedGeneration": 1, "replicas": 1, "updatedReplicas": 1, "availableReplicas": 1, "readyReplicas": 1}}));
    let d = &diagnose(&e)[0];
    assert_eq!(d.rule, HEALTHY);
    assert!(!d.is_problem());
    e.workloads[0]["status"]["availableReplicas"] = json!(0);
    let d = &diagnose(&e)[0];
    assert_eq!(d.rule, UNKNOWN);
    assert!(d.next_step.contains("--ai"));
}
