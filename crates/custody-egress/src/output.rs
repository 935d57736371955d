//! Producing the exact bytes that leave: transformed rows or released groups as NDJSON,
//! hashed as they are written so the log entry can name their SHA-256.

use std::collections::BTreeMap;
use std::io::Write;

use rand::Rng;
use serde_json::Value;
use sha2::{Digest, Sha256};

use custody_core::FieldName;

use crate::aggregate::Aggregator;
use crate::transform::generalise;
use crate::{Column, EgressError, Plan, PlanKind, Pseudonymiser, Transform};

/// A writer that counts and hashes every byte it passes on.
#[derive(Debug)]
pub struct DigestWriter<W> {
    inner: W,
    hasher: Sha256,
    bytes: u64,
}

impl<W: Write> DigestWriter<W> {
    /// Wraps `inner`.
    pub fn new(inner: W) -> Self {
        Self { inner, hasher: Sha256::new(), bytes: 0 }
    }

    /// Flushes and returns the inner writer, the SHA-256 and the length of what was written.
    ///
    /// # Errors
    /// The flush failed.
    pub fn finish(mut self) -> std::io::Result<(W, [u8; 32], u64)> {
        self.inner.flush()?;
        Ok((self.inner, self.hasher.finalize().into(), self.bytes))
    }
}

impl<W: Write> Write for DigestWriter<W> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let n = self.inner.write(buf)?;
        let done = buf.get(..n).unwrap_or(buf);
        self.hasher.update(done);
        self.bytes += done.len() as u64;
        Ok(n)
    }

    fn flush(&mut self) -> std::io::Result<()> {
        self.inner.flush()
    }
}

/// What an export produced.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Summary {
    /// Lines emitted: rows, or released groups.
    pub rows: u64,
    /// Groups suppressed below `k`.
    pub suppressed: u64,
    /// Records skipped by the filter.
    pub filtered: u64,
    /// Bytes emitted.
    pub bytes: u64,
    /// SHA-256 (hex) of the bytes emitted.
    pub sha256: String,
}

/// The per-record half of a row export: filter, transform and format one record as its
/// NDJSON line. It holds no output, so worker threads can share one (it is `Sync`) and
/// format pages in parallel while an [`Exporter`] of the same plan appends their
/// [`FormattedRows`] in order; the bytes are exactly those [`Exporter::push`] writes.
#[derive(Debug)]
pub struct RowFormatter<'p> {
    plan: &'p Plan,
    pseudo: Option<Pseudonymiser>,
    /// `"field":` prefixes of row columns, serialised once.
    keys: Vec<Vec<u8>>,
}

/// Lines formatted by a [`RowFormatter`], for [`Exporter::push_formatted`]: the bytes, how
/// many rows they hold and how many records the filter dropped.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct FormattedRows {
    bytes: Vec<u8>,
    rows: u64,
    filtered: u64,
}

impl FormattedRows {
    /// An empty batch with room for `bytes` bytes of lines.
    pub fn with_capacity(bytes: usize) -> Self {
        Self { bytes: Vec::with_capacity(bytes), rows: 0, filtered: 0 }
    }

    /// The lines so far.
    pub fn bytes(&self) -> &[u8] {
        &self.bytes
    }

    /// Rows so far.
    pub fn rows(&self) -> u64 {
        self.rows
    }
}

impl<'p> RowFormatter<'p> {
    /// A formatter for `plan`; `pseudo` is required when the plan pseudonymises.
    ///
    /// # Errors
    /// [`EgressError::BadRequest`] if the plan needs pseudonyms and no key was given.
    pub fn new(plan: &'p Plan, pseudo: Option<Pseudonymiser>) -> Result<Self, EgressError> {
        if plan.pseudonymises() && pseudo.is_none() {
            return Err(EgressError::BadRequest("this export needs a pseudonym key".into()));
        }
        let keys = match &plan.kind {
            PlanKind::Rows { columns, .. } => columns
                .iter()
                .map(|c| {
                    let mut k = serde_json::to_vec(c.field.as_str()).unwrap_or_default();
                    k.push(b':');
                    k
                })
                .collect(),
            PlanKind::Aggregate { .. } => Vec::new(),
        };
        Ok(Self { plan, pseudo, keys })
    }

    /// The plan this formatter serves.
    pub fn plan(&self) -> &'p Plan {
        self.plan
    }

    fn apply(&self, c: &Column, v: &Value) -> Value {
        match c.transform {
            Transform::Pass => v.clone(),
            Transform::Pseudonymise => self.pseudo.as_ref().map_or(Value::Null, |p| p.pseudonym(c.field.as_str(), v)),
            t => generalise(t, v).unwrap_or(Value::Null),
        }
    }

    /// Whether the record passes the plan's filter (always, without one).
    pub fn selects(&self, fields: &BTreeMap<FieldName, Value>) -> bool {
        self.selects_by(|f| fields.get(f))
    }

    /// [`RowFormatter::selects`] with the record's values looked up by `get`.
    pub fn selects_by<'v>(&self, get: impl Fn(&FieldName) -> Option<&'v Value>) -> bool {
        match &self.plan.filter {
            Some((c, want)) => &self.apply(c, get(&c.field).unwrap_or(&Value::Null)) == want,
            None => true,
        }
    }

    /// Appends the record's line to `out` if it passes the filter, else counts it filtered.
    /// For an aggregate plan nothing is appended (aggregates go through [`Exporter::push`]).
    ///
    /// # Errors
    /// [`EgressError::Io`] if a value cannot be serialised.
    pub fn format(
        &self,
        subject: &str,
        fields: &BTreeMap<FieldName, Value>,
        out: &mut FormattedRows,
    ) -> Result<(), EgressError> {
        self.format_by(subject, |f| fields.get(f), out)
    }

    /// [`RowFormatter::format`] with the record's values looked up by `get`, for callers
    /// that hold them in something other than a map (the export scan's per-column slots).
    ///
    /// # Errors
    /// As [`RowFormatter::format`].
    pub fn format_by<'v>(
        &self,
        subject: &str,
        get: impl Fn(&FieldName) -> Option<&'v Value>,
        out: &mut FormattedRows,
    ) -> Result<(), EgressError> {
        if !self.selects_by(&get) {
            out.filtered += 1;
            return Ok(());
        }
        let PlanKind::Rows { columns, subject: with_subject } = &self.plan.kind else { return Ok(()) };
        let line = &mut out.bytes;
        line.push(b'{');
        for (i, (c, key)) in columns.iter().zip(&self.keys).enumerate() {
            if i > 0 {
                line.push(b',');
            }
            line.extend_from_slice(key);
            let v = get(&c.field).unwrap_or(&Value::Null);
            match (c.transform, &self.pseudo, v) {
                // Written in place, byte for byte what serialising `apply`'s value gives:
                // a passed value as is, a pseudonym as a quoted hex string.
                (Transform::Pass, _, v) => serde_json::to_writer(&mut *line, v).map_err(std::io::Error::other)?,
                (Transform::Pseudonymise, Some(p), v) if !v.is_null() => {
                    line.push(b'"');
                    match v {
                        Value::String(s) => p.write_text(c.field.as_str(), s.as_bytes(), line),
                        other => p.write_text(c.field.as_str(), other.to_string().as_bytes(), line),
                    }
                    line.push(b'"');
                }
                _ => serde_json::to_writer(&mut *line, &self.apply(c, v)).map_err(std::io::Error::other)?,
            }
        }
        if *with_subject && let Some(p) = &self.pseudo {
            if !columns.is_empty() {
                line.push(b',');
            }
            line.extend_from_slice(b"\"_subject\":\"");
            p.write_text("_subject", subject.as_bytes(), line);
            line.push(b'"');
        }
        line.extend_from_slice(b"}\n");
        out.rows += 1;
        Ok(())
    }
}

/// Turns opened records into the export's output, one record at a time.
#[derive(Debug)]
pub struct Exporter<'p, W: Write> {
    format: RowFormatter<'p>,
    out: DigestWriter<W>,
    line: FormattedRows,
    rows: u64,
    filtered: u64,
    groups: Aggregator,
}

impl<'p, W: Write> Exporter<'p, W> {
    /// An exporter for `plan` writing to `out`; `pseudo` is required when the plan
    /// pseudonymises.
    ///
    /// # Errors
    /// [`EgressError::BadRequest`] if the plan needs pseudonyms and no key was given.
    pub fn new(plan: &'p Plan, pseudo: Option<Pseudonymiser>, out: W) -> Result<Self, EgressError> {
        Ok(Self {
            format: RowFormatter::new(plan, pseudo)?,
            out: DigestWriter::new(out),
            line: FormattedRows::with_capacity(512),
            rows: 0,
            filtered: 0,
            groups: Aggregator::default(),
        })
    }

    /// The row formatter of this export's plan, to format rows on other threads for
    /// [`Exporter::push_formatted`].
    pub fn formatter(&self) -> &RowFormatter<'p> {
        &self.format
    }

    /// Adds one record (its subject and its opened fields) to the export.
    ///
    /// # Errors
    /// [`EgressError::Io`] when writing fails, [`EgressError::TooManyGroups`].
    pub fn push(&mut self, subject: &str, fields: &BTreeMap<FieldName, Value>) -> Result<(), EgressError> {
        match &self.format.plan.kind {
            PlanKind::Rows { .. } => {
                self.line.bytes.clear();
                self.line.rows = 0;
                self.line.filtered = 0;
                self.format.format(subject, fields, &mut self.line)?;
                self.out.write_all(&self.line.bytes)?;
                self.rows += self.line.rows;
                self.filtered += self.line.filtered;
            }
            PlanKind::Aggregate { group_by, sums, .. } => {
                if !self.format.selects(fields) {
                    self.filtered += 1;
                    return Ok(());
                }
                let get = |c: &Column| fields.get(&c.field).unwrap_or(&Value::Null);
                let key: Vec<Value> = group_by.iter().map(|c| self.format.apply(c, get(c))).collect();
                let values: Vec<(f64, &crate::SumColumn)> =
                    sums.iter().map(|s| (get(&s.column).as_f64().unwrap_or(0.0), s)).collect();
                self.groups.add(key, &values)?;
            }
        }
        Ok(())
    }

    /// Appends rows a [`RowFormatter`] of this plan formatted, as if each record had been
    /// [`Exporter::push`]ed: call it with batches in record order for the same bytes.
    ///
    /// # Errors
    /// [`EgressError::Io`] when writing fails; [`EgressError::BadRequest`] for an aggregate
    /// plan, whose records must be pushed.
    pub fn push_formatted(&mut self, batch: &FormattedRows) -> Result<(), EgressError> {
        if !matches!(self.format.plan.kind, PlanKind::Rows { .. }) {
            return Err(EgressError::BadRequest("an aggregate takes records, not formatted rows".into()));
        }
        self.out.write_all(&batch.bytes)?;
        self.rows += batch.rows;
        self.filtered += batch.filtered;
        Ok(())
    }

    /// Writes what remains (released groups, with noise if asked) and returns the summary
    /// and the inner writer.
    ///
    /// # Errors
    /// [`EgressError::Io`].
    pub fn finish<R: Rng>(mut self, rng: &mut R) -> Result<(Summary, W), EgressError> {
        let mut suppressed = 0;
        if let PlanKind::Aggregate { group_by, sums, k, noise } = &self.format.plan.kind {
            let names: Vec<String> = group_by.iter().map(|c| c.field.to_string()).collect();
            let groups = std::mem::take(&mut self.groups);
            let (released, s) = groups.finish(&names, sums, *k, noise.as_ref(), rng);
            suppressed = s;
            for r in released {
                serde_json::to_writer(&mut self.out, &r.line).map_err(std::io::Error::other)?;
                self.out.write_all(b"\n")?;
                self.rows += 1;
            }
        }
        let (inner, digest, bytes) = self.out.finish()?;
        Ok((
            Summary { rows: self.rows, suppressed, filtered: self.filtered, bytes, sha256: hex::encode(digest) },
            inner,
        ))
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]
    use super::*;
    use crate::{ExportRequest, Profiles};
    use custody_core::Schema;
    use proptest::prelude::*;
    use rand::SeedableRng;
    use serde_json::json;

    const SCHEMA: &str = r#"
[collections.profiles.fields.email]
type = "string"
class = "protected"
[collections.profiles.fields.phone]
type = "string"
class = "protected"
[collections.profiles.fields.handle]
type = "string"
class = "public"
[collections.profiles.fields.birthdate]
type = "date"
class = "protected"
[collections.profiles.fields.precise_location]
type = "string"
class = "protected"
[collections.profiles.fields.watch_minutes]
type = "integer"
class = "aggregate"
"#;
    const PROFILES: &str = r#"
[profiles.rows]
collection = "profiles"
subject = "pseudonymise"
fields = { email = "pseudonymise", phone = "drop", handle = "pass", birthdate = "month", precise_location = "region", watch_minutes = "bucket:10" }
[profiles.agg]
collection = "profiles"
fields = { birthdate = "year", precise_location = "country", watch_minutes = "aggregate" }
"#;

    fn setup() -> (Schema, Profiles) {
        let schema = Schema::from_toml(SCHEMA).unwrap();
        let profiles = Profiles::from_toml(PROFILES, &schema).unwrap();
        (schema, profiles)
    }

    fn plan(profiles: &Profiles, schema: &Schema, extra: Value) -> Plan {
        let mut r = json!({"collection": "profiles", "profile": "rows", "destination": "global", "purpose": "p"});
        for (k, v) in extra.as_object().unwrap() {
            r[k] = v.clone();
        }
        let req: ExportRequest = serde_json::from_value(r).unwrap();
        req.plan(profiles.get(&req.profile).unwrap(), schema).unwrap()
    }

    fn record(email: &str, born: &str, loc: &str, minutes: i64) -> BTreeMap<FieldName, Value> {
        [
            ("email", json!(email)),
            ("phone", json!(format!("+1{email}"))),
            ("handle", json!(format!("h-{email}"))),
            ("birthdate", json!(born)),
            ("precise_location", json!(loc)),
            ("watch_minutes", json!(minutes)),
        ]
        .into_iter()
        .map(|(k, v)| (FieldName::new(k).unwrap(), v))
        .collect()
    }

    fn run(plan: &Plan, recs: &[(&str, BTreeMap<FieldName, Value>)], seed: u64) -> (Summary, String) {
        let p = Pseudonymiser::new(&[1; 32], &plan.request.destination, 1);
        let mut e = Exporter::new(plan, Some(p), Vec::new()).unwrap();
        for (s, r) in recs {
            e.push(s, r).unwrap();
        }
        let (sum, out) = e.finish(&mut rand::rngs::StdRng::seed_from_u64(seed)).unwrap();
        (sum, String::from_utf8(out).unwrap())
    }

    #[test]
    fn rows_are_transformed_and_digested() {
        let (schema, profiles) = setup();
        let plan = plan(&profiles, &schema, json!({}));
        let recs = [("s1", record("zz1@x", "1990-04-02", "US-CA-SF", 123))];
        let (sum, out) = run(&plan, &recs, 0);
        let line: Value = serde_json::from_str(out.trim()).unwrap();
        assert_eq!(line["birthdate"], json!("1990-04"));
        assert_eq!(line["precise_location"], json!("US-CA"));
        assert_eq!(line["watch_minutes"], json!(120));
        assert_eq!(line["handle"], json!("h-zz1@x"));
        assert_eq!(line["email"].as_str().unwrap().len(), 32);
        assert_eq!(line["_subject"].as_str().unwrap().len(), 32);
        assert!(line.get("phone").is_none());
        assert_eq!(sum.rows, 1);
        assert_eq!(sum.bytes, out.len() as u64);
        assert_eq!(sum.sha256, hex::encode(Sha256::digest(out.as_bytes())));
    }

    #[test]
    fn filters_match_transformed_values() {
        let (schema, profiles) = setup();
        let plan = plan(&profiles, &schema, json!({"filter": {"field": "birthdate", "equals": "1990-04"}}));
        let recs = [("s1", record("a", "1990-04-02", "US", 1)), ("s2", record("b", "1991-04-02", "US", 1))];
        let (sum, _) = run(&plan, &recs, 0);
        assert_eq!((sum.rows, sum.filtered), (1, 1));
    }

    #[test]
    fn small_groups_are_suppressed() {
        let (schema, profiles) = setup();
        let plan = plan(
            &profiles,
            &schema,
            json!({"profile": "agg", "aggregate": {"group_by": ["precise_location"], "sums": [{"field": "watch_minutes", "min": 0, "max": 100}], "k": 3}}),
        );
        let mut recs = Vec::new();
        for i in 0..5 {
            recs.push(("s", record(&format!("u{i}"), "1990-01-01", "US-NY", 50 + i)));
        }
        for i in 0..2 {
            recs.push(("s", record(&format!("d{i}"), "1990-01-01", "DE-BY", 500)));
        }
        let (sum, out) = run(&plan, &recs, 0);
        assert_eq!((sum.rows, sum.suppressed), (1, 1));
        let line: Value = serde_json::from_str(out.trim()).unwrap();
        assert_eq!(line["group"]["precise_location"], json!("US"));
        assert_eq!(line["count"], json!(5));
        assert_eq!(line["sums"]["watch_minutes"], json!(260), "clamped to [0, 100] per record");
        assert!(!out.contains("DE"));
    }

    #[test]
    fn noisy_aggregates_differ_from_the_truth_but_not_wildly() {
        let (schema, profiles) = setup();
        let plan = plan(
            &profiles,
            &schema,
            json!({"profile": "agg", "aggregate": {"group_by": ["birthdate"], "k": 2, "noise": {"mechanism": "laplace", "epsilon": 1.0}}}),
        );
        let recs: Vec<_> = (0..1000).map(|i| ("s", record(&format!("u{i}"), "1990-01-01", "US", 1))).collect();
        let (_, out) = run(&plan, &recs, 3);
        let line: Value = serde_json::from_str(out.trim()).unwrap();
        let c = line["count"].as_u64().unwrap();
        assert!((950..=1050).contains(&c), "{c}");
    }

    fn field_strategy() -> impl Strategy<Value = Transform> {
        prop_oneof![
            Just(Transform::Drop),
            Just(Transform::Pseudonymise),
            Just(Transform::Region),
            Just(Transform::Country),
        ]
    }

    proptest! {
        /// Whatever the profile (among those the checker accepts) and whatever the values, a
        /// protected value never appears in the output, not even as a substring.
        #[test]
        fn no_protected_value_is_released_untransformed(
            email in "zq[a-z0-9@.]{6,24}",
            phone in "zq[a-z0-9+]{6,24}",
            loc in prop_oneof!["zq[A-Za-z0-9 -]{6,24}", "[A-Z]{2}-[A-Z0-9]{1,3}-zq[a-z]{6,12}"],
            born in "(19|20)[0-9]{2}-(0[1-9]|1[0-2])-[0-2][0-9]",
            te in field_strategy(), tp in field_strategy(), tl in field_strategy(),
            tb in prop_oneof![Just("year"), Just("month"), Just("drop"), Just("pseudonymise")],
            destination in "[a-z]{1,8}",
        ) {
            let schema = Schema::from_toml(SCHEMA).unwrap();
            let email_t = if te == Transform::Region || te == Transform::Country { Transform::Pseudonymise } else { te };
            let phone_t = if tp == Transform::Region || tp == Transform::Country { Transform::Drop } else { tp };
            let text = format!(
                "[profiles.x]\ncollection = \"profiles\"\nsubject = \"pseudonymise\"\nfields = {{ email = \"{email_t}\", phone = \"{phone_t}\", precise_location = \"{tl}\", birthdate = \"{tb}\", handle = \"pass\" }}\n"
            );
            let profiles = Profiles::from_toml(&text, &schema).unwrap();
            let req: ExportRequest = serde_json::from_value(json!({
                "collection": "profiles", "profile": "x", "destination": destination, "purpose": "p"
            })).unwrap();
            let plan = req.plan(profiles.get("x").unwrap(), &schema).unwrap();
            let mut r = record(&email, &born, &loc, 7);
            r.insert(FieldName::new("phone").unwrap(), json!(phone));
            r.insert(FieldName::new("handle").unwrap(), json!("public-handle"));
            let (_, out) = run(&plan, &[("subject-zq-1", r)], 0);
            for secret in [&email, &phone, &loc, &born, &"subject-zq-1".to_string()] {
                prop_assert!(!out.contains(secret.as_str()), "{secret} leaked in {out}");
            }
        }
    }
}
