//! The log's throughput and latency, printed as a table (`cargo bench -p custody-log`).
//!
//! - **Durable appends/s** with 1, 8 and 64 appenders that each wait for a receipt before the
//!   next append (closed loop, as a request handler does), and with 4096 in flight (64
//!   appenders with 64 outstanding each, as a busy server has), with the acknowledged latency
//!   p50/p99 of each.
//! - **Integration rate**: entries/s that `Log::open` replays from `entries.wal`, rebuilding
//!   the tree and checking every tile and bundle against it.
//!
//! A fixed duration per case rather than criterion's sampling: each figure needs a run long
//! enough for batches to reach their steady size, and the latencies are the point.

#![allow(missing_docs, clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]

use std::sync::Arc;
use std::time::{Duration, Instant};

use custody_log::{Log, LogConfig};

const ORIGIN: &str = "bench.custody.example/log";

/// The size of a typical access event.
const ENTRY: usize = 400;

struct Figures {
    appends: u64,
    elapsed: Duration,
    latencies: Vec<Duration>,
}

/// Runs `appenders` tasks, each keeping `outstanding` appends in flight, for `secs`.
fn run(log: &Arc<Log>, appenders: usize, outstanding: usize, secs: f64) -> Figures {
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
    let deadline = Instant::now() + Duration::from_secs_f64(secs);
    let start = Instant::now();
    let latencies = rt.block_on(async {
        let mut tasks = Vec::new();
        for _ in 0..appenders * outstanding {
            let log = log.clone();
            tasks.push(tokio::spawn(async move {
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
        for t in tasks {
            all.extend(t.await.unwrap());
        }
        all
    });
    Figures { appends: latencies.len() as u64, elapsed: start.elapsed(), latencies }
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    sorted[((sorted.len() as f64 * p) as usize).min(sorted.len() - 1)]
}

fn main() {
    // `cargo bench` passes `--bench`; a filter argument is ignored.
    let secs: f64 = std::env::var("CUSTODY_BENCH_SECS").ok().and_then(|s| s.parse().ok()).unwrap_or(5.0);
    let dir = tempfile::tempdir().unwrap();
    let log = Arc::new(Log::open(LogConfig::new(dir.path(), ORIGIN)).unwrap());
    println!("durable appends ({ENTRY}-byte entries, {secs} s per case, fdatasync per batch)");
    println!("{:<34} {:>12} {:>12} {:>12}", "case", "appends/s", "p50", "p99");
    for (appenders, outstanding) in [(1, 1), (8, 1), (64, 1), (64, 64)] {
        let mut f = run(&log, appenders, outstanding, secs);
        f.latencies.sort_unstable();
        let label = if outstanding == 1 {
            format!("{appenders} appenders, closed loop")
        } else {
            format!("{appenders} appenders x {outstanding} in flight")
        };
        println!(
            "{label:<34} {:>12.0} {:>12.2?} {:>12.2?}",
            f.appends as f64 / f.elapsed.as_secs_f64(),
            percentile(&f.latencies, 0.50),
            percentile(&f.latencies, 0.99),
        );
    }
    let size = log.size();
    drop(log);
    let start = Instant::now();
    let reopened = Log::open(LogConfig::new(dir.path(), ORIGIN)).unwrap();
    let took = start.elapsed();
    assert_eq!(reopened.size(), size);
    println!(
        "integration: reopened {size} entries (replay, rebuild and check every tile) in {took:.2?}: {:.0} entries/s",
        size as f64 / took.as_secs_f64()
    );
}
