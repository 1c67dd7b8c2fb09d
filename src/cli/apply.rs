//! `converge apply`: one reconcile of a commit, in the foreground; `converge diff`: what it would change.

use clap::Args;
use serde_json::json;

use super::flags::{self, Caller, ReconcileFlags};
use super::{Format, SourceArgs, EXIT_ERROR, EXIT_FINDINGS, EXIT_OK};
use crate::error::Error;
use crate::reconcile::{self, Options, StackReport};
use crate::render::Helm;

/// Where and how to apply: the groups `apply` and `diff` share, so a diff shows what an apply
/// with the same flags would change.
#[derive(Debug, Clone, Args)]
pub struct TargetArgs {
    #[command(flatten)]
    pub source: SourceArgs,
    #[command(flatten)]
    pub stack: super::StackArgs,
    #[command(flatten)]
    pub reconcile: ReconcileFlags,
    #[command(flatten)]
    pub build: super::build::BuildFlags,
    /// Output format.
    #[arg(short, long, value_enum, default_value_t = Format::Text)]
    pub output: Format,
}

impl TargetArgs {
    fn options(&self, caller: Caller) -> Options {
        flags::reconcile_options(
            &self.source.dir,
            &self.stack,
            &self.reconcile,
            &self.build,
            caller,
        )
    }
}

/// Arguments of `converge apply`.
#[derive(Debug, Args)]
pub struct ApplyArgs {
    #[command(flatten)]
    target: TargetArgs,
    /// Compare every object with the cluster, not only those whose render or live spec moved.
    #[arg(long)]
    full: bool,
    /// Apply even though a `converge run` daemon manages the stack (it holds the stack's Lease);
    /// the daemon then reconciles the tip of its branch again.
    #[arg(long)]
    force: bool,
}

impl ApplyArgs {
    /// The reconcile options, resolved once.
    pub(crate) fn options(&self) -> Options {
        self.target.options(Caller::Apply {
            full: self.full,
            force: self.force,
        })
    }
}

pub(super) fn apply(args: &ApplyArgs) -> u8 {
    let opts = args.options();
    let rt = match super::runtime() {
        Ok(rt) => rt,
        Err(code) => return code,
    };
    rt.block_on(async {
        let reports = match run_apply(&args.target, &opts).await {
            Ok(r) => r,
            Err(e) => return super::report_error(&e, args.target.output),
        };
        print_reports(&reports, args.target.output);
        note_reports(&args.target, &reports);
        // The daemon's rule: anything but done is a finding (a retry or a wait is the
        // daemon's to make; a one-shot apply reports it).
        match crate::outcome::after_reports(&reports) {
            crate::outcome::Next::Done => EXIT_OK,
            _ => EXIT_FINDINGS,
        }
    })
}

/// Reconciles every selected stack of the commit.
pub async fn run_apply(target: &TargetArgs, opts: &Options) -> Result<Vec<StackReport>, Error> {
    let mut clusters = reconcile::Clusters::default();
    reconcile::reconcile_commit(
        &target.source.repo,
        &target.source.rev,
        opts,
        &Helm::from_env(),
        &mut clusters,
    )
    .await
}

/// Writes the outcome on the commit as a git note (the deploy history); a note that cannot be
/// written is one line on stderr and never changes the exit code.
fn note_reports(target: &TargetArgs, reports: &[StackReport]) {
    let Some(commit) = reports.first().map(|r| r.commit.clone()) else {
        return;
    };
    let blocks: Vec<_> = reports
        .iter()
        .map(|r| crate::history::notes::Block::stack(&r.note()))
        .collect();
    if let Err(e) = crate::history::notes::write(&target.source.repo, &commit, &blocks) {
        errln!(
            "note: the deploy note on {} was not written ({e}); the apply is unaffected",
            crate::desired::short_id(&commit)
        );
    }
}

fn print_reports(reports: &[StackReport], format: Format) {
    if format.structured() {
        super::emit(reports, format);
        return;
    }
    let color = super::color_stdout();
    for r in reports {
        let verdict = if r.ready {
            super::paint(color, "32", "ready")
        } else {
            super::paint(color, "31;1", "NOT ready")
        };
        outln!(
            "stack {} at {}: {verdict} ({})",
            super::stack_label(&r.stack, &r.dir, &r.namespace),
            crate::desired::short_id(&r.commit),
            r.reason
        );
        outln!(
            "  {} applied, {} unchanged, {} pruned; {} reads, {} writes in {} ms",
            r.applied.len(),
            r.unchanged,
            r.pruned.len(),
            r.requests.reads,
            r.requests.writes,
            r.duration_ms
        );
        for a in &r.applied {
            outln!("  applied {a}");
        }
        for p in &r.pruned {
            outln!("  pruned {p}");
        }
        for k in &r.kept {
            outln!("  kept {k}");
        }
        for h in &r.hooks {
            let action = match h.action {
                crate::reconcile::HookAction::Ran => "ran",
                crate::reconcile::HookAction::Failed => "failed",
                crate::reconcile::HookAction::Skipped => "skipped",
                crate::reconcile::HookAction::Held => "not started",
            };
            let detail = if h.detail.is_empty() {
                String::new()
            } else {
                format!(": {}", h.detail)
            };
            outln!("  hook {} ({}) {action}{detail}", h.hook, h.phase);
        }
        for c in &r.status.components {
            outln!(
                "  {:<10} {:<12} {}/{} {}",
                c.name,
                c.health,
                c.ready,
                c.desired,
                c.image
            );
        }
        for (c, why) in &r.blocked {
            outln!("  blocked {c}: {why}");
        }
        for e in r
            .errors
            .iter()
            .filter(|e| !r.blocked.values().any(|b| e.ends_with(b.why())))
        {
            outln!("  error: {e}");
        }
    }
}

/// Arguments of `converge diff`.
#[derive(Debug, Args)]
pub struct DiffArgs {
    #[command(flatten)]
    target: TargetArgs,
}

impl DiffArgs {
    /// The reconcile options the dry run uses, resolved once.
    pub(crate) fn options(&self) -> Options {
        self.target.options(Caller::Diff)
    }
}

/// `converge diff` follows `kubectl diff`: 0 no changes, 1 changes, 2 on any error (an invalid
/// commit included), so CI can tell "changes pending" from "broken".
pub(super) fn diff(args: &DiffArgs) -> u8 {
    let opts = args.options();
    let rt = match super::runtime() {
        Ok(rt) => rt,
        Err(code) => return code,
    };
    let uncommitted = uncommitted_note(&args.target.source);
    rt.block_on(async {
        let changes = match run_diff(&args.target, &opts).await {
            Ok(c) => c,
            Err(e) => {
                super::report_error_as(&e, args.target.output);
                if let Some(note) = &uncommitted {
                    errln!("note: {note}");
                }
                return EXIT_ERROR;
            }
        };
        if args.target.output.structured() {
            super::emit(&changes, args.target.output);
        } else {
            for c in &changes {
                out!("{}", super::colorize_diff(c["diff"].as_str().unwrap_or("")));
            }
            if changes.is_empty() {
                errln!("no differences");
            }
        }
        if let Some(note) = &uncommitted {
            errln!("note: {note}");
        }
        if changes.is_empty() {
            EXIT_OK
        } else {
            EXIT_FINDINGS
        }
    })
}

/// One line when the working tree has changes under the desired-state directory that `diff`
/// (which reads commits) does not show.
fn uncommitted_note(source: &SourceArgs) -> Option<String> {
    if source.rev != "HEAD" {
        return None;
    }
    let repo = crate::source::Repo::open(&source.repo).ok()?;
    let paths = repo.uncommitted(&source.dir).ok()?;
    if paths.is_empty() {
        return None;
    }
    let shown: Vec<&str> = paths.iter().take(3).map(String::as_str).collect();
    let more = if paths.len() > 3 {
        format!(" and {} more", paths.len() - 3)
    } else {
        String::new()
    };
    Some(format!(
        "uncommitted changes under {}/ ({}{more}) are not deployed and not shown; commit them",
        source.dir.trim_end_matches('/'),
        shown.join(", ")
    ))
}

/// Per object that would change: `{object, action, diff}` (see [`reconcile::diff_commit`]).
pub async fn run_diff(
    target: &TargetArgs,
    opts: &Options,
) -> Result<Vec<serde_json::Value>, Error> {
    let mut clusters = reconcile::Clusters::default();
    let diffs = reconcile::diff_commit(
        &target.source.repo,
        &target.source.rev,
        opts,
        &Helm::from_env(),
        &mut clusters,
    )
    .await?;
    Ok(diffs
        .into_iter()
        .map(|d| json!({"object": d.object, "action": d.action, "diff": d.diff}))
        .collect())
}
