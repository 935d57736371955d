//! `custody bench`: guarded vs unguarded reads over loopback HTTP, side by side in one run.
//!
//! It starts two real custody APIs on ephemeral loopback ports over fresh temporary data dirs,
//! one recording to the transparency log (as `custody serve` does) and one to the foundation's
//! file audit sink, plus a baseline endpoint that reads the same records from the same vault with no policy
//! decision and no audit event. Then it drives all three with the same number of concurrent
//! clients, alternating rounds so machine noise hits both alike, and prints req/s, p50, p99.
//! With `--postgres`, a fourth API keeps records, keys and the log in a throwaway local
//! PostgreSQL (initdb/pg_ctl on a unix socket), measured in the same rounds; with
//! `--two-nodes`, a second node on the same database joins it (forwarding its log entries to
//! the elected sequencer) and the clients are split evenly between the two.

use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use axum::extract::{Path, State};
use axum::routing::get;
use axum::{Json, Router};
use indicatif::{ProgressBar, ProgressStyle};
use serde_json::json;

use custody_audit::{FileAuditSink, FileSinkOptions};
use custody_core::{CollectionName, RecordId};
use custody_server::admin::{NewPrincipal, add_principal};
use custody_server::{DataDir, ServerConfig, ServerState, Storage};

use crate::Format;
use crate::config::Settings;

#[derive(Debug, clap::Args)]
#[command(args_conflicts_with_subcommands = true)]
pub(crate) struct BenchArgs {
    /// Another benchmark instead of guarded reads
    #[command(subcommand)]
    what: Option<BenchCmd>,
    /// Concurrent HTTP clients
    #[arg(long, default_value_t = 8)]
    concurrency: usize,
    /// Seconds per measured round
    #[arg(long, default_value_t = 5)]
    seconds: u64,
    /// Rounds per target (alternating guarded and unguarded)
    #[arg(long, default_value_t = 2)]
    rounds: usize,
    /// Profiles to seed
    #[arg(long, default_value_t = 1000)]
    records: usize,
    /// Also measure guarded reads with records, keys and the log in a throwaway local
    /// PostgreSQL (needs initdb and pg_ctl)
    #[arg(long)]
    postgres: bool,
    /// With --postgres, also measure two nodes on the one database (a second node forwards
    /// its log entries to the sequencer), clients split evenly between them
    #[arg(long, requires = "postgres")]
    two_nodes: bool,
}

/// Benchmarks other than guarded reads.
#[derive(Debug, clap::Subcommand)]
pub(crate) enum BenchCmd {
    /// KEK rotation over many subject DEKs (file provider or PKCS#11): time and peak memory
    Rotate(super::bench_rotate::RotateArgs),
    /// The egress gateway: a pseudonymise + generalise export of N profile rows from the vault
    Egress(super::bench_egress::EgressBenchArgs),
}

/// One round's figures.
#[derive(Debug, Clone, serde::Serialize)]
struct Figures {
    target: &'static str,
    requests: usize,
    errors: usize,
    req_per_s: f64,
    p50_us: u64,
    p99_us: u64,
}

/// A ~1 KB profile with 3 protected fields.
pub(crate) fn profile(n: usize) -> serde_json::Map<String, serde_json::Value> {
    let v = json!({
        "email": format!("user{n}@example.com"),
        "phone": format!("+1-555-{:07}", n),
        "birthdate": "1990-04-01",
        "handle": format!("user{n}"),
        "display_name": format!("User Number {n}"),
        "bio": "short videos about cooking, travel and the occasional cat. ".repeat(14),
        "avatar_url": format!("https://cdn.clips.example/avatars/{n}.jpg"),
    });
    v.as_object().cloned().unwrap_or_default()
}

type Baseline = Arc<ServerState>;

async fn unguarded(
    State(s): State<Baseline>,
    Path(id): Path<String>,
) -> Result<Json<serde_json::Value>, axum::http::StatusCode> {
    let bad = |_| axum::http::StatusCode::BAD_REQUEST;
    let c = CollectionName::new("profiles").map_err(bad)?;
    let id = RecordId::new(id).map_err(bad)?;
    let v = s.guard.vault();
    let stored = v.load(&c, &id).map_err(|_| axum::http::StatusCode::NOT_FOUND)?;
    let opened = v
        .open(s.guard.schema(), &c, &id, &stored, |_| true)
        .map_err(|_| axum::http::StatusCode::INTERNAL_SERVER_ERROR)?;
    let fields: serde_json::Map<_, _> = opened.fields.into_iter().map(|(k, v)| (k.to_string(), v)).collect();
    Ok(Json(json!({"record": {"id": id.as_str(), "fields": fields}})))
}

pub(crate) fn run(settings: &Settings, format: Format, mut args: BenchArgs) -> anyhow::Result<()> {
    super::init_tracing("warn");
    match args.what.take() {
        Some(BenchCmd::Rotate(r)) => return super::bench_rotate::run(settings, format, r),
        Some(BenchCmd::Egress(a)) => return super::bench_egress::run(format, a),
        None => {}
    }
    let rt = super::runtime()?;
    rt.block_on(bench(settings, format, args))
}

/// A running custody API with its two principals' tokens.
struct Running {
    state: Arc<ServerState>,
    addr: std::net::SocketAddr,
    app: String,
    engineer: String,
    stop: tokio::sync::oneshot::Sender<()>,
    server: tokio::task::JoinHandle<std::io::Result<()>>,
}

/// Opens a data dir under `dir` with the transparency log, or with the foundation's file
/// sink when `file_sink`, registers a workload and an engineer, and serves it on loopback.
async fn start(
    settings: &Settings,
    dir: &std::path::Path,
    file_sink: bool,
    storage: Storage,
) -> anyhow::Result<Running> {
    let api = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let addr = api.local_addr()?;
    let mut cfg = ServerConfig::for_data_dir(dir);
    cfg.jurisdiction = settings.server.jurisdiction.clone();
    cfg.storage = storage;
    cfg.listen = addr;
    let state = if file_sink {
        let dirs = DataDir::prepare(&cfg)?;
        let sink = FileAuditSink::open(&dirs.events, FileSinkOptions::default())?;
        ServerState::open_with_sink(cfg, dirs, Arc::new(sink))?
    } else {
        ServerState::open(cfg)?
    };
    let store = state.auth.store().clone();
    let loc = settings.server.jurisdiction.to_string();
    let principal = |id: &str, kind: &str, employer: &str, role: &str| NewPrincipal {
        id: id.into(),
        kind: kind.into(),
        location: loc.clone(),
        employer: employer.into(),
        roles: vec![role.into()],
        subject: None,
        tags: Default::default(),
    };
    let app = add_principal(store.as_ref(), principal("bench-app", "workload", "platform", "app-backend"))?;
    let eng = add_principal(store.as_ref(), principal("bench-engineer", "engineer", "provider", "support"))?;
    let (stop, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(custody_server::setup::serve(state.clone(), api, async {
        let _ = stop_rx.await;
    }));
    Ok(Running { state, addr, app: app.token, engineer: eng.token, stop, server })
}

/// A second node on `first`'s database, with `first`'s secrets copied into a data dir under
/// `dir` (as an operator provisions another machine); it serves `first`'s principals.
async fn start_second(first: &Running, dir: &std::path::Path) -> anyhow::Result<Running> {
    let api = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let addr = api.local_addr()?;
    let cfg = ServerConfig { data_dir: dir.to_path_buf(), listen: addr, ..first.state.config.clone() };
    let from = &first.state.dirs;
    let to = DataDir::prepare(&cfg)?;
    for (a, b) in [(&from.kek, &to.kek), (&from.schema, &to.schema)] {
        std::fs::copy(a, b).with_context(|| format!("copying {}", a.display()))?;
    }
    std::fs::create_dir_all(dir.join("log"))?;
    std::fs::copy(from.root.join("log/key"), dir.join("log/key")).context("copying the log's signing key")?;
    let state = ServerState::open(cfg)?;
    let (stop, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(custody_server::setup::serve(state.clone(), api, async {
        let _ = stop_rx.await;
    }));
    Ok(Running { state, addr, app: first.app.clone(), engineer: first.engineer.clone(), stop, server })
}

async fn bench(settings: &Settings, format: Format, args: BenchArgs) -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let log = start(settings, &dir.path().join("log"), false, Storage::Embedded).await?;
    let file = start(settings, &dir.path().join("file"), true, Storage::Embedded).await?;
    let (_cluster, pg) = if args.postgres {
        let cluster = custody_pg::testing::TempPostgres::start()?;
        let cfg = custody_pg::PgConfig::new(cluster.create_database("bench")?);
        let pg = start(settings, &dir.path().join("pg"), false, Storage::Postgres(cfg)).await?;
        (Some(cluster), Some(pg))
    } else {
        (None, None)
    };
    let second = match (&pg, args.two_nodes) {
        (Some(first), true) => Some(start_second(first, &dir.path().join("pg2")).await?),
        _ => None,
    };
    let base_l = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let base_addr = base_l.local_addr()?;
    let baseline = Router::new().route("/profiles/{id}", get(unguarded)).with_state(log.state.clone());
    let base_server = tokio::spawn(async move { axum::serve(base_l, baseline).await });

    let servers: Vec<&Running> = [Some(&log), Some(&file), pg.as_ref()].into_iter().flatten().collect();
    let bar = ProgressBar::new(servers.len() as u64 * args.records as u64)
        .with_style(ProgressStyle::with_template("seeding {bar:40} {pos}/{len} profiles {per_sec}")?);
    for server in &servers {
        let seeder = custody_client::Client::new(format!("http://{}", server.addr), server.app.clone())?;
        for n in 0..args.records {
            seeder
                .create("profiles", Some(&format!("p{n}")), &format!("subject-{n}"), profile(n))
                .await
                .context("seeding")?;
            bar.inc(1);
        }
    }
    bar.finish_and_clear();

    let http = reqwest::Client::builder().pool_max_idle_per_host(args.concurrency * 2).build()?;
    let mut results = Vec::new();
    for round in 0..args.rounds {
        let targets = [UNGUARDED, GUARDED_FILE, GUARDED_LOG]
            .into_iter()
            .chain(pg.as_ref().map(|_| GUARDED_PG))
            .chain(second.as_ref().map(|_| GUARDED_PG_2));
        for target in targets {
            if let (GUARDED_PG_2, Some(first), Some(second)) = (target, &pg, &second) {
                let spinner = ProgressBar::new_spinner().with_message(format!("round {} {target}", round + 1));
                spinner.enable_steady_tick(Duration::from_millis(200));
                let dur = Duration::from_secs(args.seconds);
                let half = (args.concurrency / 2).max(1);
                let (url_a, url_b) = (records_url(first), records_url(second));
                let (a, b) = tokio::join!(
                    drive(&http, &url_a, &first.engineer, target, half, dur, args.records),
                    drive(&http, &url_b, &second.engineer, target, half, dur, args.records),
                );
                spinner.finish_and_clear();
                results.push(a.merge(b));
                continue;
            }
            let (url, token) = match (target, &pg) {
                (GUARDED_PG, Some(pg)) => {
                    (format!("http://{}/v1/collections/profiles/records/", pg.addr), &pg.engineer)
                }
                _ => match target {
                    GUARDED_LOG => (format!("http://{}/v1/collections/profiles/records/", log.addr), &log.engineer),
                    GUARDED_FILE => (format!("http://{}/v1/collections/profiles/records/", file.addr), &file.engineer),
                    _ => (format!("http://{base_addr}/profiles/"), &log.engineer),
                },
            };
            let spinner = ProgressBar::new_spinner().with_message(format!("round {} {target}", round + 1));
            spinner.enable_steady_tick(Duration::from_millis(200));
            let f =
                drive(&http, &url, token, target, args.concurrency, Duration::from_secs(args.seconds), args.records)
                    .await;
            spinner.finish_and_clear();
            results.push(f);
        }
    }
    for server in [second, Some(log), Some(file), pg].into_iter().flatten() {
        let _ = server.stop.send(());
        let _ = server.server.await;
    }
    base_server.abort();

    let best = |t: &str| results.iter().filter(|f| f.target == t).map(|f| f.req_per_s).fold(0.0, f64::max);
    let guarded = best(GUARDED_LOG) / best(UNGUARDED).max(1.0);
    let log_cost = 1.0 - best(GUARDED_LOG) / best(GUARDED_FILE).max(1.0);
    let pg_over_embedded = best(GUARDED_PG) / best(GUARDED_LOG).max(1.0);
    let two_over_one = best(GUARDED_PG_2) / best(GUARDED_PG).max(1.0);
    match format {
        Format::Json => println!(
            "{}",
            json!({
                "concurrency": args.concurrency, "seconds": args.seconds, "records": args.records,
                "cores": std::thread::available_parallelism().map(|n| n.get()).unwrap_or(0),
                "rounds": results, "guarded_over_unguarded_throughput": guarded,
                "log_cost_vs_file_sink": log_cost,
                "postgres_over_embedded_throughput": if args.postgres { json!(pg_over_embedded) } else { json!(null) },
                "two_nodes_over_one_throughput": if args.two_nodes { json!(two_over_one) } else { json!(null) },
            })
        ),
        Format::Human => {
            println!(
                "reads over loopback HTTP: {} clients, {} s rounds, {} profiles (~1 KB, 3 protected fields)",
                args.concurrency, args.seconds, args.records
            );
            println!(
                "{:<14} {:>9} {:>7} {:>10} {:>9} {:>9}",
                "target", "requests", "errors", "req/s", "p50 µs", "p99 µs"
            );
            for f in &results {
                println!(
                    "{:<14} {:>9} {:>7} {:>10.0} {:>9} {:>9}",
                    f.target, f.requests, f.errors, f.req_per_s, f.p50_us, f.p99_us
                );
            }
            println!("guarded (transparency log) throughput is {guarded:.2}x unguarded (best rounds)");
            println!(
                "the transparency log costs {:.1}% of guarded-read throughput vs the file audit sink (best rounds)",
                log_cost * 100.0
            );
            if args.postgres {
                println!(
                    "guarded reads on PostgreSQL (records, keys and log) run at {pg_over_embedded:.2}x the embedded backend (best rounds)"
                );
            }
            if args.two_nodes {
                println!(
                    "two nodes on one PostgreSQL serve {two_over_one:.2}x the guarded reads of one (best rounds; both nodes share this machine's cores)"
                );
            }
        }
    }
    Ok(())
}

/// Reads with no policy decision and no audit event (the same vault as [`GUARDED_LOG`]).
const UNGUARDED: &str = "unguarded";
/// Guarded reads whose events go to the foundation's file audit sink.
const GUARDED_FILE: &str = "guarded-file";
/// Guarded reads whose events go to the transparency log (what `custody serve` runs).
const GUARDED_LOG: &str = "guarded-log";
/// Guarded reads with the transparency log, records and keys all in PostgreSQL.
const GUARDED_PG: &str = "guarded-pg";
/// As [`GUARDED_PG`], clients split across two nodes (one sequencing, one forwarding).
const GUARDED_PG_2: &str = "guarded-pg-2n";

fn records_url(r: &Running) -> String {
    format!("http://{}/v1/collections/profiles/records/", r.addr)
}

impl Figures {
    /// Two halves of one round run side by side: requests add up, latencies are the worse.
    fn merge(self, other: Figures) -> Figures {
        Figures {
            target: self.target,
            requests: self.requests + other.requests,
            errors: self.errors + other.errors,
            req_per_s: self.req_per_s + other.req_per_s,
            p50_us: self.p50_us.max(other.p50_us),
            p99_us: self.p99_us.max(other.p99_us),
        }
    }
}

async fn drive(
    http: &reqwest::Client,
    url: &str,
    token: &str,
    target: &'static str,
    clients: usize,
    dur: Duration,
    records: usize,
) -> Figures {
    let start = Instant::now();
    let mut tasks = Vec::new();
    for c in 0..clients {
        let (http, url, token) = (http.clone(), url.to_string(), token.to_string());
        tasks.push(tokio::spawn(async move {
            let mut lat = Vec::new();
            let mut errors = 0usize;
            let mut n = c;
            while start.elapsed() < dur {
                let t = Instant::now();
                let r = http
                    .get(format!("{url}p{}", n % records.max(1)))
                    .bearer_auth(&token)
                    .header("custody-purpose", "support")
                    .header("custody-justification", "BENCH-1")
                    .send()
                    .await;
                match r {
                    Ok(resp) if resp.status().is_success() => {
                        let _ = resp.bytes().await;
                        lat.push(t.elapsed().as_micros() as u64);
                    }
                    _ => errors += 1,
                }
                n += clients;
            }
            (lat, errors)
        }));
    }
    let mut all = Vec::new();
    let mut errors = 0;
    for t in tasks {
        if let Ok((l, e)) = t.await {
            all.extend(l);
            errors += e;
        }
    }
    let elapsed = start.elapsed().as_secs_f64();
    all.sort_unstable();
    let pct =
        |p: f64| all.get(((all.len() as f64 * p) as usize).min(all.len().saturating_sub(1))).copied().unwrap_or(0);
    Figures {
        target,
        requests: all.len(),
        errors,
        req_per_s: all.len() as f64 / elapsed,
        p50_us: pct(0.50),
        p99_us: pct(0.99),
    }
}
