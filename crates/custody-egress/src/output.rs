//! Producing the exact bytes that leave: transformed rows or released groups as NDJSON or
//! Parquet, hashed as they are written so the log entry can name their SHA-256.

use std::collections::BTreeMap;
use std::io::Write;

use rand::Rng;
use serde_json::Value;
use sha2::{Digest, Sha256};

use custody_core::FieldName;

use crate::aggregate::Aggregator;
use crate::columnar::{self, Col, ParquetOut, Spec};
use crate::transform::generalise;
use crate::{Column, EgressError, OutputFormat, Plan, PlanKind, Pseudonymiser, Transform};

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
/// NDJSON line or its Parquet column values. It holds no output, so worker threads can share
/// one (it is `Sync`) and format pages in parallel (the decryption and transforms, the
/// expensive part) while an [`Exporter`] of the same plan appends their [`FormattedRows`] in
/// order; the bytes are exactly those [`Exporter::push`] writes.
#[derive(Debug)]
pub struct RowFormatter<'p> {
    plan: &'p Plan,
    pseudo: Option<Pseudonymiser>,
    /// `"field":` prefixes of row columns, serialised once.
    keys: Vec<Vec<u8>>,
    /// The Parquet columns, for a Parquet export.
    specs: Option<Vec<Spec>>,
}

/// Rows formatted by a [`RowFormatter`], for [`Exporter::push_formatted`]: NDJSON lines or
/// Parquet column values, how many rows they hold and how many records the filter dropped.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct FormattedRows {
    bytes: Vec<u8>,
    /// Column values of a Parquet export (empty until its first row).
    cols: Vec<Col>,
    rows: u64,
    filtered: u64,
}

impl FormattedRows {
    /// An empty batch with room for `bytes` bytes of lines.
    pub fn with_capacity(bytes: usize) -> Self {
        Self { bytes: Vec::with_capacity(bytes), cols: Vec::new(), rows: 0, filtered: 0 }
    }

    /// The NDJSON lines so far (none for a Parquet export, whose rows are column values).
    pub fn bytes(&self) -> &[u8] {
        &self.bytes
    }

    fn clear(&mut self) {
        self.bytes.clear();
        self.cols.iter_mut().for_each(Col::clear);
        self.rows = 0;
        self.filtered = 0;
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
        let specs = match plan.request.format {
            OutputFormat::Ndjson => None,
            OutputFormat::Parquet => Some(columnar::specs(plan)?),
        };
        Ok(Self { plan, pseudo, keys, specs })
    }

    /// An empty batch for this plan's format with room for `rows` rows, for
    /// [`RowFormatter::format`].
    pub fn batch(&self, rows: usize) -> FormattedRows {
        match &self.specs {
            None => FormattedRows::with_capacity(rows * 256),
            Some(specs) => {
                FormattedRows { bytes: Vec::new(), cols: columnar::columns(specs, rows), rows: 0, filtered: 0 }
            }
        }
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

    /// Appends the record's line (or, for Parquet, its column values) to `out` if it passes
    /// the filter, else counts it filtered. For an aggregate plan nothing is appended
    /// (aggregates go through [`Exporter::push`]).
    ///
    /// # Errors
    /// [`EgressError::Io`] if a value cannot be serialised, [`EgressError::Parquet`] if a
    /// value does not fit its Parquet column.
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
        if let Some(specs) = &self.specs {
            return self.format_columns(specs, columns, *with_subject, subject, get, out);
        }
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

    /// [`RowFormatter::format`] for Parquet: each value transformed as for NDJSON, appended to
    /// its column (pseudonyms written straight into the column's buffer).
    fn format_columns<'v>(
        &self,
        specs: &[Spec],
        columns: &[Column],
        with_subject: bool,
        subject: &str,
        get: impl Fn(&FieldName) -> Option<&'v Value>,
        out: &mut FormattedRows,
    ) -> Result<(), EgressError> {
        if out.cols.len() != specs.len() {
            out.cols = columnar::columns(specs, 0);
        }
        let mut cols = out.cols.iter_mut().zip(specs);
        for c in columns {
            let Some((col, spec)) = cols.next() else { break };
            let v = get(&c.field).unwrap_or(&Value::Null);
            match (c.transform, &self.pseudo, v) {
                (Transform::Pass, _, v) => col.push_value(&spec.name, spec.kind, v)?,
                (Transform::Pseudonymise, Some(p), v) if !v.is_null() => {
                    col.push_text_with(&spec.name, |buf| match v {
                        Value::String(s) => p.write_text(c.field.as_str(), s.as_bytes(), buf),
                        other => p.write_text(c.field.as_str(), other.to_string().as_bytes(), buf),
                    })?;
                }
                _ => col.push_value(&spec.name, spec.kind, &self.apply(c, v))?,
            }
        }
        if with_subject && let Some(p) = &self.pseudo {
            let Some((col, spec)) = cols.next() else {
                return Err(EgressError::Parquet("the export has no `_subject` column".into()));
            };
            col.push_text_with(&spec.name, |buf| p.write_text("_subject", subject.as_bytes(), buf))?;
        }
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
    /// The encoder of a Parquet export, whose bytes it hands to `out` a row group at a time.
    parquet: Option<ParquetOut>,
}

impl<'p, W: Write> Exporter<'p, W> {
    /// An exporter for `plan` writing to `out`; `pseudo` is required when the plan
    /// pseudonymises.
    ///
    /// # Errors
    /// [`EgressError::BadRequest`] if the plan needs pseudonyms and no key was given.
    pub fn new(plan: &'p Plan, pseudo: Option<Pseudonymiser>, out: W) -> Result<Self, EgressError> {
        let format = RowFormatter::new(plan, pseudo)?;
        let parquet = match &format.specs {
            Some(specs) => Some(ParquetOut::new(specs.clone())?),
            None => None,
        };
        Ok(Self {
            line: format.batch(2),
            format,
            out: DigestWriter::new(out),
            rows: 0,
            filtered: 0,
            groups: Aggregator::default(),
            parquet,
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
                self.line.clear();
                self.format.format(subject, fields, &mut self.line)?;
                write_rows(&mut self.parquet, &mut self.out, &self.line)?;
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
        write_rows(&mut self.parquet, &mut self.out, batch)?;
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
            match &mut self.parquet {
                None => {
                    for r in &released {
                        serde_json::to_writer(&mut self.out, &r.line).map_err(std::io::Error::other)?;
                        self.out.write_all(b"\n")?;
                    }
                }
                Some(pq) => {
                    let cols = aggregate_columns(pq.specs(), &names, sums, &released)?;
                    pq.push_rows(&cols, released.len(), &mut self.out)?;
                }
            }
            self.rows += released.len() as u64;
        }
        if let Some(pq) = self.parquet.take() {
            pq.finish(&mut self.out)?;
        }
        let (inner, digest, bytes) = self.out.finish()?;
        Ok((
            Summary { rows: self.rows, suppressed, filtered: self.filtered, bytes, sha256: hex::encode(digest) },
            inner,
        ))
    }
}

/// Writes a batch of rows: its lines, or its column values to the Parquet encoder.
fn write_rows<W: Write>(
    parquet: &mut Option<ParquetOut>,
    out: &mut DigestWriter<W>,
    batch: &FormattedRows,
) -> Result<(), EgressError> {
    match parquet {
        None => out.write_all(&batch.bytes)?,
        Some(pq) => pq.push_rows(&batch.cols, usize::try_from(batch.rows).unwrap_or(usize::MAX), out)?,
    }
    Ok(())
}

/// The released groups as Parquet columns: group-by values, `count`, then each sum.
fn aggregate_columns(
    specs: &[Spec],
    names: &[String],
    sums: &[crate::SumColumn],
    released: &[crate::aggregate::Released],
) -> Result<Vec<Col>, EgressError> {
    let mut cols = columnar::columns(specs, released.len());
    for r in released {
        let mut next = cols.iter_mut().zip(specs);
        let get = |part: &str, key: Option<&str>| {
            let v = r.line.get(part);
            key.map_or(v, |k| v.and_then(|v| v.get(k))).unwrap_or(&Value::Null)
        };
        let values = names
            .iter()
            .map(|n| get("group", Some(n.as_str())))
            .chain(std::iter::once(get("count", None)))
            .chain(sums.iter().map(|s| get("sums", Some(s.column.field.as_str()))));
        for v in values {
            let Some((col, spec)) = next.next() else {
                return Err(EgressError::Parquet("the aggregate has more values than columns".into()));
            };
            col.push_value(&spec.name, spec.kind, v)?;
        }
    }
    Ok(cols)
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

    fn run_bytes(plan: &Plan, recs: &[(&str, BTreeMap<FieldName, Value>)], seed: u64) -> (Summary, Vec<u8>) {
        let p = Pseudonymiser::new(&[1; 32], &plan.request.destination, 1);
        let mut e = Exporter::new(plan, Some(p), Vec::new()).unwrap();
        for (s, r) in recs {
            e.push(s, r).unwrap();
        }
        e.finish(&mut rand::rngs::StdRng::seed_from_u64(seed)).unwrap()
    }

    /// A Parquet file read back with the parquet crate's own reader: its rows as JSON objects
    /// (column name to value), the number of row groups and `created_by`.
    fn read_parquet(bytes: &[u8]) -> (Vec<Value>, usize, Option<String>) {
        use parquet::file::reader::{FileReader, SerializedFileReader};
        use parquet::record::Field;
        let mut f = tempfile::tempfile().unwrap();
        f.write_all(bytes).unwrap();
        let reader = SerializedFileReader::new(f).unwrap();
        let meta = reader.metadata();
        let groups = meta.num_row_groups();
        let created_by = meta.file_metadata().created_by().map(str::to_string);
        let rows = reader
            .get_row_iter(None)
            .unwrap()
            .map(|row| {
                let row = row.unwrap();
                let mut m = serde_json::Map::new();
                for (name, field) in row.get_column_iter() {
                    let v = match field {
                        Field::Null => Value::Null,
                        Field::Bool(b) => json!(b),
                        Field::Long(i) => json!(i),
                        Field::Double(d) => json!(d),
                        Field::Str(s) => json!(s),
                        other => panic!("unexpected Parquet value {other:?}"),
                    };
                    m.insert(name.clone(), v);
                }
                Value::Object(m)
            })
            .collect();
        (rows, groups, created_by)
    }

    fn with_format_in(plan: &Plan, profiles: &Profiles, schema: &Schema) -> Plan {
        let mut req = plan.request.clone();
        req.format = OutputFormat::Parquet;
        req.plan(profiles.get(&req.profile).unwrap(), schema).unwrap()
    }

    fn with_format(plan: &Plan, format: OutputFormat) -> Plan {
        let mut req = plan.request.clone();
        req.format = format;
        let (schema, profiles) = setup();
        req.plan(profiles.get(&req.profile).unwrap(), &schema).unwrap()
    }

    /// `n` records; every fifth lacks `precise_location` and `watch_minutes`, to exercise
    /// absent values.
    fn many(n: usize) -> Vec<(String, BTreeMap<FieldName, Value>)> {
        (0..n)
            .map(|i| {
                let mut r = record(
                    &format!("zq{i}@mail"),
                    &format!("{}-{:02}-{:02}", 1950 + i % 60, 1 + i % 12, 1 + i % 28),
                    &format!("US-{}-zq{i}", ["CA", "NY", "TX"][i % 3]),
                    i64::try_from(i).unwrap() * 7,
                );
                r.insert(FieldName::new("handle").unwrap(), json!(format!("h{i}")));
                if i % 5 == 4 {
                    r.remove(&FieldName::new("precise_location").unwrap());
                    r.remove(&FieldName::new("watch_minutes").unwrap());
                }
                (format!("subject-zq{i}"), r)
            })
            .collect()
    }

    #[test]
    fn parquet_rows_read_back_as_the_ndjson_rows() {
        let (schema, profiles) = setup();
        let ndjson = plan(&profiles, &schema, json!({}));
        let parquet = with_format(&ndjson, OutputFormat::Parquet);
        // Past one row group (65,536 rows), so the second one is cut and written too.
        let owned = many(columnar::GROUP_ROWS + 1000);
        let recs: Vec<(&str, BTreeMap<FieldName, Value>)> =
            owned.iter().map(|(s, r)| (s.as_str(), r.clone())).collect();
        let (nsum, nout) = run(&ndjson, &recs, 0);
        let (psum, pout) = run_bytes(&parquet, &recs, 0);
        assert_eq!((psum.rows, psum.filtered), (nsum.rows, nsum.filtered));
        assert_eq!(psum.bytes, pout.len() as u64);
        assert_eq!(psum.sha256, hex::encode(Sha256::digest(&pout)), "the digest is of exactly the file");
        assert!(pout.starts_with(b"PAR1") && pout.ends_with(b"PAR1"));
        let (rows, groups, created_by) = read_parquet(&pout);
        assert_eq!(groups, 2);
        assert_eq!(created_by.as_deref(), Some(parquet::file::properties::DEFAULT_CREATED_BY));
        let want: Vec<Value> = nout.lines().map(|l| serde_json::from_str(l).unwrap()).collect();
        assert_eq!(rows.len(), want.len());
        assert!(rows == want, "first rows: {:?} vs {:?}", rows[0], want[0]);
        assert_eq!(rows[4]["precise_location"], Value::Null, "absent stays absent");
        // Compressed bytes hold any two letters by chance; the canaries' longer parts, never.
        for canary in [&b"@mail"[..], b"-zq", b"subject-zq"] {
            assert!(!pout.windows(canary.len()).any(|w| w == canary), "no protected plaintext in the bytes");
        }

        // Equal input, equal bytes; formatted in batches on the side, the same bytes again.
        assert!(run_bytes(&parquet, &recs, 0).1 == pout);
        let p = Pseudonymiser::new(&[1; 32], &parquet.request.destination, 1);
        let mut e = Exporter::new(&parquet, Some(p.clone()), Vec::new()).unwrap();
        let f = RowFormatter::new(&parquet, Some(p)).unwrap();
        for chunk in recs.chunks(1000) {
            let mut batch = f.batch(chunk.len());
            for (s, r) in chunk {
                f.format(s, r, &mut batch).unwrap();
            }
            e.push_formatted(&batch).unwrap();
        }
        let (sum, out) = e.finish(&mut rand::rngs::StdRng::seed_from_u64(0)).unwrap();
        assert_eq!(sum, psum);
        assert!(out == pout, "batched and record-at-a-time Parquet differ");
    }

    #[test]
    fn an_empty_parquet_export_is_a_valid_file() {
        let (schema, profiles) = setup();
        let ndjson = plan(&profiles, &schema, json!({"filter": {"field": "birthdate", "equals": "1800-01"}}));
        let parquet = with_format(&ndjson, OutputFormat::Parquet);
        let owned = many(10);
        let recs: Vec<(&str, BTreeMap<FieldName, Value>)> =
            owned.iter().map(|(s, r)| (s.as_str(), r.clone())).collect();
        let (sum, out) = run_bytes(&parquet, &recs, 0);
        assert_eq!((sum.rows, sum.filtered, sum.bytes), (0, 10, out.len() as u64));
        let (rows, groups, _) = read_parquet(&out);
        assert_eq!((rows.len(), groups), (0, 0));
        let (sum, out) = run_bytes(&parquet, &[], 0);
        assert_eq!(sum.rows, 0);
        assert_eq!(read_parquet(&out).0.len(), 0);
    }

    #[test]
    fn parquet_aggregates_hold_the_ndjson_groups() {
        let (schema, profiles) = setup();
        let ndjson = plan(
            &profiles,
            &schema,
            json!({"profile": "agg", "aggregate": {"group_by": ["precise_location", "birthdate"], "sums": [{"field": "watch_minutes", "min": 0, "max": 100}], "k": 34}}),
        );
        let parquet = with_format(&ndjson, OutputFormat::Parquet);
        // 2,000 records over 60 birth years: 20 groups of 34 (released), 40 of 33 (not).
        let owned = many(2000);
        let recs: Vec<(&str, BTreeMap<FieldName, Value>)> =
            owned.iter().map(|(s, r)| (s.as_str(), r.clone())).collect();
        let (nsum, nout) = run(&ndjson, &recs, 0);
        let (psum, pout) = run_bytes(&parquet, &recs, 0);
        assert_eq!((psum.rows, psum.suppressed), (nsum.rows, nsum.suppressed));
        assert_eq!((nsum.rows, nsum.suppressed), (20, 40));
        let (rows, _, _) = read_parquet(&pout);
        let want: Vec<Value> = nout
            .lines()
            .map(|l| {
                let l: Value = serde_json::from_str(l).unwrap();
                json!({
                    "precise_location": l["group"]["precise_location"],
                    "birthdate": l["group"]["birthdate"],
                    "count": l["count"],
                    "sum_watch_minutes": l["sums"]["watch_minutes"].as_f64().unwrap(),
                })
            })
            .collect();
        assert_eq!(rows, want);
        assert!(!pout.windows(5).any(|w| w == b"@mail"));
    }

    #[test]
    fn an_unknown_output_format_is_refused_by_name() {
        let e = serde_json::from_value::<ExportRequest>(
            json!({"collection": "profiles", "profile": "rows", "destination": "global", "purpose": "p", "format": "csv"}),
        )
        .unwrap_err()
        .to_string();
        assert!(e.contains("unknown variant `csv`") && e.contains("parquet"), "{e}");
        assert_eq!(OutputFormat::Parquet.content_type(), "application/vnd.apache.parquet");
        assert_eq!(OutputFormat::Ndjson.extension(), "ndjson");
    }

    #[test]
    fn parquet_columns_that_would_share_a_name_are_refused_at_planning() {
        let schema = Schema::from_toml(
            "[collections.c.fields.count]\ntype = \"integer\"\nclass = \"public\"\n[collections.c.fields.n]\ntype = \"integer\"\nclass = \"public\"\n",
        )
        .unwrap();
        let profiles = Profiles::from_toml(
            "[profiles.a]\ncollection = \"c\"\nfields = { count = \"pass\", n = \"aggregate\" }\n",
            &schema,
        )
        .unwrap();
        let req = |format: &str| -> ExportRequest {
            serde_json::from_value(json!({"collection": "c", "profile": "a", "destination": "d", "purpose": "p",
                "format": format, "aggregate": {"group_by": ["count"], "k": 2}}))
            .unwrap()
        };
        let p = profiles.get("a").unwrap();
        assert!(req("ndjson").plan(p, &schema).is_ok());
        let e = req("parquet").plan(p, &schema).unwrap_err().to_string();
        assert!(e.contains("two Parquet columns would be named `count`"), "{e}");
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
            let recs = [("subject-zq-1", r)];
            let (_, out) = run(&plan, &recs, 0);
            for secret in [&email, &phone, &loc, &born, &"subject-zq-1".to_string()] {
                prop_assert!(!out.contains(secret.as_str()), "{secret} leaked in {out}");
            }
            // The same in Parquet: neither in the bytes nor in any value read back.
            let (_, bytes) = run_bytes(&with_format_in(&plan, &profiles, &schema), &recs, 0);
            let (rows, _, _) = read_parquet(&bytes);
            let values = serde_json::to_string(&rows).unwrap();
            for secret in [&email, &phone, &loc, &born, &"subject-zq-1".to_string()] {
                prop_assert!(!bytes.windows(secret.len()).any(|w| w == secret.as_bytes()), "{secret} leaked in Parquet");
                prop_assert!(!values.contains(secret.as_str()), "{secret} leaked in {values}");
            }
        }
    }
}
