//! `converge doctor` as a table of checks: each check has an id, a gather step (reads, never
//! writes: [`gather`]) and a pure decide step ([`decide`], unit-tested without a cluster). A
//! skipped check is never gathered, and work several checks share (the cluster connection, the
//! rendered stack) is done only when one of them runs. This file owns the table and the order;
//! the checks' vocabulary and the resource arithmetic the decisions use are in [`rules`].

pub mod decide;
pub mod gather;
pub mod rules;

use std::path::Path;

use crate::desired::schema::BuilderKind;
use crate::desired::Stack;
use crate::render::Helm;
pub use rules::{Check, CheckId, Status};

/// What doctor checks, resolved by the CLI.
#[derive(Debug)]
pub struct Request<'a> {
    /// The stacks of the commit, or why they could not be read.
    pub stacks: Result<Vec<Stack>, String>,
    /// The checkout.
    pub repo: &'a Path,
    /// The revision read.
    pub rev: &'a str,
    /// The desired-state directory.
    pub dir: &'a str,
    /// The kubeconfig file, when not the default.
    pub kubeconfig: Option<&'a Path>,
    /// The kube context, instead of each stack's.
    pub context: Option<&'a str>,
    /// The builder to check, instead of the one converge would choose.
    pub builder: Option<BuilderKind>,
    /// Checks not to run.
    pub skip: &'a [CheckId],
}

impl Request<'_> {
    fn wants(&self, check: CheckId) -> bool {
        !self.skip.contains(&check)
    }

    /// Whether any check it runs satisfies `needs`.
    fn wants_any(&self, needs: fn(CheckId) -> bool) -> bool {
        CheckId::ALL.into_iter().any(|c| needs(c) && self.wants(c))
    }
}

/// Runs every check not skipped, in table order, and returns one line per check (per stack for
/// the checks of a stack).
pub async fn run(req: &Request<'_>) -> Vec<Check> {
    let mut out = vec![decide::desired(req.repo, req.rev, req.dir, &req.stacks)];
    let stacks: &[Stack] = req.stacks.as_deref().unwrap_or_default();
    let helm = Helm::from_env();
    let render = req.wants_any(CheckId::needs_render);
    // helm is asked when its check runs, or when a rendering check needs it.
    let helm_ok = if req.wants(CheckId::Helm) || render {
        let version = helm.check().await.map_err(|e| e.to_string());
        out.push(decide::helm(&version));
        version.is_ok()
    } else {
        false
    };
    let connect = req.wants_any(CheckId::needs_cluster);
    let env = crate::build::BuildEnv::from_process();
    if stacks.is_empty() && connect {
        // Still check the cluster the flags (or the kubeconfig) name.
        let _ = connect_checks(req, req.context, &mut out).await;
    }
    for stack in stacks {
        let context = req.context.unwrap_or(&stack.spec.context);
        if req.wants(CheckId::Builder) {
            let choice = crate::build::choose_builder(req.builder, stack, context, &env);
            let facts = if choice.builder == BuilderKind::Registry {
                gather::registry(stack, context, &env).await
            } else {
                gather::builder(choice.builder, choice.minikube_profile.as_deref(), &env).await
            };
            out.push(decide::builder(stack, &choice, &facts));
        }
        if !connect {
            continue;
        }
        let Some(cluster) = connect_checks(req, Some(context), &mut out).await else {
            continue;
        };
        if req.wants(CheckId::Secrets) {
            let refs = decide::secret_refs(stack);
            let keys = if refs.is_empty() {
                Ok(Default::default())
            } else {
                gather::secret_keys(&cluster, &stack.spec.namespace, &refs).await
            };
            out.push(decide::secrets(stack, &refs, &keys));
        }
        if !(helm_ok && render) {
            continue;
        }
        let objects = match gather::render(req.repo, req.rev, req.dir, stack, &helm, &cluster).await
        {
            Ok(objects) => objects,
            Err(e) => {
                let e = e.to_string();
                out.extend(
                    CheckId::ALL
                        .into_iter()
                        .filter(|id| id.needs_render())
                        .map(|id| decide::unrendered(id, stack, &e, req.repo)),
                );
                continue;
            }
        };
        if req.wants(CheckId::Nodeport) {
            let live = gather::services(&cluster).await;
            out.push(decide::nodeport(stack, &objects, &live));
        }
        if req.wants(CheckId::Quota) {
            let facts = gather::quota(&cluster, &stack.spec.namespace).await;
            out.push(decide::quota(&stack.spec.namespace, &objects, &facts));
        }
        if req.wants(CheckId::Capacity) {
            let facts = gather::capacity(&cluster).await;
            out.push(decide::capacity(stack, &objects, &facts));
        }
    }
    if req.wants(CheckId::Service) {
        out.push(decide::service(&gather::service(req.repo).await));
    }
    out.retain(|c| req.wants(c.check));
    out
}

/// The `context` and `cluster` checks; the connection when the cluster answers.
async fn connect_checks(
    req: &Request<'_>,
    context: Option<&str>,
    out: &mut Vec<Check>,
) -> Option<crate::cluster::Cluster> {
    let cluster = crate::cluster::Cluster::connect(req.kubeconfig, context).await;
    out.push(decide::context(context, cluster.as_ref().map(drop)));
    let cluster = cluster.ok()?;
    let facts = gather::cluster(&cluster).await;
    out.push(decide::cluster(context, cluster.context(), &facts));
    facts.ok().map(|_| cluster)
}
