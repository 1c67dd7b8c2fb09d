//! Test support shared by every integration test: the testbed (a real
//! kube-apiserver, controller-manager, scheduler, a kwok node and a real
//! node, plus a private Docker engine), a kube `Client` for it, a fresh
//! namespace per test, and the paths of the CLI tools built for it.
//!
//! Node placement: a [`TestNamespace::new`] namespace puts its Pods on the
//! kwok node (fake Pods: any image name works, `converge.test/fail` picks a
//! failure); a [`TestNamespace::real_node`] namespace puts them on the real
//! node, whose kubelet runs them with images loaded into its containerd.
//!
//! The bed is started by `tests/testbed/up`, which writes an env file. The
//! first call to [`testbed`] in a test process runs `up` (idempotent: a
//! running bed is reused, so this costs about a second) and reads that file.
//! Set `CONVERGE_TESTBED_NO_AUTO_UP=1` to only read the env file; a missing
//! file then fails with "run tests/testbed/up first".
//!
//! Env file location: `$CONVERGE_TESTBED_ENV`, else
//! `${CONVERGE_TESTBED_DIR:-/tmp/converge-testbed}/env`.

#![allow(dead_code)]

use std::collections::HashMap;
use std::fmt::Debug;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;
use std::time::Duration;

use k8s_openapi::api::core::v1::{Namespace, ServiceAccount};
use kube::api::{Api, DeleteParams, ObjectMeta, PostParams};
use kube::config::{KubeConfigOptions, Kubeconfig};
use kube::runtime::wait::{await_condition, Condition};
use kube::{Client, Config, Resource};
use serde::de::DeserializeOwned;

/// Label put on every namespace a test creates, to find leftovers.
pub const TEST_NAMESPACE_LABEL: &str = "converge.test/namespace";
/// Pod label read by the bed's kwok stages: `crashloop`, `imagepull`,
/// `unready` or `error` make a Pod fail that way instead of running.
pub const FAIL_LABEL: &str = "converge.test/fail";
/// Default time a wait helper gives the bed before failing the test.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(60);
/// Namespace annotation (PodNodeSelector admission) that pins a namespace's
/// Pods to the kwok node, whose label `type=kwok` it selects.
pub const NODE_SELECTOR_ANNOTATION: &str = "scheduler.alpha.kubernetes.io/node-selector";
/// Namespace annotation (PodTolerationRestriction admission) that gives a
/// namespace's Pods a toleration of the kwok node's taint.
pub const DEFAULT_TOLERATIONS_ANNOTATION: &str = "scheduler.alpha.kubernetes.io/defaultTolerations";
/// The taint `up` puts on the kwok node when the bed has a real node.
pub const KWOK_TAINT_KEY: &str = "converge.test/kwok";

/// What `tests/testbed/up` wrote into the env file.
#[derive(Debug, Clone)]
pub struct Testbed {
    /// The bed's state directory (`CONVERGE_TESTBED_DIR`).
    pub dir: PathBuf,
    /// Admin kubeconfig (`CONVERGE_TESTBED_KUBECONFIG`).
    pub kubeconfig: PathBuf,
    /// `https://127.0.0.1:<port>` (`CONVERGE_TESTBED_API_SERVER`).
    pub api_server: String,
    /// The pinned Kubernetes release, e.g. `v1.35.6` (`CONVERGE_TESTBED_K8S_VERSION`).
    pub k8s_version: String,
    /// Name of the kwok node a [`TestNamespace::new`] namespace's Pods are
    /// scheduled to (`CONVERGE_TESTBED_NODE`).
    pub node: String,
    /// Name of the real node (kubelet + containerd), if the bed has one
    /// (`CONVERGE_TESTBED_REAL_NODE`).
    pub real_node: Option<String>,
    /// The real node's address, where Pods reach the API server
    /// (`CONVERGE_TESTBED_NODE_IP`).
    pub node_ip: Option<String>,
    /// Socket of the real node's containerd (`CONTAINERD_ADDRESS`); images
    /// are loaded into its `k8s.io` namespace.
    pub containerd_address: Option<String>,
    /// Default StorageClass, provisioned by kwok (`CONVERGE_TESTBED_STORAGE_CLASS`).
    pub storage_class: String,
    /// `unix://…/docker.sock` of the bed's own dockerd, if it was started
    /// (`CONVERGE_TESTBED_DOCKER_HOST`).
    pub docker_host: Option<String>,
    /// kubectl built for the bed (`CONVERGE_TESTBED_KUBECTL`).
    pub kubectl: PathBuf,
    /// helm v3 CLI (`CONVERGE_TESTBED_HELM`).
    pub helm: PathBuf,
    /// Directory holding all of the bed's binaries (`CONVERGE_TESTBED_BIN`).
    pub bin_dir: PathBuf,
    /// CRI-format log file kwok serves as every container's `pods/log`
    /// (`CONVERGE_TESTBED_POD_LOG`); tests may append lines to it.
    pub pod_log: PathBuf,
    /// Every `export KEY=VALUE` of the env file, as written.
    pub vars: HashMap<String, String>,
}

fn repo_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn env_file_path() -> PathBuf {
    if let Some(p) = std::env::var_os("CONVERGE_TESTBED_ENV") {
        return PathBuf::from(p);
    }
    let dir = std::env::var_os("CONVERGE_TESTBED_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/tmp/converge-testbed"));
    dir.join("env")
}

/// Parses the `export KEY='value'` lines `up` writes.
fn parse_env_file(text: &str) -> HashMap<String, String> {
    text.lines()
        .filter_map(|line| line.trim().strip_prefix("export "))
        .filter_map(|kv| kv.split_once('='))
        .map(|(k, v)| (k.to_string(), v.trim_matches('\'').to_string()))
        .collect()
}

fn start_bed() -> PathBuf {
    let up = repo_root().join("tests/testbed/up");
    eprintln!(
        "[support] running {} (reuses a running bed; a first run on this machine builds Kubernetes from source, ~30 min)",
        up.display()
    );
    let out = Command::new(&up)
        .stderr(std::process::Stdio::inherit())
        .output()
        .unwrap_or_else(|e| panic!("cannot run {}: {e}", up.display()));
    assert!(
        out.status.success(),
        "{} failed ({}); see its output above",
        up.display(),
        out.status
    );
    let path = String::from_utf8_lossy(&out.stdout).trim().to_string();
    PathBuf::from(path)
}

/// The shared bed of this test run: started (or reused) once per process.
pub fn testbed() -> &'static Testbed {
    static BED: OnceLock<Testbed> = OnceLock::new();
    BED.get_or_init(|| {
        let auto_up = std::env::var("CONVERGE_TESTBED_NO_AUTO_UP").map_or(true, |v| v != "1");
        let path = if auto_up {
            start_bed()
        } else {
            env_file_path()
        };
        let text = std::fs::read_to_string(&path).unwrap_or_else(|e| {
            panic!(
                "testbed env file {} unreadable ({e}): run tests/testbed/up first",
                path.display()
            )
        });
        let vars = parse_env_file(&text);
        let get = |k: &str| -> String {
            vars.get(k).cloned().unwrap_or_else(|| {
                panic!(
                    "{k} missing from {}: re-run tests/testbed/up",
                    path.display()
                )
            })
        };
        Testbed {
            dir: get("CONVERGE_TESTBED_DIR").into(),
            kubeconfig: get("CONVERGE_TESTBED_KUBECONFIG").into(),
            api_server: get("CONVERGE_TESTBED_API_SERVER"),
            k8s_version: get("CONVERGE_TESTBED_K8S_VERSION"),
            node: get("CONVERGE_TESTBED_NODE"),
            real_node: vars.get("CONVERGE_TESTBED_REAL_NODE").cloned(),
            node_ip: vars.get("CONVERGE_TESTBED_NODE_IP").cloned(),
            containerd_address: vars.get("CONTAINERD_ADDRESS").cloned(),
            storage_class: get("CONVERGE_TESTBED_STORAGE_CLASS"),
            docker_host: vars.get("CONVERGE_TESTBED_DOCKER_HOST").cloned(),
            kubectl: get("CONVERGE_TESTBED_KUBECTL").into(),
            helm: get("CONVERGE_TESTBED_HELM").into(),
            bin_dir: get("CONVERGE_TESTBED_BIN").into(),
            pod_log: get("CONVERGE_TESTBED_POD_LOG").into(),
            vars,
        }
    })
}

/// The Kubernetes version pinned in `tests/testbed/versions`.
pub fn pinned_k8s_version() -> String {
    let path = repo_root().join("tests/testbed/versions");
    let text = std::fs::read_to_string(&path).expect("tests/testbed/versions");
    text.lines()
        .find_map(|l| l.trim().strip_prefix("K8S_VERSION="))
        .map(|v| v.trim().to_string())
        .expect("K8S_VERSION in tests/testbed/versions")
}

/// A kube `Config` for the bed's admin user.
pub async fn kube_config() -> Config {
    let bed = testbed();
    let kubeconfig = Kubeconfig::read_from(&bed.kubeconfig).expect("read the bed's kubeconfig");
    Config::from_custom_kubeconfig(kubeconfig, &KubeConfigOptions::default())
        .await
        .expect("kube config from the bed's kubeconfig")
}

/// A new client for the bed. Make one per test: a `Client` belongs to the
/// tokio runtime it was made on, and each `#[tokio::test]` has its own.
pub async fn client() -> Client {
    Client::try_from(kube_config().await).expect("kube client for the bed")
}

/// `kubectl` preset with the bed's kubeconfig.
pub fn kubectl() -> Command {
    let bed = testbed();
    let mut cmd = Command::new(&bed.kubectl);
    cmd.arg("--kubeconfig").arg(&bed.kubeconfig);
    cmd
}

/// `helm` preset with the bed's kubeconfig, and its caches under the bed
/// (so tests never read or write a developer's helm configuration).
pub fn helm() -> Command {
    let bed = testbed();
    let mut cmd = Command::new(&bed.helm);
    let home = bed.dir.join("helm");
    cmd.env("KUBECONFIG", &bed.kubeconfig)
        .env("HELM_CACHE_HOME", home.join("cache"))
        .env("HELM_CONFIG_HOME", home.join("config"))
        .env("HELM_DATA_HOME", home.join("data"));
    cmd
}

/// `DOCKER_HOST` value of the bed's own dockerd (`unix://…`).
pub fn docker_host() -> &'static str {
    testbed()
        .docker_host
        .as_deref()
        .expect("the bed has no Docker engine: it was started with CONVERGE_TESTBED_NO_DOCKER=1")
}

/// Filesystem path of the bed's Docker socket.
pub fn docker_socket() -> &'static Path {
    Path::new(
        docker_host()
            .strip_prefix("unix://")
            .expect("unix:// DOCKER_HOST"),
    )
}

/// The docker CLI aimed at the bed's dockerd, with the classic builder
/// (the bed's engine has no BuildKit CLI plugin).
pub fn docker() -> Command {
    let mut cmd = Command::new("docker");
    cmd.env("DOCKER_HOST", docker_host())
        .env("DOCKER_BUILDKIT", "0");
    cmd
}

/// The real node's name; fails the test if the bed has none (it was started
/// with `CONVERGE_TESTBED_NO_REAL_NODE=1`).
pub fn real_node() -> &'static str {
    testbed().real_node.as_deref().expect(
        "the bed has no real node (started with CONVERGE_TESTBED_NO_REAL_NODE=1?): run tests/testbed/down, then tests/testbed/up",
    )
}

/// `ctr` aimed at the real node's containerd, in the `k8s.io` namespace its
/// kubelet reads images from.
pub fn ctr() -> Command {
    real_node();
    let bed = testbed();
    let mut cmd = Command::new("ctr");
    cmd.env(
        "CONTAINERD_ADDRESS",
        bed.containerd_address
            .as_deref()
            .expect("CONTAINERD_ADDRESS in the env file"),
    )
    .env("CONTAINERD_NAMESPACE", "k8s.io");
    cmd
}

/// Loads an image of the bed's dockerd into the real node's containerd, the
/// way `kind load docker-image` does (`docker save | ctr images import -`).
pub fn load_image_into_node(image: &str) {
    let mut save = docker()
        .args(["save", image])
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("docker save {image}: {e}"));
    let stdout = save.stdout.take().expect("docker save's stdout");
    let import = ctr()
        .args(["images", "import", "-"])
        .stdin(stdout)
        .output()
        .unwrap_or_else(|e| panic!("ctr images import: {e}"));
    let saved = save.wait().expect("docker save");
    assert!(saved.success(), "docker save {image} failed ({saved})");
    assert!(
        import.status.success(),
        "ctr images import of {image} failed ({}):\n{}",
        import.status,
        String::from_utf8_lossy(&import.stderr)
    );
}

/// Runs a prepared command, panicking with its output if it fails; returns stdout.
pub fn run_ok(cmd: &mut Command) -> String {
    let out = cmd
        .output()
        .unwrap_or_else(|e| panic!("cannot run {cmd:?}: {e}"));
    assert!(
        out.status.success(),
        "{cmd:?} failed ({}):\nstdout:\n{}\nstderr:\n{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// A DNS-label-safe name: `prefix-` and 8 random lowercase alphanumerics.
pub fn unique_name(prefix: &str) -> String {
    use rand::Rng;
    const CHARS: &[u8] = b"abcdefghijklmnopqrstuvwxyz0123456789";
    let mut rng = rand::thread_rng();
    let suffix: String = (0..8)
        .map(|_| CHARS[rng.gen_range(0..CHARS.len())] as char)
        .collect();
    format!("{prefix}-{suffix}")
}

/// Waits until `cond` holds for the named object, failing the test after
/// `timeout`. Built on `kube::runtime::wait::await_condition` (a watch), not
/// on polling.
pub async fn wait_for<K>(
    api: &Api<K>,
    name: &str,
    cond: impl Condition<K>,
    timeout: Duration,
) -> Option<K>
where
    K: Resource + Clone + Debug + DeserializeOwned + Send + Sync + 'static,
{
    match tokio::time::timeout(timeout, await_condition(api.clone(), name, cond)).await {
        Ok(Ok(obj)) => obj,
        Ok(Err(e)) => panic!("watching {name}: {e}"),
        Err(_) => {
            let now = api.get_opt(name).await.ok().flatten();
            panic!("{name}: condition not met within {timeout:?}; object now: {now:#?}")
        }
    }
}

/// Waits until the named object no longer exists.
pub async fn wait_deleted<K>(api: &Api<K>, name: &str, timeout: Duration)
where
    K: Resource + Clone + Debug + DeserializeOwned + Send + Sync + 'static,
{
    let Some(obj) = api
        .get_opt(name)
        .await
        .expect("get before waiting for deletion")
    else {
        return;
    };
    let uid = obj.meta().uid.clone().unwrap_or_default();
    wait_for(
        api,
        name,
        kube::runtime::wait::conditions::is_deleted(&uid),
        timeout,
    )
    .await;
}

/// A fresh namespace for one test, deleted when dropped (or by
/// [`TestNamespace::cleanup`], which also waits until it is gone). Set
/// `CONVERGE_TEST_KEEP_NAMESPACES=1` to keep them for debugging.
pub struct TestNamespace {
    name: String,
    client: Client,
    deleted: bool,
}

impl TestNamespace {
    /// Creates `prefix-<random>`, whose Pods go to the kwok node, and waits
    /// for its `default` ServiceAccount (until it exists the ServiceAccount
    /// admission plugin refuses Pods).
    pub async fn new(prefix: &str) -> TestNamespace {
        let annotations = [
            (
                NODE_SELECTOR_ANNOTATION.to_string(),
                "type=kwok".to_string(),
            ),
            (
                DEFAULT_TOLERATIONS_ANNOTATION.to_string(),
                format!(
                    r#"[{{"key":"{KWOK_TAINT_KEY}","operator":"Exists","effect":"NoSchedule"}}]"#
                ),
            ),
        ];
        Self::create(prefix, annotations.into()).await
    }

    /// Creates `prefix-<random>`, whose Pods go to the real node (as the
    /// Pods of any namespace without the kwok annotations do); fails if the
    /// bed has no real node.
    pub async fn real_node(prefix: &str) -> TestNamespace {
        real_node();
        Self::create(prefix, Default::default()).await
    }

    async fn create(
        prefix: &str,
        annotations: std::collections::BTreeMap<String, String>,
    ) -> TestNamespace {
        let client = client().await;
        let name = unique_name(prefix);
        let namespaces: Api<Namespace> = Api::all(client.clone());
        let ns = Namespace {
            metadata: ObjectMeta {
                name: Some(name.clone()),
                labels: Some([(TEST_NAMESPACE_LABEL.to_string(), "true".to_string())].into()),
                annotations: Some(annotations),
                ..Default::default()
            },
            ..Default::default()
        };
        namespaces
            .create(&PostParams::default(), &ns)
            .await
            .unwrap_or_else(|e| panic!("create namespace {name}: {e}"));
        let this = TestNamespace {
            name,
            client,
            deleted: false,
        };
        let sas: Api<ServiceAccount> = this.api();
        wait_for(
            &sas,
            "default",
            kube::runtime::wait::conditions::is_created(),
            DEFAULT_TIMEOUT,
        )
        .await;
        this
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    /// The client the namespace was made with (usable on this test's runtime).
    pub fn client(&self) -> Client {
        self.client.clone()
    }

    /// A namespaced `Api` in this namespace.
    pub fn api<K>(&self) -> Api<K>
    where
        K: Resource<Scope = k8s_openapi::NamespaceResourceScope>,
        <K as Resource>::DynamicType: Default,
    {
        Api::namespaced(self.client.clone(), &self.name)
    }

    /// Deletes the namespace and waits until it and everything in it is gone.
    pub async fn cleanup(mut self) {
        self.deleted = true;
        if keep_namespaces() {
            return;
        }
        let namespaces: Api<Namespace> = Api::all(self.client.clone());
        match namespaces
            .delete(&self.name, &DeleteParams::default())
            .await
        {
            Ok(_) => {}
            Err(kube::Error::Api(s)) if s.code == 404 => return,
            Err(e) => panic!("delete namespace {}: {e}", self.name),
        }
        wait_deleted(&namespaces, &self.name, Duration::from_secs(120)).await;
    }
}

fn keep_namespaces() -> bool {
    std::env::var("CONVERGE_TEST_KEEP_NAMESPACES").is_ok_and(|v| v == "1")
}

impl Drop for TestNamespace {
    fn drop(&mut self) {
        if self.deleted || keep_namespaces() {
            return;
        }
        // Drop cannot await: ask kubectl to delete it without waiting, which
        // works whether or not a tokio runtime is still running.
        let _ = kubectl()
            .args([
                "delete",
                "namespace",
                &self.name,
                "--wait=false",
                "--ignore-not-found",
            ])
            .output();
    }
}

#[path = "git.rs"]
pub mod git;
#[path = "services.rs"]
pub mod services;
#[path = "shell.rs"]
pub mod shell;

/// The testbed kubeconfig's current context (what `--context` names for the bed).
pub fn current_context() -> String {
    Kubeconfig::read_from(&testbed().kubeconfig)
        .ok()
        .and_then(|k| k.current_context)
        .expect("the testbed kubeconfig names a current context")
}

/// Creates Secret `name` in `ns` with placeholder values for `keys` (tests only read key names).
pub async fn create_secret(ns: &TestNamespace, name: &str, keys: &[&str]) {
    let data = keys
        .iter()
        .map(|k| (k.to_string(), "not-a-real-value".to_string()))
        .collect();
    let secret = k8s_openapi::api::core::v1::Secret {
        metadata: ObjectMeta {
            name: Some(name.into()),
            ..Default::default()
        },
        string_data: Some(data),
        ..Default::default()
    };
    ns.api::<k8s_openapi::api::core::v1::Secret>()
        .create(&PostParams::default(), &secret)
        .await
        .unwrap_or_else(|e| panic!("create secret {name}: {e}"));
}

/// `GET url` with curl from the host (10 s at most): the status (0 when nothing answered) and body.
pub fn curl_get(url: &str) -> (u16, String) {
    let out = Command::new("curl")
        .args(["-sS", "--max-time", "10", "-w", "\n%{http_code}", url])
        .output()
        .expect("run curl");
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let (body, code) = text.rsplit_once('\n').unwrap_or(("", "0"));
    (code.trim().parse().unwrap_or(0), body.to_string())
}

/// Retries `GET url` until it answers 200 with a body containing `needle`; fails with the last
/// answer after `timeout`.
pub async fn wait_http(url: &str, needle: &str, timeout: std::time::Duration) -> String {
    let deadline = std::time::Instant::now() + timeout;
    loop {
        let (code, body) = curl_get(url);
        if code == 200 && body.contains(needle) {
            return body;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "GET {url} did not answer 200 with {needle:?} within {timeout:?}: {code} {body}"
        );
        tokio::time::sleep(std::time::Duration::from_millis(500)).await;
    }
}
