//! `converge build`: compute every stack's content tags from a commit and build the missing
//! images; prints per component its tag and whether it was built, skipped, already there or failed.

use std::time::Duration;

use clap::{Args, ValueEnum};
use serde_json::json;

use super::{Format, SourceArgs, EXIT_ERROR, EXIT_FINDINGS, EXIT_OK};
use crate::build::{self, Action, BuildOptions, DigestCache, Engine};
use crate::desired::{self, schema::BuilderKind};
use crate::source::Repo;

/// The `--builder` choices.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum BuilderArg {
    /// Into minikube's runtime (`minikube docker-env`, or `minikube image build`).
    Minikube,
    /// On the Docker engine named by `DOCKER_HOST` (or `--docker-host`).
    Docker,
    /// With `--command`.
    Command,
    /// Compute tags only.
    None,
}

impl From<BuilderArg> for BuilderKind {
    fn from(b: BuilderArg) -> Self {
        match b {
            BuilderArg::Minikube => BuilderKind::Minikube,
            BuilderArg::Docker => BuilderKind::Docker,
            BuilderArg::Command => BuilderKind::Command,
            BuilderArg::None => BuilderKind::None,
        }
    }
}

/// How to build images: shared by `converge build`, `apply` and `run`.
#[derive(Debug, Clone, Args)]
pub struct BuildFlags {
    /// Where to build; each stack's `builder`, else minikube for a minikube context, else docker.
    #[arg(long, value_enum)]
    pub builder: Option<BuilderArg>,
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
    /// Limit for one build, e.g. `20m`.
    #[arg(long, default_value = "30m", value_parser = humantime::parse_duration)]
    pub build_timeout: Duration,
}

impl BuildFlags {
    /// The build options these flags ask for, with `builder` resolved for `stack`.
    pub fn options_for(&self, stack: &desired::Stack) -> BuildOptions {
        BuildOptions {
            builder: build::resolve_builder(self.builder.map(Into::into), stack),
            ..self.options()
        }
    }

    /// The build options, the builder left to be resolved per stack.
    pub fn options(&self) -> BuildOptions {
        BuildOptions {
            parallelism: self.parallelism.max(1),
            command_template: self.command_template.clone(),
            command_exists_template: self.exists_template.clone(),
            docker_host: self.docker_host.clone(),
            minikube_profile: self.minikube_profile.clone(),
            build_timeout: self.build_timeout,
            ..BuildOptions::default()
        }
    }
}

/// Arguments of `converge build`.
#[derive(Debug, Args)]
pub struct BuildArgs {
    #[command(flatten)]
    source: SourceArgs,
    #[command(flatten)]
    flags: BuildFlags,
    /// Output format.
    #[arg(short, long, value_enum, default_value_t = Format::Text)]
    output: Format,
}

pub(super) fn run(args: &BuildArgs) -> u8 {
    let fail = |e: &dyn std::error::Error| {
        match args.output {
            Format::Json => outln!("{}", json!({"error": e.to_string()})),
            Format::Text => super::print_error(e),
        }
        EXIT_ERROR
    };
    let repo = match Repo::open(&args.source.repo) {
        Ok(r) => r,
        Err(e) => return fail(&e),
    };
    let snapshot = match repo.snapshot(&args.source.rev) {
        Ok(s) => s,
        Err(e) => return fail(&e),
    };
    let commit = snapshot.commit().to_string();
    let loaded = match desired::load(&snapshot, &args.source.dir) {
        Ok(l) => l,
        Err(report) => {
            if args.output == Format::Text {
                out!("{}", report.render(super::color_stdout()));
            }
            return fail(&crate::error::Error::Invalid {
                commit: commit.clone(),
                report: Box::new(report),
            });
        }
    };
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => return fail(&e),
    };
    let cache = DigestCache::new();
    let (cancel_tx, cancel_rx) = tokio::sync::watch::channel(false);
    runtime.spawn(async move {
        if tokio::signal::ctrl_c().await.is_ok() {
            let _ = cancel_tx.send(true);
        }
    });

    let mut stacks_out = Vec::new();
    let mut any_failed = false;
    for stack in &loaded.state.stacks {
        let plans = match build::plan(&snapshot, stack, &cache) {
            Ok(p) => p,
            Err(e) => return fail(&e),
        };
        let opts = args.flags.options_for(stack);
        let engine = match Engine::new(&opts) {
            Ok(e) => e,
            Err(e) => return fail(&e),
        };
        let outcomes = runtime.block_on(build::ensure_with(
            &engine,
            repo.root(),
            &commit,
            &plans,
            stack,
            &opts,
            cancel_rx.clone(),
        ));
        let outcomes = match outcomes {
            Ok(o) => o,
            Err(e) => return fail(&e),
        };
        let calls = engine.calls();
        let mut images = Vec::new();
        for (p, o) in plans.iter().zip(&outcomes) {
            let (word, reason, tail) = match &o.action {
                Action::Exists => ("exists", None, None),
                Action::Built => ("built", None, None),
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
                let line = format!(
                    "{}@{}/{}  {}  {word}",
                    stack.spec.name, stack.spec.namespace, o.component, o.image
                );
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
        if args.output == Format::Text {
            outln!(
                "{}@{}: {} images, builder {:?}, {} existence checks, {} builds (commit {})",
                stack.spec.name,
                stack.spec.namespace,
                plans.len(),
                opts.builder,
                calls.checks,
                calls.builds,
                desired::short_id(&commit)
            );
        }
        stacks_out.push(json!({
            "name": stack.spec.name,
            "namespace": stack.spec.namespace,
            "builder": opts.builder,
            "images": images,
            "engineCalls": calls,
        }));
    }
    if args.output == Format::Json {
        let out = json!({"commit": commit, "stacks": stacks_out});
        outln!("{}", serde_json::to_string_pretty(&out).unwrap_or_default());
    }
    if any_failed {
        EXIT_FINDINGS
    } else {
        EXIT_OK
    }
}
