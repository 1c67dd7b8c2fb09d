//! The todo-chatbot Helm chart (`charts/todo-chatbot`), checked with the real
//! helm v3 CLI of the testbed and against the testbed's apiserver:
//! `helm lint --strict`, a matrix of values that must all render (with what
//! each case must change), the values schema's rejections, the no-secret and
//! label rules, the container hardening rules, and a server-side dry-run apply
//! of every rendered object in a fresh namespace.

use std::collections::BTreeSet;
use std::io::Write as _;
use std::path::{Path, PathBuf};

use kube::api::{Api, DynamicObject, Patch, PatchParams};
use kube::core::GroupVersionKind;
use kube::discovery::{self, Scope};
use serde::Deserialize as _;
use serde_json::Value;

use crate::support::{self, TestNamespace};

const RELEASE: &str = "todo";
/// The values keys that own objects (`app.kubernetes.io/component`).
const COMPONENTS: [&str; 4] = ["frontend", "backend", "postgres", "migrations"];
const SCHEMA_ERROR: &str = "values don't meet the specifications of the schema";

fn chart_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("charts/todo-chatbot")
}

/// The testbed's Kubernetes version, for `--kube-version`: `helm template`
/// does not ask a cluster, and a helm built without the release ldflags
/// assumes v1.20.0, below the chart's `kubeVersion: >=1.27.0-0`.
fn kube_version() -> String {
    support::testbed().k8s_version.clone()
}

// --- running helm ------------------------------------------------------------

struct HelmRun {
    ok: bool,
    stdout: String,
    stderr: String,
}

fn run_helm(args: &[&str]) -> HelmRun {
    let mut cmd = support::helm();
    cmd.args(args);
    let out = cmd.output().unwrap_or_else(|e| panic!("run {cmd:?}: {e}"));
    HelmRun {
        ok: out.status.success(),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

/// One set of values: chart values files by name plus an inline YAML overlay.
struct Values {
    files: Vec<&'static str>,
    overlay: String,
}

impl Values {
    fn new(files: &[&'static str], overlay: &str) -> Self {
        Values {
            files: files.to_vec(),
            overlay: overlay.to_string(),
        }
    }

    /// `-f` arguments, keeping the overlay's temp file alive while helm runs.
    fn args(&self) -> (Vec<String>, Option<tempfile::NamedTempFile>) {
        let mut args = Vec::new();
        for f in &self.files {
            args.push("-f".to_string());
            args.push(chart_dir().join(f).display().to_string());
        }
        let tmp = if self.overlay.trim().is_empty() {
            None
        } else {
            let mut tmp = tempfile::Builder::new()
                .suffix(".yaml")
                .tempfile()
                .expect("temp values file");
            tmp.write_all(self.overlay.as_bytes())
                .expect("write values overlay");
            args.push("-f".to_string());
            args.push(tmp.path().display().to_string());
            Some(tmp)
        };
        (args, tmp)
    }
}

fn lint(values: &Values) -> HelmRun {
    let (vargs, _tmp) = values.args();
    let chart = chart_dir().display().to_string();
    let kv = kube_version();
    let mut args = vec!["lint", "--strict", "--kube-version", &kv, &chart];
    args.extend(vargs.iter().map(String::as_str));
    run_helm(&args)
}

fn template(namespace: &str, values: &Values) -> HelmRun {
    let (vargs, _tmp) = values.args();
    let chart = chart_dir().display().to_string();
    let kv = kube_version();
    let mut args = vec![
        "template",
        RELEASE,
        &chart,
        "--namespace",
        namespace,
        "--kube-version",
        &kv,
    ];
    args.extend(vargs.iter().map(String::as_str));
    run_helm(&args)
}

/// The objects `helm template` printed, and the templates they came from.
struct Rendered {
    objects: Vec<Value>,
    sources: BTreeSet<String>,
}

fn render(namespace: &str, values: &Values) -> Rendered {
    let run = template(namespace, values);
    assert!(run.ok, "helm template failed:\n{}", run.stderr);
    let sources = run
        .stdout
        .lines()
        .filter_map(|l| l.strip_prefix("# Source: todo-chatbot/"))
        .map(str::to_string)
        .collect();
    let mut objects = Vec::new();
    for doc in serde_yaml_ng::Deserializer::from_str(&run.stdout) {
        let v = Value::deserialize(doc)
            .unwrap_or_else(|e| panic!("rendered YAML does not parse: {e}\n{}", run.stdout));
        if !v.is_null() {
            objects.push(v);
        }
    }
    Rendered { objects, sources }
}

impl Rendered {
    fn of_kind(&self, kind: &str) -> Vec<&Value> {
        self.objects.iter().filter(|o| o["kind"] == kind).collect()
    }

    fn named(&self, kind: &str, name: &str) -> Option<&Value> {
        self.objects
            .iter()
            .find(|o| o["kind"] == kind && o["metadata"]["name"] == name)
    }

    fn get(&self, kind: &str, name: &str) -> &Value {
        self.named(kind, name)
            .unwrap_or_else(|| panic!("no {kind} {name} rendered; have {:?}", self.ids()))
    }

    fn ids(&self) -> Vec<String> {
        self.objects.iter().map(id).collect()
    }
}

fn id(o: &Value) -> String {
    format!(
        "{}/{}",
        o["kind"].as_str().unwrap_or("?"),
        o["metadata"]["name"].as_str().unwrap_or("?")
    )
}

fn name(component: &str) -> String {
    format!("{RELEASE}-todo-chatbot-{component}")
}

/// Pod specs anywhere in an object (Deployment, StatefulSet, Job templates).
fn pod_specs(o: &Value) -> Vec<&Value> {
    let spec = &o["spec"]["template"]["spec"];
    if spec.is_object() {
        vec![spec]
    } else {
        vec![]
    }
}

fn containers(pod: &Value) -> Vec<&Value> {
    ["initContainers", "containers"]
        .iter()
        .flat_map(|k| pod[*k].as_array().into_iter().flatten())
        .collect()
}

fn main_container<'a>(r: &'a Rendered, kind: &str, component: &str) -> &'a Value {
    &r.get(kind, &name(component))["spec"]["template"]["spec"]["containers"][0]
}

fn env_value<'a>(container: &'a Value, var: &str) -> Option<&'a Value> {
    container["env"]
        .as_array()?
        .iter()
        .find(|e| e["name"] == var)
}

/// A name that looks like it holds a credential.
fn credential_like(name: &str) -> bool {
    let n = name.to_ascii_uppercase();
    [
        "PASSWORD",
        "PASSWD",
        "SECRET",
        "TOKEN",
        "API_KEY",
        "APIKEY",
        "PRIVATE_KEY",
        "ACCESS_KEY",
        "CREDENTIAL",
        "DATABASE_URL",
    ]
    .iter()
    .any(|w| n.contains(w))
}

// --- the matrix ----------------------------------------------------------------

struct Case {
    name: &'static str,
    values: Values,
    check: fn(&Rendered),
}

fn digest() -> String {
    format!("sha256:{}", "0123456789abcdef".repeat(4))
}

fn matrix() -> Vec<Case> {
    vec![
        Case {
            name: "the defaults",
            values: Values::new(&[], ""),
            check: |r| {
                assert_eq!(r.of_kind("Deployment").len(), 2);
                assert_eq!(r.of_kind("StatefulSet").len(), 1);
                assert!(r.of_kind("Ingress").is_empty());
                assert_eq!(r.of_kind("PodDisruptionBudget").len(), 2, "2 replicas each: a PDB each");
                let svc = r.get("Service", &name("frontend"));
                assert_eq!(svc["spec"]["type"], "NodePort");
                assert_eq!(svc["spec"]["ports"][0]["nodePort"], 30080);
                assert_eq!(r.get("Service", &name("backend"))["spec"]["type"], "ClusterIP");
                assert_eq!(r.get("Service", &name("postgres"))["spec"]["clusterIP"], "None");
                let sts = r.get("StatefulSet", &name("postgres"));
                assert_eq!(sts["spec"]["serviceName"], name("postgres"));
                let pvc = &sts["spec"]["volumeClaimTemplates"][0]["spec"];
                assert_eq!(pvc["resources"]["requests"]["storage"], "1Gi");
                assert!(pvc.get("storageClassName").is_none(), "\"\" must leave the cluster default");
                assert_eq!(main_container(r, "Deployment", "backend")["image"], "todo-backend:dev");
                assert_eq!(main_container(r, "Deployment", "frontend")["image"], "todo-frontend:dev");
                assert_eq!(main_container(r, "StatefulSet", "postgres")["image"], "postgres:16-alpine");
                // The frontend's proxy signs the backend's JWTs with the shared secret.
                let jwt = env_value(main_container(r, "Deployment", "frontend"), "JWT_SECRET").expect("frontend JWT_SECRET");
                assert_eq!(jwt["valueFrom"]["secretKeyRef"]["key"], "jwt-secret");
                let job = r.get("Job", &name("migrations"));
                let ann = &job["metadata"]["annotations"];
                assert_eq!(ann["helm.sh/hook"], "post-install,pre-upgrade", "in-chart postgres: post-install");
                assert_eq!(ann["helm.sh/hook-delete-policy"], "before-hook-creation,hook-succeeded");
                assert!(ann["helm.sh/hook-weight"].is_string());
                let cm = r.get("ConfigMap", &format!("{}-config", name("backend")));
                assert_eq!(cm["data"]["BACKEND_URL"], format!("http://{}:8000", name("backend")));
                assert_eq!(cm["data"]["DB_HOST"], name("postgres"));
                // Deployments: zero-downtime rolling updates.
                for d in r.of_kind("Deployment") {
                    assert_eq!(d["spec"]["strategy"]["type"], "RollingUpdate");
                    assert_eq!(d["spec"]["strategy"]["rollingUpdate"]["maxUnavailable"], 0, "{}", id(d));
                }
            },
        },
        Case {
            name: "values-dev.yaml",
            values: Values::new(&["values-dev.yaml"], ""),
            check: |r| {
                assert!(r.of_kind("PodDisruptionBudget").is_empty(), "dev runs one replica each");
                assert_eq!(r.get("Service", &name("frontend"))["spec"]["ports"][0]["nodePort"], 30080);
                let backend = main_container(r, "Deployment", "backend");
                assert_eq!(env_value(backend, "LOG_LEVEL").unwrap()["value"], "debug");
                assert_eq!(backend["imagePullPolicy"], "Never");
            },
        },
        Case {
            name: "values-staging.yaml",
            values: Values::new(&["values-staging.yaml"], ""),
            check: |r| {
                let ing = r.get("Ingress", &name("frontend"));
                assert_eq!(ing["spec"]["ingressClassName"], "nginx");
                assert_eq!(ing["spec"]["tls"][0]["hosts"][0], "todo.staging.local");
                let svc = r.get("Service", &name("frontend"));
                assert_eq!(svc["spec"]["type"], "ClusterIP");
                assert!(svc["spec"]["ports"][0].get("nodePort").is_none(), "no nodePort on a ClusterIP Service");
                assert_eq!(r.of_kind("PodDisruptionBudget").len(), 2);
                let sts = r.get("StatefulSet", &name("postgres"));
                assert_eq!(sts["spec"]["volumeClaimTemplates"][0]["spec"]["resources"]["requests"]["storage"], "5Gi");
            },
        },
        Case {
            name: "ingress on with a class, host and TLS",
            values: Values::new(
                &[],
                "ingress: {enabled: true, className: traefik, host: todo.example.com, tls: [{secretName: todo-tls}]}\n",
            ),
            check: |r| {
                let ing = r.get("Ingress", &name("frontend"));
                assert_eq!(ing["spec"]["rules"][0]["host"], "todo.example.com");
                let backend = &ing["spec"]["rules"][0]["http"]["paths"][0]["backend"]["service"];
                assert_eq!(backend["name"], name("frontend"));
                assert_eq!(backend["port"]["number"], 80);
                assert_eq!(ing["spec"]["tls"][0]["secretName"], "todo-tls");
            },
        },
        Case {
            name: "one replica each: no PodDisruptionBudget",
            values: Values::new(&[], "frontend: {replicas: 1}\nbackend: {replicas: 1}\n"),
            check: |r| assert!(r.of_kind("PodDisruptionBudget").is_empty(), "{:?}", r.ids()),
        },
        Case {
            name: "three replicas each: a PodDisruptionBudget each",
            values: Values::new(&[], "frontend: {replicas: 3}\nbackend: {replicas: 3}\n"),
            check: |r| {
                for c in ["frontend", "backend"] {
                    let pdb = r.get("PodDisruptionBudget", &name(c));
                    assert_eq!(pdb["spec"]["maxUnavailable"], 1);
                    assert_eq!(pdb["spec"]["selector"]["matchLabels"]["app.kubernetes.io/component"], c);
                    assert_eq!(r.get("Deployment", &name(c))["spec"]["replicas"], 3);
                }
            },
        },
        Case {
            name: "zero replicas",
            values: Values::new(&[], "frontend: {replicas: 0}\nbackend: {replicas: 0}\npostgres: {replicas: 0}\n"),
            check: |r| {
                assert!(r.of_kind("PodDisruptionBudget").is_empty());
                assert_eq!(r.get("StatefulSet", &name("postgres"))["spec"]["replicas"], 0);
            },
        },
        Case {
            name: "a NodePort override",
            values: Values::new(&[], "frontend: {service: {type: NodePort, port: 8080, nodePort: 31234}}\n"),
            check: |r| {
                let port = &r.get("Service", &name("frontend"))["spec"]["ports"][0];
                assert_eq!(port["nodePort"], 31234);
                assert_eq!(port["port"], 8080);
                assert_eq!(port["targetPort"], "http");
            },
        },
        Case {
            name: "a LoadBalancer frontend",
            values: Values::new(&[], "frontend: {service: {type: LoadBalancer, port: 80}}\n"),
            check: |r| assert_eq!(r.get("Service", &name("frontend"))["spec"]["type"], "LoadBalancer"),
        },
        Case {
            name: "a storageClass and a larger volume",
            values: Values::new(&[], "postgres: {storage: {size: 10Gi, storageClass: fast-ssd}}\n"),
            check: |r| {
                let pvc = &r.get("StatefulSet", &name("postgres"))["spec"]["volumeClaimTemplates"][0]["spec"];
                assert_eq!(pvc["storageClassName"], "fast-ssd");
                assert_eq!(pvc["resources"]["requests"]["storage"], "10Gi");
            },
        },
        Case {
            name: "migrations off",
            values: Values::new(&[], "migrations: {enabled: false}\n"),
            check: |r| {
                assert!(r.of_kind("Job").is_empty());
                assert!(r.named("ServiceAccount", &name("migrations")).is_none());
            },
        },
        Case {
            name: "a digest image",
            values: Values::new(&[], &format!("backend: {{image: {{repository: todo-backend, tag: abc123, digest: \"{}\"}}}}\n", digest())),
            check: |r| {
                let want = format!("todo-backend@{}", digest());
                assert_eq!(main_container(r, "Deployment", "backend")["image"], want.as_str(), "digest wins over tag");
                assert_eq!(main_container(r, "Job", "migrations")["image"], want.as_str(), "the hook runs the same image");
            },
        },
        Case {
            name: "a content-hash tag as converge sets it",
            values: Values::new(&[], "frontend: {image: {tag: \"0123456789\"}}\n"),
            check: |r| assert_eq!(main_container(r, "Deployment", "frontend")["image"], "todo-frontend:0123456789"),
        },
        Case {
            name: "an external database",
            values: Values::new(&[], "postgres: {enabled: false}\nconfig: {DB_HOST: db.example.internal}\n"),
            check: |r| {
                assert!(r.of_kind("StatefulSet").is_empty());
                assert!(r.named("Service", &name("postgres")).is_none());
                assert!(r.named("ServiceAccount", &name("postgres")).is_none());
                let job = r.get("Job", &name("migrations"));
                assert_eq!(job["metadata"]["annotations"]["helm.sh/hook"], "pre-install,pre-upgrade");
                let cm = r.get("ConfigMap", &format!("{}-config", name("backend")));
                assert_eq!(cm["data"]["DB_HOST"], "db.example.internal");
            },
        },
        Case {
            name: "probe, env, secretEnv and port overrides",
            values: Values::new(
                &[],
                r#"
backend:
  env: {LOG_LEVEL: warning, OPENAI_MODEL: gpt-4o-mini}
  secretEnv:
    - {name: DATABASE_URL, secretName: other-secrets, key: url}
  ports: [{name: api, containerPort: 9000}]
  probes:
    readiness: {path: /readyz, initialDelaySeconds: 0, failureThreshold: 7}
  podAnnotations: {example.com/team: chat}
  podLabels: {example.com/tier: api}
postgres:
  probes:
    liveness: {periodSeconds: 30}
"#,
            ),
            check: |r| {
                let d = r.get("Deployment", &name("backend"));
                let c = &d["spec"]["template"]["spec"]["containers"][0];
                assert_eq!(c["readinessProbe"]["httpGet"]["path"], "/readyz");
                assert_eq!(c["readinessProbe"]["httpGet"]["port"], "api");
                assert_eq!(c["readinessProbe"]["failureThreshold"], 7);
                assert_eq!(c["livenessProbe"]["httpGet"]["path"], "/health", "untouched probes keep their defaults");
                assert_eq!(c["ports"][0]["containerPort"], 9000);
                assert_eq!(env_value(c, "PORT").unwrap()["value"], "9000");
                assert_eq!(env_value(c, "OPENAI_MODEL").unwrap()["value"], "gpt-4o-mini");
                let db = env_value(c, "DATABASE_URL").unwrap();
                assert_eq!(db["valueFrom"]["secretKeyRef"]["name"], "other-secrets");
                assert!(env_value(c, "JWT_SECRET").is_none(), "secretEnv is replaced as a whole list");
                let meta = &d["spec"]["template"]["metadata"];
                assert_eq!(meta["annotations"]["example.com/team"], "chat");
                assert!(meta["annotations"]["checksum/config"].is_string());
                assert_eq!(meta["labels"]["example.com/tier"], "api");
                let svc = r.get("Service", &name("backend"));
                assert_eq!(svc["spec"]["ports"][0]["targetPort"], "api");
                let pg = main_container(r, "StatefulSet", "postgres");
                assert_eq!(pg["livenessProbe"]["periodSeconds"], 30);
            },
        },
        Case {
            name: "fullnameOverride",
            values: Values::new(&[], "fullnameOverride: chat\n"),
            check: |r| {
                assert!(r.named("Deployment", "chat-backend").is_some(), "{:?}", r.ids());
                assert!(r.named("StatefulSet", "chat-postgres").is_some());
                assert_eq!(r.get("ConfigMap", "chat-frontend-config")["data"]["BACKEND_URL"], "http://chat-backend:8000");
            },
        },
    ]
}

// --- tests -------------------------------------------------------------------------

#[test]
fn helm_lint_strict_is_clean_for_the_default_dev_and_staging_values() {
    for files in [
        &[][..],
        &["values-dev.yaml"][..],
        &["values-staging.yaml"][..],
    ] {
        let run = lint(&Values::new(files, ""));
        assert!(
            run.ok,
            "helm lint --strict {files:?} failed:\n{}{}",
            run.stdout, run.stderr
        );
        assert!(
            run.stdout.contains("0 chart(s) failed"),
            "{files:?}:\n{}",
            run.stdout
        );
        for line in run.stdout.lines() {
            // --strict turns warnings into failures; say which, if any, slipped through.
            assert!(
                !line.contains("[WARNING]") && !line.contains("[ERROR]"),
                "{files:?}: {line}"
            );
        }
    }
}

#[test]
fn every_template_renders_for_a_matrix_of_values() {
    let mut sources = BTreeSet::new();
    for case in matrix() {
        let run = lint(&case.values);
        assert!(
            run.ok,
            "{}: helm lint --strict failed:\n{}{}",
            case.name, run.stdout, run.stderr
        );
        let r = render("chart-matrix", &case.values);
        eprintln!("{}: {} objects", case.name, r.objects.len());
        (case.check)(&r);
        sources.extend(r.sources);
    }
    // Each template file rendered something in at least one case.
    let templates = std::fs::read_dir(chart_dir().join("templates")).expect("read templates/");
    for entry in templates {
        let file = entry.unwrap().file_name().into_string().unwrap();
        if file.starts_with('_') || file == "NOTES.txt" {
            continue;
        }
        let source = format!("templates/{file}");
        assert!(
            sources.contains(&source),
            "{source} never rendered; rendered: {sources:?}"
        );
    }
}

#[test]
fn the_values_schema_rejects_bad_values_with_helms_error() {
    let bad: &[(&str, &str, &str)] = &[
        (
            "negative replicas",
            "backend: {replicas: -1}",
            "/backend/replicas",
        ),
        (
            "a bad cpu quantity",
            "backend: {resources: {requests: {cpu: 2 cores}}}",
            "/backend/resources/requests/cpu",
        ),
        (
            "a bad memory quantity",
            "frontend: {resources: {limits: {memory: 12XB}}}",
            "/frontend/resources/limits/memory",
        ),
        (
            "an unknown service type",
            "frontend: {service: {type: Internal}}",
            "/frontend/service/type",
        ),
        (
            "a numeric image tag",
            "backend: {image: {tag: 123}}",
            "/backend/image/tag",
        ),
        (
            "a bad digest",
            "backend: {image: {digest: \"sha256:xyz\"}}",
            "/backend/image/digest",
        ),
        (
            "an unknown pull policy",
            "postgres: {image: {pullPolicy: Sometimes}}",
            "/postgres/image/pullPolicy",
        ),
        ("a typo in a key", "backend: {replica: 3}", "replica"),
        (
            "two postgres replicas",
            "postgres: {replicas: 2}",
            "/postgres/replicas",
        ),
        (
            "a nodePort outside the range",
            "frontend: {service: {nodePort: 80}}",
            "/frontend/service/nodePort",
        ),
        (
            "a password as plain env",
            "postgres: {env: {POSTGRES_PASSWORD: hunter2}}",
            "/postgres/env/POSTGRES_PASSWORD",
        ),
        (
            "an API key in config",
            "config: {OPENAI_API_KEY: sk-123}",
            "/config/OPENAI_API_KEY",
        ),
        (
            "a non-string env value",
            "backend: {env: {WORKERS: 4}}",
            "/backend/env/WORKERS",
        ),
        (
            "a secretEnv without key",
            "backend: {secretEnv: [{name: X, secretName: s}]}",
            "/backend/secretEnv/0",
        ),
        (
            "ingress on without a host",
            "ingress: {enabled: true, host: \"\"}",
            "/ingress/host",
        ),
    ];
    for (what, overlay, path) in bad {
        let run = template("chart-schema", &Values::new(&[], overlay));
        assert!(!run.ok, "{what}: helm accepted {overlay}");
        assert!(
            run.stderr.contains(SCHEMA_ERROR),
            "{what}: not a schema error:\n{}",
            run.stderr
        );
        assert!(
            run.stderr.contains(path),
            "{what}: the error does not name {path}:\n{}",
            run.stderr
        );
        let lint = lint(&Values::new(&[], overlay));
        assert!(!lint.ok, "{what}: helm lint accepted {overlay}");
    }
}

#[test]
fn no_rendered_object_is_a_secret_and_no_credential_is_a_literal_env_value() {
    for case in matrix() {
        let r = render("chart-secrets", &case.values);
        for o in &r.objects {
            assert_ne!(
                o["kind"], "Secret",
                "{}: the chart renders a Secret",
                case.name
            );
            for pod in pod_specs(o) {
                for c in containers(pod) {
                    for e in c["env"].as_array().into_iter().flatten() {
                        let var = e["name"].as_str().unwrap_or_default();
                        if credential_like(var) {
                            assert!(
                                e.get("value").is_none(),
                                "{}: {} sets {var} literally",
                                case.name,
                                id(o)
                            );
                            assert!(
                                e["valueFrom"]["secretKeyRef"]["name"].is_string(),
                                "{}: {} takes {var} from elsewhere than a Secret",
                                case.name,
                                id(o)
                            );
                        }
                    }
                }
            }
            if o["kind"] == "ConfigMap" {
                for (k, _) in o["data"].as_object().into_iter().flatten() {
                    assert!(!credential_like(k), "{}: {} holds {k}", case.name, id(o));
                }
            }
        }
    }
    // Nor does any file of the chart mention a Secret object.
    for entry in std::fs::read_dir(chart_dir().join("templates")).unwrap() {
        let path = entry.unwrap().path();
        let text = std::fs::read_to_string(&path).unwrap();
        assert!(
            !text.contains("kind: Secret"),
            "{} renders a Secret",
            path.display()
        );
    }
}

#[test]
fn every_rendered_object_carries_its_component_and_the_standard_labels() {
    for case in matrix() {
        let r = render("chart-labels", &case.values);
        for o in &r.objects {
            let labels = &o["metadata"]["labels"];
            let component = labels["app.kubernetes.io/component"]
                .as_str()
                .unwrap_or_else(|| {
                    panic!(
                        "{}: {} has no app.kubernetes.io/component",
                        case.name,
                        id(o)
                    )
                });
            assert!(
                COMPONENTS.contains(&component),
                "{}: {} has component {component}",
                case.name,
                id(o)
            );
            let obj_name = o["metadata"]["name"].as_str().unwrap();
            assert!(
                obj_name.ends_with(&format!("-{component}"))
                    || obj_name.ends_with(&format!("-{component}-config")),
                "{}: {} is labelled {component}",
                case.name,
                id(o)
            );
            for key in [
                "app.kubernetes.io/name",
                "app.kubernetes.io/instance",
                "app.kubernetes.io/version",
                "app.kubernetes.io/managed-by",
                "app.kubernetes.io/part-of",
                "helm.sh/chart",
            ] {
                assert!(
                    labels[key].is_string(),
                    "{}: {} lacks {key}",
                    case.name,
                    id(o)
                );
            }
            assert_eq!(labels["app.kubernetes.io/instance"], RELEASE);
            // Pods and volume claims the workload creates carry it too.
            if let Some(pod_labels) = o["spec"]["template"]["metadata"]["labels"].as_object() {
                assert_eq!(
                    pod_labels["app.kubernetes.io/component"],
                    component,
                    "{}: pods of {}",
                    case.name,
                    id(o)
                );
            }
            for vct in o["spec"]["volumeClaimTemplates"]
                .as_array()
                .into_iter()
                .flatten()
            {
                assert_eq!(
                    vct["metadata"]["labels"]["app.kubernetes.io/component"],
                    component
                );
            }
            if let Some(selector) = o["spec"]["selector"]["matchLabels"].as_object() {
                assert_eq!(
                    selector["app.kubernetes.io/component"],
                    component,
                    "{}: selector of {}",
                    case.name,
                    id(o)
                );
            }
        }
    }
}

#[test]
fn every_container_has_probes_resources_and_a_locked_down_security_context() {
    for case in matrix() {
        let r = render("chart-hardening", &case.values);
        for o in &r.objects {
            let kind = o["kind"].as_str().unwrap();
            for pod in pod_specs(o) {
                let what = format!("{}: {}", case.name, id(o));
                assert_eq!(pod["automountServiceAccountToken"], false, "{what}");
                let sa = pod["serviceAccountName"]
                    .as_str()
                    .unwrap_or_else(|| panic!("{what}: no serviceAccountName"));
                assert!(
                    r.named("ServiceAccount", sa).is_some(),
                    "{what}: ServiceAccount {sa} is not rendered"
                );
                assert_eq!(pod["securityContext"]["runAsNonRoot"], true, "{what}");
                assert_eq!(
                    pod["securityContext"]["seccompProfile"]["type"], "RuntimeDefault",
                    "{what}"
                );
                if kind != "Job" {
                    assert!(
                        pod["terminationGracePeriodSeconds"].as_u64().unwrap_or(0) > 0,
                        "{what}"
                    );
                }
                for c in containers(pod) {
                    let what = format!("{what} container {}", c["name"]);
                    let sc = &c["securityContext"];
                    assert_eq!(sc["runAsNonRoot"], true, "{what}");
                    assert!(
                        sc["runAsUser"].as_u64().unwrap_or(0) > 0,
                        "{what}: runAsUser"
                    );
                    assert_eq!(sc["allowPrivilegeEscalation"], false, "{what}");
                    assert_eq!(sc["readOnlyRootFilesystem"], true, "{what}");
                    assert_eq!(
                        sc["capabilities"]["drop"],
                        serde_json::json!(["ALL"]),
                        "{what}"
                    );
                    assert_eq!(sc["seccompProfile"]["type"], "RuntimeDefault", "{what}");
                    for side in ["requests", "limits"] {
                        for res in ["cpu", "memory"] {
                            assert!(
                                !c["resources"][side][res].is_null(),
                                "{what}: no {side}.{res}"
                            );
                        }
                    }
                    if kind != "Job" {
                        for probe in ["startupProbe", "livenessProbe", "readinessProbe"] {
                            assert!(c[probe].is_object(), "{what}: no {probe}");
                        }
                        // The pod template rolls when the ConfigMap it loads changes.
                        if c["envFrom"].is_array() {
                            let ann = &o["spec"]["template"]["metadata"]["annotations"]
                                ["checksum/config"];
                            assert!(
                                ann.as_str().is_some_and(|s| s.len() == 64),
                                "{what}: no checksum/config"
                            );
                        }
                    }
                }
            }
        }
    }
}

#[test]
fn a_config_change_changes_the_checksum_of_the_pods_that_load_it() {
    let before = render("chart-checksum", &Values::new(&[], ""));
    let after = render(
        "chart-checksum",
        &Values::new(&[], "config: {FEATURE_FLAGS: chat-v2}\n"),
    );
    for c in ["frontend", "backend"] {
        let sum = |r: &Rendered| {
            r.get("Deployment", &name(c))["spec"]["template"]["metadata"]["annotations"]
                ["checksum/config"]
                .clone()
        };
        assert_ne!(
            sum(&before),
            sum(&after),
            "{c}: config changed, checksum did not"
        );
    }
    let pg = |r: &Rendered| r.get("StatefulSet", &name("postgres"))["spec"]["template"].clone();
    assert_eq!(
        pg(&before),
        pg(&after),
        "an app config change must not restart the database"
    );
}

#[tokio::test]
async fn the_testbed_apiserver_accepts_every_rendered_object_in_a_server_side_dry_run() {
    let ns = TestNamespace::new("chart-dry-run").await;
    let client = ns.client();
    // NodePorts are cluster-wide and a dry-run create checks that the port is
    // free: another test's release of values-dev.yaml may hold 30080, so let
    // the apiserver pick (the port itself is covered by the schema and render tests).
    let any_node_port = "frontend: {service: {nodePort: null}}\n";
    let cases = [
        Values::new(&[], any_node_port),
        Values::new(&["values-dev.yaml"], any_node_port),
        Values::new(&["values-staging.yaml"], any_node_port),
        Values::new(
            &[],
            &format!(
                "postgres: {{enabled: false}}\nfrontend: {{replicas: 3, service: {{type: LoadBalancer, port: 80, nodePort: null}}}}\n\
                 backend: {{image: {{digest: \"{}\"}}}}\ningress: {{enabled: true, host: todo.example.com, tls: [{{secretName: t}}]}}\n",
                digest()
            ),
        ),
    ];
    let pp = PatchParams::apply("converge").dry_run();
    let mut failures = Vec::new();
    let mut applied = 0;
    for values in &cases {
        let r = render(ns.name(), values);
        for o in &r.objects {
            let obj: DynamicObject =
                serde_json::from_value(o.clone()).expect("a rendered object is a DynamicObject");
            let types = obj.types.clone().expect("apiVersion and kind");
            let gvk = GroupVersionKind::try_from(&types).expect("a GVK");
            let (ar, caps) = discovery::pinned_kind(&client, &gvk)
                .await
                .unwrap_or_else(|e| panic!("discovery of {gvk:?}: {e}"));
            let api: Api<DynamicObject> = match caps.scope {
                Scope::Namespaced => {
                    assert_eq!(
                        obj.metadata.namespace.as_deref(),
                        Some(ns.name()),
                        "{} is not in the release namespace",
                        id(o)
                    );
                    Api::namespaced_with(client.clone(), ns.name(), &ar)
                }
                Scope::Cluster => Api::all_with(client.clone(), &ar),
            };
            let name = obj.metadata.name.clone().expect("a name");
            match api.patch(&name, &pp, &Patch::Apply(&obj)).await {
                Ok(got) => {
                    applied += 1;
                    assert_eq!(got.metadata.name.as_deref(), Some(name.as_str()));
                    assert_eq!(
                        got.metadata
                            .labels
                            .as_ref()
                            .and_then(|l| l.get("app.kubernetes.io/component")),
                        obj.metadata
                            .labels
                            .as_ref()
                            .and_then(|l| l.get("app.kubernetes.io/component")),
                    );
                }
                Err(e) => failures.push(format!("{}: {e}", id(o))),
            }
        }
    }
    assert!(
        failures.is_empty(),
        "the apiserver refused:\n{}",
        failures.join("\n")
    );
    assert!(applied > 20, "only {applied} objects were dry-run applied");
    ns.cleanup().await;
}

/// `helm status -o json`: the named hook's last run phase and start time.
fn hook_last_run(namespace: &str, hook: &str) -> (String, String) {
    let run = run_helm(&[
        "status",
        RELEASE,
        "--namespace",
        namespace,
        "--output",
        "json",
    ]);
    assert!(run.ok, "helm status failed:\n{}", run.stderr);
    let status: Value = serde_json::from_str(&run.stdout).expect("helm status JSON");
    let h = status["hooks"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|h| h["name"] == hook && h["kind"] == "Job")
        .unwrap_or_else(|| panic!("no hook Job {hook} in the release: {}", status["hooks"]));
    let last = &h["last_run"];
    (
        last["phase"].as_str().unwrap_or_default().to_string(),
        last["started_at"].as_str().unwrap_or_default().to_string(),
    )
}

#[tokio::test]
async fn the_chart_installs_and_upgrades_on_the_testbed_running_its_migration_hook_each_time() {
    use k8s_openapi::api::apps::v1::{Deployment, StatefulSet};
    use k8s_openapi::api::batch::v1::Job;
    use k8s_openapi::api::core::v1::{PersistentVolumeClaim, Secret};
    use kube::api::PostParams;

    let ns = TestNamespace::new("chart-install").await;
    // The Secret the chart references (kwok runs no containers, so placeholders do).
    let secret: Secret = serde_json::from_value(serde_json::json!({
        "apiVersion": "v1", "kind": "Secret",
        "metadata": {"name": "todo-chatbot-secrets"},
        "stringData": {
            "postgres-password": "test-only", "jwt-secret": "test-only",
            "database-url": format!("postgresql://todo:test-only@{}:5432/todo", name("postgres")),
        }
    }))
    .unwrap();
    ns.api::<Secret>()
        .create(&PostParams::default(), &secret)
        .await
        .expect("create the Secret");

    let chart = chart_dir().display().to_string();
    let dev = chart_dir().join("values-dev.yaml").display().to_string();
    // NodePorts are cluster-wide: let the apiserver pick one, so this test
    // never collides with another release of values-dev.yaml on the bed.
    let common = [
        "-f",
        dev.as_str(),
        "--set",
        "frontend.service.nodePort=null",
        "--wait",
        "--wait-for-jobs",
        "--timeout",
        "180s",
    ];
    let mut install = vec!["install", RELEASE, &chart, "--namespace", ns.name()];
    install.extend(common);
    let run = run_helm(&install);
    assert!(run.ok, "helm install failed:\n{}{}", run.stdout, run.stderr);
    // NOTES.txt tells how to reach the app on minikube.
    let reach = format!(
        "minikube service {} -n {} --url",
        name("frontend"),
        ns.name()
    );
    assert!(
        run.stdout.contains(&reach),
        "NOTES lack `{reach}`:\n{}",
        run.stdout
    );

    let deployments: Api<Deployment> = ns.api();
    for c in ["frontend", "backend"] {
        let d = deployments.get(&name(c)).await.unwrap();
        assert_eq!(
            d.status.and_then(|s| s.available_replicas),
            Some(1),
            "{c} is not available"
        );
    }
    let sts = ns
        .api::<StatefulSet>()
        .get(&name("postgres"))
        .await
        .unwrap();
    assert_eq!(
        sts.status.and_then(|s| s.ready_replicas),
        Some(1),
        "postgres is not ready"
    );
    let pvc = ns
        .api::<PersistentVolumeClaim>()
        .get(&format!("data-{}-0", name("postgres")))
        .await
        .unwrap();
    assert_eq!(pvc.status.and_then(|s| s.phase).as_deref(), Some("Bound"));
    // The migration hook ran after the release's objects (post-install) and,
    // having succeeded, was deleted with its ServiceAccount.
    let (phase, installed_at) = hook_last_run(ns.name(), &name("migrations"));
    assert_eq!(phase, "Succeeded");
    assert!(
        ns.api::<Job>()
            .get_opt(&name("migrations"))
            .await
            .unwrap()
            .is_none(),
        "hook-succeeded must delete the Job"
    );

    let checksum = |d: &Deployment| {
        d.spec
            .as_ref()
            .unwrap()
            .template
            .metadata
            .as_ref()
            .unwrap()
            .annotations
            .as_ref()
            .unwrap()["checksum/config"]
            .clone()
    };
    let before = checksum(&deployments.get(&name("backend")).await.unwrap());

    // An upgrade with a config change: the pre-upgrade hook runs again and the pods roll.
    let mut upgrade = vec![
        "upgrade",
        RELEASE,
        &chart,
        "--namespace",
        ns.name(),
        "--set-string",
        "config.FEATURE_FLAGS=chat-v2",
    ];
    upgrade.extend(common);
    let run = run_helm(&upgrade);
    assert!(run.ok, "helm upgrade failed:\n{}{}", run.stdout, run.stderr);
    let backend = deployments.get(&name("backend")).await.unwrap();
    assert_ne!(
        checksum(&backend),
        before,
        "a config change must roll the backend"
    );
    // helm's --wait returns once the new ReplicaSet is ready; the old Pod may
    // still be on its way out, so wait for the rollout to finish.
    let rolled = |d: Option<&Deployment>| {
        d.and_then(|d| Some((d.metadata.generation, d.status.as_ref()?)))
            .is_some_and(|(generation, s)| {
                s.observed_generation == generation
                    && s.replicas == Some(1)
                    && s.updated_replicas == Some(1)
                    && s.available_replicas == Some(1)
            })
    };
    support::wait_for(
        &deployments,
        &name("backend"),
        rolled,
        support::DEFAULT_TIMEOUT,
    )
    .await;
    let (phase, upgraded_at) = hook_last_run(ns.name(), &name("migrations"));
    assert_eq!(phase, "Succeeded");
    assert_ne!(
        upgraded_at, installed_at,
        "the pre-upgrade hook did not run again"
    );

    ns.cleanup().await;
}
