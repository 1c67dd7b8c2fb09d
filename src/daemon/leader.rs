//! Standby mode (`converge run --standby --instance <namespace>/<release>`): replicas of one
//! in-cluster installation wait for the stacks' Leases instead of exiting, the way client-go's
//! leader election does; a second installation is refused and never writes.
//!
//! It only decides whether this daemon leads: the loop ([`super::run`]) starts once
//! [`wait_to_lead`] returns the Leases, and stops (exits, for the Pod to restart as a standby)
//! when a renewer reports a [`super::lock::Loss`].

use futures::StreamExt;
use signal_hook::consts::signal::{SIGINT, SIGTERM};
use tracing::{debug, info, warn};

use super::lock::{
    ensure_namespace, lease_name, Acquired, Claim, Claimant, Holder, LeaseGuard, LeaseTiming,
};
use super::metrics::{Metrics, Standing};
use super::{Config, StackRef};
use crate::reconcile::Clusters;

/// Who this daemon claims Leases as.
pub(super) fn claimant(cfg: &Config, holder: &Holder) -> Claimant {
    Claimant {
        identity: holder.identity(),
        checkout: holder.checkout.clone(),
        instance: cfg.standby.clone(),
    }
}

/// The `/readyz` standing for a Lease this daemon could not take (pure).
pub fn standing(claim: &Claim, stack: &str, namespace: &str, mine: &str) -> Option<Standing> {
    let lease = format!("{namespace}/{}", lease_name(stack));
    match claim {
        Claim::Take => None,
        Claim::Standby { holder } => Some(Standing::Standby(format!(
            "standby, leader is {holder} (stack {stack}, Lease {lease})"
        ))),
        Claim::Refused { holder, instance } => Some(Standing::NotLeading(format!(
            "refused: stack {stack} is managed by {holder} of instance {instance} (Lease {lease}); this is instance {mine}: uninstall the other one (it releases the Lease) and this one takes over"
        ))),
        Claim::Held { holder } => Some(Standing::NotLeading(format!(
            "refused: stack {stack} is managed by {holder}, outside standby mode (Lease {lease}); this is instance {mine}"
        ))),
    }
}

/// The Pod label saying which replica leads (`leader`) and which stand by (`standby`): the
/// chart's webhook Service selects the leader, so a push notification reaches the one replica
/// that can act on it.
pub const LABEL_ROLE: &str = "converge.dev/role";

/// Labels this daemon's own Pod with its role (best effort: outside a Pod, or without the
/// permission, it says so once and carries on; only webhooks depend on it, and polling covers
/// them).
pub(super) async fn mark_pod(
    clusters: &mut Clusters,
    cfg: &Config,
    targets: &[StackRef],
    role: &str,
) {
    let (Ok(pod), Ok(ns)) = (std::env::var("POD_NAME"), std::env::var("POD_NAMESPACE")) else {
        return;
    };
    let Some(t) = targets.first() else {
        return;
    };
    let patch = serde_json::json!({"metadata": {"labels": {LABEL_ROLE: role}}});
    let result = match clusters
        .get(cfg.options.kubeconfig.as_deref(), &t.context)
        .await
    {
        Ok(c) => {
            let api: kube::Api<k8s_openapi::api::core::v1::Pod> =
                kube::Api::namespaced(c.client().clone(), &ns);
            api.patch(
                &pod,
                &kube::api::PatchParams::default(),
                &kube::api::Patch::Merge(&patch),
            )
            .await
            .map(|_| ())
            .map_err(|e| e.to_string())
        }
        Err(e) => Err(e.to_string()),
    };
    match result {
        Ok(()) => debug!(pod = %pod, role, "labelled this Pod"),
        Err(e) => {
            warn!(pod = %format!("{ns}/{pod}"), role, error = %e, "cannot label this Pod with its role ({LABEL_ROLE}): webhooks sent through the leader's Service may not reach it; polling still fetches")
        }
    }
}

/// How waiting for the Leases ended.
pub(super) enum Waited {
    /// Every stack's Lease is held: lead.
    Leading(Vec<LeaseGuard>),
    /// SIGTERM/SIGINT arrived first.
    Stopped,
}

/// Tries every `timing.retry` to take the Lease of every target, in the targets' order (so two
/// replicas contend for the same first Lease and never split the stacks between them), giving
/// back what it took in a round that did not get them all. Meanwhile `/readyz` says where it
/// stands; each new standing is logged once.
pub(super) async fn wait_to_lead(
    clusters: &mut Clusters,
    cfg: &Config,
    targets: &[StackRef],
    holder: &Holder,
    metrics: &Metrics,
    timing: LeaseTiming,
    signals: &mut signal_hook_tokio::Signals,
) -> Waited {
    let me = claimant(cfg, holder);
    let mine = me.instance.clone().unwrap_or_default();
    let mut said: Option<String> = None;
    // A restarted container may find its Pod still labelled leader.
    mark_pod(clusters, cfg, targets, "standby").await;
    loop {
        let mut taken: Vec<LeaseGuard> = Vec::new();
        let mut waiting: Option<Standing> = None;
        for t in targets {
            let tried = async {
                let cluster = clusters
                    .get(cfg.options.kubeconfig.as_deref(), &t.context)
                    .await
                    .map_err(|e| e.to_string())?;
                ensure_namespace(cluster.client(), &t.namespace, &t.stack)
                    .await
                    .map_err(|e| e.to_string())?;
                LeaseGuard::try_acquire(cluster.client(), &t.namespace, &t.stack, &me, timing)
                    .await
                    .map_err(|e| e.to_string())
            }
            .await;
            match tried {
                Ok(Acquired::Taken(g)) => taken.push(*g),
                Ok(Acquired::Waiting(claim)) => {
                    waiting = standing(&claim, &t.stack, &t.namespace, &mine);
                    break;
                }
                Err(e) => {
                    waiting = Some(Standing::NotLeading(format!(
                        "not leading: stack {}'s Lease {}/{} cannot be read or taken: {e}",
                        t.stack,
                        t.namespace,
                        lease_name(&t.stack)
                    )));
                    break;
                }
            }
        }
        let Some(standing) = waiting else {
            metrics.set_standing(Some(Standing::Leading));
            if said.is_some() {
                info!(stacks = taken.len(), "took over: this replica leads now");
            }
            mark_pod(clusters, cfg, targets, "leader").await;
            return Waited::Leading(taken);
        };
        for g in &taken {
            g.release().await;
        }
        let line = match &standing {
            Standing::Standby(l) | Standing::NotLeading(l) => l.clone(),
            Standing::Leading => String::new(),
        };
        if said.as_deref() != Some(line.as_str()) {
            match &standing {
                Standing::Standby(_) => info!(every_ms = timing.retry.as_millis() as u64, "{line}"),
                Standing::NotLeading(_) => warn!(
                    every_ms = timing.retry.as_millis() as u64,
                    "{line}; writing nothing, checking again"
                ),
                Standing::Leading => {}
            }
            said = Some(line);
        }
        metrics.set_standing(Some(standing));
        tokio::select! {
            biased;
            Some(sig) = signals.next() => {
                if matches!(sig, SIGTERM | SIGINT) {
                    info!("stopping: not leading, nothing to finish");
                    return Waited::Stopped;
                }
                debug!(signal = sig, "ignored while not leading");
            }
            () = tokio::time::sleep(timing.retry) => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_standby_is_ready_and_names_its_leader() {
        let s = standing(
            &Claim::Standby {
                holder: "converge-5d8f-a/1".into(),
            },
            "dev",
            "todo-chatbot",
            "converge/converge",
        );
        assert_eq!(
            s,
            Some(Standing::Standby(
                "standby, leader is converge-5d8f-a/1 (stack dev, Lease todo-chatbot/converge-dev)"
                    .into()
            ))
        );
    }

    #[test]
    fn a_second_installation_is_not_ready_and_says_whose_lease_it_is() {
        let s = standing(
            &Claim::Refused {
                holder: "converge-5d8f-a/1".into(),
                instance: "converge/converge".into(),
            },
            "dev",
            "todo-chatbot",
            "other/converge",
        );
        let Some(Standing::NotLeading(line)) = s else {
            panic!("a refusal must not be ready: {s:?}");
        };
        assert!(
            line.starts_with(
                "refused: stack dev is managed by converge-5d8f-a/1 of instance converge/converge"
            ),
            "{line}"
        );
        assert!(line.contains("this is instance other/converge"), "{line}");
        assert!(!line.contains('\n'));
    }
}
