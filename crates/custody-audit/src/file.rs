//! The durable append-only event file with group commit.

use std::fs::{File, OpenOptions};
use std::io::{BufRead, BufReader, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{self, Receiver, SyncSender, TrySendError};
use std::thread;

use sha2::{Digest, Sha256};
use tokio::sync::oneshot;

use custody_core::LogEntry;

use crate::{AuditError, AuditReceipt, AuditSink, Pending};

/// Tuning for [`FileAuditSink`].
#[derive(Debug, Clone)]
pub struct FileSinkOptions {
    /// Most events written per sync.
    pub max_batch: usize,
    /// Most events waiting for the writer before submits are refused as overloaded.
    pub queue: usize,
}

impl Default for FileSinkOptions {
    fn default() -> Self {
        Self { max_batch: 4096, queue: 65536 }
    }
}

type Job = (Vec<u8>, oneshot::Sender<Result<AuditReceipt, AuditError>>);

/// Access events appended to `events.jsonl`, one JSON document per line, each carrying the
/// SHA-256 of the line before it so an edit in the middle breaks the chain.
#[derive(Debug)]
pub struct FileAuditSink {
    tx: SyncSender<Job>,
    failed: Arc<AtomicBool>,
    path: PathBuf,
}

/// The state recovered from an existing file.
struct Tail {
    next_index: u64,
    prev: [u8; 32],
    durable_len: u64,
}

impl FileAuditSink {
    /// Opens (or creates) the event file and starts the writer thread.
    ///
    /// A torn final line, left by a crash mid-write and never acknowledged, is cut off.
    ///
    /// # Errors
    /// [`AuditError::Failed`] if the file cannot be opened, read or repaired.
    pub fn open(path: &Path, opts: FileSinkOptions) -> Result<Self, AuditError> {
        let fail = |what: &str, e: std::io::Error| AuditError::Failed(format!("{what} `{}`: {e}", path.display()));
        let mut file =
            OpenOptions::new().create(true).read(true).append(true).open(path).map_err(|e| fail("cannot open", e))?;
        let tail = recover(&file).map_err(|e| fail("cannot read", e))?;
        let len = file.metadata().map_err(|e| fail("cannot stat", e))?.len();
        if len != tail.durable_len {
            tracing::warn!(path = %path.display(), cut = len - tail.durable_len, "cutting torn tail of event file");
            file.set_len(tail.durable_len).map_err(|e| fail("cannot truncate", e))?;
            file.sync_all().map_err(|e| fail("cannot sync", e))?;
        }
        file.seek(SeekFrom::End(0)).map_err(|e| fail("cannot seek", e))?;
        if let Some(dir) = path.parent()
            && let Ok(d) = File::open(dir)
        {
            let _ = d.sync_all();
        }
        let (tx, rx) = mpsc::sync_channel::<Job>(opts.queue.max(1));
        let failed = Arc::new(AtomicBool::new(false));
        let writer_failed = failed.clone();
        let max_batch = opts.max_batch.max(1);
        thread::Builder::new()
            .name("custody-audit-writer".into())
            .spawn(move || writer(file, rx, tail, max_batch, writer_failed))
            .map_err(|e| fail("cannot start writer for", e))?;
        Ok(Self { tx, failed, path: path.to_path_buf() })
    }

    /// The file's path.
    pub fn path(&self) -> &Path {
        &self.path
    }
}

impl AuditSink for FileAuditSink {
    fn submit(&self, event: &LogEntry) -> Result<Pending, AuditError> {
        if self.failed.load(Ordering::Acquire) {
            return Err(AuditError::Failed("an earlier write failed; see the server log".into()));
        }
        let body = serde_json::to_vec(event).map_err(|e| AuditError::Failed(e.to_string()))?;
        let (ack, rx) = oneshot::channel();
        match self.tx.try_send((body, ack)) {
            Ok(()) => Ok(Pending::new(rx)),
            Err(TrySendError::Full(_)) => Err(AuditError::Overloaded),
            Err(TrySendError::Disconnected(_)) => Err(AuditError::Closed),
        }
    }
}

/// Reads the file, checking the hash chain, and returns where durable content ends.
fn recover(file: &File) -> std::io::Result<Tail> {
    let mut reader = BufReader::new(file.try_clone()?);
    reader.seek(SeekFrom::Start(0))?;
    let mut tail = Tail { next_index: 0, prev: [0; 32], durable_len: 0 };
    let mut line = Vec::new();
    loop {
        line.clear();
        let n = reader.read_until(b'\n', &mut line)?;
        if n == 0 || line.last() != Some(&b'\n') {
            break;
        }
        let v: serde_json::Value = match serde_json::from_slice(&line) {
            Ok(v) => v,
            Err(e) => {
                return Err(std::io::Error::other(format!(
                    "event {} is not valid JSON ({e}); the file was altered",
                    tail.next_index
                )));
            }
        };
        let prev_ok = v.get("prev").and_then(|p| p.as_str()) == Some(hex(&tail.prev).as_str());
        if !prev_ok || v.get("index").and_then(serde_json::Value::as_u64) != Some(tail.next_index) {
            return Err(std::io::Error::other(format!(
                "event {} does not chain to the one before it; the file was altered",
                tail.next_index
            )));
        }
        tail.prev = Sha256::digest(&line).into();
        tail.next_index += 1;
        tail.durable_len += n as u64;
    }
    Ok(tail)
}

fn hex(b: &[u8; 32]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

fn writer(mut file: File, rx: Receiver<Job>, mut tail: Tail, max_batch: usize, failed: Arc<AtomicBool>) {
    let mut buf = Vec::with_capacity(1 << 20);
    let mut acks = Vec::with_capacity(max_batch);
    while let Ok(first) = rx.recv() {
        buf.clear();
        acks.clear();
        let mut job = Some(first);
        while let Some((body, ack)) = job.take() {
            let start = buf.len();
            buf.extend_from_slice(
                format!("{{\"index\":{},\"prev\":\"{}\",\"event\":", tail.next_index, hex(&tail.prev)).as_bytes(),
            );
            buf.extend_from_slice(&body);
            buf.extend_from_slice(b"}\n");
            tail.prev = Sha256::digest(buf.get(start..).unwrap_or_default()).into();
            acks.push((tail.next_index, ack));
            tail.next_index += 1;
            if acks.len() < max_batch {
                job = rx.try_recv().ok();
            }
        }
        let result = file.write_all(&buf).and_then(|()| file.sync_data());
        match result {
            Ok(()) => {
                for (index, ack) in acks.drain(..) {
                    let _ = ack.send(Ok(AuditReceipt { index, detail: serde_json::Value::Null }));
                }
            }
            Err(e) => {
                tracing::error!(error = %e, "audit write failed; refusing all further events");
                failed.store(true, Ordering::Release);
                for (_, ack) in acks.drain(..) {
                    let _ = ack.send(Err(AuditError::Failed(e.to_string())));
                }
                for (_, ack) in rx.try_iter() {
                    let _ = ack.send(Err(AuditError::Failed(e.to_string())));
                }
                return;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use super::*;
    use custody_core::{AccessEvent, Action, CollectionName, Decision, PrincipalId};

    fn event(n: usize) -> LogEntry {
        LogEntry::Access(AccessEvent {
            v: 1,
            kind: "access".into(),
            time: time::OffsetDateTime::UNIX_EPOCH,
            principal: PrincipalId::new(format!("p{n}")).unwrap(),
            principal_kind: "engineer".into(),
            action: Action::Read,
            collection: CollectionName::new("profiles").unwrap(),
            records: vec![],
            subjects: vec![],
            released: vec![],
            withheld: vec![],
            purpose: None,
            justification: None,
            location: None,
            policy_set: "00".into(),
            decision: Decision::Permit,
            jurisdictions: Vec::new(),
            approvals: Vec::new(),
        })
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn concurrent_appends_are_all_durable_and_chained() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("events.jsonl");
        let sink = Arc::new(FileAuditSink::open(&path, FileSinkOptions::default()).unwrap());
        let mut tasks = Vec::new();
        for n in 0..200 {
            let s = sink.clone();
            tasks.push(tokio::spawn(async move { s.submit(&event(n)).unwrap().durable().await.unwrap().index }));
        }
        let mut idx: Vec<u64> = Vec::new();
        for t in tasks {
            idx.push(t.await.unwrap());
        }
        idx.sort_unstable();
        assert_eq!(idx, (0..200).collect::<Vec<_>>());
        drop(sink);
        let reopened = FileAuditSink::open(&path, FileSinkOptions::default()).unwrap();
        assert_eq!(reopened.submit(&event(0)).unwrap().durable().await.unwrap().index, 200);
    }

    #[test]
    fn torn_tail_is_cut_and_edits_are_detected() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("events.jsonl");
        {
            let sink = FileAuditSink::open(&path, FileSinkOptions::default()).unwrap();
            for n in 0..3 {
                sink.submit(&event(n)).unwrap().wait().unwrap();
            }
        }
        let mut f = OpenOptions::new().append(true).open(&path).unwrap();
        f.write_all(b"{\"index\":3,\"prev\":\"ab").unwrap();
        drop(f);
        let sink = FileAuditSink::open(&path, FileSinkOptions::default()).unwrap();
        assert_eq!(sink.submit(&event(9)).unwrap().wait().unwrap().index, 3);
        drop(sink);

        let text = std::fs::read_to_string(&path).unwrap().replacen("p1", "p7", 1);
        std::fs::write(&path, text).unwrap();
        let err = FileAuditSink::open(&path, FileSinkOptions::default()).unwrap_err();
        assert!(err.to_string().contains("does not chain"), "{err}");
    }
}
