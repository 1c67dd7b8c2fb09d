//! The command line: clap arguments, one file per command, output formats and exit codes.
//!
//! Library errors become readable diagnostics here and nowhere else.

mod validate;

use std::io::IsTerminal;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Args, Parser, Subcommand, ValueEnum};

/// Keep a Kubernetes cluster converged on what is committed in a git checkout.
#[derive(Debug, Parser)]
#[command(name = "converge", version, about, propagate_version = true)]
pub struct Cli {
    /// Log filter (tracing's env-filter syntax), e.g. `info` or `converge=debug`.
    #[arg(long, global = true, env = "CONVERGE_LOG", default_value = "warn")]
    pub log: String,
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

/// Starts tracing to stderr with the `--log` filter.
pub fn init_tracing(cli: &Cli) {
    let filter = tracing_subscriber::EnvFilter::try_new(&cli.log)
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn"));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .init();
}

/// Runs the command and returns the process exit code.
pub fn run(cli: Cli) -> ExitCode {
    let code = match cli.command {
        Command::Validate(args) => validate::run(&args),
        Command::Schema => {
            let schema = crate::desired::schema::document_schema();
            match serde_json::to_string_pretty(&schema) {
                Ok(s) => {
                    println!("{s}");
                    EXIT_OK
                }
                Err(e) => {
                    eprintln!("error: {e}");
                    EXIT_ERROR
                }
            }
        }
    };
    ExitCode::from(code)
}

/// Prints an error with its chain of causes, the way people read them.
pub(crate) fn print_error(err: &dyn std::error::Error) {
    eprintln!("error: {err}");
    let mut source = err.source();
    while let Some(s) = source {
        eprintln!("  caused by: {s}");
        source = s.source();
    }
}

/// Whether stdout gets colour.
pub(crate) fn color_stdout() -> bool {
    std::io::stdout().is_terminal() && std::env::var_os("NO_COLOR").is_none()
}
