//! `custody demo`: the whole model end to end, as a story.
//!
//! It starts custody on embedded storage in a fresh temporary data dir with clips' schema and
//! policies, registers four principals through the operator socket (the clips workload, a
//! support engineer in the US, an engineer in Germany, an end user), starts clips, seeds
//! synthetic users, videos and activity through custody, then plays [`story`] step by step,
//! with an independent monitor (the `custody-monitor` library, reading the log over HTTP only)
//! judging what the log records. With `--exit` it exits after
//! the story (non-zero if a step's outcome was not the expected one); otherwise it keeps
//! serving until Ctrl-C.

use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use indicatif::{ProgressBar, ProgressStyle};
use serde_json::{Value, json};

use clips::seed::{self, Phase, SeedPlan};
use custody_client::{Client, Reason, Receipt};
use custody_monitor::alert::Alert;
use custody_monitor::follow::{EntrySink, FollowConfig, Follower};
use custody_monitor::report::{Protection, render, summarize};
use custody_monitor::rules::{Evaluator, RuleFile};
use custody_monitor::source::HttpLog;
use custody_monitor::state::StateDir;
use custody_server::{ServerConfig, ServerState};

use crate::admin_client;
use crate::config::Settings;
use crate::exit::{Exit, fail};

/// Most users `--users` accepts.
const MAX_USERS: u64 = 10_000_000;
/// Fewest: the bulk-read step reads 150 distinct users.
const MIN_USERS: u64 = 200;

#[derive(Debug, clap::Args)]
pub(crate) struct DemoArgs {
    /// Synthetic users to seed (with videos, follows, likes, comments and watch events)
    #[arg(long, default_value_t = 10_000)]
    users: u64,
    /// Exit after the story: 0 if every available step had the expected outcome, 1 otherwise
    #[arg(long)]
    exit: bool,
    /// Where custody's API listens (port 0: any free port)
    #[arg(long, default_value = "127.0.0.1:0")]
    custody_listen: SocketAddr,
    /// Where clips' API listens (port 0: any free port)
    #[arg(long, default_value = "127.0.0.1:0")]
    clips_listen: SocketAddr,
}

/// What a step needs: the running servers and the principals' clients.
pub(crate) struct Demo {
    custody: String,
    clips: String,
    http: reqwest::Client,
    engineer: Client,
    abroad: Client,
    vkey: String,
    first_checkpoint: String,
    receipts: std::sync::Mutex<Vec<Receipt>>,
    /// The clips workload's own client (to see what clips sees after an erasure).
    app: Client,
    /// u7, an end user, as a subject principal.
    subject: Client,
    /// The independent monitor, following the log from its own state directory.
    monitor: tokio::sync::Mutex<DemoMonitor>,
    /// Where the monitor's HTML report is written.
    report: std::path::PathBuf,
}

/// The monitor's part: a follower with its state directory, the published rules, and the
/// alerts raised so far. It reads the log only over HTTP, as an outside auditor would.
pub(crate) struct DemoMonitor {
    follower: Follower,
    evaluator: Evaluator,
    protection: Protection,
    state: StateDir,
    alerts: Vec<Alert>,
}

/// Collects a follower step's entries for the rules.
struct Collect(Vec<(u64, Vec<u8>)>);

impl EntrySink for Collect {
    fn entry(&mut self, index: u64, entry: &[u8]) -> Result<(), custody_monitor::MonitorError> {
        self.0.push((index, entry.to_vec()));
        Ok(())
    }
}

/// The rules the demo's monitor publishes: bulk reads and protected data leaving the
/// jurisdiction, with clips' backend exempt from the bulk rule (processing users' data at scale
/// is its published job).
const MONITOR_RULES: &str = r#"jurisdiction = "US"
schema = "clips-deploy/schema.toml"
[outside_jurisdiction]
[bulk_read]
max_records = 100
window_secs = 3600
exempt = ["svc:clips"]
"#;

impl DemoMonitor {
    /// A monitor of the log at `custody` with key `vkey`, keeping its state under `dir`.
    fn new(dir: &std::path::Path, custody: &str, vkey: &str) -> anyhow::Result<Self> {
        let rules_path = dir.join("monitor-rules.toml");
        std::fs::write(&rules_path, MONITOR_RULES)?;
        let (rules, classes) = RuleFile::load(&rules_path)?;
        let protection = Protection { classes: classes.clone(), protected: rules.protected_classes.clone() };
        let state = StateDir::open(dir.join("monitor"))?;
        let config = FollowConfig { witnesses: Vec::new(), quorum: 0, concurrency: 8 };
        let follower = Follower::new(HttpLog::new(custody)?, vkey, config, Some(state.clone()))?;
        Ok(Self { follower, evaluator: Evaluator::new(rules, classes), protection, state, alerts: Vec::new() })
    }

    /// Follows the log until a verified checkpoint covers entry `index`, judging every new
    /// entry by the rules. Returns the verified size and the alerts this call raised.
    async fn catch_up(&mut self, index: u64) -> Result<(u64, Vec<Alert>), String> {
        let deadline = Instant::now() + Duration::from_secs(60);
        let mut raised = Vec::new();
        loop {
            let mut collected = Collect(Vec::new());
            let step = match self.follower.step(&mut collected).await.map_err(|e| e.to_string())? {
                Ok(step) => step,
                Err(fault) => return Err(format!("the monitor found the log at fault: {fault}")),
            };
            for (i, entry) in &collected.0 {
                for alert in self.evaluator.observe(*i, entry) {
                    self.state.append_alert(&alert).map_err(|e| e.to_string())?;
                    raised.push(alert);
                }
            }
            if step.checkpoint.size > index {
                self.alerts.extend(raised.iter().cloned());
                return Ok((step.checkpoint.size, raised));
            }
            if Instant::now() > deadline {
                return Err(format!("no checkpoint covered entry {index} within 60 s"));
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

/// A step's future: `Ok(outcome)` when the outcome is the expected one, `Err(what differed)`.
type StepFuture<'a> = Pin<Box<dyn Future<Output = Result<String, String>> + Send + 'a>>;

/// How a step is played: it runs against the live servers and says what happened.
pub(crate) type Play = for<'a> fn(&'a Demo) -> StepFuture<'a>;

/// One step of the story.
pub(crate) struct Step {
    /// What happens, in a newcomer's words.
    pub(crate) title: &'static str,
    /// How it is played.
    pub(crate) play: Play,
}

/// The story, in order. A step whose part has not landed would be listed as such, never faked.
pub(crate) fn story() -> Vec<Step> {
    vec![
        Step { title: "clips serves a user their For You feed", play: step_feed },
        Step {
            title: "a user posts a video; its bytes go into custody as encrypted, content-addressed chunks",
            play: step_video,
        },
        Step {
            title: "a US support engineer, stating a justification, reads one user's protected profile",
            play: step_engineer_us,
        },
        Step {
            title: "an engineer located abroad (DE) gets only the public fields, and the denial is logged",
            play: step_engineer_abroad,
        },
        Step {
            title: "alice reads 150 users' protected profiles in bulk; the independent monitor raises an alert",
            play: step_bulk_read,
        },
        Step {
            title: "a user exports their data with its access history and proofs, then erases it",
            play: step_subject_rights,
        },
        Step {
            title: "the log verifies: signed checkpoint, receipts included, append-only (custody-verify)",
            play: step_verify_log,
        },
        Step { title: "the monitor verifies the whole log and writes its HTML report", play: step_monitor_report },
    ]
}

fn step_feed(d: &Demo) -> StepFuture<'_> {
    Box::pin(async move {
        let feed: Value = get_json(&d.http, &format!("{}/v1/users/u1/feed?limit=5", d.clips)).await?;
        let items = feed.get("items").and_then(Value::as_array).cloned().unwrap_or_default();
        if items.is_empty() {
            return Err(format!("u1's feed is empty: {feed}"));
        }
        if feed.get("personalised") != Some(&Value::Bool(true)) {
            return Err(format!("u1's feed is not personalised: {}", feed.get("reason").unwrap_or(&Value::Null)));
        }
        let mut lines = vec![format!("u1's feed has {} videos, ranked with their watch history:", items.len())];
        for it in items.iter().take(3) {
            let v = it.get("video").unwrap_or(&Value::Null);
            let why: Vec<&str> = it
                .get("why")
                .and_then(Value::as_array)
                .map(|a| a.iter().filter_map(Value::as_str).collect())
                .unwrap_or_default();
            lines.push(format!(
                "  {} \"{}\" by {}: {} likes, score {:.1} ({})",
                v.get("id").and_then(Value::as_str).unwrap_or("?"),
                v.get("caption").and_then(Value::as_str).unwrap_or(""),
                v.get("creator").and_then(Value::as_str).unwrap_or("?"),
                v.get("likes").and_then(Value::as_i64).unwrap_or_default(),
                it.get("score").and_then(Value::as_f64).unwrap_or_default(),
                why.join(", ")
            ));
        }
        Ok(lines.join("\n"))
    })
}

fn step_video(d: &Demo) -> StepFuture<'_> {
    Box::pin(async move {
        use base64::Engine;
        let bytes: Vec<u8> = (0..100_000u32).map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8).collect();
        let body = json!({ "creator": "u2", "caption": "my first clip", "tags": "demo", "duration_ms": 9000,
            "content_base64": base64::engine::general_purpose::STANDARD.encode(&bytes) });
        let resp = d.http.post(format!("{}/v1/videos", d.clips)).json(&body).send().await.map_err(|e| e.to_string())?;
        if resp.status() != 201 {
            return Err(format!("posting answered {}", resp.status()));
        }
        let v: Value = resp.json().await.map_err(|e| e.to_string())?;
        let id = v.get("id").and_then(Value::as_str).unwrap_or_default().to_string();
        let chunks = v.get("chunks").and_then(Value::as_array).map(Vec::len).unwrap_or_default();
        let back = d
            .http
            .get(format!("{}/v1/videos/{id}/content", d.clips))
            .send()
            .await
            .and_then(|r| r.error_for_status())
            .map_err(|e| e.to_string())?
            .bytes()
            .await
            .map_err(|e| e.to_string())?;
        if back.as_ref() != bytes.as_slice() {
            return Err("the bytes read back differ from those posted".into());
        }
        Ok(format!(
            "u2 posted {id} ({} bytes) as {chunks} chunks; read back through custody, every chunk checked against its SHA-256 address",
            bytes.len()
        ))
    })
}

fn step_engineer_us(d: &Demo) -> StepFuture<'_> {
    Box::pin(async move {
        let r = d.engineer.get("users", "u1").await.map_err(|e| e.to_string())?;
        let email = r.record.fields.get("email").and_then(Value::as_str).ok_or("no email was released")?.to_string();
        if !r.record.withheld.is_empty() {
            return Err(format!("fields were withheld: {:?}", r.record.withheld));
        }
        let (entry, _) = custody_client::verify_receipt(&r.receipt, &d.vkey).map_err(|e| e.to_string())?;
        let logged: Value = serde_json::from_str(&entry).map_err(|e| e.to_string())?;
        d.receipts.lock().map_err(|_| "lock")?.push(r.receipt.clone());
        Ok(format!(
            "alice (engineer, US) with purpose `support` and justification `TICKET-4711` read u1: email {email}, \
             all {} fields released\n  logged as entry #{} (decision {}, justification {}), receipt verified",
            r.record.fields.len(),
            r.receipt.index,
            logged.get("decision").unwrap_or(&Value::Null),
            logged.get("justification").unwrap_or(&Value::Null)
        ))
    })
}

fn step_engineer_abroad(d: &Demo) -> StepFuture<'_> {
    Box::pin(async move {
        let r = d.abroad.get("users", "u1").await.map_err(|e| e.to_string())?;
        if r.record.fields.contains_key("email") {
            return Err("a protected field was released abroad".into());
        }
        let w = r.record.withheld.iter().find(|w| w.field == "email").ok_or("email is not listed as withheld")?;
        if w.reason != "forbidden-by:no-protected-outside-jurisdiction" {
            return Err(format!("email withheld for `{}`", w.reason));
        }
        let (entry, _) = custody_client::verify_receipt(&r.receipt, &d.vkey).map_err(|e| e.to_string())?;
        let logged: Value = serde_json::from_str(&entry).map_err(|e| e.to_string())?;
        if logged.get("decision").and_then(Value::as_str) != Some("partial") {
            return Err(format!("the logged decision is {}", logged.get("decision").unwrap_or(&Value::Null)));
        }
        d.receipts.lock().map_err(|_| "lock")?.push(r.receipt.clone());
        let public: Vec<&str> = r.record.fields.keys().map(String::as_str).collect();
        let withheld: Vec<&str> = r.record.withheld.iter().map(|w| w.field.as_str()).collect();
        Ok(format!(
            "dieter (engineer, DE) read u1: released {}; withheld {} ({})\n  logged as entry #{} (decision \"partial\", \
             location \"DE\"), receipt verified",
            public.join(", "),
            withheld.join(", "),
            w.reason,
            r.receipt.index
        ))
    })
}

fn step_bulk_read(d: &Demo) -> StepFuture<'_> {
    Box::pin(async move {
        let mut last = 0;
        let mut records = 0;
        for chunk in 0..2u64 {
            let ids: Vec<String> = (1..=75).map(|i| format!("u{}", chunk * 75 + i)).collect();
            let refs: Vec<&str> = ids.iter().map(String::as_str).collect();
            let r = d.engineer.batch_get("users", &refs).await.map_err(|e| e.to_string())?;
            records += r.records.len();
            last = last.max(r.receipt.index);
            d.receipts.lock().map_err(|_| "lock")?.push(r.receipt.clone());
        }
        let mut m = d.monitor.lock().await;
        let (size, raised) = m.catch_up(last).await?;
        let bulk: Vec<&Alert> = raised.iter().filter(|a| a.alert == "bulk-read").collect();
        let [alert] = bulk.as_slice() else {
            return Err(format!("expected one bulk-read alert, the monitor raised {:?}", names(&raised)));
        };
        if alert.details.get("principal").and_then(Value::as_str) != Some("alice") {
            return Err(format!("the bulk-read alert names {}", alert.details));
        }
        Ok(format!(
            "alice read {records} users' protected profiles in two batches (each allowed and logged);\n  the monitor, \
             following the log over HTTP from its own state dir, verified {size} entries and raised:\n  [{:?}] {}: {}",
            alert.severity, alert.alert, alert.message
        ))
    })
}

fn names(alerts: &[Alert]) -> Vec<&str> {
    alerts.iter().map(|a| a.alert.as_str()).collect()
}

fn step_subject_rights(d: &Demo) -> StepFuture<'_> {
    Box::pin(async move {
        let export = d.subject.export_subject("u7").await.map_err(|e| e.to_string())?;
        let log = export.log.as_ref().ok_or("the export has no log part")?;
        if export.records.is_empty() {
            return Err("the export has no records".into());
        }
        let checkpoint = &log.checkpoint;
        let mut proved = 0;
        for e in &log.entries {
            custody_verify::verify_inclusion(checkpoint, &d.vkey, e.entry.as_bytes(), &e.inclusion.to_string())
                .map_err(|err| format!("entry #{}: {err}", e.index))?;
            proved += 1;
        }
        let erased = d.subject.erase_subject("u7").await.map_err(|e| e.to_string())?;
        let after = d.app.get("users", "u7").await;
        let status = match &after {
            Err(e) => e.problem().map(|p| p.status).unwrap_or_default(),
            Ok(_) => return Err("u7's profile is still readable after the erasure".into()),
        };
        if status != 410 {
            return Err(format!("reading u7 after the erasure answered {status}, not 410"));
        }
        let (entry, _) = custody_client::verify_receipt(&erased.receipt, &d.vkey).map_err(|e| e.to_string())?;
        d.receipts.lock().map_err(|_| "lock")?.push(erased.receipt.clone());
        let logged: Value = serde_json::from_str(&entry).map_err(|e| e.to_string())?;
        Ok(format!(
            "u7 exported {} records and {} log entries about them (found by pseudonym {}), each proved \
             included in the signed checkpoint of {} entries\n  u7 erased their data: key v{} destroyed, {} \
             records tombstoned, receipt #{} verified (log entry kind {}, request {})\n  clips reading u7 now gets 410 erased",
            export.records.len(),
            proved,
            &export.pseudonym,
            log.size,
            erased.destroyed_key.unwrap_or_default(),
            erased.tombstoned,
            erased.receipt.index,
            logged.get("kind").unwrap_or(&Value::Null),
            logged.get("request").unwrap_or(&Value::Null),
        ))
    })
}

fn step_monitor_report(d: &Demo) -> StepFuture<'_> {
    Box::pin(async move {
        let last = d.receipts.lock().map_err(|_| "lock")?.iter().map(|r| r.index).max().unwrap_or_default();
        let mut m = d.monitor.lock().await;
        let (size, _) = m.catch_up(last).await?;
        let verified = m.state.load().map_err(|e| e.to_string())?.ok_or("the monitor saved no checkpoint")?;
        let entries = m.state.entries(verified.checkpoint.size).map_err(|e| e.to_string())?;
        let summary = summarize(&entries, &m.protection);
        let html = render(&summary, &verified, &m.alerts, true);
        std::fs::write(&d.report, &html).map_err(|e| format!("{}: {e}", d.report.display()))?;
        if !html.contains("bulk-read") {
            return Err("the report does not show the bulk-read alert".into());
        }
        Ok(format!(
            "the monitor verified all {size} entries (every tile against the signed root, each checkpoint \
             consistent with the last)\n  {} alert(s) in total: {}\n  report written to {}",
            m.alerts.len(),
            names(&m.alerts).join(", "),
            d.report.display()
        ))
    })
}

fn step_verify_log(d: &Demo) -> StepFuture<'_> {
    Box::pin(async move {
        let receipts = d.receipts.lock().map_err(|_| "lock")?.clone();
        let last = receipts.iter().map(|r| r.index).max().unwrap_or_default();
        let deadline = Instant::now() + Duration::from_secs(20);
        let (checkpoint, cp) = loop {
            let text = get_text(&d.http, &format!("{}/log/checkpoint", d.custody)).await?;
            let cp = custody_verify::verify_checkpoint(&text, &d.vkey).map_err(|e| e.to_string())?;
            if cp.size > last {
                break (text, cp);
            }
            if Instant::now() > deadline {
                return Err("no checkpoint covers the receipts".into());
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        };
        for r in &receipts {
            let (entry, log_receipt) = custody_client::verify_receipt(r, &d.vkey).map_err(|e| e.to_string())?;
            let proof =
                get_text(&d.http, &format!("{}/log/proof/inclusion?index={}&size={}", d.custody, r.index, cp.size))
                    .await?;
            let rj = serde_json::to_string(&log_receipt).map_err(|e| e.to_string())?;
            custody_verify::verify_receipt_in_log(&rj, &d.vkey, entry.as_bytes(), &checkpoint, &proof)
                .map_err(|e| format!("receipt #{}: {e}", r.index))?;
        }
        let first = custody_verify::verify_checkpoint(&d.first_checkpoint, &d.vkey).map_err(|e| e.to_string())?;
        let proof =
            get_text(&d.http, &format!("{}/log/proof/consistency?from={}&to={}", d.custody, first.size, cp.size))
                .await?;
        custody_verify::verify_consistency(&d.first_checkpoint, &checkpoint, &d.vkey, &proof)
            .map_err(|e| e.to_string())?;
        Ok(format!(
            "checkpoint of {} entries signed by the log key; the {} receipts above are included in it; it extends the \
             checkpoint of {} entries taken at start (append-only)",
            cp.size,
            receipts.len(),
            first.size
        ))
    })
}

async fn get_text(http: &reqwest::Client, url: &str) -> Result<String, String> {
    let r = http.get(url).send().await.map_err(|e| format!("{url}: {e}"))?;
    if !r.status().is_success() {
        return Err(format!("{url} answered {}", r.status()));
    }
    r.text().await.map_err(|e| e.to_string())
}

async fn get_json(http: &reqwest::Client, url: &str) -> Result<Value, String> {
    serde_json::from_str(&get_text(http, url).await?).map_err(|e| format!("{url}: {e}"))
}

/// Peak resident memory of this process, from `/proc/self/status`.
fn peak_rss_mib() -> Option<f64> {
    let s = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = s.lines().find(|l| l.starts_with("VmHWM:"))?;
    let kib: f64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib / 1024.0)
}

async fn add_principal(socket: &std::path::Path, body: Value) -> anyhow::Result<String> {
    let a = admin_client::call(socket, "POST", "/admin/principals", Some(body)).await?;
    if a.status != 201 {
        anyhow::bail!("registering a principal answered {}: {}", a.status, a.body);
    }
    a.body.get("token").and_then(Value::as_str).map(str::to_string).context("no token in the answer")
}

pub(crate) fn run(settings: &Settings, args: DemoArgs) -> anyhow::Result<()> {
    super::init_tracing(if settings.log == "info" { "warn" } else { &settings.log });
    if args.users < MIN_USERS || args.users > MAX_USERS {
        return Err(fail(Exit::BadInput, format!("--users must be {MIN_USERS} to {MAX_USERS}")));
    }
    let rt = super::runtime()?;
    rt.block_on(play(args))
}

async fn play(args: DemoArgs) -> anyhow::Result<()> {
    println!("custody demo: clips, a short-video app, hosted inside a custody boundary (jurisdiction US).");
    println!("Every read and write clips makes goes through custody: decided by Cedar policy, recorded in a");
    println!("transparency log before anything is released.\n");

    let tmp = tempfile::Builder::new().prefix("custody-demo-").tempdir()?;
    let (schema, policies) = clips::deploy::write_to(&tmp.path().join("clips-deploy"))?;
    let mut cfg = ServerConfig::for_data_dir(tmp.path().join("data"));
    cfg.schema = Some(schema);
    cfg.policy_dir = Some(policies);
    cfg.listen = args.custody_listen;
    cfg.checkpoint_interval = Duration::from_millis(200);
    let state = ServerState::open(cfg).map_err(|e| fail(Exit::Error, e.to_string()))?;
    let socket = state.dirs.admin_socket.clone();
    let listener = tokio::net::TcpListener::bind(args.custody_listen)
        .await
        .with_context(|| format!("cannot listen on {}", args.custody_listen))?;
    let custody = format!("http://{}", listener.local_addr()?);
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let mut rx1 = stop_rx.clone();
    let server = tokio::spawn(custody_server::setup::serve(state, listener, async move {
        let _ = rx1.wait_for(|v| *v).await;
    }));
    let deadline = Instant::now() + Duration::from_secs(20);
    while !admin_client::server_running(&socket).await {
        if Instant::now() > deadline || server.is_finished() {
            anyhow::bail!("custody did not start");
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    println!("custody serving {custody} on embedded storage in {}", tmp.path().display());

    let clips_token = add_principal(
        &socket,
        json!({"id": "svc:clips", "kind": "workload", "location": "US", "employer": "platform",
            "roles": [clips::deploy::ROLE]}),
    )
    .await?;
    let alice = add_principal(
        &socket,
        json!({"id": "alice", "kind": "engineer", "location": "US", "employer": "provider", "roles": ["support"]}),
    )
    .await?;
    let dieter = add_principal(
        &socket,
        json!({"id": "dieter", "kind": "engineer", "location": "DE", "employer": "provider", "roles": ["support"]}),
    )
    .await?;
    let u7 =
        add_principal(&socket, json!({"id": "user-u7", "kind": "subject", "location": "US", "subject": "u7"})).await?;
    println!("principals registered through the operator socket:");
    println!("  svc:clips  workload, US, role clips-backend   (the app's backend)");
    println!("  alice      engineer, US, provider             (support, in the jurisdiction)");
    println!("  dieter     engineer, DE, provider             (support, abroad)");
    println!("  user-u7    subject u7                         (an end user of clips)");

    let app = Client::new(&custody, &clips_token)?;
    let clips_listener = tokio::net::TcpListener::bind(args.clips_listen)
        .await
        .with_context(|| format!("cannot listen on {}", args.clips_listen))?;
    let clips_url = format!("http://{}", clips_listener.local_addr()?);
    let mut rx2 = stop_rx.clone();
    let clips_server = tokio::spawn(clips::api::serve(clips_listener, clips::Store::new(app.clone()), async move {
        let _ = rx2.wait_for(|v| *v).await;
    }));
    println!("clips serving {clips_url}; its only storage is custody, as principal svc:clips\n");

    let plan = SeedPlan::new(args.users);
    println!(
        "Seeding {} users, {} videos, and their follows, likes, comments and watch events through custody:",
        plan.users,
        plan.videos()
    );
    let bar = ProgressBar::new(plan.users);
    bar.set_style(
        ProgressStyle::with_template("  {prefix:>13} [{bar:32}] {pos}/{len} ({per_sec}, {eta} left)")
            .unwrap_or_else(|_| ProgressStyle::default_bar())
            .progress_chars("=> "),
    );
    let b = bar.clone();
    let progress: seed::Progress = Arc::new(move |phase: Phase, done, total| {
        if b.length() != Some(total) || b.prefix() != phase.name() {
            b.reset();
            b.set_length(total);
            b.set_prefix(phase.name());
        }
        b.set_position(done);
    });
    let report = seed::seed(&app, &plan, progress).await.map_err(|e| fail(Exit::Error, format!("seeding: {e}")))?;
    bar.finish_and_clear();
    for p in &report.phases {
        let secs = p.elapsed.as_secs_f64().max(1e-9);
        println!(
            "  {:<13} {:>9} records  {:>7.2} s  {:>8.0}/s",
            p.phase.name(),
            p.records,
            secs,
            p.records as f64 / secs
        );
    }
    if let Some(mib) = peak_rss_mib() {
        println!("  peak memory of this process (custody, clips and the seeder): {mib:.0} MiB");
    }

    let http = reqwest::Client::builder().timeout(Duration::from_secs(30)).build()?;
    let vkey = get_text(&http, &format!("{custody}/log/key")).await.map_err(anyhow::Error::msg)?.trim().to_string();
    let first_checkpoint = get_text(&http, &format!("{custody}/log/checkpoint")).await.map_err(anyhow::Error::msg)?;
    let reason = Reason::new("support", "TICKET-4711");
    let monitor = DemoMonitor::new(tmp.path(), &custody, &vkey)?;
    let demo = Demo {
        custody: custody.clone(),
        clips: clips_url.clone(),
        http,
        engineer: Client::new(&custody, &alice)?.with_reason(reason.clone()),
        abroad: Client::new(&custody, &dieter)?.with_reason(reason),
        vkey,
        first_checkpoint,
        receipts: std::sync::Mutex::new(Vec::new()),
        app: app.clone(),
        subject: Client::new(&custody, &u7)?,
        monitor: tokio::sync::Mutex::new(monitor),
        report: tmp.path().join("report.html"),
    };

    println!("\nThe story:");
    let steps = story();
    let (mut passed, mut failed) = (0, 0);
    for (n, step) in steps.iter().enumerate() {
        println!("\n[{}/{}] {}", n + 1, steps.len(), step.title);
        match (step.play)(&demo).await {
            Ok(outcome) => {
                passed += 1;
                for line in outcome.lines() {
                    println!("      {line}");
                }
                println!("      ok: as expected");
            }
            Err(why) => {
                failed += 1;
                println!("      UNEXPECTED: {why}");
            }
        }
    }
    println!("\n{passed} steps as expected, {failed} unexpected.");
    println!("\n  custody API   {custody}/openapi.json");
    println!("  clips API     {clips_url}/v1/users/u1/feed");
    println!("  log           {custody}/log/checkpoint");
    println!("  report        {}", demo.report.display());

    if !args.exit {
        println!("\nServing until Ctrl-C (the data dir is deleted on exit).");
        let _ = tokio::signal::ctrl_c().await;
    }
    let _ = stop_tx.send(true);
    let _ = clips_server.await;
    let _ = server.await;
    drop(tmp);
    if failed > 0 {
        return Err(fail(Exit::Error, format!("{failed} step(s) did not have the expected outcome")));
    }
    Ok(())
}
