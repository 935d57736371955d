//! The blind-index delta: new index entries appended in write order, merged into the sorted
//! index in large batches.
//!
//! Blind-index terms are HMACs, so the entries a batch of records adds land on leaves spread
//! uniformly over the whole index. redb copies every leaf a transaction touches, so with the
//! index sorted by term each group commit rewrote a fixed share of *all* its leaves: at a
//! million users (three terms each) one commit of a few thousand users rewrote about half of
//! the ~60k leaves, and seeding slowed from 17k to 11k users/s as the vault grew.
//!
//! Here a commit appends its new entries to a table keyed by a sequence number, in rows of up
//! to 256 entries, which only touches the table's last leaves. [`IndexDelta`] mirrors that
//! table in memory, sorted by entry, so a search reads the delta and the sorted index
//! together. Once the delta holds
//! [`MERGE_AT`] entries a merge *round* begins: it copies the entries then held into the sorted
//! index in key order, in steps of an eighth of that, one transaction each, between which
//! record writes take their turns. Each leaf is rewritten once per round for the many entries
//! that fall on it, instead of once per commit, and no write waits for a whole round. The
//! round's last step deletes the rows it copied; until then the copied entries stay in the
//! delta too, so a removal still finds the row it must edit, and a crash mid-round only means
//! the next round copies some entries again (inserting an entry twice is harmless).
//!
//! Consistency rests on three rules, kept by `RedbStore`:
//! - Only one index-writing transaction runs at a time, and it publishes its delta changes
//!   ([`IndexDelta::apply`]) after it committed and before the next index writer begins, so a
//!   writer always sees the delta as committed.
//! - A search reads the in-memory delta *before* it opens its read transaction: an entry a
//!   merge moved is then either still in the delta or already in the snapshot.
//! - A write is acknowledged only after its delta changes are published, so a search that
//!   starts after the acknowledgement finds it.

use std::collections::{BTreeMap, BTreeSet, HashSet};
use std::ops::Bound;

/// The default number of delta entries that starts a merge round: ~175k users of three
/// searchable fields, ~60 MiB of memory for the mirror. Seeding a million users ran 2-6% faster
/// at this size than at half of it (`SCALE.md`): fewer rounds, so fewer leaf rewrites.
pub(crate) const MERGE_AT: usize = 1 << 19;

/// The in-memory mirror of the delta table: entry (index key) to the sequence number of the
/// row holding it.
#[derive(Debug)]
pub(crate) struct IndexDelta {
    entries: BTreeMap<Vec<u8>, u64>,
    next_seq: u64,
    merge_at: usize,
    step: usize,
    round: Option<Round>,
}

/// A merge round in progress: it copies the entries of rows before `end_seq`, in key order.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Round {
    end_seq: u64,
    /// The last entry copied so far.
    cursor: Option<Vec<u8>>,
}

/// One step of a merge round: what its transaction does.
#[derive(Debug)]
pub(crate) struct MergeStep {
    /// Entries to insert into the sorted index, in key order.
    pub(crate) keys: Vec<Vec<u8>>,
    /// Set on the round's last step: delete the delta rows before this sequence number.
    pub(crate) drop_rows_before: Option<u64>,
    round: Round,
}

/// Most entries one delta row holds. A transaction's new entries go in as few rows as this
/// allows (a bulk create of 1,000 users is 12 inserts, not 3,000), while removing one entry
/// later rewrites a row of at most ~16 KiB.
const ROW_ENTRIES: usize = 256;

/// What one index-writing transaction changes in the delta. Its new entries become new rows
/// of up to [`ROW_ENTRIES`]; its removals rewrite the rows that held them. Published to the
/// mirror only once the transaction committed.
#[derive(Debug, Default)]
pub(crate) struct DeltaChanges {
    added: BTreeSet<Vec<u8>>,
    removed: HashSet<Vec<u8>>,
    /// Committed rows that lose an entry.
    edited: BTreeSet<u64>,
    /// The sequence number of the first row `added` was written as; the rest follow it.
    first_row: Option<u64>,
}

/// The delta-table writes a transaction's [`DeltaChanges`] need: rows to read back and
/// rewrite without their removed entries, and the new rows.
#[derive(Debug)]
pub(crate) struct DeltaWrites {
    /// Rows that lost entries: rewrite each with [`IndexDelta::keep`], or drop it if empty.
    pub(crate) edited: Vec<u64>,
    /// The new rows (sequence number, packed entries).
    pub(crate) rows: Vec<(u64, Vec<u8>)>,
}

/// Packs index entries into one delta row: each as a big-endian `u16` length, then its bytes.
/// Hand-written because the row is read back at open and on every edit, and the format has
/// nothing to negotiate: postcard would add a dependency on its varint layout for no gain.
pub(crate) fn pack<'a>(keys: impl IntoIterator<Item = &'a [u8]>) -> Vec<u8> {
    let mut out = Vec::new();
    for k in keys {
        // Index entries are a collection name, a field name, a 32-byte term and a record id,
        // each bounded far below 64 KiB.
        let len = u16::try_from(k.len()).unwrap_or(u16::MAX);
        out.extend_from_slice(&len.to_be_bytes());
        out.extend_from_slice(k.get(..usize::from(len)).unwrap_or(k));
    }
    out
}

/// The entries of a packed delta row, or `None` if the row is damaged.
pub(crate) fn unpack(mut row: &[u8]) -> Option<Vec<&[u8]>> {
    let mut out = Vec::new();
    while !row.is_empty() {
        let (len, rest) = row.split_first_chunk::<2>()?;
        let len = usize::from(u16::from_be_bytes(*len));
        let key = rest.get(..len)?;
        out.push(key);
        row = rest.get(len..)?;
    }
    Some(out)
}

impl IndexDelta {
    /// A delta holding `rows` (sequence number, entries), as read from the delta table at open.
    pub(crate) fn from_rows(rows: impl IntoIterator<Item = (u64, Vec<Vec<u8>>)>, merge_at: usize) -> Self {
        let mut entries = BTreeMap::new();
        let mut next_seq = 0;
        for (seq, keys) in rows {
            next_seq = next_seq.max(seq + 1);
            entries.extend(keys.into_iter().map(|k| (k, seq)));
        }
        Self { entries, next_seq, merge_at: merge_at.max(1), step: (merge_at / 8).max(1), round: None }
    }

    /// Sets the number of entries that starts a merge round, and the step to an eighth of it.
    pub(crate) fn set_merge_at(&mut self, entries: usize) {
        self.merge_at = entries.max(1);
        self.step = (entries / 8).max(1);
    }

    /// Entries held.
    pub(crate) fn len(&self) -> usize {
        self.entries.len()
    }

    /// Whether a merge step is due: a round is under way, or the delta is big enough to begin one.
    pub(crate) fn merge_due(&self) -> bool {
        self.round.is_some() || self.entries.len() >= self.merge_at
    }

    /// Every entry, in key order.
    #[cfg(test)]
    pub(crate) fn keys(&self) -> impl Iterator<Item = &[u8]> {
        self.entries.keys().map(Vec::as_slice)
    }

    /// The next step of the merge round under way (beginning one if the delta is big enough),
    /// or `None` if no merge is due.
    pub(crate) fn next_step(&self) -> Option<MergeStep> {
        let round = match &self.round {
            Some(r) => r.clone(),
            None if self.entries.len() >= self.merge_at => Round { end_seq: self.next_seq, cursor: None },
            None => return None,
        };
        let from = match &round.cursor {
            Some(c) => Bound::Excluded(c.as_slice()),
            None => Bound::Unbounded,
        };
        let mut keys: Vec<Vec<u8>> = self
            .entries
            .range::<[u8], _>((from, Bound::Unbounded))
            .filter(|(_, seq)| **seq < round.end_seq)
            .map(|(k, _)| k.clone())
            .take(self.step + 1)
            .collect();
        let last = keys.len() <= self.step;
        keys.truncate(self.step);
        Some(MergeStep { keys, drop_rows_before: last.then_some(round.end_seq), round })
    }

    /// Records that `step`'s transaction committed: the round moves on, and after its last
    /// step the entries it copied leave the delta.
    pub(crate) fn step_done(&mut self, step: MergeStep) {
        match step.drop_rows_before {
            Some(end) => {
                self.entries.retain(|_, seq| *seq >= end);
                self.round = None;
            }
            None => {
                let cursor = step.keys.into_iter().last().or(step.round.cursor);
                self.round = Some(Round { end_seq: step.round.end_seq, cursor });
            }
        }
    }

    /// The entries starting with `prefix`, in key order.
    pub(crate) fn with_prefix<'a>(&'a self, prefix: &'a [u8]) -> impl Iterator<Item = &'a [u8]> {
        self.entries
            .range::<[u8], _>((Bound::Included(prefix), Bound::Unbounded))
            .map(|(k, _)| k.as_slice())
            .take_while(move |k| k.starts_with(prefix))
    }

    /// Whether `key` is held, as seen by the transaction holding `changes`.
    fn holds(&self, changes: &DeltaChanges, key: &[u8]) -> bool {
        changes.added.contains(key) || (self.entries.contains_key(key) && !changes.removed.contains(key))
    }

    /// Adds `key` in the transaction holding `changes` (nothing if it is already held).
    pub(crate) fn add(&self, changes: &mut DeltaChanges, key: &[u8]) {
        if !self.holds(changes, key) {
            changes.added.insert(key.to_vec());
        }
    }

    /// Removes `key` in the transaction holding `changes`. The caller removes it from the
    /// sorted index too: an entry may be in both.
    pub(crate) fn remove(&self, changes: &mut DeltaChanges, key: &[u8]) {
        if changes.added.remove(key) {
            return;
        }
        if let Some(&seq) = self.entries.get(key)
            && changes.removed.insert(key.to_vec())
        {
            changes.edited.insert(seq);
        }
    }

    /// The delta-table writes that make `changes` durable, to run in their transaction.
    pub(crate) fn writes(&self, changes: &mut DeltaChanges) -> DeltaWrites {
        let added: Vec<&Vec<u8>> = changes.added.iter().collect();
        let rows = (self.next_seq..)
            .zip(added.chunks(ROW_ENTRIES))
            .map(|(seq, keys)| (seq, pack(keys.iter().map(|k| k.as_slice()))))
            .collect();
        changes.first_row = Some(self.next_seq);
        DeltaWrites { edited: changes.edited.iter().copied().collect(), rows }
    }

    /// Whether an entry of an edited row stays in it (it was not removed by `changes`).
    pub(crate) fn keep(changes: &DeltaChanges, key: &[u8]) -> bool {
        !changes.removed.contains(key)
    }

    /// Publishes a committed transaction's changes.
    pub(crate) fn apply(&mut self, changes: DeltaChanges) {
        for key in changes.removed {
            self.entries.remove(&key);
        }
        if let Some(first) = changes.first_row {
            // The rows `writes` made: `added` in order, ROW_ENTRIES to a row.
            let rows = changes.added.len().div_ceil(ROW_ENTRIES) as u64;
            let seq = |i: usize| first + (i / ROW_ENTRIES) as u64;
            self.entries.extend(changes.added.into_iter().enumerate().map(|(i, k)| (k, seq(i))));
            self.next_seq = first + rows;
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use proptest::prelude::*;

    fn key(i: u8) -> Vec<u8> {
        vec![b'k', i]
    }

    /// Runs `changes` against `table` as a transaction would, then publishes them.
    fn commit(d: &mut IndexDelta, table: &mut BTreeMap<u64, Vec<u8>>, mut changes: DeltaChanges) {
        let w = d.writes(&mut changes);
        for seq in w.edited {
            let kept = pack(unpack(&table[&seq]).unwrap().into_iter().filter(|k| IndexDelta::keep(&changes, k)));
            if kept.is_empty() {
                table.remove(&seq);
            } else {
                table.insert(seq, kept);
            }
        }
        for (seq, row) in w.rows {
            assert!(table.insert(seq, row).is_none(), "a new row never overwrites one");
        }
        d.apply(changes);
    }

    #[test]
    fn a_removal_in_the_same_transaction_undoes_the_add() {
        let mut d = IndexDelta::from_rows([], 8);
        let mut table = BTreeMap::new();
        let mut c = DeltaChanges::default();
        d.add(&mut c, &key(1));
        d.add(&mut c, &key(1));
        d.remove(&mut c, &key(1));
        d.add(&mut c, &key(2));
        commit(&mut d, &mut table, c);
        assert_eq!(d.keys().collect::<Vec<_>>(), vec![key(2).as_slice()]);
        assert_eq!(table.len(), 1);
    }

    #[test]
    fn rows_read_back_continue_the_sequence() {
        let d = IndexDelta::from_rows([(4, vec![key(1)]), (9, vec![key(2), key(3)])], 8);
        let mut c = DeltaChanges::default();
        d.add(&mut c, &key(4));
        d.remove(&mut c, &key(3));
        d.remove(&mut c, &key(3));
        let w = d.writes(&mut c);
        assert_eq!(w.edited, vec![9]);
        assert_eq!(w.rows.iter().map(|r| r.0).collect::<Vec<_>>(), vec![10]);
    }

    #[test]
    fn many_new_entries_fill_rows_of_bounded_size() {
        let mut d = IndexDelta::from_rows([(3, vec![b"old".to_vec()])], 100_000);
        let mut table = BTreeMap::new();
        let mut c = DeltaChanges::default();
        for i in 0..(ROW_ENTRIES * 2 + 1) as u32 {
            d.add(&mut c, &i.to_be_bytes());
        }
        commit(&mut d, &mut table, c);
        let sizes: Vec<(u64, usize)> = table.iter().map(|(s, r)| (*s, unpack(r).unwrap().len())).collect();
        assert_eq!(sizes, vec![(4, ROW_ENTRIES), (5, ROW_ENTRIES), (6, 1)]);
        assert_eq!(d.entries[&(ROW_ENTRIES as u32).to_be_bytes().to_vec()], 5);
        assert_eq!(d.next_seq, 7);
        // A removal rewrites only the row that held the entry.
        let mut c = DeltaChanges::default();
        d.remove(&mut c, &0u32.to_be_bytes());
        assert_eq!(d.writes(&mut c).edited, vec![4]);
    }

    #[test]
    fn packed_rows_read_back_and_damage_is_noticed() {
        let keys = [b"a".as_slice(), b"", &[7u8; 300]];
        let row = pack(keys);
        assert_eq!(unpack(&row).unwrap(), keys.to_vec());
        assert!(unpack(&row[..row.len() - 1]).is_none());
        assert!(unpack(&[0]).is_none());
        assert_eq!(unpack(&[]).unwrap(), Vec::<&[u8]>::new());
    }

    #[test]
    fn prefix_reads_stop_at_the_prefix() {
        let d = IndexDelta::from_rows([(0, vec![b"ab1".to_vec(), b"ab2".to_vec()]), (1, vec![b"ac".to_vec()])], 8);
        assert_eq!(d.with_prefix(b"ab").collect::<Vec<_>>(), vec![b"ab1".as_slice(), b"ab2"]);
        assert_eq!(d.with_prefix(b"b").count(), 0);
    }

    proptest! {
        /// Packed rows read back as the entries packed, and any bytes at all read back as
        /// entries or as damage, never a panic.
        #[test]
        fn rows_round_trip_and_any_bytes_are_safe(
            keys in proptest::collection::vec(proptest::collection::vec(any::<u8>(), 0..80), 0..20),
            junk in proptest::collection::vec(any::<u8>(), 0..200),
        ) {
            let row = pack(keys.iter().map(Vec::as_slice));
            prop_assert_eq!(unpack(&row).unwrap(), keys.iter().map(Vec::as_slice).collect::<Vec<_>>());
            let _ = unpack(&junk);
        }

        /// Across transactions of adds and removes, some abandoned (a failed commit), the
        /// delta holds exactly the entries a plain set would, and the delta table holds each
        /// of them once, in the row the mirror names; reading the table back gives the same.
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
                let mut s = set.clone();
                for (is_add, k) in ops {
                    if is_add {
                        s.insert(key(k));
                        d.add(&mut c, &key(k));
                    } else {
                        s.remove(&key(k));
                        d.remove(&mut c, &key(k));
                    }
                }
                if commits {
                    commit(&mut d, &mut table, c);
                    set = s;
                }
                let held: BTreeSet<Vec<u8>> = d.keys().map(<[u8]>::to_vec).collect();
                prop_assert_eq!(&held, &set);
                let rows: Vec<(u64, Vec<Vec<u8>>)> = table
                    .iter()
                    .map(|(seq, row)| (*seq, unpack(row).unwrap().into_iter().map(<[u8]>::to_vec).collect()))
                    .collect();
                let in_table: usize = rows.iter().map(|(_, keys)| keys.len()).sum();
                prop_assert_eq!(in_table, set.len());
                let reread = IndexDelta::from_rows(rows, 1000);
                prop_assert_eq!(&reread.entries, &d.entries);
            }
        }
    }
}
