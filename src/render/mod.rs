//! Rendering: desired state + image tags → chart values → `helm template` on the chart exported
//! from the same commit → objects labelled as converge's. Never renders from the working tree.

mod cache;
pub mod helm;
pub mod values;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use kube::api::DynamicObject;
use serde_json::Value;
use sha2::{Digest, Sha256};

pub use helm::Helm;

use crate::desired::Stack;
use crate::source::{EntryKind, Snapshot, SourceError};
use crate::vocabulary::{ANNOTATION_INVENTORY, LABEL_MANAGED_BY, LABEL_STACK, MANAGED_BY};

/// Failures rendering a stack.
#[derive(Debug, thiserror::Error)]
pub enum RenderError {
    /// helm is not installed.
    #[error("helm was not found (tried `{}`): install Helm v{}.{} or newer (https://helm.sh/docs/intro/install/) or set CONVERGE_HELM to its path", binary.display(), helm::MIN_HELM.0, helm::MIN_HELM.1)]
    HelmMissing {
        /// The binary tried.
        binary: PathBuf,
    },
    /// helm is too old.
    #[error("helm {found} at `{}` is too old: converge needs Helm v{}.{} or newer", binary.display(), helm::MIN_HELM.0, helm::MIN_HELM.1)]
    HelmTooOld {
        /// The version found.
        found: String,
        /// The binary.
        binary: PathBuf,
    },
    /// helm failed.
    #[error("`{command}` failed{}: {stderr}", status.map(|s| format!(" with exit status {s}")).unwrap_or_default())]
    Helm {
        /// The command line.
        command: String,
        /// Its exit status.
        status: Option<i32>,
        /// What it printed on stderr.
        stderr: String,
    },
    /// Reading the chart from the commit failed.
    #[error(transparent)]
    Source(#[from] SourceError),
    /// Writing the exported chart failed.
    #[error("exporting the chart to {}: {source}", path.display())]
    Export {
        /// Where.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// helm's output is not a list of Kubernetes objects.
    #[error("helm output document {index} is not a Kubernetes object: {message}")]
    Output {
        /// 1-based document number.
        index: usize,
        /// Why.
        message: String,
    },
}

/// A Helm hook object and how to run it.
#[derive(Debug, Clone)]
pub struct Hook {
    /// The object (a Job, usually).
    pub object: DynamicObject,
    /// `helm.sh/hook` events this reconcile can fire: `pre-install`, `pre-upgrade`,
    /// `post-install`, `post-upgrade`.
    pub events: Vec<String>,
    /// `helm.sh/hook-weight`, lower first.
    pub weight: i64,
    /// `helm.sh/hook-delete-policy` entries.
    pub delete_policies: Vec<String>,
}

impl Hook {
    /// Whether it runs before the release's objects: on install (first reconcile) or upgrade.
    pub fn runs_before(&self, install: bool) -> bool {
        self.fires(if install {
            "pre-install"
        } else {
            "pre-upgrade"
        })
    }

    /// Whether it runs after the release is healthy.
    pub fn runs_after(&self, install: bool) -> bool {
        self.fires(if install {
            "post-install"
        } else {
            "post-upgrade"
        })
    }

    fn fires(&self, event: &str) -> bool {
        self.events.iter().any(|e| e == event)
    }
}

/// The objects of one stack, ready for the cluster.
#[derive(Debug, Clone, Default)]
pub struct Rendered {
    /// Regular objects.
    pub objects: Vec<DynamicObject>,
    /// Hooks, sorted by weight.
    pub hooks: Vec<Hook>,
}

/// Exports `dir` of the commit into `dest` (files only, following git's modes).
///
/// Returns a digest of the exported tree (paths, modes and blob ids), which identifies its content.
pub fn export_dir(snapshot: &Snapshot<'_>, dir: &str, dest: &Path) -> Result<String, RenderError> {
    let dir = dir.trim_end_matches('/');
    let mut tree = Sha256::new();
    for entry in snapshot.walk(dir)? {
        if !matches!(entry.kind, EntryKind::File | EntryKind::Executable) {
            continue;
        }
        let rel = entry
            .path
            .strip_prefix(dir)
            .unwrap_or(&entry.path)
            .trim_start_matches('/');
        let target = dest.join(rel);
        if let Some(parent) = target.parent() {
            std::fs::create_dir_all(parent).map_err(|source| RenderError::Export {
                path: parent.to_path_buf(),
                source,
            })?;
        }
        tree.update(format!("{rel}\0{:?}\0{}\n", entry.kind, entry.oid).as_bytes());
        let bytes = snapshot.blob(&entry.path, entry.oid)?;
        std::fs::write(&target, bytes).map_err(|source| RenderError::Export {
            path: target.clone(),
            source,
        })?;
    }
    Ok(hex::encode(tree.finalize()))
}

/// The chart's component keys: top-level values with an `enabled` switch.
fn chart_components(chart_dir: &Path) -> Vec<String> {
    let Ok(text) = std::fs::read_to_string(chart_dir.join("values.yaml")) else {
        return Vec::new();
    };
    // The chart comes from the commit: read it with the bounded parser (depth, aliases, merge
    // keys) like the desired state, not with a loader that expands aliases without limit.
    let Some(v) = crate::desired::yaml::parse(&text)
        .ok()
        .and_then(|docs| docs.into_iter().next())
        .map(|d| d.value)
    else {
        return Vec::new();
    };
    v.as_object()
        .map(|o| {
            o.iter()
                // A workload of its own: an `enabled` switch and an `image`. A part that runs
                // with another component's image (the migration hook runs the backend's) or
                // has no image (an ingress) is the chart's business, never switched off here.
                .filter(|(_, v)| {
                    v.get("enabled").is_some_and(Value::is_boolean)
                        && v.get("image").is_some_and(Value::is_object)
                })
                .map(|(k, _)| k.clone())
                .collect()
        })
        .unwrap_or_default()
}

/// A chart and its values exported from one commit, ready for `helm template`.
///
/// Exporting is synchronous and reads the commit; templating is async and holds no git handle,
/// so the future can move between threads.
#[derive(Debug)]
pub struct Prepared {
    tmp: tempfile::TempDir,
    release: String,
    stack: String,
    namespace: String,
    values_files: Vec<PathBuf>,
    /// Identifies the inputs of `helm template` (chart tree, values, release, namespace).
    key: String,
}

/// Exports the chart and values of `stack` at `snapshot`, with `images` (component → image
/// reference) written into converge's values file.
pub fn prepare(
    snapshot: &Snapshot<'_>,
    stack: &Stack,
    images: &BTreeMap<String, String>,
) -> Result<Prepared, RenderError> {
    let tmp = tempfile::tempdir().map_err(|source| RenderError::Export {
        path: std::env::temp_dir(),
        source,
    })?;
    let chart_dir = tmp.path().join("chart");
    let mut key = Sha256::new();
    key.update(export_dir(snapshot, &stack.spec.chart, &chart_dir)?.as_bytes());
    let mut values_files = Vec::new();
    for (i, vf) in stack.spec.values_files.iter().enumerate() {
        let path = tmp.path().join(format!("values-{i}.yaml"));
        let entry = snapshot.entry(vf).ok_or_else(|| RenderError::Output {
            index: 0,
            message: format!("values file `{vf}` is not in the commit"),
        })?;
        key.update(format!("values {i} {}\n", entry.oid).as_bytes());
        let bytes = snapshot.blob(vf, entry.oid)?;
        std::fs::write(&path, bytes).map_err(|source| RenderError::Export {
            path: path.clone(),
            source,
        })?;
        values_files.push(path);
    }
    let generated = values::values_for(stack, images, &chart_components(&chart_dir));
    let gen_path = tmp.path().join("converge-values.json");
    std::fs::write(
        &gen_path,
        serde_json::to_vec_pretty(&generated).unwrap_or_default(),
    )
    .map_err(|source| RenderError::Export {
        path: gen_path.clone(),
        source,
    })?;
    values_files.push(gen_path);
    let generated_bytes = serde_json::to_vec(&generated).unwrap_or_default();
    key.update(&generated_bytes);
    key.update(
        format!(
            "\0{}\0{}\0{}",
            stack.release(),
            stack.spec.name,
            stack.spec.namespace
        )
        .as_bytes(),
    );
    Ok(Prepared {
        tmp,
        release: stack.release().to_string(),
        stack: stack.spec.name.clone(),
        namespace: stack.spec.namespace.clone(),
        values_files,
        key: hex::encode(key.finalize()),
    })
}

impl Prepared {
    /// Runs `helm template` and parses its output into labelled objects and hooks.
    ///
    /// `kube_version` is the target cluster's, so the chart's `kubeVersion` and
    /// `.Capabilities` checks see the real cluster rather than helm's built-in default.
    pub async fn template(
        &self,
        helm: &Helm,
        kube_version: Option<&str>,
    ) -> Result<Rendered, RenderError> {
        let cache = cache::RenderCache::open();
        let key = cache::key(&self.key, helm, kube_version);
        if let Some(text) = cache.as_ref().and_then(|c| c.get(&key)) {
            return parse_manifests(&text, &self.stack, &self.namespace);
        }
        // Only a render that misses the cache needs helm, so only then is it checked.
        helm.check().await?;
        let chart_dir = self.tmp.path().join("chart");
        let out = helm
            .template(
                &self.release,
                &chart_dir,
                &self.namespace,
                &self.values_files,
                kube_version,
            )
            .await?;
        let rendered = parse_manifests(&out, &self.stack, &self.namespace)?;
        if let Some(c) = &cache {
            c.put(&key, &out);
        }
        Ok(rendered)
    }
}

/// Kinds that live outside namespaces.
const CLUSTER_SCOPED: &[&str] = &[
    "Namespace",
    "ClusterRole",
    "ClusterRoleBinding",
    "CustomResourceDefinition",
    "PersistentVolume",
    "StorageClass",
    "PriorityClass",
    "IngressClass",
    "ValidatingWebhookConfiguration",
    "MutatingWebhookConfiguration",
    "APIService",
];

/// Refuses helm output whose aliases would expand past [`Limits::MANIFESTS`]: templates print
/// what a chart's author (or its values) wrote, and serde_yaml_ng's own repetition limit still
/// lets work grow with the square of the input. Nesting is bounded by serde_yaml_ng (128).
fn check_expansion(text: &str) -> Result<(), RenderError> {
    use crate::desired::yaml::{scan, Budget, Limits};
    // No `*`, no alias: nothing can expand.
    if !text.contains('*') {
        return Ok(());
    }
    match scan(text, Limits::MANIFESTS, &mut Budget::default()).error {
        None => Ok(()),
        Some(e) => {
            let before = &text[..e.pos.offset.min(text.len())];
            let index = before
                .lines()
                .filter(|l| l.starts_with("---"))
                .count()
                .max(1);
            Err(RenderError::Output {
                index,
                message: format!("line {} of helm's output: {}", e.pos.line, e.message),
            })
        }
    }
}

/// One document of helm's output as JSON, with YAML merge keys (`<<: *defaults`) applied the way
/// kubectl applies them, so a literal `<<` field never reaches the apiserver.
fn document_value(doc: serde_yaml_ng::Deserializer<'_>, merges: bool) -> Result<Value, String> {
    if !merges {
        return serde::Deserialize::deserialize(doc).map_err(|e| e.to_string());
    }
    let mut yaml: serde_yaml_ng::Value =
        serde::Deserialize::deserialize(doc).map_err(|e| e.to_string())?;
    // A merged mapping can bring its own `<<`: apply until none is left (bounded by depth).
    for _ in 0..128 {
        yaml.apply_merge().map_err(|e| e.to_string())?;
        let value = serde_json::to_value(&yaml).map_err(|e| e.to_string())?;
        if !has_merge_key(&value) {
            return Ok(value);
        }
    }
    Err("a YAML merge key `<<` could not be applied".into())
}

/// Whether any mapping in `v` still has a `<<` key.
fn has_merge_key(v: &Value) -> bool {
    let mut stack = vec![v];
    while let Some(v) = stack.pop() {
        match v {
            Value::Object(o) => {
                if o.contains_key("<<") {
                    return true;
                }
                stack.extend(o.values());
            }
            Value::Array(a) => stack.extend(a),
            _ => {}
        }
    }
    false
}

/// Parses helm's multi-document output, labels every object as converge's and splits out hooks.
pub fn parse_manifests(text: &str, stack: &str, namespace: &str) -> Result<Rendered, RenderError> {
    check_expansion(text)?;
    let merges = text.contains("<<");
    let mut rendered = Rendered::default();
    for (i, doc) in serde_yaml_ng::Deserializer::from_str(text).enumerate() {
        let value = document_value(doc, merges).map_err(|message| RenderError::Output {
            index: i + 1,
            message,
        })?;
        if value.is_null() {
            continue;
        }
        let mut obj: DynamicObject =
            serde_json::from_value(value).map_err(|e| RenderError::Output {
                index: i + 1,
                message: e.to_string(),
            })?;
        let kind = obj
            .types
            .as_ref()
            .map(|t| t.kind.clone())
            .unwrap_or_default();
        if kind.is_empty() || obj.metadata.name.is_none() {
            return Err(RenderError::Output {
                index: i + 1,
                message: "it has no kind or no metadata.name".into(),
            });
        }
        if CLUSTER_SCOPED.contains(&kind.as_str()) {
            obj.metadata.namespace = None;
        } else if obj.metadata.namespace.is_none() {
            obj.metadata.namespace = Some(namespace.to_string());
        }
        let labels = obj.metadata.labels.get_or_insert_with(Default::default);
        labels.insert(LABEL_MANAGED_BY.into(), MANAGED_BY.into());
        labels.insert(LABEL_STACK.into(), stack.into());
        let annotations = obj
            .metadata
            .annotations
            .get_or_insert_with(Default::default);
        annotations.insert(ANNOTATION_INVENTORY.into(), format!("{namespace}.{stack}"));
        let hook = annotations.get("helm.sh/hook").cloned();
        match hook {
            None => rendered.objects.push(obj),
            Some(h) => {
                let events: Vec<String> = h
                    .split(',')
                    .map(str::trim)
                    .filter(|e| {
                        matches!(
                            *e,
                            "pre-install" | "pre-upgrade" | "post-install" | "post-upgrade"
                        )
                    })
                    .map(str::to_string)
                    .collect();
                // Test, rollback and delete hooks are not part of a reconcile.
                if events.is_empty() {
                    continue;
                }
                let weight = annotations
                    .get("helm.sh/hook-weight")
                    .and_then(|w| w.trim().parse().ok())
                    .unwrap_or(0);
                let delete_policies = annotations
                    .get("helm.sh/hook-delete-policy")
                    .map(|p| p.split(',').map(|s| s.trim().to_string()).collect())
                    .unwrap_or_else(|| vec!["before-hook-creation".to_string()]);
                rendered.hooks.push(Hook {
                    object: obj,
                    events,
                    weight,
                    delete_policies,
                });
            }
        }
    }
    rendered.hooks.sort_by_key(|h| h.weight);
    Ok(rendered)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_workloads_with_an_image_count_as_chart_components_to_switch_off() {
        let dir = tempfile::tempdir().expect("temp dir");
        std::fs::write(
            dir.path().join("values.yaml"),
            "backend:\n  enabled: true\n  image: {repository: b}\nworker:\n  enabled: true\n  image: {repository: w}\nmigrations:\n  enabled: true\n  hooks: \"\"\ningress:\n  enabled: false\n",
        )
        .expect("write values");
        // The migration hook runs the backend's image: a desired state without a `migrations`
        // component must not switch the schema migrations off.
        assert_eq!(chart_components(dir.path()), vec!["backend", "worker"]);
    }

    #[test]
    fn objects_are_labelled_and_hooks_split_out() {
        let text = "---\n# Source: x\napiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: a\n  labels:\n    app.kubernetes.io/managed-by: Helm\n---\napiVersion: batch/v1\nkind: Job\nmetadata:\n  name: migrate\n  annotations:\n    helm.sh/hook: pre-install,pre-upgrade\n    helm.sh/hook-weight: \"-5\"\n---\napiVersion: v1\nkind: Pod\nmetadata:\n  name: test\n  annotations:\n    helm.sh/hook: test\n---\napiVersion: v1\nkind: Namespace\nmetadata:\n  name: n\n";
        let r = parse_manifests(text, "shop", "shop-ns").unwrap();
        assert_eq!(r.objects.len(), 2);
        let cm = &r.objects[0];
        assert_eq!(cm.metadata.namespace.as_deref(), Some("shop-ns"));
        assert_eq!(
            cm.metadata.labels.as_ref().unwrap()[LABEL_MANAGED_BY],
            "converge"
        );
        assert_eq!(cm.metadata.labels.as_ref().unwrap()[LABEL_STACK], "shop");
        assert_eq!(
            r.objects[1].metadata.namespace, None,
            "namespaces are cluster-scoped"
        );
        assert_eq!(r.hooks.len(), 1);
        assert_eq!(r.hooks[0].weight, -5);
        assert!(r.hooks[0].runs_before(true) && r.hooks[0].runs_before(false));
        assert!(!r.hooks[0].runs_after(true));
    }

    #[test]
    fn output_that_is_not_an_object_is_an_error_naming_the_document() {
        let err = parse_manifests("---\nkind: ConfigMap\n---\n- 1\n", "s", "n").unwrap_err();
        assert!(err.to_string().contains("document 1"), "{err}");
    }

    #[test]
    fn an_alias_bomb_in_helm_output_is_refused_naming_its_document() {
        let mut text = String::from("---\napiVersion: v1\nkind: ConfigMap\nmetadata: {name: a}\n---\napiVersion: v1\nkind: ConfigMap\nmetadata: {name: b}\ndata:\n  a0: &a0 [x, x, x, x, x, x, x, x, x, x]\n");
        for i in 1..9 {
            let refs = vec![format!("*a{}", i - 1); 10].join(", ");
            text.push_str(&format!("  a{i}: &a{i} [{refs}]\n"));
        }
        let err = parse_manifests(&text, "s", "n").unwrap_err();
        let msg = err.to_string();
        assert!(msg.contains("document 2"), "{msg}");
        assert!(msg.contains("billion laughs"), "{msg}");
    }

    #[test]
    fn merge_keys_in_helm_output_are_applied_never_passed_on() {
        let text = "---\napiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: a\n  labels: {tier: web}\ndata:\n  <<: {x: \"1\"}\n  y: \"2\"\n---\napiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: b\n  annotations: &l {tier: web}\n  labels:\n    <<: *l\n    app: b\n";
        let r = parse_manifests(text, "s", "n").unwrap();
        let a = serde_json::to_value(&r.objects[0]).unwrap();
        assert_eq!(a["data"], serde_json::json!({"x": "1", "y": "2"}));
        let b = r.objects[1].metadata.labels.clone().unwrap();
        assert_eq!(b["tier"], "web");
        assert_eq!(b["app"], "b");
        assert!(!serde_json::to_string(&r.objects).unwrap().contains("<<"));
    }
}
