//! `clips`: the reference short-video backend, stored only in custody.
//!
//! `clips serve` runs the HTTP JSON API; `clips seed` writes synthetic users, videos and
//! activity. Both talk to custody as the clips workload principal (role `clips-backend`).

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Instant;

use anyhow::Context;
use clap::{Parser, Subcommand};

use clips::Store;
use clips::seed::{self, SeedPlan};
use custody_client::Client;

/// mimalloc as the process allocator: faster than glibc's for the many small, cross-thread
/// allocations of request handling (see the workspace Cargo.toml).
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// clips: a short-video social backend whose only storage is custody.
#[derive(Debug, Parser)]
#[command(name = "clips", version, max_term_width = 100)]
#[command(after_help = "custody must run with clips' schema and policies (crates/clips/deploy) and a workload \
principal with role `clips-backend`; `custody demo` sets all of this up.")]
struct Cli {
    /// custody's API
    #[arg(long, env = "CLIPS_CUSTODY", default_value = "http://127.0.0.1:8750", global = true)]
    custody: String,
    /// The clips workload's custody token (`cst1_...`); under `custody run`, CUSTODY_TOKEN
    #[arg(long, env = "CLIPS_CUSTODY_TOKEN", hide_env_values = true, global = true)]
    token: Option<String>,
    /// Log filter
    #[arg(long, env = "CLIPS_LOG", default_value = "info", global = true)]
    log: String,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Serve the HTTP JSON API
    Serve {
        /// Listen address
        #[arg(long, env = "CLIPS_LISTEN", default_value = "127.0.0.1:8760")]
        listen: SocketAddr,
    },
    /// Write synthetic users (and, unless --users-only, videos and activity) through custody
    Seed {
        /// Users to create (`u0` ..)
        #[arg(long, default_value_t = 10_000)]
        users: u64,
        /// Only user profiles, no videos or activity
        #[arg(long)]
        users_only: bool,
        /// Batch requests in flight
        #[arg(long, default_value_t = 8)]
        concurrency: usize,
    },
}

fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    let filter = tracing_subscriber::EnvFilter::try_new(&cli.log).unwrap_or_else(|_| "info".into());
    let _ = tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr).try_init();
    match run(cli) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("clips: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

fn run(cli: Cli) -> anyhow::Result<()> {
    // `custody run` hands an admitted workload its credential as CUSTODY_TOKEN.
    let token = cli
        .token
        .or_else(|| std::env::var("CUSTODY_TOKEN").ok())
        .context("pass the clips workload's custody token with --token, CLIPS_CUSTODY_TOKEN or CUSTODY_TOKEN")?;
    let client = Client::new(&cli.custody, token)?;
    let rt = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
    rt.block_on(async {
        match cli.command {
            Command::Serve { listen } => {
                let listener = tokio::net::TcpListener::bind(listen)
                    .await
                    .with_context(|| format!("cannot listen on {listen}"))?;
                eprintln!("clips serving http://{} (storage: custody at {})", listener.local_addr()?, cli.custody);
                clips::api::serve(listener, Store::new(client), async {
                    let _ = tokio::signal::ctrl_c().await;
                })
                .await?;
                Ok(())
            }
            Command::Seed { users, users_only, concurrency } => {
                let mut plan = SeedPlan::new(users);
                plan.activity = !users_only;
                plan.concurrency = concurrency;
                let start = Instant::now();
                let progress: seed::Progress = Arc::new(|phase, done, total| {
                    if done == total || done % 100_000 == 0 {
                        eprintln!("  {} {done}/{total}", phase.name());
                    }
                });
                let report = seed::seed(&client, &plan, progress).await?;
                for p in &report.phases {
                    let secs = p.elapsed.as_secs_f64().max(1e-9);
                    println!(
                        "{:<13} {:>10} records in {:>8.2} s  ({:>9.0} records/s)",
                        p.phase.name(),
                        p.records,
                        secs,
                        p.records as f64 / secs
                    );
                }
                println!("total         {:>10} records in {:>8.2} s", report.records(), start.elapsed().as_secs_f64());
                Ok(())
            }
        }
    })
}
