//! `converge doctor`: one pass/fail line per check of the machine, the cluster and the desired
//! state, each with the exact fix; exit 0 only when every check passes. The checks (what each
//! gathers and decides) are the library's `doctor` table; this file reads the commit's stacks,
//! hands them over and prints.

use clap::Args;

use super::validate::plural;
use super::{Format, SourceArgs, EXIT_FINDINGS, EXIT_OK};
use crate::desired::Stack;
use crate::doctor::{Check, CheckId, Status};
use crate::error::Error;
use crate::reconcile;

/// Arguments of `converge doctor`.
#[derive(Debug, Args)]
pub struct DoctorArgs {
    #[command(flatten)]
    source: SourceArgs,
    #[command(flatten)]
    target: super::StackArgs,
    /// Check this builder instead of the one converge would choose for each stack.
    #[arg(long, value_enum)]
    builder: Option<crate::desired::schema::BuilderKind>,
    /// Skip a check (repeatable; it is not run at all): desired, helm, context, cluster,
    /// builder, secrets, nodeport, quota, capacity, service.
    #[arg(long, value_enum)]
    skip: Vec<CheckId>,
    /// Output format.
    #[arg(short, long, value_enum, default_value_t = Format::Text)]
    output: Format,
}

/// Exit 0 when nothing failed (warnings included), 1 when a check failed.
pub(super) fn run(args: &DoctorArgs) -> u8 {
    let rt = match super::runtime() {
        Ok(rt) => rt,
        Err(code) => return code,
    };
    let request = crate::doctor::Request {
        stacks: read_stacks(args),
        repo: &args.source.repo,
        rev: &args.source.rev,
        dir: &args.source.dir,
        kubeconfig: args.target.kubeconfig.as_deref(),
        context: args.target.context.as_deref(),
        builder: args.builder,
        skip: &args.skip,
    };
    let checks: Vec<Check> = rt.block_on(crate::doctor::run(&request));
    if args.output.structured() {
        super::emit(&checks, args.output);
    } else {
        print_text(&checks);
    }
    if checks.iter().any(|c| c.status == Status::Fail) {
        EXIT_FINDINGS
    } else {
        EXIT_OK
    }
}

fn print_text(checks: &[Check]) {
    let color = super::color_stdout();
    for c in checks {
        let (word, code) = match c.status {
            Status::Pass => ("ok  ", "32"),
            Status::Warn => ("WARN", "33"),
            Status::Fail => ("FAIL", "31;1"),
        };
        let word = super::paint(color, code, word);
        outln!("{word} {:<9} {}", c.check, c.message);
        if let Some(fix) = &c.fix {
            outln!("     {:<9} fix: {fix}", "");
        }
    }
    let failed = checks.iter().filter(|c| c.status == Status::Fail).count();
    let warned = checks.iter().filter(|c| c.status == Status::Warn).count();
    let verdict = match (failed, warned) {
        (0, 0) => "all good",
        (0, _) => "no failures (warnings do not fail doctor)",
        _ => "fix the failures above",
    };
    outln!(
        "{}: {} passed, {} failed, {}; {verdict}",
        plural(checks.len(), "check"),
        checks.len() - failed - warned,
        failed,
        plural(warned, "warning"),
    );
}

/// The selected stacks of the commit, or the one line the `desired` check fails with.
fn read_stacks(args: &DoctorArgs) -> Result<Vec<Stack>, String> {
    let selection = super::selection(&args.source, &args.target);
    let commit = reconcile::load(
        &args.source.repo,
        &args.source.rev,
        &selection,
        reconcile::Images::Skip,
    )
    .map_err(|e| match e {
        Error::Invalid { report, .. } => format!(
            "the desired state at {} does not validate ({})",
            args.source.rev,
            plural(report.error_count(), "error")
        ),
        Error::UnknownStack { .. } => match (&selection.stack, &selection.namespace) {
            (Some(w), _) => format!("the desired state has no stack `{w}`"),
            (None, Some(n)) => format!("the desired state has no stack in namespace `{n}`"),
            (None, None) => e.to_string(),
        },
        other => other.to_string(),
    })?;
    Ok(commit.stacks.into_iter().map(|p| p.stack).collect())
}

#[cfg(test)]
mod tests {
    use clap::Parser;

    #[test]
    fn skip_accepts_only_known_checks() {
        let ok = crate::cli::Cli::try_parse_from([
            "converge", "doctor", "--skip", "service", "--skip", "builder",
        ]);
        assert!(ok.is_ok());
        let bad = crate::cli::Cli::try_parse_from(["converge", "doctor", "--skip", "nonsense"]);
        assert!(bad.is_err());
    }
}
