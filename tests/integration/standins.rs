//! The testbed's base-image stand-ins (tests/testbed/images): the bed's engine holds local
//! images under the names the shipped Dockerfiles and desired/dev use, each labelled as a
//! stand-in, and the postgres stand-in keeps the official image's contract (user, password and
//! database created on first start; data kept on the volume across container restarts).
//! Containers, volumes and networks are named per test and removed when it ends.

use std::path::PathBuf;
use std::process::Command;
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use crate::support::{self, run_ok, unique_name};

/// The official images the stand-ins replace, by the names the Dockerfiles and desired/dev use.
const STANDINS: [&str; 3] = [
    "python:3.12-slim-bookworm",
    "node:20-bookworm-slim",
    "postgres:16-alpine",
];
const POSTGRES: &str = "postgres:16-alpine";

/// Runs tests/testbed/images/build against the bed's engine once per test process (a few
/// seconds when the bed already has the stand-ins) and returns the tarball paths it printed.
fn ensure_standins() -> &'static [PathBuf] {
    static PATHS: OnceLock<Vec<PathBuf>> = OnceLock::new();
    PATHS.get_or_init(|| {
        let script = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/testbed/images/build");
        let out = Command::new(&script)
            .env("DOCKER_HOST", support::docker_host())
            .stderr(std::process::Stdio::inherit())
            .output()
            .unwrap_or_else(|e| panic!("cannot run {}: {e}", script.display()));
        assert!(
            out.status.success(),
            "{} failed ({}); see its output above",
            script.display(),
            out.status
        );
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .map(PathBuf::from)
            .collect()
    })
}

fn label(image: &str, key: &str) -> String {
    run_ok(support::docker().args([
        "image",
        "inspect",
        "-f",
        &format!("{{{{index .Config.Labels \"{key}\"}}}}"),
        image,
    ]))
    .trim()
    .to_string()
}

/// Containers, volumes and networks a test created, removed on drop (also when it panics).
#[derive(Default)]
struct Cleanup {
    containers: Vec<String>,
    volumes: Vec<String>,
    networks: Vec<String>,
}

impl Drop for Cleanup {
    fn drop(&mut self) {
        for c in &self.containers {
            let _ = support::docker().args(["rm", "-f", "-v", c]).output();
        }
        for v in &self.volumes {
            let _ = support::docker().args(["volume", "rm", "-f", v]).output();
        }
        for n in &self.networks {
            let _ = support::docker().args(["network", "rm", n]).output();
        }
    }
}

/// Waits until the server in `container` accepts TCP connections as `user` on `db`, the way
/// the chart's readiness probe asks (the temporary server of the first start listens on the
/// Unix socket only, so this also waits for initialisation to finish).
fn wait_ready(container: &str, user: &str, db: &str) {
    let deadline = Instant::now() + Duration::from_secs(90);
    loop {
        let ok = support::docker()
            .args(["exec", container, "pg_isready", "-h", "127.0.0.1"])
            .args(["-U", user, "-d", db])
            .output()
            .is_ok_and(|o| o.status.success());
        if ok {
            return;
        }
        if Instant::now() > deadline {
            let logs = support::docker().args(["logs", container]).output();
            panic!(
                "{container} not ready after 90 s; its log:\n{}",
                logs.map(|o| String::from_utf8_lossy(&o.stderr).into_owned())
                    .unwrap_or_default()
            );
        }
        std::thread::sleep(Duration::from_millis(500));
    }
}

#[test]
fn the_bed_engine_holds_every_base_image_the_shipped_dockerfiles_use_labelled_as_a_stand_in() {
    let tarballs = ensure_standins();
    for image in STANDINS {
        assert_eq!(
            label(image, "dev.converge.testbed.stand-in"),
            "true",
            "{image}"
        );
        assert_eq!(
            label(image, "dev.converge.testbed.stand-in.for"),
            image,
            "{image}"
        );
        let description = label(image, "org.opencontainers.image.description");
        assert!(
            description.starts_with("STAND-IN, not the official"),
            "{image} must say it is a stand-in, says: {description}"
        );
    }
    // The Dockerfiles name these bases; a renamed FROM would make the script fail above.
    for dockerfile in ["apps/backend/Dockerfile", "apps/frontend/Dockerfile"] {
        let text =
            std::fs::read_to_string(PathBuf::from(env!("CARGO_MANIFEST_DIR")).join(dockerfile))
                .expect("read Dockerfile");
        assert!(
            text.lines()
                .filter_map(|l| l.strip_prefix("FROM "))
                .all(|rest| STANDINS.iter().any(|s| rest.starts_with(s))),
            "{dockerfile} uses a base image without a stand-in"
        );
    }
    // desired/dev runs postgres by reference, so the node's runtime gets its tarball.
    let postgres_tar = tarballs
        .iter()
        .find(|p| {
            p.file_name()
                .is_some_and(|n| n.to_string_lossy().starts_with("node-postgres-"))
        })
        .unwrap_or_else(|| panic!("no postgres tarball among {tarballs:?}"));
    assert!(
        std::fs::metadata(postgres_tar).is_ok_and(|m| m.len() > 0),
        "{} is missing or empty",
        postgres_tar.display()
    );
}

#[test]
fn the_postgres_stand_in_creates_its_user_password_and_database_on_first_start() {
    ensure_standins();
    let mut cleanup = Cleanup::default();
    // A network of its own: a client from another address must give the password (the
    // socket and loopback are trusted, as in the official image).
    let net = unique_name("conv-pgnet");
    run_ok(support::docker().args(["network", "create", &net]));
    cleanup.networks.push(net.clone());
    let server = unique_name("conv-pg");
    run_ok(
        support::docker()
            .args(["run", "-d", "--name", &server, "--network", &net])
            .args("-e POSTGRES_USER=todo -e POSTGRES_PASSWORD=s3cret-pw".split(' '))
            .args(["-e", "POSTGRES_DB=tasks", POSTGRES]),
    );
    cleanup.containers.push(server.clone());
    wait_ready(&server, "todo", "tasks");

    let client = |password: &str| {
        support::docker()
            .args(["run", "--rm", "--network", &net])
            .args(["-e", &format!("PGPASSWORD={password}")])
            .args(["--entrypoint", "psql", POSTGRES, "-h", &server])
            .args("-U todo -d tasks -Atc".split(' '))
            .arg("select current_user || ' ' || current_database()")
            .output()
            .expect("run psql")
    };
    let right = client("s3cret-pw");
    assert!(
        right.status.success(),
        "the given user/password/database must be accepted: {}",
        String::from_utf8_lossy(&right.stderr)
    );
    assert_eq!(String::from_utf8_lossy(&right.stdout).trim(), "todo tasks");

    let wrong = client("not-the-password");
    assert!(!wrong.status.success(), "a wrong password was accepted");
    assert!(
        String::from_utf8_lossy(&wrong.stderr).contains("password authentication failed"),
        "unexpected refusal: {}",
        String::from_utf8_lossy(&wrong.stderr)
    );
}

#[test]
fn the_postgres_stand_in_keeps_its_data_across_a_container_restart_on_the_same_volume() {
    ensure_standins();
    let mut cleanup = Cleanup::default();
    let volume = unique_name("conv-pgdata");
    run_ok(support::docker().args(["volume", "create", &volume]));
    cleanup.volumes.push(volume.clone());

    // As the chart runs it: uid 70, read-only root, PGDATA in a subdirectory of the claim,
    // writable run/tmp directories, no capabilities.
    let start = |name: &str, password: &str| {
        run_ok(
            support::docker()
                .args(["run", "-d", "--name", name])
                .args("--user 70:70 --read-only --cap-drop ALL".split(' '))
                .args("--security-opt no-new-privileges".split(' '))
                .args("--tmpfs /var/run/postgresql --tmpfs /tmp".split(' '))
                .args(["-v", &format!("{volume}:/var/lib/postgresql/data")])
                .args("-e PGDATA=/var/lib/postgresql/data/pgdata -e PGPORT=5432".split(' '))
                .args("-e POSTGRES_USER=todo -e POSTGRES_DB=todo".split(' '))
                .args(["-e", &format!("POSTGRES_PASSWORD={password}"), POSTGRES]),
        );
        wait_ready(name, "todo", "todo");
    };
    let psql = |name: &str, sql: &str| {
        run_ok(
            support::docker()
                .args(["exec", name])
                .args("psql -U todo -d todo -Atc".split(' '))
                .arg(sql),
        )
    };

    let first = unique_name("conv-pg");
    cleanup.containers.push(first.clone());
    start(&first, "first-pw");
    psql(
        &first,
        "create table task (title text); insert into task values ('buy milk')",
    );
    // The chart's preStop command. The server is PID 1, so the container exits with it and
    // docker ends the exec too: its own status says nothing, the container's says it all.
    let _ = support::docker()
        .args(["exec", &first, "sh", "-c"])
        .arg("exec pg_ctl stop -D \"$PGDATA\" -m fast -w -t 50")
        .output();
    let exit = run_ok(support::docker().args(["wait", &first]));
    assert_eq!(exit.trim(), "0", "the server did not stop cleanly");
    run_ok(support::docker().args(["rm", "-f", &first]));

    // A new container on the same volume: no second initdb (a changed password does not
    // re-initialise), the row is still there.
    let second = unique_name("conv-pg");
    cleanup.containers.push(second.clone());
    start(&second, "another-pw");
    assert_eq!(psql(&second, "select title from task").trim(), "buy milk");
    let logs = support::docker()
        .args(["logs", &second])
        .output()
        .expect("docker logs");
    assert!(
        String::from_utf8_lossy(&logs.stderr).contains("skipping initialisation"),
        "the second start initialised the volume again"
    );
}
