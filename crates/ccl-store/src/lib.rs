//! The transactional store of ccl: named maps of byte keys to byte values, ordered by key.
//!
//! - A [`Tx`] reads a consistent snapshot of every map (the state at its read version), buffers
//!   its writes, and records what it read.
//! - [`Store::commit`] validates the reads optimistically (each key read, and each range scanned,
//!   must be unchanged at commit time), then applies the writes atomically at the next version
//!   (= seqno) and returns the [`WriteSet`] that goes into the ledger. Validating every read against
//!   the state at commit time makes every committed transaction equivalent to running it alone at
//!   its commit point: the history is serializable.
//! - Maps are ordered (range scans and pagination by key), and states are persistent (imbl), so
//!   keeping the states of the uncommitted suffix for rollback, or a reader's snapshot, costs O(1).
//!
//! Maps whose name starts with `public:` are written to the ledger in the clear; all others are
//! encrypted there. That is a property of the map's name, decided in one place
//! ([`ccl_ledger::entry::is_public_map`]).

use bytes::Bytes;
use ccl_ledger::entry::MapWrites;
use std::collections::{BTreeMap, HashMap};
use std::ops::Bound;
use std::sync::{Arc, RwLock};

/// Largest key, in bytes.
pub const MAX_KEY_SIZE: usize = 64 << 10;
/// Largest value, in bytes.
pub const MAX_VALUE_SIZE: usize = 16 << 20;
/// Largest write set of one transaction (keys and values), in bytes.
pub const MAX_WRITE_SET_SIZE: usize = 32 << 20;
/// Longest map name.
pub const MAX_MAP_NAME: usize = 256;

/// A value and the version (seqno) that last wrote it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Versioned {
    pub version: u64,
    pub value: Bytes,
}

/// One map's state.
#[derive(Clone, Debug, Default)]
pub struct MapState {
    entries: imbl::OrdMap<Bytes, Versioned>,
    /// Version of the last transaction that wrote to this map.
    last_write: u64,
}

impl MapState {
    pub fn get(&self, key: &[u8]) -> Option<&Versioned> {
        self.entries.get(key)
    }
    pub fn len(&self) -> usize {
        self.entries.len()
    }
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }
    pub fn last_write(&self) -> u64 {
        self.last_write
    }
    /// Entries in key order within `range`.
    pub fn range<'a>(
        &'a self,
        range: (Bound<&'a [u8]>, Bound<&'a [u8]>),
    ) -> impl DoubleEndedIterator<Item = (&'a Bytes, &'a Versioned)> + 'a {
        self.entries.range::<_, [u8]>(range)
    }
    pub fn iter(&self) -> impl Iterator<Item = (&Bytes, &Versioned)> {
        self.entries.iter()
    }
}

/// The state of every map at one version. Cloning is O(1).
#[derive(Clone, Debug, Default)]
pub struct State {
    version: u64,
    maps: imbl::OrdMap<Arc<str>, MapState>,
}

impl State {
    pub fn version(&self) -> u64 {
        self.version
    }
    pub fn map(&self, name: &str) -> Option<&MapState> {
        self.maps.get(name)
    }
    pub fn get(&self, map: &str, key: &[u8]) -> Option<&Versioned> {
        self.map(map)?.get(key)
    }
    pub fn maps(&self) -> impl Iterator<Item = (&Arc<str>, &MapState)> {
        self.maps.iter()
    }

    /// Applies writes at `version` (which must follow this state's version).
    pub fn apply(&mut self, version: u64, maps: &[MapWrites<'_>]) {
        self.apply_inner(version, maps, None);
    }

    /// Applies writes at `version` and returns what undoes them.
    fn apply_with_undo(&mut self, version: u64, maps: &[MapWrites<'_>]) -> Undo {
        let mut undo = Undo {
            version,
            prev_version: self.version,
            maps: Vec::new(),
            entries: Vec::new(),
        };
        self.apply_inner(version, maps, Some(&mut undo));
        undo
    }

    fn apply_inner(&mut self, version: u64, maps: &[MapWrites<'_>], mut undo: Option<&mut Undo>) {
        assert!(version > self.version, "versions only grow");
        for m in maps {
            let name: Arc<str> = Arc::from(m.name);
            if let Some(u) = undo.as_deref_mut() {
                u.maps
                    .push((name.clone(), self.maps.get(m.name).map(|ms| ms.last_write)));
            }
            let ms = self.maps.entry(name.clone()).or_default();
            ms.last_write = version;
            for (k, v) in &m.writes {
                let prev = ms.entries.insert(
                    Bytes::copy_from_slice(k),
                    Versioned {
                        version,
                        value: Bytes::copy_from_slice(v),
                    },
                );
                if let Some(u) = undo.as_deref_mut() {
                    u.entries
                        .push((name.clone(), Bytes::copy_from_slice(k), prev));
                }
            }
            for k in &m.removes {
                let prev = ms.entries.remove(*k);
                if let Some(u) = undo.as_deref_mut() {
                    u.entries
                        .push((name.clone(), Bytes::copy_from_slice(k), prev));
                }
            }
        }
        self.version = version;
    }

    /// Reverts the writes `undo` recorded (the last ones applied).
    fn undo(&mut self, undo: &Undo) {
        assert_eq!(self.version, undo.version, "undo in reverse order");
        for (map, key, prev) in undo.entries.iter().rev() {
            let ms = self.maps.entry(map.clone()).or_default();
            match prev {
                Some(v) => ms.entries.insert(key.clone(), v.clone()),
                None => ms.entries.remove(&key[..]),
            };
        }
        for (map, last_write) in undo.maps.iter().rev() {
            match last_write {
                Some(w) => {
                    if let Some(ms) = self.maps.get_mut(&**map) {
                        ms.last_write = *w;
                    }
                }
                None => {
                    self.maps.remove(&**map);
                }
            }
        }
        self.version = undo.prev_version;
    }

    /// Builds a state from a snapshot's maps.
    pub fn from_snapshot<'a>(
        version: u64,
        maps: impl IntoIterator<Item = ccl_ledger::snapshot::SnapshotMap<'a>>,
    ) -> Self {
        let mut s = State {
            version,
            maps: imbl::OrdMap::new(),
        };
        for m in maps {
            let ms = s.maps.entry(Arc::from(m.name)).or_default();
            ms.last_write = m.version;
            for (k, ver, v) in m.entries {
                ms.entries.insert(
                    Bytes::copy_from_slice(k),
                    Versioned {
                        version: ver,
                        value: Bytes::copy_from_slice(v),
                    },
                );
            }
        }
        s
    }

    /// The maps as a snapshot writes them (in name, then key, order).
    pub fn snapshot_maps(&self) -> Vec<ccl_ledger::snapshot::SnapshotMap<'_>> {
        self.maps
            .iter()
            .map(|(name, ms)| ccl_ledger::snapshot::SnapshotMap {
                name,
                version: ms.last_write,
                entries: ms
                    .entries
                    .iter()
                    .map(|(k, v)| (&k[..], v.version, &v.value[..]))
                    .collect(),
            })
            .collect()
    }
}

/// Why a transaction did not commit.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TxError {
    #[error("conflict: {0} changed since the transaction read it; retry")]
    Conflict(String),
    #[error("{what} of {size} bytes exceeds the limit of {limit}")]
    TooLarge {
        what: &'static str,
        size: usize,
        limit: usize,
    },
    #[error("invalid map name {0:?}")]
    BadMapName(String),
}

#[derive(Debug, Clone)]
struct RangeRead {
    map: Arc<str>,
    start: Bound<Bytes>,
    end: Bound<Bytes>,
    /// (key, version) seen, in order.
    seen: Vec<(Bytes, u64)>,
}

/// The writes of a committed transaction, by map name then key (`None` = removed).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct WriteSet {
    pub read_version: u64,
    pub maps: BTreeMap<Arc<str>, BTreeMap<Bytes, Option<Bytes>>>,
}

impl WriteSet {
    /// The write set in the ledger's terms.
    pub fn map_writes(&self) -> Vec<MapWrites<'_>> {
        self.maps
            .iter()
            .map(|(name, kv)| MapWrites {
                name,
                read_version: self.read_version,
                writes: kv
                    .iter()
                    .filter_map(|(k, v)| v.as_ref().map(|v| (&k[..], &v[..])))
                    .collect(),
                removes: kv
                    .iter()
                    .filter(|(_, v)| v.is_none())
                    .map(|(k, _)| &k[..])
                    .collect(),
            })
            .collect()
    }

    pub fn is_empty(&self) -> bool {
        self.maps.is_empty()
    }
}

/// A transaction: reads from a snapshot, buffered writes. The default is an empty transaction
/// over an empty state (a placeholder while a transaction is lent out). A clone is a savepoint:
/// carry on with either.
#[derive(Clone, Debug, Default)]
pub struct Tx {
    base: State,
    reads: HashMap<(Arc<str>, Bytes), Option<u64>>,
    ranges: Vec<RangeRead>,
    writes: WriteSet,
    write_bytes: usize,
}

fn check_map_name(name: &str) -> Result<(), TxError> {
    if name.is_empty() || name.len() > MAX_MAP_NAME || name.chars().any(|c| c.is_control()) {
        return Err(TxError::BadMapName(name.chars().take(64).collect()));
    }
    Ok(())
}

impl Tx {
    /// A transaction reading from `base`.
    pub fn new(base: State) -> Self {
        let read_version = base.version;
        Tx {
            base,
            reads: HashMap::new(),
            ranges: Vec::new(),
            writes: WriteSet {
                read_version,
                ..Default::default()
            },
            write_bytes: 0,
        }
    }

    /// The version this transaction reads at.
    pub fn read_version(&self) -> u64 {
        self.base.version
    }

    /// The snapshot the transaction reads (without recording reads: for read-only callers that
    /// never commit).
    pub fn snapshot(&self) -> &State {
        &self.base
    }

    fn own_write(&self, map: &str, key: &[u8]) -> Option<&Option<Bytes>> {
        self.writes.maps.get(map)?.get(key)
    }

    /// Reads a key, seeing this transaction's own writes.
    pub fn get(&mut self, map: &str, key: &[u8]) -> Option<Bytes> {
        if let Some(w) = self.own_write(map, key) {
            return w.clone();
        }
        let found = self.base.get(map, key).cloned();
        self.reads.insert(
            (Arc::from(map), Bytes::copy_from_slice(key)),
            found.as_ref().map(|v| v.version),
        );
        found.map(|v| v.value)
    }

    /// Reads a key and the version that last wrote it (`None` if absent or written by this
    /// transaction).
    pub fn get_versioned(&mut self, map: &str, key: &[u8]) -> Option<Versioned> {
        if self.own_write(map, key).is_some() {
            return None;
        }
        self.get(map, key)?;
        self.base.get(map, key).cloned()
    }

    /// Writes a key.
    pub fn put(&mut self, map: &str, key: &[u8], value: &[u8]) -> Result<(), TxError> {
        check_map_name(map)?;
        if key.len() > MAX_KEY_SIZE {
            return Err(TxError::TooLarge {
                what: "key",
                size: key.len(),
                limit: MAX_KEY_SIZE,
            });
        }
        if value.len() > MAX_VALUE_SIZE {
            return Err(TxError::TooLarge {
                what: "value",
                size: value.len(),
                limit: MAX_VALUE_SIZE,
            });
        }
        self.add_bytes(key.len() + value.len())?;
        self.writes.maps.entry(Arc::from(map)).or_default().insert(
            Bytes::copy_from_slice(key),
            Some(Bytes::copy_from_slice(value)),
        );
        Ok(())
    }

    /// Removes a key (a no-op in the ledger if it is absent, but recorded).
    pub fn remove(&mut self, map: &str, key: &[u8]) -> Result<(), TxError> {
        check_map_name(map)?;
        if key.len() > MAX_KEY_SIZE {
            return Err(TxError::TooLarge {
                what: "key",
                size: key.len(),
                limit: MAX_KEY_SIZE,
            });
        }
        self.add_bytes(key.len())?;
        self.writes
            .maps
            .entry(Arc::from(map))
            .or_default()
            .insert(Bytes::copy_from_slice(key), None);
        Ok(())
    }

    fn add_bytes(&mut self, n: usize) -> Result<(), TxError> {
        self.write_bytes += n;
        if self.write_bytes > MAX_WRITE_SET_SIZE {
            return Err(TxError::TooLarge {
                what: "write set",
                size: self.write_bytes,
                limit: MAX_WRITE_SET_SIZE,
            });
        }
        Ok(())
    }

    /// Up to `limit` entries of `map` within `range`, in key order, seeing this transaction's own
    /// writes. The range actually covered (up to the last key returned when the limit is reached)
    /// is recorded: a concurrent change inside it makes the commit fail.
    pub fn range(
        &mut self,
        map: &str,
        range: (Bound<&[u8]>, Bound<&[u8]>),
        limit: usize,
    ) -> Vec<(Bytes, Bytes)> {
        let empty = MapState::default();
        let base = self.base.map(map).unwrap_or(&empty);
        let own = self.writes.maps.get(map);
        let mut out = Vec::new();
        let mut seen = Vec::new();
        let mut a = base.range(range).peekable();
        let mut b = own
            .map(|o| o.range::<[u8], _>(range))
            .into_iter()
            .flatten()
            .peekable();
        let mut last_key: Option<Bytes> = None;
        while out.len() < limit {
            let take_base = match (a.peek(), b.peek()) {
                (None, None) => break,
                (Some(_), None) => true,
                (None, Some(_)) => false,
                (Some((ka, _)), Some((kb, _))) => ka < kb,
            };
            if take_base {
                let (k, v) = a.next().expect("peeked");
                seen.push((k.clone(), v.version));
                last_key = Some(k.clone());
                out.push((k.clone(), v.value.clone()));
            } else {
                let (k, v) = b.next().expect("peeked");
                // An own write shadows the base entry with the same key.
                if let Some((ka, va)) = a.peek()
                    && *ka == k
                {
                    seen.push(((*ka).clone(), va.version));
                    a.next();
                }
                last_key = Some(k.clone());
                if let Some(v) = v {
                    out.push((k.clone(), v.clone()));
                }
            }
        }
        let owned = |b: Bound<&[u8]>| match b {
            Bound::Included(k) => Bound::Included(Bytes::copy_from_slice(k)),
            Bound::Excluded(k) => Bound::Excluded(Bytes::copy_from_slice(k)),
            Bound::Unbounded => Bound::Unbounded,
        };
        let end = match (out.len() >= limit, last_key) {
            (true, Some(k)) => Bound::Included(k),
            _ => owned(range.1),
        };
        self.ranges.push(RangeRead {
            map: Arc::from(map),
            start: owned(range.0),
            end,
            seen,
        });
        out
    }

    /// Whether the transaction has written anything.
    pub fn has_writes(&self) -> bool {
        !self.writes.is_empty()
    }
}

/// The store: the current state, and the states of the uncommitted suffix (for rollback).
#[derive(Debug, Default)]
pub struct Store {
    current: RwLock<State>,
    /// How to undo each uncommitted version, oldest first (for rollback and recent states).
    history: RwLock<std::collections::VecDeque<Undo>>,
}

impl Store {
    pub fn new() -> Self {
        Self::default()
    }

    /// A store starting from `state` (a snapshot, or a replayed ledger), which is committed.
    pub fn from_state(state: State) -> Self {
        Store {
            current: RwLock::new(state),
            history: RwLock::new(Default::default()),
        }
    }

    /// The current state (O(1)).
    pub fn state(&self) -> State {
        self.current
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// The value of `key` in `map` in the current state. Unlike [`Store::state`], it leaves no
    /// copy of the state behind, which would make the next commit copy the paths it writes.
    pub fn get(&self, map: &str, key: &[u8]) -> Option<Versioned> {
        self.current
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .get(map, key)
            .cloned()
    }

    pub fn version(&self) -> u64 {
        self.current
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .version
    }

    /// Starts a transaction on the current state.
    pub fn begin(&self) -> Tx {
        Tx::new(self.state())
    }

    /// Validates `tx`'s reads against the current state and applies its writes at the next
    /// version. Callers serialise commits (the engine holds its lock), so that the version and
    /// the ledger entry are assigned in the same order.
    pub fn commit(&self, tx: Tx) -> Result<(u64, WriteSet), TxError> {
        let mut cur = self.current.write().unwrap_or_else(|p| p.into_inner());
        if cur.version != tx.base.version {
            validate(&cur, &tx)?;
        }
        let version = cur.version + 1;
        let Tx { base, writes, .. } = tx;
        // Drop the transaction's snapshot first: with no other reference to the current maps,
        // they are updated in place instead of path-copied.
        drop(base);
        let undo = cur.apply_with_undo(version, &writes.map_writes());
        self.history
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .push_back(undo);
        Ok((version, writes))
    }

    /// Applies a write set decoded from the ledger (a backup following the primary, or replay).
    pub fn apply(&self, version: u64, maps: &[MapWrites<'_>]) {
        let mut cur = self.current.write().unwrap_or_else(|p| p.into_inner());
        assert_eq!(version, cur.version + 1, "write sets apply in order");
        let undo = cur.apply_with_undo(version, maps);
        self.history
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .push_back(undo);
    }

    /// Adds the maps of `state` that the current state does not have, with their versions (a
    /// recovered service gets back the private maps of the ledger it recovered, which no later
    /// transaction wrote). Returns how many maps were added.
    pub fn restore_maps(&self, state: &State) -> usize {
        let mut cur = self.current.write().unwrap_or_else(|p| p.into_inner());
        let mut added = 0;
        for (name, ms) in state.maps() {
            if cur.maps.get(&**name).is_none() {
                cur.maps.insert(name.clone(), ms.clone());
                added += 1;
            }
        }
        added
    }

    /// Forgets how to undo versions up to `version` (it is committed: never rolled back).
    pub fn compact(&self, version: u64) {
        let mut h = self.history.write().unwrap_or_else(|p| p.into_inner());
        while h.front().is_some_and(|u| u.version <= version) {
            h.pop_front();
        }
    }

    /// The state at `version`, if it is the current state or in the uncommitted window (or the
    /// committed version just before it).
    pub fn state_at(&self, version: u64) -> Option<State> {
        let cur = self.current.read().unwrap_or_else(|p| p.into_inner());
        if cur.version == version {
            return Some(cur.clone());
        }
        let h = self.history.read().unwrap_or_else(|p| p.into_inner());
        if version > cur.version || h.front().is_none_or(|u| u.prev_version > version) {
            return None;
        }
        let mut s = cur.clone();
        for u in h.iter().rev().take_while(|u| u.version > version) {
            s.undo(u);
        }
        Some(s)
    }

    /// Rolls the state back to `version` (which must be in the uncommitted window, or the last
    /// committed version before it).
    pub fn rollback(&self, version: u64) -> Result<(), String> {
        let mut cur = self.current.write().unwrap_or_else(|p| p.into_inner());
        let mut h = self.history.write().unwrap_or_else(|p| p.into_inner());
        if version >= cur.version {
            return Ok(());
        }
        if h.front().is_none_or(|u| u.prev_version > version) {
            return Err(format!("state at version {version} is no longer retained"));
        }
        while h.back().is_some_and(|u| u.version > version) {
            let u = h.pop_back().expect("checked");
            cur.undo(&u);
        }
        assert_eq!(cur.version, version);
        Ok(())
    }
}

/// How to undo one version: the previous value of every key it wrote or removed, and the
/// previous `last_write` of every map it touched (`None`: the map did not exist).
#[derive(Debug)]
struct Undo {
    version: u64,
    prev_version: u64,
    maps: Vec<(Arc<str>, Option<u64>)>,
    entries: Vec<(Arc<str>, Bytes, Option<Versioned>)>,
}

fn validate(cur: &State, tx: &Tx) -> Result<(), TxError> {
    for ((map, key), version) in &tx.reads {
        let now = cur.get(map, key).map(|v| v.version);
        if now != *version {
            return Err(TxError::Conflict(format!("key in map {map}")));
        }
    }
    for r in &tx.ranges {
        let empty = MapState::default();
        let ms = cur.map(&r.map).unwrap_or(&empty);
        if ms.last_write <= tx.base.version {
            continue;
        }
        let bounds = (as_ref(&r.start), as_ref(&r.end));
        let now = ms.range(bounds).map(|(k, v)| (k, v.version));
        if !now.eq(r.seen.iter().map(|(k, v)| (k, *v))) {
            return Err(TxError::Conflict(format!("range of map {}", r.map)));
        }
    }
    Ok(())
}

fn as_ref(b: &Bound<Bytes>) -> Bound<&[u8]> {
    match b {
        Bound::Included(k) => Bound::Included(&k[..]),
        Bound::Excluded(k) => Bound::Excluded(&k[..]),
        Bound::Unbounded => Bound::Unbounded,
    }
}

#[cfg(test)]
mod tests;
