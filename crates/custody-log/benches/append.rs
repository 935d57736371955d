//! Durable appends per second at 1, 8 and 64 concurrent appenders, each submitting an entry
//! and waiting for its receipt before the next.

#![allow(missing_docs, clippy::unwrap_used, clippy::expect_used)]

use std::sync::Arc;
use std::time::{Duration, Instant};

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use custody_log::{Log, LogConfig};

fn append(c: &mut Criterion) {
    let dir = tempfile::tempdir().unwrap();
    let log = Arc::new(Log::open(LogConfig::new(dir.path(), "bench.custody.example/log")).unwrap());
    let entry = vec![b'x'; 400];
    let mut group = c.benchmark_group("durable_appends");
    group.measurement_time(Duration::from_secs(5));
    for appenders in [1usize, 8, 64] {
        // Each iteration is one append by each appender.
        group.throughput(Throughput::Elements(appenders as u64));
        group.bench_function(format!("{appenders}_appenders"), |b| {
            b.iter_custom(|iters| {
                let start = Instant::now();
                std::thread::scope(|s| {
                    for _ in 0..appenders {
                        let (log, entry) = (&log, &entry);
                        s.spawn(move || {
                            for _ in 0..iters {
                                log.submit(entry.clone()).unwrap().wait().unwrap();
                            }
                        });
                    }
                });
                start.elapsed()
            });
        });
    }
    group.finish();
}

criterion_group!(benches, append);
criterion_main!(benches);
