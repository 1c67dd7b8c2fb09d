//! Unit tests of install/uninstall with the service manager behind the [`Runner`] seam: the
//! launchd path (no macOS here) and the rollbacks systemd's failures need. The real systemd is
//! exercised by tests/integration/service.rs in a container.

use std::cell::RefCell;
use std::path::Path;

use super::*;

/// A service manager that answers from a script and records every command it was asked to run.
struct Script {
    calls: RefCell<Vec<String>>,
    /// `(command prefix, stderr)`: commands that fail.
    fail: Vec<(String, String)>,
    /// `(command prefix, stdout)`: answers of commands that succeed (default: empty).
    replies: Vec<(String, String)>,
    /// Called with each command line before it is answered (to look at the disk at that moment).
    probe: Box<dyn Fn(&str)>,
}

impl Script {
    fn new() -> Self {
        Self {
            calls: RefCell::new(Vec::new()),
            fail: Vec::new(),
            replies: vec![
                (
                    "systemctl --user show --property=LoadState".into(),
                    "LoadState=loaded\nLoadError=\nActiveState=inactive\n".into(),
                ),
                (
                    "systemctl show --property=LoadState".into(),
                    "LoadState=loaded\nLoadError=\nActiveState=inactive\n".into(),
                ),
            ],
            probe: Box::new(|_| {}),
        }
    }

    fn failing(mut self, prefix: &str, stderr: &str) -> Self {
        self.fail.push((prefix.into(), stderr.into()));
        self
    }

    fn replying(mut self, prefix: &str, stdout: &str) -> Self {
        self.replies.insert(0, (prefix.into(), stdout.into()));
        self
    }

    fn calls(&self) -> Vec<String> {
        self.calls.borrow().clone()
    }
}

impl Runner for Script {
    fn run(&self, program: &str, args: &[&str]) -> Result<String, ServiceError> {
        let line = format!("{program} {}", args.join(" "));
        (self.probe)(&line);
        self.calls.borrow_mut().push(line.clone());
        if let Some((_, stderr)) = self.fail.iter().find(|(p, _)| line.starts_with(p.as_str())) {
            return Err(ServiceError::Manager {
                command: line,
                message: format!("exit status: 1: {stderr}"),
            });
        }
        Ok(self
            .replies
            .iter()
            .find(|(p, _)| line.starts_with(p.as_str()))
            .map(|(_, out)| out.clone())
            .unwrap_or_default())
    }
}

struct Home {
    dir: tempfile::TempDir,
    places: Places,
    unit: Unit,
}

fn home() -> Home {
    let dir = tempfile::tempdir().unwrap();
    let places = Places {
        home: dir.path().into(),
        config_home: dir.path().join("cfg"),
        system_dir: dir.path().join("system"),
        cache_home: dir.path().join("cache"),
        system_cache_dir: dir.path().join("var-cache"),
    };
    let mut unit = example_unit();
    unit.checkout = dir.path().join("checkout");
    Home { dir, places, unit }
}

/// Every file and directory under `dir`, relative, sorted.
fn tree(dir: &Path) -> Vec<String> {
    fn walk(base: &Path, d: &Path, out: &mut Vec<String>) {
        for e in std::fs::read_dir(d).into_iter().flatten().flatten() {
            let p = e.path();
            out.push(p.strip_prefix(base).unwrap().to_string_lossy().into_owned());
            if p.is_dir() {
                walk(base, &p, out);
            }
        }
    }
    let mut out = Vec::new();
    walk(dir, dir, &mut out);
    out.sort();
    out
}

const ENABLE: InstallOptions = InstallOptions {
    enable: true,
    start: false,
};

#[test]
fn shipped_units_match_what_service_install_writes() {
    let u = example_unit();
    let log = Path::new("/Users/you/Library/Logs/converge.log");
    let system = systemd::unit_text(&u, Manager::SystemdSystem);
    let user = systemd::unit_text(&u, Manager::SystemdUser);
    let plist = launchd::plist_text(&u, "dev.converge", log);
    if std::env::var_os("CONVERGE_BLESS").is_some() {
        // CONVERGE_BLESS=1 cargo test shipped_units: rewrite systemd/ from the template.
        let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("systemd");
        std::fs::write(root.join("converge.service"), system).unwrap();
        std::fs::write(root.join("converge-user.service"), user).unwrap();
        std::fs::write(root.join("launchd/dev.converge.plist"), plist).unwrap();
        return;
    }
    assert_eq!(include_str!("../../../systemd/converge.service"), system);
    assert_eq!(include_str!("../../../systemd/converge-user.service"), user);
    assert_eq!(
        include_str!("../../../systemd/launchd/dev.converge.plist"),
        plist
    );
}

/// The value of `key=` in a unit's text.
fn unit_value<'a>(text: &'a str, key: &str) -> &'a str {
    text.lines()
        .find_map(|l| l.strip_prefix(key).and_then(|r| r.strip_prefix('=')))
        .unwrap_or_else(|| panic!("no {key}= in\n{text}"))
}

fn seconds(v: &str) -> u64 {
    v.trim_end_matches('s').parse().expect("seconds")
}

#[test]
fn plist_has_launchd_keys_with_their_documented_types_and_agrees_with_the_systemd_unit() {
    let u = example_unit();
    let text = launchd::plist_text(
        &u,
        "dev.converge-x-12345678",
        Path::new("/Users/you/Library/Logs/x.log"),
    );
    let value = plist::Value::from_reader_xml(text.as_bytes()).expect("a property list");
    let dict = value.as_dictionary().expect("a dictionary at the top");
    // launchd.plist(5): every key we write, and its type.
    let string = |k: &str| {
        dict.get(k)
            .and_then(|v| v.as_string())
            .unwrap_or_else(|| panic!("{k}: not a string"))
    };
    assert_eq!(string("Label"), "dev.converge-x-12345678");
    assert_eq!(string("WorkingDirectory"), "/srv/converge/checkout");
    assert_eq!(string("ProcessType"), "Background");
    assert_eq!(string("StandardOutPath"), "/Users/you/Library/Logs/x.log");
    assert_eq!(string("StandardErrorPath"), "/Users/you/Library/Logs/x.log");
    let args: Vec<&str> = dict["ProgramArguments"]
        .as_array()
        .expect("ProgramArguments: an array")
        .iter()
        .map(|v| v.as_string().expect("ProgramArguments: strings"))
        .collect();
    assert_eq!(
        args,
        [
            "/usr/local/bin/converge",
            "run",
            "--repo",
            "/srv/converge/checkout",
            "--listen",
            "127.0.0.1:9464"
        ]
    );
    let env = dict["EnvironmentVariables"]
        .as_dictionary()
        .expect("EnvironmentVariables: a dictionary");
    for (k, v) in env {
        assert!(
            v.as_string().is_some(),
            "EnvironmentVariables.{k}: not a string"
        );
    }
    assert_eq!(
        env["KUBECONFIG"].as_string(),
        Some("/srv/converge/.kube/config")
    );
    assert_eq!(env["CONVERGE_LOG_FORMAT"].as_string(), Some("json"));
    let known = [
        "Label",
        "ProgramArguments",
        "WorkingDirectory",
        "EnvironmentVariables",
        "RunAtLoad",
        "KeepAlive",
        "ThrottleInterval",
        "ExitTimeOut",
        "ProcessType",
        "StandardOutPath",
        "StandardErrorPath",
    ];
    for k in dict.keys() {
        assert!(known.contains(&k.as_str()), "unexpected key {k}");
    }

    // The same policy as the systemd unit.
    let unit = systemd::unit_text(&u, Manager::SystemdUser);
    assert_eq!(
        dict["RunAtLoad"].as_boolean(),
        Some(true),
        "RunAtLoad: a boolean, true"
    );
    assert_eq!(
        unit_value(&unit, "WantedBy"),
        "default.target",
        "enabled units start at login"
    );
    let keep = dict["KeepAlive"]
        .as_dictionary()
        .expect("KeepAlive: a dictionary");
    assert_eq!(keep.len(), 1);
    assert_eq!(
        keep["SuccessfulExit"].as_boolean(),
        Some(false),
        "restart only after a failure"
    );
    assert_eq!(unit_value(&unit, "Restart"), "on-failure");
    let int = |k: &str| {
        dict[k]
            .as_signed_integer()
            .unwrap_or_else(|| panic!("{k}: not an integer"))
    };
    assert_eq!(
        int("ThrottleInterval") as u64,
        seconds(unit_value(&unit, "RestartSec"))
    );
    assert_eq!(
        int("ExitTimeOut") as u64,
        seconds(unit_value(&unit, "TimeoutStopSec"))
    );
}

#[test]
fn plist_escapes_xml_in_paths_and_values() {
    let mut u = example_unit();
    u.checkout = "/Users/me/R&D <tools>".into();
    u.env = vec![("DOCKER_HOST".into(), "unix:///a&b.sock".into())];
    let text = launchd::plist_text(&u, "dev.x", Path::new("/tmp/l.log"));
    let value = plist::Value::from_reader_xml(text.as_bytes()).expect("a property list");
    let dict = value.as_dictionary().unwrap();
    assert_eq!(
        dict["WorkingDirectory"].as_string(),
        Some("/Users/me/R&D <tools>")
    );
    let env = dict["EnvironmentVariables"].as_dictionary().unwrap();
    assert_eq!(env["DOCKER_HOST"].as_string(), Some("unix:///a&b.sock"));
    assert_eq!(
        env["PATH"].as_string(),
        Some(launchd::DEFAULT_PATH),
        "a default PATH when none was captured"
    );
}

#[test]
fn launchd_install_lints_before_placing_then_loads_and_uninstall_unloads_then_removes() {
    let h = home();
    let final_path = h.places.file(Manager::Launchd, &name_for(&h.unit.checkout));
    let seen = std::rc::Rc::new(RefCell::new(Vec::new()));
    let mut script = Script::new();
    let (fp, s2) = (final_path.clone(), seen.clone());
    script.probe = Box::new(move |line| {
        if let Some(staged) = line.strip_prefix("plutil -lint ") {
            s2.borrow_mut()
                .push((Path::new(staged).exists(), fp.exists(), staged.to_string()));
        }
    });
    let done = install(&h.unit, Manager::Launchd, &h.places, ENABLE, &script).unwrap();
    assert_eq!(done.path, final_path);
    assert_eq!(done.name, label_for(&h.unit.checkout));
    assert!(done.started, "load -w starts a RunAtLoad job");
    let file = final_path.to_string_lossy().to_string();
    let calls = script.calls();
    assert_eq!(calls[0], "launchctl version");
    assert!(calls[1].starts_with("plutil -lint "));
    assert_eq!(calls[2], format!("launchctl load -w {file}"));
    assert_eq!(calls.len(), 3);
    let (staged_existed, final_existed, staged) = seen.borrow()[0].clone();
    assert!(
        staged_existed && !final_existed,
        "linted before it was put in place"
    );
    assert!(staged.ends_with(&format!(
        "/{}",
        final_path.file_name().unwrap().to_string_lossy()
    )));
    assert_eq!(
        tree(&h.dir.path().join("Library/LaunchAgents")),
        [final_path.file_name().unwrap().to_string_lossy()],
        "no staging left behind"
    );
    plist::Value::from_file(&final_path).expect("the installed file parses");

    let script = Script::new();
    let removed = uninstall(&h.unit.checkout, Manager::Launchd, &h.places, true, &script)
        .unwrap()
        .unwrap();
    assert_eq!(removed.path, final_path);
    assert_eq!(script.calls(), [format!("launchctl unload -w {file}")]);
    assert!(!final_path.exists());
}

#[test]
fn launchd_install_that_launchctl_refuses_leaves_nothing_behind() {
    let h = home();
    let script = Script::new().failing("launchctl load", "Load failed: 5: Input/output error");
    let err = install(&h.unit, Manager::Launchd, &h.places, ENABLE, &script).unwrap_err();
    assert!(err.to_string().contains("Input/output error"), "{err}");
    assert_eq!(
        tree(h.dir.path()),
        Vec::<String>::new(),
        "not even ~/Library"
    );
}

#[test]
fn launchd_install_of_a_file_plutil_rejects_leaves_nothing_behind() {
    let h = home();
    let script = Script::new().failing("plutil -lint", "Encountered unexpected element");
    let err = install(&h.unit, Manager::Launchd, &h.places, ENABLE, &script).unwrap_err();
    assert!(matches!(err, ServiceError::Rejected { .. }), "{err}");
    assert!(err.to_string().contains("nothing was left behind"), "{err}");
    assert_eq!(tree(h.dir.path()), Vec::<String>::new());
    assert!(!script
        .calls()
        .iter()
        .any(|c| c.starts_with("launchctl load")));
}

#[test]
fn launchd_reinstall_unloads_the_old_job_and_a_failed_load_puts_the_old_file_back() {
    let h = home();
    let path = install(&h.unit, Manager::Launchd, &h.places, ENABLE, &Script::new())
        .unwrap()
        .path;
    let old = std::fs::read_to_string(&path).unwrap();
    let mut changed = h.unit.clone();
    changed.args = vec!["--stack".into(), "dev".into()];
    let script = Script::new().failing("launchctl load -w", "Load failed");
    install(&changed, Manager::Launchd, &h.places, ENABLE, &script).unwrap_err();
    assert_eq!(
        std::fs::read_to_string(&path).unwrap(),
        old,
        "the old plist is back"
    );
    let file = path.to_string_lossy();
    let calls = script.calls();
    assert!(
        calls.contains(&format!("launchctl unload {file}")),
        "{calls:?}"
    );
    assert_eq!(
        calls
            .iter()
            .filter(|c| c.starts_with("launchctl load -w"))
            .count(),
        2,
        "the new one failed, the old one was loaded again: {calls:?}"
    );
}

#[test]
fn user_install_without_a_user_manager_writes_nothing() {
    let h = home();
    let script = Script::new().failing(
        "systemctl --user show",
        "Failed to connect to bus: $DBUS_SESSION_BUS_ADDRESS and $XDG_RUNTIME_DIR not defined",
    );
    let err = install(&h.unit, Manager::SystemdUser, &h.places, ENABLE, &script).unwrap_err();
    let msg = err.to_string();
    assert!(
        msg.contains("your systemd user manager does not answer"),
        "{msg}"
    );
    assert!(msg.contains("XDG_RUNTIME_DIR not defined"), "{msg}");
    assert!(msg.contains("nothing was written"), "{msg}");
    assert!(msg.contains("loginctl enable-linger"), "{msg}");
    assert_eq!(tree(h.dir.path()), Vec::<String>::new());
}

#[test]
fn system_install_on_a_machine_without_systemd_writes_nothing() {
    let h = home();
    let script = Script::new().failing(
        "systemctl show",
        "System has not been booted with systemd as init system (PID 1). Can't operate.",
    );
    let err = install(&h.unit, Manager::SystemdSystem, &h.places, ENABLE, &script).unwrap_err();
    assert!(err.to_string().contains("--no-enable"), "{err}");
    assert_eq!(tree(h.dir.path()), Vec::<String>::new());
}

#[test]
fn user_install_verifies_reloads_checks_the_load_and_enables_in_that_order() {
    let h = home();
    let script = Script::new();
    let done = install(&h.unit, Manager::SystemdUser, &h.places, ENABLE, &script).unwrap();
    let name = format!("{}.service", name_for(&h.unit.checkout));
    assert_eq!(done.name, name);
    assert!(done.path.starts_with(h.dir.path().join("cfg/systemd/user")));
    assert!(!done.started && !done.replaced && !done.was_running);
    let calls = script.calls();
    assert_eq!(calls[0], "systemctl --user show --property=Version --value");
    assert!(
        calls[1].starts_with("systemd-analyze --user verify "),
        "{calls:?}"
    );
    assert!(
        calls[1].ends_with(&format!("/{name}")),
        "verified under its own name: {calls:?}"
    );
    assert_eq!(calls[2], "systemctl --user daemon-reload");
    assert_eq!(
        calls[3],
        format!("systemctl --user show --property=LoadState,LoadError,ActiveState {name}")
    );
    assert_eq!(calls[4], format!("systemctl --user enable --quiet {name}"));
    assert_eq!(calls.len(), 5);
    let text = std::fs::read_to_string(&done.path).unwrap();
    assert!(text.contains("WantedBy=default.target"));
    assert!(!text.contains("User="));
    assert_eq!(tree(&h.dir.path().join("cfg/systemd/user")), [name]);
}

#[test]
fn a_unit_systemd_will_not_load_is_taken_back_and_the_previous_one_restored() {
    let h = home();
    let first = install(
        &h.unit,
        Manager::SystemdUser,
        &h.places,
        ENABLE,
        &Script::new(),
    )
    .unwrap();
    let old = std::fs::read_to_string(&first.path).unwrap();
    let mut changed = h.unit.clone();
    changed.args = vec!["--stack".into(), "dev".into()];
    let script = Script::new().replying(
        "systemctl --user show --property=LoadState",
        "LoadState=bad-setting\nLoadError=org.freedesktop.systemd1.BadSetting \"Unit has a bad setting\"\nActiveState=inactive\n",
    );
    let err = install(&changed, Manager::SystemdUser, &h.places, ENABLE, &script).unwrap_err();
    assert!(err.to_string().contains("bad-setting"), "{err}");
    assert_eq!(std::fs::read_to_string(&first.path).unwrap(), old);
    let calls = script.calls();
    assert_eq!(
        calls.last().unwrap(),
        "systemctl --user daemon-reload",
        "{calls:?}"
    );
    assert!(!calls.iter().any(|c| c.contains(" enable ")));
}

#[test]
fn a_rejected_first_install_removes_the_file_and_the_directories_it_made() {
    let h = home();
    let script = Script::new().failing("systemctl --user daemon-reload", "Access denied");
    install(&h.unit, Manager::SystemdUser, &h.places, ENABLE, &script).unwrap_err();
    assert_eq!(tree(h.dir.path()), Vec::<String>::new());
}

#[test]
fn a_unit_that_fails_to_start_stays_installed_and_says_so() {
    let h = home();
    let script = Script::new().failing(
        "systemctl --user start",
        "Job for x.service failed because the control process exited with error code.",
    );
    let opts = InstallOptions {
        enable: true,
        start: true,
    };
    let err = install(&h.unit, Manager::SystemdUser, &h.places, opts, &script).unwrap_err();
    assert!(matches!(err, ServiceError::NotStarted { .. }), "{err}");
    assert!(err
        .to_string()
        .contains("is installed and enabled, but did not start"));
    let path = h
        .places
        .file(Manager::SystemdUser, &name_for(&h.unit.checkout));
    assert!(path.exists());
}

#[test]
fn reinstall_over_a_running_unit_reports_that_it_runs_the_old_settings() {
    let h = home();
    let script = Script::new().replying(
        "systemctl --user show --property=LoadState",
        "LoadState=loaded\nLoadError=\nActiveState=active\n",
    );
    let done = install(&h.unit, Manager::SystemdUser, &h.places, ENABLE, &script).unwrap();
    assert!(done.was_running);
}

#[test]
fn uninstall_stops_disables_removes_the_unit_and_its_cache_and_reloads() {
    let h = home();
    let done = install(
        &h.unit,
        Manager::SystemdSystem,
        &h.places,
        ENABLE,
        &Script::new(),
    )
    .unwrap();
    // What systemd makes for CacheDirectory= when the unit runs, and another unit's cache.
    let name = name_for(&h.unit.checkout);
    let cache = h.places.cache_dir(Manager::SystemdSystem, &name).unwrap();
    std::fs::create_dir_all(cache.join("render")).unwrap();
    std::fs::write(cache.join("render/abc"), "rendered").unwrap();
    let other = cache.parent().unwrap().join("converge-other-12345678");
    std::fs::create_dir_all(&other).unwrap();
    let script = Script::new();
    let removed = uninstall(
        &h.unit.checkout,
        Manager::SystemdSystem,
        &h.places,
        true,
        &script,
    )
    .unwrap()
    .unwrap();
    assert_eq!(removed.path, done.path);
    let n = &done.name;
    assert_eq!(
        script.calls(),
        [
            format!("systemctl disable --now --quiet {n}"),
            format!("systemctl reset-failed {n}"),
            "systemctl daemon-reload".to_string(),
        ]
    );
    assert!(!done.path.exists());
    assert!(!cache.exists(), "its cache is gone");
    assert!(other.exists(), "another unit's cache stays");
    assert!(uninstall(
        &h.unit.checkout,
        Manager::SystemdSystem,
        &h.places,
        true,
        &script
    )
    .unwrap()
    .is_none());
}

#[test]
fn uninstall_keeps_a_unit_systemd_cannot_stop() {
    let h = home();
    let done = install(
        &h.unit,
        Manager::SystemdUser,
        &h.places,
        ENABLE,
        &Script::new(),
    )
    .unwrap();
    let script = Script::new().failing("systemctl --user disable", "Failed to connect to bus");
    uninstall(
        &h.unit.checkout,
        Manager::SystemdUser,
        &h.places,
        true,
        &script,
    )
    .unwrap_err();
    assert!(
        done.path.exists(),
        "removing it would leave the daemon running from a deleted file"
    );
}

#[test]
fn install_and_uninstall_without_enable_touch_only_the_file() {
    let h = home();
    let script = Script::new();
    let opts = InstallOptions::default();
    let path = install(&h.unit, Manager::SystemdUser, &h.places, opts, &script)
        .unwrap()
        .path;
    assert!(path.exists());
    assert_eq!(
        uninstall(
            &h.unit.checkout,
            Manager::SystemdUser,
            &h.places,
            false,
            &script
        )
        .unwrap()
        .unwrap()
        .path,
        path
    );
    assert!(!path.exists());
    assert!(script.calls().is_empty());
}

#[test]
fn unit_names_differ_per_checkout_and_are_safe() {
    let a = name_for(Path::new("/home/me/My Repo"));
    let b = name_for(Path::new("/home/you/My Repo"));
    assert_ne!(a, b);
    assert!(a.starts_with("converge-my-repo-"));
    assert!(a.chars().all(|c| c.is_ascii_alphanumeric() || c == '-'));
    assert_eq!(
        name_for(Path::new("/home/me/My Repo/")),
        name_for(Path::new("/home/me/My Repo"))
    );
}

#[test]
fn a_checkout_path_with_a_line_break_is_refused_before_anything_is_written() {
    let h = home();
    let mut u = h.unit.clone();
    u.checkout = h.dir.path().join("a\nb");
    let err = install(&u, Manager::SystemdUser, &h.places, ENABLE, &Script::new()).unwrap_err();
    assert!(err.to_string().contains("line break"));
    assert_eq!(tree(h.dir.path()), Vec::<String>::new());
}

#[test]
fn a_checkout_is_located_from_any_directory_inside_it_without_opening_it() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().canonicalize().unwrap().join("repo");
    std::fs::create_dir_all(root.join(".git/worktrees/b")).unwrap();
    std::fs::create_dir_all(root.join("desired/sub")).unwrap();
    let found = locate_checkout(&root.join("desired/sub")).unwrap();
    assert_eq!(found.root, root);
    assert_eq!(found.git_dir, root.join(".git"));
    assert_eq!(found.common_dir, root.join(".git"));
    // A linked worktree: `.git` is a file naming its git directory, which names the common one.
    let wt = dir.path().canonicalize().unwrap().join("wt");
    std::fs::create_dir_all(&wt).unwrap();
    std::fs::write(
        wt.join(".git"),
        format!("gitdir: {}\n", root.join(".git/worktrees/b").display()),
    )
    .unwrap();
    std::fs::write(root.join(".git/worktrees/b/commondir"), "../..\n").unwrap();
    let found = locate_checkout(&wt).unwrap();
    assert_eq!(found.git_dir, root.join(".git/worktrees/b"));
    assert_eq!(found.common_dir, root.join(".git"));
    assert_eq!(locate_checkout(Path::new("/proc/self")), None);
}
