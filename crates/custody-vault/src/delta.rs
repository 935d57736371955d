//! The blind-index delta: new index entries appended in write order, merged into the sorted
//! index in large batches.
//!
//! Blind-index terms are HMACs, so the entries a batch of records adds land on leaves spread
//! uniformly over the whole index. redb copies every leaf a transaction touches, so with the
//! index sorted by term each group commit rewrote a fixed share of *all* its leaves: at a
//! million users (three terms each) one commit of a few thousand users rewrote about half of
//! the ~60k leaves, and seeding slowed from 17k to 11k users/s as the vault grew.
//!
//! Here a commit appends its new entries to a table keyed by a sequence number, which only
//! touches the last leaf. [`IndexDelta`] mirrors that table in memory, sorted by entry, so a
//! search reads the delta and the sorted index together. Once the delta holds
//! [`IndexDelta::merge_at`] entries, one transaction moves all of them into the sorted index in
//! key order: each leaf is then rewritten once for the many entries that fall on it, instead
//! of once per commit.
//!
//! Consistency rests on three rules, kept by `RedbStore`:
//! - Only one index-writing transaction runs at a time, and it publishes its delta changes
//!   ([`IndexDelta::apply`]) after it committed and before the next index writer begins, so a
//!   writer always sees the delta as committed.
//! - A search reads the in-memory delta *before* it opens its read transaction: an entry a
//!   merge moved is then either still in the delta or already in the snapshot.
//! - A write is acknowledged only after its delta changes are published, so a search that
//!   starts after the acknowledgement finds it.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::ops::Bound;

/// The default number of delta entries that triggers a merge: ~87k users of three searchable
/// fields, ~30 MiB of memory for the mirror.
pub(crate) const MERGE_AT: usize = 1 << 18;

/// The in-memory mirror of the delta table: entry (index key) to its sequence number.
#[derive(Debug)]
pub(crate) struct IndexDelta {
    entries: BTreeMap<Vec<u8>, u64>,
    next_seq: u64,
    merge_at: usize,
}

/// What one index-writing transaction changed in the delta, published only once it committed.
#[derive(Debug, Default)]
pub(crate) struct DeltaChanges {
    added: HashMap<Vec<u8>, u64>,
    removed: HashSet<Vec<u8>>,
    next_seq: Option<u64>,
}

/// What a transaction must do to the delta table for one index change.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum DeltaOp {
    /// Insert the entry under this sequence number.
    Append(u64),
    /// Remove the row with this sequence number.
    Drop(u64),
    /// Nothing: the entry is already in the delta, or (for a removal) never was.
    Nothing,
}

impl IndexDelta {
    /// A delta holding `rows` (sequence number, entry), as read from the delta table at open.
    pub(crate) fn from_rows(rows: impl IntoIterator<Item = (u64, Vec<u8>)>, merge_at: usize) -> Self {
        let mut entries = BTreeMap::new();
        let mut next_seq = 0;
        for (seq, key) in rows {
            next_seq = next_seq.max(seq + 1);
            entries.insert(key, seq);
        }
        Self { entries, next_seq, merge_at: merge_at.max(1) }
    }

    /// Sets the number of entries that makes a merge due.
    pub(crate) fn set_merge_at(&mut self, entries: usize) {
        self.merge_at = entries.max(1);
    }

    /// Entries held.
    pub(crate) fn len(&self) -> usize {
        self.entries.len()
    }

    /// Whether the delta is big enough to merge.
    pub(crate) fn merge_due(&self) -> bool {
        self.entries.len() >= self.merge_at
    }

    /// Every entry, in key order (what a merge inserts into the sorted index).
    pub(crate) fn keys(&self) -> impl Iterator<Item = &[u8]> {
        self.entries.keys().map(Vec::as_slice)
    }

    /// The entries starting with `prefix`, in key order.
    pub(crate) fn with_prefix<'a>(&'a self, prefix: &'a [u8]) -> impl Iterator<Item = &'a [u8]> {
        self.entries
            .range::<[u8], _>((Bound::Included(prefix), Bound::Unbounded))
            .map(|(k, _)| k.as_slice())
            .take_while(move |k| k.starts_with(prefix))
    }

    /// The delta-table change that adds `key`, as seen by the transaction holding `changes`.
    pub(crate) fn add(&self, changes: &mut DeltaChanges, key: &[u8]) -> DeltaOp {
        let held =
            changes.added.contains_key(key) || (self.entries.contains_key(key) && !changes.removed.contains(key));
        if held {
            return DeltaOp::Nothing;
        }
        let seq = changes.next_seq.unwrap_or(self.next_seq);
        changes.next_seq = Some(seq + 1);
        changes.added.insert(key.to_vec(), seq);
        DeltaOp::Append(seq)
    }

    /// The delta-table change that removes `key`, as seen by the transaction holding `changes`.
    /// The caller removes it from the sorted index too: an entry may be in both.
    pub(crate) fn remove(&self, changes: &mut DeltaChanges, key: &[u8]) -> DeltaOp {
        if let Some(seq) = changes.added.remove(key) {
            return DeltaOp::Drop(seq);
        }
        match self.entries.get(key) {
            Some(&seq) if !changes.removed.contains(key) => {
                changes.removed.insert(key.to_vec());
                DeltaOp::Drop(seq)
            }
            _ => DeltaOp::Nothing,
        }
    }

    /// Publishes a committed transaction's changes.
    pub(crate) fn apply(&mut self, changes: DeltaChanges) {
        for key in changes.removed {
            self.entries.remove(&key);
        }
        self.entries.extend(changes.added);
        if let Some(next) = changes.next_seq {
            self.next_seq = next;
        }
    }

    /// Empties the delta once a merge moved every entry into the sorted index.
    pub(crate) fn clear(&mut self) {
        self.entries.clear();
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use proptest::prelude::*;
    use std::collections::BTreeSet;

    fn key(i: u8) -> Vec<u8> {
        vec![b'k', i]
    }

    #[test]
    fn a_removal_in_the_same_transaction_undoes_the_add() {
        let mut d = IndexDelta::from_rows([], 8);
        let mut c = DeltaChanges::default();
        assert_eq!(d.add(&mut c, &key(1)), DeltaOp::Append(0));
        assert_eq!(d.add(&mut c, &key(1)), DeltaOp::Nothing);
        assert_eq!(d.remove(&mut c, &key(1)), DeltaOp::Drop(0));
        assert_eq!(d.add(&mut c, &key(2)), DeltaOp::Append(1));
        d.apply(c);
        assert_eq!(d.keys().collect::<Vec<_>>(), vec![key(2).as_slice()]);
    }

    #[test]
    fn rows_read_back_continue_the_sequence() {
        let d = IndexDelta::from_rows([(4, key(1)), (9, key(2))], 8);
        let mut c = DeltaChanges::default();
        assert_eq!(d.add(&mut c, &key(3)), DeltaOp::Append(10));
        assert_eq!(d.remove(&mut c, &key(1)), DeltaOp::Drop(4));
        assert_eq!(d.remove(&mut c, &key(1)), DeltaOp::Nothing);
        assert_eq!(d.add(&mut c, &key(2)), DeltaOp::Nothing);
    }

    #[test]
    fn prefix_reads_stop_at_the_prefix() {
        let d = IndexDelta::from_rows([(0, b"ab1".to_vec()), (1, b"ab2".to_vec()), (2, b"ac".to_vec())], 8);
        assert_eq!(d.with_prefix(b"ab").collect::<Vec<_>>(), vec![b"ab1".as_slice(), b"ab2"]);
        assert_eq!(d.with_prefix(b"b").count(), 0);
    }

    proptest! {
        /// Across transactions of adds and removes, some abandoned (a failed commit), the
        /// delta holds exactly the entries a plain set would, and the delta table (replayed
        /// from the ops) holds each of them once under the sequence number the mirror knows.
        #[test]
        fn the_delta_tracks_a_set(
            txns in proptest::collection::vec(
                (proptest::collection::vec((any::<bool>(), 0u8..12), 0..10), any::<bool>()), 0..30)
        ) {
            let mut d = IndexDelta::from_rows([], 1000);
            let mut set = BTreeSet::new();
            let mut table: BTreeMap<u64, Vec<u8>> = BTreeMap::new();
            for (ops, commits) in txns {
                let mut c = DeltaChanges::default();
                let (mut s, mut t) = (set.clone(), table.clone());
                for (is_add, k) in ops {
                    let op = if is_add { s.insert(key(k)); d.add(&mut c, &key(k)) }
                        else { s.remove(&key(k)); d.remove(&mut c, &key(k)) };
                    match op {
                        DeltaOp::Append(seq) => prop_assert!(t.insert(seq, key(k)).is_none()),
                        DeltaOp::Drop(seq) => prop_assert_eq!(t.remove(&seq), Some(key(k))),
                        DeltaOp::Nothing => {}
                    }
                }
                if commits {
                    d.apply(c);
                    (set, table) = (s, t);
                }
                let held: BTreeSet<Vec<u8>> = d.keys().map(<[u8]>::to_vec).collect();
                prop_assert_eq!(&held, &set);
                let rows: BTreeMap<Vec<u8>, u64> = table.iter().map(|(s, k)| (k.clone(), *s)).collect();
                prop_assert_eq!(rows.len(), table.len());
                prop_assert_eq!(&rows, &d.entries);
            }
        }
    }
}
