//! `converge down`: take a stack out of the cluster from its in-cluster inventory; the
//! repository is only consulted to learn the stack's namespace and context, never required.

use std::time::Duration;

use clap::Args;

use super::{Format, SourceArgs, EXIT_ERROR, EXIT_FINDINGS, EXIT_OK};
use crate::cluster::teardown::{DownReport, TeardownOptions};
use crate::reconcile::lookup::{self, Wanted};

/// Arguments of `converge down`.
#[derive(Debug, Args)]
pub struct DownArgs {
    #[command(flatten)]
    source: SourceArgs,
    #[command(flatten)]
    target: super::StackArgs,
    /// Also delete PersistentVolumeClaims (the data in them is lost).
    #[arg(long)]
    volumes: bool,
    /// How long to wait for everything to be gone.
    #[arg(long, default_value = "5m", value_parser = humantime::parse_duration)]
    timeout: Duration,
    /// Output format.
    #[arg(short, long, value_enum, default_value_t = Format::Text)]
    output: Format,
}

/// [`lookup::targets`] for a command's flags, printing why it failed (exit code 2).
pub(super) fn resolve_targets(
    source: &SourceArgs,
    target: &super::StackArgs,
) -> Result<Vec<Wanted>, u8> {
    lookup::targets(
        &source.repo,
        &source.rev,
        &super::selection(source, target),
        target.context.as_deref(),
    )
    .map_err(|why| {
        errln!("error: {why}");
        EXIT_ERROR
    })
}

pub(super) fn run(args: &DownArgs) -> u8 {
    let targets = match resolve_targets(&args.source, &args.target) {
        Ok(t) => t,
        Err(code) => return code,
    };
    let rt = match super::runtime() {
        Ok(rt) => rt,
        Err(code) => return code,
    };
    let opts = TeardownOptions {
        volumes: args.volumes,
        timeout: args.timeout,
    };
    rt.block_on(async {
        let mut reports = Vec::new();
        for w in &targets {
            match lookup::take_down(args.target.kubeconfig.as_deref(), &w.target, opts).await {
                Ok(r) => reports.push(r),
                Err(e) => {
                    return super::report_error(&crate::error::Error::Cluster(e), args.output)
                }
            }
        }
        print(&reports, &targets, args.output);
        if reports.iter().all(DownReport::complete) {
            EXIT_OK
        } else {
            EXIT_FINDINGS
        }
    })
}

fn print(reports: &[DownReport], targets: &[Wanted], format: Format) {
    if format.structured() {
        super::emit(reports, format);
        return;
    }
    for r in reports {
        let dir = targets
            .iter()
            .map(|w| &w.target)
            .find(|t| t.stack == r.stack && t.namespace().is_none_or(|n| n == r.namespace))
            .map(|t| t.dir.as_str())
            .unwrap_or("");
        let label = if r.namespace.is_empty() {
            format!("{} (no namespace)", r.stack)
        } else {
            super::stack_label(&r.stack, dir, &r.namespace)
        };
        if r.nothing_to_do {
            outln!("stack {label}: nothing to take down (converge has no record of it here)");
            for d in &r.deleted {
                outln!("  deleted {d} (left behind earlier)");
            }
            continue;
        }
        if let Some(holder) = &r.held_by {
            outln!(
                "stack {label}: NOT down: a converge daemon ({holder}) manages it and would apply it again at once; stop that daemon, then run `converge down` again (nothing was deleted)"
            );
            continue;
        }
        let verdict = if r.complete() { "down" } else { "NOT down" };
        outln!(
            "stack {label}: {verdict}; {} deleted, {} already gone, {} kept in {} ms",
            r.deleted.len(),
            r.already_gone.len(),
            r.kept.len(),
            r.duration_ms
        );
        for d in &r.deleted {
            outln!("  deleted {d}");
        }
        for k in &r.kept {
            outln!("  kept {k}");
        }
        if r.records_removed {
            outln!("  removed converge's inventory and status record");
        }
        for e in &r.errors {
            outln!("  error: {e}");
        }
        if !r.complete() {
            outln!("  what is left stays in the inventory: re-run `converge down` to retry");
        }
    }
}
