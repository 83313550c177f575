//! The sharded in-memory map from key fingerprint to window state.

use crate::domain::{KeyHash, Source};
use std::collections::HashMap;
use std::hash::{BuildHasherDefault, Hasher};

/// Number of shards; a power of two.
pub const SHARDS: usize = 64;

/// What the index remembers of a key: when its window opened and a compact
/// summary of the kept row, so most duplicates need no read of the store.
///
/// A row with a secondary key has two entries (its id key and its
/// secondary key) that are updated apart: either may lag behind the row.
/// A lagging summary only ever costs a read of the row, never a wrong
/// answer: the sources seen and the merge count only grow, the kept source
/// only moves from server to pixel, and the writer re-reads the row before
/// any change it would make on the summary's word.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Entry {
    /// Arrival of the first copy (window start), seconds since the epoch.
    pub first_seen: u32,
    /// Packed: bits 0–2 sources seen, bits 3–4 kept source, bits 5–8 the
    /// number of property merges (saturating), bits 9–31 the fingerprint of
    /// the last copy folded in through this key (0: unknown).
    meta: u32,
}

const MERGE_SHIFT: u32 = 5;
const MERGE_MASK: u32 = 0xf;
const PRINT_SHIFT: u32 = 9;

/// Fingerprints kept in an [`Entry`] have this many bits.
pub const FINGERPRINT_BITS: u32 = 32 - PRINT_SHIFT;

impl Entry {
    /// An entry; `fingerprint` 0 means "unknown" (a rebuilt entry whose
    /// last copy was not stored).
    pub fn new(first_seen: u32, kept: Source, sources: u8, merges: u8, fingerprint: u32) -> Self {
        let meta = u32::from(sources & 7)
            | (u32::from(kept.index()) << 3)
            | (u32::from(merges).min(MERGE_MASK) << MERGE_SHIFT)
            | (fingerprint << PRINT_SHIFT);
        Self { first_seen, meta }
    }

    /// Mask of [`Source::bit`]s that sent a copy.
    pub fn sources(self) -> u8 {
        (self.meta & 7) as u8
    }

    /// The source of the kept copy.
    pub fn kept(self) -> Source {
        Source::from_index(((self.meta >> 3) & 3) as u8)
    }

    /// Property merges into the kept row so far (saturates at 15).
    pub fn merges(self) -> u8 {
        ((self.meta >> MERGE_SHIFT) & MERGE_MASK) as u8
    }

    /// The fingerprint of the last copy folded in, if known.
    pub fn fingerprint(self) -> Option<u32> {
        Some(self.meta >> PRINT_SHIFT).filter(|f| *f != 0)
    }

    /// Of two entries of one key, the one whose window opened later (the
    /// live one); `self` when both opened together.
    pub fn later(self, other: Entry) -> Entry {
        if other.first_seen > self.first_seen {
            other
        } else {
            self
        }
    }
}

/// What an import found in the store of its keys: each key's newest row,
/// as the entry a rebuild would give it (live while its window is open,
/// history after).
pub type History = HashMap<KeyHash, Entry>;

/// A hasher for keys that are already uniform: it passes 64 bits through.
#[derive(Default)]
pub struct PassThrough(u64);

impl Hasher for PassThrough {
    fn finish(&self) -> u64 {
        self.0
    }
    fn write(&mut self, bytes: &[u8]) {
        for b in bytes {
            self.0 = self.0.rotate_left(8) ^ u64::from(*b);
        }
    }
    fn write_u64(&mut self, n: u64) {
        self.0 = n;
    }
}

type Shard = HashMap<KeyHash, Entry, BuildHasherDefault<PassThrough>>;

/// Fingerprint → window state, split into shards by the fingerprint's high bits.
pub struct KeyIndex {
    shards: Vec<Shard>,
    sweep_cursor: usize,
}

impl Default for KeyIndex {
    fn default() -> Self {
        Self {
            shards: (0..SHARDS).map(|_| Shard::default()).collect(),
            sweep_cursor: 0,
        }
    }
}

impl KeyIndex {
    fn shard(&self, key: &KeyHash) -> usize {
        key.high() as usize & (SHARDS - 1)
    }

    /// The entry for `key`, expired or not.
    pub fn get(&self, key: &KeyHash) -> Option<Entry> {
        self.shards[self.shard(key)].get(key).copied()
    }

    /// Sets the entry for `key`.
    pub fn insert(&mut self, key: KeyHash, entry: Entry) {
        let s = self.shard(&key);
        self.shards[s].insert(key, entry);
    }

    /// Refreshes the entry of `key` if it still describes the window that
    /// opened at `entry.first_seen` (a reopened key is left alone), or sets
    /// it if the index no longer holds the key: a long local import lets
    /// the index go and touches rows it found in the store, and a stale
    /// entry from its lookup would then name the wrong kept copy.
    pub fn refresh(&mut self, key: KeyHash, entry: Entry) {
        let s = self.shard(&key);
        let slot = self.shards[s].entry(key).or_insert(entry);
        if slot.first_seen == entry.first_seen {
            *slot = entry;
        }
    }

    /// Keeps the later window when a rebuild meets a key twice.
    pub fn insert_latest(&mut self, key: KeyHash, entry: Entry) {
        let s = self.shard(&key);
        let slot = self.shards[s].entry(key).or_insert(entry);
        *slot = slot.later(entry);
    }

    /// Drops, from the next shard in turn, every key whose window opened at or
    /// before `cutoff` (seconds). Call it often: each call touches 1/SHARDS.
    pub fn sweep_one_shard(&mut self, cutoff: u32) -> usize {
        let shard = &mut self.shards[self.sweep_cursor];
        self.sweep_cursor = (self.sweep_cursor + 1) % SHARDS;
        let before = shard.len();
        shard.retain(|_, e| e.first_seen > cutoff);
        if shard.capacity() > 64 && shard.len() * 4 < shard.capacity() {
            shard.shrink_to_fit();
        }
        before - shard.len()
    }

    /// Number of keys held.
    pub fn len(&self) -> usize {
        self.shards.iter().map(HashMap::len).sum()
    }

    /// Whether no key is held.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Approximate heap bytes held by the slots (keys, entries, control bytes).
    pub fn memory_bytes(&self) -> usize {
        let slot = std::mem::size_of::<(KeyHash, Entry)>() + 1;
        self.shards
            .iter()
            .map(|s| buckets(s.capacity()) * slot)
            .sum()
    }
}

/// Buckets behind a hashbrown table of the given capacity (7/8 load, power of two).
fn buckets(capacity: usize) -> usize {
    match capacity {
        0 => 0,
        c if c < 8 => (c + 1).next_power_of_two(),
        c => (c * 8 / 7).next_power_of_two(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn unknown(first_seen: u32) -> Entry {
        Entry::new(first_seen, Source::Server, 2, 0, 0)
    }

    fn key(i: u32) -> KeyHash {
        KeyHash::of(1, "e", &i.to_string())
    }

    /// A refresh updates the same window, leaves a reopened one alone and
    /// sets a key the index let go.
    #[test]
    fn a_refresh_keeps_to_its_window_and_sets_a_forgotten_key() {
        let mut index = KeyIndex::default();
        let pixel = Entry::new(100, Source::Pixel, 3, 0, 0);
        index.insert(key(1), unknown(100));
        index.refresh(key(1), pixel);
        assert_eq!(index.get(&key(1)), Some(pixel));
        index.insert(key(2), unknown(200));
        index.refresh(key(2), pixel);
        assert_eq!(index.get(&key(2)), Some(unknown(200)));
        index.refresh(key(3), pixel);
        assert_eq!(index.get(&key(3)), Some(pixel));
    }

    #[test]
    fn entry_packs_its_summary() {
        let print = (1 << FINGERPRINT_BITS) - 1;
        let e = Entry::new(100, Source::Server, 0b011, 3, print);
        assert_eq!(e.kept(), Source::Server);
        assert_eq!(e.sources(), 0b011);
        assert_eq!(e.merges(), 3);
        assert_eq!(e.fingerprint(), Some(print));
        let rebuilt = Entry::new(1, Source::Pixel, 0b101, 200, 0);
        assert_eq!((rebuilt.kept(), rebuilt.sources()), (Source::Pixel, 0b101));
        assert_eq!(rebuilt.merges(), 15, "saturates");
        assert_eq!(rebuilt.fingerprint(), None, "unknown");
    }

    #[test]
    fn sweep_drops_only_expired_windows() {
        let mut idx = KeyIndex::default();
        for i in 0..10_000 {
            idx.insert(key(i), unknown(if i % 2 == 0 { 10 } else { 20 }));
        }
        let dropped: usize = (0..SHARDS).map(|_| idx.sweep_one_shard(10)).sum();
        assert_eq!(dropped, 5_000);
        assert_eq!(idx.len(), 5_000);
        assert!(idx.get(&key(1)).is_some());
        assert!(idx.get(&key(0)).is_none());
    }

    #[test]
    fn memory_stays_within_48_bytes_a_key() {
        assert_eq!(std::mem::size_of::<(KeyHash, Entry)>(), 20);
        let mut idx = KeyIndex::default();
        for n in [1_000u32, 50_000, 200_000] {
            while idx.len() < n as usize {
                let i = idx.len() as u32;
                idx.insert(key(i), unknown(1));
            }
            let per_key = idx.memory_bytes() as f64 / idx.len() as f64;
            assert!(per_key <= 48.5, "{per_key} bytes a key at {n} keys");
        }
    }

    #[test]
    fn rebuild_keeps_the_latest_window() {
        let mut idx = KeyIndex::default();
        idx.insert_latest(key(1), unknown(50));
        idx.insert_latest(key(1), unknown(40));
        assert_eq!(idx.get(&key(1)).unwrap().first_seen, 50);
    }
}
