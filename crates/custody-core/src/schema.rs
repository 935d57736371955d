//! The declared schema: data classes and collections of typed, classified fields.
//!
//! A deployment declares its schema in TOML. Each field has a type and exactly one data
//! class; the class is what Cedar policies decide on and what decides whether the vault
//! encrypts the value. Validation reports every problem at once, each with its key path.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use crate::{CollectionName, DataClass, FieldName, SchemaError, SchemaFileError};

/// The classes a schema gets when it declares none: `(name, encrypted)`.
pub const DEFAULT_CLASSES: &[(&str, bool)] = &[("protected", true), ("public", false), ("aggregate", true)];

/// Longest value accepted for one field, in bytes of its JSON encoding.
const MAX_FIELD_BYTES: usize = 64 * 1024;

/// How a data class is stored.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ClassSpec {
    /// Whether values of this class are encrypted under the subject's key (default: yes).
    #[serde(default = "yes")]
    pub encrypted: bool,
    /// Free text for operators and monitors.
    #[serde(default)]
    pub description: String,
}

fn yes() -> bool {
    true
}

/// The JSON type a field accepts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum FieldType {
    /// A UTF-8 string.
    String,
    /// A signed 64-bit integer.
    Integer,
    /// A finite floating point number.
    Number,
    /// `true` or `false`.
    Boolean,
    /// A calendar date, `YYYY-MM-DD`.
    Date,
    /// An RFC 3339 timestamp.
    Timestamp,
}

impl FieldType {
    fn name(self) -> &'static str {
        match self {
            FieldType::String => "a string",
            FieldType::Integer => "an integer",
            FieldType::Number => "a number",
            FieldType::Boolean => "a boolean",
            FieldType::Date => "a date (YYYY-MM-DD)",
            FieldType::Timestamp => "an RFC 3339 timestamp",
        }
    }
}

/// One declared field.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FieldSpec {
    /// The value's type.
    #[serde(rename = "type")]
    pub kind: FieldType,
    /// The data class policies decide on.
    pub class: DataClass,
    /// Whether equality search is offered (through a keyed blind index for encrypted classes).
    #[serde(default)]
    pub searchable: bool,
    /// Whether a create must carry the field.
    #[serde(default)]
    pub required: bool,
}

/// A declared collection.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CollectionSchema {
    /// Free text for operators.
    #[serde(default)]
    pub description: String,
    /// The collection's fields by name.
    pub fields: BTreeMap<FieldName, FieldSpec>,
}

/// Field values that passed validation against their collection.
pub type ValidatedFields = BTreeMap<FieldName, Value>;

/// A deployment's declared data classes and collections.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Schema {
    /// Declared data classes; defaults to [`DEFAULT_CLASSES`].
    #[serde(default = "default_classes")]
    pub classes: BTreeMap<DataClass, ClassSpec>,
    /// Declared collections.
    #[serde(default)]
    pub collections: BTreeMap<CollectionName, CollectionSchema>,
}

fn default_classes() -> BTreeMap<DataClass, ClassSpec> {
    DEFAULT_CLASSES
        .iter()
        .filter_map(|&(name, encrypted)| {
            DataClass::new(name).ok().map(|c| (c, ClassSpec { encrypted, description: String::new() }))
        })
        .collect()
}

impl Schema {
    /// Parses and checks a TOML schema document.
    ///
    /// # Errors
    /// [`SchemaFileError::Parse`] for bad TOML or shape (with the key path),
    /// [`SchemaFileError::Invalid`] listing every semantic problem.
    pub fn from_toml(text: &str) -> Result<Self, SchemaFileError> {
        let schema: Schema = toml::from_str(text).map_err(|e| SchemaFileError::Parse(one_line(&e.to_string())))?;
        schema.check()?;
        Ok(schema)
    }

    /// Checks cross-references: every field's class is declared, every collection has fields.
    ///
    /// # Errors
    /// [`SchemaFileError::Invalid`] with every problem and its key path.
    pub fn check(&self) -> Result<(), SchemaFileError> {
        let mut problems = Vec::new();
        if self.collections.is_empty() {
            problems.push("`collections`: no collection is declared".to_string());
        }
        for (cname, coll) in &self.collections {
            if coll.fields.is_empty() {
                problems.push(format!("`collections.{cname}.fields`: no field is declared"));
            }
            for (fname, field) in &coll.fields {
                if !self.classes.contains_key(&field.class) {
                    problems.push(format!(
                        "`collections.{cname}.fields.{fname}.class`: class `{}` is not declared in `classes`",
                        field.class
                    ));
                }
            }
        }
        if problems.is_empty() { Ok(()) } else { Err(SchemaFileError::Invalid(problems)) }
    }

    /// The collection named `name`.
    ///
    /// # Errors
    /// [`SchemaError::UnknownCollection`].
    pub fn collection(&self, name: &str) -> Result<(&CollectionName, &CollectionSchema), SchemaError> {
        self.collections
            .iter()
            .find(|(k, _)| k.as_str() == name)
            .ok_or_else(|| SchemaError::UnknownCollection(truncate(name)))
    }

    /// Whether values of `class` are encrypted at rest. Undeclared classes are (fail closed).
    pub fn is_encrypted(&self, class: &DataClass) -> bool {
        self.classes.get(class).is_none_or(|c| c.encrypted)
    }

    /// Validates a create (`partial == false`) or update (`partial == true`) body.
    ///
    /// # Errors
    /// The first problem found, naming the field.
    pub fn validate_fields(
        &self,
        collection: &CollectionName,
        fields: &Map<String, Value>,
        partial: bool,
    ) -> Result<ValidatedFields, SchemaError> {
        let (_, coll) = self.collection(collection.as_str())?;
        let mut out = BTreeMap::new();
        for (name, value) in fields {
            let (fname, spec) = coll.fields.iter().find(|(k, _)| k.as_str() == name).ok_or_else(|| {
                SchemaError::UnknownField { collection: collection.to_string(), field: truncate(name) }
            })?;
            check_value(fname, spec.kind, value)?;
            out.insert(fname.clone(), value.clone());
        }
        if !partial && let Some((missing, _)) = coll.fields.iter().find(|(k, s)| s.required && !out.contains_key(*k)) {
            return Err(SchemaError::MissingField(missing.to_string()));
        }
        Ok(out)
    }
}

fn check_value(field: &FieldName, kind: FieldType, value: &Value) -> Result<(), SchemaError> {
    let wrong = |got| SchemaError::WrongType { field: field.to_string(), expected: kind.name(), got };
    let bad = |reason: String| SchemaError::BadValue { field: field.to_string(), reason };
    let size = match value {
        Value::String(s) => s.len() + 2,
        _ => 32,
    };
    if size > MAX_FIELD_BYTES {
        return Err(SchemaError::ValueTooLarge { field: field.to_string(), len: size, max: MAX_FIELD_BYTES });
    }
    match (kind, value) {
        (FieldType::String, Value::String(_)) => Ok(()),
        (FieldType::Integer, Value::Number(n)) if n.is_i64() => Ok(()),
        (FieldType::Integer, Value::Number(_)) => Err(bad("must be an integer in the signed 64-bit range".into())),
        (FieldType::Number, Value::Number(_)) => Ok(()),
        (FieldType::Boolean, Value::Bool(_)) => Ok(()),
        (FieldType::Date, Value::String(s)) => {
            time::Date::parse(s, time::macros::format_description!("[year]-[month]-[day]"))
                .map(|_| ())
                .map_err(|_| bad(format!("`{}` is not a date (YYYY-MM-DD)", truncate(s))))
        }
        (FieldType::Timestamp, Value::String(s)) => {
            time::OffsetDateTime::parse(s, &time::format_description::well_known::Rfc3339)
                .map(|_| ())
                .map_err(|_| bad(format!("`{}` is not an RFC 3339 timestamp", truncate(s))))
        }
        (_, v) => Err(wrong(json_type(v))),
    }
}

/// The JSON type name of a value, for error messages.
fn json_type(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

fn truncate(s: &str) -> String {
    s.chars().take(64).collect()
}

fn one_line(s: &str) -> String {
    s.split_whitespace().collect::<Vec<_>>().join(" ")
}

#[cfg(test)]
mod tests {
    use super::*;

    const SAMPLE: &str = r#"
[collections.profiles.fields.email]
type = "string"
class = "protected"
searchable = true
[collections.profiles.fields.handle]
type = "string"
class = "public"
required = true
[collections.profiles.fields.birthdate]
type = "date"
class = "protected"
"#;

    fn coll() -> CollectionName {
        CollectionName::new("profiles").unwrap()
    }

    #[test]
    fn default_classes_apply() {
        let s = Schema::from_toml(SAMPLE).unwrap();
        assert!(s.is_encrypted(&DataClass::new("protected").unwrap()));
        assert!(!s.is_encrypted(&DataClass::new("public").unwrap()));
    }

    #[test]
    fn undeclared_class_is_reported_with_key_path() {
        let bad = SAMPLE.replace("class = \"public\"", "class = \"secret\"");
        let err = Schema::from_toml(&bad).unwrap_err().to_string();
        assert!(err.contains("collections.profiles.fields.handle.class"), "{err}");
    }

    #[test]
    fn records_are_checked_field_by_field() {
        let s = Schema::from_toml(SAMPLE).unwrap();
        let body = |v: Value| v.as_object().unwrap().clone();
        assert!(
            s.validate_fields(&coll(), &body(serde_json::json!({"handle": "a", "birthdate": "2001-02-03"})), false)
                .is_ok()
        );
        assert_eq!(
            s.validate_fields(&coll(), &body(serde_json::json!({"handle": "a", "nope": 1})), false),
            Err(SchemaError::UnknownField { collection: "profiles".into(), field: "nope".into() })
        );
        assert!(matches!(
            s.validate_fields(&coll(), &body(serde_json::json!({"handle": 5})), false),
            Err(SchemaError::WrongType { .. })
        ));
        assert!(matches!(
            s.validate_fields(&coll(), &body(serde_json::json!({"handle": "a", "birthdate": "2001-13-40"})), false),
            Err(SchemaError::BadValue { .. })
        ));
        assert_eq!(
            s.validate_fields(&coll(), &body(serde_json::json!({"email": "x@y"})), false),
            Err(SchemaError::MissingField("handle".into()))
        );
        assert!(s.validate_fields(&coll(), &body(serde_json::json!({"email": "x@y"})), true).is_ok());
    }
}
