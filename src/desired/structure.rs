//! Structural checks of each YAML document: kind, then the JSON Schema of that kind, with every
//! violation turned into a diagnostic that points at the key or value in the source.

use std::sync::OnceLock;

use jsonschema::error::{TypeKind, ValidationErrorKind};
use jsonschema::Validator;
use serde_json::Value;

use super::diagnostic::{Diagnostic, Report};
use super::quantity::QUANTITY_EXPECTED;
use super::schema::{ComponentSpec, StackSpec, API_VERSION};
use super::yaml::{self, Document};
use super::Parsed;

struct Kind {
    schema: Value,
    validator: Validator,
}

fn compile(mut schema: Value) -> Kind {
    simplify_optionals(&mut schema);
    // The schemas are generated from our own types; failing to compile them is a bug in this
    // crate, caught by the unit tests, not something input can cause.
    let validator =
        jsonschema::validator_for(&schema).expect("schemas generated from our types compile");
    Kind { schema, validator }
}

fn stack_kind() -> &'static Kind {
    static K: OnceLock<Kind> = OnceLock::new();
    K.get_or_init(|| compile(schemars::schema_for!(StackSpec).to_value()))
}

fn component_kind() -> &'static Kind {
    static K: OnceLock<Kind> = OnceLock::new();
    K.get_or_init(|| compile(schemars::schema_for!(ComponentSpec).to_value()))
}

/// Replaces `anyOf: [X, {type: null}]` (how optional fields are generated) by `X`, so an error
/// deep inside an optional object is reported where it is, not as "anyOf failed" at its top.
fn simplify_optionals(v: &mut Value) {
    match v {
        Value::Object(o) => {
            let replacement = o.get("anyOf").and_then(|a| a.as_array()).and_then(|a| {
                let is_null = |s: &Value| s.get("type") == Some(&Value::String("null".into()));
                match a.as_slice() {
                    [x, n] if is_null(n) => Some(x.clone()),
                    [n, x] if is_null(n) => Some(x.clone()),
                    _ => None,
                }
            });
            if let Some(Value::Object(inner)) = replacement {
                o.remove("anyOf");
                for (k, val) in inner {
                    o.entry(k).or_insert(val);
                }
            }
            for val in o.values_mut() {
                simplify_optionals(val);
            }
        }
        Value::Array(a) => a.iter_mut().for_each(simplify_optionals),
        _ => {}
    }
}

/// Parses one file and sorts its documents into stacks and components; reports every problem.
pub(crate) fn parse_file(
    file: &str,
    text: &str,
    report: &mut Report,
    stacks: &mut Vec<Parsed<StackSpec>>,
    components: &mut Vec<Parsed<ComponentSpec>>,
    broken_stacks: &mut Vec<String>,
) {
    let docs = match yaml::parse(text) {
        Ok(d) => d,
        Err(errors) => {
            for e in errors {
                let code = if e.message.starts_with("duplicate key") {
                    "duplicate-key"
                } else {
                    "yaml-syntax"
                };
                report.push(Diagnostic::error(code, file, e.pos, e.message));
            }
            return;
        }
    };
    for doc in docs {
        // A document of only comments is allowed (a placeholder file, say).
        if doc.value.is_null() {
            continue;
        }
        let Some(obj) = doc.value.as_object() else {
            report.push(
                Diagnostic::error(
                    "not-a-mapping",
                    file,
                    doc.span("").value,
                    "document is not a mapping",
                )
                .value(describe(&doc.value))
                .expected("a mapping with `apiVersion`, `kind` and the kind's fields"),
            );
            continue;
        };
        match obj.get("kind") {
            Some(Value::String(k)) if k == "Stack" => {
                match check::<StackSpec>(file, &doc, stack_kind(), report) {
                    Some(spec) => stacks.push(Parsed {
                        spec,
                        file: file.to_string(),
                        doc,
                    }),
                    // Its components are not orphans: the stack is there, just invalid.
                    None => broken_stacks.push(file.to_string()),
                }
            }
            Some(Value::String(k)) if k == "Component" => {
                if let Some(spec) = check::<ComponentSpec>(file, &doc, component_kind(), report) {
                    components.push(Parsed {
                        spec,
                        file: file.to_string(),
                        doc,
                    });
                }
            }
            Some(other) => {
                let span = doc.span("/kind");
                report.push(
                    Diagnostic::error("unknown-kind", file, span.value, "unknown kind")
                        .at_path("/kind")
                        .value(scalar(other))
                        .expected("`Stack` or `Component`"),
                );
            }
            None => {
                report.push(
                    Diagnostic::error("missing-field", file, doc.span("").value, "missing field `kind`")
                        .expected("`kind: Stack` or `kind: Component`")
                        .help(format!("every document under desired/ starts with `apiVersion: {API_VERSION}` and a `kind`")),
                );
            }
        }
    }
}

fn check<T: serde::de::DeserializeOwned>(
    file: &str,
    doc: &Document,
    kind: &Kind,
    report: &mut Report,
) -> Option<T> {
    let before = report.diagnostics.len();
    for err in kind.validator.iter_errors(&doc.value) {
        for d in diagnose(file, doc, &kind.schema, &err) {
            report.push(d);
        }
    }
    if report.diagnostics.len() > before {
        return None;
    }
    match serde_json::from_value(doc.value.clone()) {
        Ok(spec) => Some(spec),
        Err(e) => {
            // The schema is generated from the same types, so this only fires on a schema/serde
            // mismatch; still reported, never a panic.
            report.push(Diagnostic::error(
                "schema",
                file,
                doc.span("").value,
                e.to_string(),
            ));
            None
        }
    }
}

fn diagnose(
    file: &str,
    doc: &Document,
    schema: &Value,
    err: &jsonschema::ValidationError<'_>,
) -> Vec<Diagnostic> {
    let pointer = err.instance_path.as_str();
    let span = doc.span(pointer);
    let field = pointer.rsplit('/').next().unwrap_or("");
    let value = scalar(&err.instance);
    let at =
        |code, message: String| Diagnostic::error(code, file, span.value, message).at_path(pointer);
    let d = match &err.kind {
        ValidationErrorKind::AdditionalProperties { unexpected } => {
            let known = property_names(schema_at(schema, pointer, schema));
            return unexpected
                .iter()
                .map(|k| {
                    let p = format!("{pointer}/{}", yaml::escape(k));
                    let s = doc.span(&p);
                    let mut d = Diagnostic::error(
                        "unknown-field",
                        file,
                        s.key.unwrap_or(s.value),
                        format!("unknown field `{k}`"),
                    )
                    .at_path(&p)
                    .value(k.clone())
                    .expected(one_of(&known));
                    if let Some(best) = did_you_mean(k, &known) {
                        d = d.help(format!("did you mean `{best}`?"));
                    }
                    d
                })
                .collect();
        }
        ValidationErrorKind::Required { property } => {
            let name = property.as_str().unwrap_or("?");
            let pos = span.key.unwrap_or(span.value);
            Diagnostic::error(
                "missing-field",
                file,
                pos,
                format!("missing field `{name}`"),
            )
            .at_path(pointer)
            .expected(format!("`{name}` to be set"))
        }
        ValidationErrorKind::Type { kind } => {
            let expected = match kind {
                TypeKind::Single(t) => article(&t.to_string()),
                // `null` is how an optional field is generated; a person never means to write it.
                TypeKind::Multiple(ts) => ts
                    .iter()
                    .map(|t| t.to_string())
                    .filter(|t| t != "null")
                    .map(|t| article(&t))
                    .collect::<Vec<_>>()
                    .join(" or "),
            };
            at("wrong-type", format!("`{field}` has the wrong type"))
                .value(value)
                .expected(expected)
        }
        ValidationErrorKind::Enum { options }
        | ValidationErrorKind::Constant {
            expected_value: options,
        } => {
            let opts: Vec<String> = match options {
                Value::Array(a) => a.iter().map(scalar).collect(),
                v => vec![scalar(v)],
            };
            at("bad-value", format!("`{field}` has an unsupported value"))
                .value(value)
                .expected(one_of(&opts))
        }
        ValidationErrorKind::Minimum { .. } | ValidationErrorKind::Maximum { .. } => {
            let sub = schema_at(schema, pointer, schema);
            let min = sub
                .and_then(|s| s.get("minimum"))
                .map(scalar)
                .unwrap_or_default();
            let max = sub
                .and_then(|s| s.get("maximum"))
                .map(scalar)
                .unwrap_or_default();
            let what = if field == "replicas" {
                "replicas"
            } else {
                field
            };
            at("out-of-range", format!("`{what}` is out of range"))
                .value(value)
                .expected(format!("a whole number from {min} to {max}"))
        }
        ValidationErrorKind::AnyOf { .. } if is_quantity(schema_at(schema, pointer, schema)) => at(
            "bad-quantity",
            format!("`{value}` is not a Kubernetes quantity"),
        )
        .value(value)
        .expected(QUANTITY_EXPECTED),
        ValidationErrorKind::Pattern { pattern } => {
            let (message, expected) = describe_pattern(field, pattern);
            at("bad-value", message).value(value).expected(expected)
        }
        ValidationErrorKind::MinLength { .. } => {
            at("empty-value", format!("`{field}` must not be empty")).value(value)
        }
        ValidationErrorKind::MaxLength { limit } => at(
            "too-long",
            format!("`{field}` is longer than {limit} characters"),
        )
        .value(value),
        _ => at("schema", err.to_string()).value(value),
    };
    vec![d]
}

fn describe_pattern(field: &str, pattern: &str) -> (String, String) {
    let dns = "lowercase letters, digits and `-`, starting and ending with a letter or digit (a DNS-1123 label)";
    match pattern {
        p if p.starts_with("^[a-z0-9]([-a-z0-9]*") => (format!("`{field}` is not a valid name"), dns.into()),
        p if p.starts_with("^[A-Za-z_]") => (
            format!("`{field}` is not a valid environment variable name"),
            "letters, digits and `_`, not starting with a digit".into(),
        ),
        "^/" => (format!("`{field}` must be an absolute HTTP path"), "a path starting with `/`".into()),
        p if p.starts_with("^[a-z0-9]+([._/-]") => (
            format!("`{field}` is not a valid image repository"),
            "a lowercase repository name without a tag, e.g. `todo-backend` or `registry:5000/team/app`".into(),
        ),
        p if p.starts_with("^[-._a-zA-Z0-9]") => (
            format!("`{field}` is not a valid Secret key"),
            "letters, digits, `-`, `_` and `.`".into(),
        ),
        p => (format!("`{field}` has an invalid format"), format!("text matching `{p}`")),
    }
}

fn is_quantity(schema: Option<&Value>) -> bool {
    schema
        .and_then(|s| s.get("description"))
        .and_then(Value::as_str)
        .is_some_and(|d| d.contains("Kubernetes quantity"))
}

/// The sub-schema that governs the node at `pointer`, following `$ref`s.
fn schema_at<'a>(root: &'a Value, pointer: &str, at: &'a Value) -> Option<&'a Value> {
    let mut cur = resolve(root, at)?;
    for seg in pointer.split('/').skip(1) {
        let seg = seg.replace("~1", "/").replace("~0", "~");
        let next = cur
            .get("properties")
            .and_then(|p| p.get(&seg))
            .or_else(|| cur.get("items"))
            .or_else(|| cur.get("additionalProperties").filter(|a| a.is_object()))?;
        cur = resolve(root, next)?;
    }
    Some(cur)
}

fn resolve<'a>(root: &'a Value, s: &'a Value) -> Option<&'a Value> {
    match s.get("$ref").and_then(Value::as_str) {
        Some(r) => {
            let name = r.strip_prefix("#/$defs/")?;
            root.get("$defs")?.get(name)
        }
        None => Some(s),
    }
}

fn property_names(schema: Option<&Value>) -> Vec<String> {
    schema
        .and_then(|s| s.get("properties"))
        .and_then(Value::as_object)
        .map(|p| p.keys().cloned().collect())
        .unwrap_or_default()
}

fn one_of(options: &[String]) -> String {
    match options {
        [] => "no other field here".into(),
        [one] => format!("`{one}`"),
        _ => {
            let quoted: Vec<String> = options.iter().map(|o| format!("`{o}`")).collect();
            format!("one of {}", quoted.join(", "))
        }
    }
}

fn did_you_mean<'a>(typo: &str, known: &'a [String]) -> Option<&'a str> {
    known
        .iter()
        .map(|k| {
            (
                strsim::damerau_levenshtein(&typo.to_lowercase(), &k.to_lowercase()),
                k,
            )
        })
        .filter(|(d, k)| *d <= 2 && *d < k.len())
        .min_by_key(|(d, _)| *d)
        .map(|(_, k)| k.as_str())
}

fn article(t: &str) -> String {
    match t {
        "object" => "a mapping".into(),
        "array" => "a list".into(),
        "integer" => "a whole number".into(),
        "null" => "nothing".into(),
        other => format!("a {other}"),
    }
}

/// A short rendering of a value for a diagnostic.
pub(crate) fn scalar(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        Value::Null => "null".into(),
        Value::Object(_) => "a mapping".into(),
        Value::Array(_) => "a list".into(),
        other => other.to_string(),
    }
}

fn describe(v: &Value) -> String {
    match v {
        Value::Array(_) => "a list".into(),
        Value::String(_) => "a string".into(),
        other => scalar(other),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generated_schemas_compile() {
        let _ = stack_kind();
        let _ = component_kind();
    }

    #[test]
    fn did_you_mean_finds_close_names_only() {
        let known = vec![
            "replicas".to_string(),
            "resources".to_string(),
            "image".to_string(),
        ];
        assert_eq!(did_you_mean("replica", &known), Some("replicas"));
        assert_eq!(did_you_mean("imgae", &known), Some("image"));
        assert_eq!(did_you_mean("volumes", &known), None);
    }
}
