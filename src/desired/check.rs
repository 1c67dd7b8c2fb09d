//! A small JSON Schema walker for the schemas generated from `schema`'s types: it knows exactly
//! the keywords schemars emits for them and reports every violation with its instance pointer.
//!
//! It replaces a general-purpose validator that, compiled once and kept for the process, cost
//! tens of megabytes (it cloned the schema's maps at every `$ref`, the draft's meta-schema
//! included). This one reads the schema as plain data and adds only the compiled `pattern`s: a
//! few hundred kilobytes at most. It never decides how a violation is worded: that is
//! `structure`'s job.

use std::collections::HashMap;

use regex::Regex;
use serde_json::{Map, Value};

use super::yaml;

/// Keywords that only annotate (for editors and people); they never make a document invalid.
const ANNOTATIONS: [&str; 7] = [
    "$schema",
    "$id",
    "$defs",
    "title",
    "description",
    "default",
    // `int64` and friends: JSON Schema 2020-12 treats formats as annotations by default.
    "format",
];

/// Keywords this walker checks.
const ASSERTIONS: [&str; 15] = [
    "$ref",
    "type",
    "properties",
    "required",
    "additionalProperties",
    "items",
    "enum",
    "const",
    "anyOf",
    "oneOf",
    "minimum",
    "maximum",
    "minLength",
    "maxLength",
    "pattern",
];

/// JSON types in the order JSON Schema tools list them, so "expected" texts read the same as
/// they always have.
const TYPE_ORDER: [&str; 7] = [
    "array", "boolean", "integer", "null", "number", "object", "string",
];

/// A schema ready to check documents against.
pub(crate) struct Checker {
    root: Value,
    patterns: HashMap<String, Regex>,
}

/// Why a schema cannot be checked by this walker (a bug in this crate, caught by unit tests).
#[derive(Debug, thiserror::Error)]
pub(crate) enum SchemaError {
    /// A keyword the walker does not implement.
    #[error("unsupported keyword `{keyword}` at {at}")]
    Unsupported {
        /// The keyword.
        keyword: String,
        /// Where in the schema.
        at: String,
    },
    /// A `$ref` that names no definition.
    #[error("reference `{reference}` at {at} names no definition")]
    Dangling {
        /// The reference.
        reference: String,
        /// Where in the schema.
        at: String,
    },
    /// A `pattern` that does not compile.
    #[error("pattern `{pattern}` does not compile")]
    Pattern {
        /// The pattern.
        pattern: String,
        /// The cause.
        #[source]
        source: regex::Error,
    },
}

/// One violation: where in the document, the offending value, and what was expected.
#[derive(Debug)]
pub(crate) struct Violation<'a> {
    /// JSON pointer of the offending node (`""` for the document).
    pub pointer: String,
    /// The offending node.
    pub instance: &'a Value,
    /// What the schema asked for.
    pub kind: Kind<'a>,
}

/// What a violated keyword asked for.
#[derive(Debug)]
pub(crate) enum Kind<'a> {
    /// `additionalProperties: false`: these keys are not fields of the object.
    Unexpected(Vec<&'a str>),
    /// `required`: this field is missing.
    Required(&'a str),
    /// `type`: the accepted types, in [`TYPE_ORDER`].
    Type(Vec<&'static str>),
    /// `enum`, `const`, or a `oneOf`/`anyOf` of constants: the accepted values.
    OneOfValues(Vec<&'a Value>),
    /// `minimum`.
    Minimum,
    /// `maximum`.
    Maximum,
    /// `minLength`.
    MinLength,
    /// `maxLength`, with the limit.
    MaxLength(u64),
    /// `pattern`.
    Pattern(&'a str),
    /// `anyOf` of schemas other than constants: none matched.
    AnyOf,
    /// `oneOf` of schemas other than constants: not exactly one matched.
    OneOf,
    /// The `false` schema: no value is allowed here.
    Never,
}

impl Checker {
    /// Prepares `root` (a generated schema with its `$defs`): refuses keywords it does not
    /// check and compiles every pattern once.
    pub(crate) fn new(root: Value) -> Result<Self, SchemaError> {
        let mut checker = Self {
            root,
            patterns: HashMap::new(),
        };
        let mut patterns = HashMap::new();
        checker.collect(&checker.root, "#", &mut patterns)?;
        checker.patterns = patterns;
        Ok(checker)
    }

    /// The schema it checks against.
    pub(crate) fn schema(&self) -> &Value {
        &self.root
    }

    /// Every violation of `instance`, in document order per keyword.
    pub(crate) fn check<'a>(&'a self, instance: &'a Value) -> Vec<Violation<'a>> {
        let mut out = Vec::new();
        let mut pointer = String::new();
        self.walk(&self.root, instance, &mut pointer, &mut out);
        out
    }

    fn is_valid(&self, schema: &Value, instance: &Value) -> bool {
        let mut out = Vec::new();
        self.walk(schema, instance, &mut String::new(), &mut out);
        out.is_empty()
    }

    fn walk<'a>(
        &'a self,
        schema: &'a Value,
        instance: &'a Value,
        pointer: &mut String,
        out: &mut Vec<Violation<'a>>,
    ) {
        let Some(s) = schema.as_object() else {
            // `true` accepts everything, `false` nothing.
            if schema == &Value::Bool(false) {
                out.push(violation(pointer, instance, Kind::Never));
            }
            return;
        };
        // `new` made sure every reference resolves.
        if let Some(target) = s
            .get("$ref")
            .and_then(Value::as_str)
            .and_then(|r| self.resolve(r))
        {
            self.walk(target, instance, pointer, out);
        }
        let mut push = |kind| out.push(violation(pointer, instance, kind));
        if let Some(t) = s.get("type") {
            let accepted: Vec<&str> = match t {
                Value::String(one) => vec![one.as_str()],
                Value::Array(many) => many.iter().filter_map(Value::as_str).collect(),
                _ => Vec::new(),
            };
            if !accepted.iter().any(|t| has_type(instance, t)) {
                let expected = TYPE_ORDER
                    .iter()
                    .copied()
                    .filter(|t| accepted.contains(t))
                    .collect();
                push(Kind::Type(expected));
            }
        }
        if let Some(options) = s.get("enum").and_then(Value::as_array) {
            if !options.iter().any(|o| o == instance) {
                push(Kind::OneOfValues(options.iter().collect()));
            }
        }
        if let Some(c) = s.get("const") {
            if c != instance {
                push(Kind::OneOfValues(vec![c]));
            }
        }
        if let Value::Number(n) = instance {
            let n = n.as_f64().unwrap_or(f64::NAN);
            if let Some(min) = s.get("minimum").and_then(Value::as_f64) {
                if n < min {
                    push(Kind::Minimum);
                }
            }
            if let Some(max) = s.get("maximum").and_then(Value::as_f64) {
                if n > max {
                    push(Kind::Maximum);
                }
            }
        }
        if let Value::String(text) = instance {
            let len = text.chars().count() as u64;
            if let Some(min) = s.get("minLength").and_then(Value::as_u64) {
                if len < min {
                    push(Kind::MinLength);
                }
            }
            if let Some(max) = s.get("maxLength").and_then(Value::as_u64) {
                if len > max {
                    push(Kind::MaxLength(max));
                }
            }
            if let Some(p) = s.get("pattern").and_then(Value::as_str) {
                if self.patterns.get(p).is_some_and(|re| !re.is_match(text)) {
                    push(Kind::Pattern(p));
                }
            }
        }
        for (keyword, matches_needed) in [("anyOf", 1..=usize::MAX), ("oneOf", 1..=1)] {
            let Some(branches) = s.get(keyword).and_then(Value::as_array) else {
                continue;
            };
            let valid = branches
                .iter()
                .filter(|b| self.is_valid(b, instance))
                .count();
            if !matches_needed.contains(&valid) {
                let kind = match constants(branches) {
                    Some(values) => Kind::OneOfValues(values),
                    None if keyword == "anyOf" => Kind::AnyOf,
                    None => Kind::OneOf,
                };
                out.push(violation(pointer, instance, kind));
            }
        }
        if let Value::Object(fields) = instance {
            self.walk_object(s, fields, instance, pointer, out);
        }
        if let (Value::Array(items), Some(item)) = (instance, s.get("items")) {
            for (i, v) in items.iter().enumerate() {
                let len = pointer.len();
                pointer.push('/');
                pointer.push_str(&i.to_string());
                self.walk(item, v, pointer, out);
                pointer.truncate(len);
            }
        }
    }

    fn walk_object<'a>(
        &'a self,
        s: &'a Map<String, Value>,
        fields: &'a Map<String, Value>,
        instance: &'a Value,
        pointer: &mut String,
        out: &mut Vec<Violation<'a>>,
    ) {
        if let Some(required) = s.get("required").and_then(Value::as_array) {
            for name in required.iter().filter_map(Value::as_str) {
                if !fields.contains_key(name) {
                    out.push(violation(pointer, instance, Kind::Required(name)));
                }
            }
        }
        let properties = s.get("properties").and_then(Value::as_object);
        let additional = s.get("additionalProperties");
        let mut unexpected = Vec::new();
        for (key, value) in fields {
            let sub = match properties.and_then(|p| p.get(key)) {
                Some(sub) => sub,
                None => match additional {
                    Some(Value::Bool(false)) => {
                        unexpected.push(key.as_str());
                        continue;
                    }
                    Some(sub @ Value::Object(_)) => sub,
                    _ => continue,
                },
            };
            let len = pointer.len();
            pointer.push('/');
            pointer.push_str(&yaml::escape(key));
            self.walk(sub, value, pointer, out);
            pointer.truncate(len);
        }
        if !unexpected.is_empty() {
            out.push(violation(pointer, instance, Kind::Unexpected(unexpected)));
        }
    }

    /// Walks the schema once: every keyword must be known, every reference resolve and every
    /// pattern compile.
    fn collect(
        &self,
        schema: &Value,
        at: &str,
        patterns: &mut HashMap<String, Regex>,
    ) -> Result<(), SchemaError> {
        let Some(s) = schema.as_object() else {
            return Ok(());
        };
        for (keyword, value) in s {
            let here = format!("{at}/{}", yaml::escape(keyword));
            match keyword.as_str() {
                "$defs" | "properties" => {
                    for (name, sub) in value.as_object().into_iter().flatten() {
                        self.collect(sub, &format!("{here}/{}", yaml::escape(name)), patterns)?;
                    }
                }
                "anyOf" | "oneOf" => {
                    for (i, sub) in value.as_array().into_iter().flatten().enumerate() {
                        self.collect(sub, &format!("{here}/{i}"), patterns)?;
                    }
                }
                "items" | "additionalProperties" => self.collect(value, &here, patterns)?,
                "type" => {
                    let names = match value {
                        Value::Array(many) => many.iter().collect(),
                        one => vec![one],
                    };
                    if let Some(bad) = names
                        .iter()
                        .find(|n| !n.as_str().is_some_and(|n| TYPE_ORDER.contains(&n)))
                    {
                        return Err(SchemaError::Unsupported {
                            keyword: format!("type {bad}"),
                            at: at.to_string(),
                        });
                    }
                }
                "$ref" => {
                    let reference = value.as_str().unwrap_or_default();
                    if self.resolve(reference).is_none() {
                        return Err(SchemaError::Dangling {
                            reference: reference.to_string(),
                            at: at.to_string(),
                        });
                    }
                }
                "pattern" => {
                    let Some(p) = value.as_str() else { continue };
                    if !patterns.contains_key(p) {
                        let re = Regex::new(p).map_err(|source| SchemaError::Pattern {
                            pattern: p.to_string(),
                            source,
                        })?;
                        patterns.insert(p.to_string(), re);
                    }
                }
                k if ANNOTATIONS.contains(&k) || ASSERTIONS.contains(&k) => {}
                k => {
                    return Err(SchemaError::Unsupported {
                        keyword: k.to_string(),
                        at: at.to_string(),
                    })
                }
            }
        }
        Ok(())
    }

    /// The definition a `#/$defs/Name` reference names.
    pub(crate) fn resolve(&self, reference: &str) -> Option<&Value> {
        let name = reference.strip_prefix("#/$defs/")?;
        self.root.get("$defs")?.get(name)
    }
}

fn violation<'a>(pointer: &str, instance: &'a Value, kind: Kind<'a>) -> Violation<'a> {
    Violation {
        pointer: pointer.to_string(),
        instance,
        kind,
    }
}

/// The values of `oneOf`/`anyOf` branches that are each one constant (how schemars writes an
/// enum with documented variants), or `None` when any branch is more than that.
fn constants(branches: &[Value]) -> Option<Vec<&Value>> {
    branches.iter().map(|b| b.get("const")).collect()
}

/// Whether `v` is of JSON Schema type `t`.
fn has_type(v: &Value, t: &str) -> bool {
    match t {
        "null" => v.is_null(),
        "boolean" => v.is_boolean(),
        "object" => v.is_object(),
        "array" => v.is_array(),
        "string" => v.is_string(),
        "number" => v.is_number(),
        // `2.0` is not an integer here: the typed fields are `i64`, which serde refuses to read
        // from a float, so accepting it would only move the error away from its line.
        "integer" => v.as_number().is_some_and(|n| n.is_i64() || n.is_u64()),
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn kinds(schema: Value, instance: Value) -> Vec<(String, String)> {
        let c = Checker::new(schema).expect("schema");
        c.check(&instance)
            .into_iter()
            .map(|v| (v.pointer, format!("{:?}", v.kind)))
            .collect()
    }

    #[test]
    fn every_keyword_of_the_generated_schemas_is_understood() {
        Checker::new(super::super::schema::document_schema()).expect("document schema");
    }

    #[test]
    fn an_unknown_keyword_is_refused_rather_than_ignored() {
        let e = Checker::new(json!({"type": "array", "uniqueItems": true}))
            .err()
            .expect("refused");
        assert_eq!(e.to_string(), "unsupported keyword `uniqueItems` at #");
    }

    #[test]
    fn a_reference_to_no_definition_is_refused() {
        let e = Checker::new(json!({"properties": {"a": {"$ref": "#/$defs/Missing"}}}))
            .err()
            .expect("refused");
        assert_eq!(
            e.to_string(),
            "reference `#/$defs/Missing` at #/properties/a names no definition"
        );
    }

    #[test]
    fn nested_violations_are_all_reported_with_their_pointers() {
        let schema = json!({
            "type": "object",
            "additionalProperties": false,
            "required": ["name"],
            "properties": {
                "ports": {"type": "array", "items": {"$ref": "#/$defs/Port"}},
                "a/b": {"type": "string", "minLength": 1}
            },
            "$defs": {"Port": {"type": "object", "properties": {"n": {"type": ["integer", "null"], "minimum": 1}}}}
        });
        let found = kinds(
            schema,
            json!({"ports": [{"n": 0}, {"n": "x"}, {"n": 2.0}], "a/b": "", "typo": 1}),
        );
        assert_eq!(
            found,
            [
                ("".into(), "Required(\"name\")".into()),
                ("/a~1b".into(), "MinLength".into()),
                ("/ports/0/n".into(), "Minimum".into()),
                ("/ports/1/n".into(), "Type([\"integer\", \"null\"])".into()),
                ("/ports/2/n".into(), "Type([\"integer\", \"null\"])".into()),
                ("".into(), "Unexpected([\"typo\"])".into()),
            ]
        );
    }

    #[test]
    fn a_one_of_constants_reports_the_accepted_values() {
        let schema = json!({"oneOf": [{"const": "TCP", "type": "string"}, {"const": "UDP", "type": "string"}]});
        assert_eq!(
            kinds(schema.clone(), json!("tcp")),
            [(
                "".into(),
                "OneOfValues([String(\"TCP\"), String(\"UDP\")])".into()
            )]
        );
        assert!(kinds(schema, json!("UDP")).is_empty());
    }

    #[test]
    fn any_of_passes_when_one_branch_does() {
        let schema = json!({"anyOf": [{"type": "string", "pattern": "^[0-9]+m?$"}, {"type": "number", "minimum": 0}]});
        assert!(kinds(schema.clone(), json!("500m")).is_empty());
        assert!(kinds(schema.clone(), json!(2)).is_empty());
        assert_eq!(
            kinds(schema.clone(), json!("5 cores")),
            [("".into(), "AnyOf".into())]
        );
        assert_eq!(kinds(schema, json!(-1)), [("".into(), "AnyOf".into())]);
    }
}
