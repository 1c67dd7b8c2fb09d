//! Desired state → chart values (pure): images with their tags, replicas, resources, env, secret
//! references, storage. A field absent from the desired state is absent here, so the chart's
//! default applies.

use std::collections::BTreeMap;

use serde_json::{json, Map, Value};

use crate::desired::schema::BuilderKind;
use crate::desired::{Component, Stack};

/// Splits an image reference into the chart's `{repository, tag}` or `{repository, digest}`.
pub fn image_values(reference: &str) -> Value {
    let (name_tag, digest) = match reference.split_once('@') {
        Some((n, d)) => (n, Some(d)),
        None => (reference, None),
    };
    let slash = name_tag.rfind('/').map(|i| i + 1).unwrap_or(0);
    let (repo, tag) = match name_tag[slash..].rfind(':') {
        Some(i) => (&name_tag[..slash + i], Some(&name_tag[slash + i + 1..])),
        None => (name_tag, None),
    };
    let mut m = Map::new();
    m.insert("repository".into(), json!(repo));
    if let Some(t) = tag {
        m.insert("tag".into(), json!(t));
    }
    if let Some(d) = digest {
        m.insert("digest".into(), json!(d));
    }
    Value::Object(m)
}

fn component_values(c: &Component, images: &BTreeMap<String, String>) -> Value {
    let s = &c.spec;
    let mut m = Map::new();
    m.insert("enabled".into(), json!(true));
    let image = match (&s.image.reference, images.get(&s.name)) {
        (_, Some(built)) => Some(built.as_str()),
        (Some(r), None) => Some(r.as_str()),
        (None, None) => None,
    };
    if let Some(i) = image {
        m.insert("image".into(), image_values(i));
    }
    if let Some(r) = s.replicas {
        m.insert("replicas".into(), json!(r));
    }
    if let Some(res) = &s.resources {
        if let Ok(v) = serde_json::to_value(res) {
            m.insert("resources".into(), strip_nulls(v));
        }
    }
    if !s.ports.is_empty() {
        let ports: Vec<Value> = s
            .ports
            .iter()
            .map(|p| {
                let mut o = json!({"name": p.name, "containerPort": p.container_port});
                if let Some(proto) = p.protocol {
                    o["protocol"] = serde_json::to_value(proto).unwrap_or(Value::Null);
                }
                o
            })
            .collect();
        m.insert("ports".into(), Value::Array(ports));
    }
    if !s.env.is_empty() {
        let env: Map<String, Value> = s.env.iter().map(|(k, v)| (k.clone(), json!(v.0))).collect();
        m.insert("env".into(), Value::Object(env));
    }
    if !s.secret_env.is_empty() {
        let refs: Vec<Value> = s
            .secret_env
            .iter()
            .map(|r| json!({"name": r.name, "secretName": r.secret, "key": r.key, "optional": r.optional}))
            .collect();
        m.insert("secretEnv".into(), Value::Array(refs));
    }
    if let Some(p) = &s.probes {
        if let Ok(v) = serde_json::to_value(p) {
            m.insert("probes".into(), strip_nulls(v));
        }
    }
    if let Some(st) = &s.storage {
        let mut o = json!({"size": st.size.0});
        if let Some(class) = &st.storage_class {
            o["storageClass"] = json!(class);
        }
        m.insert("storage".into(), o);
    }
    let mut v = Value::Object(m);
    merge(&mut v, &Value::Object(s.values.clone()));
    v
}

/// The values document for `stack`: its `values`, then one key per component; chart components
/// the desired state does not name (`chart_components`) are disabled, so removing a component
/// from `desired/` removes it from the cluster.
pub fn values_for(
    stack: &Stack,
    images: &BTreeMap<String, String>,
    chart_components: &[String],
) -> Value {
    let mut v = Value::Object(stack.spec.values.clone());
    // Pods pull the registry builder's images with this Secret (the chart's `imagePullSecrets`,
    // Kubernetes' `LocalObjectReference` list).
    if let Some(secret) = stack
        .spec
        .registry
        .as_ref()
        .and_then(|r| r.pull_secret.as_ref())
    {
        merge(&mut v, &json!({"imagePullSecrets": [{"name": secret}]}));
    }
    for name in chart_components {
        if stack.component(name).is_none() {
            merge(&mut v, &json!({ name.as_str(): {"enabled": false} }));
        }
    }
    // A pushed image is pulled: a values file written for a node-local builder
    // (`pullPolicy: Never`) would leave the Pod waiting. The tag is content-addressed, so a
    // node that has it already has the right one.
    let pulled = stack.spec.builder == Some(BuilderKind::Registry);
    for c in &stack.components {
        let mut cv = component_values(c, images);
        if pulled && images.contains_key(&c.spec.name) {
            merge(&mut cv, &json!({"image": {"pullPolicy": "IfNotPresent"}}));
        }
        merge(&mut v, &json!({ c.spec.name.as_str(): cv }));
    }
    v
}

/// Deep-merges `over` into `base`: maps merge, everything else replaces (Helm's rule).
pub fn merge(base: &mut Value, over: &Value) {
    match (base, over) {
        (Value::Object(b), Value::Object(o)) => {
            for (k, v) in o {
                match b.get_mut(k) {
                    Some(existing) if existing.is_object() && v.is_object() => merge(existing, v),
                    _ => {
                        b.insert(k.clone(), v.clone());
                    }
                }
            }
        }
        (b, o) => *b = o.clone(),
    }
}

fn strip_nulls(v: Value) -> Value {
    match v {
        Value::Object(m) => Value::Object(
            m.into_iter()
                .filter(|(_, v)| !v.is_null())
                .map(|(k, v)| (k, strip_nulls(v)))
                .collect(),
        ),
        other => other,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn image_references_split_into_chart_fields() {
        assert_eq!(
            image_values("postgres:16-alpine"),
            json!({"repository": "postgres", "tag": "16-alpine"})
        );
        assert_eq!(
            image_values("localhost:5000/a/b:1"),
            json!({"repository": "localhost:5000/a/b", "tag": "1"})
        );
        assert_eq!(
            image_values("r@sha256:abc"),
            json!({"repository": "r", "digest": "sha256:abc"})
        );
    }

    #[test]
    fn a_registry_pull_secret_becomes_the_charts_image_pull_secrets() {
        let stack = |registry: &str| Stack {
            spec: serde_yaml_ng::from_str(&format!(
                "apiVersion: converge.dev/v1alpha1\nkind: Stack\nname: s\nnamespace: s\n{registry}"
            ))
            .expect("a stack"),
            file: "desired/stack.yaml".into(),
            dir: "desired".into(),
            components: Vec::new(),
        };
        let with = values_for(
            &stack("builder: registry\nregistry: {prefix: r.example/team, pullSecret: regcred}\n"),
            &BTreeMap::new(),
            &[],
        );
        assert_eq!(with["imagePullSecrets"], json!([{"name": "regcred"}]));
        let without = values_for(
            &stack("registry: {prefix: r.example}\n"),
            &BTreeMap::new(),
            &[],
        );
        assert!(without.get("imagePullSecrets").is_none());
    }

    #[test]
    fn a_pushed_image_is_pulled_even_where_a_values_file_says_never() {
        let component = |name: &str, image: &str| crate::desired::Component {
            spec: serde_yaml_ng::from_str(&format!(
                "apiVersion: converge.dev/v1alpha1\nkind: Component\nname: {name}\nimage: {image}\n"
            ))
            .expect("a component"),
            file: format!("desired/{name}.yaml"),
        };
        let stack = |builder: &str| Stack {
            spec: serde_yaml_ng::from_str(&format!(
                "apiVersion: converge.dev/v1alpha1\nkind: Stack\nname: s\nnamespace: s\n{builder}"
            ))
            .expect("a stack"),
            file: "desired/stack.yaml".into(),
            dir: "desired".into(),
            components: vec![
                component(
                    "backend",
                    "{build: {context: apps/backend, repository: todo-backend}}",
                ),
                component("postgres", "{ref: postgres:16}"),
            ],
        };
        let images = BTreeMap::from([(
            "backend".to_string(),
            "reg.example:5000/todo/todo-backend:0123456789ab".to_string(),
        )]);
        let pushed = values_for(&stack("builder: registry\n"), &images, &[]);
        assert_eq!(pushed["backend"]["image"]["pullPolicy"], "IfNotPresent");
        assert!(
            pushed["postgres"]["image"].get("pullPolicy").is_none(),
            "a prebuilt reference keeps the chart's policy"
        );
        let local = values_for(&stack("builder: minikube\n"), &images, &[]);
        assert!(local["backend"]["image"].get("pullPolicy").is_none());
    }

    #[test]
    fn merging_follows_helm() {
        let mut a = json!({"x": {"a": 1, "l": [1, 2]}, "y": 1});
        merge(&mut a, &json!({"x": {"b": 2, "l": [3]}, "y": {"z": 1}}));
        assert_eq!(a, json!({"x": {"a": 1, "b": 2, "l": [3]}, "y": {"z": 1}}));
    }
}
