//! What the guard costs on a read.
//!
//! One in-process read of a ~1 KB `profiles` record (sample schema: `email`, `phone`,
//! `birthdate` protected and sealed; `handle`, `display_name`, `bio`, `avatar_url` public),
//! read by an in-jurisdiction provider engineer with a purpose and a justification, so every
//! class the record holds is permitted. All benchmarks sit in ONE criterion group,
//! `guarded_read`, so they are reported side by side:
//!
//! - `baseline_unguarded/k{1,64}`: `vault.load` + `vault.open(.., |_| true)`: the same
//!   storage read and decryption with no policy and no audit.
//! - `guarded_durable/k{1,64}`: `Guard::read` with the real file audit sink (fsync, group
//!   commit), on a multi-thread runtime.
//! - `guarded_no_sync/k{1,64}`: `Guard::read` with [`DiscardSink`], which isolates the
//!   policy + event cost from the fsync (see its docs).
//! - `policy_decide/{protected,public}`: one `PolicyEngine::decide` (a read decides two
//!   classes: the request memo collapses the 3 protected and 4 public fields).
//! - `event_build_serialize`: a copy of the guard's event construction (pseudonyms, hash,
//!   timestamp) plus `serde_json::to_vec`, which is what `FileAuditSink::submit` does.
//!
//! The `k*` benchmarks use `iter_custom`: K tasks are spawned on a multi-thread tokio
//! runtime, each doing N/K reads, and the reported time is total elapsed / N, i.e. the time
//! per read at that concurrency (the inverse of throughput), not the latency of one read.
//!
//! The data dirs are created under `target/` (or `$CUSTODY_BENCH_DIR`), not `/tmp`, so the
//! audit fsync hits a real disk even where `/tmp` is a tmpfs.
//!
//! Run: `cargo bench -p custody-server --bench guarded_read -- --warm-up-time 1 --measurement-time 3`

#![allow(missing_docs, clippy::unwrap_used, clippy::expect_used, clippy::panic, clippy::indexing_slicing)]

use std::hint::black_box;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use criterion::{Criterion, criterion_group, criterion_main};
use serde_json::{Map, Value, json};
use tokio::runtime::Runtime;

use custody_audit::{AuditError, AuditReceipt, AuditSink, Pending};
use custody_core::{AccessEvent, Action, CollectionName, Decision, FieldName, LogEntry, RecordId};
use custody_policy::{RequestContext, ResourceRef};
use custody_server::admin::{NewPrincipal, add_principal};
use custody_server::guard::Caller;
use custody_server::wire::CreateRecord;
use custody_server::{DataDir, ServerConfig, ServerState};

/// Records written before measuring; reads cycle through them.
const RECORDS: usize = 1000;
/// Target size of a record's fields as JSON; `bio` is padded to reach it.
const RECORD_BYTES: usize = 1024;
const COLLECTION: &str = "profiles";

/// BENCHMARK-ONLY audit sink: accepts every event and acknowledges it at once, without
/// writing or syncing anything. It exists to isolate the guard's policy + event cost from
/// the fsync of the real sink. It still serializes the event to JSON, exactly as
/// `FileAuditSink::submit` does on the caller's thread, so the only thing missing compared
/// with the real sink is the hand-off to the writer thread, the write and the fsync.
/// Never use anything like it outside a benchmark: it makes the audit promise void.
struct DiscardSink;

impl AuditSink for DiscardSink {
    fn submit(&self, event: &LogEntry) -> Result<Pending, AuditError> {
        let body = serde_json::to_vec(event).map_err(|e| AuditError::Failed(e.to_string()))?;
        black_box(&body);
        let (tx, rx) = tokio::sync::oneshot::channel();
        let _ = tx.send(Ok(AuditReceipt { index: 0, detail: Value::Null }));
        Ok(Pending::new(rx))
    }
}

struct Fixture {
    state: Arc<ServerState>,
    engineer: Arc<Caller>,
    ids: Arc<Vec<String>>,
    ctx: Arc<RequestContext>,
    // Kept so the data dir outlives the benchmarks; removed on drop.
    _dir: tempfile::TempDir,
}

fn bench_root() -> PathBuf {
    let root = std::env::var_os("CUSTODY_BENCH_DIR").map(PathBuf::from).unwrap_or_else(|| {
        // CARGO_MANIFEST_DIR is crates/custody-server; the workspace target dir is ../../target.
        PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../target/custody-bench")
    });
    std::fs::create_dir_all(&root).unwrap();
    root
}

fn engineer_ctx() -> RequestContext {
    RequestContext {
        purpose: Some("support".into()),
        justification: Some("TICKET-4711".into()),
        approvals: vec![],
        destination: None,
    }
}

fn profile_fields(n: usize) -> Map<String, Value> {
    let mut f = json!({
        "email": format!("user{n:04}@example.com"),
        "phone": format!("+1-555-{:04}", n % 10_000),
        "birthdate": format!("19{:02}-{:02}-{:02}", 60 + n % 40, 1 + n % 12, 1 + n % 28),
        "handle": format!("clipper_{n:04}"),
        "display_name": format!("Clipper Number {n:04}"),
        "avatar_url": format!("https://cdn.example.com/avatars/{n:04}/d41d8cd98f00b204.png"),
        "bio": "",
    });
    let base = serde_json::to_vec(&f).unwrap().len();
    let filler = "Short clips about cooking, bikes and the occasional cat. ";
    let bio: String = filler.chars().cycle().take(RECORD_BYTES.saturating_sub(base)).collect();
    f["bio"] = Value::String(bio);
    match f {
        Value::Object(m) => m,
        _ => unreachable!(),
    }
}

/// Opens a data dir (the real file sink, or `sink` when given), registers an engineer and a
/// workload, writes [`RECORDS`] profiles through the guard, and checks one guarded read.
fn fixture(rt: &Runtime, name: &str, sink: Option<Arc<dyn AuditSink>>) -> Fixture {
    let dir = tempfile::Builder::new().prefix(name).tempdir_in(bench_root()).unwrap();
    let cfg = ServerConfig::for_data_dir(dir.path());
    let state = match sink {
        None => ServerState::open(cfg).unwrap(),
        Some(s) => {
            let dirs = DataDir::prepare(&cfg).unwrap();
            ServerState::open_with_sink(cfg, dirs, s).unwrap()
        }
    };
    let register = |id: &str, kind: &str, employer: &str, roles: &[&str]| {
        let issued = add_principal(
            state.auth.store().as_ref(),
            NewPrincipal {
                id: id.into(),
                kind: kind.into(),
                location: "US".into(),
                employer: employer.into(),
                roles: roles.iter().map(|r| (*r).to_string()).collect(),
                subject: None,
                tags: Default::default(),
            },
        )
        .unwrap();
        state.auth.authenticate(Some(&format!("Bearer {}", issued.token))).unwrap()
    };
    let engineer = register("eng:bench@provider", "engineer", "provider", &["support"]);
    let backend = register("wl:app-backend", "workload", "clips", &["app-backend"]);

    let ids: Vec<String> = (0..RECORDS).map(|n| format!("prof-{n:04}")).collect();
    rt.block_on(async {
        // 16 writers at a time so the audit sink's group commit overlaps the creates.
        let mut tasks = tokio::task::JoinSet::new();
        let chunks: Vec<Vec<usize>> = (0..16).map(|w| (w..RECORDS).step_by(16).collect()).collect();
        for chunk in chunks {
            let (state, backend) = (state.clone(), backend.clone());
            tasks.spawn(async move {
                for n in chunk {
                    let body = CreateRecord {
                        id: Some(format!("prof-{n:04}")),
                        subject: Some(format!("subj-{n:04}")),
                        jurisdiction: None,
                        fields: profile_fields(n),
                    };
                    state.guard.create(&backend, COLLECTION, body, &RequestContext::default()).await.unwrap();
                }
            });
        }
        while let Some(r) = tasks.join_next().await {
            r.unwrap();
        }
    });

    let ctx = engineer_ctx();
    let read = rt.block_on(state.guard.read(&engineer, COLLECTION, &ids[7], &ctx)).unwrap();
    assert_eq!(read.record.fields.len(), 7, "all seven fields are released: {:?}", read.record.withheld);
    assert!(read.record.withheld.is_empty());
    let size = serde_json::to_vec(&read.record.fields).unwrap().len();
    eprintln!("[{name}] {RECORDS} profiles written; one record's fields are {size} bytes of JSON, 3 sealed");

    Fixture { state, engineer, ids: Arc::new(ids), ctx: Arc::new(ctx), _dir: dir }
}

fn multi_thread_runtime() -> Runtime {
    tokio::runtime::Builder::new_multi_thread().enable_all().build().unwrap()
}

/// Runs `iters` operations split over `k` spawned tasks and returns the total elapsed time,
/// so criterion reports elapsed / iters: time per operation at concurrency `k`.
fn run_concurrent<F, Fut>(rt: &Runtime, iters: u64, k: u64, op: F) -> Duration
where
    F: Fn(usize) -> Fut + Clone + Send + Sync + 'static,
    Fut: std::future::Future<Output = ()> + Send + 'static,
{
    rt.block_on(async move {
        let start = Instant::now();
        let mut tasks = Vec::with_capacity(k as usize);
        for t in 0..k {
            let n = iters / k + u64::from(t < iters % k);
            let op = op.clone();
            tasks.push(tokio::spawn(async move {
                // Each task walks the records from its own offset.
                let mut i = (t as usize).wrapping_mul(RECORDS / 64 + 1);
                for _ in 0..n {
                    op(i).await;
                    i = i.wrapping_add(1);
                }
            }));
        }
        for t in tasks {
            t.await.unwrap();
        }
        start.elapsed()
    })
}

fn baseline_op(f: &Fixture) -> impl Fn(usize) -> std::future::Ready<()> + Clone + Send + Sync + 'static {
    let state = f.state.clone();
    let ids = f.ids.clone();
    let cname = CollectionName::new(COLLECTION).unwrap();
    move |i| {
        let id = RecordId::new(ids[i % ids.len()].as_str()).unwrap();
        let vault = state.guard.vault();
        let stored = vault.load(&cname, &id).unwrap();
        let opened = vault.open(state.guard.schema(), &cname, &id, &stored, |_| true).unwrap();
        black_box(opened);
        std::future::ready(())
    }
}

fn guarded_op(
    f: &Fixture,
) -> impl Fn(usize) -> std::pin::Pin<Box<dyn std::future::Future<Output = ()> + Send>> + Clone + Send + Sync + 'static {
    let state = f.state.clone();
    let caller = f.engineer.clone();
    let ids = f.ids.clone();
    let ctx = f.ctx.clone();
    move |i| {
        let (state, caller, ids, ctx) = (state.clone(), caller.clone(), ids.clone(), ctx.clone());
        Box::pin(async move {
            let r = state.guard.read(&caller, COLLECTION, &ids[i % ids.len()], &ctx).await.unwrap();
            black_box(r);
        })
    }
}

/// A copy of `Guard::event` for one permitted read (the guard's is private), plus the JSON
/// serialization the file sink does in `submit`.
fn build_and_serialize_event(
    f: &Fixture,
    policies: &custody_policy::LoadedPolicies,
    id: &str,
    subject: &str,
    released: &[FieldName],
) -> Vec<u8> {
    let p = f.state.guard.vault().pseudonyms();
    let collection = CollectionName::new(COLLECTION).unwrap();
    let event = AccessEvent {
        v: AccessEvent::VERSION,
        kind: "access".into(),
        time: time::OffsetDateTime::now_utc(),
        principal: f.engineer.record.id.clone(),
        principal_kind: f.engineer.record.kind.to_string(),
        action: Action::Read,
        collection: collection.clone(),
        records: vec![p.record(collection.as_str(), id)],
        subjects: vec![p.subject(subject)],
        released: released.to_vec(),
        withheld: vec![],
        purpose: f.ctx.purpose.clone(),
        justification: f.ctx.justification.clone(),
        location: Some(f.engineer.prepared.location().to_string()),
        policy_set: policies.hash().to_string(),
        decision: Decision::Permit,
        jurisdictions: Vec::new(),
        approvals: Vec::new(),
    };
    serde_json::to_vec(&event).unwrap()
}

fn guarded_read(c: &mut Criterion) {
    let rt = multi_thread_runtime();
    let durable = fixture(&rt, "durable-", None);
    let no_sync = fixture(&rt, "nosync-", Some(Arc::new(DiscardSink) as Arc<dyn AuditSink>));

    let mut g = c.benchmark_group("guarded_read");

    for k in [1u64, 64] {
        let op = baseline_op(&durable);
        g.bench_function(format!("baseline_unguarded/k{k}"), |b| {
            b.iter_custom(|iters| run_concurrent(&rt, iters, k, op.clone()));
        });
    }
    for k in [1u64, 64] {
        let op = guarded_op(&durable);
        g.bench_function(format!("guarded_durable/k{k}"), |b| {
            b.iter_custom(|iters| run_concurrent(&rt, iters, k, op.clone()));
        });
    }
    for k in [1u64, 64] {
        let op = guarded_op(&no_sync);
        g.bench_function(format!("guarded_no_sync/k{k}"), |b| {
            b.iter_custom(|iters| run_concurrent(&rt, iters, k, op.clone()));
        });
    }

    let policies = durable.state.policy.current();
    for class in ["protected", "public"] {
        let resource = ResourceRef { collection: COLLECTION, class, jurisdiction: "US", subject: Some("subj-0007") };
        let d =
            durable.state.policy.decide(&policies, &durable.engineer.prepared, Action::Read, &resource, &durable.ctx);
        assert!(d.is_permit(), "{class}: {d:?}");
        g.bench_function(format!("policy_decide/{class}"), |b| {
            b.iter(|| {
                durable.state.policy.decide(
                    &policies,
                    black_box(&durable.engineer.prepared),
                    Action::Read,
                    black_box(&resource),
                    &durable.ctx,
                )
            });
        });
    }

    let released: Vec<FieldName> = ["avatar_url", "bio", "birthdate", "display_name", "email", "handle", "phone"]
        .into_iter()
        .map(|s| FieldName::new(s).unwrap())
        .collect();
    let sample = build_and_serialize_event(&durable, &policies, "prof-0007", "subj-0007", &released);
    eprintln!("[event] one serialized access event is {} bytes", sample.len());
    g.bench_function("event_build_serialize", |b| {
        b.iter(|| {
            build_and_serialize_event(&durable, &policies, black_box("prof-0007"), black_box("subj-0007"), &released)
        });
    });

    g.finish();
}

criterion_group!(benches, guarded_read);
criterion_main!(benches);
