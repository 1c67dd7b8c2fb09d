//! Comparing a live object with what the server says it would become (a dry-run apply), with
//! server-owned noise removed and Secret data masked. What is shown is never applied.

use serde_json::Value;
use similar::TextDiff;

/// Metadata the server owns; never part of a diff.
const SERVER_METADATA: &[&str] = &[
    "managedFields",
    "resourceVersion",
    "uid",
    "creationTimestamp",
    "generation",
    "selfLink",
    "deletionTimestamp",
    "deletionGracePeriodSeconds",
];

/// Annotations controllers write on objects converge applies.
const SERVER_ANNOTATIONS: &[&str] = &["deployment.kubernetes.io/revision"];

/// Removes status and server-owned metadata, so a just-applied object compares equal to itself.
pub fn normalize(obj: &Value) -> Value {
    let mut v = obj.clone();
    if let Some(o) = v.as_object_mut() {
        o.remove("status");
        if let Some(meta) = o.get_mut("metadata").and_then(Value::as_object_mut) {
            for k in SERVER_METADATA {
                meta.remove(*k);
            }
            if let Some(ann) = meta.get_mut("annotations").and_then(Value::as_object_mut) {
                for k in SERVER_ANNOTATIONS {
                    ann.remove(*k);
                }
                if ann.is_empty() {
                    meta.remove("annotations");
                }
            }
        }
    }
    v
}

/// Replaces Secret values by a marker that still shows whether they changed, as `kubectl diff`
/// does: `***` when equal, `*** (before)` / `*** (after)` when not. `side` is `before` for the
/// live object and `after` for the desired one.
pub fn mask_secret(obj: &Value, other: Option<&Value>, side: &str) -> Value {
    let mut v = obj.clone();
    if v.get("kind").and_then(Value::as_str) != Some("Secret") {
        return v;
    }
    for field in ["data", "stringData"] {
        if let Some(data) = v.get_mut(field).and_then(Value::as_object_mut) {
            for (k, val) in data.iter_mut() {
                let same = other
                    .and_then(|o| o.get(field))
                    .and_then(|d| d.get(k))
                    .is_some_and(|ov| ov == val);
                *val = Value::String(if same {
                    "***".into()
                } else {
                    format!("*** ({side})")
                });
            }
        }
    }
    v
}

/// The fields where `live` and `want` (both normalised) differ, each as its path of keys; a list
/// or a scalar is one field. Only paths, never values, so a Secret's data cannot leak through.
pub fn changed_fields(live: &Value, want: &Value) -> Vec<Vec<String>> {
    fn walk(
        live: Option<&Value>,
        want: Option<&Value>,
        path: &mut Vec<String>,
        out: &mut Vec<Vec<String>>,
    ) {
        match (live, want) {
            (Some(Value::Object(a)), Some(Value::Object(b))) => {
                let keys: std::collections::BTreeSet<&String> = a.keys().chain(b.keys()).collect();
                for k in keys {
                    path.push(k.clone());
                    walk(a.get(k), b.get(k), path, out);
                    path.pop();
                }
            }
            (a, b) if a != b => out.push(path.clone()),
            _ => {}
        }
    }
    let mut out = Vec::new();
    walk(Some(live), Some(want), &mut Vec::new(), &mut out);
    out
}

/// The field managers other than converge that own `path` (or a field inside it) in `entries`,
/// from their `fieldsV1` sets: who changed a field by hand.
pub fn managers_of(
    entries: &[k8s_openapi::apimachinery::pkg::apis::meta::v1::ManagedFieldsEntry],
    path: &[String],
) -> Vec<String> {
    let mut out: Vec<String> = entries
        .iter()
        .filter(|e| e.manager.as_deref() != Some(crate::vocabulary::FIELD_MANAGER))
        .filter(|e| {
            let Some(fields) = e.fields_v1.as_ref() else {
                return false;
            };
            let mut node = &fields.0;
            path.iter().all(|seg| match node.get(format!("f:{seg}")) {
                Some(n) => {
                    node = n;
                    true
                }
                None => false,
            })
        })
        .filter_map(|e| e.manager.clone())
        .collect();
    out.sort();
    out.dedup();
    out
}

/// A unified diff of `live` → `desired` (both already normalised), or `None` when equal.
pub fn unified(title: &str, live: Option<&Value>, desired: Option<&Value>) -> Option<String> {
    if live == desired {
        return None;
    }
    let masked_live = live.map(|l| mask_secret(l, desired, "before"));
    let masked_desired = desired.map(|d| mask_secret(d, live, "after"));
    let to_yaml = |v: Option<&Value>| {
        v.map(|v| serde_yaml_ng::to_string(v).unwrap_or_default())
            .unwrap_or_default()
    };
    let a = to_yaml(masked_live.as_ref());
    let b = to_yaml(masked_desired.as_ref());
    let diff = TextDiff::from_lines(&a, &b);
    let text = diff
        .unified_diff()
        .context_radius(3)
        .header(&format!("live/{title}"), &format!("converge/{title}"))
        .to_string();
    Some(text)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn server_noise_does_not_make_a_diff() {
        let a = json!({"kind": "ConfigMap", "metadata": {"name": "x", "resourceVersion": "1", "managedFields": []}, "data": {"k": "v"}, "status": {}});
        let b = json!({"kind": "ConfigMap", "metadata": {"name": "x", "resourceVersion": "2"}, "data": {"k": "v"}});
        assert_eq!(
            unified("cm", Some(&normalize(&a)), Some(&normalize(&b))),
            None
        );
    }

    #[test]
    fn secret_values_never_appear_in_a_diff() {
        let live =
            json!({"kind": "Secret", "data": {"password": "aHVudGVyMg==", "user": "YWRtaW4="}});
        let want = json!({"kind": "Secret", "data": {"password": "c2VjcmV0", "user": "YWRtaW4="}});
        let d = unified("secret", Some(&live), Some(&want)).unwrap();
        assert!(
            !d.contains("aHVudGVyMg==") && !d.contains("c2VjcmV0") && !d.contains("YWRtaW4="),
            "{d}"
        );
        assert!(d.contains("-  password: '*** (before)'"), "{d}");
        assert!(d.contains("+  password: '*** (after)'"), "{d}");
        assert!(
            d.contains("   user: '***'"),
            "an unchanged value shows as unchanged: {d}"
        );
    }

    #[test]
    fn a_hand_scale_is_reported_as_spec_replicas_by_kubectl_and_never_by_value() {
        let live = json!({"kind": "Secret", "data": {"k": "aGk="}, "spec": {"replicas": 3, "selector": {"a": "b"}}});
        let want = json!({"kind": "Secret", "data": {"k": "c2VjcmV0"}, "spec": {"replicas": 1, "selector": {"a": "b"}}});
        let fields = changed_fields(&live, &want);
        assert_eq!(
            fields,
            [
                vec!["data".to_string(), "k".into()],
                vec!["spec".into(), "replicas".into()]
            ]
        );
        let entries: Vec<k8s_openapi::apimachinery::pkg::apis::meta::v1::ManagedFieldsEntry> =
            serde_json::from_value(json!([
                {"manager": "converge", "operation": "Apply", "fieldsV1": {"f:spec": {"f:selector": {}}}},
                {"manager": "kubectl", "operation": "Update", "subresource": "scale", "fieldsV1": {"f:spec": {"f:replicas": {}}}},
                {"manager": "kube-controller-manager", "operation": "Update", "subresource": "status", "fieldsV1": {"f:status": {}}}
            ]))
            .unwrap();
        assert_eq!(managers_of(&entries, &fields[1]), ["kubectl"]);
        assert!(managers_of(&entries, &fields[0]).is_empty());
    }

    #[test]
    fn a_changed_field_shows_as_a_unified_diff() {
        let d = unified(
            "deploy",
            Some(&json!({"spec": {"replicas": 2}})),
            Some(&json!({"spec": {"replicas": 3}})),
        )
        .unwrap();
        assert!(
            d.contains("-  replicas: 2") && d.contains("+  replicas: 3"),
            "{d}"
        );
    }
}
