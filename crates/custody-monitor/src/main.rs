//! `custody-monitor`: follows a custody log as an independent verifier, witnesses its
//! checkpoints, judges its entries against rules, and reports on them.

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use anyhow::Context;
use clap::{Parser, Subcommand};
use custody_monitor::alert::{Alert, AlertSink, Severity};
use custody_monitor::follow::{Discard, EXIT_RULE_ALERT, EntrySink, FollowConfig, Follower, LogFault};
use custody_monitor::memlog::{MemLog, serve};
use custody_monitor::report::{Protection, render, summarize};
use custody_monitor::rules::{Evaluator, RuleFile};
use custody_monitor::source::HttpLog;
use custody_monitor::state::StateDir;
use custody_monitor::witness::{Witness, router};
use custody_monitor::{MonitorError, history};
use custody_tlog::{CosignatureSigner, CosignatureVerifier, Ed25519Signer};

#[derive(Parser)]
#[command(
    name = "custody-monitor",
    version,
    about = "Independent verifier, witness and auditor of a custody transparency log"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Follow a log: verify every checkpoint and entry, store them in the state directory, apply
    /// rules. Alerts go to stdout as JSON lines. Exit codes with `--once`: 0 all verified, 10 bad
    /// signature or origin, 11 fork or rewritten history, 12 log shrank, 13 an entry does not hash
    /// into the tree, 14 too few witness cosignatures, 20 the log verified but rules fired,
    /// 1 the monitor could not do its work.
    Follow(FollowArgs),
    /// Run a C2SP tlog-witness: cosign checkpoints consistent with the last one cosigned.
    Witness(WitnessArgs),
    /// Generate a witness cosigning key: writes the secret key file, prints the vkey.
    Keygen {
        /// The witness's key name, e.g. `witness.example.org`.
        #[arg(long)]
        name: String,
        /// Where to write the secret key (mode 0600; refuses to overwrite).
        #[arg(long)]
        out: PathBuf,
    },
    /// Write a self-contained HTML report over the verified entries of a state directory.
    Report {
        /// The monitor's state directory.
        #[arg(long)]
        state: PathBuf,
        /// The HTML file to write.
        #[arg(long)]
        out: PathBuf,
        /// The rule file, for the schema that says which fields are protected.
        #[arg(long)]
        rules: Option<PathBuf>,
    },
    /// List every access to one subject's data, with inclusion proofs checked against the
    /// verified checkpoint. Output: one JSON document per access.
    History(HistoryArgs),
    /// Check an exported file against its export entry: the log key signed the entry (through
    /// the receipt `custody export` saves as FILE.receipt.json), it is a permitted export, and
    /// the file is exactly the bytes it names (SHA-256 and length). Exit codes: 0 the file
    /// matches, 13 it does not (or the receipt does not verify), 1 it could not be checked.
    VerifyExport {
        /// The exported file.
        file: PathBuf,
        /// The export's receipt [default: FILE.receipt.json].
        #[arg(long)]
        receipt: Option<PathBuf>,
        /// The log's verifier key (vkey), as served at `/log/key`.
        #[arg(long)]
        key: String,
    },
    /// Benchmark: verify an N-entry log from scratch over loopback HTTP, then follow a log
    /// growing at a fixed rate and measure the lag.
    Bench {
        /// Entries in the log verified from scratch.
        #[arg(long, default_value_t = 1_000_000)]
        entries: u64,
        /// Growth rate of the followed log, entries per second.
        #[arg(long, default_value_t = 10_000)]
        rate: u64,
        /// How long to follow the growing log, seconds.
        #[arg(long, default_value_t = 10)]
        seconds: u64,
        /// Entry bundles fetched at once.
        #[arg(long, default_value_t = 16)]
        concurrency: usize,
    },
}

#[derive(clap::Args)]
struct FollowArgs {
    /// The log's base URL (e.g. `http://127.0.0.1:8080`) or its `/log` prefix.
    #[arg(long, env = "CUSTODY_MONITOR_LOG_URL")]
    log: String,
    /// The log's verifier key (`custody`'s `/log/key`, obtained out of band).
    #[arg(long, env = "CUSTODY_MONITOR_LOG_KEY")]
    key: String,
    /// The monitor's state directory.
    #[arg(long, env = "CUSTODY_MONITOR_STATE")]
    state: PathBuf,
    /// Check once and exit with a code saying what was found.
    #[arg(long)]
    once: bool,
    /// Pause between checks, milliseconds.
    #[arg(long, default_value_t = 1000)]
    interval_ms: u64,
    /// A witness cosignature vkey; repeat for each witness.
    #[arg(long = "witness")]
    witnesses: Vec<String>,
    /// Cosignatures required from distinct `--witness` keys on every checkpoint.
    #[arg(long, default_value_t = 0)]
    quorum: usize,
    /// A TOML rule file (see the `rules` module docs).
    #[arg(long)]
    rules: Option<PathBuf>,
    /// POST each alert as JSON to this URL.
    #[arg(long, env = "CUSTODY_MONITOR_WEBHOOK")]
    webhook: Option<String>,
    /// Entry bundles fetched at once.
    #[arg(long, default_value_t = 16)]
    concurrency: usize,
}

#[derive(clap::Args)]
struct WitnessArgs {
    /// Address to listen on.
    #[arg(long, default_value = "127.0.0.1:7380")]
    listen: String,
    /// The witness's secret key file (from `custody-monitor keygen`).
    #[arg(long)]
    key: PathBuf,
    /// The vkey of a log to witness; repeat for more logs.
    #[arg(long = "log-key", required = true)]
    log_keys: Vec<String>,
    /// Where the latest cosigned checkpoint of each log is kept.
    #[arg(long)]
    state: PathBuf,
}

#[derive(clap::Args)]
struct HistoryArgs {
    /// The monitor's state directory (run `follow` first).
    #[arg(long)]
    state: PathBuf,
    /// The log's base URL, for inclusion proofs.
    #[arg(long)]
    log: String,
    /// The subject's id; needs `--pseudonym-key`.
    #[arg(long, requires = "pseudonym_key")]
    subject: Option<String>,
    /// custody's pseudonym key, 64 hex digits.
    #[arg(long)]
    pseudonym_key: Option<String>,
    /// The subject's pseudonym, instead of `--subject` and `--pseudonym-key`.
    #[arg(long, conflicts_with = "subject")]
    pseudonym: Option<String>,
}

fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("CUSTODY_MONITOR_LOG")
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .init();
    let cli = Cli::parse();
    let runtime = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(r) => r,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(cli.command)) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

async fn run(command: Command) -> anyhow::Result<ExitCode> {
    match command {
        Command::Follow(args) => follow(args).await,
        Command::Witness(args) => witness(args).await,
        Command::Keygen { name, out } => keygen(&name, &out),
        Command::Report { state, out, rules } => report(&state, &out, rules.as_deref()),
        Command::History(args) => history_cmd(args).await,
        Command::VerifyExport { file, receipt, key } => verify_export(&file, receipt, &key),
        Command::Bench { entries, rate, seconds, concurrency } => bench(entries, rate, seconds, concurrency).await,
    }
}

fn verify_export(file: &std::path::Path, receipt: Option<PathBuf>, key: &str) -> anyhow::Result<ExitCode> {
    use anyhow::Context as _;
    let receipt = receipt.unwrap_or_else(|| {
        let mut p = file.as_os_str().to_owned();
        p.push(".receipt.json");
        PathBuf::from(p)
    });
    let text =
        std::fs::read_to_string(&receipt).with_context(|| format!("reading the receipt `{}`", receipt.display()))?;
    let f = std::fs::File::open(file).with_context(|| format!("opening `{}`", file.display()))?;
    match custody_verify::verify_export(std::io::BufReader::new(f), &text, key.trim()) {
        Ok(c) => {
            println!(
                "{}",
                serde_json::json!({"verified": true, "index": c.index, "destination": c.destination,
                    "rows": c.rows, "bytes": c.bytes, "sha256": c.sha256})
            );
            Ok(ExitCode::SUCCESS)
        }
        Err(custody_verify::VerifyError::Io(e)) => anyhow::bail!("reading `{}`: {e}", file.display()),
        Err(e) => {
            println!("{}", serde_json::json!({"verified": false, "problem": e.to_string()}));
            Ok(ExitCode::from(13))
        }
    }
}

/// Collects a step's entries for the rules.
struct Collect(Vec<(u64, Vec<u8>)>);

impl EntrySink for Collect {
    fn entry(&mut self, index: u64, entry: &[u8]) -> Result<(), MonitorError> {
        self.0.push((index, entry.to_vec()));
        Ok(())
    }
}

async fn follow(args: FollowArgs) -> anyhow::Result<ExitCode> {
    let state = StateDir::open(&args.state)?;
    let sink = AlertSink::new(Some(state.clone()), args.webhook.clone());
    let witnesses = args
        .witnesses
        .iter()
        .map(|k| CosignatureVerifier::from_verifier_key(k).with_context(|| format!("witness key `{k}`")))
        .collect::<anyhow::Result<Vec<_>>>()?;
    anyhow::ensure!(
        args.quorum <= witnesses.len(),
        "--quorum {} needs at least that many --witness keys (got {})",
        args.quorum,
        witnesses.len()
    );
    let config = FollowConfig { witnesses, quorum: args.quorum, concurrency: args.concurrency };
    let mut follower = Follower::new(HttpLog::new(&args.log)?, &args.key, config, Some(state.clone()))?;
    let mut evaluator = match &args.rules {
        Some(path) => {
            let (rules, classes) = RuleFile::load(path)?;
            let mut ev = Evaluator::new(rules, classes);
            if let Some(v) = follower.verified() {
                // Rebuild the windows and replay history from what was verified before; those
                // alerts were raised then.
                for e in state.entries(v.checkpoint.size)? {
                    ev.observe(e.index, e.entry.as_bytes());
                }
            }
            Some(ev)
        }
        None => None,
    };
    let mut last_fault: Option<LogFault> = None;
    loop {
        let mut collected = Collect(Vec::new());
        let outcome = match evaluator {
            Some(_) => follower.step(&mut collected).await,
            None => follower.step(&mut Discard).await,
        };
        match outcome {
            Err(e) if args.once => return Err(e.into()),
            Err(e) => tracing::warn!(error = %e, "check failed; retrying"),
            Ok(Err(fault)) => {
                if last_fault.as_ref() != Some(&fault) {
                    let details = serde_json::to_value(&fault).unwrap_or_default();
                    sink.emit(&Alert::new(Severity::Critical, fault.name(), fault.to_string()).with_details(details))
                        .await;
                }
                if args.once {
                    return Ok(ExitCode::from(fault.exit_code()));
                }
                last_fault = Some(fault);
            }
            Ok(Ok(step)) => {
                last_fault = None;
                if step.checkpoint.size > step.old_size {
                    tracing::info!(from = step.old_size, to = step.checkpoint.size, "verified");
                }
                let mut fired = 0usize;
                if let Some(ev) = evaluator.as_mut() {
                    for (index, entry) in &collected.0 {
                        for alert in ev.observe(*index, entry) {
                            fired += 1;
                            sink.emit(&alert).await;
                        }
                    }
                }
                if args.once {
                    return Ok(if fired > 0 { ExitCode::from(EXIT_RULE_ALERT) } else { ExitCode::SUCCESS });
                }
            }
        }
        tokio::time::sleep(Duration::from_millis(args.interval_ms)).await;
    }
}

async fn witness(args: WitnessArgs) -> anyhow::Result<ExitCode> {
    let skey = zeroize::Zeroizing::new(
        std::fs::read_to_string(&args.key).with_context(|| format!("reading `{}`", args.key.display()))?,
    );
    let signer = CosignatureSigner::from_signer_key(skey.trim()).context("witness key")?;
    let w = Arc::new(Witness::new(signer, &args.log_keys, args.state)?);
    let listener =
        tokio::net::TcpListener::bind(&args.listen).await.with_context(|| format!("listening on {}", args.listen))?;
    tracing::info!(addr = %listener.local_addr()?, vkey = %w.verifier_key(), "witness listening");
    axum::serve(listener, router(w)).with_graceful_shutdown(shutdown()).await?;
    Ok(ExitCode::SUCCESS)
}

async fn shutdown() {
    let _ = tokio::signal::ctrl_c().await;
}

fn keygen(name: &str, out: &std::path::Path) -> anyhow::Result<ExitCode> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let signer = CosignatureSigner::generate(name, &mut rand::rngs::OsRng).context("key name")?;
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(out)
        .with_context(|| format!("creating `{}`", out.display()))?;
    f.write_all(format!("{}\n", signer.signer_key().as_str()).as_bytes())?;
    f.sync_all()?;
    println!("{}", signer.verifier_key());
    Ok(ExitCode::SUCCESS)
}

fn report(state: &std::path::Path, out: &std::path::Path, rules: Option<&std::path::Path>) -> anyhow::Result<ExitCode> {
    let state = StateDir::open(state)?;
    let verified = state.load()?.context("the state directory has no verified checkpoint; run `follow` first")?;
    let protection = match rules {
        Some(p) => {
            let (rules, classes) = RuleFile::load(p)?;
            Protection { classes, protected: rules.protected_classes }
        }
        None => Protection::default(),
    };
    let entries = state.entries(verified.checkpoint.size)?;
    let summary = summarize(&entries, &protection);
    let html = render(&summary, &verified, &state.alerts()?, rules.is_some());
    std::fs::write(out, html).with_context(|| format!("writing `{}`", out.display()))?;
    eprintln!("wrote {} ({} entries, checkpoint size {})", out.display(), summary.entries, verified.checkpoint.size);
    Ok(ExitCode::SUCCESS)
}

async fn history_cmd(args: HistoryArgs) -> anyhow::Result<ExitCode> {
    let pseudonym = match (&args.subject, &args.pseudonym_key, &args.pseudonym) {
        (Some(subject), Some(key), None) => {
            let bytes: [u8; 32] = hex::decode(key.trim())
                .ok()
                .and_then(|b| b.try_into().ok())
                .context("--pseudonym-key must be 64 hex digits")?;
            history::subject_pseudonym(&bytes, subject)
        }
        (None, _, Some(p)) => p.clone(),
        _ => anyhow::bail!("give --subject with --pseudonym-key, or --pseudonym"),
    };
    let state = StateDir::open(&args.state)?;
    let verified = state.load()?.context("the state directory has no verified checkpoint; run `follow` first")?;
    let log = HttpLog::new(&args.log)?;
    let accesses = history::history(&state, &log, &verified, &pseudonym).await?;
    for a in &accesses {
        println!("{}", serde_json::to_string(a)?);
    }
    eprintln!(
        "{} accesses to subject {pseudonym}, each proved included in the verified tree of size {}",
        accesses.len(),
        verified.checkpoint.size
    );
    Ok(ExitCode::SUCCESS)
}

fn bench_entry(i: u64) -> Vec<u8> {
    format!(
        r#"{{"v":1,"kind":"access","time":"2026-01-01T00:00:00Z","principal":"workload-{p}","principal_kind":"workload","action":"read","collection":"profiles","records":["{i:032x}"],"subjects":["{i:032x}"],"released":["display_name","email"],"withheld":[],"purpose":"support","justification":"TICKET-{i}","location":"EU","policy_set":"0000000000000000000000000000000000000000000000000000000000000000","decision":"permit"}}"#,
        p = i % 97
    )
    .into_bytes()
}

async fn bench(entries: u64, rate: u64, seconds: u64, concurrency: usize) -> anyhow::Result<ExitCode> {
    let signer = Ed25519Signer::from_seed("bench.custody.test/log", &[7; 32])?;
    let mut log = MemLog::new(signer.clone());
    let t = Instant::now();
    for i in 0..entries {
        log.append(bench_entry(i))?;
    }
    log.publish(&[])?;
    let vkey = log.verifier_key();
    let bytes: usize = log.entries().iter().map(Vec::len).sum();
    println!("built {entries} entries ({:.0} MB) in {:.1}s", bytes as f64 / 1e6, t.elapsed().as_secs_f64());
    let shared = Arc::new(RwLock::new(log));
    let (url, _) = serve(shared.clone()).await?;
    let config = FollowConfig { concurrency, ..FollowConfig::default() };
    let mut follower = Follower::new(HttpLog::new(&url)?, &vkey, config.clone(), None)?;
    let t = Instant::now();
    match follower.step(&mut Discard).await? {
        Ok(step) => {
            let secs = t.elapsed().as_secs_f64();
            println!(
                "verified {} entries from scratch in {secs:.2}s: {:.0} entries/s",
                step.checkpoint.size,
                step.checkpoint.size as f64 / secs
            );
        }
        Err(fault) => anyhow::bail!("bench log did not verify: {fault}"),
    }
    drop(shared);

    // Follow a log growing at `rate` entries/s, publishing a checkpoint every 100 ms.
    let growing = Arc::new(RwLock::new(MemLog::new(signer)));
    let (url, _) = serve(growing.clone()).await?;
    let published: Arc<RwLock<Vec<(u64, Instant)>>> = Arc::new(RwLock::new(Vec::new()));
    let writer = {
        let (growing, published) = (growing.clone(), published.clone());
        tokio::spawn(async move {
            let start = Instant::now();
            let mut next = 0u64;
            let mut tick = tokio::time::interval(Duration::from_millis(100));
            while start.elapsed() < Duration::from_secs(seconds) {
                tick.tick().await;
                let due = (start.elapsed().as_secs_f64() * rate as f64) as u64;
                let Ok(mut l) = growing.write() else { return };
                while next < due {
                    if l.append(bench_entry(next)).is_err() {
                        return;
                    }
                    next += 1;
                }
                if l.publish(&[]).is_ok()
                    && let Ok(mut p) = published.write()
                {
                    p.push((l.size(), Instant::now()));
                }
            }
        })
    };
    let mut follower = Follower::new(HttpLog::new(&url)?, &vkey, config, None)?;
    let mut lags = Vec::new();
    while !writer.is_finished() {
        if let Ok(step) = follower.step(&mut Discard).await? {
            let now = Instant::now();
            let at =
                published.read().ok().and_then(|p| p.iter().find(|(s, _)| *s == step.checkpoint.size).map(|(_, t)| *t));
            if let Some(at) = at
                && step.checkpoint.size > step.old_size
            {
                lags.push(now.duration_since(at).as_secs_f64());
            }
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let size = follower.verified().map_or(0, |v| v.checkpoint.size);
    lags.sort_by(f64::total_cmp);
    let pct = |p: f64| lags.get(((lags.len() as f64 - 1.0) * p) as usize).copied().unwrap_or(0.0);
    println!(
        "followed a log growing at {rate} entries/s for {seconds}s: {size} entries verified, lag after each checkpoint p50 {:.3}s p99 {:.3}s max {:.3}s ({} steps)",
        pct(0.5),
        pct(0.99),
        lags.last().copied().unwrap_or(0.0),
        lags.len()
    );
    Ok(ExitCode::SUCCESS)
}
