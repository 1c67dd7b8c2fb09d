//! `converge run` (the daemon, in the foreground), `converge sync` (ask it to reconcile now) and
//! `converge service install|uninstall` (its systemd unit or launchd plist for this checkout).
//!
//! Flags are resolved here once into an immutable `daemon::Config`; the daemon never sees clap.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use clap::{Args, Subcommand};

use super::build::BuilderArg;
use super::{EXIT_ERROR, EXIT_OK};
use crate::daemon::{self, service, Config, DaemonError};
use crate::reconcile::Options;

/// Exit code after a second SIGTERM/SIGINT aborted the shutdown (128 + SIGINT).
pub const EXIT_ABORTED: u8 = 130;

/// Arguments of `converge run`.
#[derive(Debug, Args)]
pub struct RunArgs {
    /// The git checkout (any directory inside it).
    #[arg(long, default_value = ".", env = "CONVERGE_REPO")]
    repo: PathBuf,
    /// The desired-state directory inside the repository.
    #[arg(long, default_value = crate::desired::DEFAULT_DIR)]
    dir: String,
    /// Only this stack: its name or its directory.
    #[arg(long)]
    stack: Option<String>,
    /// The kube context, instead of each stack's `context`.
    #[arg(long, env = "CONVERGE_CONTEXT")]
    context: Option<String>,
    /// The kubeconfig file ($KUBECONFIG or ~/.kube/config when absent).
    #[arg(long)]
    kubeconfig: Option<PathBuf>,
    /// The branch to deploy, instead of the stacks' `branch` (default main).
    #[arg(long)]
    branch: Option<String>,
    /// How often to check for unseen drift; free (no API request) when the watch proves nothing changed.
    #[arg(long, default_value = "5m", value_parser = humantime::parse_duration)]
    resync: Duration,
    /// How often to compare every object with the cluster regardless.
    #[arg(long, default_value = "1h", value_parser = humantime::parse_duration)]
    full_resync: Duration,
    /// Pull mode: fetch this remote and deploy its branch (through a converge-owned ref).
    #[arg(long)]
    remote: Option<String>,
    /// Pull mode: how often to fetch.
    #[arg(long, default_value = "30s", value_parser = humantime::parse_duration)]
    poll: Duration,
    /// Pull mode: follow a remote history that was rewritten (not a fast-forward).
    #[arg(long)]
    allow_non_fast_forward: bool,
    /// Loopback address for /metrics, /healthz, /readyz and /sync (port 0: any free port).
    #[arg(long, default_value = "127.0.0.1:0", env = "CONVERGE_LISTEN")]
    listen: SocketAddr,
    /// Do not hold a coordination Lease in the stack's namespace.
    #[arg(long)]
    no_lease: bool,
    /// Where to build images, instead of each stack's `builder`.
    #[arg(long, value_enum)]
    builder: Option<BuilderArg>,
    /// How long one reconcile waits for the stack to become healthy.
    #[arg(long, default_value = "5m", value_parser = humantime::parse_duration)]
    timeout: Duration,
    /// Take ownership of fields another field manager owns.
    #[arg(long)]
    force_conflicts: bool,
    /// Delete and re-create objects whose immutable fields changed, when that loses no data.
    #[arg(long)]
    recreate: bool,
    /// Quiet time after a ref change before reading the new tip.
    #[arg(long, default_value = "100ms", value_parser = humantime::parse_duration)]
    debounce: Duration,
    /// The longest retry delay after a failed reconcile.
    #[arg(long, default_value = "5m", value_parser = humantime::parse_duration)]
    retry_max: Duration,
}

impl RunArgs {
    /// The daemon's configuration.
    pub fn config(&self) -> Config {
        Config {
            repo: self.repo.clone(),
            dir: self.dir.clone(),
            stack: self.stack.clone(),
            kubeconfig: self.kubeconfig.clone(),
            context: self.context.clone(),
            branch: self.branch.clone(),
            remote: self.remote.clone(),
            poll: self.poll,
            allow_non_fast_forward: self.allow_non_fast_forward,
            resync: self.resync,
            full_resync: self.full_resync,
            debounce: self.debounce,
            retry_max: self.retry_max,
            listen: self.listen,
            lease: !self.no_lease,
            builder: self.builder.map(Into::into),
            options: Options {
                kubeconfig: self.kubeconfig.clone(),
                context: self.context.clone(),
                stack: self.stack.clone(),
                dir: self.dir.clone(),
                force_conflicts: self.force_conflicts,
                recreate: self.recreate,
                timeout: self.timeout,
                ..Options::default()
            },
            ..Config::default()
        }
    }
}

fn runtime() -> Result<tokio::runtime::Runtime, u8> {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .map_err(|e| {
            errln!("error: starting the async runtime: {e}");
            EXIT_ERROR
        })
}

pub(super) fn run(args: &RunArgs) -> u8 {
    let rt = match runtime() {
        Ok(rt) => rt,
        Err(code) => return code,
    };
    let result = rt.block_on(daemon::run(args.config()));
    // Watch tasks and the HTTP server hold no state worth waiting for.
    rt.shutdown_timeout(Duration::from_millis(500));
    match result {
        Ok(()) => EXIT_OK,
        Err(DaemonError::Aborted) => EXIT_ABORTED,
        Err(e) => {
            super::print_error(&e);
            EXIT_ERROR
        }
    }
}

/// Arguments of `converge sync`.
#[derive(Debug, Args)]
pub struct SyncArgs {
    /// The git checkout whose daemon to ask.
    #[arg(long, default_value = ".", env = "CONVERGE_REPO")]
    repo: PathBuf,
}

pub(super) fn sync(args: &SyncArgs) -> u8 {
    let rt = match runtime() {
        Ok(rt) => rt,
        Err(code) => return code,
    };
    match rt.block_on(daemon::request_sync(&args.repo)) {
        Ok(msg) => {
            errln!("{msg}");
            EXIT_OK
        }
        Err(e) => {
            super::print_error(&e);
            EXIT_ERROR
        }
    }
}

/// Arguments of `converge service`.
#[derive(Debug, Args)]
pub struct ServiceArgs {
    #[command(subcommand)]
    action: ServiceAction,
}

#[derive(Debug, Subcommand)]
enum ServiceAction {
    /// Write the unit (systemd) or plist (launchd) running `converge run` for this checkout, and enable it.
    Install(InstallArgs),
    /// Stop and remove this checkout's unit or plist.
    Uninstall(UninstallArgs),
}

#[derive(Debug, Args)]
struct InstallArgs {
    /// The git checkout.
    #[arg(long, default_value = ".", env = "CONVERGE_REPO")]
    repo: PathBuf,
    /// A user unit ($XDG_CONFIG_HOME/systemd/user) instead of a system unit.
    #[arg(long)]
    user: bool,
    /// Only write the file; do not run systemctl or launchctl.
    #[arg(long)]
    no_enable: bool,
    /// The Docker socket builds use.
    #[arg(long, default_value = "/run/docker.sock")]
    docker_socket: PathBuf,
    /// Extra `converge run` arguments, after `--`.
    #[arg(last = true)]
    args: Vec<String>,
}

#[derive(Debug, Args)]
struct UninstallArgs {
    /// The git checkout.
    #[arg(long, default_value = ".", env = "CONVERGE_REPO")]
    repo: PathBuf,
    /// The user unit.
    #[arg(long)]
    user: bool,
    /// Only remove the file; do not run systemctl or launchctl.
    #[arg(long)]
    no_enable: bool,
}

pub(super) fn service(args: &ServiceArgs) -> u8 {
    let result = (|| -> Result<String, Box<dyn std::error::Error>> {
        let places = service::Places::from_env()?;
        match &args.action {
            ServiceAction::Install(a) => {
                let dirs = daemon::refs::GitDirs::discover(&a.repo)?;
                let exe = std::env::current_exe()?;
                let unit = service::Unit {
                    exe,
                    checkout: dirs.root.clone(),
                    git_dir: dirs.git_dir.clone(),
                    args: a.args.clone(),
                    user: std::env::var("USER").ok(),
                    docker_socket: a.docker_socket.clone(),
                };
                let manager = service::Manager::for_platform(a.user);
                let path = service::install(&unit, manager, &places, !a.no_enable)?;
                Ok(format!(
                    "wrote {}{}",
                    path.display(),
                    if a.no_enable { "" } else { " and enabled it" }
                ))
            }
            ServiceAction::Uninstall(a) => {
                let dirs = daemon::refs::GitDirs::discover(&a.repo)?;
                let manager = service::Manager::for_platform(a.user);
                match service::uninstall(&dirs.root, manager, &places, !a.no_enable)? {
                    Some(p) => Ok(format!("removed {}", p.display())),
                    None => Ok("no unit installed for this checkout".into()),
                }
            }
        }
    })();
    match result {
        Ok(msg) => {
            errln!("{msg}");
            EXIT_OK
        }
        Err(e) => {
            super::print_error(e.as_ref());
            EXIT_ERROR
        }
    }
}
