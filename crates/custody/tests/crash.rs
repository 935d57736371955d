//! Crash test: `custody serve` is SIGKILLed at random moments while concurrent guarded reads
//! run, and restarted on the same data dir, several times. Afterwards every receipt a client
//! received is proved included in the log, no log index was handed out twice, every
//! checkpoint seen earlier is consistent with the latest, and the log key never changed.
//!
//! The moments are drawn from a seeded generator; the seed is printed, and
//! `CUSTODY_CRASH_SEED=<n>` replays a run.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, clippy::indexing_slicing)]

use std::collections::{BTreeMap, HashMap};
use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use custody_client::{Client, ClientError, Reason, Receipt};
use serde_json::{Map, Value, json};

const BIN: &str = env!("CARGO_BIN_EXE_custody");
/// Kill-and-restart rounds.
const ROUNDS: usize = 4;
/// Concurrent readers per round.
const READERS: usize = 8;
/// Profiles seeded before the first round.
const PROFILES: usize = 8;

/// xorshift64*: enough randomness for kill moments, reproducible from its seed.
struct Rng(u64);

impl Rng {
    fn new(seed: u64) -> Rng {
        Rng(seed.max(1))
    }

    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    /// A number in `lo..hi`.
    fn range(&mut self, lo: u64, hi: u64) -> u64 {
        lo + self.next() % (hi - lo)
    }
}

/// One run of `custody serve`; killed and reaped on drop.
struct Node {
    child: Child,
    base: String,
    /// Its stderr.
    log: PathBuf,
}

impl Node {
    fn stderr(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

fn cli(data: &Path, args: &[&str]) -> std::process::Output {
    Command::new(BIN).arg("--data-dir").arg(data).args(args).output().unwrap()
}

/// Adds a principal offline (no server runs yet) and returns its token.
fn principal(data: &Path, id: &str, kind: &str, extra: &[&str]) -> String {
    let mut args = vec!["--format", "json", "principal", "add", "--id", id, "--kind", kind, "--location", "US"];
    args.extend_from_slice(extra);
    let out = cli(data, &args);
    assert!(out.status.success(), "principal add {id}: {}", String::from_utf8_lossy(&out.stderr));
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    v["token"].as_str().unwrap().to_string()
}

/// Starts `custody serve` on `data` (start number `n`, its stderr kept in `logs`), and waits
/// until it accepts connections on its port and its operator socket.
fn start(data: &Path, logs: &Path, n: usize) -> Node {
    let port = free_port();
    let log_path = logs.join(format!("serve-{n}.log"));
    let stderr = std::fs::File::create(&log_path).unwrap();
    let child = Command::new(BIN)
        .arg("--data-dir")
        .arg(data)
        .args(["--listen", &format!("127.0.0.1:{port}"), "--checkpoint-interval-ms", "100", "serve"])
        .env("CUSTODY_LOG", "warn")
        .stdout(Stdio::null())
        .stderr(stderr)
        .spawn()
        .unwrap();
    let mut node = Node { child, base: format!("http://127.0.0.1:{port}"), log: log_path };
    let sock = data.join("admin.sock");
    let deadline = Instant::now() + Duration::from_secs(30);
    // A SIGKILLed server leaves its admin.sock behind: wait until the new one answers.
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err()
        || std::os::unix::net::UnixStream::connect(&sock).is_err()
    {
        if let Some(status) = node.child.try_wait().unwrap() {
            panic!("custody serve (start {n}) exited with {status} instead of serving:\n{}", node.stderr());
        }
        assert!(Instant::now() < deadline, "custody serve (start {n}) did not start within 30 s");
        std::thread::sleep(Duration::from_millis(20));
    }
    node
}

fn profile(n: usize) -> Map<String, Value> {
    json!({"email": format!("crash-{n}@mail.example"), "phone": format!("+1555{n:04}"), "handle": format!("h{n}"), "bio": "hi"})
        .as_object()
        .unwrap()
        .clone()
}

/// A receipt as a client received it, with the round it came from.
struct Got {
    round: usize,
    receipt: Receipt,
}

/// What one round's traffic produced.
#[derive(Default)]
struct Traffic {
    receipts: Vec<Receipt>,
    /// Requests that failed without an answer (cut by the kill, or refused after it).
    cut: u64,
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_under_load_loses_no_receipt_and_keeps_the_log_consistent() {
    let began = Instant::now();
    let seed = std::env::var("CUSTODY_CRASH_SEED").ok().and_then(|s| s.parse().ok()).unwrap_or_else(|| {
        std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_nanos() as u64
    });
    eprintln!("crash test seed {seed} (replay with CUSTODY_CRASH_SEED={seed})");
    let mut rng = Rng::new(seed);

    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let logs = dir.path().join("logs");
    std::fs::create_dir_all(&logs).unwrap();
    let app_token = principal(&data, "clips-backend", "workload", &["--role", "app-backend"]);
    let engineer_token = principal(&data, "alice", "engineer", &["--employer", "provider", "--role", "support"]);

    let mut got: Vec<Got> = Vec::new();
    let mut checkpoints: Vec<(usize, String)> = Vec::new();
    let mut key: Option<String> = None;

    for round in 0..ROUNDS {
        let mut node = start(&data, &logs, round);
        let engineer =
            Client::new(&node.base, &engineer_token).unwrap().with_reason(Reason::new("support", "TICKET-42"));
        let k = engineer.log_key().await.unwrap();
        assert_eq!(key.get_or_insert_with(|| k.clone()), &k, "the log key changed at restart {round}");

        if round == 0 {
            let app = Client::new(&node.base, &app_token).unwrap();
            for n in 0..PROFILES {
                let w = app.create("profiles", Some(&format!("u{n}")), &format!("subj-{n}"), profile(n)).await.unwrap();
                got.push(Got { round, receipt: w.receipt });
            }
        }

        let traffic_began = Instant::now();
        let stop = Arc::new(AtomicBool::new(false));
        let answered = Arc::new(AtomicU64::new(0));
        // Answers that were errors: the server must not give any while it runs.
        let errors = Arc::new(Mutex::new(Vec::<String>::new()));
        let mut readers = Vec::new();
        for r in 0..READERS {
            let (client, stop, answered, errors) = (engineer.clone(), stop.clone(), answered.clone(), errors.clone());
            let mut rng = Rng::new(rng.next());
            readers.push(tokio::spawn(async move {
                let mut t = Traffic::default();
                while !stop.load(Ordering::Relaxed) {
                    let id = format!("u{}", rng.range(0, PROFILES as u64));
                    match client.get("profiles", &id).await {
                        Ok(resp) => {
                            assert!(resp.record.withheld.is_empty(), "reader {r}: {:?}", resp.record.withheld);
                            t.receipts.push(resp.receipt);
                            answered.fetch_add(1, Ordering::Relaxed);
                        }
                        Err(ClientError::Transport(_)) => t.cut += 1,
                        Err(e) => errors.lock().unwrap().push(format!("reader {r}: {e}")),
                    }
                }
                t
            }));
        }
        let poller = {
            let (client, stop) = (engineer.clone(), stop.clone());
            tokio::spawn(async move {
                let mut seen = Vec::new();
                while !stop.load(Ordering::Relaxed) {
                    if let Ok(text) = client.checkpoint().await {
                        seen.push(text);
                    }
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
                seen
            })
        };

        // Let traffic run for a random time, then kill the server mid-traffic: right after
        // an answer arrived, while the other readers' requests are in flight.
        let run = Duration::from_millis(rng.range(300, 1200));
        tokio::time::sleep(run).await;
        let mark = answered.load(Ordering::Relaxed);
        // Generous: a loaded machine's fsync can take seconds, and every answer waits for one.
        let deadline = Instant::now() + Duration::from_secs(15);
        while answered.load(Ordering::Relaxed) == mark {
            assert!(
                Instant::now() < deadline,
                "round {round}: traffic stalled ({mark} answers, none for 15 s); errors answered: {:?}; server \
                 stderr:\n{}",
                errors.lock().unwrap(),
                node.stderr()
            );
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        assert!(node.child.try_wait().unwrap().is_none(), "custody serve died on its own in round {round}");
        node.child.kill().unwrap();
        let killed_after = traffic_began.elapsed();
        let status = node.child.wait().unwrap();
        assert_eq!(status.signal(), Some(libc::SIGKILL), "round {round}: {status}");

        stop.store(true, Ordering::Relaxed);
        let (mut n, mut cut) = (0, 0);
        for reader in readers {
            let t = reader.await.unwrap();
            n += t.receipts.len();
            cut += t.cut;
            got.extend(t.receipts.into_iter().map(|receipt| Got { round, receipt }));
        }
        let seen = poller.await.unwrap();
        let errors = errors.lock().unwrap().clone();
        assert!(errors.is_empty(), "round {round}: the server answered errors: {errors:?}\n{}", node.stderr());
        eprintln!(
            "round {round}: killed after {killed_after:?} (planned {run:?}) with {n} receipts, {cut} requests cut, \
             {} checkpoints seen",
            seen.len()
        );
        checkpoints.extend(seen.into_iter().map(|text| (round, text)));
        drop(node);
    }

    // Start once more and check everything the clients were given against the log.
    let node = start(&data, &logs, ROUNDS);
    let engineer = Client::new(&node.base, &engineer_token).unwrap().with_reason(Reason::new("support", "TICKET-42"));
    let key = key.unwrap();
    assert_eq!(engineer.log_key().await.unwrap(), key, "the log key changed at the last restart");

    // No index was handed out twice: a reused index means an acknowledged entry was lost.
    let mut by_index: HashMap<u64, &Got> = HashMap::new();
    for g in &got {
        if let Some(other) = by_index.insert(g.receipt.index, g) {
            let entry = |g: &Got| g.receipt.detail["entry"].as_str().unwrap_or_default().to_string();
            assert_eq!(
                entry(other),
                entry(g),
                "log index {} was given to two different entries (rounds {} and {}): an acknowledged entry was \
                 lost or overwritten",
                g.receipt.index,
                other.round,
                g.round
            );
            panic!("log index {} was receipted twice for the same entry", g.receipt.index);
        }
    }
    let last = got.iter().map(|g| g.receipt.index).max().unwrap();

    // A checkpoint covering every receipt. If none does yet, new traffic makes the tree grow,
    // so one is signed within the checkpoint interval.
    let deadline = Instant::now() + Duration::from_secs(20);
    let (latest, cp) = loop {
        let text = engineer.checkpoint().await.unwrap();
        let cp = custody_verify::verify_checkpoint(&text, &key).unwrap();
        if cp.size > last {
            break (text, cp);
        }
        assert!(Instant::now() < deadline, "no checkpoint covers receipt index {last}; the log has {}", cp.size);
        engineer.get("profiles", "u0").await.unwrap();
        tokio::time::sleep(Duration::from_millis(50)).await;
    };

    // Every receipt verifies and is included in the latest checkpoint's tree.
    for g in &got {
        let (entry, log_receipt) = custody_client::verify_receipt(&g.receipt, &key)
            .unwrap_or_else(|e| panic!("receipt {} from round {}: {e}", g.receipt.index, g.round));
        let proof = engineer.inclusion_proof(g.receipt.index, cp.size).await.unwrap();
        let receipt_json = serde_json::to_string(&log_receipt).unwrap();
        custody_verify::verify_receipt_in_log(&receipt_json, &key, entry.as_bytes(), &latest, &proof).unwrap_or_else(
            |e| panic!("receipt {} from round {} is not in the log of size {}: {e}", g.receipt.index, g.round, cp.size),
        );
    }

    // Every checkpoint seen earlier is consistent with the latest; one size, one tree; and,
    // in the order clients saw them, across restarts, the size never went back.
    let mut by_size: BTreeMap<u64, (usize, String)> = BTreeMap::new();
    let mut previous = 0;
    for (round, text) in checkpoints {
        let c = custody_verify::verify_checkpoint(&text, &key)
            .unwrap_or_else(|e| panic!("checkpoint from round {round}: {e}\n{text}"));
        assert!(
            c.size >= previous,
            "round {round}: a checkpoint of size {} was served after one of {previous}",
            c.size
        );
        previous = c.size;
        match by_size.get(&c.size) {
            Some((r, t)) => assert_eq!(t, &text, "two different trees of size {} (rounds {r} and {round})", c.size),
            None => {
                by_size.insert(c.size, (round, text));
            }
        }
    }
    assert!(by_size.len() >= ROUNDS, "too few distinct checkpoints seen: {:?}", by_size.keys());
    for (size, (round, text)) in &by_size {
        let proof = if *size == 0 {
            json!({"old_size": 0, "size": cp.size, "proof": []}).to_string()
        } else {
            engineer.consistency_proof(*size, cp.size).await.unwrap()
        };
        custody_verify::verify_consistency(text, &latest, &key, &proof).unwrap_or_else(|e| {
            panic!("checkpoint of size {size} from round {round} is not consistent with the latest ({}): {e}", cp.size)
        });
    }
    let torn = (1..=ROUNDS)
        .filter(|n| {
            std::fs::read_to_string(logs.join(format!("serve-{n}.log"))).unwrap_or_default().contains("torn tail")
        })
        .count();
    eprintln!(
        "{} receipts over {ROUNDS} kills proved included in a log of {}; {} earlier checkpoints consistent; \
         {torn} restarts cut a torn tail; {:?}",
        got.len(),
        cp.size,
        by_size.len(),
        began.elapsed()
    );
}
