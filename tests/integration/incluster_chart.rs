//! charts/converge as helm renders it (the bed's helm): what an installation grants and runs.
//! Installing it on the bed's real node needs the image and a git server: docs/in-cluster.md's
//! testbed block does that.

use std::path::Path;

use serde_json::Value;

use crate::support::{helm, run_ok};

fn chart() -> String {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("charts/converge")
        .display()
        .to_string()
}

/// `helm template` with `sets`, as JSON documents (through serde_yaml).
fn render(sets: &[&str]) -> Vec<Value> {
    let mut cmd = helm();
    cmd.args(["template", "converge", &chart(), "-n", "converge"]);
    for s in sets {
        cmd.args(["--set", s]);
    }
    let out = run_ok(&mut cmd);
    serde_yaml_ng::Deserializer::from_str(&out)
        .filter_map(|d| serde::Deserialize::deserialize(d).ok())
        .filter(|v: &Value| v.is_object())
        .collect()
}

fn of_kind<'a>(docs: &'a [Value], kind: &str) -> Vec<&'a Value> {
    docs.iter().filter(|d| d["kind"] == kind).collect()
}

const REMOTE: &str = "git.remote=ssh://git@git.example/team/deploy.git";

#[test]
fn helm_lint_is_clean_and_a_missing_remote_is_refused_with_its_value_named() {
    run_ok(helm().args(["lint", &chart(), "--strict", "--set", REMOTE]));
    let out = helm()
        .args(["template", "converge", &chart()])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("git.remote is required"), "{err}");
}

#[test]
fn two_standby_replicas_run_with_probes_the_pod_identity_and_the_instance() {
    let docs = render(&[REMOTE]);
    let d = of_kind(&docs, "Deployment")[0];
    assert_eq!(d["spec"]["replicas"], 2);
    let pod = &d["spec"]["template"];
    assert_eq!(
        pod["metadata"]["labels"]["app.kubernetes.io/name"],
        "converge"
    );
    let c = &pod["spec"]["containers"][0];
    let args: Vec<&str> = c["args"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(Value::as_str)
        .collect();
    let after = |flag: &str| {
        let i = args
            .iter()
            .position(|a| *a == flag)
            .unwrap_or_else(|| panic!("{flag} missing: {args:?}"));
        args[i + 1]
    };
    assert_eq!(args[0], "run");
    assert_eq!(after("--remote"), "ssh://git@git.example/team/deploy.git");
    assert_eq!(after("--repo"), "/var/lib/converge/checkout");
    assert_eq!(after("--instance"), "converge/converge");
    assert_eq!(after("--listen"), "0.0.0.0:8080");
    assert_eq!(after("--stack"), "dev");
    assert!(args.contains(&"--standby"));
    assert_eq!(c["livenessProbe"]["httpGet"]["path"], "/healthz");
    assert_eq!(c["readinessProbe"]["httpGet"]["path"], "/readyz");
    let env: Vec<&str> = c["env"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|e| e["name"].as_str())
        .collect();
    for name in [
        "POD_NAME",
        "POD_NAMESPACE",
        "CONVERGE_SSH_KEY",
        "CONVERGE_KNOWN_HOSTS",
    ] {
        assert!(env.contains(&name), "{name} missing: {env:?}");
    }
    assert_eq!(pod["metadata"]["annotations"]["prometheus.io/port"], "8080");
    // Webhooks reach the leader only.
    let hook = of_kind(&docs, "Service")
        .into_iter()
        .find(|s| s["metadata"]["name"] == "converge-webhook")
        .expect("the webhook Service");
    assert_eq!(hook["spec"]["selector"]["converge.dev/role"], "leader");
}

#[test]
fn rbac_is_namespaced_per_stack_with_no_cluster_admin_and_extra_rules_extend_each_role() {
    let docs = render(&[
        REMOTE,
        "stacks[0].name=dev",
        "stacks[0].namespace=team-dev",
        "stacks[1].name=staging",
        "stacks[1].namespace=team-staging",
        "extraRules[0].apiGroups[0]=autoscaling",
        "extraRules[0].resources[0]=horizontalpodautoscalers",
        "extraRules[0].verbs[0]=*",
    ]);
    let roles: Vec<&Value> = of_kind(&docs, "Role")
        .into_iter()
        .filter(|r| r["metadata"]["namespace"] != "converge")
        .collect();
    let namespaces: Vec<&str> = roles
        .iter()
        .filter_map(|r| r["metadata"]["namespace"].as_str())
        .collect();
    assert_eq!(namespaces, ["team-dev", "team-staging"]);
    for r in &roles {
        let text = r["rules"].to_string();
        for kind in [
            "deployments",
            "statefulsets",
            "jobs",
            "leases",
            "pods/log",
            "events",
            "horizontalpodautoscalers",
        ] {
            assert!(text.contains(kind), "{kind} missing from {text}");
        }
    }
    assert_eq!(
        of_kind(&docs, "RoleBinding").len(),
        3,
        "one per stack and the Pod's own"
    );
    let cluster = of_kind(&docs, "ClusterRole");
    assert_eq!(cluster.len(), 1);
    let rules = cluster[0]["rules"].to_string();
    assert!(
        !rules.contains("\"*\""),
        "no wildcard cluster-wide: {rules}"
    );
    assert!(
        rules.contains("namespaces") && rules.contains("nodes"),
        "{rules}"
    );
    for b in of_kind(&docs, "ClusterRoleBinding") {
        assert_ne!(b["roleRef"]["name"], "cluster-admin");
    }
    // With more than one stack, converge manages every stack of the repository: no --stack.
    let args = of_kind(&docs, "Deployment")[0]["spec"]["template"]["spec"]["containers"][0]["args"]
        .to_string();
    assert!(!args.contains("--stack"), "{args}");
    let ns = of_kind(&docs, "Namespace");
    assert_eq!(ns.len(), 2);
    assert_eq!(
        ns[0]["metadata"]["annotations"]["helm.sh/resource-policy"],
        "keep"
    );
}
