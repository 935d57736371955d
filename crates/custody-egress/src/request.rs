//! Export requests and the plans they resolve to.
//!
//! A request says what a principal wants; a [`Plan`] is what the gateway will do, after the
//! profile and schema had their say. Planning refuses anything the profile does not allow
//! instead of silently narrowing it, so a requester always knows what they got.

use std::collections::BTreeSet;

use serde::{Deserialize, Serialize};
use serde_json::Value;

use custody_core::{DataClass, ExportField, FieldName, FieldType, Schema};

use crate::aggregate::NoiseSpec;
use crate::profile::field_name;
use crate::{EgressError, Profile, Transform};

/// Longest destination name.
const MAX_DESTINATION: usize = 64;
/// Longest purpose.
const MAX_PURPOSE: usize = 256;
/// Most group-by or sum fields.
const MAX_COLUMNS: usize = 64;

/// The output format of an export: the bytes released (and hashed into the log entry).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum OutputFormat {
    /// One JSON object per line.
    #[default]
    Ndjson,
    /// One Apache Parquet file: a fixed column schema per plan, snappy-compressed row groups.
    Parquet,
}

impl OutputFormat {
    /// The media type the export is served as.
    pub fn content_type(self) -> &'static str {
        match self {
            OutputFormat::Ndjson => "application/x-ndjson",
            OutputFormat::Parquet => "application/vnd.apache.parquet",
        }
    }

    /// The usual file extension (without the dot).
    pub fn extension(self) -> &'static str {
        match self {
            OutputFormat::Ndjson => "ndjson",
            OutputFormat::Parquet => "parquet",
        }
    }
}

/// Keep only rows whose transformed `field` equals `equals`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Filter {
    /// A field the profile passes or generalises.
    pub field: String,
    /// The transformed value to match (e.g. `1990` for a `year` field).
    pub equals: Value,
}

/// A sum over a numeric field, clamped to `[min, max]` (which bounds its sensitivity).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SumSpec {
    /// The field to sum.
    pub field: String,
    /// Values below are counted as `min`.
    pub min: f64,
    /// Values above are counted as `max`.
    pub max: f64,
}

/// Group-by counts and sums instead of rows.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AggregateSpec {
    /// Fields to group by (each passed or generalised by the profile).
    #[serde(default)]
    pub group_by: Vec<String>,
    /// Sums to compute per group.
    #[serde(default)]
    pub sums: Vec<SumSpec>,
    /// Groups with fewer members are suppressed.
    pub k: u64,
    /// Differential-privacy noise, charged to the destination's epsilon budget.
    #[serde(default)]
    pub noise: Option<NoiseSpec>,
}

/// What a principal asks the egress gateway for.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ExportRequest {
    /// The collection to export from.
    pub collection: String,
    /// The export profile saying how each field crosses.
    pub profile: String,
    /// Where the data goes; policies see it as `context.destination`.
    pub destination: String,
    /// Why; policies see it as `context.purpose`, and it is logged.
    pub purpose: String,
    /// Fields to export (row exports); default: every field the profile lets cross as a row.
    #[serde(default)]
    pub fields: Option<Vec<String>>,
    /// Keep only matching rows.
    #[serde(default)]
    pub filter: Option<Filter>,
    /// Aggregate instead of exporting rows.
    #[serde(default)]
    pub aggregate: Option<AggregateSpec>,
    /// Output format.
    #[serde(default)]
    pub format: OutputFormat,
}

/// One field of a plan with its class, type and transform.
#[derive(Debug, Clone, PartialEq)]
pub struct Column {
    /// The field.
    pub field: FieldName,
    /// Its data class.
    pub class: DataClass,
    /// Its type.
    pub kind: FieldType,
    /// How it crosses.
    pub transform: Transform,
}

/// A sum column: the field and its clamp.
#[derive(Debug, Clone, PartialEq)]
pub struct SumColumn {
    /// The summed field.
    pub column: Column,
    /// Lower clamp.
    pub min: f64,
    /// Upper clamp.
    pub max: f64,
}

/// Rows or an aggregate.
#[derive(Debug, Clone, PartialEq)]
pub enum PlanKind {
    /// One output line per matching record.
    Rows {
        /// The output columns.
        columns: Vec<Column>,
        /// Whether rows carry the subject's pseudonym as `_subject`.
        subject: bool,
    },
    /// One output line per group that has at least `k` members.
    Aggregate {
        /// Group-by columns (transformed before grouping).
        group_by: Vec<Column>,
        /// Sums.
        sums: Vec<SumColumn>,
        /// Minimum group size.
        k: u64,
        /// Noise, if asked.
        noise: Option<NoiseSpec>,
    },
}

/// A checked export: what is read, how it is transformed, what is emitted.
#[derive(Debug, Clone, PartialEq)]
pub struct Plan {
    /// The request as asked (logged as the query).
    pub request: ExportRequest,
    /// Rows or aggregate.
    pub kind: PlanKind,
    /// The filter, on a transformed column.
    pub filter: Option<(Column, Value)>,
}

fn valid_name(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= MAX_DESTINATION
        && s.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
}

impl ExportRequest {
    /// Checks the request against its profile and the schema.
    ///
    /// # Errors
    /// [`EgressError::BadRequest`] naming the problem.
    pub fn plan(&self, profile: &Profile, schema: &Schema) -> Result<Plan, EgressError> {
        let bad = |m: String| Err(EgressError::BadRequest(m));
        if !valid_name(&self.destination) {
            return bad(format!("`destination` must be 1 to {MAX_DESTINATION} letters, digits, `-`, `_` or `.`"));
        }
        let purpose = self.purpose.trim();
        if purpose.is_empty() || purpose.len() > MAX_PURPOSE || purpose.chars().any(|c| c.is_control()) {
            return bad(format!("`purpose` must be 1 to {MAX_PURPOSE} printable characters"));
        }
        if profile.collection != self.collection {
            return bad(format!(
                "profile `{}` exports `{}`, not `{}`",
                self.profile,
                profile.collection,
                short(&self.collection)
            ));
        }
        if !profile.destinations.is_empty() && !profile.destinations.iter().any(|d| d == &self.destination) {
            return bad(format!(
                "profile `{}` is not for destination `{}` (it is for: {})",
                self.profile,
                self.destination,
                profile.destinations.join(", ")
            ));
        }
        let (_, coll) = schema.collection(&self.collection).map_err(|e| EgressError::BadRequest(e.to_string()))?;
        let column = |field: &str| -> Result<Column, EgressError> {
            let name = field_name(field)
                .ok_or_else(|| EgressError::BadRequest(format!("`{}` is not a field name", short(field))))?;
            let spec = coll.fields.get(&name).ok_or_else(|| {
                EgressError::BadRequest(format!("`{}` has no field `{}`", self.collection, short(field)))
            })?;
            Ok(Column { field: name, class: spec.class.clone(), kind: spec.kind, transform: profile.transform(field) })
        };
        let filter = match &self.filter {
            None => None,
            Some(f) => {
                let c = column(&f.field)?;
                if !(c.transform == Transform::Pass || c.transform.is_generalising()) {
                    return bad(format!(
                        "filter field `{}` is `{}` in profile `{}`; filters apply only to passed or generalised fields",
                        c.field, c.transform, self.profile
                    ));
                }
                Some((c, f.equals.clone()))
            }
        };
        let kind = match &self.aggregate {
            None => {
                let columns: Vec<Column> = match &self.fields {
                    Some(list) => {
                        let mut seen = BTreeSet::new();
                        let mut out = Vec::new();
                        for f in list {
                            let c = column(f)?;
                            if !seen.insert(c.field.clone()) {
                                return bad(format!("field `{}` is asked twice", c.field));
                            }
                            match c.transform {
                                Transform::Drop => {
                                    return bad(format!(
                                        "field `{}` may not leave under profile `{}`",
                                        c.field, self.profile
                                    ));
                                }
                                Transform::Aggregate => {
                                    return bad(format!(
                                        "field `{}` leaves only aggregated under profile `{}`",
                                        c.field, self.profile
                                    ));
                                }
                                _ => out.push(c),
                            }
                        }
                        out
                    }
                    None => coll
                        .fields
                        .keys()
                        .map(|f| column(f.as_str()))
                        .collect::<Result<Vec<_>, _>>()?
                        .into_iter()
                        .filter(|c| !matches!(c.transform, Transform::Drop | Transform::Aggregate))
                        .collect(),
                };
                if columns.is_empty() && profile.subject != Transform::Pseudonymise {
                    return bad(format!(
                        "profile `{}` lets no field of `{}` leave as rows",
                        self.profile, self.collection
                    ));
                }
                PlanKind::Rows { columns, subject: profile.subject == Transform::Pseudonymise }
            }
            Some(a) => {
                if self.fields.is_some() {
                    return bad("`fields` is for row exports; an aggregate names `group_by` and `sums`".into());
                }
                if a.group_by.len() > MAX_COLUMNS || a.sums.len() > MAX_COLUMNS {
                    return bad(format!("at most {MAX_COLUMNS} group-by and {MAX_COLUMNS} sum fields"));
                }
                if a.k < 2 {
                    return bad("`k` must be at least 2".into());
                }
                let mut group_by = Vec::new();
                for f in &a.group_by {
                    let c = column(f)?;
                    if !(c.transform == Transform::Pass || c.transform.is_generalising()) {
                        return bad(format!(
                            "group-by field `{}` is `{}` in profile `{}`; group by passed or generalised fields",
                            c.field, c.transform, self.profile
                        ));
                    }
                    if group_by.iter().any(|g: &Column| g.field == c.field) {
                        return bad(format!("group-by field `{}` is named twice", c.field));
                    }
                    group_by.push(c);
                }
                let mut sums = Vec::new();
                for s in &a.sums {
                    let c = column(&s.field)?;
                    if !matches!(c.kind, FieldType::Integer | FieldType::Number) {
                        return bad(format!("sum field `{}` is not numeric", c.field));
                    }
                    if c.transform == Transform::Drop {
                        return bad(format!("field `{}` may not leave under profile `{}`", c.field, self.profile));
                    }
                    if !(s.min.is_finite() && s.max.is_finite() && s.min <= s.max) {
                        return bad(format!("sum of `{}`: `min` and `max` must be finite with min <= max", c.field));
                    }
                    sums.push(SumColumn { column: c, min: s.min, max: s.max });
                }
                if let Some(n) = &a.noise {
                    n.check()?;
                }
                PlanKind::Aggregate { group_by, sums, k: a.k, noise: a.noise.clone() }
            }
        };
        let plan = Plan { request: self.clone(), kind, filter };
        if self.format == OutputFormat::Parquet {
            // Refused here, before any budget is charged, rather than when writing starts.
            crate::columnar::specs(&plan)?;
        }
        Ok(plan)
    }
}

fn short(s: &str) -> String {
    s.chars().take(64).collect()
}

impl Plan {
    /// Every column the plan reads (output, group-by, sums, filter).
    pub fn columns(&self) -> Vec<&Column> {
        let mut out: Vec<&Column> = match &self.kind {
            PlanKind::Rows { columns, .. } => columns.iter().collect(),
            PlanKind::Aggregate { group_by, sums, .. } => {
                group_by.iter().chain(sums.iter().map(|s| &s.column)).collect()
            }
        };
        if let Some((c, _)) = &self.filter {
            out.push(c);
        }
        out
    }

    /// The fields the plan reads: the only ones the vault needs to open, even among fields
    /// of permitted classes (a dropped field is never decrypted).
    pub fn fields(&self) -> BTreeSet<FieldName> {
        self.columns().into_iter().map(|c| c.field.clone()).collect()
    }

    /// The data classes Cedar must permit for action `export`, and the vault must open.
    pub fn classes(&self) -> BTreeSet<DataClass> {
        self.columns().into_iter().map(|c| c.class.clone()).collect()
    }

    /// Whether any value is pseudonymised (so a key epoch is used).
    pub fn pseudonymises(&self) -> bool {
        match &self.kind {
            PlanKind::Rows { columns, subject } => {
                *subject || columns.iter().any(|c| c.transform == Transform::Pseudonymise)
            }
            PlanKind::Aggregate { .. } => false,
        }
    }

    /// The epsilon this export charges to its destination's budget.
    pub fn epsilon(&self) -> Option<f64> {
        match &self.kind {
            PlanKind::Aggregate { noise: Some(n), .. } => Some(n.epsilon),
            _ => None,
        }
    }

    /// Each field that crosses and how, for the log entry.
    pub fn transforms(&self) -> Vec<ExportField> {
        let f = |c: &Column, t: String| ExportField {
            field: c.field.to_string(),
            class: c.class.to_string(),
            transform: t,
        };
        match &self.kind {
            PlanKind::Rows { columns, subject } => {
                let mut out: Vec<ExportField> = columns.iter().map(|c| f(c, c.transform.to_string())).collect();
                if *subject {
                    out.push(ExportField {
                        field: "_subject".into(),
                        class: "subject".into(),
                        transform: Transform::Pseudonymise.to_string(),
                    });
                }
                out
            }
            PlanKind::Aggregate { group_by, sums, .. } => group_by
                .iter()
                .map(|c| f(c, format!("group-by:{}", c.transform)))
                .chain(sums.iter().map(|s| f(&s.column, format!("sum:[{},{}]", s.min, s.max))))
                .collect(),
        }
    }

    /// The request as logged.
    pub fn query(&self) -> Value {
        serde_json::to_value(&self.request).unwrap_or(Value::Null)
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use super::*;
    use crate::Profiles;

    use crate::profile::tests::SCHEMA;
    const PROFILES: &str = r#"
[profiles.p]
collection = "profiles"
destinations = ["global"]
subject = "pseudonymise"
fields = { email = "pseudonymise", handle = "pass", birthdate = "year", watch_minutes = "aggregate" }
"#;

    fn req(v: Value) -> ExportRequest {
        serde_json::from_value(v).unwrap()
    }

    #[test]
    fn plans_follow_the_profile() {
        let schema = Schema::from_toml(SCHEMA).unwrap();
        let profiles = Profiles::from_toml(PROFILES, &schema).unwrap();
        let p = profiles.get("p").unwrap();
        let base = serde_json::json!({"collection": "profiles", "profile": "p", "destination": "global", "purpose": "metrics"});
        let plan = req(base.clone()).plan(p, &schema).unwrap();
        let PlanKind::Rows { columns, subject } = &plan.kind else { panic!() };
        let names: Vec<&str> = columns.iter().map(|c| c.field.as_str()).collect();
        assert_eq!(names, ["birthdate", "email", "handle"]);
        assert!(subject);
        assert!(plan.pseudonymises());

        let mut r = base.clone();
        r["fields"] = serde_json::json!(["watch_minutes"]);
        assert!(req(r).plan(p, &schema).unwrap_err().to_string().contains("only aggregated"));
        let mut r = base.clone();
        r["filter"] = serde_json::json!({"field": "email", "equals": "x"});
        assert!(req(r).plan(p, &schema).unwrap_err().to_string().contains("filters apply only"));
        let mut r = base.clone();
        r["destination"] = serde_json::json!("mars");
        assert!(req(r).plan(p, &schema).unwrap_err().to_string().contains("not for destination"));
        let mut r = base.clone();
        r["aggregate"] = serde_json::json!({"group_by": ["email"], "k": 5});
        assert!(req(r).plan(p, &schema).unwrap_err().to_string().contains("group by passed or generalised"));
        let mut r = base;
        r["aggregate"] = serde_json::json!({"group_by": ["birthdate"], "sums": [{"field": "watch_minutes", "min": 0, "max": 100}], "k": 5, "noise": {"mechanism": "laplace", "epsilon": 0.5}});
        let plan = req(r).plan(p, &schema).unwrap();
        assert_eq!(plan.epsilon(), Some(0.5));
        assert_eq!(plan.classes().len(), 2);
    }
}
