//! The `converge` binary: parse arguments, start tracing, run the command, map errors to exit codes.
#![forbid(unsafe_code)]

use std::process::ExitCode;

use clap::Parser;

fn main() -> ExitCode {
    let cli = converge::cli::Cli::parse();
    converge::cli::init_tracing(&cli);
    converge::cli::run(cli)
}
