//! `custody bench egress`: the egress gateway's export path on N profile rows, in process.
//!
//! It seeds a fresh vault (redb, file KEK, one subject and DEK per profile) with the sample
//! schema, then runs the `global-engagement` profile (pseudonymise + generalise) through the
//! scans the server has, twice in the same process so their ratio is measured under the same
//! load: the sequential reference (`scan_sequential`: one record at a time, every permitted
//! field decrypted) and the pipelined scan the server runs (`scan`: a reader thread, one
//! opening thread per core that reads a page's keys at once and decrypts only the fields
//! the plan reads, and an ordered writer). Both write NDJSON (or, with `--output-format
//! parquet`, Parquet) to a file while hashing it; the bench fails unless both produce the
//! same bytes. Peak memory is the process's VmHWM, reset (via `/proc/self/clear_refs`)
//! before each pass, so it covers the pass alone; measure at two sizes to see it stay flat.

use std::io::BufWriter;
use std::path::Path;
use std::sync::Arc;
use std::time::Instant;

use anyhow::Context;
use serde_json::json;

use custody_core::{CollectionName, Jurisdiction, RecordId, Schema, SubjectId};
use custody_crypto::FileKeyProvider;
use custody_egress::{ExportRequest, Profiles, Pseudonymiser, Summary};
use custody_vault::{NewRecord, RedbStore, Vault};

use crate::Format;
use crate::cmd::export::OutputFormat;

/// `custody bench egress` arguments.
#[derive(Debug, clap::Args)]
pub(crate) struct EgressBenchArgs {
    /// Row counts to measure at, seeding up to each in turn (comma-separated)
    #[arg(long, value_delimiter = ',', default_values_t = [100_000u64, 1_000_000])]
    rows: Vec<u64>,
    /// The export file's format
    #[arg(long, value_enum, value_name = "FORMAT", default_value = "ndjson")]
    output_format: OutputFormat,
}

fn status_kb(field: &str) -> Option<u64> {
    let text = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = text.lines().find(|l| l.starts_with(field))?;
    line.split_whitespace().nth(1)?.parse().ok()
}

fn reset_peak() {
    // Linux: writing 5 resets VmHWM to the current RSS.
    let _ = std::fs::write("/proc/self/clear_refs", "5");
}

/// One timed export pass and the memory it took.
struct Pass {
    summary: Summary,
    secs: f64,
    rss_before_kib: u64,
    peak_rss_kib: u64,
}

/// Runs `export` with the peak-RSS mark reset first, so the peak covers this pass alone;
/// the output file is removed after.
fn pass(file: &Path, export: impl FnOnce() -> anyhow::Result<Summary>) -> anyhow::Result<Pass> {
    reset_peak();
    let rss_before_kib = status_kb("VmRSS:").unwrap_or(0);
    let t = Instant::now();
    let summary = export()?;
    let secs = t.elapsed().as_secs_f64();
    let peak_rss_kib = status_kb("VmHWM:").unwrap_or(0);
    let _ = std::fs::remove_file(file);
    Ok(Pass { summary, secs, rss_before_kib, peak_rss_kib })
}

fn seed(vault: &Vault, schema: &Schema, from: u64, to: u64) -> anyhow::Result<()> {
    let c = CollectionName::new("profiles")?;
    let us = Jurisdiction::new("US")?;
    let mut n = from;
    while n < to {
        let end = (n + 5000).min(to);
        let mut batch = Vec::with_capacity(5000);
        for i in n..end {
            let body = json!({
                "email": format!("user{i}@mail.example"),
                "phone": format!("+1-555-{i:07}"),
                "birthdate": format!("{}-{:02}-{:02}", 1950 + i % 60, 1 + i % 12, 1 + i % 28),
                "precise_location": format!("US-{}-{i}", match i % 4 {
                    0 => "CA",
                    1 => "NY",
                    2 => "TX",
                    _ => "WA",
                }),
                "device_id": format!("dev-{i:012}"),
                "handle": format!("user{i}"),
                "display_name": format!("User {i}"),
                "watch_minutes": (i * 7919) % 10_000,
            });
            let fields = schema.validate_fields(&c, body.as_object().context("object")?, false)?;
            batch.push(NewRecord {
                id: RecordId::new(format!("u{i:09}"))?,
                subject: SubjectId::new(format!("s{i:09}"))?,
                jurisdiction: us.clone(),
                fields,
            });
        }
        vault.create_many(schema, &c, &batch)?;
        n = end;
    }
    Ok(())
}

pub(crate) fn run(format: Format, args: EgressBenchArgs) -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    std::fs::create_dir_all(dir.path().join("keys"))?;
    let store = Arc::new(RedbStore::open(dir.path(), &dir.path().join("keys"))?);
    let provider = Arc::new(FileKeyProvider::create(&dir.path().join("keys/kek"))?);
    let vault = Vault::new(store.clone(), store, provider)?;
    let schema = Schema::from_toml(custody_server::setup::SAMPLE_SCHEMA)?;
    let profiles = Profiles::from_toml(custody_server::setup::SAMPLE_EGRESS, &schema)?;
    let req: ExportRequest = serde_json::from_value(json!({
        "collection": "profiles", "profile": "global-engagement", "destination": "global", "purpose": "bench",
        "format": args.output_format.name(),
    }))?;
    let plan = req.plan(profiles.get("global-engagement")?, &schema)?;
    let (key, _) = vault.egress_key()?;
    let us = Jurisdiction::new("US")?;
    let mut sizes = args.rows.clone();
    sizes.sort_unstable();
    sizes.dedup();
    let mut seeded = 0;
    let mut results = Vec::new();
    let workers = std::thread::available_parallelism().map_or(2, std::num::NonZeroUsize::get);
    for size in sizes {
        let t = Instant::now();
        seed(&vault, &schema, seeded, size)?;
        let seed_s = t.elapsed().as_secs_f64();
        seeded = size;

        let export = dir.path().join(format!("export.{}", args.output_format.name()));
        let seq = pass(&export, || {
            let out = BufWriter::with_capacity(1 << 16, std::fs::File::create(&export)?);
            let pseudo = Some(Pseudonymiser::new(&key, "global", 1));
            let (summary, _, _) =
                custody_server::egress::scan_sequential(&vault, &schema, &plan, &us, pseudo, out, |_| {})?;
            Ok(summary)
        })?;
        let piped = pass(&export, || {
            let out = BufWriter::with_capacity(1 << 16, std::fs::File::create(&export)?);
            let pseudo = Some(Pseudonymiser::new(&key, "global", 1));
            let (summary, _, _) = custody_server::egress::scan(&vault, &schema, &plan, &us, pseudo, out, |_| {})?;
            Ok(summary)
        })?;
        anyhow::ensure!(
            seq.summary == piped.summary,
            "the pipelined scan wrote other bytes than the sequential one ({} vs {})",
            piped.summary.sha256,
            seq.summary.sha256
        );
        #[allow(clippy::cast_precision_loss)]
        let rows = seq.summary.rows as f64;
        let r = json!({
            "rows": seq.summary.rows,
            "format": args.output_format.name(),
            "seed_s": seed_s,
            "workers": workers,
            "bytes": seq.summary.bytes,
            "sha256": seq.summary.sha256,
            "sequential": {
                "export_s": seq.secs, "rows_per_s": rows / seq.secs,
                "rss_before_kib": seq.rss_before_kib, "peak_rss_kib": seq.peak_rss_kib,
            },
            "pipelined": {
                "export_s": piped.secs, "rows_per_s": rows / piped.secs,
                "rss_before_kib": piped.rss_before_kib, "peak_rss_kib": piped.peak_rss_kib,
            },
            "speedup": seq.secs / piped.secs,
        });
        if format == Format::Human {
            println!(
                "{:>9} rows, {} MB of {} out (identical SHA-256), seeding took {:.1} s\n\
                 \x20         sequential:              {:.2} s = {:>7.0} rows/s, peak RSS {:>4} MiB (before {} MiB)\n\
                 \x20         pipelined ({workers} workers): {:.2} s = {:>7.0} rows/s, peak RSS {:>4} MiB (before {} MiB); {:.2}x",
                seq.summary.rows,
                seq.summary.bytes / 1_000_000,
                args.output_format.name(),
                seed_s,
                seq.secs,
                rows / seq.secs,
                seq.peak_rss_kib / 1024,
                seq.rss_before_kib / 1024,
                piped.secs,
                rows / piped.secs,
                piped.peak_rss_kib / 1024,
                piped.rss_before_kib / 1024,
                seq.secs / piped.secs,
            );
        }
        results.push(r);
    }
    if format == Format::Json {
        println!("{}", serde_json::to_string(&results)?);
    }
    Ok(())
}
