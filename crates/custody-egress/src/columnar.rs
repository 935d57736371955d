//! Parquet output: one fixed schema per plan, rows buffered as column values into row groups
//! of bounded size, each row group encoded and handed on as soon as it is full.
//!
//! The encoder writes into a `Vec` that is drained into the exporter's hashing writer after
//! every row group and after the footer, so the digest covers exactly the file's bytes, memory
//! holds at most one row group, and the writer needs no `Send` bound on the final sink. Row
//! groups are cut at fixed row and byte counts, checked row by row, so where they fall does
//! not depend on how rows were batched: the sequential and pipelined scans give one file.

use std::io::Write;
use std::sync::Arc;

use parquet::basic::{Compression, LogicalType, Repetition, Type as Physical};
use parquet::data_type::{BoolType, ByteArray, ByteArrayType, DoubleType, Int64Type};
use parquet::errors::ParquetError;
use parquet::file::properties::{DEFAULT_CREATED_BY, WriterProperties};
use parquet::file::writer::{SerializedColumnWriter, SerializedFileWriter};
use parquet::schema::types::Type;
use serde_json::Value;

use custody_core::FieldType;

use crate::{Column, EgressError, Plan, PlanKind, Transform};

/// Most rows in one row group: readers skip by row group, and memory holds one.
pub(crate) const GROUP_ROWS: usize = 65_536;
/// Most buffered value bytes in one row group, for rows with long passed strings.
pub(crate) const GROUP_BYTES: usize = 32 << 20;

impl From<ParquetError> for EgressError {
    fn from(e: ParquetError) -> Self {
        EgressError::Parquet(e.to_string())
    }
}

/// The Parquet type a column's values take.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Kind {
    /// UTF-8 strings (pseudonyms, months, countries, regions, passed strings and dates).
    Text,
    /// 64-bit integers (years, integer buckets, passed integers, counts).
    Int,
    /// Doubles (passed numbers, number buckets, sums).
    Float,
    /// Booleans.
    Bool,
}

impl Kind {
    fn name(self) -> &'static str {
        match self {
            Kind::Text => "a string",
            Kind::Int => "an integer",
            Kind::Float => "a number",
            Kind::Bool => "a boolean",
        }
    }
}

/// One output column: its name, type and whether a value may be absent.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Spec {
    pub(crate) name: String,
    pub(crate) kind: Kind,
    pub(crate) required: bool,
}

/// The type of a plan column's transformed values, from its transform and schema type.
pub(crate) fn kind_of(c: &Column) -> Kind {
    match c.transform {
        Transform::Pseudonymise | Transform::Month | Transform::Country | Transform::Region => Kind::Text,
        Transform::Year => Kind::Int,
        Transform::Bucket(_) if c.kind == FieldType::Integer => Kind::Int,
        Transform::Bucket(_) => Kind::Float,
        Transform::Pass | Transform::Drop | Transform::Aggregate => match c.kind {
            FieldType::String | FieldType::Date | FieldType::Timestamp => Kind::Text,
            FieldType::Integer => Kind::Int,
            FieldType::Number => Kind::Float,
            FieldType::Boolean => Kind::Bool,
        },
    }
}

/// The name of a sum's column in a Parquet aggregate.
pub(crate) fn sum_name(field: &str) -> String {
    format!("sum_{field}")
}

/// The plan's Parquet columns: a row export's columns (then `_subject`), or an aggregate's
/// group-by columns, `count` and one `sum_<field>` per sum (flat, as tools read most easily).
///
/// # Errors
/// [`EgressError::BadRequest`] when two columns would share a name.
pub(crate) fn specs(plan: &Plan) -> Result<Vec<Spec>, EgressError> {
    let col = |c: &Column| Spec { name: c.field.to_string(), kind: kind_of(c), required: false };
    let mut out: Vec<Spec> = match &plan.kind {
        PlanKind::Rows { columns, subject } => {
            let mut v: Vec<Spec> = columns.iter().map(col).collect();
            if *subject {
                v.push(Spec { name: "_subject".into(), kind: Kind::Text, required: true });
            }
            v
        }
        PlanKind::Aggregate { group_by, sums, .. } => {
            let mut v: Vec<Spec> = group_by.iter().map(col).collect();
            v.push(Spec { name: "count".into(), kind: Kind::Int, required: true });
            v.extend(sums.iter().map(|s| Spec {
                name: sum_name(s.column.field.as_str()),
                kind: Kind::Float,
                required: false,
            }));
            v
        }
    };
    let mut seen = std::collections::BTreeSet::new();
    for s in &out {
        if !seen.insert(s.name.as_str()) {
            return Err(EgressError::BadRequest(format!(
                "two Parquet columns would be named `{}`; group by or sum other fields, or ask for NDJSON",
                s.name
            )));
        }
    }
    out.shrink_to_fit();
    Ok(out)
}

/// One column's values for a run of rows, an entry per row (absent ones too) so that a run
/// can be cut at any row.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Col {
    present: Vec<bool>,
    data: Data,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Data {
    /// Concatenated strings and where each row's ends.
    Text {
        bytes: Vec<u8>,
        ends: Vec<usize>,
    },
    Int(Vec<i64>),
    /// Doubles as their bits, so batches compare with `Eq`.
    Float(Vec<u64>),
    Bool(Vec<bool>),
}

impl Col {
    pub(crate) fn new(kind: Kind, rows: usize) -> Self {
        let data = match kind {
            Kind::Text => Data::Text { bytes: Vec::with_capacity(rows * 32), ends: Vec::with_capacity(rows) },
            Kind::Int => Data::Int(Vec::with_capacity(rows)),
            Kind::Float => Data::Float(Vec::with_capacity(rows)),
            Kind::Bool => Data::Bool(Vec::with_capacity(rows)),
        };
        Self { present: Vec::with_capacity(rows), data }
    }

    pub(crate) fn len(&self) -> usize {
        self.present.len()
    }

    /// Value bytes buffered, roughly what the row group will hold before encoding.
    fn size(&self) -> usize {
        match &self.data {
            Data::Text { bytes, ends } => bytes.len() + ends.len() * 8,
            Data::Int(v) => v.len() * 8,
            Data::Float(v) => v.len() * 8,
            Data::Bool(v) => v.len(),
        }
    }

    pub(crate) fn clear(&mut self) {
        self.present.clear();
        match &mut self.data {
            Data::Text { bytes, ends } => {
                bytes.clear();
                ends.clear();
            }
            Data::Int(v) => v.clear(),
            Data::Float(v) => v.clear(),
            Data::Bool(v) => v.clear(),
        }
    }

    fn push_null(&mut self) {
        self.present.push(false);
        match &mut self.data {
            Data::Text { bytes, ends } => ends.push(bytes.len()),
            Data::Int(v) => v.push(0),
            Data::Float(v) => v.push(0),
            Data::Bool(v) => v.push(false),
        }
    }

    /// Appends a string written by `write` (a pseudonym, straight into the buffer).
    ///
    /// # Errors
    /// [`EgressError::Parquet`] if the column is not a string column.
    pub(crate) fn push_text_with(&mut self, name: &str, write: impl FnOnce(&mut Vec<u8>)) -> Result<(), EgressError> {
        let Data::Text { bytes, ends } = &mut self.data else {
            return Err(EgressError::Parquet(format!("column `{name}` does not hold strings")));
        };
        write(bytes);
        ends.push(bytes.len());
        self.present.push(true);
        Ok(())
    }

    /// Appends a transformed value; `null` is an absent value.
    ///
    /// # Errors
    /// [`EgressError::Parquet`] if the value is not of the column's type (the value itself is
    /// not named: it may be what the export must not show).
    pub(crate) fn push_value(&mut self, name: &str, kind: Kind, v: &Value) -> Result<(), EgressError> {
        if v.is_null() {
            self.push_null();
            return Ok(());
        }
        let ok = match (&mut self.data, v) {
            (Data::Text { bytes, ends }, Value::String(s)) => {
                bytes.extend_from_slice(s.as_bytes());
                ends.push(bytes.len());
                true
            }
            (Data::Int(out), v) => v.as_i64().map(|i| out.push(i)).is_some(),
            (Data::Float(out), v) => v.as_f64().map(|f| out.push(f.to_bits())).is_some(),
            (Data::Bool(out), Value::Bool(b)) => {
                out.push(*b);
                true
            }
            _ => false,
        };
        if !ok {
            return Err(EgressError::Parquet(format!("column `{name}` holds {}, and a value is not", kind.name())));
        }
        self.present.push(true);
        Ok(())
    }

    /// Appends row `r` of `other` (a column of the same type).
    fn push_row(&mut self, other: &Col, r: usize) -> Result<(), EgressError> {
        let present = other.present.get(r).copied().unwrap_or(false);
        let ok = match (&mut self.data, &other.data) {
            (Data::Text { bytes, ends }, Data::Text { bytes: ob, ends: oe }) => {
                let start = if r == 0 { 0 } else { oe.get(r - 1).copied().unwrap_or(0) };
                let end = oe.get(r).copied().unwrap_or(start);
                bytes.extend_from_slice(ob.get(start..end).unwrap_or_default());
                ends.push(bytes.len());
                true
            }
            (Data::Int(v), Data::Int(o)) => o.get(r).map(|x| v.push(*x)).is_some(),
            (Data::Float(v), Data::Float(o)) => o.get(r).map(|x| v.push(*x)).is_some(),
            (Data::Bool(v), Data::Bool(o)) => o.get(r).map(|x| v.push(*x)).is_some(),
            _ => false,
        };
        if !ok {
            return Err(EgressError::Parquet("a batch of rows does not match the export's columns".into()));
        }
        self.present.push(present);
        Ok(())
    }

    /// Writes the buffered rows as one column chunk.
    fn write(&self, w: &mut SerializedColumnWriter<'_>, required: bool) -> Result<(), EgressError> {
        let levels: Vec<i16> = self.present.iter().map(|&p| i16::from(p)).collect();
        let def = if required { None } else { Some(levels.as_slice()) };
        let keep = |i: usize| self.present.get(i).copied().unwrap_or(false);
        match &self.data {
            Data::Text { bytes, ends } => {
                let mut start = 0;
                let mut vals = Vec::with_capacity(ends.len());
                for (i, &end) in ends.iter().enumerate() {
                    if keep(i) {
                        vals.push(ByteArray::from(bytes.get(start..end).unwrap_or_default().to_vec()));
                    }
                    start = end;
                }
                w.typed::<ByteArrayType>().write_batch(&vals, def, None)?;
            }
            Data::Int(v) => {
                let vals: Vec<i64> = v.iter().enumerate().filter(|(i, _)| keep(*i)).map(|(_, x)| *x).collect();
                w.typed::<Int64Type>().write_batch(&vals, def, None)?;
            }
            Data::Float(v) => {
                let vals: Vec<f64> =
                    v.iter().enumerate().filter(|(i, _)| keep(*i)).map(|(_, x)| f64::from_bits(*x)).collect();
                w.typed::<DoubleType>().write_batch(&vals, def, None)?;
            }
            Data::Bool(v) => {
                let vals: Vec<bool> = v.iter().enumerate().filter(|(i, _)| keep(*i)).map(|(_, x)| *x).collect();
                w.typed::<BoolType>().write_batch(&vals, def, None)?;
            }
        }
        Ok(())
    }
}

/// Empty columns for `specs`, with room for `rows` rows.
pub(crate) fn columns(specs: &[Spec], rows: usize) -> Vec<Col> {
    specs.iter().map(|s| Col::new(s.kind, rows)).collect()
}

/// The Parquet encoder of one export.
pub(crate) struct ParquetOut {
    writer: SerializedFileWriter<Vec<u8>>,
    specs: Vec<Spec>,
    group: Vec<Col>,
    /// Rows in `group`.
    rows: usize,
}

impl std::fmt::Debug for ParquetOut {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ParquetOut").field("specs", &self.specs).field("rows", &self.rows).finish_non_exhaustive()
    }
}

impl ParquetOut {
    /// A writer of `specs`' columns (the file's magic is buffered, not yet written).
    ///
    /// # Errors
    /// [`EgressError::Parquet`] if the schema cannot be built.
    pub(crate) fn new(specs: Vec<Spec>) -> Result<Self, EgressError> {
        let mut fields = Vec::with_capacity(specs.len());
        for s in &specs {
            let (physical, logical) = match s.kind {
                Kind::Text => (Physical::BYTE_ARRAY, Some(LogicalType::String)),
                Kind::Int => (Physical::INT64, None),
                Kind::Float => (Physical::DOUBLE, None),
                Kind::Bool => (Physical::BOOLEAN, None),
            };
            let rep = if s.required { Repetition::REQUIRED } else { Repetition::OPTIONAL };
            fields.push(Arc::new(
                Type::primitive_type_builder(&s.name, physical)
                    .with_repetition(rep)
                    .with_logical_type(logical)
                    .build()?,
            ));
        }
        let schema = Arc::new(Type::group_type_builder("custody_export").with_fields(fields).build()?);
        let props = WriterProperties::builder()
            .set_compression(Compression::SNAPPY)
            // Set, not left to a default: `created_by` is a constant of the build (no time, no
            // host), so equal input gives equal bytes, and the footer stays as readers expect.
            .set_created_by(DEFAULT_CREATED_BY.to_string())
            .build();
        let writer = SerializedFileWriter::new(Vec::with_capacity(1 << 16), schema, Arc::new(props))?;
        let group = columns(&specs, 0);
        Ok(Self { writer, specs, group, rows: 0 })
    }

    /// The columns every batch must have, in order.
    pub(crate) fn specs(&self) -> &[Spec] {
        &self.specs
    }

    /// Appends `rows` rows of `batch` (columns in [`ParquetOut::specs`] order), writing each
    /// row group to `out` as it fills.
    ///
    /// # Errors
    /// [`EgressError::Parquet`] for a batch of other columns or an encoding failure,
    /// [`EgressError::Io`] when writing fails.
    pub(crate) fn push_rows(&mut self, batch: &[Col], rows: usize, out: &mut impl Write) -> Result<(), EgressError> {
        if rows == 0 {
            return Ok(());
        }
        if batch.len() != self.group.len() || batch.iter().any(|c| c.len() != rows) {
            return Err(EgressError::Parquet("a batch of rows does not match the export's columns".into()));
        }
        for r in 0..rows {
            let mut size = 0;
            for (g, b) in self.group.iter_mut().zip(batch) {
                g.push_row(b, r)?;
                size += g.size();
            }
            self.rows += 1;
            if self.rows >= GROUP_ROWS || size >= GROUP_BYTES {
                self.flush_group(out)?;
            }
        }
        Ok(())
    }

    fn flush_group(&mut self, out: &mut impl Write) -> Result<(), EgressError> {
        if self.rows == 0 {
            return Ok(());
        }
        let mut rg = self.writer.next_row_group()?;
        for (col, spec) in self.group.iter().zip(&self.specs) {
            let Some(mut w) = rg.next_column()? else {
                return Err(EgressError::Parquet("the schema has fewer columns than the export".into()));
            };
            col.write(&mut w, spec.required)?;
            w.close()?;
        }
        rg.close()?;
        self.group.iter_mut().for_each(Col::clear);
        self.rows = 0;
        self.drain(out)
    }

    /// Moves what the encoder has written so far to `out`.
    fn drain(&mut self, out: &mut impl Write) -> Result<(), EgressError> {
        self.writer.flush()?;
        let bytes = self.writer.inner_mut();
        out.write_all(bytes)?;
        bytes.clear();
        Ok(())
    }

    /// Writes the last row group and the footer to `out`.
    ///
    /// # Errors
    /// As [`ParquetOut::push_rows`].
    pub(crate) fn finish(mut self, out: &mut impl Write) -> Result<(), EgressError> {
        self.flush_group(out)?;
        self.writer.finish()?;
        self.drain(out)
    }
}
