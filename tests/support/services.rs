//! The testbed's network services (tests/testbed/services.sh): the OCI registry, BuildKit and
//! the git server over SSH. Each accessor fails the test, naming `tests/testbed/up`, when the
//! bed's env file lacks the variable (a bed started before these services existed).

use std::path::Path;
use std::process::Command;

use super::{repo_root, testbed};

/// The value of `key` in the bed's env file, or a failure saying how to get a bed that has it.
fn bed_var(key: &str) -> &'static str {
    testbed()
        .vars
        .get(key)
        .map(String::as_str)
        .unwrap_or_else(|| {
            panic!(
            "{key} is missing from the testbed env file {}/env: the bed predates the registry, \
             BuildKit and git services; restart it with tests/testbed/down && tests/testbed/up",
            testbed().dir.display()
        )
        })
}

/// `host:port` of the bed's registry (`CONVERGE_TESTBED_REGISTRY`): TLS from the bed's CA,
/// htpasswd auth.
pub fn registry() -> &'static str {
    bed_var("CONVERGE_TESTBED_REGISTRY")
}

/// The CA certificate the registry's certificate is signed by (`CONVERGE_TESTBED_REGISTRY_CA`).
pub fn registry_ca() -> &'static Path {
    Path::new(bed_var("CONVERGE_TESTBED_REGISTRY_CA"))
}

/// Directory holding a `config.json` with the registry's credentials
/// (`CONVERGE_TESTBED_DOCKER_CONFIG`), for `DOCKER_CONFIG`.
pub fn docker_config_dir() -> &'static Path {
    Path::new(bed_var("CONVERGE_TESTBED_DOCKER_CONFIG"))
}

/// `tcp://<node ip>:<port>` of the bed's buildkitd (`CONVERGE_TESTBED_BUILDKIT`).
pub fn buildkit_addr() -> &'static str {
    bed_var("CONVERGE_TESTBED_BUILDKIT")
}

/// `buildctl` (built for the bed) aimed at the bed's buildkitd, with the registry's credentials
/// (`DOCKER_CONFIG`) for pushes and for pulls through its docker.io mirror.
pub fn buildctl() -> Command {
    let mut cmd = Command::new(testbed().bin_dir.join("buildctl"));
    cmd.env("BUILDKIT_HOST", buildkit_addr())
        .env("DOCKER_CONFIG", docker_config_dir());
    cmd
}

/// `ssh://root@<node ip>:<port>/git` (`CONVERGE_TESTBED_GIT`): `<base>/<name>.git` is a
/// repository; the first push to a new name creates it.
pub fn git_base() -> &'static str {
    bed_var("CONVERGE_TESTBED_GIT")
}

/// The URL of repository `name` (e.g. `team/app.git`) on the bed's git server.
pub fn git_url(name: &str) -> String {
    format!("{}/{name}", git_base())
}

/// The private key the git server accepts (`CONVERGE_TESTBED_GIT_KEY`).
pub fn git_key() -> &'static Path {
    Path::new(bed_var("CONVERGE_TESTBED_GIT_KEY"))
}

/// known_hosts with the git server's host key (`CONVERGE_TESTBED_GIT_KNOWN_HOSTS`).
pub fn git_known_hosts() -> &'static Path {
    Path::new(bed_var("CONVERGE_TESTBED_GIT_KNOWN_HOSTS"))
}

/// `ssh -i <key> -o IdentitiesOnly=yes -o UserKnownHostsFile=<known_hosts>
/// -o StrictHostKeyChecking=yes`, for `GIT_SSH_COMMAND` (`CONVERGE_TESTBED_GIT_SSH_COMMAND`).
pub fn git_ssh_command() -> &'static str {
    bed_var("CONVERGE_TESTBED_GIT_SSH_COMMAND")
}

/// `tests/testbed/registry ARG` for this bed.
fn registry_script(arg: &str) -> Command {
    let mut cmd = Command::new(repo_root().join("tests/testbed/registry"));
    cmd.arg(arg).env("CONVERGE_TESTBED_DIR", &testbed().dir);
    cmd
}

/// Stops the bed's registry alone (same address and data on restart), to see what converge
/// does while it is down. Other tests sharing the bed see it down too: restart it promptly
/// with [`registry_start`].
pub fn registry_stop() {
    registry();
    super::run_ok(&mut registry_script("stop"));
}

/// Starts the bed's registry again and waits until it answers.
pub fn registry_start() {
    registry();
    super::run_ok(&mut registry_script("start"));
}

/// Whether the bed's registry process runs.
pub fn registry_running() -> bool {
    registry();
    registry_script("status")
        .status()
        .unwrap_or_else(|e| panic!("cannot run tests/testbed/registry status: {e}"))
        .success()
}

/// A lock on the bed's registry, held while a test uses it (shared) or stops it (exclusive):
/// an advisory `flock` on a file of the bed, so test binaries and threads alike take turns.
pub struct RegistryUse(#[allow(dead_code)] std::fs::File);

fn registry_lock_file() -> std::fs::File {
    let path = testbed().dir.join("registry.test-lock");
    std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&path)
        .unwrap_or_else(|e| panic!("cannot open {}: {e}", path.display()))
}

/// Held while a test uses the bed's registry, so no test stops it meanwhile.
pub fn registry_shared() -> RegistryUse {
    let f = registry_lock_file();
    fs2::FileExt::lock_shared(&f).unwrap_or_else(|e| panic!("flock the registry lock: {e}"));
    RegistryUse(f)
}

/// Held by a test that stops the bed's registry: waits for every user to finish.
pub fn registry_exclusive() -> RegistryUse {
    let f = registry_lock_file();
    fs2::FileExt::lock_exclusive(&f).unwrap_or_else(|e| panic!("flock the registry lock: {e}"));
    RegistryUse(f)
}
