//! The monitor's state directory: the last verified checkpoint with the tree's right edge
//! (enough to check the next checkpoint without refetching anything), the verified entries,
//! and the alerts raised.
//!
//! ```text
//! verified.json    {"checkpoint": signed text, "size": N, "frontier": [base64 hash, ...]}
//! checkpoint       the same signed checkpoint, for people and scripts
//! entries.jsonl    one {"index": I, "entry": text} per line; lines at or past N are unverified
//! alerts.jsonl     every alert raised, one JSON document per line
//! ```
//!
//! `verified.json` is replaced atomically (write, fsync, rename, fsync the directory), and only
//! after the entries it covers are synced, so a crash leaves either the old or the new state.

use std::fs::{self, File, OpenOptions};
use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};

use custody_tlog::{Checkpoint, Frontier, Hash};
use serde::{Deserialize, Serialize};

use crate::MonitorError;
use crate::alert::Alert;

/// The last checkpoint the monitor verified, with the tree's right edge at that size.
#[derive(Debug, Clone)]
pub struct Verified {
    /// The signed checkpoint text as served.
    pub signed: String,
    /// The parsed checkpoint.
    pub checkpoint: Checkpoint,
    /// The right edge of the verified tree; its root is the checkpoint's root.
    pub frontier: Frontier,
}

#[derive(Serialize, Deserialize)]
struct VerifiedFile {
    checkpoint: String,
    size: u64,
    frontier: Vec<Hash>,
}

/// One stored, verified entry.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct StoredEntry {
    /// Its index in the log.
    pub index: u64,
    /// The entry text (custody entries are JSON documents).
    pub entry: String,
}

/// A monitor state directory.
#[derive(Debug, Clone)]
pub struct StateDir {
    dir: PathBuf,
}

impl StateDir {
    /// Opens (creating if needed) the state directory `dir`.
    ///
    /// # Errors
    ///
    /// [`MonitorError::State`] if it cannot be created.
    pub fn open(dir: impl Into<PathBuf>) -> Result<StateDir, MonitorError> {
        let dir = dir.into();
        fs::create_dir_all(&dir).map_err(MonitorError::state(&dir))?;
        Ok(StateDir { dir })
    }

    /// The directory.
    pub fn path(&self) -> &Path {
        &self.dir
    }

    fn file(&self, name: &str) -> PathBuf {
        self.dir.join(name)
    }

    /// The last verified checkpoint, if any. Cuts unverified entries from `entries.jsonl`.
    ///
    /// # Errors
    ///
    /// [`MonitorError::State`] on I/O errors; [`MonitorError::CorruptState`] if the file does not
    /// parse or its frontier does not match its checkpoint.
    pub fn load(&self) -> Result<Option<Verified>, MonitorError> {
        let path = self.file("verified.json");
        let text = match fs::read_to_string(&path) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                self.truncate_entries(0)?;
                return Ok(None);
            }
            Err(e) => return Err(MonitorError::State { path, source: e }),
        };
        let corrupt = |detail: String| MonitorError::CorruptState { path: path.clone(), detail };
        let file: VerifiedFile = serde_json::from_str(&text).map_err(|e| corrupt(e.to_string()))?;
        let note = custody_tlog::Note::parse(file.checkpoint.as_bytes()).map_err(|e| corrupt(e.to_string()))?;
        let checkpoint = Checkpoint::parse(note.text()).map_err(|e| corrupt(e.to_string()))?;
        let frontier = Frontier::from_parts(file.size, file.frontier).map_err(|e| corrupt(e.to_string()))?;
        if frontier.size() != checkpoint.size || frontier.root() != checkpoint.root_hash {
            return Err(corrupt("the stored tree edge does not match the stored checkpoint".into()));
        }
        self.truncate_entries(checkpoint.size)?;
        Ok(Some(Verified { signed: file.checkpoint, checkpoint, frontier }))
    }

    /// Records `verified` as the latest verified state, atomically and durably.
    ///
    /// # Errors
    ///
    /// [`MonitorError::State`] on I/O errors.
    pub fn save(&self, verified: &Verified) -> Result<(), MonitorError> {
        let file = VerifiedFile {
            checkpoint: verified.signed.clone(),
            size: verified.frontier.size(),
            frontier: verified.frontier.nodes().to_vec(),
        };
        let json = serde_json::to_vec_pretty(&file)
            .map_err(|e| MonitorError::CorruptState { path: self.file("verified.json"), detail: e.to_string() })?;
        write_atomic(&self.file("verified.json"), &json)?;
        write_atomic(&self.file("checkpoint"), verified.signed.as_bytes())
    }

    /// The log keys accepted through verified handovers (`keys`, one vkey a line), beyond
    /// the pinned one.
    ///
    /// # Errors
    ///
    /// [`MonitorError::State`] if the file exists but cannot be read.
    pub fn load_keys(&self) -> Result<Vec<String>, MonitorError> {
        let path = self.file("keys");
        match fs::read_to_string(&path) {
            Ok(text) => Ok(text.lines().filter(|l| !l.is_empty()).map(str::to_owned).collect()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Vec::new()),
            Err(e) => Err(MonitorError::state(&path)(e)),
        }
    }

    /// Replaces the accepted log keys (atomically).
    ///
    /// # Errors
    ///
    /// [`MonitorError::State`] if it cannot be written.
    pub fn save_keys(&self, keys: &[String]) -> Result<(), MonitorError> {
        let text: String = keys.iter().map(|k| format!("{k}\n")).collect();
        write_atomic(&self.file("keys"), text.as_bytes())
    }

    /// Keeps only entries with index below `size` in `entries.jsonl`.
    fn truncate_entries(&self, size: u64) -> Result<(), MonitorError> {
        let path = self.file("entries.jsonl");
        let Ok(f) = File::open(&path) else { return Ok(()) };
        let mut keep = 0u64;
        let mut reader = BufReader::new(f);
        let mut line = String::new();
        loop {
            line.clear();
            let n = reader.read_line(&mut line).map_err(MonitorError::state(&path))?;
            if n == 0 || !line.ends_with('\n') {
                break;
            }
            match serde_json::from_str::<StoredEntry>(&line) {
                Ok(e) if e.index < size => keep += n as u64,
                _ => break,
            }
        }
        let f = OpenOptions::new().write(true).open(&path).map_err(MonitorError::state(&path))?;
        if f.metadata().map_err(MonitorError::state(&path))?.len() != keep {
            f.set_len(keep).map_err(MonitorError::state(&path))?;
            f.sync_all().map_err(MonitorError::state(&path))?;
        }
        Ok(())
    }

    /// An appender for `entries.jsonl`; call [`EntryWriter::sync`] before [`StateDir::save`].
    ///
    /// # Errors
    ///
    /// [`MonitorError::State`] if the file cannot be opened.
    pub fn entry_writer(&self) -> Result<EntryWriter, MonitorError> {
        let path = self.file("entries.jsonl");
        let f = OpenOptions::new().create(true).append(true).open(&path).map_err(MonitorError::state(&path))?;
        Ok(EntryWriter { out: std::io::BufWriter::new(f), path })
    }

    /// Every stored entry below `size`, in order.
    ///
    /// # Errors
    ///
    /// [`MonitorError::State`] on I/O errors; [`MonitorError::CorruptState`] for a bad line.
    pub fn entries(&self, size: u64) -> Result<Vec<StoredEntry>, MonitorError> {
        let path = self.file("entries.jsonl");
        let f = match File::open(&path) {
            Ok(f) => f,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(e) => return Err(MonitorError::State { path, source: e }),
        };
        let mut out = Vec::new();
        for line in BufReader::new(f).lines() {
            let line = line.map_err(MonitorError::state(&path))?;
            let e: StoredEntry = serde_json::from_str(&line)
                .map_err(|e| MonitorError::CorruptState { path: path.clone(), detail: e.to_string() })?;
            if e.index >= size {
                break;
            }
            out.push(e);
        }
        Ok(out)
    }

    /// Appends an alert to `alerts.jsonl`.
    ///
    /// # Errors
    ///
    /// [`MonitorError::State`] on I/O errors.
    pub fn append_alert(&self, alert: &Alert) -> Result<(), MonitorError> {
        let path = self.file("alerts.jsonl");
        let mut f = OpenOptions::new().create(true).append(true).open(&path).map_err(MonitorError::state(&path))?;
        let mut line = serde_json::to_string(alert)
            .map_err(|e| MonitorError::CorruptState { path: path.clone(), detail: e.to_string() })?;
        line.push('\n');
        f.write_all(line.as_bytes()).map_err(MonitorError::state(&path))?;
        f.sync_data().map_err(MonitorError::state(&path))
    }

    /// Every alert raised so far.
    ///
    /// # Errors
    ///
    /// [`MonitorError::State`] on I/O errors; [`MonitorError::CorruptState`] for a bad line.
    pub fn alerts(&self) -> Result<Vec<Alert>, MonitorError> {
        let path = self.file("alerts.jsonl");
        let text = match fs::read_to_string(&path) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(e) => return Err(MonitorError::State { path, source: e }),
        };
        text.lines()
            .map(|l| {
                serde_json::from_str(l)
                    .map_err(|e| MonitorError::CorruptState { path: path.clone(), detail: e.to_string() })
            })
            .collect()
    }
}

/// Appends verified entries to `entries.jsonl`.
#[derive(Debug)]
pub struct EntryWriter {
    out: std::io::BufWriter<File>,
    path: PathBuf,
}

impl EntryWriter {
    /// Appends entry `index`. Entries that are not UTF-8 are stored lossily (custody's are JSON).
    ///
    /// # Errors
    ///
    /// [`MonitorError::State`] on I/O errors.
    pub fn push(&mut self, index: u64, entry: &[u8]) -> Result<(), MonitorError> {
        let e = StoredEntry { index, entry: String::from_utf8_lossy(entry).into_owned() };
        serde_json::to_writer(&mut self.out, &e)
            .map_err(|e| MonitorError::CorruptState { path: self.path.clone(), detail: e.to_string() })?;
        self.out.write_all(b"\n").map_err(MonitorError::state(&self.path))
    }

    /// Flushes and fsyncs.
    ///
    /// # Errors
    ///
    /// [`MonitorError::State`] on I/O errors.
    pub fn sync(&mut self) -> Result<(), MonitorError> {
        self.out.flush().map_err(MonitorError::state(&self.path))?;
        self.out.get_ref().sync_data().map_err(MonitorError::state(&self.path))
    }
}

/// Writes `data` to `path` atomically: a temporary file, fsync, rename, fsync the directory.
///
/// # Errors
///
/// [`MonitorError::State`] on I/O errors.
pub fn write_atomic(path: &Path, data: &[u8]) -> Result<(), MonitorError> {
    let tmp = path.with_extension("tmp");
    let mut f = File::create(&tmp).map_err(MonitorError::state(&tmp))?;
    f.write_all(data).map_err(MonitorError::state(&tmp))?;
    f.sync_all().map_err(MonitorError::state(&tmp))?;
    fs::rename(&tmp, path).map_err(MonitorError::state(path))?;
    if let Some(dir) = path.parent() {
        File::open(dir).and_then(|d| d.sync_all()).map_err(MonitorError::state(dir))?;
    }
    Ok(())
}
