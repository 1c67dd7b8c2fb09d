//! What `converge service install` takes from the installing user's session: the environment
//! variables the daemon and its children (helm, docker, minikube, ctr, kind, the kube client) read, and the
//! paths they write, each with the reason it must be writable. Pure functions over a list of
//! variables and a few facts, so the rules are unit-tested without touching the machine; it never
//! reads a value it does not keep, and never keeps one whose name looks like a secret.

use std::path::{Path, PathBuf};

use crate::build;

/// Variables taken by exact name: where helm/docker/minikube are found, which kubeconfig, and
/// converge's own settings that a shell may carry; and [`build::ENV_NAMES`].
const NAMES: &[&str] = &["PATH", "KUBECONFIG", "CONVERGE_HELM", "CONVERGE_CONTEXT"];
/// Variables taken by prefix: helm's; and [`build::ENV_PREFIXES`], what the builders and their
/// tools read (the Docker CLI's `DOCKER_HOST`, `DOCKER_CERT_PATH`, … as `minikube docker-env`
/// sets them, minikube's, containerd's `CONTAINERD_ADDRESS` that chooses the containerd builder,
/// kind's), so the daemon chooses and runs the builder the installing shell would.
const PREFIXES: &[&str] = &["HELM_"];

/// Whether `name` is a variable the daemon or a tool it runs reads.
fn wanted(name: &str) -> bool {
    NAMES.iter().chain(build::ENV_NAMES).any(|n| *n == name)
        || PREFIXES
            .iter()
            .chain(build::ENV_PREFIXES)
            .any(|p| name.starts_with(p))
}
/// A name containing one of these is never written into a unit file (readable by every local
/// user under /etc/systemd/system, and shown by `systemctl show`).
const SECRET_HINTS: &[&str] = &[
    "PASSWORD",
    "PASSWD",
    "TOKEN",
    "SECRET",
    "CREDENTIAL",
    "AUTH",
];

/// The environment a unit carries, and what was left out and why.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Captured {
    /// `(name, value)`, sorted by name.
    pub env: Vec<(String, String)>,
    /// `(name, why)` of variables that matched but were not taken (never their values).
    pub skipped: Vec<(String, &'static str)>,
}

impl Captured {
    /// The value of `name`, if taken.
    pub fn get(&self, name: &str) -> Option<&str> {
        self.env
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }
}

/// Takes the variables the daemon needs from `vars` (the installing process's environment).
/// Relative paths in `KUBECONFIG` are made absolute against `cwd` (a unit has another working
/// directory); relative `PATH` entries are dropped (they would resolve against the checkout).
pub fn capture(vars: impl IntoIterator<Item = (String, String)>, cwd: &Path) -> Captured {
    let mut out = Captured::default();
    for (name, value) in vars {
        if !wanted(&name) || value.is_empty() {
            continue;
        }
        let upper = name.to_ascii_uppercase();
        if SECRET_HINTS.iter().any(|h| upper.contains(h)) {
            out.skipped.push((
                name,
                "its name looks like a secret, and unit files are world-readable",
            ));
            continue;
        }
        if value.contains(['\n', '\r', '\0']) {
            out.skipped
                .push((name, "its value spans lines, which a unit file cannot hold"));
            continue;
        }
        let value = match name.as_str() {
            "PATH" => {
                let mut seen = Vec::new();
                for entry in value.split(':') {
                    if entry.starts_with('/') && !seen.contains(&entry) {
                        seen.push(entry);
                    }
                }
                if seen.is_empty() {
                    out.skipped.push((name, "it has no absolute directory"));
                    continue;
                }
                seen.join(":")
            }
            "KUBECONFIG" => value
                .split(':')
                .filter(|e| !e.is_empty())
                .map(|e| cwd.join(e).to_string_lossy().into_owned())
                .collect::<Vec<_>>()
                .join(":"),
            _ => value,
        };
        out.env.push((name, value));
    }
    out.env.sort();
    out.skipped.sort();
    out
}

/// A path the unit makes writable (`ReadWritePaths=`), and why the daemon writes there.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Writable {
    /// The directory.
    pub path: PathBuf,
    /// Who writes what there.
    pub why: String,
    /// Ignored when missing (`-` prefix) instead of failing the start.
    pub optional: bool,
}

/// minikube's state directory: `$MINIKUBE_HOME` (minikube appends `.minikube` unless the value
/// already ends with it), else `~/.minikube`.
pub fn minikube_home(captured: &Captured, home: &Path) -> PathBuf {
    match captured.get("MINIKUBE_HOME") {
        Some(h) if Path::new(h).ends_with(".minikube") => PathBuf::from(h),
        Some(h) => Path::new(h).join(".minikube"),
        None => home.join(".minikube"),
    }
}

/// Whether `program` is an executable file in one of `path`'s directories.
pub fn on_path(path: Option<&str>, program: &str) -> Option<PathBuf> {
    use std::os::unix::fs::PermissionsExt;
    path?
        .split(':')
        .map(|d| Path::new(d).join(program))
        .find(|p| {
            std::fs::metadata(p)
                .map(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
                .unwrap_or(false)
        })
}

/// The directories the daemon writes, beyond its private `/tmp` and its cache directory:
/// - the checkout's git directory: the lock file `converge.lock` (and converge's refs, unless a
///   worktree keeps them in the common directory, which is then listed too);
/// - minikube's state, when minikube is used (`minikube` on the captured `PATH`, or its state
///   directory exists): `minikube docker-env` and `minikube image build` write their audit log
///   and take profile locks there.
///
/// Nothing for helm: `helm template` of a local chart writes no file (checked with strace);
/// nothing for the kubeconfig: the kube client only reads it; nothing for the Docker socket:
/// connecting to a socket is allowed on a read-only mount.
pub fn writable_paths(
    git_dir: &Path,
    common_dir: &Path,
    captured: &Captured,
    home: &Path,
    minikube_installed: bool,
) -> Vec<Writable> {
    let mut out = Vec::new();
    if common_dir == git_dir {
        out.push(Writable {
            path: git_dir.to_path_buf(),
            why: "the daemon's lock file (converge.lock) and converge's refs (pull mode)".into(),
            optional: false,
        });
    } else {
        out.push(Writable {
            path: git_dir.to_path_buf(),
            why: "the daemon's lock file (converge.lock)".into(),
            optional: false,
        });
        out.push(Writable {
            path: common_dir.to_path_buf(),
            why: "converge's refs (pull mode), kept in the repository's common directory".into(),
            optional: false,
        });
    }
    let minikube = minikube_home(captured, home);
    if minikube_installed || minikube.is_dir() {
        out.push(Writable {
            path: minikube,
            why: "minikube's state: `minikube docker-env` and `minikube image build` write its audit log and take profile locks".into(),
            optional: true,
        });
    }
    out
}

/// Whether an unprivileged user may create user namespaces, which a systemd user manager needs
/// to apply `ProtectSystem=`, `ProtectHome=` and `PrivateTmp=` to a user unit (`PrivateUsers=`).
/// Inputs are the sysctls `user.max_user_namespaces`, `kernel.unprivileged_userns_clone` (Debian
/// kernels before 6.x) and `kernel.apparmor_restrict_unprivileged_userns` (Ubuntu 23.10+),
/// `None` when absent.
pub fn user_namespaces_allowed(
    max_user_namespaces: Option<&str>,
    unprivileged_userns_clone: Option<&str>,
    apparmor_restrict: Option<&str>,
) -> bool {
    let n = |v: Option<&str>| v.and_then(|s| s.trim().parse::<u64>().ok());
    n(max_user_namespaces) != Some(0)
        && n(unprivileged_userns_clone) != Some(0)
        && n(apparmor_restrict) != Some(1)
}

/// [`user_namespaces_allowed`] for this machine.
pub fn user_namespaces_allowed_here() -> bool {
    let read = |p: &str| std::fs::read_to_string(p).ok();
    user_namespaces_allowed(
        read("/proc/sys/user/max_user_namespaces").as_deref(),
        read("/proc/sys/kernel/unprivileged_userns_clone").as_deref(),
        read("/proc/sys/kernel/apparmor_restrict_unprivileged_userns").as_deref(),
    )
}

/// An account's name and home directory, from `passwd(5)` text, by uid.
pub fn account_by_uid(passwd: &str, uid: u32) -> Option<(String, PathBuf)> {
    passwd.lines().find_map(|l| {
        let f: Vec<&str> = l.split(':').collect();
        (f.len() >= 6 && f[2].parse::<u32>().ok() == Some(uid))
            .then(|| (f[0].to_string(), PathBuf::from(f[5])))
    })
}

/// An account's home directory, from `passwd(5)` text, by name.
pub fn home_of(passwd: &str, name: &str) -> Option<PathBuf> {
    passwd.lines().find_map(|l| {
        let f: Vec<&str> = l.split(':').collect();
        (f.len() >= 6 && f[0] == name).then(|| PathBuf::from(f[5]))
    })
}

/// A group's name, from `group(5)` text, by gid.
pub fn group_name(group: &str, gid: u32) -> Option<String> {
    group.lines().find_map(|l| {
        let f: Vec<&str> = l.split(':').collect();
        (f.len() >= 3 && f[2].parse::<u32>().ok() == Some(gid)).then(|| f[0].to_string())
    })
}

/// The Docker socket builds use: `DOCKER_HOST` when it is `unix://…`, else Docker's default;
/// `None` for a TCP engine (minikube's, with `minikube docker-env`), which needs no group.
pub fn docker_socket(captured: &Captured) -> Option<PathBuf> {
    match captured.get("DOCKER_HOST") {
        Some(h) => h.strip_prefix("unix://").map(PathBuf::from),
        None => Some(PathBuf::from("/var/run/docker.sock")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn vars(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn install_takes_kubeconfig_path_and_engine_variables_and_nothing_else() {
        let c = capture(
            vars(&[
                ("PATH", "/home/me/bin:bin:/usr/bin:/home/me/bin"),
                ("KUBECONFIG", "kube/a.yaml:/etc/k.yaml"),
                ("DOCKER_HOST", "tcp://192.168.49.2:2376"),
                ("DOCKER_CERT_PATH", "/home/me/.minikube/certs"),
                ("MINIKUBE_ACTIVE_DOCKERD", "minikube"),
                ("EDITOR", "vim"),
                ("SSH_AUTH_SOCK", "/run/user/1000/ssh"),
            ]),
            Path::new("/home/me/src"),
        );
        assert_eq!(
            c.env,
            vars(&[
                ("DOCKER_CERT_PATH", "/home/me/.minikube/certs"),
                ("DOCKER_HOST", "tcp://192.168.49.2:2376"),
                ("KUBECONFIG", "/home/me/src/kube/a.yaml:/etc/k.yaml"),
                ("MINIKUBE_ACTIVE_DOCKERD", "minikube"),
                ("PATH", "/home/me/bin:/usr/bin"),
            ])
        );
        assert!(c.skipped.is_empty());
    }

    /// Every variable the builder detection reads ([`build::BuildEnv::from_lookup`], asked here
    /// which names it looks up) is captured: a daemon installed as a service chooses and aims
    /// the builder the installing shell would. A variable added to the detection but not to the
    /// capture fails this test.
    #[test]
    fn every_variable_the_builder_detection_reads_is_captured() {
        let read = std::cell::RefCell::new(Vec::new());
        build::BuildEnv::from_lookup(|name| {
            read.borrow_mut().push(name.to_string());
            None
        });
        let read = read.into_inner();
        assert!(read.contains(&"CONTAINERD_ADDRESS".to_string()), "{read:?}");
        for name in read {
            let c = capture([(name.clone(), "/x".to_string())], Path::new("/"));
            assert_eq!(
                c.get(&name),
                Some("/x"),
                "`{name}` is read but not captured"
            );
        }
    }

    /// The testbed's env file chooses the containerd builder (`CONTAINERD_ADDRESS`, as a shell
    /// on a node with containerd does): a daemon installed from that shell must choose it too,
    /// and import where the shell would, not silently build with Docker and import nowhere.
    #[test]
    fn install_from_a_shell_that_chose_containerd_keeps_the_containerd_builder() {
        let shell = vars(&[
            ("PATH", "/usr/bin"),
            ("DOCKER_HOST", "unix:///tmp/converge-testbed/docker.sock"),
            (
                "CONTAINERD_ADDRESS",
                "/tmp/converge-testbed/containerd/containerd.sock",
            ),
            ("CONTAINERD_NAMESPACE", "k8s.io"),
            ("CONTAINERD_SNAPSHOTTER", "native"),
            ("KIND_EXPERIMENTAL_PROVIDER", "docker"),
            ("CONVERGE_BUILD_COMMAND", "buildah bud -t {image} {context}"),
            ("CONVERGE_BUILD_EXISTS_COMMAND", "buildah inspect {image}"),
        ]);
        let c = capture(shell.clone(), Path::new("/"));

        let spec: crate::desired::StackSpec = serde_yaml_ng::from_str(
            "apiVersion: converge.dev/v1alpha1\nkind: Stack\nname: s\nnamespace: s\n",
        )
        .expect("stack spec");
        let stack = crate::desired::Stack {
            spec,
            file: "desired/stack.yaml".into(),
            dir: "desired".into(),
            components: Vec::new(),
        };
        let env = build::BuildEnv::from_lookup(|n| c.get(n).map(String::from));
        let choice = build::choose_builder(None, &stack, "converge-testbed", &env);
        assert_eq!(
            choice.builder,
            crate::desired::schema::BuilderKind::Containerd,
            "{}",
            choice.reason
        );
        let mut want = shell;
        want.sort();
        assert_eq!(c.env, want, "every builder variable is kept");
    }

    #[test]
    fn variables_that_look_like_secrets_are_named_as_skipped_never_kept() {
        let c = capture(
            vars(&[
                ("DOCKER_AUTH_CONFIG", "{\"auths\":{}}"),
                ("HELM_REPO_PASSWORD", "hunter2"),
                ("DOCKER_HOST", "unix:///run/docker.sock"),
            ]),
            Path::new("/"),
        );
        assert_eq!(c.env, vars(&[("DOCKER_HOST", "unix:///run/docker.sock")]));
        let names: Vec<_> = c.skipped.iter().map(|(n, _)| n.as_str()).collect();
        assert_eq!(names, ["DOCKER_AUTH_CONFIG", "HELM_REPO_PASSWORD"]);
        assert!(!format!("{c:?}").contains("hunter2"));
    }

    #[test]
    fn minikube_home_follows_minikube_rules() {
        let home = Path::new("/home/me");
        let with = |v: &str| capture(vars(&[("MINIKUBE_HOME", v)]), Path::new("/"));
        assert_eq!(
            minikube_home(&Captured::default(), home),
            Path::new("/home/me/.minikube")
        );
        assert_eq!(
            minikube_home(&with("/data/mk"), home),
            Path::new("/data/mk/.minikube")
        );
        assert_eq!(
            minikube_home(&with("/data/.minikube"), home),
            Path::new("/data/.minikube")
        );
    }

    #[test]
    fn writable_paths_are_the_git_dir_and_minikube_state_only_when_minikube_is_used() {
        let home = tempfile::tempdir().unwrap();
        let git = Path::new("/src/todo/.git");
        let none = writable_paths(git, git, &Captured::default(), home.path(), false);
        assert_eq!(none.len(), 1);
        assert_eq!(none[0].path, git);
        assert!(!none[0].optional);
        let mk = writable_paths(git, git, &Captured::default(), home.path(), true);
        assert_eq!(mk.len(), 2);
        assert_eq!(mk[1].path, home.path().join(".minikube"));
        assert!(
            mk[1].optional,
            "a missing ~/.minikube must not fail the start"
        );
        std::fs::create_dir(home.path().join(".minikube")).unwrap();
        assert_eq!(
            writable_paths(git, git, &Captured::default(), home.path(), false).len(),
            2
        );
        let wt = writable_paths(
            Path::new("/src/todo/.git/worktrees/b"),
            git,
            &Captured::default(),
            Path::new("/nonexistent"),
            false,
        );
        assert_eq!(
            wt.iter().map(|w| w.path.as_path()).collect::<Vec<_>>(),
            [Path::new("/src/todo/.git/worktrees/b"), git]
        );
    }

    #[test]
    fn accounts_and_groups_are_read_from_passwd_and_group_text() {
        let passwd =
            "root:x:0:0:root:/root:/bin/bash\nalice:x:1000:1000:Alice,,,:/home/alice:/bin/bash\n";
        assert_eq!(
            account_by_uid(passwd, 1000),
            Some(("alice".into(), PathBuf::from("/home/alice")))
        );
        assert_eq!(account_by_uid(passwd, 1001), None);
        assert_eq!(home_of(passwd, "root"), Some(PathBuf::from("/root")));
        assert_eq!(
            group_name("root:x:0:\ndocker:x:998:alice\n", 998),
            Some("docker".into())
        );
    }

    #[test]
    fn the_docker_socket_is_docker_host_when_unix_and_none_for_tcp() {
        let with = |v: &str| capture(vars(&[("DOCKER_HOST", v)]), Path::new("/"));
        assert_eq!(
            docker_socket(&with("unix:///run/user/1000/docker.sock")),
            Some("/run/user/1000/docker.sock".into())
        );
        assert_eq!(docker_socket(&with("tcp://192.168.49.2:2376")), None);
        assert_eq!(
            docker_socket(&Captured::default()),
            Some("/var/run/docker.sock".into())
        );
    }

    #[test]
    fn user_namespaces_are_refused_by_any_of_the_three_sysctls() {
        assert!(user_namespaces_allowed(Some("96365\n"), None, None));
        assert!(user_namespaces_allowed(None, Some("1"), Some("0")));
        assert!(!user_namespaces_allowed(Some("0"), None, None));
        assert!(!user_namespaces_allowed(Some("10"), Some("0\n"), None));
        assert!(!user_namespaces_allowed(Some("10"), Some("1"), Some("1")));
    }
}
