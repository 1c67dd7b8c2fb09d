//! `converge validate`: check the desired state of a commit and print every finding.

use clap::Args;
use serde_json::json;

use super::{Format, SourceArgs, EXIT_ERROR, EXIT_FINDINGS, EXIT_OK};
use crate::desired::{self, Report};
use crate::error::Error;
use crate::reconcile;

/// Arguments of `converge validate`.
#[derive(Debug, Args)]
pub struct ValidateArgs {
    #[command(flatten)]
    source: SourceArgs,
    /// Output format.
    #[arg(short, long, value_enum, default_value_t = Format::Text)]
    output: Format,
}

pub(super) fn run(args: &ValidateArgs) -> u8 {
    let every = reconcile::Selection {
        dir: args.source.dir.clone(),
        stack: None,
        namespace: None,
    };
    let (commit, valid, report, summary) = match reconcile::load(
        &args.source.repo,
        &args.source.rev,
        &every,
        reconcile::Images::Skip,
    ) {
        Ok(loaded) => {
            let summary: Vec<_> = loaded
                .stacks()
                .map(|s| {
                    json!({
                        "name": s.spec.name,
                        "dir": s.dir,
                        "namespace": s.spec.namespace,
                        "file": s.file,
                        "components": s.components.iter().map(|c| c.spec.name.clone()).collect::<Vec<_>>(),
                    })
                })
                .collect();
            (loaded.id, true, loaded.warnings, summary)
        }
        Err(Error::Invalid { commit, report }) => (commit, false, *report, Vec::new()),
        Err(e) => return usage_error(args.output, &e),
    };
    match args.output {
        Format::Json | Format::Yaml => {
            let out = json!({
                "valid": valid,
                "commit": commit,
                "errors": report.error_count(),
                "warnings": report.warning_count(),
                "diagnostics": report.diagnostics,
                "stacks": summary,
            });
            super::emit(&out, args.output);
        }
        Format::Text => print_text(&report, valid, &commit, &summary),
    }
    if valid {
        EXIT_OK
    } else {
        EXIT_FINDINGS
    }
}

fn print_text(report: &Report, valid: bool, commit: &str, stacks: &[serde_json::Value]) {
    let rendered = report.render(super::color_stdout());
    if !rendered.is_empty() {
        out!("{rendered}");
    }
    let short = desired::short_id(commit);
    if valid {
        for s in stacks {
            outln!(
                "ok: stack {} with {}, from {}",
                super::stack_label(
                    s["name"].as_str().unwrap_or(""),
                    s["dir"].as_str().unwrap_or(""),
                    s["namespace"].as_str().unwrap_or("")
                ),
                plural(
                    s["components"].as_array().map(|a| a.len()).unwrap_or(0),
                    "component"
                ),
                s["file"].as_str().unwrap_or("")
            );
        }
        outln!(
            "commit {short}: desired state is valid ({})",
            plural(report.warning_count(), "warning")
        );
    } else {
        outln!(
            "commit {short}: desired state is invalid: {}, {}; nothing will be applied",
            plural(report.error_count(), "error"),
            plural(report.warning_count(), "warning")
        );
    }
}

fn usage_error(format: Format, err: &Error) -> u8 {
    if format.structured() {
        let mut out = json!({"valid": false, "error": err.to_string()});
        if let Some(h) = crate::hints::for_error(err) {
            out["hint"] = h.into();
        }
        super::emit(&out, format);
    } else {
        super::print_error(err);
    }
    EXIT_ERROR
}

/// `1 error`, `2 errors`.
pub(crate) fn plural(n: usize, word: &str) -> String {
    if n == 1 {
        format!("{n} {word}")
    } else {
        format!("{n} {word}s")
    }
}
