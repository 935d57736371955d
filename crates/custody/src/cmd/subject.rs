//! `custody subject export|erase`: subject rights over the HTTP API.
//!
//! These go through the guarded API with a principal's token (the subject's own, or a
//! privacy operator's with a justification), so Cedar decides them and the log records them,
//! exactly as for any other access.

use std::fmt::Write as _;
use std::path::PathBuf;

use clap::{Args, Subcommand};
use custody_client::{Client, ClientError, Reason, SubjectExport};

use crate::Format;
use crate::config::Settings;
use crate::exit::{Exit, fail};

/// How to reach the API and as whom.
#[derive(Debug, Args)]
pub(crate) struct Connection {
    /// The subject id
    #[arg(long)]
    subject: String,
    /// Bearer token of the subject, or of an operator acting for them
    #[arg(long, env = "CUSTODY_TOKEN", hide_env_values = true)]
    token: String,
    /// API base URL [default: http://LISTEN from the settings]
    #[arg(long, env = "CUSTODY_SERVER")]
    server: Option<String>,
    /// Stated purpose (`custody-purpose`)
    #[arg(long)]
    purpose: Option<String>,
    /// Justification, e.g. the subject's request ticket; operators need one (`custody-justification`)
    #[arg(long)]
    justification: Option<String>,
}

#[derive(Debug, Subcommand)]
pub(crate) enum SubjectCmd {
    /// Export every record about a subject and every log entry naming them, with proofs
    Export {
        #[command(flatten)]
        conn: Connection,
        /// Write the JSON export to this file (default: standard output)
        #[arg(long)]
        out: Option<PathBuf>,
        /// Also write a readable, self-contained HTML page to this file
        #[arg(long)]
        html: Option<PathBuf>,
    },
    /// Erase a subject: destroy their key, tombstone their records; prints the receipt
    Erase {
        #[command(flatten)]
        conn: Connection,
    },
}

fn client(settings: &Settings, conn: &Connection) -> anyhow::Result<Client> {
    let base = conn.server.clone().unwrap_or_else(|| format!("http://{}", settings.server.listen));
    let c = Client::new(base, conn.token.clone()).map_err(|e| fail(Exit::Error, e.to_string()))?;
    Ok(c.with_reason(Reason {
        purpose: conn.purpose.clone(),
        justification: conn.justification.clone(),
        approvals: Vec::new(),
    }))
}

fn api_fail(e: ClientError) -> anyhow::Error {
    let code = match e.status().map(|s| s.as_u16()) {
        Some(400) => Exit::BadInput,
        Some(401 | 403 | 404 | 409 | 410) => Exit::Refused,
        _ => Exit::Error,
    };
    fail(code, e.to_string())
}

pub(crate) fn run(settings: &Settings, format: Format, cmd: SubjectCmd) -> anyhow::Result<()> {
    let rt = super::runtime()?;
    match cmd {
        SubjectCmd::Export { conn, out, html } => {
            let c = client(settings, &conn)?;
            let export = rt.block_on(c.export_subject(&conn.subject)).map_err(api_fail)?;
            let json = serde_json::to_string_pretty(&export)?;
            match &out {
                Some(p) => {
                    std::fs::write(p, &json).map_err(|e| fail(Exit::Error, format!("`{}`: {e}", p.display())))?
                }
                None if html.is_none() || format == Format::Json => println!("{json}"),
                None => {}
            }
            if let Some(p) = &html {
                std::fs::write(p, render_html(&export))
                    .map_err(|e| fail(Exit::Error, format!("`{}`: {e}", p.display())))?;
            }
            if format == Format::Human && (out.is_some() || html.is_some()) {
                let entries = export.log.as_ref().map_or(0, |l| l.entries.len());
                eprintln!(
                    "exported {} records and {entries} log entries about `{}`{}",
                    export.records.len(),
                    export.subject,
                    if export.erased { " (erased)" } else { "" }
                );
            }
        }
        SubjectCmd::Erase { conn } => {
            let c = client(settings, &conn)?;
            let r = rt.block_on(c.erase_subject(&conn.subject)).map_err(api_fail)?;
            if format == Format::Json {
                println!("{}", serde_json::to_string(&r)?);
            } else {
                match r.destroyed_key {
                    Some(v) => println!("erased `{}`: key version {v} destroyed", r.subject),
                    None => println!("`{}` had no live key (already erased, or no data)", r.subject),
                }
                println!("records tombstoned: {}", r.tombstoned);
                println!("erasure entry: log index {}", r.receipt.index);
                if r.checkpoint.is_some() {
                    println!("inclusion proof against a signed checkpoint: included (use --format json to keep it)");
                }
            }
        }
    }
    Ok(())
}

fn esc(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

fn value_text(v: &serde_json::Value) -> String {
    match v {
        serde_json::Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

/// A self-contained page (no scripts, no external resources) a subject can read and keep.
pub(crate) fn render_html(e: &SubjectExport) -> String {
    let mut h = String::new();
    let _ = write!(
        h,
        "<!doctype html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">\
<meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\
<title>Your data: {subject}</title><style>\
body{{font:15px/1.5 system-ui,sans-serif;max-width:60rem;margin:2rem auto;padding:0 1rem;color:#1b1b1b}}\
table{{border-collapse:collapse;width:100%;margin:.5rem 0 1.5rem}}td,th{{border:1px solid #ccc;padding:.3rem .5rem;\
text-align:left;vertical-align:top}}th{{background:#f3f3f3}}code,pre{{font:12px ui-monospace,monospace}}\
pre{{white-space:pre-wrap;word-break:break-all;background:#f7f7f7;padding:.5rem}}.muted{{color:#666}}\
details{{margin:.2rem 0}}</style></head><body>\n<h1>What custody holds about <code>{subject}</code></h1>\n\
<p class=\"muted\">Generated {generated}. In the log you appear only as the pseudonym <code>{pseudonym}</code>.</p>\n",
        subject = esc(&e.subject),
        generated = esc(&e.generated),
        pseudonym = esc(&e.pseudonym),
    );
    if e.erased {
        h.push_str("<p><strong>Your data was erased.</strong> Your key was destroyed; no record about you can be decrypted any more.</p>\n");
    }
    let _ = writeln!(h, "<h2>Records ({})</h2>", e.records.len());
    if e.truncated_records {
        h.push_str("<p>Only the first records are shown; ask for the rest.</p>\n");
    }
    for r in &e.records {
        let _ = writeln!(
            h,
            "<h3>{} / <code>{}</code></h3>\n<table><tr><th>Field</th><th>Value</th></tr>",
            esc(&r.collection),
            esc(&r.record.id)
        );
        for (k, v) in &r.record.fields {
            let _ = writeln!(h, "<tr><td>{}</td><td>{}</td></tr>", esc(k), esc(&value_text(v)));
        }
        for w in &r.record.withheld {
            let _ = writeln!(
                h,
                "<tr><td>{}</td><td class=\"muted\">withheld ({}: {})</td></tr>",
                esc(&w.field),
                esc(&w.class),
                esc(&w.reason)
            );
        }
        h.push_str("</table>\n");
    }
    match &e.log {
        Some(log) => {
            let _ = writeln!(
                h,
                "<h2>Who touched your data ({} log entries)</h2>\n<p>Every entry below is in the transparency log \
<code>{}</code>; each carries an inclusion proof against the signed checkpoint at the end (tree size {}), \
which anyone can check with the log key <code>{}</code>.</p>",
                log.entries.len(),
                esc(&log.origin),
                log.size,
                esc(&log.vkey)
            );
            if log.truncated {
                h.push_str("<p>Only the first entries are shown.</p>\n");
            }
            h.push_str("<table><tr><th>#</th><th>When</th><th>Who</th><th>What</th><th>Entry and proof</th></tr>\n");
            for le in &log.entries {
                let v: serde_json::Value = serde_json::from_str(&le.entry).unwrap_or_default();
                let field = |k: &str| v.get(k).map(value_text).unwrap_or_default();
                let what = match field("kind").as_str() {
                    "access" => format!("{} {} ({})", field("action"), field("collection"), field("decision")),
                    "key" => format!("key {} {}", field("key"), field("change")),
                    "subject" => format!("{} request ({})", field("request"), field("decision")),
                    other => other.to_string(),
                };
                let who = if field("principal").is_empty() {
                    "custody".to_string()
                } else {
                    format!("{} ({})", field("principal"), field("principal_kind"))
                };
                let _ = writeln!(
                    h,
                    "<tr><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td><details><summary>show</summary>\
<pre>{}</pre><pre>{}</pre></details></td></tr>",
                    le.index,
                    esc(&field("time")),
                    esc(&who),
                    esc(&what),
                    esc(&le.entry),
                    esc(&le.inclusion.to_string())
                );
            }
            let _ = writeln!(h, "</table>\n<h3>Signed checkpoint</h3>\n<pre>{}</pre>", esc(&log.checkpoint));
        }
        None => h.push_str("<p>This server records to an audit sink without proofs; no log part.</p>\n"),
    }
    let _ = writeln!(h, "<p class=\"muted\">This export itself is log entry {}.</p>\n</body></html>", e.receipt.index);
    h
}
