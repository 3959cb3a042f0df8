//! CCF's Merkle tree, with bounded memory.
//!
//! Leaves are SHA-256 digests; leaf `i` is the transaction at seqno `i` (leaf 0 is 32 zero bytes).
//! An inner node is SHA256(left || right); an odd trailing node is carried up unhashed. This is
//! the RFC 6962 tree shape (the left subtree of a range holds the largest power of two of leaves
//! strictly less than its size) without RFC 6962's domain-separation prefixes.
//!
//! The tree keeps in memory only its [`Frontier`] (one digest per set bit of the size). Every
//! complete perfect subtree ("node" at level `k`, index `j`, covering leaves `[j*2^k, (j+1)*2^k)`)
//! goes to a [`NodeStore`]: in memory for tests and small tools, or in files with a bounded page
//! cache ([`FileNodeStore`]) for nodes. Appends are O(log n); a proof or a past root reads
//! O(log n) nodes.

use ccl_crypto::Digest32;
use ccl_crypto::hash::sha256_pair;
use std::fs::{File, OpenOptions};
use std::io::Write;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

/// Highest level a tree of 2^64 leaves can have.
const LEVELS: usize = 64;

/// One step of an inclusion proof, from the leaf up: a sibling on the left or on the right.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum ProofStep {
    Left(Digest32),
    Right(Digest32),
}

/// Folds a proof over a leaf: the root it proves.
pub fn root_from_proof(leaf: &Digest32, proof: &[ProofStep]) -> Digest32 {
    proof.iter().fold(*leaf, |cur, step| match step {
        ProofStep::Left(l) => sha256_pair(l, &cur),
        ProofStep::Right(r) => sha256_pair(&cur, r),
    })
}

#[derive(Debug, thiserror::Error)]
pub enum MerkleError {
    #[error("leaf {index} is not in a tree of {size} leaves")]
    OutOfRange { index: u64, size: u64 },
    #[error(
        "tree node at level {level} index {index} is not available (the tree starts at leaf {base})"
    )]
    Pruned { level: u32, index: u64, base: u64 },
    #[error("merkle tree storage: {0}")]
    Io(#[from] std::io::Error),
    #[error("merkle tree storage is inconsistent: {0}")]
    Corrupt(String),
}

/// Roots of the perfect subtrees that cover the leaves `[0, size)`, tallest first: everything
/// needed to append and to compute the current root, in O(log n) memory.
#[derive(Clone, Debug, PartialEq, Eq, Default)]
pub struct Frontier {
    size: u64,
    peaks: Vec<Digest32>,
}

impl Frontier {
    pub fn new() -> Self {
        Self::default()
    }

    /// A frontier from its parts; `peaks` must have one digest per set bit of `size`.
    pub fn from_parts(size: u64, peaks: Vec<Digest32>) -> Option<Self> {
        (peaks.len() == size.count_ones() as usize).then_some(Frontier { size, peaks })
    }

    pub fn size(&self) -> u64 {
        self.size
    }

    pub fn peaks(&self) -> &[Digest32] {
        &self.peaks
    }

    /// Appends a leaf; calls `on_node(level, index, digest)` for every perfect subtree it
    /// completes, the leaf itself (level 0) first.
    pub fn append_with(&mut self, leaf: Digest32, mut on_node: impl FnMut(u32, u64, &Digest32)) {
        let mut node = leaf;
        let mut level = 0u32;
        let mut index = self.size;
        on_node(level, index, &node);
        while index & 1 == 1 {
            let left = self.peaks.pop().expect("a set bit of the size has a peak");
            node = sha256_pair(&left, &node);
            level += 1;
            index >>= 1;
            on_node(level, index, &node);
        }
        self.peaks.push(node);
        self.size += 1;
    }

    pub fn append(&mut self, leaf: Digest32) {
        self.append_with(leaf, |_, _, _| {})
    }

    /// The root of the tree, or `None` when it is empty.
    pub fn root(&self) -> Option<Digest32> {
        let (last, rest) = self.peaks.split_last()?;
        Some(rest.iter().rev().fold(*last, |acc, p| sha256_pair(p, &acc)))
    }

    /// The root and, when it is the hash of two nodes the frontier knows, their concatenation
    /// (its SHA-256 preimage).
    pub fn root_with_preimage(&self) -> Option<(Digest32, Option<[u8; 64]>)> {
        let (last, rest) = self.peaks.split_last()?;
        let mut acc = *last;
        let mut preimage = None;
        for p in rest.iter().rev() {
            let mut pre = [0u8; 64];
            pre[..32].copy_from_slice(p);
            pre[32..].copy_from_slice(&acc);
            acc = sha256_pair(p, &acc);
            preimage = Some(pre);
        }
        Some((acc, preimage))
    }

    /// Serialises as size (u64 LE) then the peaks.
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(8 + 32 * self.peaks.len());
        out.extend_from_slice(&self.size.to_le_bytes());
        for p in &self.peaks {
            out.extend_from_slice(p);
        }
        out
    }

    pub fn from_bytes(b: &[u8]) -> Option<Self> {
        let size = u64::from_le_bytes(b.get(..8)?.try_into().ok()?);
        let rest = &b[8..];
        if !rest.len().is_multiple_of(32) {
            return None;
        }
        let peaks = rest
            .chunks_exact(32)
            .map(|c| c.try_into().expect("32-byte chunk"))
            .collect();
        Self::from_parts(size, peaks)
    }
}

/// Storage of the perfect-subtree nodes of a tree, level by level. Nodes of a level are pushed in
/// index order; a level may start at a non-zero index when the tree was started from a frontier.
pub trait NodeStore: Send {
    /// One past the highest index stored at `level`.
    fn end(&self, level: u32) -> u64;
    /// Lowest index stored at `level`.
    fn start(&self, level: u32) -> u64;
    fn get(&mut self, level: u32, index: u64) -> Result<Digest32, MerkleError>;
    /// Stores node `index` of `level`; `index` must be `end(level)`, or anything if the level is
    /// empty (it then starts there).
    fn push(&mut self, level: u32, index: u64, node: &Digest32) -> Result<(), MerkleError>;
    /// Drops the nodes of `level` from index `end` on.
    fn truncate(&mut self, level: u32, end: u64) -> Result<(), MerkleError>;
    /// Writes buffered nodes out (no fsync: the tree can always be rebuilt from the ledger).
    fn flush(&mut self) -> Result<(), MerkleError>;
}

/// Nodes in memory.
#[derive(Default)]
pub struct MemNodeStore {
    levels: Vec<(u64, Vec<Digest32>)>,
}

impl MemNodeStore {
    pub fn new() -> Self {
        MemNodeStore {
            levels: vec![(0, Vec::new()); LEVELS],
        }
    }
}

impl NodeStore for MemNodeStore {
    fn end(&self, level: u32) -> u64 {
        let (s, v) = &self.levels[level as usize];
        s + v.len() as u64
    }
    fn start(&self, level: u32) -> u64 {
        self.levels[level as usize].0
    }
    fn get(&mut self, level: u32, index: u64) -> Result<Digest32, MerkleError> {
        let (s, v) = &self.levels[level as usize];
        index
            .checked_sub(*s)
            .and_then(|i| v.get(i as usize))
            .copied()
            .ok_or(MerkleError::Pruned {
                level,
                index,
                base: *s << level,
            })
    }
    fn push(&mut self, level: u32, index: u64, node: &Digest32) -> Result<(), MerkleError> {
        let (s, v) = &mut self.levels[level as usize];
        if v.is_empty() {
            *s = index;
        } else if *s + v.len() as u64 != index {
            return Err(MerkleError::Corrupt(format!(
                "push of node {index} at level {level} out of order"
            )));
        }
        v.push(*node);
        Ok(())
    }
    fn truncate(&mut self, level: u32, end: u64) -> Result<(), MerkleError> {
        let (s, v) = &mut self.levels[level as usize];
        v.truncate(end.saturating_sub(*s) as usize);
        Ok(())
    }
    fn flush(&mut self) -> Result<(), MerkleError> {
        Ok(())
    }
}

/// Nodes per cached page (4 KiB pages).
const PAGE_NODES: u64 = 128;
/// Buffered nodes per level before they are written out.
const TAIL_FLUSH_NODES: usize = 4096;
/// Default number of cached pages (16 MiB).
pub const DEFAULT_CACHE_PAGES: usize = 4096;
/// Each level file starts with its start index (u64 LE).
const LEVEL_FILE_HEADER: u64 = 8;

struct LevelFile {
    file: File,
    start: u64,
    /// Nodes written to the file.
    written: u64,
    /// Nodes pushed but not yet written.
    tail: Vec<Digest32>,
}

/// Nodes in one file per level (`level_NN.bin`: start index, then 32 bytes per node) with an LRU
/// cache of pages, so memory stays bounded however long the ledger grows.
pub struct FileNodeStore {
    dir: PathBuf,
    levels: Vec<Option<LevelFile>>,
    cache: lru::LruCache<(u32, u64), Vec<Digest32>>,
}

impl FileNodeStore {
    /// Opens (or creates) the store in `dir`, keeping at most `cache_pages` 4 KiB pages in memory.
    pub fn open(dir: &Path, cache_pages: usize) -> Result<Self, MerkleError> {
        std::fs::create_dir_all(dir)?;
        let mut levels: Vec<Option<LevelFile>> = (0..LEVELS).map(|_| None).collect();
        for (level, slot) in levels.iter_mut().enumerate() {
            let path = Self::level_path(dir, level as u32);
            if !path.exists() {
                continue;
            }
            let file = OpenOptions::new().read(true).write(true).open(&path)?;
            let len = file.metadata()?.len();
            if len < LEVEL_FILE_HEADER {
                std::fs::remove_file(&path)?; // torn at creation: nothing stored
                continue;
            }
            let mut h = [0u8; 8];
            file.read_exact_at(&mut h, 0)?;
            let written = (len - LEVEL_FILE_HEADER) / 32; // a torn trailing node is ignored
            *slot = Some(LevelFile {
                file,
                start: u64::from_le_bytes(h),
                written,
                tail: Vec::new(),
            });
        }
        let cap = std::num::NonZeroUsize::new(cache_pages.max(1)).expect("max(1) is non-zero");
        Ok(FileNodeStore {
            dir: dir.to_path_buf(),
            levels,
            cache: lru::LruCache::new(cap),
        })
    }

    fn level_path(dir: &Path, level: u32) -> PathBuf {
        dir.join(format!("level_{level:02}.bin"))
    }

    fn write_tail(&mut self, level: u32) -> Result<(), MerkleError> {
        let Some(l) = self.levels[level as usize].as_mut() else {
            return Ok(());
        };
        if l.tail.is_empty() {
            return Ok(());
        }
        let mut buf = Vec::with_capacity(l.tail.len() * 32);
        for n in &l.tail {
            buf.extend_from_slice(n);
        }
        l.file
            .write_all_at(&buf, LEVEL_FILE_HEADER + l.written * 32)?;
        l.written += l.tail.len() as u64;
        l.tail.clear();
        Ok(())
    }
}

impl NodeStore for FileNodeStore {
    fn end(&self, level: u32) -> u64 {
        self.levels[level as usize]
            .as_ref()
            .map_or(0, |l| l.start + l.written + l.tail.len() as u64)
    }
    fn start(&self, level: u32) -> u64 {
        self.levels[level as usize].as_ref().map_or(0, |l| l.start)
    }
    fn get(&mut self, level: u32, index: u64) -> Result<Digest32, MerkleError> {
        let pruned = |s: u64| MerkleError::Pruned {
            level,
            index,
            base: s << level,
        };
        let l = self.levels[level as usize].as_ref().ok_or(pruned(0))?;
        let rel = index.checked_sub(l.start).ok_or(pruned(l.start))?;
        if rel >= l.written {
            return l
                .tail
                .get((rel - l.written) as usize)
                .copied()
                .ok_or(pruned(l.start));
        }
        let page = rel / PAGE_NODES;
        let offset = (rel % PAGE_NODES) as usize;
        if let Some(p) = self.cache.get(&(level, page))
            && let Some(n) = p.get(offset)
        {
            return Ok(*n);
        }
        let count = PAGE_NODES.min(l.written - page * PAGE_NODES) as usize;
        let mut buf = vec![0u8; count * 32];
        l.file
            .read_exact_at(&mut buf, LEVEL_FILE_HEADER + page * PAGE_NODES * 32)?;
        let nodes: Vec<Digest32> = buf
            .chunks_exact(32)
            .map(|c| c.try_into().expect("32-byte chunk"))
            .collect();
        let n = nodes[offset];
        self.cache.put((level, page), nodes);
        Ok(n)
    }
    fn push(&mut self, level: u32, index: u64, node: &Digest32) -> Result<(), MerkleError> {
        let slot = &mut self.levels[level as usize];
        match slot {
            Some(l) if l.written + l.tail.len() as u64 > 0 => {
                if l.start + l.written + l.tail.len() as u64 != index {
                    return Err(MerkleError::Corrupt(format!(
                        "push of node {index} at level {level} out of order"
                    )));
                }
            }
            _ => {
                let path = Self::level_path(&self.dir, level);
                let file = OpenOptions::new()
                    .read(true)
                    .write(true)
                    .create(true)
                    .truncate(true)
                    .open(&path)?;
                (&file).write_all(&index.to_le_bytes())?;
                *slot = Some(LevelFile {
                    file,
                    start: index,
                    written: 0,
                    tail: Vec::new(),
                });
            }
        }
        let l = slot.as_mut().expect("level file opened above");
        l.tail.push(*node);
        if l.tail.len() >= TAIL_FLUSH_NODES {
            self.write_tail(level)?;
        }
        Ok(())
    }
    fn truncate(&mut self, level: u32, end: u64) -> Result<(), MerkleError> {
        let Some(l) = self.levels[level as usize].as_mut() else {
            return Ok(());
        };
        let keep = end.saturating_sub(l.start);
        if keep < l.written {
            l.tail.clear();
            l.written = keep;
            l.file.set_len(LEVEL_FILE_HEADER + keep * 32)?;
            self.cache.clear(); // rare (rollback): simplest correct invalidation
        } else {
            l.tail.truncate((keep - l.written) as usize);
        }
        Ok(())
    }
    fn flush(&mut self) -> Result<(), MerkleError> {
        for level in 0..LEVELS as u32 {
            self.write_tail(level)?;
        }
        Ok(())
    }
}

/// The Merkle tree of a ledger.
pub struct MerkleTree {
    frontier: Frontier,
    /// Leaves before `base` are not stored (the tree was started from a frontier).
    base: u64,
    store: Box<dyn NodeStore>,
}

impl std::fmt::Debug for MerkleTree {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MerkleTree")
            .field("size", &self.frontier.size)
            .field("base", &self.base)
            .finish()
    }
}

/// Largest power of two strictly less than `n` (n >= 2).
fn split_point(n: u64) -> u64 {
    debug_assert!(n >= 2);
    1u64 << (63 - (n - 1).leading_zeros())
}

impl MerkleTree {
    /// An empty tree with nodes in memory.
    pub fn in_memory() -> Self {
        Self::with_store(Box::new(MemNodeStore::new()))
            .expect("an empty memory store is consistent")
    }

    /// A tree over an existing store (empty or written by a previous tree). Its size is the largest
    /// one all levels are consistent with; callers compare it with their ledger and truncate or
    /// append as needed.
    pub fn with_store(store: Box<dyn NodeStore>) -> Result<Self, MerkleError> {
        let base = store.start(0);
        let mut n = store.end(0);
        if base > 0 {
            // A tree that was started from a frontier: usable as stored if every peak of its
            // size is there and no non-empty level lags; otherwise empty (the caller rebuilds it
            // from its snapshot's frontier and the ledger).
            let usable = (0..LEVELS as u32).all(|k| {
                let need = n >> k;
                let (start, end) = (store.start(k), store.end(k));
                let peak_ok = need & 1 == 0 || (start < need && need <= end);
                let level_empty = start == 0 && end == 0;
                peak_ok && (level_empty || end >= need || need == 0)
            });
            if !usable {
                n = 0;
            }
        } else {
            // Largest n such that every level k holds nodes up to n >> k.
            for k in 1..LEVELS as u32 {
                if n >> k == 0 {
                    break;
                }
                let have = store.end(k);
                if have < n >> k {
                    n = n.min(((have + 1) << k) - 1);
                }
            }
        }
        let mut t = MerkleTree {
            frontier: Frontier::new(),
            base,
            store,
        };
        if n > 0 {
            t.reset_to(n)?;
        }
        Ok(t)
    }

    /// A tree that continues from `frontier` (e.g. from a snapshot); leaves before it are not
    /// available for proofs.
    pub fn from_frontier(
        frontier: Frontier,
        store: Box<dyn NodeStore>,
    ) -> Result<Self, MerkleError> {
        let size = frontier.size();
        let mut store = store;
        for k in 0..LEVELS as u32 {
            store.truncate(k, 0)?;
        }
        let mut peak = frontier.peaks().iter();
        for k in (0..LEVELS as u32).rev() {
            if size >> k & 1 == 1 {
                let p = peak.next().expect("one peak per set bit");
                store.push(k, (size >> k) - 1, p)?;
            }
        }
        Ok(MerkleTree {
            frontier,
            base: size,
            store,
        })
    }

    /// Truncates the stored levels to `n` leaves and rebuilds the frontier from them.
    fn reset_to(&mut self, n: u64) -> Result<(), MerkleError> {
        let mut peaks = Vec::new();
        for k in 0..LEVELS as u32 {
            self.store.truncate(k, n >> k)?;
        }
        for k in (0..LEVELS as u32).rev() {
            if n >> k & 1 == 1 {
                peaks.push(self.store.get(k, (n >> k) - 1)?);
            }
        }
        self.frontier = Frontier::from_parts(n, peaks).expect("one peak per set bit");
        Ok(())
    }

    /// Number of leaves.
    pub fn len(&self) -> u64 {
        self.frontier.size()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// First leaf available for proofs.
    pub fn base(&self) -> u64 {
        self.base
    }

    pub fn frontier(&self) -> &Frontier {
        &self.frontier
    }

    pub fn append(&mut self, leaf: Digest32) -> Result<(), MerkleError> {
        let mut result = Ok(());
        let store = &mut self.store;
        self.frontier.append_with(leaf, |level, index, node| {
            if result.is_ok() {
                result = store.push(level, index, node);
            }
        });
        result
    }

    /// The current root (`None` for an empty tree).
    pub fn root(&self) -> Option<Digest32> {
        self.frontier.root()
    }

    /// The root the tree had when it held `size` leaves.
    pub fn root_at(&mut self, size: u64) -> Result<Digest32, MerkleError> {
        if size == 0 || size > self.len() {
            return Err(MerkleError::OutOfRange {
                index: size,
                size: self.len(),
            });
        }
        if size == self.len() {
            return Ok(self.root().expect("non-empty"));
        }
        self.subtree(0, size)
    }

    /// The leaf at `index`.
    pub fn leaf(&mut self, index: u64) -> Result<Digest32, MerkleError> {
        if index >= self.len() {
            return Err(MerkleError::OutOfRange {
                index,
                size: self.len(),
            });
        }
        self.store.get(0, index)
    }

    /// The root of leaves `[start, start + len)`, a range of the RFC 6962 decomposition.
    fn subtree(&mut self, start: u64, len: u64) -> Result<Digest32, MerkleError> {
        if len.is_power_of_two() && start.is_multiple_of(len) {
            let level = len.trailing_zeros();
            return self.store.get(level, start >> level);
        }
        let k = split_point(len);
        let left = self.subtree(start, k)?;
        let right = self.subtree(start + k, len - k)?;
        Ok(sha256_pair(&left, &right))
    }

    /// The inclusion proof of leaf `index` in the tree as it was with `size` leaves, from the leaf
    /// up.
    pub fn proof(&mut self, index: u64, size: u64) -> Result<Vec<ProofStep>, MerkleError> {
        if index >= size || size > self.len() {
            return Err(MerkleError::OutOfRange {
                index,
                size: size.min(self.len()),
            });
        }
        if index < self.base {
            return Err(MerkleError::Pruned {
                level: 0,
                index,
                base: self.base,
            });
        }
        let mut top_down = Vec::new();
        let (mut start, mut len) = (0u64, size);
        while len > 1 {
            let k = split_point(len);
            if index < start + k {
                top_down.push(ProofStep::Right(self.subtree(start + k, len - k)?));
                len = k;
            } else {
                top_down.push(ProofStep::Left(self.subtree(start, k)?));
                start += k;
                len -= k;
            }
        }
        top_down.reverse();
        Ok(top_down)
    }

    /// Drops the leaves from `size` on (rollback of an uncommitted suffix).
    pub fn truncate(&mut self, size: u64) -> Result<(), MerkleError> {
        if size >= self.len() {
            return Ok(());
        }
        if size < self.base {
            return Err(MerkleError::Pruned {
                level: 0,
                index: size,
                base: self.base,
            });
        }
        self.reset_to(size)
    }

    /// Writes buffered nodes to storage.
    pub fn flush(&mut self) -> Result<(), MerkleError> {
        self.store.flush()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ccl_crypto::sha256;
    use proptest::prelude::*;

    /// CCF's tree, computed level by level the naive way (as ccf/merkletree.py does).
    fn naive_root(leaves: &[Digest32]) -> Digest32 {
        let mut level = leaves.to_vec();
        while level.len() > 1 {
            level = level
                .chunks(2)
                .map(|c| {
                    if c.len() == 2 {
                        sha256_pair(&c[0], &c[1])
                    } else {
                        c[0]
                    }
                })
                .collect();
        }
        level[0]
    }

    /// RFC 6962 PATH, recursively, as a reference for proofs.
    fn naive_proof(index: usize, leaves: &[Digest32]) -> Vec<ProofStep> {
        if leaves.len() == 1 {
            return vec![];
        }
        let k = split_point(leaves.len() as u64) as usize;
        if index < k {
            let mut p = naive_proof(index, &leaves[..k]);
            p.push(ProofStep::Right(naive_root(&leaves[k..])));
            p
        } else {
            let mut p = naive_proof(index - k, &leaves[k..]);
            p.push(ProofStep::Left(naive_root(&leaves[..k])));
            p
        }
    }

    fn leaves(n: usize) -> Vec<Digest32> {
        (0..n)
            .map(|i| {
                if i == 0 {
                    [0u8; 32]
                } else {
                    sha256(&(i as u64).to_le_bytes())
                }
            })
            .collect()
    }

    #[test]
    fn small_trees_match_the_naive_tree() {
        let ls = leaves(70);
        let mut t = MerkleTree::in_memory();
        for n in 1..=ls.len() {
            t.append(ls[n - 1]).unwrap();
            assert_eq!(t.root().unwrap(), naive_root(&ls[..n]), "root of {n}");
            for size in 1..=n {
                assert_eq!(t.root_at(size as u64).unwrap(), naive_root(&ls[..size]));
            }
            for i in 0..n {
                let p = t.proof(i as u64, n as u64).unwrap();
                assert_eq!(p, naive_proof(i, &ls[..n]), "proof of {i} in {n}");
                assert_eq!(root_from_proof(&ls[i], &p), naive_root(&ls[..n]));
            }
        }
    }

    #[test]
    fn errors_for_out_of_range() {
        let mut t = MerkleTree::in_memory();
        assert!(t.root().is_none());
        assert!(t.proof(0, 1).is_err());
        t.append([1u8; 32]).unwrap();
        assert!(t.proof(1, 1).is_err());
        assert!(t.proof(0, 2).is_err());
        assert!(t.root_at(0).is_err());
        assert!(t.leaf(1).is_err());
        assert_eq!(t.proof(0, 1).unwrap(), vec![]);
    }

    #[test]
    fn file_store_persists_and_reopens() {
        let dir = tempfile::tempdir().unwrap();
        let ls = leaves(10_000);
        let mut t =
            MerkleTree::with_store(Box::new(FileNodeStore::open(dir.path(), 4).unwrap())).unwrap();
        for l in &ls {
            t.append(*l).unwrap();
        }
        t.flush().unwrap();
        let root = t.root().unwrap();
        drop(t);
        let mut t =
            MerkleTree::with_store(Box::new(FileNodeStore::open(dir.path(), 4).unwrap())).unwrap();
        assert_eq!(t.len(), 10_000);
        assert_eq!(t.root().unwrap(), root);
        for i in [0u64, 1, 127, 128, 4095, 4096, 9999] {
            let p = t.proof(i, 10_000).unwrap();
            assert_eq!(root_from_proof(&ls[i as usize], &p), root);
            let p = t.proof(i, i + 1).unwrap();
            assert_eq!(
                root_from_proof(&ls[i as usize], &p),
                naive_root(&ls[..=i as usize])
            );
        }
        // Unflushed nodes are lost at a crash; the reopened tree is consistent and shorter.
        for l in &ls[..5000] {
            t.append(*l).unwrap();
        }
        t.flush().unwrap();
        drop(t);
        let lvl0 = dir.path().join("level_00.bin");
        let len = std::fs::metadata(&lvl0).unwrap().len();
        std::fs::OpenOptions::new()
            .write(true)
            .open(&lvl0)
            .unwrap()
            .set_len(len - 32 * 100 - 5)
            .unwrap();
        let t =
            MerkleTree::with_store(Box::new(FileNodeStore::open(dir.path(), 4).unwrap())).unwrap();
        assert_eq!(t.len(), 15_000 - 101);
        let mut all = ls.clone();
        all.extend_from_slice(&ls[..5000]);
        assert_eq!(t.root().unwrap(), naive_root(&all[..t.len() as usize]));
    }

    #[test]
    fn frontier_round_trip_and_pruned_tree() {
        let ls = leaves(300);
        let mut full = MerkleTree::in_memory();
        for l in &ls[..157] {
            full.append(*l).unwrap();
        }
        let f = Frontier::from_bytes(&full.frontier().to_bytes()).unwrap();
        assert_eq!(&f, full.frontier());
        let mut pruned = MerkleTree::from_frontier(f, Box::new(MemNodeStore::new())).unwrap();
        for l in &ls[157..] {
            full.append(*l).unwrap();
            pruned.append(*l).unwrap();
            assert_eq!(pruned.root(), full.root());
        }
        for i in 157..300u64 {
            for size in [i + 1, 200.max(i + 1), 300] {
                assert_eq!(pruned.proof(i, size).unwrap(), full.proof(i, size).unwrap());
            }
        }
        assert!(matches!(
            pruned.proof(156, 300),
            Err(MerkleError::Pruned { .. })
        ));
        assert_eq!(pruned.root_at(200).unwrap(), full.root_at(200).unwrap());
        assert!(Frontier::from_bytes(&[1, 0, 0, 0, 0, 0, 0, 0]).is_none());
    }

    #[test]
    fn a_tree_started_from_a_frontier_reopens_from_its_files() {
        let ls = leaves(400);
        for start in [157u64, 256, 2617 % 400, 301] {
            let dir = tempfile::tempdir().unwrap();
            let mut full = MerkleTree::in_memory();
            for l in &ls[..start as usize] {
                full.append(*l).unwrap();
            }
            let f = full.frontier().clone();
            let store = FileNodeStore::open(dir.path(), 4).unwrap();
            let mut t = MerkleTree::from_frontier(f, Box::new(store)).unwrap();
            for l in &ls[start as usize..] {
                full.append(*l).unwrap();
                t.append(*l).unwrap();
            }
            t.flush().unwrap();
            drop(t);
            let mut again =
                MerkleTree::with_store(Box::new(FileNodeStore::open(dir.path(), 4).unwrap()))
                    .unwrap();
            assert_eq!(again.len(), 400, "start {start}");
            assert_eq!(again.root(), full.root());
            for i in start..400 {
                assert_eq!(again.proof(i, 400).unwrap(), full.proof(i, 400).unwrap());
            }
            again.append(ls[0]).unwrap();
            full.append(ls[0]).unwrap();
            assert_eq!(again.root(), full.root());
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(64))]
        #[test]
        fn root_preimage_hashes_to_the_root(n in 1usize..300) {
            let mut f = Frontier::new();
            let leaves: Vec<Digest32> = (0..n).map(|i| sha256(&(i as u64).to_le_bytes())).collect();
            for l in &leaves {
                f.append(*l);
            }
            let (root, pre) = f.root_with_preimage().unwrap();
            prop_assert_eq!(root, naive_root(&leaves));
            match pre {
                Some(p) => prop_assert_eq!(sha256(&p), root),
                None => prop_assert!(n.is_power_of_two()),
            }
        }

        #[test]
        fn roots_and_proofs_match_naive(n in 1usize..600, picks in proptest::collection::vec(any::<u64>(), 8), cut in any::<u64>()) {
            let ls = leaves(n);
            let dir = tempfile::tempdir().unwrap();
            let mut t = MerkleTree::with_store(Box::new(FileNodeStore::open(dir.path(), 2).unwrap())).unwrap();
            for l in &ls { t.append(*l).unwrap(); }
            prop_assert_eq!(t.root().unwrap(), naive_root(&ls));
            for p in picks {
                let size = 1 + (p % n as u64);
                let i = (p >> 32) % size;
                prop_assert_eq!(t.proof(i, size).unwrap(), naive_proof(i as usize, &ls[..size as usize]));
                prop_assert_eq!(t.root_at(size).unwrap(), naive_root(&ls[..size as usize]));
            }
            // Rollback, then regrow along another branch.
            let keep = 1 + cut % n as u64;
            t.truncate(keep).unwrap();
            prop_assert_eq!(t.root().unwrap(), naive_root(&ls[..keep as usize]));
            let mut other = ls[..keep as usize].to_vec();
            for j in 0..20u64 {
                let l = sha256(&(j + 1_000_000).to_le_bytes());
                other.push(l);
                t.append(l).unwrap();
            }
            prop_assert_eq!(t.root().unwrap(), naive_root(&other));
            let i = cut % other.len() as u64;
            prop_assert_eq!(t.proof(i, other.len() as u64).unwrap(), naive_proof(i as usize, &other));
        }
    }
}
