//! converge as a service under a real systemd: a Debian bookworm container on the bed's Docker
//! engine boots systemd 252 as PID 1 (tests/testbed/systemd/build makes its root file system from
//! Debian's packages). The test installs the unit the way a user does — `converge service install`
//! from a shell in the checkout, with KUBECONFIG, a PATH holding helm and DOCKER_HOST — then
//! drives it only with systemctl, git and kill: READY before `active`, the sandbox in the
//! daemon's mounts, an image built and a commit reconciled under it, reload keeping the PID, the
//! watchdog, `kill -9`, a stop with a reconcile in flight, the JSON journal, and uninstall. One test for the system manager, one for a lingering user's
//! `--user` manager; the container shares the host's network, so the daemon reaches the bed's
//! apiserver on 127.0.0.1.
//!
//! Without the bed's Docker engine they fail, saying so: they never pass by not running.

use std::path::Path;
use std::process::{Command, Output, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::ConfigMap;
use serde_json::Value;

use crate::support::{
    current_context, docker, docker_host, kubectl, run_ok, testbed, unique_name, TestNamespace,
    FAIL_LABEL,
};

/// The unprivileged account of the image (tests/testbed/systemd/build).
const USER: &str = "alice";
const HOME: &str = "/home/alice";
/// The checkout, with a space: paths in the unit must be quoted and escaped right.
const CHECKOUT: &str = "/home/alice/todo app";
/// Where the bed's helm is mounted: off the default PATH, so only a captured PATH finds it.
const HELM_DIR: &str = "/opt/bed/bin";
/// The kubeconfig, not at the default place, so only a captured KUBECONFIG finds it.
const KUBECONFIG: &str = "/home/alice/.kube/bed.yaml";
/// Where the bed's Docker socket is mounted in the container.
const DOCKER_SOCKET: &str = "/run/docker.sock";
/// How long a reconcile on the kwok node may take.
const CONVERGED: Duration = Duration::from_secs(120);

/// Fails, saying what is missing, when the bed has no Docker engine or it does not answer: these
/// tests boot systemd in a container on it, and a test that returned early would pass without
/// showing anything.
fn require_engine() {
    assert!(
        testbed().docker_host.is_some(),
        "the testbed has no Docker engine (started with CONVERGE_TESTBED_NO_DOCKER=1), so there is no container to boot systemd in: start the bed with its engine (tests/testbed/up without CONVERGE_TESTBED_NO_DOCKER), or leave the service tests out (cargo test -- --skip service::)"
    );
    let answer = match docker()
        .args(["version", "--format", "{{.Server.Version}}"])
        .output()
    {
        Ok(o) if o.status.success() => return,
        Ok(o) => String::from_utf8_lossy(&o.stderr).trim().to_string(),
        Err(e) => format!("docker: {e}"),
    };
    panic!(
        "the bed's Docker engine at {} does not answer, so there is no container to boot systemd in: run tests/testbed/up, which starts it again ({answer})",
        docker_host()
    );
}

/// The docker CLI on this machine's PATH (mounted into the container).
fn docker_cli() -> std::path::PathBuf {
    std::env::var_os("PATH")
        .and_then(|p| {
            std::env::split_paths(&p)
                .map(|d| d.join("docker"))
                .find(|p| p.is_file())
        })
        .expect("the docker CLI on PATH")
}

fn repo_root() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

/// The image with systemd, imported into the bed's engine once per rootfs recipe.
fn image() -> &'static str {
    static IMAGE: OnceLock<String> = OnceLock::new();
    IMAGE.get_or_init(|| {
        let t = Instant::now();
        let build = repo_root().join("tests/testbed/systemd/build");
        let tarball = run_ok(Command::new(&build).stderr(Stdio::inherit()));
        let tarball = tarball.trim();
        let hash = tarball
            .rsplit("rootfs-")
            .next()
            .and_then(|s| s.strip_suffix(".tar"))
            .expect("build prints …/rootfs-<hash>.tar");
        let tag = format!("converge-systemd:{hash}");
        let present = docker()
            .args(["image", "inspect", "--format", "{{.Id}}", &tag])
            .output()
            .expect("docker runs")
            .status
            .success();
        if !present {
            run_ok(docker().args([
                "import",
                "--change",
                "CMD [\"/lib/systemd/systemd\"]",
                tarball,
                &tag,
            ]));
        }
        eprintln!("[service] image {tag} ready in {:?}", t.elapsed());
        tag
    })
}

/// Which systemd manager a test drives.
#[derive(Clone, Copy, PartialEq)]
enum Scope {
    System,
    User,
}

/// A container running systemd as PID 1; removed when dropped (its journal printed first when
/// the test failed).
struct Machine {
    name: String,
}

impl Machine {
    fn boot() -> Machine {
        let name = unique_name("converge-systemd");
        let bed = testbed();
        let exe = env!("CARGO_BIN_EXE_converge");
        // The facts of this host: --privileged is refused (the machine withholds
        // CAP_SYS_RESOURCE), so SYS_ADMIN and the host's cgroup tree; SIGRTMIN+3 is what systemd
        // takes as "shut down".
        run_ok(docker().args([
            "run",
            "-d",
            "-t",
            "--name",
            &name,
            "--network",
            "host",
            "--cap-add",
            "SYS_ADMIN",
            "--cgroupns=host",
            "-v",
            "/sys/fs/cgroup:/sys/fs/cgroup:rw",
            "--tmpfs",
            "/run",
            "--tmpfs",
            "/run/lock",
            "--stop-signal=SIGRTMIN+3",
            "-v",
            &format!("{exe}:/usr/local/bin/converge:ro"),
            "-v",
            &format!("{}:{HELM_DIR}/helm:ro", bed.helm.display()),
            // The bed's Docker engine and the docker CLI, for the docker builder.
            "-v",
            &format!(
                "{}:{DOCKER_SOCKET}",
                crate::support::docker_socket().display()
            ),
            "-v",
            &format!("{}:/usr/local/bin/docker:ro", docker_cli().display()),
            image(),
            "/lib/systemd/systemd",
        ]));
        let m = Machine { name };
        // The socket's group, as on a machine with Docker installed: the user is in it.
        let gid = std::fs::metadata(crate::support::docker_socket())
            .map(|md| std::os::unix::fs::MetadataExt::gid(&md))
            .expect("the bed's Docker socket");
        m.root(&format!(
            "groupadd -g {gid} docker && usermod -aG docker {USER}"
        ));
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let out = m.exec(&["systemctl", "is-system-running"]);
            let state = String::from_utf8_lossy(&out.stdout).trim().to_string();
            if state == "running" || state == "degraded" {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "systemd in {} is {state:?} after 30 s",
                m.name
            );
            std::thread::sleep(Duration::from_millis(100));
        }
        m
    }

    fn exec(&self, args: &[&str]) -> Output {
        docker()
            .arg("exec")
            .arg(&self.name)
            .args(args)
            .output()
            .expect("docker exec runs")
    }

    /// `sh -c script` as root; stdout, or a panic with both outputs.
    fn root(&self, script: &str) -> String {
        run_ok(docker().args(["exec", &self.name, "sh", "-c", script]))
    }

    /// `script` in a login shell of the test user (`su -l`: PAM gives it XDG_RUNTIME_DIR, as a
    /// login would).
    fn user(&self, script: &str) -> String {
        run_ok(docker().args(["exec", &self.name, "su", "-l", USER, "-c", script]))
    }

    /// Like [`Machine::user`] or [`Machine::root`], without failing on a non-zero exit.
    fn try_as(&self, scope: Scope, script: &str) -> Output {
        match scope {
            Scope::System => self.exec(&["sh", "-c", script]),
            Scope::User => self.exec(&["su", "-l", USER, "-c", script]),
        }
    }

    fn as_(&self, scope: Scope, script: &str) -> String {
        match scope {
            Scope::System => self.root(script),
            Scope::User => self.user(script),
        }
    }

    /// Writes `path` as the test user.
    fn write(&self, path: &str, text: &str) {
        let mut child = docker()
            .args([
                "exec",
                "-i",
                "-u",
                USER,
                &self.name,
                "sh",
                "-c",
                "mkdir -p \"$(dirname \"$1\")\" && cat > \"$1\"",
                "sh",
                path,
            ])
            .stdin(Stdio::piped())
            .spawn()
            .expect("docker exec runs");
        use std::io::Write;
        child
            .stdin
            .take()
            .expect("stdin")
            .write_all(text.as_bytes())
            .expect("write stdin");
        assert!(
            child.wait().expect("docker exec").success(),
            "writing {path}"
        );
    }

    /// `systemctl [--user] show -p PROP --value UNIT`.
    fn prop(&self, scope: Scope, unit: &str, prop: &str) -> String {
        self.as_(
            scope,
            &format!("systemctl {}show -p {prop} --value {unit}", flag(scope)),
        )
        .trim()
        .to_string()
    }

    /// The unit's journal, message only.
    fn journal(&self, scope: Scope, unit: &str) -> Vec<String> {
        self.as_(
            scope,
            &format!("journalctl {}-u {unit} -o cat --no-pager", flag(scope)),
        )
        .lines()
        .map(str::to_string)
        .collect()
    }

    /// Waits until the unit's `prop` satisfies `pred`; returns its value.
    fn wait_prop(
        &self,
        scope: Scope,
        unit: &str,
        prop: &str,
        timeout: Duration,
        pred: impl Fn(&str) -> bool,
    ) -> String {
        let deadline = Instant::now() + timeout;
        loop {
            let v = self.prop(scope, unit, prop);
            if pred(&v) {
                return v;
            }
            assert!(
                Instant::now() < deadline,
                "{unit}: {prop}={v:?} after {timeout:?}; journal:\n{}",
                self.journal(scope, unit).join("\n")
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Waits until the journal has a line containing every part of `parts`.
    fn wait_journal(&self, scope: Scope, unit: &str, parts: &[&str], timeout: Duration) -> String {
        let deadline = Instant::now() + timeout;
        loop {
            let lines = self.journal(scope, unit);
            if let Some(l) = lines.iter().find(|l| parts.iter().all(|p| l.contains(p))) {
                return l.clone();
            }
            assert!(
                Instant::now() < deadline,
                "no journal line with {parts:?} within {timeout:?}:\n{}",
                lines.join("\n")
            );
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    fn commit(&self, message: &str) -> String {
        self.user(&format!(
            "cd '{CHECKOUT}' && git add -A && git commit -q -m '{message}' && git rev-parse HEAD"
        ))
        .trim()
        .to_string()
    }
}

impl Drop for Machine {
    fn drop(&mut self) {
        if std::thread::panicking() {
            let out = self.exec(&["journalctl", "--no-pager", "-n", "150"]);
            eprintln!(
                "[service] journal of {}:\n{}",
                self.name,
                String::from_utf8_lossy(&out.stdout)
            );
        }
        let _ = docker().args(["rm", "-f", &self.name]).output();
    }
}

fn flag(scope: Scope) -> &'static str {
    match scope {
        Scope::System => "",
        Scope::User => "--user ",
    }
}

/// The checkout a user has: the project's chart, a stack on the bed's context in namespace `ns`
/// built with the docker builder (backend from a `FROM scratch` context, postgres from an image
/// ref), committed on `main`.
fn make_checkout(m: &Machine, ns: &str) -> String {
    let bed = testbed();
    let kubeconfig = run_ok(kubectl().args(["config", "view", "--raw", "--flatten"]));
    m.write(KUBECONFIG, &kubeconfig);
    m.user(&format!("chmod 600 {KUBECONFIG}"));
    let _ = bed;
    // The chart, copied in as the user would have it in their clone.
    let chart = repo_root().join("charts/todo-chatbot");
    m.user(&format!("mkdir -p '{CHECKOUT}/charts'"));
    run_ok(docker().args([
        "cp",
        &chart.to_string_lossy(),
        &format!("{}:{CHECKOUT}/charts/todo-chatbot", m.name),
    ]));
    m.root(&format!("chown -R {USER}:{USER} '{CHECKOUT}'"));
    m.write(
        &format!("{CHECKOUT}/desired/stack.yaml"),
        &format!(
            "apiVersion: converge.dev/v1alpha1\nkind: Stack\nname: todo\nnamespace: {ns}\ncontext: {}\nbuilder: docker\nvalues:\n  frontend:\n    service: {{type: ClusterIP, port: 80}}\n  migrations:\n    enabled: false\n",
            current_context()
        ),
    );
    m.write(
        &format!("{CHECKOUT}/desired/postgres.yaml"),
        "apiVersion: converge.dev/v1alpha1\nkind: Component\nname: postgres\nimage:\n  ref: postgres:16-alpine\nreplicas: 1\n",
    );
    write_backend(m, "v0", "");
    m.write(
        &format!("{CHECKOUT}/app/Dockerfile"),
        "FROM scratch\nCOPY version /version\n",
    );
    // Unique per run: the bed's engine outlives the test, and the same input would find its
    // image there and build nothing.
    m.write(&format!("{CHECKOUT}/app/version"), &format!("{ns}\n"));
    m.user(&format!(
        "cd '{CHECKOUT}' && git init -q -b main && git config user.email alice@converge.invalid && git config user.name alice"
    ));
    m.commit("stack")
}

fn write_backend(m: &Machine, version: &str, extra: &str) {
    m.write(
        &format!("{CHECKOUT}/desired/backend.yaml"),
        &format!("apiVersion: converge.dev/v1alpha1\nkind: Component\nname: backend\nimage:\n  build: {{context: app, repository: converge-test/service}}\nreplicas: 1\nenv:\n  VERSION: \"{version}\"\ndependsOn: [postgres]\n{extra}"),
    );
}

async fn backend_version(ns: &TestNamespace) -> String {
    let d = ns
        .api::<Deployment>()
        .get("todo-todo-chatbot-backend")
        .await
        .expect("backend Deployment");
    d.spec
        .and_then(|s| s.template.spec)
        .and_then(|s| s.containers.into_iter().next())
        .and_then(|c| c.env)
        .and_then(|e| e.into_iter().find(|v| v.name == "VERSION"))
        .and_then(|v| v.value)
        .unwrap_or_default()
}

async fn backend_image(ns: &TestNamespace) -> String {
    let d = ns
        .api::<Deployment>()
        .get("todo-todo-chatbot-backend")
        .await
        .expect("backend Deployment");
    d.spec
        .and_then(|s| s.template.spec)
        .and_then(|s| s.containers.into_iter().next())
        .and_then(|c| c.image)
        .unwrap_or_default()
}

async fn applied_commit(ns: &TestNamespace) -> Option<String> {
    let cm = ns
        .api::<ConfigMap>()
        .get_opt("converge-todo-status")
        .await
        .ok()??;
    let s: Value = serde_json::from_str(cm.data?.get("status.json")?).ok()?;
    s["lastAppliedCommit"].as_str().map(str::to_string)
}

/// The line of `converge service install`'s report that starts with `label`, without it.
fn report_line<'a>(report: &'a str, label: &str) -> &'a str {
    report
        .lines()
        .find_map(|l| l.strip_prefix(label))
        .unwrap_or_else(|| panic!("no `{label}` line in:\n{report}"))
        .trim()
}

/// Each JSON line converge wrote to the journal parses, and carries its fields.
fn json_lines(journal: &[String]) -> Vec<Value> {
    journal
        .iter()
        .filter(|l| l.starts_with('{'))
        .map(|l| {
            assert!(
                l.matches("\"message\":").count() == 1,
                "one message per line, not a field named message too: {l}"
            );
            serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON ({e}): {l}"))
        })
        .collect()
}

/// Everything a test checks, for one manager.
async fn run_as_a_service(scope: Scope) {
    let started = Instant::now();
    let ns = TestNamespace::new(match scope {
        Scope::System => "svc-system",
        Scope::User => "svc-user",
    })
    .await;
    let m = Machine::boot();
    eprintln!("[service] {} booted in {:?}", m.name, started.elapsed());
    if scope == Scope::User {
        // What an administrator does once so the user's manager runs without a login.
        m.root(&format!("loginctl enable-linger {USER}"));
        m.wait_prop(
            Scope::System,
            &format!("user@{}.service", 1000),
            "ActiveState",
            Duration::from_secs(20),
            |s| s == "active",
        );
    }
    let first = make_checkout(&m, ns.name());

    if scope == Scope::User {
        // Without a login session there is no user manager to talk to (`sudo -u`, `su` without
        // `-l`, cron): install says so and writes nothing.
        let out = docker()
            .args([
                "exec",
                "-u",
                USER,
                "-e",
                &format!("HOME={HOME}"),
                "-w",
                CHECKOUT,
                &m.name,
                "converge",
                "service",
                "install",
                "--user",
            ])
            .output()
            .expect("docker exec runs");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{err}");
        assert!(
            err.contains("your systemd user manager does not answer")
                && err.contains("nothing was written"),
            "{err}"
        );
        assert_eq!(
            m.user("ls -A ~/.config 2>/dev/null || true").trim(),
            "",
            "nothing under ~/.config"
        );
    }

    // Install from a shell in the checkout, with KUBECONFIG and helm's directory on PATH, the way
    // the user works; root installs the system unit (it runs as the checkout's owner).
    let env = format!(
        "export KUBECONFIG={KUBECONFIG} PATH={HELM_DIR}:$PATH DOCKER_HOST=unix://{DOCKER_SOCKET} DOCKER_BUILDKIT=0; cd '{CHECKOUT}'"
    );
    let report = match scope {
        Scope::System => m.root(&format!("{env} && converge service install")),
        Scope::User => m.user(&format!("{env} && converge service install --user")),
    };
    eprintln!(
        "[service] converge service install{}:\n{report}",
        if scope == Scope::User { " --user" } else { "" }
    );
    let unit_file = report_line(&report, "wrote ")
        .split(" (")
        .next()
        .unwrap()
        .to_string();
    let start = report_line(&report, "start it:").to_string();
    let follow = report_line(&report, "follow it:").to_string();
    let unit = start.rsplit(' ').next().unwrap().to_string();
    assert!(
        unit.starts_with("converge-todo-app-") && unit.ends_with(".service"),
        "{unit}"
    );
    match scope {
        Scope::System => {
            assert_eq!(unit_file, format!("/etc/systemd/system/{unit}"));
            assert!(
                report.contains("a systemd system unit, running as alice"),
                "{report}"
            );
            assert_eq!(start, format!("systemctl start {unit}"));
            assert_eq!(follow, format!("journalctl -u {unit} -f"));
        }
        Scope::User => {
            assert_eq!(unit_file, format!("{HOME}/.config/systemd/user/{unit}"));
            assert_eq!(start, format!("systemctl --user start {unit}"));
            assert_eq!(follow, format!("journalctl --user -u {unit} -f"));
        }
    }
    assert!(
        report.contains("from your environment: DOCKER_BUILDKIT, DOCKER_HOST, KUBECONFIG, PATH"),
        "{report}"
    );
    if scope == Scope::System {
        let text = m.root(&format!("cat {unit_file}"));
        assert!(
            text.lines().any(|l| l == "SupplementaryGroups=docker"),
            "{text}"
        );
    }
    assert_eq!(m.prop(scope, &unit, "UnitFileState"), "enabled");
    assert_eq!(
        m.prop(scope, &unit, "ActiveState"),
        "inactive",
        "install does not start it"
    );

    // Start it with the command as printed: systemctl returns once converge said READY=1.
    let t = Instant::now();
    m.as_(scope, &start);
    let took_start = t.elapsed();
    assert_eq!(m.prop(scope, &unit, "ActiveState"), "active");
    assert_eq!(m.prop(scope, &unit, "SubState"), "running");
    let status = m.prop(scope, &unit, "StatusText");
    assert!(!status.is_empty(), "converge sends a STATUS= line");
    let journal = m.journal(scope, &unit);
    let ready_at = journal
        .iter()
        .position(|l| l.contains("\"daemon started\""))
        .expect("daemon started logged");
    let started_at = journal
        .iter()
        .position(|l| l.starts_with("Started "))
        .expect("systemd's Started line");
    assert!(
        ready_at < started_at,
        "systemd said Started before converge was ready:\n{}",
        journal.join("\n")
    );
    eprintln!("[service] `{start}` returned after {took_start:?}, status {status:?}");

    // The sandbox as the daemon sees it: home read-only, the checkout's .git writable, a /tmp
    // of its own (mountinfo escapes the space as \040).
    let pid = m.prop(scope, &unit, "MainPID");
    let mounts = m.root(&format!("cat /proc/{pid}/mountinfo"));
    // The options of the mount that holds `path` (the deepest mount point above it; a later
    // line for the same point shadows an earlier one).
    let mount_of = |path: &str| -> String {
        let mut best: Option<(usize, String)> = None;
        for l in mounts.lines() {
            let f: Vec<&str> = l.split(' ').collect();
            let (point, opts) = (f[4], f[5]);
            let under = path == point || point == "/" || path.starts_with(&format!("{point}/"));
            if under && best.as_ref().is_none_or(|(len, _)| point.len() >= *len) {
                best = Some((point.len(), opts.to_string()));
            }
        }
        best.map(|(_, o)| o).unwrap_or_default()
    };
    let ro = |path: &str| mount_of(path).split(',').next() == Some("ro");
    let checkout = CHECKOUT.replace(' ', "\\040");
    assert!(
        ro(&format!("{HOME}/.kube/bed.yaml")),
        "the kubeconfig is read-only:\n{mounts}"
    );
    assert!(
        ro(&format!("{checkout}/desired")),
        "the work tree is read-only:\n{mounts}"
    );
    assert!(
        !ro(&format!("{checkout}/.git/converge.lock")),
        ".git is writable:\n{mounts}"
    );
    assert!(
        ro("/usr/bin") && ro("/etc"),
        "the system is read-only:\n{mounts}"
    );
    assert!(
        mounts.lines().any(|l| l.split(' ').nth(4) == Some("/tmp")),
        "a /tmp of its own"
    );

    // The first commit converges under the sandbox (helm from the captured PATH, the kubeconfig
    // from the captured KUBECONFIG, the lock in .git).
    let short = |c: &str| c[..7].to_string();
    m.wait_prop(scope, &unit, "StatusText", CONVERGED, |s| {
        s == format!("converged at {}", short(&first))
    });
    assert_eq!(applied_commit(&ns).await.as_deref(), Some(first.as_str()));
    // The backend's image was built by the daemon, through the socket, under the sandbox.
    let image = backend_image(&ns).await;
    assert!(image.starts_with("converge-test/service:"), "{image}");
    run_ok(docker().args(["image", "inspect", "--format", "{{.Id}}", &image]));
    m.wait_journal(
        scope,
        &unit,
        &["\"image built\"", &image],
        Duration::from_secs(1),
    );

    // A commit made in the checkout is picked up by the watch and deployed.
    write_backend(&m, "v1", "");
    let second = m.commit("backend v1");
    let t = Instant::now();
    m.wait_prop(scope, &unit, "StatusText", CONVERGED, |s| {
        s == format!("converged at {}", short(&second))
    });
    assert_eq!(backend_version(&ns).await, "v1");
    eprintln!(
        "[service] commit {} converged {:?} after it was made",
        short(&second),
        t.elapsed()
    );
    let status_text = m.as_(
        scope,
        &format!(
            "SYSTEMD_COLORS=0 systemctl {}status {unit} --no-pager -n 0",
            flag(scope)
        ),
    );
    eprintln!("[service] systemctl status:\n{status_text}");

    // Reload: SIGHUP to the same process, which re-reads and reconciles.
    let pid = m.prop(scope, &unit, "MainPID");
    m.as_(scope, &format!("systemctl {}reload {unit}", flag(scope)));
    m.wait_journal(
        scope,
        &unit,
        &["reloading (SIGHUP)"],
        Duration::from_secs(10),
    );
    m.wait_journal(
        scope,
        &unit,
        &["\"trigger\":\"reload\"", "reconcile started"],
        Duration::from_secs(10),
    );
    assert_eq!(
        m.prop(scope, &unit, "MainPID"),
        pid,
        "reload keeps the process"
    );
    assert!(m
        .journal(scope, &unit)
        .iter()
        .any(|l| l.starts_with("Reloaded ")));

    // kill -9: restarted after RestartSec, as a new process.
    let t = Instant::now();
    m.as_(scope, &format!("kill -9 {pid}"));
    let new_pid = m.wait_prop(scope, &unit, "MainPID", Duration::from_secs(30), |p| {
        p != pid && p != "0"
    });
    m.wait_prop(scope, &unit, "ActiveState", Duration::from_secs(10), |s| {
        s == "active"
    });
    let took_kill = t.elapsed();
    assert!(
        took_kill >= Duration::from_secs(5),
        "restarted after {took_kill:?}, before RestartSec=5s"
    );
    m.wait_journal(scope, &unit, &["status=9/KILL"], Duration::from_secs(1));
    eprintln!("[service] kill -9 {pid}: running again as {new_pid} after {took_kill:?}");

    // The watchdog: a frozen daemon stops pinging; systemd aborts and restarts it. A drop-in
    // shortens WatchdogSec=30s to keep the test short.
    let dropin = match scope {
        Scope::System => format!("/etc/systemd/system/{unit}.d"),
        Scope::User => format!("{HOME}/.config/systemd/user/{unit}.d"),
    };
    m.as_(scope, &format!("mkdir -p {dropin} && printf '[Service]\\nWatchdogSec=3s\\n' > {dropin}/watchdog.conf && systemctl {}daemon-reload && systemctl {}restart {unit}", flag(scope), flag(scope)));
    let pid = m.prop(scope, &unit, "MainPID");
    let t = Instant::now();
    m.as_(scope, &format!("kill -STOP {pid}"));
    m.wait_journal(
        scope,
        &unit,
        &["Watchdog timeout (limit 3s)"],
        Duration::from_secs(15),
    );
    m.wait_journal(
        scope,
        &unit,
        &["Killing process", &pid, "SIGABRT"],
        Duration::from_secs(5),
    );
    let after = m.wait_prop(scope, &unit, "MainPID", Duration::from_secs(20), |p| {
        p != pid && p != "0"
    });
    m.wait_prop(scope, &unit, "ActiveState", Duration::from_secs(10), |s| {
        s == "active"
    });
    eprintln!(
        "[service] SIGSTOP {pid}: watchdog restart as {after} after {:?}",
        t.elapsed()
    );
    m.as_(
        scope,
        &format!("rm -r {dropin} && systemctl {}daemon-reload", flag(scope)),
    );

    // Stop: exit 0 within TimeoutStopSec. For the system unit with a reconcile in flight (a
    // backend that never becomes ready keeps it waiting for health): as documented, shutdown
    // stops it at its health wait, where nothing is lost (what was applied is recorded), and
    // the daemon exits at once instead of sitting out its grace period.
    if scope == Scope::System {
        m.wait_prop(scope, &unit, "StatusText", CONVERGED, |s| {
            s.starts_with("converged at")
        });
        write_backend(
            &m,
            "v2",
            &format!("values:\n  podLabels: {{{FAIL_LABEL}: unready}}\n"),
        );
        m.commit("backend v2, never ready");
        m.wait_journal(
            scope,
            &unit,
            &["\"trigger\":\"commit\"", "reconcile started"],
            Duration::from_secs(10),
        );
        let deadline = Instant::now() + Duration::from_secs(30);
        while backend_version(&ns).await != "v2" {
            assert!(Instant::now() < deadline, "v2 was not applied");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
    let t = Instant::now();
    m.as_(scope, &format!("systemctl {}stop {unit}", flag(scope)));
    let took_stop = t.elapsed();
    assert!(
        took_stop < Duration::from_secs(20),
        "stop took {took_stop:?}, past TimeoutStopSec=20s"
    );
    assert_eq!(m.prop(scope, &unit, "ActiveState"), "inactive");
    assert_eq!(
        m.prop(scope, &unit, "Result"),
        "success",
        "no SIGKILL, no failure"
    );
    assert_eq!(m.prop(scope, &unit, "ExecMainStatus"), "0");
    m.wait_journal(
        scope,
        &unit,
        &["stopping: no new work"],
        Duration::from_secs(1),
    );
    if scope == Scope::System {
        m.wait_journal(
            scope,
            &unit,
            &["the reconcile in flight stops at its next health wait: shutdown"],
            Duration::from_secs(1),
        );
        m.wait_journal(
            scope,
            &unit,
            &["health wait preempted"],
            Duration::from_secs(1),
        );
    }
    eprintln!("[service] stop took {took_stop:?}");

    // The journal holds converge's JSON lines with their fields.
    let journal = m.journal(scope, &unit);
    let lines = json_lines(&journal);
    let daemon_started = lines
        .iter()
        .find(|l| l["fields"]["message"] == "daemon started")
        .expect("a daemon started line");
    assert_eq!(daemon_started["level"], "INFO");
    assert_eq!(daemon_started["target"], "converge::daemon");
    assert!(
        daemon_started["fields"]["stacks"]
            .as_str()
            .unwrap_or("")
            .starts_with("todo@"),
        "{daemon_started}"
    );
    assert!(
        daemon_started["fields"]["pid"].as_u64().is_some(),
        "{daemon_started}"
    );
    let applied = lines
        .iter()
        .find(|l| {
            l["fields"]["message"]
                .as_str()
                .unwrap_or("")
                .contains("applied,")
                && l["fields"]["reason"].is_string()
        })
        .expect("a line reporting what a reconcile applied");
    assert!(applied["fields"]["writes"].as_u64().is_some(), "{applied}");
    assert!(applied["span"]["commit"].is_string(), "{applied}");
    // For docs/daemon.md: the first start and commit, and the last lines (the stop).
    let json: Vec<&str> = journal
        .iter()
        .filter(|l| l.starts_with('{'))
        .map(String::as_str)
        .collect();
    eprintln!(
        "[service] journal, first and last lines:\n{}\n…\n{}",
        json[..4.min(json.len())].join("\n"),
        json[json.len().saturating_sub(4)..].join("\n")
    );

    // The whole journal and status, for docs/daemon.md (target/service-test/).
    let out = repo_root().join("target/service-test");
    let _ = std::fs::create_dir_all(&out);
    let tag = if scope == Scope::System {
        "system"
    } else {
        "user"
    };
    let _ = std::fs::write(out.join(format!("{tag}-journal.txt")), journal.join("\n"));
    let _ = std::fs::write(out.join(format!("{tag}-status.txt")), &status_text);
    let _ = std::fs::write(out.join(format!("{tag}-install.txt")), &report);

    let systemd_lines: Vec<&String> = journal.iter().filter(|l| !l.starts_with('{')).collect();
    eprintln!(
        "[service] systemd's lines about {unit}:\n{}",
        systemd_lines
            .iter()
            .map(|s| s.as_str())
            .collect::<Vec<_>>()
            .join("\n")
    );

    // Uninstall removes what install wrote: the unit, its enablement, its cache.
    let uninstall = match scope {
        Scope::System => m.root(&format!("cd '{CHECKOUT}' && converge service uninstall")),
        Scope::User => m.user(&format!(
            "cd '{CHECKOUT}' && converge service uninstall --user"
        )),
    };
    assert!(
        uninstall.contains(&format!("stopped and removed {unit}")),
        "{uninstall}"
    );
    assert_eq!(m.prop(scope, &unit, "LoadState"), "not-found");
    let left = m.try_as(
        scope,
        &match scope {
            Scope::System => "ls -d /etc/systemd/system/converge-* /etc/systemd/system/*.wants/converge-* /var/cache/converge/converge-* 2>/dev/null".to_string(),
            Scope::User => format!("ls -d {HOME}/.config/systemd/user/converge-* {HOME}/.config/systemd/user/*.wants/converge-* {HOME}/.cache/converge/converge-* 2>/dev/null"),
        },
    );
    assert_eq!(
        String::from_utf8_lossy(&left.stdout).trim(),
        "",
        "left behind"
    );

    eprintln!(
        "[service] {} test took {:?}",
        if scope == Scope::System {
            "system"
        } else {
            "--user"
        },
        started.elapsed()
    );
    drop(m);
    // Deleted without waiting: nothing after this reads the namespace.
    drop(ns);
}

#[tokio::test]
async fn system_unit_installed_by_converge_runs_reloads_restarts_stops_and_uninstalls_under_real_systemd(
) {
    require_engine();
    run_as_a_service(Scope::System).await;
}

#[tokio::test]
async fn user_unit_installed_by_converge_runs_reloads_restarts_stops_and_uninstalls_under_a_real_user_manager(
) {
    require_engine();
    run_as_a_service(Scope::User).await;
}

#[test]
fn system_install_where_systemd_is_not_init_says_so_and_writes_nothing() {
    require_engine();
    // The same image without systemd as PID 1, as in most containers.
    let script = "git init -q /srv/todo && cd /srv/todo && converge service install 2>&1; echo \"exit=$?\"; ls -A /etc/systemd/system | grep converge || echo none";
    let out = run_ok(docker().args([
        "run",
        "--rm",
        "--network",
        "none",
        "-v",
        &format!(
            "{}:/usr/local/bin/converge:ro",
            env!("CARGO_BIN_EXE_converge")
        ),
        image(),
        "sh",
        "-c",
        script,
    ]));
    assert!(
        out.contains("systemd (the system manager) does not answer"),
        "{out}"
    );
    assert!(out.contains("not been booted with systemd"), "{out}");
    assert!(out.contains("nothing was written"), "{out}");
    assert!(out.contains("exit=2"), "{out}");
    assert!(
        out.trim_end().ends_with("none"),
        "a unit was left behind: {out}"
    );
}
