//! `converge build`: compute every stack's content tags from a commit and build the missing
//! images; prints per component its tag and whether it was built, skipped, already there or failed.

use std::time::Duration;

use clap::Args;
use serde_json::json;

use super::{Format, SourceArgs, EXIT_ERROR, EXIT_FINDINGS, EXIT_OK};
use crate::build::{self, Action, BuildEnv, BuildOptions};
use crate::desired::{self, schema::BuilderKind};
use crate::error::Error;
use crate::reconcile;

/// How to build images: shared by `converge build`, `apply` and `run`.
#[derive(Debug, Clone, Args)]
pub struct BuildFlags {
    /// Where to build; each stack's `builder`, else minikube for a minikube context, else docker.
    #[arg(long, value_enum)]
    pub builder: Option<BuilderKind>,
    /// Builds at once.
    #[arg(long, default_value_t = 2)]
    pub parallelism: usize,
    /// The command builder's template, e.g. `buildah bud -t {image} -f {dockerfile} {context}`.
    #[arg(long = "command", env = "CONVERGE_BUILD_COMMAND")]
    pub command_template: Option<String>,
    /// The command builder's existence check (exit 0 = exists), e.g. `buildah inspect {image}`.
    #[arg(long = "exists-command", env = "CONVERGE_BUILD_EXISTS_COMMAND")]
    pub exists_template: Option<String>,
    /// `DOCKER_HOST` for the docker builder (the environment's when absent).
    #[arg(long)]
    pub docker_host: Option<String>,
    /// minikube profile.
    #[arg(long)]
    pub minikube_profile: Option<String>,
    /// The registry builder's prefix, `host[:port]/path` (wins over the stack's `registry.prefix`).
    #[arg(long, env = "CONVERGE_REGISTRY")]
    pub registry: Option<String>,
    /// The registry builder's BuildKit address, e.g. `tcp://buildkitd:1234` (wins over the
    /// stack's `registry.buildkit`; buildctl reads the same variable).
    #[arg(long, env = "BUILDKIT_HOST")]
    pub buildkit_addr: Option<String>,
    /// The registry builder's pull Secret in each stack's namespace (wins over the stack's
    /// `registry.pullSecret`): Pods pull the pushed images with it.
    #[arg(long, env = "CONVERGE_PULL_SECRET")]
    pub pull_secret: Option<String>,
    /// Limit for one build, e.g. `20m`.
    #[arg(long, default_value = "30m", value_parser = humantime::parse_duration)]
    pub build_timeout: Duration,
}

impl BuildFlags {
    /// The build options, every field set here, with the build environment read now (once: the
    /// daemon keeps these for its life); the builder is resolved per stack.
    pub fn options(&self) -> BuildOptions {
        BuildOptions {
            // A placeholder: `BuildOptions::for_stack` chooses each stack's builder (and kind
            // cluster) before an engine is made.
            builder: BuilderKind::Docker,
            parallelism: self.parallelism.max(1),
            keep: build::KEEP_TAGS,
            command_template: self.command_template.clone(),
            docker_host: self.docker_host.clone(),
            command_exists_template: self.exists_template.clone(),
            minikube_profile: self.minikube_profile.clone(),
            registry: self.registry.clone().filter(|r| !r.is_empty()),
            buildkit_addr: self.buildkit_addr.clone().filter(|a| !a.is_empty()),
            pull_secret: self.pull_secret.clone().filter(|s| !s.is_empty()),
            env: BuildEnv::from_process(),
            kind_cluster: None,
            check_timeout: build::CHECK_TIMEOUT,
            build_timeout: self.build_timeout,
            unconfirmed: build::Unconfirmed::default(),
        }
    }
}

/// Arguments of `converge build`.
#[derive(Debug, Args)]
pub struct BuildArgs {
    #[command(flatten)]
    source: SourceArgs,
    #[command(flatten)]
    target: super::StackArgs,
    #[command(flatten)]
    flags: BuildFlags,
    /// Output format.
    #[arg(short, long, value_enum, default_value_t = Format::Text)]
    output: Format,
}

pub(super) fn run(args: &BuildArgs) -> u8 {
    let fail = |e: &(dyn std::error::Error + 'static)| {
        if args.output.structured() {
            let mut v = json!({"error": e.to_string()});
            if let Some(h) = crate::hints::for_error(e) {
                v["hint"] = h.into();
            }
            super::emit(&v, args.output);
        } else {
            super::print_error(e);
        }
        EXIT_ERROR
    };
    let selection = super::selection(&args.source, &args.target);
    let loaded = match reconcile::load(
        &args.source.repo,
        &args.source.rev,
        &selection,
        reconcile::Images::Plan,
    ) {
        Ok(c) => c,
        Err(e @ (Error::Invalid { .. } | Error::UnknownStack { .. })) => {
            super::report_error_as(&e, args.output);
            return EXIT_ERROR;
        }
        Err(e) => return fail(&e),
    };
    let commit = loaded.id.clone();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => return fail(&e),
    };
    let (cancel_tx, cancel_rx) = tokio::sync::watch::channel(false);
    runtime.spawn(async move {
        if tokio::signal::ctrl_c().await.is_ok() {
            let _ = cancel_tx.send(true);
        }
    });

    let build_opts = args.flags.options();
    let mut stacks_out = Vec::new();
    let mut any_failed = false;
    for planned in &loaded.stacks {
        let (stack, plans) = (&planned.stack, &planned.images);
        let label = super::stack_label(&stack.spec.name, &stack.dir, &stack.spec.namespace);
        let context = args
            .target
            .context
            .clone()
            .unwrap_or_else(|| stack.spec.context.clone());
        let built = runtime.block_on(reconcile::build_images(
            &args.source.repo,
            &commit,
            planned,
            args.flags.builder,
            &context,
            &build_opts,
            cancel_rx.clone(),
        ));
        let reconcile::StackBuild {
            choice,
            outcomes,
            calls,
        } = match built {
            Ok(b) => b,
            Err(e) => return fail(&e),
        };
        let mut images = Vec::new();
        for (p, o) in plans.iter().zip(&outcomes) {
            let (word, reason, tail) = match &o.action {
                Action::Exists => ("exists", None, None),
                Action::Built => ("built", None, None),
                Action::Loaded => ("loaded", None, None),
                Action::Skipped => (
                    "skipped",
                    Some("builder `none`: not confirmed to exist"),
                    None,
                ),
                Action::Failed { log_tail, reason } => {
                    any_failed = true;
                    ("failed", Some(reason.as_str()), Some(log_tail.as_str()))
                }
            };
            if args.output == Format::Text {
                let line = format!("{}  {}  {word}", o.component, o.image);
                match reason {
                    Some(r) => outln!("{line}: {r}"),
                    None => outln!("{line}"),
                }
                if let Some(t) = tail.filter(|t| !t.is_empty()) {
                    for l in t.lines() {
                        outln!("    | {l}");
                    }
                }
            }
            images.push(json!({
                "component": o.component,
                "image": o.image,
                "digest": p.digest,
                "action": word,
                "reason": reason,
                "logTail": tail,
            }));
        }
        let builder = choice.builder.as_str();
        if args.output == Format::Text {
            outln!(
                "stack {label}: {}, builder {builder} ({}), {}, {} (commit {})",
                super::validate::plural(plans.len(), "image"),
                choice.reason,
                super::validate::plural(calls.checks, "existence check"),
                super::validate::plural(calls.builds, "build"),
                desired::short_id(&commit)
            );
        }
        stacks_out.push(json!({
            "name": stack.spec.name,
            "dir": stack.dir,
            "namespace": stack.spec.namespace,
            "builder": builder,
            "builderReason": choice.reason,
            "images": images,
            "engineCalls": calls,
        }));
    }
    if args.output.structured() {
        let out = json!({"commit": commit, "stacks": stacks_out});
        super::emit(&out, args.output);
    }
    if any_failed {
        EXIT_FINDINGS
    } else {
        EXIT_OK
    }
}

#[cfg(test)]
mod tests {
    use clap::{Args, Command};

    /// `service install` captures [`crate::build::ENV_NAMES`]: they must be exactly the
    /// variables the build flags fall back to.
    #[test]
    fn the_build_flags_read_exactly_the_variables_service_install_captures() {
        let cmd = super::BuildFlags::augment_args(Command::new("t"));
        let mut read: Vec<String> = cmd
            .get_arguments()
            .filter_map(|a| a.get_env())
            .map(|e| e.to_string_lossy().into_owned())
            .collect();
        read.sort();
        let mut captured: Vec<String> = crate::build::ENV_NAMES
            .iter()
            .map(|n| n.to_string())
            .collect();
        captured.sort();
        assert_eq!(read, captured);
    }
}
