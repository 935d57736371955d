//! `custody bench egress`: the egress gateway's export path on N profile rows, in process.
//!
//! It seeds a fresh vault (redb, file KEK, one subject and DEK per profile) with the sample
//! schema, then runs the `global-engagement` profile (pseudonymise + generalise) through the
//! same scan the server runs: page by page from `records.redb`, each record's DEK unwrapped
//! and its permitted fields decrypted, transformed, written as NDJSON to a file and hashed.
//! A second pass opens the records without transforming, to show what decryption costs.
//! Peak memory is the process's VmHWM, reset (via `/proc/self/clear_refs`) before each pass,
//! so it covers the pass alone; measure at two sizes to see it stay flat.

use std::io::BufWriter;
use std::sync::Arc;
use std::time::Instant;

use anyhow::Context;
use serde_json::json;

use custody_core::{CollectionName, Jurisdiction, RecordId, Schema, SubjectId};
use custody_crypto::FileKeyProvider;
use custody_egress::{ExportRequest, Profiles, Pseudonymiser};
use custody_vault::{NewRecord, RedbStore, Vault};

use crate::Format;

/// `custody bench egress` arguments.
#[derive(Debug, clap::Args)]
pub(crate) struct EgressBenchArgs {
    /// Row counts to measure at, seeding up to each in turn (comma-separated)
    #[arg(long, value_delimiter = ',', default_values_t = [100_000u64, 1_000_000])]
    rows: Vec<u64>,
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
    }))?;
    let plan = req.plan(profiles.get("global-engagement")?, &schema)?;
    let (key, _) = vault.egress_key()?;
    let us = Jurisdiction::new("US")?;
    let mut sizes = args.rows.clone();
    sizes.sort_unstable();
    sizes.dedup();
    let mut seeded = 0;
    let mut results = Vec::new();
    for size in sizes {
        let t = Instant::now();
        seed(&vault, &schema, seeded, size)?;
        let seed_s = t.elapsed().as_secs_f64();
        seeded = size;

        reset_peak();
        let rss_before = status_kb("VmRSS:").unwrap_or(0);
        let out = BufWriter::with_capacity(1 << 16, std::fs::File::create(dir.path().join("export.ndjson"))?);
        let t = Instant::now();
        let pseudo = Some(Pseudonymiser::new(&key, "global", 1));
        let (summary, _, _) = custody_server::egress::scan(&vault, &schema, &plan, &us, pseudo, out, |_| {})?;
        let export_s = t.elapsed().as_secs_f64();
        let peak = status_kb("VmHWM:").unwrap_or(0);

        // Decryption alone: the same scan and opens, no transform or output.
        let c = CollectionName::new("profiles")?;
        let classes = plan.classes();
        let t = Instant::now();
        let mut after = None;
        let mut opened = 0u64;
        loop {
            let page = vault.scan(&c, after.as_ref(), 1024)?;
            let full = page.len() == 1024;
            for (id, r) in &page {
                opened += vault.open(&schema, &c, id, r, |cl| classes.contains(cl))?.fields.len() as u64;
            }
            after = page.into_iter().last().map(|(id, _)| id);
            if !full {
                break;
            }
        }
        let decrypt_s = t.elapsed().as_secs_f64();
        #[allow(clippy::cast_precision_loss)]
        let rows = summary.rows as f64;
        let r = json!({
            "rows": summary.rows,
            "seed_s": seed_s,
            "export_s": export_s,
            "rows_per_s": rows / export_s,
            "scan_decrypt_only_s": decrypt_s,
            "scan_decrypt_only_rows_per_s": rows / decrypt_s,
            "fields_opened": opened,
            "bytes": summary.bytes,
            "rss_before_kib": rss_before,
            "peak_rss_kib": peak,
        });
        if format == Format::Human {
            println!(
                "{:>9} rows: export {:.2} s = {:.0} rows/s (scan+decrypt alone {:.2} s = {:.0} rows/s), \
                 {} MB out, peak RSS {} MiB (RSS before {} MiB); seeding took {:.1} s",
                summary.rows,
                export_s,
                rows / export_s,
                decrypt_s,
                rows / decrypt_s,
                summary.bytes / 1_000_000,
                peak / 1024,
                rss_before / 1024,
                seed_s
            );
        }
        results.push(r);
    }
    if format == Format::Json {
        println!("{}", serde_json::to_string(&results)?);
    }
    Ok(())
}
