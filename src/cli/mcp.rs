//! `converge mcp`: serve the Model Context Protocol on stdin/stdout for an AI assistant (see
//! `docs/mcp.md`). stdout carries protocol messages only; logs go to stderr.

use std::path::PathBuf;

use clap::Args;

use super::build::BuildFlags;
use super::flags::{self, Caller, ReconcileFlags};
use super::{StackArgs, EXIT_ERROR, EXIT_OK};
use crate::mcp::{Config, Server};

/// Arguments of `converge mcp`.
#[derive(Debug, Args)]
pub struct McpArgs {
    /// The git checkout (any directory inside it).
    #[arg(long, default_value = ".", env = "CONVERGE_REPO")]
    repo: PathBuf,
    /// The desired-state directory inside the repository.
    #[arg(long, default_value = crate::desired::DEFAULT_DIR)]
    dir: String,
    #[command(flatten)]
    target: StackArgs,
    /// The tracked branch proposals start from, instead of the stacks' `branch` (default main).
    /// Proposals are always committed on a new branch, never on this one.
    #[arg(long)]
    branch: Option<String>,
    #[command(flatten)]
    reconcile: ReconcileFlags,
    #[command(flatten)]
    build: BuildFlags,
}

impl McpArgs {
    /// The server's configuration; the `diff` tool's dry run uses `converge diff`'s options.
    pub(crate) fn config(&self) -> Config {
        config(
            &self.repo,
            &self.dir,
            &self.target,
            self.branch.as_deref(),
            &self.reconcile,
            &self.build,
        )
    }
}

/// The MCP server's configuration from the flags `converge mcp` and `converge run --mcp` share.
pub(super) fn config(
    repo: &std::path::Path,
    dir: &str,
    target: &StackArgs,
    branch: Option<&str>,
    reconcile: &ReconcileFlags,
    build: &BuildFlags,
) -> Config {
    Config {
        repo: repo.to_path_buf(),
        dir: dir.to_string(),
        stack: target.stack.clone(),
        namespace: target.namespace.clone(),
        context: target.context.clone(),
        kubeconfig: target.kubeconfig.clone(),
        branch: branch.map(str::to_string),
        diff: flags::reconcile_options(dir, target, reconcile, build, Caller::Diff),
    }
}

pub(super) fn run(args: &McpArgs) -> u8 {
    let rt = match super::runtime() {
        Ok(rt) => rt,
        Err(code) => return code,
    };
    let server = Server::new(args.config());
    match rt.block_on(crate::mcp::serve_stdio(&server)) {
        Ok(()) => EXIT_OK,
        Err(e) => {
            errln!("error: reading the MCP client's messages on stdin: {e}");
            EXIT_ERROR
        }
    }
}
