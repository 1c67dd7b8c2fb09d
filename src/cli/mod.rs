//! The command line: clap arguments, one file per command, output formats and exit codes.
//!
//! Library errors become readable diagnostics here and nowhere else.
//!
//! Output goes through `outln!`/`errln!`, never `println!`: a reader that went away (`| head -1`)
//! ends a read-only command the way SIGPIPE ends other Unix tools, and never panics a command
//! that changes the cluster or the daemon (they finish their work without output).

/// `println!` to stdout that survives a closed pipe (see [`write_stdout`]).
macro_rules! outln {
    () => { $crate::cli::write_stdout(format_args!("\n")) };
    ($($arg:tt)*) => { $crate::cli::write_stdout(format_args!("{}\n", format_args!($($arg)*))) };
}

/// `print!` to stdout that survives a closed pipe (see [`write_stdout`]).
macro_rules! out {
    ($($arg:tt)*) => { $crate::cli::write_stdout(format_args!($($arg)*)) };
}

/// `eprintln!` that ignores a closed or failing stderr instead of panicking.
macro_rules! errln {
    ($($arg:tt)*) => { $crate::cli::write_stderr(format_args!("{}\n", format_args!($($arg)*))) };
}

mod apply;
mod build;
mod doctor;
mod down;
mod explain;
mod run;
mod status;
mod validate;

use std::io::{IsTerminal, Write};
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, Ordering};

use clap::{Args, Parser, Subcommand, ValueEnum};

/// Keep a Kubernetes cluster converged on what is committed in a git checkout.
#[derive(Debug, Parser)]
#[command(name = "converge", version, about, propagate_version = true)]
pub struct Cli {
    /// Log filter (tracing's env-filter syntax), e.g. `info` or `converge=debug`.
    #[arg(long, global = true, env = "CONVERGE_LOG", default_value = "warn")]
    pub log: String,
    /// Log format: `text` for people, `json` for journald and log shippers.
    #[arg(long, global = true, env = "CONVERGE_LOG_FORMAT", value_enum, default_value_t = LogFormat::Text)]
    pub log_format: LogFormat,
    /// The command to run.
    #[command(subcommand)]
    pub command: Command,
}

/// The commands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Validate the desired state of a commit; exit 0 valid, 1 invalid, 2 on usage or repository errors.
    Validate(validate::ValidateArgs),
    /// Print the JSON Schema of desired-state documents (for editors).
    Schema,
    /// Reconcile a commit once: render, apply in order, wait for health, prune, record status.
    Apply(apply::ApplyArgs),
    /// Show what `apply` would change (server-side dry-run); exit 0 none, 1 some, 2 on error.
    Diff(apply::DiffArgs),
    /// Show the status converge recorded in the cluster.
    Status(status::StatusArgs),
    /// Compute content tags and build the missing images; exit 0 ok, 1 a build failed, 2 on error.
    Build(build::BuildArgs),
    /// Delete everything converge applied for a stack, in reverse order; volumes only with `--volumes`.
    Down(down::DownArgs),
    /// Check the machine, the cluster and the desired state; one line per check with its fix.
    Doctor(doctor::DoctorArgs),
    /// Diagnose unhealthy components from the cluster's own evidence, with the next step.
    Explain(explain::ExplainArgs),
    /// Run the daemon: reconcile every new commit of the tracked branch, undo drift, resync.
    Run(run::RunArgs),
    /// Ask the checkout's running daemon to reconcile now.
    Sync(run::SyncArgs),
    /// Install or remove the daemon's systemd unit or launchd plist for this checkout.
    Service(run::ServiceArgs),
}

/// Log output format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum, Default)]
pub enum LogFormat {
    /// Human-readable lines.
    #[default]
    Text,
    /// One JSON object per line.
    Json,
}

/// Where to read the desired state from.
#[derive(Debug, Clone, Args)]
pub struct SourceArgs {
    /// The git repository (any directory inside it).
    #[arg(long, default_value = ".", env = "CONVERGE_REPO")]
    pub repo: PathBuf,
    /// The revision to read (commit, branch, tag); HEAD when absent.
    #[arg(long, default_value = "HEAD")]
    pub rev: String,
    /// The desired-state directory inside the repository.
    #[arg(long, default_value = crate::desired::DEFAULT_DIR)]
    pub dir: String,
}

/// Which stack in which cluster, for commands that can work from the cluster's own records
/// (`down`, `explain`) without reading the repository.
#[derive(Debug, Clone, Args)]
pub struct StackArgs {
    /// The stack: its name or its directory (needed when the repository has several).
    #[arg(long)]
    pub stack: Option<String>,
    /// The stack's namespace; with `--stack`, the repository is not read at all.
    #[arg(long, short = 'n')]
    pub namespace: Option<String>,
    /// The kube context, instead of the stack's `context` (or the kubeconfig's current one).
    #[arg(long, env = "CONVERGE_CONTEXT")]
    pub context: Option<String>,
    /// The kubeconfig file (`$KUBECONFIG` or `~/.kube/config` when absent).
    #[arg(long)]
    pub kubeconfig: Option<PathBuf>,
}

/// Output format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum, Default)]
pub enum Format {
    /// For people.
    #[default]
    Text,
    /// For machines.
    Json,
}

/// Exit code for success.
pub const EXIT_OK: u8 = 0;
/// Exit code for "invalid" / "would change".
pub const EXIT_FINDINGS: u8 = 1;
/// Exit code for usage, repository or cluster errors.
pub const EXIT_ERROR: u8 = 2;

/// Whether a closed stdout ends the process (read-only commands) rather than only the output.
static DIE_ON_CLOSED_STDOUT: AtomicBool = AtomicBool::new(true);

/// Writes to stdout. On a closed pipe, a read-only command dies of SIGPIPE like `cat` or `git
/// log` would (quietly; the shell sees 141); a command that changes things (`apply`, `down`,
/// `build`, `run`, `service`) keeps working and stays silent, so no reader can cut an apply
/// short. Other write errors are ignored: there is nowhere left to report them.
pub(crate) fn write_stdout(args: std::fmt::Arguments<'_>) {
    let mut stdout = std::io::stdout().lock();
    let result = stdout.write_fmt(args).and_then(|()| stdout.flush());
    if let Err(e) = result {
        if e.kind() == std::io::ErrorKind::BrokenPipe
            && DIE_ON_CLOSED_STDOUT.load(Ordering::Relaxed)
        {
            die_of_sigpipe();
        }
    }
}

/// Writes to stderr, ignoring any failure (a closed pipe included).
pub(crate) fn write_stderr(args: std::fmt::Arguments<'_>) {
    let _ = std::io::stderr().lock().write_fmt(args);
}

/// Ends the process the way the default SIGPIPE action does; Rust ignores SIGPIPE so that a
/// closed socket is an error rather than a death, so the default is restored just for this.
fn die_of_sigpipe() -> ! {
    let _ = signal_hook::low_level::emulate_default_handler(signal_hook::consts::SIGPIPE);
    // Only reached if the signal could not be raised: the exit status a shell would show.
    std::process::exit(128 + signal_hook::consts::SIGPIPE)
}

/// stderr for tracing: a failed write (a closed pipe under `converge run 2>&1 | head`) is
/// dropped, never a panic or an internal-error line that would itself fail.
struct QuietStderr;

impl Write for QuietStderr {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let _ = std::io::stderr().write_all(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        let _ = std::io::stderr().flush();
        Ok(())
    }
}

/// Starts tracing to stderr with the `--log` filter.
pub fn init_tracing(cli: &Cli) {
    // The daemon reports what it applies: `info` unless a filter was chosen.
    let level = match cli.command {
        Command::Run(_) if cli.log == "warn" && std::env::var_os("CONVERGE_LOG").is_none() => {
            "info"
        }
        _ => cli.log.as_str(),
    };
    let filter = tracing_subscriber::EnvFilter::try_new(level)
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn"));
    let fmt = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(|| QuietStderr);
    match cli.log_format {
        LogFormat::Json => fmt.json().init(),
        LogFormat::Text => fmt.with_ansi(std::io::stderr().is_terminal()).init(),
    }
}

/// Runs the command and returns the process exit code.
pub fn run(cli: Cli) -> ExitCode {
    let changes_things = matches!(
        cli.command,
        Command::Apply(_)
            | Command::Build(_)
            | Command::Down(_)
            | Command::Run(_)
            | Command::Service(_)
    );
    DIE_ON_CLOSED_STDOUT.store(!changes_things, Ordering::Relaxed);
    let code = match cli.command {
        Command::Validate(args) => validate::run(&args),
        Command::Apply(args) => apply::apply(&args),
        Command::Diff(args) => apply::diff(&args),
        Command::Status(args) => status::run(&args),
        Command::Build(args) => build::run(&args),
        Command::Down(args) => down::run(&args),
        Command::Doctor(args) => doctor::run(&args),
        Command::Explain(args) => explain::run(&args),
        Command::Run(args) => run::run(&args),
        Command::Sync(args) => run::sync(&args),
        Command::Service(args) => run::service(&args),
        Command::Schema => {
            let schema = crate::desired::schema::document_schema();
            match serde_json::to_string_pretty(&schema) {
                Ok(s) => {
                    outln!("{s}");
                    EXIT_OK
                }
                Err(e) => {
                    errln!("error: {e}");
                    EXIT_ERROR
                }
            }
        }
    };
    ExitCode::from(code)
}

/// Prints an error with its chain of causes, the way people read them.
pub(crate) fn print_error(err: &dyn std::error::Error) {
    errln!("error: {err}");
    let mut source = err.source();
    while let Some(s) = source {
        errln!("  caused by: {s}");
        source = s.source();
    }
}

/// Whether stdout gets colour.
pub(crate) fn color_stdout() -> bool {
    std::io::stdout().is_terminal() && std::env::var_os("NO_COLOR").is_none()
}

/// A multi-threaded runtime for one command.
pub(crate) fn runtime() -> Result<tokio::runtime::Runtime, u8> {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .map_err(|e| {
            errln!("error: starting the async runtime: {e}");
            EXIT_ERROR
        })
}

/// Prints a library error for people or machines and returns its exit code: 1 for an invalid
/// desired state (a finding), 2 for everything else.
pub(crate) fn report_error(err: &crate::error::Error, format: Format) -> u8 {
    let code = match err {
        crate::error::Error::Invalid { .. } => EXIT_FINDINGS,
        _ => EXIT_ERROR,
    };
    match format {
        Format::Json => {
            let mut v = serde_json::json!({"error": err.to_string(), "reason": err.reason()});
            if let crate::error::Error::Invalid { report, .. } = err {
                v["diagnostics"] = serde_json::to_value(&report.diagnostics).unwrap_or_default();
            }
            outln!("{}", serde_json::to_string_pretty(&v).unwrap_or_default());
        }
        Format::Text => {
            if let crate::error::Error::Invalid { report, .. } = err {
                out!("{}", report.render(color_stdout()));
            }
            print_error(err);
        }
    }
    code
}

/// Colours a unified diff on a terminal.
pub(crate) fn colorize_diff(diff: &str) -> String {
    if !color_stdout() {
        return diff.to_string();
    }
    diff.lines()
        .map(|l| {
            if l.starts_with("+++") || l.starts_with("---") {
                format!("\x1b[1m{l}\x1b[0m\n")
            } else if l.starts_with('+') {
                format!("\x1b[32m{l}\x1b[0m\n")
            } else if l.starts_with('-') {
                format!("\x1b[31m{l}\x1b[0m\n")
            } else if l.starts_with("@@") {
                format!("\x1b[36m{l}\x1b[0m\n")
            } else {
                format!("{l}\n")
            }
        })
        .collect()
}
