//! `clips-load`: a closed-loop load generator for clips.
//!
//! N virtual users each loop: pick an operation from the mix, call clips, wait for the answer,
//! repeat. It reports throughput and p50/p95/p99 latency per operation, and, given custody's
//! URL, how much the transparency log grew. It addresses the population `custody demo` and
//! `clips seed` create (`u0..`, `v0..`).

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use clap::Parser;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde_json::json;

/// mimalloc as the process allocator: faster than glibc's for the many small, cross-thread
/// allocations of request handling (see the workspace Cargo.toml).
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// Closed-loop load against a clips API.
#[derive(Debug, Parser)]
#[command(name = "clips-load", version, max_term_width = 100)]
struct Args {
    /// clips' API
    #[arg(long, default_value = "http://127.0.0.1:8760")]
    clips: String,
    /// custody's API, to report how much the log grew (its checkpoint's size)
    #[arg(long)]
    custody: Option<String>,
    /// Concurrent virtual users
    #[arg(long, default_value_t = 64)]
    users: usize,
    /// How long to run, in seconds
    #[arg(long, default_value_t = 60)]
    duration: u64,
    /// Seeded users to address (`u0` ..); seeded videos are half as many (`v0` ..)
    #[arg(long, default_value_t = 10_000)]
    population: u64,
    /// Operation mix as name=weight, comma-separated; names: feed, view, like, comment, follow, edit
    #[arg(long, default_value = "feed=60,view=20,like=10,comment=5,follow=3,edit=2")]
    mix: String,
    /// Print one JSON document instead of a table
    #[arg(long)]
    json: bool,
}

const OPS: [&str; 6] = ["feed", "view", "like", "comment", "follow", "edit"];

fn parse_mix(s: &str) -> anyhow::Result<Vec<(usize, u32)>> {
    let mut out = Vec::new();
    for part in s.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        let (name, w) = part.split_once('=').with_context(|| format!("`{part}` is not name=weight"))?;
        let op = OPS
            .iter()
            .position(|o| *o == name.trim())
            .with_context(|| format!("unknown operation `{name}`; use {}", OPS.join(", ")))?;
        let w: u32 = w.trim().parse().with_context(|| format!("weight of `{name}` is not a whole number"))?;
        out.push((op, w));
    }
    if out.iter().map(|(_, w)| w).sum::<u32>() == 0 {
        bail!("the mix has no weight");
    }
    Ok(out)
}

#[derive(Default)]
struct Stats {
    lat_us: Vec<Vec<u64>>,
    /// Answers 410 Gone: the content of an erased user (the demo erases one), which is the
    /// right answer, so neither a success nor an error.
    gone: Vec<u64>,
    errors: Vec<u64>,
}

impl Stats {
    fn new() -> Self {
        Self { lat_us: vec![Vec::new(); OPS.len()], gone: vec![0; OPS.len()], errors: vec![0; OPS.len()] }
    }
}

/// How an operation ended, when it did not fail.
enum Outcome {
    Ok,
    /// 410 Gone (an erased user's content).
    Gone,
}

async fn checkpoint_size(http: &reqwest::Client, custody: &str) -> anyhow::Result<u64> {
    let text = http.get(format!("{custody}/log/checkpoint")).send().await?.error_for_status()?.text().await?;
    text.lines().nth(1).and_then(|l| l.trim().parse().ok()).context("checkpoint has no size line")
}

async fn one(http: &reqwest::Client, base: &str, op: usize, r: &mut StdRng, pop: u64) -> anyhow::Result<Outcome> {
    let videos = (pop / 2).max(1);
    let me = format!("u{}", r.gen_range(0..pop));
    let video = format!("v{}", (videos as f64 * r.r#gen::<f64>().powi(2)) as u64 % videos);
    let resp = match op {
        0 => http.get(format!("{base}/v1/users/{me}/feed?limit=20")).send().await?,
        1 => {
            let v = http.get(format!("{base}/v1/videos/{video}")).send().await?;
            if v.status() == reqwest::StatusCode::GONE {
                return Ok(Outcome::Gone);
            }
            if !v.status().is_success() {
                bail!("video: {}", v.status());
            }
            http.post(format!("{base}/v1/videos/{video}/views"))
                .json(&json!({ "viewer": me, "watched_ms": r.gen_range(500..60_000) }))
                .send()
                .await?
        }
        2 => http.post(format!("{base}/v1/videos/{video}/likes")).json(&json!({ "user": me })).send().await?,
        3 => {
            http.post(format!("{base}/v1/videos/{video}/comments"))
                .json(&json!({ "author": me, "text": "great clip" }))
                .send()
                .await?
        }
        4 => {
            let mut other = format!("u{}", r.gen_range(0..pop));
            if other == me {
                other = format!("u{}", (r.gen_range(0..pop) + 1) % pop);
            }
            http.post(format!("{base}/v1/users/{me}/follows")).json(&json!({ "followee": other })).send().await?
        }
        _ => {
            http.patch(format!("{base}/v1/users/{me}"))
                .json(&json!({ "bio": format!("edited {}", r.r#gen::<u32>()) }))
                .send()
                .await?
        }
    };
    let status = resp.status();
    let _ = resp.bytes().await?;
    // A follow of someone already followed is a 200; a self-follow a 400 we avoid above.
    if status == reqwest::StatusCode::GONE {
        return Ok(Outcome::Gone);
    }
    if !status.is_success() {
        bail!("{}: {status}", OPS.get(op).copied().unwrap_or("?"));
    }
    Ok(Outcome::Ok)
}

fn pct(sorted: &[u64], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted.get(i).copied().unwrap_or_default() as f64 / 1000.0
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let _ = tracing_subscriber::fmt().with_writer(std::io::stderr).with_env_filter("warn").try_init();
    let mix = parse_mix(&args.mix)?;
    if args.population < 2 {
        bail!("--population must be at least 2");
    }
    let rt = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
    rt.block_on(async move {
        let http = reqwest::Client::builder().timeout(Duration::from_secs(30)).pool_max_idle_per_host(256).build()?;
        let base = args.clips.trim_end_matches('/').to_string();
        http.get(format!("{base}/healthz")).send().await?.error_for_status().context("clips is not answering")?;
        let log_before = match &args.custody {
            Some(c) => Some(checkpoint_size(&http, c).await?),
            None => None,
        };
        let total: u32 = mix.iter().map(|(_, w)| w).sum();
        let mix = Arc::new(mix);
        let deadline = Instant::now() + Duration::from_secs(args.duration);
        let start = Instant::now();
        let mut tasks = tokio::task::JoinSet::new();
        for vu in 0..args.users {
            let (http, base, mix) = (http.clone(), base.clone(), mix.clone());
            let pop = args.population;
            tasks.spawn(async move {
                let mut r = StdRng::seed_from_u64(vu as u64 ^ 0x5EED);
                let mut s = Stats::new();
                while Instant::now() < deadline {
                    let mut x = r.gen_range(0..total);
                    let mut op = 0;
                    for (o, w) in mix.iter() {
                        if x < *w {
                            op = *o;
                            break;
                        }
                        x -= w;
                    }
                    let t = Instant::now();
                    let ok = one(&http, &base, op, &mut r, pop).await;
                    let us = t.elapsed().as_micros() as u64;
                    match ok {
                        Ok(Outcome::Ok) => {
                            if let Some(v) = s.lat_us.get_mut(op) {
                                v.push(us);
                            }
                        }
                        Ok(Outcome::Gone) => {
                            if let Some(c) = s.gone.get_mut(op) {
                                *c += 1;
                            }
                        }
                        Err(e) => {
                            if let Some(c) = s.errors.get_mut(op) {
                                if *c == 0 {
                                    tracing::warn!(error = %e, "operation failed");
                                }
                                *c += 1;
                            }
                        }
                    }
                }
                s
            });
        }
        let mut all = Stats::new();
        while let Some(res) = tasks.join_next().await {
            let s = res?;
            for (a, b) in all.lat_us.iter_mut().zip(s.lat_us) {
                a.extend(b);
            }
            for (a, b) in all.errors.iter_mut().zip(s.errors) {
                *a += b;
            }
            for (a, b) in all.gone.iter_mut().zip(s.gone) {
                *a += b;
            }
        }
        let elapsed = start.elapsed().as_secs_f64();
        let log_after = match &args.custody {
            Some(c) => Some(checkpoint_size(&http, c).await?),
            None => None,
        };
        let mut per_op = BTreeMap::new();
        let mut ok_total = 0usize;
        for (op, lat) in all.lat_us.iter_mut().enumerate() {
            lat.sort_unstable();
            ok_total += lat.len();
            let name = OPS.get(op).copied().unwrap_or("?");
            let errors = all.errors.get(op).copied().unwrap_or_default();
            let gone = all.gone.get(op).copied().unwrap_or_default();
            if lat.is_empty() && errors == 0 && gone == 0 {
                continue;
            }
            per_op.insert(
                name,
                json!({ "ok": lat.len(), "gone": gone, "errors": errors, "per_s": lat.len() as f64 / elapsed,
                    "p50_ms": pct(lat, 0.50), "p95_ms": pct(lat, 0.95), "p99_ms": pct(lat, 0.99) }),
            );
        }
        let growth = log_before.zip(log_after).map(|(a, b)| b.saturating_sub(a));
        if args.json {
            println!(
                "{}",
                json!({ "users": args.users, "seconds": elapsed, "ops": ok_total, "ops_per_s": ok_total as f64 / elapsed,
                    "per_op": per_op, "log_entries_added": growth })
            );
        } else {
            println!(
                "clips-load: {} virtual users, {:.1} s, {} ok operations, {:.0} ops/s",
                args.users,
                elapsed,
                ok_total,
                ok_total as f64 / elapsed
            );
            println!(
                "{:<8} {:>9} {:>6} {:>7} {:>9} {:>9} {:>9} {:>9}",
                "op", "ok", "gone", "errors", "ops/s", "p50 ms", "p95 ms", "p99 ms"
            );
            for (name, v) in &per_op {
                let f = |k: &str| v.get(k).and_then(serde_json::Value::as_f64).unwrap_or_default();
                println!(
                    "{name:<8} {:>9} {:>6} {:>7} {:>9.1} {:>9.2} {:>9.2} {:>9.2}",
                    f("ok"),
                    f("gone"),
                    f("errors"),
                    f("per_s"),
                    f("p50_ms"),
                    f("p95_ms"),
                    f("p99_ms")
                );
            }
            if let (Some(a), Some(b)) = (log_before, log_after) {
                println!(
                    "custody log: {a} -> {b} entries (+{}, {:.0} entries/s)",
                    b.saturating_sub(a),
                    b.saturating_sub(a) as f64 / elapsed
                );
            }
        }
        Ok(())
    })
}
