//! Ledger chunk files.
//!
//! ```text
//! chunk = table_offset(u64 LE) entry* [table]      table = position(u32 LE)*, one per entry
//! ```
//! `table_offset` is 0 while the chunk is in progress (readers then scan the entries); when the
//! chunk is complete it points at the table of entry positions, which runs to the end of the file.
//!
//! Names: `ledger_<first>` (in progress), `ledger_<first>-<last>` (complete: ends on a signature
//! transaction), `ledger_<first>-<last>.committed` (complete, and committed: immutable and
//! byte-identical on every node).

use crate::codec::DecodeError;
use crate::entry::{ENTRY_HEADER_SIZE, Entry, entry_len};
use std::path::Path;

/// Size of a chunk's header: the offset of its positions table.
pub const CHUNK_HEADER_SIZE: usize = 8;
/// Suffix of committed chunks and snapshots.
pub const COMMITTED_SUFFIX: &str = ".committed";
/// Largest chunk ccl reads or writes: positions are u32.
pub const MAX_CHUNK_FILE_SIZE: u64 = u32::MAX as u64;

/// What a chunk file's name says about it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct ChunkName {
    pub start: u64,
    pub end: Option<u64>,
    pub committed: bool,
}

impl ChunkName {
    /// Parses `ledger_<a>`, `ledger_<a>-<b>` or `ledger_<a>-<b>.committed`; other names are not
    /// chunks (`None`).
    pub fn parse(file_name: &str) -> Option<ChunkName> {
        let rest = file_name.strip_prefix("ledger_")?;
        let (rest, committed) = match rest.strip_suffix(COMMITTED_SUFFIX) {
            Some(r) => (r, true),
            None => (rest, false),
        };
        let num = |s: &str| -> Option<u64> {
            (!s.is_empty() && s.len() <= 20 && s.bytes().all(|b| b.is_ascii_digit()))
                .then(|| s.parse().ok())
                .flatten()
        };
        let (start, end) = match rest.split_once('-') {
            Some((a, b)) => (num(a)?, Some(num(b)?)),
            None => (num(rest)?, None),
        };
        if start == 0 || end.is_some_and(|e| e < start) || (committed && end.is_none()) {
            return None;
        }
        Some(ChunkName {
            start,
            end,
            committed,
        })
    }

    pub fn file_name(&self) -> String {
        match (self.end, self.committed) {
            (None, _) => format!("ledger_{}", self.start),
            (Some(e), false) => format!("ledger_{}-{}", self.start, e),
            (Some(e), true) => format!("ledger_{}-{}{}", self.start, e, COMMITTED_SUFFIX),
        }
    }
}

/// Why a chunk's bytes are not a valid chunk.
#[derive(Debug, thiserror::Error)]
pub enum ChunkError {
    #[error("{0}")]
    Decode(#[from] DecodeError),
    #[error("positions table at offset {offset} is invalid: {reason}")]
    Table { offset: u64, reason: String },
    #[error("entry {index} is at offset {actual}, but the positions table says {expected}")]
    PositionMismatch {
        index: usize,
        expected: u32,
        actual: u64,
    },
}

/// Reads the positions table of a complete chunk held in `bytes`. Returns `None` when the chunk is
/// still in progress (table offset 0).
pub fn read_table(bytes: &[u8]) -> Result<Option<Vec<u32>>, ChunkError> {
    let header: [u8; 8] = bytes
        .get(..CHUNK_HEADER_SIZE)
        .and_then(|h| h.try_into().ok())
        .ok_or(DecodeError {
            what: "chunk header",
            offset: 0,
        })?;
    let offset = u64::from_le_bytes(header);
    if offset == 0 {
        return Ok(None);
    }
    let table = table_bytes(offset, bytes.len() as u64).map(|r| &bytes[r])?;
    Ok(Some(parse_table(table)))
}

/// The byte range of the positions table, checked against the file length.
pub fn table_bytes(offset: u64, file_len: u64) -> Result<std::ops::Range<usize>, ChunkError> {
    let bad = |reason: &str| ChunkError::Table {
        offset,
        reason: reason.into(),
    };
    if offset < CHUNK_HEADER_SIZE as u64 || offset > file_len {
        return Err(bad("offset outside the file"));
    }
    if !(file_len - offset).is_multiple_of(4) {
        return Err(bad("table length is not a multiple of 4"));
    }
    Ok(offset as usize..file_len as usize)
}

pub fn parse_table(table: &[u8]) -> Vec<u32> {
    table
        .chunks_exact(4)
        .map(|c| u32::from_le_bytes([c[0], c[1], c[2], c[3]]))
        .collect()
}

/// Scans the entries of `bytes[CHUNK_HEADER_SIZE..end]` and returns their positions. Fails at the
/// first entry whose header is malformed or which runs past `end`.
pub fn scan_positions(bytes: &[u8], end: usize) -> Result<Vec<u32>, DecodeError> {
    let mut pos = CHUNK_HEADER_SIZE;
    let mut out = Vec::new();
    while pos < end {
        let header = bytes.get(pos..pos + ENTRY_HEADER_SIZE).ok_or(DecodeError {
            what: "entry header",
            offset: pos,
        })?;
        let len = entry_len(header).map_err(|e| DecodeError {
            offset: pos + e.offset,
            ..e
        })?;
        if pos + len > end {
            return Err(DecodeError {
                what: "entry (runs past the end)",
                offset: pos,
            });
        }
        out.push(pos as u32);
        pos += len;
    }
    Ok(out)
}

/// Parses a whole complete chunk: checks that the positions table matches the entries exactly and
/// returns the entries in order.
pub fn parse_complete_chunk(bytes: &[u8]) -> Result<Vec<Entry<'_>>, ChunkError> {
    let table = read_table(bytes)?;
    let end = match &table {
        Some(_) => u64::from_le_bytes(bytes[..8].try_into().unwrap_or([0; 8])) as usize,
        None => bytes.len(),
    };
    let scanned = scan_positions(bytes, end)?;
    if let Some(t) = &table {
        if t.len() != scanned.len() {
            return Err(ChunkError::Table {
                offset: end as u64,
                reason: format!("{} positions for {} entries", t.len(), scanned.len()),
            });
        }
        for (i, (e, a)) in t.iter().zip(&scanned).enumerate() {
            if e != a {
                return Err(ChunkError::PositionMismatch {
                    index: i,
                    expected: *e,
                    actual: u64::from(*a),
                });
            }
        }
    }
    scanned
        .iter()
        .map(|&p| Ok(Entry::parse(&bytes[p as usize..end])?.0))
        .collect()
}

/// The chunk names in a directory, sorted by first seqno. Files whose names are not chunk names
/// are ignored.
pub fn list_chunks(dir: &Path) -> std::io::Result<Vec<ChunkName>> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(dir)? {
        let e = e?;
        if let Some(n) = e.file_name().to_str().and_then(ChunkName::parse)
            && e.file_type()?.is_file()
        {
            out.push(n);
        }
    }
    out.sort();
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names() {
        assert_eq!(
            ChunkName::parse("ledger_1"),
            Some(ChunkName {
                start: 1,
                end: None,
                committed: false
            })
        );
        assert_eq!(
            ChunkName::parse("ledger_1-10"),
            Some(ChunkName {
                start: 1,
                end: Some(10),
                committed: false
            })
        );
        assert_eq!(
            ChunkName::parse("ledger_11-20.committed"),
            Some(ChunkName {
                start: 11,
                end: Some(20),
                committed: true
            })
        );
        for bad in [
            "ledger_",
            "ledger_0",
            "ledger_5-4",
            "ledger_1.committed",
            "ledger_a",
            "ledger_1-2.recovery",
            "snapshot_1_2.committed",
            "ledger_1-",
            "ledger_-1",
            "ledger_+1",
        ] {
            assert_eq!(ChunkName::parse(bad), None, "{bad}");
        }
        for n in ["ledger_1", "ledger_1-10", "ledger_11-20.committed"] {
            assert_eq!(ChunkName::parse(n).unwrap().file_name(), n);
        }
    }

    #[test]
    fn table_checks() {
        assert!(read_table(&[0u8; 4]).is_err());
        assert!(read_table(&[0u8; 8]).unwrap().is_none());
        let mut b = 100u64.to_le_bytes().to_vec();
        b.resize(20, 0);
        assert!(read_table(&b).is_err());
        let mut b = 12u64.to_le_bytes().to_vec();
        b.resize(15, 0);
        assert!(read_table(&b).is_err());
    }
}
