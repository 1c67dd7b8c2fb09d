//! `converge status`: the status converge recorded in the cluster; needs neither the repository
//! nor the daemon.

use clap::Args;
use k8s_openapi::api::core::v1::ConfigMap;
use kube::api::{Api, ListParams};

use super::{Format, EXIT_ERROR, EXIT_FINDINGS, EXIT_OK};
use crate::cluster::Cluster;
use crate::status::{self, StackStatus};
use crate::vocabulary::{LABEL_MANAGED_BY, MANAGED_BY};

/// Arguments of `converge status`.
#[derive(Debug, Args)]
pub struct StatusArgs {
    /// The kube context (the kubeconfig's current one when absent).
    #[arg(long, env = "CONVERGE_CONTEXT")]
    context: Option<String>,
    /// Only this stack.
    #[arg(long)]
    stack: Option<String>,
    /// Output format.
    #[arg(short, long, value_enum, default_value_t = Format::Text)]
    output: Format,
}

pub(super) fn run(args: &StatusArgs) -> u8 {
    let rt = match super::runtime() {
        Ok(rt) => rt,
        Err(code) => return code,
    };
    rt.block_on(async {
        let (statuses, unreadable) = match read(args).await {
            Ok(s) => s,
            Err(e) => return super::report_error(&crate::error::Error::Cluster(e), args.output),
        };
        for u in &unreadable {
            errln!("error: {u}");
        }
        match args.output {
            Format::Json => outln!(
                "{}",
                serde_json::to_string_pretty(&statuses).unwrap_or_default()
            ),
            Format::Text if statuses.is_empty() && !unreadable.is_empty() => {}
            Format::Text => print_text(&statuses),
        }
        if statuses.is_empty() {
            EXIT_ERROR
        } else if unreadable.is_empty() && statuses.iter().all(|s| s.ready) {
            EXIT_OK
        } else {
            EXIT_FINDINGS
        }
    })
}

/// The readable records, and one message per record that does not parse (never dropped silently).
async fn read(
    args: &StatusArgs,
) -> Result<(Vec<StackStatus>, Vec<String>), crate::cluster::ClusterError> {
    let cluster = Cluster::connect(None, args.context.as_deref()).await?;
    let api: Api<ConfigMap> = Api::all(cluster.client().clone());
    let lp = ListParams::default().labels(&format!("{LABEL_MANAGED_BY}={MANAGED_BY}"));
    let list = api
        .list(&lp)
        .await
        .map_err(|source| crate::cluster::ClusterError::Api {
            action: "listing",
            object: "status records".into(),
            source,
        })?;
    let mut out: Vec<StackStatus> = Vec::new();
    let mut unreadable = Vec::new();
    for c in list.items {
        let name = c.metadata.name.clone().unwrap_or_default();
        if !(name.starts_with("converge-") && name.ends_with("-status")) {
            continue;
        }
        let namespace = c.metadata.namespace.clone().unwrap_or_default();
        let stack = c
            .metadata
            .labels
            .as_ref()
            .and_then(|l| l.get(crate::vocabulary::LABEL_STACK).cloned());
        if args
            .stack
            .as_ref()
            .is_some_and(|n| stack.as_ref().is_some_and(|s| s != n))
        {
            continue;
        }
        let text = c.data.and_then(|mut d| d.remove(status::DATA_KEY));
        match status::parse(text) {
            status::Record::Missing => {}
            status::Record::Status(s) => {
                if args.stack.as_ref().is_none_or(|n| n == &s.stack) {
                    out.push(s);
                }
            }
            status::Record::Unreadable { error, .. } => unreadable.push(format!(
                "the status record in ConfigMap/{name} (namespace {namespace}) is unreadable ({error}); it is left as it is, and the next reconcile keeps it under key `{}<time>` before recording anew",
                status::UNREADABLE_PREFIX
            )),
        }
    }
    out.sort_by(|a, b| (&a.namespace, &a.stack).cmp(&(&b.namespace, &b.stack)));
    Ok((out, unreadable))
}

fn print_text(statuses: &[StackStatus]) {
    if statuses.is_empty() {
        errln!("no converge status in this cluster: nothing has been applied yet (run `converge apply`)");
        return;
    }
    for s in statuses {
        let short = |c: &str| crate::desired::short_id(c).to_string();
        outln!(
            "stack {} (namespace {}): {} — {}",
            s.stack,
            s.namespace,
            if s.ready { "Ready" } else { "NotReady" },
            s.reason
        );
        outln!("  message: {}", s.message);
        outln!(
            "  last applied {}, last healthy {}",
            short(&s.last_applied_commit),
            short(&s.last_healthy_commit)
        );
        outln!(
            "  {:<12} {:<12} {:<8} {:<40} SINCE",
            "COMPONENT",
            "HEALTH",
            "READY",
            "IMAGE"
        );
        for c in &s.components {
            outln!(
                "  {:<12} {:<12} {:<8} {:<40} {}",
                c.name,
                c.health,
                format!("{}/{}", c.ready, c.desired),
                c.image,
                c.since
            );
            if !c.last_error.is_empty() {
                outln!("    error: {}", c.last_error);
            }
        }
        outln!("  history:");
        for h in &s.history {
            outln!(
                "    {} {} {:<24} {} ms",
                h.time,
                short(&h.commit),
                h.result,
                h.duration_ms
            );
        }
    }
}
