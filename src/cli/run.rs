//! `converge run` (the daemon, in the foreground), `converge sync` (ask it to reconcile now) and
//! `converge service install|uninstall` (its systemd unit or launchd plist for this checkout).
//!
//! Flags are resolved here once into an immutable `daemon::Config`; the daemon never sees clap.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use clap::{Args, Subcommand};

use super::build::BuildFlags;
use super::flags::{self, Caller, ReconcileFlags};
use super::{EXIT_ERROR, EXIT_OK};
use crate::daemon::{self, service, Config, DaemonError};

/// How many MCP calls the daemon's `/mcp` runs at once (more wait their turn).
const MCP_CALLS: usize = 2;

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
    #[command(flatten)]
    target: super::StackArgs,
    /// The branch to deploy, instead of the stacks' `branch` (default main).
    #[arg(long)]
    branch: Option<String>,
    /// How often to check for unseen drift; free (no API request) when the watch proves nothing changed.
    #[arg(long, default_value = "5m", value_parser = humantime::parse_duration)]
    resync: Duration,
    /// How often to compare every object with the cluster regardless.
    #[arg(long, default_value = "1h", value_parser = humantime::parse_duration)]
    full_resync: Duration,
    /// Pull mode: fetch this remote and deploy its branch (through a converge-owned ref): a
    /// remote of the checkout (origin) or a URL (ssh://git@host/org/repo.git); with a URL, an
    /// empty or missing --repo is made a repository first.
    #[arg(long, env = "CONVERGE_REMOTE")]
    remote: Option<String>,
    /// Pull mode: the SSH private key file git uses (no other key is offered); it must not be
    /// readable by others, as ssh requires.
    #[arg(long, value_name = "FILE", env = "CONVERGE_SSH_KEY")]
    ssh_key: Option<PathBuf>,
    /// Pull mode: the known_hosts file holding the git server's host key; ssh checks it strictly
    /// and trusts no other.
    #[arg(long, value_name = "FILE", env = "CONVERGE_KNOWN_HOSTS")]
    known_hosts: Option<PathBuf>,
    /// Pull mode: the file holding the webhook secret; POST /sync then takes webhooks signed
    /// with it (X-Hub-Signature-256) from other machines, and each asks for a fetch.
    #[arg(long, value_name = "FILE", env = "CONVERGE_WEBHOOK_SECRET_FILE")]
    webhook_secret_file: Option<PathBuf>,
    /// Pull mode: how often to fetch.
    #[arg(long, default_value = "30s", value_parser = humantime::parse_duration)]
    poll: Duration,
    /// Pull mode: follow a remote history that was rewritten (not a fast-forward).
    #[arg(long)]
    allow_non_fast_forward: bool,
    /// Address for the live page (/), /metrics, /healthz, /readyz, /sync and, with --mcp, /mcp (port 0: any free port). Other machines get /healthz, /readyz, /metrics and signed webhooks only.
    #[arg(long, default_value = "127.0.0.1:0", env = "CONVERGE_LISTEN")]
    listen: SocketAddr,
    /// Do not hold a coordination Lease in the stack's namespace.
    #[arg(long)]
    no_lease: bool,
    /// Standby mode (replicas in a cluster): when another replica of this installation holds a
    /// stack's Lease, wait for it (ready, as a standby) instead of exiting; when another
    /// installation holds it, write nothing and report not ready. Needs --instance.
    #[arg(long, env = "CONVERGE_STANDBY", conflicts_with = "no_lease")]
    standby: bool,
    /// The installation this replica belongs to, `<namespace>/<release>` (recorded on the Leases).
    #[arg(long, env = "CONVERGE_INSTANCE", requires = "standby")]
    instance: Option<String>,
    /// How long a Lease holds without renewal [default: 30s; with --standby 15s].
    #[arg(long, value_parser = humantime::parse_duration)]
    lease_duration: Option<Duration>,
    /// How often the leader renews its Leases [default: 10s; with --standby 2s].
    #[arg(long, value_parser = humantime::parse_duration)]
    lease_renew: Option<Duration>,
    /// How long the leader keeps failing to renew before it stops writing and exits [default:
    /// never; with --standby 10s].
    #[arg(long, value_parser = humantime::parse_duration)]
    lease_renew_deadline: Option<Duration>,
    /// How soon a failed renewal, or a standby's next try for the Lease, comes [default: 1s;
    /// with --standby 2s].
    #[arg(long, value_parser = humantime::parse_duration)]
    lease_retry: Option<Duration>,
    /// Also answer the Model Context Protocol on `POST /mcp` of the listen address (what
    /// `converge mcp` serves on stdio), for AI assistants on this machine.
    #[arg(long)]
    mcp: bool,
    #[command(flatten)]
    reconcile: ReconcileFlags,
    #[command(flatten)]
    build: BuildFlags,
    /// Quiet time after a ref change before reading the new tip.
    #[arg(long, default_value = "100ms", value_parser = humantime::parse_duration)]
    debounce: Duration,
    /// The longest retry delay after a failed reconcile.
    #[arg(long, default_value = "5m", value_parser = humantime::parse_duration)]
    retry_max: Duration,
    /// How long shutdown waits for the reconcile in flight before abandoning it.
    #[arg(long, default_value = "10s", value_parser = humantime::parse_duration)]
    shutdown_grace: Duration,
}

impl RunArgs {
    /// The daemon's configuration, every field set from the flags.
    pub fn config(&self) -> Config {
        Config {
            repo: self.repo.clone(),
            branch: self.branch.clone(),
            remote: self.remote.clone(),
            poll: self.poll,
            allow_non_fast_forward: self.allow_non_fast_forward,
            ssh_key: self.ssh_key.clone(),
            known_hosts: self.known_hosts.clone(),
            webhook_secret: self.webhook_secret_file.clone(),
            resync: self.resync,
            full_resync: self.full_resync,
            debounce: self.debounce,
            retry_max: self.retry_max,
            shutdown_grace: self.shutdown_grace,
            listen: self.listen,
            lease: !self.no_lease,
            standby: self.standby.then(|| self.instance()),
            lease_timing: self.lease_timing(),
            options: flags::reconcile_options(
                &self.dir,
                &self.target,
                &self.reconcile,
                &self.build,
                Caller::Daemon,
            ),
            mcp: self.mcp.then(|| self.mcp_endpoint()),
        }
    }

    /// The installation: `--instance`, else `<POD_NAMESPACE>/converge` in a Pod, else the host.
    fn instance(&self) -> String {
        self.instance
            .clone()
            .filter(|i| !i.trim().is_empty())
            .or_else(|| {
                std::env::var("POD_NAMESPACE")
                    .ok()
                    .filter(|n| !n.is_empty())
                    .map(|n| format!("{n}/converge"))
            })
            .unwrap_or_else(|| format!("{}/converge", daemon::lock::hostname()))
    }

    /// The Lease timing: the laptop's or, with --standby, client-go's defaults, each overridden
    /// by its flag.
    fn lease_timing(&self) -> daemon::lock::LeaseTiming {
        let base = if self.standby {
            daemon::lock::LeaseTiming::in_cluster()
        } else {
            daemon::lock::LeaseTiming::default()
        };
        daemon::lock::LeaseTiming {
            duration: self.lease_duration.unwrap_or(base.duration),
            renew: self.lease_renew.unwrap_or(base.renew),
            renew_deadline: self.lease_renew_deadline.or(base.renew_deadline),
            retry: self.lease_retry.unwrap_or(base.retry),
        }
    }

    /// The MCP server `converge mcp` would run for this checkout and these selectors, answered
    /// on the daemon's `POST /mcp`.
    fn mcp_endpoint(&self) -> daemon::http::McpEndpoint {
        let server = std::sync::Arc::new(crate::mcp::Server::new(super::mcp::config(
            &self.repo,
            &self.dir,
            &self.target,
            self.branch.as_deref(),
            &self.reconcile,
            &self.build,
        )));
        // Tool calls read and validate the desired state, hash build contexts and read git:
        // blocking work, done off the daemon's two workers, at most MCP_CALLS at a time.
        let slots = std::sync::Arc::new(tokio::sync::Semaphore::new(MCP_CALLS));
        daemon::http::McpEndpoint::new(move |message| {
            let (server, slots) = (server.clone(), slots.clone());
            Box::pin(async move {
                let _slot = slots.acquire_owned().await.ok();
                let answered = tokio::task::spawn_blocking(move || {
                    let rt = tokio::runtime::Builder::new_current_thread()
                        .enable_all()
                        .build()
                        .map_err(|e| e.to_string())?;
                    Ok::<_, String>(rt.block_on(server.handle(&message)))
                })
                .await
                .map_err(|e| e.to_string())
                .and_then(|r| r);
                answered.unwrap_or_else(|why| {
                    Some(serde_json::json!({
                        "jsonrpc": "2.0",
                        "id": null,
                        "error": {"code": -32603, "message": format!("the MCP call stopped: {why}")},
                    }))
                })
            })
        })
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
    #[arg(long, conflicts_with = "now")]
    no_enable: bool,
    /// Also start it now (systemd; launchd starts what it loads).
    #[arg(long)]
    now: bool,
    /// The account a system unit runs as (default: the owner of the checkout's git directory,
    /// which the daemon must write).
    #[arg(long, value_name = "USER", conflicts_with = "user")]
    run_as: Option<String>,
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

type BoxError = Box<dyn std::error::Error>;

/// What `service install` prints: what it wrote, and the commands to start and follow it, as
/// they run (with `sudo` when it ran under sudo, `--user` for a user unit).
fn install_report(
    unit: &service::Unit,
    captured: &service::capture::Captured,
    manager: service::Manager,
    done: &service::Installed,
) -> String {
    use service::Manager;
    let mut out = String::new();
    let kind = match manager {
        Manager::SystemdSystem => format!(
            "a systemd system unit, running as {}",
            unit.user.as_deref().unwrap_or("root")
        ),
        Manager::SystemdUser => "a systemd user unit".into(),
        Manager::Launchd => "a launchd agent".into(),
    };
    out.push_str(&format!("wrote {} ({kind})\n", done.path.display()));
    let mut exec = vec![
        unit.exe.display().to_string(),
        "run".into(),
        "--repo".into(),
        unit.checkout.display().to_string(),
    ];
    exec.extend(unit.args.iter().cloned());
    out.push_str(&format!("  runs:      {}\n", exec.join(" ")));
    if !captured.env.is_empty() {
        let names: Vec<&str> = captured.env.iter().map(|(k, _)| k.as_str()).collect();
        out.push_str(&format!("  from your environment: {}\n", names.join(", ")));
    }
    for (name, why) in &captured.skipped {
        out.push_str(&format!("  not taken: {name} ({why})\n"));
    }
    if manager != Manager::Launchd {
        if manager == Manager::SystemdUser && !unit.sandbox {
            out.push_str("  sandbox:   none for the file system (this kernel forbids unprivileged user namespaces)\n");
        } else {
            for (i, w) in unit.writable.iter().enumerate() {
                let label = if i == 0 {
                    "  writable: "
                } else {
                    "            "
                };
                out.push_str(&format!("{label} {} ({})\n", w.path.display(), w.why));
            }
        }
    }
    let sudo = if manager == Manager::SystemdSystem && std::env::var_os("SUDO_USER").is_some() {
        "sudo "
    } else {
        ""
    };
    let scope = if manager == Manager::SystemdUser {
        "--user "
    } else {
        ""
    };
    let name = &done.name;
    match manager {
        Manager::Launchd => {
            if done.enabled {
                out.push_str("loaded it: it runs now and at every login\n");
            } else {
                out.push_str(&format!(
                    "load it:   launchctl load -w {}\n",
                    done.path.display()
                ));
            }
            if let Some(log) = &done.log {
                out.push_str(&format!("follow it: tail -f {}\n", log.display()));
            }
        }
        _ => {
            if !done.enabled {
                out.push_str(&format!("start it:  {sudo}systemctl {scope}daemon-reload && {sudo}systemctl {scope}enable --now {name}\n"));
            } else if done.was_running {
                out.push_str(&format!(
                    "enabled it; it is running the previous version of the unit
apply it:  {sudo}systemctl {scope}restart {name}\n"
                ));
            } else if done.started {
                out.push_str(&format!(
                    "enabled and started it ({})\n",
                    if manager == Manager::SystemdUser {
                        "it starts with your user manager"
                    } else {
                        "it starts at boot"
                    }
                ));
            } else {
                out.push_str(&format!(
                    "enabled it ({})\n",
                    if manager == Manager::SystemdUser {
                        "it starts with your user manager"
                    } else {
                        "it starts at boot"
                    }
                ));
                out.push_str(&format!("start it:  {sudo}systemctl {scope}start {name}\n"));
            }
            out.push_str(&format!(
                "follow it: {sudo}journalctl {scope}-u {name} -f\n"
            ));
            if manager == Manager::SystemdUser {
                let me = std::env::var("USER").unwrap_or_default();
                if !me.is_empty() && !Path::new("/var/lib/systemd/linger").join(&me).exists() {
                    out.push_str(&format!("keep it running when you log out, and start it at boot: loginctl enable-linger {me}\n"));
                }
            }
        }
    }
    out
}

pub(super) fn service(args: &ServiceArgs) -> u8 {
    let result = (|| -> Result<String, BoxError> {
        let places = service::Places::from_env()?;
        let runner = service::Commands::default();
        match &args.action {
            ServiceAction::Install(a) => {
                let manager = service::Manager::for_platform(a.user);
                let dirs = service::session::checkout(&a.repo)?;
                let (unit, captured) = service::session::unit_for(
                    &dirs,
                    a.run_as.as_deref(),
                    &a.args,
                    manager,
                    &places,
                )?;
                let opts = service::InstallOptions {
                    enable: !a.no_enable,
                    start: a.now,
                };
                let done = service::install(&unit, manager, &places, opts, &runner).map_err(|e| -> BoxError {
                    match &e {
                        service::ServiceError::Io { source, .. }
                            if manager == service::Manager::SystemdSystem
                                && source.kind() == std::io::ErrorKind::PermissionDenied =>
                        {
                            format!("{e}: system units need root (`sudo converge service install`), or install a user unit with `--user`").into()
                        }
                        service::ServiceError::NotStarted { unit, .. } => {
                            let scope = if manager == service::Manager::SystemdUser { "--user " } else { "" };
                            let user = if a.user { "--user " } else { "" };
                            let sudo = if manager == service::Manager::SystemdSystem && std::env::var_os("SUDO_USER").is_some() { "sudo " } else { "" };
                            format!(
                                "{e}\nwhy:       {sudo}journalctl {scope}-u {unit} -n 50\nremove it: {sudo}converge service uninstall {user}--repo {}",
                                shell_word(&unit_checkout_display(&a.repo))
                            )
                            .into()
                        }
                        _ => Box::new(e),
                    }
                })?;
                Ok(install_report(&unit, &captured, manager, &done))
            }
            ServiceAction::Uninstall(a) => {
                let dirs = service::session::checkout(&a.repo)?;
                let manager = service::Manager::for_platform(a.user);
                match service::uninstall(&dirs.root, manager, &places, !a.no_enable, &runner)? {
                    Some(r) if a.no_enable => Ok(format!("removed {}\n", r.path.display())),
                    Some(r) => Ok(format!(
                        "stopped and removed {} ({})\n",
                        r.name,
                        r.path.display()
                    )),
                    None => Ok("no unit installed for this checkout\n".into()),
                }
            }
        }
    })();
    match result {
        Ok(msg) => {
            out!("{msg}");
            EXIT_OK
        }
        Err(e) => {
            super::print_error(e.as_ref());
            EXIT_ERROR
        }
    }
}

/// `s` as one word for a POSIX shell, so printed advice runs as printed.
fn shell_word(s: &str) -> String {
    if !s.is_empty()
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || "/._-:=@+,".contains(c))
    {
        s.to_string()
    } else {
        format!("'{}'", s.replace('\'', r"'\''"))
    }
}

fn unit_checkout_display(repo: &Path) -> String {
    service::session::checkout(repo)
        .map(|d| service::normalize(&d.root).display().to_string())
        .unwrap_or_else(|_| repo.display().to_string())
}

#[cfg(test)]
mod tests {
    use super::shell_word;

    #[test]
    fn printed_paths_are_quoted_for_the_shell() {
        assert_eq!(shell_word("/home/me/todo"), "/home/me/todo");
        assert_eq!(shell_word("/home/me/todo app"), "'/home/me/todo app'");
        assert_eq!(shell_word("/home/me/it's"), r"'/home/me/it'\''s'");
    }
}
