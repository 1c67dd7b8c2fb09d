//! converge against a real minikube (v1.38.1, none driver, containerd runtime) started by
//! `tests/testbed/minikube/up` beside the testbed: the context is `minikube`, `docker-env` is
//! refused (exit 51, ENV_DRIVER_CONFLICT), so converge builds with the bed's Docker engine and
//! hands the image over with `minikube image load`, believed only once `minikube image ls`
//! lists it. The combinations this machine cannot run (the docker driver) are covered by the
//! unit tests in src/build/minikube.rs, with minikube's exact answers.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::support::git::{copy_project_dir, write_busybox_web, GitRepo};
use crate::support::{run_ok, testbed, unique_name};

/// The minikube bed of this test run.
pub struct Minikube {
    /// `$CONVERGE_MINIKUBE_DIR`.
    pub dir: PathBuf,
    /// The kubeconfig minikube wrote (context `minikube`).
    pub kubeconfig: PathBuf,
    /// The directory holding `minikube` (entering the bed's namespaces), `kubectl`, `helm`.
    pub bin: PathBuf,
    /// `MINIKUBE_HOME`.
    pub home: PathBuf,
    /// `minikube ip`.
    pub ip: String,
}

/// The minikube bed: started (or reused) once per process by `tests/testbed/minikube/up`.
pub fn minikube() -> &'static Minikube {
    static BED: OnceLock<Minikube> = OnceLock::new();
    BED.get_or_init(|| {
        let dir = std::env::var_os("CONVERGE_MINIKUBE_DIR")
            .map(PathBuf::from)
            .unwrap_or_else(|| PathBuf::from("/tmp/converge-minikube"));
        let up = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/testbed/minikube/up");
        eprintln!(
            "[support] running {} (reuses a running minikube; a first run builds minikube v1.38.1 and kubeadm, ~8 min)",
            up.display()
        );
        let out = Command::new(&up)
            .env("CONVERGE_MINIKUBE_DIR", &dir)
            .stderr(std::process::Stdio::inherit())
            .output()
            .unwrap_or_else(|e| panic!("cannot run {}: {e}", up.display()));
        assert!(
            out.status.success(),
            "{} failed ({}): no minikube to test against; see its output above",
            up.display(),
            out.status
        );
        let env = std::fs::read_to_string(dir.join("env"))
            .unwrap_or_else(|e| panic!("{}/env: {e} (written by {})", dir.display(), up.display()));
        let var = |k: &str| {
            env.lines()
                .filter_map(|l| l.strip_prefix("export "))
                .filter_map(|kv| kv.split_once('='))
                .find(|(key, _)| *key == k)
                .map(|(_, v)| v.trim_matches('\'').to_string())
                .unwrap_or_else(|| panic!("{}/env exports no {k}", dir.display()))
        };
        Minikube {
            kubeconfig: PathBuf::from(var("KUBECONFIG")),
            home: PathBuf::from(var("MINIKUBE_HOME")),
            ip: var("CONVERGE_MINIKUBE_IP"),
            bin: dir.join("bin"),
            dir,
        }
    })
}

impl Minikube {
    /// `PATH` with the bed's `minikube`, `kubectl` and `helm` first.
    fn path(&self) -> String {
        format!(
            "{}:{}",
            self.bin.display(),
            std::env::var("PATH").unwrap_or_default()
        )
    }

    /// `kubectl` on the minikube cluster.
    pub fn kubectl(&self) -> Command {
        let mut cmd = Command::new(self.bin.join("kubectl"));
        cmd.env("KUBECONFIG", &self.kubeconfig);
        cmd
    }

    /// `minikube` (in the bed's namespaces).
    pub fn minikube(&self) -> Command {
        let mut cmd = Command::new(self.bin.join("minikube"));
        cmd.env("KUBECONFIG", &self.kubeconfig)
            .env("MINIKUBE_HOME", &self.home);
        cmd
    }

    /// converge as a user of this minikube runs it: the context `minikube`, minikube and helm on
    /// `PATH`, and a Docker engine on this machine (the testbed's) for minikube's fallback.
    pub fn converge(&self) -> Command {
        let bed = testbed();
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_converge"));
        let helm_home = self.dir.join("helm");
        cmd.env("KUBECONFIG", &self.kubeconfig)
            .env("PATH", self.path())
            .env("MINIKUBE_HOME", &self.home)
            .env("HELM_CACHE_HOME", helm_home.join("cache"))
            .env("HELM_CONFIG_HOME", helm_home.join("config"))
            .env("HELM_DATA_HOME", helm_home.join("data"))
            .env("NO_COLOR", "1")
            .env("DOCKER_BUILDKIT", "0")
            .env_remove("CONVERGE_HELM")
            .env_remove("CONVERGE_LOG")
            .env_remove("CONVERGE_LOG_FORMAT")
            .env_remove("CONVERGE_CONTEXT")
            .env_remove("CONTAINERD_ADDRESS")
            .env_remove("CONTAINERD_NAMESPACE")
            .env_remove("NOTIFY_SOCKET");
        match bed.vars.get("DOCKER_HOST") {
            Some(v) => cmd.env("DOCKER_HOST", v),
            None => panic!(
                "the testbed's env file exports no DOCKER_HOST: minikube's fallback needs a Docker engine on this machine; restart the bed with one (tests/testbed/down && tests/testbed/up)"
            ),
        };
        cmd
    }
}

/// One minikube test at a time: the quickstart's `minikube start` reconfigures the one node
/// (containerd and the kubelet restart) under any other test using it.
fn exclusive() -> std::sync::MutexGuard<'static, ()> {
    static ONE: std::sync::Mutex<()> = std::sync::Mutex::new(());
    // A failed test poisons the lock; the next one still runs.
    ONE.lock().unwrap_or_else(|e| e.into_inner())
}

/// A namespace on the minikube cluster, deleted when dropped.
struct MkNamespace(String);

impl MkNamespace {
    fn new(prefix: &str) -> Self {
        let name = unique_name(prefix);
        run_ok(minikube().kubectl().args(["create", "namespace", &name]));
        Self(name)
    }
}

impl Drop for MkNamespace {
    fn drop(&mut self) {
        let _ = minikube()
            .kubectl()
            .args(["delete", "namespace", &self.0, "--wait=false"])
            .output();
    }
}

/// The page the test image serves: names the namespace and a version, so each test builds an
/// image of its own.
fn page(ns: &str, version: &str) -> String {
    format!("minikube {ns} {version}\n")
}

/// A repository with the hookapp chart and a web component built from a FROM-scratch context
/// (the host's static busybox), in a stack whose context is `minikube`.
fn app_repo(ns: &str) -> GitRepo {
    let repo = GitRepo::new();
    copy_project_dir(&repo, "tests/fixtures/charts/hookapp", "charts/hookapp");
    write_busybox_web(&repo, &page(ns, "v1"));
    repo.write(
        "desired/stack.yaml",
        format!("apiVersion: converge.dev/v1alpha1\nkind: Stack\nname: web\nnamespace: {ns}\ncontext: minikube\nchart: charts/hookapp\n"),
    );
    repo.write(
        "desired/web.yaml",
        "apiVersion: converge.dev/v1alpha1\nkind: Component\nname: web\nimage:\n  build:\n    context: apps/web\n    repository: converge-mktest-web\nreplicas: 1\n",
    );
    repo.commit("web on minikube");
    repo
}

/// One `converge apply -o json` on minikube: its exit, the stack's report, stderr.
fn apply(repo: &GitRepo, extra: &[&str]) -> (Output, Value, String) {
    let out = minikube()
        .converge()
        .args(["apply", "--repo"])
        .arg(repo.path())
        .args(["--timeout", "180s", "-o", "json", "--log", "converge=info"])
        .args(extra)
        .output()
        .expect("run converge apply");
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    let parsed: Value = serde_json::from_str(&stdout).unwrap_or(Value::Null);
    let report = match &parsed {
        Value::Array(a) => a.first().cloned().unwrap_or(Value::Null),
        Value::Object(o) if o.contains_key("stacks") => parsed["stacks"][0].clone(),
        other => other.clone(),
    };
    (out, report, stderr)
}

/// The build actions of a report, by component.
fn builds(report: &Value) -> Vec<(String, String)> {
    report["builds"]
        .as_array()
        .map(|a| {
            a.iter()
                .map(|b| {
                    // `{"action": {"action": "built"}}`: the outcome's tagged enum.
                    let action = b["action"]["action"].as_str().unwrap_or("").to_string();
                    (b["component"].as_str().unwrap_or("").to_string(), action)
                })
                .collect()
        })
        .unwrap_or_default()
}

/// What the web app serves through its NodePort at `minikube ip`.
fn fetch_page(ns: &str) -> Option<String> {
    let port = run_ok(minikube().kubectl().args([
        "-n",
        ns,
        "get",
        "service",
        "web",
        "-o",
        "jsonpath={.spec.ports[0].nodePort}",
    ]));
    let url = format!("http://{}:{}/", minikube().ip, port.trim());
    let out = Command::new("curl")
        .args(["-fsS", "--max-time", "5", &url])
        .output()
        .ok()?;
    out.status
        .success()
        .then(|| String::from_utf8_lossy(&out.stdout).into_owned())
}

fn wait_page(ns: &str, want: &str) {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let got = fetch_page(ns);
        if got.as_deref() == Some(want) {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "the web app on minikube does not serve {want:?} (last: {got:?})"
        );
        std::thread::sleep(Duration::from_millis(500));
    }
}

#[test]
fn on_minikube_an_image_is_loaded_verified_and_served_and_a_revert_builds_nothing() {
    let _one_at_a_time = exclusive();
    let mk = minikube();
    let ns = MkNamespace::new("mk-images");
    let repo = app_repo(&ns.0);
    let t = Instant::now();
    let (out, report, stderr) = apply(&repo, &[]);
    assert!(
        out.status.success() && report["ready"] == true,
        "apply on minikube failed:\n{report:#}\nstderr:\n{stderr}"
    );
    eprintln!(
        "[minikube] empty namespace -> web serving, one image built and loaded: {:.1}s",
        t.elapsed().as_secs_f64()
    );
    assert_eq!(
        builds(&report),
        vec![("web".into(), "built".into())],
        "{report:#}"
    );
    // The none driver refuses docker-env (exit 51): converge said why it loads instead.
    assert!(
        stderr.contains("ENV_DRIVER_CONFLICT") || stderr.contains("none driver"),
        "the log does not say why minikube's image commands were used:\n{stderr}"
    );
    let image = report["builds"][0]["image"]
        .as_str()
        .unwrap_or("")
        .to_string();
    let listed = run_ok(mk.minikube().args(["image", "ls"]));
    let short = image.rsplit('/').next().unwrap_or(&image).to_string();
    assert!(
        listed.lines().any(|l| l.ends_with(&short)),
        "`minikube image ls` does not list {image}:\n{listed}"
    );
    wait_page(&ns.0, &page(&ns.0, "v1"));

    // A change to the build input: exactly that image is rebuilt.
    let first = repo.head();
    repo.write("apps/web/index.html", page(&ns.0, "v2"));
    repo.commit("web: v2");
    let (out, report, stderr) = apply(&repo, &[]);
    assert!(
        out.status.success() && report["ready"] == true,
        "{report:#}\n{stderr}"
    );
    assert_eq!(
        builds(&report),
        vec![("web".into(), "built".into())],
        "{report:#}"
    );
    wait_page(&ns.0, &page(&ns.0, "v2"));

    // git revert: the v1 image is minikube's already; nothing is built or loaded.
    repo.git(&["revert", "--no-edit", "HEAD"]);
    let t = Instant::now();
    let (out, report, stderr) = apply(&repo, &[]);
    assert!(
        out.status.success() && report["ready"] == true,
        "{report:#}\n{stderr}"
    );
    assert_eq!(
        builds(&report),
        vec![("web".into(), "exists".into())],
        "a revert rebuilt: {report:#}"
    );
    wait_page(&ns.0, &page(&ns.0, "v1"));
    eprintln!(
        "[minikube] git revert -> v1 serving again, zero builds: {:.1}s",
        t.elapsed().as_secs_f64()
    );
    assert_ne!(repo.head(), first);
}

/// Runs `converge apply` with `extra` flags and `path` as PATH; returns its exit and stderr.
fn apply_expecting_failure(repo: &GitRepo, extra: &[&str], path: Option<&str>) -> (Output, String) {
    let mut cmd = minikube().converge();
    cmd.args(["apply", "--repo"])
        .arg(repo.path())
        .args(["--timeout", "60s"])
        .args(extra);
    if let Some(p) = path {
        cmd.env("PATH", p);
    }
    let out = cmd.output().expect("run converge apply");
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    (out, stderr)
}

/// Nothing of the stack's objects is in the namespace (the status record says why it failed).
fn assert_nothing_applied(ns: &str) {
    let got = run_ok(minikube().kubectl().args([
        "-n",
        ns,
        "get",
        "deployments,services,jobs,serviceaccounts",
        "-l",
        "app.kubernetes.io/managed-by=converge",
        "-o",
        "name",
    ]));
    assert!(
        got.trim().is_empty(),
        "a failed build still changed the cluster:\n{got}"
    );
}

#[test]
fn a_minikube_profile_that_does_not_exist_is_named_with_the_command_that_starts_it_and_nothing_changes(
) {
    let _one_at_a_time = exclusive();
    let ns = MkNamespace::new("mk-noprofile");
    let repo = app_repo(&ns.0);
    let (out, stderr) =
        apply_expecting_failure(&repo, &["--minikube-profile", "converge-nosuch"], None);
    assert!(
        !out.status.success(),
        "apply succeeded with a missing profile:\n{stderr}"
    );
    // minikube v1.38.1 answers exit 85 (`Profile "converge-nosuch" not found`).
    assert!(
        stderr.contains("minikube start -p converge-nosuch"),
        "the error does not give the command that starts the profile:\n{stderr}"
    );
    assert_nothing_applied(&ns.0);
}

#[test]
fn without_minikube_on_path_the_error_names_it_and_nothing_changes() {
    let _one_at_a_time = exclusive();
    let ns = MkNamespace::new("mk-nobinary");
    let repo = app_repo(&ns.0);
    // The PATH a user has without minikube: the system's, and helm.
    let helm_dir = testbed()
        .helm
        .parent()
        .map(Path::to_path_buf)
        .unwrap_or_default();
    let path = format!(
        "{}:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
        helm_dir.display()
    );
    let (out, stderr) = apply_expecting_failure(&repo, &[], Some(&path));
    assert!(
        !out.status.success(),
        "apply succeeded without minikube:\n{stderr}"
    );
    assert!(
        stderr.contains("minikube") && (stderr.contains("not found") || stderr.contains("PATH")),
        "the error does not say minikube is missing from PATH:\n{stderr}"
    );
    assert_nothing_applied(&ns.0);
}

#[test]
fn doctor_on_the_minikube_context_checks_minikube_itself() {
    let _one_at_a_time = exclusive();
    let ns = MkNamespace::new("mk-doctor");
    let repo = app_repo(&ns.0);
    let out = minikube()
        .converge()
        .args(["doctor", "--repo"])
        .arg(repo.path())
        .output()
        .expect("run converge doctor");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        !stdout.contains("FAIL"),
        "doctor fails on a running minikube:\n{stdout}\n{stderr}"
    );
    // What doctor read from minikube itself (`minikube version`, `minikube status`), and from the
    // cluster (the node's minikube labels).
    assert!(
        stdout.lines().any(|l| l.starts_with("ok   builder")
            && l.contains("builds into minikube profile `minikube`: minikube v1.38.1 (running)")),
        "doctor's builder line does not name the running minikube:\n{stdout}"
    );
    assert!(
        stdout
            .lines()
            .any(|l| l.starts_with("ok   cluster") && l.contains("a minikube cluster")),
        "doctor does not recognise the cluster as minikube:\n{stdout}"
    );
}

// ---- docs/quickstart.md, run as written ----

/// The fenced `sh` blocks of a Markdown file, in order, with `\`-continued lines joined.
fn sh_blocks(markdown: &str) -> Vec<Vec<String>> {
    let mut blocks = Vec::new();
    let mut current: Option<Vec<String>> = None;
    for line in markdown.lines() {
        match (&mut current, line.trim_start()) {
            (None, l) if l.starts_with("```sh") => current = Some(Vec::new()),
            (Some(_), "```") => blocks.extend(current.take()),
            (Some(lines), l) => {
                let continues = lines.last().is_some_and(|p: &String| p.ends_with('\\'));
                if continues {
                    let prev = lines.pop().unwrap_or_default();
                    lines.push(format!("{} {}", prev.trim_end_matches('\\').trim_end(), l));
                } else if !l.is_empty() {
                    lines.push(l.to_string());
                }
            }
            (None, _) => {}
        }
    }
    blocks
}

/// What the test does with one line of the quickstart.
#[derive(Debug, PartialEq)]
enum Line {
    /// Run it as written.
    Run(String),
    /// Run this instead (the only substitution: minikube's start flags on this machine).
    Substitute(String),
    /// Not runnable here, with the reason; what stands in for it is said beside it.
    NotHere(&'static str),
}

fn plan_line(line: &str, start_flags: &str) -> Line {
    // Strip a trailing `# comment` only where it follows a command (the service line has one).
    let command = line.split("   #").next().unwrap_or(line).trim().to_string();
    if command.starts_with("minikube start") {
        Line::Substitute(format!("minikube start {start_flags}"))
    } else if command.starts_with("converge service install") {
        Line::NotHere("needs a systemd --user manager (PID 1 here is not systemd); the test runs `converge run --stack dev` as the unit would, and tests/integration/service.rs installs the real unit in a systemd container")
    } else if command.starts_with("journalctl") {
        Line::NotHere("follows the service's journal forever (no systemd here); the test reads the daemon's log instead")
    } else {
        Line::Run(command)
    }
}

/// The daemon the installed service would run.
struct Daemon {
    child: std::process::Child,
    log: PathBuf,
}

impl Daemon {
    fn start(repo: &Path, path: &str) -> Daemon {
        let log = repo.join("../converge-run.log");
        let file = std::fs::File::create(&log).expect("daemon log file");
        let child = minikube()
            .converge()
            .env("PATH", path)
            .current_dir(repo)
            .args([
                "run",
                "--stack",
                "dev",
                "--log-format",
                "json",
                "--log",
                "info",
            ])
            .stdout(std::process::Stdio::null())
            .stderr(file)
            .spawn()
            .expect("spawn converge run");
        Daemon { child, log }
    }

    fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for Daemon {
    /// SIGTERM, as `converge service uninstall` stops the unit: the daemon releases its Lease.
    fn drop(&mut self) {
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
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// `converge status --stack dev -o json` in `repo`.
fn dev_status(repo: &Path, path: &str) -> Value {
    let out = minikube()
        .converge()
        .env("PATH", path)
        .current_dir(repo)
        .args(["status", "--stack", "dev", "-o", "json"])
        .output()
        .expect("converge status");
    let v: Value = serde_json::from_slice(&out.stdout).unwrap_or(Value::Null);
    match v {
        Value::Array(mut a) if !a.is_empty() => a.remove(0),
        Value::Object(ref o) if o.contains_key("stacks") => v["stacks"][0].clone(),
        other => other,
    }
}

fn wait_dev_ready_at(repo: &Path, path: &str, commit: &str, daemon: &Daemon) -> Value {
    let deadline = Instant::now() + Duration::from_secs(300);
    loop {
        let s = dev_status(repo, path);
        let applied = s["lastAppliedCommit"]
            .as_str()
            .or_else(|| s["status"]["lastAppliedCommit"].as_str())
            .unwrap_or("");
        let ready = s["ready"] == true || s["status"]["ready"] == true;
        if applied == commit && ready {
            return s;
        }
        assert!(
            Instant::now() < deadline,
            "the daemon did not converge {commit} on minikube; status:\n{s:#}\ndaemon log (tail):\n{}",
            tail(&daemon.log(), 40)
        );
        std::thread::sleep(Duration::from_secs(1));
    }
}

fn tail(text: &str, n: usize) -> String {
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

/// The frontend's own end-to-end test (headless Chromium) against `url`: add a task, complete
/// it, ask the chat agent to add one, see both listed.
fn drive_the_ui(url: &str) {
    let frontend = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("apps/frontend");
    assert!(
        frontend.join("node_modules/playwright-core").exists(),
        "apps/frontend/node_modules is missing: run apps/test (or `npm ci` in apps/frontend) first; .ci/run does"
    );
    let out = Command::new("node")
        .args(["--test", "test/e2e/"])
        .current_dir(&frontend)
        .env("FRONTEND_URL", url)
        .output()
        .expect("run node --test");
    assert!(
        out.status.success(),
        "the UI test failed against minikube at {url}:\n{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

fn wait_http_ok(url: &str) {
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let ok = Command::new("curl")
            .args(["-fsS", "--max-time", "5", "-o", "/dev/null", url])
            .status()
            .is_ok_and(|s| s.success());
        if ok {
            return;
        }
        assert!(Instant::now() < deadline, "{url} does not answer");
        std::thread::sleep(Duration::from_secs(1));
    }
}

/// `bash -c script` in `dir` with a minikube user's environment (that of
/// [`Minikube::converge`]) and `path` as PATH.
fn shell(script: &str, dir: &Path, path: &str) -> Command {
    let mut cmd = Command::new("bash");
    cmd.arg("-c").arg(script).current_dir(dir);
    for (k, v) in minikube().converge().get_envs() {
        match v {
            Some(v) => cmd.env(k, v),
            None => cmd.env_remove(k),
        };
    }
    cmd.env("PATH", path);
    cmd
}

/// Image builds the daemon did (`build.done` events whose action is `built`).
fn builds_done(log: &str) -> usize {
    log.lines()
        .filter(|l| l.contains("build.done") && l.contains("\"action\":\"built\""))
        .count()
}

#[test]
fn the_quickstart_runs_as_written_on_minikube() {
    let _one_at_a_time = exclusive();
    let mk = minikube();
    let t0 = Instant::now();
    let doc =
        std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("docs/quickstart.md"))
            .expect("docs/quickstart.md");
    let blocks = sh_blocks(&doc);
    assert!(
        blocks.len() >= 6,
        "docs/quickstart.md has {} sh blocks: {blocks:?}",
        blocks.len()
    );
    let start_flags = std::fs::read_to_string(mk.dir.join("env"))
        .ok()
        .and_then(|env| {
            env.lines()
                .find_map(|l| l.strip_prefix("export CONVERGE_MINIKUBE_START_FLAGS="))
                .map(|v| v.trim_matches('\'').to_string())
        })
        .expect("the minikube bed's env names its start flags");

    // From zero: the quickstart's namespace does not exist yet on this minikube.
    let _ = mk
        .kubectl()
        .args([
            "delete",
            "namespace",
            "todo-chatbot",
            "--wait=true",
            "--timeout=120s",
        ])
        .output();

    // The user's checkout: the shipped apps, chart and desired/dev, committed.
    let repo = GitRepo::new();
    for dir in [
        "apps/backend",
        "apps/frontend",
        "charts/todo-chatbot",
        "desired/dev",
    ] {
        crate::support::git::copy_tracked(&repo, dir, dir);
    }
    repo.commit("the todo-chatbot stack");
    // converge on PATH, as `cargo install --path .` puts it.
    let converge_dir = Path::new(env!("CARGO_BIN_EXE_converge"))
        .parent()
        .expect("converge's directory")
        .to_path_buf();
    let helm_dir = testbed()
        .helm
        .parent()
        .map(Path::to_path_buf)
        .unwrap_or_default();
    let path = format!(
        "{}:{}:{}:{}",
        converge_dir.display(),
        mk.bin.display(),
        helm_dir.display(),
        std::env::var("PATH").unwrap_or_default()
    );

    let mut daemon: Option<Daemon> = None;
    let mut not_here = Vec::new();
    let mut url = None;
    for (i, block) in blocks.iter().enumerate() {
        let mut script = String::from("set -euo pipefail\n");
        for line in block {
            match plan_line(line, &start_flags) {
                Line::Run(c) | Line::Substitute(c) => script.push_str(&format!("{c}\n")),
                Line::NotHere(why) => not_here.push(format!("{line}: {why}")),
            }
        }
        let before_revert = daemon.as_ref().map(|d| builds_done(&d.log()));
        let t = Instant::now();
        let out = shell(&script, repo.path(), &path)
            .output()
            .expect("run a quickstart block");
        let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
        let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
        eprintln!(
            "[quickstart] block {} ({:.1}s): {}",
            i + 1,
            t.elapsed().as_secs_f64(),
            block.join(" ; ")
        );
        assert!(
            out.status.success(),
            "quickstart block {} failed ({}):\n{script}\nstdout:\n{stdout}\nstderr:\n{stderr}",
            i + 1,
            out.status
        );
        let text = block.join("\n");
        if text.contains("converge doctor") {
            assert!(!stdout.contains("FAIL"), "doctor fails:\n{stdout}");
        }
        if text.contains("minikube service") {
            let u = stdout
                .lines()
                .rev()
                .find(|l| l.starts_with("http://"))
                .unwrap_or_else(|| {
                    panic!("`minikube service --url` printed no URL:\n{stdout}\n{stderr}")
                })
                .trim()
                .to_string();
            wait_http_ok(&format!("{u}/api/health"));
            drive_the_ui(&u);
            eprintln!(
                "[quickstart] empty namespace -> todo-chatbot answering at {u}, UI checked: {:.1}s",
                t0.elapsed().as_secs_f64()
            );
            url = Some(u);
        }
        if text.contains("converge service install") {
            daemon = Some(Daemon::start(repo.path(), &path));
        }
        if text.contains("git commit -am") {
            let d = daemon.as_ref().expect("the daemon runs from step 5 on");
            let s = wait_dev_ready_at(repo.path(), &path, &repo.head(), d);
            let frontend = s["components"]
                .as_array()
                .or_else(|| s["status"]["components"].as_array())
                .and_then(|c| c.iter().find(|c| c["name"] == "frontend").cloned())
                .unwrap_or(Value::Null);
            assert_eq!(
                frontend["ready"], 3,
                "frontend is not 3/3 after the commit: {s:#}"
            );
        }
        if text.contains("git revert") {
            let d = daemon.as_ref().expect("the daemon runs from step 5 on");
            wait_dev_ready_at(repo.path(), &path, &repo.head(), d);
            assert_eq!(
                builds_done(&d.log()),
                before_revert.unwrap_or_default(),
                "the revert rebuilt an image; daemon log:\n{}",
                tail(&d.log(), 40)
            );
            eprintln!("[quickstart] git revert -> converged, zero builds");
        }
    }
    assert!(url.is_some(), "the quickstart never printed the app's URL");
    assert!(
        daemon.is_some(),
        "the quickstart never installed the service"
    );
    drop(daemon);

    // docs/cleanup.md: `converge down --stack dev` removes what converge applied and keeps the
    // database's claim (and the namespace, and the Secret the user made).
    let out = shell("converge down --stack dev", repo.path(), &path)
        .output()
        .expect("converge down");
    assert!(
        out.status.success(),
        "converge down failed:\n{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let claims = run_ok(
        mk.kubectl()
            .args(["-n", "todo-chatbot", "get", "pvc", "-o", "name"]),
    );
    assert!(
        !claims.trim().is_empty(),
        "converge down deleted the database's claim"
    );
    let deployments =
        run_ok(
            mk.kubectl()
                .args(["-n", "todo-chatbot", "get", "deployments", "-o", "name"]),
        );
    assert!(
        deployments.trim().is_empty(),
        "converge down left: {deployments}"
    );
    eprintln!(
        "[quickstart] whole page in {:.1}s; not run here:\n  {}",
        t0.elapsed().as_secs_f64(),
        not_here.join("\n  ")
    );
    assert_eq!(not_here.len(), 2, "lines not run: {not_here:#?}");
}

#[test]
fn the_quickstart_parser_reads_every_command_and_only_substitutes_minikube_start() {
    let doc =
        std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("docs/quickstart.md"))
            .expect("docs/quickstart.md");
    let lines: Vec<String> = sh_blocks(&doc).into_iter().flatten().collect();
    assert!(
        lines.iter().any(
            |l| l.starts_with("kubectl create secret generic todo-chatbot-secrets")
                && l.contains("--from-literal=database-url=")
        ),
        "{lines:#?}"
    );
    let planned: Vec<Line> = lines
        .iter()
        .map(|l| plan_line(l, "--driver=none"))
        .collect();
    let substituted = planned
        .iter()
        .filter(|p| matches!(p, Line::Substitute(_)))
        .count();
    assert_eq!(substituted, 1, "{planned:#?}");
}
