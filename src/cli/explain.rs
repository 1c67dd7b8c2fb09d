//! `converge explain [COMPONENT]`: gather what a person would look at for unhealthy components
//! and print a short diagnosis with the next step; `--ai` hands the same evidence to
//! `kubectl-ai` when it is installed. Never prints Secret values (the evidence holds none).

use std::path::{Path, PathBuf};
use std::time::Duration;

use clap::Args;

use super::down;
use super::{Format, SourceArgs, EXIT_ERROR, EXIT_FINDINGS, EXIT_OK};
use crate::explain::{self, Diagnosis, Explained, GatherError};
use crate::process;

/// How long `kubectl-ai` may take to answer.
pub const AI_TIMEOUT: Duration = Duration::from_secs(300);

/// Arguments of `converge explain`.
#[derive(Debug, Args)]
pub struct ExplainArgs {
    /// The component to explain; every component of the stack when absent.
    component: Option<String>,
    #[command(flatten)]
    source: SourceArgs,
    #[command(flatten)]
    target: super::StackArgs,
    /// Also pipe the gathered evidence to `kubectl-ai` (when it is on PATH) for a second opinion.
    #[arg(long)]
    ai: bool,
    /// Output format.
    #[arg(short, long, value_enum, default_value_t = Format::Text)]
    output: Format,
}

pub(super) fn run(args: &ExplainArgs) -> u8 {
    let targets = match down::resolve_targets(&args.source, &args.target) {
        Ok(t) => t,
        Err(code) => return code,
    };
    let rt = match super::runtime() {
        Ok(rt) => rt,
        Err(code) => return code,
    };
    rt.block_on(async {
        let found = match explain::explain_wanted(
            args.target.kubeconfig.as_deref(),
            &targets,
            args.component.as_deref(),
        )
        .await
        {
            Ok(found) => found,
            Err(GatherError::Cluster(e)) => {
                return super::report_error(&crate::error::Error::Cluster(e), args.output)
            }
            Err(e) => {
                super::print_error(&e);
                return EXIT_ERROR;
            }
        };
        let mut all = Vec::new();
        let mut never_applied = Vec::new();
        for (w, mut e) in targets.iter().zip(found) {
            all.append(&mut e.explained);
            let t = &w.target;
            never_applied.extend(
                e.never_applied
                    .iter()
                    .map(|ns| super::stack_label(&t.stack, &t.dir, ns)),
            );
        }
        // A stack of the repository that was never applied to this cluster is not a failure
        // of it: say so once, on stderr.
        for label in &never_applied {
            errln!("stack {label}: not applied to this cluster; nothing to explain");
        }
        if all.is_empty() {
            let apply = match &args.target.stack {
                Some(s) => format!("converge apply --stack {s}"),
                None => "converge apply".into(),
            };
            errln!(
                "nothing to explain: converge has no record of {} in this cluster (run `{apply}` first)",
                targets
                    .iter()
                    .map(|w| format!("stack {}", w.target.stack))
                    .collect::<Vec<_>>()
                    .join(", ")
            );
            return EXIT_ERROR;
        }
        if args.output.structured() {
            super::emit(&all, args.output);
        } else {
            print_text(&all, args.component.is_some());
        }
        if args.ai {
            ask_ai(&all, args.target.kubeconfig.as_deref()).await;
        }
        if all.iter().flat_map(|e| &e.diagnoses).any(Diagnosis::is_problem) {
            EXIT_FINDINGS
        } else {
            EXIT_OK
        }
    })
}

fn print_text(all: &[Explained], one: bool) {
    let color = super::color_stdout();
    let paint = |code: &str, s: &str| super::paint(color, code, s);
    let mut last_stack: Option<(&str, &str)> = None;
    for e in all {
        if last_stack != Some((e.stack.as_str(), e.namespace.as_str())) {
            outln!(
                "{}",
                paint(
                    "1",
                    &format!(
                        "stack {}",
                        super::stack_label(&e.stack, &e.dir, &e.namespace)
                    )
                )
            );
            last_stack = Some((e.stack.as_str(), e.namespace.as_str()));
        }
        for d in &e.diagnoses {
            if !d.is_problem() {
                outln!("  {}: {}", e.component, paint("32", &d.summary));
                if one {
                    for line in &d.evidence {
                        outln!("    {line}");
                    }
                }
                continue;
            }
            outln!(
                "  {}: {} — {}",
                e.component,
                paint("31;1", &d.rule),
                d.summary
            );
            for line in &d.evidence {
                outln!("    {line}");
            }
            outln!("    {} {}", paint("1", "next:"), d.next_step);
        }
    }
}

/// Finds `program` on `PATH`.
pub fn on_path(program: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|d| d.join(program))
        .find(|p| is_executable(p))
}

fn is_executable(p: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt;
    std::fs::metadata(p).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
}

/// The question put to `kubectl-ai`; the evidence follows on its stdin.
pub fn ai_question(all: &[Explained]) -> String {
    let names: Vec<String> = all
        .iter()
        .filter(|e| e.diagnoses.iter().any(Diagnosis::is_problem))
        .map(|e| format!("{} (namespace {})", e.component, e.evidence.namespace))
        .collect();
    format!(
        "Why is {} not healthy, and what exactly should I change? The JSON on stdin is converge's own diagnosis and the evidence it gathered (rollout conditions, pods, events, log tails, secrets by key name only).",
        if names.is_empty() {
            "this stack".to_string()
        } else {
            names.join(", ")
        }
    )
}

async fn ask_ai(all: &[Explained], kubeconfig: Option<&Path>) {
    let Some(program) = on_path("kubectl-ai") else {
        errln!(
            "--ai: kubectl-ai is not installed (not found on PATH); install it from https://github.com/GoogleCloudPlatform/kubectl-ai to get a second opinion. The diagnosis above is converge's own."
        );
        return;
    };
    let input = serde_json::to_vec_pretty(all).unwrap_or_default();
    let mut cmd = process::Command::new(&program, AI_TIMEOUT)
        .arg("--quiet")
        .arg(ai_question(all))
        .stdin(input)
        // Its answer is for the person at the terminal: streamed there, not captured.
        .inherit_output();
    if let Some(k) = kubeconfig {
        cmd = cmd.env("KUBECONFIG", k);
    }
    outln!("\n--- kubectl-ai ({}) ---", program.display());
    match cmd.output().await {
        Ok(out) if out.success() => {}
        Ok(out) => errln!("--ai: {} exited with {}", program.display(), out.status),
        Err(process::Error::Spawn { source, .. }) => {
            errln!("--ai: cannot start {}: {source}", program.display())
        }
        Err(process::Error::Timeout { .. }) => errln!(
            "--ai: {} gave no answer within {}s; stopped it",
            program.display(),
            AI_TIMEOUT.as_secs()
        ),
        Err(e) => errln!("--ai: {e}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::explain::Evidence;

    #[test]
    fn the_ai_question_names_only_the_unhealthy_components() {
        let mk = |c: &str, rule: &str| Explained {
            stack: "todo".into(),
            dir: String::new(),
            namespace: "apps".into(),
            component: c.into(),
            diagnoses: vec![Diagnosis {
                component: c.into(),
                rule: rule.into(),
                ..Diagnosis::default()
            }],
            evidence: Evidence {
                namespace: "apps".into(),
                ..Evidence::default()
            },
        };
        let q = ai_question(&[mk("backend", "CrashLoopBackOff"), mk("frontend", "Healthy")]);
        assert!(q.contains("backend (namespace apps)"));
        assert!(!q.contains("frontend"));
    }
}
