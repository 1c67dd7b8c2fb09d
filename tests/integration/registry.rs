//! The registry builder against the testbed's real services: its OCI registry (distribution,
//! TLS from the bed's CA, htpasswd auth) and its buildkitd, driven through `converge build` as a
//! person runs it (DOCKER_CONFIG, SSL_CERT_FILE and BUILDKIT_HOST from the bed's env file). Every
//! test pushes under its own repository path, so runs never see each other's images.

use std::path::{Path, PathBuf};
use std::process::Command;

use base64::Engine as _;
use converge::build::registry::config::DockerConfig;
use converge::build::registry::{ImageName, Manifest, Registry};
use serde_json::Value;

use crate::support::git::GitRepo;
use crate::support::{testbed, unique_name};

/// A variable of the bed's env file, or a failure naming what gives a bed that has it.
fn bed_var(key: &str) -> String {
    testbed().vars.get(key).cloned().unwrap_or_else(|| {
        panic!(
            "{key} is missing from the testbed env file {}/env: this bed has no registry and \
             BuildKit; restart it with tests/testbed/down && tests/testbed/up",
            testbed().dir.display()
        )
    })
}

/// A repository with one stack building `api` (`FROM scratch`, nothing pulled) with the
/// registry builder, pushing under `<bed registry>/<unique path>`.
struct Fixture {
    repo: GitRepo,
    prefix: String,
}

impl Fixture {
    fn new() -> Self {
        let prefix = format!(
            "{}/{}",
            bed_var("CONVERGE_TESTBED_REGISTRY"),
            unique_name("regb")
        );
        let repo = GitRepo::new();
        repo.write("charts/app/Chart.yaml", "apiVersion: v2\nname: app\nversion: 0.1.0\n")
            .write("apps/api/Dockerfile", "FROM scratch\nCOPY hello /hello\n")
            .write("apps/api/hello", format!("api v1 {prefix}\n"))
            .write(
                "desired/stack.yaml",
                format!("apiVersion: converge.dev/v1alpha1\nkind: Stack\nname: shop\nnamespace: shop\nchart: charts/app\nbuilder: registry\nregistry:\n  prefix: {prefix}\n  pullSecret: regcred\n"),
            )
            .write(
                "desired/api.yaml",
                "apiVersion: converge.dev/v1alpha1\nkind: Component\nname: api\nimage:\n  build:\n    context: apps/api\n    repository: shop-api\n",
            );
        repo.commit("initial");
        Self { repo, prefix }
    }

    /// `converge build -o json` with the bed's login, CA and BuildKit, and `extra` arguments;
    /// `envs` override the environment (e.g. another DOCKER_CONFIG).
    fn build(&self, extra: &[&str], envs: &[(&str, &str)]) -> (bool, Option<Value>, String) {
        let path = format!(
            "{}:{}",
            testbed().bin_dir.display(),
            std::env::var("PATH").unwrap_or_default()
        );
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_converge"));
        cmd.args(["build", "-o", "json", "--repo"])
            .arg(self.repo.path())
            .args(extra)
            .env("PATH", path)
            .env("DOCKER_CONFIG", bed_var("CONVERGE_TESTBED_DOCKER_CONFIG"))
            .env("SSL_CERT_FILE", bed_var("CONVERGE_TESTBED_REGISTRY_CA"))
            .env("BUILDKIT_HOST", bed_var("CONVERGE_TESTBED_BUILDKIT"))
            .env_remove("CONVERGE_REGISTRY")
            .env("NO_COLOR", "1");
        for (k, v) in envs {
            cmd.env(k, v);
        }
        let out = cmd.output().expect("run converge build");
        let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
        let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
        (
            out.status.success(),
            serde_json::from_str(&stdout).ok(),
            format!("{stdout}\n{stderr}"),
        )
    }

    /// The one image of the build's answer: (reference, action, builds made).
    fn built(&self, json: &Value) -> (String, String, u64) {
        let stack = &json["stacks"][0];
        let image = &stack["images"][0];
        (
            image["image"].as_str().unwrap_or_default().to_string(),
            image["action"].as_str().unwrap_or_default().to_string(),
            stack["engineCalls"]["builds"].as_u64().unwrap_or(u64::MAX),
        )
    }
}

/// A client of the bed's registry with its login, as converge makes one.
fn bed_registry(config_dir: &Path) -> Registry {
    let config = DockerConfig::read(&config_dir.join("config.json")).expect("bed docker config");
    Registry::new(
        config,
        Some(&bed_var("CONVERGE_TESTBED_REGISTRY_CA")),
        std::time::Duration::from_secs(30),
    )
    .expect("registry client")
}

#[tokio::test]
async fn a_build_pushes_and_the_same_inputs_are_never_built_again_even_after_a_revert() {
    // The bed's registry is stopped by tests/integration/in_cluster.rs: not while this runs.
    let _registry = crate::support::services::registry_shared();
    let f = Fixture::new();
    let (ok, json, log) = f.build(&[], &[]);
    let json = json.unwrap_or_else(|| panic!("no JSON answer:\n{log}"));
    assert!(ok, "the first build failed:\n{log}");
    let (image, action, builds) = f.built(&json);
    assert!(
        image.starts_with(&format!("{}/shop-api:", f.prefix)),
        "the image is not named under the prefix: {image}"
    );
    assert_eq!((action.as_str(), builds), ("built", 1), "{log}");

    // The registry itself has it, under the tag converge pushed.
    let registry = bed_registry(Path::new(&bed_var("CONVERGE_TESTBED_DOCKER_CONFIG")));
    let name = ImageName::parse(&image).expect("a registry reference");
    match registry.manifest(&name).await.expect("HEAD the manifest") {
        Manifest::Present(Some(digest)) => assert!(digest.starts_with("sha256:"), "{digest}"),
        other => panic!("{image} is not in the bed's registry: {other:?}"),
    }

    let (ok, json, log) = f.build(&[], &[]);
    assert!(ok, "the second build failed:\n{log}");
    let (again, action, builds) = f.built(&json.expect("JSON"));
    assert_eq!(again, image);
    assert_eq!(
        (action.as_str(), builds),
        ("exists", 0),
        "the registry said the tag is there: nothing may be built\n{log}"
    );

    // A change builds a new tag; reverting it names the first tag again: zero builds.
    f.repo.write("apps/api/hello", "api v2\n");
    f.repo.commit("v2");
    let (ok, json, log) = f.build(&[], &[]);
    assert!(ok, "{log}");
    let (v2, action, _) = f.built(&json.expect("JSON"));
    assert_ne!(v2, image);
    assert_eq!(action, "built");
    f.repo.git(&["revert", "--no-edit", "HEAD"]);
    let (ok, json, log) = f.build(&[], &[]);
    assert!(ok, "{log}");
    let (reverted, action, builds) = f.built(&json.expect("JSON"));
    assert_eq!(reverted, image, "the revert names the first image again");
    assert_eq!((action.as_str(), builds), ("exists", 0), "{log}");
}

#[tokio::test]
async fn a_wrong_password_is_refused_with_the_user_and_file_and_nothing_is_built() {
    // The bed's registry is stopped by tests/integration/in_cluster.rs: not while this runs.
    let _registry = crate::support::services::registry_shared();
    let f = Fixture::new();
    let good = std::fs::read_to_string(
        Path::new(&bed_var("CONVERGE_TESTBED_DOCKER_CONFIG")).join("config.json"),
    )
    .expect("the bed's config.json");
    let good: Value = serde_json::from_str(&good).expect("config.json is JSON");
    // The same user for every host of the bed, with a password the registry does not have.
    let wrong_password = "not-the-bed-password";
    let mut auths = serde_json::Map::new();
    let mut user = String::new();
    for (host, entry) in good["auths"].as_object().expect("auths") {
        let decoded = base64::engine::general_purpose::STANDARD
            .decode(entry["auth"].as_str().expect("auth"))
            .expect("base64");
        let text = String::from_utf8(decoded).expect("utf-8");
        user = text.split_once(':').expect("user:password").0.to_string();
        let auth =
            base64::engine::general_purpose::STANDARD.encode(format!("{user}:{wrong_password}"));
        auths.insert(host.clone(), serde_json::json!({ "auth": auth }));
    }
    let dir = tempfile::tempdir().expect("temporary DOCKER_CONFIG");
    let config: PathBuf = dir.path().join("config.json");
    std::fs::write(&config, serde_json::json!({ "auths": auths }).to_string())
        .expect("write config.json");

    let (ok, json, log) = f.build(&[], &[("DOCKER_CONFIG", &dir.path().display().to_string())]);
    assert!(!ok, "a refused login must fail the build:\n{log}");
    let host = bed_var("CONVERGE_TESTBED_REGISTRY");
    let expected = format!(
        "registry {host} refused the credentials for {user} (from {}): run `docker login {host}` or fix the Secret",
        config.display()
    );
    assert!(log.contains(&expected), "expected `{expected}` in:\n{log}");
    assert!(
        !log.contains(wrong_password),
        "the password was printed:\n{log}"
    );
    let builds = json
        .as_ref()
        .and_then(|j| j["stacks"][0]["engineCalls"]["builds"].as_u64())
        .unwrap_or(0);
    assert_eq!(
        builds, 0,
        "nothing may be built when the registry refuses the login:\n{log}"
    );

    // The tag this commit would push (`--builder none` computes it and builds nothing) is not
    // in the registry: the refusal came before any build.
    let (ok, json, log) = f.build(&["--builder", "none", "--registry", &f.prefix], &[]);
    assert!(ok, "{log}");
    let (image, action, _) = f.built(&json.expect("JSON"));
    assert_eq!(action, "skipped");
    let name = ImageName::parse(&format!("{}/{image}", f.prefix)).expect("a reference");
    let registry = bed_registry(Path::new(&bed_var("CONVERGE_TESTBED_DOCKER_CONFIG")));
    assert_eq!(
        registry
            .manifest(&name)
            .await
            .expect("HEAD with the good login"),
        Manifest::Missing
    );
}

#[tokio::test]
async fn a_buildkit_address_that_does_not_answer_is_a_clear_error_naming_it() {
    // The bed's registry is stopped by tests/integration/in_cluster.rs: not while this runs.
    let _registry = crate::support::services::registry_shared();
    let f = Fixture::new();
    // A closed port on this machine: nothing listens, the dial is refused at once.
    let addr = "tcp://127.0.0.1:1";
    let (ok, _, log) = f.build(&["--buildkit-addr", addr], &[]);
    assert!(!ok, "{log}");
    assert!(
        log.contains(&format!(
            "cannot reach the image engine at {addr} (BuildKit)"
        )),
        "{log}"
    );
    assert!(
        log.contains(&format!("start buildkitd listening on {addr}")),
        "the fix names the address:\n{log}"
    );
}

#[tokio::test]
async fn the_registry_flag_wins_over_the_stack_and_an_unreachable_registry_names_its_address() {
    // The bed's registry is stopped by tests/integration/in_cluster.rs: not while this runs.
    let _registry = crate::support::services::registry_shared();
    let f = Fixture::new();
    let (ok, _, log) = f.build(&["--registry", "127.0.0.1:1/elsewhere"], &[]);
    assert!(!ok, "{log}");
    assert!(
        log.contains(
            "cannot reach the registry at https://127.0.0.1:1/v2/elsewhere/shop-api/manifests/"
        ),
        "{log}"
    );
    assert!(
        log.contains("start the registry or fix the prefix"),
        "{log}"
    );
    // Without the bed's CA, the registry's certificate is not trusted: the fix says which file.
    let (ok, _, log) = f.build(&[], &[("SSL_CERT_FILE", "/nonexistent/ca.pem")]);
    assert!(!ok, "{log}");
    assert!(log.contains("/nonexistent/ca.pem"), "{log}");
}

#[test]
fn the_registry_builder_without_a_prefix_says_where_to_put_one() {
    let f = Fixture::new();
    f.repo.write(
        "desired/stack.yaml",
        "apiVersion: converge.dev/v1alpha1\nkind: Stack\nname: shop\nnamespace: shop\nchart: charts/app\nbuilder: registry\n",
    );
    f.repo.commit("no prefix");
    let (ok, _, log) = f.build(&[], &[]);
    assert!(!ok, "{log}");
    assert!(
        log.contains(
            "the registry builder needs a registry to push to: set `registry.prefix` in the stack"
        ),
        "{log}"
    );
}

/// A chart of one busybox httpd Deployment whose Pods carry the chart's `imagePullSecrets`, as
/// the todo-chatbot chart's do.
fn write_pull_chart(repo: &GitRepo) {
    repo.write(
        "charts/pull/Chart.yaml",
        "apiVersion: v2\nname: pull\nversion: 0.1.0\n",
    )
    .write(
        "charts/pull/values.yaml",
        "imagePullSecrets: []\nweb:\n  enabled: true\n  image: {repository: web, tag: dev}\n",
    )
    .write(
        "charts/pull/templates/web.yaml",
        r#"apiVersion: apps/v1
kind: Deployment
metadata:
  name: web
  labels: {app.kubernetes.io/name: pull, app.kubernetes.io/component: web}
spec:
  replicas: 1
  selector:
    matchLabels: {app.kubernetes.io/name: pull, app.kubernetes.io/component: web}
  template:
    metadata:
      labels: {app.kubernetes.io/name: pull, app.kubernetes.io/component: web}
    spec:
      automountServiceAccountToken: false
      enableServiceLinks: false
      terminationGracePeriodSeconds: 1
      {{- with .Values.imagePullSecrets }}
      imagePullSecrets:
        {{- toYaml . | nindent 8 }}
      {{- end }}
      securityContext: {runAsNonRoot: true, runAsUser: 65534, runAsGroup: 65534}
      containers:
        - name: web
          image: "{{ .Values.web.image.repository }}:{{ .Values.web.image.tag }}"
          imagePullPolicy: IfNotPresent
          command: ["/bin/busybox", "httpd", "-f", "-p", "8080", "-h", "/www"]
          readinessProbe:
            httpGet: {path: /index.html, port: 8080}
            periodSeconds: 1
          resources:
            requests: {cpu: 10m, memory: 16Mi}
            limits: {cpu: 100m, memory: 32Mi}
"#,
    );
}

/// `converge apply -o json` of `repo` on the bed, with the registry builder's environment;
/// (exit 0, the stack's report, everything printed).
fn apply(repo: &GitRepo) -> (bool, Value, String) {
    let bed = testbed();
    let helm_home = bed.dir.join("helm");
    let path = format!(
        "{}:{}",
        bed.bin_dir.display(),
        std::env::var("PATH").unwrap_or_default()
    );
    let out = Command::new(env!("CARGO_BIN_EXE_converge"))
        .args(["apply", "--repo"])
        .arg(repo.path())
        .args(["--context", &crate::support::current_context()])
        .args(["--timeout", "150s", "-o", "json"])
        .env("KUBECONFIG", &bed.kubeconfig)
        .env("CONVERGE_HELM", &bed.helm)
        .env("HELM_CACHE_HOME", helm_home.join("cache"))
        .env("HELM_CONFIG_HOME", helm_home.join("config"))
        .env("HELM_DATA_HOME", helm_home.join("data"))
        .env("PATH", path)
        .env("DOCKER_CONFIG", bed_var("CONVERGE_TESTBED_DOCKER_CONFIG"))
        .env("SSL_CERT_FILE", bed_var("CONVERGE_TESTBED_REGISTRY_CA"))
        .env("BUILDKIT_HOST", bed_var("CONVERGE_TESTBED_BUILDKIT"))
        .env("NO_COLOR", "1")
        .env_remove("CONVERGE_REGISTRY")
        .env_remove("CONVERGE_CONTEXT")
        .env_remove("CONVERGE_LOG")
        .env_remove("NOTIFY_SOCKET")
        .output()
        .expect("run converge apply");
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    let parsed: Value = serde_json::from_str(&stdout)
        .unwrap_or_else(|e| panic!("no JSON from converge apply ({e}):\n{stdout}\n{stderr}"));
    let report = match &parsed {
        Value::Array(a) => a.first().cloned(),
        Value::Object(o) if o.contains_key("stacks") => parsed["stacks"].get(0).cloned(),
        Value::Object(_) => Some(parsed.clone()),
        _ => None,
    }
    .unwrap_or_else(|| panic!("no stack report:\n{parsed:#}\n{stderr}"));
    (out.status.success(), report, format!("{stdout}\n{stderr}"))
}

#[tokio::test]
async fn pods_pull_the_pushed_image_with_the_pull_secret_and_wait_for_it_when_it_is_missing() {
    // The bed's registry is stopped by tests/integration/in_cluster.rs: not while this runs.
    let _registry = crate::support::services::registry_shared();
    use k8s_openapi::api::apps::v1::Deployment;
    use k8s_openapi::api::core::v1::{Pod, Secret};
    use k8s_openapi::ByteString;
    use kube::api::{ListParams, ObjectMeta, PostParams};

    let ns = crate::support::TestNamespace::real_node("regpull").await;
    let prefix = format!("{}/{}", bed_var("CONVERGE_TESTBED_REGISTRY"), ns.name());
    let repo = GitRepo::new();
    write_pull_chart(&repo);
    crate::support::git::write_busybox_web(&repo, &format!("pulled {}\n", ns.name()));
    repo.write(
        "desired/stack.yaml",
        format!("apiVersion: converge.dev/v1alpha1\nkind: Stack\nname: pull\nnamespace: {}\nchart: charts/pull\nbuilder: registry\nregistry:\n  prefix: {prefix}\n  pullSecret: regcred\n", ns.name()),
    )
    .write(
        "desired/web.yaml",
        "apiVersion: converge.dev/v1alpha1\nkind: Component\nname: web\nimage:\n  build:\n    context: apps/web\n    repository: web\n",
    );
    repo.commit("registry stack");

    // Without the pull Secret the component is held back: nothing of it reaches the cluster,
    // and the reason is the command that creates the Secret.
    let (ok, report, log) = apply(&repo);
    assert!(!ok, "applied without its pull Secret:\n{log}");
    let host = bed_var("CONVERGE_TESTBED_REGISTRY");
    let expected = format!(
        "image pull Secret `regcred` (`registry.pullSecret` or `--pull-secret`) does not exist in namespace {}; create it: `kubectl create secret docker-registry regcred -n {} --docker-server={host} --docker-username=<user> --docker-password=<password>`",
        ns.name(),
        ns.name()
    );
    assert!(
        log.contains(&expected),
        "expected `{expected}` in:\n{report:#}\n{log}"
    );
    let deployments = ns.api::<Deployment>();
    assert!(
        deployments.get_opt("web").await.expect("read").is_none(),
        "the Deployment was applied without its pull Secret"
    );

    // With the Secret (the bed's own login, as `kubectl create secret docker-registry` makes
    // it), the Pod pulls the pushed image from the registry and becomes Ready.
    let config =
        std::fs::read(Path::new(&bed_var("CONVERGE_TESTBED_DOCKER_CONFIG")).join("config.json"))
            .expect("the bed's config.json");
    let secret = Secret {
        metadata: ObjectMeta {
            name: Some("regcred".into()),
            ..Default::default()
        },
        type_: Some("kubernetes.io/dockerconfigjson".into()),
        data: Some([(".dockerconfigjson".to_string(), ByteString(config))].into()),
        ..Default::default()
    };
    ns.api::<Secret>()
        .create(&PostParams::default(), &secret)
        .await
        .expect("create the pull Secret");
    let (ok, report, log) = apply(&repo);
    assert!(
        ok && report["ready"] == Value::Bool(true),
        "not ready with the pull Secret:\n{report:#}\n{log}"
    );
    let pods = ns
        .api::<Pod>()
        .list(&ListParams::default().labels("app.kubernetes.io/component=web"))
        .await
        .expect("list Pods");
    let pod = pods.items.first().expect("a web Pod");
    let spec = pod.spec.as_ref().expect("a Pod spec");
    let image = &spec.containers[0].image.clone().unwrap_or_default();
    assert!(
        image.starts_with(&format!("{prefix}/web:")),
        "the Pod does not run the pushed image: {image}"
    );
    let secrets: Vec<String> = spec
        .image_pull_secrets
        .iter()
        .flatten()
        .map(|s| s.name.clone())
        .collect();
    assert_eq!(secrets, ["regcred"]);
    let status = pod.status.as_ref().expect("a Pod status");
    let pulled = status
        .container_statuses
        .iter()
        .flatten()
        .any(|c| c.ready && c.image_id.contains("sha256:"));
    assert!(
        pulled,
        "the container is not ready from the pulled image: {status:?}"
    );
}
