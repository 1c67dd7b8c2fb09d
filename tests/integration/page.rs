//! The daemon's live page (`GET /` on its loopback address) in headless Chromium, against a real
//! daemon on the testbed: the stack shown Ready; a new commit's progress and then the commit
//! shown without a reload; a hand scale shown as drift and gone once corrected; a crash-looping
//! component shown with explain's finding; a cross-site form POST to `/sync` refused while the
//! page's own button works; a page opened while the API server is unreachable says so and
//! recovers by itself.
//!
//! The browser is driven by tests/fixtures/page/driver.mjs (playwright-core from the frontend's
//! node_modules, which apps/test installs, and the system's Chromium). Figures (first paint,
//! commit → shown, idle memory) are printed, never asserted.

use std::io::{BufRead, BufReader, Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use serde_json::{json, Value};

use super::daemon::{
    applied_commit, converge, stack_repo, wait_status, write_backend, Daemon, CONVERGED,
};
use crate::support::{current_context, kubectl, run_ok, testbed, TestNamespace};

const BACKEND: &str = "Deployment/todo-todo-chatbot-backend";
const CRASHLOOP: &str = "values:\n  podLabels: {converge.test/fail: crashloop}\n";

/// Headless Chromium behind the driver script: one JSON command per line.
struct Browser {
    child: Child,
    stdin: ChildStdin,
    answers: mpsc::Receiver<String>,
    stderr: std::sync::Arc<std::sync::Mutex<String>>,
    next: u64,
}

impl Browser {
    fn start() -> Browser {
        let root = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
        let frontend = root.join("apps/frontend");
        assert!(
            frontend.join("node_modules/playwright-core").exists(),
            "apps/frontend/node_modules/playwright-core is missing: run apps/test (or `npm ci` in apps/frontend) first; .ci/run does"
        );
        assert!(
            Path::new("/usr/bin/chromium").exists(),
            "/usr/bin/chromium is missing: apps/test installs it (apt-get install chromium)"
        );
        let mut child = Command::new("node")
            .arg(root.join("tests/fixtures/page/driver.mjs"))
            .env("PLAYWRIGHT_FROM", &frontend)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("node (the browser driver) did not start: is node installed?");
        let stdin = child.stdin.take().unwrap();
        let stdout = child.stdout.take().unwrap();
        let (tx, answers) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        let stderr = std::sync::Arc::new(std::sync::Mutex::new(String::new()));
        let sink = stderr.clone();
        let mut err = child.stderr.take().unwrap();
        std::thread::spawn(move || {
            let mut buf = [0u8; 4096];
            while let Ok(n) = err.read(&mut buf) {
                if n == 0 {
                    break;
                }
                sink.lock()
                    .unwrap()
                    .push_str(&String::from_utf8_lossy(&buf[..n]));
            }
        });
        Browser {
            child,
            stdin,
            answers,
            stderr,
            next: 0,
        }
    }

    /// Sends one command; its value, or the driver's error.
    fn call(&mut self, mut cmd: Value, timeout: Duration) -> Result<Value, String> {
        self.next += 1;
        cmd["id"] = json!(self.next);
        writeln!(self.stdin, "{cmd}").expect("write to the browser driver");
        let line = self
            .answers
            .recv_timeout(timeout + Duration::from_secs(30))
            .unwrap_or_else(|_| {
                panic!(
                    "the browser driver did not answer {cmd} within {timeout:?}; its stderr:\n{}",
                    self.stderr.lock().unwrap()
                )
            });
        let answer: Value = serde_json::from_str(&line).expect("a JSON answer");
        assert_eq!(answer["id"], json!(self.next), "{answer}");
        if answer["ok"] == true {
            Ok(answer["value"].clone())
        } else {
            Err(answer["error"].as_str().unwrap_or("").to_string())
        }
    }

    fn open(&mut self, url: &str) -> Value {
        self.call(json!({"op": "open", "url": url}), Duration::from_secs(30))
            .unwrap_or_else(|e| panic!("opening {url}: {e}"))
    }

    fn eval(&mut self, expr: &str) -> Value {
        self.call(json!({"op": "eval", "expr": expr}), Duration::from_secs(10))
            .unwrap_or_else(|e| panic!("evaluating {expr}: {e}"))
    }

    /// Waits until `expr` is truthy in the page; its value. On timeout, fails with what the
    /// page shows.
    fn wait_for(&mut self, what: &str, expr: &str, timeout: Duration) -> Value {
        let cmd = json!({"op": "waitFor", "expr": expr, "timeoutMs": timeout.as_millis() as u64});
        match self.call(cmd, timeout) {
            Ok(v) => v,
            Err(e) => {
                let shown = self.eval("document.body.innerText");
                panic!(
                    "the page did not show {what} within {timeout:?} ({e});\nit shows:\n{}",
                    shown.as_str().unwrap_or("")
                )
            }
        }
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        let _ = writeln!(self.stdin, "{}", json!({"op": "close", "id": 0}));
        let deadline = Instant::now() + Duration::from_secs(5);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The daemon's loopback address and pid, from its lock file.
fn daemon_addr(repo: &Path) -> (String, u32) {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        if let Ok(text) = std::fs::read_to_string(repo.join(".git/converge.lock")) {
            if let Ok(v) = serde_json::from_str::<Value>(&text) {
                if let (Some(http), Some(pid)) = (v["http"].as_str(), v["pid"].as_u64()) {
                    return (http.to_string(), pid as u32);
                }
            }
        }
        assert!(
            Instant::now() < deadline,
            "the daemon wrote no address into its lock file"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Resident memory of `pid`, in KiB.
fn rss_kib(pid: u32) -> u64 {
    let status =
        std::fs::read_to_string(format!("/proc/{pid}/status")).expect("/proc/<pid>/status");
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .expect("VmRSS in /proc/<pid>/status")
}

fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64
}

/// A JS expression: the stack section of `todo`, if shown.
const STACK: &str = "document.querySelector('section.stack[data-stack=\"todo\"]')";

fn http(addr: &str, request: &str) -> String {
    let mut s = std::net::TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    s.write_all(request.as_bytes()).unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).unwrap();
    out
}

#[tokio::test]
async fn the_page_shows_the_stack_its_progress_drift_and_explains_an_unhealthy_component() {
    let ns = TestNamespace::new("page").await;
    let repo = stack_repo(ns.name());
    let first = repo.head();
    let daemon = Daemon::start(repo.path(), &["--fail-fast", "3s"]);
    wait_status(&ns, CONVERGED, |s| {
        applied_commit(s) == first && s["ready"] == true
    })
    .await;
    let (addr, pid) = daemon_addr(repo.path());
    let url = format!("http://{addr}/");

    // Idle memory without a page, then with one open.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let rss_closed = rss_kib(pid);
    let mut b = Browser::start();
    let opened = b.open(&url);
    eprintln!(
        "page: first paint {:?} ms, first contentful paint {:?} ms, live data shown {} ms after navigation started",
        opened["paint"]["first-paint"], opened["paint"]["first-contentful-paint"], opened["shownMs"]
    );

    // 1. The stack, Ready, at the commit, with its components.
    b.wait_for(
        "stack todo Ready at the first commit",
        &format!("{STACK}?.dataset.state === 'Ready' && {STACK}?.dataset.commit === '{first}'"),
        Duration::from_secs(20),
    );
    let rows = b.eval(&format!(
        "[...{STACK}.querySelectorAll('tr.component')].map(r => r.innerText.replace(/\\s+/g, ' ').trim())"
    ));
    let rows: Vec<&str> = rows
        .as_array()
        .unwrap()
        .iter()
        .filter_map(Value::as_str)
        .collect();
    assert!(
        rows.iter()
            .any(|r| r.starts_with("backend 1/1 test Healthy")),
        "backend with ready/desired, tag and health: {rows:?}"
    );
    assert!(
        rows.iter()
            .any(|r| r.starts_with("postgres 1/1 16-alpine Healthy")),
        "postgres: {rows:?}"
    );
    tokio::time::sleep(Duration::from_secs(5)).await;
    let rss_open = rss_kib(pid);
    eprintln!(
        "page: daemon idle RSS {rss_closed} KiB without a page, {rss_open} KiB with one open ({:+} KiB)",
        rss_open as i64 - rss_closed as i64
    );

    // 2. A new commit: its reconcile shows while it runs, then the commit, without a reload.
    write_backend(&repo, "v1");
    let committed = now_ms();
    let second = repo.commit("backend v1");
    let shown_at = b.wait_for(
        "stack todo Ready at the second commit",
        &format!(
            "({STACK}?.dataset.state === 'Ready' && {STACK}?.dataset.commit === '{second}') ? Date.now() : false"
        ),
        CONVERGED,
    );
    let seen = b.eval("window.__seen.running");
    let runs: Vec<&Value> = seen
        .as_array()
        .unwrap()
        .iter()
        .filter(|r| r["commit"] == second.as_str())
        .collect();
    assert!(
        !runs.is_empty(),
        "the running reconcile of {second} was never shown while it ran; shown: {seen:#}"
    );
    let progress_ms = runs[0]["at"].as_i64().unwrap() - committed;
    let shown_ms = shown_at.as_i64().unwrap() - committed;
    eprintln!(
        "page: commit → its reconcile shown running {progress_ms} ms, → Ready at the commit shown {shown_ms} ms"
    );
    eprintln!(
        "page: the running panel showed: {:?}",
        runs.iter()
            .map(|r| r["text"].as_str().unwrap_or(""))
            .collect::<Vec<_>>()
    );
    assert_eq!(
        b.eval("performance.getEntriesByType('navigation').length + (window.__seen ? 0 : 100)"),
        json!(1),
        "the page was reloaded"
    );
    assert!(
        b.eval(&format!(
            "[...{STACK}.querySelectorAll('table.history tr')].map(r => r.innerText).join('\\n')"
        ))
        .as_str()
        .unwrap()
        .contains(&second[..7]),
        "the history lists the new commit"
    );

    // 3. Drift: a hand scale shows, then goes once the daemon put it back.
    let scaled = now_ms();
    run_ok(kubectl().args([
        "-n",
        ns.name(),
        "scale",
        "deployment/todo-todo-chatbot-backend",
        "--replicas=3",
    ]));
    let drift = b.wait_for(
        "the hand scale as drift",
        &format!("window.__seen.drift.find(d => d.object === '{BACKEND}')"),
        Duration::from_secs(20),
    );
    assert!(
        drift["text"].as_str().unwrap().contains("kubectl"),
        "names who: {drift}"
    );
    b.wait_for(
        "the drift gone and noted corrected",
        &format!(
            "!document.querySelector('.drift-item') && [...document.querySelectorAll('#activity li')].some(li => li.textContent.includes('{BACKEND} corrected'))"
        ),
        Duration::from_secs(30),
    );
    eprintln!(
        "page: drift shown {} ms after kubectl scale",
        drift["at"].as_i64().unwrap() - scaled
    );

    // 4. Sync: a cross-site form POST is refused; the page's own button works.
    let before = daemon.count_log(&["sync requested"]);
    let evil = b
        .call(
            json!({"op": "crossSitePost", "target": format!("http://{addr}/sync")}),
            Duration::from_secs(20),
        )
        .expect("the cross-site form was submitted");
    assert_eq!(evil["status"], 403, "{evil}");
    assert!(
        evil["text"]
            .as_str()
            .unwrap()
            .contains("may not ask for a sync"),
        "{evil}"
    );
    let raw = http(
        &addr,
        &format!("POST /sync HTTP/1.1\r\nHost: {addr}\r\nOrigin: http://evil.example\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"),
    );
    assert!(raw.starts_with("HTTP/1.1 403"), "{raw}");
    // Nor may another site's page read the live state (a fetch from it says so).
    for path in ["/api/state", "/events"] {
        let read = http(
            &addr,
            &format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nSec-Fetch-Site: cross-site\r\nConnection: close\r\n\r\n"),
        );
        assert!(
            read.starts_with("HTTP/1.1 403"),
            "GET {path} from another site:\n{read}"
        );
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(
        daemon.count_log(&["sync requested"]),
        before,
        "a refused sync ran"
    );
    b.eval("document.getElementById('sync').click()");
    b.wait_for(
        "the sync button's answer",
        "document.getElementById('sync-result').textContent === 'sync queued'",
        Duration::from_secs(10),
    );
    daemon.wait_log(
        &["reconcile started", "\"trigger\":\"sync\""],
        Duration::from_secs(10),
    );
    // The CLI (no Origin) still works.
    let out = converge()
        .args(["sync", "--repo"])
        .arg(repo.path())
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    // At most 16 event streams: the next is refused, the page unharmed. The page holds one
    // (or, for a moment after a reconnect, a second whose slot frees at its next write).
    let mut streams = Vec::new();
    let mut opened = 0;
    let refused = loop {
        let mut s = std::net::TcpStream::connect(&addr).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        write!(s, "GET /events HTTP/1.1\r\nHost: {addr}\r\n\r\n").unwrap();
        let mut head = [0u8; 12];
        s.read_exact(&mut head).unwrap();
        let head = String::from_utf8_lossy(&head).to_string();
        if head == "HTTP/1.1 503" {
            break opened;
        }
        assert_eq!(head, "HTTP/1.1 200", "stream {opened}");
        opened += 1;
        assert!(opened <= 16, "more than 16 event streams were accepted");
        streams.push(s);
    };
    assert!(
        (14..=15).contains(&refused),
        "{refused} streams were accepted beside the page before one was refused (the cap is 16)"
    );
    drop(streams);
    assert_eq!(b.eval("document.body.dataset.daemon"), "connected");

    // 5. A crash-looping component: explain's finding and next step.
    let text = std::fs::read_to_string(repo.file("desired/backend.yaml")).unwrap();
    repo.write("desired/backend.yaml", format!("{text}{CRASHLOOP}"));
    let bad = repo.commit("backend crashes");
    let finding = b.wait_for(
        "explain's finding for backend",
        &format!(
            "{STACK}?.dataset.commit === '{bad}' && (f => f && {{rule: f.dataset.rule, text: f.innerText}})({STACK}.querySelector('tr.component[data-name=\"backend\"] .finding'))"
        ),
        Duration::from_secs(90),
    );
    let out = converge()
        .args(["explain", "backend", "--repo"])
        .arg(repo.path())
        .args(["--context", &current_context(), "-o", "json"])
        .output()
        .unwrap();
    let explained: Value = serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!(
            "converge explain -o json: {e}\n{}",
            String::from_utf8_lossy(&out.stderr)
        )
    });
    // The page shows explain's most specific finding (the same `converge explain` prints).
    let diagnosis = &explained[0]["diagnoses"][0];
    assert_eq!(
        finding["rule"], diagnosis["rule"],
        "page {finding:#} vs explain {diagnosis:#}"
    );
    assert_ne!(finding["rule"], "Healthy");
    let shown = finding["text"].as_str().unwrap();
    for part in ["summary", "nextStep"] {
        let want = diagnosis[part].as_str().unwrap();
        assert!(
            !want.is_empty() && shown.contains(want),
            "the page shows explain's {part} {want:?}: {shown}"
        );
    }
    eprintln!("page: backend's finding as shown: {shown:?}");
    let state = b.eval(&format!("{STACK}.dataset.state"));
    assert_ne!(state, "Ready", "a crash-looping stack is not shown Ready");

    drop(b);
    drop(daemon);
    ns.cleanup().await;
}

/// Forwards every connection to 127.0.0.1:`port` on to `to`, from now on.
fn forward(listener: std::net::TcpListener, to: String) {
    std::thread::spawn(move || {
        for conn in listener.incoming().map_while(Result::ok) {
            let Ok(upstream) = std::net::TcpStream::connect(&to) else {
                continue;
            };
            let (mut a, mut b) = (conn.try_clone().unwrap(), upstream.try_clone().unwrap());
            std::thread::spawn(move || {
                let _ = std::io::copy(&mut a, &mut b);
                let _ = b.shutdown(std::net::Shutdown::Write);
            });
            let (mut a, mut b) = (upstream, conn);
            std::thread::spawn(move || {
                let _ = std::io::copy(&mut a, &mut b);
                let _ = b.shutdown(std::net::Shutdown::Write);
            });
        }
    });
}

#[tokio::test]
async fn a_page_opened_while_the_cluster_is_unreachable_says_so_and_recovers_by_itself() {
    let ns = TestNamespace::new("page-down").await;
    let repo = stack_repo(ns.name());
    // The daemon's kubeconfig names a loopback port nothing listens on (yet).
    let bed = testbed();
    let port = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    let kubeconfig = tempfile::NamedTempFile::new().unwrap();
    let text = std::fs::read_to_string(&bed.kubeconfig).unwrap();
    assert!(
        text.contains(&bed.api_server),
        "the bed's kubeconfig names {}",
        bed.api_server
    );
    std::fs::write(
        kubeconfig.path(),
        text.replace(&bed.api_server, &format!("https://127.0.0.1:{port}")),
    )
    .unwrap();
    let kubeconfig_arg = kubeconfig.path().to_str().unwrap().to_string();
    // Without a Lease: taking one needs the cluster, so a daemon with Leases stops at start when
    // the API server is unreachable (before it serves anything). A fixed address, so a
    // restarted daemon serves the open page again.
    let listen = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().to_string()
    };
    let args = [
        "--kubeconfig",
        &kubeconfig_arg,
        "--no-lease",
        "--retry-max",
        "3s",
        "--listen",
        &listen,
    ];
    let daemon = Daemon::start(repo.path(), &args);
    let (addr, pid) = daemon_addr(repo.path());

    let mut b = Browser::start();
    b.open(&format!("http://{addr}/"));
    let banner = b.wait_for(
        "the cluster unreachable",
        "document.body.dataset.cluster === 'unreachable' && !document.getElementById('cluster').hidden && document.getElementById('cluster').textContent",
        Duration::from_secs(30),
    );
    assert!(
        banner.as_str().unwrap().contains("Cluster unreachable"),
        "{banner}"
    );
    eprintln!("page: while the API server is unreachable: {banner}");
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert!(
        Path::new(&format!("/proc/{pid}")).exists(),
        "the daemon stopped while the cluster was unreachable:\n{}",
        daemon.log()
    );

    // The API server becomes reachable on that port: the page recovers by itself.
    let listener = std::net::TcpListener::bind(("127.0.0.1", port))
        .unwrap_or_else(|e| panic!("port {port} was taken meanwhile: {e}"));
    let upstream = bed.api_server.trim_start_matches("https://").to_string();
    let back = now_ms();
    forward(listener, upstream);
    let ready_at = b.wait_for(
        "the stack Ready once the cluster answers",
        &format!(
            "(document.body.dataset.cluster === 'reachable' && document.getElementById('cluster').hidden && {STACK}?.dataset.state === 'Ready') ? Date.now() : false"
        ),
        Duration::from_secs(120),
    );
    eprintln!(
        "page: cluster back → stack shown Ready after {} ms",
        ready_at.as_i64().unwrap() - back
    );
    let activity = b.eval("document.getElementById('activity').innerText");
    assert!(
        activity
            .as_str()
            .unwrap()
            .contains("the cluster answers again"),
        "{activity}"
    );
    wait_status(&ns, Duration::from_secs(10), |s| s["ready"] == true).await;

    // The daemon goes away: the page says so; a daemon on the same address is followed again.
    drop(daemon);
    b.wait_for(
        "the daemon disconnected",
        "document.body.dataset.daemon === 'disconnected' && document.getElementById('conn').textContent",
        Duration::from_secs(20),
    );
    let daemon = Daemon::start(repo.path(), &args);
    let pid_again = loop {
        let (a, p) = daemon_addr(repo.path());
        if p != pid {
            assert_eq!(a, listen);
            break p;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    b.wait_for(
        "the page following the restarted daemon",
        &format!(
            "document.body.dataset.daemon === 'connected' && document.getElementById('where').textContent.includes('pid {pid_again}') && {STACK}?.dataset.state === 'Ready'"
        ),
        Duration::from_secs(60),
    );
    drop(b);
    drop(daemon);
    ns.cleanup().await;
}
