//! The sharded in-memory map from key fingerprint to window state.

use crate::domain::{KeyHash, Source};
use std::collections::HashMap;
use std::hash::{BuildHasherDefault, Hasher};

/// Number of shards; a power of two.
pub const SHARDS: usize = 64;

/// What the index remembers of a key: when its window opened and a compact
/// summary of the kept row, so most duplicates need no read of the store.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Entry {
    /// Arrival of the first copy (window start), seconds since the epoch.
    pub first_seen: u32,
    /// Packed: bits 0–2 sources seen, bits 3–4 kept source, bit 5 "properties
    /// hash known", bits 6–31 a 26-bit hash of the last properties text
    /// folded in.
    meta: u32,
}

const PROPS_KNOWN: u32 = 1 << 5;
const HASH_BITS: u32 = 0x03ff_ffff;

impl Entry {
    /// An entry whose kept row's properties hash is known (written by this
    /// process).
    pub fn new(first_seen: u32, kept: Source, sources: u8, props_hash: u32) -> Self {
        let meta = Self::without_props(first_seen, kept, sources).meta
            | PROPS_KNOWN
            | ((props_hash & HASH_BITS) << 6);
        Self { first_seen, meta }
    }

    /// An entry rebuilt from the store: sources and kept source are read from
    /// the row, the properties are not (a duplicate carrying properties reads
    /// the kept row before merging).
    pub fn without_props(first_seen: u32, kept: Source, sources: u8) -> Self {
        let meta = u32::from(sources & 7) | (u32::from(kept.index()) << 3);
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

    /// Whether the properties hash is known.
    pub fn props_known(self) -> bool {
        self.meta & PROPS_KNOWN != 0
    }

    /// The 26-bit hash of the last properties text folded in (0 if unknown).
    pub fn props_hash(self) -> u32 {
        self.meta >> 6
    }

    /// Whether `props_hash` is known to be the hash of a properties text
    /// already folded in, so a copy carrying it has nothing to add.
    pub fn props_hash_matches(self, props_hash: u32) -> bool {
        self.props_known() && (self.meta >> 6) == (props_hash & HASH_BITS)
    }
}

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

    /// Keeps the later window when a rebuild meets a key twice.
    pub fn insert_latest(&mut self, key: KeyHash, entry: Entry) {
        let s = self.shard(&key);
        let slot = self.shards[s].entry(key).or_insert(entry);
        if slot.first_seen < entry.first_seen {
            *slot = entry;
        }
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
        Entry::without_props(first_seen, Source::Server, 2)
    }

    fn key(i: u32) -> KeyHash {
        KeyHash::of(1, "e", &i.to_string())
    }

    #[test]
    fn entry_packs_its_summary() {
        let e = Entry::new(100, Source::Server, 0b011, 0xdead_beef);
        assert!(e.props_known());
        assert_eq!(e.kept(), Source::Server);
        assert_eq!(e.sources(), 0b011);
        assert!(e.props_hash_matches(0xdead_beef));
        assert!(!e.props_hash_matches(0xdead_beee));
        let rebuilt = Entry::without_props(1, Source::Pixel, 0b101);
        assert_eq!((rebuilt.kept(), rebuilt.sources()), (Source::Pixel, 0b101));
        assert!(
            !rebuilt.props_hash_matches(0),
            "an unknown hash matches nothing"
        );
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
