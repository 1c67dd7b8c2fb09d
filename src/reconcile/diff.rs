//! What `apply` would change, without writing: a server-side dry-run of every rendered object
//! (stamped exactly as apply stamps it) compared with the live object, plus what prune would
//! delete.

use std::path::Path;

use serde::Serialize;

use super::prepare::{prepare, selection};
use super::{context_of, plan, Clusters, Options};
use crate::cluster::diff::{normalize, unified};
use crate::cluster::inventory::{self, Inventory, PrunePolicy};
use crate::cluster::{ApplyOptions, ObjectKey};
use crate::error::Error;
use crate::render::Helm;

/// One object `apply` would change.
#[derive(Debug, Clone, Serialize)]
pub struct ObjectDiff {
    /// The object.
    pub object: String,
    /// `create`, `update` or `delete`.
    pub action: &'static str,
    /// A unified diff, Secret data masked.
    pub diff: String,
}

/// What `apply` would change for every selected stack of `rev`. Writes nothing.
pub async fn diff_commit(
    repo_path: &Path,
    rev: &str,
    opts: &Options,
    helm: &Helm,
    clusters: &mut Clusters,
) -> Result<Vec<ObjectDiff>, Error> {
    let (commit, prepared) = prepare(repo_path, rev, &selection(opts))?;
    let mut out = Vec::new();
    for p in &prepared {
        let cluster = clusters
            .get(opts.kubeconfig.as_deref(), context_of(opts, &p.stack))
            .await?;
        let version = cluster.ping().await?;
        let rendered = p.render.template(helm, Some(&version)).await?;
        let ns = &p.stack.spec.namespace;
        let ns_key = ObjectKey {
            group: String::new(),
            version: "v1".into(),
            kind: "Namespace".into(),
            namespace: String::new(),
            name: ns.clone(),
        };
        let namespace_exists = cluster.get(&ns_key).await?.is_some();
        let inv = if namespace_exists {
            inventory::load(cluster.client(), ns, &p.stack.spec.name).await?
        } else {
            Inventory::default()
        };
        let mut keys = Vec::new();
        for obj in rendered.objects {
            let Some(mut key) = ObjectKey::of(&obj) else {
                continue;
            };
            if !cluster.is_namespaced(&key).await? {
                key.namespace.clear();
            }
            let item = plan::item(obj, key.clone(), inv.get(&key), None, &commit, true);
            keys.push(key.clone());
            let live = if namespace_exists {
                cluster.get(&key).await?
            } else {
                None
            };
            let would = if namespace_exists {
                cluster
                    .apply(
                        &item.object,
                        ApplyOptions {
                            force: true,
                            dry_run: true,
                        },
                    )
                    .await?
            } else {
                // A dry-run cannot create into a namespace that does not exist yet: show the render.
                item.object.clone()
            };
            let live_v = live
                .as_ref()
                .map(|l| normalize(&serde_json::to_value(l).unwrap_or_default()));
            let would_v = normalize(&serde_json::to_value(&would).unwrap_or_default());
            let title = format!("{}/{}/{}", key.kind, key.namespace, key.name);
            if let Some(d) = unified(&title, live_v.as_ref(), Some(&would_v)) {
                out.push(ObjectDiff {
                    object: key.to_string(),
                    action: if live.is_some() { "update" } else { "create" },
                    diff: d,
                });
            }
        }
        let policy = PrunePolicy {
            volumes: p.stack.spec.prune.volumes,
            namespaces: p.stack.spec.prune.namespace,
            allow_mass_prune: opts.allow_mass_prune,
        };
        for key in inventory::plan_prune(&inv, &keys, policy).delete {
            if let Some(live) = cluster.get(&key).await? {
                let v = normalize(&serde_json::to_value(&live).unwrap_or_default());
                let title = format!("{}/{}/{}", key.kind, key.namespace, key.name);
                if let Some(d) = unified(&title, Some(&v), None) {
                    out.push(ObjectDiff {
                        object: key.to_string(),
                        action: "delete",
                        diff: d,
                    });
                }
            }
        }
    }
    Ok(out)
}
