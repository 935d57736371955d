//! The HTML report: one self-contained page (inline CSS and SVG, no scripts, no fonts, nothing
//! fetched) over the verified entries of a state directory.
//!
//! Every number shown is also in the DOM for machines: totals as `id="stat-…"` elements with a
//! `data-value`, chart bars as elements with `data-chart`, `data-key` and `data-value`.

use std::collections::BTreeMap;
use std::fmt::Write as _;

use custody_core::{Action, Decision, LogEntry};
use time::OffsetDateTime;

use crate::alert::Alert;
use crate::rules::FieldClasses;
use crate::state::{StoredEntry, Verified};

/// Which fields count as protected, for the top-principals chart.
#[derive(Debug, Clone, Default)]
pub struct Protection {
    /// Field classes by `(collection, field)`.
    pub classes: FieldClasses,
    /// Classes that are protected.
    pub protected: Vec<String>,
}

/// A policy set that took effect.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PolicyChange {
    /// Its entry's index.
    pub index: u64,
    /// When.
    pub time: OffsetDateTime,
    /// Its hash.
    pub policy_set: String,
    /// `start` or `reload`.
    pub cause: String,
}

/// Everything the report shows, computed from the entries.
#[derive(Debug, Clone, Default)]
pub struct Summary {
    /// Entries in the verified log.
    pub entries: u64,
    /// Access entries.
    pub accesses: u64,
    /// Accesses by decision: permit, partial, deny.
    pub decisions: [u64; 3],
    /// Accesses by stated purpose (`none` when absent).
    pub by_purpose: BTreeMap<String, u64>,
    /// Accesses by the principal's location (`unknown` when absent).
    pub by_location: BTreeMap<String, u64>,
    /// Protected fields read, per principal.
    pub protected_reads: BTreeMap<String, u64>,
    /// Access times with decisions, for the timeline.
    pub timeline: Vec<(OffsetDateTime, Decision)>,
    /// Policy sets that took effect.
    pub policy_changes: Vec<PolicyChange>,
}

fn decision_slot(d: Decision) -> usize {
    match d {
        Decision::Permit => 0,
        Decision::Partial => 1,
        Decision::Deny => 2,
    }
}

/// Summarises verified entries.
pub fn summarize(entries: &[StoredEntry], protection: &Protection) -> Summary {
    let mut s = Summary { entries: entries.len() as u64, ..Summary::default() };
    for stored in entries {
        match serde_json::from_str::<LogEntry>(&stored.entry) {
            Ok(LogEntry::Access(e)) => {
                s.accesses += 1;
                if let Some(slot) = s.decisions.get_mut(decision_slot(e.decision)) {
                    *slot += 1;
                }
                *s.by_purpose.entry(e.purpose.clone().unwrap_or_else(|| "none".into())).or_default() += 1;
                *s.by_location.entry(e.location.clone().unwrap_or_else(|| "unknown".into())).or_default() += 1;
                if e.action == Action::Read {
                    let n = e
                        .released
                        .iter()
                        .filter(|f| {
                            protection
                                .classes
                                .get(&(e.collection.as_str().to_owned(), f.as_str().to_owned()))
                                .is_some_and(|c| protection.protected.contains(c))
                        })
                        .count() as u64;
                    if n > 0 {
                        *s.protected_reads.entry(e.principal.as_str().to_owned()).or_default() += n;
                    }
                }
                s.timeline.push((e.time, e.decision));
            }
            Ok(LogEntry::PolicySet(p)) => s.policy_changes.push(PolicyChange {
                index: stored.index,
                time: p.time,
                policy_set: p.policy_set,
                cause: p.cause,
            }),
            _ => {}
        }
    }
    s
}

fn esc(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
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

fn rfc3339(t: OffsetDateTime) -> String {
    t.format(&time::format_description::well_known::Rfc3339).unwrap_or_default()
}

const COLORS: [&str; 3] = ["#2e7d32", "#f9a825", "#c62828"];
const DECISIONS: [&str; 3] = ["permit", "partial", "deny"];

/// Horizontal bar chart of `(key, value)` rows.
fn bars(chart: &str, title: &str, rows: &[(String, u64)], color: &str) -> String {
    let max = rows.iter().map(|(_, v)| *v).max().unwrap_or(0).max(1);
    let row_h = 22;
    let height = 30 + row_h * rows.len().max(1);
    let mut svg = format!(
        r#"<figure><figcaption>{}</figcaption><svg role="img" width="620" height="{height}" viewBox="0 0 620 {height}">"#,
        esc(title)
    );
    if rows.is_empty() {
        svg.push_str(r##"<text x="10" y="30" fill="#666">no data</text>"##);
    }
    for (i, (key, value)) in rows.iter().enumerate() {
        let y = 10 + i * row_h;
        let w = (*value as f64 / max as f64 * 380.0).max(1.0);
        let _ = write!(
            svg,
            r#"<g class="bar" data-chart="{chart}" data-key="{k}" data-value="{value}"><text x="170" y="{ty}" text-anchor="end">{k}</text><rect x="180" y="{y}" width="{w:.1}" height="16" fill="{color}"/><text x="{tx:.1}" y="{ty}">{value}</text></g>"#,
            k = esc(key),
            ty = y + 13,
            tx = 186.0 + w,
        );
    }
    svg.push_str("</svg></figure>");
    svg
}

/// Stacked bars of accesses per time bucket by decision, with policy changes as markers.
fn timeline(s: &Summary) -> String {
    let (w, h, left, bottom) = (860.0f64, 260.0f64, 50.0f64, 30.0f64);
    let mut svg = format!(
        r#"<figure><figcaption>Accesses over time by decision; dashed lines are policy changes</figcaption><svg role="img" width="{w}" height="{h}" viewBox="0 0 {w} {h}">"#
    );
    let times: Vec<OffsetDateTime> =
        s.timeline.iter().map(|(t, _)| *t).chain(s.policy_changes.iter().map(|p| p.time)).collect();
    let (Some(first), Some(last)) = (times.iter().min().copied(), times.iter().max().copied()) else {
        svg.push_str(r##"<text x="10" y="30" fill="#666">no accesses</text></svg></figure>"##);
        return svg;
    };
    let span = (last - first).whole_seconds().max(1);
    let bucket = [1i64, 10, 60, 600, 3600, 6 * 3600, 86400, 7 * 86400, 30 * 86400, 365 * 86400]
        .into_iter()
        .find(|b| span / b < 60)
        .unwrap_or(365 * 86400);
    let n = usize::try_from(span / bucket + 1).unwrap_or(1);
    let mut counts = vec![[0u64; 3]; n];
    for (t, d) in &s.timeline {
        let i = usize::try_from((*t - first).whole_seconds() / bucket).unwrap_or(0);
        if let Some(slot) = counts.get_mut(i).and_then(|c| c.get_mut(decision_slot(*d))) {
            *slot += 1;
        }
    }
    let max = counts.iter().map(|c| c.iter().sum::<u64>()).max().unwrap_or(1).max(1);
    let plot_w = w - left - 10.0;
    let plot_h = h - bottom - 20.0;
    let bw = plot_w / n as f64;
    let _ = write!(
        svg,
        r##"<line x1="{left}" y1="{y0}" x2="{x1}" y2="{y0}" stroke="#999"/><text x="{tl}" y="20" text-anchor="end">{max}</text><text x="{tl}" y="{y0}" text-anchor="end">0</text>"##,
        y0 = 10.0 + plot_h,
        x1 = w - 10.0,
        tl = left - 4.0,
    );
    for (i, c) in counts.iter().enumerate() {
        let mut y = 10.0 + plot_h;
        let start = first + time::Duration::seconds(bucket * i as i64);
        for (slot, count) in c.iter().enumerate() {
            if *count == 0 {
                continue;
            }
            let bh = *count as f64 / max as f64 * plot_h;
            y -= bh;
            let _ = write!(
                svg,
                r#"<rect class="tbar" data-chart="timeline" data-key="{start}/{d}" data-value="{count}" x="{x:.1}" y="{y:.1}" width="{bw2:.1}" height="{bh:.1}" fill="{color}"><title>{start}: {count} {d}</title></rect>"#,
                start = rfc3339(start),
                d = DECISIONS.get(slot).unwrap_or(&""),
                x = left + bw * i as f64,
                bw2 = (bw - 1.0).max(0.5),
                color = COLORS.get(slot).unwrap_or(&"#000"),
            );
        }
    }
    for p in &s.policy_changes {
        let x = left + (p.time - first).whole_seconds() as f64 / (bucket as f64 * n as f64) * plot_w;
        let _ = write!(
            svg,
            r##"<line class="policy-marker" data-index="{}" x1="{x:.1}" y1="10" x2="{x:.1}" y2="{y0}" stroke="#1565c0" stroke-dasharray="4 3"><title>policy set {} ({})</title></line>"##,
            p.index,
            esc(p.policy_set.get(..12).unwrap_or(&p.policy_set)),
            esc(&p.cause),
            y0 = 10.0 + plot_h,
        );
    }
    let _ = write!(
        svg,
        r#"<text x="{left}" y="{ty}">{}</text><text x="{xr}" y="{ty}" text-anchor="end">{}</text>"#,
        rfc3339(first),
        rfc3339(first + time::Duration::seconds(bucket * n as i64)),
        ty = h - 8.0,
        xr = w - 10.0,
    );
    svg.push_str("</svg></figure>");
    svg
}

fn stat(id: &str, label: &str, value: u64) -> String {
    format!(
        r#"<div class="stat"><span class="label">{label}</span><span id="stat-{id}" data-value="{value}">{value}</span></div>"#
    )
}

/// Renders the page.
pub fn render(summary: &Summary, verified: &Verified, alerts: &[Alert], protection_known: bool) -> String {
    let cp = &verified.checkpoint;
    let mut html = String::from(
        r#"<!DOCTYPE html><html lang="en"><head><meta charset="utf-8"><title>custody monitor report</title><style>
body{font-family:sans-serif;margin:24px;color:#222;max-width:960px}
.stats{display:flex;flex-wrap:wrap;gap:12px}.stat{border:1px solid #ccc;border-radius:6px;padding:8px 14px}
.stat .label{display:block;font-size:12px;color:#666}.stat span[data-value]{font-size:22px;font-weight:bold}
figure{margin:16px 0}figcaption{font-weight:bold;margin-bottom:4px}svg text{font-size:12px}
table{border-collapse:collapse;width:100%}td,th{border-bottom:1px solid #ddd;padding:4px;text-align:left;font-size:13px;vertical-align:top}
pre{background:#f5f5f5;padding:8px;overflow-x:auto}.critical{color:#c62828}.warning{color:#e65100}
.legend span{display:inline-block;width:12px;height:12px;margin:0 4px 0 12px;vertical-align:middle}
</style></head><body><h1>custody monitor report</h1>"#,
    );
    let _ = write!(
        html,
        r#"<p>Every number below is computed from the {} entries of the log <code id="log-origin">{}</code> that this monitor verified against the checkpoint below (signature, consistency with every earlier checkpoint it saw, and every entry hashed into the tree).</p>"#,
        cp.size,
        esc(&cp.origin)
    );
    html.push_str(r#"<div class="stats">"#);
    html.push_str(&stat("entries", "log entries", summary.entries));
    html.push_str(&stat("accesses", "accesses", summary.accesses));
    for (slot, name) in DECISIONS.iter().enumerate() {
        html.push_str(&stat(name, name, summary.decisions.get(slot).copied().unwrap_or(0)));
    }
    html.push_str(&stat("policy-changes", "policy changes", summary.policy_changes.len() as u64));
    html.push_str(&stat("alerts", "alerts", alerts.len() as u64));
    html.push_str("</div>");
    html.push_str(r#"<p class="legend">"#);
    for (slot, name) in DECISIONS.iter().enumerate() {
        let _ = write!(html, r#"<span style="background:{}"></span>{name}"#, COLORS.get(slot).unwrap_or(&"#000"));
    }
    html.push_str("</p>");
    html.push_str(&timeline(summary));
    let sorted = |m: &BTreeMap<String, u64>, limit: usize| {
        let mut rows: Vec<(String, u64)> = m.iter().map(|(k, v)| (k.clone(), *v)).collect();
        rows.sort_by(|a, b| b.1.cmp(&a.1).then_with(|| a.0.cmp(&b.0)));
        rows.truncate(limit);
        rows
    };
    html.push_str(&bars("purpose", "Accesses by purpose", &sorted(&summary.by_purpose, 20), "#5e35b1"));
    html.push_str(&bars("location", "Accesses by principal location", &sorted(&summary.by_location, 20), "#00838f"));
    let title = if protection_known {
        "Top principals by protected fields read"
    } else {
        "Top principals by protected fields read (no schema given: none known)"
    };
    html.push_str(&bars("principal", title, &sorted(&summary.protected_reads, 10), "#ad1457"));

    html.push_str(
        "<h2>Policy changes</h2><table><tr><th>entry</th><th>time</th><th>cause</th><th>policy set</th></tr>",
    );
    for p in &summary.policy_changes {
        let _ = write!(
            html,
            r#"<tr class="policy-change" data-index="{}"><td>{}</td><td>{}</td><td>{}</td><td><code>{}</code></td></tr>"#,
            p.index,
            p.index,
            rfc3339(p.time),
            esc(&p.cause),
            esc(&p.policy_set)
        );
    }
    html.push_str("</table><h2>Alerts</h2><table><tr><th>raised</th><th>severity</th><th>alert</th><th>entry</th><th>message</th></tr>");
    for a in alerts {
        let severity =
            serde_json::to_value(a.severity).ok().and_then(|v| v.as_str().map(str::to_owned)).unwrap_or_default();
        let _ = write!(
            html,
            r#"<tr class="alert {severity}" data-alert="{}"><td>{}</td><td>{severity}</td><td>{}</td><td>{}</td><td>{}</td></tr>"#,
            esc(&a.alert),
            rfc3339(a.time),
            esc(&a.alert),
            a.index.map(|i| i.to_string()).unwrap_or_default(),
            esc(&a.message)
        );
    }
    html.push_str("</table>");
    let _ = write!(
        html,
        r#"<h2>Verified checkpoint</h2><p>Size <span id="checkpoint-size" data-value="{}">{}</span>, root <code id="checkpoint-root">{}</code></p><pre id="checkpoint">{}</pre>"#,
        cp.size,
        cp.size,
        cp.root_hash.to_base64(),
        esc(&verified.signed)
    );
    let _ = writeln!(
        html,
        "<p>Generated {} by custody-monitor {}.</p></body></html>",
        rfc3339(OffsetDateTime::now_utc()),
        env!("CARGO_PKG_VERSION")
    );
    html
}
