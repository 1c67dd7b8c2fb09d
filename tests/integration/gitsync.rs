//! Pull mode against the bed's real git server (sshd with the bed's key and known_hosts, repos
//! created by the first push): `converge run --remote ssh://… --repo <empty dir>` deploys what
//! was pushed; a host key that does not match known_hosts is named, changes nothing in the
//! cluster and leaves the daemon up; a signed webhook on `/sync` fetches at once (the poll is an
//! hour), a badly signed or unsigned one changes nothing and is counted.

use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use hmac::{Hmac, Mac};
use serde_json::Value;
use sha2::Sha256;

use super::daemon::{
    applied_commit, backend, env_version, stack_repo, status, write_backend, Daemon, CONVERGED,
};
use crate::support::git::GitRepo;
use crate::support::{testbed, unique_name, TestNamespace};

/// The bed's git server: its base URL, the client key and the known_hosts file.
struct GitServer {
    base: String,
    key: PathBuf,
    known_hosts: PathBuf,
    ssh_command: String,
}

fn git_server() -> GitServer {
    let vars = &testbed().vars;
    let get = |k: &str| {
        vars.get(k).cloned().unwrap_or_else(|| {
            panic!("{k} is missing from the bed's env file: the bed has no git server (tests/testbed/up starts it)")
        })
    };
    GitServer {
        base: get("CONVERGE_TESTBED_GIT"),
        key: get("CONVERGE_TESTBED_GIT_KEY").into(),
        known_hosts: get("CONVERGE_TESTBED_GIT_KNOWN_HOSTS").into(),
        ssh_command: get("CONVERGE_TESTBED_GIT_SSH_COMMAND"),
    }
}

impl GitServer {
    /// A new repository's URL on the server (created by the first push).
    fn new_url(&self, prefix: &str) -> String {
        format!("{}/{}.git", self.base, unique_name(prefix))
    }

    /// Pushes `repo`'s HEAD to `url`'s `main`.
    fn push(&self, repo: &GitRepo, url: &str, force: bool) {
        let mut cmd = Command::new("git");
        cmd.arg("-C")
            .arg(repo.path())
            .args(["push", "-q"])
            .args(force.then_some("--force"))
            .args([url, "HEAD:main"])
            .env("GIT_SSH_COMMAND", &self.ssh_command)
            .env("GIT_TERMINAL_PROMPT", "0");
        let out = cmd.output().expect("run git push");
        assert!(
            out.status.success(),
            "git push to {url} failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }

    /// `converge run`'s pull-mode flags for `url` with these files.
    fn flags(&self, url: &str, known_hosts: &Path) -> Vec<String> {
        vec![
            "--remote".into(),
            url.into(),
            "--ssh-key".into(),
            self.key.display().to_string(),
            "--known-hosts".into(),
            known_hosts.display().to_string(),
        ]
    }
}

fn args(v: &[String]) -> Vec<&str> {
    v.iter().map(String::as_str).collect()
}

/// A known_hosts file naming the bed's git server with another host key: what a server whose
/// key changed (or a man in the middle) looks like.
fn wrong_known_hosts(dir: &Path, right: &Path) -> PathBuf {
    let key = dir.join("impostor");
    let out = Command::new("ssh-keygen")
        .args(["-q", "-t", "ed25519", "-N", "", "-f"])
        .arg(&key)
        .output()
        .expect("run ssh-keygen");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let public = std::fs::read_to_string(key.with_extension("pub")).unwrap();
    let mut parts = public.split_whitespace();
    let (kind, material) = (parts.next().unwrap(), parts.next().unwrap());
    let wrong: String = std::fs::read_to_string(right)
        .unwrap()
        .lines()
        .filter(|l| !l.trim().is_empty() && !l.starts_with('#'))
        .map(|l| {
            let host = l.split_whitespace().next().unwrap();
            format!("{host} {kind} {material}\n")
        })
        .collect();
    let path = dir.join("known_hosts");
    std::fs::write(&path, wrong).unwrap();
    path
}

/// One HTTP/1.0 request; the whole answer.
fn http(addr: &str, method: &str, path: &str, headers: &[(&str, &str)], body: &[u8]) -> String {
    let mut s =
        std::net::TcpStream::connect(addr).unwrap_or_else(|e| panic!("connect {addr}: {e}"));
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let mut req = format!(
        "{method} {path} HTTP/1.0\r\nContent-Length: {}\r\n",
        body.len()
    );
    for (k, v) in headers {
        req.push_str(&format!("{k}: {v}\r\n"));
    }
    req.push_str("\r\n");
    s.write_all(req.as_bytes()).unwrap();
    s.write_all(body).unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).unwrap();
    out
}

/// Sends `head` as is (a request whose body never comes); the answer.
fn raw(addr: &str, head: &str) -> String {
    let mut s =
        std::net::TcpStream::connect(addr).unwrap_or_else(|e| panic!("connect {addr}: {e}"));
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    s.write_all(head.as_bytes()).unwrap();
    let mut out = Vec::new();
    let _ = s.read_to_end(&mut out);
    String::from_utf8_lossy(&out).into_owned()
}

/// The daemon's HTTP address, from the checkout's lock file.
fn daemon_addr(checkout: &Path) -> String {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        if let Some(a) = std::fs::read_to_string(checkout.join(".git/converge.lock"))
            .ok()
            .and_then(|l| serde_json::from_str::<Value>(&l).ok())
            .and_then(|v| v["http"].as_str().map(str::to_string))
        {
            return a;
        }
        assert!(
            Instant::now() < deadline,
            "no HTTP address in the lock file of {}",
            checkout.display()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// A loopback port free right now.
fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn sign(secret: &[u8], body: &[u8]) -> String {
    let mut mac = <Hmac<Sha256> as Mac>::new_from_slice(secret).unwrap();
    mac.update(body);
    format!("sha256={}", hex::encode(mac.finalize().into_bytes()))
}

/// The value of one sample of `/metrics`, 0 when absent.
fn metric(text: &str, sample: &str) -> u64 {
    text.lines()
        .find_map(|l| {
            l.strip_prefix(sample)
                .map(|v| v.trim().parse().unwrap_or(0))
        })
        .unwrap_or(0)
}

/// Waits until the stack's status says `commit` is applied and ready; on timeout the daemon's
/// log says why.
async fn wait_applied(daemon: &Daemon, ns: &TestNamespace, commit: &str) {
    let deadline = Instant::now() + CONVERGED;
    loop {
        let s = status(ns).await;
        if s.as_ref()
            .is_some_and(|s| applied_commit(s) == commit && s["ready"] == true)
        {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{commit} not applied and ready within {CONVERGED:?}: {s:#?}\ndaemon log:\n{}",
            daemon.log()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test]
async fn a_push_to_the_git_server_is_deployed_by_a_daemon_started_on_an_empty_directory() {
    let server = git_server();
    let ns = TestNamespace::new("gitsync-push").await;
    let repo = stack_repo(ns.name());
    let url = server.new_url("gitsync-push");
    server.push(&repo, &url, false);
    let first = repo.head();

    let work = tempfile::tempdir().unwrap();
    let checkout = work.path().join("checkout");
    let mut flags = server.flags(&url, &server.known_hosts);
    flags.extend(["--poll".into(), "1s".into()]);
    let daemon = Daemon::start(&checkout, &args(&flags));
    wait_applied(&daemon, &ns, &first).await;
    // Nothing but the repository converge fetches into: no working tree was checked out.
    assert!(!checkout.join("desired").exists());

    write_backend(&repo, "v1");
    let second = repo.commit("backend v1");
    server.push(&repo, &url, false);
    wait_applied(&daemon, &ns, &second).await;
    assert_eq!(env_version(&backend(&ns).await), "v1");
    daemon.wait_log(&["\"fetched\"", &second[..7]], Duration::from_secs(5));
    let metrics = http(&daemon_addr(&checkout), "GET", "/metrics", &[], b"");
    assert!(
        metric(&metrics, "converge_fetches_total{result=\"updated\"}") >= 2,
        "{metrics}"
    );
    drop(daemon);
    ns.cleanup().await;
}

#[tokio::test]
async fn a_host_key_that_does_not_match_known_hosts_is_named_and_changes_nothing() {
    let server = git_server();
    let ns = TestNamespace::new("gitsync-hostkey").await;
    let repo = stack_repo(ns.name());
    let url = server.new_url("gitsync-hostkey");
    server.push(&repo, &url, false);
    let first = repo.head();
    let work = tempfile::tempdir().unwrap();
    let wrong = wrong_known_hosts(work.path(), &server.known_hosts);

    // A daemon with the right known_hosts deploys the first commit, then stops.
    let checkout = work.path().join("checkout");
    let daemon = Daemon::start(&checkout, &args(&server.flags(&url, &server.known_hosts)));
    wait_applied(&daemon, &ns, &first).await;
    drop(daemon);

    // The server's key no longer matches: the next commit is not fetched, the reason is said
    // with the remote and the fix, and the cluster keeps the first commit, whole.
    write_backend(&repo, "v1");
    repo.commit("backend v1");
    server.push(&repo, &url, false);
    let mut flags = server.flags(&url, &wrong);
    flags.extend(["--poll".into(), "1s".into()]);
    let daemon = Daemon::start(&checkout, &args(&flags));
    let line = daemon.wait_log(
        &["fetch failed", "REMOTE HOST IDENTIFICATION HAS CHANGED"],
        Duration::from_secs(60),
    );
    assert!(line.contains(&url), "the remote is named: {line}");
    assert!(
        line.contains(&wrong.display().to_string()),
        "the fix names the file: {line}"
    );
    // Retried with back-off, still failing, still up.
    let deadline = Instant::now() + Duration::from_secs(60);
    while daemon.count_log(&["fetch failed", "REMOTE HOST IDENTIFICATION HAS CHANGED"]) < 2 {
        assert!(Instant::now() < deadline, "no retry:\n{}", daemon.log());
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let addr = daemon_addr(&checkout);
    assert!(http(&addr, "GET", "/healthz", &[], b"").starts_with("HTTP/1.0 200"));
    let metrics = http(&addr, "GET", "/metrics", &[], b"");
    assert!(
        metric(
            &metrics,
            "converge_fetches_total{result=\"host_key_changed\"}"
        ) >= 1,
        "{metrics}"
    );
    let s = status(&ns).await.expect("status record");
    assert_eq!(applied_commit(&s), first, "{s:#}");
    assert_eq!(
        env_version(&backend(&ns).await),
        "v0",
        "nothing changed or deleted"
    );
    drop(daemon);

    // From an empty directory the daemon waits for its first fetch: alive, not ready, why.
    let fresh = work.path().join("fresh");
    let port = free_port();
    let listen = format!("127.0.0.1:{port}");
    let mut flags = server.flags(&url, &wrong);
    flags.extend(["--listen".into(), listen.clone(), "--no-lease".into()]);
    let daemon = Daemon::start(&fresh, &args(&flags));
    daemon.wait_log(
        &[
            "the first fetch failed",
            "REMOTE HOST IDENTIFICATION HAS CHANGED",
        ],
        Duration::from_secs(60),
    );
    let healthz = http(&listen, "GET", "/healthz", &[], b"");
    assert!(healthz.starts_with("HTTP/1.0 200"), "{healthz}");
    let readyz = http(&listen, "GET", "/readyz", &[], b"");
    assert!(readyz.starts_with("HTTP/1.0 503"), "{readyz}");
    assert!(
        readyz.contains("REMOTE HOST IDENTIFICATION HAS CHANGED"),
        "{readyz}"
    );
    assert_eq!(env_version(&backend(&ns).await), "v0");
    drop(daemon);
    ns.cleanup().await;
}

#[tokio::test]
async fn a_signed_webhook_fetches_at_once_and_a_bad_signature_changes_nothing() {
    let server = git_server();
    let node_ip = testbed()
        .node_ip
        .clone()
        .expect("the bed names no non-loopback address of this machine (CONVERGE_TESTBED_NODE_IP)");
    let ns = TestNamespace::new("gitsync-hook").await;
    let repo = stack_repo(ns.name());
    let url = server.new_url("gitsync-hook");
    server.push(&repo, &url, false);
    let first = repo.head();
    let work = tempfile::tempdir().unwrap();
    let secret = unique_name("hook-secret");
    let secret_file = work.path().join("webhook-secret");
    std::fs::write(&secret_file, format!("{secret}\n")).unwrap();

    // Polls hourly: only the webhook can explain a fetch after the first.
    let checkout = work.path().join("checkout");
    let mut flags = server.flags(&url, &server.known_hosts);
    flags.extend([
        "--poll".into(),
        "1h".into(),
        "--listen".into(),
        format!("{node_ip}:0"),
        "--webhook-secret-file".into(),
        secret_file.display().to_string(),
    ]);
    let daemon = Daemon::start(&checkout, &args(&flags));
    wait_applied(&daemon, &ns, &first).await;
    let addr = daemon_addr(&checkout);
    assert!(addr.starts_with(&node_ip), "{addr}");

    write_backend(&repo, "v1");
    let second = repo.commit("backend v1");
    server.push(&repo, &url, false);
    let body = br#"{"ref":"refs/heads/main","after":"0000000000000000000000000000000000000000"}"#;

    // From another address than loopback: unsigned, and signed with another secret.
    let unsigned = http(&addr, "POST", "/sync", &[], body);
    assert!(unsigned.starts_with("HTTP/1.0 401"), "{unsigned}");
    assert!(unsigned.contains("unsigned"), "{unsigned}");
    let forged = sign(b"not the secret", body);
    let bad = http(
        &addr,
        "POST",
        "/sync",
        &[("X-Hub-Signature-256", &forged)],
        body,
    );
    assert!(bad.starts_with("HTTP/1.0 401"), "{bad}");
    assert!(bad.contains("bad signature"), "{bad}");
    // A body over the cap is refused before a byte of it is read.
    let huge = raw(
        &addr,
        &format!("POST /sync HTTP/1.0\r\nContent-Length: 2097152\r\nX-Hub-Signature-256: {forged}\r\n\r\n"),
    );
    assert!(huge.starts_with("HTTP/1.0 413"), "{huge}");
    // Another machine never reaches the page or its state.
    for path in ["/", "/api/state"] {
        let page = http(&addr, "GET", path, &[], b"");
        assert!(page.starts_with("HTTP/1.0 403"), "{path}: {page}");
    }
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(
        applied_commit(&status(&ns).await.expect("status record")),
        first,
        "nothing was fetched for a refused webhook"
    );
    assert_eq!(daemon.count_log(&["fetch requested (signed webhook)"]), 0);

    // Signed with the secret: fetched at once and deployed.
    let good = sign(secret.as_bytes(), body);
    let ok = http(
        &addr,
        "POST",
        "/sync",
        &[("X-Hub-Signature-256", &good)],
        body,
    );
    assert!(ok.starts_with("HTTP/1.0 202"), "{ok}");
    wait_applied(&daemon, &ns, &second).await;
    assert_eq!(env_version(&backend(&ns).await), "v1");

    let metrics = http(&addr, "GET", "/metrics", &[], b"");
    for (result, n) in [
        ("accepted", 1),
        ("bad_signature", 1),
        ("unsigned", 1),
        ("too_large", 1),
    ] {
        assert_eq!(
            metric(
                &metrics,
                &format!("converge_webhook_requests_total{{result=\"{result}\"}}")
            ),
            n,
            "{result}: {metrics}"
        );
    }
    assert!(!daemon.log().contains(&secret), "the secret was logged");
    drop(daemon);
    ns.cleanup().await;
}

#[tokio::test]
async fn a_rewritten_remote_history_is_refused_and_the_deployed_commit_stays() {
    let server = git_server();
    let ns = TestNamespace::new("gitsync-rewrite").await;
    let repo = stack_repo(ns.name());
    let url = server.new_url("gitsync-rewrite");
    server.push(&repo, &url, false);
    let first = repo.head();
    let work = tempfile::tempdir().unwrap();
    let checkout = work.path().join("checkout");
    let mut flags = server.flags(&url, &server.known_hosts);
    flags.extend(["--poll".into(), "1s".into()]);
    let daemon = Daemon::start(&checkout, &args(&flags));
    wait_applied(&daemon, &ns, &first).await;

    // Another history: the first commit amended, force-pushed.
    write_backend(&repo, "rewritten");
    repo.git(&["add", "-A"]);
    repo.git(&["commit", "-q", "--amend", "-m", "rewritten"]);
    server.push(&repo, &url, true);
    let line = daemon.wait_log(
        &["pull refused", "not a fast-forward"],
        Duration::from_secs(60),
    );
    assert!(line.contains(&url), "{line}");
    let s = status(&ns).await.expect("status record");
    assert_eq!(applied_commit(&s), first, "{s:#}");
    assert_eq!(env_version(&backend(&ns).await), "v0");
    drop(daemon);
    ns.cleanup().await;
}
