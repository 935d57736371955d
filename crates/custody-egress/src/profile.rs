//! Export profiles: the provider's declaration of how each field may cross the boundary.
//!
//! Profiles live beside the schema (`egress.toml`) because they are part of the deployment,
//! reviewed like policies, not something a requester chooses. Checking them against the
//! schema at load refuses, among others, `pass` on an encrypted class: a protected value can
//! only leave transformed.

use std::collections::BTreeMap;
use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

use custody_core::{FieldName, FieldType, Schema};

use crate::EgressError;

/// How one field may cross the boundary.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub enum Transform {
    /// Never leaves (the default for fields a profile does not name).
    Drop,
    /// Leaves as stored; only for classes stored unencrypted (`public`).
    Pass,
    /// Replaced by a keyed pseudonym for the destination and epoch.
    Pseudonymise,
    /// A date or timestamp cut to its year.
    Year,
    /// A date or timestamp cut to its year and month.
    Month,
    /// A location (`CC[-RRR[...]]`) cut to its ISO 3166-1 country.
    Country,
    /// A location cut to its ISO 3166-2 region (`CC-RRR`).
    Region,
    /// A number replaced by the lower bound of its bucket of this width.
    Bucket(u64),
    /// Only inside aggregates: summed or grouped by, never as a row value.
    Aggregate,
}

impl Transform {
    /// Whether the value survives in a form that can be grouped by or filtered on.
    pub fn is_generalising(self) -> bool {
        matches!(
            self,
            Transform::Year | Transform::Month | Transform::Country | Transform::Region | Transform::Bucket(_)
        )
    }

    fn fits(self, kind: FieldType) -> bool {
        match self {
            Transform::Drop | Transform::Pass | Transform::Pseudonymise | Transform::Aggregate => true,
            Transform::Year | Transform::Month => matches!(kind, FieldType::Date | FieldType::Timestamp),
            Transform::Country | Transform::Region => kind == FieldType::String,
            Transform::Bucket(_) => matches!(kind, FieldType::Integer | FieldType::Number),
        }
    }
}

impl fmt::Display for Transform {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Transform::Drop => f.write_str("drop"),
            Transform::Pass => f.write_str("pass"),
            Transform::Pseudonymise => f.write_str("pseudonymise"),
            Transform::Year => f.write_str("year"),
            Transform::Month => f.write_str("month"),
            Transform::Country => f.write_str("country"),
            Transform::Region => f.write_str("region"),
            Transform::Bucket(w) => write!(f, "bucket:{w}"),
            Transform::Aggregate => f.write_str("aggregate"),
        }
    }
}

impl FromStr for Transform {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Ok(match s {
            "drop" => Transform::Drop,
            "pass" => Transform::Pass,
            "pseudonymise" | "pseudonymize" => Transform::Pseudonymise,
            "year" => Transform::Year,
            "month" => Transform::Month,
            "country" => Transform::Country,
            "region" => Transform::Region,
            "aggregate" => Transform::Aggregate,
            other => match other.strip_prefix("bucket:").map(str::parse::<u64>) {
                Some(Ok(w)) if w >= 2 => Transform::Bucket(w),
                Some(_) => return Err(format!("`{}`: a bucket width is a whole number of at least 2", short(other))),
                None => {
                    return Err(format!(
                        "`{}` is not a transform (drop, pass, pseudonymise, year, month, country, region, \
                         bucket:<width>, aggregate)",
                        short(other)
                    ));
                }
            },
        })
    }
}

impl TryFrom<String> for Transform {
    type Error = String;

    fn try_from(s: String) -> Result<Self, Self::Error> {
        s.parse()
    }
}

impl From<Transform> for String {
    fn from(t: Transform) -> Self {
        t.to_string()
    }
}

fn short(s: &str) -> String {
    s.chars().take(64).collect()
}

/// One named export profile.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Profile {
    /// The collection it exports from.
    pub collection: String,
    /// Destinations that may use it; empty means any destination the policies permit.
    #[serde(default)]
    pub destinations: Vec<String>,
    /// Whether rows carry the subject's pseudonym (`_subject`): `pseudonymise` or `drop`.
    #[serde(default = "drop")]
    pub subject: Transform,
    /// How each field crosses; fields not named are dropped.
    #[serde(default)]
    pub fields: BTreeMap<String, Transform>,
}

fn drop() -> Transform {
    Transform::Drop
}

impl Profile {
    /// The transform for `field` (drop when the profile does not name it).
    pub fn transform(&self, field: &str) -> Transform {
        self.fields.get(field).copied().unwrap_or(Transform::Drop)
    }
}

/// Every export profile of a deployment, checked against its schema.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Profiles {
    /// Profiles by name.
    #[serde(default)]
    pub profiles: BTreeMap<String, Profile>,
}

impl Profiles {
    /// Parses a TOML profile file and checks it against `schema`.
    ///
    /// # Errors
    /// [`EgressError::ProfileParse`] for bad TOML, [`EgressError::ProfileInvalid`] listing every
    /// contradiction with the schema.
    pub fn from_toml(text: &str, schema: &Schema) -> Result<Self, EgressError> {
        let p: Profiles = toml::from_str(text)
            .map_err(|e| EgressError::ProfileParse(e.to_string().split_whitespace().collect::<Vec<_>>().join(" ")))?;
        p.check(schema)?;
        Ok(p)
    }

    /// Checks every profile against the schema.
    ///
    /// # Errors
    /// [`EgressError::ProfileInvalid`] with each problem and its key path.
    pub fn check(&self, schema: &Schema) -> Result<(), EgressError> {
        let mut problems = Vec::new();
        for (name, p) in &self.profiles {
            let Ok((_, coll)) = schema.collection(&p.collection) else {
                problems.push(format!("`profiles.{name}.collection`: no collection `{}`", short(&p.collection)));
                continue;
            };
            if !matches!(p.subject, Transform::Drop | Transform::Pseudonymise) {
                problems.push(format!("`profiles.{name}.subject`: only `drop` or `pseudonymise`"));
            }
            for (field, t) in &p.fields {
                let key = format!("`profiles.{name}.fields.{}`", short(field));
                let Some((_, spec)) = coll.fields.iter().find(|(f, _)| f.as_str() == field) else {
                    problems.push(format!("{key}: no such field in `{}`", p.collection));
                    continue;
                };
                if *t == Transform::Pass && schema.is_encrypted(&spec.class) {
                    problems.push(format!(
                        "{key}: `pass` is only for unencrypted classes; `{}` is encrypted, so pseudonymise, \
                         generalise or aggregate it",
                        spec.class
                    ));
                }
                if !t.fits(spec.kind) {
                    problems.push(format!("{key}: `{t}` does not apply to a field of type {:?}", spec.kind));
                }
            }
        }
        if problems.is_empty() { Ok(()) } else { Err(EgressError::ProfileInvalid(problems)) }
    }

    /// The profile named `name`.
    ///
    /// # Errors
    /// [`EgressError::BadRequest`] naming the profiles that exist.
    pub fn get(&self, name: &str) -> Result<&Profile, EgressError> {
        self.profiles.get(name).ok_or_else(|| {
            let known: Vec<&str> = self.profiles.keys().map(String::as_str).collect();
            EgressError::BadRequest(format!("no export profile `{}` (known: {})", short(name), known.join(", ")))
        })
    }
}

/// Whether `field` names a field of the schema's collection, as a [`FieldName`].
pub(crate) fn field_name(field: &str) -> Option<FieldName> {
    FieldName::new(field).ok()
}

#[cfg(test)]
pub(crate) mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use super::*;

    pub(crate) const SCHEMA: &str = r#"
[collections.profiles.fields.email]
type = "string"
class = "protected"
[collections.profiles.fields.handle]
type = "string"
class = "public"
[collections.profiles.fields.birthdate]
type = "date"
class = "protected"
[collections.profiles.fields.watch_minutes]
type = "integer"
class = "aggregate"
"#;

    #[test]
    fn transforms_round_trip_and_bad_ones_are_named() {
        for t in ["drop", "pass", "pseudonymise", "year", "month", "country", "region", "bucket:10", "aggregate"] {
            assert_eq!(t.parse::<Transform>().unwrap().to_string(), t);
        }
        assert!("bucket:1".parse::<Transform>().unwrap_err().contains("at least 2"));
        assert!("reveal".parse::<Transform>().unwrap_err().contains("not a transform"));
    }

    #[test]
    fn pass_on_an_encrypted_class_is_refused() {
        let schema = Schema::from_toml(SCHEMA).unwrap();
        let text = r#"
[profiles.bad]
collection = "profiles"
fields = { email = "pass", handle = "year", nope = "drop" }
"#;
        let err = Profiles::from_toml(text, &schema).unwrap_err().to_string();
        assert!(err.contains("profiles.bad.fields.email"), "{err}");
        assert!(err.contains("profiles.bad.fields.handle"), "{err}");
        assert!(err.contains("profiles.bad.fields.nope"), "{err}");
        let good = r#"
[profiles.ok]
collection = "profiles"
subject = "pseudonymise"
fields = { email = "pseudonymise", handle = "pass", birthdate = "year", watch_minutes = "aggregate" }
"#;
        let p = Profiles::from_toml(good, &schema).unwrap();
        assert_eq!(p.get("ok").unwrap().transform("birthdate"), Transform::Year);
        assert_eq!(p.get("ok").unwrap().transform("unnamed"), Transform::Drop);
        assert!(p.get("other").is_err());
    }
}
