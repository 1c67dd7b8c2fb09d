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
mod flags;
mod mcp;
mod pause;
pub mod progress;
mod run;
mod status;
mod validate;

use std::io::{IsTerminal, Write};
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, Ordering};

use clap::{Args, Parser, Subcommand, ValueEnum};

/// The heading global flags are listed under, once, after each command's own flags.
const GLOBAL: &str = "Global options";

/// Keep a Kubernetes cluster converged on what is committed in a git checkout.
#[derive(Debug, Parser)]
#[command(name = "converge", version, about, propagate_version = true)]
pub struct Cli {
    /// Log filter (tracing's env-filter syntax), e.g. `info` or `converge=debug` [default: `info`
    /// for `converge run`, `warn` for every other command].
    #[arg(long, global = true, env = "CONVERGE_LOG", help_heading = GLOBAL)]
    pub log: Option<String>,
    /// Log format: `text` for people, `json` for journald and log shippers.
    #[arg(long, global = true, env = "CONVERGE_LOG_FORMAT", value_enum, default_value_t = LogFormat::Text, help_heading = GLOBAL)]
    pub log_format: LogFormat,
    /// More detail: the full chain of causes under an error (`-v`), debug logs too (`-vv`).
    #[arg(short, long, global = true, action = clap::ArgAction::Count, help_heading = GLOBAL)]
    pub verbose: u8,
    /// The command to run.
    #[command(subcommand)]
    pub command: Command,
}

impl Cli {
    /// The log filter in force: `--log`, else `info` for the daemon and converge's own warnings
    /// for the others (libraries' log lines only with `-v`).
    pub fn log_filter(&self) -> String {
        if let Some(l) = &self.log {
            return l.clone();
        }
        // Without -v a command's output is converge's own words: libraries (the kube client,
        // TLS) report failures converge then names itself, with the address and the fix.
        match (&self.command, self.verbose) {
            (_, v) if v >= 2 => "debug,hyper=info,tower=info,rustls=info".into(),
            (Command::Run(_), _) => "info,kube_client=warn,rustls_platform_verifier=warn".into(),
            (_, 1) => "warn".into(),
            _ => "converge=warn".into(),
        }
    }
}

/// The commands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Validate the desired state of a commit; exit 0 valid, 1 invalid, 2 on usage or repository errors.
    Validate(validate::ValidateArgs),
    /// Print the JSON Schema of desired-state documents (for editors).
    Schema(SchemaArgs),
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
    // Boxed: its flags make it the largest variant by far (clippy::large_enum_variant).
    Run(Box<run::RunArgs>),
    /// Pause drift correction of the stack or one component for a while (`--for 15m`); it ends
    /// by itself. New commits are still applied.
    Pause(pause::PauseArgs),
    /// End a pause now: what was changed by hand meanwhile is reported and restored.
    Resume(pause::ResumeArgs),
    /// Ask the checkout's running daemon to reconcile now.
    Sync(run::SyncArgs),
    /// Install or remove the daemon's systemd unit or launchd plist for this checkout.
    Service(run::ServiceArgs),
    /// Serve converge's verbs to an AI assistant as Model Context Protocol tools on stdio;
    /// changes only as validated commits on a new branch.
    Mcp(mcp::McpArgs),
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
    #[arg(long, default_value = ".", env = "CONVERGE_REPO", help_heading = SOURCE)]
    pub repo: PathBuf,
    /// The revision to read (commit, branch, tag); HEAD when absent.
    #[arg(long, default_value = "HEAD", help_heading = SOURCE)]
    pub rev: String,
    /// The desired-state directory inside the repository.
    #[arg(long, default_value = crate::desired::DEFAULT_DIR, help_heading = SOURCE)]
    pub dir: String,
}

/// The help heading of the repository flags.
const SOURCE: &str = "Source";
/// The help heading of the stack and cluster flags.
const TARGET: &str = "Stack and cluster";

/// Which stack in which cluster: the same selectors on every command that works on stacks.
#[derive(Debug, Clone, Default, Args)]
pub struct StackArgs {
    /// The stack: its directory (`dev`, `desired/dev`) or its name; every stack when absent.
    #[arg(long, help_heading = TARGET)]
    pub stack: Option<String>,
    /// Only the stack in this namespace (`down`, `explain` and `status` with `--stack` also find
    /// a stack the repository no longer has).
    #[arg(long, short = 'n', help_heading = TARGET)]
    pub namespace: Option<String>,
    /// The kube context, instead of the stack's `context` (or the kubeconfig's current one).
    #[arg(long, env = "CONVERGE_CONTEXT", help_heading = TARGET)]
    pub context: Option<String>,
    /// The kubeconfig file (`$KUBECONFIG` or `~/.kube/config` when absent).
    #[arg(long, help_heading = TARGET)]
    pub kubeconfig: Option<PathBuf>,
}

/// The stacks of a commit the flags select.
pub fn selection(source: &SourceArgs, target: &StackArgs) -> crate::reconcile::Selection {
    crate::reconcile::Selection {
        dir: source.dir.clone(),
        stack: target.stack.clone(),
        namespace: target.namespace.clone(),
    }
}

/// How a stack is named in every output: two stacks may share a name (dev and staging of one
/// app), so its directory and namespace go with it.
pub fn stack_label(name: &str, dir: &str, namespace: &str) -> String {
    if dir.is_empty() {
        format!("{name} (namespace {namespace})")
    } else {
        format!("{name} ({dir} → namespace {namespace})")
    }
}

/// Output format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum, Default)]
pub enum Format {
    /// For people.
    #[default]
    Text,
    /// For machines.
    Json,
    /// For machines and people who read YAML.
    Yaml,
}

impl Format {
    /// Whether this format is for machines (JSON or YAML).
    pub fn structured(self) -> bool {
        self != Format::Text
    }
}

/// Prints `value` as JSON or YAML (nothing for text).
pub(crate) fn emit<T: serde::Serialize + ?Sized>(value: &T, format: Format) {
    match format {
        Format::Json => outln!(
            "{}",
            serde_json::to_string_pretty(value).unwrap_or_default()
        ),
        Format::Yaml => out!("{}", serde_yaml_ng::to_string(value).unwrap_or_default()),
        Format::Text => {}
    }
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
pub(crate) struct QuietStderr;

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

static VERBOSE: std::sync::atomic::AtomicU8 = std::sync::atomic::AtomicU8::new(0);

fn verbose() -> u8 {
    VERBOSE.load(std::sync::atomic::Ordering::Relaxed)
}

/// Starts tracing to stderr with the log filter (see [`Cli::log_filter`]); on a terminal,
/// progress events become live lines instead of log lines.
pub fn init_tracing(cli: &Cli) {
    VERBOSE.store(cli.verbose, std::sync::atomic::Ordering::Relaxed);
    let filter = cli.log_filter();
    let live = cli.log_format == LogFormat::Text
        && std::io::stderr().is_terminal()
        && !matches!(cli.command, Command::Run(_));
    progress::init(&filter, cli.log_format, live, cli.log.is_some());
}

/// Runs the command and returns the process exit code.
pub fn run(cli: Cli) -> ExitCode {
    VERBOSE.store(cli.verbose, std::sync::atomic::Ordering::Relaxed);
    let changes_things = matches!(
        cli.command,
        Command::Apply(_)
            | Command::Build(_)
            | Command::Down(_)
            | Command::Run(_)
            | Command::Service(_)
            | Command::Pause(_)
            | Command::Resume(_)
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
        Command::Pause(args) => pause::pause(&args),
        Command::Resume(args) => pause::resume(&args),
        Command::Service(args) => run::service(&args),
        Command::Mcp(args) => mcp::run(&args),
        Command::Schema(args) => {
            let schema = crate::desired::schema::document_schema();
            match args.output {
                Format::Yaml => emit(&schema, Format::Yaml),
                _ => emit(&schema, Format::Json),
            }
            EXIT_OK
        }
    };
    progress::finish();
    ExitCode::from(code)
}

/// Arguments of `converge schema`.
#[derive(Debug, Args)]
pub struct SchemaArgs {
    /// Output format (`text` is JSON).
    #[arg(short, long, value_enum, default_value_t = Format::Json)]
    output: Format,
}

/// Prints an error the way people read it: what failed on one line, the likely fix on the next,
/// and the chain of causes only with `-v`.
pub(crate) fn print_error(err: &(dyn std::error::Error + 'static)) {
    print_problem(
        &err.to_string(),
        crate::hints::for_error(err).as_deref(),
        err.source(),
    );
}

/// Prints `error: what`, `hint: fix` (taken out of `what` when the message already ends with it)
/// and, with `-v`, the causes.
pub(crate) fn print_problem(
    what: &str,
    fix: Option<&str>,
    source: Option<&(dyn std::error::Error + 'static)>,
) {
    let color = std::io::stderr().is_terminal() && std::env::var_os("NO_COLOR").is_none();
    let paint = |code: &str, s: &str| {
        if color {
            format!("\x1b[{code}m{s}\x1b[0m")
        } else {
            s.to_string()
        }
    };
    let what = match fix.and_then(|f| what.find(f)) {
        Some(i) if i > 0 => what[..i].trim_end_matches([':', ';', ',', ' ']),
        _ => what,
    };
    errln!("{} {what}", paint("31;1", "error:"));
    if let Some(fix) = fix {
        errln!("{} {fix}", paint("1", "hint:"));
    }
    let causes = causes_to_show(what, source);
    if verbose() > 0 {
        for c in &causes {
            errln!("  caused by: {c}");
        }
    } else if !causes.is_empty() {
        errln!("  (run with -v for the underlying errors)");
    }
}

/// The causes under an error worth a `caused by` line: those the message does not already quote
/// (its innermost cause, an API server's answer), each once.
fn causes_to_show(what: &str, source: Option<&(dyn std::error::Error + 'static)>) -> Vec<String> {
    let mut causes: Vec<String> = Vec::new();
    let mut source = source;
    while let Some(s) = source {
        let text = s.to_string();
        if !what.contains(&text) && !causes.contains(&text) {
            causes.push(text);
        }
        source = s.source();
    }
    causes
}

/// Whether stdout gets colour.
pub(crate) fn color_stdout() -> bool {
    std::io::stdout().is_terminal() && std::env::var_os("NO_COLOR").is_none()
}

/// Paints `s` with an ANSI SGR code when `color` holds.
pub(crate) fn paint(color: bool, code: &str, s: &str) -> String {
    if color {
        format!("\x1b[{code}m{s}\x1b[0m")
    } else {
        s.to_string()
    }
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
    report_error_as(err, format);
    code
}

/// Prints a library error for people or machines (see [`report_error`]), without deciding the
/// exit code.
pub(crate) fn report_error_as(err: &crate::error::Error, format: Format) {
    if format.structured() {
        let mut v = serde_json::json!({"error": err.to_string(), "reason": err.reason()});
        if let Some(h) = crate::hints::for_error(err) {
            v["hint"] = h.into();
        }
        if let crate::error::Error::Invalid { report, .. } = err {
            v["diagnostics"] = serde_json::to_value(&report.diagnostics).unwrap_or_default();
        }
        emit(&v, format);
    } else {
        if let crate::error::Error::Invalid { report, .. } = err {
            out!("{}", report.render(color_stdout()));
        }
        print_error(err);
    }
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

#[cfg(test)]
mod tests {
    use super::causes_to_show;

    #[derive(Debug, thiserror::Error)]
    #[error("{0}")]
    struct E(String, #[source] Option<Box<E>>);

    #[test]
    fn a_cause_the_message_already_quotes_is_not_repeated_under_it() {
        let refused = E("Connection refused (os error 111)".into(), None);
        let client = E("client error (Connect)".into(), Some(Box::new(refused)));
        let what =
            "cannot reach the API server at https://127.0.0.1:9: Connection refused (os error 111)";
        assert_eq!(
            causes_to_show(what, Some(&client)),
            ["client error (Connect)"]
        );
        assert!(causes_to_show("x", None).is_empty());
    }
}
