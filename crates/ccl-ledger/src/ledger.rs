//! The ledger on disk: appends with group commit, chunking at signatures, commit (immutable
//! `.committed` chunks), rollback of an uncommitted suffix, crash recovery, and concurrent reads.
//!
//! Durability: [`Ledger::append`] only buffers. [`Ledger::sync_handle`] writes the buffer out and
//! returns a handle whose [`SyncHandle::sync`] fdatasyncs, so that many transactions share one
//! fsync and the fsync can run while new appends are buffered. A completed chunk is fsynced before
//! it is renamed, and the directory is fsynced after every rename, so a `.committed` chunk is never
//! torn.

use crate::chunk::{self, CHUNK_HEADER_SIZE, ChunkName, MAX_CHUNK_FILE_SIZE};
use crate::entry::Entry;
use std::fs::{File, OpenOptions};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, RwLock};

/// Default size after which a chunk is completed at the next signature transaction (CCF's default).
pub const DEFAULT_CHUNK_SIZE: u64 = 5 << 20;
/// Buffered bytes after which appends are written out even without a sync.
const WRITE_BUFFER_LIMIT: usize = 8 << 20;
/// Positions tables of complete chunks cached for reads.
const TABLE_CACHE: usize = 64;

#[derive(Clone, Debug)]
pub struct LedgerOptions {
    /// A chunk is completed at the first signature transaction after it reaches this size.
    pub chunk_size: u64,
}

impl Default for LedgerOptions {
    fn default() -> Self {
        LedgerOptions {
            chunk_size: DEFAULT_CHUNK_SIZE,
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum LedgerError {
    #[error("ledger I/O on {path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("ledger directory is inconsistent: {0}")]
    Inconsistent(String),
    #[error("seqno {0} is not in the ledger")]
    NotFound(u64),
    #[error("chunk {path}: {source}")]
    Chunk {
        path: PathBuf,
        source: chunk::ChunkError,
    },
    #[error("cannot roll back to {to}: seqnos up to {committed} are committed")]
    RollbackCommitted { to: u64, committed: u64 },
    #[error("chunk would exceed {MAX_CHUNK_FILE_SIZE} bytes: signature transactions are too rare")]
    ChunkFull,
}

fn io_err(path: &Path) -> impl FnOnce(std::io::Error) -> LedgerError + '_ {
    move |source| LedgerError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// What opening a ledger found.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct OpenReport {
    pub first_seqno: u64,
    pub last_seqno: u64,
    pub committed_seqno: u64,
    /// Bytes cut from the end of the in-progress chunk (a torn or unacknowledged tail), and why.
    pub truncated: Option<(u64, String)>,
}

struct Current {
    start: u64,
    path: PathBuf,
    file: Arc<File>,
    positions: Vec<u32>,
    /// File length including buffered bytes.
    len: u64,
    /// Bytes written to the file.
    written: u64,
    buf: Vec<u8>,
}

#[derive(Clone)]
struct CompleteChunk {
    name: ChunkName,
    path: PathBuf,
}

#[derive(Default)]
struct ReadIndex {
    complete: Vec<CompleteChunk>,
    /// The in-progress chunk as written to its file so far: start, file, positions, written length.
    current: Option<(u64, Arc<File>, Vec<u32>, u64)>,
}

struct Shared {
    index: RwLock<ReadIndex>,
    /// Complete chunks by first seqno: open file, positions, offset of the table.
    tables: Mutex<lru::LruCache<u64, ChunkTable>>,
}

/// A complete chunk's open file, positions table and the table's offset.
type ChunkTable = (Arc<File>, Arc<Vec<u32>>, u64);

/// The writer side of a node's ledger directory. One per directory.
pub struct Ledger {
    dir: PathBuf,
    opts: LedgerOptions,
    first_seqno: u64,
    last_seqno: u64,
    committed_seqno: u64,
    current: Option<Current>,
    shared: Arc<Shared>,
}

/// Fsyncs what [`Ledger::sync_handle`] wrote out, outside any lock on the ledger.
pub struct SyncHandle {
    file: Option<Arc<File>>,
    seqno: u64,
}

impl SyncHandle {
    /// Makes every entry up to the returned seqno durable.
    pub fn sync(self) -> std::io::Result<u64> {
        if let Some(f) = self.file {
            f.sync_data()?;
        }
        Ok(self.seqno)
    }
}

fn sync_dir(dir: &Path) -> Result<(), LedgerError> {
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(io_err(dir))
}

impl Ledger {
    /// Opens the ledger in `dir` (created if missing). The in-progress chunk is scanned and cut at
    /// the first entry that is incomplete, malformed, out of sequence, or refused by `check` (the
    /// caller checks what needs the ledger secret, e.g. the entry's GCM tag).
    pub fn open(
        dir: &Path,
        opts: LedgerOptions,
        check: &mut dyn FnMut(&Entry<'_>) -> bool,
    ) -> Result<(Ledger, OpenReport), LedgerError> {
        std::fs::create_dir_all(dir).map_err(io_err(dir))?;
        let names = chunk::list_chunks(dir).map_err(io_err(dir))?;
        let mut report = OpenReport::default();
        let mut index = ReadIndex::default();
        let mut current = None;
        let mut expected_start: Option<u64> = None;
        let mut seen_uncommitted = false;
        for (i, name) in names.iter().enumerate() {
            let path = dir.join(name.file_name());
            if let Some(e) = expected_start {
                if name.start != e {
                    return Err(LedgerError::Inconsistent(format!(
                        "{} does not follow the previous chunk (expected it to start at {e})",
                        name.file_name()
                    )));
                }
            } else {
                report.first_seqno = name.start;
            }
            if name.committed && seen_uncommitted {
                return Err(LedgerError::Inconsistent(format!(
                    "{} follows an uncommitted chunk",
                    name.file_name()
                )));
            }
            seen_uncommitted |= !name.committed;
            match name.end {
                Some(end) => {
                    if name.committed {
                        report.committed_seqno = end;
                    }
                    index.complete.push(CompleteChunk { name: *name, path });
                    expected_start = Some(end + 1);
                    report.last_seqno = end;
                }
                None => {
                    if i + 1 != names.len() {
                        return Err(LedgerError::Inconsistent(format!(
                            "in-progress chunk {} is not the last chunk",
                            name.file_name()
                        )));
                    }
                    // Killed between completing this chunk (table, header, fsync) and renaming
                    // it: finish the rename if the table and every entry check out.
                    if let Some(end) = Self::completed_in_place(name.start, &path, check)? {
                        let done = ChunkName {
                            start: name.start,
                            end: Some(end),
                            committed: false,
                        };
                        let to = dir.join(done.file_name());
                        std::fs::rename(&path, &to).map_err(io_err(&to))?;
                        sync_dir(dir)?;
                        tracing::warn!(chunk = %to.display(), "finished a chunk completion a crash interrupted");
                        index.complete.push(CompleteChunk {
                            name: done,
                            path: to,
                        });
                        report.last_seqno = end;
                        continue;
                    }
                    let c = Self::recover_current(name.start, &path, check, &mut report)?;
                    report.last_seqno = name.start + c.positions.len() as u64 - 1;
                    if c.positions.is_empty() {
                        report.last_seqno = name.start - 1;
                    }
                    current = Some(c);
                }
            }
        }
        if names.is_empty() {
            report.first_seqno = 1;
        }
        let shared = Arc::new(Shared {
            index: RwLock::new(index),
            tables: Mutex::new(lru::LruCache::new(
                std::num::NonZeroUsize::new(TABLE_CACHE).expect("non-zero"),
            )),
        });
        let ledger = Ledger {
            dir: dir.to_path_buf(),
            opts,
            first_seqno: report.first_seqno,
            last_seqno: report.last_seqno,
            committed_seqno: report.committed_seqno,
            current,
            shared,
        };
        ledger.publish();
        Ok((ledger, report))
    }

    /// An in-progress chunk file whose header already points at a positions table: if the table
    /// is consistent and every entry it lists is whole, in sequence and passes `check`, the
    /// chunk was completed and only its rename was lost. Returns its last seqno.
    fn completed_in_place(
        start: u64,
        path: &Path,
        check: &mut dyn FnMut(&Entry<'_>) -> bool,
    ) -> Result<Option<u64>, LedgerError> {
        let bytes = std::fs::read(path).map_err(io_err(path))?;
        let Ok(Some(table)) = chunk::read_table(&bytes) else {
            return Ok(None);
        };
        let table_offset = bytes.len() - table.len() * 4;
        if table.is_empty() || table[0] as usize != CHUNK_HEADER_SIZE {
            return Ok(None);
        }
        for (i, &p) in table.iter().enumerate() {
            let end = table.get(i + 1).map_or(table_offset, |n| *n as usize);
            let p = p as usize;
            if p >= end || end > table_offset {
                return Ok(None);
            }
            match Entry::parse(&bytes[p..end]) {
                Ok((e, len)) if len == end - p && e.txid.seqno == start + i as u64 && check(&e) => {
                }
                _ => return Ok(None),
            }
        }
        Ok(Some(start + table.len() as u64 - 1))
    }

    fn recover_current(
        start: u64,
        path: &Path,
        check: &mut dyn FnMut(&Entry<'_>) -> bool,
        report: &mut OpenReport,
    ) -> Result<Current, LedgerError> {
        let bytes = std::fs::read(path).map_err(io_err(path))?;
        let mut positions = Vec::new();
        let mut pos = CHUNK_HEADER_SIZE;
        let mut cut: Option<String> = None;
        if bytes.len() < CHUNK_HEADER_SIZE {
            cut = Some("chunk header is incomplete".into());
            pos = 0;
        }
        // A header that points at a table completed_in_place refused: the scan below stops at
        // the first entry that is not whole (at the latest, at the table) and the header is
        // zeroed with the cut.
        let header_set = bytes.len() >= CHUNK_HEADER_SIZE
            && bytes[..CHUNK_HEADER_SIZE] != [0u8; CHUNK_HEADER_SIZE];
        while cut.is_none() && pos < bytes.len() {
            let expected = start + positions.len() as u64;
            match Entry::parse(&bytes[pos..]) {
                Err(e) => cut = Some(format!("entry {expected}: {e}")),
                Ok((e, _)) if e.txid.seqno != expected => {
                    cut = Some(format!(
                        "entry at offset {pos} has seqno {}, expected {expected}",
                        e.txid.seqno
                    ))
                }
                Ok((e, _)) if !check(&e) => {
                    cut = Some(format!("entry {expected} failed its integrity check"))
                }
                Ok((_, len)) => {
                    positions.push(pos as u32);
                    pos += len;
                }
            }
        }
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .open(path)
            .map_err(io_err(path))?;
        if header_set && cut.is_none() {
            cut = Some("in-progress chunk has a positions table offset".into());
        }
        if let Some(reason) = cut {
            let removed = bytes.len() as u64 - pos as u64;
            tracing::warn!(path = %path.display(), removed, %reason, "cutting the ledger's torn tail");
            if pos < CHUNK_HEADER_SIZE {
                file.set_len(0).map_err(io_err(path))?;
                file.write_all_at(&[0u8; CHUNK_HEADER_SIZE], 0)
                    .map_err(io_err(path))?;
                pos = CHUNK_HEADER_SIZE;
            } else {
                file.write_all_at(&[0u8; CHUNK_HEADER_SIZE], 0)
                    .map_err(io_err(path))?;
                file.set_len(pos as u64).map_err(io_err(path))?;
            }
            file.sync_all().map_err(io_err(path))?;
            report.truncated = Some((removed, reason));
        }
        Ok(Current {
            start,
            path: path.to_path_buf(),
            file: Arc::new(file),
            positions,
            len: pos as u64,
            written: pos as u64,
            buf: Vec::new(),
        })
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }
    /// First seqno held (1, unless the ledger started from a snapshot).
    pub fn first_seqno(&self) -> u64 {
        self.first_seqno
    }
    pub fn last_seqno(&self) -> u64 {
        self.last_seqno
    }
    pub fn committed_seqno(&self) -> u64 {
        self.committed_seqno
    }

    /// First seqno of the in-progress chunk, if there is one.
    pub fn open_chunk_start(&self) -> Option<u64> {
        self.current.as_ref().map(|c| c.start)
    }

    /// Whether there is an in-progress chunk with entries in it.
    pub fn has_open_chunk(&self) -> bool {
        self.current
            .as_ref()
            .is_some_and(|c| !c.positions.is_empty())
    }

    /// For an empty ledger: the seqno it starts at (a node that joined from a snapshot at `s`
    /// starts at `s + 1`).
    pub fn set_start(&mut self, first_seqno: u64) {
        assert!(
            self.last_seqno + 1 == self.first_seqno && self.current.is_none(),
            "the ledger is not empty"
        );
        assert!(first_seqno >= 1);
        self.first_seqno = first_seqno;
        self.last_seqno = first_seqno - 1;
        self.committed_seqno = first_seqno - 1;
    }

    /// A reader that can be used from other threads while this ledger appends.
    pub fn reader(&self) -> LedgerReader {
        LedgerReader {
            shared: self.shared.clone(),
        }
    }

    /// Buffers entry `seqno` (which must follow the last one). A signature transaction completes
    /// the chunk once it has reached the configured size, or when `force_chunk_end` is set.
    pub fn append(
        &mut self,
        seqno: u64,
        entry: &[u8],
        signature: bool,
        force_chunk_end: bool,
    ) -> Result<(), LedgerError> {
        assert_eq!(
            seqno,
            self.last_seqno + 1,
            "ledger appends must be consecutive"
        );
        if self.current.is_none() {
            let path = self.dir.join(
                ChunkName {
                    start: seqno,
                    end: None,
                    committed: false,
                }
                .file_name(),
            );
            let file = OpenOptions::new()
                .read(true)
                .write(true)
                .create_new(true)
                .open(&path)
                .map_err(io_err(&path))?;
            file.write_all_at(&[0u8; CHUNK_HEADER_SIZE], 0)
                .map_err(io_err(&path))?;
            self.current = Some(Current {
                start: seqno,
                path,
                file: Arc::new(file),
                positions: Vec::new(),
                len: CHUNK_HEADER_SIZE as u64,
                written: CHUNK_HEADER_SIZE as u64,
                buf: Vec::new(),
            });
        }
        let c = self.current.as_mut().expect("created above");
        if c.len + entry.len() as u64 + 4 * (c.positions.len() as u64 + 1) > MAX_CHUNK_FILE_SIZE {
            return Err(LedgerError::ChunkFull);
        }
        c.positions.push(c.len as u32);
        c.buf.extend_from_slice(entry);
        c.len += entry.len() as u64;
        self.last_seqno = seqno;
        if signature && (force_chunk_end || c.len >= self.opts.chunk_size) {
            self.complete_current()?;
        } else if c.buf.len() >= WRITE_BUFFER_LIMIT {
            self.write_out()?;
        }
        Ok(())
    }

    /// Writes buffered entries to the file (no fsync) and makes them readable.
    fn write_out(&mut self) -> Result<(), LedgerError> {
        if let Some(c) = self.current.as_mut()
            && !c.buf.is_empty()
        {
            c.file
                .write_all_at(&c.buf, c.written)
                .map_err(io_err(&c.path))?;
            c.written += c.buf.len() as u64;
            c.buf.clear();
        }
        self.publish();
        Ok(())
    }

    /// Makes the entries written to the in-progress chunk's file visible to readers.
    fn publish(&self) {
        let mut idx = self.shared.index.write().unwrap_or_else(|p| p.into_inner());
        let Some(c) = &self.current else {
            idx.current = None;
            return;
        };
        // Entries are written whole, so an entry is readable iff it starts before `written`.
        let written_count = c.positions.partition_point(|&p| u64::from(p) < c.written);
        match &mut idx.current {
            Some((start, file, positions, written))
                if *start == c.start && positions.len() <= written_count =>
            {
                positions.extend_from_slice(&c.positions[positions.len()..written_count]);
                *written = c.written;
                *file = c.file.clone();
            }
            slot => {
                *slot = Some((
                    c.start,
                    c.file.clone(),
                    c.positions[..written_count].to_vec(),
                    c.written,
                ))
            }
        }
    }

    /// Writes everything appended so far to the file and returns a handle that fsyncs it.
    pub fn sync_handle(&mut self) -> Result<SyncHandle, LedgerError> {
        self.write_out()?;
        Ok(SyncHandle {
            file: self.current.as_ref().map(|c| c.file.clone()),
            seqno: self.last_seqno,
        })
    }

    /// Writes out and fsyncs: every entry appended so far is durable when this returns.
    pub fn sync(&mut self) -> Result<u64, LedgerError> {
        let h = self.sync_handle()?;
        let dir = self.dir.clone();
        h.sync().map_err(io_err(&dir))
    }

    /// Completes the in-progress chunk: positions table, header, fsync, rename to `ledger_a-b`.
    fn complete_current(&mut self) -> Result<(), LedgerError> {
        self.write_out()?;
        let Some(c) = self.current.take() else {
            return Ok(());
        };
        let table_offset = c.len;
        let mut table = Vec::with_capacity(c.positions.len() * 4);
        for p in &c.positions {
            table.extend_from_slice(&p.to_le_bytes());
        }
        let io = io_err(&c.path);
        c.file.write_all_at(&table, table_offset).map_err(io)?;
        c.file
            .write_all_at(&table_offset.to_le_bytes(), 0)
            .map_err(io_err(&c.path))?;
        c.file.sync_data().map_err(io_err(&c.path))?;
        let end = c.start + c.positions.len() as u64 - 1;
        let name = ChunkName {
            start: c.start,
            end: Some(end),
            committed: false,
        };
        let path = self.dir.join(name.file_name());
        std::fs::rename(&c.path, &path).map_err(io_err(&path))?;
        sync_dir(&self.dir)?;
        {
            let mut idx = self.shared.index.write().unwrap_or_else(|p| p.into_inner());
            idx.complete.push(CompleteChunk { name, path });
            idx.current = None;
        }
        self.shared
            .tables
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .put(
                c.start,
                (c.file.clone(), Arc::new(c.positions), table_offset),
            );
        Ok(())
    }

    /// Records that every seqno up to `seqno` is committed: complete chunks that end at or before
    /// it become `.committed` (immutable). Entries must be durable before they are committed.
    pub fn commit(&mut self, seqno: u64) -> Result<(), LedgerError> {
        let seqno = seqno.min(self.last_seqno);
        if seqno <= self.committed_seqno {
            return Ok(());
        }
        self.committed_seqno = seqno;
        let mut renamed = false;
        let mut idx = self.shared.index.write().unwrap_or_else(|p| p.into_inner());
        for c in idx.complete.iter_mut() {
            let end = c.name.end.expect("complete chunks have an end");
            if !c.name.committed && end <= seqno {
                let name = ChunkName {
                    committed: true,
                    ..c.name
                };
                let path = self.dir.join(name.file_name());
                std::fs::rename(&c.path, &path).map_err(io_err(&path))?;
                *c = CompleteChunk { name, path };
                renamed = true;
            }
        }
        drop(idx);
        if renamed {
            sync_dir(&self.dir)?;
        }
        Ok(())
    }

    /// Rolls back every entry after `seqno` (an uncommitted suffix, after a change of leader).
    pub fn truncate(&mut self, seqno: u64) -> Result<(), LedgerError> {
        if seqno >= self.last_seqno {
            return Ok(());
        }
        if seqno < self.committed_seqno {
            return Err(LedgerError::RollbackCommitted {
                to: seqno,
                committed: self.committed_seqno,
            });
        }
        // The in-progress chunk.
        if let Some(mut c) = self.current.take() {
            if seqno >= c.start {
                let keep = (seqno - c.start + 1) as usize;
                let cut_at = u64::from(c.positions[keep]);
                c.positions.truncate(keep);
                if cut_at >= c.written {
                    c.buf.truncate((cut_at - c.written) as usize);
                } else {
                    c.buf.clear();
                    c.file.set_len(cut_at).map_err(io_err(&c.path))?;
                    c.written = cut_at;
                }
                c.len = cut_at;
                self.current = Some(c);
                self.last_seqno = seqno;
                self.shared
                    .index
                    .write()
                    .unwrap_or_else(|p| p.into_inner())
                    .current = None;
                self.publish();
                return Ok(());
            }
            std::fs::remove_file(&c.path).map_err(io_err(&c.path))?;
        }
        // Complete, uncommitted chunks after the cut are removed; the one holding it is reopened.
        let mut idx = self.shared.index.write().unwrap_or_else(|p| p.into_inner());
        idx.current = None;
        while let Some(last) = idx.complete.last().cloned() {
            let end = last.name.end.expect("complete chunks have an end");
            if end <= seqno {
                break;
            }
            assert!(
                !last.name.committed,
                "committed chunks are never rolled back"
            );
            idx.complete.pop();
            self.shared
                .tables
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .pop(&last.name.start);
            if last.name.start > seqno {
                std::fs::remove_file(&last.path).map_err(io_err(&last.path))?;
                continue;
            }
            let bytes = std::fs::read(&last.path).map_err(io_err(&last.path))?;
            let table = chunk::read_table(&bytes)
                .map_err(|source| LedgerError::Chunk {
                    path: last.path.clone(),
                    source,
                })?
                .ok_or_else(|| {
                    LedgerError::Inconsistent(format!(
                        "{} has no positions table",
                        last.path.display()
                    ))
                })?;
            let keep = (seqno - last.name.start + 1) as usize;
            let cut_at = u64::from(table[keep]);
            let path = self.dir.join(
                ChunkName {
                    start: last.name.start,
                    end: None,
                    committed: false,
                }
                .file_name(),
            );
            let file = OpenOptions::new()
                .read(true)
                .write(true)
                .open(&last.path)
                .map_err(io_err(&last.path))?;
            file.set_len(cut_at).map_err(io_err(&last.path))?;
            file.write_all_at(&[0u8; CHUNK_HEADER_SIZE], 0)
                .map_err(io_err(&last.path))?;
            file.sync_all().map_err(io_err(&last.path))?;
            std::fs::rename(&last.path, &path).map_err(io_err(&path))?;
            self.current = Some(Current {
                start: last.name.start,
                path,
                file: Arc::new(file),
                positions: table[..keep].to_vec(),
                len: cut_at,
                written: cut_at,
                buf: Vec::new(),
            });
            break;
        }
        drop(idx);
        sync_dir(&self.dir)?;
        self.last_seqno = seqno;
        self.publish();
        Ok(())
    }
}

/// Reads entries by seqno, from any thread, while the [`Ledger`] appends. Sees entries once they
/// have been written out (by a sync, a completed chunk, or a full write buffer).
#[derive(Clone)]
pub struct LedgerReader {
    shared: Arc<Shared>,
}

impl LedgerReader {
    /// The bytes of entry `seqno`.
    pub fn read_entry(&self, seqno: u64) -> Result<Vec<u8>, LedgerError> {
        let (start, path) = {
            let idx = self.shared.index.read().unwrap_or_else(|p| p.into_inner());
            if let Some((start, file, positions, written)) = &idx.current
                && seqno >= *start
                && seqno < start + positions.len() as u64
            {
                let i = (seqno - start) as usize;
                let from = u64::from(positions[i]);
                let to = positions.get(i + 1).map_or(*written, |p| u64::from(*p));
                let file = file.clone();
                drop(idx);
                return read_at(&file, from, to, Path::new("in-progress chunk"));
            }
            let i = idx.complete.partition_point(|c| c.name.start <= seqno);
            let c = i
                .checked_sub(1)
                .map(|i| &idx.complete[i])
                .ok_or(LedgerError::NotFound(seqno))?;
            if seqno > c.name.end.unwrap_or(0) {
                return Err(LedgerError::NotFound(seqno));
            }
            (c.name.start, c.path.clone())
        };
        let (file, table, table_offset) = self.table(start, &path)?;
        let i = (seqno - start) as usize;
        let from = u64::from(*table.get(i).ok_or(LedgerError::NotFound(seqno))?);
        let to = table.get(i + 1).map_or(table_offset, |p| u64::from(*p));
        read_at(&file, from, to, &path)
    }

    fn table(&self, start: u64, path: &Path) -> Result<ChunkTable, LedgerError> {
        if let Some(t) = self
            .shared
            .tables
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(&start)
        {
            return Ok(t.clone());
        }
        // The chunk may be renamed (committed) between the index lookup and the open: retry by
        // looking up the path again.
        let file = match File::open(path) {
            Ok(f) => f,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                let p = {
                    let idx = self.shared.index.read().unwrap_or_else(|p| p.into_inner());
                    idx.complete
                        .iter()
                        .find(|c| c.name.start == start)
                        .map(|c| c.path.clone())
                };
                File::open(p.as_deref().unwrap_or(path)).map_err(io_err(path))?
            }
            Err(e) => return Err(io_err(path)(e)),
        };
        let len = file.metadata().map_err(io_err(path))?.len();
        let mut h = [0u8; 8];
        file.read_exact_at(&mut h, 0).map_err(io_err(path))?;
        let offset = u64::from_le_bytes(h);
        let range = chunk::table_bytes(offset, len).map_err(|source| LedgerError::Chunk {
            path: path.into(),
            source,
        })?;
        let mut table = vec![0u8; range.len()];
        file.read_exact_at(&mut table, offset)
            .map_err(io_err(path))?;
        let t = (Arc::new(file), Arc::new(chunk::parse_table(&table)), offset);
        self.shared
            .tables
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .put(start, t.clone());
        Ok(t)
    }
}

fn read_at(file: &File, from: u64, to: u64, path: &Path) -> Result<Vec<u8>, LedgerError> {
    if to < from || to - from > crate::entry::MAX_ENTRY_SIZE as u64 + 64 {
        return Err(LedgerError::Inconsistent(format!(
            "bad entry range {from}..{to} in {}",
            path.display()
        )));
    }
    let mut buf = vec![0u8; (to - from) as usize];
    file.read_exact_at(&mut buf, from).map_err(io_err(path))?;
    Ok(buf)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::entry::{MapWrites, TxMeta, encode_transaction};
    use crate::txid::TxId;
    use ccl_crypto::aead::AesGcmKey;

    fn key() -> AesGcmKey {
        AesGcmKey::new(&[4u8; 32])
    }

    fn entry(seqno: u64) -> Vec<u8> {
        let value = format!("value-{seqno}-{}", "x".repeat((seqno % 50) as usize));
        let maps = [MapWrites {
            name: "public:m",
            read_version: 0,
            writes: vec![(b"k", value.as_bytes())],
            removes: vec![],
        }];
        let meta = TxMeta {
            txid: TxId::new(1, seqno),
            claims_digest: [0; 32],
            commit_evidence_digest: [0; 32],
            max_conflict_version: 0,
            flags: 0,
        };
        let mut out = Vec::new();
        encode_transaction(&mut out, &meta, &maps, &key());
        out
    }

    fn check_tag(e: &Entry<'_>) -> bool {
        e.decrypt_private(&key()).is_ok()
    }

    fn open(dir: &Path, chunk_size: u64) -> (Ledger, OpenReport) {
        Ledger::open(dir, LedgerOptions { chunk_size }, &mut check_tag).unwrap()
    }

    fn files(dir: &Path) -> Vec<String> {
        let mut v: Vec<String> = std::fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        v.sort_by_key(|n| ChunkName::parse(n).map(|c| c.start));
        v
    }

    #[test]
    fn append_chunk_commit_read_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let (mut l, r) = open(dir.path(), 1000);
        assert_eq!(r.last_seqno, 0);
        let reader = l.reader();
        for s in 1..=100u64 {
            l.append(s, &entry(s), s % 10 == 0, false).unwrap();
        }
        assert_eq!(l.sync().unwrap(), 100);
        // Chunks end on signatures once past 1000 bytes.
        let names = files(dir.path());
        assert!(names.len() > 3, "{names:?}");
        assert!(names.iter().all(|n| n.starts_with("ledger_")));
        for s in 1..=100u64 {
            assert_eq!(reader.read_entry(s).unwrap(), entry(s), "seqno {s}");
        }
        assert!(matches!(
            reader.read_entry(101),
            Err(LedgerError::NotFound(101))
        ));
        l.commit(55).unwrap();
        let names = files(dir.path());
        for n in &names {
            let c = ChunkName::parse(n).unwrap();
            assert_eq!(c.committed, c.end.is_some_and(|e| e <= 55), "{n}");
        }
        for s in 1..=100u64 {
            assert_eq!(reader.read_entry(s).unwrap(), entry(s));
        }
        // Committed chunks parse as complete chunks with consistent tables.
        for n in names.iter().filter(|n| n.ends_with(".committed")) {
            let bytes = std::fs::read(dir.path().join(n)).unwrap();
            let c = ChunkName::parse(n).unwrap();
            let entries = chunk::parse_complete_chunk(&bytes).unwrap();
            assert_eq!(entries.len() as u64, c.end.unwrap() - c.start + 1);
        }
        drop(l);
        let (l, r) = open(dir.path(), 1000);
        assert_eq!(
            (r.last_seqno, r.committed_seqno, r.truncated),
            (100, 50, None)
        );
        for s in 1..=100u64 {
            assert_eq!(l.reader().read_entry(s).unwrap(), entry(s));
        }
    }

    #[test]
    fn torn_tails_are_cut_on_open() {
        let dir = tempfile::tempdir().unwrap();
        let (mut l, _) = open(dir.path(), 1 << 20);
        for s in 1..=20u64 {
            l.append(s, &entry(s), false, false).unwrap();
        }
        l.sync().unwrap();
        drop(l);
        let path = dir.path().join("ledger_1");
        let full = std::fs::read(&path).unwrap();
        let positions = chunk::scan_positions(&full, full.len()).unwrap();
        // Cut in the middle of entry 20, then garbage in entry 19's private domain, then a zeroed
        // tail (as after a power failure with delayed allocation).
        std::fs::write(&path, &full[..full.len() - 7]).unwrap();
        let (l, r) = open(dir.path(), 1 << 20);
        assert_eq!(r.last_seqno, 19);
        assert!(r.truncated.is_some());
        drop(l);
        let mut bytes = std::fs::read(&path).unwrap();
        let n = bytes.len();
        bytes[n - 3] ^= 0xff;
        std::fs::write(&path, &bytes).unwrap();
        let (l, r) = open(dir.path(), 1 << 20);
        assert_eq!(r.last_seqno, 18, "{r:?}");
        drop(l);
        let mut bytes = std::fs::read(&path).unwrap();
        bytes.extend_from_slice(&[0u8; 4096]);
        std::fs::write(&path, &bytes).unwrap();
        let (mut l, r) = open(dir.path(), 1 << 20);
        assert_eq!(r.last_seqno, 18);
        assert_eq!(
            std::fs::metadata(&path).unwrap().len(),
            u64::from(positions[18])
        );
        // Appending continues after the cut.
        l.append(19, &entry(19), false, false).unwrap();
        l.sync().unwrap();
        assert_eq!(l.reader().read_entry(19).unwrap(), entry(19));
    }

    #[test]
    fn a_completion_interrupted_before_its_rename_is_finished_on_open() {
        let dir = tempfile::tempdir().unwrap();
        let (mut l, _) = open(dir.path(), 1);
        for s in 1..=5u64 {
            l.append(s, &entry(s), s == 5, false).unwrap();
        }
        l.sync().unwrap();
        drop(l);
        assert_eq!(files(dir.path()), ["ledger_1-5"]);
        // Killed after the table, header and fsync, before the rename.
        let done = dir.path().join("ledger_1-5");
        let in_progress = dir.path().join("ledger_1");
        std::fs::rename(&done, &in_progress).unwrap();
        let complete = std::fs::read(&in_progress).unwrap();
        let (mut l, r) = open(dir.path(), 1);
        assert_eq!((r.last_seqno, r.truncated.clone()), (5, None), "{r:?}");
        assert_eq!(files(dir.path()), ["ledger_1-5"]);
        assert_eq!(
            std::fs::read(&done).unwrap(),
            complete,
            "the chunk is unchanged"
        );
        l.append(6, &entry(6), false, false).unwrap();
        l.sync().unwrap();
        assert_eq!(l.reader().read_entry(5).unwrap(), entry(5));
        drop(l);
        // A table that does not check out (a crash before the fsync reached it): the entries
        // that are whole stay, the rest is cut, and the chunk is in progress again.
        std::fs::remove_file(dir.path().join("ledger_6")).unwrap();
        let mut bytes = complete.clone();
        let n = bytes.len();
        bytes[n - 2] ^= 0x40; // the last position now points nowhere sensible
        std::fs::write(&in_progress, &bytes).unwrap();
        std::fs::remove_file(&done).unwrap();
        let (mut l, r) = open(dir.path(), 1 << 20);
        assert_eq!(r.last_seqno, 5, "{r:?}");
        assert!(r.truncated.is_some());
        assert_eq!(files(dir.path()), ["ledger_1"]);
        let bytes = std::fs::read(&in_progress).unwrap();
        assert_eq!(&bytes[..CHUNK_HEADER_SIZE], &[0u8; CHUNK_HEADER_SIZE]);
        l.append(6, &entry(6), false, false).unwrap();
        l.sync().unwrap();
        for s in 1..=6 {
            assert_eq!(l.reader().read_entry(s).unwrap(), entry(s));
        }
    }

    #[test]
    fn rollback_of_uncommitted_suffix() {
        let dir = tempfile::tempdir().unwrap();
        let (mut l, _) = open(dir.path(), 500);
        for s in 1..=60u64 {
            l.append(s, &entry(s), s % 5 == 0, false).unwrap();
        }
        l.sync().unwrap();
        l.commit(20).unwrap();
        assert!(matches!(
            l.truncate(10),
            Err(LedgerError::RollbackCommitted { .. })
        ));
        for cut in [58u64, 45, 33, 21] {
            l.truncate(cut).unwrap();
            assert_eq!(l.last_seqno(), cut);
            assert!(l.reader().read_entry(cut + 1).is_err());
            assert_eq!(l.reader().read_entry(cut).unwrap(), entry(cut));
        }
        // Regrow with different bytes and check everything after reopen.
        let other = |s: u64| {
            let mut e = entry(s + 1000);
            e[24..32].copy_from_slice(&s.to_le_bytes()); // keep the IV's seqno consistent
            e
        };
        for s in 22..=40u64 {
            l.append(s, &other(s), s % 5 == 0, false).unwrap();
        }
        l.sync().unwrap();
        drop(l);
        let (l, r) =
            Ledger::open(dir.path(), LedgerOptions { chunk_size: 500 }, &mut |_| true).unwrap();
        assert_eq!(r.last_seqno, 40);
        for s in 1..=21u64 {
            assert_eq!(l.reader().read_entry(s).unwrap(), entry(s));
        }
        for s in 22..=40u64 {
            assert_eq!(l.reader().read_entry(s).unwrap(), other(s));
        }
    }

    #[test]
    fn inconsistent_directories_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let (mut l, _) = open(dir.path(), 200);
        for s in 1..=30u64 {
            l.append(s, &entry(s), s % 3 == 0, false).unwrap();
        }
        l.sync().unwrap();
        l.commit(30).unwrap();
        drop(l);
        let names = files(dir.path());
        // Remove a chunk in the middle: a gap.
        let victim = dir.path().join(&names[1]);
        let saved = std::fs::read(&victim).unwrap();
        std::fs::remove_file(&victim).unwrap();
        assert!(matches!(
            Ledger::open(dir.path(), LedgerOptions::default(), &mut check_tag),
            Err(LedgerError::Inconsistent(_))
        ));
        std::fs::write(&victim, saved).unwrap();
        open(dir.path(), 200);
    }

    #[test]
    fn concurrent_reads_while_appending() {
        let dir = tempfile::tempdir().unwrap();
        let (mut l, _) = open(dir.path(), 4000);
        let reader = l.reader();
        let stop = Arc::new(std::sync::atomic::AtomicU64::new(0));
        let s2 = stop.clone();
        let t = std::thread::spawn(move || {
            let mut checked = 0u64;
            loop {
                let durable = s2.load(std::sync::atomic::Ordering::Acquire);
                if durable == u64::MAX {
                    break checked;
                }
                for s in (1..=durable).rev().take(20) {
                    assert_eq!(reader.read_entry(s).unwrap(), entry(s));
                    checked += 1;
                }
            }
        });
        for s in 1..=3000u64 {
            l.append(s, &entry(s), s % 50 == 0, false).unwrap();
            if s % 100 == 0 {
                let d = l.sync().unwrap();
                l.commit(d).unwrap();
                stop.store(d, std::sync::atomic::Ordering::Release);
            }
        }
        stop.store(u64::MAX, std::sync::atomic::Ordering::Release);
        assert!(t.join().unwrap() > 0);
    }
}
