//! The reconcile flag group, and the one place the command line becomes [`reconcile::Options`]:
//! every command that reconciles (`apply`, `diff`, `run`) flattens the same groups (stack and
//! cluster, reconcile, build) and resolves them here, field by field, so a flag no command maps
//! does not compile.

use std::time::Duration;

use clap::Args;

use super::build::BuildFlags;
use super::StackArgs;
use crate::reconcile::Options;

/// The help heading of the reconcile flags.
const RECONCILE: &str = "Reconcile";

/// How a reconcile treats the cluster: the same flags on `apply`, `diff` and `run`.
#[derive(Debug, Clone, Args)]
pub struct ReconcileFlags {
    /// How long to wait for the stack to become healthy.
    #[arg(long, default_value = "5m", value_parser = humantime::parse_duration, help_heading = RECONCILE)]
    pub timeout: Duration,
    /// How long a Pod may keep failing (crash loop, image pull) before its rollout counts as failed.
    #[arg(long, default_value = "30s", value_parser = humantime::parse_duration, help_heading = RECONCILE)]
    pub fail_fast: Duration,
    /// Take ownership of fields another field manager owns.
    #[arg(long, help_heading = RECONCILE)]
    pub force_conflicts: bool,
    /// Delete and re-create objects whose immutable fields changed, when that loses no data.
    #[arg(long, help_heading = RECONCILE)]
    pub recreate: bool,
    /// Allow pruning more than half of what converge manages in one go.
    #[arg(long, help_heading = RECONCILE)]
    pub allow_mass_prune: bool,
}

/// Who runs the reconcile: decides the options no shared group holds.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Caller {
    /// `converge apply`: `--full`, and whether `--force` overrides a running daemon.
    Apply {
        /// Compare every object with the cluster.
        full: bool,
        /// Apply even though a daemon holds the stack's Lease.
        force: bool,
    },
    /// `converge diff`: a dry run, which never defers and always compares what it renders.
    Diff,
    /// `converge run`: the daemon sets `full` per reconcile and holds the Lease itself.
    Daemon,
}

/// The reconcile options the flags ask for, every field set here.
pub(crate) fn reconcile_options(
    dir: &str,
    target: &StackArgs,
    flags: &ReconcileFlags,
    build: &BuildFlags,
    caller: Caller,
) -> Options {
    let (full, defer_to_daemon) = match caller {
        Caller::Apply { full, force } => (full, !force),
        Caller::Diff | Caller::Daemon => (false, false),
    };
    Options {
        kubeconfig: target.kubeconfig.clone(),
        context: target.context.clone(),
        stack: target.stack.clone(),
        namespace: target.namespace.clone(),
        dir: dir.to_string(),
        force_conflicts: flags.force_conflicts,
        recreate: flags.recreate,
        allow_mass_prune: flags.allow_mass_prune,
        full,
        timeout: flags.timeout,
        fail_fast: flags.fail_fast,
        // Overrides are for tests driving the library; the CLI always builds content tags.
        builder: build.builder,
        build: build.options(),
        // The daemon wires these to its own channels; a one-shot command has none.
        cancel: None,
        preempt: None,
        defer_to_daemon,
        own_deletions: None,
        stalled_tip: None,
        auto_revert: None,
    }
}

#[cfg(test)]
mod tests {
    use clap::Parser;

    use super::super::{Cli, Command};
    use crate::desired::schema::BuilderKind;

    fn parse(line: &str) -> Cli {
        Cli::try_parse_from(line.split_whitespace()).unwrap_or_else(|e| panic!("`{line}`: {e}"))
    }

    #[test]
    fn every_cluster_command_takes_kubeconfig_and_context() {
        for cmd in [
            "apply", "diff", "status", "build", "doctor", "explain", "down", "run", "mcp",
        ] {
            parse(&format!(
                "converge {cmd} --kubeconfig /k --context c --stack dev -n ns"
            ));
        }
    }

    #[test]
    fn pause_takes_a_component_a_humantime_length_and_the_stack_selectors() {
        let Command::Pause(p) =
            parse("converge pause backend --for 1h30m --force --stack dev -n ns --context c")
                .command
        else {
            panic!("not pause");
        };
        assert_eq!(p.component.as_deref(), Some("backend"));
        assert_eq!(p.length, std::time::Duration::from_secs(5400));
        assert!(p.force);
        assert!(Cli::try_parse_from(["converge", "pause", "--for", "-5m"]).is_err());
        assert!(
            Cli::try_parse_from(["converge", "pause", "backend"]).is_err(),
            "--for is required"
        );
        let Command::Resume(r) = parse("converge resume --stack dev").command else {
            panic!("not resume");
        };
        assert!(r.component.is_none());
    }

    #[test]
    fn run_accepts_the_command_builder_and_resolves_every_group_into_its_config() {
        let cli = parse(concat!(
            "converge run --builder command --command buildah --exists-command inspect",
            " --kubeconfig /k --context c --stack dev --timeout 7m --fail-fast 9s",
            " --force-conflicts --recreate --allow-mass-prune --parallelism 3 --shutdown-grace 4s",
        ));
        let Command::Run(args) = cli.command else {
            panic!("not run: {cli:?}");
        };
        let cfg = args.config();
        assert_eq!(cfg.shutdown_grace, std::time::Duration::from_secs(4));
        let o = &cfg.options;
        assert_eq!(o.kubeconfig.as_deref(), Some(std::path::Path::new("/k")));
        assert_eq!(o.builder, Some(BuilderKind::Command));
        assert_eq!(o.build.command_template.as_deref(), Some("buildah"));
        assert_eq!(o.build.command_exists_template.as_deref(), Some("inspect"));
        assert_eq!(o.build.parallelism, 3);
        assert_eq!(
            (o.context.as_deref(), o.stack.as_deref()),
            (Some("c"), Some("dev"))
        );
        assert_eq!(o.timeout, std::time::Duration::from_secs(420));
        assert_eq!(o.fail_fast, std::time::Duration::from_secs(9));
        assert!(o.force_conflicts && o.recreate && o.allow_mass_prune);
        assert!(!o.defer_to_daemon && !o.full);
    }

    #[test]
    fn apply_defers_to_a_daemon_unless_forced_and_diff_never_does() {
        let Command::Apply(a) = parse("converge apply --full").command else {
            panic!("not apply");
        };
        let o = a.options();
        assert!(o.defer_to_daemon && o.full);
        let Command::Apply(a) = parse("converge apply --force").command else {
            panic!("not apply");
        };
        assert!(!a.options().defer_to_daemon);
        let Command::Diff(d) = parse("converge diff --recreate --builder none").command else {
            panic!("not diff");
        };
        let o = d.options();
        assert!(o.recreate && !o.defer_to_daemon);
        assert_eq!(o.builder, Some(BuilderKind::None));
    }
}
