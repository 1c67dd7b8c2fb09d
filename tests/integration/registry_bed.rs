//! The testbed's parts for the registry builder and pull mode (tests/testbed/services.sh), used
//! the way converge will use them: BuildKit builds a Dockerfile whose `FROM` names an official
//! image, resolved through the bed's docker.io mirror to the stand-in in the bed's registry, and
//! pushes the result there; the real node's containerd pulls it with a Pod's imagePullSecrets;
//! the git server over SSH creates a repository on the first push and serves it back; ssh
//! refuses a server whose key is not the known one.

use std::path::Path;
use std::process::{Command, Output};
use std::time::Duration;

use k8s_openapi::api::core::v1::{Pod, Secret};
use k8s_openapi::ByteString;
use kube::api::{ObjectMeta, PostParams};

use crate::support::git::GitRepo;
use crate::support::services::{
    buildctl, docker_config_dir, git_base, git_known_hosts, git_ssh_command, git_url, registry,
};
use crate::support::{kubectl, run_ok, unique_name, wait_for, TestNamespace};

/// A cold pull of the stand-in through the mirror, and a Pod start on the real node.
const POD_DONE: Duration = Duration::from_secs(120);

fn output(cmd: &mut Command) -> Output {
    cmd.output()
        .unwrap_or_else(|e| panic!("cannot run {cmd:?}: {e}"))
}

/// `buildctl build` of the Dockerfile in `dir`, pushed to `image`.
fn build_and_push(cmd: &mut Command, dir: &Path, image: &str) -> Output {
    output(
        cmd.args(["build", "--progress=plain", "--frontend", "dockerfile.v0"])
            .arg(format!("--local=context={}", dir.display()))
            .arg(format!("--local=dockerfile={}", dir.display()))
            .arg(format!("--output=type=image,name={image},push=true")),
    )
}

#[tokio::test]
async fn buildkit_builds_from_a_stand_in_pushes_and_the_real_node_pulls_with_a_pull_secret() {
    let _registry = crate::support::services::registry_shared();
    let token = unique_name("token");
    let dir = tempfile::tempdir().expect("temporary build context");
    // python:3.12-slim-bookworm is the bed's stand-in (Debian's Python 3.11): the version the
    // Pod prints proves the FROM came from the bed's registry through the docker.io mirror.
    std::fs::write(
        dir.path().join("Dockerfile"),
        format!("FROM python:3.12-slim-bookworm\nRUN echo {token} > /token\n"),
    )
    .expect("write the Dockerfile");
    let image = format!("{}/{}/probe:1", registry(), unique_name("bed"));
    let built = build_and_push(&mut buildctl(), dir.path(), &image);
    let log = String::from_utf8_lossy(&built.stderr);
    assert!(built.status.success(), "buildctl build failed:\n{log}");
    assert!(
        log.contains("FROM docker.io/library/python:3.12-slim-bookworm"),
        "the FROM did not resolve through docker.io:\n{log}"
    );
    assert!(
        log.contains(&format!("pushing manifest for {image}")),
        "buildctl did not push {image}:\n{log}"
    );

    let ns = TestNamespace::real_node("registry-bed").await;
    let config = std::fs::read(docker_config_dir().join("config.json")).expect("config.json");
    let secret = Secret {
        metadata: ObjectMeta {
            name: Some("bed-registry".into()),
            ..Default::default()
        },
        type_: Some("kubernetes.io/dockerconfigjson".into()),
        data: Some([(".dockerconfigjson".to_string(), ByteString(config))].into()),
        ..Default::default()
    };
    ns.api::<Secret>()
        .create(&PostParams::default(), &secret)
        .await
        .expect("create the pull secret");
    let pod: Pod = serde_json::from_value(serde_json::json!({
        "metadata": {"name": "probe"},
        "spec": {
            "restartPolicy": "Never",
            "imagePullSecrets": [{"name": "bed-registry"}],
            "containers": [{
                "name": "probe",
                "image": image,
                "imagePullPolicy": "Always",
                "command": ["sh", "-c", "cat /token; python --version"],
            }],
        },
    }))
    .expect("Pod manifest");
    let pods = ns.api::<Pod>();
    pods.create(&PostParams::default(), &pod)
        .await
        .expect("create the Pod");
    let done = |p: Option<&Pod>| {
        p.and_then(|p| p.status.as_ref()?.phase.as_deref())
            .is_some_and(|phase| phase == "Succeeded" || phase == "Failed")
    };
    let pod = wait_for(&pods, "probe", done, POD_DONE)
        .await
        .expect("the Pod");
    let logs = run_ok(kubectl().args(["logs", "-n", ns.name(), "probe"]));
    assert_eq!(
        pod.status.and_then(|s| s.phase).as_deref(),
        Some("Succeeded"),
        "the Pod pulled from the bed's registry did not succeed; its output:\n{logs}"
    );
    assert!(logs.contains(&token), "the Pod ran another image:\n{logs}");
    assert!(
        logs.contains("Python 3.11"),
        "the image is not built on the stand-in python:\n{logs}"
    );
    ns.cleanup().await;
}

#[test]
fn a_push_without_the_registrys_credentials_is_refused() {
    let _registry = crate::support::services::registry_shared();
    let dir = tempfile::tempdir().expect("temporary build context");
    std::fs::write(dir.path().join("Dockerfile"), "FROM scratch\nCOPY f /f\n").expect("Dockerfile");
    std::fs::write(dir.path().join("f"), "x\n").expect("file");
    let no_credentials = tempfile::tempdir().expect("empty docker config");
    let image = format!("{}/{}/noauth:1", registry(), unique_name("bed"));
    let built = build_and_push(
        buildctl().env("DOCKER_CONFIG", no_credentials.path()),
        dir.path(),
        &image,
    );
    let log = String::from_utf8_lossy(&built.stderr);
    assert!(
        !built.status.success(),
        "an anonymous push succeeded:\n{log}"
    );
    assert!(
        log.contains(&format!("failed to push {image}")) && log.contains("401 Unauthorized"),
        "buildctl's refusal does not name the push and the registry's 401:\n{log}"
    );
}

fn git_with_ssh(repo: &GitRepo, ssh: &str, args: &[&str]) -> Output {
    output(
        Command::new("git")
            .args(args)
            .current_dir(repo.path())
            .env("GIT_SSH_COMMAND", ssh),
    )
}

#[test]
fn git_push_over_ssh_creates_the_repository_and_ls_remote_reads_it_back() {
    let repo = GitRepo::new();
    repo.git(&["commit", "-q", "--allow-empty", "-m", "first"]);
    let head = repo.git(&["rev-parse", "HEAD"]);
    let url = git_url(&format!("{}.git", unique_name("bed")));

    let missing = git_with_ssh(&repo, git_ssh_command(), &["ls-remote", &url]);
    assert!(
        !missing.status.success(),
        "ls-remote of a new name succeeded"
    );
    assert!(
        String::from_utf8_lossy(&missing.stderr).contains("does not exist (push to create it)"),
        "{}",
        String::from_utf8_lossy(&missing.stderr)
    );

    let pushed = git_with_ssh(&repo, git_ssh_command(), &["push", "-q", &url, "main"]);
    assert!(
        pushed.status.success(),
        "git push {url} failed:\n{}",
        String::from_utf8_lossy(&pushed.stderr)
    );
    let listed = git_with_ssh(&repo, git_ssh_command(), &["ls-remote", &url]);
    assert!(
        listed.status.success(),
        "{}",
        String::from_utf8_lossy(&listed.stderr)
    );
    assert!(
        String::from_utf8_lossy(&listed.stdout).contains(&format!("{head}\trefs/heads/main")),
        "ls-remote does not show the pushed commit:\n{}",
        String::from_utf8_lossy(&listed.stdout)
    );

    let escape = git_with_ssh(
        &repo,
        git_ssh_command(),
        &["ls-remote", &format!("{}/../x.git", git_base())],
    );
    assert!(
        String::from_utf8_lossy(&escape.stderr).contains("invalid repository name"),
        "a path outside the repositories was not refused:\n{}",
        String::from_utf8_lossy(&escape.stderr)
    );
}

#[test]
fn ssh_refuses_a_git_server_whose_key_is_not_in_known_hosts() {
    let repo = GitRepo::new();
    // `[ip]:port` as the bed's known_hosts names the server.
    let known = std::fs::read_to_string(git_known_hosts()).expect("the bed's known_hosts");
    let host = known
        .split_whitespace()
        .next()
        .expect("a host in known_hosts")
        .to_string();
    let dir = tempfile::tempdir().expect("temporary directory");
    let other = dir.path().join("other");
    run_ok(
        Command::new("ssh-keygen")
            .args(["-q", "-t", "ed25519", "-N", ""])
            .arg("-f")
            .arg(&other),
    );
    let other_pub = std::fs::read_to_string(other.with_extension("pub")).expect("other.pub");
    let key: Vec<&str> = other_pub.split_whitespace().take(2).collect();
    let wrong = dir.path().join("known_hosts");
    std::fs::write(&wrong, format!("{host} {}\n", key.join(" "))).expect("write known_hosts");

    let ssh = git_ssh_command().replace(
        &git_known_hosts().display().to_string(),
        &wrong.display().to_string(),
    );
    assert_ne!(
        ssh,
        git_ssh_command(),
        "the known_hosts path is not in the ssh command"
    );
    let refused = git_with_ssh(&repo, &ssh, &["ls-remote", &git_url("any.git")]);
    let stderr = String::from_utf8_lossy(&refused.stderr);
    assert!(!refused.status.success(), "ssh accepted a changed host key");
    // openssh-portable sshconnect.c (the changed-key warning, with StrictHostKeyChecking=yes) and
    // sshconnect2.c: fatal("Host key verification failed.").
    assert!(
        stderr.contains("WARNING: REMOTE HOST IDENTIFICATION HAS CHANGED!")
            && stderr.contains(&format!(
                "Host key for {host} has changed and you have requested strict checking."
            ))
            && stderr.contains("Host key verification failed."),
        "{stderr}"
    );
}
