//! Standby mode (`converge run --standby --instance …`), as replicas in a cluster run it: real
//! daemons on one stack of the testbed (kwok Pods), each with its own checkout as each Pod has,
//! the Lease read and taken with kubectl. Every wait is bounded; no timing is asserted.

use std::time::{Duration, Instant};

use k8s_openapi::api::coordination::v1::Lease;

use super::daemon::{
    applied_commit, backend, env_version, stack_repo, wait_backend_unready_applied, wait_status,
    write_backend, write_backend_with, Daemon, CONVERGED, NEVER_READY,
};
use crate::support::git::GitRepo;
use crate::support::{kubectl, run_ok, TestNamespace};

/// A free loopback port, so a standby's `/readyz` is reachable before it logs anything.
fn free_addr() -> String {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    l.local_addr().unwrap().to_string()
}

/// Another checkout of `repo`'s history, as another Pod's emptyDir clone is.
fn clone_of(repo: &GitRepo) -> GitRepo {
    let other = GitRepo::new();
    other.git(&["pull", "-q", &repo.path().to_string_lossy(), "main"]);
    other
}

/// Starts a replica of installation `instance`, serving on `addr`, with short Lease timings.
fn replica(repo: &GitRepo, instance: &str, addr: &str) -> Daemon {
    Daemon::start(
        repo.path(),
        &[
            "--standby",
            "--instance",
            instance,
            "--listen",
            addr,
            "--lease-duration",
            "6s",
            "--lease-renew",
            "1s",
            "--lease-renew-deadline",
            "4s",
            "--lease-retry",
            "1s",
        ],
    )
}

/// `GET path` on `addr`: the status line and the body.
fn get(addr: &str, path: &str) -> (String, String) {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    write!(s, "GET {path} HTTP/1.0\r\nHost: localhost\r\n\r\n").unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).unwrap();
    let status = out.lines().next().unwrap_or("").to_string();
    let body = out.split("\r\n\r\n").nth(1).unwrap_or("").to_string();
    (status, body)
}

/// Polls `/readyz` on `addr` until its body contains `part`.
fn wait_readyz(addr: &str, part: &str, daemon: &Daemon) -> (String, String) {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        if std::net::TcpStream::connect(addr).is_ok() {
            let (status, body) = get(addr, "/readyz");
            if body.contains(part) {
                return (status, body);
            }
        }
        assert!(
            Instant::now() < deadline,
            "/readyz on {addr} never said {part:?}; log:\n{}",
            daemon.log()
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

async fn holder(ns: &TestNamespace) -> String {
    ns.api::<Lease>()
        .get_opt("converge-todo")
        .await
        .unwrap()
        .and_then(|l| l.spec)
        .and_then(|s| s.holder_identity)
        .unwrap_or_default()
}

/// The end of a daemon's Lease identity (`<host>/<pid>`).
fn pid_of(d: &Daemon) -> String {
    format!("/{}", d.pid())
}

#[tokio::test]
async fn a_standby_replica_is_ready_names_the_leader_and_takes_over_when_the_leader_is_stopped() {
    let ns = TestNamespace::new("standby-takeover").await;
    let repo = stack_repo(ns.name());
    let first = repo.head();
    let (a_addr, b_addr) = (free_addr(), free_addr());
    let mut a = replica(&repo, "test/converge", &a_addr);
    wait_status(&ns, CONVERGED, |s| {
        applied_commit(s) == first && s["ready"] == true
    })
    .await;
    let a_pid = pid_of(&a);
    assert!(holder(&ns).await.ends_with(&a_pid));

    let b_repo = clone_of(&repo);
    let b = replica(&b_repo, "test/converge", &b_addr);
    let (status, body) = wait_readyz(&b_addr, "standby, leader is", &b);
    assert!(
        status.contains(" 200 "),
        "a standby is ready: {status} {body}"
    );
    assert!(
        body.contains(&a_pid) && body.contains("converge-todo"),
        "{body}"
    );
    b.wait_log(&["standby, leader is"], Duration::from_secs(1));
    // The leader is ready as the leader (the Service routes webhooks to it whatever its stacks do).
    let (status, body) = get(&a_addr, "/readyz");
    assert!(
        status.contains(" 200 ") && body.starts_with("leading"),
        "{status} {body}"
    );

    // SIGTERM to the leader: it releases the Lease on its way out, the standby takes it.
    a.signal("TERM");
    let exit = a.wait_exit(Duration::from_secs(60));
    assert!(
        exit.is_some_and(|s| s.success()),
        "the leader did not stop cleanly:\n{}",
        a.log()
    );
    b.wait_log(&["took over"], Duration::from_secs(60));
    let b_pid = pid_of(&b);
    assert!(
        holder(&ns).await.ends_with(&b_pid),
        "the Lease names the new leader"
    );

    // The new leader deploys the next commit of its checkout.
    write_backend(&b_repo, "v2");
    let next = b_repo.commit("backend v2");
    wait_status(&ns, CONVERGED, |s| applied_commit(s) == next).await;
    assert_eq!(env_version(&backend(&ns).await), "v2");
    drop(a);
    drop(b);
    ns.cleanup().await;
}

#[tokio::test]
async fn a_second_installation_is_refused_writes_nothing_and_takes_over_once_the_first_is_gone() {
    let ns = TestNamespace::new("standby-refused").await;
    let repo = stack_repo(ns.name());
    let first = repo.head();
    let (a_addr, c_addr) = (free_addr(), free_addr());
    let a = replica(&repo, "one/converge", &a_addr);
    wait_status(&ns, CONVERGED, |s| {
        applied_commit(s) == first && s["ready"] == true
    })
    .await;
    let a_pid = pid_of(&a);

    // The other installation deploys another commit: it must not get there while refused.
    let c_repo = clone_of(&repo);
    write_backend(&c_repo, "other");
    let other = c_repo.commit("the other installation's commit");
    let c = replica(&c_repo, "two/converge", &c_addr);
    let (status, body) = wait_readyz(&c_addr, "refused", &c);
    assert!(
        status.contains(" 503 "),
        "a refused replica is not ready: {status}"
    );
    assert!(
        body.starts_with("refused: stack todo is managed by")
            && body.contains(&a_pid)
            && body.contains("of instance one/converge")
            && body.contains("this is instance two/converge"),
        "{body}"
    );
    assert_eq!(body.lines().count(), 1, "one line: {body}");
    // It keeps checking, says so once, and writes nothing.
    std::thread::sleep(Duration::from_secs(3));
    assert_eq!(c.count_log(&["refused: stack todo"]), 1, "{}", c.log());
    assert_eq!(c.count_log(&["reconcile started"]), 0, "{}", c.log());
    assert!(holder(&ns).await.ends_with(&a_pid));
    assert_eq!(env_version(&backend(&ns).await), "v0");

    // Uninstalling the first (its leader stops and releases the Lease) lets the second lead.
    drop(a);
    // `drop` kills (SIGKILL): no release; the Lease expires after its 6 s instead.
    c.wait_log(&["took over"], Duration::from_secs(60));
    wait_status(&ns, CONVERGED, |s| applied_commit(s) == other).await;
    assert_eq!(env_version(&backend(&ns).await), "other");
    drop(c);
    ns.cleanup().await;
}

#[tokio::test]
async fn a_leader_whose_lease_is_taken_cancels_its_reconcile_and_exits_without_writing_more() {
    let ns = TestNamespace::new("standby-lost").await;
    let repo = stack_repo(ns.name());
    let first = repo.head();
    let addr = free_addr();
    let mut a = replica(&repo, "test/converge", &addr);
    wait_status(&ns, CONVERGED, |s| {
        applied_commit(s) == first && s["ready"] == true
    })
    .await;

    // A commit whose backend never becomes ready: its health wait holds the reconcile in flight.
    write_backend_with(&repo, "stuck", NEVER_READY);
    repo.commit("backend never ready");
    wait_backend_unready_applied(&a, &ns).await;

    // Someone else takes the Lease (as a standby would once it expired).
    let patch = format!(
        r#"{{"spec":{{"holderIdentity":"intruder/1","renewTime":"{}"}}}}"#,
        chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Micros, true)
    );
    run_ok(kubectl().args([
        "-n",
        ns.name(),
        "patch",
        "lease",
        "converge-todo",
        "--type",
        "merge",
        "-p",
        &patch,
    ]));
    let line = a.wait_log(&["stopped leading"], Duration::from_secs(30));
    assert!(line.contains("intruder/1"), "{line}");
    assert!(line.contains("\"reconcile_cancelled\":true"), "{line}");
    let status = a.wait_exit(Duration::from_secs(30));
    assert!(
        status.is_some_and(|s| !s.success()),
        "losing the Lease is an error exit (the Pod restarts): {status:?}\n{}",
        a.log()
    );
    // It left the intruder's Lease alone, and corrects no drift any more.
    assert_eq!(holder(&ns).await, "intruder/1");
    run_ok(kubectl().args([
        "-n",
        ns.name(),
        "scale",
        "deployment/todo-todo-chatbot-backend",
        "--replicas=3",
    ]));
    std::thread::sleep(Duration::from_secs(3));
    let replicas = backend(&ns).await.spec.and_then(|s| s.replicas);
    assert_eq!(replicas, Some(3), "nothing writes after the Lease is lost");
    ns.cleanup().await;
}
