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
