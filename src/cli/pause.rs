//! `converge pause` and `converge resume`: write a timed pause of drift correction for a stack or
//! one component into the cluster (the pause record every daemon watches), or end it early.
//! Neither reconciles: the daemon (or the next `converge apply`) acts on the record.

use std::time::Duration;

use clap::Args;

use super::{Format, SourceArgs, StackArgs, EXIT_ERROR, EXIT_OK};
use crate::cluster::pause::{self, Pause, Pauses};
use crate::cluster::Cluster;
use crate::status::view::{self, Pick, StackView};

/// Arguments of `converge pause`.
#[derive(Debug, Args)]
pub struct PauseArgs {
    /// The component to pause; the whole stack when absent.
    pub component: Option<String>,
    /// How long (`15m`, `1h30m`); it ends by itself then. At most 24h unless `--force`.
    #[arg(long = "for", value_name = "DURATION", value_parser = humantime::parse_duration)]
    pub length: Duration,
    /// Accept a pause longer than a day.
    #[arg(long)]
    pub force: bool,
    #[command(flatten)]
    source: SourceArgs,
    #[command(flatten)]
    target: StackArgs,
    /// Output format.
    #[arg(short, long, value_enum, default_value_t = Format::Text)]
    output: Format,
}

/// Arguments of `converge resume`.
#[derive(Debug, Args)]
pub struct ResumeArgs {
    /// The component whose pause ends; every pause of the stack when absent.
    pub component: Option<String>,
    #[command(flatten)]
    source: SourceArgs,
    #[command(flatten)]
    target: StackArgs,
    /// Output format.
    #[arg(short, long, value_enum, default_value_t = Format::Text)]
    output: Format,
}

/// `converge pause`.
pub(super) fn pause(args: &PauseArgs) -> u8 {
    if let Err(e) = pause::check_length(args.length, args.force) {
        let fix = match &e {
            pause::PauseError::Empty(_) => format!(
                "pause for a length: `{}`",
                command(
                    "pause",
                    args.component.as_deref(),
                    &args.target,
                    " --for 15m"
                )
            ),
            pause::PauseError::TooLong(_) => format!(
                "pause for at most a day, or say you mean it: `{}`",
                command(
                    "pause",
                    args.component.as_deref(),
                    &args.target,
                    &format!(
                        " --for {} --force",
                        humantime::format_duration(args.length)
                            .to_string()
                            .replace(' ', "")
                    ),
                )
            ),
        };
        problem(args.output, &e.to_string(), &fix);
        return EXIT_ERROR;
    }
    let rt = match super::runtime() {
        Ok(rt) => rt,
        Err(code) => return code,
    };
    rt.block_on(async {
        let (cluster, view) = match find(&args.source, &args.target, args.component.as_deref(), "pause", args.output).await {
            Ok(found) => found,
            Err(code) => return code,
        };
        let s = &view.recorded;
        let mut pauses = match read(&cluster, s, args.output).await {
            Ok(p) => p,
            Err(code) => return code,
        };
        let now = chrono::Utc::now();
        let length = chrono::Duration::from_std(args.length).unwrap_or(chrono::Duration::MAX);
        let until = now.checked_add_signed(length).unwrap_or(chrono::DateTime::<chrono::Utc>::MAX_UTC);
        let host = crate::daemon::lock::hostname();
        let by = match std::env::var("USER") {
            Ok(user) if !user.is_empty() => format!("{user}@{host}"),
            _ => host,
        };
        let p = Pause {
            component: args.component.clone(),
            since: now,
            until,
            by,
        };
        pauses.set(p.clone());
        if let Err(e) = pause::save(cluster.client(), &s.namespace, &s.stack, &pauses).await {
            super::report_error(&crate::error::Error::Cluster(e), args.output);
            return EXIT_ERROR;
        }
        let resume = command("resume", args.component.as_deref(), &stack_of(s), "");
        if args.output.structured() {
            super::emit(
                &serde_json::json!({
                    "stack": s.stack, "namespace": s.namespace, "dir": s.dir,
                    "pause": p, "daemon": view.daemon.held, "resume": resume,
                }),
                args.output,
            );
            return EXIT_OK;
        }
        outln!(
            "paused {} of stack {} until {} ({}): drift is left alone, new commits are still applied",
            p.scope(),
            super::stack_label(&s.stack, &s.dir, &s.namespace),
            until.format("%H:%M:%S UTC"),
            humantime::format_duration(args.length),
        );
        outln!(
            "when it ends, converge reports what was changed by hand and restores the committed state; end it now: `{resume}`"
        );
        if !view.daemon.held {
            outln!("no daemon holds this stack: the pause is honoured by `converge apply` and by any daemon that starts");
        }
        EXIT_OK
    })
}

/// `converge resume`.
pub(super) fn resume(args: &ResumeArgs) -> u8 {
    let rt = match super::runtime() {
        Ok(rt) => rt,
        Err(code) => return code,
    };
    rt.block_on(async {
        let (cluster, view) = match find(&args.source, &args.target, args.component.as_deref(), "resume", args.output).await {
            Ok(found) => found,
            Err(code) => return code,
        };
        let s = &view.recorded;
        let mut pauses = match read(&cluster, s, args.output).await {
            Ok(p) => p,
            Err(code) => return code,
        };
        let label = super::stack_label(&s.stack, &s.dir, &s.namespace);
        // Ended, not deleted: the next reconcile reports the hand changes, then forgets it.
        let ended = pauses.end(args.component.as_deref(), chrono::Utc::now());
        let json = |resumed: usize| {
            serde_json::json!({
                "stack": s.stack, "namespace": s.namespace, "dir": s.dir,
                "component": args.component, "resumed": resumed, "daemon": view.daemon.held,
            })
        };
        if ended == 0 {
            if args.output.structured() {
                super::emit(&json(0), args.output);
                return EXIT_OK;
            }
            let what = args
                .component
                .as_deref()
                .map_or("the stack".to_string(), |c| format!("component {c}"));
            outln!("nothing to resume: no pause of {what} of stack {label} is in force");
            return EXIT_OK;
        }
        if let Err(e) = pause::save(cluster.client(), &s.namespace, &s.stack, &pauses).await {
            super::report_error(&crate::error::Error::Cluster(e), args.output);
            return EXIT_ERROR;
        }
        if args.output.structured() {
            super::emit(&json(ended), args.output);
        } else if view.daemon.held {
            outln!("resumed stack {label}: the daemon reports what was changed by hand and restores the committed state now");
        } else {
            outln!(
                "resumed stack {label}; no daemon holds it: restore the committed state with `converge apply --stack {} -n {}`",
                s.stack, s.namespace
            );
        }
        EXIT_OK
    })
}

/// The selectors that name exactly this stack.
fn stack_of(s: &crate::status::StackStatus) -> StackArgs {
    StackArgs {
        stack: Some(s.stack.clone()),
        namespace: Some(s.namespace.clone()),
        ..StackArgs::default()
    }
}

/// `converge <verb> [component] [--stack s] [-n ns] [--context c]<rest>`, as a person types it.
fn command(verb: &str, component: Option<&str>, target: &StackArgs, rest: &str) -> String {
    let mut c = format!("converge {verb}");
    if let Some(x) = component {
        c.push_str(&format!(" {x}"));
    }
    if let Some(x) = &target.stack {
        c.push_str(&format!(" --stack {x}"));
    }
    if let Some(x) = &target.namespace {
        c.push_str(&format!(" -n {x}"));
    }
    if let Some(x) = &target.context {
        c.push_str(&format!(" --context {x}"));
    }
    c.push_str(rest);
    c
}

/// The one stack the selectors name in the cluster, and that it has `component`; each failure
/// printed as one line and its fix.
async fn find(
    source: &SourceArgs,
    target: &StackArgs,
    component: Option<&str>,
    verb: &str,
    format: Format,
) -> Result<(Cluster, StackView), u8> {
    let fail = |e: crate::cluster::ClusterError| {
        super::report_error(&crate::error::Error::Cluster(e), format)
    };
    let cluster = Cluster::connect(target.kubeconfig.as_deref(), target.context.as_deref())
        .await
        .map_err(fail)?;
    cluster.ping().await.map_err(fail)?;
    let pick = Pick {
        stack: target.stack.clone(),
        namespace: target.namespace.clone(),
        named: crate::reconcile::lookup::named(
            &source.repo,
            &source.rev,
            &super::selection(source, target),
        ),
    };
    let mut stacks = view::gather(&cluster, &pick).await.map_err(fail)?.stacks;
    let rest = if verb == "pause" { " --for 15m" } else { "" };
    match stacks.len() {
        0 => {
            let apply = command("apply", None, target, "");
            problem(
                format,
                &format!("no stack to {verb}: converge has applied none here that the selectors name"),
                &format!("apply it first (`{apply}`), or name another with --stack and -n (`converge status` lists them)"),
            );
            return Err(EXIT_ERROR);
        }
        1 => {}
        _ => {
            let first = &stacks[0].recorded;
            let names: Vec<String> = stacks
                .iter()
                .map(|v| format!("{} (namespace {})", v.recorded.stack, v.recorded.namespace))
                .collect();
            problem(
                format,
                &format!("several stacks match: {}", names.join(", ")),
                &format!(
                    "name one: `{}`",
                    command(verb, component, &stack_of(first), rest)
                ),
            );
            return Err(EXIT_ERROR);
        }
    }
    let view = stacks.remove(0);
    if let Some(c) = component {
        let known: Vec<&str> = view
            .recorded
            .components
            .iter()
            .map(|x| x.name.as_str())
            .collect();
        if !known.contains(&c) {
            let s = &view.recorded;
            let fix = match known.first() {
                Some(k) => format!(
                    "its components are {}: `{}`",
                    known.join(", "),
                    command(verb, Some(k), &stack_of(s), rest)
                ),
                None => format!(
                    "it has no components yet; {verb} the whole stack: `{}`",
                    command(verb, None, &stack_of(s), rest)
                ),
            };
            problem(
                format,
                &format!(
                    "stack {} has no component `{c}`",
                    super::stack_label(&s.stack, &s.dir, &s.namespace)
                ),
                &fix,
            );
            return Err(EXIT_ERROR);
        }
    }
    Ok((cluster, view))
}

/// The stack's pause record; an unreadable one is started anew (it held no pause anyway).
async fn read(
    cluster: &Cluster,
    s: &crate::status::StackStatus,
    format: Format,
) -> Result<Pauses, u8> {
    match pause::load(cluster.client(), &s.namespace, &s.stack).await {
        Ok(Ok(p)) => Ok(p),
        Ok(Err(why)) => {
            errln!(
                "warning: the pause record of stack {} was unreadable ({why}); writing a new one",
                s.stack
            );
            Ok(Pauses::default())
        }
        Err(e) => Err(super::report_error(
            &crate::error::Error::Cluster(e),
            format,
        )),
    }
}

/// One refusal and its fix: two lines on stderr, or `{"error", "hint"}` for `-o json`/`yaml`.
fn problem(format: Format, what: &str, fix: &str) {
    if format.structured() {
        super::emit(&serde_json::json!({"error": what, "hint": fix}), format);
    } else {
        super::print_problem(what, Some(fix), None);
    }
}
