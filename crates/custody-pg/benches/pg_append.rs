//! Durable log appends on PostgreSQL vs the embedded files, side by side in one run
//! (`cargo bench -p custody-pg`). The PostgreSQL is a throwaway local cluster (initdb/pg_ctl,
//! unix socket, fsync and synchronous_commit on): the same disk as the files, so the figures
//! compare the storages, not the hardware.
//!
//! Each case: `appenders` tasks each keeping `outstanding` appends in flight, closed loop,
//! for `CUSTODY_BENCH_SECS` (default 5) seconds; appends/s and acknowledged p50/p99. Then the
//! integration rate: entries/s that `Log::open_with` replays and checks.

#![allow(missing_docs, clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]

use std::sync::Arc;
use std::time::{Duration, Instant};

use custody_log::{FileStorage, Log, LogConfig, LogStorage};
use custody_pg::testing::TempPostgres;
use custody_pg::{PgConfig, PgStore};

const ORIGIN: &str = "bench.custody.example/log";
const ENTRY: usize = 400;

fn run(log: &Arc<Log>, tasks: usize, secs: f64) -> (f64, Vec<Duration>) {
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
    let deadline = Instant::now() + Duration::from_secs_f64(secs);
    let start = Instant::now();
    let mut lat = rt.block_on(async {
        let mut hs = Vec::new();
        for _ in 0..tasks {
            let log = log.clone();
            hs.push(tokio::spawn(async move {
                let mut lat = Vec::new();
                while Instant::now() < deadline {
                    let t = Instant::now();
                    log.submit(vec![b'x'; ENTRY]).unwrap().receipt().await.unwrap();
                    lat.push(t.elapsed());
                }
                lat
            }));
        }
        let mut all = Vec::new();
        for h in hs {
            all.extend(h.await.unwrap());
        }
        all
    });
    lat.sort_unstable();
    (lat.len() as f64 / start.elapsed().as_secs_f64(), lat)
}

fn pct(sorted: &[Duration], p: f64) -> Duration {
    sorted.get(((sorted.len() as f64 * p) as usize).min(sorted.len().saturating_sub(1))).copied().unwrap_or_default()
}

fn main() {
    let secs: f64 = std::env::var("CUSTODY_BENCH_SECS").ok().and_then(|s| s.parse().ok()).unwrap_or(5.0);
    let pg = TempPostgres::start().unwrap();
    let cfg = PgConfig::new(pg.create_database("bench").unwrap());
    let dir = tempfile::tempdir().unwrap();
    let file_dir = dir.path().join("file");
    let pg_dir = dir.path().join("pg");
    let open_pg = || -> Arc<dyn LogStorage> { Arc::new(PgStore::connect(&cfg).unwrap().log_storage().unwrap()) };
    let open_file = || -> Arc<dyn LogStorage> { Arc::new(FileStorage::open(&file_dir.join("log")).unwrap()) };
    let file = Arc::new(Log::open_with(LogConfig::new(&file_dir, ORIGIN), open_file()).unwrap());
    let post = Arc::new(Log::open_with(LogConfig::new(&pg_dir, ORIGIN), open_pg()).unwrap());

    println!(
        "durable appends ({ENTRY}-byte entries, {secs} s per case; files: fdatasync per batch; postgres: one committed INSERT per batch)"
    );
    println!("{:<30} {:<9} {:>11} {:>11} {:>11}", "case", "storage", "appends/s", "p50", "p99");
    for (appenders, outstanding) in [(1, 1), (8, 1), (64, 1), (64, 64)] {
        let label = if outstanding == 1 {
            format!("{appenders} appenders, closed loop")
        } else {
            format!("{appenders} x {outstanding} in flight")
        };
        for (name, log) in [("files", &file), ("postgres", &post)] {
            let (rate, lat) = run(log, appenders * outstanding, secs);
            println!("{label:<30} {name:<9} {rate:>11.0} {:>11.2?} {:>11.2?}", pct(&lat, 0.5), pct(&lat, 0.99));
        }
    }
    for (name, log, d, open) in [
        ("files", file, &file_dir, &open_file as &dyn Fn() -> Arc<dyn LogStorage>),
        ("postgres", post, &pg_dir, &open_pg),
    ] {
        let size = log.size();
        Arc::into_inner(log).unwrap().close().unwrap();
        let start = Instant::now();
        let reopened = Log::open_with(LogConfig::new(d, ORIGIN), open()).unwrap();
        let took = start.elapsed();
        assert_eq!(reopened.size(), size);
        println!(
            "integration ({name}): reopened {size} entries in {took:.2?}: {:.0} entries/s",
            size as f64 / took.as_secs_f64()
        );
    }
}
