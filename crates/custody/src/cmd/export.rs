//! `custody export`: take data across the boundary through the egress gateway.
//!
//! The request goes to the guarded API with a principal's token, so Cedar decides it and the
//! log records it. The file (NDJSON, or Parquet with `--output-format parquet` or an `--out`
//! ending in `.parquet`) is written as it streams in (a progress bar shows the bytes) and
//! checked against the SHA-256 in the logged entry; the receipt is saved beside it as
//! `FILE.receipt.json`, which `custody-monitor verify-export FILE` checks.

use std::io::Write;
use std::path::{Path, PathBuf};

use clap::{Args, ValueEnum};
use custody_client::{Client, ClientError, Reason};
use indicatif::{ProgressBar, ProgressStyle};
use serde_json::{Value, json};

use crate::Format;
use crate::config::Settings;
use crate::exit::{Exit, fail};

/// `custody export` arguments.
#[derive(Debug, Args)]
pub(crate) struct ExportArgs {
    /// The collection to export from
    #[arg(long)]
    collection: String,
    /// The export profile saying how each field crosses (see the deployment's egress.toml)
    #[arg(long)]
    profile: String,
    /// Where the data goes (policies see `context.destination`)
    #[arg(long)]
    destination: String,
    /// Why (logged; policies see `context.purpose`)
    #[arg(long)]
    purpose: String,
    /// Fields to export, comma-separated [default: every field the profile lets out as rows]
    #[arg(long, value_delimiter = ',')]
    fields: Vec<String>,
    /// Keep rows whose transformed FIELD equals VALUE (JSON, or a bare string)
    #[arg(long, value_name = "FIELD=VALUE")]
    filter: Option<String>,
    /// Aggregate: fields to group by, comma-separated
    #[arg(long, value_delimiter = ',')]
    group_by: Vec<String>,
    /// Aggregate: a sum over FIELD clamped to [MIN, MAX]; repeat for more
    #[arg(long = "sum", value_name = "FIELD:MIN:MAX")]
    sums: Vec<String>,
    /// Aggregate: groups with fewer members are suppressed
    #[arg(long, default_value_t = 10)]
    k: u64,
    /// Aggregate: differential-privacy noise (`laplace` or `gaussian`), charged to the destination's budget
    #[arg(long, value_name = "MECHANISM")]
    noise: Option<String>,
    /// Epsilon for the noise
    #[arg(long, default_value_t = 0.1)]
    epsilon: f64,
    /// Delta for Gaussian noise
    #[arg(long)]
    delta: Option<f64>,
    /// The file to write; the receipt goes to FILE.receipt.json
    #[arg(long)]
    out: PathBuf,
    /// The file's format [default: parquet if FILE ends in `.parquet`, else ndjson]
    #[arg(long, value_enum, value_name = "FORMAT")]
    output_format: Option<OutputFormat>,
    /// Justification (`custody-justification`)
    #[arg(long)]
    justification: Option<String>,
    /// Bearer token of the exporting principal
    #[arg(long, env = "CUSTODY_TOKEN", hide_env_values = true)]
    token: String,
    /// API base URL [default: http://LISTEN from the settings]
    #[arg(long, env = "CUSTODY_SERVER")]
    server: Option<String>,
}

/// What `--output-format` takes: the gateway's formats (`--format` is the global flag for how
/// this command reports).
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub(crate) enum OutputFormat {
    /// One JSON object per line
    Ndjson,
    /// An Apache Parquet file
    Parquet,
}

impl OutputFormat {
    /// The format's name in an export request.
    pub(crate) fn name(self) -> &'static str {
        match self {
            OutputFormat::Ndjson => "ndjson",
            OutputFormat::Parquet => "parquet",
        }
    }
}

/// The format asked, or the one `--out`'s extension names; an extension of the other format
/// is refused, so a `.ndjson` file never holds Parquet (nor the reverse).
fn output_format(a: &ExportArgs) -> anyhow::Result<OutputFormat> {
    let ext = a.out.extension().and_then(|e| e.to_str()).map(str::to_ascii_lowercase);
    let named = match ext.as_deref() {
        Some("parquet" | "pq") => Some(OutputFormat::Parquet),
        Some("ndjson" | "jsonl" | "json") => Some(OutputFormat::Ndjson),
        _ => None,
    };
    match (a.output_format, named) {
        (Some(asked), Some(ext)) if asked != ext => Err(fail(
            Exit::BadInput,
            format!(
                "`--output-format {}` does not match `--out {}`; name the file `.{}` or drop the flag",
                asked.name(),
                a.out.display(),
                asked.name()
            ),
        )),
        (Some(asked), _) => Ok(asked),
        (None, named) => Ok(named.unwrap_or(OutputFormat::Ndjson)),
    }
}

fn request(a: &ExportArgs) -> anyhow::Result<Value> {
    let mut r = serde_json::Map::new();
    r.insert("collection".into(), json!(a.collection));
    r.insert("profile".into(), json!(a.profile));
    r.insert("destination".into(), json!(a.destination));
    r.insert("purpose".into(), json!(a.purpose));
    if !a.fields.is_empty() {
        r.insert("fields".into(), json!(a.fields));
    }
    if let Some(f) = &a.filter {
        let (field, value) =
            f.split_once('=').ok_or_else(|| fail(Exit::BadInput, "`--filter` takes FIELD=VALUE".to_string()))?;
        let value = serde_json::from_str(value).unwrap_or_else(|_| Value::String(value.to_string()));
        r.insert("filter".into(), json!({"field": field, "equals": value}));
    }
    if !a.group_by.is_empty() || !a.sums.is_empty() || a.noise.is_some() {
        let mut sums = Vec::new();
        for s in &a.sums {
            let parts: Vec<&str> = s.split(':').collect();
            let [field, min, max] = parts.as_slice() else {
                return Err(fail(Exit::BadInput, format!("`--sum {s}`: use FIELD:MIN:MAX")));
            };
            let num = |x: &str| {
                x.parse::<f64>().map_err(|_| fail(Exit::BadInput, format!("`--sum {s}`: `{x}` is not a number")))
            };
            sums.push(json!({"field": field, "min": num(min)?, "max": num(max)?}));
        }
        let noise = a.noise.as_ref().map(|m| match a.delta {
            Some(d) => json!({"mechanism": m, "epsilon": a.epsilon, "delta": d}),
            None => json!({"mechanism": m, "epsilon": a.epsilon}),
        });
        r.insert("aggregate".into(), json!({"group_by": a.group_by, "sums": sums, "k": a.k, "noise": noise}));
    }
    r.insert("format".into(), json!(output_format(a)?.name()));
    Ok(Value::Object(r))
}

fn receipt_path(out: &Path) -> PathBuf {
    let mut p = out.as_os_str().to_owned();
    p.push(".receipt.json");
    PathBuf::from(p)
}

pub(crate) fn run(settings: &Settings, format: Format, a: ExportArgs) -> anyhow::Result<()> {
    let body = request(&a)?;
    let base = a.server.clone().unwrap_or_else(|| format!("http://{}", settings.server.listen));
    let client =
        Client::new(base, a.token.clone()).map_err(|e| fail(Exit::Error, e.to_string()))?.with_reason(Reason {
            purpose: Some(a.purpose.clone()),
            justification: a.justification.clone(),
            approvals: Vec::new(),
        });
    let file = std::fs::File::create(&a.out).map_err(|e| fail(Exit::Error, format!("`{}`: {e}", a.out.display())))?;
    let mut w = std::io::BufWriter::with_capacity(1 << 16, file);
    let bar = ProgressBar::new_spinner();
    bar.set_style(
        ProgressStyle::with_template("{spinner} {bytes} received ({bytes_per_sec}) {elapsed}")
            .unwrap_or_else(|_| ProgressStyle::default_spinner()),
    );
    let rt = super::runtime()?;
    let result = rt.block_on(client.export(&body, |chunk| w.write_all(chunk), |n| bar.set_position(n)));
    bar.finish_and_clear();
    let outcome = match result.and_then(|o| w.flush().map(|()| o).map_err(|e| ClientError::Receipt(e.to_string()))) {
        Ok(o) => o,
        Err(e) => {
            let _ = std::fs::remove_file(&a.out);
            let code = match e.status().map(|s| s.as_u16()) {
                Some(400) => Exit::BadInput,
                Some(401 | 403 | 404) => Exit::Refused,
                _ => Exit::Error,
            };
            return Err(fail(code, e.to_string()));
        }
    };
    let rp = receipt_path(&a.out);
    std::fs::write(&rp, serde_json::to_vec_pretty(&outcome.receipt)?)
        .map_err(|e| fail(Exit::Error, format!("`{}`: {e}", rp.display())))?;
    if format == Format::Json {
        println!(
            "{}",
            json!({"file": a.out, "format": body.get("format"), "receipt": rp, "rows": outcome.rows, "suppressed": outcome.suppressed,
                "bytes": outcome.bytes, "sha256": outcome.sha256, "log_index": outcome.receipt.index})
        );
    } else {
        println!("exported {} rows ({} bytes) to `{}`", outcome.rows, outcome.bytes, a.out.display());
        if outcome.suppressed > 0 {
            println!("groups suppressed below k: {}", outcome.suppressed);
        }
        println!("sha256 {} (in log entry {})", outcome.sha256, outcome.receipt.index);
        println!("receipt: `{}` (check with `custody-monitor verify-export`)", rp.display());
    }
    Ok(())
}
