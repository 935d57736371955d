//! Group commit: bulk writes that arrive while one is being committed share the next
//! transaction, and so its fsync.
//!
//! Each bulk create is one durable redb transaction. redb allows one writer at a time, so under
//! concurrent bulk creates the commit (page copy-on-write of the trees' upper levels, checksums,
//! the fsync) became the serial section that bounded seeding. Here the first caller to get the
//! writer lock commits every job queued at that moment in one transaction; the jobs that queue
//! meanwhile go together in the next. A job's result is sent only after that transaction
//! committed (or failed), so an acknowledged write is still a durable one.

use std::sync::mpsc::{SyncSender, sync_channel};
use std::sync::{Mutex, PoisonError};

/// Jobs of type `J` waiting for the next group commit, each answered with an `R`.
pub(crate) struct GroupCommit<J, R> {
    pending: Mutex<Vec<(J, SyncSender<R>)>>,
    writer: Mutex<()>,
}

impl<J, R> std::fmt::Debug for GroupCommit<J, R> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("GroupCommit")
    }
}

impl<J, R> Default for GroupCommit<J, R> {
    fn default() -> Self {
        Self { pending: Mutex::new(Vec::new()), writer: Mutex::new(()) }
    }
}

impl<J, R> GroupCommit<J, R> {
    /// Queues `job` and returns its result once the transaction holding it has committed.
    /// `commit` gets every job queued when this caller became the writer (its own among
    /// them, unless an earlier writer already took it) and returns one result per job, in
    /// order; `lost` is the answer for a job `commit` returned no result for.
    pub(crate) fn submit(&self, job: J, commit: impl FnOnce(Vec<J>) -> Vec<R>, lost: impl Fn() -> R) -> R {
        let (tx, rx) = sync_channel(1);
        self.pending.lock().unwrap_or_else(PoisonError::into_inner).push((job, tx));
        let _writer = self.writer.lock().unwrap_or_else(PoisonError::into_inner);
        // INVARIANT: a writer answers every job it took before it releases the writer lock,
        // so a job is either answered by now or still pending, and then taken below.
        if let Ok(r) = rx.try_recv() {
            return r;
        }
        let taken = std::mem::take(&mut *self.pending.lock().unwrap_or_else(PoisonError::into_inner));
        if !taken.is_empty() {
            let (jobs, senders): (Vec<J>, Vec<SyncSender<R>>) = taken.into_iter().unzip();
            let mut results = commit(jobs).into_iter();
            for tx in senders {
                // Capacity one and one answer per job: the send never blocks.
                let _ = tx.try_send(results.next().unwrap_or_else(&lost));
            }
        }
        rx.try_recv().unwrap_or_else(|_| lost())
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use std::sync::Arc;
    use std::sync::atomic::{AtomicUsize, Ordering};

    use super::*;

    #[test]
    fn every_job_gets_its_own_result_and_concurrent_jobs_share_commits() {
        let group: Arc<GroupCommit<u32, u32>> = Arc::default();
        let commits = Arc::new(AtomicUsize::new(0));
        let threads: Vec<_> = (0..16u32)
            .map(|i| {
                let (group, commits) = (group.clone(), commits.clone());
                std::thread::spawn(move || {
                    group.submit(
                        i,
                        |jobs| {
                            commits.fetch_add(1, Ordering::SeqCst);
                            std::thread::sleep(std::time::Duration::from_millis(5));
                            jobs.into_iter().map(|j| j * 10).collect()
                        },
                        || u32::MAX,
                    )
                })
            })
            .collect();
        for (i, t) in threads.into_iter().enumerate() {
            assert_eq!(t.join().unwrap(), i as u32 * 10);
        }
        assert!(commits.load(Ordering::SeqCst) <= 16);
    }

    #[test]
    fn a_job_without_a_result_is_answered_as_lost() {
        let group: GroupCommit<u32, u32> = GroupCommit::default();
        assert_eq!(group.submit(1, |_| Vec::new(), || 99), 99);
    }
}
