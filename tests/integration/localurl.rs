//! Local URLs (issue 20, item 1): `converge run` serves a stack's `localUrls` on
//! `127.0.0.1:<localPort>`, the same port across every rollout, always reaching a Ready Pod
//! through the API server's port-forward; a port in use is one clear error line and the stack
//! still converges.
//!
//! The app is the `urlapp` fixture chart (`tests/fixtures/charts/urlapp`): a busybox httpd
//! Deployment behind a ClusterIP Service (no NodePort: the local URL is the only way in). On the
//! real node converge builds its image from a FROM-scratch context committed in the test's
//! repository (`tests/fixtures/apps/hookweb` and the host's static busybox) and loads it into
//! the node's containerd; rollouts are commits that change the component's `env`.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::{ConfigMap, Pod};
use kube::api::ListParams;
use serde_json::Value;

use crate::support::git::{copy_project_dir, write_busybox_web, GitRepo};
use crate::support::{run_ok, testbed, TestNamespace};

/// The stack's name (its status record is `converge-urlapp-status`).
const STACK: &str = "urlapp";
/// Rollouts the polling test makes.
const ROLLOUTS: usize = 20;
/// How often the client polls the local URL.
const POLL_EVERY: Duration = Duration::from_millis(50);

/// `converge` aimed at the bed, with the bed's engine and the real node's containerd (so the
/// `containerd` builder is chosen and loads what it builds into the node).
fn converge() -> Command {
    let bed = testbed();
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_converge"));
    let helm_home = bed.dir.join("helm");
    cmd.env("KUBECONFIG", &bed.kubeconfig)
        .env("CONVERGE_HELM", &bed.helm)
        .env("HELM_CACHE_HOME", helm_home.join("cache"))
        .env("HELM_CONFIG_HOME", helm_home.join("config"))
        .env("HELM_DATA_HOME", helm_home.join("data"))
        .env("NO_COLOR", "1")
        .env_remove("CONVERGE_LOG")
        .env_remove("CONVERGE_LOG_FORMAT")
        .env_remove("CONVERGE_CONTEXT")
        .env_remove("NOTIFY_SOCKET");
    for k in [
        "DOCKER_HOST",
        "DOCKER_BUILDKIT",
        "CONTAINERD_ADDRESS",
        "CONTAINERD_NAMESPACE",
        "CONTAINERD_SNAPSHOTTER",
    ] {
        match bed.vars.get(k) {
            Some(v) => cmd.env(k, v),
            None => cmd.env_remove(k),
        };
    }
    cmd
}

/// The `local URL:` line of `converge status` run in the checkout.
fn status_url_line(repo: &GitRepo) -> String {
    let out = converge()
        .args(["status", "--repo"])
        .arg(repo.path())
        .args(["--context", &crate::support::current_context()])
        .output()
        .expect("run converge status");
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    text.lines()
        .find(|l| l.trim_start().starts_with("local URL:"))
        .map(|l| l.trim().to_string())
        .unwrap_or_else(|| {
            panic!(
                "converge status prints no local URL:\n{text}{}",
                String::from_utf8_lossy(&out.stderr)
            )
        })
}

/// A loopback port nothing listens on now (the kernel's choice, released at once).
fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free loopback port")
}

/// A repository with the urlapp chart and a stack in `ns` whose `web` component is served on
/// `local_port`. `build`: the image is built by converge from the committed context (real
/// node); otherwise a prebuilt reference (the kwok node runs any name).
fn app_repo(ns: &str, local_port: u16, build: bool) -> GitRepo {
    let repo = GitRepo::new();
    copy_project_dir(&repo, "tests/fixtures/charts/urlapp", "charts/urlapp");
    if build {
        write_busybox_web(&repo, &page(ns));
    }
    repo.write(
        "desired/stack.yaml",
        format!(
            "apiVersion: converge.dev/v1alpha1\nkind: Stack\nname: {STACK}\nnamespace: {ns}\nchart: charts/urlapp\nlocalUrls:\n  - {{component: web, localPort: {local_port}}}\n"
        ),
    );
    write_web(&repo, build, 0);
    repo.commit("urlapp: a web app served on a local URL");
    repo
}

/// The page the image serves: it names the test's namespace, so only this test's Pods answer it.
fn page(ns: &str) -> String {
    format!("urlapp {ns}\n")
}

/// `desired/web.yaml` at rollout `n` (its env changes, so the Pod is replaced).
fn write_web(repo: &GitRepo, build: bool, n: usize) {
    let image = if build {
        "  build:\n    context: apps/web\n    repository: converge-urltest-web\n"
    } else {
        "  ref: converge-urltest-web:kwok\n"
    };
    repo.write(
        "desired/web.yaml",
        format!("apiVersion: converge.dev/v1alpha1\nkind: Component\nname: web\nimage:\n{image}replicas: 1\nenv:\n  ROLLOUT: \"{n}\"\n"),
    );
}

/// A running `converge run`; its JSON log collected; killed when dropped.
struct Daemon {
    child: Child,
    lines: Arc<Mutex<Vec<String>>>,
}

impl Daemon {
    fn start(repo: &GitRepo) -> Daemon {
        let mut child = converge()
            .args(["run", "--repo"])
            .arg(repo.path())
            .args(["--context", &crate::support::current_context()])
            .args(["--log-format", "json", "--log", "info"])
            .args(["--resync", "1h", "--timeout", "120s"])
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn converge run");
        let lines = Arc::new(Mutex::new(Vec::new()));
        let stderr = child.stderr.take().expect("piped stderr");
        let sink = lines.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                sink.lock().expect("log sink").push(line);
            }
        });
        Daemon { child, lines }
    }

    fn tail(&self) -> String {
        let lines = self.lines.lock().expect("log sink");
        let from = lines.len().saturating_sub(60);
        lines[from..].join("\n")
    }

    fn count(&self, parts: &[&str]) -> usize {
        self.lines
            .lock()
            .expect("log sink")
            .iter()
            .filter(|l| parts.iter().all(|p| l.contains(p)))
            .count()
    }

    /// Waits for a log line holding every one of `parts`; returns it.
    async fn wait_log(&self, parts: &[&str], timeout: Duration) -> String {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(l) = self
                .lines
                .lock()
                .expect("log sink")
                .iter()
                .find(|l| parts.iter().all(|p| l.contains(p)))
            {
                return l.clone();
            }
            assert!(
                Instant::now() < deadline,
                "no daemon log line with {parts:?} within {timeout:?}; log:\n{}",
                self.tail()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The status converge recorded for the stack in `ns`.
async fn status(ns: &TestNamespace) -> Option<Value> {
    let cm = ns
        .api::<ConfigMap>()
        .get_opt(&format!("converge-{STACK}-status"))
        .await
        .ok()??;
    serde_json::from_str(cm.data?.get("status.json")?).ok()
}

/// Waits until the status record says `commit` is applied and ready.
async fn wait_ready_at(ns: &TestNamespace, commit: &str, daemon: &Daemon, timeout: Duration) {
    let deadline = Instant::now() + timeout;
    loop {
        let s = status(ns).await;
        if s.as_ref()
            .is_some_and(|s| s["ready"] == Value::Bool(true) && s["lastAppliedCommit"] == commit)
        {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{commit} not ready within {timeout:?}: {s:#?}\ndaemon log:\n{}",
            daemon.tail()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Waits until the namespace's only Pod is the one of rollout `n`, Ready, and every older Pod
/// is gone (not merely terminating): the rollout is over.
async fn wait_rolled(ns: &TestNamespace, n: usize, daemon: &Daemon, timeout: Duration) -> String {
    let pods = ns.api::<Pod>();
    let deadline = Instant::now() + timeout;
    loop {
        let list = pods
            .list(&ListParams::default().labels("app.kubernetes.io/component=web"))
            .await
            .expect("list web Pods");
        if let [only] = list.items.as_slice() {
            let rollout = only
                .spec
                .as_ref()
                .and_then(|s| s.containers.first())
                .and_then(|c| c.env.as_ref())
                .and_then(|e| e.iter().find(|v| v.name == "ROLLOUT"))
                .and_then(|v| v.value.clone());
            let ready = only
                .status
                .as_ref()
                .and_then(|s| s.conditions.as_ref())
                .is_some_and(|c| c.iter().any(|c| c.type_ == "Ready" && c.status == "True"));
            if rollout.as_deref() == Some(&n.to_string()) && ready {
                return only.metadata.name.clone().unwrap_or_default();
            }
        }
        assert!(
            Instant::now() < deadline,
            "rollout {n} not over within {timeout:?}: {:?}\ndaemon log:\n{}",
            list.items
                .iter()
                .map(|p| p.metadata.name.clone())
                .collect::<Vec<_>>(),
            daemon.tail()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// One HTTP GET of `/` on a new connection, read as curl and browsers read it: the head, then
/// `Content-Length` bytes of body (never waiting for the server's close). The body on a 200.
fn get(addr: SocketAddr) -> Result<String, String> {
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(2))
        .map_err(|e| format!("connect: {e}"))?;
    s.set_read_timeout(Some(Duration::from_secs(3)))
        .map_err(|e| e.to_string())?;
    write!(
        s,
        "GET / HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n"
    )
    .map_err(|e| format!("send: {e}"))?;
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        if let Some(end) = got.windows(4).position(|w| w == b"\r\n\r\n") {
            let head = String::from_utf8_lossy(&got[..end]).into_owned();
            let length = head
                .lines()
                .find_map(|l| {
                    let (k, v) = l.split_once(':')?;
                    k.eq_ignore_ascii_case("content-length")
                        .then(|| v.trim().parse::<usize>().ok())?
                })
                .ok_or_else(|| format!("no Content-Length: {head:?}"))?;
            if got.len() >= end + 4 + length {
                if !(head.starts_with("HTTP/1.") && head.contains(" 200 ")) {
                    return Err(format!("not a 200: {head:?}"));
                }
                return Ok(String::from_utf8_lossy(&got[end + 4..end + 4 + length]).into_owned());
            }
        }
        let n = s
            .read(&mut buf)
            .map_err(|e| format!("read: {e} after {:?}", String::from_utf8_lossy(&got)))?;
        if n == 0 {
            return Err(format!("closed after {:?}", String::from_utf8_lossy(&got)));
        }
        got.extend_from_slice(&buf[..n]);
    }
}

/// What the poller saw during one rollout.
#[derive(Debug, Default, Clone)]
struct Window {
    /// Requests made (each counted once, however many attempts).
    requests: usize,
    /// Requests whose first attempt failed and whose retry answered.
    retried: usize,
    /// Requests whose retry failed too.
    failed_twice: usize,
    /// The first errors, for the failure message.
    errors: Vec<String>,
    /// Each request's time to its answer (retry included), in ms.
    ms: Vec<u64>,
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_local_url_answers_from_a_real_pod_and_survives_20_rollouts_with_at_most_one_retry_per_request(
) {
    let ns = TestNamespace::real_node("urls").await;
    let port = free_port();
    let repo = app_repo(ns.name(), port, true);
    let daemon = Daemon::start(&repo);
    let url = format!("http://127.0.0.1:{port}");
    let started = daemon
        .wait_log(&["daemon started"], Duration::from_secs(60))
        .await;
    assert!(
        started.contains(&format!("{url}->{STACK}/web")),
        "the start line names the local URL and what it reaches: {started}"
    );
    let first = run_ok(
        Command::new("git")
            .arg("-C")
            .arg(repo.path())
            .args(["rev-parse", "HEAD"]),
    );
    wait_ready_at(&ns, first.trim(), &daemon, Duration::from_secs(180)).await;
    let pod0 = wait_rolled(&ns, 0, &daemon, Duration::from_secs(60)).await;

    // (a) The local URL answers with this test's page: from the real Pod, through the API server.
    let addr: SocketAddr = ([127, 0, 0, 1], port).into();
    let body = get(addr).unwrap_or_else(|e| {
        panic!(
            "{url} does not answer from Pod {pod0}: {e}\ndaemon log:\n{}",
            daemon.tail()
        )
    });
    assert_eq!(body, page(ns.name()), "{url} answers another app");
    let line = status_url_line(&repo);
    assert!(
        line.starts_with(&format!(
            "local URL: {url} -> web (served by the daemon of this checkout, pid {}",
            daemon.child.id()
        )),
        "{line}"
    );
    // The same in `-o json`, for scripts.
    let out = converge()
        .args(["status", "-o", "json", "--repo"])
        .arg(repo.path())
        .args(["--context", &crate::support::current_context()])
        .output()
        .expect("run converge status -o json");
    let json: Value = serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!(
            "converge status -o json is not JSON ({e}):\n{}",
            String::from_utf8_lossy(&out.stdout)
        )
    });
    let ours = json
        .as_array()
        .and_then(|a| {
            a.iter()
                .find(|s| s["stack"] == STACK && s["namespace"] == ns.name())
        })
        .unwrap_or_else(|| panic!("status -o json has no {STACK} in {}: {json:#}", ns.name()));
    let urls = &ours["localUrls"];
    assert_eq!(urls[0]["url"], url.as_str(), "status -o json: {json:#}");
    assert_eq!(urls[0]["reaches"], "web", "status -o json: {json:#}");
    assert!(
        urls[0]["served"]
            .as_str()
            .is_some_and(|s| s.starts_with("served by the daemon of this checkout")),
        "status -o json: {json:#}"
    );

    // (b) A client polls every 50 ms, retrying a failed request once, while 20 commits each
    // replace the Pod.
    let windows = Arc::new(Mutex::new(vec![Window::default(); ROLLOUTS + 1]));
    let current = Arc::new(AtomicUsize::new(0));
    let stop = Arc::new(AtomicBool::new(false));
    let poller = {
        let (windows, current, stop) = (windows.clone(), current.clone(), stop.clone());
        let want = page(ns.name());
        std::thread::spawn(move || {
            let check = |r: Result<String, String>| match r {
                Ok(b) if b == want => Ok(()),
                Ok(b) => Err(format!("wrong page: {b:?}")),
                Err(e) => Err(e),
            };
            while !stop.load(Ordering::Relaxed) {
                let w = current.load(Ordering::Relaxed);
                let t = Instant::now();
                let outcome = match check(get(addr)) {
                    Ok(()) => (false, false, None),
                    Err(e1) => match check(get(addr)) {
                        Ok(()) => (true, false, Some(e1)),
                        Err(e2) => (true, true, Some(format!("{e1}; retry: {e2}"))),
                    },
                };
                {
                    let mut ws = windows.lock().expect("windows");
                    let win = &mut ws[w];
                    win.requests += 1;
                    win.ms.push(t.elapsed().as_millis() as u64);
                    win.retried += usize::from(outcome.0 && !outcome.1);
                    win.failed_twice += usize::from(outcome.1);
                    if let Some(e) = outcome.2 {
                        if win.errors.len() < 3 {
                            win.errors.push(e);
                        }
                    }
                }
                std::thread::sleep(POLL_EVERY);
            }
        })
    };
    let t0 = Instant::now();
    let mut pods = vec![pod0];
    for n in 1..=ROLLOUTS {
        current.store(n, Ordering::Relaxed);
        write_web(&repo, true, n);
        repo.commit(&format!("rollout {n}"));
        let pod = wait_rolled(&ns, n, &daemon, Duration::from_secs(60)).await;
        assert!(
            !pods.contains(&pod),
            "rollout {n} did not replace the Pod ({pod})"
        );
        pods.push(pod);
        // Let the poller make a few requests to the new Pod alone before the next rollout.
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    stop.store(true, Ordering::Relaxed);
    poller.join().expect("the poller thread");
    let took = t0.elapsed();

    let windows = windows.lock().expect("windows").clone();
    eprintln!("local URL {url} polled every {POLL_EVERY:?} through {ROLLOUTS} rollouts of one Pod (maxSurge 1) in {:.1} s:", took.as_secs_f64());
    eprintln!("rollout  requests  failed-once(retried ok)  failed-twice");
    for (n, w) in windows.iter().enumerate().skip(1) {
        eprintln!(
            "{n:>7}  {:>8}  {:>23}  {:>12}",
            w.requests, w.retried, w.failed_twice
        );
    }
    let total: usize = windows.iter().skip(1).map(|w| w.requests).sum();
    let retried: usize = windows.iter().skip(1).map(|w| w.retried).sum();
    let twice: usize = windows.iter().skip(1).map(|w| w.failed_twice).sum();
    eprintln!(
        "total: {total} requests, {retried} needed their one retry, {twice} failed twice; max failed-once in one rollout: {}",
        windows.iter().skip(1).map(|w| w.retried).max().unwrap_or(0)
    );
    let mut ms: Vec<u64> = windows.iter().skip(1).flat_map(|w| w.ms.clone()).collect();
    ms.sort_unstable();
    if !ms.is_empty() {
        eprintln!(
            "request time through the local URL: p50 {} ms, p90 {} ms, max {} ms",
            ms[ms.len() / 2],
            ms[ms.len() * 9 / 10],
            ms[ms.len() - 1]
        );
    }
    for (n, w) in windows.iter().enumerate().skip(1) {
        assert!(
            w.requests >= 3,
            "rollout {n}: the client made only {} requests: the poll did not cover the rollout",
            w.requests
        );
        assert_eq!(
            w.failed_twice,
            0,
            "rollout {n}: a request failed twice in a row through {url}: {:?}\ndaemon log:\n{}",
            w.errors,
            daemon.tail()
        );
    }
    ns.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_local_port_in_use_is_one_clear_error_line_and_the_stack_still_converges() {
    let ns = TestNamespace::new("urlbusy").await;
    // Another program holds the port the stack asks for.
    let holder = TcpListener::bind("127.0.0.1:0").expect("hold a port");
    let port = holder.local_addr().expect("held address").port();
    let repo = app_repo(ns.name(), port, false);
    let daemon = Daemon::start(&repo);
    let refused = daemon
        .wait_log(
            &[&format!("port {port} is already in use")],
            Duration::from_secs(60),
        )
        .await;
    for part in [
        "\"level\":\"ERROR\"",
        &format!("local URL http://127.0.0.1:{port} ({STACK}/web) not served"),
        "choose another `localPort`",
        "stop the process holding it",
    ] {
        assert!(refused.contains(part), "`{part}` missing from: {refused}");
    }
    let first = run_ok(
        Command::new("git")
            .arg("-C")
            .arg(repo.path())
            .args(["rev-parse", "HEAD"]),
    );
    wait_ready_at(&ns, first.trim(), &daemon, Duration::from_secs(90)).await;

    // Another commit converges too, and the refusal is not repeated at each reconcile.
    write_web(&repo, false, 1);
    let second = repo.commit("rollout 1");
    wait_ready_at(&ns, &second, &daemon, Duration::from_secs(90)).await;
    assert_eq!(
        daemon.count(&[&format!("port {port} is already in use")]),
        1,
        "the refusal is logged once; log:\n{}",
        daemon.tail()
    );

    let line = status_url_line(&repo);
    assert!(
        line.starts_with(&format!("local URL: http://127.0.0.1:{port} -> web (not served: port {port} is held by another program")),
        "{line}"
    );

    // Once the port is free, the next reconcile serves it.
    drop(holder);
    write_web(&repo, false, 2);
    let third = repo.commit("rollout 2");
    wait_ready_at(&ns, &third, &daemon, Duration::from_secs(90)).await;
    daemon
        .wait_log(
            &["local URL served now", &format!("127.0.0.1:{port}")],
            Duration::from_secs(30),
        )
        .await;
    TcpStream::connect(("127.0.0.1", port))
        .unwrap_or_else(|e| panic!("nothing listens on {port} after it was freed: {e}"));
    let line = status_url_line(&repo);
    assert!(
        line.contains("(served by the daemon of this checkout"),
        "{line}"
    );
    ns.cleanup().await;
}
