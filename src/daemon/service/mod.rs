//! Service integration: the systemd units (system and user) and the launchd plist that run
//! `converge run` for one checkout, and `converge service install|uninstall`, which writes or
//! removes them atomically and registers them with systemctl or launchctl.
//!
//! The text comes from one template per manager ([`systemd::unit_text`], [`launchd::plist_text`]);
//! the shipped files under `systemd/` are its output for placeholder paths (a unit test keeps them
//! equal). What a unit needs from the installing user's session (PATH, KUBECONFIG, the Docker
//! engine's variables, the paths builders write) is decided in [`capture`] and read from the
//! machine in [`session`]. Every command run on the machine goes through a [`Runner`], so the
//! launchd path is tested here without macOS. It never touches a unit it did not write:
//! uninstall removes only the file named for this checkout.

pub mod capture;
pub mod launchd;
pub mod session;
pub mod systemd;

use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::Duration;

use sha2::{Digest, Sha256};

use crate::process;

pub use capture::Writable;

/// Seconds between a crash and the restart (`RestartSec=`, launchd's `ThrottleInterval`).
pub const RESTART_SEC: u64 = 5;
/// Seconds from SIGTERM to SIGKILL (`TimeoutStopSec=`, launchd's `ExitTimeOut`): the daemon's
/// own grace for a reconcile in flight (10 s) plus margin.
pub const STOP_TIMEOUT_SEC: u64 = 20;
/// `WatchdogSec=`: the daemon pings at half of it from its main loop.
pub const WATCHDOG_SEC: u64 = 30;

/// Failures installing or removing a service.
#[derive(Debug, thiserror::Error)]
pub enum ServiceError {
    /// A file could not be written or removed.
    #[error("{action} {}", path.display())]
    Io {
        /// What was being done.
        action: &'static str,
        /// The file.
        path: PathBuf,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// The home or configuration directory is unknown, or an argument cannot go in a unit.
    #[error("{0}")]
    Config(String),
    /// The service manager is not there to talk to; nothing was written.
    #[error("{what} does not answer ({detail}); nothing was written. {hint}")]
    NoManager {
        /// Which manager.
        what: &'static str,
        /// What the probe said.
        detail: String,
        /// What to do.
        hint: &'static str,
    },
    /// The manager refused the generated file; nothing was left behind.
    #[error("{manager} rejected {}: {detail}; nothing was left behind", path.display())]
    Rejected {
        /// The command that judged it.
        manager: &'static str,
        /// The file, as it would have been installed.
        path: PathBuf,
        /// What it said.
        detail: String,
    },
    /// The unit is installed and enabled, but starting it failed.
    #[error("{unit} is installed and enabled, but did not start: {detail}")]
    NotStarted {
        /// The unit.
        unit: String,
        /// What systemctl said.
        detail: String,
    },
    /// A program the manager needs is not installed.
    #[error("`{program}` not found")]
    Missing {
        /// The program.
        program: String,
    },
    /// systemctl, systemd-analyze, launchctl or plutil failed.
    #[error("`{command}` failed: {message}")]
    Manager {
        /// The command line.
        command: String,
        /// Exit status and stderr.
        message: String,
    },
}

/// Which service manager a unit is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Manager {
    /// A systemd system unit (`/etc/systemd/system`).
    SystemdSystem,
    /// A systemd user unit (`$XDG_CONFIG_HOME/systemd/user`).
    SystemdUser,
    /// A launchd agent (`~/Library/LaunchAgents`).
    Launchd,
}

impl Manager {
    /// The manager of this platform.
    pub fn for_platform(user: bool) -> Self {
        if cfg!(target_os = "macos") {
            Manager::Launchd
        } else if user {
            Manager::SystemdUser
        } else {
            Manager::SystemdSystem
        }
    }

    /// `systemctl`'s scope flag for this manager (empty for the system manager).
    fn scope(self) -> &'static [&'static str] {
        match self {
            Manager::SystemdUser => &["--user"],
            _ => &[],
        }
    }
}

/// What a unit runs, as whom, with which environment, and what it may write.
#[derive(Debug, Clone)]
pub struct Unit {
    /// The converge binary.
    pub exe: PathBuf,
    /// The checkout's top directory.
    pub checkout: PathBuf,
    /// Extra `converge run` arguments.
    pub args: Vec<String>,
    /// The account a system unit runs as (`User=`).
    pub user: Option<String>,
    /// Supplementary groups of a system unit (the Docker socket's group).
    pub groups: Vec<String>,
    /// Environment captured from the installing session ([`capture::capture`]).
    pub env: Vec<(String, String)>,
    /// Paths made writable, each with its reason ([`capture::writable_paths`]).
    pub writable: Vec<Writable>,
    /// For a user unit: whether the kernel lets the user manager sandbox the file system
    /// ([`capture::user_namespaces_allowed_here`]). System units are always sandboxed.
    pub sandbox: bool,
}

/// The unit's name for a checkout: `converge-<directory>-<8 hex of its path>`.
pub fn name_for(checkout: &Path) -> String {
    let checkout = normalize(checkout);
    let dir: String = checkout
        .file_name()
        .map(|n| n.to_string_lossy().to_string())
        .unwrap_or_else(|| "root".into())
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' {
                c.to_ascii_lowercase()
            } else {
                '-'
            }
        })
        .collect();
    let hash = hex::encode(Sha256::digest(checkout.to_string_lossy().as_bytes()));
    format!("converge-{dir}-{}", &hash[..8])
}

/// `path` without a trailing `/` or `.` components (git reports work trees with a trailing `/`).
pub fn normalize(path: &Path) -> PathBuf {
    path.components().collect()
}

/// A checkout's paths: its top directory, git directory and common directory.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CheckoutPaths {
    /// The work tree's top directory.
    pub root: PathBuf,
    /// `.git`, or `.git/worktrees/<name>` of a linked worktree.
    pub git_dir: PathBuf,
    /// The directory holding `refs/` (the git directory, or the main one of a worktree).
    pub common_dir: PathBuf,
}

/// Finds the checkout containing `path` by walking up as git does, without opening the
/// repository. For `service install` run as root for a checkout another account owns: libgit2,
/// like git, refuses to open that ("not owned by current user"), and install needs only the
/// paths, never the contents (the daemon then runs as the owner).
pub fn locate_checkout(path: &Path) -> Option<CheckoutPaths> {
    let start = path.canonicalize().ok()?;
    for dir in start.ancestors() {
        let dotgit = dir.join(".git");
        let git_dir = if dotgit.is_dir() {
            dotgit
        } else if dotgit.is_file() {
            let text = std::fs::read_to_string(&dotgit).ok()?;
            let target = text.lines().next()?.strip_prefix("gitdir:")?.trim();
            dir.join(target).canonicalize().ok()?
        } else {
            continue;
        };
        let common_dir = std::fs::read_to_string(git_dir.join("commondir"))
            .ok()
            .and_then(|c| git_dir.join(c.trim()).canonicalize().ok())
            .unwrap_or_else(|| git_dir.clone());
        return Some(CheckoutPaths {
            root: dir.to_path_buf(),
            git_dir,
            common_dir,
        });
    }
    None
}

/// The launchd job label for a checkout.
pub fn label_for(checkout: &Path) -> String {
    format!("dev.{}", name_for(checkout))
}

/// Where things go: from the environment, so tests can point them at a temporary directory.
#[derive(Debug, Clone)]
pub struct Places {
    /// `$HOME`.
    pub home: PathBuf,
    /// `$XDG_CONFIG_HOME`, else `$HOME/.config`.
    pub config_home: PathBuf,
    /// Where system units go (`/etc/systemd/system`).
    pub system_dir: PathBuf,
    /// `$XDG_CACHE_HOME`, else `$HOME/.cache`: a user unit's `CacheDirectory=` base (`%C`).
    pub cache_home: PathBuf,
    /// A system unit's `CacheDirectory=` base (`/var/cache`).
    pub system_cache_dir: PathBuf,
}

impl Places {
    /// From `HOME`, `XDG_CONFIG_HOME` and `CONVERGE_SYSTEMD_SYSTEM_DIR` (default `/etc/systemd/system`).
    pub fn from_env() -> Result<Self, ServiceError> {
        let home = std::env::var_os("HOME")
            .map(PathBuf::from)
            .ok_or_else(|| ServiceError::Config("HOME is not set".into()))?;
        let config_home = std::env::var_os("XDG_CONFIG_HOME")
            .map(PathBuf::from)
            .filter(|p| p.is_absolute())
            .unwrap_or_else(|| home.join(".config"));
        let system_dir = std::env::var_os("CONVERGE_SYSTEMD_SYSTEM_DIR")
            .map(PathBuf::from)
            .unwrap_or_else(|| PathBuf::from("/etc/systemd/system"));
        let cache_home = std::env::var_os("XDG_CACHE_HOME")
            .map(PathBuf::from)
            .filter(|p| p.is_absolute())
            .unwrap_or_else(|| home.join(".cache"));
        Ok(Self {
            home,
            config_home,
            system_dir,
            cache_home,
            system_cache_dir: PathBuf::from("/var/cache"),
        })
    }

    /// The unit's cache directory (`CacheDirectory=converge/<name>`), which systemd made at start.
    pub fn cache_dir(&self, manager: Manager, name: &str) -> Option<PathBuf> {
        let base = match manager {
            Manager::SystemdSystem => &self.system_cache_dir,
            Manager::SystemdUser => &self.cache_home,
            Manager::Launchd => return None,
        };
        Some(base.join("converge").join(name))
    }

    /// The unit or plist file for `name` under `manager`.
    pub fn file(&self, manager: Manager, name: &str) -> PathBuf {
        match manager {
            Manager::SystemdSystem => self.system_dir.join(format!("{name}.service")),
            Manager::SystemdUser => self
                .config_home
                .join("systemd/user")
                .join(format!("{name}.service")),
            Manager::Launchd => self
                .home
                .join("Library/LaunchAgents")
                .join(format!("dev.{name}.plist")),
        }
    }

    /// Where launchd appends the daemon's output.
    pub fn launchd_log(&self, name: &str) -> PathBuf {
        self.home.join("Library/Logs").join(format!("{name}.log"))
    }
}

/// Runs a service-manager command and returns its stdout. The one seam between install/uninstall
/// and the machine: [`Commands`] runs the real programs; tests of the launchd path, which cannot
/// run here (no macOS), record the calls instead.
pub trait Runner {
    /// Runs `program args…`; `Err` when it cannot start, fails, or hangs.
    fn run(&self, program: &str, args: &[&str]) -> Result<String, ServiceError>;
}

/// The real programs, each bounded by a timeout.
#[derive(Debug, Clone)]
pub struct Commands {
    /// How long one command may take.
    pub timeout: Duration,
}

impl Default for Commands {
    fn default() -> Self {
        Self {
            timeout: Duration::from_secs(60),
        }
    }
}

impl Runner for Commands {
    fn run(&self, program: &str, args: &[&str]) -> Result<String, ServiceError> {
        let command = format!("{program} {}", args.join(" "));
        let manager = |message: String| ServiceError::Manager {
            command: command.clone(),
            message,
        };
        match process::Command::new(program, self.timeout)
            .args(args)
            .output_blocking()
        {
            Ok(out) if out.success() => Ok(out.stdout),
            Ok(out) => Err(manager(format!("{}: {}", out.status, out.stderr.trim()))),
            Err(e) if e.is_not_found() => Err(ServiceError::Missing {
                program: program.to_string(),
            }),
            Err(process::Error::Timeout { timeout, .. }) => {
                Err(manager(format!("no answer within {}s", timeout.as_secs())))
            }
            Err(process::Error::Spawn { source, .. } | process::Error::Io { source, .. }) => {
                Err(manager(source.to_string()))
            }
            Err(e) => Err(manager(e.to_string())),
        }
    }
}

/// What `install` should do beyond writing the file.
#[derive(Debug, Clone, Copy, Default)]
pub struct InstallOptions {
    /// Register it with the manager: systemd `daemon-reload` + `enable` (starts at boot or
    /// login); launchd `load -w` (which also starts it). Without it only the file is written.
    pub enable: bool,
    /// systemd: also start it now and wait for it to report ready.
    pub start: bool,
}

/// What `install` did.
#[derive(Debug, Clone)]
pub struct Installed {
    /// The unit or plist file.
    pub path: PathBuf,
    /// The unit (`converge-….service`) or launchd label.
    pub name: String,
    /// An earlier file for this checkout was replaced.
    pub replaced: bool,
    /// Registered with the manager.
    pub enabled: bool,
    /// Started (or, for launchd, loaded, which starts it).
    pub started: bool,
    /// It was already running before this install (it keeps the old settings until restarted).
    pub was_running: bool,
    /// launchd: where its output goes.
    pub log: Option<PathBuf>,
}

/// Checks that the manager answers, before anything is written.
fn preflight(manager: Manager, runner: &dyn Runner) -> Result<(), ServiceError> {
    let (program, args, what, hint): (&str, Vec<&str>, &'static str, &'static str) = match manager {
        Manager::SystemdSystem => (
            "systemctl",
            vec!["show", "--property=Version", "--value"],
            "systemd (the system manager)",
            "This machine (or container) does not run systemd as init: run `converge run` under your own supervisor, or write the file only with `--no-enable`.",
        ),
        Manager::SystemdUser => (
            "systemctl",
            vec!["--user", "show", "--property=Version", "--value"],
            "your systemd user manager",
            "It runs while you are logged in through a session that starts it (a desktop or ssh login, not `su` or `sudo -u`), or always after `loginctl enable-linger $USER` (as root). `systemctl --user status` must answer.",
        ),
        Manager::Launchd => (
            "launchctl",
            vec!["version"],
            "launchd",
            "Run it in your own login session on the Mac.",
        ),
    };
    runner
        .run(program, &args)
        .map(drop)
        .map_err(|e| ServiceError::NoManager {
            what,
            detail: match e {
                ServiceError::Manager { message, .. } => message,
                other => other.to_string(),
            },
            hint,
        })
}

/// Asks the manager's own checker about the staged file (named as it will be installed).
/// systemd-analyze is optional (some distributions package it apart): the load check after
/// `daemon-reload` still catches what it would.
fn validate(manager: Manager, staged: &Path, runner: &dyn Runner) -> Result<(), ServiceError> {
    let file = staged.to_string_lossy();
    let (program, args, manager_name): (&str, Vec<&str>, &'static str) = match manager {
        Manager::SystemdSystem => (
            "systemd-analyze",
            vec!["verify", &file],
            "systemd-analyze verify",
        ),
        Manager::SystemdUser => (
            "systemd-analyze",
            vec!["--user", "verify", &file],
            "systemd-analyze --user verify",
        ),
        Manager::Launchd => ("plutil", vec!["-lint", &file], "plutil -lint"),
    };
    match runner.run(program, &args) {
        Ok(_) => Ok(()),
        Err(ServiceError::Missing { .. }) if manager != Manager::Launchd => Ok(()),
        Err(ServiceError::Manager { message, .. }) => Err(ServiceError::Rejected {
            manager: manager_name,
            path: staged.to_path_buf(),
            detail: message,
        }),
        Err(e) => Err(e),
    }
}

/// `systemctl show` properties of `unit`, as `(name, value)`.
fn show(
    manager: Manager,
    unit: &str,
    props: &str,
    runner: &dyn Runner,
) -> Result<Vec<(String, String)>, ServiceError> {
    let prop = format!("--property={props}");
    let mut args = manager.scope().to_vec();
    args.extend(["show", &prop, unit]);
    let out = runner.run("systemctl", &args)?;
    Ok(out
        .lines()
        .filter_map(|l| l.split_once('='))
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect())
}

fn systemctl(manager: Manager, args: &[&str], runner: &dyn Runner) -> Result<String, ServiceError> {
    let mut all = manager.scope().to_vec();
    all.extend_from_slice(args);
    runner.run("systemctl", &all)
}

/// Creates `dir` and its missing parents; returns those it created, outermost first.
fn create_dirs(dir: &Path) -> Result<Vec<PathBuf>, ServiceError> {
    let mut missing = Vec::new();
    let mut d = Some(dir);
    while let Some(p) = d {
        if p.exists() {
            break;
        }
        missing.push(p.to_path_buf());
        d = p.parent();
    }
    missing.reverse();
    std::fs::create_dir_all(dir).map_err(|source| ServiceError::Io {
        action: "creating",
        path: dir.to_path_buf(),
        source,
    })?;
    Ok(missing)
}

/// Writes `bytes` to `path` through a temporary file in the same directory and a rename.
fn write_atomically(path: &Path, bytes: &[u8]) -> Result<(), ServiceError> {
    let dir = path.parent().unwrap_or(Path::new("."));
    let io = |action, source| ServiceError::Io {
        action,
        path: path.to_path_buf(),
        source,
    };
    let mut tmp = tempfile::Builder::new()
        .prefix(".converge-")
        .tempfile_in(dir)
        .map_err(|e| io("writing", e))?;
    tmp.write_all(bytes).map_err(|e| io("writing", e))?;
    tmp.as_file().sync_all().map_err(|e| io("writing", e))?;
    set_mode(tmp.path(), 0o644).map_err(|e| io("writing", e))?;
    tmp.persist(path).map_err(|e| io("writing", e.error))?;
    Ok(())
}

fn set_mode(path: &Path, mode: u32) -> std::io::Result<()> {
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode))
}

/// Writes the unit for `unit` and, with `opts.enable`, registers it (and with `opts.start`
/// starts it). Atomic: the manager is asked first whether it answers, the text is staged under
/// its final name in a temporary directory beside the target and checked by the manager's own
/// validator, and only then renamed into place. A failure before the unit is enabled leaves the
/// previous state (the earlier file, or none, and no directory it created). A failure to start
/// an enabled unit is reported with the unit left installed, so its journal can be read.
pub fn install(
    unit: &Unit,
    manager: Manager,
    places: &Places,
    opts: InstallOptions,
    runner: &dyn Runner,
) -> Result<Installed, ServiceError> {
    let checkout = unit.checkout.to_string_lossy();
    if checkout.contains(['\n', '\r']) {
        return Err(ServiceError::Config(format!(
            "the checkout path {checkout:?} contains a line break, which a unit file cannot hold"
        )));
    }
    let base = name_for(&unit.checkout);
    let path = places.file(manager, &base);
    let (text, name, log) = match manager {
        Manager::Launchd => {
            let log = places.launchd_log(&base);
            let label = label_for(&unit.checkout);
            (launchd::plist_text(unit, &label, &log), label, Some(log))
        }
        m => (systemd::unit_text(unit, m), format!("{base}.service"), None),
    };
    if opts.enable {
        preflight(manager, runner)?;
    }
    let dir = path
        .parent()
        .ok_or_else(|| ServiceError::Config(format!("no directory for {}", path.display())))?;
    let created = create_dirs(dir)?;
    let result = place(manager, &path, &name, text.as_bytes(), opts, runner);
    if result.is_err() {
        // Leave no directory behind that this install made (only if still empty).
        for d in created.iter().rev() {
            let _ = std::fs::remove_dir(d);
        }
    }
    let (replaced, was_running, started) = result?;
    Ok(Installed {
        path,
        name,
        replaced,
        enabled: opts.enable,
        started,
        was_running,
        log,
    })
}

/// Stages, validates, renames and registers; rolls back the file on a registration failure.
/// Returns `(replaced, was_running, started)`.
fn place(
    manager: Manager,
    path: &Path,
    name: &str,
    text: &[u8],
    opts: InstallOptions,
    runner: &dyn Runner,
) -> Result<(bool, bool, bool), ServiceError> {
    let dir = path.parent().unwrap_or(Path::new("."));
    let file_name = path.file_name().unwrap_or_default();
    let staging = tempfile::Builder::new()
        .prefix(".converge-install-")
        .tempdir_in(dir)
        .map_err(|source| ServiceError::Io {
            action: "writing",
            path: path.to_path_buf(),
            source,
        })?;
    let staged = staging.path().join(file_name);
    write_atomically(&staged, text)?;
    if opts.enable {
        validate(manager, &staged, runner).map_err(|e| match e {
            ServiceError::Rejected {
                manager, detail, ..
            } => ServiceError::Rejected {
                manager,
                path: path.to_path_buf(),
                detail,
            },
            e => e,
        })?;
    }
    let previous = std::fs::read(path).ok();
    let replaced = previous.is_some();
    if replaced && opts.enable && manager == Manager::Launchd {
        // launchd refuses to load a label that is loaded: unload the old job first.
        let file = path.to_string_lossy();
        let _ = runner.run("launchctl", &["unload", &file]);
    }
    std::fs::rename(&staged, path).map_err(|source| ServiceError::Io {
        action: "writing",
        path: path.to_path_buf(),
        source,
    })?;
    if !opts.enable {
        return Ok((replaced, false, false));
    }
    let rollback = |why: ServiceError| -> ServiceError {
        let restored = match &previous {
            Some(old) => write_atomically(path, old),
            None => std::fs::remove_file(path).map_err(|source| ServiceError::Io {
                action: "removing",
                path: path.to_path_buf(),
                source,
            }),
        };
        let file = path.to_string_lossy();
        match manager {
            Manager::Launchd if previous.is_some() => {
                let _ = runner.run("launchctl", &["load", "-w", &file]);
            }
            Manager::Launchd => {}
            m => {
                let _ = systemctl(m, &["daemon-reload"], runner);
            }
        }
        match restored {
            Ok(()) => why,
            Err(e) => ServiceError::Config(format!("{why}; and undoing the install failed: {e}")),
        }
    };
    if manager == Manager::Launchd {
        let file = path.to_string_lossy();
        return match runner.run("launchctl", &["load", "-w", &file]) {
            Ok(_) => Ok((replaced, false, true)),
            Err(e) => Err(rollback(e)),
        };
    }
    if let Err(e) = systemctl(manager, &["daemon-reload"], runner) {
        return Err(rollback(e));
    }
    let props = match show(manager, name, "LoadState,LoadError,ActiveState", runner) {
        Ok(p) => p,
        Err(e) => return Err(rollback(e)),
    };
    let get = |k: &str| {
        props
            .iter()
            .find(|(n, _)| n == k)
            .map(|(_, v)| v.as_str())
            .unwrap_or("")
    };
    if get("LoadState") != "loaded" {
        let detail = format!("LoadState={} {}", get("LoadState"), get("LoadError"));
        return Err(rollback(ServiceError::Rejected {
            manager: "systemd",
            path: path.to_path_buf(),
            detail: detail.trim().to_string(),
        }));
    }
    let was_running = matches!(get("ActiveState"), "active" | "reloading" | "activating");
    if let Err(e) = systemctl(manager, &["enable", "--quiet", name], runner) {
        return Err(rollback(e));
    }
    if opts.start {
        systemctl(manager, &["start", name], runner).map_err(|e| ServiceError::NotStarted {
            unit: name.to_string(),
            detail: match e {
                ServiceError::Manager { message, .. } => message,
                other => other.to_string(),
            },
        })?;
    }
    Ok((replaced, was_running, opts.start))
}

/// What `uninstall` removed.
#[derive(Debug, Clone)]
pub struct Removed {
    /// The unit or plist file.
    pub path: PathBuf,
    /// The unit or launchd label.
    pub name: String,
}

/// Stops, unregisters and removes the unit of `checkout` (with `enable`, through the manager
/// first: a unit the manager cannot stop is not removed, so nothing runs on from a deleted file),
/// and the unit's cache directory. Returns `None` when there was no file.
pub fn uninstall(
    checkout: &Path,
    manager: Manager,
    places: &Places,
    enable: bool,
    runner: &dyn Runner,
) -> Result<Option<Removed>, ServiceError> {
    let base = name_for(checkout);
    let path = places.file(manager, &base);
    if !path.exists() {
        return Ok(None);
    }
    let name = match manager {
        Manager::Launchd => label_for(checkout),
        _ => format!("{base}.service"),
    };
    let file = path.to_string_lossy().to_string();
    if enable {
        match manager {
            Manager::Launchd => {
                runner.run("launchctl", &["unload", "-w", &file])?;
            }
            m => {
                systemctl(m, &["disable", "--now", "--quiet", &name], runner)?;
                // A unit that failed stays listed until this; one that did not fail says so.
                let _ = systemctl(m, &["reset-failed", &name], runner);
            }
        }
    }
    std::fs::remove_file(&path).map_err(|source| ServiceError::Io {
        action: "removing",
        path: path.clone(),
        source,
    })?;
    // The render cache the unit's CacheDirectory= made (none if it never ran). Removed here, not
    // with `systemctl clean`, which needs a D-Bus user bus that a lingering user often lacks.
    if let Some(cache) = places.cache_dir(manager, &base) {
        match std::fs::remove_dir_all(&cache) {
            Ok(()) => {
                // Its parent only if nothing else is cached there.
                if let Some(parent) = cache.parent() {
                    let _ = std::fs::remove_dir(parent);
                }
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(source) => {
                return Err(ServiceError::Io {
                    action: "removing",
                    path: cache,
                    source,
                })
            }
        }
    }
    if enable && manager != Manager::Launchd {
        systemctl(manager, &["daemon-reload"], runner)?;
    }
    Ok(Some(Removed { path, name }))
}

/// The unit shipped in `systemd/`, for placeholder paths.
pub fn example_unit() -> Unit {
    Unit {
        exe: "/usr/local/bin/converge".into(),
        checkout: "/srv/converge/checkout".into(),
        args: vec!["--listen".into(), "127.0.0.1:9464".into()],
        user: Some("converge".into()),
        groups: vec!["docker".into()],
        env: vec![
            ("KUBECONFIG".into(), "/srv/converge/.kube/config".into()),
            (
                "PATH".into(),
                "/usr/local/bin:/usr/bin:/bin".into(),
            ),
        ],
        writable: vec![
            Writable {
                path: "/srv/converge/checkout/.git".into(),
                why: "the daemon's lock file (converge.lock) and converge's refs (pull mode)"
                    .into(),
                optional: false,
            },
            Writable {
                path: "/srv/converge/.minikube".into(),
                why: "minikube's state: `minikube docker-env` and `minikube image build` write its audit log and take profile locks".into(),
                optional: true,
            },
        ],
        sandbox: true,
    }
}

#[cfg(test)]
mod tests;
