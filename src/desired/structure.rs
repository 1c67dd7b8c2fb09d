//! Structural checks of each YAML document: kind, then the JSON Schema of that kind, with every
//! violation turned into a diagnostic that points at the key or value in the source.

use std::sync::OnceLock;

use serde_json::Value;

use super::check::{Checker, Kind, Violation};
use super::diagnostic::{Diagnostic, Report};
use super::quantity::QUANTITY_EXPECTED;
use super::schema::{ComponentSpec, StackSpec, API_VERSION};
use super::yaml::{self, Document};
use super::Parsed;

fn prepare(mut schema: Value) -> Checker {
    simplify_optionals(&mut schema);
    // The schemas are generated from our own types; failing to prepare them is a bug in this
    // crate, caught by the unit tests, not something input can cause.
    Checker::new(schema).expect("schemas generated from our types use only checked keywords")
}

// The checkers hold the schema as plain data and a handful of compiled patterns (a few tens of
// kilobytes), so keeping them for the process is cheaper than regenerating them per commit.
fn stack_kind() -> &'static Checker {
    static K: OnceLock<Checker> = OnceLock::new();
    K.get_or_init(|| prepare(schemars::schema_for!(StackSpec).to_value()))
}

fn component_kind() -> &'static Checker {
    static K: OnceLock<Checker> = OnceLock::new();
    K.get_or_init(|| prepare(schemars::schema_for!(ComponentSpec).to_value()))
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
    kind: &Checker,
    report: &mut Report,
) -> Option<T> {
    let before = report.diagnostics.len();
    for v in kind.check(&doc.value) {
        for d in diagnose(file, doc, kind.schema(), &v) {
            report.push(d);
        }
    }
    if report.diagnostics.len() > before {
        return None;
    }
    // Deserializing from a reference: the document stays where it is, no copy is made.
    match T::deserialize(&doc.value) {
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

fn diagnose(file: &str, doc: &Document, schema: &Value, v: &Violation<'_>) -> Vec<Diagnostic> {
    let pointer = v.pointer.as_str();
    let span = doc.span(pointer);
    let field = pointer.rsplit('/').next().unwrap_or("");
    let value = scalar(v.instance);
    let at =
        |code, message: String| Diagnostic::error(code, file, span.value, message).at_path(pointer);
    let d = match &v.kind {
        Kind::Unexpected(unexpected) => {
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
                    .value(k.to_string())
                    .expected(one_of(&known));
                    if let Some(best) = did_you_mean(k, &known) {
                        d = d.help(format!("did you mean `{best}`?"));
                    }
                    d
                })
                .collect();
        }
        Kind::Required(name) => {
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
        Kind::Type(types) => {
            let expected = match types.as_slice() {
                [one] => article(one),
                // `null` is how an optional field is generated; a person never means to write it.
                many => many
                    .iter()
                    .filter(|t| **t != "null")
                    .map(|t| article(t))
                    .collect::<Vec<_>>()
                    .join(" or "),
            };
            at("wrong-type", format!("`{field}` has the wrong type"))
                .value(value)
                .expected(expected)
        }
        Kind::OneOfValues(options) => {
            let opts: Vec<String> = options.iter().map(|o| scalar(o)).collect();
            at("bad-value", format!("`{field}` has an unsupported value"))
                .value(value)
                .expected(one_of(&opts))
        }
        Kind::Minimum | Kind::Maximum => {
            let sub = schema_at(schema, pointer, schema);
            let min = sub
                .and_then(|s| s.get("minimum"))
                .map(scalar)
                .unwrap_or_default();
            let max = sub
                .and_then(|s| s.get("maximum"))
                .map(scalar)
                .unwrap_or_default();
            at("out-of-range", format!("`{field}` is out of range"))
                .value(value)
                .expected(format!("a whole number from {min} to {max}"))
        }
        Kind::AnyOf if is_quantity(schema_at(schema, pointer, schema)) => at(
            "bad-quantity",
            format!("`{value}` is not a Kubernetes quantity"),
        )
        .value(value)
        .expected(QUANTITY_EXPECTED),
        Kind::Pattern(pattern) => {
            let (message, expected) = describe_pattern(field, pattern);
            at("bad-value", message).value(value).expected(expected)
        }
        Kind::MinLength => at("empty-value", format!("`{field}` must not be empty")).value(value),
        Kind::MaxLength(limit) => at(
            "too-long",
            format!("`{field}` is longer than {limit} characters"),
        )
        .value(value),
        Kind::Never => at("schema", format!("`{field}` is not allowed here")).value(value),
        Kind::AnyOf | Kind::OneOf => {
            let keyword = if matches!(v.kind, Kind::AnyOf) {
                "anyOf"
            } else {
                "oneOf"
            };
            at(
                "schema",
                format!(
                    "{} is not valid under any of the schemas listed in the '{keyword}' keyword",
                    v.instance
                ),
            )
            .value(value)
        }
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
        p if p == crate::desired::schema::REGISTRY_PREFIX_PATTERN => (
            format!("`{field}` is not a valid registry prefix"),
            "a lowercase registry host, optional `:port` and path, without a scheme or tag, e.g. `registry.example.com:5000/team`".into(),
        ),
        p if p == crate::desired::schema::BUILDKIT_ADDRESS_PATTERN => (
            format!("`{field}` is not a BuildKit address"),
            "an address `buildctl --addr` takes, e.g. `tcp://buildkitd:1234` or `unix:///run/buildkit/buildkitd.sock`".into(),
        ),
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
    fn generated_schemas_are_understood_by_the_checker() {
        let _ = stack_kind();
        let _ = component_kind();
    }

    /// The errors of one file, as `(line, column, code, message, expected)`, in report order.
    fn findings(text: &str) -> Vec<(usize, usize, &'static str, String, Option<String>)> {
        let mut report = Report::default();
        let (mut stacks, mut components, mut broken) = (Vec::new(), Vec::new(), Vec::new());
        parse_file(
            "desired/x.yaml",
            text,
            &mut report,
            &mut stacks,
            &mut components,
            &mut broken,
        );
        report.sort();
        report
            .diagnostics
            .into_iter()
            .map(|d| (d.line, d.column, d.code, d.message, d.expected))
            .collect()
    }

    const COMPONENT: &str =
        "apiVersion: converge.dev/v1alpha1\nkind: Component\nname: api\nimage: {ref: 'nginx:1.27'}\n";

    #[test]
    fn an_unsupported_enum_value_names_the_accepted_ones_at_its_position() {
        let found = findings(&format!(
            "{COMPONENT}ports:\n  - {{name: http, containerPort: 80, protocol: tcp}}\n"
        ));
        assert_eq!(
            found,
            [(
                6,
                47,
                "bad-value",
                "`protocol` has an unsupported value".to_string(),
                Some("one of `TCP`, `UDP`, `SCTP`".to_string())
            )]
        );
    }

    const STACK: &str =
        "apiVersion: converge.dev/v1alpha1\nkind: Stack\nname: shop\nnamespace: shop\nbuilder: registry\n";

    #[test]
    fn a_bad_registry_prefix_or_buildkit_address_is_reported_at_its_position() {
        let prefix = |p: &str| findings(&format!("{STACK}registry:\n  prefix: {p}\n"));
        for bad in [
            "Registry.Example/team",
            "'https://registry.example/team'",
            "'r.example/team:1'",
        ] {
            let found = prefix(bad);
            assert_eq!(found.len(), 1, "{bad}: {found:?}");
            let (line, column, code, message, expected) = &found[0];
            assert_eq!((*line, *column, *code), (7, 11, "bad-value"), "{bad}");
            assert_eq!(message, "`prefix` is not a valid registry prefix");
            assert!(
                expected
                    .as_deref()
                    .is_some_and(|e| e.contains("without a scheme")),
                "{expected:?}"
            );
        }
        let empty = prefix("''");
        assert!(empty.iter().any(|f| f.2 == "empty-value"), "{empty:?}");
        assert!(prefix("registry.example:5000/team/sub").is_empty());
        assert!(prefix("localhost:5000").is_empty());

        let found = findings(&format!("{STACK}registry:\n  buildkit: buildkitd:1234\n"));
        assert_eq!(
            found,
            [(
                7,
                13,
                "bad-value",
                "`buildkit` is not a BuildKit address".to_string(),
                Some("an address `buildctl --addr` takes, e.g. `tcp://buildkitd:1234` or `unix:///run/buildkit/buildkitd.sock`".to_string())
            )]
        );
        assert!(findings(&format!("{STACK}registry:\n  buildkit: tcp://b:1234\n")).is_empty());
        let found = findings(&format!(
            "{STACK}registry:\n  prefix: r.example\n  pullsecret: x\n"
        ));
        assert_eq!(found[0].2, "unknown-field", "{found:?}");
        assert_eq!((found[0].0, found[0].1), (8, 3));
        let found = findings(&format!("{STACK}registry:\n  pullSecret: Reg_Cred\n"));
        assert_eq!(found[0].2, "bad-value", "{found:?}");
    }

    #[test]
    fn a_fraction_where_a_whole_number_belongs_is_a_wrong_type_at_its_position() {
        let found = findings(&format!(
            "{COMPONENT}ports:\n  - {{name: http, containerPort: 80.0}}\n"
        ));
        assert_eq!(
            found,
            [(
                6,
                33,
                "wrong-type",
                "`containerPort` has the wrong type".to_string(),
                Some("a whole number".to_string())
            )]
        );
    }

    #[test]
    fn every_violation_in_one_document_is_reported() {
        let found = findings(
            "apiVersion: converge.dev/v1alpha1\nkind: Stack\nname: Shop\nnamespce: shop\nbuilder: podman\nprune: {volumes: 1}\n",
        );
        let codes: Vec<_> = found.iter().map(|f| (f.0, f.2)).collect();
        assert_eq!(
            codes,
            [
                (1, "missing-field"),
                (3, "bad-value"),
                (4, "unknown-field"),
                (5, "bad-value"),
                (6, "wrong-type"),
            ],
            "{found:#?}"
        );
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
